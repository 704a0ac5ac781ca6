// Tachyon CUDA backend: device discovery (the rest arrives with the CUDA backend issue).
//
// Linked against the static CUDA runtime, which loads libcuda.so lazily: a binary built
// with CUDA still loads and runs its CPU backend on a machine with no GPU and no driver.
#include <cuda_runtime.h>

#include <cstdio>
#include <cstring>

#include "tachyon/cuda_probe.h"

// A trivial kernel so every arch in the list really emits code (and ptxas -v reports it).
__global__ void ty_cuda_touch(int* p) {
  if (p) p[threadIdx.x] = (int)threadIdx.x;
}

extern "C" int ty_cuda_device_count(char* reason, size_t reason_len) {
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    if (reason && reason_len) std::snprintf(reason, reason_len, "%s (%s)", cudaGetErrorString(err), cudaGetErrorName(err));
    cudaGetLastError();  // clear the sticky error state
    return 0;
  }
  if (n == 0 && reason && reason_len) std::snprintf(reason, reason_len, "no CUDA device found");
  return n;
}

extern "C" const char* ty_cuda_archs(void) {
#ifdef TY_CUDA_ARCHS
  return TY_CUDA_ARCHS;
#else
  return "";
#endif
}
