#!/usr/bin/env bash
# Create ./.venv (if needed) and install fastmsfd with its development requirements into it.
# torch is pinned (requirements-dev.txt): an unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt 2>&1 \
  | grep -v "Location 'file:" || true
# --no-build-isolation: build the extension against the torch just installed (its C++ ABI must match).
.venv/bin/python -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e . 2>&1 \
  | grep -v "Location 'file:" || true
.venv/bin/python -c "import fastmsfd" || { echo "bootstrap: fastmsfd failed to install" >&2; exit 1; }
