"""Typed run configuration: YAML file -> dataclasses -> CLI overrides -> resolved YAML in the run folder.

Every field has a default and a docstring-style comment; `__post_init__` validates values and names the
field in the error. Unknown keys are errors, so a typo in a YAML file cannot silently fall back to a
default.

Example:
    >>> cfg = RunConfig.from_dict({"model": "minilm-l6", "method": {"name": "lora"}})
    >>> cfg.method.name, cfg.train.batch_size
    ('lora', 32)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from sentitune.errors import ConfigError, quote, read_text


PRESET_DIR = Path(__file__).parent / "configs"
SUITE_DIR = Path(__file__).parent / "suites"
"""Eval sets shipped with sentitune (scripts/make_negation_suite.py writes negation.tsv)."""
EVAL_SET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


MAX_YAML_VALUES = 10_000
"""Most values a YAML document may hold once its aliases are expanded. A config holds under a hundred;
a few hundred bytes of nested aliases ("billion laughs") expand to billions, which any code walking
the result (copying, comparing, quoting it in an error) would try to build."""


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans (true/false only). YAML 1.1 also reads yes/no/on/off as
    booleans, which would turn `eval_strategy: no` into False.

    Also refuses a key given twice in one mapping (YAML says keys are unique; PyYAML keeps the last
    one silently) and documents whose aliases expand to more than MAX_YAML_VALUES values."""

    def compose_document(self):
        node = super().compose_document()
        if node is not None:
            expanded = _expanded_size(node, {})
            if expanded > MAX_YAML_VALUES:
                endless = expanded == float("inf")
                size = "without end (an alias inside its own anchor)" if endless else f"to {expanded:,} values"
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"aliases expand this document {size}, over the limit of {MAX_YAML_VALUES:,} values; "
                    "write the values out instead of nesting aliases",
                    node.start_mark,
                )
        return node

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *base` overrides keys on purpose
                key = self.construct_object(key_node, deep=deep)
                try:
                    first = seen.get(key)
                except TypeError:
                    continue  # unhashable: SafeConstructor refuses it with its own message
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"duplicate key {quote(key)} (first on line {first}); give each key once",
                        key_node.start_mark,
                    )
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node, memo: dict) -> float:
    """Values in `node` with every alias expanded (aliases share nodes, so memo keeps this linear);
    infinite for a node that contains itself."""
    key = id(node)
    if key in memo:
        return float("inf") if memo[key] is None else memo[key]
    memo[key] = None
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [child for pair in node.value for child in pair]
    else:
        children = []
    total = 1 + sum(_expanded_size(child, memo) for child in children)
    memo[key] = total
    return total


_BOOL_TAG = "tag:yaml.org,2002:bool"
_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(_BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def parse_yaml(text: str, source: str | None = None) -> Any:
    """`yaml.safe_load` with YAML 1.2 booleans, duplicate keys refused and alias expansion bounded, for
    config files and `--set KEY=VALUE` values. With `source` (a file name or flag), a YAML error
    becomes one ConfigError line naming it, the line and the column; without, it propagates."""
    try:
        return yaml.load(text, Loader=_Yaml12Loader)
    except yaml.YAMLError as exc:
        if source is None:
            raise
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or str(exc).split("\n")[0]
        raise ConfigError(f"{source}:{where} invalid YAML: {problem}") from None
    except RecursionError:
        if source is None:
            raise
        raise ConfigError(f"{source}: invalid YAML: nested too deeply") from None


def _check_choice(section: str, name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{section}.{name}: {quote(value)} is not one of {', '.join(map(str, choices))}")


NAMED_DATASETS = ("sst2", "imdb", "files")
DATA_DEFAULTS = {
    "test_size": 0.2,
    "train_split": "train",
    "test_split": None,
    "long_text": "truncate",
    "chunk_stride": None,
}
HUB_PREFIX = "hub:"
LONG_TEXT_CHOICES = ("truncate", "chunk")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?(:[\w.-]+)?")


def _check_dataset(value: Any) -> None:
    """A named dataset, `hub:OWNER/NAME[:CONFIG]`, or a path (whether it exists is checked when the data
    loads: a saved run's config stays readable where its data is not)."""
    # A bare word that names no file here is a typo or a hub name without hub: (yelp, sst-2), not a path.
    bare = isinstance(value, str) and not any(c in value for c in "/\\.:") and not Path(value).exists()
    if not isinstance(value, str) or not value.strip() or (bare and value not in NAMED_DATASETS):
        raise ConfigError(
            f"data.dataset: {quote(value)} is not one of {', '.join(NAMED_DATASETS)}, a file or folder, "
            "or hub:OWNER/NAME"
        )
    if value.startswith(HUB_PREFIX) and not _HUB_ID.fullmatch(value[len(HUB_PREFIX) :]):
        raise ConfigError(f"data.dataset: {quote(value)} is not of the form hub:OWNER/NAME or hub:OWNER/NAME:CONFIG")


def dataset_name(dataset: str) -> str:
    if dataset.startswith(HUB_PREFIX):
        repo, _, config_name = dataset[len(HUB_PREFIX) :].partition(":")
        return repo.split("/")[-1] + (f"_{config_name}" if config_name else "")
    if dataset in NAMED_DATASETS:
        return dataset
    return Path(dataset.rstrip("/\\")).stem or "data"


def _check_finite(section: str, name: str, value: Any) -> None:
    # NaN compares false with everything, so `value <= 0` lets it through; inf passes every lower bound.
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{section}.{name}: must be a finite number, got {value!r}")


def _check_positive(section: str, name: str, value: Any, allow_zero: bool = False) -> None:
    if value is None:
        return
    _check_finite(section, name, value)
    if (value < 0) if allow_zero else (value <= 0):
        raise ConfigError(f"{section}.{name}: must be {'>= 0' if allow_zero else '> 0'}, got {quote(value)}")


SEED_MAX = 2**32 - 1
"""numpy's RandomState (scikit-learn's splits, the tf-idf fit) takes seeds in 0..2**32 - 1."""


def _check_seed(section: str, name: str, value: int, spare: int = 0) -> None:
    """`spare`: derived seeds (value + 1, value + 2) must stay in range too."""
    if not 0 <= value <= SEED_MAX - spare:
        raise ConfigError(f"{section}.{name}: must be between 0 and {SEED_MAX - spare}, got {quote(value)}")


def _check_label_names(section: str, name: str, names: list[str] | None) -> None:
    """Declared label names: at least two, none empty, none twice (also not in another case)."""
    if names is None:
        return
    if len(names) < 2:
        raise ConfigError(f"{section}.{name}: give at least two label names, got {quote(names)}")
    seen: dict[str, str] = {}
    for label in names:
        if not label.strip():
            raise ConfigError(f"{section}.{name}: empty label name in {quote(names)}")
        folded = label.strip().casefold()
        if folded in seen:
            same = "twice" if seen[folded] == label else f"as {quote(seen[folded])} and {quote(label)}"
            raise ConfigError(
                f"{section}.{name}: {quote(label)} is given {same}; each class needs one distinct name "
                "(names differing only in case would be separate classes)"
            )
        seen[folded] = label


@dataclass
class DataConfig:
    dataset: str = "sst2"
    """`sst2`, `imdb`, `files` (any CSV/TSV/JSONL given by train_file/test_file), a path (one CSV/TSV/JSONL
    file, carved into train, validation and test; or a folder holding train and test files), or
    `hub:OWNER/NAME[:CONFIG]` (any dataset `datasets.load_dataset` can open, split by train_split and
    test_split)."""
    data_dir: str | None = None
    """Local folder with the dataset (e.g. ../shared/data); default: $SENTITUNE_DATA_DIR, else the hub."""
    train_file: str | None = None
    """Training file for dataset `files` (CSV, TSV or JSONL)."""
    test_file: str | None = None
    """Reported test split for dataset `files`."""
    validation_file: str | None = None
    """Optional model-selection split; default: a stratified slice carved from train."""
    text_column: str | None = None
    """Column holding the text; default per dataset (`sentence` for SST-2, `text` otherwise)."""
    label_column: str | None = None
    """Column holding the label; default `label`. For IMDB, `rating` gives the 8-class star target."""
    label_names: list[str] | None = None
    """Ordered label names; string labels in files map to ids in this order. Default: from the data."""
    validation_size: float = 0.05
    """Validation slice carved from train: a fraction (< 1) or a count (>= 1)."""
    train_subset: int | None = None
    """Use only this many (stratified, seeded) training examples; None = all."""
    test_subset: int | None = None
    """Use only this many test examples (for smoke runs; reported results should use all)."""
    split_seed: int = 42
    """Seed for the validation slice and subsets; fixed across training seeds so splits stay identical."""
    test_size: float = 0.2
    """Test slice carved (stratified, seeded by split_seed) when the data has no test split: a single
    file given as data.dataset, or a hub dataset without test_split: a fraction (< 1) or a count."""
    train_split: str = "train"
    """Training split of a `hub:` dataset."""
    test_split: str | None = None
    """Test split of a `hub:` dataset; None: `test` when the dataset has one, else carved (test_size)."""
    max_length: int | None = None
    """Max tokens per example including [CLS]/[SEP]; default 128 for SST-2, 512 for IMDB and files."""
    truncation: str = "head"
    """`head` keeps the start, `tail` the end, `head+tail` the first quarter and the last three quarters."""
    long_text: str = "truncate"
    """Texts longer than max_length: `truncate` cuts them (data.truncation); `chunk` cuts them into
    overlapping windows of max_length tokens, trains on every window (each with its text's label) and
    predicts a text by averaging its windows' logits; data.truncation then goes unused (a preset's
    `head+tail` stays valid, so `--set data.long_text=chunk` switches it). TF-IDF reads whole texts
    either way; embed and setfit, which fit one embedding per text, refuse `chunk`."""
    chunk_stride: int | None = None
    """With long_text `chunk`: tokens from one window's start to the next's (at most max_length - 2, the
    window without [CLS]/[SEP]); default half a window, so each token is seen in two windows."""
    problem_type: str = "single_label"
    """`single_label`: one class per text (softmax, cross-entropy). `multi_label`: any non-empty subset
    of the labels per text, written in the label column as one string joined by label_separator
    (`action|comedy`); sigmoid per label, binary cross-entropy, and a threshold per label chosen on the
    validation slice."""
    label_separator: str = "|"
    """Separator between labels in one cell when problem_type is `multi_label`."""

    def __post_init__(self) -> None:
        _check_dataset(self.dataset)
        _check_choice("data", "truncation", self.truncation, ("head", "tail", "head+tail"))
        _check_choice("data", "long_text", self.long_text, LONG_TEXT_CHOICES)
        if self.chunk_stride is not None:
            if self.long_text != "chunk":
                raise ConfigError("data.chunk_stride: read only when data.long_text is 'chunk'")
            window = self.resolved_max_length - 2
            if not isinstance(self.chunk_stride, int) or not 1 <= self.chunk_stride <= window:
                raise ConfigError(
                    f"data.chunk_stride: must be a whole number of tokens from 1 to {window} (max_length - 2), "
                    f"got {self.chunk_stride!r}"
                )
        _check_choice("data", "problem_type", self.problem_type, ("single_label", "multi_label"))
        if not self.label_separator or self.label_separator.strip() != self.label_separator:
            raise ConfigError(
                f"data.label_separator: must be non-empty without surrounding spaces, got {quote(self.label_separator)}"
            )
        _check_positive("data", "validation_size", self.validation_size)
        _check_positive("data", "test_size", self.test_size)
        _check_positive("data", "train_subset", self.train_subset)
        _check_positive("data", "test_subset", self.test_subset)
        if self.max_length is not None and not 8 <= self.max_length <= 512:
            raise ConfigError(f"data.max_length: must be between 8 and 512 (BERT positions), got {self.max_length}")
        if self.dataset == "files" and not (self.train_file and self.test_file):
            raise ConfigError("data.train_file and data.test_file: both are required when data.dataset is 'files'")
        # Files given for another dataset used to be ignored (the run trained on SST-2); refused, not
        # implied, so that a preset or config naming its dataset cannot be switched by a stray flag.
        given = [name for name in ("train_file", "test_file", "validation_file") if getattr(self, name)]
        if self.dataset != "files" and given:
            raise ConfigError(
                f"data.{given[0]}: read only when data.dataset is 'files', but it is {self.dataset!r}; "
                "add --dataset files (with --train-file and --test-file) or drop the file"
            )
        hub_only = [
            f"data.{name}" for name in ("train_split", "test_split") if getattr(self, name) != DATA_DEFAULTS[name]
        ]
        if hub_only and not self.dataset.startswith(HUB_PREFIX):
            raise ConfigError(
                f"{hub_only[0]}: read only when data.dataset is hub:OWNER/NAME, but it is {quote(self.dataset)}"
            )
        _check_label_names("data", "label_names", self.label_names)
        _check_seed("data", "split_seed", self.split_seed, spare=2)
        if self.validation_size >= 1 and self.validation_size != int(self.validation_size):
            raise ConfigError(f"data.validation_size: a count must be a whole number, got {self.validation_size}")

    @property
    def name(self) -> str:
        """A short name for default folders: sst2, reviews (for data/reviews.csv), imdb_plain (for
        hub:stanfordnlp/imdb:plain_text)."""
        return dataset_name(self.dataset)

    @property
    def resolved_max_length(self) -> int:
        if self.max_length is not None:
            return self.max_length
        return 128 if self.dataset == "sst2" else 512


@dataclass
class MethodConfig:
    name: str = "full"
    """Adaptation method: one of the registry (`sentitune train --help` lists them)."""
    learning_rate: float | None = None
    """Peak learning rate; None = the method's default (full 5e-5, lora 1e-3, head 1e-3). For setfit the
    body's learning rate (2e-5); embed and tfidf take no gradient step."""
    pooling: str = "auto"
    """How every neural method's classifier reads the encoder: `cls` ([CLS] through BERT's pooler, as
    BertForSequenceClassification does), `mean` (attention-mask-weighted mean of the last hidden states,
    pooler unused), or `auto`: what the backbone declares (a sentence-transformers folder's
    1_Pooling/config.json; mean for minilm-l6), else `cls`. Saved with the weights; methods/pooling.py
    says why."""
    head: str = "pooler+classifier"
    """What `head` and `lora` train besides adapters with `cls` pooling: `pooler+classifier` (default) or
    `classifier`. `full` trains everything regardless; with `mean` pooling the pooler is unused and
    stays frozen. Measured on the quick preset with cls pooling: with a frozen pooler, head-only and
    LoRA stay at chance on minilm-l6, whose [CLS] pooler was never trained for classification."""
    lora_r: int = 8
    """LoRA rank."""
    lora_alpha: int = 16
    """LoRA scaling numerator (scale = alpha / r)."""
    lora_dropout: float = 0.1
    """Dropout on the LoRA input."""
    lora_target_modules: list[str] = field(default_factory=lambda: ["query", "value"])
    """Modules that get adapters; `["all-linear"]` adapts every linear layer of the encoder."""
    layer_lr_decay: float = 1.0
    """Layer-wise learning-rate decay for methods that train encoder layers (full): layer l of L gets
    lr x decay^(L - l), embeddings decay^(L + 1), the head the full lr. 1.0 = off."""
    prefix_tokens: int = 20
    """Virtual tokens per layer for `prefix`."""
    tfidf_word_ngrams: list[int] = field(default_factory=lambda: [1, 2])
    """Word n-gram range [min, max] for the TF-IDF baseline; [] disables word features."""
    tfidf_char_ngrams: list[int] = field(default_factory=lambda: [2, 5])
    """Character (word-bounded) n-gram range [min, max]; [] disables char features."""
    tfidf_max_features: int | None = 200_000
    """Vocabulary cap per analyzer."""
    tfidf_c_grid: list[float] = field(default_factory=lambda: [0.25, 1.0, 4.0, 16.0])
    """Inverse regularisation strengths tried; the best on the validation slice is kept."""
    logreg_c_grid: list[float] = field(default_factory=lambda: [0.001, 0.01, 0.1, 1.0, 10.0, 100.0])
    """Inverse regularisation strengths tried for the logistic-regression head of embed and setfit; the
    best on the validation slice is kept (the first of equals). On the quick preset's mean-pooled
    minilm-l6 embeddings (norm about 5) validation accuracy peaked at C = 0.01."""
    setfit_pairs: int = 1000
    """Contrastive sentence pairs setfit draws from the training set (half same-label, half not), whatever
    its size: the body's budget (setfit's num_iterations would scale with the data)."""
    setfit_epochs: int = 1
    """Passes of setfit's body training over its pairs (train.max_steps caps the steps)."""

    def __post_init__(self) -> None:
        from sentitune.methods import registry  # late import: methods import config
        from sentitune.methods.pooling import POOLING_CHOICES

        _check_choice("method", "name", self.name, tuple(registry.names()))
        _check_choice("method", "head", self.head, ("classifier", "pooler+classifier"))
        _check_choice("method", "pooling", self.pooling, POOLING_CHOICES)
        _check_positive("method", "setfit_pairs", self.setfit_pairs)
        _check_positive("method", "setfit_epochs", self.setfit_epochs)
        if not self.logreg_c_grid:
            raise ConfigError("method.logreg_c_grid: give at least one regularisation strength C")
        for c in self.logreg_c_grid:
            _check_positive("method", "logreg_c_grid", c)
        _check_positive("method", "learning_rate", self.learning_rate)
        _check_positive("method", "lora_r", self.lora_r)
        _check_positive("method", "lora_alpha", self.lora_alpha)
        _check_positive("method", "prefix_tokens", self.prefix_tokens)
        if not 0 < self.layer_lr_decay <= 1:
            raise ConfigError(f"method.layer_lr_decay: must be in (0, 1], got {self.layer_lr_decay}")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"method.lora_dropout: must be in [0, 1), got {self.lora_dropout}")
        if not self.lora_target_modules:
            raise ConfigError("method.lora_target_modules: must name at least one module")
        for name in ("tfidf_word_ngrams", "tfidf_char_ngrams"):
            value = getattr(self, name)
            if value and (len(value) != 2 or value[0] < 1 or value[0] > value[1]):
                raise ConfigError(f"method.{name}: must be [] or [min, max] with 1 <= min <= max, got {value}")
        if not self.tfidf_word_ngrams and not self.tfidf_char_ngrams:
            raise ConfigError("method.tfidf_word_ngrams/tfidf_char_ngrams: at least one must be enabled")
        if not self.tfidf_c_grid:
            raise ConfigError("method.tfidf_c_grid: give at least one regularisation strength C")
        for c in self.tfidf_c_grid:
            _check_positive("method", "tfidf_c_grid", c)
        if self.tfidf_max_features is not None and self.tfidf_max_features < 1:
            raise ConfigError(
                f"method.tfidf_max_features: must be >= 1 (or null for no cap), got {quote(self.tfidf_max_features)}"
            )


REPORT_TO_CHOICES = ("none", "tensorboard", "mlflow", "wandb", "trackio")
"""Experiment trackers `train.report_to` takes (transformers' integrations of the same names)."""

BEST_METRICS = {
    "single_label": ("accuracy", "macro_f1", "precision_macro", "recall_macro", "loss"),
    "multi_label": (
        "accuracy",
        "micro_f1",
        "macro_f1",
        "precision_micro",
        "recall_micro",
        "precision_macro",
        "recall_macro",
        "hamming_loss",
        "loss",
    ),
}
"""What `train.best_metric` can name per data.problem_type: the validation metrics the evaluation
computes (metrics.classification_metrics, metrics.multilabel_metrics; the loss is the Trainer's)."""
LOWER_IS_BETTER = ("loss", "hamming_loss")


def _class_weights(value: str | list[float]) -> str | list[float]:
    """`none`, `balanced`, or a list of positive finite weights; `"1,9"` (a --set value) is a list."""
    if isinstance(value, str) and value.strip() in ("none", "balanced"):
        return value.strip()
    if isinstance(value, str):
        try:
            value = [float(item) for item in value.split(",") if item.strip()]
        except ValueError:
            raise ConfigError(
                f"train.class_weights: {quote(value)} is not none, balanced or a list of weights (one per class)"
            ) from None
    if not value:
        raise ConfigError("train.class_weights: empty list; give one weight per class, or none or balanced")
    for weight in value:
        _check_positive("train", "class_weights", weight)
    return list(value)


@dataclass
class TrainConfig:
    epochs: float = 3.0
    """Training epochs (fractional allowed)."""
    max_steps: int = -1
    """Stop after this many optimizer steps; -1 = use epochs."""
    batch_size: int = 32
    """Per-device training batch size."""
    eval_batch_size: int = 64
    """Per-device evaluation batch size."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step (effective batch = batch_size x this x processes)."""
    warmup_ratio: float = 0.06
    """Fraction of steps with linear warm-up from 0 to the peak learning rate."""
    lr_scheduler: str = "linear"
    """Schedule after warm-up: linear, cosine or constant."""
    weight_decay: float = 0.01
    """AdamW weight decay; biases and LayerNorm weights are excluded (HF Trainer's no-decay groups)."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm."""
    seed: int = 42
    """Training seed (initialisation of new layers, dropout, data order)."""
    precision: str = "auto"
    """`auto` (bf16 on GPUs that support it, else fp16 on CUDA; bf16 autocast on CPUs with native bf16,
    i.e. AVX-512 BF16 or AMX; else fp32), `fp32`, `bf16` (refused on a CPU without native bf16), `fp16`
    (CUDA only). SENTITUNE_CPU_BF16=0 keeps CPU runs in fp32."""
    length_grouped: bool = True
    """Batch examples of similar length together so dynamic padding wastes little."""
    eval_strategy: str = "epoch"
    """When to evaluate on the validation slice: `epoch`, `steps` or `no`."""
    eval_steps: int | None = None
    """Evaluate every N steps when eval_strategy is `steps`."""
    logging_steps: int = 10
    """Log loss and learning rate every N steps (the training history)."""
    save_steps: int | None = None
    """Write a resumable checkpoint (weights, optimizer, scheduler, RNG states) every N optimizer steps
    for `train --resume`; None = at each evaluation, or at each epoch end when eval_strategy is `no`.
    With eval_strategy `steps` it must be a multiple of eval_steps (the best checkpoint is picked at
    evaluations)."""
    warmup_steps_excluded_from_throughput: int = 5
    """First optimizer steps not counted in samples/s (allocation, kernel selection)."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward: less memory, more time."""
    threads: int | None = None
    """torch CPU threads; None = torch's default (all cores)."""
    dataloader_workers: int = 0
    """DataLoader workers; 0 keeps tokenised batches in the training process (best on 2 cores)."""
    report_to: list[str] = field(default_factory=lambda: ["none"])
    """Experiment trackers the Trainer logs loss, learning rate and evaluations to: `none`, or any of
    `tensorboard` (event files in the run folder's tensorboard/), `mlflow`, `wandb`, `trackio` (each
    configured by its own environment variables, e.g. MLFLOW_TRACKING_URI, WANDB_PROJECT). How a run
    is watched, not what it learns: outside the scaffolding fingerprint."""
    run_name: str | None = None
    """The run's name in the trackers; None = the run folder's name."""
    class_weights: str | list[float] = "none"
    """Weighted cross-entropy for imbalanced single-label data: `none`, `balanced` (n / (classes x
    count of the class) over the training split, as scikit-learn's class_weight="balanced"), or one
    weight per class in label-id order. Applies to methods trained by the Trainer; tfidf, embed and
    setfit fit their own heads unweighted (metrics.json's class_weights is then null)."""
    best_metric: str = "auto"
    """The validation metric that picks the checkpoint kept at the end: `auto` (accuracy; micro_f1 for
    multi-label), or any the evaluation computes (BEST_METRICS; `loss` and `hamming_loss` count lower
    as better). Needs train.eval_strategy epoch or steps."""
    early_stopping_patience: int | None = None
    """Stop after this many evaluations without improvement of best_metric (transformers'
    EarlyStoppingCallback); None = train the whole schedule. Needs train.eval_strategy epoch or steps."""

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size", "gradient_accumulation_steps", "logging_steps"):
            _check_positive("train", name, getattr(self, name))
        _check_positive("train", "weight_decay", self.weight_decay, allow_zero=True)
        _check_positive("train", "max_grad_norm", self.max_grad_norm, allow_zero=True)
        _check_positive(
            "train",
            "warmup_steps_excluded_from_throughput",
            self.warmup_steps_excluded_from_throughput,
            allow_zero=True,
        )
        _check_positive("train", "threads", self.threads)
        _check_finite("train", "warmup_ratio", self.warmup_ratio)
        _check_seed("train", "seed", self.seed)
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"train.warmup_ratio: must be in [0, 1), got {self.warmup_ratio}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ConfigError(f"train.max_steps: must be -1 (use epochs) or > 0, got {self.max_steps}")
        _check_choice("train", "lr_scheduler", self.lr_scheduler, ("linear", "cosine", "constant"))
        _check_choice("train", "precision", self.precision, ("auto", "fp32", "bf16", "fp16"))
        _check_choice("train", "eval_strategy", self.eval_strategy, ("epoch", "steps", "no"))
        for tracker in self.report_to:
            _check_choice("train", "report_to", tracker, REPORT_TO_CHOICES)
        if "none" in self.report_to and len(self.report_to) > 1:
            raise ConfigError(f"train.report_to: 'none' cannot be combined with trackers, got {quote(self.report_to)}")
        if len(set(self.report_to)) != len(self.report_to):
            raise ConfigError(f"train.report_to: duplicates in {quote(self.report_to)}")
        if self.run_name is not None and not self.run_name.strip():
            raise ConfigError("train.run_name: empty; give a name or leave it out (the run folder's name)")
        self.class_weights = _class_weights(self.class_weights)
        _check_positive("train", "early_stopping_patience", self.early_stopping_patience)
        for name, default in (("best_metric", "auto"), ("early_stopping_patience", None)):
            if getattr(self, name) != default and self.eval_strategy == "no":
                raise ConfigError(
                    f"train.{name}: needs train.eval_strategy epoch or steps (checkpoints are judged at "
                    "evaluations); it is 'no'"
                )
        if self.eval_strategy == "steps" and not self.eval_steps:
            raise ConfigError("train.eval_steps: required when train.eval_strategy is 'steps'")
        _check_positive("train", "save_steps", self.save_steps)
        if self.save_steps is not None:
            if self.eval_strategy == "epoch":
                raise ConfigError(
                    "train.save_steps: needs train.eval_strategy 'steps' or 'no'; with 'epoch' "
                    "checkpoints follow the evaluations"
                )
            if self.eval_strategy == "steps" and self.save_steps % self.eval_steps:
                raise ConfigError(
                    f"train.save_steps: must be a multiple of train.eval_steps ({self.eval_steps}), "
                    f"got {self.save_steps}"
                )


TUNABLE_KNOBS = (
    "learning_rate",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "layer_lr_decay",
    "prefix_tokens",
    "setfit_pairs",
    "setfit_epochs",
)
"""Method knobs `compare --tune` can search (tuning.KNOB_GRIDS holds their grids)."""

DISTILL_PREFIX = "distill:"
_DISTILL_STUDENT = re.compile(r"l(\d+)")


def parse_distill_method(entry: str) -> tuple[str, int] | None:
    """(teacher method, student layers) of a compare.methods entry `distill:TEACHER->lK`, None for a
    plain method; ConfigError naming the entry when it is malformed.

    Example:
        >>> parse_distill_method("distill:full->l3"), parse_distill_method("lora")
        (('full', 3), None)
    """
    if not entry.startswith(DISTILL_PREFIX):
        return None
    teacher, arrow, student = entry[len(DISTILL_PREFIX) :].partition("->")
    match = _DISTILL_STUDENT.fullmatch(student.strip())
    if not arrow or not teacher.strip() or match is None or int(match[1]) < 1:
        # `--methods full,distill:full->l3` unquoted: the shell takes `>l3` as a redirection
        shell = "; quote it in a shell, which reads '>' as a redirection" if not arrow else ""
        raise ConfigError(
            f"compare.methods: {quote(entry)}: expected distill:TEACHER->lK with K >= 1 student layers, "
            f"e.g. distill:full->l3{shell}"
        )
    return teacher.strip(), int(match[1])


@dataclass
class CompareConfig:
    methods: list[str] = field(default_factory=lambda: ["full", "lora", "head", "tfidf"])
    """Methods compared, each at its default knobs. `distill:TEACHER->lK` adds, per seed, a student of
    that seed's TEACHER run (a neural method listed here): the comparison's model (each model of a
    sweep) keeping its bottom K encoder layers, trained with `full` on the teacher's soft labels
    (section `distill`: alpha, temperature, unlabelled); variant `distill-TEACHER-lK`."""
    seeds: list[int] = field(default_factory=lambda: [42])
    """Training seeds; each (variant, seed) is one run in its own process."""
    lora_r_sweep: list[int] = field(default_factory=list)
    """Extra LoRA variants at these ranks (when lora is among the methods)."""
    lora_targets_sweep: list[str] = field(default_factory=list)
    """Extra LoRA variants per target set, e.g. ["query,value", "all-linear"]."""
    learning_rates: list[float] = field(default_factory=list)
    """Extra variants of every neural method at these learning rates."""
    gradient_checkpointing_variants: bool = False
    """Add a `<method>-gc` variant of every neural method with gradient checkpointing, to measure its
    memory/speed tradeoff (it recomputes activations; the maths, and so the scaffolding, is the same)."""
    layer_lr_decays: list[float] = field(default_factory=list)
    """Extra `full` variants with these layer-wise learning-rate decays (e.g. [0.8, 0.9])."""
    models: list[str] = field(default_factory=list)
    """Model sweep: every neural variant runs on each of these models (aliases, local folders or hub ids)
    and is named `<short model name>-<variant>`. The model is then an axis of the comparison: it leaves
    the scaffolding fingerprint and each result row records it. Empty = every run uses `model`."""
    reference: str | None = None
    """The variant the `*_vs_reference` statistics and the recommendation compare against; default
    `full` when it is among the variants, else the first variant."""
    tune: list[str] = field(default_factory=list)
    """Method knobs searched per variant before the seeds run (`--tune learning_rate,lora_r`), each trial
    scored on the validation slice only; the test split is read once, by the selected configuration's
    runs. Empty = no search: every variant runs at its method's defaults."""
    tune_trials: int = 6
    """Trials per variant (the same budget for every variant); the learning rate's grid has this many
    points, log-spaced between the method's default / 4 and x 4."""
    tune_sampler: str = "grid"
    """Optuna sampler: `grid` (equal coverage) or `tpe`."""
    tune_storage: str | None = None
    """Optuna storage URL for the searches (shareable across machines); default a SQLite file in the
    comparison folder, so a search resumes where it stopped."""
    train_sizes: list[int | str] = field(default_factory=list)
    """Learning curve: every variant runs at each training-set size (a count, or `all`), on nested
    stratified subsets (the 500 contain the 250). Variants are then named `<variant>@<size>`, and the
    size leaves the scaffolding fingerprint. Empty = one size, data.train_subset."""
    max_train_memory_mib: float | None = None
    """Budget for the recommendation: peak training memory (MiB). None = no limit. Budgets no variant
    meets are not an error: the report says so and names the closest variant."""
    min_inference_sentences_per_s: float | None = None
    """Budget: sentences/s when the run scored its test split (torch, eval_batch_size)."""
    max_checkpoint_mib: float | None = None
    """Budget: size of what the method trained, as saved (MiB)."""
    max_train_minutes: float | None = None
    """Budget: training time (minutes)."""
    eval_files: dict[str, str] = field(default_factory=dict)
    """Extra labelled CSV/TSV/JSONL files, by eval-set name (`--eval-file NAME=PATH`): once the runs
    finish, every finished run is scored on each (<run>/evaluations/<name>/), and results.json
    `eval_sets` gives each variant's accuracy with its CI and the Holm-corrected paired test against
    the reference, per set. Their labels must be the runs' label names (or ids 0..K-1)."""
    eval_text_column: str | None = None
    """Text column of the eval files (default: `sentence` for TSV, else `text`)."""
    eval_label_column: str | None = None
    """Label column of the eval files (default: `label`)."""
    suites: list[str] = field(default_factory=lambda: ["negation"])
    """Eval sets shipped with sentitune (suites/<name>.tsv), scored like eval_files on runs whose
    labels are negative/positive: `negation` is the templated negation and contrast suite. Empty
    (`--no-default-suites`) scores none."""

    def __post_init__(self) -> None:
        from sentitune.methods import registry

        if any(not str(m).strip() for m in self.models):
            raise ConfigError(f"compare.models: empty model name in {self.models}")
        if len(set(self.models)) != len(self.models):
            raise ConfigError(f"compare.models: duplicates in {self.models}")
        if not self.methods:
            raise ConfigError("compare.methods: name at least one method")
        plain = [name for name in self.methods if parse_distill_method(name) is None]
        for name in plain:
            _check_choice("compare", "methods", name, tuple(registry.names()))
        for name in self.methods:
            teacher = (parse_distill_method(name) or (None,))[0]
            if teacher is not None and teacher not in plain:
                raise ConfigError(
                    f"compare.methods: {name}: its teacher {quote(teacher)} is not a method of this comparison "
                    f"({', '.join(plain) or 'none'}); list it too, e.g. {teacher},{name}"
                )
            if teacher is not None and not registry.get(teacher).neural:
                raise ConfigError(
                    f"compare.methods: {name}: {teacher} has no neural network to distil from; "
                    "use a neural teacher (full, lora, ...)"
                )
        if not self.seeds:
            raise ConfigError("compare.seeds: give at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"compare.seeds: duplicates in {quote(self.seeds)}")
        for seed in self.seeds:
            _check_seed("compare", "seeds", seed)
        for r in self.lora_r_sweep:
            _check_positive("compare", "lora_r_sweep", r)
        for lr in self.learning_rates:
            _check_positive("compare", "learning_rates", lr)
        for decay in self.layer_lr_decays:
            if not 0 < decay <= 1:
                raise ConfigError(f"compare.layer_lr_decays: each must be in (0, 1], got {decay}")
        for knob in self.tune:
            if knob not in TUNABLE_KNOBS:
                raise ConfigError(
                    f"compare.tune: unknown knob {quote(knob)}; tunable method knobs: {', '.join(TUNABLE_KNOBS)} "
                    "(data and training settings are the comparison's scaffolding and stay fixed)"
                )
        if len(set(self.tune)) != len(self.tune):
            raise ConfigError(f"compare.tune: duplicates in {quote(self.tune)}")
        _check_positive("compare", "tune_trials", self.tune_trials)
        _check_choice("compare", "tune_sampler", self.tune_sampler, ("grid", "tpe"))
        for size in self.train_sizes:
            if size != "all" and not (isinstance(size, int) and size >= 1):
                raise ConfigError(f"compare.train_sizes: each must be a count >= 1 or 'all', got {quote(size)}")
        if len(set(self.train_sizes)) != len(self.train_sizes):
            raise ConfigError(f"compare.train_sizes: duplicates in {quote(self.train_sizes)}")
        for budget in ("max_train_memory_mib", "min_inference_sentences_per_s", "max_checkpoint_mib"):
            _check_positive("compare", budget, getattr(self, budget))
        _check_positive("compare", "max_train_minutes", self.max_train_minutes)
        self._check_eval_sets()

    def _check_eval_sets(self) -> None:
        """Eval-set names become folder names (<run>/evaluations/<name>), so they are plain words, and
        one name means one set. Whether each file exists is checked when a comparison starts: a run's
        saved config must load after its eval files have moved."""
        if not isinstance(self.eval_files, dict):
            raise ConfigError(f"compare.eval_files: expected a mapping NAME: PATH, got {quote(self.eval_files)}")
        known = suite_names()
        for suite in self.suites:
            if suite not in known:
                raise ConfigError(f"compare.suites: unknown suite {quote(suite)}; shipped: {', '.join(known)}")
        for name, path in self.eval_files.items():
            if not isinstance(name, str) or not EVAL_SET_NAME.fullmatch(name):
                raise ConfigError(
                    f"compare.eval_files: name {quote(name)} must be letters, digits, '.', '_' or '-' "
                    "(it names a folder), e.g. --eval-file imdb=data/imdb_test.csv"
                )
            if name in self.suites:
                raise ConfigError(
                    f"compare.eval_files: {quote(name)} is the name of a shipped suite; pick another name "
                    "(or drop the suite with --no-default-suites)"
                )
            if not isinstance(path, str) or not path.strip():
                raise ConfigError(f"compare.eval_files: {name}: expected a file path, got {quote(path)}")


@dataclass
class DistillConfig:
    """Knowledge distillation (`sentitune distill`): the run trains its model as a student on a
    finished teacher run's soft labels as well as the gold ones. Off while `teacher` is null."""

    teacher: str | None = None
    """The teacher's run folder (status ok, single-label, same tokenizer vocabulary as the student).
    Its logits over the training split (and `unlabelled`) are computed once, before training."""
    alpha: float = 0.5
    """Weight of the soft-label term on labelled rows: loss = alpha x T^2 x KL(teacher/T || student/T)
    + (1 - alpha) x cross-entropy(gold). Rows from `unlabelled` carry the KL term alone (weight T^2)."""
    temperature: float = 2.0
    """Softmax temperature T of both teacher and student in the KL term (Hinton et al. 2015); the
    T^2 factor keeps its gradients on the scale of the cross-entropy's."""
    unlabelled: str | None = None
    """Optional TXT/CSV/TSV/JSONL file of extra texts the teacher labels; the student trains on them
    with the KL term only (augmentation is where distillation gains most)."""
    unlabelled_column: str | None = None
    """Text column of a CSV/TSV/JSONL `unlabelled` file (default: sentence for TSV, else text)."""
    unlabelled_unit: str = "text"
    """`text`: each row of `unlabelled` is one example. `sentence`: each row is split into sentences
    (HTML line breaks such as IMDB's `<br />` count as spaces), so that documents such as reviews give
    examples shaped like sentence-level training data (SST-2) instead of being cut at max_length."""
    unlabelled_limit: int | None = None
    """At most this many unlabelled examples (after splitting), a random sample drawn with data.split_seed
    in file order; null = all. The teacher labels each one and the student trains on each one per epoch."""

    def __post_init__(self) -> None:
        if self.teacher is not None and not self.teacher.strip():
            raise ConfigError("distill.teacher: empty; give the teacher's run folder or leave it null")
        _check_finite("distill", "alpha", self.alpha)
        if not 0 <= self.alpha <= 1:
            raise ConfigError(f"distill.alpha: must be between 0 and 1, got {quote(self.alpha)}")
        _check_positive("distill", "temperature", self.temperature)
        if self.unlabelled is not None and not self.unlabelled.strip():
            raise ConfigError("distill.unlabelled: empty; give a text file or leave it null")
        if self.teacher is None and (self.unlabelled is not None or self.unlabelled_column is not None):
            field_name = "unlabelled" if self.unlabelled is not None else "unlabelled_column"
            raise ConfigError(f"distill.{field_name}: read only with distill.teacher; give the teacher run too")
        _check_choice("distill", "unlabelled_unit", self.unlabelled_unit, ("text", "sentence"))
        if self.unlabelled_limit is not None:
            _check_positive("distill", "unlabelled_limit", self.unlabelled_limit)
        for field_name, default in (
            ("unlabelled_column", None),
            ("unlabelled_unit", "text"),
            ("unlabelled_limit", None),
        ):
            if getattr(self, field_name) != default and self.unlabelled is None:
                raise ConfigError(f"distill.{field_name}: read only with distill.unlabelled; give the file too")


@dataclass
class RunConfig:
    model: str = "bert-base-uncased"
    """Hub id, local folder, or alias (`minilm-l6` = the bundled pretrained MiniLM, works offline)."""
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    """Used by `sentitune compare` only; not part of a run's scaffolding."""
    distill: DistillConfig = field(default_factory=DistillConfig)
    """Knowledge distillation from a teacher run (`sentitune distill`); off while distill.teacher is null."""

    def __post_init__(self) -> None:
        from sentitune.methods import registry

        if self.distill.teacher is not None:
            if not registry.get(self.method.name).uses_trainer:
                raise ConfigError(
                    f"method.name: {self.method.name} fits itself; distillation trains in the Trainer loop "
                    "(full, lora, head, ...)"
                )
            if self.data.problem_type == "multi_label":
                raise ConfigError("distill.teacher: distillation supports data.problem_type single_label only")
            if self.train.class_weights != "none":
                raise ConfigError("train.class_weights: not applied with distillation; leave it at none")

        if self.data.problem_type == "multi_label" and not registry.get(self.method.name).supports_multi_label:
            raise ConfigError(
                f"method.name: {self.method.name} supports data.problem_type single_label only; "
                "use a method trained in the Trainer loop (full, lora, head, ...) for multi_label"
            )
        if self.data.problem_type == "multi_label" and self.train.class_weights != "none":
            raise ConfigError("train.class_weights: applies to single_label data (weighted cross-entropy)")
        if self.train.best_metric != "auto":
            _check_choice("train", "best_metric", self.train.best_metric, BEST_METRICS[self.data.problem_type])

    @property
    def best_metric(self) -> str:
        """train.best_metric with `auto` resolved (`auto_best_metric`)."""
        return self.auto_best_metric if self.train.best_metric == "auto" else self.train.best_metric

    @property
    def auto_best_metric(self) -> str:
        """What train.best_metric `auto` means: accuracy, or micro_f1 for multi-label data (subset
        accuracy at 0.5 barely moves early on; micro-F1 ranks checkpoints better)."""
        return "micro_f1" if self.data.problem_type == "multi_label" else "accuracy"

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None, source: str = "config") -> "RunConfig":
        return _build(cls, raw or {}, source, "")

    @classmethod
    def from_yaml(cls, path: str | Path) -> "RunConfig":
        path = Path(path)
        # Not UTF-8, a folder, unreadable: one line naming the path (and line, column, bytes).
        raw = parse_yaml(read_text(path, ConfigError, "config file"), str(path))
        if raw is not None and not isinstance(raw, dict):
            raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
        return _build(cls, _drop_retired(raw or {}, str(path)), str(path), "")

    # ---- overrides ----------------------------------------------------------------------------
    def override(self, dotted: dict[str, Any]) -> "RunConfig":
        """Returns a new config with `{"train.epochs": 1, ...}` applied (None values are skipped)."""
        raw = self.to_dict()
        for key, value in dotted.items():
            if value is None:
                continue
            node = raw
            *parents, leaf = key.split(".")
            for part in parents:
                if part not in node or not isinstance(node[part], dict):
                    raise ConfigError(f"{key}: unknown config section {quote(part)}")
                node = node[part]
            if leaf not in node:
                raise ConfigError(f"{key}: unknown config field")
            node[leaf] = value
        return RunConfig.from_dict(raw, "overrides")

    # ---- output -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def scaffolding(self) -> dict[str, Any]:
        """Everything a fair comparison must hold fixed: all but the method section and the seed (and
        the model, when compare.models declares a model sweep)."""
        raw = self.to_dict()
        raw.pop("method")
        raw.pop("compare")
        raw.pop("distill")  # like the method, a variant's own: a student is compared on its teacher's scaffolding
        if self.compare.models:
            raw.pop("model")  # a declared model sweep: the model is an axis of the comparison
        if self.compare.train_sizes:
            raw["data"].pop("train_subset")  # a learning curve: the training-set size is an axis too
        raw["train"].pop("seed")
        raw["train"].pop("gradient_checkpointing")  # a memory/speed trade, not a change to what is learned
        raw["train"].pop("save_steps")  # checkpoint cadence; a resumed run ends where an unbroken one does
        for watching in ("report_to", "run_name"):  # where the curves are logged, not what is learned
            raw["train"].pop(watching)
        # Left out at their defaults, so that runs from before these fields keep their fingerprints;
        # `auto` and the metric it stands for are the same experiment.
        raw["train"]["best_metric"] = self.best_metric
        defaults = {"class_weights": "none", "best_metric": self.auto_best_metric, "early_stopping_patience": None}
        for name, default in defaults.items():
            if raw["train"][name] == default:
                raw["train"].pop(name)
        for name, default in DATA_DEFAULTS.items():  # added later: left out at their defaults, as above
            if raw["data"][name] == default:
                raw["data"].pop(name)
        raw["data"]["max_length"] = self.data.resolved_max_length
        return raw

    def fingerprint(self) -> str:
        blob = json.dumps(self.scaffolding(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    @property
    def learning_rate(self) -> float:
        from sentitune.methods import registry

        return self.method.learning_rate or registry.get(self.method.name).default_learning_rate


def load_config(
    config_path: str | Path | None = None, preset: str | None = None, overrides: dict[str, Any] | None = None
) -> RunConfig:
    """Defaults <- preset or YAML file <- dotted overrides."""
    if config_path and preset:
        raise ConfigError("--config and --preset: give one or the other")
    if preset:
        path = PRESET_DIR / f"{preset}.yaml"
        if not path.exists():
            raise ConfigError(f"--preset: unknown preset {quote(preset)}; available: {', '.join(preset_names())}")
        cfg = RunConfig.from_yaml(path)
    elif config_path:
        cfg = RunConfig.from_yaml(config_path)
    else:
        cfg = RunConfig()
    return cfg.override(overrides or {})


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def suite_names() -> list[str]:
    """Names of the shipped eval sets (compare.suites)."""
    return sorted(p.stem for p in SUITE_DIR.glob("*.tsv"))


def scaffolding_differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of fields whose values differ between two scaffolding dicts."""
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        name = f"{prefix}{key}"
        if isinstance(va, dict) and isinstance(vb, dict):
            out += scaffolding_differences(va, vb, name + ".")
        elif va != vb:
            out.append(f"{name} ({quote(va)} vs {quote(vb)})")
    return out


# ---- retired keys -----------------------------------------------------------------------------------

RETIRED_KEYS: dict[str, dict[str, Any]] = {
    "distill": {"hidden_weight": 0.0, "hidden_layers": [], "attention_weight": 0.0, "value_relation": True},
}
"""Fields that were removed, each with the value that meant "off": config.yaml files of run folders
written before the removal hold them, and still load when they hold that value."""
RETIRED_WHY = {
    "distill": "intermediate-layer matching (TinyBERT hidden states, MiniLM attention) did not improve "
    "validation accuracy over plain distillation on SST-2",
}


def _drop_retired(raw: Any, source: str) -> Any:
    """`raw` without the RETIRED_KEYS that hold their off value; a retired key set to anything else is
    one ConfigError line naming it, since that run used an option this code no longer has."""
    if not isinstance(raw, dict):
        return raw
    for section, retired in RETIRED_KEYS.items():
        node = raw.get(section)
        if not isinstance(node, dict) or not set(node) & set(retired):
            continue
        kept = dict(node)
        for name, off in retired.items():
            if name not in kept:
                continue
            value = kept.pop(name)
            # bool is an int subclass: `true` must not pass for 1.0, nor 0 for `false`.
            if value != off or isinstance(value, bool) != isinstance(off, bool):
                raise ConfigError(
                    f"{source}: {section}.{name}: removed ({RETIRED_WHY[section]}); this config sets it to "
                    f"{quote(value)}: delete the key (its off value {quote(off)} is still accepted)"
                )
        raw = {**raw, section: kept}
    return raw


# ---- generic dict -> dataclass with type checks ---------------------------------------------------


def _build(cls: type, raw: dict[str, Any], source: str, prefix: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'top level'} must be a mapping, got {quote(raw)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: unknown key {prefix}{unknown[0]}; valid keys: {', '.join(fields)}")
    kwargs = {}
    for name, value in raw.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value or {}, source, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, hint, f"{source}: {prefix}{name}")
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])
    if origin is list:
        if isinstance(value, str):  # CLI: "query,value" -> ["query", "value"]
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {quote(value)}")
        (item,) = get_args(hint)
        return [_coerce(v, item, where) for v in value]
    if origin is Literal:
        if value not in get_args(hint):
            raise ConfigError(f"{where}: {quote(value)} is not one of {get_args(hint)}")
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{where}: expected true/false, got {quote(value)}")
    if hint is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {quote(value)}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected an integer, got {quote(value)}")
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {quote(value)}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {quote(value)}")
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {quote(value)}")
    return value


# ---- serving ----------------------------------------------------------------------------------


@dataclass
class ServeSettings:
    """Limits and batching knobs of one server (`sentitune serve`, `serve.create_app`). Here rather than
    in serve.py so the CLI quotes these defaults in its help without loading the web stack."""

    max_batch_size: int = 64
    """Most texts in one model call; a larger request is split into chunks of at most this many."""
    max_wait_ms: float = 5.0
    """How long the worker waits for more requests once one is queued and the queue is empty."""
    max_texts: int = 256
    """Most texts in one request (413 above)."""
    max_chars: int = 10_000
    """Most characters in one text (413 above)."""
    max_body_bytes: int = 4 * 2**20
    """Largest request body (413 above), checked before the body is parsed."""
    max_queue_texts: int = 8192
    """Texts waiting at most; beyond it requests get 503 so overload cannot grow memory without bound."""
    request_timeout_s: float = 30.0
    """A request waiting longer than this for its prediction gets 503."""
    api_key: str | None = None
    """If set, POST /predict and GET /metrics need the header `X-API-Key` with this value."""
    header_timeout_s: float = 10.0
    """A connection that has not sent a whole request line and headers this many seconds after it opened
    (or after its last response) is closed: slow-loris clients cannot hold connections."""
    body_timeout_s: float = 30.0
    """A request whose body has not fully arrived this many seconds after its headers gets 408 and the
    connection is closed (a body that declares 100 bytes and sends 7 is not waited on forever)."""
    max_connections: int = 100
    """Open connections at most; a request on a connection beyond it gets 503 (uvicorn's limit_concurrency)."""

    def __post_init__(self) -> None:
        for name in (
            "max_batch_size",
            "max_texts",
            "max_chars",
            "max_body_bytes",
            "max_queue_texts",
            "max_connections",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"serve setting {name} must be >= 1, got {value!r}")
        # NaN passes every comparison and inf never comes: either would silently turn a limit off.
        for name in ("max_wait_ms", "request_timeout_s", "header_timeout_s", "body_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"serve setting {name} must be a finite number, got {value!r}")
            if value < 0 or (value == 0 and name != "max_wait_ms"):
                raise ValueError(
                    f"serve setting {name} must be {'>= 0' if name == 'max_wait_ms' else '> 0'}, got {value!r}"
                )
        if self.api_key is not None and not self.api_key.strip():
            # An empty key (often an empty $SENTITUNE_API_KEY) must not quietly mean "no authentication".
            raise ValueError(
                "serve setting api_key is empty; give a key, or unset it (and $SENTITUNE_API_KEY) "
                "to serve without authentication"
            )
        if self.api_key is not None and (
            self.api_key != self.api_key.strip() or any(not " " <= c <= "~" for c in self.api_key)
        ):
            # An X-API-Key header carries printable ASCII, trimmed at both ends: a key with a trailing
            # "\r" (a CRLF .env file), a tab or a non-ASCII letter could never match, and every request
            # would get 401 without a word about why.
            raise ValueError(
                "serve setting api_key must be printable ASCII without leading or trailing spaces "
                "(it travels in an HTTP header); check $SENTITUNE_API_KEY or --api-key for a stray "
                "line break or space"
            )
