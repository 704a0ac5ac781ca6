// cuda-emu: the paged-attention family compiled by g++ against cuemu (the source is shared with
// the `cuda` backend; see native/cuda/launch.h).
#include "../ops_attention.cu"
