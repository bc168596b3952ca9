"""Prefix tuning via peft (P-tuning v2 style for classification): trainable key/value prefixes of
`method.prefix_tokens` virtual tokens in every layer, base frozen, head trainable. Unlike LoRA the
prefixes cannot be merged into the weights, so inference keeps the peft wrapper (and ONNX export
is not supported for it).

transformers 5.24 renamed the encoder's `past_key_values` argument to `cache`. peft (0.21) finds
out whether a model can take prefixes by looking for `past_key_values` in `forward`'s signature,
so on a BERT classifier it now refuses with "Model does not support past key values". The model
still takes the prefixes: `forward(**kwargs)` hands `cache=` down to every self-attention layer,
which prepends the cached keys and values. `accept_prefix_cache` gives the classifier's `forward`
a `past_key_values` parameter that it passes on as `cache`, which is what peft looks for and what
the encoder reads. Models whose encoder takes neither are refused before training
(`check_supported`), in one line that names what to use instead.
"""

from __future__ import annotations

import inspect

from sentitune.methods.base import PeftMethod, head_module_names
from sentitune.methods.registry import register


def _parameters(function) -> set[str]:
    return set(inspect.signature(function).parameters)


def _backbone(model):
    prefix = getattr(model, "base_model_prefix", "")
    return getattr(model, prefix, None) if prefix else None


def cache_argument(model) -> str | None:
    """The name under which `model`'s encoder takes prefix keys/values (`past_key_values` or `cache`),
    or None when it takes neither."""
    if "past_key_values" in _parameters(model.forward):
        return "past_key_values"
    backbone = _backbone(model)
    if backbone is None:
        return None
    backbone_params = _parameters(backbone.forward)
    for name in ("past_key_values", "cache"):
        if name in backbone_params:
            return name
    return None


def check_supported(model) -> None:
    """Raises ValueError, in one line, when prefix tuning cannot reach `model`'s attention layers."""
    if cache_argument(model) is None:
        raise ValueError(
            f"prefix tuning needs an encoder that takes cached keys/values, and {type(model).__name__} "
            "takes neither past_key_values nor cache; use --method lora (or dora, ia3) instead"
        )


def accept_prefix_cache(model):
    """Makes `model.forward` take `past_key_values` (peft's name) and pass it on as the encoder's own
    argument. A no-op when the model already names `past_key_values` itself."""
    argument = cache_argument(model)
    if argument is None:
        check_supported(model)  # raises, naming what to use instead
    if "past_key_values" in _parameters(model.forward):
        return model
    class_forward = type(model).forward

    def forward(*args, past_key_values=None, **kwargs):
        if past_key_values is not None:
            kwargs[argument] = past_key_values
        return class_forward(model, *args, **kwargs)

    # The bound forward's own parameters plus the new one: Trainer reads this signature to decide
    # which dataset columns the model takes (input_ids, attention_mask, ...), peft to find the cache.
    signature = inspect.signature(model.forward)
    keyword = inspect.Parameter("past_key_values", inspect.Parameter.KEYWORD_ONLY, default=None)
    parameters = list(signature.parameters.values())
    position = next((i for i, p in enumerate(parameters) if p.kind is inspect.Parameter.VAR_KEYWORD), len(parameters))
    forward.__signature__ = signature.replace(parameters=[*parameters[:position], keyword, *parameters[position:]])
    # Instance attribute: nn.Module.__call__ dispatches to it. The class, and every other model, is
    # left untouched.
    model.forward = forward
    return model


@register
class Prefix(PeftMethod):
    name = "prefix"
    extra_tunable_knobs = ("prefix_tokens",)
    recorded_knobs = ("prefix_tokens",)
    default_learning_rate = 1e-2
    summary = "trainable per-layer key/value prefixes + trainable head"
    mergeable = False

    def peft_config(self, cfg, pooling):
        from peft import PrefixTuningConfig, TaskType

        return PrefixTuningConfig(
            task_type=TaskType.SEQ_CLS,
            num_virtual_tokens=cfg.prefix_tokens,
            modules_to_save=head_module_names(cfg, pooling),
        )

    def adapt_base(self, model):
        return accept_prefix_cache(model)
