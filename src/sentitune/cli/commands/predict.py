"""`sentitune predict`: texts from arguments or a file -> JSONL predictions.

Example:
    $ sentitune predict --model runs/sst2-lora "a gorgeous , witty film" "a dull mess"
    $ sentitune predict --model exported/sst2-lora-int8 --input reviews.csv --output preds.jsonl
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Iterable

from sentitune.cli.options import runtime_kwargs
from sentitune.data import input_format, is_blank, stream_texts
from sentitune.errors import DataError, OutputNotWritable
from sentitune.inference import Predictor, write_jsonl
from sentitune.results import check_output_path, is_run_folder


def progress_wanted() -> bool:
    """A progress bar on a terminal, or when SENTITUNE_PROGRESS=1 asks for one."""
    return sys.stderr.isatty() or os.environ.get("SENTITUNE_PROGRESS") == "1"


def check_predict_output(output: str, source: str | None, model: str) -> None:
    """Refuses an --output that would replace what this command reads: the --input file itself, or a
    file inside the --model folder or any other run folder (its predictions.csv, labels.json or
    weights; `--output run/predictions.csv` silently broke the run)."""
    check_output_path(output, "--output", "file")  # a folder, or inside a file: said as such first
    path = Path(output)
    if source and source != "-" and path.exists() and Path(source).exists() and path.samefile(source):
        raise OutputNotWritable(f"{output}: is the --input file; write the predictions to another --output")
    target = path.resolve()
    model_dir = Path(model).resolve()
    for folder in target.parents:
        try:
            inside_run = is_run_folder(folder)
        except OSError:  # a parent this user may pass through but not list
            inside_run = False
        if folder == model_dir or inside_run:
            what = "the --model folder" if folder == model_dir else "a run folder"
            raise OutputNotWritable(
                f"{output}: inside {what} ({folder}); sentitune never writes predictions into a model "
                "or run folder, so pick another --output"
            )


def run_ray(args: argparse.Namespace) -> int:
    """`--engine ray`: --input is a path, glob or folder of shards, --output a folder."""
    from sentitune.scale.ray_predict import predict_with_ray

    if args.texts or not args.input or args.input == "-":
        raise DataError("--engine ray reads files: give --input PATH_OR_GLOB (not texts or stdin)")
    if not args.output or args.output == "-":
        raise DataError("--engine ray writes a folder of shards: give --output DIR")
    runtime = runtime_kwargs(args)
    manifest = predict_with_ray(
        args.model,
        [args.input],
        args.output,
        text_column=args.text_column,
        output_format=args.output_format,
        address=args.address,
        concurrency=args.concurrency,
        batch_size=args.batch_size,
        num_cpus=args.num_cpus,
        num_gpus=args.num_gpus,
        cluster_cpus=args.cluster_cpus,
        overwrite=args.overwrite,
        load_kwargs={k: v for k, v in runtime.items() if v is not None},
    )
    print(
        f"{manifest['rows']} predictions -> {args.output} ({len(manifest['files'])} {args.output_format} shards, "
        f"{manifest['sentences_per_second']} sentences/s on {args.concurrency} actors)",
        file=sys.stderr,
    )
    return 0


def run(args: argparse.Namespace) -> int:
    if getattr(args, "engine", "local") == "ray":
        return run_ray(args)
    if args.texts and args.input:
        raise DataError("give texts as arguments or --input FILE, not both")
    if not args.texts and not args.input:
        raise DataError("nothing to predict: give texts as arguments, or --input FILE ('-' for stdin)")
    if args.batch_size < 1:
        raise DataError(f"--batch-size must be >= 1, got {args.batch_size}")
    blank = next((i for i, text in enumerate(args.texts) if is_blank(text)), None)
    if blank is not None:
        # The model would still answer, confidently, about nothing (as the server refuses it too).
        raise DataError(f"text {blank + 1}: holds no visible characters; give the text to classify")
    if args.output and args.output != "-":
        check_predict_output(args.output, args.input, args.model)
    fmt = getattr(args, "input_format", None)
    if args.input and args.input != "-":
        input_format(args.input, fmt)  # unknown suffixes fail before the model loads
    predictor = Predictor.load(args.model, **runtime_kwargs(args))
    progress = None
    if args.texts:
        texts: Iterable[str] = args.texts
    else:
        on_bytes = None
        if args.input != "-" and progress_wanted():
            from tqdm import tqdm  # only with a progress bar to draw

            progress = tqdm(
                total=os.path.getsize(args.input),
                unit="B",
                unit_scale=True,
                file=sys.stderr,
                desc=f"predict {Path(args.input).name}",
            )
            on_bytes = progress.update
        texts = stream_texts(args.input, args.text_column, fmt, on_bytes)
    try:
        count = write_jsonl(predictor.predict_stream(texts, args.batch_size), args.output)
    finally:
        if progress is not None:
            progress.close()
    if args.output:
        print(f"{count} predictions -> {args.output}", file=sys.stderr)
    return 0
