"""`sentitune export`: export a run, print and save the parity report.

Example:
    $ sentitune export --model runs/sst2-lora --format onnx --quantize int8 --output exported/sst2-lora-int8
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sentitune.export import PARITY_FILE, export_run, format_report, int8_warning


def run_triton(args: argparse.Namespace) -> int:
    from sentitune.scale.triton import export_triton

    report = export_triton(
        args.model,
        args.output,
        quantize=args.quantize,
        kind=args.triton_kind,
        instances=args.triton_instances,
        max_batch_size=args.triton_max_batch_size,
        max_queue_delay_us=args.triton_max_queue_delay_us,
        overwrite=args.overwrite,
        parity_file=args.parity_data,
        text_column=args.text_column,
        label_column=args.label_column,
        int8_keep_fp32=args.int8_keep_fp32,
    )
    print(format_report(report))
    print(f"Triton model repository ({report['triton']['variant']}) -> {report['output']}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.format == "triton":
        return run_triton(args)
    report = export_run(
        args.model,
        args.output,
        fmt=args.format,
        quantize=args.quantize,
        parity_file=args.parity_data,
        text_column=getattr(args, "text_column", None),
        label_column=getattr(args, "label_column", None),
        overwrite=getattr(args, "overwrite", False),
        int8_keep_fp32=getattr(args, "int8_keep_fp32", None),
    )
    print(format_report(report))
    print(
        f"exported {args.format}{' + int8' if args.quantize else ''} -> {report['output']} "
        f"(parity report: {Path(report['output']) / PARITY_FILE})"
    )
    warning = int8_warning(report)
    if warning:
        print(warning, file=sys.stderr)
    return 0
