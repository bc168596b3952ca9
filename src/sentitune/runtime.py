"""What a run ran on: library versions, the lock, the git commit, the device. Imports nothing from
the package, so every layer (training, export, compare, the CLI) can record and check provenance.

Example:
    >>> versions = package_versions(("torch",))
    >>> sorted(versions)
    ['python', 'torch']
    >>> version_differences({"torch": "2.13.0"}, {"torch": "2.13.0"})
    []
    >>> version_differences({"torch": "2.13.0", "peft": "0.21.2"}, {"torch": "2.14.0", "peft": "0.21.2"})
    [('torch', '2.13.0', '2.14.0')]
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

TRAINING_PACKAGES = ("sentitune", "torch", "transformers", "peft", "tokenizers", "accelerate", "scikit-learn",
                     "datasets", "numpy")
"""Recorded in every run folder."""

COMPARED_PACKAGES = ("torch", "transformers", "peft", "tokenizers", "scikit-learn")
"""Libraries whose version can move a result; one comparison holds them fixed (compare refuses a mix
unless told otherwise)."""

LOCK_FILE = Path(__file__).resolve().parents[2] / "requirements.lock"
"""The lock of a source checkout (setup.sh installs from it); absent in a plain `pip install`."""


def _git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions(names: tuple[str, ...] = TRAINING_PACKAGES) -> dict[str, str]:
    """Installed versions of `names` (those installed), plus Python's."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            pass
    return versions


def lock_digest(lock: Path = LOCK_FILE) -> str | None:
    """sha256 (first 16 hex digits) of the dependency lock this checkout installs from, or None."""
    try:
        return hashlib.sha256(lock.read_bytes()).hexdigest()[:16]
    except OSError:
        return None


def version_differences(a: dict[str, str], b: dict[str, str],
                        packages: tuple[str, ...] = COMPARED_PACKAGES) -> list[tuple[str, str, str]]:
    """(package, version in a, version in b) for each of `packages` whose versions differ; a package
    missing on one side counts as "not installed"."""
    return [(name, a.get(name, "not installed"), b.get(name, "not installed"))
            for name in packages if a.get(name) != b.get(name)]


def device_description() -> dict[str, Any]:
    import torch

    if torch.cuda.is_available():
        return {"device": "cuda", "device_name": torch.cuda.get_device_name(0),
                "device_count": torch.cuda.device_count()}
    return {"device": "cpu", "device_name": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count()}


def provenance() -> dict[str, Any]:
    """Everything a run folder records about where and with what it ran."""
    import torch

    return {
        "git_sha": _git_sha(),
        "versions": package_versions(),
        "lock_sha256": lock_digest(),
        **device_description(),
        "torch_threads": torch.get_num_threads(),
        "hostname": platform.node(),
        "command": " ".join(sys.argv),
    }
