"""`sentitune export --format triton`: a model repository for NVIDIA Triton Inference Server.

    DIR/sentitune/              ensemble: TEXT (raw strings) -> PROBABILITIES, LABEL
    DIR/sentitune_tokenizer/    Python backend: TEXT -> input_ids, attention_mask (padded to max_length)
    DIR/sentitune_onnx/         ONNX Runtime backend: the exported graph (fp32, or int8 with --quantize)
    DIR/sentitune_postprocess/  Python backend: logits -> softmax(logits / temperature), top label
    DIR/sentitune-triton.json   what was built from which run (Triton ignores files at the root)

The ONNX model comes from `export_run` (same graph, same parity report); the Python models are
`triton_backend.py`, with the run's tokenizer files and sentitune.json beside them. The tokenizer pads
every text to max_length: Triton's dynamic batcher stacks only requests whose shapes agree.

Example:
    >>> export_triton("runs/sst2-lora", "triton-repo", quantize="int8")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from sentitune import results
from sentitune.errors import ConfigError
from sentitune.export import PARITY_FILE, export_run
from sentitune.inference import EXPORT_MANIFEST
from sentitune.runtime import portable_path


ENSEMBLE, TOKENIZER, ONNX_MODEL, POSTPROCESS = (
    "sentitune",
    "sentitune_tokenizer",
    "sentitune_onnx",
    "sentitune_postprocess",
)
MANIFEST = "sentitune-triton.json"
BACKEND_SOURCE = Path(__file__).with_name("triton_backend.py")
INSTANCE_KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}


def is_triton_repository(folder: str | Path) -> bool:
    """A repository this command wrote (its manifest says so): the only folder --overwrite replaces."""
    try:
        return json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8")).get("created_by") == "sentitune"
    except (OSError, ValueError, AttributeError):
        return False


def _dims(values) -> str:
    return "[ " + ", ".join(str(v) for v in values) + " ]"


def _tensor(name: str, dtype: str, dims) -> str:
    return f'  {{\n    name: "{name}"\n    data_type: {dtype}\n    dims: {_dims(dims)}\n  }}'


def _io(kind: str, tensors: list[str]) -> str:
    return f"{kind} [\n" + ",\n".join(tensors) + "\n]\n"


def onnx_config(
    labels: int,
    max_length: int,
    max_batch_size: int,
    preferred: list[int],
    delay_us: int,
    kind: str,
    count: int,
) -> str:
    """config.pbtxt of the ONNX Runtime model: dynamic batching, one instance group."""
    return (
        f'name: "{ONNX_MODEL}"\nbackend: "onnxruntime"\nmax_batch_size: {max_batch_size}\n'
        + _io(
            "input",
            [_tensor("input_ids", "TYPE_INT64", [max_length]), _tensor("attention_mask", "TYPE_INT64", [max_length])],
        )
        + _io("output", [_tensor("logits", "TYPE_FP32", [labels])])
        + f"dynamic_batching {{\n  preferred_batch_size: {_dims(preferred)}\n"
        + f"  max_queue_delay_microseconds: {delay_us}\n}}\n"
        + f"instance_group [\n  {{\n    count: {count}\n    kind: {INSTANCE_KINDS[kind]}\n  }}\n]\n"
    )


def python_config(
    name: str, step: str, inputs: list[str], outputs: list[str], max_batch_size: int, delay_us: int
) -> str:
    """config.pbtxt of a Python-backend step (`step`: tokenize or postprocess), on CPU instances."""
    return (
        f'name: "{name}"\nbackend: "python"\nmax_batch_size: {max_batch_size}\n'
        + _io("input", inputs)
        + _io("output", outputs)
        + f'parameters: {{\n  key: "step"\n  value: {{ string_value: "{step}" }}\n}}\n'
        + f"dynamic_batching {{\n  max_queue_delay_microseconds: {delay_us}\n}}\n"
        + "instance_group [\n  {\n    count: 1\n    kind: KIND_CPU\n  }\n]\n"
    )


def ensemble_config(labels: int, max_length: int, max_batch_size: int) -> str:
    """config.pbtxt of the ensemble that joins tokenizer -> ONNX -> postprocess: clients send raw text."""

    def step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> str:
        maps = "".join(f'      input_map {{ key: "{k}" value: "{v}" }}\n' for k, v in inputs.items())
        maps += "".join(f'      output_map {{ key: "{k}" value: "{v}" }}\n' for k, v in outputs.items())
        return f'    {{\n      model_name: "{model}"\n      model_version: -1\n{maps}    }}'

    steps = [
        step(TOKENIZER, {"TEXT": "TEXT"}, {"input_ids": "input_ids", "attention_mask": "attention_mask"}),
        step(ONNX_MODEL, {"input_ids": "input_ids", "attention_mask": "attention_mask"}, {"logits": "logits"}),
        step(POSTPROCESS, {"LOGITS": "logits"}, {"PROBABILITIES": "PROBABILITIES", "LABEL": "LABEL"}),
    ]
    return (
        f'name: "{ENSEMBLE}"\nplatform: "ensemble"\nmax_batch_size: {max_batch_size}\n'
        + _io("input", [_tensor("TEXT", "TYPE_STRING", [1])])
        + _io("output", [_tensor("PROBABILITIES", "TYPE_FP32", [labels]), _tensor("LABEL", "TYPE_STRING", [1])])
        + "ensemble_scheduling {\n  step [\n"
        + ",\n".join(steps)
        + "\n  ]\n}\n"
    )


def export_triton(
    run_dir: str | Path,
    output: str | Path,
    *,
    quantize: str | None = None,
    kind: str = "cpu",
    instances: int = 1,
    max_batch_size: int = 64,
    preferred_batch_sizes: tuple[int, ...] = (8, 16, 32),
    max_queue_delay_us: int = 2000,
    overwrite: bool = False,
    **export_kwargs,
) -> dict:
    """Exports `run_dir` to ONNX (export_run, with its parity report) and lays it out as a Triton
    model repository in `output`. Returns export_run's report with the repository's manifest added."""
    if kind not in INSTANCE_KINDS:
        raise ConfigError(f"--triton-instance {kind!r}: expected one of {', '.join(INSTANCE_KINDS)}")
    if instances < 1 or max_batch_size < 1 or max_queue_delay_us < 0:
        raise ConfigError(
            f"Triton settings: instances ({instances}) and max batch size ({max_batch_size}) must be >= 1, "
            f"queue delay ({max_queue_delay_us} us) >= 0"
        )
    preferred = sorted({size for size in preferred_batch_sizes if 1 <= size <= max_batch_size}) or [max_batch_size]
    output = Path(output)
    results.check_output_dir(output, overwrite, is_triton_repository, "a Triton repository sentitune wrote")
    with tempfile.TemporaryDirectory(prefix=".triton-", dir=output.parent if output.parent.is_dir() else None) as tmp:
        onnx_dir = Path(tmp) / "onnx"
        report = export_run(run_dir, onnx_dir, fmt="onnx", quantize=quantize, **export_kwargs)
        manifest = json.loads((onnx_dir / EXPORT_MANIFEST).read_text(encoding="utf-8"))
        if manifest.get("long_text", "truncate") != "truncate":
            raise ConfigError(
                f"{run_dir}: long_text {manifest['long_text']!r} averages windows per text; the Triton repository "
                "truncates (as long_text: truncate); use `sentitune serve` for this run"
            )
        variant = manifest["default_variant"]
        labels, max_length = len(manifest["label_names"]), manifest["max_length"]
        repo = Path(tmp) / "repo"
        onnx_version = repo / ONNX_MODEL / "1"
        onnx_version.mkdir(parents=True)
        shutil.copy2(onnx_dir / manifest["files"][variant], onnx_version / "model.onnx")
        (repo / ONNX_MODEL / "config.pbtxt").write_text(
            onnx_config(labels, max_length, max_batch_size, preferred, max_queue_delay_us, kind, instances)
        )
        tokenizer_files = [
            p for p in onnx_dir.iterdir() if p.is_file() and p.suffix != ".onnx" and p.name != PARITY_FILE
        ]
        text = [_tensor("TEXT", "TYPE_STRING", [1])]
        token_outputs = [
            _tensor("input_ids", "TYPE_INT64", [max_length]),
            _tensor("attention_mask", "TYPE_INT64", [max_length]),
        ]
        steps = {
            TOKENIZER: ("tokenize", text, token_outputs),
            POSTPROCESS: (
                "postprocess",
                [_tensor("LOGITS", "TYPE_FP32", [labels])],
                [_tensor("PROBABILITIES", "TYPE_FP32", [labels]), _tensor("LABEL", "TYPE_STRING", [1])],
            ),
        }
        for name, (step, inputs, outputs) in steps.items():
            version = repo / name / "1"
            version.mkdir(parents=True)
            shutil.copy2(BACKEND_SOURCE, version / "model.py")
            for path in tokenizer_files if step == "tokenize" else [onnx_dir / EXPORT_MANIFEST]:
                shutil.copy2(path, version / path.name)
            (repo / name / "config.pbtxt").write_text(
                python_config(name, step, inputs, outputs, max_batch_size, max_queue_delay_us)
            )
        (repo / ENSEMBLE / "1").mkdir(parents=True)  # Triton wants a version folder, empty for an ensemble
        (repo / ENSEMBLE / "config.pbtxt").write_text(ensemble_config(labels, max_length, max_batch_size))
        if (onnx_dir / PARITY_FILE).exists():
            shutil.copy2(onnx_dir / PARITY_FILE, repo / PARITY_FILE)
        repo_manifest = {
            "created_by": "sentitune",
            "source_run": portable_path(str(run_dir)),
            "variant": variant,
            "models": [ENSEMBLE, TOKENIZER, ONNX_MODEL, POSTPROCESS],
            "instance_kind": INSTANCE_KINDS[kind],
            "max_batch_size": max_batch_size,
            "preferred_batch_sizes": preferred,
            "max_queue_delay_us": max_queue_delay_us,
        }
        results.atomic_write_json(repo / MANIFEST, repo_manifest)
        if output.exists():
            shutil.rmtree(output)
        shutil.move(str(repo), str(output))
    report["output"] = str(output)
    report["triton"] = repo_manifest
    return report
