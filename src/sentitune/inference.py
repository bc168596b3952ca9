"""Predictor: a run folder (full, lora, head, tfidf) or an exported folder (ONNX, HF) -> predictions.

Every backend sits behind one surface: `predict_proba(texts)` gives class probabilities in input order,
`predict(texts)` gives label, score and probabilities per text. Texts are tokenised once with the fast
tokenizer, sorted by length and cut into batches so that padding stays close to zero.

Folders it loads:
  * a run folder (`config.yaml` + `model/`): LoRA adapters are merged into the base weights at load,
    so inference pays nothing for them; tfidf runs use their scikit-learn-free safetensors weights;
  * an exported folder (`sentitune.json`, written by `sentitune export`): ONNX (fp32 or int8, run by
    ONNX Runtime) or a merged Hugging Face model folder;
  * a plain Hugging Face classification folder (labels from `config.json`'s `id2label`).

Example:
    >>> predictor = Predictor.load("runs/sst2-lora")  # doctest: +SKIP
    >>> predictor.predict(["A gorgeous, witty film."])[0]["label"]  # doctest: +SKIP
    'positive'
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from sentitune import results
from sentitune.data import input_format, stream_texts  # noqa: F401 - re-exported for callers of predict
from sentitune.methods import registry
from sentitune.metrics import log_probabilities, sigmoid, temperature_scale
from sentitune.runtime import portable_path


EXPORT_MANIFEST = "sentitune.json"
"""Written into every exported folder: what the Predictor needs besides the weights."""
ONNX_VARIANTS = ("fp32", "int8")
ONNX_INPUTS = ("input_ids", "attention_mask")


def available_cores() -> int:
    """CPU cores this process may use (affinity and physical cores both respected)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count() or 1
    try:
        import psutil

        physical = psutil.cpu_count(logical=False) or usable
    except ImportError:  # pragma: no cover - psutil is a dependency
        physical = usable
    # Hyper-threads share one core's matrix units, so more threads than physical cores only contend.
    return max(1, min(usable, physical))


def _pad(batch: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pads token id lists into (input_ids, attention_mask) int64 arrays."""
    width = max(len(ids) for ids in batch)
    input_ids = np.full((len(batch), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(batch), width), dtype=np.int64)
    for row, ids in enumerate(batch):
        input_ids[row, : len(ids)] = ids
        mask[row, : len(ids)] = 1
    return input_ids, mask


BATCH_OVERHEAD_TOKENS = 8
"""What one extra model call costs, in padded tokens' worth of compute. Chosen, not fitted: on 2 CPU
cores with MiniLM, one call per sentence ran 0.89x as fast as calls of four length-matched sentences,
which puts a call's fixed cost at a few tokens; 8 leans towards fuller batches."""


def plan_batches(
    lengths: np.ndarray, max_batch_size: int, overhead_tokens: float = BATCH_OVERHEAD_TOKENS
) -> list[np.ndarray]:
    """Cuts texts into batches that minimise padded tokens plus a fixed cost per batch.

    Texts are sorted by length and cut into runs of neighbours; a dynamic programme over the cut
    points picks the runs. On a whole file this gives full batches (neighbours have nearly equal
    lengths); on a server's micro-batch of unrelated sentences (5 to 55 tokens) it splits them into
    a few length-matched groups instead of padding every sentence to the longest: measured on 2 CPU
    cores with random groups of 32 SST-2 sentences, 51 sentences/s as one batch vs 95 in groups of 4.

    Args:
        lengths: token count per text, in input order.
        max_batch_size: the largest batch allowed.
        overhead_tokens: the fixed cost of one model call, in tokens.

    Returns:
        Index arrays into `lengths`, one per batch, shortest texts first.

    Example:
        >>> [b.tolist() for b in plan_batches(np.array([50, 5, 6, 48]), 64)]
        [[1, 2], [3, 0]]
    """
    lengths = np.asarray(lengths)
    order = np.argsort(lengths, kind="stable")
    width = lengths[order].astype(np.float64)
    count = len(order)
    cost = np.zeros(count + 1)
    start_of = np.zeros(count + 1, dtype=np.int64)
    for end in range(1, count + 1):
        sizes = np.arange(1, min(max_batch_size, end) + 1)
        # A batch ending at `end` (exclusive) is as wide as its last, longest text.
        candidates = cost[end - sizes] + overhead_tokens + sizes * width[end - 1]
        best = int(candidates.argmin())
        cost[end], start_of[end] = candidates[best], end - sizes[best]
    batches, end = [], count
    while end > 0:
        batches.append(order[start_of[end] : end])
        end = int(start_of[end])
    return batches[::-1]


class _Runner:
    """Logits for padded batches; runs them one after another unless a backend can do better."""

    def __call__(self, input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def map(self, batches: Iterable[tuple]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(indices, logits) for each (indices, input_ids, mask), in order."""
        for chunk, input_ids, mask in batches:
            yield chunk, self(input_ids, mask)


class _TorchRunner(_Runner):
    """Logits from a transformers classifier under inference mode."""

    name = "torch"

    def __init__(self, model, device: str):
        self.model = model
        self.device = device
        self.precision = "fp32"

    def __call__(self, input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        import torch

        autocast = torch.autocast(
            device_type=torch.device(self.device).type, dtype=torch.bfloat16, enabled=self.precision == "bf16"
        )
        with torch.inference_mode(), autocast:
            logits = self.model(
                input_ids=torch.from_numpy(input_ids).to(self.device),
                attention_mask=torch.from_numpy(mask).to(self.device),
            ).logits
        return logits.float().cpu().numpy()


class _OnnxRunner(_Runner):
    """Logits from ONNX Runtime sessions (inputs input_ids and attention_mask, output logits).

    With several sessions (many-core CPUs), batches run on them in parallel, each session with its
    own few intra-op threads.
    """

    name = "onnx"

    def __init__(self, sessions):
        self.sessions = list(sessions)
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        for session in self.sessions:
            self._free.put(session)
        self._pool: ThreadPoolExecutor | None = None

    def __call__(self, input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        session = self._free.get()  # one run per session at a time: each owns its intra-op threads
        try:
            return session.run(["logits"], {"input_ids": input_ids, "attention_mask": mask})[0]
        finally:
            self._free.put(session)

    def map(self, batches: Iterable[tuple]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if len(self.sessions) == 1:
            yield from super().map(batches)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(len(self.sessions), thread_name_prefix="sentitune-onnx")
        # ONNX Runtime releases the GIL while it computes, so the sessions run truly in parallel.
        yield from self._pool.map(lambda batch: (batch[0], self(batch[1], batch[2])), batches)


THREADS_PER_SESSION = 4
"""ONNX Runtime's intra-op scaling flattens beyond a few threads for BERT-sized products; more cores
are better spent on parallel sessions. Measured on a 16-core Xeon (MiniLM-L6, fused int8, SST-2 dev):
one session x 16 threads 1,500 sentences/s, 2 x 8 2,238, 4 x 4 3,319, 16 x 1 3,700."""


def onnx_parallelism(
    cores: int | None = None, threads: int | None = None, workers: int | None = None
) -> tuple[int, int]:
    """(sessions, intra-op threads per session) for this machine.

    Example:
        >>> onnx_parallelism(cores=16), onnx_parallelism(cores=2), onnx_parallelism(cores=16, workers=1)
        ((4, 4), (1, 2), (1, 16))
    """
    cores = cores or available_cores()
    if (workers is not None and workers < 1) or (threads is not None and threads < 1):
        raise ValueError(f"workers and threads must be >= 1, got {workers} and {threads}")
    if workers is None:
        workers = max(1, cores // (threads or THREADS_PER_SESSION))
    if threads is None:
        threads = max(1, cores // workers)
    return workers, threads


def onnx_session(path: str | Path, device: str = "cpu", threads: int | None = None):
    """An ONNX Runtime session tuned for this machine: all graph optimisations, one intra-op thread per core.

    Example:
        >>> session = onnx_session("exported/sst2-lora-int8/model.int8.onnx")  # doctest: +SKIP
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or available_cores()
    # One graph, run node after node: inter-op parallelism only adds scheduling for a BERT chain.
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # ORT raises its own exception types for corrupt or foreign files
        raise results.RunFolderError(f"{path}: cannot load the ONNX model ({exc})") from None


def prediction_row(label_names, probabilities, thresholds=None, text: str | None = None) -> dict:
    """One prediction as `predict`, `sentitune predict` and `POST /predict` return it: `text` (when
    given), the top `label`, its probability as `score`, and every class probability; with per-label
    `thresholds` (multi-label runs) also `labels`, every label at or above its threshold.

    Example:
        >>> prediction_row(["negative", "positive"], np.array([0.25, 0.75]))
        {'label': 'positive', 'score': 0.75, 'probabilities': {'negative': 0.25, 'positive': 0.75}}
    """
    probabilities = np.asarray(probabilities)
    best = int(probabilities.argmax())
    row = {} if text is None else {"text": text}
    row.update(
        label=label_names[best],
        score=float(probabilities[best]),
        probabilities={name: float(p) for name, p in zip(label_names, probabilities)},
    )
    if thresholds is not None:
        row["labels"] = [name for name, p, t in zip(label_names, probabilities, thresholds) if p >= t]
    return row


class Predictor:
    """Batched, length-sorted inference over a run folder or an exported folder.

    Example:
        >>> predictor = Predictor.load("exported/sst2-lora-int8")  # doctest: +SKIP
        >>> predictor.predict_proba(["dull and far too long"]).round(2)  # doctest: +SKIP
        array([[0.97, 0.03]])
    """

    def __init__(
        self,
        label_names: list[str],
        max_length: int,
        truncation: str = "head",
        model=None,
        tokenizer=None,
        classical=None,
        device: str = "cpu",
        source: str = "",
        session=None,
        variant: str | None = None,
        batch_size: int = 64,
        thresholds: list[float] | None = None,
        temperature: float = 1.0,
        long_text: str = "truncate",
        chunk_stride: int | None = None,
    ):
        self.label_names = list(label_names)
        self.max_length = max_length
        self.long_text = long_text
        """`truncate` (cut by `truncation`) or `chunk`: a text longer than max_length is read as windows
        `chunk_stride` tokens apart and predicted from the mean of their logits (data.encode_windows)."""
        self.chunk_stride = chunk_stride
        self.truncation = truncation
        self.model = model
        self.tokenizer = tokenizer
        self.classical = classical
        self.session = session
        self.device = device
        self.source = source
        self.batch_size = batch_size
        self.thresholds = None if thresholds is None else np.asarray(thresholds, dtype=np.float64)
        """Multi-label runs: a decision threshold per label; probabilities are then sigmoids, not a softmax."""
        self.temperature = results.check_temperature("temperature", temperature)
        """Single-label runs: probabilities are softmax(logits / temperature), the temperature fitted on
        the run's validation slice (calibration.json; 1 for runs without one). The argmax is unchanged."""
        if classical is not None:
            self.backend, self._runner = "tfidf", None
        elif session is not None:
            sessions = session if isinstance(session, (list, tuple)) else [session]
            self.session = sessions[0]
            self.backend, self._runner = "onnx", _OnnxRunner(sessions)
        elif model is not None:
            self.backend, self._runner = "torch", _TorchRunner(model, device)
        else:
            raise ValueError("Predictor needs a model, an ONNX session or a classical model")
        self.variant = variant or ("fp32" if self.backend != "tfidf" else None)

    # ---- loading ------------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        path: str | Path,
        device: str | None = None,
        variant: str | None = None,
        threads: int | None = None,
        workers: int | None = None,
        precision: str = "auto",
    ) -> "Predictor":
        """Loads a run folder, an exported folder or a plain HF classification folder.

        Args:
            path: the folder.
            device: `cpu` or `cuda`; default cuda when available.
            variant: for ONNX exports, `fp32` or `int8`; default the export's own choice.
            threads: ONNX Runtime intra-op threads per session (default: the cores split among
                `workers`); for torch models, torch's CPU threads.
            workers: ONNX Runtime sessions that run batches in parallel; default one per 4 cores
                (CPU only; see `onnx_parallelism`).
            precision: torch models only: `auto` (bf16 autocast on GPUs and on CPUs with native bf16,
                else fp32; runtime.choose_precision), `fp32` or `bf16`. ONNX variants set their own.

        Example:
            >>> Predictor.load("runs/sst2-full", device="cpu").backend  # doctest: +SKIP
            'torch'
        """
        from sentitune.models import refuse_remote_code

        path = Path(path)
        # The rule train applies to base models, for every folder predict and serve load.
        for folder in (path, path / results.MODEL_DIR):
            if folder.is_dir():
                refuse_remote_code(folder, results.RunFolderError)
        manifest = read_manifest(path) if (path / EXPORT_MANIFEST).exists() else None
        if manifest is None or manifest["format"] != "onnx":
            if workers not in (None, 1):
                raise results.RunFolderError(
                    f"{path}: parallel workers apply to ONNX exports only (a torch model "
                    "already uses every core it is given; set threads instead)"
                )
            if threads is not None:
                if threads < 1:
                    raise ValueError(f"threads must be >= 1, got {threads}")
                import torch

                torch.set_num_threads(threads)
        if manifest is not None:
            predictor = cls._load_export(path, manifest, device, variant, threads, workers)
        elif variant is not None:
            raise results.RunFolderError(f"{path}: variant {variant!r} applies only to exported ONNX folders")
        elif (path / results.CONFIG_FILE).exists() or not (path / "config.json").exists():
            predictor = cls._load_run(path, device)
        else:
            predictor = cls._load_hf_folder(path, device, None)
        if predictor.backend == "torch":
            predictor.set_precision(precision)
        return predictor

    @property
    def precision(self) -> str | None:
        """The torch model's compute precision (fp32 or bf16); None for ONNX and tf-idf."""
        return self._runner.precision if self.backend == "torch" else None

    def set_precision(self, choice: str) -> str:
        """Sets a torch model's precision (`auto`, `fp32`, `bf16`) and returns the one chosen; bf16 on a
        CPU without native bf16 raises runtime.PrecisionError."""
        from sentitune.runtime import resolve_precision

        if self.backend != "torch":
            raise ValueError(f"precision applies to torch models; this predictor runs {self.backend}")
        chosen = resolve_precision(choice, self.device, field="precision")
        # fp16 (auto's pick on GPUs without bf16) stays fp32 here: its overflow risk buys little at inference.
        self._runner.precision = "bf16" if chosen == "bf16" else "fp32"
        return self._runner.precision

    @classmethod
    def _load_run(cls, path: Path, device: str | None) -> "Predictor":
        from sentitune.models import load_classifier, progress_bars_on_terminals_only, quiet_transformers, resolve_model

        run = results.load_run(path, require_ok=True)
        model_dir = run.path / results.MODEL_DIR
        if not model_dir.is_dir():
            raise results.RunFolderError(f"{model_dir}: missing model folder")
        cfg = run.config
        method = registry.get(cfg.method.name)
        max_length = cfg.data.resolved_max_length
        check_head_width(run.path / results.LABELS_FILE, run.label_names, model_dir)
        temperature = results.read_temperature(run.path)  # 1 for runs made before temperature scaling
        if not method.neural:
            return cls(
                run.label_names,
                max_length,
                classical=_load_checked(method, model_dir, None),
                source=str(run.path),
                temperature=temperature,
            )
        from sentitune.models import load_tokenizer_from

        device = _resolve_device(device)
        tokenizer = load_tokenizer_from(model_dir, results.RunFolderError)
        # transformers' load report is a multi-line table on stderr; what it reports is refused in one
        # line instead (methods.base.check_loading_info, size mismatches in _load_checked).
        with progress_bars_on_terminals_only(), quiet_transformers():
            model = _load_checked(method, model_dir, lambda: load_classifier(resolve_model(cfg.model), run.label_names))
        check_model_fits(model_dir, model, tokenizer, run.label_names)
        model.to(device).eval()
        thresholds = (
            results.read_thresholds(run.path, run.label_names) if cfg.data.problem_type == "multi_label" else None
        )
        return cls(
            run.label_names,
            max_length,
            cfg.data.truncation,
            model=model,
            tokenizer=tokenizer,
            device=device,
            source=str(run.path),
            thresholds=thresholds,
            temperature=temperature,
            long_text=cfg.data.long_text,
            chunk_stride=cfg.data.chunk_stride,
        )

    @classmethod
    def _load_export(
        cls,
        path: Path,
        manifest: dict,
        device: str | None,
        variant: str | None,
        threads: int | None,
        workers: int | None,
    ) -> "Predictor":
        from sentitune.models import load_tokenizer_from

        if manifest["format"] == "hf":
            if variant is not None:
                raise results.RunFolderError(f"{path}: variant {variant!r} applies only to ONNX exports")
            return cls._load_hf_folder(path, device, manifest)
        variant = variant or manifest["default_variant"]
        files = manifest["files"]
        if variant not in files:
            raise results.RunFolderError(f"{path}: no {variant!r} model in this export (has {', '.join(files)})")
        device = _resolve_device(device)
        # On CUDA one session owns the device; parallel sessions are a CPU measure.
        workers, threads = (
            (1, threads) if device.startswith("cuda") else onnx_parallelism(threads=threads, workers=workers)
        )
        session = [onnx_session(path / files[variant], device, threads) for _ in range(workers)]
        outputs = session[0].get_outputs()[0].shape if hasattr(session[0], "get_outputs") else []
        width = outputs[-1] if outputs else None
        if isinstance(width, int) and width != len(manifest["label_names"]):
            raise results.RunFolderError(
                f"{path / EXPORT_MANIFEST}: lists {len(manifest['label_names'])} labels but "
                f"{files[variant]} gives {width} outputs per text; the export was modified"
            )
        tokenizer = load_tokenizer_from(path, results.RunFolderError)
        return cls(
            manifest["label_names"],
            manifest["max_length"],
            manifest["truncation"],
            tokenizer=tokenizer,
            session=session,
            device=device,
            source=str(path),
            variant=variant,
            temperature=manifest.get("temperature", 1.0),
            # Exports made before chunking existed truncate, as their runs did.
            long_text=manifest.get("long_text", "truncate"),
            chunk_stride=manifest.get("chunk_stride"),
        )

    @classmethod
    def _load_hf_folder(cls, path: Path, device: str | None, manifest: dict | None) -> "Predictor":
        from transformers import AutoModelForSequenceClassification

        from sentitune.methods.base import check_loading_info
        from sentitune.methods.pooling import apply_saved_pooling
        from sentitune.models import load_tokenizer_from, progress_bars_on_terminals_only, quiet_transformers

        device = _resolve_device(device)
        if manifest:
            check_head_width(path / EXPORT_MANIFEST, manifest["label_names"], path)
        tokenizer = load_tokenizer_from(path, results.RunFolderError)
        try:
            with progress_bars_on_terminals_only(), quiet_transformers():
                model, info = AutoModelForSequenceClassification.from_pretrained(
                    path,
                    attn_implementation="sdpa",
                    use_safetensors=True,
                    ignore_mismatched_sizes=True,
                    output_loading_info=True,
                )
            check_loading_info(path, info)
            model = apply_saved_pooling(model)  # config.json's classifier_pooling (mean-pooled runs)
        except (OSError, ValueError, RuntimeError) as exc:
            raise results.RunFolderError(f"{path}: cannot load the model folder ({weights_error(exc)})") from None
        if manifest:
            labels, max_length, truncation = manifest["label_names"], manifest["max_length"], manifest["truncation"]
        else:
            labels = [str(model.config.id2label[i]) for i in range(model.config.num_labels)]
            results.check_label_names(path / "config.json", labels)  # id2label may repeat a name
            max_length, truncation = min(int(tokenizer.model_max_length), 512), "head"
        check_model_fits(path, model, tokenizer, labels)
        model.to(device).eval()
        return cls(
            labels,
            max_length,
            truncation,
            model=model,
            tokenizer=tokenizer,
            device=device,
            source=str(path),
            # A plain HF folder carries no calibration; an export's manifest carries the run's temperature.
            temperature=(manifest or {}).get("temperature", 1.0),
            long_text=(manifest or {}).get("long_text", "truncate"),
            chunk_stride=(manifest or {}).get("chunk_stride"),
        )

    def describe(self) -> dict:
        """What is loaded, for /health and logs."""
        info = {
            "backend": self.backend,
            "variant": self.variant,
            "device": self.device,
            "source": self.source,
            "label_names": self.label_names,
            "max_length": self.max_length,
            "truncation": self.truncation,
            "temperature": self.temperature,
            "long_text": self.long_text,
            "chunk_stride": self.chunk_stride,
        }
        if self.backend == "onnx":
            info["onnx_sessions"] = len(self._runner.sessions)
        return info

    # ---- prediction ---------------------------------------------------------------------------
    def predict_proba(self, texts: Iterable[str], batch_size: int | None = None) -> np.ndarray:
        """Class probabilities (n x k), in input order.

        Example:
            >>> predictor.predict_proba(["great", "awful"]).shape  # doctest: +SKIP
            (2, 2)
        """
        texts = list(texts)
        if self.classical is not None and self.temperature == 1.0 and texts:
            check_texts(texts)  # its own probabilities, exactly: no round trip through logs
            return np.asarray(self.classical.predict_proba(texts), dtype=np.float64)
        logits = self.logits(texts, batch_size)
        if self.classical is None and self.thresholds is not None:
            return sigmoid(logits)
        return temperature_scale(logits, self.temperature)

    def logits(self, texts: Iterable[str], batch_size: int | None = None) -> np.ndarray:
        """The model's raw logits (n x k), in input order, before calibration or sigmoid: what a
        distillation student learns from. A tf-idf model gives its log-probabilities.

        Example:
            >>> predictor.logits(["great", "awful"]).shape  # doctest: +SKIP
            (2, 2)
        """
        texts = list(texts)
        if not texts:
            return np.zeros((0, len(self.label_names)))
        check_texts(texts)
        if self.classical is not None:
            return log_probabilities(np.asarray(self.classical.predict_proba(texts), dtype=np.float64))
        return self._neural_logits(texts, batch_size)

    def _neural_logits(self, texts: list[str], batch_size: int | None) -> np.ndarray:
        """`logits` of checked, non-empty texts through the torch or ONNX runner."""
        from sentitune.data import encode_texts, encode_windows, mean_per_document

        if self.long_text == "chunk":
            encoded, documents = encode_windows(self.tokenizer, texts, self.max_length, self.chunk_stride)
            logits = self._logits_of_ids(encoded["input_ids"], batch_size)
            return mean_per_document(logits, documents, len(texts))
        ids = encode_texts(self.tokenizer, texts, self.max_length, self.truncation)[0]["input_ids"]
        return self._logits_of_ids(ids, batch_size)

    def _logits_of_ids(self, ids: list[list[int]], batch_size: int | None) -> np.ndarray:
        """Logits of token id lists, length-sorted into batches (plan_batches), in input order."""
        batch_size = batch_size or self.batch_size
        pad_id = self.tokenizer.pad_token_id or 0
        out = np.zeros((len(ids), len(self.label_names)), dtype=np.float64)
        batches = plan_batches(np.fromiter(map(len, ids), dtype=np.int64, count=len(ids)), batch_size)
        padded = ((chunk, *_pad([ids[i] for i in chunk], pad_id)) for chunk in batches)
        for chunk, logits in self._runner.map(padded):
            out[chunk] = logits
        return out

    def predict(self, texts: Iterable[str], batch_size: int | None = None) -> list[dict]:
        """One dict per text: text, label, score (its probability) and every class probability.

        Example:
            >>> predictor.predict(["a gorgeous , witty film"])[0]["label"]  # doctest: +SKIP
            'positive'
        """
        texts = list(texts)
        probabilities = self.predict_proba(texts, batch_size)
        return [self.row(text, p) for text, p in zip(texts, probabilities)]

    def predict_stream(
        self, texts: Iterable[str], batch_size: int | None = None, chunk_size: int = 4096
    ) -> Iterator[dict]:
        """Like `predict`, but lazily: holds only `chunk_size` texts at a time (length-sorted within).

        Example:
            >>> rows = predictor.predict_stream(open("big.txt"))  # doctest: +SKIP
        """
        chunk: list[str] = []
        for text in texts:
            chunk.append(text)
            if len(chunk) >= chunk_size:
                yield from self.predict(chunk, batch_size)
                chunk = []
        if chunk:
            yield from self.predict(chunk, batch_size)

    def row(self, text: str, probabilities: np.ndarray) -> dict:
        """One prediction (`prediction_row` with this predictor's labels and thresholds)."""
        return prediction_row(self.label_names, probabilities, self.thresholds, text=text)

    _row = row  # the earlier private name


def _resolve_device(device: str | None) -> str:
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _load_checked(method, model_dir: Path, load_base):
    from safetensors import SafetensorError

    try:
        return method.load(model_dir, load_base)
    except (SafetensorError, FileNotFoundError, OSError, ValueError, KeyError) as exc:
        raise results.RunFolderError(
            f"{model_dir}: cannot load the {method.name} weights ({weights_error(exc)})"
        ) from None
    except RuntimeError as exc:  # torch's load_state_dict: tensors whose shapes do not fit the model
        if "size mismatch" not in str(exc) and "shape" not in str(exc):
            raise
        raise results.RunFolderError(
            f"{model_dir}: cannot load the {method.name} weights: they do not fit the model ({weights_error(exc)})"
        ) from None


_SIZE_MISMATCH = re.compile(
    r"size mismatch for (?P<name>[\w.]+): copying a param with shape (?P<saved>[^\n]*?) from checkpoint, "
    r"the shape in current model is (?P<model>[^\n]*?)\.?(?:\n|$)"
)


def weights_error(exc: BaseException) -> str:
    """A weight-loading error as one short line: torch's multi-line size-mismatch report becomes
    `tensor: saved shape ... vs model shape ...` for its first tensor."""
    from sentitune.errors import quote

    text = str(exc)
    match = _SIZE_MISMATCH.search(text)
    if match:
        count = len(_SIZE_MISMATCH.findall(text))
        more = f" (and {count - 1} more tensors)" if count > 1 else ""
        return f"{match['name']}: saved shape {match['saved']} vs model shape {match['model']}{more}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return quote(lines[0] if lines else type(exc).__name__, 240).strip("'\"")


_HEAD = re.compile(r"(?:^|\.)(?:classifier(?:\.modules_to_save\.[^.]+)?(?:\.out_proj)?\.weight|coef)$")


def _head_width(folder: Path) -> tuple[int, str] | None:
    """(outputs, where) of the classification head saved in `folder`'s safetensors files, read from
    the file headers without loading the weights; None when no head tensor is found."""
    from safetensors import safe_open

    for file in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(file), "numpy") as handle:
                for key in handle.keys():
                    if _HEAD.search(key):
                        shape = handle.get_slice(key).get_shape()
                        # A binary logistic regression keeps one row of weights for two classes.
                        width = 2 if key == "coef" and shape[0] == 1 else shape[0]
                        return int(width), f"{key} in {file.name}"
        except Exception:  # unreadable: the load itself reports it, naming the file
            return None
    return None


def check_head_width(labels_path: Path, label_names: list[str], model_dir: Path) -> None:
    """Refuses a label list whose length is not the saved head's width: extra names would never be
    predicted (or be read from the wrong output), missing ones would leave outputs unnamed."""
    found = _head_width(model_dir)
    if found is not None and found[0] != len(label_names):
        from sentitune.errors import quote

        raise results.RunFolderError(
            f"{labels_path}: lists {len(label_names)} labels {quote(label_names, 120)} but the model's head has "
            f"{found[0]} outputs ({found[1]}); the run folder was modified or mixes two runs"
        )


def check_model_fits(folder: Path, model, tokenizer, label_names: list[str]) -> None:
    """After loading: the head has one output per label and every token id the tokenizer can produce
    has an embedding row (a larger tokenizer would fail on the first text holding such a token)."""
    outputs = getattr(model.config, "num_labels", None)
    if outputs is not None and outputs != len(label_names):
        raise results.RunFolderError(
            f"{folder}: the model has {outputs} outputs but {len(label_names)} label names; the folder was modified"
        )
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    rows = getattr(embeddings, "num_embeddings", None)
    if rows is not None and len(tokenizer) > rows:
        raise results.RunFolderError(
            f"{folder}: the tokenizer has {len(tokenizer):,} tokens but the model's embeddings only "
            f"{rows:,} rows; the tokenizer files belong to another model"
        )


def check_texts(texts: list[str]) -> None:
    """Refuses texts that are not Unicode: a lone surrogate, which JSON escapes can hold and which
    Python makes of invalid UTF-8 bytes in command-line arguments (surrogateescape). No tokenizer
    or UTF-8 writer accepts one."""
    from sentitune.data import DataError, is_unicode

    for i, text in enumerate(texts):
        if isinstance(text, str) and not is_unicode(text):
            bad = next(ch for ch in text if "\ud800" <= ch <= "\udfff")
            origin = (
                f"byte {bytes([ord(bad) - 0xDC00])!r} is not UTF-8 (texts given as arguments must be UTF-8)"
                if "\udc80" <= bad <= "\udcff"
                else f"{bad!r} is a lone surrogate, not a character"
            )
            raise DataError(f"text {i + 1}: {origin}")


def read_manifest(folder: str | Path) -> dict:
    """The `sentitune.json` of an exported folder, checked for the keys the Predictor needs."""
    path = Path(folder) / EXPORT_MANIFEST
    if not path.exists():
        raise results.RunFolderError(f"{folder}: not an exported folder (no {EXPORT_MANIFEST})")
    manifest = results.read_json(path, dict)  # corrupted, not UTF-8, not an object: one line
    required = ["format", "label_names", "max_length", "truncation"]
    if isinstance(manifest, dict) and manifest.get("format") == "onnx":
        required += ["files", "default_variant"]
    missing = [key for key in required if not isinstance(manifest, dict) or key not in manifest]
    if missing:
        raise results.RunFolderError(f"{path}: missing keys {missing}")
    if manifest["format"] not in ("onnx", "hf"):
        raise results.RunFolderError(f"{path}: unknown format {manifest['format']!r} (expected onnx or hf)")
    results.check_label_names(path, manifest["label_names"])
    if "temperature" in manifest:  # exports made before temperature scaling have none: T = 1
        results.check_temperature(path, manifest["temperature"])
    return manifest


# ---- labelled files: `evaluate` and compare's eval sets ---------------------------------------


def score_labelled_file(
    predictor: Predictor,
    data_file: str | Path,
    text_column: str | None = None,
    label_column: str | None = None,
    batch_size: int | None = None,
) -> tuple[list[str], np.ndarray, np.ndarray, dict]:
    """Scores a labelled CSV/TSV/JSONL file with a loaded single-label predictor.

    Labels must belong to the predictor's label set (data.read_labelled_file: by name, or by id for
    0..K-1 files); one that does not is one DataError line naming the file, line and label.

    Returns:
        (texts, gold ids, probabilities, metrics): `test_*` scores as a run's metrics.json names them
        (accuracy, macro F1, loss, and `test_ece`), the file and its SHA-256 (a changed file is
        scored again), the example count and the temperature the probabilities were scaled with.

    Example:
        >>> texts, gold, probs, metrics = score_labelled_file(predictor, "suite.tsv")  # doctest: +SKIP
    """
    import hashlib

    from sentitune.data import read_labelled_file
    from sentitune.metrics import classification_metrics, expected_calibration_error

    data_file = Path(data_file)
    table, gold = read_labelled_file(data_file, predictor.label_names, text_column, label_column)
    gold = np.asarray(gold, dtype=np.int64)
    probabilities = predictor.predict_proba(table.texts, batch_size)
    metrics = {f"test_{k}": v for k, v in classification_metrics(gold, probabilities).items()}
    metrics.update(
        {
            "test_ece": expected_calibration_error(gold, probabilities)["ece"],
            "data_file": portable_path(str(data_file)),
            "data_sha256": hashlib.sha256(data_file.read_bytes()).hexdigest(),
            "test_examples": len(gold),
            "run": predictor.source,
            "temperature": predictor.temperature,
            "dropped_empty_texts": table.dropped_empty,
            "duplicate_rows": table.duplicates,
        }
    )
    return table.texts, gold, probabilities, metrics


def write_scored_file(output_dir: str | Path, texts, gold, probabilities, label_names, metrics: dict) -> None:
    """An evaluation folder: predictions.csv (as a run's) and metrics.json (status ok + `metrics`), each
    written atomically, metrics.json last: a folder with a metrics.json holds finished predictions."""
    output_dir = Path(output_dir)
    results.atomic_write_csv(
        output_dir / results.PREDICTIONS_FILE, results.predictions_rows(texts, gold, probabilities, label_names)
    )
    results.atomic_write_json(output_dir / results.METRICS_FILE, {"status": "ok", **metrics})


# ---- files in, JSONL out ----------------------------------------------------------------------


def write_jsonl(rows: Iterable[dict], output: str | None) -> int:
    """Writes rows as JSON lines to `output` or stdout. A file is written atomically (results.atomic_writer:
    a unique temp file renamed at the end) under the output's writer lock, so a second writer of the
    same file is refused at once (OutputInUse, naming the holder's PID) instead of mixing rows."""
    count = 0
    if not output or output == "-":
        for row in rows:
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
        sys.stdout.flush()
        return count
    path = Path(output)
    results.check_output_path(path, "--output", "file")  # a folder, or a parent that is a file: one line
    # A device or pipe (/dev/null) is written through, with no lock file planted beside it in /dev.
    lock = contextlib.nullcontext() if results.is_special_file(path) else results.exclusive_lock(path)
    with lock, results.atomic_writer(path) as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count
