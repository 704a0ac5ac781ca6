// Test + measurement driver for the roofline probes (native/cpu/kernels/probe.cpp).
// Built by native/tests/probe_test.sh: links the scalar, avx2 and avx512 variants.
//
// 1. Correctness: the dram_read checksum of odd sizes for 1..3 threads and 1..3 passes
//    against a plain reference; exact work counts (bytes x passes; threads x iters x
//    MACs-per-iteration, with the per-ISA constants the kernel documents); sinks written
//    and finite; iters = 0 does nothing.
// 2. Figures: each probe timed for 1 and 2 threads per ISA, median of 5 runs, printed as
//    GB/s or GMAC/s, and checked for plausibility (finite, positive, within wide bounds).
// Usage: probe_test [--quick] [--dram-mib N]    Exit status 1 on any failure.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "kernels.h"
#include "probe.h"

namespace {

// A simple std::thread-based Parallel: run() starts threads()-1 helpers; the caller takes
// part; tasks are handed out through an atomic counter.
class ThreadParallel final : public ty::Parallel {
 public:
  explicit ThreadParallel(int n) : n_(n), scratch_(n) {}
  ~ThreadParallel() override {
    for (auto& s : scratch_) ::operator delete(s.p);
  }
  int threads() const override { return n_; }
  void run(int64_t n_tasks, ty::TaskFn fn, void* ctx) override {
    std::atomic<int64_t> next{0};
    auto work = [&](int thread) {
      for (int64_t t; (t = next.fetch_add(1)) < n_tasks;) fn(ctx, t, thread);
    };
    std::vector<std::thread> helpers;
    for (int i = 1; i < n_; ++i) helpers.emplace_back(work, i);
    work(0);
    for (auto& h : helpers) h.join();
  }
  void* scratch(int thread, size_t bytes) override {
    Slot& s = scratch_[thread];
    if (bytes > s.cap) {
      ::operator delete(s.p);
      s.p = ::operator new(bytes + 64);
      s.cap = bytes;
    }
    return (void*)(((uintptr_t)s.p + 63) & ~(uintptr_t)63);
  }

 private:
  struct Slot {
    void* p = nullptr;
    size_t cap = 0;
  };
  int n_;
  std::vector<Slot> scratch_;
};

using ProbeFn = double (*)(const ty::ProbeArgs&, ty::Parallel&);
struct Variant {
  const char* name;
  ProbeFn fn;
  bool supported;
  int64_t macs_per_iter[4];  // per kind (index 0 unused): what probe.cpp documents
};

int g_failures = 0;
#define CHECK(cond, ...)                                         \
  do {                                                           \
    if (!(cond)) {                                               \
      ++g_failures;                                              \
      std::printf("FAIL %s:%d: ", __FILE__, __LINE__);           \
      std::printf(__VA_ARGS__);                                  \
      std::printf("\n");                                         \
    }                                                            \
  } while (0)

// The documented checksum of buf[begin, end): 64-bit LE words, then a <8-byte tail.
uint64_t ref_checksum(const uint8_t* buf, int64_t begin, int64_t end) {
  uint64_t s = 0;
  int64_t i = begin;
  for (; i + 8 <= end; i += 8) {
    uint64_t w;
    std::memcpy(&w, buf + i, 8);
    s += w;
  }
  for (; i < end; ++i) s += buf[i];
  return s;
}

void test_dram_correctness(const Variant& v) {
  std::mt19937_64 rng(1234);
  const int64_t sizes[] = {1, 7, 8, 63, 64, 65, 127, 191, 511, 512, 513, 4096 + 13, 65536 + 7,
                           1000003};
  for (int64_t n : sizes) {
    // Offset by 3 so the buffer is misaligned. Only the two low bytes of every 8-byte
    // group are nonzero, so checksums stay far below 2^53 and compare exactly as doubles.
    std::vector<uint8_t> store(n + 3 + 64, 0xEE);
    uint8_t* buf = store.data() + 3;
    for (int64_t i = 0; i < n; ++i) buf[i] = (i % 8) < 2 ? (uint8_t)rng() : 0;
    const uint64_t ref = ref_checksum(buf, 0, n);
    for (int threads = 1; threads <= 3; ++threads) {
      for (int64_t iters = 1; iters <= 3; ++iters) {
        ThreadParallel par(threads);
        std::vector<double> sink(threads, NAN);
        ty::ProbeArgs a{(int)ty::ProbeKind::dram_read, iters, buf, n, sink.data()};
        double work = v.fn(a, par);
        CHECK(work == (double)n * iters, "%s dram n=%lld t=%d iters=%lld: work %.0f", v.name,
              (long long)n, threads, (long long)iters, work);
        double total = 0;
        bool all_finite = true;
        for (double s : sink) {
          all_finite = all_finite && std::isfinite(s);
          total += s;
        }
        CHECK(all_finite, "%s dram n=%lld t=%d: a sink slot was not written", v.name,
              (long long)n, threads);
        CHECK(total == (double)(ref * (uint64_t)iters),
              "%s dram n=%lld t=%d iters=%lld: checksum %.0f, expected %.0f", v.name,
              (long long)n, threads, (long long)iters, total, (double)(ref * iters));
      }
    }
  }
  // Null sink and empty buffer are harmless.
  ThreadParallel par(2);
  uint8_t tiny[16] = {};
  ty::ProbeArgs a{(int)ty::ProbeKind::dram_read, 2, tiny, 16, nullptr};
  CHECK(v.fn(a, par) == 32, "%s dram null sink", v.name);
  a.bytes = 0;
  CHECK(v.fn(a, par) == 0, "%s dram zero bytes", v.name);
}

void test_compute_counts(const Variant& v) {
  for (int kind = 1; kind <= 3; ++kind) {
    for (int threads = 1; threads <= 3; ++threads) {
      for (int64_t iters : {0, 1, 5, 1000}) {
        ThreadParallel par(threads);
        std::vector<double> sink(threads, NAN);
        ty::ProbeArgs a{kind, iters, nullptr, 0, sink.data()};
        double work = v.fn(a, par);
        double want = (double)threads * iters * v.macs_per_iter[kind];
        CHECK(work == want, "%s kind=%d t=%d iters=%lld: work %.0f, expected %.0f", v.name,
              kind, threads, (long long)iters, work, want);
        for (double s : sink) {
          CHECK(std::isfinite(s), "%s kind=%d t=%d iters=%lld: sink not finite/written",
                v.name, kind, threads, (long long)iters);
          if (kind != 3 && iters > 0)
            CHECK(s != 0, "%s kind=%d: float sink is zero", v.name, kind);
        }
      }
    }
  }
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Median rate (work per second) of 5 timed calls, after calibrating iters so that one call
// takes about target_s.
double measure(const Variant& v, int kind, int threads, const void* buf, int64_t bytes,
               double target_s, int64_t* iters_used) {
  ThreadParallel par(threads);
  std::vector<double> sink(threads);
  ty::ProbeArgs a{kind, 1, buf, bytes, sink.data()};
  if (kind != 0) a.iters = 1 << 16;
  for (;;) {  // calibrate
    double t0 = now_s();
    v.fn(a, par);
    double dt = now_s() - t0;
    if (dt >= target_s * 0.5 || a.iters > (int64_t)1 << 40) {
      a.iters = std::max<int64_t>(1, (int64_t)(a.iters * target_s / std::max(dt, 1e-9)));
      break;
    }
    a.iters *= dt < target_s * 0.05 ? 8 : 2;
  }
  std::vector<double> rates;
  for (int r = 0; r < 5; ++r) {
    double t0 = now_s();
    double work = v.fn(a, par);
    double dt = now_s() - t0;
    CHECK(std::isfinite(work) && work > 0, "%s kind=%d t=%d: work %.3g", v.name, kind, threads,
          work);
    rates.push_back(work / dt);
  }
  for (double s : sink) CHECK(std::isfinite(s), "%s kind=%d: sink not finite", v.name, kind);
  std::sort(rates.begin(), rates.end());
  *iters_used = a.iters;
  return rates[2];
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  int64_t dram_mib = 1024;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--quick")) quick = true;
    else if (!std::strcmp(argv[i], "--dram-mib") && i + 1 < argc) dram_mib = std::atoll(argv[++i]);
  }
  if (quick && dram_mib == 1024) dram_mib = 256;
  const double target_s = quick ? 0.05 : 0.25;

  __builtin_cpu_init();
  const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                        __builtin_cpu_supports("f16c") && __builtin_cpu_supports("bmi2");
  const bool has_avx512 =
      has_avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bf16") &&
      __builtin_cpu_supports("avx512vbmi");
  const Variant variants[] = {
      {"scalar", &ty::cpu::scalar::probe, true, {0, 16, 16, 16}},
      {"avx2", &ty::cpu::avx2::probe, has_avx2, {0, 96, 96, 320}},
      {"avx512", &ty::cpu::avx512::probe, has_avx512, {0, 256, 512, 1536}},
  };

  for (const Variant& v : variants) {
    if (!v.supported) {
      std::printf("skip %s: not supported by this CPU\n", v.name);
      continue;
    }
    test_dram_correctness(v);
    test_compute_counts(v);
  }
  std::printf("correctness: %s\n", g_failures ? "FAILED" : "ok");

  // DRAM buffer: written first so every page is really backed (untouched pages all map
  // the shared zero page, which would measure a cache, not DRAM).
  const int64_t bytes = dram_mib << 20;
  uint8_t* buf = static_cast<uint8_t*>(std::aligned_alloc(4096, (size_t)bytes));
  if (!buf) {
    std::printf("FAIL: cannot allocate %lld MiB\n", (long long)dram_mib);
    return 1;
  }
  for (int64_t i = 0; i < bytes; i += 8) {
    uint64_t w = (uint64_t)i * 0x9E3779B97F4A7C15ull;
    std::memcpy(buf + i, &w, 8);
  }

  static const char* kNames[] = {"dram_read", "fma_f32", "dot_bf16", "dot_int8"};
  static const char* kUnits[] = {"GB/s", "GMAC/s", "GMAC/s", "GMAC/s"};
  std::printf("\n%-7s %-10s %8s %12s %12s %7s   (median of 5; %lld MiB DRAM buffer)\n", "isa",
              "probe", "unit", "1 thread", "2 threads", "2t/1t", (long long)dram_mib);
  for (const Variant& v : variants) {
    if (!v.supported) continue;
    for (int kind = 0; kind <= 3; ++kind) {
      double r[2];
      int64_t it[2];
      for (int t = 1; t <= 2; ++t)
        r[t - 1] = measure(v, kind, t, buf, bytes, target_s, &it[t - 1]) * 1e-9;
      std::printf("%-7s %-10s %8s %12.2f %12.2f %7.2f\n", v.name, kNames[kind], kUnits[kind], r[0],
                  r[1], r[1] / r[0]);
      for (int t = 0; t < 2; ++t) {
        // Wide plausibility bounds: anything outside means a broken probe or a broken clock.
        if (kind == 0)
          CHECK(r[t] > 0.5 && r[t] < 2000, "%s dram %.3f GB/s is implausible", v.name, r[t]);
        else
          CHECK(r[t] > 0.05 && r[t] < 100000, "%s %s %.3f GMAC/s is implausible", v.name,
                kNames[kind], r[t]);
      }
    }
  }
  std::free(buf);
  if (g_failures) {
    std::printf("\n%d failure(s)\n", g_failures);
    return 1;
  }
  std::printf("\nall probe tests passed\n");
  return 0;
}
