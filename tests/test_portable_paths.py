"""Run records name no machine: metrics.json and its provenance write the model, data and program
paths as portable_path does (`<site-packages>/...`, `$SENTITUNE_DATA_DIR/...`, relative to the working
directory), while config.yaml keeps the paths a resume loads from."""

from __future__ import annotations

import json
import shutil

from conftest import make_tiny_config

from sentitune import results
from sentitune.runtime import DATA_DIR_ENV, portable_path


def test_portable_path_leaves_unknown_places_and_names_alone(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    assert portable_path(str(tmp_path / "runs" / "a")) == "runs/a"
    assert portable_path(str(tmp_path)) == "."
    assert portable_path(f"file:{tmp_path / 'data'}") == f"file:${DATA_DIR_ENV}"
    assert portable_path("minilm-l6") == "minilm-l6"
    # Under `/` lies every path: a working directory there shortens nothing.
    assert portable_path("/opt/model", cwd="/", home="/") == "/opt/model"


def test_a_run_records_no_machine_path(tmp_path, monkeypatch, tiny_model_dir, tiny_data):
    # The model inside an environment's site-packages (as the bundled MiniLM is), the training file
    # under the working directory, the test file under the data folder.
    model = tmp_path / "env" / "lib" / "python3.11" / "site-packages" / "tiny_bert"
    shutil.copytree(tiny_model_dir, model)
    work, data_dir = tmp_path / "work", tmp_path / "datasets"
    (work / "mine").mkdir(parents=True)
    (data_dir / "mine").mkdir(parents=True)
    train_file = shutil.copy(tiny_data["train"], work / "mine" / "train.csv")
    test_file = shutil.copy(tiny_data["test"], data_dir / "mine" / "test.csv")
    monkeypatch.setenv(DATA_DIR_ENV, str(data_dir))
    monkeypatch.chdir(work)

    from sentitune.training import train

    run_dir = work / "runs" / "a"
    cfg = make_tiny_config(model, {"train": train_file, "test": test_file}, "full")
    train(cfg, run_dir)

    text = (run_dir / results.METRICS_FILE).read_text(encoding="utf-8")
    assert str(tmp_path) not in text and "site-packages/" not in text
    metrics = json.loads(text)
    assert metrics["model_location"] == "<site-packages>/tiny_bert"
    assert metrics["model"] == "<site-packages>/tiny_bert"
    assert metrics["data_source"] == f"files:mine/train.csv,${DATA_DIR_ENV}/mine/test.csv"
    assert str(tmp_path) not in metrics["provenance"]["command"]
    # config.yaml is what a resume reloads: it keeps the paths as given, and the fingerprint with them.
    run = results.load_run(run_dir)
    assert run.config.model == str(model)
    assert run.metrics["fingerprint"] == cfg.fingerprint()
