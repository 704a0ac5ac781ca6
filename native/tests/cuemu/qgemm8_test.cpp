// Tests for the 8-bit CUDA GEMMs (native/cuda/kernels/gemm_int8.cuh, gemm_fp8.cuh), run on the CPU
// under cuemu, under the forward and the reverse schedule:
//   - the activation quantizers, bit for bit against the CPU backend's formulas (int8 per row /
//     per group with f32 or f16 scales; e4m3 per token, as codes and as f16 values);
//   - W8A8 int8 (per channel, g32 / g64 / g128, f32 / f16 scales), FP8 W8A8 (e4m3 mma on an sm_89
//     QDevice, and the dequant route on sm_80 and for e5m2) and FP8 W8A16 (e4m3 / e5m2, f16 / bf16
//     activations) against the double-precision references of native/cpu/ref (qgemm_ref's
//     `spec`, fp8gemm_ref's `exact`) on M in {1, 5, 16, 33} and N, K off the tile sizes, bias and
//     residual (aliasing C too), every output dtype, every tile;
//   - every fp8 code dequantized through the real W8A16 / mma kernels (A a permutation matrix, f32
//     out): bit-identical to fp8_dequantize;
//   - one-hot GEMMs through each real kernel and tile (a single nonzero per row of A / of W at
//     every k position of the 32-wide fragment, single nonzeros at corners and tile edges, and
//     permutation operands covering every k of the tile): exact;
//   - grouped (MoE) int8 and fp8 against qgemm_grouped_ref / per-expert fp8gemm_ref with uneven,
//     empty (null weights) and many (E = 300) experts; bad tables flagged, C untouched;
//   - broken variants (no barrier, no cp.async wait, A fragment swapped, wrong group scale): each
//     must be caught;
//   - launch refusals: shared memory, grid, fp8 mma on sm_80, e5m2 on the mma path, bad K / dtypes /
//     workspace / residual overlap, each before anything is read or written.
//
// Tolerance model (|got - ref| <= tol; NaN never passes). hulp(t) = half an ulp of the output dtype
// (relative), tiny(t) = half its smallest subnormal.
//   int8:  ref = qgemm_ref's `spec` (exact arithmetic on the same int8 codes and scales: our
//          activation codes and scales are bit-identical to the CPU's, checked separately);
//          tol = plain_tol(nb, mag) = 2^-22 (nb + 3) mag (the CPU kernels' own bound: per block the
//          kernel rounds sa*sw, the int32 -> f32 dot and the f32 sum; then the epilogue) + hulp·|ref|
//          + tiny.
//   fp8:   ref = fp8gemm_ref's `exact` (f32-dequantized weights code*scale, and for w8a8 the CPU's
//          e4m3 activation codes and sa); the kernels factor the scale out of the sum (at most
//          2^-24 of mag), round once per mma (K/16 k16 or K/32 k32 steps), twice per 128-block
//          promotion and a few times in the epilogue:
//          tol = 2^-24 mag (ceil(K/16) + 2 ceil(K/128) + 8) + hulp·|ref| + tiny.
// Build and run: native/tests/cuemu/qgemm8_run.sh
#include "check.h"
#include "../../cuda/kernels/gemm_fp8.cuh"
#include "ref/fp8gemm_ref.h"
#include "ref/qgemm_fused_ref.h"
#include "ref/qgemm_ref.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

using namespace ty;
namespace tc = ty::cuda;
using TC = tc::QTileChoice;

static const char* dn(DType t) { return dtype_name(t); }
static const char* tn(TC t) { return t == TC::decode ? "decode" : t == TC::small ? "small" : t == TC::large ? "large" : "auto"; }

// ---- memory ("device" memory is host memory under cuemu) -----------------------------------------
// A 16-byte aligned buffer (plus `shift` bytes, to make a misaligned base on purpose).
struct Mem {
  std::vector<unsigned char> raw;
  size_t off;
  explicit Mem(size_t bytes = 0, size_t shift = 0) : raw(bytes + 32 + shift, 0) {
    const uintptr_t p = reinterpret_cast<uintptr_t>(raw.data());
    off = ((16 - (p & 15)) & 15) + shift;
  }
  Mem(const Mem&) = delete;
  Mem& operator=(const Mem&) = delete;
  void* p() { return raw.data() + off; }
  template <class T>
  T* as() {
    return reinterpret_cast<T*>(p());
  }
};

// A matrix of f32 / f16 / bf16 values with a row stride.
struct Mat {
  DType t;
  int64_t rows, cols, ld;
  Mem m;
  Mat(DType t_, int64_t r, int64_t c, int64_t ld_ = -1, size_t shift = 0)
      : t(t_), rows(r), cols(c), ld(ld_ < 0 ? c : ld_), m(size_t(r * (ld_ < 0 ? c : ld_)) * es(t_) + 16, shift) {}
  static size_t es(DType t) { return t == DType::f32 ? 4 : 2; }
  void* p() { return m.p(); }
  uint32_t bits(int64_t r, int64_t c) {
    const size_t i = size_t(r * ld + c);
    if (t == DType::f32) return m.as<uint32_t>()[i];
    return m.as<uint16_t>()[i];
  }
  void set_bits(int64_t r, int64_t c, uint32_t b) {
    const size_t i = size_t(r * ld + c);
    if (t == DType::f32) m.as<uint32_t>()[i] = b;
    else m.as<uint16_t>()[i] = uint16_t(b);
  }
  double get(int64_t r, int64_t c) {
    const uint32_t b = bits(r, c);
    return t == DType::f32 ? double(bits_f32(b)) : t == DType::f16 ? double(f16_to_f32(uint16_t(b))) : double(bf16_to_f32(uint16_t(b)));
  }
  void set(int64_t r, int64_t c, double v) { set_bits(r, c, enc(t, float(v))); }
  void* as_offset(int64_t elems) { return static_cast<unsigned char*>(p()) + size_t(elems) * es(t); }
  static uint32_t enc(DType t, float f) { return t == DType::f32 ? f32_bits(f) : t == DType::f16 ? f32_to_f16(f) : f32_to_bf16(f); }
};

static std::mt19937 gRng(4321);
static double urand(double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(gRng); }
static int irand(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(gRng); }

// Activations: uniform in [-1, 1] with an outlier per row (what makes per-token scales matter).
static void fill_act(Mat& a) {
  for (int64_t r = 0; r < a.rows; ++r) {
    for (int64_t c = 0; c < a.cols; ++c) a.set(r, c, urand(-1, 1) * (1 + (r % 3)));
    a.set(r, (r * 7) % a.cols, 6.0 + r);
  }
}

static double hulp(DType t) { return t == DType::f32 ? std::ldexp(1.0, -24) : t == DType::f16 ? std::ldexp(1.0, -11) : std::ldexp(1.0, -8); }
static double tiny(DType t) { return t == DType::f16 ? std::ldexp(1.0, -25) : t == DType::bf16 ? 1e-39 : 1e-44; }

static void expect_ok(const tc::Status& st, const std::string& what) { CHECK(st.ok, "%s: %s", what.c_str(), st.message.c_str()); }

static tc::QDevice dev_sm(int sm) {
  tc::QDevice d;
  d.sm = sm;
  return d;
}

// Compares C (rows x N of the Mat) with ref under tol; also that padding columns [N, ld) kept the
// sentinel. Returns the number of bad outputs.
static int compare_out(const std::string& what, Mat& C, const std::vector<double>& ref, const std::function<double(size_t)>& tol,
                       bool report, const std::vector<uint32_t>* pad_bits = nullptr, int* nans = nullptr) {
  int bad = 0, nan = 0, pad = 0;
  const int64_t N = C.cols;
  for (int64_t r = 0; r < C.rows; ++r) {
    for (int64_t j = 0; j < N; ++j) {
      const size_t i = size_t(r * N + j);
      const double g = C.get(r, j), e = std::fabs(g - ref[i]), tl = tol(i);
      if (std::isnan(g)) ++nan;
      if (!(e <= tl)) {
        if (report && bad < 3) std::printf("    %s: [%lld][%lld] got %.9g, expected %.9g (err %.3g > tol %.3g)\n", what.c_str(), (long long)r,
                                           (long long)j, g, ref[i], e, tl);
        ++bad;
      }
    }
    if (pad_bits)
      for (int64_t j = N; j < C.ld; ++j)
        if (C.bits(r, j) != (*pad_bits)[size_t(r * C.ld + j)]) ++pad;
  }
  if (report) {
    CHECK(bad == 0, "%s: %d of %lld outputs outside tolerance (%d NaN)", what.c_str(), bad, (long long)(C.rows * N), nan);
    CHECK(pad == 0, "%s: %d padding elements of C written", what.c_str(), pad);
  }
  if (nans) *nans = nan;
  return bad;
}

// ---- int8 weights ---------------------------------------------------------------------------------
struct I8W {
  QuantFormat f;
  int64_t N, K, nb;
  Mem q, s;
  QPlain plain() {
    QPlain w;
    w.fmt = f;
    w.N = N;
    w.K = K;
    w.q = q.p();
    w.scales = s.p();
    return w;
  }
  I8W(const QuantFormat& f_, int64_t N_, int64_t K_, size_t shift = 0)
      : f(f_), N(N_), K(K_), nb(f_.group > 0 ? K_ / f_.group : 1), q(size_t(N_ * K_), shift), s(size_t(N_ * nb) * 4) {
    int8_t* c = q.as<int8_t>();
    for (int64_t i = 0; i < N * K; ++i) c[i] = int8_t(irand(-127, 127));
    c[0] = -128;  // GGUF Q8_0 may hold -128 (the CPU's quantize never writes it)
    for (int64_t i = 0; i < N * nb; ++i) set_scale(i, urand(0.002, 0.02));
  }
  void set_scale(int64_t i, double v) {
    if (f.scale_dtype == DType::f16) s.as<uint16_t>()[i] = f32_to_f16(float(v));
    else s.as<float>()[i] = float(v);
  }
};

static std::string fmt_name(const QuantFormat& f) {
  return std::string(f.group ? "g" + std::to_string(f.group) : "channel") + "/" + dn(f.scale_dtype);
}

// ---- activation quantizers: bit-exact against the CPU's formulas ----------------------------------
static void test_act_quant_int8() {
  const QuantFormat fmts[] = {{QKind::int8, 0, false, DType::f32}, {QKind::int8, 0, false, DType::f16}, {QKind::int8, 32, false, DType::f16},
                              {QKind::int8, 64, false, DType::f32}, {QKind::int8, 128, false, DType::f16}};
  for (DType at : {DType::f32, DType::f16, DType::bf16})
    for (const QuantFormat& f : fmts)
      for (int64_t rows : {1, 5, 33}) {
        const int64_t K = f.group ? 3 * f.group : 100, nb = f.group ? K / f.group : 1, ldq = tc::int8_act_ld(K);
        Mat a(at, rows, K, K + 3);
        fill_act(a);
        if (rows > 2)
          for (int64_t k = 0; k < K; ++k) a.set(2, k, 0.0);  // amax = 0: scale 0, codes 0
        Mem q(size_t(rows * ldq)), s(size_t(rows * nb) * 4);
        expect_ok(tc::quantize_act_int8(f, at, a.p(), a.ld, rows, K, q.as<int8_t>(), ldq, s.as<float>()), "quantize_act_int8");
        int bad = 0;
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t b = 0; b < nb; ++b) {
            const int64_t G = f.group ? f.group : K;
            float amax = 0;
            for (int64_t k = b * G; k < (b + 1) * G; ++k) amax = std::fmax(amax, std::fabs(float(a.get(r, k))));
            const float inv = amax > 0 ? 127.0f / amax : 0.0f;
            const float sa = f.scale_dtype == DType::f16 ? f16_to_f32(f32_to_f16(amax / 127.0f)) : amax / 127.0f;
            if (f32_bits(s.as<float>()[r * nb + b]) != f32_bits(sa)) ++bad;
            for (int64_t k = b * G; k < (b + 1) * G; ++k)
              if (q.as<int8_t>()[r * ldq + k] != int8_t(std::nearbyint(float(a.get(r, k)) * inv))) ++bad;
          }
        CHECK(bad == 0, "quantize_act_int8 %s %s rows=%lld K=%lld: %d codes/scales differ from the CPU's", dn(at), fmt_name(f).c_str(),
              (long long)rows, (long long)K, bad);
      }
}

static void test_act_quant_fp8() {
  for (DType at : {DType::f32, DType::f16, DType::bf16})
    for (int f16out = 0; f16out < 2; ++f16out)
      for (int64_t rows : {1, 5, 33})
        for (int64_t K : {37, 300}) {
          Mat a(at, rows, K);
          fill_act(a);
          a.set(0, K - 1, 1e-6);  // tiny values land on e4m3 subnormals / zero
          if (rows > 3)
            for (int64_t k = 0; k < K; ++k) a.set(3, k, 0.0);
          const int64_t ldq = tc::fp8_act_ld(K, f16out);
          Mem q(size_t(rows * ldq) * 2), s(size_t(rows) * 4);
          expect_ok(tc::quantize_act_fp8(at, a.p(), K, rows, K, f16out, q.p(), ldq, s.as<float>()), "quantize_act_fp8");
          int bad = 0;
          for (int64_t r = 0; r < rows; ++r) {
            float amax = 0;
            for (int64_t k = 0; k < K; ++k) amax = std::fmax(amax, std::fabs(float(a.get(r, k))));
            const float inv = amax > 0 ? 448.0f / amax : 0.0f;
            if (f32_bits(s.as<float>()[r]) != f32_bits(amax / 448.0f)) ++bad;
            for (int64_t k = 0; k < K; ++k) {
              const uint8_t c = f32_to_fp8e4m3(float(a.get(r, k)) * inv);
              if (f16out ? q.as<uint16_t>()[r * ldq + k] != f32_to_f16(fp8e4m3_to_f32(c)) : q.as<uint8_t>()[r * ldq + k] != c) ++bad;
            }
          }
          CHECK(bad == 0, "quantize_act_fp8 %s f16out=%d rows=%lld K=%lld: %d codes/scales differ from the CPU's", dn(at), f16out,
                (long long)rows, (long long)K, bad);
        }
}

// ---- int8 GEMM against qgemm_ref --------------------------------------------------------------------
struct I8Case {
  QuantFormat f;
  int64_t M, N, K;
  DType at, ct;
  bool bias;
  TC tile = TC::automatic;
  int residual = 0;  // 0 none, 1 separate buffer, 2 aliasing C
  int64_t padC = 0;
  size_t shiftW = 0;  // misaligned weight base (byte loads)
};

static int run_i8(const I8Case& c, bool report = true, const std::function<tc::Status(const tc::QGemmPlainArgs&)>& run = nullptr,
                  int* nans = nullptr) {
  I8W w(c.f, c.N, c.K, c.shiftW);
  Mat a(c.at, c.M, c.K, c.K + 5);
  fill_act(a);
  Mat C(c.ct, c.M, c.N, c.N + c.padC), R(c.ct, c.M, c.N, c.N + c.padC);
  for (int64_t r = 0; r < c.M; ++r)
    for (int64_t j = 0; j < C.ld; ++j) {
      C.set_bits(r, j, c.ct == DType::f32 ? 0x7fc00000u : 0x7e00u);  // NaN: must be overwritten
      if (j >= c.N) C.set(r, j, 1234.0);
      R.set(r, j, urand(-2, 2));
      if (c.residual == 2) C.set(r, j, j < c.N ? R.get(r, j) : 1234.0);
    }
  std::vector<uint32_t> pad(size_t(c.M * C.ld));
  for (int64_t r = 0; r < c.M; ++r)
    for (int64_t j = 0; j < C.ld; ++j) pad[size_t(r * C.ld + j)] = C.bits(r, j);
  std::vector<float> bias(c.N);
  for (auto& v : bias) v = float(urand(-1, 1));
  Mem ws(tc::int8_act_bytes(c.f, c.M, c.K));
  tc::QGemmPlainArgs g;
  g.w = w.plain();
  g.a_dtype = c.at;
  g.M = c.M;
  g.A = a.p();
  g.lda = a.ld;
  g.c_dtype = c.ct;
  g.C = C.p();
  g.ldc = C.ld;
  g.bias = c.bias ? bias.data() : nullptr;
  g.residual = c.residual == 1 ? R.p() : c.residual == 2 ? C.p() : nullptr;
  g.ldr = C.ld;
  g.workspace = ws.p();
  g.workspace_bytes = tc::int8_act_bytes(c.f, c.M, c.K);
  // Reference first (the residual may alias C).
  QGemmArgs rg;
  rg.a_dtype = c.at;
  rg.M = c.M;
  rg.A = a.p();
  rg.lda = a.ld;
  rg.c_dtype = c.ct;
  rg.bias = g.bias;
  rg.residual = c.residual == 1 ? R.p() : c.residual == 2 ? C.p() : nullptr;
  rg.ldr = C.ld;
  ref::QGemmRef ref;
  ref::qgemm_ref(w.plain(), rg, ref);
  const tc::Status st = run ? run(g) : tc::qgemm_int8(g, nullptr, {}, c.tile);
  char what[200];
  std::snprintf(what, sizeof what, "int8 %s %s->%s %lldx%lldx%lld tile=%s bias=%d residual=%d padC=%lld shiftW=%zu", fmt_name(c.f).c_str(),
                dn(c.at), dn(c.ct), (long long)c.M, (long long)c.N, (long long)c.K, tn(c.tile), c.bias, c.residual, (long long)c.padC,
                c.shiftW);
  if (report) expect_ok(st, what);
  if (!st.ok) return -1;
  const int64_t nb = w.nb;
  return compare_out(
      what, C, ref.spec,
      [&](size_t i) { return ref::plain_tol(nb, ref.mag[i]) + 1.01 * hulp(c.ct) * std::fabs(ref.spec[i]) + tiny(c.ct); }, report,
      c.residual == 2 ? nullptr : &pad, nans);
}

static void test_int8_gemm() {
  const QuantFormat fmts[] = {{QKind::int8, 0, false, DType::f32}, {QKind::int8, 0, false, DType::f16}, {QKind::int8, 32, false, DType::f16},
                              {QKind::int8, 64, false, DType::f32}, {QKind::int8, 128, false, DType::f16}};
  const DType acts[] = {DType::f32, DType::f16, DType::bf16};
  int v = 0;
  for (const QuantFormat& f : fmts) {
    // K off the 64/256 tiles; per channel also K % 16 != 0 (byte loads of W).
    const int64_t Ks[2] = {f.group ? 3 * std::max<int64_t>(f.group, 32) : 100, f.group ? 5 * f.group : 96};
    for (int64_t M : {1, 5, 16, 33})
      for (int s = 0; s < 2; ++s, ++v) {
        const int64_t N = s ? 72 : 40;
        run_i8({f, M, N, Ks[s], acts[v % 3], acts[(v / 3) % 3], (v % 2) == 0});
      }
    // Every tile, forced; residual (separate and aliasing C); padded C; misaligned weights.
    for (TC t : {TC::decode, TC::small, TC::large}) run_i8({f, 33, 40, Ks[0], DType::f16, DType::f32, true, t});
    run_i8({f, 5, 40, Ks[1], DType::bf16, DType::bf16, true, TC::automatic, 1, 3});
    run_i8({f, 16, 72, Ks[0], DType::f32, DType::f16, false, TC::small, 2});
    run_i8({f, 7, 40, Ks[1], DType::f16, DType::f32, true, TC::automatic, 0, 0, 1});
  }
  // Several blocks in both directions (large tile), the largest group's promotion over K tiles.
  run_i8({fmts[2], 130, 136, 256, DType::f16, DType::f32, true, TC::large});
  run_i8({fmts[0], 130, 136, 200, DType::bf16, DType::f16, false, TC::automatic});
  run_i8({fmts[4], 70, 136, 512, DType::f32, DType::f32, true, TC::automatic});
}

// ---- fp8 GEMM against fp8gemm_ref -------------------------------------------------------------------
struct F8W {
  Fp8Format f;
  int64_t N, K;
  Mem codes, scales;
  Fp8Plain plain() {
    Fp8Plain w;
    w.fmt = f;
    w.N = N;
    w.K = K;
    w.codes = codes.as<uint8_t>();
    w.scales = scales.as<float>();
    return w;
  }
  // Random weights quantized by the CPU's fp8_quantize (rows of different magnitudes).
  F8W(const Fp8Format& f_, int64_t N_, int64_t K_) : f(f_), N(N_), K(K_), codes(size_t(N_ * K_)), scales(size_t(fp8_plain_scale_bytes(f_, N_, K_))) {
    std::vector<float> w(size_t(N * K));
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) w[size_t(n * K + k)] = float(urand(-1, 1) * std::ldexp(1.0, int(n % 5) - 2) * (k % 128 < 64 ? 1 : 3));
    fp8_quantize(w.data(), K, plain());
  }
};

static const char* scale_name(Fp8Scale s) { return s == Fp8Scale::tensor ? "tensor" : s == Fp8Scale::channel ? "channel" : "block128"; }

struct F8Case {
  Fp8Format f;
  int64_t M, N, K;
  Fp8Act act;
  DType at, ct;
  bool bias;
  int sm = 89;
  TC tile = TC::automatic;
  tc::Fp8Path path = tc::Fp8Path::automatic;
  int residual = 0;
};

static double fp8_tol(int64_t K, double mag) {
  return std::ldexp(mag, -24) * double((K + 15) / 16 + 2 * ((K + 127) / 128) + 8);
}

static int run_f8(const F8Case& c, bool report = true, const std::function<tc::Status(const tc::Fp8GemmPlainArgs&)>& run = nullptr,
                  int* nans = nullptr) {
  F8W w(c.f, c.N, c.K);
  Mat a(c.at, c.M, c.K, c.K + 1);
  fill_act(a);
  Mat C(c.ct, c.M, c.N, c.N + 2), R(c.ct, c.M, c.N, c.N + 2);
  for (int64_t r = 0; r < c.M; ++r)
    for (int64_t j = 0; j < C.ld; ++j) {
      C.set_bits(r, j, c.ct == DType::f32 ? 0x7fc00000u : 0x7e00u);
      if (j >= c.N) C.set(r, j, 1234.0);
      R.set(r, j, urand(-2, 2));
      if (c.residual == 2) C.set(r, j, j < c.N ? R.get(r, j) : 1234.0);
    }
  std::vector<uint32_t> pad(size_t(c.M * C.ld));
  for (int64_t r = 0; r < c.M; ++r)
    for (int64_t j = 0; j < C.ld; ++j) pad[size_t(r * C.ld + j)] = C.bits(r, j);
  std::vector<float> bias(c.N);
  for (auto& v : bias) v = float(urand(-1, 1));
  const size_t wsb = tc::fp8gemm_gpu_workspace_bytes(c.act, c.M, c.K);
  Mem ws(wsb);
  tc::Fp8GemmPlainArgs g;
  g.w = w.plain();
  g.a_dtype = c.at;
  g.act = c.act;
  g.M = c.M;
  g.A = a.p();
  g.lda = a.ld;
  g.c_dtype = c.ct;
  g.C = C.p();
  g.ldc = C.ld;
  g.bias = c.bias ? bias.data() : nullptr;
  g.residual = c.residual == 1 ? R.p() : c.residual == 2 ? C.p() : nullptr;
  g.ldr = C.ld;
  g.workspace = ws.p();
  g.workspace_bytes = wsb;
  Fp8GemmArgs rg;
  rg.a_dtype = c.at;
  rg.act = c.act;
  rg.M = c.M;
  rg.A = a.p();
  rg.lda = a.ld;
  rg.c_dtype = c.ct;
  rg.bias = g.bias;
  rg.residual = g.residual;
  rg.ldr = C.ld;
  ref::Fp8GemmRef ref;
  ref::fp8gemm_ref(w.plain(), rg, ref);
  const tc::Status st = run ? run(g) : tc::fp8gemm(g, nullptr, dev_sm(c.sm), c.tile, c.path);
  char what[200];
  std::snprintf(what, sizeof what, "fp8 %s/%s %s %s->%s %lldx%lldx%lld sm_%d tile=%s bias=%d residual=%d", dn(c.f.dtype), scale_name(c.f.scale),
                c.act == Fp8Act::w8a8 ? "w8a8" : "w8a16", dn(c.at), dn(c.ct), (long long)c.M, (long long)c.N, (long long)c.K, c.sm, tn(c.tile),
                c.bias, c.residual);
  if (report) expect_ok(st, what);
  if (!st.ok) return -1;
  return compare_out(
      what, C, ref.exact, [&](size_t i) { return fp8_tol(c.K, ref.mag[i]) + 1.01 * hulp(c.ct) * std::fabs(ref.exact[i]) + tiny(c.ct); },
      report, c.residual == 2 ? nullptr : &pad, nans);
}

static void test_fp8_gemm() {
  int v = 0;
  const DType outs[] = {DType::f32, DType::f16, DType::bf16};
  for (DType wt : {DType::fp8e4m3, DType::fp8e5m2})
    for (Fp8Scale sc : {Fp8Scale::tensor, Fp8Scale::channel, Fp8Scale::block128}) {
      const Fp8Format f{wt, sc};
      for (int64_t M : {1, 5, 16, 33}) {
        const int64_t N = M % 2 ? 40 : 72, K = M % 2 ? 100 : 200;  // K past one 128-block, not a multiple of 16
        // w8a16 with f16 and bf16 activations; w8a8 on sm_89 (mma for e4m3) and sm_80 (dequant).
        run_f8({f, M, N, K, Fp8Act::w8a16, DType::f16, outs[v++ % 3], (v % 2) == 0});
        run_f8({f, M, N, K, Fp8Act::w8a16, DType::bf16, outs[v++ % 3], (v % 2) == 0});
        run_f8({f, M, N, K, Fp8Act::w8a8, M == 16 ? DType::f32 : DType::bf16, outs[v++ % 3], (v % 2) == 0, 89});
        run_f8({f, M, N, K, Fp8Act::w8a8, DType::f16, outs[v++ % 3], (v % 2) == 0, 80});
      }
    }
  // Every tile of each kernel; two 128-row blocks of block scales and a partial third; residuals.
  for (TC t : {TC::decode, TC::small, TC::large}) {
    run_f8({{DType::fp8e4m3, Fp8Scale::block128}, 33, 136, 300, Fp8Act::w8a8, DType::f16, DType::f32, true, 89, t});
    run_f8({{DType::fp8e4m3, Fp8Scale::block128}, 33, 136, 300, Fp8Act::w8a16, DType::bf16, DType::f32, true, 89, t});
    run_f8({{DType::fp8e5m2, Fp8Scale::channel}, 33, 136, 272, Fp8Act::w8a16, DType::f16, DType::f16, false, 80, t});
  }
  run_f8({{DType::fp8e4m3, Fp8Scale::channel}, 130, 264, 256, Fp8Act::w8a8, DType::f32, DType::bf16, true, 90});
  run_f8({{DType::fp8e4m3, Fp8Scale::tensor}, 9, 40, 64, Fp8Act::w8a8, DType::f16, DType::f32, true, 89, TC::automatic,
          tc::Fp8Path::automatic, 1});
  run_f8({{DType::fp8e5m2, Fp8Scale::block128}, 9, 40, 160, Fp8Act::w8a16, DType::f16, DType::f16, false, 80, TC::automatic,
          tc::Fp8Path::automatic, 2});
  run_f8({{DType::fp8e4m3, Fp8Scale::channel}, 17, 40, 96, Fp8Act::w8a8, DType::f16, DType::f32, true, 89, TC::automatic,
          tc::Fp8Path::dequant});
}

// ---- every fp8 code dequantized through the real kernels (bit-exact to fp8_dequantize) -------------
// A = a permutation matrix (K x K, f32 out): C[m][n] = W[n][pi(m)] = fp8_to_f32(code) * scale, one f32
// multiplication, exactly what fp8_dequantize computes.
static void test_fp8_dequant_exact() {
  const int64_t K = 64, N = 8;  // 512 weights: every code twice
  struct Run {
    DType wt, at;
    bool mma;
    TC tile;
  };
  const Run runs[] = {{DType::fp8e4m3, DType::f16, false, TC::small},  {DType::fp8e4m3, DType::bf16, false, TC::decode},
                      {DType::fp8e5m2, DType::f16, false, TC::large},  {DType::fp8e5m2, DType::bf16, false, TC::small},
                      {DType::fp8e4m3, DType::fp8e4m3, true, TC::small}, {DType::fp8e4m3, DType::fp8e4m3, true, TC::decode}};
  std::vector<int> pi(K);
  for (int64_t k = 0; k < K; ++k) pi[k] = int((k * 37 + 11) % K);
  for (const Run& r : runs)
    for (Fp8Scale sc : {Fp8Scale::tensor, Fp8Scale::channel}) {
      const Fp8Format f{r.wt, sc};
      Mem codes(size_t(N * K)), scales(size_t(N) * 4);
      for (int64_t i = 0; i < N * K; ++i) {
        uint8_t c = uint8_t((i * 5 + 3) % 256);  // 5 is odd: every byte value twice over 512
        if (fp8_is_nan(r.wt, c) || fp8_is_inf(r.wt, c)) c = uint8_t(c ^ 0x08);  // a finite neighbour
        codes.as<uint8_t>()[i] = c;
      }
      for (int64_t n = 0; n < N; ++n) scales.as<float>()[n] = sc == Fp8Scale::tensor ? 0.37109375f * 3.1f : float(urand(0.01, 3));
      Fp8Plain w;
      w.fmt = f;
      w.N = N;
      w.K = K;
      w.codes = codes.as<uint8_t>();
      w.scales = scales.as<float>();
      std::vector<float> wd(size_t(N * K));
      fp8_dequantize(w, wd.data(), K);
      Mat C(DType::f32, K, N);
      Mem A(size_t(K * K) * 2), sa(size_t(K) * 4);
      for (int64_t m = 0; m < K; ++m) {
        sa.as<float>()[m] = 1.0f;
        for (int64_t k = 0; k < K; ++k) {
          const bool one = k == pi[m];
          if (r.mma) A.as<uint8_t>()[m * K + k] = one ? 0x38 : 0;  // e4m3 1.0
          else A.as<uint16_t>()[m * K + k] = uint16_t(Mat::enc(r.at, one ? 1.0f : 0.0f));
        }
      }
      tc::Fp8KernelArgs g;
      g.w = w;
      g.M = K;
      g.a_dtype = r.mma ? DType::fp8e4m3 : r.at;
      g.A = A.p();
      g.lda = K;
      g.sa = r.mma ? sa.as<float>() : nullptr;
      g.c_dtype = DType::f32;
      g.C = C.p();
      g.ldc = N;
      const tc::Status st = r.mma ? tc::fp8gemm_w8a8_mma(g, nullptr, dev_sm(89), r.tile) : tc::fp8gemm_w8a16(g, nullptr, {}, r.tile);
      expect_ok(st, "fp8 dequant exact");
      int bad = 0;
      for (int64_t m = 0; m < K; ++m)
        for (int64_t n = 0; n < N; ++n)
          // Bit for bit, except that a sum starting from +0 cannot return -0 (code 0x80).
          if (C.bits(m, n) != f32_bits(wd[size_t(n * K + pi[m])]) && !(wd[size_t(n * K + pi[m])] == 0.0f && C.get(m, n) == 0.0)) {
            if (bad++ < 3)
              std::printf("    code 0x%02x: got %.9g, fp8_dequantize %.9g\n", codes.as<uint8_t>()[n * K + pi[m]], C.get(m, n),
                          double(wd[size_t(n * K + pi[m])]));
          }
      CHECK(bad == 0, "fp8 %s/%s through %s (A %s, tile %s): %d of %lld dequantized weights differ from fp8_dequantize", dn(r.wt),
            scale_name(sc), r.mma ? "mma" : "w8a16", dn(g.a_dtype), tn(r.tile), bad, (long long)(N * K));
    }
}

// ---- one-hot GEMMs through each real kernel ------------------------------------------------------------
// A kernel under test: runs C[M][N] = A[M][K] · W[N][K]ᵀ for values exactly representable in its
// operand types (f32 out, unit scales) and returns C.
struct OneHotKernel {
  const char* name;
  std::function<double(int64_t, int64_t)> a_dense, w_dense;  // distinct representable values
  double a_one, w_one;
  std::function<std::vector<double>(int64_t M, int64_t N, int64_t K, const std::vector<double>& A, const std::vector<double>& W)> run;
};

static double iv(int64_t i, int64_t k) { return double((i * 131 + k * 17) % 251) - 125; }  // int8 / f16 / bf16-exact
static double e4v(int64_t i, int64_t k) {
  const uint8_t c = uint8_t(1 + (i * 131 + k * 17) % 118) | uint8_t(((i + k) & 1) << 7);
  return fp8e4m3_to_f32(c);
}
static double e5v(int64_t i, int64_t k) {
  const uint8_t c = uint8_t(1 + (i * 131 + k * 17) % 122) | uint8_t(((i + k) & 1) << 7);
  return fp8e5m2_to_f32(c);
}

static OneHotKernel int8_kernel(TC tile) {
  OneHotKernel h{"int8", iv, iv, 1.0, 1.0, nullptr};
  h.run = [tile](int64_t M, int64_t N, int64_t K, const std::vector<double>& A, const std::vector<double>& W) {
    const int64_t ldq = tc::int8_act_ld(K);
    Mem qa(size_t(M * ldq)), sa(size_t(M) * 4), q(size_t(N * K)), s(size_t(N) * 4);
    for (int64_t m = 0; m < M; ++m) {
      sa.as<float>()[m] = 1.0f;
      for (int64_t k = 0; k < K; ++k) qa.as<int8_t>()[m * ldq + k] = int8_t(A[m * K + k]);
    }
    for (int64_t i = 0; i < N * K; ++i) q.as<int8_t>()[i] = int8_t(W[i]);
    for (int64_t n = 0; n < N; ++n) s.as<float>()[n] = 1.0f;
    Mat C(DType::f32, M, N);
    tc::Int8GemmArgs g;
    g.w.fmt = {QKind::int8, 0, false, DType::f32};
    g.w.N = N;
    g.w.K = K;
    g.w.q = q.p();
    g.w.scales = s.p();
    g.M = M;
    g.qa = qa.as<int8_t>();
    g.ldq = ldq;
    g.sa = sa.as<float>();
    g.c_dtype = DType::f32;
    g.C = C.p();
    g.ldc = N;
    expect_ok(tc::gemm_int8(g, nullptr, {}, tile), "one-hot int8");
    std::vector<double> out(size_t(M * N));
    for (int64_t i = 0; i < M * N; ++i) out[i] = C.get(i / N, i % N);
    return out;
  };
  return h;
}

// fp8: mma (A e4m3 codes) or W8A16 (A of dtype at), weights of dtype wt, channel scales 1.
static OneHotKernel fp8_kernel(bool mma, DType at, DType wt, TC tile) {
  OneHotKernel h{mma ? "fp8 mma" : "fp8 w8a16", mma ? std::function<double(int64_t, int64_t)>(e4v) : iv,
                 wt == DType::fp8e5m2 ? e5v : e4v, 1.0, 1.0, nullptr};
  h.run = [=](int64_t M, int64_t N, int64_t K, const std::vector<double>& A, const std::vector<double>& W) {
    Mem a(size_t(M * K) * 2), sa(size_t(M) * 4), codes(size_t(N * K)), sc(size_t(N) * 4);
    for (int64_t m = 0; m < M; ++m) {
      sa.as<float>()[m] = 1.0f;
      for (int64_t k = 0; k < K; ++k) {
        if (mma) a.as<uint8_t>()[m * K + k] = f32_to_fp8e4m3(float(A[m * K + k]));
        else a.as<uint16_t>()[m * K + k] = uint16_t(Mat::enc(at, float(A[m * K + k])));
      }
    }
    for (int64_t i = 0; i < N * K; ++i) codes.as<uint8_t>()[i] = f32_to_fp8(wt, float(W[i]));
    for (int64_t n = 0; n < N; ++n) sc.as<float>()[n] = 1.0f;
    Mat C(DType::f32, M, N);
    tc::Fp8KernelArgs g;
    g.w.fmt = {wt, Fp8Scale::channel};
    g.w.N = N;
    g.w.K = K;
    g.w.codes = codes.as<uint8_t>();
    g.w.scales = sc.as<float>();
    g.M = M;
    g.a_dtype = mma ? DType::fp8e4m3 : at;
    g.A = a.p();
    g.lda = K;
    g.sa = mma ? sa.as<float>() : nullptr;
    g.c_dtype = DType::f32;
    g.C = C.p();
    g.ldc = N;
    expect_ok(mma ? tc::fp8gemm_w8a8_mma(g, nullptr, dev_sm(89), tile) : tc::fp8gemm_w8a16(g, nullptr, {}, tile), "one-hot fp8");
    std::vector<double> out(size_t(M * N));
    for (int64_t i = 0; i < M * N; ++i) out[i] = C.get(i / N, i % N);
    return out;
  };
  return h;
}

// Rows of W one-hot at k = (5n + p) % K and rows of A one-hot at k = (3m + p) % K for p < P (every
// k position of the 32-wide fragment when P >= 32), single nonzeros at corners and tile edges,
// and permutation operands (every k of every tile).
static void onehot(const OneHotKernel& h, TC tile, int64_t M, int64_t N, int64_t K, int64_t P) {
  int launches = 0, bad = 0;
  auto check = [&](const std::vector<double>& A, const std::vector<double>& W, const char* what) {
    const std::vector<double> C = h.run(M, N, K, A, W);
    ++launches;
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) {
        double e = 0;
        for (int64_t k = 0; k < K; ++k) e += A[m * K + k] * W[n * K + k];
        if (!(C[m * N + n] == e) && bad++ < 3)
          std::printf("    one-hot %s %s tile=%s: C[%lld][%lld] = %g, expected %g\n", what, h.name, tn(tile), (long long)m, (long long)n,
                      C[m * N + n], e);
      }
  };
  std::vector<double> A(size_t(M * K)), W(size_t(N * K));
  for (int64_t i = 0; i < M * K; ++i) A[i] = h.a_dense(i / K, i % K);
  for (int64_t p = 0; p < P; ++p) {
    for (int64_t i = 0; i < N * K; ++i) W[i] = (i % K) == (5 * (i / K) + p) % K ? h.w_one : 0.0;
    check(A, W, "W rows");
  }
  for (int64_t i = 0; i < N * K; ++i) W[i] = h.w_dense(i / K, i % K);
  for (int64_t p = 0; p < P; ++p) {
    for (int64_t i = 0; i < M * K; ++i) A[i] = (i % K) == (3 * (i / K) + p) % K ? h.a_one : 0.0;
    check(A, W, "A rows");
  }
  // Permutations: W row n one-hot at (n * 7) % K and A row m at (m * 11 + 5) % K; with N, M >= K /
  // several passes every k of the K range is hit.
  for (int64_t off = 0; off < K; off += std::min(M, N)) {
    for (int64_t i = 0; i < M * K; ++i) A[i] = h.a_dense(i / K, i % K);
    for (int64_t i = 0; i < N * K; ++i) W[i] = (i % K) == (i / K + off) % K ? h.w_one : 0.0;
    check(A, W, "W permutation");
    for (int64_t i = 0; i < N * K; ++i) W[i] = h.w_dense(i / K, i % K);
    for (int64_t i = 0; i < M * K; ++i) A[i] = (i % K) == (i / K + off) % K ? h.a_one : 0.0;
    check(A, W, "A permutation");
  }
  const int64_t spots[][2] = {{0, 0}, {M - 1, K - 1}, {M - 1, 0}, {0, K - 1}, {M / 2, K / 2}, {M > 16 ? 16 : 0, K > 33 ? 33 : 1}};
  for (auto& s : spots) {
    for (int64_t i = 0; i < M * K; ++i) A[i] = i == s[0] * K + s[1] ? h.a_one : 0.0;
    for (int64_t i = 0; i < N * K; ++i) W[i] = h.w_dense(i / K, i % K);
    check(A, W, "single A");
    const int64_t sn = (s[0] * 7) % N;
    for (int64_t i = 0; i < N * K; ++i) W[i] = i == sn * K + s[1] ? h.w_one : 0.0;
    for (int64_t i = 0; i < M * K; ++i) A[i] = h.a_dense(i / K, i % K);
    check(A, W, "single W");
  }
  CHECK(bad == 0, "one-hot %s tile=%s %lldx%lldx%lld: %d wrong outputs over %d launches", h.name, tn(tile), (long long)M, (long long)N,
        (long long)K, bad, launches);
}

// ---- grouped (MoE) ----------------------------------------------------------------------------------------
struct Routing {
  int64_t E, T, R;
  std::vector<int32_t> offsets, rows;
};
// counts[e] rows for expert e (0 = empty expert), tokens drawn from [0, T) (top-k: repeats).
static Routing routing(const std::vector<int>& counts, int64_t T) {
  Routing r;
  r.E = int64_t(counts.size());
  r.T = T;
  r.offsets.push_back(0);
  for (int c : counts) {
    for (int i = 0; i < c; ++i) r.rows.push_back(int32_t(irand(0, int(T) - 1)));
    r.offsets.push_back(int32_t(r.rows.size()));
  }
  r.R = int64_t(r.rows.size());
  return r;
}

static void test_grouped_int8() {
  const std::vector<std::vector<int>> shapes = {{3, 0, 17, 1, 19}, {0, 0, 40, 0}, {1, 1, 1, 1, 1, 1, 1, 1}};
  const QuantFormat fmts[] = {{QKind::int8, 32, false, DType::f16}, {QKind::int8, 0, false, DType::f32}};
  int v = 0;
  for (const QuantFormat& f : fmts)
    for (const auto& counts : shapes)
      for (TC tile : {TC::automatic, TC::decode, TC::large}) {
        if (tile == TC::large && &counts != &shapes[0]) continue;
        const Routing rt = routing(counts, 9);
        const int64_t N = 40, K = f.group ? 96 : 100;
        const DType at = v % 2 ? DType::bf16 : DType::f32, ct = v % 3 == 0 ? DType::f16 : DType::f32;
        ++v;
        std::vector<std::unique_ptr<I8W>> ws;
        std::vector<tc::QExpertW> ew(size_t(rt.E));
        std::vector<QPlain> plains(size_t(rt.E));
        std::vector<const QPlain*> pw(size_t(rt.E));
        for (int64_t e = 0; e < rt.E; ++e) {
          ws.emplace_back(new I8W(f, N, K));
          plains[e] = ws.back()->plain();
          pw[e] = &plains[e];
          const bool empty = rt.offsets[e + 1] == rt.offsets[e];
          ew[e] = {empty ? nullptr : ws.back()->q.p(), empty ? nullptr : ws.back()->s.p()};  // dropped experts: null
        }
        Mat a(at, rt.T, K);
        fill_act(a);
        std::vector<float> bias(size_t(rt.E * (N + 3)));
        for (auto& b : bias) b = float(urand(-1, 1));
        Mat C(ct, rt.R, N);
        const size_t wsb = tc::qgemm_grouped_int8_workspace(f, rt.T, rt.R, K, rt.E);
        Mem wsm(wsb);
        unsigned long long err = tc::kQGroupNoError;
        tc::QGroupedPlainArgs g;
        g.fmt = f;
        g.N = N;
        g.K = K;
        g.E = rt.E;
        g.w = ew.data();
        g.a_dtype = at;
        g.T = rt.T;
        g.A = a.p();
        g.lda = K;
        g.R = rt.R;
        g.rows = rt.rows.data();
        g.offsets = rt.offsets.data();
        g.c_dtype = ct;
        g.C = C.p();
        g.ldc = N;
        g.bias = bias.data();
        g.ldb = N + 3;
        g.workspace = wsm.p();
        g.workspace_bytes = wsb;
        g.err = &err;
        expect_ok(tc::qgemm_grouped_int8(g, nullptr, {}, tile), "qgemm_grouped_int8");
        CHECK(err == tc::kQGroupNoError, "grouped int8: error slot set on a valid table");
        QGroupedArgs ra;
        ra.fmt = f;
        ra.N = N;
        ra.K = K;
        ra.E = rt.E;
        ra.a_dtype = at;
        ra.T = rt.T;
        ra.A = a.p();
        ra.lda = K;
        ra.R = rt.R;
        ra.rows = rt.rows.data();
        ra.offsets = rt.offsets.data();
        ra.c_dtype = ct;
        ra.bias = bias.data();
        ra.ldb = N + 3;
        ref::QFusedRef ref;
        ref::qgemm_grouped_ref(pw, pw, ra, ref);
        char what[160];
        std::snprintf(what, sizeof what, "grouped int8 %s E=%lld R=%lld %s->%s tile=%s", fmt_name(f).c_str(), (long long)rt.E,
                      (long long)rt.R, dn(at), dn(ct), tn(tile));
        compare_out(what, C, ref.spec, [&](size_t i) { return ref.tol_spec[i] + 1.01 * hulp(ct) * std::fabs(ref.spec[i]) + tiny(ct); },
                    true);
      }
}

// fp8 grouped; the reference is fp8gemm_ref per expert on its gathered rows.
static void test_grouped_fp8() {
  struct Case {
    std::vector<int> counts;
    Fp8Format f;
    Fp8Act act;
    DType at;
    int sm;
    TC tile;
  };
  std::vector<int> many(300, 0);  // E = 300 (> the planner's 256 threads), most experts dropped
  many[0] = 2;
  many[7] = 5;
  many[255] = 1;
  many[256] = 3;
  many[299] = 4;
  const Case cases[] = {
      {{3, 0, 17, 1, 19}, {DType::fp8e4m3, Fp8Scale::block128}, Fp8Act::w8a8, DType::f16, 89, TC::automatic},
      {{3, 0, 17, 1, 19}, {DType::fp8e4m3, Fp8Scale::channel}, Fp8Act::w8a8, DType::f32, 80, TC::decode},
      {{3, 0, 17, 1, 19}, {DType::fp8e5m2, Fp8Scale::tensor}, Fp8Act::w8a16, DType::bf16, 80, TC::large},
      {{0, 40, 0}, {DType::fp8e4m3, Fp8Scale::channel}, Fp8Act::w8a16, DType::f16, 89, TC::small},
      {{0, 40, 0}, {DType::fp8e4m3, Fp8Scale::block128}, Fp8Act::w8a8, DType::bf16, 89, TC::large},
      {many, {DType::fp8e4m3, Fp8Scale::channel}, Fp8Act::w8a8, DType::f32, 89, TC::automatic},
  };
  for (const Case& c : cases) {
    const Routing rt = routing(c.counts, 11);
    const int64_t N = 136, K = 200;
    std::vector<std::unique_ptr<F8W>> ws(size_t(rt.E));
    std::vector<tc::QExpertW> ew(size_t(rt.E));
    for (int64_t e = 0; e < rt.E; ++e)
      if (rt.offsets[e + 1] > rt.offsets[e]) {
        ws[e].reset(new F8W(c.f, N, K));
        ew[e] = {ws[e]->codes.p(), ws[e]->scales.p()};
      }
    Mat a(c.at, rt.T, K);
    fill_act(a);
    std::vector<float> bias(size_t(rt.E * N));
    for (auto& b : bias) b = float(urand(-1, 1));
    Mat C(DType::f32, rt.R, N);
    const size_t wsb = tc::fp8gemm_grouped_workspace_bytes(c.act, rt.T, rt.R, K, rt.E);
    Mem wsm(wsb);
    unsigned long long err = tc::kQGroupNoError;
    tc::Fp8GroupedPlainArgs g;
    g.fmt = c.f;
    g.N = N;
    g.K = K;
    g.E = rt.E;
    g.w = ew.data();
    g.a_dtype = c.at;
    g.act = c.act;
    g.T = rt.T;
    g.A = a.p();
    g.lda = K;
    g.R = rt.R;
    g.rows = rt.rows.data();
    g.offsets = rt.offsets.data();
    g.c_dtype = DType::f32;
    g.C = C.p();
    g.ldc = N;
    g.bias = bias.data();
    g.ldb = N;
    g.workspace = wsm.p();
    g.workspace_bytes = wsb;
    g.err = &err;
    expect_ok(tc::fp8gemm_grouped(g, nullptr, dev_sm(c.sm), c.tile), "fp8gemm_grouped");
    CHECK(err == tc::kQGroupNoError, "grouped fp8: error slot set on a valid table");
    std::vector<double> ref(size_t(rt.R * N)), tol(size_t(rt.R * N));
    for (int64_t e = 0; e < rt.E; ++e) {
      const int64_t m0 = rt.offsets[e], n = rt.offsets[e + 1] - m0;
      if (n == 0) continue;
      Mat ae(c.at, n, K);
      for (int64_t j = 0; j < n; ++j)
        for (int64_t k = 0; k < K; ++k) ae.set_bits(j, k, a.bits(rt.rows[m0 + j], k));
      Fp8GemmArgs rg;
      rg.a_dtype = c.at;
      rg.act = c.act;
      rg.M = n;
      rg.A = ae.p();
      rg.lda = K;
      rg.c_dtype = DType::f32;
      rg.bias = bias.data() + e * N;
      ref::Fp8GemmRef r;
      ref::fp8gemm_ref(ws[e]->plain(), rg, r);
      for (int64_t i = 0; i < n * N; ++i) {
        ref[m0 * N + i] = r.exact[i];
        tol[m0 * N + i] = fp8_tol(K, r.mag[i]) + 1.01 * hulp(DType::f32) * std::fabs(r.exact[i]) + tiny(DType::f32);
      }
    }
    char what[160];
    std::snprintf(what, sizeof what, "grouped fp8 %s/%s %s %s E=%lld R=%lld sm_%d tile=%s", dn(c.f.dtype), scale_name(c.f.scale),
                  c.act == Fp8Act::w8a8 ? "w8a8" : "w8a16", dn(c.at), (long long)rt.E, (long long)rt.R, c.sm, tn(c.tile));
    compare_out(what, C, ref, [&](size_t i) { return tol[i]; }, true);
  }
}

// Bad tables: flagged in the error slot, nothing computed, C untouched.
static void test_grouped_errors() {
  const QuantFormat f{QKind::int8, 32, false, DType::f32};
  const int64_t N = 40, K = 64, T = 6, E = 3;
  I8W w0(f, N, K), w1(f, N, K), w2(f, N, K);
  Mat a(DType::f16, T, K);
  fill_act(a);
  struct Bad {
    const char* what;
    std::vector<int32_t> offsets, rows;
    bool null1;
    unsigned kind;
    int64_t index;
  };
  const Bad bads[] = {
      {"decreasing offsets", {0, 4, 2, 6}, {0, 1, 2, 3, 4, 5}, false, tc::kQGroupBadOffsets, 2},
      {"offsets[E] != R", {0, 2, 4, 5}, {0, 1, 2, 3, 4, 5}, false, tc::kQGroupBadOffsets, 3},
      {"row index = T", {0, 2, 4, 6}, {0, 1, 2, 6, 4, 5}, false, tc::kQGroupBadRow, 3},
      {"negative row index", {0, 2, 4, 6}, {0, 1, 2, 3, -1, 5}, false, tc::kQGroupBadRow, 4},
      {"null weights with rows", {0, 2, 4, 6}, {0, 1, 2, 3, 4, 5}, true, tc::kQGroupNullWeights, 1},
  };
  for (const Bad& b : bads) {
    std::vector<tc::QExpertW> ew = {{w0.q.p(), w0.s.p()}, {b.null1 ? nullptr : w1.q.p(), w1.s.p()}, {w2.q.p(), w2.s.p()}};
    const int64_t R = int64_t(b.rows.size());
    Mat C(DType::f32, R, N);
    for (int64_t i = 0; i < R * N; ++i) C.set(i / N, i % N, 5.0);
    const size_t wsb = tc::qgemm_grouped_int8_workspace(f, T, R, K, E);
    Mem wsm(wsb);
    unsigned long long err = tc::kQGroupNoError;
    tc::QGroupedPlainArgs g;
    g.fmt = f;
    g.N = N;
    g.K = K;
    g.E = E;
    g.w = ew.data();
    g.a_dtype = DType::f16;
    g.T = T;
    g.A = a.p();
    g.lda = K;
    g.R = R;
    g.rows = b.rows.data();
    g.offsets = b.offsets.data();
    g.C = C.p();
    g.ldc = N;
    g.workspace = wsm.p();
    g.workspace_bytes = wsb;
    g.err = &err;
    expect_ok(tc::qgemm_grouped_int8(g, nullptr, {}, TC::decode), b.what);
    unsigned kind = 0;
    int64_t index = -1;
    const bool flagged = tc::grouped_error(err, &kind, &index);
    CHECK(flagged && kind == b.kind && index == b.index, "grouped %s: expected kind %u index %lld, got flagged=%d kind %u index %lld", b.what,
          b.kind, (long long)b.index, flagged, kind, (long long)index);
    int touched = 0;
    for (int64_t i = 0; i < R * N; ++i) touched += C.get(i / N, i % N) != 5.0;
    CHECK(touched == 0, "grouped %s: %d outputs written", b.what, touched);
    if (flagged) std::printf("  grouped %s: flagged (%s, index %lld), C untouched\n", b.what, tc::grouped_error_name(kind), (long long)index);
  }
}

// ---- negative tests: broken variants must be caught --------------------------------------------------
template <class F>
static void expect_caught(const char* what, F&& f) {
  std::string how;
  bool caught = false;
  try {
    int nans = 0;
    const int bad = f(&nans);
    caught = bad != 0;
    how = std::to_string(bad) + " outputs wrong, " + std::to_string(nans) + " NaN";
  } catch (const cuemu::Error& e) {
    caught = true;
    how = std::string("cuemu error: ") + e.what();
    const size_t nl = how.find('\n');
    if (nl != std::string::npos) how.resize(nl);
  }
  CHECK(caught, "broken variant (%s) was NOT caught", what);
  std::printf("  broken %-48s %s: %s\n", what, caught ? "CAUGHT" : "missed", how.c_str());
}

// The broken kernel is instantiated for one tile (TL) only.
template <int BUG, int G, class TL>
static int broken_int8(int* nans) {
  const QuantFormat f{QKind::int8, G, false, DType::f32};
  return run_i8({f, 33, 40, 128, DType::f16, DType::f32, false}, false,
                [&](const tc::QGemmPlainArgs& a) {
                  // The real helper's quantization, then the broken GEMM.
                  tc::Int8GemmArgs g;
                  g.w = a.w;
                  g.M = a.M;
                  g.ldq = tc::int8_act_ld(a.w.K);
                  g.qa = static_cast<int8_t*>(a.workspace);
                  g.sa = reinterpret_cast<float*>(static_cast<char*>(a.workspace) + tc::detail::align256(size_t(a.M * g.ldq)));
                  g.c_dtype = a.c_dtype;
                  g.C = a.C;
                  g.ldc = a.ldc;
                  tc::Q8Params p;
                  tc::Status st = tc::detail::int8_gemm_check(g, p);
                  if (!st.ok) return st;
                  st = tc::quantize_act_int8(a.w.fmt, a.a_dtype, a.A, a.lda, a.M, a.w.K, const_cast<int8_t*>(g.qa), g.ldq,
                                             const_cast<float*>(g.sa));
                  if (!st.ok) return st;
                  return tc::detail::q8_launch<TL, tc::OpI8<G>, BUG>("qgemm_int8", p, unsigned((a.M + TL::BM - 1) / TL::BM), {},
                                                                       nullptr, false);
                },
                nans);
}

template <int BUG>
static int broken_fp8(bool mma, int* nans) {
  return run_f8({{DType::fp8e4m3, Fp8Scale::channel}, 33, 40, 128, mma ? Fp8Act::w8a8 : Fp8Act::w8a16, DType::f16, DType::f32, false},
                false,
                [&](const tc::Fp8GemmPlainArgs& a) {
                  tc::Fp8KernelArgs g;
                  g.w = a.w;
                  g.M = a.M;
                  g.c_dtype = a.c_dtype;
                  g.C = a.C;
                  g.ldc = a.ldc;
                  tc::Q8Params p;
                  if (mma) {
                    const int64_t ldq = tc::fp8_act_ld(a.w.K, false);
                    float* sa = reinterpret_cast<float*>(static_cast<char*>(a.workspace) + tc::detail::align256(size_t(a.M * ldq) * 2));
                    tc::Status st = tc::quantize_act_fp8(a.a_dtype, a.A, a.lda, a.M, a.w.K, false, a.workspace, ldq, sa);
                    if (!st.ok) return st;
                    g.a_dtype = DType::fp8e4m3;
                    g.A = a.workspace;
                    g.lda = ldq;
                    g.sa = sa;
                    if (!(st = tc::detail::fp8_kernel_check("broken", g, true, p)).ok) return st;
                    return tc::detail::q8_launch<tc::QTileSmall, tc::OpE4M3<false>, BUG>("fp8gemm_mma", p, 1, {}, nullptr, false);
                  }
                  g.a_dtype = a.a_dtype;
                  g.A = a.A;
                  g.lda = a.lda;
                  tc::Status st = tc::detail::fp8_kernel_check("broken", g, false, p);
                  if (!st.ok) return st;
                  return tc::detail::q8_launch<tc::QTileSmall, tc::OpW8A16<__half, tc::kE4M3, false>, BUG>("fp8gemm_w8a16", p, 1, {},
                                                                                                  nullptr, false);
                },
                nans);
}

static void test_broken() {
  expect_caught("int8: no __syncthreads between stages", [](int* n) { return broken_int8<1, 0, tc::QTileSmall>(n); });
  expect_caught("int8: no cp.async wait", [](int* n) { return broken_int8<2, 32, tc::QTileSmall>(n); });
  expect_caught("int8: A fragment matrices 1/2 swapped", [](int* n) { return broken_int8<3, 0, tc::QTileDecode>(n); });
  expect_caught("int8 g32: promotion with the wrong group scale", [](int* n) { return broken_int8<4, 32, tc::QTileSmall>(n); });
  expect_caught("fp8 mma: no __syncthreads between stages", [](int* n) { return broken_fp8<1>(true, n); });
  expect_caught("fp8 w8a16: no cp.async wait", [](int* n) { return broken_fp8<2>(false, n); });
  expect_caught("fp8 w8a16: A not in the permuted k order", [](int* n) { return broken_fp8<3>(false, n); });
}

// ---- launch refusals ---------------------------------------------------------------------------------------
static void test_refusals() {
  auto refused = [](const tc::Status& st, Code code, const char* what) {
    CHECK(!st.ok && st.code == code, "%s: expected refusal with code %d, got ok=%d code=%d (%s)", what, int(code), st.ok, int(st.code),
          st.message.c_str());
    if (!st.ok) std::printf("  refused (%s): %s\n", what, st.message.c_str());
  };
  const QuantFormat g32{QKind::int8, 32, false, DType::f32};
  // Shared memory: the large int8 tile (66 KiB with g32 scales) on a 48 KiB device; C untouched.
  {
    I8W w(g32, 40, 128);
    Mat a(DType::f16, 130, 128), C(DType::f32, 130, 40);
    fill_act(a);
    for (int64_t i = 0; i < 130 * 40; ++i) C.set(i / 40, i % 40, 5.0);
    Mem ws(tc::int8_act_bytes(g32, 130, 128));
    tc::QGemmPlainArgs g;
    g.w = w.plain();
    g.a_dtype = DType::f16;
    g.M = 130;
    g.A = a.p();
    g.lda = 128;
    g.C = C.p();
    g.ldc = 40;
    g.workspace = ws.p();
    g.workspace_bytes = tc::int8_act_bytes(g32, 130, 128);
    tc::QDevice d;
    d.limits.smem_optin = 48 << 10;
    refused(tc::qgemm_int8(g, nullptr, d, TC::large), Code::UNSUPPORTED, "int8 large tile on a 48 KiB device");
    int touched = 0;
    for (int64_t i = 0; i < 130 * 40; ++i) touched += C.get(i / 40, i % 40) != 5.0;
    CHECK(touched == 0, "a refused launch wrote C");
    expect_ok(tc::qgemm_int8(g, nullptr, d, TC::automatic), "int8 automatic tile on a 48 KiB device");
    // Grid: M beyond 65535 blocks of 128 rows, refused before A is read (the buffers are tiny).
    g.M = int64_t(65536) * 128 + 1;
    g.workspace_bytes = size_t(1) << 62;
    refused(tc::qgemm_int8(g, nullptr, {}, TC::large), Code::UNSUPPORTED, "grid.y overflow");
    g.M = 130;
    g.workspace_bytes = tc::int8_act_bytes(g32, 130, 128);
    g.workspace_bytes -= 1;
    refused(tc::qgemm_int8(g, nullptr), Code::INVALID_ARG, "int8 workspace one byte short");
    g.workspace_bytes += 1;
    // K not a multiple of the group; K beyond 65536; int4; output dtype; residual partial overlap.
    g.w.K = 100;
    g.lda = 128;
    refused(tc::qgemm_int8(g, nullptr), Code::SHAPE, "int8 g32 with K = 100");
    g.w.K = 65536 + 32;
    g.lda = g.w.K;
    refused(tc::qgemm_int8(g, nullptr), Code::SHAPE, "int8 K = 65568");
    g.w.K = 128;
    g.lda = 128;
    g.w.fmt.kind = QKind::int4;
    refused(tc::qgemm_int8(g, nullptr), Code::UNSUPPORTED, "int4 weights");
    g.w.fmt.kind = QKind::int8;
    g.c_dtype = DType::int8;
    refused(tc::qgemm_int8(g, nullptr), Code::DTYPE, "int8 output dtype");
    g.c_dtype = DType::f32;
    g.residual = C.as_offset(1);
    g.ldr = 40;
    refused(tc::qgemm_int8(g, nullptr), Code::INVALID_ARG, "residual overlapping C");
    g.residual = nullptr;
    g.a_dtype = DType::fp8e4m3;
    refused(tc::qgemm_int8(g, nullptr), Code::DTYPE, "fp8 activations for int8");
  }
  // fp8: the mma path on an sm_80 device, e5m2 on the mma path, f32 activations for W8A16, smem.
  {
    F8W w({DType::fp8e4m3, Fp8Scale::channel}, 40, 64), w5({DType::fp8e5m2, Fp8Scale::channel}, 40, 64);
    Mat a(DType::f16, 9, 64), C(DType::f32, 9, 40);
    fill_act(a);
    for (int64_t i = 0; i < 9 * 40; ++i) C.set(i / 40, i % 40, 5.0);
    Mem ws(tc::fp8gemm_gpu_workspace_bytes(Fp8Act::w8a8, 9, 64));
    tc::Fp8GemmPlainArgs g;
    g.w = w.plain();
    g.a_dtype = DType::f16;
    g.act = Fp8Act::w8a8;
    g.M = 9;
    g.A = a.p();
    g.lda = 64;
    g.C = C.p();
    g.ldc = 40;
    g.workspace = ws.p();
    g.workspace_bytes = tc::fp8gemm_gpu_workspace_bytes(Fp8Act::w8a8, 9, 64);
    const tc::Status st = tc::fp8gemm(g, nullptr, dev_sm(80), TC::automatic, tc::Fp8Path::mma);
    refused(st, Code::UNSUPPORTED, "fp8 mma path on sm_80");
    CHECK(st.message.find("sm_89") != std::string::npos, "the sm_80 refusal should name sm_89: %s", st.message.c_str());
    tc::Fp8KernelArgs k;
    k.w = w.plain();
    k.M = 9;
    k.a_dtype = DType::fp8e4m3;
    k.A = ws.p();
    k.lda = 64;
    k.sa = reinterpret_cast<const float*>(ws.p());
    k.C = C.p();
    k.ldc = 40;
    refused(tc::fp8gemm_w8a8_mma(k, nullptr, dev_sm(86)), Code::UNSUPPORTED, "fp8gemm_w8a8_mma on sm_86");
    int touched = 0;
    for (int64_t i = 0; i < 9 * 40; ++i) touched += C.get(i / 40, i % 40) != 5.0;
    CHECK(touched == 0, "a refused fp8 launch wrote C");
    k.w = w5.plain();
    refused(tc::fp8gemm_w8a8_mma(k, nullptr, dev_sm(90)), Code::UNSUPPORTED, "e5m2 weights on the mma path");
    g.act = Fp8Act::w8a16;
    refused(tc::fp8gemm(g, nullptr, dev_sm(90), TC::automatic, tc::Fp8Path::mma), Code::UNSUPPORTED, "mma path with w8a16");
    g.a_dtype = DType::f32;
    refused(tc::fp8gemm(g, nullptr), Code::DTYPE, "w8a16 with f32 activations");
    g.a_dtype = DType::f16;
    tc::QDevice d;
    d.limits.smem_optin = 64 << 10;
    refused(tc::fp8gemm(g, nullptr, d, TC::large), Code::UNSUPPORTED, "w8a16 large tile (90 KiB) on a 64 KiB device");
    refused(tc::fp8gemm(g, nullptr, d, TC::decode), Code::UNSUPPORTED, "w8a16 decode tile (68 KiB) on a 64 KiB device");
    expect_ok(tc::fp8gemm(g, nullptr, d, TC::automatic), "w8a16 automatic tile on a 64 KiB device");
    g.act = Fp8Act::w8a8;
    g.workspace_bytes = 16;
    refused(tc::fp8gemm(g, nullptr, dev_sm(89)), Code::INVALID_ARG, "fp8 w8a8 workspace too small");
    g.w.fmt.dtype = DType::f16;
    refused(tc::fp8gemm(g, nullptr, dev_sm(89)), Code::DTYPE, "f16 as an fp8 weight dtype");
  }
  // Grouped: missing error slot, short workspace.
  {
    tc::QGroupedPlainArgs g;
    g.fmt = g32;
    g.N = 40;
    g.K = 64;
    g.E = 2;
    std::vector<tc::QExpertW> ew(2);
    int32_t rows[1] = {0}, offs[3] = {0, 1, 1};
    Mat a(DType::f16, 1, 64), C(DType::f32, 1, 40);
    Mem ws(64);
    g.w = ew.data();
    g.a_dtype = DType::f16;
    g.T = 1;
    g.A = a.p();
    g.lda = 64;
    g.R = 1;
    g.rows = rows;
    g.offsets = offs;
    g.C = C.p();
    g.ldc = 40;
    g.workspace = ws.p();
    g.workspace_bytes = 64;
    refused(tc::qgemm_grouped_int8(g, nullptr), Code::INVALID_ARG, "grouped without an error slot");
    unsigned long long err = tc::kQGroupNoError;
    g.err = &err;
    refused(tc::qgemm_grouped_int8(g, nullptr), Code::INVALID_ARG, "grouped workspace too small");
    g.K = 40;
    refused(tc::qgemm_grouped_int8(g, nullptr), Code::SHAPE, "grouped g32 with K = 40");
  }
}

// ---- driver -------------------------------------------------------------------------------------------------
static void run_test(const char* name, const std::function<void()>& f) {
  const int before = gFailures;
  const auto t0 = std::chrono::steady_clock::now();
  try {
    f();
  } catch (const cuemu::Error& e) {
    CHECK(false, "%s: cuemu error: %s", name, e.what());
  } catch (const std::exception& e) {
    CHECK(false, "%s: exception: %s", name, e.what());
  }
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  std::printf("%s %-34s %8.0f ms\n", gFailures == before ? "ok  " : "FAIL", name, ms);
  std::fflush(stdout);
}

int main(int argc, char** argv) {
  std::string only = argc > 1 ? argv[1] : "";
  const cuemu::Schedule orders[] = {{cuemu::Order::Forward, 0}, {cuemu::Order::Reverse, 0}};
  for (const auto& s : orders) {
    cuemu::set_schedule(s);
    std::printf("== schedule %s\n", cuemu::schedule_name(s).c_str());
    auto t = [&](const char* name, const std::function<void()>& f) {
      if (only.empty() || std::string(name).find(only) != std::string::npos) run_test(name, f);
    };
    t("act quant int8", test_act_quant_int8);
    t("act quant fp8", test_act_quant_fp8);
    t("int8 gemm", test_int8_gemm);
    t("fp8 gemm", test_fp8_gemm);
    t("fp8 dequant exact", test_fp8_dequant_exact);
    t("one-hot int8", [] {
      for (TC tile : {TC::decode, TC::small}) onehot(int8_kernel(tile), tile, 33, 40, 96, 32);
      onehot(int8_kernel(TC::large), TC::large, 130, 40, 64, 32);
    });
    t("one-hot fp8 mma", [] {
      for (TC tile : {TC::decode, TC::small}) onehot(fp8_kernel(true, DType::fp8e4m3, DType::fp8e4m3, tile), tile, 33, 40, 96, 32);
      onehot(fp8_kernel(true, DType::fp8e4m3, DType::fp8e4m3, TC::large), TC::large, 130, 40, 64, 32);
    });
    t("one-hot fp8 w8a16", [] {
      onehot(fp8_kernel(false, DType::f16, DType::fp8e4m3, TC::decode), TC::decode, 33, 40, 96, 32);
      onehot(fp8_kernel(false, DType::bf16, DType::fp8e5m2, TC::small), TC::small, 33, 40, 96, 32);
      onehot(fp8_kernel(false, DType::f16, DType::fp8e5m2, TC::large), TC::large, 130, 40, 64, 32);
    });
    t("grouped int8", test_grouped_int8);
    t("grouped fp8", test_grouped_fp8);
    t("grouped errors", test_grouped_errors);
    t("broken variants", test_broken);
    t("launch refusals", test_refusals);
  }
  std::printf("%d checks, %d failures\n", gChecks, gFailures);
  return gFailures == 0 ? 0 : 1;
}
