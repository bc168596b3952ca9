"""compare: fair scaffolding is enforced, results carry every field, interrupted comparisons resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from sentitune import compare, results
from sentitune.config import ConfigError


def _base(tiny_config, **compare_section):
    # The shipped suite is scored only where a test asks for it: each scoring loads every run's model.
    compare_section.setdefault("suites", [])
    cfg = tiny_config("full", **{"train.max_steps": 2})
    return cfg.override({f"compare.{k}": v for k, v in compare_section.items()})


def test_expand_runs_covers_methods_sweeps_and_seeds(tiny_config):
    cfg = _base(
        tiny_config, methods=["full", "lora", "tfidf"], seeds=[1, 2], lora_r_sweep=[2, 8], learning_rates=[1e-4]
    )
    names = [r.name for r in compare.expand_runs(cfg)]
    # r=8 is the default rank, so it is not duplicated; tfidf gets no learning-rate variant.
    assert names == [
        "full-s1",
        "full-s2",
        "full-lr1e-4-s1",
        "full-lr1e-4-s2",
        "lora-s1",
        "lora-s2",
        "lora-r2-s1",
        "lora-r2-s2",
        "lora-lr1e-4-s1",
        "lora-lr1e-4-s2",
        "tfidf-s1",
        "tfidf-s2",
    ]
    assert len({r.config.fingerprint() for r in compare.expand_runs(cfg)}) == 1


def test_layer_lr_decay_is_recorded_and_named_for_every_neural_method_that_uses_it(tiny_config):
    # Training applies method.layer_lr_decay to any neural method: a lora run with decay 0.8 must say so.
    cfg = _base(tiny_config, methods=["full", "lora", "head", "tfidf"], seeds=[1], layer_lr_decays=[0.9])
    cfg = cfg.override({"method.layer_lr_decay": 0.8})
    runs = {r.variant: r for r in compare.expand_runs(cfg)}
    assert list(runs) == ["full", "full-llrd0.9", "lora-llrd0.8", "head-llrd0.8", "tfidf"]
    assert runs["full"].knobs["layer_lr_decay"] == 0.8 and runs["full-llrd0.9"].knobs["layer_lr_decay"] == 0.9
    assert runs["lora-llrd0.8"].knobs["layer_lr_decay"] == 0.8 and runs["lora-llrd0.8"].config.method.name == "lora"
    assert runs["head-llrd0.8"].knobs["layer_lr_decay"] == 0.8
    assert "layer_lr_decay" not in runs["tfidf"].knobs  # not neural: no optimiser to decay
    # Without a decay (1 = off) only full records it, and no name changes; --layer-lr-decays adds full only.
    plain = {r.variant: r for r in compare.expand_runs(_base(tiny_config, methods=["full", "lora"], seeds=[1]))}
    assert list(plain) == ["full", "lora"]
    assert plain["full"].knobs["layer_lr_decay"] == 1.0 and "layer_lr_decay" not in plain["lora"].knobs
    swept = _base(tiny_config, methods=["full", "lora"], seeds=[1], layer_lr_decays=[0.8])
    assert [r.variant for r in compare.expand_runs(swept)] == ["full", "full-llrd0.8", "lora"]
    assert "layer_lr_decay" in compare.method_knobs_keys(runs["lora-llrd0.8"].knobs)


def test_mixed_scaffolding_is_refused_naming_the_field(tiny_config):
    a = tiny_config("full")
    b = tiny_config("lora", **{"train.batch_size": 4})
    with pytest.raises(ConfigError, match=r"train\.batch_size \(8 vs 4\)"):
        compare.verify_same_scaffolding({"a": a, "b": b})
    # Method knobs and seeds may differ.
    c = tiny_config("lora", **{"method.lora_r": 2, "train.seed": 7})
    assert compare.verify_same_scaffolding({"a": a, "c": c}) == a.fingerprint()


def test_comparison_writes_all_fields_and_refuses_other_scaffolding(tiny_config, tmp_path):
    cfg = _base(tiny_config, methods=["full", "lora"], seeds=[1, 2])
    document = compare.run_comparison(cfg, tmp_path, echo=lambda *_: None)
    rows = document["runs"]
    assert [r["status"] for r in rows] == ["ok"] * 4
    for key in (
        "test_accuracy",
        "test_macro_f1",
        "params_trainable",
        "params_total",
        "params_trainable_percent",
        "peak_memory_mib",
        "memory_weights_mib",
        "memory_optimizer_state_mib",
        "train_samples_per_second",
        "train_tokens_per_second",
        "throughput_measured_steps",
        "eval_samples_per_second",
        "checkpoint_size_mib",
        "wall_seconds",
        "torch_threads",
        "device",
        "learning_rate",
        "seed",
    ):
        assert all(key in r for r in rows), key
    lora = next(r for r in rows if r["method"] == "lora")
    full = next(r for r in rows if r["method"] == "full")
    assert lora["params_trainable"] < full["params_trainable"] / 10
    assert lora["checkpoint_size_mib"] < full["checkpoint_size_mib"] / 5
    assert lora["lora_r"] == 8 and "lora_r" not in full
    csv_header = (tmp_path / "results.csv").read_text().splitlines()[0].split(",")
    assert {"run_name", "status", "test_accuracy", "peak_memory_mib"} <= set(csv_header)
    summary = {s["variant"]: s for s in document["summary"]}
    lora_accuracies = {r["test_accuracy"] for r in rows if r["method"] == "lora"}
    expected = (
        "t over 2 seeds" if len(lora_accuracies) == 2 else "bootstrap over test examples (all 2 seeds scored the same)"
    )
    assert summary["lora"]["n_seeds"] == 2 and summary["lora"]["ci_method"] == expected
    assert (
        summary["lora"]["test_accuracy_ci95_low"]
        <= summary["lora"]["test_accuracy_mean"]
        <= summary["lora"]["test_accuracy_ci95_high"]
    )
    # one paired test per pair of variants, over both shared seeds, Holm-corrected
    [pair] = document["pairwise"]
    assert (pair["a"], pair["b"], pair["seeds"], pair["n_seeds"]) == ("full", "lora", [1, 2], 2)
    assert document["reference"] == "full"
    assert document["multiplicity"] == {"method": "holm", "tests": 1, "tests_vs_reference": 1}
    assert 0 <= pair["p_value"] <= pair["p_holm"] <= 1 and pair["p_holm_vs_reference"] == pair["p_holm"]
    assert pair["significant"] == (pair["p_holm"] < 0.05)
    assert pair["difference"] == pytest.approx(pair["a_accuracy"] - pair["b_accuracy"])
    assert pair["difference_ci95_low"] <= pair["difference"] <= pair["difference_ci95_high"]
    full_mean = sum(r["test_accuracy"] for r in rows if r["variant"] == "full") / 2
    assert pair["a_accuracy"] == pytest.approx(full_mean)
    # the p-value is exact McNemar on the discordant counts pooled over the two seeds
    import numpy as np

    from sentitune.metrics import mcnemar

    pooled = mcnemar(
        *(
            np.concatenate([compare._correctness(tmp_path, r) for r in rows if r["variant"] == v])
            for v in ("full", "lora")
        )
    )
    assert (pair["a_only_correct"], pair["b_only_correct"], pair["p_value"]) == (
        pooled["a_only_correct"],
        pooled["b_only_correct"],
        pooled["p_value"],
    )

    changed = cfg.override({"data.max_length": 16})
    with pytest.raises(ConfigError, match=r"data\.max_length \(16 vs 32\)|data\.max_length \(32 vs 16\)"):
        compare.run_comparison(changed, tmp_path, echo=lambda *_: None)


def test_print_summary_states_one_holm_corrected_test_per_pair():
    import io

    from rich.console import Console

    from sentitune.cli.commands.compare import print_summary

    pair = {
        "a": "full",
        "b": "lora",
        "seeds": [1],
        "a_accuracy": 0.7764,
        "b_accuracy": 0.7833,
        "difference": -0.0069,
        "difference_ci95_low": -0.021,
        "difference_ci95_high": 0.007,
        "p_value": 0.645,
        "p_holm": 1.0,
        "p_holm_vs_reference": 1.0,
        "significant": False,
    }
    two_seeds = {
        **pair,
        "b": "head",
        "seeds": [1, 2],
        "b_accuracy": 0.68,
        "difference": 0.0964,
        "difference_ci95_low": 0.07,
        "difference_ci95_high": 0.12,
        "p_value": 1e-8,
        "p_holm": 2e-8,
        "significant": True,
    }
    document = {
        "fingerprint": "abc",
        "summary": [],
        "runs": [],
        "pairwise": [pair, two_seeds],
        "multiplicity": {"method": "holm", "tests": 2, "tests_vs_reference": 2},
    }
    buffer = io.StringIO()
    print_summary(document, Console(file=buffer, width=300))
    lines = buffer.getvalue().splitlines()
    assert (
        "full vs lora: 77.64 vs 78.33, difference -0.69 points [CI -2.1, 0.7], p = 0.645, Holm p = 1 (not significant)"
    ) in lines
    assert (
        "full vs head (2 seeds: 1, 2): 77.64 vs 68.00, difference +9.64 points [CI 7.0, 12.0], p = 1e-08, "
        "Holm p = 2e-08 (significant)"
    ) in lines
    assert lines[-1].startswith("significance after Holm correction over 2 tests")


def test_failed_run_stays_in_the_table(tiny_config, tmp_path):
    cfg = _base(tiny_config, methods=["full", "lora"], seeds=[1])
    cfg = cfg.override({"train.precision": "fp16"})  # needs CUDA: every neural run fails cleanly on CPU
    document = compare.run_comparison(cfg, tmp_path, echo=lambda *_: None)
    assert [r["status"] for r in document["runs"]] == ["failed", "failed"]
    assert "CUDA" in document["runs"][0]["error"]
    assert document["summary"][0]["n_seeds"] == 0


def test_killed_comparison_resumes_without_redoing_finished_runs(tiny_config, tmp_path):
    cfg = _base(tiny_config, methods=["tfidf", "full", "lora"], seeds=[1])
    config_file = tmp_path / "compare.yaml"
    config_file.write_text(yaml.safe_dump(cfg.to_dict()))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "sentitune", "compare", "--config", str(config_file), "--output-dir", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    first = out / "runs" / "tfidf-s1"
    deadline = time.time() + 120
    while results.read_status(first) != "ok" and time.time() < deadline:
        time.sleep(0.2)
    assert results.read_status(first) == "ok"
    os.killpg(process.pid, signal.SIGKILL)  # the comparison and its current training run die at once
    process.wait()
    finished_at = json.loads((first / "metrics.json").read_text())["finished_at"]

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "1 of 3 runs already finished" in rerun.stdout
    assert json.loads((first / "metrics.json").read_text())["finished_at"] == finished_at
    document = json.loads((out / "results.json").read_text())
    assert [r["status"] for r in document["runs"]] == ["ok"] * 3


def test_runs_made_with_other_library_versions_are_refused_unless_allowed(tiny_config, tmp_path):
    from sentitune.reporting.render import build_report

    cfg = _base(tiny_config, methods=["tfidf", "full"], seeds=[1])
    compare.run_comparison(cfg, tmp_path, echo=lambda *_: None)
    metrics_file = tmp_path / "runs" / "full-s1" / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    ours = metrics["provenance"]["versions"]["transformers"]
    assert metrics["provenance"]["versions"]["tokenizers"]  # recorded with the others
    metrics["provenance"]["versions"]["transformers"] = "5.0.0.dev0"
    metrics_file.write_text(json.dumps(metrics))

    with pytest.raises(ConfigError) as refused:
        compare.run_comparison(cfg, tmp_path, echo=lambda *_: None)
    message = str(refused.value)
    assert "\n" not in message
    assert f"transformers 5.0.0.dev0, this environment has transformers {ours}" in message
    assert "--allow-version-mix" in message

    document = compare.run_comparison(cfg, tmp_path, echo=lambda *_: None, allow_version_mix=True)
    assert document["version_mix"] == [
        {"package": "transformers", "versions": {ours: ["tfidf-s1"], "5.0.0.dev0": ["full-s1"]}}
    ]
    build_report(tmp_path)
    report = (tmp_path / "report.md").read_text()
    assert "different library versions" in report and "5.0.0.dev0 (full-s1)" in report


# ---- extra eval sets and calibration ----------------------------------------------------------


def test_eval_files_and_the_suite_are_scored_and_tested_against_the_reference(tiny_config, tmp_path):
    from conftest import sentiment_rows, write_rows

    extra = write_rows(tmp_path / "extra.csv", sentiment_rows(30, 7))
    cfg = _base(
        tiny_config, methods=["tfidf", "full"], seeds=[1, 2], eval_files={"extra": str(extra)}, suites=["negation"]
    )
    out = tmp_path / "out"
    lines: list[str] = []
    document = compare.run_comparison(cfg, out, echo=lines.append)
    assert [r["status"] for r in document["runs"]] == ["ok"] * 4
    sets = document["eval_sets"]
    assert list(sets) == ["negation", "extra"]  # the shipped suite is on by default
    suite_size = len((compare.SUITE_DIR / "negation.tsv").read_text().splitlines()) - 1
    assert (sets["negation"]["examples"], sets["extra"]["examples"], sets["negation"]["builtin"]) == (
        suite_size,
        30,
        True,
    )
    for name, entry in sets.items():
        assert entry["reference"] == "full" == document["reference"]
        assert set(entry["variants"]) == {"tfidf", "full"}
        for variant, stats in entry["variants"].items():
            folders = [out / "runs" / f"{variant}-s{seed}" / "evaluations" / name for seed in (1, 2)]
            accuracies = [results.load_predictions(folder).correct.mean() for folder in folders]
            differ = accuracies[0] != accuracies[1]  # tiny models' seeds can score alike: then the set's bootstrap
            assert stats["seeds"] == [1, 2] and stats["ci_method"].startswith("t over" if differ else "bootstrap")
            assert stats["mean"] == pytest.approx(sum(accuracies) / 2)
            assert stats["ci95_low"] <= stats["mean"] <= stats["ci95_high"]
        [test] = entry["pairwise_vs_reference"]
        assert (test["a"], test["b"], test["seeds"], test["n_seeds"]) == ("tfidf", "full", [1, 2], 2)
        assert test["p_holm"] == pytest.approx(test["p_value"])  # one test per set: Holm changes nothing
        assert test["significant"] == (test["p_holm"] < 0.05) and entry["multiplicity"]["tests"] == 1
        assert test["difference"] == pytest.approx(
            entry["variants"]["tfidf"]["mean"] - entry["variants"]["full"]["mean"]
        )
    scored = out / "runs" / "full-s1" / "evaluations" / "extra" / "metrics.json"
    first = json.loads(scored.read_text())
    assert first["eval_set"] == "extra" and first["data_sha256"] and first["temperature"] > 0
    # calibration per variant: ECE before and after the temperature fitted on validation
    summary = {s["variant"]: s for s in document["summary"]}
    for entry in summary.values():
        assert entry["temperature_mean"] > 0
        assert 0 <= entry["test_ece_calibrated_mean"] <= 1 and 0 <= entry["test_ece_uncalibrated_mean"] <= 1
    assert all("test_ece_calibrated" in r and "temperature" in r for r in document["runs"])

    # A re-run scores nothing again (same file content); a changed file is scored again.
    mtime = scored.stat().st_mtime_ns
    lines.clear()
    compare.run_comparison(cfg, out, echo=lines.append)
    assert scored.stat().st_mtime_ns == mtime and not any("eval sets" in line for line in lines)
    write_rows(extra, sentiment_rows(30, 8))
    document = compare.run_comparison(cfg, out, echo=lines.append)
    assert json.loads(scored.read_text())["data_sha256"] != first["data_sha256"]
    assert document["eval_sets"]["extra"]["variants"]["full"]["seeds"] == [1, 2]


def test_an_eval_file_with_other_labels_is_refused_in_one_line_before_training(tiny_config, tmp_path):
    from conftest import write_rows

    bad = write_rows(tmp_path / "neutral.csv", [("fine", "positive"), ("meh", "neutral")])
    cfg = _base(tiny_config, methods=["tfidf"], seeds=[1], eval_files={"mixed": str(bad)})
    from sentitune.errors import DataError

    with pytest.raises(DataError) as refused:
        compare.run_comparison(cfg, tmp_path / "out", echo=lambda *_: None)
    message = str(refused.value)
    assert "\n" not in message
    assert str(bad) in message and "'neutral'" in message and "line 3" in message
    assert not (tmp_path / "out" / "runs").exists()  # nothing trained


def test_eval_set_flags_and_config_are_checked(tiny_config):
    from sentitune.cli.commands.compare import parse_eval_files

    assert parse_eval_files(["a=x.csv", "b = y.tsv"]) == {"a": "x.csv", "b": "y.tsv"}
    assert parse_eval_files(None) is None
    for spec, match in ((["nopath"], "NAME=PATH"), (["a=x", "a=y"], "given twice")):
        with pytest.raises(ConfigError, match=match):
            parse_eval_files(spec)
    for files, match in (({"../up": "x.csv"}, "names a folder"), ({"negation": "x.csv"}, "shipped suite")):
        with pytest.raises(ConfigError, match=match):
            _base(tiny_config, eval_files=files, suites=["negation"])
    with pytest.raises(ConfigError, match="unknown suite"):
        _base(tiny_config, suites=["sarcasm"])
    assert [s.name for s in compare.eval_sets(_base(tiny_config, suites=[]))] == []


def test_print_summary_shows_calibration_and_each_eval_set():
    import io

    from rich.console import Console

    from sentitune.cli.commands.compare import print_calibration_and_eval_sets

    variant = {"mean": 0.6, "ci95_low": 0.55, "ci95_high": 0.65}
    test = {
        "a": "lora",
        "b": "full",
        "difference": -0.05,
        "difference_ci95_low": -0.08,
        "difference_ci95_high": -0.02,
        "p_holm": 0.004,
        "significant": True,
    }
    document = {
        "summary": [
            {"variant": "full", "n_seeds": 0, "n_runs": 1},
            {
                "variant": "lora",
                "n_seeds": 1,
                "temperature_mean": 1.5,
                "test_ece_uncalibrated_mean": 0.081,
                "test_ece_calibrated_mean": 0.023,
            },
        ],
        "eval_sets": {
            "negation": {
                "examples": 466,
                "variants": {"full": {**variant, "mean": 0.65}, "lora": variant},
                "pairwise_vs_reference": [test],
                "multiplicity": {"method": "holm", "tests": 1},
            }
        },
    }
    buffer = io.StringIO()
    print_calibration_and_eval_sets(document, Console(file=buffer, width=300))
    lines = buffer.getvalue().splitlines()
    assert (
        "calibration, test ECE before -> after temperature scaling on validation: lora 0.081 -> 0.023 (T 1.50)" in lines
    )
    assert "eval set negation (466 examples): accuracy % full 65.00 [55.0, 65.0]; lora 60.00 [55.0, 65.0]" in lines
    assert (
        "    lora vs full: difference -5.00 points [CI -8.0, -2.0], Holm p = 0.004 over 1 test (significant)" in lines
    )


# ---- progress: each child's progress.json, shown as lines (not a terminal) or live bars --------


def test_progress_lines_for_every_neural_run_and_progress_json_counts_steps(tiny_config, tmp_path):
    cfg = tiny_config("full", **{"train.max_steps": 6}).override(
        {"compare.methods": ["tfidf", "full"], "compare.seeds": [1], "compare.suites": []}
    )
    lines: list[str] = []
    # every_s=0: each poll that sees a new progress.json prints, so the test does not depend on timing
    document = compare.run_comparison(
        cfg, tmp_path, echo=lines.append, progress=compare.LineProgress(lines.append, every_s=0)
    )
    assert [r["status"] for r in document["runs"]] == ["ok"] * 2
    for row in document["runs"]:
        name = row["run_name"]
        shown = [line for line in lines if line.startswith(f"    {name}: step ")]
        path = tmp_path / compare.RUNS_DIR / name / results.PROGRESS_FILE
        record = json.loads(path.read_text()) if path.exists() else None
        if row["method"] == "tfidf":
            assert not shown and record is None  # no optimizer steps to count
            continue
        assert shown, lines
        # compare's own lines are kept, and the progress comes between "training ..." and the result
        started = lines.index(next(line for line in lines if line.endswith(f"{name}: training ...")))
        ended = lines.index(next(line for line in lines if line.startswith(f"    {name}: ok")))
        assert all(started < lines.index(line) < ended for line in shown)
        assert record["step"] == record["max_steps"] == 6 == row["train_steps"]
        assert record["loss"] > 0 and record["samples_per_second"] > 0 and record["elapsed_s"] > 0
        assert record["eta_s"] == 0
        steps = [int(line.split("step ")[1].split("/")[0]) for line in shown]
        assert steps == sorted(steps) and all(line.split("/")[1].startswith("6") for line in shown)


def test_line_progress_prints_the_first_record_then_one_per_interval():
    now = [0.0]
    lines: list[str] = []
    reporter = compare.LineProgress(lines.append, every_s=30, clock=lambda: now[0])
    record = {"step": 10, "max_steps": 40, "loss": 0.5, "samples_per_second": 12.5, "eta_s": 75, "updated": 1.0}
    reporter.update("full-s1", None)
    assert lines == []
    for t in (0, 5, 29, 30, 45, 60):
        now[0] = t
        reporter.update("full-s1", {**record, "step": 10 + t // 2})
    assert lines == [
        "    full-s1: step 10/40 (25%), loss 0.5000, 12.5 samples/s, ETA 1m15s",
        "    full-s1: step 25/40 (62%), loss 0.5000, 12.5 samples/s, ETA 1m15s",
        "    full-s1: step 40/40 (100%), loss 0.5000, 12.5 samples/s, training done",
    ]
    reporter.finish("full-s1", record)  # already shown: no extra line
    reporter.finish("lora-s1", record)  # never shown: its last record
    assert len(lines) == 4 and lines[-1].startswith("    lora-s1: step 10/40")


def test_read_progress_ignores_an_earlier_attempts_file(tmp_path):
    results.atomic_write_json(tmp_path / results.PROGRESS_FILE, {"step": 3, "max_steps": 9, "updated": 100.0})
    assert compare.read_progress(tmp_path, since=50.0)["step"] == 3
    assert compare.read_progress(tmp_path, since=150.0) is None
    assert compare.read_progress(tmp_path / "missing") is None
    assert compare.format_seconds(3725) == "1h02m" and compare.format_seconds(None) == "?"


def test_live_progress_shows_bars_and_prints_lines_above_them():
    from sentitune.cli.commands.compare import LiveProgress

    with LiveProgress() as live:
        live.update("full-s1", None)
        task = live.tasks["full-s1"]
        live.update("full-s1", {"step": 5, "max_steps": 20, "loss": 0.7, "samples_per_second": 3.0, "eta_s": 9})
        shown = live.bars.tasks[0]
        assert (shown.id, shown.completed, shown.total) == (task, 5, 20)
        assert shown.fields["detail"] == "loss 0.7000, 3.0 samples/s, ETA 9s"
        live.finish("full-s1", None)
        assert live.bars.tasks == [] and live.tasks == {}
