"""What makes a run's `model/` folder at home on the Hugging Face hub: a model card (README.md with
`huggingface_hub.ModelCard` metadata) and a base-model reference that means something on another
machine.

A run's `model/` loads with plain Hugging Face APIs:
  * full, head, bitfit: `pipeline("text-classification", model="RUN/model")` (config.json carries
    id2label and label2id; head and bitfit save the whole model beside their trained tensors);
  * LoRA, DoRA, IA3: `AutoPeftModelForSequenceClassification.from_pretrained("RUN/model")`, whose
    adapter_config.json names the base model by hub id (an alias's hub id, e.g. minilm-l6 ->
    sentence-transformers/all-MiniLM-L6-v2) or, for a local base folder, as the run named it;
  * prefix: `AutoPeftModelForSequenceClassification` alone fails (peft 0.21 looks for
    `past_key_values`, which transformers 5's BERT calls `cache`; methods/prefix.py), so the card
    gives the three-line forward that renames it before `PeftModel.from_pretrained`;
  * mean-pooled classifiers (`method.pooling: mean`, the default for minilm-l6): `pipeline` would read
    BERT through [CLS] (methods/pooling.py), so the card shows plain transformers/peft code that loads
    the same folder and applies the classifier to the masked mean by hand (no remote code; a prefix
    run's does it inside the forward that takes the prefixes), and sentitune's command.

Example:
    >>> card = run_card(cfg, metrics, "peft")  # doctest: +SKIP
    >>> card.data.base_model  # doctest: +SKIP
    'sentence-transformers/all-MiniLM-L6-v2'
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

from sentitune.config import RunConfig
from sentitune.models import hub_reference


CARD_FILE = "README.md"
ADAPTER_CONFIG = "adapter_config.json"

DATASET_HUB_IDS = {"sst2": ("nyu-mll/glue", "sst2"), "imdb": ("stanfordnlp/imdb", None)}
"""The shipped datasets' hub ids and configs (what data.py loads them from, or a local copy of)."""

DATASET_DOMAINS = {"sst2": "movie-review sentences (SST-2)", "imdb": "full IMDb movie reviews"}


def base_model_reference(model: str) -> str:
    """What a run's folder names as its base model: the hub id (an alias's hub id) when there is one,
    else the local folder as the run's config names it, never this machine's site-packages path.

    Example:
        >>> base_model_reference("minilm-l6")
        'sentence-transformers/all-MiniLM-L6-v2'
    """
    return hub_reference(model) or model


def make_adapter_portable(model_dir: str | Path, model: str) -> None:
    """Points adapter_config.json's `base_model_name_or_path` (peft writes the folder the weights were
    loaded from, for an alias a path inside site-packages) at `base_model_reference(model)`. A folder
    without an adapter is left alone."""
    from sentitune.results import atomic_write_json

    path = Path(model_dir) / ADAPTER_CONFIG
    if not path.is_file():
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base_model_reference(model)
    atomic_write_json(path, config)


def folder_kind(model_dir: str | Path) -> str:
    """How the folder loads outside sentitune: `peft` (an adapter), `transformers` (a whole model),
    or `sentitune` (anything else: tf-idf weights, or a mean-pooled classifier, which plain
    transformers would read through [CLS]; methods/pooling.py)."""
    from sentitune.methods.pooling import needs_sentitune

    model_dir = Path(model_dir)
    if needs_sentitune(model_dir):
        return "sentitune"
    if (model_dir / ADAPTER_CONFIG).is_file():
        return "peft"
    if (model_dir / "config.json").is_file() and any(model_dir.glob("model*.safetensors")):
        return "transformers"
    return "sentitune"


def _adapter_type(model_dir: Path) -> str | None:
    try:
        return json.loads((model_dir / ADAPTER_CONFIG).read_text(encoding="utf-8")).get("peft_type")
    except (OSError, ValueError):
        return None


def _number(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else f"{value:,}"


def _command(metrics: dict) -> str:
    """The recorded command line with the program's folder left out (it names this machine)."""
    parts = str(metrics.get("provenance", {}).get("command", "")).split(" ")
    if not parts or not parts[0]:
        return ""
    return " ".join([Path(parts[0]).name, *parts[1:]])


def _usage(
    kind: str, label_names: list[str], adapter_type: str | None, pooling: str | None, predict_target: str
) -> str:
    if kind == "transformers":
        return (
            "```python\nfrom transformers import pipeline\n\n"
            'classifier = pipeline("text-classification", model="path/to/this/folder", top_k=None)\n'
            'classifier("A gorgeous, witty film.")\n```\n'
        )
    if kind == "peft" and adapter_type == "PREFIX_TUNING":
        return (
            _prefix_usage(label_names, mean_pooled=False)
            + "\nor with sentitune (which adds the same argument at load):\n\n"
            + f'```bash\nsentitune predict --model {predict_target} "A gorgeous, witty film."\n```\n'
        )
    if kind == "peft":
        id2label = dict(enumerate(label_names))
        label2id = {name: i for i, name in enumerate(label_names)}
        # The base model loads from its own config (two labels, LABEL_0/LABEL_1); these name the head.
        return (
            "```python\nimport torch\nfrom peft import AutoPeftModelForSequenceClassification\n"
            "from transformers import AutoTokenizer\n\n"
            "model = AutoPeftModelForSequenceClassification.from_pretrained(\n"
            f'    "path/to/this/folder", num_labels={len(label_names)}, id2label={id2label}, label2id={label2id}\n'
            ")\n"
            'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")\n'
            'inputs = tokenizer(["A gorgeous, witty film."], return_tensors="pt")\n'
            "with torch.no_grad():\n"
            "    probabilities = model(**inputs).logits.softmax(-1)\n"
            "```\n\n`model.merge_and_unload()` folds the adapter into the base weights.\n"
        )
    why = ""
    if pooling == "mean":
        why = (
            "This classifier reads the encoder's mean token state (`method.pooling: mean`), which "
            "transformers' BERT classifier does not do: loaded without sentitune, it would read [CLS] "
            "instead and predict differently.\n\n"
        )
        if adapter_type == "PREFIX_TUNING":
            why += _prefix_usage(label_names, mean_pooled=True) + "\nor with sentitune:\n\n"
        else:
            why += _mean_pooling_usage(label_names, adapter_type) + "\nor with sentitune:\n\n"
    return why + f'```bash\nsentitune predict --model {predict_target} "A gorgeous, witty film."\n```\n'


def _prefix_usage(label_names: list[str], mean_pooled: bool) -> str:
    """Plain transformers/peft code for a prefix run: `AutoPeftModelForSequenceClassification` alone
    fails (peft 0.21 checks for a `past_key_values` argument that transformers 5's BERT calls `cache`;
    methods/prefix.py), so the base model gets a forward that takes it. A mean-pooled run's forward
    also pools by hand, as methods/pooled_bert.py does: peft prepends the prefix's positions to the
    attention mask, not to the hidden states, so the mask is read from its end."""
    id2label = dict(enumerate(label_names))
    label2id = {name: i for i, name in enumerate(label_names)}
    if mean_pooled:
        intro = (
            "With plain transformers and peft, a forward that takes the prefixes (peft 0.21 checks for a "
            "`past_key_values` argument that transformers 5's BERT calls `cache`) and pools by hand:\n\n"
        )
        imports = "from transformers.modeling_outputs import SequenceClassifierOutput\n"
        forward = (
            "def prefix_forward(input_ids=None, attention_mask=None, past_key_values=None, **kwargs):\n"
            "    hidden = base.base_model(\n"
            "        input_ids=input_ids,\n"
            "        attention_mask=attention_mask,\n"
            '        token_type_ids=kwargs.get("token_type_ids"),\n'
            "        cache=past_key_values,\n"
            "    ).last_hidden_state\n"
            "    # peft puts the prefix's positions first in the mask; the hidden states are the text's own.\n"
            "    mask = attention_mask[:, -hidden.shape[1] :].unsqueeze(-1).to(hidden.dtype)\n"
            "    return SequenceClassifierOutput(logits=base.classifier((hidden * mask).sum(1) / mask.sum(1)))\n"
        )
    else:
        intro = (
            "`AutoPeftModelForSequenceClassification` alone fails on these prefixes: peft 0.21 checks for a "
            "`past_key_values` argument that transformers 5's BERT now calls `cache`. Three lines give the "
            "model that argument:\n\n"
        )
        imports = ""
        forward = (
            "forward = type(base).forward\n\n\n"
            "def prefix_forward(input_ids=None, attention_mask=None, past_key_values=None, **kwargs):\n"
            "    return forward(\n"
            "        base, input_ids=input_ids, attention_mask=attention_mask, cache=past_key_values, **kwargs\n"
            "    )\n"
        )
    load = (
        'folder = "path/to/this/folder"\n'
        "base = AutoModelForSequenceClassification.from_pretrained(\n"
        "    PeftConfig.from_pretrained(folder).base_model_name_or_path,\n"
        f"    num_labels={len(label_names)}, id2label={id2label}, label2id={label2id},\n"
        ")\n"
    )
    imports = (
        "import torch\nfrom peft import PeftConfig, PeftModel\n"
        f"from transformers import AutoModelForSequenceClassification, AutoTokenizer\n{imports}\n"
    )
    return f"{intro}```python\n{imports}{load}{forward}\n\n" + (
        "base.forward = prefix_forward\n"
        "model = PeftModel.from_pretrained(base, folder).eval()\n"
        "tokenizer = AutoTokenizer.from_pretrained(folder)\n"
        'inputs = tokenizer(["A gorgeous, witty film."], return_tensors="pt", padding=True)\n'
        "with torch.no_grad():\n"
        "    probabilities = model(**inputs).logits.softmax(-1)\n"
        "```\n"
    )


def _mean_pooling_usage(label_names: list[str], adapter_type: str | None) -> str:
    """Plain transformers (and peft) code for a mean-pooled classifier: the classifier applied by hand
    to the attention-masked mean of the last hidden states, as methods/pooled_bert.py computes it.
    transformers has no BERT class that pools by the mean, and remote code is never asked for."""
    if adapter_type is None:
        load = (
            "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n\n"
            'model = AutoModelForSequenceClassification.from_pretrained("path/to/this/folder").eval()\n'
        )
    else:
        id2label = dict(enumerate(label_names))
        label2id = {name: i for i, name in enumerate(label_names)}
        load = (
            "from peft import AutoPeftModelForSequenceClassification\n"
            "from transformers import AutoTokenizer\n\n"
            "model = AutoPeftModelForSequenceClassification.from_pretrained(\n"
            f'    "path/to/this/folder", num_labels={len(label_names)}, id2label={id2label}, label2id={label2id}\n'
            ").merge_and_unload().eval()\n"
        )
    return (
        "With plain transformers, pool by hand:\n\n```python\nimport torch\n"
        + load
        + 'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")\n'
        'inputs = tokenizer(["A gorgeous, witty film."], return_tensors="pt", padding=True, truncation=True)\n'
        "with torch.no_grad():\n"
        "    hidden = model.base_model(**inputs).last_hidden_state\n"
        '    mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)\n'
        "    probabilities = model.classifier((hidden * mask).sum(1) / mask.sum(1)).softmax(-1)\n"
        "```\n"
    )


def run_card(
    cfg: RunConfig,
    metrics: dict,
    kind: str,
    adapter_type: str | None = None,
    slices: dict | None = None,
    predict_target: str = "path/to/the/run",
):
    """The model card of a finished run, as a `huggingface_hub.ModelCard`.

    Args:
        cfg: the run's configuration.
        metrics: the run's metrics.json content (test_*, validation_*, params_*, provenance, ...).
        kind: `folder_kind` of the folder the card describes.
        adapter_type: adapter_config.json's peft_type, for peft folders.
        slices: optional {slice name: (accuracy, examples)}, e.g. the negation slice from analysis.
        predict_target: what `sentitune predict --model` takes for this model (a run folder, or an
            exported folder).
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    from sentitune.methods import registry
    from sentitune.metrics import wilson_interval

    method = registry.get(cfg.method.name)
    label_names = list(metrics.get("label_names") or [])
    base = hub_reference(cfg.model)
    dataset_id, dataset_config = DATASET_HUB_IDS.get(cfg.data.dataset, (None, None))
    if cfg.data.dataset.startswith("hub:"):  # hub:OWNER/NAME[:CONFIG]
        dataset_id, _, config_name = cfg.data.dataset[4:].partition(":")
        dataset_config = config_name or None
    dataset_name = dataset_id or "local files"
    if cfg.data.dataset == "files":
        files = [Path(f).name for f in (cfg.data.train_file, cfg.data.validation_file, cfg.data.test_file) if f]
        dataset_name = f"local files ({', '.join(files)})"
    # A local base folder contributes its name, never its path.
    base_name = base.split("/")[-1] if base else Path(cfg.model).name
    data_name = (dataset_id or cfg.data.dataset).split("/")[-1]
    model_name = f"{base_name}-{data_name}-{method.name}"

    test_examples = int(metrics.get("test_examples") or 0)
    accuracy = metrics.get("test_accuracy")
    low = high = None
    if accuracy is not None and test_examples:
        low, high = wilson_interval(round(accuracy * test_examples), test_examples)

    eval_results = None
    if dataset_id and accuracy is not None:
        eval_results = [
            EvalResult(
                task_type="text-classification",
                dataset_type=dataset_id,
                dataset_name=dataset_id,
                dataset_config=dataset_config,
                dataset_split="test",
                metric_type=name,
                metric_name=name.replace("_", " "),
                metric_value=metrics[f"test_{name}"],
            )
            for name in ("accuracy", "macro_f1")
            if metrics.get(f"test_{name}") is not None
        ]
    data = ModelCardData(
        base_model=base,
        datasets=[dataset_id] if dataset_id else None,
        library_name={"peft": "peft", "transformers": "transformers"}.get(kind, "sentitune"),
        pipeline_tag="text-classification",
        tags=["sentitune", "text-classification", method.name],
        metrics=["accuracy", "f1"],
        model_name=model_name,
        eval_results=eval_results,
    )

    lines = [f"# {model_name}", ""]
    base_text = f"[{base}](https://huggingface.co/{base})" if base else f"a local model folder ({Path(cfg.model).name})"
    lines += [
        f"A text classifier fine-tuned from {base_text} on {dataset_name} with "
        f"sentitune using **{method.name}** ({method.summary}).",
        "",
        "## Labels",
        "",
        "| id | label |",
        "|---:|---|",
        *(f"| {i} | {name} |" for i, name in enumerate(label_names)),
        "",
        "## Results",
        "",
        "| split | examples | accuracy | macro-F1 |",
        "|---|---:|---:|---:|",
    ]
    if metrics.get("validation_accuracy") is not None:
        lines.append(
            f"| validation | {_number(metrics.get('validation_examples'))} | "
            f"{_number(metrics['validation_accuracy'])} | {_number(metrics.get('validation_macro_f1'))} |"
        )
    ci = f" (95% CI {low:.4f}-{high:.4f})" if low is not None else ""
    lines.append(
        f"| test | {_number(test_examples)} | {_number(accuracy)}{ci} | {_number(metrics.get('test_macro_f1'))} |"
    )
    for name, (slice_accuracy, examples) in (slices or {}).items():
        lines.append(f"| test, {name} slice | {_number(examples)} | {_number(slice_accuracy)} | |")
    lines += [
        "",
        "The test interval is a Wilson 95% interval over the test examples of this one run; it leaves out "
        "the spread between training seeds.",
    ]
    if not slices:
        lines.append("`sentitune analyze` on the run gives accuracy per slice (negation, contrast, length).")
    if metrics.get("temperature") is not None:
        lines.append(
            f"sentitune serves probabilities calibrated with temperature T = {metrics['temperature']:.4f} "
            "(fitted on the validation slice): softmax(logits / T). Plain transformers gives softmax(logits); "
            "the predicted label is the same."
        )

    trainable, total = metrics.get("params_trainable"), metrics.get("params_total")
    share = f" ({metrics['params_trainable_percent']:.3f}%)" if metrics.get("params_trainable_percent") else ""
    t = cfg.train
    hyperparameters = {
        "method": method.name,
        "trainable parameters": f"{_number(trainable)} of {_number(total)}{share}",
        "checkpoint (trained tensors)": f"{_number(metrics.get('checkpoint_size_mib'), 2)} MiB",
        "learning rate": f"{cfg.learning_rate:g}",
        "epochs": f"{t.epochs:g}" if t.max_steps == -1 else f"max {t.max_steps} steps",
        "optimizer steps": _number(metrics.get("train_steps")),
        "batch size (per device)": t.batch_size,
        "gradient accumulation": t.gradient_accumulation_steps,
        "warm-up ratio": t.warmup_ratio,
        "schedule": t.lr_scheduler,
        "weight decay": t.weight_decay,
        "precision": metrics.get("precision", t.precision),
        "max length (tokens)": cfg.data.resolved_max_length,
        "truncation": cfg.data.truncation,
        "seed": t.seed,
    }
    lines += [
        "",
        "## Training",
        "",
        "| setting | value |",
        "|---|---|",
        *(f"| {key} | {value} |" for key, value in hyperparameters.items()),
        "",
        "The whole configuration (`config.yaml` in the run folder; its `compare` section is left out here):",
        "",
        "```yaml",
        yaml.safe_dump({k: v for k, v in cfg.to_dict().items() if k != "compare"}, sort_keys=False).rstrip(),
        "```",
        "",
        "Retrain with `sentitune train --config config.yaml --output-dir runs/again`.",
    ]
    command = _command(metrics)
    if command:
        lines.append(f"This run was started with `{command}`.")
    lines += [
        "",
        "## How to use",
        "",
        _usage(kind, label_names, adapter_type, metrics.get("pooling"), predict_target).rstrip(),
        "",
    ]
    domain = DATASET_DOMAINS.get(cfg.data.dataset, "the texts of its training files")
    lines += [
        "## Limitations",
        "",
        f"- Trained and tested on {domain}; accuracy on text from other sources will differ, usually downwards.",
        f"- Texts longer than {cfg.data.resolved_max_length} tokens are cut ({cfg.data.truncation} truncation) "
        "and the rest is not read.",
        f"- Predicts only the labels above ({', '.join(label_names)}); every input gets one of them.",
        "- One training seed: a retrain with another seed can land elsewhere inside or outside the interval above.",
        "",
    ]
    versions = metrics.get("provenance", {}).get("versions", {})
    if versions:
        lines += [
            "## Environment",
            "",
            ", ".join(f"{name} {version}" for name, version in versions.items()),
            "",
        ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def write_run_card(
    model_dir: str | Path,
    cfg: RunConfig,
    metrics: dict,
    slices: dict | None = None,
    predict_target: str = "path/to/the/run",
) -> None:
    """Writes `model_dir/README.md` (peft's blank template, if any, is replaced): a run's model/ folder,
    or an exported folder (`predict_target` "path/to/this/folder")."""
    from sentitune.results import atomic_write_text

    model_dir = Path(model_dir)
    card = run_card(cfg, metrics, folder_kind(model_dir), _adapter_type(model_dir), slices, predict_target)
    atomic_write_text(model_dir / CARD_FILE, str(card))
