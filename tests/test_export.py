"""Export: merged HF folder, ONNX fp32 and int8 parity on a tiny model, the parity report, the command."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sentitune import results
from sentitune.cli import main
from sentitune.export import PARITY_FILE, export_run, format_report, int8_warning
from sentitune.inference import EXPORT_MANIFEST, Predictor
from sentitune.training import train


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model_dir, tiny_data):
    from sentitune.config import RunConfig

    cfg = RunConfig.from_dict(
        {
            "model": str(tiny_model_dir),
            "data": {
                "dataset": "files",
                "train_file": str(tiny_data["train"]),
                "test_file": str(tiny_data["test"]),
                "validation_size": 16,
                "max_length": 32,
            },
            "method": {"name": "lora"},
            "train": {
                "max_steps": 3,
                "batch_size": 8,
                "eval_batch_size": 16,
                "logging_steps": 1,
                "eval_strategy": "no",
                "warmup_steps_excluded_from_throughput": 1,
            },
        }
    )
    folder = tmp_path_factory.mktemp("export") / "lora"
    train(cfg, folder)
    return folder


@pytest.fixture(scope="module")
def onnx_export(lora_run, tmp_path_factory):
    output = tmp_path_factory.mktemp("exported") / "lora-int8"
    report = export_run(lora_run, output, fmt="onnx", quantize="int8")
    return output, report


TEXTS = [
    "a gorgeous , witty film",
    "x",
    "it never finds its footing , and by the end i had stopped caring",
    "",
    "boring and far too long indeed",
]


def test_onnx_fp32_matches_torch_and_int8_stays_close(lora_run, onnx_export):
    output, _ = onnx_export
    torch_p = Predictor.load(lora_run, device="cpu").predict_proba(TEXTS)
    fp32 = Predictor.load(output, variant="fp32")
    int8 = Predictor.load(output)  # int8 is the default once quantised
    assert (fp32.backend, fp32.variant, int8.variant) == ("onnx", "fp32", "int8")
    np.testing.assert_allclose(fp32.predict_proba(TEXTS), torch_p, atol=1e-5)
    np.testing.assert_allclose(int8.predict_proba(TEXTS), torch_p, atol=2e-2)


def test_onnx_axes_are_dynamic(onnx_export):
    output, _ = onnx_export
    predictor = Predictor.load(output, variant="fp32")
    inputs = {i.name: i.shape for i in predictor.session.get_inputs()}
    assert set(inputs) == {"input_ids", "attention_mask"}
    assert all(isinstance(dim, str) for shape in inputs.values() for dim in shape)
    # 1 x 3 and 7 x 32: batch and sequence sizes other than the traced example's.
    assert predictor.predict_proba(["hi"]).shape == (1, 2)
    assert predictor.predict_proba(["word " * 100] * 7).shape == (7, 2)


def test_export_folder_carries_what_the_predictor_needs(lora_run, onnx_export):
    output, report = onnx_export
    manifest = json.loads((output / EXPORT_MANIFEST).read_text())
    run = results.load_run(lora_run)
    assert manifest["label_names"] == run.label_names
    assert manifest["max_length"] == 32 and manifest["truncation"] == "head"
    assert manifest["files"] == {"fp32": "model.onnx", "int8": "model.int8.onnx"}
    assert (output / "tokenizer.json").exists() and (output / "config.json").exists()
    saved = json.loads((output / PARITY_FILE).read_text())
    assert set(saved["variants"]) == {"torch", "onnx-fp32", "onnx-int8"}
    assert saved["examples"] == len(run.predictions())
    for row in saved["variants"].values():
        assert {"accuracy", "accuracy_drop_points", "max_abs_probability_diff", "size_mib"} <= set(row)
    assert saved["variants"]["onnx-fp32"]["max_abs_probability_diff"] < 1e-5
    assert report["output"] == str(output)
    assert not list(output.parent.glob(".lora-int8.*")), "staging folder left behind"


def test_hf_export_loads_with_plain_transformers(lora_run, tmp_path):
    from transformers import AutoModelForSequenceClassification

    output = tmp_path / "hf"
    report = export_run(lora_run, output, fmt="hf")
    assert report["variants"]["hf"]["max_abs_probability_diff"] < 1e-6
    model = AutoModelForSequenceClassification.from_pretrained(output)
    assert model.config.id2label == {0: "negative", 1: "positive"}
    assert not any("lora_" in name for name, _ in model.named_parameters())
    np.testing.assert_allclose(
        Predictor.load(output, device="cpu").predict_proba(TEXTS),
        Predictor.load(lora_run, device="cpu").predict_proba(TEXTS),
        atol=1e-6,
    )


def test_parity_data_override_and_report_text(lora_run, tmp_path):
    data = tmp_path / "parity.csv"
    data.write_text("text,label\n" + "".join(f"sample {i},{'positive' if i % 2 else 'negative'}\n" for i in range(10)))
    report = export_run(lora_run, tmp_path / "hf", fmt="hf", parity_file=data)
    assert report["examples"] == 10 and report["data"] == str(data)
    assert "hf" in format_report(report)


def test_int8_warning_is_loud_only_past_tolerance():
    row = {"accuracy_drop_points": 0.4}
    assert int8_warning({"variants": {"onnx-int8": row}}) is None
    row["accuracy_drop_points"] = 1.2
    assert "WARNING" in int8_warning({"variants": {"onnx-int8": row}})
    row.update(only_reference_correct=9, only_variant_correct=3, mcnemar_p_value=0.146)
    warning = int8_warning({"variants": {"onnx-int8": row}})
    assert "wrong on 9 examples" in warning and "p = 0.146, not significant" in warning


def test_parity_report_pairs_each_variant_with_the_reference():
    from sentitune.export import parity_report

    class Fixed:
        def __init__(self, probabilities):
            self.probabilities = np.asarray(probabilities, dtype=float)

        def predict_proba(self, texts, batch_size=64):
            return self.probabilities[: len(texts)]

    gold = np.array([0, 1, 1, 0, 1])
    reference = Fixed([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.7, 0.3], [0.6, 0.4]])  # 4 of 5 right
    variant = Fixed([[0.9, 0.1], [0.6, 0.4], [0.4, 0.6], [0.7, 0.3], [0.3, 0.7]])  # swaps examples 1 and 4
    report = parity_report({"torch": reference, "onnx-int8": variant}, ["t"] * 5, gold)
    row = report["variants"]["onnx-int8"]
    assert (row["only_reference_correct"], row["only_variant_correct"]) == (1, 1)
    assert row["accuracy_drop_points"] == 0 and row["mcnemar_p_value"] == 1.0
    assert row["prediction_agreement"] == 0.6
    assert "McNemar p" in format_report(
        {**report, "data": "d"} | {"variants": {name: {**r, "size_mib": 1.0} for name, r in report["variants"].items()}}
    )


def test_export_refusals(lora_run, onnx_export, tmp_path, tiny_config, capsys):
    output, _ = onnx_export
    assert main(["export", "--model", str(lora_run), "--output", str(output)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (
        main(
            [
                "export",
                "--model",
                str(lora_run),
                "--format",
                "hf",
                "--quantize",
                "int8",
                "--output",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    other = tmp_path / "not-an-export"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    assert main(["export", "--model", str(lora_run), "--output", str(other), "--overwrite"]) == 2
    assert (other / "keep.txt").exists()
    tfidf = tmp_path / "tfidf"
    train(tiny_config("tfidf"), tfidf)
    assert main(["export", "--model", str(tfidf), "--output", str(tmp_path / "t")]) == 2
    assert "deployable" in capsys.readouterr().err


def test_dynamo_exporter_matches_torch_too(lora_run, tmp_path):
    import onnxruntime as ort

    from sentitune.export import export_onnx
    from sentitune.inference import _pad

    predictor = Predictor.load(lora_run, device="cpu")
    assert export_onnx(predictor.model, predictor.tokenizer, tmp_path / "m.onnx", exporter="dynamo") == "dynamo"
    ids = predictor.tokenizer(TEXTS)["input_ids"]
    input_ids, mask = _pad(ids, 0)
    logits = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"input_ids": input_ids, "attention_mask": mask})[
        0
    ]
    expected = predictor._runner(input_ids, mask)
    np.testing.assert_allclose(logits, expected, atol=1e-5)


def test_export_fuses_transformer_operators_and_keeps_parity(onnx_export):
    import onnx

    output, report = onnx_export
    manifest = json.loads((output / EXPORT_MANIFEST).read_text())
    fused = manifest["fused_operators"]
    assert "skipped" not in fused, fused
    # The eager-attention export is what lets ONNX Runtime match attention: 2 layers -> 2 Attention ops.
    assert fused.get("Attention") == 2 and fused.get("SkipLayerNormalization") == 4
    ops = {node.op_type for node in onnx.load(str(output / "model.onnx")).graph.node}
    assert {"Attention", "SkipLayerNormalization"} <= ops
    assert report["variants"]["onnx-fp32"]["max_abs_probability_diff"] < 1e-5


def test_fusion_that_changes_logits_is_refused(lora_run, tmp_path, monkeypatch):
    from onnxruntime.transformers import optimizer

    from sentitune.export import export_onnx, fuse_transformer_ops

    predictor = Predictor.load(lora_run, device="cpu")
    path = tmp_path / "m.onnx"
    export_onnx(predictor.model, predictor.tokenizer, path)
    original = path.read_bytes()
    sample = {
        k: v.astype(np.int64)
        for k, v in predictor.tokenizer(TEXTS, padding=True, return_tensors="np").items()
        if k in ("input_ids", "attention_mask")
    }
    outcome = fuse_transformer_ops(path, predictor.model.config, sample, tolerance=-1.0)  # nothing can pass
    assert "differ" in outcome["skipped"] and path.read_bytes() == original
    assert not list(tmp_path.glob("*.fused.onnx"))

    def broken(*args, **kwargs):
        raise RuntimeError("unknown graph")

    monkeypatch.setattr(optimizer, "optimize_model", broken)
    assert "unknown graph" in fuse_transformer_ops(path, predictor.model.config, sample)["skipped"]
    assert path.read_bytes() == original


def test_parallel_onnx_sessions_give_the_same_probabilities(onnx_export):
    output, _ = onnx_export
    texts = [f"{'very ' * (i % 9)}good film number {i}" for i in range(150)]
    one = Predictor.load(output, variant="fp32", workers=1)
    three = Predictor.load(output, variant="fp32", workers=3, threads=1)
    assert (one.describe()["onnx_sessions"], three.describe()["onnx_sessions"]) == (1, 3)
    np.testing.assert_allclose(
        three.predict_proba(texts, batch_size=8), one.predict_proba(texts, batch_size=8), atol=1e-6
    )


def test_predict_cli_runs_an_export_on_parallel_sessions(onnx_export, capsys):
    output, _ = onnx_export
    texts = ["a gorgeous , witty film", "boring and far too long indeed", "x"]
    assert main(["predict", "--model", str(output), "--workers", "2", "--threads", "1", *texts]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected = Predictor.load(output, workers=1).predict_proba(texts)
    assert [r["text"] for r in rows] == texts
    np.testing.assert_allclose([list(r["probabilities"].values()) for r in rows], expected, atol=1e-6)
