// Standalone GEMM benchmark: GFLOP/s and MAC/s for f32 and bf16 (A·Bᵀ, B stored [N,K])
// at 1024^3 and 4096^3 with 1 and 2 threads, next to the f32 FMA peak (and vdpbf16ps peak
// on AVX-512) measured in the same run with a register-resident microkernel.
// Build + run: native/tests/gemm_test.sh --bench [reps]
// Env: GEMM_BENCH_ISA=avx2|avx512|scalar forces a variant; GEMM_BENCH_MAXDIM=1024 skips 4096.
// Every figure is the median of `reps` (default 7) timed runs after one warm-up run.
// The machine may be shared (2 cores, other jobs time-sliced in), so besides wall-clock
// rates it reports rates per CPU-second actually given to our threads
// (CLOCK_THREAD_CPUTIME_ID summed over threads): "cpu GMAC/s" and "eff" = that rate over
// the peak loop's rate measured the same way. eff is the kernel's efficiency while it runs,
// largely independent of how much of the machine other jobs took.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <time.h>
#include <vector>

#include <immintrin.h>

#include "kernels.h"

using ty::DType;
using Clock = std::chrono::steady_clock;

static double thread_cpu_s() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// Parallel that starts its worker threads per run() (like the test driver's). The cost,
// tens of microseconds per call, is below 1% of every GEMM timed here.
class ThreadParallel final : public ty::Parallel {
 public:
  explicit ThreadParallel(int n) : n_(n), bufs_(n, nullptr), caps_(n, 0) {}
  ~ThreadParallel() override { for (void* b : bufs_) std::free(b); }
  int threads() const override { return n_; }
  double cpu_s = 0;  // CPU seconds used inside run() by all threads, summed
  void run(int64_t n_tasks, ty::TaskFn fn, void* ctx) override {
    std::atomic<int64_t> next{0};
    std::vector<double> cpu(n_); 
    auto work = [&](int th) {
      double c0 = thread_cpu_s();
      for (int64_t t; (t = next.fetch_add(1)) < n_tasks;) fn(ctx, t, th);
      cpu[th] = thread_cpu_s() - c0;
    };
    std::vector<std::thread> ts;
    for (int i = 1; i < n_; ++i) ts.emplace_back(work, i);
    work(0);
    for (auto& t : ts) t.join();
    for (double c : cpu) cpu_s += c;
  }
  void* scratch(int th, size_t bytes) override {
    if (bytes > caps_[th]) {
      std::free(bufs_[th]);
      bufs_[th] = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
      caps_[th] = bytes;
    }
    return bufs_[th];
  }
 private:
  int n_;
  std::vector<void*> bufs_;
  std::vector<size_t> caps_;
};

// ---- peak microkernels: independent accumulator chains, nothing but FMAs ----------------
static std::atomic<int> g_sink{0};
__attribute__((target("avx2,fma"))) static double peak_avx2(int64_t iters) {
  __m256 a[12], x = _mm256_set1_ps(1.0000001f), y = _mm256_set1_ps(0.9999999f);
  for (auto& v : a) v = _mm256_set1_ps((float)g_sink.load());
  for (int64_t i = 0; i < iters; ++i)
    for (auto& v : a) v = _mm256_fmadd_ps(v, x, y);
  float s = 0; for (auto& v : a) s += _mm256_cvtss_f32(v);
  g_sink += s > 1e30f;
  return (double)iters * 12 * 8;  // MACs
}
__attribute__((target("avx512f"))) static double peak_avx512(int64_t iters) {
  __m512 a[24], x = _mm512_set1_ps(1.0000001f), y = _mm512_set1_ps(0.9999999f);
  for (auto& v : a) v = _mm512_set1_ps((float)g_sink.load());
  for (int64_t i = 0; i < iters; ++i)
    for (auto& v : a) v = _mm512_fmadd_ps(v, x, y);
  float s = 0; for (auto& v : a) s += _mm512_cvtss_f32(v);
  g_sink += s > 1e30f;
  return (double)iters * 24 * 16;
}
__attribute__((target("avx512f,avx512bf16"))) static double peak_bf16(int64_t iters) {
  __m512 a[24];
  __m512bh x = (__m512bh)_mm512_set1_epi32(0x3f803f80);
  for (auto& v : a) v = _mm512_set1_ps((float)g_sink.load());
  for (int64_t i = 0; i < iters; ++i)
    for (auto& v : a) v = _mm512_dpbf16_ps(v, x, x);
  float s = 0; for (auto& v : a) s += _mm512_cvtss_f32(v);
  g_sink += s > 1e30f;
  return (double)iters * 24 * 32;
}

static double median(std::vector<double> v) { std::sort(v.begin(), v.end()); return v[v.size() / 2]; }

// MAC/s of `kernel` run on `threads` threads at once, median of reps: wall-clock rate,
// and (in *per_cpu) the rate per CPU-second of one thread.
static double measure_peak(double (*kernel)(int64_t), int threads, int reps, double* per_cpu) {
  std::vector<double> r, rc;
  const int64_t iters = 10000000;
  for (int rep = 0; rep <= reps; ++rep) {
    std::vector<double> macs(threads), cpu(threads);
    auto body = [&](int i) { double c0 = thread_cpu_s(); macs[i] = kernel(iters); cpu[i] = thread_cpu_s() - c0; };
    auto t0 = Clock::now();
    std::vector<std::thread> ts;
    for (int i = 1; i < threads; ++i) ts.emplace_back(body, i);
    body(0);
    for (auto& t : ts) t.join();
    double s = std::chrono::duration<double>(Clock::now() - t0).count(), m = 0, c = 0;
    for (int i = 0; i < threads; ++i) { m += macs[i]; c += cpu[i]; }
    if (rep) { r.push_back(m / s); rc.push_back(m / c); }  // rep 0 = warm-up
  }
  *per_cpu = median(rc);
  return median(r);
}

int main(int argc, char** argv) {
  int reps = argc > 1 ? std::atoi(argv[1]) : 7;
  if (reps < 1) reps = 1;
  __builtin_cpu_init();
  bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bf16") &&
                __builtin_cpu_supports("avx512vbmi");
  std::string isa = avx512 ? "avx512" : avx2 ? "avx2" : "scalar";
  if (const char* e = std::getenv("GEMM_BENCH_ISA")) isa = e;
  auto fn = isa == "avx512" ? &ty::cpu::avx512::gemm : isa == "avx2" ? &ty::cpu::avx2::gemm : &ty::cpu::scalar::gemm;
  std::printf("gemm_bench: isa=%s, %d timed runs per figure (median; min..max in brackets)\n", isa.c_str(), reps);

  // peak[th]: wall-clock MAC/s on th threads; pcpu: MAC per CPU-second (one core busy).
  double peak[3] = {0, 0, 0}, peak_bf[3] = {0, 0, 0}, pcpu = 0, pcpu_bf = 0, dummy;
  for (int th = 1; th <= 2; ++th) {
    peak[th] = measure_peak(isa == "avx512" ? peak_avx512 : peak_avx2, th, reps, th == 1 ? &pcpu : &dummy);
    std::printf("f32 FMA peak, %d thread%s: %7.1f GMAC/s = %7.1f GFLOP/s wall", th, th > 1 ? "s" : " ", peak[th] / 1e9, 2 * peak[th] / 1e9);
    if (th == 1) std::printf("; %.1f GMAC per CPU-second", pcpu / 1e9);
    std::printf("\n");
    if (isa == "avx512") {
      peak_bf[th] = measure_peak(peak_bf16, th, reps, th == 1 ? &pcpu_bf : &dummy);
      std::printf("bf16 vdpbf16ps peak, %d thread%s: %7.1f GMAC/s wall", th, th > 1 ? "s" : " ", peak_bf[th] / 1e9);
      if (th == 1) std::printf("; %.1f GMAC per CPU-second", pcpu_bf / 1e9);
      std::printf("\n");
    }
  }

  struct Cfg { int64_t M, N, K; DType dt; bool bt; };
  const Cfg cfgs[] = {{1024, 1024, 1024, DType::f32, true}, {1024, 1024, 1024, DType::f32, false},
                      {1024, 1024, 1024, DType::bf16, true}, {4096, 4096, 4096, DType::f32, true},
                      {4096, 4096, 4096, DType::bf16, true}, {1, 4096, 4096, DType::f32, true},
                      {1, 4096, 4096, DType::f32, false}, {1, 4096, 4096, DType::bf16, true}};
  std::printf("%-26s %3s %8s %8s %7s %10s %6s %s\n", "shape (A·op(B), C f32)", "thr", "GFLOP/s", "GMAC/s", "%pk", "cpu GMAC/s", "eff", "wall ms median [min..max]");
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> U(-1.f, 1.f);
  const char* only = std::getenv("GEMM_BENCH_MAXDIM");  // e.g. 1024: skip larger shapes
  for (const Cfg& c : cfgs) {
    if (only && c.M * c.N * c.K > std::atoll(only) * std::atoll(only) * std::atoll(only)) continue;
    const int es = c.dt == DType::f32 ? 4 : 2;
    std::vector<char> A(c.M * c.K * es), B(c.N * c.K * es);
    std::vector<float> C(c.M * c.N);
    auto fill = [&](std::vector<char>& v) {
      for (size_t i = 0; i < v.size() / es; ++i) {
        float f = U(rng);
        if (es == 4) std::memcpy(&v[i * 4], &f, 4);
        else { uint16_t h = ty::f32_to_bf16(f); std::memcpy(&v[i * 2], &h, 2); }
      }
    };
    fill(A);
    fill(B);
    for (int th = 1; th <= 2; ++th) {
      ThreadParallel par(th);
      ty::GemmArgs g{c.dt, DType::f32, c.M, c.N, c.K, A.data(), c.K, B.data(), c.bt ? c.K : c.N, c.bt,
                     C.data(), c.N, nullptr, 1.f, 0.f};
      std::vector<double> ts, cs;
      for (int rep = 0; rep <= reps; ++rep) {
        par.cpu_s = 0;
        auto t0 = Clock::now();
        fn(g, par);
        double s = std::chrono::duration<double>(Clock::now() - t0).count();
        if (rep) { ts.push_back(s); cs.push_back(par.cpu_s); }
      }
      double s = median(ts), macs = (double)c.M * c.N * c.K, cpu_rate = macs / median(cs);
      char name[64];
      std::snprintf(name, sizeof name, "%s %lldx%lldx%lld %s", ty::dtype_name(c.dt), (long long)c.M, (long long)c.N,
                    (long long)c.K, c.bt ? "B[N,K]" : "B[K,N]");
      std::printf("%-26s %3d %8.1f %8.1f %6.1f%% %10.1f %5.1f%% %.3f [%.3f..%.3f]", name, th, 2 * macs / s / 1e9, macs / s / 1e9,
                  100 * macs / s / peak[th], cpu_rate / 1e9, 100 * cpu_rate / pcpu, s * 1e3, *std::min_element(ts.begin(), ts.end()) * 1e3,
                  *std::max_element(ts.begin(), ts.end()) * 1e3);
      if (c.M == 1) std::printf("  (B read %.1f GB/s)", (double)B.size() / s / 1e9);
      if (c.dt == DType::bf16 && pcpu_bf > 0) std::printf("  (eff vs bf16 peak %.1f%%)", 100 * cpu_rate / pcpu_bf);
      std::printf("\n");
      std::fflush(stdout);
    }
  }
  return 0;
}
