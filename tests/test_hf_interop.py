"""A run's model/ folder outside sentitune: plain transformers and peft load it and give the Predictor's
probabilities, its adapter names a base model that means something on another machine, and its README.md
is a model card."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from sentitune.inference import Predictor
from sentitune.metrics import temperature_scale
from sentitune.training import train


TEXTS = ["a gorgeous , witty film", "i hated every minute", "boring and far too long", "an absolute joy indeed"]


def _plain_to_served(predictor: Predictor, plain: np.ndarray) -> np.ndarray:
    """Plain transformers gives softmax(logits); sentitune serves softmax(logits / T) with the run's T."""
    return temperature_scale(np.log(plain), getattr(predictor, "temperature", 1.0))


@pytest.mark.parametrize("method", ["full", "head", "bitfit"])
def test_pipeline_loads_full_head_and_bitfit_folders(method, trained_run):
    from transformers import pipeline

    run_dir = trained_run(method)
    predictor = Predictor.load(run_dir, device="cpu", precision="fp32")
    config = json.loads((run_dir / "model" / "config.json").read_text())
    assert config["id2label"] == {str(i): name for i, name in enumerate(predictor.label_names)}
    assert config["label2id"] == {name: i for i, name in enumerate(predictor.label_names)}

    classifier = pipeline("text-classification", model=str(run_dir / "model"), top_k=None, device="cpu")
    plain = np.array(
        [[{r["label"]: r["score"] for r in row}[name] for name in predictor.label_names] for row in classifier(TEXTS)]
    )
    served = predictor.predict_proba(TEXTS)
    np.testing.assert_allclose(_plain_to_served(predictor, plain), served, atol=1e-5, rtol=0)
    assert np.ptp(served[:, 0]) > 0  # a constant model would make the comparison meaningless


@pytest.mark.parametrize("method", ["lora", "dora", "ia3"])
def test_auto_peft_model_loads_adapter_folders(method, trained_run, tiny_model_dir):
    import torch
    from peft import AutoPeftModelForSequenceClassification
    from transformers import AutoTokenizer

    run_dir = trained_run(method)
    adapter = json.loads((run_dir / "model" / "adapter_config.json").read_text())
    # A local base folder is named as the run's config names it (here the tiny model's path).
    assert adapter["base_model_name_or_path"] == str(tiny_model_dir)
    predictor = Predictor.load(run_dir, device="cpu", precision="fp32")
    labels = predictor.label_names
    model = AutoPeftModelForSequenceClassification.from_pretrained(
        str(run_dir / "model"),
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(run_dir / "model"))
    with torch.no_grad():
        plain = model(**tokenizer(TEXTS, return_tensors="pt", padding=True)).logits.softmax(-1).double().numpy()
    served = predictor.predict_proba(TEXTS)
    np.testing.assert_allclose(_plain_to_served(predictor, plain), served, atol=1e-5, rtol=0)
    assert np.ptp(served[:, 0]) > 0


def test_prefix_folders_say_auto_peft_alone_fails(trained_run):
    """peft 0.21 refuses prefixes on transformers 5's BERT (methods/prefix.py); the card says so. When
    peft loads them again, this test fails and the card's advice should change."""
    from huggingface_hub import ModelCard
    from peft import AutoPeftModelForSequenceClassification
    from transformers import AutoTokenizer

    run_dir = trained_run("prefix")
    model = AutoPeftModelForSequenceClassification.from_pretrained(str(run_dir / "model"))
    tokenizer = AutoTokenizer.from_pretrained(str(run_dir / "model"))
    with pytest.raises(ValueError, match="past key values"):
        model(**tokenizer(TEXTS, return_tensors="pt", padding=True))
    # The card says so and gives the shim that works (run in tests/test_hf_plain_code.py).
    card = ModelCard.load(run_dir / "model" / "README.md").text
    assert "`AutoPeftModelForSequenceClassification` alone fails" in card


def test_an_alias_base_is_named_by_its_hub_id(tmp_path):
    from sentitune.modelcard import make_adapter_portable
    from sentitune.models import resolve_model

    site_packages = resolve_model("minilm-l6").location
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": site_packages, "r": 8}))
    make_adapter_portable(tmp_path, "minilm-l6")
    adapter = json.loads((tmp_path / "adapter_config.json").read_text())
    assert adapter == {"base_model_name_or_path": "sentence-transformers/all-MiniLM-L6-v2", "r": 8}


def test_the_card_names_an_alias_base_by_hub_id_and_never_a_local_path(trained_run):
    from sentitune.modelcard import folder_kind, run_card
    from sentitune.models import resolve_model
    from sentitune.results import load_run

    run = load_run(trained_run("lora"))
    card = run_card(run.config.override({"model": "minilm-l6"}), run.metrics, folder_kind(run.path / "model"))
    assert card.data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert resolve_model("minilm-l6").location not in str(card)
    # A local base folder: no base_model metadata, and its path stays out of the card's prose.
    local = run_card(run.config, run.metrics, "peft")
    assert local.data.base_model is None
    assert str(run.config.model) not in local.text.split("## Training")[0]


@pytest.mark.parametrize("method", ["full", "lora", "tfidf"])
def test_every_run_has_a_model_card(method, trained_run):
    from huggingface_hub import ModelCard

    from sentitune.results import load_run

    run = load_run(trained_run(method))
    card = ModelCard.load(run.path / "model" / "README.md")
    metrics = run.metrics
    assert card.data.pipeline_tag == "text-classification"
    assert method in card.data.tags and "sentitune" in card.data.tags
    assert card.data.library_name == {"full": "transformers", "lora": "peft", "tfidf": "sentitune"}[method]
    text = card.text
    assert f"{metrics['test_accuracy']:.4f} (95% CI" in text
    assert f"| validation | {metrics['validation_examples']} | {metrics['validation_accuracy']:.4f} |" in text
    assert f"{metrics['params_trainable']:,} of {metrics['params_total']:,}" in text
    assert all(f"| {name} |" in text for name in run.label_names)
    assert f"transformers {metrics['provenance']['versions']['transformers']}" in text
    assert f"learning rate | {run.config.learning_rate:g} |" in text
    assert "## Limitations" in text
    assert "More Information Needed" not in text  # peft's blank template is gone


def test_a_mean_pooled_runs_card_sends_users_to_sentitune(tiny_config, tmp_path):
    from huggingface_hub import ModelCard

    train(tiny_config("full", **{"method.pooling": "mean"}), tmp_path / "run")
    card = ModelCard.load(tmp_path / "run" / "model" / "README.md")
    assert card.data.library_name == "sentitune"
    assert "predict differently" in card.text and "sentitune predict" in card.text


def test_validation_scores_are_the_final_models(trained_run):
    from sentitune.data import load_splits
    from sentitune.results import load_run

    run = load_run(trained_run("full"))
    validation = load_splits(run.config.data).validation
    predicted = Predictor.load(run.path, device="cpu", precision="fp32").predict_proba(validation.texts).argmax(1)
    assert run.metrics["validation_accuracy"] == pytest.approx(float((predicted == validation.labels).mean()))


def test_head_checkpoint_size_counts_the_trained_tensors_only(trained_run):
    run_dir = trained_run("head")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    trained = (run_dir / "model" / "trained.safetensors").stat().st_size / 2**20
    full_copy = (run_dir / "model" / "model.safetensors").stat().st_size / 2**20
    assert metrics["checkpoint_size_mib"] == pytest.approx(trained)
    assert trained < full_copy / 50


def test_a_head_run_without_the_full_copy_still_loads(trained_run, tmp_path):
    """Head and bitfit runs from before the full copy hold trained.safetensors alone."""
    run_dir = trained_run("head")
    old = tmp_path / "old-head"
    shutil.copytree(run_dir, old)
    (old / "model" / "model.safetensors").unlink()
    expected = Predictor.load(run_dir, device="cpu", precision="fp32").predict_proba(TEXTS)
    got = Predictor.load(old, device="cpu", precision="fp32").predict_proba(TEXTS)
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)


def test_an_export_carries_a_model_card_with_the_negation_slice(trained_run, tmp_path):
    from huggingface_hub import ModelCard

    from sentitune.analysis import slice_masks
    from sentitune.export import export_run
    from sentitune.results import load_predictions

    run_dir = trained_run("lora")
    export_run(run_dir, tmp_path / "export", fmt="hf", parity=False)
    card = ModelCard.load(tmp_path / "export" / "README.md")
    assert card.data.library_name == "transformers"  # the merged copy loads with pipeline()
    predictions = load_predictions(run_dir)
    negation = slice_masks(predictions.texts)["negation"]["mask"]
    assert negation.any()  # the tiny test split has negated reviews ("never", "n't")
    accuracy = predictions.correct[negation].mean()
    assert f"| test, negation slice | {int(negation.sum())} | {accuracy:.4f} |" in card.text
