#!/usr/bin/env bash
# Builds and runs the paged-attention test (native/tests/attention_test.cpp) with g++ directly:
# the kernel file is compiled once per ISA variant, as the addon build does.
# Usage: native/tests/attention_test.sh [--quick] [--bench [--threads N]]
# Exit status: non-zero on any mismatch.
# The AVX-512 variant runs natively when the CPU has AVX-512 (F/BW/VL/DQ); otherwise it runs
# under SIMDe emulation if /usr/include/simde exists (apt-get install libsimde-dev), else it
# is only compiled, and the run says so.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${TMPDIR:-/tmp}/tachyon-attention-test
mkdir -p "$OUT"
CXX=${CXX:-g++}
COMMON=(-O3 -std=c++17 -fPIC -fno-math-errno -Wall -Wextra -Wno-psabi -Inative/include -Inative/cpu)
AVX2=(-mavx2 -mfma -mf16c -mbmi2)
AVX512=("${AVX2[@]}" -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -mavx512bf16 -mavx512vbmi)
SRC=native/cpu/kernels/attention.cpp

pids=()
$CXX "${COMMON[@]}" -DTY_ISA=scalar -c $SRC -o "$OUT/att_scalar.o" & pids+=($!)
$CXX "${COMMON[@]}" -DTY_ISA=avx2 "${AVX2[@]}" -c $SRC -o "$OUT/att_avx2.o" & pids+=($!)
# The real AVX-512 object is always built (it must compile with the real intrinsics).
$CXX "${COMMON[@]}" -DTY_ISA=avx512 "${AVX512[@]}" -c $SRC -o "$OUT/att_avx512.o" & pids+=($!)
$CXX "${COMMON[@]}" -c native/cpu/attention.cpp -o "$OUT/attention.o" & pids+=($!)
$CXX "${COMMON[@]/-O3/-O2}" -c native/cpu/ref/attention_ref.cpp -o "$OUT/attention_ref.o" & pids+=($!)
EMU=()
AVX512_OBJ="$OUT/att_avx512.o"
has512=1
for f in avx512f avx512bw avx512vl avx512dq; do grep -qw "$f" /proc/cpuinfo 2>/dev/null || has512=0; done
if [ "$has512" = 1 ]; then
  echo "avx512: native"
elif [ -f /usr/include/simde/x86/avx512.h ]; then
  echo "avx512: CPU lacks AVX-512, running the AVX-512 variant under SIMDe emulation"
  $CXX "${COMMON[@]}" -DTY_ISA=avx512 "${AVX2[@]}" -include native/tests/qgemm_simde_shim.h \
    -c $SRC -o "$OUT/att_avx512_emu.o" & pids+=($!)
  AVX512_OBJ="$OUT/att_avx512_emu.o"
  EMU=(-DTY_AVX512_EMULATED)
else
  echo "avx512: CPU lacks AVX-512 and SIMDe is not installed: AVX-512 path compiled, NOT run"
  EMU=(-DTY_AVX512_EMULATED -DTY_AVX512_SKIP)
  AVX512_OBJ="$OUT/att_avx512.o"
fi
$CXX "${COMMON[@]/-O3/-O1}" "${EMU[@]}" -c native/tests/attention_test.cpp -o "$OUT/attention_test.o" & pids+=($!)
fail=0
for p in "${pids[@]}"; do wait "$p" || fail=1; done
if [ "$fail" != 0 ]; then echo "attention_test: build failed" >&2; exit 1; fi
$CXX -o "$OUT/attention_test" "$OUT/attention_test.o" "$OUT/attention.o" "$OUT/attention_ref.o" \
  "$OUT/att_scalar.o" "$OUT/att_avx2.o" "$AVX512_OBJ" -lpthread
"$OUT/attention_test" "$@"
