"""Predictor round trips for every method, the streaming readers, and the predict command."""

from __future__ import annotations

import io
import json
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sentitune import results
from sentitune.cli import main
from sentitune.inference import Predictor, stream_texts
from sentitune.methods import registry


@pytest.fixture(scope="module")
def runs(trained_run):
    """One finished tiny run per registered method (shared with other test files)."""
    return {method: trained_run(method) for method in registry.names()}


@pytest.mark.parametrize("method", registry.names())
def test_predictor_reproduces_the_runs_own_test_predictions(runs, method):
    run = results.load_run(runs[method])
    frame = run.predictions()
    predictor = Predictor.load(runs[method], device="cpu")
    # Odd batch size: batches cut across lengths, so sorting and un-sorting are both exercised.
    probabilities = predictor.predict_proba(frame["text"].tolist(), batch_size=5)
    np.testing.assert_allclose(probabilities, run.probabilities(frame), atol=1e-5)
    assert predictor.backend == ("tfidf" if method == "tfidf" else "torch")


def test_lora_adapters_are_merged_at_load(runs):
    predictor = Predictor.load(runs["lora"], device="cpu")
    names = [name for name, _ in predictor.model.named_parameters()]
    assert not any("lora_" in name for name in names)
    assert type(predictor.model).__name__ == "BertForSequenceClassification"


def test_predictions_do_not_depend_on_batching_or_order(runs):
    predictor = Predictor.load(runs["full"], device="cpu")
    texts = ["a", "a much longer sentence with a good many words in it", "fine", "", "great fun , really"]
    whole = predictor.predict_proba(texts, batch_size=64)
    one_by_one = np.vstack([predictor.predict_proba([t]) for t in texts])
    np.testing.assert_allclose(whole, one_by_one, atol=1e-6)
    reversed_ = predictor.predict_proba(texts[::-1], batch_size=2)[::-1]
    np.testing.assert_allclose(whole, reversed_, atol=1e-6)
    rows = predictor.predict(texts)
    assert [r["text"] for r in rows] == texts
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-9 for r in rows)
    assert predictor.predict_proba([]).shape == (0, 2)


def test_predict_stream_holds_chunks_and_keeps_order(runs):
    predictor = Predictor.load(runs["tfidf"])
    texts = [f"text number {i} {'great' if i % 2 else 'awful'}" for i in range(25)]
    streamed = list(predictor.predict_stream(iter(texts), chunk_size=4))
    assert [r["text"] for r in streamed] == texts
    assert [r["label"] for r in streamed] == [r["label"] for r in predictor.predict(texts)]


def test_load_rejects_what_it_cannot_use(tmp_path, runs):
    with pytest.raises(results.RunFolderError, match="not found"):
        Predictor.load(tmp_path / "missing")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "sentitune.json").write_text("{not json")
    with pytest.raises(results.RunFolderError, match="corrupted JSON"):
        Predictor.load(broken)
    with pytest.raises(results.RunFolderError, match="variant"):
        Predictor.load(runs["full"], variant="int8")


def test_stream_texts_reads_each_format_lazily(tmp_path):
    (tmp_path / "a.csv").write_text('text,label\n"hello, world",1\n"two\nlines",0\n,1\n', encoding="utf-8")
    (tmp_path / "a.tsv").write_text('sentence\tlabel\nit\'s "quoted"\t1\n', encoding="utf-8")
    (tmp_path / "a.jsonl").write_text('{"review": "x"}\n\n{"review": "y"}\n', encoding="utf-8")
    (tmp_path / "a.txt").write_text("\ufefffirst\nsecond\n", encoding="utf-8")
    assert list(stream_texts(str(tmp_path / "a.csv"))) == ["hello, world", "two\nlines", ""]
    assert list(stream_texts(str(tmp_path / "a.tsv"))) == ['it\'s "quoted"']
    assert list(stream_texts(str(tmp_path / "a.jsonl"), "review")) == ["x", "y"]
    assert list(stream_texts(str(tmp_path / "a.txt"))) == ["first", "second"]
    seen = []
    assert len(list(stream_texts(str(tmp_path / "a.csv"), on_bytes=seen.append))) == 3
    assert sum(seen) == (tmp_path / "a.csv").stat().st_size


def test_stream_texts_errors_name_file_and_line(tmp_path):
    from sentitune.data import DataError

    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{oops\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.jsonl: line 2"):
        list(stream_texts(str(tmp_path / "bad.jsonl")))
    (tmp_path / "a.csv").write_text("review\nx\n", encoding="utf-8")
    with pytest.raises(DataError, match="no column 'text'"):
        list(stream_texts(str(tmp_path / "a.csv")))
    (tmp_path / "latin.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        list(stream_texts(str(tmp_path / "latin.txt")))


def test_predict_cli_texts_file_and_stdin(runs, tmp_path, capsys, monkeypatch):
    assert main(["predict", "--model", str(runs["tfidf"]), "great fun", "dull"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["text"] for row in lines] == ["great fun", "dull"]
    assert set(lines[0]) == {"text", "label", "score", "probabilities"}

    source = tmp_path / "in.csv"
    source.write_text("review,id\ngreat,1\nawful,2\n", encoding="utf-8")
    output = tmp_path / "out" / "preds.jsonl"
    assert (
        main(
            [
                "predict",
                "--model",
                str(runs["head"]),
                "--input",
                str(source),
                "--text-column",
                "review",
                "--output",
                str(output),
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [row["text"] for row in rows] == ["great", "awful"]

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b'{"text": "nice"}\n')))
    assert main(["predict", "--model", str(runs["tfidf"]), "--input", "-", "--input-format", "jsonl"]) == 0
    assert json.loads(capsys.readouterr().out)["text"] == "nice"


def test_predict_cli_user_errors_exit_2(runs, tmp_path, capsys):
    assert main(["predict", "--model", str(runs["tfidf"])]) == 2
    assert "nothing to predict" in capsys.readouterr().err
    assert main(["predict", "--model", str(runs["tfidf"]), "x", "--input", "f.csv"]) == 2
    assert main(["predict", "--model", str(tmp_path / "nope"), "x"]) == 2
    assert main(["predict", "--model", str(runs["tfidf"]), "--input", str(tmp_path / "in.xlsx")]) == 2
    assert "unknown file type" in capsys.readouterr().err


def test_runtime_flags_are_checked_before_loading(runs, capsys, monkeypatch):
    import torch

    lora = str(runs["lora"])
    for flags, message in (
        (["--device", "tpu"], "expected cpu, cuda"),
        (["--workers", "0"], "--workers must be >= 1"),
        (["--threads", "0"], "--threads must be >= 1"),
        (["--workers", "2"], "ONNX exports only"),
    ):
        assert main(["predict", "--model", lora, "x", *flags]) == 2
        assert message in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["predict", "--model", lora, "x", "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert main(["serve", "--model", lora, "--workers", "0"]) == 2  # refused before any server starts
    assert "--workers must be >= 1" in capsys.readouterr().err


def test_threads_flag_sets_torch_threads_for_torch_models(runs, capsys):
    import torch

    before = torch.get_num_threads()
    try:
        assert main(["predict", "--model", str(runs["lora"]), "--threads", "1", "--device", "cpu", "fine film"]) == 0
        assert torch.get_num_threads() == 1
        assert json.loads(capsys.readouterr().out.splitlines()[0])["text"] == "fine film"
    finally:
        torch.set_num_threads(before)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 130), min_size=1, max_size=200), st.integers(1, 64))
def test_plan_batches_covers_every_text_once_within_the_size_limit(lengths, max_batch_size):
    from sentitune.inference import BATCH_OVERHEAD_TOKENS, plan_batches

    lengths = np.asarray(lengths)
    batches = plan_batches(lengths, max_batch_size)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    assert all(1 <= len(b) <= max_batch_size for b in batches)

    def cost(groups):
        return sum(BATCH_OVERHEAD_TOKENS + len(g) * lengths[g].max() for g in groups)

    # Never worse than the plain sorted cut into full batches (the optimum can only be cheaper).
    order = np.argsort(lengths, kind="stable")
    fixed = [order[i : i + max_batch_size] for i in range(0, len(order), max_batch_size)]
    assert cost(batches) <= cost(fixed) + 1e-9


def test_plan_batches_splits_a_mixed_micro_batch_by_length():
    from sentitune.inference import plan_batches

    lengths = np.array([50, 6, 51, 5, 7, 49, 6, 52])
    batches = plan_batches(lengths, 64)
    assert [sorted(lengths[b].tolist()) for b in batches] == [[5, 6, 6, 7], [49, 50, 51, 52]]
    # Equal lengths stay one batch.
    assert [len(b) for b in plan_batches(np.full(100, 20), 64)] == [36, 64] or [
        len(b) for b in plan_batches(np.full(100, 20), 64)
    ] == [64, 36]


def test_onnx_parallelism_defaults_and_overrides():
    from sentitune.inference import onnx_parallelism

    assert onnx_parallelism(cores=2) == (1, 2)
    assert onnx_parallelism(cores=16) == (4, 4)
    assert onnx_parallelism(cores=16, workers=1) == (1, 16)
    assert onnx_parallelism(cores=16, threads=2) == (8, 2)
    with pytest.raises(ValueError, match="workers"):
        onnx_parallelism(cores=4, workers=0)


def test_streamed_inputs_refuse_lone_surrogates_and_accept_huge_fields(tmp_path, runs, capsys):
    from sentitune.data import read_texts

    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"text": "broken \\ud800 here"}\n')
    assert main(["predict", "--model", str(runs["tfidf"]), "--input", str(tmp_path / "bad.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert "bad.jsonl: line 2, column 'text'" in err and "lone surrogate" in err and len(err.splitlines()) == 1
    huge = "word " * 40_000  # 200 KB in one CSV field: over csv's default 128 KiB limit
    (tmp_path / "huge.csv").write_text(f'text\n"{huge}"\n\n"  "\nshort\n')
    assert [len(t) for t in stream_texts(str(tmp_path / "huge.csv"))] == [len(huge), 2, 5]
    assert [len(t) for t in read_texts(tmp_path / "huge.csv")] == [len(huge), 5]  # blanks dropped


# ---- calibration: the run's temperature is applied wherever it is loaded ----------------------


@pytest.mark.parametrize("method", ["full", "tfidf"])
def test_predictor_applies_the_temperature_the_run_fitted(trained_run, tmp_path, method):
    import shutil

    from sentitune.metrics import softmax

    source = trained_run(method)
    stored = results.read_json(source / results.CALIBRATION_FILE)
    metrics = results.load_run(source).metrics
    assert stored["fitted_on"] == "validation" and stored["temperature"] == metrics["temperature"]
    assert stored["validation_nll_calibrated"] <= stored["validation_nll_uncalibrated"] + 1e-12
    assert 0 <= metrics["test_ece_calibrated"] <= 1 and 0 <= metrics["test_ece_uncalibrated"] <= 1
    assert Predictor.load(source, device="cpu").temperature == pytest.approx(stored["temperature"])

    run = tmp_path / "run"
    shutil.copytree(source, run)
    texts = ["a gorgeous , witty film", "dull and far too long", "i loved every minute", "a tedious mess"]
    (run / results.CALIBRATION_FILE).write_text(json.dumps({"temperature": 2.5}))
    scaled = Predictor.load(run, device="cpu").predict_proba(texts)
    (run / results.CALIBRATION_FILE).unlink()  # a run made before temperature scaling: T = 1
    plain = Predictor.load(run, device="cpu")
    assert plain.temperature == 1.0 and plain.describe()["temperature"] == 1.0
    raw = plain.predict_proba(texts)
    np.testing.assert_allclose(scaled, softmax(np.log(raw) / 2.5), atol=1e-6)
    assert (scaled.argmax(axis=1) == raw.argmax(axis=1)).all()
    assert np.abs(scaled - 0.5).max() < np.abs(raw - 0.5).max()  # T > 1 softens

    (run / results.CALIBRATION_FILE).write_text(json.dumps({"temperature": -1}))
    with pytest.raises(results.RunFolderError, match="temperature must be a positive number") as refused:
        Predictor.load(run, device="cpu")
    assert "\n" not in str(refused.value) and results.CALIBRATION_FILE in str(refused.value)


def test_exports_carry_the_runs_temperature(trained_run, tmp_path):
    import shutil

    from sentitune.export import export_run

    run = tmp_path / "run"
    shutil.copytree(trained_run("full"), run)
    (run / results.CALIBRATION_FILE).write_text(json.dumps({"temperature": 3.0}))
    texts = ["a gorgeous , witty film", "dull and far too long"]
    expected = Predictor.load(run, device="cpu").predict_proba(texts)
    for fmt in ("hf", "onnx"):
        out = tmp_path / f"export-{fmt}"
        export_run(run, out, fmt=fmt, parity=False)
        assert json.loads((out / "sentitune.json").read_text())["temperature"] == 3.0
        exported = Predictor.load(out, device="cpu")
        assert exported.temperature == 3.0
        np.testing.assert_allclose(exported.predict_proba(texts), expected, atol=1e-4)
