"""The Hugging Face Trainer as training.py runs it: `MeasuredTrainer` (throughput metering, a stop at the
first non-finite loss, epoch-seeded length-grouped batches, evaluation in dataset order) and its `Meter`
callback.

This module imports torch and transformers at the top; training.py imports it only when a neural run
starts, so `import sentitune.training` (and the CLI) stays light.

Example:
    >>> meter = Meter(warmup_steps=2)  # doctest: +SKIP
    >>> trainer = MeasuredTrainer(model=model, args=args, meter=meter, sampler_seed=42)  # doctest: +SKIP
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import SequentialSampler
from transformers import Trainer, TrainerCallback
from transformers.trainer_pt_utils import LengthGroupedSampler

from sentitune import results
from sentitune.errors import OutputNotWritable, TrainingError


class Meter(TrainerCallback):
    """Samples/s and tokens/s over optimizer steps after the warm-up ones.

    The trainer reports each micro-batch with `observe(inputs)`; a step's counts join the totals only
    once it ends after `warmup_steps` (kernel selection and allocator growth make the first steps slow).
    `tokens` counts attention-mask ones, `padded_tokens` every position fed to the model.
    """

    def __init__(self, warmup_steps: int):
        self.warmup_steps = warmup_steps
        self.seconds = 0.0
        self.samples = self.tokens = self.padded_tokens = self.steps = 0
        self._step = {"samples": 0, "tokens": 0, "padded": 0}
        self._start: float | None = None

    @staticmethod
    def _sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def observe(self, inputs) -> None:
        mask = inputs.get("attention_mask")
        self._step["samples"] += int(inputs["input_ids"].shape[0])
        self._step["padded"] += int(inputs["input_ids"].numel())
        self._step["tokens"] += int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())

    def on_step_begin(self, args, state, control, **kwargs):
        self._sync()
        self._start = time.perf_counter()
        self._step = {"samples": 0, "tokens": 0, "padded": 0}

    def on_step_end(self, args, state, control, **kwargs):
        self._sync()
        if self._start is not None and state.global_step > self.warmup_steps:
            self.seconds += time.perf_counter() - self._start
            self.samples += self._step["samples"]
            self.tokens += self._step["tokens"]
            self.padded_tokens += self._step["padded"]
            self.steps += 1


class ProgressFile(TrainerCallback):
    """Writes `path` (a run's progress.json) while training: step, max_steps, the last logged loss,
    samples/s and ETA over the steps this process ran, elapsed seconds. Rewritten atomically at most
    every `every_s` seconds and at the end, so a reader (compare) never sees half a file. Best effort:
    a failed write skips one update, never the run."""

    def __init__(self, path: Path, every_s: float = 2.0):
        self.path = Path(path)
        self.every_s = every_s
        self.loss: float | None = None
        self._begin = self._written = 0.0
        self._first_step = 0

    def _write(self, args, state, force: bool = False) -> None:
        now = time.monotonic()
        if not state.is_world_process_zero or (not force and now - self._written < self.every_s):
            return
        self._written = now
        elapsed = now - self._begin
        steps = state.global_step - self._first_step
        per_step = elapsed / steps if steps > 0 else None
        # Samples per optimizer step as configured (a short last batch makes the figure a touch high).
        batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * max(args.world_size, 1)
        remaining = max(state.max_steps - state.global_step, 0)
        record = {
            "step": state.global_step,
            "max_steps": state.max_steps,
            "epoch": state.epoch,
            "loss": self.loss,
            "samples_per_second": batch / per_step if per_step else None,
            "elapsed_s": round(elapsed, 3),
            "eta_s": round(per_step * remaining, 3) if per_step else None,
            "updated": time.time(),
        }
        try:
            results.atomic_write_json(self.path, record)
        except (OSError, OutputNotWritable):
            pass

    def on_train_begin(self, args, state, control, **kwargs):
        self._begin = time.monotonic()
        self._first_step = state.global_step  # after a resume, speed counts only this process's steps
        self._write(args, state, force=True)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.loss = float(logs["loss"])
            self._write(args, state)

    def on_step_end(self, args, state, control, **kwargs):
        self._write(args, state)

    def on_train_end(self, args, state, control, **kwargs):
        self._write(args, state, force=True)


TEACHER_LOGITS = "teacher_logits"
"""The training-set column holding a teacher's logits per row (distillation)."""

UNLABELLED = -100
"""The label of a row that has teacher logits but no gold label (torch's cross-entropy ignore index)."""


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: float,
    temperature: float,
) -> torch.Tensor:
    """Knowledge-distillation loss, the mean over the rows of the batch (Hinton et al. 2015).

    A labelled row: alpha x T^2 x KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) x
    cross-entropy(student, gold). A row labelled UNLABELLED (a text only the teacher labelled): the
    T^2 x KL term alone. The T^2 factor keeps the soft term's gradients on the cross-entropy's scale.

    Example:
        >>> student, teacher, gold = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([0])
        >>> ce = torch.nn.functional.cross_entropy(student, gold)
        >>> bool(distillation_loss(student, teacher, gold, 0.0, 2.0) == ce)
        True
    """
    student = student_logits.float()
    log_student = torch.log_softmax(student / temperature, dim=-1)
    log_teacher = torch.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = (log_teacher.exp() * (log_teacher - log_student)).sum(dim=-1) * temperature**2
    labelled = labels != UNLABELLED
    cross_entropy = torch.nn.functional.cross_entropy(
        student, torch.where(labelled, labels, 0).long(), reduction="none"
    )
    per_row = torch.where(labelled, alpha * kl + (1 - alpha) * cross_entropy, kl)
    return per_row.mean()


class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
    """Length-grouped order drawn from (seed, epoch) alone. The stock sampler draws from the global RNG,
    whose state when an epoch starts depends on everything before it (dropout included), so a run
    resumed mid-training would see another order from the next epoch on."""

    def __init__(self, *args, seed: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # the Trainer calls this before every epoch
        self.epoch = epoch

    def __iter__(self):
        self.generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return super().__iter__()


class MeasuredTrainer(Trainer):
    """Trainer that meters throughput (`meter`), stops at the first non-finite loss before the optimizer
    step, draws length-grouped batches from (`sampler_seed`, epoch), and evaluates in dataset order.

    `last_checkpoint(checkpoint_dir)` names the checkpoint a stopped run keeps, for the error message.
    """

    def __init__(
        self,
        *args,
        meter: Meter,
        sampler_seed: int,
        last_checkpoint: Callable[[Path], Path | None] | None = None,
        class_weights: torch.Tensor | None = None,
        distillation: tuple[float, float] | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.meter = meter
        self.sampler_seed = sampler_seed
        self.last_checkpoint = last_checkpoint
        self.class_weights = class_weights
        self.distillation = distillation
        """(alpha, temperature) when training rows carry `teacher_logits` (distillation_loss)."""
        if class_weights is not None or distillation is not None:
            # compute_loss returns a per-micro-batch mean, which the Trainer divides by the accumulation steps.
            self.loss_is_scaled_for_ga = False

    def _set_signature_columns_if_needed(self):
        # The Trainer drops dataset columns the model's forward does not name; the teacher's logits
        # are the loss's, not the model's, and must reach compute_loss.
        super()._set_signature_columns_if_needed()
        if self.distillation is not None and TEACHER_LOGITS not in self._signature_columns:
            self._signature_columns.append(TEACHER_LOGITS)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """With teacher logits in the batch (distillation), `distillation_loss`; with `class_weights`,
        weighted cross-entropy (the weighted mean over the micro-batch, as torch's cross_entropy with
        `weight`); otherwise the model's own loss."""
        if self.distillation is not None and TEACHER_LOGITS in inputs:
            inputs = dict(inputs)
            labels, teacher = inputs.pop("labels"), inputs.pop(TEACHER_LOGITS)
            outputs = model(**inputs)
            logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
            alpha, temperature = self.distillation
            loss = distillation_loss(logits, teacher.to(logits.device), labels.to(logits.device), alpha, temperature)
            return (loss, outputs) if return_outputs else loss
        if self.distillation is not None and model.training:
            # Without the column the student would train on gold labels alone, silently.
            raise RuntimeError(f"a training batch lacks {TEACHER_LOGITS}; the Trainer dropped the column")
        if self.class_weights is None or "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs = dict(inputs)  # the caller's batch keeps its labels (prediction_step reads them)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        loss = torch.nn.functional.cross_entropy(
            logits.float(), labels.to(logits.device), weight=self.class_weights.to(logits.device)
        )
        return (loss, outputs) if return_outputs else loss

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if type(sampler) is LengthGroupedSampler:
            return EpochSeededLengthGroupedSampler(sampler.batch_size, lengths=sampler.lengths, seed=self.sampler_seed)
        return sampler

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.meter.observe(inputs)
        loss = super().training_step(model, inputs, num_items_in_batch)
        # Checked before the optimizer step, so neither the weights nor any checkpoint take the bad
        # update. The sync it costs replaces the Trainer's own NaN check, which
        # logging_nan_inf_filter=False turns off.
        if not torch.isfinite(loss).all():
            checkpoint = self.last_checkpoint(Path(self.args.output_dir)) if self.last_checkpoint else None
            kept = "no checkpoint had been written yet"
            if checkpoint:
                kept = f"the last good checkpoint is kept in {checkpoint}"
            precision = " or use precision fp32" if self.args.fp16 or self.args.bf16 else ""
            raise TrainingError(
                f"loss became {loss.detach().float().mean().item()} at step {self.state.global_step + 1}; "
                f"lower method.learning_rate (now {self.args.learning_rate}){precision}; {kept}"
            )
        return loss

    def _get_eval_sampler(self, eval_dataset):
        # transformers 5 applies group_by_length to evaluation too and returns predictions in that
        # shuffled order; test probabilities are paired with texts and gold labels by position. Under
        # DDP, accelerate shards this sampler's batches across processes and gather_for_metrics
        # restores dataset order and drops the padding duplicates.
        return SequentialSampler(eval_dataset) if eval_dataset is not None else None
