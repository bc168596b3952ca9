"""Domain-adaptive pretraining on the tiny BERT: the output folder fine-tunes, keeps the source pooler,
and the sparse masked-LM loss equals BertForMaskedLM's own."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import NEGATIVE, POSITIVE, write_rows

from sentitune.cli import EXIT_USER_ERROR, main
from sentitune.config import ConfigError
from sentitune.data import DataError
from sentitune.pretraining import (
    PretrainConfig,
    encode_for_mlm,
    fixed_masked_batches,
    load_mlm_model,
    masked_lm_loss,
    pretrain,
)
from sentitune.results import RunFolderError
from sentitune.training import train


TEXTS = [f"{a} , {b} ." for a in POSITIVE for b in NEGATIVE]


@pytest.fixture(scope="module")
def adapted(tiny_model_dir, tmp_path_factory):
    """A tiny model after 3 masked-LM steps on a TXT file."""
    folder = tmp_path_factory.mktemp("dapt")
    (folder / "texts.txt").write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    cfg = PretrainConfig(
        model=str(tiny_model_dir),
        texts=str(folder / "texts.txt"),
        max_steps=3,
        batch_size=8,
        max_length=16,
        eval_texts=10,
        logging_steps=1,
    )
    lines: list[str] = []
    summary = pretrain(cfg, folder / "out", echo=lines.append)
    return folder / "out", summary, lines


def test_output_folder_is_a_model_folder_with_metadata(adapted):
    out, summary, lines = adapted
    assert {"config.json", "model.safetensors", "tokenizer.json", "pretrain.json", "history.csv"} <= {
        p.name for p in out.iterdir()
    }
    assert not (out / "checkpoints").exists()
    saved = json.loads((out / "pretrain.json").read_text())
    assert saved["train_steps"] == 3 and saved["status"] == "ok"
    # The tiny model, like the bundled MiniLM, ships no MLM head: the metadata says so.
    assert "cls.predictions.transform.dense.weight" in saved["mlm_head_initialised"]
    assert saved["mlm_head_note"].startswith("freshly initialised")
    assert saved["decoder_tied_to_word_embeddings"] is True
    assert saved["eval_texts"] == 10 and saved["train_texts"] == len(TEXTS) - 10
    assert saved["eval_mlm_loss_before"] > 0 and saved["eval_mlm_loss_after"] > 0
    assert any(line.startswith("step 1/3") for line in lines)
    assert any("no MLM head weights" in line for line in lines)


def test_encoder_changes_pooler_is_copied_and_head_reloads(adapted, tiny_model_dir):
    from transformers import AutoModel

    out, _, _ = adapted
    before = AutoModel.from_pretrained(tiny_model_dir)
    after = AutoModel.from_pretrained(out)
    assert not torch.equal(
        before.encoder.layer[0].attention.self.query.weight, after.encoder.layer[0].attention.self.query.weight
    )
    # BertForMaskedLM has no pooler; the source's is copied so `pooler+classifier` starts from it.
    assert torch.equal(before.pooler.dense.weight, after.pooler.dense.weight)
    _, fresh = load_mlm_model(str(out))
    assert fresh == []  # continuing pretraining from the folder keeps the trained head


def test_adapted_folder_fine_tunes(adapted, tiny_config, tmp_path):
    out, _, _ = adapted
    metrics = train(tiny_config("full", model=str(out)), tmp_path / "run")
    assert metrics["status"] == "ok" and metrics["model"] == str(out)


def test_sparse_loss_equals_the_models_own(tiny_model_dir):
    from sentitune.models import load_tokenizer, resolve_model

    tokenizer = load_tokenizer(resolve_model(str(tiny_model_dir)))
    model, _ = load_mlm_model(str(tiny_model_dir))
    model.eval()
    batch = fixed_masked_batches(tokenizer, encode_for_mlm(tokenizer, TEXTS[:8], 16), 0.15, 8, seed=0)[0]
    with torch.no_grad():
        assert float(masked_lm_loss(model, batch)) == pytest.approx(float(model(**batch).loss), rel=1e-5)


def test_chunking_keeps_every_token(tiny_model_dir):
    from sentitune.models import load_tokenizer, resolve_model

    tokenizer = load_tokenizer(resolve_model(str(tiny_model_dir)))
    text = " ".join(["word"] * 20)  # 20 tokens -> windows of 6 + [CLS]/[SEP]
    chunks = encode_for_mlm(tokenizer, [text], 8, "chunk")
    assert [len(c) for c in chunks] == [8, 8, 8, 4]
    assert all(c[0] == tokenizer.cls_token_id and c[-1] == tokenizer.sep_token_id for c in chunks)
    assert [len(c) for c in encode_for_mlm(tokenizer, [text], 8, "truncate")] == [8]


def test_cli_named_dataset_and_errors(tiny_model_dir, tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    (data / "imdb").mkdir(parents=True)
    write_rows(data / "imdb" / "train.csv", [(t, "1", "8") for t in TEXTS[:40]], header=("text", "label", "rating"))
    monkeypatch.setenv("SENTITUNE_DATA_DIR", str(data))
    out = tmp_path / "out"
    args = [
        "pretrain",
        "--model",
        str(tiny_model_dir),
        "--texts",
        "imdb",
        "--output-dir",
        str(out),
        "--max-steps",
        "1",
        "--batch-size",
        "4",
        "--max-length",
        "16",
        "--eval-texts",
        "0",
    ]
    assert main(args) == 0
    saved = json.loads((out / "pretrain.json").read_text())
    assert saved["texts_source"].endswith("imdb/train.csv:text") and saved["train_texts"] == 40
    # A second run into the same folder needs --overwrite.
    assert main(args) == EXIT_USER_ERROR
    assert "--overwrite" in capsys.readouterr().err
    assert main(args[:3] + ["--texts", str(tmp_path / "missing.csv")] + args[5:] + ["--overwrite"]) == EXIT_USER_ERROR
    assert "not a file" in capsys.readouterr().err


def test_config_validation_names_the_field():
    with pytest.raises(ConfigError, match="pretrain.mlm_probability"):
        PretrainConfig(mlm_probability=1.5)
    with pytest.raises(ConfigError, match="pretrain.max_length"):
        PretrainConfig(max_length=1000)
    with pytest.raises(ConfigError, match="pretrain.long_texts"):
        PretrainConfig(long_texts="pack")


def test_errors_before_anything_is_written(tiny_model_dir, tmp_path):
    (tmp_path / "empty.txt").write_text("\n  \n", encoding="utf-8")
    with pytest.raises(DataError, match="no non-empty texts"):
        pretrain(PretrainConfig(model=str(tiny_model_dir), texts=str(tmp_path / "empty.txt")), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(RunFolderError):
        pretrain(PretrainConfig(model=str(tiny_model_dir), texts=str(tmp_path / "empty.txt")), tmp_path / "full")


def test_a_diverging_loss_stops_pretraining_before_weights_are_written(tiny_model_dir, tmp_path, monkeypatch):
    import sentitune.pretraining as pretraining

    (tmp_path / "texts.txt").write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    real_loss = pretraining.masked_lm_loss

    def diverging(model, batch, reduction="mean"):
        loss = real_loss(model, batch, reduction)
        return loss * float("nan") if model.training else loss  # held-out evaluation stays finite

    monkeypatch.setattr(pretraining, "masked_lm_loss", diverging)
    cfg = PretrainConfig(
        model=str(tiny_model_dir),
        texts=str(tmp_path / "texts.txt"),
        max_steps=3,
        batch_size=8,
        max_length=16,
        eval_texts=10,
        logging_steps=1,
    )
    with pytest.raises(Exception, match="MLM loss became nan at step 1"):
        pretrain(cfg, tmp_path / "out", echo=lambda line: None)
    assert not list((tmp_path / "out").glob("*.safetensors"))
