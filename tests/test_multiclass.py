"""More than two labels end to end: a 3-class file and an 8-class star-rating file through train,
Predictor, analyze (confusion shape, console), serve, export and the IMDB `rating` column."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from conftest import NEGATIVE, POSITIVE, make_tiny_config, write_rows

from sentitune.cli import main
from sentitune.inference import Predictor
from sentitune.results import load_run
from sentitune.training import train


NEUTRAL = [
    "it is a film",
    "the movie runs two hours",
    "some scenes are set in paris",
    "it came out in may",
    "the cast includes several actors",
    "there is a dog in it",
    "it is in colour",
    "a sequel is planned",
]
THREE = ("neg", "neu", "pos")
STARS = ("1", "2", "3", "4", "7", "8", "9", "10")


def class_rows(count: int, seed: int, labels: tuple[str, ...]) -> list[tuple[str, str]]:
    """Texts whose wording follows the label, so a few steps of TF-IDF can learn them."""
    rng = random.Random(seed)
    pools = [NEGATIVE, NEUTRAL, POSITIVE]
    rows = []
    for i in range(count):
        k = i % len(labels)
        pool = pools[min(2, k * 3 // len(labels))]
        rows.append((f"{rng.choice(pool)} {labels[k]} stars", labels[k]))
    return rows


@pytest.fixture(scope="module")
def three_class(tmp_path_factory):
    folder = tmp_path_factory.mktemp("three")
    return {
        "train": write_rows(folder / "train.csv", class_rows(72, 0, THREE)),
        "test": write_rows(folder / "test.csv", class_rows(30, 1, THREE)),
    }


@pytest.fixture(scope="module")
def star_ratings(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stars")
    # Shuffled so numeric names must be sorted numerically ("10" after "9"), not by first appearance.
    rows = class_rows(96, 0, STARS)
    random.Random(3).shuffle(rows)
    return {
        "train": write_rows(folder / "train.csv", rows),
        "test": write_rows(folder / "test.csv", class_rows(40, 1, STARS)),
    }


@pytest.fixture(scope="module")
def runs(tiny_model_dir, three_class, star_ratings, tmp_path_factory):
    folder = tmp_path_factory.mktemp("multiclass-runs")
    out = {}
    for name, data, method in (
        ("full3", three_class, "full"),
        ("tfidf3", three_class, "tfidf"),
        ("lora8", star_ratings, "lora"),
        ("tfidf8", star_ratings, "tfidf"),
    ):
        cfg = make_tiny_config(tiny_model_dir, data, method, **{"data.validation_size": 24})
        train(cfg, folder / name)
        out[name] = folder / name
    return out


def test_runs_record_every_label_in_order(runs):
    assert load_run(runs["full3"]).label_names == list(THREE)
    assert load_run(runs["lora8"]).label_names == list(STARS)  # numeric order, 10 last
    frame = load_run(runs["tfidf8"]).predictions()
    assert [c for c in frame.columns if c.startswith("prob_")] == [f"prob_{s}" for s in STARS]
    probabilities = frame[[f"prob_{s}" for s in STARS]].to_numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-4)
    metrics = json.loads((runs["tfidf8"] / "metrics.json").read_text())
    assert metrics["test_accuracy"] > 1 / 8  # learnable from the words; chance is 12.5%


@pytest.mark.parametrize("name, labels", [("full3", THREE), ("tfidf3", THREE), ("lora8", STARS)])
def test_predictor_returns_every_class(runs, name, labels):
    predictor = Predictor.load(runs[name])
    probabilities = predictor.predict_proba(["a dull mess", "it is a film", "great film"])
    assert probabilities.shape == (3, len(labels))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    out = predictor.predict(["great film"])[0]
    assert out["label"] in labels and list(out["probabilities"]) == list(labels)


def test_analyze_shows_the_full_confusion_matrix(runs, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "240")
    assert main(["analyze", str(runs["tfidf8"]), "--output-dir", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    analysis = json.loads((tmp_path / "a" / "analysis.json").read_text())
    matrix = np.array(analysis["confusion_matrix"]["rows_gold_columns_predicted"])
    assert matrix.shape == (8, 8) and matrix.sum() == 40
    assert analysis["confusion_matrix"]["labels"] == list(STARS)
    assert len(analysis["per_class"]) == 8
    assert "confusion" in out and "gold \\ predicted" in out
    assert analysis["negation_probe"]["status"] == "skipped"
    # Every row of the "mistakes" table is a mistake (with 3+ classes a correct prediction can have
    # a higher loss than a wrong one).
    mistakes = out.split("most confident mistakes")[1].split("ambiguous")[0]
    assert all(
        cells[1] != cells[2]
        for line in mistakes.splitlines()
        if len(cells := [c.strip() for c in line.split("│")]) > 3 and cells[1] in STARS
    )


def test_serve_answers_with_every_class(runs):
    from fastapi.testclient import TestClient

    from sentitune.serve import create_app

    with TestClient(create_app(Predictor.load(runs["tfidf3"]))) as client:
        response = client.post("/predict", json={"texts": ["it is a film", "a dull mess"]})
    assert response.status_code == 200, response.text
    body = response.json()
    rows = body["predictions"] if isinstance(body, dict) else body
    assert all(set(row["probabilities"]) == set(THREE) for row in rows)


def test_onnx_export_matches_torch_for_three_classes(runs, tmp_path):
    from sentitune.export import export_run

    export_run(runs["full3"], tmp_path / "onnx", fmt="onnx")
    texts = ["a dull mess", "it is a film indeed", "great film"]
    torch_p = Predictor.load(runs["full3"], device="cpu").predict_proba(texts)
    onnx_p = Predictor.load(tmp_path / "onnx", variant="fp32").predict_proba(texts)
    assert onnx_p.shape == (3, 3)
    np.testing.assert_allclose(onnx_p, torch_p, atol=1e-5)


def test_imdb_rating_column_trains_eight_classes(tiny_model_dir, tmp_path, monkeypatch, capsys):
    data = tmp_path / "data" / "imdb"
    data.mkdir(parents=True)
    for split, seed, count in (("train", 0, 96), ("test", 1, 32)):
        rows = [(text, "1" if int(stars) >= 7 else "0", stars) for text, stars in class_rows(count, seed, STARS)]
        write_rows(data / f"{split}.csv", rows, header=("text", "label", "rating"))
    monkeypatch.setenv("SENTITUNE_DATA_DIR", str(tmp_path / "data"))
    run_dir = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--method",
                "full",
                "--model",
                str(tiny_model_dir),
                "--dataset",
                "imdb",
                "--label-column",
                "rating",
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
                "--output-dir",
                str(run_dir),
            ]
        )
        == 0
    )
    capsys.readouterr()
    run = load_run(run_dir)
    assert run.label_names == list(STARS) and run.metrics["test_examples"] == 32
    assert run.probabilities().shape == (32, 8)


def test_compare_results_and_report_with_three_classes(runs, tmp_path):
    import shutil

    from sentitune import compare
    from sentitune.reporting.render import build_report

    planned = []
    for name, variant in (("full3", "full"), ("tfidf3", "tfidf")):
        shutil.copytree(runs[name], tmp_path / "runs" / f"{variant}-s42")
        cfg = load_run(runs[name]).config
        planned.append(compare.PlannedRun(f"{variant}-s42", variant, cfg, compare.method_knobs(cfg)))
    document = compare.write_results(tmp_path, planned)
    assert [r["status"] for r in document["runs"]] == ["ok", "ok"]
    assert len(document["pairwise"]) == 1
    markdown, html = build_report(tmp_path)
    text = markdown.read_text()
    assert "neg, neu, pos" in text and html.exists()
