"""Classical baseline: TF-IDF word and character n-grams + logistic regression (scikit-learn).

Same splits, metrics, run folder and predict surface as the neural methods. The regularisation
strength is chosen on the validation slice, the analogue of best-checkpoint selection. Saved as
safetensors (idf weights, coefficients) + JSON (vocabularies): no pickle is ever loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sentitune.methods.base import Method
from sentitune.methods.logreg import select_logistic_regression
from sentitune.methods.registry import register


class TfidfClassifier:
    """A fitted TF-IDF + logistic-regression model with `predict_proba(texts)`."""

    def __init__(self, vectorizers: dict, coef: np.ndarray, intercept: np.ndarray, c: float):
        self.vectorizers = vectorizers
        self.coef = coef
        self.intercept = intercept
        self.c = c
        self.train_samples: int | None = None
        """Examples the fit processed (one pass per C); set by `fit`."""

    def features(self, texts):
        from scipy.sparse import hstack

        return hstack([v.transform(texts) for v in self.vectorizers.values()]).tocsr()

    def predict_proba(self, texts) -> np.ndarray:
        from scipy.special import expit, softmax

        scores = self.features(list(texts)) @ self.coef.T + self.intercept
        if self.coef.shape[0] == 1:  # binary logistic regression keeps one row of weights
            positive = expit(scores[:, 0])
            return np.stack([1 - positive, positive], axis=1)
        return softmax(scores, axis=1)

    @property
    def num_parameters(self) -> int:
        return int(self.coef.size + self.intercept.size)


def _vectorizer(analyzer: str, ngrams: list[int], max_features: int | None):
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(
        analyzer=analyzer,
        ngram_range=tuple(ngrams),
        max_features=max_features,
        sublinear_tf=True,
        lowercase=True,
        min_df=1,
        dtype=np.float32,
    )


def _make_vectorizers(cfg) -> dict:
    vectorizers = {}
    if cfg.tfidf_word_ngrams:
        vectorizers["word"] = _vectorizer("word", cfg.tfidf_word_ngrams, cfg.tfidf_max_features)
    if cfg.tfidf_char_ngrams:
        vectorizers["char_wb"] = _vectorizer("char_wb", cfg.tfidf_char_ngrams, cfg.tfidf_max_features)
    return vectorizers


@register
class Tfidf(Method):
    name = "tfidf"
    recorded_knobs = ("tfidf_word_ngrams", "tfidf_char_ngrams", "tfidf_c_grid")
    default_learning_rate = 0.0  # not gradient-trained
    neural = False
    uses_trainer = False
    supports_multi_label = False
    summary = "TF-IDF word+char n-grams + logistic regression"

    def fit(self, train, validation, cfg, seed: int, context=None) -> tuple[TfidfClassifier, list[dict]]:
        """Fits on train, picks C on validation; returns the model and one history row per C. Needs no
        `context` (methods.base.FitContext): it has no encoder."""
        from scipy.sparse import hstack

        vectorizers = _make_vectorizers(cfg)
        train_x = hstack([v.fit_transform(train.texts) for v in vectorizers.values()]).tocsr()
        validation_x = hstack([v.transform(validation.texts) for v in vectorizers.values()]).tocsr()
        model, c, history = select_logistic_regression(
            train_x, train.labels, validation_x, validation.labels, cfg.tfidf_c_grid, seed
        )
        classifier = TfidfClassifier(
            vectorizers, model.coef_.astype(np.float32), model.intercept_.astype(np.float32), c
        )
        classifier.train_samples = len(train) * len(cfg.tfidf_c_grid)
        return classifier, history

    def run_metrics(self, model: TfidfClassifier) -> dict:
        return {"tfidf_selected_c": model.c}

    def prepare(self, model, cfg):  # pragma: no cover - not a neural method
        raise TypeError("tfidf is not a neural method")

    def save(self, model: TfidfClassifier, folder: Path) -> None:
        from safetensors.numpy import save_file

        folder.mkdir(parents=True, exist_ok=True)
        tensors = {"coef": model.coef, "intercept": model.intercept}
        meta = {"C": model.c, "vectorizers": {}}
        for key, vectorizer in model.vectorizers.items():
            tensors[f"idf_{key}"] = vectorizer.idf_.astype(np.float32)
            vocabulary = sorted(vectorizer.vocabulary_, key=vectorizer.vocabulary_.get)
            meta["vectorizers"][key] = {
                "analyzer": vectorizer.analyzer,
                "ngram_range": list(vectorizer.ngram_range),
                "vocabulary": vocabulary,
            }
        save_file(tensors, str(folder / "tfidf.safetensors"))
        (folder / "tfidf.json").write_text(json.dumps(meta), encoding="utf-8")

    def load(self, folder: Path, load_base=None) -> TfidfClassifier:
        from safetensors.numpy import load_file

        tensors = load_file(str(folder / "tfidf.safetensors"))
        meta = json.loads((folder / "tfidf.json").read_text(encoding="utf-8"))
        vectorizers = {}
        for key, spec in meta["vectorizers"].items():
            vectorizer = _vectorizer(spec["analyzer"], spec["ngram_range"], None)
            vectorizer.vocabulary_ = {term: i for i, term in enumerate(spec["vocabulary"])}
            idf = tensors[f"idf_{key}"]
            if idf.shape != (len(spec["vocabulary"]),):
                raise ValueError(
                    f"tensor idf_{key} in tfidf.safetensors has shape {list(idf.shape)} but "
                    f"tfidf.json lists {len(spec['vocabulary'])} {key} terms"
                )
            vectorizer.idf_ = idf
            vectorizers[key] = vectorizer
        coef, intercept = tensors["coef"], tensors["intercept"]
        features = sum(len(v.vocabulary_) for v in vectorizers.values())
        if coef.ndim != 2 or coef.shape[1] != features:
            raise ValueError(
                f"tensor coef in tfidf.safetensors has shape {list(coef.shape)}; expected [classes, {features}] "
                "(one column per vocabulary term in tfidf.json)"
            )
        if intercept.shape != (coef.shape[0],):
            raise ValueError(
                f"tensor intercept in tfidf.safetensors has shape {list(intercept.shape)}; expected [{coef.shape[0]}]"
            )
        return TfidfClassifier(vectorizers, coef, intercept, meta["C"])
