// Tachyon CPU backend: vector helpers shared by the small activation kernels
// (elementwise, norm, rope, softmax, embedding). Included only by ISA-variant TUs;
// everything is defined inside the variant namespace (ty::cpu::<isa>::av), so the three
// compiled copies never collide.
//
// One portable vocabulary, three implementations:
//   avx512: vf = __m512 (VL = 16), tails with masked loads/stores
//   avx2:   vf = __m256 (VL = 8),  tails through a small stack buffer
//   scalar: vf = float  (VL = 1),  the same kernel loops run one element at a time
// Loads convert f32/f16/bf16 to f32 exactly; stores round once, bit-identical to the
// scalar conversions in tachyon/dtype.h (f16: vcvtps2ph with round-to-nearest-even, NaN
// canonicalised to sign|0x7e00 like dtype.h; bf16: integer round-to-nearest-even, which
// unlike vcvtneps2bf16 keeps f32 subnormals).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "isa.h"
#include "tachyon/dtype.h"
#include "tachyon/parallel.h"

#if defined(TY_AVX512_EMU)
#include "avx512_emu.h"  // test-only: run the AVX-512 path on a CPU without it
#elif defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif
#if defined(__AVX512F__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
// GCC 12's avx512fintrin.h self-initialises its "undefined" vectors (`__Y = __Y`) and then
// warns about it wherever the intrinsics inline (fixed in GCC 13).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

TY_VARIANT_BEGIN
namespace av {

// ---- scalar element access ---------------------------------------------------------
template <DType T>
inline float ld(const void* p, int64_t i) {
  if constexpr (T == DType::f32) return static_cast<const float*>(p)[i];
  else if constexpr (T == DType::f16) return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
  else return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
}
template <DType T>
inline void st(void* p, int64_t i, float v) {
  if constexpr (T == DType::f32) static_cast<float*>(p)[i] = v;
  else if constexpr (T == DType::f16) static_cast<uint16_t*>(p)[i] = f32_to_f16(v);
  else static_cast<uint16_t*>(p)[i] = f32_to_bf16(v);
}
template <DType T>
constexpr int64_t esize() { return T == DType::f32 ? 4 : 2; }
template <DType T>
inline const void* at(const void* p, int64_t i) { return static_cast<const char*>(p) + i * esize<T>(); }
template <DType T>
inline void* at(void* p, int64_t i) { return static_cast<char*>(p) + i * esize<T>(); }

// Calls f(std::integral_constant<DType, t>{}) for an activation dtype (f32/f16/bf16).
template <class F>
inline void with_act_dtype(DType t, F&& f) {
  switch (t) {
    case DType::f16: f(std::integral_constant<DType, DType::f16>{}); break;
    case DType::bf16: f(std::integral_constant<DType, DType::bf16>{}); break;
    default: f(std::integral_constant<DType, DType::f32>{}); break;
  }
}

// ---- parallel split ----------------------------------------------------------------
// About 64 KiB of f32 per stream per task: big enough that the per-task cost (an atomic
// claim, well under a microsecond) is noise, small enough to balance 64 MiB over cores.
constexpr int64_t kGrain = 16384;
// Rows per task for rows of `cols` elements (at least 1).
inline int64_t rows_per_task(int64_t cols, int64_t grain = kGrain) {
  return cols >= grain ? 1 : grain / (cols > 0 ? cols : 1);
}
// Runs body(begin, end, thread) over [0, n) in chunks of `grain` items. Inputs of at
// most one chunk run as a single task.
template <class F>
inline void par_chunks(Parallel& par, int64_t n, int64_t grain, F&& body) {
  if (n <= 0) return;
  if (grain < 1) grain = 1;
  const int64_t tasks = (n + grain - 1) / grain;
  par.for_each(tasks, [&](int64_t t, int thread) {
    const int64_t b = t * grain, e = b + grain < n ? b + grain : n;
    body(b, e, thread);
  });
}

// ---- vectors -----------------------------------------------------------------------
#if defined(__AVX512F__)
#define TY_AV_SIMD 1
constexpr int VL = 16;
using vf = __m512;
using vd = __m512d;
inline vf vset(float x) { return _mm512_set1_ps(x); }
inline vf vzero() { return _mm512_setzero_ps(); }
inline vf vadd(vf a, vf b) { return _mm512_add_ps(a, b); }
inline vf vsub(vf a, vf b) { return _mm512_sub_ps(a, b); }
inline vf vmul(vf a, vf b) { return _mm512_mul_ps(a, b); }
inline vf vdiv(vf a, vf b) { return _mm512_div_ps(a, b); }
inline vf vfma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }  // a*b+c
// max/min return the second operand when either is NaN (x86 semantics).
inline vf vmax(vf a, vf b) { return _mm512_max_ps(a, b); }
inline vf vmin(vf a, vf b) { return _mm512_min_ps(a, b); }
inline float hsum(vf v) { return _mm512_reduce_add_ps(v); }
inline float hmax(vf v) { return _mm512_reduce_max_ps(v); }
inline float hmin(vf v) { return _mm512_reduce_min_ps(v); }
inline __mmask16 tmask(int n) { return (__mmask16)((1u << n) - 1u); }
// Lanes >= n take `fill`.
inline vf vkeep(vf v, vf fill, int n) { return _mm512_mask_mov_ps(fill, tmask(n), v); }
// Per lane: sign bit of s set ? a : b
inline vf vsel_neg(vf s, vf a, vf b) { return _mm512_mask_mov_ps(b, _mm512_movepi32_mask(_mm512_castps_si512(s)), a); }
// (x0,x1,x2,x3,...) -> (x1,x0,x3,x2,...)
inline vf vswap_pairs(vf v) { return _mm512_permute_ps(v, 0xB1); }
// Double accumulators: acc += v*v per lane, exactly squared in double.
inline vd vdzero() { return _mm512_setzero_pd(); }
inline void vsq_acc(vd& lo, vd& hi, vf v) {
  vd a = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
  vd b = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  lo = _mm512_fmadd_pd(a, a, lo);
  hi = _mm512_fmadd_pd(b, b, hi);
}
inline void vsum_acc(vd& lo, vd& hi, vf v) {
  lo = _mm512_add_pd(lo, _mm512_cvtps_pd(_mm512_castps512_ps256(v)));
  hi = _mm512_add_pd(hi, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))));
}
inline double hsum_d(vd lo, vd hi) { return _mm512_reduce_add_pd(_mm512_add_pd(lo, hi)); }

using vh = __m256i;  // VL 16-bit values
inline vf f16v_to_f32(vh h) {
  vf x = _mm512_cvtph_ps(h);
  if (__builtin_expect(_mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q) != 0, 0)) {
    // NaN: the instruction quiets signalling NaNs, dtype.h keeps the bits. Rare: scalar.
    alignas(32) uint16_t s[16];
    alignas(64) float f[16];
    _mm256_store_si256((__m256i*)s, h);
    for (int i = 0; i < 16; ++i) f[i] = f16_to_f32(s[i]);
    x = _mm512_load_ps(f);
  }
  return x;
}
inline vf bf16v_to_f32(vh h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); }
inline vh f32_to_f16v(vf x) {
  vh h = _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  if (__builtin_expect(_mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q) != 0, 0)) {
    // NaN: the instruction keeps payload bits, dtype.h does not. Rare: redo in scalar.
    alignas(64) float f[16];
    alignas(32) uint16_t o[16];
    _mm512_store_ps(f, x);
    for (int i = 0; i < 16; ++i) o[i] = f32_to_f16(f[i]);
    h = _mm256_load_si256((const __m256i*)o);
  }
  return h;
}
inline vh f32_to_bf16v(vf x) {
  const __m512i u = _mm512_castps_si512(x);
  const __m512i hi = _mm512_srli_epi32(u, 16);
  __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff),
                                                    _mm512_and_si512(hi, _mm512_set1_epi32(1))));
  r = _mm512_srli_epi32(r, 16);
  r = _mm512_mask_or_epi32(r, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), hi, _mm512_set1_epi32(0x40));
  return _mm512_cvtepi32_epi16(r);
}
template <DType T>
inline vf vcvt_in(vh h) { return T == DType::f16 ? f16v_to_f32(h) : bf16v_to_f32(h); }
template <DType T>
inline vh vcvt_out(vf x) { return T == DType::f16 ? f32_to_f16v(x) : f32_to_bf16v(x); }

template <DType T>
inline vf vld(const void* p, int64_t i) {
  if constexpr (T == DType::f32) return _mm512_loadu_ps(static_cast<const float*>(p) + i);
  else return vcvt_in<T>(_mm256_loadu_si256((const __m256i*)(static_cast<const uint16_t*>(p) + i)));
}
template <DType T>
inline void vst(void* p, int64_t i, vf v) {
  if constexpr (T == DType::f32) _mm512_storeu_ps(static_cast<float*>(p) + i, v);
  else _mm256_storeu_si256((__m256i*)(static_cast<uint16_t*>(p) + i), vcvt_out<T>(v));
}
// n in [0, VL): loads lanes [0, n), the others are 0; stores lanes [0, n) only.
template <DType T>
inline vf vld_n(const void* p, int64_t i, int n) {
  if constexpr (T == DType::f32) return _mm512_maskz_loadu_ps(tmask(n), static_cast<const float*>(p) + i);
  else return vcvt_in<T>(_mm256_maskz_loadu_epi16(tmask(n), static_cast<const uint16_t*>(p) + i));
}
template <DType T>
inline void vst_n(void* p, int64_t i, vf v, int n) {
  if constexpr (T == DType::f32) _mm512_mask_storeu_ps(static_cast<float*>(p) + i, tmask(n), v);
  else _mm256_mask_storeu_epi16(static_cast<uint16_t*>(p) + i, tmask(n), vcvt_out<T>(v));
}

// e^x. Cephes-style: n = round(x*log2(e)), r = x - n*ln2 (two-part ln2, FMA), degree-7
// polynomial for e^r on [-ln2/2, ln2/2], then * 2^n. Max relative error measured over
// every float in [-87.33, 88.72]: 8.5e-8 (1.01 ulp). x > 88.72 -> inf; subnormal results
// are rounded once (vscalefps), so tiny results underflow gracefully to 0; NaN -> NaN.
inline vf vexp(vf x) {
  x = _mm512_max_ps(_mm512_set1_ps(-105.0f), _mm512_min_ps(_mm512_set1_ps(89.0f), x));
  const vf n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  vf r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693147182464599609375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-1.904654323148236e-09f), r);
  vf p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r);
  p = _mm512_add_ps(p, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

#elif defined(__AVX2__)
#define TY_AV_SIMD 1
constexpr int VL = 8;
using vf = __m256;
using vd = __m256d;
inline vf vset(float x) { return _mm256_set1_ps(x); }
inline vf vzero() { return _mm256_setzero_ps(); }
inline vf vadd(vf a, vf b) { return _mm256_add_ps(a, b); }
inline vf vsub(vf a, vf b) { return _mm256_sub_ps(a, b); }
inline vf vmul(vf a, vf b) { return _mm256_mul_ps(a, b); }
inline vf vdiv(vf a, vf b) { return _mm256_div_ps(a, b); }
inline vf vfma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
inline vf vmax(vf a, vf b) { return _mm256_max_ps(a, b); }
inline vf vmin(vf a, vf b) { return _mm256_min_ps(a, b); }
inline __m128 hlo(vf v) { return _mm256_castps256_ps128(v); }
inline __m128 hhi(vf v) { return _mm256_extractf128_ps(v, 1); }
inline float hsum(vf v) {
  __m128 s = _mm_add_ps(hlo(v), hhi(v));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline float hmax(vf v) {
  __m128 s = _mm_max_ps(hlo(v), hhi(v));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline float hmin(vf v) {
  __m128 s = _mm_min_ps(hlo(v), hhi(v));
  s = _mm_min_ps(s, _mm_movehl_ps(s, s));
  s = _mm_min_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline vf vkeep(vf v, vf fill, int n) {
  const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  return _mm256_blendv_ps(fill, v, _mm256_castsi256_ps(m));
}
inline vf vsel_neg(vf s, vf a, vf b) { return _mm256_blendv_ps(b, a, s); }
inline vf vswap_pairs(vf v) { return _mm256_permute_ps(v, 0xB1); }
inline vd vdzero() { return _mm256_setzero_pd(); }
inline void vsq_acc(vd& lo, vd& hi, vf v) {
  vd a = _mm256_cvtps_pd(hlo(v)), b = _mm256_cvtps_pd(hhi(v));
  lo = _mm256_fmadd_pd(a, a, lo);
  hi = _mm256_fmadd_pd(b, b, hi);
}
inline void vsum_acc(vd& lo, vd& hi, vf v) {
  lo = _mm256_add_pd(lo, _mm256_cvtps_pd(hlo(v)));
  hi = _mm256_add_pd(hi, _mm256_cvtps_pd(hhi(v)));
}
inline double hsum_d(vd lo, vd hi) {
  vd s = _mm256_add_pd(lo, hi);
  __m128d t = _mm_add_pd(_mm256_castpd256_pd128(s), _mm256_extractf128_pd(s, 1));
  return _mm_cvtsd_f64(_mm_add_sd(t, _mm_unpackhi_pd(t, t)));
}

using vh = __m128i;
inline vf f16v_to_f32(vh h) {
  vf x = _mm256_cvtph_ps(h);
  if (__builtin_expect(_mm256_movemask_ps(_mm256_cmp_ps(x, x, _CMP_UNORD_Q)) != 0, 0)) {
    alignas(16) uint16_t s[8];
    alignas(32) float f[8];
    _mm_store_si128((__m128i*)s, h);
    for (int i = 0; i < 8; ++i) f[i] = f16_to_f32(s[i]);
    x = _mm256_load_ps(f);
  }
  return x;
}
inline vf bf16v_to_f32(vh h) { return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)); }
inline vh f32_to_f16v(vf x) {
  vh h = _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  if (__builtin_expect(_mm256_movemask_ps(_mm256_cmp_ps(x, x, _CMP_UNORD_Q)) != 0, 0)) {
    alignas(32) float f[8];
    alignas(16) uint16_t o[8];
    _mm256_store_ps(f, x);
    for (int i = 0; i < 8; ++i) o[i] = f32_to_f16(f[i]);
    h = _mm_load_si128((const __m128i*)o);
  }
  return h;
}
inline vh f32_to_bf16v(vf x) {
  const __m256i u = _mm256_castps_si256(x);
  const __m256i hi = _mm256_srli_epi32(u, 16);
  __m256i r = _mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff),
                                                    _mm256_and_si256(hi, _mm256_set1_epi32(1))));
  r = _mm256_srli_epi32(r, 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(x, x, _CMP_UNORD_Q));
  r = _mm256_blendv_epi8(r, _mm256_or_si256(hi, _mm256_set1_epi32(0x40)), nan);
  return _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
}
template <DType T>
inline vf vcvt_in(vh h) { return T == DType::f16 ? f16v_to_f32(h) : bf16v_to_f32(h); }
template <DType T>
inline vh vcvt_out(vf x) { return T == DType::f16 ? f32_to_f16v(x) : f32_to_bf16v(x); }

template <DType T>
inline vf vld(const void* p, int64_t i) {
  if constexpr (T == DType::f32) return _mm256_loadu_ps(static_cast<const float*>(p) + i);
  else return vcvt_in<T>(_mm_loadu_si128((const __m128i*)(static_cast<const uint16_t*>(p) + i)));
}
template <DType T>
inline void vst(void* p, int64_t i, vf v) {
  if constexpr (T == DType::f32) _mm256_storeu_ps(static_cast<float*>(p) + i, v);
  else _mm_storeu_si128((__m128i*)(static_cast<uint16_t*>(p) + i), vcvt_out<T>(v));
}
template <DType T>
inline vf vld_n(const void* p, int64_t i, int n) {
  alignas(32) unsigned char buf[32] = {};
  std::memcpy(buf, at<T>(p, i), (size_t)n * esize<T>());
  return vld<T>(buf, 0);
}
template <DType T>
inline void vst_n(void* p, int64_t i, vf v, int n) {
  alignas(32) unsigned char buf[32];
  vst<T>(buf, 0, v);
  std::memcpy(at<T>(p, i), buf, (size_t)n * esize<T>());
}

// e^x: same polynomial as the AVX-512 path; 2^n is applied as two exact-range factors
// so overflow gives inf and subnormal results are rounded once.
inline vf vexp(vf x) {
  x = _mm256_max_ps(_mm256_set1_ps(-105.0f), _mm256_min_ps(_mm256_set1_ps(89.0f), x));
  const vf n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  vf r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693147182464599609375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-1.904654323148236e-09f), r);
  vf p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r);
  p = _mm256_add_ps(p, _mm256_set1_ps(1.0f));
  const __m256i ni = _mm256_cvtps_epi32(n);  // in [-152, 129] (NaN: p is NaN anyway)
  const __m256i n1 = _mm256_srai_epi32(ni, 1), n2 = _mm256_sub_epi32(ni, n1);
  const __m256i bias = _mm256_set1_epi32(127);
  const vf s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
  const vf s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
  return _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
}

#else
constexpr int VL = 1;
using vf = float;
using vd = double;
inline vf vset(float x) { return x; }
inline vf vzero() { return 0.0f; }
inline vf vadd(vf a, vf b) { return a + b; }
inline vf vsub(vf a, vf b) { return a - b; }
inline vf vmul(vf a, vf b) { return a * b; }
inline vf vdiv(vf a, vf b) { return a / b; }
inline vf vfma(vf a, vf b, vf c) { return a * b + c; }
inline vf vmax(vf a, vf b) { return a > b ? a : b; }
inline vf vmin(vf a, vf b) { return a < b ? a : b; }
inline float hsum(vf v) { return v; }
inline float hmax(vf v) { return v; }
inline float hmin(vf v) { return v; }
inline vf vkeep(vf v, vf fill, int n) { return n > 0 ? v : fill; }
inline vf vsel_neg(vf s, vf a, vf b) { return std::signbit(s) ? a : b; }
inline vd vdzero() { return 0.0; }
inline void vsq_acc(vd& lo, vd&, vf v) { lo += (double)v * (double)v; }
inline void vsum_acc(vd& lo, vd&, vf v) { lo += (double)v; }
inline double hsum_d(vd lo, vd hi) { return lo + hi; }
template <DType T>
inline vf vld(const void* p, int64_t i) { return ld<T>(p, i); }
template <DType T>
inline void vst(void* p, int64_t i, vf v) { st<T>(p, i, v); }
template <DType T>
inline vf vld_n(const void* p, int64_t i, int n) { return n > 0 ? ld<T>(p, i) : 0.0f; }
template <DType T>
inline void vst_n(void* p, int64_t i, vf v, int n) { if (n > 0) st<T>(p, i, v); }
inline vf vexp(vf x) { return std::exp(x); }  // libm expf (< 1 ulp)
#endif

}  // namespace av
TY_VARIANT_END
