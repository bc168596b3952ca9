"""The method registry: what each method trains, save/load round trips, checkpoint contents."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from sentitune.inference import Predictor
from sentitune.methods import registry
from sentitune.methods.base import Method
from sentitune.training import train


# What each method's own tensors are called, beyond the head (peft names them after the method).
ADAPTER_MARKERS = {"lora": ("lora_",), "dora": ("lora_",), "ia3": ("ia3_",), "prefix": ("prompt_encoder",)}


def _intended(method: str, head: str, pooling: str = "cls"):
    """Predicate on parameter names: which ones a method is meant to train. A new method needs a line
    here: saying what it trains is the point of the test. With mean pooling the pooler is unused and
    trains under no method."""
    head_modules = ["classifier"] + (["pooler.dense"] if head == "pooler+classifier" and pooling == "cls" else [])

    def in_head(name: str) -> bool:
        # peft keeps an untouched copy of a trained module (`original_module`) next to the trained one.
        return any(f".{m}." in f".{name}." for m in head_modules) and "original_module" not in name

    def off_path(name: str) -> bool:
        return pooling == "mean" and ".pooler." in f".{name}."

    if method == "full":
        return lambda name: not off_path(name)
    if method == "head":
        return in_head
    if method == "bitfit":
        return lambda name: in_head(name) or (name.endswith(".bias") and not off_path(name))
    if method in ADAPTER_MARKERS:
        return lambda name: in_head(name) or any(m in name for m in ADAPTER_MARKERS[method])
    raise AssertionError(f"no expectation written for method {method!r}; add one to _intended")


def _parameter_cases():
    # Both head variants where the brief pins them down (head, lora); the default for the rest.
    # `full` trains everything whatever method.head says. Mean pooling for the methods whose trained
    # set it changes (the pooler leaves it). Methods that fit themselves (embed, setfit) have no
    # Trainer step to observe: tests/test_pooling_embed.py checks what they train.
    from sentitune.config import MethodConfig

    cases = []
    for method in registry.neural_names():
        if not registry.get(method).uses_trainer:
            continue
        heads = ("classifier", "pooler+classifier") if method in ("head", "lora") else (MethodConfig().head,)
        cases += [(method, head, "cls") for head in heads]
        if method in ("full", "head", "bitfit", "lora"):
            cases.append((method, MethodConfig().head, "mean"))
    return cases


PARAMETER_CASES = _parameter_cases()


@pytest.mark.parametrize("method, head, pooling", PARAMETER_CASES)
def test_only_intended_parameters_change(method, head, pooling, tiny_config, tmp_path, monkeypatch):
    # Capture the model as the training loop builds it, so the optimizer, weight decay and the
    # Trainer's parameter groups are exactly those of a real run.
    captured = {}
    strategy = registry.get(method)
    original_prepare = strategy.prepare

    def spying_prepare(model, cfg):
        prepared = original_prepare(model, cfg)
        captured["model"] = prepared
        captured["before"] = {n: p.detach().clone() for n, p in prepared.named_parameters()}
        return prepared

    monkeypatch.setattr(strategy, "prepare", spying_prepare)
    # No warm-up: with it the first step has learning rate 0 and LoRA's A matrices would not move.
    overrides = {"train.max_steps": 2, "train.warmup_ratio": 0.0, "method.head": head, "method.pooling": pooling}
    metrics = train(tiny_config(method, **overrides), tmp_path / "run")
    assert metrics["train_steps"] == 2 and metrics["pooling"] == pooling

    after = dict(captured["model"].named_parameters())
    before = captured["before"]
    assert set(after) == set(before)
    should_train = _intended(method, head, pooling)
    changed = {n for n in before if not np.array_equal(before[n].numpy(), after[n].detach().numpy())}
    expected = {n for n in before if should_train(n)}
    assert expected, "the predicate matched no parameter: the names changed"
    assert changed - expected == set(), f"{method} moved parameters it must not train"
    assert expected - changed == set(), f"{method} left parameters it should train unchanged"
    requires_grad = {n for n, p in after.items() if p.requires_grad}
    assert requires_grad == expected
    assert metrics["params_trainable"] == sum(after[n].numel() for n in expected)
    if method == "full":
        assert any("word_embeddings" in n for n in changed)


def _csv_probabilities(run_dir, label_names):
    with open(run_dir / "predictions.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    texts = [row["text"] for row in rows]
    return texts, np.array([[float(row[f"prob_{name}"]) for name in label_names] for row in rows])


@pytest.mark.parametrize("method", registry.names())
def test_save_load_gives_the_same_predictions(method, trained_run):
    run_dir = trained_run(method)
    predictor = Predictor.load(run_dir)
    texts, expected = _csv_probabilities(run_dir, predictor.label_names)
    got = predictor.predict_proba(texts)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    # A trained head must not be a constant function, or the comparison proves little.
    assert np.ptp(got[:, 0]) > 0


def test_lora_checkpoint_holds_only_adapter_and_head(trained_run):
    import json

    from safetensors import safe_open

    lora_dir, full_dir = trained_run("lora"), trained_run("full")
    with safe_open(str(lora_dir / "model" / "adapter_model.safetensors"), "pt") as handle:
        names = list(handle.keys())
    assert names
    stray = [n for n in names if "lora_" not in n and "classifier" not in n and "pooler.dense" not in n]
    assert stray == [], f"base weights leaked into the adapter file: {stray[:5]}"
    assert any("lora_A" in n for n in names) and any("lora_B" in n for n in names)
    assert any("classifier" in n for n in names)
    lora_mib = json.loads((lora_dir / "metrics.json").read_text())["checkpoint_size_mib"]
    full_mib = json.loads((full_dir / "metrics.json").read_text())["checkpoint_size_mib"]
    assert 0 < lora_mib < full_mib / 20, (lora_mib, full_mib)


def test_head_checkpoint_holds_only_the_head(trained_run):
    from safetensors import safe_open

    from sentitune.results import load_run

    run_dir = trained_run("head")
    expected = ["classifier.bias", "classifier.weight"]
    if load_run(run_dir).config.method.head == "pooler+classifier":
        expected = ["bert.pooler.dense.bias", "bert.pooler.dense.weight"] + expected
    with safe_open(str(run_dir / "model" / "trained.safetensors"), "pt") as handle:
        assert sorted(handle.keys()) == expected


def test_duplicate_registration_raises():
    from sentitune.methods.registry import register

    class AnotherFull(Method):
        name = "full"

    before = registry.names()
    with pytest.raises(ValueError, match="already registered"):
        register(AnotherFull)

    class Shouting(Method):
        name = "LoRA2"

    with pytest.raises(ValueError, match="lowercase"):
        register(Shouting)
    assert registry.names() == before
    assert registry.get("full").__class__.__name__ == "Full"


def test_unknown_method_lists_the_registered_ones():
    with pytest.raises(KeyError, match="full"):
        registry.get("adapters")


def test_registry_drives_the_cli_method_choices():
    from sentitune import cli
    from sentitune.methods import registry as registry_module
    from sentitune.methods.registry import register

    def method_choices():
        parser = cli.build_parser()
        train_parser = parser._subparsers._group_actions[0].choices["train"]
        (action,) = [a for a in train_parser._actions if "--method" in a.option_strings]
        return list(action.choices)

    assert method_choices() == registry.names()

    class Probe(Method):
        name = "probe-method"

    register(Probe)
    try:
        assert "probe-method" in method_choices()
    finally:
        registry_module._METHODS.pop("probe-method")
    assert "probe-method" not in method_choices()


def test_every_method_has_a_summary_and_learning_rate():
    for name in registry.names():
        method = registry.get(name)
        assert method.name == name and method.summary
        # Methods that take no gradient step (tfidf, embed) have no learning rate.
        assert method.default_learning_rate > 0 or not method.uses_trainer


def test_prefix_keys_and_values_reach_every_attention_layer(tiny_model_dir):
    """transformers 5.24 renamed the encoder's past_key_values to cache; the prefixes must still be
    read: moving them moves the logits, and the gradient reaches them."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from sentitune.config import MethodConfig

    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)
    model = registry.get("prefix").prepare(base, MethodConfig(name="prefix"))
    ids = torch.tensor([[101, 2204, 3185, 102, 0], [101, 2919, 102, 0, 0]])
    mask = (ids != 0).long()
    out = model(input_ids=ids, attention_mask=mask, labels=torch.tensor([1, 0]))
    out.loss.backward()
    prompt = next(p for n, p in model.named_parameters() if "prompt_encoder" in n)
    assert prompt.grad is not None and prompt.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
        prompt.add_(1.0)
        after = model(input_ids=ids, attention_mask=mask).logits
    assert not torch.allclose(before, after)


def test_prefix_refuses_a_model_without_a_cache_argument_before_training():
    import torch

    from sentitune.methods.prefix import check_supported

    class NoCache(torch.nn.Module):
        base_model_prefix = "encoder"

        def __init__(self):
            super().__init__()
            self.encoder = torch.nn.Linear(2, 2)

        def forward(self, input_ids=None, attention_mask=None):
            return self.encoder(input_ids)

    with pytest.raises(ValueError, match=r"^prefix tuning needs .* use --method lora") as refused:
        check_supported(NoCache())
    assert "\n" not in str(refused.value)
