#!/usr/bin/env bash
# Builds and runs the quantized-GEMM benchmark (native/tests/qgemm_bench.cpp).
# Usage: native/tests/qgemm_bench.sh [--threads N] [--isa scalar|avx2|avx512|best]
#        [--fmt NAME,..] [--m 1,4,16,64,512] [--shapes 4096x4096,..] [--time SECONDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${TMPDIR:-/tmp}/tachyon-qgemm-bench
mkdir -p "$OUT"
CXX=${CXX:-g++}
COMMON=(-O3 -std=c++17 -fPIC -fno-math-errno -Wno-psabi -Inative/include -Inative/cpu)
AVX2=(-mavx2 -mfma -mf16c -mbmi2)
AVX512=("${AVX2[@]}" -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -mavx512bf16 -mavx512vbmi)
pids=()
$CXX "${COMMON[@]}" -DTY_ISA=scalar -c native/cpu/kernels/qgemm.cpp -o "$OUT/qgemm_scalar.o" & pids+=($!)
$CXX "${COMMON[@]}" -DTY_ISA=avx2 "${AVX2[@]}" -c native/cpu/kernels/qgemm.cpp -o "$OUT/qgemm_avx2.o" & pids+=($!)
$CXX "${COMMON[@]}" -DTY_ISA=avx512 "${AVX512[@]}" -c native/cpu/kernels/qgemm.cpp -o "$OUT/qgemm_avx512.o" & pids+=($!)
$CXX "${COMMON[@]}" -c native/cpu/quant.cpp -o "$OUT/quant.o" & pids+=($!)
$CXX "${COMMON[@]}" -c native/tests/qgemm_bench.cpp -o "$OUT/qgemm_bench.o" & pids+=($!)
for p in "${pids[@]}"; do wait "$p"; done
$CXX -o "$OUT/qgemm_bench" "$OUT"/qgemm_bench.o "$OUT"/quant.o "$OUT"/qgemm_scalar.o "$OUT"/qgemm_avx2.o "$OUT"/qgemm_avx512.o -lpthread
"$OUT/qgemm_bench" "$@"
