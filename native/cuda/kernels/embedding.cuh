// Tachyon CUDA kernel: embedding gather, out[t,:] = table[ids[t],:] (semantics: tachyon/kernels.h
// EmbeddingArgs, as native/cpu/kernels/embedding.cpp): the same dtype copies bits; otherwise
// each element goes through f32 (exact for f16/bf16) and is rounded once to the output dtype.
//
// ids are checked on the device, in stream order (the host cannot read them without a sync):
// a token whose id is outside [0, vocab) reads nothing from the table, its output row is zeroed,
// and the kernel records it in `bad`, a device u64 the caller sets to kEmbeddingNoError before
// the launch: bad = min over bad tokens of (token << 32 | uint32(id)), so after the stream
// syncs, embedding_bad() gives the first offending token and its id (for an E_INVALID_ARG that
// names `ids`, as the CPU backend does).
//
// One block (128 threads) per token; tokens go on grid.x. When the dtypes match and rows are
// 16-byte aligned, the row is copied in 16-byte words.
#pragma once

#include "common.cuh"

namespace ty {
namespace cuda {
inline namespace TY_CUDA_BUILD {  // see common.cuh

constexpr unsigned long long kEmbeddingNoError = ~0ull;
constexpr int kEmbedThreads = 128;

inline bool embedding_bad(unsigned long long slot, int64_t* token, int32_t* id) {
  if (slot == kEmbeddingNoError) return false;
  *token = int64_t(slot >> 32);
  *id = int32_t(uint32_t(slot & 0xffffffffu));
  return true;
}

// VEC: TI == TO, dim * sizeof(TI) % 16 == 0 and both bases 16-byte aligned.
template <class TI, class TO, bool VEC>
__global__ void __launch_bounds__(kEmbedThreads) embedding_kernel(const TI* table, const int32_t* ids, TO* out, int vocab, int dim,
                                                                  unsigned long long* bad) {
  const size_t t = blockIdx.x;
  const int id = ids[t];
  TO* o = out + t * size_t(dim);
  if (id < 0 || id >= vocab) {
    if (threadIdx.x == 0) atomicMin(bad, (static_cast<unsigned long long>(t) << 32) | static_cast<uint32_t>(id));
    for (int j = threadIdx.x; j < dim; j += kEmbedThreads) o[j] = from_f32<TO>(0.0f);
    return;
  }
  const TI* src = table + size_t(id) * size_t(dim);
  if (VEC) {
    const int words = int(dim * sizeof(TI) / 16);
    const uint4* s4 = reinterpret_cast<const uint4*>(src);
    uint4* o4 = reinterpret_cast<uint4*>(o);
    for (int j = threadIdx.x; j < words; j += kEmbedThreads) o4[j] = s4[j];
  } else {
    for (int j = threadIdx.x; j < dim; j += kEmbedThreads) {
      if constexpr (std::is_same<TI, TO>::value)
        o[j] = src[j];  // bits, NaN payloads included
      else
        o[j] = from_f32<TO>(to_f32(src[j]));
    }
  }
}

namespace detail {
template <class TI, class TO>
Status embedding_t(const EmbeddingArgs& a, unsigned long long* bad, const DeviceLimits& lim, stream_t s) {
  LaunchCfg c{dim3(unsigned(a.tokens)), dim3(kEmbedThreads), 0, 0};
  const TI* tab = static_cast<const TI*>(a.table);
  TO* o = static_cast<TO*>(a.out);
  if constexpr (std::is_same<TI, TO>::value) {
    if ((size_t(a.dim) * sizeof(TI)) % 16 == 0 && aligned16(tab) && aligned16(o))
      return launch("embedding_kernel", embedding_kernel<TI, TO, true>, c, lim, s, tab, a.ids, o, int(a.vocab), int(a.dim), bad);
  }
  return launch("embedding_kernel", embedding_kernel<TI, TO, false>, c, lim, s, tab, a.ids, o, int(a.vocab), int(a.dim), bad);
}
template <class TI>
Status embedding_d(const EmbeddingArgs& a, unsigned long long* bad, const DeviceLimits& lim, stream_t s) {
  switch (a.out_dtype) {
    case DType::f32: return embedding_t<TI, float>(a, bad, lim, s);
    case DType::f16: return embedding_t<TI, __half>(a, bad, lim, s);
    case DType::bf16: return embedding_t<TI, __nv_bfloat16>(a, bad, lim, s);
    default: return bad_dtype("embedding", a.out_dtype, "out");
  }
}
}  // namespace detail

// `bad` must point to device memory holding kEmbeddingNoError (it is only ever lowered).
inline Status embedding(const EmbeddingArgs& a, unsigned long long* bad, stream_t s = stream_t(), const DeviceLimits& lim = {}) {
  for (Status st : {need_int(a.vocab, "vocab", "embedding"), need_int(a.dim, "dim", "embedding"),
                    need_int(a.tokens, "tokens", "embedding")})
    if (!st.ok) return st;
  if (!bad) return Status::fail(Code::INTERNAL, "embedding: no error slot");
  if (a.tokens == 0 || a.dim == 0) return {};
  switch (a.table_dtype) {
    case DType::f32: return detail::embedding_d<float>(a, bad, lim, s);
    case DType::f16: return detail::embedding_d<__half>(a, bad, lim, s);
    case DType::bf16: return detail::embedding_d<__nv_bfloat16>(a, bad, lim, s);
    default: return bad_dtype("embedding", a.table_dtype, "table");
  }
}

}  // namespace TY_CUDA_BUILD
}  // namespace cuda
}  // namespace ty
