"""Multi-label (`data.problem_type: multi_label`): delimited label cells, BCE through the model's
problem_type, per-label thresholds from the validation slice, micro/macro F1 and subset accuracy,
per-label probabilities from the Predictor; single-label paths untouched."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from conftest import make_tiny_config, write_rows

from sentitune.cli import EXIT_USER_ERROR, main
from sentitune.config import ConfigError
from sentitune.data import DataError, load_splits
from sentitune.inference import Predictor
from sentitune.metrics import choose_thresholds, multilabel_metrics
from sentitune.results import RunFolderError, load_run
from sentitune.training import train


GENRES = ("action", "comedy", "drama")
WORDS = {
    "action": ["explosions", "car chase", "shootout"],
    "comedy": ["jokes", "hilarious", "slapstick"],
    "drama": ["tears", "family", "grief"],
}


def genre_rows(count: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    combos = [("action",), ("comedy",), ("drama",), ("action", "comedy"), ("comedy", "drama")]
    rows = []
    for i in range(count):
        combo = combos[i % len(combos)]
        text = " and ".join(rng.choice(WORDS[g]) for g in combo) + rng.choice(["", " indeed", " !"])
        rows.append((text, "|".join(reversed(combo)) if i % 2 else "|".join(combo)))
    return rows


@pytest.fixture(scope="module")
def genre_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("genres")
    return {
        "train": write_rows(folder / "train.csv", genre_rows(80, 0), header=("text", "genres")),
        "test": write_rows(folder / "test.csv", genre_rows(25, 1), header=("text", "genres")),
    }


def multilabel_config(model_dir, files, method="full", **overrides):
    return make_tiny_config(
        model_dir,
        files,
        method,
        **{"data.problem_type": "multi_label", "data.label_column": "genres", "data.validation_size": 20, **overrides},
    )


@pytest.fixture(scope="module")
def multilabel_run(tiny_model_dir, genre_files, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ml-run") / "run"
    metrics = train(multilabel_config(tiny_model_dir, genre_files, **{"train.max_steps": 3}), folder)
    return folder, metrics


def test_label_cells_become_multi_hot_rows(tiny_model_dir, genre_files):
    splits = load_splits(multilabel_config(tiny_model_dir, genre_files).data)
    assert splits.label_names == list(GENRES)
    assert len(splits.validation) == 20 and len(splits.train) == 60
    first = dict(zip(splits.test.texts, splits.test.labels))
    # "comedy|action" and "action|comedy" are the same set.
    assert {tuple(v) for v in first.values()} == {(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (0, 1, 1)}


def test_unknown_or_empty_labels_name_the_line(tiny_model_dir, genre_files, tmp_path):
    bad = write_rows(tmp_path / "test.csv", [("x", "action"), ("y", "action|horror")], header=("text", "genres"))
    cfg = multilabel_config(tiny_model_dir, {**genre_files, "test": bad})
    with pytest.raises(DataError, match=r"test.csv: line 3, column 'genres': label 'horror'"):
        load_splits(cfg.data)
    empty = write_rows(tmp_path / "empty.csv", [("x", "action"), ("y", "|")], header=("text", "genres"))
    with pytest.raises(DataError, match=r"line 3, column 'genres': no label"):
        load_splits(multilabel_config(tiny_model_dir, {**genre_files, "test": empty}).data)


def test_run_folder_metrics_thresholds_and_predictions(multilabel_run):
    folder, metrics = multilabel_run
    assert metrics["status"] == "ok" and metrics["problem_type"] == "multi_label"
    for key in ("test_accuracy", "test_micro_f1", "test_macro_f1", "test_hamming_loss", "test_loss"):
        assert 0 <= metrics[key] <= (1 if key != "test_loss" else 10), key
    thresholds = json.loads((folder / "thresholds.json").read_text())
    assert list(thresholds) == list(GENRES) and all(0 < t < 1 for t in thresholds.values())
    assert metrics["label_thresholds"] == thresholds
    frame = load_run(folder).predictions()
    assert [c for c in frame.columns if c.startswith("prob_")] == [f"prob_{g}" for g in GENRES]
    assert set(frame["gold"]) == {"action", "comedy", "drama", "action|comedy", "comedy|drama"}
    # Probabilities are per-label sigmoids, not a softmax over labels.
    probabilities = frame[[f"prob_{g}" for g in GENRES]].to_numpy()
    assert not np.allclose(probabilities.sum(axis=1), 1)
    # Subset accuracy is the share of rows whose whole label set is right.
    assert metrics["test_accuracy"] == pytest.approx((frame["gold"] == frame["pred"]).mean())


def test_predictor_gives_probabilities_and_labels_per_threshold(multilabel_run):
    folder, _ = multilabel_run
    predictor = Predictor.load(folder, device="cpu")
    texts = ["explosions and jokes", "tears"]
    probabilities = predictor.predict_proba(texts)
    assert probabilities.shape == (2, 3)
    thresholds = json.loads((folder / "thresholds.json").read_text())
    for row, p in zip(predictor.predict(texts), probabilities):
        assert list(row["probabilities"]) == list(GENRES)
        assert row["labels"] == [g for g, value in zip(GENRES, p) if value >= thresholds[g]]
    # Same numbers as the run's own test predictions.
    frame = load_run(folder).predictions()
    again = predictor.predict_proba(frame["text"].tolist())
    np.testing.assert_allclose(again, frame[[f"prob_{g}" for g in GENRES]].to_numpy(), atol=1e-5)


def test_lora_trains_multi_label(tiny_model_dir, genre_files, tmp_path):
    metrics = train(
        multilabel_config(
            tiny_model_dir, genre_files, "lora", **{"train.max_steps": 2, "train.eval_strategy": "epoch"}
        ),
        tmp_path / "lora",
    )
    assert metrics["status"] == "ok" and "test_micro_f1" in metrics
    assert Predictor.load(tmp_path / "lora", device="cpu").predict(["jokes"])[0]["labels"] is not None


def test_unsupported_paths_refuse_in_one_line(multilabel_run, tiny_model_dir, genre_files, tmp_path, capsys):
    folder, _ = multilabel_run
    with pytest.raises(ConfigError, match="method.name: tfidf supports data.problem_type single_label only"):
        multilabel_config(tiny_model_dir, genre_files, "tfidf")
    with pytest.raises(ConfigError, match="data.problem_type"):
        multilabel_config(tiny_model_dir, genre_files, **{"data.problem_type": "multilabel"})
    for argv in (
        ["analyze", str(folder)],
        ["evaluate", str(folder), "--data", str(genre_files["test"])],
        ["export", "--model", str(folder), "--output", str(tmp_path / "x")],
    ):
        assert main(argv) == EXIT_USER_ERROR
        assert "a multi-label run" in capsys.readouterr().err
    from sentitune.serve import create_app

    with pytest.raises(RunFolderError, match="multi-label"):
        create_app(Predictor.load(folder, device="cpu"))


def test_threshold_choice_and_metrics():
    gold = np.array([[1, 0], [1, 1], [0, 1], [0, 0]])
    probabilities = np.array([[0.35, 0.2], [0.4, 0.8], [0.1, 0.7], [0.2, 0.6]])
    thresholds = choose_thresholds(gold, probabilities)
    assert thresholds.tolist() == [0.35, 0.65]  # label 0: F1 1.0 from 0.25 to 0.35; label 1: 0.65 or 0.7
    metrics = multilabel_metrics(gold, probabilities, thresholds)
    assert metrics["accuracy"] == 1.0 and metrics["micro_f1"] == 1.0 and metrics["hamming_loss"] == 0.0
    at_half = multilabel_metrics(gold, probabilities)
    assert at_half["accuracy"] == 0.25 and at_half["micro_f1"] == pytest.approx(4 / 7)  # 2TP / (2TP + FP + FN)


def test_data_inspect_counts_texts_per_label(tiny_model_dir, genre_files, capsys):
    assert (
        main(
            [
                "data",
                "inspect",
                "--model",
                str(tiny_model_dir),
                "--dataset",
                "files",
                "--train-file",
                str(genre_files["train"]),
                "--test-file",
                str(genre_files["test"]),
                "--label-column",
                "genres",
                "--set",
                "data.problem_type=multi_label",
                "--json",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    # 25 test rows cycle through 5 label sets: comedy is in 3 of them.
    assert report["splits"]["test"]["class_counts"] == {"action": 10, "comedy": 15, "drama": 10}
