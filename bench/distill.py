"""Distillation benchmark: a teacher run and its distilled student, accuracy and sentences/s side by side.

    python bench/distill.py --teacher runs/sst2-full                      # reuse a teacher, distil minilm-l6:layers=3
    python bench/distill.py --preset sst2-quick --train-subset 200 --max-steps 20 --limit 64   # a smoke run

Without --teacher it first trains one (--teacher-method, default full, on --teacher-model, default minilm-l6,
with the preset and size flags); then it distils --student (default minilm-l6:layers=3) from it with
`sentitune.distill`, exports both to ONNX int8 (sentitune.export) and times torch fp32 and ONNX int8 for
each on the GLUE SST-2 dev sentences with bench/inference.py's warm-up-then-time loop, in this one
process. Runs and exports go to --workdir (default a temp folder); finished ones there are reused.
The first line names the machine; the output ends with exactly three lines:

    accuracy_gap_points: X            teacher minus student accuracy, torch fp32, in points
    speedup_int8: Y                   student ONNX int8 sentences/s over the teacher's
    student_int8_sentences_per_s: Z

Targets (issue 16; full SST-2, minilm-l6 full teacher, 3-layer student): X <= 1.0, Y >= 1.8, and
Z >= 1,000 on 2 cores of a VNNI CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

from sentitune.runtime import machine_line


os.environ.setdefault("HF_HUB_OFFLINE", "1")


def size_overrides(args: argparse.Namespace) -> dict:
    """The size flags as dotted config overrides (None: not given)."""
    return {
        "data.train_subset": args.train_subset,
        "data.test_subset": args.test_subset,
        "train.epochs": args.epochs,
        "train.max_steps": args.max_steps,
        "train.batch_size": args.batch_size_train,
        "train.seed": args.seed,
    }


def train_teacher(args: argparse.Namespace, folder: Path) -> Path:
    from sentitune import results
    from sentitune.config import load_config
    from sentitune.training import train

    if results.read_status(folder) == "ok":
        print(f"reusing teacher {folder}", file=sys.stderr, flush=True)
        return folder
    overrides = {"model": args.teacher_model, "method.name": args.teacher_method, **size_overrides(args)}
    print(f"training teacher -> {folder} ...", file=sys.stderr, flush=True)
    train(load_config(preset=args.preset, overrides=overrides), folder, overwrite=folder.exists())
    return folder


def train_student(args: argparse.Namespace, teacher: Path, folder: Path) -> Path:
    from sentitune import results
    from sentitune.distill import distill, student_config

    if results.read_status(folder) == "ok":
        print(f"reusing student {folder}", file=sys.stderr, flush=True)
        return folder
    overrides = {
        **size_overrides(args),
        "distill.alpha": args.alpha,
        "distill.temperature": args.temperature,
        "distill.unlabelled": args.unlabelled,
        "distill.unlabelled_unit": args.unlabelled_unit,
        "distill.unlabelled_limit": args.unlabelled_limit,
    }
    print(f"distilling {args.student} from {teacher} -> {folder} ...", file=sys.stderr, flush=True)
    cfg = student_config(str(teacher), args.student, overrides=overrides)
    distill(cfg, folder, overwrite=folder.exists(), students_dir=folder.parent / "students")
    return folder


def measure(name: str, run: Path, export_dir: Path, texts: list[str], gold: np.ndarray, batch_size: int) -> dict:
    """torch fp32 and ONNX int8 rows (bench/inference.py's `timed`) for one run."""
    from inference import timed  # bench/inference.py, beside this script

    from sentitune.export import export_run
    from sentitune.inference import Predictor

    if not (export_dir / "sentitune.json").exists():
        export_run(run, export_dir, fmt="onnx", quantize="int8", parity=False)
    torch_model = Predictor.load(run, device="cpu", precision="fp32")
    rows = {
        "torch": timed(
            f"{name} torch fp32", lambda xs: torch_model.predict_proba(xs, batch_size), texts, gold, np.argmax
        ),
        "params": sum(p.numel() for p in torch_model.model.parameters()),
    }
    torch_model = None  # frees the torch model before ONNX Runtime runs
    int8 = Predictor.load(export_dir, device="cpu", variant="int8")
    rows["int8"] = timed(f"{name} onnx int8", lambda xs: int8.predict_proba(xs, batch_size), texts, gold, np.argmax)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", help="a finished teacher run to reuse (default: train one into --workdir)")
    parser.add_argument("--teacher-model", default="minilm-l6", help="model of a trained teacher (default minilm-l6)")
    parser.add_argument("--teacher-method", default="full", help="method of a trained teacher (default full)")
    parser.add_argument("--student", default="minilm-l6:layers=3", help="student model or MODEL:layers=K")
    parser.add_argument("--student-run", help="a finished student run to reuse (default: distil into --workdir)")
    parser.add_argument("--preset", help="config preset for a trained teacher (default: the defaults, full SST-2)")
    parser.add_argument("--train-subset", type=int, help="training examples (teacher and student)")
    parser.add_argument("--test-subset", type=int, help="test examples (smoke runs)")
    parser.add_argument("--epochs", type=float, help="training epochs (teacher and student)")
    parser.add_argument("--max-steps", type=int, help="optimizer steps (teacher and student)")
    parser.add_argument("--batch-size-train", type=int, help="training batch size")
    parser.add_argument("--seed", type=int, help="training seed")
    parser.add_argument("--alpha", type=float, help="distill.alpha")
    parser.add_argument("--temperature", type=float, help="distill.temperature")
    parser.add_argument("--unlabelled", help="extra texts the teacher labels (distill.unlabelled)")
    parser.add_argument("--unlabelled-unit", choices=("text", "sentence"), help="distill.unlabelled_unit")
    parser.add_argument("--unlabelled-limit", type=int, help="distill.unlabelled_limit")
    parser.add_argument("--data", help="GLUE SST-2 dev.tsv to time on (default $SENTITUNE_DATA_DIR/sst2/dev.tsv)")
    parser.add_argument("--limit", type=int, help="only the first N dev sentences (smoke runs)")
    parser.add_argument("--batch-size", type=int, default=64, help="inference batch size")
    parser.add_argument("--workdir", help="runs and exports (default: a temp folder)")
    args = parser.parse_args(argv)
    print(machine_line(), flush=True)

    from inference import load_dev  # bench/inference.py, beside this script
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="sentitune-distill-"))
    teacher = Path(args.teacher) if args.teacher else train_teacher(args, workdir / "teacher")
    student = Path(args.student_run) if args.student_run else train_student(args, teacher, workdir / "student")

    data = Path(args.data) if args.data else Path(os.environ.get("SENTITUNE_DATA_DIR", "data")) / "sst2" / "dev.tsv"
    texts, gold = load_dev(data, args.limit)
    print(f"timing on {len(texts)} sentences from {data}", file=sys.stderr, flush=True)
    rows = {
        "teacher": measure("teacher", teacher, workdir / "teacher-onnx", texts, gold, args.batch_size),
        "student": measure("student", student, workdir / "student-onnx", texts, gold, args.batch_size),
    }

    import json

    agreement = json.loads((student / "metrics.json").read_text(encoding="utf-8"))
    print()
    print(f"{'model':<8} {'params':>12} {'backend':<11} {'sentences/s':>12} {'accuracy':>9}")
    for who, measured in rows.items():
        for backend in ("torch", "int8"):
            row = measured[backend]
            print(
                f"{who:<8} {measured['params']:>12,} {backend:<11} {row['sentences_per_second']:>12.1f} "
                f"{100 * row['accuracy']:>8.2f}%"
            )
    print(
        f"student vs teacher on the run's test split: agreement {agreement.get('teacher_agreement')}, McNemar p "
        f"{agreement.get('teacher_mcnemar_p_value')}"
    )
    gap = 100 * (rows["teacher"]["torch"]["accuracy"] - rows["student"]["torch"]["accuracy"])
    speedup = rows["student"]["int8"]["sentences_per_second"] / rows["teacher"]["int8"]["sentences_per_second"]
    print(f"accuracy_gap_points: {gap:.2f}")
    print(f"speedup_int8: {speedup:.2f}")
    print(f"student_int8_sentences_per_s: {rows['student']['int8']['sentences_per_second']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
