"""SetFit (Tunstall et al. 2022) through the `setfit` library: contrastive fine-tuning of the sentence
encoder on pairs of training sentences (same label: cosine similarity 1, different labels: 0), then
a logistic-regression head on the tuned encoder's pooled embeddings, with C chosen on the validation
slice as `embed` does. Few-shot is where it shines.

Knobs: `method.setfit_pairs` sentence pairs, seen `method.setfit_epochs` times, at the body learning
rate `method.learning_rate` (setfit's default 2e-5), in batches of `train.batch_size`;
`train.max_steps` caps the optimizer steps as for every method. The pairs are drawn here, half
positive and half negative, with the run's seed and in time linear in their count: setfit's own
sampler enumerates all n(n+1)/2 pairs with a fixed seed (42), which at 8,000 sentences holds 32 million
index pairs and ignores the run's seed.

`method.pooling` is the body's pooling in training and the head's at inference (`auto`: mean for
minilm-l6). With `cls`, the body trains the [CLS] state and the head reads it through BERT's pooler,
which the contrastive phase leaves as pretrained.

Saved as the whole tuned classifier (safetensors) with the head folded into its classifier layer, so
the run predicts, exports and serves like `full`; setfit's own save (a pickled scikit-learn head) is
never used.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import warnings
from pathlib import Path

import numpy as np

from sentitune.methods.base import FitContext, Method
from sentitune.methods.embed import check_single_label, embed_texts, embedding_metrics, fit_head, pooled_model
from sentitune.methods.pooling import model_pooling
from sentitune.methods.registry import register


def sample_pairs(labels, count: int, seed: int) -> list[tuple[int, int, float]]:
    """`count` (i, j, similarity) pairs of distinct examples, alternating a positive pair (same label,
    1.0) and a negative one (different labels, 0.0), as setfit's sampler orders them.

    Example:
        >>> pairs = sample_pairs([0, 0, 1, 1], 4, seed=0)
        >>> [similarity for _, _, similarity in pairs]
        [1.0, 0.0, 1.0, 0.0]
    """
    from sentitune.errors import ConfigError

    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    classes = np.unique(labels)
    members = {label: np.flatnonzero(labels == label) for label in classes}
    anchors = np.concatenate([members[label] for label in classes if len(members[label]) >= 2] or [[]]).astype(int)
    if len(classes) < 2 or not len(anchors):
        raise ConfigError(
            "method.name: setfit needs at least two labels in the training data and two examples of one of them"
        )
    pairs = []
    for k in range(count):
        if k % 2 == 0:
            i = int(rng.choice(anchors))
            same = members[labels[i]]
            j = int(rng.choice(same[same != i]))
            pairs.append((i, j, 1.0))
        else:
            i = int(rng.integers(len(labels)))
            j = int(rng.choice(np.flatnonzero(labels != labels[i])))
            pairs.append((i, j, 0.0))
    return pairs


@contextlib.contextmanager
def _quiet_setfit():
    """setfit sets its own logging to INFO at import and the Trainer prints progress; a run's stdout
    and stderr belong to sentitune."""
    import setfit.logging as setfit_logging
    from transformers.utils import logging as hf_logging

    level = setfit_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    setfit_logging.set_verbosity_warning()
    hf_logging.disable_progress_bar()  # "Loading weights" as sentence-transformers loads the body
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
            yield
    finally:
        setfit_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def train_body(model, texts: list[str], labels, cfg, seed: int, context: FitContext) -> dict:
    """Contrastive fine-tuning of `model`'s encoder with setfit's Trainer on a sentence-transformers
    body of the same weights and pooling; the tuned weights are copied back into `model.bert`.
    Returns what the phase did (steps, pairs, final loss)."""
    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from setfit import SetFitModel, Trainer, TrainingArguments
    from transformers import PrinterCallback, ProgressCallback

    run = context.run
    pairs = sample_pairs(labels, cfg.setfit_pairs, seed)

    class PairTrainer(Trainer):
        """setfit's Trainer with the pairs drawn above (sample_pairs says why)."""

        def get_dataset(self, x, y, args, max_pairs=-1):
            rows = [{"sentence_1": x[i], "sentence_2": x[j], "label": similarity} for i, j, similarity in pairs]
            return Dataset.from_list(rows), args.loss(self.model.model_body)

    with _quiet_setfit(), tempfile.TemporaryDirectory(prefix="sentitune-setfit-") as scratch:
        transformer = Transformer(
            context.location, max_seq_length=run.data.resolved_max_length, model_kwargs={"use_safetensors": True}
        )
        transformer.model.load_state_dict(model.bert.state_dict())  # the classifier's weights, whatever their source
        pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode=model_pooling(model))
        body = SentenceTransformer(modules=[transformer, pooling], device=str(next(model.parameters()).device))
        args = TrainingArguments(
            output_dir=scratch,  # save_strategy "no": nothing is written, but never into the working directory
            batch_size=run.train.batch_size,
            num_epochs=cfg.setfit_epochs,
            max_steps=run.train.max_steps,
            body_learning_rate=run.learning_rate,
            warmup_proportion=run.train.warmup_ratio,
            l2_weight=run.train.weight_decay,
            seed=seed,
            report_to="none",
            show_progress_bar=False,
            save_strategy="no",
            logging_steps=run.train.logging_steps,
        )
        trainer = PairTrainer(model=SetFitModel(model_body=body), args=args)
        for callback in (ProgressCallback, PrinterCallback):
            trainer.st_trainer.remove_callback(callback)
        trainer.train_embeddings(list(texts), list(labels), args=args)
        state = trainer.st_trainer.state
        with torch.no_grad():
            model.bert.load_state_dict(transformer.model.state_dict())
    losses = [row["embedding_loss"] for row in state.log_history if "embedding_loss" in row]
    return {
        "setfit_pairs": len(pairs),
        "setfit_body_steps": int(state.global_step),
        "setfit_body_final_loss": float(losses[-1]) if losses else math.nan,
        "setfit_pairs_trained": min(int(state.global_step) * run.train.batch_size, len(pairs) * cfg.setfit_epochs),
    }


@register
class SetFit(Method):
    name = "setfit"
    # setfit's body_learning_rate default; the head is a logistic regression and has no learning rate.
    default_learning_rate = 2e-5
    summary = "contrastive fine-tuning of the sentence encoder, then logistic regression on its embeddings"
    uses_trainer = False
    supports_multi_label = False
    extra_tunable_knobs = ("setfit_pairs", "setfit_epochs")
    recorded_knobs = ("setfit_pairs", "setfit_epochs", "logreg_c_grid")

    @property
    def tunable_knobs(self) -> tuple[str, ...]:
        return ("learning_rate", *self.extra_tunable_knobs)  # no layer-wise decay: setfit's optimiser

    def mark_trainable(self, model, cfg):  # pragma: no cover - fits itself
        raise TypeError("setfit trains with setfit's own Trainer (fit), not in sentitune's Trainer loop")

    def fit(self, train, validation, cfg, seed: int, context: FitContext):
        """Tunes the body on sentence pairs, then fits the head on the tuned embeddings; returns
        (EncoderClassifier, one history row per C)."""
        check_single_label(self.name, train.labels)
        model = pooled_model(context, cfg)
        body = train_body(model, train.texts, train.labels, cfg, seed, context)
        pad_id = context.tokenizer.pad_token_id or 0
        batch_size = context.run.train.eval_batch_size
        # No cache: the embeddings belong to this run's tuned encoder alone.
        train_x = embed_texts(model, context.tokenize(train.texts), batch_size, pad_id)
        validation_x = embed_texts(model, context.tokenize(validation.texts), batch_size, pad_id)
        fitted, history = fit_head(model, context, train, validation, train_x, validation_x, cfg, seed)
        for name, parameter in model.named_parameters():
            # The body trained too; BERT's pooler never does (the sentence-transformers body reads the
            # token states), and with mean pooling nothing reads it.
            parameter.requires_grad = ".pooler." not in f".{name}."
        # The body's optimizer steps are the run's training steps (the loop would count the C fits).
        fitted.extra_metrics = {**body, "train_steps": body["setfit_body_steps"], "train_epochs": cfg.setfit_epochs}
        # Two sentences per trained pair, plus the pass that embeds train for the head.
        fitted.train_samples = 2 * body["setfit_pairs_trained"] + len(train)
        return fitted, history

    def save(self, model, folder: Path) -> None:
        model.model.save_pretrained(folder)  # whole model; config.json carries the pooling
        model.tokenizer.save_pretrained(folder)

    def run_metrics(self, model) -> dict:
        return embedding_metrics(model)
