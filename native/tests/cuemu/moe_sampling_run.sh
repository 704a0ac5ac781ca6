#!/usr/bin/env bash
# Builds and runs the MoE permute/gather/combine and sampling kernel tests
# (native/tests/cuemu/moe_sampling_test.cpp) on cuemu with g++ -O2 (forward and reverse schedules),
# and compiles the same kernels with nvcc for $ARCHS (default sm_80, sm_89, sm_90) with
# `-Xptxas -v` in the background: the full log goes to $OUT/ptxas.log and a per-kernel register /
# spill summary is printed (compile only; skipped without nvcc). Objects are reused while their
# sources are unchanged. SKIPPED (exit 0) without the CUDA headers. Shared plumbing: lib.sh.
# Usage: native/tests/cuemu/moe_sampling_run.sh [--quick] [-v] [-1]
#        --quick (or -1): the forward schedule only (about half the time); -v: verbose checks
# Exit status: non-zero on any failure (a test, a build, the nvcc compile, or a kernel that spills).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cuemu_init moe-sampling "MoE / sampling kernel tests"
HDRS=(native/cuemu/*.h native/cuemu/*.cuh native/cuda/kernels/common.cuh native/cuda/kernels/moe.cuh
      native/cuda/kernels/sampling.cuh native/include/tachyon/*.h)
ARGS=("$@")
if [ "$QUICK" = 1 ]; then ARGS+=(-1); fi
nvcc_start native/tests/cuemu/moe_sampling_nvcc.cu "${HDRS[@]}"
build "$OUT/cuemu.o" native/cuemu/cuemu.cpp native/cuemu/cuemu.h
build "$OUT/moe_sampling_test.o" native/tests/cuemu/moe_sampling_test.cpp native/tests/cuemu/check.h "${HDRS[@]}"
link "$OUT/moe_sampling_test" "$OUT/moe_sampling_test.o" "$OUT/cuemu.o"
run_tests "$OUT/moe_sampling_test" "${ARGS[@]}"
nvcc_finish
cuemu_exit
