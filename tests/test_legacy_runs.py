"""Run and comparison folders written before this session's restructure (main at 3c79e2e) still work
with predict, analyze and report. Weights never go into git, so the old folders are rebuilt here: a
fresh comparison is trained, then stripped back to what the old code wrote (no `.sentitune-run`
marker, provenance without the CPU features or the lock digest, results.json with one pairwise entry
per seed and `ci_over` instead of `ci_method`)."""

from __future__ import annotations

import json
import shutil

import pytest

from sentitune import compare, results
from sentitune.cli import main


def _as_old_main_wrote_it(out):
    document = json.loads((out / "results.json").read_text())
    for entry in document["summary"]:
        entry["ci_over"] = "test examples (1 seed)"
        entry.pop("ci_method", None)
    document["pairwise"] = [
        {
            "a": p["a"],
            "b": p["b"],
            "seed": p["seeds"][0],
            "a_accuracy": p["a_accuracy"],
            "b_accuracy": p["b_accuracy"],
            "p_value": p["p_value"],
            "significant": p["p_value"] < 0.05,
        }
        for p in document["pairwise"]
    ]
    for key in ("reference", "multiplicity", "version_mix", "eval_sets"):
        document.pop(key, None)
    (out / "results.json").write_text(json.dumps(document))
    for run in (out / "runs").iterdir():
        (run / results.RUN_MARKER).unlink(missing_ok=True)
        # no temperature scaling (T = 1) and no eval sets back then
        (run / results.CALIBRATION_FILE).unlink(missing_ok=True)
        shutil.rmtree(run / results.EVALUATIONS_DIR, ignore_errors=True)
        metrics = json.loads((run / "metrics.json").read_text())
        for key in ("cpu", "lock_sha256", "code_digest"):  # no code digest back then
            metrics["provenance"].pop(key, None)
        metrics["provenance"]["versions"].pop("tokenizers", None)
        for key in ("temperature", "test_ece_uncalibrated", "test_ece_calibrated", "test_loss_uncalibrated"):
            metrics.pop(key, None)
        (run / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture(scope="module")
def legacy_comparison(tiny_model_dir, tiny_data, tmp_path_factory):
    from conftest import make_tiny_config

    out = tmp_path_factory.mktemp("legacy") / "quick"
    cfg = make_tiny_config(tiny_model_dir, tiny_data, "lora", **{"train.max_steps": 2})
    cfg = cfg.override({"compare.methods": ["tfidf", "lora"], "compare.seeds": [1], "compare.suites": []})
    compare.run_comparison(cfg, out, echo=lambda *_: None)
    _as_old_main_wrote_it(out)
    return out


def test_predict_analyze_and_report_read_an_old_comparison(legacy_comparison, tmp_path, capsys):
    lora = legacy_comparison / "runs" / "lora-s1"
    assert not (lora / results.RUN_MARKER).exists()
    predictions = tmp_path / "predictions.jsonl"
    assert main(["predict", "--model", str(lora), "--output", str(predictions), "a fine film", "dull"]) == 0
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert len(rows) == 2 and all(set(r["probabilities"]) == {"negative", "positive"} for r in rows)
    from sentitune.inference import Predictor

    assert Predictor.load(lora, device="cpu").temperature == 1.0  # no calibration.json: probabilities as trained

    assert main(["analyze", str(lora)]) == 0
    assert (lora / "analysis" / "analysis.json").exists()

    assert main(["report", str(legacy_comparison)]) == 0
    report = (legacy_comparison / "report.md").read_text()
    assert "lora" in report and "tfidf" in report
    assert "Robustness and out-of-domain sets" not in report  # no eval sets were scored back then


def test_an_old_run_can_be_replaced_with_overwrite(legacy_comparison, tiny_model_dir, tiny_data, tmp_path):
    from conftest import make_tiny_config

    from sentitune.training import train

    old = tmp_path / "tfidf-s1"
    shutil.copytree(legacy_comparison / "runs" / "tfidf-s1", old)
    metrics = train(make_tiny_config(tiny_model_dir, tiny_data, "tfidf"), old, overwrite=True)
    assert metrics["status"] == "ok" and (old / results.RUN_MARKER).exists()
