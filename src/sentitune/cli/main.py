"""`sentitune <command>`: the parser and the dispatch. Each command lives in `cli/commands/<command>.py`
(Namespace -> one API call -> output) and is imported only when it runs, so `sentitune predict` never
loads the training stack; expected failures print one line and exit 2."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from sentitune.cli.options import (
    add_config_flags,
    add_familiar_spellings,
    add_model_argument,
    add_runtime_arguments,
    dataclass_default,
    resolve_model_argument,
)
from sentitune.config import CompareConfig, DistillConfig, ServeSettings
from sentitune.errors import USER_ERRORS


EXIT_USER_ERROR = 2


def _command(name: str):
    """The `run(args)` of cli/commands/<name>.py, imported on first call."""

    def handler(args: argparse.Namespace) -> int:
        return importlib.import_module(f"sentitune.cli.commands.{name}").run(args)

    handler.__name__ = f"run_{name}"
    return handler


def build_parser() -> argparse.ArgumentParser:
    # data and pretraining load numpy; `import sentitune.cli` stays light, so they load only here.
    from sentitune.data import INPUT_FORMATS
    from sentitune.pretraining import PretrainConfig

    parser = argparse.ArgumentParser(
        prog="sentitune",
        description="Fine-tune BERT for sentiment and measure what full fine-tuning buys over LoRA, other "
        "PEFT methods, a frozen backbone and TF-IDF; then predict, serve and export the winner.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train one run (one method, one seed) into a run folder")
    add_config_flags(train)
    train.add_argument("--output-dir", help="run folder (default runs/<dataset>-<method>)")
    train.add_argument("--overwrite", action="store_true", help="replace a finished run in --output-dir")
    train.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --output-dir")
    train.add_argument(
        "--resume_from_checkpoint",
        nargs="?",
        const=True,
        dest="resume",
        metavar="PATH",
        help="Hugging Face spelling of --resume; PATH, if given, must be --output-dir or a checkpoint in it",
    )
    train.add_argument(
        "--selection-only",
        action="store_true",
        help="a tuning trial: never read the test split; score the final model on the validation slice "
        "(validation_final_* in metrics.json)",
    )
    train.set_defaults(handler=_command("train"))

    evaluate = sub.add_parser("evaluate", help="score a labelled CSV/TSV/JSONL file with a trained run")
    add_model_argument(evaluate, "run", "run folder")
    evaluate.add_argument("--data", required=True, help="labelled file")
    evaluate.add_argument("--text-column", help="default: sentence (TSV) or text")
    evaluate.add_argument("--label-column", help="default: label")
    evaluate.add_argument("--output-dir", help="default: <run>/evaluations/<file stem>")
    evaluate.set_defaults(handler=_command("evaluate"))

    data = sub.add_parser("data", help="dataset tools")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    inspect = data_sub.add_parser("inspect", help="split sizes, class balance, token-length percentiles")
    add_config_flags(inspect, with_method=False)
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")
    inspect.set_defaults(handler=_command("data"))

    compare = sub.add_parser("compare", help="fair multi-method, multi-seed comparison")
    add_config_flags(compare, with_method=False)
    compare.add_argument(
        "--methods",
        help="comma-separated methods (default: full,lora,head,tfidf); distill:TEACHER->lK adds a K-layer student "
        "of each seed's TEACHER run, e.g. full,lora,distill:full->l3",
    )
    compare.add_argument("--seeds", help="number of seeds (3) or a list (1,2,3)")
    compare.add_argument(
        "--lora-r-sweep", dest="lora_r_sweep", help="extra LoRA runs at these ranks, e.g. 1,2,4,8,16,64"
    )
    compare.add_argument(
        "--lora-targets-sweep",
        dest="lora_targets_sweep",
        help="extra LoRA runs per target set, separated by '|', e.g. 'query,value|all-linear'",
    )
    compare.add_argument("--learning-rates", help="extra runs per method at these learning rates, e.g. 1e-4,5e-4")
    compare.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="add a <method>-gc variant per neural method to measure checkpointing's memory/speed trade",
    )
    compare.add_argument(
        "--layer-lr-decays",
        dest="layer_lr_decays",
        help="extra full fine-tuning runs with layer-wise LR decay, e.g. 0.8,0.9",
    )
    compare.add_argument(
        "--models",
        help="model sweep: comma-separated aliases/folders/hub ids; every neural "
        "variant runs on each, named <model>-<variant>",
    )
    compare.add_argument(
        "--eval-file",
        action="append",
        metavar="NAME=PATH",
        help="also score every finished run on this labelled CSV/TSV/JSONL file, reported per variant with "
        "its CI and the Holm-corrected paired test against the reference (repeatable)",
    )
    compare.add_argument("--eval-text-column", help="text column of the --eval-file files (default: sentence/text)")
    compare.add_argument("--eval-label-column", help="label column of the --eval-file files (default: label)")
    compare.add_argument(
        "--no-default-suites",
        action="store_true",
        help="do not score the shipped negation and contrast suite (eval set `negation`)",
    )
    compare.add_argument(
        "--tune",
        nargs="?",
        const="learning_rate",
        metavar="KNOBS",
        help="search each variant's knobs on the validation slice first, with the same number of trials for "
        "every variant (default knob: learning_rate; e.g. --tune learning_rate,lora_r); test is read once, "
        "by the selected configuration's runs",
    )
    trials = dataclass_default(CompareConfig, "tune_trials")
    compare.add_argument("--tune-trials", type=int, help=f"trials per variant (default {trials})")
    compare.add_argument("--tune-sampler", choices=("grid", "tpe"), help="Optuna sampler (default grid)")
    compare.add_argument(
        "--tune-storage", help="Optuna storage URL to share a search (default: SQLite in <output-dir>/search/)"
    )
    compare.add_argument(
        "--train-sizes",
        help="learning curve: run every variant at each training-set size, nested and stratified, "
        "e.g. 250,500,1000,2000,all",
    )
    compare.add_argument("--reference", help="variant the others are tested against (default: full when present)")
    budgets = compare.add_argument_group("budgets for the recommendation (optional; none met is not an error)")
    budgets.add_argument("--max-train-memory-mib", type=float, help="peak training memory")
    budgets.add_argument("--min-inference-sentences-per-s", type=float, help="sentences/s scoring the test split")
    budgets.add_argument("--max-checkpoint-mib", type=float, help="size of what the method trained, as saved")
    budgets.add_argument("--max-train-minutes", type=float, help="training time")
    compare.add_argument("--output-dir", help="comparison folder (default results/<dataset>)")
    compare.add_argument("--parallel", type=int, default=1, help="runs at once (default 1: timings stay honest)")
    compare.add_argument(
        "--allow-version-mix",
        action="store_true",
        help="accept finished runs made with other torch/transformers/peft/tokenizers/scikit-learn "
        "versions (refused by default; the results and report then name the mix)",
    )
    compare.set_defaults(handler=_command("compare"))

    predict = sub.add_parser("predict", help="predict labels for texts or a file")
    predict.add_argument("texts", nargs="*", help="texts to classify")
    add_model_argument(predict, "model", "run folder or exported folder (or the first text)", positional=False)
    predict.add_argument("--input", help="CSV/TSV/JSONL/TXT file, or - for stdin")
    predict.add_argument(
        "--input-format",
        choices=INPUT_FORMATS,
        help="format of --input (default: from the suffix; stdin: txt, one text per line)",
    )
    predict.add_argument("--text-column", help="text column of --input (default: sentence for TSV, else text)")
    predict.add_argument("--output", help="JSONL output (default stdout)")
    predict.add_argument(
        "--batch-size", "--per_device_eval_batch_size", type=int, default=64, help="texts per model call"
    )
    add_runtime_arguments(predict)
    ray_group = predict.add_argument_group(
        "--engine ray", "batch inference on a Ray cluster (pip install 'sentitune[scale]'); --output is then a folder"
    )
    ray_group.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="local: this process (default); ray: Ray Data over an actor pool, --input may be a glob or folder "
        "of CSV/TSV/JSONL/Parquet shards",
    )
    ray_group.add_argument(
        "--address", help="Ray cluster to join (HOST:PORT, ray://HOST:PORT, auto); default: a local one"
    )
    ray_group.add_argument("--concurrency", type=int, default=2, help="actors, each holding one model (default 2)")
    ray_group.add_argument("--num-cpus", type=float, default=1.0, help="CPUs each actor reserves (default 1)")
    ray_group.add_argument("--num-gpus", type=float, default=0.0, help="GPUs each actor reserves (default 0)")
    ray_group.add_argument("--cluster-cpus", type=int, help="CPUs of the local cluster started without --address")
    ray_group.add_argument("--output-format", choices=["jsonl", "parquet"], default="jsonl", help="shard format")
    ray_group.add_argument("--overwrite", action="store_true", help="replace an earlier --engine ray output folder")
    predict.set_defaults(handler=_command("predict"))

    explain = sub.add_parser("explain", help="which words drove each prediction (captum attributions)")
    explain.add_argument("texts", nargs="*", help="texts to explain")
    add_model_argument(explain, "model", "run folder or exported folder (or the first text)", positional=False)
    # Checked by the command (one line), not by argparse choices (usage text plus the error).
    explain.add_argument(
        "--method",
        metavar="ig|occlusion",
        help="ig: integrated gradients on the embeddings (torch models; the default for them); occlusion: "
        "drop one word at a time (any model; the default for ONNX and TF-IDF)",
    )
    explain.add_argument("--json", action="store_true", help="one JSON object per text instead of coloured text")
    add_runtime_arguments(explain)
    explain.set_defaults(handler=_command("explain"))

    export = sub.add_parser("export", help="merge LoRA, export to ONNX, quantise to int8")
    add_model_argument(export, "model", "run folder")
    export.add_argument(
        "--format",
        choices=["hf", "onnx", "triton"],
        default="onnx",
        help="hf, onnx, or triton: an NVIDIA Triton model repository (ONNX model + tokenizer + ensemble)",
    )
    export.add_argument("--triton-kind", choices=["cpu", "gpu"], default="cpu", help="Triton instance group kind")
    export.add_argument("--triton-instances", type=int, default=1, help="Triton instances of the ONNX model")
    export.add_argument("--triton-max-batch-size", type=int, default=64, help="Triton max_batch_size (default 64)")
    export.add_argument(
        "--triton-max-queue-delay-us", type=int, default=2000, help="Triton dynamic batching delay (default 2000)"
    )
    export.add_argument("--quantize", choices=["int8"], help="dynamic int8 quantisation (ONNX Runtime)")
    export.add_argument(
        "--int8-keep-fp32",
        metavar="auto|none|NAMES",
        help="layers the int8 model keeps in fp32: auto (default: none when all-int8 stays within 0.5 accuracy points "
        "of fp32 on the run's validation slice, else those whose int8 error stands out there), none, or "
        "comma-separated layer names ('classifier,layer 5 FFN output')",
    )
    export.add_argument("--output-dir", "--output", dest="output", required=True, help="output folder")
    export.add_argument("--parity-data", help="labelled file for the parity report (default: the run's test split)")
    export.add_argument("--text-column", help="text column of --parity-data (default: sentence for TSV, else text)")
    export.add_argument("--label-column", help="label column of --parity-data (default: label)")
    export.add_argument("--overwrite", action="store_true", help="replace an earlier export in --output")
    export.set_defaults(handler=_command("export"))

    def serve_default(name: str):
        return dataclass_default(ServeSettings, name)

    serve = sub.add_parser("serve", help="HTTP server with micro-batching")
    add_model_argument(serve, "model", "run folder or exported folder")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--max-batch-size",
        type=int,
        default=serve_default("max_batch_size"),
        help="most texts in one model call (default %(default)s)",
    )
    add_runtime_arguments(serve)
    serve.add_argument(
        "--processes",
        type=int,
        default=1,
        help="server processes sharing the port, each with its own copy of the model (default 1; with more, "
        "--threads defaults to cores / processes)",
    )
    serve.add_argument(
        "--max-wait-ms",
        type=float,
        default=serve_default("max_wait_ms"),
        help="how long a batch waits for more requests (default %(default)s)",
    )
    serve.add_argument(
        "--max-texts", type=int, default=serve_default("max_texts"), help="max texts per request (default %(default)s)"
    )
    serve.add_argument(
        "--max-chars",
        type=int,
        default=serve_default("max_chars"),
        help="max characters per text (default %(default)s)",
    )
    serve.add_argument(
        "--max-body-bytes",
        type=int,
        default=serve_default("max_body_bytes"),
        help="max request body size (default %(default)s)",
    )
    serve.add_argument(
        "--header-timeout",
        type=float,
        default=serve_default("header_timeout_s"),
        help="seconds a connection has to send a request's headers, else it is closed (default %(default)s)",
    )
    serve.add_argument(
        "--body-timeout",
        type=float,
        default=serve_default("body_timeout_s"),
        help="seconds a request has to send its whole body, else 408 (default %(default)s)",
    )
    serve.add_argument(
        "--max-connections",
        type=int,
        default=serve_default("max_connections"),
        help="open connections at most; requests beyond them get 503 (default %(default)s)",
    )
    serve.add_argument("--access-log", action="store_true", help="log every request (off: /metrics counts them)")
    serve.add_argument(
        "--engine",
        choices=["uvicorn", "ray"],
        default="uvicorn",
        help="uvicorn: this machine (default); ray: the same app on Ray Serve replicas ('sentitune[scale]')",
    )
    serve.add_argument("--replicas", type=int, default=1, help="--engine ray: replicas, each with its own model")
    serve.add_argument("--min-replicas", type=int, help="--engine ray: autoscale down to this many replicas")
    serve.add_argument("--max-replicas", type=int, help="--engine ray: autoscale up to this many replicas")
    serve.add_argument("--address", help="--engine ray: Ray cluster to join (default: a local one)")
    serve.add_argument(
        "--api-key",
        default=os.environ.get("SENTITUNE_API_KEY"),
        help="require this X-API-Key header (default $SENTITUNE_API_KEY)",
    )
    serve.set_defaults(handler=_command("serve"))

    analyze = sub.add_parser("analyze", help="error analysis of a run (or two)")
    add_model_argument(analyze, "run", "run folder (or an evaluation folder inside it)")
    analyze.add_argument("--against", help="second run for a paired comparison")
    analyze.add_argument("--top-k", type=int, default=20)
    analyze.add_argument("--slice", action="append", default=[], metavar="NAME=REGEX", help="user-defined slice")
    analyze.add_argument("--output-dir", help="default: <run>/analysis")
    analyze.add_argument(
        "--explain",
        nargs="?",
        type=int,
        const=5,
        default=0,
        metavar="N",
        help="word attributions for the N most confident mistakes (default N: 5), into explanations.json",
    )
    analyze.set_defaults(handler=_command("analyze"))

    report = sub.add_parser("report", help="Markdown + self-contained HTML report of a comparison")
    report.add_argument("results", nargs="?", metavar="RESULTS", help="comparison folder (or --output-dir)")
    report.add_argument("--output-dir", dest="results_option", help="comparison folder: compare's --output-dir")
    report.add_argument("--open", action="store_true", help="open the HTML report in a browser")
    report.set_defaults(handler=_command("report"))

    def pretrain_default(name: str):
        return dataclass_default(PretrainConfig, name)

    # Every pretrain flag defaults to None: PretrainConfig's own default applies, and the help quotes it.
    pretrain = sub.add_parser("pretrain", help="domain-adaptive masked-LM pretraining on unlabelled text")
    pretrain.add_argument("--model", required=True, help="encoder to adapt (alias, local folder or hub id)")
    pretrain.add_argument(
        "--texts",
        required=True,
        help="imdb or sst2 (train-split texts from the data folder), or a CSV/TSV/JSONL/TXT file",
    )
    pretrain.add_argument(
        "--text-column", help="text column of a CSV/TSV/JSONL file (default: sentence for TSV, else text)"
    )
    pretrain.add_argument("--data-dir", help="data folder for imdb/sst2 (default: $SENTITUNE_DATA_DIR)")
    pretrain.add_argument("--output-dir", required=True, help="new model folder; then fine-tune with --model <it>")
    pretrain.add_argument("--max-steps", type=int, help="stop after N optimizer steps (default: --epochs)")
    pretrain.add_argument(
        "--epochs", type=float, help=f"passes over the texts (default {pretrain_default('epochs'):g})"
    )
    pretrain.add_argument(
        "--batch-size", type=int, help=f"examples per step (default {pretrain_default('batch_size')})"
    )
    pretrain.add_argument(
        "--learning-rate", type=float, help=f"peak learning rate (default {pretrain_default('learning_rate'):g})"
    )
    pretrain.add_argument(
        "--max-length", type=int, help=f"tokens per example (default {pretrain_default('max_length')})"
    )
    pretrain.add_argument(
        "--long-texts",
        choices=["chunk", "truncate"],
        help=f"long texts: split into windows (chunk) or cut (truncate); default {pretrain_default('long_texts')}",
    )
    pretrain.add_argument(
        "--mlm-probability",
        type=float,
        help=f"fraction of tokens masked (default {pretrain_default('mlm_probability'):g})",
    )
    pretrain.add_argument("--max-texts", type=int, help="use a seeded sample of N texts")
    pretrain.add_argument(
        "--eval-texts",
        type=int,
        help=f"held-out texts for the before/after MLM loss (default {pretrain_default('eval_texts')})",
    )
    pretrain.add_argument("--seed", type=int, help=f"seed (default {pretrain_default('seed')})")
    pretrain.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        help=f"default {pretrain_default('precision')}",
    )
    pretrain.add_argument("--threads", type=int, help="torch CPU threads")
    pretrain.add_argument("--overwrite", action="store_true", help="replace a non-empty --output-dir")
    pretrain.set_defaults(handler=_command("pretrain"))

    distill = sub.add_parser(
        "distill",
        help="train a smaller student on a finished run's soft labels (knowledge distillation)",
        description="The student trains on the teacher's data (its config's data section) as a normal run "
        "of --method (default full); flags override the teacher's config, or --config/--preset.",
    )
    distill.add_argument("--teacher", required=True, help="the teacher's run folder (status ok, single-label)")
    distill.add_argument(
        "--student",
        required=True,
        help="alias, local folder or hub id, or MODEL:layers=K (MODEL shrunk to its bottom K encoder layers)",
    )
    distill.add_argument("--output-dir", required=True, help="the student's run folder")
    distill.add_argument(
        "--alpha",
        type=float,
        help=f"weight of the soft-label KL term on labelled rows (default {dataclass_default(DistillConfig, 'alpha')})",
    )
    distill.add_argument(
        "--temperature",
        type=float,
        help=f"softmax temperature of the KL term (default {dataclass_default(DistillConfig, 'temperature')})",
    )
    distill.add_argument("--unlabelled", help="TXT/CSV/TSV/JSONL file of extra texts the teacher labels")
    distill.add_argument(
        "--unlabelled-column", help="text column of --unlabelled (default: sentence for TSV, else text)"
    )
    distill.add_argument(
        "--unlabelled-unit",
        choices=("text", "sentence"),
        help="sentence: split each --unlabelled row into sentences (e.g. IMDB reviews for an SST-2 student); "
        "default text",
    )
    distill.add_argument(
        "--unlabelled-limit", type=int, help="at most N unlabelled examples, a seeded random sample (default all)"
    )
    distill.add_argument(
        "--students-dir", help="where MODEL:layers=K students are shrunk to (default: students/ beside --output-dir)"
    )
    distill.add_argument("--overwrite", action="store_true", help="replace a finished run in --output-dir")
    distill.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --output-dir")
    add_config_flags(distill)
    distill.set_defaults(handler=_command("distill"))

    shrink = sub.add_parser("shrink", help="keep the first K encoder layers of a model (layer dropping)")
    shrink.add_argument("--model", required=True, help="alias, local folder or hub id")
    shrink.add_argument("--layers", type=int, required=True, help="encoder layers to keep (the bottom K)")
    shrink.add_argument("--output-dir", required=True, help="new model folder; then use it with --model")
    shrink.add_argument("--overwrite", action="store_true", help="replace an existing model folder")
    shrink.set_defaults(handler=_command("shrink"))
    add_familiar_spellings(parser)
    return parser


def _empty_option(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str | None:
    """The first option given an empty value. `--output-dir "$OUT"` with OUT unset used to mean the
    default silently (the run went to runs/<name>), `--output ""` meant stdout. (An empty --api-key
    has its own message.)"""
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for action in commands[args.command]._actions:
        if action.option_strings and action.dest != "api_key" and getattr(args, action.dest, None) == "":
            return next((name for name in action.option_strings if name.startswith("--")), action.option_strings[-1])
    return None


def _one_line(message: object) -> str:
    """`message` with control characters escaped: a path or value holding a line break (a file named
    "a\nb.csv") must not split the one error line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(message))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    empty = _empty_option(parser, args)
    if empty is not None:
        print(
            f"sentitune {args.command}: error: {empty} is empty; give a value or leave the option out "
            "(an unset shell variable?)",
            file=sys.stderr,
        )
        return EXIT_USER_ERROR
    try:
        resolve_model_argument(args)
        return args.handler(args) or 0
    except USER_ERRORS as exc:
        print(f"sentitune {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"sentitune {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from sentitune.results import not_writable  # numpy: only on this rare path

        # Write sites outside sentitune's own writers (Trainer checkpoints, libraries' save calls)
        # still end in one line when the disk is full or the folder read-only.
        mapped = not_writable(exc)
        if mapped is None:
            raise
        print(f"sentitune {args.command}: error: {_one_line(mapped)}", file=sys.stderr)
        return EXIT_USER_ERROR
