// Test driver for the GEMM kernel (native/cpu/kernels/gemm.cpp) against ty::ref::gemm_ref.
// Built and run by native/tests/gemm_test.sh. Exits non-zero on any mismatch.
//
// Every ISA variant the CPU can run (plus "avx512emu": the AVX-512 code path built over a
// scalar emulation of its intrinsics, see gemm_avx512_emu.h) x dtype x c_dtype x b_trans x
// epilogue (alpha, beta, bias) x shapes, with padded leading dimensions, 1 and 2 threads.
//
// Error bound, per element, with exact = the double-precision result and
// S = |alpha|·Σ_k|a_ik·b_kj| + |beta·C_ij| + |bias_j| (inputs are exact in their dtype):
//   |got - exact| <= e_acc·(1 + u_out) + u_out·|exact| + a_out
//   e_acc = (2K + 8)·2^-24·S   f32 accumulation: a K-term FMA chain is within K·u·S
//                              (Higham's γ_K); chunked K (C += alpha·partial per chunk)
//                              and the epilogue add a few roundings, hence 2K + 8.
//   u_out = 2^-24 | 2^-11 | 2^-8 and a_out = 0 | 2^-25 | 2^-133 for f32 | f16 | bf16 C:
//                              one round-to-nearest of the output (a_out: half the
//                              smallest subnormal step).
// Also checked: beta = 0 never reads C (C starts as NaN), C's padding columns (ldc > N)
// are untouched, and nothing is read past the end of A/B/C or scratch (each buffer ends
// at a PROT_NONE guard page).
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "kernels.h"
#include "ref/ref.h"

namespace ty::cpu::avx512emu { void gemm(const ty::GemmArgs&, ty::Parallel&); }

using ty::DType;

// ---- buffers that end at a guard page -----------------------------------------------
struct Guarded {
  void* map = nullptr;
  size_t map_len = 0;
  char* p = nullptr;
  Guarded() = default;
  explicit Guarded(size_t bytes) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t body = (bytes + page - 1) / page * page;
    map_len = body + page;
    map = mmap(nullptr, map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (map == MAP_FAILED) { perror("mmap"); std::exit(2); }
    mprotect((char*)map + body, page, PROT_NONE);
    p = (char*)map + body - bytes;
  }
  Guarded(const Guarded&) = delete;
  Guarded& operator=(const Guarded&) = delete;
  Guarded(Guarded&& o) noexcept { *this = std::move(o); }
  Guarded& operator=(Guarded&& o) noexcept {
    std::swap(map, o.map); std::swap(map_len, o.map_len); std::swap(p, o.p);
    return *this;
  }
  ~Guarded() { if (map) munmap(map, map_len); }
};

// ---- a simple Parallel: std::threads per run(), dynamic task counter ----------------
class ThreadParallel final : public ty::Parallel {
 public:
  explicit ThreadParallel(int n) : n_(n), scratch_(n) {}
  int threads() const override { return n_; }
  void run(int64_t n_tasks, ty::TaskFn fn, void* ctx) override {
    std::atomic<int64_t> next{0};
    auto work = [&](int th) {
      for (int64_t t; (t = next.fetch_add(1)) < n_tasks;) fn(ctx, t, th);
    };
    std::vector<std::thread> ts;
    for (int i = 1; i < n_; ++i) ts.emplace_back(work, i);
    work(0);
    for (auto& t : ts) t.join();
  }
  // Scratch ends at a guard page too (the kernel asks for 64-byte multiples, so the
  // returned pointer stays 64-byte aligned).
  void* scratch(int thread, size_t bytes) override {
    Guarded& g = scratch_[thread];
    size_t want = (bytes + 63) / 64 * 64;
    if (!g.p || cap_(g) < want) g = Guarded(want);
    return g.p + cap_(g) - want;
  }
 private:
  static size_t cap_(const Guarded& g) { return (size_t)((char*)g.map + g.map_len - (size_t)sysconf(_SC_PAGESIZE) - g.p); }
  int n_;
  std::vector<Guarded> scratch_;
};

// ---- helpers -------------------------------------------------------------------------
static int esz(DType t) { return t == DType::f32 ? 4 : 2; }
static uint32_t to_bits(DType t, float v) {
  if (t == DType::f32) return ty::f32_bits(v);
  return t == DType::f16 ? ty::f32_to_f16(v) : ty::f32_to_bf16(v);
}
static void put(char* base, DType t, int64_t idx, float v) {
  uint32_t b = to_bits(t, v);
  std::memcpy(base + idx * esz(t), &b, (size_t)esz(t));
}
static double get(const char* base, DType t, int64_t idx) {
  if (t == DType::f32) { float f; std::memcpy(&f, base + idx * 4, 4); return f; }
  uint16_t h;
  std::memcpy(&h, base + idx * 2, 2);
  return t == DType::f16 ? ty::f16_to_f32(h) : ty::bf16_to_f32(h);
}

struct Variant { const char* name; void (*fn)(const ty::GemmArgs&, ty::Parallel&); };

struct Shape { int64_t M, N, K; };
struct Epi { float alpha, beta; bool bias; };

static int g_fail = 0, g_cases = 0;

static bool run_case(const Variant& v, ty::Parallel& par, const Shape& s, DType dt, DType cdt, bool bt,
                     const Epi& e, int pad, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> U(-1.f, 1.f);
  const int64_t M = s.M, N = s.N, K = s.K;
  const int64_t lda = K + pad, ldb = (bt ? K : N) + (pad ? pad + 3 : 0), ldc = N + (pad ? 2 * pad + 1 : 0);
  const int64_t a_n = (M - 1) * lda + K, c_n = (M - 1) * ldc + N;
  const int64_t b_n = K == 0 ? 0 : bt ? (N - 1) * ldb + K : (K - 1) * ldb + N;
  Guarded A(a_n * esz(dt)), B(b_n * esz(dt)), C(c_n * esz(cdt)), Cref(c_n * esz(cdt));
  for (int64_t i = 0; i < a_n; ++i) put(A.p, dt, i, U(rng));
  for (int64_t i = 0; i < b_n; ++i) put(B.p, dt, i, U(rng));
  for (int64_t i = 0; i < c_n; ++i) put(C.p, cdt, i, e.beta != 0.f ? U(rng) : NAN);  // beta = 0: C must not be read
  std::memcpy(Cref.p, C.p, c_n * esz(cdt));
  std::vector<float> bias(N);
  for (auto& b : bias) b = U(rng);

  ty::GemmArgs g{dt, cdt, M, N, K, A.p, lda, B.p, ldb, bt, C.p, ldc, e.bias ? bias.data() : nullptr, e.alpha, e.beta};
  v.fn(g, par);
  std::vector<double> exact(M * N), mag(M * N);
  ty::GemmArgs gr = g;
  gr.C = Cref.p;
  ty::ref::gemm_ref(gr, exact.data(), mag.data());

  const double u = std::ldexp(1.0, -24);
  const double u_out = cdt == DType::f32 ? u : cdt == DType::f16 ? std::ldexp(1.0, -11) : std::ldexp(1.0, -8);
  const double a_out = cdt == DType::f32 ? 0 : cdt == DType::f16 ? std::ldexp(1.0, -25) : std::ldexp(1.0, -133);
  int bad = 0;
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t j = 0; j < N; ++j) {
      double got = get(C.p, cdt, i * ldc + j), x = exact[i * N + j];
      double e_acc = (2.0 * K + 8) * u * mag[i * N + j];
      double tol = e_acc * (1 + u_out) + u_out * std::fabs(x) + a_out;
      if (!(std::fabs(got - x) <= tol)) {
        if (bad++ < 3)
          std::printf("  MISMATCH %s %s->%s bt=%d M=%lld N=%lld K=%lld alpha=%g beta=%g bias=%d pad=%d threads=%d at (%lld,%lld): got %.9g want %.9g tol %.3g\n",
                      v.name, ty::dtype_name(dt), ty::dtype_name(cdt), bt, (long long)M, (long long)N, (long long)K,
                      e.alpha, e.beta, e.bias, pad, par.threads(), (long long)i, (long long)j, got, x, tol);
      }
    }
    for (int64_t j = N; j < ldc && i < M - 1; ++j)  // padding columns: bytes unchanged
      if (std::memcmp(C.p + (i * ldc + j) * esz(cdt), Cref.p + (i * ldc + j) * esz(cdt), esz(cdt))) {
        if (bad++ < 3) std::printf("  PADDING WRITTEN %s at (%lld,%lld)\n", v.name, (long long)i, (long long)j);
      }
  }
  ++g_cases;
  if (bad) ++g_fail;
  return bad == 0;
}

int main(int argc, char** argv) {
  const char* only = std::getenv("GEMM_TEST_ISAS");  // e.g. "scalar,avx2"
  std::vector<Variant> vars;
  auto want = [&](const char* n) {  // exact, comma-separated names
    if (!only) return true;
    std::string list = std::string(",") + only + ",";
    return list.find(std::string(",") + n + ",") != std::string::npos;
  };
  __builtin_cpu_init();
  bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  bool has_512 = has_avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                 __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                 __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bf16") &&
                 __builtin_cpu_supports("avx512vbmi");
  if (want("scalar")) vars.push_back({"scalar", &ty::cpu::scalar::gemm});
  if (has_avx2 && want("avx2")) vars.push_back({"avx2", &ty::cpu::avx2::gemm});
  if (has_512 && want("avx512")) vars.push_back({"avx512", &ty::cpu::avx512::gemm});
  if (has_avx2 && want("avx512emu")) vars.push_back({"avx512emu", &ty::cpu::avx512emu::gemm});
  if (!has_512) std::printf("note: this CPU has no AVX-512 (BF16/VNNI/VBMI); the avx512 variant is checked only through avx512emu\n");
  (void)argc; (void)argv;

  const Shape shapes[] = {{1, 1, 1},     {1, 17, 33},   {7, 5, 3},      {13, 31, 257}, {64, 64, 64},
                          {1, 300, 70},  {200, 3, 50},  {127, 129, 300}, {5, 40, 1030}, {600, 70, 1000},
                          {2, 37, 4500} /* small M: long K chunks, several */, {3, 5, 0} /* K = 0: C = beta*C + bias */};
  const DType dts[] = {DType::f32, DType::f16, DType::bf16};
  const Epi epis[] = {{1.f, 0.f, false}, {0.5f, 0.f, true}, {-1.25f, 0.75f, true}, {2.f, -1.f, false}};
  ThreadParallel par2(2);
  ty::SerialParallel par1;

  auto t0 = std::chrono::steady_clock::now();
  for (const Variant& v : vars) {
    int fails_before = g_fail, cases_before = g_cases;
    auto tv = std::chrono::steady_clock::now();
    uint64_t seed = 1;
    for (const Shape& s : shapes) {
      const double work = (double)s.M * s.N * s.K;
      int combo = 0;
      for (DType dt : dts)
        for (DType cdt : dts)
          for (int bt = 0; bt < 2; ++bt)
            for (int ei = 0; ei < 4; ++ei, ++combo) {
              // Big shapes: a rotating subset (every dtype pair, both layouts, each
              // epilogue somewhere) so the whole run stays well under a minute.
              if (work > 2e6 && (combo % 4) != ((bt * 2 + combo / 8) % 4)) continue;
              if (work > 2e7 && (combo / 4) % 2 != ((int)s.K + combo / 8) % 2) continue;
              int pad = (combo + (int)s.M) % 3 == 0 ? 0 : (combo % 5) + 1;
              ty::Parallel& par = combo % 3 == 2 ? (ty::Parallel&)par1 : (ty::Parallel&)par2;
              run_case(v, par, s, dt, cdt, bt != 0, epis[ei], pad, seed++);
            }
    }
    double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - tv).count();
    std::printf("%-10s %4d cases, %d failed (%.1f s)\n", v.name, g_cases - cases_before, g_fail - fails_before, sec);
    std::fflush(stdout);
  }
  double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("gemm_test: %.1f s\n%d passed, %d failed\n", sec, g_cases - g_fail, g_fail);
  return g_fail ? 1 : 0;
}
