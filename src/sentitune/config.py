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
    """`sst2`, `imdb`, or `files` (any CSV/TSV/JSONL given by train_file/test_file)."""
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
    max_length: int | None = None
    """Max tokens per example including [CLS]/[SEP]; default 128 for SST-2, 512 for IMDB and files."""
    truncation: str = "head"
    """`head` keeps the start, `tail` the end, `head+tail` the first quarter and the last three quarters."""
    problem_type: str = "single_label"
    """`single_label`: one class per text (softmax, cross-entropy). `multi_label`: any non-empty subset
    of the labels per text, written in the label column as one string joined by label_separator
    (`action|comedy`); sigmoid per label, binary cross-entropy, and a threshold per label chosen on the
    validation slice."""
    label_separator: str = "|"
    """Separator between labels in one cell when problem_type is `multi_label`."""

    def __post_init__(self) -> None:
        _check_choice("data", "dataset", self.dataset, ("sst2", "imdb", "files"))
        _check_choice("data", "truncation", self.truncation, ("head", "tail", "head+tail"))
        _check_choice("data", "problem_type", self.problem_type, ("single_label", "multi_label"))
        if not self.label_separator or self.label_separator.strip() != self.label_separator:
            raise ConfigError(
                f"data.label_separator: must be non-empty without surrounding spaces, got {quote(self.label_separator)}"
            )
        _check_positive("data", "validation_size", self.validation_size)
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
        _check_label_names("data", "label_names", self.label_names)
        _check_seed("data", "split_seed", self.split_seed, spare=2)
        if self.validation_size >= 1 and self.validation_size != int(self.validation_size):
            raise ConfigError(f"data.validation_size: a count must be a whole number, got {self.validation_size}")

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
    """Peak learning rate; None = the method's default (full 5e-5, lora 1e-3, head 1e-3)."""
    head: str = "pooler+classifier"
    """What `head` and `lora` train besides adapters: `pooler+classifier` (default) or `classifier`.
    `full` trains everything regardless. Measured on the quick preset: with a frozen pooler, head-only
    and LoRA stay at chance on minilm-l6, whose [CLS] pooler was never trained for classification."""
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

    def __post_init__(self) -> None:
        from sentitune.methods import registry  # late import: methods import config

        _check_choice("method", "name", self.name, tuple(registry.names()))
        _check_choice("method", "head", self.head, ("classifier", "pooler+classifier"))
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


@dataclass
class CompareConfig:
    methods: list[str] = field(default_factory=lambda: ["full", "lora", "head", "tfidf"])
    """Methods compared, each at its default knobs."""
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

    def __post_init__(self) -> None:
        from sentitune.methods import registry

        if any(not str(m).strip() for m in self.models):
            raise ConfigError(f"compare.models: empty model name in {self.models}")
        if len(set(self.models)) != len(self.models):
            raise ConfigError(f"compare.models: duplicates in {self.models}")
        if not self.methods:
            raise ConfigError("compare.methods: name at least one method")
        for name in self.methods:
            _check_choice("compare", "methods", name, tuple(registry.names()))
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


@dataclass
class RunConfig:
    model: str = "bert-base-uncased"
    """Hub id, local folder, or alias (`minilm-l6` = the bundled pretrained MiniLM, works offline)."""
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    """Used by `sentitune compare` only; not part of a run's scaffolding."""

    def __post_init__(self) -> None:
        from sentitune.methods import registry

        if self.data.problem_type == "multi_label" and not registry.get(self.method.name).neural:
            raise ConfigError(
                f"method.name: {self.method.name} supports data.problem_type single_label only; "
                "use a neural method for multi_label"
            )

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
        return _build(cls, raw or {}, str(path), "")

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
        if self.compare.models:
            raw.pop("model")  # a declared model sweep: the model is an axis of the comparison
        raw["train"].pop("seed")
        raw["train"].pop("gradient_checkpointing")  # a memory/speed trade, not a change to what is learned
        raw["train"].pop("save_steps")  # checkpoint cadence; a resumed run ends where an unbroken one does
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
    """Most texts in one model call (a single larger request still runs as one call)."""
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

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_texts", "max_chars", "max_body_bytes", "max_queue_texts"):
            if getattr(self, name) < 1:
                raise ValueError(f"serve setting {name} must be >= 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0 or self.request_timeout_s <= 0:
            raise ValueError("serve settings max_wait_ms must be >= 0 and request_timeout_s > 0")
        if self.api_key is not None and not self.api_key.strip():
            # An empty key (often an empty $SENTITUNE_API_KEY) must not quietly mean "no authentication".
            raise ValueError(
                "serve setting api_key is empty; give a key, or unset it (and $SENTITUNE_API_KEY) "
                "to serve without authentication"
            )
