// Compile-only check: every CUDA op kernel (native/cuda/kernels/*.cuh) builds with nvcc for real
// GPUs. Calling each launch helper instantiates every kernel variant it can launch, so
// `nvcc -Xptxas -v` reports registers and spills for all of them (native/tests/cuemu/ops_run.sh).
#include "../../cuda/kernels/elementwise.cuh"
#include "../../cuda/kernels/embedding.cuh"
#include "../../cuda/kernels/gemm_f16.cuh"
#include "../../cuda/kernels/rmsnorm.cuh"
#include "../../cuda/kernels/rope.cuh"
#include "../../cuda/kernels/softmax.cuh"

namespace ty {
namespace cuda {
Status ops_nvcc_instantiate(const BinaryArgs& b, const SiluMulArgs& sm, const RmsNormArgs& rn, const RopeArgs& ro,
                            const SoftmaxArgs& so, const EmbeddingArgs& e, unsigned long long* bad, const GemmArgs& g,
                            GemmTileChoice tile, stream_t s) {
  Status r;
  for (const Status& st : {binary(b, s), silu_mul(sm, s), rms_norm(rn, s), rope(ro, s), softmax(so, s), embedding(e, bad, s),
                           gemm(g, s, {}, tile)})
    if (!st.ok && r.ok) r = st;
  return r;
}
}  // namespace cuda
}  // namespace ty
