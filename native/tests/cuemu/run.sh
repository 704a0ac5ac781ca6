#!/usr/bin/env bash
# Builds and runs the cuemu tests (native/tests/cuemu/cuemu_test.cpp) with g++ -O2, and checks that
# the same kernels compile with nvcc for sm_80 and sm_89 (compile only; skipped without nvcc).
# Usage: native/tests/cuemu/run.sh [-v]     (-v prints every checker report)
# Exit status: non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=${TMPDIR:-/tmp}/tachyon-cuemu-test
mkdir -p "$OUT"
CXX=${CXX:-g++}
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
NVCC=${NVCC:-$CUDA_HOME/bin/nvcc}
if [ ! -f "$CUDA_HOME/include/cuda_fp16.h" ]; then
  echo "cuemu tests need the CUDA headers (cuda_fp16.h) under \$CUDA_HOME/include; not found: SKIPPED"
  exit 0
fi
FLAGS=(-O2 -std=c++17 -Wall -Wextra -Wno-unused-parameter -isystem "$CUDA_HOME/include" -Inative)
pids=()
$CXX "${FLAGS[@]}" -c native/cuemu/cuemu.cpp -o "$OUT/cuemu.o" & pids+=($!)
$CXX "${FLAGS[@]}" -c native/tests/cuemu/cuemu_test.cpp -o "$OUT/cuemu_test.o" & pids+=($!)
NV=()
if [ -x "$NVCC" ] || command -v "$NVCC" >/dev/null 2>&1; then
  # Explicit archs as in the addon build: sm_80 (no e4m3 mma: traps) and sm_89 (e4m3).
  ( "$NVCC" -std=c++17 -arch=sm_80 -c native/tests/cuemu/kernels_nvcc.cu -o "$OUT/k80.o" &&
    "$NVCC" -std=c++17 -arch=sm_89 -c native/tests/cuemu/kernels_nvcc.cu -o "$OUT/k89.o" ) > "$OUT/nvcc.log" 2>&1 &
  NV=($!)
else
  echo "nvcc not found: the nvcc compile check is SKIPPED"
fi
for p in "${pids[@]}"; do wait "$p"; done
$CXX -rdynamic -o "$OUT/cuemu_test" "$OUT/cuemu_test.o" "$OUT/cuemu.o" -lpthread -ldl
status=0
"$OUT/cuemu_test" "$@" || status=1
if [ ${#NV[@]} -gt 0 ]; then
  if wait "${NV[0]}"; then
    echo "nvcc -arch=sm_80 / sm_89 -c kernels_nvcc.cu: OK"
  else
    echo "nvcc compile check FAILED:"; cat "$OUT/nvcc.log"; status=1
  fi
fi
exit $status
