// Tachyon: standalone test of the quantized formats (native/cpu/quant.cpp) and the
// quantized GEMM (native/cpu/kernels/qgemm.cpp, every ISA variant) against the float64
// reference (native/cpu/ref/qgemm_ref.cpp). Build and run: native/tests/qgemm_test.sh.
//
// Tolerance model (one place; |got - ref| <= allowed):
//  * kernel vs its specification (A quantized per block to int8, exact integer dots):
//      allowed = 2^-22 * (nb + 3) * mag  [+ output rounding]
//    mag = sum of |terms| the kernel adds in f32 (one term per block, plus the min term,
//    bias and residual); each f32 add / multiply / int->f32 conversion contributes at most
//    2^-24 relative to that sum, and a sequential sum of nb+3 terms at most (nb+3) of them;
//    2^-22 leaves a factor 4 of margin. Output rounding: f16 adds 2^-11 |ref| + 2^-24,
//    bf16 adds 2^-8 |ref| + 2^-126 (one rounding of the output dtype).
//  * kernel vs the exact product with the dequantized weights (A not quantized):
//      allowed = the above + act_err, act_err = sum_blocks (sa/2 + 127·|sa − f16(sa)| when the scales are f16) * sum|w| (the a priori
//      bound of rounding each activation to the nearest multiple of sa) + 2^-22 sum|a w|.
#include <atomic>
#include <condition_variable>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "qkernels.h"
#include "qgemm_pool.h"
#include "ref/qgemm_ref.h"
#include "tachyon/error.h"
#include "tachyon/quant.h"

using namespace ty;

// ---- helpers ----------------------------------------------------------------------------
static int g_fail = 0, g_pass = 0;
static double g_spec_f32[8];  // per ISA: worst |got - spec| / tol over f32 outputs (kernel arithmetic only)
#define CHECK(cond, ...)                                         \
  do {                                                           \
    if (cond) { ++g_pass; } else {                               \
      ++g_fail;                                                  \
      std::fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);  \
      std::fprintf(stderr, __VA_ARGS__);                         \
      std::fprintf(stderr, "\n");                                \
    }                                                            \
  } while (0)

struct PlainBuf {
  std::vector<uint8_t> q, s, m, sd, sm;
  QPlain p;
  PlainBuf(const QuantFormat& f, int64_t N, int64_t K)
      : q(q_plain_q_bytes(f, N, K)), s(q_plain_scale_bytes(f, N, K)), m(q_plain_min_bytes(f, N, K)),
        sd(q_plain_super_bytes(f, N, K)), sm(f.kind == QKind::q4k ? q_plain_super_bytes(f, N, K) : 0) {
    p.fmt = f; p.N = N; p.K = K; p.q = q.data(); p.scales = s.data(); p.mins = m.empty() ? nullptr : m.data();
    p.super_d = sd.empty() ? nullptr : sd.data();
    p.super_dmin = sm.empty() ? nullptr : sm.data();
  }
  bool same(const PlainBuf& o) const { return q == o.q && s == o.s && m == o.m && sd == o.sd && sm == o.sm; }
};
struct Aligned {
  void* raw; uint8_t* p;
  explicit Aligned(size_t n) : raw(std::malloc(n + 64)) { p = (uint8_t*)(((uintptr_t)raw + 63) & ~(uintptr_t)63); std::memset(p, 0xA5, n); }
  ~Aligned() { std::free(raw); }
};

static std::string fmt_name(const QuantFormat& f) {
  if (f.kind == QKind::q4k) return "q4k";
  if (f.kind == QKind::q6k) return "q6k";
  std::string s = f.kind == QKind::int8 ? "int8" : (f.asym ? "int4a" : "int4s");
  s += f.group ? "-g" + std::to_string(f.group) : "-pc";
  s += f.scale_dtype == DType::f16 ? "-f16" : "-f32";
  return s;
}

// Weights with a spread of magnitudes per row and a few outliers; a few all-zero blocks.
static std::vector<float> rand_weights(std::mt19937& rng, int64_t N, int64_t K) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_real_distribution<float> ud(0.0f, 1.0f);
  std::vector<float> w(N * K);
  for (int64_t n = 0; n < N; ++n) {
    float rs = std::exp2f((float)(int)(ud(rng) * 8) - 6);
    for (int64_t k = 0; k < K; ++k) {
      float v = nd(rng) * rs;
      if (ud(rng) < 0.002f) v *= 8;
      w[n * K + k] = v;
    }
    if (n % 7 == 3) for (int64_t k = 0; k < std::min<int64_t>(K, 32); ++k) w[n * K + k] = 0;
  }
  return w;
}

static void store_act(void* p, DType t, int64_t i, float v) {
  if (t == DType::f32) static_cast<float*>(p)[i] = v;
  else if (t == DType::f16) static_cast<uint16_t*>(p)[i] = f32_to_f16(v);
  else static_cast<uint16_t*>(p)[i] = f32_to_bf16(v);
}
static double load_act(const void* p, DType t, int64_t i) {
  if (t == DType::f32) return static_cast<const float*>(p)[i];
  if (t == DType::f16) return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
  return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
}

using QFn = void (*)(const QGemmArgs&, Parallel&);
struct IsaImpl { const char* name; QFn fn; bool on; };

// ---- GEMM correctness -------------------------------------------------------------------
struct Worst { double ratio = 0; std::string where; };

static void gemm_case(std::vector<IsaImpl>& isas, const QuantFormat& f, int64_t M, int64_t N, int64_t K,
                      DType adt, DType cdt, bool bias, int resid /*0 none, 1 separate, 2 alias C*/,
                      uint32_t seed, std::vector<Worst>& worst, Parallel& pool, bool serial_too,
                      const QPlain* given = nullptr /*weights to use instead of random ones*/,
                      const std::vector<float>* given_a = nullptr /*f32 activations, lda = K*/) {
  std::mt19937 rng(seed);
  PlainBuf pb(f, N, K);
  if (given) {
    std::memcpy(pb.p.q, given->q, pb.q.size());
    std::memcpy(pb.p.scales, given->scales, pb.s.size());
    if (!pb.m.empty()) std::memcpy(pb.p.mins, given->mins, pb.m.size());
    if (!pb.sd.empty()) std::memcpy(pb.p.super_d, given->super_d, pb.sd.size());
    if (!pb.sm.empty()) std::memcpy(pb.p.super_dmin, given->super_dmin, pb.sm.size());
  } else {
    std::vector<float> w = rand_weights(rng, N, K);
    quantize(w.data(), K, pb.p);
  }
  const QPackedLayout L = q_packed_layout(f, N, K);
  Aligned packed(L.total);
  q_repack(pb.p, packed.p);

  const int64_t lda = given_a ? K : K + (seed % 3 == 0 ? 5 : 0), ldc = N + (seed % 2 ? 3 : 0);
  const size_t aes = dtype_bytes(adt, 1), ces = dtype_bytes(cdt, 1);
  std::vector<uint8_t> A(M * lda * aes), R(M * ldc * ces), C(M * ldc * ces);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (int64_t m = 0; m < M; ++m) {
    const float rs = (m % 5 == 4) ? 1e-3f : (m % 5 == 1 ? 30.0f : 1.0f);
    for (int64_t k = 0; k < lda; ++k)
      store_act(A.data(), adt, m * lda + k, given_a ? (*given_a)[m * K + k] : (m % 11 == 7) ? 0.0f : nd(rng) * rs);
    for (int64_t n = 0; n < ldc; ++n) store_act(R.data(), cdt, m * ldc + n, nd(rng));
  }
  std::vector<float> bv(N);
  for (auto& b : bv) b = nd(rng);

  QGemmArgs g;
  g.w.fmt = f; g.w.N = N; g.w.K = K; g.w.data = packed.p;
  g.a_dtype = adt; g.M = M; g.A = A.data(); g.lda = lda;
  g.c_dtype = cdt; g.C = C.data(); g.ldc = ldc;
  g.bias = bias ? bv.data() : nullptr;
  g.residual = resid == 0 ? nullptr : (resid == 1 ? (const void*)R.data() : (const void*)C.data());
  g.ldr = ldc;
  qgemm_check(g, K);
  if (resid == 2) C = R;  // residual lives in C

  ref::QGemmRef ref;
  ref::qgemm_ref(pb.p, g, ref);
  const int64_t nb = q_num_blocks(f, K);
  const std::vector<uint8_t> C0 = C;
  SerialParallel serial;
  for (size_t i = 0; i < isas.size(); ++i) {
    if (!isas[i].on) continue;
    for (int run = 0; run < (serial_too ? 2 : 1); ++run) {
      C = C0;
      isas[i].fn(g, run == 0 ? pool : static_cast<Parallel&>(serial));
      double wspec = 0;
      double wr = 0; int64_t wm = 0, wn = 0; double wg = 0, wref = 0; const char* which = "";
      bool guard_ok = true;
      for (int64_t m = 0; m < M; ++m)
        for (int64_t n = 0; n < ldc; ++n) {
          if (n >= N) {  // padding columns must be untouched
            if (std::memcmp(&C[(m * ldc + n) * ces], &C0[(m * ldc + n) * ces], ces)) guard_ok = false;
            continue;
          }
          const double got = load_act(C.data(), cdt, m * ldc + n);
          const double sp = ref.spec[m * N + n], ex = ref.exact[m * N + n];
          double tol = std::ldexp(ref.mag[m * N + n], -22) * (double)(nb + 3);
          if (cdt == DType::f16) tol += std::ldexp(std::fabs(sp), -11) + std::ldexp(1.0, -24);
          if (cdt == DType::bf16) tol += std::ldexp(std::fabs(sp), -8) + std::ldexp(1.0, -126);
          const double d1 = std::fabs(got - sp), d2 = std::fabs(got - ex);
          const double r1 = d1 == 0 ? 0 : d1 / tol;
          const double r2 = d2 == 0 ? 0 : d2 / (tol + ref.act_err[m * N + n]);
          wspec = std::fmax(wspec, r1);
          if (!(r1 <= wr) || !(r2 <= wr)) {
            if (!(r1 <= r2)) { wr = r1; which = "spec"; wref = sp; } else { wr = r2; which = "exact"; wref = ex; }
            if (std::isnan(got)) wr = 1e30;
            wm = m; wn = n; wg = got;
          }
        }
      char buf[256];
      std::snprintf(buf, sizeof buf, "%s M=%lld N=%lld K=%lld A=%s C=%s bias=%d res=%d %s (m=%lld n=%lld got=%.9g %s=%.9g)",
                    fmt_name(f).c_str(), (long long)M, (long long)N, (long long)K, dtype_name(adt), dtype_name(cdt),
                    (int)bias, resid, run ? "serial" : "pool", (long long)wm, (long long)wn, wg, which, wref);
      CHECK(wr <= 1.0, "[%s] %s err/tol = %.3g", isas[i].name, buf, wr);
      CHECK(guard_ok, "[%s] %s wrote outside N", isas[i].name, buf);
      if (wr > worst[i].ratio) { worst[i].ratio = wr; worst[i].where = buf; }
      if (cdt == DType::f32) g_spec_f32[i] = std::fmax(g_spec_f32[i], wspec);
      if (cdt == DType::f32 && wr > worst[isas.size() + i].ratio) { worst[isas.size() + i].ratio = wr; worst[isas.size() + i].where = buf; }
    }
  }
}

// ---- quantize / dequantize / repack ----------------------------------------------------
static void test_quantize(std::mt19937& rng) {
  const DType sdts[2] = {DType::f32, DType::f16};
  std::vector<QuantFormat> fmts;
  for (DType sd : sdts) {
    for (int gsz : {0, 32, 64, 128}) { QuantFormat f; f.kind = QKind::int8; f.group = gsz; f.scale_dtype = sd; fmts.push_back(f); }
    for (int gsz : {32, 64, 128})
      for (bool a : {false, true}) { QuantFormat f; f.kind = QKind::int4; f.group = gsz; f.asym = a; f.scale_dtype = sd; fmts.push_back(f); }
  }
  for (const QuantFormat& f : fmts) {
    const int64_t N = 37, K = (f.group ? f.group : 32) * 5 + (f.group ? 0 : 3);
    std::vector<float> w = rand_weights(rng, N, K);
    PlainBuf a(f, N, K), b(f, N, K);
    QuantStats st = quantize(w.data(), K, a.p);
    quantize(w.data(), K, b.p);
    CHECK(a.q == b.q && a.s == b.s && a.m == b.m, "%s: quantize is not deterministic", fmt_name(f).c_str());
    std::vector<float> d(N * K);
    dequantize(a.p, d.data(), K);
    // Every code is the nearest representable grid point (ties either way).
    const bool i4 = f.kind == QKind::int4;
    const int qmin = i4 ? (f.asym ? 0 : -8) : -127, qmax = i4 ? (f.asym ? 15 : 7) : 127;
    const int64_t G = f.group ? f.group : K, nb = K / G;
    int bad = 0;
    double max_err = 0;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) {
        const int64_t i = n * nb + k / G;
        const float sd = f.scale_dtype == DType::f16 ? f16_to_f32(((uint16_t*)a.p.scales)[i]) : ((float*)a.p.scales)[i];
        const float mn = f.asym ? (f.scale_dtype == DType::f16 ? f16_to_f32(((uint16_t*)a.p.mins)[i]) : ((float*)a.p.mins)[i]) : 0.0f;
        double best = 1e300;
        for (int q = qmin; q <= qmax; ++q) {
          float v = (float)q * sd;
          if (f.asym) v = v + mn;
          best = std::fmin(best, std::fabs((double)v - w[n * K + k]));
        }
        const double err = std::fabs((double)d[n * K + k] - w[n * K + k]);
        max_err = std::fmax(max_err, err);
        if (err > best * (1 + 1e-6) + std::fabs(sd) * 1e-6 + 1e-30) ++bad;
      }
    CHECK(bad == 0, "%s: %d elements not quantized to the nearest code", fmt_name(f).c_str(), bad);
    CHECK(std::fabs(st.max_abs_err - max_err) <= 1e-12 * (1 + max_err), "%s: stats max_abs_err %g vs %g", fmt_name(f).c_str(), st.max_abs_err, max_err);
    CHECK(st.max_err_step <= 0.5 + 1e-6 || st.clamped > 0, "%s: max_err_step %g without clamping", fmt_name(f).c_str(), st.max_err_step);
    // Repack round trip and padding.
    const QPackedLayout L = q_packed_layout(f, N, K);
    Aligned pk(L.total);
    q_repack(a.p, pk.p);
    QPacked qp; qp.fmt = f; qp.N = N; qp.K = K; qp.data = pk.p;
    PlainBuf c(f, N, K);
    q_unpack(qp, c.p);
    CHECK(a.q == c.q && a.s == c.s && a.m == c.m, "%s: repack/unpack round trip differs", fmt_name(f).c_str());
    CHECK(L.panel_bytes % 64 == 0 && L.total == (size_t)(L.panels * L.panel_bytes), "%s: layout", fmt_name(f).c_str());
    std::printf("  quantize %-14s rms_err %.3g max_err/step %.3f clamped %lld\n", fmt_name(f).c_str(), st.rms_err,
                st.max_err_step, (long long)st.clamped);
  }
  // Hand-checked layout bytes: int4 sym g32, one row, codes q[k] = (k % 16) - 8.
  {
    QuantFormat f; f.kind = QKind::int4; f.group = 32; f.scale_dtype = DType::f32;
    PlainBuf a(f, 1, 32);
    for (int k = 0; k < 32; ++k) {
      const int q = (k % 16) - 8;
      uint8_t& b = a.q[k / 2];
      b = (k & 1) ? (uint8_t)((b & 15) | ((q & 15) << 4)) : (uint8_t)((b & 0xf0) | (q & 15));
    }
    ((float*)a.p.scales)[0] = 0.5f;
    const QPackedLayout L = q_packed_layout(f, 1, 32);
    Aligned pk(L.total);
    q_repack(a.p, pk.p);
    // vector 0, channel 0: bytes 0..3: low nibble u[k=i] = i (q+8), high u[k=4+i] = 4+i
    CHECK(pk.p[0] == 0x40 && pk.p[3] == 0x73 && pk.p[64] == 0xC8 && pk.p[4] == 0x88 && pk.p[192 + 3] == 0xFB,
          "int4 repacked bytes %02x %02x %02x %02x %02x", pk.p[0], pk.p[3], pk.p[64], pk.p[4], pk.p[192 + 3]);
    float s; std::memcpy(&s, pk.p + L.scale_off, 4);
    CHECK(L.scale_off == 256 && s == 0.5f, "int4 scale offset %lld", (long long)L.scale_off);
  }
}

// ---- GGUF importers: hand-built blocks vs ggml's definition -----------------------------
// ggml's dequantization written out from its definition (block structs in quant.cpp).
static void ggml_dequant(int t, const uint8_t* blk, float* y) {
  uint16_t dh; std::memcpy(&dh, blk, 2);
  const float d = f16_to_f32(dh);
  if (t == kGgmlQ8_0) { for (int j = 0; j < 32; ++j) y[j] = (float)(int8_t)blk[2 + j] * d; return; }
  if (t == kGgmlQ4_0) {
    for (int j = 0; j < 16; ++j) {
      const int x0 = (blk[2 + j] & 0x0F) - 8, x1 = (blk[2 + j] >> 4) - 8;
      y[j] = x0 * d; y[j + 16] = x1 * d;
    }
    return;
  }
  uint16_t mh; std::memcpy(&mh, blk + 2, 2);
  const float m = f16_to_f32(mh);
  for (int j = 0; j < 16; ++j) {
    const int x0 = blk[4 + j] & 0x0F, x1 = blk[4 + j] >> 4;
    float a = x0 * d; y[j] = a + m;
    float b = x1 * d; y[j + 16] = b + m;
  }
}

static void test_gguf(std::mt19937& rng) {
  // Scale / min bit patterns: normal, negative, tiny subnormal, max, zero, -0, 1.
  const uint16_t hs[] = {0x3c00, 0x2e66, 0xb555, 0x0001, 0x03ff, 0x7bff, 0x0000, 0x8000, 0x1234, 0xc900};
  for (int t : {kGgmlQ4_0, kGgmlQ4_1, kGgmlQ8_0}) {
    const int64_t bb = (int64_t)gguf_row_bytes(t, 32);
    const int64_t N = 3, K = 32 * 12;  // 36 blocks
    std::vector<uint8_t> src(gguf_row_bytes(t, K) * N);
    for (int64_t i = 0; i < N * K / 32; ++i) {
      uint8_t* blk = &src[i * bb];
      const uint16_t d = hs[i % 10], m = hs[(i * 3 + 1) % 10];
      std::memcpy(blk, &d, 2);
      if (t == kGgmlQ4_1) std::memcpy(blk + 2, &m, 2);
      uint8_t* qs = blk + (t == kGgmlQ4_1 ? 4 : 2);
      const int nq = t == kGgmlQ8_0 ? 32 : 16;
      for (int j = 0; j < nq; ++j) {
        // first blocks: every code in order (incl. -128 for Q8_0), then random
        if (i < 2) qs[j] = t == kGgmlQ8_0 ? (uint8_t)(i * 128 + j * 4) : (uint8_t)((j & 15) | ((15 - j) << 4));
        else qs[j] = (uint8_t)rng();
      }
    }
    const QuantFormat f = gguf_native_format(t);
    PlainBuf pb(f, N, K);
    gguf_import(t, src.data(), src.size(), N, K, pb.p);
    std::vector<float> got(N * K), want(N * K);
    dequantize(pb.p, got.data(), K);
    for (int64_t i = 0; i < N * K / 32; ++i) ggml_dequant(t, &src[i * bb], &want[i * 32]);
    int diff = 0;
    for (int64_t i = 0; i < N * K; ++i)
      if (std::memcmp(&got[i], &want[i], 4) != 0 && !(std::isnan(got[i]) && std::isnan(want[i]))) ++diff;
    CHECK(diff == 0, "gguf type %d: %d values differ from ggml's dequantization", t, diff);
    // And through the repacked layout and back.
    const QPackedLayout L = q_packed_layout(f, N, K);
    Aligned pk(L.total);
    q_repack(pb.p, pk.p);
    QPacked qp; qp.fmt = f; qp.N = N; qp.K = K; qp.data = pk.p;
    PlainBuf back(f, N, K);
    q_unpack(qp, back.p);
    CHECK(back.q == pb.q && back.s == pb.s && back.m == pb.m, "gguf type %d: repack round trip", t);
    // Bad sizes.
    bool threw = false;
    try { gguf_import(t, src.data(), src.size() - 1, N, K, pb.p); } catch (const Error& e) { threw = e.code == Code::SHAPE; }
    CHECK(threw, "gguf type %d: short buffer not rejected", t);
    threw = false;
    try { PlainBuf x(f, N, 48); gguf_import(t, src.data(), src.size(), N, 48, x.p); } catch (const Error& e) { threw = e.code == Code::SHAPE; }
    CHECK(threw, "gguf type %d: K=48 not rejected", t);
    std::printf("  gguf import type %d: %lld values bit-exact\n", t, (long long)(N * K));
  }
  bool threw = false;
  try { gguf_native_format(13); } catch (const Error& e) { threw = e.code == Code::UNSUPPORTED; }
  CHECK(threw, "unsupported ggml type not rejected");
}

// ---- K-quants: quantize / repack, and the GGUF Q4_K / Q6_K importers --------------------
static QuantFormat kq_fmt(QKind k) { QuantFormat f; f.kind = k; f.group = 256; f.scale_dtype = DType::f16; return f; }

// Sub-block step and min as dequantize() documents them (read straight from the plain layout).
static void kq_params(const QPlain& p, int64_t n, int64_t k, float* step, float* mm) {
  const bool q4 = p.fmt.kind == QKind::q4k;
  const int64_t SL = q4 ? 32 : 16, j = k / SL, ns = p.K / SL, nsb = p.K / 256, b = k / 256;
  const float d = f16_to_f32(((const uint16_t*)p.super_d)[n * nsb + b]);
  if (q4) {
    const float dmin = f16_to_f32(((const uint16_t*)p.super_dmin)[n * nsb + b]);
    *step = d * (float)((const uint8_t*)p.scales)[n * ns + j];
    *mm = dmin * (float)((const uint8_t*)p.mins)[n * ns + j];
  } else {
    *step = d * (float)((const int8_t*)p.scales)[n * ns + j];
    *mm = 0;
  }
}

static void test_kq_quantize(std::mt19937& rng) {
  for (QKind kind : {QKind::q4k, QKind::q6k}) {
    const QuantFormat f = kq_fmt(kind);
    const bool q4 = kind == QKind::q4k;
    const int64_t N = 21, K = 768;
    std::vector<float> w = rand_weights(rng, N, K);
    for (int64_t k = 256; k < 512; ++k) w[5 * K + k] = std::fabs(w[5 * K + k]) + 0.01f;  // all-positive super-block
    for (int64_t k = 0; k < 256; ++k) w[6 * K + k] = -std::fabs(w[6 * K + k]) - 0.01f;   // all-negative
    PlainBuf a(f, N, K), b(f, N, K);
    QuantStats st = quantize(w.data(), K, a.p);
    quantize(w.data(), K, b.p);
    CHECK(a.same(b), "%s: quantize is not deterministic", fmt_name(f).c_str());
    std::vector<float> d(N * K);
    dequantize(a.p, d.data(), K);
    const int qmin = q4 ? 0 : -32, qmax = q4 ? 15 : 31;
    int bad = 0, range = 0;
    double max_err = 0, sum_sq = 0;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) {
        float step, mm;
        kq_params(a.p, n, k, &step, &mm);
        double best = 1e300;
        for (int q = qmin; q <= qmax; ++q) {
          const float t = step * (float)q;
          best = std::fmin(best, std::fabs((double)(t - mm) - w[n * K + k]));
        }
        const double err = std::fabs((double)d[n * K + k] - w[n * K + k]);
        max_err = std::fmax(max_err, err);
        sum_sq += err * err;
        if (err > best) ++bad;
      }
    // Sub-scales and mins within their documented ranges.
    for (size_t i = 0; i < a.s.size(); ++i)
      if (q4 && (a.s[i] > 63 || a.m[i] > 63)) ++range;
    CHECK(bad == 0, "%s: %d elements not quantized to the nearest code", fmt_name(f).c_str(), bad);
    CHECK(range == 0, "%s: %d sub-scales / mins out of range", fmt_name(f).c_str(), range);
    CHECK(std::fabs(st.max_abs_err - max_err) <= 1e-12 * (1 + max_err), "%s: stats max_abs_err %g vs %g", fmt_name(f).c_str(), st.max_abs_err, max_err);
    CHECK(std::fabs(st.rms_err - std::sqrt(sum_sq / (N * K))) <= 1e-9 * (1 + st.rms_err), "%s: stats rms", fmt_name(f).c_str());
    CHECK(st.max_err_step <= 0.5 + 1e-6 || st.clamped > 0, "%s: max_err_step %g without clamping", fmt_name(f).c_str(), st.max_err_step);
    // Relative quality: RMS error against the RMS weight (q4k ~4 bits, q6k ~6 bits).
    double wsq = 0;
    for (float v : w) wsq += (double)v * v;
    const double rel = st.rms_err / std::sqrt(wsq / (N * K));
    CHECK(rel < (q4 ? 0.12 : 0.03), "%s: relative rms error %g too large", fmt_name(f).c_str(), rel);
    // Repack round trip, layout sizes.
    const QPackedLayout L = q_packed_layout(f, N, K);
    Aligned pk(L.total);
    q_repack(a.p, pk.p);
    QPacked qp; qp.fmt = f; qp.N = N; qp.K = K; qp.data = pk.p;
    PlainBuf c(f, N, K);
    q_unpack(qp, c.p);
    CHECK(a.same(c), "%s: repack/unpack round trip differs", fmt_name(f).c_str());
    CHECK(L.panel_bytes % 64 == 0 && L.total == (size_t)(L.panels * L.panel_bytes) &&
              L.wblock_bytes == (q4 ? 2304 : 4352) && L.wblock_bytes % 64 == 0,
          "%s: layout", fmt_name(f).c_str());
    std::printf("  quantize %-14s rms_err %.3g (%.4f of rms w) max_err/step %.3f clamped %lld\n", fmt_name(f).c_str(),
                st.rms_err, rel, st.max_err_step, (long long)st.clamped);
  }
  // Hand-checked repacked bytes: q4k, one row, codes q[k] = k % 16, sc_j = j + 1, m_j = 2j.
  {
    const QuantFormat f = kq_fmt(QKind::q4k);
    PlainBuf a(f, 1, 256);
    for (int k = 0; k < 256; ++k) {
      uint8_t& b = a.q[k / 2];
      b = (k & 1) ? (uint8_t)((b & 15) | ((k % 16) << 4)) : (uint8_t)((b & 0xf0) | (k % 16));
    }
    for (int j = 0; j < 8; ++j) { a.s[j] = (uint8_t)(j + 1); a.m[j] = (uint8_t)(2 * j); }
    const uint16_t one = 0x3c00, half = 0x3800;
    std::memcpy(a.sd.data(), &one, 2);
    std::memcpy(a.sm.data(), &half, 2);
    const QPackedLayout L = q_packed_layout(f, 1, 256);
    Aligned pk(L.total);
    q_repack(a.p, pk.p);
    // vector 0, channel 0: byte i: low u[k=i] = i, high u[k=4+i] = 4+i; vector 1: k = 8..15
    CHECK(pk.p[0] == 0x40 && pk.p[3] == 0x73 && pk.p[64] == 0xC8 && pk.p[4] == 0x00 &&
              pk.p[2048] == 1 && pk.p[2048 + 7 * 16] == 8 && pk.p[2048 + 1] == 0 &&
              pk.p[2176] == 0 && pk.p[2177] == 2 && pk.p[2176 + 3 * 32 + 1] == 14 &&
              pk.p[2304] == 0x00 && pk.p[2305] == 0x3c && pk.p[2336] == 0x00 && pk.p[2337] == 0x38 && L.total == 2368,
          "q4k repacked bytes %02x %02x %02x %02x %02x %02x total %zu", pk.p[0], pk.p[3], pk.p[64], pk.p[2048], pk.p[2177],
          pk.p[2305], L.total);
    std::vector<float> y(256);
    dequantize(a.p, y.data(), 256);
    int bad = 0;
    for (int k = 0; k < 256; ++k) {
      const float want = (float)((k / 32 + 1) * (k % 16)) - 0.5f * (float)(2 * (k / 32));  // exact in f32
      if (y[k] != want) ++bad;
    }
    CHECK(bad == 0, "q4k hand-built dequantize: %d values differ", bad);
  }
}

// ggml's reference dequantization, written out from the block definitions (see
// docs/formats.md "K-quants"), as a second, loop-structured reading of the spec.
static void spec_scale_min(int j, const uint8_t* s, int* sc, int* m) {
  if (j < 4) { *sc = s[j] & 63; *m = s[j + 4] & 63; return; }
  *sc = (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4);
  *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
}
static void spec_deq_q4k(const uint8_t* blk, float* y) {
  uint16_t dh, mh;
  std::memcpy(&dh, blk, 2);
  std::memcpy(&mh, blk + 2, 2);
  const float d = f16_to_f32(dh), dmin = f16_to_f32(mh);
  const uint8_t* qs = blk + 16;
  for (int chunk = 0; chunk < 4; ++chunk) {  // 64 elements: sub-blocks 2*chunk (low), 2*chunk+1 (high)
    for (int half = 0; half < 2; ++half) {
      int sc, m;
      spec_scale_min(2 * chunk + half, blk + 4, &sc, &m);
      const float dl = d * (float)sc, ml = dmin * (float)m;
      for (int l = 0; l < 32; ++l) {
        const int q = half ? (qs[32 * chunk + l] >> 4) : (qs[32 * chunk + l] & 0x0F);
        const float t = dl * (float)q;
        y[64 * chunk + 32 * half + l] = t - ml;
      }
    }
  }
}
static void spec_deq_q6k(const uint8_t* blk, float* y) {
  uint16_t dh;
  std::memcpy(&dh, blk + 208, 2);
  const float d = f16_to_f32(dh);
  for (int h = 0; h < 2; ++h) {
    const uint8_t* ql = blk + 64 * h;
    const uint8_t* qh = blk + 128 + 32 * h;
    const int8_t* sc = (const int8_t*)(blk + 192) + 8 * h;
    for (int l = 0; l < 32; ++l) {
      const int is = l / 16;
      const int q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) - 32;
      const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      float t;
      t = d * (float)sc[is + 0]; y[128 * h + l + 0] = t * (float)q1;
      t = d * (float)sc[is + 2]; y[128 * h + l + 32] = t * (float)q2;
      t = d * (float)sc[is + 4]; y[128 * h + l + 64] = t * (float)q3;
      t = d * (float)sc[is + 6]; y[128 * h + l + 96] = t * (float)q4;
    }
  }
}
// Random finite f16 bit pattern (any sign, subnormals included; exponent != 31).
static uint16_t rand_f16(std::mt19937& rng) {
  uint16_t h = (uint16_t)rng();
  if ((h & 0x7c00) == 0x7c00) h &= 0xbfff;
  return h;
}
// Random K-quant blocks (random codes and scale bytes, finite f16 super scales).
static std::vector<uint8_t> rand_kq_blocks(std::mt19937& rng, int t, int64_t nblk, bool sane) {
  const int64_t bb = t == kGgmlQ4_K ? 144 : 210;
  std::vector<uint8_t> src(nblk * bb);
  for (auto& b : src) b = (uint8_t)rng();
  for (int64_t i = 0; i < nblk; ++i) {
    uint8_t* blk = &src[i * bb];
    uint16_t d = rand_f16(rng), m = rand_f16(rng);
    if (sane) {  // magnitudes a model would have (for GEMMs)
      d = f32_to_f16(std::ldexp(1.0f + (float)(i % 5), -10 - (int)(i % 3)));
      m = f32_to_f16(std::ldexp(1.0f + (float)(i % 3), -9));
    }
    if (t == kGgmlQ4_K) { std::memcpy(blk, &d, 2); std::memcpy(blk + 2, &m, 2); }
    else std::memcpy(blk + 208, &d, 2);
  }
  return src;
}

static void test_gguf_kq(std::mt19937& rng) {
  // 1. Hand-built blocks from chosen (sc, m, q) against values computed by hand.
  {
    // Q4_K: sc_j = 40 + j (needs the 6-bit split for j >= 4), m_j = 63 - 5j, d = 2^-4,
    // dmin = 2^-6, codes q(e) = (e * 7) % 16.
    uint8_t blk[144] = {};
    const uint16_t d = 0x2c00, dmin = 0x2400;  // 0.0625, 0.015625
    std::memcpy(blk, &d, 2);
    std::memcpy(blk + 2, &dmin, 2);
    int sc[8], m[8];
    for (int j = 0; j < 8; ++j) { sc[j] = 40 + j; m[j] = 63 - 5 * j; }
    uint8_t* s = blk + 4;
    for (int j = 0; j < 4; ++j) {
      s[j] = (uint8_t)((sc[j] & 63) | ((sc[j + 4] >> 4) << 6));
      s[j + 4] = (uint8_t)((m[j] & 63) | ((m[j + 4] >> 4) << 6));
      s[j + 8] = (uint8_t)((sc[j + 4] & 15) | ((m[j + 4] & 15) << 4));
    }
    for (int e = 0; e < 256; ++e) {
      const int q = (e * 7) % 16, c = e / 64, l = e % 64;
      uint8_t& b = blk[16 + 32 * c + l % 32];
      b = l < 32 ? (uint8_t)((b & 0xf0) | q) : (uint8_t)((b & 0x0f) | (q << 4));
    }
    const QuantFormat f = gguf_native_format(kGgmlQ4_K);
    PlainBuf pb(f, 1, 256);
    gguf_import(kGgmlQ4_K, blk, sizeof blk, 1, 256, pb.p);
    std::vector<float> y(256);
    dequantize(pb.p, y.data(), 256);
    int bad = 0;
    for (int e = 0; e < 256; ++e) {
      const int j = e / 32;
      // Every product and difference here is exact in f32, so the order cannot matter.
      const double want = 0.0625 * sc[j] * ((e * 7) % 16) - 0.015625 * m[j];
      if ((double)y[e] != want) ++bad;
      if (pb.s[j] != sc[j] || pb.m[j] != m[j]) ++bad;
    }
    CHECK(bad == 0, "Q4_K hand-built block: %d mismatches", bad);
  }
  {
    // Q6_K: 6-bit value L(e) = (e * 5 + 3) % 64 (q = L - 32), sc_j = j*17 - 128 (incl. -128),
    // d = -2^-8.
    uint8_t blk[210] = {};
    const uint16_t d = 0x9c00;  // -0.00390625
    std::memcpy(blk + 208, &d, 2);
    for (int j = 0; j < 16; ++j) blk[192 + j] = (uint8_t)(int8_t)(j * 17 - 128);
    for (int e = 0; e < 256; ++e) {
      const int L = (e * 5 + 3) % 64, h = e / 128, t = (e % 128) / 32, l = e % 32;
      uint8_t& lb = blk[64 * h + l + 32 * (t & 1)];
      lb = t < 2 ? (uint8_t)((lb & 0xf0) | (L & 15)) : (uint8_t)((lb & 0x0f) | ((L & 15) << 4));
      blk[128 + 32 * h + l] |= (uint8_t)((L >> 4) << (2 * t));
    }
    const QuantFormat f = gguf_native_format(kGgmlQ6_K);
    PlainBuf pb(f, 1, 256);
    gguf_import(kGgmlQ6_K, blk, sizeof blk, 1, 256, pb.p);
    std::vector<float> y(256);
    dequantize(pb.p, y.data(), 256);
    int bad = 0;
    for (int e = 0; e < 256; ++e) {
      const double want = -0.00390625 * (e / 16 * 17 - 128) * ((e * 5 + 3) % 64 - 32);  // exact
      if ((double)y[e] != want) ++bad;
      if ((int8_t)pb.q[e] != (e * 5 + 3) % 64 - 32) ++bad;
    }
    CHECK(bad == 0, "Q6_K hand-built block: %d mismatches", bad);
  }
  // 2. Random blocks (any scale bytes, finite f16 d/dmin incl. subnormal and negative)
  //    against the loop-structured port of ggml's dequantize_row_q4_K / q6_K.
  for (int t : {kGgmlQ4_K, kGgmlQ6_K}) {
    const int64_t N = 7, K = 256 * 9, bb = t == kGgmlQ4_K ? 144 : 210;
    std::vector<uint8_t> src = rand_kq_blocks(rng, t, N * K / 256, false);
    CHECK(gguf_row_bytes(t, K) == (size_t)(K / 256 * bb), "gguf_row_bytes(%d)", t);
    const QuantFormat f = gguf_native_format(t);
    PlainBuf pb(f, N, K);
    gguf_import(t, src.data(), src.size(), N, K, pb.p);
    std::vector<float> got(N * K), want(N * K);
    dequantize(pb.p, got.data(), K);
    for (int64_t i = 0; i < N * K / 256; ++i) (t == kGgmlQ4_K ? spec_deq_q4k : spec_deq_q6k)(&src[i * bb], &want[i * 256]);
    int diff = 0;
    for (int64_t i = 0; i < N * K; ++i)
      if (std::memcmp(&got[i], &want[i], 4) != 0) ++diff;
    CHECK(diff == 0, "gguf type %d: %d values differ from ggml's dequantization", t, diff);
    const QPackedLayout L = q_packed_layout(f, N, K);
    Aligned pk(L.total);
    q_repack(pb.p, pk.p);
    QPacked qp; qp.fmt = f; qp.N = N; qp.K = K; qp.data = pk.p;
    PlainBuf back(f, N, K);
    q_unpack(qp, back.p);
    CHECK(back.same(pb), "gguf type %d: repack round trip", t);
    bool threw = false;
    try { gguf_import(t, src.data(), src.size() - 1, N, K, pb.p); } catch (const Error& e) { threw = e.code == Code::SHAPE; }
    CHECK(threw, "gguf type %d: short buffer not rejected", t);
    threw = false;
    try { PlainBuf x(kq_fmt(f.kind), N, 256); gguf_import(t, src.data(), src.size(), N, 288, x.p); } catch (const Error& e) { threw = e.code == Code::SHAPE; }
    CHECK(threw, "gguf type %d: K=288 not rejected", t);
    std::printf("  gguf import type %d: %lld values bit-exact (random blocks), hand-built block exact\n", t, (long long)(N * K));
  }
}

// ---- bad arguments ----------------------------------------------------------------------
static void test_bad_args() {
  auto expect = [](const char* what, Code want, const std::function<void()>& fn) {
    try { fn(); } catch (const Error& e) {
      CHECK(e.code == want, "%s: got %s (%s), want %s", what, code_name(e.code), e.what(), code_name(want));
      return;
    }
    CHECK(false, "%s: no error", what);
  };
  QuantFormat f; f.kind = QKind::int4; f.group = 32;
  alignas(64) static uint8_t buf[1 << 16];
  static float A[4 * 96], C[4 * 64];
  QGemmArgs g; g.w.fmt = f; g.w.N = 64; g.w.K = 96; g.w.data = buf;
  g.M = 4; g.A = A; g.lda = 96; g.C = C; g.ldc = 64;
  qgemm_check(g, 96);  // valid
  expect("mismatched K", Code::SHAPE, [&] { qgemm_check(g, 95); });
  { QGemmArgs b = g; b.w.K = 80; expect("group does not divide K", Code::SHAPE, [&] { qgemm_check(b, 80); }); }
  { QGemmArgs b = g; b.w.fmt.group = 48; expect("group 48", Code::INVALID_ARG, [&] { qgemm_check(b, 96); }); }
  { QGemmArgs b = g; b.w.fmt.group = 0; expect("int4 per-channel", Code::INVALID_ARG, [&] { qgemm_check(b, 96); }); }
  { QGemmArgs b = g; b.w.fmt.kind = QKind::int8; b.w.fmt.asym = true; expect("int8 asym", Code::INVALID_ARG, [&] { qgemm_check(b, 96); }); }
  { QGemmArgs b = g; b.w.fmt.scale_dtype = DType::bf16; expect("bf16 scales", Code::DTYPE, [&] { qgemm_check(b, 96); }); }
  { QGemmArgs b = g; b.a_dtype = DType::int8; expect("A dtype", Code::DTYPE, [&] { qgemm_check(b, 96); }); }
  { QGemmArgs b = g; b.c_dtype = DType::i32; expect("C dtype", Code::DTYPE, [&] { qgemm_check(b, 96); }); }
  { QGemmArgs b = g; b.M = 0; expect("M=0", Code::SHAPE, [&] { qgemm_check(b, 96); }); }
  { QGemmArgs b = g; b.lda = 90; expect("lda < K", Code::SHAPE, [&] { qgemm_check(b, 96); }); }
  { QGemmArgs b = g; b.ldc = 10; expect("ldc < N", Code::SHAPE, [&] { qgemm_check(b, 96); }); }
  { QGemmArgs b = g; b.w.data = buf + 1; expect("misaligned weights", Code::INVALID_ARG, [&] { qgemm_check(b, 96); }); }
  { QGemmArgs b = g; b.residual = C + 1; b.ldr = 64; expect("residual overlap", Code::INVALID_ARG, [&] { qgemm_check(b, 96); }); }
  { QGemmArgs b = g; b.residual = C; b.ldr = 65; expect("residual alias stride", Code::INVALID_ARG, [&] { qgemm_check(b, 96); }); }
  {
    QuantFormat q8; q8.kind = QKind::int8; q8.group = 32; q8.scale_dtype = DType::f16;
    PlainBuf pb(q8, 1, 32);
    std::vector<float> w(32, 1.0f);
    w[5] = std::nanf("");
    expect("NaN weight", Code::INVALID_ARG, [&] { quantize(w.data(), 32, pb.p); });
    w[5] = 1e10f;
    expect("f16 scale overflow", Code::INVALID_ARG, [&] { quantize(w.data(), 32, pb.p); });
  }
  { QGemmArgs b = g; b.w.K = 70000; b.w.fmt.group = 0; b.w.fmt.kind = QKind::int8; b.lda = 70000;
    expect("K too large", Code::SHAPE, [&] { qgemm_check(b, 70000); }); }
  for (QKind kk : {QKind::q4k, QKind::q6k}) {
    QGemmArgs b = g; b.w.fmt = kq_fmt(kk); b.w.K = 512 + 32; b.lda = 544;
    expect("K-quant K % 256", Code::SHAPE, [&] { qgemm_check(b, 544); });
    try { q_format_check(b.w.fmt, 64, 544); } catch (const Error& e) {
      CHECK(std::string(e.arg) == "weights" && std::strstr(e.what(), "256"), "K-quant K error names weights / 256: %s", e.what());
    }
    b.w.K = 512; b.lda = 512;
    qgemm_check(b, 512);  // valid
    { QGemmArgs c = b; c.w.fmt.group = 0; qgemm_check(c, 512); }  // group 0 means 256
    { QGemmArgs c = b; c.w.fmt.group = 128; expect("K-quant group 128", Code::INVALID_ARG, [&] { qgemm_check(c, 512); }); }
    { QGemmArgs c = b; c.w.fmt.scale_dtype = DType::f32; expect("K-quant f32 super scale", Code::DTYPE, [&] { qgemm_check(c, 512); }); }
    { QGemmArgs c = b; c.w.fmt.asym = true; expect("K-quant asym", Code::INVALID_ARG, [&] { qgemm_check(c, 512); }); }
    { PlainBuf pb(kq_fmt(kk), 1, 256); std::vector<float> w(256, 1.0f); w[9] = INFINITY;
      expect("K-quant non-finite weight", Code::INVALID_ARG, [&] { quantize(w.data(), 256, pb.p); }); }
    { PlainBuf pb(kq_fmt(kk), 1, 256); std::vector<float> w(256, 1.0f); w[9] = 3e9f;
      expect("K-quant f16 super-scale overflow", Code::INVALID_ARG, [&] { quantize(w.data(), 256, pb.p); }); }
  }
}

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  std::vector<IsaImpl> isas = {
      {"scalar", &cpu::scalar::qgemm, true},
      {"avx2", &cpu::avx2::qgemm, (bool)__builtin_cpu_supports("avx2") && (bool)__builtin_cpu_supports("fma")},
#if defined(TY_AVX512_EMULATED)
      {"avx512(emulated)", &cpu::avx512::qgemm, true},
#else
      {"avx512", &cpu::avx512::qgemm, (bool)__builtin_cpu_supports("avx512vnni") && (bool)__builtin_cpu_supports("avx512bw")},
#endif
  };
  for (auto& i : isas) std::printf("isa %-17s %s\n", i.name, i.on ? "tested" : "NOT AVAILABLE on this CPU (skipped)");

  std::mt19937 rng(1234);
  std::printf("quantize / repack:\n");
  test_quantize(rng);
  std::printf("gguf importers:\n");
  test_gguf(rng);
  std::printf("K-quants (q4k, q6k):\n");
  test_kq_quantize(rng);
  test_gguf_kq(rng);
  const int before_bad = g_pass + g_fail;
  test_bad_args();
  std::printf("bad-argument checks: %d\n", g_pass + g_fail - before_bad);

  std::printf("qgemm:\n");
  ThreadPool pool(2);
  std::vector<QuantFormat> fmts;
  for (DType sd : {DType::f32, DType::f16}) {
    for (int gsz : {0, 32, 128}) { QuantFormat f; f.kind = QKind::int8; f.group = gsz; f.scale_dtype = sd; fmts.push_back(f); }
    for (int gsz : {32, 64, 128})
      for (bool a : {false, true}) { QuantFormat f; f.kind = QKind::int4; f.group = gsz; f.asym = a; f.scale_dtype = sd; fmts.push_back(f); }
  }
  const DType acts[3] = {DType::f32, DType::f16, DType::bf16};
  std::vector<Worst> worst(2 * isas.size());  // [0, n): any output dtype; [n, 2n): f32 output
  uint32_t seed = 1;
  int cases = 0;
  for (const QuantFormat& f : fmts) {
    const int64_t G = f.group;
    // K: a few blocks (not a multiple of 256), one long K; per-channel also odd K.
    std::vector<int64_t> Ks = G ? std::vector<int64_t>{3 * G, 5 * G, G * ((4160 + G - 1) / G)}
                                : std::vector<int64_t>{1, 3, 96, 161, 4160};
    for (int64_t K : Ks)
      for (int64_t M : {1, 3, 8, 17, 600}) {
        if (quick && M == 600 && K > 1000) continue;
        for (int64_t N : {1, 45, 67}) {
          if (K > 1000 && M == 600 && N != 45) continue;  // keep the scalar reference fast
          if (M == 600 && N == 1) continue;
          const DType adt = acts[seed % 3], cdt = acts[(seed / 3) % 3];
          const bool bias = seed % 2 == 0;
          const int res = (int)((seed / 2) % 3);
          gemm_case(isas, f, M, N, K, adt, cdt, bias, res, seed, worst, pool, M <= 17 && N == 45);
          ++seed; ++cases;
        }
      }
  }
  // GEMM over GGUF-imported tensors (Q8_0 codes include -128) on every ISA.
  for (int t : {kGgmlQ4_0, kGgmlQ4_1, kGgmlQ8_0}) {
    const QuantFormat f = gguf_native_format(t);
    const int64_t N = 37, K = 32 * 7;
    const int64_t bb = (int64_t)gguf_row_bytes(t, 32);
    std::vector<uint8_t> src(gguf_row_bytes(t, K) * N);
    for (auto& b : src) b = (uint8_t)rng();
    for (int64_t i = 0; i < N * K / 32; ++i) {  // sane f16 scales / mins
      const uint16_t d = f32_to_f16(std::ldexp(1.0f + (float)(i % 5), -6 - (int)(i % 3))), m = f32_to_f16(-0.01f * (float)(i % 7));
      std::memcpy(&src[i * bb], &d, 2);
      if (t == kGgmlQ4_1) std::memcpy(&src[i * bb + 2], &m, 2);
      if (t == kGgmlQ8_0 && i % 3 == 0) src[i * bb + 2 + i % 32] = 0x80;  // a -128 code
    }
    PlainBuf pb(f, N, K);
    gguf_import(t, src.data(), src.size(), N, K, pb.p);
    for (int64_t M : {1, 5, 19})
      gemm_case(isas, f, M, N, K, acts[seed % 3], DType::f32, true, 0, seed, worst, pool, false, &pb.p), ++seed, ++cases;
  }
  // Extremes of the int32 range: K = 65536 per channel, codes +127 / -128, |a| constant
  // (every activation code is +-127), so each dot product is +-127*128*65536 or so.
  {
    QuantFormat f; f.kind = QKind::int8; f.group = 0; f.scale_dtype = DType::f32;
    const int64_t N = 19, K = 65536, M = 3;
    PlainBuf pb(f, N, K);
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t k = 0; k < K; ++k) ((int8_t*)pb.p.q)[n * K + k] = (int8_t)(n % 3 == 0 ? 127 : n % 3 == 1 ? -128 : (k % 2 ? 127 : -128));
      ((float*)pb.p.scales)[n] = 1.0f / 128;
    }
    std::vector<float> a(M * K);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t k = 0; k < K; ++k) a[m * K + k] = m == 0 ? 1.0f : m == 1 ? -2.0f : (k % 2 ? 0.5f : -0.5f);
    gemm_case(isas, f, M, N, K, DType::f32, DType::f32, false, 0, seed++, worst, pool, false, &pb.p, &a), ++cases;
  }
  // K-quants: q4k / q6k over M = 1..600, odd N, K = 256, 512, 2816 (11 super-blocks).
  for (QKind kk : {QKind::q4k, QKind::q6k}) {
    const QuantFormat f = kq_fmt(kk);
    for (int64_t K : {256, 512, 2816})
      for (int64_t M : {1, 2, 3, 5, 8, 9, 17, 600})
        for (int64_t N : {17, 33, 100}) {
          if (M == 600 && (N != 33 || (quick && K > 512))) continue;
          if (quick && (M == 2 || M == 9) && N != 17) continue;
          const DType adt = acts[seed % 3], cdt = acts[(seed / 3) % 3];
          gemm_case(isas, f, M, N, K, adt, cdt, seed % 2 == 0, (int)((seed / 2) % 3), seed, worst, pool, M <= 17 && N == 33);
          ++seed; ++cases;
        }
    // Imported (random, sane-scaled) GGUF blocks.
    const int t = kk == QKind::q4k ? kGgmlQ4_K : kGgmlQ6_K;
    const int64_t N = 37, K = 768;
    std::vector<uint8_t> src = rand_kq_blocks(rng, t, N * K / 256, true);
    PlainBuf pb(f, N, K);
    gguf_import(t, src.data(), src.size(), N, K, pb.p);
    for (int64_t M : {1, 5, 19})
      gemm_case(isas, f, M, N, K, acts[seed % 3], DType::f32, true, 0, seed, worst, pool, false, &pb.p), ++seed, ++cases;
    // int32 extremes: every code at its extreme, every sub-scale / min at its extreme, and
    // activations constant in magnitude (every code +-127), K = 2816.
    {
      const int64_t N2 = 19, K2 = 2816, M2 = 3;
      PlainBuf e(f, N2, K2);
      for (int64_t n = 0; n < N2; ++n) {
        for (int64_t k = 0; k < K2; ++k) {
          if (kk == QKind::q4k) e.q[(n * K2 + k) / 2] = (n % 2) ? 0xff : 0x0f;  // 15 (and 0 / 15)
          else e.q[n * K2 + k] = (uint8_t)(int8_t)(n % 3 == 0 ? -32 : n % 3 == 1 ? 31 : (k % 2 ? 31 : -32));
        }
        for (size_t i = 0; i < e.s.size() / N2; ++i) {
          e.s[n * (e.s.size() / N2) + i] = kk == QKind::q4k ? 63 : (uint8_t)(int8_t)(n % 2 ? -128 : 127);
          if (!e.m.empty()) e.m[n * (e.m.size() / N2) + i] = 63;
        }
        for (int64_t b = 0; b < K2 / 256; ++b) {
          const uint16_t one = f32_to_f16(1.0f / 4096), mn = f32_to_f16(1.0f / 8192);
          std::memcpy(&e.sd[(n * (K2 / 256) + b) * 2], &one, 2);
          if (!e.sm.empty()) std::memcpy(&e.sm[(n * (K2 / 256) + b) * 2], &mn, 2);
        }
      }
      std::vector<float> a(M2 * K2);
      for (int64_t m = 0; m < M2; ++m)
        for (int64_t k = 0; k < K2; ++k) a[m * K2 + k] = m == 0 ? 1.0f : m == 1 ? -2.0f : (k % 2 ? 0.5f : -0.5f);
      gemm_case(isas, f, M2, N2, K2, DType::f32, DType::f32, false, 0, seed++, worst, pool, false, &e.p, &a), ++cases;
    }
  }
  std::printf("  %d shape/format cases\n", cases);
  for (size_t i = 0; i < isas.size(); ++i)
    if (isas[i].on) {
      std::printf("  worst err/tol %-17s %.3f  at %s\n", isas[i].name, worst[i].ratio, worst[i].where.c_str());
      const Worst& w32 = worst[isas.size() + i];
      std::printf("    (f32 output: %.3f at %s)\n", w32.ratio, w32.where.c_str());
      std::printf("    (f32 output vs the kernel specification alone: worst %.3f)\n", g_spec_f32[i]);
    }

  std::printf("%d passed, %d failed\n", g_pass, g_fail);
  return g_fail ? 1 : 0;
}
