"""Training throughput: the seed's recipe (plain HF Trainer) against sentitune's loop, side by side.

Both fine-tune minilm-l6 in full on the same SST-2 training sentences (same stratified, seeded subset),
same batch size, learning rate, epochs and seed, then score GLUE dev. What differs is the recipe:

  baseline   HF Trainer, tokenizer padding="max_length", max_length=128, no length grouping,
             HF defaults for everything else (no warm-up, no weight decay)
  sentitune  sentitune.training.train, method full: dynamic padding, length-grouped batches

Throughput is measured the same way in both: a TrainerCallback times every optimizer step, the first
`--warmup-steps` steps are excluded (allocation, kernel selection), and samples are counted from the
batches the model actually received. Each side runs in its own fresh process, one after the other,
so neither inherits the other's allocator state or peak RSS.

Usage (from the repository root):
    python bench/train_throughput.py                            # 2,000 sentences, all 872 dev
    python bench/train_throughput.py --train-size 200 --limit 64  # smoke test

The last line printed is `ratio train_samples_per_s: X` (sentitune / baseline).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sentitune.runtime import machine_line


REPO = Path(__file__).resolve().parents[1]
SIDES = ("baseline", "sentitune")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-size", type=int, default=2000, help="SST-2 training sentences (default 2000)")
    parser.add_argument(
        "--limit", type=int, default=None, help="score only this many GLUE dev sentences (default all 872)"
    )
    parser.add_argument("--model", default="minilm-l6", help="model alias, folder or hub id (default minilm-l6)")
    parser.add_argument(
        "--data-dir", default=None, help="folder with sst2/ (default $SENTITUNE_DATA_DIR, else ../shared/data)"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    # sentitune's full default; at 2e-5 one epoch of 63 steps leaves both recipes near chance.
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--warmup-steps", type=int, default=5, help="optimizer steps left out of samples/s")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in each run (default: torch's)")
    parser.add_argument("--only", choices=SIDES, help="run one side only")
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def data_dir(args) -> str:
    candidates = [args.data_dir, os.environ.get("SENTITUNE_DATA_DIR"), str(REPO.parent / "shared" / "data")]
    for candidate in candidates:
        if candidate and (Path(candidate) / "sst2" / "train.tsv").exists():
            return str(Path(candidate).resolve())
    sys.exit("error: no sst2/train.tsv found; pass --data-dir or set $SENTITUNE_DATA_DIR")


def data_config(args):
    from sentitune.config import DataConfig

    # The validation slice is carved before the subset so both sides train on the very same rows;
    # neither side evaluates on it.
    return DataConfig(
        dataset="sst2",
        data_dir=data_dir(args),
        train_subset=args.train_size,
        validation_size=500,
        test_subset=args.limit,
        max_length=128,
        split_seed=args.seed,
    )


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- workers (each in its own process) --------------------------------------------------------


def run_baseline(args) -> dict:
    import numpy as np
    import torch
    from datasets import Dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        set_seed,
    )

    from sentitune.data import load_splits
    from sentitune.models import resolve_model

    if args.threads:
        torch.set_num_threads(args.threads)
    splits = load_splits(data_config(args))
    location = resolve_model(args.model).location
    tokenizer = AutoTokenizer.from_pretrained(location)

    def encode(split):
        encoded = tokenizer(split.texts, padding="max_length", truncation=True, max_length=128)
        return Dataset.from_dict({**encoded, "labels": split.labels})

    train_ds, test_ds = encode(splits.train), encode(splits.test)
    set_seed(args.seed)
    model = AutoModelForSequenceClassification.from_pretrained(location, num_labels=len(splits.label_names))

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds, self.steps, self.samples, self.tokens = 0.0, 0, 0, 0
            self.batch = {"samples": 0, "tokens": 0}
            self.start = None

        def on_step_begin(self, args_, state, control, **kwargs):
            self.batch = {"samples": 0, "tokens": 0}
            self.start = time.perf_counter()

        def on_step_end(self, args_, state, control, **kwargs):
            if state.global_step > args.warmup_steps:
                self.seconds += time.perf_counter() - self.start
                self.steps += 1
                self.samples += self.batch["samples"]
                self.tokens += self.batch["tokens"]

    timer = StepTimer()

    class CountingTrainer(Trainer):
        # The callback cannot see the batch; counting here keeps a short last batch honest.
        def training_step(self, model, inputs, num_items_in_batch=None):
            timer.batch["samples"] += int(inputs["input_ids"].shape[0])
            timer.batch["tokens"] += int(inputs["attention_mask"].sum())
            return super().training_step(model, inputs, num_items_in_batch)

    with tempfile.TemporaryDirectory() as scratch:
        training_args = TrainingArguments(
            output_dir=scratch,
            per_device_train_batch_size=args.batch_size,
            per_device_eval_batch_size=64,
            learning_rate=args.learning_rate,
            num_train_epochs=args.epochs,
            seed=args.seed,
            eval_strategy="no",
            save_strategy="no",
            logging_steps=50,
            report_to="none",
            disable_tqdm=True,
        )
        trainer = CountingTrainer(model=model, args=training_args, train_dataset=train_ds, callbacks=[timer])
        started = time.perf_counter()
        trainer.train()
        train_seconds = time.perf_counter() - started
        prediction = trainer.predict(test_ds)
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    accuracy = float((np.asarray(logits).argmax(axis=1) == np.asarray(splits.test.labels)).mean())
    return {
        "train_examples": len(splits.train),
        "test_examples": len(splits.test),
        "train_samples_per_second": timer.samples / timer.seconds if timer.seconds else float("nan"),
        "train_tokens_per_second": timer.tokens / timer.seconds if timer.seconds else float("nan"),
        "train_padded_tokens_per_second": timer.samples * 128 / timer.seconds if timer.seconds else float("nan"),
        "throughput_measured_steps": timer.steps,
        "train_runtime_seconds": train_seconds,
        "test_accuracy": accuracy,
        "peak_memory_mib": peak_rss_mib(),
        "precision": "fp32",  # the seed recipe sets neither bf16 nor fp16
    }


def run_sentitune(args) -> dict:
    from sentitune.config import RunConfig
    from sentitune.training import train

    cfg = RunConfig(model=args.model, data=data_config(args))
    cfg = cfg.override(
        {
            "method.name": "full",
            "method.learning_rate": args.learning_rate,
            "train.epochs": args.epochs,
            "train.batch_size": args.batch_size,
            "train.seed": args.seed,
            # No validation passes: the baseline has none, and they would only add wall time.
            "train.eval_strategy": "no",
            "train.warmup_steps_excluded_from_throughput": args.warmup_steps,
            "train.logging_steps": 50,
            "train.threads": args.threads,
        }
    )
    with tempfile.TemporaryDirectory() as scratch:
        metrics = train(cfg, Path(scratch) / "run")
    keep = (
        "train_examples",
        "test_examples",
        "train_samples_per_second",
        "train_tokens_per_second",
        "train_padded_tokens_per_second",
        "throughput_measured_steps",
        "train_runtime_seconds",
        "test_accuracy",
        "peak_memory_mib",
        "precision",  # train.precision auto: bf16 autocast on CPUs with native bf16, else fp32
    )
    return {key: metrics[key] for key in keep}


# ---- driver -----------------------------------------------------------------------------------


def run_side(side: str, argv: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        result = Path(scratch) / "result.json"
        command = [sys.executable, str(Path(__file__).resolve()), *argv, "--worker", side, "--result", str(result)]
        env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"), "TOKENIZERS_PARALLELISM": "false"}
        print(f"[{side}] running in a fresh process ...", flush=True)
        started = time.perf_counter()
        done = subprocess.run(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            sys.stderr.write(done.stderr[-4000:])
            sys.exit(f"error: the {side} run failed (exit {done.returncode})")
        data = json.loads(result.read_text())
        data["process_seconds"] = time.perf_counter() - started
        return data


def print_table(results: dict[str, dict]) -> None:
    rows = [
        ("train examples", "train_examples", "{:,.0f}"),
        ("GLUE dev examples", "test_examples", "{:,.0f}"),
        ("train samples/s", "train_samples_per_second", "{:,.2f}"),
        ("train tokens/s (real)", "train_tokens_per_second", "{:,.0f}"),
        ("train tokens/s (incl. padding)", "train_padded_tokens_per_second", "{:,.0f}"),
        ("measured steps", "throughput_measured_steps", "{:,.0f}"),
        ("train runtime s", "train_runtime_seconds", "{:,.1f}"),
        ("GLUE dev accuracy", "test_accuracy", "{:.4f}"),
        ("peak RSS MiB", "peak_memory_mib", "{:,.0f}"),
        ("precision", "precision", "{}"),
        ("process wall s", "process_seconds", "{:,.1f}"),
    ]
    sides = list(results)
    print(f"{'':32}" + "".join(f"{side:>14}" for side in sides))
    for label, key, fmt in rows:
        cells = "".join(f"{fmt.format(results[side][key]) if key in results[side] else '-':>14}" for side in sides)
        print(f"{label:32}{cells}")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    # Figures mean little without the hardware: CPU model, cores and the ISA flags that decide them.
    print(machine_line(), flush=True)
    if args.worker:
        result = run_baseline(args) if args.worker == "baseline" else run_sentitune(args)
        Path(args.result).write_text(json.dumps(result))
        return 0
    data_dir(args)  # fail here, not inside a worker
    sides = [args.only] if args.only else list(SIDES)
    print(
        f"minilm full fine-tuning: {args.train_size} SST-2 sentences, batch {args.batch_size}, "
        f"lr {args.learning_rate}, {args.epochs:g} epoch(s), seed {args.seed}, "
        f"first {args.warmup_steps} steps excluded from samples/s"
    )
    results = {side: run_side(side, argv) for side in sides}
    print()
    print_table(results)
    if len(results) == 2:
        ratio = results["sentitune"]["train_samples_per_second"] / results["baseline"]["train_samples_per_second"]
        print(f"ratio train_samples_per_s: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
