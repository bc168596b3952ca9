"""Frozen embeddings: the encoder stays as pretrained; each text's pooled embedding (`method.pooling`:
`auto` gives mean for minilm-l6) is computed once, and a scikit-learn logistic regression is fitted on
the embeddings with C chosen on the validation slice (`method.logreg_c_grid`), as practitioners read a
sentence encoder. No Trainer loop, no gradient step.

The fitted regression becomes the classifier layer of the run's transformers classifier (logits whose
softmax is the regression's probabilities: logreg.logit_weights), so the run predicts, exports to ONNX
and serves like any neural run. Its model/ holds that head (trained.safetensors) beside the whole model,
as `head`'s does; scikit-learn's object is never saved (no pickle). The embeddings of train and
validation are cached as safetensors in the run's embeddings/, keyed by the texts, model, pooling and
tokenisation, so a file that matches is read instead of recomputed.

Example:
    >>> cfg = load_config(preset="sst2-quick", overrides={"method.name": "embed"})  # doctest: +SKIP
    >>> train(cfg, "runs/sst2-embed")["logreg_selected_c"]  # doctest: +SKIP
    10.0
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from sentitune.errors import ConfigError
from sentitune.methods.base import FitContext, FrozenBaseMethod
from sentitune.methods.logreg import logit_weights, select_logistic_regression
from sentitune.methods.pooling import model_pooling, pooled_features, resolve_pooling, set_pooling
from sentitune.methods.registry import register
from sentitune.runtime import portable_path


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def embed_texts(model, token_ids: list[list[int]], batch_size: int, pad_id: int) -> np.ndarray:
    """Pooled embeddings (float32, one row per text, in input order) of `model`'s encoder: what its
    classifier reads (pooling.pooled_features). Texts run sorted by length, padded per batch."""
    import torch

    model.eval()
    where = next(model.parameters()).device
    order = np.argsort([len(ids) for ids in token_ids], kind="stable")
    out = np.zeros((len(token_ids), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            width = max(len(token_ids[i]) for i in chunk)
            input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, i in enumerate(chunk):
                input_ids[row, : len(token_ids[i])] = torch.tensor(token_ids[i])
                mask[row, : len(token_ids[i])] = 1
            out[chunk] = pooled_features(model, input_ids.to(where), mask.to(where)).float().cpu().numpy()
    return out


def _cache_key(texts: list[str], settings: dict) -> str:
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass") + b"\0")
    return digest.hexdigest()


def cached_embeddings(
    cache_dir: Path | None, name: str, texts: list[str], settings: dict, compute, write_bytes=None
) -> np.ndarray:
    """`compute()`'s embeddings of `texts`, read from `<cache_dir>/<name>.safetensors` when that file was
    written for the same texts and `settings` (model, pooling, tokenisation), else computed and written
    there through `write_bytes` (the run's atomic writer, so a killed run leaves no torn file)."""
    if cache_dir is None or write_bytes is None:
        return compute()
    from safetensors import safe_open
    from safetensors.numpy import save

    key = _cache_key(texts, settings)
    path = Path(cache_dir) / f"{name}.safetensors"
    if path.is_file():
        try:
            with safe_open(str(path), "np") as handle:
                if (handle.metadata() or {}).get("key") == key:
                    return handle.get_tensor("embeddings")
        except Exception:  # a damaged cache file is recomputed, never trusted
            pass
    embeddings = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"key": key, "examples": str(len(texts)), **{k: str(v) for k, v in settings.items()}}
    write_bytes(path, save({"embeddings": np.ascontiguousarray(embeddings)}, metadata=metadata))
    return embeddings


class EncoderClassifier:
    """A transformers classifier whose head was fitted by logistic regression on pooled embeddings,
    as the training loop's self-fitted path uses it: `predict_proba(texts)`, the chosen C, the counts.

    Texts embedded during the fit are remembered (by content), so scoring the validation slice again
    (temperature scaling) reuses their embeddings."""

    def __init__(self, model, context: FitContext, c: float, coef: np.ndarray, intercept: np.ndarray):
        self.model = model
        self.tokenizer = context.tokenizer
        self.tokenize = context.tokenize
        self.batch_size = context.run.train.eval_batch_size
        self.location = context.location
        self.max_length = context.run.data.resolved_max_length
        self.c = c
        self.coef = coef
        self.intercept = intercept
        self.train_samples: int | None = None
        self.extra_metrics: dict = {}
        self._known: dict[str, np.ndarray] = {}

    def remember(self, texts: list[str], embeddings: np.ndarray) -> None:
        self._known[_cache_key(texts, {})] = embeddings

    def embeddings(self, texts: list[str]) -> np.ndarray:
        known = self._known.get(_cache_key(texts, {}))
        if known is not None:
            return known
        return embed_texts(self.model, self.tokenize(texts), self.batch_size, self.tokenizer.pad_token_id or 0)

    def predict_proba(self, texts) -> np.ndarray:
        from sentitune.metrics import softmax

        weight = self.model.classifier.weight.detach().float().cpu().numpy().astype(np.float64)
        bias = self.model.classifier.bias.detach().float().cpu().numpy().astype(np.float64)
        return softmax(self.embeddings(list(texts)).astype(np.float64) @ weight.T + bias)

    @property
    def num_parameters(self) -> int:
        """Parameters the fit trained."""
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    @property
    def total_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def check_single_label(method: str, labels) -> None:
    if len(labels) and np.ndim(labels[0]):
        raise ConfigError(f"method.name: {method} supports data.problem_type single_label only")


def fit_head(model, context: FitContext, train, validation, train_x, validation_x, cfg, seed: int):
    """Picks C on validation (logreg.select_logistic_regression), writes the regression into `model`'s
    classifier and marks only the classifier as trained; returns (EncoderClassifier, history)."""
    import torch

    regression, c, history = select_logistic_regression(
        train_x, train.labels, validation_x, validation.labels, cfg.logreg_c_grid, seed
    )
    weight, bias = logit_weights(regression.coef_, regression.intercept_, model.config.num_labels)
    with torch.no_grad():
        model.classifier.weight.copy_(torch.from_numpy(weight))
        model.classifier.bias.copy_(torch.from_numpy(bias))
    for name, parameter in model.named_parameters():
        parameter.requires_grad = name.startswith("classifier.")
    fitted = EncoderClassifier(
        model, context, c, regression.coef_.astype(np.float32), regression.intercept_.astype(np.float32)
    )
    fitted.remember(train.texts, train_x)
    fitted.remember(validation.texts, validation_x)
    return fitted, history


def pooled_model(context: FitContext, cfg):
    """The base classifier with `method.pooling` resolved against the base model and installed."""
    model = context.load_base()
    set_pooling(model, resolve_pooling(cfg.pooling, context.location))
    return model.to(device())


def embedding_metrics(fitted: EncoderClassifier) -> dict:
    return {
        "pooling": model_pooling(fitted.model),
        "logreg_selected_c": fitted.c,
        "model_location": portable_path(fitted.location),
        "max_length": fitted.max_length,
        "params_total": fitted.total_parameters,
        # The encoder is held in memory too, not only the regression's coefficients.
        "memory_weights_mib": sum(p.numel() * p.element_size() for p in fitted.model.parameters()) / 2**20,
        **fitted.extra_metrics,
    }


@register
class Embed(FrozenBaseMethod):
    name = "embed"
    recorded_knobs = ("logreg_c_grid",)
    default_learning_rate = 0.0  # no gradient step
    summary = "frozen encoder; logistic regression on pooled embeddings (C chosen on validation)"
    uses_trainer = False
    supports_multi_label = False
    tunable_knobs = ()  # C is already chosen on validation; nothing else shapes the fit

    def mark_trainable(self, model, cfg):  # pragma: no cover - fits itself
        raise TypeError("embed fits its head on frozen embeddings; it does not train in the Trainer loop")

    def fit(self, train, validation, cfg, seed: int, context: FitContext):
        """Embeds train and validation once (cached), fits the regression per C, keeps the best on
        validation; returns (EncoderClassifier, one history row per C)."""
        check_single_label(self.name, train.labels)
        model = pooled_model(context, cfg)
        for parameter in model.parameters():
            parameter.requires_grad = False
        pad_id = context.tokenizer.pad_token_id or 0
        batch_size = context.run.train.eval_batch_size
        settings = {
            "model": context.location,
            "pooling": model_pooling(model),
            "max_length": context.run.data.resolved_max_length,
            "truncation": context.run.data.truncation,
        }

        def embed(split):
            return lambda: embed_texts(model, context.tokenize(split.texts), batch_size, pad_id)

        folder, write = context.cache_dir, context.write_bytes
        train_x = cached_embeddings(folder, "train", train.texts, settings, embed(train), write)
        validation_x = cached_embeddings(folder, "validation", validation.texts, settings, embed(validation), write)
        fitted, history = fit_head(model, context, train, validation, train_x, validation_x, cfg, seed)
        fitted.train_samples = len(train)  # one pass of the encoder; the fits per C run on its output
        return fitted, history

    def save(self, model: EncoderClassifier, folder: Path) -> None:
        super().save(model.model, folder)
        model.tokenizer.save_pretrained(folder)

    def run_metrics(self, model: EncoderClassifier) -> dict:
        return embedding_metrics(model)
