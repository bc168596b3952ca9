"""Why a prediction came out as it did: per-word attributions toward the predicted class.

Two methods, both from captum, both in the same unit: the log-probability of the predicted class, as
the Predictor reports it (temperature-scaled softmax, or the sigmoid of a multi-label run). Logs, not
probabilities: a confident model sits at p = 0.999, where removing a decisive word moves the
probability by a hair but its log by a visible amount.

* `ig` (integrated gradients, captum `LayerIntegratedGradients` on the word-embedding layer), for torch
  models (full, head, bitfit, LoRA merged at load, prefix and other PEFT wrappers alike). The baseline
  keeps [CLS] and [SEP] and replaces every other token by [PAD]; word pieces are summed into words.
  Completeness: the attributions sum to log p(x) - log p(baseline) up to `convergence_delta`. It
  explains the window the model reads (`tokens_explained` of `tokens_total`); for a chunked model
  (data.long_text chunk), the first window, and the prediction it reports is that window's.
* `occlusion` (captum `FeatureAblation` over words): each word is dropped from the text in turn and the
  drop in log-probability is its attribution. It needs only `predict_proba`, so it works for every backend
  (ONNX exports and TF-IDF runs, which have no gradients), and it sees the whole text, chunked or not.
  A long text is occluded in contiguous groups of words, at most `MAX_FEATURES` of them.

Example:
    >>> from sentitune.inference import Predictor
    >>> row = explain_texts(Predictor.load("runs/sst2-lora"), ["a gorgeous , witty film"])[0]  # doctest: +SKIP
    >>> max(row["words"], key=lambda w: w["attribution"])["word"]  # doctest: +SKIP
    'gorgeous'
"""

from __future__ import annotations

import re
from typing import Iterable

import numpy as np

from sentitune.errors import ConfigError, DataError
from sentitune.inference import check_texts


METHODS = ("ig", "occlusion")
"""What `--method` accepts."""
METHOD_NAMES = {"ig": "integrated_gradients", "occlusion": "occlusion"}
"""The name each explanation carries in its `method` field."""
IG_STEPS = 50
"""Integration steps: on the tiny test BERT and on MiniLM, 50 Gauss-Legendre steps keep the
completeness gap (`convergence_delta`) well below 1% of the probability."""
IG_BATCH = 25
"""Interpolated inputs per backward pass: bounds memory for 512-token texts."""
LOG_FLOOR = 1e-30
"""Probabilities below this count as this in the occlusion's logs (a float64 softmax can give 0)."""
MAX_FEATURES = 128
"""Occlusion runs one prediction per feature; longer texts are occluded in contiguous word groups."""

_WORD = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]", re.UNICODE)


def default_method(predictor) -> str:
    """`ig` for torch models, `occlusion` for everything without gradients (ONNX, TF-IDF)."""
    return "ig" if getattr(predictor, "backend", None) == "torch" else "occlusion"


def check_method(predictor, method: str | None) -> str:
    """The method to use for `predictor`; an unknown one, or `ig` without a torch model, is one line."""
    if method is None:
        return default_method(predictor)
    if method not in METHODS:
        raise ConfigError(f"--method: {method!r} is not one of {', '.join(METHODS)}")
    if method == "ig" and getattr(predictor, "backend", None) != "torch":
        backend = getattr(predictor, "backend", "this")
        raise ConfigError(
            f"--method ig needs gradients, which the {backend} backend does not give; use --method occlusion"
        )
    return method


def word_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) character spans of the words and punctuation marks of `text`.

    Example:
        >>> word_spans("not bad, really")
        [(0, 3), (4, 7), (7, 8), (9, 15)]
    """
    return [match.span() for match in _WORD.finditer(text)]


def explain_texts(predictor, texts: Iterable[str], method: str | None = None, steps: int = IG_STEPS) -> list[dict]:
    """One explanation per text: the prediction (label, score, probabilities) plus `method`, `target`
    (the label explained) and `words`, each with its character span and attribution.

    Raises:
        DataError: an empty or blank text (one line naming it).
        ConfigError: an unknown method, or `ig` for a model without gradients.
    """
    from sentitune.data import is_blank

    texts = list(texts)
    method = check_method(predictor, method)
    check_texts(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str) or is_blank(text):
            raise DataError(f"text {i + 1}: holds no visible characters; give the text to explain")
    explain_one = _integrated_gradients if method == "ig" else _occlusion
    return [explain_one(predictor, text, steps) for text in texts]


def _row(predictor, text: str, probabilities: np.ndarray, method: str, words: list[dict], **extra) -> dict:
    from sentitune.inference import prediction_row

    row = prediction_row(predictor.label_names, probabilities, text=text)
    row.update(method=METHOD_NAMES[method], target=row["label"], unit="log_probability", words=words, **extra)
    return row


def _log_probabilities(predictor, logits):
    """Logits -> log of the probabilities `Predictor.predict_proba` gives, in torch (differentiable)."""
    import torch

    if getattr(predictor, "thresholds", None) is not None:
        return torch.nn.functional.logsigmoid(logits)
    return torch.log_softmax(logits / float(getattr(predictor, "temperature", 1.0)), dim=-1)


def _integrated_gradients(predictor, text: str, steps: int) -> dict:
    import torch
    from captum.attr import LayerIntegratedGradients

    from sentitune.data import truncate_ids

    tokenizer, model = predictor.tokenizer, predictor.model
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    pieces = encoded["input_ids"]
    # The window the Predictor reads (its max_length and truncation strategy), as index lists so that
    # every kept piece still knows its word and characters.
    # A chunked model (data.long_text chunk) reads every window; gradients go through one, its first.
    strategy = "head" if getattr(predictor, "long_text", "truncate") == "chunk" else predictor.truncation
    kept = truncate_ids(list(range(len(pieces))), predictor.max_length - 2, strategy)
    ids = [tokenizer.cls_token_id, *(pieces[i] for i in kept), tokenizer.sep_token_id]
    device = predictor.device
    input_ids = torch.tensor([ids], device=device)
    mask = torch.ones_like(input_ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    baseline = torch.full_like(input_ids, pad)
    baseline[0, 0], baseline[0, -1] = ids[0], ids[-1]

    def forward(input_ids, attention_mask):
        logits = model(input_ids=input_ids, attention_mask=attention_mask.expand(input_ids.shape[0], -1)).logits
        return _log_probabilities(predictor, logits.float())

    with torch.no_grad():
        probabilities = np.exp(forward(input_ids, mask)[0].cpu().numpy().astype(np.float64))
        target = int(probabilities.argmax())
        baseline_log_probability = float(forward(baseline, mask)[0, target])
    ig = LayerIntegratedGradients(forward, model.get_input_embeddings())
    # Gradients flow to the embeddings only; the weights need none.
    with torch.enable_grad():
        attributions, delta = ig.attribute(
            input_ids,
            baselines=baseline,
            target=target,
            additional_forward_args=(mask,),
            n_steps=steps,
            internal_batch_size=IG_BATCH,
            return_convergence_delta=True,
        )
    per_piece = attributions.sum(dim=-1)[0].detach().float().cpu().numpy()[1:-1]
    word_ids = encoded.word_ids()
    offsets = encoded["offset_mapping"]
    groups: dict[int, list[int]] = {}
    for position, piece in enumerate(kept):
        key = word_ids[piece] if word_ids[piece] is not None else -1 - piece
        groups.setdefault(key, []).append(position)
    words = []
    for positions in groups.values():
        start = min(offsets[kept[p]][0] for p in positions)
        end = max(offsets[kept[p]][1] for p in positions)
        words.append(
            {
                "word": text[start:end],
                "start": int(start),
                "end": int(end),
                "attribution": float(per_piece[positions].sum()),
            }
        )
    return _row(
        predictor,
        text,
        probabilities,
        "ig",
        words,
        baseline_log_probability=baseline_log_probability,
        convergence_delta=float(delta.abs().max()),
        tokens_explained=len(kept),
        tokens_total=len(pieces),
        steps=steps,
    )


def _occlusion(predictor, text: str, steps: int) -> dict:
    import torch
    from captum.attr import FeatureAblation

    spans = word_spans(text)
    # Contiguous groups of words, at most MAX_FEATURES: one prediction each.
    size = max(1, -(-len(spans) // MAX_FEATURES))
    features = [(spans[i][0], spans[min(i + size, len(spans)) - 1][1]) for i in range(0, len(spans), size)]

    def without(keep: np.ndarray) -> str:
        parts, cursor = [], 0
        for (start, end), present in zip(features, keep):
            if not present:  # the spaces around it stay: tokenizers and TF-IDF ignore them
                parts.append(text[cursor:start])
                cursor = end
        parts.append(text[cursor:])
        return "".join(parts)

    def forward(presence):
        rows = [without(row > 0.5) for row in presence.cpu().numpy()]
        return torch.log(torch.as_tensor(predictor.predict_proba(rows), dtype=torch.float64).clamp_min(LOG_FLOOR))

    probabilities = np.asarray(predictor.predict_proba([text])[0], dtype=np.float64)
    target = int(probabilities.argmax())
    words: list[dict] = []
    if features:
        presence = torch.ones(1, len(features), dtype=torch.float64)
        attributions = FeatureAblation(forward).attribute(
            presence,
            baselines=0.0,
            target=target,
            feature_mask=torch.arange(len(features)).unsqueeze(0),
            perturbations_per_eval=min(len(features), 64),
        )[0]
        words = [
            {"word": text[start:end], "start": start, "end": end, "attribution": float(value)}
            for (start, end), value in zip(features, attributions.tolist())
        ]
    return _row(predictor, text, probabilities, "occlusion", words, words_per_feature=size)
