// Tachyon: standalone benchmark of the quantized GEMM (all ISA variants this CPU runs).
// Build + run: native/tests/qgemm_bench.sh [options]. Prints medians and roofline ratios
// against limits probed in the same run:
//   DRAM read bandwidth: 2 threads (or --threads) summing a 1 GiB buffer (with software
//   prefetch, as the kernels use);
//   int8 MAC peak: AVX-512 vpdpbusd chains (when the CPU has VNNI), and the AVX2
//   vpmaddubsw+vpmaddwd+vpaddd sequence the AVX2 kernel uses per 32 MACs.
// Small-M cases rotate through enough copies of the weights (> 512 MiB) that every call
// reads its weights from DRAM, as a decode step over distinct layers does.
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "qgemm_pool.h"
#include "qkernels.h"
#include "tachyon/quant.h"

using namespace ty;
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
  const int64_t chunks = 256;
  for (int it = 0; it < 7; ++it) {
    double t0 = now();
    par.for_each(chunks, [&](int64_t t, int) { sink = sink + read_sum(buf + t * (bytes / chunks), bytes / chunks); });
    gbs.push_back(bytes / (now() - t0) / 1e9);
  }
  std::free(buf);
  return median(gbs);
}

__attribute__((target("avx2"))) static double mac_avx2(int64_t iters) {
  // 8 independent chains of maddubs -> madd -> add (32 u8*s8 MACs each).
  __m256i acc[8], x = _mm256_set1_epi8(3), y = _mm256_set1_epi8(-2), one = _mm256_set1_epi16(1);
  for (auto& a : acc) a = _mm256_setzero_si256();
  for (int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 8
    for (int j = 0; j < 8; ++j) {
      acc[j] = _mm256_add_epi32(acc[j], _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), one));
      __asm__ volatile("" : "+x"(acc[j]));
    }
  }
  __m256i s = acc[0];
  for (int j = 1; j < 8; ++j) s = _mm256_add_epi32(s, acc[j]);
  return (double)_mm256_extract_epi32(s, 0);
}
__attribute__((target("avx512f,avx512vnni"))) static double mac_vnni(int64_t iters) {
  __m512i acc[12], x = _mm512_set1_epi8(3), y = _mm512_set1_epi8(-2);
  for (auto& a : acc) a = _mm512_setzero_si512();
  for (int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 12
    for (int j = 0; j < 12; ++j) {
      acc[j] = _mm512_dpbusd_epi32(acc[j], x, y);
      __asm__ volatile("" : "+v"(acc[j]));
    }
  }
  __m512i s = acc[0];
  for (int j = 1; j < 12; ++j) s = _mm512_add_epi32(s, acc[j]);
  return (double)_mm512_reduce_add_epi32(s);
}
static double probe_macs(Parallel& par, bool vnni) {
  const int64_t iters = 20'000'000;
  const double per_iter = vnni ? 12 * 64 : 8 * 32;
  std::vector<double> r;
  volatile double sink = 0;
  for (int it = 0; it < 5; ++it) {
    double t0 = now();
    par.for_each(par.threads(), [&](int64_t, int) { sink = sink + (vnni ? mac_vnni(iters) : mac_avx2(iters)); });
    r.push_back(per_iter * iters * par.threads() / (now() - t0));
  }
  return median(r);
}

using QFn = void (*)(const QGemmArgs&, Parallel&);

struct Fmt { const char* name; QuantFormat f; };

int main(int argc, char** argv) {
  int threads = 2;
  std::string isa_sel = "best", fmt_sel = "all", m_sel = "1,4,16,64,512", shape_sel = "4096x4096,11008x4096,4096x11008";
  double min_time = 1.0;
  bool hot = false;  // --hot: no rotation (weights may come from cache): compute-bound view
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&] { return i + 1 < argc ? std::string(argv[++i]) : std::string(); };
    if (a == "--threads") threads = std::atoi(next().c_str());
    else if (a == "--isa") isa_sel = next();
    else if (a == "--fmt") fmt_sel = next();
    else if (a == "--m") m_sel = next();
    else if (a == "--shapes") shape_sel = next();
    else if (a == "--time") min_time = std::atof(next().c_str());
    else if (a == "--hot") hot = true;
    else { std::fprintf(stderr, "usage: qgemm_bench [--threads N] [--isa scalar|avx2|avx512|best] [--fmt name,..] [--m 1,4,..] [--shapes NxK,..] [--time s] [--hot]\n"); return 2; }
  }
  const bool has_vnni = __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw");
  const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (isa_sel == "best") isa_sel = has_vnni ? "avx512" : has_avx2 ? "avx2" : "scalar";
  QFn fn = isa_sel == "avx512" ? &cpu::avx512::qgemm : isa_sel == "avx2" ? &cpu::avx2::qgemm : &cpu::scalar::qgemm;
  if ((isa_sel == "avx512" && !has_vnni) || (isa_sel == "avx2" && !has_avx2)) {
    std::fprintf(stderr, "this CPU cannot run the %s variant\n", isa_sel.c_str());
    return 2;
  }

  ThreadPool pool(threads);
  const double bw = probe_dram(pool);
  const double peak_avx2 = has_avx2 ? probe_macs(pool, false) : 0;
  const double peak_vnni = has_vnni ? probe_macs(pool, true) : 0;
  const double peak = isa_sel == "avx512" ? peak_vnni : peak_avx2;
  std::printf("threads %d, isa %s\n", threads, isa_sel.c_str());
  std::printf("probe: DRAM read %.1f GB/s; int8 MAC peak: avx2 sequence %.3g/s, avx512 vpdpbusd %s\n", bw / 1e0,
              peak_avx2, has_vnni ? std::to_string(peak_vnni).c_str() : "n/a (no VNNI)");

  auto qf = [](QKind k, int g, bool asym, DType sd) { QuantFormat f; f.kind = k; f.group = g; f.asym = asym; f.scale_dtype = sd; return f; };
  std::vector<Fmt> fmts = {
      {"int8-pc", qf(QKind::int8, 0, false, DType::f32)},
      {"int8-g32(Q8_0)", qf(QKind::int8, 32, false, DType::f16)},
      {"int4-g32(Q4_0)", qf(QKind::int4, 32, false, DType::f16)},
      {"int4a-g32(Q4_1)", qf(QKind::int4, 32, true, DType::f16)},
      {"int4-g128", qf(QKind::int4, 128, false, DType::f16)},
      {"q4k(Q4_K)", qf(QKind::q4k, 256, false, DType::f16)},
      {"q6k(Q6_K)", qf(QKind::q6k, 256, false, DType::f16)},
  };
  std::vector<int64_t> Ms;
  for (size_t p = 0; p < m_sel.size();) { size_t q = m_sel.find(',', p); Ms.push_back(std::atoll(m_sel.substr(p, q - p).c_str())); p = q == std::string::npos ? m_sel.size() : q + 1; }
  std::vector<std::pair<int64_t, int64_t>> shapes;
  for (size_t p = 0; p < shape_sel.size();) {
    size_t q = shape_sel.find(',', p);
    std::string s = shape_sel.substr(p, q - p);
    size_t x = s.find('x');
    shapes.push_back({std::atoll(s.substr(0, x).c_str()), std::atoll(s.substr(x + 1).c_str())});
    p = q == std::string::npos ? shape_sel.size() : q + 1;
  }

  std::printf("%-16s %6s %6s %4s %9s %9s %7s %10s %7s %6s %9s\n", "format", "N", "K", "M", "median_us", "GB/s", "of_bw", "MAC/s", "of_peak", "copies", "best_us");
  std::mt19937 rng(7);
  for (auto [N, K] : shapes)
    for (const Fmt& F : fmts) {
      if (fmt_sel != "all" && ("," + fmt_sel + ",").find("," + std::string(F.name) + ",") == std::string::npos) continue;
      const QuantFormat& f = F.f;
      if (q_format_error(f, N, K)) { std::printf("%-16s %6lld %6lld  skipped: %s\n", F.name, (long long)N, (long long)K, q_format_error(f, N, K)); continue; }
      const QPackedLayout L = q_packed_layout(f, N, K);
      // One quantized copy, replicated so small-M calls stream from DRAM.
      std::vector<uint8_t> q(q_plain_q_bytes(f, N, K)), s(q_plain_scale_bytes(f, N, K)), mn(q_plain_min_bytes(f, N, K)),
          sd(q_plain_super_bytes(f, N, K)), sm(f.kind == QKind::q4k ? q_plain_super_bytes(f, N, K) : 0);
      QPlain plain; plain.fmt = f; plain.N = N; plain.K = K; plain.q = q.data(); plain.scales = s.data();
      plain.mins = mn.empty() ? nullptr : mn.data();
      plain.super_d = sd.empty() ? nullptr : sd.data();
      plain.super_dmin = sm.empty() ? nullptr : sm.data();
      {
        std::vector<float> w((size_t)N * K);
        std::normal_distribution<float> nd(0, 0.02f);
        for (auto& v : w) v = nd(rng);
        quantize(w.data(), K, plain);
      }
      const int copies = (int)std::max<int64_t>(2, (int64_t)((512ull << 20) / L.total) + 1);
      uint8_t* big = (uint8_t*)std::aligned_alloc(64, L.total * copies);
      q_repack(plain, big);
      for (int c = 1; c < copies; ++c) std::memcpy(big + c * L.total, big, L.total);
      for (int64_t M : Ms) {
        std::vector<float> A((size_t)M * K), C((size_t)M * N);
        std::normal_distribution<float> nd(0, 1);
        for (auto& v : A) v = nd(rng);
        QGemmArgs g;
        g.w.fmt = f; g.w.N = N; g.w.K = K;
        g.a_dtype = DType::f32; g.M = M; g.A = A.data(); g.lda = K;
        g.c_dtype = DType::f32; g.C = C.data(); g.ldc = N;
        const int rot = (M <= 16 && !hot) ? copies : 1;  // large M is compute bound: reuse one copy
        std::vector<double> ts;
        double t_start = now();
        int it = 0;
        for (; (now() - t_start < min_time || ts.size() < 5) && ts.size() < 2000; ++it) {
          g.w.data = big + (size_t)(it % rot) * L.total;
          double t0 = now();
          fn(g, pool);
          if (it >= 1) ts.push_back(now() - t0);  // first call warms the pool / scratch
        }
        const double t = median(ts), tbest = *std::min_element(ts.begin(), ts.end());
        const double gbs = (double)L.total / t / 1e9, macs = (double)M * N * K / t;
        std::printf("%-16s %6lld %6lld %4lld %9.1f %9.2f %7.3f %10.3g %7.3f %6d %9.1f\n", F.name, (long long)N, (long long)K, (long long)M,
                    t * 1e6, gbs, gbs / bw, macs, macs / peak, rot, tbest * 1e6);
        std::fflush(stdout);
      }
      std::free(big);
    }
  return 0;
}
