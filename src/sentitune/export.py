"""Export a trained run for deployment: LoRA merge -> HF folder, ONNX, int8, and a parity report.

    sentitune export --model runs/sst2-lora --format hf   --output exported/sst2-lora-hf
    sentitune export --model runs/sst2-lora --format onnx --quantize int8 --output exported/sst2-lora-int8

An exported folder is self-contained: weights, tokenizer, `config.json` (id2label) and `sentitune.json`
(labels, max_length, truncation, files, and the run's softmax `temperature`), so `Predictor.load(folder)`
needs nothing else. The ONNX graph outputs raw logits: Predictor.load applies the temperature, and any
other runtime must compute softmax(logits / temperature) to serve the calibrated probabilities. An ONNX export
keeps `model.onnx` (fp32) and, with `--quantize int8`, `model.int8.onnx`, which becomes the default.
`parity.json` records, for every variant, the largest probability difference from the torch model and
the accuracy on the run's test split (or `--parity-data`).

Example:
    >>> report = export_run("runs/sst2-lora", "exported/sst2-lora-int8", quantize="int8")  # doctest: +SKIP
    >>> report["variants"]["onnx-int8"]["accuracy_drop_points"] <= 0.5  # doctest: +SKIP
    True
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from sentitune import modelcard, results
from sentitune.inference import EXPORT_MANIFEST, ONNX_INPUTS, Predictor
from sentitune.runtime import package_versions, portable_path


PARITY_FILE = "parity.json"
ONNX_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx"}
INT8_MAX_DROP_POINTS = 0.5
"""Largest accepted accuracy loss of int8 against torch fp32, in percentage points."""
OPSET = 17


# ---- pieces -----------------------------------------------------------------------------------


def card_slices(run) -> dict[str, tuple[float, int]]:
    """{slice: (test accuracy, examples)} for the export's model card: the negation slice (analysis'
    rule), where the test split has any; {} when the run's predictions cannot be read."""
    from sentitune.analysis import slice_masks

    try:
        predictions = results.load_predictions(run.path)
    except results.RunFolderError:
        return {}
    mask = slice_masks(predictions.texts)["negation"]["mask"]
    if not mask.any():
        return {}
    return {"negation": (float(predictions.correct[mask].mean()), int(mask.sum()))}


def load_for_export(run_dir: str | Path) -> Predictor:
    """The run's torch Predictor on CPU, LoRA already merged; refuses runs that have no network."""
    predictor = Predictor.load(run_dir, device="cpu", precision="fp32")  # the parity reference
    if predictor.backend != "torch":
        raise results.RunFolderError(
            f"{run_dir}: a {predictor.backend} run has no neural network to export; its run folder is "
            "already the deployable artefact (sentitune predict/serve load it directly)"
        )
    return predictor


def save_hf(predictor: Predictor, folder: Path) -> None:
    """A standard HF folder (loads with AutoModelForSequenceClassification) with the merged weights."""
    model = predictor.model
    # Adapters are merged at load; check, since a left-over peft wrapper would not load in plain transformers.
    if any("lora_" in name for name, _ in model.named_parameters()):
        raise RuntimeError("LoRA layers are still present after merge_and_unload")
    model.config.id2label = dict(enumerate(predictor.label_names))
    model.config.label2id = {name: i for i, name in enumerate(predictor.label_names)}
    model.save_pretrained(folder)  # safetensors
    predictor.tokenizer.save_pretrained(folder)


def _logits_module(model):
    """`model` behind a forward that takes exactly the exported inputs and returns logits only."""
    import torch

    class LogitsOnly(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).logits

    return LogitsOnly(model).eval()


def sample_inputs(tokenizer) -> dict[str, np.ndarray]:
    """A two-row batch of the exported inputs (int64), rows of different lengths so that padding is part
    of it: the example the exporter traces and the fusion check compares on."""
    sample = tokenizer(
        ["a short one", "a somewhat longer example sentence , with more"], padding=True, return_tensors="np"
    )
    return {name: sample[name].astype(np.int64) for name in ONNX_INPUTS}


def export_onnx(model, tokenizer, path: Path, opset: int = OPSET, exporter: str = "torchscript") -> str:
    """Writes `model` to one ONNX file with dynamic batch and sequence axes; returns the exporter used.

    Both of torch 2.13's exporters work for BERT classifiers. The TorchScript exporter is the default
    because ONNX Runtime runs its graph faster: measured on a 16-core Xeon (SST-2 dev, MiniLM-L6),
    fp32 568-712 vs 375-456 sentences/s and int8 about 1,100 vs 560-760 for the dynamo exporter's
    graph. If the preferred exporter fails (an unusual architecture, or a torch release without
    the TorchScript exporter), the other one is tried; parity.json checks whichever ran.

    Example:
        >>> export_onnx(predictor.model, predictor.tokenizer, Path("model.onnx"))  # doctest: +SKIP
        'torchscript'
    """
    import torch

    wrapped = _logits_module(model)
    sample = sample_inputs(tokenizer)
    args = tuple(torch.from_numpy(sample[name]) for name in ONNX_INPUTS)
    names = {"input_names": list(ONNX_INPUTS), "output_names": ["logits"], "opset_version": opset}
    # torch.onnx logs a warning per torchvision operator it cannot register; torchvision is not needed here.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)

    def dynamo():
        batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
        shapes = {"input_ids": {0: batch, 1: sequence}, "attention_mask": {0: batch, 1: sequence}}
        torch.onnx.export(
            wrapped, args, str(path), dynamo=True, dynamic_shapes=shapes, external_data=False, verbose=False, **names
        )

    def torchscript():
        axes = {name: {0: "batch", 1: "sequence"} for name in ONNX_INPUTS} | {"logits": {0: "batch"}}
        torch.onnx.export(wrapped, args, str(path), dynamo=False, dynamic_axes=axes, **names)

    order = ["torchscript", "dynamo"] if exporter == "torchscript" else ["dynamo", "torchscript"]
    for attempt, name in enumerate(order):
        try:
            # Both exporters print progress or deprecation notes; stdout belongs to the command's output.
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                (torchscript if name == "torchscript" else dynamo)()
            return name
        except Exception as exc:  # exporters raise many types; the fallback is checked by parity
            if attempt == len(order) - 1:
                raise
            print(
                f"sentitune export: the {name} exporter failed ({type(exc).__name__}: {str(exc)[:200]}); "
                f"trying the {order[attempt + 1]} exporter",
                file=sys.stderr,
            )
    raise AssertionError("unreachable")


@contextlib.contextmanager
def eager_attention(model):
    """Exports the model with the plain attention ops that ONNX Runtime's fusion recognises.

    transformers' default SDPA attention exports as a graph the BERT optimiser cannot match; the
    eager implementation computes the same function, and fuses into one Attention operator.
    """

    def switch(implementation: str) -> None:
        with warnings.catch_warnings():  # transformers 5 warns about its own deprecated properties here
            warnings.simplefilter("ignore")
            model.set_attn_implementation(implementation)

    original = getattr(model.config, "_attn_implementation", None)
    try:
        switch("eager")
    except (AttributeError, ValueError):  # an architecture without the switch exports as it is
        original = None
    try:
        yield model
    finally:
        if original is not None:
            switch(original)


def fuse_transformer_ops(path: Path, config, sample: dict[str, np.ndarray], tolerance: float = 1e-3) -> dict:
    """Rewrites `path` with ONNX Runtime's transformer fusions (attention, skip+LayerNorm, bias+GELU,
    embedding+LayerNorm): fewer, larger operators, which many-core CPUs run much faster.

    Measured on a 16-core Xeon (MiniLM-L6, SST-2 dev; torch 2.11's export, where attention did not
    fuse): fp32 730 -> 794 and int8 1,059 -> 1,211 sentences/s; on 2 cores it is neutral. The fused
    file is kept only if its logits on `sample` match the unfused graph's within `tolerance`;
    otherwise (or if the optimiser fails on an unfamiliar architecture) the plain export stays and
    the returned dict says why.

    Returns:
        The count of each fused operator, or {"skipped": reason}.
    """
    import onnxruntime as ort
    from onnxruntime.transformers import optimizer

    heads, hidden = getattr(config, "num_attention_heads", 0), getattr(config, "hidden_size", 0)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            fused = optimizer.optimize_model(
                str(path), model_type="bert", num_heads=heads, hidden_size=hidden, opt_level=0
            )
        counts = {name: count for name, count in fused.get_fused_operator_statistics().items() if count}
        candidate = path.with_suffix(".fused.onnx")
        fused.save_model_to_file(str(candidate))
    except Exception as exc:  # the optimiser raises many types on graphs it does not know
        return {"skipped": f"{type(exc).__name__}: {str(exc)[:200]}"}
    try:
        before = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["logits"], sample)[0]
        after = ort.InferenceSession(str(candidate), providers=["CPUExecutionProvider"]).run(["logits"], sample)[0]
        difference = float(np.abs(before - after).max())
    except Exception as exc:  # a fused operator this ONNX Runtime cannot run
        candidate.unlink()
        return {"skipped": f"fused graph does not run: {type(exc).__name__}: {str(exc)[:200]}"}
    if not difference <= tolerance:
        candidate.unlink()
        return {"skipped": f"fused logits differ by {difference:.2e} (> {tolerance})"}
    candidate.replace(path)
    return counts


def quantize_int8(
    fp32_path: Path, int8_path: Path, exclude: list[str] | None = None, only: list[str] | None = None
) -> None:
    """Dynamic int8 quantisation (weights int8 once, activations quantised per call by ONNX Runtime).

    `exclude` names nodes that stay fp32, `only` restricts quantisation to the named nodes (the names
    of int8_node_names; what the sensitivity measurement uses).

    Every operator type ONNX Runtime can quantise dynamically is included: the MatMuls (the compute)
    and the embedding Gather (a 47 MiB table for MiniLM, so the int8 file is about 23 MiB instead of
    57). Measured on SST-2 dev the Gather costs no accuracy, and the full set ran faster than MatMul
    alone (1,158 vs 799 sentences/s on 16 cores). Weights are quantised per output channel: per
    tensor, BERT's few large-magnitude rows flatten the rest, and int8 lost 1.7-2.2 points instead
    of 0.2-0.7.

    Example:
        >>> quantize_int8(Path("model.onnx"), Path("model.int8.onnx"))  # doctest: +SKIP
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The quantiser re-runs ONNX shape inference, which fails when the exporter's own value_info
    # disagrees with it (seen with torch 2.11's dynamo exporter: "(384) vs (2)"). The annotations
    # are only hints, so quantise a copy without them.
    model = onnx.load(str(fp32_path))
    del model.graph.value_info[:]
    # quantize_dynamic logs a pre-processing hint through the root logger on every call.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        # DefaultTensorType: without value_info some outputs have no inferred type; they are float.
        quantize_dynamic(
            model,
            int8_path,
            weight_type=QuantType.QInt8,
            per_channel=True,
            nodes_to_quantize=only,
            nodes_to_exclude=exclude,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    finally:
        root.setLevel(level)


# ---- which layers stay fp32 in the int8 model ----------------------------------------------------

INT8_KEEP_CHOICES = ("auto", "none")
"""`--int8-keep-fp32`: auto (measure, keep the outliers), none (quantise every layer), or node names."""
SENSITIVITY_EXAMPLES = 128
"""Validation sentences each layer's sensitivity is measured on: the measure is a mean probability
difference, which settles on far fewer sentences than an accuracy does."""
SENSITIVE_FACTOR = 2.0
"""A layer is an outlier when quantising it alone moves the probabilities at least this many times as
much as quantising the median layer alone."""
MAX_KEPT_FP32 = 4
"""At most this many layers stay fp32 under auto: each one gives back some of int8's speed."""
INT8_DROP_LIMIT_POINTS = 0.5
"""auto first measures the all-int8 model against fp32 on the validation slice; when it loses at most
this many accuracy points there, every layer is quantised: each fp32 layer gives back int8's speed
(a 3-layer MiniLM student with its 4 most sensitive layers fp32 ran at 823 sentences/s, all-int8 at
1,249, on a 2-core VNNI EPYC), and it would buy accuracy the model does not lack."""
GATE_EXAMPLES = 1000
"""Validation sentences that gate measures accuracy on: a 0.5-point limit needs hundreds, not the
sensitivity measure's 128."""
KEPT_MUST_IMPROVE = 0.95
"""auto keeps its choice only if the int8 model with it moves validation probabilities by at most this
fraction of what the all-int8 model does; otherwise every layer is quantised."""


def int8_node_names(int8_path: Path) -> list[str]:
    """Names of the nodes quantize_int8 quantised in `int8_path`, in graph order (the names
    `exclude` and `only` take: ONNX Runtime calls the quantised node `<name>_quant`)."""
    import onnx

    return [
        node.name.removesuffix("_quant")
        for node in onnx.load(str(int8_path), load_external_data=False).graph.node
        if node.name.endswith("_quant")
    ]


def describe_node(name: str) -> str:
    """A reader's name for a quantisable node of a BERT-like graph (the node name where unknown).

    Example:
        >>> describe_node("/inner/bert/encoder/layer.5/output/dense/MatMul"), describe_node("Attention_2")
        ('layer 5 FFN output', 'layer 2 attention (QKV)')
    """
    import re

    layer = re.search(r"layer\.(\d+)/", name)
    if layer:
        for part, role in (
            ("attention/output", "attention output"),
            ("intermediate", "FFN input"),
            ("output/dense", "FFN output"),
            ("attention/self", "attention (QKV)"),
        ):
            if part in name:
                return f"layer {layer.group(1)} {role}"
    fused = re.fullmatch(r"Attention_(\d+)", name)  # the optimiser numbers fused attention in layer order
    if fused:
        return f"layer {fused.group(1)} attention (QKV)"
    for part, label in (("classifier", "classifier"), ("pooler", "pooler"), ("EmbedLayerNormalization", "embeddings")):
        if part in name:
            return label
    return name


def validation_slice(run_dir: str | Path) -> tuple[list, list]:
    """(texts, labels) of the run's whole validation slice, re-derived from its config with the test
    split never read (load_splits(with_test=False)): layer choices must not be fitted on test."""
    from sentitune.data import load_splits

    run = results.load_run(run_dir, require_ok=True)
    validation = load_splits(run.config.data, with_test=False).validation
    return list(validation.texts), list(validation.labels)


def sample_examples(texts: list, labels: list, limit: int, seed: int = 0) -> tuple[list, list]:
    """Up to `limit` of (texts, labels), a seeded random sample kept in their order."""
    if len(texts) <= limit:
        return texts, labels
    keep = np.sort(np.random.default_rng(seed).choice(len(texts), limit, replace=False))
    return [texts[i] for i in keep], [labels[i] for i in keep]


def _planned_batches(tokenizer, texts: list[str], max_length: int | None, truncation: str) -> list[tuple]:
    """(rows, input_ids, mask) batches of `texts`, length-sorted as the Predictor plans them."""
    from sentitune.data import encode_texts
    from sentitune.inference import _pad, plan_batches

    ids = encode_texts(tokenizer, texts, max_length, truncation)[0]["input_ids"]
    pad_id = tokenizer.pad_token_id or 0
    return [
        (chunk, *_pad([ids[i] for i in chunk], pad_id))
        for chunk in plan_batches(np.fromiter(map(len, ids), dtype=np.int64, count=len(ids)), 32)
    ]


def int8_accuracy_gate(
    fp32_path: Path, int8_path: Path, tokenizer, texts: list[str], labels: list, max_length, truncation: str = "head"
) -> dict | None:
    """Validation accuracy of the fp32 and the all-int8 graph (`int8_path`, already written) and the
    drop in points; None for labels that are not class ids (multi-label), where no accuracy is defined
    the same way.

    Example:
        >>> int8_accuracy_gate(fp32, int8, tokenizer, texts, labels, 128)  # doctest: +SKIP
        {'examples': 1000, 'fp32_accuracy': 0.91, 'int8_accuracy': 0.909, 'drop_points': 0.1, 'limit_points': 0.5}
    """
    if not labels or not all(isinstance(label, (int, np.integer)) and not isinstance(label, bool) for label in labels):
        return None
    batches = _planned_batches(tokenizer, texts, max_length, truncation)
    gold = np.asarray(labels)
    fp32 = float((_onnx_probabilities(fp32_path, batches, len(texts)).argmax(1) == gold).mean())
    int8 = float((_onnx_probabilities(int8_path, batches, len(texts)).argmax(1) == gold).mean())
    return {
        "examples": len(texts),
        "fp32_accuracy": fp32,
        "int8_accuracy": int8,
        "drop_points": 100 * (fp32 - int8),
        "limit_points": INT8_DROP_LIMIT_POINTS,
    }


def _onnx_probabilities(path: Path, batches: list[tuple[np.ndarray, np.ndarray, np.ndarray]], rows: int) -> np.ndarray:
    from sentitune.inference import onnx_session

    session = onnx_session(path)
    out = None
    for chunk, input_ids, mask in batches:
        logits = session.run(["logits"], {"input_ids": input_ids, "attention_mask": mask})[0]
        if out is None:
            out = np.zeros((rows, logits.shape[1]))
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        out[chunk] = shifted / shifted.sum(axis=1, keepdims=True)
    return out


def _difference(probabilities: np.ndarray, reference: np.ndarray) -> dict:
    return {
        "mean_abs_probability_diff": float(np.abs(probabilities - reference).mean()),
        "flipped": int((probabilities.argmax(1) != reference.argmax(1)).sum()),
    }


def choose_fp32_layers(sensitivity: dict[str, dict], factor: float = SENSITIVE_FACTOR, limit: int = MAX_KEPT_FP32):
    """{node: reason} for the layers auto keeps in fp32: those whose sensitivity (the mean probability
    change when only they are quantised) is at least `factor` times the median layer's, most
    sensitive first, at most `limit`.

    Example:
        >>> s = {n: {"mean_abs_probability_diff": d} for n, d in [("a", 0.001), ("b", 0.002), ("c", 0.01)]}
        >>> list(choose_fp32_layers(s))
        ['c']
    """
    values = {name: row["mean_abs_probability_diff"] for name, row in sensitivity.items()}
    if not values:
        return {}
    median = float(np.median(list(values.values())))
    chosen = {}
    for name in sorted(values, key=values.get, reverse=True)[:limit]:
        if values[name] > 0 and values[name] >= factor * median:
            chosen[name] = (
                f"quantised alone it moves validation probabilities by {values[name]:.2e} on average, "
                f"{values[name] / median if median else float('inf'):.1f}x the median layer ({median:.2e})"
            )
    return chosen


def single_int8_branches(fp32_path: Path, int8_path: Path):
    """(model, {node: its branch's logits}): the fp32 graph of `fp32_path` plus, for each node that
    the all-int8 graph `int8_path` quantised, a branch in which that node alone is int8.

    A branch is the quantiser's own subgraph for the node, copied out of `int8_path`
    (DynamicQuantizeLinear, the MatMulInteger/QAttention/... with its int8 weights and scales, the
    rescaling, and the bias Add of a Gemm the quantiser turned into a MatMul), fed by the fp32
    graph's tensors, followed by copies of every fp32 node downstream of it. So a branch computes what
    quantize_int8(only=[node]) would (weights are quantised per node, activations per call, so the
    other quantised nodes do not change it), while the upstream nodes and the fp32 weights are shared.
    Nodes whose subgraph has a shape this function does not recognise are left out.
    """
    import onnx

    fp32, int8 = onnx.load(str(fp32_path)), onnx.load(str(int8_path))
    graph = fp32.graph
    trunk = list(graph.node)  # in topological order, as exporters and the optimiser write it
    fp32_nodes = {node.name for node in trunk}
    fp32_tensors = (
        {value.name for value in graph.input}
        | {tensor.name for tensor in graph.initializer}
        | {name for node in trunk for name in node.output}
    )
    added = [node for node in int8.graph.node if node.name not in fp32_nodes]
    producer = {name: node for node in added for name in node.output}
    consumers: dict[str, list] = {}
    for node in added:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    int8_initializers = {tensor.name: tensor for tensor in int8.graph.initializer}
    (logits,) = [value.name for value in graph.output]
    branches: dict[str, str] = {}
    for quantised in added:
        if not quantised.name.endswith("_quant"):
            continue
        # Forward from the int8 node to the first tensors the fp32 graph also has (its rescaled
        # output, or a Gemm's output after the bias Add); then back to the fp32 tensors it reads.
        members, ends, frontier = {id(quantised): quantised}, set(), list(quantised.output)
        while frontier:
            name = frontier.pop()
            if name in fp32_tensors:
                ends.add(name)
                continue
            for node in consumers.get(name, []):
                if id(node) not in members:
                    members[id(node)] = node
                    frontier.extend(node.output)
        frontier = [name for node in members.values() for name in node.input]
        while frontier:
            name = frontier.pop()
            node = producer.get(name)
            if name not in fp32_tensors and node is not None and id(node) not in members:
                members[id(node)] = node
                frontier.extend(node.input)
        produced = {name for node in members.values() for name in node.output}
        reads = {name for node in members.values() for name in node.input if name and name not in produced}
        if not ends or any(name not in fp32_tensors and name not in int8_initializers for name in reads):
            continue
        suffix = f"/sentitune_int8_branch_{len(branches)}"
        # The int8 graph's initializers are copied under new names: some keep an fp32 name (a bias)
        # that the fp32 graph may hold with other contents (a Gemm's weight the quantiser transposed).
        renamed = {name: name + suffix for name in produced | (reads & set(int8_initializers))}
        downstream = []
        for node in trunk:  # the fp32 node the branch replaces writes only `ends`: it is not copied
            if any(name in renamed for name in node.input) and not set(node.output) <= ends:
                renamed.update((name, name + suffix) for name in node.output)
                downstream.append(node)
        if logits not in renamed:
            continue
        for name in reads & set(int8_initializers):
            copy = onnx.TensorProto()
            copy.CopyFrom(int8_initializers[name])
            copy.name = renamed[name]
            graph.initializer.append(copy)
        for node in [node for node in added if id(node) in members] + downstream:
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            copy.name = node.name + suffix
            copy.input[:] = [renamed.get(name, name) for name in node.input]
            copy.output[:] = [renamed[name] for name in node.output]
            graph.node.append(copy)
        branches[quantised.name.removesuffix("_quant")] = renamed[logits]
        graph.output.append(onnx.helper.make_empty_tensor_value_info(renamed[logits]))
    domains = {entry.domain for entry in fp32.opset_import}
    fp32.opset_import.extend(entry for entry in int8.opset_import if entry.domain not in domains)
    return fp32, branches


def single_int8_probabilities(fp32_path: Path, int8_path: Path, batches, rows: int, scratch: Path) -> dict:
    """{node: probabilities on `batches` with only that node int8} for the nodes single_int8_branches
    pairs, from one ONNX Runtime session: the same rows _onnx_probabilities gives for a graph
    quantised with only=[node]."""
    import onnx

    from sentitune.inference import onnx_session

    model, branches = single_int8_branches(fp32_path, int8_path)
    if not branches:
        return {}
    path = scratch / "single_int8_branches.onnx"
    onnx.save(model, str(path))
    session = onnx_session(path)
    names = list(branches)
    out: dict[str, np.ndarray] = {}
    for chunk, input_ids, mask in batches:
        values = session.run([branches[name] for name in names], {"input_ids": input_ids, "attention_mask": mask})
        for name, logits in zip(names, values):
            shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
            rows_of = out.setdefault(name, np.zeros((rows, logits.shape[1])))
            rows_of[chunk] = shifted / shifted.sum(axis=1, keepdims=True)
    return out


def quantize_keeping_sensitive_layers(
    fp32_path: Path, int8_path: Path, tokenizer, texts: list[str], max_length: int | None, truncation: str = "head"
) -> dict:
    """Quantises `fp32_path` to `int8_path`, keeping in fp32 the layers whose int8 error stands out.

    A node's sensitivity is the change of the probabilities on `texts` (validation sentences) against
    the fp32 graph when that node alone is int8. The outliers (choose_fp32_layers) stay fp32, and the
    choice is kept only if the resulting model, quantised for real, is measurably closer to fp32 on
    the same sentences than the all-int8 model (KEPT_MUST_IMPROVE); otherwise every layer is quantised.

    How the single-node models are run: not by one quantize_dynamic per node (26 for MiniLM-L6, most
    of an auto export's time), but by single_int8_branches: one graph holding the fp32 model and,
    per node, a branch where that node is replaced by the quantiser's own int8 subgraph taken from
    the all-int8 model (same int8 weights, same DynamicQuantizeLinear, same ONNX Runtime kernels),
    followed by copies of the fp32 nodes after it. This is the same measurement, not an estimate:
    dynamic quantisation fixes each node's weights independently of the other nodes and quantises
    activations per call, so a branch computes what quantize_int8(only=[node]) would
    (tests/test_int8_layers.py compares them). A node whose subgraph the branch builder does not
    recognise is quantised alone for real, as before; `validation.single_node_runs` counts both ways.

    Returns:
        {"kept": {node: {label, reason, sensitivity...}}, "sensitivity": {node: {...}},
        "validation": {"all_int8": {...}, "chosen": {...}, "examples": n, "single_node_runs": {...}},
        "decision": text}
    """
    batches = _planned_batches(tokenizer, texts, max_length, truncation)
    reference = _onnx_probabilities(fp32_path, batches, len(texts))
    quantize_int8(fp32_path, int8_path)
    all_int8 = _difference(_onnx_probabilities(int8_path, batches, len(texts)), reference)
    sensitivity = {}
    with tempfile.TemporaryDirectory(dir=int8_path.parent) as scratch:
        runs: dict = {"quantize_dynamic": 0}
        try:
            alone = single_int8_probabilities(fp32_path, int8_path, batches, len(texts), Path(scratch))
        except Exception as exc:  # onnx and ONNX Runtime raise many types; the per-node path below measures
            alone, runs["branches_failed"] = {}, f"{type(exc).__name__}: {str(exc)[:200]}"
        runs["branches"] = len(alone)
        single = Path(scratch) / "single.onnx"
        for name in int8_node_names(int8_path):
            if name not in alone:
                quantize_int8(fp32_path, single, only=[name])
                alone[name] = _onnx_probabilities(single, batches, len(texts))
                runs["quantize_dynamic"] += 1
            sensitivity[name] = {"label": describe_node(name)} | _difference(alone.pop(name), reference)
        outcome = {
            "sensitivity": sensitivity,
            "validation": {"examples": len(texts), "all_int8": all_int8, "single_node_runs": runs},
        }
        reasons = choose_fp32_layers(sensitivity)
        if not reasons:
            return outcome | {"kept": {}, "decision": "no layer stands out: every layer is int8"}
        candidate = Path(scratch) / "candidate.onnx"
        quantize_int8(fp32_path, candidate, exclude=list(reasons))
        chosen = _difference(_onnx_probabilities(candidate, batches, len(texts)), reference)
        outcome["validation"]["chosen"] = chosen
        if chosen["mean_abs_probability_diff"] > KEPT_MUST_IMPROVE * all_int8["mean_abs_probability_diff"]:
            return outcome | {
                "kept": {},
                "decision": (
                    f"keeping {', '.join(sensitivity[n]['label'] for n in reasons)} in fp32 did not bring the "
                    f"validation probabilities measurably closer ({chosen['mean_abs_probability_diff']:.2e} vs "
                    f"{all_int8['mean_abs_probability_diff']:.2e} all int8): every layer is int8"
                ),
            }
        candidate.replace(int8_path)
    kept = {name: {**sensitivity[name], "reason": reason} for name, reason in reasons.items()}
    return outcome | {
        "kept": kept,
        "decision": (
            f"kept {len(kept)} layer(s) fp32: validation probabilities move {chosen['mean_abs_probability_diff']:.2e} "
            f"on average against {all_int8['mean_abs_probability_diff']:.2e} all int8"
        ),
    }


def quantize_for_export(run_dir: Path, predictor, fp32_path: Path, int8_path: Path, keep: str | None) -> dict:
    """Writes `int8_path` with the layers `keep` names (or auto finds) left in fp32; returns the record
    the manifest stores as int8_keep_fp32: {"choice", "kept": {node: {label, reason, ...}}, "decision", ...}.

    auto re-derives the run's validation slice from its config; where that data is not at hand, every
    layer is quantised and the record says why. It first gates on accuracy (int8_accuracy_gate): an
    all-int8 model within INT8_DROP_LIMIT_POINTS of fp32 on validation is kept whole, the fastest
    choice; only a larger drop starts the per-layer search (quantize_keeping_sensitive_layers).
    """
    from sentitune.data import DataError

    choice = (keep or "auto").strip()
    if choice == "none":
        quantize_int8(fp32_path, int8_path)
        return {"choice": "none", "kept": {}, "decision": "every layer is int8 (--int8-keep-fp32 none)"}
    if choice == "auto":
        try:
            slice_texts, slice_labels = validation_slice(run_dir)  # read once: the gate and the search sample it
        except (DataError, OSError) as exc:
            quantize_int8(fp32_path, int8_path)
            return {
                "choice": "auto",
                "kept": {},
                "decision": f"skipped, no validation slice to measure on ({str(exc)[:200]}): every layer is int8",
            }
        gate_texts, gate_labels = sample_examples(slice_texts, slice_labels, GATE_EXAMPLES)
        quantize_int8(fp32_path, int8_path)
        gate = int8_accuracy_gate(
            fp32_path,
            int8_path,
            predictor.tokenizer,
            gate_texts,
            gate_labels,
            predictor.max_length,
            predictor.truncation,
        )
        if gate is not None and gate["drop_points"] <= INT8_DROP_LIMIT_POINTS:
            return {
                "choice": "auto",
                "kept": {},
                "validation": {"gate": gate},
                "decision": (
                    f"all-int8 is within {INT8_DROP_LIMIT_POINTS} points of fp32 on {gate['examples']} validation "
                    f"sentences ({100 * gate['int8_accuracy']:.2f}% vs {100 * gate['fp32_accuracy']:.2f}%): "
                    "every layer is int8, the fastest choice"
                ),
            }
        texts = sample_examples(slice_texts, slice_labels, SENSITIVITY_EXAMPLES)[0]
        outcome = quantize_keeping_sensitive_layers(
            fp32_path, int8_path, predictor.tokenizer, texts, predictor.max_length, predictor.truncation
        )
        outcome["validation"]["gate"] = gate
        if gate is not None:
            outcome["decision"] = (
                f"all-int8 loses {gate['drop_points']:.2f} points on {gate['examples']} validation sentences "
                f"(limit {INT8_DROP_LIMIT_POINTS}); {outcome['decision']}"
            )
        return {"choice": "auto", **outcome}
    quantize_int8(fp32_path, int8_path)
    names = int8_node_names(int8_path)
    by_label = {describe_node(name): name for name in names}
    wanted = [part.strip() for part in choice.split(",") if part.strip()]
    unknown = [part for part in wanted if part not in names and part not in by_label]
    if unknown:
        raise DataError(
            f"--int8-keep-fp32: no quantisable layer {unknown[0]!r}; expected auto, none, or names among "
            f"{', '.join(list(by_label)[:6])}, ... (labels) or node names such as {names[-1]!r}"
        )
    kept = {by_label.get(part, part): part for part in wanted}
    quantize_int8(fp32_path, int8_path, exclude=list(kept))
    return {
        "choice": choice,
        "kept": {node: {"label": describe_node(node), "reason": "named by --int8-keep-fp32"} for node in kept},
        "decision": f"kept {len(kept)} layer(s) fp32 as named",
    }


def parity_data(
    run_dir: str | Path,
    data_file: str | Path | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
) -> tuple[list[str], np.ndarray, str]:
    """(texts, gold ids, description) for the parity report.

    Default: the run's test split as recorded in its predictions.csv (the split its config defines,
    subsets included), so no dataset download or re-split is needed. `data_file` overrides it.
    """
    from sentitune.data import file_format, map_labels, read_table

    run = results.load_run(run_dir, require_ok=True)
    if data_file is None:
        frame = run.predictions()
        if frame["gold_id"].isna().any():
            raise results.RunFolderError(f"{run.path / results.PREDICTIONS_FILE}: gold labels outside labels.json")
        return (
            frame["text"].astype(str).tolist(),
            frame["gold_id"].to_numpy(dtype=int),
            f"test split of {run.path} ({run.config.data.dataset})",
        )
    data_file = Path(data_file)
    text_column = text_column or ("sentence" if file_format(data_file) == "tsv" else "text")
    table = read_table(data_file, text_column, label_column or "label")
    return table.texts, np.asarray(map_labels(table, run.label_names)), str(data_file)


def parity_report(
    variants: dict[str, Predictor], texts: list[str], gold: np.ndarray, reference: str = "torch", batch_size: int = 64
) -> dict:
    """Accuracy, speed and probability differences of each variant against `reference`.

    Example:
        >>> report = parity_report({"torch": p, "onnx-fp32": q}, ["great"], np.array([1]))  # doctest: +SKIP
        >>> report["variants"]["onnx-fp32"]  # doctest: +SKIP
        {'accuracy': 1.0, 'max_abs_probability_diff': 3e-07, ...}
    """
    from sentitune.metrics import classification_metrics, mcnemar

    probabilities, rows = {}, {}
    for name, predictor in variants.items():
        predictor.predict_proba(texts[:batch_size], batch_size)  # warm-up: allocation, kernel selection
        started = time.perf_counter()
        probabilities[name] = predictor.predict_proba(texts, batch_size)
        seconds = time.perf_counter() - started
        metrics = classification_metrics(gold, probabilities[name])
        rows[name] = {
            "accuracy": metrics["accuracy"],
            "macro_f1": metrics["macro_f1"],
            "sentences_per_second": len(texts) / seconds if seconds else float("nan"),
        }
    base = probabilities[reference]
    for name, row in rows.items():
        diff = np.abs(probabilities[name] - base)
        row["accuracy_drop_points"] = 100 * (rows[reference]["accuracy"] - row["accuracy"])
        row["max_abs_probability_diff"] = float(diff.max())
        row["mean_abs_probability_diff"] = float(diff.mean())
        row["prediction_agreement"] = float((probabilities[name].argmax(1) == base.argmax(1)).mean())
        # On a few hundred examples a drop of a few sentences can be chance: the paired test says so.
        paired = mcnemar(base.argmax(1) == gold, probabilities[name].argmax(1) == gold)
        row["only_reference_correct"] = paired["a_only_correct"]
        row["only_variant_correct"] = paired["b_only_correct"]
        row["mcnemar_p_value"] = paired["p_value"]
    return {"reference": reference, "examples": len(texts), "variants": rows}


# ---- exporting a run ---------------------------------------------------------------------------


def export_run(
    run_dir: str | Path,
    output: str | Path,
    fmt: str = "onnx",
    quantize: str | None = None,
    parity_file: str | Path | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
    overwrite: bool = False,
    parity: bool = True,
    int8_keep_fp32: str | None = None,
) -> dict:
    """Exports a run folder to `output` and returns the parity report (also saved as parity.json).

    Args:
        run_dir: a finished full, lora or head run.
        output: the folder to create; written next to itself first and renamed, so a failed export
            leaves nothing half-written.
        fmt: `hf` (merged weights, standard transformers folder) or `onnx`.
        quantize: `int8` adds a dynamically quantised ONNX model (fmt `onnx` only).
        parity_file: labelled CSV/TSV/JSONL for the parity report; default the run's test split.
        text_column, label_column: columns of `parity_file`.
        overwrite: replace an existing export in `output`.
        parity: False skips the parity report (benchmarks measure the variants themselves).
        int8_keep_fp32: which layers of the int8 model stay fp32: `auto` (the default; measured on
            the run's validation slice, see quantize_keeping_sensitive_layers), `none`, or
            comma-separated node names or labels (describe_node: "classifier", "layer 5 FFN output").

    Example:
        >>> export_run("runs/sst2-lora", "exported/sst2-lora-hf", fmt="hf")["variants"].keys()  # doctest: +SKIP
        dict_keys(['torch', 'hf'])
    """
    from sentitune.data import DataError

    if fmt not in ("hf", "onnx"):
        raise DataError(f"--format {fmt!r}: expected hf or onnx")
    if quantize not in (None, "int8"):
        raise DataError(f"--quantize {quantize!r}: only int8 is supported")
    if quantize and fmt != "onnx":
        raise DataError("--quantize int8 needs --format onnx (ONNX Runtime does the quantisation)")
    if int8_keep_fp32 is not None and not quantize:
        raise DataError("--int8-keep-fp32 needs --quantize int8")
    if int8_keep_fp32 is not None and not int8_keep_fp32.strip(" ,"):
        raise DataError("--int8-keep-fp32 '': expected auto, none or comma-separated layer names")
    output = Path(output)
    results.check_output_dir(
        output,
        overwrite,
        lambda folder: (folder / EXPORT_MANIFEST).exists(),
        f"an earlier export (no {EXPORT_MANIFEST})",
        flag="--output",
    )
    run = results.load_run(run_dir, require_ok=True)
    if run.config.data.problem_type == "multi_label":  # the manifest and ONNX predictor assume one softmax
        raise results.RunFolderError(
            f"{run_dir}: a multi-label run; export supports single-label runs only "
            "(use the run folder with sentitune predict)"
        )
    if parity:
        texts, gold, data_description = parity_data(run_dir, parity_file, text_column, label_column)
    torch_predictor = load_for_export(run_dir)

    output.parent.mkdir(parents=True, exist_ok=True)
    results.sweep_leftovers(output)  # staging folders of killed exports (their PID in the name)
    staging = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.staging-{os.getpid()}-"))
    try:
        manifest = {
            "format": fmt,
            "label_names": torch_predictor.label_names,
            "max_length": torch_predictor.max_length,
            "truncation": torch_predictor.truncation,
            # chunk: the Predictor averages the logits of windows chunk_stride tokens apart (data.encode_windows).
            "long_text": torch_predictor.long_text,
            "chunk_stride": torch_predictor.chunk_stride,
            # The graph and the HF weights give raw logits; Predictor.load divides them by this
            # temperature (fitted on the run's validation slice). Other runtimes must do the same.
            "temperature": torch_predictor.temperature,
            "source_run": portable_path(str(run.path)),
            "method": run.config.method.name,
            "model": portable_path(run.config.model),
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": package_versions(
                ("sentitune", "torch", "transformers", "peft", "onnx", "onnxscript", "onnxruntime")
            ),
        }
        if fmt == "hf":
            save_hf(torch_predictor, staging)
            results.atomic_write_json(staging / EXPORT_MANIFEST, manifest)
            variants = {"torch": torch_predictor, "hf": Predictor.load(staging, device="cpu", precision="fp32")}
        else:
            torch_predictor.model.config.id2label = dict(enumerate(torch_predictor.label_names))
            torch_predictor.model.config.label2id = {n: i for i, n in enumerate(torch_predictor.label_names)}
            torch_predictor.model.config.save_pretrained(staging)
            torch_predictor.tokenizer.save_pretrained(staging)
            with eager_attention(torch_predictor.model) as model:
                manifest["exporter"] = export_onnx(model, torch_predictor.tokenizer, staging / ONNX_FILES["fp32"])
            manifest["opset"] = OPSET
            manifest["fused_operators"] = fuse_transformer_ops(
                staging / ONNX_FILES["fp32"], torch_predictor.model.config, sample_inputs(torch_predictor.tokenizer)
            )
            files = {"fp32": ONNX_FILES["fp32"]}
            if quantize:
                fp32_file, int8_file = staging / ONNX_FILES["fp32"], staging / ONNX_FILES["int8"]
                manifest["int8_keep_fp32"] = quantize_for_export(
                    run.path, torch_predictor, fp32_file, int8_file, int8_keep_fp32
                )
                files["int8"] = ONNX_FILES["int8"]
                manifest["quantization"] = (
                    "onnxruntime quantize_dynamic: QInt8 weights per channel; every "
                    "operator it quantises dynamically (MatMul, Gather, and the fused "
                    "Attention and EmbedLayerNormalization where fusion ran) except the nodes "
                    "in int8_keep_fp32.kept"
                )
            manifest["files"] = files
            manifest["default_variant"] = "int8" if quantize else "fp32"
            manifest["inputs"] = list(ONNX_INPUTS)
            results.atomic_write_json(staging / EXPORT_MANIFEST, manifest)
            variants = {"torch": torch_predictor}
            for variant in files:
                variants[f"onnx-{variant}"] = Predictor.load(staging, device="cpu", variant=variant)
        modelcard.write_run_card(staging, run.config, run.metrics, card_slices(run), "path/to/this/folder")
        if not parity:
            del variants
            _make_readable(staging)
            results.swap_in(staging, output)
            return {"output": str(output), "manifest": manifest}
        report = parity_report(variants, texts, gold)
        report.update(
            {
                "data": portable_path(data_description),
                "run": portable_path(str(run.path)),
                "format": fmt,
                "int8_max_drop_points": INT8_MAX_DROP_POINTS,
            }
        )
        for name, row in report["variants"].items():
            row["size_mib"] = _variant_size_mib(name, staging, run.path, manifest)
        if "onnx-int8" in report["variants"]:
            report["int8_within_tolerance"] = (
                report["variants"]["onnx-int8"]["accuracy_drop_points"] <= INT8_MAX_DROP_POINTS
            )
            choice = manifest["int8_keep_fp32"]
            report["int8_fp32_layers"] = [
                {"node": node, "label": row["label"], "reason": row["reason"]} for node, row in choice["kept"].items()
            ]
            report["int8_layer_choice"] = f"{choice['choice']}: {choice['decision']}"
        results.atomic_write_json(staging / PARITY_FILE, report)
        del variants  # ONNX Runtime keeps the files open on some platforms until the sessions go
        _make_readable(staging)
        results.swap_in(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    report["output"] = str(output)
    return report


def _make_readable(folder: Path) -> None:
    # mkdtemp and the atomic writers create owner-only modes; a deployable folder is read by other
    # users (containers, services), so give it the modes the umask would have given.
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _variant_size_mib(name: str, folder: Path, run_path: Path, manifest: dict) -> float:
    if name == "torch":
        return round(results.folder_size_mib(run_path / results.MODEL_DIR, "*.safetensors"), 3)
    if name == "hf":
        return round(results.folder_size_mib(folder, "*.safetensors"), 3)
    return round((folder / manifest["files"][name.removeprefix("onnx-")]).stat().st_size / 2**20, 3)


def format_report(report: dict) -> str:
    """The parity report as an aligned text table (what the CLI prints)."""
    header = (
        f"{'variant':<10} {'accuracy':>9} {'drop (pts)':>10} {'McNemar p':>9} {'max |dp|':>10} {'agree':>7} "
        f"{'sent/s':>9} {'MiB':>8}"
    )
    lines = [
        f"parity on {report['examples']} examples of {report['data']} (reference: {report['reference']})",
        header,
        "-" * len(header),
    ]
    for name, row in report["variants"].items():
        p_value = "-" if name == report["reference"] else f"{row['mcnemar_p_value']:.3g}"
        lines.append(
            f"{name:<10} {100 * row['accuracy']:>8.2f}% {row['accuracy_drop_points']:>10.2f} {p_value:>9} "
            f"{row['max_abs_probability_diff']:>10.2e} {100 * row['prediction_agreement']:>6.1f}% "
            f"{row['sentences_per_second']:>9.1f} {row['size_mib']:>8.2f}"
        )
    if "int8_layer_choice" in report:
        lines.append(f"int8 layers kept fp32, {report['int8_layer_choice']}")
        lines.extend(f"  {row['label']} ({row['node']}): {row['reason']}" for row in report["int8_fp32_layers"])
    return "\n".join(lines)


def int8_warning(report: dict) -> str | None:
    """A loud multi-line warning when int8 loses more than the tolerated accuracy, else None."""
    row = report["variants"].get("onnx-int8")
    if row is None or row["accuracy_drop_points"] <= INT8_MAX_DROP_POINTS:
        return None
    bar = "!" * 78
    paired = ""
    if "mcnemar_p_value" in row:
        paired = (
            f"\nint8 is wrong on {row['only_reference_correct']} examples that torch gets right and right on "
            f"{row['only_variant_correct']} that torch gets wrong (McNemar p = {row['mcnemar_p_value']:.3g}"
            f"{', not significant' if row['mcnemar_p_value'] >= 0.05 else ''})."
        )
    return (
        f"{bar}\nWARNING: int8 accuracy is {row['accuracy_drop_points']:.2f} points below torch fp32 "
        f"(tolerance {INT8_MAX_DROP_POINTS}).{paired}\nServe the fp32 ONNX model instead "
        f"(Predictor.load(folder, variant='fp32')), or check the parity data is large enough to tell.\n{bar}"
    )
