"""Error analysis: pure functions on hand-made probabilities (2 and 8 classes), then the analyze and
evaluate commands on tiny trained runs."""

from __future__ import annotations

import csv
import json
import shutil
import sys

import numpy as np
import pytest
from conftest import make_tiny_config

from sentitune import analysis
from sentitune.analysis import (
    NEGATION_PAIRS,
    Predictions,
    check_same_examples,
    compare_predictions,
    confident_learning_rule,
    errors_by_class,
    likely_label_errors,
    negation_probe,
    parse_slices,
    slice_masks,
    slice_table,
)
from sentitune.config import ConfigError
from sentitune.metrics import confusion_matrix, wilson_interval
from sentitune.results import RunFolderError


NAMES = ["negative", "positive"]


def strict_json(path):
    """json.loads that refuses NaN/Infinity, which strict readers (browsers, jq) reject."""

    def refuse(value):
        raise ValueError(f"non-standard JSON constant {value}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


# ---- slices -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "it is n't funny",
        "the plot does n't work",
        "you ca n't miss it",
        "i wo n't watch it again",
        "isn't good",
        "not a good film",
        "no laughs",
        "never dull",
        "nothing works",
        "nobody cares",
        "none of it lands",
        "neither funny nor sad",
        "without charm",
        "hardly a classic",
        "barely watchable",
        "i dont care",
        "it cannot hold",
        "couldn’t care less",
    ],
)
def test_negation_slice_covers_sst_and_plain_forms(text):
    assert slice_masks([text])["negation"]["mask"][0]


@pytest.mark.parametrize(
    "text",
    [
        "a notable film",
        "knotty and smart",
        "another winner",
        "the nonsense is fun",
        "it knows its audience",
        "snow falls",
    ],
)
def test_negation_slice_ignores_words_that_only_contain_a_cue(text):
    assert not slice_masks([text])["negation"]["mask"][0]


def test_contrast_and_length_buckets():
    texts = [
        "good but long",
        "although slow , it works",
        "fine",
        " ".join(["w"] * 10),
        " ".join(["w"] * 11),
        " ".join(["w"] * 20),
        " ".join(["w"] * 21),
        " ".join(["w"] * 30),
        " ".join(["w"] * 31),
    ]
    masks = slice_masks(texts)
    assert masks["contrast"]["mask"].tolist()[:3] == [True, True, False]
    bucket = {
        name: np.flatnonzero(masks[name]["mask"]).tolist()
        for name in ("length <=10", "length 11-20", "length 21-30", "length >30")
    }
    assert bucket == {"length <=10": [0, 1, 2, 3], "length 11-20": [4, 5], "length 21-30": [6, 7], "length >30": [8]}
    # every example falls in exactly one length bucket
    assert sum(masks[name]["mask"].astype(int) for name in bucket).tolist() == [1] * len(texts)


def test_slice_table_counts_and_wilson_intervals():
    texts = ["not good", "not bad", "great", "awful", "fine but slow"]
    rows = {row["slice"]: row for row in slice_table(texts, np.array([1, 0, 1, 1, 0]), {"ends_t": r"t$"})}
    assert rows["all"]["count"] == 5 and rows["all"]["accuracy"] == pytest.approx(0.6)
    assert rows["negation"]["count"] == 2 and rows["negation"]["accuracy"] == 0.5
    assert (rows["negation"]["ci95_low"], rows["negation"]["ci95_high"]) == pytest.approx(wilson_interval(1, 2))
    assert rows["ends_t"]["count"] == 1 and rows["ends_t"]["kind"] == "custom"  # "great"
    assert rows["length >30"]["count"] == 0 and np.isnan(rows["length >30"]["accuracy"])


@pytest.mark.parametrize(
    "spec, message",
    [
        ("nameonly", "NAME=REGEX"),
        ("x=(", "invalid regular expression"),
        ("negation=foo", "already used"),
        ("=foo", "NAME=REGEX"),
    ],
)
def test_parse_slices_rejects_bad_specs(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_slices([spec])


def test_parse_slices_keeps_equals_signs_inside_the_regex():
    assert parse_slices(["eq=a=b"]) == {"eq": "a=b"}


# ---- per-example views ------------------------------------------------------------------------


def random_probabilities(n: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    gold = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), gold] += 1.5  # mostly right, with real mistakes
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return gold, probs


def test_errors_by_class_is_multiclass_aware():
    gold, probs = random_probabilities(300, 8)
    names = [str(i) for i in range(1, 9)]
    matrix = confusion_matrix(gold, probs.argmax(axis=1), 8)
    out = errors_by_class(gold, probs, names, limit=3)
    assert [entry["label"] for entry in out] == names
    for c, entry in enumerate(out):
        assert entry["false_positive_count"] == matrix[:, c].sum() - matrix[c, c]
        assert entry["false_negative_count"] == matrix[c, :].sum() - matrix[c, c]
        assert len(entry["false_positives"]) <= 3
        listed = entry["false_positives"]
        confidence = probs.max(axis=1)
        assert all(confidence[a] >= confidence[b] for a, b in zip(listed, listed[1:]))


def test_binary_errors_list_the_positive_class_once():
    gold = np.array([0, 0, 1, 1])
    probs = np.array([[0.2, 0.8], [0.9, 0.1], [0.7, 0.3], [0.1, 0.9]])
    (entry,) = errors_by_class(gold, probs, NAMES, limit=5)
    assert entry["label"] == "positive"
    assert entry["false_positives"] == [0] and entry["false_negatives"] == [2]


def test_highest_loss_and_ambiguous():
    gold = np.array([0, 1, 0, 1])
    probs = np.array([[0.51, 0.49], [0.99, 0.01], [0.2, 0.8], [0.46, 0.54], [0.3, 0.7]])
    gold = np.append(gold, 1)
    assert analysis.highest_loss(gold, probs, 2).tolist() == [1, 2]  # the confident mistakes
    assert analysis.ambiguous(probs, 10).tolist() == [0, 3]  # margins 0.02, 0.08; 0.4 is not ambiguous
    assert analysis.ambiguous(probs, 1).tolist() == [0]


def test_confident_learning_rule_flags_the_planted_label_errors():
    rng = np.random.default_rng(1)
    gold = np.repeat([0, 1], 50)
    p_positive = np.where(gold == 1, rng.uniform(0.75, 0.95, 100), rng.uniform(0.05, 0.25, 100))
    planted = [3, 17, 60]
    p_positive[planted] = [0.97, 0.98, 0.03]  # confidently the other class: mislabelled
    probs = np.column_stack([1 - p_positive, p_positive])
    flagged, thresholds = confident_learning_rule(gold, probs)
    assert sorted(flagged.tolist()) == planted
    assert thresholds[0] == pytest.approx(probs[gold == 0, 0].mean())
    out = likely_label_errors(gold, probs, method="auto")
    assert out["method"].startswith("cleanlab")
    assert set(planted) <= set(out["indices"])


def test_label_errors_fall_back_to_the_rule_without_cleanlab(monkeypatch):
    monkeypatch.setitem(sys.modules, "cleanlab.filter", None)  # makes the import fail
    gold, probs = random_probabilities(60, 2)
    out = likely_label_errors(gold, probs)
    assert out["method"] == "confident-learning rule" and "not installed" in out["note"]
    assert out["indices"] == confident_learning_rule(gold, probs)[0].tolist()


def test_analyze_predictions_with_eight_classes(tmp_path):
    gold, probs = random_probabilities(200, 8, seed=3)
    names = [str(i) for i in range(1, 9)]
    texts = [f"review {i} is {'not ' if i % 3 == 0 else ''}great" for i in range(200)]
    p = Predictions(texts, gold, probs, names, source=tmp_path)
    out = analysis.write_analysis(tmp_path / "out", p, top_k=5, probe=False)
    assert len(out["per_class"]) == 8
    assert np.array(out["confusion_matrix"]["rows_gold_columns_predicted"]).sum() == 200
    assert out["negation_probe"]["status"] == "skipped"
    saved = strict_json(tmp_path / "out" / "analysis.json")
    assert saved["overall"]["accuracy"] == pytest.approx((probs.argmax(axis=1) == gold).mean())
    from PIL import Image

    assert Image.open(tmp_path / "out" / "confusion.png").size[0] > 300


# ---- comparison and probe ---------------------------------------------------------------------


def test_compare_predictions_counts_disagreements_per_slice():
    texts = ["not good", "good", "not bad", "bad"]
    a = Predictions(texts, [0, 1, 1, 0], [[0.9, 0.1], [0.1, 0.9], [0.3, 0.7], [0.8, 0.2]], NAMES)
    b = Predictions(texts, [0, 1, 1, 0], [[0.2, 0.8], [0.1, 0.9], [0.6, 0.4], [0.8, 0.2]], NAMES)
    out = compare_predictions(a, b)
    rows = {row["slice"]: row for row in out["slices"]}
    assert (rows["all"]["a_only_correct"], rows["all"]["b_only_correct"]) == (2, 0)
    assert rows["negation"]["count"] == 2 and rows["negation"]["difference_points"] == pytest.approx(100)
    assert rows["all"]["p_value"] == pytest.approx(0.5) and not rows["all"]["significant"]
    assert [r["text"] for r in out["a_right_b_wrong"]] == ["not good", "not bad"]


def test_one_meaning_of_correct_argmax_with_ties_broken_by_the_stored_pred(tmp_path):
    from sentitune import results

    probabilities = [[0.5, 0.5], [0.5, 0.5], [0.3, 0.7], [0.6, 0.4]]
    # ties follow the stored pred column; a stored pred that is not the maximum is overruled by the argmax
    p = Predictions(["a", "b", "c", "d"], [1, 0, 1, 0], probabilities, NAMES, stored_pred=np.array([1, 0, 0, -1]))
    assert p.predicted.tolist() == [1, 0, 1, 0] and p.correct.all()
    assert Predictions(["a"], [1], [[0.5, 0.5]], NAMES).predicted.tolist() == [0]  # nothing stored: first class
    # the reader fills stored_pred from the file, and compare's correctness is the same array
    folder = tmp_path / "evaluation"
    folder.mkdir()
    (folder / "predictions.csv").write_text(
        "id,text,gold,pred,prob_negative,prob_positive\n"
        "0,tie,positive,positive,0.5,0.5\n"
        "1,plain,negative,negative,0.9,0.1\n"
        "2,wrong,negative,positive,0.2,0.8\n",
        encoding="utf-8",
    )
    read = results.load_predictions(folder)
    assert read.label_names == NAMES and read.stored_pred.tolist() == [1, 0, 1]
    assert read.correct.tolist() == [True, True, False]
    assert analysis.load_predictions is results.load_predictions and analysis.Predictions is results.Predictions


def test_comparison_refuses_different_test_texts_and_names_the_row():
    a = Predictions(["x", "y", "z"], [0, 1, 0], np.full((3, 2), 0.5), NAMES, source="runA")
    b = Predictions(["x", "y", "w"], [0, 1, 0], np.full((3, 2), 0.5), NAMES, source="runB")
    with pytest.raises(RunFolderError, match=r"differ at row 3 .*'z' vs 'w'"):
        check_same_examples(a, b)
    shorter = Predictions(["x", "y"], [0, 1], np.full((2, 2), 0.5), NAMES, source="runC")
    with pytest.raises(RunFolderError, match="row 3"):
        check_same_examples(a, shorter)


def test_negation_pairs_are_minimal_pairs_the_slice_rule_sees():
    assert 38 <= len(NEGATION_PAIRS) <= 50
    assert any(" n't" in negated for _, negated, _ in NEGATION_PAIRS)  # SST tokenisation represented
    for sentence, negated, label in NEGATION_PAIRS:
        assert label in NAMES
        masks = slice_masks([sentence, negated])["negation"]["mask"]
        assert masks.tolist() == [False, True], (sentence, negated)


def test_negation_probe_scores_flips():
    cue = slice_masks  # a "model" that reads the negation cue perfectly

    def understands(texts):
        negated = cue(texts)["negation"]["mask"]
        base_positive = {s: label == "positive" for s, n, label in NEGATION_PAIRS}
        base_positive.update({n: label == "positive" for s, n, label in NEGATION_PAIRS})
        positive = np.array([base_positive[t] != bool(flag) for t, flag in zip(texts, negated)])
        return np.column_stack([1 - positive, positive]).astype(float)

    perfect = negation_probe(understands, NAMES)
    assert perfect["status"] == "ok" and perfect["flipped_correctly"] == 1.0 and perfect["flipped"] == 1.0
    always_positive = negation_probe(lambda texts: np.tile([0.1, 0.9], (len(texts), 1)), NAMES)
    assert always_positive["flipped"] == 0.0 and always_positive["flipped_correctly"] == 0.0
    assert always_positive["by_direction"]["positive -> negative"]["sentence_accuracy"] == 1.0
    assert negation_probe(understands, ["1", "2", "3"])["status"] == "skipped"
    assert negation_probe(understands, ["0", "1"])["status"] == "skipped"


# ---- commands on tiny trained runs ------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tiny_data, tmp_path_factory):
    from sentitune.training import train

    folder = tmp_path_factory.mktemp("analysis-runs")
    out = {}
    for method in ("lora", "full"):
        cfg = make_tiny_config(tiny_model_dir, tiny_data, method, **{"train.max_steps": 3})
        train(cfg, folder / method)
        out[method] = folder / method
    return out


def run_cli(argv, capsys):
    from sentitune.cli import main

    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_analyze_writes_every_file(runs, tmp_path, capsys):
    out_dir = tmp_path / "an"
    code, stdout, _ = run_cli(
        [
            "analyze",
            str(runs["lora"]),
            "--top-k",
            "3",
            "--slice",
            "exclaim=!",
            "--slice",
            "superlative=\\bbest|worst\\b",
            "--output-dir",
            str(out_dir),
        ],
        capsys,
    )
    assert code == 0
    for name in ("analysis.json", "errors.csv", "slices.csv", "confusion.png", "reliability.png"):
        assert (out_dir / name).stat().st_size > 0, name
    saved = strict_json(out_dir / "analysis.json")
    assert saved["examples"] == 24 and saved["label_names"] == NAMES
    assert saved["negation_probe"]["status"] == "ok" and saved["negation_probe"]["pairs"] == len(NEGATION_PAIRS)
    assert len(saved["highest_loss"]) == 3
    with (out_dir / "slices.csv").open() as handle:
        slices = {row["slice"]: row for row in csv.DictReader(handle)}
    assert {"all", "negation", "contrast", "length <=10", "exclaim", "superlative"} <= set(slices)
    assert int(slices["superlative"]["count"]) > 0  # "the best/worst movie of the year"
    with (out_dir / "errors.csv").open() as handle:
        reasons = {row["reason"] for row in csv.DictReader(handle)}
    assert "highest_loss" in reasons
    assert "negation probe" in stdout and "slices" in stdout


def test_analyze_defaults_to_the_run_analysis_folder(runs, capsys):
    code, _, _ = run_cli(["analyze", str(runs["full"])], capsys)
    assert code == 0 and (runs["full"] / "analysis" / "analysis.json").exists()


def test_analyze_against_a_second_run(runs, tmp_path, capsys):
    code, stdout, _ = run_cli(
        ["analyze", str(runs["lora"]), "--against", str(runs["full"]), "--output-dir", str(tmp_path / "cmp")], capsys
    )
    assert code == 0
    comparison = strict_json(tmp_path / "cmp" / "comparison.json")
    overall = comparison["slices"][0]
    assert overall["slice"] == "all" and overall["count"] == 24
    assert 0 <= overall["p_value"] <= 1 and isinstance(overall["significant"], bool)
    assert comparison["negation_probe"]["b"]["status"] == "ok"
    assert "McNemar" in stdout
    # Rerun in the same folder without --against: the earlier comparison.json goes with it.
    assert run_cli(["analyze", str(runs["lora"]), "--output-dir", str(tmp_path / "cmp")], capsys)[0] == 0
    assert not (tmp_path / "cmp" / "comparison.json").exists()
    assert "comparison.json" not in strict_json(tmp_path / "cmp" / "analysis.json")["files"]


def test_analyze_against_refuses_a_different_test_set(runs, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(runs["full"], other)
    path = other / "predictions.csv"
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    rows[4]["text"] = "a different sentence"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    code, _, err = run_cli(
        ["analyze", str(runs["lora"]), "--against", str(other), "--output-dir", str(tmp_path / "x")], capsys
    )
    assert code == 2 and "differ at row 5" in err and "a different sentence" in err
    assert not (tmp_path / "x").exists()  # refused before writing anything


def test_analyze_refuses_unfinished_runs_and_bad_flags(runs, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(runs["lora"], broken)
    (broken / "metrics.json").write_text(json.dumps({"status": "failed", "error": "boom"}))
    code, _, err = run_cli(["analyze", str(broken)], capsys)
    assert code == 2 and "not 'ok'" in err and "boom" in err
    code, _, err = run_cli(["analyze", str(tmp_path / "nowhere")], capsys)
    assert code == 2 and "not found" in err
    code, _, err = run_cli(["analyze", str(runs["lora"]), "--slice", "bad=("], capsys)
    assert code == 2 and "invalid regular expression" in err


def test_evaluate_writes_analysis_and_can_be_analyzed_again(runs, tmp_path, capsys):
    from conftest import write_rows

    data = write_rows(
        tmp_path / "mine.csv",
        [
            ("i did n't like it", "negative"),
            ("a lovely film", "positive"),
            ("not great but fun", "positive"),
            ("dull", "0"),
        ],
    )
    code, stdout, _ = run_cli(
        ["evaluate", str(runs["lora"]), "--data", str(data), "--output-dir", str(tmp_path / "ev")], capsys
    )
    assert code == 0
    for name in (
        "predictions.csv",
        "metrics.json",
        "analysis.json",
        "slices.csv",
        "errors.csv",
        "confusion.png",
        "reliability.png",
    ):
        assert (tmp_path / "ev" / name).exists(), name
    printed = json.loads(stdout)
    assert printed["analysis"]["files"][0] == "analysis.json"
    saved = strict_json(tmp_path / "ev" / "analysis.json")
    assert saved["examples"] == 4 and saved["negation_probe"]["status"] == "ok"
    negation = next(row for row in saved["slices"] if row["slice"] == "negation")
    assert negation["count"] == 2
    # an evaluation folder is analysable too; its run (for the probe) comes from its metrics.json
    code, _, _ = run_cli(["analyze", str(tmp_path / "ev"), "--output-dir", str(tmp_path / "ev-an")], capsys)
    assert code == 0 and strict_json(tmp_path / "ev-an" / "analysis.json")["negation_probe"]["status"] == "ok"


def test_evaluate_rejects_unknown_labels_and_missing_text_column(runs, tmp_path, capsys):
    from conftest import write_rows

    bad_label = write_rows(tmp_path / "bad.csv", [("fine", "positive"), ("meh", "neutral")])
    code, _, err = run_cli(["evaluate", str(runs["lora"]), "--data", str(bad_label)], capsys)
    assert code == 2
    assert "line 3" in err and "'neutral'" in err and "['negative', 'positive']" in err
    no_text = write_rows(tmp_path / "notext.csv", [("fine", "positive")], header=("review", "label"))
    code, _, err = run_cli(["evaluate", str(runs["lora"]), "--data", str(no_text)], capsys)
    assert code == 2 and "no column 'text'" in err and "review" in err
    assert not (runs["lora"] / "evaluations").exists()  # nothing written for refused inputs
