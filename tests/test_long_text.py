"""Long documents: `data.long_text: chunk` trains on windows and predicts each text from the mean of
its windows' logits; `truncate` stays the default and unchanged."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sentitune.config import ConfigError, DataConfig, RunConfig
from sentitune.data import Split, encode_texts, encode_windows, mean_per_document, tokenize_split, window_starts
from sentitune.inference import Predictor
from sentitune.results import load_predictions


LONG = " ".join(["a gorgeous , witty film", "but the plot is a dull , lifeless mess"] * 4)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def chunked_run(tiny_model_dir, tiny_data, tmp_path_factory):
    from conftest import make_tiny_config

    from sentitune.training import train

    folder = tmp_path_factory.mktemp("chunked") / "run"
    # max_length 8: the tiny sentences (5 to 9 word pieces) already need one to three windows.
    cfg = make_tiny_config(
        tiny_model_dir, tiny_data, "full", **{"data.long_text": "chunk", "data.max_length": 8, "data.chunk_stride": 3}
    )
    train(cfg, folder)
    return folder


def test_a_long_text_becomes_overlapping_windows_that_cover_every_token(tokenizer):
    body = tokenizer(LONG, add_special_tokens=False)["input_ids"]
    encoded, documents = encode_windows(tokenizer, [LONG, "great fun"], 16, 5)
    windows = [ids for ids, d in zip(encoded["input_ids"], documents) if d == 0]
    assert len(windows) > 3 and documents.count(1) == 1
    assert all(
        len(ids) <= 16 and ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id for ids in windows
    )
    starts = window_starts(len(body), 14, 5)
    assert [w[1:-1] for w in windows] == [body[s : s + 14] for s in starts]
    assert starts[-1] + 14 == len(body)  # the last window ends at the text's end
    assert all(b - a <= 5 for a, b in zip(starts, starts[1:]))  # no gap: every token is in a window


def test_chunked_training_rows_are_windows_with_their_texts_labels(tokenizer):
    split = Split([LONG, "great fun", "a dull mess"], [1, 1, 0])
    dataset, split_texts = tokenize_split(tokenizer, split, 16, "head", "chunk", 5)
    documents = dataset["document"]
    assert len(dataset) == len(documents) > 3 and split_texts == 1
    assert dataset["labels"] == [split.labels[d] for d in documents]
    assert dataset["length"] == [len(ids) for ids in dataset["input_ids"]]


def test_truncate_stays_the_default_and_unchanged(tokenizer):
    assert DataConfig().long_text == "truncate" and DataConfig().chunk_stride is None
    split = Split([LONG, "great fun"], [1, 1])
    dataset, truncated = tokenize_split(tokenizer, split, 16, "head+tail")
    encoded, expected_truncated = encode_texts(tokenizer, split.texts, 16, "head+tail")
    assert dataset["input_ids"] == encoded["input_ids"] and truncated == expected_truncated == 1
    assert "document" not in dataset.column_names
    # Runs made before long_text existed keep their fingerprint (the field is left out at its default).
    assert "long_text" not in RunConfig().scaffolding()["data"]
    assert RunConfig().fingerprint() != RunConfig.from_dict({"data": {"long_text": "chunk"}}).fingerprint()


def test_predictor_averages_the_windows_logits(chunked_run, tokenizer):
    predictor = Predictor.load(chunked_run, device="cpu", precision="fp32")
    assert (predictor.long_text, predictor.chunk_stride, predictor.max_length) == ("chunk", 3, 8)
    texts = [LONG, "great fun"]
    encoded, documents = encode_windows(tokenizer, texts, 8, 3)
    with torch.no_grad():
        window_logits = np.concatenate(
            [predictor.model(input_ids=torch.tensor([ids])).logits.numpy() for ids in encoded["input_ids"]]
        )
    expected = np.stack([window_logits[np.asarray(documents) == d].mean(axis=0) for d in range(len(texts))])
    assert documents.count(0) > 3
    assert predictor.logits(texts) == pytest.approx(expected, abs=1e-5)
    assert mean_per_document(window_logits, documents, 2) == pytest.approx(expected, abs=1e-7)
    # The calibrated probabilities predict, evaluate and serve give come from those means.
    scaled = expected / predictor.temperature
    softmax = np.exp(scaled - scaled.max(1, keepdims=True))
    assert predictor.predict_proba(texts) == pytest.approx(softmax / softmax.sum(1, keepdims=True), abs=1e-6)


def test_a_chunked_runs_test_predictions_are_per_text_and_match_the_predictor(chunked_run, tiny_data):
    stored = load_predictions(chunked_run)
    assert len(stored.texts) == 24  # one row per test text, not per window
    metrics = json.loads((chunked_run / "metrics.json").read_text())
    assert metrics["test_windows"] > metrics["test_examples"] == 24
    assert metrics["train_windows"] > metrics["train_examples"]
    predictor = Predictor.load(chunked_run, device="cpu", precision="fp32")
    assert predictor.predict_proba(stored.texts) == pytest.approx(stored.probabilities, abs=1e-5)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"long_text": "pool"}, "data.long_text: 'pool' is not one of truncate, chunk"),
        ({"chunk_stride": 64}, "data.chunk_stride: read only when data.long_text is 'chunk'"),
        ({"long_text": "chunk", "max_length": 64, "chunk_stride": 63}, "from 1 to 62"),
        ({"long_text": "chunk", "chunk_stride": 0}, "data.chunk_stride"),
    ],
)
def test_bad_long_text_settings_are_one_line(data, message):
    with pytest.raises(ConfigError) as error:
        RunConfig.from_dict({"data": data})
    assert message in str(error.value) and "\n" not in str(error.value)


def test_embedding_methods_refuse_chunking(tiny_model_dir, tiny_data, tmp_path):
    from conftest import make_tiny_config

    from sentitune.training import train

    cfg = make_tiny_config(tiny_model_dir, tiny_data, "embed", **{"data.long_text": "chunk"})
    with pytest.raises(ConfigError, match="data.long_text: 'chunk'"):
        train(cfg, tmp_path / "run")


def test_chunk_switches_a_preset_that_truncates_head_and_tail():
    from sentitune.config import load_config

    cfg = load_config(preset="imdb-quick", overrides={"data.long_text": "chunk", "data.chunk_stride": 127})
    assert (cfg.data.long_text, cfg.data.chunk_stride, cfg.data.truncation) == ("chunk", 127, "head+tail")


def test_explanations_of_a_chunked_run(chunked_run):
    from sentitune.explain import explain_texts

    predictor = Predictor.load(chunked_run, device="cpu", precision="fp32")
    occluded = explain_texts(predictor, [LONG], "occlusion")[0]
    # Occlusion goes through predict_proba: the whole text, its windows averaged.
    expected = predictor.predict_proba([LONG])[0]
    assert [occluded["probabilities"][name] for name in predictor.label_names] == pytest.approx(expected)


def test_integrated_gradients_of_a_chunked_run_explain_the_averaged_prediction(chunked_run, tokenizer):
    import math

    from test_explain import _sharpened

    from sentitune.data import chunk_windows
    from sentitune.explain import explain_texts

    predictor = _sharpened(chunked_run)
    row = explain_texts(predictor, [LONG], "ig")[0]
    # The prediction explained is the one the Predictor reports: the mean of every window's logits.
    expected = predictor.predict_proba([LONG])[0]
    assert [row["probabilities"][name] for name in predictor.label_names] == pytest.approx(expected, abs=1e-5)
    assert row["target"] == predictor.label_names[int(expected.argmax())]
    encoded = tokenizer(LONG, add_special_tokens=False, return_offsets_mapping=True)
    windows = chunk_windows(len(encoded["input_ids"]), predictor.max_length, predictor.chunk_stride)
    assert row["windows"] == len(windows) > 3
    assert row["tokens_explained"] == row["tokens_total"] == len(encoded["input_ids"])
    # Every word of the whole text, in order, once (overlapping windows merged into one entry per word).
    assert len(row["words"]) == len({word for word in encoded.word_ids() if word is not None})
    assert [w["start"] for w in row["words"]] == sorted(w["start"] for w in row["words"])
    assert row["words"][-1]["end"] == len(LONG)
    # Words past the first window are read by the later windows, and get their attributions.
    first_window_end = encoded["offset_mapping"][windows[0][-1]][1]
    later = [w["attribution"] for w in row["words"] if w["start"] >= first_window_end]
    assert len(later) > len(row["words"]) // 2 and all(value != 0.0 for value in later)
    # Completeness for the averaged prediction. The baseline: every window [CLS] [PAD] ... [SEP]; all
    # windows are equally long, so it is the prediction of one such window (the string "[PAD]" is the token).
    target = predictor.label_names.index(row["target"])
    window = predictor.max_length - 2
    baseline = predictor.predict_proba([" ".join(["[PAD]"] * window)])[0, target]
    assert row["baseline_log_probability"] == pytest.approx(math.log(baseline), abs=1e-5)
    change = math.log(row["score"]) - math.log(baseline)
    total = sum(word["attribution"] for word in row["words"])
    assert abs(change) > 1e-4, "the sharpened model should separate the text from the all-[PAD] baseline"
    assert total == pytest.approx(change, rel=0.02, abs=1e-6)
    assert row["convergence_delta"] == pytest.approx(abs(total - change), abs=1e-5)
    assert row["convergence_delta"] < 0.02 * abs(change)
