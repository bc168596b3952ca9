"""`sentitune train`: flags -> RunConfig -> training.train -> a metrics table."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from sentitune.cli.options import config_from_args
from sentitune.training import is_main_process, train


SHOWN = (
    "test_accuracy",
    "test_macro_f1",
    "test_loss",
    "params_trainable",
    "params_trainable_percent",
    "train_samples_per_second",
    "train_tokens_per_second",
    "train_runtime_seconds",
    "peak_memory_mib",
    "eval_samples_per_second",
    "checkpoint_size_mib",
)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    output_dir = args.output_dir or f"runs/{cfg.data.dataset}-{cfg.method.name}"
    metrics = train(cfg, output_dir, overwrite=args.overwrite, resume=args.resume)
    if is_main_process():
        print_metrics(metrics, output_dir)
    return 0


def print_metrics(metrics: dict, output_dir: str) -> None:
    table = Table(title=f"{metrics['method']} on {metrics['dataset']} ({metrics['model']}) -> {output_dir}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in SHOWN:
        if key in metrics and metrics[key] is not None:
            value = metrics[key]
            table.add_row(key, f"{value:,.4f}" if isinstance(value, float) else f"{value:,}")
    Console().print(table)
