// Test-only: scalar emulation of the AVX-512 intrinsics used by native/cpu/kernels/gemm.cpp,
// so its AVX-512 code path (packing layouts, transposes, masks, vdpbf16ps pairs) can be
// checked on a host without AVX-512. Force-included (g++ -include) into a build of the
// kernel with -DTY_ISA=avx512emu and only AVX2 flags. Semantics follow the Intel SDM
// pseudo-code; each function reads/writes only the lanes its mask selects, like the
// hardware's fault suppression, so the guard-page tests stay meaningful.
// It proves the logic, not the codegen: run the real avx512 variant where the CPU has it.
#pragma once
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "tachyon/dtype.h"

#ifndef __AVX512F__
#define __AVX512F__ 1
#endif

namespace emu512 {
struct F { float v[16]; };
struct I32 { int32_t v[16]; };
struct U16 { uint16_t v[32]; };
struct U64 { uint64_t v[8]; };
template <class T, class V> static inline T to(const V& x) { static_assert(sizeof(T) == sizeof(V), ""); T t; std::memcpy(&t, &x, sizeof t); return t; }
template <class V, class T> static inline V from(const T& t) { static_assert(sizeof(T) == sizeof(V), ""); V x; std::memcpy(&x, &t, sizeof x); return x; }

static inline __m512 setzero_ps() { return from<__m512>(F{}); }
static inline __m512i setzero_si512() { return from<__m512i>(I32{}); }
static inline __m512 set1_ps(float x) { F r; for (int i = 0; i < 16; ++i) r.v[i] = x; return from<__m512>(r); }
static inline __m512i set1_epi32(int x) { I32 r; for (int i = 0; i < 16; ++i) r.v[i] = x; return from<__m512i>(r); }
static inline __m512 add_ps(__m512 a, __m512 b) { F x = to<F>(a), y = to<F>(b); for (int i = 0; i < 16; ++i) x.v[i] += y.v[i]; return from<__m512>(x); }
static inline __m512 mul_ps(__m512 a, __m512 b) { F x = to<F>(a), y = to<F>(b); for (int i = 0; i < 16; ++i) x.v[i] *= y.v[i]; return from<__m512>(x); }
static inline __m512 fmadd_ps(__m512 a, __m512 b, __m512 c) { F x = to<F>(a), y = to<F>(b), z = to<F>(c); for (int i = 0; i < 16; ++i) z.v[i] = std::fma(x.v[i], y.v[i], z.v[i]); return from<__m512>(z); }
static inline __m512 loadu_ps(const void* p) { F r; std::memcpy(&r, p, 64); return from<__m512>(r); }
static inline __m512 load_ps(const void* p) { if ((uintptr_t)p & 63) __builtin_trap(); return loadu_ps(p); }
static inline void storeu_ps(void* p, __m512 a) { std::memcpy(p, &a, 64); }
static inline __m512 maskz_loadu_ps(__mmask16 k, const void* p) { F r{}; for (int i = 0; i < 16; ++i) if (k >> i & 1) std::memcpy(&r.v[i], (const char*)p + 4 * i, 4); return from<__m512>(r); }
static inline void mask_storeu_ps(void* p, __mmask16 k, __m512 a) { F x = to<F>(a); for (int i = 0; i < 16; ++i) if (k >> i & 1) std::memcpy((char*)p + 4 * i, &x.v[i], 4); }
static inline __m256i maskz_loadu_epi16_256(__mmask16 k, const void* p) { uint16_t r[16] = {}; for (int i = 0; i < 16; ++i) if (k >> i & 1) std::memcpy(&r[i], (const char*)p + 2 * i, 2); __m256i x; std::memcpy(&x, r, 32); return x; }
static inline void mask_storeu_epi16_256(void* p, __mmask16 k, __m256i a) { uint16_t r[16]; std::memcpy(r, &a, 32); for (int i = 0; i < 16; ++i) if (k >> i & 1) std::memcpy((char*)p + 2 * i, &r[i], 2); }
static inline __m512i maskz_loadu_epi16(__mmask32 k, const void* p) { U16 r{}; for (int i = 0; i < 32; ++i) if (k >> i & 1) std::memcpy(&r.v[i], (const char*)p + 2 * i, 2); return from<__m512i>(r); }
static inline __m512i load_si512(const void* p) { if ((uintptr_t)p & 63) __builtin_trap(); __m512i x; std::memcpy(&x, p, 64); return x; }
static inline void store_si512(void* p, __m512i a) { if ((uintptr_t)p & 63) __builtin_trap(); std::memcpy(p, &a, 64); }
static inline __m512 cvtph_ps(__m256i h) { uint16_t s[16]; std::memcpy(s, &h, 32); F r; for (int i = 0; i < 16; ++i) r.v[i] = ty::f16_to_f32(s[i]); return from<__m512>(r); }
static inline __m256i cvtps_ph(__m512 a, int) { F x = to<F>(a); uint16_t s[16]; for (int i = 0; i < 16; ++i) s[i] = ty::f32_to_f16(x.v[i]); __m256i h; std::memcpy(&h, s, 32); return h; }
static inline __m512 castsi512_ps(__m512i a) { return from<__m512>(a); }
static inline __m512i castps_si512(__m512 a) { return from<__m512i>(a); }
static inline __m512d castps_pd(__m512 a) { return from<__m512d>(a); }
static inline __m512 castpd_ps(__m512d a) { return from<__m512>(a); }
static inline __m512i slli_epi32(__m512i a, unsigned n) { I32 x = to<I32>(a); for (int i = 0; i < 16; ++i) x.v[i] = n > 31 ? 0 : (int32_t)((uint32_t)x.v[i] << n); return from<__m512i>(x); }
static inline __m512i srli_epi32(__m512i a, unsigned n) { I32 x = to<I32>(a); for (int i = 0; i < 16; ++i) x.v[i] = n > 31 ? 0 : (int32_t)((uint32_t)x.v[i] >> n); return from<__m512i>(x); }
static inline __m512i and_si512(__m512i a, __m512i b) { I32 x = to<I32>(a), y = to<I32>(b); for (int i = 0; i < 16; ++i) x.v[i] &= y.v[i]; return from<__m512i>(x); }
static inline __m512i or_si512(__m512i a, __m512i b) { I32 x = to<I32>(a), y = to<I32>(b); for (int i = 0; i < 16; ++i) x.v[i] |= y.v[i]; return from<__m512i>(x); }
static inline __m512i add_epi32(__m512i a, __m512i b) { I32 x = to<I32>(a), y = to<I32>(b); for (int i = 0; i < 16; ++i) x.v[i] = (int32_t)((uint32_t)x.v[i] + (uint32_t)y.v[i]); return from<__m512i>(x); }
static inline __mmask16 cmpgt_epu32_mask(__m512i a, __m512i b) { I32 x = to<I32>(a), y = to<I32>(b); unsigned k = 0; for (int i = 0; i < 16; ++i) if ((uint32_t)x.v[i] > (uint32_t)y.v[i]) k |= 1u << i; return (__mmask16)k; }
static inline __m512i mask_mov_epi32(__m512i src, __mmask16 k, __m512i a) { I32 x = to<I32>(src), y = to<I32>(a); for (int i = 0; i < 16; ++i) if (k >> i & 1) x.v[i] = y.v[i]; return from<__m512i>(x); }
static inline __m512i cvtepu16_epi32(__m256i a) { uint16_t s[16]; std::memcpy(s, &a, 32); I32 r; for (int i = 0; i < 16; ++i) r.v[i] = s[i]; return from<__m512i>(r); }
static inline __m256i cvtepi32_epi16(__m512i a) { I32 x = to<I32>(a); uint16_t s[16]; for (int i = 0; i < 16; ++i) s[i] = (uint16_t)x.v[i]; __m256i h; std::memcpy(&h, s, 32); return h; }
// Within each 128-bit lane L: lo = a[4L], b[4L], a[4L+1], b[4L+1]; hi = a[4L+2], b[4L+2], a[4L+3], b[4L+3].
static inline __m512 unpacklo_ps(__m512 a, __m512 b) { F x = to<F>(a), y = to<F>(b), r; for (int L = 0; L < 4; ++L) { r.v[4*L] = x.v[4*L]; r.v[4*L+1] = y.v[4*L]; r.v[4*L+2] = x.v[4*L+1]; r.v[4*L+3] = y.v[4*L+1]; } return from<__m512>(r); }
static inline __m512 unpackhi_ps(__m512 a, __m512 b) { F x = to<F>(a), y = to<F>(b), r; for (int L = 0; L < 4; ++L) { r.v[4*L] = x.v[4*L+2]; r.v[4*L+1] = y.v[4*L+2]; r.v[4*L+2] = x.v[4*L+3]; r.v[4*L+3] = y.v[4*L+3]; } return from<__m512>(r); }
static inline __m512d unpacklo_pd(__m512d a, __m512d b) { U64 x = to<U64>(a), y = to<U64>(b), r; for (int L = 0; L < 4; ++L) { r.v[2*L] = x.v[2*L]; r.v[2*L+1] = y.v[2*L]; } return from<__m512d>(r); }
static inline __m512d unpackhi_pd(__m512d a, __m512d b) { U64 x = to<U64>(a), y = to<U64>(b), r; for (int L = 0; L < 4; ++L) { r.v[2*L] = x.v[2*L+1]; r.v[2*L+1] = y.v[2*L+1]; } return from<__m512d>(r); }
// Result lanes 0,1 from a, lanes 2,3 from b, each chosen by a 2-bit field of imm.
static inline __m512 shuffle_f32x4(__m512 a, __m512 b, int imm) { F x = to<F>(a), y = to<F>(b), r; for (int L = 0; L < 4; ++L) { int s = (imm >> (2 * L)) & 3; const F& src = L < 2 ? x : y; std::memcpy(&r.v[4*L], &src.v[4*s], 16); } return from<__m512>(r); }
// vpermt2w: index bit 5 selects b, bits 4:0 the element.
static inline __m512i permutex2var_epi16(__m512i a, __m512i idx, __m512i b) { U16 x = to<U16>(a), y = to<U16>(b), ix = to<U16>(idx), r; for (int i = 0; i < 32; ++i) { int j = ix.v[i] & 63; r.v[i] = j < 32 ? x.v[j] : y.v[j - 32]; } return from<__m512i>(r); }
// vdpbf16ps: per f32 lane j, acc += a[2j+1]*b[2j+1] then += a[2j]*b[2j] (each rounded; DAZ/FTZ).
static inline float daz(float f) { return std::fpclassify(f) == FP_SUBNORMAL ? std::copysign(0.f, f) : f; }
static inline __m512 dpbf16_ps(__m512 acc, __m512bh a, __m512bh b) {
  F c = to<F>(acc); U16 x = to<U16>(a), y = to<U16>(b);
  for (int j = 0; j < 16; ++j) {
    float t = daz(c.v[j]);
    t = daz(t + daz(ty::bf16_to_f32(x.v[2*j+1])) * daz(ty::bf16_to_f32(y.v[2*j+1])));
    t = daz(t + daz(ty::bf16_to_f32(x.v[2*j])) * daz(ty::bf16_to_f32(y.v[2*j])));
    c.v[j] = t;
  }
  return from<__m512>(c);
}
}  // namespace emu512

#undef _mm512_setzero_ps
#define _mm512_setzero_ps emu512::setzero_ps
#undef _mm512_setzero_si512
#define _mm512_setzero_si512 emu512::setzero_si512
#undef _mm512_set1_ps
#define _mm512_set1_ps emu512::set1_ps
#undef _mm512_set1_epi32
#define _mm512_set1_epi32 emu512::set1_epi32
#undef _mm512_add_ps
#define _mm512_add_ps emu512::add_ps
#undef _mm512_mul_ps
#define _mm512_mul_ps emu512::mul_ps
#undef _mm512_fmadd_ps
#define _mm512_fmadd_ps emu512::fmadd_ps
#undef _mm512_loadu_ps
#define _mm512_loadu_ps emu512::loadu_ps
#undef _mm512_load_ps
#define _mm512_load_ps emu512::load_ps
#undef _mm512_storeu_ps
#define _mm512_storeu_ps emu512::storeu_ps
#undef _mm512_maskz_loadu_ps
#define _mm512_maskz_loadu_ps emu512::maskz_loadu_ps
#undef _mm512_mask_storeu_ps
#define _mm512_mask_storeu_ps emu512::mask_storeu_ps
#undef _mm256_maskz_loadu_epi16
#define _mm256_maskz_loadu_epi16 emu512::maskz_loadu_epi16_256
#undef _mm256_mask_storeu_epi16
#define _mm256_mask_storeu_epi16 emu512::mask_storeu_epi16_256
#undef _mm512_maskz_loadu_epi16
#define _mm512_maskz_loadu_epi16 emu512::maskz_loadu_epi16
#undef _mm512_load_si512
#define _mm512_load_si512 emu512::load_si512
#undef _mm512_store_si512
#define _mm512_store_si512 emu512::store_si512
#undef _mm512_cvtph_ps
#define _mm512_cvtph_ps emu512::cvtph_ps
#undef _mm512_cvtps_ph
#define _mm512_cvtps_ph emu512::cvtps_ph
#undef _mm512_castsi512_ps
#define _mm512_castsi512_ps emu512::castsi512_ps
#undef _mm512_castps_si512
#define _mm512_castps_si512 emu512::castps_si512
#undef _mm512_castps_pd
#define _mm512_castps_pd emu512::castps_pd
#undef _mm512_castpd_ps
#define _mm512_castpd_ps emu512::castpd_ps
#undef _mm512_slli_epi32
#define _mm512_slli_epi32 emu512::slli_epi32
#undef _mm512_srli_epi32
#define _mm512_srli_epi32 emu512::srli_epi32
#undef _mm512_and_si512
#define _mm512_and_si512 emu512::and_si512
#undef _mm512_or_si512
#define _mm512_or_si512 emu512::or_si512
#undef _mm512_add_epi32
#define _mm512_add_epi32 emu512::add_epi32
#undef _mm512_cmpgt_epu32_mask
#define _mm512_cmpgt_epu32_mask emu512::cmpgt_epu32_mask
#undef _mm512_mask_mov_epi32
#define _mm512_mask_mov_epi32 emu512::mask_mov_epi32
#undef _mm512_cvtepu16_epi32
#define _mm512_cvtepu16_epi32 emu512::cvtepu16_epi32
#undef _mm512_cvtepi32_epi16
#define _mm512_cvtepi32_epi16 emu512::cvtepi32_epi16
#undef _mm512_unpacklo_ps
#define _mm512_unpacklo_ps emu512::unpacklo_ps
#undef _mm512_unpackhi_ps
#define _mm512_unpackhi_ps emu512::unpackhi_ps
#undef _mm512_unpacklo_pd
#define _mm512_unpacklo_pd emu512::unpacklo_pd
#undef _mm512_unpackhi_pd
#define _mm512_unpackhi_pd emu512::unpackhi_pd
#undef _mm512_shuffle_f32x4
#define _mm512_shuffle_f32x4 emu512::shuffle_f32x4
#undef _mm512_permutex2var_epi16
#define _mm512_permutex2var_epi16 emu512::permutex2var_epi16
#undef _mm512_dpbf16_ps
#define _mm512_dpbf16_ps emu512::dpbf16_ps
