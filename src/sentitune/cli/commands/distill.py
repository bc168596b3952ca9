"""`sentitune distill --teacher RUN --student MODEL --output-dir DIR`: flags -> the student's RunConfig
(distill.student_config) -> distill.distill -> the train command's metrics table."""

from __future__ import annotations

import argparse

from sentitune.cli.commands.train import print_metrics
from sentitune.cli.options import run_overrides
from sentitune.config import ConfigError, load_config
from sentitune.distill import distill, student_config
from sentitune.training import is_main_process


SHOWN = ("teacher_test_accuracy", "teacher_agreement", "teacher_mcnemar_p_value")


def run(args: argparse.Namespace) -> int:
    overrides = run_overrides(args)
    if overrides.pop("model", None) is not None:
        raise ConfigError("--model: distill takes the student's model as --student")
    overrides.update(
        {
            "distill.alpha": args.alpha,
            "distill.temperature": args.temperature,
            "distill.unlabelled": args.unlabelled,
            "distill.unlabelled_column": args.unlabelled_column,
            "distill.unlabelled_unit": args.unlabelled_unit,
            "distill.unlabelled_limit": args.unlabelled_limit,
        }
    )
    base = load_config(args.config, args.preset) if args.config or args.preset else None
    cfg = student_config(args.teacher, args.student, base, overrides)
    metrics = distill(
        cfg, args.output_dir, overwrite=args.overwrite, resume=args.resume, students_dir=args.students_dir
    )
    if is_main_process():
        print_metrics(metrics, args.output_dir, extra=SHOWN)
    return 0
