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

from sentitune.errors import TrainingError


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
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.meter = meter
        self.sampler_seed = sampler_seed
        self.last_checkpoint = last_checkpoint

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
