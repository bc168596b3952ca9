"""`predict --engine ray`: CSV/TSV/JSONL/Parquet shards -> Ray Data -> an actor pool of Predictors ->
sharded JSONL or Parquet, one row per input row, in the row schema of single-process `predict`.

Each actor loads the run or export once (`PredictActor.__init__`) and then scores batch after batch;
Ray Data restarts an actor that dies and retries the batch it held (its actor pools default to
max_restarts=-1 and max_task_retries=-1),
and a batch's rows reach the writer only when the batch finished, so a lost worker neither drops nor
repeats rows. The output is written next to `--output` first and renamed into place at the end: a
folder named by --output holds either nothing or every row.

Example:
    >>> predict_with_ray("runs/sst2-lora", ["reviews/*.parquet"], "preds/", concurrency=4)  # doctest: +SKIP
    {'rows': 50000000, 'files': [...], ...}
"""

from __future__ import annotations

import glob
import json
import shutil
import socket
import time
import uuid
from pathlib import Path

from sentitune import results
from sentitune.errors import DataError, OutputNotWritable, RunFolderError
from sentitune.runtime import portable_path
from sentitune.scale import require


MANIFEST = "sentitune-predict.json"
"""Written last into every output folder: what was scored, by which model, into which files."""
OUTPUT_FORMATS = ("jsonl", "parquet")
SUFFIX_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
IO_CPUS = 0
"""CPUs a read or write task reserves. Reading and writing shards is brief and I/O-bound; a task that
reserved a core could never start while the actors hold every core (a 2-CPU cluster with 2 actors
deadlocks: the actors wait for blocks that no read task may run to produce)."""
ADDRESS_TIMEOUT_S = 5.0
"""How long `--address` may take to accept a TCP connection before it is reported unreachable."""


# ---- inputs ---------------------------------------------------------------------------------------


def expand_inputs(patterns: list[str]) -> list[Path]:
    """The files named by paths, globs or folders (a folder: its files with a known suffix), sorted and
    deduplicated; a pattern that matches nothing, or a file of unknown format, is one DataError line."""
    found: list[Path] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            matches = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SUFFIX_FORMATS)
            if not matches:
                raise DataError(f"{pattern}: folder holds no {'/'.join(sorted(set(SUFFIX_FORMATS.values())))} files")
        else:
            matches = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
            if not matches:
                raise DataError(f"{pattern}: --input matches no file")
        for match in matches:
            if match.suffix.lower() not in SUFFIX_FORMATS:
                raise DataError(
                    f"{match}: unknown input format {match.suffix or '(no suffix)'!r}; expected one of "
                    f"{', '.join(sorted(SUFFIX_FORMATS))}"
                )
            if match.resolve() not in {p.resolve() for p in found}:
                found.append(match)
    return found


def default_text_column(fmt: str) -> str:
    """The text column single-process `predict` reads: `sentence` in a (GLUE) TSV, else `text`."""
    return "sentence" if fmt == "tsv" else "text"


def read_texts_dataset(files: list[Path], text_column: str | None, blocks: int):
    """One Ray Dataset with a single `text` column over every file, split into at least `blocks`
    blocks so that one large file still feeds every actor. Files are parsed as `predict` parses them:
    TSV without quoting (GLUE), CSV per RFC 4180, texts kept as strings (a review "10" stays "10")."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import ray.data

    by_format: dict[str, list[str]] = {}
    for path in files:
        by_format.setdefault(SUFFIX_FORMATS[path.suffix.lower()], []).append(str(path))
    parts = []
    for fmt, paths in by_format.items():
        column = text_column or default_text_column(fmt)
        per_format = max(1, blocks * len(paths) // len(files))
        if fmt in ("csv", "tsv"):
            parse = pacsv.ParseOptions(delimiter="\t", quote_char=False) if fmt == "tsv" else pacsv.ParseOptions()
            convert = pacsv.ConvertOptions(
                column_types={column: pa.string()}, strings_can_be_null=False, include_columns=[column]
            )
            ds = ray.data.read_csv(
                paths, parse_options=parse, convert_options=convert, override_num_blocks=per_format, num_cpus=IO_CPUS
            )
        elif fmt == "jsonl":
            # pyarrow's reader (Arrow blocks, as the CSV and Parquet parts give); lines=True would read
            # with pandas, and an actor refuses a bundle that mixes pandas and Arrow blocks.
            ds = ray.data.read_json(paths, override_num_blocks=per_format, num_cpus=IO_CPUS)
        else:
            # One block per row group, read by a task that reserves no CPU: Ray's read_parquet first
            # lists files in a task that needs a whole CPU, which never starts while actors hold them all.
            import pyarrow.parquet as pq

            groups = [{"path": p, "group": g} for p in paths for g in range(pq.ParquetFile(p).num_row_groups)]
            ds = ray.data.from_items(groups, override_num_blocks=len(groups)).map_batches(
                read_row_groups, fn_kwargs={"column": column}, batch_size=None, num_cpus=IO_CPUS, batch_format="pyarrow"
            )
            parts.append(ds)
            continue
        ds = ds.select_columns([column], num_cpus=IO_CPUS)
        if column != "text":
            ds = ds.rename_columns({column: "text"}, num_cpus=IO_CPUS)
        parts.append(ds)
    return parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])


def read_row_groups(batch, column: str):
    """Parquet row groups named by (`path`, `group`) rows -> one table of their `column`, as `text`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = [
        pq.ParquetFile(path).read_row_group(int(group), columns=[column]).rename_columns(["text"])
        for path, group in zip(batch.column("path").to_pylist(), batch.column("group").to_pylist())
    ]
    return pa.concat_tables(tables).cast(pa.schema([("text", pa.string())]))


def check_text_columns(files: list[Path], text_column: str | None) -> None:
    """Each file's header names the text column: checked on the driver, before any actor loads a
    model, so a wrong --text-column is one line naming the file and its columns."""
    import pyarrow.parquet as pq

    for path in files:
        fmt = SUFFIX_FORMATS[path.suffix.lower()]
        column = text_column or default_text_column(fmt)
        if fmt == "parquet":
            try:
                columns = pq.read_schema(path).names
            except Exception as exc:  # pyarrow's ArrowInvalid and friends: not a Parquet file
                raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
        elif fmt == "jsonl":
            columns = None  # JSON Lines has no header; a missing key fails in the reader
        else:
            with open(path, encoding="utf-8-sig", errors="replace") as handle:
                header = handle.readline().rstrip("\r\n")
            columns = [c.strip().strip('"') for c in header.split("\t" if fmt == "tsv" else ",")]
        if columns is not None and column not in columns:
            raise DataError(f"{path}: no column {column!r}; columns are {columns} (set --text-column)")


# ---- the actor ------------------------------------------------------------------------------------


class PredictActor:
    """One model per actor: loaded once in `__init__`, then called with batch after batch of texts.

    `output_format` "jsonl" returns each row as its JSON line (the exact bytes single-process predict
    writes); "parquet" returns the rows as columns."""

    def __init__(self, model: str, output_format: str, batch_size: int, load_kwargs: dict):
        from sentitune.inference import Predictor

        self.predictor = Predictor.load(model, **load_kwargs)
        self.output_format = output_format
        self.batch_size = batch_size

    def __call__(self, batch):
        import pyarrow as pa

        texts = ["" if text is None else str(text) for text in batch.column("text").to_pylist()]
        probabilities = self.predictor.predict_proba(texts, self.batch_size)
        rows = [self.predictor.row(text, p) for text, p in zip(texts, probabilities)]
        if self.output_format == "jsonl":
            return pa.table({"json": pa.array([json.dumps(row, ensure_ascii=False) for row in rows], pa.string())})
        return pa.Table.from_pylist(rows)


def _jsonl_datasink(path: str):
    """A Ray Data sink writing each block's `json` column as JSON Lines (one file per block)."""
    from ray.data.datasource import BlockBasedFileDatasink

    class JsonLinesSink(BlockBasedFileDatasink):
        def __init__(self, folder: str):
            super().__init__(folder, file_format="jsonl")

        def write_block_to_file(self, block, file) -> None:
            lines = block.to_arrow().column("json").to_pylist()
            if lines:
                file.write(("\n".join(lines) + "\n").encode("utf-8"))

    return JsonLinesSink(path)


# ---- the cluster ----------------------------------------------------------------------------------


def check_address(address: str, timeout_s: float = ADDRESS_TIMEOUT_S) -> None:
    """An unreachable `--address` in seconds, not after Ray's own minute of retries. `auto` and
    `local` are left to Ray; HOST:PORT and ray://HOST:PORT must accept a TCP connection."""
    if address in ("auto", "local"):
        return
    target = address.split("://", 1)[-1].rstrip("/")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise DataError(f"--address {address!r}: expected HOST:PORT, ray://HOST:PORT or auto")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        raise DataError(
            f"--address {address}: no Ray cluster answers there ({exc.strerror or exc}); start one with "
            "`ray start --head` or leave out --address for a local cluster"
        ) from None


def connect(address: str | None, num_cpus: int | None = None):
    """Joins the cluster at `address`, or starts a local one (no dashboard) when it is None. Returns
    whether this call started Ray (and so should shut it down)."""
    ray = require("ray", "--engine ray")
    import logging

    # Ray Data logs a progress table every few seconds at INFO; the CLI prints its own one-line summary.
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    require("ray.data", "--engine ray").DataContext.get_current().enable_progress_bars = False
    if ray.is_initialized():
        return False
    if address:
        check_address(address)
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    return True


# ---- the output folder ----------------------------------------------------------------------------


def is_predict_output(folder: str | Path) -> bool:
    """A folder `predict --engine ray` wrote (its manifest says so): the only kind --overwrite replaces."""
    path = Path(folder) / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("created_by") == "sentitune"
    except (OSError, ValueError, AttributeError):
        return False


def check_output_folder(output: str | Path, overwrite: bool, inputs: list[Path], model: str) -> None:
    """Refuses an --output that holds anything but an earlier result of this command (and that only
    with --overwrite), that holds or is one of the inputs, or that lies inside the model or a run folder."""
    output = Path(output)
    target = output.resolve()
    for path in inputs:
        resolved = path.resolve()
        if resolved == target or target in resolved.parents:
            raise OutputNotWritable(
                f"{output}: holds the --input file {path}; write the predictions to another --output"
            )
    model_dir = Path(model).resolve()
    for folder in (target, *target.parents):
        if folder == model_dir or results.is_run_folder(folder):
            what = "the --model folder" if folder == model_dir else "a run folder"
            raise OutputNotWritable(
                f"{output}: inside {what} ({folder}); sentitune never writes predictions into a model or run "
                "folder, so pick another --output"
            )
    results.check_output_dir(
        output, overwrite, is_predict_output, "an earlier `predict --engine ray` output", "--output"
    )


def count_rows(folder: Path, output_format: str) -> tuple[list[str], int]:
    """(file names, rows) of the shards in `folder`."""
    files = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix == f".{output_format}")
    if output_format == "parquet":
        import pyarrow.parquet as pq

        rows = sum(pq.ParquetFile(folder / name).metadata.num_rows for name in files)
    else:
        rows = 0
        for name in files:
            with open(folder / name, "rb") as handle:
                rows += sum(1 for _ in handle)
    return files, rows


# ---- the job --------------------------------------------------------------------------------------


def predict_with_ray(
    model: str,
    inputs: list[str],
    output: str | Path,
    *,
    text_column: str | None = None,
    output_format: str = "jsonl",
    address: str | None = None,
    concurrency: int = 2,
    batch_size: int = 64,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    cluster_cpus: int | None = None,
    overwrite: bool = False,
    load_kwargs: dict | None = None,
    actor_class: type = PredictActor,
) -> dict:
    """Scores every row of `inputs` (paths, globs or folders) with `concurrency` actors, each holding
    one Predictor of `model`, and writes `output`/ as JSONL or Parquet shards plus MANIFEST.

    Args:
        address: an existing Ray cluster (HOST:PORT, ray://HOST:PORT, auto); default a local one
            with `cluster_cpus` CPUs (default all).
        batch_size: texts per actor call (and per model call inside it).
        num_cpus, num_gpus: resources each actor reserves.
        actor_class: the callable class the pool runs (tests pass a subclass that dies once).

    Returns:
        The manifest: rows, files, model, inputs, seconds, sentences_per_second, engine settings.
    """
    if output_format not in OUTPUT_FORMATS:
        raise DataError(f"--output-format {output_format!r}: expected one of {', '.join(OUTPUT_FORMATS)}")
    for flag, value in (("--concurrency", concurrency), ("--batch-size", batch_size)):
        if value < 1:
            raise DataError(f"{flag} must be >= 1, got {value}")
    if num_cpus < 0 or num_gpus < 0:
        raise DataError(f"--num-cpus and --num-gpus must be >= 0, got {num_cpus} and {num_gpus}")
    files = expand_inputs(inputs)
    check_text_columns(files, text_column)
    check_output_folder(output, overwrite, files, model)
    if not Path(model).exists():
        raise RunFolderError(f"{model}: no such run or export folder")
    output = Path(output)
    started = connect(address, cluster_cpus)
    import ray.data

    staging = output.parent / f".{output.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        start = time.perf_counter()
        ds = read_texts_dataset(files, text_column, blocks=concurrency * 4)
        predicted = ds.map_batches(
            actor_class,
            fn_constructor_kwargs={
                "model": str(model),
                "output_format": output_format,
                "batch_size": batch_size,
                "load_kwargs": load_kwargs or {},
            },
            batch_size=batch_size,
            compute=ray.data.ActorPoolStrategy(size=concurrency),  # a fixed pool of this many actors
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            batch_format="pyarrow",
        )
        staging.mkdir(parents=True)
        if output_format == "jsonl":
            predicted.write_datasink(_jsonl_datasink(str(staging)), ray_remote_args={"num_cpus": IO_CPUS})
        else:
            predicted.write_parquet(str(staging), ray_remote_args={"num_cpus": IO_CPUS})
        seconds = time.perf_counter() - start
        names, rows = count_rows(staging, output_format)
        manifest = {
            "created_by": "sentitune",
            "engine": "ray",
            "model": portable_path(str(model)),
            "inputs": [portable_path(str(p)) for p in files],
            "output_format": output_format,
            "files": names,
            "rows": rows,
            "seconds": round(seconds, 3),
            "sentences_per_second": round(rows / seconds, 2) if seconds > 0 else None,
            "concurrency": concurrency,
            "batch_size": batch_size,
            "num_cpus_per_actor": num_cpus,
            "num_gpus_per_actor": num_gpus,
        }
        results.atomic_write_json(staging / MANIFEST, manifest)
        if output.exists():  # check_output_folder allowed it: empty, or our own earlier output with --overwrite
            shutil.rmtree(output)
        staging.rename(output)
        return manifest
    except Exception as exc:
        shutil.rmtree(staging, ignore_errors=True)
        mapped = _user_error(exc)
        if mapped is exc:
            raise
        raise mapped from None
    finally:
        if started:
            require("ray", "--engine ray").shutdown()


def _user_error(exc: Exception) -> Exception:
    """A DataError raised inside a Ray task arrives wrapped (RayTaskError, UserCodeException); its
    one line is unwrapped so the CLI prints it as it would for single-process predict."""
    from sentitune.errors import USER_ERRORS

    seen = exc
    for _ in range(8):
        if isinstance(seen, USER_ERRORS):
            return seen
        cause = getattr(seen, "cause", None) or seen.__cause__
        if cause is None:
            break
        seen = cause
    text = str(exc)
    if "pyarrow" in text.lower() or "ArrowInvalid" in text:
        return DataError(f"cannot read an --input file: {text.strip().splitlines()[-1][:300]}")
    return exc
