"""Statistics checked against hand-computed cases."""

import math

import numpy as np
import pytest

from sentitune.metrics import (bootstrap_ci, classification_metrics, confusion_matrix, expected_calibration_error,
                               mcnemar, wilson_interval)


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
