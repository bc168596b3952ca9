"""`sentitune compare`: flags -> RunConfig with a compare section -> compare.run_comparison -> the results
table and one line per paired test."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from sentitune import compare
from sentitune.cli.options import config_from_args, parse_list
from sentitune.config import ConfigError
from sentitune.runtime import SENTITUNE_CODE, code_mix_line


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    overrides = {
        "compare.methods": parse_list(args.methods),
        "compare.lora_r_sweep": parse_list(args.lora_r_sweep, int),
        "compare.lora_targets_sweep": parse_list(args.lora_targets_sweep, str, "|"),
        "compare.learning_rates": parse_list(args.learning_rates, float),
        "compare.layer_lr_decays": parse_list(args.layer_lr_decays, float),
        "compare.models": parse_list(getattr(args, "models", None)),
        "compare.gradient_checkpointing_variants": True if args.gradient_checkpointing else None,
        "compare.eval_files": parse_eval_files(args.eval_file),
        "compare.eval_text_column": getattr(args, "eval_text_column", None),
        "compare.eval_label_column": getattr(args, "eval_label_column", None),
        "compare.suites": [] if getattr(args, "no_default_suites", False) else None,
        "compare.tune": parse_list(args.tune),
        "compare.tune_trials": args.tune_trials,
        "compare.tune_sampler": args.tune_sampler,
        "compare.tune_storage": args.tune_storage,
        "compare.train_sizes": parse_list(args.train_sizes),
        "compare.reference": args.reference,
        **{f"compare.{name}": getattr(args, name) for name in compare.BUDGETS},
    }
    if args.seeds:
        seeds = parse_list(args.seeds, int)
        overrides["compare.seeds"] = list(range(1, seeds[0] + 1)) if len(seeds) == 1 else seeds
    cfg = cfg.override(overrides)
    out = Path(args.output_dir or f"results/{cfg.data.name}")
    if sys.stdout.isatty():
        with LiveProgress() as live:
            document = compare.run_comparison(
                cfg, out, args.parallel, live.echo, allow_version_mix=args.allow_version_mix, progress=live
            )
    else:
        document = compare.run_comparison(
            cfg, out, parallel=args.parallel, allow_version_mix=args.allow_version_mix, progress=compare.LineProgress()
        )
    print_summary(document)
    print(f"results: {out / compare.RESULTS_CSV}, {out / compare.RESULTS_JSON}")
    return 0 if all(r["status"] == "ok" for r in document["runs"]) else 1


class LiveProgress:
    """Each running child's progress as a rich progress bar (step, loss, samples/s, ETA) on a terminal;
    compare's own lines print above the bars, and a finished run's bar gives way to its result line."""

    def __init__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn

        self.bars = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            transient=True,
        )
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> LiveProgress:
        self.bars.start()
        return self

    def __exit__(self, *exc) -> None:
        self.bars.stop()

    def echo(self, line: str) -> None:
        self.bars.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def update(self, name: str, record: dict[str, Any] | None) -> None:
        if name not in self.tasks:
            self.tasks[name] = self.bars.add_task(name, total=None, detail="starting ...")
        if record is None:
            return
        # the bar and its step count stand for the line's leading "step a/b (x%)"
        detail = compare.progress_line(name, record).split(": ", 1)[1].split(", ", 1)[-1]
        self.bars.update(
            self.tasks[name], total=record.get("max_steps") or None, completed=record.get("step") or 0, detail=detail
        )

    def finish(self, name: str, record: dict[str, Any] | None) -> None:
        task = self.tasks.pop(name, None)
        if task is not None:
            self.bars.remove_task(task)


def parse_eval_files(specs: list[str] | None) -> dict[str, str] | None:
    """`["negation=suite.tsv", ...]` from repeated --eval-file -> {name: path}; None when none given.

    Example:
        >>> parse_eval_files(["imdb=data/imdb_test.csv"])
        {'imdb': 'data/imdb_test.csv'}
    """
    if not specs:
        return None
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise ConfigError(f"--eval-file {spec!r}: expected NAME=PATH, e.g. --eval-file imdb=data/imdb_test.csv")
        if name in out:
            raise ConfigError(f"--eval-file {spec!r}: the name {name!r} is given twice; one name per file")
        out[name] = path
    return out


def _fmt(value, spec: str, missing: str = "-") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return format(value, spec)


def _value(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def print_search_and_curve(document: dict[str, Any], console) -> None:
    """One line per tuned variant (budget, selection, its validation score), then per method the
    smallest training-set size at which it came within 1 point of the reference."""
    for variant, search in (document.get("search") or {}).items():
        if not search.get("budget"):
            console.print(f"search {variant}: not tuned ({search.get('note')})", markup=False, highlight=False)
            continue
        scored = [t for t in search["trials"] if t["validation_accuracy"] is not None]
        tried = ", ".join(
            " ".join(f"{k}={_value(v)}" for k, v in t["params"].items()) + f": {100 * t['validation_accuracy']:.2f}"
            for t in scored
        )
        chosen = " ".join(f"{k}={_value(v)}" for k, v in (search["selected"] or {}).items()) or "defaults"
        console.print(
            f"search {variant}: {search['trials_run']}/{search['budget']} trials on the validation slice "
            f"({tried}); selected {chosen}",
            markup=False,
            highlight=False,
        )
    for method, line in (document.get("learning_curve") or {}).items():
        if method == line["reference"]:
            continue
        points = ", ".join(f"{p['train_size']}: {100 * p['test_accuracy_mean']:.1f}" for p in line["points"])
        reached = line["within_reference_from"]
        verdict = (
            f"within 1 point of {line['reference']} from {reached} examples"
            if reached is not None
            else f"never within 1 point of {line['reference']}"
        )
        console.print(f"learning curve {method}: {points} (test %); {verdict}", markup=False, highlight=False)


def print_summary(document: dict[str, Any], console=None) -> None:
    """The results table (one row per variant), version-mix warnings, failed runs, then one line per
    paired test with its Holm-corrected verdict."""
    console = console or Console(width=None if sys.stdout.isatty() else 200)
    table = Table(title=f"comparison (scaffolding {document['fingerprint']})")
    for column in (
        "variant",
        "seeds",
        "test acc (mean ± std)",
        "95% CI",
        "macro-F1",
        "trainable params",
        "peak MiB",
        "train samples/s",
        "ckpt MiB",
        "knobs",
    ):
        table.add_column(column, justify="left" if column in ("variant", "knobs", "95% CI") else "right")
    for entry in document["summary"]:
        if not entry.get("n_seeds"):
            table.add_row(entry["variant"], f"0/{entry['n_runs']}", "failed", "", "", "", "", "", "", "")
            continue
        knobs = " ".join(
            f"{k.replace('lora_target_modules', 'targets')}={entry[k]}"
            for k in compare.method_knobs_keys(entry)
            if not k.startswith("tfidf")
        )
        table.add_row(
            entry["variant"],
            f"{entry['n_seeds']}/{entry['n_runs']}",
            f"{100 * entry['test_accuracy_mean']:.2f} ± {_fmt(100 * entry['test_accuracy_std'], '.2f', 'n/a')}",
            f"[{100 * entry['test_accuracy_ci95_low']:.1f}, {100 * entry['test_accuracy_ci95_high']:.1f}] "
            f"{entry['ci_method']}",
            _fmt(100 * entry["test_macro_f1_mean"], ".2f"),
            f"{entry['params_trainable']:,} ({entry['params_trainable_percent']:.2f}%)",
            _fmt(entry["peak_memory_mib_mean"], ",.0f"),
            _fmt(entry["train_samples_per_second_mean"], ",.1f"),
            _fmt(entry["checkpoint_size_mib_mean"], ",.2f"),
            knobs,
        )
    console.print(table)
    print_search_and_curve(document, console)
    for mix in document.get("version_mix") or []:
        if mix["package"] == SENTITUNE_CODE:
            console.print(f"[yellow]warning: runs made by different sentitune code ({code_mix_line(mix)})[/yellow]")
            continue
        spread = "; ".join(f"{version}: {', '.join(runs)}" for version, runs in mix["versions"].items())
        console.print(f"[yellow]warning: runs made with different {mix['package']} versions ({spread})[/yellow]")
    failed = [r for r in document["runs"] if r["status"] not in ("ok",)]
    for row in failed:
        console.print(f"[red]{row['run_name']}: {row['status']}[/red] {row.get('error') or ''}")
    for t in document["pairwise"]:
        seeds = t["seeds"]
        over = f" ({len(seeds)} seeds: {', '.join(str(s) for s in seeds)})" if len(seeds) > 1 else ""
        verdict = "significant" if t["significant"] else "not significant"
        console.print(
            f"{t['a']} vs {t['b']}{over}: {100 * t['a_accuracy']:.2f} vs {100 * t['b_accuracy']:.2f}, "
            f"difference {100 * t['difference']:+.2f} points "
            f"[CI {100 * t['difference_ci95_low']:.1f}, {100 * t['difference_ci95_high']:.1f}], "
            f"p = {t['p_value']:.3g}, Holm p = {t['p_holm']:.3g} ({verdict})",
            markup=False,
            highlight=False,
        )
    recommendation = document.get("recommendation") or {}
    if recommendation.get("reason"):
        frontier = ", ".join(recommendation.get("pareto_optimal") or []) or "none"
        console.print(f"Pareto-optimal (accuracy vs memory, training time, inference speed): {frontier}", markup=False)
        console.print(f"recommendation: {recommendation['reason']}", markup=False, highlight=False)
    if document["pairwise"]:
        k = document["multiplicity"]["tests"]
        console.print(
            f"significance after Holm correction over {k} test{'s' if k != 1 else ''} "
            f"(exact McNemar on discordant counts pooled over shared seeds; level {compare.SIGNIFICANCE_LEVEL})",
            markup=False,
            highlight=False,
        )
    print_calibration_and_eval_sets(document, console)


def print_calibration_and_eval_sets(document: dict[str, Any], console) -> None:
    """One line of test ECE before -> after temperature scaling per variant, then per eval set each
    variant's accuracy with its CI and its Holm-corrected paired test against the reference."""
    calibrated = [
        f"{e['variant']} {_fmt(e.get('test_ece_uncalibrated_mean'), '.3f')} -> "
        f"{_fmt(e.get('test_ece_calibrated_mean'), '.3f')} (T {_fmt(e.get('temperature_mean'), '.2f')})"
        for e in document["summary"]
        if e.get("n_seeds") and e.get("temperature_mean") is not None and not math.isnan(e["temperature_mean"])
    ]
    if calibrated:
        console.print(
            "calibration, test ECE before -> after temperature scaling on validation: " + "; ".join(calibrated),
            markup=False,
            highlight=False,
        )
    for name, entry in (document.get("eval_sets") or {}).items():
        if not entry["variants"]:
            console.print(f"eval set {name}: no run scored (labels other than its own?)", markup=False)
            continue
        cells = [
            f"{variant} {100 * v['mean']:.2f} [{100 * v['ci95_low']:.1f}, {100 * v['ci95_high']:.1f}]"
            for variant, v in entry["variants"].items()
        ]
        console.print(
            f"eval set {name} ({entry['examples']} examples): accuracy % " + "; ".join(cells),
            markup=False,
            highlight=False,
        )
        k = entry["multiplicity"]["tests"]
        for t in entry["pairwise_vs_reference"]:
            console.print(
                f"    {t['a']} vs {t['b']}: difference {100 * t['difference']:+.2f} points "
                f"[CI {100 * t['difference_ci95_low']:.1f}, {100 * t['difference_ci95_high']:.1f}], "
                f"Holm p = {t['p_holm']:.3g} over {k} test{'s' if k != 1 else ''} "
                f"({'significant' if t['significant'] else 'not significant'})",
                markup=False,
                highlight=False,
            )
