"""The run folder is the contract between training and everything downstream.

    <run>/config.yaml        fully resolved RunConfig
    <run>/labels.json        label names in id order
    <run>/metrics.json       status, test metrics, parameters, speed, memory, provenance (units in keys)
    <run>/predictions.csv    test split: text, gold, pred, prob_<label> per class
    <run>/history.csv        training history: step, epoch, loss, learning_rate, eval_* per log event
    <run>/model/             weights as safetensors (+ tokenizer); LoRA: adapter + head only
    <run>/thresholds.json    multi-label runs only: {label: decision threshold} chosen on validation

Every file is written atomically (temp file + rename), so a crash leaves the old or the new file.

Example:
    >>> run = load_run("runs/sst2-lora")  # doctest: +SKIP
    >>> run.metrics["test_accuracy"]  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CONFIG_FILE = "config.yaml"
LABELS_FILE = "labels.json"
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.csv"
HISTORY_FILE = "history.csv"
THRESHOLDS_FILE = "thresholds.json"
MODEL_DIR = "model"


class RunFolderError(ValueError):
    """A run folder is missing, unfinished or damaged."""


class OutputNotWritable(RuntimeError):
    """An output cannot be written: disk full, read-only file system or no permission. The message
    names the path; the user fixes it by freeing space or picking another output folder."""


NOT_WRITABLE_ERRNOS = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded",
                       errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                       errno.EPERM: "operation not permitted"}


def not_writable(exc: BaseException, path: str | Path | None = None) -> OutputNotWritable | None:
    """The user-facing error for an OSError (also one wrapped in a library's own error) that means the
    output location cannot take the write, or None for any other error."""
    code = getattr(exc, "errno", None)
    if code not in NOT_WRITABLE_ERRNOS:
        # Rust writers (safetensors, tokenizers) wrap the OS error in their own exception type:
        # "I/O error: No space left on device (os error 28)" or "Os { code: 28, ... }".
        match = re.search(r"(?:os error |Os \{ code: )(\d+)", str(exc))
        code = int(match.group(1)) if match else None
    if code not in NOT_WRITABLE_ERRNOS:
        return None
    where = getattr(exc, "filename", None) or path
    return OutputNotWritable(f"{where}: cannot write ({NOT_WRITABLE_ERRNOS[code]}); free space, fix the "
                             "permissions or choose another output folder")


@contextmanager
def writing(path: str | Path):
    """Turns disk-full, read-only and permission errors raised inside the block into OutputNotWritable."""
    try:
        yield
    except Exception as exc:
        mapped = not_writable(exc, path)
        if mapped is None:
            raise
        raise mapped from None


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Writes a temp file next to `path`, syncs it, then renames it over `path`: readers and a crash at
    any moment see the old file or the new one, never a mix. Full or read-only disks raise
    OutputNotWritable naming the path."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            # mkstemp creates 0600 files; results are meant to be shared like any other file.
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(temp, 0o666 & ~umask)
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=_json_default, allow_nan=True) + "\n")


def rows_to_csv(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    columns = columns or list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def atomic_write_csv(path: str | Path, rows: list[dict[str, Any]], columns: list[str] | None = None) -> None:
    atomic_write_text(path, rows_to_csv(rows, columns))


def predictions_rows(texts, gold, probabilities, label_names) -> list[dict[str, Any]]:
    probabilities = np.asarray(probabilities)
    predicted = probabilities.argmax(axis=1)
    rows = []
    for i, text in enumerate(texts):
        row = {"id": i, "text": text, "gold": label_names[gold[i]], "pred": label_names[predicted[i]]}
        for j, name in enumerate(label_names):
            row[f"prob_{name}"] = round(float(probabilities[i, j]), 6)
        rows.append(row)
    return rows


def multilabel_prediction_rows(texts, gold, probabilities, label_names, thresholds,
                               separator: str = "|") -> list[dict[str, Any]]:
    """predictions.csv rows for multi-label runs: gold and pred are label sets joined by `separator`
    (pred may be empty), then prob_<label> per label; gold == pred means every label is right.

    Example:
        >>> multilabel_prediction_rows(["x"], [[1, 0, 1]], [[0.9, 0.6, 0.2]], ["a", "b", "c"], [0.5, 0.7, 0.1])[0]
        {'id': 0, 'text': 'x', 'gold': 'a|c', 'pred': 'a|c', 'prob_a': 0.9, 'prob_b': 0.6, 'prob_c': 0.2}
    """
    probabilities = np.asarray(probabilities)
    predicted = probabilities >= np.asarray(thresholds)
    rows = []
    for i, text in enumerate(texts):
        row = {"id": i, "text": text,
               "gold": separator.join(name for name, g in zip(label_names, gold[i]) if g),
               "pred": separator.join(name for name, p in zip(label_names, predicted[i]) if p)}
        for j, name in enumerate(label_names):
            row[f"prob_{name}"] = round(float(probabilities[i, j]), 6)
        rows.append(row)
    return rows


def read_thresholds(folder: str | Path, label_names: list[str]) -> list[float]:
    """A multi-label run's per-label thresholds in `label_names` order (RunFolderError if absent)."""
    path = Path(folder) / THRESHOLDS_FILE
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        return [float(saved[name]) for name in label_names]
    except FileNotFoundError:
        raise RunFolderError(f"{path}: missing; a multi-label run needs its per-label thresholds") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise RunFolderError(f"{path}: damaged ({type(exc).__name__}: {exc})") from None


def read_status(folder: str | Path) -> str | None:
    """'ok', 'failed', 'running' or None when the folder holds no run."""
    path = Path(folder) / METRICS_FILE
    if not path.exists():
        return "running" if (Path(folder) / CONFIG_FILE).exists() else None
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("status")
    except (json.JSONDecodeError, OSError):
        return None


@dataclass
class Run:
    path: Path
    config: Any  # RunConfig
    label_names: list[str]
    metrics: dict[str, Any]

    @property
    def status(self) -> str:
        return self.metrics.get("status", "unknown")

    def predictions(self):
        """The test-split predictions as a DataFrame, with `gold_id`, `pred_id` and `probs` (n x k)."""
        import pandas as pd

        path = self.path / PREDICTIONS_FILE
        if not path.exists():
            raise RunFolderError(f"{path}: no predictions (run status: {self.status})")
        frame = pd.read_csv(path, keep_default_na=False, dtype={"gold": str, "pred": str})
        index = {name: i for i, name in enumerate(self.label_names)}
        frame["gold_id"] = frame["gold"].map(index)
        frame["pred_id"] = frame["pred"].map(index)
        return frame

    def probabilities(self, frame=None) -> np.ndarray:
        frame = self.predictions() if frame is None else frame
        return frame[[f"prob_{name}" for name in self.label_names]].to_numpy(dtype=np.float64)

    def history(self):
        import pandas as pd

        path = self.path / HISTORY_FILE
        return pd.read_csv(path) if path.exists() else pd.DataFrame()


def load_run(folder: str | Path, require_ok: bool = False) -> Run:
    from sentitune.config import ConfigError, RunConfig

    folder = Path(folder)
    if not folder.is_dir():
        raise RunFolderError(f"{folder}: run folder not found")
    config_path = folder / CONFIG_FILE
    if not config_path.exists():
        raise RunFolderError(f"{folder}: not a run folder (no {CONFIG_FILE})")
    try:
        config = RunConfig.from_yaml(config_path)
    except ConfigError as exc:
        message = str(exc)
        raise RunFolderError(message if message.startswith(str(config_path)) else f"{config_path}: {message}") from None
    metrics_path = folder / METRICS_FILE
    metrics: dict[str, Any] = {"status": "running"}
    if metrics_path.exists():
        try:
            metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise RunFolderError(f"{metrics_path}: corrupted JSON at line {exc.lineno}, column {exc.colno}") from None
    labels_path = folder / LABELS_FILE
    label_names: list[str] = []
    if labels_path.exists():
        try:
            label_names = json.loads(labels_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise RunFolderError(f"{labels_path}: corrupted JSON at line {exc.lineno}, column {exc.colno}") from None
        if not isinstance(label_names, list) or not all(isinstance(name, str) for name in label_names):
            raise RunFolderError(f"{labels_path}: expected a list of label names, got {label_names!r:.80}")
    elif metrics.get("status") == "ok":
        raise RunFolderError(f"{labels_path}: missing; the run folder is incomplete")
    recorded = metrics.get("label_names")
    if recorded is not None and label_names and recorded != label_names:
        raise RunFolderError(f"{labels_path}: labels {label_names} differ from those the run recorded in "
                             f"{METRICS_FILE} ({recorded}); the run folder was modified")
    run = Run(folder, config, label_names, metrics)
    if require_ok and run.status != "ok":
        raise RunFolderError(f"{folder}: run status is {run.status!r}, not 'ok'"
                             + (f" ({metrics.get('error')})" if metrics.get("error") else ""))
    return run


def folder_size_mib(folder: str | Path, pattern: str = "*") -> float:
    folder = Path(folder)
    if not folder.exists():
        return 0.0
    return sum(p.stat().st_size for p in folder.rglob(pattern) if p.is_file()) / 2**20
