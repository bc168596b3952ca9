"""Knowledge distillation: a finished run (the teacher) teaches a smaller model (the student).

The student is an ordinary run of the one training loop (training.train): its config carries a
`distill` section, its training rows carry the teacher's logits, computed once here with the teacher's
Predictor (inference sits above training, so this module hands training a `Teacher`), and its loss is
trainer.distillation_loss. The student's run folder is a normal run folder: predict, evaluate, analyze,
export, serve and report read it as any other; its metrics.json also names the teacher and records the
student's agreement with it on the test split.

Example:
    >>> cfg = student_config("runs/sst2-full", "minilm-l6:layers=3")  # doctest: +SKIP
    >>> metrics = distill(cfg, "runs/sst2-distilled-l3")  # doctest: +SKIP
    >>> metrics["teacher_agreement"]  # doctest: +SKIP
    0.94
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sentitune import results
from sentitune.config import ConfigError, RunConfig
from sentitune.errors import quote
from sentitune.runtime import portable_path
from sentitune.training import Teacher, train, unlabelled_texts


STUDENT_SPEC = re.compile(r"(?P<name>.+):layers=(?P<layers>\d+)")
"""`MODEL:layers=K`: MODEL (alias, folder or hub id) with only its bottom K encoder layers (models.shrink_model)."""

STUDENTS_DIR = "students"
"""Where shrunk students (`MODEL:layers=K`) are written by default: beside the student's run folder."""


def parse_student(spec: str) -> tuple[str, int | None]:
    """(model, layers to keep or None) for a student given as a model or as `MODEL:layers=K`.

    Example:
        >>> parse_student("minilm-l6:layers=3"), parse_student("bert-base-uncased")
        (('minilm-l6', 3), ('bert-base-uncased', None))
    """
    match = STUDENT_SPEC.fullmatch(spec)
    if match is None:
        return spec, None
    return match["name"], int(match["layers"])


def student_folder(spec: str, output_dir: str | Path, students_dir: str | Path | None = None) -> str:
    """The model the student trains from: `spec` itself, or for `MODEL:layers=K` a shrunk copy of MODEL
    in `students_dir` (default: students/ beside the run folder), written once and reused while its
    shrink.json says it is that shrink."""
    import json

    from sentitune.models import SHRINK_FILE, progress_bars_on_terminals_only, shrink_model

    name, layers = parse_student(spec)
    if layers is None:
        return spec
    root = Path(students_dir) if students_dir is not None else Path(output_dir).parent / STUDENTS_DIR
    folder = root / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', name.strip('/')) or 'model'}-l{layers}"
    info_path = folder / SHRINK_FILE
    if info_path.is_file():
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            info = None
        if isinstance(info, dict) and info.get("source_model") == name and info.get("layers_kept") == layers:
            return str(folder)
        raise ConfigError(f"model {spec}: {folder} holds another model; remove it or give another students folder")
    try:
        with progress_bars_on_terminals_only():
            shrink_model(name, layers, folder)
    except ConfigError as exc:  # shrink's own message names its --layers flag
        raise ConfigError(f"model {spec}: {str(exc).removeprefix('--layers: ')}") from None
    return str(folder)


def teacher_run(path: str) -> results.Run:
    """The teacher's run, checked: a finished (status ok), single-label run folder. Each refusal is
    one line naming the folder."""
    folder = Path(path)
    if not folder.is_dir():
        raise results.RunFolderError(f"distill.teacher: {path}: run folder not found")
    if not (folder / results.CONFIG_FILE).is_file():
        raise results.RunFolderError(f"distill.teacher: {path}: not a run folder (no {results.CONFIG_FILE})")
    run = results.load_run(folder)
    if run.status != "ok":
        error = run.metrics.get("error")
        raise results.RunFolderError(
            f"distill.teacher: {path}: run status is {run.status!r}, not 'ok'"
            + (f" ({error})" if error else "")
            + "; distil from a finished run"
        )
    if run.config.data.problem_type != "single_label":
        raise ConfigError(
            f"distill.teacher: {path} is a {run.config.data.problem_type} run; distillation supports single_label "
            "teachers only (soft labels are one softmax per text)"
        )
    return run


def check_vocabularies(teacher_tokenizer, student: str, teacher: str) -> None:
    """Refuses a student whose tokenizer vocabulary differs from the teacher's, naming both sizes and a
    token on one side only: a student of another tokenizer is another model family, and hidden states
    would not line up token by token."""
    from sentitune.models import load_tokenizer, resolve_model

    student_vocab = load_tokenizer(resolve_model(student)).get_vocab()
    teacher_vocab = teacher_tokenizer.get_vocab()
    if student_vocab == teacher_vocab:
        return
    only_student = sorted(set(student_vocab) - set(teacher_vocab))
    only_teacher = sorted(set(teacher_vocab) - set(student_vocab))
    if only_student:
        example = f"{quote(only_student[0])} is only in the student's"
    elif only_teacher:
        example = f"{quote(only_teacher[0])} is only in the teacher's"
    else:
        token = min(t for t in student_vocab if student_vocab[t] != teacher_vocab[t])
        example = (
            f"{quote(token)} has id {student_vocab[token]} in the student's, {teacher_vocab[token]} in the teacher's"
        )
    raise ConfigError(
        f"model {student}: its tokenizer vocabulary ({len(student_vocab)} tokens) differs from the teacher's "
        f"({teacher}, {len(teacher_vocab)} tokens): {example}; pick a student with the teacher's tokenizer "
        "(e.g. MODEL:layers=K of the teacher's model)"
    )


def teacher_record(path: str, run: results.Run) -> dict[str, Any]:
    """What the student's metrics.json says about its teacher."""
    return {
        "teacher_run": portable_path(path),  # config.yaml keeps distill.teacher as given: resume reads it
        "teacher_method": run.config.method.name,
        "teacher_model": run.config.model,
        "teacher_test_accuracy": run.metrics.get("test_accuracy"),
        "teacher_fingerprint": run.metrics.get("fingerprint"),
    }


def student_config(
    teacher: str, student: str, base: RunConfig | None = None, overrides: dict[str, Any] | None = None
) -> RunConfig:
    """The student's run config: the teacher's data section (its training split and its test split, so
    the two are scored on the same rows), `student` as the model and distill.teacher set; everything
    else from `base` (a --config or --preset), else the teacher's own config with the method reset to
    full; then the dotted `overrides` (flags), which may change data fields too.

    Example:
        >>> student_config("runs/sst2-full", "minilm-l6:layers=3", overrides={"distill.alpha": 0.9})  # doctest: +SKIP
    """
    run = teacher_run(teacher)
    raw = (base or run.config).to_dict()
    raw["data"] = run.config.to_dict()["data"]
    if base is None:
        raw["method"] = {"name": "full"}
        raw["compare"] = {}
    raw["model"] = student
    raw["distill"] = {**raw.get("distill", {}), "teacher": teacher}
    return RunConfig.from_dict(raw, "student config").override(overrides or {})


def distill(
    cfg: RunConfig,
    output_dir: str | Path,
    overwrite: bool = False,
    resume: bool = False,
    selection_only: bool = False,
    students_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Trains `cfg.model` as a student of the run cfg.distill.teacher into `output_dir`; returns its
    metrics (also in its metrics.json). Everything the user can get wrong (the teacher folder, its
    status and problem type, the vocabularies, the unlabelled file) is checked before anything is
    written; a `MODEL:layers=K` student is then shrunk (student_folder) and trained from that folder.
    """
    from sentitune.inference import Predictor

    if cfg.distill.teacher is None:
        raise ConfigError("distill.teacher: not set; give the teacher's run folder")
    path = cfg.distill.teacher
    run = teacher_run(path)
    unlabelled = unlabelled_texts(cfg.distill, seed=cfg.data.split_seed)
    # fp32: the soft targets are computed once and every epoch learns from them.
    predictor = Predictor.load(path, precision="fp32")
    if predictor.tokenizer is not None:
        check_vocabularies(predictor.tokenizer, parse_student(cfg.model)[0], path)
    model = student_folder(cfg.model, output_dir, students_dir)
    record = {**teacher_record(path, run), "distill_student": cfg.model}
    if model != cfg.model:
        cfg = cfg.override({"model": model})
    teacher = Teacher(logits=predictor.logits, label_names=predictor.label_names, record=record, unlabelled=unlabelled)
    return train(cfg, output_dir, overwrite=overwrite, resume=resume, selection_only=selection_only, teacher=teacher)
