// Tachyon CUDA backends: the paged-attention family (see launch.h). Compiled by nvcc for `cuda`
// and, through native/cuda/emu/ops_attention.cpp, by g++ against cuemu for `cuda-emu`.
#include "kernels/attention.cuh"
#include "launch.h"

namespace ty {
namespace cuda {
inline namespace TY_CUDA_BUILD {

Status launch_kv_append(const KvAppendArgs& a, unsigned long long* bad, stream_t s, const DeviceLimits& lim) {
  return kv_append(a, bad, s, lim);
}
Status launch_kv_copy_blocks(const KvCopyBlocksArgs& a, unsigned long long* bad, stream_t s, const DeviceLimits& lim) {
  return kv_copy_blocks(a, bad, s, lim);
}
Status launch_kv_swap_blocks(const KvSwapArgs& a, unsigned long long* bad, stream_t s, const DeviceLimits& lim) {
  return kv_swap_blocks(a, bad, s, lim);
}
Status launch_attention(const AttentionPlan& plan, const void* plan_device, const AttentionArgs& a, unsigned long long* bad,
                        stream_t s, const DeviceLimits& lim) {
  return attention_run(plan, attention_plan_device_view(plan, plan_device), a, bad, s, lim);
}
Status launch_attention_merge(const AttentionMergeArgs& a, stream_t s, const DeviceLimits& lim) { return attention_merge(a, s, lim); }
size_t attention_plan_bytes(const AttentionPlan& p) { return attention_plan_device_bytes(p); }
void attention_plan_pack_host(const AttentionPlan& p, void* dst) { attention_plan_pack(p, dst); }
bool kv_fault_decode(unsigned long long word, int* kind, int64_t* index, int32_t* value) {
  KvFault f;
  if (!kv_fault(word, &f)) return false;
  *kind = f.kind;
  *index = f.index;
  *value = f.value;
  return true;
}

}  // namespace TY_CUDA_BUILD
}  // namespace cuda
}  // namespace ty
