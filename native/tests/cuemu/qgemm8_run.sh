#!/usr/bin/env bash
# Builds and runs the 8-bit CUDA GEMM tests (native/tests/cuemu/qgemm8_test.cpp: W8A8 int8, FP8
# W8A8 mma / W8A16, grouped MoE, activation quantizers) on cuemu with g++ -O2, under the forward and
# reverse schedules, and compiles the same kernels with nvcc for sm_80, sm_89 and sm_90 with
# `-Xptxas -v` (in the background, while the tests run): the full log goes to $OUT/ptxas.log and
# a per-kernel register / spill / shared-memory summary is printed (compile only; skipped without
# nvcc). Objects are reused while their sources are unchanged.
# Usage: native/tests/cuemu/qgemm8_run.sh [TEST-NAME-FILTER]
# Exit status: non-zero on any failure (a test, the nvcc compile, or a kernel that spills).
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=${OUT:-${TMPDIR:-/tmp}/tachyon-cuemu-qgemm8}
mkdir -p "$OUT"
CXX=${CXX:-g++}
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
NVCC=${NVCC:-$CUDA_HOME/bin/nvcc}
ARCHS=${ARCHS:-"80 89 90"}
if [ ! -f "$CUDA_HOME/include/cuda_fp16.h" ] || [ ! -f "$CUDA_HOME/include/cuda_fp8.h" ]; then
  echo "qgemm8 tests need the CUDA headers (cuda_fp16.h, cuda_fp8.h) under \$CUDA_HOME/include; not found: SKIPPED"
  exit 0
fi
FLAGS=(-O2 -std=c++17 -Wall -Wextra -Wno-unused-parameter -Wno-unknown-pragmas -isystem "$CUDA_HOME/include"
       -Inative -Inative/include -Inative/cpu)
HDRS=(native/cuemu/*.h native/cuemu/*.cuh native/cuda/kernels/common.cuh native/cuda/kernels/gemm_int8.cuh
      native/cuda/kernels/gemm_fp8.cuh native/include/tachyon/*.h)
# stale OUT DEP...: true when OUT is missing or older than a dependency
stale() {
  local o=$1; shift
  [ -f "$o" ] || return 0
  for d in "$@"; do [ "$d" -nt "$o" ] && return 0; done
  return 1
}
t0=$(date +%s)
NV=()
if [ -x "$NVCC" ] || command -v "$NVCC" >/dev/null 2>&1; then
  (
    set -e
    for a in $ARCHS; do
      if stale "$OUT/qgemm8_sm$a.o" native/tests/cuemu/qgemm8_nvcc.cu "${HDRS[@]}"; then
        "$NVCC" -std=c++17 -arch=sm_$a -Inative/include -Xptxas -v -c native/tests/cuemu/qgemm8_nvcc.cu \
          -o "$OUT/qgemm8_sm$a.o" > "$OUT/ptxas_sm$a.log" 2>&1 || { rm -f "$OUT/qgemm8_sm$a.o"; exit 1; }
      fi
    done
  ) &
  NV=($!)
else
  echo "nvcc not found: the nvcc compile check is SKIPPED"
fi
build() {  # build OBJ SRC DEPS...
  local o=$1 s=$2; shift 2
  if stale "$o" "$s" "$@"; then $CXX "${FLAGS[@]}" -c "$s" -o "$o"; fi
}
build "$OUT/cuemu.o" native/cuemu/cuemu.cpp native/cuemu/cuemu.h
build "$OUT/quant.o" native/cpu/quant.cpp native/include/tachyon/*.h
build "$OUT/fp8.o" native/cpu/fp8.cpp native/include/tachyon/*.h
build "$OUT/qgemm_ref.o" native/cpu/ref/qgemm_ref.cpp native/cpu/ref/*.h native/include/tachyon/*.h
build "$OUT/qgemm_fused_ref.o" native/cpu/ref/qgemm_fused_ref.cpp native/cpu/ref/*.h native/include/tachyon/*.h
build "$OUT/fp8gemm_ref.o" native/cpu/ref/fp8gemm_ref.cpp native/cpu/ref/*.h native/include/tachyon/*.h
build "$OUT/qgemm8_test.o" native/tests/cuemu/qgemm8_test.cpp native/tests/cuemu/check.h native/cpu/ref/*.h "${HDRS[@]}"
$CXX -rdynamic -o "$OUT/qgemm8_test" "$OUT/qgemm8_test.o" "$OUT/quant.o" "$OUT/fp8.o" "$OUT/qgemm_ref.o" \
  "$OUT/qgemm_fused_ref.o" "$OUT/fp8gemm_ref.o" "$OUT/cuemu.o" -lpthread -ldl
echo "g++ build: $(( $(date +%s) - t0 )) s"
status=0
t1=$(date +%s)
"$OUT/qgemm8_test" "$@" || status=1
echo "tests: $(( $(date +%s) - t1 )) s"
if [ ${#NV[@]} -gt 0 ]; then
  if wait "${NV[0]}"; then
    : > "$OUT/ptxas.log"
    for a in $ARCHS; do cat "$OUT/ptxas_sm$a.log" >> "$OUT/ptxas.log"; done
    echo "nvcc -c qgemm8_nvcc.cu for sm_${ARCHS// /, sm_}: OK (log: $OUT/ptxas.log)"
    # One line per kernel and arch: registers, spill stores/loads, stack, shared memory.
    DEMANGLE=cat
    command -v c++filt >/dev/null 2>&1 && DEMANGLE=c++filt
    awk -v q="'" '
      /Compiling entry function/ { i = index($0, "function " q); r = substr($0, i + 10); fn = substr(r, 1, index(r, q) - 1)
                                   r = substr(r, index(r, "for " q) + 5); arch = substr(r, 1, index(r, q) - 1) }
      /bytes stack frame/ { stack = $1; st = $5; ld = $9 }
      /Used [0-9]+ registers/ && fn != "" { sm = 0
                             for (i = 1; i <= NF; ++i) { if ($i == "Used") regs = $(i + 1); if ($i ~ /^smem/) sm = $(i - 2) }
                             printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", arch, regs, st, ld, stack, sm, fn; fn = "" }
    ' "$OUT/ptxas.log" > "$OUT/ptxas_raw.tsv"
    cut -f7 "$OUT/ptxas_raw.tsv" | $DEMANGLE | sed -E 's/ty::cuda:://g; s/\(.*//; s/__nv_bfloat16/bf16/g; s/__half/f16/g;
      s/QTile<128, 128, 64, 2, 4, 3>/large/; s/QTile<64, 64, 64, 2, 2, 3>/small/; s/QTile<16, 32, 256, 1, 4, 4>/decode/;
      s/void //' > "$OUT/ptxas_names.txt"
    paste <(cut -f1-6 "$OUT/ptxas_raw.tsv") "$OUT/ptxas_names.txt" | sort -t$'\t' -k7,7 -k1,1 > "$OUT/ptxas_summary.tsv"
    echo "ptxas (-Xptxas -v): arch regs spill-stores spill-loads stack smem(static) kernel"
    awk -F'\t' '{ printf "  %-6s %4s %5s %5s %5s %6s  %s\n", $1, $2, $3, $4, $5, $6, $7 }' "$OUT/ptxas_summary.tsv"
    awk -F'\t' '{ n++; if ($2 > mx) mx = $2; if ($3 + $4 > 0) sp++ } END {
      printf "ptxas summary: %d kernel builds, max %d registers, %d with spills\n", n, mx, sp; exit sp > 0 }' \
      "$OUT/ptxas_summary.tsv" || { echo "a kernel spills: FAILED"; status=1; }
  else
    echo "nvcc compile check FAILED:"; cat "$OUT"/ptxas_sm*.log | grep -v "^ptxas info" | head -50; status=1
  fi
fi
echo "total: $(( $(date +%s) - t0 )) s"
exit $status
