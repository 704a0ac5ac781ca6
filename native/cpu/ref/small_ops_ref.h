// Tachyon: plain double-precision reference implementations of the small ops (binary,
// silu_mul, rms_norm, rope, softmax, embedding), for tests. Not an ISA variant.
//
// Each takes the kernel's own argument struct, reads its inputs (f32/f16/bf16 values are
// taken exactly), ignores its output pointer, and writes the exact-ish result, unrounded,
// as doubles to `out` (same element count and layout as the kernel's output; for rope,
// tokens*heads*head_dim, with the non-rotated dims copied). Tests compare the kernel
// output with these under |got - ref| <= atol + rtol*|ref|.
#pragma once
#include "tachyon/kernels.h"

namespace ty::ref {

void binary_ref(const BinaryArgs& a, double* out);
void silu_mul_ref(const SiluMulArgs& a, double* out);
void rms_norm_ref(const RmsNormArgs& a, double* out);
// theta_i = pos * freq_scale * freq_base^(-2i/rot_dim), all in double.
void rope_ref(const RopeArgs& a, double* out);
// softmax(scale*x) with y = scale*x in double; rows whose max y is -inf give zeros.
void softmax_ref(const SoftmaxArgs& a, double* out);
void embedding_ref(const EmbeddingArgs& a, double* out);

}  // namespace ty::ref
