"""The CLI in-process through `sentitune.cli.main`, plus `python -m sentitune --help` in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from conftest import write_rows

from sentitune.cli import EXIT_USER_ERROR, main


def tiny_train_args(tiny_model_dir, tiny_data, output_dir, method="full") -> list[str]:
    return [
        "train",
        "--method",
        method,
        "--model",
        str(tiny_model_dir),
        "--dataset",
        "files",
        "--train-file",
        str(tiny_data["train"]),
        "--test-file",
        str(tiny_data["test"]),
        "--validation-size",
        "16",
        "--max-length",
        "32",
        "--batch-size",
        "8",
        "--max-steps",
        "2",
        "--set",
        "train.eval_strategy=no",
        "--set",
        "train.warmup_steps_excluded_from_throughput=0",
        "--output-dir",
        str(output_dir),
    ]


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    # rich wraps tables to the terminal width; captured output would otherwise break words apart.
    monkeypatch.setenv("COLUMNS", "240")


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("sentitune ") and ": error: " in lines[0]
    return lines[0]


def test_train_then_evaluate(tiny_model_dir, tiny_data, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(tiny_train_args(tiny_model_dir, tiny_data, run_dir)) == 0
    out = capsys.readouterr().out
    assert "test_accuracy" in out and "checkpoint_size_mib" in out
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "ok" and metrics["train_steps"] == 2 and metrics["train_examples"] == 48

    assert main(["evaluate", str(run_dir), "--data", str(tiny_data["test"])]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["test_examples"] == 24
    # Evaluating the test file again reproduces the run's own test accuracy.
    assert result["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert (run_dir / "evaluations" / "test" / "predictions.csv").exists()


def test_train_flags_reach_the_resolved_config(tiny_model_dir, tiny_data, tmp_path, capsys):
    import yaml

    run_dir = tmp_path / "run"
    args = tiny_train_args(tiny_model_dir, tiny_data, run_dir, method="tfidf")
    args += ["--seed", "7", "--set", "method.tfidf_c_grid=[1.0]", "--label-names", "negative,positive"]
    assert main(args) == 0
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert resolved["train"]["seed"] == 7 and resolved["method"]["tfidf_c_grid"] == [1.0]
    assert resolved["data"]["label_names"] == ["negative", "positive"]
    assert resolved["data"]["validation_size"] == 16


def test_data_inspect_json(tiny_model_dir, tiny_data, capsys):
    code = main(
        [
            "data",
            "inspect",
            "--json",
            "--model",
            str(tiny_model_dir),
            "--dataset",
            "files",
            "--train-file",
            str(tiny_data["train"]),
            "--test-file",
            str(tiny_data["test"]),
            "--validation-size",
            "16",
            "--max-length",
            "8",
        ]
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["label_names"] == ["negative", "positive"]
    assert {name: s["size"] for name, s in report["splits"].items()} == {"train": 48, "validation": 16, "test": 24}
    assert report["splits"]["validation"]["class_counts"] == {"negative": 8, "positive": 8}
    tokens = report["splits"]["test"]["tokens"]
    assert tokens["p50"] <= tokens["p90"] <= tokens["max"] and tokens["over_max_length"] > 0


def test_data_inspect_table(tiny_model_dir, tiny_data, capsys):
    code = main(
        [
            "data",
            "inspect",
            "--model",
            str(tiny_model_dir),
            "--dataset",
            "files",
            "--train-file",
            str(tiny_data["train"]),
            "--test-file",
            str(tiny_data["test"]),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "validation" in out and "negative" in out


def test_unknown_model_fails_fast_and_names_the_alias(tiny_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run_dir = tmp_path / "run"
    started = time.perf_counter()
    code = main(
        [
            "train",
            "--model",
            "no-such-model",
            "--dataset",
            "files",
            "--train-file",
            str(tiny_data["train"]),
            "--test-file",
            str(tiny_data["test"]),
            "--output-dir",
            str(run_dir),
        ]
    )
    elapsed = time.perf_counter() - started
    assert code == EXIT_USER_ERROR
    line = one_line_error(capsys)
    assert "no-such-model" in line and "minilm-l6" in line
    assert elapsed < 5, f"took {elapsed:.1f} s; an offline hub lookup must not retry"
    assert not run_dir.exists()


def test_missing_column(tiny_model_dir, tiny_data, tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = tiny_train_args(tiny_model_dir, tiny_data, run_dir) + ["--text-column", "review"]
    assert main(args) == EXIT_USER_ERROR
    line = one_line_error(capsys)
    assert "'review'" in line and str(tiny_data["train"]) in line
    assert not run_dir.exists()


def test_bad_config_value(tiny_model_dir, tiny_data, tmp_path, capsys):
    args = tiny_train_args(tiny_model_dir, tiny_data, tmp_path / "run") + ["--set", "train.batch_size=big"]
    assert main(args) == EXIT_USER_ERROR
    assert "train.batch_size" in one_line_error(capsys)


def test_finished_output_dir_needs_overwrite(tiny_model_dir, tiny_data, tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = tiny_train_args(tiny_model_dir, tiny_data, run_dir, method="tfidf")
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == EXIT_USER_ERROR
    assert "--overwrite" in one_line_error(capsys)
    assert main(args + ["--overwrite"]) == 0


def test_evaluate_with_labels_outside_the_run(trained_run, tmp_path, capsys):
    data = write_rows(tmp_path / "other.csv", [("fine", "neutral"), ("good", "positive")])
    assert main(["evaluate", str(trained_run("tfidf")), "--data", str(data)]) == EXIT_USER_ERROR
    assert "'neutral'" in one_line_error(capsys)


def test_unknown_method_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--method", "adapters"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_python_dash_m_help():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "sentitune", "--help"], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr
    for command in ("train", "evaluate", "data", "compare", "predict"):
        assert command in done.stdout
