#!/usr/bin/env bash
# Builds and runs the MoE permute/gather/combine and sampling kernel tests
# (native/tests/cuemu/moe_sampling_test.cpp) on cuemu with g++ -O2 (forward and reverse schedules),
# and compiles the same kernels with nvcc for sm_80, sm_89 and sm_90 with `-Xptxas -v` in the
# background: the full log goes to $OUT/ptxas.log and a per-kernel register/spill summary is
# printed (compile only; skipped without nvcc). Objects are reused while their sources are
# unchanged. SKIPPED (exit 0) without the CUDA headers.
# Usage: native/tests/cuemu/moe_sampling_run.sh [-v]
# Exit status: non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=${OUT:-${TMPDIR:-/tmp}/tachyon-cuemu-moe-sampling}
mkdir -p "$OUT"
CXX=${CXX:-g++}
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
NVCC=${NVCC:-$CUDA_HOME/bin/nvcc}
if [ ! -f "$CUDA_HOME/include/cuda_fp16.h" ]; then
  echo "MoE / sampling kernel tests need the CUDA headers (cuda_fp16.h) under \$CUDA_HOME/include; not found: SKIPPED"
  exit 0
fi
FLAGS=(-O2 -std=c++17 -Wall -Wextra -Wno-unused-parameter -Wno-unknown-pragmas -isystem "$CUDA_HOME/include"
       -Inative -Inative/include -Inative/cpu)
HDRS=(native/cuemu/*.h native/cuemu/*.cuh native/cuda/kernels/common.cuh native/cuda/kernels/moe.cuh
      native/cuda/kernels/sampling.cuh native/include/tachyon/*.h)
ARCHS=(80 89 90)
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
    # One nvcc run for the three archs (-gencode each): the host pass is shared.
    GENCODE=()
    for a in "${ARCHS[@]}"; do GENCODE+=(-gencode "arch=compute_$a,code=sm_$a"); done
    if stale "$OUT/ms_nvcc.o" native/tests/cuemu/moe_sampling_nvcc.cu "${HDRS[@]}"; then
      "$NVCC" -std=c++17 "${GENCODE[@]}" -Inative/include -Xptxas -v -c native/tests/cuemu/moe_sampling_nvcc.cu \
        -o "$OUT/ms_nvcc.o" > "$OUT/ptxas.log" 2>&1 || { rm -f "$OUT/ms_nvcc.o"; exit 1; }
    fi
  ) &
  NV=($!)
else
  echo "nvcc not found: the nvcc compile check is SKIPPED"
fi
build() {  # build OBJ SRC DEPS...
  local o=$1 s=$2; shift 2
  if stale "$o" "$s" "$@"; then $CXX "${FLAGS[@]}" -c "$s" -o "$o"; fi
}
status=0
if build "$OUT/cuemu.o" native/cuemu/cuemu.cpp native/cuemu/cuemu.h &&
   build "$OUT/moe_sampling_test.o" native/tests/cuemu/moe_sampling_test.cpp native/tests/cuemu/check.h "${HDRS[@]}" &&
   $CXX -rdynamic -o "$OUT/moe_sampling_test" "$OUT/moe_sampling_test.o" "$OUT/cuemu.o" -lpthread -ldl; then
  echo "g++ build: $(( $(date +%s) - t0 )) s"
  "$OUT/moe_sampling_test" "$@" || status=1
else
  echo "g++ build FAILED"; status=1
fi
if [ ${#NV[@]} -gt 0 ]; then
  if wait "${NV[0]}"; then
    echo "nvcc -arch=sm_80 / sm_89 / sm_90 -c moe_sampling_nvcc.cu: OK (log: $OUT/ptxas.log)"
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
    if awk -F'\t' '$3 + $4 > 0 { bad = 1 } END { exit !bad }' "$OUT/ptxas_summary.tsv"; then
      echo "ptxas: a kernel spills (see above)"; status=1
    fi
  else
    echo "nvcc compile check FAILED:"; cat "$OUT/ptxas.log"; status=1
  fi
fi
echo "total: $(( $(date +%s) - t0 )) s"
exit $status
