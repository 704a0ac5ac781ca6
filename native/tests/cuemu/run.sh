#!/usr/bin/env bash
# Builds and runs the cuemu self-tests (native/tests/cuemu/cuemu_test.cpp) with g++ -O2, and checks
# that the same test kernels compile with nvcc for $ARCHS (default sm_80, sm_89, sm_90), with a
# ptxas register / spill summary (compile only; skipped without nvcc; a spill is reported, not
# fatal: see below). Shared plumbing (OUT, NVCC, ARCHS, caching, SKIP without the CUDA headers):
# lib.sh.
# Usage: native/tests/cuemu/run.sh [--quick] [-v]   (-v prints every checker report; --quick is
#        accepted and ignored: the self-tests take seconds)
# Exit status: non-zero on any failure (a test, a build, or the nvcc compile).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cuemu_init test "cuemu tests"
# These are the emulator's own test kernels (kernels.cuh), not kernels the addon runs: the nvcc
# build is a compile check of cuemu.h / ptx.cuh for real GPUs, so a spill is reported (one
# summary line; the per-kernel table with -v) but does not fail the script. The product kernels'
# drivers (ops_run.sh, attn_run.sh, ...) fail on any spill.
PTXAS_SPILLS_FAIL=0
if [ "${1:-}" != -v ]; then PTXAS_TABLE=0; fi
D=native/tests/cuemu
nvcc_start $D/kernels_nvcc.cu $D/kernels.cuh native/cuemu/*.h native/cuemu/*.cuh
build "$OUT/cuemu.o" native/cuemu/cuemu.cpp native/cuemu/cuemu.h
build "$OUT/cuemu_test.o" $D/cuemu_test.cpp $D/check.h $D/kernels.cuh native/cuemu/*.h native/cuemu/*.cuh
link "$OUT/cuemu_test" "$OUT/cuemu_test.o" "$OUT/cuemu.o"
run_tests "$OUT/cuemu_test" "$@"
nvcc_finish
cuemu_exit
