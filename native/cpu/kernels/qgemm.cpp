// Tachyon: quantized GEMM, C = A · Wᵀ with int8 (W8A8) or int4 (W4A8) repacked weights.
// ISA-variant file (compiled as scalar, avx2 and avx512). Formats: docs/formats.md.
//
// Plan of one call
//  1. Quantize the activations, per row and per block of K (the weight group, or the
//     whole row for per-channel int8), to int8 in [-127, 127] with an f32 scale, and keep
//     the sum of the codes of every block. Every ISA computes bit-identical codes:
//     amax is exact, inv = 127/amax is one f32 division, code = rne(a * inv).
//  2. Integer dot products per block, exact in int32, against the repacked weights.
//     Weights are stored unsigned (u = q + 128 for int8, u = q + 8 for int4 sym, u = q for
//     int4 asym), which is exactly the u8 operand vpdpbusd wants; the offset comes back
//     out through the activation code sum of the block, which step 1 computed for free:
//        sum_k q_k a_k = sum_k u_k a_k - off * sum_k a_k.
//     (The other classic choice, offsetting the activations by +128 and subtracting
//     128 * rowsum(W), needs an extra int32 per channel and per block in the weights;
//     offsetting the weights costs nothing at run time.)
//  3. Per block, in f32: acc += (sa * sw) * (dot - off*sum) [+ (sa * sum) * min  (asym)].
//  4. Epilogue: + bias, + residual, one rounding to the output dtype.
//
// Paths
//  - M <= 8 (decode / GEMV): each task owns a range of 16-channel panels and streams
//    every weight byte once from DRAM, applying it to all M rows while it is in registers.
//  - M > 8: register tiles of MR rows x (16*NV) channels (AVX-512: 8 x 32, AVX2 / scalar:
//    4 x 16); a task is NV panels x up to 64 rows, so the weight panels stay in L1/L2 while
//    the quantized activation rows (1 byte per element) stream from L2.
#include <cmath>
#include <cstring>

#include "isa.h"
#include "qkernels.h"
#include "tachyon/dtype.h"
#if defined(__AVX2__)
#include <immintrin.h>
#endif

TY_VARIANT_BEGIN
namespace {

#if defined(__AVX512F__)
constexpr int kMR = 8, kNV = 2;
#else
constexpr int kMR = 4, kNV = 1;
#endif
constexpr int kSmallM = 8;   // M <= kSmallM takes the streaming (GEMV) path
constexpr int kMC = 64;      // rows per task on the large-M path
#ifndef TY_QPF
#define TY_QPF 1024
#endif
constexpr int kPF = TY_QPF;  // software prefetch distance in the weight stream (bytes)

// GCC 12 copies the loop header of the K loop and then fails to keep the accumulators in
// place: every step gains one register move per accumulator (and spills for 16 of them).
// Disabling loop-header copying for the micro-kernels gives clean loops (checked in the
// generated assembly: no moves or stack traffic between the vpdpbusd / vpmaddubsw).
#if defined(__GNUC__) && !defined(__clang__)
#define TY_NO_LOOP_HEADER_COPY __attribute__((optimize("no-tree-ch")))
#else
#define TY_NO_LOOP_HEADER_COPY
#endif

struct QCtx {
  int64_t nb, bl, wblock, scale_off, min_off, pb;
  bool i4, asym, sf16;
  int32_t off;          // sum(qa) multiplier that undoes the weight offset (see top)
  const int8_t* qa;     // quantized activations [M][lqa]
  int64_t lqa;
  const float* sa;      // [M][nb] activation scales
  const int32_t* ss;    // [M][nb] activation code sums
};

static inline int32_t ld32(const int8_t* p) { int32_t v; std::memcpy(&v, p, 4); return v; }

// ---- activation quantization ---------------------------------------------------------

// Returns a pointer to n (<= 64) f32 activations starting at element k0 of row `src`.
static inline const float* act_chunk(const void* src, DType t, int64_t k0, int n, float* buf) {
  if (t == DType::f32) return static_cast<const float*>(src) + k0;
  const uint16_t* h = static_cast<const uint16_t*>(src) + k0;
  int i = 0;
#if defined(__AVX2__)
  if (t == DType::f16) {
    for (; i + 8 <= n; i += 8)
      _mm256_storeu_ps(buf + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(h + i))));
  } else {
    for (; i + 8 <= n; i += 8)
      _mm256_storeu_ps(buf + i, _mm256_castsi256_ps(_mm256_slli_epi32(
          _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)(h + i))), 16)));
  }
#endif
  for (; i < n; ++i) buf[i] = t == DType::f16 ? f16_to_f32(h[i]) : bf16_to_f32(h[i]);
  return buf;
}

static inline float chunk_amax(const float* x, int n, float m) {
  int i = 0;
#if defined(__AVX2__)
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 v = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8) v = _mm256_max_ps(v, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + i)));
  alignas(32) float t[8];
  _mm256_store_ps(t, v);
  for (int j = 0; j < 8; ++j) m = t[j] > m ? t[j] : m;
#endif
  for (; i < n; ++i) { float a = std::fabs(x[i]); m = a > m ? a : m; }
  return m;
}

// q[i] = rne(x[i] * inv); returns sum of q.
static inline int32_t chunk_quant(const float* x, int n, float inv, int8_t* q) {
  int i = 0;
  int32_t s = 0;
#if defined(__AVX2__)
  const __m256 vi = _mm256_set1_ps(inv);
  __m256i vs = _mm256_setzero_si256();
  for (; i + 32 <= n; i += 32) {
    // cvtps uses the MXCSR mode: round to nearest even, like std::nearbyint below.
    __m256i a = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i), vi));
    __m256i b = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i + 8), vi));
    __m256i c = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i + 16), vi));
    __m256i d = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i + 24), vi));
    vs = _mm256_add_epi32(vs, _mm256_add_epi32(_mm256_add_epi32(a, b), _mm256_add_epi32(c, d)));
    __m256i ab = _mm256_packs_epi32(a, b), cd = _mm256_packs_epi32(c, d);  // lane-interleaved
    __m256i p = _mm256_packs_epi16(ab, cd);
    p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i*)(q + i), p);
  }
  alignas(32) int32_t t[8];
  _mm256_store_si256((__m256i*)t, vs);
  for (int j = 0; j < 8; ++j) s += t[j];
#endif
  for (; i < n; ++i) {
    int v = (int)std::nearbyint(x[i] * inv);
    q[i] = (int8_t)v;
    s += v;
  }
  return s;
}

static void quantize_row(const QGemmArgs& g, const QCtx& x, int64_t m) {
  const int64_t K = g.w.K;
  const size_t es = dtype_bytes(g.a_dtype, 1);
  const void* row = static_cast<const char*>(g.A) + (size_t)(m * g.lda) * es;
  int8_t* q = const_cast<int8_t*>(x.qa) + m * x.lqa;
  float* sa = const_cast<float*>(x.sa) + m * x.nb;
  int32_t* ss = const_cast<int32_t*>(x.ss) + m * x.nb;
  const int64_t len = x.nb == 1 ? K : x.bl;  // elements of K in one block
  alignas(64) float buf[64];
  for (int64_t b = 0; b < x.nb; ++b) {
    const int64_t k0 = b * len;
    float amax = 0;
    for (int64_t k = 0; k < len; k += 64) {
      int n = (int)(len - k < 64 ? len - k : 64);
      amax = chunk_amax(act_chunk(row, g.a_dtype, k0 + k, n, buf), n, amax);
    }
    const float inv = amax > 0 ? 127.0f / amax : 0.0f;
    sa[b] = amax / 127.0f;
    int32_t sum = 0;
    for (int64_t k = 0; k < len; k += 64) {
      int n = (int)(len - k < 64 ? len - k : 64);
      sum += chunk_quant(act_chunk(row, g.a_dtype, k0 + k, n, buf), n, inv, q + k0 + k);
    }
    ss[b] = sum;
  }
  for (int64_t k = x.nb * len; k < x.lqa; ++k) q[k] = 0;  // padding reads as weight * 0
}

// ---- epilogue ----------------------------------------------------------------------------

static inline float load_c(const void* p, DType t, int64_t i) {
  if (t == DType::f32) return static_cast<const float*>(p)[i];
  const uint16_t h = static_cast<const uint16_t*>(p)[i];
  return t == DType::f16 ? f16_to_f32(h) : bf16_to_f32(h);
}

// out: [mr][ld] f32 tile for rows m0.., channels n0..n0+ld-1 (clipped to N).
static void store_tile(const QGemmArgs& g, const float* out, int mr, int ld, int64_t m0, int64_t n0) {
  const int64_t nv = g.w.N - n0 < ld ? g.w.N - n0 : ld;
  for (int r = 0; r < mr; ++r) {
    const float* o = out + r * ld;
    const int64_t m = m0 + r;
    if (g.c_dtype == DType::f32 && !g.residual) {
      float* c = static_cast<float*>(g.C) + m * g.ldc + n0;
      if (g.bias) for (int64_t j = 0; j < nv; ++j) c[j] = o[j] + g.bias[n0 + j];
      else std::memcpy(c, o, (size_t)nv * 4);
      continue;
    }
    for (int64_t j = 0; j < nv; ++j) {
      float v = o[j];
      if (g.bias) v = v + g.bias[n0 + j];
      if (g.residual) v = v + load_c(g.residual, g.c_dtype, m * g.ldr + n0 + j);
      const int64_t i = m * g.ldc + n0 + j;
      if (g.c_dtype == DType::f32) static_cast<float*>(g.C)[i] = v;
      else if (g.c_dtype == DType::f16) static_cast<uint16_t*>(g.C)[i] = f32_to_f16(v);
      else static_cast<uint16_t*>(g.C)[i] = f32_to_bf16(v);
    }
  }
}

// ---- micro-kernels: MR rows x NV panels (16 channels each), whole K -----------------------
// w points at the first panel; panel v is at w + v*pb. out is [MR][NV*16], overwritten.

#if defined(__AVX512F__)

static inline __m512 load_scales16(const uint8_t* p, bool f16) {
  if (f16) return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p));
  return _mm512_loadu_ps((const float*)p);
}

template <int MR, int NV, bool I4>
TY_NO_LOOP_HEADER_COPY static void ukernel(const QCtx& x, const uint8_t* w, int64_t m0, float* out) {
  constexpr int LD = NV * 16;
  for (int i = 0; i < MR * LD; ++i) out[i] = 0.0f;
  const int8_t* qa = x.qa + m0 * x.lqa;
  const int64_t lqa = x.lqa, pb = x.pb, se = x.sf16 ? 2 : 4;
  const __m512i nib = _mm512_set1_epi8(0x0f);
  for (int64_t b = 0; b < x.nb; ++b) {
    // The accumulators start at -off*sum(qa), which removes the weight offset.
    // With few accumulators the int4 loop would be one long vpdpbusd dependency chain
    // (two per 64 bytes); DUAL gives the high nibbles their own accumulators.
    constexpr bool DUAL = I4 && MR * NV <= 4;
    __m512i acc[MR][NV], acc2[MR][NV];
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) {
        acc[r][v] = _mm512_set1_epi32(-x.off * x.ss[(m0 + r) * x.nb + b]);
        acc2[r][v] = _mm512_setzero_si512();
      }
    const int8_t* a = qa + b * x.bl;
    const uint8_t* wb = w + b * x.wblock;
    if constexpr (!I4) {
      const int64_t steps = x.bl / 4;
      for (int64_t s = 0; s < steps; ++s) {
        __m512i wv[NV];
#pragma GCC unroll 2
        for (int v = 0; v < NV; ++v) {
          if (kPF) _mm_prefetch((const char*)(wb + v * pb + s * 64 + kPF), _MM_HINT_T0);
          wv[v] = _mm512_loadu_si512(wb + v * pb + s * 64);
        }
#pragma GCC unroll 16
        for (int r = 0; r < MR; ++r) {
          const __m512i av = _mm512_set1_epi32(ld32(a + r * lqa + 4 * s));
#pragma GCC unroll 2
          for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_dpbusd_epi32(acc[r][v], wv[v], av);
        }
      }
    } else {
      const int64_t pairs = x.bl / 8;
      for (int64_t s = 0; s < pairs; ++s) {
        __m512i lo[NV], hi[NV];
#pragma GCC unroll 2
        for (int v = 0; v < NV; ++v) {
          if (kPF) _mm_prefetch((const char*)(wb + v * pb + s * 64 + kPF), _MM_HINT_T0);
          const __m512i t = _mm512_loadu_si512(wb + v * pb + s * 64);
          lo[v] = _mm512_and_si512(t, nib);
          hi[v] = _mm512_and_si512(_mm512_srli_epi16(t, 4), nib);
        }
#pragma GCC unroll 16
        for (int r = 0; r < MR; ++r) {
          const __m512i a0 = _mm512_set1_epi32(ld32(a + r * lqa + 8 * s));
          const __m512i a1 = _mm512_set1_epi32(ld32(a + r * lqa + 8 * s + 4));
#pragma GCC unroll 2
          for (int v = 0; v < NV; ++v) {
            acc[r][v] = _mm512_dpbusd_epi32(acc[r][v], lo[v], a0);
            if (DUAL) acc2[r][v] = _mm512_dpbusd_epi32(acc2[r][v], hi[v], a1);
            else acc[r][v] = _mm512_dpbusd_epi32(acc[r][v], hi[v], a1);
          }
        }
      }
    }
    // flush the block (acc = dot - off*sum): out += (sa*sw) * acc [+ (sa*sum) * min]
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) {
      const uint8_t* P = w + v * pb;
      const __m512 sw = load_scales16(P + x.scale_off + b * 16 * se, x.sf16);
      const __m512 mn = x.asym ? load_scales16(P + x.min_off + b * 16 * se, x.sf16) : _mm512_setzero_ps();
#pragma GCC unroll 16
      for (int r = 0; r < MR; ++r) {
        const int32_t sum = x.ss[(m0 + r) * x.nb + b];
        const float s_a = x.sa[(m0 + r) * x.nb + b];
        const __m512 f = _mm512_cvtepi32_ps(DUAL ? _mm512_add_epi32(acc[r][v], acc2[r][v]) : acc[r][v]);
        float* o = out + r * LD + v * 16;
        __m512 ov = _mm512_fmadd_ps(f, _mm512_mul_ps(sw, _mm512_set1_ps(s_a)), _mm512_loadu_ps(o));
        if (x.asym) ov = _mm512_fmadd_ps(mn, _mm512_set1_ps(s_a * (float)sum), ov);
        _mm512_storeu_ps(o, ov);
      }
    }
  }
}

#elif defined(__AVX2__)

static inline __m256 load_scales8(const uint8_t* p, bool f16) {
  if (f16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p));
  return _mm256_loadu_ps((const float*)p);
}

// AVX2 has no vpdpbusd; the u8 x s8 multiply is vpmaddubsw, which SATURATES its int16
// pair sums. int8: with u = q + 128 in [0, 255] and a in [-127, 127] a pair can reach
// 2*255*127 = 64770 > 32767, so this path uses the signed weights instead: w = u ^ 0x80,
// maddubs(|w|, sign(a, w)) = sum w*a, and |w| <= 128, |a| <= 127 bound a pair by
// 2*128*127 = 32512 < 32767 (the sign goes on the activation, which is never -128, so
// negating it cannot overflow; w = -128 is fine because |w| is read as unsigned 128).
// The weights are then used without offset (off = 0 for this path).
// int4: u in [0, 15] is used directly; a pair is at most 2*15*127 = 3810, so eight
// maddubs results (one 32-element run) can be summed in int16 (<= 30480) before one
// vpmaddwd widens them to int32.
template <int MR, int NV, bool I4>
TY_NO_LOOP_HEADER_COPY static void ukernel(const QCtx& x, const uint8_t* w, int64_t m0, float* out) {
  constexpr int LD = NV * 16, NH = 2 * NV;  // NH: 8-channel halves
  for (int i = 0; i < MR * LD; ++i) out[i] = 0.0f;
  const int8_t* qa = x.qa + m0 * x.lqa;
  const int64_t lqa = x.lqa, pb = x.pb, se = x.sf16 ? 2 : 4;
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i nib = _mm256_set1_epi8(0x0f);
  const __m256i flip = _mm256_set1_epi8((char)0x80);
  for (int64_t b = 0; b < x.nb; ++b) {
    // The accumulators start at -off*sum(qa), which removes the weight offset.
    __m256i acc[MR][NH];
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
      for (int h = 0; h < NH; ++h) acc[r][h] = _mm256_set1_epi32(-x.off * x.ss[(m0 + r) * x.nb + b]);
    const int8_t* a = qa + b * x.bl;
    const uint8_t* wb = w + b * x.wblock;
    if constexpr (!I4) {
      const int64_t steps = x.bl / 4;
      for (int64_t s = 0; s < steps; ++s) {
        __m256i ws[NH], wa[NH];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) if (kPF) _mm_prefetch((const char*)(wb + v * pb + s * 64 + kPF), _MM_HINT_T0);
#pragma GCC unroll 4
        for (int h = 0; h < NH; ++h) {
          ws[h] = _mm256_xor_si256(_mm256_loadu_si256((const __m256i*)(wb + (h >> 1) * pb + s * 64 + (h & 1) * 32)), flip);
          wa[h] = _mm256_abs_epi8(ws[h]);
        }
#pragma GCC unroll 16
        for (int r = 0; r < MR; ++r) {
          const __m256i av = _mm256_set1_epi32(ld32(a + r * lqa + 4 * s));
#pragma GCC unroll 4
          for (int h = 0; h < NH; ++h) {
            const __m256i p = _mm256_maddubs_epi16(wa[h], _mm256_sign_epi8(av, ws[h]));
            acc[r][h] = _mm256_add_epi32(acc[r][h], _mm256_madd_epi16(p, ones));
          }
        }
      }
    } else {
      const int64_t runs = x.bl / 32;  // 4 vectors (32 elements of K) per int16 run
      for (int64_t s4 = 0; s4 < runs; ++s4) {
        __m256i p16[MR][NH];
#pragma GCC unroll 16
        for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
          for (int h = 0; h < NH; ++h) p16[r][h] = _mm256_setzero_si256();
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) {
          const int64_t s = s4 * 4 + j;
          __m256i a0[MR], a1[MR];
          for (int v = 0; v < NV; ++v) if (kPF) _mm_prefetch((const char*)(wb + v * pb + s * 64 + kPF), _MM_HINT_T0);
#pragma GCC unroll 16
          for (int r = 0; r < MR; ++r) {
            a0[r] = _mm256_set1_epi32(ld32(a + r * lqa + 8 * s));
            a1[r] = _mm256_set1_epi32(ld32(a + r * lqa + 8 * s + 4));
          }
#pragma GCC unroll 4
          for (int h = 0; h < NH; ++h) {
            const __m256i t = _mm256_loadu_si256((const __m256i*)(wb + (h >> 1) * pb + s * 64 + (h & 1) * 32));
            const __m256i lo = _mm256_and_si256(t, nib), hi = _mm256_and_si256(_mm256_srli_epi16(t, 4), nib);
#pragma GCC unroll 16
            for (int r = 0; r < MR; ++r)
              // adds (saturating) never saturates here (|sum| <= 30480); unlike add it
              // keeps GCC from re-associating the sums into a register-hungry tree.
              p16[r][h] = _mm256_adds_epi16(_mm256_adds_epi16(p16[r][h], _mm256_maddubs_epi16(lo, a0[r])),
                                            _mm256_maddubs_epi16(hi, a1[r]));
          }
        }
#pragma GCC unroll 16
        for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
          for (int h = 0; h < NH; ++h) acc[r][h] = _mm256_add_epi32(acc[r][h], _mm256_madd_epi16(p16[r][h], ones));
      }
    }
#pragma GCC unroll 4
    for (int h = 0; h < NH; ++h) {
      const uint8_t* P = w + (h >> 1) * pb;
      const int64_t c0 = (h & 1) * 8;
      const __m256 sw = load_scales8(P + x.scale_off + (b * 16 + c0) * se, x.sf16);
      const __m256 mn = x.asym ? load_scales8(P + x.min_off + (b * 16 + c0) * se, x.sf16) : _mm256_setzero_ps();
#pragma GCC unroll 16
      for (int r = 0; r < MR; ++r) {
        const int32_t sum = x.ss[(m0 + r) * x.nb + b];
        const float s_a = x.sa[(m0 + r) * x.nb + b];
        const __m256 f = _mm256_cvtepi32_ps(acc[r][h]);
        float* o = out + r * LD + (h >> 1) * 16 + c0;
        __m256 ov = _mm256_fmadd_ps(f, _mm256_mul_ps(sw, _mm256_set1_ps(s_a)), _mm256_loadu_ps(o));
        if (x.asym) ov = _mm256_fmadd_ps(mn, _mm256_set1_ps(s_a * (float)sum), ov);
        _mm256_storeu_ps(o, ov);
      }
    }
  }
}

#else  // scalar

template <int MR, int NV, bool I4>
static void ukernel(const QCtx& x, const uint8_t* w, int64_t m0, float* out) {
  constexpr int LD = NV * 16;
  for (int i = 0; i < MR * LD; ++i) out[i] = 0.0f;
  const int8_t* qa = x.qa + m0 * x.lqa;
  for (int v = 0; v < NV; ++v) {
    const uint8_t* P = w + v * x.pb;
    for (int64_t b = 0; b < x.nb; ++b) {
      int32_t acc[MR][16] = {};
      const uint8_t* wb = P + b * x.wblock;
      const int8_t* a = qa + b * x.bl;
      if constexpr (!I4) {
        for (int64_t s = 0; s < x.bl / 4; ++s)
          for (int c = 0; c < 16; ++c)
            for (int i = 0; i < 4; ++i) {
              const int32_t u = wb[s * 64 + 4 * c + i];
              for (int r = 0; r < MR; ++r) acc[r][c] += u * a[r * x.lqa + 4 * s + i];
            }
      } else {
        for (int64_t s = 0; s < x.bl / 8; ++s)
          for (int c = 0; c < 16; ++c)
            for (int i = 0; i < 4; ++i) {
              const uint8_t byte = wb[s * 64 + 4 * c + i];
              const int32_t lo = byte & 15, hi = byte >> 4;
              for (int r = 0; r < MR; ++r)
                acc[r][c] += lo * a[r * x.lqa + 8 * s + i] + hi * a[r * x.lqa + 8 * s + 4 + i];
            }
      }
      for (int c = 0; c < 16; ++c) {
        const uint8_t* sp = P + x.scale_off + (b * 16 + c) * (x.sf16 ? 2 : 4);
        const uint8_t* mp = P + x.min_off + (b * 16 + c) * (x.sf16 ? 2 : 4);
        float sw, mn = 0;
        if (x.sf16) {
          uint16_t h; std::memcpy(&h, sp, 2); sw = f16_to_f32(h);
          if (x.asym) { std::memcpy(&h, mp, 2); mn = f16_to_f32(h); }
        } else {
          std::memcpy(&sw, sp, 4);
          if (x.asym) std::memcpy(&mn, mp, 4);
        }
        for (int r = 0; r < MR; ++r) {
          const int32_t sum = x.ss[(m0 + r) * x.nb + b];
          const float s_a = x.sa[(m0 + r) * x.nb + b];
          float& o = out[r * LD + v * 16 + c];
          o = o + (float)(acc[r][c] - x.off * sum) * (sw * s_a);
          if (x.asym) o = o + mn * (s_a * (float)sum);
        }
      }
    }
  }
}

#endif

using UKernel = void (*)(const QCtx&, const uint8_t*, int64_t, float*);

template <int NV, bool I4>
static UKernel pick(int mr) {
  switch (mr) {
    case 1: return &ukernel<1, NV, I4>;
    case 2: return &ukernel<2, NV, I4>;
    case 3: return &ukernel<3, NV, I4>;
#if defined(__AVX512F__)
    case 4: return &ukernel<4, NV, I4>;
    case 5: return &ukernel<5, NV, I4>;
    case 6: return &ukernel<6, NV, I4>;
    case 7: return &ukernel<7, NV, I4>;
    default: return &ukernel<8, NV, I4>;
#else
    default: return &ukernel<4, NV, I4>;
#endif
  }
}
// Rows per micro-kernel call. AVX2 has 16 ymm registers: the int4 kernel keeps int16 and
// int32 accumulators per row, so it takes 2 rows at a time.
static inline int mr_max(bool i4) {
#if defined(__AVX2__) && !defined(__AVX512F__)
  return i4 ? 2 : kMR;
#else
  (void)i4;
  return kMR;
#endif
}
static UKernel pick_kernel(bool i4, int nv, int mr) {
  if constexpr (kNV == 2) {
    if (nv == 2) return i4 ? pick<2, true>(mr) : pick<2, false>(mr);
  }
  (void)nv;
  return i4 ? pick<1, true>(mr) : pick<1, false>(mr);
}

}  // namespace

void qgemm(const QGemmArgs& g, Parallel& par) {
  const QuantFormat& f = g.w.fmt;
  const int64_t M = g.M, N = g.w.N, K = g.w.K;
  const QPackedLayout L = q_packed_layout(f, N, K);
  QCtx x;
  x.nb = L.nb;
  x.bl = L.block_len;
  x.wblock = L.wblock_bytes;
  x.scale_off = L.scale_off;
  x.min_off = L.min_off;
  x.pb = L.panel_bytes;
  x.i4 = f.kind == QKind::int4;
  x.asym = x.i4 && f.asym;
  x.sf16 = f.scale_dtype == DType::f16;
#if defined(__AVX2__) && !defined(__AVX512F__)
  x.off = x.i4 ? (x.asym ? 0 : 8) : 0;  // AVX2 int8 un-offsets the weights itself
#else
  x.off = x.i4 ? (x.asym ? 0 : 8) : 128;
#endif
  x.lqa = qgemm_act_stride(f, K);
  uint8_t* ws = static_cast<uint8_t*>(par.scratch(0, qgemm_workspace_bytes(f, M, K)));
  x.qa = reinterpret_cast<int8_t*>(ws);
  x.sa = reinterpret_cast<float*>(ws + M * x.lqa);
  x.ss = reinterpret_cast<int32_t*>(ws + M * x.lqa + M * x.nb * 4);

  // 1. activations
  {
    const int64_t per = M < 4 * (int64_t)par.threads() ? 1 : M / (4 * (int64_t)par.threads());
    const int64_t tasks = (M + per - 1) / per;
    par.for_each(tasks, [&](int64_t t, int) {
      const int64_t e = (t + 1) * per < M ? (t + 1) * per : M;
      for (int64_t m = t * per; m < e; ++m) quantize_row(g, x, m);
    });
  }

  // 2-4. dot products, scaling, epilogue
  const int64_t P = L.panels;
  const int mrx = mr_max(x.i4);
  if (M <= kSmallM) {
    const int64_t want = 8 * (int64_t)par.threads();
    const int64_t per = P <= want ? 1 : (P + want - 1) / want;
    const int64_t tasks = (P + per - 1) / per;
    par.for_each(tasks, [&](int64_t t, int) {
      alignas(64) float out[kMR * 16];
      const int64_t pe = (t + 1) * per < P ? (t + 1) * per : P;
      for (int64_t p = t * per; p < pe; ++p)
        for (int64_t m0 = 0; m0 < M; m0 += mrx) {
          const int mr = (int)(M - m0 < mrx ? M - m0 : mrx);
          pick_kernel(x.i4, 1, mr)(x, g.w.data + p * x.pb, m0, out);
          store_tile(g, out, mr, 16, m0, p * 16);
        }
    });
    return;
  }
  const int64_t ngrp = (P + kNV - 1) / kNV, nmc = (M + kMC - 1) / kMC;
  par.for_each(ngrp * nmc, [&](int64_t t, int) {
    alignas(64) float out[kMR * kNV * 16];
    const int64_t p0 = (t / nmc) * kNV, mc = t % nmc;
    const int nv = (int)(P - p0 < kNV ? P - p0 : kNV);
    const int64_t me = (mc + 1) * kMC < M ? (mc + 1) * kMC : M;
    for (int64_t m0 = mc * kMC; m0 < me; m0 += mrx) {
      const int mr = (int)(me - m0 < mrx ? me - m0 : mrx);
      pick_kernel(x.i4, nv, mr)(x, g.w.data + p0 * x.pb, m0, out);
      store_tile(g, out, mr, nv * 16, m0, p0 * 16);
    }
  });
}

TY_VARIANT_END
