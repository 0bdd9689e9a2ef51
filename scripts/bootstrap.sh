#!/usr/bin/env bash
# Create ./.venv (if needed) and install fastmsfd with its development requirements into it.
# torch is pinned (requirements-dev.txt): an unpinned torch would pull a multi-GB CUDA build.
# Any failed install fails this script: a broken extension build must never turn into skipped tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# pip's notes about local wheel files are noise; with pipefail the pipeline still fails when pip does.
quiet() { "$@" 2>&1 | { grep -v "Location 'file:" || true; }; }
quiet .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
# --no-build-isolation: build the extension against the torch just installed (its C++ ABI must match).
quiet .venv/bin/python -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
.venv/bin/python -c "import fastmsfd" || { echo "bootstrap: fastmsfd failed to install" >&2; exit 1; }
