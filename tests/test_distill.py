"""Knowledge distillation (issue 16): the loss, a student run folder that every reader accepts, its
teacher fields and agreement in metrics.json, and one clear line for each bad input."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from sentitune.cli import EXIT_USER_ERROR, main


# ---- the loss ------------------------------------------------------------------------------------


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


STUDENT = np.array([[2.0, -1.0, 0.5], [0.1, 0.3, -2.0], [-1.0, 1.5, 0.0]])
TEACHER = np.array([[1.0, 0.0, -1.0], [3.0, -1.0, 0.0], [0.0, 0.5, 2.5]])
GOLD = np.array([0, 2, 1])


def _hand_kl(temperature: float) -> np.ndarray:
    """T^2 x KL(softmax(teacher / T) || softmax(student / T)) per row, in numpy."""
    log_t, log_s = _log_softmax(TEACHER / temperature), _log_softmax(STUDENT / temperature)
    return temperature**2 * (np.exp(log_t) * (log_t - log_s)).sum(axis=1)


def _hand_ce() -> np.ndarray:
    return -_log_softmax(STUDENT)[np.arange(len(GOLD)), GOLD]


def _loss(alpha: float, temperature: float, gold=GOLD) -> float:
    import torch

    from sentitune.trainer import distillation_loss

    as_tensor = torch.tensor
    return float(distillation_loss(as_tensor(STUDENT), as_tensor(TEACHER), as_tensor(gold), alpha, temperature))


def test_alpha_zero_is_cross_entropy_and_alpha_one_is_scaled_kl():
    assert _loss(0.0, 3.0) == pytest.approx(_hand_ce().mean(), rel=1e-6)
    assert _loss(1.0, 3.0) == pytest.approx(_hand_kl(3.0).mean(), rel=1e-6)
    assert _loss(0.3, 2.0) == pytest.approx((0.3 * _hand_kl(2.0) + 0.7 * _hand_ce()).mean(), rel=1e-6)
    # The temperature matters: T^2 x KL at T=1 and T=4 differ on these logits.
    assert not math.isclose(_loss(1.0, 1.0), _loss(1.0, 4.0), rel_tol=1e-3)


def test_unlabelled_rows_carry_the_kl_term_alone():
    from sentitune.trainer import UNLABELLED

    gold = np.array([0, UNLABELLED, 1])
    rows = np.array([0.25 * _hand_kl(2.0)[0] + 0.75 * _hand_ce()[0], _hand_kl(2.0)[1], 0.0])
    rows[2] = 0.25 * _hand_kl(2.0)[2] + 0.75 * _hand_ce()[2]
    assert _loss(0.25, 2.0, gold) == pytest.approx(rows.mean(), rel=1e-6)
    # Even at alpha 0 an unlabelled row teaches: its KL term is not weighted by alpha.
    assert _loss(0.0, 2.0, np.array([UNLABELLED] * 3)) == pytest.approx(_hand_kl(2.0).mean(), rel=1e-6)


def test_the_distill_section_is_checked_and_stays_out_of_the_fingerprint(tiny_config):
    from sentitune.config import ConfigError

    plain = tiny_config()
    student = plain.override({"distill.teacher": "runs/teacher", "distill.alpha": 0.9})
    assert student.fingerprint() == plain.fingerprint()
    assert "distill" in student.to_dict() and student.to_dict()["distill"]["alpha"] == 0.9
    for overrides, field in [
        ({"distill.alpha": 1.5}, "distill.alpha"),
        ({"distill.temperature": 0}, "distill.temperature"),
        ({"distill.unlabelled": "more.txt"}, "distill.unlabelled"),
        ({"distill.teacher": "t", "method.name": "tfidf"}, "method.name"),
    ]:
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            plain.override(overrides)
    with pytest.raises(ConfigError, match="unknown key distill.alpah"):
        type(plain).from_dict({**plain.to_dict(), "distill": {"alpah": 0.5}})


# ---- the trainer's loss ----------------------------------------------------------------------------


def _tiny_classifier(folder: Path):
    from sentitune.models import ModelSource, load_classifier

    return load_classifier(ModelSource(str(folder), str(folder), True), ["negative", "positive"])


@pytest.fixture(scope="module")
def tiny_batch(tiny_model_dir):
    """A padded batch of three texts of different lengths, with gold labels and teacher logits."""
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    texts = ["a warm , witty film", "dull", "flat , lifeless and far too long for what it has to say"]
    batch = dict(tokenizer(texts, padding=True, return_tensors="pt"))
    assert (batch["attention_mask"] == 0).any()  # padding present: the mask is exercised
    return {
        **batch,
        "labels": torch.tensor([1, 0, 0]),
        "teacher_logits": torch.tensor([[0.0, 1.0], [1.0, -1.0], [2.0, 0.0]]),
    }


def test_the_trainer_loss_is_the_distillation_loss(tiny_model_dir, tiny_batch, tmp_path):
    """With teacher logits in the batch, compute_loss is distillation_loss of the student's logits."""
    import torch
    from transformers import TrainingArguments

    from sentitune.trainer import MeasuredTrainer, Meter, distillation_loss

    torch.manual_seed(0)
    student = _tiny_classifier(tiny_model_dir).eval()
    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True)
    trainer = MeasuredTrainer(model=student, args=args, meter=Meter(0), sampler_seed=0, distillation=(0.5, 2.0))
    inputs = {k: v for k, v in tiny_batch.items() if k not in ("labels", "teacher_logits")}
    with torch.no_grad():
        logits = student(**inputs).logits
        expected = float(distillation_loss(logits, tiny_batch["teacher_logits"], tiny_batch["labels"], 0.5, 2.0))
        plain = float(torch.nn.functional.cross_entropy(logits, tiny_batch["labels"]))
        loss = float(trainer.compute_loss(student, dict(tiny_batch)))
    assert loss == pytest.approx(expected, rel=1e-6) and abs(expected - plain) > 1e-3  # not the model's own loss


# ---- a student run ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def student(trained_run, tiny_model_dir, tiny_data, tmp_path_factory):
    """(teacher run, student run): the tiny model shrunk to 1 layer, distilled from a tiny full run,
    with a few unlabelled texts."""
    teacher = trained_run("full")
    folder = tmp_path_factory.mktemp("distill")
    unlabelled = folder / "more.txt"
    unlabelled.write_text("a witty , warm film\n\n   \nflat and dull\nsuperb\n", encoding="utf-8")
    out = folder / "student"
    argv = ["distill", "--teacher", str(teacher), "--student", f"{tiny_model_dir}:layers=1", "--output-dir", str(out)]
    argv += ["--unlabelled", str(unlabelled), "--alpha", "0.7", "--temperature", "3", "--seed", "7"]
    assert main(argv) == 0
    return teacher, out


def test_the_student_is_a_normal_run_that_names_its_teacher(student):
    teacher, out = student
    metrics = json.loads((out / "metrics.json").read_text())
    teacher_metrics = json.loads((teacher / "metrics.json").read_text())
    assert metrics["status"] == "ok" and metrics["method"] == "full"
    assert metrics["teacher_run"] == str(teacher)
    assert metrics["teacher_method"] == "full"
    assert metrics["teacher_test_accuracy"] == teacher_metrics["test_accuracy"]
    assert metrics["distill_unlabelled_examples"] == 3  # the blank lines are not texts
    assert metrics["distill_student"].endswith(":layers=1")
    assert metrics["distill_labelled_examples"] == metrics["train_examples"]
    # Half the layers of the 2-layer teacher model: fewer parameters.
    assert metrics["params_total"] < teacher_metrics["params_total"]

    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["distill"] == {
        "teacher": str(teacher),
        "alpha": 0.7,
        "temperature": 3.0,
        "unlabelled": str(out.parent / "more.txt"),
        "unlabelled_column": None,
        "unlabelled_unit": "text",
        "unlabelled_limit": None,
    }
    assert not any(key.startswith(("distill_hidden", "distill_attention")) for key in metrics)
    assert config["train"]["seed"] == 7
    assert json.loads((Path(config["model"]) / "shrink.json").read_text())["layers_kept"] == 1
    # The student trained on the teacher's data: same test rows.
    teacher_config = yaml.safe_load((teacher / "config.yaml").read_text())
    assert config["data"] == teacher_config["data"]


def test_agreement_and_mcnemar_match_the_two_runs_predictions(student):
    from sentitune.metrics import mcnemar
    from sentitune.results import load_predictions

    teacher, out = student
    metrics = json.loads((out / "metrics.json").read_text())
    mine, theirs = load_predictions(out), load_predictions(teacher)
    assert mine.texts == theirs.texts
    agreement = float(np.mean(np.asarray(mine.predicted) == np.asarray(theirs.predicted)))
    assert metrics["teacher_agreement"] == pytest.approx(agreement)
    assert metrics["teacher_paired_accuracy"] == pytest.approx(metrics["teacher_test_accuracy"])
    expected = mcnemar(theirs.correct, mine.correct)
    assert metrics["teacher_mcnemar_p_value"] == pytest.approx(expected["p_value"])
    assert (metrics["teacher_only_correct"], metrics["student_only_correct"]) == (
        expected["a_only_correct"],
        expected["b_only_correct"],
    )


def test_predict_and_evaluate_read_the_student(student, tiny_data, capsys):
    _, out = student
    metrics = json.loads((out / "metrics.json").read_text())
    capsys.readouterr()
    assert main(["predict", str(out), "a gorgeous , witty film", "a dull , lifeless mess"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 2 and all(row["label"] in ("negative", "positive") for row in rows)
    assert main(["evaluate", str(out), "--data", str(tiny_data["test"])]) == 0
    assert json.loads(capsys.readouterr().out)["test_accuracy"] == pytest.approx(metrics["test_accuracy"])


def test_train_of_a_config_with_a_distill_section_distils(student, tmp_path, monkeypatch, capsys):
    """compare runs every variant through `sentitune train --config`: a saved student config must
    reach distill, not train without its teacher."""
    import sentitune.distill
    from sentitune.config import ConfigError, RunConfig
    from sentitune.training import train

    _, out = student
    calls = []

    def fake(cfg, output_dir, **kwargs):
        calls.append((cfg.distill.teacher, str(output_dir)))
        return {"method": cfg.method.name, "dataset": cfg.data.dataset, "model": cfg.model}

    monkeypatch.setattr(sentitune.distill, "distill", fake)
    assert main(["train", "--config", str(out / "config.yaml"), "--output-dir", str(tmp_path / "again")]) == 0
    saved = RunConfig.from_yaml(out / "config.yaml")
    assert calls == [(saved.distill.teacher, str(tmp_path / "again"))]
    with pytest.raises(ConfigError, match="distill.teacher: set, but no teacher was loaded"):
        train(saved, tmp_path / "plain")
    assert not (tmp_path / "plain").exists()


# Written by the intermediate-layer matching that was measured and removed, at its off values.
RETIRED_DEFAULTS = {"hidden_weight": 0.0, "hidden_layers": [], "attention_weight": 0.0, "value_relation": True}


def _with_retired_keys(run: Path, target: Path, **values) -> Path:
    folder = _copy(run, target)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config["distill"].update({**RETIRED_DEFAULTS, **values})
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return folder


def test_a_run_folder_with_the_retired_keys_at_their_defaults_still_loads(student, tmp_path, capsys):
    from sentitune import results
    from sentitune.config import RunConfig
    from sentitune.inference import Predictor

    _, out = student
    old = _with_retired_keys(out, tmp_path / "old")
    assert "hidden_weight" in (old / "config.yaml").read_text()
    run = results.load_run(old, require_ok=True)
    assert run.config == RunConfig.from_yaml(out / "config.yaml")  # the retired keys are dropped, nothing else
    assert Predictor.load(old).predict(["a witty film"])[0]["label"] in ("negative", "positive")
    capsys.readouterr()
    assert main(["predict", str(old), "a dull film"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["label"] in ("negative", "positive")


def test_a_retired_key_that_was_on_is_one_line_naming_it(student, tmp_path, capsys):
    from sentitune import results
    from sentitune.config import ConfigError, RunConfig
    from sentitune.errors import RunFolderError

    _, out = student
    old = _with_retired_keys(out, tmp_path / "old", hidden_weight=1.0)
    expected = "distill.hidden_weight: removed (intermediate-layer matching"
    with pytest.raises(ConfigError, match=re.escape(expected)) as refused:
        RunConfig.from_yaml(old / "config.yaml")
    assert "\n" not in str(refused.value) and "sets it to 1.0" in str(refused.value)
    with pytest.raises(RunFolderError, match=re.escape(expected)):
        results.load_run(old)
    # `true` is not the off value 0.0, and `false` is not value_relation's `true`.
    for values in ({"attention_weight": True}, {"value_relation": False}, {"hidden_layers": [0, 2]}):
        name = next(iter(values))
        folder = _with_retired_keys(out, tmp_path / name, **values)
        with pytest.raises(ConfigError, match=re.escape(f"distill.{name}: removed")):
            RunConfig.from_yaml(folder / "config.yaml")


# ---- bad input: one line each, nothing written ----------------------------------------------------


def _refused(argv: list[str], capsys) -> str:
    capsys.readouterr()
    assert main(argv) == EXIT_USER_ERROR
    lines = capsys.readouterr().err.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("sentitune distill: error: "), lines
    return lines[0]


def _argv(teacher, student, out, *extra) -> list[str]:
    return ["distill", "--teacher", str(teacher), "--student", str(student), "--output-dir", str(out), *extra]


def _copy(run: Path, target: Path) -> Path:
    shutil.copytree(run, target)
    return target


def test_a_folder_that_is_not_a_run(tmp_path, tiny_model_dir, capsys):
    (tmp_path / "notes").mkdir()
    line = _refused(_argv(tmp_path / "notes", tiny_model_dir, tmp_path / "out"), capsys)
    assert str(tmp_path / "notes") in line and "not a run folder" in line
    line = _refused(_argv(tmp_path / "missing", tiny_model_dir, tmp_path / "out"), capsys)
    assert "run folder not found" in line
    assert not (tmp_path / "out").exists()


def test_a_teacher_whose_status_is_not_ok(trained_run, tmp_path, tiny_model_dir, capsys):
    teacher = _copy(trained_run("full"), tmp_path / "failed")
    metrics = json.loads((teacher / "metrics.json").read_text())
    (teacher / "metrics.json").write_text(json.dumps({**metrics, "status": "failed", "error": "boom"}))
    line = _refused(_argv(teacher, tiny_model_dir, tmp_path / "out"), capsys)
    assert "run status is 'failed'" in line and str(teacher) in line
    assert not (tmp_path / "out").exists()


def test_a_multi_label_teacher(trained_run, tmp_path, tiny_model_dir, capsys):
    teacher = _copy(trained_run("full"), tmp_path / "multi")
    config = yaml.safe_load((teacher / "config.yaml").read_text())
    config["data"]["problem_type"] = "multi_label"
    (teacher / "config.yaml").write_text(yaml.safe_dump(config))
    line = _refused(_argv(teacher, tiny_model_dir, tmp_path / "out"), capsys)
    assert "multi_label" in line and "single_label" in line
    assert not (tmp_path / "out").exists()


def test_a_student_with_another_vocabulary(trained_run, tmp_path, tiny_model_dir, capsys):
    from transformers import AutoTokenizer

    other = shutil.copytree(tiny_model_dir, tmp_path / "other-vocab")
    tokenizer = AutoTokenizer.from_pretrained(other)
    tokenizer.add_tokens(["zzyzx"])  # one token more than the teacher's bert-base-uncased vocabulary
    tokenizer.save_pretrained(other)
    line = _refused(_argv(trained_run("full"), other, tmp_path / "out"), capsys)
    assert "tokenizer vocabulary (30523 tokens)" in line and "'zzyzx' is only in the student's" in line
    assert not (tmp_path / "out").exists()


def test_an_unlabelled_file_without_text(trained_run, tmp_path, tiny_model_dir, capsys):
    empty = tmp_path / "blank.txt"
    empty.write_text("\n   \n\t\n", encoding="utf-8")
    line = _refused(_argv(trained_run("full"), tiny_model_dir, tmp_path / "out", "--unlabelled", str(empty)), capsys)
    assert str(empty) in line and "no usable text" in line
    line = _refused(_argv(trained_run("full"), tiny_model_dir, tmp_path / "out", "--alpha", "2"), capsys)
    assert "distill.alpha" in line
    line = _refused(_argv(trained_run("full"), f"{tiny_model_dir}:layers=5", tmp_path / "out"), capsys)
    assert f"model {tiny_model_dir}:layers=5: must be between 1 and 1" in line
    assert not (tmp_path / "students").exists()
    assert not (tmp_path / "out").exists()


# ---- compare: distill:TEACHER->lK variants ----------------------------------------------------------


def _comparison_config(tiny_config, methods, **compare_section):
    cfg = tiny_config("full", **{"train.max_steps": 2})
    section = {"methods": methods, "seeds": [1], "suites": [], **compare_section}
    return cfg.override({f"compare.{k}": v for k, v in section.items()})


def test_compare_runs_a_student_after_its_teacher_and_reports_it(tiny_config, tmp_path):
    from sentitune import compare
    from sentitune.reporting.render import build_report

    cfg = _comparison_config(tiny_config, ["full", "distill:full->l1"])
    lines: list[str] = []
    # Two at a time: the student must still wait for its teacher.
    document = compare.run_comparison(cfg, tmp_path, parallel=2, echo=lines.append)
    rows = {r["run_name"]: r for r in document["runs"]}
    assert [r["status"] for r in rows.values()] == ["ok", "ok"], rows
    teacher, student = rows["full-s1"], rows["distill-full-l1-s1"]
    started = next(i for i, line in enumerate(lines) if "distill-full-l1-s1: training" in line)
    finished = next(i for i, line in enumerate(lines) if line.strip().startswith("full-s1: ok"))
    assert finished < started, lines
    teacher_done = (tmp_path / "runs" / "full-s1" / "metrics.json").stat().st_mtime
    assert (tmp_path / "logs" / "distill-full-l1-s1.config.yaml").stat().st_mtime >= teacher_done

    assert student["teacher_variant"] == "full" and "teacher_variant" not in teacher
    assert student["teacher_run"] == str(tmp_path / "runs" / "full-s1")
    assert 0 <= student["teacher_agreement"] <= 1 and 0 <= student["teacher_mcnemar_p_value"] <= 1
    assert student["teacher_test_accuracy"] == teacher["test_accuracy"]
    assert student["params_total"] < teacher["params_total"]  # 1 of the tiny model's 2 layers
    assert document["fingerprint"] == cfg.fingerprint()
    csv_header = (tmp_path / "results.csv").read_text().splitlines()[0].split(",")
    assert {"teacher_variant", "teacher_agreement", "teacher_mcnemar_p_value"} <= set(csv_header)

    markdown = build_report(tmp_path)[0].read_text()
    section = markdown.split("## Distilled students", 1)[1].split("\n## ", 1)[0]
    row = next(line for line in section.splitlines() if line.startswith("| distill-full-l1 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "full"
    assert cells[2] == f"{100 * student['test_accuracy']:.2f}" and cells[3] == f"{100 * teacher['test_accuracy']:.2f}"
    assert cells[4] == f"{100 * student['teacher_agreement']:.1f}"
    assert cells[5] == f"{student['teacher_mcnemar_p_value']:.3g}"

    # Resumed: both runs are finished, so nothing trains again (the student's scaffolding is its teacher's).
    again: list[str] = []
    compare.run_comparison(cfg, tmp_path, echo=again.append)
    assert not any("training ..." in line for line in again), again
    assert any("2 of 2 runs already finished" in line for line in again)


def test_a_student_whose_teacher_failed_fails_unstarted(tiny_config, tmp_path, monkeypatch):
    import subprocess
    import sys

    from sentitune import compare

    real = compare._run_one

    def teacher_crashes(run, out):
        if run.teacher is None:
            folder = out / "runs" / run.name
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "config.yaml").write_text(run.config.to_yaml(), encoding="utf-8")
            return subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
        return real(run, out)

    monkeypatch.setattr(compare, "_run_one", teacher_crashes)
    cfg = _comparison_config(tiny_config, ["full", "distill:full->l1"])
    document = compare.run_comparison(cfg, tmp_path, echo=lambda *_: None)
    teacher, student = document["runs"]
    assert teacher["status"] == "failed" and "exited with code 3" in teacher["error"]
    assert student["status"] == "failed" and student["teacher_variant"] == "full"
    assert student["error"] == "its teacher full-s1 did not finish ok (see its row); not started"
    assert not (tmp_path / "logs" / "distill-full-l1-s1.log").exists()


def test_compare_distill_variants_are_checked_before_any_run(tiny_config, tmp_path):
    from sentitune import compare
    from sentitune.config import ConfigError

    for methods, message in [
        (["full", "distill:lora->l1"], "compare.methods: distill:lora->l1: its teacher 'lora' is not a method"),
        (["full", "tfidf", "distill:tfidf->l1"], "distill:tfidf->l1: tfidf has no neural network to distil from"),
        (["full", "distill:full->l0"], "compare.methods: 'distill:full->l0': expected distill:TEACHER->lK"),
        (["full", "distill:full->small"], "expected distill:TEACHER->lK with K >= 1"),
        (["full", "distill:->l1"], "expected distill:TEACHER->lK"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)) as caught:
            _comparison_config(tiny_config, methods)
        assert "\n" not in str(caught.value)
    # As many layers as the tiny model has: refused when the comparison starts, before any training.
    cfg = _comparison_config(tiny_config, ["full", "distill:full->l2"])
    with pytest.raises(ConfigError, match=r"^compare\.methods: distill-full-l2: model .*:layers=2: must be between 1"):
        compare.run_comparison(cfg, tmp_path, echo=lambda *_: None)
    assert not list((tmp_path / "logs").glob("*.log"))


def test_compare_tune_does_not_search_a_student(tiny_config, tmp_path, monkeypatch):
    from sentitune import compare, tuning

    cfg = _comparison_config(tiny_config, ["tfidf", "full", "distill:full->l1"], tune=["learning_rate"])
    searched = []
    monkeypatch.setattr(tuning, "run_search", lambda name, *a, **k: searched.append(name) or {"selected": None})
    records = compare.run_searches(cfg, tmp_path, echo=lambda *_: None)
    assert records["distill-full-l1"]["budget"] == 0 and "not searched" in records["distill-full-l1"]["note"]
    assert [name.split(":")[0] for name in searched] == ["full"]
