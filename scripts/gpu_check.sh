#!/usr/bin/env bash
# The prepared GPU check, one command on a machine with an NVIDIA GPU, a CUDA build of torch and triton
# (run as `bash scripts/gpu_check.sh [OUT_DIR]`; about 5 minutes on one GPU, each step under its own timeout):
#   1. install fastmsfd the way users do (pip install ., not editable, CUDA kernels built against the machine's
#      torch) into a folder of its own on PYTHONPATH (the machine's python may itself be a venv, which a
#      --system-site-packages venv would not see), and run everything below from outside the checkout, so
#      that the installed package (fastmsfd._C with CUDA, fastmsfd.kernels) is what gets tested;
#   2. before any test, assert that backend_status('cuda') reports both cuda and triton available;
#   3. tests/test_gpu.py (the Detector on CUDA against the CPU reference with the same weights, fullgraph
#      compile, offsets past 2**31, a second GPU) and the backend-vs-reference tests on CUDA;
#   4. kernel benchmarks and the end-to-end bench (fastmsfd bench) on the GPU.
# Results go to $1 (default: $OUT if set, else docs/gpu/); each step logs to its own file and a failing step does
# not stop the others. Exit status: non-zero if any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
dest=$(mkdir -p "${1:-${OUT:-docs/gpu}}" && cd "${1:-${OUT:-docs/gpu}}" && pwd)
PY=${PYTHON:-python3}
site=${GPU_CHECK_SITE:-/tmp/fastmsfd-gpu-site}
work=$(mktemp -d)
export TRITON_INTERPRET=0 PYTHONUNBUFFERED=1
status=0
step() {  # step NAME SECONDS COMMAND...: run with a timeout, log to $dest/NAME.txt, remember failures
  local name=$1 limit=$2; shift 2
  echo "== $name: $*"
  local start=$SECONDS
  if timeout "$limit" "$@" > "$dest/$name.txt" 2>&1; then echo "   ok ($((SECONDS - start)) s)"
  else echo "   FAILED (rc $?, $((SECONDS - start)) s), see $dest/$name.txt"; status=1; fi
  tail -n 3 "$dest/$name.txt"
}
step env 60 bash -c "nvidia-smi; $PY -c 'import torch, sys; print(sys.version); print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0), torch.cuda.device_count(), \"GPU(s)\")'; $PY -c 'import triton; print(\"triton\", triton.__version__)'"
# --no-build-isolation: build against the machine's torch; --no-deps --no-index: nothing to fetch there.
step install 600 bash -c "rm -rf $site && $PY -m pip install -q --target $site --no-build-isolation --no-deps \
  --no-index $repo"
export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
VPY=$PY
cp -r "$repo/tests" "$work/tests"  # tests import fastmsfd: from outside the checkout, that is the installed one
cd "$work"
step backends 120 "$VPY" -c "
import fastmsfd, os
from fastmsfd import ops
assert not fastmsfd.__file__.startswith('$repo/'), f'testing the checkout, not the installed package: {fastmsfd.__file__}'
status = ops.backend_status('cuda')
print(fastmsfd.__file__, status)
assert status['cuda'] is None and status['triton'] is None, status"
if [ $status -ne 0 ]; then echo "the CUDA backends are not available: tests skipped (exit 1)"; exit 1; fi
step gpu_tests 300 "$VPY" -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_ops.py -rs
step backend_tests 300 "$VPY" -m pytest -q -p no:cacheprovider tests/test_backends.py -x
step bench_ops 240 "$VPY" -m pytest -q -p no:cacheprovider "$repo/benchmarks/test_bench_ops.py" \
  --benchmark-group-by=param:case --benchmark-json "$dest/bench_ops.json"
step bandwidth 120 "$VPY" "$repo/scripts/kernel_bandwidth.py" --device cuda --json "$dest/bandwidth.json"
step bench_e2e 240 "$VPY" -m fastmsfd bench --device cuda --runtime torch --precision float32 bfloat16 \
  --compile reduce-overhead --batch 64 --reps 5 --json "$dest/bench_e2e.json"
rm -rf "$work" "$site"
echo "results in $dest (exit $status)"
exit $status
