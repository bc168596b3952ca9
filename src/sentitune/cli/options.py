"""Flag groups shared by several commands, and their translation into API arguments.

Flags are the CLI's vocabulary; the Python API takes typed keyword arguments. Checks that name a
flag (`--workers must be >= 1`) live here, so the domain modules never see a Namespace.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os

from sentitune.config import ConfigError, load_config, parse_yaml, preset_names
from sentitune.errors import DataError


# flag -> (dotted config field, type, help). CLI flags override YAML; YAML overrides defaults.
RUN_FLAGS: dict[str, tuple[str, type, str]] = {
    "--model": ("model", str, "hub id, local folder, or alias (minilm-l6 = bundled, offline)"),
    "--dataset": (
        "data.dataset",
        str,
        "sst2, imdb, files, a CSV/TSV/JSONL file (carved into train/validation/test) or a folder of train and "
        "test files, or hub:OWNER/NAME[:CONFIG]",
    ),
    "--train-split": ("data.train_split", str, "training split of a hub: dataset (default train)"),
    "--test-split": ("data.test_split", str, "test split of a hub: dataset (default: test, else carved from train)"),
    "--test-size": ("data.test_size", float, "test slice carved when the data has no test split: fraction or count"),
    "--data-dir": ("data.data_dir", str, "local data folder (default: $SENTITUNE_DATA_DIR, else the hub)"),
    "--train-file": ("data.train_file", str, "training file for --dataset files (CSV/TSV/JSONL)"),
    "--test-file": ("data.test_file", str, "test file for --dataset files"),
    "--validation-file": ("data.validation_file", str, "optional validation file"),
    "--text-column": ("data.text_column", str, "text column name"),
    "--label-column": ("data.label_column", str, "label column name (imdb: 'rating' = 8-class stars)"),
    "--label-names": ("data.label_names", str, "comma-separated label names in id order"),
    "--validation-size": ("data.validation_size", float, "validation slice from train: fraction or count"),
    "--train-subset": ("data.train_subset", int, "train on this many examples (stratified)"),
    "--test-subset": ("data.test_subset", int, "test on this many examples (smoke runs only)"),
    "--max-length": ("data.max_length", int, "max tokens (default 128 sst2, 512 otherwise)"),
    "--truncation": ("data.truncation", str, "head, tail or head+tail"),
    "--long-text": ("data.long_text", str, "truncate, or chunk: windows of max-length, logits averaged per text"),
    "--chunk-stride": ("data.chunk_stride", int, "with --long-text chunk: tokens between windows (default half)"),
    "--learning-rate": ("method.learning_rate", float, "peak learning rate (default: per method)"),
    "--head": ("method.head", str, "classifier or pooler+classifier (head and lora methods)"),
    "--lora-r": ("method.lora_r", int, "LoRA rank"),
    "--lora-alpha": ("method.lora_alpha", int, "LoRA alpha"),
    "--lora-dropout": ("method.lora_dropout", float, "LoRA dropout"),
    "--lora-targets": ("method.lora_target_modules", str, "comma-separated modules, or all-linear"),
    "--layer-lr-decay": (
        "method.layer_lr_decay",
        float,
        "layer-wise LR decay (1 = off); applies to every neural method, meant for full fine-tuning",
    ),
    "--epochs": ("train.epochs", float, "training epochs"),
    "--max-steps": ("train.max_steps", int, "stop after N optimizer steps"),
    "--batch-size": ("train.batch_size", int, "per-device training batch size"),
    "--eval-batch-size": ("train.eval_batch_size", int, "per-device batch size when scoring validation and test"),
    "--grad-accum": ("train.gradient_accumulation_steps", int, "gradient accumulation steps"),
    "--seed": ("train.seed", int, "training seed"),
    "--precision": ("train.precision", str, "auto, fp32, bf16 or fp16"),
    "--threads": ("train.threads", int, "torch CPU threads"),
    "--report-to": ("train.report_to", str, "experiment trackers: none, or tensorboard,mlflow,wandb,trackio"),
    "--run-name": ("train.run_name", str, "the run's name in the trackers (default: the run folder's name)"),
    "--class-weights": ("train.class_weights", str, "none, balanced, or one weight per class: 1,9"),
    "--best-metric": ("train.best_metric", str, "validation metric that picks the kept checkpoint: accuracy, macro_f1"),
    "--early-stopping-patience": ("train.early_stopping_patience", int, "stop after N evaluations without improvement"),
}


# Hugging Face's names (Trainer, run_glue) for sentitune's flags; they answer alongside the dash
# spellings. The underscore spelling of every dash flag is added by `add_familiar_spellings`.
HF_NAMES: dict[str, str] = {
    "--model": "--model_name_or_path",
    "--epochs": "--num_train_epochs",
    "--batch-size": "--per_device_train_batch_size",
    "--eval-batch-size": "--per_device_eval_batch_size",
    "--max-length": "--max_seq_length",
}


def dest(flag: str) -> str:
    """The Namespace attribute of a flag: `--lora-r` -> `lora_r`."""
    return flag.lstrip("-").replace("-", "_")


def add_config_flags(parser: argparse.ArgumentParser, with_method: bool = True) -> None:
    group = parser.add_argument_group("configuration (flags override --config/--preset)")
    group.add_argument("--config", help="YAML config file")
    group.add_argument("--preset", help=f"shipped preset: {', '.join(preset_names())}")
    if with_method:
        from sentitune.methods import registry  # the method modules load numpy: only when a parser is built

        group.add_argument("--method", choices=registry.names(), help="adaptation method")
    for flag, (_, kind, help_text) in RUN_FLAGS.items():
        names = [flag, HF_NAMES[flag]] if flag in HF_NAMES else [flag]
        group.add_argument(*names, type=kind, help=help_text, dest=dest(flag))
    group.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any config field, e.g. --set train.warmup_ratio=0.1 (repeatable)",
    )


def config_from_args(args: argparse.Namespace):
    """--config/--preset, then the run flags, then every --set KEY=VALUE -> a RunConfig."""
    return load_config(args.config, args.preset, run_overrides(args))


def run_overrides(args: argparse.Namespace) -> dict:
    """The run flags, then every --set KEY=VALUE, as dotted config overrides (None: flag not given)."""
    overrides = {field: getattr(args, dest(flag)) for flag, (field, _, _) in RUN_FLAGS.items()}
    if getattr(args, "method", None):
        overrides["method.name"] = args.method
    for item in args.set:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        overrides[key.strip()] = parse_yaml(value, f"--set {key.strip()}") if value.strip() else value
    return overrides


def parse_list(text: str | None, kind=str, sep: str = ",") -> list | None:
    """`"1,2,4"` -> [1, 2, 4]; None stays None (the flag was not given)."""
    if text is None:
        return None
    try:
        return [kind(item.strip()) for item in text.split(sep) if item.strip()]
    except ValueError:
        raise ConfigError(f"cannot read {text!r} as a list of {kind.__name__}") from None


def dataclass_default(cls: type, name: str):
    """The default of field `name` of dataclass `cls`: help strings quote it instead of restating it."""
    for item in dataclasses.fields(cls):
        if item.name == name:
            if item.default is not dataclasses.MISSING:
                return item.default
            if item.default_factory is not dataclasses.MISSING:
                return item.default_factory()
            break
    raise KeyError(f"{cls.__name__} has no field {name!r} with a default")


# ---- where and how wide the model runs (predict and serve) ------------------------------------


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """Where and how wide the model runs; shared by predict and serve."""
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when visible, else cpu)")
    parser.add_argument(
        "--workers", type=int, help="ONNX exports: parallel ONNX Runtime sessions (default: one per 4 CPU cores)"
    )
    parser.add_argument(
        "--threads", type=int, help="threads per ONNX Runtime session (default: cores / workers), or torch CPU threads"
    )


def check_runtime_arguments(args: argparse.Namespace) -> None:
    """--device, --workers and --threads, each checked with a one-line error before anything loads."""
    device = getattr(args, "device", None)
    if device is not None:
        if device != "cpu" and not device.startswith("cuda"):
            raise DataError(f"--device {device!r}: expected cpu, cuda or cuda:N")
        if device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise DataError(f"--device {device}: no CUDA device is visible to this process")
    for flag in ("workers", "threads"):
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            raise DataError(f"--{flag} must be >= 1, got {value}")


def runtime_kwargs(args: argparse.Namespace) -> dict:
    """The checked runtime flags as `Predictor.load` keyword arguments."""
    check_runtime_arguments(args)
    return {
        "device": getattr(args, "device", None),
        "workers": getattr(args, "workers", None),
        "threads": getattr(args, "threads", None),
    }


# ---- familiar spellings: --output_dir as well as --output-dir ---------------------------------


UNDERSCORE_NOTE = "Every --dash-flag also answers to its underscore spelling (--output_dir for --output-dir)."


class FamiliarHelpFormatter(argparse.HelpFormatter):
    """Help lists each flag once: the underscore twins `add_familiar_spellings` adds stay out of it
    (the parser's description says they exist)."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        twins = getattr(action, "underscore_twins", ())
        if not twins:
            return super()._format_action_invocation(action)
        shown = copy.copy(action)
        shown.option_strings = [name for name in action.option_strings if name not in twins]
        return super()._format_action_invocation(shown)


def add_familiar_spellings(parser: argparse.ArgumentParser) -> None:
    """Gives every `--dash-flag` of `parser` and its subcommands the underscore spelling Hugging Face
    scripts use (`--output_dir`), unless that spelling already means something else."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                add_familiar_spellings(child)
            continue
        twins = []
        for name in list(action.option_strings):
            twin = "--" + name[2:].replace("-", "_")
            if name.startswith("--") and twin != name and twin not in parser._option_string_actions:
                action.option_strings.append(twin)
                parser._option_string_actions[twin] = action
                twins.append(twin)
        if twins:
            action.underscore_twins = tuple(twins)
            if UNDERSCORE_NOTE not in (parser.epilog or ""):
                parser.epilog = f"{parser.epilog} {UNDERSCORE_NOTE}" if parser.epilog else UNDERSCORE_NOTE
    parser.formatter_class = FamiliarHelpFormatter


# ---- the run folder: positional or --model, one form for every command ------------------------


def add_model_argument(parser: argparse.ArgumentParser, dest: str, help_text: str, positional: bool = True) -> None:
    """The folder a command works on, as a positional RUN or `--model RUN` (either; one is required;
    `resolve_model_argument` checks them). The value lands in `args.<dest>`."""
    if positional:
        parser.add_argument("positional_model", nargs="?", metavar="RUN", help=f"{help_text} (or --model)")
    parser.add_argument(
        "--model", "--model_name_or_path", dest="option_model", metavar="RUN", help=f"{help_text} (or positional RUN)"
    )
    parser.set_defaults(model_dest=dest, positional_model=None)


def resolve_model_argument(args: argparse.Namespace) -> None:
    """Sets `args.<model_dest>` from the positional RUN or --model. predict's positional texts carry
    the run folder first when --model is absent (`sentitune predict RUN "text"`)."""
    target = getattr(args, "model_dest", None)
    if target is None:
        return
    option, positional = args.option_model, args.positional_model
    if positional is None and option is None and getattr(args, "texts", None):
        positional = args.texts.pop(0)
        if not os.path.isdir(positional):
            raise DataError(
                f"{positional!r} is not a folder: give the run folder first (or --model RUN), then the texts"
            )
    if option is not None and positional is not None and os.path.normpath(option) != os.path.normpath(positional):
        raise ConfigError(
            f"two run folders: positional {positional!r} and --model {option!r}; give one (they are the same option)"
        )
    value = option if option is not None else positional
    if value is None:
        raise ConfigError("no run folder: give it as the first argument or with --model RUN")
    setattr(args, target, value)
