#!/usr/bin/env bash
# Builds and runs the W4A16 kernel tests (native/tests/cuemu/w4a16_test.cpp) on cuemu with g++ -O2,
# and compiles the same kernels with nvcc for sm_80, sm_89 and sm_90 with `-Xptxas -v` in the
# background: the full log goes to $OUT/ptxas.log and a per-kernel register / spill / shared
# memory summary is printed (compile only; skipped without nvcc). Objects are reused while their
# sources are unchanged.
# Usage: native/tests/cuemu/w4a16_run.sh [-v]
# Exit status: non-zero on any failure (test, build, nvcc, or a kernel that spills).
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=${OUT:-${TMPDIR:-/tmp}/tachyon-cuemu-w4a16}
mkdir -p "$OUT"
CXX=${CXX:-g++}
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
NVCC=${NVCC:-$CUDA_HOME/bin/nvcc}
if [ ! -f "$CUDA_HOME/include/cuda_fp16.h" ]; then
  echo "W4A16 kernel tests need the CUDA headers (cuda_fp16.h) under \$CUDA_HOME/include; not found: SKIPPED"
  exit 0
fi
FLAGS=(-O2 -std=c++17 -Wall -Wextra -Wno-unused-parameter -Wno-unknown-pragmas -isystem "$CUDA_HOME/include"
       -Inative -Inative/include -Inative/cpu)
HDRS=(native/cuemu/*.h native/cuemu/*.cuh native/cuda/kernels/common.cuh native/cuda/kernels/gemm_w4a16.cuh
      native/include/tachyon/*.h)
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
    for a in 80 89 90; do
      if stale "$OUT/w4a16_sm$a.o" native/tests/cuemu/w4a16_nvcc.cu "${HDRS[@]}"; then
        "$NVCC" -std=c++17 -arch=sm_$a -Inative/include -Xptxas -v -c native/tests/cuemu/w4a16_nvcc.cu \
          -o "$OUT/w4a16_sm$a.o" > "$OUT/ptxas_sm$a.log" 2>&1 || { rm -f "$OUT/w4a16_sm$a.o"; exit 1; }
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
build "$OUT/qgemm_fused.o" native/cpu/qgemm_fused.cpp native/include/tachyon/*.h
build "$OUT/qgemm_ref.o" native/cpu/ref/qgemm_ref.cpp native/cpu/ref/*.h native/include/tachyon/*.h
build "$OUT/qgemm_fused_ref.o" native/cpu/ref/qgemm_fused_ref.cpp native/cpu/ref/*.h native/include/tachyon/*.h
build "$OUT/w4a16_test.o" native/tests/cuemu/w4a16_test.cpp native/tests/cuemu/check.h native/cpu/ref/*.h "${HDRS[@]}"
$CXX -rdynamic -o "$OUT/w4a16_test" "$OUT/w4a16_test.o" "$OUT/quant.o" "$OUT/qgemm_fused.o" "$OUT/qgemm_ref.o" \
  "$OUT/qgemm_fused_ref.o" "$OUT/cuemu.o" -lpthread -ldl
echo "g++ build: $(( $(date +%s) - t0 )) s"
status=0
"$OUT/w4a16_test" "$@" || status=1
if [ ${#NV[@]} -gt 0 ]; then
  if wait "${NV[0]}"; then
    cat "$OUT/ptxas_sm80.log" "$OUT/ptxas_sm89.log" "$OUT/ptxas_sm90.log" > "$OUT/ptxas.log"
    echo "nvcc -arch=sm_80 / sm_89 / sm_90 -c w4a16_nvcc.cu: OK (log: $OUT/ptxas.log)"
    # One line per kernel and arch: registers, spill stores/loads, stack, static shared memory.
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
    # Kernel names: w4a16_kernel<T, W4Tile<NT, WN, WK, STAGES, GEMV>, KIND, G, GROUPED, BUG>
    cut -f7 "$OUT/ptxas_raw.tsv" | $DEMANGLE | sed -E 's/ty::cuda:://g; s/\(.*//; s/__nv_bfloat16/bf16/g; s/__half/f16/g' > "$OUT/ptxas_names.txt"
    paste <(cut -f1-6 "$OUT/ptxas_raw.tsv") "$OUT/ptxas_names.txt" | sort -t$'\t' -k7,7 -k1,1 > "$OUT/ptxas_summary.tsv"
    if [ "${1:-}" = "-v" ]; then
      echo "ptxas (-Xptxas -v): arch regs spill-stores spill-loads stack smem kernel"
      awk -F'\t' '{ printf "  %-6s %4s %5s %5s %5s %6s  %s\n", $1, $2, $3, $4, $5, $6, $7 }' "$OUT/ptxas_summary.tsv"
    fi
    # Per block shape and arch: register range over the 14 format/dtype variants (plain, grouped).
    echo "ptxas per block shape (registers min-max over dtypes x formats; spills; stack):"
    awk -F'\t' '{ n = $7; shape = n; sub(/^[^<]*<[^,]*, */, "", shape); sub(/>.*/, ">", shape)
                  kind = (n ~ /, true, 0>$/ || n ~ /, true, [0-9]>$/) ? "grouped" : "plain"
                  split(n, parts, ", "); grp = parts[length(parts) - 1]; kind = (grp == "true") ? "grouped" : "plain"
                  key = $1 " " kind " " shape
                  if (!(key in lo) || $2 < lo[key]) lo[key] = $2; if ($2 > hi[key]) hi[key] = $2
                  sp[key] += $3 + $4; if ($5 > stk[key]) stk[key] = $5; cnt[key]++ }
         END { for (k in lo) printf "  %-44s regs %3d-%3d  spills %d  stack %d  (%d kernels)\n", k, lo[k], hi[k], sp[k], stk[k], cnt[k] }' \
         "$OUT/ptxas_summary.tsv" | sort
    awk -F'\t' '{ n++; if ($2 > mx) mx = $2; if ($3 + $4 > 0) sp++; if ($5 > 0) st++ } END {
      printf "ptxas summary: %d kernel builds, max %d registers, %d with spills, %d with a stack frame\n", n, mx, sp, st
      exit (sp > 0) }' "$OUT/ptxas_summary.tsv" || { echo "a W4A16 kernel spills"; status=1; }
  else
    echo "nvcc compile check FAILED:"; cat "$OUT"/ptxas_sm*.log | grep -v "^ptxas info" | head -50; status=1
  fi
fi
echo "total: $(( $(date +%s) - t0 )) s"
exit $status
