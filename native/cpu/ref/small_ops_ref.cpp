// Tachyon: double-precision references for the small ops (see small_ops_ref.h).
// Deliberately naive: one element at a time, no SIMD, no threads.
#include "ref/small_ops_ref.h"

#include <cmath>

namespace ty::ref {
namespace {

double ld(DType t, const void* p, int64_t i) {
  switch (t) {
    case DType::f16: return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case DType::bf16: return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}

}  // namespace

void binary_ref(const BinaryArgs& a, double* out) {
  for (int64_t r = 0; r < a.rows; ++r)
    for (int64_t c = 0; c < a.cols; ++c) {
      const int64_t i = r * a.cols + c;
      const double x = ld(a.dtype, a.a, i), y = ld(a.dtype, a.b, a.b_row_bcast ? c : i);
      out[i] = a.op == BinaryOp::add ? x + y : x * y;
    }
}

void silu_mul_ref(const SiluMulArgs& a, double* out) {
  for (int64_t i = 0; i < a.n; ++i) {
    const double g = ld(a.dtype, a.gate, i), u = ld(a.dtype, a.up, i);
    out[i] = g / (1.0 + std::exp(-g)) * u;
  }
}

void rms_norm_ref(const RmsNormArgs& a, double* out) {
  for (int64_t r = 0; r < a.rows; ++r) {
    double ss = 0;
    for (int64_t c = 0; c < a.cols; ++c) {
      const double x = ld(a.dtype, a.x, r * a.cols + c);
      ss += x * x;
    }
    const double inv = 1.0 / std::sqrt(ss / (double)a.cols + (double)a.eps);
    for (int64_t c = 0; c < a.cols; ++c)
      out[r * a.cols + c] = ld(a.dtype, a.x, r * a.cols + c) * inv * (a.weight ? (double)a.weight[c] : 1.0);
  }
}

void rope_ref(const RopeArgs& a, double* out) {
  const int64_t half = a.rot_dim / 2;
  for (int64_t t = 0; t < a.tokens; ++t)
    for (int64_t h = 0; h < a.heads; ++h) {
      const int64_t base = (t * a.heads + h) * a.head_dim;
      for (int64_t d = 0; d < a.head_dim; ++d) out[base + d] = ld(a.dtype, a.x, base + d);
      for (int64_t i = 0; i < half; ++i) {
        const double theta = (double)a.positions[t] * (double)a.freq_scale *
                             std::pow((double)a.freq_base, -2.0 * (double)i / (double)a.rot_dim);
        const int64_t ia = a.neox ? i : 2 * i, ib = a.neox ? i + half : 2 * i + 1;
        const double x0 = ld(a.dtype, a.x, base + ia), x1 = ld(a.dtype, a.x, base + ib);
        out[base + ia] = x0 * std::cos(theta) - x1 * std::sin(theta);
        out[base + ib] = x0 * std::sin(theta) + x1 * std::cos(theta);
      }
    }
}

void softmax_ref(const SoftmaxArgs& a, double* out) {
  for (int64_t r = 0; r < a.rows; ++r) {
    double* o = out + r * a.cols;
    double m = -INFINITY;
    for (int64_t c = 0; c < a.cols; ++c) m = std::fmax(m, (double)a.scale * ld(a.dtype, a.x, r * a.cols + c));
    if (m == -INFINITY) {
      for (int64_t c = 0; c < a.cols; ++c) o[c] = 0;
      continue;
    }
    double sum = 0;
    for (int64_t c = 0; c < a.cols; ++c) sum += (o[c] = std::exp((double)a.scale * ld(a.dtype, a.x, r * a.cols + c) - m));
    for (int64_t c = 0; c < a.cols; ++c) o[c] /= sum;
  }
}

void embedding_ref(const EmbeddingArgs& a, double* out) {
  for (int64_t t = 0; t < a.tokens; ++t)
    for (int64_t d = 0; d < a.dim; ++d) out[t * a.dim + d] = ld(a.table_dtype, a.table, (int64_t)a.ids[t] * a.dim + d);
}

}  // namespace ty::ref
