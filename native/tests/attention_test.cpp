// Tachyon: standalone test (and benchmark) of the paged KV cache and paged attention kernels
// (native/cpu/kernels/attention.cpp, every ISA variant) against the float64 reference over
// contiguous K/V (native/cpu/ref/attention_ref.cpp). Build and run: native/tests/attention_test.sh
// [--quick] [--bench].
//
// Tolerance model (|got - ref| <= allowed, per output element; one place):
//   The kernel is compared with the reference computed from the exact values it reads (q as
//   rounded to its dtype, K/V as dequantised from the cache), so the only error is the kernel's
//   f32 arithmetic plus the output rounding:
//     e      = 2^-23 (D/VL + log2 VL + 2) dotMag  [+ 2^-20 softCap]   error of one score: each of
//              the VL lanes accumulates D/VL products by FMA, a log2(VL)-level reduction, the
//              q*smScale rounding, one spare; 2^-23 = 2 u (a factor 2 of margin over first
//              order); dotMag = max_t |smScale| sum_i |q_i k_ti|; tanh error with soft-cap
//     o:     allowed = vMax (2.5 e + 4e-7 + (2 tiles + 40 + 4 splits) 2^-23) + out rounding
//            (softmax weights move by at most ~2e relative; exp 1 ulp; the running sums add one
//            term per tile plus up to 32 per tile, each rounding 2^-24 relative; merges);
//            out rounding: f16 2^-11 |ref| + 2^-24, bf16 2^-8 |ref| + 2^-133, f32 2^-24 |ref|.
//     lse:   allowed = e + 2^-22 |lse| + (2 tiles + 40 + 4 splits) 2^-23 + 1e-6
//   KV quantisation is checked separately and exactly: kv_append's codes must equal the scalar
//   specification bit for bit (fp8: f32_to_fp8(x / scale); int8: amax/127 scale, RNE codes),
//   and the dequantised values must lie within the a-priori bound of the format:
//     fp8e4m3 |deq - x| <= 2^-4 |x| + 2^-10 scale, fp8e5m2 2^-3 |x| + 2^-17 scale (half an ulp,
//     normal or subnormal), int8 scale/2 (1 + 2^-20) + 2^-23 |x|, f16/bf16 exact RNE rounding.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "akernels.h"
#include "qgemm_pool.h"
#include "ref/attention_ref.h"
#include "tachyon/error.h"

using namespace ty;

static int g_fail = 0, g_pass = 0;
#define CHECK(cond, ...)                                         \
  do {                                                           \
    if (cond) { ++g_pass; } else {                               \
      ++g_fail;                                                  \
      if (g_fail < 40) {                                         \
        std::fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);  \
        std::fprintf(stderr, __VA_ARGS__);                       \
        std::fprintf(stderr, "\n");                              \
      }                                                          \
    }                                                            \
  } while (0)

struct Kern {
  const char* name;
  decltype(&cpu::scalar::kv_append) append;
  decltype(&cpu::scalar::attention_run) run;
  decltype(&cpu::scalar::attention_merge) merge;
  decltype(&cpu::scalar::kv_copy_blocks) copy;
  decltype(&cpu::scalar::kv_swap_blocks) swap;
  bool emulated;
};
#define TY_KERN(ns, em) {#ns, &cpu::ns::kv_append, &cpu::ns::attention_run, &cpu::ns::attention_merge, \
                         &cpu::ns::kv_copy_blocks, &cpu::ns::kv_swap_blocks, em}
#if defined(TY_AVX512_EMULATED)
static const bool kAvx512Emu = true;
#else
static const bool kAvx512Emu = false;
#endif
static Kern g_k[3] = {TY_KERN(scalar, false), TY_KERN(avx2, false), TY_KERN(avx512, kAvx512Emu)};
static bool g_quick = false;
static double g_worst[3], g_worst32[3];  // worst err / allowed per ISA (all outputs; f32 outputs)

static float round_to(DType t, float x) {
  if (t == DType::f16) return f16_to_f32(f32_to_f16(x));
  if (t == DType::bf16) return bf16_to_f32(f32_to_bf16(x));
  return x;
}
static void store_act(DType t, std::vector<uint8_t>& buf, const std::vector<float>& x) {
  buf.resize(x.size() * (t == DType::f32 ? 4 : 2));
  for (size_t i = 0; i < x.size(); ++i) {
    if (t == DType::f32) std::memcpy(&buf[i * 4], &x[i], 4);
    else { uint16_t h = t == DType::f16 ? f32_to_f16(x[i]) : f32_to_bf16(x[i]); std::memcpy(&buf[i * 2], &h, 2); }
  }
}
static float load_act(DType t, const void* p, size_t i) {
  if (t == DType::f32) return static_cast<const float*>(p)[i];
  const uint16_t h = static_cast<const uint16_t*>(p)[i];
  return t == DType::f16 ? f16_to_f32(h) : bf16_to_f32(h);
}

// ---- pool --------------------------------------------------------------------------------
struct Pool {
  KvCache c;
  std::vector<uint8_t> data;
  std::vector<float> scales;
  Pool(DType dt, int layers, int blocks, int kvh, int bs, int D, uint32_t seed) {
    c.dtype = dt; c.layers = layers; c.blocks = blocks; c.kvHeads = kvh; c.blockSize = bs; c.headDim = D;
    data.assign(kv_cache_data_bytes(c), 0);
    std::mt19937 rng(seed);
    for (auto& b : data) b = (uint8_t)(rng() & 0x3f);  // finite garbage in unused slots
    scales.assign((size_t)kv_cache_scale_count(c), 0.0f);
    std::uniform_real_distribution<float> u(0.8f, 1.6f);
    if (kv_dtype_fp8(dt))  // values ~ N(0, mag), mag <= 2: map ~ 4.5 sigma near the top of the range
      for (auto& s : scales) s = u(rng) * 9.0f / fp8_max(dt);
    c.data = data.data();
    c.scales = scales.empty() ? nullptr : scales.data();
  }
};

struct SeqData {
  int64_t kvLen = 0, qlen = 0;
  std::vector<int32_t> pages;
  std::vector<float> k, v;  // [kvLen][kvh][D] source values (already rounded to srcDtype)
  std::vector<float> q;     // [qlen][qHeads][D] (rounded to qDtype)
};

struct Case {
  std::string name;
  DType kv = DType::f16;
  int D = 128, kvh = 2, G = 4, bs = 16, layers = 2, layer = 1;
  std::vector<int64_t> kvLens, qLens;
  DType qd = DType::f32, od = DType::f32, src = DType::f32;
  float softCap = 0.0f;
  int window = 0;
  int splitTokens = 0;
  int threads = 1;
  bool lse = true;
  bool identityPages = false;
  bool emu = true;  // also run on the emulated avx512 variant
};

static void make_seqs(const Case& cs, int blocks, std::vector<SeqData>& seqs, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> perm((size_t)blocks);
  std::iota(perm.begin(), perm.end(), 0);
  if (!cs.identityPages) std::shuffle(perm.begin(), perm.end(), rng);
  size_t next = 0;
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_real_distribution<float> ud(0.25f, 2.0f);
  const int qH = cs.kvh * cs.G;
  seqs.resize(cs.kvLens.size());
  for (size_t b = 0; b < seqs.size(); ++b) {
    SeqData& s = seqs[b];
    s.kvLen = cs.kvLens[b];
    s.qlen = cs.qLens[b];
    const int64_t np = (s.kvLen + cs.bs - 1) / cs.bs;
    for (int64_t p = 0; p < np; ++p) s.pages.push_back(perm[next++]);
    s.k.resize((size_t)(s.kvLen * cs.kvh * cs.D));
    s.v.resize(s.k.size());
    std::vector<float> mag((size_t)cs.kvh * 2);
    for (auto& m : mag) m = ud(rng);
    for (int64_t t = 0; t < s.kvLen; ++t)
      for (int h = 0; h < cs.kvh; ++h)
        for (int d = 0; d < cs.D; ++d) {
          const size_t i = (size_t)((t * cs.kvh + h) * cs.D + d);
          s.k[i] = round_to(cs.src, nd(rng) * mag[(size_t)h]);
          s.v[i] = round_to(cs.src, nd(rng) * mag[(size_t)cs.kvh + h]);
        }
    s.q.resize((size_t)(s.qlen * qH * cs.D));
    for (auto& x : s.q) x = round_to(cs.qd, nd(rng));
  }
}

// Appends positions [t0, t1) of every sequence (one kv_append call for the batch).
static void append_range(const Kern& k, Parallel& par, Pool& pool, const Case& cs, const std::vector<SeqData>& seqs,
                         const std::vector<int64_t>& t0, const std::vector<int64_t>& t1) {
  std::vector<float> kk, vv;
  std::vector<int32_t> slots;
  const size_t row = (size_t)cs.kvh * cs.D;
  for (size_t b = 0; b < seqs.size(); ++b)
    for (int64_t t = t0[b]; t < t1[b]; ++t) {
      kk.insert(kk.end(), seqs[b].k.begin() + (ptrdiff_t)(t * row), seqs[b].k.begin() + (ptrdiff_t)((t + 1) * row));
      vv.insert(vv.end(), seqs[b].v.begin() + (ptrdiff_t)(t * row), seqs[b].v.begin() + (ptrdiff_t)((t + 1) * row));
      slots.push_back(seqs[b].pages[(size_t)(t / cs.bs)] * cs.bs + (int32_t)(t % cs.bs));
    }
  // a skipped token (-1) in the middle
  kk.insert(kk.end(), row, 1e30f);
  vv.insert(vv.end(), row, 1e30f);
  slots.push_back(-1);
  std::vector<uint8_t> kb, vb;
  store_act(cs.src, kb, kk);
  store_act(cs.src, vb, vv);
  KvAppendArgs a;
  a.cache = pool.c;
  a.layer = cs.layer;
  a.tokens = (int64_t)slots.size();
  a.srcDtype = cs.src;
  a.k = kb.data();
  a.v = vb.data();
  a.slots = slots.data();
  kv_append_check(a);
  k.append(a, par);
}

// Checks codes against the quantisation spec and the error bound; returns the dequantised
// contiguous K and V of a sequence.
static void dequant_seq(const Pool& pool, const Case& cs, const SeqData& s, std::vector<float>& kd, std::vector<float>& vd,
                        bool check) {
  const KvCache& c = pool.c;
  kd.resize(s.k.size());
  vd.resize(s.v.size());
  int bad = 0;
  for (int64_t t = 0; t < s.kvLen; ++t) {
    const int64_t blk = s.pages[(size_t)(t / cs.bs)], off = t % cs.bs;
    for (int kv = 0; kv < 2; ++kv)
      for (int h = 0; h < cs.kvh; ++h) {
        const std::vector<float>& src = kv ? s.v : s.k;
        std::vector<float>& dst = kv ? vd : kd;
        const size_t r0 = (size_t)((t * cs.kvh + h) * cs.D);
        float amax = 0;
        for (int d = 0; d < cs.D; ++d) amax = std::max(amax, std::fabs(src[r0 + d]));
        for (int d = 0; d < cs.D; ++d) {
          const float x = src[r0 + d];
          const float y = kv_load(c, cs.layer, blk, kv, h, off, d);
          dst[r0 + d] = y;
          if (!check) continue;
          const int64_t ci = kv_index(c, cs.layer, blk, kv, h, off, d);
          bool ok = true;
          switch (c.dtype) {
            case DType::f32: ok = y == x; break;
            case DType::f16: ok = static_cast<const uint16_t*>(c.data)[ci] == f32_to_f16(x); break;
            case DType::bf16: ok = static_cast<const uint16_t*>(c.data)[ci] == f32_to_bf16(x); break;
            case DType::int8: {
              const float sc = c.scales[kv_scale_index(c, cs.layer, blk, kv, h, off)];
              const float q = sc > 0 ? std::nearbyint(x / sc) : 0.0f;
              ok = sc == amax / 127.0f && static_cast<const int8_t*>(c.data)[ci] == (int8_t)std::max(-127.0f, std::min(127.0f, q)) &&
                   std::fabs(y - x) <= sc * 0.5f * (1 + 0x1p-20f) + 0x1p-23f * std::fabs(x);
              break;
            }
            default: {
              const float sc = c.scales[kv_scale_index(c, cs.layer, blk, kv, h, off)];
              ok = static_cast<const uint8_t*>(c.data)[ci] == f32_to_fp8(c.dtype, x / sc);
              if (std::fabs(x / sc) <= fp8_max(c.dtype)) {
                const double bound = c.dtype == DType::fp8e4m3 ? 0x1p-4 * std::fabs(x) + 0x1p-10 * sc
                                                               : 0x1p-3 * std::fabs(x) + 0x1p-17 * sc;
                ok = ok && std::fabs((double)y - x) <= bound * (1 + 1e-6);
              }
            }
          }
          if (!ok && bad++ < 3)
            CHECK(false, "%s: kv_append %s t=%lld h=%d d=%d: x=%g stored %g", cs.name.c_str(), kv ? "V" : "K",
                  (long long)t, h, d, x, y);
        }
      }
  }
  if (check && bad == 0) CHECK(true, "ok");
}

struct RunOut {
  std::vector<uint8_t> o;
  std::vector<float> lse;
  int32_t nWork = 0, nMerge = 0;
};

static void run_attention(const Kern& k, Parallel& par, const Pool& pool, const Case& cs, const std::vector<SeqData>& seqs,
                          RunOut& out, int splitTokens, int threads) {
  const int qH = cs.kvh * cs.G;
  std::vector<int32_t> qo(1, 0), indptr(1, 0), last, indices;
  std::vector<float> q;
  for (const SeqData& s : seqs) {
    qo.push_back(qo.back() + (int32_t)s.qlen);
    indptr.push_back(indptr.back() + (int32_t)s.pages.size());
    last.push_back(s.kvLen == 0 ? 0 : (int32_t)(s.kvLen - (int64_t)(s.pages.size() - 1) * cs.bs));
    indices.insert(indices.end(), s.pages.begin(), s.pages.end());
    q.insert(q.end(), s.q.begin(), s.q.end());
  }
  AttentionPlanArgs pa;
  pa.batch = (int32_t)seqs.size();
  pa.qoIndptr = qo.data();
  pa.indptr = indptr.data();
  pa.lastPageLen = last.data();
  pa.blockSize = cs.bs;
  pa.qHeads = qH;
  pa.kvHeads = cs.kvh;
  pa.headDim = cs.D;
  pa.threads = threads;
  pa.splitTokens = splitTokens;
  AttentionPlan plan;
  attention_plan(pa, &plan);
  std::vector<uint8_t> qb;
  store_act(cs.qd, qb, q);
  const size_t rows = (size_t)qo.back() * qH;
  out.o.assign(rows * cs.D * (cs.od == DType::f32 ? 4 : 2), 0xCD);
  out.lse.assign(rows, 12345.0f);
  std::vector<float> ws(plan.workspaceBytes / 4 + 16);
  AttentionArgs a;
  a.cache = pool.c;
  a.layer = cs.layer;
  a.qDtype = cs.qd;
  a.q = qb.data();
  a.oDtype = cs.od;
  a.o = out.o.data();
  a.lse = cs.lse ? out.lse.data() : nullptr;
  a.indptr = indptr.data();
  a.indices = indices.data();
  a.smScale = 1.0f / std::sqrt((float)cs.D);
  a.softCap = cs.softCap;
  a.window = cs.window;
  a.workspace = ws.data();
  attention_run_check(plan, a);
  k.run(plan, a, par);
  out.nWork = plan.nWork;
  out.nMerge = plan.nMerge;
  attention_plan_free(&plan);
}

// Compares the rows of sequence b (rows [r0, r0 + qlen*qH) of out) with the reference.
static void compare(const Case& cs, int isa, const char* what, const ref::AttnRefOut& R, const RunOut& out, size_t rowBase,
                    int64_t nSplitsHint) {
  const int qH = cs.kvh * cs.G, D = cs.D;
  const size_t rows = R.lse.size();
  const int TT = D > 128 ? 32 : 64;  // the kernel's tile
  // rounding steps on the path of one score: D/VL FMAs per lane, log2(VL) reduction adds,
  // the q*smScale product and one spare
  const int VLs[3] = {1, 8, 16}, lg[3] = {0, 3, 4};
  const double nDot = (double)D / VLs[isa] + lg[isa] + 2;
  int bad = 0;
  double worst = 0;
  for (size_t r = 0; r < rows; ++r) {
    const double e = 0x1p-23 * nDot * R.dotMag[r] + (cs.softCap > 0 ? 0x1p-20 * cs.softCap : 0.0);
    const double tiles = (double)(R.count[r] + TT - 1) / TT + 1;
    const double acc = (2 * tiles + 40 + 4 * (double)nSplitsHint) * 0x1p-23;
    for (int d = 0; d < D; ++d) {
      const double ref = R.o[r * D + d];
      const double got = load_act(cs.od, out.o.data(), (rowBase + r) * D + d);
      double tol = R.vMax[r] * (2.5 * e + 4e-7 + acc);
      tol += cs.od == DType::f16 ? 0x1p-11 * std::fabs(ref) + 0x1p-24
             : cs.od == DType::bf16 ? 0x1p-8 * std::fabs(ref) + 0x1p-133 : 0x1p-24 * std::fabs(ref);
      const double err = std::fabs(got - ref);
      if (!(err <= tol)) {
        if (bad++ < 3)
          CHECK(false, "%s [%s] %s: row %zu (q %zu head %zu) d %d: got %.9g ref %.9g (tol %.3g)", cs.name.c_str(),
                g_k[isa].name, what, r, r / qH, r % qH, d, got, ref, tol);
      } else if (tol > 0) {
        worst = std::max(worst, err / tol);
        if (getenv("TY_DEBUG_TOL") && err / tol > 0.9) std::printf("near tol o: %s %s r%zu d%d ref %g got %g tol %g\n", cs.name.c_str(), what, r, d, ref, got, tol);
        if (cs.od == DType::f32) g_worst32[isa] = std::max(g_worst32[isa], err / tol);
      }
    }
    if (cs.lse) {
      const double ref = R.lse[r], got = out.lse[rowBase + r];
      if (std::isinf(ref)) {
        if (!(std::isinf(got) && got < 0) && bad++ < 3)
          CHECK(false, "%s [%s] %s: row %zu lse got %g want -inf", cs.name.c_str(), g_k[isa].name, what, r, got);
      } else {
        const double tol = e + 0x1p-22 * std::fabs(ref) + acc + 1e-6;
        const double err = std::fabs(got - ref);
        if (!(err <= tol)) {
          if (bad++ < 3)
            CHECK(false, "%s [%s] %s: row %zu lse got %.9g ref %.9g (tol %.3g)", cs.name.c_str(), g_k[isa].name, what, r,
                  got, ref, tol);
        } else {
          worst = std::max(worst, err / tol);
          if (getenv("TY_DEBUG_TOL") && err / tol > 0.9) std::printf("near tol lse: %s %s r%zu ref %.9g got %.9g tol %g\n", cs.name.c_str(), what, r, ref, got, tol);
        }
      }
    }
  }
  if (bad == 0) CHECK(true, "ok");
  g_worst[isa] = std::max(g_worst[isa], worst);
}

#if defined(TY_AVX512_SKIP)
static std::vector<bool> g_isa_on = {true, true, false};
#else
static std::vector<bool> g_isa_on(3, true);
#endif

static void run_case(const Case& cs, ThreadPool& pool2, uint32_t seed) {
  int64_t pagesNeeded = 0;
  for (int64_t L : cs.kvLens) pagesNeeded += (L + cs.bs - 1) / cs.bs;
  const int blocks = (int)pagesNeeded + 5;
  std::vector<SeqData> seqs;
  make_seqs(cs, blocks, seqs, seed);
  std::vector<ref::AttnRefOut> refs(seqs.size());
  std::vector<uint8_t> firstPool, firstScales;
  SerialParallel serial;
  for (int isa = 0; isa < 3; ++isa) {
    if (!g_isa_on[(size_t)isa] || (g_k[isa].emulated && !cs.emu)) continue;
    const Kern& k = g_k[isa];
    Parallel& par = cs.threads > 1 ? static_cast<Parallel&>(pool2) : serial;
    Pool pool(cs.kv, cs.layers, blocks, cs.kvh, cs.bs, cs.D, seed + 1);
    std::vector<int64_t> t0(seqs.size(), 0), t1;
    for (auto& s : seqs) t1.push_back(s.kvLen);
    append_range(k, par, pool, cs, seqs, t0, t1);
    if (firstPool.empty()) {
      firstPool = pool.data;
      firstScales.assign((const uint8_t*)pool.scales.data(), (const uint8_t*)(pool.scales.data() + pool.scales.size()));
      // reference from the dequantised cache; check the quantisation on the way
      for (size_t b = 0; b < seqs.size(); ++b) {
        std::vector<float> kd, vd;
        dequant_seq(pool, cs, seqs[b], kd, vd, true);
        ref::AttnRefArgs ra;
        ra.qlen = seqs[b].qlen; ra.kvLen = seqs[b].kvLen;
        ra.qHeads = cs.kvh * cs.G; ra.kvHeads = cs.kvh; ra.headDim = cs.D;
        ra.q = seqs[b].q.data(); ra.k = kd.data(); ra.v = vd.data();
        ra.smScale = 1.0f / std::sqrt((float)cs.D);  // the kernel's f32 scale, exactly
        ra.softCap = cs.softCap; ra.window = cs.window;
        ref::attention_ref(ra, refs[b]);
      }
    } else {
      CHECK(pool.data == firstPool && std::memcmp(firstScales.data(), pool.scales.data(), firstScales.size()) == 0,
            "%s [%s]: kv_append differs from the scalar variant", cs.name.c_str(), k.name);
    }
    RunOut out;
    run_attention(k, par, pool, cs, seqs, out, cs.splitTokens, cs.threads);
    size_t rowBase = 0;
    const int qH = cs.kvh * cs.G;
    int64_t maxLen = 1;
    for (auto& s : seqs) maxLen = std::max(maxLen, s.kvLen);
    const int64_t splitsHint = cs.splitTokens > 0 ? maxLen / cs.splitTokens + 1 : 8;
    for (size_t b = 0; b < seqs.size(); ++b) {
      compare(cs, isa, "attention", refs[b], out, rowBase, splitsHint);
      rowBase += (size_t)seqs[b].qlen * qH;
    }
  }
}

// Chunked prefill: sequence 0 is prefilled in chunks (appending KV between them) while
// sequence 1 decodes; every chunk's rows must match the one-shot prefill and the reference.
static void run_chunked(int isa, DType kv, int D, int G, int bs, std::vector<int64_t> cuts, uint32_t seed) {
  const Kern& k = g_k[isa];
  SerialParallel par;
  Case cs;
  cs.name = "chunked " + std::string(dtype_name(kv)) + " D" + std::to_string(D) + " G" + std::to_string(G) + " bs" + std::to_string(bs);
  cs.kv = kv; cs.D = D; cs.G = G; cs.bs = bs; cs.kvh = 2;
  const int64_t L = cuts.back();
  cs.kvLens = {L}; cs.qLens = {L};
  int64_t pagesNeeded = (L + bs - 1) / bs;
  std::vector<SeqData> seqs;
  make_seqs(cs, (int)pagesNeeded + 3, seqs, seed);
  // one shot
  Pool p1(kv, cs.layers, (int)pagesNeeded + 3, cs.kvh, bs, D, seed + 7);
  append_range(k, par, p1, cs, seqs, {0}, {L});
  RunOut one;
  run_attention(k, par, p1, cs, seqs, one, 0, 1);
  std::vector<float> kd, vd;
  dequant_seq(p1, cs, seqs[0], kd, vd, false);
  ref::AttnRefArgs ra;
  ra.qlen = L; ra.kvLen = L; ra.qHeads = cs.kvh * G; ra.kvHeads = cs.kvh; ra.headDim = D;
  ra.q = seqs[0].q.data(); ra.k = kd.data(); ra.v = vd.data(); ra.smScale = 1.0f / std::sqrt((float)D);
  ref::AttnRefOut R;
  ref::attention_ref(ra, R);
  compare(cs, isa, "one-shot", R, one, 0, 0);
  // chunks
  Pool p2(kv, cs.layers, (int)pagesNeeded + 3, cs.kvh, bs, D, seed + 7);
  const int qH = cs.kvh * G;
  const size_t es = cs.od == DType::f32 ? 4 : 2;
  int64_t c0 = 0;
  double maxDiff = 0;
  for (int64_t c1 : cuts) {
    append_range(k, par, p2, cs, seqs, {c0}, {c1});
    std::vector<SeqData> part(1);
    part[0].kvLen = c1;
    part[0].qlen = c1 - c0;
    part[0].pages.assign(seqs[0].pages.begin(), seqs[0].pages.begin() + (c1 + bs - 1) / bs);
    part[0].q.assign(seqs[0].q.begin() + c0 * qH * D, seqs[0].q.begin() + c1 * qH * D);
    RunOut ch;
    run_attention(k, par, p2, cs, part, ch, 0, 1);
    // chunk rows vs the same rows of the one-shot run: same arithmetic up to the tile
    // boundaries, so within twice the tolerance of either against the reference
    ref::AttnRefOut Rc;
    Rc.o.assign(R.o.begin() + c0 * qH * D, R.o.begin() + c1 * qH * D);
    Rc.lse.assign(R.lse.begin() + c0 * qH, R.lse.begin() + c1 * qH);
    Rc.dotMag.assign(R.dotMag.begin() + c0 * qH, R.dotMag.begin() + c1 * qH);
    Rc.vMax.assign(R.vMax.begin() + c0 * qH, R.vMax.begin() + c1 * qH);
    Rc.count.assign(R.count.begin() + c0 * qH, R.count.begin() + c1 * qH);
    compare(cs, isa, "chunk", Rc, ch, 0, 0);
    for (size_t i = 0; i < (size_t)((c1 - c0) * qH * D); ++i)
      maxDiff = std::max(maxDiff, (double)std::fabs(load_act(cs.od, ch.o.data(), i) -
                                                    load_act(cs.od, one.o.data(), (size_t)c0 * qH * D + i)));
    (void)es;
    c0 = c1;
  }
  CHECK(maxDiff < 1e-4, "%s [%s]: chunked vs one-shot differ by %g", cs.name.c_str(), k.name, maxDiff);
}

// The documented error of the vectorised exp and tanh.
static void test_exp_tanh() {
  decltype(&cpu::scalar::attention_exp_probe) ex[3] = {&cpu::scalar::attention_exp_probe, &cpu::avx2::attention_exp_probe,
                                                       &cpu::avx512::attention_exp_probe};
  decltype(&cpu::scalar::attention_tanh_probe) th[3] = {&cpu::scalar::attention_tanh_probe, &cpu::avx2::attention_tanh_probe,
                                                        &cpu::avx512::attention_tanh_probe};
  std::vector<float> x, y;
  for (float v = -87.0f; v <= 88.0f; v += 0.000731f) x.push_back(v);
  const float specials[] = {-INFINITY, -1000.0f, -104.0f, 0.0f, -0.0f};
  x.insert(x.end(), std::begin(specials), std::end(specials));
  y.resize(x.size());
  for (int isa = 0; isa < 3; ++isa) {
    if (!g_isa_on[(size_t)isa]) continue;
    ex[isa](x.data(), y.data(), (int64_t)x.size());
    double worst = 0;
    for (size_t i = 0; i + 5 < x.size(); ++i) worst = std::max(worst, std::fabs(y[i] - std::exp((double)x[i])) / std::exp((double)x[i]));
    bool spec = y[x.size() - 5] == 0 && y[x.size() - 4] == 0 && y[x.size() - 3] == 0 && y[x.size() - 2] == 1 && y[x.size() - 1] == 1;
    CHECK(worst <= 1.5e-7 && spec, "exp [%s]: max rel error %.3g (documented 8.5e-8), specials %s", g_k[isa].name, worst,
          spec ? "ok" : "wrong");
    std::vector<float> tx, ty;
    for (float v = -20.0f; v <= 20.0f; v += 0.0001237f) tx.push_back(v);
    for (float v = 1e-30f; v < 1.0f; v *= 1.37f) { tx.push_back(v); tx.push_back(-v); }
    ty.resize(tx.size());
    th[isa](tx.data(), ty.data(), (int64_t)tx.size());
    double tw = 0;
    for (size_t i = 0; i < tx.size(); ++i) tw = std::max(tw, std::fabs(ty[i] - std::tanh((double)tx[i])) / std::fabs(std::tanh((double)tx[i])));
    CHECK(tw <= 1e-6, "tanh [%s]: max rel error %.3g (documented < 1e-6)", g_k[isa].name, tw);
    if (isa == 1) std::printf("exp max rel error %.3g, tanh %.3g (avx2)\n", worst, tw);
  }
}

// The merge op: against the float64 formula, and merging two reference halves gives the whole.
static void test_merge(int isa) {
  const Kern& k = g_k[isa];
  SerialParallel par;
  std::mt19937 rng(99);
  std::normal_distribution<float> nd(0, 1);
  for (DType dt : {DType::f32, DType::f16, DType::bf16}) {
    const int64_t rows = 7;
    const int heads = 3, D = 80;
    const size_t n = (size_t)rows * heads;
    std::vector<float> oa(n * D), ob(n * D), la(n), lb(n);
    for (auto& x : oa) x = round_to(dt, nd(rng));
    for (auto& x : ob) x = round_to(dt, nd(rng));
    for (size_t i = 0; i < n; ++i) { la[i] = 3 * nd(rng); lb[i] = 3 * nd(rng); }
    la[0] = -INFINITY; lb[1] = -INFINITY; la[2] = lb[2] = -INFINITY; la[3] = lb[3] + 60;
    std::vector<uint8_t> ba, bb, bo;
    store_act(dt, ba, oa);
    store_act(dt, bb, ob);
    bo.assign(ba.size(), 0);
    std::vector<float> lo(n);
    AttentionMergeArgs m;
    m.dtype = dt; m.rows = rows; m.heads = heads; m.headDim = D;
    m.oA = ba.data(); m.lseA = la.data(); m.oB = bb.data(); m.lseB = lb.data(); m.o = bo.data(); m.lse = lo.data();
    attention_merge_check(m);
    k.merge(m, par);
    int bad = 0;
    for (size_t i = 0; i < n; ++i) {
      const double mx = std::max(la[i], lb[i]);
      double wa = 0, wb = 0, lse = -INFINITY;
      if (mx != -INFINITY) { wa = std::exp(la[i] - mx); wb = std::exp(lb[i] - mx); lse = mx + std::log(wa + wb); }
      if (!(lo[i] == lse || std::fabs(lo[i] - lse) <= 1e-6 * (1 + std::fabs(lse)))) ++bad;
      for (int d = 0; d < D; ++d) {
        const double ref = mx == -INFINITY ? 0.0 : (wa * oa[i * D + d] + wb * ob[i * D + d]) / (wa + wb);
        const double got = load_act(dt, bo.data(), i * D + d);
        const double tol = 1e-6 * (std::fabs(oa[i * D + d]) + std::fabs(ob[i * D + d])) +
                           (dt == DType::f16 ? 0x1p-11 : dt == DType::bf16 ? 0x1p-8 : 0x1p-24) * std::fabs(ref) + 1e-7;
        if (!(std::fabs(got - ref) <= tol)) ++bad;
      }
    }
    CHECK(bad == 0, "merge [%s] %s: %d mismatches", k.name, dtype_name(dt), bad);
  }
  // semantic: halves of the reference merge to the whole
  {
    const int D = 64, kvh = 1, qH = 4, L = 300, ql = 3;
    std::vector<float> q((size_t)ql * qH * D), kk((size_t)L * kvh * D), vv(kk.size());
    for (auto& x : q) x = nd(rng);
    for (auto& x : kk) x = nd(rng);
    for (auto& x : vv) x = nd(rng);
    ref::AttnRefArgs ra;
    ra.qlen = ql; ra.kvLen = L; ra.qHeads = qH; ra.kvHeads = kvh; ra.headDim = D; ra.q = q.data(); ra.k = kk.data(); ra.v = vv.data();
    ra.smScale = 0.125;
    ref::AttnRefOut full, A, B;
    ref::attention_ref(ra, full);
    ra.kvEnd = 137; ref::attention_ref(ra, A);
    ra.kvBegin = 137; ra.kvEnd = INT64_MAX; ref::attention_ref(ra, B);
    std::vector<float> oa(A.o.begin(), A.o.end()), ob(B.o.begin(), B.o.end()), la(A.lse.begin(), A.lse.end()),
        lb(B.lse.begin(), B.lse.end()), o(oa.size()), lse(la.size());
    AttentionMergeArgs m;
    m.rows = ql; m.heads = qH; m.headDim = D; m.oA = oa.data(); m.lseA = la.data(); m.oB = ob.data(); m.lseB = lb.data();
    m.o = o.data(); m.lse = lse.data();
    k.merge(m, par);
    double worst = 0;
    for (size_t i = 0; i < o.size(); ++i) worst = std::max(worst, std::fabs(o[i] - full.o[i]));
    for (size_t i = 0; i < lse.size(); ++i) worst = std::max(worst, std::fabs(lse[i] - full.lse[i]) / 8);
    CHECK(worst < 2e-6, "merge [%s]: halves vs whole differ by %g", k.name, worst);
  }
}

// Block copy (copy-on-write) and swap out / in.
static void test_blocks(int isa) {
  const Kern& k = g_k[isa];
  ThreadPool par(2);
  for (DType dt : {DType::f16, DType::int8, DType::fp8e4m3}) {
    Pool p(dt, 3, 10, 2, 8, 32, 5);
    for (size_t i = 0; i < p.scales.size(); ++i) p.scales[i] = (float)i;
    const std::vector<uint8_t> d0 = p.data;
    const std::vector<float> s0 = p.scales;
    std::vector<int32_t> pairs = {2, 7, 2, 8, 4, 1};
    KvCopyBlocksArgs ca;
    ca.cache = p.c; ca.pairs = pairs.data(); ca.n = 3;
    kv_copy_blocks_check(ca);
    k.copy(ca, par);
    const size_t cb = (size_t)kv_block_elems(p.c) * kv_elem_bytes(dt);
    const int64_t sn = kv_block_scale_count(p.c);
    bool ok = true;
    for (int l = 0; l < 3; ++l)
      for (int b = 0; b < 10; ++b) {
        int src = b == 7 || b == 8 ? 2 : b == 1 ? 4 : b;
        ok = ok && std::memcmp(&p.data[(size_t)(l * 10 + b) * cb], &d0[(size_t)(l * 10 + src) * cb], cb) == 0;
        if (sn) ok = ok && std::memcmp(&p.scales[(size_t)((l * 10 + b) * sn)], &s0[(size_t)((l * 10 + src) * sn)], (size_t)sn * 4) == 0;
      }
    CHECK(ok, "copy_blocks [%s] %s", k.name, dtype_name(dt));
    // swap out blocks 3, 5; scramble them; swap back in
    std::vector<int32_t> bl = {5, 3};
    std::vector<uint8_t> host(2 * kv_block_host_bytes(p.c));
    KvSwapArgs sa;
    sa.cache = p.c; sa.blocks = bl.data(); sa.n = 2; sa.host = host.data(); sa.out = true;
    kv_swap_check(sa);
    k.swap(sa, par);
    const std::vector<uint8_t> d1 = p.data;
    const std::vector<float> s1 = p.scales;
    for (int l = 0; l < 3; ++l) {
      std::memset(&p.data[(size_t)(l * 10 + 5) * cb], 0x11, cb);
      std::memset(&p.data[(size_t)(l * 10 + 3) * cb], 0x22, cb);
      if (sn) std::fill(p.scales.begin() + (l * 10 + 3) * sn, p.scales.begin() + (l * 10 + 4) * sn, -1.0f);
    }
    sa.out = false;
    kv_swap_check(sa);
    k.swap(sa, par);
    CHECK(p.data == d1 && p.scales == s1, "swap_blocks [%s] %s: round trip", k.name, dtype_name(dt));
  }
}

template <class F>
static void expect_error(const char* what, const char* arg, F&& f) {
  try {
    f();
    CHECK(false, "%s: no error (expected one naming %s)", what, arg);
  } catch (const Error& e) {
    CHECK(e.arg == arg, "%s: error names '%s', expected '%s' (%s)", what, e.arg.c_str(), arg, e.what());
  }
}

static void test_validation() {
  std::vector<int32_t> qo = {0, 1, 3}, ind = {0, 1, 3}, last = {5, 16};
  AttentionPlanArgs pa;
  pa.batch = 2; pa.qoIndptr = qo.data(); pa.indptr = ind.data(); pa.lastPageLen = last.data();
  pa.blockSize = 16; pa.qHeads = 8; pa.kvHeads = 2; pa.headDim = 128; pa.threads = 2;
  attention_plan_check(pa);
  { auto b = pa; b.qHeads = 7; expect_error("qHeads % kvHeads", "qHeads", [&] { attention_plan_check(b); }); }
  { auto b = pa; b.headDim = 72; expect_error("headDim 72", "headDim", [&] { attention_plan_check(b); }); }
  { std::vector<int32_t> l2 = {0, 16}; auto b = pa; b.lastPageLen = l2.data();
    expect_error("lastPageLen 0", "lastPageLen[0]", [&] { attention_plan_check(b); }); }
  { std::vector<int32_t> q2 = {0, 6, 7}; auto b = pa; b.qoIndptr = q2.data();
    expect_error("qlen > kvLen", "qoIndptr[1]", [&] { attention_plan_check(b); }); }
  Pool p(DType::f16, 2, 4, 2, 16, 128, 1);
  AttentionPlan plan;
  attention_plan(pa, &plan);
  std::vector<float> q(3 * 8 * 128), o(q.size());
  std::vector<int32_t> idx = {0, 1, 9};
  AttentionArgs a;
  a.cache = p.c; a.layer = 0; a.q = q.data(); a.o = o.data(); a.indptr = ind.data(); a.indices = idx.data();
  std::vector<float> ws(plan.workspaceBytes / 4 + 1);
  a.workspace = ws.data();
  expect_error("page out of range", "indices[2]", [&] { attention_run_check(plan, a); });
  idx[2] = 3;
  attention_run_check(plan, a);
  { auto b = a; b.layer = 2; expect_error("layer", "layer", [&] { attention_run_check(plan, b); }); }
  { auto b = a; b.softCap = -1; expect_error("softCap", "softCap", [&] { attention_run_check(plan, b); }); }
  { auto b = a; b.cache.blockSize = 8; expect_error("blockSize", "cache.blockSize", [&] { attention_run_check(plan, b); }); }
  attention_plan_free(&plan);
  KvAppendArgs ka;
  ka.cache = p.c; ka.tokens = 1; std::vector<int32_t> sl = {64};
  ka.k = q.data(); ka.v = q.data(); ka.slots = sl.data();
  expect_error("slot out of range", "slots[0]", [&] { kv_append_check(ka); });
  Pool p8(DType::fp8e4m3, 1, 4, 2, 16, 64, 1);
  p8.scales[1] = 0;
  ka.cache = p8.c; sl[0] = 3;
  expect_error("fp8 scale 0", "cache.scales[layer 0][0][1]", [&] { kv_append_check(ka); });
  std::vector<int32_t> pairs = {1, 2, 2, 3};
  KvCopyBlocksArgs ca; ca.cache = p.c; ca.pairs = pairs.data(); ca.n = 2;
  expect_error("copy dst is a src", "pairs[0][1]", [&] { kv_copy_blocks_check(ca); });
  { Pool pi(DType::int8, 1, 4, 2, 16, 64, 1); KvCache c = pi.c; c.scales = nullptr;
    expect_error("int8 without scales", "cache.scales", [&] { kv_cache_check(c); }); }
}

// ---- bench ---------------------------------------------------------------------------------
static double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

static void bench(int threads, int qH) {
  const int D = 128, kvh = 8, bs = 16;
  ThreadPool par(threads);
  const Kern& k = g_k[1];
  std::printf("\ndecode bench (avx2, %d threads): %d q heads, 8 KV heads (GQA %d), D 128, f16 KV, block 16, one layer\n",
              threads, qH, qH / kvh);
  std::printf("%-8s %-6s %-9s %10s %10s %9s %10s\n", "context", "batch", "pages", "median ms", "KV GB/s", "vs 20.7", "plan work");
  for (int ctx : {512, 4096, 32768})
    for (int batch : {1, 8}) {
      if (ctx == 512 && batch == 8) continue;  // 512 x 1: 2 MB, cache-resident (compute rate)
      const int pagesPer = ctx / bs, blocks = pagesPer * batch;
      KvCache c;
      c.dtype = DType::f16; c.layers = 1; c.blocks = blocks; c.kvHeads = kvh; c.blockSize = bs; c.headDim = D;
      std::vector<uint16_t> data(kv_cache_data_bytes(c) / 2);
      uint32_t x = 12345;
      for (auto& h : data) { x = x * 1664525u + 1013904223u; h = f32_to_f16(((int)(x >> 16) - 32768) * (1.0f / 16384)); }
      c.data = data.data();
      {  // the machine's read bandwidth right now: a plain streaming read of the same bytes
        const uint64_t* w = reinterpret_cast<const uint64_t*>(data.data());
        const int64_t nw = (int64_t)(data.size() / 4);
        std::vector<double> t;
        std::vector<uint64_t> sink(threads * 8);
        for (int r = 0; r < 5; ++r) {
          const double t0 = now();
          par.for_each(threads * 8, [&](int64_t task, int) {
            const int64_t b = nw * task / (threads * 8), e = nw * (task + 1) / (threads * 8);
            uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
            for (int64_t i = b; i + 4 <= e; i += 4) { a0 += w[i]; a1 += w[i + 1]; a2 += w[i + 2]; a3 += w[i + 3]; }
            sink[(size_t)task] = a0 + a1 + a2 + a3;
          });
          t.push_back(now() - t0);
        }
        std::sort(t.begin(), t.end());
        std::printf("  (stream read of the %.0f MB pool: %.2f GB/s)\n", nw * 8 / 1e6, nw * 8 / t[2] / 1e9);
      }
      for (int shuffled = 0; shuffled < 2; ++shuffled) {
        std::vector<int32_t> perm((size_t)blocks);
        std::iota(perm.begin(), perm.end(), 0);
        if (shuffled) std::shuffle(perm.begin(), perm.end(), std::mt19937(3));
        std::vector<int32_t> qo, ind, last(batch, bs);
        for (int b = 0; b <= batch; ++b) { qo.push_back(b); ind.push_back(b * pagesPer); }
        AttentionPlanArgs pa;
        pa.batch = batch; pa.qoIndptr = qo.data(); pa.indptr = ind.data(); pa.lastPageLen = last.data();
        pa.blockSize = bs; pa.qHeads = qH; pa.kvHeads = kvh; pa.headDim = D; pa.threads = threads;
        AttentionPlan plan;
        attention_plan(pa, &plan);
        std::vector<float> q((size_t)batch * qH * D, 0.01f), o(q.size()), lse((size_t)batch * qH), ws(plan.workspaceBytes / 4 + 1);
        AttentionArgs a;
        a.cache = c; a.q = q.data(); a.o = o.data(); a.lse = lse.data(); a.indptr = ind.data(); a.indices = perm.data();
        a.smScale = 0.088f; a.workspace = ws.data();
        attention_run_check(plan, a);
        const double bytes = (double)batch * ctx * kvh * D * 2 * 2;
        const int reps = bytes > 5e8 ? 7 : bytes > 5e7 ? 15 : 41;
        std::vector<double> t;
        k.run(plan, a, par);
        for (int r = 0; r < reps; ++r) { const double t0 = now(); k.run(plan, a, par); t.push_back(now() - t0); }
        std::sort(t.begin(), t.end());
        const double med = t[t.size() / 2];
        std::printf("%-8d %-6d %-9s %10.3f %10.2f %8.0f%% %5d/%-4d\n", ctx, batch, shuffled ? "shuffled" : "identity",
                    med * 1e3, bytes / med / 1e9, 100 * bytes / med / 1e9 / 20.7, plan.nWork, plan.nMerge);
        attention_plan_free(&plan);
      }
    }
}

int main(int argc, char** argv) {
  bool doBench = false;
  int threads = 2;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--quick")) g_quick = true;
    else if (!std::strcmp(argv[i], "--bench")) doBench = true;
    else if (!std::strcmp(argv[i], "--threads") && i + 1 < argc) threads = std::atoi(argv[++i]);
  }
  if (doBench) {
    bench(threads, 32);  // Llama-3-8B layer shape
    bench(threads, 8);   // MHA: 2 FMAs per KV element, memory-bound
    return 0;
  }
  const double t0 = now();
  std::printf("attention_test: avx512 %s\n", kAvx512Emu ? "under SIMDe emulation" : "native");
  test_validation();
  test_exp_tanh();
  ThreadPool pool2(2);
  std::vector<Case> cases;
  const DType kvTypes[] = {DType::f16, DType::f32, DType::bf16, DType::fp8e4m3, DType::int8, DType::fp8e5m2};
  // GQA ratios per head dim (every ratio 1..16 at D 64 and 128)
  struct HG { int D; std::vector<int> G; };
  const std::vector<HG> hg = {{64, {1, 2, 4, 8, 16}}, {80, {1, 4}}, {96, {2, 8}}, {128, {1, 2, 4, 8, 16}}, {256, {1, 4}}};
  int ci = 0;
  for (const HG& h : hg)
    for (int G : h.G) {
      Case c;
      c.D = h.D; c.G = G; c.kvh = G >= 8 ? 1 : 2;
      c.kv = kvTypes[ci % 6];
      static const int bsz[] = {16, 7, 32, 1, 16, 13};
      static const DType qds[] = {DType::f32, DType::f16, DType::bf16}, ods[] = {DType::f32, DType::bf16, DType::f16};
      static const DType srcs[] = {DType::f32, DType::f16, DType::f32, DType::bf16};
      c.bs = bsz[ci % 6];
      c.qd = qds[ci % 3];
      c.od = ods[(ci / 3) % 3];
      c.src = srcs[ci % 4];
      // decode, partial-page decode, short prefill, chunk-like tail prefill, empty query
      c.kvLens = {1, 45, 70, 200, 33};
      c.qLens = {1, 1, 70, 23, 0};
      c.threads = ci % 2 ? 2 : 1;
      c.name = "D" + std::to_string(c.D) + " G" + std::to_string(G) + " kv " + dtype_name(c.kv) + " bs" + std::to_string(c.bs);
      cases.push_back(c);
      ++ci;
    }
  // every KV dtype at one shape, with soft-cap and window variants
  for (DType kv : kvTypes) {
    Case c;
    c.kv = kv; c.D = 128; c.G = 4; c.kvh = 2; c.bs = 16;
    c.kvLens = {300, 64, 1}; c.qLens = {1, 64, 1};
    c.name = std::string("dtype ") + dtype_name(kv);
    cases.push_back(c);
    Case w = c;
    w.window = 37; w.softCap = 30.0f; w.threads = 2; w.name += " window37 softcap30";
    w.kvLens = {300, 100, 5}; w.qLens = {4, 100, 5};
    cases.push_back(w);
  }
  // ragged batch with lengths 1 .. 2000 (decode for the long ones), split-KV automatic (2 threads)
  {
    Case c;
    c.kv = DType::f16; c.D = 128; c.G = 4; c.kvh = 2; c.bs = 16; c.threads = 2;
    c.kvLens = {1, 2, 17, 300, 999, 1500, 2000, 1234, 16, 640};
    c.qLens = {1, 2, 1, 1, 3, 1, 1, 40, 16, 1};
    c.name = "ragged 1..2000";
    c.emu = !g_quick;
    cases.push_back(c);
    Case s = c;
    s.name = "ragged 1..2000 split 100";
    s.splitTokens = 100;
    s.kv = DType::int8;
    cases.push_back(s);
    Case s2 = c;
    s2.name = "split 23 window 300 softcap";
    s2.kvLens = {2000, 777, 5}; s2.qLens = {2, 1, 5};
    s2.splitTokens = 23; s2.window = 300; s2.softCap = 50; s2.G = 8; s2.kvh = 1; s2.kv = DType::fp8e4m3;
    s2.emu = true;
    cases.push_back(s2);
    Case s3 = c;
    s3.name = "decode MQA 2000 auto split";
    s3.kvLens = {2000}; s3.qLens = {1}; s3.kvh = 1; s3.G = 16; s3.D = 64; s3.kv = DType::bf16;
    cases.push_back(s3);
    Case s4 = c;
    s4.name = "identity pages";
    s4.identityPages = true; s4.kvLens = {500, 40}; s4.qLens = {1, 40};
    cases.push_back(s4);
  }
  uint32_t seed = 1000;
  for (const Case& c : cases) run_case(c, pool2, seed++);
  for (int isa = 0; isa < 3; ++isa) {
    run_chunked(isa, isa == 1 ? DType::f16 : DType::int8, 128, 4, 16, {137, 300, 500}, 77);
    run_chunked(isa, DType::bf16, 80, 1, 7, {1, 2, 99, 250}, 78);
    if (!g_quick || !g_k[isa].emulated) run_chunked(isa, DType::fp8e4m3, 256, 2, 32, {64, 65, 200}, 79);
    test_merge(isa);
    test_blocks(isa);
  }
  std::printf("worst err/allowed: scalar %.3f, avx2 %.3f, avx512%s %.3f; f32 outputs only: %.3f, %.3f, %.3f\n",
              g_worst[0], g_worst[1], kAvx512Emu ? "(emu)" : "", g_worst[2], g_worst32[0], g_worst32[1], g_worst32[2]);
  std::printf("attention_test: %d passed, %d failed (%.1f s)\n", g_pass, g_fail, now() - t0);
  return g_fail ? 1 : 0;
}
