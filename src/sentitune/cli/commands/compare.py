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
    }
    if args.seeds:
        seeds = parse_list(args.seeds, int)
        overrides["compare.seeds"] = list(range(1, seeds[0] + 1)) if len(seeds) == 1 else seeds
    cfg = cfg.override(overrides)
    out = Path(args.output_dir or f"results/{cfg.data.dataset}")
    document = compare.run_comparison(cfg, out, parallel=args.parallel, allow_version_mix=args.allow_version_mix)
    print_summary(document)
    print(f"results: {out / compare.RESULTS_CSV}, {out / compare.RESULTS_JSON}")
    return 0 if all(r["status"] == "ok" for r in document["runs"]) else 1


def _fmt(value, spec: str, missing: str = "-") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return format(value, spec)


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
    for mix in document.get("version_mix") or []:
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
    if document["pairwise"]:
        k = document["multiplicity"]["tests"]
        console.print(
            f"significance after Holm correction over {k} test{'s' if k != 1 else ''} "
            f"(exact McNemar on discordant counts pooled over shared seeds; level {compare.SIGNIFICANCE_LEVEL})",
            markup=False,
            highlight=False,
        )
