#!/usr/bin/env bash
# Builds and runs the GEMM kernel test (and, with --bench, the benchmark) using g++ directly.
#   native/tests/gemm_test.sh            build + run gemm_test (exit 1 on any mismatch)
#   native/tests/gemm_test.sh --bench    build + run gemm_bench
# Env: GEMM_TEST_ISAS=scalar,avx2,avx512,avx512emu restricts the variants tested.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${TMPDIR:-/tmp}/tachyon_gemm_test"
mkdir -p "$OUT"
CXX="${CXX:-g++}"
COMMON=(-O3 -std=c++17 -fPIC -fno-math-errno -Inative/include -Inative/cpu)
AVX2=(-mavx2 -mfma -mf16c -mbmi2)
AVX512=("${AVX2[@]}" -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -mavx512bf16 -mavx512vbmi)
SRC=native/cpu/kernels/gemm.cpp

pids=()
"$CXX" "${COMMON[@]}" -DTY_ISA=scalar -c "$SRC" -o "$OUT/gemm_scalar.o" & pids+=($!)
"$CXX" "${COMMON[@]}" -DTY_ISA=avx2 "${AVX2[@]}" -c "$SRC" -o "$OUT/gemm_avx2.o" & pids+=($!)
"$CXX" "${COMMON[@]}" -DTY_ISA=avx512 "${AVX512[@]}" -c "$SRC" -o "$OUT/gemm_avx512.o" & pids+=($!)
# The AVX-512 code path over scalar-emulated intrinsics, runnable on any AVX2 host.
"$CXX" "${COMMON[@]}" -DTY_ISA=avx512emu "${AVX2[@]}" -Wno-psabi -include native/tests/gemm_avx512_emu.h \
  -c "$SRC" -o "$OUT/gemm_avx512emu.o" & pids+=($!)
for p in "${pids[@]}"; do wait "$p"; done
OBJS=("$OUT/gemm_scalar.o" "$OUT/gemm_avx2.o" "$OUT/gemm_avx512.o")

if [[ "${1:-}" == "--bench" ]]; then
  "$CXX" "${COMMON[@]}" native/tests/gemm_bench.cpp "${OBJS[@]}" -o "$OUT/gemm_bench" -lpthread
  shift
  exec "$OUT/gemm_bench" "$@"
fi

"$CXX" "${COMMON[@]}" -c native/cpu/ref/gemm_ref.cpp -o "$OUT/gemm_ref.o"
"$CXX" "${COMMON[@]}" native/tests/gemm_test.cpp "${OBJS[@]}" "$OUT/gemm_avx512emu.o" "$OUT/gemm_ref.o" \
  -o "$OUT/gemm_test" -lpthread
"$OUT/gemm_test"
