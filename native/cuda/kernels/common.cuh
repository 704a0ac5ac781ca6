// Tachyon CUDA kernels: what every kernel header shares.
//
// Kernels are single-source: nvcc compiles them for the GPU, and g++ compiles the same headers
// against native/cuemu (one fiber per CUDA thread; see native/cuemu/README.md). Each op has a
// host launch helper that
//   - takes the CPU backend's argument struct (tachyon/kernels.h), so both backends share one
//     definition of every op's semantics;
//   - checks what the kernel itself needs (dtypes, index ranges) and the launch configuration
//     (grid/block limits, shared memory against the 48 KiB default and the opt-in limit), and
//     returns a Status instead of launching when something is wrong;
//   - launches with <<<>>> under nvcc, or cuemu::launch_named on the host (synchronous; a
//     kernel that breaks a CUDA rule makes cuemu throw cuemu::Error, which is not caught here).
// Include paths: native/include (tachyon/*.h).
#pragma once

#include "../../cuemu/cuemu.h"

#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>

#include "tachyon/error.h"
#include "tachyon/kernels.h"

#if defined(__CUDACC__)
#define TY_DEV __device__ __forceinline__
#else
#define TY_DEV inline
#endif

// The addon links both compilations of these headers (nvcc's for `cuda`, g++'s against cuemu for
// `cuda-emu`), so everything here lives in an inline namespace named after the compiler: a
// non-template kernel's nvcc launch stub and its cuemu body would otherwise be two definitions of
// one symbol (and the linker could bind one backend's launches to the other's). Code keeps
// spelling names ty::cuda::X.
#if !defined(TY_CUDA_BUILD)
#if defined(__CUDACC__)
#define TY_CUDA_BUILD nv
#else
#define TY_CUDA_BUILD emu
#endif
#endif

namespace ty {
namespace cuda {
inline namespace TY_CUDA_BUILD {  // see common.cuh

#if defined(__CUDACC__)
using stream_t = cudaStream_t;
#else
using stream_t = void*;  // cuemu launches are synchronous; there are no streams
#endif

// Per-device limits the launch checks use. smem_optin is cudaDevAttrMaxSharedMemoryPerBlockOptin
// (227 KiB on sm_80/sm_90, 99 KiB on sm_86/sm_89); the backend fills it from the device.
struct DeviceLimits {
  size_t smem_default = size_t(48) << 10;  // per block without cudaFuncSetAttribute
  size_t smem_optin = size_t(227) << 10;
};

// The outcome of a launch helper. Not ok: nothing was launched (or, under nvcc, the launch
// itself failed); code/message/arg follow ty::Error, so a caller can simply throw_if_error().
struct Status {
  bool ok = true;
  Code code = Code::INTERNAL;
  std::string message;
  std::string arg;
  static Status fail(Code c, std::string m, std::string a = {}) {
    Status s;
    s.ok = false;
    s.code = c;
    s.message = std::move(m);
    s.arg = std::move(a);
    return s;
  }
  void throw_if_error() const {
    if (!ok) throw Error(code, message, arg);
  }
};

struct LaunchCfg {
  dim3 grid;
  dim3 block;
  size_t dyn_smem = 0;
  size_t static_smem = 0;  // the kernel's __shared__ bytes (cuemu does not check them)
};

inline Status check_launch(const char* kernel, const LaunchCfg& c, const DeviceLimits& lim) {
  const std::string k = kernel;
  auto dims = [](dim3 d) {
    return "(" + std::to_string(d.x) + ", " + std::to_string(d.y) + ", " + std::to_string(d.z) + ")";
  };
  if (c.grid.x == 0 || c.grid.y == 0 || c.grid.z == 0 || c.block.x == 0 || c.block.y == 0 || c.block.z == 0)
    return Status::fail(Code::INTERNAL, k + ": empty launch grid " + dims(c.grid) + " block " + dims(c.block));
  const uint64_t threads = uint64_t(c.block.x) * c.block.y * c.block.z;
  if (c.block.x > 1024 || c.block.y > 1024 || c.block.z > 64 || threads > 1024)
    return Status::fail(Code::UNSUPPORTED, k + ": block " + dims(c.block) + " exceeds the CUDA limits (1024 threads)");
  if (c.grid.x > 0x7fffffffu || c.grid.y > 65535 || c.grid.z > 65535)
    return Status::fail(Code::UNSUPPORTED, k + ": grid " + dims(c.grid) +
                                               " exceeds the CUDA limits (x < 2^31, y and z <= 65535); the tensor is too large");
  const size_t smem = c.static_smem + c.dyn_smem;
  if (c.static_smem > lim.smem_default || smem > lim.smem_optin)
    return Status::fail(Code::UNSUPPORTED, k + ": needs " + std::to_string(smem) + " bytes of shared memory per block; the device allows " +
                                               std::to_string(lim.smem_optin));
  return {};
}

// Checks `c`, then launches kernel<<<c.grid, c.block, c.dyn_smem, stream>>>(args...).
template <class... P, class... A>
inline Status launch(const char* name, void (*kernel)(P...), const LaunchCfg& c, const DeviceLimits& lim, stream_t stream,
                     A&&... args) {
  Status st = check_launch(name, c, lim);
  if (!st.ok) return st;
#if defined(__CUDACC__)
  if (c.static_smem + c.dyn_smem > lim.smem_default) {
    cudaError_t e = cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel), cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         int(c.dyn_smem));
    if (e != cudaSuccess)
      return Status::fail(Code::BACKEND, std::string(name) + ": cudaFuncSetAttribute failed: " + cudaGetErrorString(e));
  }
  kernel<<<c.grid, c.block, c.dyn_smem, stream>>>(std::forward<A>(args)...);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return Status::fail(Code::BACKEND, std::string(name) + ": launch failed: " + cudaGetErrorString(e));
#else
  (void)stream;
  ::cuemu::launch_named(name, kernel, c.grid, c.block, c.dyn_smem, std::forward<A>(args)...);
#endif
  return st;
}

inline Status need_int(int64_t v, const char* what, const char* op) {
  if (v < 0 || v > 0x7fffffffLL)
    return Status::fail(Code::UNSUPPORTED, std::string(op) + ": " + what + " = " + std::to_string(v) +
                                               " is outside the CUDA kernels' range [0, 2^31)", what);
  return {};
}

inline Status bad_dtype(const char* op, DType t, const char* arg) {
  return Status::fail(Code::DTYPE, std::string(op) + ": the CUDA kernel does not support dtype " + dtype_name(t), arg);
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// ---- device-side element conversions (f32 math, one rounding on store, round-to-nearest-even)
TY_DEV float to_f32(float v) { return v; }
TY_DEV float to_f32(__half v) { return __half2float(v); }
TY_DEV float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

template <class T>
struct Conv;
template <>
struct Conv<float> {
  static TY_DEV float from(float v) { return v; }
};
template <>
struct Conv<__half> {
  static TY_DEV __half from(float v) { return __float2half_rn(v); }
};
template <>
struct Conv<__nv_bfloat16> {
  static TY_DEV __nv_bfloat16 from(float v) { return __float2bfloat16_rn(v); }
};
template <class T>
TY_DEV T from_f32(float v) {
  return Conv<T>::from(v);
}

// `V` consecutive elements as one aligned memory access (a 16-byte vector load when V*sizeof(T)
// is 16).
template <class T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

// ---- warp / block reductions (full warps only) ------------------------------------------------
TY_DEV float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) {
    const float u = __shfl_xor_sync(0xffffffffu, v, o);
    v = u > v ? u : v;
  }
  return v;
}
TY_DEV float warp_min(float v) {
  for (int o = 16; o > 0; o >>= 1) {
    const float u = __shfl_xor_sync(0xffffffffu, v, o);
    v = u < v ? u : v;
  }
  return v;
}
TY_DEV double warp_sum(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Every thread of the block gets the block's total. `red` is __shared__ [NW] and must not be
// reused without a barrier. NW = warps in the block (<= 32).
template <int NW>
TY_DEV double block_sum(double v, double* red) {
  v = warp_sum(v);
  if (NW == 1) return v;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) red[warp] = v;
  __syncthreads();
  return warp_sum(lane < NW ? red[lane] : 0.0);
}
// Max (use_max) or min over the block, same contract as block_sum.
template <int NW>
TY_DEV float block_maxmin(float v, bool use_max, float* red) {
  v = use_max ? warp_max(v) : warp_min(v);
  if (NW == 1) return v;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) red[warp] = v;
  __syncthreads();
  const float fill = use_max ? -INFINITY : INFINITY;
  v = lane < NW ? red[lane] : fill;
  return use_max ? warp_max(v) : warp_min(v);
}

}  // namespace TY_CUDA_BUILD
}  // namespace cuda
}  // namespace ty
