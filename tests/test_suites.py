"""The shipped negation and contrast suite: it parses as an eval file, it is exactly what its generator
writes, and every minimal pair carries opposite labels."""

from __future__ import annotations

import csv
import importlib.util
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from sentitune.config import SUITE_DIR, suite_names
from sentitune.data import read_labelled_file


ROOT = Path(__file__).resolve().parents[1]
SUITE = SUITE_DIR / "negation.tsv"


def _rows() -> list[dict]:
    with SUITE.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))


def test_the_suite_is_shipped_and_reads_like_any_eval_file():
    assert suite_names() == ["negation"]
    table, ids = read_labelled_file(SUITE, ["negative", "positive"])
    rows = _rows()
    assert table.texts == [r["sentence"] for r in rows]
    assert table.dropped_empty == 0 and table.duplicates == 0
    assert len(set(table.texts)) == len(table.texts)  # every sentence once
    counts = Counter(ids)
    assert counts[0] == counts[1] and 300 <= len(ids) <= 600  # balanced, a few hundred
    assert {r["family"] for r in rows} == {"negation", "expectation", "contrast", "intensifier", "double negation"}


def test_every_pair_has_two_sentences_with_opposite_labels():
    pairs = defaultdict(list)
    for row in _rows():
        pairs[row["pair"]].append(row)
    for pair_id, members in pairs.items():
        assert len(members) == 2, pair_id
        assert {m["label"] for m in members} == {"negative", "positive"}, pair_id
        assert members[0]["template"] == members[1]["template"] and members[0]["family"] == members[1]["family"]


@pytest.mark.parametrize(
    "sentence, label",
    [
        ("The movie was not good.", "negative"),
        ("The movie was not bad.", "positive"),
        ("This film isn't boring.", "positive"),
        ("I expected to love it, but I didn't.", "negative"),
        ("I expected to hate it, but I didn't.", "positive"),
        ("I thought it would be dull, but it wasn't.", "positive"),
        ("The acting was superb, but the film as a whole was a chore.", "negative"),
        ("Although the plot was weak, I loved the film.", "positive"),
        ("The film was not very good.", "negative"),
        ("The movie was incredibly tedious.", "negative"),
        ("I can't say I didn't enjoy it.", "positive"),
        ("I can't say I enjoyed it.", "negative"),
        ("This film never fails to amuse me.", "positive"),
        ("I didn't dislike the sequel.", "positive"),
    ],
)
def test_labels_read_as_a_person_would_read_them(sentence, label):
    labels = {r["sentence"]: r["label"] for r in _rows()}
    assert labels[sentence] == label


def test_the_shipped_file_is_what_the_generator_writes():
    spec = importlib.util.spec_from_file_location("make_negation_suite", ROOT / "scripts" / "make_negation_suite.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.render() == SUITE.read_text(encoding="utf-8")
    assert module.render() == module.render()  # deterministic
