"""compare --tune and --train-sizes: the equal-budget search on the validation slice, nested learning-curve
subsets, and the results fields they add."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from sentitune import compare, tuning
from sentitune.config import TUNABLE_KNOBS, ConfigError, RunConfig
from sentitune.data import nested_stratified_order, nested_subset
from sentitune.methods import registry
from sentitune.training import train


def test_every_tunable_knob_has_a_grid_and_a_method():
    assert set(tuning.KNOB_GRIDS) | {"learning_rate"} == set(TUNABLE_KNOBS)
    owners = {knob for name in registry.names() for knob in registry.get(name).tunable_knobs}
    assert owners <= set(TUNABLE_KNOBS)
    assert set(TUNABLE_KNOBS) <= owners


def test_learning_rate_grid_is_log_spaced_around_the_default():
    grid = tuning.learning_rate_grid(1e-3, 5)
    assert grid[2] == 1e-3 and grid[0] == 2.5e-4 and grid[-1] == 4e-3
    ratios = np.diff(np.log(grid))
    assert np.allclose(ratios, ratios[0], rtol=0.05)
    assert tuning.learning_rate_grid(1e-3, 1) == [1e-3]


def test_search_space_holds_only_the_knobs_a_method_has():
    assert set(tuning.search_space("lora", 1e-3, ["learning_rate", "lora_r"], 4)) == {"learning_rate", "lora_r"}
    assert set(tuning.search_space("full", 5e-5, ["learning_rate", "lora_r"], 4)) == {"learning_rate"}
    assert tuning.search_space("tfidf", 0.0, ["learning_rate"], 4) == {}


def _fake(scores):
    seen = []

    def evaluate(number, params):
        seen.append(params)
        return tuning.TrialOutcome(scores(params), "ok", f"trial-{number}")

    return evaluate, seen


def test_grid_search_visits_every_point_once_and_selects_the_validation_best(tmp_path):
    space = {"learning_rate": tuning.learning_rate_grid(1e-3, 5)}
    evaluate, seen = _fake(lambda p: -abs(np.log(p["learning_rate"] / 2e-3)))
    record = tuning.run_search("s", space, 5, evaluate, f"sqlite:///{tmp_path / 'o.db'}")
    assert sorted(p["learning_rate"] for p in seen) == sorted(space["learning_rate"])
    assert record["budget"] == 5 and len(record["trials"]) == 5 and record["scored_on"] == "validation"
    best = max(record["trials"], key=lambda t: t["validation_accuracy"])
    assert record["selected"] == best["params"] == {"learning_rate": 0.002}
    # Run again on the same storage: the search is finished, nothing is evaluated again.
    again, seen_again = _fake(lambda p: 0.0)
    assert tuning.run_search("s", space, 5, again, f"sqlite:///{tmp_path / 'o.db'}")["selected"] == {
        "learning_rate": 0.002
    }
    assert seen_again == []


def test_a_search_killed_mid_trial_retries_that_trial_without_spending_budget(tmp_path):
    import optuna

    storage = f"sqlite:///{tmp_path / 'o.db'}"
    space = {"learning_rate": [1e-4, 1e-3, 1e-2]}
    study = optuna.create_study(
        study_name="s", storage=storage, sampler=optuna.samplers.GridSampler(space, seed=0), direction="maximize"
    )
    done = study.ask()
    done_lr = done.suggest_categorical("learning_rate", space["learning_rate"])
    study.tell(done, 0.5)  # better than any value the fake below gives
    killed = study.ask()  # a trial whose process died: never told
    killed_lr = killed.suggest_categorical("learning_rate", space["learning_rate"])
    evaluate, seen = _fake(lambda p: p["learning_rate"])
    record = tuning.run_search("s", space, 3, evaluate, storage)
    assert seen[0] == {"learning_rate": killed_lr}  # the interrupted values come first
    assert len(seen) == 2 and len(record["trials"]) == 3  # budget: 3 finished trials, the killed one not counted
    assert {killed_lr, done_lr} | {p["learning_rate"] for p in seen} == set(space["learning_rate"])
    assert record["selected"] == {"learning_rate": done_lr}


def test_failed_trials_count_and_are_never_selected(tmp_path):
    space = {"learning_rate": [1e-4, 1e-3]}

    def evaluate(number, params):
        failed = params["learning_rate"] == 1e-3
        return tuning.TrialOutcome(
            None if failed else 0.6, "failed" if failed else "ok", "x", "diverged" if failed else None
        )

    record = tuning.run_search("s", space, 2, evaluate, f"sqlite:///{tmp_path / 'o.db'}")
    assert len(record["trials"]) == 2 and record["selected"] == {"learning_rate": 1e-4}
    assert [t.get("error") for t in record["trials"] if t["status"] == "failed"] == ["diverged"]


def test_learning_curve_subsets_are_nested_and_stratified():
    labels = [0] * 700 + [1] * 300
    small, large = nested_subset(labels, 250, seed=3), nested_subset(labels, 500, seed=3)
    assert set(small) < set(large)
    for subset, size in ((small, 250), (large, 500)):
        counts = Counter(labels[i] for i in subset)
        assert len(subset) == size and abs(counts[1] - 0.3 * size) <= 1
    assert not np.array_equal(nested_stratified_order(labels, 3), nested_stratified_order(labels, 4))


def test_tuning_bad_input_gets_one_line(tiny_config):
    tiny_config = tiny_config()
    with pytest.raises(
        ConfigError, match=r"compare.tune: unknown knob 'lora_rank'; tunable method knobs: learning_rate"
    ):
        tiny_config.override({"compare.tune": ["lora_rank"]})
    with pytest.raises(ConfigError, match="compare.tune_sampler"):
        tiny_config.override({"compare.tune": ["learning_rate"], "compare.tune_sampler": "random"})
    with pytest.raises(ConfigError, match="compare.train_sizes: each must be a count >= 1 or 'all'"):
        tiny_config.override({"compare.train_sizes": [0]})
    too_big = tiny_config.override({"compare.methods": ["tfidf"], "compare.train_sizes": [40, 10_000]})
    with pytest.raises(ConfigError, match=r"compare.train_sizes: 10000 is more than the 48 training examples"):
        compare.run_comparison(too_big, "unused-never-created", echo=lambda *_: None)
    other = tiny_config.override({"compare.methods": ["tfidf"], "compare.reference": "lora"})
    with pytest.raises(ConfigError, match="compare.reference: 'lora' is not a variant here"):
        compare.run_comparison(other, "unused-never-created", echo=lambda *_: None)


def test_a_selection_only_run_never_opens_the_test_file(tiny_model_dir, tiny_data, tmp_path):
    from conftest import make_tiny_config

    cfg = make_tiny_config(tiny_model_dir, {**tiny_data, "test": tmp_path / "absent.csv"}, method="full")
    metrics = train(cfg, tmp_path / "trial", selection_only=True)
    assert metrics["evaluated_split"] == "validation" and 0 <= metrics["validation_final_accuracy"] <= 1
    assert not [key for key in metrics if key.startswith("test_")]
    with pytest.raises(Exception, match="absent.csv"):
        train(cfg, tmp_path / "real")


@pytest.mark.slow
def test_compare_tunes_every_variant_on_validation_then_runs_the_selection(tiny_model_dir, tiny_data, tmp_path):
    """The done-when shape in miniature: 2 trials per variant per size, test never read by a trial, the
    selected learning rate is the one the seeds ran with, and pairs never cross training-set sizes."""
    from conftest import make_tiny_config

    base = make_tiny_config(tiny_model_dir, tiny_data).override(
        {
            "compare.methods": ["full", "tfidf"],
            "compare.seeds": [7],
            "compare.tune": ["learning_rate"],
            "compare.tune_trials": 2,
            "compare.train_sizes": [24, "all"],
            "compare.suites": [],
        }
    )
    shown: list[str] = []
    progress = compare.LineProgress(echo=shown.append, every_s=0.0)
    document = compare.run_comparison(base, tmp_path, echo=lambda *_: None, progress=progress)
    assert [r["status"] for r in document["runs"]] == ["ok"] * 4
    # every trial shows its steps, as the final runs do
    for cell in ("full@24", "full@all"):
        for number in (0, 1):
            assert any(line.strip().startswith(f"{cell} trial {number}: step ") for line in shown), (cell, number)
    assert {r["variant"] for r in document["runs"]} == {"full@24", "full@all", "tfidf@24", "tfidf@all"}
    for cell in ("full@24", "full@all"):
        search = document["search"][cell]
        assert search["budget"] == 2 and len(search["trials"]) == 2 and search["scored_on"] == "validation"
        for trial in search["trials"]:
            metrics = json.loads((tmp_path / trial["run_dir"] / "metrics.json").read_text())
            assert metrics["evaluated_split"] == "validation" and not any(k.startswith("test_") for k in metrics)
        (run,) = [r for r in document["runs"] if r["variant"] == cell]
        assert run["learning_rate"] == search["selected"]["learning_rate"]
    assert document["search"]["tfidf@24"]["budget"] == 0
    examples = {r["variant"]: r["train_examples"] for r in document["runs"]}
    assert examples["full@24"] == 24 and examples["full@all"] == 48
    assert all(t["train_size"] in (24, "all") for t in document["pairwise"])
    assert {(t["a"], t["b"]) for t in document["pairwise"]} == {("full@24", "tfidf@24"), ("full@all", "tfidf@all")}
    assert set(document["learning_curve"]) == {"full", "tfidf"}
    assert document["learning_curve"]["full"]["within_reference_from"] == 24
    assert [p["train_size"] for p in document["learning_curve"]["tfidf"]["points"]] == [24, "all"]
    saved = RunConfig.from_yaml(tmp_path / "runs" / "full@24-s7" / "config.yaml")
    assert saved.data.train_subset == 24


def _entry(variant, accuracy, memory, seconds, speed=500.0, checkpoint=10.0):
    return {
        "variant": variant,
        "n_seeds": 3,
        "train_size": None,
        "test_accuracy_mean": accuracy,
        "peak_memory_mib_mean": memory,
        "train_runtime_seconds_mean": seconds,
        "eval_samples_per_second_mean": speed,
        "checkpoint_size_mib_mean": checkpoint,
    }


def _test(a, b, difference, p_holm, half_width=0.01):
    from sentitune.metrics import is_significant

    low, high = difference - half_width, difference + half_width
    return {
        "a": a,
        "b": b,
        "difference": difference,
        "difference_ci95_low": low,
        "difference_ci95_high": high,
        "p_holm": p_holm,
        "significant": is_significant(p_holm, low, high),
    }


def test_recommendation_picks_the_cheapest_variant_not_significantly_worse():
    summary = [_entry("full", 0.880, 1000, 600), _entry("lora", 0.876, 620, 500), _entry("tfidf", 0.80, 50, 5)]
    pairwise = [
        _test("full", "lora", 0.004, 0.40),
        _test("full", "tfidf", 0.08, 1e-6),
        _test("lora", "tfidf", 0.076, 1e-6),
    ]
    chosen = compare.recommend(summary, pairwise, {})
    assert chosen["recommended"] == "lora" and chosen["contenders"] == ["full", "lora"]
    assert "within 0.4 points of full" in chosen["reason"] and "Holm p = 0.4 (not significant)" in chosen["reason"]
    assert "38% less peak memory" in chosen["reason"] and "17% less training time" in chosen["reason"]
    assert chosen["pareto_optimal"] == ["full", "lora", "tfidf"]
    # p < 0.05 but a CI that spans 0 (seeds disagree): not significant, lora still wins.
    pairwise[0] = _test("full", "lora", 0.004, 0.01)
    assert compare.recommend(summary, pairwise, {})["recommended"] == "lora"
    # A significant gap (p and CI agree): the most accurate one is recommended, with its evidence.
    pairwise[0] = _test("full", "lora", 0.004, 0.01, half_width=0.003)
    chosen = compare.recommend(summary, pairwise, {})
    assert chosen["recommended"] == "full" and "significantly more accurate" in chosen["reason"]
    # The most accurate is also the cheapest contender: the sentence names the close ones.
    summary[0]["peak_memory_mib_mean"] = 400
    pairwise[0] = _test("full", "lora", 0.004, 0.40)
    chosen = compare.recommend(summary, pairwise, {})
    assert chosen["recommended"] == "full" and "also the cheapest" in chosen["reason"]
    assert "lora -0.4 points [CI -1.4, +0.6], Holm p = 0.4" in chosen["reason"]


def test_budgets_filter_and_none_met_names_the_closest():
    summary = [_entry("full", 0.88, 1000, 600), _entry("lora", 0.87, 620, 500), _entry("tfidf", 0.80, 50, 5)]
    pairwise = [
        _test("full", "lora", 0.01, 0.01),
        _test("full", "tfidf", 0.08, 1e-6),
        _test("lora", "tfidf", 0.07, 1e-6),
    ]
    assert compare.recommend(summary, pairwise, {"max_train_memory_mib": 700})["recommended"] == "lora"
    assert compare.recommend(summary, pairwise, {"max_train_minutes": 1})["recommended"] == "tfidf"
    none = compare.recommend(summary, pairwise, {"max_train_memory_mib": 40})
    assert none["recommended"] is None and none["closest"] == "tfidf"
    assert (
        "no variant meets the budgets; the closest is tfidf (50.0 MiB peak training memory against at most 40)"
        in (none["reason"])
    )


def test_pareto_front_against_hand_cases():
    from sentitune.metrics import pareto_front

    points = [(0.9, 100.0), (0.9, 200.0), (0.8, 50.0), (0.7, 60.0), (float("nan"), 1.0)]
    assert pareto_front(points, (True, False)) == [0, 2]
    assert pareto_front([(1.0, 1.0), (1.0, 1.0)], (True, True)) == [0, 1]  # ties dominate neither


def test_seeds_that_all_score_the_same_get_the_test_sets_interval_not_a_zero_width_one():
    from sentitune.metrics import seed_summary

    correct = [1] * 75 + [0] * 25
    same = seed_summary([0.75, 0.75], correct)
    assert same["ci_method"] == "bootstrap over test examples (all 2 seeds scored the same)"
    assert same["ci95_low"] < 0.7 and same["ci95_high"] > 0.8
    assert seed_summary([0.74, 0.76], correct)["ci_method"] == "t over 2 seeds"
