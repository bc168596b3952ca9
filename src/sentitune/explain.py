"""Why a prediction came out as it did: per-word attributions toward the predicted class.

Two methods, both from captum, both in the same unit: the log-probability of the predicted class, as
the Predictor reports it (temperature-scaled softmax, or the sigmoid of a multi-label run). Logs, not
probabilities: a confident model sits at p = 0.999, where removing a decisive word moves the
probability by a hair but its log by a visible amount.

* `ig` (integrated gradients, captum `LayerIntegratedGradients` on the word-embedding layer), for torch
  models (full, head, bitfit, LoRA merged at load, prefix and other PEFT wrappers alike). The baseline
  keeps [CLS] and [SEP] and replaces every other token by [PAD]; word pieces are summed into words.
  Completeness: the attributions sum to log p(x) - log p(baseline) up to `convergence_delta`. It
  explains what the Predictor reads: a truncated model's one window (`tokens_explained` of
  `tokens_total` word pieces). A chunked model (data.long_text chunk) reads every window
  (data.chunk_windows, `windows` of them) and reports the log-probability of their mean logits; that is
  what is attributed, through all windows at once, so `tokens_explained` == `tokens_total`. Its
  baseline is every window as [CLS] [PAD] ... [SEP]: the windows are all equally long, so it is one
  such window's prediction. A word read by two overlapping windows gets the contributions of both.
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
"""Windows per backward pass (interpolated inputs times a chunked text's windows): bounds memory for 512-token texts."""
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

    from sentitune.data import chunk_windows, truncate_ids

    tokenizer, model = predictor.tokenizer, predictor.model
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    pieces = encoded["input_ids"]
    # The windows the Predictor reads, as lists of piece indices so that every attribution still knows
    # its word and characters: one window cut by its truncation strategy, or a chunked model's windows.
    if getattr(predictor, "long_text", "truncate") == "chunk":
        windows = [list(w) for w in chunk_windows(len(pieces), predictor.max_length, predictor.chunk_stride)]
    else:
        windows = [truncate_ids(list(range(len(pieces))), predictor.max_length - 2, predictor.truncation)]
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    # All windows of a text have one length (the last is moved back to end at the text's end), so they
    # travel as one row: captum's batch dimension stays the text, and its interpolation steps scale
    # every window of the text together.
    width = len(windows[0]) + 2
    device = predictor.device
    input_ids = torch.tensor([[cls, *(pieces[i] for i in window), sep] for window in windows], device=device)
    baseline = torch.full_like(input_ids, pad)
    baseline[:, 0], baseline[:, -1] = cls, sep
    input_ids, baseline = input_ids.reshape(1, -1), baseline.reshape(1, -1)

    def forward(flat_ids):
        ids = flat_ids.reshape(-1, width)
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float()
        # The Predictor's prediction: the mean of the windows' logits (data.mean_per_document).
        return _log_probabilities(predictor, logits.reshape(flat_ids.shape[0], len(windows), -1).mean(dim=1))

    with torch.no_grad():
        log_probabilities = forward(input_ids)[0]
        probabilities = np.exp(log_probabilities.cpu().numpy().astype(np.float64))
        target = int(probabilities.argmax())
        baseline_log_probability = float(forward(baseline)[0, target])
    ig = LayerIntegratedGradients(forward, model.get_input_embeddings())
    # Gradients flow to the embeddings only; the weights need none. Each interpolated copy of the text
    # holds all of its windows, so IG_BATCH bounds windows, not copies, per backward pass.
    with torch.enable_grad():
        attributions = ig.attribute(
            input_ids,
            baselines=baseline,
            target=target,
            n_steps=steps,
            internal_batch_size=max(1, IG_BATCH // len(windows)),
        )
    per_position = attributions.sum(dim=-1).detach().double().cpu().numpy()[:, 1:-1]
    # captum's own convergence delta assumes one layer row per example; with several windows per
    # text it is computed here, from the same two forward passes.
    delta = float(per_position.sum()) - (float(log_probabilities[target]) - baseline_log_probability)
    # A piece read by two overlapping windows gets the contributions of both.
    per_piece: dict[int, float] = {}
    for window, values in zip(windows, per_position):
        for piece, value in zip(window, values):
            per_piece[piece] = per_piece.get(piece, 0.0) + float(value)
    word_ids = encoded.word_ids()
    offsets = encoded["offset_mapping"]
    groups: dict[int, list[int]] = {}
    for piece in sorted(per_piece):
        key = word_ids[piece] if word_ids[piece] is not None else -1 - piece
        groups.setdefault(key, []).append(piece)
    words = []
    for group in groups.values():
        start = min(offsets[p][0] for p in group)
        end = max(offsets[p][1] for p in group)
        words.append(
            {
                "word": text[start:end],
                "start": int(start),
                "end": int(end),
                "attribution": float(sum(per_piece[p] for p in group)),
            }
        )
    return _row(
        predictor,
        text,
        probabilities,
        "ig",
        words,
        baseline_log_probability=baseline_log_probability,
        convergence_delta=abs(delta),
        tokens_explained=len(per_piece),
        tokens_total=len(pieces),
        windows=len(windows),
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
