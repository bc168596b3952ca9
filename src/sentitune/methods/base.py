"""What every adaptation method provides. Neural methods differ only in which parameters train
(`prepare`) and in how their trained state is saved and restored; the training loop is shared."""

from __future__ import annotations

from pathlib import Path
from typing import Any


# Config names and validates methods through the registry, so methods never import config, not even
# for type hints: `cfg` below is the run's `config.MethodConfig`.
MethodConfig = Any


class Method:
    name: str = ""
    default_learning_rate: float = 2e-5
    neural: bool = True
    summary: str = ""

    def prepare(self, model, cfg: MethodConfig):
        """Returns the model to train, with exactly the intended parameters requiring grad."""
        raise NotImplementedError

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
        return model


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


def head_module_names(cfg: MethodConfig) -> list[str]:
    """Modules of a BERT classifier that form the trainable head. The pooler is named by its Linear
    (`pooler.dense`): peft's unload/merge of IA3 fails on a wrapped container module."""
    return ["pooler.dense", "classifier"] if cfg.head == "pooler+classifier" else ["classifier"]


def freeze_all_but(model, module_names: list[str]) -> None:
    """Freezes every parameter except those inside the named (dotted) modules, matched at any depth."""
    for name, parameter in model.named_parameters():
        dotted = f".{name}."
        parameter.requires_grad = any(f".{m}." in dotted for m in module_names)


class FrozenBaseMethod(Method):
    """Methods that keep (most of) the pretrained weights: they save only the trained tensors, so
    the checkpoint is small and loading needs the base model."""

    weights_file = "trained.safetensors"

    def save(self, model, folder: Path) -> None:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        trained = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
        save_file(trained, str(folder / self.weights_file), metadata={"method": self.name})
        model.config.save_pretrained(folder)

    def load(self, folder: Path, load_base):
        from safetensors.torch import load_file

        model = load_base()
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

    def peft_config(self, cfg: MethodConfig):
        raise NotImplementedError

    def adapt_base(self, model):
        """Fits the base classifier to what the peft wrapper expects; the same at training and at
        load. Most methods need nothing."""
        return model

    def prepare(self, model, cfg: MethodConfig):
        from peft import get_peft_model

        return get_peft_model(self.adapt_base(model), self.peft_config(cfg))

    def save(self, model, folder: Path) -> None:
        model.save_pretrained(folder)  # adapter_model.safetensors + adapter_config.json only

    def load(self, folder: Path, load_base):
        from peft import PeftModel

        # peft would fall back to unpickling adapter_model.bin; only safetensors is accepted.
        if not (folder / "adapter_model.safetensors").exists():
            raise FileNotFoundError(f"No such file: {folder / 'adapter_model.safetensors'}")
        model = PeftModel.from_pretrained(self.adapt_base(load_base()), folder)
        # Merging folds the adapter into the frozen weights, so inference pays nothing for it.
        return model.merge_and_unload() if self.mergeable else model
