#!/usr/bin/env bash
# Builds and runs the 8-bit CUDA GEMM tests (native/tests/cuemu/qgemm8_test.cpp: W8A8 int8, FP8
# W8A8 mma / W8A16, grouped MoE, activation quantizers) on cuemu with g++ -O2, under the forward and
# reverse schedules, and compiles the same kernels with nvcc for $ARCHS (default sm_80, sm_89,
# sm_90) with `-Xptxas -v` (in the background, while the tests run): the full log goes to
# $OUT/ptxas.log and a per-kernel register / spill / shared-memory summary is printed (compile
# only; skipped without nvcc). Objects are reused while their sources are unchanged. Shared
# plumbing: lib.sh.
# Usage: native/tests/cuemu/qgemm8_run.sh [--quick] [TEST-NAME-FILTER]   (runs the tests whose
#        name contains the filter; --quick is accepted and ignored)
# Exit status: non-zero on any failure (a test, a build, the nvcc compile, or a kernel that spills).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cuemu_init qgemm8 "qgemm8 tests" cuda_fp8.h
HDRS=(native/cuemu/*.h native/cuemu/*.cuh native/cuda/kernels/common.cuh native/cuda/kernels/gemm_int8.cuh
      native/cuda/kernels/gemm_fp8.cuh native/include/tachyon/*.h)
REF=(native/cpu/ref/*.h native/include/tachyon/*.h)
# Tile names as in gemm_int8.cuh (QTileLarge, ...): large, largeP (the promoting int8 kinds), largeH
# (e4m3 mma, W8A16 block128), small, decode.
PTXAS_SED='s/QTile<128, 128, 64, 2, 4, 3>/large/; s/QTile<128, 128, 64, 4, 4, 3>/largeP/; s/QTile<128, 64, 64, 4, 2, 3>/largeH/;
  s/QTile<64, 64, 64, 2, 2, 3>/small/; s/QTile<16, 32, 256, 1, 4, 4>/decode/'
nvcc_start native/tests/cuemu/qgemm8_nvcc.cu "${HDRS[@]}"
build "$OUT/cuemu.o" native/cuemu/cuemu.cpp native/cuemu/cuemu.h
build "$OUT/quant.o" native/cpu/quant.cpp native/include/tachyon/*.h
build "$OUT/fp8.o" native/cpu/fp8.cpp native/include/tachyon/*.h
build "$OUT/qgemm_ref.o" native/cpu/ref/qgemm_ref.cpp "${REF[@]}"
build "$OUT/qgemm_fused_ref.o" native/cpu/ref/qgemm_fused_ref.cpp "${REF[@]}"
build "$OUT/fp8gemm_ref.o" native/cpu/ref/fp8gemm_ref.cpp "${REF[@]}"
build "$OUT/qgemm8_test.o" native/tests/cuemu/qgemm8_test.cpp native/tests/cuemu/check.h native/cpu/ref/*.h "${HDRS[@]}"
link "$OUT/qgemm8_test" "$OUT/qgemm8_test.o" "$OUT/quant.o" "$OUT/fp8.o" "$OUT/qgemm_ref.o" "$OUT/qgemm_fused_ref.o" \
  "$OUT/fp8gemm_ref.o" "$OUT/cuemu.o"
run_tests "$OUT/qgemm8_test" "$@"
nvcc_finish
cuemu_exit
