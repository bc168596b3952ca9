"""distill.unlabelled_unit / unlabelled_limit: documents become sentence-shaped examples, sampled
reproducibly, and misuse is refused with the field named."""

from __future__ import annotations

import pytest

from sentitune.config import ConfigError, DistillConfig
from sentitune.data import split_sentences
from sentitune.errors import DataError
from sentitune.training import unlabelled_texts


def _reviews(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text(
        'text,label\n"Loved it. The cast shines!<br /><br />Would watch again?",1\n'
        '"Dull. Two hours I will not get back.",0\n" ",1\n',
        encoding="utf-8",
    )
    return path


def test_sentence_unit_splits_rows_and_reads_html_breaks_as_spaces(tmp_path):
    cfg = DistillConfig(teacher="t", unlabelled=str(_reviews(tmp_path)), unlabelled_unit="sentence")
    assert unlabelled_texts(cfg) == [
        "Loved it.",
        "The cast shines!",
        "Would watch again?",
        "Dull.",
        "Two hours I will not get back.",
    ]


def test_text_unit_keeps_rows_whole(tmp_path):
    texts = unlabelled_texts(DistillConfig(teacher="t", unlabelled=str(_reviews(tmp_path))))
    assert len(texts) == 2 and texts[1] == "Dull. Two hours I will not get back."


def test_limit_is_a_seeded_sample_in_file_order(tmp_path):
    cfg = DistillConfig(teacher="t", unlabelled=str(_reviews(tmp_path)), unlabelled_unit="sentence", unlabelled_limit=3)
    every = unlabelled_texts(DistillConfig(teacher="t", unlabelled=cfg.unlabelled, unlabelled_unit="sentence"))
    first, again = unlabelled_texts(cfg, seed=7), unlabelled_texts(cfg, seed=7)
    assert first == again and len(first) == 3
    assert first == sorted(first, key=every.index)  # file order kept
    samples = {tuple(unlabelled_texts(cfg, seed=seed)) for seed in range(20)}
    assert len(samples) > 1  # the seed matters


def test_limit_above_the_count_keeps_everything(tmp_path):
    cfg = DistillConfig(teacher="t", unlabelled=str(_reviews(tmp_path)), unlabelled_limit=100)
    assert len(unlabelled_texts(cfg)) == 2


def test_a_file_of_markup_only_has_no_usable_sentence(tmp_path):
    path = tmp_path / "breaks.txt"
    path.write_text("<br /><br />\n<BR>\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"breaks.txt: no usable text"):
        unlabelled_texts(DistillConfig(teacher="t", unlabelled=str(path), unlabelled_unit="sentence"))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"unlabelled": "u.txt", "unlabelled_unit": "paragraph"},
            r"distill.unlabelled_unit: 'paragraph' is not one of",
        ),
        ({"unlabelled": "u.txt", "unlabelled_limit": 0}, r"distill.unlabelled_limit: must be > 0"),
        ({"unlabelled_unit": "sentence"}, r"distill.unlabelled_unit: read only with distill.unlabelled"),
        ({"unlabelled_limit": 5}, r"distill.unlabelled_limit: read only with distill.unlabelled"),
    ],
)
def test_misuse_is_refused_naming_the_field(fields, message):
    with pytest.raises(ConfigError, match=message):
        DistillConfig(teacher="t", **fields)


def test_sentence_ends_need_a_capital_digit_or_quote_after_them():
    assert split_sentences('He said "wow." Then left. i.e. nothing... and 2.5 hours') == [
        'He said "wow."',
        "Then left. i.e. nothing... and 2.5 hours",
    ]
