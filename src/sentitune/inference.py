"""Predictor: a run folder (full, lora, head, tfidf) -> predict(texts) with label, score, probabilities.

Example:
    >>> predictor = Predictor.load("runs/sst2-lora")  # doctest: +SKIP
    >>> predictor.predict(["A gorgeous, witty film."])[0]["label"]  # doctest: +SKIP
    'positive'
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from sentitune import results
from sentitune.methods import registry


class Predictor:
    """Batched, length-sorted inference over any sentitune run folder."""

    def __init__(self, label_names: list[str], max_length: int, truncation: str = "head",
                 model=None, tokenizer=None, classical=None, device: str = "cpu", source: str = ""):
        self.label_names = label_names
        self.max_length = max_length
        self.truncation = truncation
        self.model = model
        self.tokenizer = tokenizer
        self.classical = classical
        self.device = device
        self.source = source

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> "Predictor":
        import torch

        from sentitune.models import load_classifier, resolve_model

        run = results.load_run(path, require_ok=True)
        model_dir = run.path / results.MODEL_DIR
        if not model_dir.is_dir():
            raise results.RunFolderError(f"{model_dir}: missing model folder")
        cfg = run.config
        method = registry.get(cfg.method.name)
        max_length = cfg.data.resolved_max_length
        if not method.neural:
            return cls(run.label_names, max_length, classical=_load_checked(method, model_dir, None),
                       source=str(run.path))
        from transformers import AutoTokenizer

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = _load_checked(method, model_dir, lambda: load_classifier(resolve_model(cfg.model), run.label_names))
        model.to(device).eval()
        return cls(run.label_names, max_length, cfg.data.truncation, model=model, tokenizer=tokenizer,
                   device=device, source=str(run.path))

    def predict_proba(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Class probabilities (n x k), in input order."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, len(self.label_names)))
        if self.classical is not None:
            return np.asarray(self.classical.predict_proba(texts))
        import torch

        from sentitune.data import encode_texts

        encoded, _ = encode_texts(self.tokenizer, texts, self.max_length, self.truncation)
        ids = encoded["input_ids"]
        # Sorting by length keeps each batch's padding close to zero.
        order = np.argsort([len(x) for x in ids], kind="stable")
        out = np.zeros((len(texts), len(self.label_names)), dtype=np.float64)
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                chunk = order[start:start + batch_size]
                batch = self.tokenizer.pad({"input_ids": [ids[i] for i in chunk]}, return_tensors="pt")
                batch = {k: v.to(self.device) for k, v in batch.items()}
                logits = self.model(**batch).logits.float()
                out[chunk] = torch.softmax(logits, dim=-1).cpu().numpy()
        return out

    def predict(self, texts: Iterable[str], batch_size: int = 64) -> list[dict]:
        texts = list(texts)
        probabilities = self.predict_proba(texts, batch_size)
        return [self._row(text, p) for text, p in zip(texts, probabilities)]

    def _row(self, text: str, probabilities: np.ndarray) -> dict:
        best = int(probabilities.argmax())
        return {
            "text": text,
            "label": self.label_names[best],
            "score": float(probabilities[best]),
            "probabilities": {name: float(p) for name, p in zip(self.label_names, probabilities)},
        }


def _load_checked(method, model_dir: Path, load_base):
    from safetensors import SafetensorError

    try:
        return method.load(model_dir, load_base)
    except (SafetensorError, FileNotFoundError, OSError, ValueError, KeyError) as exc:
        raise results.RunFolderError(f"{model_dir}: cannot load the {method.name} weights ({exc})") from None


def evaluate_file(run_dir: str | Path, data_file: str | Path, text_column: str | None = None,
                  label_column: str | None = None, output_dir: str | Path | None = None,
                  batch_size: int = 64) -> dict:
    """Scores a labelled CSV/TSV/JSONL file with a trained run; writes predictions.csv and metrics.json.

    Labels must belong to the run's label set (by name, or by id for 0..K-1 files).
    """
    from sentitune.data import file_format, map_labels, read_table
    from sentitune.metrics import classification_metrics

    predictor = Predictor.load(run_dir)
    data_file = Path(data_file)
    text_column = text_column or ("sentence" if file_format(data_file) == "tsv" else "text")
    table = read_table(data_file, text_column, label_column or "label")
    gold = np.asarray(map_labels(table, predictor.label_names))
    probabilities = predictor.predict_proba(table.texts, batch_size)
    metrics = {f"test_{k}": v for k, v in classification_metrics(gold, probabilities).items()}
    metrics.update({"data_file": str(data_file), "test_examples": len(gold), "run": str(run_dir),
                    "dropped_empty_texts": table.dropped_empty, "duplicate_rows": table.duplicates})
    output_dir = Path(output_dir) if output_dir else Path(run_dir) / "evaluations" / data_file.stem
    results.atomic_write_csv(output_dir / results.PREDICTIONS_FILE,
                             results.predictions_rows(table.texts, gold, probabilities, predictor.label_names))
    results.atomic_write_json(output_dir / results.METRICS_FILE, {"status": "ok", **metrics})
    from sentitune.analysis import analyze_evaluation

    metrics["analysis"] = analyze_evaluation(output_dir, table.texts, gold, probabilities, predictor)
    metrics["output_dir"] = str(output_dir)
    return metrics
