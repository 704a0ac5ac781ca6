#!/usr/bin/env bash
# Builds and runs the fused SwiGLU / grouped (MoE) quantized-GEMM test
# (native/tests/qgemm_fused_test.cpp) with g++ directly: the kernel file is compiled once per
# ISA variant, as the addon build does.
# Usage: native/tests/qgemm_fused_test.sh [--quick] [--bench]   Exit status: non-zero on any mismatch.
# --bench: fused vs unfused SwiGLU and grouped timings (medians) on the best native ISA.
# The AVX-512 variant runs natively when the CPU has AVX-512 VNNI; otherwise it runs under
# SIMDe emulation if /usr/include/simde exists (apt-get install libsimde-dev), else it is
# only compiled, and the run says it was skipped.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${TMPDIR:-/tmp}/tachyon-qgemm-fused-test
mkdir -p "$OUT"
CXX=${CXX:-g++}
COMMON=(-O3 -std=c++17 -fPIC -fno-math-errno -Wall -Wextra -Wno-psabi -Inative/include -Inative/cpu)
AVX2=(-mavx2 -mfma -mf16c -mbmi2)
AVX512=("${AVX2[@]}" -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -mavx512bf16 -mavx512vbmi)

pids=()
$CXX "${COMMON[@]}" -DTY_ISA=scalar -c native/cpu/kernels/qgemm.cpp -o "$OUT/qgemm_scalar.o" & pids+=($!)
$CXX "${COMMON[@]}" -DTY_ISA=avx2 "${AVX2[@]}" -c native/cpu/kernels/qgemm.cpp -o "$OUT/qgemm_avx2.o" & pids+=($!)
# The real AVX-512 object is always built (it must compile with the real intrinsics).
$CXX "${COMMON[@]}" -Wno-maybe-uninitialized -DTY_ISA=avx512 "${AVX512[@]}" -c native/cpu/kernels/qgemm.cpp -o "$OUT/qgemm_avx512.o" & pids+=($!)
for p in "${pids[@]}"; do wait "$p"; done
pids=()
$CXX "${COMMON[@]}" -c native/cpu/quant.cpp -o "$OUT/quant.o" & pids+=($!)
$CXX "${COMMON[@]}" -c native/cpu/ref/qgemm_ref.cpp -o "$OUT/qgemm_ref.o" & pids+=($!)
$CXX "${COMMON[@]}" -c native/cpu/qgemm_fused.cpp -o "$OUT/qgemm_fused.o" & pids+=($!)
$CXX "${COMMON[@]}" -c native/cpu/ref/qgemm_fused_ref.cpp -o "$OUT/qgemm_fused_ref.o" & pids+=($!)

EMU=()
AVX512_OBJ="$OUT/qgemm_avx512.o"
if grep -q avx512vnni /proc/cpuinfo 2>/dev/null; then
  echo "avx512: native"
elif [ -f /usr/include/simde/x86/avx512.h ]; then
  echo "avx512: CPU lacks AVX-512 VNNI, running the AVX-512 variant under SIMDe emulation"
  $CXX "${COMMON[@]}" -DTY_ISA=avx512 "${AVX2[@]}" -include native/tests/qgemm_simde_shim.h \
    -c native/cpu/kernels/qgemm.cpp -o "$OUT/qgemm_avx512_emu.o" & pids+=($!)
  AVX512_OBJ="$OUT/qgemm_avx512_emu.o"
  EMU=(-DTY_AVX512_EMULATED)
else
  echo "avx512: CPU lacks AVX-512 VNNI and SIMDe is not installed: AVX-512 path compiled, NOT run"
fi
$CXX "${COMMON[@]}" "${EMU[@]}" -c native/tests/qgemm_fused_test.cpp -o "$OUT/qgemm_fused_test.o" & pids+=($!)
for p in "${pids[@]}"; do wait "$p"; done
$CXX -o "$OUT/qgemm_fused_test" "$OUT/qgemm_fused_test.o" "$OUT/quant.o" "$OUT/qgemm_ref.o" \
  "$OUT/qgemm_fused.o" "$OUT/qgemm_fused_ref.o" \
  "$OUT/qgemm_scalar.o" "$OUT/qgemm_avx2.o" "$AVX512_OBJ" -lpthread
"$OUT/qgemm_fused_test" "$@"
