// Tachyon: quantized weight formats — quantize / dequantize, plain <-> repacked, GGUF
// block importers and argument validation. Not an ISA variant: runs once at load.
// Byte layouts: docs/formats.md and native/include/tachyon/quant.h.
#include "tachyon/quant.h"

#include <cmath>
#include <cstring>
#include <string>

#include "tachyon/error.h"

namespace ty {
namespace {

float load_s(const void* p, size_t i, DType t) {
  if (t == DType::f16) return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
  return static_cast<const float*>(p)[i];
}
// Stores v in the scale dtype and returns the value actually stored.
float store_s(void* p, size_t i, DType t, float v) {
  if (t == DType::f16) {
    uint16_t h = f32_to_f16(v);
    if ((h & 0x7c00) == 0x7c00)
      throw Error(Code::INVALID_ARG, "quantize: a scale or min (" + std::to_string(v) +
                                         ") overflows f16; use f32 scales", "weights");
    static_cast<uint16_t*>(p)[i] = h;
    return f16_to_f32(h);
  }
  static_cast<float*>(p)[i] = v;
  return v;
}

bool is_int4(const QuantFormat& f) { return f.kind == QKind::int4; }

// Code of element (n,k) in the plain layout, as a signed integer value
// (int8: q; int4 sym: q in [-8,7]; int4 asym: q in [0,15]).
int get_q(const QPlain& p, int64_t n, int64_t k) {
  if (!is_int4(p.fmt)) return static_cast<const int8_t*>(p.q)[n * p.K + k];
  uint8_t byte = static_cast<const uint8_t*>(p.q)[n * (p.K / 2) + k / 2];
  int v = (k & 1) ? (byte >> 4) : (byte & 15);
  if (!p.fmt.asym) v = (v ^ 8) - 8;  // sign-extend the nibble
  return v;
}
void set_q(const QPlain& p, int64_t n, int64_t k, int v) {
  if (!is_int4(p.fmt)) { static_cast<int8_t*>(p.q)[n * p.K + k] = (int8_t)v; return; }
  uint8_t* b = static_cast<uint8_t*>(p.q) + n * (p.K / 2) + k / 2;
  uint8_t nib = (uint8_t)(v & 15);
  *b = (k & 1) ? (uint8_t)((*b & 0x0f) | (nib << 4)) : (uint8_t)((*b & 0xf0) | nib);
}

// Value of code q with step d and min m, exactly as dequantize() computes it.
float deq(const QuantFormat& f, int q, float d, float m) {
  float v = (float)q * d;
  if (is_int4(f) && f.asym) v = v + m;  // separate statements: never fused
  return v;
}

}  // namespace

const char* q_format_error(const QuantFormat& f, int64_t N, int64_t K) {
  if (f.kind != QKind::int8 && f.kind != QKind::int4) return "unknown quantized kind";
  if (f.scale_dtype != DType::f32 && f.scale_dtype != DType::f16)
    return "scale dtype must be f32 or f16";
  if (N < 1 || K < 1) return "N and K must be positive";
  if (f.group == 0) {
    if (f.kind == QKind::int4) return "int4 needs a group size (32, 64 or 128)";
  } else if (f.group != 32 && f.group != 64 && f.group != 128) {
    return "group must be 32, 64 or 128 (or 0 = per channel for int8)";
  } else if (K % f.group != 0) {
    return "group size must divide K";
  }
  if (f.asym && f.kind != QKind::int4) return "asymmetric (min) is only for int4";
  // The exact int32 accumulation bounds |sum(u*qa)| <= 255*127*block_len (and the true
  // dot product 128*127*K); 65536 keeps both far below 2^31.
  if (K > 65536) return "K must be <= 65536";
  return nullptr;
}

void q_format_check(const QuantFormat& f, int64_t N, int64_t K) {
  const char* e = q_format_error(f, N, K);
  if (!e) return;
  Code c = Code::INVALID_ARG;
  if (std::strstr(e, "divide") || std::strstr(e, "positive") || std::strstr(e, "<=")) c = Code::SHAPE;
  if (std::strstr(e, "dtype")) c = Code::DTYPE;
  throw Error(c, std::string("quantized weights: ") + e + " (N=" + std::to_string(N) +
                     ", K=" + std::to_string(K) + ", group=" + std::to_string(f.group) + ")",
              "weights");
}

QuantStats quantize(const float* w, int64_t ldw, const QPlain& out) {
  const QuantFormat& f = out.fmt;
  q_format_check(f, out.N, out.K);
  const int64_t N = out.N, K = out.K;
  const int64_t G = f.group > 0 ? f.group : K;  // per-channel: one block of all K
  const int64_t nb = q_num_blocks(f, K);
  const bool i4 = is_int4(f), asym = i4 && f.asym;
  const int qmin = i4 ? (asym ? 0 : -8) : -127, qmax = i4 ? (asym ? 15 : 7) : 127;
  QuantStats st;
  double sum_sq = 0;
  for (int64_t n = 0; n < N; ++n) {
    const float* row = w + n * ldw;
    for (int64_t k = 0; k < K; ++k)
      if (!std::isfinite(row[k]))
        throw Error(Code::INVALID_ARG, "quantize: weight (" + std::to_string(n) + ", " + std::to_string(k) +
                                           ") is not finite", "weights");
    for (int64_t b = 0; b < nb; ++b) {
      const float* x = row + b * G;
      float d, m = 0;
      if (!i4) {
        float amax = 0;
        for (int64_t i = 0; i < G; ++i) amax = std::fmax(amax, std::fabs(x[i]));
        d = store_s(out.scales, (size_t)(n * nb + b), f.scale_dtype, amax / 127.0f);
      } else if (!asym) {
        float vmax = 0, amax = 0;
        for (int64_t i = 0; i < G; ++i)
          if (std::fabs(x[i]) > amax) { amax = std::fabs(x[i]); vmax = x[i]; }
        d = store_s(out.scales, (size_t)(n * nb + b), f.scale_dtype, vmax / -8.0f);
      } else {
        float lo = x[0], hi = x[0];
        for (int64_t i = 1; i < G; ++i) { lo = std::fmin(lo, x[i]); hi = std::fmax(hi, x[i]); }
        m = store_s(out.mins, (size_t)(n * nb + b), f.scale_dtype, lo);
        d = store_s(out.scales, (size_t)(n * nb + b), f.scale_dtype, (hi - lo) / 15.0f);
      }
      const float id = d != 0 ? 1.0f / d : 0.0f;
      const double ad = std::fabs((double)d);
      for (int64_t i = 0; i < G; ++i) {
        float t = asym ? (x[i] - m) * id : x[i] * id;
        float r = std::nearbyint(t);  // round half to even (default rounding mode)
        int q = (int)std::fmax((float)qmin, std::fmin((float)qmax, r));
        if ((float)q != r) st.clamped++;
        set_q(out, n, b * G + i, q);
        double err = (double)deq(f, q, d, m) - (double)x[i];
        sum_sq += err * err;
        st.max_abs_err = std::fmax(st.max_abs_err, std::fabs(err));
        if (ad > 0) st.max_err_step = std::fmax(st.max_err_step, std::fabs(err) / ad);
      }
    }
  }
  st.rms_err = std::sqrt(sum_sq / (double)(N * K));
  return st;
}

void dequantize(const QPlain& in, float* w, int64_t ldw) {
  const QuantFormat& f = in.fmt;
  const int64_t G = f.group > 0 ? f.group : in.K, nb = q_num_blocks(f, in.K);
  const bool asym = is_int4(f) && f.asym;
  for (int64_t n = 0; n < in.N; ++n)
    for (int64_t b = 0; b < nb; ++b) {
      const float d = load_s(in.scales, (size_t)(n * nb + b), f.scale_dtype);
      const float m = asym ? load_s(in.mins, (size_t)(n * nb + b), f.scale_dtype) : 0.0f;
      for (int64_t i = 0; i < G; ++i) w[n * ldw + b * G + i] = deq(f, get_q(in, n, b * G + i), d, m);
    }
}

void q_repack(const QPlain& in, uint8_t* out) {
  const QuantFormat& f = in.fmt;
  q_format_check(f, in.N, in.K);
  const QPackedLayout L = q_packed_layout(f, in.N, in.K);
  const int64_t N = in.N, K = in.K, bl = L.block_len;
  const size_t se = q_scale_elem_bytes(f);
  const bool i4 = is_int4(f), asym = i4 && f.asym;
  std::memset(out, 0, L.total);
  for (int64_t p = 0; p < L.panels; ++p) {
    uint8_t* P = out + p * L.panel_bytes;
    for (int c = 0; c < kQPanel; ++c) {
      const int64_t n = p * kQPanel + c;
      for (int64_t b = 0; b < L.nb; ++b) {
        uint8_t* W = P + b * L.wblock_bytes;
        for (int64_t kl = 0; kl < bl; ++kl) {
          const int64_t k = b * bl + kl;
          // Padding (channel n >= N or k >= K) encodes the weight 0.
          int q = (n < N && k < K) ? get_q(in, n, k) : 0;
          if (!i4) {
            W[(kl / 4) * 64 + 4 * c + (kl & 3)] = (uint8_t)(q + 128);
          } else {
            uint8_t u = (uint8_t)(asym ? q : q + 8);
            if (n >= N) u = asym ? 0 : 8;
            uint8_t* byte = W + (kl / 8) * 64 + 4 * c + (kl & 3);
            if ((kl & 7) < 4) *byte = (uint8_t)((*byte & 0xf0) | u);
            else *byte = (uint8_t)((*byte & 0x0f) | (u << 4));
          }
        }
        if (n < N) {
          std::memcpy(P + L.scale_off + (b * kQPanel + c) * se,
                      static_cast<const uint8_t*>(in.scales) + (n * L.nb + b) * se, se);
          if (asym)
            std::memcpy(P + L.min_off + (b * kQPanel + c) * se,
                        static_cast<const uint8_t*>(in.mins) + (n * L.nb + b) * se, se);
        }
      }
    }
  }
}

void q_unpack(const QPacked& in, const QPlain& out) {
  const QuantFormat& f = in.fmt;
  const QPackedLayout L = q_packed_layout(f, in.N, in.K);
  const size_t se = q_scale_elem_bytes(f);
  const bool i4 = is_int4(f), asym = i4 && f.asym;
  for (int64_t n = 0; n < in.N; ++n) {
    const uint8_t* P = in.data + (n / kQPanel) * L.panel_bytes;
    const int c = (int)(n % kQPanel);
    for (int64_t k = 0; k < in.K; ++k) {
      const int64_t b = k / L.block_len, kl = k % L.block_len;
      const uint8_t* W = P + b * L.wblock_bytes;
      int q;
      if (!i4) {
        q = (int)W[(kl / 4) * 64 + 4 * c + (kl & 3)] - 128;
      } else {
        uint8_t byte = W[(kl / 8) * 64 + 4 * c + (kl & 3)];
        int u = (kl & 7) < 4 ? (byte & 15) : (byte >> 4);
        q = asym ? u : u - 8;
      }
      set_q(out, n, k, q);
    }
    for (int64_t b = 0; b < L.nb; ++b) {
      std::memcpy(static_cast<uint8_t*>(out.scales) + (n * L.nb + b) * se,
                  P + L.scale_off + (b * kQPanel + c) * se, se);
      if (asym)
        std::memcpy(static_cast<uint8_t*>(out.mins) + (n * L.nb + b) * se,
                    P + L.min_off + (b * kQPanel + c) * se, se);
    }
  }
}

// ---- GGUF ------------------------------------------------------------------------------
// ggml blocks (32 elements each, little-endian, no padding):
//   block_q4_0 { f16 d; uint8 qs[16]; }         18 bytes; x[j] = d * ((qs[j] & 15) - 8),
//                                                          x[j+16] = d * ((qs[j] >> 4) - 8)
//   block_q4_1 { f16 d; f16 m; uint8 qs[16]; }  20 bytes; x[j] = d * (qs[j] & 15) + m, ...
//   block_q8_0 { f16 d; int8 qs[32]; }          34 bytes; x[j] = d * qs[j]
// Note the element order inside a 4-bit block: element j and j+16 share byte j. Our plain
// int4 layout puts elements 2i and 2i+1 in one byte, so the import reorders nibbles.

static int64_t gguf_block_bytes(int32_t t) {
  switch (t) {
    case kGgmlQ4_0: return 18;
    case kGgmlQ4_1: return 20;
    case kGgmlQ8_0: return 34;
  }
  return 0;
}

QuantFormat gguf_native_format(int32_t t) {
  QuantFormat f;
  f.group = 32;
  f.scale_dtype = DType::f16;
  switch (t) {
    case kGgmlQ4_0: f.kind = QKind::int4; f.asym = false; return f;
    case kGgmlQ4_1: f.kind = QKind::int4; f.asym = true; return f;
    case kGgmlQ8_0: f.kind = QKind::int8; f.asym = false; return f;
  }
  throw Error(Code::UNSUPPORTED, "gguf import: unsupported ggml type " + std::to_string(t) +
                                     " (supported: Q4_0=2, Q4_1=3, Q8_0=8)", "type");
}

size_t gguf_row_bytes(int32_t t, int64_t K) {
  if (!gguf_block_bytes(t)) gguf_native_format(t);  // throws
  return (size_t)((K / 32) * gguf_block_bytes(t));
}

void gguf_import(int32_t t, const void* blocks, size_t bytes, int64_t N, int64_t K,
                 const QPlain& out) {
  const QuantFormat want = gguf_native_format(t);
  if (K % 32 != 0 || K < 32 || N < 1)
    throw Error(Code::SHAPE, "gguf import: K must be a positive multiple of 32 and N positive (N=" +
                                 std::to_string(N) + ", K=" + std::to_string(K) + ")", "shape");
  if (bytes != gguf_row_bytes(t, K) * (size_t)N)
    throw Error(Code::SHAPE, "gguf import: expected " + std::to_string(gguf_row_bytes(t, K) * (size_t)N) +
                                 " bytes for " + std::to_string(N) + "x" + std::to_string(K) +
                                 " but received " + std::to_string(bytes), "blocks");
  if (out.fmt.kind != want.kind || out.fmt.group != 32 || out.fmt.asym != want.asym ||
      out.fmt.scale_dtype != DType::f16 || out.N != N || out.K != K)
    throw Error(Code::INVALID_ARG, "gguf import: output must be gguf_native_format(type) of the same shape", "out");
  const int64_t bb = gguf_block_bytes(t), nb = K / 32;
  const uint8_t* src = static_cast<const uint8_t*>(blocks);
  uint16_t* sc = static_cast<uint16_t*>(out.scales);
  uint16_t* mn = static_cast<uint16_t*>(out.mins);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* blk = src + (n * nb + b) * bb;
      std::memcpy(&sc[n * nb + b], blk, 2);  // f16 bits copied verbatim
      if (t == kGgmlQ8_0) {
        std::memcpy(static_cast<int8_t*>(out.q) + n * K + b * 32, blk + 2, 32);
        continue;
      }
      const uint8_t* qs = blk + (t == kGgmlQ4_1 ? 4 : 2);
      if (t == kGgmlQ4_1) std::memcpy(&mn[n * nb + b], blk + 2, 2);
      uint8_t* dst = static_cast<uint8_t*>(out.q) + n * (K / 2) + b * 16;
      for (int i = 0; i < 16; ++i) {
        // plain byte i holds elements 2i (low) and 2i+1 (high) of the block
        const int e0 = 2 * i, e1 = 2 * i + 1;
        int u0 = e0 < 16 ? (qs[e0] & 15) : (qs[e0 - 16] >> 4);
        int u1 = e1 < 16 ? (qs[e1] & 15) : (qs[e1 - 16] >> 4);
        if (t == kGgmlQ4_0) { u0 = (u0 - 8) & 15; u1 = (u1 - 8) & 15; }  // signed nibble q-8
        dst[i] = (uint8_t)(u0 | (u1 << 4));
      }
    }
}

// ---- qgemm validation --------------------------------------------------------------------

void qgemm_check(const QGemmArgs& a, int64_t K_of_A) {
  q_format_check(a.w.fmt, a.w.N, a.w.K);
  auto fail = [](Code c, const std::string& m, const char* arg) { throw Error(c, "qgemm: " + m, arg); };
  auto act = [](DType t) { return t == DType::f32 || t == DType::f16 || t == DType::bf16; };
  if (!a.w.data) fail(Code::INVALID_ARG, "weights have no data", "weights");
  if (((uintptr_t)a.w.data & 63) != 0) fail(Code::INVALID_ARG, "repacked weights must be 64-byte aligned", "weights");
  if (K_of_A != a.w.K)
    fail(Code::SHAPE, "A has K=" + std::to_string(K_of_A) + " but the weights have K=" + std::to_string(a.w.K), "A");
  if (!act(a.a_dtype)) fail(Code::DTYPE, std::string("expected f32, f16 or bf16 for A but received ") + dtype_name(a.a_dtype), "A");
  if (!act(a.c_dtype)) fail(Code::DTYPE, std::string("expected f32, f16 or bf16 for C but received ") + dtype_name(a.c_dtype), "C");
  if (a.M < 1) fail(Code::SHAPE, "expected positive integer for M but received " + std::to_string(a.M), "M");
  if (!a.A || !a.C) fail(Code::INVALID_ARG, "A and C must not be null", !a.A ? "A" : "C");
  if (a.lda < a.w.K) fail(Code::SHAPE, "lda (" + std::to_string(a.lda) + ") < K (" + std::to_string(a.w.K) + ")", "lda");
  if (a.ldc < a.w.N) fail(Code::SHAPE, "ldc (" + std::to_string(a.ldc) + ") < N (" + std::to_string(a.w.N) + ")", "ldc");
  if (a.residual && a.ldr < a.w.N) fail(Code::SHAPE, "ldr (" + std::to_string(a.ldr) + ") < N", "ldr");
  if (a.residual && a.residual != a.C) {
    // Partial overlap between residual and C is not supported (exact alias is).
    const char* r0 = static_cast<const char*>(a.residual);
    const char* c0 = static_cast<const char*>(a.C);
    const size_t es = dtype_bytes(a.c_dtype, 1);
    const char* r1 = r0 + ((a.M - 1) * a.ldr + a.w.N) * es;
    const char* c1 = c0 + ((a.M - 1) * a.ldc + a.w.N) * es;
    if (r0 < c1 && c0 < r1) fail(Code::INVALID_ARG, "residual overlaps C without being C", "residual");
  }
  if (a.residual == a.C && a.residual && a.ldr != a.ldc)
    fail(Code::INVALID_ARG, "residual aliases C with a different row stride", "ldr");
}

}  // namespace ty
