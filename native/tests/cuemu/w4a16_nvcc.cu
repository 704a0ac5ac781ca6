// Compile-only check: the W4A16 kernels (native/cuda/kernels/gemm_w4a16.cuh) build with nvcc for
// real GPUs. Calling both launch helpers instantiates every kernel variant they can launch
// (2 activation dtypes x 7 format/group variants x 5 block shapes plain, x 4 grouped), so
// `nvcc -Xptxas -v` reports registers, shared memory and spills for all of them
// (native/tests/cuemu/w4a16_run.sh).
#include "../../cuda/kernels/gemm_w4a16.cuh"

namespace ty {
namespace cuda {
Status w4a16_nvcc_instantiate(const QGemmArgs& g, const QGroupedArgs& q, unsigned long long* err, const W4A16Workspace& ws,
                              stream_t s) {
  Status a = w4a16_gemm(g, ws, s);
  Status b = w4a16_grouped(q, err, ws, s);
  return a.ok ? b : a;
}
}  // namespace cuda
}  // namespace ty
