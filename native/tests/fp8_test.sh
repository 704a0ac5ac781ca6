#!/usr/bin/env bash
# Builds and runs the FP8 test (native/tests/fp8_test.cpp) with g++ directly: the kernel
# file is compiled once per ISA variant, as the addon build does.
# Usage: native/tests/fp8_test.sh [--quick]          Exit status: non-zero on any mismatch.
#        native/tests/fp8_test.sh --bench [options]  benchmark (see fp8_test.cpp: bench())
# The conversions are compared bit for bit with CUDA's host implementation when
# ${CUDA_HOME:-/usr/local/cuda}/include/cuda_fp8.h exists (otherwise that part is skipped
# and the run says so). The AVX-512 variant runs natively on AVX-512 CPUs; otherwise it
# runs under SIMDe emulation if /usr/include/simde exists, else it is only compiled.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${TMPDIR:-/tmp}/tachyon-fp8-test
mkdir -p "$OUT"
CXX=${CXX:-g++}
COMMON=(-O3 -std=c++17 -fPIC -fno-math-errno -Wall -Wextra -Wno-psabi -Inative/include -Inative/cpu)
AVX2=(-mavx2 -mfma -mf16c -mbmi2)
AVX512=("${AVX2[@]}" -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -mavx512bf16 -mavx512vbmi)
SRC=native/cpu/kernels/fp8gemm.cpp
CUDA_INC=${CUDA_HOME:-/usr/local/cuda}/include

pids=()
$CXX "${COMMON[@]}" -DTY_ISA=scalar -c $SRC -o "$OUT/fp8gemm_scalar.o" & pids+=($!)
$CXX "${COMMON[@]}" -DTY_ISA=avx2 "${AVX2[@]}" -c $SRC -o "$OUT/fp8gemm_avx2.o" & pids+=($!)
# The real AVX-512 object is always built (it must compile with the real intrinsics).
$CXX "${COMMON[@]}" -Wno-maybe-uninitialized -DTY_ISA=avx512 "${AVX512[@]}" -c $SRC -o "$OUT/fp8gemm_avx512.o" & pids+=($!)
$CXX "${COMMON[@]}" -c native/cpu/fp8.cpp -o "$OUT/fp8.o" & pids+=($!)
for p in "${pids[@]}"; do wait "$p"; done
pids=()
$CXX "${COMMON[@]}" -c native/cpu/ref/fp8gemm_ref.cpp -o "$OUT/fp8gemm_ref.o" & pids+=($!)

EMU=()
AVX512_OBJ="$OUT/fp8gemm_avx512.o"
if grep -q avx512bw /proc/cpuinfo 2>/dev/null; then
  echo "avx512: native"
elif [ "${1:-}" != "--bench" ] && [ -f /usr/include/simde/x86/avx512.h ]; then
  echo "avx512: CPU lacks AVX-512, running the AVX-512 variant under SIMDe emulation"
  $CXX "${COMMON[@]}" -DTY_ISA=avx512 "${AVX2[@]}" -include native/tests/qgemm_simde_shim.h \
    -c $SRC -o "$OUT/fp8gemm_avx512_emu.o" & pids+=($!)
  AVX512_OBJ="$OUT/fp8gemm_avx512_emu.o"
  EMU=(-DTY_AVX512_EMULATED)
else
  echo "avx512: CPU lacks AVX-512 (and SIMDe is not installed, or benchmarking): AVX-512 path compiled, NOT run"
fi
CUDA=()
if [ -f "$CUDA_INC/cuda_fp8.h" ]; then
  CUDA=(-DTY_CUDA_FP8 -isystem "$CUDA_INC")
else
  echo "cuda_fp8.h not found under $CUDA_INC: the bit-exact comparison with CUDA is SKIPPED"
fi
$CXX "${COMMON[@]}" "${EMU[@]}" "${CUDA[@]}" -c native/tests/fp8_test.cpp -o "$OUT/fp8_test.o" & pids+=($!)
for p in "${pids[@]}"; do wait "$p"; done
$CXX -o "$OUT/fp8_test" "$OUT/fp8_test.o" "$OUT/fp8.o" "$OUT/fp8gemm_ref.o" \
  "$OUT/fp8gemm_scalar.o" "$OUT/fp8gemm_avx2.o" "$AVX512_OBJ" -lpthread
"$OUT/fp8_test" "$@"
