#!/usr/bin/env bash
# Builds and runs the CUDA op kernel tests (native/tests/cuemu/ops_test.cpp: elementwise, rmsnorm,
# rope, softmax, embedding, f16/bf16 tensor-core GEMM) on cuemu with g++ -O2 under the forward and
# reverse schedules, and compiles the same kernels with nvcc for $ARCHS (default sm_80, sm_89,
# sm_90) with `-Xptxas -v` in the background: the full log goes to $OUT/ptxas.log and a per-kernel
# register / spill / shared-memory summary is printed (compile only; skipped without nvcc). Objects
# are reused while their sources are unchanged. Shared plumbing: lib.sh.
# Usage: native/tests/cuemu/ops_run.sh [--quick] [-v]   (--quick is accepted and ignored)
# Exit status: non-zero on any failure (a test, a build, the nvcc compile, or a kernel that spills).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cuemu_init ops "op kernel tests"
HDRS=(native/cuemu/*.h native/cuemu/*.cuh native/cuda/kernels/*.cuh native/include/tachyon/*.h)
REF=(native/cpu/ref/*.h native/include/tachyon/*.h)
nvcc_start native/tests/cuemu/ops_nvcc.cu "${HDRS[@]}"
build "$OUT/cuemu.o" native/cuemu/cuemu.cpp native/cuemu/cuemu.h
build "$OUT/small_ops_ref.o" native/cpu/ref/small_ops_ref.cpp "${REF[@]}"
build "$OUT/gemm_ref.o" native/cpu/ref/gemm_ref.cpp "${REF[@]}"
build "$OUT/ops_test.o" native/tests/cuemu/ops_test.cpp native/tests/cuemu/check.h native/cpu/ref/*.h "${HDRS[@]}"
link "$OUT/ops_test" "$OUT/ops_test.o" "$OUT/small_ops_ref.o" "$OUT/gemm_ref.o" "$OUT/cuemu.o"
run_tests "$OUT/ops_test" "$@"
nvcc_finish
cuemu_exit
