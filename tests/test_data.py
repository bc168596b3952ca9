"""Data loading: file formats, label maps, clear errors, seeded stratified splits, truncation."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from conftest import sentiment_rows, shared_data_dir, write_rows

from sentitune.config import DataConfig
from sentitune.data import (
    DataError,
    encode_texts,
    inspect_splits,
    load_splits,
    read_table,
    truncate_ids,
)


def write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def files_config(train: Path, test: Path, **kwargs) -> DataConfig:
    return DataConfig(dataset="files", train_file=str(train), test_file=str(test), **{"validation_size": 4, **kwargs})


@pytest.fixture
def test_file(tmp_path) -> Path:
    return write_rows(tmp_path / "test.csv", sentiment_rows(10, 9))


# ---- formats ----------------------------------------------------------------------------------


def test_csv_with_embedded_newlines_commas_and_quotes(tmp_path):
    path = write(
        tmp_path / "x.csv",
        'text,label\n"first line\nsecond line, with a comma",pos\n"she said ""great"" and left",neg\nplain,pos\n',
    )
    table = read_table(path, "text", "label")
    assert table.texts == ["first line\nsecond line, with a comma", 'she said "great" and left', "plain"]
    assert table.labels == ["pos", "neg", "pos"]
    # Physical line numbers, so errors point at the right place after a multi-line field.
    assert table.lines == [3, 4, 5]


def test_tsv_is_glue_style_without_quoting(tmp_path):
    path = write(
        tmp_path / "x.tsv",
        'sentence\tlabel\n"quoted start and a lone " quote \t1\nit \'s a "masterpiece" , sort of \t0\n',
    )
    table = read_table(path, "sentence", "label")
    assert table.texts == ['"quoted start and a lone " quote', 'it \'s a "masterpiece" , sort of']
    assert table.labels == ["1", "0"]


def test_jsonl(tmp_path):
    rows = [{"text": 'good "film"', "label": "pos"}, {"text": "bad,\nfilm", "label": "neg", "extra": 1}]
    path = write(tmp_path / "x.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    table = read_table(path, "text", "label")
    assert table.texts == ['good "film"', "bad,\nfilm"]
    assert table.labels == ["pos", "neg"]


@pytest.mark.parametrize("suffix", ["csv", "tsv", "jsonl"])
def test_bom_and_crlf(tmp_path, suffix):
    lines = {
        "csv": ["text,label", "good film,pos", '"two\r\nlines",neg'],
        "tsv": ["text\tlabel", "good film\tpos", "bad film\tneg"],
        "jsonl": ['{"text": "good film", "label": "pos"}', '{"text": "bad film", "label": "neg"}'],
    }[suffix]
    path = write(tmp_path / f"x.{suffix}", b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")
    table = read_table(path, "text", "label")
    assert table.labels == ["pos", "neg"], "BOM must not glue itself to the first column name"
    assert table.texts[0] == "good film"
    assert not any(t.endswith("\r") for t in table.texts + table.labels)


def test_header_names_are_stripped(tmp_path):
    path = write(tmp_path / "x.csv", " text , label \nok,pos\n")
    assert read_table(path, "text", "label").labels == ["pos"]


def test_unknown_suffix(tmp_path):
    with pytest.raises(DataError, match=r"\.xlsx"):
        read_table(write(tmp_path / "x.xlsx", "text,label\n"), "text", "label")


# ---- labels -----------------------------------------------------------------------------------


def test_string_labels_map_in_declared_order(tmp_path):
    train = write_rows(tmp_path / "train.csv", sentiment_rows(20, 0, labels=("neg", "pos")))
    test = write_rows(tmp_path / "test.csv", sentiment_rows(8, 1, labels=("neg", "pos")))
    inferred = load_splits(files_config(train, test))
    assert inferred.label_names == ["neg", "pos"]
    declared = load_splits(files_config(train, test, label_names=["pos", "neg"]))
    assert declared.label_names == ["pos", "neg"]
    # Same rows, ids swapped: the declared order is the id order.
    assert [1 - y for y in inferred.test.labels] == declared.test.labels
    assert declared.test.texts == inferred.test.texts


def test_numeric_labels_sort_numerically(tmp_path):
    rows = [(f"text {i}", str(label)) for i, label in enumerate([2, 10, 1, 2, 10, 1, 2, 10, 1] * 2)]
    train = write_rows(tmp_path / "train.csv", rows)
    test = write_rows(tmp_path / "test.csv", rows[:3])
    splits = load_splits(files_config(train, test, validation_size=3))
    assert splits.label_names == ["1", "2", "10"]
    assert splits.test.labels == [1, 2, 0]


def test_integer_ids_with_declared_names(tmp_path):
    rows = [(f"text {i}", str(i % 2)) for i in range(12)]
    train = write_rows(tmp_path / "train.csv", rows)
    test = write_rows(tmp_path / "test.csv", rows[:4])
    splits = load_splits(files_config(train, test, label_names=["negative", "positive"]))
    assert splits.test.labels == [0, 1, 0, 1]


def test_imdb_rating_column_gives_eight_classes(tmp_path):
    folder = tmp_path / "data" / "imdb"
    folder.mkdir(parents=True)
    ratings = [1, 2, 3, 4, 7, 8, 9, 10]

    def rows(count):
        return [
            (f"review number {i} " + "great " * (i % 3), str(int(ratings[i % 8] >= 7)), str(ratings[i % 8]))
            for i in range(count)
        ]

    write_rows(folder / "train.csv", rows(64), header=("text", "label", "rating"))
    write_rows(folder / "test.csv", rows(16), header=("text", "label", "rating"))
    cfg = DataConfig(dataset="imdb", data_dir=str(tmp_path / "data"), label_column="rating", validation_size=8)
    splits = load_splits(cfg)
    assert splits.label_names == ["1", "2", "3", "4", "7", "8", "9", "10"]
    assert splits.test.labels[:8] == list(range(8))
    binary = load_splits(DataConfig(dataset="imdb", data_dir=str(tmp_path / "data"), validation_size=8))
    assert binary.label_names == ["negative", "positive"]
    assert binary.test.labels[:8] == [0, 0, 0, 0, 1, 1, 1, 1]


# ---- clear errors -----------------------------------------------------------------------------


def _error(tmp_path, name: str, content: str | bytes, text_column="text", label_column="label", **cfg) -> str:
    path = write(tmp_path / name, content)
    with pytest.raises(DataError) as info:
        if cfg:
            load_splits(files_config(path, path, text_column=text_column, label_column=label_column, **cfg))
        else:
            read_table(path, text_column, label_column)
    message = str(info.value)
    assert str(path) in message, message
    assert "\n" not in message, "errors are one line"
    return message


def test_empty_file(tmp_path):
    assert "empty" in _error(tmp_path, "x.csv", "")
    assert "empty" in _error(tmp_path, "y.jsonl", "\n  \n")


def test_header_only(tmp_path):
    assert "header only" in _error(tmp_path, "x.csv", "text,label\n")


def test_missing_text_column(tmp_path):
    message = _error(tmp_path, "x.csv", "review,label\ngood,pos\n")
    assert "'text'" in message and "review" in message  # says what is there


def test_missing_label_column(tmp_path):
    message = _error(tmp_path, "x.csv", "text,sentiment\ngood,pos\n")
    assert "'label'" in message and "sentiment" in message


def test_label_outside_declared_names(tmp_path):
    content = "text,label\ngood,positive\nbad,negative\nmeh,neutral\nfine,positive\nawful,negative\n"
    message = _error(tmp_path, "x.csv", content, label_names=["negative", "positive"], validation_size=1)
    assert "line 4" in message and "'label'" in message and "'neutral'" in message


def test_mixed_numeric_and_text_labels(tmp_path):
    content = "text,label\ngood,pos\nbad,0\nok,pos\nmeh,neg\n"
    message = _error(tmp_path, "x.csv", content, validation_size=1)
    assert "line 3" in message and "'0'" in message and "number" in message


def test_single_class(tmp_path):
    content = "text,label\ngood,pos\ngreat,pos\nfine,pos\n"
    message = _error(tmp_path, "x.csv", content, validation_size=1)
    assert "single class" in message and "'pos'" in message


def test_non_utf8_bytes_give_line_and_column(tmp_path):
    message = _error(tmp_path, "x.csv", b"text,label\ngood,pos\nbad \xff\xfe here,neg\n")
    assert "line 3, column 5" in message and "UTF-8" in message


def test_broken_jsonl_line(tmp_path):
    content = '{"text": "good", "label": "pos"}\n{"text": "bad", "label": neg}\n'
    message = _error(tmp_path, "x.jsonl", content)
    assert "line 2" in message and "column" in message and "JSON" in message


def test_jsonl_line_that_is_not_an_object(tmp_path):
    message = _error(tmp_path, "x.jsonl", '{"text": "good", "label": "pos"}\n["bad", "neg"]\n')
    assert "line 2" in message and "object" in message


@pytest.mark.parametrize(
    "name, content, line",
    [
        ("x.csv", "text,label\ngood,pos\nbad,\n", 3),
        ("x.csv", "text,label\ngood,pos\nbad,  \n", 3),
        ("x.csv", "text,label\ngood,pos\nbad\n", 3),  # short row
        ("x.jsonl", '{"text": "good", "label": "pos"}\n{"text": "bad", "label": null}\n', 2),
    ],
)
def test_empty_label(tmp_path, name, content, line):
    message = _error(tmp_path, name, content)
    assert f"line {line}" in message and "'label'" in message and "empty label" in message


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_table(tmp_path / "absent.csv", "text", "label")
    folder = tmp_path / "dir.csv"
    folder.mkdir()
    with pytest.raises(DataError, match="folder"):
        read_table(folder, "text", "label")


# ---- cleaning counts --------------------------------------------------------------------------


def test_whitespace_texts_dropped_and_duplicates_counted(tmp_path):
    rows = sentiment_rows(20, 0) + [("   ", "positive"), ("\t", "negative")]
    rows += [("exact duplicate", "positive")] * 3
    train = write_rows(tmp_path / "train.csv", rows)
    test = write_rows(tmp_path / "test.csv", [("a fine film", "positive"), (" ", "negative"), ("dull", "negative")])
    table = read_table(train, "text", "label")
    assert table.dropped_empty == 2 and "" not in table.texts
    splits = load_splits(files_config(train, test))
    assert splits.notes["dropped_empty_texts"] == 3
    # sentiment_rows repeats phrases too; count what the file holds rather than guess.
    expected = len(rows) - 2 - len({r for r in rows if r[0].strip()})
    assert splits.notes["duplicate_rows"] == expected >= 2
    assert len(splits.test) == 2


def test_every_text_empty(tmp_path):
    message = _error(tmp_path, "x.csv", "text,label\n  ,pos\n,neg\n")
    assert "every text is empty" in message


# ---- splits -----------------------------------------------------------------------------------


def _imbalanced(tmp_path) -> tuple[Path, Path]:
    # 60/40 with unique texts so that split membership can be compared by text.
    rows = [(f"sentence number {i}", "positive" if i % 5 < 3 else "negative") for i in range(200)]
    return write_rows(tmp_path / "train.csv", rows), write_rows(tmp_path / "test.csv", rows[:10])


def test_validation_slice_is_seeded_and_stratified(tmp_path):
    train, test = _imbalanced(tmp_path)

    def split(seed):
        return load_splits(files_config(train, test, validation_size=0.25, split_seed=seed))

    a, b, c = split(1), split(1), split(2)
    assert a.validation.texts == b.validation.texts and a.train.texts == b.train.texts
    assert a.validation.texts != c.validation.texts
    assert len(a.validation) == 50 and len(a.train) == 150
    assert not set(a.validation.texts) & set(a.train.texts)
    assert Counter(a.validation.labels) == {1: 30, 0: 20}  # 60/40 preserved exactly
    assert Counter(a.train.labels) == {1: 90, 0: 60}


def test_validation_count_and_train_subset(tmp_path):
    train, test = _imbalanced(tmp_path)
    splits = load_splits(files_config(train, test, validation_size=20, train_subset=50))
    assert len(splits.validation) == 20 and len(splits.train) == 50
    assert Counter(splits.train.labels) == {1: 30, 0: 20}
    # The subset comes out of the rest of train, never out of validation.
    assert not set(splits.train.texts) & set(splits.validation.texts)


def test_validation_file_replaces_the_slice(tmp_path):
    train, test = _imbalanced(tmp_path)
    validation = write_rows(tmp_path / "validation.csv", [("good", "positive"), ("bad", "negative")])
    splits = load_splits(files_config(train, test, validation_file=str(validation)))
    assert splits.validation.texts == ["good", "bad"] and len(splits.train) == 200


def test_inspect_reports_sizes_and_balance(tmp_path):
    train, test = _imbalanced(tmp_path)
    report = inspect_splits(load_splits(files_config(train, test, validation_size=20)))
    assert report["splits"]["validation"] == {"size": 20, "class_counts": {"negative": 8, "positive": 12}}
    assert report["label_names"] == ["negative", "positive"]


# ---- truncation -------------------------------------------------------------------------------


def test_truncate_ids_strategies():
    ids = list(range(20))
    assert truncate_ids(ids, 8, "head") == [0, 1, 2, 3, 4, 5, 6, 7]
    assert truncate_ids(ids, 8, "tail") == [12, 13, 14, 15, 16, 17, 18, 19]
    assert truncate_ids(ids, 8, "head+tail") == [0, 1, 14, 15, 16, 17, 18, 19]  # a quarter from the start
    for strategy in ("head", "tail", "head+tail"):
        assert truncate_ids(ids[:8], 8, strategy) == ids[:8]
        assert len(truncate_ids(ids, 7, strategy)) == 7


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.mark.parametrize("strategy", ["head", "tail", "head+tail"])
def test_encode_texts_truncation(tokenizer, strategy):
    words = [f"w{i}" for i in range(40)]
    body = tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]
    assert len(body) > 30
    short = "a short one"
    encoded, truncated = encode_texts(tokenizer, [" ".join(words), short], 16, strategy)
    long_ids, short_ids = encoded["input_ids"]
    assert truncated == 1
    assert len(long_ids) == 16
    assert long_ids[0] == tokenizer.cls_token_id and long_ids[-1] == tokenizer.sep_token_id
    assert long_ids[1:-1] == truncate_ids(body, 14, strategy)
    assert short_ids == tokenizer(short)["input_ids"]
    assert encoded["attention_mask"] == [[1] * len(long_ids), [1] * len(short_ids)]


@pytest.mark.parametrize("strategy", ["head", "tail", "head+tail"])
def test_text_that_fits_exactly_is_not_counted_as_truncated(tokenizer, strategy):
    text = "one two three four five six"
    length = len(tokenizer(text)["input_ids"])
    encoded, truncated = encode_texts(tokenizer, [text], length, strategy)
    assert truncated == 0
    assert encoded["input_ids"][0] == tokenizer(text)["input_ids"]


# ---- the real SST-2 folder --------------------------------------------------------------------


def test_real_sst2_folder():
    root = shared_data_dir()
    if root is None:
        reason = "no sst2/train.tsv under $SENTITUNE_DATA_DIR or ../shared/data"
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    splits = load_splits(DataConfig(dataset="sst2", data_dir=str(root)))
    validation = round(0.05 * 67_349)
    assert len(splits.validation) == validation
    assert len(splits.train) == 67_349 - validation
    assert len(splits.test) == 872
    assert splits.label_names == ["negative", "positive"]
    assert Counter(splits.test.labels) == {1: 444, 0: 428}
    assert splits.notes["dropped_empty_texts"] == 0
    # GLUE's trailing space before the tab is stripped.
    assert not any(t != t.strip() for t in splits.test.texts)


def test_an_unclosed_quote_is_reported_where_its_row_starts(tmp_path):
    from sentitune.data import stream_texts

    path = write(tmp_path / "x.csv", 'text,label\nok,pos\n"never closed,neg\nnext,pos\nlast,neg\n')
    for read in (lambda: read_table(path, "text", "label"), lambda: list(stream_texts(str(path)))):
        with pytest.raises(
            DataError,
            match=r"x.csv: line 3: a quote opened in this row is never closed "
            r"\(the row runs to line 5\)",
        ):
            read()
    # A closed multi-line field is fine, and rows keep the line where they end.
    fine = write(tmp_path / "y.csv", 'text,label\n"two\nlines",neg\nplain,pos\n')
    assert read_table(fine, "text", "label").lines == [3, 4]


def test_a_repeated_header_name_is_refused(tmp_path):
    from sentitune.data import stream_texts

    path = write(tmp_path / "x.csv", "text,label,text\na,pos,b\n")
    for read in (lambda: read_table(path, "text", "label"), lambda: list(stream_texts(str(path)))):
        with pytest.raises(DataError, match=r"x.csv: line 1: column 'text' appears 2 times in the header"):
            read()


def test_fields_beyond_the_header_are_refused_unless_empty(tmp_path):
    from sentitune.data import stream_texts

    path = write(tmp_path / "x.csv", "text,label\nfine,pos\ngreat, fun movie,pos\n")
    for read in (lambda: read_table(path, "text", "label"), lambda: list(stream_texts(str(path)))):
        with pytest.raises(DataError, match=r"x.csv: line 3: 3 fields but the header names 2; an unquoted comma"):
            read()
    trailing = write(tmp_path / "y.csv", "text,label\nfine,pos,\nalso fine,neg,,\n")  # empty extras: harmless
    assert read_table(trailing, "text", "label").texts == ["fine", "also fine"]
    assert list(stream_texts(str(trailing))) == ["fine", "also fine"]
    tsv = write(tmp_path / "z.tsv", "sentence\tlabel\na\ttab inside\t1\n")
    with pytest.raises(DataError, match=r"an unquoted tab"):
        read_table(tsv, "sentence", "label")


# ---- any dataset: a file, a folder, or hub:OWNER/NAME ------------------------------------------


def _imbalanced_rows(count: int = 100) -> list[tuple[str, str]]:
    # 70/30 so that stratification is visible: an unstratified 20-row test slice rarely hits 14/6 exactly
    return [
        (f"review number {i} {'good' if i % 10 < 3 else 'bad'}", "pos" if i % 10 < 3 else "neg") for i in range(count)
    ]


def test_a_single_file_is_carved_stratified_seeded_and_recorded(tmp_path):
    from sentitune.data import load_splits

    path = write_rows(tmp_path / "reviews.csv", _imbalanced_rows())
    cfg = DataConfig(dataset=str(path), validation_size=10)
    splits = load_splits(cfg)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (70, 10, 20)
    assert Counter(splits.test.labels) == {splits.label_names.index("neg"): 14, splits.label_names.index("pos"): 6}
    # no text is in two splits
    assert not set(splits.test.texts) & (set(splits.train.texts) | set(splits.validation.texts))
    record = splits.carved
    assert record["test_carved_from"] == str(path) and record["split_seed"] == 42 and record["test_examples"] == 20
    lines = path.read_text().splitlines()
    assert sorted(lines[n - 1].split(",")[0] for n in record["test_lines"]) == sorted(splits.test.texts)
    assert load_splits(cfg).test.texts == splits.test.texts  # seeded
    other = load_splits(DataConfig(dataset=str(path), validation_size=10, split_seed=7)).test.texts
    assert other != splits.test.texts
    # a tuning trial: the same train/validation, test never returned
    trial = load_splits(cfg, with_test=False)
    assert trial.train.texts == splits.train.texts and trial.evaluated_split == "validation"
    assert DataConfig(dataset=str(path)).name == "reviews"


def test_a_folder_of_train_and_test_files(tmp_path):
    from sentitune.data import load_splits

    write_rows(tmp_path / "train.csv", sentiment_rows(60, 1))
    write_rows(tmp_path / "test.csv", sentiment_rows(20, 2))
    splits = load_splits(DataConfig(dataset=str(tmp_path), validation_size=10))
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (50, 10, 20)
    assert splits.carved is None and "test.csv" in splits.source


def test_a_path_that_does_not_exist_or_a_folder_without_splits_is_one_line(tmp_path):
    from sentitune.data import load_splits

    with pytest.raises(DataError, match="no such file or folder") as info:
        load_splits(DataConfig(dataset=str(tmp_path / "nope.csv")))
    assert "\n" not in str(info.value)
    write_rows(tmp_path / "a.csv", sentiment_rows(10, 1))
    write_rows(tmp_path / "b.csv", sentiment_rows(10, 1))
    with pytest.raises(DataError, match="no train and test files"):
        load_splits(DataConfig(dataset=str(tmp_path)))


def test_dataset_values_are_checked_in_the_config():
    from sentitune.config import ConfigError

    with pytest.raises(ConfigError, match="hub:OWNER/NAME"):
        DataConfig(dataset="hub:bad id with spaces")
    with pytest.raises(ConfigError, match="data.test_split: read only when data.dataset is hub"):
        DataConfig(dataset="sst2", test_split="validation")
    assert DataConfig(dataset="hub:stanfordnlp/imdb:plain_text").name == "imdb_plain_text"


@pytest.fixture
def local_hub_dataset(tmp_path, monkeypatch):
    """`hub:acme/reviews` as a folder of parquet files (what load_dataset reads from the hub), and
    `hub:acme/saved` written by save_to_disk, with a ClassLabel label column named `sentiment`."""
    import datasets

    monkeypatch.chdir(tmp_path)
    features = datasets.Features(
        {"review": datasets.Value("string"), "sentiment": datasets.ClassLabel(names=["bad", "good"])}
    )
    rows = _imbalanced_rows(60)
    parts = {
        split: datasets.Dataset.from_dict(
            {"review": [t for t, _ in chunk], "sentiment": [int(label == "pos") for _, label in chunk]},
            features=features,
        )
        for split, chunk in (("train", rows[:40]), ("holdout", rows[40:]))
    }
    (tmp_path / "acme" / "reviews" / "data").mkdir(parents=True)
    for split, part in parts.items():
        part.to_parquet(str(tmp_path / "acme" / "reviews" / "data" / f"{split}-00000-of-00001.parquet"))
    datasets.DatasetDict(parts).save_to_disk(str(tmp_path / "acme" / "saved"))
    return tmp_path


@pytest.mark.parametrize("repo", ["acme/reviews", "acme/saved"])
def test_a_hub_dataset_with_its_columns_and_splits(local_hub_dataset, repo):
    from sentitune.data import load_splits

    cfg = DataConfig(
        dataset=f"hub:{repo}", text_column="review", label_column="sentiment", test_split="holdout", validation_size=4
    )
    splits = load_splits(cfg)
    assert splits.label_names == ["bad", "good"]  # the ClassLabel's names, in its id order
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (36, 4, 20)
    assert splits.carved is None and splits.source == f"hub:{repo}"
    # without a test split (and none named), test is carved from train and recorded
    carved = load_splits(
        DataConfig(dataset=f"hub:{repo}", text_column="review", label_column="sentiment", validation_size=4)
    )
    assert len(carved.test) == 8 and carved.carved["test_carved_from"] == f"hub:{repo}:train"
    assert len(carved.carved["test_rows"]) == 8 and max(carved.carved["test_rows"]) < 40


def test_hub_dataset_bad_column_or_split_is_one_line(local_hub_dataset):
    from sentitune.data import load_splits

    with pytest.raises(DataError, match="no column 'text'; columns are") as info:
        load_splits(DataConfig(dataset="hub:acme/reviews", label_column="sentiment"))
    assert "\n" not in str(info.value) and "'review'" in str(info.value)
    with pytest.raises(DataError, match="no split 'test' \\(--test-split\\); splits are"):
        load_splits(DataConfig(dataset="hub:acme/reviews", text_column="review", test_split="test"))


def test_an_unreachable_hub_dataset_is_one_line_naming_it_within_seconds(tmp_path, monkeypatch):
    import time

    from sentitune.data import load_splits

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    with pytest.raises(DataError) as info:
        load_splits(DataConfig(dataset="hub:nobody-here/no-such-dataset-xyz"))
    assert time.monotonic() - started < 30
    assert "hub:nobody-here/no-such-dataset-xyz" in str(info.value) and "\n" not in str(info.value)
