"""`sentitune shrink --model M --layers K --output-dir DIR`: models.shrink_model -> one summary line."""

from __future__ import annotations

import argparse

from sentitune.models import shrink_model


def run(args: argparse.Namespace) -> int:
    info = shrink_model(args.model, args.layers, args.output_dir, overwrite=args.overwrite)
    print(
        f"{info['source_model']}: {info['layers_before']} -> {info['layers_kept']} encoder layers, "
        f"{info['params_before']:,} -> {info['params_after']:,} parameters "
        f"({100 * info['params_after'] / info['params_before']:.0f}%), {info['size_mib']:.1f} MiB; "
        f"wrote {args.output_dir} (use it with --model {args.output_dir})"
    )
    return 0
