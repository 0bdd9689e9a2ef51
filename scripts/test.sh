#!/usr/bin/env bash
# The test suite (what CI runs). pytest's exit code 5 (no tests collected) is a failure, like any non-zero code.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
if command -v nvcc >/dev/null 2>&1; then
  bash scripts/compile_cuda.sh
fi
exec .venv/bin/python -m pytest -q -p no:cacheprovider tests "$@"
