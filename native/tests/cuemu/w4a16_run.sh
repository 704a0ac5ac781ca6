#!/usr/bin/env bash
# Builds and runs the W4A16 kernel tests (native/tests/cuemu/w4a16_test.cpp) on cuemu with g++ -O2,
# and compiles the same kernels with nvcc for $ARCHS (default sm_80, sm_89, sm_90) with
# `-Xptxas -v` in the background: the full log goes to $OUT/ptxas.log and a per-block-shape
# register / spill / stack summary is printed (the per-kernel table too with -v; compile only;
# skipped without nvcc). Objects are reused while their sources are unchanged. Shared plumbing:
# lib.sh.
# Usage: native/tests/cuemu/w4a16_run.sh [--quick] [-v]   (--quick is accepted and ignored)
# Exit status: non-zero on any failure (a test, a build, the nvcc compile, or a kernel that spills).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cuemu_init w4a16 "W4A16 kernel tests"
HDRS=(native/cuemu/*.h native/cuemu/*.cuh native/cuda/kernels/common.cuh native/cuda/kernels/gemm_w4a16.cuh
      native/include/tachyon/*.h)
REF=(native/cpu/ref/*.h native/include/tachyon/*.h)
# Kernel names: w4a16_kernel<T, W4Tile<NT, WN, WK, STAGES, GEMV, MINB>, ASYM, GROUPED, BUG>; the
# per-kernel table (every dtype x format variant of every shape) is printed with -v only.
if [ "${1:-}" != -v ]; then PTXAS_TABLE=0; fi
ptxas_extra() {  # per block shape and arch: register range over the dtype x format variants
  echo "ptxas per block shape (registers min-max over dtypes x formats; spills; stack):"
  awk -F'\t' '{ n = $7; shape = n; sub(/^[^<]*<[^,]*, */, "", shape); sub(/>.*/, ">", shape)
                split(n, parts, ", "); kind = (parts[length(parts) - 1] == "true") ? "grouped" : "plain"
                key = $1 " " kind " " shape
                if (!(key in lo) || $2 < lo[key]) lo[key] = $2; if ($2 > hi[key]) hi[key] = $2
                sp[key] += $3 + $4; if ($5 > stk[key]) stk[key] = $5; cnt[key]++ }
       END { for (k in lo) printf "  %-44s regs %3d-%3d  spills %d  stack %d  (%d kernels)\n", k, lo[k], hi[k], sp[k], stk[k], cnt[k] }' \
       "$1" | sort
}
nvcc_start native/tests/cuemu/w4a16_nvcc.cu "${HDRS[@]}"
build "$OUT/cuemu.o" native/cuemu/cuemu.cpp native/cuemu/cuemu.h
build "$OUT/quant.o" native/cpu/quant.cpp native/include/tachyon/*.h
build "$OUT/qgemm_fused.o" native/cpu/qgemm_fused.cpp native/include/tachyon/*.h
build "$OUT/qgemm_ref.o" native/cpu/ref/qgemm_ref.cpp "${REF[@]}"
build "$OUT/qgemm_fused_ref.o" native/cpu/ref/qgemm_fused_ref.cpp "${REF[@]}"
build "$OUT/w4a16_test.o" native/tests/cuemu/w4a16_test.cpp native/tests/cuemu/check.h native/cpu/ref/*.h "${HDRS[@]}"
link "$OUT/w4a16_test" "$OUT/w4a16_test.o" "$OUT/quant.o" "$OUT/qgemm_fused.o" "$OUT/qgemm_ref.o" \
  "$OUT/qgemm_fused_ref.o" "$OUT/cuemu.o"
run_tests "$OUT/w4a16_test" "$@"
nvcc_finish
cuemu_exit
