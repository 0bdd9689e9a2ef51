#!/usr/bin/env bash
# Compile the CUDA kernels (raw-pointer launchers, no torch headers) with nvcc for sm_80 and sm_90, so a CUDA
# compile error is caught on machines without a GPU. Objects go to a temp folder and are thrown away.
set -euo pipefail
cd "$(dirname "$0")/.."
shopt -s nullglob
files=(csrc/cuda/*.cu)
[ ${#files[@]} -eq 0 ] && { echo "compile_cuda: no .cu files"; exit 0; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for f in "${files[@]}"; do
  nvcc -c -O3 -std=c++17 -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
    -o "$out/$(basename "$f").o" "$f"
done
echo "compile_cuda: ${#files[@]} file(s) compiled for sm_80 and sm_90"
