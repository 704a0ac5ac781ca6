#!/usr/bin/env bash
# Builds and runs the small-op kernel tests (native/tests/small_ops_test.cpp): each
# kernel file compiled three times (scalar / avx2 / avx512, flags as in
# native/sources.json), the double-precision references, and the driver, with g++.
# On a CPU without AVX-512 the avx512 variant is built against a scalar emulation of
# its intrinsics (native/tests/avx512_emu.h) so its code path is still exercised.
# Extra arguments go to the driver (--exhaustive, --bench, --threads N).
# Exits non-zero on any mismatch.
set -euo pipefail
cd "$(dirname "$0")/../.."
CXX=${CXX:-g++}
OUT=${TY_TEST_OUT:-/tmp/tachyon-small-ops-test}
mkdir -p "$OUT"
COMMON="-O3 -std=c++17 -fPIC -fno-math-errno -Wall -Wextra -Inative/include -Inative/cpu"
AVX2="-mavx2 -mfma -mf16c -mbmi2"
AVX512="$AVX2 -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -mavx512bf16 -mavx512vbmi"
KERNELS="elementwise norm rope softmax embedding"

has_avx512=1
for f in avx512f avx512bw avx512vl avx512dq avx512_vnni avx512_bf16 avx512vbmi; do
  grep -qw "$f" /proc/cpuinfo 2>/dev/null || has_avx512=0
done
if [ "$has_avx512" = 1 ]; then
  F512="$AVX512"; DRIVER_DEF=""
else
  echo "note: no AVX-512 on this CPU: the avx512 variant runs under native/tests/avx512_emu.h"
  F512="$AVX2 -DTY_AVX512_EMU -Inative/tests"; DRIVER_DEF="-DTY_TEST_AVX512_EMU"
fi

rm -f "$OUT"/*.o "$OUT/small_ops_test"
objs=()
pids=()
bg() { "$@" & pids+=($!); }
build() {  # isa flags
  local isa=$1; shift
  for k in $KERNELS; do
    bg $CXX $COMMON -DTY_ISA=$isa "$@" -c native/cpu/kernels/$k.cpp -o "$OUT/${k}_$isa.o"
    objs+=("$OUT/${k}_$isa.o")
  done
}
build scalar
build avx2 $AVX2
build avx512 $F512
if [ "$has_avx512" = 0 ]; then  # still check that the real AVX-512 build compiles
  for k in $KERNELS; do
    bg $CXX $COMMON -DTY_ISA=avx512 $AVX512 -c native/cpu/kernels/$k.cpp -o "$OUT/${k}_avx512_native.o"
  done
fi
bg $CXX ${COMMON/-O3/-O2} -c native/cpu/ref/small_ops_ref.cpp -o "$OUT/small_ops_ref.o"
bg $CXX ${COMMON/-O3/-O1} $DRIVER_DEF -c native/tests/small_ops_test.cpp -o "$OUT/small_ops_test.o"
fail=0
for p in "${pids[@]}"; do wait "$p" || fail=1; done
if [ "$fail" != 0 ]; then echo "small_ops_test: build failed" >&2; exit 1; fi
$CXX -o "$OUT/small_ops_test" "$OUT/small_ops_test.o" "$OUT/small_ops_ref.o" "${objs[@]}" -pthread
"$OUT/small_ops_test" "$@"
