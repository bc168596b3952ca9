"""The run folder is the contract between training and everything downstream.

    <run>/.sentitune-run     marker, written first: the folder is sentitune's (see ownership, below)
    <run>/config.yaml        fully resolved RunConfig
    <run>/labels.json        label names in id order
    <run>/metrics.json       status, test metrics, parameters, speed, memory, provenance (units in keys)
    <run>/predictions.csv    test split: text, gold, pred, prob_<label> per class
    <run>/history.csv        training history: step, epoch, loss, learning_rate, eval_* per log event
    <run>/model/             weights as safetensors (+ tokenizer) and a model card (README.md); loads with
                             plain transformers (full, head, bitfit) or peft (LoRA-like: adapter + head only)
    <run>/thresholds.json    multi-label runs only: {label: decision threshold} chosen on validation
    <run>/calibration.json   single-label runs: the softmax temperature fitted on validation (absent: T = 1)
    <run>/evaluations/<name>/  extra labelled files scored with the run (predictions.csv, metrics.json)
    <run>/embeddings/        embed runs only: pooled embeddings of train and validation (safetensors)
    <run>/tensorboard/       train.report_to tensorboard only: the Trainer's event files

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
import shutil
import stat
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sentitune.errors import OutputInUse, OutputNotWritable, RunFolderError, quote, read_text


CONFIG_FILE = "config.yaml"
LABELS_FILE = "labels.json"
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.csv"
HISTORY_FILE = "history.csv"
PROGRESS_FILE = "progress.json"  # step, loss, speed and ETA while a run trains; compare shows it
THRESHOLDS_FILE = "thresholds.json"
CALIBRATION_FILE = "calibration.json"
MODEL_DIR = "model"


NOT_WRITABLE_ERRNOS = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder, not a file",
}


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
    if code in (errno.ENOTDIR, errno.EISDIR):
        return OutputNotWritable(f"{where}: cannot write ({NOT_WRITABLE_ERRNOS[code]}); choose another output")
    return OutputNotWritable(
        f"{where}: cannot write ({NOT_WRITABLE_ERRNOS[code]}); free space, fix the "
        "permissions or choose another output folder"
    )


def check_output_path(path: str | Path, flag: str, kind: str = "folder") -> None:
    """Refuses an output location that cannot be created as `kind` ("folder" or "file"): a path
    whose nearest existing parent is a file, a folder output that is a file, a file output that is
    a folder. Checked before any work, so the refusal is one line instead of a failed write."""
    path = Path(path)
    for parent in path.parents:  # nearest first
        if parent.is_dir():
            break
        if parent.exists() or parent.is_symlink():
            raise OutputNotWritable(f"{path}: {parent} is a file, not a folder; pick another {flag}")
    if kind == "folder" and (path.exists() or path.is_symlink()) and not path.is_dir():
        raise OutputNotWritable(f"{path}: is a file, not a folder; {flag} takes a folder")
    if kind == "file" and path.is_dir():
        raise OutputNotWritable(f"{path}: is a folder; {flag} takes a file name")


def read_json(path: str | Path, expect: type = dict) -> Any:
    """A run-folder JSON file that must hold a JSON object (`expect=dict`) or array (`list`); every
    way it can be unusable (missing, a folder, not UTF-8, corrupted, the wrong type) is one
    RunFolderError line naming the file."""
    text = read_text(path, RunFolderError)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RunFolderError(f"{path}: corrupted JSON at line {exc.lineno}, column {exc.colno}") from None
    except (RecursionError, ValueError) as exc:  # nesting too deep, integers over 4300 digits
        raise RunFolderError(f"{path}: unreadable JSON ({str(exc).split(';')[0]})") from None
    if not isinstance(value, expect):
        wanted = "an object" if expect is dict else "an array"
        names = {dict: "an object", list: "an array", str: "a string"}
        got = "null" if value is None else names.get(type(value), f"a {type(value).__name__}")
        raise RunFolderError(f"{path}: expected {wanted} in this JSON file, got {got}; the file is damaged")
    return value


def check_label_names(path: str | Path, names: Any) -> list[str]:
    """A run's or export's label list: non-empty strings, each once (not even in another case)."""
    if not isinstance(names, list) or not all(isinstance(name, str) and name.strip() for name in names):
        raise RunFolderError(f"{path}: expected a list of label names, got {quote(names)}")
    folded: dict[str, str] = {}
    for name in names:
        other = folded.get(name.casefold())
        if other is not None:
            same = "twice" if other == name else f"as {quote(other)} and {quote(name)}"
            raise RunFolderError(f"{path}: label {quote(name)} is listed {same}; each class needs a distinct name")
        folded[name.casefold()] = name
    if len(names) < 2:
        raise RunFolderError(f"{path}: {len(names)} label name(s); a classifier has at least two")
    return names


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


@contextmanager
def atomic_writer(path: str | Path, mode: str = "w", encoding: str = "utf-8", newline: str | None = None):
    """Streams into a unique temp file next to `path` (`.<name>.<pid>.<random>.tmp`), then syncs it and
    renames it over `path`: readers and a crash at any moment see the old file or the new one, never
    a mix, and two writers never share a temp file. An error inside the block removes the temp file
    and keeps the old `path`. Temp files left by killed processes (their PID no longer alive) are
    removed first. Full or read-only disks raise OutputNotWritable naming the path.

    This is sentitune's one temp-then-rename writer; every atomic_write_* goes through it.

    Example:
        >>> with atomic_writer("out.jsonl") as out:  # doctest: +SKIP
        ...     out.write('{"label": "positive"}\\n')
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_writer: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    if is_special_file(path):
        # /dev/null, /dev/stdout, a named pipe: written through. A temp file renamed over it would
        # replace the device node itself (as root, `--output /dev/null` turned /dev/null into a file).
        text = {} if mode == "wb" else {"encoding": encoding, "newline": newline}
        with writing(path), open(path, mode, **text) as out:
            yield out
        return
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        sweep_leftovers(path)
        handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        out = os.fdopen(handle, "wb") if mode == "wb" else os.fdopen(handle, "w", encoding=encoding, newline=newline)
    except BaseException:
        os.close(handle)
        Path(temp).unlink(missing_ok=True)
        raise
    try:
        try:
            yield out
        except OSError as exc:
            # A write into the temp file that fails (ENOSPC) carries no file name; errors the block
            # raised reading something else name their file and pass through unchanged.
            mapped = not_writable(exc, path) if exc.filename is None else None
            if mapped is None:
                raise
            raise mapped from None
        with writing(path):
            out.flush()
            os.fsync(out.fileno())
            out.close()
            # mkstemp creates 0600 files; results are meant to be shared like any other file.
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(temp, 0o666 & ~umask)
            os.replace(temp, path)
    except BaseException:
        try:
            out.close()
        except OSError:
            pass
        Path(temp).unlink(missing_ok=True)
        raise


def is_special_file(path: str | Path) -> bool:
    """True for an existing output that is neither a regular file nor a folder (a device such as
    /dev/null, a named pipe, a socket), following symlinks (/dev/stdout)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Writes `data` to `path` through atomic_writer (temp file, fsync, rename)."""
    with atomic_writer(path, "wb") as out:
        out.write(data)


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


def multilabel_prediction_rows(
    texts, gold, probabilities, label_names, thresholds, separator: str = "|"
) -> list[dict[str, Any]]:
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
        row = {
            "id": i,
            "text": text,
            "gold": separator.join(name for name, g in zip(label_names, gold[i]) if g),
            "pred": separator.join(name for name, p in zip(label_names, predicted[i]) if p),
        }
        for j, name in enumerate(label_names):
            row[f"prob_{name}"] = round(float(probabilities[i, j]), 6)
        rows.append(row)
    return rows


def read_thresholds(folder: str | Path, label_names: list[str]) -> list[float]:
    """A multi-label run's per-label thresholds in `label_names` order (RunFolderError if absent)."""
    path = Path(folder) / THRESHOLDS_FILE
    if not path.exists():
        raise RunFolderError(f"{path}: missing; a multi-label run needs its per-label thresholds")
    saved = read_json(path, dict)
    try:
        return [float(saved[name]) for name in label_names]
    except (KeyError, TypeError, ValueError) as exc:
        raise RunFolderError(f"{path}: damaged ({type(exc).__name__}: {quote(str(exc))})") from None


def check_temperature(where: str | Path, value: Any) -> float:
    """A stored softmax temperature: a positive finite number, else one RunFolderError line naming `where`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < float("inf")):
        raise RunFolderError(f"{where}: temperature must be a positive number, got {quote(value)}; the file is damaged")
    return float(value)


def read_temperature(folder: str | Path) -> float:
    """The run's softmax temperature from calibration.json; 1.0 (no scaling) for runs without one:
    runs made before temperature scaling, and multi-label runs."""
    path = Path(folder) / CALIBRATION_FILE
    if not path.exists():
        return 1.0
    return check_temperature(path, read_json(path, dict).get("temperature"))


def read_status(folder: str | Path) -> str | None:
    """'ok', 'failed', 'running' or None when the folder holds no run."""
    path = Path(folder) / METRICS_FILE
    if not path.exists():
        return "running" if (Path(folder) / CONFIG_FILE).exists() else None
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError, RecursionError):  # corrupted, not UTF-8, a folder: no readable status
        return None
    return metrics.get("status") if isinstance(metrics, dict) else None


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
        """The test-split predictions as a raw DataFrame, with `gold_id` and `pred_id` added (NaN for a
        label outside labels.json). Correctness is load_predictions' to decide, not this frame's."""
        path = self.path / PREDICTIONS_FILE
        if not path.exists():
            raise RunFolderError(f"{path}: no predictions (run status: {self.status})")
        frame = _read_predictions_csv(path)
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
        metrics = read_json(metrics_path, dict)
    labels_path = folder / LABELS_FILE
    label_names: list[str] = []
    if labels_path.exists():
        label_names = check_label_names(labels_path, read_json(labels_path, list))
    elif metrics.get("status") == "ok":
        raise RunFolderError(f"{labels_path}: missing; the run folder is incomplete")
    recorded = metrics.get("label_names")
    if recorded is not None and label_names and recorded != label_names:
        raise RunFolderError(
            f"{labels_path}: labels {label_names} differ from those the run recorded in "
            f"{METRICS_FILE} ({recorded}); the run folder was modified"
        )
    run = Run(folder, config, label_names, metrics)
    if require_ok and run.status != "ok":
        raise RunFolderError(
            f"{folder}: run status is {run.status!r}, not 'ok'"
            + (f" ({metrics.get('error')})" if metrics.get("error") else "")
        )
    return run


def folder_size_mib(folder: str | Path, pattern: str = "*") -> float:
    folder = Path(folder)
    if not folder.exists():
        return 0.0
    return sum(p.stat().st_size for p in folder.rglob(pattern) if p.is_file()) / 2**20


# ---- predictions.csv, read back ----------------------------------------------------------------


@dataclass
class Predictions:
    """Test predictions of one run (or of one `evaluate` output), in file order.

    One meaning of "correct" for everything downstream (compare, analyze, report): the predicted class
    is the argmax of the stored probabilities; where several classes share the maximum (predictions.csv
    rounds to 6 decimals, which can tie two classes the model told apart), the stored `pred` column
    chooses among them, since it was decided from the unrounded probabilities. Without a stored
    column (`stored_pred` None) a tie goes to the first class, as numpy's argmax does.
    """

    texts: list[str]
    gold: np.ndarray
    probabilities: np.ndarray
    label_names: list[str]
    source: Path = Path(".")
    """Folder the predictions were read from."""
    run_dir: Path | None = None
    """Run folder holding the model, when known (needed for the negation probe)."""
    ids: list = field(default_factory=list)
    stored_pred: np.ndarray | None = None
    """Class ids of the `pred` column (-1 where it names no known class); None when not read from a file."""

    def __post_init__(self) -> None:
        self.gold = np.asarray(self.gold, dtype=int)
        self.probabilities = np.asarray(self.probabilities, dtype=np.float64)
        if not self.ids:
            self.ids = list(range(len(self.texts)))

    @property
    def predicted(self) -> np.ndarray:
        """Class ids: argmax of the probabilities, ties broken by the stored `pred` column."""
        best = self.probabilities.argmax(axis=1)
        if self.stored_pred is None or not len(best):
            return best
        stored = np.asarray(self.stored_pred, dtype=int)
        rows = np.arange(len(best))
        known = stored >= 0
        at_max = known & (self.probabilities[rows, np.where(known, stored, 0)] == self.probabilities[rows, best])
        return np.where(at_max, stored, best)

    @property
    def correct(self) -> np.ndarray:
        return self.predicted == self.gold


def _label_names_from_columns(columns) -> list[str]:
    return [c[len("prob_") :] for c in columns if c.startswith("prob_")]


def _run_of_evaluation(folder: Path) -> Path | None:
    """The run an `evaluate` output belongs to: its metrics.json names it; default layout as fallback."""
    metrics_path = folder / METRICS_FILE
    candidates = []
    if metrics_path.exists():
        try:
            recorded = json.loads(metrics_path.read_text(encoding="utf-8")).get("run")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            recorded = None
        if isinstance(recorded, str) and recorded:
            candidates.append(Path(recorded))
    if folder.parent.name == EVALUATIONS_DIR:
        candidates.append(folder.parent.parent)
    return next((c for c in candidates if (c / CONFIG_FILE).exists()), None)


def _read_predictions_csv(path: Path):
    import pandas as pd

    try:
        return pd.read_csv(path, keep_default_na=False, dtype={"gold": str, "pred": str, "text": str})
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError, OSError) as exc:
        raise RunFolderError(f"{path}: unreadable predictions file ({type(exc).__name__}: {quote(str(exc))})") from None


def _refuse_incomplete_rows(path: Path, frame, names: list[str]) -> None:
    """A file cut off mid-row reads as a last row with missing or partial values (a gold label cut to
    'posi', no probabilities); that is reported as what it is, not as an unknown label."""
    import pandas as pd

    columns = [f"prob_{n}" for n in names]
    numbers = frame[columns].apply(pd.to_numeric, errors="coerce")
    damaged = frame[["text", "gold"]].isna().any(axis=1).to_numpy() | numbers.isna().any(axis=1).to_numpy()
    if damaged.any():
        row = int(np.flatnonzero(damaged)[0])
        empty = [c for c in ("text", "gold") if pd.isna(frame[c].iloc[row])]
        empty += [c for c in columns if pd.isna(numbers[c].iloc[row])]
        raise RunFolderError(
            f"{path}: data row {row + 1} of {len(frame)} is incomplete (no usable {', '.join(empty[:3])}); "
            "the file was cut off or edited"
        )


def load_predictions(folder: str | Path) -> Predictions:
    """Reads predictions.csv of a finished single-label run folder, or of an `evaluate` output folder.

    Label names come from the run's labels.json when the folder is a run, else from the prob_<label>
    columns, which predictions.csv writes in id order. Raises RunFolderError for anything else
    (unfinished or multi-label runs, missing columns, gold labels outside the label set).

    Example:
        >>> load_predictions("runs/sst2-lora").correct.mean()  # doctest: +SKIP
        0.9002
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise RunFolderError(f"{folder}: folder not found")
    path = folder / PREDICTIONS_FILE
    declared: list[str] = []
    if (folder / CONFIG_FILE).exists():
        run = load_run(folder, require_ok=True)
        if run.config.data.problem_type == "multi_label":
            raise RunFolderError(
                f"{folder}: a multi-label run; analyze and report support single-label runs only "
                "(its micro/macro F1 and subset accuracy are in metrics.json)"
            )
        run_dir: Path | None = folder
        declared = run.label_names
    else:
        run_dir = _run_of_evaluation(folder)
    if not path.exists():
        raise RunFolderError(
            f"{folder}: no {PREDICTIONS_FILE}; pass a finished run folder or the output folder of `sentitune evaluate`"
        )
    frame = _read_predictions_csv(path)
    names = declared or _label_names_from_columns(frame.columns)
    missing = [c for c in ("text", "gold") if c not in frame.columns]
    if missing or not names:
        raise RunFolderError(f"{path}: not a sentitune predictions file (missing {missing or 'prob_<label> columns'})")
    absent = [f"prob_{n}" for n in names if f"prob_{n}" not in frame.columns]
    if absent:
        raise RunFolderError(f"{path}: missing probability columns {absent[:5]} for the run's labels {names}")
    _refuse_incomplete_rows(path, frame, names)
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted(set(frame["gold"]) - set(index))
    if unknown:
        raise RunFolderError(f"{path}: gold labels {unknown[:5]} are not among the run's labels {names}")
    try:
        probabilities = frame[[f"prob_{n}" for n in names]].to_numpy(dtype=np.float64)
    except ValueError as exc:
        raise RunFolderError(f"{path}: probability columns are not all numbers ({exc})") from None
    stored = frame["pred"].map(index).fillna(-1).to_numpy(dtype=int) if "pred" in frame.columns else None
    return Predictions(
        frame["text"].tolist(),
        frame["gold"].map(index).to_numpy(),
        probabilities,
        names,
        source=folder,
        run_dir=run_dir,
        ids=frame["id"].tolist() if "id" in frame.columns else [],
        stored_pred=stored,
    )


def load_correctness(folder: str | Path) -> np.ndarray:
    """Per-example correctness (bool, file order) of a finished run: `Predictions.correct` for
    single-label runs; for multi-label runs, whether the predicted label set equals the gold one
    (subset accuracy: the run's own thresholds decided the stored `pred` sets, so they are compared
    as written)."""
    run = load_run(folder, require_ok=True)
    if run.config.data.problem_type != "multi_label":
        return load_predictions(folder).correct
    path = Path(folder) / PREDICTIONS_FILE
    if not path.exists():
        raise RunFolderError(f"{path}: no predictions (run status: {run.status})")
    frame = _read_predictions_csv(path)
    if "gold" not in frame.columns or "pred" not in frame.columns:
        raise RunFolderError(f"{path}: not a sentitune predictions file (missing gold/pred columns)")
    return (frame["gold"] == frame["pred"]).to_numpy(dtype=bool)


# ---- ownership, locks and leftovers -----------------------------------------------------------
#
# sentitune deletes or replaces only what it created: a run folder carries RUN_MARKER (written first,
# when the folder is created), a checkpoints folder CHECKPOINTS_MARKER. Staging folders and temp
# files carry the PID of the process that made them, so a later run can tell a killed writer's
# leftovers from a live writer's work.

RUN_MARKER = ".sentitune-run"
CHECKPOINTS_DIR = "checkpoints"
CHECKPOINTS_MARKER = ".sentitune-checkpoints"
LOCK_FILE = ".sentitune.lock"
EVALUATIONS_DIR = "evaluations"
ANALYSIS_DIR = "analysis"
EMBEDDINGS_DIR = "embeddings"
TENSORBOARD_DIR = "tensorboard"
RUN_ENTRIES = {
    RUN_MARKER,
    LOCK_FILE,
    CONFIG_FILE,
    LABELS_FILE,
    METRICS_FILE,
    PREDICTIONS_FILE,
    HISTORY_FILE,
    PROGRESS_FILE,
    THRESHOLDS_FILE,
    CALIBRATION_FILE,
    MODEL_DIR,
    EVALUATIONS_DIR,
    ANALYSIS_DIR,
    EMBEDDINGS_DIR,
    TENSORBOARD_DIR,
}
"""Everything sentitune writes at the top of a run folder (checkpoints/ counts only when it is its own)."""


def write_marker(folder: str | Path, name: str = RUN_MARKER) -> None:
    """Creates `folder` (if needed) and the marker that says sentitune made it; an existing marker is
    kept. A plain write (no temp file, no fsync): the marker is empty-safe, only its existence counts."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        handle = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        return
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        out.write(json.dumps({"created_by": "sentitune", "pid": os.getpid()}) + "\n")


def is_run_folder(folder: str | Path) -> bool:
    """True for a folder sentitune made for a run: it has RUN_MARKER, or (runs from before the marker)
    config.yaml with metrics.json or labels.json, or only the metrics.json stub `compare` writes for a
    run that died before it started."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    if (folder / RUN_MARKER).is_file():
        return True
    if (folder / CONFIG_FILE).is_file():
        return (folder / METRICS_FILE).is_file() or (folder / LABELS_FILE).is_file()
    entries = [p.name for p in folder.iterdir()]
    return entries == [METRICS_FILE] and read_status(folder) == "failed"


def owns_checkpoints(run_dir: str | Path) -> bool:
    """Whether `<run_dir>/checkpoints` is sentitune's to write, rotate and remove: it carries
    CHECKPOINTS_MARKER, or it is missing or empty, or (a run folder from before the markers) it holds
    nothing but the Trainer's checkpoint-N folders."""
    run_dir = Path(run_dir)
    folder = run_dir / CHECKPOINTS_DIR
    if not folder.exists():
        return True
    if not folder.is_dir():
        return False
    if (folder / CHECKPOINTS_MARKER).is_file():
        return True
    entries = list(folder.iterdir())
    if not entries:
        return True
    legacy = not (run_dir / RUN_MARKER).exists()
    return legacy and all(p.is_dir() and re.fullmatch(r"checkpoint-\d+", p.name) for p in entries)


def foreign_entries(run_dir: str | Path) -> list[str]:
    """Top-level entries of a run folder that sentitune did not write (a user's notes, data files, a
    checkpoints/ folder of their own); --overwrite refuses to delete a folder holding any."""
    run_dir = Path(run_dir)
    foreign = []
    for path in sorted(run_dir.iterdir()):
        name = path.name
        if name == CHECKPOINTS_DIR:
            if not owns_checkpoints(run_dir):
                foreign.append(name)
        elif name not in RUN_ENTRIES and not (name.startswith(".") and name.endswith(".tmp")):
            foreign.append(name)
    return foreign


def check_output_dir(folder: str | Path, overwrite: bool, ours, what: str, flag: str = "--output-dir") -> None:
    """The one check before a command writes a folder of its own (train, export, shrink, pretrain):
    a non-empty `folder` is refused unless `overwrite`, and even then unless `ours(folder)` says it is
    that command's own earlier output (`what` names such a folder). Nothing else is ever replaced."""
    folder = Path(folder)
    check_output_path(folder, flag)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        if not overwrite:
            raise RunFolderError(f"{folder}: not empty; pass --overwrite to replace it or pick another {flag}")
        if not folder.is_dir() or not ours(folder):
            raise RunFolderError(
                f"{folder}: not empty and not {what}; sentitune never replaces a folder it did "
                f"not create, so pick another {flag}"
            )


def check_foreign_files(folder: str | Path, names, ours: bool, flag: str = "--output-dir") -> None:
    """The check before evaluate, analyze or compare add their files to a folder the user named: unless
    it is that command's own earlier output (`ours`), a run folder is refused, and so is a folder that
    already holds one of `names` (a user's predictions.csv or results.csv), which would be replaced."""
    folder = Path(folder)
    if ours or not folder.is_dir():
        return
    if is_run_folder(folder):
        raise RunFolderError(f"{folder}: is a run folder; pick another {flag} (a new or empty folder)")
    taken = next((name for name in names if (folder / name).exists() or (folder / name).is_symlink()), None)
    if taken is not None:
        raise RunFolderError(
            f"{folder / taken}: already there and not written by sentitune; sentitune never replaces a file "
            f"it did not write, so pick another {flag} (a new or empty folder)"
        )


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def staging_path(target: str | Path, pid: int | None = None) -> Path:
    """`.<name>.staging-<pid>` beside `target`: where a replacement is built before swap_in."""
    target = Path(target)
    return target.with_name(f".{target.name}.staging-{os.getpid() if pid is None else pid}")


def sweep_leftovers(target: str | Path) -> list[Path]:
    """Removes what killed writers of `target` left, and returns what it removed: temp files
    (`.<name>.<pid>.<random>.tmp`) and staging folders (`.<name>.staging-<pid>[-<random>]`) of PIDs
    no longer alive, and its lock file when nobody holds it. A replaced folder renamed aside
    (`.<name>.old-<pid>`) by a writer killed before it could finish the swap is renamed back when
    `target` is missing, else removed. Leftovers of a live PID are never touched."""
    target = Path(target)
    parent = target.parent
    prefix = f".{target.name}."
    try:
        names = [n for n in os.listdir(parent) if n.startswith(prefix)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    removed = [lock_file(target)] if _remove_stale_lock(lock_file(target)) else []
    pattern = re.compile(
        re.escape(prefix) + r"(?:(?P<tmp_pid>\d+)\.[^./]+\.tmp"
        r"|(?P<kind>staging|old)-(?P<pid>\d+)(?:-[^/]*)?)"
    )
    for name in names:
        match = pattern.fullmatch(name)
        if match is None or _pid_alive(int(match["tmp_pid"] or match["pid"])):
            continue
        path = parent / name
        try:
            if match["tmp_pid"]:
                path.unlink()
            elif match["kind"] == "old" and not target.exists():
                path.rename(target)
                continue
            else:
                shutil.rmtree(path)
        except FileNotFoundError:
            continue  # another process swept it first
        removed.append(path)
    return removed


def _exchange(a: Path, b: Path) -> bool:
    """Swaps two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    if sys.platform != "linux":
        return False
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def swap_in(staging: str | Path, target: str | Path) -> None:
    """Puts the finished folder `staging` at `target`. An earlier `target` is swapped out in one step
    where the OS can (else renamed aside to `.<name>.old-<pid>`) and removed only once the new folder
    is in place, so a kill at any moment leaves the old folder or the new one; sweep_leftovers
    restores or removes what such a kill left."""
    staging, target = Path(staging), Path(target)
    if not target.exists():
        staging.rename(target)
        return
    if _exchange(staging, target):
        shutil.rmtree(staging, ignore_errors=True)  # now holds the old folder
        return
    aside = target.with_name(f".{target.name}.old-{os.getpid()}")
    if aside.exists():
        shutil.rmtree(aside)
    target.rename(aside)
    try:
        staging.rename(target)
    except BaseException:
        aside.rename(target)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def lock_file(path: str | Path) -> Path:
    """The lock file of an output: inside it for a folder, `.<name>.lock` beside it for a file."""
    path = Path(path)
    return path / LOCK_FILE if path.is_dir() else path.with_name(f".{path.name}.lock")


def _remove_stale_lock(lock: Path) -> bool:
    """Removes a lock file nobody holds (its holder was killed; flock died with it)."""
    import fcntl

    try:
        handle = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        current, mine = os.stat(lock), os.fstat(handle)
        if (current.st_dev, current.st_ino) != (mine.st_dev, mine.st_ino):
            return False
        os.unlink(lock)  # a writer that opened it meanwhile finds another inode and retries
        return True
    except OSError:  # held (BlockingIOError), or gone
        return False
    finally:
        os.close(handle)


def _read_holder(handle: int) -> str:
    for _ in range(20):  # the holder writes its PID right after it takes the lock
        text = os.pread(handle, 64, 0).decode("ascii", "replace").strip()
        if text:
            return text
        time.sleep(0.025)
    return "unknown"


def in_use(path: str | Path, holder: int | str) -> OutputInUse:
    """The one-line refusal for an output another process writes."""
    return OutputInUse(f"{path}: in use by another sentitune process (PID {holder}); wait for it to finish or stop it")


def lock_holder(path: str | Path) -> int | None:
    """The PID holding the writer lock of `path` (a folder or a file), or None when nobody holds it.
    Only looks: creates nothing."""
    import fcntl

    try:
        handle = os.open(lock_file(path), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(handle)
            return int(holder) if holder.isdigit() else -1
        fcntl.flock(handle, fcntl.LOCK_UN)
        return None
    finally:
        os.close(handle)


@contextmanager
def exclusive_lock(path: str | Path):
    """Holds the one-writer lock of `path` for the block: a run or output folder (the lock file is
    inside it) or an output file (`.<name>.lock` beside it). A second writer is refused at once with
    OutputInUse naming the holder's PID. The lock is flock(2): it dies with its process, so a killed
    holder never leaves it stuck; the file is removed when the block ends."""
    import fcntl

    path = Path(path)
    lock = lock_file(path)
    with writing(lock):
        lock.parent.mkdir(parents=True, exist_ok=True)
        while True:
            handle = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(handle)
                os.close(handle)
                raise in_use(path, holder) from None
            except BaseException:
                os.close(handle)
                raise
            try:
                current = os.stat(lock)
                mine = os.fstat(handle)
                if (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino):
                    break
            except FileNotFoundError:
                pass
            os.close(handle)  # the previous holder removed the file between our open and flock: retry
        try:
            os.ftruncate(handle, 0)
            os.pwrite(handle, f"{os.getpid()}\n".encode("ascii"), 0)
        except BaseException:
            os.close(handle)
            raise
    try:
        yield lock
    finally:
        try:
            current = os.stat(lock)
            mine = os.fstat(handle)
            if (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino):
                os.unlink(lock)
        except OSError:
            pass
        os.close(handle)
