#!/usr/bin/env bash
# The prepared GPU check (issues: Triton kernels, C++/CUDA kernels, fast inference). On a machine with an NVIDIA
# GPU and a CUDA build of torch (+ triton), in one go:
#   1. build fastmsfd._C with the CUDA kernels (FORCE_CUDA=1) in place;
#   2. run the backend-vs-reference tests on CUDA (Triton compiled for the GPU, not interpreted; full opcheck and
#      Inductor) and the detector/ops tests;
#   3. the kernel benchmarks (pytest-benchmark JSON) and the bandwidth table (achieved vs device copy bandwidth,
#      time vs the reference);
#   4. `fastmsfd bench` end to end where the command exists.
# Results go to $1 (default: $OUT if set, else docs/gpu/); each step logs to its own file and a failing step does
# not stop the others. Exit status: non-zero if any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
dest=${1:-${OUT:-docs/gpu}}
mkdir -p "$dest"
PY=${PYTHON:-python3}
export TRITON_INTERPRET=0 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
status=0
step() {  # step NAME COMMAND...: run, log to $dest/NAME.txt, remember failures
  local name=$1; shift
  echo "== $name: $*"
  if "$@" > "$dest/$name.txt" 2>&1; then echo "   ok"; else echo "   FAILED (rc $?), see $dest/$name.txt"; status=1; fi
  tail -n 3 "$dest/$name.txt"
}
step env bash -c "nvidia-smi; $PY -c 'import torch, sys; print(sys.version); print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))'; $PY -c 'import triton; print(\"triton\", triton.__version__)'"
step build env FORCE_CUDA=1 "$PY" setup.py build_ext --inplace
step backends "$PY" -c "from fastmsfd import ops; print(ops.backend_status('cuda'))"
step tests "$PY" -m pytest -q -p no:cacheprovider tests/test_backends.py tests/test_ops.py tests/test_detector.py
step bench_ops "$PY" -m pytest -q -p no:cacheprovider benchmarks/test_bench_ops.py --benchmark-group-by=param:case \
  --benchmark-json "$dest/bench_ops.json"
step bandwidth "$PY" scripts/kernel_bandwidth.py --device cuda --json "$dest/bandwidth.json"
if "$PY" -m fastmsfd bench --help > /dev/null 2>&1; then
  step bench_e2e "$PY" -m fastmsfd bench --device cuda --runtime torch --precision float32 bfloat16 \
    --compile reduce-overhead --batch 64 --json "$dest/bench_e2e.json"
fi
echo "results in $dest (exit $status)"
exit $status
