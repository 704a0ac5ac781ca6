// Tachyon CPU kernel: dense GEMM (ISA variant).
//   C[M,N] = alpha * A[M,K] · op(B) + beta * C + bias[N]      (see GemmArgs in kernels.h)
// A/B in f32, f16 or bf16; C in f32, f16 or bf16; arithmetic and accumulation in f32.
//
// Structure (BLIS / GotoBLAS):
//   task = one (MC x NC) block of C over the whole K     -- par.run over (M-block, N-block)
//     for each K chunk (KC):   pack the A block [MC x KC] into MR-row panels   (L2)
//       (B stored [K,N]: pack the whole B block [KC x NC] into micro-panels     (L2))
//       for each NR-column strip of the block: (B stored [N,K]: pack its B micro-panel
//         [KC x NR] just before use, so it is hot in L1)
//         for each MR-row panel: microkernel, an MR x NR tile held in registers
// Packing converts every input dtype to what the microkernel eats and zero-pads panels
// to MR / NR, so the microkernel never sees a stride, a dtype or an edge. Edges (mr < MR,
// nr < NR) are handled only when the register tile is stored, with masked stores.
//
// Microkernels:
//   avx512 f32/f16: 14x32 (28 zmm accumulators + 2 B vectors; A is an embedded-broadcast
//                   memory operand of vfmadd231ps, so no register is spent on it).
//   avx512 bf16:    14x32 with vdpbf16ps on bf16 *pairs* (k, k+1): twice the MACs per
//                   instruction. Packed layouts are described at pack_b_pairs().
//   avx2:           6x16 (12 ymm accumulators + 2 B + 1 broadcast = 15 of 16 registers);
//                   f16/bf16 are widened to f32 while packing.
//   scalar:         the same driver with 1-lane "vectors": plain blocked loops.
//
// Accumulation across K chunks: f32 C is its own accumulator (the first chunk writes
// alpha*acc + beta*C + bias, later chunks add alpha*acc); an f16/bf16 C would lose
// precision that way, so those keep partial sums in an f32 tile in scratch and round once.
#include <cstdint>
#include <cstring>
#include <utility>

#include "kernels.h"

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

TY_VARIANT_BEGIN

namespace {

using i64 = int64_t;
inline i64 min64(i64 a, i64 b) { return a < b ? a : b; }
inline i64 cdiv(i64 a, i64 b) { return (a + b - 1) / b; }
inline i64 round_up(i64 a, i64 b) { return cdiv(a, b) * b; }
inline int esize(DType t) { return t == DType::f32 ? 4 : 2; }

// =====================================================================================
// Vector layer: VF holds VL f32 lanes. load_any/store_any convert from/to a dtype and
// touch only the first n (<= VL) elements, so they never read or write out of bounds.
// =====================================================================================
#if defined(__AVX512F__)

constexpr int VL = 16;
constexpr int MR = 14, NR = 32;
// KC: a B micro-panel is KC x NR x 4 B = 32 KiB (f32) -> stays in the 48 KiB L1D while
// MC/MR microkernels reuse it; the A block (MC x KC) lives in L2 (1 MiB on Zen 5).
constexpr i64 KC_F32 = 256, KC_PAIR = 512, MC_MAX = 14 * 12, NC_MAX = 512;
constexpr bool kPairBf16 = true;
typedef __m512 VF;

inline VF vzero() { return _mm512_setzero_ps(); }
inline VF vset1(float x) { return _mm512_set1_ps(x); }
inline VF vadd(VF a, VF b) { return _mm512_add_ps(a, b); }
inline VF vmul(VF a, VF b) { return _mm512_mul_ps(a, b); }
inline VF vfma(VF a, VF b, VF c) { return _mm512_fmadd_ps(a, b, c); }
inline VF vload(const float* p) { return _mm512_loadu_ps(p); }
inline void vstore(float* p, VF v) { _mm512_storeu_ps(p, v); }
inline __mmask16 lmask(int n) { return (__mmask16)((1u << n) - 1u); }

inline VF load_f32(const float* p, int n) {
  return n >= VL ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(lmask(n), p);
}
inline void store_f32(float* p, VF v, int n) {
  if (n >= VL) _mm512_storeu_ps(p, v);
  else _mm512_mask_storeu_ps(p, lmask(n), v);
}
inline __m256i load_h16(const void* p, int n) {
  return n >= VL ? _mm256_loadu_si256((const __m256i*)p) : _mm256_maskz_loadu_epi16(lmask(n), p);
}
inline void store_h16(void* p, __m256i h, int n) {
  if (n >= VL) _mm256_storeu_si256((__m256i*)p, h);
  else _mm256_mask_storeu_epi16(p, lmask(n), h);
}
inline VF load_any(const void* p, DType dt, int n) {
  if (dt == DType::f32) return load_f32((const float*)p, n);
  __m256i h = load_h16(p, n);
  if (dt == DType::f16) return _mm512_cvtph_ps(h);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
// Round to nearest even in integer arithmetic (bit-identical to ty::f32_to_bf16;
// vcvtneps2bf16 would flush denormals).
inline __m256i to_bf16(VF v) {
  __m512i x = _mm512_castps_si512(v);
  __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(x, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lsb)), 16);
  __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(x, _mm512_set1_epi32(0x7fffffff)),
                                          _mm512_set1_epi32(0x7f800000));
  r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(0x40)));
  return _mm512_cvtepi32_epi16(r);
}
inline void store_any(void* p, DType dt, VF v, int n) {
  if (dt == DType::f32) store_f32((float*)p, v, n);
  else if (dt == DType::f16) store_h16(p, _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), n);
  else store_h16(p, to_bf16(v), n);
}
// Stores the first n lanes of v to p. Used for packed rows of R < VL floats.
inline void store_part(float* p, VF v, int n) { store_f32(p, v, n); }

// In-register 16x16 transpose of 32-bit lanes: r[i][j] -> r[j][i].
inline void transpose(VF r[16]) {
  VF t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);      // per 128-bit lane L: r0[4L],r1[4L],r0[4L+1],r1[4L+1]
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);  //                     r0[4L+2],r1[4L+2],r0[4L+3],r1[4L+3]
  }
  VF u[16];  // u[4g+m], lane L = rows 4g..4g+3 at column 4L+m
  for (int g = 0; g < 4; ++g) {
    __m512d a = _mm512_castps_pd(t[4 * g]), b = _mm512_castps_pd(t[4 * g + 1]);
    __m512d c = _mm512_castps_pd(t[4 * g + 2]), d = _mm512_castps_pd(t[4 * g + 3]);
    u[4 * g + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    u[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    u[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    u[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  for (int m = 0; m < 4; ++m) {
    VF vlo = _mm512_shuffle_f32x4(u[m], u[4 + m], 0x88), vhi = _mm512_shuffle_f32x4(u[m], u[4 + m], 0xDD);
    VF wlo = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0x88), whi = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0xDD);
    r[m] = _mm512_shuffle_f32x4(vlo, wlo, 0x88);
    r[4 + m] = _mm512_shuffle_f32x4(vhi, whi, 0x88);
    r[8 + m] = _mm512_shuffle_f32x4(vlo, wlo, 0xDD);
    r[12 + m] = _mm512_shuffle_f32x4(vhi, whi, 0xDD);
  }
}

#elif defined(__AVX2__)

constexpr int VL = 8;
constexpr int MR = 6, NR = 16;
constexpr i64 KC_F32 = 256, KC_PAIR = 256, MC_MAX = 6 * 24, NC_MAX = 512;
constexpr bool kPairBf16 = false;
typedef __m256 VF;

inline VF vzero() { return _mm256_setzero_ps(); }
inline VF vset1(float x) { return _mm256_set1_ps(x); }
inline VF vadd(VF a, VF b) { return _mm256_add_ps(a, b); }
inline VF vmul(VF a, VF b) { return _mm256_mul_ps(a, b); }
inline VF vfma(VF a, VF b, VF c) { return _mm256_fmadd_ps(a, b, c); }
inline VF vload(const float* p) { return _mm256_loadu_ps(p); }
inline void vstore(float* p, VF v) { _mm256_storeu_ps(p, v); }

// Partial vectors go through a small stack buffer (AVX2 has no cheap byte-masked
// load/store; vmaskmov is slow on AMD and has no 16-bit form).
inline VF load_any(const void* p, DType dt, int n) {
  alignas(32) uint8_t tmp[32];
  if (n < VL) {
    std::memset(tmp, 0, sizeof tmp);
    std::memcpy(tmp, p, (size_t)n * esize(dt));
    p = tmp;
  }
  if (dt == DType::f32) return _mm256_loadu_ps((const float*)p);
  __m128i h = _mm_loadu_si128((const __m128i*)p);
  if (dt == DType::f16) return _mm256_cvtph_ps(h);
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
inline VF load_f32(const float* p, int n) { return load_any(p, DType::f32, n); }
inline __m128i to_bf16(VF v) {  // RNE, bit-identical to ty::f32_to_bf16
  __m256i x = _mm256_castps_si256(v);
  __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(x, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), lsb)), 16);
  __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(x, _mm256_set1_epi32(0x7fffffff)), _mm256_set1_epi32(0x7f800000));
  r = _mm256_blendv_epi8(r, _mm256_or_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(0x40)), nan);
  r = _mm256_packus_epi32(r, r);  // 128-bit lanes: [r0..3 r0..3 | r4..7 r4..7]
  return _mm256_castsi256_si128(_mm256_permute4x64_epi64(r, 0x08));
}
inline void store_any(void* p, DType dt, VF v, int n) {
  alignas(32) uint8_t tmp[32];
  void* d = n < VL ? (void*)tmp : p;
  if (dt == DType::f32) _mm256_storeu_ps((float*)d, v);
  else if (dt == DType::f16) _mm_storeu_si128((__m128i*)d, _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
  else _mm_storeu_si128((__m128i*)d, to_bf16(v));
  if (n < VL) std::memcpy(p, tmp, (size_t)n * esize(dt));
}
inline void store_f32(float* p, VF v, int n) { store_any(p, DType::f32, v, n); }
// Packed rows of R = MR = 6 floats: a full 8-lane store spills 2 lanes into the next
// row, which is written afterwards (rows are packed in ascending order) and the buffers
// carry 64 bytes of slack, so a plain store is safe and cheaper than a partial one.
inline void store_part(float* p, VF v, int) { _mm256_storeu_ps(p, v); }

inline void transpose(VF r[8]) {
  VF t[8], u[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int g = 0; g < 2; ++g) {
    __m256d a = _mm256_castps_pd(t[4 * g]), b = _mm256_castps_pd(t[4 * g + 1]);
    __m256d c = _mm256_castps_pd(t[4 * g + 2]), d = _mm256_castps_pd(t[4 * g + 3]);
    u[4 * g + 0] = _mm256_castpd_ps(_mm256_unpacklo_pd(a, c));
    u[4 * g + 1] = _mm256_castpd_ps(_mm256_unpackhi_pd(a, c));
    u[4 * g + 2] = _mm256_castpd_ps(_mm256_unpacklo_pd(b, d));
    u[4 * g + 3] = _mm256_castpd_ps(_mm256_unpackhi_pd(b, d));
  }
  for (int m = 0; m < 4; ++m) {
    r[m] = _mm256_permute2f128_ps(u[m], u[4 + m], 0x20);
    r[4 + m] = _mm256_permute2f128_ps(u[m], u[4 + m], 0x31);
  }
}

#else  // scalar: 1-lane "vectors"; the compiler may still vectorise the NR loop (SSE2)

constexpr int VL = 1;
constexpr int MR = 4, NR = 8;
constexpr i64 KC_F32 = 256, KC_PAIR = 256, MC_MAX = 64, NC_MAX = 256;
constexpr bool kPairBf16 = false;
typedef float VF;

inline VF vzero() { return 0.f; }
inline VF vset1(float x) { return x; }
inline VF vadd(VF a, VF b) { return a + b; }
inline VF vmul(VF a, VF b) { return a * b; }
inline VF vfma(VF a, VF b, VF c) { return a * b + c; }
inline VF vload(const float* p) { return *p; }
inline void vstore(float* p, VF v) { *p = v; }
inline VF load_any(const void* p, DType dt, int n) {
  if (n <= 0) return 0.f;
  uint16_t h;
  switch (dt) {
    case DType::f32: { float f; std::memcpy(&f, p, 4); return f; }
    case DType::f16: std::memcpy(&h, p, 2); return f16_to_f32(h);
    default: std::memcpy(&h, p, 2); return bf16_to_f32(h);
  }
}
inline VF load_f32(const float* p, int n) { return n > 0 ? *p : 0.f; }
inline void store_any(void* p, DType dt, VF v, int n) {
  if (n <= 0) return;
  uint16_t h;
  switch (dt) {
    case DType::f32: std::memcpy(p, &v, 4); return;
    case DType::f16: h = f32_to_f16(v); break;
    default: h = f32_to_bf16(v); break;
  }
  std::memcpy(p, &h, 2);
}
inline void store_f32(float* p, VF v, int n) { if (n > 0) *p = v; }
inline void store_part(float* p, VF v, int n) { if (n > 0) *p = v; }
inline void transpose(VF*) {}

#endif

constexpr int NV = NR / VL;  // vectors per tile row
static_assert(NR % VL == 0 && MR <= 16, "tile shape");

// =====================================================================================
// Storing a register tile. The micro-tile's origin is baked into the pointers of Out.
// =====================================================================================
enum Mode : int {
  kTileSet,  // T = acc                                   (f16/bf16 C, first K chunk)
  kTileAdd,  // T += acc                                  (f16/bf16 C, middle chunks)
  kFinal,    // C = alpha*acc + beta*C + bias             (only / first chunk)
  kFinalT,   // C = alpha*(acc + T) + beta*C + bias       (f16/bf16 C, last chunk)
  kCAdd,     // C += alpha*acc                            (f32 C, later chunks)
};

struct Out {
  int mode;
  char* c;          // &C[row0, col0]
  i64 ldc_bytes;
  DType cdt;
  int csz;
  float* t;         // &T[row0, col0] (f32 partial tile, padded to whole NR strips)
  i64 ldt;
  const float* bias;  // &bias[col0] or null
  float alpha, beta;
};

inline void store_vec(const Out& o, int i, int j, VF v, int n) {
  if (o.mode <= kTileAdd) {  // the tile is padded: whole vectors, no masks
    float* p = o.t + i * o.ldt + j;
    if (o.mode == kTileAdd) v = vadd(v, vload(p));
    vstore(p, v);
    return;
  }
  if (n <= 0) return;
  if (n > VL) n = VL;
  char* pc = o.c + i * o.ldc_bytes + (i64)j * o.csz;
  if (o.mode == kCAdd) {
    float* p = (float*)pc;
    store_f32(p, vfma(vset1(o.alpha), v, load_f32(p, n)), n);
    return;
  }
  if (o.mode == kFinalT) v = vadd(v, vload(o.t + i * o.ldt + j));
  v = vmul(v, vset1(o.alpha));
  if (o.beta != 0.f) v = vfma(vset1(o.beta), load_any(pc, o.cdt, n), v);  // beta = 0: C is never read
  if (o.bias) v = vadd(v, load_f32(o.bias + j, n));
  store_any(pc, o.cdt, v, n);
}

template <int R>
inline void store_tile(VF (&c)[R][NV], const Out& o, int mr, int nr) {
  for (int i = 0; i < R && i < mr; ++i)
    for (int v = 0; v < NV; ++v) store_vec(o, i, v * VL, c[i][v], nr - v * VL);
}

// =====================================================================================
// Microkernels. pa: packed A panel, MR values per k step (R <= MR of them used);
// pb: packed B micro-panel, NR values per k step. kw k steps (pairs for bf16).
// =====================================================================================
typedef void (*Ukr)(i64 kw, const void* pa, const void* pb, const Out& o, int mr, int nr);

template <int R>
void ukr_f32(i64 kw, const void* pav, const void* pbv, const Out& o, int mr, int nr) {
  const float* pa = (const float*)pav;
  const float* pb = (const float*)pbv;
  VF c[R][NV];
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) c[i][v] = vzero();
  for (i64 k = 0; k < kw; ++k) {
    VF b[NV];
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) b[v] = vload(pb + v * VL);
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
      VF a = vset1(pa[i]);
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) c[i][v] = vfma(a, b[v], c[i][v]);
    }
    pa += MR;
    pb += NR;
  }
  store_tile<R>(c, o, mr, nr);
}

#if defined(__AVX512F__)
// vdpbf16ps: c[lane j] += a.bf16[2j]*b.bf16[2j] + a.bf16[2j+1]*b.bf16[2j+1]. Packed A holds
// one 32-bit word per (row, k-pair) = (A[i][k], A[i][k+1]); broadcasting it pairs with a
// packed-B vector holding (B[k][j], B[k+1][j]) in lane j, so one instruction does two k.
template <int R>
void ukr_pair(i64 kw, const void* pav, const void* pbv, const Out& o, int mr, int nr) {
  const int32_t* pa = (const int32_t*)pav;
  const __m512i* pb = (const __m512i*)pbv;
  VF c[R][NV];
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i) c[i][0] = c[i][1] = vzero();
  for (i64 k = 0; k < kw; ++k) {
    __m512bh b0 = (__m512bh)_mm512_load_si512(pb), b1 = (__m512bh)_mm512_load_si512(pb + 1);
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
      __m512bh a = (__m512bh)_mm512_set1_epi32(pa[i]);
      c[i][0] = _mm512_dpbf16_ps(c[i][0], a, b0);
      c[i][1] = _mm512_dpbf16_ps(c[i][1], a, b1);
    }
    pa += MR;
    pb += 2;
  }
  store_tile<R>(c, o, mr, nr);
}
#endif

// Tables indexed by the number of live rows: a short last panel (and small M, e.g.
// decode with M = 1) runs a kernel with only that many rows instead of wasting FMAs.
template <class Seq> struct UkrTable;
template <int... I> struct UkrTable<std::integer_sequence<int, I...>> {
  static constexpr Ukr f32[MR] = {&ukr_f32<I + 1>...};
#if defined(__AVX512F__)
  static constexpr Ukr pair[MR] = {&ukr_pair<I + 1>...};
#endif
};
using Ukrs = UkrTable<std::make_integer_sequence<int, MR>>;

// =====================================================================================
// Packing.
// =====================================================================================
// Transposing pack: dst[k*R + r] = row r's k-th value for r < rows, 0 for rows <= r < R,
// k in [0, nk). load(r, k, n) returns n (<= VL) consecutive values of row r from k on
// (rest zero). Rows go through VL x VL register transposes, so this costs a few
// shuffles per element instead of a scalar load+store each.
template <class Load>
inline void pack_t(float* dst, int R, int rows, i64 nk, const Load& load) {
  for (i64 k0 = 0; k0 < nk; k0 += VL) {
    int kn = (int)min64(VL, nk - k0);
    for (int rg = 0; rg < R; rg += VL) {
      int rn = R - rg < VL ? R - rg : VL;
      VF v[VL];
      for (int r = 0; r < VL; ++r) v[r] = rg + r < rows ? load(rg + r, k0, kn) : vzero();
      transpose(v);
      float* d = dst + k0 * R + rg;
      if (rn == VL) for (int kk = 0; kk < kn; ++kk) vstore(d + kk * R, v[kk]);
      else for (int kk = 0; kk < kn; ++kk) store_part(d + kk * R, v[kk], rn);
    }
  }
}

// Element source: a row-major matrix region, row r / column k relative to its origin.
struct Src {
  const char* p;
  i64 ld_bytes;
  DType dt;
  int esz;
  const char* at(i64 r, i64 k) const { return p + r * ld_bytes + k * esz; }
};

// Calls f(load) with load(p, n) = load_any(p, dt, n) for a compile-time dt, so the dtype
// switch is hoisted out of the packing loops.
template <class F>
inline void with_loader(DType dt, const F& f) {
  switch (dt) {
    case DType::f32: f([](const char* p, int n) { return load_any(p, DType::f32, n); }); break;
    case DType::f16: f([](const char* p, int n) { return load_any(p, DType::f16, n); }); break;
    default: f([](const char* p, int n) { return load_any(p, DType::bf16, n); }); break;
  }
}

// Pack rows [0, rows) x k [0, kc) of s as R-wide transposed f32 panel (f32 path).
inline void pack_rows_f32(float* dst, int R, int rows, i64 kc, const Src& s) {
  with_loader(s.dt, [&](auto load) {
    pack_t(dst, R, rows, kc, [&](int r, i64 k, int n) { return load(s.at(r, k), n); });
  });
}

// B stored [K,N]: the whole kc x nc block at once, read row by row (long sequential runs;
// packing one NR-wide strip at a time would read short pieces of kc rows, a TLB and
// prefetcher disaster for large ldb), scattered into micro-panels p at dst + p*kc*NR,
// each [kc][NR] zero-padded.
inline void pack_b_block_f32(float* dst, i64 nc, i64 kc, const Src& s) {
  const i64 np = cdiv(nc, NR);
  with_loader(s.dt, [&](auto load) {
    for (i64 k = 0; k < kc; ++k)
      for (i64 p = 0; p < np; ++p)
        for (int v = 0; v < NV; ++v) {
          const i64 n = nc - p * NR - v * VL;
          vstore(dst + (p * kc + k) * NR + v * VL, n > 0 ? load(s.at(k, p * NR + v * VL), n > VL ? VL : (int)n) : vzero());
        }
  });
}

#if defined(__AVX512F__)
inline __mmask32 lmask32(int n) { return n >= 32 ? ~(__mmask32)0 : (__mmask32)((1u << n) - 1u); }

// bf16 pair layout (for vdpbf16ps), one 32-bit word per (row, k-pair), low half = even k:
//   A panel:  word[kp*MR + i] = (A[i][2kp], A[i][2kp+1])
//   B panel:  word[kp*NR + j] = (B[2kp][j], B[2kp+1][j])
// With K odd the last pair's high half is 0 in both, so it adds 0*0. A row-major A (and
// a B stored [N,K]) already holds each pair as one 32-bit word, so packing is the same
// 32-bit transpose as f32; only B stored [K,N] needs two rows interleaved (below).
inline void pack_rows_pairs(float* dst, int R, int rows, i64 kc, const Src& s) {
  pack_t(dst, R, rows, (kc + 1) / 2, [&](int r, i64 kp, int n) {
    int ne = (int)min64(2 * n, kc - 2 * kp);  // bf16 elements left in this row
    return _mm512_castsi512_ps(_mm512_maskz_loadu_epi16(lmask32(ne), s.at(r, 2 * kp)));
  });
}

// Pair version of pack_b_block_f32: micro-panel p at dst + p*kw*NR words, kw = ceil(kc/2).
inline void pack_b_block_pairs(float* dst, i64 nc, i64 kc, const Src& s) {
  alignas(64) static const int16_t lo_idx[32] = {0, 32, 1, 33, 2, 34, 3, 35, 4, 36, 5, 37, 6, 38, 7, 39,
                                                 8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
  alignas(64) static const int16_t hi_idx[32] = {16, 48, 17, 49, 18, 50, 19, 51, 20, 52, 21, 53, 22, 54, 23, 55,
                                                 24, 56, 25, 57, 26, 58, 27, 59, 28, 60, 29, 61, 30, 62, 31, 63};
  const __m512i ilo = _mm512_load_si512(lo_idx), ihi = _mm512_load_si512(hi_idx);
  const i64 kw = (kc + 1) / 2, np = cdiv(nc, NR);
  for (i64 kp = 0; kp < kw; ++kp)
    for (i64 p = 0; p < np; ++p) {
      const __mmask32 m = lmask32((int)min64(NR, nc - p * NR));
      __m512i r0 = _mm512_maskz_loadu_epi16(m, s.at(2 * kp, p * NR));
      __m512i r1 = 2 * kp + 1 < kc ? _mm512_maskz_loadu_epi16(m, s.at(2 * kp + 1, p * NR)) : _mm512_setzero_si512();
      // vpermt2w interleaves the two k rows: lane 2j = row k col j, lane 2j+1 = row k+1 col j
      float* d = dst + (p * kw + kp) * NR;
      _mm512_store_si512(d, _mm512_permutex2var_epi16(r0, ilo, r1));
      _mm512_store_si512(d + 16, _mm512_permutex2var_epi16(r0, ihi, r1));
    }
}
#endif

// =====================================================================================
// Driver.
// =====================================================================================
struct Ctx {
  const GemmArgs* g;
  Parallel* par;
  bool pair;     // bf16 pair path (vdpbf16ps)
  bool tile;     // f16/bf16 C with several K chunks: f32 partial tile in scratch
  i64 KC, MC, NC, nb;
  size_t a_off, b_off, t_off, bytes;
};

void gemm_task(void* vctx, i64 t, int thread) {
  const Ctx& x = *(const Ctx*)vctx;
  const GemmArgs& g = *x.g;
  const i64 i0 = (t / x.nb) * x.MC, j0 = (t % x.nb) * x.NC;
  const i64 mc = min64(x.MC, g.M - i0), nc = min64(x.NC, g.N - j0);
  char* s = (char*)x.par->scratch(thread, x.bytes);
  float* ap = (float*)(s + x.a_off);
  float* bp = (float*)(s + x.b_off);
  float* tp = (float*)(s + x.t_off);
  const int esz = esize(g.dtype), csz = esize(g.c_dtype);
  const i64 nchunks = cdiv(g.K, x.KC);
  const Ukr* ukrs = Ukrs::f32;
#if defined(__AVX512F__)
  if (x.pair) ukrs = Ukrs::pair;
#endif

  for (i64 kb = 0; kb < nchunks; ++kb) {
    const i64 k0 = kb * x.KC, kc = min64(x.KC, g.K - k0);
    const i64 kw = x.pair ? (kc + 1) / 2 : kc;  // microkernel k steps
    const bool first = kb == 0, last = kb == nchunks - 1;
    int mode;
    if (first && last) mode = kFinal;
    else if (!x.tile) mode = first ? kFinal : kCAdd;
    else mode = first ? kTileSet : last ? kFinalT : kTileAdd;

    // A block -> MR-row panels, panel p at ap + p*MR*kw.
    for (i64 ir = 0; ir < mc; ir += MR) {
      Src sa{(const char*)g.A + ((i0 + ir) * g.lda + k0) * esz, g.lda * esz, g.dtype, esz};
      int rows = (int)min64(MR, mc - ir);
      float* d = ap + (ir / MR) * MR * kw;
#if defined(__AVX512F__)
      if (x.pair) { pack_rows_pairs(d, MR, rows, kc, sa); continue; }
#endif
      pack_rows_f32(d, MR, rows, kc, sa);
    }

    if (!g.b_trans) {  // B[K,N]: the whole block now (see pack_b_block_f32)
      Src sb{(const char*)g.B + (k0 * g.ldb + j0) * esz, g.ldb * esz, g.dtype, esz};
#if defined(__AVX512F__)
      if (x.pair) pack_b_block_pairs(bp, nc, kc, sb); else
#endif
      pack_b_block_f32(bp, nc, kc, sb);
    }
    for (i64 jr = 0; jr < nc; jr += NR) {
      const int nr = (int)min64(NR, nc - jr);
      const i64 j = j0 + jr;
      const float* bpanel = bp + (jr / NR) * NR * kw;
      if (g.b_trans) {  // B[N,K]: rows j.., transposed into one micro-panel just before use (L1)
        Src sb{(const char*)g.B + (j * g.ldb + k0) * esz, g.ldb * esz, g.dtype, esz};
        bpanel = bp;
#if defined(__AVX512F__)
        if (x.pair) pack_rows_pairs(bp, NR, nr, kc, sb); else
#endif
        pack_rows_f32(bp, NR, nr, kc, sb);
      }
      for (i64 ir = 0; ir < mc; ir += MR) {
        const int mr = (int)min64(MR, mc - ir);
        Out o{mode,
              (char*)g.C + ((i0 + ir) * g.ldc + j) * csz, g.ldc * csz, g.c_dtype, csz,
              tp + ir * x.NC + jr, x.NC,
              g.bias ? g.bias + j : nullptr, g.alpha, g.beta};
        ukrs[mr - 1](kw, ap + (ir / MR) * MR * kw, bpanel, o, mr, nr);
      }
    }
  }
}

// K == 0: C = beta*C + bias.
void scale_only(const GemmArgs& g) {
  const int csz = esize(g.c_dtype);
  for (i64 i = 0; i < g.M; ++i)
    for (i64 j = 0; j < g.N; ++j) {
      char* p = (char*)g.C + (i * g.ldc + j) * csz;
      float v = 0.f;
      if (g.beta != 0.f) {
        uint16_t h;
        if (g.c_dtype == DType::f32) std::memcpy(&v, p, 4);
        else { std::memcpy(&h, p, 2); v = g.c_dtype == DType::f16 ? f16_to_f32(h) : bf16_to_f32(h); }
        v *= g.beta;
      }
      if (g.bias) v += g.bias[j];
      if (g.c_dtype == DType::f32) { std::memcpy(p, &v, 4); continue; }
      uint16_t h = g.c_dtype == DType::f16 ? f32_to_f16(v) : f32_to_bf16(v);
      std::memcpy(p, &h, 2);
    }
}

}  // namespace

void gemm(const GemmArgs& g, Parallel& par) {
  if (g.M <= 0 || g.N <= 0) return;
  if (g.K <= 0) { scale_only(g); return; }

  Ctx x{};
  x.g = &g;
  x.par = &par;
  x.pair = kPairBf16 && g.dtype == DType::bf16;
  x.KC = x.pair ? KC_PAIR : KC_F32;
  // One row panel (decode-like M): each B micro-panel is used once, so L1 blocking buys
  // nothing, while longer K chunks turn B reads into long sequential streams.
  // (B[K,N] is packed a whole block at a time instead, so it keeps the usual KC.)
  if (g.M <= MR && g.b_trans) x.KC *= 8;
  x.tile = g.c_dtype != DType::f32 && g.K > x.KC;

  // Task grid: blocks of at most MC_MAX x NC_MAX; with several threads and enough work,
  // split further (the larger block dimension first) until there are ~4 tasks per
  // thread, so dynamic scheduling can even out uneven blocks and noisy neighbours.
  const int threads = par.threads();
  const double work = (double)g.M * (double)g.N * (double)g.K;
  const i64 want = threads <= 1 || work < 65536.0 ? 1 : work < 4194304.0 ? threads : 4 * threads;
  i64 mb = cdiv(g.M, MC_MAX), nb = cdiv(g.N, NC_MAX);
  while (mb * nb < want) {
    const bool can_m = cdiv(g.M, mb + 1) >= MR, can_n = cdiv(g.N, nb + 1) >= NR;
    if (can_n && (!can_m || cdiv(g.N, nb) >= cdiv(g.M, mb))) ++nb;
    else if (can_m) ++mb;
    else break;
  }
  x.MC = round_up(cdiv(g.M, mb), MR);
  x.NC = round_up(cdiv(g.N, nb), NR);
  mb = cdiv(g.M, x.MC);
  x.nb = cdiv(g.N, x.NC);

  // Scratch layout (64-byte aligned pieces; each with 64 bytes of slack for the
  // spilling partial stores of store_part()).
  const i64 kcmax = min64(x.KC, g.K);
  const i64 kw = x.pair ? (kcmax + 1) / 2 : kcmax;
  const size_t a_bytes = (size_t)round_up(x.MC * kw * 4 + 64, 64);
  const size_t b_bytes = (size_t)round_up((g.b_trans ? NR : x.NC) * kw * 4 + 64, 64);
  const size_t t_bytes = x.tile ? (size_t)round_up(x.MC * x.NC * 4, 64) : 0;
  x.a_off = 0;
  x.b_off = a_bytes;
  x.t_off = a_bytes + b_bytes;
  x.bytes = a_bytes + b_bytes + t_bytes;

  par.run(mb * x.nb, gemm_task, &x);
}

TY_VARIANT_END
