// Tachyon CUDA kernels: the data movement around the MoE grouped GEMMs (issue 8, item 6).
// Semantics: lib/ops/quant.ts expertPermutation (the expert-sorted permutation that QGroupedArgs
// takes: rows / offsets) and native/cpu/qops.cpp op_moe_combine (the weighted un-permute).
//
//   moe_permute(MoePermuteArgs, err)  top-k expert ids [tokens, k] (-1 = dropped) ->
//       offsets [E+1], rows [R] (the source token of each kept assignment, grouped by expert,
//       assignments in index order t*k+j within an expert: exactly expertPermutation's stable
//       counting sort) and slot [tokens*k] (the row of the grouped output holding assignment i;
//       `dropped_slot` for a dropped one: -1 by default, 0 for expertPermutation's convention).
//       R = offsets[E] stays on the device (grouped GEMM launches size their grids by the
//       capacity tokens*k and read offsets). Ids outside [0, E) other than -1 are treated as
//       dropped and reported: err = min over them of (i << 32 | uint32(id)).
//       Two kernels: (1) one 1024-thread block histograms the ids into shared memory (integer
//       atomics), scans the counts into offsets and marks dropped slots; (2) one warp per expert
//       walks the ids in index order, 128 per step (4 per lane, a warp scan of the lane counts),
//       and writes that expert's rows / slots in order. Deterministic; O(E * tokens * k) reads
//       from L2 in (2), which for decode (tokens*k <= a few thousand) is a few microseconds.
//   moe_gather(MoeGatherArgs, err)    out[p] = x[rows[p]] for p < R (the permute of the
//       activations into expert order, for grouped GEMMs that take gathered rows). One 128-thread
//       block per row of the capacity; blocks p >= R (read on the device) leave at once. Same dtype:
//       a bit copy (16-byte words when aligned); otherwise through f32, rounded once. A row id
//       outside [0, tokens) reads nothing, zeroes its output row and is reported (p << 32 | row).
//   moe_combine(MoeCombineArgs, err)  out[t] (+)= sum_j weights[t*k+j] * y[slot[t*k+j]], the CPU's
//       loop exactly: per element, o = accumulate ? out : +0.0f, then for j = 0..k-1 in order
//       o = o + (w * y) in f32 with two roundings and no FMA (__fmul_rn / __fadd_rn): bit-exact
//       with op_moe_combine. slot -1 (dropped) adds nothing unless allow_dropped is false (the
//       CPU op's rule, which the addon uses); the CPU's slot-0 / weight-0 convention is computed
//       like the CPU. Any other slot outside [0, R) adds nothing and is reported
//       (i << 32 | uint32(slot)). Grid (tokens, column tiles of 512), 128 threads x 4 columns.
#pragma once

#include "common.cuh"

namespace ty {
namespace cuda {
inline namespace TY_CUDA_BUILD {  // see common.cuh

constexpr unsigned long long kMoeNoError = ~0ull;
constexpr int32_t kMoeSlotDropped = -1;
constexpr int kMoeCountThreads = 1024;
constexpr int kMoeScatterWarps = 4;
constexpr int kMoeMaxExperts = 8192;  // shared-memory histogram of the count kernel
constexpr int kMoeGatherThreads = 128;
constexpr int kMoeCombineThreads = 128;
constexpr int kMoeCombineCols = 4 * kMoeCombineThreads;

// Decodes an error slot: the first offending index (assignment, row or position) and its value.
inline bool moe_error(unsigned long long slot, int64_t* index, int32_t* value) {
  if (slot == kMoeNoError) return false;
  *index = int64_t(slot >> 32);
  *value = int32_t(uint32_t(slot & 0xffffffffu));
  return true;
}

struct MoePermuteArgs {
  int64_t tokens = 0, k = 0, experts = 0;
  const int32_t* expert_ids = nullptr;  // [tokens * k], token-major; -1 = dropped
  int32_t* offsets = nullptr;           // [experts + 1]
  int32_t* rows = nullptr;              // [tokens * k]; the first offsets[E] are written
  int32_t* slot = nullptr;              // [tokens * k]
  int32_t dropped_slot = kMoeSlotDropped;
};

struct MoeGatherArgs {
  DType x_dtype = DType::f32, out_dtype = DType::f32;  // f32, f16, bf16
  int64_t tokens = 0, dim = 0;
  const void* x = nullptr;  // [tokens, ldx]
  int64_t ldx = 0;
  const int32_t* rows = nullptr;     // [capacity]
  int64_t capacity = 0;              // rows of out the grid covers (e.g. tokens * k)
  const int32_t* count = nullptr;    // device: how many rows are valid (e.g. offsets + E); null = capacity
  void* out = nullptr;               // [capacity, ldo]
  int64_t ldo = 0;
};

struct MoeCombineArgs {
  DType y_dtype = DType::f32;    // f32, f16, bf16
  int64_t tokens = 0, k = 0, n = 0;
  int64_t y_rows = 0;            // R: rows of y
  const void* y = nullptr;       // [R, n]
  const int32_t* slot = nullptr;     // [tokens * k]
  const float* weights = nullptr;    // [tokens * k]
  bool accumulate = false;
  float* out = nullptr;          // f32 [tokens, n]; must not alias y
  // true: slot -1 is a dropped assignment (adds nothing). false: the CPU op's rule (op_moe_combine,
  // whose permutation gives dropped assignments slot 0 and weight 0): every slot must be in [0, R),
  // and -1 is reported like any other bad slot.
  bool allow_dropped = true;
};

namespace mdetail {
using u64 = unsigned long long;
TY_DEV void report(unsigned long long* err, int64_t index, int32_t value) {
  atomicMin(err, (static_cast<u64>(index) << 32) | static_cast<uint32_t>(value));
}
}  // namespace mdetail

// ---- permute: (1) histogram + offsets ----------------------------------------------------------
// BUG (test only): 1 = no barrier between zeroing the histogram and counting into it.
template <int BUG>
__global__ void __launch_bounds__(kMoeCountThreads)
    moe_count_kernel(const int32_t* ids, int n, int E, int32_t* offsets, int32_t* slot, int32_t dropped_slot,
                     unsigned long long* err) {
  CUEMU_DYNAMIC_SHARED(int, cnt);  // [E]
  __shared__ int warp_tot[kMoeCountThreads / 32];
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  for (int e = tid; e < E; e += kMoeCountThreads) cnt[e] = 0;
  if (BUG != 1) __syncthreads();
  for (int i = tid; i < n; i += kMoeCountThreads) {
    const int32_t e = ids[i];
    if (e >= 0 && e < E) {
      atomicAdd(cnt + e, 1);
    } else {
      slot[i] = dropped_slot;
      if (e != -1) mdetail::report(err, i, e);
    }
  }
  __syncthreads();
  // Exclusive scan over experts: thread t owns the contiguous experts [t*C, t*C + C).
  const int C = (E + kMoeCountThreads - 1) / kMoeCountThreads;
  const int e0 = tid * C, e1 = e0 + C < E ? e0 + C : E;
  int local = 0;
  for (int e = e0; e < e1; ++e) local += cnt[e];
  int incl = local;
  for (int o = 1; o < 32; o <<= 1) {
    const int t = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += t;
  }
  if (lane == 31) warp_tot[warp] = incl;
  __syncthreads();
  int before = 0;
  for (int w = 0; w < warp; ++w) before += warp_tot[w];
  int run = before + incl - local;
  for (int e = e0; e < e1; ++e) {
    offsets[e] = run;
    run += cnt[e];
  }
  if (tid == kMoeCountThreads - 1) {
    int total = 0;
    for (int w = 0; w < kMoeCountThreads / 32; ++w) total += warp_tot[w];
    offsets[E] = total;
  }
}

// ---- permute: (2) one warp per expert writes its rows and slots in assignment order ------------
// BUG (test only): 2 = a scan shuffle whose mask leaves out lane 0.
template <int BUG>
__global__ void __launch_bounds__(32 * kMoeScatterWarps)
    moe_scatter_kernel(const int32_t* ids, int n, int k, int E, const int32_t* offsets, int32_t* rows, int32_t* slot) {
  const int lane = threadIdx.x % 32;
  const int e = blockIdx.x * kMoeScatterWarps + threadIdx.x / 32;
  if (e >= E) return;  // the whole warp leaves (no block barrier in this kernel)
  int pos = offsets[e];
  const int end = offsets[e + 1];
  constexpr unsigned kMask = BUG == 2 ? 0xfffffffeu : 0xffffffffu;
  for (int base = 0; base < n; base += 128) {
    const int i0 = base + 4 * lane;
    int ev[4];
    int c = 0;
#pragma unroll
    for (int v = 0; v < 4; ++v) {
      ev[v] = i0 + v < n ? ids[i0 + v] : -1;
      c += ev[v] == e;
    }
    int incl = c;
    for (int o = 1; o < 32; o <<= 1) {
      const int t = __shfl_up_sync(kMask, incl, o);
      if (lane >= o) incl += t;
    }
    int p = pos + incl - c;
#pragma unroll
    for (int v = 0; v < 4; ++v)
      if (ev[v] == e) {
        if (p < end) {  // offsets come from the count kernel; never write past this expert
          rows[p] = (i0 + v) / k;
          slot[i0 + v] = p;
        }
        ++p;
      }
    pos += __shfl_sync(0xffffffffu, incl, 31);
  }
}

// ---- gather ------------------------------------------------------------------------------------
template <class TI, class TO, bool VEC>
__global__ void __launch_bounds__(kMoeGatherThreads)
    moe_gather_kernel(const TI* x, int64_t ldx, int T, int dim, const int32_t* rows, const int32_t* count, TO* out, int64_t ldo,
                      unsigned long long* err) {
  const int64_t p = blockIdx.x;
  if (count && p >= int64_t(*count)) return;
  const int32_t r = rows[p];
  TO* o = out + p * ldo;
  if (r < 0 || r >= T) {
    if (threadIdx.x == 0) mdetail::report(err, p, r);
    for (int j = threadIdx.x; j < dim; j += kMoeGatherThreads) o[j] = from_f32<TO>(0.0f);
    return;
  }
  const TI* src = x + int64_t(r) * ldx;
  if (VEC) {
    const int words = int(dim * sizeof(TI) / 16);
    const uint4* s4 = reinterpret_cast<const uint4*>(src);
    uint4* o4 = reinterpret_cast<uint4*>(o);
    for (int j = threadIdx.x; j < words; j += kMoeGatherThreads) o4[j] = s4[j];
  } else {
    for (int j = threadIdx.x; j < dim; j += kMoeGatherThreads) {
      if constexpr (std::is_same<TI, TO>::value)
        o[j] = src[j];
      else
        o[j] = from_f32<TO>(to_f32(src[j]));
    }
  }
}

// ---- combine -----------------------------------------------------------------------------------
// VEC: n % 4 == 0, y rows 4-element aligned (16 B for f32, 8 B for 16-bit) and out 16 B aligned.
template <class TY, bool VEC>
__global__ void __launch_bounds__(kMoeCombineThreads)
    moe_combine_kernel(const TY* y, int R, int n, int k, const int32_t* slot, const float* weights, bool accumulate, float* out,
                       unsigned long long* err, bool allow_dropped) {
  const int64_t t = blockIdx.x;
  const int c0 = (int(blockIdx.y) * kMoeCombineThreads + int(threadIdx.x)) * 4;
  if (c0 >= n) return;
  float* orow = out + t * n;
  float o[4];
  if (VEC) {
    if (accumulate) {
      const float4 a = *reinterpret_cast<const float4*>(orow + c0);
      o[0] = a.x, o[1] = a.y, o[2] = a.z, o[3] = a.w;
    } else {
      o[0] = o[1] = o[2] = o[3] = 0.0f;
    }
  } else {
#pragma unroll
    for (int v = 0; v < 4; ++v) o[v] = accumulate && c0 + v < n ? orow[c0 + v] : 0.0f;
  }
  for (int j = 0; j < k; ++j) {
    const int64_t i = t * k + j;
    const int32_t s = slot[i];
    if (s == kMoeSlotDropped && allow_dropped) continue;
    if (s < 0 || s >= R) {
      if (blockIdx.y == 0 && threadIdx.x == 0) mdetail::report(err, i, s);
      continue;
    }
    const float w = weights[i];
    const TY* yr = y + int64_t(s) * n + c0;
    float yv[4];
    if (VEC) {
      const Pack<TY, 4> pk = *reinterpret_cast<const Pack<TY, 4>*>(yr);
#pragma unroll
      for (int v = 0; v < 4; ++v) yv[v] = to_f32(pk.v[v]);
    } else {
#pragma unroll
      for (int v = 0; v < 4; ++v) yv[v] = c0 + v < n ? to_f32(yr[v]) : 0.0f;
    }
    // The CPU's `orow[n] += wt * yr[n]`: a rounded product, then a rounded sum (no FMA).
#pragma unroll
    for (int v = 0; v < 4; ++v) o[v] = __fadd_rn(o[v], __fmul_rn(w, yv[v]));
  }
  if (VEC) {
    *reinterpret_cast<float4*>(orow + c0) = make_float4(o[0], o[1], o[2], o[3]);
  } else {
#pragma unroll
    for (int v = 0; v < 4; ++v)
      if (c0 + v < n) orow[c0 + v] = o[v];
  }
}

// ---- host helpers ------------------------------------------------------------------------------
namespace detail {
template <int BUG_COUNT = 0, int BUG_SCATTER = 0>
Status moe_permute_impl(const MoePermuteArgs& a, unsigned long long* err, stream_t s, const DeviceLimits& lim) {
  for (Status st : {need_int(a.tokens, "tokens", "moePermute"), need_int(a.k, "k", "moePermute"),
                    need_int(a.experts, "experts", "moePermute")})
    if (!st.ok) return st;
  if (a.k < 1) return Status::fail(Code::INVALID_ARG, "moePermute: k must be >= 1", "k");
  if (a.experts < 1 || a.experts > kMoeMaxExperts)
    return Status::fail(Code::UNSUPPORTED, "moePermute: experts = " + std::to_string(a.experts) + " is outside [1, " +
                                               std::to_string(kMoeMaxExperts) + "]", "experts");
  const int64_t n = a.tokens * a.k;
  if (n > 0x7fffffffLL)
    return Status::fail(Code::UNSUPPORTED, "moePermute: tokens * k = " + std::to_string(n) + " exceeds 2^31 - 1", "tokens");
  if (!err) return Status::fail(Code::INTERNAL, "moePermute: no error slot");
  if (!a.offsets || (n > 0 && (!a.expert_ids || !a.rows || !a.slot)))
    return Status::fail(Code::INVALID_ARG, "moePermute: null pointer argument", "offsets");
  LaunchCfg c1{dim3(1), dim3(kMoeCountThreads), size_t(a.experts) * sizeof(int), sizeof(int) * (kMoeCountThreads / 32)};
  LaunchCfg c2{dim3(unsigned((a.experts + kMoeScatterWarps - 1) / kMoeScatterWarps)), dim3(32 * kMoeScatterWarps), 0, 0};
  for (Status st : {check_launch("moe_count_kernel", c1, lim), check_launch("moe_scatter_kernel", c2, lim)})
    if (!st.ok) return st;
  Status st = launch("moe_count_kernel", moe_count_kernel<BUG_COUNT>, c1, lim, s, a.expert_ids, int(n), int(a.experts), a.offsets,
                     a.slot, a.dropped_slot, err);
  if (!st.ok || n == 0) return st;
  return launch("moe_scatter_kernel", moe_scatter_kernel<BUG_SCATTER>, c2, lim, s, a.expert_ids, int(n), int(a.k), int(a.experts),
                static_cast<const int32_t*>(a.offsets), a.rows, a.slot);
}

template <class TI, class TO>
Status moe_gather_t(const MoeGatherArgs& a, unsigned long long* err, const DeviceLimits& lim, stream_t s) {
  LaunchCfg c{dim3(unsigned(a.capacity)), dim3(kMoeGatherThreads), 0, 0};
  const TI* x = static_cast<const TI*>(a.x);
  TO* o = static_cast<TO*>(a.out);
  if constexpr (std::is_same<TI, TO>::value) {
    if ((size_t(a.dim) * sizeof(TI)) % 16 == 0 && (size_t(a.ldx) * sizeof(TI)) % 16 == 0 && (size_t(a.ldo) * sizeof(TO)) % 16 == 0 &&
        aligned16(x) && aligned16(o))
      return launch("moe_gather_kernel", moe_gather_kernel<TI, TO, true>, c, lim, s, x, a.ldx, int(a.tokens), int(a.dim), a.rows,
                    a.count, o, a.ldo, err);
  }
  return launch("moe_gather_kernel", moe_gather_kernel<TI, TO, false>, c, lim, s, x, a.ldx, int(a.tokens), int(a.dim), a.rows, a.count,
                o, a.ldo, err);
}
template <class TI>
Status moe_gather_d(const MoeGatherArgs& a, unsigned long long* err, const DeviceLimits& lim, stream_t s) {
  switch (a.out_dtype) {
    case DType::f32: return moe_gather_t<TI, float>(a, err, lim, s);
    case DType::f16: return moe_gather_t<TI, __half>(a, err, lim, s);
    case DType::bf16: return moe_gather_t<TI, __nv_bfloat16>(a, err, lim, s);
    default: return bad_dtype("moeGather", a.out_dtype, "out");
  }
}

template <class TY>
Status moe_combine_t(const MoeCombineArgs& a, unsigned long long* err, const DeviceLimits& lim, stream_t s) {
  LaunchCfg c{dim3(unsigned(a.tokens), unsigned((a.n + kMoeCombineCols - 1) / kMoeCombineCols)), dim3(kMoeCombineThreads), 0, 0};
  const TY* y = static_cast<const TY*>(a.y);
  const bool vec = a.n % 4 == 0 && (reinterpret_cast<uintptr_t>(y) % (4 * sizeof(TY))) == 0 && aligned16(a.out);
  if (vec)
    return launch("moe_combine_kernel", moe_combine_kernel<TY, true>, c, lim, s, y, int(a.y_rows), int(a.n), int(a.k), a.slot, a.weights,
                  a.accumulate, a.out, err, a.allow_dropped);
  return launch("moe_combine_kernel", moe_combine_kernel<TY, false>, c, lim, s, y, int(a.y_rows), int(a.n), int(a.k), a.slot, a.weights,
                a.accumulate, a.out, err, a.allow_dropped);
}
}  // namespace detail

// `err` must point to device memory holding kMoeNoError (it is only ever lowered).
inline Status moe_permute(const MoePermuteArgs& a, unsigned long long* err, stream_t s = stream_t(), const DeviceLimits& lim = {}) {
  return detail::moe_permute_impl<0, 0>(a, err, s, lim);
}

inline Status moe_gather(const MoeGatherArgs& a, unsigned long long* err, stream_t s = stream_t(), const DeviceLimits& lim = {}) {
  for (Status st : {need_int(a.tokens, "tokens", "moeGather"), need_int(a.dim, "dim", "moeGather"),
                    need_int(a.capacity, "capacity", "moeGather")})
    if (!st.ok) return st;
  if (a.ldx < a.dim || a.ldo < a.dim) return Status::fail(Code::INVALID_ARG, "moeGather: ldx and ldo must be >= dim", "ldx");
  if (!err) return Status::fail(Code::INTERNAL, "moeGather: no error slot");
  if (a.capacity == 0 || a.dim == 0) return {};
  if (!a.x || !a.rows || !a.out) return Status::fail(Code::INVALID_ARG, "moeGather: null pointer argument", "x");
  switch (a.x_dtype) {
    case DType::f32: return detail::moe_gather_d<float>(a, err, lim, s);
    case DType::f16: return detail::moe_gather_d<__half>(a, err, lim, s);
    case DType::bf16: return detail::moe_gather_d<__nv_bfloat16>(a, err, lim, s);
    default: return bad_dtype("moeGather", a.x_dtype, "x");
  }
}

inline Status moe_combine(const MoeCombineArgs& a, unsigned long long* err, stream_t s = stream_t(), const DeviceLimits& lim = {}) {
  for (Status st : {need_int(a.tokens, "tokens", "moeCombine"), need_int(a.k, "k", "moeCombine"), need_int(a.n, "n", "moeCombine"),
                    need_int(a.y_rows, "y_rows", "moeCombine"), need_int(a.tokens * a.k, "tokens*k", "moeCombine")})
    if (!st.ok) return st;
  if (a.k < 1) return Status::fail(Code::INVALID_ARG, "moeCombine: k must be >= 1", "k");
  if (!err) return Status::fail(Code::INTERNAL, "moeCombine: no error slot");
  if (a.tokens == 0 || a.n == 0) return {};
  if (!a.y || !a.slot || !a.weights || !a.out) return Status::fail(Code::INVALID_ARG, "moeCombine: null pointer argument", "y");
  if (a.out == a.y) return Status::fail(Code::INVALID_ARG, "Expected out not to alias y", "out");
  switch (a.y_dtype) {
    case DType::f32: return detail::moe_combine_t<float>(a, err, lim, s);
    case DType::f16: return detail::moe_combine_t<__half>(a, err, lim, s);
    case DType::bf16: return detail::moe_combine_t<__nv_bfloat16>(a, err, lim, s);
    default: return bad_dtype("moeCombine", a.y_dtype, "y");
  }
}

}  // namespace TY_CUDA_BUILD
}  // namespace cuda
}  // namespace ty
