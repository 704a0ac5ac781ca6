// Tests for native/cuemu: PTX wrapper layouts (one-hot against a plain matmul), a tiled f16 GEMM,
// shuffles, atomics, shared-memory poisoning, and every checker (each must fire). Every kernel test
// runs under two schedule orders. Build and run: native/tests/cuemu/run.sh
#include "check.h"
#include "kernels.cuh"

#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <vector>

using namespace cuemu_test;

static bool gVerbose = false;

static uint16_t f16_bits(float v) { return __half_raw(__float2half_rn(v)).x; }
static uint32_t f32_bits(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  return u;
}

// ---- mma one-hot layouts ---------------------------------------------------------------------
// Element encoding per variant (0 f16, 1 bf16, 2 f16 acc f16, 3 s8, 4 e4m3) of small integers.
static uint16_t enc_elem(int V, int v) {
  switch (V) {
    case 0:
    case 2: return f16_bits(float(v));
    case 1: return __nv_bfloat16_raw(__float2bfloat16(float(v))).x;
    case 3: return uint8_t(int8_t(v));
    default: return __nv_fp8_e4m3(float(v)).__x;
  }
}
static uint32_t enc_acc(int V, double v) {
  if (V == 3) return uint32_t(int32_t(v));
  if (V == 2) return f16_bits(float(v));
  return f32_bits(float(v));
}

template <int V>
static void test_mma_layout() {
  const int K = V <= 2 ? 16 : 32, ES = V <= 2 ? 2 : 1;
  const int P = 16 * K + K * 8 + 128;
  std::vector<unsigned char> A(size_t(P) * 16 * K * ES, 0), B(size_t(P) * K * 8 * ES, 0);
  std::vector<uint32_t> C(size_t(P) * 128), D(size_t(P) * 128, 0), E(size_t(P) * 128);
  auto put = [&](std::vector<unsigned char>& M, size_t idx, uint16_t bits) {
    if (ES == 2) {
      M[idx * 2] = uint8_t(bits);
      M[idx * 2 + 1] = uint8_t(bits >> 8);
    } else {
      M[idx] = uint8_t(bits);
    }
  };
  auto aval = [](int m, int k) { return (m * 5 + k) % 9 - 4; };
  auto bval = [](int k, int n) { return (k * 3 + n) % 7 - 3; };
  for (int p = 0; p < P; ++p) {
    std::vector<double> a(16 * K, 0), b(K * 8, 0), c(128, 0);
    if (p < 16 * K) {  // one-hot A, dense B
      a[p] = 1;
      for (int i = 0; i < K * 8; ++i) b[i] = bval(i / 8, i % 8);
    } else if (p < 16 * K + K * 8) {  // dense A, one-hot B
      b[p - 16 * K] = 1;
      for (int i = 0; i < 16 * K; ++i) a[i] = aval(i / K, i % K);
    } else {  // one-hot C
      c[p - 16 * K - K * 8] = 3;
    }
    for (int i = 0; i < 16 * K; ++i) put(A, size_t(p) * 16 * K + i, enc_elem(V, int(a[i])));
    for (int i = 0; i < K * 8; ++i) put(B, size_t(p) * K * 8 + i, enc_elem(V, int(b[i])));
    for (int m = 0; m < 16; ++m)
      for (int n = 0; n < 8; ++n) {
        double s = c[m * 8 + n];
        for (int k = 0; k < K; ++k) s += a[m * K + k] * b[k * 8 + n];
        C[size_t(p) * 128 + m * 8 + n] = enc_acc(V, c[m * 8 + n]);
        E[size_t(p) * 128 + m * 8 + n] = enc_acc(V, s);
      }
  }
  cuemu::launch(mma_layout_kernel<V>, dim3(P), dim3(32), 0, A.data(), B.data(), C.data(), D.data());
  int bad = 0;
  for (size_t i = 0; i < D.size(); ++i)
    if (D[i] != E[i] && bad++ < 3)
      std::printf("    problem %zu D[%zu][%zu] = 0x%08x, expected 0x%08x\n", i / 128, i % 128 / 8, i % 8, D[i], E[i]);
  CHECK(bad == 0, "mma variant %d: %d wrong outputs", V, bad);
}

// ---- ldmatrix one-hot layouts ----------------------------------------------------------------
template <int V>
static void test_ldmatrix_layout() {
  const int P = 256;
  std::vector<uint16_t> A(P * 256), B(P * 256);
  std::vector<float> D(P * 256, -1), E(P * 256);
  for (int p = 0; p < P; ++p) {
    std::vector<float> a(256), b(256);
    for (int i = 0; i < 256; ++i) {
      a[i] = V < 2 ? float(i == p) : float((i / 16 * 5 + i % 16) % 9 - 4);
      b[i] = V < 2 ? float((i / 16 * 3 + i % 16) % 7 - 3) : float(i == p);
      A[p * 256 + i] = f16_bits(a[i]);
      B[p * 256 + i] = f16_bits(b[i]);
    }
    for (int m = 0; m < 16; ++m)
      for (int n = 0; n < 16; ++n) {
        float s = 0;
        for (int k = 0; k < 16; ++k) s += a[m * 16 + k] * b[k * 16 + n];
        E[p * 256 + m * 16 + n] = s;
      }
  }
  cuemu::launch(ldmatrix_layout_kernel<V>, dim3(P), dim3(32), 0, A.data(), B.data(), D.data());
  int bad = 0;
  for (size_t i = 0; i < D.size(); ++i)
    if (D[i] != E[i] && bad++ < 3)
      std::printf("    one-hot %zu D[%zu][%zu] = %g, expected %g\n", i / 256, i % 256 / 16, i % 16, D[i], E[i]);
  static const char* names[] = {"A x4", "A x2", "B x1", "B x2", "B x4", "B x1.trans", "B x2.trans", "B x4.trans"};
  CHECK(bad == 0, "ldmatrix %s: %d wrong outputs", names[V], bad);
}

// ---- GEMM ---------------------------------------------------------------------------------------
template <bool BT>
static void test_gemm(int M, int N, int K) {
  std::mt19937 rng(M * 131 + N * 7 + K);
  std::uniform_real_distribution<float> u(-1, 1);
  std::vector<__half> A(size_t(M) * K), B(size_t(N) * K);
  std::vector<float> Af(A.size()), Bf(B.size()), C(size_t(M) * N, -7.0f);
  for (size_t i = 0; i < A.size(); ++i) {
    A[i] = __float2half_rn(u(rng));
    Af[i] = __half2float(A[i]);
  }
  for (size_t i = 0; i < B.size(); ++i) {
    B[i] = __float2half_rn(u(rng));
    Bf[i] = __half2float(B[i]);
  }
  dim3 grid((N + kBN - 1) / kBN, (M + kBM - 1) / kBM);
  cuemu::launch(gemm_f16_kernel<BT>, grid, dim3(128), 0, A.data(), B.data(), C.data(), M, N, K);
  double maxErr = 0;
  int bad = 0;
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) {
      double s = 0;
      for (int k = 0; k < K; ++k) s += double(Af[size_t(m) * K + k]) * (BT ? Bf[size_t(n) * K + k] : Bf[size_t(k) * N + n]);
      double e = std::fabs(C[size_t(m) * N + n] - s);
      maxErr = std::max(maxErr, e);
      if (!(e <= 1e-4 + 1e-5 * std::fabs(s))) ++bad;
    }
  CHECK(bad == 0, "gemm %s %dx%dx%d: %d outputs off (max err %.3g)", BT ? "B[N][K]" : "B[K][N]", M, N, K, bad, maxErr);
}

// ---- reductions, shuffles, votes, atomics ------------------------------------------------------
static void test_reduce() {
  const int n = 10007;
  std::vector<float> x(n);
  double ref = 0;
  for (int i = 0; i < n; ++i) {
    x[i] = float(i % 37 - 11);
    ref += x[i];
  }
  float out = 0;
  cuemu::launch(reduce_sum_kernel<true>, dim3(7), dim3(256), 0, x.data(), n, &out);
  CHECK(out == float(ref), "reduce (xor): %g vs %g", out, ref);
  out = 0;
  cuemu::launch(reduce_sum_kernel<false>, dim3(5), dim3(96), 0, x.data(), n, &out);
  CHECK(out == float(ref), "reduce (down, 3 warps): %g vs %g", out, ref);
}

static void test_warp_scan() {
  const int nb = 2, nt = 64, n = nb * nt;
  std::vector<int> x(n), scan(n), bcast(n), votes(n);
  std::vector<unsigned> ballots(n / 32);
  std::mt19937 rng(5);
  for (int i = 0; i < n; ++i) x[i] = int(rng() % 50) - (i % 7 == 0 ? 10 : 0);
  cuemu::launch(warp_scan_kernel, dim3(nb), dim3(nt), 0, x.data(), scan.data(), bcast.data(), ballots.data(), votes.data());
  int bad = 0;
  for (int w = 0; w < n / 32; ++w) {
    int s = 0, sum7 = 0;
    unsigned bal = 0;
    bool any = false, all = true;
    for (int l = 0; l < 32; ++l) {
      int v = x[w * 32 + l];
      sum7 += v & 7;
      bal |= unsigned(v > 0) << l;
      any |= v > 100;
      all &= v >= 0;
    }
    for (int l = 0; l < 32; ++l) {
      int i = w * 32 + l;
      s += x[i];
      bad += scan[i] != s;
      bad += bcast[i] != x[w * 32] + x[w * 32 + (l & ~7) + 5];
      bad += votes[i] != int(any) + 2 * int(all) + 4 * sum7;
    }
    bad += ballots[w] != bal;
  }
  CHECK(bad == 0, "warp scan/broadcast/vote: %d mismatches", bad);
}

static void test_atomics() {
  const int n = 5000;
  std::vector<int> x(n);
  std::mt19937 rng(11);
  for (int& v : x) v = int(rng() % 1000);
  std::vector<unsigned> hist(16, 0);
  float fsum = 0;
  double dsum = 0;
  int imax = -1000000, imin = 1000000, cas = 0, exch = 0;
  unsigned umax = 0;
  cuemu::launch(atomics_kernel, dim3(5), dim3(128), 0, x.data(), n, hist.data(), &fsum, &dsum, &imax, &imin,
                &umax, &cas, &exch);
  std::vector<unsigned> h(16, 0);
  double s = 0;
  int mx = -1000000, mn = 1000000;
  for (int v : x) {
    h[v & 15]++;
    s += v;
    mx = std::max(mx, v - 500);
    mn = std::min(mn, v - 500);
  }
  CHECK(hist == h, "atomicAdd(unsigned) histogram");
  CHECK(fsum == float(s), "atomicAdd(float) %g vs %g", fsum, s);
  CHECK(dsum == s * 0.5, "atomicAdd(double) %g vs %g", dsum, s * 0.5);
  CHECK(imax == mx && imin == mn, "atomicMax/Min(int) %d %d vs %d %d", imax, imin, mx, mn);
  CHECK(umax == unsigned(mx + 500), "atomicMax(unsigned) %u", umax);
  CHECK(cas == n, "atomicCAS loop count %d vs %d", cas, n);
  CHECK(exch == 7, "atomicExch %d", exch);
}

static void test_smem() {
  const int nb = 3;
  std::vector<uint32_t> first(nb * 2, 0);
  std::vector<float> out(nb * 64, 0);
  cuemu::launch(smem_poison_kernel, dim3(nb), dim3(64), 64 * 4, first.data(), out.data());
  int bad = 0;
  for (uint32_t v : first) bad += v != 0xFFFFFFFFu;
  CHECK(bad == 0, "static/dynamic shared memory not poisoned at block start (%d reads)", bad);
  bad = 0;
  for (int b = 0; b < nb; ++b)
    for (int t = 0; t < 64; ++t) bad += out[b * 64 + t] != float(b * 100 + 63 - t + (t + 1) % 64);
  CHECK(bad == 0, "shared memory values after barrier (%d wrong)", bad);

  std::vector<float> x(2 * 128), y(2 * 128);
  for (int i = 0; i < 256; ++i) x[i] = float(i);
  cuemu::launch(neighbor_kernel<false>, dim3(2), dim3(128), 0, x.data(), y.data());
  bad = 0;
  for (int b = 0; b < 2; ++b)
    for (int t = 0; t < 128; ++t) bad += y[b * 128 + t] != x[b * 128 + (t + 1) % 128] + x[b * 128 + (t + 127) % 128];
  CHECK(bad == 0, "neighbor exchange with barrier (%d wrong)", bad);
  cuemu::launch(neighbor_kernel<true>, dim3(2), dim3(128), 0, x.data(), y.data());
  int nans = 0;
  for (float v : y) nans += v != v;
  CHECK(nans > 0, "missing barrier did not show poison (0 NaN outputs)");

  std::vector<float> src(128), dst(128);
  for (int i = 0; i < 128; ++i) src[i] = float(i) + 0.5f;
  cuemu::launch(cp_async_kernel<false>, dim3(1), dim3(32), 0, src.data(), dst.data());
  bad = 0;
  for (int t = 0; t < 32; ++t)
    for (int i = 0; i < 4; ++i) bad += dst[4 * t + i] != src[(4 * t + 4 + i) % 128];
  CHECK(bad == 0, "cp.async + wait_group + barrier (%d wrong)", bad);
  cuemu::launch(cp_async_kernel<true>, dim3(1), dim3(32), 0, src.data(), dst.data());
  nans = 0;
  for (float v : dst) nans += v != v;
  CHECK(nans > 0, "reading a cp.async destination before its wait did not show poison");
}

// ---- checkers ---------------------------------------------------------------------------------------
static void expect_error(const char* what, const std::function<void()>& run, std::vector<std::string> needles) {
  std::string msg;
  try {
    run();
  } catch (const cuemu::Error& e) {
    msg = e.what();
  }
  bool ok = !msg.empty();
  for (const std::string& n : needles) ok = ok && msg.find(n) != std::string::npos;
  CHECK(ok, "%s: report missing or incomplete:\n%s", what, msg.empty() ? "(no error raised)" : msg.c_str());
  if (gVerbose && !msg.empty()) std::printf("%s", msg.c_str());
}

static void test_checkers() {
  std::vector<int> y(64, 0);
  std::vector<float> yf(64, 0);
  std::vector<uint16_t> g(64, 0);
  std::vector<uint32_t> yu(32, 0);
  expect_error("divergent barrier", [&] { cuemu::launch(divergent_barrier_kernel, dim3(2), dim3(64), 0, y.data()); },
               {"threads wait at different barriers", "divergent_barrier_kernel", "(0,0,0)..(31,0,0)",
                "(32,0,0)..(63,0,0)", "kernels.cuh:"});
  expect_error("exit before barrier", [&] { cuemu::launch(exit_before_barrier_kernel, dim3(1), dim3(64), 0, y.data()); },
               {"exited while others wait", "exited: (40,0,0)..(63,0,0)", "(0,0,0)..(39,0,0)"});
  expect_error("shuffle mask mismatch", [&] { cuemu::launch(shfl_mask_mismatch_kernel, dim3(1), dim3(32), 0, y.data()); },
               {"__shfl_xor_sync", "mask 0xffffffff", "has exited"});
  expect_error("shuffle site mismatch", [&] { cuemu::launch(shfl_site_mismatch_kernel, dim3(1), dim3(32), 0, y.data()); },
               {"disagree", "lanes 0-15: __shfl_xor_sync at kernels.cuh:", "lanes 16-31: __shfl_xor_sync at kernels.cuh:"});
  expect_error("shuffle from outside the mask", [&] { cuemu::launch(shfl_outside_mask_kernel, dim3(1), dim3(32), 0, y.data()); },
               {"reads lane 20 which is not in mask 0x0000ffff"});
  expect_error("full mask in a partial warp", [&] { cuemu::launch(shfl_partial_warp_kernel, dim3(1), dim3(48), 0, y.data()); },
               {"names lanes that do not exist", "48 threads"});
  expect_error("mma with half a warp", [&] { cuemu::launch(mma_half_warp_kernel, dim3(1), dim3(32), 0, yf.data()); },
               {"mma.m16n8k16.row.col.f32.f16.f16.f32", "has exited"});
  expect_error("ldmatrix from global memory", [&] { cuemu::launch(ldmatrix_global_kernel, dim3(1), dim3(32), 0, g.data(), yu.data()); },
               {"not in shared memory"});
  expect_error("invalid launch", [&] { cuemu::launch(divergent_barrier_kernel, dim3(1), dim3(2048), 0, y.data()); },
               {"must have 1..1024 threads"});
  // The runtime recovers after failures: a correct kernel still runs.
  std::vector<float> x(128, 1.0f), z(128, 0);
  cuemu::launch(neighbor_kernel<false>, dim3(1), dim3(128), 0, x.data(), z.data());
  CHECK(z[5] == 2.0f, "launch after failures: %g", z[5]);
}

// CUEMU_ON_ERROR=abort: the report goes to stderr and the process aborts (checked in a child).
static void test_abort_mode() {
  int fds[2];
  if (pipe(fds) != 0) return;
  pid_t pid = fork();
  if (pid == 0) {
    dup2(fds[1], 2);
    close(fds[0]);
    cuemu::set_abort_on_error(true);
    std::vector<int> y(64);
    try {
      cuemu::launch(divergent_barrier_kernel, dim3(1), dim3(64), 0, y.data());
    } catch (...) {
    }
    _exit(0);
  }
  close(fds[1]);
  std::string out;
  char buf[4096];
  ssize_t k;
  while ((k = read(fds[0], buf, sizeof buf)) > 0) out.append(buf, size_t(k));
  close(fds[0]);
  int st = 0;
  waitpid(pid, &st, 0);
  CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT, "abort mode: child status %d", st);
  CHECK(out.find("threads wait at different barriers") != std::string::npos, "abort mode report: %s", out.c_str());
}

static void run_all(cuemu::Schedule s) {
  cuemu::set_schedule(s);
  std::printf("schedule %s\n", cuemu::schedule_name(s).c_str());
  auto t0 = std::chrono::steady_clock::now();
  test_mma_layout<0>();
  test_mma_layout<1>();
  test_mma_layout<2>();
  test_mma_layout<3>();
  test_mma_layout<4>();
  test_ldmatrix_layout<0>();
  test_ldmatrix_layout<1>();
  test_ldmatrix_layout<2>();
  test_ldmatrix_layout<3>();
  test_ldmatrix_layout<4>();
  test_ldmatrix_layout<5>();
  test_ldmatrix_layout<6>();
  test_ldmatrix_layout<7>();
  auto t1 = std::chrono::steady_clock::now();
  test_gemm<true>(100, 136, 96);
  test_gemm<false>(64, 72, 64);
  auto t2 = std::chrono::steady_clock::now();
  test_reduce();
  test_warp_scan();
  test_atomics();
  test_smem();
  test_checkers();
  auto t3 = std::chrono::steady_clock::now();
  auto ms = [](auto a, auto b) { return std::chrono::duration<double, std::milli>(b - a).count(); };
  std::printf("  layouts %.0f ms, gemm %.0f ms, rest %.0f ms\n", ms(t0, t1), ms(t1, t2), ms(t2, t3));
}

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  for (int i = 1; i < argc; ++i) gVerbose |= std::string(argv[i]) == "-v";
  run_all({cuemu::Order::Forward, 0});
  run_all({cuemu::Order::Reverse, 0});
  // A third order and two workers for the GEMM (blocks in parallel on two host threads).
  cuemu::set_schedule({cuemu::Order::Random, 12345});
  cuemu::set_workers(2);
  test_gemm<true>(128, 64, 64);
  test_reduce();
  test_atomics();
  cuemu::set_workers(1);
  test_abort_mode();

  // Costs.
  double jmp = cuemu::measure_switch_ns(false, 2000000), uc = cuemu::measure_switch_ns(true, 200000);
  std::vector<int> y(256);
  const int iters = 2000;
  cuemu::set_schedule({cuemu::Order::Forward, 0});
  auto t0 = std::chrono::steady_clock::now();
  cuemu::launch(barrier_bench_kernel, dim3(1), dim3(256), 0, iters, y.data());
  double bar = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count() / (256.0 * iters);
  CHECK(y[17] == iters * (iters - 1) / 2, "barrier bench result");
  std::printf("fiber switch: _setjmp/_longjmp %.1f ns, swapcontext %.1f ns; __syncthreads %.1f ns per thread\n", jmp, uc, bar);
  std::printf("%s: %d checks, %d failures\n", gFailures ? "FAILED" : "OK", gChecks, gFailures);
  return gFailures ? 1 : 0;
}
