"""The logistic-regression head of the methods that fit one (tfidf, embed, setfit): one fit per C on the
training features, the C with the best validation accuracy kept, and the fitted weights as logits."""

from __future__ import annotations

import numpy as np


def select_logistic_regression(train_x, train_y, validation_x, validation_y, c_grid, seed: int):
    """Fits scikit-learn's LogisticRegression once per C in `c_grid` on the training features and keeps
    the one with the best validation accuracy (the first of equals, in grid order): the analogue of
    best-checkpoint selection, and nothing here reads test.

    Returns:
        (the kept model, its C, one history row per C: {"C", "eval_accuracy"}).

    Example:
        >>> x = np.array([[0.0], [1.0], [0.1], [0.9]])
        >>> model, c, history = select_logistic_regression(x, [0, 1, 0, 1], x, [0, 1, 0, 1], [0.1, 10.0], 0)
        >>> c, [row["eval_accuracy"] for row in history]  # both separate the classes: the first of equals
        (0.1, [1.0, 1.0])
    """
    from sklearn.linear_model import LogisticRegression

    validation_y = np.asarray(validation_y)
    best, history = None, []
    for c in c_grid:
        model = LogisticRegression(C=c, max_iter=2000, random_state=seed)
        model.fit(train_x, train_y)
        accuracy = float((model.predict(validation_x) == validation_y).mean())
        history.append({"C": c, "eval_accuracy": accuracy})
        if best is None or accuracy > best[0]:
            best = (accuracy, c, model)
    _, c, model = best
    return model, c, history


def logit_weights(coef: np.ndarray, intercept: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(weight, bias) of a linear layer whose softmax equals the logistic regression's probabilities.

    A binary logistic regression keeps one row, the log-odds of class 1; as two logits [0, w.x + b] its
    softmax is [1 - sigmoid, sigmoid]. A multinomial one already has a row per class.

    Example:
        >>> weight, bias = logit_weights(np.array([[2.0, -1.0]]), np.array([0.5]), 2)
        >>> weight.tolist(), bias.tolist()
        ([[0.0, 0.0], [2.0, -1.0]], [0.0, 0.5])
    """
    coef, intercept = np.asarray(coef, dtype=np.float32), np.asarray(intercept, dtype=np.float32)
    if coef.shape[0] == 1 and num_classes == 2:
        return np.concatenate([np.zeros_like(coef), coef]), np.concatenate([np.zeros_like(intercept), intercept])
    if coef.shape[0] != num_classes:
        raise ValueError(f"the logistic regression has {coef.shape[0]} rows for {num_classes} classes")
    return coef, intercept
