"""Model sweep: `shrink` (layer dropping) makes a second model, `compare --models` runs every neural
variant on each model with the model as an explicit axis, and the report plots accuracy against size
and inference speed."""

from __future__ import annotations

import json

import pytest
import torch

from sentitune import compare
from sentitune.cli import EXIT_USER_ERROR, main
from sentitune.config import ConfigError
from sentitune.models import shrink_model
from sentitune.results import load_run
from sentitune.training import train


@pytest.fixture(scope="module")
def shrunk(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("shrunk") / "tiny-l1"
    info = shrink_model(str(tiny_model_dir), 1, folder)
    return folder, info


def test_shrink_keeps_the_bottom_layers(shrunk, tiny_model_dir):
    from transformers import AutoModel

    folder, info = shrunk
    assert json.loads((folder / "config.json").read_text())["num_hidden_layers"] == 1
    assert (folder / "model.safetensors").exists() and (folder / "tokenizer.json").exists()
    assert json.loads((folder / "shrink.json").read_text())["layers_kept"] == 1
    source, small = AutoModel.from_pretrained(tiny_model_dir), AutoModel.from_pretrained(folder)
    assert len(small.encoder.layer) == 1
    assert torch.equal(source.encoder.layer[0].output.dense.weight, small.encoder.layer[0].output.dense.weight)
    assert torch.equal(source.pooler.dense.weight, small.pooler.dense.weight)
    assert info["params_after"] == sum(p.numel() for p in small.parameters()) < info["params_before"]


def test_shrink_cli_and_its_errors(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "l1"
    assert main(["shrink", "--model", str(tiny_model_dir), "--layers", "1", "--output-dir", str(out)]) == 0
    assert "2 -> 1 encoder layers" in capsys.readouterr().out
    assert (
        main(["shrink", "--model", str(tiny_model_dir), "--layers", "1", "--output-dir", str(out)]) == EXIT_USER_ERROR
    )
    assert "--overwrite" in capsys.readouterr().err
    assert (
        main(["shrink", "--model", str(tiny_model_dir), "--layers", "2", "--output-dir", str(tmp_path / "x")])
        == EXIT_USER_ERROR
    )
    assert "--layers: must be between 1 and 1" in capsys.readouterr().err


def test_sweep_names_variants_by_model_and_drops_model_from_the_fingerprint(tiny_config, shrunk):
    folder, _ = shrunk
    base_model = tiny_config().model
    base = tiny_config("full").override(
        {
            "compare.methods": ["full", "lora", "tfidf"],
            "compare.seeds": [1],
            "compare.models": [base_model, str(folder)],
        }
    )
    runs = compare.expand_runs(base)
    short = base_model.rstrip("/").split("/")[-1]
    # tfidf has no encoder: it runs once, not once per model.
    assert [r.name for r in runs] == [
        f"{short}-full-s1",
        f"{short}-lora-s1",
        "tiny-l1-full-s1",
        "tiny-l1-lora-s1",
        "tfidf-s1",
    ]
    assert [r.config.model for r in runs[:4]] == [base_model, base_model, str(folder), str(folder)]
    assert len({r.config.fingerprint() for r in runs}) == 1
    assert "model" not in runs[0].config.scaffolding()
    # Without a declared sweep the model stays part of the scaffolding, so mixing models is refused.
    a, b = tiny_config("full"), tiny_config("full", model=str(folder))
    with pytest.raises(ConfigError, match=r"^.*model \("):
        compare.verify_same_scaffolding({"a": a, "b": b})


def test_sweep_configuration_errors(tiny_config):
    with pytest.raises(ConfigError, match="compare.models: duplicates"):
        tiny_config("full", **{"compare.models": ["a", "a"]})
    base = tiny_config("full", **{"compare.models": ["x/minilm", "y/minilm"]})
    with pytest.raises(ConfigError, match="compare.models: .* both shorten to 'minilm'"):
        compare.expand_variants(base)


def test_two_model_comparison_and_report(tiny_config, shrunk, tmp_path):
    from sentitune.reporting.render import build_report

    folder, _ = shrunk
    base = tiny_config("full", **{"train.max_steps": 2}).override(
        {
            "compare.methods": ["full"],
            "compare.seeds": [1],
            "compare.models": [tiny_config().model, str(folder)],
            "compare.suites": [],
        }
    )
    # Runs trained in-process (compare's subprocess launching is tested in test_compare.py); compare
    # then finds them finished, checks their scaffolding and writes the results.
    for run in compare.expand_runs(base):
        train(run.config, tmp_path / "runs" / run.name)
    lines: list[str] = []
    document = compare.run_comparison(base, tmp_path, echo=lines.append)
    assert lines[0].startswith("2 of 2 runs already finished")
    rows = document["runs"]
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert [r["model"] for r in rows] == [tiny_config().model, str(folder)]
    assert rows[1]["params_total"] < rows[0]["params_total"]
    assert all(r["eval_samples_per_second"] > 0 for r in rows)
    assert [s["model"] for s in document["summary"]] == [r["model"] for r in rows]
    assert "model" not in document["scaffolding"]
    assert load_run(tmp_path / "runs" / rows[1]["run_name"]).config.model == str(folder)

    markdown, _ = build_report(tmp_path)
    text = markdown.read_text()
    assert "Model sweep: accuracy vs size vs inference speed" in text and "(model sweep)" in text
    assert "everything but model, method and seed held fixed" in text

    # The refusal still holds for everything else: other data settings in the same folder.
    with pytest.raises(ConfigError, match=r"data\.max_length"):
        compare.run_comparison(base.override({"data.max_length": 16}), tmp_path, echo=lambda *_: None)


def test_missing_sweep_model_fails_before_any_run(tiny_config, tmp_path):
    from sentitune.models import ModelNotAvailable

    base = tiny_config("full", **{"compare.methods": ["full"], "compare.models": [str(tmp_path / "nope")]})
    with pytest.raises(ModelNotAvailable):
        compare.run_comparison(base, tmp_path / "out", echo=lambda *_: None)
    assert not (tmp_path / "out").exists()
