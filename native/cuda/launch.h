// Tachyon CUDA backends: the kernel families that are compiled in translation units of their own.
//
// The launcher (launcher.cuh) orchestrates (memory, error words, deferred checks) and calls these
// functions, each a thin wrapper over a family's launch helpers. Every family has one source,
// native/cuda/ops_<family>.cu, compiled twice: by nvcc into the `cuda` backend (sources.json
// "cuda") and by g++ against cuemu into `cuda-emu` (native/cuda/emu/ops_<family>.cpp includes it).
// Splitting them keeps nvcc's heavy template instantiations (3 archs each) in parallel-buildable
// units, and a change to one family rebuilds only that family. Both compilations link into one
// addon, so the declarations live in the kernels' inline namespace named after the compiler
// (TY_CUDA_BUILD, `nv` or `emu`; see kernels/common.cuh): the two builds never share a symbol.
#pragma once

#include "kernels/common.cuh"
#include "tachyon/attention.h"
#include "tachyon/quant.h"

namespace ty {
namespace cuda {
inline namespace TY_CUDA_BUILD {

// ---- paged KV cache and attention (ops_attention.cu; kernels/attention.cuh, kv.cuh) -----------
// `bad` is a device word holding kKvNoError (kv.cuh) before the launch; see kv_fault().
Status launch_kv_append(const KvAppendArgs&, unsigned long long* bad, stream_t, const DeviceLimits&);
Status launch_kv_copy_blocks(const KvCopyBlocksArgs&, unsigned long long* bad, stream_t, const DeviceLimits&);
// a.host: the device address of pinned host memory.
Status launch_kv_swap_blocks(const KvSwapArgs&, unsigned long long* bad, stream_t, const DeviceLimits&);
// plan_device: the device copy of attention_plan_pack(plan) (8-byte aligned).
Status launch_attention(const AttentionPlan& plan, const void* plan_device, const AttentionArgs&, unsigned long long* bad, stream_t,
                        const DeviceLimits&);
Status launch_attention_merge(const AttentionMergeArgs&, stream_t, const DeviceLimits&);
size_t attention_plan_bytes(const AttentionPlan&);
void attention_plan_pack_host(const AttentionPlan&, void* dst);
// Decodes a KV fault word: false when it holds none.
bool kv_fault_decode(unsigned long long word, int* kind, int64_t* index, int32_t* value);

// ---- quantized GEMM (ops_qgemm.cu; kernels/gemm_w4a16.cuh, gemm_int8.cuh, gemm_fp8.cuh, moe.cuh)
// Weights are in the device layout of cpu::Device (device.h); the launcher passes the int8 / fp8
// scales' address (`scales`) and uploads the grouped expert tables (qgemm_expert_table_host).
// What the kernels plan for: compute capability (major * 10 + minor: the fp8 e4m3 mma needs 89+)
// and the SM count (W4A16 split-K): Base::device_info() (`cuda`: the device's properties;
// `cuda-emu`: the arch it was created with, and 8 SMs).
struct QDeviceInfo {
  int sm = 80;
  int sms = 8;
};
// w4a16_layout(f, N, K).total, or the kernel's refusal (UNSUPPORTED for int8 / q6k).
Status w4a16_packed_size(const QuantFormat&, int64_t N, int64_t K, size_t* bytes);
// Host memory to host memory (load time).
Status w4a16_repack_host(const QPlain& plain, void* out, size_t bytes);
// The split-K workspace a W4A16 launch of `rows` rows (M; grouped: R over `experts` experts, else
// 0) will use: tickets (zero at rest) and partials; both 0 when it does not split.
Status w4a16_workspace(const QuantFormat&, int64_t N, int64_t K, int64_t rows, int64_t experts, int sms, const DeviceLimits&,
                       size_t* ticket_bytes, size_t* partial_bytes);
struct W4Scratch {
  unsigned* tickets = nullptr;
  size_t ticket_bytes = 0;
  void* partials = nullptr;
  size_t partial_bytes = 0;
};
Status launch_w4a16_gemm(const QGemmArgs&, const W4Scratch&, int sms, stream_t, const DeviceLimits&);
// g.w: the DEVICE table (qgemm_expert_table_host). `bad`: a device word holding ~0 before the launch.
Status launch_w4a16_grouped(const QGroupedArgs&, unsigned long long* bad, const W4Scratch&, int sms, stream_t, const DeviceLimits&);
// int8 W8A8 (g.w.data: codes; scales: the scales). Workspace: the quantized activations.
size_t qgemm_int8_workspace(const QuantFormat&, int64_t M, int64_t K);
Status launch_qgemm_int8(const QGemmArgs&, const void* scales, void* ws, size_t ws_bytes, stream_t, const DeviceLimits&, int sm);
size_t qgemm_int8_grouped_workspace(const QuantFormat&, int64_t T, int64_t R, int64_t K, int64_t E);
Status launch_qgemm_int8_grouped(const QGroupedArgs&, const void* experts, void* ws, size_t ws_bytes, unsigned long long* bad, stream_t,
                                 const DeviceLimits&, int sm);
// fp8 (g.w.data: codes; scales: the f32 scales). The path: e4m3 mma for w8a8 with e4m3 weights on
// sm_89+, else the W8A16 kernel (w8a8 activations quantized to e4m3 first, carried as f16).
size_t fp8gemm_workspace(Fp8Act, int64_t M, int64_t K);
Status launch_fp8gemm(const Fp8GemmArgs&, const float* scales, void* ws, size_t ws_bytes, stream_t, const DeviceLimits&, int sm);
size_t fp8gemm_grouped_workspace(Fp8Act, int64_t T, int64_t R, int64_t K, int64_t E);
Status launch_fp8gemm_grouped(const Fp8Format&, Fp8Act, const QGroupedArgs&, const void* experts, void* ws, size_t ws_bytes,
                              unsigned long long* bad, stream_t, const DeviceLimits&, int sm);
// Expert tables for the grouped kernels, built on the host: W4A16 takes E weight pointers, the
// int8 / fp8 kernels {codes, scales} pairs (scales at w[e] + scale_offset).
size_t qgemm_expert_table_bytes(bool w4a16, int64_t E);
void qgemm_expert_table_host(bool w4a16, const uint8_t* const* w, int64_t E, int64_t scale_offset, void* out);
// Grouped routing fault word (both grouped kernels): kind 1 offsets, 2 rows, 3 weights; false: none.
bool qgroup_fault_decode(unsigned long long word, int* kind, int64_t* index);
// MoE combine (moe.cuh, with the CPU's slot rule). `bad`: a device word holding ~0 before the launch.
Status launch_moe_combine(DType y_dtype, int64_t tokens, int64_t k, int64_t n, int64_t rows, const void* y, const int32_t* slot,
                          const float* weights, bool accumulate, float* out, unsigned long long* bad, stream_t, const DeviceLimits&);
bool moe_fault_decode(unsigned long long word, int64_t* index, int32_t* value);

// ---- sampling (ops_sampling.cu; kernels/sampling.cuh) -------------------------------------------
// One row's parameters as the kernel reads them (kernels/sampling.cuh's SampleRow: the layout is
// checked there with static_asserts). Uploaded by the launcher, checked first on the host.
struct SampleParamRow {
  double temperature = 1.0, top_p = 1.0, min_p = 0.0, u = 0.0;
  int32_t top_k = 0, reserved = 0;
};
// sample_params_check() on host rows (INVALID_ARG naming params[i].temperature / topK / topP /
// minP / u).
Status sample_params_host_check(const SampleParamRow* host, int64_t rows);
// params: device rows, or null for argmax. err: a device word holding ~0 before the launch
// (lowered to the first bad row's row << 32 | kind << 24 | index). logprob: null or f32 [rows].
Status launch_sample(DType dtype, int64_t rows, int64_t vocab, const void* logits, const SampleParamRow* params, int32_t* token,
                     float* logprob, unsigned long long* err, stream_t, const DeviceLimits&);

}  // namespace TY_CUDA_BUILD
}  // namespace cuda
}  // namespace ty
