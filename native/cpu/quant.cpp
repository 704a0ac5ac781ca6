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

// ---- K-quants (q4k / q6k) ---------------------------------------------------------------

// Code of element (n, k): q4k unsigned nibble 0..15, q6k int8 -32..31.
int kq_get(const QPlain& p, int64_t n, int64_t k) {
  if (p.fmt.kind == QKind::q6k) return static_cast<const int8_t*>(p.q)[n * p.K + k];
  const uint8_t byte = static_cast<const uint8_t*>(p.q)[n * (p.K / 2) + k / 2];
  return (k & 1) ? (byte >> 4) : (byte & 15);
}
void kq_set(const QPlain& p, int64_t n, int64_t k, int v) {
  if (p.fmt.kind == QKind::q6k) { static_cast<int8_t*>(p.q)[n * p.K + k] = (int8_t)v; return; }
  uint8_t* b = static_cast<uint8_t*>(p.q) + n * (p.K / 2) + k / 2;
  const uint8_t nib = (uint8_t)(v & 15);
  *b = (k & 1) ? (uint8_t)((*b & 0x0f) | (nib << 4)) : (uint8_t)((*b & 0xf0) | nib);
}
// Sub-block parameters of sub-block j of row n, as dequantize() uses them:
// value(q) = step * q - mm   (q6k: mm = 0). Evaluated exactly as ggml does.
struct KqSub { float step, mm; };
KqSub kq_sub(const QPlain& p, int64_t n, int64_t j) {
  const int64_t ns = p.K / q_sub_len(p.fmt), nsb = p.K / kQSuper;
  const int64_t sb = j * q_sub_len(p.fmt) / kQSuper;
  const float d = f16_to_f32(static_cast<const uint16_t*>(p.super_d)[n * nsb + sb]);
  KqSub r;
  if (p.fmt.kind == QKind::q6k) {
    const int sc = static_cast<const int8_t*>(p.scales)[n * ns + j];
    r.step = d * (float)sc;
    r.mm = 0.0f;
  } else {
    const float dmin = f16_to_f32(static_cast<const uint16_t*>(p.super_dmin)[n * nsb + sb]);
    const int sc = static_cast<const uint8_t*>(p.scales)[n * ns + j];
    const int m = static_cast<const uint8_t*>(p.mins)[n * ns + j];
    r.step = d * (float)sc;
    r.mm = dmin * (float)m;
  }
  return r;
}
float kq_value(const KqSub& s, int q) {
  const float t = s.step * (float)q;  // separate statements: never fused
  return t - s.mm;
}

QuantStats kq_quantize(const float* w, int64_t ldw, const QPlain& out) {
  const QuantFormat& f = out.fmt;
  const bool q4 = f.kind == QKind::q4k;
  const int64_t N = out.N, K = out.K, L = q_sub_len(f), ns = K / L, nsb = K / kQSuper, per = kQSuper / L;
  const int qmin = q4 ? 0 : -32, qmax = q4 ? 15 : 31;
  QuantStats st;
  double sum_sq = 0;
  for (int64_t n = 0; n < N; ++n) {
    const float* row = w + n * ldw;
    for (int64_t k = 0; k < K; ++k)
      if (!std::isfinite(row[k]))
        throw Error(Code::INVALID_ARG, "quantize: weight (" + std::to_string(n) + ", " + std::to_string(k) +
                                           ") is not finite", "weights");
    for (int64_t b = 0; b < nsb; ++b) {
      // 1. per sub-block real-valued scale (and min), 2. the f16 super-block scales,
      // 3. integer sub-scales against the stored super scales.
      float s[16], mn[16], top[16];
      float smax = 0, sabs = 0, nmax = 0;
      for (int64_t j = 0; j < per; ++j) {
        const float* x = row + b * kQSuper + j * L;
        if (q4) {
          float lo = 0, hi = x[0];
          for (int64_t i = 0; i < L; ++i) { lo = std::fmin(lo, x[i]); hi = std::fmax(hi, x[i]); }
          s[j] = (hi - lo) / 15.0f;
          mn[j] = -lo;
          top[j] = hi;
          smax = std::fmax(smax, s[j]);
          nmax = std::fmax(nmax, mn[j]);
        } else {
          float v = 0, a = 0;
          for (int64_t i = 0; i < L; ++i)
            if (std::fabs(x[i]) > a) { a = std::fabs(x[i]); v = x[i]; }
          s[j] = v / -32.0f;
          top[j] = v;
          if (std::fabs(s[j]) > sabs) { sabs = std::fabs(s[j]); smax = s[j]; }
        }
      }
      uint16_t* sd = static_cast<uint16_t*>(out.super_d) + n * nsb + b;
      const float dv = q4 ? smax / 63.0f : smax / -128.0f;
      *sd = f32_to_f16(dv);
      if ((*sd & 0x7c00) == 0x7c00)
        throw Error(Code::INVALID_ARG, "quantize: a super-block scale (" + std::to_string(dv) + ") overflows f16", "weights");
      const float d = f16_to_f32(*sd);
      float dmin = 0;
      if (q4) {
        uint16_t* sm = static_cast<uint16_t*>(out.super_dmin) + n * nsb + b;
        *sm = f32_to_f16(nmax / 63.0f);
        if ((*sm & 0x7c00) == 0x7c00)
          throw Error(Code::INVALID_ARG, "quantize: a super-block min scale (" + std::to_string(nmax / 63.0f) +
                                             ") overflows f16", "weights");
        dmin = f16_to_f32(*sm);
      }
      for (int64_t j = 0; j < per; ++j) {
        const int64_t js = b * per + j;
        // Nearest integer sub-scale / min, moved one step outwards when the nearest one
        // would clip the sub-block's extreme (min / max for q4k, v_j for q6k).
        if (q4) {
          float m = dmin > 0 ? std::fmin(63.0f, std::fmax(0.0f, std::nearbyint(mn[j] / dmin))) : 0.0f;
          if (m < 63.0f && dmin * m < mn[j]) m += 1.0f;
          const float need = (top[j] + dmin * m) / 15.0f;  // step that reaches the max with q = 15
          float sc = d > 0 ? std::fmin(63.0f, std::fmax(0.0f, std::nearbyint(need / d))) : 0.0f;
          if (d > 0 && sc < 63.0f && d * sc < need) sc += 1.0f;
          static_cast<uint8_t*>(out.scales)[n * ns + js] = (uint8_t)sc;
          static_cast<uint8_t*>(out.mins)[n * ns + js] = (uint8_t)m;
        } else {
          float sc = d != 0 ? std::fmin(127.0f, std::fmax(-128.0f, std::nearbyint(s[j] / d))) : 0.0f;
          // v_j maps to -32 * (s_j/d) / sc: keep |sc| >= |s_j/d| so it stays within -32
          if (d != 0 && std::fabs(d * sc * 32.0f) < std::fabs(top[j])) sc += (s[j] / d > 0 ? 1.0f : -1.0f);
          sc = std::fmin(127.0f, std::fmax(-128.0f, sc));
          static_cast<int8_t*>(out.scales)[n * ns + js] = (int8_t)sc;
        }
        const KqSub sub = kq_sub(out, n, js);
        const double ad = std::fabs((double)sub.step);
        const float* x = row + js * L;
        for (int64_t i = 0; i < L; ++i) {
          int q = 0;
          if (sub.step != 0) {
            const float r = std::nearbyint((x[i] + sub.mm) / sub.step);
            if (r < (float)qmin || r > (float)qmax) st.clamped++;
            q = (int)std::fmax((float)qmin, std::fmin((float)qmax, r));
            // The division rounds: settle on the truly nearest code among the neighbours.
            for (int c = q - 1; c <= q + 1; c += 2)
              if (c >= qmin && c <= qmax &&
                  std::fabs((double)kq_value(sub, c) - x[i]) < std::fabs((double)kq_value(sub, q) - x[i]))
                q = c;
          }
          kq_set(out, n, js * L + i, q);
          const double err = (double)kq_value(sub, q) - (double)x[i];
          sum_sq += err * err;
          st.max_abs_err = std::fmax(st.max_abs_err, std::fabs(err));
          if (ad > 0) st.max_err_step = std::fmax(st.max_err_step, std::fabs(err) / ad);
        }
      }
    }
  }
  st.rms_err = std::sqrt(sum_sq / (double)(N * K));
  return st;
}

void kq_dequantize(const QPlain& in, float* w, int64_t ldw) {
  const int64_t L = q_sub_len(in.fmt), ns = in.K / L;
  for (int64_t n = 0; n < in.N; ++n)
    for (int64_t j = 0; j < ns; ++j) {
      const KqSub sub = kq_sub(in, n, j);
      for (int64_t i = 0; i < L; ++i) w[n * ldw + j * L + i] = kq_value(sub, kq_get(in, n, j * L + i));
    }
}

void kq_repack(const QPlain& in, uint8_t* out) {
  const QuantFormat& f = in.fmt;
  const bool q4 = f.kind == QKind::q4k;
  const QPackedLayout L = q_packed_layout(f, in.N, in.K);
  const int64_t N = in.N, K = in.K, SL = q_sub_len(f), ns = K / SL, per = kQSuper / SL, nsb = L.nb;
  // Padding channels: code 0 (q4k u = 0, q6k u = 32) and scales 0, i.e. the weight 0.
  std::memset(out, 0, L.total);
  for (int64_t p = 0; p < L.panels; ++p) {
    uint8_t* P = out + p * L.panel_bytes;
    for (int c = 0; c < kQPanel; ++c) {
      const int64_t n = p * kQPanel + c;
      if (n >= N) {
        if (!q4)
          for (int64_t b = 0; b < nsb; ++b)
            for (int64_t kl = 0; kl < kQSuper; ++kl) P[b * L.wblock_bytes + (kl / 4) * 64 + 4 * c + (kl & 3)] = 32;
        continue;
      }
      for (int64_t b = 0; b < nsb; ++b) {
        uint8_t* W = P + b * L.wblock_bytes;
        for (int64_t kl = 0; kl < kQSuper; ++kl) {
          const int q = kq_get(in, n, b * kQSuper + kl);
          if (!q4) {
            W[(kl / 4) * 64 + 4 * c + (kl & 3)] = (uint8_t)(q + 32);  // u = q + 32 in [0, 63]
          } else {
            uint8_t* byte = W + (kl / 8) * 64 + 4 * c + (kl & 3);
            if ((kl & 7) < 4) *byte = (uint8_t)((*byte & 0xf0) | q);
            else *byte = (uint8_t)((*byte & 0x0f) | (q << 4));
          }
        }
        for (int64_t j = 0; j < per; ++j) {
          W[L.sub_off + j * kQPanel + c] = static_cast<const uint8_t*>(in.scales)[n * ns + b * per + j];
          if (q4) W[L.submin_off + (j / 2) * 32 + 2 * c + (j & 1)] = static_cast<const uint8_t*>(in.mins)[n * ns + b * per + j];
        }
        std::memcpy(P + L.scale_off + (b * kQPanel + c) * 2, static_cast<const uint16_t*>(in.super_d) + n * nsb + b, 2);
        if (q4) std::memcpy(P + L.min_off + (b * kQPanel + c) * 2, static_cast<const uint16_t*>(in.super_dmin) + n * nsb + b, 2);
      }
    }
  }
}

void kq_unpack(const QPacked& in, const QPlain& out) {
  const QuantFormat& f = in.fmt;
  const bool q4 = f.kind == QKind::q4k;
  const QPackedLayout L = q_packed_layout(f, in.N, in.K);
  const int64_t K = in.K, SL = q_sub_len(f), ns = K / SL, per = kQSuper / SL, nsb = L.nb;
  for (int64_t n = 0; n < in.N; ++n) {
    const uint8_t* P = in.data + (n / kQPanel) * L.panel_bytes;
    const int c = (int)(n % kQPanel);
    for (int64_t b = 0; b < nsb; ++b) {
      const uint8_t* W = P + b * L.wblock_bytes;
      for (int64_t kl = 0; kl < kQSuper; ++kl) {
        int q;
        if (!q4) {
          q = (int)W[(kl / 4) * 64 + 4 * c + (kl & 3)] - 32;
        } else {
          const uint8_t byte = W[(kl / 8) * 64 + 4 * c + (kl & 3)];
          q = (kl & 7) < 4 ? (byte & 15) : (byte >> 4);
        }
        kq_set(out, n, b * kQSuper + kl, q);
      }
      for (int64_t j = 0; j < per; ++j) {
        static_cast<uint8_t*>(out.scales)[n * ns + b * per + j] = W[L.sub_off + j * kQPanel + c];
        if (q4) static_cast<uint8_t*>(out.mins)[n * ns + b * per + j] = W[L.submin_off + (j / 2) * 32 + 2 * c + (j & 1)];
      }
      std::memcpy(static_cast<uint16_t*>(out.super_d) + n * nsb + b, P + L.scale_off + (b * kQPanel + c) * 2, 2);
      if (q4) std::memcpy(static_cast<uint16_t*>(out.super_dmin) + n * nsb + b, P + L.min_off + (b * kQPanel + c) * 2, 2);
    }
  }
}

}  // namespace

const char* q_format_error(const QuantFormat& f, int64_t N, int64_t K) {
  if (q_is_kquant(f.kind)) {
    if (f.scale_dtype != DType::f16) return "K-quant (q4k/q6k) super-block scale dtype must be f16";
    if (f.group != 0 && f.group != kQSuper) return "K-quant (q4k/q6k) group must be 256 (or 0)";
    if (f.asym) return "asymmetric (min) is only for int4 (q4k has its own mins)";
    if (N < 1 || K < 1) return "N and K must be positive";
    if (K % kQSuper != 0) return "K must be a multiple of 256 for K-quants (q4k/q6k)";
    // int32 bounds (see qgemm.cpp): per super-block |sum_j sc_j*dot_j| <= 1.4e8; the f32
    // accumulation across super-blocks has no integer limit, but keep K as for int8/int4.
    if (K > 65536) return "K must be <= 65536";
    return nullptr;
  }
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
  if (std::strstr(e, "divide") || std::strstr(e, "positive") || std::strstr(e, "<=") ||
      std::strstr(e, "multiple")) c = Code::SHAPE;
  if (std::strstr(e, "dtype")) c = Code::DTYPE;
  throw Error(c, std::string("quantized weights: ") + e + " (N=" + std::to_string(N) +
                     ", K=" + std::to_string(K) + ", group=" + std::to_string(f.group) + ")",
              "weights");
}

QuantStats quantize(const float* w, int64_t ldw, const QPlain& out) {
  const QuantFormat& f = out.fmt;
  q_format_check(f, out.N, out.K);
  if (q_is_kquant(f.kind)) return kq_quantize(w, ldw, out);
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
  if (q_is_kquant(f.kind)) { kq_dequantize(in, w, ldw); return; }
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
  if (q_is_kquant(f.kind)) { kq_repack(in, out); return; }
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
  if (q_is_kquant(f.kind)) { kq_unpack(in, out); return; }
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

//
// K-quants (256 elements per super-block):
//   block_q4_K { f16 d; f16 dmin; u8 scales[12]; u8 qs[128]; }             144 bytes
//     scales: eight 6-bit (sc, m) pairs packed in 12 bytes; for sub-block j:
//       j < 4:  sc = scales[j] & 63,        m = scales[j+4] & 63
//       j >= 4: sc = (scales[j+4] & 15) | ((scales[j-4] >> 6) << 4),
//               m  = (scales[j+4] >> 4) | ((scales[j]   >> 6) << 4)
//     codes: element 64c + l (c = 0..3, l = 0..31) = qs[32c + l] & 15 (sub-block 2c),
//            element 64c + 32 + l = qs[32c + l] >> 4 (sub-block 2c+1)
//     x = (d*sc)*q - dmin*m
//   block_q6_K { u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d; }             210 bytes
//     element 128h + 32t + l (h = 0..1, t = 0..3, l = 0..31): low 4 bits from
//       ql[64h + l + 32*(t & 1)] (low nibble for t < 2, high nibble for t >= 2), high 2 bits
//       (qh[32h + l] >> 2t) & 3; q = that 6-bit value - 32; sub-block = element / 16
//     x = (d*scales[e/16])*q
static int64_t gguf_block_bytes(int32_t t) {
  switch (t) {
    case kGgmlQ4_0: return 18;
    case kGgmlQ4_1: return 20;
    case kGgmlQ8_0: return 34;
    case kGgmlQ4_K: return 144;
    case kGgmlQ6_K: return 210;
  }
  return 0;
}
static int64_t gguf_block_len(int32_t t) { return (t == kGgmlQ4_K || t == kGgmlQ6_K) ? kQSuper : 32; }

// One Q4_K / Q6_K super-block (row n, super-block b) into the plain K-quant layout.
static void gguf_import_kq(int32_t t, const uint8_t* blk, int64_t n, int64_t b, const QPlain& out) {
  const int64_t K = out.K, nsb = K / kQSuper;
  if (t == kGgmlQ4_K) {
    std::memcpy(static_cast<uint16_t*>(out.super_d) + n * nsb + b, blk, 2);  // f16 bits verbatim
    std::memcpy(static_cast<uint16_t*>(out.super_dmin) + n * nsb + b, blk + 2, 2);
    const uint8_t* sc = blk + 4;
    const uint8_t* qs = blk + 16;
    uint8_t* osc = static_cast<uint8_t*>(out.scales) + n * (K / 32) + b * 8;
    uint8_t* omn = static_cast<uint8_t*>(out.mins) + n * (K / 32) + b * 8;
    for (int j = 0; j < 8; ++j) {
      if (j < 4) {
        osc[j] = (uint8_t)(sc[j] & 63);
        omn[j] = (uint8_t)(sc[j + 4] & 63);
      } else {
        osc[j] = (uint8_t)((sc[j + 4] & 15) | ((sc[j - 4] >> 6) << 4));
        omn[j] = (uint8_t)((sc[j + 4] >> 4) | ((sc[j] >> 6) << 4));
      }
    }
    uint8_t* dst = static_cast<uint8_t*>(out.q) + n * (K / 2) + b * (kQSuper / 2);
    for (int i = 0; i < kQSuper / 2; ++i) {  // plain byte i: elements 2i (low), 2i+1 (high)
      int u[2];
      for (int h = 0; h < 2; ++h) {
        const int e = 2 * i + h, c = e / 64, l = e % 64;
        const uint8_t byte = qs[32 * c + (l % 32)];
        u[h] = l < 32 ? (byte & 15) : (byte >> 4);
      }
      dst[i] = (uint8_t)(u[0] | (u[1] << 4));
    }
    return;
  }
  const uint8_t* ql = blk;
  const uint8_t* qh = blk + 128;
  std::memcpy(static_cast<int8_t*>(out.scales) + n * (K / 16) + b * 16, blk + 192, 16);
  std::memcpy(static_cast<uint16_t*>(out.super_d) + n * nsb + b, blk + 208, 2);
  int8_t* dst = static_cast<int8_t*>(out.q) + n * K + b * kQSuper;
  for (int e = 0; e < kQSuper; ++e) {
    const int h = e / 128, tq = (e % 128) / 32, l = e % 32;
    const uint8_t lb = ql[64 * h + l + 32 * (tq & 1)];
    const int lo = tq < 2 ? (lb & 15) : (lb >> 4);
    const int hi = (qh[32 * h + l] >> (2 * tq)) & 3;
    dst[e] = (int8_t)((lo | (hi << 4)) - 32);
  }
}

QuantFormat gguf_native_format(int32_t t) {
  QuantFormat f;
  f.group = 32;
  f.scale_dtype = DType::f16;
  switch (t) {
    case kGgmlQ4_0: f.kind = QKind::int4; f.asym = false; return f;
    case kGgmlQ4_1: f.kind = QKind::int4; f.asym = true; return f;
    case kGgmlQ8_0: f.kind = QKind::int8; f.asym = false; return f;
    case kGgmlQ4_K: f.kind = QKind::q4k; f.group = kQSuper; return f;
    case kGgmlQ6_K: f.kind = QKind::q6k; f.group = kQSuper; return f;
  }
  throw Error(Code::UNSUPPORTED, "gguf import: unsupported ggml type " + std::to_string(t) +
                                     " (supported: Q4_0=2, Q4_1=3, Q8_0=8, Q4_K=12, Q6_K=14)", "type");
}

size_t gguf_row_bytes(int32_t t, int64_t K) {
  if (!gguf_block_bytes(t)) gguf_native_format(t);  // throws
  return (size_t)((K / gguf_block_len(t)) * gguf_block_bytes(t));
}

void gguf_import(int32_t t, const void* blocks, size_t bytes, int64_t N, int64_t K,
                 const QPlain& out) {
  const QuantFormat want = gguf_native_format(t);
  const int64_t BL = gguf_block_len(t);
  if (K % BL != 0 || K < BL || N < 1)
    throw Error(Code::SHAPE, "gguf import: K must be a positive multiple of " + std::to_string(BL) +
                                 " and N positive (N=" + std::to_string(N) + ", K=" + std::to_string(K) + ")", "shape");
  if (bytes != gguf_row_bytes(t, K) * (size_t)N)
    throw Error(Code::SHAPE, "gguf import: expected " + std::to_string(gguf_row_bytes(t, K) * (size_t)N) +
                                 " bytes for " + std::to_string(N) + "x" + std::to_string(K) +
                                 " but received " + std::to_string(bytes), "blocks");
  if (out.fmt.kind != want.kind || (out.fmt.group != want.group && !(BL == kQSuper && out.fmt.group == 0)) ||
      out.fmt.asym != want.asym || out.fmt.scale_dtype != DType::f16 || out.N != N || out.K != K)
    throw Error(Code::INVALID_ARG, "gguf import: output must be gguf_native_format(type) of the same shape", "out");
  const int64_t bb = gguf_block_bytes(t), nb = K / BL;
  const uint8_t* src = static_cast<const uint8_t*>(blocks);
  if (BL == kQSuper) {
    for (int64_t n = 0; n < N; ++n)
      for (int64_t b = 0; b < nb; ++b) gguf_import_kq(t, src + (n * nb + b) * bb, n, b, out);
    return;
  }
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
  qgemm_epilogue_check(a);  // below
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

// Epilogue-specific arguments (fused SwiGLU; see the end of tachyon/quant.h).
void qgemm_epilogue_check(const QGemmArgs& a) {
  if (a.epilogue != QEpilogue::none && a.epilogue != QEpilogue::swiglu)
    throw Error(Code::INVALID_ARG, "qgemm: unknown epilogue " + std::to_string((int)a.epilogue), "epilogue");
  if (a.epilogue == QEpilogue::swiglu && a.residual)
    throw Error(Code::INVALID_ARG, "qgemm: the swiglu epilogue takes no residual", "residual");
}

}  // namespace ty
