"""`sentitune analyze RUN [--against RUN] [--top-k K] [--slice NAME=REGEX] [--output-dir DIR] [--explain [N]]`:
analysis.analyze_run -> the analysis files, then a console summary."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from sentitune.analysis import analyze_run


def run(args: argparse.Namespace) -> int:
    analysis = analyze_run(
        args.run,
        against=args.against,
        top_k=args.top_k,
        slices=args.slice,
        output_dir=args.output_dir,
        explain=args.explain,
    )
    print_summary(analysis)
    return 0


def print_summary(analysis: dict, console=None) -> None:
    """Console summary of an analysis (rich tables); the files hold the full detail."""
    console = console or Console()
    overall = analysis["overall"]
    console.print(
        f"[bold]{analysis['source']}[/bold]: {analysis['examples']} examples, accuracy "
        f"{overall['accuracy']:.4f}, macro F1 {overall['macro_f1']:.4f}, ECE {overall['ece']:.4f}"
    )
    table = Table(title="per class")
    for column in ("label", "precision", "recall", "f1", "support"):
        table.add_column(column, justify="left" if column == "label" else "right")
    for row in analysis["per_class"]:
        table.add_row(
            row["label"], f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}", str(row["support"])
        )
    console.print(table)
    matrix = analysis["confusion_matrix"]["rows_gold_columns_predicted"]
    names = analysis["confusion_matrix"]["labels"]
    table = Table(title="confusion matrix")
    table.add_column("gold \\ predicted")
    for name in names:
        table.add_column(name, justify="right")
    for i, (name, row) in enumerate(zip(names, matrix)):
        table.add_row(name, *(f"[bold]{n}[/bold]" if i == j else str(n) for j, n in enumerate(row)))
    console.print(table)
    table = Table(title="slices (95% Wilson CI)")
    for column in ("slice", "count", "accuracy", "95% CI"):
        table.add_column(column, justify="left" if column == "slice" else "right")
    for row in analysis["slices"]:
        if row["count"]:
            table.add_row(
                row["slice"],
                str(row["count"]),
                f"{row['accuracy']:.3f}",
                f"{row['ci95_low']:.3f}-{row['ci95_high']:.3f}",
            )
        else:
            table.add_row(row["slice"], "0", "-", "-")
    console.print(table)
    table = Table(title="most confident mistakes")
    for column in ("gold", "pred", "p(pred)", "text"):
        table.add_column(column, overflow="fold")
    # With 3+ classes a right answer at p = 0.4 can out-lose a wrong one; list only the wrong ones.
    mistakes = [row for row in analysis["highest_loss"] if row["gold"] != row["pred"]]
    for row in mistakes[:5]:
        table.add_row(row["gold"], row["pred"], f"{row['prob_pred']:.3f}", row["text"][:100])
    console.print(table)
    amb, lab = analysis["ambiguous"], analysis["likely_label_errors"]
    console.print(
        f"ambiguous (top-2 margin < {amb['max_margin']}): {amb['count']}   "
        f"likely label errors: {lab['count']} ({lab['method']})"
    )
    probe = analysis["negation_probe"]
    if probe["status"] == "ok":
        directions = ", ".join(f"{k}: {v['flipped_correctly']:.0%}" for k, v in probe["by_direction"].items())
        console.print(
            f"negation probe: {probe['flipped_correctly']:.0%} of {probe['pairs']} minimal pairs flip "
            f"correctly ({directions})"
        )
    else:
        console.print(f"negation probe: skipped ({probe['reason']})")
    comparison = analysis.get("comparison")
    if comparison:
        table = Table(title=f"A = {comparison['a']}  vs  B = {comparison['b']} (exact McNemar)")
        for column in ("slice", "count", "A acc", "B acc", "A only right", "B only right", "p", ""):
            table.add_column(column, justify="left" if column == "slice" else "right")
        for row in comparison["slices"]:
            if not row["count"]:
                continue
            table.add_row(
                row["slice"],
                str(row["count"]),
                f"{row['a_accuracy']:.3f}",
                f"{row['b_accuracy']:.3f}",
                str(row["a_only_correct"]),
                str(row["b_only_correct"]),
                f"{row['p_value']:.3g}",
                "significant" if row["significant"] else "not significant",
            )
        console.print(table)
    if "explanations" in analysis:
        from sentitune.cli.commands.explain import print_explanation

        console.print(f"[bold]why the most confident mistakes[/bold] ({len(analysis['explanations'])}):")
        for row in analysis["explanations"]:
            console.print(f"gold {row['gold']}, predicted:", end=" ")
            print_explanation(row, console)
    console.print(f"wrote {', '.join(analysis['files'])} to {analysis['output_dir']}")
