// Tests for the W4A16 CUDA GEMM and its grouped (MoE) variant (native/cuda/kernels/gemm_w4a16.cuh),
// run on the CPU under cuemu, under the forward and the reverse schedule:
//   - format refusals (bad K, group, kind, scale dtype) and launch refusals (dtypes, alignment,
//     shared memory, grid, workspace, overlaps); a refused launch writes nothing;
//   - repack: round trip plain -> packed -> plain for every 4-bit format, padding is zero, and
//     the documented word layout decoded independently;
//   - one-hot activations through the real kernel (every weight of every format, both
//     activation dtypes, every block shape): the output must equal the CPU's dequantize() value
//     BIT FOR BIT; one-hot weights (every (channel, k) of a tile) with exact integer data;
//   - dense products against the double-precision reference (ref::qgemm_ref / qgemm_grouped_ref,
//     the CPU's dequantized weights) on awkward shapes, with the tolerance model below;
//   - split-K: forced and automatic, deterministic, tickets left at zero;
//   - grouped: uneven and empty experts (null weights), top-k duplicates, unused tokens, and bad
//     routing data (out-of-range rows next to a PROT_NONE page, bad offsets, missing weights)
//     reported through the error slot;
//   - deliberately broken kernels (no barrier, no cp.async wait, wrong split-K reducer, ticket
//     not reset): each must be caught.
//
// Tolerance model (dense tests). The kernel forms, per group, P = sum a*q with exact products
// and f32 accumulation (one rounding per mma, <= 8 chained per group and warp), scales it in f32
// (1-3 roundings), adds the groups (K/G), the k-slice warps (WK <= 2), the splits (S) and
// bias/residual in f32, then rounds once to the output dtype. The reference is A times the
// CPU's f32 dequantized weights in double, which differ from s*q + m by <= 2 roundings. With
//   mag = sum_k |a_k| (|s_k q_k| + |m_k|) + |bias| + |residual|
// every rounding is at most 2^-24 mag, so
//   |got - exact| <= 2^-24 mag (K/16 + 2 K/G + 24) + 1.01 * half an ulp of the output dtype
//                    (relative to |exact|) + half its smallest subnormal.
// A misplaced weight or scale costs O(mag / K), far above that.
// Build and run: native/tests/cuemu/w4a16_run.sh [-v]
#include "check.h"
#include "../../cuda/kernels/gemm_w4a16.cuh"
#include "ref/qgemm_fused_ref.h"
#include "ref/qgemm_ref.h"
#include "tachyon/quant.h"

#include <sys/mman.h>
#include <unistd.h>

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

static std::mt19937 gRng(4321);
static bool gVerbose = false;

static const char* dn(DType t) { return dtype_name(t); }

// ---- aligned host memory (cuemu's "device" memory is host memory) ------------------------------
struct Mem {
  std::vector<uint8_t> raw;
  uint8_t* p;
  explicit Mem(size_t n, size_t shift = 0) : raw(n + 128 + shift, 0) {
    uintptr_t a = reinterpret_cast<uintptr_t>(raw.data());
    p = raw.data() + ((64 - (a & 63)) & 63) + shift;
  }
  Mem(const Mem&) = delete;
  Mem& operator=(const Mem&) = delete;
};

static size_t esz(DType t) { return t == DType::f32 ? 4 : 2; }
static double getv(const void* p, DType t, size_t i) {
  if (t == DType::f32) return static_cast<const float*>(p)[i];
  const uint16_t h = static_cast<const uint16_t*>(p)[i];
  return t == DType::f16 ? f16_to_f32(h) : bf16_to_f32(h);
}
static uint32_t getbits(const void* p, DType t, size_t i) {
  if (t == DType::f32) return f32_bits(static_cast<const float*>(p)[i]);
  return static_cast<const uint16_t*>(p)[i];
}
static void setv(void* p, DType t, size_t i, double v) {
  if (t == DType::f32) static_cast<float*>(p)[i] = float(v);
  else static_cast<uint16_t*>(p)[i] = t == DType::f16 ? f32_to_f16(float(v)) : f32_to_bf16(float(v));
}
static void setbits(void* p, DType t, size_t i, uint32_t b) {
  if (t == DType::f32) {
    float f = bits_f32(b);
    static_cast<float*>(p)[i] = f;
  } else {
    static_cast<uint16_t*>(p)[i] = uint16_t(b);
  }
}
static uint32_t nan_bits(DType t) { return t == DType::f32 ? 0x7fc00000u : t == DType::f16 ? 0x7e00u : 0x7fc0u; }
static double hulp(DType t) { return t == DType::f32 ? std::ldexp(1.0, -24) : t == DType::f16 ? std::ldexp(1.0, -11) : std::ldexp(1.0, -8); }
static double tiny(DType t) { return t == DType::f16 ? std::ldexp(1.0, -25) : 1e-40; }
static double urand(double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(gRng); }
static int irand(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(gRng); }

// ---- plain weights -----------------------------------------------------------------------------
struct Fmt {
  const char* name;
  QuantFormat f;
};
static QuantFormat mkfmt(QKind k, int group, bool asym, DType sd) {
  QuantFormat f;
  f.kind = k;
  f.group = group;
  f.asym = asym;
  f.scale_dtype = sd;
  return f;
}
static const Fmt kFormats[] = {
    {"int4 sym f16 g32 (Q4_0)", mkfmt(QKind::int4, 32, false, DType::f16)},
    {"int4 sym f32 g64", mkfmt(QKind::int4, 64, false, DType::f32)},
    {"int4 sym f16 g128", mkfmt(QKind::int4, 128, false, DType::f16)},
    {"int4 asym f16 g32 (Q4_1)", mkfmt(QKind::int4, 32, true, DType::f16)},
    {"int4 asym f32 g32", mkfmt(QKind::int4, 32, true, DType::f32)},
    {"int4 asym f16 g64", mkfmt(QKind::int4, 64, true, DType::f16)},
    {"int4 asym f32 g128", mkfmt(QKind::int4, 128, true, DType::f32)},
    {"q4k (Q4_K)", mkfmt(QKind::q4k, 256, false, DType::f16)},
};

struct Plain {
  QuantFormat f;
  int64_t N = 0, K = 0;
  std::vector<uint8_t> q, sc, mn, sd, sdm;
  QPlain view() {
    QPlain p;
    p.fmt = f;
    p.N = N;
    p.K = K;
    p.q = q.data();
    p.scales = sc.data();
    p.mins = mn.empty() ? nullptr : mn.data();
    p.super_d = sd.empty() ? nullptr : sd.data();
    p.super_dmin = sdm.empty() ? nullptr : sdm.data();
    return p;
  }
  bool asym() const { return f.kind == QKind::int4 && f.asym; }
  bool q4k() const { return f.kind == QKind::q4k; }
  int64_t G() const { return q4k() ? 32 : f.group; }
  // Signed code (sym) or unsigned code (asym, q4k) of (n, k).
  int code(int64_t n, int64_t k) const {
    const uint8_t b = q[n * (K / 2) + k / 2];
    int v = (k & 1) ? b >> 4 : b & 15;
    if (!asym() && !q4k() && v >= 8) v -= 16;
    return v;
  }
  void set_code(int64_t n, int64_t k, int v) {
    uint8_t& b = q[n * (K / 2) + k / 2];
    const uint8_t nib = uint8_t(v) & 15;
    b = (k & 1) ? uint8_t((b & 0x0f) | (nib << 4)) : uint8_t((b & 0xf0) | nib);
  }
  double load_s(const std::vector<uint8_t>& v, int64_t i) const {
    if (f.scale_dtype == DType::f16) {
      uint16_t h;
      std::memcpy(&h, &v[2 * i], 2);
      return f16_to_f32(h);
    }
    float x;
    std::memcpy(&x, &v[4 * i], 4);
    return x;
  }
  void store_s(std::vector<uint8_t>& v, int64_t i, double x) {
    if (f.scale_dtype == DType::f16) {
      const uint16_t h = f32_to_f16(float(x));
      std::memcpy(&v[2 * i], &h, 2);
    } else {
      const float y = float(x);
      std::memcpy(&v[4 * i], &y, 4);
    }
  }
  // Effective step s and additive term m of (n, k): w = s*q + m in exact arithmetic.
  void sm(int64_t n, int64_t k, double* s, double* m) const {
    if (q4k()) {
      const int64_t ns = K / 32, nsb = K / 256, j = k / 32;
      uint16_t d, dm;
      std::memcpy(&d, &sd[2 * (n * nsb + k / 256)], 2);
      std::memcpy(&dm, &sdm[2 * (n * nsb + k / 256)], 2);
      *s = double(f16_to_f32(d)) * sc[n * ns + j];
      *m = -double(f16_to_f32(dm)) * mn[n * ns + j];
      return;
    }
    const int64_t nb = K / f.group, b = k / f.group;
    *s = load_s(sc, n * nb + b);
    *m = asym() ? load_s(mn, n * nb + b) : 0.0;
  }
};

static Plain make_plain(const QuantFormat& f, int64_t N, int64_t K) {
  Plain P;
  P.f = f;
  P.N = N;
  P.K = K;
  P.q.resize(q_plain_q_bytes(f, N, K));
  for (auto& b : P.q) b = uint8_t(irand(0, 255));
  P.sc.resize(q_plain_scale_bytes(f, N, K));
  P.mn.resize(q_plain_min_bytes(f, N, K));
  P.sd.resize(q_plain_super_bytes(f, N, K));
  P.sdm.resize(q_plain_super_bytes(f, N, K));
  if (P.q4k()) {
    for (auto& b : P.sc) b = uint8_t(irand(0, 63));
    for (auto& b : P.mn) b = uint8_t(irand(0, 63));
    for (size_t i = 0; i < P.sd.size() / 2; ++i) {
      const uint16_t d = f32_to_f16(float(urand(0.5, 1.0) * std::ldexp(1.0, -8)));
      const uint16_t dm = f32_to_f16(float(urand(0.5, 1.0) * std::ldexp(1.0, -8)));
      std::memcpy(&P.sd[2 * i], &d, 2);
      std::memcpy(&P.sdm[2 * i], &dm, 2);
    }
  } else {
    const int64_t nb = N * (K / f.group);
    for (int64_t i = 0; i < nb; ++i) {
      // f32 scales with full 24-bit significands (so s*q is not always exact in f32).
      const double s = (irand(0, 1) ? 1 : -1) * urand(0.5, 1.5) * std::ldexp(1.0, -5);
      P.store_s(P.sc, i, P.asym() ? std::fabs(s) : s);
      if (P.asym()) P.store_s(P.mn, i, urand(-0.3, 0.1));
    }
  }
  return P;
}

// Packed copy of a plain tensor (16-byte aligned "device" buffer).
struct Packed {
  tc::W4A16Layout L;
  std::unique_ptr<Mem> m;
  const void* data() const { return m->p; }
};
static Packed pack(Plain& P) {
  Packed k;
  tc::Status st = tc::w4a16_layout(P.f, P.N, P.K, &k.L);
  CHECK(st.ok, "layout: %s", st.message.c_str());
  k.m.reset(new Mem(k.L.total));
  st = tc::w4a16_repack(P.view(), k.m->p, k.L.total);
  CHECK(st.ok, "repack: %s", st.message.c_str());
  return k;
}

// ---- one plain GEMM through the helper -----------------------------------------------------------
struct Run {
  DType at = DType::f16, ct = DType::f32;
  int64_t M = 1, padA = 0, padC = 0;
  bool bias = false, residual = false;  // residual aliases C
  tc::W4A16Tuning tune;
};

static std::vector<float> rand_bias(int64_t n) {
  std::vector<float> b(n);
  for (auto& v : b) v = float(urand(-1, 1));
  return b;
}

// Workspace shared by the tests (tickets must start at zero; the kernel leaves them zero).
static Mem gWs(size_t(8) << 20);
static tc::W4A16Workspace ws_all() { return {gWs.p, size_t(8) << 20}; }
// After a launch with plan `pl` on gWs: its tickets are back to zero.
static void check_tickets(const tc::W4A16Plan& pl, const char* what) {
  const unsigned* c = reinterpret_cast<const unsigned*>(gWs.p);
  int nz = 0;
  for (size_t i = 0; i < pl.cnt_bytes / 4; ++i) nz += c[i] != 0;
  CHECK(nz == 0, "%s: %d split-K tickets not reset to zero (%d splits)", what, nz, pl.splits);
}

// Runs A (given) x W into a fresh C (NaN-filled, padding = sentinel); returns the helper's
// Status; C is returned through `out`.
static tc::Status run_gemm(const Packed& W, const Plain& P, const Run& r, const Mem& A, int64_t lda, Mem& C, int64_t ldc,
                           const std::vector<float>* bias, tc::W4A16Workspace ws, tc::DeviceLimits lim = {},
                           const std::function<tc::Status(const QGemmArgs&, tc::W4A16Workspace)>& fn = nullptr) {
  QGemmArgs g;
  g.w.fmt = P.f;
  g.w.N = P.N;
  g.w.K = P.K;
  g.w.data = static_cast<const uint8_t*>(W.data());
  g.a_dtype = r.at;
  g.M = r.M;
  g.A = A.p;
  g.lda = lda;
  g.c_dtype = r.ct;
  g.C = C.p;
  g.ldc = ldc;
  g.bias = bias ? bias->data() : nullptr;
  if (r.residual) {
    g.residual = C.p;
    g.ldr = ldc;
  }
  if (fn) return fn(g, ws);
  tc::Status st = tc::w4a16_gemm(g, ws, nullptr, lim, r.tune);
  tc::W4A16Plan pl;
  if (st.ok && ws.ptr == gWs.p && tc::w4a16_plan(g, ws, lim, r.tune, &pl).ok) check_tickets(pl, "gemm");
  return st;
}

// Dense case: random A, compares with ref::qgemm_ref (.exact) under the tolerance model.
static int dense_case(Plain& P, const Packed& W, const Run& r, const char* fname, bool report = true,
                      const std::function<tc::Status(const QGemmArgs&, tc::W4A16Workspace)>& fn = nullptr, int* nans_out = nullptr) {
  const int64_t M = r.M, N = P.N, K = P.K, lda = K + r.padA, ldc = N + r.padC;
  Mem A(size_t(M * lda) * 2), C(size_t(M * ldc) * esz(r.ct) + 64);
  for (int64_t i = 0; i < M * lda; ++i) setv(A.p, r.at, i, urand(-1, 1));
  for (int64_t i = 0; i < M * ldc; ++i) {
    if (r.residual) setv(C.p, r.ct, i, urand(-2, 2));
    else setbits(C.p, r.ct, i, nan_bits(r.ct));  // must not be read
  }
  for (int64_t m = 0; m < M; ++m)
    for (int64_t j = N; j < ldc; ++j) setv(C.p, r.ct, m * ldc + j, 1234.0);
  std::vector<uint32_t> before(M * ldc);
  for (int64_t i = 0; i < M * ldc; ++i) before[i] = getbits(C.p, r.ct, i);
  std::vector<float> bias = rand_bias(N);
  // Reference: A (as stored) x the CPU's dequantized weights, + bias + residual, in double.
  QGemmArgs gr;
  gr.a_dtype = r.at;
  gr.M = M;
  gr.A = A.p;
  gr.lda = lda;
  gr.c_dtype = r.ct;
  gr.bias = r.bias ? bias.data() : nullptr;
  Mem R0(size_t(M * ldc) * esz(r.ct));
  if (r.residual) {
    std::memcpy(R0.p, C.p, size_t(M * ldc) * esz(r.ct));
    gr.residual = R0.p;
    gr.ldr = ldc;
  }
  ref::QGemmRef ref;
  ref::qgemm_ref(P.view(), gr, ref);
  tc::Status st = run_gemm(W, P, r, A, lda, C, ldc, r.bias ? &bias : nullptr, ws_all(), {}, fn);
  char w[256];
  std::snprintf(w, sizeof w, "%s A=%s C=%s M=%lld N=%lld K=%lld cfg=%s splits=%d sms=%d bias=%d res=%d padA=%lld padC=%lld", fname,
                dn(r.at), dn(r.ct), (long long)M, (long long)N, (long long)K, tc::w4_config_name(r.tune.config), r.tune.splits,
                r.tune.sms, r.bias, r.residual, (long long)r.padA, (long long)r.padC);
  if (report) CHECK(st.ok, "%s: %s", w, st.message.c_str());
  if (!st.ok) return -1;
  int bad = 0, nan = 0, pad = 0;
  const double G = double(P.G());
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < N; ++n) {
      double mag = r.bias ? std::fabs(bias[n]) : 0.0;
      if (r.residual) mag += std::fabs(getv(R0.p, r.ct, m * ldc + n));
      for (int64_t k = 0; k < K; ++k) {
        double s, mm;
        P.sm(n, k, &s, &mm);
        mag += std::fabs(getv(A.p, r.at, m * lda + k)) * (std::fabs(s * P.code(n, k)) + std::fabs(mm));
      }
      const double e = ref.exact[m * N + n], got = getv(C.p, r.ct, m * ldc + n);
      const double tol = std::ldexp(mag, -24) * (double(K) / 16 + 2 * double(K) / G + 24) + 1.01 * hulp(r.ct) * std::fabs(e) + tiny(r.ct);
      if (std::isnan(got)) ++nan;
      if (!(std::fabs(got - e) <= tol)) {
        if (report && bad < 3) std::printf("    %s: C[%lld][%lld] = %.9g, expected %.9g (tol %.3g)\n", w, (long long)m, (long long)n, got, e, tol);
        ++bad;
      }
    }
    for (int64_t j = N; j < ldc; ++j)
      if (getbits(C.p, r.ct, m * ldc + j) != before[m * ldc + j]) ++pad;
  }
  if (report) {
    CHECK(bad == 0, "%s: %d of %lld outputs wrong (%d NaN)", w, bad, (long long)(M * N), nan);
    CHECK(pad == 0, "%s: %d padding elements of C written", w, pad);
  }
  if (nans_out) *nans_out = nan;
  return bad;
}

// ================================================================================================
// format / repack tests
// ================================================================================================
static void test_layout_refusals() {
  tc::W4A16Layout L;
  auto expect = [&](const QuantFormat& f, int64_t N, int64_t K, Code c, const char* what) {
    tc::Status st = tc::w4a16_layout(f, N, K, &L);
    CHECK(!st.ok && st.code == c, "%s: expected %s, got ok=%d code=%s", what, code_name(c), st.ok, code_name(st.code));
    if (gVerbose && !st.ok) std::printf("  refused (%s): %s\n", what, st.message.c_str());
  };
  expect(mkfmt(QKind::int4, 32, false, DType::f16), 8, 80, Code::SHAPE, "K = 80 with group 32");
  expect(mkfmt(QKind::int4, 128, true, DType::f32), 8, 192, Code::SHAPE, "K = 192 with group 128");
  expect(mkfmt(QKind::int4, 16, false, DType::f16), 8, 64, Code::INVALID_ARG, "group 16");
  expect(mkfmt(QKind::int4, 0, false, DType::f16), 8, 64, Code::INVALID_ARG, "int4 per channel");
  expect(mkfmt(QKind::int4, 32, false, DType::bf16), 8, 64, Code::DTYPE, "bf16 scales");
  expect(mkfmt(QKind::int8, 32, false, DType::f16), 8, 64, Code::UNSUPPORTED, "int8");
  expect(mkfmt(QKind::q6k, 256, false, DType::f16), 8, 256, Code::UNSUPPORTED, "q6k");
  expect(mkfmt(QKind::q4k, 256, false, DType::f16), 8, 384, Code::SHAPE, "q4k K = 384");
  expect(mkfmt(QKind::q4k, 256, false, DType::f32), 8, 256, Code::DTYPE, "q4k f32 scales");
  expect(mkfmt(QKind::int4, 32, false, DType::f16), 0, 64, Code::SHAPE, "N = 0");
  // The GPU accepts exactly the 4-bit shapes the CPU accepts (K up to the CPU's 65536).
  for (const auto& fm : kFormats)
    for (int64_t K : {32, 64, 96, 128, 160, 192, 256, 320, 384, 512, 768}) {
      const bool cpu = q_format_error(fm.f, 8, K) == nullptr, gpu = tc::w4a16_layout(fm.f, 8, K, &L).ok;
      CHECK(cpu == gpu, "%s K=%lld: CPU %s, GPU %s", fm.name, (long long)K, cpu ? "accepts" : "refuses", gpu ? "accepts" : "refuses");
    }
  // A bad K through the launch helper: refused before anything is read (null buffers).
  QGemmArgs g;
  g.w.fmt = mkfmt(QKind::int4, 64, false, DType::f16);
  g.w.N = 16;
  g.w.K = 96;
  g.a_dtype = DType::f16;
  g.M = 1;
  tc::Status st = tc::w4a16_gemm(g);
  CHECK(!st.ok && st.code == Code::SHAPE, "gemm with K = 96, group 64: expected SHAPE, got ok=%d", st.ok);
  if (gVerbose) std::printf("  refused: %s\n", st.message.c_str());
}

// Independent decoder of the documented layout: the unsigned code of (n, k) in a packed buffer.
static uint32_t doc_code(const tc::W4A16Layout& L, const uint8_t* p, int64_t n, int64_t k) {
  const int64_t panel = n / 16, row = n % 16, kt = k / 128, kl = k % 128;
  const int s = int(kl / 16), col = int(kl % 16);
  // Element e: row = g + 8 ((e >> 1) & 1), col = 2t + (e & 1) + 8 (e >= 4).
  const int g = int(row % 8), hi_row = int(row / 8), t = (col % 8) / 2, lo_col = col % 2, hi_col = col / 8;
  const int e = lo_col + 2 * hi_row + 4 * hi_col;
  const int lane = 4 * g + t, c = s / 2, w = s % 2;
  const uint8_t* word = p + (panel * L.ktiles + kt) * L.tile_bytes + c * 256 + lane * 8 + w * 4;
  const uint32_t v = uint32_t(word[0]) | uint32_t(word[1]) << 8 | uint32_t(word[2]) << 16 | uint32_t(word[3]) << 24;
  const int shift = (e & 1) ? 16 + 4 * (e >> 1) : 4 * (e >> 1);
  return (v >> shift) & 15u;
}

static void test_repack() {
  for (const auto& fm : kFormats) {
    const int64_t N = 37, K = fm.f.kind == QKind::q4k ? 512 : (fm.f.group == 128 ? 384 : fm.f.group == 64 ? 192 : 160);
    Plain P = make_plain(fm.f, N, K);
    Packed W = pack(P);
    // Round trip into a plain tensor full of garbage.
    Plain Q = P;
    for (auto* v : {&Q.q, &Q.sc, &Q.mn, &Q.sd, &Q.sdm})
      for (auto& b : *v) b = 0xA5;
    tc::Status st = tc::w4a16_unpack(W.L, W.data(), Q.view());
    CHECK(st.ok, "%s unpack: %s", fm.name, st.message.c_str());
    CHECK(Q.q == P.q && Q.sc == P.sc && Q.mn == P.mn && Q.sd == P.sd && Q.sdm == P.sdm, "%s: repack round trip differs", fm.name);
    // Codes at the documented positions; padding (channels >= N, k >= K) is zero.
    const uint8_t* p = static_cast<const uint8_t*>(W.data());
    int bad = 0, padbad = 0;
    for (int64_t n = 0; n < W.L.panels * 16; ++n)
      for (int64_t k = 0; k < W.L.ktiles * 128; ++k) {
        const uint32_t u = doc_code(W.L, p, n, k);
        if (n < N && k < K) {
          const int q = P.code(n, k);
          const uint32_t want = uint32_t(fm.f.kind == QKind::int4 && !fm.f.asym ? q + 8 : q);
          bad += u != want;
        } else {
          padbad += u != 0;
        }
      }
    CHECK(bad == 0 && padbad == 0, "%s: %d codes not at their documented position, %d padding codes non-zero", fm.name, bad, padbad);
    // Meta of padding channels is zero.
    int metabad = 0;
    for (int64_t kt = 0; kt < W.L.ktiles; ++kt) {
      const uint8_t* meta = p + ((W.L.panels - 1) * W.L.ktiles + kt) * W.L.tile_bytes + 1024;
      for (int c = int(N % 16); c < 16; ++c) {
        const int pos = tc::w4_pos(c);
        if (fm.f.kind == QKind::q4k) {
          for (int i = 0; i < 4; ++i) metabad += meta[i * 16 + pos] != 0 || meta[64 + i * 16 + pos] != 0;
          metabad += meta[128 + 2 * pos] != 0 || meta[160 + 2 * pos] != 0;
        } else {
          const int sb = fm.f.scale_dtype == DType::f32 ? 4 : 2, ng = 128 / fm.f.group;
          for (int i = 0; i < ng * (fm.f.asym ? 2 : 1); ++i)
            for (int b = 0; b < sb; ++b) metabad += meta[(i * 16 + pos) * sb + b] != 0;
        }
      }
    }
    CHECK(metabad == 0, "%s: %d meta bytes of padding channels non-zero", fm.name, metabad);
    if (gVerbose) std::printf("  %s: N=%lld K=%lld tile_bytes=%d total=%zu\n", fm.name, (long long)N, (long long)K, W.L.tile_bytes, W.L.total);
  }
  // Output buffer too small: refused.
  Plain P = make_plain(kFormats[0].f, 16, 64);
  Mem small(64);
  CHECK(!tc::w4a16_repack(P.view(), small.p, 64).ok, "repack into a too-small buffer accepted");
  QPlain v = P.view();
  v.scales = nullptr;
  Mem big(4096);
  CHECK(!tc::w4a16_repack(v, big.p, 4096).ok, "repack with null scales accepted");
}

// ================================================================================================
// one-hot tests through the real kernel
// ================================================================================================

// Activation rows one-hot: row m has a single 1 at k = (m * step + p) % K; over p < step every k
// is hit. With f32 output and no bias, C[m][n] must be the CPU's dequantized W[n][k] exactly.
static void onehot_dequant(const Fmt& fm, DType at, tc::W4Config cfg, int64_t M, int64_t N, int64_t K, int splits) {
  Plain P = make_plain(fm.f, N, K);
  Packed W = pack(P);
  std::vector<float> wdq(size_t(N * K));
  dequantize(P.view(), wdq.data(), K);
  const int64_t step = (K + M - 1) / M;
  Mem A(size_t(M * K) * 2), C(size_t(M * N) * 4);
  int bad = 0, launches = 0;
  Run r;
  r.at = at;
  r.ct = DType::f32;
  r.M = M;
  r.tune.config = cfg;
  r.tune.splits = splits;
  for (int64_t p = 0; p < step; ++p) {
    for (int64_t i = 0; i < M * K; ++i) setv(A.p, at, i, (i % K) == (i / K * step + p) % K ? 1.0 : 0.0);
    for (int64_t i = 0; i < M * N; ++i) setbits(C.p, DType::f32, i, nan_bits(DType::f32));
    tc::Status st = run_gemm(W, P, r, A, K, C, N, nullptr, ws_all());
    ++launches;
    if (!st.ok) {
      CHECK(false, "one-hot dequant %s: %s", fm.name, st.message.c_str());
      return;
    }
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) {
        const int64_t k = (m * step + p) % K;
        const float got = static_cast<const float*>(static_cast<const void*>(C.p))[m * N + n], want = wdq[n * K + k];
        if (!(got == want)) {
          if (bad++ < 3)
            std::printf("    one-hot dequant %s A=%s cfg=%s: C[%lld][%lld] (k=%lld) = %.9g (0x%08x), CPU dequantize = %.9g (0x%08x)\n", fm.name,
                        dn(at), tc::w4_config_name(cfg), (long long)m, (long long)n, (long long)k, got, f32_bits(got), want, f32_bits(want));
        }
      }
  }
  CHECK(bad == 0, "one-hot dequant %s A=%s cfg=%s M=%lld N=%lld K=%lld: %d outputs not bit-exact over %d launches", fm.name, dn(at),
        tc::w4_config_name(cfg), (long long)M, (long long)N, (long long)K, bad, launches);
  if (gVerbose)
    std::printf("  one-hot dequant %s A=%s cfg=%s M=%lld N=%lld K=%lld splits=%d: %d launches, %lld weights bit-exact\n", fm.name, dn(at),
                tc::w4_config_name(cfg), (long long)M, (long long)N, (long long)K, splits, launches, (long long)(N * K));
}

static void test_onehot_dequant() {
  // Every format through the m16 shape (activation dtypes alternating, both for two formats),
  // and through the M = 1 GEMV shape for one format of each kind and scale dtype; the other
  // shapes on a subset. K has a partial last 128-tile where the group allows it; N = 40 leaves a
  // partial panel and a partial block.
  int i = 0;
  for (const auto& fm : kFormats) {
    const int64_t K = fm.f.kind == QKind::q4k ? 256 : fm.f.group == 128 ? 256 : fm.f.group == 64 ? 192 : 160;
    const DType at = i++ % 2 ? DType::bf16 : DType::f16;
    onehot_dequant(fm, at, tc::W4Config::m16, 16, 40, K, 1);
    if (i == 1 || i == 4) onehot_dequant(fm, at == DType::f16 ? DType::bf16 : DType::f16, tc::W4Config::m16, 16, 40, K, 1);
  }
  onehot_dequant(kFormats[0], DType::f16, tc::W4Config::gemv, 1, 40, 160, 1);   // sym f16
  onehot_dequant(kFormats[1], DType::bf16, tc::W4Config::gemv, 1, 40, 192, 1);  // sym f32
  onehot_dequant(kFormats[6], DType::f16, tc::W4Config::gemv, 1, 40, 256, 1);   // asym f32 g128 (half a group per warp)
  onehot_dequant(kFormats[3], DType::bf16, tc::W4Config::gemv, 1, 24, 160, 2);  // asym f16, split
  onehot_dequant(kFormats[7], DType::bf16, tc::W4Config::gemv, 1, 40, 256, 1);  // q4k
  onehot_dequant(kFormats[0], DType::bf16, tc::W4Config::m8, 3, 40, 160, 1);
  onehot_dequant(kFormats[4], DType::bf16, tc::W4Config::m32, 17, 40, 160, 2);
  onehot_dequant(kFormats[7], DType::f16, tc::W4Config::m64, 33, 40, 256, 1);
  onehot_dequant(kFormats[1], DType::bf16, tc::W4Config::m64, 33, 40, 192, 1);
  onehot_dequant(kFormats[3], DType::f16, tc::W4Config::small, 16, 40, 160, 1);
  onehot_dequant(kFormats[5], DType::bf16, tc::W4Config::small, 11, 40, 192, 2);
}

// Weights one-hot: every row n of W is zero except the code v(n) at k = (5n + p) % K (over p,
// every (n, k) of the tiles), with power-of-two scales that differ per channel and group; A is
// integers. Everything is exact, so C must equal a[m][k] * v(n) * s(n, group) exactly.
static void onehot_weights(const Fmt& fm, DType at, tc::W4Config cfg, int64_t M, int64_t N, int64_t K) {
  Plain P = make_plain(fm.f, N, K);
  const bool sym = fm.f.kind == QKind::int4 && !fm.f.asym;
  // Power-of-two steps; zero mins (asym / q4k zero weight: code 0 and min 0).
  const int64_t G = P.G(), nb = K / G;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t b = 0; b < nb; ++b) {
      const double s = std::ldexp(1.0, int((n + 3 * b) % 5) - 2);
      if (P.q4k()) {
        P.sc[n * nb + b] = uint8_t(1 << ((n + 3 * b) % 5));  // d = 1/4: step 2^(i-2)
        P.mn[n * nb + b] = 0;
      } else {
        P.store_s(P.sc, n * nb + b, s);
        if (P.asym()) P.store_s(P.mn, n * nb + b, 0.0);
      }
    }
  if (P.q4k())
    for (size_t i = 0; i < P.sd.size() / 2; ++i) {
      const uint16_t d = f32_to_f16(0.25f), dm = f32_to_f16(0.5f);
      std::memcpy(&P.sd[2 * i], &d, 2);
      std::memcpy(&P.sdm[2 * i], &dm, 2);
    }
  auto val = [&](int64_t n) { return sym ? int((n * 5) % 15) - 7 : int(1 + (n * 7) % 15); };  // never 0
  auto aval = [](int64_t m, int64_t k) { return double((m * 131 + k * 17) % 251) - 125; };
  Mem A(size_t(M * K) * 2), C(size_t(M * N) * 4);
  for (int64_t i = 0; i < M * K; ++i) setv(A.p, at, i, aval(i / K, i % K));
  Run r;
  r.at = at;
  r.M = M;
  r.tune.config = cfg;
  int bad = 0, launches = 0;
  for (int64_t p = 0; p < K; ++p) {
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) P.set_code(n, k, k == (5 * n + p) % K ? val(n) : 0);
    Packed W = pack(P);
    for (int64_t i = 0; i < M * N; ++i) setbits(C.p, DType::f32, i, nan_bits(DType::f32));
    tc::Status st = run_gemm(W, P, r, A, K, C, N, nullptr, ws_all());
    ++launches;
    if (!st.ok) {
      CHECK(false, "one-hot weights: %s", st.message.c_str());
      return;
    }
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) {
        const int64_t k = (5 * n + p) % K;
        double s, mm;
        P.sm(n, k, &s, &mm);
        const double want = aval(m, k) * val(n) * s;
        const double got = static_cast<const float*>(static_cast<const void*>(C.p))[m * N + n];
        if (got != want && bad++ < 3)
          std::printf("    one-hot weights %s A=%s cfg=%s: C[%lld][%lld] (k=%lld) = %g, expected %g\n", fm.name, dn(at),
                      tc::w4_config_name(cfg), (long long)m, (long long)n, (long long)k, got, want);
      }
  }
  CHECK(bad == 0, "one-hot weights %s A=%s cfg=%s M=%lld N=%lld K=%lld: %d wrong outputs over %d launches", fm.name, dn(at),
        tc::w4_config_name(cfg), (long long)M, (long long)N, (long long)K, bad, launches);
  if (gVerbose)
    std::printf("  one-hot weights %s A=%s cfg=%s M=%lld N=%lld K=%lld: %d launches\n", fm.name, dn(at), tc::w4_config_name(cfg),
                (long long)M, (long long)N, (long long)K, launches);
}

static void test_onehot_weights() {
  onehot_weights(kFormats[0], DType::f16, tc::W4Config::m16, 16, 32, 128);
  onehot_weights(kFormats[3], DType::bf16, tc::W4Config::gemv, 1, 32, 128);
  onehot_weights(kFormats[4], DType::bf16, tc::W4Config::m8, 5, 16, 128);
}

// ================================================================================================
// dense tests
// ================================================================================================
static void test_dense() {
  using C = tc::W4Config;
  // Shapes: M in {1, 3, 16, 17, 33}; N not a multiple of the block (40, 200); K with a partial
  // last tile where the group allows it.
  const int64_t Ms[] = {1, 3, 16, 17, 33};
  int cases = 0;
  for (size_t fi = 0; fi < sizeof(kFormats) / sizeof(kFormats[0]); ++fi) {
    const Fmt& fm = kFormats[fi];
    const int64_t K = fm.f.kind == QKind::q4k ? 512 : fm.f.group == 128 ? 384 : fm.f.group == 64 ? 192 : 224;
    for (int64_t N : {40, 200}) {
      Plain P = make_plain(fm.f, N, K);
      Packed W = pack(P);
      for (size_t mi = 0; mi < 5; ++mi) {
        // Three of the five M per format (rotating), the wide N once per format.
        const int64_t M = Ms[mi];
        if (N == 40 ? (mi + fi) % 5 >= 3 : (mi + fi) % 5 != 0) continue;
        Run r;
        r.at = (fi + M) % 2 ? DType::bf16 : DType::f16;
        r.ct = M == 3 ? DType::bf16 : M == 17 ? DType::f16 : DType::f32;
        r.M = M;
        r.bias = (fi + M + N) % 3 != 0;
        r.tune.sms = 8;  // small "GPU": the automatic split kicks in on these shapes
        dense_case(P, W, r, fm.name);
        ++cases;
      }
    }
  }
  // Forced block shapes and splits, padded strides, residual (aliasing C), every output dtype.
  Plain P = make_plain(kFormats[3].f, 72, 352);
  Packed W = pack(P);
  struct V {
    C cfg;
    int64_t M;
    int splits;
    DType at, ct;
    int64_t padA, padC;
    bool bias, res;
  } vs[] = {
      {C::gemv, 1, 1, DType::f16, DType::f32, 0, 0, true, false}, {C::gemv, 1, 3, DType::bf16, DType::bf16, 8, 3, false, true},
      {C::m8, 5, 2, DType::f16, DType::f16, 16, 1, true, true},    {C::m8, 9, 1, DType::bf16, DType::f32, 0, 0, false, false},
      {C::m16, 16, 3, DType::f16, DType::f32, 0, 5, true, false},  {C::m16, 20, 2, DType::bf16, DType::f16, 8, 0, true, true},
      {C::m32, 31, 1, DType::f16, DType::bf16, 0, 0, false, false}, {C::m32, 2, 2, DType::bf16, DType::f32, 0, 2, true, false},
      {C::m64, 33, 2, DType::f16, DType::f32, 8, 0, true, true},   {C::m64, 70, 1, DType::bf16, DType::f16, 0, 1, true, false},
      {C::small, 16, 3, DType::bf16, DType::f32, 0, 0, true, false}, {C::small, 35, 1, DType::f16, DType::bf16, 8, 2, false, true},
  };
  for (const V& v : vs) {
    Run r;
    r.at = v.at;
    r.ct = v.ct;
    r.M = v.M;
    r.padA = v.padA;
    r.padC = v.padC;
    r.bias = v.bias;
    r.residual = v.res;
    r.tune.config = v.cfg;
    r.tune.splits = v.splits;
    dense_case(P, W, r, kFormats[3].name);
    ++cases;
  }
  if (gVerbose) std::printf("  %d dense cases\n", cases);
}

// Split-K is deterministic (the reducer adds the partials in split order) and the automatic plan
// behaves: more splits on a bigger GPU, none without a workspace.
static void test_splitk() {
  Plain P = make_plain(kFormats[0].f, 48, 1024);
  Packed W = pack(P);
  const int64_t M = 4;
  Mem A(size_t(M * 1024) * 2), C1(size_t(M * 48) * 4), C2(size_t(M * 48) * 4), C3(size_t(M * 48) * 4);
  for (int64_t i = 0; i < M * 1024; ++i) setv(A.p, DType::f16, i, urand(-1, 1));
  Run r;
  r.M = M;
  r.tune.splits = 5;
  CHECK(run_gemm(W, P, r, A, 1024, C1, 48, nullptr, ws_all()).ok, "split-K 5");
  CHECK(run_gemm(W, P, r, A, 1024, C2, 48, nullptr, ws_all()).ok, "split-K 5 again");
  CHECK(std::memcmp(C1.p, C2.p, size_t(M * 48) * 4) == 0, "split-K results differ between two identical launches");
  r.tune.splits = 1;
  CHECK(run_gemm(W, P, r, A, 1024, C3, 48, nullptr, ws_all()).ok, "split-K 1");
  double maxd = 0;
  for (int64_t i = 0; i < M * 48; ++i)
    maxd = std::fmax(maxd, std::fabs(double(reinterpret_cast<float*>(C1.p)[i]) - reinterpret_cast<float*>(C3.p)[i]));
  CHECK(maxd < 1e-4, "split 5 vs split 1 differ by %g", maxd);
  // Plans.
  QGemmArgs g;
  g.w.fmt = P.f;
  g.w.N = 4096;
  g.w.K = 4096;
  g.a_dtype = DType::f16;
  tc::W4A16Plan pl;
  tc::W4A16Tuning t;
  g.M = 1;
  CHECK(tc::w4a16_plan(g, {gWs.p, size_t(64) << 20}, {}, t, &pl).ok, "plan");
  CHECK(pl.config == tc::W4Config::gemv && pl.splits > 1 && int64_t(pl.n_tiles) * pl.splits >= 3 * 132,
        "M=1 N=K=4096: expected the GEMV shape filling 132 SMs, got %s x %d splits, %d tiles", tc::w4_config_name(pl.config), pl.splits,
        pl.n_tiles);
  if (gVerbose)
    std::printf("  plan M=1 N=K=4096: %s, %d n-tiles x %d splits, smem %zu, workspace %zu\n", tc::w4_config_name(pl.config), pl.n_tiles,
                pl.splits, pl.smem, pl.ws_bytes);
  CHECK(tc::w4a16_plan(g, {}, {}, t, &pl).ok && pl.splits == 1, "no workspace: expected 1 split, got %d", pl.splits);
  g.M = 16;
  CHECK(tc::w4a16_plan(g, {gWs.p, size_t(64) << 20}, {}, t, &pl).ok && pl.config == tc::W4Config::m16, "M=16: expected m16");
  if (gVerbose)
    std::printf("  plan M=16 N=K=4096: %s, %d n-tiles x %d splits, smem %zu, workspace %zu\n", tc::w4_config_name(pl.config), pl.n_tiles,
                pl.splits, pl.smem, pl.ws_bytes);
  g.M = 512;
  CHECK(tc::w4a16_plan(g, {gWs.p, size_t(64) << 20}, {}, t, &pl).ok && pl.config == tc::W4Config::m64 && pl.splits == 1,
        "M=512: expected m64 without split");
}

// ================================================================================================
// grouped (MoE)
// ================================================================================================
struct Moe {
  int64_t E, T, N, K;
  std::vector<int32_t> rows, offsets;
  std::vector<Plain> plains;
  std::vector<Packed> packed;
  std::vector<const void*> wptr;  // the "device" pointer array
};

// counts[e] rows for expert e; tokens drawn so that some repeat (top-k) and some are unused.
static Moe make_moe(const QuantFormat& f, const std::vector<int>& counts, int64_t T, int64_t N, int64_t K) {
  Moe m;
  m.E = int64_t(counts.size());
  m.T = T;
  m.N = N;
  m.K = K;
  m.offsets.push_back(0);
  for (size_t e = 0; e < counts.size(); ++e) {
    for (int i = 0; i < counts[e]; ++i) m.rows.push_back(int32_t(irand(0, int(T) - 2)));  // token T-1 never used
    m.offsets.push_back(int32_t(m.rows.size()));
  }
  for (size_t e = 0; e < counts.size(); ++e) {
    m.plains.push_back(make_plain(f, N, K));
  }
  for (size_t e = 0; e < counts.size(); ++e) {
    if (counts[e] > 0) {
      m.packed.push_back(pack(m.plains[e]));
      m.wptr.push_back(m.packed.back().data());
    } else {
      m.packed.emplace_back();
      m.wptr.push_back(nullptr);  // empty experts may have no weights
    }
  }
  return m;
}

struct GRun {
  DType at = DType::f16, ct = DType::f32;
  bool bias = false;
  tc::W4A16Tuning tune;
};

// Runs the grouped kernel and compares with ref::qgemm_grouped_ref (.exact).
static void grouped_case(Moe& m, const GRun& r, const char* what) {
  const int64_t R = int64_t(m.rows.size()), N = m.N, K = m.K, lda = K + 8, ldc = N + 3, ldb = N + 5;
  Mem A(size_t(m.T * lda) * 2), C(size_t(R * ldc) * esz(r.ct) + 64);
  for (int64_t i = 0; i < m.T * lda; ++i) setv(A.p, r.at, i, urand(-1, 1));
  for (int64_t i = 0; i < R * ldc; ++i) setbits(C.p, r.ct, i, (i % ldc) < N ? nan_bits(r.ct) : 0x3c00u);
  std::vector<uint32_t> before(R * ldc);
  for (int64_t i = 0; i < R * ldc; ++i) before[i] = getbits(C.p, r.ct, i);
  std::vector<float> bias(size_t(m.E * ldb));
  for (auto& v : bias) v = float(urand(-1, 1));
  QGroupedArgs g;
  g.fmt = m.plains[0].f;
  g.N = N;
  g.K = K;
  g.E = m.E;
  g.w = reinterpret_cast<const uint8_t* const*>(m.wptr.data());
  g.a_dtype = r.at;
  g.T = m.T;
  g.A = A.p;
  g.lda = lda;
  g.R = R;
  g.rows = m.rows.data();
  g.offsets = m.offsets.data();
  g.c_dtype = r.ct;
  g.C = C.p;
  g.ldc = ldc;
  g.bias = r.bias ? bias.data() : nullptr;
  g.ldb = ldb;
  // The CPU's validation accepts this routing (same semantics), and so does ours.
  bool cpu_ok = true;
  try {
    qgemm_grouped_check(g, K);
  } catch (const std::exception& e) {
    cpu_ok = false;
    std::printf("    CPU check: %s\n", e.what());
  }
  CHECK(cpu_ok, "%s: the CPU refuses the routing", what);
  CHECK(tc::w4a16_grouped_check_routing(g, m.offsets.data(), m.rows.data(), m.wptr.data()).ok, "%s: routing check refused", what);
  unsigned long long err = tc::kW4NoError;
  tc::Status st = tc::w4a16_grouped(g, &err, ws_all(), nullptr, {}, r.tune);
  char w[200];
  std::snprintf(w, sizeof w, "grouped %s %s A=%s C=%s E=%lld R=%lld N=%lld K=%lld cfg=%s splits=%d bias=%d", what, g.fmt.kind == QKind::q4k ? "q4k" : "int4",
                dn(r.at), dn(r.ct), (long long)m.E, (long long)R, (long long)N, (long long)K, tc::w4_config_name(r.tune.config), r.tune.splits,
                r.bias);
  CHECK(st.ok, "%s: %s", w, st.message.c_str());
  if (!st.ok) return;
  CHECK(err == tc::kW4NoError, "%s: error slot set (0x%llx) for valid routing", w, err);
  tc::W4A16Plan pl;
  if (tc::w4a16_grouped_plan(g, ws_all(), {}, r.tune, &pl).ok) check_tickets(pl, w);
  // Reference: per expert, the gathered rows through the CPU reference.
  std::vector<const QPlain*> wp;
  std::vector<QPlain> views;
  for (auto& p : m.plains) views.push_back(p.view());
  for (auto& v : views) wp.push_back(&v);
  ref::QFusedRef ref;
  ref::qgemm_grouped_ref(wp, wp, g, ref);
  int bad = 0, pad = 0;
  for (int64_t e = 0; e < m.E; ++e)
    for (int64_t i = m.offsets[e]; i < m.offsets[e + 1]; ++i)
      for (int64_t n = 0; n < N; ++n) {
        double mag = r.bias ? std::fabs(bias[e * ldb + n]) : 0.0;
        for (int64_t k = 0; k < K; ++k) {
          double s, mm;
          m.plains[e].sm(n, k, &s, &mm);
          mag += std::fabs(getv(A.p, r.at, m.rows[i] * lda + k)) * (std::fabs(s * m.plains[e].code(n, k)) + std::fabs(mm));
        }
        const double ex = ref.exact[i * N + n], got = getv(C.p, r.ct, i * ldc + n);
        const double tol = std::ldexp(mag, -24) * (double(K) / 16 + 2 * double(K) / m.plains[e].G() + 24) + 1.01 * hulp(r.ct) * std::fabs(ex) + tiny(r.ct);
        if (!(std::fabs(got - ex) <= tol) && bad++ < 3)
          std::printf("    %s: C[%lld][%lld] (expert %lld) = %.9g, expected %.9g\n", w, (long long)i, (long long)n, (long long)e, got, ex);
      }
  for (int64_t i = 0; i < R; ++i)
    for (int64_t j = N; j < ldc; ++j) pad += getbits(C.p, r.ct, i * ldc + j) != before[i * ldc + j];
  CHECK(bad == 0, "%s: %d wrong outputs", w, bad);
  CHECK(pad == 0, "%s: %d padding elements written", w, pad);
}

static void test_grouped() {
  using C = tc::W4Config;
  {
    // Uneven experts, two empty ones without weights, one with a single row.
    Moe m = make_moe(kFormats[0].f, {5, 0, 17, 1, 0, 9}, 20, 40, 224);
    GRun r;
    grouped_case(m, r, "auto");
    r.at = DType::bf16;
    r.ct = DType::bf16;
    r.bias = true;
    r.tune.config = C::m8;
    grouped_case(m, r, "m8");
    r.at = DType::f16;
    r.ct = DType::f16;
    r.tune.config = C::m16;
    r.tune.splits = 2;
    grouped_case(m, r, "m16 split 2");
    r.tune.config = C::m32;
    r.tune.splits = 0;
    r.tune.sms = 16;
    grouped_case(m, r, "m32 auto split");
  }
  {
    Moe m = make_moe(kFormats[7].f, {3, 12, 0, 40}, 30, 72, 256);
    GRun r;
    r.bias = true;
    r.tune.config = C::m64;
    grouped_case(m, r, "q4k m64");
    r.at = DType::bf16;
    r.tune.config = C::automatic;
    r.tune.splits = 3;
    grouped_case(m, r, "q4k auto split 3");
  }
  {
    Moe m = make_moe(kFormats[4].f, {0, 0, 7}, 8, 24, 96);  // leading empty experts
    GRun r;
    r.at = DType::bf16;
    grouped_case(m, r, "asym f32 leading empties");
  }
}

// Bad routing on the device: reported through the error slot, nothing read or written out of
// bounds (A ends at a PROT_NONE page), the valid part still right.
static void test_grouped_errors() {
  const int64_t N = 24, K = 64, T = 6, lda = K;
  Plain P = make_plain(kFormats[0].f, N, K);
  Packed W = pack(P);
  const long page = sysconf(_SC_PAGESIZE);
  const size_t abytes = size_t(T * lda) * 2, span = (abytes + page - 1) / page * page;
  uint8_t* region = static_cast<uint8_t*>(mmap(nullptr, span + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  CHECK(region != MAP_FAILED, "mmap");
  if (region == MAP_FAILED) return;
  CHECK(mprotect(region + span, page, PROT_NONE) == 0, "mprotect");
  void* A = region + span - abytes;  // the last row ends at the guard page
  for (int64_t i = 0; i < T * lda; ++i) setv(A, DType::f16, i, urand(-1, 1));
  auto run = [&](std::vector<int32_t> rows, std::vector<int32_t> offsets, std::vector<const void*> w, unsigned long long* err,
                 std::vector<float>* Cout, int64_t E) {
    const int64_t R = int64_t(rows.size());
    Cout->assign(size_t(R * N), 777.0f);
    QGroupedArgs g;
    g.fmt = P.f;
    g.N = N;
    g.K = K;
    g.E = E;
    g.w = reinterpret_cast<const uint8_t* const*>(w.data());
    g.a_dtype = DType::f16;
    g.T = T;
    g.A = A;
    g.lda = lda;
    g.R = R;
    g.rows = rows.data();
    g.offsets = offsets.data();
    g.c_dtype = DType::f32;
    g.C = Cout->data();
    g.ldc = N;
    *err = tc::kW4NoError;
    tc::Status host = tc::w4a16_grouped_check_routing(g, offsets.data(), rows.data(), w.data());
    tc::W4A16Tuning tu;
    tu.config = tc::W4Config::m8;
    tc::Status st = tc::w4a16_grouped(g, err, ws_all(), nullptr, {}, tu);
    CHECK(st.ok, "grouped launch with bad routing: %s", st.message.c_str());
    return host;
  };
  std::vector<float> C;
  unsigned long long err;
  int64_t idx = -1;
  // rows[3] = T (one past A): flagged; the row is computed from zeros; A's guard page untouched.
  tc::Status host = run({0, 1, 2, int32_t(T), 5, 4}, {0, 3, 6}, {W.data(), W.data()}, &err, &C, 2);
  CHECK(tc::w4a16_grouped_error(err, &idx) == tc::W4GroupedError::row && idx == 3, "row out of range: slot 0x%llx", err);
  CHECK(!host.ok && host.arg == "rows", "host routing check accepted rows[3] = T");
  bool zero_row = true;
  for (int64_t n = 0; n < N; ++n) zero_row = zero_row && C[3 * N + n] == 0.0f;
  CHECK(zero_row, "the bad row is not computed from a zero activation row");
  // Negative row.
  run({0, -7, 2}, {0, 3}, {W.data()}, &err, &C, 1);
  CHECK(tc::w4a16_grouped_error(err, &idx) == tc::W4GroupedError::row && idx == 1, "negative row: slot 0x%llx", err);
  // Decreasing offsets and offsets[E] != R: flagged (nothing out of bounds).
  host = run({0, 1, 2, 3}, {0, 3, 1, 4}, {W.data(), W.data(), W.data()}, &err, &C, 3);
  CHECK(tc::w4a16_grouped_error(err, &idx) == tc::W4GroupedError::offsets, "decreasing offsets: slot 0x%llx", err);
  CHECK(!host.ok && host.arg == "offsets", "host check accepted decreasing offsets");
  host = run({0, 1, 2, 3}, {0, 2, 9}, {W.data(), W.data()}, &err, &C, 2);
  CHECK(tc::w4a16_grouped_error(err, &idx) == tc::W4GroupedError::offsets && idx == 1, "offsets[E] > R: slot 0x%llx", err);
  // An expert with rows but no weights: flagged, its rows of C untouched, the others computed.
  host = run({0, 1, 2, 3, 4}, {0, 2, 5}, {W.data(), nullptr}, &err, &C, 2);
  CHECK(tc::w4a16_grouped_error(err, &idx) == tc::W4GroupedError::weights && idx == 1, "missing weights: slot 0x%llx", err);
  CHECK(!host.ok && host.arg == "w", "host check accepted missing weights");
  bool untouched = true, written = true;
  for (int64_t n = 0; n < N; ++n) {
    for (int i = 2; i < 5; ++i) untouched = untouched && C[i * N + n] == 777.0f;
    for (int i = 0; i < 2; ++i) written = written && C[i * N + n] != 777.0f && !std::isnan(C[i * N + n]);
  }
  CHECK(untouched && written, "missing weights: expert 1's rows written (%d) or expert 0's not (%d)", !untouched, !written);
  munmap(region, span + page);
}

// ================================================================================================
// broken variants and launch checks
// ================================================================================================
template <int BUG>
static void test_broken(const char* what) {
  Plain P = make_plain(kFormats[0].f, 40, 640);
  Packed W = pack(P);
  Run r;
  r.M = 16;
  r.tune.config = tc::W4Config::m16;
  r.tune.splits = BUG >= 3 ? 3 : 1;
  // Split-K bugs show with a poisoned workspace (partials NaN) and, for the ticket reset, on the
  // second launch.
  Mem ws(size_t(1) << 20);
  const tc::W4A16Workspace W4{ws.p, size_t(1) << 20};
  tc::W4A16Plan pl;
  QGemmArgs probe;
  probe.w.fmt = P.f;
  probe.w.N = P.N;
  probe.w.K = P.K;
  probe.M = r.M;
  tc::w4a16_plan(probe, W4, {}, r.tune, &pl);
  std::memset(ws.p, 0, pl.cnt_bytes);
  for (size_t i = pl.cnt_bytes / 4; i < (size_t(1) << 18); ++i) reinterpret_cast<uint32_t*>(ws.p)[i] = 0x7fc00000u;
  auto fn = [&](const QGemmArgs& g, tc::W4A16Workspace) { return tc::w4a16_gemm<BUG>(g, W4, nullptr, {}, r.tune); };
  std::string how;
  bool caught = false;
  int nans = 0;
  try {
    int bad = dense_case(P, W, r, what, false, fn, &nans);
    if (BUG == 4 && bad == 0) bad = dense_case(P, W, r, what, false, fn, &nans);  // second launch on the same tickets
    caught = bad != 0;
    how = std::to_string(bad) + " of 640 outputs wrong, " + std::to_string(nans) + " NaN";
  } catch (const cuemu::Error& e) {
    caught = true;
    how = std::string("cuemu error: ") + e.what();
    const size_t nl = how.find('\n');
    if (nl != std::string::npos) how.resize(nl);
  }
  CHECK(caught, "broken W4A16 kernel (%s) was NOT caught", what);
  std::printf("  broken W4A16 (%s) under %s: %s -> %s\n", what, cuemu::schedule_name(cuemu::schedule()).c_str(), caught ? "CAUGHT" : "missed",
              how.c_str());
}

static void test_launch_checks() {
  Plain P = make_plain(kFormats[0].f, 40, 128);
  Packed W = pack(P);
  const int64_t M = 40;
  Mem A(size_t(M * 136) * 2 + 64), C(size_t(M * 40) * 4);
  for (size_t i = 0; i < size_t(M * 40); ++i) reinterpret_cast<float*>(C.p)[i] = 5.0f;
  auto untouched = [&] {
    for (size_t i = 0; i < size_t(M * 40); ++i)
      if (reinterpret_cast<float*>(C.p)[i] != 5.0f) return false;
    return true;
  };
  QGemmArgs g;
  g.w.fmt = P.f;
  g.w.N = 40;
  g.w.K = 128;
  g.w.data = static_cast<const uint8_t*>(W.data());
  g.a_dtype = DType::f16;
  g.M = M;
  g.A = A.p;
  g.lda = 128;
  g.c_dtype = DType::f32;
  g.C = C.p;
  g.ldc = 40;
  auto expect = [&](const QGemmArgs& a, Code c, const char* what, tc::DeviceLimits lim = {}, tc::W4A16Tuning tu = {},
                    tc::W4A16Workspace ws = {}) {
    tc::Status st = tc::w4a16_gemm(a, ws, nullptr, lim, tu);
    CHECK(!st.ok && st.code == c, "%s: expected %s, got ok=%d %s", what, code_name(c), st.ok, st.message.c_str());
    CHECK(untouched(), "%s: a refused launch wrote C", what);
    if (gVerbose && !st.ok) std::printf("  refused (%s): %s\n", what, st.message.c_str());
  };
  // The m64 shape needs ~70 KiB: refused on a 48 KiB device when forced ...
  tc::DeviceLimits small;
  small.smem_optin = 48 << 10;
  tc::W4A16Tuning t64;
  t64.config = tc::W4Config::m64;
  expect(g, Code::UNSUPPORTED, "m64 on a 48 KiB device", small, t64);
  // ... while the automatic choice steps down to a shape that fits, and runs.
  tc::W4A16Plan pl;
  CHECK(tc::w4a16_plan(g, {}, small, {}, &pl).ok && pl.smem <= small.smem_optin && pl.config == tc::W4Config::small,
        "auto plan on 48 KiB: %s with %zu bytes", tc::w4_config_name(pl.config), pl.smem);
  {
    Run r;
    r.M = M;
    dense_case(P, W, r, "auto on a 48 KiB device", true, [&](const QGemmArgs& a, tc::W4A16Workspace) { return tc::w4a16_gemm(a, {}, nullptr, small); });
  }
  QGemmArgs b = g;
  b.a_dtype = DType::f32;
  expect(b, Code::DTYPE, "f32 activations");
  b = g;
  b.c_dtype = DType::int8;
  expect(b, Code::DTYPE, "int8 output");
  b = g;
  b.lda = 130;
  expect(b, Code::UNSUPPORTED, "lda % 8 != 0");
  b = g;
  b.A = A.p + 16 + 2;
  expect(b, Code::UNSUPPORTED, "misaligned A");
  b = g;
  b.lda = 64;
  expect(b, Code::SHAPE, "lda < K");
  b = g;
  b.ldc = 39;
  expect(b, Code::SHAPE, "ldc < N");
  b = g;
  b.w.data = nullptr;
  expect(b, Code::INVALID_ARG, "null weights");
  b = g;
  b.w.data = static_cast<const uint8_t*>(W.data()) + 8;
  expect(b, Code::INVALID_ARG, "misaligned weights");
  b = g;
  b.epilogue = QEpilogue::swiglu;
  expect(b, Code::UNSUPPORTED, "swiglu epilogue");
  b = g;
  b.w.K = 80;
  expect(b, Code::SHAPE, "K not a multiple of the group");
  b = g;
  b.residual = static_cast<const uint8_t*>(g.C) + 4;
  b.ldr = 40;
  expect(b, Code::INVALID_ARG, "residual overlapping C");
  b = g;
  b.C = A.p + 64;
  expect(b, Code::INVALID_ARG, "C overlapping A");
  tc::W4A16Tuning tg;
  tg.config = tc::W4Config::gemv;
  expect(g, Code::INVALID_ARG, "GEMV shape with M = 40", {}, tg);
  {
    // Forced splits need their workspace (automatic ones shrink to what is given).
    Plain P5 = make_plain(kFormats[0].f, 40, 512);
    Packed W5 = pack(P5);
    b = g;
    b.w.K = 512;
    b.w.data = static_cast<const uint8_t*>(W5.data());
    Mem A5(size_t(M * 512) * 2);
    b.A = A5.p;
    b.lda = 512;
    tc::W4A16Tuning ts;
    ts.splits = 4;
    Mem tiny_ws(64);
    expect(b, Code::INVALID_ARG, "4 splits with a 64-byte workspace", {}, ts, {tiny_ws.p, 64});
    ts.splits = 0;
    CHECK(tc::w4a16_plan(b, {tiny_ws.p, 64}, {}, ts, &pl).ok && pl.splits == 1, "automatic split with a 64-byte workspace: %d", pl.splits);
  }
  b = g;
  b.M = int64_t(65536) * 64 + 1;  // grid.y beyond 65535 even with the m64 shape
  expect(b, Code::UNSUPPORTED, "huge M");
  // M = 0 is a no-op.
  b = g;
  b.M = 0;
  CHECK(tc::w4a16_gemm(b).ok && untouched(), "M = 0");
  // Grouped refusals.
  QGroupedArgs q;
  q.fmt = P.f;
  q.N = 40;
  q.K = 128;
  q.E = 0;
  q.T = 4;
  q.R = 4;
  unsigned long long err = tc::kW4NoError;
  CHECK(tc::w4a16_grouped(q, &err).code == Code::SHAPE, "grouped E = 0");
  q.E = 2;
  CHECK(tc::w4a16_grouped(q, &err).code == Code::INVALID_ARG, "grouped null rows / offsets");
  q.epilogue = QEpilogue::swiglu;
  CHECK(tc::w4a16_grouped(q, &err).code == Code::UNSUPPORTED, "grouped swiglu");
  // The generic launch check refuses what no GPU runs.
  tc::DeviceLimits lim;
  CHECK(!tc::check_launch("k", {dim3(1), dim3(256), size_t(228) << 10, 0}, lim).ok, "228 KiB dynamic shared accepted");
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
  std::printf("%s %-34s %8.0f ms\n", gFailures == before ? "ok  " : "FAIL", name, ms);
}

int main(int argc, char** argv) {
  gVerbose = argc > 1 && std::string(argv[1]) == "-v";
  std::memset(gWs.p, 0, size_t(8) << 20);
  const cuemu::Schedule orders[] = {{cuemu::Order::Forward, 0}, {cuemu::Order::Reverse, 0}};
  for (const auto& s : orders) {
    cuemu::set_schedule(s);
    std::printf("== schedule %s\n", cuemu::schedule_name(s).c_str());
    run_test("layout refusals", test_layout_refusals);
    run_test("repack round trip + layout", test_repack);
    run_test("one-hot activations (bit-exact)", test_onehot_dequant);
    run_test("one-hot weights", test_onehot_weights);
    run_test("dense vs reference", test_dense);
    run_test("split-K", test_splitk);
    run_test("grouped (MoE)", test_grouped);
    run_test("grouped bad routing", test_grouped_errors);
    run_test("broken: no barrier", [] { test_broken<1>("no __syncthreads between stages"); });
    run_test("broken: no cp.async wait", [] { test_broken<2>("no cp_async_wait"); });
    run_test("broken: split slot dropped", [] { test_broken<3>("split-K: every split writes slot 0"); });
    run_test("broken: ticket not reset", [] { test_broken<4>("split-K: ticket not reset"); });
    run_test("launch checks", test_launch_checks);
  }
  std::printf("%d checks, %d failures\n", gChecks, gFailures);
  return gFailures == 0 ? 0 : 1;
}
