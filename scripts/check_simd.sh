#!/usr/bin/env bash
# What the compiler emitted for the hot CPU loops of fastmsfd._C: packed FMA instructions per function clone
# (ymm = AVX2, zmm = AVX-512; the "default" clone is SSE-only). Needs binutils' objdump.
set -euo pipefail
cd "$(dirname "$0")/.."
so=$(ls fastmsfd/_C*.so | head -1)
objdump -d --no-show-raw-insn "$so" | awk '
  /^[0-9a-f]+ <.*>:$/ { name = $2 }
  /vfmadd...ps|vfmsub...ps|vfnmadd...ps/ { reg = ($0 ~ /zmm/) ? "zmm" : (($0 ~ /ymm/) ? "ymm" : "xmm"); n[name " " reg]++ }
  END { for (k in n) print n[k], k }' \
  | grep -E "forward_(nchw_tasks|nhwc_cells)IfE|backward_(nchw_tasks|nhwc_cells)IfE|row_pass|column_pass" \
  | sed -E 's/_ZN8fastmsfd3cpu12_GLOBAL__N_1[0-9]+//; s/(IfE|ERK).*(\.arch_x86_64_v[34]|\.default)>:/ \2/' | sort -k2,3
