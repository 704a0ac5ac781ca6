// Tachyon: standalone test of the fused SwiGLU gate/up quantized GEMM and the grouped (MoE)
// quantized GEMM (driver section of native/cpu/kernels/qgemm.cpp, every ISA variant) against
// the float64 reference (native/cpu/ref/qgemm_fused_ref.cpp), plus the gate/up layout and
// argument validation (native/cpu/qgemm_fused.cpp). Build and run:
// native/tests/qgemm_fused_test.sh [--quick] [--bench].
//
// Tolerance (per output, |got - ref| <= allowed; the model is in qgemm_fused_ref.h):
//   allowed = tol (spec: A quantized as the kernel specifies; exact: A itself, plus the
//             a priori activation-rounding bound) + output rounding (f16: 2^-11 |ref| +
//             2^-24, bf16: 2^-8 |ref| + 2^-126).
// The grouped GEMM is also compared BIT FOR BIT with qgemm() run on each expert's gathered
// rows (same ISA): the grouped driver must not change the arithmetic.
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

#include "qgemm_pool.h"
#include "qkernels.h"
#include "ref/qgemm_fused_ref.h"
#include "tachyon/error.h"
#include "tachyon/quant.h"

using namespace ty;

static int g_fail = 0, g_pass = 0;
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
  Aligned(const Aligned&) = delete;
};

static std::string fmt_name(const QuantFormat& f) {
  if (f.kind == QKind::q4k) return "q4k";
  if (f.kind == QKind::q6k) return "q6k";
  std::string s = f.kind == QKind::int8 ? "int8" : (f.asym ? "int4a" : "int4s");
  s += f.group ? "-g" + std::to_string(f.group) : "-pc";
  s += f.scale_dtype == DType::f16 ? "-f16" : "-f32";
  return s;
}
static QuantFormat qf(QKind k, int g, bool asym, DType sd) { QuantFormat f; f.kind = k; f.group = g; f.asym = asym; f.scale_dtype = sd; return f; }

static void rand_plain(std::mt19937& rng, PlainBuf& pb) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_real_distribution<float> ud(0.0f, 1.0f);
  const int64_t N = pb.p.N, K = pb.p.K;
  std::vector<float> w(N * K);
  for (int64_t n = 0; n < N; ++n) {
    const float rs = std::exp2f((float)(int)(ud(rng) * 6) - 5);
    for (int64_t k = 0; k < K; ++k) w[n * K + k] = nd(rng) * rs * (ud(rng) < 0.002f ? 8.0f : 1.0f);
  }
  quantize(w.data(), K, pb.p);
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
// Activations: per-row scales spread over 1e-3 .. 30 (so silu sees both tails), a few zero rows.
// `big` is the scale of the large rows (SwiGLU outputs are quadratic in A: kept inside f16).
static std::vector<uint8_t> rand_act(std::mt19937& rng, DType t, int64_t M, int64_t lda, float big) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<uint8_t> A((size_t)(M * lda) * dtype_bytes(t, 1));
  for (int64_t m = 0; m < M; ++m) {
    const float rs = (m % 5 == 4) ? 1e-3f : (m % 5 == 1 ? big : 1.0f);
    for (int64_t k = 0; k < lda; ++k) store_act(A.data(), t, m * lda + k, (m % 11 == 7) ? 0.0f : nd(rng) * rs);
  }
  return A;
}

struct Isa {
  const char* name;
  void (*gemm)(const QGemmArgs&, Parallel&);
  void (*grouped)(const QGroupedArgs&, Parallel&);
  void (*apply)(const float*, const float*, float*, int64_t);
  bool on;
  double worst = 0;
  std::string where;
};

// Compares C (c_dtype, [M, ldc]) with the reference; returns the worst err/allowed ratio.
static double compare(const ref::QFusedRef& r, const std::vector<uint8_t>& C, const std::vector<uint8_t>& C0, DType cdt,
                      int64_t M, int64_t N, int64_t ldc, std::string& at, bool& guard_ok) {
  double worst = 0;
  const size_t ces = dtype_bytes(cdt, 1);
  guard_ok = true;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < ldc; ++n) {
      if (n >= N) {
        if (std::memcmp(&C[(m * ldc + n) * ces], &C0[(m * ldc + n) * ces], ces)) guard_ok = false;
        continue;
      }
      const double got = load_act(C.data(), cdt, m * ldc + n);
      const double sp = r.spec[m * N + n], ex = r.exact[m * N + n];
      // One rounding of the kernel's f32 value v, |v| <= |spec| + tol_spec: at most half an
      // ulp, <= 2^-11 |v| (f16; + 2^-24 for subnormals) or 2^-8 |v| (bf16).
      const double v = std::fabs(sp) + r.tol_spec[m * N + n];
      double rnd = 0;
      if (cdt == DType::f16) rnd = std::ldexp(v, -11) + std::ldexp(1.0, -24);
      if (cdt == DType::bf16) rnd = std::ldexp(v, -8) + std::ldexp(1.0, -126);
      const double d1 = std::fabs(got - sp), d2 = std::fabs(got - ex);
      const double r1 = d1 == 0 ? 0 : d1 / (r.tol_spec[m * N + n] + rnd);
      const double r2 = d2 == 0 ? 0 : d2 / (r.tol_exact[m * N + n] + rnd);
      double w = std::fmax(r1, r2);
      if (std::isnan(got) || std::isnan(w)) w = 1e30;
      if (w > worst) {
        worst = w;
        char b[160];
        std::snprintf(b, sizeof b, "m=%lld n=%lld got=%.9g spec=%.9g exact=%.9g", (long long)m, (long long)n, got, sp, ex);
        at = b;
      }
    }
  return worst;
}

// ---- SwiGLU -------------------------------------------------------------------------------
static void swiglu_case(std::vector<Isa>& isas, Parallel& pool, const QuantFormat& f, int64_t M, int64_t F, int64_t K,
                        DType adt, DType cdt, bool bias, uint32_t seed, bool serial_too) {
  std::mt19937 rng(seed);
  PlainBuf gate(f, F, K), up(f, F, K);
  rand_plain(rng, gate);
  rand_plain(rng, up);
  const QPackedLayout L = q_gate_up_layout(f, F, K);
  Aligned packed(L.total);
  q_repack_gate_up(gate.p, up.p, packed.p);
  const int64_t lda = K + (seed % 3 == 0 ? 7 : 0), ldc = F + (seed % 2 ? 5 : 0);
  std::vector<uint8_t> A = rand_act(rng, adt, M, lda, 4.0f);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> bv(2 * F);
  for (auto& b : bv) b = nd(rng);
  QGemmArgs g;
  g.w.fmt = f; g.w.N = F; g.w.K = K; g.w.data = packed.p;
  g.a_dtype = adt; g.M = M; g.A = A.data(); g.lda = lda;
  g.c_dtype = cdt; g.ldc = ldc;
  g.bias = bias ? bv.data() : nullptr;
  g.epilogue = QEpilogue::swiglu;
  std::vector<uint8_t> C0((size_t)(M * ldc) * dtype_bytes(cdt, 1));
  for (auto& b : C0) b = (uint8_t)rng();
  for (size_t i = 0; i < C0.size() / dtype_bytes(cdt, 1); ++i) store_act(C0.data(), cdt, (int64_t)i, 12345.0f);
  std::vector<uint8_t> C = C0;
  g.C = C.data();
  qgemm_check(g, K);
  ref::QFusedRef r;
  ref::qgemm_swiglu_ref(gate.p, up.p, g, r);
  SerialParallel serial;
  for (Isa& isa : isas) {
    if (!isa.on) continue;
    for (int run = 0; run < (serial_too ? 2 : 1); ++run) {
      C = C0;
      isa.gemm(g, run ? static_cast<Parallel&>(serial) : pool);
      std::string at;
      bool guard;
      const double w = compare(r, C, C0, cdt, M, F, ldc, at, guard);
      char buf[400];
      std::snprintf(buf, sizeof buf, "swiglu %s M=%lld F=%lld K=%lld A=%s C=%s bias=%d %s (%s)", fmt_name(f).c_str(),
                    (long long)M, (long long)F, (long long)K, dtype_name(adt), dtype_name(cdt), (int)bias, run ? "serial" : "pool", at.c_str());
      CHECK(w <= 1.0, "[%s] %s err/allowed = %.3g", isa.name, buf, w);
      CHECK(guard, "[%s] %s wrote outside F", isa.name, buf);
      if (w > isa.worst) { isa.worst = w; isa.where = buf; }
    }
  }
}

// ---- grouped ------------------------------------------------------------------------------
// Routing: T tokens, top-k experts each (distinct per token), expert popularity skewed
// (expert e drawn with weight skew^e), some experts forced empty. Returns rows / offsets.
static void route(std::mt19937& rng, int64_t T, int64_t E, int k, double skew, const std::vector<bool>& empty,
                  std::vector<int32_t>& rows, std::vector<int32_t>& offsets) {
  std::vector<std::vector<int32_t>> by(E);
  std::uniform_real_distribution<double> ud(0, 1);
  std::vector<double> wt(E);
  for (int64_t e = 0; e < E; ++e) wt[e] = empty[e] ? 0.0 : std::pow(skew, (double)e);
  for (int64_t t = 0; t < T; ++t) {
    std::vector<double> w = wt;
    for (int j = 0; j < k; ++j) {
      double tot = 0;
      for (double x : w) tot += x;
      if (tot <= 0) break;
      double u = ud(rng) * tot;
      int64_t e = 0;
      for (; e < E - 1; ++e) { if (u < w[e]) break; u -= w[e]; }
      while (w[e] <= 0) e = (e + 1) % E;
      by[e].push_back((int32_t)t);
      w[e] = 0;  // top-k: distinct experts per token
    }
  }
  rows.clear(); offsets.assign(E + 1, 0);
  for (int64_t e = 0; e < E; ++e) {
    // expert segments are not sorted by token: shuffle to make sure the kernel does not care
    std::shuffle(by[e].begin(), by[e].end(), rng);
    for (int32_t t : by[e]) rows.push_back(t);
    offsets[e + 1] = (int32_t)rows.size();
  }
}

static void grouped_case(std::vector<Isa>& isas, Parallel& pool, const QuantFormat& f, bool swiglu, int64_t E, int64_t T,
                         int topk, double skew, const std::vector<bool>& empty, int64_t N, int64_t K, DType adt, DType cdt,
                         bool bias, uint32_t seed, const char* label, int64_t dup_extra = 0) {
  std::mt19937 rng(seed);
  std::vector<int32_t> rows, offsets;
  route(rng, T, E, topk, skew, empty, rows, offsets);
  if (dup_extra) {  // also repeat a token inside one expert's segment (never from routing, still valid)
    int64_t e = 0;
    while (offsets[e + 1] == offsets[e]) ++e;
    for (int64_t j = 0; j < dup_extra; ++j) rows.insert(rows.begin() + offsets[e], rows[offsets[e]]);
    for (int64_t x = e + 1; x <= E; ++x) offsets[x] += (int32_t)dup_extra;
  }
  const int64_t R = (int64_t)rows.size();
  std::vector<PlainBuf*> wg, wu;
  std::vector<const QPlain*> pg, pu;
  std::vector<Aligned*> packed;
  std::vector<const uint8_t*> wptr(E);
  const QPackedLayout L = swiglu ? q_gate_up_layout(f, N, K) : q_packed_layout(f, N, K);
  for (int64_t e = 0; e < E; ++e) {
    wg.push_back(new PlainBuf(f, N, K));
    wu.push_back(new PlainBuf(f, N, K));
    rand_plain(rng, *wg.back());
    if (swiglu) rand_plain(rng, *wu.back());
    pg.push_back(&wg.back()->p); pu.push_back(&wu.back()->p);
    packed.push_back(new Aligned(L.total));
    if (swiglu) q_repack_gate_up(wg.back()->p, wu.back()->p, packed.back()->p);
    else q_repack(wg.back()->p, packed.back()->p);
    wptr[e] = offsets[e + 1] > offsets[e] ? packed.back()->p : nullptr;  // empty experts: no weights
  }
  const int64_t lda = K + (seed % 3 == 0 ? 3 : 0), ldc = N + (seed % 2 ? 2 : 0);
  std::vector<uint8_t> A = rand_act(rng, adt, T, lda, swiglu ? 4.0f : 30.0f);
  const int64_t nbias = swiglu ? 2 * N : N, ldb = nbias + 1;
  std::vector<float> bv(E * ldb);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (auto& b : bv) b = nd(rng);

  QGroupedArgs a;
  a.fmt = f; a.N = N; a.K = K; a.E = E; a.w = wptr.data();
  a.epilogue = swiglu ? QEpilogue::swiglu : QEpilogue::none;
  a.a_dtype = adt; a.T = T; a.A = A.data(); a.lda = lda;
  a.R = R; a.rows = rows.data(); a.offsets = offsets.data();
  a.c_dtype = cdt; a.ldc = ldc;
  a.bias = bias ? bv.data() : nullptr; a.ldb = ldb;
  std::vector<uint8_t> C0((size_t)(std::max<int64_t>(R, 1) * ldc) * dtype_bytes(cdt, 1));
  for (size_t i = 0; i < C0.size() / dtype_bytes(cdt, 1); ++i) store_act(C0.data(), cdt, (int64_t)i, -777.0f);
  std::vector<uint8_t> C = C0;
  a.C = C.data();
  qgemm_grouped_check(a, K);
  ref::QFusedRef r;
  ref::qgemm_grouped_ref(pg, pu, a, r);

  int64_t maxseg = 0, nempty = 0;
  for (int64_t e = 0; e < E; ++e) { maxseg = std::max<int64_t>(maxseg, offsets[e + 1] - offsets[e]); nempty += offsets[e + 1] == offsets[e]; }
  const size_t ces = dtype_bytes(cdt, 1), aes = dtype_bytes(adt, 1);
  for (Isa& isa : isas) {
    if (!isa.on) continue;
    C = C0;
    isa.grouped(a, pool);
    std::string at;
    bool guard;
    const double w = compare(r, C, C0, cdt, R, N, ldc, at, guard);
    // Bit-exact against qgemm on each expert's gathered rows.
    int64_t diff = 0;
    for (int64_t e = 0; e < E; ++e) {
      const int64_t mb = offsets[e], n = offsets[e + 1] - mb;
      if (!n) continue;
      std::vector<uint8_t> Ae((size_t)(n * K) * aes), Ce((size_t)(n * N) * ces);
      for (int64_t j = 0; j < n; ++j) std::memcpy(&Ae[(size_t)(j * K) * aes], &A[(size_t)(rows[mb + j] * lda) * aes], (size_t)K * aes);
      QGemmArgs g;
      g.w.fmt = f; g.w.N = N; g.w.K = K; g.w.data = wptr[e];
      g.a_dtype = adt; g.M = n; g.A = Ae.data(); g.lda = K;
      g.c_dtype = cdt; g.C = Ce.data(); g.ldc = N;
      g.bias = bias ? bv.data() + e * ldb : nullptr;
      g.epilogue = a.epilogue;
      isa.gemm(g, pool);
      for (int64_t j = 0; j < n; ++j) diff += std::memcmp(&Ce[(size_t)(j * N) * ces], &C[(size_t)((mb + j) * ldc) * ces], (size_t)N * ces) != 0;
    }
    char buf[400];
    std::snprintf(buf, sizeof buf, "grouped[%s] %s %s E=%lld T=%lld top%d R=%lld maxseg=%lld empty=%lld N=%lld K=%lld A=%s C=%s bias=%d (%s)",
                  label, swiglu ? "swiglu" : "plain", fmt_name(f).c_str(), (long long)E, (long long)T, topk, (long long)R,
                  (long long)maxseg, (long long)nempty, (long long)N, (long long)K, dtype_name(adt), dtype_name(cdt), (int)bias, at.c_str());
    CHECK(w <= 1.0, "[%s] %s err/allowed = %.3g", isa.name, buf, w);
    CHECK(guard, "[%s] %s wrote outside N", isa.name, buf);
    CHECK(diff == 0, "[%s] %s: %lld rows differ from qgemm on the gathered rows", isa.name, buf, (long long)diff);
    if (w > isa.worst) { isa.worst = w; isa.where = buf; }
  }
  for (auto* p : wg) delete p;
  for (auto* p : wu) delete p;
  for (auto* p : packed) delete p;
}

// ---- silu arithmetic ----------------------------------------------------------------------
static void test_silu(std::vector<Isa>& isas) {
  std::vector<float> x;
  for (float v = -100.0f; v <= 100.0f; v += 0.00731f) x.push_back(v);
  for (float v : {0.0f, -0.0f, 1e-30f, -1e-30f, 87.0f, -87.0f, 88.0f, -88.0f, 88.5f, -88.5f, 1e30f, -1e30f}) x.push_back(v);
  const int64_t n = (int64_t)x.size();
  std::vector<float> u(n, 1.0f), h(n);
  for (Isa& isa : isas) {
    if (!isa.on) continue;
    isa.apply(x.data(), u.data(), h.data(), n);
    double max_ulp = 0, max_abs_tail = 0;
    int bad = 0;
    for (int64_t i = 0; i < n; ++i) {
      const double want = ref::silu((double)x[i]);
      const double err = std::fabs((double)h[i] - want);
      if (x[i] >= -87.0f || std::isinf(x[i])) {
        const double ulp = std::ldexp(1.0, std::max(std::ilogb((float)want), -126) - 23);
        max_ulp = std::max(max_ulp, err / ulp);
        if (err > 4 * ulp) ++bad;
      } else {
        max_abs_tail = std::max(max_abs_tail, err);
        if (err > 1e-35) ++bad;
      }
    }
    // NaN in, NaN out; +-inf behave as the limits.
    const float sp[3] = {std::nanf(""), INFINITY, -INFINITY}, one[3] = {1, 1, 1};
    float hs[3];
    isa.apply(sp, one, hs, 3);
    CHECK(std::isnan(hs[0]), "[%s] silu(NaN) = %g", isa.name, hs[0]);
    CHECK(hs[1] == INFINITY || std::isnan(hs[1]), "[%s] silu(inf) = %g", isa.name, hs[1]);
    CHECK(bad == 0, "[%s] silu: %d values beyond 4 ulp (x >= -87) / 1e-35 (x < -87)", isa.name, bad);
    std::printf("  silu %-17s max error %.2f ulp for x >= -87 (%lld points), %.2g absolute below\n", isa.name, max_ulp,
                (long long)n, max_abs_tail);
  }
}

// ---- layout and bad arguments ---------------------------------------------------------------
static void test_layout(std::mt19937& rng) {
  for (const QuantFormat& f : {qf(QKind::int8, 0, false, DType::f32), qf(QKind::int8, 32, false, DType::f16),
                               qf(QKind::int4, 32, false, DType::f16), qf(QKind::int4, 64, true, DType::f32),
                               qf(QKind::q4k, 256, false, DType::f16), qf(QKind::q6k, 256, false, DType::f16)}) {
    const int64_t F = 37, K = f.group ? (f.group == 256 ? 512 : 3 * f.group) : 45;
    PlainBuf g(f, F, K), u(f, F, K);
    rand_plain(rng, g); rand_plain(rng, u);
    const QPackedLayout L = q_packed_layout(f, F, K), L2 = q_gate_up_layout(f, F, K);
    Aligned pk(L2.total), pg(L.total), pu(L.total);
    q_repack_gate_up(g.p, u.p, pk.p);
    q_repack(g.p, pg.p); q_repack(u.p, pu.p);
    bool same = L2.total == 2 * L.total && L2.panels == 2 * L.panels && L2.panel_bytes == L.panel_bytes;
    for (int64_t p = 0; p < L.panels; ++p) {
      same = same && !std::memcmp(pk.p + 2 * p * L.panel_bytes, pg.p + p * L.panel_bytes, L.panel_bytes);
      same = same && !std::memcmp(pk.p + (2 * p + 1) * L.panel_bytes, pu.p + p * L.panel_bytes, L.panel_bytes);
    }
    CHECK(same, "%s: gate/up panels are not gate panel p, up panel p", fmt_name(f).c_str());
    PlainBuf g2(f, F, K), u2(f, F, K);
    QPacked in; in.fmt = f; in.N = F; in.K = K; in.data = pk.p;
    q_unpack_gate_up(in, g2.p, u2.p);
    CHECK(g.same(g2) && u.same(u2), "%s: gate/up round trip differs", fmt_name(f).c_str());
  }
}

static void test_bad_args() {
  auto expect = [](const char* what, Code want, const char* arg, const std::function<void()>& fn) {
    try { fn(); } catch (const Error& e) {
      CHECK(e.code == want && e.arg == arg, "%s: got %s arg '%s' (%s), want %s '%s'", what, code_name(e.code), e.arg.c_str(), e.what(), code_name(want), arg);
      return;
    }
    CHECK(false, "%s: no error", what);
  };
  const QuantFormat f = qf(QKind::int4, 32, false, DType::f16);
  alignas(64) static uint8_t wbuf[1 << 14];
  static float A[6 * 64], C[8 * 40], bias[3 * 80];
  const uint8_t* w[3] = {wbuf, wbuf, wbuf};
  int32_t rows[8] = {0, 1, 2, 5, 3, 0, 4, 5};
  int32_t offs[4] = {0, 3, 3, 8};
  QGroupedArgs a;
  a.fmt = f; a.N = 40; a.K = 64; a.E = 3; a.w = w;
  a.a_dtype = DType::f32; a.T = 6; a.A = A; a.lda = 64;
  a.R = 8; a.rows = rows; a.offsets = offs;
  a.C = C; a.ldc = 40;
  qgemm_grouped_check(a, 64);  // valid
  { QGroupedArgs b = a; b.epilogue = QEpilogue::swiglu; b.bias = bias; b.ldb = 80; qgemm_grouped_check(b, 64); }
  expect("K mismatch", Code::SHAPE, "A", [&] { qgemm_grouped_check(a, 65); });
  { QGroupedArgs b = a; b.K = 48; b.lda = 64; expect("group does not divide K", Code::SHAPE, "weights", [&] { qgemm_grouped_check(b, 48); }); }
  { int32_t r2[8] = {0, 1, 2, 6, 3, 0, 4, 5}; QGroupedArgs b = a; b.rows = r2; expect("row >= T", Code::INVALID_ARG, "rows", [&] { qgemm_grouped_check(b, 64); }); }
  { int32_t r2[8] = {0, 1, 2, -1, 3, 0, 4, 5}; QGroupedArgs b = a; b.rows = r2; expect("row < 0", Code::INVALID_ARG, "rows", [&] { qgemm_grouped_check(b, 64); }); }
  { int32_t o2[4] = {1, 3, 3, 8}; QGroupedArgs b = a; b.offsets = o2; expect("offsets[0] != 0", Code::INVALID_ARG, "offsets", [&] { qgemm_grouped_check(b, 64); }); }
  { int32_t o2[4] = {0, 4, 3, 8}; QGroupedArgs b = a; b.offsets = o2; expect("offsets decreasing", Code::INVALID_ARG, "offsets", [&] { qgemm_grouped_check(b, 64); }); }
  { int32_t o2[4] = {0, 3, 3, 7}; QGroupedArgs b = a; b.offsets = o2; expect("offsets[E] != R", Code::INVALID_ARG, "offsets", [&] { qgemm_grouped_check(b, 64); }); }
  { const uint8_t* w2[3] = {wbuf, nullptr, wbuf}; QGroupedArgs b = a; b.w = w2; qgemm_grouped_check(b, 64); }  // empty expert: null ok
  { const uint8_t* w2[3] = {wbuf, wbuf, nullptr}; QGroupedArgs b = a; b.w = w2; expect("null weights", Code::INVALID_ARG, "w", [&] { qgemm_grouped_check(b, 64); }); }
  { const uint8_t* w2[3] = {wbuf + 8, wbuf, wbuf}; QGroupedArgs b = a; b.w = w2; expect("misaligned weights", Code::INVALID_ARG, "w", [&] { qgemm_grouped_check(b, 64); }); }
  { QGroupedArgs b = a; b.E = 0; expect("E = 0", Code::SHAPE, "E", [&] { qgemm_grouped_check(b, 64); }); }
  { QGroupedArgs b = a; b.T = 0; expect("T = 0", Code::SHAPE, "T", [&] { qgemm_grouped_check(b, 64); }); }
  { QGroupedArgs b = a; b.lda = 60; expect("lda < K", Code::SHAPE, "lda", [&] { qgemm_grouped_check(b, 64); }); }
  { QGroupedArgs b = a; b.ldc = 39; expect("ldc < N", Code::SHAPE, "ldc", [&] { qgemm_grouped_check(b, 64); }); }
  { QGroupedArgs b = a; b.a_dtype = DType::int8; expect("A dtype", Code::DTYPE, "A", [&] { qgemm_grouped_check(b, 64); }); }
  { QGroupedArgs b = a; b.c_dtype = DType::i32; expect("C dtype", Code::DTYPE, "C", [&] { qgemm_grouped_check(b, 64); }); }
  { QGroupedArgs b = a; b.C = nullptr; expect("C null", Code::INVALID_ARG, "C", [&] { qgemm_grouped_check(b, 64); }); }
  { QGroupedArgs b = a; b.epilogue = (QEpilogue)7; expect("bad epilogue", Code::INVALID_ARG, "epilogue", [&] { qgemm_grouped_check(b, 64); }); }
  { QGroupedArgs b = a; b.epilogue = QEpilogue::swiglu; b.bias = bias; b.ldb = 40; expect("swiglu ldb", Code::SHAPE, "ldb", [&] { qgemm_grouped_check(b, 64); }); }
  { QGroupedArgs b = a; b.C = A; expect("C overlaps A", Code::INVALID_ARG, "C", [&] { qgemm_grouped_check(b, 64); }); }
  { QGroupedArgs b = a; b.R = 0; int32_t o2[4] = {0, 0, 0, 0}; b.offsets = o2; b.C = nullptr; b.rows = nullptr; qgemm_grouped_check(b, 64); }  // R = 0: no-op
  // qgemm with the swiglu epilogue
  QGemmArgs g; g.w.fmt = f; g.w.N = 40; g.w.K = 64; g.w.data = wbuf;
  g.M = 4; g.A = A; g.lda = 64; g.C = C; g.ldc = 40; g.epilogue = QEpilogue::swiglu;
  qgemm_check(g, 64);
  { QGemmArgs b = g; b.residual = C; b.ldr = 40; expect("swiglu + residual", Code::INVALID_ARG, "residual", [&] { qgemm_check(b, 64); }); }
  { QGemmArgs b = g; b.epilogue = (QEpilogue)3; expect("qgemm bad epilogue", Code::INVALID_ARG, "epilogue", [&] { qgemm_check(b, 64); }); }
  {
    const QuantFormat f8 = qf(QKind::int8, 32, false, DType::f16);
    PlainBuf p1(f8, 16, 64), p2(f8, 17, 64), p3(qf(QKind::int8, 64, false, DType::f16), 16, 64);
    std::vector<uint8_t> out(1 << 16);
    expect("gate/up shapes", Code::SHAPE, "up", [&] { q_repack_gate_up(p1.p, p2.p, out.data()); });
    expect("gate/up formats", Code::INVALID_ARG, "up", [&] { q_repack_gate_up(p1.p, p3.p, out.data()); });
  }
}

// ---- bench ------------------------------------------------------------------------------------
static double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }
static double median_time(const std::function<void()>& fn, double min_time) {
  std::vector<double> ts;
  fn();
  const double t0 = now();
  while ((now() - t0 < min_time || ts.size() < 5) && ts.size() < 1000) {
    const double a = now();
    fn();
    ts.push_back(now() - a);
  }
  std::sort(ts.begin(), ts.end());
  return ts[ts.size() / 2];
}
static void median_pair(const std::function<void()>& a, const std::function<void()>& b, double min_time, double& ta, double& tb) {
  std::vector<double> xa, xb;
  a(); b();
  const double t0 = now();
  while ((now() - t0 < min_time || xa.size() < 5) && xa.size() < 500) {
    double s = now(); a(); xa.push_back(now() - s);
    s = now(); b(); xb.push_back(now() - s);
  }
  std::sort(xa.begin(), xa.end()); std::sort(xb.begin(), xb.end());
  ta = xa[xa.size() / 2]; tb = xb[xb.size() / 2];
}
static void bench(Isa& isa, Parallel& pool) {
  std::mt19937 rng(5);
  std::printf("bench (%s, 2 threads, medians; f32 in/out):\n", isa.name);
  std::printf("%-10s %5s %6s %5s %10s %10s %8s %9s\n", "format", "M", "F", "K", "fused_us", "2calls_us", "fused/2", "GMAC/s");
  for (const QuantFormat& f : {qf(QKind::int8, 32, false, DType::f16), qf(QKind::int4, 32, false, DType::f16)}) {
    const int64_t F = 11008, K = 4096;
    PlainBuf gp(f, F, K), up(f, F, K);
    {
      std::vector<float> w((size_t)F * K);
      std::normal_distribution<float> nd(0, 0.02f);
      for (auto& v : w) v = nd(rng);
      quantize(w.data(), K, gp.p);
      for (auto& v : w) v = nd(rng);
      quantize(w.data(), K, up.p);
    }
    const QPackedLayout L = q_packed_layout(f, F, K);
    Aligned pk(2 * L.total), pg(L.total), pu(L.total);
    q_repack_gate_up(gp.p, up.p, pk.p);
    q_repack(gp.p, pg.p); q_repack(up.p, pu.p);
    for (int64_t M : {1, 8, 64, 256}) {
      std::vector<float> A((size_t)M * K), C((size_t)M * F), C2((size_t)M * F);
      std::normal_distribution<float> nd(0, 1);
      for (auto& v : A) v = nd(rng);
      QGemmArgs g; g.w.fmt = f; g.w.N = F; g.w.K = K; g.w.data = pk.p; g.M = M; g.A = A.data(); g.lda = K;
      g.C = C.data(); g.ldc = F; g.epilogue = QEpilogue::swiglu;
      QGemmArgs g1 = g; g1.epilogue = QEpilogue::none; g1.w.data = pg.p;
      QGemmArgs g2 = g1; g2.w.data = pu.p; g2.C = C2.data();
      // Alternated, so both see the same machine load (other processes share the cores).
      double tf, t2;
      median_pair([&] { isa.gemm(g, pool); },
                  [&] {
                    isa.gemm(g1, pool); isa.gemm(g2, pool);
                    isa.apply(C.data(), C2.data(), C.data(), M * F);  // the separate silu pass
                  }, M >= 64 ? 2.0 : 1.0, tf, t2);
      std::printf("%-10s %5lld %6lld %5lld %10.1f %10.1f %8.3f %9.2f\n", f.kind == QKind::int8 ? "int8-g32" : "int4-g32", (long long)M,
                  (long long)F, (long long)K, tf * 1e6, t2 * 1e6, tf / t2, 2.0 * M * F * K / tf / 1e9);
    }
  }
  // Grouped: Mixtral-like expert (F = 14336/4 to keep it small here), E = 8, top-2.
  {
    const QuantFormat f = qf(QKind::int4, 32, false, DType::f16);
    const int64_t E = 8, F = 3584, K = 4096;
    const QPackedLayout L = q_gate_up_layout(f, F, K);
    std::vector<Aligned*> pk;
    std::vector<const uint8_t*> w(E);
    PlainBuf gp(f, F, K), up(f, F, K);
    {
      std::vector<float> ww((size_t)F * K);
      std::normal_distribution<float> nd(0, 0.02f);
      for (auto& v : ww) v = nd(rng);
      quantize(ww.data(), K, gp.p); quantize(ww.data(), K, up.p);
    }
    for (int64_t e = 0; e < E; ++e) { pk.push_back(new Aligned(L.total)); q_repack_gate_up(gp.p, up.p, pk.back()->p); w[e] = pk.back()->p; }
    std::printf("%-22s %5s %5s %10s %9s\n", "grouped int4-g32 swiglu", "T", "R", "median_us", "GMAC/s");
    for (int64_t T : {1, 16, 128}) {
      std::vector<int32_t> rows, offs;
      route(rng, T, E, 2, 0.7, std::vector<bool>(E, false), rows, offs);
      std::vector<float> A((size_t)T * K), C(rows.size() * F);
      std::normal_distribution<float> nd(0, 1);
      for (auto& v : A) v = nd(rng);
      QGroupedArgs a; a.fmt = f; a.N = F; a.K = K; a.E = E; a.w = w.data(); a.epilogue = QEpilogue::swiglu;
      a.T = T; a.A = A.data(); a.lda = K; a.R = (int64_t)rows.size(); a.rows = rows.data(); a.offsets = offs.data();
      a.C = C.data(); a.ldc = F;
      const double t = median_time([&] { isa.grouped(a, pool); }, 1.0);
      std::printf("%-22s %5lld %5lld %10.1f %9.2f\n", "", (long long)T, (long long)a.R, t * 1e6, 2.0 * a.R * F * K / t / 1e9);
    }
    for (auto* p : pk) delete p;
  }
}

int main(int argc, char** argv) {
  bool quick = false, do_bench = false;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--quick")) quick = true;
    else if (!std::strcmp(argv[i], "--bench")) do_bench = true;
  }
  std::vector<Isa> isas = {
      {"scalar", &cpu::scalar::qgemm, &cpu::scalar::qgemm_grouped, &cpu::scalar::qgemm_swiglu_apply, true, 0, {}},
      {"avx2", &cpu::avx2::qgemm, &cpu::avx2::qgemm_grouped, &cpu::avx2::qgemm_swiglu_apply,
       (bool)__builtin_cpu_supports("avx2") && (bool)__builtin_cpu_supports("fma"), 0, {}},
#if defined(TY_AVX512_EMULATED)
      {"avx512(emulated)", &cpu::avx512::qgemm, &cpu::avx512::qgemm_grouped, &cpu::avx512::qgemm_swiglu_apply, true, 0, {}},
#else
      {"avx512", &cpu::avx512::qgemm, &cpu::avx512::qgemm_grouped, &cpu::avx512::qgemm_swiglu_apply,
       (bool)__builtin_cpu_supports("avx512vnni") && (bool)__builtin_cpu_supports("avx512bw"), 0, {}},
#endif
  };
  for (auto& i : isas) std::printf("isa %-17s %s\n", i.name, i.on ? "tested" : "NOT AVAILABLE on this CPU (skipped)");
  ThreadPool pool(2);
  if (do_bench) {
    Isa* best = nullptr;
    for (auto& i : isas) if (i.on && std::strstr(i.name, "emulated") == nullptr) best = &i;
    bench(*best, pool);
    return 0;
  }
  const double t_start = now();
  std::mt19937 rng(99);
  test_layout(rng);
  test_bad_args();
  std::printf("layout + bad-argument checks: %d passed\n", g_pass);
  test_silu(isas);

  const std::vector<QuantFormat> fmts = {
      qf(QKind::int8, 0, false, DType::f32), qf(QKind::int8, 32, false, DType::f16),
      qf(QKind::int4, 32, false, DType::f16), qf(QKind::int4, 64, true, DType::f32),
      qf(QKind::int4, 128, false, DType::f16), qf(QKind::int4, 32, true, DType::f16),
      qf(QKind::q4k, 256, false, DType::f16), qf(QKind::q6k, 256, false, DType::f16)};
  const DType dts[3] = {DType::f32, DType::f16, DType::bf16};
  uint32_t seed = 1;
  int cases = 0;
  std::printf("swiglu:\n");
  std::vector<int64_t> Ms = {1, 2, 3, 4, 5, 6, 7, 8, 9, 17, 64, 100, 600};
  for (size_t fi = 0; fi < fmts.size(); ++fi) {
    const QuantFormat& f = fmts[fi];
    const int64_t G = f.group ? f.group : 32;
    const int64_t K = f.group ? G * (G == 256 ? (fi % 2 ? 2 : 1) : (fi % 2 ? 3 : 2)) : 99;  // per channel: K % 4 != 0
    for (int64_t M : Ms) {
      if (quick && M >= 600 && fi % 2) continue;
      for (int64_t F : {33, 100}) {
        if (quick && M <= 9 && (M + F + (int64_t)fi) % 3) continue;
        swiglu_case(isas, pool, f, M, F, K, dts[seed % 3], dts[(seed / 3) % 3], seed % 2 == 0, seed, M <= 17 && F == 33);
        ++seed; ++cases;
      }
    }
  }
  if (!quick) {  // long K
    swiglu_case(isas, pool, fmts[1], 5, 47, 2048, DType::f32, DType::f32, true, seed++, false), ++cases;
    swiglu_case(isas, pool, fmts[2], 70, 47, 2048, DType::bf16, DType::bf16, false, seed++, false), ++cases;
  }
  std::printf("  %d swiglu cases (%.1f s)\n", cases, now() - t_start);

  std::printf("grouped:\n");
  int gcases = 0;
  for (size_t fi = 0; fi < fmts.size(); ++fi) {
    if (quick && (fi == 4 || fi == 5)) continue;
    const QuantFormat& f = fmts[fi];
    const int64_t K = f.group ? f.group * (f.group == 256 ? 1 : 2) : 67;
    for (bool sw : {false, true}) {
      const int64_t N = sw ? 33 : 45;
      auto dt = [&](int i) { return dts[(seed + i) % 3]; };
      // E = 1: equals one qgemm
      grouped_case(isas, pool, f, sw, 1, 5, 1, 1.0, {false}, N, K, dt(0), dt(1), seed % 2, seed, "E1"), ++seed, ++gcases;
      grouped_case(isas, pool, f, sw, 1, 40, 1, 1.0, {false}, N, K, dt(0), dt(1), seed % 2, seed, "E1-tiled"), ++seed, ++gcases;
      // decode: one token, top-2 of 8
      grouped_case(isas, pool, f, sw, 8, 1, 2, 1.0, std::vector<bool>(8, false), N, K, dt(0), dt(1), seed % 2, seed, "decode"), ++seed, ++gcases;
      // E = 3, top-2, expert 1 empty, small segments
      grouped_case(isas, pool, f, sw, 3, 6, 2, 1.0, {false, true, false}, N, K, dt(0), dt(1), seed % 2, seed, "E3-empty"), ++seed, ++gcases;
      // E = 8, top-2, skewed: expert 0 large (tiled path), tail small (streaming), two empty
      std::vector<bool> emp(8, false); emp[3] = emp[6] = true;
      grouped_case(isas, pool, f, sw, 8, quick ? 60 : 150, 2, 0.45, emp, N, K, dt(0), dt(1), seed % 2, seed, "E8-skew"), ++seed, ++gcases;
      // duplicates inside one segment as well
      grouped_case(isas, pool, f, sw, 3, 12, 2, 0.8, {false, false, false}, N, K, dt(0), dt(1), seed % 2, seed, "E3-dup", 3), ++seed, ++gcases;
      if (!quick && (fi < 3 || fi == 6))
        grouped_case(isas, pool, f, sw, 8, 300, 2, 0.6, std::vector<bool>(8, false), N + 64, K * 4, dt(0), dt(1), seed % 2, seed, "E8-big"), ++seed, ++gcases;
    }
  }
  std::printf("  %d grouped cases\n", gcases);
  for (Isa& i : isas)
    if (i.on) std::printf("  worst err/allowed %-17s %.3f at %s\n", i.name, i.worst, i.where.c_str());
  std::printf("%d passed, %d failed (%.1f s)\n", g_pass, g_fail, now() - t_start);
  return g_fail ? 1 : 0;
}
