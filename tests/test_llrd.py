"""Layer-wise learning-rate decay: each depth gets lr x decay^(top - depth); no decay for biases/LayerNorm."""

import pytest

from sentitune.models import load_classifier, resolve_model
from sentitune.training import layerwise_parameter_groups, train


def test_layerwise_groups_follow_depth(tiny_model_dir):
    model = load_classifier(resolve_model(str(tiny_model_dir)), ["negative", "positive"])
    groups = layerwise_parameter_groups(model, 1e-3, 0.5, 0.01)
    lr_of = {}
    for group in groups:
        for parameter in group["params"]:
            lr_of[id(parameter)] = (group["lr"], group["weight_decay"])
    named = dict(model.named_parameters())
    # 2 encoder layers: embeddings depth 0, layer.0 -> 1, layer.1 -> 2, head -> 3.
    assert lr_of[id(named["bert.embeddings.word_embeddings.weight"])] == (pytest.approx(1e-3 * 0.5**3), 0.01)
    assert lr_of[id(named["bert.encoder.layer.0.attention.self.query.weight"])][0] == pytest.approx(1e-3 * 0.5**2)
    assert lr_of[id(named["bert.encoder.layer.1.output.dense.bias"])] == (pytest.approx(1e-3 * 0.5), 0.0)
    assert lr_of[id(named["classifier.weight"])] == (pytest.approx(1e-3), 0.01)
    assert sum(len(g["params"]) for g in groups) == len(named)


def test_full_with_layer_lr_decay_trains(tiny_config, tmp_path):
    metrics = train(tiny_config("full", **{"method.layer_lr_decay": 0.8}), tmp_path / "run")
    assert metrics["status"] == "ok"
