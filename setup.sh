#!/usr/bin/env bash
# Creates .venv with everything sentitune and its tests need. Safe to re-run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
python3 -m venv .venv
# torch first and pinned: 2.13.0's CPU wheel is on this machine's disk, while an unpinned torch (or
# one pulled in as a dependency) resolves to a multi-GB CUDA build.
.venv/bin/pip install --quiet torch==2.13.0
.venv/bin/pip install --quiet -e ".[test]"
echo "ready: .venv/bin/sentitune --help"
