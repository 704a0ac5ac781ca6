// Test driver for the small-op kernels (binary, silu_mul, rms_norm, rope, softmax,
// embedding) in every ISA variant against the double-precision references in
// native/cpu/ref/small_ops_ref.cpp. Built and run by native/tests/small_ops_test.sh.
//
//   small_ops_test                 correctness over odd shapes, all dtypes (< 30 s)
//   small_ops_test --exhaustive    + every one of the 2^32 f32 patterns through the
//                                    f16/bf16 store paths, and exp over [-104, 89] densely
//   small_ops_test --bench         + throughput on 64 MiB inputs (native ISAs only)
//   --threads N                    pool size (default: hardware threads)
//
// Tolerance model, per element:  |got - ref| <= atol + rtol * |ref|  with
//   rtol = r_op + u_out * (1 + r_op),  atol = a_op + a_out
// where (u_out, a_out) is one rounding of the output dtype (f32: 0, 2^-150;
// f16: 2^-11, 2^-25; bf16: 2^-8, 2^-134) and r_op bounds the f32 arithmetic (eps = 2^-24):
//   binary   r_op = eps                                  (one f32 rounding)
//   silu_mul r_op = 8 eps                                (exp <= 2 ulp, +, /, *)
//   rms_norm r_op = 4 eps                                (scale, x*scale, *w; sum in double)
//   softmax  r_op = (10 + 2|t| + 2 tbar) eps, t = scale*x - max(scale*x) from the
//            reference, tbar = its e^t-weighted mean over the row (the exp argument is
//            scale*(x - m) in f32, relative error 2 eps; exp <= 2 ulp; normalisation)
//   rope     atol += |pair| * ((3i + 8) eps |theta| + 6 eps): the angle is computed in
//            f32 like llama.cpp (a running product of powf(base, -2/rot)), i = pair index
//   embedding: exact (bit-identical to dtype.h conversions)
// Non-rotated rope dims must be bit-identical to the input.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "kernels.h"
#include "ref/small_ops_ref.h"

TY_DECLARE_VARIANTS(void, softmax_exp_probe, (const float*, float*, int64_t))

using namespace ty;

// ---- a small persistent thread pool ------------------------------------------------
class TestPool final : public Parallel {
 public:
  explicit TestPool(int n) : n_(n < 1 ? 1 : n), scratch_(n_), cap_(n_, 0) {
    for (int i = 1; i < n_; ++i) th_.emplace_back([this, i] { worker(i); });
  }
  ~TestPool() override {
    { std::lock_guard<std::mutex> l(mu_); stop_ = true; }
    cv_.notify_all();
    for (auto& t : th_) t.join();
    for (void* p : scratch_) ::operator delete(p);
  }
  int threads() const override { return n_; }
  void run(int64_t n, TaskFn fn, void* ctx) override {
    ++runs;
    if (n_ == 1 || n <= 1) {
      for (int64_t t = 0; t < n; ++t) fn(ctx, t, 0);
      return;
    }
    ++multi_runs;
    {
      std::lock_guard<std::mutex> l(mu_);
      fn_ = fn; ctx_ = ctx; n_tasks_ = n;
      next_.store(0); done_.store(0);
      ++gen_;
    }
    cv_.notify_all();
    work(0);
    while (done_.load(std::memory_order_acquire) != n_ - 1) std::this_thread::yield();
  }
  void* scratch(int th, size_t bytes) override {
    if (bytes > cap_[th]) {
      ::operator delete(scratch_[th]);
      scratch_[th] = ::operator new(bytes + 64);
      cap_[th] = bytes;
      std::memset(scratch_[th], 0xA5, bytes + 64);  // garbage, as the contract allows
    }
    return (void*)(((uintptr_t)scratch_[th] + 63) & ~(uintptr_t)63);
  }
  int64_t runs = 0, multi_runs = 0;

 private:
  void work(int th) {
    for (int64_t t; (t = next_.fetch_add(1)) < n_tasks_;) fn_(ctx_, t, th);
  }
  void worker(int th) {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> l(mu_);
        cv_.wait(l, [&] { return stop_ || gen_ != seen; });
        if (stop_) return;
        seen = gen_;
      }
      work(th);
      done_.fetch_add(1, std::memory_order_release);
    }
  }
  int n_;
  std::vector<std::thread> th_;
  std::mutex mu_;
  std::condition_variable cv_;
  uint64_t gen_ = 0;
  bool stop_ = false;
  TaskFn fn_ = nullptr;
  void* ctx_ = nullptr;
  int64_t n_tasks_ = 0;
  std::atomic<int64_t> next_{0};
  std::atomic<int> done_{0};
  std::vector<void*> scratch_;
  std::vector<size_t> cap_;
};

// ---- variants ------------------------------------------------------------------------
struct Variant {
  const char* name;
  bool available, emulated;
  void (*binary)(const BinaryArgs&, Parallel&);
  void (*silu_mul)(const SiluMulArgs&, Parallel&);
  void (*rms_norm)(const RmsNormArgs&, Parallel&);
  void (*rope)(const RopeArgs&, Parallel&);
  void (*softmax)(const SoftmaxArgs&, Parallel&);
  void (*embedding)(const EmbeddingArgs&, Parallel&);
  void (*vexp)(const float*, float*, int64_t);
};
#define TY_VARIANT_ROW(ns, nm, avail, emu)                                                     \
  Variant{nm, avail, emu, &ty::cpu::ns::binary, &ty::cpu::ns::silu_mul, &ty::cpu::ns::rms_norm, \
          &ty::cpu::ns::rope, &ty::cpu::ns::softmax, &ty::cpu::ns::embedding,                  \
          &ty::cpu::ns::softmax_exp_probe}

static std::vector<Variant> variants() {
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#if defined(TY_TEST_AVX512_EMU)
  const bool avx512 = avx2;
  const bool emu = true;
#else
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                      __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bf16") &&
                      __builtin_cpu_supports("avx512vbmi");
  const bool emu = false;
#endif
  return {TY_VARIANT_ROW(scalar, "scalar", true, false), TY_VARIANT_ROW(avx2, "avx2", avx2, false),
          TY_VARIANT_ROW(avx512, emu ? "avx512(emu)" : "avx512", avx512, emu)};
}

// ---- buffers -------------------------------------------------------------------------
static const DType kActs[] = {DType::f32, DType::f16, DType::bf16};

struct Buf {
  DType t;
  int64_t n;
  std::vector<uint8_t> bytes;
  Buf(DType t_, int64_t n_) : t(t_), n(n_), bytes(dtype_bytes(t_, n_) + 64) {}
  void* p() { return bytes.data(); }
  double get(int64_t i) const {
    const uint8_t* b = bytes.data();
    if (t == DType::f32) { float f; std::memcpy(&f, b + 4 * i, 4); return f; }
    uint16_t h; std::memcpy(&h, b + 2 * i, 2);
    return t == DType::f16 ? f16_to_f32(h) : bf16_to_f32(h);
  }
  void set(int64_t i, float v) {
    uint8_t* b = bytes.data();
    if (t == DType::f32) { std::memcpy(b + 4 * i, &v, 4); return; }
    uint16_t h = t == DType::f16 ? f32_to_f16(v) : f32_to_bf16(v);
    std::memcpy(b + 2 * i, &h, 2);
  }
};

static std::mt19937_64 rng(12345);
static float urand(float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(rng); }
static void fill(Buf& b, float lo, float hi) { for (int64_t i = 0; i < b.n; ++i) b.set(i, urand(lo, hi)); }
// Values with a spread of magnitudes: sign * 2^u, u in [lo2, hi2].
static void fill_log(Buf& b, float lo2, float hi2) {
  for (int64_t i = 0; i < b.n; ++i) b.set(i, (rng() & 1 ? -1.f : 1.f) * std::exp2(urand(lo2, hi2)));
}

// ---- checking ------------------------------------------------------------------------
static const double kEps = 5.9604644775390625e-08;  // 2^-24
static double out_u(DType t) { return t == DType::f16 ? 0x1p-11 : t == DType::bf16 ? 0x1p-8 : 0.0; }
static double out_a(DType t) { return t == DType::f16 ? 0x1p-25 : t == DType::bf16 ? 0x1p-134 : 0x1p-150; }

struct Stat {
  int64_t cases = 0, checked = 0, bad = 0;
  double worst = 0;  // max err/tol
};
static int g_failed_cases = 0, g_passed_cases = 0;

// tol(i) gives (atol_op, r_op) for element i; returns true when all pass.
template <class TolFn>
static bool check(const char* what, const Buf& got, const std::vector<double>& ref, TolFn tol, Stat& st) {
  int64_t bad = 0;
  for (int64_t i = 0; i < got.n; ++i) {
    const double g = got.get(i), r = ref[i];
    double a_op, r_op;
    tol(i, a_op, r_op);
    const double lim = a_op + out_a(got.t) + (r_op + out_u(got.t) * (1 + r_op)) * std::fabs(r);
    const double err = std::fabs(g - r);
    // f16 overflow: a result within tolerance of >= 65520 may round to inf
    if (got.t == DType::f16 && std::isinf(g) && (g > 0) == (r > 0) && std::fabs(r) * (1 + r_op) + a_op >= 65520.0)
      continue;
    const bool ok = err <= lim || (std::isnan(g) && std::isnan(r)) || (g == r);
    if (!std::isnan(err) && lim > 0) st.worst = std::max(st.worst, err / lim);
    if (!ok) {
      if (bad < 5) std::printf("  FAIL %s [%lld]: got %.9g ref %.9g err %.3g tol %.3g\n", what, (long long)i, g, r, err, lim);
      ++bad;
    }
  }
  st.checked += got.n;
  st.bad += bad;
  ++st.cases;
  if (bad) ++g_failed_cases; else ++g_passed_cases;
  return bad == 0;
}

static void report(const char* op, const Variant& v, DType t, const Stat& st) {
  std::printf("%-10s %-12s %-5s cases %4lld  elems %9lld  worst err/tol %.3f  %s\n", op, v.name, dtype_name(t),
              (long long)st.cases, (long long)st.checked, st.worst, st.bad ? "FAIL" : "ok");
}

static const int64_t kCols[] = {1, 3, 17, 33, 127, 4097};
static const int64_t kRows[] = {1, 3, 5};

// ---- binary --------------------------------------------------------------------------
static void test_binary(const Variant& v, Parallel& par) {
  for (DType t : kActs) {
    Stat st;
    auto one = [&](int64_t rows, int64_t cols, BinaryOp op, bool bc, int alias) {
      Buf a(t, rows * cols), b(t, bc ? cols : rows * cols), o(t, rows * cols);
      fill_log(a, -6, 6);
      fill_log(b, -6, 6);
      BinaryArgs args{op, t, rows, cols, a.p(), b.p(), bc, o.p()};
      std::vector<double> ref(rows * cols);
      ref::binary_ref(args, ref.data());
      Buf* out = &o;
      if (alias == 1) { args.out = a.p(); out = &a; }
      if (alias == 2) { args.out = b.p(); out = &b; }
      v.binary(args, par);
      char what[96];
      std::snprintf(what, sizeof what, "binary %s %s %lldx%lld bc=%d alias=%d", op == BinaryOp::add ? "add" : "mul",
                    dtype_name(t), (long long)rows, (long long)cols, bc, alias);
      check(what, *out, ref, [](int64_t, double& a_, double& r_) { a_ = 0; r_ = kEps; }, st);
    };
    for (BinaryOp op : {BinaryOp::add, BinaryOp::mul})
      for (int64_t r : kRows)
        for (int64_t c : kCols)
          for (bool bc : {false, true}) one(r, c, op, bc, 0);
    one(257, 300, BinaryOp::add, false, 0);
    one(257, 300, BinaryOp::mul, true, 0);
    one(7, 4097, BinaryOp::add, false, 1);
    one(7, 4097, BinaryOp::mul, false, 2);
    one(1, 33, BinaryOp::add, true, 2);
    report("binary", v, t, st);
  }
}

// ---- silu_mul ------------------------------------------------------------------------
static void test_silu(const Variant& v, Parallel& par) {
  for (DType t : kActs) {
    Stat st;
    for (int64_t n : {1, 3, 17, 33, 127, 4097, 70001}) {
      for (int alias = 0; alias < 2; ++alias) {
        Buf g(t, n), u(t, n), o(t, n);
        fill(g, -20, 20);
        fill_log(u, -4, 4);
        const float ext[] = {0.f, -0.f, 100.f, -100.f, 88.f, -88.f, 89.f, -89.f, 1e-30f, -1e-30f, 30000.f, -30000.f};
        for (int64_t i = 0; i < n && i < 12; ++i) g.set(i * 7 % n, ext[i]);
        const Buf g0 = g;
        SiluMulArgs args{t, n, g.p(), u.p(), alias ? g.p() : o.p()};
        std::vector<double> ref(n);
        ref::silu_mul_ref(args, ref.data());
        v.silu_mul(args, par);
        char what[64];
        std::snprintf(what, sizeof what, "silu_mul %s n=%lld alias=%d", dtype_name(t), (long long)n, alias);
        // below g = -87.3, e^g is an f32 subnormal (absolute error 2^-150): scaled by |g*u|
        check(what, alias ? g : o, ref, [&](int64_t i, double& a_, double& r_) {
          a_ = (std::fabs(g0.get(i)) + 1) * std::fabs(u.get(i)) * 0x1p-149;
          r_ = 8 * kEps;
        }, st);
      }
    }
    report("silu_mul", v, t, st);
  }
}

// ---- rms_norm ------------------------------------------------------------------------
static void test_rms(const Variant& v, Parallel& par) {
  for (DType t : kActs) {
    Stat st;
    auto one = [&](int64_t rows, int64_t cols, bool w, float eps, int kind, bool alias) {
      Buf x(t, rows * cols), o(t, rows * cols);
      if (kind == 0) fill(x, -3, 3);
      else fill_log(x, t == DType::f16 ? -10.f : -60.f, t == DType::f16 ? 15.f : 60.f);  // wide magnitudes
      for (int64_t c = 0; c < cols && rows > 1; ++c) x.set(cols + c, 0.0f);  // row 1: zeros
      std::vector<float> wt(cols);
      for (auto& e : wt) e = urand(0.5f, 2.0f);
      RmsNormArgs args{t, rows, cols, x.p(), w ? wt.data() : nullptr, eps, alias ? x.p() : o.p()};
      std::vector<double> ref(rows * cols);
      ref::rms_norm_ref(args, ref.data());
      v.rms_norm(args, par);
      char what[96];
      std::snprintf(what, sizeof what, "rms_norm %s %lldx%lld w=%d eps=%g kind=%d alias=%d", dtype_name(t),
                    (long long)rows, (long long)cols, w, eps, kind, alias);
      check(what, alias ? x : o, ref, [](int64_t, double& a_, double& r_) { a_ = 0; r_ = 4 * kEps; }, st);
    };
    for (int64_t r : kRows)
      for (int64_t c : kCols) {
        one(r, c, true, 1e-6f, 0, false);
        one(r, c, false, 1e-5f, 1, false);
      }
    one(300, 257, true, 1e-5f, 0, true);
    one(9, 4097, true, 1e-6f, 1, true);
    report("rms_norm", v, t, st);
  }
}

// ---- rope ----------------------------------------------------------------------------
static void test_rope(const Variant& v, Parallel& par) {
  struct Dims { int64_t hd, rot; };
  const Dims dims[] = {{64, 64}, {64, 32}, {80, 80}, {80, 32}, {80, 34}, {128, 128}, {128, 64}, {128, 2}, {2, 2}};
  for (DType t : kActs) {
    Stat st;
    auto one = [&](int64_t tokens, int64_t heads, Dims d, bool neox, float base, float fscale, int32_t maxpos) {
      const int64_t n = tokens * heads * d.hd;
      Buf x(t, n);
      fill(x, -2, 2);
      std::vector<int32_t> pos(tokens);
      for (auto& p : pos) p = (int32_t)(rng() % (uint64_t)(maxpos + 1));
      pos[0] = 0;
      if (tokens > 1) pos[tokens - 1] = maxpos;
      Buf x0 = x;
      RopeArgs args{t, tokens, heads, d.hd, d.rot, x.p(), pos.data(), base, fscale, neox};
      std::vector<double> ref(n);
      ref::rope_ref(args, ref.data());
      v.rope(args, par);
      const int64_t half = d.rot / 2;
      bool ok_pass = true;
      for (int64_t i = 0; i < n; ++i)
        if (i % d.hd >= d.rot && std::memcmp(&x.bytes[i * (t == DType::f32 ? 4 : 2)],
                                             &x0.bytes[i * (t == DType::f32 ? 4 : 2)], t == DType::f32 ? 4 : 2)) ok_pass = false;
      char what[128];
      std::snprintf(what, sizeof what, "rope %s t=%lld h=%lld hd=%lld rot=%lld neox=%d base=%g fs=%g maxpos=%d",
                    dtype_name(t), (long long)tokens, (long long)heads, (long long)d.hd, (long long)d.rot, neox, base,
                    fscale, maxpos);
      if (!ok_pass) { std::printf("  FAIL %s: non-rotated dims changed\n", what); ++st.bad; ++g_failed_cases; }
      check(what, x, ref, [&](int64_t i, double& a_, double& r_) {
        const int64_t tok = i / (heads * d.hd), dd = i % d.hd, base_i = i - dd;
        r_ = 0;
        a_ = 0;
        if (dd >= d.rot) return;
        const int64_t pair = neox ? (dd < half ? dd : dd - half) : dd / 2;
        const int64_t ia = neox ? pair : 2 * pair, ib = neox ? pair + half : 2 * pair + 1;
        const double xa = x0.get(base_i + ia), xb = x0.get(base_i + ib), norm = std::sqrt(xa * xa + xb * xb);
        const double theta = (double)pos[tok] * fscale * std::pow((double)base, -2.0 * pair / d.rot);
        a_ = norm * ((3.0 * pair + 8) * kEps * std::fabs(theta) + 6 * kEps);
      }, st);
    };
    for (const Dims& d : dims)
      for (bool neox : {false, true}) {
        one(1, 1, d, neox, 10000.f, 1.f, 7);
        one(5, 3, d, neox, 10000.f, 1.f, 4096);
        one(33, 8, d, neox, 500000.f, 0.25f, 8191);
      }
    one(3, 4, {128, 128}, false, 10000.f, 1.f, 100000);
    one(3, 4, {128, 96}, true, 1000000.f, 1.f, 100000);
    one(130, 32, {128, 128}, true, 10000.f, 1.f, 4096);  // several tasks
    report("rope", v, t, st);
  }
}

// ---- softmax -------------------------------------------------------------------------
static void test_softmax(const Variant& v, Parallel& par) {
  for (DType t : kActs) {
    Stat st;
    auto one = [&](int64_t rows, int64_t cols, float scale, int kind, bool alias) {
      Buf x(t, rows * cols), o(t, rows * cols);
      if (kind == 0) fill(x, -8, 8);
      if (kind == 1) fill(x, t == DType::f16 ? -60000.f : -1e4f, t == DType::f16 ? 60000.f : 1e4f);  // large magnitude
      if (kind == 2) {  // masked: -inf entries, row 0 fully masked
        fill(x, -8, 8);
        for (int64_t i = 0; i < x.n; ++i)
          if (i < cols || rng() % 3 == 0) x.set(i, -INFINITY);
      }
      if (kind == 3) {  // near-ties around a large value
        for (int64_t i = 0; i < x.n; ++i) x.set(i, 3000.f + urand(-4, 4));
      }
      SoftmaxArgs args{t, rows, cols, x.p(), scale, alias ? x.p() : o.p()};
      std::vector<double> ref(rows * cols), tv(rows * cols), tbar(rows);
      ref::softmax_ref(args, ref.data());
      for (int64_t r = 0; r < rows; ++r) {  // t = y - max y and its weighted mean
        double m = -INFINITY;
        for (int64_t c = 0; c < cols; ++c) m = std::fmax(m, (double)scale * x.get(r * cols + c));
        double s = 0, w = 0;
        for (int64_t c = 0; c < cols; ++c) {
          const double tt = (double)scale * x.get(r * cols + c) - m;
          tv[r * cols + c] = std::isfinite(tt) ? std::fabs(tt) : 0;
          if (std::isfinite(tt)) { s += std::exp(tt) * std::fabs(tt); w += std::exp(tt); }
        }
        tbar[r] = w > 0 ? s / w : 0;
      }
      v.softmax(args, par);
      char what[96];
      std::snprintf(what, sizeof what, "softmax %s %lldx%lld scale=%g kind=%d alias=%d", dtype_name(t), (long long)rows,
                    (long long)cols, scale, kind, alias);
      check(what, alias ? x : o, ref, [&](int64_t i, double& a_, double& r_) {
        a_ = 0x1p-150;  // a subnormal e^t (f32 output only matters)
        r_ = (10 + 2 * tv[i] + 2 * tbar[i / cols]) * kEps;
      }, st);
    };
    for (int64_t r : kRows)
      for (int64_t c : kCols)
        for (int kind = 0; kind < 4; ++kind) one(r, c, kind == 1 ? 1.0f : 0.0883883f, kind, false);
    one(3, 127, -0.5f, 0, false);
    one(3, 4097, 1.0f, 2, true);
    one(300, 257, 1.0f, 0, true);
    one(2, 4097, 0.0f, 0, false);
    report("softmax", v, t, st);
  }
}

// ---- embedding -----------------------------------------------------------------------
static void test_embedding(const Variant& v, Parallel& par) {
  struct Shape { int64_t vocab, dim, tokens; };
  const Shape shapes[] = {{7, 1, 5}, {11, 3, 9}, {50, 17, 33}, {40, 33, 3}, {20, 4097, 7}, {1000, 64, 700}};
  for (DType ti : kActs) {
    Stat st;
    for (DType to : kActs)
      for (const Shape& s : shapes) {
        Buf table(ti, s.vocab * s.dim), out(to, s.tokens * s.dim);
        fill_log(table, -30, 30);
        std::vector<int32_t> ids(s.tokens);
        for (auto& id : ids) id = (int32_t)(rng() % (uint64_t)s.vocab);
        EmbeddingArgs args{ti, to, s.vocab, s.dim, s.tokens, table.p(), ids.data(), out.p()};
        std::vector<double> ref(s.tokens * s.dim);
        ref::embedding_ref(args, ref.data());
        // exact expectation: one dtype.h rounding of the (exactly representable) f32 value
        Buf want(to, s.tokens * s.dim);
        for (int64_t i = 0; i < want.n; ++i) want.set(i, (float)ref[i]);
        v.embedding(args, par);
        const bool same = std::memcmp(out.bytes.data(), want.bytes.data(), dtype_bytes(to, want.n)) == 0;
        st.cases++;
        st.checked += out.n;
        if (same) { ++g_passed_cases; continue; }
        st.bad++;
        ++g_failed_cases;
        std::printf("  FAIL embedding %s->%s %lldx%lld t=%lld: not bit-identical to dtype.h\n", dtype_name(ti),
                    dtype_name(to), (long long)s.vocab, (long long)s.dim, (long long)s.tokens);
      }
    report("embedding", v, ti, st);
  }
}

// ---- conversions (through embedding, which is a pure convert) -----------------------
// Every f32 pattern in [lo, hi) of 32-bit space is converted to f16 and bf16 by the
// variant and compared bit for bit with dtype.h.
static int64_t convert_range(const Variant& v, Parallel& par, uint64_t lo, uint64_t hi, const uint32_t* list,
                             int64_t list_n) {
  const int64_t dim = 4096;
  const int64_t n = list ? list_n : (int64_t)(hi - lo);
  const int64_t rows = (n + dim - 1) / dim;
  std::vector<uint32_t> src(rows * dim, 0);
  for (int64_t i = 0; i < n; ++i) src[i] = list ? list[i] : (uint32_t)(lo + i);
  std::vector<int32_t> ids(rows);
  for (int64_t r = 0; r < rows; ++r) ids[r] = (int32_t)r;
  std::vector<uint16_t> out(rows * dim);
  int64_t bad = 0;
  for (DType to : {DType::f16, DType::bf16}) {
    EmbeddingArgs args{DType::f32, to, rows, dim, rows, src.data(), ids.data(), out.data()};
    v.embedding(args, par);
    for (int64_t i = 0; i < n; ++i) {
      float f;
      std::memcpy(&f, &src[i], 4);
      const uint16_t want = to == DType::f16 ? f32_to_f16(f) : f32_to_bf16(f);
      if (out[i] != want) {
        if (bad < 5)
          std::printf("  FAIL convert f32 0x%08x -> %s: got 0x%04x want 0x%04x\n", src[i], dtype_name(to), out[i], want);
        ++bad;
      }
    }
  }
  return bad;
}

static void test_conversions(const Variant& v, Parallel& par, bool exhaustive) {
  int64_t bad = 0, count = 0;
  if (exhaustive) {
    const uint64_t chunk = 1ull << 24;
    for (uint64_t lo = 0; lo < (1ull << 32); lo += chunk) { bad += convert_range(v, par, lo, lo + chunk, nullptr, 0); count += chunk; }
  } else {
    // every sign/exponent/top-mantissa combination x the low halves that decide rounding
    std::vector<uint32_t> lows = {0, 1, 0x0fff, 0x1000, 0x1001, 0x1fff, 0x2000, 0x2001, 0x3000, 0x5fff, 0x6000,
                                  0x7fff, 0x8000, 0x8001, 0x9000, 0xa000, 0xefff, 0xf000, 0xf001, 0xffff};
    for (int k = 0; k < 12; ++k) lows.push_back((uint32_t)(rng() & 0xffff));
    std::vector<uint32_t> list;
    for (uint32_t hi = 0; hi < 65536; ++hi)
      for (uint32_t l : lows) list.push_back(hi << 16 | l);
    bad += convert_range(v, par, 0, 0, list.data(), (int64_t)list.size());
    count += (int64_t)list.size();
  }
  // 16-bit inputs: all 65536 f16 and bf16 patterns to every output dtype
  for (DType ti : {DType::f16, DType::bf16}) {
    std::vector<uint16_t> tab(65536);
    for (int i = 0; i < 65536; ++i) tab[i] = (uint16_t)i;
    std::vector<int32_t> ids(16);
    for (int i = 0; i < 16; ++i) ids[i] = i;
    for (DType to : kActs) {
      std::vector<uint8_t> out(65536 * 4);
      EmbeddingArgs args{ti, to, 16, 4096, 16, tab.data(), ids.data(), out.data()};
      v.embedding(args, par);
      for (int i = 0; i < 65536; ++i) {
        const float f = ti == DType::f16 ? f16_to_f32((uint16_t)i) : bf16_to_f32((uint16_t)i);
        bool ok;
        if (to == ti) { uint16_t g; std::memcpy(&g, &out[2 * i], 2); ok = g == i; }  // a copy
        else if (to == DType::f32) { uint32_t a, b; std::memcpy(&a, &out[4 * i], 4); std::memcpy(&b, &f, 4); ok = a == b; }
        else {
          uint16_t g; std::memcpy(&g, &out[2 * i], 2);
          ok = g == (to == DType::f16 ? f32_to_f16(f) : f32_to_bf16(f));
        }
        if (!ok) { if (bad < 5) std::printf("  FAIL convert %s 0x%04x -> %s\n", dtype_name(ti), i, dtype_name(to)); ++bad; }
      }
      count += 65536;
    }
  }
  std::printf("%-10s %-12s       %s %lld values, %lld mismatches  %s\n", "convert", v.name,
              exhaustive ? "exhaustive" : "sampled", (long long)count, (long long)bad, bad ? "FAIL" : "ok");
  if (bad) ++g_failed_cases; else ++g_passed_cases;
}

// ---- exp ---------------------------------------------------------------------------
static void test_exp(const Variant& v, bool exhaustive) {
  double worst_rel = 0, worst_ulp = 0;
  float worst_x = 0;
  int64_t points = 0;
  std::vector<float> xs, ys;
  auto eval = [&] {
    ys.resize(xs.size());
    v.vexp(xs.data(), ys.data(), (int64_t)xs.size());
    for (size_t i = 0; i < xs.size(); ++i) {
      const double e = std::exp((double)xs[i]);
      const double rel = std::fabs(ys[i] - e) / e;
      const float ef = (float)e;
      const double ulp = std::fabs(ys[i] - e) / ((double)std::nextafter(ef, INFINITY) - ef);
      if (rel > worst_rel) { worst_rel = rel; worst_x = xs[i]; }
      worst_ulp = std::max(worst_ulp, ulp);
    }
    points += (int64_t)xs.size();
    xs.clear();
  };
  if (exhaustive) {  // every float in the range, in chunks
    for (float x = -87.33f; x <= 88.72f; x = std::nextafter(x, 100.f)) {
      xs.push_back(x);
      if (xs.size() == (1u << 24)) eval();
    }
  } else {
    for (int i = 0; i <= 2000000; ++i) xs.push_back(-87.33f + (88.72f + 87.33f) * (float)i / 2000000.f);
    for (int i = 0; i < 200000; ++i) xs.push_back(urand(-1.f, 1.f) * std::exp2(urand(-30, 0)));
  }
  eval();
  // specials and the subnormal / overflow edges
  const float sx[] = {-INFINITY, INFINITY, NAN, -200.f, -104.f, -103.9f, -100.f, -95.f, -90.f, -87.5f, 88.7f, 88.73f, 89.f, 1000.f, 0.f, -0.f};
  float sy[16];
  v.vexp(sx, sy, 16);
  bool ok_special = true;
  for (int i = 0; i < 16; ++i) {
    const double e = std::exp((double)sx[i]);
    const float ef = (float)e;  // correctly rounded (incl. subnormal / inf)
    bool ok;
    if (std::isnan(sx[i])) ok = std::isnan(sy[i]);
    else if (std::isinf(ef) || ef == 0) ok = sy[i] == ef || (ef == 0 && sy[i] <= 0x1p-149f);
    else if (ef < 0x1p-126f) ok = std::fabs(sy[i] - e) <= 0x1p-149 * 1.01;  // subnormal: within 1 ulp
    else ok = std::fabs(sy[i] - e) <= 2.5e-7 * e;
    if (!ok) { std::printf("  FAIL exp(%g) = %g, want %g\n", sx[i], sy[i], ef); ok_special = false; }
  }
  const bool ok = ok_special && worst_rel <= 3.0e-7;
  std::printf("%-10s %-12s       %lld points in [-87.33, 88.72]%s: max rel err %.3g (%.2f ulp) at x=%.7g  %s\n", "exp",
              v.name, (long long)points, exhaustive ? " (every float)" : "", worst_rel, worst_ulp, worst_x, ok ? "ok" : "FAIL");
  if (ok) ++g_passed_cases; else ++g_failed_cases;
}

// ---- bench -------------------------------------------------------------------------
static double median_ms(const std::function<void()>& f, int reps = 9) {
  f();
  std::vector<double> ts;
  for (int i = 0; i < reps; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    f();
    ts.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ts.begin(), ts.end());
  return ts[ts.size() / 2];
}

static void bench(const Variant& v, Parallel& par) {
  const int64_t N = 16 << 20;  // 16 Mi elements: 64 MiB of f32
  // Roofline measured in the same run: a parallel memcpy of 64 MiB (bytes read + written).
  double roof;
  {
    std::vector<float> src(N, 1.0f), dst(N, 0.0f);
    const int64_t chunk = 1 << 16;
    const double ms = median_ms([&] {
      par.for_each(N / chunk, [&](int64_t t, int) { std::memcpy(&dst[t * chunk], &src[t * chunk], chunk * 4); });
    });
    roof = 2.0 * N * 4 / ms / 1e6;
    std::printf("bench %-12s %-22s %-5s %8.2f ms  %6.1f GB/s\n", v.name, "memcpy (roofline)", "", ms, roof);
  }
  auto line = [&](const char* op, DType t, double bytes, double ms) {
    const double gbs = bytes / ms / 1e6;
    std::printf("bench %-12s %-22s %-5s %8.2f ms  %6.1f GB/s  %4.0f%% of memcpy\n", v.name, op, dtype_name(t), ms, gbs,
                100 * gbs / roof);
  };
  for (DType t : {DType::f32, DType::f16}) {
    const double es = t == DType::f32 ? 4 : 2;
    Buf a(t, N), b(t, N), o(t, N);
    fill(a, -3, 3);
    fill(b, -3, 3);
    BinaryArgs ba{BinaryOp::add, t, 4096, N / 4096, a.p(), b.p(), false, o.p()};
    line("binary add", t, 3 * N * es, median_ms([&] { v.binary(ba, par); }));
    SiluMulArgs sa{t, N, a.p(), b.p(), o.p()};
    line("silu_mul", t, 3 * N * es, median_ms([&] { v.silu_mul(sa, par); }));
    std::vector<float> w(4096, 1.0f);
    RmsNormArgs ra{t, N / 4096, 4096, a.p(), w.data(), 1e-6f, o.p()};
    line("rms_norm 4096", t, (2 * N * es), median_ms([&] { v.rms_norm(ra, par); }));
    SoftmaxArgs sm{t, N / 4096, 4096, a.p(), 0.088f, o.p()};
    line("softmax 4096", t, 2 * N * es, median_ms([&] { v.softmax(sm, par); }));
    std::vector<int32_t> pos(N / (32 * 128));
    for (size_t i = 0; i < pos.size(); ++i) pos[i] = (int32_t)i;
    RopeArgs ro{t, (int64_t)pos.size(), 32, 128, 128, o.p(), pos.data(), 10000.f, 1.f, true};
    line("rope neox 32x128", t, 2 * N * es, median_ms([&] { v.rope(ro, par); }));
    RopeArgs rn = ro; rn.neox = false;
    line("rope norm 32x128", t, 2 * N * es, median_ms([&] { v.rope(rn, par); }));
    std::vector<int32_t> ids(N / 2048);
    for (auto& id : ids) id = (int32_t)(rng() % ids.size());
    EmbeddingArgs ea{t, DType::f32, (int64_t)ids.size(), 2048, (int64_t)ids.size(), a.p(), ids.data(), o.p()};
    if (t == DType::f32) line("embedding f32->f32", t, 2 * N * es, median_ms([&] { v.embedding(ea, par); }));
    else {
      Buf of(DType::f32, N);
      ea.out = of.p();
      line("embedding f16->f32", t, N * (es + 4), median_ms([&] { v.embedding(ea, par); }));
    }
  }
}

int main(int argc, char** argv) {
  bool exhaustive = false, do_bench = false;
  int threads = (int)std::thread::hardware_concurrency();
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--exhaustive")) exhaustive = true;
    else if (!std::strcmp(argv[i], "--bench")) do_bench = true;
    else if (!std::strcmp(argv[i], "--threads") && i + 1 < argc) threads = std::atoi(argv[++i]);
  }
  TestPool pool(threads);
  std::printf("small_ops_test: %d threads%s\n", pool.threads(), exhaustive ? ", exhaustive" : "");
  for (const Variant& v : variants()) {
    if (!v.available) { std::printf("%s: not supported on this CPU, skipped\n", v.name); continue; }
    auto t0 = std::chrono::steady_clock::now();
    test_binary(v, pool);
    test_silu(v, pool);
    test_rms(v, pool);
    test_rope(v, pool);
    test_softmax(v, pool);
    test_embedding(v, pool);
    test_conversions(v, pool, exhaustive);
    test_exp(v, exhaustive);
    std::printf("%s: %.1f s\n", v.name, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  if (pool.multi_runs == 0) { std::printf("FAIL: no test ran more than one task\n"); ++g_failed_cases; }
  if (do_bench)
    for (const Variant& v : variants())
      if (v.available && !v.emulated) bench(v, pool);
  std::printf("%d passed, %d failed\n", g_passed_cases, g_failed_cases);
  return g_failed_cases ? 1 : 0;
}
