// Tachyon: the framework-free kernel API of the CPU backend (first ops).
//
// Conventions
// - All tensors are dense and row-major; a leading dimension (ld*) is in elements.
// - Activations may be f32, f16 or bf16; arithmetic is f32 (accumulate in f32), and the
//   result is rounded once to the output dtype (round-to-nearest-even).
// - Argument validation (shapes, dtypes, sizes) happens before these are called, in
//   native/cpu/ops.cpp; kernels may assume valid arguments.
// - Every kernel has the ISA-variant signature `void name(const XArgs&, Parallel&)` and
//   is declared in all three variant namespaces (scalar, avx2, avx512).
#pragma once
#include <cstdint>

#include "tachyon/dtype.h"
#include "tachyon/parallel.h"

namespace ty {

// C[M,N] = alpha * A[M,K] · op(B) + beta * C + bias[N]
//   op(B) = Bᵀ with B stored [N,K] (b_trans = true: the nn.Linear / GGUF weight layout)
//   op(B) = B  with B stored [K,N] (b_trans = false)
// A and B share `dtype` (f32, f16 or bf16). C is `c_dtype` (f32, f16 or bf16).
// beta != 0 reads C (in c_dtype) before writing it. bias is f32 or null.
struct GemmArgs {
  DType dtype;
  DType c_dtype;
  int64_t M, N, K;
  const void* A; int64_t lda;
  const void* B; int64_t ldb;
  bool b_trans;
  void* C; int64_t ldc;
  const float* bias;
  float alpha, beta;
};

// Elementwise binary op over `rows` x `cols`. b is either the same shape (b_row_bcast =
// false) or a single row of `cols` broadcast over every row (b_row_bcast = true).
// a, b and out share `dtype`. out may alias a or b.
enum class BinaryOp : int { add = 0, mul = 1 };
struct BinaryArgs {
  BinaryOp op;
  DType dtype;
  int64_t rows, cols;
  const void* a;
  const void* b;
  bool b_row_bcast;
  void* out;
};

// out[i] = silu(gate[i]) * up[i], silu(x) = x / (1 + exp(-x)). All share `dtype`.
struct SiluMulArgs {
  DType dtype;
  int64_t n;
  const void* gate;
  const void* up;
  void* out;
};

// out[r,:] = x[r,:] / sqrt(mean(x[r,:]^2) + eps) * weight[:]  (weight may be null = 1).
// x and out share `dtype`; weight is f32. out may alias x.
struct RmsNormArgs {
  DType dtype;
  int64_t rows, cols;
  const void* x;
  const float* weight;
  float eps;
  void* out;
};

// Rotary position embedding, in place on x[tokens, heads, head_dim].
// Only the first `rot_dim` (even, <= head_dim) dims of each head rotate.
// theta_i = pos * freq_base^(-2i/rot_dim) * freq_scale (linear scaling),
//   neox = false: pairs (2i, 2i+1)             (GPT-J / llama.cpp "normal")
//   neox = true:  pairs (i, i + rot_dim/2)     (GPT-NeoX)
// positions: i32[tokens].
struct RopeArgs {
  DType dtype;
  int64_t tokens, heads, head_dim, rot_dim;
  void* x;
  const int32_t* positions;
  float freq_base, freq_scale;
  bool neox;
};

// Row softmax: out[r,:] = softmax(scale * x[r,:]). Rows that are all -inf give zeros.
// x and out share `dtype`; out may alias x.
struct SoftmaxArgs {
  DType dtype;
  int64_t rows, cols;
  const void* x;
  float scale;
  void* out;
};

// Embedding gather: out[t,:] = table[ids[t],:], table in `table_dtype` (f32/f16/bf16),
// out in `out_dtype` (f32/f16/bf16). ids are i32 and already range-checked.
struct EmbeddingArgs {
  DType table_dtype, out_dtype;
  int64_t vocab, dim, tokens;
  const void* table;
  const int32_t* ids;
  void* out;
};

}  // namespace ty
