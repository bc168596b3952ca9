"""What every adaptation method provides. Neural methods differ only in which parameters train
(`prepare`) and in how their trained state is saved and restored; the training loop is shared."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


# Config names and validates methods through the registry, so methods never import config, not even
# for type hints: `cfg` below is the run's `config.MethodConfig`.
MethodConfig = Any


@dataclass
class FitContext:
    """What a neural method that fits itself (embed, setfit) gets from the training loop, which loads
    the model and tokenizer for it: methods sit below models and data."""

    run: Any
    """The run's `config.RunConfig` (batch sizes, max_steps, seed, learning rate)."""
    location: str
    """Where the base model loads from: a local folder or a hub id."""
    load_base: Callable[[], Any]
    """The untrained base classifier (fresh head sized for the labels), as `Method.load` gets it."""
    tokenizer: Any
    tokenize: Callable[[list[str]], list[list[int]]]
    """Token ids per text with [CLS]/[SEP], cut to the run's max_length by its truncation rule."""
    cache_dir: Path | None = None
    """Where computed embeddings are cached (the run folder's embeddings/); None: not cached."""
    write_bytes: Callable[[Path, bytes], None] | None = None
    """The run's one atomic writer (results.atomic_write_bytes: unique temp file, fsync, rename)."""


class Method:
    name: str = ""
    default_learning_rate: float = 2e-5
    neural: bool = True
    summary: str = ""
    extra_tunable_knobs: tuple[str, ...] = ()
    """Method knobs of its own that `compare --tune` may search (lora: rank, alpha, dropout)."""
    recorded_knobs: tuple[str, ...] = ()
    """`method.*` fields of its own that shape what it learns: a comparison records them per run, and
    they are the settings that may legitimately differ between its variants."""

    def knob_values(self, cfg: MethodConfig) -> dict[str, Any]:
        """This method's `recorded_knobs` as flat table values (lists of names joined with commas, other
        sequences as their text), so that results.csv and the report can show them in a column."""
        values: dict[str, Any] = {}
        for knob in self.recorded_knobs:
            value = getattr(cfg, knob)
            if isinstance(value, (list, tuple)):
                value = ",".join(value) if value and all(isinstance(v, str) for v in value) else str(value)
            values[knob] = value
        return values

    @property
    def tunable_knobs(self) -> tuple[str, ...]:
        """What `compare --tune` may search for this method: the optimiser's learning rate and
        layer-wise decay for every method the training loop serves, plus its own knobs."""
        shared = ("learning_rate", "layer_lr_decay") if self.neural else ()
        return shared + self.extra_tunable_knobs

    checkpoint_pattern: str = "*.safetensors"
    """The files in the saved folder that `checkpoint_size_mib` measures: what the method trained.
    Methods that also save a full copy for plain Hugging Face loading leave that copy out."""

    uses_trainer: bool = True
    """Trains in the shared Trainer loop; False: `fit` trains it (tfidf, embed, setfit). A neural method
    that fits itself still predicts, exports and serves as a transformers classifier."""
    supports_multi_label: bool = True
    """Whether it trains on data.problem_type multi_label (a logistic-regression head does not)."""

    def prepare(self, model, cfg: MethodConfig):
        """Returns the model to train: `method.pooling` installed (methods/pooling.py), then exactly the
        intended parameters requiring grad (`mark_trainable`). With mean pooling BERT's pooler is off
        the path to the logits, so it stays frozen whatever the method trains."""
        from sentitune.methods.pooling import model_pooling, resolve_pooling, set_pooling

        set_pooling(model, resolve_pooling(cfg.pooling, getattr(model, "name_or_path", None)))
        model = self.mark_trainable(model, cfg)
        if model_pooling(model) == "mean":
            for name, parameter in model.named_parameters():
                if ".pooler." in f".{name}.":
                    parameter.requires_grad = False
        return model

    def mark_trainable(self, model, cfg: MethodConfig):
        """Sets requires_grad on exactly the parameters the method trains (or wraps the model in an
        adapter); returns the model to train. The pooling is already installed."""
        raise NotImplementedError

    def run_metrics(self, model) -> dict[str, Any]:
        """Method-specific entries for the run's metrics.json, merged over the loop's own: what the run
        resolved (the pooling, a chosen C) and what only the method can count."""
        if not self.neural:
            return {}
        from sentitune.methods.pooling import model_pooling

        return {"pooling": model_pooling(model)}

    def save(self, model, folder: Path) -> None:
        """Writes the trained state to `folder` as safetensors."""
        model.save_pretrained(folder)

    def load(self, folder: Path, load_base):
        """Rebuilds the trained classifier from `folder`; `load_base()` gives the untrained base
        classifier (same model, same label set) for methods that save only what they trained."""
        from transformers import AutoModelForSequenceClassification

        # Mismatches come back as loading info, not as an error naming no tensor; missing ones would
        # otherwise be initialised at random with only a warning. check_loading_info refuses both.
        model, info = AutoModelForSequenceClassification.from_pretrained(
            folder, use_safetensors=True, ignore_mismatched_sizes=True, output_loading_info=True
        )
        check_loading_info(folder, info)
        from sentitune.methods.pooling import apply_saved_pooling

        return apply_saved_pooling(model)  # config.json's classifier_pooling: transformers ignores it for BERT


def check_loading_info(folder: Path, info) -> None:
    """Raises ValueError naming the first tensor whose saved shape does not fit the model built from
    config.json (vocabulary rows, hidden size, classifier width), or the first tensor the model needs
    that the folder lacks (a base model's folder has no classifier)."""
    get = info.get if isinstance(info, dict) else (lambda key: getattr(info, key, None))
    mismatched = sorted(get("mismatched_keys") or [], key=lambda entry: entry[0])
    if mismatched:
        name, saved, wanted = mismatched[0][:3]
        more = f" (and {len(mismatched) - 1} more)" if len(mismatched) > 1 else ""
        raise ValueError(
            f"tensor {name} has shape {list(saved)} in the weights but {list(wanted)} in the model "
            f"config.json describes{more}"
        )
    missing = sorted(get("missing_keys") or [])
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ValueError(
            f"tensor {missing[0]}{more} is not in the weights; a classifier needs every tensor trained "
            "(a base model's folder has no classification head: fine-tune it with sentitune train)"
        )


def head_module_names(cfg: MethodConfig, pooling: str = "cls") -> list[str]:
    """Modules of a BERT classifier that form the trainable head. The pooler is named by its Linear
    (`pooler.dense`): peft's unload/merge of IA3 fails on a wrapped container module. With mean
    pooling the pooler is unused, so the head is the classifier whatever `method.head` says."""
    if pooling == "mean":
        return ["classifier"]
    return ["pooler.dense", "classifier"] if cfg.head == "pooler+classifier" else ["classifier"]


def freeze_all_but(model, module_names: list[str]) -> None:
    """Freezes every parameter except those inside the named (dotted) modules, matched at any depth."""
    for name, parameter in model.named_parameters():
        dotted = f".{name}."
        parameter.requires_grad = any(f".{m}." in dotted for m in module_names)


class FrozenBaseMethod(Method):
    """Methods that keep (most of) the pretrained weights. The trained tensors alone go to
    `trained.safetensors`, the checkpoint this method needs and the one `checkpoint_size_mib`
    measures; the whole model goes beside it (`model.safetensors`), so that the folder loads with
    plain transformers (`pipeline("text-classification", model=folder)`) without the base model.
    Folders from before the full copy hold only `trained.safetensors`; they load on the base model."""

    weights_file = "trained.safetensors"
    checkpoint_pattern = weights_file
    full_model_files = ("model.safetensors", "model.safetensors.index.json")

    def save(self, model, folder: Path) -> None:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        trained = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
        save_file(trained, str(folder / self.weights_file), metadata={"method": self.name})
        model.save_pretrained(folder)  # config.json (id2label, label2id) + the full model

    def load(self, folder: Path, load_base):
        from safetensors.torch import load_file

        if any((folder / name).is_file() for name in self.full_model_files):
            return super().load(folder, load_base)
        from sentitune.methods.pooling import saved_pooling, set_pooling

        model = set_pooling(load_base(), saved_pooling(folder))
        trained = load_file(str(folder / self.weights_file))
        missing = set(trained) - set(dict(model.named_parameters()))
        if missing:
            raise ValueError(
                f"{folder / self.weights_file}: tensors {sorted(missing)[:3]} do not belong to the base model"
            )
        model.load_state_dict(trained, strict=False)
        return model


class PeftMethod(Method):
    """Methods that wrap the classifier with a peft adapter; the head (per `method.head`) trains in
    full and is saved with the adapter, so the checkpoint holds only what was trained."""

    mergeable = True
    """Whether the adapter folds into the base weights at load (LoRA-like); prompt methods cannot."""

    def peft_config(self, cfg: MethodConfig, pooling: str):
        """The adapter's config; `pooling` decides whether the pooler belongs to the trained head."""
        raise NotImplementedError

    def adapt_base(self, model):
        """Fits the base classifier to what the peft wrapper expects; the same at training and at
        load. Most methods need nothing."""
        return model

    def mark_trainable(self, model, cfg: MethodConfig):
        from peft import get_peft_model

        from sentitune.methods.pooling import model_pooling

        return get_peft_model(self.adapt_base(model), self.peft_config(cfg, model_pooling(model)))

    def save(self, model, folder: Path) -> None:
        import json

        from sentitune.methods.pooling import ADAPTER_POOLING_FILE, CONFIG_KEY, model_pooling

        model.save_pretrained(folder)  # adapter_model.safetensors + adapter_config.json only
        # No config.json here: with one, transformers would take the folder for a whole model. The
        # base model comes from the run's config, its pooling from this file.
        (folder / ADAPTER_POOLING_FILE).write_text(json.dumps({CONFIG_KEY: model_pooling(model)}), encoding="utf-8")

    def load(self, folder: Path, load_base):
        from peft import PeftModel

        # peft would fall back to unpickling adapter_model.bin; only safetensors is accepted.
        if not (folder / "adapter_model.safetensors").exists():
            raise FileNotFoundError(f"No such file: {folder / 'adapter_model.safetensors'}")
        from sentitune.methods.pooling import saved_pooling, set_pooling

        base = set_pooling(load_base(), saved_pooling(folder))  # before adapt_base, which wraps forward
        model = PeftModel.from_pretrained(self.adapt_base(base), folder)
        # Merging folds the adapter into the frozen weights, so inference pays nothing for it.
        return model.merge_and_unload() if self.mergeable else model
