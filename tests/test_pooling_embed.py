"""Pooling (`method.pooling`: cls, mean, auto), the frozen-embeddings method `embed` and `setfit`: what
each computes, that the choice is saved with the weights and every loader (Predictor, ONNX export)
honours it, and that the logistic-regression head picks C on validation."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch

from sentitune.config import ConfigError, RunConfig
from sentitune.inference import Predictor
from sentitune.methods.pooled_bert import mean_pool
from sentitune.methods.pooling import (
    declared_pooling,
    model_pooling,
    resolve_pooling,
    saved_pooling,
    set_pooling,
)
from sentitune.training import train


IDS = torch.tensor([[101, 2204, 3185, 1012, 102, 0, 0], [101, 2919, 102, 0, 0, 0, 0]])
MASK = (IDS != 0).long()


def _tiny_classifier(folder, labels=2):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(folder, num_labels=labels).eval()


def _sentence_transformers_folder(source, target, pooling_config: dict):
    """A copy of a plain BERT folder that declares its pooling as sentence-transformers does."""
    shutil.copytree(source, target)
    (target / "1_Pooling").mkdir()
    (target / "1_Pooling" / "config.json").write_text(json.dumps(pooling_config))
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    (target / "modules.json").write_text(json.dumps(modules))
    return target


@pytest.fixture(scope="module")
def st_folder(tiny_model_dir, tmp_path_factory):
    # sentence-transformers 2.x writes one flag per mode (the bundled minilm-l6 ships this form).
    flags = {"word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True}
    return _sentence_transformers_folder(tiny_model_dir, tmp_path_factory.mktemp("st") / "tiny-st", flags)


def _csv_probabilities(run_dir, label_names):
    with open(run_dir / "predictions.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return [row["text"] for row in rows], np.array([[float(row[f"prob_{n}"]) for n in label_names] for row in rows])


# ---- pooling ----------------------------------------------------------------------------------


def test_mean_pool_averages_only_the_unmasked_tokens():
    hidden = torch.randn(2, 7, 5)
    expected = torch.stack([hidden[0, :5].mean(0), hidden[1, :3].mean(0)])
    torch.testing.assert_close(mean_pool(hidden, MASK), expected)
    scrambled = hidden.clone()
    scrambled[MASK == 0] = 1e6  # padding positions must not reach the mean
    torch.testing.assert_close(mean_pool(scrambled, MASK), expected)
    # Prefix tuning prepends virtual tokens to the mask only: the states are the real tokens'.
    prefixed = torch.cat([torch.ones(2, 3, dtype=torch.long), MASK], dim=1)
    torch.testing.assert_close(mean_pool(hidden, prefixed), expected)


def test_pooling_choices_give_different_logits_from_the_same_weights(tiny_model_dir):
    model = _tiny_classifier(tiny_model_dir)
    with torch.no_grad():
        cls_logits = model(input_ids=IDS, attention_mask=MASK).logits
        set_pooling(model, "mean")
        mean_logits = model(input_ids=IDS, attention_mask=MASK).logits
        outputs = model.bert(input_ids=IDS, attention_mask=MASK)
        by_hand = model.classifier(mean_pool(outputs.last_hidden_state, MASK))
    assert model_pooling(model) == "mean" and model.config.classifier_pooling == "mean"
    assert not torch.allclose(cls_logits, mean_logits, atol=1e-4)
    torch.testing.assert_close(mean_logits, by_hand)
    set_pooling(model, "cls")
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=IDS, attention_mask=MASK).logits, cls_logits)


def test_mean_pooling_keeps_the_loss_of_the_problem_type(tiny_model_dir):
    model = set_pooling(_tiny_classifier(tiny_model_dir), "mean")
    out = model(input_ids=IDS, attention_mask=MASK, labels=torch.tensor([1, 0]))
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, torch.tensor([1, 0])))


def test_auto_reads_the_backbones_declared_pooling(tiny_model_dir, st_folder, tmp_path):
    from sentitune.models import resolve_model

    assert resolve_pooling("auto", str(st_folder)) == "mean"
    assert resolve_pooling("auto", str(tiny_model_dir)) == "cls"  # plain BERT declares nothing
    assert resolve_pooling("cls", str(st_folder)) == "cls"  # an explicit choice wins
    # sentence-transformers 3+ writes the mode as a string.
    v3 = _sentence_transformers_folder(
        tiny_model_dir, tmp_path / "v3", {"embedding_dimension": 32, "pooling_mode": "cls"}
    )
    assert declared_pooling(str(v3))[0] == "cls"
    # The bundled alias is a sentence-transformers model trained with mean pooling.
    assert resolve_pooling("auto", resolve_model("minilm-l6").location) == "mean"


def test_auto_refuses_a_pooling_sentitune_does_not_implement(tiny_model_dir, tmp_path):
    folder = _sentence_transformers_folder(tiny_model_dir, tmp_path / "max", {"pooling_mode": "max"})
    with pytest.raises(ConfigError, match=r"^method\.pooling: auto found pooling 'max' in .*1_Pooling") as refused:
        resolve_pooling("auto", str(folder))
    assert "\n" not in str(refused.value)


def test_a_pooling_outside_the_choices_names_the_field(tiny_model_dir, tiny_data):
    from conftest import make_tiny_config

    with pytest.raises(ConfigError, match=r"method\.pooling: 'max' is not one of auto, cls, mean"):
        make_tiny_config(tiny_model_dir, tiny_data, "head", **{"method.pooling": "max"})
    with pytest.raises(ConfigError, match=r"method\.logreg_c_grid"):
        RunConfig.from_dict({"method": {"name": "embed", "logreg_c_grid": []}})
    with pytest.raises(ConfigError, match=r"method\.setfit_pairs: must be > 0"):
        RunConfig.from_dict({"method": {"name": "setfit", "setfit_pairs": 0}})


def test_mean_pooling_refuses_a_classifier_it_does_not_implement():
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    config = DistilBertConfig(vocab_size=100, dim=32, n_layers=1, n_heads=4, hidden_dim=37)
    with pytest.raises(ConfigError, match=r"^method\.pooling: mean pooling is implemented for BERT classifiers"):
        set_pooling(DistilBertForSequenceClassification(config), "mean")


@pytest.fixture(scope="module")
def mean_head_run(tiny_model_dir, tiny_data, tmp_path_factory):
    from conftest import make_tiny_config

    folder = tmp_path_factory.mktemp("mean-head") / "run"
    train(make_tiny_config(tiny_model_dir, tiny_data, "head", **{"method.pooling": "mean"}), folder)
    return folder


def test_a_mean_pooled_run_saves_its_pooling_and_reloads_with_the_same_probabilities(mean_head_run):
    from sentitune.methods.pooled_bert import MeanPoolingBertForSequenceClassification

    metrics = json.loads((mean_head_run / "metrics.json").read_text())
    assert metrics["pooling"] == "mean"
    assert saved_pooling(mean_head_run / "model") == "mean"
    predictor = Predictor.load(mean_head_run, device="cpu")
    assert isinstance(predictor.model, MeanPoolingBertForSequenceClassification)
    texts, expected = _csv_probabilities(mean_head_run, predictor.label_names)
    got = predictor.predict_proba(texts)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    assert np.ptp(got[:, 0]) > 0
    # With mean pooling the pooler is off the path to the logits: only the classifier trained.
    from safetensors import safe_open

    with safe_open(str(mean_head_run / "model" / "trained.safetensors"), "pt") as handle:
        assert sorted(handle.keys()) == ["classifier.bias", "classifier.weight"]


def test_lora_with_mean_pooling_reloads_from_its_adapter_folder(tiny_config, tmp_path):
    run = tmp_path / "lora-mean"
    train(tiny_config("lora", **{"method.pooling": "mean"}), run)
    assert saved_pooling(run / "model") == "mean"
    assert not (run / "model" / "config.json").exists()  # an adapter folder stays an adapter folder
    predictor = Predictor.load(run, device="cpu")
    texts, expected = _csv_probabilities(run, predictor.label_names)
    np.testing.assert_allclose(predictor.predict_proba(texts), expected, atol=1e-5, rtol=0)
    assert model_pooling(predictor.model) == "mean"


def test_onnx_export_of_a_mean_pooled_model_gives_the_torch_logits(mean_head_run, tmp_path):
    from sentitune.export import export_onnx, sample_inputs
    from sentitune.inference import onnx_session

    predictor = Predictor.load(mean_head_run, device="cpu", precision="fp32")
    model, tokenizer = predictor.model, predictor.tokenizer
    path = tmp_path / "model.onnx"
    export_onnx(model, tokenizer, path)
    sample = sample_inputs(tokenizer)  # two rows of different lengths: padding is part of the check
    onnx_logits = onnx_session(path).run(["logits"], sample)[0]
    inputs = {name: torch.from_numpy(array) for name, array in sample.items()}
    with torch.no_grad():
        torch_logits = model(**inputs).logits.numpy()
        cls_logits = set_pooling(model, "cls")(**inputs).logits.numpy()
    set_pooling(model, "mean")
    np.testing.assert_allclose(onnx_logits, torch_logits, atol=1e-5, rtol=0)
    assert np.abs(onnx_logits - cls_logits).max() > 1e-4  # the graph reads the mean, not [CLS]


def test_legacy_folders_without_a_pooling_read_cls(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert saved_pooling(tmp_path) == "cls"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "classifier_pooling": "max"}))
    with pytest.raises(ValueError, match="classifier_pooling 'max'"):
        saved_pooling(tmp_path)


def test_shrink_keeps_the_declared_pooling(st_folder, tmp_path):
    from sentitune.models import shrink_model

    info = shrink_model(str(st_folder), 1, tmp_path / "st-l1")
    assert "1_Pooling/" in info["sentence_transformers_files"]
    assert resolve_pooling("auto", str(tmp_path / "st-l1")) == "mean"


# ---- the logistic-regression head -------------------------------------------------------------


@pytest.mark.parametrize("classes", [2, 3])
def test_logit_weights_reproduce_the_regressions_probabilities(classes):
    from scipy.special import softmax
    from sklearn.linear_model import LogisticRegression

    from sentitune.methods.logreg import logit_weights

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 5)), np.arange(60) % classes
    regression = LogisticRegression(C=1.0).fit(x, y)
    weight, bias = logit_weights(regression.coef_, regression.intercept_, classes)
    assert weight.shape == (classes, 5)
    np.testing.assert_allclose(softmax(x @ weight.T + bias, axis=1), regression.predict_proba(x), atol=1e-5)


def test_embedding_cache_is_read_back_only_for_the_same_texts_and_settings(tmp_path):
    from sentitune.methods.embed import cached_embeddings
    from sentitune.results import atomic_write_bytes

    calls = []

    def compute():
        calls.append(1)
        return np.full((2, 3), float(len(calls)), dtype=np.float32)

    first = cached_embeddings(tmp_path, "train", ["a", "b"], {"pooling": "mean"}, compute, atomic_write_bytes)
    again = cached_embeddings(tmp_path, "train", ["a", "b"], {"pooling": "mean"}, compute, atomic_write_bytes)
    assert len(calls) == 1 and np.array_equal(first, again)
    cached_embeddings(tmp_path, "train", ["a", "b"], {"pooling": "cls"}, compute)
    cached_embeddings(tmp_path, "train", ["a", "c"], {"pooling": "cls"}, compute, atomic_write_bytes)
    assert len(calls) == 3
    (tmp_path / "train.safetensors").write_bytes(b"damaged")
    cached_embeddings(tmp_path, "train", ["a", "c"], {"pooling": "cls"}, compute, atomic_write_bytes)
    assert len(calls) == 4 and not list(tmp_path.glob("*.tmp"))


# ---- embed ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embed_run(st_folder, tiny_data, tmp_path_factory):
    from conftest import make_tiny_config

    folder = tmp_path_factory.mktemp("embed") / "run"
    # A C grid wide enough that validation accuracy varies across it.
    cfg = make_tiny_config(st_folder, tiny_data, "embed", **{"method.logreg_c_grid": [1e-4, 0.1, 10.0, 1000.0]})
    metrics = train(cfg, folder)
    return folder, metrics


def test_embed_picks_c_by_validation_accuracy(embed_run):
    folder, metrics = embed_run
    with open(folder / "history.csv", newline="", encoding="utf-8") as handle:
        history = list(csv.DictReader(handle))
    grid = [float(row["C"]) for row in history]
    accuracy = [float(row["eval_accuracy"]) for row in history]
    assert grid == [1e-4, 0.1, 10.0, 1000.0]
    assert metrics["logreg_selected_c"] == grid[int(np.argmax(accuracy))]  # the first of equals
    assert metrics["validation_best_accuracy"] == max(accuracy)
    assert len(set(accuracy)) > 1, "every C scored the same: the check proves nothing"


def test_embed_trains_only_the_head_on_the_auto_pooled_frozen_encoder(embed_run, st_folder):
    from safetensors import safe_open
    from transformers import AutoModel

    folder, metrics = embed_run
    assert metrics["pooling"] == "mean"  # auto on a sentence-transformers folder
    assert metrics["params_trainable"] == 2 * 32 + 2 and metrics["params_total"] > 1000 * metrics["params_trainable"]
    with safe_open(str(folder / "model" / "trained.safetensors"), "pt") as handle:
        assert sorted(handle.keys()) == ["classifier.bias", "classifier.weight"]
    predictor = Predictor.load(folder, device="cpu")
    base = AutoModel.from_pretrained(st_folder)
    for name, tensor in base.state_dict().items():  # the encoder is the base model, unchanged
        torch.testing.assert_close(predictor.model.bert.state_dict()[name], tensor)


def test_embed_caches_the_embeddings_it_fitted_on(embed_run):
    from safetensors.numpy import load_file

    folder, metrics = embed_run
    for split, count in (("train", metrics["train_examples"]), ("validation", metrics["validation_examples"])):
        embeddings = load_file(str(folder / "embeddings" / f"{split}.safetensors"))["embeddings"]
        assert embeddings.shape == (count, 32) and np.isfinite(embeddings).all()


def test_embed_predicts_through_the_predictor_as_it_scored_test(embed_run):
    folder, metrics = embed_run
    predictor = Predictor.load(folder, device="cpu")
    assert predictor.backend == "torch"  # exports and serves like any neural run
    texts, expected = _csv_probabilities(folder, predictor.label_names)
    got = predictor.predict_proba(texts)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    assert np.ptp(got[:, 0]) > 0


def test_embed_and_setfit_refuse_multi_label():
    with pytest.raises(ConfigError, match="method.name: embed supports data.problem_type single_label only"):
        RunConfig.from_dict({"method": {"name": "embed"}, "data": {"problem_type": "multi_label"}})
    with pytest.raises(ConfigError, match="method.name: setfit supports data.problem_type single_label only"):
        RunConfig.from_dict({"method": {"name": "setfit"}, "data": {"problem_type": "multi_label"}})


# ---- setfit -----------------------------------------------------------------------------------


def test_setfit_pairs_are_balanced_distinct_and_follow_the_seed():
    from sentitune.methods.setfit import sample_pairs

    labels = [0, 0, 0, 1, 1, 2, 2, 2, 2, 1]
    pairs = sample_pairs(labels, 200, seed=3)
    assert len(pairs) == 200 and all(i != j for i, j, _ in pairs)
    assert all((labels[i] == labels[j]) == (similarity == 1.0) for i, j, similarity in pairs)
    assert sum(similarity for _, _, similarity in pairs) == 100
    assert sample_pairs(labels, 200, seed=3) == pairs != sample_pairs(labels, 200, seed=4)
    with pytest.raises(ConfigError, match="setfit needs at least two labels"):
        sample_pairs([1, 1, 1], 4, seed=0)


def test_setfit_tunes_the_encoder_and_predicts(st_folder, tiny_data, tmp_path):
    from conftest import make_tiny_config
    from transformers import AutoModel

    cfg = make_tiny_config(st_folder, tiny_data, "setfit", **{"method.setfit_pairs": 48, "train.max_steps": -1})
    metrics = train(cfg, tmp_path / "run")
    assert metrics["pooling"] == "mean" and metrics["learning_rate"] == 2e-5
    assert metrics["setfit_pairs"] == 48 and metrics["setfit_body_steps"] == 6  # 48 pairs in batches of 8
    assert np.isfinite(metrics["setfit_body_final_loss"])
    predictor = Predictor.load(tmp_path / "run", device="cpu")
    tuned, base = predictor.model.bert.state_dict(), AutoModel.from_pretrained(st_folder).state_dict()
    moved = [name for name in base if not torch.equal(tuned[name], base[name])]
    assert any("encoder.layer" in name for name in moved), "the contrastive phase left the encoder as it was"
    assert not any("pooler" in name for name in moved)
    texts, expected = _csv_probabilities(tmp_path / "run", predictor.label_names)
    np.testing.assert_allclose(predictor.predict_proba(texts), expected, atol=1e-5, rtol=0)
