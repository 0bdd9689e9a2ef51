#!/usr/bin/env bash
# The test suite (what CI runs). pytest's exit code 5 (no tests collected) is a failure, like any non-zero code.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
# The compiled backend must be there: without it every cpp-backend test would skip and the run would look green.
if [ "${FASTMSFD_NO_EXT:-0}" != 1 ]; then
  .venv/bin/python -c "
from fastmsfd import ops
why = ops.backend_status('cpu')['cpp']
assert why is None, f'the cpp backend is not available in the installed package: {why}'
print('test: cpp backend available')"
fi
bash scripts/install_browser.sh  # headless Chromium for the page test (Debian packages)
.venv/bin/ruff check .  # pyflakes, pycodestyle, import order (pyproject.toml)
if command -v nvcc >/dev/null 2>&1; then
  bash scripts/compile_cuda.sh
fi
# The interpreter the tests use does not enforce GPU compile rules: compile every Triton kernel for the GPU.
env -u TRITON_INTERPRET .venv/bin/python scripts/compile_triton.py
exec .venv/bin/python -m pytest -q -p no:cacheprovider tests "$@"
