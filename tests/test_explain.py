"""Explanations: integrated gradients on torch runs (full, lora, head), occlusion on TF-IDF, the
`explain` command, `analyze --explain`, POST /explain and the web page's highlighted words."""

from __future__ import annotations

import json
import math
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from sentitune.cli.main import main
from sentitune.explain import explain_texts, word_spans
from sentitune.inference import Predictor
from sentitune.serve import EXPLAIN_MAX_TEXTS, ServeSettings, create_app


TEXT = "a gorgeous , witty film that isn't dull"


def _sharpened(run: Path) -> Predictor:
    """The run's predictor with its classifier's weights scaled up in memory: a few tiny training steps
    leave every probability near 0.5, where attributions are all close to 0 and prove nothing."""
    predictor = Predictor.load(run, device="cpu", precision="fp32")
    torch.manual_seed(0)
    parameters = dict(predictor.model.named_parameters())
    with torch.no_grad():
        for name, parameter in parameters.items():
            if name.endswith("pooler.dense.weight"):
                parameter.normal_(0.0, 1.0)
            elif "classifier" in name and name.endswith("weight"):
                parameter.normal_(0.0, 3.0)
        # Centred on another text, so that TEXT's probabilities are neither saturated nor 0.5.
        bias = next(p for name, p in parameters.items() if "classifier" in name and name.endswith("bias"))
        bias -= torch.as_tensor(predictor.logits(["a dull mess"])[0], dtype=bias.dtype)
    return predictor


@pytest.mark.parametrize("method", ["full", "lora", "head"])
def test_integrated_gradients_are_complete_and_grouped_into_words(trained_run, method):
    predictor = _sharpened(trained_run(method))
    row = explain_texts(predictor, [TEXT], "ig")[0]
    assert row["method"] == "integrated_gradients" and row["unit"] == "log_probability"
    # The prediction the explanation reports is the predictor's own.
    expected = predictor.predict_proba([TEXT])[0]
    assert [row["probabilities"][name] for name in predictor.label_names] == pytest.approx(expected, abs=1e-5)
    assert row["target"] == predictor.label_names[int(expected.argmax())]
    # Completeness: the attributions add up to log p(x) - log p(baseline).
    # The baseline is [CLS] [PAD] ... [SEP]; the tokenizer reads the string "[PAD]" as that token.
    target = predictor.label_names.index(row["target"])
    baseline = predictor.predict_proba([" ".join(["[PAD]"] * row["tokens_explained"])])[0, target]
    assert row["baseline_log_probability"] == pytest.approx(math.log(baseline), abs=1e-5)
    change = math.log(row["score"]) - math.log(baseline)
    total = sum(word["attribution"] for word in row["words"])
    assert abs(change) > 1e-4, "the sharpened model should separate the text from the all-[PAD] baseline"
    assert total == pytest.approx(change, rel=0.02, abs=1e-6)
    assert row["convergence_delta"] < 0.02 * abs(change)
    # Word pieces merged: one entry per tokenizer word, each its exact characters of the text.
    assert [w["word"] for w in row["words"]] == [TEXT[s:e] for s, e in [(w["start"], w["end"]) for w in row["words"]]]
    assert "gorgeous" in [w["word"] for w in row["words"]]
    assert all(np.isfinite(w["attribution"]) for w in row["words"])


def test_integrated_gradients_cover_only_the_window_the_model_reads(trained_run):
    predictor = Predictor.load(trained_run("full"), device="cpu")
    long_text = " ".join(["gorgeous"] * 100)  # max_length 32 in the tiny runs
    row = explain_texts(predictor, [long_text], "ig")[0]
    assert row["tokens_total"] == 100 and row["tokens_explained"] == predictor.max_length - 2
    assert row["windows"] == 1
    assert len(row["words"]) == predictor.max_length - 2


def test_occlusion_on_tfidf_names_the_strong_word_and_matches_a_manual_drop(trained_run):
    predictor = Predictor.load(trained_run("tfidf"))
    for text, strong, label in [("a gorgeous film", "gorgeous", "positive"), ("a dull film", "dull", "negative")]:
        row = explain_texts(predictor, [text])[0]
        assert row["method"] == "occlusion" and row["label"] == label
        best = max(row["words"], key=lambda w: w["attribution"])
        assert best["word"] == strong
        # Each attribution is log p(text) - log p(text without that word), toward the predicted label.
        target = predictor.label_names.index(label)
        start, end = best["start"], best["end"]
        dropped = predictor.predict_proba([text[:start] + text[end:]])[0, target]
        assert best["attribution"] == pytest.approx(math.log(row["score"]) - math.log(dropped), rel=1e-6)


def test_occlusion_groups_words_of_a_long_text(trained_run, monkeypatch):
    import sentitune.explain as explain

    monkeypatch.setattr(explain, "MAX_FEATURES", 4)
    predictor = Predictor.load(trained_run("tfidf"))
    text = "a gorgeous , witty film and a dull , lifeless mess"
    row = explain_texts(predictor, [text], "occlusion")[0]
    assert len(row["words"]) == 4 and row["words_per_feature"] == 3
    assert row["words"][0]["word"] == "a gorgeous ,"
    assert len(word_spans(text)) == 11


def test_explain_cli_json_lines(trained_run, capsys):
    assert main(["explain", "--model", str(trained_run("tfidf")), "a gorgeous film", "a dull film", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in rows] == ["a gorgeous film", "a dull film"]
    assert [r["label"] for r in rows] == ["positive", "negative"]
    for row in rows:
        assert {"label", "score", "probabilities", "method", "target", "unit", "words"} <= set(row)
        assert set(row["words"][0]) == {"word", "start", "end", "attribution"}


def test_explain_cli_prints_the_words_on_a_terminal(trained_run, capsys):
    assert main(["explain", str(trained_run("tfidf")), "a gorgeous film"]) == 0
    out = capsys.readouterr().out
    assert "positive" in out and "occlusion" in out and "gorgeous" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["  "], "text 1: holds no visible characters"),
        (["good", "--method", "shap"], "--method: 'shap' is not one of ig, occlusion"),
        (["good", "--method", "ig"], "--method ig needs gradients, which the tfidf backend does not give"),
        ([], "nothing to explain"),
    ],
)
def test_explain_bad_input_is_one_line(trained_run, capsys, args, message):
    assert main(["explain", "--model", str(trained_run("tfidf")), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_analyze_explains_the_most_confident_mistakes(trained_run, tmp_path, capsys):
    run = trained_run("head")
    out = tmp_path / "analysis"
    assert main(["analyze", str(run), "--explain", "2", "--output-dir", str(out)]) == 0
    explanations = json.loads((out / "explanations.json").read_text())
    analysis = json.loads((out / "analysis.json").read_text())
    mistakes = [row for row in analysis["highest_loss"] if row["gold"] != row["pred"]]
    assert len(explanations) == min(2, len(mistakes)) > 0
    for row, mistake in zip(explanations, mistakes):
        assert row["id"] == mistake["id"] and row["gold"] == mistake["gold"] != row["label"]
        assert row["method"] == "integrated_gradients" and row["words"]
    assert "explanations.json" in analysis["files"]
    assert "why the most confident mistakes" in capsys.readouterr().out


def test_analyze_explain_loads_the_model_once_and_a_rerun_drops_its_old_explanations(
    trained_run, tmp_path, monkeypatch
):
    run = trained_run("head")
    out = tmp_path / "analysis"
    loads = []
    load = Predictor.load
    monkeypatch.setattr(Predictor, "load", lambda *args, **kwargs: loads.append(args) or load(*args, **kwargs))
    assert main(["analyze", str(run), "--explain", "2", "--output-dir", str(out)]) == 0
    analysis = json.loads((out / "analysis.json").read_text())
    # Both the negation probe and the explanations query the model: one load serves them.
    assert analysis["negation_probe"]["status"] == "ok" and (out / "explanations.json").is_file()
    assert len(loads) == 1
    (out / "notes.txt").write_text("mine")
    assert main(["analyze", str(run), "--output-dir", str(out)]) == 0
    analysis = json.loads((out / "analysis.json").read_text())
    # The rerun explained nothing: the earlier run's explanations.json would pass for this one's.
    assert "explanations.json" not in analysis["files"] and not (out / "explanations.json").exists()
    assert all((out / name).is_file() for name in analysis["files"]) and (out / "notes.txt").read_text() == "mine"


def test_explain_route_shapes_limits_and_errors(trained_run):
    predictor = Predictor.load(trained_run("tfidf"))
    with TestClient(create_app(predictor, ServeSettings(max_chars=40))) as client:
        one = client.post("/explain", json={"text": "a gorgeous film"})
        many = client.post("/explain", json={"texts": ["a gorgeous film", "a dull film"]})
        predicted = client.post("/predict", json={"text": "a gorgeous film"}).json()
        too_many = client.post("/explain", json={"texts": ["good"] * (EXPLAIN_MAX_TEXTS + 1)})
        too_long = client.post("/explain", json={"text": "x" * 41})
        blank = client.post("/explain", json={"text": " \t"})
        both = client.post("/explain", json={"text": "a", "texts": ["b"]})
        paths = client.get("/openapi.json").json()["paths"]
    assert one.status_code == 200 and "text" not in one.json()
    assert one.json()["label"] == predicted["label"] and one.json()["score"] == pytest.approx(predicted["score"])
    assert one.json()["probabilities"] == pytest.approx(predicted["probabilities"])
    assert max(one.json()["words"], key=lambda w: w["attribution"])["word"] == "gorgeous"
    assert [r["label"] for r in many.json()["explanations"]] == ["positive", "negative"]
    assert (too_many.status_code, too_many.json()["error"]) == (413, "too_many_texts")
    assert (too_long.status_code, too_long.json()["error"]) == (413, "text_too_long")
    assert (blank.status_code, blank.json()["error"]) == (422, "empty_text")
    assert (both.status_code, both.json()["error"]) == (422, "invalid_request")
    assert "/explain" in paths


def test_page_in_headless_chromium_highlights_the_words(trained_run, tmp_path):
    from test_serve import CHROMIUM, Chromium, LiveServer

    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is absent (Debian: apt-get install -y chromium)")
    server = LiveServer(trained_run("head"))
    try:
        text = "a gorgeous , witty film"
        expected = httpx.post(f"{server.url}/explain", json={"text": text}).json()
        with Chromium(tmp_path / "profile") as browser:
            session = browser.open(f"{server.url}/")
            browser.wait_for(session, "document.readyState === 'complete' && !!document.getElementById('text')")
            browser.call("Runtime.evaluate", {"expression": "document.getElementById('text').focus()"}, session)
            browser.call("Input.insertText", {"text": text}, session)
            x, y = browser.center_of(session, "#predict")
            for kind in ("mousePressed", "mouseReleased"):
                browser.call(
                    "Input.dispatchMouseEvent",
                    {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1},
                    session,
                )
            shown = browser.wait_for(
                session,
                "document.querySelectorAll('#explanation .tok').length && JSON.stringify(Array.from("
                "document.querySelectorAll('#explanation .tok'), t => [t.textContent, "
                "Number(t.dataset.attribution), getComputedStyle(t).backgroundColor]))",
            )
            bars = browser.evaluate(session, "document.querySelectorAll('#bars .bar').length")
            page_text = browser.evaluate(session, "document.getElementById('explanation').textContent")
    finally:
        server.close()
    tokens = json.loads(shown)
    assert [t[0] for t in tokens] == [w["word"] for w in expected["words"]]
    assert [t[1] for t in tokens] == pytest.approx([w["attribution"] for w in expected["words"]], rel=1e-4)
    strongest = max(tokens, key=lambda t: abs(t[1]))
    assert strongest[2] not in ("rgba(0, 0, 0, 0)", "transparent")  # highlighted, not plain
    assert page_text == text and bars == 2
