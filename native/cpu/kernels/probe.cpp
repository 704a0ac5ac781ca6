// Tachyon CPU backend: roofline probes (ISA variant). Kinds are ty::ProbeKind (probe.h).
//
// probe(args, par) runs one task per thread (par.run(par.threads(), ...)) and returns the
// total work done; the caller times the call.
//   dram_read: task t sums its own contiguous chunk of buf[0, bytes) (chunk starts are
//     64-byte multiples from buf, the last chunk takes the rest), `iters` passes, with
//     several independent accumulators. Returns bytes * iters. The sum it computes is a
//     checksum: the 64-bit little-endian words of the chunk summed mod 2^64, plus the
//     single bytes of a tail shorter than 8 bytes, summed over all passes.
//   fma_f32 / dot_bf16 / dot_int8: each task runs `iters` iterations of a register-
//     resident loop of independent multiply-accumulate chains. Returns the MACs executed:
//       avx512: f32 16 chains x 16 lanes; bf16 16 x vdpbf16ps (32 MACs each);
//               int8 24 x vpdpbusd (64 MACs each; 12 chains, unrolled twice)
//       avx2:   f32 12 chains x 8 lanes (bf16 runs the same loop and counts the same);
//               int8 10 chains x (vpmaddubsw + vpaddsw) = 32 MACs each
//       scalar: f32 16 chains of multiply + add (bf16 the same); int8 16 chains of one
//               integer multiply-add each (the compiler may vectorise these with SSE2)
// sink (may be null) must hold par.threads() doubles; task t writes sink[t] (task index,
// which like the thread index lies in [0, threads())), so nothing is optimised away.
#include <cstdint>
#include <cstring>

#include "kernels.h"
#include "probe.h"

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

TY_VARIANT_BEGIN

namespace {

struct ProbeCtx {
  const ProbeArgs* args;
  int64_t n_tasks;
};

// Hides the pointer's provenance from the optimiser, so every pass really reads memory
// again (no inline asm: the project only allows it in a whitelist of CUDA wrappers).
inline const uint8_t* opaque(const uint8_t* p) {
  const uint8_t* volatile v = p;
  return v;
}

template <class L, class V>
inline double hsum(const V& v) {
  L l[sizeof(V) / sizeof(L)];
  std::memcpy(l, &v, sizeof l);
  double s = 0;
  for (unsigned i = 0; i < sizeof(V) / sizeof(L); ++i) s += (double)l[i];
  return s;
}

inline uint64_t load_u64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

// Checksum of one pass over [p, p + n): 64-bit words mod 2^64, then single tail bytes.
inline uint64_t read_pass(const uint8_t* p, int64_t n) {
  int64_t i = 0;
  uint64_t total = 0;
#if defined(__AVX512F__)
  __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0,
          a6 = a0, a7 = a0;
  for (; i + 512 <= n; i += 512) {
    a0 = _mm512_add_epi64(a0, _mm512_loadu_si512(p + i));
    a1 = _mm512_add_epi64(a1, _mm512_loadu_si512(p + i + 64));
    a2 = _mm512_add_epi64(a2, _mm512_loadu_si512(p + i + 128));
    a3 = _mm512_add_epi64(a3, _mm512_loadu_si512(p + i + 192));
    a4 = _mm512_add_epi64(a4, _mm512_loadu_si512(p + i + 256));
    a5 = _mm512_add_epi64(a5, _mm512_loadu_si512(p + i + 320));
    a6 = _mm512_add_epi64(a6, _mm512_loadu_si512(p + i + 384));
    a7 = _mm512_add_epi64(a7, _mm512_loadu_si512(p + i + 448));
  }
  for (; i + 64 <= n; i += 64) a0 = _mm512_add_epi64(a0, _mm512_loadu_si512(p + i));
  a0 = _mm512_add_epi64(_mm512_add_epi64(_mm512_add_epi64(a0, a1), _mm512_add_epi64(a2, a3)),
                        _mm512_add_epi64(_mm512_add_epi64(a4, a5), _mm512_add_epi64(a6, a7)));
  uint64_t lanes[8];  // (not _mm512_reduce_*: GCC 12 -Wall warns inside those)
  std::memcpy(lanes, &a0, sizeof lanes);
  total = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) +
          ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
#elif defined(__AVX2__)
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0,
          a6 = a0, a7 = a0;
  for (; i + 256 <= n; i += 256) {
    a0 = _mm256_add_epi64(a0, _mm256_loadu_si256((const __m256i*)(p + i)));
    a1 = _mm256_add_epi64(a1, _mm256_loadu_si256((const __m256i*)(p + i + 32)));
    a2 = _mm256_add_epi64(a2, _mm256_loadu_si256((const __m256i*)(p + i + 64)));
    a3 = _mm256_add_epi64(a3, _mm256_loadu_si256((const __m256i*)(p + i + 96)));
    a4 = _mm256_add_epi64(a4, _mm256_loadu_si256((const __m256i*)(p + i + 128)));
    a5 = _mm256_add_epi64(a5, _mm256_loadu_si256((const __m256i*)(p + i + 160)));
    a6 = _mm256_add_epi64(a6, _mm256_loadu_si256((const __m256i*)(p + i + 192)));
    a7 = _mm256_add_epi64(a7, _mm256_loadu_si256((const __m256i*)(p + i + 224)));
  }
  for (; i + 32 <= n; i += 32)
    a0 = _mm256_add_epi64(a0, _mm256_loadu_si256((const __m256i*)(p + i)));
  a0 = _mm256_add_epi64(_mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3)),
                        _mm256_add_epi64(_mm256_add_epi64(a4, a5), _mm256_add_epi64(a6, a7)));
  uint64_t lanes[4];
  std::memcpy(lanes, &a0, sizeof lanes);
  total = lanes[0] + lanes[1] + lanes[2] + lanes[3];
#else
  uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0;
  for (; i + 64 <= n; i += 64) {
    s0 += load_u64(p + i);
    s1 += load_u64(p + i + 8);
    s2 += load_u64(p + i + 16);
    s3 += load_u64(p + i + 24);
    s4 += load_u64(p + i + 32);
    s5 += load_u64(p + i + 40);
    s6 += load_u64(p + i + 48);
    s7 += load_u64(p + i + 56);
  }
  total = ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7));
#endif
  for (; i + 8 <= n; i += 8) total += load_u64(p + i);
  for (; i < n; ++i) total += p[i];
  return total;
}

void dram_task(void* c, int64_t t, int) {
  const ProbeCtx& ctx = *static_cast<const ProbeCtx*>(c);
  const ProbeArgs& a = *ctx.args;
  const int64_t per = (a.bytes / ctx.n_tasks) & ~(int64_t)63;
  const int64_t begin = t * per;
  const int64_t end = t == ctx.n_tasks - 1 ? a.bytes : begin + per;
  const uint8_t* base = static_cast<const uint8_t*>(a.buf) + begin;
  uint64_t sum = 0;
  for (int64_t it = 0; it < a.iters; ++it) sum += read_pass(opaque(base), end - begin);
  if (a.sink) a.sink[t] = (double)sum;
}

// ---- f32 FMA peak (also the bf16 fallback on avx2 / scalar) ----------------------------
#if defined(__AVX512F__)
constexpr int64_t kF32MacsPerIter = 16 * 16;
inline double fma_f32_loop(int64_t iters) {
  const __m512 m = _mm512_set1_ps(0.9999f), b = _mm512_set1_ps(1e-4f);
#define TY_P_DECL(j) __m512 c##j = _mm512_set1_ps(0.01f * j);
#define TY_P_STEP(j) c##j = _mm512_fmadd_ps(c##j, m, b);
#define TY_P_X16(X) \
  X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13) X(14) X(15)
  TY_P_X16(TY_P_DECL)
  for (int64_t i = 0; i < iters; ++i) {
    TY_P_X16(TY_P_STEP)
  }
  __m512 s = _mm512_add_ps(
      _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(c0, c1), _mm512_add_ps(c2, c3)),
                    _mm512_add_ps(_mm512_add_ps(c4, c5), _mm512_add_ps(c6, c7))),
      _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(c8, c9), _mm512_add_ps(c10, c11)),
                    _mm512_add_ps(_mm512_add_ps(c12, c13), _mm512_add_ps(c14, c15))));
#undef TY_P_DECL
#undef TY_P_STEP
  return hsum<float>(s);
}
#elif defined(__AVX2__)
// 12 chains + 2 constants fit the 16 ymm registers (4-cycle latency x 2 FMA pipes = 8).
constexpr int64_t kF32MacsPerIter = 12 * 8;
inline double fma_f32_loop(int64_t iters) {
  const __m256 m = _mm256_set1_ps(0.9999f), b = _mm256_set1_ps(1e-4f);
#define TY_P_DECL(j) __m256 c##j = _mm256_set1_ps(0.01f * j);
#define TY_P_STEP(j) c##j = _mm256_fmadd_ps(c##j, m, b);
#define TY_P_X12(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
  TY_P_X12(TY_P_DECL)
  for (int64_t i = 0; i < iters; ++i) {
    TY_P_X12(TY_P_STEP)
  }
  __m256 s = _mm256_add_ps(
      _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(c0, c1), _mm256_add_ps(c2, c3)),
                    _mm256_add_ps(_mm256_add_ps(c4, c5), _mm256_add_ps(c6, c7))),
      _mm256_add_ps(_mm256_add_ps(c8, c9), _mm256_add_ps(c10, c11)));
#undef TY_P_DECL
#undef TY_P_STEP
  return hsum<float>(s);
}
#else
constexpr int64_t kF32MacsPerIter = 16;
inline double fma_f32_loop(int64_t iters) {
  const float m = 0.9999f, b = 1e-4f;
  float c[16];
  for (int j = 0; j < 16; ++j) c[j] = 0.01f * j;
  for (int64_t i = 0; i < iters; ++i)
    for (int j = 0; j < 16; ++j) c[j] = c[j] * m + b;
  double s = 0;
  for (int j = 0; j < 16; ++j) s += c[j];
  return s;
}
#endif

// ---- bf16 dot peak ----------------------------------------------------------------------
#if defined(__AVX512F__)
constexpr int64_t kBf16MacsPerIter = 16 * 32;
inline double dot_bf16_loop(int64_t iters) {
  // 1.0 x 2^-20 per pair: the f32 sums stay small and normal (no denormal slow paths).
  const __m512bh x = (__m512bh)_mm512_set1_epi16(0x3f80);
  const __m512bh y = (__m512bh)_mm512_set1_epi16(0x3580);
#define TY_P_DECL(j) __m512 c##j = _mm512_set1_ps(0.01f * j);
#define TY_P_STEP(j) c##j = _mm512_dpbf16_ps(c##j, x, y);
  TY_P_X16(TY_P_DECL)
  for (int64_t i = 0; i < iters; ++i) {
    TY_P_X16(TY_P_STEP)
  }
  __m512 s = _mm512_add_ps(
      _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(c0, c1), _mm512_add_ps(c2, c3)),
                    _mm512_add_ps(_mm512_add_ps(c4, c5), _mm512_add_ps(c6, c7))),
      _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(c8, c9), _mm512_add_ps(c10, c11)),
                    _mm512_add_ps(_mm512_add_ps(c12, c13), _mm512_add_ps(c14, c15))));
#undef TY_P_DECL
#undef TY_P_STEP
  return hsum<float>(s);
}
#else
// No bf16 dot instruction: this variant's bf16 kernels run on f32 FMAs, so the honest
// peak is the f32 FMA loop.
constexpr int64_t kBf16MacsPerIter = kF32MacsPerIter;
inline double dot_bf16_loop(int64_t iters) { return fma_f32_loop(iters); }
#endif

// ---- int8 dot peak ----------------------------------------------------------------------
#if defined(__AVX512F__)
// 12 chains, the loop body unrolled twice: 24 x vpdpbusd per iteration. GCC 12 tends to
// wrap vpdpbusd in register copies (eliminated at rename on current cores, but they cost
// issue slots) and spills at 16 chains; this shape, kept out of line, compiles to 24
// vpdpbusd + ~10 copies and no memory access. Check with -S after compiler changes.
constexpr int64_t kInt8MacsPerIter = 24 * 64;
__attribute__((noinline)) double dot_int8_loop(int64_t iters) {
  const __m512i u = _mm512_set1_epi8(3), s8 = _mm512_set1_epi8(-2);
#define TY_P_DECL(j) __m512i c##j = _mm512_set1_epi32(j);
#define TY_P_STEP(j) c##j = _mm512_dpbusd_epi32(c##j, u, s8);
#define TY_P_X12(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
  TY_P_X12(TY_P_DECL)
  for (int64_t i = 0; i < iters; ++i) {
    TY_P_X12(TY_P_STEP)
    TY_P_X12(TY_P_STEP)
  }
  __m512i s = _mm512_add_epi32(
      _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(c0, c1), _mm512_add_epi32(c2, c3)),
                       _mm512_add_epi32(_mm512_add_epi32(c4, c5), _mm512_add_epi32(c6, c7))),
      _mm512_add_epi32(_mm512_add_epi32(c8, c9), _mm512_add_epi32(c10, c11)));
#undef TY_P_DECL
#undef TY_P_STEP
#undef TY_P_X12
#undef TY_P_X16
  return hsum<int32_t>(s);
}
#elif defined(__AVX2__)
constexpr int64_t kInt8MacsPerIter = 10 * 32;
inline double dot_int8_loop(int64_t iters) {
  // The peak is the rate of the instruction that does the multiplies: vpmaddubsw (32
  // u8 x s8 products, summed in pairs to i16), accumulated with vpaddsw, as the int4 and
  // K-quant kernels do between widenings. (Widening every step with vpmaddwd + vpaddd, as
  // the int8 kernel must, halves the rate on cores where both run on the same pipe, such
  // as Zen 1: measuring that sequence made the int4 kernels read above 100% of "peak".)
  // The accumulator itself is the u8 operand, so the products depend on the loop and
  // cannot be hoisted out of it.
  const __m256i w = _mm256_set1_epi8(-2);
#define TY_P_DECL(j) __m256i c##j = _mm256_set1_epi32(j);
#define TY_P_STEP(j) c##j = _mm256_adds_epi16(c##j, _mm256_maddubs_epi16(c##j, w));
#define TY_P_X10(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9)
  TY_P_X10(TY_P_DECL)
  for (int64_t i = 0; i < iters; ++i) {
    TY_P_X10(TY_P_STEP)
  }
  __m256i s = _mm256_add_epi32(
      _mm256_add_epi32(_mm256_add_epi32(_mm256_add_epi32(c0, c1), _mm256_add_epi32(c2, c3)),
                       _mm256_add_epi32(_mm256_add_epi32(c4, c5), _mm256_add_epi32(c6, c7))),
      _mm256_add_epi32(c8, c9));
#undef TY_P_DECL
#undef TY_P_STEP
#undef TY_P_X10
  return hsum<int32_t>(s);
}
#else
constexpr int64_t kInt8MacsPerIter = 16;
inline double dot_int8_loop(int64_t iters) {
  // acc += u8(acc) * s8(w): one int8 multiply-accumulate per chain per iteration, the
  // operand taken from the accumulator so it cannot be hoisted. Unsigned arithmetic wraps.
  uint32_t c[16];
  for (int j = 0; j < 16; ++j) c[j] = (uint32_t)j;
  const int32_t w = -2;
  for (int64_t i = 0; i < iters; ++i)
    for (int j = 0; j < 16; ++j) c[j] += (uint32_t)((int32_t)(uint8_t)c[j] * w);
  double s = 0;
  for (int j = 0; j < 16; ++j) s += (double)(int32_t)c[j];
  return s;
}
#endif

void compute_task(void* c, int64_t t, int) {
  const ProbeCtx& ctx = *static_cast<const ProbeCtx*>(c);
  const ProbeArgs& a = *ctx.args;
  double r = 0;
  switch ((ProbeKind)a.kind) {
    case ProbeKind::fma_f32: r = fma_f32_loop(a.iters); break;
    case ProbeKind::dot_bf16: r = dot_bf16_loop(a.iters); break;
    case ProbeKind::dot_int8: r = dot_int8_loop(a.iters); break;
    default: break;
  }
  if (a.sink) a.sink[t] = r;
}

}  // namespace

double probe(const ProbeArgs& a, Parallel& par) {
  const int64_t n = par.threads() > 0 ? par.threads() : 1;
  const int64_t iters = a.iters > 0 ? a.iters : 0;
  ProbeArgs args = a;
  args.iters = iters;
  ProbeCtx ctx{&args, n};
  switch ((ProbeKind)a.kind) {
    case ProbeKind::dram_read:
      if (!a.buf || a.bytes <= 0) return 0;
      par.run(n, dram_task, &ctx);
      return (double)a.bytes * (double)iters;
    case ProbeKind::fma_f32:
      par.run(n, compute_task, &ctx);
      return (double)n * (double)iters * (double)kF32MacsPerIter;
    case ProbeKind::dot_bf16:
      par.run(n, compute_task, &ctx);
      return (double)n * (double)iters * (double)kBf16MacsPerIter;
    case ProbeKind::dot_int8:
      par.run(n, compute_task, &ctx);
      return (double)n * (double)iters * (double)kInt8MacsPerIter;
  }
  return 0;
}

TY_VARIANT_END
