"""Equal-budget hyperparameter search for `compare --tune`, scored on the validation slice only.

Every tuned variant gets the same number of trials over its own search space, built around its
method's defaults (`search_space`). Optuna is the engine: its grid sampler by default (equal coverage:
with the learning rate alone, N trials visit exactly the N grid points), TPE on request. The study
lives in an Optuna storage (SQLite in the comparison folder by default, or any URL Optuna accepts), so
a search resumes where it stopped and can be shared across machines.

This module decides what to try and what was best; running a trial (a `sentitune train
--selection-only` child that never reads test) is compare's job, passed in as `evaluate`.

Example:
    >>> space = search_space("lora", 1e-3, ["learning_rate"], trials=3)
    >>> space["learning_rate"]
    [0.00025, 0.001, 0.004]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from sentitune.methods import registry


# Knob (config.TUNABLE_KNOBS) -> the values a grid tries; learning_rate's grid is built per method
# around its default. Which methods use a knob: Method.tunable_knobs. Only method knobs: everything
# else is the comparison's scaffolding, which every variant shares and no search may move.
KNOB_GRIDS: dict[str, list[Any]] = {
    "lora_r": [4, 8, 16, 32],
    "lora_alpha": [8, 16, 32, 64],
    "lora_dropout": [0.0, 0.05, 0.1, 0.2],
    "layer_lr_decay": [0.7, 0.8, 0.9, 1.0],
    "prefix_tokens": [5, 10, 20, 40],
    "setfit_pairs": [250, 500, 1000, 2000],
    "setfit_epochs": [1, 2, 3],
}
LEARNING_RATE_SPAN = 4.0
"""The learning-rate grid spans the method's default divided and multiplied by this factor."""


def _round(value: float) -> float:
    return float(f"{value:.2g}")


def learning_rate_grid(default: float, trials: int) -> list[float]:
    """`trials` learning rates, evenly spaced in log between default / 4 and default x 4 (2 significant
    digits); the default itself is on the grid when `trials` is odd.

    Example:
        >>> learning_rate_grid(5e-5, 5)
        [1.3e-05, 2.5e-05, 5e-05, 0.0001, 0.0002]
    """
    if trials == 1:
        return [default]
    exponents = [-1 + 2 * i / (trials - 1) for i in range(trials)]
    return [_round(default * LEARNING_RATE_SPAN**e) for e in exponents]


def method_knobs_tuned(method: str, knobs: list[str]) -> list[str]:
    """The requested knobs that `method` has (a knob another method owns is not searched here)."""
    own = registry.get(method).tunable_knobs
    return [k for k in knobs if k in own]


def search_space(method: str, default_learning_rate: float, knobs: list[str], trials: int) -> dict[str, list]:
    """Grid values per knob that `method` uses; empty when the method has none of `knobs` (tfidf, which
    picks its own C on the validation slice)."""
    space: dict[str, list] = {}
    for knob in method_knobs_tuned(method, knobs):
        space[knob] = (
            learning_rate_grid(default_learning_rate, trials) if knob == "learning_rate" else list(KNOB_GRIDS[knob])
        )
    return space


@dataclass
class TrialOutcome:
    value: float | None
    """Validation accuracy of the trial's final model; None when the trial failed."""
    status: str
    run_dir: str
    error: str | None = None


def run_search(
    study_name: str,
    space: dict[str, list],
    trials: int,
    evaluate: Callable[[int, dict[str, Any]], TrialOutcome],
    storage: str,
    sampler: str = "grid",
    seed: int = 0,
) -> dict[str, Any]:
    """Runs (or resumes) one variant's search until `trials` trials have finished, and returns its
    record: the trials, their validation scores, the selected values and the budget.

    A trial left RUNNING by a killed search is marked failed and its parameters are tried again first;
    it does not count against the budget. A trial whose training failed does count (it was a real
    outcome of those values). Ties go to the earliest trial.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # a failed trial is reported by compare
    if sampler == "grid":
        chosen = optuna.samplers.GridSampler(space, seed=seed)
    else:
        chosen = optuna.samplers.TPESampler(seed=seed)
    study = optuna.create_study(
        study_name=study_name, storage=storage, sampler=chosen, direction="maximize", load_if_exists=True
    )
    for stale in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        # Through the storage, not study.tell: a sampler's after_trial hook may only run inside optimize.
        study._storage.set_trial_user_attr(stale._trial_id, "interrupted", True)
        study._storage.set_trial_state_values(stale._trial_id, state=optuna.trial.TrialState.FAIL)
        # The same values again, first (what enqueue_trial does), keeping the grid sampler's grid_id.
        retry = {**stale.system_attrs, "fixed_params": dict(stale.params)}
        study.add_trial(
            optuna.trial.create_trial(
                state=optuna.trial.TrialState.WAITING,
                params=stale.params,
                distributions=stale.distributions,
                system_attrs=retry,
            )
        )

    def counted() -> list:
        return [
            t for t in study.get_trials(deepcopy=False) if t.state.is_finished() and not t.user_attrs.get("interrupted")
        ]

    def objective(trial) -> float:
        params = {knob: _suggest(trial, knob, values, sampler) for knob, values in space.items()}
        try:
            outcome = evaluate(trial.number, params)
        except BaseException:
            trial.set_user_attr("interrupted", True)  # Ctrl-C or a crash of compare itself: tried again later
            raise
        trial.set_user_attr("run_dir", outcome.run_dir)
        trial.set_user_attr("status", outcome.status)
        if outcome.error:
            trial.set_user_attr("error", outcome.error[:500])
        return outcome.value if outcome.value is not None else math.nan  # NaN: optuna records a failed trial

    # The grid sampler ends a study whose grid is exhausted: a grid smaller than the budget caps it.
    budget = min(trials, math.prod(len(v) for v in space.values())) if sampler == "grid" else trials
    remaining = budget - len(counted())
    if remaining > 0:
        study.optimize(objective, n_trials=remaining)
    finished = counted()
    record_trials = [
        {
            "number": t.number,
            "params": dict(t.params),
            "validation_accuracy": t.value,
            "status": t.user_attrs.get("status", t.state.name.lower()),
            "run_dir": t.user_attrs.get("run_dir"),
            **({"error": t.user_attrs["error"]} if "error" in t.user_attrs else {}),
        }
        for t in finished
    ]
    scored = [t for t in record_trials if t["validation_accuracy"] is not None]
    best = max(scored, key=lambda t: (t["validation_accuracy"], -t["number"])) if scored else None
    return {
        "study": study_name,
        "sampler": sampler,
        "budget": trials,
        "trials_run": len(finished),
        "space": space,
        "scored_on": "validation",
        "trials": record_trials,
        "selected": dict(best["params"]) if best else None,
        "selected_validation_accuracy": best["validation_accuracy"] if best else None,
    }


def _suggest(trial, knob: str, values: list, sampler: str):
    # TPE searches the learning rate continuously over the grid's range; everything else, and every
    # knob under the grid sampler, is a choice among the grid's values.
    if sampler == "tpe" and knob == "learning_rate":
        return trial.suggest_float(knob, min(values), max(values), log=True)
    return trial.suggest_categorical(knob, values)
