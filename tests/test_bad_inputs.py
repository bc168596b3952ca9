"""The bad-input corpus, end to end through the CLI: every malformed input exits 2 with one readable
line naming the file (and line, column and value where there is one) and leaves no output behind.
Plus inputs that look odd but are valid (they must load, with what was dropped or cut counted), and
property-based tests of the file loaders.

test_data.py checks the loaders' messages function by function; here the same inputs go through
`sentitune.cli.main`, so exit code, message and the untouched output folder are checked together.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sentitune.cli import EXIT_USER_ERROR, main
from sentitune.data import DataError, is_blank, read_table


GOOD = "".join(f"a sentence number {i},{'pos' if i % 2 else 'neg'}\n" for i in range(12))
GOOD_TEST = "text,label\nfine,pos\nawful,neg\n"


@dataclass
class Case:
    id: str
    files: dict[str, str | bytes]
    """Files written into the case folder; `train.csv` and `test.csv` default to good ones."""
    expect: list[str]
    """Substrings of the error line; `{dir}` is the case folder."""
    args: list[str] = field(default_factory=list)
    command: str = "train"


def _line(case_dir: Path, text: str) -> str:
    return text.replace("{dir}", str(case_dir))


CASES = [
    # -- data files --
    Case("empty file", {"train.csv": ""}, ["{dir}/train.csv", "file is empty"]),
    Case("blank lines only", {"train.jsonl": "\n  \n\n"}, ["{dir}/train.jsonl", "file is empty"]),
    Case("header only", {"train.csv": "text,label\n"}, ["{dir}/train.csv", "header only"]),
    Case(
        "missing text column",
        {"train.csv": "review,label\n" + GOOD},
        ["{dir}/train.csv", "line 1", "no column 'text'", "'review'"],
    ),
    Case(
        "missing label column",
        {"train.csv": "text,sentiment\n" + GOOD},
        ["{dir}/train.csv", "line 1", "no column 'label'", "'sentiment'"],
    ),
    Case(
        "label outside the declared set",
        {"train.csv": "text,label\n" + GOOD + "so-so,neutral\n"},
        ["{dir}/train.csv", "line 14", "column 'label'", "'neutral'", "['neg', 'pos']"],
        ["--label-names", "neg,pos"],
    ),
    Case(
        "test label unseen in train",
        {"test.csv": GOOD_TEST + "meh,neutral\n"},
        ["{dir}/test.csv", "line 4", "column 'label'", "'neutral'"],
    ),
    Case(
        "mixed label types",
        {"train.csv": "text,label\n" + GOOD + "odd one,7\n"},
        ["{dir}/train.csv", "line 14", "column 'label'", "'7'", "is a number but other labels are text"],
    ),
    Case(
        "single class",
        {"train.csv": "text,label\n" + "".join(f"text {i},pos\n" for i in range(8))},
        ["{dir}/train.csv", "single class", "'pos'"],
    ),
    Case(
        "non-UTF-8 bytes",
        {"train.csv": b"text,label\ngood,pos\nbad \xff\xfe here,neg\n"},
        ["{dir}/train.csv", "line 3, column 5", "b'\\xff'", "not UTF-8"],
    ),
    Case(
        "JSONL with a broken line",
        {"train.jsonl": '{"text": "good", "label": "pos"}\n{"text": "bad", "label": neg}\n'},
        ["{dir}/train.jsonl", "line 2, column 26", "invalid JSON"],
    ),
    Case(
        "JSONL line that is not an object",
        {"train.jsonl": '{"text": "good", "label": "pos"}\n["bad", "neg"]\n'},
        ["{dir}/train.jsonl", "line 2", "expected a JSON object, got list"],
    ),
    Case(
        "JSONL nested too deep",
        {"train.jsonl": '{"text": "good", "label": "pos"}\n' + "[" * 50_000 + "\n"},
        ["{dir}/train.jsonl", "line 2", "unreadable JSON"],
    ),
    Case(
        "JSONL lone surrogate",
        {"train.jsonl": '{"text": "good", "label": "pos"}\n{"text": "x \\udc80", "label": "neg"}\n'},
        ["{dir}/train.jsonl", "line 2", "column 'text'", "'\\udc80'", "lone surrogate"],
    ),
    Case(
        "empty label",
        {"train.csv": "text,label\n" + GOOD + "no label here,\n"},
        ["{dir}/train.csv", "line 14", "column 'label'", "empty label"],
    ),
    Case(
        "short row",
        {"train.csv": "text,label\n" + GOOD + "no comma at all\n"},
        ["{dir}/train.csv", "line 14", "column 'label'", "empty label"],
    ),
    Case(
        "JSONL label that is a list",
        {"train.jsonl": '{"text": "good", "label": ["pos", "neg"]}\n'},
        ["{dir}/train.jsonl", "line 1", "column 'label'", "is not a single value"],
    ),
    Case(
        "every text empty",
        {"train.csv": "text,label\n  ,pos\n\t,neg\n"},
        ["{dir}/train.csv", "every text is empty (2 rows)"],
    ),
    Case("unknown file type", {"train.xlsx": "text,label\n"}, ["{dir}/train.xlsx", "unknown file type .xlsx"]),
    Case("missing file", {}, ["{dir}/absent.csv", "file not found"], ["--train-file", "{dir}/absent.csv"]),
    Case(
        "folder instead of a file",
        {"folder.csv/x": ""},
        ["{dir}/folder.csv", "is a folder"],
        ["--train-file", "{dir}/folder.csv"],
    ),
    # -- configuration --
    Case(
        "YAML config with an unknown key",
        {"run.yaml": "trian:\n  batch_size: 3\n"},
        ["{dir}/run.yaml", "unknown key trian", "valid keys"],
        ["--config", "{dir}/run.yaml"],
    ),
    Case(
        "YAML config with an unknown nested key",
        {"run.yaml": "train:\n  batchsize: 3\n"},
        ["{dir}/run.yaml", "unknown key train.batchsize"],
        ["--config", "{dir}/run.yaml"],
    ),
    Case(
        "YAML config with a wrong type",
        {"run.yaml": "train:\n  batch_size: big\n"},
        ["{dir}/run.yaml", "train.batch_size", "expected an integer, got 'big'"],
        ["--config", "{dir}/run.yaml"],
    ),
    Case(
        "YAML config with a bad value",
        {"run.yaml": "train:\n  epochs: -1\n"},
        ["{dir}/run.yaml", "train.epochs", "must be > 0"],
        ["--config", "{dir}/run.yaml"],
    ),
    Case(
        "YAML syntax error",
        {"run.yaml": "train:\n  batch_size: [3\n"},
        ["{dir}/run.yaml", "line 3, column 1", "invalid YAML"],
        ["--config", "{dir}/run.yaml"],
    ),
    Case(
        "YAML that is not a mapping",
        {"run.yaml": "- a\n- b\n"},
        ["{dir}/run.yaml", "top level must be a mapping"],
        ["--config", "{dir}/run.yaml"],
    ),
    Case(
        "YAML with a python tag (code execution attempt)",
        {"run.yaml": "train:\n  batch_size: !!python/object/apply:os.system ['touch {dir}/pwned']\n"},
        ["{dir}/run.yaml", "line 2, column 15", "could not determine a constructor"],
        ["--config", "{dir}/run.yaml"],
    ),
    Case("--set an unknown field", {}, ["train.batchsize", "unknown config field"], ["--set", "train.batchsize=3"]),
    Case(
        "save_steps with per-epoch evaluation",
        {},
        ["train.save_steps", "eval_strategy"],
        ["--set", "train.save_steps=2", "--set", "train.eval_strategy=epoch"],
    ),
    # -- model folders --
    Case(
        "model folder without config.json",
        {"model/weights.txt": "x"},
        ["{dir}/model", "no config.json"],
        ["--method", "full", "--model", "{dir}/model"],
    ),
    Case(
        "model folder with only pickle weights",
        {"model/config.json": '{"model_type": "bert"}', "model/pytorch_model.bin": b"\x80\x04not really"},
        ["{dir}/model", "only pickle-based weights", "pytorch_model.bin", "safetensors"],
        ["--method", "full", "--model", "{dir}/model"],
    ),
]


def _write_case(case: Case, case_dir: Path) -> list[str]:
    for name, content in case.files.items():
        path = case_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            content = _line(case_dir, content).encode("utf-8")
        path.write_bytes(content)
    train = next((n for n in case.files if n.startswith("train.")), None)
    if train is None:
        (case_dir / "train.csv").write_text("text,label\n" + GOOD, encoding="utf-8")
        train = "train.csv"
    if "test.csv" not in case.files:
        (case_dir / "test.csv").write_text(GOOD_TEST, encoding="utf-8")
    return [
        "train",
        "--method",
        "tfidf",
        "--dataset",
        "files",
        "--train-file",
        str(case_dir / train),
        "--test-file",
        str(case_dir / "test.csv"),
        "--validation-size",
        "2",
        "--set",
        "method.tfidf_c_grid=[1.0]",
        "--output-dir",
        str(case_dir / "run"),
        *[_line(case_dir, a) for a in case.args],
    ]


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and err.strip().endswith(errors[0]), err
    assert "Traceback" not in err
    return errors[0]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_exits_2_with_one_readable_line_and_no_output(case, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    case_dir = tmp_path / "case"
    case_dir.mkdir()
    argv = _write_case(case, case_dir)
    before = sorted(p.relative_to(case_dir) for p in case_dir.rglob("*"))
    assert main(argv) == EXIT_USER_ERROR
    line = error_line(capsys)
    for expected in case.expect:
        assert _line(case_dir, expected) in line, (expected, line)
    # Nothing written: no run folder, no temp files, no stray outputs next to the inputs.
    assert sorted(p.relative_to(case_dir) for p in case_dir.rglob("*")) == before


# ---- run folders ------------------------------------------------------------------------------


def _damage(run: Path, how: str) -> None:
    model = run / "model" / "model.safetensors"
    if how == "missing weights":
        model.unlink()
    elif how == "corrupted weights":
        model.write_bytes(b"\x00garbage" * 64)
    elif how == "truncated weights":
        model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    elif how == "pickle instead of safetensors":
        model.unlink()
        (run / "model" / "pytorch_model.bin").write_bytes(b"\x80\x04pickle that must never be loaded")
    elif how == "missing model folder":
        shutil.rmtree(run / "model")
    elif how == "corrupted metrics.json":
        (run / "metrics.json").write_text('{"status": "ok", ')
    elif how == "corrupted config.yaml":
        (run / "config.yaml").write_text("model: [\n")
    elif how == "missing labels.json":
        (run / "labels.json").unlink()
    elif how == "labels.json edited":
        (run / "labels.json").write_text('["negative", "neutral", "positive"]')
    elif how == "failed run":
        metrics = json.loads((run / "metrics.json").read_text())
        (run / "metrics.json").write_text(json.dumps({**metrics, "status": "failed", "error": "boom"}))


RUN_DAMAGE = {
    "missing weights": ["{run}/model", "cannot load the full weights", "model.safetensors"],
    "corrupted weights": ["{run}/model", "cannot load the full weights"],
    "truncated weights": ["{run}/model", "cannot load the full weights"],
    "pickle instead of safetensors": ["{run}/model", "cannot load the full weights", "model.safetensors"],
    "missing model folder": ["{run}/model", "missing model folder"],
    "corrupted metrics.json": ["{run}/metrics.json", "corrupted JSON at line 1, column 18"],
    "corrupted config.yaml": ["{run}/config.yaml", "line 2, column 1", "invalid YAML"],
    "missing labels.json": ["{run}/labels.json", "missing"],
    "labels.json edited": ["{run}/labels.json", "differ from those the run recorded"],
    "failed run": ["{run}", "run status is 'failed'", "boom"],
}


@pytest.mark.parametrize("command", ["evaluate", "predict"])
@pytest.mark.parametrize("how", list(RUN_DAMAGE))
def test_damaged_run_folder(how, command, trained_run, tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run("full"), run)
    _damage(run, how)
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    output = tmp_path / "predictions.jsonl"
    argv = (
        ["evaluate", str(run), "--data", str(tiny_data["test"])]
        if command == "evaluate"
        else ["predict", "--model", str(run), "--output", str(output), "a fine film"]
    )
    assert main(argv) == EXIT_USER_ERROR
    line = error_line(capsys)
    for expected in RUN_DAMAGE[how]:
        assert expected.replace("{run}", str(run)) in line, (expected, line)
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before, "no evaluations/ folder left behind"
    assert not output.exists()


def test_finished_run_is_refused_byte_for_byte_unless_overwrite(tmp_path, capsys):
    case_dir = tmp_path / "case"
    case_dir.mkdir()
    argv = _write_case(Case("finished", {}, []), case_dir)
    assert main(argv) == 0
    run = case_dir / "run"
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(argv) == EXIT_USER_ERROR
    assert f"{run}: already holds a finished run" in error_line(capsys)
    assert {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert main(argv + ["--overwrite"]) == 0


# ---- odd but valid ----------------------------------------------------------------------------


def test_odd_but_valid_files_train_with_counts(tiny_model_dir, tmp_path, capsys):
    """BOM, CRLF, quoted fields with commas/newlines/quotes, an extremely long text, whitespace-only
    texts and duplicates: all load; what was dropped, repeated or cut is counted in metrics.json."""
    long_text = "an extremely long review " * 20_000  # 500,000 characters: past csv's 128 KiB field limit
    rows = [(f"plain sentence {i}", "pos" if i % 2 else "neg") for i in range(20)]
    rows += [
        ("first line\nsecond line, with a comma", "pos"),
        ('she said "great" and left', "neg"),
        (long_text, "pos"),
        ("   ", "neg"),
        ("\t", "pos"),
        ("plain sentence 0", "neg"),
        ("plain sentence 1", "pos"),
    ]
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows([("text", "label"), *rows])
    train = tmp_path / "train.csv"
    train.write_bytes(b"\xef\xbb\xbf" + buffer.getvalue().encode("utf-8"))
    test = tmp_path / "test.jsonl"
    test.write_text(
        "\n".join(
            json.dumps({"text": t, "label": y}, ensure_ascii=False)
            for t, y in [("fine\u2028film", "pos"), ("awful", "neg"), (long_text, "neg")]
        )
        + "\n",
        encoding="utf-8",
    )
    run = tmp_path / "run"
    argv = [
        "train",
        "--method",
        "full",
        "--model",
        str(tiny_model_dir),
        "--dataset",
        "files",
        "--train-file",
        str(train),
        "--test-file",
        str(test),
        "--validation-size",
        "4",
        "--max-length",
        "32",
        "--batch-size",
        "8",
        "--max-steps",
        "1",
        "--set",
        "train.eval_strategy=no",
        "--set",
        "train.warmup_steps_excluded_from_throughput=0",
        "--output-dir",
        str(run),
    ]
    assert main(argv) == 0, capsys.readouterr().err[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["data_notes"] == {"dropped_empty_texts": 2, "duplicate_rows": 2}
    assert metrics["train_examples"] + metrics["validation_examples"] == 25
    assert metrics["truncated_examples"] >= 1  # the long test text (the train one may land in validation)
    with open(run / "predictions.csv", newline="", encoding="utf-8") as handle:
        predicted = [row["text"] for row in csv.DictReader(handle)]
    assert predicted == ["fine\u2028film", "awful", long_text.strip()]


# ---- property-based: the file loaders ----------------------------------------------------------

# Texts as loaders return them: stripped, non-empty, no lone surrogates (which UTF-8 cannot hold).
# Separators, quotes and line breaks that only some splitters know are drawn often on purpose.
TRICKY = list(",;\"'\t\n\r\x00\x0b\x0c\x1c\x1e\x85\u2028\u2029\ufeff\\é😀")
characters = st.one_of(st.characters(exclude_categories=("Cs",)), st.sampled_from(TRICKY))
# A text with no visible character (whitespace, control or format characters only) is dropped as empty.
texts = st.text(characters, min_size=1, max_size=40).map(str.strip).filter(lambda t: not is_blank(t))
labels = st.sampled_from(["neg", "pos", "neutral", "0", "1", "très bien", "a,b", 'say "hi"'])
tsv_texts = texts.filter(lambda t: not set(t) & {"\t", "\n", "\r"})  # GLUE TSV has no quoting
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _round_trip(tmp_path, suffix: str, rows: list[tuple[str, str]]):
    path = tmp_path / f"data.{suffix}"
    if suffix == "csv":
        buffer = io.StringIO()
        csv.writer(buffer).writerows([("text", "label"), *rows])
        path.write_text(buffer.getvalue(), encoding="utf-8", newline="")
    elif suffix == "tsv":
        path.write_text("text\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows), encoding="utf-8")
    else:
        path.write_text(
            "".join(json.dumps({"text": t, "label": y}, ensure_ascii=False) + "\n" for t, y in rows), encoding="utf-8"
        )
    return read_table(path, "text", "label")


@PROPERTY
@given(rows=st.lists(st.tuples(texts, labels), min_size=1, max_size=20))
def test_csv_round_trip(tmp_path_factory, rows):
    table = _round_trip(tmp_path_factory.mktemp("csv"), "csv", rows)
    assert list(zip(table.texts, table.labels)) == rows


@PROPERTY
@given(rows=st.lists(st.tuples(tsv_texts, labels.filter(lambda y: "\t" not in y)), min_size=1, max_size=20))
def test_tsv_round_trip(tmp_path_factory, rows):
    table = _round_trip(tmp_path_factory.mktemp("tsv"), "tsv", rows)
    assert list(zip(table.texts, table.labels)) == rows


@PROPERTY
@given(rows=st.lists(st.tuples(texts, labels), min_size=1, max_size=20))
def test_jsonl_round_trip(tmp_path_factory, rows):
    table = _round_trip(tmp_path_factory.mktemp("jsonl"), "jsonl", rows)
    assert list(zip(table.texts, table.labels)) == rows


# Random bytes, and random bytes spliced into a valid file (which reaches deeper than pure noise).
noise = st.one_of(
    st.binary(max_size=300),
    st.tuples(st.binary(max_size=40), st.integers(0, 200)).map(
        lambda t: (b'text,label\nfine,pos\n"quoted, text",neg\n' * 3)[: t[1]] + t[0]
    ),
    st.tuples(st.binary(max_size=40), st.integers(0, 200)).map(
        lambda t: (b'{"text": "fine", "label": "pos"}\n{"text": "x\\u00e9", "label": 1}\n' * 3)[: t[1]] + t[0]
    ),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=noise, suffix=st.sampled_from(["csv", "tsv", "jsonl"]))
def test_random_bytes_give_data_errors_only(tmp_path_factory, content, suffix):
    path = tmp_path_factory.mktemp("noise") / f"data.{suffix}"
    path.write_bytes(content)
    try:
        table = read_table(path, "text", "label")
    except DataError as exc:
        message = str(exc)
        assert message.startswith(str(path)) and "\n" not in message, message
    else:
        assert len(table.texts) == len(table.labels) == len(table.lines) >= 1
        assert all(t and t == t.strip() for t in table.texts)
