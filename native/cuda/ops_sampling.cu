// Tachyon CUDA backends: the sampling family (argmax, top-k / top-p / min-p) (see launch.h).
// Compiled by nvcc for `cuda` and, through native/cuda/emu/ops_sampling.cpp, by g++ against cuemu.
#include "kernels/sampling.cuh"
#include "launch.h"

namespace ty {
namespace cuda {
inline namespace TY_CUDA_BUILD {

}  // namespace TY_CUDA_BUILD
}  // namespace cuda
}  // namespace ty
