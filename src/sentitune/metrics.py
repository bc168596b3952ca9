"""Pure metric and statistics functions over labels and probabilities (numpy in, floats out).

Example:
    >>> import numpy as np
    >>> classification_metrics(np.array([0, 1, 1]), np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]))["accuracy"]
    0.6666666666666666
"""

from __future__ import annotations

import math

import numpy as np


def classification_metrics(gold: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """Accuracy, macro F1/precision/recall, and mean negative log-likelihood ("loss")."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    gold = np.asarray(gold)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    predicted = probabilities.argmax(axis=1)
    labels = list(range(probabilities.shape[1]))
    precision, recall, f1, _ = precision_recall_fscore_support(
        gold, predicted, labels=labels, average="macro", zero_division=0
    )
    picked = np.clip(probabilities[np.arange(len(gold)), gold], 1e-12, 1.0)
    return {
        "accuracy": float(accuracy_score(gold, predicted)),
        "macro_f1": float(f1),
        "precision_macro": float(precision),
        "recall_macro": float(recall),
        "loss": float(-np.log(picked).mean()),
    }


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def bootstrap_ci(values, confidence: float = 0.95, resamples: int = 10_000, seed: int = 0,
                 statistic=np.mean) -> tuple[float, float]:
    """Percentile bootstrap CI of `statistic` over `values` (e.g. per-seed accuracies, or 0/1 correctness).

    With a single value the interval collapses to that value: one seed says nothing about spread.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return (math.nan, math.nan)
    if values.size == 1:
        return (float(values[0]), float(values[0]))
    rng = np.random.default_rng(seed)
    samples = rng.choice(values, size=(resamples, values.size), replace=True)
    stats = np.apply_along_axis(statistic, 1, samples) if statistic is not np.mean else samples.mean(axis=1)
    alpha = (1 - confidence) / 2
    return (float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha)))


def accuracy_interval(seed_accuracies, correctness_of_one_run) -> tuple[float, float, str]:
    """95% CI of a variant's test accuracy: a bootstrap over seeds when there are two or more (training
    randomness), else over the test examples of the single run (test-set sampling only), and says which.
    """
    if len(seed_accuracies) >= 2:
        low, high = bootstrap_ci(seed_accuracies)
        return low, high, "seeds"
    low, high = bootstrap_ci(np.asarray(correctness_of_one_run, dtype=float))
    return low, high, "test examples (1 seed)"


def mcnemar(correct_a, correct_b) -> dict[str, float]:
    """Exact McNemar test on paired per-example correctness.

    b = A right & B wrong, c = A wrong & B right; p = two-sided binomial test of b vs c at 0.5.
    """
    from scipy.stats import binomtest

    correct_a = np.asarray(correct_a, dtype=bool)
    correct_b = np.asarray(correct_b, dtype=bool)
    if correct_a.shape != correct_b.shape:
        raise ValueError(f"paired test needs the same examples: {correct_a.shape} vs {correct_b.shape}")
    b = int((correct_a & ~correct_b).sum())
    c = int((~correct_a & correct_b).sum())
    p_value = 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)
    return {"a_only_correct": b, "b_only_correct": c, "p_value": p_value}


def wilson_interval(successes: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion (slice accuracies with few examples)."""
    from scipy.stats import norm

    if total == 0:
        return (math.nan, math.nan)
    z = norm.ppf(1 - (1 - confidence) / 2)
    p = successes / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def expected_calibration_error(gold, probabilities, bins: int = 10) -> dict:
    """ECE over equal-width confidence bins, plus the per-bin table for a reliability diagram."""
    gold = np.asarray(gold)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == gold
    edges = np.linspace(0, 1, bins + 1)
    table, ece = [], 0.0
    for low, high in zip(edges[:-1], edges[1:]):
        mask = (confidence > low) & (confidence <= high) if low > 0 else (confidence >= low) & (confidence <= high)
        count = int(mask.sum())
        if count:
            accuracy = float(correct[mask].mean())
            mean_confidence = float(confidence[mask].mean())
            ece += count / len(gold) * abs(accuracy - mean_confidence)
        else:
            accuracy = mean_confidence = math.nan
        table.append({"low": float(low), "high": float(high), "count": count,
                      "accuracy": accuracy, "confidence": mean_confidence})
    return {"ece": float(ece), "bins": table}


def confusion_matrix(gold, predicted, num_labels: int) -> np.ndarray:
    matrix = np.zeros((num_labels, num_labels), dtype=int)
    np.add.at(matrix, (np.asarray(gold), np.asarray(predicted)), 1)
    return matrix


# ---- multi-label ------------------------------------------------------------------------------

def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Independent per-label probabilities for multi-label logits."""
    from scipy.special import expit

    return expit(np.asarray(logits, dtype=np.float64))


def multilabel_metrics(gold, probabilities, thresholds=None) -> dict[str, float]:
    """Multi-label scores of 0/1 gold rows (n x k) against per-label probabilities, each label
    predicted when its probability reaches its threshold (default 0.5).

    `accuracy` is subset accuracy (every label of a text right), so it keeps its meaning of "share
    of texts predicted exactly"; `loss` is the mean binary cross-entropy per label.

    Example:
        >>> gold = np.array([[1, 0, 1], [0, 1, 0]])
        >>> m = multilabel_metrics(gold, np.array([[0.9, 0.2, 0.6], [0.3, 0.4, 0.1]]))
        >>> m["accuracy"], round(m["micro_f1"], 3)
        (0.5, 0.8)
    """
    from sklearn.metrics import precision_recall_fscore_support

    gold = np.asarray(gold, dtype=int)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    predicted = (probabilities >= (0.5 if thresholds is None else np.asarray(thresholds))).astype(int)
    out: dict[str, float] = {"accuracy": float((predicted == gold).all(axis=1).mean())}
    for average in ("micro", "macro"):
        precision, recall, f1, _ = precision_recall_fscore_support(gold, predicted, average=average, zero_division=0)
        out.update({f"{average}_f1": float(f1), f"precision_{average}": float(precision),
                    f"recall_{average}": float(recall)})
    clipped = np.clip(probabilities, 1e-12, 1 - 1e-12)
    out["hamming_loss"] = float((predicted != gold).mean())
    out["loss"] = float(-(gold * np.log(clipped) + (1 - gold) * np.log(1 - clipped)).mean())
    return out


def choose_thresholds(gold, probabilities, grid=None) -> np.ndarray:
    """Per-label decision thresholds maximising that label's F1 on held-out (validation) predictions.

    Ties go to the threshold closest to 0.5; a label with no positive example in `gold` keeps 0.5,
    since F1 cannot rank thresholds for it.

    Example:
        >>> gold = np.array([[1, 0], [1, 0], [0, 1]])
        >>> choose_thresholds(gold, np.array([[0.3, 0.1], [0.35, 0.2], [0.1, 0.9]])).tolist()
        [0.3, 0.5]
    """
    gold = np.asarray(gold, dtype=int)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    grid = np.round(np.arange(0.05, 0.951, 0.05), 2) if grid is None else np.asarray(grid)
    thresholds = np.full(gold.shape[1], 0.5)
    for j in range(gold.shape[1]):
        positives = gold[:, j] == 1
        if not positives.any():
            continue
        scores = []
        for t in grid:
            predicted = probabilities[:, j] >= t
            tp = int((predicted & positives).sum())
            denominator = int(predicted.sum()) + int(positives.sum())
            scores.append(2 * tp / denominator if denominator else 0.0)
        scores = np.array(scores)
        best = np.flatnonzero(scores == scores.max())
        thresholds[j] = float(grid[best[np.argmin(np.abs(grid[best] - 0.5))]])
    return thresholds
