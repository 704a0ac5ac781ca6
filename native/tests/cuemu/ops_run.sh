#!/usr/bin/env bash
# Builds and runs the CUDA op kernel tests (native/tests/cuemu/ops_test.cpp) on cuemu with g++ -O2,
# and compiles the same kernels with nvcc for sm_80 and sm_89 with `-Xptxas -v`: the full log goes
# to $OUT/ptxas.log and a per-kernel register/spill summary is printed (compile only; skipped
# without nvcc). Objects are reused while their sources are unchanged.
# Usage: native/tests/cuemu/ops_run.sh [-v]
# Exit status: non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=${OUT:-${TMPDIR:-/tmp}/tachyon-cuemu-ops}
mkdir -p "$OUT"
CXX=${CXX:-g++}
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
NVCC=${NVCC:-$CUDA_HOME/bin/nvcc}
if [ ! -f "$CUDA_HOME/include/cuda_fp16.h" ]; then
  echo "op kernel tests need the CUDA headers (cuda_fp16.h) under \$CUDA_HOME/include; not found: SKIPPED"
  exit 0
fi
FLAGS=(-O2 -std=c++17 -Wall -Wextra -Wno-unused-parameter -Wno-unknown-pragmas -isystem "$CUDA_HOME/include"
       -Inative -Inative/include -Inative/cpu)
HDRS=(native/cuemu/*.h native/cuemu/*.cuh native/cuda/kernels/*.cuh native/include/tachyon/*.h)
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
    for a in 80 89; do
      if stale "$OUT/ops_sm$a.o" native/tests/cuemu/ops_nvcc.cu "${HDRS[@]}"; then
        "$NVCC" -std=c++17 -arch=sm_$a -Inative/include -Xptxas -v -c native/tests/cuemu/ops_nvcc.cu \
          -o "$OUT/ops_sm$a.o" > "$OUT/ptxas_sm$a.log" 2>&1 || { rm -f "$OUT/ops_sm$a.o"; exit 1; }
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
build "$OUT/small_ops_ref.o" native/cpu/ref/small_ops_ref.cpp native/cpu/ref/*.h native/include/tachyon/*.h
build "$OUT/gemm_ref.o" native/cpu/ref/gemm_ref.cpp native/cpu/ref/*.h native/include/tachyon/*.h
build "$OUT/ops_test.o" native/tests/cuemu/ops_test.cpp native/cpu/ref/*.h "${HDRS[@]}"
$CXX -rdynamic -o "$OUT/ops_test" "$OUT/ops_test.o" "$OUT/small_ops_ref.o" "$OUT/gemm_ref.o" "$OUT/cuemu.o" -lpthread -ldl
echo "g++ build: $(( $(date +%s) - t0 )) s"
status=0
"$OUT/ops_test" "$@" || status=1
if [ ${#NV[@]} -gt 0 ]; then
  if wait "${NV[0]}"; then
    cat "$OUT/ptxas_sm80.log" "$OUT/ptxas_sm89.log" > "$OUT/ptxas.log"
    echo "nvcc -arch=sm_80 / sm_89 -c ops_nvcc.cu: OK (log: $OUT/ptxas.log)"
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
    cut -f7 "$OUT/ptxas_raw.tsv" | $DEMANGLE | sed -E 's/ty::cuda:://g; s/\(.*//; s/__nv_bfloat16/bf16/g; s/__half/f16/g' > "$OUT/ptxas_names.txt"
    paste <(cut -f1-6 "$OUT/ptxas_raw.tsv") "$OUT/ptxas_names.txt" | sort -t$'\t' -k7,7 -k1,1 > "$OUT/ptxas_summary.tsv"
    echo "ptxas (-Xptxas -v): arch regs spill-stores spill-loads stack smem kernel"
    awk -F'\t' '{ printf "  %-6s %4s %5s %5s %5s %6s  %s\n", $1, $2, $3, $4, $5, $6, $7 }' "$OUT/ptxas_summary.tsv"
    awk -F'\t' '{ n++; if ($2 > mx) mx = $2; if ($3 + $4 > 0) sp++ } END {
      printf "ptxas summary: %d kernel builds, max %d registers, %d with spills\n", n, mx, sp }' "$OUT/ptxas_summary.tsv"
  else
    echo "nvcc compile check FAILED:"; cat "$OUT"/ptxas_sm*.log; status=1
  fi
fi
echo "total: $(( $(date +%s) - t0 )) s"
exit $status
