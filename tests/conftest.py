"""Shared fixtures: a tiny random BERT with the real bert-base-uncased vocab, and tiny labelled files.

Odd sizes (hidden 32, intermediate 37) so that shape bugs cannot hide behind coincidences.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest


os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Code paths are compared at 1e-5 (predictor vs run, ONNX vs torch); bf16 autocast, which `auto` picks
# on CPUs with native bf16, would make that depend on the machine. tests/test_precision.py covers the
# choice with the check mocked, and bf16 runs with it forced.
os.environ.setdefault("SENTITUNE_CPU_BF16", "0")
# Under pytest-xdist (the README's `-n 2`) each worker gets one core: two workers each running two
# BLAS threads on two cores thrash (the brief measured 37 -> 5 samples/s for two trainings at once).
# Child processes (CLI runs, servers) inherit the setting through the environment.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _thread_variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[_thread_variable] = "1"

POSITIVE = [
    "a gorgeous , witty film",
    "great acting and a moving story",
    "i loved every minute",
    "a delightful , warm comedy",
    "brilliant and funny",
    "the best movie of the year",
    "wonderful performances all round",
    "charming and smart",
    "an absolute joy",
    "superb direction",
]
NEGATIVE = [
    "it never finds its footing",
    "a dull , lifeless mess",
    "i hated every minute",
    "boring and far too long",
    "the worst movie of the year",
    "awful acting and a silly plot",
    "a tedious , pointless film",
    "painfully unfunny",
    "a complete waste of time",
    "clumsy and flat",
]


def shared_data_dir() -> Path | None:
    candidates = [os.environ.get("SENTITUNE_DATA_DIR"), Path(__file__).resolve().parents[2] / "shared" / "data"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "sst2" / "train.tsv").exists():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from sentitune.models import resolve_model

    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=512,
    )
    BertModel(config).save_pretrained(folder)
    # The bundled MiniLM ships the real bert-base-uncased WordPiece vocab.
    AutoTokenizer.from_pretrained(resolve_model("minilm-l6").location).save_pretrained(folder)
    return folder


def write_rows(path: Path, rows: list[tuple[str, str]], header=("text", "label")) -> Path:
    import csv

    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def sentiment_rows(count: int, seed: int, labels=("negative", "positive")) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        positive = i % 2 == 1
        text = rng.choice(POSITIVE if positive else NEGATIVE)
        rows.append((f"{text} {rng.choice(['', '.', '!', 'indeed', 'really'])}".strip(), labels[int(positive)]))
    return rows


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tiny-data")
    return {
        "train": write_rows(folder / "train.csv", sentiment_rows(64, 0)),
        "test": write_rows(folder / "test.csv", sentiment_rows(24, 1)),
    }


def make_tiny_config(model_dir: Path, data: dict[str, Path], method: str = "full", **overrides):
    """A RunConfig for a few-step run of `method` on the tiny model and files."""
    from sentitune.config import RunConfig

    raw = {
        "model": str(model_dir),
        "data": {
            "dataset": "files",
            "train_file": str(data["train"]),
            "test_file": str(data["test"]),
            "validation_size": 16,
            "max_length": 32,
        },
        "method": {"name": method},
        "train": {
            "max_steps": 4,
            "batch_size": 8,
            "eval_batch_size": 16,
            "logging_steps": 1,
            "eval_strategy": "no",
            "warmup_steps_excluded_from_throughput": 1,
        },
    }
    cfg = RunConfig.from_dict(raw)
    return cfg.override(overrides) if overrides else cfg


@pytest.fixture
def tiny_config(tiny_model_dir, tiny_data):
    """A RunConfig factory for a few-step run of any method on the tiny model and files."""

    def make(method: str = "full", **overrides):
        return make_tiny_config(tiny_model_dir, tiny_data, method, **overrides)

    return make


@pytest.fixture(scope="session")
def trained_run(tiny_model_dir, tiny_data, tmp_path_factory):
    """`trained_run(method)` -> a finished tiny run folder, trained once per session and shared.

    Tests that only read a run folder use this instead of training their own; do not modify the folder.
    """
    from sentitune.training import train

    cache: dict[str, Path] = {}

    def get(method: str = "full") -> Path:
        if method not in cache:
            folder = tmp_path_factory.mktemp(f"run-{method}") / "run"
            train(make_tiny_config(tiny_model_dir, tiny_data, method), folder)
            cache[method] = folder
        return cache[method]

    return get
