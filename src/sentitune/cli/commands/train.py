"""`sentitune train`: flags -> RunConfig -> training.train -> a metrics table."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from sentitune.cli.options import config_from_args
from sentitune.errors import ConfigError
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
    output_dir = args.output_dir or f"runs/{cfg.data.name}-{cfg.method.name}"
    resume = resume_flag(args.resume, output_dir)
    if cfg.distill.teacher is not None:  # a config with a distill section (compare runs one through train)
        from sentitune.distill import distill

        metrics = distill(cfg, output_dir, overwrite=args.overwrite, resume=resume, selection_only=args.selection_only)
    else:
        metrics = train(cfg, output_dir, overwrite=args.overwrite, resume=resume, selection_only=args.selection_only)
    if is_main_process():
        print_metrics(metrics, output_dir)
    return 0


def resume_flag(value: bool | str | None, output_dir: str) -> bool:
    """--resume, or --resume_from_checkpoint [PATH]: the run always continues from the newest complete
    checkpoint in the run folder, so a PATH must name that folder or a checkpoint inside it."""
    if not isinstance(value, str) or value.lower() == "true":
        return bool(value)
    if value.lower() == "false":
        return False
    run_dir, path = Path(output_dir).resolve(), Path(value).resolve()
    if path != run_dir and run_dir not in path.parents:
        raise ConfigError(
            f"--resume_from_checkpoint {value}: not inside the run folder {output_dir}; sentitune resumes the "
            "newest complete checkpoint of --output-dir (pass --output-dir to point at another run)"
        )
    return True


def print_metrics(metrics: dict, output_dir: str, extra: tuple[str, ...] = ()) -> None:
    table = Table(title=f"{metrics['method']} on {metrics['dataset']} ({metrics['model']}) -> {output_dir}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in SHOWN + extra:
        if key in metrics and metrics[key] is not None:
            value = metrics[key]
            table.add_row(key, f"{value:,.4f}" if isinstance(value, float) else f"{value:,}")
    Console().print(table)
