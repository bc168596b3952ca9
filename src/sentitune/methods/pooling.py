"""How a classifier turns the encoder's token states into one vector per text (`method.pooling`).

* `cls`: the [CLS] state through BERT's pooler (dense + tanh), as BertForSequenceClassification does.
  Plain BERT was pretrained this way (next-sentence prediction reads the pooled [CLS]).
* `mean`: the attention-mask-weighted mean of the last hidden states, then the classifier. This is how
  sentence-transformers models (the bundled minilm-l6 among them) were trained: their [CLS] state was
  never asked to summarise the sentence, so a frozen encoder read through it scores far below the same
  encoder read through its mean. BERT's pooler is left out: it is a dense + tanh layer trained on
  [CLS] for next-sentence prediction (or not trained at all in a sentence-transformers checkpoint),
  and the mean already is the embedding the backbone was trained to produce. The pooler's weights stay
  in the model, frozen and unused, so the saved weights keep BERT's layout and every loader reads them.
* `auto`: what the backbone declares. A sentence-transformers folder names its pooling in the config
  of its Pooling module (`1_Pooling/config.json`, located through `modules.json`); a model without one
  (plain BERT) gets `cls`.

The choice is saved with the weights, in config.json under `classifier_pooling` (ModernBERT's name
for the same setting), and every sentitune loader installs it again (`apply_saved_pooling`). Plain
transformers reads that key only for ModernBERT: a mean-pooled BERT folder loaded without sentitune
would be read through [CLS] (`needs_sentitune`).

Example:
    >>> resolve_pooling("auto", "/no/such/folder")
    'cls'
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sentitune.errors import ConfigError


POOLINGS = ("cls", "mean")
"""What a model can use."""
POOLING_CHOICES = ("auto", *POOLINGS)
"""What `method.pooling` accepts."""
CONFIG_KEY = "classifier_pooling"
"""Where config.json keeps the pooling (ModernBERT's key, with the same values)."""
ADAPTER_POOLING_FILE = "pooling.json"
"""Where an adapter folder (no config.json: peft loads the base model) keeps the same key."""

_ST_MODES = {"cls": "cls", "mean": "mean", "cls_token": "cls", "mean_tokens": "mean"}
"""sentence-transformers pooling modes (v3+ strings, and v2 `pooling_mode_<mode>` flags) -> ours."""


def _read_json(path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _pooling_config_path(location: str) -> Path | None:
    """The Pooling module's config.json of a sentence-transformers model at `location` (a folder, or a
    hub id whose files are in the local HF cache), or None."""
    folder = Path(location).expanduser()

    def find(name: str) -> str | None:
        if folder.is_dir():
            path = folder / name
            return str(path) if path.is_file() else None
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(location, name)
        except Exception:  # not a valid repo id: no cache entry
            return None
        return cached if isinstance(cached, str) else None

    modules = _read_json(find("modules.json")) if find("modules.json") else None
    candidates = []
    if isinstance(modules, list):
        candidates = [
            str(m.get("path", "")).strip("/")
            for m in modules
            if isinstance(m, dict) and str(m.get("type", "")).endswith("Pooling")
        ]
    for module in [*candidates, "1_Pooling"]:
        path = find(f"{module}/config.json") if module else None
        if path:
            return Path(path)
    return None


def declared_pooling(location: str) -> tuple[str | None, str | None]:
    """(pooling, source) declared by the sentence-transformers Pooling module at `location`.

    Returns (None, None) when `location` declares nothing; (mode, path) with the declared mode as
    sentence-transformers names it when the folder declares a mode other than cls or mean.
    """
    path = _pooling_config_path(location)
    config = _read_json(path) if path else None
    if not isinstance(config, dict):
        return None, None
    mode = config.get("pooling_mode")
    if isinstance(mode, list) and len(mode) == 1:
        mode = mode[0]
    if mode is None:  # sentence-transformers 2.x: one boolean flag per mode
        flags = [
            key.removeprefix("pooling_mode_") for key, on in config.items() if key.startswith("pooling_mode_") and on
        ]
        mode = flags[0] if len(flags) == 1 else ("+".join(flags) or None)
    if mode is None:
        return None, None
    return _ST_MODES.get(str(mode), str(mode)), str(path)


def resolve_pooling(choice: str, location: str | None) -> str:
    """`cls` or `mean` for `method.pooling` = `choice` on the backbone at `location`.

    Raises:
        ConfigError: `auto` on a backbone that declares a pooling sentitune does not implement (max,
            weighted mean, ...), naming the file.
    """
    if choice in POOLINGS:
        return choice
    if choice != "auto":
        raise ConfigError(f"method.pooling: {choice!r} is not one of {', '.join(POOLING_CHOICES)}")
    declared, source = declared_pooling(location) if location else (None, None)
    if declared is None:
        return "cls"
    if declared not in POOLINGS:
        raise ConfigError(
            f"method.pooling: auto found pooling {declared!r} in {source}; sentitune implements cls and mean, "
            "so set method.pooling to one of them"
        )
    return declared


def _mean_pooling_class():
    from sentitune.methods.pooled_bert import MeanPoolingBertForSequenceClassification

    return MeanPoolingBertForSequenceClassification


def unwrap(model):
    """The transformers classifier inside a peft wrapper (or `model` itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def model_pooling(model) -> str:
    """The pooling `model` (or the classifier inside its peft wrapper) uses."""
    return getattr(unwrap(model).config, CONFIG_KEY, None) or "cls"


def set_pooling(model, pooling: str):
    """Makes `model` pool with `pooling` (`cls` or `mean`) and records it in its config; returns it.

    Mean pooling changes only how the forward pass reads the encoder, not the parameters, so the class
    of the same object is switched to the mean-pooling subclass of BertForSequenceClassification.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    from transformers import BertForSequenceClassification

    mean_class = _mean_pooling_class()
    target = unwrap(model)
    if pooling == "mean":
        if type(target) not in (BertForSequenceClassification, mean_class):
            raise ConfigError(
                f"method.pooling: mean pooling is implemented for BERT classifiers (BertForSequenceClassification), "
                f"not {type(target).__name__}; set method.pooling to cls"
            )
        target.__class__ = mean_class
    elif type(target) is mean_class:
        target.__class__ = BertForSequenceClassification
    setattr(target.config, CONFIG_KEY, pooling)
    return model


def saved_pooling(folder: str | Path) -> str:
    """The pooling recorded in `folder`'s config.json (or, in an adapter folder, pooling.json); `cls`
    when neither records one (runs from before pooling was a choice, plain Hugging Face folders)."""
    for name in ("config.json", ADAPTER_POOLING_FILE):
        config = _read_json(Path(folder) / name)
        pooling = config.get(CONFIG_KEY) if isinstance(config, dict) else None
        if pooling is None:
            continue
        if pooling not in POOLINGS:
            raise ValueError(f"{Path(folder) / name}: {CONFIG_KEY} {pooling!r} is not one of {', '.join(POOLINGS)}")
        return pooling
    return "cls"


def apply_saved_pooling(model):
    """Installs the pooling that `model`'s own config records (a model loaded with from_pretrained)."""
    pooling = getattr(unwrap(model).config, CONFIG_KEY, None)
    if pooling is None:
        return model
    if pooling not in POOLINGS:
        raise ValueError(f"config.json: {CONFIG_KEY} {pooling!r} is not one of {', '.join(POOLINGS)}")
    return set_pooling(model, pooling)


def needs_sentitune(folder: str | Path) -> bool:
    """Whether a saved classifier folder computes its logits correctly only when sentitune loads it:
    plain transformers ignores `classifier_pooling` for BERT and would read mean-pooled weights
    through [CLS]."""
    return saved_pooling(folder) != "cls"


def pooled_features(model, input_ids, attention_mask):
    """What the classifier of a BERT `model` reads, before dropout: the pooled [CLS] (`cls`) or the
    masked mean of the last hidden states (`mean`). embed and setfit fit their head on these."""
    outputs = unwrap(model).bert(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
    if model_pooling(model) == "mean":
        from sentitune.methods.pooled_bert import mean_pool

        return mean_pool(outputs.last_hidden_state, attention_mask)
    return outputs.pooler_output
