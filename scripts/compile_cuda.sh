#!/usr/bin/env bash
# Catch CUDA compile errors on machines without a GPU:
#  1. nvcc -c every csrc/cuda/*.cu (raw-pointer launchers, no torch headers) for sm_80 and sm_90;
#  2. compile the CUDA registration (csrc/cuda/*.cpp, TORCH_LIBRARY_IMPL CUDA) and csrc/ops.cpp with
#     FASTMSFD_WITH_CUDA for syntax against the installed torch's headers and the CUDA toolkit's (a CPU torch
#     lacks one generated header: stubbed).
# Objects go to a temp folder and are thrown away.
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

PY=${PYTHON:-.venv/bin/python}
cuda_inc="$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")/include"
[ -f "$cuda_inc/cuda_runtime_api.h" ] || cuda_inc=$(ls -d /usr/local/cuda*/include 2>/dev/null | head -1)
if [ -x "$PY" ] && [ -f "$cuda_inc/cuda_runtime_api.h" ]; then
  read -r torch_inc py_inc < <("$PY" -c "
import sysconfig, torch.utils.cpp_extension as e
print(e.include_paths()[0], sysconfig.get_paths()['include'])")  # torch ships the pybind11 headers
  mkdir -p "$out/stub/c10/cuda/impl"
  [ -f "$torch_inc/c10/cuda/impl/cuda_cmake_macros.h" ] || echo '#pragma once' > "$out/stub/c10/cuda/impl/cuda_cmake_macros.h"
  for f in csrc/ops.cpp csrc/cuda/*.cpp; do
    g++ -std=c++20 -fsyntax-only -Wno-c++20-extensions -DFASTMSFD_WITH_CUDA -I"$out/stub" -I"$torch_inc" \
      -I"$torch_inc/torch/csrc/api/include" -I"$cuda_inc" -I"$py_inc" -Icsrc "$f"
  done
  echo "compile_cuda: the CUDA registration (csrc/cuda/*.cpp) and csrc/ops.cpp with CUDA compile"
else
  echo "compile_cuda: skipped the csrc/ops.cpp CUDA syntax check (no venv python or CUDA headers)"
fi
