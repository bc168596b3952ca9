"""Domain-adaptive pretraining: continue masked-language-model training of an encoder on in-domain text
(unlabelled), then fine-tune the result with `--model <folder>`.

The output folder is an ordinary local model folder (config.json, model.safetensors, tokenizer) plus
`pretrain.json` (what was done, losses, provenance) and `history.csv`. It holds:
  * the adapted encoder (`bert.*`);
  * the MLM head (`cls.predictions.*`, decoder tied to the word embeddings), so pretraining can
    continue from the folder;
  * the source model's pooler, copied unchanged: BertForMaskedLM has no pooler, and without the copy
    every later `pooler+classifier` fine-tune would start from a random pooler, so a with/without
    comparison would measure the pooler, not the adaptation.

The bundled `minilm-l6` is a sentence-transformers export without MLM head weights: its head starts
freshly initialised (only the transform layer and the bias are new; the decoder is tied to the
pretrained word embeddings). `pretrain.json` records this as `mlm_head_initialised`.

Example:
    >>> cfg = PretrainConfig(model="minilm-l6", texts="imdb", max_steps=300, max_length=256)  # doctest: +SKIP
    >>> summary = pretrain(cfg, "models/minilm-l6-imdb")  # doctest: +SKIP
    >>> summary["eval_mlm_loss_after"] < summary["eval_mlm_loss_before"]  # doctest: +SKIP
    True
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sentitune import results
from sentitune.config import ConfigError, DataConfig, _check_choice, _check_finite, _check_positive, _check_seed
from sentitune.data import DataError, _find_pair, read_texts, resolve_data_dir
from sentitune.runtime import portable_path


PRETRAIN_FILE = "pretrain.json"
NAMED_TEXTS = {"imdb": ("train.csv", "text"), "sst2": ("train.tsv", "sentence")}
"""`--texts NAME` -> (file in $SENTITUNE_DATA_DIR/NAME, text column). Train splits only: adapting on
test texts would leak the evaluation set into the encoder."""


@dataclass
class PretrainConfig:
    model: str = "minilm-l6"
    """Encoder to adapt: alias, local folder or hub id (as for `sentitune train --model`)."""
    texts: str = "imdb"
    """`imdb` or `sst2` (the train split's texts from the data folder, labels ignored), or a
    CSV/TSV/JSONL/TXT file (TXT: one text per line)."""
    text_column: str | None = None
    """Text column of a CSV/TSV/JSONL file; default `sentence` for TSV, `text` otherwise."""
    data_dir: str | None = None
    """Data folder for named texts; default $SENTITUNE_DATA_DIR."""
    max_texts: int | None = None
    """Use a seeded random sample of this many texts; None = all."""
    eval_texts: int = 200
    """Texts held out (seeded) to measure masked-LM loss before and after; 0 = no measurement."""
    max_length: int = 256
    """Tokens per training example including [CLS]/[SEP]."""
    long_texts: str = "chunk"
    """`chunk` splits a text longer than max_length into consecutive windows so no token is thrown
    away; `truncate` keeps only the start."""
    mlm_probability: float = 0.15
    """Fraction of tokens selected for prediction (of which 80% become [MASK], 10% random, 10% kept)."""
    epochs: float = 1.0
    """Passes over the texts (fractional allowed); max_steps wins when set."""
    max_steps: int = -1
    """Stop after this many optimizer steps; -1 = use epochs."""
    batch_size: int = 16
    """Examples per optimizer step."""
    learning_rate: float = 5e-5
    """Peak learning rate (linear warm-up, then linear decay)."""
    warmup_ratio: float = 0.06
    """Fraction of steps with linear warm-up."""
    weight_decay: float = 0.01
    """AdamW weight decay (not on biases and LayerNorm weights)."""
    seed: int = 42
    """Seed for the text sample, masking and data order."""
    precision: str = "auto"
    """`auto` (bf16/fp16 on CUDA, fp32 on CPU), `fp32`, `bf16`, `fp16`."""
    logging_steps: int = 10
    """Print and record the training loss every N steps."""
    threads: int | None = None
    """torch CPU threads; None = torch's default."""

    def __post_init__(self) -> None:
        _check_choice("pretrain", "long_texts", self.long_texts, ("chunk", "truncate"))
        _check_choice("pretrain", "precision", self.precision, ("auto", "fp32", "bf16", "fp16"))
        for name in ("epochs", "batch_size", "learning_rate", "logging_steps", "max_texts", "threads"):
            _check_positive("pretrain", name, getattr(self, name))
        _check_positive("pretrain", "eval_texts", self.eval_texts, allow_zero=True)
        _check_positive("pretrain", "weight_decay", self.weight_decay, allow_zero=True)
        _check_finite("pretrain", "warmup_ratio", self.warmup_ratio)
        _check_seed("pretrain", "seed", self.seed)
        if not 8 <= self.max_length <= 512:
            raise ConfigError(f"pretrain.max_length: must be between 8 and 512 (BERT positions), got {self.max_length}")
        if not 0 < self.mlm_probability < 1:
            raise ConfigError(f"pretrain.mlm_probability: must be in (0, 1), got {self.mlm_probability}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"pretrain.warmup_ratio: must be in [0, 1), got {self.warmup_ratio}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ConfigError(f"pretrain.max_steps: must be -1 (use epochs) or > 0, got {self.max_steps}")
        if not self.texts:
            raise ConfigError("pretrain.texts: name a dataset (imdb, sst2) or a file")


# ---- texts ------------------------------------------------------------------------------------


def load_texts(cfg: PretrainConfig) -> tuple[list[str], str]:
    """(texts, source description) for `cfg.texts`; empty lines are skipped.

    Example:
        >>> texts, source = load_texts(PretrainConfig(texts="imdb"))  # doctest: +SKIP
        >>> len(texts), source  # doctest: +SKIP
        (25000, '../shared/data/imdb/train.csv:text')
    """
    if cfg.texts in NAMED_TEXTS:
        filename, column = NAMED_TEXTS[cfg.texts]
        root = resolve_data_dir(DataConfig(dataset=cfg.texts, data_dir=cfg.data_dir))
        if root is None:
            raise DataError(f"--texts {cfg.texts}: no data folder; set --data-dir or $SENTITUNE_DATA_DIR")
        pair = _find_pair(root, cfg.texts, (filename, filename))
        if pair is None:
            raise DataError(f"{root}: no {cfg.texts}/{filename} (nor in the folder itself)")
        path, column = pair[0], cfg.text_column or column
    else:
        path, column = Path(cfg.texts), cfg.text_column
        if not path.is_file():
            raise DataError(f"--texts {cfg.texts}: not a file, and not one of {', '.join(NAMED_TEXTS)}")
    texts = [t.strip() for t in read_texts(path, column)]  # read_texts drops the blank ones
    if not texts:
        raise DataError(f"{path}: no non-empty texts")
    return texts, f"{path}:{column or 'line'}"


def split_texts(texts: list[str], cfg: PretrainConfig) -> tuple[list[str], list[str]]:
    """(train, held-out) after the optional seeded sample; the held-out texts are never trained on."""
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(texts))
    held = order[: cfg.eval_texts] if cfg.eval_texts < len(texts) else order[:0]
    rest = order[len(held) :]
    if cfg.max_texts:
        rest = rest[: cfg.max_texts]
    if len(rest) == 0:
        raise DataError(f"{len(texts)} texts leave none to train on after holding out {cfg.eval_texts}")
    return [texts[i] for i in np.sort(rest)], [texts[i] for i in np.sort(held)]


def encode_for_mlm(tokenizer, texts: list[str], max_length: int, long_texts: str = "chunk") -> list[list[int]]:
    """Token ids with [CLS]/[SEP], at most `max_length` each; `chunk` turns a long text into
    consecutive windows (the last one shorter), `truncate` keeps its start.

    Example:
        >>> from transformers import AutoTokenizer  # doctest: +SKIP
        >>> ids = encode_for_mlm(AutoTokenizer.from_pretrained("bert-base-uncased"), ["a b c d e"], 5)  # doctest: +SKIP
        >>> [len(x) for x in ids]  # doctest: +SKIP
        [5, 4]
    """
    from sentitune.models import quiet_transformers

    if not texts:
        return []
    with quiet_transformers():  # "longer than the maximum sequence length": the windows below cut it
        body = tokenizer(texts, add_special_tokens=False, truncation=False)["input_ids"]
    budget = max_length - 2
    out = []
    for ids in body:
        if not ids:
            continue
        starts = range(0, len(ids), budget) if long_texts == "chunk" else [0]
        for start in starts:
            out.append([tokenizer.cls_token_id] + ids[start : start + budget] + [tokenizer.sep_token_id])
    return out


# ---- model ------------------------------------------------------------------------------------


def load_mlm_model(location: str):
    """(AutoModelForMaskedLM, names of the MLM-head weights that were freshly initialised)."""
    import torch
    from transformers import AutoModelForMaskedLM

    from sentitune.models import quiet_transformers

    with quiet_transformers():  # the missing-head warning is expected and recorded instead
        model, info = AutoModelForMaskedLM.from_pretrained(
            location, dtype=torch.float32, output_loading_info=True, use_safetensors=True
        )  # never unpickle weights
    fresh = sorted(k for k in info.get("missing_keys", []) if not k.startswith(model.base_model_prefix + "."))
    return model, fresh


def _pooler_state(location: str) -> dict:
    """The source model's pooler weights under `bert.pooler.*` (empty if it has none)."""
    import torch
    from transformers import AutoModel

    from sentitune.models import quiet_transformers

    with quiet_transformers():
        base, info = AutoModel.from_pretrained(
            location, dtype=torch.float32, output_loading_info=True, use_safetensors=True
        )
    pooler = getattr(base, "pooler", None)
    if pooler is None or any("pooler" in k for k in info.get("missing_keys", [])):
        return {}  # a random pooler is no better than the classifier's own fresh one
    return {f"bert.pooler.{k}": v.detach().clone().contiguous() for k, v in pooler.state_dict().items()}


def save_model_folder(model, tokenizer, output_dir: Path, extra_state: dict | None = None) -> None:
    """Writes safetensors weights, config and tokenizer; `extra_state` adds tensors (the pooler)."""
    state = {**model.state_dict(), **(extra_state or {})}
    model.save_pretrained(output_dir, state_dict=state, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)


# ---- evaluation -------------------------------------------------------------------------------


def fixed_masked_batches(
    tokenizer, ids: list[list[int]], mlm_probability: float, batch_size: int, seed: int
) -> list[dict]:
    """Held-out examples masked once with a fixed seed, so the before/after losses score the same
    masked positions and their difference is the model's, not the masking's."""
    from transformers import DataCollatorForLanguageModeling

    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=mlm_probability, seed=seed)
    order = np.argsort([len(x) for x in ids], kind="stable")  # little padding
    return [
        collator([{"input_ids": ids[i]} for i in order[start : start + batch_size]])
        for start in range(0, len(order), batch_size)
    ]


def masked_lm_loss(model, batch: dict, reduction: str = "mean"):
    """Cross-entropy over the masked positions of `batch` (labels -100 elsewhere).

    BertForMaskedLM projects every position onto the 30k-word vocabulary; here only the ~15% of
    positions that carry a label go through the head. The loss is the same, and for MiniLM the
    vocabulary projection is about as costly as the whole encoder, so a step takes roughly half the
    compute and far less memory. Models without a BERT-style `cls` head use their own forward.
    """
    import torch

    labels = batch["labels"]
    head = getattr(model, "cls", None)
    if head is None:
        loss = model(**batch).loss
        return loss * (labels != -100).sum() if reduction == "sum" else loss
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
    hidden = model.base_model(**inputs).last_hidden_state
    selected = labels != -100
    if not bool(selected.any()):  # possible for a batch of very short texts; contributes nothing
        return hidden.sum() * 0.0
    logits = head(hidden[selected])
    return torch.nn.functional.cross_entropy(logits.float(), labels[selected], reduction=reduction)


def mlm_loss(model, batches: list[dict]) -> float:
    """Mean cross-entropy over the masked tokens of `batches` (token-weighted, not batch-weighted).

    Example:
        >>> mlm_loss(model, fixed_masked_batches(tokenizer, ids, 0.15, 32, 0))  # doctest: +SKIP
        2.31
    """
    import torch

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            total += float(masked_lm_loss(model, batch, reduction="sum"))
            count += int((batch["labels"] != -100).sum())
    model.train(was_training)
    return total / count if count else math.nan


# ---- training ---------------------------------------------------------------------------------


def _progress_callback(echo: Callable[[str], None]):
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        """One line per logging step: loss, learning rate, elapsed and estimated remaining time."""

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):
            loss = (logs or {}).get("loss")
            if loss is None:
                return
            if not math.isfinite(loss):
                from sentitune.training import TrainingError

                raise TrainingError(
                    f"MLM loss became {loss} at step {state.global_step}; lower --learning-rate "
                    f"(now {args.learning_rate}) or use --precision fp32"
                )
            elapsed = time.perf_counter() - self.started
            left = elapsed / max(state.global_step, 1) * (state.max_steps - state.global_step)
            echo(
                f"step {state.global_step}/{state.max_steps}  loss {loss:.4f}  "
                f"lr {logs.get('learning_rate', 0):.2e}  {elapsed:.0f} s elapsed, ~{left:.0f} s left"
            )

    return Progress()


def _mlm_trainer(
    cfg: PretrainConfig, model, tokenizer, train_ds, precision: str, checkpoint_dir: Path, echo: Callable[[str], None]
):
    import torch
    from transformers import DataCollatorForLanguageModeling, PrinterCallback, Trainer, TrainingArguments

    class SparseMLMTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = masked_lm_loss(model, inputs)
            return (loss, None) if return_outputs else loss

    cuda = torch.cuda.is_available()
    args = TrainingArguments(
        output_dir=str(checkpoint_dir),
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        warmup_steps=cfg.warmup_ratio,  # a float in [0, 1) is a ratio of total steps (transformers 5)
        weight_decay=cfg.weight_decay,
        seed=cfg.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        # Similar lengths per batch: dynamic padding then wastes little on short texts.
        train_sampling_strategy="group_by_length",
        save_strategy="no",
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        # The default replaces a NaN/inf step loss by the running mean (0 once every step is NaN),
        # which would hide divergence from the progress callback's check.
        logging_nan_inf_filter=False,
        report_to="none",
        dataloader_num_workers=0,
        dataloader_pin_memory=cuda,
        disable_tqdm=True,  # the progress callback prints one line per logging step instead
    )
    # Masks are drawn per batch (dynamic masking, as RoBERTa): a text seen twice gets new masks.
    collator = DataCollatorForLanguageModeling(
        tokenizer, mlm_probability=cfg.mlm_probability, pad_to_multiple_of=8 if cuda else None
    )
    trainer = SparseMLMTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=[_progress_callback(echo)],
    )
    trainer.remove_callback(PrinterCallback)  # it would print raw log dicts next to the progress lines
    return trainer


def pretrain(
    cfg: PretrainConfig, output_dir: str | Path, overwrite: bool = False, echo: Callable[[str], None] = print
) -> dict[str, Any]:
    """Continues masked-LM training of `cfg.model` on `cfg.texts`; writes a model folder usable as
    `--model` and returns the summary (also in `<output_dir>/pretrain.json`).

    Example:
        >>> summary = pretrain(PretrainConfig(texts="reviews.txt", max_steps=100), "models/adapted")  # doctest: +SKIP
        >>> summary["train_steps"]  # doctest: +SKIP
        100
    """
    import datasets
    import torch
    from transformers import set_seed

    from sentitune.models import check_model_output_dir, count_parameters, load_tokenizer, resolve_model
    from sentitune.training import TrainingError, is_out_of_memory, provenance, resolve_precision

    output_dir = Path(output_dir)
    check_model_output_dir(output_dir, overwrite)
    source = resolve_model(cfg.model)
    texts, text_source = load_texts(cfg)
    train_texts, held_texts = split_texts(texts, cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    tokenizer = load_tokenizer(source)
    started = time.perf_counter()
    train_ids = encode_for_mlm(tokenizer, train_texts, cfg.max_length, cfg.long_texts)
    held_ids = encode_for_mlm(tokenizer, held_texts, cfg.max_length, cfg.long_texts)
    tokenize_seconds = time.perf_counter() - started
    train_ds = datasets.Dataset.from_dict({"input_ids": train_ids, "length": [len(x) for x in train_ids]})
    echo(
        f"{len(train_texts):,} texts -> {len(train_ids):,} examples of <= {cfg.max_length} tokens "
        f"({sum(map(len, train_ids)):,} tokens; {len(held_texts)} texts held out) from {text_source}"
    )

    set_seed(cfg.seed)  # before the head is created, so its initialisation follows the seed
    model, fresh_head = load_mlm_model(source.location)
    pooler = _pooler_state(source.location)
    if fresh_head:
        echo(
            f"note: {cfg.model} has no MLM head weights; the head starts freshly initialised "
            f"({len(fresh_head)} tensors; decoder tied to the word embeddings: {model.config.tie_word_embeddings})"
        )
    precision = resolve_precision(cfg.precision)
    held_batches = fixed_masked_batches(tokenizer, held_ids, cfg.mlm_probability, 32, cfg.seed) if held_ids else []
    if torch.cuda.is_available():
        model.cuda()
    loss_before = mlm_loss(model, held_batches) if held_batches else math.nan
    if held_batches:
        echo(f"held-out MLM loss before: {loss_before:.4f}")

    if output_dir.exists():
        shutil.rmtree(output_dir)  # checked above: empty, or a model folder the user asked to replace
    output_dir.mkdir(parents=True)
    checkpoint_dir = output_dir / "checkpoints"
    trainer = _mlm_trainer(cfg, model, tokenizer, train_ds, precision, checkpoint_dir, echo)
    train_started = time.perf_counter()
    try:
        output = trainer.train()
    except RuntimeError as exc:
        if not is_out_of_memory(exc):
            raise
        raise TrainingError(
            f"out of memory at batch size {cfg.batch_size}; try --batch-size "
            f"{max(1, cfg.batch_size // 2)} or a smaller --max-length"
        ) from None
    train_seconds = time.perf_counter() - train_started
    loss_after = mlm_loss(model, held_batches) if held_batches else math.nan
    if held_batches:
        echo(f"held-out MLM loss after: {loss_after:.4f} (before {loss_before:.4f})")

    save_model_folder(model.cpu(), tokenizer, output_dir, pooler)
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    history = [
        {k: row[k] for k in ("step", "epoch", "loss", "learning_rate", "grad_norm") if k in row}
        for row in trainer.state.log_history
        if "loss" in row
    ]
    results.atomic_write_csv(output_dir / results.HISTORY_FILE, history)
    _, total = count_parameters(model)
    summary = {
        "status": "ok",
        "kind": "masked-language-model continued pretraining",
        "source_model": cfg.model,
        "source_location": portable_path(source.location),
        "texts_source": portable_path(text_source),
        "train_texts": len(train_texts),
        "train_examples": len(train_ids),
        "train_tokens": int(sum(map(len, train_ids))),
        "eval_texts": len(held_texts),
        "mlm_head_initialised": fresh_head,
        "mlm_head_note": (
            "freshly initialised: the source checkpoint has no MLM head weights"
            if fresh_head
            else "loaded from the source checkpoint"
        ),
        "decoder_tied_to_word_embeddings": bool(model.config.tie_word_embeddings),
        "pooler": "copied unchanged from the source model" if pooler else "none in the source model",
        "train_steps": trainer.state.global_step,
        "train_epochs": float(trainer.state.epoch or 0),
        "train_loss": float(output.training_loss),
        "eval_mlm_loss_before": loss_before,
        "eval_mlm_loss_after": loss_after,
        "eval_mlm_perplexity_before": math.exp(loss_before) if math.isfinite(loss_before) else math.nan,
        "eval_mlm_perplexity_after": math.exp(loss_after) if math.isfinite(loss_after) else math.nan,
        "train_runtime_seconds": train_seconds,
        "train_samples_per_second": output.metrics.get("train_samples_per_second"),
        "tokenize_seconds": tokenize_seconds,
        "params_total": total,
        "precision": precision,
        "config": dataclasses.asdict(cfg),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "provenance": provenance(),
    }
    results.atomic_write_json(output_dir / PRETRAIN_FILE, summary)
    echo(f"wrote {output_dir} (use it with --model {output_dir})")
    return summary
