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
    monkeypatch.setattr(export, "INT8_DROP_LIMIT_POINTS", float("-inf"))  # the gate always sends it on
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


def test_auto_keeps_every_layer_int8_when_all_int8_is_within_the_limit_on_validation(lora_run, tmp_path, monkeypatch):
    measured = []
    monkeypatch.setattr(export, "INT8_DROP_LIMIT_POINTS", float("inf"))
    monkeypatch.setattr(export, "quantize_keeping_sensitive_layers", lambda *a, **k: measured.append(a))
    choice = export_run(lora_run, tmp_path / "gated", quantize="int8", parity=False)["manifest"]["int8_keep_fp32"]
    gate = choice["validation"]["gate"]
    assert choice["kept"] == {} and not measured  # no per-layer search once the gate passes
    assert "every layer is int8, the fastest choice" in choice["decision"]
    assert gate["examples"] == 16 and 0 <= gate["int8_accuracy"] <= 1 and 0 <= gate["fp32_accuracy"] <= 1
    assert gate["drop_points"] == pytest.approx(100 * (gate["fp32_accuracy"] - gate["int8_accuracy"]))
    export_run(lora_run, tmp_path / "none", quantize="int8", parity=False, int8_keep_fp32="none")
    _, quantised = float_and_quantised(tmp_path / "gated" / "model.int8.onnx")
    assert quantised == float_and_quantised(tmp_path / "none" / "model.int8.onnx")[1]  # same graph as `none`


def test_a_gate_failure_starts_the_layer_search_and_the_decision_says_why(lora_run, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "INT8_DROP_LIMIT_POINTS", float("-inf"))
    choice = export_run(lora_run, tmp_path / "searched", quantize="int8", parity=False)["manifest"]["int8_keep_fp32"]
    assert set(choice["sensitivity"])  # the per-layer search ran
    assert choice["decision"].startswith("all-int8 loses ") and "(limit -inf)" in choice["decision"]
    assert choice["validation"]["gate"]["examples"] == 16


def test_the_gate_has_no_accuracy_for_multi_hot_labels(tmp_path):
    assert export.int8_accuracy_gate(tmp_path / "a", tmp_path / "b", None, ["x"], [[0, 1]], 16) is None


def test_auto_without_the_validation_data_quantises_everything_and_says_so(lora_run, tmp_path, monkeypatch):
    from sentitune.data import DataError

    def missing(run_dir):
        raise DataError("train.csv: no such file")

    monkeypatch.setattr(export, "validation_slice", missing)
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


def tiny_graph_with_a_damaged_matmul(path, hidden: int = 8, vocab: int = 30522) -> str:
    """An embedding + three MatMuls ONNX classifier whose middle MatMul quantises badly; returns its name.

    Weights are quantised per output column, so an outlier column only coarsens itself; the damage
    is an outlier row on an input feature that is always zero: it adds nothing to the fp32 output
    but sets every column's int8 scale, so int8 rounds that MatMul's other weights to zero.
    """
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    first = np.eye(hidden, dtype=np.float32) + rng.normal(scale=0.1, size=(hidden, hidden)).astype(np.float32)
    first[:, 0] = 0.0  # feature 0 of the damaged MatMul's input is exactly zero, in fp32 and int8
    damaged = rng.normal(size=(hidden, hidden)).astype(np.float32)
    damaged[0] = 1e4
    weights = {
        "table": rng.normal(size=(vocab, hidden)).astype(np.float32),
        "bias": np.zeros(hidden, np.float32),  # an fp32 op between the Gather and the first MatMul
        "w_in": first,
        "w_damaged": damaged,
        "w_out": rng.normal(scale=3.0, size=(hidden, 2)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["embedded"], name="embed"),
        helper.make_node("Add", ["embedded", "bias"], ["shifted"], name="shift"),
        helper.make_node("MatMul", ["shifted", "w_in"], ["h1"], name="first/MatMul"),
        helper.make_node("MatMul", ["h1", "w_damaged"], ["h2"], name="damaged/MatMul"),
        helper.make_node("Relu", ["h2"], ["h3"], name="relu"),
        helper.make_node("ReduceMean", ["h3"], ["pooled"], name="pool", axes=[1], keepdims=0),
        helper.make_node("MatMul", ["pooled", "w_out"], ["logits"], name="classifier/MatMul"),
    ]
    graph = helper.make_graph(
        nodes,
        "damaged",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"]),
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(value, name) for name, value in weights.items()],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return "damaged/MatMul"


def test_auto_ranks_a_damaged_matmul_first_and_keeps_it_fp32(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    fp32, int8 = tmp_path / "model.onnx", tmp_path / "model.int8.onnx"
    damaged = tiny_graph_with_a_damaged_matmul(fp32)
    texts = ["a fine film", "dull and far too long", "the cast is wonderful", "not good", "an awful mess"] * 4
    outcome = export.quantize_keeping_sensitive_layers(
        fp32, int8, AutoTokenizer.from_pretrained(tiny_model_dir), texts, 16
    )
    sensitivity = outcome["sensitivity"]
    assert set(sensitivity) == {"first/MatMul", "damaged/MatMul", "classifier/MatMul"}
    ranking = sorted(sensitivity, key=lambda n: sensitivity[n]["mean_abs_probability_diff"], reverse=True)
    assert ranking[0] == damaged
    assert list(outcome["kept"]) == [damaged]
    assert damaged not in int8_node_names(int8) and set(int8_node_names(int8)) == set(ranking[1:])
    # Every node was measured in the one branched graph, none by a quantize_dynamic of its own.
    validation = outcome["validation"]
    assert validation["single_node_runs"] == {"quantize_dynamic": 0, "branches": 3}
    assert validation["chosen"]["mean_abs_probability_diff"] < validation["all_int8"]["mean_abs_probability_diff"]


def test_single_node_branches_compute_what_quantising_the_node_alone_does(lora_run, tmp_path):
    """The branched graph is the old measurement, not an estimate: for every node of the fused tiny BERT
    (EmbedLayerNormalization, Attention, MatMul, Gemm) it gives the probabilities of a graph that
    quantize_dynamic quantised with only that node."""
    import numpy as np

    from sentitune.inference import _pad

    export_run(lora_run, tmp_path / "e", quantize="int8", int8_keep_fp32="none", parity=False)
    fp32, int8 = tmp_path / "e" / "model.onnx", tmp_path / "e" / "model.int8.onnx"
    tokenizer = Predictor.load(tmp_path / "e").tokenizer
    texts = ["a fine film", "dull and far too long , with a cast that never wakes up", "not good"]
    ids = [tokenizer(text)["input_ids"] for text in texts]
    batches = [(np.array([0, 1]), *_pad(ids[:2], tokenizer.pad_token_id)), (np.array([2]), *_pad(ids[2:], 0))]
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    alone = export.single_int8_probabilities(fp32, int8, batches, len(texts), scratch)
    ops, _ = float_and_quantised(int8)
    assert set(alone) == set(int8_node_names(int8))
    one_per_op = {ops[node + "_quant"]: node for node in alone}  # the quantised op types, one node each
    assert set(one_per_op) >= {"QAttention", "MatMulInteger"}
    for node in one_per_op.values():
        probabilities = alone[node]
        export.quantize_int8(fp32, scratch / "single.onnx", only=[node])
        real = export._onnx_probabilities(scratch / "single.onnx", batches, len(texts))
        np.testing.assert_allclose(probabilities, real, atol=1e-6, err_msg=node)
