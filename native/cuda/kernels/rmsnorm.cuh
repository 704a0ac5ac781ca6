// Tachyon CUDA kernel: RMS norm over rows (semantics: tachyon/kernels.h RmsNormArgs, the same
// formula and order as native/cpu/kernels/norm.cpp):
//   out[r,:] = (x[r,:] * s_r) * weight[:],   s_r = (float)(1 / sqrt(sum(x^2) / cols + (double)eps))
// The sum of squares is accumulated in double (each square is exact in double), s_r is computed
// in double and rounded to f32 once, then two f32 multiplies per element (weight may be null).
// out may alias x: the whole row is read (pass 1 ends in a block barrier) before any write.
//
// One block of 256 threads per row; rows go on grid.x (up to 2^31 - 1).
#pragma once

#include "common.cuh"

namespace ty {
namespace cuda {
inline namespace TY_CUDA_BUILD {  // see common.cuh

constexpr int kRmsThreads = 256;

template <class T>
__global__ void __launch_bounds__(kRmsThreads) rms_norm_kernel(const T* x, const float* weight, T* out, int cols, float eps) {
  __shared__ double red[kRmsThreads / 32];
  const size_t base = size_t(blockIdx.x) * size_t(cols);
  const T* xr = x + base;
  double ss = 0.0;
  for (int j = threadIdx.x; j < cols; j += kRmsThreads) {
    const double v = to_f32(xr[j]);
    ss += v * v;
  }
  ss = block_sum<kRmsThreads / 32>(ss, red);
  const float s = float(1.0 / sqrt(ss / double(cols) + double(eps)));
  T* o = out + base;
  if (weight) {
    for (int j = threadIdx.x; j < cols; j += kRmsThreads) o[j] = from_f32<T>(to_f32(xr[j]) * s * weight[j]);
  } else {
    for (int j = threadIdx.x; j < cols; j += kRmsThreads) o[j] = from_f32<T>(to_f32(xr[j]) * s);
  }
}

namespace detail {
template <class T>
Status rms_norm_t(const RmsNormArgs& a, const DeviceLimits& lim, stream_t s) {
  LaunchCfg c{dim3(unsigned(a.rows)), dim3(kRmsThreads), 0, sizeof(double) * (kRmsThreads / 32)};
  return launch("rms_norm_kernel", rms_norm_kernel<T>, c, lim, s, static_cast<const T*>(a.x), a.weight, static_cast<T*>(a.out),
                int(a.cols), a.eps);
}
}  // namespace detail

inline Status rms_norm(const RmsNormArgs& a, stream_t s = stream_t(), const DeviceLimits& lim = {}) {
  for (Status st : {need_int(a.rows, "rows", "rmsNorm"), need_int(a.cols, "cols", "rmsNorm")})
    if (!st.ok) return st;
  if (a.rows == 0 || a.cols == 0) return {};
  switch (a.dtype) {
    case DType::f32: return detail::rms_norm_t<float>(a, lim, s);
    case DType::f16: return detail::rms_norm_t<__half>(a, lim, s);
    case DType::bf16: return detail::rms_norm_t<__nv_bfloat16>(a, lim, s);
    default: return bad_dtype("rmsNorm", a.dtype, "x");
  }
}

}  // namespace TY_CUDA_BUILD
}  // namespace cuda
}  // namespace ty
