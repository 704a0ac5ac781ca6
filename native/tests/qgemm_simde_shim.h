// Test-only: lets the AVX-512 variant of a kernel file compile and run on a CPU without
// AVX-512 (this development VM), by mapping the _mm512_* intrinsics onto SIMDe's portable
// implementations (Debian package libsimde-dev). Force-included with -include by
// native/tests/qgemm_test.sh when the CPU lacks AVX-512 VNNI. Correctness only: the
// emulated code is far slower than the real instructions.
#pragma once
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>

// Intrinsics SIMDe 0.7.4 lacks, built from 256-bit halves.
static inline simde__m512 ty_emu_cvtepi32_ps(simde__m512i a) {
  __m256 lo = _mm256_cvtepi32_ps(simde_mm512_castsi512_si256(a));
  __m256 hi = _mm256_cvtepi32_ps(simde_mm512_extracti64x4_epi64(a, 1));
  return simde_mm512_insertf32x8(simde_mm512_castps256_ps512(lo), hi, 1);
}
static inline simde__m512 ty_emu_cvtph_ps(simde__m256i a) {
  __m256 lo = _mm256_cvtph_ps(simde_mm256_extracti128_si256(a, 0));
  __m256 hi = _mm256_cvtph_ps(simde_mm256_extracti128_si256(a, 1));
  return simde_mm512_insertf32x8(simde_mm512_castps256_ps512(lo), hi, 1);
}
static inline simde__m512i ty_emu_cvtepu8_epi32(simde__m128i a) {
  __m256i lo = _mm256_cvtepu8_epi32(a), hi = _mm256_cvtepu8_epi32(_mm_srli_si128(a, 8));
  return simde_mm512_inserti64x4(simde_mm512_castsi256_si512(lo), hi, 1);
}
static inline simde__m512i ty_emu_cvtepi8_epi32(simde__m128i a) {
  __m256i lo = _mm256_cvtepi8_epi32(a), hi = _mm256_cvtepi8_epi32(_mm_srli_si128(a, 8));
  return simde_mm512_inserti64x4(simde_mm512_castsi256_si512(lo), hi, 1);
}
static inline simde__m512i ty_emu_cvtepu8_epi16(simde__m256i a) {
  __m256i lo = _mm256_cvtepu8_epi16(simde_mm256_extracti128_si256(a, 0));
  __m256i hi = _mm256_cvtepu8_epi16(simde_mm256_extracti128_si256(a, 1));
  return simde_mm512_inserti64x4(simde_mm512_castsi256_si512(lo), hi, 1);
}
#define _mm512_cvtepi32_ps(a) ty_emu_cvtepi32_ps(a)
#define _mm512_cvtph_ps(a) ty_emu_cvtph_ps(a)
#define _mm512_cvtepu8_epi32(a) ty_emu_cvtepu8_epi32(a)
#define _mm512_cvtepi8_epi32(a) ty_emu_cvtepi8_epi32(a)
#define _mm512_cvtepu8_epi16(a) ty_emu_cvtepu8_epi16(a)
// SIMDe 0.7.4 defines the native alias of _mm512_madd_epi16 with four arguments (a bug).
#undef _mm512_madd_epi16
#define _mm512_madd_epi16(a, b) simde_mm512_madd_epi16(a, b)

// The kernel selects its AVX-512 code with these macros.
#ifndef __AVX512F__
#define __AVX512F__ 1
#define __AVX512BW__ 1
#define __AVX512VL__ 1
#define __AVX512DQ__ 1
#define __AVX512VNNI__ 1
#endif
