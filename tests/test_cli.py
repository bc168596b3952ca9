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


# ---- familiar flags: underscore spellings, Hugging Face names, one form for the run folder -------


def subcommand_parsers(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield name, child
                yield from subcommand_parsers(child)


def test_every_dash_flag_has_its_underscore_spelling():
    from sentitune.cli.main import build_parser

    checked = 0
    for command, parser in subcommand_parsers(build_parser()):
        for action in parser._actions:
            for name in action.option_strings:
                if name.startswith("--") and "-" in name[2:]:
                    twin = "--" + name[2:].replace("-", "_")
                    assert parser._option_string_actions.get(twin) is action, f"{command} {name}"
                    checked += 1
    assert checked > 50


def test_hugging_face_flag_names_reach_the_config(tmp_path):
    from sentitune.cli.main import build_parser
    from sentitune.cli.options import config_from_args

    argv = [
        "train",
        "--model_name_or_path",
        "minilm-l6",
        "--dataset",
        "sst2",
        "--num_train_epochs",
        "2",
        "--per_device_train_batch_size",
        "4",
        "--per_device_eval_batch_size",
        "16",
        "--learning_rate",
        "1e-4",
        "--max_seq_length",
        "64",
        "--lora_r",
        "4",
        "--output_dir",
        str(tmp_path / "run"),
        "--resume_from_checkpoint",
    ]
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    assert (cfg.model, cfg.train.epochs, cfg.train.batch_size, cfg.train.eval_batch_size) == ("minilm-l6", 2, 4, 16)
    assert (cfg.method.learning_rate, cfg.data.max_length, cfg.method.lora_r) == (1e-4, 64, 4)
    assert args.output_dir == str(tmp_path / "run") and args.resume is True


def test_resume_from_checkpoint_path_must_be_in_the_run_folder(tmp_path):
    from sentitune.cli.commands.train import resume_flag
    from sentitune.errors import ConfigError

    run = tmp_path / "run"
    assert resume_flag(True, str(run)) is True and resume_flag(None, str(run)) is False
    assert resume_flag(str(run / "checkpoints" / "checkpoint-4"), str(run)) is True
    with pytest.raises(ConfigError, match="not inside the run folder"):
        resume_flag(str(tmp_path / "elsewhere" / "checkpoint-4"), str(run))


def test_help_lists_each_flag_once_and_names_the_underscore_spelling(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "--output-dir" in out and "--output_dir OUTPUT_DIR" not in out
    assert "--per_device_train_batch_size" in out and "underscore spelling" in out.replace("\n", " ")


@pytest.mark.parametrize(
    "command, extra, dest",
    [
        ("evaluate", ["--data", "x.csv"], "run"),
        ("analyze", [], "run"),
        ("export", ["--output-dir", "out"], "model"),
        ("serve", [], "model"),
    ],
)
def test_run_folder_positional_or_model(command, extra, dest):
    from sentitune.cli.main import build_parser
    from sentitune.cli.options import resolve_model_argument

    parser = build_parser()
    for argv in (
        [command, "runs/a", *extra],
        [command, "--model", "runs/a", *extra],
        [command, "runs/a/", "--model", "runs/a", *extra],
    ):
        args = parser.parse_args(argv)
        resolve_model_argument(args)
        assert getattr(args, dest) in ("runs/a", "runs/a/"), argv


@pytest.mark.parametrize("command", ["evaluate", "analyze", "export", "serve"])
def test_run_folder_missing_or_twice_is_one_line(command, capsys):
    extra = {"evaluate": ["--data", "x.csv"], "export": ["--output-dir", "out"]}.get(command, [])
    assert main([command, "runs/a", "--model", "runs/b", *extra]) == EXIT_USER_ERROR
    line = one_line_error(capsys)
    assert "'runs/a'" in line and "'runs/b'" in line
    assert main([command, *extra]) == EXIT_USER_ERROR
    assert "--model" in one_line_error(capsys)


def test_predict_takes_the_run_folder_first(trained_run, capsys):
    run_dir = str(trained_run("tfidf"))
    assert main(["predict", run_dir, "a great film", "dull"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["text"] for row in rows] == ["a great film", "dull"]
    assert main(["predict", "a great film"]) == EXIT_USER_ERROR
    assert "run folder first" in one_line_error(capsys)


def test_export_output_and_report_output_dir_spellings(tmp_path, capsys):
    from sentitune.cli.main import build_parser

    parser = build_parser()
    for flag in ("--output", "--output-dir", "--output_dir"):
        assert parser.parse_args(["export", "runs/a", flag, "out"]).output == "out"
    assert main(["report", str(tmp_path / "a"), "--output-dir", str(tmp_path / "b")]) == EXIT_USER_ERROR
    assert "two comparison folders" in one_line_error(capsys)
    assert main(["report"]) == EXIT_USER_ERROR
    assert "--output-dir" in one_line_error(capsys)


def test_train_on_a_single_file_records_the_carved_split(tmp_path, monkeypatch, capsys):
    from conftest import sentiment_rows

    data = write_rows(tmp_path / "reviews.csv", sentiment_rows(80, 3))
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--method", "tfidf", "--dataset", str(data), "--validation_size", "8", "--test_size", "16"]
    assert main(argv) == 0
    metrics = json.loads((tmp_path / "runs" / "reviews-tfidf" / "metrics.json").read_text())
    split = metrics["data_split"]
    # Recorded relative to the working directory (runtime.portable_path): no machine path in a record.
    assert split["test_carved_from"] == data.name and split["test_examples"] == 16 == metrics["test_examples"]
    assert len(set(split["test_lines"])) == 16 and metrics["train_examples"] == 80 - 16 - 8


def test_a_hub_dataset_column_that_does_not_exist_is_one_line(tmp_path, monkeypatch, capsys):
    import datasets

    monkeypatch.chdir(tmp_path)
    (tmp_path / "acme" / "reviews").mkdir(parents=True)
    datasets.Dataset.from_dict({"review": ["good", "bad"] * 10, "sentiment": [1, 0] * 10}).to_parquet(
        str(tmp_path / "acme" / "reviews" / "train.parquet")
    )
    capsys.readouterr()
    argv = ["train", "--method", "tfidf", "--dataset", "hub:acme/reviews", "--text-column", "body"]
    assert main(argv) == EXIT_USER_ERROR
    line = one_line_error(capsys)
    assert "no column 'body'" in line and "'review'" in line
