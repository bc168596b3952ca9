"""`sentitune data inspect`: split sizes, class balance and token-length percentiles, as a table or JSON."""

from __future__ import annotations

import argparse
import json
import sys

from rich.console import Console
from rich.table import Table

from sentitune.cli.options import config_from_args
from sentitune.data import inspect_splits, load_splits
from sentitune.models import load_tokenizer, resolve_model


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    splits = load_splits(cfg.data)
    tokenizer = load_tokenizer(resolve_model(cfg.model))
    report = inspect_splits(splits, tokenizer, cfg.data.resolved_max_length)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    console = Console(width=None if sys.stdout.isatty() else 150)
    console.print(f"source: {report['source']}   labels: {report['label_names']}   notes: {report['notes']}")
    table = Table(
        title=f"{cfg.data.dataset} with the {cfg.model} tokenizer (max_length {cfg.data.resolved_max_length})"
    )
    for column in ("split", "size", "class balance", "tokens mean", "p50", "p90", "p95", "p99", "max", "> max_length"):
        table.add_column(column, justify="right" if column != "class balance" else "left")
    for name, entry in report["splits"].items():
        size = entry["size"]
        balance = ", ".join(f"{k} {v} ({100 * v / size:.1f}%)" for k, v in entry["class_counts"].items())
        tokens = entry["tokens"]
        table.add_row(
            name,
            f"{size:,}",
            balance,
            f"{tokens['mean']:.1f}",
            *(f"{tokens[p]:.0f}" for p in ("p50", "p90", "p95", "p99")),
            str(tokens["max"]),
            str(tokens.get("over_max_length", "")),
        )
    console.print(table)
    return 0
