"""Inference beyond one process: batch prediction on Ray Data, serving on Ray Serve, and a model
repository for NVIDIA Triton. Ray and tritonclient are optional (`pip install 'sentitune[scale]'`);
every module here imports them only inside the functions that need them, so `sentitune` starts
without them and says which extra to install when one is missing."""

from __future__ import annotations

from sentitune.errors import ConfigError


SCALE_EXTRA = "pip install 'sentitune[scale]'"


def require(module: str, purpose: str):
    """`import module`, or one ConfigError line naming the extra that provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"{purpose} needs the optional package {module!r}; install it with {SCALE_EXTRA}") from None
