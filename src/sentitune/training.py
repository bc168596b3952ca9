"""The one training loop: HF Trainer for every neural method, a scikit-learn fit for tfidf, and the
same run folder from both.

Example:
    >>> from sentitune.config import load_config
    >>> cfg = load_config(preset="sst2-quick", overrides={"method.name": "lora"})  # doctest: +SKIP
    >>> metrics = train(cfg, "runs/sst2-lora")  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import resource
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sentitune import modelcard, results, runtime
from sentitune.config import LOWER_IS_BETTER, ConfigError, DistillConfig, RunConfig, scaffolding_differences
from sentitune.data import (
    DatasetSplits,
    Split,
    load_splits,
    mean_per_document,
    read_texts,
    split_sentences,
    tokenize_split,
)
from sentitune.errors import DataError, TrainingError
from sentitune.methods import registry
from sentitune.metrics import (
    choose_thresholds,
    classification_metrics,
    expected_calibration_error,
    fit_temperature,
    log_probabilities,
    mcnemar,
    multilabel_metrics,
    sigmoid,
    softmax,
    temperature_scale,
)
from sentitune.models import count_parameters, load_classifier, load_tokenizer, resolve_model

# Provenance lives in runtime.py; the names stay importable from here for existing callers.
from sentitune.runtime import TRAINING_PACKAGES, device_description, package_versions, provenance  # noqa: F401


CHECKPOINT_DIR = results.CHECKPOINTS_DIR


# ---- provenance -------------------------------------------------------------------------------

# ---- run folder lifecycle ---------------------------------------------------------------------


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Under torchrun / accelerate launch only rank 0 writes the run folder."""
    return int(os.environ.get("RANK", "0")) == 0


def prepare_output_dir(output_dir: Path, overwrite: bool, resume: bool) -> None:
    """Checks `output_dir` before anything is written, then creates it with its run marker.

    Leftovers of killed trainings beside it go first (results.sweep_leftovers). A finished run needs
    --overwrite; a non-empty folder that is not a sentitune run folder is refused with or without it,
    and --overwrite also refuses a run folder holding files sentitune did not write (it would delete
    them with the old run). Nothing is deleted here.
    """
    results.sweep_leftovers(output_dir)
    holder = results.lock_holder(output_dir)
    if holder is not None:  # another process trains here: say so before judging the folder
        raise results.in_use(output_dir, holder if holder > 0 else "unknown")
    status = results.read_status(output_dir)
    if status == "ok" and not overwrite:
        raise results.RunFolderError(
            f"{output_dir}: already holds a finished run; pass --overwrite to replace it or pick another --output-dir"
        )
    # Continuing an unfinished run and replacing a finished one both need sentitune's own folder.
    results.check_output_dir(
        output_dir,
        True,
        results.is_run_folder,
        f"a sentitune run folder (no {results.RUN_MARKER}, or {results.CONFIG_FILE} with {results.METRICS_FILE})",
    )
    foreign = results.foreign_entries(output_dir) if output_dir.is_dir() else []
    if overwrite and foreign:
        raise results.RunFolderError(
            f"{output_dir}: holds {', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}, which sentitune did "
            "not write; --overwrite would delete them with the old run, so move them or pick another --output-dir"
        )
    if CHECKPOINT_DIR in foreign:
        raise results.RunFolderError(
            f"{output_dir / CHECKPOINT_DIR}: not sentitune's (no {results.CHECKPOINTS_MARKER} inside); training "
            "would write into it and sentitune never deletes it, so move it or pick another --output-dir"
        )
    if overwrite and output_dir.is_dir() and any(output_dir.iterdir()):
        return  # the old run stays untouched; train() builds the new one beside it
    if (output_dir / CHECKPOINT_DIR).is_dir():
        results.write_marker(output_dir / CHECKPOINT_DIR, results.CHECKPOINTS_MARKER)  # a pre-marker run's own
    results.write_marker(output_dir)  # the first file of a new run folder (or of the one it continues)


RESUME_MAY_CHANGE = (
    "compare",
    "train.threads",
    "train.dataloader_workers",
    "train.save_steps",
    "train.report_to",
    "train.run_name",
)
"""Fields a resumed run may set differently: how the run is computed or checkpointed, not what it
learns (`compare` is not part of a run at all). Every other field must match the saved config.yaml."""


def config_differences(saved: RunConfig, new: RunConfig) -> list[str]:
    """`field (saved vs new)` for each field that differs, RESUME_MAY_CHANGE aside."""

    def comparable(cfg: RunConfig) -> dict:
        raw = cfg.to_dict()
        raw["data"]["max_length"] = cfg.data.resolved_max_length
        for dotted in RESUME_MAY_CHANGE:
            *parents, leaf = dotted.split(".")
            node = raw
            for part in parents:
                node = node[part]
            node.pop(leaf, None)
        return raw

    return scaffolding_differences(comparable(saved), comparable(new))


def check_resume(cfg: RunConfig, output_dir: Path, overwrite: bool) -> None:
    """Refuses a --resume that would not continue this run: combined with --overwrite, with nothing
    to resume (no run, a finished run, no complete checkpoint), or with a configuration other than the
    one the run started with (naming the field). Only looks: nothing is written or removed."""
    if overwrite:
        raise ConfigError(
            "--resume and --overwrite: give one or the other (--resume continues the unfinished run in "
            "--output-dir; --overwrite replaces a finished one with a new run)"
        )
    status = results.read_status(output_dir)
    if status == "ok":
        raise results.RunFolderError(
            f"{output_dir}: holds a finished run, nothing to resume; drop --resume (and pass --overwrite "
            "to replace it) or pick another --output-dir"
        )
    config_path = output_dir / results.CONFIG_FILE
    if not config_path.is_file():
        raise results.RunFolderError(
            f"{output_dir}: nothing to resume (no unfinished run here); drop --resume to start the run"
        )
    if last_complete_checkpoint(output_dir / CHECKPOINT_DIR, remove_torn=False) is None:
        raise results.RunFolderError(
            f"{output_dir}: nothing to resume (the unfinished run left no complete checkpoint in "
            f"{CHECKPOINT_DIR}/); drop --resume to start it again from scratch"
        )
    try:
        saved = RunConfig.from_yaml(config_path)
    except ConfigError as exc:
        message = str(exc)
        raise results.RunFolderError(
            message if message.startswith(str(config_path)) else f"{config_path}: {message}"
        ) from None
    differences = config_differences(saved, cfg)
    if differences:
        more = f" (and {len(differences) - 1} more)" if len(differences) > 1 else ""
        raise ConfigError(
            f"--resume: the configuration differs from the one {output_dir} started with: {differences[0]}"
            f"{more}, as saved vs now; resume with the same configuration, or drop --resume and pick "
            "another --output-dir"
        )


def _clean_unfinished(output_dir: Path, resume: bool) -> None:
    """What an unfinished run left that a fresh start must not reuse; called under the run's lock."""
    status = results.read_status(output_dir)
    if not resume and (output_dir / CHECKPOINT_DIR).exists() and results.owns_checkpoints(output_dir):
        shutil.rmtree(output_dir / CHECKPOINT_DIR)  # stale checkpoints of an unfinished run
    if status not in (None, "ok") and not resume:
        (output_dir / results.METRICS_FILE).unlink(missing_ok=True)


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def tensor_mib(tensors) -> float:
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA raises OutOfMemoryError; the CPU allocator a plain RuntimeError."""
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "can't allocate memory" in str(exc)


def resolve_precision(choice: str) -> str:
    """The run's precision (runtime.choose_precision on this machine); a refusal is a TrainingError."""
    try:
        return runtime.resolve_precision(choice)
    except runtime.PrecisionError as exc:
        raise TrainingError(str(exc)) from None


# ---- neural training --------------------------------------------------------------------------


TRACKER_PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb", "trackio": "trackio"}
"""`train.report_to` tracker -> the package (pip name = import name) the Trainer's integration needs."""


def check_report_to(trackers: list[str]) -> None:
    """Refuses, in one line naming what to install, a tracker whose package is missing (the Trainer
    would fail only once the model is loaded, with a message about its own internals)."""
    import importlib.util

    for tracker in trackers:
        package = TRACKER_PACKAGES.get(tracker)
        if package and importlib.util.find_spec(package) is None:
            raise ConfigError(
                f"train.report_to: {tracker} is not installed; pip install {package}, or drop {tracker} from "
                "train.report_to"
            )


def run_folder_name(folder: Path) -> str:
    """The run folder's name, also while the run is built in its staging folder (results.staging_path)."""
    import re

    staged = re.fullmatch(r"\.(.+)\.staging-\d+(?:-\w+)?", folder.name)
    return staged.group(1) if staged else folder.name


def log_tensorboard_into(trainer, folder: Path) -> None:
    """Points the Trainer's TensorBoard callback (train.report_to tensorboard) at the run folder's
    tensorboard/. Its default is under the Trainer's output_dir, checkpoints/, which is removed when the
    run finishes."""
    from transformers.integrations import TensorBoardCallback

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardCallback):
            callback.logging_dir = str(folder)


def training_arguments(cfg: RunConfig, checkpoint_dir: Path, precision: str):
    import torch
    from transformers import TrainingArguments

    t = cfg.train
    evaluate = t.eval_strategy != "no"
    return TrainingArguments(
        output_dir=str(checkpoint_dir),
        learning_rate=cfg.learning_rate,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        warmup_steps=t.warmup_ratio,  # a float in [0, 1) is a ratio of total steps (transformers 5)
        lr_scheduler_type=t.lr_scheduler if t.lr_scheduler != "constant" else "constant_with_warmup",
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        seed=t.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        train_sampling_strategy="group_by_length" if t.length_grouped else "random",
        eval_strategy=t.eval_strategy,
        eval_steps=t.eval_steps,
        save_strategy="steps" if t.save_steps else (t.eval_strategy if evaluate else "epoch"),
        save_steps=t.save_steps or t.eval_steps,
        save_total_limit=1,
        load_best_model_at_end=evaluate,
        metric_for_best_model=cfg.best_metric,
        greater_is_better=cfg.best_metric not in LOWER_IS_BETTER,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        # The default replaces a NaN/inf step loss by the running mean, which hides divergence from
        # the history; training_step stops at the first non-finite loss instead.
        logging_nan_inf_filter=False,
        report_to=[name for name in t.report_to if name != "none"] or "none",
        run_name=t.run_name or run_folder_name(checkpoint_dir.parent),
        dataloader_num_workers=t.dataloader_workers,
        dataloader_pin_memory=torch.cuda.is_available(),
        # bf16 on CPU is autocast; transformers asks for use_cpu to allow it (runtime.choose_precision
        # picks it only on CPUs with native bf16).
        use_cpu=precision == "bf16" and not torch.cuda.is_available(),
        **(
            {"gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"use_reentrant": False}}
            if t.gradient_checkpointing
            else {}
        ),
        disable_tqdm=not sys.stderr.isatty() and os.environ.get("SENTITUNE_PROGRESS") != "1",
    )


def layerwise_parameter_groups(model, learning_rate: float, decay: float, weight_decay: float) -> list[dict]:
    """AdamW parameter groups with layer-wise learning-rate decay (Howard & Ruder 2018; Sun et al. 2019).

    Depth: embeddings 0, encoder layer i -> i + 1, everything above the encoder (pooler, head) L + 1;
    lr = learning_rate x decay^(L + 1 - depth). Biases and LayerNorm weights get no weight decay,
    as in the Trainer's own groups.
    """
    import re

    names = [name for name, _ in model.named_parameters()]
    layer_ids = [int(m.group(1)) for name in names if (m := re.search(r"encoder\.layer\.(\d+)\.", name))]
    top = (max(layer_ids) + 1 if layer_ids else 0) + 1
    groups: dict[tuple[int, bool], dict] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        match = re.search(r"encoder\.layer\.(\d+)\.", name)
        depth = int(match.group(1)) + 1 if match else (0 if "embeddings" in name else top)
        no_decay = name.endswith(".bias") or "LayerNorm" in name or "layer_norm" in name
        group = groups.setdefault(
            (depth, no_decay),
            {
                "params": [],
                "lr": learning_rate * decay ** (top - depth),
                "weight_decay": 0.0 if no_decay else weight_decay,
            },
        )
        group["params"].append(parameter)
    return [groups[key] for key in sorted(groups)]


def _compute_metrics(prediction) -> dict[str, float]:
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    logits = np.asarray(logits, dtype=np.float64)
    if np.ndim(prediction.label_ids) == 2:  # multi-hot gold: multi-label, judged at thresholds of 0.5
        metrics = multilabel_metrics(prediction.label_ids, sigmoid(logits))
    else:
        metrics = classification_metrics(prediction.label_ids, softmax(logits))
    metrics.pop("loss")  # the Trainer reports its own eval_loss
    return metrics


def validation_metrics(logits, labels, thresholds=None) -> dict[str, float]:
    """The final model's scores on the validation slice (`validation_accuracy`, `validation_macro_f1`,
    ...; the model card reports them beside the test ones), from its logits before any calibration;
    empty when there are none. Multi-label scores are at the thresholds chosen on this same slice."""
    if logits is None or labels is None or len(labels) == 0:
        return {}
    logits = np.asarray(logits, dtype=np.float64)
    if thresholds is not None:  # multi-label
        scores = multilabel_metrics(np.asarray(labels), sigmoid(logits), thresholds)
    else:
        scores = classification_metrics(np.asarray(labels, dtype=np.int64), softmax(logits))
    scores.pop("loss")  # uncalibrated, and so not comparable with test_loss
    return {f"validation_{name}": value for name, value in scores.items()}


def class_weight_vector(cfg: RunConfig, splits: DatasetSplits) -> list[float] | None:
    """train.class_weights as one weight per class in label-id order, or None for `none`. `balanced`
    is n / (classes x count of the class) over the training split (scikit-learn's "balanced"). A list
    of the wrong length, or `balanced` with a class the training split lacks, is a ConfigError."""
    choice, names = cfg.train.class_weights, splits.label_names
    if choice == "none" or cfg.data.problem_type == "multi_label":
        return None
    if choice == "balanced":
        labels = np.asarray(splits.train.labels, dtype=np.int64)
        counts = np.bincount(labels, minlength=len(names))
        if not counts.all():
            missing = names[int(np.flatnonzero(counts == 0)[0])]
            raise ConfigError(
                f"train.class_weights: balanced needs every class in the training split; {missing!r} has none"
            )
        return (len(labels) / (len(names) * counts)).tolist()
    if len(choice) != len(names):
        raise ConfigError(
            f"train.class_weights: {len(choice)} weights for {len(names)} classes ({', '.join(names)}); give one "
            "weight per class, in this order"
        )
    return list(choice)


def best_evaluation(state) -> dict:
    """The evaluation log row of the checkpoint kept at the end (the best by train.best_metric);
    empty when the run never evaluated."""
    step = getattr(state, "best_global_step", None)
    rows = [row for row in state.log_history if step is not None and row.get("step") == step and "eval_loss" in row]
    return rows[-1] if rows else {}


def _history_rows(log_history: list[dict]) -> list[dict]:
    keep = (
        "step",
        "epoch",
        "loss",
        "learning_rate",
        "grad_norm",
        "eval_loss",
        "eval_accuracy",
        "eval_macro_f1",
        "eval_micro_f1",
    )
    return [{k: row[k] for k in keep if k in row} for row in log_history if "step" in row]


def last_complete_checkpoint(checkpoint_dir: Path, remove_torn: bool = True) -> Path | None:
    """The newest `checkpoint-N` a resume can use, or None.

    The Trainer writes a checkpoint in place, trainer_state.json last, so a kill during the save leaves
    a newer folder without a readable trainer_state.json. Such torn folders are removed (unless
    `remove_torn` is False: a look before anything may change): the Trainer's own choice (the highest
    N) and its rotation would otherwise pick them up.
    """
    import json

    if not checkpoint_dir.is_dir():
        return None
    found = []
    for folder in checkpoint_dir.glob("checkpoint-*"):
        step = folder.name.rsplit("-", 1)[1]
        if folder.is_dir() and step.isdigit():
            found.append((int(step), folder))
    best = None
    for _, folder in sorted(found, reverse=True):
        try:
            json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            if best is None and remove_torn and is_main_process():
                shutil.rmtree(folder, ignore_errors=True)
            continue
        best = best or folder
    return best


# ---- distillation -----------------------------------------------------------------------------


@dataclass
class Teacher:
    """A finished run a student learns from (distill.distill builds it from the run's Predictor:
    training sits below inference, so it gets the teacher as a function from texts to logits)."""

    logits: Callable[[list[str]], np.ndarray]
    """Raw (uncalibrated) logits, one row per text in input order, columns in `label_names` order."""
    label_names: list[str]
    record: dict[str, Any] = field(default_factory=dict)
    """What the student's metrics.json says about its teacher (teacher_run, teacher_method, ...)."""
    unlabelled: list[str] = field(default_factory=list)
    """Extra texts (distill.unlabelled) the teacher labels and the student learns from by KL alone."""


def unlabelled_texts(cfg: DistillConfig, seed: int = 0) -> list[str]:
    """The non-blank texts of distill.unlabelled (none when it is null), split into sentences with
    unlabelled_unit sentence and sampled down to unlabelled_limit (seeded, file order kept); a missing
    file or one with no usable text is one DataError line naming it."""
    if cfg.unlabelled is None:
        return []
    path = Path(cfg.unlabelled)
    if not path.is_file():
        raise DataError(f"distill.unlabelled: {path}: {'is a folder' if path.is_dir() else 'file not found'}")
    texts = [text.strip() for text in read_texts(path, cfg.unlabelled_column)]
    if cfg.unlabelled_unit == "sentence":
        texts = [sentence for text in texts for sentence in split_sentences(text)]
    if not texts:
        raise DataError(f"distill.unlabelled: {path}: no usable text (every row is empty or blank)")
    if cfg.unlabelled_limit is not None and len(texts) > cfg.unlabelled_limit:
        keep = np.random.default_rng(seed).choice(len(texts), size=cfg.unlabelled_limit, replace=False)
        texts = [texts[i] for i in sorted(keep)]
    return texts


def _teacher_logits(teacher: Teacher, texts: list[str], width: int) -> np.ndarray:
    logits = np.asarray(teacher.logits(texts), dtype=np.float32)
    if logits.shape != (len(texts), width):
        raise TrainingError(f"the teacher gave logits of shape {logits.shape}, expected {(len(texts), width)}")
    return logits


def with_teacher_logits(teacher: Teacher, cfg: RunConfig, splits: DatasetSplits, train_ds, tokenizer):
    """(the training set with the teacher's logits per row and the unlabelled texts appended with
    label UNLABELLED, what metrics.json records about it)."""
    import datasets

    from sentitune.trainer import TEACHER_LOGITS, UNLABELLED

    if teacher.label_names != splits.label_names:
        raise ConfigError(
            f"distill.teacher: its labels {teacher.label_names} differ from the data's {splits.label_names}; "
            "the student trains on the teacher's data with its label order"
        )
    width = len(splits.label_names)
    started = time.perf_counter()
    dataset = train_ds.add_column(TEACHER_LOGITS, _teacher_logits(teacher, splits.train.texts, width).tolist())
    extra = teacher.unlabelled
    if extra:
        unlabelled = Split(list(extra), [UNLABELLED] * len(extra))
        extra_ds, _ = tokenize_split(tokenizer, unlabelled, cfg.data.resolved_max_length, cfg.data.truncation)
        extra_ds = extra_ds.add_column(TEACHER_LOGITS, _teacher_logits(teacher, extra, width).tolist())
        dataset = datasets.concatenate_datasets([dataset, extra_ds.cast(dataset.features)])
    return dataset, {
        **teacher.record,
        "distill_alpha": cfg.distill.alpha,
        "distill_temperature": cfg.distill.temperature,
        "distill_labelled_examples": len(splits.train),
        "distill_unlabelled_examples": len(extra),
        "distill_teacher_seconds": time.perf_counter() - started,
    }


def teacher_agreement(teacher_logits, student_probabilities, gold) -> dict[str, Any]:
    """How a student's test predictions relate to its teacher's on the same rows: the fraction of
    identical predictions, both accuracies and the exact McNemar test (metrics.mcnemar) of the
    teacher against the student."""
    gold = np.asarray(gold, dtype=np.int64)
    teacher = np.argmax(np.asarray(teacher_logits), axis=1)
    student = np.argmax(np.asarray(student_probabilities), axis=1)
    test = mcnemar(teacher == gold, student == gold)
    return {
        "teacher_agreement": float(np.mean(teacher == student)) if len(gold) else math.nan,
        "teacher_paired_accuracy": float(np.mean(teacher == gold)) if len(gold) else math.nan,
        "teacher_mcnemar_p_value": test["p_value"],
        "teacher_only_correct": test["a_only_correct"],
        "student_only_correct": test["b_only_correct"],
    }


def _train_neural(
    cfg: RunConfig, splits: DatasetSplits, output_dir: Path, resume: bool, teacher: Teacher | None = None
) -> dict[str, Any]:
    import torch
    from transformers import DataCollatorWithPadding, set_seed

    method = registry.get(cfg.method.name)
    source = resolve_model(cfg.model)  # already checked by train(); cheap for local folders
    tokenizer = load_tokenizer(source)
    max_length = cfg.data.resolved_max_length
    started = time.perf_counter()

    def split_dataset(split):  # with long_text chunk: a row per window, plus its text's index (`document`)
        return tokenize_split(
            tokenizer, split, max_length, cfg.data.truncation, cfg.data.long_text, cfg.data.chunk_stride
        )

    train_ds, truncated_train = split_dataset(splits.train)
    distilled: dict[str, Any] = {}
    if teacher is not None and cfg.data.long_text == "chunk":
        # The teacher gives one set of logits per text; a chunked training set has a row per window.
        raise ConfigError("data.long_text: 'chunk' cannot be combined with distill.teacher; use truncate")
    if teacher is not None:
        train_ds, distilled = with_teacher_logits(teacher, cfg, splits, train_ds, tokenizer)
    validation_ds, _ = split_dataset(splits.validation)
    # Evaluation runs in dataset order, so sorting by length keeps padding low; the validation
    # metrics do not depend on order.
    validation_ds = validation_ds.select(np.argsort(validation_ds["length"], kind="stable"))
    test_ds, truncated_test = split_dataset(splits.test)
    tokenize_seconds = time.perf_counter() - started

    set_seed(cfg.train.seed)  # before the head is created, so its initialisation follows the seed
    multi_label = cfg.data.problem_type == "multi_label"
    model = method.prepare(load_classifier(source, splits.label_names, multi_label=multi_label), cfg.method)
    trainable, total = count_parameters(model)
    precision = resolve_precision(cfg.train.precision)
    cuda = torch.cuda.is_available()

    weights_mib = tensor_mib(list(model.parameters()))
    gradients_mib = tensor_mib([p for p in model.parameters() if p.requires_grad])
    rss_before_training = current_rss_mib()
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    optimizer = None
    if cfg.method.layer_lr_decay != 1.0:
        optimizer = torch.optim.AdamW(
            layerwise_parameter_groups(model, cfg.learning_rate, cfg.method.layer_lr_decay, cfg.train.weight_decay),
            lr=cfg.learning_rate,
        )
    # torch and transformers load here, not when sentitune.training is imported.
    from transformers import EarlyStoppingCallback

    from sentitune.trainer import MeasuredTrainer, Meter, ProgressFile

    meter = Meter(cfg.train.warmup_steps_excluded_from_throughput)
    class_weights = class_weight_vector(cfg, splits)
    early_stopping = cfg.train.early_stopping_patience is not None
    checkpoint_dir = output_dir / CHECKPOINT_DIR
    if is_main_process():
        with results.writing(checkpoint_dir):  # marked: sentitune's to rotate and remove
            results.write_marker(checkpoint_dir, results.CHECKPOINTS_MARKER)
    trainer = MeasuredTrainer(
        model=model,
        args=training_arguments(cfg, checkpoint_dir, precision),
        train_dataset=train_ds,
        eval_dataset=validation_ds if cfg.train.eval_strategy != "no" else None,
        processing_class=tokenizer,
        # Multiples of 8 feed tensor cores on GPU; on CPU they only add padding.
        data_collator=DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if cuda else None),
        compute_metrics=_compute_metrics,
        callbacks=[meter, ProgressFile(output_dir / results.PROGRESS_FILE)]
        + ([EarlyStoppingCallback(cfg.train.early_stopping_patience)] if early_stopping else []),
        optimizers=(optimizer, None),
        meter=meter,
        sampler_seed=cfg.train.seed,
        last_checkpoint=last_complete_checkpoint,
        class_weights=torch.tensor(class_weights, dtype=torch.float32) if class_weights else None,
        distillation=(cfg.distill.alpha, cfg.distill.temperature) if teacher is not None else None,
    )
    log_tensorboard_into(trainer, output_dir / results.TENSORBOARD_DIR)
    checkpoint = last_complete_checkpoint(checkpoint_dir) if resume else None
    train_started = time.perf_counter()
    try:
        with results.writing(checkpoint_dir):
            train_output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except RuntimeError as exc:
        if not is_out_of_memory(exc):
            raise
        raise TrainingError(
            f"out of memory at batch size {cfg.train.batch_size}; try --batch-size "
            f"{max(1, cfg.train.batch_size // 2)} with gradient_accumulation_steps "
            f"{cfg.train.gradient_accumulation_steps * 2} (same effective batch), or gradient_checkpointing"
        ) from None
    train_seconds = time.perf_counter() - train_started
    optimizer_mib = tensor_mib(
        [v for state in trainer.optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
    )
    train_peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_mib()

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    # Predict length-sorted (little padding), then put rows back in the test file's order.
    order = np.argsort(test_ds["length"], kind="stable")
    prediction = trainer.predict(test_ds.select(order), metric_key_prefix="test")
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    test_logits = np.empty((len(order), np.asarray(logits).shape[1]), dtype=np.float64)
    test_logits[order] = np.asarray(logits, dtype=np.float64)
    chunked = cfg.data.long_text == "chunk"
    if chunked:  # a text's prediction is the mean of its windows' logits, as the Predictor computes it
        test_logits = mean_per_document(test_logits, test_ds["document"], len(splits.test))
    probabilities = (sigmoid if multi_label else softmax)(test_logits)
    eval_seconds = prediction.metrics["test_runtime"]
    eval_peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_mib()
    thresholds = None
    # Per-label thresholds (multi-label) and the softmax temperature (single-label, in _train_in) come
    # from the validation slice, so no decision ever looks at test labels.
    validation = trainer.predict(validation_ds, metric_key_prefix="validation")
    validation_logits = np.asarray(
        validation.predictions[0] if isinstance(validation.predictions, tuple) else validation.predictions,
        dtype=np.float64,
    )
    validation_labels = np.asarray(validation.label_ids)
    if chunked:  # per text, like the test split: thresholds and the temperature are fitted on texts
        documents = validation_ds["document"]
        validation_logits = mean_per_document(validation_logits, documents, len(splits.validation))
        validation_labels = validation_labels[np.unique(documents, return_index=True)[1]]
    if multi_label:
        thresholds = choose_thresholds(validation_labels, sigmoid(validation_logits)).tolist()
    if teacher is not None and splits.evaluated_split == "test":
        teacher_test = _teacher_logits(teacher, splits.test.texts, len(splits.label_names))
        distilled.update(teacher_agreement(teacher_test, probabilities, splits.test.labels))

    if is_main_process():
        model_dir = output_dir / results.MODEL_DIR
        with results.writing(model_dir):
            if model_dir.exists():
                shutil.rmtree(model_dir)
            method.save(trainer.model, model_dir)
            tokenizer.save_pretrained(model_dir)
            modelcard.make_adapter_portable(model_dir, cfg.model)
        results.atomic_write_csv(output_dir / results.HISTORY_FILE, _history_rows(trainer.state.log_history))

    if cuda:
        activations = max(0.0, train_peak - weights_mib - gradients_mib - optimizer_mib)
        activations_how = "measured (CUDA allocator peak minus weights, gradients and optimizer state)"
        peak_how = "torch.cuda.max_memory_allocated during training"
    else:
        activations = max(0.0, train_peak - rss_before_training - gradients_mib - optimizer_mib)
        activations_how = "estimated (peak RSS minus RSS before training, gradients and optimizer state)"
        peak_how = "peak RSS of the training process (ru_maxrss)"
    num_batches = math.ceil(len(test_ds) / cfg.train.eval_batch_size)
    return {
        "probabilities": probabilities,
        "params_trainable": trainable,
        "params_total": total,
        "train_runtime_seconds": train_seconds,
        "train_steps": trainer.state.global_step,
        "train_epochs": float(trainer.state.epoch or 0),
        # After --resume the Trainer averages only the steps this process ran.
        "train_loss": float(train_output.training_loss),
        "resumed_from_step": int(checkpoint.name.rsplit("-", 1)[1]) if checkpoint else None,
        # Each process counts its own batches; processes run in lockstep, so the total is x world size.
        "train_samples_per_second": world_size() * meter.samples / meter.seconds if meter.seconds else math.nan,
        "train_tokens_per_second": world_size() * meter.tokens / meter.seconds if meter.seconds else math.nan,
        "train_padded_tokens_per_second": world_size() * meter.padded_tokens / meter.seconds
        if meter.seconds
        else math.nan,
        "world_size": world_size(),
        "train_padding_fraction": 1 - meter.tokens / meter.padded_tokens if meter.padded_tokens else math.nan,
        "throughput_measured_steps": meter.steps,
        "throughput_warmup_steps_excluded": cfg.train.warmup_steps_excluded_from_throughput,
        "tokenize_seconds": tokenize_seconds,
        "validation_best_accuracy": best_evaluation(trainer.state).get("eval_accuracy"),
        "best_metric": cfg.best_metric if cfg.train.eval_strategy != "no" else None,
        "validation_best": trainer.state.best_metric,
        "class_weights": class_weights,
        "early_stopped": early_stopping and trainer.state.global_step < trainer.state.max_steps,
        # Texts per second: with long_text chunk a text costs all its windows.
        "eval_samples_per_second": len(splits.test) / eval_seconds if eval_seconds else math.nan,
        "eval_latency_ms_per_batch": 1000 * eval_seconds / num_batches,
        "eval_batch_size": cfg.train.eval_batch_size,
        "peak_memory_mib": train_peak,
        "peak_memory_how": peak_how,
        "eval_peak_memory_mib": eval_peak,
        "memory_weights_mib": weights_mib,
        "memory_gradients_mib": gradients_mib,
        "memory_optimizer_state_mib": optimizer_mib,
        "memory_activations_mib": activations,
        "memory_breakdown_how": "weights, gradients and optimizer state measured from tensor sizes; activations "
        + activations_how,
        "precision": precision,
        "truncated_examples": truncated_train + truncated_test,  # chunk: the texts cut into several windows
        "train_windows": len(train_ds) if chunked else None,
        "test_windows": len(test_ds) if chunked else None,
        "max_length": max_length,
        "model_location": runtime.portable_path(source.location),
        "thresholds": thresholds,
        "test_logits": test_logits,
        "validation_logits": validation_logits,
        "validation_labels": validation_labels,
        **method.run_metrics(trainer.model),  # the resolved pooling
        **distilled,
    }


# ---- classical training -----------------------------------------------------------------------


def _train_classical(cfg: RunConfig, splits: DatasetSplits, output_dir: Path) -> dict[str, Any]:
    method = registry.get(cfg.method.name)
    if method.neural and cfg.data.long_text == "chunk":
        raise ConfigError(
            f"data.long_text: 'chunk' trains through the Trainer's windows; the {method.name} method fits "
            "one embedding per text, so use data.long_text truncate for it"
        )
    context = _fit_context(cfg, splits, output_dir) if method.neural else None
    rss_before = current_rss_mib()
    started = time.perf_counter()
    model, history = method.fit(splits.train, splits.validation, cfg.method, cfg.train.seed, context)
    train_seconds = time.perf_counter() - started
    started = time.perf_counter()
    probabilities = model.predict_proba(splits.test.texts)
    eval_seconds = time.perf_counter() - started
    with results.writing(output_dir / results.MODEL_DIR):
        method.save(model, output_dir / results.MODEL_DIR)
    results.atomic_write_csv(
        output_dir / results.HISTORY_FILE, [{"step": i + 1, **row} for i, row in enumerate(history)]
    )
    peak = peak_rss_mib()
    # After the peak is read: scoring validation for the temperature fit is not part of training.
    validation_probabilities = model.predict_proba(splits.validation.texts)
    # What the fit processed, as the method counts it (tfidf: one pass per C over the training set).
    samples = model.train_samples
    return {
        "probabilities": probabilities,
        # A classical model gives probabilities only; their logs are its logits up to a per-row constant.
        "test_logits": log_probabilities(probabilities),
        "validation_logits": log_probabilities(validation_probabilities),
        "validation_labels": np.asarray(splits.validation.labels),
        "params_trainable": model.num_parameters,
        "params_total": model.num_parameters,
        "train_runtime_seconds": train_seconds,
        "train_steps": len(history),
        "train_epochs": 1.0,
        "train_samples_per_second": samples / train_seconds,
        "throughput_measured_steps": len(history),
        "throughput_warmup_steps_excluded": 0,
        "validation_best_accuracy": max(row["eval_accuracy"] for row in history),
        "eval_samples_per_second": len(splits.test) / eval_seconds if eval_seconds else math.nan,
        "peak_memory_mib": peak,
        "peak_memory_how": "peak RSS of the training process (ru_maxrss)",
        "memory_weights_mib": (model.coef.nbytes + model.intercept.nbytes) / 2**20,
        "memory_activations_mib": max(0.0, peak - rss_before),
        "memory_breakdown_how": "weights measured; the rest estimated as peak RSS growth during the fit",
        "precision": "fp32",
        **method.run_metrics(model),  # the chosen C, the pooling; embed's frozen encoder in params_total
    }


def _fit_context(cfg: RunConfig, splits: DatasetSplits, output_dir: Path):
    """What a neural method that fits itself (embed, setfit) needs from the loop: it sits below models
    and data, so the base model and tokenizer are loaded for it here."""
    from sentitune.data import encode_texts
    from sentitune.methods.base import FitContext

    source = resolve_model(cfg.model)
    tokenizer = load_tokenizer(source)
    max_length = cfg.data.resolved_max_length
    return FitContext(
        run=cfg,
        location=source.location,
        load_base=lambda: load_classifier(source, splits.label_names),
        tokenizer=tokenizer,
        tokenize=lambda texts: encode_texts(tokenizer, texts, max_length, cfg.data.truncation)[0]["input_ids"],
        cache_dir=output_dir / results.EMBEDDINGS_DIR,
        write_bytes=results.atomic_write_bytes,
    )


# ---- calibration ------------------------------------------------------------------------------


def calibrate(test_logits, validation_logits, validation_labels, gold) -> tuple[np.ndarray, dict, dict]:
    """Temperature scaling: one T fitted on the validation slice (metrics.fit_temperature), applied to
    the test logits. The calibrated probabilities are what the run's Predictor serves, so they are the
    ones predictions.csv stores; accuracy is unchanged (argmax of logits / T is argmax of logits).

    Returns:
        (calibrated test probabilities, calibration.json's content, metrics: temperature, test ECE and
        loss before scaling (`*_uncalibrated`) and ECE after (`test_ece_calibrated`)).
    """
    validation_labels = np.asarray(validation_labels, dtype=np.int64)
    temperature = fit_temperature(validation_logits, validation_labels)
    raw, calibrated = softmax(test_logits), temperature_scale(test_logits, temperature)
    validation_nll = [
        classification_metrics(validation_labels, temperature_scale(validation_logits, t))["loss"]
        for t in (1.0, temperature)
    ]
    stored = {
        "temperature": temperature,
        "fitted_on": "validation",
        "validation_examples": int(len(validation_labels)),
        "validation_nll_uncalibrated": validation_nll[0],
        "validation_nll_calibrated": validation_nll[1],
        "method": "temperature scaling: one T minimising validation NLL of softmax(logits / T)",
    }
    metrics = {
        "temperature": temperature,
        "test_ece_uncalibrated": expected_calibration_error(gold, raw)["ece"],
        "test_ece_calibrated": expected_calibration_error(gold, calibrated)["ece"],
        "test_loss_uncalibrated": classification_metrics(gold, raw)["loss"],
    }
    return calibrated, stored, metrics


# ---- entry point ------------------------------------------------------------------------------


def train(
    cfg: RunConfig,
    output_dir: str | Path,
    overwrite: bool = False,
    resume: bool = False,
    selection_only: bool = False,
    teacher: Teacher | None = None,
) -> dict[str, Any]:
    """Trains one run and writes its folder; returns the metrics dict (also in metrics.json).

    `selection_only` (a tuning trial, `train --selection-only`): the test split is never read; the
    final evaluation runs on the validation slice and its figures are named `validation_final_*`.

    `teacher` (distillation; distill.distill loads it from cfg.distill.teacher): the student trains on
    the teacher's logits as well as the gold labels (trainer.distillation_loss), and metrics.json names
    the teacher and records the student's agreement with it on the test split.

    A failure after the folder was created leaves metrics.json with status 'failed' and the error,
    then re-raises, so failed runs stay visible in comparisons. With `overwrite`, an earlier run is
    replaced only once the new one has finished: the new run is built in a staging folder beside it
    (`.<name>.staging-<pid>`) and swapped in (results.swap_in); a failed or killed new run leaves the
    old run as it was. One process trains into a run folder at a time (results.exclusive_lock);
    a second is refused with OutputInUse naming the first one's PID.
    """
    import contextlib

    from sentitune.runtime import code_digest

    code_digest()  # hashed (and cached) now: metrics.json names the code this run starts with, not later edits
    output_dir = Path(output_dir)
    if (cfg.distill.teacher is None) != (teacher is None):
        raise ConfigError(
            "distill.teacher: set, but no teacher was loaded; run it with sentitune distill (or sentitune train, "
            "which loads it)"
            if teacher is None
            else "distill.teacher: a teacher was given but the config names none"
        )
    if resume:  # before anything is written: a refused resume leaves the run folder as it was
        check_resume(cfg, output_dir, overwrite)
    # Bad model names, missing trackers and bad data fail here, before anything is written or replaced.
    if registry.get(cfg.method.name).neural:
        resolve_model(cfg.model)
    check_report_to(cfg.train.report_to)
    splits = load_splits(cfg.data, with_test=not selection_only)
    class_weight_vector(cfg, splits)  # weights of the wrong length fail here too
    main = is_main_process()
    # Under torchrun every rank must name the same staging folder: the launcher's PID, not its own.
    staged = overwrite and (world_size() > 1 or (output_dir.is_dir() and any(output_dir.iterdir())))
    work_dir = results.staging_path(output_dir, os.getppid() if world_size() > 1 else None) if staged else output_dir
    with contextlib.ExitStack() as held:
        if main:
            with results.writing(output_dir):
                prepare_output_dir(output_dir, overwrite, resume)
                held.enter_context(results.exclusive_lock(output_dir))
                if staged:
                    if work_dir.exists():
                        shutil.rmtree(work_dir)  # this process's own earlier attempt
                    results.write_marker(work_dir)
                else:
                    _clean_unfinished(output_dir, resume)
        try:
            metrics = _train_in(cfg, splits, work_dir, resume, main, teacher)
        except BaseException:
            if main and staged:
                shutil.rmtree(work_dir, ignore_errors=True)  # the old run stays as it was
            raise
        if main and staged:
            with results.writing(output_dir):
                results.swap_in(work_dir, output_dir)
    return metrics


def _train_in(
    cfg: RunConfig, splits: DatasetSplits, output_dir: Path, resume: bool, main: bool, teacher: Teacher | None = None
) -> dict[str, Any]:
    """train()'s body: writes the run into `output_dir` (the run folder, or its staging folder)."""
    import torch

    if main:
        results.atomic_write_text(output_dir / results.CONFIG_FILE, cfg.to_yaml())
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    wall_started = time.perf_counter()
    base = {
        "method": cfg.method.name,
        "model": runtime.portable_path(cfg.model),  # config.yaml keeps the path it loads from
        "dataset": cfg.data.dataset,
        "seed": cfg.train.seed,
        "learning_rate": cfg.learning_rate,
        "fingerprint": cfg.fingerprint(),
        "started_at": started_at,
        "provenance": provenance(),
    }
    try:
        if main:
            results.atomic_write_json(output_dir / results.LABELS_FILE, splits.label_names)
        method = registry.get(cfg.method.name)
        measured = (
            _train_neural(cfg, splits, output_dir, resume, teacher)
            if method.uses_trainer
            else _train_classical(cfg, splits, output_dir)
        )
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        if main:
            try:
                results.atomic_write_json(
                    output_dir / results.METRICS_FILE,
                    {
                        "status": status,
                        "error": f"{type(exc).__name__}: {exc}",
                        **base,
                        "wall_seconds": time.perf_counter() - wall_started,
                    },
                )
            except results.OutputNotWritable:
                pass  # a full or read-only disk: the original error says more than this one would
        raise
    probabilities = measured.pop("probabilities")
    measured.setdefault("class_weights", None)  # methods that fit their own head train unweighted
    thresholds = measured.pop("thresholds", None)
    gold = np.asarray(splits.test.labels)
    validation_scores = validation_metrics(
        measured.get("validation_logits"), measured.get("validation_labels"), thresholds
    )
    calibration = None
    if thresholds is None and "validation_logits" in measured:
        probabilities, calibration, calibration_metrics = calibrate(
            measured.pop("test_logits"), measured.pop("validation_logits"), measured.pop("validation_labels"), gold
        )
        measured.update(calibration_metrics)
    for key in ("test_logits", "validation_logits", "validation_labels"):
        measured.pop(key, None)
    if thresholds is not None:  # multi-label
        test = multilabel_metrics(gold, probabilities, thresholds)
        rows = results.multilabel_prediction_rows(
            splits.test.texts, gold, probabilities, splits.label_names, thresholds, cfg.data.label_separator
        )
        measured.update(problem_type="multi_label", label_thresholds=dict(zip(splits.label_names, thresholds)))
    else:
        test = classification_metrics(gold, probabilities)
        rows = results.predictions_rows(splits.test.texts, gold, probabilities, splits.label_names)
    if main:
        if thresholds is not None:
            results.atomic_write_json(output_dir / results.THRESHOLDS_FILE, measured["label_thresholds"])
        if calibration is not None:
            results.atomic_write_json(output_dir / results.CALIBRATION_FILE, calibration)
        results.atomic_write_csv(output_dir / results.PREDICTIONS_FILE, rows)
        shutil.rmtree(output_dir / CHECKPOINT_DIR, ignore_errors=True)  # finished: the model folder is the result
    metrics = {
        "status": "ok",
        "error": None,
        **base,
        **{f"test_{k}": v for k, v in test.items()},
        "test_examples": len(gold),
        "train_examples": len(splits.train),
        "validation_examples": len(splits.validation),
        **validation_scores,
        "params_trainable_percent": 100 * measured["params_trainable"] / measured["params_total"],
        **measured,
        # What the method trained (methods.base.Method.checkpoint_pattern): head and bitfit folders
        # also hold a full model copy for plain transformers, which is not what they need.
        "checkpoint_size_mib": results.folder_size_mib(output_dir / results.MODEL_DIR, method.checkpoint_pattern),
        "data_source": runtime.portable_path(splits.source),
        "data_notes": splits.notes,
        "data_split": splits.carved
        and {**splits.carved, "test_carved_from": runtime.portable_path(splits.carved["test_carved_from"])},
        "label_names": splits.label_names,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_seconds": time.perf_counter() - wall_started,
    }
    if splits.evaluated_split != "test":
        # A tuning trial never read test: its final figures were measured on the validation slice,
        # and are named so (validation_final_accuracy, ...), never test_*.
        final = f"{splits.evaluated_split}_final_"
        metrics = {(final + k[len("test_") :] if k.startswith("test_") else k): v for k, v in metrics.items()}
        metrics["evaluated_split"] = splits.evaluated_split
    if main:
        modelcard.write_run_card(output_dir / results.MODEL_DIR, cfg, metrics)
        results.atomic_write_json(output_dir / results.METRICS_FILE, metrics)
    return metrics
