#!/usr/bin/env bash
# Builds and runs the paged attention / KV cache kernel tests (native/tests/cuemu/attn_test.cpp) on
# cuemu with g++ -O2, under the forward and reverse schedules, linked against the CPU backend's
# scalar attention kernels (the bit-exact oracle for kv_append / copy / swap) and its plan, and
# compiles the same kernels with nvcc for $ARCHS (default sm_80, sm_89, sm_90) with `-Xptxas -v`
# in the background: the full log goes to $OUT/ptxas.log and a per-kernel register / spill /
# shared-memory summary is printed (compile only; skipped without nvcc). Objects are reused while
# their sources are unchanged. Shared plumbing: lib.sh.
# Usage: native/tests/cuemu/attn_run.sh [--quick] [-v]   (--quick is accepted and ignored)
# Exit status: non-zero on any failure (a test, a build, the nvcc compile, or a kernel that
# spills); 0 with SKIPPED when the CUDA headers are missing.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cuemu_init attn "attention kernel tests"
HDRS=(native/cuemu/*.h native/cuemu/*.cuh native/cuda/kernels/common.cuh native/cuda/kernels/attention.cuh
      native/cuda/kernels/kv.cuh native/include/tachyon/*.h)
# The CPU backend's own sources, built as the addon builds them (the scalar ISA variant).
CPUFLAGS=(-O2 -std=c++17 -fPIC -fno-math-errno -Wall -Wextra -Inative/include -Inative/cpu)
SCALAR=("${CPUFLAGS[@]}" -DTY_ISA=scalar)
PTXAS_SED='s/attn:://g; s/\(KvStore\)0/f32/; s/\(KvStore\)1/f16/; s/\(KvStore\)2/bf16/; s/\(KvStore\)3/e4m3/;
  s/\(KvStore\)4/e5m2/; s/\(KvStore\)5/i8/'
PTXAS_LEGEND=("(attn_kernel<compute type, 8-bit cache, padded headDim, stages, bug>; kv_append_kernel<source, cache>;"
              " attn_kernel's shared memory is dynamic: attention.cuh attn::layout)")
nvcc_start native/tests/cuemu/attn_nvcc.cu "${HDRS[@]}"
build "$OUT/cuemu.o" native/cuemu/cuemu.cpp native/cuemu/cuemu.h
build_with CPUFLAGS "$OUT/attention_ref.o" native/cpu/ref/attention_ref.cpp native/cpu/ref/*.h
build_with CPUFLAGS "$OUT/cpu_attention.o" native/cpu/attention.cpp native/include/tachyon/*.h
build_with SCALAR "$OUT/cpu_att_scalar.o" native/cpu/kernels/attention.cpp native/include/tachyon/*.h native/cpu/*.h \
  native/cpu/kernels/act_vec.h
build "$OUT/attn_test.o" native/tests/cuemu/attn_test.cpp native/tests/cuemu/check.h native/cpu/ref/*.h native/cpu/*.h \
  "${HDRS[@]}"
link "$OUT/attn_test" "$OUT/attn_test.o" "$OUT/attention_ref.o" "$OUT/cpu_attention.o" "$OUT/cpu_att_scalar.o" "$OUT/cuemu.o"
run_tests "$OUT/attn_test" "$@"
nvcc_finish
cuemu_exit
