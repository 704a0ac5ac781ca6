// Tachyon: float64 reference GEMM (see ref.h). Obviously correct, not fast.
#include <cmath>
#include <cstring>

#include "ref.h"

namespace ty::ref {

static double load_elem(const void* base, DType dt, int64_t idx) {
  if (dt == DType::f32) { float f; std::memcpy(&f, (const char*)base + idx * 4, 4); return f; }
  uint16_t h;
  std::memcpy(&h, (const char*)base + idx * 2, 2);
  return dt == DType::f16 ? f16_to_f32(h) : bf16_to_f32(h);
}

static void store_elem(void* base, DType dt, int64_t idx, double v) {
  float f = (float)v;  // double -> f32 rounds to nearest even
  if (dt == DType::f32) { std::memcpy((char*)base + idx * 4, &f, 4); return; }
  // Round the double directly to the 16-bit type: going through f32 first could round twice.
  uint16_t h;
  if (dt == DType::f16) {
    h = f32_to_f16(f);
    // Fix a possible double rounding: pick the f16 neighbour nearest to v.
    uint16_t alt[2] = {(uint16_t)(h - 1), (uint16_t)(h + 1)};
    for (uint16_t c : alt) {
      if ((c & 0x7c00) == 0x7c00 && (h & 0x7c00) != 0x7c00) continue;
      double dc = std::fabs(f16_to_f32(c) - v), dh = std::fabs(f16_to_f32(h) - v);
      if (dc < dh || (dc == dh && (c & 1) == 0 && (h & 1))) h = c;
    }
  } else {
    h = f32_to_bf16(f);
    uint16_t alt[2] = {(uint16_t)(h - 1), (uint16_t)(h + 1)};
    for (uint16_t c : alt) {
      if ((c & 0x7f80) == 0x7f80 && (h & 0x7f80) != 0x7f80) continue;
      double dc = std::fabs(bf16_to_f32(c) - v), dh = std::fabs(bf16_to_f32(h) - v);
      if (dc < dh || (dc == dh && (c & 1) == 0 && (h & 1))) h = c;
    }
  }
  std::memcpy((char*)base + idx * 2, &h, 2);
}

void gemm_ref(const GemmArgs& g, double* exact, double* mag) {
  for (int64_t i = 0; i < g.M; ++i)
    for (int64_t j = 0; j < g.N; ++j) {
      double acc = 0, abs_acc = 0;
      for (int64_t k = 0; k < g.K; ++k) {
        double a = load_elem(g.A, g.dtype, i * g.lda + k);
        double b = load_elem(g.B, g.dtype, g.b_trans ? j * g.ldb + k : k * g.ldb + j);
        acc += a * b;
        abs_acc += std::fabs(a * b);
      }
      double v = (double)g.alpha * acc, m = std::fabs((double)g.alpha) * abs_acc;
      if (g.beta != 0.f) {
        double c = (double)g.beta * load_elem(g.C, g.c_dtype, i * g.ldc + j);
        v += c;
        m += std::fabs(c);
      }
      if (g.bias) { v += g.bias[j]; m += std::fabs((double)g.bias[j]); }
      if (exact) exact[i * g.N + j] = v;
      if (mag) mag[i * g.N + j] = m;
      store_elem(g.C, g.c_dtype, i * g.ldc + j, v);
    }
}

}  // namespace ty::ref
