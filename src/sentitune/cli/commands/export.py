"""`sentitune export`: export a run, print and save the parity report.

Example:
    $ sentitune export --model runs/sst2-lora --format onnx --quantize int8 --output exported/sst2-lora-int8
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sentitune.export import PARITY_FILE, export_run, format_report, int8_warning


def run(args: argparse.Namespace) -> int:
    report = export_run(
        args.model,
        args.output,
        fmt=args.format,
        quantize=args.quantize,
        parity_file=args.parity_data,
        text_column=getattr(args, "text_column", None),
        label_column=getattr(args, "label_column", None),
        overwrite=getattr(args, "overwrite", False),
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
