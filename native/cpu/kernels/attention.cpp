// Tachyon CPU kernels (ISA variant): paged KV cache append, paged attention over a CSR page
// table (prefill, chunked prefill and decode in one kernel family), the (o, lse) merge, and
// block copy / swap. Layouts and semantics: native/include/tachyon/attention.h.
//
// Attention, per work item (one sequence, one KV head, up to 64 rows = query positions x the
// qHeads/kvHeads query heads sharing that KV head, one KV range of the plan):
//   * Q rows are loaded once, converted to f32 and multiplied by smScale.
//   * KV positions are walked in tiles of TT tokens (64, or 32 for headDim > 128); a tile may
//     span pages. Each tile of K and V is dequantised once into an f32 scratch tile that
//     stays in L1/L2 (f16/bf16/fp8/int8 -> f32 with its scale) and is then used by every row
//     of the item, so K and V are read from memory once per item and the dequantisation is
//     part of the attention kernel (never a separate pass over the cache).
//     The tile four ahead is software-prefetched into L2 (pages are blockSize tokens, too
//     short for the hardware prefetcher to ramp up; prefetching doubled decode throughput).
//   * Scores S = Q K^T for the rows whose causal/window range meets the tile (2 rows x 4
//     tokens per inner loop, reduced with hadd), soft-cap, mask, online softmax (running max m,
//     running sum l, O rescaled by exp(m_old - m_new) only when the max grows), O += P V with
//     4 rows x 2 headDim vectors in registers.  The full score matrix is never formed.
//   * Decode (one query position, G <= 16) has its own path on AVX2 (decode_item): K and V
//     are converted inside the dot loops (no f32 tiles), the G rows of the KV head share each
//     converted K / V vector, prefetches are spread over the score loop. Throughput on the
//     AVX2 dev VM (Zen 1, 2 threads, GQA 4, D 128, bench/run.ts attention): f16 6.4-7.4 GB/s
//     of KV (tile path: 5.5-6.4), fp8e4m3 3.8-4.0 GB/s (tile path: 2.3-2.5); compute-bound (2 G D
//     FMAs per token and KV head; Zen 1 splits every 256-bit op). The AVX-512 and scalar
//     variants use the tile path for decode too.
//   * o = O / l, lse = m + log(l); split items write f32 partials that a merge step combines.
// exp: act_vec.h's vexp; on AVX2/AVX-512 a Cephes-style polynomial (
// max relative error 8.5e-8 = 1.01 ulp over [-87.3, 88.7], underflows to 0 below -103);
// libm on the scalar path. tanh (soft-cap): (1 - e)/(1 + e) with e = exp(-2|y|), and an odd
// degree-7 Taylor polynomial for |y| < 1/8; relative error below 1e-6 (libm on scalar).
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "act_vec.h"  // vexp: the one vectorised e^x of the CPU kernels
#include "akernels.h"

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif
#if defined(__AVX512F__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

TY_VARIANT_BEGIN
namespace {

// ---- vector layer (f32) ---------------------------------------------------------------------
#if defined(__AVX512F__)
constexpr int VL = 16;
using vf = __m512;
inline vf vld(const float* p) { return _mm512_loadu_ps(p); }
inline void vst(float* p, vf v) { _mm512_storeu_ps(p, v); }
inline vf vset(float x) { return _mm512_set1_ps(x); }
inline vf vadd(vf a, vf b) { return _mm512_add_ps(a, b); }
inline vf vsub(vf a, vf b) { return _mm512_sub_ps(a, b); }
inline vf vmul(vf a, vf b) { return _mm512_mul_ps(a, b); }
inline vf vmax(vf a, vf b) { return _mm512_max_ps(a, b); }
inline vf vfma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
inline __m256 hi256(vf a) { return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)); }
inline float hmax8(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline float hmax(vf v) { return hmax8(_mm256_max_ps(_mm512_castps512_ps256(v), hi256(v))); }
inline float hsum(vf v) { return hsum8(_mm256_add_ps(_mm512_castps512_ps256(v), hi256(v))); }
inline vf vabs(vf x) { return _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(0x7fffffff))); }
inline vf vcopysign(vf mag, vf sgn) {
  const __m512i s = _mm512_and_si512(_mm512_castps_si512(sgn), _mm512_set1_epi32(INT32_MIN));
  return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(mag), s));
}
inline vf vdiv(vf a, vf b) { return _mm512_div_ps(a, b); }
// lanes where a < b take x, the others y
inline vf vsel_lt(vf a, vf b, vf x, vf y) { return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, b, _CMP_LT_OQ), y, x); }
inline __m256 fold256(vf a) { return _mm256_add_ps(_mm512_castps512_ps256(a), hi256(a)); }
#elif defined(__AVX2__)
constexpr int VL = 8;
using vf = __m256;
inline vf vld(const float* p) { return _mm256_loadu_ps(p); }
inline void vst(float* p, vf v) { _mm256_storeu_ps(p, v); }
inline vf vset(float x) { return _mm256_set1_ps(x); }
inline vf vadd(vf a, vf b) { return _mm256_add_ps(a, b); }
inline vf vsub(vf a, vf b) { return _mm256_sub_ps(a, b); }
inline vf vmul(vf a, vf b) { return _mm256_mul_ps(a, b); }
inline vf vmax(vf a, vf b) { return _mm256_max_ps(a, b); }
inline vf vfma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
inline float hmax(vf v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline float hsum(vf v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline vf vabs(vf x) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x); }
inline vf vcopysign(vf mag, vf sgn) { return _mm256_or_ps(mag, _mm256_and_ps(sgn, _mm256_set1_ps(-0.0f))); }
inline vf vdiv(vf a, vf b) { return _mm256_div_ps(a, b); }
inline vf vsel_lt(vf a, vf b, vf x, vf y) { return _mm256_blendv_ps(y, x, _mm256_cmp_ps(a, b, _CMP_LT_OQ)); }
inline __m256 fold256(vf a) { return a; }
#else
constexpr int VL = 1;
using vf = float;
inline vf vld(const float* p) { return *p; }
inline void vst(float* p, vf v) { *p = v; }
inline vf vset(float x) { return x; }
inline vf vadd(vf a, vf b) { return a + b; }
inline vf vsub(vf a, vf b) { return a - b; }
inline vf vmul(vf a, vf b) { return a * b; }
inline vf vmax(vf a, vf b) { return a > b ? a : b; }
inline vf vfma(vf a, vf b, vf c) { return a * b + c; }
inline float hmax(vf v) { return v; }
inline float hsum(vf v) { return v; }
#endif

// e^x (max relative error 8.5e-8 on AVX2/AVX-512, libm on scalar): shared with the small
// activation kernels, see act_vec.h.
using av::vexp;

#if defined(__AVX2__) || defined(__AVX512F__)
// tanh, see the file comment.
inline vf vtanh(vf y) {
  const vf ay = vabs(y);
  const vf e = vexp(vmul(ay, vset(-2.0f)));
  const vf one = vset(1.0f);
  const vf t = vcopysign(vdiv(vsub(one, e), vadd(one, e)), y);
  const vf y2 = vmul(y, y);
  vf p = vfma(y2, vset(-17.0f / 315.0f), vset(2.0f / 15.0f));
  p = vfma(p, y2, vset(-1.0f / 3.0f));
  p = vfma(p, y2, one);
  p = vmul(p, y);
  return vsel_lt(ay, vset(0.125f), p, t);
}
// out[j] = sum of the lanes of a_j (j = 0..3).
inline void reduce4(vf a0, vf a1, vf a2, vf a3, float* out) {
  const __m256 t0 = _mm256_hadd_ps(fold256(a0), fold256(a1));
  const __m256 t1 = _mm256_hadd_ps(fold256(a2), fold256(a3));
  const __m256 t2 = _mm256_hadd_ps(t0, t1);
  _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(t2), _mm256_extractf128_ps(t2, 1)));
}
#else
inline vf vtanh(vf y) { return std::tanh(y); }
inline void reduce4(vf a0, vf a1, vf a2, vf a3, float* out) { out[0] = a0; out[1] = a1; out[2] = a2; out[3] = a3; }
#endif

// ---- KV dequantisation: n elements (a multiple of 16) to f32, times `scale` ------------------
template <DType T>
inline void cvt_kv(const void* src, float* dst, int64_t n, float scale) {
  if constexpr (T == DType::f32) {
    std::memcpy(dst, src, (size_t)n * 4);
  } else {
#if defined(__AVX2__)
    const __m256 vs = _mm256_set1_ps(scale);
    for (int64_t i = 0; i < n; i += 8) {
      __m256 x;
      if constexpr (T == DType::f16) {
        x = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(static_cast<const uint16_t*>(src) + i)));
      } else if constexpr (T == DType::bf16) {
        const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)(static_cast<const uint16_t*>(src) + i)));
        x = _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
      } else if constexpr (T == DType::int8) {
        const __m128i b = _mm_loadl_epi64((const __m128i*)(static_cast<const int8_t*>(src) + i));
        x = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)), vs);
      } else if constexpr (T == DType::fp8e5m2) {
        const __m128i b = _mm_loadl_epi64((const __m128i*)(static_cast<const uint8_t*>(src) + i));
        x = _mm256_mul_ps(_mm256_cvtph_ps(_mm_unpacklo_epi8(_mm_setzero_si128(), b)), vs);
      } else {  // fp8e4m3: s.eeee.mmm -> f16 s.0eeee.mmm0000000 is 2^-8 times the value (normal
        // and subnormal; F16C takes f16 subnormals without the f32-denormal assist that an f32
        // bit-shift decode hits); the 2^8 goes into the scale, exactly
        const __m128i u = _mm_unpacklo_epi8(_mm_setzero_si128(), _mm_loadl_epi64((const __m128i*)(static_cast<const uint8_t*>(src) + i)));
        const __m256 h = _mm256_cvtph_ps(_mm_and_si128(_mm_srai_epi16(u, 1), _mm_set1_epi16((short)0xbf80)));
        x = _mm256_mul_ps(h, _mm256_mul_ps(vs, _mm256_set1_ps(256.0f)));
      }
      _mm256_storeu_ps(dst + i, x);
    }
#else
    for (int64_t i = 0; i < n; ++i) {
      float x;
      if constexpr (T == DType::f16) x = f16_to_f32(static_cast<const uint16_t*>(src)[i]);
      else if constexpr (T == DType::bf16) x = bf16_to_f32(static_cast<const uint16_t*>(src)[i]);
      else if constexpr (T == DType::int8) x = (float)static_cast<const int8_t*>(src)[i] * scale;
      else x = fp8_to_f32(T, static_cast<const uint8_t*>(src)[i]) * scale;
      dst[i] = x;
    }
#endif
  }
}

inline float ld_act(DType t, const void* p, int64_t i) {
  if (t == DType::f32) return static_cast<const float*>(p)[i];
  if (t == DType::f16) return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
  return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
}
inline void st_act(DType t, void* p, int64_t i, float v) {
  if (t == DType::f32) static_cast<float*>(p)[i] = v;
  else if (t == DType::f16) static_cast<uint16_t*>(p)[i] = f32_to_f16(v);
  else static_cast<uint16_t*>(p)[i] = f32_to_bf16(v);
}

// ---- attention core ---------------------------------------------------------------------------
constexpr int kMaxRows = 64;

struct Item {
  const AttentionPlan* plan;
  const AttentionArgs* a;
  int G, D, TT;
};

// O[r0 .. r0+NR) += P[r][0..n) V[0..n), headDim D; P row stride TT, O / V row stride D.
// Two headDim chunks per pass share the P broadcasts (NR <= 4 keeps 2 NR accumulators, the
// two V vectors and a broadcast within the 16 AVX2 registers).
template <int NR>
inline void pv_rows(float* O, const float* P, const float* V, int n, int D, int TT) {
  int c = 0;
  for (; c + 2 * VL <= D; c += 2 * VL) {
    vf a0[NR], a1[NR];
    for (int j = 0; j < NR; ++j) { a0[j] = vld(O + (int64_t)j * D + c); a1[j] = vld(O + (int64_t)j * D + c + VL); }
    for (int t = 0; t < n; ++t) {
      const vf v0 = vld(V + (int64_t)t * D + c), v1 = vld(V + (int64_t)t * D + c + VL);
      for (int j = 0; j < NR; ++j) {
        const vf p = vset(P[j * TT + t]);
        a0[j] = vfma(p, v0, a0[j]);
        a1[j] = vfma(p, v1, a1[j]);
      }
    }
    for (int j = 0; j < NR; ++j) { vst(O + (int64_t)j * D + c, a0[j]); vst(O + (int64_t)j * D + c + VL, a1[j]); }
  }
  for (; c < D; c += VL) {
    vf acc[NR];
    for (int j = 0; j < NR; ++j) acc[j] = vld(O + (int64_t)j * D + c);
    for (int t = 0; t < n; ++t) {
      const vf v = vld(V + (int64_t)t * D + c);
      for (int j = 0; j < NR; ++j) acc[j] = vfma(vset(P[j * TT + t]), v, acc[j]);
    }
    for (int j = 0; j < NR; ++j) vst(O + (int64_t)j * D + c, acc[j]);
  }
}
inline void pv(float* O, const float* P, const float* V, int rows, int n, int D, int TT) {
  int r = 0;
  for (; r + 4 <= rows; r += 4) pv_rows<4>(O + (int64_t)r * D, P + r * TT, V, n, D, TT);
  switch (rows - r) {
    case 3: pv_rows<3>(O + (int64_t)r * D, P + r * TT, V, n, D, TT); break;
    case 2: pv_rows<2>(O + (int64_t)r * D, P + r * TT, V, n, D, TT); break;
    case 1: pv_rows<1>(O + (int64_t)r * D, P + r * TT, V, n, D, TT); break;
    default: break;
  }
}
// S[0..n4) = Q . K[t] for one row (n4 a multiple of 4, K holds at least n4 rows).
inline void qk_row(const float* Q, const float* K, float* S, int n4, int D) {
  for (int t = 0; t < n4; t += 4) {
    const float* k0 = K + (int64_t)t * D;
    vf a0 = vset(0.0f), a1 = a0, a2 = a0, a3 = a0;
    for (int c = 0; c < D; c += VL) {
      const vf q = vld(Q + c);
      a0 = vfma(q, vld(k0 + c), a0);
      a1 = vfma(q, vld(k0 + D + c), a1);
      a2 = vfma(q, vld(k0 + 2 * D + c), a2);
      a3 = vfma(q, vld(k0 + 3 * D + c), a3);
    }
    reduce4(a0, a1, a2, a3, S + t);
  }
}
// The same for two rows at once (Q rows stride D, S rows stride TT): each K vector loaded
// once feeds both rows.
inline void qk_row2(const float* Q, const float* K, float* S, int n4, int D, int TT) {
  for (int t = 0; t < n4; t += 4) {
    const float* k0 = K + (int64_t)t * D;
    vf a0 = vset(0.0f), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    for (int c = 0; c < D; c += VL) {
      const vf q = vld(Q + c), r = vld(Q + D + c);
      const vf x0 = vld(k0 + c), x1 = vld(k0 + D + c), x2 = vld(k0 + 2 * D + c), x3 = vld(k0 + 3 * D + c);
      a0 = vfma(q, x0, a0); b0 = vfma(r, x0, b0);
      a1 = vfma(q, x1, a1); b1 = vfma(r, x1, b1);
      a2 = vfma(q, x2, a2); b2 = vfma(r, x2, b2);
      a3 = vfma(q, x3, a3); b3 = vfma(r, x3, b3);
    }
    reduce4(a0, a1, a2, a3, S + t);
    reduce4(b0, b1, b2, b3, S + TT + t);
  }
}

#if defined(__AVX2__) && !defined(__AVX512F__)
// ---- decode path (AVX2): one query position, the G query heads of one KV head -------------
// K and V are decoded straight from the cache inside the dot loops (no f32 tile round trip):
// every K and V element is loaded and converted exactly once. Tokens go in chunks of DCH; a
// chunk may span pages (per-token row pointers). Scores of the chunk: rows in blocks of up to
// 4 x 2..4 tokens of accumulators; then online softmax per row; then O += P V with rows x
// headDim vectors in registers (O stays in L1).
constexpr int DCH = 32;
// 8 raw values of a KV row from element c: the code's value without the per-head / per-token
// scale (fp8e4m3 decodes through f16, so its raw value is 2^-8 of the true value; see kRaw).
template <DType T>
inline __m256 kv8(const void* row, int c) {
  if constexpr (T == DType::f32) {
    return _mm256_loadu_ps(static_cast<const float*>(row) + c);
  } else if constexpr (T == DType::f16) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(static_cast<const uint16_t*>(row) + c)));
  } else if constexpr (T == DType::bf16) {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)(static_cast<const uint16_t*>(row) + c)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  } else if constexpr (T == DType::int8) {
    const __m128i b = _mm_loadl_epi64((const __m128i*)(static_cast<const int8_t*>(row) + c));
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
  } else if constexpr (T == DType::fp8e5m2) {
    const __m128i b = _mm_loadl_epi64((const __m128i*)(static_cast<const uint8_t*>(row) + c));
    return _mm256_cvtph_ps(_mm_unpacklo_epi8(_mm_setzero_si128(), b));
  } else {
    // e4m3 s.eeee.mmm -> f16 s.0eeee.mmm0000000: the same bits read as f16 are 2^-8 times the
    // e4m3 value, normal and subnormal alike, and F16C converts f16 subnormals without the
    // f32-denormal assist the bit-shift decode hits (e4m3 NaN becomes +-480, as in cvt_kv).
    const __m128i b = _mm_loadl_epi64((const __m128i*)(static_cast<const uint8_t*>(row) + c));
    const __m128i u = _mm_unpacklo_epi8(_mm_setzero_si128(), b);
    return _mm256_cvtph_ps(_mm_and_si128(_mm_srai_epi16(u, 1), _mm_set1_epi16((short)0xbf80)));
  }
}
template <DType T>
constexpr float kRaw = T == DType::fp8e4m3 ? 256.0f : 1.0f;

// S[r * DCH + t + j] = Q_r . K[t + j] (raw), r < NR, j < NT.
template <DType T, int NR, int NT>
inline void dqk(const float* Q, int D, const void* const* kp, int t, float* S) {
  __m256 acc[NR][NT];
  for (int r = 0; r < NR; ++r)
    for (int j = 0; j < NT; ++j) acc[r][j] = _mm256_setzero_ps();
  const void* k[NT];
  for (int j = 0; j < NT; ++j) k[j] = kp[t + j];
  for (int c = 0; c < D; c += 8) {
    __m256 x[NT];
    for (int j = 0; j < NT; ++j) x[j] = kv8<T>(k[j], c);
    for (int r = 0; r < NR; ++r) {
      const __m256 q = _mm256_loadu_ps(Q + (int64_t)r * D + c);
      for (int j = 0; j < NT; ++j) acc[r][j] = _mm256_fmadd_ps(q, x[j], acc[r][j]);
    }
  }
  float out[NR * NT];
  constexpr int N = NR * NT;
  int i = 0;
  for (; i + 4 <= N; i += 4)
    reduce4(acc[i / NT][i % NT], acc[(i + 1) / NT][(i + 1) % NT], acc[(i + 2) / NT][(i + 2) % NT],
            acc[(i + 3) / NT][(i + 3) % NT], out + i);
  for (; i < N; ++i) out[i] = hsum(acc[i / NT][i % NT]);
  for (int r = 0; r < NR; ++r)
    for (int j = 0; j < NT; ++j) S[r * DCH + t + j] = out[r * NT + j];
}
// O[r][c0 .. c1) += sum_t P[r * DCH + t] V[t][c0 .. c1) (raw V), r < NR, in NV-vector columns.
template <DType T, int NR, int NV>
inline void dpv(float* O, int D, const float* P, const void* const* vp, int n, int c0, int c1) {
  for (int c = c0; c < c1; c += 8 * NV) {
    __m256 acc[NR][NV];
    for (int r = 0; r < NR; ++r)
      for (int j = 0; j < NV; ++j) acc[r][j] = _mm256_loadu_ps(O + (int64_t)r * D + c + 8 * j);
    for (int t = 0; t < n; ++t) {
      __m256 v[NV];
      for (int j = 0; j < NV; ++j) v[j] = kv8<T>(vp[t], c + 8 * j);
      for (int r = 0; r < NR; ++r) {
        const __m256 p = _mm256_broadcast_ss(P + r * DCH + t);
        for (int j = 0; j < NV; ++j) acc[r][j] = _mm256_fmadd_ps(p, v[j], acc[r][j]);
      }
    }
    for (int r = 0; r < NR; ++r)
      for (int j = 0; j < NV; ++j) _mm256_storeu_ps(O + (int64_t)r * D + c + 8 * j, acc[r][j]);
  }
}
template <DType T, int NR, int NV>
inline void dpv_rows(float* O, int D, const float* P, const void* const* vp, int n) {
  const int cm = D - D % (8 * NV);
  dpv<T, NR, NV>(O, D, P, vp, n, 0, cm);
  if (cm < D) dpv<T, NR, 1>(O, D, P, vp, n, cm, D);
}

// The decode loop of run_item for one query row (nq == 1, G <= 16): Q [G][D] scaled by
// smScale, O [G][D] zero, M = -inf, L = 0 on entry; positions [k0, k1) all attend.
template <DType KT>
void decode_item(const AttentionArgs& a, const AttnWork& w, int G, int D, float* Q, float* O, float* M,
                 float* L, int64_t k0, int64_t k1) {
  const KvCache& c = a.cache;
  const int bs = c.blockSize;
  const int32_t* pages = a.indices + a.indptr[w.seq];
  const size_t esz = kv_elem_bytes(KT);
  const char* base = static_cast<const char*>(c.data);
  // raw -> true value multipliers: K's folds into Q, V's into P (int8: per token, below)
  constexpr bool kFp8 = KT == DType::fp8e4m3 || KT == DType::fp8e5m2;
  float kmul = kRaw<KT>, vmulf = kRaw<KT>;
  if constexpr (kFp8) {
    kmul *= c.scales[kv_scale_index(c, a.layer, 0, 0, w.kvHead, 0)];
    vmulf *= c.scales[kv_scale_index(c, a.layer, 0, 1, w.kvHead, 0)];
  }
  if (kmul != 1.0f)
    for (int64_t i = 0; i < (int64_t)G * D; ++i) Q[i] *= kmul;
  constexpr bool kScaled = KT == DType::int8 || kFp8;
  const float cap = a.softCap, icap = cap > 0.0f ? 1.0f / cap : 0.0f;
  alignas(32) float S[16 * DCH], P[16 * DCH], ks[DCH], vs[DCH];
  const void* kp[DCH];
  const void* vp[DCH];
  const char* fk[DCH];
  const int64_t hstride = (int64_t)kv_index(c, 0, 0, 1, 0, 0, 0);  // K -> V of the same token
  for (int64_t pos = k0; pos < k1;) {
    const int n = (int)(k1 - pos < DCH ? k1 - pos : DCH);
    // K and V rows of the tokens 4 chunks ahead, prefetched into L2 while the scores run (pages
    // are only blockSize tokens, too short for the hardware prefetcher to ramp up). Spread over
    // the score loop, not issued in one burst: a burst fills the miss buffers and stalls the
    // loads of the current chunk, which serialises memory and compute.
    int nf = 0;
    for (int64_t p = pos + 4 * DCH, p2 = p + DCH < k1 ? p + DCH : k1; p < p2;) {
      const int64_t page = p / bs;
      const int off = (int)(p - page * bs);
      const int cnt = (int)(p2 - p < bs - off ? p2 - p : bs - off);
      const char* kr = base + (size_t)kv_index(c, a.layer, pages[page], 0, w.kvHead, off, 0) * esz;
      for (int j = 0; j < cnt; ++j) fk[nf++] = kr + (size_t)j * D * esz;
      p += cnt;
    }
    // row pointers (and int8 scales) of the chunk's tokens
    for (int t = 0; t < n;) {
      const int64_t p = pos + t;
      const int64_t page = p / bs;
      const int off = (int)(p - page * bs);
      const int cnt = n - t < bs - off ? n - t : bs - off;
      const int64_t block = pages[page];
      const char* kr = base + (size_t)kv_index(c, a.layer, block, 0, w.kvHead, off, 0) * esz;
      for (int j = 0; j < cnt; ++j) {
        kp[t + j] = kr + (size_t)j * D * esz;
        vp[t + j] = kr + ((size_t)hstride + (size_t)j * D) * esz;
      }
      if constexpr (KT == DType::int8) {
        const float* sk = c.scales + kv_scale_index(c, a.layer, block, 0, w.kvHead, off);
        const float* sv = c.scales + kv_scale_index(c, a.layer, block, 1, w.kvHead, off);
        for (int j = 0; j < cnt; ++j) { ks[t + j] = sk[j]; vs[t + j] = sv[j]; }
      }
      t += cnt;
    }
    const int n8 = (n + 7) & ~7;
    for (int t = n; t < n8; ++t) {  // padding: valid rows whose scores are then masked
      kp[t] = kp[n - 1];
      vp[t] = vp[n - 1];
      ks[t] = 0.0f;
      vs[t] = 0.0f;
    }
    // scores, 4 tokens at a time (their K rows stay in L1 across the row blocks)
    const size_t rowBytes = (size_t)D * esz;
    for (int t = 0; t < n8; t += 4) {
      for (int j = t; j < t + 4 && j < nf; ++j)
        for (size_t b = 0; b < rowBytes; b += 64) {
          __builtin_prefetch(fk[j] + b, 0, 2);
          __builtin_prefetch(fk[j] + (size_t)hstride * esz + b, 0, 2);
        }
      int r = 0;
      for (; r + 4 <= G; r += 4) {
        dqk<KT, 4, 2>(Q + (int64_t)r * D, D, kp, t, S + r * DCH);
        dqk<KT, 4, 2>(Q + (int64_t)r * D, D, kp, t + 2, S + r * DCH);
      }
      switch (G - r) {
        case 3:
          dqk<KT, 3, 2>(Q + (int64_t)r * D, D, kp, t, S + r * DCH);
          dqk<KT, 3, 2>(Q + (int64_t)r * D, D, kp, t + 2, S + r * DCH);
          break;
        case 2: dqk<KT, 2, 4>(Q + (int64_t)r * D, D, kp, t, S + r * DCH); break;
        case 1: dqk<KT, 1, 4>(Q + (int64_t)r * D, D, kp, t, S + r * DCH); break;
        default: break;
      }
    }
    // online softmax per row; P = p * (V multiplier)
    for (int r = 0; r < G; ++r) {
      float* s = S + r * DCH;
      float* pr = P + r * DCH;
      for (int t = 0; t < n8; t += 8) {
        __m256 x = _mm256_load_ps(s + t);
        if constexpr (KT == DType::int8) x = _mm256_mul_ps(x, _mm256_load_ps(ks + t));
        if (cap > 0.0f) x = vmul(vtanh(vmul(x, vset(icap))), vset(cap));
        _mm256_store_ps(s + t, x);
      }
      for (int t = n; t < n8; ++t) s[t] = -INFINITY;
      __m256 mx = _mm256_load_ps(s);
      for (int t = 8; t < n8; t += 8) mx = _mm256_max_ps(mx, _mm256_load_ps(s + t));
      const float mt = hmax(mx), mo = M[r];
      const float mn = mt > mo ? mt : mo;
      if (mn == -INFINITY) {  // nothing finite yet: p = 0
        for (int t = 0; t < n8; ++t) pr[t] = 0.0f;
        continue;
      }
      if (mn > mo) {
        const float alpha = mo == -INFINITY ? 0.0f : std::exp(mo - mn);
        L[r] *= alpha;
        float* o = O + (int64_t)r * D;
        const __m256 va = _mm256_set1_ps(alpha);
        for (int d = 0; d < D; d += 8) _mm256_storeu_ps(o + d, _mm256_mul_ps(_mm256_loadu_ps(o + d), va));
        M[r] = mn;
      }
      const __m256 vm = _mm256_set1_ps(mn), vv = _mm256_set1_ps(vmulf);
      __m256 sum = _mm256_setzero_ps();
      for (int t = 0; t < n8; t += 8) {
        const __m256 e = vexp(_mm256_sub_ps(_mm256_load_ps(s + t), vm));
        sum = _mm256_add_ps(sum, e);
        if constexpr (KT == DType::int8) _mm256_store_ps(pr + t, _mm256_mul_ps(e, _mm256_load_ps(vs + t)));
        else if constexpr (kScaled) _mm256_store_ps(pr + t, _mm256_mul_ps(e, vv));
        else _mm256_store_ps(pr + t, e);
      }
      L[r] += hsum(sum);
    }
    // O += P V
    {
      int r = 0;
      for (; r + 8 <= G; r += 8) dpv_rows<KT, 8, 1>(O + (int64_t)r * D, D, P + r * DCH, vp, n);
      for (; r + 4 <= G; r += 4) dpv_rows<KT, 4, 2>(O + (int64_t)r * D, D, P + r * DCH, vp, n);
      switch (G - r) {
        case 3: dpv_rows<KT, 3, 2>(O + (int64_t)r * D, D, P + r * DCH, vp, n); break;
        case 2: dpv_rows<KT, 2, 4>(O + (int64_t)r * D, D, P + r * DCH, vp, n); break;
        case 1: dpv_rows<KT, 1, 4>(O + (int64_t)r * D, D, P + r * DCH, vp, n); break;
        default: break;
      }
    }
    pos += n;
  }
}
#endif

template <DType KT>
void run_item(const Item& it, const AttnWork& w, int th, Parallel& par) {
  const AttentionPlan& plan = *it.plan;
  const AttentionArgs& a = *it.a;
  const KvCache& c = a.cache;
  const int G = it.G, D = it.D, TT = it.TT, bs = c.blockSize;
  const int nq = w.qEnd - w.qBegin, R = nq * G;
  const int64_t kvLen = plan.kvLen[w.seq];
  const int64_t qs = plan.qoIndptr[w.seq], ql = plan.qoIndptr[w.seq + 1] - qs;
  // scratch: Q, O [R][D]; S [R][TT]; K, V tiles [TT][D]; m, l [R]; lo, hi [nq]
  const size_t need = ((size_t)2 * R * D + (size_t)R * TT + (size_t)2 * TT * D + 2 * (size_t)R) * 4 + 16 * (size_t)nq + 64;
  float* Q = static_cast<float*>(par.scratch(th, need));
  float* O = Q + (size_t)R * D;
  float* S = O + (size_t)R * D;
  float* Kt = S + (size_t)R * TT;
  float* Vt = Kt + (size_t)TT * D;
  float* M = Vt + (size_t)TT * D;
  float* L = M + R;
  int64_t* lo = reinterpret_cast<int64_t*>(((uintptr_t)(L + R) + 7) & ~(uintptr_t)7);
  int64_t* hi = lo + nq;
  // Row bounds (inclusive positions), nondecreasing in qi.
  for (int qi = 0; qi < nq; ++qi) {
    hi[qi] = kvLen - ql + (w.qBegin - qs + qi);
    lo[qi] = a.window > 0 ? hi[qi] - a.window + 1 : 0;
    if (lo[qi] < 0) lo[qi] = 0;
  }
  int64_t k0 = w.kvBegin > lo[0] ? w.kvBegin : lo[0];
  int64_t k1 = w.kvEnd < hi[nq - 1] + 1 ? w.kvEnd : hi[nq - 1] + 1;
  // Q rows, scaled.
  const int qH = plan.qHeads;
  for (int qi = 0; qi < nq; ++qi)
    for (int g = 0; g < G; ++g) {
      const int64_t src = ((int64_t)(w.qBegin + qi) * qH + (int64_t)w.kvHead * G + g) * D;
      float* dst = Q + (int64_t)(qi * G + g) * D;
      for (int d = 0; d < D; ++d) dst[d] = ld_act(a.qDtype, a.q, src + d) * a.smScale;
    }
  for (int64_t i = 0; i < (int64_t)R * D; ++i) O[i] = 0.0f;
  for (int r = 0; r < R; ++r) { M[r] = -INFINITY; L[r] = 0.0f; }
  const int32_t* pages = a.indices + a.indptr[w.seq];
  const size_t esz = kv_elem_bytes(KT);
  const char* base = static_cast<const char*>(c.data);
  const bool fp8 = kv_dtype_fp8(KT);
  float hscale[2] = {1.0f, 1.0f};
  if (fp8)
    for (int kv = 0; kv < 2; ++kv) hscale[kv] = c.scales[kv_scale_index(c, a.layer, 0, kv, w.kvHead, 0)];
  const float cap = a.softCap, icap = cap > 0.0f ? 1.0f / cap : 0.0f;

#if defined(__AVX2__) && !defined(__AVX512F__)
  if (nq == 1 && G <= 16) {
    decode_item<KT>(a, w, G, D, Q, O, M, L, k0, k1);
    k1 = k0;  // the tile loop below has nothing left to do
  }
#endif
  for (int64_t pos = k0; pos < k1;) {
    const int n = (int)(k1 - pos < TT ? k1 - pos : TT);
    const int64_t last = pos + n - 1;
    // active query positions: hi >= pos and lo <= last
    int qa = 0, qb = nq;
    while (qa < nq && hi[qa] < pos) ++qa;
    while (qb > qa && lo[qb - 1] > last) --qb;
    if (qa >= qb) { pos += n; continue; }
    // prefetch the tile four ahead (K and V, every page it touches) into L2: pages are only
    // blockSize tokens long, too short for the hardware prefetcher to ramp up on
    {
      const int64_t p1 = pos + n + 3 * TT, p2 = p1 + TT < k1 ? p1 + TT : k1;
      for (int64_t p = p1; p < p2;) {
        const int64_t page = p / bs;
        const int off = (int)(p - page * bs);
        const int cnt = (int)(p2 - p < bs - off ? p2 - p : bs - off);
        const int64_t block = pages[page];
        for (int kv = 0; kv < 2; ++kv) {
          const char* src = base + (size_t)kv_index(c, a.layer, block, kv, w.kvHead, off, 0) * esz;
          const size_t bytes = (size_t)cnt * D * esz;
          for (size_t b = 0; b < bytes; b += 64) __builtin_prefetch(src + b, 0, 2);
        }
        p += cnt;
      }
    }
    // dequantise the K and V tile (may span pages)
    for (int t = 0; t < n;) {
      const int64_t p = pos + t;
      const int64_t page = p / bs;
      const int off = (int)(p - page * bs);
      const int cnt = n - t < bs - off ? n - t : bs - off;
      const int64_t block = pages[page];
      for (int kv = 0; kv < 2; ++kv) {
        const char* src = base + (size_t)kv_index(c, a.layer, block, kv, w.kvHead, off, 0) * esz;
        float* dst = (kv ? Vt : Kt) + (int64_t)t * D;
        if constexpr (KT == DType::int8) {
          const float* sc = c.scales + kv_scale_index(c, a.layer, block, kv, w.kvHead, off);
          for (int j = 0; j < cnt; ++j) cvt_kv<KT>(src + (size_t)j * D, dst + (int64_t)j * D, D, sc[j]);
        } else {
          cvt_kv<KT>(src, dst, (int64_t)cnt * D, hscale[kv]);
        }
      }
      t += cnt;
    }
    const int n4 = (n + 3) & ~3;
    for (int j = n; j < n4; ++j)  // the dot loop reads these rows; keep them finite
      for (int d = 0; d < D; ++d) Kt[(int64_t)j * D + d] = 0.0f;
    const int r0 = qa * G, r1 = qb * G;
    {
      int r = r0;
      for (; r + 2 <= r1; r += 2) qk_row2(Q + (int64_t)r * D, Kt, S + (int64_t)r * TT, n4, D, TT);
      if (r < r1) qk_row(Q + (int64_t)r * D, Kt, S + (int64_t)r * TT, n4, D);
    }
    for (int r = r0; r < r1; ++r) {
      float* s = S + (int64_t)r * TT;
      const int qi = r / G;
      int ta = (int)(lo[qi] - pos), tb = (int)(hi[qi] - pos + 1);
      if (ta < 0) ta = 0;
      if (tb > n) tb = n;
      if (cap > 0.0f)
        for (int t = 0; t < TT; t += VL) vst(s + t, vmul(vtanh(vmul(vld(s + t), vset(icap))), vset(cap)));
      for (int t = 0; t < ta; ++t) s[t] = -INFINITY;
      for (int t = tb; t < TT; ++t) s[t] = -INFINITY;
      if (ta >= tb) continue;  // row fully masked in this tile: P row is all zeros after exp
      vf mx = vld(s);
      for (int t = VL; t < TT; t += VL) mx = vmax(mx, vld(s + t));
      const float mt = hmax(mx), mo = M[r];
      const float mn = mt > mo ? mt : mo;
      const vf vm = vset(mn);
      vf sum = vset(0.0f);
      for (int t = 0; t < TT; t += VL) {
        const vf e = vexp(vsub(vld(s + t), vm));
        vst(s + t, e);
        sum = vadd(sum, e);
      }
      if (mn > mo) {
        const float alpha = mo == -INFINITY ? 0.0f : std::exp(mo - mn);
        L[r] *= alpha;
        float* o = O + (int64_t)r * D;
        const vf va = vset(alpha);
        for (int d = 0; d < D; d += VL) vst(o + d, vmul(vld(o + d), va));
        M[r] = mn;
      }
      L[r] += hsum(sum);
    }
    // rows fully masked in this tile got -inf scores; zero their P rows
    for (int r = r0; r < r1; ++r) {
      const int qi = r / G;
      if (lo[qi] > last || hi[qi] < pos)
        for (int t = 0; t < TT; ++t) S[(int64_t)r * TT + t] = 0.0f;
    }
    pv(O + (int64_t)r0 * D, S + (int64_t)r0 * TT, Vt, r1 - r0, n, D, TT);
    pos += n;
  }
  // finalise
  const bool partial = w.partial >= 0;
  float* pw = partial ? static_cast<float*>(a.workspace) + w.partial : nullptr;
  for (int r = 0; r < R; ++r) {
    const int qi = r / G, g = r % G;
    const float* o = O + (int64_t)r * D;
    const float l = L[r];
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    const float lse = l > 0.0f ? M[r] + std::log(l) : -INFINITY;
    if (partial) {
      float* dst = pw + (int64_t)r * D;
      for (int d = 0; d < D; ++d) dst[d] = o[d] * inv;
      pw[(int64_t)R * D + r] = lse;
    } else {
      const int64_t row = (int64_t)(w.qBegin + qi) * qH + (int64_t)w.kvHead * G + g;
      for (int d = 0; d < D; ++d) st_act(a.oDtype, a.o, row * D + d, o[d] * inv);
      if (a.lse) a.lse[row] = lse;
    }
  }
}

void merge_item(const AttentionPlan& plan, const AttentionArgs& a, const AttnMerge& mg, int G) {
  const int D = plan.headDim, nq = mg.qEnd - mg.qBegin, R = nq * G;
  const float* ws = static_cast<const float*>(a.workspace);
  for (int r = 0; r < R; ++r) {
    float m = -INFINITY;
    for (int i = 0; i < mg.count; ++i) {
      const float l = ws[mg.first + i * mg.stride + (int64_t)R * D + r];
      if (l > m) m = l;
    }
    const int qi = r / G, g = r % G;
    const int64_t row = (int64_t)(mg.qBegin + qi) * plan.qHeads + (int64_t)mg.kvHead * G + g;
    if (m == -INFINITY) {
      for (int d = 0; d < D; ++d) st_act(a.oDtype, a.o, row * D + d, 0.0f);
      if (a.lse) a.lse[row] = -INFINITY;
      continue;
    }
    float acc[256];
    const int Dc = D < 256 ? D : 256;  // validated: D <= 256
    for (int d = 0; d < Dc; ++d) acc[d] = 0.0f;
    float sw = 0.0f;
    for (int i = 0; i < mg.count; ++i) {
      const float* part = ws + mg.first + i * mg.stride;
      const float wt = std::exp(part[(int64_t)R * D + r] - m);
      if (wt == 0.0f) continue;
      sw += wt;
      const float* o = part + (int64_t)r * D;
      const vf vw = vset(wt);
      for (int d = 0; d + VL <= Dc; d += VL) vst(acc + d, vfma(vw, vld(o + d), vld(acc + d)));
    }
    const float inv = 1.0f / sw;
    for (int d = 0; d < Dc; ++d) st_act(a.oDtype, a.o, row * D + d, acc[d] * inv);
    if (a.lse) a.lse[row] = m + std::log(sw);
  }
}

template <DType KT>
void run_t(const AttentionPlan& plan, const AttentionArgs& a, Parallel& par) {
  Item it;
  it.plan = &plan;
  it.a = &a;
  it.G = plan.qHeads / plan.kvHeads;
  it.D = plan.headDim;
  it.TT = plan.headDim > 128 ? 32 : 64;
  par.for_each(plan.nWork, [&](int64_t i, int th) { run_item<KT>(it, plan.work[i], th, par); });
  if (plan.nMerge > 0)
    par.for_each(plan.nMerge, [&](int64_t i, int) { merge_item(plan, a, plan.merge[i], it.G); });
}

template <DType T>
void append_t(const KvAppendArgs& a, Parallel& par) {
  const KvCache& c = a.cache;
  const int D = c.headDim, H = c.kvHeads, bs = c.blockSize;
  const int64_t grain = 1 + 4096 / ((int64_t)H * D);
  const int64_t tasks = (a.tokens + grain - 1) / grain;
  par.for_each(tasks, [&](int64_t task, int) {
    float row[256];
    const int64_t t0 = task * grain, t1 = t0 + grain < a.tokens ? t0 + grain : a.tokens;
    for (int64_t t = t0; t < t1; ++t) {
      const int32_t slot = a.slots[t];
      if (slot < 0) continue;
      const int64_t block = slot / bs, off = slot % bs;
      for (int kv = 0; kv < 2; ++kv)
        for (int h = 0; h < H; ++h) {
          const void* src = kv ? a.v : a.k;
          const int64_t s0 = (t * H + h) * D;
          for (int d = 0; d < D; ++d) row[d] = ld_act(a.srcDtype, src, s0 + d);
          const int64_t di = kv_index(c, a.layer, block, kv, h, off, 0);
          if constexpr (T == DType::f32) {
            std::memcpy(static_cast<float*>(c.data) + di, row, (size_t)D * 4);
          } else if constexpr (T == DType::f16) {
            uint16_t* dst = static_cast<uint16_t*>(c.data) + di;
            for (int d = 0; d < D; ++d) dst[d] = f32_to_f16(row[d]);
          } else if constexpr (T == DType::bf16) {
            uint16_t* dst = static_cast<uint16_t*>(c.data) + di;
            for (int d = 0; d < D; ++d) dst[d] = f32_to_bf16(row[d]);
          } else if constexpr (T == DType::int8) {
            float amax = 0.0f;
            for (int d = 0; d < D; ++d) amax = std::fabs(row[d]) > amax ? std::fabs(row[d]) : amax;
            const float sc = kv_int8_row_scale(amax);
            int8_t* dst = static_cast<int8_t*>(c.data) + di;
            for (int d = 0; d < D; ++d) {
              float q = sc > 0.0f ? std::nearbyint(row[d] / sc) : 0.0f;
              q = q > 127.0f ? 127.0f : (q < -127.0f ? -127.0f : q);
              dst[d] = (int8_t)q;
            }
            c.scales[kv_scale_index(c, a.layer, block, kv, h, off)] = sc;
          } else {
            const float sc = c.scales[kv_scale_index(c, a.layer, block, kv, h, off)];
            uint8_t* dst = static_cast<uint8_t*>(c.data) + di;
            for (int d = 0; d < D; ++d) dst[d] = f32_to_fp8(T, row[d] / sc);
          }
        }
    }
  });
}

template <class F>
void with_kv_dtype(DType t, F&& f) {
  switch (t) {
    case DType::f32: f(std::integral_constant<DType, DType::f32>{}); break;
    case DType::f16: f(std::integral_constant<DType, DType::f16>{}); break;
    case DType::bf16: f(std::integral_constant<DType, DType::bf16>{}); break;
    case DType::fp8e4m3: f(std::integral_constant<DType, DType::fp8e4m3>{}); break;
    case DType::fp8e5m2: f(std::integral_constant<DType, DType::fp8e5m2>{}); break;
    default: f(std::integral_constant<DType, DType::int8>{}); break;
  }
}

}  // namespace

void kv_append(const KvAppendArgs& args, Parallel& par) {
  if (args.tokens <= 0) return;
  with_kv_dtype(args.cache.dtype, [&](auto t) { append_t<decltype(t)::value>(args, par); });
}

void attention_run(const AttentionPlan& plan, const AttentionArgs& args, Parallel& par) {
  if (plan.nWork <= 0) return;
  with_kv_dtype(args.cache.dtype, [&](auto t) { run_t<decltype(t)::value>(plan, args, par); });
}

void attention_merge(const AttentionMergeArgs& a, Parallel& par) {
  const int64_t n = a.rows * a.heads;
  if (n <= 0) return;
  const int D = a.headDim;
  const int64_t grain = 1 + 8192 / D;
  par.for_each((n + grain - 1) / grain, [&](int64_t task, int) {
    const int64_t i0 = task * grain, i1 = i0 + grain < n ? i0 + grain : n;
    for (int64_t i = i0; i < i1; ++i) {
      const float la = a.lseA[i], lb = a.lseB[i];
      const float m = la > lb ? la : lb;
      if (m == -INFINITY || std::isnan(m)) {
        for (int d = 0; d < D; ++d) st_act(a.dtype, a.o, i * D + d, m == -INFINITY ? 0.0f : m);
        a.lse[i] = m;
        continue;
      }
      const float wa = std::exp(la - m), wb = std::exp(lb - m), s = wa + wb;
      const float ca = wa / s, cb = wb / s;
      for (int d = 0; d < D; ++d) {
        const float x = ld_act(a.dtype, a.oA, i * D + d), y = ld_act(a.dtype, a.oB, i * D + d);
        st_act(a.dtype, a.o, i * D + d, ca * x + cb * y);
      }
      a.lse[i] = m + std::log(s);
    }
  });
}

void kv_copy_blocks(const KvCopyBlocksArgs& a, Parallel& par) {
  const KvCache& c = a.cache;
  const size_t cb = (size_t)kv_block_elems(c) * kv_elem_bytes(c.dtype);
  const int64_t sn = kv_block_scale_count(c);
  char* data = static_cast<char*>(c.data);
  par.for_each((int64_t)c.layers * a.n, [&](int64_t task, int) {
    const int64_t layer = task / a.n, i = task % a.n;
    const int64_t s = a.pairs[2 * i], d = a.pairs[2 * i + 1];
    std::memcpy(data + (size_t)(layer * c.blocks + d) * cb, data + (size_t)(layer * c.blocks + s) * cb, cb);
    if (sn > 0)
      std::memcpy(c.scales + (layer * c.blocks + d) * sn, c.scales + (layer * c.blocks + s) * sn, (size_t)sn * 4);
  });
}

void kv_swap_blocks(const KvSwapArgs& a, Parallel& par) {
  const KvCache& c = a.cache;
  const size_t cb = (size_t)kv_block_elems(c) * kv_elem_bytes(c.dtype);
  const int64_t sn = kv_block_scale_count(c);
  const size_t hb = kv_block_host_bytes(c);
  char* data = static_cast<char*>(c.data);
  par.for_each((int64_t)c.layers * a.n, [&](int64_t task, int) {
    const int64_t layer = task / a.n, i = task % a.n;
    const int64_t b = a.blocks[i];
    char* h = static_cast<char*>(a.host) + (size_t)i * hb;
    char* hc = h + (size_t)layer * cb;
    char* hs = h + (size_t)c.layers * cb + (size_t)layer * (size_t)sn * 4;
    char* dc = data + (size_t)(layer * c.blocks + b) * cb;
    float* ds = sn > 0 ? c.scales + (layer * c.blocks + b) * sn : nullptr;
    if (a.out) {
      std::memcpy(hc, dc, cb);
      if (sn > 0) std::memcpy(hs, ds, (size_t)sn * 4);
    } else {
      std::memcpy(dc, hc, cb);
      if (sn > 0) std::memcpy(ds, hs, (size_t)sn * 4);
    }
  });
}

void attention_exp_probe(const float* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + VL <= n; i += VL) vst(y + i, vexp(vld(x + i)));
  for (; i < n; ++i) {
    float buf[VL] = {};
    buf[0] = x[i];
    vst(buf, vexp(vld(buf)));
    y[i] = buf[0];
  }
}

void attention_tanh_probe(const float* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + VL <= n; i += VL) vst(y + i, vtanh(vld(x + i)));
  for (; i < n; ++i) {
    float buf[VL] = {};
    buf[0] = x[i];
    vst(buf, vtanh(vld(buf)));
    y[i] = buf[0];
  }
}

TY_VARIANT_END
