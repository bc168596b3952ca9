"""int8 that keeps its accuracy: layers measured as sensitive (on the validation slice, never the test
split) or named by the user stay fp32 in the int8 graph, and the parity report says which and why."""

from __future__ import annotations

import json

import onnx
import pytest

from sentitune import export
from sentitune.cli import main
from sentitune.export import PARITY_FILE, choose_fp32_layers, describe_node, export_run, int8_node_names
from sentitune.inference import EXPORT_MANIFEST, Predictor


@pytest.fixture
def lora_run(trained_run):
    return trained_run("lora")


def float_and_quantised(path) -> tuple[dict[str, str], set[str]]:
    """({node name: op type}, names of quantised nodes) of an ONNX graph."""
    nodes = onnx.load(str(path)).graph.node
    return {n.name: n.op_type for n in nodes}, {
        n.name.removesuffix("_quant") for n in nodes if n.name.endswith("_quant")
    }


def test_choose_fp32_layers_keeps_only_outliers_and_at_most_the_limit():
    values = [1e-3, 1.1e-3, 0.9e-3, 1e-3, 9e-3, 3e-3, 1e-3, 1.9e-3]
    rows = {f"n{i}": {"mean_abs_probability_diff": d} for i, d in enumerate(values)}
    chosen = choose_fp32_layers(rows)
    # The median is 1.05e-3: n4 and n5 are outliers, n7 (1.8x) is not; most sensitive first.
    assert list(chosen) == ["n4", "n5"]
    assert "8.6x the median" in chosen["n4"]
    assert list(choose_fp32_layers(rows, limit=1)) == ["n4"]
    flat = {f"n{i}": {"mean_abs_probability_diff": 1e-3} for i in range(5)}
    assert choose_fp32_layers(flat) == {} and choose_fp32_layers({}) == {}
    assert choose_fp32_layers({"a": {"mean_abs_probability_diff": 0.0}}) == {}


def test_node_labels_name_the_bert_roles():
    assert describe_node("/inner/bert/encoder/layer.1/intermediate/dense/MatMul") == "layer 1 FFN input"
    assert describe_node("/inner/bert/encoder/layer.0/attention/output/dense/MatMul") == "layer 0 attention output"
    assert describe_node("/inner/classifier/Gemm_MatMul") == "classifier"
    assert describe_node("EmbedLayerNormalization_0") == "embeddings"


def test_named_layers_stay_float_and_the_report_lists_them(lora_run, tmp_path):
    output = tmp_path / "named"
    report = export_run(lora_run, output, quantize="int8", int8_keep_fp32="classifier,layer 1 FFN output")
    ops, quantised = float_and_quantised(output / "model.int8.onnx")
    kept = [row["node"] for row in report["int8_fp32_layers"]]
    assert {describe_node(node) for node in kept} == {"classifier", "layer 1 FFN output"}
    for node in kept:
        assert ops[node] == "MatMul" and node not in quantised, node
    assert quantised, "the other layers are still int8"
    manifest = json.loads((output / EXPORT_MANIFEST).read_text())
    assert set(manifest["int8_keep_fp32"]["kept"]) == set(kept)
    assert json.loads((output / PARITY_FILE).read_text())["int8_fp32_layers"] == report["int8_fp32_layers"]
    assert "classifier (" in export.format_report(report)
    assert Predictor.load(output).predict_proba(["a fine film"]).shape == (1, 2)


def test_auto_measures_every_layer_on_validation_only(lora_run, tmp_path, tiny_data, monkeypatch):
    import sentitune.data

    opened, read_table = [], sentitune.data.read_table

    def spy(path, *args, **kwargs):
        opened.append(str(path))
        return read_table(path, *args, **kwargs)

    monkeypatch.setattr(sentitune.data, "read_table", spy)
    # Whatever the tiny random model measures, keep its most sensitive layer so the graph check bites.
    monkeypatch.setattr(
        export, "choose_fp32_layers", lambda s: {max(s, key=lambda n: s[n]["mean_abs_probability_diff"]): "top"}
    )
    monkeypatch.setattr(export, "KEPT_MUST_IMPROVE", float("inf"))
    output = tmp_path / "auto"
    report = export_run(lora_run, output, quantize="int8")
    assert str(tiny_data["test"]) not in opened and str(tiny_data["train"]) in opened

    choice = json.loads((output / EXPORT_MANIFEST).read_text())["int8_keep_fp32"]
    assert choice["choice"] == "auto"
    all_names = set(int8_node_names(output / "model.int8.onnx")) | set(choice["kept"])
    assert set(choice["sensitivity"]) == all_names  # one measurement per quantisable layer
    assert all(row["mean_abs_probability_diff"] >= 0 for row in choice["sensitivity"].values())
    ops, quantised = float_and_quantised(output / "model.int8.onnx")
    (node,) = choice["kept"]
    assert node not in quantised and ops[node] in ("MatMul", "Attention", "Gemm", "EmbedLayerNormalization")
    assert [row["node"] for row in report["int8_fp32_layers"]] == [node]
    assert choice["validation"]["examples"] == min(export.SENSITIVITY_EXAMPLES, 16)


def test_auto_without_the_validation_data_quantises_everything_and_says_so(lora_run, tmp_path, monkeypatch):
    from sentitune.data import DataError

    def missing(run_dir):
        raise DataError("train.csv: no such file")

    monkeypatch.setattr(export, "validation_texts", missing)
    choice = export_run(lora_run, tmp_path / "x", quantize="int8", parity=False)["manifest"]["int8_keep_fp32"]
    assert choice["kept"] == {} and "no validation slice" in choice["decision"]


def test_bad_keep_choices_are_one_line_refusals(lora_run, tmp_path, capsys):
    base = ["export", "--model", str(lora_run), "--output"]
    assert main([*base, str(tmp_path / "a"), "--int8-keep-fp32", "none"]) == 2
    assert "needs --quantize int8" in capsys.readouterr().err
    assert main([*base, str(tmp_path / "b"), "--quantize", "int8", "--int8-keep-fp32", "layer 9 pooler"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'layer 9 pooler'" in err[0]
    assert not (tmp_path / "b").exists()
