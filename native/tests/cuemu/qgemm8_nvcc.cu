// Compile-only check: the 8-bit GEMM kernels (native/cuda/kernels/gemm_int8.cuh, gemm_fp8.cuh)
// build with nvcc for real GPUs. Calling each launch helper instantiates every kernel variant it
// can launch, so `nvcc -Xptxas -v` reports registers, spills and shared memory for all of them
// (native/tests/cuemu/qgemm8_run.sh).
#include "../../cuda/kernels/gemm_fp8.cuh"

namespace ty {
namespace cuda {
Status qgemm8_nvcc_instantiate(const QGemmPlainArgs& a, const Int8GemmArgs& ai, const QGroupedPlainArgs& ag, const Fp8GemmPlainArgs& f,
                               const Fp8KernelArgs& fk, const Fp8GroupedPlainArgs& fg, QTileChoice tile, Fp8Path path, stream_t s,
                               const QDevice& dev) {
  Status r;
  for (const Status& st : {qgemm_int8(a, s, dev, tile), gemm_int8(ai, s, dev, tile), qgemm_grouped_int8(ag, s, dev, tile),
                           fp8gemm(f, s, dev, tile, path), fp8gemm_w8a8_mma(fk, s, dev, tile), fp8gemm_w8a16(fk, s, dev, tile),
                           fp8gemm_grouped(fg, s, dev, tile, path)})
    if (!st.ok && r.ok) r = st;
  return r;
}
}  // namespace cuda
}  // namespace ty
