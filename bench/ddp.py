"""DDP scaling on this machine: samples/s of `sentitune train` in 1 process vs 2 processes (torchrun,
gloo on CPU), for the tiny test-sized BERT and for minilm-l6, with the scaling efficiency.

Each configuration runs in fresh processes, one after the other. Per-process batch size is fixed, so
2 processes train with twice the global batch (what DDP users get unless they rescale). Throughput is
sentitune's own measurement (warm-up steps excluded, summed over processes).

Usage (from the repository root):
    python bench/ddp.py                      # 512 SST-2 sentences per configuration
    python bench/ddp.py --train-size 128     # smoke test

On a 2-core machine, 2 processes get 1 core each where 1 process had both: expect efficiency well
below 1; the number shows what DDP costs in communication, not what it gains on real hardware.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from sentitune.runtime import machine_line


REPO = Path(__file__).resolve().parents[1]


def tiny_model(folder: Path) -> str:
    from transformers import AutoTokenizer, BertConfig, BertModel

    from sentitune.models import resolve_model

    BertModel(
        BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
    ).save_pretrained(folder)
    AutoTokenizer.from_pretrained(resolve_model("minilm-l6").location).save_pretrained(folder)
    return str(folder)


def run(model: str, processes: int, args, work: Path) -> dict:
    config = {
        "model": model,
        "data": {"dataset": "sst2", "train_subset": args.train_size, "validation_size": 200, "test_subset": 200},
        "method": {"name": "full"},
        "train": {"epochs": 1, "batch_size": args.batch_size, "eval_strategy": "no", "logging_steps": 1000},
    }
    config_file = work / f"{Path(model).name}-{processes}.yaml"
    config_file.write_text(yaml.safe_dump(config))
    out = work / f"run-{Path(model).name}-{processes}"
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
        if processes > 1
        else [sys.executable]
    )
    command = launcher + ["-m", "sentitune", "train", "--config", str(config_file), "--output-dir", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if processes > 1:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 2) // processes))  # one share of the cores each
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return json.loads((out / "metrics.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16, help="per process")
    parser.add_argument("--models", default="tiny,minilm-l6")
    args = parser.parse_args()
    # Figures mean little without the hardware: CPU model, cores and the ISA flags that decide them.
    print(machine_line(), flush=True)
    if not os.environ.get("SENTITUNE_DATA_DIR"):
        os.environ["SENTITUNE_DATA_DIR"] = str(REPO.parent / "shared" / "data")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print(f"{'model':12s} {'1 proc samples/s':>17s} {'2 proc samples/s':>17s} {'speed-up':>9s} {'efficiency':>11s}")
        for name in args.models.split(","):
            model = tiny_model(work / "tiny") if name == "tiny" else name
            one = run(model, 1, args, work)["train_samples_per_second"]
            two = run(model, 2, args, work)["train_samples_per_second"]
            print(f"{name:12s} {one:17.1f} {two:17.1f} {two / one:8.2f}x {two / (2 * one):11.2f}", flush=True)
            print(f"ratio ddp2_vs_1 {name}: {two / one:.2f}")


if __name__ == "__main__":
    main()
