// Compile-only check: the MoE data-movement and sampling kernels (native/cuda/kernels/moe.cuh,
// sampling.cuh) build with nvcc for real GPUs. Calling each launch helper instantiates every
// kernel variant it can launch, so `nvcc -Xptxas -v` reports registers and spills for all of them
// (native/tests/cuemu/moe_sampling_run.sh).
#include "../../cuda/kernels/moe.cuh"
#include "../../cuda/kernels/sampling.cuh"

namespace ty {
namespace cuda {
Status moe_sampling_nvcc_instantiate(const MoePermuteArgs& p, const MoeGatherArgs& g, const MoeCombineArgs& c, const SampleArgs& s,
                                     const ArgmaxArgs& a, const LogitAdjustArgs& l, unsigned long long* err, stream_t st) {
  Status r;
  for (const Status& x : {moe_permute(p, err, st), moe_gather(g, err, st), moe_combine(c, err, st), sample(s, err, st), argmax(a, err, st),
                          logit_adjust(l, err, st)})
    if (!x.ok && r.ok) r = x;
  return r;
}
}  // namespace cuda
}  // namespace ty
