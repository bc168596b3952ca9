"""The Python-backend `model.py` of a sentitune Triton repository (`sentitune export --format triton`).

Copied as-is into two models of the repository: `sentitune_tokenizer` (raw text -> input_ids and
attention_mask, padded to the export's max_length so that Triton's dynamic batcher can stack requests)
and `sentitune_postprocess` (logits -> calibrated probabilities and the top label). Which one a copy is
comes from its config.pbtxt parameter `step`. It runs inside Triton, where sentitune is not installed:
it imports only numpy, transformers and `triton_python_backend_utils`, and reads the tokenizer files
and sentitune.json copied beside it. Truncation follows sentitune.data.encode_texts (head, tail,
head+tail); tests/test_scale_triton.py checks the probabilities against the Predictor's.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def load_settings(folder: str | Path) -> dict:
    """sentitune.json of the export this repository was built from."""
    return json.loads((Path(folder) / "sentitune.json").read_text(encoding="utf-8"))


def encode(tokenizer, texts: list[str], max_length: int, truncation: str = "head") -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask), int64, padded to `max_length`, cut as the Predictor cuts them."""
    body = tokenizer(texts, add_special_tokens=False, truncation=False)["input_ids"]
    budget = max_length - 2
    ids = np.full((len(texts), max_length), tokenizer.pad_token_id or 0, dtype=np.int64)
    mask = np.zeros((len(texts), max_length), dtype=np.int64)
    for row, tokens in enumerate(body):
        if len(tokens) > budget:
            if truncation == "tail":
                tokens = tokens[-budget:]
            elif truncation == "head+tail":
                head = budget // 4
                tokens = tokens[:head] + tokens[len(tokens) - (budget - head) :]
            else:
                tokens = tokens[:budget]
        tokens = [tokenizer.cls_token_id, *tokens, tokenizer.sep_token_id]
        ids[row, : len(tokens)] = tokens
        mask[row, : len(tokens)] = 1
    return ids, mask


def probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / temperature), in float64 and then float32 for Triton's FP32 output."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled -= scaled.max(axis=-1, keepdims=True)
    exp = np.exp(scaled)
    return (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)


def decode_texts(raw: np.ndarray) -> list[str]:
    """Triton's TYPE_STRING tensor (bytes objects, shape [batch, 1]) -> Python strings."""
    return [value.decode("utf-8") if isinstance(value, bytes) else str(value) for value in raw.reshape(-1)]


class TritonPythonModel:
    """Triton's Python-backend entry point."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self.step = config["parameters"]["step"]["string_value"]
        folder = Path(args["model_repository"]) / str(args["model_version"])
        self.settings = load_settings(folder)
        self.labels = np.array([name.encode("utf-8") for name in self.settings["label_names"]], dtype=object)
        if self.step == "tokenize":
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(folder)

    def execute(self, requests) -> list:
        import triton_python_backend_utils as pb_utils

        responses = []
        for request in requests:
            if self.step == "tokenize":
                texts = decode_texts(pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy())
                ids, mask = encode(
                    self.tokenizer, texts, self.settings["max_length"], self.settings.get("truncation", "head")
                )
                outputs = [pb_utils.Tensor("input_ids", ids), pb_utils.Tensor("attention_mask", mask)]
            else:
                logits = pb_utils.get_input_tensor_by_name(request, "LOGITS").as_numpy()
                probs = probabilities(logits, self.settings.get("temperature", 1.0))
                labels = self.labels[probs.argmax(axis=-1)].reshape(-1, 1)
                outputs = [pb_utils.Tensor("PROBABILITIES", probs), pb_utils.Tensor("LABEL", labels)]
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
        return responses
