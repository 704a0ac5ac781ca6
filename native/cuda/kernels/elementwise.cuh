// Tachyon CUDA kernels: elementwise binary ops and the SwiGLU gate (semantics: tachyon/kernels.h,
// BinaryArgs / SiluMulArgs, same as native/cpu/kernels/elementwise.cpp).
//   binary:   out = a (+|*) b, b the same shape or one row of `cols` broadcast over every row
//   silu_mul: out = silu(gate) * up
// f32/f16/bf16; arithmetic in f32, rounded once on store. out may alias an input (each element
// is read before it is written, by the same thread).
//
// Grid-stride loops over the flat range, 256 threads per block. When every pointer is 16-byte
// aligned and the element count (and, for the broadcast, cols) is a multiple of V = 16 / sizeof(T),
// each thread moves V elements per access (one 16-byte load per operand); otherwise V = 1.
#pragma once

#include "common.cuh"

namespace ty {
namespace cuda {
inline namespace TY_CUDA_BUILD {  // see common.cuh

template <class T, int OP, bool BCAST, int V>
__global__ void __launch_bounds__(256) binary_kernel(const T* a, const T* b, T* out, int64_t total, int64_t cols) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x * V;
  for (int64_t i = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * V; i < total; i += stride) {
    const Pack<T, V> x = *reinterpret_cast<const Pack<T, V>*>(a + i);
    const Pack<T, V> y = *reinterpret_cast<const Pack<T, V>*>(b + (BCAST ? i % cols : i));
    Pack<T, V> r;
#pragma unroll
    for (int e = 0; e < V; ++e) {
      const float u = to_f32(x.v[e]), w = to_f32(y.v[e]);
      r.v[e] = from_f32<T>(OP == 0 ? u + w : u * w);
    }
    *reinterpret_cast<Pack<T, V>*>(out + i) = r;
  }
}

// silu(g) * u with e = exp(-|g|), which never overflows (the CPU kernel's formula):
//   g >= 0: g / (1 + e);   g < 0 (sign bit set): g * e / (1 + e)
TY_DEV float silu_mul_f32(float g, float u) {
  const float e = expf(g < 0.0f ? g : -g);
  const float num = g * ((__float_as_uint(g) >> 31) ? e : 1.0f);
  return num / (1.0f + e) * u;
}

template <class T, int V>
__global__ void __launch_bounds__(256) silu_mul_kernel(const T* gate, const T* up, T* out, int64_t n) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x * V;
  for (int64_t i = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * V; i < n; i += stride) {
    const Pack<T, V> g = *reinterpret_cast<const Pack<T, V>*>(gate + i);
    const Pack<T, V> u = *reinterpret_cast<const Pack<T, V>*>(up + i);
    Pack<T, V> r;
#pragma unroll
    for (int e = 0; e < V; ++e) r.v[e] = from_f32<T>(silu_mul_f32(to_f32(g.v[e]), to_f32(u.v[e])));
    *reinterpret_cast<Pack<T, V>*>(out + i) = r;
  }
}

namespace detail {
constexpr int kEwThreads = 256;
constexpr int64_t kEwMaxBlocks = 65535;  // grid-stride beyond this

inline LaunchCfg ew_cfg(int64_t items) {
  int64_t blocks = (items + kEwThreads - 1) / kEwThreads;
  if (blocks > kEwMaxBlocks) blocks = kEwMaxBlocks;
  if (blocks < 1) blocks = 1;
  return {dim3(unsigned(blocks)), dim3(kEwThreads), 0, 0};
}

template <class T, int OP, bool BCAST>
Status binary_t(const BinaryArgs& a, const DeviceLimits& lim, stream_t s) {
  constexpr int V = 16 / sizeof(T);
  const int64_t total = a.rows * a.cols;
  const bool vec = aligned16(a.a) && aligned16(a.b) && aligned16(a.out) && total % V == 0 && (!BCAST || a.cols % V == 0);
  const T* x = static_cast<const T*>(a.a);
  const T* y = static_cast<const T*>(a.b);
  T* o = static_cast<T*>(a.out);
  if (vec) return launch("binary_kernel", binary_kernel<T, OP, BCAST, V>, ew_cfg(total / V), lim, s, x, y, o, total, a.cols);
  return launch("binary_kernel", binary_kernel<T, OP, BCAST, 1>, ew_cfg(total), lim, s, x, y, o, total, a.cols);
}

template <class T>
Status binary_d(const BinaryArgs& a, const DeviceLimits& lim, stream_t s) {
  if (a.op == BinaryOp::add)
    return a.b_row_bcast ? binary_t<T, 0, true>(a, lim, s) : binary_t<T, 0, false>(a, lim, s);
  return a.b_row_bcast ? binary_t<T, 1, true>(a, lim, s) : binary_t<T, 1, false>(a, lim, s);
}

template <class T>
Status silu_mul_t(const SiluMulArgs& a, const DeviceLimits& lim, stream_t s) {
  constexpr int V = 16 / sizeof(T);
  const T* g = static_cast<const T*>(a.gate);
  const T* u = static_cast<const T*>(a.up);
  T* o = static_cast<T*>(a.out);
  if (aligned16(g) && aligned16(u) && aligned16(o) && a.n % V == 0)
    return launch("silu_mul_kernel", silu_mul_kernel<T, V>, ew_cfg(a.n / V), lim, s, g, u, o, a.n);
  return launch("silu_mul_kernel", silu_mul_kernel<T, 1>, ew_cfg(a.n), lim, s, g, u, o, a.n);
}
}  // namespace detail

inline Status binary(const BinaryArgs& a, stream_t s = stream_t(), const DeviceLimits& lim = {}) {
  if (a.rows < 0 || a.cols < 0) return Status::fail(Code::SHAPE, "binary: negative shape");
  if (a.rows == 0 || a.cols == 0) return {};
  switch (a.dtype) {
    case DType::f32: return detail::binary_d<float>(a, lim, s);
    case DType::f16: return detail::binary_d<__half>(a, lim, s);
    case DType::bf16: return detail::binary_d<__nv_bfloat16>(a, lim, s);
    default: return bad_dtype("binary", a.dtype, "a");
  }
}

inline Status silu_mul(const SiluMulArgs& a, stream_t s = stream_t(), const DeviceLimits& lim = {}) {
  if (a.n < 0) return Status::fail(Code::SHAPE, "siluMul: negative size");
  if (a.n == 0) return {};
  switch (a.dtype) {
    case DType::f32: return detail::silu_mul_t<float>(a, lim, s);
    case DType::f16: return detail::silu_mul_t<__half>(a, lim, s);
    case DType::bf16: return detail::silu_mul_t<__nv_bfloat16>(a, lim, s);
    default: return bad_dtype("siluMul", a.dtype, "gate");
  }
}

}  // namespace TY_CUDA_BUILD
}  // namespace cuda
}  // namespace ty
