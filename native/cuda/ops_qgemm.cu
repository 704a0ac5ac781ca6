// Tachyon CUDA backends: the quantized GEMM family (W4A16 int4, W8A8 int8, fp8; grouped MoE GEMM, MoE permute/combine) (see launch.h).
// Compiled by nvcc for `cuda` and, through native/cuda/emu/ops_qgemm.cpp, by g++ against cuemu.
#include "kernels/gemm_w4a16.cuh"
#include "kernels/gemm_int8.cuh"
#include "kernels/gemm_fp8.cuh"
#include "kernels/moe.cuh"
#include "launch.h"

namespace ty {
namespace cuda {
inline namespace TY_CUDA_BUILD {

}  // namespace TY_CUDA_BUILD
}  // namespace cuda
}  // namespace ty
