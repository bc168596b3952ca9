"""Run folders that plain `pipeline` / `AutoPeftModelForSequenceClassification` cannot read right, and
the plain transformers/peft code their model cards give instead (no remote code):

* mean-pooled runs (`method.pooling: mean`, minilm-l6's default): `pipeline` reads BERT through [CLS],
  so the card pools by hand;
* prefix runs: peft 0.21 looks for `past_key_values`, which transformers 5's BERT calls `cache`, so
  the card gives the model that argument (and, for a mean-pooled prefix run, pools by hand in it).

The code in the card is run here, as a user would paste it, and must give the Predictor's probabilities."""

from __future__ import annotations

import re

import numpy as np
import pytest
from huggingface_hub import ModelCard

from sentitune.inference import Predictor
from sentitune.metrics import temperature_scale


TEXTS = ["a gorgeous , witty film", "a dull , lifeless mess", "i loved every minute", "painfully unfunny"]


@pytest.mark.parametrize("method, pooling", [("full", "mean"), ("lora", "mean"), ("prefix", "cls"), ("prefix", "mean")])
def test_the_cards_plain_transformers_code_matches_the_predictor(method, pooling, tiny_config, tmp_path):
    from sentitune.training import train

    run_dir = tmp_path / "run"
    train(tiny_config(method, **{"method.pooling": pooling}), run_dir)
    card = ModelCard.load(run_dir / "model" / "README.md").text
    code = re.search(r"```python\n(.*?)```", card, re.S)
    assert code and "trust_remote_code" not in code.group(1)
    source = code.group(1).replace("path/to/this/folder", str(run_dir / "model"))
    source = source.replace('["A gorgeous, witty film."]', repr(TEXTS))
    namespace: dict = {}
    exec(compile(source, "model card", "exec"), namespace)  # noqa: S102 - the card's own code
    plain = namespace["probabilities"].double().numpy()
    predictor = Predictor.load(run_dir, device="cpu", precision="fp32")
    served = predictor.predict_proba(TEXTS)
    # Plain code gives softmax(logits); sentitune serves softmax(logits / T) with the run's T.
    np.testing.assert_allclose(temperature_scale(np.log(plain), predictor.temperature), served, atol=1e-5, rtol=0)
    assert np.ptp(served[:, 0]) > 0
