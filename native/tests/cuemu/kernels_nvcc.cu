// Compile-only check: the test kernels (and so cuemu.h / ptx.cuh) build with nvcc for real GPUs.
#include "kernels.cuh"

namespace cuemu_test {
template __global__ void mma_layout_kernel<0>(const unsigned char*, const unsigned char*, const uint32_t*, uint32_t*);
template __global__ void mma_layout_kernel<1>(const unsigned char*, const unsigned char*, const uint32_t*, uint32_t*);
template __global__ void mma_layout_kernel<2>(const unsigned char*, const unsigned char*, const uint32_t*, uint32_t*);
template __global__ void mma_layout_kernel<3>(const unsigned char*, const unsigned char*, const uint32_t*, uint32_t*);
template __global__ void mma_layout_kernel<4>(const unsigned char*, const unsigned char*, const uint32_t*, uint32_t*);
#define LDM(V) template __global__ void ldmatrix_layout_kernel<V>(const uint16_t*, const uint16_t*, float*);
LDM(0) LDM(1) LDM(2) LDM(3) LDM(4) LDM(5) LDM(6) LDM(7)
template __global__ void gemm_f16_kernel<true>(const __half*, const __half*, float*, int, int, int);
template __global__ void gemm_f16_kernel<false>(const __half*, const __half*, float*, int, int, int);
template __global__ void reduce_sum_kernel<true>(const float*, int, float*);
template __global__ void reduce_sum_kernel<false>(const float*, int, float*);
template __global__ void neighbor_kernel<true>(const float*, float*);
template __global__ void neighbor_kernel<false>(const float*, float*);
template __global__ void cp_async_kernel<true>(const float*, float*);
template __global__ void cp_async_kernel<false>(const float*, float*);
}  // namespace cuemu_test
