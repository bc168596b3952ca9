"""Statistics checked against hand-computed cases."""

import math

import numpy as np
import pytest

from sentitune.metrics import (
    accuracy_interval,
    bootstrap_ci,
    classification_metrics,
    confusion_matrix,
    expected_calibration_error,
    holm,
    mcnemar,
    paired_seed_test,
    t_interval,
    two_level_bootstrap_ci,
    wilson_interval,
)


def test_classification_metrics_by_hand():
    gold = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7]])
    m = classification_metrics(gold, probs)
    assert m["accuracy"] == 0.75
    # class 0: P=1, R=0.5, F1=2/3; class 1: P=2/3, R=1, F1=0.8
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert m["loss"] == pytest.approx(-np.mean(np.log([0.9, 0.4, 0.8, 0.7])))


def test_mcnemar_exact_binomial_by_hand():
    # b = 5 (A right, B wrong), c = 1: p = 2 * P(X <= 1 | n=6, 0.5) = 2 * 7/64
    a = np.array([1] * 5 + [0] * 1 + [1] * 10, dtype=bool)
    b = np.array([0] * 5 + [1] * 1 + [1] * 10, dtype=bool)
    result = mcnemar(a, b)
    assert (result["a_only_correct"], result["b_only_correct"]) == (5, 1)
    assert result["p_value"] == pytest.approx(14 / 64)
    assert mcnemar(a, a)["p_value"] == 1.0
    with pytest.raises(ValueError, match="same examples"):
        mcnemar(a, b[:-1])


def test_bootstrap_ci_brackets_the_mean_and_collapses_for_one_value():
    values = [0.80, 0.82, 0.84]
    low, high = bootstrap_ci(values, resamples=5000, seed=1)
    assert 0.80 <= low <= np.mean(values) <= high <= 0.84
    assert bootstrap_ci([0.7]) == (0.7, 0.7)
    # Constant data has a zero-width interval.
    assert bootstrap_ci([1, 1, 1, 1]) == (1.0, 1.0)


def test_wilson_interval_known_value():
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-3) and high == pytest.approx(0.9433, abs=1e-3)
    assert all(math.isnan(x) for x in wilson_interval(0, 0))


def test_ece_perfectly_calibrated_and_overconfident():
    gold = np.array([0, 1, 0, 1])
    assert expected_calibration_error(gold, np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]))["ece"] == 0
    wrong = expected_calibration_error(gold, np.array([[0.0, 1.0]] * 4))
    assert wrong["ece"] == pytest.approx(0.5)


def test_confusion_matrix_counts():
    assert confusion_matrix([0, 1, 1, 2], [0, 2, 1, 2], 3).tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]


def test_holm_by_hand():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> raised to 0.06 (monotone)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == [1.0, 1.0]  # capped at 1
    assert holm([0.02]) == [0.02] and holm([]) == []
    # NaN stays NaN and does not count toward K: K = 2 here
    adjusted = holm([0.01, math.nan, 0.04])
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.04)
    p = np.random.default_rng(3).random(20)
    assert all(h >= raw for h, raw in zip(holm(p), p))


def test_t_interval_by_hand():
    from scipy.stats import t

    values = [0.80, 0.83, 0.81, 0.86]
    mean, sd = np.mean(values), np.std(values, ddof=1)
    half = t.ppf(0.975, 3) * sd / math.sqrt(4)
    assert t_interval(values) == pytest.approx((mean - half, mean + half))
    half90 = t.ppf(0.95, 3) * sd / math.sqrt(4)
    assert t_interval(values, confidence=0.90) == pytest.approx((mean - half90, mean + half90))
    with pytest.raises(ValueError, match="at least 2"):
        t_interval([0.8])


def test_accuracy_interval_names_its_method():
    from scipy.stats import t

    low, high, how = accuracy_interval([0.80, 0.84], [])
    half = t.ppf(0.975, 1) * np.std([0.80, 0.84], ddof=1) / math.sqrt(2)
    assert how == "t over 2 seeds"
    assert (low, high) == pytest.approx((max(0.0, 0.82 - half), min(1.0, 0.82 + half)))  # clipped to [0, 1]
    assert 0.0 <= low and high == 1.0
    correct = np.array([1] * 80 + [0] * 20)
    low, high, how = accuracy_interval([0.8], correct)
    assert how == "bootstrap over test examples (1 seed)"
    assert (low, high) == bootstrap_ci(correct.astype(float)) and low < 0.8 < high
    matrix = np.array([correct, np.roll(correct, 7), np.arange(100) < 85])
    low, high, how = accuracy_interval(matrix.mean(axis=1), [], method="two-level", correctness_matrix=matrix)
    assert how == "two-level bootstrap over 3 seeds and test examples"
    assert (low, high) == two_level_bootstrap_ci(matrix) and low < matrix.mean() < high
    with pytest.raises(ValueError, match="correctness_matrix"):
        accuracy_interval([0.8, 0.9], [], method="two-level")


def test_two_level_bootstrap_widens_with_seed_spread():
    rng = np.random.default_rng(0)
    base = rng.random(400) < 0.8
    same = np.stack([base] * 3)  # seeds that agree: only test-set sampling
    spread = np.stack([rng.random(400) < p for p in (0.70, 0.80, 0.90)])
    low_same, high_same = two_level_bootstrap_ci(same, resamples=2000)
    low_spread, high_spread = two_level_bootstrap_ci(spread, resamples=2000)
    assert low_same < base.mean() < high_same
    assert high_spread - low_spread > high_same - low_same
    # one seed = the percentile bootstrap over examples
    assert two_level_bootstrap_ci(base, resamples=2000) == two_level_bootstrap_ci(base[None, :], resamples=2000)


def test_paired_seed_test_with_one_seed_is_mcnemar():
    rng = np.random.default_rng(7)
    a, b = rng.random(200) < 0.8, rng.random(200) < 0.75
    test = paired_seed_test(a[None, :], b[None, :])
    reference = mcnemar(a, b)
    assert test["p_value"] == reference["p_value"]  # exactly
    assert (test["b"], test["c"]) == (reference["a_only_correct"], reference["b_only_correct"])
    assert (test["n_seeds"], test["n_examples"]) == (1, 200)
    assert test["difference"] == pytest.approx(a.mean() - b.mean())
    assert test["difference_ci95_low"] < test["difference"] < test["difference_ci95_high"]
    assert test["ci_method"] == "paired bootstrap over test examples"
    assert paired_seed_test(a, b)["p_value"] == reference["p_value"]  # 1-D = one seed


def test_paired_seed_test_pools_discordant_counts_over_seeds():
    from scipy.stats import binomtest

    a = np.array(
        [[1, 1, 1, 0, 1, 0, 1, 1, 1, 0], [1, 1, 0, 1, 1, 1, 1, 0, 1, 1], [1, 0, 1, 1, 1, 1, 1, 1, 1, 1]], dtype=bool
    )
    b = np.array(
        [[1, 0, 0, 0, 1, 1, 0, 1, 0, 0], [1, 0, 0, 1, 0, 1, 1, 1, 0, 1], [0, 0, 1, 0, 1, 1, 0, 1, 1, 1]], dtype=bool
    )
    # seed 1: a-only at 1, 2, 6, 8 (4), b-only at 5 (1); seed 2: a-only at 1, 4, 8 (3), b-only at 7 (1);
    # seed 3: a-only at 0, 3, 6 (3), b-only none (0)  ->  b = 10, c = 2
    test = paired_seed_test(a, b)
    assert (test["b"], test["c"], test["n_seeds"], test["n_examples"]) == (10, 2, 3, 10)
    assert test["p_value"] == pytest.approx(binomtest(10, 12, 0.5).pvalue)
    assert test["difference"] == pytest.approx((10 - 2) / 30)
    assert test["a_accuracy"] == pytest.approx(a.mean()) and test["b_accuracy"] == pytest.approx(b.mean())
    assert test["difference_ci95_low"] <= test["difference"] <= test["difference_ci95_high"]
    assert test["ci_method"] == "paired two-level bootstrap over seeds and test examples"
    assert paired_seed_test(a, b) == test  # seeded: reproducible
    with pytest.raises(ValueError, match="same seeds and examples"):
        paired_seed_test(a, b[:2])


# ---- calibration: ECE and temperature scaling --------------------------------------------------


def test_ece_by_hand_one_example_per_bin():
    from sentitune.metrics import expected_calibration_error

    # confidences 0.9 (right), 0.8 (wrong), 0.7 (right), 0.6 (right): one per bin, so
    # ECE = (|1 - 0.9| + |0 - 0.8| + |1 - 0.7| + |1 - 0.6|) / 4 = 1.6 / 4
    gold = np.array([0, 1, 1, 1])
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])
    out = expected_calibration_error(gold, probs)
    assert out["ece"] == pytest.approx(0.4)
    assert sum(b["count"] for b in out["bins"]) == 4
    # two examples sharing the (0.8, 0.9] bin: confidences 0.82 and 0.88, one right: |0.5 - 0.85| = 0.35
    shared = expected_calibration_error(np.array([0, 1]), np.array([[0.82, 0.18], [0.88, 0.12]]))
    assert shared["ece"] == pytest.approx(0.35)


def test_fit_temperature_matches_hand_computed_optima():
    from sentitune.metrics import fit_temperature, temperature_scale

    # Every example has logit margin 1 for class 1 and 3 of 4 are class 1: the NLL-optimal probability
    # is 3/4, so sigmoid(1 / T) = 3/4, T = 1 / ln 3.
    logits = np.array([[0.0, 1.0]] * 4)
    gold = np.array([1, 1, 1, 0])
    t = fit_temperature(logits, gold)
    assert t == pytest.approx(1 / math.log(3), rel=1e-5)
    assert temperature_scale(logits, t)[0, 1] == pytest.approx(0.75, rel=1e-5)
    # Already calibrated (margin ln 3 and 3 of 4 right): T = 1.
    assert fit_temperature(np.array([[0.0, math.log(3)]] * 4), gold) == pytest.approx(1.0, rel=1e-5)
    # Overconfident (margin 4, half right): the optimum sends the probability to 1/2, T to the upper bound.
    assert fit_temperature(np.array([[0.0, 4.0]] * 4), np.array([1, 1, 0, 0])) == pytest.approx(20.0, rel=1e-4)
    # Everything right: NLL falls as T falls, so the fit runs to the lower bound (where the NLL is flat
    # to float precision) instead of to 0.
    assert 0.05 <= fit_temperature(np.array([[0.0, 2.0], [3.0, 0.0]]), np.array([1, 0])) < 0.06
    assert fit_temperature(np.zeros((0, 2)), np.zeros(0, dtype=int)) == 1.0


def test_fit_temperature_agrees_with_a_grid_search_on_three_classes():
    from sentitune.metrics import fit_temperature, softmax

    rng = np.random.default_rng(0)
    gold = rng.integers(0, 3, size=200)
    logits = rng.normal(size=(200, 3)) * 2
    logits[np.arange(200), gold] += 2.5  # informative but overconfident logits

    def nll(t: float) -> float:
        p = softmax(logits / t)
        return float(-np.log(p[np.arange(200), gold]).mean())

    grid = np.linspace(0.2, 5.0, 4801)
    best = grid[np.argmin([nll(t) for t in grid])]
    fitted = fit_temperature(logits, gold)
    assert fitted == pytest.approx(best, abs=2e-3)
    assert nll(fitted) <= nll(1.0)


def test_temperature_scaling_keeps_the_argmax_and_log_probabilities_round_trip():
    from sentitune.metrics import log_probabilities, softmax, temperature_scale

    rng = np.random.default_rng(1)
    logits = rng.normal(size=(50, 4)) * 3
    for t in (0.3, 1.0, 2.5):
        scaled = temperature_scale(logits, t)
        assert (scaled.argmax(axis=1) == logits.argmax(axis=1)).all()
        np.testing.assert_allclose(scaled.sum(axis=1), 1.0)
    # a model that gives only probabilities is scaled through their logs, with the same result
    probs = softmax(logits)
    np.testing.assert_allclose(temperature_scale(log_probabilities(probs), 2.0), temperature_scale(logits, 2.0))
    np.testing.assert_allclose(softmax(log_probabilities(probs)), probs)
    with pytest.raises(ValueError, match="positive"):
        temperature_scale(logits, 0.0)
