// Tachyon CUDA kernel: rotary position embedding, in place on x[tokens, heads, head_dim]
// (semantics: tachyon/kernels.h RopeArgs, the same angles as native/cpu/kernels/rope.cpp, which
// follows llama.cpp's CPU rope):
//   theta_scale = powf(freq_base, -2.0f / rot_dim)       (computed on the host by the helper, so
//                                                         it is the CPU backend's exact value)
//   theta_0 = (float)pos;  theta_{i+1} = theta_i * theta_scale   (the running product, in f32)
//   angle_i = freq_scale * theta_i;  c_i = cosf(angle_i), s_i = sinf(angle_i)
//   pair (a, b) = (2i, 2i+1) [neox = false] or (i, i + rot_dim/2) [neox = true]:
//   a' = a*c_i - b*s_i,  b' = a*s_i + b*c_i
// Only the first rot_dim (even, <= head_dim) dims of each head rotate; the rest are not written.
//
// One block (128 threads) per token: the block first builds the token's cos/sin table in
// dynamic shared memory (rot_dim floats; thread i repeats the running product i times, which
// keeps theta_i bit-identical to the CPU's sequential product), then rotates every pair of every
// head. Tokens go on grid.x.
#pragma once

#include <cmath>

#include "common.cuh"

namespace ty {
namespace cuda {
inline namespace TY_CUDA_BUILD {  // see common.cuh

constexpr int kRopeThreads = 128;

template <class T, bool NEOX>
__global__ void __launch_bounds__(kRopeThreads) rope_kernel(T* x, const int32_t* positions, int heads, int head_dim, int rot_dim,
                                                            float theta_scale, float freq_scale) {
  CUEMU_DYNAMIC_SHARED(float, cs);  // cs[0, half) = cos, cs[half, rot_dim) = sin
  const int half = rot_dim / 2;
  const size_t t = blockIdx.x;
  const float pos = float(positions[t]);
  for (int i = threadIdx.x; i < half; i += kRopeThreads) {
    float theta = pos;
    for (int k = 0; k < i; ++k) theta *= theta_scale;
    const float ang = freq_scale * theta;
    cs[i] = cosf(ang);
    cs[half + i] = sinf(ang);
  }
  __syncthreads();
  T* xt = x + t * size_t(heads) * size_t(head_dim);
  const int pairs = heads * half;
  for (int q = threadIdx.x; q < pairs; q += kRopeThreads) {
    const int h = q / half, i = q - h * half;
    T* xh = xt + size_t(h) * head_dim;
    const int ia = NEOX ? i : 2 * i, ib = NEOX ? i + half : 2 * i + 1;
    const float a = to_f32(xh[ia]), b = to_f32(xh[ib]);
    const float c = cs[i], s = cs[half + i];
    xh[ia] = from_f32<T>(a * c - b * s);
    xh[ib] = from_f32<T>(a * s + b * c);
  }
}

namespace detail {
template <class T>
Status rope_t(const RopeArgs& a, const DeviceLimits& lim, stream_t s) {
  const float theta_scale = ::powf(a.freq_base, -2.0f / float(a.rot_dim));
  // The table lives in the default 48 KiB (no opt-in): rot_dim <= 12288 is far beyond any model.
  DeviceLimits l = lim;
  l.smem_optin = l.smem_default;
  LaunchCfg c{dim3(unsigned(a.tokens)), dim3(kRopeThreads), size_t(a.rot_dim) * sizeof(float), 0};
  T* x = static_cast<T*>(a.x);
  if (a.neox)
    return launch("rope_kernel", rope_kernel<T, true>, c, l, s, x, a.positions, int(a.heads), int(a.head_dim), int(a.rot_dim),
                  theta_scale, a.freq_scale);
  return launch("rope_kernel", rope_kernel<T, false>, c, l, s, x, a.positions, int(a.heads), int(a.head_dim), int(a.rot_dim),
                theta_scale, a.freq_scale);
}
}  // namespace detail

inline Status rope(const RopeArgs& a, stream_t s = stream_t(), const DeviceLimits& lim = {}) {
  for (Status st : {need_int(a.tokens, "tokens", "rope"), need_int(a.heads, "heads", "rope"), need_int(a.head_dim, "headDim", "rope"),
                    need_int(a.heads * a.head_dim, "heads*headDim", "rope")})
    if (!st.ok) return st;
  if (a.rot_dim < 2 || a.rot_dim % 2 != 0 || a.rot_dim > a.head_dim)
    return Status::fail(Code::INVALID_ARG, "rope: rotaryDim = " + std::to_string(a.rot_dim) + " is not an even integer in [2, headDim]",
                        "rotaryDim");
  if (a.tokens == 0 || a.heads == 0) return {};
  switch (a.dtype) {
    case DType::f32: return detail::rope_t<float>(a, lim, s);
    case DType::f16: return detail::rope_t<__half>(a, lim, s);
    case DType::bf16: return detail::rope_t<__nv_bfloat16>(a, lim, s);
    default: return bad_dtype("rope", a.dtype, "x");
  }
}

}  // namespace TY_CUDA_BUILD
}  // namespace cuda
}  // namespace ty
