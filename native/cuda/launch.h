// Tachyon CUDA backends: the kernel families that are compiled in translation units of their own.
//
// The launcher (launcher.cuh) orchestrates (memory, error words, deferred checks) and calls these
// functions, each a thin wrapper over a family's launch helpers. Every family has one source,
// native/cuda/ops_<family>.cu, compiled twice: by nvcc into the `cuda` backend (sources.json
// "cuda") and by g++ against cuemu into `cuda-emu` (native/cuda/emu/ops_<family>.cpp includes it).
// Splitting them keeps nvcc's heavy template instantiations (3 archs each) in parallel-buildable
// units, and a change to one family rebuilds only that family. Both compilations link into one
// addon, so the declarations live in an inline namespace named after the compiler (`nv` or
// `emu`): the two builds of a function never share a symbol.
#pragma once

#include "kernels/common.cuh"
#include "tachyon/attention.h"
#include "tachyon/quant.h"

#if defined(__CUDACC__)
#define TY_CUDA_BUILD nv
#else
#define TY_CUDA_BUILD emu
#endif

namespace ty {
namespace cuda {
inline namespace TY_CUDA_BUILD {

// ---- paged KV cache and attention (ops_attention.cu; kernels/attention.cuh, kv.cuh) -----------
// `bad` is a device word holding kKvNoError (kv.cuh) before the launch; see kv_fault().
Status launch_kv_append(const KvAppendArgs&, unsigned long long* bad, stream_t, const DeviceLimits&);
Status launch_kv_copy_blocks(const KvCopyBlocksArgs&, unsigned long long* bad, stream_t, const DeviceLimits&);
// plan_device: the device copy of attention_plan_pack(plan) (8-byte aligned).
Status launch_attention(const AttentionPlan& plan, const void* plan_device, const AttentionArgs&, unsigned long long* bad, stream_t,
                        const DeviceLimits&);
Status launch_attention_merge(const AttentionMergeArgs&, stream_t, const DeviceLimits&);
size_t attention_plan_bytes(const AttentionPlan&);
void attention_plan_pack_host(const AttentionPlan&, void* dst);
// Decodes a KV fault word: false when it holds none.
bool kv_fault_decode(unsigned long long word, int* kind, int64_t* index, int32_t* value);

// ---- quantized GEMM (ops_qgemm.cu; kernels/gemm_w4a16.cuh, gemm_int8.cuh, gemm_fp8.cuh, moe.cuh)

// ---- sampling (ops_sampling.cu; kernels/sampling.cuh) -------------------------------------------

}  // namespace TY_CUDA_BUILD
}  // namespace cuda
}  // namespace ty
