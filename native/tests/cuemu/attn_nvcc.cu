// Compile-only check: the paged attention and KV cache kernels (native/cuda/kernels/attention.cuh,
// kv.cuh) build with nvcc for real GPUs. Calling each launch helper instantiates every kernel
// variant it can launch, so `nvcc -Xptxas -v` reports registers, shared memory and spills for all
// of them (native/tests/cuemu/attn_run.sh).
#include "../../cuda/kernels/attention.cuh"
#include "../../cuda/kernels/kv.cuh"

namespace ty {
namespace cuda {
Status attn_nvcc_instantiate(const AttentionPlan& plan, const AttnDevicePlan& dp, const AttentionArgs& a, const AttentionMergeArgs& m,
                             const KvAppendArgs& ka, const KvCopyBlocksArgs& kc, const KvSwapArgs& ks, unsigned long long* bad, stream_t s) {
  Status r;
  for (const Status& st : {attention_run(plan, dp, a, bad, s), attention_merge(m, s), kv_append(ka, bad, s), kv_copy_blocks(kc, bad, s),
                           kv_swap_blocks(ks, bad, s)})
    if (!st.ok && r.ok) r = st;
  return r;
}
}  // namespace cuda
}  // namespace ty
