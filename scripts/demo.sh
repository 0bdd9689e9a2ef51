#!/usr/bin/env bash
# The main job on the embedded demo data: fit, predict, evaluate, write overlays and a summary.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/fastmsfd demo --out demo_output "$@"
