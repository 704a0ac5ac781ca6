// Tests for the CUDA op kernels (native/cuda/kernels/*.cuh), run on the CPU under cuemu: every
// kernel against the project's double-precision references (native/cpu/ref: the CPU backend's
// semantics) on small odd shapes, under two schedule orders; one-hot GEMMs through the real
// tensor-core kernel (fragment layouts); deliberately broken GEMM variants (each must be caught);
// launch-configuration checks (each must refuse to launch); embedding ids out of range next to
// PROT_NONE guard pages (must not read out of bounds, must flag the first bad token).
// Build and run: native/tests/cuemu/ops_run.sh
#include "check.h"
#include "../../cuda/kernels/elementwise.cuh"
#include "../../cuda/kernels/embedding.cuh"
#include "../../cuda/kernels/gemm_f16.cuh"
#include "../../cuda/kernels/rmsnorm.cuh"
#include "../../cuda/kernels/rope.cuh"
#include "../../cuda/kernels/softmax.cuh"
#include "ref/ref.h"
#include "ref/small_ops_ref.h"

#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <vector>

using namespace ty;
namespace tc = ty::cuda;


static const char* dn(DType t) { return dtype_name(t); }

// ---- typed host buffers ------------------------------------------------------------------------
// `shift` elements of offset from a 16-byte aligned start (to force the kernels' unaligned paths).
struct Buf {
  DType t;
  size_t n;
  size_t shift;
  std::vector<unsigned char> raw;
  Buf(DType t_, size_t n_, size_t shift_ = 0) : t(t_), n(n_), shift(shift_), raw((n_ + shift_) * esize() + 16, 0) {}
  // Element-wise: the aligned start depends on where each allocation lands.
  Buf(const Buf& o) : Buf(o.t, o.n, o.shift) {
    for (size_t i = 0; i < n; ++i) set_bits(i, o.bits(i));
  }
  Buf& operator=(const Buf&) = delete;
  size_t esize() const { return t == DType::f32 ? 4 : 2; }
  unsigned char* base() {
    uintptr_t p = reinterpret_cast<uintptr_t>(raw.data());
    return raw.data() + ((16 - (p & 15)) & 15) + shift * esize();
  }
  const unsigned char* base() const { return const_cast<Buf*>(this)->base(); }
  void* p() { return base(); }
  uint32_t bits(size_t i) const {
    if (t == DType::f32) {
      uint32_t u;
      std::memcpy(&u, base() + 4 * i, 4);
      return u;
    }
    uint16_t h;
    std::memcpy(&h, base() + 2 * i, 2);
    return h;
  }
  void set_bits(size_t i, uint32_t b) {
    if (t == DType::f32) std::memcpy(base() + 4 * i, &b, 4);
    else {
      uint16_t h = uint16_t(b);
      std::memcpy(base() + 2 * i, &h, 2);
    }
  }
  double get(size_t i) const {
    const uint32_t b = bits(i);
    return t == DType::f32 ? double(bits_f32(b)) : t == DType::f16 ? double(f16_to_f32(uint16_t(b))) : double(bf16_to_f32(uint16_t(b)));
  }
  void set(size_t i, double v) { set_bits(i, encode(t, float(v))); }
  static uint32_t encode(DType t, float f) {
    return t == DType::f32 ? f32_bits(f) : t == DType::f16 ? f32_to_f16(f) : f32_to_bf16(f);
  }
};

static std::mt19937 gRng(1234);
static void fill(Buf& b, double lo, double hi) {
  std::uniform_real_distribution<double> d(lo, hi);
  for (size_t i = 0; i < b.n; ++i) b.set(i, d(gRng));
}

// Half an ulp (relative) of each dtype, and half its smallest subnormal (absolute).
static double hulp(DType t) { return t == DType::f32 ? std::ldexp(1.0, -24) : t == DType::f16 ? std::ldexp(1.0, -11) : std::ldexp(1.0, -8); }
static double tiny(DType t) { return t == DType::f16 ? std::ldexp(1.0, -25) : 1e-40; }

// got[i] vs ref[i]: |got - ref| <= tol(i). NaN never passes. Returns the number of mismatches.
static int compare(const std::string& what, const Buf& got, const std::vector<double>& ref, const std::function<double(size_t)>& tol) {
  int bad = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double g = got.get(i), e = std::fabs(g - ref[i]), tl = tol(i);
    if (!(e <= tl)) {
      if (bad < 3) std::printf("    %s: [%zu] got %.9g, expected %.9g (err %.3g > tol %.3g)\n", what.c_str(), i, g, ref[i], e, tl);
      ++bad;
    }
  }
  CHECK(bad == 0, "%s: %d of %zu outside tolerance", what.c_str(), bad, ref.size());
  return bad;
}

static void expect_ok(const tc::Status& st, const std::string& what) {
  CHECK(st.ok, "%s: %s", what.c_str(), st.message.c_str());
}

static const DType kActs[] = {DType::f32, DType::f16, DType::bf16};

// ---- elementwise ------------------------------------------------------------------------------
static void test_binary() {
  const int shapes[][2] = {{1, 1}, {3, 37}, {5, 64}, {7, 1000}};
  for (DType t : kActs)
    for (int op = 0; op < 2; ++op)
      for (int bc = 0; bc < 2; ++bc)
        for (auto& sh : shapes)
          for (int shift = 0; shift < 2; ++shift) {
            if (shift && sh[1] != 64) continue;  // the unaligned variant once per combination
            const int64_t rows = sh[0], cols = sh[1], n = rows * cols;
            Buf a(t, n, shift), b(t, bc ? cols : n), o(t, n);
            fill(a, -4, 4);
            fill(b, -4, 4);
            BinaryArgs g{op ? BinaryOp::mul : BinaryOp::add, t, rows, cols, a.p(), b.p(), bc != 0, o.p()};
            std::vector<double> ref(n);
            ref::binary_ref(g, ref.data());
            expect_ok(tc::binary(g), "binary");
            char w[96];
            std::snprintf(w, sizeof w, "binary %s %s bcast=%d %lldx%lld shift=%d", op ? "mul" : "add", dn(t), bc, (long long)rows,
                          (long long)cols, shift);
            // f32 math, one rounding to t (+ the f32 rounding before it).
            compare(w, o, ref, [&](size_t i) { return (1.01 * hulp(t) + std::ldexp(1.0, -24)) * std::fabs(ref[i]) + tiny(t); });
          }
  // In place (out aliases a).
  for (DType t : kActs) {
    Buf a(t, 3 * 40), b(t, 3 * 40);
    fill(a, -4, 4);
    fill(b, -4, 4);
    BinaryArgs g{BinaryOp::add, t, 3, 40, a.p(), b.p(), false, a.p()};
    std::vector<double> ref(120);
    ref::binary_ref(g, ref.data());
    expect_ok(tc::binary(g), "binary in place");
    compare(std::string("binary in place ") + dn(t), a, ref, [&](size_t i) { return 1.01 * (hulp(t) + std::ldexp(1.0, -24)) * std::fabs(ref[i]) + tiny(t); });
  }
}

static void test_silu_mul() {
  const int64_t sizes[] = {1, 33, 1000, 4096};
  for (DType t : kActs)
    for (int64_t n : sizes)
      for (int shift = 0; shift < 2; ++shift) {
        if (shift && n != 4096) continue;
        Buf g(t, n, shift), u(t, n), o(t, n);
        fill(g, -12, 12);
        fill(u, -3, 3);
        const double special[] = {-100, 100, -88.8, 0.0, -0.0, -20, 20};
        for (size_t i = 0; i < 7 && i < size_t(n); ++i) g.set(i * (n / 7 + 1) % n, special[i]);
        SiluMulArgs a{t, n, g.p(), u.p(), o.p()};
        std::vector<double> ref(n);
        ref::silu_mul_ref(a, ref.data());
        expect_ok(tc::silu_mul(a), "siluMul");
        char w[64];
        std::snprintf(w, sizeof w, "siluMul %s n=%lld shift=%d", dn(t), (long long)n, shift);
        compare(w, o, ref, [&](size_t i) { return (1.01 * hulp(t) + 1e-6) * std::fabs(ref[i]) + tiny(t); });
      }
}

// ---- rms norm ---------------------------------------------------------------------------------
static void test_rms_norm() {
  const int64_t colsList[] = {1, 37, 100, 1000, 4099};
  for (DType t : kActs)
    for (int64_t rows : {1, 3, 7})
      for (int64_t cols : colsList)
        for (int wt = 0; wt < 2; ++wt) {
          if (rows == 7 && cols == 4099) continue;
          Buf x(t, rows * cols), o(t, rows * cols);
          fill(x, -3, 3);
          std::vector<float> w(cols);
          for (auto& v : w) v = float(std::uniform_real_distribution<double>(0.5, 1.5)(gRng));
          const float eps = cols == 1 ? 0.0f : 1e-5f;
          RmsNormArgs a{t, rows, cols, x.p(), wt ? w.data() : nullptr, eps, o.p()};
          std::vector<double> ref(rows * cols);
          ref::rms_norm_ref(a, ref.data());
          expect_ok(tc::rms_norm(a), "rmsNorm");
          char s[80];
          std::snprintf(s, sizeof s, "rmsNorm %s %lldx%lld weight=%d", dn(t), (long long)rows, (long long)cols, wt);
          // s_r rounded to f32, two f32 multiplies, one rounding to t.
          compare(s, o, ref, [&](size_t i) { return (1.01 * hulp(t) + 4 * std::ldexp(1.0, -24)) * std::fabs(ref[i]) + tiny(t); });
        }
  // In place, with eps large enough to matter.
  for (DType t : kActs) {
    Buf x(t, 2 * 77);
    fill(x, -0.01, 0.01);
    RmsNormArgs a{t, 2, 77, x.p(), nullptr, 1e-3f, x.p()};
    std::vector<double> ref(2 * 77);
    ref::rms_norm_ref(a, ref.data());
    expect_ok(tc::rms_norm(a), "rmsNorm in place");
    compare(std::string("rmsNorm in place eps=1e-3 ") + dn(t), x, ref,
            [&](size_t i) { return (1.01 * hulp(t) + 4 * std::ldexp(1.0, -24)) * std::fabs(ref[i]) + tiny(t); });
  }
}

// ---- rope -------------------------------------------------------------------------------------
// The expected angles are the CPU backend's: the f32 running product from (float)pos, times
// freq_scale in f32 (so the test is sensitive to the pairing and to rot_dim/freq_scale, not to the
// f32 rounding of theta, which both backends share); cos/sin and the rotation in double.
static void test_rope() {
  struct Case {
    int heads, hd, rot;
    float base, fscale;
  };
  const Case cases[] = {{1, 8, 8, 10000.f, 1.f}, {3, 64, 64, 10000.f, 1.f}, {2, 80, 32, 10000.f, 0.25f}, {1, 128, 2, 10000.f, 1.f},
                        {2, 96, 96, 1000000.f, 0.5f}, {5, 24, 16, 500000.f, 1.f}};
  const int32_t pos[] = {0, 1, 7, 100, 32767, 3};
  const int64_t T = 6;
  for (DType t : kActs)
    for (const Case& c : cases)
      for (int neox = 0; neox < 2; ++neox) {
        const int64_t n = T * c.heads * c.hd;
        Buf x(t, n);
        fill(x, -2, 2);
        Buf x0 = x;
        RopeArgs a{t, T, c.heads, c.hd, c.rot, x.p(), pos, c.base, c.fscale, neox != 0};
        RopeArgs a0 = a;
        a0.x = x0.p();
        std::vector<double> ref(n), mag(n, 0.0), pref(n);
        ref::rope_ref(a0, pref.data());
        const int half = c.rot / 2;
        const float ts = ::powf(c.base, -2.0f / float(c.rot));
        for (int64_t tk = 0; tk < T; ++tk) {
          float theta = float(pos[tk]);
          for (int i = 0; i < half; ++i) {
            const double ang = double(c.fscale * theta), co = std::cos(ang), si = std::sin(ang);
            for (int h = 0; h < c.heads; ++h) {
              const int64_t b = (tk * c.heads + h) * c.hd, ia = b + (neox ? i : 2 * i), ib = b + (neox ? i + half : 2 * i + 1);
              const double xa = x0.get(ia), xb = x0.get(ib);
              ref[ia] = xa * co - xb * si;
              ref[ib] = xa * si + xb * co;
              mag[ia] = mag[ib] = std::fabs(xa) + std::fabs(xb);
            }
            theta *= ts;
          }
          for (int h = 0; h < c.heads; ++h)
            for (int d = c.rot; d < c.hd; ++d) ref[(tk * c.heads + h) * c.hd + d] = x0.get((tk * c.heads + h) * c.hd + d);
        }
        expect_ok(tc::rope(a), "rope");
        char w[96];
        std::snprintf(w, sizeof w, "rope %s heads=%d hd=%d rot=%d neox=%d scale=%g", dn(t), c.heads, c.hd, c.rot, neox, c.fscale);
        compare(w, x, ref, [&](size_t i) { return 1e-6 * mag[i] + 1.01 * hulp(t) * std::fabs(ref[i]) + tiny(t); });
        // The dims past rot_dim are not rewritten (bit-identical).
        int touched = 0;
        for (int64_t i = 0; i < n; ++i)
          if (i % c.hd >= c.rot && x.bits(i) != x0.bits(i)) ++touched;
        CHECK(touched == 0, "%s: %d non-rotated elements changed", w, touched);
        // Against the project's double-angle reference (rope_ref) where the f32 theta is accurate
        // (small positions): same pairing convention, rot_dim and freq_scale handling.
        int bad = 0;
        for (int64_t tk = 0; tk < T; ++tk) {
          if (pos[tk] > 7) continue;
          for (int64_t i = tk * c.heads * c.hd; i < (tk + 1) * c.heads * c.hd; ++i)
            if (!(std::fabs(x.get(i) - pref[i]) <= 5e-5 * (std::fabs(pref[i]) + 1) + 1.01 * hulp(t) * std::fabs(pref[i]))) ++bad;
        }
        CHECK(bad == 0, "%s: %d elements differ from ref::rope_ref", w, bad);
      }
}

// ---- softmax ----------------------------------------------------------------------------------
static void test_softmax() {
  const int64_t colsList[] = {1, 7, 33, 1000, 1025, 3000};
  const float scales[] = {1.0f, 0.125f, -0.5f};
  for (DType t : kActs)
    for (int64_t cols : colsList)
      for (float scale : scales)
        for (int64_t rows : {1, 5}) {
          if (rows == 5 && cols == 3000 && t != DType::f32) continue;
          Buf x(t, rows * cols), o(t, rows * cols);
          fill(x, -8, 8);
          if (rows == 5) {
            for (int64_t c = 0; c < cols; ++c) x.set(1 * cols + c, 20000.0 + (c % 13));  // huge |x|
            if (scale > 0) {
              for (int64_t c = 0; c < cols; c += 3) x.set(2 * cols + c, -INFINITY);  // masked entries
              for (int64_t c = 0; c < cols; ++c) x.set(3 * cols + c, -INFINITY);      // a fully masked row
            }
          }
          SoftmaxArgs a{t, rows, cols, x.p(), scale, o.p()};
          std::vector<double> ref(rows * cols), arg(rows * cols, 0.0);
          ref::softmax_ref(a, ref.data());
          for (int64_t r = 0; r < rows; ++r) {
            double m = -INFINITY;
            for (int64_t c = 0; c < cols; ++c) m = std::fmax(m, double(scale) * x.get(r * cols + c));
            for (int64_t c = 0; c < cols; ++c) arg[r * cols + c] = std::isfinite(m) ? std::fabs(double(scale) * x.get(r * cols + c) - m) : 0;
          }
          expect_ok(tc::softmax(a), "softmax");
          char w[80];
          std::snprintf(w, sizeof w, "softmax %s %lldx%lld scale=%g", dn(t), (long long)rows, (long long)cols, scale);
          // expf's argument carries f32 rounding proportional to its size; the sum is in double.
          compare(w, o, ref, [&](size_t i) {
            return ((8 + 2 * (arg[i] < 200 ? arg[i] : 200)) * std::ldexp(1.0, -24) + 1.01 * hulp(t)) * std::fabs(ref[i]) + tiny(t) + 1e-30;
          });
        }
  // In place, block-per-row shape.
  for (DType t : kActs) {
    Buf x(t, 2 * 1500);
    fill(x, -5, 5);
    SoftmaxArgs a{t, 2, 1500, x.p(), 0.7f, x.p()};
    std::vector<double> ref(3000);
    ref::softmax_ref(a, ref.data());
    expect_ok(tc::softmax(a), "softmax in place");
    compare(std::string("softmax in place ") + dn(t), x, ref,
            [&](size_t i) { return (40 * std::ldexp(1.0, -24) + 1.01 * hulp(t)) * std::fabs(ref[i]) + tiny(t) + 1e-30; });
  }
}

// ---- embedding --------------------------------------------------------------------------------
static void test_embedding() {
  for (DType ti : kActs)
    for (DType to : kActs)
      for (int64_t dim : {1, 13, 64}) {
        const int64_t vocab = 50, T = 9;
        Buf tab(ti, vocab * dim), o(to, T * dim);
        fill(tab, -3, 3);
        if (ti == to && ti != DType::f32) tab.set_bits(7 * dim, 0x7d01);                    // a NaN with a payload:
        if (ti == to && ti == DType::f32) tab.set_bits(7 * dim, 0x7fa00001u);                // copied bit for bit
        std::vector<int32_t> ids = {3, 0, 49, 7, 7, 12, 48, 1, 25};
        EmbeddingArgs a{ti, to, vocab, dim, T, tab.p(), ids.data(), o.p()};
        unsigned long long bad = tc::kEmbeddingNoError;
        expect_ok(tc::embedding(a, &bad), "embedding");
        CHECK(bad == tc::kEmbeddingNoError, "embedding: error slot set (0x%llx) with valid ids", bad);
        int wrong = 0;
        for (int64_t tk = 0; tk < T; ++tk)
          for (int64_t d = 0; d < dim; ++d) {
            const uint32_t src = tab.bits(size_t(ids[tk]) * dim + d);
            const uint32_t want = ti == to ? src : Buf::encode(to, float(tab.get(size_t(ids[tk]) * dim + d)));
            if (o.bits(tk * dim + d) != want) ++wrong;
          }
        CHECK(wrong == 0, "embedding %s->%s dim=%lld: %d elements differ (bit-exact expected)", dn(ti), dn(to), (long long)dim, wrong);
      }
  // Out-of-range ids next to PROT_NONE pages: the table is exactly one page with a guard page on
  // each side, so reading row -1 or row vocab would crash the test.
  const long page = sysconf(_SC_PAGESIZE);
  const int64_t dim = 64, vocab = page / (4 * dim);
  unsigned char* m = static_cast<unsigned char*>(mmap(nullptr, 3 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  CHECK(m != MAP_FAILED, "mmap");
  if (m == MAP_FAILED) return;
  float* tab = reinterpret_cast<float*>(m + page);
  for (int64_t i = 0; i < vocab * dim; ++i) tab[i] = float(i % 1000) * 0.5f;
  mprotect(m, page, PROT_NONE);
  mprotect(m + 2 * page, page, PROT_NONE);
  std::vector<int32_t> ids = {3, int32_t(vocab), -1, 5, 0x7fffffff, int32_t(0x80000000u), int32_t(vocab - 1)};
  const int64_t T = ids.size();
  for (DType to : kActs) {
    Buf o(to, T * dim);
    for (size_t i = 0; i < o.n; ++i) o.set(i, 7.0);
    EmbeddingArgs a{DType::f32, to, vocab, dim, T, tab, ids.data(), o.p()};
    unsigned long long bad = tc::kEmbeddingNoError;
    expect_ok(tc::embedding(a, &bad), "embedding (bad ids)");
    int64_t tok = -1;
    int32_t id = 0;
    const bool flagged = tc::embedding_bad(bad, &tok, &id);
    CHECK(flagged && tok == 1 && id == vocab, "embedding: expected the slot to name token 1 (id %lld), got flagged=%d token=%lld id=%d",
          (long long)vocab, flagged, (long long)tok, id);
    int wrong = 0;
    for (int64_t tk = 0; tk < T; ++tk) {
      const bool ok = ids[tk] >= 0 && ids[tk] < vocab;
      for (int64_t d = 0; d < dim; ++d) {
        const float want = ok ? tab[ids[tk] * dim + d] : 0.0f;
        if (o.bits(tk * dim + d) != Buf::encode(to, want)) ++wrong;
      }
    }
    CHECK(wrong == 0, "embedding with bad ids -> %s: %d wrong elements (bad rows must be zero)", dn(to), wrong);
    std::printf("  embedding: ids {3, %lld, -1, 5, INT_MAX, INT_MIN, %lld} next to guard pages -> no fault, slot names token %lld id %d\n",
                (long long)vocab, (long long)vocab - 1, (long long)tok, id);
  }
  munmap(m, 3 * page);
  unsigned long long bad = tc::kEmbeddingNoError;
  EmbeddingArgs none{DType::f32, DType::f32, 1, 1, 1, nullptr, nullptr, nullptr};
  CHECK(!tc::embedding(none, nullptr).ok, "embedding without an error slot must refuse");
  (void)bad;
}

// ---- GEMM -------------------------------------------------------------------------------------
struct GemmCase {
  int64_t M, N, K;
  DType t, ct;
  tc::GemmTileChoice tile;
  int64_t padA = 0, padB = 0, padC = 0;  // leading dimension = K + padA etc.
  float alpha = 1.0f, beta = 0.0f;
  bool bias = false;
  size_t shiftA = 0;
};

static const char* tile_name(tc::GemmTileChoice t) {
  return t == tc::GemmTileChoice::small ? "small" : t == tc::GemmTileChoice::large ? "large" : "auto";
}

// Runs one case through `run` (the helper by default) and compares with ref::gemm_ref.
static int run_gemm_case(const GemmCase& c, const std::function<tc::Status(const GemmArgs&)>& run = nullptr, bool report = true,
                         int* nans = nullptr) {
  const int64_t lda = c.K + c.padA, ldb = c.K + c.padB, ldc = c.N + c.padC;
  Buf A(c.t, c.M * lda, c.shiftA), B(c.t, c.N * ldb), C(c.ct, c.M * ldc);
  fill(A, -1, 1);
  fill(B, -1, 1);
  if (c.beta != 0.0f) fill(C, -2, 2);
  else
    for (size_t i = 0; i < C.n; ++i) C.set_bits(i, c.ct == DType::f32 ? 0x7fc00000u : 0x7e00u);  // NaN: must not be read
  // C's padding columns hold a sentinel that must survive.
  for (int64_t r = 0; r < c.M; ++r)
    for (int64_t j = c.N; j < ldc; ++j) C.set(r * ldc + j, 1234.0);
  std::vector<float> bias(c.N);
  for (auto& v : bias) v = float(std::uniform_real_distribution<double>(-1, 1)(gRng));
  Buf C0 = C;
  GemmArgs g{c.t, c.ct, c.M, c.N, c.K, A.p(), lda, B.p(), ldb, true, C.p(), ldc, c.bias ? bias.data() : nullptr, c.alpha, c.beta};
  GemmArgs gr = g;
  gr.C = C0.p();
  std::vector<double> exact(c.M * c.N), mag(c.M * c.N);
  ref::gemm_ref(gr, exact.data(), mag.data());
  const tc::Status st = run ? run(g) : tc::gemm(g, nullptr, {}, c.tile);
  char w[160];
  std::snprintf(w, sizeof w, "gemm %s->%s %lldx%lldx%lld tile=%s lda+%lld ldb+%lld ldc+%lld alpha=%g beta=%g bias=%d shiftA=%zu", dn(c.t),
                dn(c.ct), (long long)c.M, (long long)c.N, (long long)c.K, tile_name(c.tile), (long long)c.padA, (long long)c.padB,
                (long long)c.padC, c.alpha, c.beta, c.bias, c.shiftA);
  if (report) expect_ok(st, w);
  if (!st.ok) return -1;
  int bad = 0, nan = 0, pad = 0;
  for (int64_t r = 0; r < c.M; ++r) {
    for (int64_t j = 0; j < c.N; ++j) {
      const double got = C.get(r * ldc + j), e = exact[r * c.N + j];
      // f32 accumulation (rounded once per mma k16 step) + f32 epilogue + one rounding to ct.
      const double tol = mag[r * c.N + j] * std::ldexp(1.0, -24) * (double(c.K) / 16 + 6) + 1.01 * hulp(c.ct) * std::fabs(e) + tiny(c.ct);
      if (std::isnan(got)) ++nan;
      if (!(std::fabs(got - e) <= tol)) {
        if (report && bad < 3) std::printf("    %s: C[%lld][%lld] = %.9g, expected %.9g\n", w, (long long)r, (long long)j, got, e);
        ++bad;
      }
    }
    for (int64_t j = c.N; j < ldc; ++j)
      if (C.bits(r * ldc + j) != C0.bits(r * ldc + j)) ++pad;
  }
  if (report) {
    CHECK(bad == 0, "%s: %d of %lld outputs wrong (%d NaN)", w, bad, (long long)(c.M * c.N), nan);
    CHECK(pad == 0, "%s: %d padding elements of C written", w, pad);
  }
  if (nans) *nans = nan;
  return bad;
}

static void test_gemm() {
  using TC = tc::GemmTileChoice;
  for (DType t : {DType::f16, DType::bf16})
    for (DType ct : {DType::f32, DType::f16})
      for (int64_t M : {1, 7, 33})
        for (int64_t N : {8, 24, 40})
          for (int64_t K : {16, 40, 72}) run_gemm_case({M, N, K, t, ct, TC::automatic});
  // The large tile, several blocks in both directions, K tails; bf16 output; the epilogue.
  for (DType t : {DType::f16, DType::bf16}) {
    run_gemm_case({33, 40, 72, t, DType::f32, TC::large});
    run_gemm_case({130, 136, 200, t, DType::f32, TC::large});
    run_gemm_case({130, 136, 200, t, DType::bf16, TC::small});
    run_gemm_case({70, 72, 40, t, DType::f16, TC::automatic, 8, 16, 5, 0.5f, 0.75f, true});
    run_gemm_case({33, 24, 40, t, DType::bf16, TC::small, 0, 0, 3, -1.5f, 1.0f, true});
    // Unaligned operands: odd K, odd leading dimensions, a misaligned base (predicated loads).
    run_gemm_case({7, 24, 19, t, DType::f32, TC::automatic});
    run_gemm_case({33, 40, 33, t, DType::f16, TC::automatic, 3, 1, 0});
    run_gemm_case({65, 9, 72, t, DType::f32, TC::automatic, 0, 0, 0, 1.0f, 0.0f, false, 1});
    // K = 0: C = beta * C + bias.
    run_gemm_case({3, 8, 0, t, DType::f32, TC::automatic, 0, 0, 0, 1.0f, 1.0f, true});
  }
}

// One-hot operands through the real kernel: a misplaced fragment element moves a value to the
// wrong output, which these catch exactly (every value below is an integer, exact in f16/bf16
// and in f32 sums).
static double onehot_val(int64_t i, int64_t k) { return double((i * 131 + k * 17) % 251) - 125; }

static void test_gemm_onehot(DType t, tc::GemmTileChoice tile, int64_t M, int64_t N, int64_t K, bool verbose) {
  int launches = 0, bad = 0;
  auto run = [&](Buf& A, Buf& B, const std::function<double(int64_t, int64_t)>& expect, const char* what) {
    Buf C(DType::f32, M * N);
    GemmArgs g{t, DType::f32, M, N, K, A.p(), K, B.p(), K, true, C.p(), N, nullptr, 1.0f, 0.0f};
    tc::Status st = tc::gemm(g, nullptr, {}, tile);
    ++launches;
    if (!st.ok) {
      CHECK(false, "one-hot gemm: %s", st.message.c_str());
      return;
    }
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n)
        if (C.get(m * N + n) != expect(m, n)) {
          if (bad++ < 3)
            std::printf("    one-hot %s %s tile=%s: C[%lld][%lld] = %g, expected %g\n", what, dn(t), tile_name(tile), (long long)m,
                        (long long)n, C.get(m * N + n), expect(m, n));
        }
  };
  Buf A(t, M * K), B(t, N * K);
  // Every row of B one-hot at k = (5n + p) % K: over p = 0..K-1 every (n, k) gets the 1.
  for (int64_t i = 0; i < M * K; ++i) A.set(i, onehot_val(i / K, i % K));
  for (int64_t p = 0; p < K; ++p) {
    for (int64_t i = 0; i < N * K; ++i) B.set(i, (i % K) == (5 * (i / K) + p) % K ? 1.0 : 0.0);
    run(A, B, [&](int64_t m, int64_t n) { return onehot_val(m, (5 * n + p) % K); }, "B rows");
  }
  // Every row of A one-hot at k = (3m + p) % K.
  for (int64_t i = 0; i < N * K; ++i) B.set(i, onehot_val(i / K, i % K));
  for (int64_t p = 0; p < K; ++p) {
    for (int64_t i = 0; i < M * K; ++i) A.set(i, (i % K) == (3 * (i / K) + p) % K ? 1.0 : 0.0);
    run(A, B, [&](int64_t m, int64_t n) { return onehot_val(n, (3 * m + p) % K); }, "A rows");
  }
  // A single 1 in the whole of A (then of B) at corners and tile edges: exactly one output row
  // (column) is non-zero.
  const int64_t spots[][2] = {{0, 0}, {M - 1, K - 1}, {M - 1, 0}, {0, K - 1}, {M / 2, K / 2}, {M > 16 ? 16 : 0, K > 33 ? 33 : 1}};
  for (auto& s : spots) {
    for (int64_t i = 0; i < M * K; ++i) A.set(i, i == s[0] * K + s[1] ? 1.0 : 0.0);
    for (int64_t i = 0; i < N * K; ++i) B.set(i, onehot_val(i / K, i % K));
    run(A, B, [&](int64_t m, int64_t n) { return m == s[0] ? onehot_val(n, s[1]) : 0.0; }, "single A");
    const int64_t sn = s[0] < N ? (s[0] * 7) % N : N - 1;
    for (int64_t i = 0; i < N * K; ++i) B.set(i, i == sn * K + s[1] ? 1.0 : 0.0);
    for (int64_t i = 0; i < M * K; ++i) A.set(i, onehot_val(i / K, i % K));
    run(A, B, [&](int64_t m, int64_t n) { return n == sn ? onehot_val(m, s[1]) : 0.0; }, "single B");
  }
  CHECK(bad == 0, "one-hot gemm %s tile=%s %lldx%lldx%lld: %d wrong outputs over %d launches", dn(t), tile_name(tile), (long long)M,
        (long long)N, (long long)K, bad, launches);
  if (verbose) std::printf("  one-hot gemm %s tile=%s %lldx%lldx%lld: %d launches\n", dn(t), tile_name(tile), (long long)M, (long long)N,
                           (long long)K, launches);
}

// ---- negative tests: broken GEMM variants must be caught ----------------------------------------
template <int BUG>
static void test_gemm_broken(const char* what) {
  GemmCase c{33, 40, 72, DType::f16, DType::f32, tc::GemmTileChoice::small};
  std::string how;
  bool caught = false;
  int nans = 0;
  try {
    const int bad = run_gemm_case(
        c, [](const GemmArgs& g) { return tc::detail::gemm_launch<tc::GemmTileSmall, __half, float, true, BUG>(g, {}, nullptr); }, false,
        &nans);
    caught = bad != 0;
    how = std::to_string(bad) + " of 1320 outputs wrong, " + std::to_string(nans) + " NaN (poison)";
  } catch (const cuemu::Error& e) {
    caught = true;
    how = std::string("cuemu error: ") + e.what();
    const size_t nl = how.find('\n');
    if (nl != std::string::npos) how.resize(nl);
  }
  CHECK(caught, "broken GEMM (%s) was NOT caught", what);
  std::printf("  broken GEMM (%s) under %s: %s -> %s\n", what, cuemu::schedule_name(cuemu::schedule()).c_str(),
              caught ? "CAUGHT" : "missed", how.c_str());
}

// ---- launch configuration checks -----------------------------------------------------------------
static void test_launch_checks() {
  using TC = tc::GemmTileChoice;
  // The large GEMM tile needs 60 KiB: refused on a device limited to 48 KiB, C untouched.
  {
    Buf A(DType::f16, 130 * 32), B(DType::f16, 8 * 32), C(DType::f32, 130 * 8);
    for (size_t i = 0; i < C.n; ++i) C.set(i, 5.0);
    GemmArgs g{DType::f16, DType::f32, 130, 8, 32, A.p(), 32, B.p(), 32, true, C.p(), 8, nullptr, 1.0f, 0.0f};
    tc::DeviceLimits lim;
    lim.smem_optin = 48 << 10;
    tc::Status st = tc::gemm(g, nullptr, lim, TC::large);
    CHECK(!st.ok && st.code == Code::UNSUPPORTED, "large tile with 48 KiB: expected UNSUPPORTED, got ok=%d", st.ok);
    bool same = true;
    for (size_t i = 0; i < C.n; ++i) same = same && C.get(i) == 5.0;
    CHECK(same, "a refused launch wrote C");
    std::printf("  refused: %s\n", st.message.c_str());
    // ... while the automatic choice falls back to the small tile and runs.
    expect_ok(tc::gemm(g, nullptr, lim, TC::automatic), "auto tile with 48 KiB");
    // grid.y beyond 65535: refused before anything is read (the buffers are far too small).
    g.M = int64_t(65536) * 128 + 1;
    st = tc::gemm(g);
    CHECK(!st.ok && st.code == Code::UNSUPPORTED, "huge M: expected UNSUPPORTED, got ok=%d", st.ok);
    std::printf("  refused: %s\n", st.message.c_str());
    g.M = 130;
    g.dtype = DType::f32;
    st = tc::gemm(g);
    CHECK(!st.ok && st.code == Code::DTYPE, "f32 gemm: expected DTYPE");
    g.dtype = DType::f16;
    g.b_trans = false;
    st = tc::gemm(g);
    CHECK(!st.ok && st.code == Code::UNSUPPORTED, "b_trans = false: expected UNSUPPORTED");
    g.b_trans = true;
    g.lda = 16;
    st = tc::gemm(g);
    CHECK(!st.ok && st.code == Code::INVALID_ARG, "lda < K: expected INVALID_ARG");
  }
  // rope: a table of rot_dim floats beyond 48 KiB is refused; x untouched.
  {
    const int64_t hd = 16384;
    Buf x(DType::f32, hd);
    for (size_t i = 0; i < x.n; ++i) x.set(i, 1.0);
    int32_t pos = 5;
    RopeArgs a{DType::f32, 1, 1, hd, hd, x.p(), &pos, 10000.f, 1.f, false};
    tc::Status st = tc::rope(a);
    CHECK(!st.ok && st.code == Code::UNSUPPORTED, "rope rot_dim 16384: expected UNSUPPORTED");
    bool same = true;
    for (size_t i = 0; i < x.n; ++i) same = same && x.get(i) == 1.0;
    CHECK(same, "a refused rope launch wrote x");
    std::printf("  refused: %s\n", st.message.c_str());
    a.rot_dim = 7;
    CHECK(!tc::rope(a).ok, "rope odd rot_dim must be refused");
  }
  // The generic checks.
  tc::DeviceLimits lim;
  CHECK(!tc::check_launch("k", {dim3(1), dim3(2048), 0, 0}, lim).ok, "block of 2048 threads accepted");
  CHECK(!tc::check_launch("k", {dim3(1), dim3(32, 32, 2), 0, 0}, lim).ok, "block 32x32x2 accepted");
  CHECK(!tc::check_launch("k", {dim3(1, 70000), dim3(32), 0, 0}, lim).ok, "grid.y 70000 accepted");
  CHECK(!tc::check_launch("k", {dim3(1), dim3(32), 0, size_t(49) << 10}, lim).ok, "49 KiB static shared accepted");
  CHECK(!tc::check_launch("k", {dim3(1), dim3(32), size_t(228) << 10, 0}, lim).ok, "228 KiB dynamic shared accepted");
  CHECK(tc::check_launch("k", {dim3(0x7fffffffu, 65535, 65535), dim3(1024), size_t(227) << 10, 0}, lim).ok, "the maxima refused");
  CHECK(!tc::binary({BinaryOp::add, DType::fp8e4m3, 1, 1, nullptr, nullptr, false, nullptr}).ok, "binary fp8 accepted");
}

// ---- driver -----------------------------------------------------------------------------------
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
  std::printf("%s %-28s %8.0f ms\n", gFailures == before ? "ok  " : "FAIL", name, ms);
}

int main(int argc, char** argv) {
  const bool verbose = argc > 1 && std::string(argv[1]) == "-v";
  const cuemu::Schedule orders[] = {{cuemu::Order::Forward, 0}, {cuemu::Order::Reverse, 0}};
  for (const auto& s : orders) {
    cuemu::set_schedule(s);
    std::printf("== schedule %s\n", cuemu::schedule_name(s).c_str());
    run_test("binary", test_binary);
    run_test("silu_mul", test_silu_mul);
    run_test("rms_norm", test_rms_norm);
    run_test("rope", test_rope);
    run_test("softmax", test_softmax);
    run_test("embedding", test_embedding);
    run_test("gemm", test_gemm);
    run_test("gemm one-hot small tile", [&] {
      test_gemm_onehot(DType::f16, tc::GemmTileChoice::small, 33, 40, 72, verbose);
      test_gemm_onehot(DType::bf16, tc::GemmTileChoice::small, 33, 40, 72, verbose);
    });
    run_test("gemm one-hot large tile", [&] {
      // Two blocks down M for f16 (multi-block N is covered by the dense 130x136x200 case).
      test_gemm_onehot(DType::f16, tc::GemmTileChoice::large, 130, 40, 40, verbose);
      test_gemm_onehot(DType::bf16, tc::GemmTileChoice::large, 33, 40, 40, verbose);
    });
    run_test("gemm broken: no barrier", [] { test_gemm_broken<1>("no __syncthreads between stages"); });
    run_test("gemm broken: no cp.async wait", [] { test_gemm_broken<2>("no cp_async_wait"); });
    run_test("launch checks", test_launch_checks);
  }
  std::printf("%d checks, %d failures\n", gChecks, gFailures);
  return gFailures == 0 ? 0 : 1;
}
