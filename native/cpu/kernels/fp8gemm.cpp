// Tachyon: FP8 GEMM, C = A · Wᵀ with e4m3 / e5m2 repacked weights (W8A16 and W8A8).
// ISA-variant file (compiled as scalar, avx2 and avx512). Formats: docs/formats.md ("FP8")
// and native/include/tachyon/fp8.h.
//
// No FP8 arithmetic on these CPUs: weights are widened to f32 exactly and multiplied in
// f32 FMA. e5m2: binary16 bits = code << 8, then F16C vcvtph2ps. e4m3: the repacked layout
// stores nibble-swapped codes in a permuted order (fp8_code_pos) so that the f32 bits of
// value * 2^-120 come out of two ANDs, one vpshufb and two unpack levels (cvt32<true>);
// on the AVX2 machine measured that is 1.3x faster than the binary16 + vcvtph2ps route,
// whose shifts and conversions were the M = 1 bottleneck. The scalar variant decodes
// through a 256-entry table (exact values).
//
// Plan of one call
//  1. Activations -> f32 workspace (widened; for W8A8 quantized per row to e4m3 and kept
//     as the exact decoded values, the row scale sa applied in the epilogue), zero-padded
//     to Kp columns.
//  2. M <= 8 (decode / GEMV, DRAM bound): a task owns a range of 16-channel panels and
//     streams each weight byte once, applying it to every row (4 rows per pass on AVX2)
//     while it is in registers; partial sums per 128-column block are scaled into an f32
//     row tile (block scale, or channel scale) and the epilogue stores it.
//     M > 8 (compute bound): a task owns 96 rows x 64 channels. Per K chunk of 256 it
//     converts its weight strip once into f32 (scaled by the block scale for block128) in
//     L1/L2 and runs an f32 FMA register-tiled micro-kernel over it (AVX2 6 x 16, AVX-512
//     12 x 32, scalar 4 x 16) with activations prepacked in row panels by step 1.
//  3. Epilogue: (channel / tensor scale) * (row scale) + bias + residual, one rounding.
#include <cmath>
#include <cstring>

#include "isa.h"
#include "qkernels.h"
#include "tachyon/dtype.h"
#include "tachyon/fp8.h"
#if defined(__AVX2__)
#include <immintrin.h>
#endif

TY_VARIANT_BEGIN
namespace {

using i64 = int64_t;

#if defined(__AVX512F__)
constexpr int MR = 12, NRW = 32, kGroupRows = 8;
#elif defined(__AVX2__)
constexpr int MR = 6, NRW = 16, kGroupRows = 4;
#else
constexpr int MR = 4, NRW = 16, kGroupRows = 4;
#endif
constexpr int kSmallM = 8;
static_assert(kFp8MC % MR == 0 && kFp8RowAlign % MR == 0 && kFp8NC % NRW == 0, "tiles");
#ifndef TY_FP8_PF
#define TY_FP8_PF 1024
#endif
constexpr int kPF = TY_FP8_PF;  // software prefetch distance in the weight stream (bytes)

#if defined(__GNUC__) && !defined(__clang__)
#define TY_NO_LOOP_HEADER_COPY __attribute__((optimize("no-tree-ch")))
#else
#define TY_NO_LOOP_HEADER_COPY
#endif

// Decoded e4m3 weights (SIMD variants) are value * 2^-120 (see cvt32<true>).
#if defined(__AVX2__)
constexpr float kE4Dec = 0x1p-120f, kE4Inv = 0x1p120f;
#else
constexpr float kE4Dec = 1.0f, kE4Inv = 1.0f;  // the scalar table decodes exactly
#endif

struct Ctx {
  const Fp8GemmArgs* g;
  Fp8PackedLayout L;
  bool e4, block;
  float wmul;            // large-M path: decoded weights * wmul = exact values (2^120 or 1)
  float apre[kSmallM];   // GEMV: activation row m is stored times apre[m] (a power of two)
  float post[kSmallM];   // GEMV: per-row factor of the partial sums (= kE4Inv / apre[m])
  float* af;             // activations (f32): GEMV rows [M][Kp]; GEMM row panels [Mp/MR][Kp][MR]
  float* rs;             // row scales [M] (w8a8), or null
  uint8_t* thr;          // per-thread buffers
  float lut[256];        // scalar decode table, indexed by the stored byte (exact values)
};

// ---- weight decoding -------------------------------------------------------------------

#if defined(__AVX2__)
// 32 stored bytes = rows k and k+1 of a panel (16 channels each) -> 4 x 8 f32:
// w0 = (k, ch 0-7), w1 = (k, ch 8-15), w2 = (k+1, ch 0-7), w3 = (k+1, ch 8-15).
//
// e4m3 (E4): the repacked layout stores each code nibble-swapped (e0 m2 m1 m0 | s e3 e2 e1)
// at the position fp8_code_pos() gives, which is chosen so that the two unpack levels
// below bring the channels out in order. The f32 built here has
//   byte 2 = stored & 0xF0            = e0 m2 m1 m0 0000   (exponent LSB + 3 mantissa bits)
//   byte 3 = lut[stored & 0x0F]       = s 0000 e3 e2 e1    (vpshufb: sign + exponent bits)
// i.e. exponent field = e: the value times 2^-120, exact for every code (subnormal codes
// become f32 denormals, which FMA takes at full speed). No shifts and no vcvtph2ps: on the
// AVX2 machines measured both cost ~1.5-3 cycles per ymm and made the decode, not DRAM,
// the limit of M = 1. The NaN code reads as 480 * 2^-120 (finite).
// e5m2: binary16 bits = code << 8 (unpack with zero), then vcvtph2ps: exact values.
template <bool E4>
static inline void cvt32(__m256i v, __m256& w0, __m256& w1, __m256& w2, __m256& w3) {
  if (E4) {
    const __m256i lut = _mm256_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, (char)0x80, (char)0x81, (char)0x82, (char)0x83, (char)0x84,
                                         (char)0x85, (char)0x86, (char)0x87, 0, 1, 2, 3, 4, 5, 6, 7, (char)0x80, (char)0x81,
                                         (char)0x82, (char)0x83, (char)0x84, (char)0x85, (char)0x86, (char)0x87);
    const __m256i b2 = _mm256_and_si256(v, _mm256_set1_epi8((char)0xF0));
    const __m256i b3 = _mm256_shuffle_epi8(lut, _mm256_and_si256(v, _mm256_set1_epi8(0x0F)));
    const __m256i l = _mm256_unpacklo_epi8(b2, b3), h = _mm256_unpackhi_epi8(b2, b3);  // 16-bit: b3 b2
    const __m256i z = _mm256_setzero_si256();
    w0 = _mm256_castsi256_ps(_mm256_unpacklo_epi16(z, l));
    w1 = _mm256_castsi256_ps(_mm256_unpackhi_epi16(z, l));
    w2 = _mm256_castsi256_ps(_mm256_unpacklo_epi16(z, h));
    w3 = _mm256_castsi256_ps(_mm256_unpackhi_epi16(z, h));
  } else {
    const __m256i z = _mm256_setzero_si256();
    const __m256i lo = _mm256_unpacklo_epi8(z, v), hi = _mm256_unpackhi_epi8(z, v);  // b << 8
    w0 = _mm256_cvtph_ps(_mm256_castsi256_si128(lo));
    w1 = _mm256_cvtph_ps(_mm256_castsi256_si128(hi));
    w2 = _mm256_cvtph_ps(_mm256_extracti128_si256(lo, 1));
    w3 = _mm256_cvtph_ps(_mm256_extracti128_si256(hi, 1));
  }
}
#endif

// ---- activations -------------------------------------------------------------------------

static inline float load_act(const void* p, DType t, i64 i) {
  if (t == DType::f32) return static_cast<const float*>(p)[i];
  const uint16_t h = static_cast<const uint16_t*>(p)[i];
  return t == DType::f16 ? f16_to_f32(h) : bf16_to_f32(h);
}

// n (<= 64) activations from element k0 of `row` as f32 into buf.
static inline void act_chunk(const void* row, DType t, i64 k0, int n, float* buf) {
  int i = 0;
  if (t == DType::f32) { std::memcpy(buf, static_cast<const float*>(row) + k0, (size_t)n * 4); return; }
  const uint16_t* h = static_cast<const uint16_t*>(row) + k0;
#if defined(__AVX2__)
  if (t == DType::f16) {
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(buf + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(h + i))));
  } else {
    for (; i + 8 <= n; i += 8)
      _mm256_storeu_ps(buf + i, _mm256_castsi256_ps(_mm256_slli_epi32(
                                    _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)(h + i))), 16)));
  }
#endif
  for (; i < n; ++i) buf[i] = t == DType::f16 ? f16_to_f32(h[i]) : bf16_to_f32(h[i]);
}

// x -> the value of its e4m3 rounding (RNE, saturating to +-448, NaN stays NaN), in place.
// Bit-identical to fp8e4m3_to_f32(f32_to_fp8e4m3(x)).
static inline void round_e4m3(float* x, int n) {
  int i = 0;
#if defined(__AVX2__)
  const __m256i absm = _mm256_set1_epi32(0x7fffffff), one = _mm256_set1_epi32(1);
  const __m256i rnd = _mm256_set1_epi32(0x7ffff), keep = _mm256_set1_epi32((int)0xfff00000u);
  const __m256i minnorm = _mm256_set1_epi32(0x3c800000);
  const __m256 c512 = _mm256_set1_ps(512.0f), inv512 = _mm256_set1_ps(1.0f / 512.0f);
  const __m256 magic = _mm256_set1_ps(8388608.0f), maxv = _mm256_set1_ps(448.0f);
  for (; i + 8 <= n; i += 8) {
    const __m256i xi = _mm256_castps_si256(_mm256_loadu_ps(x + i));
    const __m256i ax = _mm256_and_si256(xi, absm);
    const __m256i sign = _mm256_andnot_si256(absm, xi);
    __m256i nb = _mm256_add_epi32(ax, _mm256_add_epi32(rnd, _mm256_and_si256(_mm256_srli_epi32(ax, 20), one)));
    const __m256 nv = _mm256_castsi256_ps(_mm256_and_si256(nb, keep));
    const __m256 sv = _mm256_mul_ps(
        _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(_mm256_castsi256_ps(ax), c512), magic), magic), inv512);
    const __m256 sub = _mm256_castsi256_ps(_mm256_cmpgt_epi32(minnorm, ax));  // ax < 2^-6 (ax >= 0 as int)
    __m256 r = _mm256_blendv_ps(nv, sv, sub);
    r = _mm256_min_ps(maxv, r);  // NaN r stays NaN (min returns the second operand)
    _mm256_storeu_ps(x + i, _mm256_or_ps(r, _mm256_castsi256_ps(sign)));
  }
#endif
  for (; i < n; ++i) x[i] = fp8e4m3_to_f32(f32_to_fp8e4m3(x[i]));
}

// Row m of A -> f32 at dst[k * step] for k < Kp (zero padded); W8A8 quantizes and stores
// the row scale. step = 1 (row-major) or MR (row panels).
static void prep_row(const Ctx& x, i64 m, float* dst, i64 step) {
  const Fp8GemmArgs& g = *x.g;
  const i64 K = g.w.K, Kp = x.L.Kp;
  const void* row = static_cast<const char*>(g.A) + (size_t)(m * g.lda) * dtype_bytes(g.a_dtype, 1);
  alignas(64) float buf[64];
  float inv = 0;
  if (g.act == Fp8Act::w8a8) {
    float amax = 0;
    for (i64 k = 0; k < K; k += 64) {
      const int n = (int)(K - k < 64 ? K - k : 64);
      act_chunk(row, g.a_dtype, k, n, buf);
      for (int i = 0; i < n; ++i) amax = std::fmax(amax, std::fabs(buf[i]));
    }
    inv = amax > 0 ? 448.0f / amax : 0.0f;
    x.rs[m] = amax / 448.0f;
  }
  for (i64 k = 0; k < K; k += 64) {
    const int n = (int)(K - k < 64 ? K - k : 64);
    if (step == 1 && g.act == Fp8Act::w8a16) { act_chunk(row, g.a_dtype, k, n, dst + k); continue; }
    act_chunk(row, g.a_dtype, k, n, buf);
    if (g.act == Fp8Act::w8a8) {
      for (int i = 0; i < n; ++i) buf[i] = buf[i] * inv;
      round_e4m3(buf, n);
    }
    for (int i = 0; i < n; ++i) dst[(k + i) * step] = buf[i];
  }
  for (i64 k = K; k < Kp; ++k) dst[k * step] = 0.0f;
}

// GEMV path with e4m3 weights decoded as value * 2^-120: scale row m by 2^64 (exact) so
// that products stay clear of the f32 underflow range; the partial sums are multiplied
// back by 2^56 (post). A row with |a| >= 2^63 stays unscaled (post = 2^120).
static void prescale_row(Ctx& x, i64 m, float* row) {
  x.apre[m] = 1.0f;
  x.post[m] = x.e4 ? kE4Inv : 1.0f;
  if (!x.e4 || kE4Inv == 1.0f) return;
  const i64 Kp = x.L.Kp;
  float amax = 0;
  for (i64 k = 0; k < Kp; ++k) amax = std::fmax(amax, std::fabs(row[k]));
  if (!(amax < 0x1p63f)) return;
  for (i64 k = 0; k < Kp; ++k) row[k] = row[k] * 0x1p64f;
  x.apre[m] = 0x1p64f;
  x.post[m] = 0x1p56f;
}

// ---- epilogue ----------------------------------------------------------------------------

// t: [rows][ldt] f32 for rows m0.., channels n0..n0+16 (clipped to N). cs: channel scales
// of these 16 channels (multiplied after `pre`), or null.
static void store_panel(const Ctx& x, const float* t, i64 ldt, int rows, i64 m0, i64 n0, const float* cs, float pre) {
  const Fp8GemmArgs& g = *x.g;
  const i64 nv = g.w.N - n0 < kFp8Panel ? g.w.N - n0 : kFp8Panel;
  for (int r = 0; r < rows; ++r) {
    const i64 m = m0 + r;
    const float* o = t + r * ldt;
    const float rsc = x.rs ? x.rs[m] : 1.0f;
    for (i64 j = 0; j < nv; ++j) {
      float v = o[j];
      if (cs) { v = v * pre; v = v * cs[j]; }
      if (x.rs) v = v * rsc;
      if (g.bias) v = v + g.bias[n0 + j];
      if (g.residual) v = v + load_act(g.residual, g.c_dtype, m * g.ldr + n0 + j);
      const i64 i = m * g.ldc + n0 + j;
      if (g.c_dtype == DType::f32) static_cast<float*>(g.C)[i] = v;
      else if (g.c_dtype == DType::f16) static_cast<uint16_t*>(g.C)[i] = f32_to_f16(v);
      else static_cast<uint16_t*>(g.C)[i] = f32_to_bf16(v);
    }
  }
}

// ---- small M: streaming GEMV over one panel -----------------------------------------------
// a: f32 rows (stride lda), R rows; out: [R][16], overwritten with sum_k a*w (scaled).

#if defined(__AVX512F__)

// e5m2 only (e4m3 takes the ymm kernel below, also in this variant).
static inline __m512 e5m2x16(__m128i v) { return _mm512_cvtph_ps(_mm256_slli_epi16(_mm256_cvtepu8_epi16(v), 8)); }

template <int R>
TY_NO_LOOP_HEADER_COPY static void gemv_z(const Ctx& x, const uint8_t* P, const float* a, i64 lda, const float*, float* out) {
  constexpr int NA = R <= 2 ? 4 : 2;  // independent accumulators per row (k mod NA)
  const i64 Kp = x.L.Kp;
  const float* S = reinterpret_cast<const float*>(P + x.L.scale_off);
  __m512 tot[R];
  for (int r = 0; r < R; ++r) tot[r] = _mm512_setzero_ps();
  const __m512 cs = x.block ? _mm512_setzero_ps() : _mm512_loadu_ps(S);
  for (i64 kb = 0, k0 = 0; k0 < Kp; ++kb, k0 += kFp8Block) {
    const i64 k1 = k0 + kFp8Block < Kp ? k0 + kFp8Block : Kp;
    __m512 acc[R][NA];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int u = 0; u < NA; ++u) acc[r][u] = _mm512_setzero_ps();
    for (i64 k = k0; k < k1; k += 4) {
      if (kPF) _mm_prefetch((const char*)(P + k * 16 + kPF), _MM_HINT_T0);
      const __m256i v0 = _mm256_loadu_si256((const __m256i*)(P + k * 16));
      const __m256i v1 = _mm256_loadu_si256((const __m256i*)(P + k * 16 + 32));
      __m512 w[4];
      w[0] = e5m2x16(_mm256_castsi256_si128(v0));
      w[1] = e5m2x16(_mm256_extracti128_si256(v0, 1));
      w[2] = e5m2x16(_mm256_castsi256_si128(v1));
      w[3] = e5m2x16(_mm256_extracti128_si256(v1, 1));
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j)
          acc[r][j % NA] = _mm512_fmadd_ps(w[j], _mm512_set1_ps(a[r * lda + k + j]), acc[r][j % NA]);
    }
    const __m512 s = x.block ? _mm512_set1_ps(S[kb]) : cs;
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      __m512 t = acc[r][0];
#pragma GCC unroll 4
      for (int u = 1; u < NA; ++u) t = _mm512_add_ps(t, acc[r][u]);
      tot[r] = _mm512_fmadd_ps(t, s, tot[r]);
    }
  }
  for (int r = 0; r < R; ++r) _mm512_storeu_ps(out + r * 16, tot[r]);
}

#endif

#if defined(__AVX2__)

// post: per-row factor of the partial sums (e4m3), before the scale.
template <int R, bool E4>
TY_NO_LOOP_HEADER_COPY static void gemv_y(const Ctx& x, const uint8_t* P, const float* a, i64 lda, const float* post, float* out) {
  constexpr int NA = R <= 2 ? 4 : 2;  // accumulators per row: (half, k parity) or (half)
  const i64 Kp = x.L.Kp;
  const float* S = reinterpret_cast<const float*>(P + x.L.scale_off);
  for (int i = 0; i < R * 16; ++i) out[i] = 0.0f;
  for (i64 kb = 0, k0 = 0; k0 < Kp; ++kb, k0 += kFp8Block) {
    const i64 k1 = k0 + kFp8Block < Kp ? k0 + kFp8Block : Kp;
    __m256 acc[R][NA];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int u = 0; u < NA; ++u) acc[r][u] = _mm256_setzero_ps();
    for (i64 k = k0; k < k1; k += 4) {  // one 64-byte line (4 rows of the panel) per step
      if (kPF) _mm_prefetch((const char*)(P + k * 16 + kPF), _MM_HINT_T0);
#pragma GCC unroll 2
      for (int h = 0; h < 2; ++h) {
        const i64 kk = k + 2 * h;
        __m256 w0, w1, w2, w3;
        cvt32<E4>(_mm256_loadu_si256((const __m256i*)(P + kk * 16)), w0, w1, w2, w3);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
          const __m256 a0 = _mm256_broadcast_ss(a + r * lda + kk), a1 = _mm256_broadcast_ss(a + r * lda + kk + 1);
          acc[r][0] = _mm256_fmadd_ps(w0, a0, acc[r][0]);
          acc[r][1] = _mm256_fmadd_ps(w1, a0, acc[r][1]);
          acc[r][NA == 4 ? 2 : 0] = _mm256_fmadd_ps(w2, a1, acc[r][NA == 4 ? 2 : 0]);
          acc[r][NA == 4 ? 3 : 1] = _mm256_fmadd_ps(w3, a1, acc[r][NA == 4 ? 3 : 1]);
        }
      }
    }
    __m256 s0, s1;
    if (x.block) s0 = s1 = _mm256_broadcast_ss(S + kb);
    else { s0 = _mm256_loadu_ps(S); s1 = _mm256_loadu_ps(S + 8); }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      __m256 t0 = acc[r][0], t1 = acc[r][1];
      if (NA == 4) { t0 = _mm256_add_ps(t0, acc[r][2]); t1 = _mm256_add_ps(t1, acc[r][3]); }
      if (E4) { const __m256 pr = _mm256_broadcast_ss(post + r); t0 = _mm256_mul_ps(t0, pr); t1 = _mm256_mul_ps(t1, pr); }
      _mm256_storeu_ps(out + r * 16, _mm256_fmadd_ps(t0, s0, _mm256_loadu_ps(out + r * 16)));
      _mm256_storeu_ps(out + r * 16 + 8, _mm256_fmadd_ps(t1, s1, _mm256_loadu_ps(out + r * 16 + 8)));
    }
  }
}

#else  // scalar

template <int R, bool E4>
static void gemv_s(const Ctx& x, const uint8_t* P, const float* a, i64 lda, const float*, float* out) {
  const i64 Kp = x.L.Kp;
  const float* S = reinterpret_cast<const float*>(P + x.L.scale_off);
  const DType dt = x.g->w.fmt.dtype;
  for (int i = 0; i < R * 16; ++i) out[i] = 0.0f;
  for (i64 kb = 0, k0 = 0; k0 < Kp; ++kb, k0 += kFp8Block) {
    const i64 k1 = k0 + kFp8Block < Kp ? k0 + kFp8Block : Kp;
    float acc[R][16] = {};
    for (i64 k = k0; k < k1; ++k) {
      float w[16];
      for (int c = 0; c < 16; ++c) w[c] = x.lut[P[fp8_code_pos(dt, k, c)]];
      for (int r = 0; r < R; ++r) {
        const float av = a[r * lda + k];
        for (int c = 0; c < 16; ++c) acc[r][c] = acc[r][c] + w[c] * av;
      }
    }
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < 16; ++c) out[r * 16 + c] = out[r * 16 + c] + acc[r][c] * (x.block ? S[kb] : S[c]);
  }
}

#endif

using GemvFn = void (*)(const Ctx&, const uint8_t*, const float*, i64, const float*, float*);
template <bool E4>
static GemvFn pick_gemv(int r) {
#if defined(__AVX512F__)
  if (E4) {
    switch (r) {
      case 1: return &gemv_y<1, true>;
      case 2: return &gemv_y<2, true>;
      case 3: return &gemv_y<3, true>;
      case 4: return &gemv_y<4, true>;
      case 5: return &gemv_y<5, true>;
      case 6: return &gemv_y<6, true>;
      case 7: return &gemv_y<7, true>;
      default: return &gemv_y<8, true>;
    }
  }
  switch (r) {
    case 1: return &gemv_z<1>;
    case 2: return &gemv_z<2>;
    case 3: return &gemv_z<3>;
    case 4: return &gemv_z<4>;
    case 5: return &gemv_z<5>;
    case 6: return &gemv_z<6>;
    case 7: return &gemv_z<7>;
    default: return &gemv_z<8>;
  }
#elif defined(__AVX2__)
  switch (r) {
    case 1: return &gemv_y<1, E4>;
    case 2: return &gemv_y<2, E4>;
    case 3: return &gemv_y<3, E4>;
    default: return &gemv_y<4, E4>;
  }
#else
  switch (r) {
    case 1: return &gemv_s<1, E4>;
    case 2: return &gemv_s<2, E4>;
    case 3: return &gemv_s<3, E4>;
    default: return &gemv_s<4, E4>;
  }
#endif
}

// ---- large M: weight strip conversion + f32 micro-kernel ----------------------------------

// Converts rows [k0, k0+kc) of panel P into dst (row stride NRW floats, 16 lanes): the
// exact weight values, times the block scale for block128 (unscaled for tensor / channel).
template <bool E4>
static void convert_panel(const Ctx& x, const uint8_t* P, i64 k0, i64 kc, float* dst) {
  const float* S = reinterpret_cast<const float*>(P + x.L.scale_off);
  for (i64 kk = 0; kk < kc; kk += kFp8Block) {
    const i64 kn = kc - kk < kFp8Block ? kc - kk : kFp8Block;
    // decoded * wmul is exact; (decoded) * (wmul * s) is the same single rounding of
    // value * s unless wmul * s overflows; then two multiplications (the first exact).
    float s1 = x.wmul, s2 = 1.0f;
    if (x.block) {
      const float s = S[(k0 + kk) / kFp8Block];
      s1 = s * x.wmul;
      if (!std::isfinite(s1)) { s1 = x.wmul; s2 = s; }
    }
    const bool mul = s1 != 1.0f, mul2 = s2 != 1.0f;
    const uint8_t* src = P + (k0 + kk) * 16;
    float* d = dst + kk * NRW;
#if defined(__AVX512F__)
    if (!E4) {
      const __m512 v1 = _mm512_set1_ps(s1), v2 = _mm512_set1_ps(s2);
      for (i64 k = 0; k < kn; ++k) {
        __m512 w = e5m2x16(_mm_loadu_si128((const __m128i*)(src + k * 16)));
        if (mul) w = _mm512_mul_ps(w, v1);
        if (mul2) w = _mm512_mul_ps(w, v2);
        _mm512_storeu_ps(d + k * NRW, w);
      }
      continue;
    }
#endif
#if defined(__AVX2__)
    const __m256 v1 = _mm256_set1_ps(s1), v2 = _mm256_set1_ps(s2);
    for (i64 k = 0; k < kn; k += 2) {
      __m256 w[4];
      cvt32<E4>(_mm256_loadu_si256((const __m256i*)(src + k * 16)), w[0], w[1], w[2], w[3]);
      for (int j = 0; j < 4; ++j) {
        if (mul) w[j] = _mm256_mul_ps(w[j], v1);
        if (mul2) w[j] = _mm256_mul_ps(w[j], v2);
      }
      _mm256_storeu_ps(d + k * NRW, w[0]);
      _mm256_storeu_ps(d + k * NRW + 8, w[1]);
      _mm256_storeu_ps(d + (k + 1) * NRW, w[2]);
      _mm256_storeu_ps(d + (k + 1) * NRW + 8, w[3]);
    }
#else
    const DType dt = x.g->w.fmt.dtype;
    for (i64 k = 0; k < kn; ++k)
      for (int c = 0; c < 16; ++c) {
        float w = x.lut[src[fp8_code_pos(dt, k, c)]];
        if (mul) w = w * s1;
        if (mul2) w = w * s2;
        d[k * NRW + c] = w;
      }
#endif
  }
}

// t[MR][ldt] += A panel (kc x MR) · W strip (kc x NRW).
#if defined(__AVX512F__)
TY_NO_LOOP_HEADER_COPY static void ukr(i64 kc, const float* pa, const float* pw, float* t, i64 ldt) {
  __m512 c[MR][2];
#pragma GCC unroll 12
  for (int i = 0; i < MR; ++i) c[i][0] = c[i][1] = _mm512_setzero_ps();
  for (i64 k = 0; k < kc; ++k) {
    const __m512 w0 = _mm512_loadu_ps(pw), w1 = _mm512_loadu_ps(pw + 16);
#pragma GCC unroll 12
    for (int i = 0; i < MR; ++i) {
      const __m512 a = _mm512_set1_ps(pa[i]);
      c[i][0] = _mm512_fmadd_ps(a, w0, c[i][0]);
      c[i][1] = _mm512_fmadd_ps(a, w1, c[i][1]);
    }
    pa += MR;
    pw += NRW;
  }
#pragma GCC unroll 12
  for (int i = 0; i < MR; ++i) {
    _mm512_storeu_ps(t + i * ldt, _mm512_add_ps(c[i][0], _mm512_loadu_ps(t + i * ldt)));
    _mm512_storeu_ps(t + i * ldt + 16, _mm512_add_ps(c[i][1], _mm512_loadu_ps(t + i * ldt + 16)));
  }
}
#elif defined(__AVX2__)
TY_NO_LOOP_HEADER_COPY static void ukr(i64 kc, const float* pa, const float* pw, float* t, i64 ldt) {
  __m256 c[MR][2];
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) c[i][0] = c[i][1] = _mm256_setzero_ps();
  for (i64 k = 0; k < kc; ++k) {
    const __m256 w0 = _mm256_loadu_ps(pw), w1 = _mm256_loadu_ps(pw + 8);
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      const __m256 a = _mm256_broadcast_ss(pa + i);
      c[i][0] = _mm256_fmadd_ps(a, w0, c[i][0]);
      c[i][1] = _mm256_fmadd_ps(a, w1, c[i][1]);
    }
    pa += MR;
    pw += NRW;
  }
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) {
    _mm256_storeu_ps(t + i * ldt, _mm256_add_ps(c[i][0], _mm256_loadu_ps(t + i * ldt)));
    _mm256_storeu_ps(t + i * ldt + 8, _mm256_add_ps(c[i][1], _mm256_loadu_ps(t + i * ldt + 8)));
  }
}
#else
static void ukr(i64 kc, const float* pa, const float* pw, float* t, i64 ldt) {
  float c[MR][NRW] = {};
  for (i64 k = 0; k < kc; ++k) {
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NRW; ++j) c[i][j] = c[i][j] + pa[i] * pw[j];
    pa += MR;
    pw += NRW;
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NRW; ++j) t[i * ldt + j] += c[i][j];
}
#endif

template <bool E4>
static void gemm_task(const Ctx& x, i64 t, int thread) {
  const Fp8GemmArgs& g = *x.g;
  const Fp8PackedLayout& L = x.L;
  const i64 M = g.M, Kp = L.Kp, P = L.panels;
  const i64 mblk = (M + kFp8MC - 1) / kFp8MC;
  const i64 mb = t % mblk, nb = t / mblk;
  const i64 m0 = mb * kFp8MC, mc = M - m0 < kFp8MC ? M - m0 : kFp8MC;
  const i64 mp = (mc + MR - 1) / MR;                       // row panels
  const i64 p0 = nb * (kFp8NC / kFp8Panel);
  const i64 np = P - p0 < kFp8NC / kFp8Panel ? P - p0 : kFp8NC / kFp8Panel;  // weight panels
  const i64 ns = (np * kFp8Panel + NRW - 1) / NRW;       // micro-kernel strips
  float* wf = reinterpret_cast<float*>(x.thr + (size_t)thread * fp8gemm_thread_bytes());
  float* tile = wf + kFp8KC * kFp8NC;                      // [MC][NC]
  for (i64 i = 0; i < mp * MR * kFp8NC; ++i) tile[i] = 0.0f;
  for (i64 k0 = 0; k0 < Kp; k0 += kFp8KC) {
    const i64 kc = Kp - k0 < kFp8KC ? Kp - k0 : kFp8KC;
    for (i64 q = 0; q < ns * NRW / kFp8Panel; ++q) {
      float* d = wf + (q * kFp8Panel / NRW) * kFp8KC * NRW + (q * kFp8Panel) % NRW;
      if (q < np) convert_panel<E4>(x, g.w.data + (p0 + q) * L.panel_bytes, k0, kc, d);
      else for (i64 k = 0; k < kc; ++k) std::memset(d + k * NRW, 0, kFp8Panel * 4);  // AVX-512 odd panel
    }
    for (i64 s = 0; s < ns; ++s)
      for (i64 ip = 0; ip < mp; ++ip)
        ukr(kc, x.af + ((m0 / MR + ip) * Kp + k0) * MR, wf + s * kFp8KC * NRW, tile + ip * MR * kFp8NC + s * NRW, kFp8NC);
  }
  for (i64 q = 0; q < np; ++q) {
    const uint8_t* Pq = g.w.data + (p0 + q) * L.panel_bytes;
    const float* cs = x.block ? nullptr : reinterpret_cast<const float*>(Pq + L.scale_off);
    store_panel(x, tile + q * kFp8Panel, kFp8NC, (int)mc, m0, (p0 + q) * kFp8Panel, cs, 1.0f);
  }
}

template <bool E4>
static void run(Ctx& x, Parallel& par) {
  const Fp8GemmArgs& g = *x.g;
  const i64 M = g.M, P = x.L.panels, Kp = x.L.Kp;
  if (M <= kSmallM) {
    par.for_each(M, [&](i64 m, int) {
      prep_row(x, m, x.af + m * Kp, 1);
      prescale_row(x, m, x.af + m * Kp);
    });
    const i64 want = 8 * (i64)par.threads();
    const i64 per = P <= want ? 1 : (P + want - 1) / want;
    const i64 tasks = (P + per - 1) / per;
    par.for_each(tasks, [&](i64 t, int) {
      alignas(64) float out[kSmallM * 16];
      const i64 pe = (t + 1) * per < P ? (t + 1) * per : P;
      for (i64 p = t * per; p < pe; ++p) {
        const uint8_t* Pp = x.g->w.data + p * x.L.panel_bytes;
        for (i64 m0 = 0; m0 < M; m0 += kGroupRows) {
          const int r = (int)(M - m0 < kGroupRows ? M - m0 : kGroupRows);
          pick_gemv<E4>(r)(x, Pp, x.af + m0 * Kp, Kp, x.post + m0, out);
          store_panel(x, out, 16, r, m0, p * kFp8Panel, nullptr, 1.0f);
        }
      }
    });
    return;
  }
  const i64 npan = (M + MR - 1) / MR;
  par.for_each(npan, [&](i64 ip, int) {
    float* d = x.af + ip * Kp * MR;
    for (int i = 0; i < MR; ++i) {
      const i64 m = ip * MR + i;
      if (m < M) prep_row(x, m, d + i, MR);
      else for (i64 k = 0; k < Kp; ++k) d[k * MR + i] = 0.0f;
    }
  });
  const i64 tasks = ((M + kFp8MC - 1) / kFp8MC) * ((P + kFp8NC / kFp8Panel - 1) / (kFp8NC / kFp8Panel));
  par.for_each(tasks, [&](i64 t, int th) { gemm_task<E4>(x, t, th); });
}

}  // namespace

void fp8gemm(const Fp8GemmArgs& g, Parallel& par) {
  Ctx x;
  x.g = &g;
  x.L = fp8_packed_layout(g.w.fmt, g.w.N, g.w.K);
  x.e4 = g.w.fmt.dtype == DType::fp8e4m3;
  x.block = g.w.fmt.scale == Fp8Scale::block128;
  x.wmul = x.e4 ? kE4Inv : 1.0f;
  for (int i = 0; i < 256; ++i)  // indexed by the stored byte
    x.lut[i] = fp8_to_f32(g.w.fmt.dtype, fp8_stored_byte(g.w.fmt.dtype, (uint8_t)i));
  (void)kE4Dec;
  const i64 M = g.M, Kp = x.L.Kp;
  const i64 Mp = (M + kFp8RowAlign - 1) / kFp8RowAlign * kFp8RowAlign;
  const int threads = par.threads();
  uint8_t* ws = static_cast<uint8_t*>(par.scratch(0, fp8gemm_workspace_bytes(M, g.w.K, threads)));
  x.af = reinterpret_cast<float*>(ws);
  x.rs = g.act == Fp8Act::w8a8 ? x.af + Mp * Kp : nullptr;
  x.thr = ws + (((size_t)(Mp * Kp) * 4 + (size_t)Mp * 4 + 63) & ~(size_t)63);
  if (x.e4) run<true>(x, par);
  else run<false>(x, par);
}

TY_VARIANT_END
