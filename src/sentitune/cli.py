"""`sentitune <command>`: thin argparse layer over the Python API. Every handler parses flags, calls one
API function and prints; expected failures print one line and exit 2."""

from __future__ import annotations

import argparse
import json
import os
import sys

from sentitune.config import ConfigError, load_config, preset_names


EXIT_USER_ERROR = 2


# ---- shared flag groups -----------------------------------------------------------------------

# flag -> (dotted config field, type, help). CLI flags override YAML; YAML overrides defaults.
RUN_FLAGS: dict[str, tuple[str, type, str]] = {
    "--model": ("model", str, "hub id, local folder, or alias (minilm-l6 = bundled, offline)"),
    "--dataset": ("data.dataset", str, "sst2, imdb, or files"),
    "--data-dir": ("data.data_dir", str, "local data folder (default: $SENTITUNE_DATA_DIR, else the hub)"),
    "--train-file": ("data.train_file", str, "training file for --dataset files (CSV/TSV/JSONL)"),
    "--test-file": ("data.test_file", str, "test file for --dataset files"),
    "--validation-file": ("data.validation_file", str, "optional validation file"),
    "--text-column": ("data.text_column", str, "text column name"),
    "--label-column": ("data.label_column", str, "label column name (imdb: 'rating' = 8-class stars)"),
    "--label-names": ("data.label_names", str, "comma-separated label names in id order"),
    "--validation-size": ("data.validation_size", float, "validation slice from train: fraction or count"),
    "--train-subset": ("data.train_subset", int, "train on this many examples (stratified)"),
    "--test-subset": ("data.test_subset", int, "test on this many examples (smoke runs only)"),
    "--max-length": ("data.max_length", int, "max tokens (default 128 sst2, 512 otherwise)"),
    "--truncation": ("data.truncation", str, "head, tail or head+tail"),
    "--learning-rate": ("method.learning_rate", float, "peak learning rate (default: per method)"),
    "--head": ("method.head", str, "classifier or pooler+classifier (head and lora methods)"),
    "--lora-r": ("method.lora_r", int, "LoRA rank"),
    "--lora-alpha": ("method.lora_alpha", int, "LoRA alpha"),
    "--lora-dropout": ("method.lora_dropout", float, "LoRA dropout"),
    "--lora-targets": ("method.lora_target_modules", str, "comma-separated modules, or all-linear"),
    "--layer-lr-decay": ("method.layer_lr_decay", float, "layer-wise LR decay for full fine-tuning (1 = off)"),
    "--epochs": ("train.epochs", float, "training epochs"),
    "--max-steps": ("train.max_steps", int, "stop after N optimizer steps"),
    "--batch-size": ("train.batch_size", int, "per-device training batch size"),
    "--grad-accum": ("train.gradient_accumulation_steps", int, "gradient accumulation steps"),
    "--seed": ("train.seed", int, "training seed"),
    "--precision": ("train.precision", str, "auto, fp32, bf16 or fp16"),
    "--threads": ("train.threads", int, "torch CPU threads"),
}


def add_config_flags(parser: argparse.ArgumentParser, with_method: bool = True) -> None:
    group = parser.add_argument_group("configuration (flags override --config/--preset)")
    group.add_argument("--config", help="YAML config file")
    group.add_argument("--preset", help=f"shipped preset: {', '.join(preset_names())}")
    if with_method:
        from sentitune.methods import registry

        group.add_argument("--method", choices=registry.names(), help="adaptation method")
    for flag, (_, kind, help_text) in RUN_FLAGS.items():
        group.add_argument(flag, type=kind, help=help_text, dest=flag.lstrip("-").replace("-", "_"))
    group.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any config field, e.g. --set train.warmup_ratio=0.1 (repeatable)",
    )


def config_from_args(args: argparse.Namespace):
    overrides = {field: getattr(args, flag.lstrip("-").replace("-", "_")) for flag, (field, _, _) in RUN_FLAGS.items()}
    if getattr(args, "method", None):
        overrides["method.name"] = args.method
    for item in args.set:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        overrides[key.strip()] = _yaml_scalar(value)
    return load_config(args.config, args.preset, overrides)


def _yaml_scalar(text: str):
    from sentitune.config import parse_yaml

    return parse_yaml(text) if text.strip() else text


# ---- handlers ---------------------------------------------------------------------------------


def cmd_train(args) -> int:
    from sentitune.training import is_main_process, train

    cfg = config_from_args(args)
    output_dir = args.output_dir or f"runs/{cfg.data.dataset}-{cfg.method.name}"
    metrics = train(cfg, output_dir, overwrite=args.overwrite, resume=args.resume)
    if is_main_process():
        _print_metrics(metrics, output_dir)
    return 0


def _print_metrics(metrics: dict, output_dir: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{metrics['method']} on {metrics['dataset']} ({metrics['model']}) -> {output_dir}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in (
        "test_accuracy",
        "test_macro_f1",
        "test_loss",
        "params_trainable",
        "params_trainable_percent",
        "train_samples_per_second",
        "train_tokens_per_second",
        "train_runtime_seconds",
        "peak_memory_mib",
        "eval_samples_per_second",
        "checkpoint_size_mib",
    ):
        if key in metrics and metrics[key] is not None:
            value = metrics[key]
            table.add_row(key, f"{value:,.4f}" if isinstance(value, float) else f"{value:,}")
    Console().print(table)


def cmd_evaluate(args) -> int:
    from sentitune.analysis import evaluate_file

    metrics = evaluate_file(args.run, args.data, args.text_column, args.label_column, args.output_dir)
    print(json.dumps(dict(metrics.items()), indent=2))
    return 0


def cmd_data_inspect(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from sentitune.data import inspect_splits, load_splits
    from sentitune.models import load_tokenizer, resolve_model

    cfg = config_from_args(args)
    splits = load_splits(cfg.data)
    tokenizer = load_tokenizer(resolve_model(cfg.model))
    report = inspect_splits(splits, tokenizer, cfg.data.resolved_max_length)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    console = Console(width=None if sys.stdout.isatty() else 150)
    console.print(f"source: {report['source']}   labels: {report['label_names']}   notes: {report['notes']}")
    table = Table(
        title=f"{cfg.data.dataset} with the {cfg.model} tokenizer (max_length {cfg.data.resolved_max_length})"
    )
    for column in ("split", "size", "class balance", "tokens mean", "p50", "p90", "p95", "p99", "max", "> max_length"):
        table.add_column(column, justify="right" if column != "class balance" else "left")
    for name, entry in report["splits"].items():
        size = entry["size"]
        balance = ", ".join(f"{k} {v} ({100 * v / size:.1f}%)" for k, v in entry["class_counts"].items())
        tokens = entry["tokens"]
        table.add_row(
            name,
            f"{size:,}",
            balance,
            f"{tokens['mean']:.1f}",
            *(f"{tokens[p]:.0f}" for p in ("p50", "p90", "p95", "p99")),
            str(tokens["max"]),
            str(tokens.get("over_max_length", "")),
        )
    console.print(table)
    return 0


def _parse_list(text: str | None, kind=str, sep: str = ",") -> list | None:
    if text is None:
        return None
    try:
        return [kind(item.strip()) for item in text.split(sep) if item.strip()]
    except ValueError:
        raise ConfigError(f"cannot read {text!r} as a list of {kind.__name__}") from None


def cmd_compare(args) -> int:
    from pathlib import Path

    from sentitune import compare

    cfg = config_from_args(args)
    overrides = {
        "compare.methods": _parse_list(args.methods),
        "compare.lora_r_sweep": _parse_list(args.lora_r_sweep, int),
        "compare.lora_targets_sweep": _parse_list(args.lora_targets_sweep, str, "|"),
        "compare.learning_rates": _parse_list(args.learning_rates, float),
        "compare.layer_lr_decays": _parse_list(args.layer_lr_decays, float),
        "compare.models": _parse_list(getattr(args, "models", None)),
        "compare.gradient_checkpointing_variants": True if args.gradient_checkpointing else None,
    }
    if args.seeds:
        seeds = _parse_list(args.seeds, int)
        overrides["compare.seeds"] = list(range(1, seeds[0] + 1)) if len(seeds) == 1 else seeds
    cfg = cfg.override(overrides)
    out = Path(args.output_dir or f"results/{cfg.data.dataset}")
    document = compare.run_comparison(cfg, out, parallel=args.parallel, allow_version_mix=args.allow_version_mix)
    compare.print_summary(document)
    print(f"results: {out / compare.RESULTS_CSV}, {out / compare.RESULTS_JSON}")
    return 0 if all(r["status"] == "ok" for r in document["runs"]) else 1


def cmd_predict(args) -> int:
    from sentitune.inference import predict_cli

    return predict_cli(args)


def cmd_export(args) -> int:
    from sentitune.export import export_cli

    return export_cli(args)


def cmd_serve(args) -> int:
    from sentitune.serve import serve_cli

    return serve_cli(args)


def cmd_analyze(args) -> int:
    from sentitune.analysis import analyze_cli

    return analyze_cli(args)


def cmd_report(args) -> int:
    from sentitune.reporting import report_cli

    return report_cli(args)


def cmd_pretrain(args) -> int:
    from sentitune.pretraining import pretrain_cli

    return pretrain_cli(args)


def cmd_shrink(args) -> int:
    from sentitune.models import shrink_cli

    return shrink_cli(args)


# ---- parser -----------------------------------------------------------------------------------


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """Where and how wide the model runs; shared by predict and serve."""
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when visible, else cpu)")
    parser.add_argument(
        "--workers", type=int, help="ONNX exports: parallel ONNX Runtime sessions (default: one per 4 CPU cores)"
    )
    parser.add_argument(
        "--threads", type=int, help="threads per ONNX Runtime session (default: cores / workers), or torch CPU threads"
    )


def build_parser() -> argparse.ArgumentParser:
    from sentitune.data import INPUT_FORMATS

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
    train.set_defaults(handler=cmd_train)

    evaluate = sub.add_parser("evaluate", help="score a labelled CSV/TSV/JSONL file with a trained run")
    evaluate.add_argument("run", help="run folder")
    evaluate.add_argument("--data", required=True, help="labelled file")
    evaluate.add_argument("--text-column", help="default: sentence (TSV) or text")
    evaluate.add_argument("--label-column", help="default: label")
    evaluate.add_argument("--output-dir", help="default: <run>/evaluations/<file stem>")
    evaluate.set_defaults(handler=cmd_evaluate)

    data = sub.add_parser("data", help="dataset tools")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    inspect = data_sub.add_parser("inspect", help="split sizes, class balance, token-length percentiles")
    add_config_flags(inspect, with_method=False)
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")
    inspect.set_defaults(handler=cmd_data_inspect)

    compare = sub.add_parser("compare", help="fair multi-method, multi-seed comparison")
    add_config_flags(compare, with_method=False)
    compare.add_argument("--methods", help="comma-separated methods (default: full,lora,head,tfidf)")
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
    compare.add_argument("--output-dir", help="comparison folder (default results/<dataset>)")
    compare.add_argument("--parallel", type=int, default=1, help="runs at once (default 1: timings stay honest)")
    compare.add_argument(
        "--allow-version-mix",
        action="store_true",
        help="accept finished runs made with other torch/transformers/peft/tokenizers/scikit-learn "
        "versions (refused by default; the results and report then name the mix)",
    )
    compare.set_defaults(handler=cmd_compare)

    predict = sub.add_parser("predict", help="predict labels for texts or a file")
    predict.add_argument("texts", nargs="*", help="texts to classify")
    predict.add_argument("--model", required=True, help="run folder or exported folder")
    predict.add_argument("--input", help="CSV/TSV/JSONL/TXT file, or - for stdin")
    predict.add_argument(
        "--input-format",
        choices=INPUT_FORMATS,
        help="format of --input (default: from the suffix; stdin: txt, one text per line)",
    )
    predict.add_argument("--text-column", help="text column of --input (default: sentence for TSV, else text)")
    predict.add_argument("--output", help="JSONL output (default stdout)")
    predict.add_argument("--batch-size", type=int, default=64)
    add_runtime_arguments(predict)
    predict.set_defaults(handler=cmd_predict)

    export = sub.add_parser("export", help="merge LoRA, export to ONNX, quantise to int8")
    export.add_argument("--model", required=True, help="run folder")
    export.add_argument("--format", choices=["hf", "onnx"], default="onnx")
    export.add_argument("--quantize", choices=["int8"], help="dynamic int8 quantisation (ONNX Runtime)")
    export.add_argument("--output", required=True, help="output folder")
    export.add_argument("--parity-data", help="labelled file for the parity report (default: the run's test split)")
    export.add_argument("--text-column", help="text column of --parity-data (default: sentence for TSV, else text)")
    export.add_argument("--label-column", help="label column of --parity-data (default: label)")
    export.add_argument("--overwrite", action="store_true", help="replace an earlier export in --output")
    export.set_defaults(handler=cmd_export)

    serve = sub.add_parser("serve", help="HTTP server with micro-batching")
    serve.add_argument("--model", required=True, help="run folder or exported folder")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--max-batch-size", type=int, default=64)
    add_runtime_arguments(serve)
    serve.add_argument("--max-wait-ms", type=float, default=5.0)
    serve.add_argument("--max-texts", type=int, default=256, help="max texts per request")
    serve.add_argument("--max-chars", type=int, default=10_000, help="max characters per text")
    serve.add_argument("--max-body-bytes", type=int, default=4 * 2**20, help="max request body size")
    serve.add_argument("--access-log", action="store_true", help="log every request (off: /metrics counts them)")
    serve.add_argument(
        "--api-key",
        default=os.environ.get("SENTITUNE_API_KEY"),
        help="require this X-API-Key header (default $SENTITUNE_API_KEY)",
    )
    serve.set_defaults(handler=cmd_serve)

    analyze = sub.add_parser("analyze", help="error analysis of a run (or two)")
    analyze.add_argument("run", help="run folder (or an evaluation folder inside it)")
    analyze.add_argument("--against", help="second run for a paired comparison")
    analyze.add_argument("--top-k", type=int, default=20)
    analyze.add_argument("--slice", action="append", default=[], metavar="NAME=REGEX", help="user-defined slice")
    analyze.add_argument("--output-dir", help="default: <run>/analysis")
    analyze.set_defaults(handler=cmd_analyze)

    report = sub.add_parser("report", help="Markdown + self-contained HTML report of a comparison")
    report.add_argument("results", help="comparison folder")
    report.add_argument("--open", action="store_true", help="open the HTML report in a browser")
    report.set_defaults(handler=cmd_report)

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
    pretrain.add_argument("--epochs", type=float, help="passes over the texts (default 1)")
    pretrain.add_argument("--batch-size", type=int, help="examples per step (default 16)")
    pretrain.add_argument("--learning-rate", type=float, help="peak learning rate (default 5e-5)")
    pretrain.add_argument("--max-length", type=int, help="tokens per example (default 256)")
    pretrain.add_argument(
        "--long-texts", choices=["chunk", "truncate"], help="long texts: split into windows (default) or cut"
    )
    pretrain.add_argument("--mlm-probability", type=float, help="fraction of tokens masked (default 0.15)")
    pretrain.add_argument("--max-texts", type=int, help="use a seeded sample of N texts")
    pretrain.add_argument("--eval-texts", type=int, help="held-out texts for the before/after MLM loss (default 200)")
    pretrain.add_argument("--seed", type=int, help="seed (default 42)")
    pretrain.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"])
    pretrain.add_argument("--threads", type=int, help="torch CPU threads")
    pretrain.add_argument("--overwrite", action="store_true", help="replace a non-empty --output-dir")
    pretrain.set_defaults(handler=cmd_pretrain)

    shrink = sub.add_parser("shrink", help="keep the first K encoder layers of a model (layer dropping)")
    shrink.add_argument("--model", required=True, help="alias, local folder or hub id")
    shrink.add_argument("--layers", type=int, required=True, help="encoder layers to keep (the bottom K)")
    shrink.add_argument("--output-dir", required=True, help="new model folder; then use it with --model")
    shrink.add_argument("--overwrite", action="store_true", help="replace an existing model folder")
    shrink.set_defaults(handler=cmd_shrink)
    return parser


def main(argv: list[str] | None = None) -> int:
    from sentitune.errors import USER_ERRORS

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args) or 0
    except USER_ERRORS as exc:
        print(f"sentitune {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"sentitune {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from sentitune.results import not_writable

        # Write sites outside sentitune's own writers (Trainer checkpoints, libraries' save calls)
        # still end in one line when the disk is full or the folder read-only.
        mapped = not_writable(exc)
        if mapped is None:
            raise
        print(f"sentitune {args.command}: error: {mapped}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
