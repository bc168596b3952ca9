"""One real-model check: the bundled pretrained MiniLM, fine-tuned in full on 1,000 SST-2 sentences,
must clear 75% on all 872 GLUE dev sentences. Tiny random models prove the plumbing; this proves that
the loop actually learns (a misaligned label map or a frozen encoder would sit near 50%)."""

from __future__ import annotations

import pytest
from conftest import shared_data_dir


@pytest.mark.slow
def test_minilm_full_fine_tuning_learns_sst2(tmp_path):
    root = shared_data_dir()
    if root is None:
        reason = "SST-2 not found: set $SENTITUNE_DATA_DIR to a folder holding sst2/train.tsv and sst2/dev.tsv"
        print(f"SKIP: {reason}")
        pytest.skip(reason)

    from sentitune.config import RunConfig
    from sentitune.inference import Predictor
    from sentitune.training import train

    cfg = RunConfig.from_dict(
        {
            "model": "minilm-l6",
            "data": {"dataset": "sst2", "data_dir": str(root), "train_subset": 1000, "validation_size": 500},
            # 5e-5 rather than full's default 2e-5: with 190 steps the smaller step leaves MiniLM undertrained.
            "method": {"name": "full", "learning_rate": 5e-5},
            "train": {"epochs": 3, "batch_size": 16, "eval_strategy": "no", "logging_steps": 20, "seed": 42},
        }
    )
    metrics = train(cfg, tmp_path / "run")
    print(
        f"minilm-l6 full, 1,000 SST-2 sentences, 3 epochs: test_accuracy {metrics['test_accuracy']:.4f} "
        f"on {metrics['test_examples']} dev sentences, {metrics['train_runtime_seconds']:.0f} s training"
    )
    assert metrics["status"] == "ok"
    assert metrics["train_examples"] == 1000 and metrics["test_examples"] == 872
    assert metrics["test_accuracy"] >= 0.75

    # The saved model reproduces the run's own predictions on a few real sentences.
    predictor = Predictor.load(tmp_path / "run")
    rows = predictor.predict(["a gorgeous , witty , seductive movie .", "the story is a dull , lifeless mess ."])
    assert [row["label"] for row in rows] == ["positive", "negative"]
