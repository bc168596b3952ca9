"""Data: sources (hub, GLUE TSV, IMDB CSV, any CSV/TSV/JSONL) -> labelled splits -> tokenised datasets.

Splits are always train / validation / test:
  * validation is a stratified, seeded slice carved from train and used only for model selection;
  * test is what results report: GLUE SST-2's dev split (its test labels are hidden), IMDB's test split,
    or the user's test file.

Example:
    >>> splits = load_splits(DataConfig(dataset="sst2", data_dir="../shared/data"))  # doctest: +SKIP
    >>> len(splits.test), splits.label_names  # doctest: +SKIP
    (872, ['negative', 'positive'])
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator

import numpy as np

from sentitune.config import DataConfig
from sentitune.errors import DataError, quote, read_text
from sentitune.runtime import DATA_DIR_ENV


SENTIMENT_NAMES = ["negative", "positive"]


@dataclass
class Split:
    texts: list[str]
    labels: list
    """Class ids; for multi-label data, one 0/1 row of length K (a multi-hot vector) per text."""

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices) -> "Split":
        return Split([self.texts[i] for i in indices], [self.labels[i] for i in indices])


@dataclass
class DatasetSplits:
    train: Split
    validation: Split
    test: Split
    label_names: list[str]
    source: str
    """Where the data came from (paths or hub id), recorded in the run folder."""
    notes: dict[str, int] = field(default_factory=dict)
    """Counts of rows dropped or changed while loading (empty texts, duplicates, ...)."""
    evaluated_split: str = "test"
    """What `test` holds: `test`, or `validation` when the splits were loaded without the test split
    (load_splits(with_test=False): a tuning trial scores on the validation slice and never reads test)."""
    carved: dict | None = None
    """How a test split was carved from data that had none (source, size, seed, the rows taken), so
    the split can be checked and rebuilt; None when the data came with its test split."""


@dataclass
class RawTable:
    """Rows read from one file before labels are mapped to ids."""

    path: str
    texts: list[str]
    labels: list[str]
    lines: list[int]
    """1-based line number of each row in the file, for error messages."""
    label_column: str
    dropped_empty: int = 0
    duplicates: int = 0
    label_names: list[str] | None = None
    """Class names in id order when the source declares them (a hub dataset's ClassLabel)."""


# ---- reading files ----------------------------------------------------------------------------


def open_binary(path: str | Path):
    """Opens a data file for reading, with one-line errors for the usual ways that fails."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, expected a CSV/TSV/JSONL file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None


def _decode(path: Path) -> str:
    return read_text(path, DataError, "CSV/TSV/JSONL file")  # utf-8-sig: a BOM is dropped


def parse_jsonl_line(path, number: int, line: str) -> dict | None:
    """One JSONL line -> its object (None for a blank line), or a DataError naming line and column."""
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: line {number}, column {exc.colno}: invalid JSON ({exc.msg})") from None
    except (RecursionError, ValueError) as exc:  # nesting too deep, integers over 4300 digits
        raise DataError(f"{path}: line {number}: unreadable JSON ({str(exc).split(';')[0]})") from None
    if not isinstance(record, dict):
        raise DataError(f"{path}: line {number}: expected a JSON object, got {type(record).__name__}")
    return record


def json_array_records(path, content: str) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each element of a file holding one JSON array of objects
    (`[{"text": ..., "label": ...}, ...]`), as `.json` exports usually are; JSON Lines files hold one
    object per line instead. Errors name the line and column."""
    decoder = json.JSONDecoder()
    size = len(content)

    def skip(i: int) -> int:
        while i < size and content[i] in " \t\r\n\ufeff":
            i += 1
        return i

    def where(i: int) -> str:
        return f"line {content.count(chr(10), 0, i) + 1}, column {i - (content.rfind(chr(10), 0, i) + 1) + 1}"

    i = skip(content.index("[") + 1)
    if i < size and content[i] == "]":
        raise DataError(f"{path}: the JSON array is empty")
    line, counted = 1, 0
    while True:
        line += content.count("\n", counted, i)
        counted = i
        try:
            record, end = decoder.raw_decode(content, i)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {exc.lineno}, column {exc.colno}: invalid JSON ({exc.msg})") from None
        except (RecursionError, ValueError) as exc:  # nesting too deep, integers over 4300 digits
            raise DataError(f"{path}: line {line}: unreadable JSON ({str(exc).split(';')[0]})") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}: line {line}: expected a JSON object in the array, got {type(record).__name__}")
        yield line, record
        i = skip(end)
        if i < size and content[i] == ",":
            i = skip(i + 1)
            continue
        if i < size and content[i] == "]":
            if content[i + 1 :].strip():
                raise DataError(f"{path}: {where(skip(i + 1))}: text after the end of the JSON array")
            return
        raise DataError(f"{path}: {where(i)}: expected ',' or ']' in the JSON array")


def file_format(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix in (".tsv", ".tab"):
        return "tsv"
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    raise DataError(f"{path}: unknown file type {suffix or '(none)'}; use .csv, .tsv or .jsonl")


def iter_records(path: str | Path, text: str | None = None):
    """Yields (line_number, record dict) from a CSV/TSV/JSONL file; `text` replaces reading `path`.

    TSV follows GLUE: tab-separated with no quoting, so quotes inside sentences are literal.
    CSV follows RFC 4180, so quoted fields may hold commas and newlines.
    """
    path = Path(path)
    fmt = file_format(path)
    content = _decode(path) if text is None else text
    if not content.strip():
        raise DataError(f"{path}: file is empty")
    if fmt == "jsonl":
        if content.lstrip("\ufeff \t\r\n").startswith("["):  # one JSON array of objects, not JSON Lines
            yield from json_array_records(path, content)
            return
        # Not splitlines(): it also breaks at U+2028, U+0085 and friends, which JSON strings may hold raw.
        for number, line in enumerate(content.split("\n"), start=1):
            record = parse_jsonl_line(path, number, line)
            if record is not None:
                yield number, record
        return
    for header, line, fields in checked_csv_rows(path, io.StringIO(content, newline=""), fmt):
        # Missing trailing columns read as None, as in csv.DictReader.
        yield line, dict(zip(header, fields + [None] * (len(header) - len(fields))))


def checked_csv_rows(name, lines, fmt: str) -> Iterator[tuple[list[str], int, list[str]]]:
    """(header, line number, fields) for each non-empty row of a CSV (RFC 4180) or TSV (GLUE: no quoting).

    The one place rows are checked, for the table loader and the streaming reader alike: a header that
    names a column twice, a quote that never closes, non-empty fields beyond the header, csv's own
    errors, each a one-line DataError naming the line. The line number is where the row ends: after a
    multi-line field, that is where its later columns are.
    """
    # csv refuses fields over 128 KiB by default; a long review is data to truncate, not an error, and
    # the file's own size bounds the field.
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    reader = csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE) if fmt == "tsv" else csv.reader(lines)
    try:
        try:
            header = [column.strip() for column in next(reader)]
        except StopIteration:
            raise DataError(f"{name}: file is empty") from None
        if not header:
            raise DataError(f"{name}: no header row")
        _refuse_duplicate_columns(name, header)
        for fields in reader:
            if not fields:
                continue
            if len(fields) < len(header) and any("\n" in field for field in fields):
                # A row that swallowed later lines and still lacks columns: a quote in it never closed.
                raise _unclosed_quote(name, reader.line_num, fields)
            extra = [field for field in fields[len(header) :] if field.strip()]
            if extra:  # data that would silently vanish
                raise DataError(
                    f"{name}: line {reader.line_num}: {len(fields)} fields but the header names "
                    f"{len(header)}; an unquoted {'tab' if fmt == 'tsv' else 'comma'} in a text? "
                    f"(extra: {extra[0][:40]!r})"
                )
            yield header, reader.line_num, fields
    except csv.Error as exc:
        raise DataError(f"{name}: line {reader.line_num}: {exc}") from None


def _refuse_duplicate_columns(path, header: list[str]) -> None:
    # A row maps names to values, so a repeated name would silently keep only its last column.
    repeated = [name for name, count in Counter(header).items() if count > 1]
    if repeated:
        raise DataError(
            f"{path}: line 1: column {quote(repeated[0])} appears {header.count(repeated[0])} times in the "
            "header; rename or drop the extra one"
        )


def _unclosed_quote(path, last_line: int, fields: list[str]) -> DataError:
    # The row ran to the end of the file, whose last newline it holds with no line after it; name the
    # line where the row starts, not the last line of the file.
    spanned = sum(field.count("\n") for field in fields)
    start = last_line - spanned + any(field.endswith("\n") for field in fields)
    return DataError(
        f"{path}: line {start}: a quote opened in this row is never closed (the row runs to line "
        f'{last_line}); close it or escape it as ""'
    )


def _column_hint(wanted: str, columns: list[str]) -> str:
    """Why a column may be missing: another case (`Text`), or a file split by another character (an
    Excel export with ';', a TSV named .csv), which reads as one column."""
    same = next((c for c in columns if isinstance(c, str) and c.casefold() == wanted.casefold()), None)
    if same is not None:
        return f" (there is {quote(same)}: column names are case-sensitive)"
    if len(columns) == 1 and isinstance(columns[0], str):
        separator = next((s for s in (";", "\t", "|", ",") if s in columns[0]), None)
        if separator is not None:
            return f" (one column: the header is split by {separator!r}; .csv files are read with ',', .tsv with tabs)"
    return ""


def read_table(path: str | Path, text_column: str, label_column: str | None) -> RawTable:
    """Reads texts (and labels unless `label_column` is None) from one file.

    Whitespace-only texts are dropped and counted; exact duplicate rows are counted, not removed
    (removing them would change the standard splits).
    """
    path = Path(path)
    if label_column and text_column == label_column:
        # The model would learn each label from the label itself: a perfect score that means nothing.
        raise DataError(
            f"{path}: the text column and the label column are both {quote(text_column)}; "
            "point --text-column or --label-column at another column"
        )
    table = RawTable(str(path), [], [], [], label_column or "")
    seen: set[tuple[str, str]] = set()
    header_checked = False
    for line, record in iter_records(path):
        if not header_checked:
            columns = list(record)
            for wanted in [text_column] + ([label_column] if label_column else []):
                if wanted not in record:
                    raise DataError(
                        f"{path}: line 1: no column {quote(wanted)}; columns are {quote(columns, 200)}"
                        + _column_hint(wanted, columns)
                    )
            header_checked = True
        text = record.get(text_column)
        if text is None:
            raise DataError(f"{path}: line {line}, column {text_column!r}: missing value")
        text = str(text).strip()
        if is_blank(text):
            table.dropped_empty += 1
            continue
        _check_unicode(path, line, text_column, text)
        label = ""
        if label_column:
            raw = record.get(label_column)
            if raw is None or (isinstance(raw, str) and not raw.strip()):
                raise DataError(f"{path}: line {line}, column {label_column!r}: empty label")
            if isinstance(raw, (list, dict)):
                raise DataError(
                    f"{path}: line {line}, column {label_column!r}: label {quote(raw)} is not a single value"
                )
            label = str(raw).strip()
            _check_unicode(path, line, label_column, label)
        key = (text, label)
        if key in seen:
            table.duplicates += 1
        seen.add(key)
        table.texts.append(text)
        table.labels.append(label)
        table.lines.append(line)
    if not header_checked:
        raise DataError(f"{path}: header only, no data rows")
    if not table.texts:
        raise DataError(f"{path}: every text is empty ({table.dropped_empty} rows)")
    return table


def is_blank(text: str) -> bool:
    """True when `text` has no visible character: only whitespace, control or format characters (NUL,
    zero-width spaces, byte-order marks, no-break spaces). Such a text is empty to a reader, and a model
    asked about it still answers, confidently, about nothing.

    Example:
        >>> is_blank(" \\u200b\\u00a0\\x00"), is_blank("ok\\u200b")
        (True, False)
    """
    import unicodedata

    return all(c.isspace() or unicodedata.category(c) in ("Cc", "Cf", "Zs", "Zl", "Zp") for c in text)


def is_unicode(text: str) -> bool:
    """False for text holding a lone surrogate: JSON can escape one ("\\ud800"), and no tokenizer or
    UTF-8 writer accepts it.

    Example:
        >>> is_unicode("café"), is_unicode("\\ud800")
        (True, False)
    """
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_unicode(path: Path, line: int, column: str, value: str) -> None:
    if not is_unicode(value):
        surrogate = next(ch for ch in value if "\ud800" <= ch <= "\udfff")
        raise DataError(f"{path}: line {line}, column {column!r}: {surrogate!r} is a lone surrogate, not a character")


# ---- labels -----------------------------------------------------------------------------------


def _as_int(value: str) -> int | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return int(number) if number.is_integer() else None


MISSING_VALUE_LABELS = {"none", "null", "nan"}
"""Labels that are a missing value written out as text (Python None, JSON null, pandas NaN); they are
refused as inferred classes. Declared in data.label_names, such a name is a class like any other."""


def infer_label_names(tables: list[RawTable]) -> list[str]:
    """Label names in id order: numbers sorted numerically, otherwise strings sorted.

    Refused, naming the file and line of the culprit: a missing value written as a label ('None',
    'null', 'NaN'), labels that differ only in case ('Positive' and 'positive' would be two
    classes), and a mix of numbers and text (the culprit is the kind fewer rows use).
    """
    first: dict[str, tuple[RawTable, int]] = {}
    counts: Counter = Counter()
    for table in tables:
        for label, line in zip(table.labels, table.lines):
            first.setdefault(label, (table, line))
            counts[label] += 1
    for label, (table, line) in first.items():
        if label.casefold() in MISSING_VALUE_LABELS:
            raise DataError(
                f"{table.path}: line {line}, column {table.label_column!r}: label {quote(label)} is a missing "
                "value written as text, not a class; fix the row, or list it in data.label_names if it is one"
            )
    folded: dict[str, str] = {}
    for label, (table, line) in first.items():  # file order: the later spelling is the odd one
        other = folded.setdefault(label.casefold(), label)
        if other != label:
            other_table, other_line = first[other]
            raise DataError(
                f"{table.path}: line {line}, column {table.label_column!r}: label {quote(label)} differs only "
                f"in case from {quote(other)} ({other_table.path}, line {other_line}); they would be two classes. "
                "Use one spelling, or set data.label_names"
            )
    values = sorted(first)
    numeric = [_as_int(v) for v in values]
    if all(n is not None for n in numeric):
        return [str(n) for n in sorted(set(numeric))]
    if any(n is not None for n in numeric):
        numbers = [v for v, n in zip(values, numeric) if n is not None]
        texts = [v for v, n in zip(values, numeric) if n is None]
        order = list(first)  # labels by first appearance
        rows = {kind: sum(counts[v] for v in group) for kind, group in (("number", numbers), ("text", texts))}
        # The kind fewer rows use is the odd one; on a tie, the kind that appears later.
        later = "text" if order.index(texts[0]) > order.index(numbers[0]) else "number"
        odd = min(rows, key=lambda kind: (rows[kind], kind != later))
        culprit = min(numbers if odd == "number" else texts, key=order.index)
        example = min(texts if odd == "number" else numbers, key=order.index)
        table, line = first[culprit]
        example_table, example_line = first[example]
        raise DataError(
            f"{table.path}: line {line}, column {table.label_column!r}: label {quote(culprit)} is "
            f"{'a number' if odd == 'number' else 'text'} but other labels are "
            f"{'text' if odd == 'number' else 'numbers'} (e.g. {quote(example)} on line {example_line}"
            f"{'' if example_table is table else f' of {example_table.path}'}); use one kind, or set data.label_names"
        )
    return values


def map_labels(table: RawTable, label_names: list[str]) -> list[int]:
    """Label strings -> ids by name; numeric labels also match names like '7' or an id 0..K-1."""
    index = {name: i for i, name in enumerate(label_names)}
    numeric_index = {_as_int(name): i for i, name in enumerate(label_names) if _as_int(name) is not None}
    names_are_numbers = len(numeric_index) == len(label_names)
    ids = []
    for label, line in zip(table.labels, table.lines):
        if label in index:
            ids.append(index[label])
            continue
        number = _as_int(label)
        if number is not None and number in numeric_index:
            ids.append(numeric_index[number])
        elif number is not None and not names_are_numbers and 0 <= number < len(label_names):
            ids.append(number)  # files with 0/1 labels and declared names like negative/positive
        else:
            same = next((name for name in label_names if name.casefold() == label.casefold()), None)
            hint = f" (differs only in case from {quote(same)})" if same is not None else ""
            raise DataError(
                f"{table.path}: line {line}, column {table.label_column!r}: label {quote(label)} is not one of "
                f"{quote(label_names, 200)}{hint}"
            )
    return ids


def read_labelled_file(
    path: str | Path, label_names: list[str], text_column: str | None = None, label_column: str | None = None
) -> tuple[RawTable, list[int]]:
    """A labelled CSV/TSV/JSONL file scored against a trained run (`evaluate`, compare's eval sets):
    its rows and their label ids in `label_names` order. Columns default to `sentence` (TSV, as in
    GLUE) or `text`, and `label`; a label outside `label_names` is one DataError line naming the file,
    the line and the label (map_labels).

    Example:
        >>> table, ids = read_labelled_file("suite.tsv", ["negative", "positive"])  # doctest: +SKIP
    """
    text_column = text_column or ("sentence" if file_format(path) == "tsv" else "text")
    table = read_table(path, text_column, label_column or "label")
    return table, map_labels(table, label_names)


def _exploded(table: RawTable, separator: str) -> RawTable:
    """One row per label of each multi-label cell, so label names are inferred as for single labels."""
    parts = [
        (part.strip(), line)
        for label, line in zip(table.labels, table.lines)
        for part in label.split(separator)
        if part.strip()
    ]
    return RawTable(table.path, [], [p for p, _ in parts], [line for _, line in parts], table.label_column)


def multi_hot(table: RawTable, label_names: list[str], separator: str = "|") -> list[list[int]]:
    """Multi-label cells (`action|comedy`) -> 0/1 rows of length K in `label_names` order.

    Example:
        >>> t = RawTable("f.csv", ["x", "y"], ["b|a", "c"], [2, 3], "genres")
        >>> multi_hot(t, ["a", "b", "c"])
        [[1, 1, 0], [0, 0, 1]]
    """
    index = {name: i for i, name in enumerate(label_names)}
    rows = []
    for label, line in zip(table.labels, table.lines):
        row = [0] * len(label_names)
        parts = [part.strip() for part in label.split(separator) if part.strip()]
        if not parts:
            raise DataError(f"{table.path}: line {line}, column {table.label_column!r}: no label in {quote(label)}")
        for part in parts:
            if part not in index:
                raise DataError(
                    f"{table.path}: line {line}, column {table.label_column!r}: label {quote(part)} is not "
                    f"one of {quote(label_names, 200)}"
                )
            row[index[part]] = 1
        rows.append(row)
    return rows


# ---- sources ----------------------------------------------------------------------------------


def resolve_data_dir(cfg: DataConfig) -> Path | None:
    raw = cfg.data_dir or os.environ.get(DATA_DIR_ENV)
    if not raw:
        return None
    path = Path(raw).expanduser()
    if not path.is_dir():
        source = "data.data_dir" if cfg.data_dir else f"${DATA_DIR_ENV}"
        raise DataError(f"{source}: folder {path} does not exist")
    return path


def _find_pair(root: Path, sub: str, names: tuple[str, str]) -> tuple[Path, Path] | None:
    for folder in (root / sub, root):
        if all((folder / n).exists() for n in names):
            return folder / names[0], folder / names[1]
    return None


def _load_hub(cfg: DataConfig) -> tuple[list[RawTable], str]:
    from sentitune.models import hub_offline_reason

    hub_id, config_name, test_split = {
        "sst2": ("nyu-mll/glue", "sst2", "validation"),
        "imdb": ("stanfordnlp/imdb", None, "test"),
    }[cfg.dataset]
    reason = hub_offline_reason()
    if reason:
        raise DataError(f"dataset {cfg.dataset!r}: no local copy (set --data-dir or ${DATA_DIR_ENV}) and {reason}")
    import datasets

    loaded = datasets.load_dataset(hub_id, config_name)
    text_column = cfg.text_column or ("sentence" if cfg.dataset == "sst2" else "text")
    label_column = cfg.label_column or "label"
    tables = []
    for split in ("train", test_split):
        part = loaded[split]
        tables.append(
            RawTable(
                f"{hub_id}:{split}",
                [t.strip() for t in part[text_column]],
                [str(v) for v in part[label_column]],
                list(range(2, len(part) + 2)),
                label_column,
            )
        )
    return tables, f"hub:{hub_id}" + (f"/{config_name}" if config_name else "")


def _default_names(cfg: DataConfig) -> list[str] | None:
    if cfg.label_names:
        return list(cfg.label_names)
    if cfg.dataset in ("sst2", "imdb") and (cfg.label_column or "label") == "label":
        return list(SENTIMENT_NAMES)
    return None


DATA_FILE_SUFFIXES = (".csv", ".tsv", ".tab", ".jsonl", ".ndjson", ".json")
FOLDER_SPLITS = {"train": ("train",), "test": ("test",), "validation": ("validation", "valid", "dev")}


def _table_subset(table: RawTable, indices) -> RawTable:
    picked = RawTable(table.path, [], [], [], table.label_column, label_names=table.label_names)
    for i in indices:
        picked.texts.append(table.texts[i])
        picked.labels.append(table.labels[i])
        picked.lines.append(table.lines[i])
    return picked


def carve_test(table: RawTable, cfg: DataConfig) -> tuple[RawTable, RawTable, dict]:
    """(train, test, record): a stratified, seeded test slice of data.test_size taken from `table`.
    The record names the rows taken (file lines, or row numbers of a hub split)."""
    taken, rest = _stratified_take(table.labels, cfg.test_size, cfg.split_seed)
    test = _table_subset(table, taken)
    hub = table.path.startswith("hub:")
    record = {
        "test_carved_from": table.path,
        "test_size": cfg.test_size,
        "split_seed": cfg.split_seed,
        "stratified_by": table.label_column,
        "train_examples": len(rest),
        "test_examples": len(taken),
        # hub rows are numbered from 0; file rows by their line (the header is line 1)
        ("test_rows" if hub else "test_lines"): [line - 2 if hub else line for line in test.lines],
    }
    train = _table_subset(table, rest)
    train.dropped_empty, train.duplicates = table.dropped_empty, table.duplicates
    return train, test, record


def _folder_files(root: Path) -> dict[str, Path]:
    """train/test/validation data files in `root`, by file stem (train.csv, test.jsonl, dev.tsv ...)."""
    found: dict[str, Path] = {}
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in DATA_FILE_SUFFIXES)
    for role, stems in FOLDER_SPLITS.items():
        matches = [p for p in files if p.stem.lower() in stems]
        if len(matches) > 1:
            raise DataError(f"{root}: several {role} files ({', '.join(p.name for p in matches)}); keep one")
        if matches:
            found[role] = matches[0]
    if not found and len(files) == 1:
        found["single"] = files[0]
    return found


def _load_path(cfg: DataConfig, with_test: bool):
    """data.dataset naming a file (carved into train and test) or a folder of train/test files."""
    path = Path(cfg.dataset).expanduser()
    text_column, label_column = cfg.text_column or "text", cfg.label_column or "label"
    carved = None
    if path.is_file():
        table = read_table(path, text_column, label_column)
        train, test, carved = carve_test(table, cfg)
        return train, None, test if with_test else None, f"file:{path}", carved
    if not path.is_dir():
        raise DataError(
            f"data.dataset: {quote(cfg.dataset)} is not sst2, imdb, files or hub:OWNER/NAME, "
            "and no such file or folder exists"
        )
    found = _folder_files(path)
    if "single" in found:
        train, test, carved = carve_test(read_table(found["single"], text_column, label_column), cfg)
        return train, None, test if with_test else None, f"file:{found['single']}", carved
    if "train" not in found or ("test" not in found and "validation" not in found):
        raise DataError(
            f"{path}: no train and test files (train.csv and test.csv, or .tsv/.jsonl; "
            f"found {', '.join(sorted(p.name for p in found.values())) or 'no data file'})"
        )
    train = read_table(found["train"], text_column, label_column)
    validation = read_table(found["validation"], text_column, label_column) if "validation" in found else None
    if "test" in found:
        test = read_table(found["test"], text_column, label_column) if with_test else None
    else:  # train and validation only: the test slice comes from train, as for a single file
        train, test, carved = carve_test(train, cfg)
        test = test if with_test else None
    named = [found[role] for role in ("train", "validation", "test") if role in found]
    return train, validation, test, "folder:" + ",".join(map(str, named)), carved


def _hub_table(name: str, part, text_column: str, label_column: str) -> RawTable:
    """A RawTable from one split of a `datasets` dataset; ClassLabel columns give their names."""
    for wanted in (text_column, label_column):
        if wanted not in part.column_names:
            raise DataError(
                f"{name}: no column {quote(wanted)}; columns are {quote(part.column_names, 200)}"
                + _column_hint(wanted, part.column_names)
                + " (set --text-column / --label-column)"
            )
    if text_column == label_column:
        raise DataError(f"{name}: the text column and the label column are both {quote(text_column)}")
    feature = part.features[label_column]
    names = list(feature.names) if hasattr(feature, "names") and hasattr(feature, "int2str") else None
    table = RawTable(name, [], [], [], label_column, label_names=names)
    seen: set[tuple[str, str]] = set()
    for row, (text, label) in enumerate(zip(part[text_column], part[label_column])):
        text = "" if text is None else str(text).strip()
        if is_blank(text):
            table.dropped_empty += 1
            continue
        if label is None or (isinstance(label, str) and not label.strip()) or (names and not 0 <= label < len(names)):
            raise DataError(f"{name}: row {row}, column {label_column!r}: missing label ({quote(label)})")
        label = names[label] if names else str(label).strip()
        table.duplicates += (text, label) in seen
        seen.add((text, label))
        table.texts.append(text)
        table.labels.append(label)
        table.lines.append(row + 2)  # as a file line: row 0 follows a header
    if not table.texts:
        raise DataError(f"{name}: every text is empty ({table.dropped_empty} rows)")
    return table


def _open_hub_dataset(cfg: DataConfig):
    """The DatasetDict of `hub:OWNER/NAME[:CONFIG]`: a local folder of that name first (a dataset saved
    with save_to_disk, or data files such as parquet), else the hub or its local cache."""
    from sentitune.models import hub_offline_reason

    repo, _, config_name = cfg.dataset[len("hub:") :].partition(":")
    local = Path(repo).expanduser()
    reason = None if local.is_dir() else hub_offline_reason()
    if reason and not os.environ.get("HF_HUB_OFFLINE"):
        # unreachable without HF_HUB_OFFLINE: datasets would retry for minutes before failing
        raise DataError(f"dataset {cfg.dataset}: cannot be downloaded: {reason}")
    import datasets

    quiet = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()  # an error must stay the one line on stderr
    try:
        if (local / "dataset_dict.json").is_file() or (local / "dataset_info.json").is_file():
            loaded = datasets.load_from_disk(str(local))
        else:
            loaded = datasets.load_dataset(str(local) if local.is_dir() else repo, config_name or None)
    except Exception as exc:  # datasets raises many types (offline, not found, bad config); all mean one thing here
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        why = f"{reason}, and it is not in the local cache" if reason else detail
        raise DataError(f"dataset {cfg.dataset}: cannot be loaded: {why}") from None
    finally:
        if not quiet:
            datasets.enable_progress_bars()
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({"train": loaded})
    return loaded


def _load_hub_by_id(cfg: DataConfig, with_test: bool):
    loaded = _open_hub_dataset(cfg)
    available = list(loaded)
    text_column, label_column = cfg.text_column or "text", cfg.label_column or "label"
    for flag, split in (("--train-split", cfg.train_split), ("--test-split", cfg.test_split)):
        if split is not None and split not in loaded:
            raise DataError(f"dataset {cfg.dataset}: no split {quote(split)} ({flag}); splits are {quote(available)}")
    train = _hub_table(f"{cfg.dataset}:{cfg.train_split}", loaded[cfg.train_split], text_column, label_column)
    test_split = cfg.test_split or ("test" if "test" in loaded and cfg.train_split != "test" else None)
    carved = None
    if test_split is None:
        train, test, carved = carve_test(train, cfg)
    else:
        test = _hub_table(f"{cfg.dataset}:{test_split}", loaded[test_split], text_column, label_column)
    return train, None, test if with_test else None, cfg.dataset, carved


def load_raw_tables(cfg: DataConfig, with_test: bool = True) -> tuple[RawTable, RawTable | None, RawTable | None, str]:
    """(train, validation or None, test, source description); without `with_test` the test file is
    never opened and test is None."""
    return load_sources(cfg, with_test)[:4]


def load_sources(cfg: DataConfig, with_test: bool = True):
    """load_raw_tables plus how a test split was carved (None when the data had one)."""
    if cfg.dataset.startswith("hub:"):
        return _load_hub_by_id(cfg, with_test)
    if cfg.dataset not in ("sst2", "imdb", "files"):
        return _load_path(cfg, with_test)
    return (*_load_named(cfg, with_test), None)


def _load_named(cfg: DataConfig, with_test: bool) -> tuple[RawTable, RawTable | None, RawTable | None, str]:
    validation = None
    if cfg.dataset == "files":
        text_column, label_column = cfg.text_column or "text", cfg.label_column or "label"
        train = read_table(cfg.train_file, text_column, label_column)
        test = read_table(cfg.test_file, text_column, label_column) if with_test else None
        if cfg.validation_file:
            validation = read_table(cfg.validation_file, text_column, label_column)
        return train, validation, test, f"files:{cfg.train_file},{cfg.test_file}"
    root = resolve_data_dir(cfg)
    if root is None:
        (train, test), source = _load_hub(cfg)
        return train, None, test if with_test else None, source
    names = {"sst2": ("train.tsv", "dev.tsv"), "imdb": ("train.csv", "test.csv")}[cfg.dataset]
    pair = _find_pair(root, cfg.dataset, names)
    if pair is None:
        raise DataError(f"{root}: no {cfg.dataset}/{names[0]} and {names[1]} (nor in the folder itself)")
    text_column = cfg.text_column or ("sentence" if cfg.dataset == "sst2" else "text")
    label_column = cfg.label_column or "label"
    train = read_table(pair[0], text_column, label_column)
    test = read_table(pair[1], text_column, label_column) if with_test else None
    return train, None, test, f"local:{pair[0]},{pair[1]}"


def _stratified_take(labels: list[int], size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(taken, rest) indices: a stratified, seeded sample of `size` (fraction or count)."""
    from sklearn.model_selection import train_test_split

    # Multi-hot rows stratify by their label combination (label powerset); rare combinations make
    # the check below fall back to a plain seeded sample.
    labels = [label if np.ndim(label) == 0 else "".join(map(str, label)) for label in labels]
    indices = np.arange(len(labels))
    count = int(size) if size >= 1 else max(1, round(size * len(labels)))
    if count >= len(labels):
        raise DataError(f"cannot take {count} examples from a split of {len(labels)}")
    counts = Counter(labels)
    stratify = (
        labels if min(counts.values()) >= 2 and count >= len(counts) and len(labels) - count >= len(counts) else None
    )
    rest, taken = train_test_split(indices, test_size=count, random_state=seed, stratify=stratify)
    return np.sort(taken), np.sort(rest)


def nested_stratified_order(labels: list, seed: int) -> np.ndarray:
    """A seeded order of all examples in which every prefix is stratified: the first n hold each class
    in proportion to its share (within one example), and the first 500 contain the first 250. Learning
    curves take their subsets as prefixes of this one order, so a larger training set only adds.

    Each example of class c at rank r (in a seeded shuffle of its class) gets the key (r + u) / n_c,
    u uniform in [0, 1); sorting by key interleaves the classes at their rates.

    Example:
        >>> order = nested_stratified_order([0] * 6 + [1] * 2, seed=0)
        >>> sorted(order[:4].tolist()) == sorted(set(order[:4].tolist())), [int(i >= 6) for i in order[:4]].count(1)
        (True, 1)
    """
    labels = [label if np.ndim(label) == 0 else "".join(map(str, label)) for label in labels]
    rng = np.random.default_rng(seed)
    keys = np.empty(len(labels))
    for label in sorted(set(labels), key=str):
        members = np.flatnonzero(np.array([item == label for item in labels], dtype=bool))
        ranks = rng.permutation(len(members))
        keys[members] = (ranks + rng.random(len(members))) / len(members)
    return np.argsort(keys, kind="stable")


def nested_subset(labels: list, size: int, seed: int) -> np.ndarray:
    """The first `size` examples of nested_stratified_order, in their original order."""
    if size > len(labels):
        raise DataError(f"cannot take {size} training examples from a training split of {len(labels)}")
    return np.sort(nested_stratified_order(labels, seed)[:size])


def load_splits(cfg: DataConfig, with_test: bool = True) -> DatasetSplits:
    """Train, validation and test as configured. Without `with_test` the test file is never read, and
    `test` is the validation slice (evaluated_split "validation"): what tuning trials score on."""
    train_table, validation_table, test_table, source, carved = load_sources(cfg, with_test)
    multi = cfg.problem_type == "multi_label"
    if multi:
        label_names = list(cfg.label_names or []) or infer_label_names([_exploded(train_table, cfg.label_separator)])
        to_ids = functools.partial(multi_hot, label_names=label_names, separator=cfg.label_separator)
    else:
        label_names = _default_names(cfg) or train_table.label_names or infer_label_names([train_table])
        to_ids = functools.partial(map_labels, label_names=label_names)
    if len(label_names) < 2:
        raise DataError(
            f"{train_table.path}: column {train_table.label_column!r} has a single class "
            f"({quote(label_names[0])}); a classifier needs at least two"
        )
    train = Split(train_table.texts, to_ids(train_table))
    if not multi and len(set(train.labels)) < 2:
        raise DataError(
            f"{train_table.path}: column {train_table.label_column!r} has a single class "
            f"({quote(label_names[train.labels[0]])}); a classifier needs at least two"
        )
    test = Split(test_table.texts, to_ids(test_table)) if test_table is not None else None
    if validation_table is not None:
        validation = Split(validation_table.texts, to_ids(validation_table))
    else:
        taken, rest = _stratified_take(train.labels, cfg.validation_size, cfg.split_seed)
        validation, train = train.subset(taken), train.subset(rest)
    if cfg.train_subset and cfg.train_subset > len(train):
        raise DataError(
            f"data.train_subset: {cfg.train_subset} is more than the {len(train)} training examples of "
            f"{train_table.path} left beside the validation slice"
        )
    if cfg.train_subset and cfg.train_subset < len(train):
        train = train.subset(nested_subset(train.labels, cfg.train_subset, cfg.split_seed + 1))
    if test is not None and cfg.test_subset and cfg.test_subset < len(test):
        taken, _ = _stratified_take(test.labels, cfg.test_subset, cfg.split_seed + 2)
        test = test.subset(taken)
    tables = [t for t in (train_table, test_table, validation_table) if t is not None]
    notes = {
        "dropped_empty_texts": sum(t.dropped_empty for t in tables),
        "duplicate_rows": sum(t.duplicates for t in tables),
    }
    if test is None:
        return DatasetSplits(
            train, validation, validation, label_names, source, notes, evaluated_split="validation", carved=carved
        )
    return DatasetSplits(train, validation, test, label_names, source, notes, carved=carved)


# ---- tokenisation -----------------------------------------------------------------------------


def truncate_ids(ids: list[int], budget: int, strategy: str) -> list[int]:
    """Keeps `budget` token ids: the start (`head`), the end (`tail`), or a quarter of the budget
    from the start and the rest from the end (`head+tail`, after Sun et al. 2019 for long reviews)."""
    if len(ids) <= budget:
        return ids
    if strategy == "head":
        return ids[:budget]
    if strategy == "tail":
        return ids[-budget:]
    head = budget // 4
    return ids[:head] + ids[len(ids) - (budget - head) :]


def encode_texts(tokenizer, texts: list[str], max_length: int, truncation: str = "head") -> tuple[dict, int]:
    """Token ids with [CLS]/[SEP] and no padding (padding happens per batch); returns (encoding, truncated)."""
    if truncation == "head":
        # One spare position tells a text that was cut from one that fills max_length exactly; the cut
        # then keeps [CLS] + the first max_length-2 tokens + [SEP], as the tokenizer's own truncation does.
        encoded = tokenizer(texts, truncation=True, max_length=max_length + 1)
        input_ids, truncated = [], 0
        for ids in encoded["input_ids"]:
            if len(ids) > max_length:
                ids = ids[: max_length - 1] + ids[-1:]
                truncated += 1
            input_ids.append(ids)
        return {"input_ids": input_ids, "attention_mask": [[1] * len(ids) for ids in input_ids]}, truncated
    body = tokenizer(texts, add_special_tokens=False, truncation=False)["input_ids"]
    budget = max_length - 2
    input_ids, truncated = [], 0
    for ids in body:
        truncated += len(ids) > budget
        input_ids.append([tokenizer.cls_token_id] + truncate_ids(ids, budget, truncation) + [tokenizer.sep_token_id])
    return {"input_ids": input_ids, "attention_mask": [[1] * len(ids) for ids in input_ids]}, truncated


def default_chunk_stride(max_length: int) -> int:
    """Half a window (max_length without [CLS]/[SEP]): every token is seen in two windows, and a
    sentence cut at one window's edge sits whole inside the next."""
    return max(1, (max_length - 2) // 2)


def window_starts(count: int, window: int, stride: int) -> list[int]:
    """Start offsets of the windows covering `count` tokens: every `stride` tokens, the last one moved
    back to end at the text's end (so no window is mostly empty), one window for a short text.

    Example:
        >>> window_starts(10, 4, 3), window_starts(3, 4, 2), window_starts(8, 4, 2)
        ([0, 3, 6], [0], [0, 2, 4])
    """
    if count <= window:
        return [0]
    starts = list(range(0, count - window, stride))
    return [*starts, count - window]


def chunk_windows(count: int, max_length: int, stride: int | None = None) -> list[range]:
    """The token positions of each window a chunked model reads of a text of `count` tokens (without
    [CLS]/[SEP]): encode_windows's windows, which integrated gradients (explain.py) also need by position.

    Example:
        >>> chunk_windows(10, 6, 3)
        [range(0, 4), range(3, 7), range(6, 10)]
    """
    window = max_length - 2
    stride = stride or default_chunk_stride(max_length)
    return [range(start, min(start + window, count)) for start in window_starts(count, window, stride)]


def encode_windows(tokenizer, texts: list[str], max_length: int, stride: int | None = None) -> tuple[dict, list[int]]:
    """Each text as windows of at most max_length tokens (with [CLS]/[SEP]) `stride` tokens apart.

    Returns:
        (encoding of every window, in text order; the index of the text each window comes from).

    Example:
        >>> encoding, documents = encode_windows(tokenizer, ["a long review ..."], 512, 255)  # doctest: +SKIP
    """
    body = tokenizer(texts, add_special_tokens=False, truncation=False)["input_ids"]
    input_ids, documents = [], []
    for document, ids in enumerate(body):
        for window in chunk_windows(len(ids), max_length, stride):
            input_ids.append([tokenizer.cls_token_id, *ids[window.start : window.stop], tokenizer.sep_token_id])
            documents.append(document)
    return {"input_ids": input_ids, "attention_mask": [[1] * len(ids) for ids in input_ids]}, documents


def mean_per_document(window_logits: np.ndarray, documents, count: int) -> np.ndarray:
    """The mean of each document's window logits (count x k): a chunked text's prediction.

    Example:
        >>> mean_per_document(np.array([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0]]), [0, 0, 1], 2).tolist()
        [[2.0, 1.0], [5.0, 5.0]]
    """
    window_logits = np.asarray(window_logits, dtype=np.float64)
    documents = np.asarray(documents, dtype=np.int64)
    sums = np.zeros((count, window_logits.shape[1]))
    np.add.at(sums, documents, window_logits)
    return sums / np.bincount(documents, minlength=count)[:, None]


def tokenize_split(
    tokenizer, split: Split, max_length: int, truncation: str, long_text: str = "truncate", stride: int | None = None
):
    """A `datasets.Dataset` with input_ids, attention_mask, labels and length (for length grouping), and
    the count of texts that did not fit max_length.

    With `long_text="chunk"` a row per window (encode_windows), each with its text's label, and a
    `document` column (the text's index: mean_per_document pools the windows' logits); the Trainer
    drops that column before the model sees a batch, as it drops `length`.
    """
    import datasets

    if long_text == "chunk":
        encoded, documents = encode_windows(tokenizer, split.texts, max_length, stride)
        labels = [split.labels[d] for d in documents]
        split_into = np.bincount(np.asarray(documents, dtype=np.int64), minlength=len(split.texts))
        dataset = datasets.Dataset.from_dict(
            {
                **encoded,
                "labels": [[float(v) for v in row] for row in labels] if labels and np.ndim(labels[0]) else labels,
                "length": [len(ids) for ids in encoded["input_ids"]],
                "document": documents,
            }
        )
        return dataset, int((split_into > 1).sum())
    encoded, truncated = encode_texts(tokenizer, split.texts, max_length, truncation)
    dataset = datasets.Dataset.from_dict(
        {
            **encoded,
            # Multi-hot rows become floats: BCEWithLogitsLoss takes float targets.
            "labels": [[float(v) for v in row] for row in split.labels]
            if split.labels and np.ndim(split.labels[0])
            else split.labels,
            "length": [len(ids) for ids in encoded["input_ids"]],
        }
    )
    return dataset, truncated


def token_length_stats(tokenizer, texts: list[str]) -> dict[str, float]:
    """Token-length percentiles (with [CLS]/[SEP], no truncation)."""
    lengths = np.array([len(ids) + 2 for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]])
    return {
        "mean": float(lengths.mean()),
        **{f"p{q}": float(np.percentile(lengths, q)) for q in (50, 90, 95, 99)},
        "max": int(lengths.max()),
    }


def inspect_splits(splits: DatasetSplits, tokenizer=None, max_length: int | None = None) -> dict:
    """Sizes, class balance and token-length percentiles per split (pure; printing is the CLI's job)."""
    report = {"source": splits.source, "label_names": splits.label_names, "notes": splits.notes, "splits": {}}
    for name in ("train", "validation", "test"):
        split = getattr(splits, name)
        if split.labels and np.ndim(split.labels[0]):  # multi-hot rows: texts carrying each label
            counts = Counter({i: int(n) for i, n in enumerate(np.sum(split.labels, axis=0))})
        else:
            counts = Counter(split.labels)
        entry = {
            "size": len(split),
            "class_counts": {splits.label_names[i]: counts.get(i, 0) for i in range(len(splits.label_names))},
        }
        if tokenizer is not None:
            entry["tokens"] = token_length_stats(tokenizer, split.texts)
            if max_length:
                lengths = [len(ids) + 2 for ids in tokenizer(split.texts, add_special_tokens=False)["input_ids"]]
                entry["tokens"]["over_max_length"] = int(sum(1 for n in lengths if n > max_length))
        report["splits"][name] = entry
    return report


class _CountingLines:
    """Decoded lines of a binary stream, counting bytes read so a progress bar can follow."""

    def __init__(self, raw: IO[bytes], on_bytes: Callable[[int], None] | None = None):
        self.raw = raw
        self.on_bytes = on_bytes
        self.first = True

    def __iter__(self):
        for line in self.raw:
            if self.on_bytes:
                self.on_bytes(len(line))
            text = line.decode("utf-8")
            if self.first:
                text = text.lstrip("\ufeff")
                self.first = False
            yield text


INPUT_FORMATS = ("txt", "csv", "tsv", "jsonl")


def input_format(path: str, given: str | None) -> str:
    if given:
        return given
    if path == "-":
        return "txt"
    suffix = Path(path).suffix.lower()
    if suffix == ".txt":
        return "txt"
    return file_format(path)


def stream_texts(
    path: str, text_column: str | None = None, fmt: str | None = None, on_bytes: Callable[[int], None] | None = None
) -> Iterator[str]:
    """Texts from a TXT (one per line), CSV, TSV or JSONL file, or '-' for stdin, read lazily.

    One text per input row, empty ones included, so line i of the output answers row i of the input.
    Unlike `data.read_table`, nothing is held in memory, so a file of millions of lines streams.

    Example:
        >>> next(stream_texts("reviews.csv", text_column="review"))  # doctest: +SKIP
        'A gorgeous, witty film.'
    """
    fmt = input_format(path, fmt)
    raw = sys.stdin.buffer if path == "-" else open_binary(path)
    name = "<stdin>" if path == "-" else path
    try:
        lines = _CountingLines(raw, on_bytes)
        if fmt == "txt":
            for line in lines:
                yield line.rstrip("\r\n")
            return
        column = text_column or ("sentence" if fmt == "tsv" else "text")
        if fmt == "jsonl":
            for number, record in _jsonl_records(name, lines):
                if column not in record:
                    raise DataError(f"{name}: line {number}: expected a JSON object with key {column!r}")
                text = str(record[column] if record[column] is not None else "")
                _check_unicode(name, number, column, text)  # JSON escapes can hold lone surrogates
                yield text
            return
        index = None
        for header, line, fields in checked_csv_rows(name, lines, fmt):
            if index is None:
                if column not in header:
                    raise DataError(f"{name}: line 1: no column {quote(column)}; columns are {quote(header, 200)}")
                index = header.index(column)
            if index >= len(fields):
                raise DataError(f"{name}: line {line}: {len(fields)} fields, no {column!r} value")
            yield fields[index]
    except UnicodeDecodeError:
        raise DataError(f"{name}: not UTF-8; re-save the file as UTF-8") from None
    finally:
        if raw is not sys.stdin.buffer:
            raw.close()


def _jsonl_records(name, lines: Iterable[str]) -> Iterator[tuple[int, dict]]:
    """(line number, object) from JSON Lines, or from one JSON array of objects when the first
    non-blank line opens one (the array is then read whole: JSON has no way to stream it)."""
    lines = iter(lines)
    number, started = 0, False
    for line in lines:
        number += 1
        if not started and line.strip():
            started = True
            if line.lstrip().startswith("["):
                yield from json_array_records(name, "\n" * (number - 1) + line + "".join(lines))
                return
        record = parse_jsonl_line(name, number, line)
        if record is not None:
            yield number, record


_HTML_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
# A sentence ends at . ! or ? (with any closing quotes or brackets) before whitespace and a capital,
# digit or opening quote: good enough for review prose, and it never splits inside "3.5" or "e.g. the".
_SENTENCE_END = re.compile(r"([.!?][\"')\]]*)\s+(?=[\"'(\[]?[A-Z0-9])")


def split_sentences(text: str) -> list[str]:
    """The sentences of one text, HTML line breaks read as spaces, blanks dropped.

    Example:
        >>> split_sentences("Great cast.<br /><br />The plot? Thin, e.g. the ending. 3.5 stars!")
        ['Great cast.', 'The plot?', 'Thin, e.g. the ending.', '3.5 stars!']
    """
    text = " ".join(_HTML_BREAK.sub(" ", text).split())  # also leaves no newline: it marks the ends below
    return [sentence.strip() for sentence in _SENTENCE_END.sub("\\1\n", text).split("\n") if sentence.strip()]


def read_texts(path: str | Path, text_column: str | None = None) -> Iterator[str]:
    """The non-empty texts of a TXT/CSV/TSV/JSONL file ('-' = stdin), streamed: what pretraining reads.

    Example:
        >>> next(read_texts("imdb/train.csv"))  # doctest: +SKIP
        'I rented I AM CURIOUS-YELLOW from my video store ...'
    """
    return (text for text in stream_texts(str(path), text_column) if text.strip())
