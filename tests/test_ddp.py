"""A real 2-process DDP training (gloo on CPU) through torchrun: one run folder, written by rank 0,
and a test evaluation that covers every example exactly once, in file order."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import yaml

from sentitune.inference import Predictor


def test_torchrun_two_processes_write_one_complete_run(tiny_config, tiny_data, tmp_path):
    cfg = tiny_config("full", **{"train.eval_strategy": "epoch", "train.batch_size": 4})
    config_file = tmp_path / "ddp.yaml"
    config_file.write_text(yaml.safe_dump(cfg.to_dict()))
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "sentitune",
        "train",
        "--config",
        str(config_file),
        "--output-dir",
        str(out),
    ]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "ok" and metrics["world_size"] == 2
    # Each rank holds half the training data per step; the gathered test split is the whole file, once.
    test_texts = pd.read_csv(tiny_data["test"])["text"].str.strip().tolist()
    predictions = pd.read_csv(out / "predictions.csv")
    assert predictions["text"].tolist() == test_texts
    assert metrics["test_examples"] == len(test_texts)
    # The saved model reproduces the gathered probabilities row by row: nothing duplicated or shifted.
    probabilities = Predictor.load(out).predict_proba(test_texts)
    assert np.abs(probabilities - predictions[["prob_negative", "prob_positive"]].to_numpy()).max() < 1e-4
    assert not (out / "checkpoints").exists()
