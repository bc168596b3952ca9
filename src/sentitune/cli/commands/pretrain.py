"""`sentitune pretrain`: flags -> PretrainConfig -> pretraining.pretrain (progress lines on stderr)."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from sentitune.pretraining import PretrainConfig, pretrain


def run(args: argparse.Namespace) -> int:
    fields = {f.name for f in dataclasses.fields(PretrainConfig)}
    # Flags left out are None: PretrainConfig's defaults apply.
    values = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    pretrain(
        PretrainConfig(**values),
        args.output_dir,
        overwrite=args.overwrite,
        echo=lambda line: print(line, file=sys.stderr),
    )
    return 0
