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
#ifndef TY_QPFK
#define TY_QPFK 4096
#endif
// K-quant kernels (measured on the Zen 1 VM, M = 1 from DRAM, 1 thread: 1024 -> 4096 bytes
// took q4k from 6.9 to 9.3 GB/s and q6k from 8.0 to 10.7 GB/s).
constexpr int kPFq = TY_QPFK;

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
  // K-quants (q4k / q6k; i4 is false for them). Set by kq_ctx_init() / kq_ctx_bind().
  QKind kind = QKind::int8;
  int64_t sub_off = 0, submin_off = 0;  // offsets of sub-scales / mins inside a super-block
  int64_t sub = 0;                      // sub-block length (32 / 16), 0 when not a K-quant
  const int16_t* ssub = nullptr;        // [M][lsub] activation code sums per sub-block
  int64_t lsub = 0;                     // K / sub
};

// K-quant part of the QCtx setup (the driver calls these from its ctx_init / ctx_bind).
static inline void kq_ctx_init(QCtx& x, const QuantFormat& f, int64_t N, int64_t K) {
  x.kind = f.kind;
  if (!q_is_kquant(f.kind)) { x.sub = 0; x.lsub = 0; x.ssub = nullptr; return; }
  const QPackedLayout L = q_packed_layout(f, N, K);
  x.sub_off = L.sub_off;
  x.submin_off = L.submin_off;
  x.sub = q_sub_len(f);
  x.lsub = K / x.sub;
  x.off = 0;
}
// ws: the qgemm_workspace_bytes(f, M, K) workspace, after the activation codes, scales and
// block sums (the layout ctx_bind uses).
static inline void kq_ctx_bind(QCtx& x, uint8_t* ws, int64_t M) {
  x.ssub = x.sub ? reinterpret_cast<const int16_t*>(ws + M * x.lqa + M * x.nb * 8) : nullptr;
}

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
    // Formats with f16 weight scales (ggml's Q4_0 / Q4_1 / Q8_0 among them) keep the
    // activation scale in f16 too, as ggml's Q8_0 / Q8_1 activation blocks do: the codes are
    // the same, and results then agree with llama.cpp to the f32 summation order.
    sa[b] = x.sf16 && x.sub == 0 ? f16_to_f32(f32_to_f16(amax / 127.0f)) : amax / 127.0f;
    int32_t sum = 0;
    for (int64_t k = 0; k < len; k += 64) {
      int n = (int)(len - k < 64 ? len - k : 64);
      sum += chunk_quant(act_chunk(row, g.a_dtype, k0 + k, n, buf), n, inv, q + k0 + k);
    }
    ss[b] = sum;
    if (x.sub) {  // K-quants: code sums per sub-block (|sum| <= 32*127, fits int16)
      int16_t* sd = const_cast<int16_t*>(x.ssub) + m * x.lsub + k0 / x.sub;
      for (int64_t j = 0; j < len / x.sub; ++j) {
        int32_t t = 0;
        for (int64_t i = 0; i < x.sub; ++i) t += q[k0 + j * x.sub + i];
        sd[j] = (int16_t)t;
      }
    }
  }
  for (int64_t k = x.nb * len; k < x.lqa; ++k) q[k] = 0;  // padding reads as weight * 0
}

// ---- epilogue: store_tile / store_swiglu live in the driver section at the end -------

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

// ---- K-quant micro-kernels (q4k, q6k): MR rows x NV panels, whole K ----------------------
// Per super-block b (256 of K) and sub-block j, the exact integer dot product
// dot_j = sum_k q_k * qa_k is multiplied by the integer sub-scale sc_j in int32; the
// super-block flushes once to f32:
//   out += (sa*d) * sum_j sc_j*dot_j  [q4k: - (sa*dmin) * sum_j m_j*S_j, S_j = sum(qa) of j]
// Integer bounds (|qa| <= 127):
//   q4k: |dot_j| <= 32*15*127 = 60960; |sc_j*dot_j| <= 63*60960 = 3840480; 8 sub-blocks
//        <= 30723840.  |S_j| <= 32*127 = 4064; |sum_j m_j*S_j| <= 8*63*4064 = 2048256.
//   q6k: |dot_j| <= 16*32*127 = 65024; |sc_j*dot_j| <= 128*65024 = 8323072; 16 sub-blocks
//        <= 133169152.   All < 2^31 = 2147483648: exact in int32.
// AVX2 (vpmaddubsw saturates its int16 pair sums):
//   q4k: u = q in [0, 15]; a pair <= 2*15*127 = 3810, the 8 maddubs of one sub-block
//        (4 vectors x lo/hi) sum to <= 30480 < 32767 in int16; then vpmaddwd against the
//        sub-scale repeated in both int16 of a lane gives sc_j*dot_j in int32 directly
//        (<= 2*30480*63 = 3840480).
//   q6k: signed codes: maddubs(|w|, sign(qa, w)) = sum w*qa; |w| <= 32 bounds a pair by
//        2*32*127 = 8128 and the 4 maddubs of one sub-block by 32512 < 32767; vpmaddwd
//        with the signed sub-scale pair gives <= 2*32512*128 = 8323072.
//   mins: vpmaddwd of the (m_2p, m_2p+1) byte pairs (widened to int16) with the
//        activation sums (S_2p, S_2p+1) as an int16 pair.
// AVX-512 (vpdpbusd, u8 x s8 into int32, no saturation): q4k u = q; q6k u = q + 32 in
// [0, 63] with the accumulator started at -32*S_j (S_j over the 16 codes of sub-block j);
// then vpmulld by the sub-scale.

#if defined(__AVX512F__)

template <int MR, int NV, bool Q4>
TY_NO_LOOP_HEADER_COPY static void ukernel_kq(const QCtx& x, const uint8_t* w, int64_t m0, float* out) {
  constexpr int LD = NV * 16;
  for (int i = 0; i < MR * LD; ++i) out[i] = 0.0f;
  const int8_t* qa = x.qa + m0 * x.lqa;
  const int16_t* ssub = x.ssub + m0 * x.lsub;
  const int64_t lqa = x.lqa, pb = x.pb, lsub = x.lsub;
  const __m512i nib = _mm512_set1_epi8(0x0f);
  for (int64_t b = 0; b < x.nb; ++b) {
    const uint8_t* wb = w + b * x.wblock;
    const int8_t* a = qa + b * 256;
    __m512i tot[MR][NV];
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) tot[r][v] = _mm512_setzero_si512();
    constexpr int NS = Q4 ? 8 : 16;
    for (int j = 0; j < NS; ++j) {
      __m512i acc[MR][NV];
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
        for (int v = 0; v < NV; ++v)
          acc[r][v] = Q4 ? _mm512_setzero_si512() : _mm512_set1_epi32(-32 * (int32_t)ssub[r * lsub + b * 16 + j]);
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i) {
        const int64_t s = 4 * j + i;  // vector within the super-block
        if constexpr (Q4) {
          __m512i lo[NV], hi[NV];
#pragma GCC unroll 2
          for (int v = 0; v < NV; ++v) {
            if (kPFq) _mm_prefetch((const char*)(wb + v * pb + s * 64 + kPFq), _MM_HINT_T0);
            const __m512i t = _mm512_loadu_si512(wb + v * pb + s * 64);
            lo[v] = _mm512_and_si512(t, nib);
            hi[v] = _mm512_and_si512(_mm512_srli_epi16(t, 4), nib);
          }
#pragma GCC unroll 8
          for (int r = 0; r < MR; ++r) {
            const __m512i a0 = _mm512_set1_epi32(ld32(a + r * lqa + 8 * s));
            const __m512i a1 = _mm512_set1_epi32(ld32(a + r * lqa + 8 * s + 4));
#pragma GCC unroll 2
            for (int v = 0; v < NV; ++v)
              acc[r][v] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(acc[r][v], lo[v], a0), hi[v], a1);
          }
        } else {
          __m512i u[NV];
#pragma GCC unroll 2
          for (int v = 0; v < NV; ++v) {
            if (kPFq) _mm_prefetch((const char*)(wb + v * pb + s * 64 + kPFq), _MM_HINT_T0);
            u[v] = _mm512_loadu_si512(wb + v * pb + s * 64);  // u = q + 32
          }
#pragma GCC unroll 8
          for (int r = 0; r < MR; ++r) {
            const __m512i av = _mm512_set1_epi32(ld32(a + r * lqa + 4 * s));
#pragma GCC unroll 2
            for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_dpbusd_epi32(acc[r][v], u[v], av);
          }
        }
      }
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) {
        const __m128i sb = _mm_loadu_si128((const __m128i*)(wb + v * pb + x.sub_off + j * 16));
        const __m512i sc = Q4 ? _mm512_cvtepu8_epi32(sb) : _mm512_cvtepi8_epi32(sb);
#pragma GCC unroll 8
        for (int r = 0; r < MR; ++r) tot[r][v] = _mm512_add_epi32(tot[r][v], _mm512_mullo_epi32(acc[r][v], sc));
      }
    }
    // flush the super-block
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) {
      const uint8_t* P = w + v * pb;
      const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(P + x.scale_off + b * 32)));
      __m512 dm = _mm512_setzero_ps();
      __m512i mp[4];
      if constexpr (Q4) {
        dm = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(P + x.min_off + b * 32)));
#pragma GCC unroll 4
        for (int q = 0; q < 4; ++q)
          mp[q] = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i*)(wb + v * pb + x.submin_off + q * 32)));
      }
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) {
        const __m512 s_a = _mm512_set1_ps(x.sa[(m0 + r) * x.nb + b]);
        float* o = out + r * LD + v * 16;
        __m512 ov = _mm512_fmadd_ps(_mm512_cvtepi32_ps(tot[r][v]), _mm512_mul_ps(d, s_a), _mm512_loadu_ps(o));
        if constexpr (Q4) {
          const int16_t* S = ssub + r * lsub + b * 8;
          __m512i ms = _mm512_madd_epi16(mp[0], _mm512_set1_epi32(ld32((const int8_t*)(S + 0))));
#pragma GCC unroll 3
          for (int q = 1; q < 4; ++q)
            ms = _mm512_add_epi32(ms, _mm512_madd_epi16(mp[q], _mm512_set1_epi32(ld32((const int8_t*)(S + 2 * q)))));
          ov = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(ms), _mm512_mul_ps(dm, s_a), ov);
        }
        _mm512_storeu_ps(o, ov);
      }
    }
  }
}

#elif defined(__AVX2__)

// Sub-scale of channels 8h..8h+7 of a 16-byte row, each repeated in both int16 of a lane.
template <bool SIGNED>
static inline __m256i scale_pairs8(const uint8_t* p, int h) {
  const __m128i x = _mm_loadu_si128((const __m128i*)p);
  const __m128i d = h ? _mm_unpackhi_epi8(x, x) : _mm_unpacklo_epi8(x, x);
  return SIGNED ? _mm256_cvtepi8_epi16(d) : _mm256_cvtepu8_epi16(d);
}

template <int MR, int NV, bool Q4>
TY_NO_LOOP_HEADER_COPY static void ukernel_kq(const QCtx& x, const uint8_t* w, int64_t m0, float* out) {
  constexpr int LD = NV * 16, NH = 2 * NV;
  for (int i = 0; i < MR * LD; ++i) out[i] = 0.0f;
  const int8_t* qa = x.qa + m0 * x.lqa;
  const int16_t* ssub = x.ssub + m0 * x.lsub;
  const int64_t lqa = x.lqa, pb = x.pb, lsub = x.lsub;
  const __m256i nib = _mm256_set1_epi8(0x0f);
  for (int64_t b = 0; b < x.nb; ++b) {
    const uint8_t* wb = w + b * x.wblock;
    const int8_t* a = qa + b * 256;
    __m256i tot[MR][NH];
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
      for (int h = 0; h < NH; ++h) tot[r][h] = _mm256_setzero_si256();
    constexpr int NS = Q4 ? 8 : 16;
    for (int j = 0; j < NS; ++j) {
      __m256i p16[MR][NH];
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
        for (int h = 0; h < NH; ++h) p16[r][h] = _mm256_setzero_si256();
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i) {
        const int64_t s = 4 * j + i;
#pragma GCC unroll 2
        for (int v = 0; v < NV; ++v) if (kPFq) _mm_prefetch((const char*)(wb + v * pb + s * 64 + kPFq), _MM_HINT_T0);
        if constexpr (Q4) {
          __m256i a0[MR], a1[MR];
#pragma GCC unroll 8
          for (int r = 0; r < MR; ++r) {
            a0[r] = _mm256_set1_epi32(ld32(a + r * lqa + 8 * s));
            a1[r] = _mm256_set1_epi32(ld32(a + r * lqa + 8 * s + 4));
          }
#pragma GCC unroll 4
          for (int h = 0; h < NH; ++h) {
            const __m256i t = _mm256_loadu_si256((const __m256i*)(wb + (h >> 1) * pb + s * 64 + (h & 1) * 32));
            const __m256i lo = _mm256_and_si256(t, nib), hi = _mm256_and_si256(_mm256_srli_epi16(t, 4), nib);
#pragma GCC unroll 8
            for (int r = 0; r < MR; ++r)
              // adds never saturates here (see the bounds above); it also keeps GCC from
              // re-associating the sums.
              p16[r][h] = _mm256_adds_epi16(_mm256_adds_epi16(p16[r][h], _mm256_maddubs_epi16(lo, a0[r])),
                                            _mm256_maddubs_epi16(hi, a1[r]));
          }
        } else {
          // u = q + 32 in [0, 63]: two maddubs (<= 2 * 2*63*127 = 32004) per int16 run
          __m256i av[MR];
#pragma GCC unroll 8
          for (int r = 0; r < MR; ++r) av[r] = _mm256_set1_epi32(ld32(a + r * lqa + 4 * s));
#pragma GCC unroll 4
          for (int h = 0; h < NH; ++h) {
            const __m256i u = _mm256_loadu_si256((const __m256i*)(wb + (h >> 1) * pb + s * 64 + (h & 1) * 32));
#pragma GCC unroll 8
            for (int r = 0; r < MR; ++r) p16[r][h] = _mm256_adds_epi16(p16[r][h], _mm256_maddubs_epi16(u, av[r]));
          }
          if (i & 1) {
#pragma GCC unroll 4
            for (int h = 0; h < NH; ++h) {
              const __m256i sc = scale_pairs8<true>(wb + (h >> 1) * pb + x.sub_off + j * 16, h & 1);
#pragma GCC unroll 8
              for (int r = 0; r < MR; ++r) {
                tot[r][h] = _mm256_add_epi32(tot[r][h], _mm256_madd_epi16(p16[r][h], sc));
                p16[r][h] = _mm256_setzero_si256();
              }
            }
          }
        }
      }
      if constexpr (Q4) {
#pragma GCC unroll 4
        for (int h = 0; h < NH; ++h) {
          const __m256i sc = scale_pairs8<false>(wb + (h >> 1) * pb + x.sub_off + j * 16, h & 1);
#pragma GCC unroll 8
          for (int r = 0; r < MR; ++r) tot[r][h] = _mm256_add_epi32(tot[r][h], _mm256_madd_epi16(p16[r][h], sc));
        }
      }
    }
    if constexpr (!Q4) {
      // q6k: remove the +32 offset: tot -= 32 * sum_j sc_j * S_j, the sum as vpmaddwd of
      // (sc_2p, sc_2p+1) int16 pairs with the activation sums (S_2p, S_2p+1).
#pragma GCC unroll 4
      for (int h = 0; h < NH; ++h) {
        const uint8_t* sp = wb + (h >> 1) * pb + x.sub_off;
        __m256i scp[8];
#pragma GCC unroll 8
        for (int q = 0; q < 8; ++q) {
          const __m128i x0 = _mm_loadu_si128((const __m128i*)(sp + 32 * q));
          const __m128i x1 = _mm_loadu_si128((const __m128i*)(sp + 32 * q + 16));
          scp[q] = _mm256_cvtepi8_epi16((h & 1) ? _mm_unpackhi_epi8(x0, x1) : _mm_unpacklo_epi8(x0, x1));
        }
#pragma GCC unroll 8
        for (int r = 0; r < MR; ++r) {
          const int16_t* S = ssub + r * lsub + b * 16;
          __m256i cs = _mm256_madd_epi16(scp[0], _mm256_set1_epi32(ld32((const int8_t*)S)));
#pragma GCC unroll 7
          for (int q = 1; q < 8; ++q)
            cs = _mm256_add_epi32(cs, _mm256_madd_epi16(scp[q], _mm256_set1_epi32(ld32((const int8_t*)(S + 2 * q)))));
          tot[r][h] = _mm256_sub_epi32(tot[r][h], _mm256_slli_epi32(cs, 5));
        }
      }
    }
    // flush the super-block
#pragma GCC unroll 4
    for (int h = 0; h < NH; ++h) {
      const uint8_t* P = w + (h >> 1) * pb;
      const int c0 = (h & 1) * 8;
      const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(P + x.scale_off + b * 32 + c0 * 2)));
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) {
        const __m256 s_a = _mm256_set1_ps(x.sa[(m0 + r) * x.nb + b]);
        float* o = out + r * LD + (h >> 1) * 16 + c0;
        __m256 ov = _mm256_fmadd_ps(_mm256_cvtepi32_ps(tot[r][h]), _mm256_mul_ps(d, s_a), _mm256_loadu_ps(o));
        if constexpr (Q4) {
          const __m256 dm = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(P + x.min_off + b * 32 + c0 * 2)));
          const int16_t* S = ssub + r * lsub + b * 8;
          const uint8_t* mb = wb + (h >> 1) * pb + x.submin_off + (h & 1) * 16;
          __m256i ms = _mm256_setzero_si256();
#pragma GCC unroll 4
          for (int q = 0; q < 4; ++q)
            ms = _mm256_add_epi32(ms, _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i*)(mb + q * 32))),
                                                        _mm256_set1_epi32(ld32((const int8_t*)(S + 2 * q)))));
          ov = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(ms), _mm256_mul_ps(dm, s_a), ov);
        }
        _mm256_storeu_ps(o, ov);
      }
    }
  }
}

#else  // scalar

template <int MR, int NV, bool Q4>
static void ukernel_kq(const QCtx& x, const uint8_t* w, int64_t m0, float* out) {
  constexpr int LD = NV * 16;
  for (int i = 0; i < MR * LD; ++i) out[i] = 0.0f;
  const int8_t* qa = x.qa + m0 * x.lqa;
  const int16_t* ssub = x.ssub + m0 * x.lsub;
  constexpr int NS = Q4 ? 8 : 16, SL = Q4 ? 32 : 16;
  for (int v = 0; v < NV; ++v) {
    const uint8_t* P = w + v * x.pb;
    for (int64_t b = 0; b < x.nb; ++b) {
      const uint8_t* wb = P + b * x.wblock;
      const int8_t* a = qa + b * 256;
      int32_t tot[MR][16] = {}, ms[MR][16] = {};
      for (int j = 0; j < NS; ++j) {
        int32_t dot[MR][16] = {};
        for (int kl = j * SL; kl < (j + 1) * SL; ++kl)
          for (int c = 0; c < 16; ++c) {
            int q;
            if (Q4) {
              const uint8_t byte = wb[(kl / 8) * 64 + 4 * c + (kl & 3)];
              q = (kl & 7) < 4 ? (byte & 15) : (byte >> 4);
            } else {
              q = (int)wb[(kl / 4) * 64 + 4 * c + (kl & 3)] - 32;
            }
            for (int r = 0; r < MR; ++r) dot[r][c] += q * a[r * x.lqa + kl];
          }
        for (int c = 0; c < 16; ++c) {
          const int32_t sc = Q4 ? (int32_t)wb[x.sub_off + j * 16 + c] : (int32_t)(int8_t)wb[x.sub_off + j * 16 + c];
          const int32_t m = Q4 ? (int32_t)wb[x.submin_off + (j / 2) * 32 + 2 * c + (j & 1)] : 0;
          for (int r = 0; r < MR; ++r) {
            tot[r][c] += sc * dot[r][c];
            if (Q4) ms[r][c] += m * ssub[r * x.lsub + b * 8 + j];
          }
        }
      }
      for (int c = 0; c < 16; ++c) {
        uint16_t h;
        std::memcpy(&h, P + x.scale_off + (b * 16 + c) * 2, 2);
        const float d = f16_to_f32(h);
        float dm = 0;
        if (Q4) { std::memcpy(&h, P + x.min_off + (b * 16 + c) * 2, 2); dm = f16_to_f32(h); }
        for (int r = 0; r < MR; ++r) {
          const float s_a = x.sa[(m0 + r) * x.nb + b];
          float& o = out[r * LD + v * 16 + c];
          o = o + (float)tot[r][c] * (d * s_a);
          if (Q4) o = o - (float)ms[r][c] * (dm * s_a);
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

// K-quant rows per call: AVX2 keeps int16 and int32 accumulators per row and half (2 rows
// fit the 16 ymm registers); AVX-512 4 rows x 2 panels; scalar 4.
#if defined(__AVX512F__)
constexpr int kMRq = 4;
#elif defined(__AVX2__)
constexpr int kMRq = 2;
#else
constexpr int kMRq = 4;
#endif
template <int NV, bool Q4>
static UKernel pick_kq(int mr) {
  switch (mr) {
    case 1: return &ukernel_kq<1, NV, Q4>;
    default: break;
  }
  if constexpr (kMRq >= 4) {
    if (mr == 2) return &ukernel_kq<2, NV, Q4>;
    if (mr == 3) return &ukernel_kq<3, NV, Q4>;
    return &ukernel_kq<(kMRq >= 4 ? 4 : 1), NV, Q4>;
  } else {
    return &ukernel_kq<2, NV, Q4>;
  }
}
// Every format: the drivers call these with their QCtx (the bool overloads above serve
// int8 / int4 only).
static inline int mr_max(const QCtx& x) { return x.sub ? kMRq : mr_max(x.i4); }
static UKernel pick_kernel(const QCtx& x, int nv, int mr) {
  if (!x.sub) return pick_kernel(x.i4, nv, mr);
  const bool q4 = x.kind == QKind::q4k;
  if constexpr (kNV == 2) {
    if (nv == 2) return q4 ? pick_kq<2, true>(mr) : pick_kq<2, false>(mr);
  }
  (void)nv;
  return q4 ? pick_kq<1, true>(mr) : pick_kq<1, false>(mr);
}

// ======== driver: tasks, epilogues, fused SwiGLU, grouped (MoE) GEMM =======================
// Everything from here to the end of the file is the driver. It reaches the micro-kernels
// only through pick_kernel() / mr_max() and the activations only through quantize_row().
//
// Work units: plain GEMM: one 16-channel panel; SwiGLU: one gate/up panel pair (packed
// panels 2q and 2q+1, output channels 16q..16q+15), so both tiles of an output tile are
// computed by the same task, back to back, and combined from the f32 accumulators.
//  - rows <= kSmallM (decode): a task owns a range of units and all rows: every weight
//    byte is streamed once and applied to all rows.
//  - rows > kSmallM: a task is one group of units (kNV panels, or one pair) x up to kMC
//    rows; the group's weights stay in L1/L2 while the activation rows stream.
// The grouped GEMM plans every expert's segment with the same rule, by its own row count,
// and runs all experts' tasks in one parallel loop (so a skewed routing still spreads over
// every thread, and an empty expert has no task at all).

static inline float load_c(const void* p, DType t, int64_t i) {
  if (t == DType::f32) return static_cast<const float*>(p)[i];
  const uint16_t h = static_cast<const uint16_t*>(p)[i];
  return t == DType::f16 ? f16_to_f32(h) : bf16_to_f32(h);
}
static inline void put_c(void* C, DType t, int64_t i, float v) {
  if (t == DType::f32) static_cast<float*>(C)[i] = v;
  else if (t == DType::f16) static_cast<uint16_t*>(C)[i] = f32_to_f16(v);
  else static_cast<uint16_t*>(C)[i] = f32_to_bf16(v);
}

struct OutDesc {
  DType c_dtype = DType::f32;
  void* C = nullptr;
  int64_t ldc = 0;
  int64_t N = 0;                   // output channels
  const float* bias = nullptr;     // plain: [N]; swiglu: gate bias [N]
  const float* bias_up = nullptr;  // swiglu: up bias [N]
  const void* residual = nullptr;  // plain only
  int64_t ldr = 0;
};

// out: [mr][ld] f32 tile for rows m0.., channels n0..n0+ld-1 (clipped to N).
static void store_tile(const OutDesc& g, const float* out, int mr, int ld, int64_t m0, int64_t n0) {
  const int64_t nv = g.N - n0 < ld ? g.N - n0 : ld;
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
      put_c(g.C, g.c_dtype, m * g.ldc + n0 + j, v);
    }
  }
}

#if defined(__AVX2__)
// exp(x), 8 lanes: Cephes expf. n = rne(x / ln 2), r = x - n ln2 (two-part ln 2, fused),
// e^r by a degree-7 polynomial, times 2^n built in the exponent field. x is clamped to
// [-87, 89]: below, 2^n stays normal (exp(-87) is returned for smaller x, which only adds
// 1e-38 to 1 in silu); above 88.38, n = 128 builds the +inf bit pattern, so exp overflows
// to +inf slightly early (true overflow: 88.72) and silu(x) = -0 for x < -88.38, where
// |silu(x)| < 4e-37. Max error in [-87, 88.38], measured by qgemm_fused_test: 2 ulp.
// NaN: the clamp maps it to -87, and silu's x / (1 + e) returns the NaN anyway.
static inline __m256 exp8(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(89.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r);
  p = _mm256_add_ps(p, _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
// u * silu(g) = u * (g / (1 + exp(-g)))
static inline __m256 swiglu8(__m256 g, __m256 u) {
  const __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
  return _mm256_mul_ps(u, _mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), e)));
}
#endif

// h[0..16) = silu(g + bg) * (u + bu); bg / bu may be null (no bias); 16 readable entries each.
static inline void swiglu16(const float* g, const float* u, const float* bg, const float* bu, float* h) {
#if defined(__AVX2__)
  for (int j = 0; j < 16; j += 8) {
    __m256 gv = _mm256_loadu_ps(g + j), uv = _mm256_loadu_ps(u + j);
    if (bg) gv = _mm256_add_ps(gv, _mm256_loadu_ps(bg + j));
    if (bu) uv = _mm256_add_ps(uv, _mm256_loadu_ps(bu + j));
    _mm256_storeu_ps(h + j, swiglu8(gv, uv));
  }
#else
  for (int j = 0; j < 16; ++j) {
    const float gv = bg ? g[j] + bg[j] : g[j];
    const float uv = bu ? u[j] + bu[j] : u[j];
    h[j] = uv * (gv / (1.0f + std::exp(-gv)));
  }
#endif
}

// h = silu(g + bg) * (u + bu) for rows m0..m0+mr-1, output channels n0.. (clipped to N).
// gt / ut: [mr][ld] f32 gate / up tiles (16 channels each).
static void store_swiglu(const OutDesc& o, const float* gt, const float* ut, int ld, int mr, int64_t m0, int64_t n0) {
  const int nv = (int)(o.N - n0 < 16 ? o.N - n0 : 16);
  alignas(32) float bg[16] = {}, bu[16] = {}, h[16];
  if (o.bias) for (int j = 0; j < nv; ++j) bg[j] = o.bias[n0 + j];
  if (o.bias_up) for (int j = 0; j < nv; ++j) bu[j] = o.bias_up[n0 + j];
  for (int r = 0; r < mr; ++r) {
    swiglu16(gt + r * ld, ut + r * ld, o.bias ? bg : nullptr, o.bias_up ? bu : nullptr, h);
    const int64_t base = (m0 + r) * o.ldc + n0;
    if (o.c_dtype == DType::f32) std::memcpy(static_cast<float*>(o.C) + base, h, (size_t)nv * 4);
    else for (int j = 0; j < nv; ++j) put_c(o.C, o.c_dtype, base + j, h[j]);
  }
}

struct Drv {
  QCtx x;
  OutDesc o;
  bool swiglu = false;
  int mrx = 1;
};

static_assert(kMRq <= kMR, "run_units sizes its tiles by kMR rows");

// Units [u0, u1) x rows [mb, me) of the weights at w.
static void run_units(const Drv& d, const uint8_t* w, int64_t u0, int64_t u1, int64_t mb, int64_t me) {
  alignas(64) float out[kMR * 32];
  alignas(64) float out2[kMR * 16];
  const int64_t pb = d.x.pb;
  const int mrx = d.mrx;
  if (!d.swiglu) {
    for (int64_t p = u0; p < u1; p += kNV) {
      const int nv = (int)(u1 - p < kNV ? u1 - p : kNV);
      for (int64_t m0 = mb; m0 < me; m0 += mrx) {
        const int mr = (int)(me - m0 < mrx ? me - m0 : mrx);
        pick_kernel(d.x, nv, mr)(d.x, w + p * pb, m0, out);
        store_tile(d.o, out, mr, nv * 16, m0, p * 16);
      }
    }
    return;
  }
  for (int64_t q = u0; q < u1; ++q)
    for (int64_t m0 = mb; m0 < me; m0 += mrx) {
      const int mr = (int)(me - m0 < mrx ? me - m0 : mrx);
      if constexpr (kNV == 2) {
        pick_kernel(d.x, 2, mr)(d.x, w + 2 * q * pb, m0, out);  // [mr][32]: gate | up
        store_swiglu(d.o, out, out + 16, 32, mr, m0, q * 16);
      } else {
        const UKernel k = pick_kernel(d.x, 1, mr);
        k(d.x, w + 2 * q * pb, m0, out);
        k(d.x, w + (2 * q + 1) * pb, m0, out2);
        store_swiglu(d.o, out, out2, 16, mr, m0, q * 16);
      }
    }
}

// Rows per task on the tiled (large-M) path, and the order of its tasks (0: consecutive
// tasks share a unit group and walk the row chunks; 1: consecutive tasks share a row chunk
// and walk the unit groups). Compile-time knobs (-DTY_QMC=, -DTY_QORDER=); A/B-measured on
// the 2-core AVX2 VM (M = 512, 4096x4096 and 4096x11008): 32 / 64 / 128 rows and either
// order all within 2% of each other.
#ifndef TY_QMC
#define TY_QMC 64
#endif
#ifndef TY_QORDER
#define TY_QORDER 0
#endif
constexpr int kRowsTask = TY_QMC;

struct SegPlan {
  int64_t tasks = 0;
  bool small = false;
  int64_t per = 1;   // small: units per task
  int64_t ugrp = 1;  // tiled: units per task
  int64_t nmc = 1;   // tiled: row chunks
  int64_t ngrp = 1;  // tiled: unit groups
};
static SegPlan plan_segment(int64_t rows, int64_t U, bool swiglu, int threads) {
  SegPlan s;
  if (rows <= 0) return s;
  if (rows <= kSmallM) {
    const int64_t want = 8 * (int64_t)threads;
    s.small = true;
    s.per = U <= want ? 1 : (U + want - 1) / want;
    s.tasks = (U + s.per - 1) / s.per;
  } else {
    s.ugrp = swiglu ? 1 : kNV;
    s.nmc = (rows + kRowsTask - 1) / kRowsTask;
    s.ngrp = (U + s.ugrp - 1) / s.ugrp;
    s.tasks = ((U + s.ugrp - 1) / s.ugrp) * s.nmc;
  }
  return s;
}
// Task t of a segment (rows [mb, me) of the activations / C, U units of the weights at w).
static void run_task(const Drv& d, const uint8_t* w, int64_t mb, int64_t me, int64_t U, const SegPlan& s, int64_t t) {
  if (s.small) {
    const int64_t u0 = t * s.per, u1 = u0 + s.per < U ? u0 + s.per : U;
    run_units(d, w, u0, u1, mb, me);
  } else {
    const int64_t grp = TY_QORDER ? t % s.ngrp : t / s.nmc, mc = TY_QORDER ? t / s.ngrp : t % s.nmc;
    const int64_t u0 = grp * s.ugrp, u1 = u0 + s.ugrp < U ? u0 + s.ugrp : U;
    const int64_t r0 = mb + mc * kRowsTask, r1 = r0 + kRowsTask < me ? r0 + kRowsTask : me;
    run_units(d, w, u0, u1, r0, r1);
  }
}

// Everything of QCtx that depends on the weight format and shape (not the activations).
static void ctx_init(QCtx& x, const QuantFormat& f, int64_t N, int64_t K) {
  const QPackedLayout L = q_packed_layout(f, N, K);
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
  kq_ctx_init(x, f, N, K);
}
// Points the activation arrays of x at a qgemm_workspace_bytes(f, M, K) workspace.
static void ctx_bind(QCtx& x, uint8_t* ws, int64_t M) {
  x.qa = reinterpret_cast<int8_t*>(ws);
  x.sa = reinterpret_cast<float*>(ws + M * x.lqa);
  x.ss = reinterpret_cast<int32_t*>(ws + M * x.lqa + M * x.nb * 4);
  kq_ctx_bind(x, ws, M);
}
// Copies the quantized activation row `from` to row `to` (every per-row array of QCtx).
static void copy_act_row(const QCtx& x, int64_t from, int64_t to) {
  std::memcpy(const_cast<int8_t*>(x.qa) + to * x.lqa, x.qa + from * x.lqa, (size_t)x.lqa);
  std::memcpy(const_cast<float*>(x.sa) + to * x.nb, x.sa + from * x.nb, (size_t)x.nb * 4);
  std::memcpy(const_cast<int32_t*>(x.ss) + to * x.nb, x.ss + from * x.nb, (size_t)x.nb * 4);
  if (x.ssub) std::memcpy(const_cast<int16_t*>(x.ssub) + to * x.lsub, x.ssub + from * x.lsub, (size_t)x.lsub * 2);
}

}  // namespace

void qgemm(const QGemmArgs& g, Parallel& par) {
  const QuantFormat& f = g.w.fmt;
  const int64_t M = g.M, N = g.w.N, K = g.w.K;
  Drv d;
  ctx_init(d.x, f, N, K);
  ctx_bind(d.x, static_cast<uint8_t*>(par.scratch(0, qgemm_workspace_bytes(f, M, K))), M);

  // 1. activations
  {
    const QCtx& x = d.x;
    const int64_t per = M < 4 * (int64_t)par.threads() ? 1 : M / (4 * (int64_t)par.threads());
    const int64_t tasks = (M + per - 1) / per;
    par.for_each(tasks, [&](int64_t t, int) {
      const int64_t e = (t + 1) * per < M ? (t + 1) * per : M;
      for (int64_t m = t * per; m < e; ++m) quantize_row(g, x, m);
    });
  }

  // 2-4. dot products, scaling, epilogue
  d.swiglu = g.epilogue == QEpilogue::swiglu;
  d.mrx = mr_max(d.x);
  d.o.c_dtype = g.c_dtype; d.o.C = g.C; d.o.ldc = g.ldc; d.o.N = N;
  d.o.bias = g.bias;
  d.o.bias_up = d.swiglu && g.bias ? g.bias + N : nullptr;
  d.o.residual = d.swiglu ? nullptr : g.residual;
  d.o.ldr = g.ldr;
  const int64_t U = (N + kQPanel - 1) / kQPanel;  // panels (plain) or gate/up pairs (swiglu)
  const SegPlan s = plan_segment(M, U, d.swiglu, par.threads());
  par.for_each(s.tasks, [&](int64_t t, int) { run_task(d, g.w.data, 0, M, U, s, t); });
}

void qgemm_swiglu_apply(const float* g, const float* u, float* h, int64_t n) {
  alignas(32) float gb[16], ub[16], hb[16];
  for (int64_t i = 0; i < n; i += 16) {
    const int c = (int)(n - i < 16 ? n - i : 16);
    for (int j = 0; j < 16; ++j) { gb[j] = j < c ? g[i + j] : 0.0f; ub[j] = j < c ? u[i + j] : 0.0f; }
    swiglu16(gb, ub, nullptr, nullptr, hb);
    std::memcpy(h + i, hb, (size_t)c * 4);
  }
}

void qgemm_grouped(const QGroupedArgs& g, Parallel& par) {
  if (g.R <= 0 || g.E <= 0) return;
  const QuantFormat& f = g.fmt;
  const int64_t R = g.R, T = g.T, K = g.K, N = g.N, E = g.E;
  const int threads = par.threads();
  Drv d;
  ctx_init(d.x, f, N, K);
  uint8_t* ws = static_cast<uint8_t*>(par.scratch(0, qgemm_grouped_workspace_bytes(f, T, R, K, E)));
  ctx_bind(d.x, ws, R);
  const size_t o1 = (qgemm_workspace_bytes(f, R, K) + 63) & ~(size_t)63;
  const size_t o2 = (o1 + (size_t)T * 4 + 63) & ~(size_t)63;
  int32_t* first = reinterpret_cast<int32_t*>(ws + o1);  // first assignment of each source row
  int64_t* pre = reinterpret_cast<int64_t*>(ws + o2);    // task prefix sums per expert

  // 1. activations: each distinct source row is quantized once, into the slot of its first
  //    assignment; the other assignments of that row copy the quantized row.
  for (int64_t t = 0; t < T; ++t) first[t] = -1;
  int64_t dups = 0;
  for (int64_t i = 0; i < R; ++i) {
    const int32_t s = g.rows[i];
    if (first[s] < 0) first[s] = (int32_t)i;
    else ++dups;
  }
  {
    const QCtx& x = d.x;
    QGemmArgs ga;
    ga.w.fmt = f; ga.w.N = N; ga.w.K = K;
    ga.a_dtype = g.a_dtype; ga.lda = g.lda; ga.M = R;
    const size_t row_bytes = (size_t)g.lda * dtype_bytes(g.a_dtype, 1);
    const int64_t per = R < 4 * (int64_t)threads ? 1 : R / (4 * (int64_t)threads);
    const int64_t tasks = (R + per - 1) / per;
    par.for_each(tasks, [&](int64_t t, int) {
      const int64_t e = (t + 1) * per < R ? (t + 1) * per : R;
      for (int64_t i = t * per; i < e; ++i) {
        const int32_t s = g.rows[i];
        if (first[s] != i) continue;
        // quantize_row(ga, x, i) reads A row i and writes slot i: shift A (as an integer,
        // no out-of-range pointer is formed) so that its row i is source row s.
        QGemmArgs gi = ga;
        gi.A = reinterpret_cast<const void*>(reinterpret_cast<uintptr_t>(g.A) + (uintptr_t)((s - i) * (int64_t)row_bytes));
        quantize_row(gi, x, i);
      }
    });
    if (dups)
      par.for_each(tasks, [&](int64_t t, int) {
        const int64_t e = (t + 1) * per < R ? (t + 1) * per : R;
        for (int64_t i = t * per; i < e; ++i) {
          const int32_t fi = first[g.rows[i]];
          if (fi != i) copy_act_row(x, fi, i);
        }
      });
  }

  // 2-4. every expert's segment, all in one parallel loop
  d.swiglu = g.epilogue == QEpilogue::swiglu;
  d.mrx = mr_max(d.x);
  d.o.c_dtype = g.c_dtype; d.o.C = g.C; d.o.ldc = g.ldc; d.o.N = N;
  const int64_t U = (N + kQPanel - 1) / kQPanel;
  pre[0] = 0;
  for (int64_t e = 0; e < E; ++e)
    pre[e + 1] = pre[e] + plan_segment(g.offsets[e + 1] - g.offsets[e], U, d.swiglu, threads).tasks;
  par.for_each(pre[E], [&](int64_t t, int) {
    int64_t lo = 0, hi = E;  // the last e with pre[e] <= t (then pre[e+1] > t)
    while (hi - lo > 1) {
      const int64_t mid = (lo + hi) / 2;
      if (pre[mid] <= t) lo = mid; else hi = mid;
    }
    const int64_t e = lo, mb = g.offsets[e], me = g.offsets[e + 1];
    Drv de = d;
    if (g.bias) {
      de.o.bias = g.bias + e * g.ldb;
      de.o.bias_up = d.swiglu ? de.o.bias + N : nullptr;
    }
    run_task(de, g.w[e], mb, me, U, plan_segment(me - mb, U, d.swiglu, threads), t - pre[e]);
  });
}

TY_VARIANT_END
