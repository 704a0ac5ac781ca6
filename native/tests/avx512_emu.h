// Test-only: a scalar emulation of the AVX-512 intrinsics used by native/cpu/kernels/
// act_vec.h, so the AVX-512 code path of the small-op kernels can be run and checked on
// a CPU without AVX-512 (this repo's dev machines/CI may lack it). Built by
// small_ops_test.sh with -DTY_AVX512_EMU plus the AVX2 flags (this header then defines
// __AVX512F__ itself, after <immintrin.h>).
//
// Each function follows the Intel pseudo-code of its instruction; f16 conversions use
// the real F16C instructions (same conversion as the EVEX forms). The emulation checks
// our logic (lanes, masks, tails, rounding recipes); it cannot prove the hardware
// behaves as documented.
#pragma once
#include <immintrin.h>  // the AVX2 / F16C parts are used natively

#include <cmath>
#include <cstdint>
#include <cstring>

struct emu_m512 { float f[16]; };
struct emu_m512d { double d[8]; };
struct emu_m512i { int32_t i[16]; };
typedef uint16_t emu_mmask16;

static inline emu_m512 emu_mm512_set1_ps(float x) { emu_m512 r; for (int k = 0; k < 16; ++k) r.f[k] = x; return r; }
static inline emu_m512 emu_mm512_setzero_ps() { return emu_mm512_set1_ps(0.0f); }
static inline emu_m512d emu_mm512_setzero_pd() { emu_m512d r; for (int k = 0; k < 8; ++k) r.d[k] = 0; return r; }
static inline emu_m512i emu_mm512_set1_epi32(int x) { emu_m512i r; for (int k = 0; k < 16; ++k) r.i[k] = x; return r; }
#define TY_EMU_BIN(name, expr)                                     \
  static inline emu_m512 name(emu_m512 a, emu_m512 b) {           \
    emu_m512 r;                                                    \
    for (int k = 0; k < 16; ++k) { float x = a.f[k], y = b.f[k]; r.f[k] = (expr); } \
    return r;                                                      \
  }
TY_EMU_BIN(emu_mm512_add_ps, x + y)
TY_EMU_BIN(emu_mm512_sub_ps, x - y)
TY_EMU_BIN(emu_mm512_mul_ps, x * y)
TY_EMU_BIN(emu_mm512_div_ps, x / y)
TY_EMU_BIN(emu_mm512_max_ps, x > y ? x : y)  // MAX(a,b): b when either is NaN
TY_EMU_BIN(emu_mm512_min_ps, x < y ? x : y)
static inline emu_m512 emu_mm512_scalef_ps(emu_m512 a, emu_m512 b) {
  emu_m512 r;
  for (int k = 0; k < 16; ++k) {
    float x = a.f[k], y = b.f[k];
    if (std::isnan(x) || std::isnan(y)) r.f[k] = x + y;
    else r.f[k] = std::ldexp(x, (int)std::floor(y));  // one rounding (also subnormal)
  }
  return r;
}
static inline emu_m512 emu_mm512_fmadd_ps(emu_m512 a, emu_m512 b, emu_m512 c) {
  emu_m512 r; for (int k = 0; k < 16; ++k) r.f[k] = std::fma(a.f[k], b.f[k], c.f[k]); return r;
}
static inline emu_m512 emu_mm512_fnmadd_ps(emu_m512 a, emu_m512 b, emu_m512 c) {
  emu_m512 r; for (int k = 0; k < 16; ++k) r.f[k] = std::fma(-a.f[k], b.f[k], c.f[k]); return r;
}
static inline emu_m512 emu_mm512_roundscale_ps(emu_m512 a, int imm) {
  (void)imm;  // only used with _MM_FROUND_TO_NEAREST_INT
  emu_m512 r; for (int k = 0; k < 16; ++k) r.f[k] = std::nearbyint(a.f[k]); return r;
}
// GCC's reduction order (avx512fintrin.h __MM512_REDUCE_OP): halves, quarters, pairs.
#define TY_EMU_RED(name, T, OP)                                          \
  static inline T name(const T* v) {                                        \
    T s8[8], s4[4];                                                         \
    for (int k = 0; k < 8; ++k) { T x = v[k + 8], y = v[k]; s8[k] = OP; }   \
    for (int k = 0; k < 4; ++k) { T x = s8[k + 4], y = s8[k]; s4[k] = OP; } \
    T t0, t1;                                                               \
    { T x = s4[0], y = s4[2]; t0 = OP; }                                    \
    { T x = s4[1], y = s4[3]; t1 = OP; }                                    \
    { T x = t0, y = t1; return OP; }                                        \
  }
TY_EMU_RED(emu_red_add, float, x + y)
TY_EMU_RED(emu_red_max, float, x > y ? x : y)
TY_EMU_RED(emu_red_min, float, x < y ? x : y)
static inline float emu_mm512_reduce_add_ps(emu_m512 a) { return emu_red_add(a.f); }
static inline float emu_mm512_reduce_max_ps(emu_m512 a) { return emu_red_max(a.f); }
static inline float emu_mm512_reduce_min_ps(emu_m512 a) { return emu_red_min(a.f); }
static inline emu_m512 emu_mm512_mask_mov_ps(emu_m512 src, emu_mmask16 m, emu_m512 a) {
  for (int k = 0; k < 16; ++k) if (m >> k & 1) src.f[k] = a.f[k];
  return src;
}
static inline emu_m512 emu_mm512_permute_ps(emu_m512 a, int imm) {
  emu_m512 r;
  for (int k = 0; k < 16; ++k) r.f[k] = a.f[(k & ~3) + ((imm >> (2 * (k & 3))) & 3)];
  return r;
}
static inline emu_mmask16 emu_mm512_cmp_ps_mask(emu_m512 a, emu_m512 b, int pred) {
  (void)pred;  // only _CMP_UNORD_Q is used
  emu_mmask16 m = 0;
  for (int k = 0; k < 16; ++k) if (std::isnan(a.f[k]) || std::isnan(b.f[k])) m |= (emu_mmask16)(1u << k);
  return m;
}
static inline emu_mmask16 emu_mm512_movepi32_mask(emu_m512i a) {
  emu_mmask16 m = 0;
  for (int k = 0; k < 16; ++k) if (a.i[k] < 0) m |= (emu_mmask16)(1u << k);
  return m;
}
// doubles
static inline emu_m512d emu_mm512_cvtps_pd(__m256 a) {
  float f[8]; std::memcpy(f, &a, 32);
  emu_m512d r; for (int k = 0; k < 8; ++k) r.d[k] = f[k]; return r;
}
static inline __m256 emu_mm512_castps512_ps256(emu_m512 a) { __m256 r; std::memcpy(&r, a.f, 32); return r; }
static inline emu_m512d emu_mm512_castps_pd(emu_m512 a) { emu_m512d r; std::memcpy(&r, &a, 64); return r; }
static inline __m256d emu_mm512_extractf64x4_pd(emu_m512d a, int hi) { __m256d r; std::memcpy(&r, a.d + 4 * (hi & 1), 32); return r; }
static inline emu_m512d emu_mm512_fmadd_pd(emu_m512d a, emu_m512d b, emu_m512d c) {
  emu_m512d r; for (int k = 0; k < 8; ++k) r.d[k] = std::fma(a.d[k], b.d[k], c.d[k]); return r;
}
static inline emu_m512d emu_mm512_add_pd(emu_m512d a, emu_m512d b) {
  emu_m512d r; for (int k = 0; k < 8; ++k) r.d[k] = a.d[k] + b.d[k]; return r;
}
static inline double emu_mm512_reduce_add_pd(emu_m512d a) {
  double s4[4]; for (int k = 0; k < 4; ++k) s4[k] = a.d[k + 4] + a.d[k];
  double t0 = s4[2] + s4[0], t1 = s4[3] + s4[1];
  return t0 + t1;
}
// integers and casts
static inline emu_m512i emu_mm512_castps_si512(emu_m512 a) { emu_m512i r; std::memcpy(&r, &a, 64); return r; }
static inline emu_m512 emu_mm512_castsi512_ps(emu_m512i a) { emu_m512 r; std::memcpy(&r, &a, 64); return r; }
static inline emu_m512i emu_mm512_slli_epi32(emu_m512i a, unsigned n) {
  for (int k = 0; k < 16; ++k) a.i[k] = n > 31 ? 0 : (int32_t)((uint32_t)a.i[k] << n);
  return a;
}
static inline emu_m512i emu_mm512_srli_epi32(emu_m512i a, unsigned n) {
  for (int k = 0; k < 16; ++k) a.i[k] = n > 31 ? 0 : (int32_t)((uint32_t)a.i[k] >> n);
  return a;
}
static inline emu_m512i emu_mm512_add_epi32(emu_m512i a, emu_m512i b) {
  for (int k = 0; k < 16; ++k) a.i[k] = (int32_t)((uint32_t)a.i[k] + (uint32_t)b.i[k]);
  return a;
}
static inline emu_m512i emu_mm512_and_si512(emu_m512i a, emu_m512i b) {
  for (int k = 0; k < 16; ++k) a.i[k] &= b.i[k];
  return a;
}
static inline emu_m512i emu_mm512_mask_or_epi32(emu_m512i src, emu_mmask16 m, emu_m512i a, emu_m512i b) {
  for (int k = 0; k < 16; ++k) if (m >> k & 1) src.i[k] = a.i[k] | b.i[k];
  return src;
}
static inline __m256i emu_mm512_cvtepi32_epi16(emu_m512i a) {  // vpmovdw: truncate
  uint16_t h[16]; for (int k = 0; k < 16; ++k) h[k] = (uint16_t)a.i[k];
  __m256i r; std::memcpy(&r, h, 32); return r;
}
static inline emu_m512i emu_mm512_cvtepu16_epi32(__m256i a) {
  uint16_t h[16]; std::memcpy(h, &a, 32);
  emu_m512i r; for (int k = 0; k < 16; ++k) r.i[k] = h[k]; return r;
}
// f16 through the real F16C instructions
static inline emu_m512 emu_mm512_cvtph_ps(__m256i a) {
  __m256 lo = _mm256_cvtph_ps(_mm256_castsi256_si128(a)), hi = _mm256_cvtph_ps(_mm256_extracti128_si256(a, 1));
  emu_m512 r; std::memcpy(r.f, &lo, 32); std::memcpy(r.f + 8, &hi, 32); return r;
}
static inline __m256i emu_mm512_cvtps_ph(emu_m512 a, int imm) {
  (void)imm;  // _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC
  __m256 lo, hi; std::memcpy(&lo, a.f, 32); std::memcpy(&hi, a.f + 8, 32);
  __m128i l = _mm256_cvtps_ph(lo, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m128i h = _mm256_cvtps_ph(hi, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  return _mm256_setr_m128i(l, h);
}
// memory; masked forms touch only the selected elements (like fault suppression)
static inline emu_m512 emu_mm512_loadu_ps(const float* p) { emu_m512 r; std::memcpy(r.f, p, 64); return r; }
static inline void emu_mm512_storeu_ps(float* p, emu_m512 a) { std::memcpy(p, a.f, 64); }
static inline void emu_mm512_store_ps(float* p, emu_m512 a) { std::memcpy(p, a.f, 64); }
static inline emu_m512 emu_mm512_load_ps(const float* p) { return emu_mm512_loadu_ps(p); }
static inline emu_m512 emu_mm512_maskz_loadu_ps(emu_mmask16 m, const float* p) {
  emu_m512 r; for (int k = 0; k < 16; ++k) r.f[k] = (m >> k & 1) ? p[k] : 0.0f; return r;
}
static inline void emu_mm512_mask_storeu_ps(float* p, emu_mmask16 m, emu_m512 a) {
  for (int k = 0; k < 16; ++k) if (m >> k & 1) p[k] = a.f[k];
}
static inline __m256i emu_mm256_maskz_loadu_epi16(emu_mmask16 m, const void* p) {
  uint16_t h[16]; const uint16_t* s = (const uint16_t*)p;
  for (int k = 0; k < 16; ++k) h[k] = (m >> k & 1) ? s[k] : 0;
  __m256i r; std::memcpy(&r, h, 32); return r;
}
static inline void emu_mm256_mask_storeu_epi16(void* p, emu_mmask16 m, __m256i a) {
  uint16_t h[16]; std::memcpy(h, &a, 32); uint16_t* d = (uint16_t*)p;
  for (int k = 0; k < 16; ++k) if (m >> k & 1) d[k] = h[k];
}

// Route the names used by act_vec.h to the emulation.
#define __m512 emu_m512
#define __m512d emu_m512d
#define __m512i emu_m512i
#define __mmask16 emu_mmask16
#undef _mm512_set1_ps
#undef _mm512_roundscale_ps
#undef _mm512_permute_ps
#undef _mm512_cmp_ps_mask
#undef _mm512_extractf64x4_pd
#undef _mm512_slli_epi32
#undef _mm512_srli_epi32
#undef _mm512_cvtps_ph
#define _mm512_set1_ps emu_mm512_set1_ps
#define _mm512_setzero_ps emu_mm512_setzero_ps
#define _mm512_setzero_pd emu_mm512_setzero_pd
#define _mm512_set1_epi32 emu_mm512_set1_epi32
#define _mm512_add_ps emu_mm512_add_ps
#define _mm512_sub_ps emu_mm512_sub_ps
#define _mm512_mul_ps emu_mm512_mul_ps
#define _mm512_div_ps emu_mm512_div_ps
#define _mm512_max_ps emu_mm512_max_ps
#define _mm512_min_ps emu_mm512_min_ps
#define _mm512_scalef_ps emu_mm512_scalef_ps
#define _mm512_fmadd_ps emu_mm512_fmadd_ps
#define _mm512_fnmadd_ps emu_mm512_fnmadd_ps
#define _mm512_roundscale_ps emu_mm512_roundscale_ps
#define _mm512_reduce_add_ps emu_mm512_reduce_add_ps
#define _mm512_reduce_max_ps emu_mm512_reduce_max_ps
#define _mm512_reduce_min_ps emu_mm512_reduce_min_ps
#define _mm512_mask_mov_ps emu_mm512_mask_mov_ps
#define _mm512_permute_ps emu_mm512_permute_ps
#define _mm512_cmp_ps_mask emu_mm512_cmp_ps_mask
#define _mm512_cvtps_pd emu_mm512_cvtps_pd
#define _mm512_castps512_ps256 emu_mm512_castps512_ps256
#define _mm512_castps_pd emu_mm512_castps_pd
#define _mm512_extractf64x4_pd emu_mm512_extractf64x4_pd
#define _mm512_fmadd_pd emu_mm512_fmadd_pd
#define _mm512_add_pd emu_mm512_add_pd
#define _mm512_reduce_add_pd emu_mm512_reduce_add_pd
#define _mm512_castps_si512 emu_mm512_castps_si512
#define _mm512_castsi512_ps emu_mm512_castsi512_ps
#define _mm512_slli_epi32 emu_mm512_slli_epi32
#define _mm512_srli_epi32 emu_mm512_srli_epi32
#define _mm512_add_epi32 emu_mm512_add_epi32
#define _mm512_and_si512 emu_mm512_and_si512
#define _mm512_mask_or_epi32 emu_mm512_mask_or_epi32
#define _mm512_cvtepi32_epi16 emu_mm512_cvtepi32_epi16
#define _mm512_cvtepu16_epi32 emu_mm512_cvtepu16_epi32
#define _mm512_cvtph_ps emu_mm512_cvtph_ps
#define _mm512_cvtps_ph emu_mm512_cvtps_ph
#define _mm512_loadu_ps emu_mm512_loadu_ps
#define _mm512_storeu_ps emu_mm512_storeu_ps
#define _mm512_store_ps emu_mm512_store_ps
#define _mm512_load_ps emu_mm512_load_ps
#define _mm512_movepi32_mask emu_mm512_movepi32_mask
#define _mm512_maskz_loadu_ps emu_mm512_maskz_loadu_ps
#define _mm512_mask_storeu_ps emu_mm512_mask_storeu_ps
#define _mm256_maskz_loadu_epi16 emu_mm256_maskz_loadu_epi16
#define _mm256_mask_storeu_epi16 emu_mm256_mask_storeu_epi16
// Select the AVX-512 paths of act_vec.h (defined only now: immintrin.h must not see it).
#ifndef __AVX512F__
#define __AVX512F__ 1
#endif
