#!/usr/bin/env bash
# Builds and runs the paged attention / KV cache kernel tests (native/tests/cuemu/attn_test.cpp) on
# cuemu with g++ -O2, under the forward and reverse schedules, linked against the CPU backend's
# scalar attention kernels (the bit-exact oracle for kv_append / copy / swap) and its plan, and
# compiles the same kernels with nvcc for sm_80, sm_89 and sm_90 with `-Xptxas -v`: the full log
# goes to $OUT/ptxas.log and a per-kernel register / spill / shared-memory summary is printed
# (compile only; skipped without nvcc). Objects are reused while their sources are unchanged.
# Usage: native/tests/cuemu/attn_run.sh [-v]
# Exit status: non-zero on any failure; 0 with SKIPPED when the CUDA headers are missing.
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=${OUT:-${TMPDIR:-/tmp}/tachyon-cuemu-attn}
mkdir -p "$OUT"
CXX=${CXX:-g++}
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
NVCC=${NVCC:-$CUDA_HOME/bin/nvcc}
if [ ! -f "$CUDA_HOME/include/cuda_fp16.h" ]; then
  echo "attention kernel tests need the CUDA headers (cuda_fp16.h) under \$CUDA_HOME/include; not found: SKIPPED"
  exit 0
fi
FLAGS=(-O2 -std=c++17 -Wall -Wextra -Wno-unused-parameter -Wno-unknown-pragmas -isystem "$CUDA_HOME/include"
       -Inative -Inative/include -Inative/cpu)
CPUFLAGS=(-O2 -std=c++17 -fPIC -fno-math-errno -Wall -Wextra -Inative/include -Inative/cpu)
HDRS=(native/cuemu/*.h native/cuemu/*.cuh native/cuda/kernels/common.cuh native/cuda/kernels/attention.cuh
      native/cuda/kernels/kv.cuh native/include/tachyon/*.h)
# stale OUT DEP...: true when OUT is missing or older than a dependency
stale() {
  local o=$1; shift
  [ -f "$o" ] || return 0
  for d in "$@"; do [ "$d" -nt "$o" ] && return 0; done
  return 1
}
t0=$(date +%s)
ARCHS=(80 89 90)
GENCODE=()
for a in "${ARCHS[@]}"; do GENCODE+=(-gencode "arch=compute_$a,code=sm_$a"); done
NV=()
if [ -x "$NVCC" ] || command -v "$NVCC" >/dev/null 2>&1; then
  # One nvcc call for the three archs: the host side is compiled once.
  (
    set -e
    if stale "$OUT/attn_nvcc.o" native/tests/cuemu/attn_nvcc.cu "${HDRS[@]}"; then
      "$NVCC" -std=c++17 "${GENCODE[@]}" -Inative/include -Xptxas -v -c native/tests/cuemu/attn_nvcc.cu \
        -o "$OUT/attn_nvcc.o" > "$OUT/ptxas.log" 2>&1 || { rm -f "$OUT/attn_nvcc.o"; exit 1; }
    fi
  ) &
  NV=($!)
else
  echo "nvcc not found: the nvcc compile check is SKIPPED"
fi
build() {  # build OBJ SRC FLAGS-ARRAY-NAME DEPS...
  local o=$1 s=$2 f=$3; shift 3
  local -n fl=$f
  if stale "$o" "$s" "$@"; then $CXX "${fl[@]}" -c "$s" -o "$o"; fi
}
build "$OUT/cuemu.o" native/cuemu/cuemu.cpp FLAGS native/cuemu/cuemu.h
build "$OUT/attention_ref.o" native/cpu/ref/attention_ref.cpp CPUFLAGS native/cpu/ref/*.h
build "$OUT/cpu_attention.o" native/cpu/attention.cpp CPUFLAGS native/include/tachyon/*.h
SCALAR=("${CPUFLAGS[@]}" -DTY_ISA=scalar)
build "$OUT/cpu_att_scalar.o" native/cpu/kernels/attention.cpp SCALAR native/include/tachyon/*.h native/cpu/*.h native/cpu/kernels/act_vec.h
build "$OUT/attn_test.o" native/tests/cuemu/attn_test.cpp FLAGS native/tests/cuemu/check.h native/cpu/ref/*.h native/cpu/*.h "${HDRS[@]}"
$CXX -rdynamic -o "$OUT/attn_test" "$OUT/attn_test.o" "$OUT/attention_ref.o" "$OUT/cpu_attention.o" "$OUT/cpu_att_scalar.o" \
  "$OUT/cuemu.o" -lpthread -ldl
echo "g++ build: $(( $(date +%s) - t0 )) s"
status=0
"$OUT/attn_test" "$@" || status=1
if [ ${#NV[@]} -gt 0 ]; then
  if wait "${NV[0]}"; then
    echo "nvcc -arch=sm_80 / sm_89 / sm_90 -c attn_nvcc.cu: OK (log: $OUT/ptxas.log)"
    DEMANGLE=cat
    command -v c++filt >/dev/null 2>&1 && DEMANGLE=c++filt
    # One line per kernel and arch: registers, spill stores/loads, stack, static shared memory.
    awk -v q="'" '
      /Compiling entry function/ { i = index($0, "function " q); r = substr($0, i + 10); fn = substr(r, 1, index(r, q) - 1)
                                   r = substr(r, index(r, "for " q) + 5); arch = substr(r, 1, index(r, q) - 1) }
      /bytes stack frame/ { stack = $1; st = $5; ld = $9 }
      /Used [0-9]+ registers/ && fn != "" { sm = 0
                             for (i = 1; i <= NF; ++i) { if ($i == "Used") regs = $(i + 1); if ($i ~ /^smem/) sm = $(i - 2) }
                             printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", arch, regs, st, ld, stack, sm, fn; fn = "" }
    ' "$OUT/ptxas.log" > "$OUT/ptxas_raw.tsv"
    cut -f7 "$OUT/ptxas_raw.tsv" | $DEMANGLE | sed -E 's/ty::cuda:://g; s/attn:://g; s/\(KvStore\)0/f32/; s/\(KvStore\)1/f16/;
      s/\(KvStore\)2/bf16/; s/\(KvStore\)3/e4m3/; s/\(KvStore\)4/e5m2/; s/\(KvStore\)5/i8/; s/\(.*//; s/__nv_bfloat16/bf16/g; s/__half/f16/g' \
      > "$OUT/ptxas_names.txt"
    paste <(cut -f1-6 "$OUT/ptxas_raw.tsv") "$OUT/ptxas_names.txt" | sort -t$'\t' -k7,7 -k1,1 > "$OUT/ptxas_summary.tsv"
    echo "ptxas (-Xptxas -v): arch regs spill-stores spill-loads stack static-smem kernel"
    echo "  (attn_kernel<compute type, 8-bit cache, padded headDim, stages, bug>; kv_append_kernel<source, cache>;"
    echo "   attn_kernel's shared memory is dynamic: attention.cuh attn::layout)"
    awk -F'\t' '{ printf "  %-6s %4s %5s %5s %5s %6s  %s\n", $1, $2, $3, $4, $5, $6, $7 }' "$OUT/ptxas_summary.tsv"
    awk -F'\t' '{ n++; if ($2 > mx) mx = $2; if ($3 + $4 > 0) sp++ } END {
      printf "ptxas summary: %d kernel builds, max %d registers, %d with spills\n", n, mx, sp }' "$OUT/ptxas_summary.tsv"
    sp=$(awk -F'\t' '$3 + $4 > 0' "$OUT/ptxas_summary.tsv" | wc -l)
    if [ "$sp" != 0 ]; then echo "ptxas: $sp kernel builds spill registers: FAILED"; status=1; fi
  else
    echo "nvcc compile check FAILED:"; cat "$OUT/ptxas.log"; status=1
  fi
fi
echo "total: $(( $(date +%s) - t0 )) s"
exit $status
