"""Pure metric and statistics functions over labels and probabilities (numpy in, floats out).

Example:
    >>> import numpy as np
    >>> classification_metrics(np.array([0, 1, 1]), np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]))["accuracy"]
    0.6666666666666666
"""

from __future__ import annotations

import math
from typing import Any

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
    """Row-wise softmax of n x k logits, in float64 (training's predictions.csv and the Predictor both
    use it, so their probabilities round-trip to ~1e-7, not float32's 1e-4).

    Example:
        >>> softmax(np.array([[0.0, 0.0], [0.0, np.log(3.0)]])).round(3).tolist()
        [[0.5, 0.5], [0.25, 0.75]]
    """
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def bootstrap_ci(
    values, confidence: float = 0.95, resamples: int = 10_000, seed: int = 0, statistic=np.mean
) -> tuple[float, float]:
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


def t_interval(values, confidence: float = 0.95) -> tuple[float, float]:
    """Student-t confidence interval of the mean of two or more values (e.g. per-seed accuracies).

    mean ± t(1 - (1 - confidence) / 2, n - 1) · s / √n, with s the sample standard deviation (ddof=1).
    A percentile bootstrap over 3-5 seed values can only return values it has seen and so is far too
    narrow; the t-interval is the standard small-sample interval for a mean.

    Args:
        values: at least two numbers.
        confidence: coverage of the interval.

    Returns:
        (low, high), not clipped: callers with bounded quantities clip.

    Raises:
        ValueError: fewer than two values (one value says nothing about spread).

    Example:
        >>> low, high = t_interval([0.80, 0.82, 0.84])
        >>> round(low, 4), round(high, 4)
        (0.7703, 0.8697)
    """
    from scipy.stats import t

    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size < 2:
        raise ValueError(f"a t-interval needs at least 2 values, got {values.size}")
    mean = float(values.mean())
    half = float(t.ppf(1 - (1 - confidence) / 2, values.size - 1) * values.std(ddof=1) / math.sqrt(values.size))
    return (mean - half, mean + half)


def _bootstrap_means(matrix: np.ndarray, resamples: int, seed: int, over_rows: bool) -> np.ndarray:
    """Means of `matrix` (rows = seeds, columns = test examples) under resampling: columns with
    replacement, the same columns for every row, and rows too when `over_rows`. Chunked so memory
    stays bounded on large test sets."""
    rows, columns = matrix.shape
    rng = np.random.default_rng(seed)
    out = np.empty(resamples)
    chunk = max(1, min(resamples, 4_000_000 // max(1, rows * columns)))
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        picked = rng.integers(0, columns, size=(size, columns))
        per_row = matrix[:, picked].mean(axis=2).T  # size x rows: each row's mean over the resampled columns
        if over_rows and rows > 1:
            row_picks = rng.integers(0, rows, size=(size, rows))
            per_row = per_row[np.arange(size)[:, None], row_picks]
        out[start : start + size] = per_row.mean(axis=1)
    return out


def two_level_bootstrap_ci(
    correctness_matrix, confidence: float = 0.95, resamples: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """Percentile CI of mean accuracy from a two-level bootstrap: seeds (rows) with replacement, then
    test examples (columns) with replacement, the same examples for every resampled seed.

    It covers both training randomness and test-set sampling; with one row it is the bootstrap over
    test examples.

    Args:
        correctness_matrix: 0/1 correctness, rows = seeds, columns = the same test examples (1-D = one seed).
        confidence: coverage of the interval.
        resamples: bootstrap resamples.
        seed: random seed, so the interval is reproducible.

    Returns:
        (low, high); (nan, nan) for an empty matrix.

    Example:
        >>> matrix = np.array([[1, 1, 0, 1, 1, 0, 1, 1], [1, 0, 1, 1, 1, 0, 1, 1], [1, 1, 1, 1, 0, 0, 1, 1]])
        >>> low, high = two_level_bootstrap_ci(matrix, resamples=2000)
        >>> bool(low < matrix.mean() < high)
        True
    """
    matrix = np.atleast_2d(np.asarray(correctness_matrix, dtype=np.float64))
    if matrix.size == 0:
        return (math.nan, math.nan)
    means = _bootstrap_means(matrix, resamples, seed, over_rows=True)
    alpha = (1 - confidence) / 2
    return (float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha)))


def accuracy_interval(
    seed_accuracies, correctness_of_one_run=(), method: str = "t", correctness_matrix=None
) -> tuple[float, float, str]:
    """95% CI of a variant's test accuracy, and a label saying how it was made.

    method="t" (default): with two or more seeds, the Student-t interval of the mean over the seed
    accuracies (training randomness), clipped to [0, 1], labelled "t over N seeds"; with one seed, a
    percentile bootstrap over that run's test examples (test-set sampling only), labelled "bootstrap
    over test examples (1 seed)". method="two-level": two_level_bootstrap_ci over `correctness_matrix`
    (seeds x test examples), labelled "two-level bootstrap over N seed(s) and test examples".

    Args:
        seed_accuracies: test accuracy of each seed.
        correctness_of_one_run: 0/1 per-example correctness of the single run (used only with one seed).
        method: "t" or "two-level".
        correctness_matrix: needed by method="two-level".

    Returns:
        (low, high, label).

    Example:
        >>> low, high, how = accuracy_interval([0.80, 0.82, 0.84])
        >>> round(low, 4), round(high, 4), how
        (0.7703, 0.8697, 't over 3 seeds')
        >>> accuracy_interval([0.75], [1, 1, 1, 0])[2]
        'bootstrap over test examples (1 seed)'
    """
    if method == "two-level":
        if correctness_matrix is None:
            raise ValueError('method="two-level" needs correctness_matrix (seeds x test examples)')
        matrix = np.atleast_2d(np.asarray(correctness_matrix, dtype=np.float64))
        low, high = two_level_bootstrap_ci(matrix)
        seeds = matrix.shape[0]
        return low, high, f"two-level bootstrap over {seeds} seed{'s' if seeds != 1 else ''} and test examples"
    if method != "t":
        raise ValueError(f'unknown interval method {method!r}: "t" or "two-level"')
    accuracies = np.asarray(seed_accuracies, dtype=np.float64).ravel()
    if accuracies.size >= 2:
        low, high = t_interval(accuracies)
        return max(0.0, low), min(1.0, high), f"t over {accuracies.size} seeds"
    low, high = bootstrap_ci(np.asarray(correctness_of_one_run, dtype=float))
    return low, high, "bootstrap over test examples (1 seed)"


def finite_mean(values) -> float:
    """Mean of the finite numbers among `values` (None, NaN, inf and non-numbers skipped); NaN if none.

    Example:
        >>> finite_mean([1.0, None, float("nan"), 3])
        2.0
    """
    finite = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def finite_std(values) -> float:
    """Sample standard deviation (ddof=1) of the finite numbers among `values`; NaN with fewer than two."""
    finite = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return float(np.std(finite, ddof=1)) if len(finite) >= 2 else math.nan


def seed_summary(seed_accuracies, correctness_of_one_run=()) -> dict[str, Any]:
    """A variant's test accuracy over its seeds, as compare's results and the report both state it.

    Args:
        seed_accuracies: test accuracy of each finished seed.
        correctness_of_one_run: 0/1 per-example correctness of one run, for the bootstrap interval over
            test examples (see accuracy_interval). Used with one seed, and with seeds that all scored
            the same (a deterministic method such as embed or tfidf): a t-interval over identical
            numbers has zero width and would hide the test set's sampling error.

    Returns:
        {n_seeds, mean, std (ddof=1; NaN with one seed), ci95_low, ci95_high, ci_method}.

    Example:
        >>> s = seed_summary([0.80, 0.82, 0.84])
        >>> s["n_seeds"], round(s["mean"], 4), round(s["std"], 4), s["ci_method"]
        (3, 0.82, 0.02, 't over 3 seeds')
    """
    accuracies = np.asarray(seed_accuracies, dtype=np.float64).ravel()
    if accuracies.size >= 2 and np.ptp(accuracies) == 0 and len(correctness_of_one_run):
        low, high, _ = accuracy_interval(accuracies[:1], correctness_of_one_run)
        how = f"bootstrap over test examples (all {accuracies.size} seeds scored the same)"
    else:
        low, high, how = accuracy_interval(accuracies, correctness_of_one_run)
    return {
        "n_seeds": int(accuracies.size),
        "mean": float(accuracies.mean()) if accuracies.size else math.nan,
        "std": float(accuracies.std(ddof=1)) if accuracies.size >= 2 else math.nan,
        "ci95_low": low,
        "ci95_high": high,
        "ci_method": how,
    }


def holm(p_values) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the order given.

    Step-down: the k-th smallest of K p-values is multiplied by K - k + 1, a running maximum keeps the
    adjusted values monotone in the raw ones, and they are capped at 1. A difference is significant
    at level α after correction when its adjusted p < α; this controls the family-wise error rate over
    the K tests. NaN inputs stay NaN and do not count toward K.

    Args:
        p_values: raw p-values (any iterable of floats; NaN = no test).

    Returns:
        Adjusted p-values, same length and order.

    Example:
        >>> [round(p, 4) for p in holm([0.01, 0.04, 0.03, 0.005])]
        [0.03, 0.06, 0.06, 0.02]
        >>> holm([0.2, float("nan"), 0.01])
        [0.2, nan, 0.02]
    """
    p = np.asarray(list(p_values), dtype=np.float64).ravel()
    adjusted = np.full(p.shape, math.nan)
    present = np.flatnonzero(~np.isnan(p))
    order = present[np.argsort(p[present], kind="stable")]
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, float((len(order) - rank) * p[index])))
        adjusted[index] = running
    return [float(x) for x in adjusted]


def discordant_pairs(correct_a, correct_b) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of the examples only A gets right and of those only B gets right (the pairs a
    McNemar test counts).

    Example:
        >>> [i.tolist() for i in discordant_pairs([1, 1, 0, 0], [1, 0, 1, 0])]
        [[1], [2]]
    """
    correct_a = np.asarray(correct_a, dtype=bool)
    correct_b = np.asarray(correct_b, dtype=bool)
    if correct_a.shape != correct_b.shape:
        raise ValueError(f"paired test needs the same examples: {correct_a.shape} vs {correct_b.shape}")
    return np.flatnonzero(correct_a & ~correct_b), np.flatnonzero(~correct_a & correct_b)


def mcnemar(correct_a, correct_b) -> dict[str, float]:
    """Exact McNemar test on paired per-example correctness.

    b = A right & B wrong, c = A wrong & B right; p = two-sided binomial test of b vs c at 0.5.
    """
    from scipy.stats import binomtest

    a_only, b_only = discordant_pairs(correct_a, correct_b)
    b, c = int(a_only.size), int(b_only.size)
    p_value = 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)
    return {"a_only_correct": b, "b_only_correct": c, "p_value": p_value}


def paired_seed_test(correct_a, correct_b, resamples: int = 10_000, seed: int = 0) -> dict[str, Any]:
    """One paired test of two variants over all their shared seeds, on the same test examples.

    Difference: accuracy of A minus accuracy of B, averaged over seeds. Its 95% CI is a paired
    percentile bootstrap: test examples (columns) are resampled with replacement, the same resample
    for every seed and for both variants; with two or more seeds the seeds (rows) are resampled too
    (two-level). `ci_method` says which.

    p-value: the exact two-sided McNemar (binomial at 0.5) test on the discordant counts pooled over
    seeds, b = Σ_seeds #(A right, B wrong) and c = Σ_seeds #(A wrong, B right). With one seed this
    is `mcnemar` exactly. Choice and its limit: pooling treats the seeds x examples pairs as
    independent, but every seed sees the same examples, so when seeds agree on which examples
    separate A and B the pooled counts grow with the seed count and the p-value is smaller than an
    example-level test would give; the bootstrap CI (which resamples examples jointly across seeds)
    does not assume this. Read the p-value with the CI.

    Args:
        correct_a: 0/1 correctness of A, seeds x examples (1-D = one seed).
        correct_b: the same for B, same shape, same seed order and same test examples.
        resamples: bootstrap resamples for the CI; 0 skips the bootstrap (CI NaN), for callers that
            need only the counts, accuracies and p-value (per-slice tables over large test sets).
        seed: random seed of the bootstrap, so the CI is reproducible.

    Returns:
        {difference, difference_ci95_low, difference_ci95_high, ci_method, a_accuracy, b_accuracy,
        b, c, p_value, n_seeds, n_examples}; accuracies and the difference are fractions in [0, 1].

    Raises:
        ValueError: the two sides differ in shape (other seeds or other examples).

    Example:
        >>> a = np.array([[1, 1, 1, 0, 1, 1], [1, 1, 0, 1, 1, 1]], dtype=bool)
        >>> b = np.array([[1, 0, 1, 0, 0, 1], [1, 0, 1, 1, 0, 1]], dtype=bool)
        >>> t = paired_seed_test(a, b, resamples=2000)
        >>> t["b"], t["c"], round(t["difference"], 4), round(t["p_value"], 4), t["n_seeds"], t["n_examples"]
        (4, 1, 0.25, 0.375, 2, 6)
    """
    a = np.atleast_2d(np.asarray(correct_a, dtype=bool))
    b = np.atleast_2d(np.asarray(correct_b, dtype=bool))
    if a.shape != b.shape:
        raise ValueError(f"paired test needs the same seeds and examples: {a.shape} vs {b.shape}")
    n_seeds, n_examples = a.shape
    pooled = mcnemar(a.ravel(), b.ravel())
    two_level = n_seeds >= 2
    out: dict[str, Any] = {
        "b": pooled["a_only_correct"],
        "c": pooled["b_only_correct"],
        "p_value": pooled["p_value"],
        "n_seeds": int(n_seeds),
        "n_examples": int(n_examples),
        "ci_method": (
            "paired two-level bootstrap over seeds and test examples"
            if two_level
            else "paired bootstrap over test examples"
        ),
    }
    if a.size == 0 or resamples == 0:
        a_accuracy = float(a.mean()) if a.size else math.nan
        b_accuracy = float(b.mean()) if b.size else math.nan
        return {
            **out,
            "difference": a_accuracy - b_accuracy,
            "ci_method": out["ci_method"] if resamples else "none (resamples=0)",
            "difference_ci95_low": math.nan,
            "difference_ci95_high": math.nan,
            "a_accuracy": a_accuracy,
            "b_accuracy": b_accuracy,
        }
    difference = a.astype(np.float64) - b.astype(np.float64)
    means = _bootstrap_means(difference, resamples, seed, over_rows=two_level)
    return {
        **out,
        "difference": float(difference.mean()),
        "difference_ci95_low": float(np.quantile(means, 0.025)),
        "difference_ci95_high": float(np.quantile(means, 0.975)),
        "a_accuracy": float(a.mean()),
        "b_accuracy": float(b.mean()),
    }


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
        table.append(
            {
                "low": float(low),
                "high": float(high),
                "count": count,
                "accuracy": accuracy,
                "confidence": mean_confidence,
            }
        )
    return {"ece": float(ece), "bins": table}


TEMPERATURE_BOUNDS = (0.05, 20.0)
"""The range a fitted temperature is searched in. A small validation slice that the model classifies
perfectly pulls the NLL-optimal T towards 0 (ever sharper probabilities); the bound keeps such a fit
from turning every prediction into a certainty."""


def log_probabilities(probabilities) -> np.ndarray:
    """log p, clipped away from log 0: logits for a model that exposes only probabilities (softmax of
    them gives p back), so temperature scaling applies to it as to a network's logits.

    Example:
        >>> softmax(log_probabilities(np.array([[0.25, 0.75]]))).round(6).tolist()
        [[0.25, 0.75]]
    """
    return np.log(np.clip(np.asarray(probabilities, dtype=np.float64), 1e-300, 1.0))


def temperature_scale(logits, temperature: float) -> np.ndarray:
    """Calibrated probabilities softmax(logits / T). Dividing every logit of a row by the same T > 0
    keeps their order, so the predicted class never changes; T > 1 softens, T < 1 sharpens.

    Example:
        >>> temperature_scale(np.array([[0.0, np.log(9.0)]]), 2.0).round(4).tolist()
        [[0.25, 0.75]]
    """
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a positive finite number, got {temperature}")
    return softmax(np.asarray(logits, dtype=np.float64) / temperature)


def fit_temperature(logits, gold, bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> float:
    """The single temperature T minimising the mean negative log-likelihood of softmax(logits / T) on
    held-out examples (temperature scaling, Guo et al. 2017).

    The NLL is convex in 1/T, so a bounded scalar search over 1/T finds the global minimum within
    `bounds`. Fit it on the validation slice, never on test.

    Args:
        logits: n x k logits (log_probabilities() for models that give only probabilities).
        gold: n class ids.
        bounds: (lowest, highest) temperature allowed.

    Returns:
        T; 1.0 when there is no example to fit on.

    Example:
        >>> # the model says 0.88 (margin 2) on every example, but only 3 of 4 are right: T = 2 / ln 3
        >>> logits = np.array([[0.0, 2.0]] * 4)
        >>> round(fit_temperature(logits, np.array([1, 1, 1, 0])), 4), round(2 / math.log(3), 4)
        (1.8205, 1.8205)
    """
    from scipy.optimize import minimize_scalar

    logits = np.asarray(logits, dtype=np.float64)
    gold = np.asarray(gold, dtype=np.int64)
    if logits.ndim != 2 or len(logits) != len(gold):
        raise ValueError(f"fit_temperature needs n x k logits and n labels, got {logits.shape} and {gold.shape}")
    if len(gold) == 0:
        return 1.0
    rows = np.arange(len(gold))

    def nll(inverse: float) -> float:
        scaled = logits * inverse
        scaled -= scaled.max(axis=1, keepdims=True)
        return float((np.log(np.exp(scaled).sum(axis=1)) - scaled[rows, gold]).mean())

    low, high = bounds
    result = minimize_scalar(nll, bounds=(1 / high, 1 / low), method="bounded", options={"xatol": 1e-9})
    return float(1 / result.x)


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
        out.update(
            {f"{average}_f1": float(f1), f"precision_{average}": float(precision), f"recall_{average}": float(recall)}
        )
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


def pareto_front(points: list[tuple[float, ...]], maximize: tuple[bool, ...]) -> list[int]:
    """Indices of the points no other point dominates: at least as good on every axis and strictly
    better on one (`maximize[i]` says which way axis i is better). Points with a NaN are never on it.

    Example:
        >>> # (accuracy, peak memory): b is dominated by a; c trades accuracy for memory
        >>> pareto_front([(0.90, 800), (0.88, 900), (0.85, 300)], maximize=(True, False))
        [0, 2]
    """
    signed = [tuple(v if up else -v for v, up in zip(p, maximize)) for p in points]
    front = []
    for i, p in enumerate(signed):
        if any(math.isnan(v) for v in p):
            continue
        dominated = any(
            all(o >= v for o, v in zip(q, p)) and any(o > v for o, v in zip(q, p))
            for j, q in enumerate(signed)
            if j != i and not any(math.isnan(v) for v in q)
        )
        if not dominated:
            front.append(i)
    return front


def is_significant(p_adjusted: float, ci_low: float | None, ci_high: float | None, alpha: float = 0.05) -> bool:
    """A paired difference is called significant only when the (Holm-adjusted) McNemar p is below
    `alpha` AND its bootstrap CI excludes 0. Pooled over seeds, McNemar treats every seed's examples as
    independent draws and ignores how much the seeds disagree, while the bootstrap resamples seeds too:
    with 2-3 seeds that differ by points, p can be tiny while the CI spans 0. Then the honest verdict is
    "not significant". Without a CI (resamples=0), p decides alone.

    Example:
        >>> is_significant(0.03, -0.006, 0.042), is_significant(0.03, 0.001, 0.04), is_significant(0.2, 0.01, 0.05)
        (False, True, False)
    """
    if not p_adjusted < alpha:
        return False
    if ci_low is None or ci_high is None or math.isnan(ci_low) or math.isnan(ci_high):
        return True
    return bool(ci_low > 0 or ci_high < 0)
