#!/usr/bin/env bash
# Creates .venv holding exactly the locked dependency set (requirements.lock), then sentitune itself.
# Safe to re-run. SENTITUNE_VENV and SENTITUNE_LOCK point it elsewhere (scripts/update-lock uses them
# to try a new lock in a scratch venv).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
venv="${SENTITUNE_VENV:-.venv}"
lock="${SENTITUNE_LOCK:-requirements.lock}"
python3 -m venv "$venv"

# pip's output, less the warnings some machines' pip config causes (index folders that are absent).
pip_install() {
  local log
  log="$(mktemp)"
  if ! "$venv/bin/pip" install --quiet "$@" >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    return 1
  fi
  grep -v "is ignored: it is neither a file nor a directory" "$log" || true
  rm -f "$log"
}

# Every package at its locked version and hash, no resolver: what CI tests is what users get.
# torch is locked as 2.13.0+cpu, the CPU wheel on these machines' disk (pip's find-links); elsewhere
# add PyTorch's CPU index: PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu ./setup.sh
pip_install --require-hashes --no-deps -r "$lock"
# The package itself, editable, built with the locked setuptools rather than a fresh download.
pip_install --no-deps --no-build-isolation -e .
"$venv/bin/pip" check >/dev/null || { "$venv/bin/pip" check; exit 1; }
echo "ready: $venv/bin/sentitune --help"
