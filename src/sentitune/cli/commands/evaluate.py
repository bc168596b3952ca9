"""`sentitune evaluate RUN --data FILE`: analysis.evaluate_file -> its metrics as JSON."""

from __future__ import annotations

import argparse
import json

from sentitune.analysis import evaluate_file


def run(args: argparse.Namespace) -> int:
    metrics = evaluate_file(
        args.run,
        args.data,
        text_column=args.text_column,
        label_column=args.label_column,
        output_dir=args.output_dir,
    )
    print(json.dumps(dict(metrics.items()), indent=2))
    return 0
