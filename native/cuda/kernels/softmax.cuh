// Tachyon CUDA kernel: row softmax, out[r,:] = softmax(scale * x[r,:]) (semantics: tachyon/kernels.h
// SoftmaxArgs, the same numerics as native/cpu/kernels/softmax.cpp):
//   1. m = the x that maximises scale*x (max x for scale >= 0, min x for scale < 0)
//   2. e_j = expf(scale * (x_j - m)); sum_j e_j accumulated in double
//   3. out_j = e_j * (float)(1 / sum), rounded once to the output dtype
// Subtracting m before scaling keeps the exponent's relative error small for huge |x|. A row
// whose every scale*x is -inf (a fully masked row) gives zeros. e_j is recomputed in pass 3
// (the same expression, so the same value) instead of being stored. out may alias x: every read
// of the row happens before the last reduction, which every thread of the row waits for.
//
// Two shapes, reductions by warp shuffles:
//   cols <= 1024: one warp per row, 4 rows per 128-thread block (no shared memory, no barrier);
//   cols >  1024: one 256-thread block per row (warp shuffles, then one value per warp through
//                 shared memory).
#pragma once

#include "common.cuh"

namespace ty {
namespace cuda {
inline namespace TY_CUDA_BUILD {  // see common.cuh

constexpr int kSoftmaxWarpRowsPerBlock = 4;
constexpr int kSoftmaxBlockThreads = 256;

// NW = warps per row: 1 (warp per row) or kSoftmaxBlockThreads / 32 (block per row).
template <class T, int NW>
__global__ void __launch_bounds__(NW == 1 ? 32 * kSoftmaxWarpRowsPerBlock : 32 * NW)
    softmax_kernel(const T* x, T* out, int64_t rows, int cols, float scale) {
  __shared__ float red_m[NW];
  __shared__ double red_s[NW];
  int64_t row;
  int tid, nth;
  if (NW == 1) {
    row = int64_t(blockIdx.x) * kSoftmaxWarpRowsPerBlock + threadIdx.x / 32;
    tid = threadIdx.x % 32;
    nth = 32;
    if (row >= rows) return;  // the whole warp leaves; no block barrier in this shape
  } else {
    row = blockIdx.x;
    tid = threadIdx.x;
    nth = 32 * NW;
  }
  const T* xr = x + row * cols;
  const bool use_max = !(scale < 0.0f);
  float m = use_max ? -INFINITY : INFINITY;
  for (int j = tid; j < cols; j += nth) {
    const float v = to_f32(xr[j]);
    m = use_max ? (v > m ? v : m) : (v < m ? v : m);
  }
  m = block_maxmin<NW>(m, use_max, red_m);
  T* o = out + row * cols;
  if (use_max ? m == -INFINITY : m == INFINITY) {  // every scale*x is -inf
    for (int j = tid; j < cols; j += nth) o[j] = from_f32<T>(0.0f);
    return;
  }
  double sum = 0.0;
  for (int j = tid; j < cols; j += nth) sum += double(expf(scale * (to_f32(xr[j]) - m)));
  sum = block_sum<NW>(sum, red_s);
  const float inv = float(1.0 / sum);
  for (int j = tid; j < cols; j += nth) o[j] = from_f32<T>(expf(scale * (to_f32(xr[j]) - m)) * inv);
}

namespace detail {
template <class T>
Status softmax_t(const SoftmaxArgs& a, const DeviceLimits& lim, stream_t s) {
  const T* x = static_cast<const T*>(a.x);
  T* o = static_cast<T*>(a.out);
  if (a.cols <= 1024) {
    const int64_t blocks = (a.rows + kSoftmaxWarpRowsPerBlock - 1) / kSoftmaxWarpRowsPerBlock;
    LaunchCfg c{dim3(unsigned(blocks)), dim3(32 * kSoftmaxWarpRowsPerBlock), 0, sizeof(float) + sizeof(double)};
    return launch("softmax_kernel", softmax_kernel<T, 1>, c, lim, s, x, o, a.rows, int(a.cols), a.scale);
  }
  constexpr int NW = kSoftmaxBlockThreads / 32;
  LaunchCfg c{dim3(unsigned(a.rows)), dim3(kSoftmaxBlockThreads), 0, NW * (sizeof(float) + sizeof(double))};
  return launch("softmax_kernel", softmax_kernel<T, NW>, c, lim, s, x, o, a.rows, int(a.cols), a.scale);
}
}  // namespace detail

inline Status softmax(const SoftmaxArgs& a, stream_t s = stream_t(), const DeviceLimits& lim = {}) {
  for (Status st : {need_int(a.rows, "rows", "softmax"), need_int(a.cols, "cols", "softmax")})
    if (!st.ok) return st;
  if (a.rows == 0 || a.cols == 0) return {};
  switch (a.dtype) {
    case DType::f32: return detail::softmax_t<float>(a, lim, s);
    case DType::f16: return detail::softmax_t<__half>(a, lim, s);
    case DType::bf16: return detail::softmax_t<__nv_bfloat16>(a, lim, s);
    default: return bad_dtype("softmax", a.dtype, "x");
  }
}

}  // namespace TY_CUDA_BUILD
}  // namespace cuda
}  // namespace ty
