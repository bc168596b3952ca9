"""The benches' naive baseline (bench/inference.py's `naive_pipeline`, also bench/serve_load.py's naive
server) computes the model the folder holds, mean-pooled ones included: a baseline that reads another
model is no baseline (plain transformers pools a mean-pooled BERT through [CLS])."""

import importlib.util
from pathlib import Path

import pytest


BENCH = Path(__file__).resolve().parents[1] / "bench"
TEXTS = ["a gorgeous, witty film", "it never finds its footing", "dull", "one of the year's best", "meh."]


@pytest.fixture(scope="module")
def bench_inference():
    spec = importlib.util.spec_from_file_location("bench_inference", BENCH / "inference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def mean_pooled_dir(tiny_model_dir, tmp_path_factory):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from sentitune.methods.pooling import set_pooling

    folder = tmp_path_factory.mktemp("mean-pooled")
    torch.manual_seed(1)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)
    with torch.no_grad():  # a pooler far from the mean's reading, so [CLS] and mean disagree
        model.bert.pooler.dense.weight.normal_(0, 3.0)
        model.classifier.weight.normal_(0, 3.0)
    model.config.id2label, model.config.label2id = {0: "negative", 1: "positive"}, {"negative": 0, "positive": 1}
    set_pooling(model, "mean").save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    return folder


def _mean_pooled_labels(folder, texts):
    import torch

    from sentitune.inference import Predictor

    predictor = Predictor.load(folder, device="cpu")
    with torch.no_grad():
        return [predictor.label_names[i] for i in predictor.predict_proba(texts).argmax(axis=1)]


def test_the_naive_pipeline_reads_a_mean_pooled_folder_as_sentitune_does(bench_inference, mean_pooled_dir):
    import torch
    from transformers import pipeline

    expected = _mean_pooled_labels(mean_pooled_dir, TEXTS)
    naive = bench_inference.naive_pipeline(mean_pooled_dir)
    assert [row["label"] for row in naive(TEXTS)] == expected
    assert type(naive.model).__name__ == "MeanPoolingBertForSequenceClassification"
    # What the bench built before: the same folder through plain transformers reads [CLS] instead.
    torch.manual_seed(0)
    plain = pipeline("text-classification", model=str(mean_pooled_dir), device=-1)
    assert type(plain.model).__name__ == "BertForSequenceClassification"
    naive_logits = naive.model(**naive.tokenizer(TEXTS, return_tensors="pt", padding=True)).logits
    plain_logits = plain.model(**plain.tokenizer(TEXTS, return_tensors="pt", padding=True)).logits
    assert not torch.allclose(naive_logits, plain_logits, atol=1e-3)


def test_serve_load_builds_its_naive_server_on_the_same_pipeline():
    source = (BENCH / "serve_load.py").read_text()
    assert "naive_pipeline(model_dir)" in source and "pipeline(" not in source.replace("naive_pipeline(", "")
