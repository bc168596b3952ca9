"""The adversarial corpus (issue 19, sections 2-4): inputs that once gave wrong results with no error,
a traceback, or a misleading message. Each case goes through `sentitune.cli.main` and must exit 2
with exactly one line on stderr that names the culprit, and leave every file around it unchanged.

Classes: files given for another dataset; --resume with nothing to resume, with --overwrite, or with
another configuration; label lists that do not match the model head, duplicate or case-only label
names, missing values as labels; duplicate YAML keys and alias bombs; remote-code model folders at
predict/serve; outputs that are files or inside files; non-UTF-8 or non-object run files; weights that
do not fit the model; missing or corrupt tokenizers; NaN/inf and out-of-range numbers; non-UTF-8
command-line texts; damaged predictions.csv; a busy port. docs/reliability.md lists them.
"""

from __future__ import annotations

import json
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from sentitune.cli import EXIT_USER_ERROR, main
from sentitune.config import RunConfig


TRAIN = [
    "train",
    "--method",
    "tfidf",
    "--dataset",
    "files",
    "--train-file",
    "{dir}/train.csv",
    "--test-file",
    "{dir}/test.csv",
    "--validation-size",
    "4",
    "--set",
    "method.tfidf_c_grid=[1.0]",
    "--output-dir",
    "{dir}/out",
]
"""A valid tf-idf training command on the case folder's files; cases add or change flags."""

GOOD_ROWS = "".join(f"sentence number {i},{'positive' if i % 2 else 'negative'}\n" for i in range(2, 14))


@dataclass
class Case:
    id: str
    argv: list[str]
    expect: list[str]
    """Substrings of the one stderr line; `{dir}` is the case folder, `{run}` its copied run."""
    files: dict[str, str | bytes] = field(default_factory=dict)
    """Files written into the case folder before the command runs."""
    run: str | None = None
    """Method of a trained tiny run copied to `{dir}/run` before the command."""
    damage: Callable[[Path], None] | None = None
    """Applied to the case folder after the files and the run are in place."""
    absent: list[str] = field(default_factory=list)
    """Substrings the line must not contain (a wrong culprit, a misleading hint)."""


def train_case(id: str, extra: list[str], expect: list[str], files=None, **kwargs) -> Case:
    return Case(id, TRAIN + extra, expect, files or {}, **kwargs)


def predict(*texts: str) -> list[str]:
    return ["predict", "--model", "{dir}/run", "--output", "{dir}/predictions.jsonl", *(texts or ["a fine film"])]


# ---- damage helpers: each edits the copied run (or the case folder) in one way ---------------------


def _json(path: Path, value) -> None:
    path.write_text(json.dumps(value), encoding="utf-8")


def _labels(names: list[str]):
    """labels.json and metrics.json's copy of it set to `names`, as one edits a run folder by hand."""

    def damage(case_dir: Path) -> None:
        run = case_dir / "run"
        _json(run / "labels.json", names)
        metrics = json.loads((run / "metrics.json").read_text())
        _json(run / "metrics.json", {**metrics, "label_names": names})

    return damage


def _write(relative: str, content: str | bytes):
    def damage(case_dir: Path) -> None:
        path = case_dir / relative
        if path.is_dir():
            shutil.rmtree(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")

    return damage


def _into_folder(relative: str):
    def damage(case_dir: Path) -> None:
        path = case_dir / relative
        path.unlink()
        path.mkdir()
        (path / "x").write_text("x")

    return damage


def _remove(*relative: str):
    def damage(case_dir: Path) -> None:
        for name in relative:
            (case_dir / name).unlink()

    return damage


def _edit_json(relative: str, **changes):
    def damage(case_dir: Path) -> None:
        path = case_dir / relative
        _json(path, {**json.loads(path.read_text()), **changes})

    return damage


def _reshape(relative: str, tensor: str, rows: int):
    """Saves `tensor` of a safetensors file with `rows` rows (other dimensions kept)."""

    def damage(case_dir: Path) -> None:
        import numpy as np
        from safetensors.numpy import load_file, save_file

        path = case_dir / relative
        tensors = load_file(str(path))
        name = next(key for key in tensors if key == tensor or key.endswith("." + tensor))
        shape = (rows, *tensors[name].shape[1:])
        tensors[name] = np.zeros(shape, dtype=tensors[name].dtype)
        save_file(tensors, str(path))

    return damage


def _predictions(edit: Callable[[list[str]], list[str]]):
    def damage(case_dir: Path) -> None:
        path = case_dir / "run" / "predictions.csv"
        path.write_text("\n".join(edit(path.read_text().splitlines())) + "\n", encoding="utf-8")

    return damage


def _drop_prob_columns(lines: list[str]) -> list[str]:
    import csv
    import io

    rows = list(csv.reader(io.StringIO("\n".join(lines))))
    keep = [i for i, name in enumerate(rows[0]) if not name.startswith("prob_")]
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([[row[i] for i in keep] for row in rows])
    return buffer.getvalue().splitlines()


def _cut_off(lines: list[str]) -> list[str]:
    # As a killed copy leaves it: the last row stops inside its gold label.
    last = lines[-1]
    fields = last.split(",")
    return lines[:-1] + [",".join(fields[:-4]) + "," + fields[-4][:3]]


def _unfinished_run(case_dir: Path) -> None:
    """An unfinished run in {dir}/out whose config is {dir}/base.yaml, with one complete checkpoint;
    `--config {dir}/base.yaml` alone would resume it."""
    out = case_dir / "out"
    (out / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (out / ".sentitune-run").write_text("{}\n")
    (out / "checkpoints" / ".sentitune-checkpoints").write_text("{}\n")
    (out / "checkpoints" / "checkpoint-2" / "trainer_state.json").write_text('{"global_step": 2}')
    shutil.copy(case_dir / "base.yaml", out / "config.yaml")


def _both(*damages):
    def damage(case_dir: Path) -> None:
        for step in damages:
            step(case_dir)

    return damage


def _listening(case_dir: Path) -> None:
    """Holds {dir}'s port (written to port.txt) with a listening socket until the test ends."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    _HELD.append(sock)
    (case_dir / "port.txt").write_text(str(sock.getsockname()[1]))


_HELD: list[socket.socket] = []

BILLION_LAUGHS = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"{b}: &{b} [{','.join(['*' + a] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi")]
)
RESUME = ["train", "--config", "{dir}/base.yaml", "--output-dir", "{dir}/out", "--resume"]

CASES = [
    # ---- 2. wrong results with no error -------------------------------------------------------
    Case(
        "train-file without --dataset files",
        ["train", "--method", "tfidf", "--train-file", "{dir}/train.csv", "--test-file", "{dir}/test.csv"],
        ["data.train_file", "read only when data.dataset is 'files'", "'sst2'", "--dataset files"],
    ),
    Case(
        "test-file alone with --dataset imdb",
        ["train", "--method", "tfidf", "--dataset", "imdb", "--test-file", "{dir}/test.csv"],
        ["data.test_file", "'imdb'"],
    ),
    train_case(
        "validation-file with --dataset sst2",
        ["--dataset", "sst2", "--validation-file", "{dir}/test.csv"],
        ["data.train_file", "'sst2'"],
    ),
    Case(
        "train-file on top of a preset",
        ["train", "--preset", "sst2-quick", "--method", "tfidf", "--train-file", "{dir}/train.csv"],
        ["data.train_file", "'sst2'"],
    ),
    Case(
        "resume with another method (would mix two configurations)",
        RESUME + ["--method", "head"],
        ["--resume", "method.name ('tfidf' vs 'head')", "{dir}/out"],
        damage=_unfinished_run,
    ),
    Case(
        "resume with another seed",
        RESUME + ["--seed", "7"],
        ["--resume", "train.seed (42 vs 7)"],
        damage=_unfinished_run,
    ),
    Case(
        "resume with another learning rate",
        RESUME + ["--learning-rate", "0.5"],
        ["method.learning_rate (None vs 0.5)"],
        damage=_unfinished_run,
    ),
    Case(
        "resume with another max_length and batch size",
        RESUME + ["--max-length", "64", "--batch-size", "2"],
        ["data.max_length (32 vs 64)", "(and 1 more)"],
        damage=_unfinished_run,
    ),
    Case(
        "resume with another training file",
        RESUME + ["--train-file", "{dir}/test.csv"],
        ["--resume", "data.train_file ("],
        damage=_unfinished_run,
    ),
    Case("resume with nothing there", TRAIN + ["--resume"], ["{dir}/out", "nothing to resume", "drop --resume"]),
    Case(
        "resume of a run that left no checkpoint",
        RESUME,
        ["{dir}/out", "nothing to resume", "no complete checkpoint"],
        damage=_both(_unfinished_run, lambda d: shutil.rmtree(d / "out" / "checkpoints")),
    ),
    Case(
        "resume of a run with only a torn checkpoint",
        RESUME,
        ["nothing to resume"],
        damage=_both(_unfinished_run, _remove("out/checkpoints/checkpoint-2/trainer_state.json")),
    ),
    Case(
        "resume of a finished run",
        RESUME,
        ["{dir}/out", "finished run, nothing to resume"],
        damage=_both(_unfinished_run, _write("out/metrics.json", '{"status": "ok"}')),
    ),
    train_case("--resume with --overwrite", ["--resume", "--overwrite"], ["--resume and --overwrite"]),
    Case(
        "labels.json lists more names than the full head has outputs",
        predict(),
        ["{dir}/run/labels.json", "lists 3 labels", "head has 2 outputs", "classifier.weight"],
        run="full",
        damage=_labels(["negative", "neutral", "positive"]),
    ),
    Case(
        "labels.json lists more names than the lora head has outputs",
        predict(),
        ["{dir}/run/labels.json", "lists 3 labels", "head has 2 outputs", "adapter_model.safetensors"],
        run="lora",
        damage=_labels(["negative", "neutral", "positive"]),
    ),
    Case(
        "labels.json lists more names than tf-idf has classes",
        predict(),
        ["{dir}/run/labels.json", "lists 3 labels", "head has 2 outputs", "coef"],
        run="tfidf",
        damage=_labels(["negative", "neutral", "positive"]),
    ),
    Case(
        "labels.json names a label twice",
        predict(),
        ["{dir}/run/labels.json", "'negative' is listed twice"],
        run="tfidf",
        damage=_labels(["negative", "negative"]),
    ),
    Case(
        "labels.json names a label twice in two cases",
        predict(),
        ["{dir}/run/labels.json", "as 'negative' and 'NEGATIVE'"],
        run="tfidf",
        damage=_labels(["negative", "NEGATIVE"]),
    ),
    Case(
        "a Hugging Face folder whose id2label repeats a name",
        ["predict", "--model", "{dir}/run/model", "a fine film"],
        ["{dir}/run/model/config.json", "'pos' is listed twice"],
        run="full",
        damage=_edit_json("run/model/config.json", id2label={"0": "pos", "1": "pos"}, label2id={"pos": 1}),
    ),
    train_case(
        "--label-names with a duplicate",
        ["--label-names", "negative,positive,negative"],
        ["data.label_names", "'negative' is given twice"],
        absent=["{dir}/train.csv"],
    ),
    train_case(
        "--label-names differing only in case",
        ["--label-names", "positive,Positive"],
        ["data.label_names", "as 'positive' and 'Positive'"],
        absent=["{dir}/train.csv"],
    ),
    train_case(
        "--label-names with one name blames the flag, not the data",
        ["--label-names", "positive"],
        ["data.label_names", "at least two label names"],
        absent=["{dir}/train.csv", "single class"],
    ),
    train_case(
        "labels differing only in case",
        [],
        ["{dir}/train.csv", "line 14", "'Positive' differs only in case from 'positive'", "line 3"],
        {"train.csv": "text,label\n" + GOOD_ROWS + "one more,Positive\n"},
    ),
    train_case(
        "of two spellings of a label, the later one is blamed",
        [],
        ["{dir}/train.csv", "line 4", "'positive' differs only in case from 'POSITIVE'", "line 2)"],
        {"train.csv": "text,label\nfirst,POSITIVE\n" + GOOD_ROWS},
    ),
    train_case(
        "None as a label",
        [],
        ["{dir}/train.csv", "line 14", "'None' is a missing value written as text"],
        {"train.csv": "text,label\n" + GOOD_ROWS + "no label,None\n"},
    ),
    train_case(
        "null as a label in JSONL",
        ["--train-file", "{dir}/train.jsonl"],
        ["{dir}/train.jsonl", "line 3", "'null' is a missing value"],
        {
            "train.jsonl": '{"text": "a", "label": "neg"}\n{"text": "b", "label": "pos"}\n'
            '{"text": "c", "label": "null"}\n'
        },
    ),
    train_case(
        "NaN as a label",
        [],
        ["{dir}/train.csv", "line 14", "'NaN' is a missing value"],
        {"train.csv": "text,label\n" + GOOD_ROWS + "no label,NaN\n"},
    ),
    train_case(
        "duplicate key in a YAML config",
        ["--config", "{dir}/run.yaml"],
        ["{dir}/run.yaml", "line 3, column 1", "duplicate key 'train' (first on line 1)"],
        {"run.yaml": "train:\n  epochs: 1\ntrain:\n  epochs: 2\n"},
    ),
    train_case(
        "duplicate nested key in a YAML config",
        ["--config", "{dir}/run.yaml"],
        ["{dir}/run.yaml", "line 4, column 3", "duplicate key 'epochs' (first on line 2)"],
        {"run.yaml": "train:\n  epochs: 1\n  batch_size: 4\n  epochs: 2\n"},
    ),
    train_case(
        "duplicate key in a YAML flow mapping",
        ["--config", "{dir}/run.yaml"],
        ["{dir}/run.yaml", "line 1", "duplicate key 'epochs'"],
        {"run.yaml": "train: {epochs: 1, epochs: 2}\n"},
    ),
    Case(
        "auto_map in a run's model/config.json",
        predict(),
        ["{dir}/run/model", "needs custom code (auto_map in config.json)"],
        run="full",
        damage=_edit_json("run/model/config.json", auto_map={"AutoModel": "evil.Model"}),
    ),
    Case(
        "auto_map in a plain Hugging Face folder given to predict",
        ["predict", "--model", "{dir}/run/model", "a fine film"],
        ["{dir}/run/model", "needs custom code (auto_map in config.json)"],
        run="full",
        damage=_edit_json("run/model/config.json", auto_map={"AutoModel": "evil.Model"}),
    ),
    Case(
        "auto_map in a tokenizer_config.json",
        predict(),
        ["{dir}/run/model", "auto_map in tokenizer_config.json"],
        run="full",
        damage=_edit_json("run/model/tokenizer_config.json", auto_map={"AutoTokenizer": ["evil.Tok", None]}),
    ),
    Case(
        "auto_map in a folder given to serve",
        ["serve", "--model", "{dir}/run/model", "--port", "{port}"],
        ["{dir}/run/model", "needs custom code"],
        run="full",
        damage=_edit_json("run/model/config.json", auto_map={"AutoModel": "evil.Model"}),
    ),
    # ---- 3. tracebacks that are now one line --------------------------------------------------
    train_case("--output-dir that is a file", ["--output-dir", "{dir}/train.csv"], ["{dir}/train.csv", "is a file"]),
    train_case(
        "--output-dir inside a file",
        ["--output-dir", "{dir}/train.csv/run"],
        ["{dir}/train.csv/run", "{dir}/train.csv is a file, not a folder"],
    ),
    Case(
        "predict --output that is a folder",
        ["predict", "--model", "{dir}/run", "--output", "{dir}/run/model", "a fine film"],
        ["{dir}/run/model", "is a folder", "--output takes a file name"],
        run="tfidf",
    ),
    Case(
        "predict --output inside a file",
        ["predict", "--model", "{dir}/run", "--output", "{dir}/run/labels.json/p.jsonl", "a fine film"],
        ["{dir}/run/labels.json is a file, not a folder"],
        run="tfidf",
    ),
    Case(
        "evaluate --output-dir that is a file",
        ["evaluate", "{dir}/run", "--data", "{dir}/test.csv", "--output-dir", "{dir}/test.csv"],
        ["{dir}/test.csv", "is a file"],
        run="tfidf",
    ),
    Case(
        "analyze --output-dir inside a file",
        ["analyze", "{dir}/run", "--output-dir", "{dir}/test.csv/analysis"],
        ["{dir}/test.csv is a file, not a folder"],
        run="tfidf",
    ),
    Case(
        "compare --output-dir that is a file",
        [
            "compare",
            "--methods",
            "tfidf",
            "--dataset",
            "files",
            "--train-file",
            "{dir}/train.csv",
            "--test-file",
            "{dir}/test.csv",
            "--output-dir",
            "{dir}/test.csv",
        ],
        ["{dir}/test.csv", "is a file"],
    ),
    train_case(
        "config file that is not UTF-8",
        ["--config", "{dir}/run.yaml"],
        ["{dir}/run.yaml", "line 2, column 11", "not UTF-8"],
        {"run.yaml": b"train:\n  epochs: \xff\xfe\n"},
    ),
    train_case(
        "config file that is a folder",
        ["--config", "{dir}/conf.yaml"],
        ["{dir}/conf.yaml", "is a folder"],
        {"conf.yaml/x": "x"},
    ),
    Case(
        "run config.yaml that is not UTF-8",
        predict(),
        ["{dir}/run/config.yaml", "not UTF-8"],
        run="tfidf",
        damage=_write("run/config.yaml", b"model: \xe9t\xe9\n"),
    ),
    Case(
        "run config.yaml that is a folder",
        predict(),
        ["{dir}/run/config.yaml", "is a folder"],
        run="tfidf",
        damage=_into_folder("run/config.yaml"),
    ),
    Case(
        "metrics.json that is an array",
        predict(),
        ["{dir}/run/metrics.json", "expected an object", "got an array"],
        run="tfidf",
        damage=_write("run/metrics.json", "[]"),
    ),
    Case(
        "metrics.json that is null",
        predict(),
        ["{dir}/run/metrics.json", "got null"],
        run="tfidf",
        damage=_write("run/metrics.json", "null"),
    ),
    Case(
        "metrics.json that is not UTF-8",
        predict(),
        ["{dir}/run/metrics.json", "not UTF-8"],
        run="tfidf",
        damage=_write("run/metrics.json", b'{"status": "\xff"}'),
    ),
    Case(
        "metrics.json that is a folder",
        predict(),
        ["{dir}/run/metrics.json", "is a folder"],
        run="tfidf",
        damage=_into_folder("run/metrics.json"),
    ),
    Case(
        "labels.json that is an object",
        predict(),
        ["{dir}/run/labels.json", "expected an array", "got an object"],
        run="tfidf",
        damage=_write("run/labels.json", '{"0": "negative"}'),
    ),
    Case(
        "labels.json that is null",
        ["evaluate", "{dir}/run", "--data", "{dir}/test.csv"],
        ["{dir}/run/labels.json", "got null"],
        run="tfidf",
        damage=_write("run/labels.json", "null"),
    ),
    Case(
        "full weights whose vocabulary rows differ from the config",
        predict(),
        ["{dir}/run/model", "cannot load the full weights", "word_embeddings"],
        run="full",
        damage=_reshape("run/model/model.safetensors", "word_embeddings.weight", 30000),
    ),
    Case(
        "full weights with a wider classifier than labels.json",
        predict(),
        ["{dir}/run/labels.json", "lists 2 labels", "head has 3 outputs", "classifier.weight"],
        run="full",
        damage=_reshape("run/model/model.safetensors", "classifier.weight", 3),
    ),
    Case(
        "LoRA adapter whose rank differs from adapter_config.json",
        predict(),
        ["{dir}/run/model", "cannot load the lora weights", "lora_A"],
        run="lora",
        damage=_edit_json("run/model/adapter_config.json", r=4),
    ),
    Case(
        "head weights whose pooler shape differs (the full copy that plain transformers and predict load)",
        predict(),
        ["{dir}/run/model", "cannot load the head weights", "pooler.dense.weight"],
        run="head",
        damage=_reshape("run/model/model.safetensors", "pooler.dense.weight", 16),
    ),
    Case(
        "tf-idf idf vector shorter than its vocabulary",
        predict(),
        ["{dir}/run/model", "cannot load the tfidf weights", "idf_word"],
        run="tfidf",
        damage=_reshape("run/model/tfidf.safetensors", "idf_word", 3),
    ),
    Case(
        "a base model without a classifier given to predict (was: a random head, with a warning)",
        ["predict", "--model", "{model}", "a fine film"],
        ["{model}", "cannot load the model folder", "classifier.bias (and 1 more) is not in the weights"],
    ),
    Case(
        "tokenizer files missing",
        predict(),
        ["{dir}/run/model", "no tokenizer files"],
        run="full",
        damage=_remove("run/model/tokenizer.json"),
        absent=["install", "SentencePiece", "protobuf"],
    ),
    Case(
        "tokenizer.json corrupt",
        predict(),
        ["{dir}/run/model", "cannot load the tokenizer"],
        run="full",
        damage=_write("run/model/tokenizer.json", '{"version": "1.0", "model": {"type": "nope"'),
        absent=["install", "SentencePiece", "protobuf"],
    ),
    train_case("NaN learning rate", ["--learning-rate", "nan"], ["method.learning_rate", "must be a finite number"]),
    train_case("infinite epochs", ["--epochs", "inf"], ["train.epochs", "must be a finite number", "inf"]),
    train_case("NaN validation size", ["--validation-size", "nan"], ["data.validation_size", "finite"]),
    train_case("infinite validation size", ["--validation-size", "inf"], ["data.validation_size", "finite"]),
    train_case(
        "NaN weight decay is not blamed on the learning rate",
        ["--set", "train.weight_decay=.nan"],
        ["train.weight_decay", "must be a finite number"],
        absent=["learning_rate", "learning rate"],
    ),
    train_case("infinite gradient clipping", ["--set", "train.max_grad_norm=.inf"], ["train.max_grad_norm", "finite"]),
    train_case("NaN warm-up ratio", ["--set", "train.warmup_ratio=.nan"], ["train.warmup_ratio"]),
    train_case("NaN compare learning rate", ["--set", "compare.learning_rates=[.nan]"], ["compare.learning_rates"]),
    train_case("negative seed", ["--seed", "-1"], ["train.seed", "between 0 and 4294967295", "-1"]),
    train_case("seed past numpy's range", ["--seed", "4294967296"], ["train.seed", "4294967296"]),
    train_case(
        "split seed whose derived seeds overflow",
        ["--set", "data.split_seed=4294967295"],
        ["data.split_seed", "between 0 and 4294967293"],
    ),
    train_case("compare seed out of range", ["--set", "compare.seeds=[1, -5]"], ["compare.seeds", "-5"]),
    train_case("empty tf-idf C grid", ["--set", "method.tfidf_c_grid=[]"], ["method.tfidf_c_grid", "at least one"]),
    train_case("negative tf-idf C", ["--set", "method.tfidf_c_grid=[1.0, -2]"], ["method.tfidf_c_grid", "> 0"]),
    train_case("zero tf-idf C", ["--set", "method.tfidf_c_grid=[0]"], ["method.tfidf_c_grid", "> 0"]),
    train_case("NaN tf-idf C", ["--set", "method.tfidf_c_grid=[.nan]"], ["method.tfidf_c_grid", "finite"]),
    train_case(
        "tf-idf max_features 0", ["--set", "method.tfidf_max_features=0"], ["method.tfidf_max_features", ">= 1"]
    ),
    Case(
        "pretrain seed out of range",
        ["pretrain", "--model", "{model}", "--texts", "{dir}/train.csv", "--output-dir", "{dir}/pt", "--seed", "-3"],
        ["pretrain.seed", "-3"],
    ),
    Case(
        "pretrain NaN learning rate",
        ["pretrain", "--model", "{model}", "--texts", "{dir}/train.csv", "--output-dir", "{dir}/pt"]
        + ["--learning-rate", "nan"],
        ["pretrain.learning_rate", "finite"],
    ),
    Case(
        "invalid UTF-8 in a command-line text",
        predict("fine", "bad \udcff byte"),
        ["text 2", "b'\\xff' is not UTF-8"],
        run="tfidf",
    ),
    Case(
        "predictions.csv without its probability columns",
        ["analyze", "{dir}/run"],
        ["{dir}/run/predictions.csv", "missing probability columns", "prob_negative"],
        run="tfidf",
        damage=_predictions(_drop_prob_columns),
    ),
    train_case(
        "billion laughs in a config",
        ["--config", "{dir}/run.yaml"],
        ["{dir}/run.yaml", "aliases expand this document to 490,329,064 values", "write the values out"],
        {"run.yaml": BILLION_LAUGHS + "\n"},
    ),
    train_case(
        "alias inside its own anchor",
        ["--config", "{dir}/run.yaml"],
        ["{dir}/run.yaml", "without end"],
        {"run.yaml": "train: &a [*a]\n"},
    ),
    train_case(
        "YAML nested thousands deep",
        ["--config", "{dir}/run.yaml"],
        ["{dir}/run.yaml", "nested too deeply"],
        {"run.yaml": "train: " + "[" * 5000 + "]" * 5000 + "\n"},
    ),
    train_case("invalid YAML in --set", ["--set", "train.epochs=[1"], ["--set train.epochs", "invalid YAML"]),
    # ---- 4. unclear messages, now naming the culprit -------------------------------------------
    train_case(
        "one text label among numbers is blamed, not the first number",
        [],
        ["{dir}/train.csv", "line 12", "'pos' is text but other labels are numbers", "'0' on line 2"],
        {"train.csv": "text,label\n" + "".join(f"text {i},{i % 2}\n" for i in range(10)) + "odd one,pos\n"},
        absent=["line 2,"],
    ),
    train_case(
        "a JSON array holding a non-object",
        ["--train-file", "{dir}/train.json"],
        ["{dir}/train.json", "line 3", "expected a JSON object in the array, got list"],
        {"train.json": '[\n  {"text": "a", "label": "neg"},\n  ["b", "pos"]\n]\n'},
    ),
    train_case(
        "a JSON array that is never closed",
        ["--train-file", "{dir}/train.json"],
        ["{dir}/train.json", "line 4, column 1", "expected ',' or ']' in the JSON array"],
        {"train.json": '[\n  {"text": "a", "label": "neg"},\n  {"text": "b", "label": "pos"}\n'},
    ),
    train_case(
        "text after a JSON array",
        ["--train-file", "{dir}/train.json"],
        ["{dir}/train.json", "line 2, column 1", "text after the end of the JSON array"],
        {"train.json": '[{"text": "a", "label": "neg"}]\n{"text": "b", "label": "pos"}\n'},
    ),
    Case(
        "a cut-off predictions.csv is reported as cut off, not as unknown labels",
        ["analyze", "{dir}/run"],
        ["{dir}/run/predictions.csv", "is incomplete", "cut off"],
        run="tfidf",
        damage=_predictions(_cut_off),
        absent=["not among the run's labels"],
    ),
    Case(
        "serve on a busy port",
        ["serve", "--model", "{dir}/run", "--port", "{port}"],
        ["--port {port}", "in use by another process"],
        run="tfidf",
        damage=_listening,
    ),
    # ---- found in the second pass (issue 19 closing work) ----------------------------------------
    # 1. data loss: an output that is what the command reads, or a file sentitune did not write
    Case(
        "predict --output over the run's own predictions.csv",
        predict()[:4] + ["{dir}/run/predictions.csv", "a fine film"],
        ["{dir}/run/predictions.csv", "inside the --model folder", "pick another --output"],
        run="tfidf",
    ),
    Case(
        "predict --output over the run's labels.json",
        predict()[:4] + ["{dir}/run/labels.json", "a fine film"],
        ["{dir}/run/labels.json", "inside the --model folder"],
        run="tfidf",
    ),
    Case(
        "predict --output over the model's weights",
        predict()[:4] + ["{dir}/run/model/tfidf.safetensors", "a fine film"],
        ["{dir}/run/model/tfidf.safetensors", "inside the --model folder"],
        run="tfidf",
    ),
    Case(
        "predict --output into another run folder",
        predict()[:4] + ["{dir}/other/predictions.csv", "a fine film"],
        ["{dir}/other/predictions.csv", "inside a run folder ({dir}/other)"],
        run="tfidf",
        damage=lambda d: shutil.copytree(d / "run", d / "other"),
    ),
    Case(
        "predict --output that is the --input file",
        ["predict", "--model", "{dir}/run", "--input", "{dir}/test.csv", "--output", "{dir}/test.csv"],
        ["{dir}/test.csv", "is the --input file"],
        run="tfidf",
    ),
    Case(
        "predict --output that is the --input file by another path",
        ["predict", "--model", "{dir}/run", "--input", "{dir}/test.csv", "--output", "{dir}/sub/../test.csv"],
        ["is the --input file"],
        run="tfidf",
        damage=lambda d: (d / "sub").mkdir(),
    ),
    Case(
        "evaluate --output-dir over a user's predictions.csv",
        ["evaluate", "{dir}/run", "--data", "{dir}/test.csv", "--output-dir", "{dir}/mine"],
        ["{dir}/mine/predictions.csv", "not written by sentitune", "pick another --output-dir"],
        files={"mine/predictions.csv": "my own numbers\n", "mine/notes.md": "keep\n"},
        run="tfidf",
    ),
    Case(
        "evaluate --output-dir over a user's metrics.json",
        ["evaluate", "{dir}/run", "--data", "{dir}/test.csv", "--output-dir", "{dir}/mine"],
        ["{dir}/mine: holds a run's metrics.json"],
        files={"mine/metrics.json": '{"mine": true}'},
        run="tfidf",
    ),
    Case(
        "analyze --output-dir over a user's errors.csv",
        ["analyze", "{dir}/run", "--output-dir", "{dir}/mine"],
        ["{dir}/mine/errors.csv", "not written by sentitune"],
        files={"mine/errors.csv": "my error log\n"},
        run="tfidf",
    ),
    Case(
        "analyze --output-dir that is a run folder",
        ["analyze", "{dir}/run", "--output-dir", "{dir}/run"],
        ["{dir}/run", "is a run folder"],
        run="tfidf",
    ),
    Case(
        "compare --output-dir that is a run folder",
        ["compare", "--methods", "tfidf", "--dataset", "files", "--train-file", "{dir}/train.csv"]
        + ["--test-file", "{dir}/test.csv", "--output-dir", "{dir}/run"],
        ["{dir}/run", "is a run folder"],
        run="tfidf",
    ),
    Case(
        "compare --output-dir over a user's results.csv",
        ["compare", "--methods", "tfidf", "--dataset", "files", "--train-file", "{dir}/train.csv"]
        + ["--test-file", "{dir}/test.csv", "--output-dir", "{dir}/mine"],
        ["{dir}/mine/results.csv", "not written by sentitune"],
        files={"mine/results.csv": "variant,score\nmine,1\n"},
    ),
    # 2. wrong results with no error
    train_case(
        "--output-dir from an unset shell variable (was: the run went to runs/<name>)",
        ["--output-dir", ""],
        ["--output-dir is empty", "unset shell variable"],
    ),
    Case(
        "predict --output from an unset shell variable (was: stdout)",
        predict()[:3] + ["--output", "", "a fine film"],
        ["--output is empty"],
        run="tfidf",
    ),
    train_case("--train-file that is empty", ["--train-file", ""], ["--train-file is empty"]),
    train_case(
        "text column that is the label column (a perfect, meaningless score)",
        ["--text-column", "label"],
        ["{dir}/train.csv", "the text column and the label column are both 'label'"],
    ),
    train_case(
        "label column that is the text column",
        ["--label-column", "text"],
        ["the text column and the label column are both 'text'"],
        absent=["is not one of"],
    ),
    Case(
        "evaluate with the label column as text",
        ["evaluate", "{dir}/run", "--data", "{dir}/test.csv", "--text-column", "label"],
        ["{dir}/test.csv", "both 'label'"],
        run="tfidf",
    ),
    Case("predict of an empty text", predict(""), ["text 1", "no visible characters"], run="tfidf"),
    Case("predict of spaces only", predict("fine", "   "), ["text 2", "no visible characters"], run="tfidf"),
    Case(
        "predict of zero-width and no-break spaces only",
        predict("\u200b\u00a0\ufeff"),
        ["text 1", "no visible characters"],
        run="tfidf",
    ),
    Case(
        "serve with a NaN batching wait",
        ["serve", "--model", "{dir}/run", "--port", "{port}", "--max-wait-ms", "nan"],
        ["max_wait_ms", "finite", "nan"],
        run="tfidf",
    ),
    Case(
        "serve with an infinite batching wait (a lone request would wait for ever)",
        ["serve", "--model", "{dir}/run", "--port", "{port}", "--max-wait-ms", "inf"],
        ["max_wait_ms", "finite"],
        run="tfidf",
    ),
    Case(
        "serve with a zero header timeout",
        ["serve", "--model", "{dir}/run", "--port", "{port}", "--header-timeout", "0"],
        ["header_timeout_s must be > 0"],
        run="tfidf",
    ),
    Case(
        "serve with a NaN body timeout",
        ["serve", "--model", "{dir}/run", "--port", "{port}", "--body-timeout", "nan"],
        ["body_timeout_s", "finite"],
        run="tfidf",
    ),
    Case(
        "serve with no connections allowed",
        ["serve", "--model", "{dir}/run", "--port", "{port}", "--max-connections", "0"],
        ["max_connections must be >= 1"],
        run="tfidf",
    ),
    Case(
        "serve with an API key ending in a carriage return (a CRLF .env file; every request got 401)",
        ["serve", "--model", "{dir}/run", "--port", "{port}", "--api-key", "s3cret\r"],
        ["api_key must be printable ASCII", "stray line break"],
        run="tfidf",
    ),
    Case(
        "serve with an API key starting with a space",
        ["serve", "--model", "{dir}/run", "--port", "{port}", "--api-key", " s3cret"],
        ["api_key must be printable ASCII without leading or trailing spaces"],
        run="tfidf",
    ),
    Case(
        "serve with a non-ASCII API key",
        ["serve", "--model", "{dir}/run", "--port", "{port}", "--api-key", "cl\u00e9"],
        ["api_key must be printable ASCII"],
        run="tfidf",
    ),
    Case(
        "serve on an empty --host",
        ["serve", "--model", "{dir}/run", "--port", "{port}", "--host", ""],
        ["--host is empty"],
        run="tfidf",
    ),
    Case(
        "serve on port 0",
        ["serve", "--model", "{dir}/run", "--port", "0"],
        ["--port must be between 1 and 65535, got 0"],
        run="tfidf",
    ),
    Case(
        "serve on a port past 65535",
        ["serve", "--model", "{dir}/run", "--port", "70000"],
        ["--port must be between 1 and 65535"],
        run="tfidf",
    ),
    Case(
        "serve on a host that does not resolve",
        ["serve", "--model", "{dir}/run", "--port", "{port}", "--host", "no-such-host.invalid"],
        ["--host 'no-such-host.invalid'", "cannot resolve"],
        run="tfidf",
    ),
    # 3. tracebacks or broken lines
    train_case(
        "a data path holding a line break stays one line",
        ["--train-file", "{dir}/tra\nin.csv"],
        ["{dir}/tra\\nin.csv", "not found"],
    ),
    train_case(
        "a config path holding a tab and a carriage return stays one line",
        ["--config", "{dir}/a\tb\r.yaml"],
        ["a\\tb\\r.yaml"],
    ),
    # 4. unclear messages
    train_case(
        "a CSV saved with ';' (Excel in many locales)",
        [],
        ["{dir}/train.csv", "no column 'text'", "split by ';'"],
        {"train.csv": "text;label\n" + GOOD_ROWS.replace(",", ";")},
    ),
    train_case(
        "a tab-separated file named .csv",
        [],
        ["{dir}/train.csv", "split by '\\t'", ".tsv with tabs"],
        {"train.csv": "text\tlabel\n" + GOOD_ROWS.replace(",", "\t")},
    ),
    train_case(
        "column names in another case",
        [],
        ["{dir}/train.csv", "no column 'text'", "there is 'Text'", "case-sensitive"],
        {"train.csv": "Text,Label\n" + GOOD_ROWS},
    ),
    train_case(
        "a CSV saved as UTF-16 (Excel's Unicode text)",
        [],
        ["{dir}/train.csv", "line 1, column 1", "not UTF-8", "re-save the file as UTF-8"],
        {"train.csv": ("text,label\n" + GOOD_ROWS).encode("utf-16")},
    ),
    train_case(
        "a config indented with tabs",
        ["--config", "{dir}/run.yaml"],
        ["{dir}/run.yaml", "line 2, column 1", "'\\t'"],
        {"run.yaml": "train:\n\tepochs: 1\n"},
    ),
    train_case("--set with an empty value", ["--set", "train.epochs="], ["train.epochs", "expected a number", "''"]),
    Case(
        "analyze with a broken slice pattern",
        ["analyze", "{dir}/run", "--slice", "mine=(not"],
        ["--slice 'mine=(not'", "invalid regular expression"],
        run="tfidf",
    ),
    Case(
        "report on a run folder instead of a comparison",
        ["report", "{dir}/run"],
        ["{dir}/run", "not a comparison folder", "sentitune compare"],
        run="tfidf",
    ),
    Case(
        "export --quantize with --format hf",
        ["export", "--model", "{dir}/run", "--format", "hf", "--quantize", "int8", "--output", "{dir}/exp"],
        ["--quantize int8 needs --format onnx"],
        run="tfidf",
    ),
    Case(
        "export of a tf-idf run",
        ["export", "--model", "{dir}/run", "--output", "{dir}/exp"],
        ["a tfidf run has no neural network to export"],
        run="tfidf",
    ),
]


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    return {
        str(p.relative_to(folder)): (None if p.is_dir() else p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.name != "port.txt"
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def case_dir(tmp_path, tiny_data, tiny_model_dir):
    folder = tmp_path / "case"
    folder.mkdir()
    (folder / "train.csv").write_text("text,label\n" + GOOD_ROWS, encoding="utf-8")
    shutil.copy(tiny_data["test"], folder / "test.csv")
    raw = {
        "model": str(tiny_model_dir),
        "data": {
            "dataset": "files",
            "train_file": str(folder / "train.csv"),
            "test_file": str(folder / "test.csv"),
            "validation_size": 4,
            "max_length": 32,
        },
        "method": {"name": "tfidf", "tfidf_c_grid": [1.0]},
    }
    (folder / "base.yaml").write_text(RunConfig.from_dict(raw).to_yaml(), encoding="utf-8")
    yield folder
    while _HELD:
        _HELD.pop().close()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_adversarial_input_exits_2_with_one_line_and_changes_nothing(
    case, case_dir, trained_run, tiny_model_dir, capfd, monkeypatch
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name, content in case.files.items():
        path = case_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    if case.run:
        shutil.copytree(trained_run(case.run), case_dir / "run")
    if case.damage:
        case.damage(case_dir)
    port = (case_dir / "port.txt").read_text() if (case_dir / "port.txt").exists() else str(_free_port())

    def fill(text: str) -> str:
        return text.replace("{dir}", str(case_dir)).replace("{port}", port).replace("{model}", str(tiny_model_dir))

    before = _snapshot(case_dir)
    capfd.readouterr()
    assert main([fill(arg) for arg in case.argv]) == EXIT_USER_ERROR
    err = capfd.readouterr().err
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("sentitune ") and ": error: " in line, line
    assert len(line) < 600, f"{len(line)} characters: {line[:300]}"
    for expected in case.expect:
        assert fill(expected) in line, (expected, line)
    for unexpected in case.absent:
        assert fill(unexpected) not in line, (unexpected, line)
    assert _snapshot(case_dir) == before, "files changed around the refused command"


def test_the_corpus_is_broad():
    assert len(CASES) >= 130


# ---- the accepting side of the same rules ---------------------------------------------------------


def test_resume_with_the_same_configuration_passes_the_check(case_dir):
    from sentitune.training import check_resume

    _unfinished_run(case_dir)
    saved = RunConfig.from_yaml(case_dir / "base.yaml")
    check_resume(saved, case_dir / "out", overwrite=False)
    # Knobs that change how, not what, a run computes may differ.
    check_resume(saved.override({"train.threads": 1, "train.dataloader_workers": 1}), case_dir / "out", overwrite=False)


def test_a_json_array_file_reads_like_json_lines(tmp_path):
    from sentitune.data import read_table, stream_texts

    records = [{"text": "a fine film", "label": "pos"}, {"text": "dull", "label": "neg"}]
    array = tmp_path / "data.json"
    array.write_text("[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n", encoding="utf-8")
    table = read_table(array, "text", "label")
    assert (table.texts, table.labels, table.lines) == (["a fine film", "dull"], ["pos", "neg"], [2, 3])
    assert list(stream_texts(str(array))) == ["a fine film", "dull"]


def test_small_yaml_aliases_still_work(tmp_path):
    from sentitune.config import parse_yaml

    assert parse_yaml("base: &b {epochs: 1}\ntrain:\n  <<: *b\n  epochs: 2\n") == {
        "base": {"epochs": 1},
        "train": {"epochs": 2},
    }


def test_quoted_values_are_capped():
    from sentitune.errors import quote

    assert quote("short") == "'short'"
    long = quote("x" * 10_000)
    assert len(long) < 120 and long.endswith("(10002 characters)")


def test_wrong_content_type_is_415_not_422(trained_run):
    from fastapi.testclient import TestClient

    from sentitune.inference import Predictor
    from sentitune.serve import create_app

    body = '{"text": "a fine film"}'
    with TestClient(create_app(Predictor.load(trained_run("tfidf")))) as client:
        for content_type in ("text/plain", "application/xml", "multipart/form-data; boundary=x"):
            response = client.post("/predict", content=body, headers={"content-type": content_type})
            assert response.status_code == 415, (content_type, response.text)
            assert response.json()["error"] == "unsupported_media_type"
        for content_type in (
            "application/json",
            "application/json; charset=utf-8",
            "application/x-www-form-urlencoded",
        ):
            response = client.post("/predict", content=body, headers={"content-type": content_type})
            assert response.status_code == 200, (content_type, response.text)
