"""`sentitune export --format triton`: every config.pbtxt parses with Triton's own model-config
protos and names the ONNX graph's tensors; the Python-backend steps (tokenise, postprocess), run with a
stand-in `triton_python_backend_utils` and ONNX Runtime between them, give the Predictor's probabilities.
No tritonserver runs here (see the README's Scaling section)."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from sentitune.errors import RunFolderError


model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")

TEXTS = ["a gorgeous , witty film", "dull and far too long " * 20, "10", "great fun, really"]


@pytest.fixture(scope="module")
def repository(trained_run, tmp_path_factory):
    from sentitune.scale.triton import export_triton

    folder = tmp_path_factory.mktemp("triton") / "repo"
    export_triton(trained_run("full"), folder, max_batch_size=16, preferred_batch_sizes=(4, 8, 32))
    return folder


def parse(path: Path):
    from google.protobuf import text_format

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_every_config_parses_and_names_the_onnx_graphs_tensors(repository):
    import onnx

    configs = {p.parent.name: parse(p) for p in repository.glob("*/config.pbtxt")}
    assert set(configs) == {"sentitune", "sentitune_tokenizer", "sentitune_onnx", "sentitune_postprocess"}
    graph = onnx.load(repository / "sentitune_onnx" / "1" / "model.onnx").graph
    onnx_cfg = configs["sentitune_onnx"]
    assert onnx_cfg.backend == "onnxruntime"
    assert [t.name for t in onnx_cfg.input] == [t.name for t in graph.input]
    assert [t.name for t in onnx_cfg.output] == [t.name for t in graph.output]
    elem = {onnx.TensorProto.INT64: model_config_pb2.TYPE_INT64, onnx.TensorProto.FLOAT: model_config_pb2.TYPE_FP32}
    for tensor, config in zip([*graph.input, *graph.output], [*onnx_cfg.input, *onnx_cfg.output]):
        assert elem[tensor.type.tensor_type.elem_type] == config.data_type, tensor.name
    labels = graph.output[0].type.tensor_type.shape.dim[-1].dim_value
    assert list(onnx_cfg.output[0].dims) == [labels]
    assert list(onnx_cfg.dynamic_batching.preferred_batch_size) == [4, 8]  # 32 > max_batch_size 16
    assert onnx_cfg.dynamic_batching.max_queue_delay_microseconds > 0
    assert onnx_cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    # The ensemble wires each step's outputs to the next step's inputs, by the names those models declare.
    ensemble = configs["sentitune"]
    assert ensemble.platform == "ensemble"
    declared = {name: ({t.name for t in c.input}, {t.name for t in c.output}) for name, c in configs.items()}
    available = {t.name for t in ensemble.input}
    for step in ensemble.ensemble_scheduling.step:
        inputs, outputs = declared[step.model_name]
        assert set(step.input_map) == inputs and set(step.input_map.values()) <= available
        assert set(step.output_map) == outputs
        available |= set(step.output_map.values())
    assert {t.name for t in ensemble.output} <= available
    assert configs["sentitune_tokenizer"].output[0].dims == onnx_cfg.input[0].dims


def fake_backend_utils() -> types.ModuleType:
    """The few names of Triton's `triton_python_backend_utils` that model.py uses."""
    module = types.ModuleType("triton_python_backend_utils")

    class Tensor:
        def __init__(self, name, array):
            self.name, self.array = name, np.asarray(array)

        def as_numpy(self):
            return self.array

    class InferenceResponse:
        def __init__(self, output_tensors):
            self.outputs = {t.name: t.array for t in output_tensors}

    module.Tensor = Tensor
    module.InferenceResponse = InferenceResponse
    module.get_input_tensor_by_name = lambda request, name: request[name]
    return module


def load_step(repository: Path, name: str):
    spec = importlib.util.spec_from_file_location(f"triton_{name}", repository / name / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    # What Triton passes: the model's config.pbtxt as JSON (here only the parameter model.py reads).
    step = parse(repository / name / "config.pbtxt").parameters["step"].string_value
    config = json.dumps({"parameters": {"step": {"string_value": step}}})
    model.initialize({"model_config": config, "model_repository": str(repository / name), "model_version": "1"})
    return model


def test_the_python_steps_and_the_onnx_model_give_the_predictors_probabilities(repository, trained_run, monkeypatch):
    import onnxruntime as ort

    from sentitune.inference import Predictor

    utils = fake_backend_utils()
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", utils)
    tokenizer, postprocess = (
        load_step(repository, "sentitune_tokenizer"),
        load_step(repository, "sentitune_postprocess"),
    )
    raw = np.array([[t.encode("utf-8")] for t in TEXTS], dtype=object)
    tokens = tokenizer.execute([{"TEXT": utils.Tensor("TEXT", raw)}])[0].outputs
    assert tokens["input_ids"].dtype == np.int64 and tokens["input_ids"].shape[0] == len(TEXTS)
    session = ort.InferenceSession(str(repository / "sentitune_onnx" / "1" / "model.onnx"))
    logits = session.run(None, {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]})[0]
    out = postprocess.execute([{"LOGITS": utils.Tensor("LOGITS", logits)}])[0].outputs
    predictor = Predictor.load(trained_run("full"), device="cpu")
    expected = predictor.predict_proba(TEXTS)
    np.testing.assert_allclose(out["PROBABILITIES"], expected, atol=1e-4)
    names = [predictor.label_names[i] for i in expected.argmax(axis=1)]
    assert [label.decode() for label in out["LABEL"].reshape(-1)] == names


def test_an_existing_folder_is_refused_without_overwrite(trained_run, repository, tmp_path):
    from sentitune.scale.triton import export_triton

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("user data")
    with pytest.raises(RunFolderError, match="not empty"):
        export_triton(trained_run("full"), mine)
    with pytest.raises(RunFolderError, match="did not create"):
        export_triton(trained_run("full"), mine, overwrite=True)
    assert (mine / "notes.txt").read_text() == "user data"
