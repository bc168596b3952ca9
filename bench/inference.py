"""Inference throughput: the naive HF pipeline vs sentitune (torch, ONNX fp32, ONNX int8), side by side.

    python bench/inference.py runs/sst2-lora            # the 872 GLUE SST-2 dev sentences
    python bench/inference.py runs/sst2-lora --limit 64 # a smoke run

The run folder should be a minilm-l6 run (any neural method). Its LoRA adapters are merged once into
an HF folder for the pipeline and exported to ONNX (fp32 + int8) in a temporary folder (or
--export-dir). Each variant is warmed up, then timed over every sentence in one process, with the
same threads (all cores) for torch and ONNX Runtime. Output ends with exactly three lines:

    ratio int8_vs_pipeline_one: X
    ratio int8_vs_pipeline_bs64: Y
    accuracy_drop_points int8: Z

Targets: X >= 10, Y >= 4, Z <= 0.5 (int8 against sentitune torch fp32).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def load_dev(path: Path, limit: int | None) -> tuple[list[str], np.ndarray]:
    from sentitune.data import read_table

    table = read_table(path, "sentence", "label")
    texts, labels = table.texts, np.asarray([int(x) for x in table.labels])
    return (texts[:limit], labels[:limit]) if limit else (texts, labels)


def timed(name: str, predict, texts: list[str], gold: np.ndarray, label_index) -> dict:
    """Warm-up on a few sentences, then one timed pass over all; returns the row for the table."""
    predict(texts[:16])
    started = time.perf_counter()
    predicted = predict(texts)
    seconds = time.perf_counter() - started
    accuracy = float((np.asarray([label_index(p) for p in predicted]) == gold).mean())
    row = {"name": name, "seconds": seconds, "sentences_per_second": len(texts) / seconds, "accuracy": accuracy}
    print(f"  {name:<24} {row['sentences_per_second']:>10.1f} sent/s  {seconds:>8.2f} s  "
          f"accuracy {100 * accuracy:6.2f}%", file=sys.stderr, flush=True)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a finished minilm-l6 run folder (full, lora or head)")
    parser.add_argument("--data", help="GLUE SST-2 dev.tsv (default $SENTITUNE_DATA_DIR/sst2/dev.tsv)")
    parser.add_argument("--limit", type=int, help="only the first N sentences (smoke runs)")
    parser.add_argument("--batch-size", type=int, default=64, help="sentitune and pipeline batch size")
    parser.add_argument("--export-dir", help="keep the HF and ONNX exports here (default: a temp folder)")
    args = parser.parse_args(argv)

    import torch
    from transformers import pipeline
    from transformers.utils import logging as hf_logging

    from sentitune.export import export_run
    from sentitune.inference import Predictor, available_cores

    data = Path(args.data) if args.data else Path(os.environ.get("SENTITUNE_DATA_DIR", "data")) / "sst2" / "dev.tsv"
    texts, gold = load_dev(data, args.limit)
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    workdir = Path(args.export_dir) if args.export_dir else Path(tempfile.mkdtemp(prefix="sentitune-bench-"))
    hf_dir, onnx_dir = workdir / "hf", workdir / "onnx-int8"
    print(f"exporting {args.run} -> {workdir} ...", file=sys.stderr, flush=True)
    for folder, fmt, quantize in ((hf_dir, "hf", None), (onnx_dir, "onnx", "int8")):
        if not (folder / "sentitune.json").exists():
            export_run(args.run, folder, fmt=fmt, quantize=quantize, parity=False)

    torch_model = Predictor.load(args.run, device="cpu")
    labels = torch_model.label_names
    cores = available_cores()
    print(f"{len(texts)} sentences from {data}; torch threads {torch.get_num_threads()}, ONNX Runtime threads "
          f"{cores}; batch size {args.batch_size}", file=sys.stderr, flush=True)

    pipe = pipeline("text-classification", model=str(hf_dir), tokenizer=str(hf_dir), device=-1)
    truncate = {"truncation": True, "max_length": torch_model.max_length}
    by_name = {name: i for i, name in enumerate(labels)}
    rows = [
        timed("hf pipeline, one at a time", lambda xs: [pipe(x, **truncate)[0]["label"] for x in xs],
              texts, gold, by_name.get),
        timed(f"hf pipeline, batch {args.batch_size}",
              lambda xs: [r["label"] for r in pipe(xs, batch_size=args.batch_size, **truncate)], texts, gold,
              by_name.get),
        timed("sentitune torch fp32", lambda xs: torch_model.predict_proba(xs, args.batch_size), texts, gold,
              np.argmax),
    ]
    del pipe
    for variant in ("fp32", "int8"):
        onnx = Predictor.load(onnx_dir, device="cpu", variant=variant, threads=cores)
        rows.append(timed(f"sentitune onnx {variant}", lambda xs, p=onnx: p.predict_proba(xs, args.batch_size),
                          texts, gold, np.argmax))

    one, bs64, torch_row, _, int8 = rows
    print()
    print(f"{'variant':<28} {'sentences/s':>12} {'seconds':>9} {'accuracy':>9} {'x one-at-a-time':>16}")
    for row in rows:
        print(f"{row['name']:<28} {row['sentences_per_second']:>12.1f} {row['seconds']:>9.2f} "
              f"{100 * row['accuracy']:>8.2f}% {row['sentences_per_second'] / one['sentences_per_second']:>15.1f}x")
    print(f"ratio int8_vs_pipeline_one: {int8['sentences_per_second'] / one['sentences_per_second']:.2f}")
    print(f"ratio int8_vs_pipeline_bs64: {int8['sentences_per_second'] / bs64['sentences_per_second']:.2f}")
    print(f"accuracy_drop_points int8: {100 * (torch_row['accuracy'] - int8['accuracy']):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
