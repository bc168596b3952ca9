"""Error analysis over a run's test predictions: per-class errors, highest-loss and ambiguous examples,
likely label errors, slices with Wilson intervals, calibration, paired two-run comparison, and a
minimal-pair negation probe.

The functions above the "I/O edges" line are pure (arrays and strings in, dicts out); `write_analysis`
and `analyze_run` at the bottom read run folders (results.load_predictions), call them, and write:

    <out>/analysis.json    everything below, JSON
    <out>/errors.csv       top-k highest-loss, ambiguous and likely-mislabelled examples (`reason` column)
    <out>/slices.csv       slice, count, accuracy, 95% Wilson interval
    <out>/confusion.png    confusion matrix
    <out>/reliability.png  reliability diagram
    <out>/comparison.json  with --against: per-slice paired comparison with McNemar tests

Example:
    >>> import numpy as np
    >>> texts = ["a fine film", "it is n't good", "dull but honest"]
    >>> rows = slice_table(texts, np.array([True, False, True]))
    >>> [(r["slice"], r["count"]) for r in rows][:3]
    [('all', 3), ('negation', 1), ('no negation', 2)]
"""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from sentitune import results
from sentitune.config import ConfigError
from sentitune.metrics import (
    classification_metrics,
    confusion_matrix,
    discordant_pairs,
    expected_calibration_error,
    paired_seed_test,
    wilson_interval,
)
from sentitune.results import Predictions, RunFolderError, load_predictions  # noqa: F401 - re-exported


ANALYSIS_DIR = "analysis"
ANALYSIS_FILE = "analysis.json"
ERRORS_FILE = "errors.csv"
SLICES_FILE = "slices.csv"
CONFUSION_FILE = "confusion.png"
RELIABILITY_FILE = "reliability.png"
COMPARISON_FILE = "comparison.json"
EXPLANATIONS_FILE = "explanations.json"
ANALYSIS_FILES = (
    ANALYSIS_FILE,
    ERRORS_FILE,
    SLICES_FILE,
    CONFUSION_FILE,
    RELIABILITY_FILE,
    COMPARISON_FILE,
    EXPLANATIONS_FILE,
)
"""What analyze writes into its folder."""
EVALUATION_FILES = (results.METRICS_FILE, results.PREDICTIONS_FILE, *ANALYSIS_FILES)
"""What evaluate writes into its folder."""

# SST-2 is tokenised PTB-style ("is n't", "ca n't", "does n't"), user files are not ("isn't", "dont"):
# `n't` with or without the space before it covers both, and the apostrophe-less forms catch typed reviews.
# "cant"/"wont" are left out on purpose: they are also English words without negation.
NEGATION_PATTERN = (
    r"\b(?:not|no|never|nothing|nobody|none|neither|nor|without|hardly|barely|scarcely|nowhere|cannot)\b"
    r"|n['’]t\b"
    r"|\b(?:dont|doesnt|didnt|isnt|wasnt|arent|werent|couldnt|wouldnt|shouldnt|hasnt|havent|aint)\b"
)
CONTRAST_PATTERN = r"\b(?:but|although|though|however|yet|while|whereas|despite|nevertheless|nonetheless)\b"
LENGTH_BUCKETS: tuple[tuple[str, int, float], ...] = (
    ("length <=10", 0, 10),
    ("length 11-20", 11, 20),
    ("length 21-30", 21, 30),
    ("length >30", 31, math.inf),
)
"""(slice name, min words, max words), counted as whitespace-separated tokens (SST punctuation counts)."""

AMBIGUOUS_MARGIN = 0.1
"""Top-1 minus top-2 probability below which a prediction is called ambiguous (binary: p in (0.45, 0.55))."""


# ---- slices -----------------------------------------------------------------------------------


def word_count(text: str) -> int:
    """Whitespace tokens, so SST's `is n't` counts as two words, as in the treebank."""
    return len(text.split())


def parse_slices(specs: Sequence[str]) -> dict[str, str]:
    """`["NAME=REGEX", ...]` -> {name: regex}; the regex must compile (matched case-insensitively).

    Example:
        >>> parse_slices(["superlatives=best|worst|greatest"])
        {'superlatives': 'best|worst|greatest'}
    """
    builtin = {"all", "negation", "no negation", "contrast", *(name for name, _, _ in LENGTH_BUCKETS)}
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, pattern = spec.partition("=")
        name = name.strip()
        if not sep or not name or not pattern:
            raise ConfigError(f"--slice {spec!r}: expected NAME=REGEX, e.g. --slice 'sarcasm=yeah right'")
        if name in builtin or name in out:
            raise ConfigError(f"--slice {spec!r}: the name {name!r} is already used; pick another")
        try:
            re.compile(pattern, re.IGNORECASE)
        except re.error as exc:
            raise ConfigError(f"--slice {spec!r}: invalid regular expression ({exc})") from None
        out[name] = pattern
    return out


def slice_masks(texts: Sequence[str], custom: dict[str, str] | None = None) -> dict[str, dict]:
    """Boolean membership masks for the built-in and user slices, in display order.

    Returns {name: {"kind": ..., "rule": ..., "mask": bool array}}.

    Example:
        >>> masks = slice_masks(["it does n't work", "fine"])
        >>> masks["negation"]["mask"].tolist()
        [True, False]
    """
    texts = list(texts)

    def matching(pattern: str) -> np.ndarray:
        compiled = re.compile(pattern, re.IGNORECASE)
        return np.array([bool(compiled.search(t)) for t in texts], dtype=bool)

    negation = matching(NEGATION_PATTERN)
    words = np.array([word_count(t) for t in texts])
    out = {
        "all": {"kind": "all", "rule": "every example", "mask": np.ones(len(texts), dtype=bool)},
        "negation": {"kind": "negation", "rule": NEGATION_PATTERN, "mask": negation},
        "no negation": {"kind": "negation", "rule": "not matching the negation rule", "mask": ~negation},
        "contrast": {"kind": "contrast", "rule": CONTRAST_PATTERN, "mask": matching(CONTRAST_PATTERN)},
    }
    for name, low, high in LENGTH_BUCKETS:
        out[name] = {"kind": "length", "rule": f"{low} <= words <= {high}", "mask": (words >= low) & (words <= high)}
    for name, pattern in (custom or {}).items():
        out[name] = {"kind": "custom", "rule": pattern, "mask": matching(pattern)}
    return out


def slice_table(
    texts: Sequence[str], correct: np.ndarray, custom: dict[str, str] | None = None, confidence: float = 0.95
) -> list[dict]:
    """Count, accuracy and Wilson interval per slice; `correct` may be 0/1 or fractional (seed-averaged).

    Example:
        >>> slice_table(["not bad", "good"], np.array([1, 0]))[1]["accuracy"]
        1.0
    """
    correct = np.asarray(correct, dtype=np.float64)
    rows = []
    for name, entry in slice_masks(texts, custom).items():
        mask = entry["mask"]
        count = int(mask.sum())
        hits = float(correct[mask].sum())
        low, high = wilson_interval(int(round(hits)), count, confidence)
        rows.append(
            {
                "slice": name,
                "kind": entry["kind"],
                "count": count,
                "correct": int(round(hits)) if float(hits).is_integer() else round(hits, 4),
                "accuracy": hits / count if count else math.nan,
                "ci95_low": low,
                "ci95_high": high,
                "rule": entry["rule"],
            }
        )
    return rows


# ---- per-example views ------------------------------------------------------------------------


def per_class_metrics(gold: np.ndarray, predicted: np.ndarray, label_names: Sequence[str]) -> list[dict]:
    """Precision, recall, F1 and support for every class (zero when a class is never predicted).

    Example:
        >>> per_class_metrics(np.array([0, 1, 1]), np.array([0, 1, 0]), ["neg", "pos"])[1]["recall"]
        0.5
    """
    from sklearn.metrics import precision_recall_fscore_support

    precision, recall, f1, support = precision_recall_fscore_support(
        gold, predicted, labels=list(range(len(label_names))), zero_division=0
    )
    return [
        {"label": name, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for name, p, r, f, s in zip(label_names, precision, recall, f1, support)
    ]


def example_losses(gold: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Per-example negative log-likelihood of the gold label."""
    picked = probabilities[np.arange(len(gold)), gold]
    return -np.log(np.clip(picked, 1e-12, 1.0))


def top2_margin(probabilities: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 probability: 0 = a coin flip between two classes."""
    if probabilities.shape[1] < 2:
        return np.ones(len(probabilities))
    ordered = np.sort(probabilities, axis=1)
    return ordered[:, -1] - ordered[:, -2]


def highest_loss(gold: np.ndarray, probabilities: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k examples with the highest loss: the most confident mistakes first.

    Example:
        >>> highest_loss(np.array([0, 1]), np.array([[0.9, 0.1], [0.8, 0.2]]), 1).tolist()
        [1]
    """
    losses = example_losses(gold, probabilities)
    return np.argsort(-losses, kind="stable")[:k]


def ambiguous(probabilities: np.ndarray, k: int, max_margin: float = AMBIGUOUS_MARGIN) -> np.ndarray:
    """Indices of up to k examples whose top-2 margin is below `max_margin`, smallest margin first.

    Example:
        >>> ambiguous(np.array([[0.52, 0.48], [0.9, 0.1]]), 5).tolist()
        [0]
    """
    margin = top2_margin(probabilities)
    order = np.argsort(margin, kind="stable")
    return order[margin[order] < max_margin][:k]


def errors_by_class(gold: np.ndarray, probabilities: np.ndarray, label_names: Sequence[str], limit: int) -> list[dict]:
    """False positives and false negatives of every class (one-vs-rest), most confident first.

    With two classes the false positives of one are the false negatives of the other, so only the
    second class (conventionally `positive`) is listed. Each list holds up to `limit` indices.

    Example:
        >>> out = errors_by_class(np.array([0, 1]), np.array([[0.3, 0.7], [0.6, 0.4]]), ["neg", "pos"], 5)
        >>> out[0]["false_positives"], out[0]["false_negatives"]
        ([0], [1])
    """
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    classes = [1] if len(label_names) == 2 else range(len(label_names))
    out = []
    for c in classes:
        fp = np.flatnonzero((predicted == c) & (gold != c))
        fn = np.flatnonzero((gold == c) & (predicted != c))
        out.append(
            {
                "label": label_names[c],
                "false_positive_count": int(fp.size),
                "false_negative_count": int(fn.size),
                "false_positives": fp[np.argsort(-confidence[fp], kind="stable")][:limit].tolist(),
                "false_negatives": fn[np.argsort(-confidence[fn], kind="stable")][:limit].tolist(),
            }
        )
    return out


def confident_learning_rule(gold: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Likely label errors by the confident-learning threshold rule (Northcutt et al., 2021).

    The threshold of class j is the mean probability of j over examples labelled j (its mean
    self-confidence). An example is flagged when the probability of its given label is below that
    label's threshold while some other class reaches its own threshold. Needs out-of-sample
    probabilities, which test-split predictions are. Returns (indices ranked by self-confidence,
    lowest first; per-class thresholds, NaN for a class with no examples).

    Example:
        >>> gold = np.array([0, 0, 1, 1])
        >>> probs = np.array([[0.9, 0.1], [0.1, 0.9], [0.1, 0.9], [0.2, 0.8]])
        >>> confident_learning_rule(gold, probs)[0].tolist()
        [1]
    """
    k = probabilities.shape[1]
    thresholds = np.array([probabilities[gold == j, j].mean() if (gold == j).any() else np.nan for j in range(k)])
    self_confidence = probabilities[np.arange(len(gold)), gold]
    below_own = self_confidence < thresholds[gold]
    other_above = np.zeros(len(gold), dtype=bool)
    for j in range(k):
        if not np.isnan(thresholds[j]):
            other_above |= (probabilities[:, j] >= thresholds[j]) & (gold != j)
    flagged = np.flatnonzero(below_own & other_above)
    return flagged[np.argsort(self_confidence[flagged], kind="stable")], thresholds


def likely_label_errors(gold: np.ndarray, probabilities: np.ndarray, method: str = "auto") -> dict:
    """Likely label errors with cleanlab when installed (`auto`/`cleanlab`), else the documented rule.

    Returns {"method": ..., "indices": ranked list, "note": ...}; "thresholds" is set by the rule.

    Example:
        >>> out = likely_label_errors(np.array([0, 0, 1, 1]),
        ...                           np.array([[0.9, 0.1], [0.1, 0.9], [0.1, 0.9], [0.2, 0.8]]), method="rule")
        >>> out["method"], out["indices"]
        ('confident-learning rule', [1])
    """
    gold = np.asarray(gold)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    probabilities = probabilities / probabilities.sum(axis=1, keepdims=True)  # CSV rounding breaks sum == 1
    note = ""
    if method in ("auto", "cleanlab"):
        try:
            from cleanlab.filter import find_label_issues
        except ImportError:
            if method == "cleanlab":
                raise
            note = "cleanlab is not installed; used the confident-learning rule"
        else:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    # n_jobs=1: its multiprocessing buys nothing at test-set sizes and fights other jobs for cores.
                    ranked = find_label_issues(
                        gold, probabilities, return_indices_ranked_by="self_confidence", n_jobs=1
                    )
                from importlib.metadata import version

                return {
                    "method": f"cleanlab {version('cleanlab')} find_label_issues (prune_by_noise_rate)",
                    "indices": [int(i) for i in ranked],
                    "note": "",
                }
            except (ValueError, AssertionError, IndexError) as exc:
                if method == "cleanlab":
                    raise
                note = f"cleanlab failed ({type(exc).__name__}: {exc}); used the confident-learning rule"
    indices, thresholds = confident_learning_rule(gold, probabilities)
    return {
        "method": "confident-learning rule",
        "indices": indices.tolist(),
        "note": note,
        "thresholds": [None if np.isnan(t) else float(t) for t in thresholds],
    }


# ---- one-run analysis -------------------------------------------------------------------------


def example_row(p: Predictions, i: int) -> dict:
    """One example as a flat dict: text, gold, pred, their probabilities, loss and margin."""
    probs = p.probabilities[i]
    gold, pred = int(p.gold[i]), int(probs.argmax())
    row = {
        "id": p.ids[i],
        "text": p.texts[i],
        "gold": p.label_names[gold],
        "pred": p.label_names[pred],
        "prob_gold": round(float(probs[gold]), 6),
        "prob_pred": round(float(probs[pred]), 6),
        "loss": round(float(-math.log(max(probs[gold], 1e-12))), 6),
        "margin": round(float(top2_margin(probs[None, :])[0]), 6),
    }
    row.update({f"prob_{name}": round(float(v), 6) for name, v in zip(p.label_names, probs)})
    return row


def analyze_predictions(
    p: Predictions,
    top_k: int = 20,
    custom_slices: dict[str, str] | None = None,
    calibration_bins: int = 10,
    label_error_method: str = "auto",
) -> dict:
    """The whole single-run analysis as one JSON-ready dict (see the module docstring).

    Example:
        >>> p = Predictions(["good", "not good"], [1, 0], [[0.2, 0.8], [0.3, 0.7]], ["negative", "positive"])
        >>> analyze_predictions(p)["overall"]["accuracy"]
        0.5
    """
    gold, probs, names = p.gold, p.probabilities, p.label_names
    predicted = p.predicted
    calibration = expected_calibration_error(gold, probs, bins=calibration_bins)
    margin = top2_margin(probs)
    ambiguous_mask = margin < AMBIGUOUS_MARGIN
    label_errors = likely_label_errors(gold, probs, label_error_method)
    by_class = errors_by_class(gold, probs, names, top_k)
    for entry in by_class:
        for key in ("false_positives", "false_negatives"):
            entry[key] = [example_row(p, i) for i in entry[key]]
    return {
        "source": str(p.source),
        "examples": len(gold),
        "label_names": list(names),
        "overall": {**classification_metrics(gold, probs), "ece": calibration["ece"]},
        "confusion_matrix": {
            "rows_gold_columns_predicted": confusion_matrix(gold, predicted, len(names)).tolist(),
            "labels": list(names),
        },
        "per_class": per_class_metrics(gold, predicted, names),
        "errors_by_class": by_class,
        "highest_loss": [example_row(p, i) for i in highest_loss(gold, probs, top_k)],
        "ambiguous": {
            "max_margin": AMBIGUOUS_MARGIN,
            "count": int(ambiguous_mask.sum()),
            "accuracy": float(p.correct[ambiguous_mask].mean()) if ambiguous_mask.any() else math.nan,
            "examples": [example_row(p, i) for i in ambiguous(probs, top_k)],
        },
        "likely_label_errors": {
            "method": label_errors["method"],
            "note": label_errors["note"],
            "count": len(label_errors["indices"]),
            **({"thresholds": dict(zip(names, label_errors["thresholds"]))} if "thresholds" in label_errors else {}),
            "examples": [example_row(p, i) for i in label_errors["indices"][:top_k]],
        },
        "slices": slice_table(p.texts, p.correct, custom_slices),
        "calibration": {"bins": calibration_bins, **calibration},
    }


def error_rows(analysis: dict) -> list[dict]:
    """The rows of errors.csv: each top-k list of the analysis, tagged with a `reason` and rank."""
    sections = [
        ("highest_loss", analysis["highest_loss"]),
        ("ambiguous", analysis["ambiguous"]["examples"]),
        ("likely_label_error", analysis["likely_label_errors"]["examples"]),
    ]
    return [
        {"reason": reason, "rank": rank, **row} for reason, rows in sections for rank, row in enumerate(rows, start=1)
    ]


# ---- two-run comparison -----------------------------------------------------------------------


def check_same_examples(a: Predictions, b: Predictions) -> None:
    """Raises RunFolderError naming the first row where the two test sets differ."""
    if list(a.label_names) != list(b.label_names):
        raise RunFolderError(
            f"{a.source} and {b.source}: different label sets "
            f"({a.label_names} vs {b.label_names}); a paired comparison needs the same labels"
        )
    for i in range(max(len(a.texts), len(b.texts))):
        text_a = a.texts[i] if i < len(a.texts) else None
        text_b = b.texts[i] if i < len(b.texts) else None
        if text_a != text_b or (text_a is not None and a.gold[i] != b.gold[i]):
            what = "texts" if text_a != text_b else "gold labels"
            raise RunFolderError(
                f"{a.source} and {b.source}: test {what} differ at row {i + 1} of predictions.csv "
                f"({text_a!r} vs {text_b!r}; {len(a.texts)} vs {len(b.texts)} rows); a paired comparison "
                "needs the same test examples in the same order"
            )


def compare_predictions(
    a: Predictions, b: Predictions, custom_slices: dict[str, str] | None = None, top_k: int = 20, alpha: float = 0.05
) -> dict:
    """Per-slice paired comparison of two runs on the same test set, with exact McNemar tests.

    Example:
        >>> names = ["negative", "positive"]
        >>> a = Predictions(["good", "bad"], [1, 0], [[0.1, 0.9], [0.8, 0.2]], names)
        >>> b = Predictions(["good", "bad"], [1, 0], [[0.6, 0.4], [0.8, 0.2]], names)
        >>> compare_predictions(a, b)["slices"][0]["a_only_correct"]
        1
    """
    check_same_examples(a, b)
    correct_a, correct_b = a.correct, b.correct
    rows = []
    for name, entry in slice_masks(a.texts, custom_slices).items():
        mask = entry["mask"]
        # one seed each: paired_seed_test is exact McNemar; no bootstrap CI per slice (resamples=0)
        test = paired_seed_test(correct_a[mask], correct_b[mask], resamples=0)
        rows.append(
            {
                "slice": name,
                "count": int(mask.sum()),
                "a_accuracy": test["a_accuracy"],
                "b_accuracy": test["b_accuracy"],
                "difference_points": 100 * test["difference"],
                "a_only_correct": test["b"],
                "b_only_correct": test["c"],
                "p_value": test["p_value"],
                "significant": bool(test["p_value"] < alpha),
            }
        )
    a_only, b_only = discordant_pairs(correct_a, correct_b)
    # Most telling disagreements first: where the losing run was most confident in its wrong answer.
    a_only = a_only[np.argsort(-example_losses(b.gold[a_only], b.probabilities[a_only]), kind="stable")]
    b_only = b_only[np.argsort(-example_losses(a.gold[b_only], a.probabilities[b_only]), kind="stable")]

    def pair_row(i: int) -> dict:
        return {
            "id": a.ids[i],
            "text": a.texts[i],
            "gold": a.label_names[a.gold[i]],
            "a_pred": a.label_names[a.predicted[i]],
            "b_pred": b.label_names[b.predicted[i]],
            "a_prob_gold": round(float(a.probabilities[i, a.gold[i]]), 6),
            "b_prob_gold": round(float(b.probabilities[i, b.gold[i]]), 6),
        }

    return {
        "a": str(a.source),
        "b": str(b.source),
        "examples": len(a.texts),
        "alpha": alpha,
        "test": "exact McNemar (two-sided binomial on discordant pairs)",
        "slices": rows,
        "a_right_b_wrong": [pair_row(i) for i in a_only[:top_k]],
        "b_right_a_wrong": [pair_row(i) for i in b_only[:top_k]],
    }


# ---- minimal-pair negation probe --------------------------------------------------------------

# Written for this project. Each pair is (sentence, its negation, label of the sentence); the negation
# has the other label. SST-style tokenisation (`is n't`, `it 's`) mixes with plain forms on purpose.
# Negated negatives ("not bad") are milder than negated positives, so results are split by direction.
NEGATION_PAIRS: tuple[tuple[str, str, str], ...] = (
    ("the movie was good", "the movie was not good", "positive"),
    ("the acting is brilliant", "the acting is n't brilliant", "positive"),
    ("this film is worth watching", "this film is not worth watching", "positive"),
    ("the story works", "the story does n't work", "positive"),
    ("i loved this movie", "i did n't love this movie", "positive"),
    ("the jokes are funny", "the jokes are n't funny", "positive"),
    ("the plot holds together", "the plot never holds together", "positive"),
    ("you can enjoy this film", "you ca n't enjoy this film", "positive"),
    ("the director knows what he is doing", "the director does n't know what he is doing", "positive"),
    ("the ending is satisfying", "the ending is n't satisfying", "positive"),
    ("the characters are believable", "the characters are not believable", "positive"),
    ("the dialogue is sharp", "the dialogue is never sharp", "positive"),
    ("i would recommend it", "i would n't recommend it", "positive"),
    ("the film succeeds", "the film does not succeed", "positive"),
    ("the performances are convincing", "the performances are not convincing", "positive"),
    ("it was an enjoyable experience", "it was not an enjoyable experience", "positive"),
    ("the music is memorable", "the music is n't memorable", "positive"),
    ("this comedy is clever", "this comedy is hardly clever", "positive"),
    ("the film has charm", "the film has no charm", "positive"),
    ("there is something to like here", "there is nothing to like here", "positive"),
    ("the sequel lives up to the original", "the sequel does n't live up to the original", "positive"),
    ("everyone will love it", "nobody will love it", "positive"),
    ("the script is smart and funny", "the script is neither smart nor funny", "positive"),
    ("it 's a pleasure to watch", "it 's not a pleasure to watch", "positive"),
    ("the movie will hold your interest", "the movie wo n't hold your interest", "positive"),
    ("the cast is wonderful", "the cast is n't wonderful", "positive"),
    ("the movie was bad", "the movie was not bad", "negative"),
    ("the film is boring", "the film is never boring", "negative"),
    ("the plot is predictable", "the plot is n't predictable", "negative"),
    ("the jokes fall flat", "the jokes never fall flat", "negative"),
    ("it is a waste of time", "it is not a waste of time", "negative"),
    ("i was disappointed", "i was not disappointed", "negative"),
    ("the story drags", "the story never drags", "negative"),
    ("the characters are dull", "the characters are never dull", "negative"),
    ("this film is a mess", "this film is not a mess", "negative"),
    ("the pacing is sluggish", "the pacing is n't sluggish", "negative"),
    ("i regret watching it", "i do n't regret watching it", "negative"),
    ("the ending is a letdown", "the ending is not a letdown", "negative"),
    ("the humor feels forced", "the humor never feels forced", "negative"),
    ("you will be bored", "you wo n't be bored", "negative"),
    ("the film fails to entertain", "the film never fails to entertain", "negative"),
    ("the effects look cheap", "the effects do n't look cheap", "negative"),
)


def negation_probe(
    predict_proba: Callable[[list[str]], np.ndarray],
    label_names: Sequence[str],
    pairs: Sequence[tuple[str, str, str]] = NEGATION_PAIRS,
) -> dict:
    """How often negating a sentence flips the prediction the right way.

    Only for binary negative/positive label sets; anything else returns {"status": "skipped", ...}.
    `flipped_correctly` = both the sentence and its negation are classified correctly.

    Example:
        >>> def rule(texts): return np.array([[0.9, 0.1] if " n" in t else [0.1, 0.9] for t in texts])
        >>> negation_probe(rule, ["negative", "positive"])["status"]
        'ok'
    """
    lowered = [name.lower() for name in label_names]
    if sorted(lowered) != ["negative", "positive"]:
        return {"status": "skipped", "reason": f"label set {list(label_names)} is not binary negative/positive"}
    index = {name: lowered.index(name) for name in ("negative", "positive")}
    flip = {"positive": "negative", "negative": "positive"}
    texts = [t for base, negated, _ in pairs for t in (base, negated)]
    probs = np.asarray(predict_proba(texts), dtype=np.float64)
    predicted = [lowered[j] for j in probs.argmax(axis=1)]
    rows = []
    for n, (base, negated, label) in enumerate(pairs):
        pred_base, pred_negated = predicted[2 * n], predicted[2 * n + 1]
        rows.append(
            {
                "sentence": base,
                "negated": negated,
                "label": label,
                "negated_label": flip[label],
                "pred": pred_base,
                "negated_pred": pred_negated,
                "p_positive": round(float(probs[2 * n, index["positive"]]), 6),
                "negated_p_positive": round(float(probs[2 * n + 1, index["positive"]]), 6),
                "flipped": pred_base != pred_negated,
                "flipped_correctly": pred_base == label and pred_negated == flip[label],
            }
        )

    def summary(selected: list[dict]) -> dict:
        count = len(selected)
        hits = sum(r["flipped_correctly"] for r in selected)
        low, high = wilson_interval(hits, count)
        return {
            "pairs": count,
            "flipped_correctly": hits / count if count else math.nan,
            "ci95_low": low,
            "ci95_high": high,
            "flipped": sum(r["flipped"] for r in selected) / count if count else math.nan,
            "sentence_accuracy": sum(r["pred"] == r["label"] for r in selected) / count if count else math.nan,
            "negated_accuracy": (
                sum(r["negated_pred"] == r["negated_label"] for r in selected) / count if count else math.nan
            ),
        }

    return {
        "status": "ok",
        **summary(rows),
        "by_direction": {
            f"{label} -> {flip[label]}": summary([r for r in rows if r["label"] == label])
            for label in ("positive", "negative")
        },
        "examples": rows,
    }


# ---- I/O edges: reading folders, writing files -------------------------------------------------


def _probe_for(p: Predictions, predictor=None) -> dict:
    lowered = sorted(name.lower() for name in p.label_names)
    if lowered != ["negative", "positive"]:
        return {"status": "skipped", "reason": f"label set {p.label_names} is not binary negative/positive"}
    if predictor is None:
        if p.run_dir is None or not (p.run_dir / results.MODEL_DIR).is_dir():
            return {"status": "skipped", "reason": "no run folder with a model to query"}
        from sentitune.inference import Predictor

        predictor = Predictor.load(p.run_dir)
    return negation_probe(predictor.predict_proba, predictor.label_names)


def _jsonable(value):
    """NaN/inf -> None so analysis.json stays strict JSON that any reader accepts."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def write_analysis(
    output_dir: str | Path,
    p: Predictions,
    top_k: int = 20,
    custom_slices: dict[str, str] | None = None,
    predictor=None,
    probe: bool = True,
    against: Predictions | None = None,
    against_predictor=None,
    explain: int = 0,
) -> dict:
    """Analyses `p` (and compares it with `against`), writes the files, returns the analysis dict.
    With `explain` N, also explains the N most confident mistakes (explain_errors -> explanations.json).

    Example:
        >>> write_analysis("runs/sst2-lora/analysis", load_predictions("runs/sst2-lora"))  # doctest: +SKIP
    """
    from sentitune.reporting import plots

    output_dir = Path(output_dir)
    results.check_output_path(output_dir, "--output-dir")
    if against is not None:
        check_same_examples(p, against)  # before any work or file is written
    if explain and (predictor is None and (p.run_dir is None or not (p.run_dir / results.MODEL_DIR).is_dir())):
        raise ConfigError(f"--explain: {p.source} has no run folder with a model to explain its predictions")
    earlier = _files_written_earlier(output_dir)
    if explain and predictor is None:
        from sentitune.inference import Predictor

        # One load serves the negation probe and the explanations.
        predictor = Predictor.load(p.run_dir)
    analysis = analyze_predictions(p, top_k, custom_slices)
    analysis["negation_probe"] = _probe_for(p, predictor) if probe else {"status": "skipped", "reason": "disabled"}
    output_dir.mkdir(parents=True, exist_ok=True)
    figure = plots.confusion_figure(
        np.array(analysis["confusion_matrix"]["rows_gold_columns_predicted"]), p.label_names, title=_short(p.source)
    )
    plots.save_png(figure, output_dir / CONFUSION_FILE)
    figure = plots.reliability_figure(
        analysis["calibration"]["bins"], analysis["calibration"]["ece"], title=_short(p.source)
    )
    plots.save_png(figure, output_dir / RELIABILITY_FILE)
    results.atomic_write_csv(
        output_dir / ERRORS_FILE,
        error_rows(analysis),
        [
            "reason",
            "rank",
            "id",
            "text",
            "gold",
            "pred",
            "prob_gold",
            "prob_pred",
            "loss",
            "margin",
            *(f"prob_{n}" for n in p.label_names),
        ],
    )
    results.atomic_write_csv(
        output_dir / SLICES_FILE,
        analysis["slices"],
        ["slice", "kind", "count", "correct", "accuracy", "ci95_low", "ci95_high", "rule"],
    )
    if against is not None:
        comparison = compare_predictions(p, against, custom_slices, top_k)
        comparison["negation_probe"] = {
            "a": analysis["negation_probe"],
            "b": _probe_for(against, against_predictor) if probe else {"status": "skipped", "reason": "disabled"},
        }
        results.atomic_write_json(output_dir / COMPARISON_FILE, _jsonable(comparison))
        analysis["comparison"] = comparison
    files = [ANALYSIS_FILE, ERRORS_FILE, SLICES_FILE, CONFUSION_FILE, RELIABILITY_FILE]
    if explain:
        analysis["explanations"] = explain_errors(p, analysis, explain, predictor)
        results.atomic_write_json(output_dir / EXPLANATIONS_FILE, _jsonable(analysis["explanations"]))
        files.append(EXPLANATIONS_FILE)
    analysis["files"] = files + ([COMPARISON_FILE] if against is not None else [])
    for name in set(earlier) - set(analysis["files"]):
        # An earlier analyze wrote it (with --explain or --against) and this one did not: left there it
        # would pass for this analysis's.
        (output_dir / name).unlink(missing_ok=True)
    results.atomic_write_json(
        output_dir / ANALYSIS_FILE, _jsonable({k: v for k, v in analysis.items() if k != "comparison"})
    )
    analysis["output_dir"] = str(output_dir)
    return analysis


def _files_written_earlier(output_dir: Path) -> list[str]:
    """The optional files an earlier analysis in `output_dir` wrote, as its analysis.json lists them;
    none when there is no readable analysis.json (the files there are then not known to be ours)."""
    try:
        listed = results.read_json(output_dir / ANALYSIS_FILE).get("files")
    except RunFolderError:
        return []
    return [name for name in (COMPARISON_FILE, EXPLANATIONS_FILE) if isinstance(listed, list) and name in listed]


def analyze_evaluation(
    output_dir: str | Path, texts: Sequence[str], gold, probabilities, predictor, top_k: int = 20
) -> dict:
    """The `evaluate` hook: analysis files next to its predictions.csv, and a short summary to print.

    Example:
        >>> analyze_evaluation("runs/a/evaluations/mine", texts, gold, probs, predictor)  # doctest: +SKIP
        {'dir': 'runs/a/evaluations/mine', 'files': [...], 'ece': 0.04, 'negation_probe_flipped_correctly': 0.55}
    """
    p = Predictions(list(texts), gold, probabilities, list(predictor.label_names), source=Path(output_dir))
    analysis = write_analysis(output_dir, p, top_k, predictor=predictor)
    probe = analysis["negation_probe"]
    return {
        "dir": str(output_dir),
        "files": analysis["files"],
        "ece": analysis["overall"]["ece"],
        "negation_probe_flipped_correctly": probe.get("flipped_correctly") if probe["status"] == "ok" else None,
    }


def _short(path: Path | str) -> str:
    path = Path(path)
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def analyze_run(
    run: str | Path,
    *,
    against: str | Path | None = None,
    top_k: int = 20,
    slices: Sequence[str] = (),
    output_dir: str | Path | None = None,
    explain: int = 0,
) -> dict:
    """`sentitune analyze` as a function: reads the predictions of `run` (a run folder or an evaluation
    folder) and of `against`, writes the analysis files into `output_dir` (default <run>/analysis) and
    returns the analysis dict. `slices` are "NAME=REGEX" specs (parse_slices). `explain` N adds word
    attributions for the N most confident mistakes (explanations.json; explain_errors).

    Example:
        >>> analysis = analyze_run("runs/sst2-lora", against="runs/sst2-full", top_k=10)  # doctest: +SKIP
    """
    if top_k < 1:
        raise ConfigError(f"--top-k: must be >= 1, got {top_k}")
    if explain < 0:
        raise ConfigError(f"--explain: must be >= 1 (mistakes to explain), got {explain}")
    custom = parse_slices(slices)
    p = load_predictions(run)
    other = load_predictions(against) if against else None
    if output_dir is not None:  # the default <run>/analysis is analyze's own
        results.check_foreign_files(output_dir, ANALYSIS_FILES, ours=(Path(output_dir) / ANALYSIS_FILE).is_file())
    output_dir = Path(output_dir) if output_dir else Path(run) / ANALYSIS_DIR
    return write_analysis(output_dir, p, top_k, custom, against=other, explain=explain)


def explain_errors(p: Predictions, analysis: dict, count: int, predictor=None) -> list[dict]:
    """Word attributions (explain.explain_texts, the model's default method) for the `count` most
    confident mistakes among the analysis's highest-loss examples: why the model said the wrong label.
    Each explanation also carries the example's `id` and `gold` label.

    Example:
        >>> rows = explain_errors(p, analyze_predictions(p, 20), 3)  # doctest: +SKIP
    """
    from sentitune.explain import explain_texts
    from sentitune.inference import Predictor

    mistakes = [row for row in analysis["highest_loss"] if row["gold"] != row["pred"]][:count]
    if not mistakes:
        return []
    predictor = predictor or Predictor.load(p.run_dir)
    explained = explain_texts(predictor, [row["text"] for row in mistakes])
    return [{"id": row["id"], "gold": row["gold"], **explanation} for row, explanation in zip(mistakes, explained)]


# ---- `sentitune evaluate`: score a labelled file, then analyse it -------------------------------


def evaluate_file(
    run_dir: str | Path,
    data_file: str | Path,
    text_column: str | None = None,
    label_column: str | None = None,
    output_dir: str | Path | None = None,
    batch_size: int = 64,
) -> dict:
    """Scores a labelled CSV/TSV/JSONL file with a trained run; writes predictions.csv and metrics.json.

    Labels must belong to the run's label set (by name, or by id for 0..K-1 files).

    Example:
        >>> evaluate_file("runs/sst2-lora", "data/sst2/dev.tsv")["test_accuracy"]  # doctest: +SKIP
        0.91
    """
    from sentitune.inference import Predictor, score_labelled_file, write_scored_file

    if output_dir is not None:
        check_evaluation_dir(run_dir, output_dir)
    target = Path(output_dir) if output_dir else Path(run_dir) / "evaluations" / Path(data_file).stem
    results.check_output_path(target, "--output-dir")  # before the model loads
    predictor = Predictor.load(run_dir)
    if predictor.thresholds is not None:
        raise results.RunFolderError(
            f"{run_dir}: a multi-label run; evaluate scores single-label runs only "
            "(the run's own test metrics are in metrics.json)"
        )
    texts, gold, probabilities, metrics = score_labelled_file(
        predictor, data_file, text_column, label_column, batch_size
    )
    metrics["run"] = str(run_dir)
    output_dir = target

    with results.writing(output_dir):
        output_dir.mkdir(parents=True, exist_ok=True)
    with results.exclusive_lock(output_dir):  # one evaluation writes this folder at a time
        write_scored_file(output_dir, texts, gold, probabilities, predictor.label_names, metrics)
        metrics["analysis"] = analyze_evaluation(output_dir, texts, gold, probabilities, predictor)
    metrics["output_dir"] = str(output_dir)
    return metrics


def check_evaluation_dir(run_dir: str | Path, output_dir: str | Path) -> None:
    """Refuses an evaluate --output-dir that is the run folder itself or any folder holding a run's
    metrics.json (anything but an earlier evaluation's): evaluate writes metrics.json and
    predictions.csv there and would replace the run's own."""
    output_dir = Path(output_dir)
    metrics_path = output_dir / results.METRICS_FILE
    same = output_dir.exists() and Path(run_dir).exists() and output_dir.resolve() == Path(run_dir).resolve()
    held = results.is_run_folder(output_dir)
    if not (same or held) and metrics_path.is_file():
        try:
            held = "data_file" not in json.loads(metrics_path.read_text(encoding="utf-8"))
        except (OSError, ValueError, TypeError):
            held = True  # unreadable: not ours to replace
    if same or held:
        raise results.RunFolderError(
            f"{output_dir}: holds a run's {results.METRICS_FILE}; evaluate would replace the run's own "
            f"{results.METRICS_FILE} and {results.PREDICTIONS_FILE}, so pick another --output-dir "
            "(default: <run>/evaluations/<file stem>)"
        )
    # A folder holding an earlier evaluation's metrics.json is evaluate's own; any other must not
    # hold a file of the names evaluate writes (a user's predictions.csv was silently replaced).
    results.check_foreign_files(output_dir, EVALUATION_FILES, ours=metrics_path.is_file())
