// cuda-emu: the sampling family compiled by g++ against cuemu (the source is shared with the `cuda`
// backend; see native/cuda/launch.h).
#include "../ops_sampling.cu"
