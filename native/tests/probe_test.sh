#!/usr/bin/env bash
# Builds and runs the roofline probe test (native/tests/probe_test.cpp) with g++ directly:
# native/cpu/kernels/probe.cpp is compiled once per ISA variant, with the flags of
# native/sources.json. Extra arguments go to the driver (e.g. --quick, --dram-mib 512).
# Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/../.."

CXX=${CXX:-g++}
OUT=${TMPDIR:-/tmp}/tachyon_probe_test
mkdir -p "$OUT"
COMMON=(-O3 -std=c++17 -fPIC -fno-math-errno -Inative/include -Inative/cpu -Wall -Wextra)
AVX2=(-mavx2 -mfma -mf16c -mbmi2)
AVX512=("${AVX2[@]}" -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -mavx512bf16
  -mavx512vbmi)
SRC=native/cpu/kernels/probe.cpp

"$CXX" "${COMMON[@]}" -DTY_ISA=scalar -c "$SRC" -o "$OUT/probe_scalar.o"
"$CXX" "${COMMON[@]}" "${AVX2[@]}" -DTY_ISA=avx2 -c "$SRC" -o "$OUT/probe_avx2.o"
"$CXX" "${COMMON[@]}" "${AVX512[@]}" -DTY_ISA=avx512 -c "$SRC" -o "$OUT/probe_avx512.o"
"$CXX" "${COMMON[@]}" -c native/tests/probe_test.cpp -o "$OUT/probe_test.o"
"$CXX" -pthread "$OUT/probe_test.o" "$OUT/probe_scalar.o" "$OUT/probe_avx2.o" \
  "$OUT/probe_avx512.o" -o "$OUT/probe_test"

"$OUT/probe_test" "$@"
