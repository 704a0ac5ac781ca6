// Tachyon: standalone test (and benchmark) of the FP8 formats (tachyon/fp8.h,
// native/cpu/fp8.cpp) and the FP8 GEMM (native/cpu/kernels/fp8gemm.cpp, every ISA variant)
// against the float64 reference (native/cpu/ref/fp8gemm_ref.cpp).
// Build and run: native/tests/fp8_test.sh [--quick | --bench [options]].
//
// Conversions: every code of both formats against an independent decoder, and f32 -> fp8
// against a brute-force nearest-even search over all 256 codes; with TY_CUDA_FP8 defined
// (the script does so when /usr/local/cuda/include/cuda_fp8.h exists) also bit for bit
// against CUDA's host implementation (__nv_cvt_fp8_to_halfraw, __nv_cvt_float_to_fp8 with
// __NV_SATFINITE, the __nv_fp8_e4m3 / __nv_fp8_e5m2 classes).
//
// GEMM tolerance (|got - ref| <= tol, ref = the float64 product with the f32-dequantized
// weights, and for w8a8 the activations quantized exactly as specified):
//   tol = 2^-23 * L * mag + tiny, L = min(K, 256) + ceil(K/128) + 8
//   mag = sum |sa * a * w| + |bias| + |residual|. The kernels sum in f32 chains of at most
//   256 products (a 128-column block on the GEMV path, a 256-column chunk on the GEMM
//   path), then add ceil(K/128) block or chunk partials in sequence, then the epilogue's
//   few operations (scale, row scale, bias, residual), each step erring by at most 2^-24
//   of the running magnitude; the decoded weights are exact and the (v*s) vs
//   (sum v*a)*s reordering costs one more 2^-24. L * 2^-24 bounds that sum; the factor
//   2 (2^-23) is margin. A missing or doubled product is caught whenever |a*w| of it
//   exceeds tol, which the moderate-K cases make certain. Output rounding: f16 adds
//   2^-11 |ref| + 2^-24, bf16 2^-8 |ref| + 2^-133. tiny = 2^-90 * K bounds the f32
//   underflow of products: the e4m3 GEMV multiplies value * 2^-120 by a * 2^64, so a
//   product below 2^-70 in true units loses bits (at most 2^-149 * 2^56 = 2^-93 each).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "qgemm_pool.h"
#include "qkernels.h"
#include "ref/fp8gemm_ref.h"
#include "tachyon/error.h"
#include "tachyon/fp8.h"

#if defined(TY_CUDA_FP8)
#include <cuda_fp8.h>
#endif

using namespace ty;

static int g_fail = 0, g_pass = 0;
#define CHECK(cond, ...)                                         \
  do {                                                           \
    if (cond) { ++g_pass; } else {                               \
      ++g_fail;                                                  \
      if (g_fail < 40) {                                         \
        std::fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
        std::fprintf(stderr, __VA_ARGS__);                       \
        std::fprintf(stderr, "\n");                              \
      }                                                          \
    }                                                            \
  } while (0)

static const DType kFmts[2] = {DType::fp8e4m3, DType::fp8e5m2};
static const char* sname(Fp8Scale s) { return s == Fp8Scale::tensor ? "tensor" : s == Fp8Scale::channel ? "channel" : "block128"; }

// ---- conversions -------------------------------------------------------------------------

// Independent decoder: the format definition, in double.
static double decode_def(DType t, int b) {
  const bool e4 = t == DType::fp8e4m3;
  const int s = b >> 7, e = e4 ? (b >> 3) & 15 : (b >> 2) & 31, m = e4 ? b & 7 : b & 3;
  const int bias = e4 ? 7 : 15, mb = e4 ? 3 : 2;
  double v;
  if (e4 && e == 15 && m == 7) return NAN;
  if (!e4 && e == 31) return m ? NAN : (s ? -INFINITY : INFINITY);
  if (e == 0) v = std::ldexp((double)m, 1 - bias - mb);
  else v = std::ldexp((double)((1 << mb) + m), e - bias - mb);
  return s ? -v : v;
}

// Brute-force RNE + saturate-to-finite: nearest finite code, ties to the even code.
static uint8_t encode_brute(DType t, float f) {
  if (std::isnan(f)) return 0x7f;
  const double x = f, mx = fp8_max(t);
  if (std::fabs(x) >= mx) {
    // saturate (CUDA: everything at or beyond max + half an ulp, and between max and
    // that, rounds to max anyway)
    return (uint8_t)((x < 0 ? 0x80 : 0) | (t == DType::fp8e4m3 ? 0x7e : 0x7b));
  }
  int best = -1;
  double bd = 1e300;
  for (int c = 0; c < 128; ++c) {
    const double v = decode_def(t, c);
    if (!std::isfinite(v)) continue;
    const double d = std::fabs(std::fabs(x) - v);
    if (d < bd || (d == bd && (c & 1) == 0)) { bd = d; best = c; }
  }
  return (uint8_t)((std::signbit(x) ? 0x80 : 0) | best);
}

static float bits(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

// Structured f32 inputs: every code's value, the midpoints between neighbours and the
// f32 values one ulp either side, subnormal boundaries, saturation, specials.
static std::vector<float> special_inputs(DType t) {
  std::vector<float> v;
  std::vector<double> vals;
  for (int c = 0; c < 128; ++c) { double d = decode_def(t, c); if (std::isfinite(d)) vals.push_back(d); }
  std::sort(vals.begin(), vals.end());
  const double mx = fp8_max(t);
  vals.push_back(mx * 17 / 16);  // just past max + ulp/2 for e4m3 (464 = max + 16)
  for (size_t i = 0; i < vals.size(); ++i) {
    std::vector<double> pts = {vals[i]};
    if (i + 1 < vals.size()) pts.push_back((vals[i] + vals[i + 1]) / 2);
    for (double p : pts) {
      const float f = (float)p;
      for (float g : {f, std::nextafter(f, 0.0f), std::nextafter(f, INFINITY)})
        for (float s : {1.0f, -1.0f}) v.push_back(g * s);
    }
  }
  const float extra[] = {0.0f, -0.0f, 448.0f, 449.0f, 463.99997f, 464.0f, 464.00003f, 479.0f, 480.0f, 500.0f,
                         57344.0f, 61439.996f, 61440.0f, 61440.004f, 65504.0f, 65536.0f, 1e6f, 1e30f, 3.4e38f,
                         INFINITY, -INFINITY, NAN, -NAN, bits(0x7f800001u), bits(0xffc00000u), bits(1), bits(0x80000001u),
                         bits(0x007fffffu), bits(0x00800000u), std::ldexp(1.0f, -10), std::ldexp(1.0f, -17),
                         std::ldexp(1.0f, -18), std::ldexp(1.5f, -18), std::ldexp(1.0f, -9), std::ldexp(1.0f, -6),
                         std::ldexp(1.0f, -14), std::ldexp(1.0f, -16), std::ldexp(3.0f, -11), std::ldexp(5.0f, -11)};
  for (float f : extra) { v.push_back(f); v.push_back(-f); }
  return v;
}

static uint32_t g_rand_bits_n = 1u << 22;

static void test_conversions() {
  for (DType t : kFmts) {
    const char* nm = dtype_name(t);
    int bad = 0;
    for (int c = 0; c < 256; ++c) {
      const double want = decode_def(t, c);
      const float got = fp8_to_f32(t, (uint8_t)c);
      const bool ok = std::isnan(want) ? std::isnan(got) : (double)got == want && std::signbit(got) == std::signbit(want);
      if (!ok) { ++bad; std::fprintf(stderr, "  %s code %02x: got %g want %g\n", nm, c, got, want); }
      CHECK(fp8_is_nan(t, (uint8_t)c) == (bool)std::isnan(want), "%s is_nan(%02x)", nm, c);
      if (!std::isnan(want) && !std::isinf(want))
        CHECK(f32_to_fp8(t, got) == c, "%s round trip of code %02x gives %02x", nm, c, f32_to_fp8(t, got));
    }
    CHECK(bad == 0, "%s: %d codes decode wrongly", nm, bad);
    // f32 -> fp8 against the brute-force encoder.
    bad = 0;
    std::vector<float> in = special_inputs(t);
    std::mt19937 rng(99);
    std::uniform_real_distribution<float> u(-1, 1);
    for (int i = 0; i < 200000; ++i) in.push_back(u(rng) * std::ldexp(1.0f, (int)(rng() % 40) - 24));
    for (float f : in) {
      const uint8_t want = encode_brute(t, f), got = f32_to_fp8(t, f);
      if (got != want) { if (++bad < 10) std::fprintf(stderr, "  %s encode %a: got %02x want %02x\n", nm, f, got, want); }
    }
    CHECK(bad == 0, "%s: %d of %zu f32 -> fp8 conversions differ from the brute-force search", nm, bad, in.size());
    std::printf("  %s: 256 codes decoded, %zu f32 -> fp8 checked against brute force\n", nm, in.size());
  }
}

#if defined(TY_CUDA_FP8)
static void test_cuda() {
  for (DType t : kFmts) {
    const __nv_fp8_interpretation_t it = t == DType::fp8e4m3 ? __NV_E4M3 : __NV_E5M2;
    const char* nm = dtype_name(t);
    int bad = 0;
    for (int c = 0; c < 256; ++c) {
      const __half_raw h = __nv_cvt_fp8_to_halfraw((__nv_fp8_storage_t)c, it);
      const float want = f16_to_f32(h.x);
      const float got = fp8_to_f32(t, (uint8_t)c);
      // the fp8 classes' float conversion too
      float cls;
      if (t == DType::fp8e4m3) { __nv_fp8_e4m3 v; v.__x = (__nv_fp8_storage_t)c; cls = (float)v; }
      else { __nv_fp8_e5m2 v; v.__x = (__nv_fp8_storage_t)c; cls = (float)v; }
      const bool ok = std::isnan(want) ? (std::isnan(got) && std::isnan(cls))
                                       : (f32_bits(got) == f32_bits(want) && f32_bits(cls) == f32_bits(want));
      if (!ok) { ++bad; std::fprintf(stderr, "  cuda %s code %02x: got %g cuda %g class %g\n", nm, c, got, want, cls); }
    }
    CHECK(bad == 0, "cuda %s: %d codes decode differently", nm, bad);
    std::vector<float> in = special_inputs(t);
    std::mt19937_64 rng(12345);
    for (uint32_t i = 0; i < g_rand_bits_n; ++i) in.push_back(bits((uint32_t)rng()));
    // random values concentrated on the format's range (all rounding cases)
    for (uint32_t i = 0; i < g_rand_bits_n / 4; ++i) {
      const uint32_t e = (uint32_t)(t == DType::fp8e4m3 ? 100 + rng() % 40 : 95 + rng() % 60);
      in.push_back(bits((uint32_t)(rng() & 0x807fffffu) | (e << 23)));
    }
    int64_t bad2 = 0, bad3 = 0;
    for (float f : in) {
      const uint8_t want = __nv_cvt_float_to_fp8(f, __NV_SATFINITE, it), got = f32_to_fp8(t, f);
      if (got != want) { if (++bad2 < 10) std::fprintf(stderr, "  cuda %s encode %a: got %02x cuda %02x\n", nm, f, got, want); }
      uint8_t cls;
      if (t == DType::fp8e4m3) cls = __nv_fp8_e4m3(f).__x; else cls = __nv_fp8_e5m2(f).__x;
      if (cls != want) ++bad3;
    }
    CHECK(bad2 == 0, "cuda %s: %lld of %zu f32 -> fp8 conversions differ", nm, (long long)bad2, in.size());
    CHECK(bad3 == 0, "cuda %s: the fp8 class constructor disagrees with __nv_cvt_float_to_fp8 %lld times", nm, (long long)bad3);
    std::printf("  cuda_fp8.h %s: 256 codes bit-exact, %zu f32 -> fp8 bit-exact (%u random bit patterns)\n", nm,
                in.size(), g_rand_bits_n);
  }
}
#endif

// ---- quantize / dequantize / repack ------------------------------------------------------

struct Plain {
  std::vector<uint8_t> codes;
  std::vector<float> scales;
  Fp8Plain p;
  Plain(const Fp8Format& f, int64_t N, int64_t K) : codes(fp8_plain_code_bytes(N, K)), scales(fp8_num_scales(f, N, K)) {
    p.fmt = f; p.N = N; p.K = K; p.codes = codes.data(); p.scales = scales.data();
  }
};
struct Aligned {
  void* raw; uint8_t* p;
  explicit Aligned(size_t n) : raw(std::malloc(n + 64)) { p = (uint8_t*)(((uintptr_t)raw + 63) & ~(uintptr_t)63); std::memset(p, 0xA5, n); }
  ~Aligned() { std::free(raw); }
};

static std::vector<float> rand_weights(std::mt19937& rng, int64_t N, int64_t K) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_real_distribution<float> ud(0.0f, 1.0f);
  std::vector<float> w(N * K);
  for (int64_t n = 0; n < N; ++n) {
    const float rs = std::exp2f((float)(int)(ud(rng) * 10) - 7);
    for (int64_t k = 0; k < K; ++k) {
      float v = nd(rng) * rs;
      if (ud(rng) < 0.003f) v *= 20;
      if (ud(rng) < 0.01f) v *= 1e-4f;  // small values: subnormal codes
      w[n * K + k] = v;
    }
    if (n % 7 == 3) for (int64_t k = 0; k < std::min<int64_t>(K, 130); ++k) w[n * K + k] = 0;
  }
  return w;
}

static void test_quantize(std::mt19937& rng) {
  for (DType t : kFmts)
    for (Fp8Scale s : {Fp8Scale::tensor, Fp8Scale::channel, Fp8Scale::block128}) {
      Fp8Format f; f.dtype = t; f.scale = s;
      for (auto [N, K] : std::vector<std::pair<int64_t, int64_t>>{{37, 300}, {130, 129}, {16, 16}, {1, 1}, {257, 260}}) {
        const std::vector<float> w = rand_weights(rng, N, K);
        Plain a(f, N, K), b(f, N, K);
        const QuantStats st = fp8_quantize(w.data(), K, a.p);
        fp8_quantize(w.data(), K, b.p);
        char tag[96];
        std::snprintf(tag, sizeof tag, "%s-%s N=%lld K=%lld", dtype_name(t), sname(s), (long long)N, (long long)K);
        CHECK(a.codes == b.codes && a.scales == b.scales, "%s: quantize not deterministic", tag);
        // scales: amax / max of the granule
        std::vector<float> amax(a.scales.size(), 0.0f);
        for (int64_t n = 0; n < N; ++n)
          for (int64_t k = 0; k < K; ++k) {
            float& m = amax[fp8_scale_index(f, K, n, k)];
            m = std::fmax(m, std::fabs(w[n * K + k]));
          }
        int bad_s = 0;
        for (size_t i = 0; i < amax.size(); ++i)
          if (a.scales[i] != (amax[i] > 0 ? amax[i] / fp8_max(t) : 1.0f)) ++bad_s;
        CHECK(bad_s == 0, "%s: %d scales differ from amax/max", tag, bad_s);
        std::vector<float> d(N * K);
        fp8_dequantize(a.p, d.data(), K);
        int bad = 0;
        double max_err = 0;
        for (int64_t n = 0; n < N; ++n)
          for (int64_t k = 0; k < K; ++k) {
            const float sc = a.scales[fp8_scale_index(f, K, n, k)];
            // nearest representable value (ties either way, and half an f32 ulp of slack
            // for the division w / scale)
            double best = 1e300;
            for (int c = 0; c < 256; ++c) {
              const float v = fp8_to_f32(t, (uint8_t)c);
              if (!std::isfinite(v)) continue;
              best = std::fmin(best, std::fabs((double)(v * sc) - w[n * K + k]));
            }
            const double err = std::fabs((double)d[n * K + k] - w[n * K + k]);
            max_err = std::fmax(max_err, err);
            if (err > best + 1e-6 * std::fabs(w[n * K + k]) + 1e-37) ++bad;
            CHECK(d[n * K + k] == fp8_to_f32(t, a.codes[n * K + k]) * sc, "%s: dequantize formula", tag);
          }
        CHECK(bad == 0, "%s: %d elements not quantized to the nearest code", tag, bad);
        CHECK(st.max_abs_err == max_err, "%s: stats max_abs_err %g vs %g", tag, st.max_abs_err, max_err);
        CHECK(st.max_err_step <= 0.5 + 1e-6 || st.clamped > 0, "%s: max_err_step %g", tag, st.max_err_step);
        // repack / unpack round trip, padding zero
        const Fp8PackedLayout L = fp8_packed_layout(f, N, K);
        Aligned pk(L.total);
        fp8_repack(a.p, pk.p);
        Fp8Packed q; q.fmt = f; q.N = N; q.K = K; q.data = pk.p;
        Plain c(f, N, K);
        fp8_unpack(q, c.p);
        CHECK(c.codes == a.codes && c.scales == a.scales, "%s: repack/unpack round trip differs", tag);
        CHECK(L.panel_bytes % 64 == 0 && L.total == (size_t)(L.panels * L.panel_bytes), "%s: layout", tag);
        int pad_bad = 0;
        for (int64_t p = 0; p < L.panels; ++p)
          for (int64_t k = 0; k < L.Kp; ++k)
            for (int cc = 0; cc < 16; ++cc) {
              const int64_t n = p * 16 + cc;
              const uint8_t want = (n < N && k < K) ? a.codes[n * K + k] : 0;
              if (pk.p[p * L.panel_bytes + fp8_code_pos(t, k, cc)] != fp8_stored_byte(t, want)) ++pad_bad;
            }
        CHECK(pad_bad == 0, "%s: %d repacked code bytes wrong", tag, pad_bad);
        if (N == 257)
          std::printf("  quantize %-8s %-8s rms_err %.3g max_err/step %.3f clamped %lld\n", dtype_name(t), sname(s),
                      st.rms_err, st.max_err_step, (long long)st.clamped);
      }
    }
  // Hand-checked layout bytes: e4m3 channel, N=2, K=3.
  {
    Fp8Format f; f.dtype = DType::fp8e4m3; f.scale = Fp8Scale::channel;
    Plain a(f, 2, 3);
    const uint8_t cs[6] = {0x01, 0x02, 0x03, 0x81, 0x82, 0x83};
    std::memcpy(a.codes.data(), cs, 6);
    a.scales = {0.5f, 2.0f};
    const Fp8PackedLayout L = fp8_packed_layout(f, 2, 3);
    Aligned pk(L.total);
    fp8_repack(a.p, pk.p);
    float s0, s1;
    std::memcpy(&s0, pk.p + 256, 4);
    std::memcpy(&s1, pk.p + 260, 4);
    // e4m3: nibble-swapped codes; (k, c) at 32*(k/2) + 16*((c>>2)&1) + 8*(k&1) + 4*(c>>3) + (c&3):
    // (0,0) -> 0, (0,1) -> 1, (1,0) -> 8, (1,1) -> 9, (2,0) -> 32, (2,1) -> 33.
    CHECK(L.Kp == 16 && L.scale_off == 256 && L.panel_bytes == 320 && pk.p[0] == 0x10 && pk.p[1] == 0x18 &&
              pk.p[8] == 0x20 && pk.p[9] == 0x28 && pk.p[32] == 0x30 && pk.p[33] == 0x38 && pk.p[2] == 0 &&
              pk.p[16] == 0 && pk.p[48] == 0 && s0 == 0.5f && s1 == 2.0f,
          "hand-checked repacked bytes");
    // position map: a permutation of each 32-byte group
    for (DType t : kFmts) {
      std::vector<int> seen(32, 0);
      for (int k = 0; k < 2; ++k)
        for (int c = 0; c < 16; ++c) ++seen[fp8_code_pos(t, k, c)];
      CHECK(std::count(seen.begin(), seen.end(), 1) == 32, "%s: fp8_code_pos is not a permutation", dtype_name(t));
      for (int b = 0; b < 256; ++b) CHECK(fp8_stored_byte(t, fp8_stored_byte(t, (uint8_t)b)) == b, "stored byte map %02x", b);
    }
  }
  // block128 layout: N=300 (3 block rows), K=260 (3 block columns): panel 8 = block row 1.
  {
    Fp8Format f; f.dtype = DType::fp8e5m2; f.scale = Fp8Scale::block128;
    Plain a(f, 300, 260);
    for (size_t i = 0; i < a.scales.size(); ++i) a.scales[i] = (float)(i + 1);
    const Fp8PackedLayout L = fp8_packed_layout(f, 300, 260);
    Aligned pk(L.total);
    fp8_repack(a.p, pk.p);
    float s[3];
    std::memcpy(s, pk.p + 8 * L.panel_bytes + L.scale_off, 12);
    CHECK(L.nkb == 3 && L.n_scales == 3 && s[0] == 4 && s[1] == 5 && s[2] == 6, "block128 panel scales");
  }
}

// ---- bad arguments ----------------------------------------------------------------------
static void test_bad_args() {
  auto expect = [](const char* what, Code want, const char* arg, const std::function<void()>& fn) {
    try { fn(); } catch (const Error& e) {
      CHECK(e.code == want && e.arg == arg, "%s: got %s arg '%s' (%s), want %s arg '%s'", what, code_name(e.code),
            e.arg.c_str(), e.what(), code_name(want), arg);
      return;
    }
    CHECK(false, "%s: no error", what);
  };
  Fp8Format f; f.dtype = DType::fp8e4m3; f.scale = Fp8Scale::channel;
  alignas(64) static uint8_t buf[1 << 16];
  static float A[4 * 96], C[4 * 64], bias[64];
  Fp8GemmArgs g; g.w.fmt = f; g.w.N = 64; g.w.K = 96; g.w.data = buf;
  g.M = 4; g.A = A; g.lda = 96; g.C = C; g.ldc = 64;
  fp8gemm_check(g, 96);
  expect("mismatched K", Code::SHAPE, "a", [&] { fp8gemm_check(g, 95); });
  { Fp8GemmArgs b = g; b.w.fmt.dtype = DType::int8; expect("int8 weights", Code::DTYPE, "w", [&] { fp8gemm_check(b, 96); }); }
  { Fp8GemmArgs b = g; b.w.fmt.scale = (Fp8Scale)7; expect("bad granularity", Code::INVALID_ARG, "w", [&] { fp8gemm_check(b, 96); }); }
  { Fp8GemmArgs b = g; b.w.data = buf + 1; expect("misaligned", Code::INVALID_ARG, "w", [&] { fp8gemm_check(b, 96); }); }
  { Fp8GemmArgs b = g; b.w.data = nullptr; expect("null w", Code::INVALID_ARG, "w", [&] { fp8gemm_check(b, 96); }); }
  { Fp8GemmArgs b = g; b.w.N = 0; expect("N=0", Code::SHAPE, "w", [&] { fp8gemm_check(b, 96); }); }
  { Fp8GemmArgs b = g; b.a_dtype = DType::int8; expect("a dtype", Code::DTYPE, "a", [&] { fp8gemm_check(b, 96); }); }
  { Fp8GemmArgs b = g; b.act = (Fp8Act)3; expect("act mode", Code::INVALID_ARG, "a", [&] { fp8gemm_check(b, 96); }); }
  { Fp8GemmArgs b = g; b.c_dtype = DType::i32; expect("out dtype", Code::DTYPE, "out", [&] { fp8gemm_check(b, 96); }); }
  { Fp8GemmArgs b = g; b.M = 0; expect("M=0", Code::SHAPE, "a", [&] { fp8gemm_check(b, 96); }); }
  { Fp8GemmArgs b = g; b.A = nullptr; expect("null a", Code::INVALID_ARG, "a", [&] { fp8gemm_check(b, 96); }); }
  { Fp8GemmArgs b = g; b.C = nullptr; expect("null out", Code::INVALID_ARG, "out", [&] { fp8gemm_check(b, 96); }); }
  { Fp8GemmArgs b = g; b.lda = 90; expect("lda < K", Code::SHAPE, "a", [&] { fp8gemm_check(b, 96); }); }
  { Fp8GemmArgs b = g; b.ldc = 10; expect("ldc < N", Code::SHAPE, "out", [&] { fp8gemm_check(b, 96); }); }
  { Fp8GemmArgs b = g; b.residual = C + 1; b.ldr = 64; expect("residual overlap", Code::INVALID_ARG, "residual", [&] { fp8gemm_check(b, 96); }); }
  { Fp8GemmArgs b = g; b.residual = C; b.ldr = 65; expect("residual alias stride", Code::INVALID_ARG, "residual", [&] { fp8gemm_check(b, 96); }); }
  { Fp8GemmArgs b = g; b.residual = A; b.ldr = 10; expect("ldr < N", Code::SHAPE, "residual", [&] { fp8gemm_check(b, 96); }); }
  { Fp8GemmArgs b = g; b.bias = C + 3; expect("bias overlaps out", Code::INVALID_ARG, "bias", [&] { fp8gemm_check(b, 96); }); }
  { Fp8GemmArgs b = g; b.bias = bias; b.residual = C; b.ldr = 64; fp8gemm_check(b, 96); ++g_pass; }
  {
    Plain p(f, 1, 32);
    std::vector<float> w(32, 1.0f);
    w[5] = std::nanf("");
    expect("NaN weight", Code::INVALID_ARG, "weights", [&] { fp8_quantize(w.data(), 32, p.p); });
    w[5] = INFINITY;
    expect("inf weight", Code::INVALID_ARG, "weights", [&] { fp8_quantize(w.data(), 32, p.p); });
    w[5] = 1.0f;
    fp8_quantize(w.data(), 32, p.p);
    p.scales[0] = INFINITY;
    Aligned pk(fp8_packed_layout(f, 1, 32).total);
    expect("inf scale", Code::INVALID_ARG, "scales", [&] { fp8_repack(p.p, pk.p); });
    Plain e(Fp8Format{DType::f16, Fp8Scale::channel}, 1, 32);
    expect("f16 format", Code::DTYPE, "weights", [&] { fp8_quantize(w.data(), 32, e.p); });
  }
}

// ---- GEMM ----------------------------------------------------------------------------------

static void store_val(void* p, DType t, int64_t i, float v) {
  if (t == DType::f32) static_cast<float*>(p)[i] = v;
  else if (t == DType::f16) static_cast<uint16_t*>(p)[i] = f32_to_f16(v);
  else static_cast<uint16_t*>(p)[i] = f32_to_bf16(v);
}
static double load_val(const void* p, DType t, int64_t i) {
  if (t == DType::f32) return static_cast<const float*>(p)[i];
  if (t == DType::f16) return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
  return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
}

using Fn = void (*)(const Fp8GemmArgs&, Parallel&);
struct IsaImpl { const char* name; Fn fn; bool on; };
struct Worst { double ratio = 0; std::string where; };

static void gemm_case(std::vector<IsaImpl>& isas, const Fp8Format& f, Fp8Act act, int64_t M, int64_t N, int64_t K,
                      DType adt, DType cdt, bool bias, int resid, uint32_t seed, std::vector<Worst>& worst,
                      Parallel& pool, bool serial_too, double* w8a8_err = nullptr, bool nan_codes = false) {
  std::mt19937 rng(seed);
  Plain pl(f, N, K);
  {
    std::vector<float> w = rand_weights(rng, N, K);
    fp8_quantize(w.data(), K, pl.p);
  }
  if (nan_codes)  // NaN / inf codes in a few rows: must not fault
    for (int64_t n = 0; n < N; n += 5) pl.codes[n * K + (n % K)] = (uint8_t)(0x7f | ((n & 1) << 7));
  const Fp8PackedLayout L = fp8_packed_layout(f, N, K);
  Aligned packed(L.total);
  fp8_repack(pl.p, packed.p);

  const int64_t lda = K + (seed % 3 == 0 ? 5 : 0), ldc = N + (seed % 2 ? 3 : 0);
  const size_t aes = dtype_bytes(adt, 1), ces = dtype_bytes(cdt, 1);
  std::vector<uint8_t> A(M * lda * aes), R(M * ldc * ces), C(M * ldc * ces);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (int64_t m = 0; m < M; ++m) {
    const float rs = (m % 5 == 4) ? 1e-3f : (m % 5 == 1 ? 30.0f : 1.0f);
    for (int64_t k = 0; k < lda; ++k) store_val(A.data(), adt, m * lda + k, (m % 11 == 7) ? 0.0f : nd(rng) * rs);
    for (int64_t n = 0; n < ldc; ++n) store_val(R.data(), cdt, m * ldc + n, nd(rng));
  }
  for (auto& c : C) c = (uint8_t)rng();
  std::vector<float> bv(N);
  for (auto& b : bv) b = nd(rng);

  Fp8GemmArgs g;
  g.w.fmt = f; g.w.N = N; g.w.K = K; g.w.data = packed.p;
  g.a_dtype = adt; g.act = act; g.M = M; g.A = A.data(); g.lda = lda;
  g.c_dtype = cdt; g.C = C.data(); g.ldc = ldc;
  g.bias = bias ? bv.data() : nullptr;
  g.residual = resid == 0 ? nullptr : (resid == 1 ? (const void*)R.data() : (const void*)C.data());
  g.ldr = ldc;
  fp8gemm_check(g, K);
  if (resid == 2) C = R;

  ref::Fp8GemmRef ref;
  ref::fp8gemm_ref(pl.p, g, ref);
  const std::vector<uint8_t> C0 = C;
  const double L_ = (double)std::min<int64_t>(K, 256) + (double)((K + 127) / 128) + 8;
  SerialParallel serial;
  for (size_t i = 0; i < isas.size(); ++i) {
    if (!isas[i].on) continue;
    for (int run = 0; run < (serial_too ? 2 : 1); ++run) {
      C = C0;
      isas[i].fn(g, run == 0 ? pool : static_cast<Parallel&>(serial));
      double wr = 0; int64_t wm = 0, wn = 0; double wg = 0, wref = 0;
      bool guard_ok = true;
      for (int64_t m = 0; m < M; ++m)
        for (int64_t n = 0; n < ldc; ++n) {
          if (n >= N) {
            if (std::memcmp(&C[(m * ldc + n) * ces], &C0[(m * ldc + n) * ces], ces)) guard_ok = false;
            continue;
          }
          const double got = load_val(C.data(), cdt, m * ldc + n);
          if (nan_codes) continue;  // only: no fault, nothing written outside
          const double ex = ref.exact[m * N + n];
          double tol = std::ldexp(ref.mag[m * N + n], -23) * L_ + std::ldexp(1.0, -90) * (double)K;
          if (cdt == DType::f16) tol += std::ldexp(std::fabs(ex), -11) + std::ldexp(1.0, -24);
          if (cdt == DType::bf16) tol += std::ldexp(std::fabs(ex), -8) + std::ldexp(1.0, -133);
          const double d = std::fabs(got - ex);
          double r = d == 0 ? 0 : d / tol;
          if (std::isnan(got) || std::isinf(got)) r = 1e30;
          if (r > wr) { wr = r; wm = m; wn = n; wg = got; wref = ex; }
        }
      char buf[256];
      std::snprintf(buf, sizeof buf, "%s-%s %s M=%lld N=%lld K=%lld A=%s C=%s bias=%d res=%d %s (m=%lld n=%lld got=%.9g ref=%.9g)",
                    dtype_name(f.dtype), sname(f.scale), act == Fp8Act::w8a8 ? "w8a8" : "w8a16", (long long)M, (long long)N,
                    (long long)K, dtype_name(adt), dtype_name(cdt), (int)bias, resid, run ? "serial" : "pool", (long long)wm,
                    (long long)wn, wg, wref);
      CHECK(wr <= 1.0, "[%s] %s err/tol = %.3g", isas[i].name, buf, wr);
      CHECK(guard_ok, "[%s] %s wrote outside N", isas[i].name, buf);
      if (wr > worst[i].ratio) { worst[i].ratio = wr; worst[i].where = buf; }
      if (cdt == DType::f32 && wr > worst[isas.size() + i].ratio) { worst[isas.size() + i].ratio = wr; worst[isas.size() + i].where = buf; }
    }
  }
  if (w8a8_err && act == Fp8Act::w8a8 && !resid && !bias)
    for (int64_t i = 0; i < M * N; ++i)
      if (ref.mag[i] > 0) *w8a8_err = std::fmax(*w8a8_err, std::fabs(ref.exact[i] - ref.unquantized[i]) / ref.mag[i]);
}

// ---- benchmark -----------------------------------------------------------------------------
using Clock = std::chrono::steady_clock;
static double now() { return std::chrono::duration<double>(Clock::now().time_since_epoch()).count(); }
static double median(std::vector<double> v) { std::sort(v.begin(), v.end()); return v[v.size() / 2]; }

__attribute__((target("avx2"))) static double read_sum(const uint8_t* p, size_t n) {
  __m256i a = _mm256_setzero_si256(), b = a, c = a, d = a;
  for (size_t i = 0; i + 128 <= n; i += 128) {
    _mm_prefetch((const char*)(p + i + 1024), _MM_HINT_T0);
    _mm_prefetch((const char*)(p + i + 1024 + 64), _MM_HINT_T0);
    a = _mm256_add_epi64(a, _mm256_load_si256((const __m256i*)(p + i)));
    b = _mm256_add_epi64(b, _mm256_load_si256((const __m256i*)(p + i + 32)));
    c = _mm256_add_epi64(c, _mm256_load_si256((const __m256i*)(p + i + 64)));
    d = _mm256_add_epi64(d, _mm256_load_si256((const __m256i*)(p + i + 96)));
  }
  a = _mm256_add_epi64(_mm256_add_epi64(a, b), _mm256_add_epi64(c, d));
  return (double)_mm256_extract_epi64(a, 0);
}
static double probe_dram(Parallel& par) {
  const size_t bytes = (size_t)1 << 30;
  uint8_t* buf = (uint8_t*)std::aligned_alloc(64, bytes);
  std::memset(buf, 1, bytes);
  std::vector<double> gbs;
  volatile double sink = 0;
  for (int it = 0; it < 7; ++it) {
    const double t0 = now();
    par.for_each(256, [&](int64_t t, int) { sink = sink + read_sum(buf + t * (bytes / 256), bytes / 256); });
    gbs.push_back(bytes / (now() - t0) / 1e9);
  }
  std::free(buf);
  return median(gbs);
}
volatile float g_fx = 1.0000001f, g_fy = 0.999999f;
template <int NA>
__attribute__((target("avx2,fma"), noinline)) static float fma_chains(int64_t n) {
  __m256 acc[NA], x = _mm256_set1_ps(g_fx), y = _mm256_set1_ps(g_fy);
  for (auto& a : acc) a = _mm256_set1_ps(g_fx);
  for (int64_t i = 0; i < n; ++i) {
#pragma GCC unroll 16
    for (int j = 0; j < NA; ++j) acc[j] = _mm256_fmadd_ps(x, acc[j], y);
  }
  __m256 s = acc[0];
  for (int j = 1; j < NA; ++j) s = _mm256_add_ps(s, acc[j]);
  return _mm256_cvtss_f32(s);
}
// f32 FMA peak: the best of 8- and 12-chain ymm FMA loops on every thread (median of 5).
static double probe_fma(Parallel& par) {
  const int64_t iters = 5'000'000;
  std::vector<double> r;
  volatile float sink = 0;
  for (int it = 0; it < 5; ++it) {
    double best = 0;
    for (int v = 0; v < 2; ++v) {
      const double t0 = now();
      par.for_each(par.threads(), [&](int64_t, int) { sink = sink + (v ? fma_chains<12>(iters) : fma_chains<8>(iters)); });
      best = std::max(best, (v ? 96.0 : 64.0) * iters * par.threads() / (now() - t0));
    }
    r.push_back(best);
  }
  return median(r);
}

static int bench(int argc, char** argv, std::vector<IsaImpl>& isas) {
  int threads = 2;
  std::string isa_sel = "best", m_sel = "1,4,8,64,512", shape_sel = "4096x4096,11008x4096", fmt_sel = "e4m3-channel,e4m3-block,e5m2-channel";
  std::string act_sel = "w8a16";
  double min_time = 1.0;
  bool hot = false;  // --hot: no rotation (weights may stay in cache): the kernel's compute limit
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&] { return i + 1 < argc ? std::string(argv[++i]) : std::string(); };
    if (a == "--threads") threads = std::atoi(next().c_str());
    else if (a == "--isa") isa_sel = next();
    else if (a == "--m") m_sel = next();
    else if (a == "--shapes") shape_sel = next();
    else if (a == "--fmt") fmt_sel = next();
    else if (a == "--act") act_sel = next();
    else if (a == "--time") min_time = std::atof(next().c_str());
    else if (a == "--hot") hot = true;
    else { std::fprintf(stderr, "usage: fp8_test --bench [--threads N] [--isa scalar|avx2|avx512] [--m 1,4,..] [--shapes NxK,..] [--fmt e4m3-channel,e5m2-block,..] [--act w8a16,w8a8] [--time s] [--hot]\n"); return 2; }
  }
  Fn fn = nullptr;
  for (auto& i : isas) if (i.on && (isa_sel == "best" || isa_sel == i.name)) fn = i.fn;  // last = best
  if (!fn) { std::fprintf(stderr, "isa %s not available\n", isa_sel.c_str()); return 2; }
  ThreadPool pool(threads);
  const double bw = probe_dram(pool), peak = probe_fma(pool);
  std::printf("threads %d; probes: DRAM read %.2f GB/s, f32 FMA peak %.2f GMAC/s\n", threads, bw, peak / 1e9);
  auto split = [](const std::string& s) { std::vector<std::string> v; size_t p = 0; while (p <= s.size()) { size_t q = s.find(',', p); if (q == std::string::npos) q = s.size(); v.push_back(s.substr(p, q - p)); p = q + 1; } return v; };
  std::printf("%-14s %-6s %6s %6s %4s %10s %8s %7s %9s %7s %6s %9s %8s\n", "format", "act", "N", "K", "M", "median_us", "GB/s",
              "of_bw", "GMAC/s", "of_pk", "copies", "min_us", "GB/s@min");
  std::mt19937 rng(7);
  for (const std::string& sh : split(shape_sel)) {
    const int64_t N = std::atoll(sh.substr(0, sh.find('x')).c_str()), K = std::atoll(sh.substr(sh.find('x') + 1).c_str());
    for (const std::string& fs : split(fmt_sel)) {
      Fp8Format f;
      f.dtype = fs.rfind("e5m2", 0) == 0 ? DType::fp8e5m2 : DType::fp8e4m3;
      f.scale = fs.find("block") != std::string::npos ? Fp8Scale::block128 : fs.find("tensor") != std::string::npos ? Fp8Scale::tensor : Fp8Scale::channel;
      const Fp8PackedLayout L = fp8_packed_layout(f, N, K);
      Plain pl(f, N, K);
      {
        std::vector<float> w((size_t)N * K);
        std::normal_distribution<float> nd(0, 0.02f);
        for (auto& v : w) v = nd(rng);
        fp8_quantize(w.data(), K, pl.p);
      }
      const int copies = hot ? 1 : (int)std::max<int64_t>(2, (int64_t)((768ull << 20) / L.total) + 1);
      uint8_t* big = (uint8_t*)std::aligned_alloc(64, L.total * copies);
      fp8_repack(pl.p, big);
      for (int c = 1; c < copies; ++c) std::memcpy(big + c * L.total, big, L.total);
      for (const std::string& as : split(act_sel))
        for (const std::string& ms : split(m_sel)) {
          const int64_t M = std::atoll(ms.c_str());
          std::vector<float> A((size_t)M * K), C((size_t)M * N);
          std::normal_distribution<float> nd(0, 1);
          for (auto& v : A) v = nd(rng);
          Fp8GemmArgs g;
          g.w.fmt = f; g.w.N = N; g.w.K = K;
          g.a_dtype = DType::f32; g.act = as == "w8a8" ? Fp8Act::w8a8 : Fp8Act::w8a16;
          g.M = M; g.A = A.data(); g.lda = K; g.c_dtype = DType::f32; g.C = C.data(); g.ldc = N;
          const int rot = M <= 16 && !hot ? copies : 1;
          std::vector<double> ts;
          const double t_start = now();
          for (int it = 0; (now() - t_start < min_time || ts.size() < 5) && ts.size() < 3000; ++it) {
            g.w.data = big + (size_t)(it % rot) * L.total;
            const double t0 = now();
            fn(g, pool);
            if (it >= 1) ts.push_back(now() - t0);
          }
          const double t = median(ts), tmin = *std::min_element(ts.begin(), ts.end());
          const double gbs = (double)L.total / t / 1e9, macs = (double)M * N * K / t;
          std::printf("%-14s %-6s %6lld %6lld %4lld %10.1f %8.2f %7.3f %9.2f %7.3f %6d %9.1f %8.2f\n", fs.c_str(), as.c_str(), (long long)N,
                      (long long)K, (long long)M, t * 1e6, gbs, gbs / bw, macs / 1e9, macs / peak, rot, tmin * 1e6,
                      (double)L.total / tmin / 1e9);
          std::fflush(stdout);
        }
      std::free(big);
    }
  }
  return 0;
}

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  std::vector<IsaImpl> isas = {
      {"scalar", &cpu::scalar::fp8gemm, true},
      {"avx2", &cpu::avx2::fp8gemm, (bool)__builtin_cpu_supports("avx2") && (bool)__builtin_cpu_supports("fma") && (bool)__builtin_cpu_supports("f16c")},
#if defined(TY_AVX512_EMULATED)
      {"avx512(emulated)", &cpu::avx512::fp8gemm, true},
#else
      {"avx512", &cpu::avx512::fp8gemm, (bool)__builtin_cpu_supports("avx512f") && (bool)__builtin_cpu_supports("avx512bw")},
#endif
  };
  if (argc > 1 && std::strcmp(argv[1], "--bench") == 0) {
#if defined(TY_AVX512_EMULATED)
    isas.pop_back();  // never benchmark the emulation
#endif
    return bench(argc, argv, isas);
  }
  if (quick) g_rand_bits_n = 1u << 21;
  for (auto& i : isas) std::printf("isa %-17s %s\n", i.name, i.on ? "tested" : "NOT AVAILABLE on this CPU (skipped)");

  std::printf("conversions:\n");
  test_conversions();
#if defined(TY_CUDA_FP8)
  test_cuda();
#else
  std::printf("  cuda_fp8.h not available: bit-exact comparison with CUDA SKIPPED\n");
#endif
  std::mt19937 rng(1234);
  std::printf("quantize / repack:\n");
  test_quantize(rng);
  const int before_bad = g_pass + g_fail;
  test_bad_args();
  std::printf("bad-argument checks: %d\n", g_pass + g_fail - before_bad);

  std::printf("fp8gemm:\n");
  ThreadPool pool(2);
  std::vector<Worst> worst(2 * isas.size());  // [0, n): any output dtype; [n, 2n): f32 output
  const DType dts[3] = {DType::f32, DType::f16, DType::bf16};
  uint32_t seed = 1;
  int cases = 0;
  double w8a8_err = 0;
  const std::vector<int64_t> Ks = quick ? std::vector<int64_t>{1, 16, 100, 129, 300, 1030}
                                        : std::vector<int64_t>{1, 7, 16, 100, 128, 129, 300, 520, 1030, 2100};
  const std::vector<int64_t> Ms = quick ? std::vector<int64_t>{1, 3, 5, 8, 9, 40, 130} : std::vector<int64_t>{1, 2, 3, 4, 5, 8, 9, 17, 40, 100, 200};
  for (DType t : kFmts)
    for (Fp8Scale s : {Fp8Scale::tensor, Fp8Scale::channel, Fp8Scale::block128})
      for (Fp8Act act : {Fp8Act::w8a16, Fp8Act::w8a8}) {
        Fp8Format f; f.dtype = t; f.scale = s;
        for (int64_t K : Ks)
          for (int64_t M : Ms) {
            const int64_t N = std::vector<int64_t>{1, 16, 45, 130, 77, 260}[(seed * 7 + M) % 6];
            if (M * N * K > (quick ? 4000000 : 20000000)) continue;
            const DType adt = dts[seed % 3], cdt = dts[(seed / 3) % 3];
            const bool bias = seed % 2 == 0;
            const int res = (int)((seed / 2) % 3);
            gemm_case(isas, f, act, M, N, K, adt, cdt, bias, res, seed, worst, pool, M <= 9 && seed % 4 == 0, &w8a8_err);
            ++seed; ++cases;
          }
      }
  // NaN / inf codes in the weights: no fault, nothing written outside C.
  for (DType t : kFmts)
    for (int64_t M : {1, 20}) {
      Fp8Format f; f.dtype = t; f.scale = Fp8Scale::channel;
      gemm_case(isas, f, Fp8Act::w8a16, M, 37, 70, DType::f32, DType::f32, false, 0, seed++, worst, pool, false, nullptr, true);
      ++cases;
    }
  std::printf("  %d shape/format cases\n", cases);
  for (size_t i = 0; i < isas.size(); ++i)
    if (isas[i].on) {
      std::printf("  worst err/tol %-17s %.3f  at %s\n", isas[i].name, worst[i].ratio, worst[i].where.c_str());
      std::printf("    (f32 output: %.3f at %s)\n", worst[isas.size() + i].ratio, worst[isas.size() + i].where.c_str());
    }
  std::printf("  (w8a8 activation quantization error, relative to sum|a*w|: worst %.3g)\n", w8a8_err);
  std::printf("%d passed, %d failed\n", g_pass, g_fail);
  return g_fail ? 1 : 0;
}
