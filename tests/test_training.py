"""The training loop's run folder: metrics, predictions, history, and the output-folder rules."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from conftest import write_rows

from sentitune.data import DataError
from sentitune.models import ModelNotAvailable
from sentitune.results import RunFolderError, load_run
from sentitune.training import train


NEURAL_KEYS = {
    "status",
    "error",
    "method",
    "model",
    "dataset",
    "seed",
    "learning_rate",
    "fingerprint",
    "started_at",
    "finished_at",
    "wall_seconds",
    "provenance",
    "test_accuracy",
    "test_macro_f1",
    "test_loss",
    "test_examples",
    "train_examples",
    "validation_examples",
    "params_trainable",
    "params_total",
    "params_trainable_percent",
    "train_runtime_seconds",
    "train_steps",
    "train_samples_per_second",
    "train_tokens_per_second",
    "throughput_measured_steps",
    "throughput_warmup_steps_excluded",
    "eval_samples_per_second",
    "eval_latency_ms_per_batch",
    "peak_memory_mib",
    "eval_peak_memory_mib",
    "memory_weights_mib",
    "memory_gradients_mib",
    "memory_optimizer_state_mib",
    "memory_activations_mib",
    "checkpoint_size_mib",
    "precision",
    "truncated_examples",
    "max_length",
    "data_source",
    "data_notes",
    "label_names",
}
# The classical baseline has no tokens, gradients or optimizer state to report.
TFIDF_KEYS = NEURAL_KEYS - {
    "train_tokens_per_second",
    "eval_latency_ms_per_batch",
    "eval_peak_memory_mib",
    "memory_gradients_mib",
    "memory_optimizer_state_mib",
    "truncated_examples",
    "max_length",
}


def _metrics(run_dir):
    return json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("method", ["full", "tfidf"])
def test_metrics_json_has_the_documented_keys(method, trained_run):
    run_dir = trained_run(method)
    metrics = _metrics(run_dir)
    expected = NEURAL_KEYS if method == "full" else TFIDF_KEYS
    assert expected - set(metrics) == set()
    assert metrics["status"] == "ok" and metrics["error"] is None
    assert metrics["method"] == method and metrics["seed"] == 42
    assert 0 <= metrics["test_accuracy"] <= 1 and 0 <= metrics["test_macro_f1"] <= 1
    assert metrics["test_examples"] == 24 and metrics["validation_examples"] == 16
    assert metrics["params_trainable"] > 0 and metrics["checkpoint_size_mib"] > 0
    assert metrics["train_samples_per_second"] > 0 and metrics["peak_memory_mib"] > 0
    provenance = metrics["provenance"]
    assert {"git_sha", "versions", "device", "device_name", "hostname"} <= set(provenance)
    assert {"python", "torch", "transformers", "sentitune"} <= set(provenance["versions"])
    assert provenance["device"] in ("cpu", "cuda")
    # Units live in the key names.
    for key, value in metrics.items():
        if isinstance(value, float) and ("memory" in key or "size" in key):
            assert key.endswith("_mib"), key
        if isinstance(value, float) and ("runtime" in key or "latency" in key):
            assert key.endswith(("_seconds", "_ms_per_batch")), key


def test_neural_throughput_skips_warmup_steps(trained_run):
    metrics = _metrics(trained_run("full"))
    # tiny_config: 4 steps, the first one excluded.
    assert metrics["train_steps"] == 4 and metrics["throughput_warmup_steps_excluded"] == 1
    assert metrics["throughput_measured_steps"] == 3
    assert metrics["train_tokens_per_second"] > metrics["train_samples_per_second"]
    assert 0 <= metrics["train_padding_fraction"] < 1


def test_meter_counts_only_steps_after_the_warmup_ones():
    import torch

    from sentitune.trainer import Meter

    class State:
        global_step = 0

    meter, state = Meter(warmup_steps=1), State()
    mask = torch.tensor([[1] * 6, [1] * 3 + [0] * 3] * 2)
    batch = {"input_ids": torch.ones(4, 6, dtype=torch.long), "attention_mask": mask}
    for step in (1, 2, 3):
        meter.on_step_begin(None, state, None)
        meter.observe(batch)  # gradient accumulation: two micro-batches make one optimizer step
        meter.observe(batch)
        state.global_step = step  # the Trainer counts the step before on_step_end
        meter.on_step_end(None, state, None)
    # step 1 is warm-up; steps 2 and 3 count: 2 x 2 micro-batches of 4 texts, 18 real of 24 positions each
    assert (meter.steps, meter.samples, meter.tokens, meter.padded_tokens) == (2, 16, 72, 96)
    assert meter.seconds > 0
    no_mask = Meter(warmup_steps=0)
    no_mask.on_step_begin(None, state, None)
    no_mask.observe({"input_ids": torch.ones(2, 5, dtype=torch.long)})
    no_mask.on_step_end(None, state, None)
    assert (no_mask.samples, no_mask.tokens, no_mask.padded_tokens) == (2, 10, 10)


@pytest.mark.parametrize("method", ["full", "tfidf"])
def test_predictions_csv(method, trained_run, tiny_data):
    run_dir = trained_run(method)
    with open(run_dir / "predictions.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    with open(tiny_data["test"], newline="", encoding="utf-8") as handle:
        source = list(csv.DictReader(handle))
    label_names = json.loads((run_dir / "labels.json").read_text())
    assert label_names == ["negative", "positive"]
    # Same rows in the same order as the test file.
    assert [(r["text"], r["gold"]) for r in rows] == [(r["text"], r["label"]) for r in source]
    probabilities = np.array([[float(r[f"prob_{name}"]) for name in label_names] for r in rows])
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert [r["pred"] for r in rows] == [label_names[i] for i in probabilities.argmax(axis=1)]
    accuracy = np.mean([r["pred"] == r["gold"] for r in rows])
    assert accuracy == pytest.approx(_metrics(run_dir)["test_accuracy"])


def test_history_csv_has_loss_and_learning_rate(trained_run):
    run = load_run(trained_run("full"))
    history = run.history()
    assert {"step", "loss", "learning_rate"} <= set(history.columns)
    logged = history.dropna(subset=["loss"])
    assert list(logged["step"]) == [1, 2, 3, 4]  # logging_steps 1
    assert (logged["learning_rate"] >= 0).all() and logged["learning_rate"].max() > 0


def test_run_folder_round_trips(trained_run, tiny_config):
    run = load_run(trained_run("lora"), require_ok=True)
    assert run.config == tiny_config("lora")
    assert run.label_names == ["negative", "positive"]
    assert run.probabilities().shape == (24, 2)


def test_finished_run_is_not_replaced_without_overwrite(tiny_config, tmp_path):
    run_dir = tmp_path / "run"
    cfg = tiny_config("tfidf")
    first = train(cfg, run_dir)
    with pytest.raises(RunFolderError, match="--overwrite"):
        train(cfg, run_dir)
    assert _metrics(run_dir)["started_at"] == first["started_at"]
    again = train(cfg, run_dir, overwrite=True)
    assert again["status"] == "ok"


def test_validation_during_training_selects_the_best_checkpoint(tiny_config, tmp_path):
    cfg = tiny_config("head", **{"train.eval_strategy": "steps", "train.eval_steps": 2})
    metrics = train(cfg, tmp_path / "run")
    assert metrics["validation_best_accuracy"] is not None
    history = load_run(tmp_path / "run").history()
    assert history["eval_accuracy"].notna().sum() == 2
    assert not (tmp_path / "run" / "checkpoints").exists(), "checkpoints are removed once the run is done"


def test_bad_model_name_fails_before_writing(tiny_config, tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(ModelNotAvailable, match="minilm-l6"):
        train(tiny_config("full", model="no-such-org/no-such-model"), run_dir)
    assert not run_dir.exists()


def test_bad_data_fails_before_writing(tiny_config, tmp_path):
    bad = write_rows(tmp_path / "bad.csv", [("only one class", "positive")] * 5)
    run_dir = tmp_path / "run"
    with pytest.raises(DataError, match="single class"):
        train(tiny_config("full", **{"data.train_file": str(bad)}), run_dir)
    assert not run_dir.exists()


def test_failures_leave_a_finished_run_untouched(tiny_config, tmp_path):
    run_dir = tmp_path / "run"
    train(tiny_config("tfidf"), run_dir)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    with pytest.raises(ModelNotAvailable):
        train(tiny_config("full", model=str(tmp_path / "missing-model")), run_dir, overwrite=True)
    with pytest.raises(DataError):
        train(tiny_config("tfidf", **{"data.test_file": str(tmp_path / "absent.csv")}), run_dir, overwrite=True)
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before


def test_failure_during_training_is_recorded(tiny_config, tmp_path, monkeypatch):
    from sentitune.methods import registry

    def explode(model, cfg):
        raise RuntimeError("boom")

    monkeypatch.setattr(registry.get("head"), "prepare", explode)
    run_dir = tmp_path / "run"
    with pytest.raises(RuntimeError, match="boom"):
        train(tiny_config("head"), run_dir)
    metrics = _metrics(run_dir)
    assert metrics["status"] == "failed" and "boom" in metrics["error"]
    assert metrics["provenance"]["git_sha"] is None or len(metrics["provenance"]["git_sha"]) == 40
    # A failed run does not block the next attempt.
    monkeypatch.undo()
    assert train(tiny_config("head"), run_dir)["status"] == "ok"
