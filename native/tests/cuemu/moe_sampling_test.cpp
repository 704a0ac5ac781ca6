// Tests for the MoE data-movement kernels (native/cuda/kernels/moe.cuh) and the sampling kernels
// (native/cuda/kernels/sampling.cuh), run on the CPU under cuemu in the forward and reverse
// schedule orders:
//   - moe_permute against a transcription of lib/ops/quant.ts expertPermutation (exact: offsets,
//     rows, slots), odd token counts, k = 1, 2, 8, experts with zero tokens, dropped assignments,
//     out-of-range ids next to PROT_NONE guard pages (no out-of-bounds write, error slot);
//   - moe_gather bit-exact (or one rounding), moe_combine bit-exact against a transcription of
//     native/cpu/qops.cpp op_moe_combine's loop and within tolerance of a double reference;
//     permute -> gather -> expert -> combine end to end;
//   - sampling against a double-precision reference written from docs/sampling.md: argmax with
//     ties / NaN / +-inf, processed logprobs, top-k (ties at the cut, k >= vocab, k > 1024),
//     top-p (1, tiny), min-p, -inf masks, vocab 1 / 31 / 1000 / 32003, f32/f16/bf16, aligned and
//     unaligned rows, and many u per row, each token checked against the reference inverse CDF
//     (exact except within 1e-5 of a CDF boundary or of the top-p cut);
//   - 72 golden draws from the real TS sampler (same u -> same token, logprob within 2e-5);
//   - logit_adjust (bias + penalties) against the JS arithmetic;
//   - deliberately broken variants (missing barriers, bad shuffle masks): each must be caught;
//   - launch refusals (nothing written).
// Build and run: native/tests/cuemu/moe_sampling_run.sh
#include "check.h"
#include "../../cuda/kernels/moe.cuh"
#include "../../cuda/kernels/sampling.cuh"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

using namespace ty;
namespace tc = ty::cuda;

static const char* dn(DType t) { return dtype_name(t); }
static std::mt19937 gRng(20240611);
static bool gVerbose = false;
static long gDraws = 0, gDrawsTol = 0;  // draws checked; of those, how many had more than one acceptable token
static double gMaxDu = 0;               // the largest distance of u from the returned token's reference CDF interval

static double urand(double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(gRng); }
static int irand(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(gRng); }  // [lo, hi]

// ---- typed host buffers ---------------------------------------------------------------------------
struct Buf {
  DType t;
  size_t n, shift;
  std::vector<unsigned char> raw;
  Buf(DType t_, size_t n_, size_t shift_ = 0) : t(t_), n(n_), shift(shift_), raw((n_ + shift_) * esize() + 16, 0) {}
  size_t esize() const { return t == DType::f32 ? 4 : 2; }
  unsigned char* base() {
    uintptr_t p = reinterpret_cast<uintptr_t>(raw.data());
    return raw.data() + ((16 - (p & 15)) & 15) + shift * esize();
  }
  const unsigned char* base() const { return const_cast<Buf*>(this)->base(); }
  void* p() { return base(); }
  uint32_t bits(size_t i) const {
    if (t == DType::f32) {
      uint32_t u;
      std::memcpy(&u, base() + 4 * i, 4);
      return u;
    }
    uint16_t h;
    std::memcpy(&h, base() + 2 * i, 2);
    return h;
  }
  void set_bits(size_t i, uint32_t b) {
    if (t == DType::f32) std::memcpy(base() + 4 * i, &b, 4);
    else {
      const uint16_t h = uint16_t(b);
      std::memcpy(base() + 2 * i, &h, 2);
    }
  }
  float getf(size_t i) const {
    const uint32_t b = bits(i);
    return t == DType::f32 ? bits_f32(b) : t == DType::f16 ? f16_to_f32(uint16_t(b)) : bf16_to_f32(uint16_t(b));
  }
  void set(size_t i, double v) { set_bits(i, encode(t, float(v))); }
  static uint32_t encode(DType t, float f) { return t == DType::f32 ? f32_bits(f) : t == DType::f16 ? f32_to_f16(f) : f32_to_bf16(f); }
};

// `bytes` placed so that the first byte past the end (and the page before the start) is PROT_NONE.
struct Guarded {
  unsigned char* map = nullptr;
  size_t len = 0;
  void* p = nullptr;
  explicit Guarded(size_t bytes) {
    const size_t page = size_t(sysconf(_SC_PAGESIZE)), pages = (bytes + page - 1) / page + (bytes == 0);
    len = (pages + 2) * page;
    map = static_cast<unsigned char*>(mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    if (map == MAP_FAILED) std::abort();
    mprotect(map, page, PROT_NONE);
    mprotect(map + (pages + 1) * page, page, PROT_NONE);
    p = map + (pages + 1) * page - bytes;
  }
  ~Guarded() { munmap(map, len); }
  template <class T>
  T* as() {
    return static_cast<T*>(p);
  }
};

static void expect_ok(const tc::Status& st, const std::string& what) { CHECK(st.ok, "%s: %s", what.c_str(), st.message.c_str()); }

static const DType kActs[] = {DType::f32, DType::f16, DType::bf16};

// ==== MoE ===========================================================================================

// lib/ops/quant.ts expertPermutation, transcribed (a stable counting sort), with the slot of a
// dropped (or, here, out-of-range) assignment = dropped_slot.
struct Perm {
  std::vector<int32_t> rows, offsets, slot;
};
static Perm ref_permutation(const std::vector<int32_t>& experts, int k, int E, int32_t dropped_slot) {
  Perm r;
  r.offsets.assign(E + 1, 0);
  int kept = 0;
  for (int32_t e : experts)
    if (e >= 0 && e < E) {
      r.offsets[e + 1]++;
      kept++;
    }
  for (int e = 0; e < E; ++e) r.offsets[e + 1] += r.offsets[e];
  std::vector<int32_t> next(r.offsets.begin(), r.offsets.begin() + E);
  r.rows.assign(kept, 0);
  r.slot.assign(experts.size(), dropped_slot);
  for (size_t i = 0; i < experts.size(); ++i) {
    const int32_t e = experts[i];
    if (e < 0 || e >= E) continue;
    const int p = next[e]++;
    r.rows[p] = int32_t(i / k);
    r.slot[i] = p;
  }
  return r;
}

// Top-k style ids: k distinct experts per token (as routing policies produce), some dropped.
static std::vector<int32_t> make_ids(int T, int k, int E, double drop, int skip_mod = 0) {
  std::vector<int32_t> ids(size_t(T) * k);
  for (int t = 0; t < T; ++t) {
    std::vector<int32_t> pool;
    for (int e = 0; e < E; ++e)
      if (!skip_mod || e % skip_mod != 1) pool.push_back(e);  // experts e % skip_mod == 1 get no token
    std::shuffle(pool.begin(), pool.end(), gRng);
    for (int j = 0; j < k; ++j) ids[size_t(t) * k + j] = j < int(pool.size()) && urand(0, 1) >= drop ? pool[j] : -1;
  }
  return ids;
}

static bool run_permute(const std::vector<int32_t>& ids, int T, int k, int E, int32_t dropped_slot, const char* what,
                        const std::function<tc::Status(const tc::MoePermuteArgs&, unsigned long long*)>& fn = nullptr,
                        bool report = true) {
  const size_t n = size_t(T) * k;
  std::vector<int32_t> offsets(E + 1, -7), rows(n + 1, -7), slot(n + 1, -7);
  tc::MoePermuteArgs a{T, k, E, ids.data(), offsets.data(), rows.data(), slot.data(), dropped_slot};
  unsigned long long err = tc::kMoeNoError;
  const tc::Status st = fn ? fn(a, &err) : tc::moe_permute(a, &err);
  if (report) expect_ok(st, what);
  const Perm r = ref_permutation(ids, k, E, dropped_slot);
  bool ok = st.ok && err == tc::kMoeNoError;
  ok = ok && std::equal(r.offsets.begin(), r.offsets.end(), offsets.begin());
  ok = ok && std::equal(r.rows.begin(), r.rows.end(), rows.begin());
  ok = ok && std::equal(r.slot.begin(), r.slot.end(), slot.begin());
  // Past R and past n: untouched.
  bool tail = rows[n] == -7 && slot[n] == -7;
  for (size_t p = r.rows.size(); p < n; ++p) tail = tail && rows[p] == -7;
  ok = ok && tail;
  if (report)
    CHECK(ok, "%s: T=%d k=%d E=%d: permutation differs from expertPermutation (err=%llx, tail untouched=%d)", what, T, k, E, err, tail);
  return ok;
}

static void test_moe_permute() {
  struct Case {
    int T, k, E;
    double drop;
    int skip_mod;
  };
  const Case cases[] = {{1, 1, 1, 0.0, 0},  {7, 1, 4, 0.0, 0},   {13, 2, 8, 0.2, 0},   {33, 8, 16, 0.1, 3}, {5, 8, 64, 0.0, 0},
                        {257, 2, 3, 0.3, 0}, {301, 8, 32, 0.05, 4}, {129, 1, 200, 0.0, 0}, {0, 2, 8, 0.0, 0},  {3, 8, 8, 1.0, 0},
                        {40, 4, 1100, 0.1, 0}};
  for (const Case& c : cases)
    for (int32_t ds : {tc::kMoeSlotDropped, 0}) {
      const auto ids = make_ids(c.T, c.k, c.E, c.drop, c.skip_mod);
      char w[96];
      std::snprintf(w, sizeof w, "moePermute T=%d k=%d E=%d drop=%.2f dropped_slot=%d", c.T, c.k, c.E, c.drop, ds);
      run_permute(ids, c.T, c.k, c.E, ds, w);
    }
  // Every assignment to one expert (a histogram with all counts in one bin), repeated experts in
  // a token (the permutation does not require distinct ids).
  {
    std::vector<int32_t> ids(37 * 2, 5);
    run_permute(ids, 37, 2, 9, -1, "moePermute all to expert 5");
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = int32_t(i % 3);
    run_permute(ids, 37, 2, 3, -1, "moePermute repeated experts");
  }
  // Out-of-range ids, with every output next to a PROT_NONE page: treated as dropped, nothing
  // written out of bounds, the slot names the first one.
  {
    const int T = 9, k = 2, E = 4, n = T * k;
    std::vector<int32_t> host = make_ids(T, k, E, 0.2);
    host[3] = E;
    host[7] = -2;
    host[8] = 0x7fffffff;
    host[12] = int32_t(0x80000000u);
    Guarded gi(n * 4), go((E + 1) * 4), gr(n * 4), gs(n * 4);
    std::memcpy(gi.p, host.data(), n * 4);
    tc::MoePermuteArgs a{T, k, E, gi.as<int32_t>(), go.as<int32_t>(), gr.as<int32_t>(), gs.as<int32_t>(), -1};
    unsigned long long err = tc::kMoeNoError;
    expect_ok(tc::moe_permute(a, &err), "moePermute bad ids");
    int64_t idx = -1;
    int32_t val = 0;
    CHECK(tc::moe_error(err, &idx, &val) && idx == 3 && val == E, "moePermute bad ids: expected assignment 3 (id %d) in the slot, got %lld (%d)",
          E, (long long)idx, val);
    const Perm r = ref_permutation(host, k, E, -1);
    bool ok = std::equal(r.offsets.begin(), r.offsets.end(), go.as<int32_t>()) && std::equal(r.rows.begin(), r.rows.end(), gr.as<int32_t>()) &&
              std::equal(r.slot.begin(), r.slot.end(), gs.as<int32_t>());
    CHECK(ok, "moePermute bad ids: the valid assignments' permutation differs");
    if (gVerbose) std::printf("  moePermute: ids {%d, -2, INT_MAX, INT_MIN} next to guard pages -> no fault, slot names assignment %lld\n", E, (long long)idx);
  }
}

// x [T, ldx] -> out [cap, ldo] through rows / count.
static void test_moe_gather() {
  for (DType ti : kActs)
    for (DType to : kActs)
      for (int dim : {37, 64}) {
        const int T = 11, cap = 19, R = 15, ldx = dim + (dim == 37 ? 3 : 8), ldo = dim + (dim == 37 ? 0 : 8);
        Buf x(ti, size_t(T) * ldx), out(to, size_t(cap) * ldo);
        for (size_t i = 0; i < x.n; ++i) x.set(i, urand(-5, 5));
        for (size_t i = 0; i < out.n; ++i) out.set(i, 777.0);
        std::vector<int32_t> rows(cap);
        for (int p = 0; p < cap; ++p) rows[p] = irand(0, T - 1);
        rows[4] = T;  // bad: zeroed and reported
        rows[9] = -1;
        rows[R] = 1 << 30;  // past the valid count: never read
        int32_t count = R;
        tc::MoeGatherArgs a{ti, to, T, dim, x.p(), ldx, rows.data(), cap, &count, out.p(), ldo};
        unsigned long long err = tc::kMoeNoError;
        expect_ok(tc::moe_gather(a, &err), "moeGather");
        int64_t idx = -1;
        int32_t val = 0;
        CHECK(tc::moe_error(err, &idx, &val) && idx == 4 && val == T, "moeGather %s->%s: slot should name position 4 (row %d)", dn(ti), dn(to), T);
        int wrong = 0;
        for (int p = 0; p < cap; ++p)
          for (int j = 0; j < ldo; ++j) {
            uint32_t want;
            if (p >= R || j >= dim) want = Buf::encode(to, 777.0f);
            else if (rows[p] < 0 || rows[p] >= T) want = Buf::encode(to, 0.0f);
            else {
              const uint32_t src = x.bits(size_t(rows[p]) * ldx + j);
              want = ti == to ? src : Buf::encode(to, x.getf(size_t(rows[p]) * ldx + j));
            }
            wrong += out.bits(size_t(p) * ldo + j) != want;
          }
        CHECK(wrong == 0, "moeGather %s->%s dim=%d: %d elements differ (bit-exact expected)", dn(ti), dn(to), dim, wrong);
      }
}

// native/cpu/qops.cpp op_moe_combine's loop, transcribed (the CPU backend's float arithmetic).
// volatile keeps the compiler from contracting the product and the sum.
static void cpu_combine(const Buf& y, int64_t n, const std::vector<int32_t>& slot, const std::vector<float>& w, int64_t k, bool accumulate,
                        std::vector<float>& out, int64_t T) {
  for (int64_t t = 0; t < T; ++t) {
    float* orow = out.data() + t * n;
    if (!accumulate)
      for (int64_t j = 0; j < n; ++j) orow[j] = 0.0f;
    for (int64_t j = 0; j < k; ++j) {
      const float wt = w[t * k + j];
      const int64_t r = slot[t * k + j];
      for (int64_t c = 0; c < n; ++c) {
        volatile float prod = wt * y.getf(size_t(r * n + c));
        orow[c] += prod;
      }
    }
  }
}

static void test_moe_combine() {
  struct Case {
    int T, k, n, E;
    bool acc;
  };
  const Case cases[] = {{1, 1, 37, 4, false}, {7, 2, 64, 8, true}, {13, 8, 37, 16, true}, {5, 8, 1000, 64, false}, {9, 2, 2048, 3, true}};
  for (DType yt : kActs)
    for (const Case& c : cases)
      for (int conv = 0; conv < 2; ++conv) {  // 0: dropped slot -1; 1: expertPermutation's slot 0, weight 0
        const auto ids = make_ids(c.T, c.k, c.E, 0.15);
        const Perm perm = ref_permutation(ids, c.k, c.E, conv ? 0 : -1);
        const int R = std::max<int>(1, int(perm.rows.size()));
        Buf y(yt, size_t(R) * c.n);
        for (size_t i = 0; i < y.n; ++i) y.set(i, urand(-3, 3));
        std::vector<float> w(size_t(c.T) * c.k);
        for (size_t i = 0; i < w.size(); ++i) w[i] = ids[i] < 0 ? 0.0f : float(urand(0, 1));
        std::vector<float> out(size_t(c.T) * c.n), init(out.size());
        for (auto& v : init) v = float(urand(-2, 2));
        out = init;
        tc::MoeCombineArgs a{yt, c.T, c.k, c.n, R, y.p(), perm.slot.data(), w.data(), c.acc, out.data()};
        unsigned long long err = tc::kMoeNoError;
        expect_ok(tc::moe_combine(a, &err), "moeCombine");
        CHECK(err == tc::kMoeNoError, "moeCombine: unexpected error slot %llx", err);
        // Bit-exact against the CPU loop (slot -1 is what the CPU would reject: there the CPU
        // reference runs on slot 0 / weight 0, which adds +-0 only).
        std::vector<float> cpu = init;
        std::vector<int32_t> cslot = perm.slot;
        for (auto& s : cslot) s = s < 0 ? 0 : s;
        cpu_combine(y, c.n, cslot, w, c.k, c.acc, cpu, c.T);
        int diff = 0;
        double maxerr = 0;
        for (size_t i = 0; i < out.size(); ++i) {
          diff += f32_bits(out[i]) != f32_bits(cpu[i]) && !(out[i] == 0.0f && cpu[i] == 0.0f);
          // double reference: |error| <= (k + 1) * 2^-24 * sum |terms|
          const int64_t t = int64_t(i) / c.n, col = int64_t(i) % c.n;
          double ref = c.acc ? double(init[i]) : 0.0, mag = std::fabs(ref);
          for (int j = 0; j < c.k; ++j) {
            const int32_t s = perm.slot[t * c.k + j];
            if (ids[t * c.k + j] < 0) continue;
            const double term = double(w[t * c.k + j]) * double(y.getf(size_t(s) * c.n + col));
            ref += term;
            mag += std::fabs(term);
          }
          const double e = std::fabs(double(out[i]) - ref);
          if (!(e <= (c.k + 2) * std::ldexp(1.0, -24) * mag)) maxerr = std::max(maxerr, e + 1.0);
        }
        CHECK(diff == 0, "moeCombine %s T=%d k=%d n=%d acc=%d conv=%d: %d outputs differ from the CPU loop", dn(yt), c.T, c.k, c.n, c.acc, conv,
              diff);
        CHECK(maxerr == 0, "moeCombine %s T=%d k=%d n=%d: outside the double reference's tolerance", dn(yt), c.T, c.k, c.n);
      }
  // Bad slots next to a guard page after y: reported, add nothing, no out-of-bounds read.
  {
    const int T = 3, k = 2, n = 16, R = 4;
    Guarded gy(size_t(R) * n * 4);
    float* y = gy.as<float>();
    for (int i = 0; i < R * n; ++i) y[i] = float(i % 7) - 3.0f;
    std::vector<int32_t> slot = {0, R, 1, -1, -5, 3};
    std::vector<float> w = {0.5f, 0.25f, 1.0f, 2.0f, 3.0f, 0.75f};
    std::vector<float> out(T * n, 9.0f);
    tc::MoeCombineArgs a{DType::f32, T, k, n, R, y, slot.data(), w.data(), true, out.data()};
    unsigned long long err = tc::kMoeNoError;
    expect_ok(tc::moe_combine(a, &err), "moeCombine bad slots");
    int64_t idx = -1;
    int32_t val = 0;
    CHECK(tc::moe_error(err, &idx, &val) && idx == 1 && val == R, "moeCombine bad slots: slot should name assignment 1 (slot %d), got %lld (%d)",
          R, (long long)idx, val);
    int wrong = 0;
    for (int t = 0; t < T; ++t)
      for (int c = 0; c < n; ++c) {
        float o = 9.0f;
        for (int j = 0; j < k; ++j) {
          const int32_t s = slot[t * k + j];
          if (s < 0 || s >= R) continue;
          volatile float prod = w[t * k + j] * y[s * n + c];
          o += prod;
        }
        wrong += f32_bits(o) != f32_bits(out[t * n + c]);
      }
    CHECK(wrong == 0, "moeCombine bad slots: %d outputs wrong (bad assignments must add nothing)", wrong);
  }
}

// permute -> gather -> a per-expert transform (here y = (e + 1) * x, on the host, standing in
// for the grouped GEMMs) -> combine into a residual; against sum_j w (e_j + 1) x[t] in double.
static void test_moe_end_to_end() {
  for (DType at : {DType::f32, DType::bf16}) {
    const int T = 17, k = 2, E = 6, dim = 40;
    const auto ids = make_ids(T, k, E, 0.1, 4);
    std::vector<int32_t> offsets(E + 1), rows(T * k), slot(T * k);
    tc::MoePermuteArgs pa{T, k, E, ids.data(), offsets.data(), rows.data(), slot.data(), -1};
    unsigned long long err = tc::kMoeNoError;
    expect_ok(tc::moe_permute(pa, &err), "e2e permute");
    Buf x(at, size_t(T) * dim), xs(at, size_t(T) * k * dim);
    for (size_t i = 0; i < x.n; ++i) x.set(i, urand(-1, 1));
    tc::MoeGatherArgs ga{at, at, T, dim, x.p(), dim, rows.data(), T * k, offsets.data() + E, xs.p(), dim};
    expect_ok(tc::moe_gather(ga, &err), "e2e gather");
    const int R = offsets[E];
    CHECK(R >= 0 && R <= T * k, "e2e: offsets[E] = %d", R);
    if (!(R >= 0 && R <= T * k)) return;
    Buf y(DType::f32, size_t(T) * k * dim);
    for (int e = 0; e < E; ++e)
      for (int p = std::max(0, offsets[e]); p < std::min(R, offsets[e + 1]); ++p)
        for (int j = 0; j < dim; ++j) y.set(size_t(p) * dim + j, double(xs.getf(size_t(p) * dim + j)) * (e + 1));
    std::vector<float> w(T * k), out(T * dim, 1.0f);
    for (int i = 0; i < T * k; ++i) w[i] = ids[i] < 0 ? 0.0f : float(urand(0, 1));
    tc::MoeCombineArgs ca{DType::f32, T, k, dim, std::max(R, 1), y.p(), slot.data(), w.data(), true, out.data()};
    expect_ok(tc::moe_combine(ca, &err), "e2e combine");
    CHECK(err == tc::kMoeNoError, "e2e: error slot %llx", err);
    int bad = 0;
    for (int t = 0; t < T; ++t)
      for (int j = 0; j < dim; ++j) {
        double ref = 1.0, mag = 1.0;
        for (int q = 0; q < k; ++q)
          if (ids[t * k + q] >= 0) {
            const double term = double(w[t * k + q]) * (ids[t * k + q] + 1) * double(x.getf(size_t(t) * dim + j));
            ref += term;
            mag += std::fabs(term);
          }
        bad += !(std::fabs(double(out[t * dim + j]) - ref) <= 4 * std::ldexp(1.0, -24) * mag);
      }
    CHECK(bad == 0, "MoE end to end (%s): %d outputs off the double reference", dn(at), bad);
  }
}

// ==== sampling ======================================================================================

struct RefSample {
  bool greedy = false;
  int argmax = -1;
  double m = 0, inv_t = 1, logZ = 0;
  std::vector<double> d;           // scaled log-ratio, -inf when masked
  std::vector<int> order;          // alive ids by (w desc, id asc)
  int n_k = 0;                     // top-k set size
  std::vector<int> n_options;      // acceptable survivor counts (the top-p cut within tolerance)
  int n_m = 0;                     // min-p prefix
};

constexpr double kDrawTol = 1e-5;  // relative: f32 exp + fixed-point masses on the device

// docs/sampling.md in double (w: the f32 logits as the kernel sees them, after adjustment).
static RefSample ref_prepare(const std::vector<float>& w, const tc::SampleRow& p) {
  RefSample r;
  const int V = int(w.size());
  float m = -INFINITY;
  for (int i = 0; i < V; ++i)
    if (w[i] > m) {
      m = w[i];
      r.argmax = i;
    }
  r.m = m;
  r.greedy = p.temperature == 0.0;
  r.inv_t = r.greedy ? 1.0 : 1.0 / p.temperature;
  r.d.resize(V);
  long double S = 0;
  for (int i = 0; i < V; ++i) {
    r.d[i] = (double(w[i]) - r.m) * r.inv_t;
    if (r.d[i] >= -87) {
      S += std::exp((long double)r.d[i]);
      r.order.push_back(i);
    }
  }
  r.logZ = double(std::log(S));
  std::sort(r.order.begin(), r.order.end(), [&](int a, int b) { return w[a] != w[b] ? w[a] > w[b] : a < b; });
  const int npos = int(r.order.size());
  r.n_k = p.top_k > 0 && p.top_k < npos ? p.top_k : npos;
  long double sk = 0;
  for (int j = 0; j < r.n_k; ++j) sk += std::exp((long double)r.d[r.order[j]]);
  int n_p = r.n_k;
  r.n_options = {r.n_k};
  if (p.top_p < 1) {
    const long double target = (long double)p.top_p * sk;
    long double acc = 0;
    std::vector<long double> cum(r.n_k);
    for (int j = 0; j < r.n_k; ++j) cum[j] = acc += std::exp((long double)r.d[r.order[j]]);
    n_p = r.n_k;
    for (int j = 0; j < r.n_k; ++j)
      if (cum[j] >= target) {
        n_p = j + 1;
        break;
      }
    r.n_options = {n_p};
    const long double tol = kDrawTol * sk;
    if (n_p >= 2 && cum[n_p - 2] >= target - tol) r.n_options.push_back(n_p - 1);
    if (n_p < r.n_k && cum[n_p - 1] < target + tol) r.n_options.push_back(n_p + 1);
  }
  r.n_m = r.n_k;
  if (p.min_p > 0) {
    const double t = std::log(p.min_p);
    r.n_m = 0;
    while (r.n_m < r.n_k && r.d[r.order[r.n_m]] >= t) ++r.n_m;
  }
  return r;
}

// Tokens the kernel may return for u: the reference inverse-CDF token for each acceptable
// survivor set, and its neighbour when u lies within kDrawTol of a CDF boundary.
static std::vector<int> ref_tokens(const RefSample& r, double u) {
  if (r.greedy) return {r.argmax};
  std::vector<int> ok;
  for (int n_p : r.n_options) {
    const int n = std::min(n_p, r.n_m);
    std::vector<int> ids(r.order.begin(), r.order.begin() + n);
    std::sort(ids.begin(), ids.end());
    long double total = 0;
    for (int i : ids) total += std::exp((long double)r.d[i]);
    long double acc = 0;
    const long double target = (long double)u * total;
    for (size_t j = 0; j < ids.size(); ++j) {
      const long double lo = acc;
      acc += std::exp((long double)r.d[ids[j]]);
      if (acc > target || j + 1 == ids.size()) {
        ok.push_back(ids[j]);
        if (j > 0 && target - lo <= kDrawTol * total) ok.push_back(ids[j - 1]);
        if (j + 1 < ids.size() && acc - target <= kDrawTol * total) ok.push_back(ids[j + 1]);
        break;
      }
    }
  }
  return ok;
}

// How far u lies from the reference CDF interval of `token` (0 inside), over the acceptable
// survivor sets (the smallest); 1 when the token is not a survivor of any.
static double ref_du(const RefSample& r, double u, int token) {
  if (r.greedy) return token == r.argmax ? 0.0 : 1.0;
  double best = 1.0;
  for (int n_p : r.n_options) {
    const int n = std::min(n_p, r.n_m);
    std::vector<int> ids(r.order.begin(), r.order.begin() + n);
    std::sort(ids.begin(), ids.end());
    long double total = 0;
    for (int i : ids) total += std::exp((long double)r.d[i]);
    long double acc = 0;
    for (int i : ids) {
      const long double lo = acc / total;
      acc += std::exp((long double)r.d[i]);
      if (i == token) {
        const long double hi = acc / total;
        best = std::min(best, double(u < lo ? lo - u : u >= hi ? u - hi : 0.0L));
      }
    }
  }
  return best;
}

// The survivor CDF boundaries (u values) of the main reference set, for choosing u.
static std::vector<double> ref_boundaries(const RefSample& r) {
  const int n = std::min(r.n_options[0], r.n_m);
  std::vector<int> ids(r.order.begin(), r.order.begin() + n);
  std::sort(ids.begin(), ids.end());
  long double total = 0;
  for (int i : ids) total += std::exp((long double)r.d[i]);
  std::vector<double> b;
  long double acc = 0;
  for (size_t j = 0; j + 1 < ids.size(); ++j) b.push_back(double((acc += std::exp((long double)r.d[ids[j]])) / total));
  return b;
}

struct SampleCase {
  std::string name;
  DType t = DType::f32;
  std::vector<float> w;  // values exactly representable in t
  tc::SampleRow p;
  bool unaligned = false;
};

static float round_to(DType t, double v) {
  Buf b(t, 1);
  b.set(0, v);
  return b.getf(0);
}
static std::vector<float> rounded(std::vector<float> w, DType t) {
  for (auto& v : w) v = round_to(t, v);
  return w;
}

// Logits with an LLM-like shape (a gaussian bulk and a few strong candidates), rounded to t,
// with no scaled value within 0.05 of the -87 cut (checked separately).
static std::vector<float> make_logits(int V, DType t, double scale = 2.5, int peaks = 6) {
  std::vector<float> w(V);
  std::normal_distribution<double> g(0.0, scale);
  for (int i = 0; i < V; ++i) w[i] = float(g(gRng));
  for (int j = 0; j < peaks && V > 1; ++j) w[irand(0, V - 1)] = float(urand(6, 11));
  for (auto& v : w) v = round_to(t, v);
  return w;
}

// Runs one case with `us` (one row per u, every row reading the same logits through ld = 0),
// checks every token against the reference and the logprob. Returns the number of wrong rows.
static int run_sample_case(const SampleCase& c, const std::vector<double>& us, bool report = true,
                           const std::function<tc::Status(const tc::SampleArgs&, unsigned long long*)>& fn = nullptr) {
  const int V = int(c.w.size()), rows = int(us.size());
  Buf x(c.t, size_t(V), c.unaligned ? 1 : 0);
  for (int i = 0; i < V; ++i) x.set(i, c.w[i]);
  std::vector<tc::SampleRow> prm(rows, c.p);
  for (int i = 0; i < rows; ++i) prm[i].u = us[i];
  std::vector<int32_t> tok(rows, -99);
  std::vector<float> lp(rows, 123.0f);
  tc::SampleArgs a{c.t, rows, V, 0, x.p(), prm.data(), tok.data(), lp.data()};
  unsigned long long err = tc::kSampleNoError;
  const tc::Status st = fn ? fn(a, &err) : tc::sample(a, &err);
  if (report) expect_ok(st, c.name);
  if (!st.ok) return rows;
  if (report) CHECK(err == tc::kSampleNoError, "%s: unexpected error slot %llx", c.name.c_str(), err);
  const RefSample r = ref_prepare(c.w, c.p);
  int wrong = 0, lpbad = 0;
  const long tol0 = gDrawsTol;
  for (int i = 0; i < rows; ++i) {
    const std::vector<int> ok = ref_tokens(r, us[i]);
    if (report) {  // statistics over the real kernel only (not the broken variants)
      ++gDraws;
      gDrawsTol += std::count(ok.begin(), ok.end(), ok[0]) != long(ok.size());
      gMaxDu = std::max(gMaxDu, ref_du(r, us[i], tok[i]));
    }
    const bool hit = std::find(ok.begin(), ok.end(), tok[i]) != ok.end();
    if (!hit) {
      if (report && wrong < 3)
        std::printf("    %s: u=%.17g -> token %d, expected %d%s\n", c.name.c_str(), us[i], tok[i], ok.empty() ? -1 : ok[0],
                    ok.size() > 1 ? " (or a neighbour)" : "");
      ++wrong;
      continue;
    }
    const double want = r.d[tok[i]] - r.logZ;
    if (!(std::fabs(double(lp[i]) - want) <= 2e-5 + 2e-6 * std::fabs(want))) {
      if (report && lpbad < 3) std::printf("    %s: logprob of %d = %.9g, expected %.9g\n", c.name.c_str(), tok[i], lp[i], want);
      ++lpbad;
    }
  }
  if (gVerbose && gDrawsTol > tol0)
    std::printf("  %s: %ld of %d draws within tolerance of a boundary (top-p cut options: %zu)\n", c.name.c_str(), gDrawsTol - tol0, rows,
                r.n_options.size());
  if (report) {
    CHECK(wrong == 0, "%s: %d of %d draws differ from the reference inverse CDF", c.name.c_str(), wrong, rows);
    CHECK(lpbad == 0, "%s: %d logprobs off", c.name.c_str(), lpbad);
  }
  return wrong + lpbad;
}

// u values: random, 0, the largest double below 1, and both sides of every CDF boundary (just
// outside the tolerance), at most `cap` of them.
static std::vector<double> pick_us(const SampleCase& c, int cap, int nrand) {
  std::vector<double> us = {0.0, 1.0 - std::ldexp(1.0, -53)};
  for (int i = 0; i < nrand; ++i) us.push_back(urand(0, 1));
  if (c.p.temperature != 0.0) {
    const RefSample r = ref_prepare(c.w, c.p);
    std::vector<double> b = ref_boundaries(r);
    std::shuffle(b.begin(), b.end(), gRng);
    for (double v : b) {
      if (int(us.size()) + 2 > cap) break;
      for (double s : {-3 * kDrawTol, 3 * kDrawTol})
        if (v + s >= 0 && v + s < 1) us.push_back(v + s);
    }
  }
  if (int(us.size()) > cap) us.resize(cap);
  return us;
}

static tc::SampleRow prm(double T, int k = 0, double top_p = 1.0, double min_p = 0.0) {
  tc::SampleRow p;
  p.temperature = T;
  p.top_k = k;
  p.top_p = top_p;
  p.min_p = min_p;
  return p;
}

static void test_sample_small() {
  // (V, params) grid on small vocabularies, every dtype, aligned and unaligned rows.
  const tc::SampleRow params[] = {prm(0),          prm(1),          prm(0.7, 5),        prm(0.8, 40, 0.95), prm(1.3, 0, 0.9),
                                  prm(0.6, 0, 0.5), prm(1, 0, 1e-9), prm(1, 1),          prm(0.9, 0, 1, 0.05), prm(1.1, 20, 0.8, 0.1),
                                  prm(1, 1000000), prm(2, 0, 1, 1.0)};
  for (int V : {1, 31, 1000})
    for (DType t : kActs)
      for (const auto& p : params)
        for (int un = 0; un < 2; ++un) {
          if (un && (V != 1000 || t == DType::f16)) continue;
          SampleCase c;
          c.t = t;
          c.w = rounded(make_logits(V, t, V == 31 ? 1.5 : 2.5), t);
          c.p = p;
          c.unaligned = un;
          char nm[128];
          std::snprintf(nm, sizeof nm, "sample V=%d %s T=%g k=%d p=%g minp=%g%s", V, dn(t), p.temperature, p.top_k, p.top_p, p.min_p,
                        un ? " unaligned" : "");
          c.name = nm;
          run_sample_case(c, pick_us(c, V == 1000 ? 16 : V == 31 ? 12 : 3, V == 1 ? 1 : 5));
        }
}

static void test_sample_ties_masks() {
  const int V = 1000;
  // All logits equal: every level of the descent down to the id bits.
  {
    SampleCase c;
    c.w.assign(V, 0.5f);
    for (auto p : {prm(1, 7), prm(1, 0, 0.3), prm(0.5, 600, 0.5), prm(1), prm(0)}) {
      c.p = p;
      c.name = "sample all-equal k=" + std::to_string(p.top_k) + " p=" + std::to_string(p.top_p);
      run_sample_case(c, pick_us(c, 20, 8));
    }
  }
  // Blocks of tied values straddling the top-k cut; bf16 rounding makes ties everywhere.
  {
    SampleCase c;
    c.t = DType::bf16;
    c.w = rounded(make_logits(V, DType::bf16, 1.0, 0), DType::bf16);
    for (int i = 0; i < 60; ++i) c.w[(i * 37) % V] = 3.0f;
    for (int k : {10, 59, 60, 61, 200}) {
      c.p = prm(0.9, k);
      c.name = "sample bf16 ties k=" + std::to_string(k);
      run_sample_case(c, pick_us(c, 24, 8));
    }
    c.p = prm(0.9, 45, 0.7);
    c.name = "sample bf16 ties k=45 p=0.7";
    run_sample_case(c, pick_us(c, 24, 8));
  }
  // -inf masks (half the vocabulary), tokens below the -87 cut (probability exactly 0, never
  // drawn), tokens just above it (drawable, tiny).
  {
    SampleCase c;
    c.w = make_logits(V, DType::f32);
    for (int i = 0; i < V; i += 2) c.w[i] = -INFINITY;
    float m = -INFINITY;
    for (float v : c.w) m = std::max(m, v);
    c.w[3] = m - 100.0f;
    c.w[5] = m - 1e30f;
    c.w[7] = m - 80.0f;
    for (auto p : {prm(1), prm(1, 0, 0.999999), prm(1, 400), prm(1, 498), prm(1, 499), prm(1, 500), prm(0)}) {
      c.p = p;
      c.name = "sample masked k=" + std::to_string(p.top_k) + " p=" + std::to_string(p.top_p);
      run_sample_case(c, pick_us(c, 24, 8));
    }
    // A sparse row: -inf everywhere but the top token and tokens at d = -80 (alive) and -100.
    SampleCase d;
    d.w.assign(40, -INFINITY);
    d.w[11] = 2.0f;
    d.w[30] = 2.0f - 80.0f;
    d.w[31] = 2.0f - 100.0f;
    d.p = prm(1);
    d.name = "sample sparse row, d = -80 / -100";
    std::vector<double> us = {0.0, 0.5, 1.0 - std::ldexp(1.0, -53)};
    run_sample_case(d, us);
  }
  // top-k >= vocab, top-k = vocab - 1, top-k > 1024 (a deeper descent on a 32003 vocabulary).
  {
    SampleCase c;
    c.w = make_logits(V, DType::f32);
    for (int k : {V, V - 1, V + 5}) {
      c.p = prm(1, k);
      c.name = "sample k=" + std::to_string(k) + " of 1000";
      run_sample_case(c, pick_us(c, 16, 6));
    }
  }
}

static void test_sample_large() {
  const int V = 32003;  // not a multiple of the block or of the vector width
  for (DType t : {DType::f32, DType::bf16}) {
    SampleCase c;
    c.t = t;
    c.w = rounded(make_logits(V, t, 2.0, 12), t);
    const tc::SampleRow ps[] = {prm(1), prm(0.8, 40, 0.95), prm(1.5, 0, 0.95), prm(1, 2000), prm(0.7, 0, 1, 0.02), prm(0)};
    for (const auto& p : ps) {
      if (t == DType::bf16 && p.top_k == 2000) continue;
      c.p = p;
      char nm[128];
      std::snprintf(nm, sizeof nm, "sample V=32003 %s T=%g k=%d p=%g minp=%g", dn(t), p.temperature, p.top_k, p.top_p, p.min_p);
      c.name = nm;
      run_sample_case(c, pick_us(c, 6, 3));
    }
  }
  // Unaligned f16 rows at 32003 (the scalar path), top-p.
  SampleCase c;
  c.t = DType::f16;
  c.w = rounded(make_logits(V, DType::f16, 2.0, 12), DType::f16);
  c.p = prm(1.2, 0, 0.9);
  c.unaligned = true;
  c.name = "sample V=32003 f16 unaligned p=0.9";
  run_sample_case(c, pick_us(c, 5, 3));
}

// u within 1e-7 / 1e-8 of CDF boundaries: inside the tolerance, so either side passes, but the
// distance statistic (printed at the end) shows how closely the device follows the reference.
static void test_sample_precision_probe() {
  const std::pair<int, tc::SampleRow> cases[] = {{1000, prm(0.7, 0, 0.95)}, {1000, prm(1.3, 50)}, {32003, prm(1.1)}};
  for (const auto& cs : cases) {
    SampleCase c;
    c.w = make_logits(cs.first, DType::f32);
    c.p = cs.second;
    c.name = "sample precision probe V=" + std::to_string(cs.first);
    const RefSample r = ref_prepare(c.w, c.p);
    std::vector<double> b = ref_boundaries(r), us;
    std::shuffle(b.begin(), b.end(), gRng);
    for (size_t j = 0; j < b.size() && us.size() < (cs.first > 1000 ? 8u : 24u); ++j)
      for (double s : {-1e-7, 1e-7, -1e-8, 1e-8})
        if (b[j] + s >= 0 && b[j] + s < 1) us.push_back(b[j] + s);
    run_sample_case(c, us);
  }
}

// Min-p at the threshold: the f32 neighbours of ln(min_p) relative to a max of 0 (T = 1), so
// d = x exactly; f32 alone cannot tell which are >= ln(min_p) in double, the kernel must.
static void test_sample_minp_threshold() {
  for (double mp : {0.3, 0.05, 0.7, 0.123456789}) {
    const double t = std::log(mp);
    const float tf = float(t);
    SampleCase c;
    c.w.assign(64, -30.0f);
    c.w[0] = 0.0f;  // the max first, so that the last survivor in id order is a neighbour
    float v = tf;
    for (int j = 0; j < 3; ++j) v = std::nextafter(v, -INFINITY);
    for (int j = 0; j < 7; ++j, v = std::nextafter(v, INFINITY)) c.w[33 - 5 * j] = v;  // 7 values around tf, descending ids
    c.p = prm(1, 0, 1, mp);
    c.name = "sample min-p threshold " + std::to_string(mp);
    // u near 1: the last survivor in id order tells where the cut fell.
    std::vector<double> us;
    for (int i = 0; i < 24; ++i) us.push_back(1.0 - std::ldexp(1.0, -53) - i * 0.0415);
    run_sample_case(c, us);
    const RefSample r = ref_prepare(c.w, c.p);
    CHECK(r.n_m > 1 && r.n_m < 8, "min-p threshold case %g: the reference keeps %d (expected a cut among the neighbours)", mp, r.n_m);
  }
}

// Golden draws from the real TS sampler (lib/model/sampler.ts): for each case and seed,
// u = createRng(seed)() and the token / logprob of new Sampler(V, {...options, seed}).sample(w),
// on logits from a 32-bit LCG that C++ reproduces bit for bit (tsfix_logits). The kernel must
// return the same token for the same u, and the logprob within 2e-5. Regenerate the table with
// `npx tsx gen.ts` (gen.ts below; adjust its import path) after a change to the TS sampler:
//   // Fixture generator: the real TS Sampler on LCG logits; prints C++ initializer rows.
//   import { Sampler, createRng, SamplingOptions } from './lib/model/sampler';  // run from the repo root
//
//   function logits(V: number, seed: number, scale: number): Float32Array {
//     // integer LCG (exact in doubles), value in [-scale, scale) rounded to f32; a few peaks
//     let s = seed >>> 0;
//     const a = new Float32Array(V);
//     for (let i = 0; i < V; i++) {
//       s = (Math.imul(s, 1103515245) + 12345) & 0x7fffffff;
//       a[i] = Math.fround((s / 2147483648) * 2 * scale - scale);
//     }
//     for (let j = 0; j < 5; j++) {
//       s = (Math.imul(s, 1103515245) + 12345) & 0x7fffffff;
//       const i = s % V;
//       a[i] = Math.fround(a[i] + 0.5 * scale);
//     }
//     return a;
//   }
//
//   const cases: [number, number, number, SamplingOptions][] = [
//     [1000, 11, 4, { temperature: 0.8, topK: 40, topP: 0.95 }],
//     [1000, 12, 4, { temperature: 1.0 }],
//     [1000, 13, 3, { temperature: 1.3, topP: 0.9 }],
//     [1000, 14, 4, { temperature: 0.7, minP: 0.05 }],
//     [1000, 15, 4, { temperature: 1.1, topK: 300, topP: 0.8, minP: 0.02 }],
//     [31, 16, 2, { temperature: 0.9, topK: 5 }],
//     [4099, 17, 5, { temperature: 1.0, topP: 0.99 }],
//     [4099, 18, 5, { temperature: 0.6, topK: 2000 }],
//     [1000, 19, 4, { temperature: 0 }],
//   ];
//   const lines: string[] = [];
//   for (const [V, lseed, scale, o] of cases) {
//     for (let k = 0; k < 8; k++) {
//       const seed = 1000 * lseed + k;
//       const w = logits(V, lseed, scale);
//       const s = new Sampler(V, { ...o, seed });
//       const u = o.temperature === 0 ? 0 : createRng(seed)();
//       const r = s.sample(w);
//       lines.push(
//         `  {${V}, ${lseed}, ${scale}, ${o.temperature ?? 1}, ${o.topK ?? 0}, ${o.topP ?? 1}, ${o.minP ?? 0}, ${u.toPrecision(17)}, ${r.token}, ${r.logprob.toPrecision(17)}},`,
//       );
//     }
//   }
//   console.log(lines.join('\n'));
struct TsFixture {
  int V, lseed;
  double scale, temperature;
  int top_k;
  double top_p, min_p, u;
  int token;
  double logprob;
};
static const TsFixture kTsFixtures[] = {
  {1000, 11, 4, 0.8, 40, 0.95, 0, 0.66342904400822456, 539, -4.8841905489053401},
  {1000, 11, 4, 0.8, 40, 0.95, 0, 0.59721701749858580, 474, -4.6349790587510737},
  {1000, 11, 4, 0.8, 40, 0.95, 0, 0.49869374676177813, 399, -4.9680605425920161},
  {1000, 11, 4, 0.8, 40, 0.95, 0, 0.47763882730525675, 397, -4.9419394030656489},
  {1000, 11, 4, 0.8, 40, 0.95, 0, 0.80257323593946517, 647, -4.7360667481507930},
  {1000, 11, 4, 0.8, 40, 0.95, 0, 0.33976700769721935, 245, -4.5681416883554133},
  {1000, 11, 4, 0.8, 40, 0.95, 0, 0.97468948759909835, 988, -4.6115985407914790},
  {1000, 11, 4, 0.8, 40, 0.95, 0, 0.80822307648774128, 647, -4.7360667481507930},
  {1000, 12, 4, 1, 0, 1, 0, 0.95830917325481879, 923, -5.2710160125679142},
  {1000, 12, 4, 1, 0, 1, 0, 0.24794003069146786, 254, -5.3462804664558536},
  {1000, 12, 4, 1, 0, 1, 0, 0.79285655324733884, 759, -5.0988122333473331},
  {1000, 12, 4, 1, 0, 1, 0, 0.30326073344819149, 283, -3.5544630397743346},
  {1000, 12, 4, 1, 0, 1, 0, 0.080692828833193175, 65, -5.0249341834968693},
  {1000, 12, 4, 1, 0, 1, 0, 0.12826663402031480, 119, -5.9072300304359562},
  {1000, 12, 4, 1, 0, 1, 0, 0.99149386648679072, 993, -5.0371471752113468},
  {1000, 12, 4, 1, 0, 1, 0, 0.52861529354650361, 471, -6.3538433422035343},
  {1000, 13, 3, 1.3, 0, 0.9, 0, 0.57206249997686198, 565, -6.1293491353614593},
  {1000, 13, 3, 1.3, 0, 0.9, 0, 0.39344328421610264, 369, -5.4681681989882627},
  {1000, 13, 3, 1.3, 0, 0.9, 0, 0.58286339530976983, 571, -6.0855729166537147},
  {1000, 13, 3, 1.3, 0, 0.9, 0, 0.93823843175943122, 946, -5.8077723566561561},
  {1000, 13, 3, 1.3, 0, 0.9, 0, 0.42806750531504201, 402, -7.0710967915967871},
  {1000, 13, 3, 1.3, 0, 0.9, 0, 0.26971483618630510, 237, -5.8907682482272010},
  {1000, 13, 3, 1.3, 0, 0.9, 0, 0.77080761476427773, 783, -6.7025592097128435},
  {1000, 13, 3, 1.3, 0, 0.9, 0, 0.54045360733285319, 536, -5.6776356100295224},
  {1000, 14, 4, 0.7, 0, 1, 0.05, 0.70993887869948180, 705, -4.3895330529421264},
  {1000, 14, 4, 0.7, 0, 1, 0.05, 0.32479384610225770, 354, -5.0369975326610161},
  {1000, 14, 4, 0.7, 0, 1, 0.05, 0.97331035669855603, 985, -4.6894830395361904},
  {1000, 14, 4, 0.7, 0, 1, 0.05, 0.83374750620638360, 836, -6.2087969199116433},
  {1000, 14, 4, 0.7, 0, 1, 0.05, 0.51222314687324155, 475, -4.4558869870939120},
  {1000, 14, 4, 0.7, 0, 1, 0.05, 0.13756161805766265, 159, -5.9241169621130947},
  {1000, 14, 4, 0.7, 0, 1, 0.05, 0.96274897102031720, 938, -4.6732848812720302},
  {1000, 14, 4, 0.7, 0, 1, 0.05, 0.60344018105807373, 556, -4.4387409446788384},
  {1000, 15, 4, 1.1, 300, 0.8, 0.02, 0.58412269548177753, 572, -5.1717655908276319},
  {1000, 15, 4, 1.1, 300, 0.8, 0.02, 0.29503870761911477, 282, -5.1142683495473360},
  {1000, 15, 4, 1.1, 300, 0.8, 0.02, 0.13595462850478390, 170, -5.3643596855375479},
  {1000, 15, 4, 1.1, 300, 0.8, 0.02, 0.083379890964557446, 109, -5.5875305295289142},
  {1000, 15, 4, 1.1, 300, 0.8, 0.02, 0.55172707004471744, 552, -5.1465840372470879},
  {1000, 15, 4, 1.1, 300, 0.8, 0.02, 0.62076083954264671, 629, -6.0417957338718438},
  {1000, 15, 4, 1.1, 300, 0.8, 0.02, 0.99205420382243592, 995, -5.1074549967891016},
  {1000, 15, 4, 1.1, 300, 0.8, 0.02, 0.54378532281528791, 547, -5.4847755898427462},
  {31, 16, 2, 0.9, 5, 1, 0, 0.39169510055776546, 6, -1.8110739609352842},
  {31, 16, 2, 0.9, 5, 1, 0, 0.64636132947338998, 11, -1.9894041704554122},
  {31, 16, 2, 0.9, 5, 1, 0, 0.34244640439346008, 6, -1.8110739609352842},
  {31, 16, 2, 0.9, 5, 1, 0, 0.93694060435512494, 29, -2.5485930927017093},
  {31, 16, 2, 0.9, 5, 1, 0, 0.065950611401895842, 1, -2.5050892519373456},
  {31, 16, 2, 0.9, 5, 1, 0, 0.35803240409831916, 6, -1.8110739609352842},
  {31, 16, 2, 0.9, 5, 1, 0, 0.094356501819664818, 1, -2.5050892519373456},
  {31, 16, 2, 0.9, 5, 1, 0, 0.90142585855648849, 29, -2.5485930927017093},
  {4099, 17, 5, 1, 0, 0.99, 0, 0.070956606905614561, 350, -6.2770456313406813},
  {4099, 17, 5, 1, 0, 0.99, 0, 0.96510400092267301, 4037, -6.4658516883169996},
  {4099, 17, 5, 1, 0, 0.99, 0, 0.014127983047839576, 56, -6.1468872069632399},
  {4099, 17, 5, 1, 0, 0.99, 0, 0.19391415667808642, 865, -8.8172768592154362},
  {4099, 17, 5, 1, 0, 0.99, 0, 0.097868301196697094, 462, -6.3254465102469313},
  {4099, 17, 5, 1, 0, 0.99, 0, 0.39459110897805350, 1616, -6.5197338103567946},
  {4099, 17, 5, 1, 0, 0.99, 0, 0.99540605137493821, 4080, -3.6786021231924879},
  {4099, 17, 5, 1, 0, 0.99, 0, 0.45667219234536993, 1902, -7.6354960440909254},
  {4099, 18, 5, 0.6, 2000, 1, 0, 0.53926487777095611, 2212, -6.1304890849062801},
  {4099, 18, 5, 0.6, 2000, 1, 0, 0.51208725721251203, 2135, -6.0745060183474422},
  {4099, 18, 5, 0.6, 2000, 1, 0, 0.64795741270221308, 2570, -7.2274545568097626},
  {4099, 18, 5, 0.6, 2000, 1, 0, 0.91824430735171669, 3767, -6.1996042468020320},
  {4099, 18, 5, 0.6, 2000, 1, 0, 0.56031493194069515, 2291, -6.1452853419253231},
  {4099, 18, 5, 0.6, 2000, 1, 0, 0.30691711289251333, 1286, -6.2781027692426239},
  {4099, 18, 5, 0.6, 2000, 1, 0, 0.69789450319743895, 2866, -7.6358695564537244},
  {4099, 18, 5, 0.6, 2000, 1, 0, 0.53706268734515683, 2195, -9.2146702347068974},
  {1000, 19, 4, 0, 0, 1, 0, 0.0000000000000000, 247, -2.9706475320477872},
  {1000, 19, 4, 0, 0, 1, 0, 0.0000000000000000, 247, -2.9706475320477872},
  {1000, 19, 4, 0, 0, 1, 0, 0.0000000000000000, 247, -2.9706475320477872},
  {1000, 19, 4, 0, 0, 1, 0, 0.0000000000000000, 247, -2.9706475320477872},
  {1000, 19, 4, 0, 0, 1, 0, 0.0000000000000000, 247, -2.9706475320477872},
  {1000, 19, 4, 0, 0, 1, 0, 0.0000000000000000, 247, -2.9706475320477872},
  {1000, 19, 4, 0, 0, 1, 0, 0.0000000000000000, 247, -2.9706475320477872},
  {1000, 19, 4, 0, 0, 1, 0, 0.0000000000000000, 247, -2.9706475320477872},
};
static std::vector<float> tsfix_logits(int V, int seed, double scale) {
  uint32_t s = uint32_t(seed);
  std::vector<float> a(V);
  for (int i = 0; i < V; ++i) {
    s = (s * 1103515245u + 12345u) & 0x7fffffffu;
    a[i] = float(double(s) / 2147483648.0 * 2 * scale - scale);
  }
  for (int j = 0; j < 5; ++j) {
    s = (s * 1103515245u + 12345u) & 0x7fffffffu;
    const int i = int(s % uint32_t(V));
    a[i] = float(double(a[i]) + 0.5 * scale);
  }
  return a;
}
static void test_sample_ts_golden() {
  int wrong = 0, lpbad = 0, n = 0;
  for (size_t c0 = 0; c0 < sizeof kTsFixtures / sizeof kTsFixtures[0];) {
    const TsFixture& f = kTsFixtures[c0];
    size_t c1 = c0;  // the rows of one case share the logits: one launch, ld = 0
    while (c1 < sizeof kTsFixtures / sizeof kTsFixtures[0] && kTsFixtures[c1].lseed == f.lseed) ++c1;
    const std::vector<float> w = tsfix_logits(f.V, f.lseed, f.scale);
    const int rows = int(c1 - c0);
    std::vector<tc::SampleRow> ps(rows, prm(f.temperature, f.top_k, f.top_p, f.min_p));
    for (int i = 0; i < rows; ++i) ps[i].u = kTsFixtures[c0 + i].u;
    std::vector<int32_t> tok(rows, -99);
    std::vector<float> lp(rows);
    unsigned long long err = tc::kSampleNoError;
    expect_ok(tc::sample({DType::f32, rows, f.V, 0, w.data(), ps.data(), tok.data(), lp.data()}, &err), "sample TS golden");
    for (int i = 0; i < rows; ++i, ++n) {
      const TsFixture& g = kTsFixtures[c0 + i];
      if (tok[i] != g.token) {
        if (wrong++ < 3) std::printf("    TS golden V=%d seed %d u=%.17g: token %d, the TS sampler drew %d\n", g.V, g.lseed, g.u, tok[i], g.token);
      } else if (!(std::fabs(double(lp[i]) - g.logprob) <= 2e-5 + 2e-6 * std::fabs(g.logprob))) {
        ++lpbad;
      }
    }
    c0 = c1;
  }
  CHECK(wrong == 0 && lpbad == 0, "TS golden: %d of %d tokens differ from the TS sampler's, %d logprobs off", wrong, n, lpbad);
}

// Several rows with their own logits and parameters in one launch (ld = vocab).
static void test_sample_batch() {
  const int V = 777, rows = 9;
  std::vector<float> all(size_t(rows) * V);
  std::vector<tc::SampleRow> ps(rows);
  for (int r = 0; r < rows; ++r) {
    const auto w = make_logits(V, DType::f32);
    std::copy(w.begin(), w.end(), all.begin() + size_t(r) * V);
    ps[r] = prm(r % 3 == 0 ? 0 : urand(0.5, 1.5), r % 2 ? irand(1, 50) : 0, r % 4 == 1 ? 1.0 : urand(0.5, 0.99), r == 5 ? 0.1 : 0);
    ps[r].u = urand(0, 1);
  }
  std::vector<int32_t> tok(rows, -99);
  std::vector<float> lp(rows);
  tc::SampleArgs a{DType::f32, rows, V, V, all.data(), ps.data(), tok.data(), lp.data()};
  unsigned long long err = tc::kSampleNoError;
  expect_ok(tc::sample(a, &err), "sample batch");
  int wrong = 0;
  for (int r = 0; r < rows; ++r) {
    std::vector<float> w(all.begin() + size_t(r) * V, all.begin() + size_t(r + 1) * V);
    const RefSample ref = ref_prepare(w, ps[r]);
    const auto ok = ref_tokens(ref, ps[r].u);
    wrong += std::find(ok.begin(), ok.end(), tok[r]) == ok.end();
    wrong += !(std::fabs(double(lp[r]) - (ref.d[std::max(0, tok[r])] - ref.logZ)) <= 2e-5);
  }
  CHECK(wrong == 0 && err == tc::kSampleNoError, "sample batch of %d rows: %d wrong", rows, wrong);
}

// Bad logits and bad parameters: token -1, logprob NaN, the slot names the first bad row.
static void test_sample_errors() {
  const int V = 31;
  struct E {
    const char* what;
    std::function<void(std::vector<float>&)> edit;
    tc::SampleErrorKind kind;
    int index;
  };
  const E cases[] = {
      {"NaN", [](std::vector<float>& w) { w[9] = NAN, w[20] = NAN; }, tc::SampleErrorKind::nan_logit, 9},
      {"+inf", [](std::vector<float>& w) { w[4] = INFINITY, w[6] = INFINITY; }, tc::SampleErrorKind::pos_inf, 4},
      {"+inf and NaN", [](std::vector<float>& w) { w[4] = NAN, w[6] = INFINITY; }, tc::SampleErrorKind::pos_inf, 6},
      {"all -inf", [](std::vector<float>& w) { std::fill(w.begin(), w.end(), -INFINITY); }, tc::SampleErrorKind::all_masked, 0},
      {"-inf and NaN", [](std::vector<float>& w) { std::fill(w.begin(), w.end(), -INFINITY), w[17] = NAN; }, tc::SampleErrorKind::nan_logit, 17},
      {"all NaN", [](std::vector<float>& w) { std::fill(w.begin(), w.end(), NAN); }, tc::SampleErrorKind::nan_logit, 0},
  };
  for (const E& e : cases)
    for (int greedy = 0; greedy < 3; ++greedy) {  // 0 sample, 1 sample T=0, 2 argmax kernel
      const int rows = 4, bad_row = 2;
      std::vector<float> x(size_t(rows) * V);
      for (auto& v : x) v = float(urand(-3, 3));
      std::vector<float> row(x.begin() + bad_row * V, x.begin() + (bad_row + 1) * V);
      e.edit(row);
      std::copy(row.begin(), row.end(), x.begin() + bad_row * V);
      std::vector<tc::SampleRow> ps(rows, prm(greedy == 1 ? 0 : 1, 5, 0.9));
      std::vector<int32_t> tok(rows, -99);
      std::vector<float> lp(rows, 0.0f);
      unsigned long long err = tc::kSampleNoError;
      if (greedy == 2) expect_ok(tc::argmax({DType::f32, rows, V, V, x.data(), tok.data(), lp.data()}, &err), "argmax errors");
      else expect_ok(tc::sample({DType::f32, rows, V, V, x.data(), ps.data(), tok.data(), lp.data()}, &err), "sample errors");
      tc::SampleFailure f;
      const bool flagged = tc::sample_error(err, &f);
      CHECK(flagged && f.row == bad_row && f.kind == e.kind && f.index == e.index,
            "%s (mode %d): expected row %d kind %u index %d, got flagged=%d row %lld kind %u index %d", e.what, greedy, bad_row,
            unsigned(e.kind), e.index, flagged, (long long)f.row, unsigned(f.kind), f.index);
      CHECK(tok[bad_row] == -1 && std::isnan(lp[bad_row]), "%s: the bad row must get token -1 and a NaN logprob", e.what);
      CHECK(tok[0] >= 0 && tok[1] >= 0 && tok[3] >= 0, "%s: the good rows must still be sampled", e.what);
    }
  // Bad parameters, one field at a time (the slot's index names the field).
  const tc::SampleRow good = prm(1, 5, 0.9, 0.1);
  for (int field = 0; field < 5; ++field)
    for (int variant = 0; variant < 2; ++variant) {
      tc::SampleRow b = good;
      b.u = 0.5;
      switch (field) {
        case 0: b.temperature = variant ? NAN : -1.0; break;
        case 1: b.top_k = -1 - variant; break;
        case 2: b.top_p = variant ? 0.0 : 1.5; break;
        case 3: b.min_p = variant ? -0.1 : NAN; break;
        case 4: b.u = variant ? 1.0 : -0.25; break;
      }
      std::vector<float> x(V);
      for (auto& v : x) v = float(urand(-3, 3));
      int32_t tok = -99;
      float lp = 0;
      unsigned long long err = tc::kSampleNoError;
      expect_ok(tc::sample({DType::f32, 1, V, V, x.data(), &b, &tok, &lp}, &err), "sample bad params");
      tc::SampleFailure f;
      CHECK(tc::sample_error(err, &f) && f.kind == tc::SampleErrorKind::bad_param && f.index == field && tok == -1,
            "bad param field %d variant %d: not reported", field, variant);
      CHECK(!tc::sample_params_check(&b, 1).ok, "sample_params_check accepted bad field %d", field);
    }
  CHECK(tc::sample_params_check(&good, 1).ok, "sample_params_check refused good params");
  // T tiny but valid (1/T finite): sampling among the exact ties at the top.
  {
    std::vector<float> x(V, 1.0f);
    x[12] = x[25] = 4.0f;
    tc::SampleRow p = prm(1e-300);
    std::vector<tc::SampleRow> ps(4, p);
    ps[0].u = 0.0, ps[1].u = 0.49, ps[2].u = 0.51, ps[3].u = 0.99;
    std::vector<int32_t> tok(4);
    unsigned long long err = tc::kSampleNoError;
    expect_ok(tc::sample({DType::f32, 4, V, 0, x.data(), ps.data(), tok.data(), nullptr}, &err), "sample T=1e-300");
    CHECK(err == tc::kSampleNoError && tok[0] == 12 && tok[1] == 12 && tok[2] == 25 && tok[3] == 25, "T=1e-300: tokens %d %d %d %d", tok[0],
          tok[1], tok[2], tok[3]);
  }
}

static void test_argmax() {
  for (DType t : kActs)
    for (int V : {1, 31, 1000, 32003}) {
      const int rows = V == 32003 ? 2 : 5;
      Buf x(t, size_t(rows) * V);
      std::vector<std::vector<float>> ws(rows);
      for (int r = 0; r < rows; ++r) {
        ws[r] = rounded(make_logits(V, t), t);
        if (r == 1 && V > 3) ws[r][V - 1] = ws[r][V / 2] = ws[r][2] = 50.0f;  // ties -> lowest id
        if (r == 2 && V > 3) std::fill(ws[r].begin(), ws[r].end(), -INFINITY), ws[r][V - 2] = -1e4f;
        if (r == 3) ws[r].assign(V, 0.0f), ws[r][0] = -0.0f;  // -0 ties with +0
        for (int i = 0; i < V; ++i) x.set(size_t(r) * V + i, ws[r][i]);
      }
      std::vector<int32_t> tok(rows, -99);
      std::vector<float> lp(rows);
      unsigned long long err = tc::kSampleNoError;
      expect_ok(tc::argmax({t, rows, V, V, x.p(), tok.data(), lp.data()}, &err), "argmax");
      int wrong = 0;
      for (int r = 0; r < rows; ++r) {
        const RefSample ref = ref_prepare(ws[r], prm(0));
        wrong += tok[r] != ref.argmax;
        wrong += !(std::fabs(double(lp[r]) + ref.logZ) <= 2e-5 + 2e-6 * ref.logZ);
      }
      CHECK(wrong == 0 && err == tc::kSampleNoError, "argmax %s V=%d: %d wrong", dn(t), V, wrong);
      // Without logprob: one pass.
      std::fill(tok.begin(), tok.end(), -99);
      expect_ok(tc::argmax({t, rows, V, V, x.p(), tok.data(), nullptr}, &err), "argmax no logprob");
      for (int r = 0; r < rows; ++r) wrong += tok[r] != ref_prepare(ws[r], prm(0)).argmax;
      CHECK(wrong == 0, "argmax (no logprob) %s V=%d wrong", dn(t), V);
    }
}

// logit_adjust against Sampler.applyBiasAndPenalties' JS arithmetic (doubles, f32 stores).
static void test_logit_adjust() {
  const int rows = 3, V = 300, ld = 301;
  std::vector<float> x(size_t(rows) * ld);
  for (auto& v : x) v = float(urand(-5, 5));
  x[5] = 0.0f, x[6] = -0.0f;
  std::vector<int32_t> row_ptr = {0, 4, 4, 9};
  std::vector<int32_t> ids = {5, 6, 17, 299, /* row 2: */ 0, 1, 100, 101, 250};
  std::vector<double> bias = {1.5, 0.0, -INFINITY, 1e-3, 0.0, 2.25, -1.0, 0.0, 0.125};
  std::vector<int32_t> count = {2, 1, 0, 3, 1, 0, 4, 2, 1};
  std::vector<tc::PenaltyRow> pen = {{1.3, 0.25, 0.5}, {1, 0, 0}, {0.8, -0.5, 1.0 / 3}};
  std::vector<float> want = x;
  for (int r = 0; r < rows; ++r)
    for (int j = row_ptr[r]; j < row_ptr[r + 1]; ++j) {
      float& w = want[size_t(r) * ld + ids[j]];
      w = float(double(w) + bias[j]);
      if (count[j] > 0) {
        volatile double v = double(w);
        v = v > 0 ? v / pen[r].repetition : v * pen[r].repetition;
        volatile double sub = double(count[j]) * pen[r].frequency;
        sub = sub + pen[r].presence;
        w = float(v - sub);
      }
    }
  tc::LogitAdjustArgs a{rows, V, ld, x.data(), int64_t(ids.size()), row_ptr.data(), ids.data(), bias.data(), count.data(), pen.data()};
  unsigned long long err = tc::kSampleNoError;
  expect_ok(tc::logit_adjust(a, &err), "logitAdjust");
  int diff = 0;
  for (size_t i = 0; i < x.size(); ++i) diff += f32_bits(x[i]) != f32_bits(want[i]);
  CHECK(diff == 0 && err == tc::kSampleNoError, "logitAdjust: %d values differ from the JS arithmetic", diff);
  // Bad entries (a duplicate id, an id out of range): the row is reported and left untouched.
  std::vector<float> y = want;
  std::vector<int32_t> bad_ids = {5, 5, 17, 299, 0, 1, 100, 300, 250};
  a.logits = y.data();
  a.ids = bad_ids.data();
  err = tc::kSampleNoError;
  expect_ok(tc::logit_adjust(a, &err), "logitAdjust bad");
  tc::SampleFailure f;
  CHECK(tc::sample_error(err, &f) && f.row == 0 && f.kind == tc::SampleErrorKind::bad_adjust && f.index == 1,
        "logitAdjust bad: expected row 0 entry 1, got row %lld kind %u index %d", (long long)f.row, unsigned(f.kind), f.index);
  int touched = 0;
  for (int j = 0; j < ld; ++j) touched += f32_bits(y[j]) != f32_bits(want[j]) || f32_bits(y[2 * ld + j]) != f32_bits(want[2 * ld + j]);
  CHECK(touched == 0, "logitAdjust bad: a reported row was modified (%d)", touched);
}

// ==== broken variants, launch checks ================================================================

static void caught_report(bool caught, const std::string& what, const std::string& how) {
  CHECK(caught, "broken variant (%s) was NOT caught", what.c_str());
  std::printf("  broken %-44s under %s: %s -> %s\n", what.c_str(), cuemu::schedule_name(cuemu::schedule()).c_str(), caught ? "CAUGHT" : "missed",
              how.c_str());
}
static std::string first_line(const char* s) {
  std::string h = s;
  const size_t nl = h.find('\n');
  if (nl != std::string::npos) h.resize(nl);
  if (h.size() > 110) h.resize(110);
  return h;
}

template <int BUG>
static void test_sample_broken(const char* what) {
  // A case that needs a deeper descent level and a draw in a middle segment.
  SampleCase c;
  c.t = DType::f32;
  c.w = rounded(make_logits(1000, DType::f32, 1.0, 0), DType::f32);
  for (int i = 0; i < 40; ++i) c.w[(i * 53) % 1000] = 2.5f;
  c.p = prm(1, 25, 0.9);
  c.name = std::string("broken sample ") + what;
  std::vector<double> us;
  for (int i = 0; i < 16; ++i) us.push_back((i + 0.5) / 16);
  bool caught = false;
  std::string how;
  try {
    const int bad = run_sample_case(c, us, false, [](const tc::SampleArgs& a, unsigned long long* e) {
      return tc::detail::sample_impl<BUG>(a, e, nullptr, {});
    });
    caught = bad != 0;
    how = std::to_string(bad) + " of 16 draws wrong";
  } catch (const cuemu::Error& e) {
    caught = true;
    how = "cuemu error: " + first_line(e.what());
  }
  caught_report(caught, what, how);
}

template <int BC, int BS>
static void test_permute_broken(const char* what) {
  bool caught = false;
  std::string how;
  try {
    const auto ids = make_ids(301, 8, 32, 0.05);
    const bool ok = run_permute(ids, 301, 8, 32, -1, what, [](const tc::MoePermuteArgs& a, unsigned long long* e) {
      return tc::detail::moe_permute_impl<BC, BS>(a, e, nullptr, {});
    }, false);
    caught = !ok;
    how = ok ? "correct output" : "wrong permutation";
  } catch (const cuemu::Error& e) {
    caught = true;
    how = "cuemu error: " + first_line(e.what());
  }
  caught_report(caught, what, how);
}

static void test_launch_checks() {
  unsigned long long err = tc::kSampleNoError;
  std::vector<float> x(64, 1.0f);
  std::vector<int32_t> tok(2, -99);
  std::vector<tc::SampleRow> ps(2, prm(1));
  auto refused = [&](const tc::Status& st, Code code, const char* what) {
    CHECK(!st.ok && st.code == code, "%s: expected refusal with code %d, got ok=%d code %d", what, int(code), st.ok, int(st.code));
    CHECK(tok[0] == -99 && tok[1] == -99 && err == tc::kSampleNoError, "%s: a refused launch wrote something", what);
    if (gVerbose && !st.ok) std::printf("  refused: %s\n", st.message.c_str());
  };
  refused(tc::sample({DType::f32, 2, int64_t(1) << 24, 0, x.data(), ps.data(), tok.data(), nullptr}, &err), Code::UNSUPPORTED, "vocab 2^24");
  refused(tc::sample({DType::f32, 2, 0, 0, x.data(), ps.data(), tok.data(), nullptr}, &err), Code::UNSUPPORTED, "vocab 0");
  refused(tc::sample({DType::f32, 2, 32, 31, x.data(), ps.data(), tok.data(), nullptr}, &err), Code::INVALID_ARG, "ld < vocab");
  refused(tc::sample({DType::fp8e4m3, 2, 32, 32, x.data(), ps.data(), tok.data(), nullptr}, &err), Code::DTYPE, "fp8 logits");
  refused(tc::sample({DType::f32, 2, 32, 32, x.data(), nullptr, tok.data(), nullptr}, &err), Code::INVALID_ARG, "null params");
  refused(tc::sample({DType::f32, 2, 32, 32, x.data(), ps.data(), tok.data(), nullptr}, nullptr), Code::INTERNAL, "no error slot");
  refused(tc::sample({DType::f32, int64_t(1) << 31, 32, 32, x.data(), ps.data(), tok.data(), nullptr}, &err), Code::UNSUPPORTED, "rows 2^31");
  refused(tc::argmax({DType::f32, 2, 32, 16, x.data(), tok.data(), nullptr}, &err), Code::INVALID_ARG, "argmax ld < vocab");
  {
    tc::DeviceLimits small;
    small.smem_default = 32 << 10;  // the sampler's ~40 KiB of static shared memory does not fit
    refused(tc::sample({DType::f32, 2, 32, 32, x.data(), ps.data(), tok.data(), nullptr}, &err, nullptr, small), Code::UNSUPPORTED,
            "sample with 32 KiB of shared memory");
  }
  // MoE.
  std::vector<int32_t> ids(16, 0), off(9, -7), rows(16, -7), slot(16, -7);
  unsigned long long merr = tc::kMoeNoError;
  auto mrefused = [&](const tc::Status& st, Code code, const char* what) {
    CHECK(!st.ok && st.code == code, "%s: expected refusal with code %d, got ok=%d code %d", what, int(code), st.ok, int(st.code));
    bool same = merr == tc::kMoeNoError;
    for (int v : off) same = same && v == -7;
    for (int v : slot) same = same && v == -7;
    CHECK(same, "%s: a refused launch wrote something", what);
    if (gVerbose && !st.ok) std::printf("  refused: %s\n", st.message.c_str());
  };
  mrefused(tc::moe_permute({8, 2, tc::kMoeMaxExperts + 1, ids.data(), off.data(), rows.data(), slot.data()}, &merr), Code::UNSUPPORTED,
           "experts > max");
  mrefused(tc::moe_permute({8, 0, 8, ids.data(), off.data(), rows.data(), slot.data()}, &merr), Code::INVALID_ARG, "k = 0");
  mrefused(tc::moe_permute({int64_t(1) << 30, 4, 8, ids.data(), off.data(), rows.data(), slot.data()}, &merr), Code::UNSUPPORTED,
           "tokens * k >= 2^31");
  mrefused(tc::moe_permute({8, 2, 8, ids.data(), off.data(), rows.data(), slot.data()}, nullptr), Code::INTERNAL, "permute no slot");
  {
    tc::DeviceLimits lim;
    lim.smem_default = 16 << 10;
    lim.smem_optin = 16 << 10;  // 8192 experts need 32 KiB of dynamic shared memory
    mrefused(tc::moe_permute({8, 2, 8192, ids.data(), off.data(), rows.data(), slot.data()}, &merr, nullptr, lim), Code::UNSUPPORTED,
             "permute histogram beyond shared memory");
  }
  std::vector<float> y(64), out(64, 5.0f), w(16);
  mrefused(tc::moe_combine({DType::f32, 8, 2, 8, 8, out.data(), slot.data(), w.data(), false, out.data()}, &merr), Code::INVALID_ARG,
           "combine out aliases y");
  mrefused(tc::moe_combine({DType::fp8e4m3, 8, 2, 8, 8, y.data(), slot.data(), w.data(), false, out.data()}, &merr), Code::DTYPE,
           "combine fp8 y");
  mrefused(tc::moe_combine({DType::f32, 8, 0, 8, 8, y.data(), slot.data(), w.data(), false, out.data()}, &merr), Code::INVALID_ARG,
           "combine k = 0");
  mrefused(tc::moe_gather({DType::f32, DType::f32, 8, 8, y.data(), 4, rows.data(), 8, nullptr, out.data(), 8}, &merr), Code::INVALID_ARG,
           "gather ldx < dim");
  mrefused(tc::moe_gather({DType::f32, DType::fp8e4m3, 8, 8, y.data(), 8, rows.data(), 8, nullptr, out.data(), 8}, &merr), Code::DTYPE,
           "gather fp8 out");
  bool outsame = true;
  for (float v : out) outsame = outsame && v == 5.0f;
  CHECK(outsame, "a refused MoE launch wrote out");
}

// ---- driver ------------------------------------------------------------------------------------------
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
  std::printf("%s %-32s %8.0f ms\n", gFailures == before ? "ok  " : "FAIL", name, ms);
}

int main(int argc, char** argv) {
  bool one = false;  // -1: the forward schedule only (quick runs)
  for (int i = 1; i < argc; ++i) {
    gVerbose = gVerbose || std::string(argv[i]) == "-v";
    one = one || std::string(argv[i]) == "-1";
  }
  const cuemu::Schedule orders[] = {{cuemu::Order::Forward, 0}, {cuemu::Order::Reverse, 0}};
  for (const auto& s : orders) {
    if (one && s.order != cuemu::Order::Forward) continue;
    cuemu::set_schedule(s);
    gRng.seed(20240611);  // the same cases under both orders
    std::printf("== schedule %s\n", cuemu::schedule_name(s).c_str());
    run_test("moe permute", test_moe_permute);
    run_test("moe gather", test_moe_gather);
    run_test("moe combine", test_moe_combine);
    run_test("moe end to end", test_moe_end_to_end);
    run_test("argmax", test_argmax);
    run_test("logit adjust", test_logit_adjust);
    run_test("sample errors", test_sample_errors);
    run_test("sample small vocabularies", test_sample_small);
    run_test("sample ties / masks / k", test_sample_ties_masks);
    run_test("sample min-p threshold", test_sample_minp_threshold);
    run_test("sample precision probe", test_sample_precision_probe);
    run_test("sample TS golden", test_sample_ts_golden);
    run_test("sample batch", test_sample_batch);
    run_test("sample vocab 32003", test_sample_large);
    run_test("broken: descent no barrier", [] { test_sample_broken<1>("descent: no barrier after zeroing"); });
    run_test("broken: descent bad mask", [] { test_sample_broken<2>("descent: scan mask without lane 31"); });
    run_test("broken: draw no barrier", [] { test_sample_broken<3>("draw: no barrier between D1 and D2"); });
    run_test("broken: permute no barrier", [] { test_permute_broken<1, 0>("permute: no barrier after zeroing counts"); });
    run_test("broken: permute bad mask", [] { test_permute_broken<0, 2>("permute: scan mask without lane 0"); });
    run_test("launch checks", test_launch_checks);
  }
  std::printf("sampling: %ld draws checked against the reference inverse CDF, %ld within tolerance of a boundary; "
              "max distance of u from the returned token's reference CDF interval: %.3g\n",
              gDraws, gDrawsTol, gMaxDu);
  std::printf("%d checks, %d failures\n", gChecks, gFailures);
  return gFailures == 0 ? 0 : 1;
}
