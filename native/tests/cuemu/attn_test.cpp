// Tests for the CUDA paged-attention and KV-cache kernels (native/cuda/kernels/attention.cuh,
// kv.cuh), run on the CPU under cuemu, under the forward and the reverse schedule:
//   - kv_append, kv_copy_blocks, kv_swap_blocks BIT FOR BIT against the CPU backend's own scalar
//     kernels (native/cpu/kernels/attention.cpp, TY_ISA=scalar, linked in), every cache dtype;
//     out-of-range slots / pairs / blocks next to PROT_NONE guard pages (skipped and reported);
//   - attention against the double-precision reference (native/cpu/ref/attention_ref) computed
//     from the exact values the kernel reads: K/V dequantised from the cache the CPU's kv_append
//     wrote, q as rounded to the compute type. Batches mix sequence lengths, partial last pages,
//     shuffled pages, decode rows, chunked prefill over a cached prefix, a sequence with no query
//     rows and one with no pages; GQA 1, 2, 3, 4, 8; headDim 64, 80, 128, 256; f16 / bf16 / e4m3 /
//     e5m2 / int8 caches; windows, soft-cap; the plan's split-KV + merge and its lse;
//   - one-hot tests through the real kernel: Q.K selects one key per row (so o must equal that V
//     row exactly) and uniform weights over integer V (o = the exact mean), which pin the mma /
//     ldmatrix fragment layouts, the causal mask and the page gather;
//   - deliberately broken kernels (no barrier, no cp.async wait, a bad shuffle mask, a swapped
//     P fragment, V without .trans): each must be caught;
//   - launch checks that must refuse, and the page-table guard (bad block ids next to guard pages,
//     an indptr that disagrees with the plan).
//
// Tolerance model (|got - ref| <= tol per element, all in one place: attn_tol below):
//   CT = the compute type (bf16 for a bf16 cache, else f16); u_P = the rounding of P to CT
//   (2^-11 f16, 2^-8 bf16; twice for int8, whose P is also multiplied by the V scale ratio).
//   e = score error (natural log units) = 2^-22 (D/16 + 6) dotMag [+ 2^-20 softCap]: one f32
//   rounding per mma k16 step (budgeted at 2 ulps: tensor cores may truncate), the scale
//   multiplies, exp2's argument; dotMag = |smScale| max_t sum_i |q_i k_ti| from the reference.
//   o:   vMax (4 e + 2 u_P + (n/16 + 8) 2^-23 [+ n 2^-25 for f16: p below f16's subnormals])
//        + the output rounding (f16 2^-11 |ref| + 2^-25, bf16 2^-8 |ref| + 2^-133, f32 2^-24 |ref|)
//        o is a convex combination of V rows (l sums the rounded P), so a weight error bounds the
//        output error by vMax times twice the relative weight error.
//   lse: e + u_P + n 2^-24 + 2^-21 |lse| [+ n 2^-25 f16] + 1e-6.
//   split-KV (the plan's merge): o gets + 4 vMax lse_tol (the merge weights exp(lse_i - m)), lse
//   + 2^-22 |lse|. n = the row's attended positions.
//   kv quantisation itself is exact (bit for bit against the CPU kernel).
// Build and run: native/tests/cuemu/attn_run.sh
#include "check.h"
#include "../../cuda/kernels/attention.cuh"
#include "akernels.h"
#include "ref/attention_ref.h"
#include "tachyon/error.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

using namespace ty;
namespace tc = ty::cuda;

static std::mt19937 gRng(4242);
static const char* dn(DType t) { return dtype_name(t); }
static bool gVerbose = false;
static double gWorst[2] = {0, 0};  // worst err / tol over o and lse of the accuracy tests (f16 CT, bf16 CT)

// ---- memory ---------------------------------------------------------------------------------------
// 64-byte aligned bytes, plus `shift`.
struct Bytes {
  std::vector<unsigned char> v;
  unsigned char* p;
  size_t n;
  explicit Bytes(size_t n_ = 0, size_t shift = 0) : v(n_ + 128), n(n_) {
    const uintptr_t a = reinterpret_cast<uintptr_t>(v.data());
    p = v.data() + ((64 - (a & 63)) & 63) + shift;
  }
  Bytes(const Bytes& o) : Bytes(o.n) { std::memcpy(p, o.p, n); }
  Bytes& operator=(const Bytes& o) {
    if (this != &o) {
      Bytes t(o);
      v.swap(t.v);
      p = t.p;
      n = t.n;
      // t's buffer was swapped in; p points into it
    }
    return *this;
  }
};

// A KV cache with host storage, filled with finite garbage.
struct Cache {
  KvCache c;
  Bytes data;
  std::vector<float> scales;
  Cache(DType dt, int layers, int blocks, int kvh, int bs, int D, uint32_t seed) {
    c.dtype = dt;
    c.layers = layers;
    c.blocks = blocks;
    c.kvHeads = kvh;
    c.blockSize = bs;
    c.headDim = D;
    data = Bytes(kv_cache_data_bytes(c));
    std::mt19937 r(seed);
    for (size_t i = 0; i < data.n; ++i) data.p[i] = uint8_t(r() & 0x3b);  // finite in every format
    scales.assign(size_t(kv_cache_scale_count(c)), 0.0f);
    std::uniform_real_distribution<float> u(0.8f, 1.6f);
    for (auto& s : scales) s = kv_dtype_fp8(dt) ? u(r) * 9.0f / fp8_max(dt) : u(r) * 0.01f;
    c.data = data.p;
    c.scales = scales.empty() ? nullptr : scales.data();
  }
  Cache(const Cache& o) : c(o.c), data(o.data), scales(o.scales) {
    c.data = data.p;
    c.scales = scales.empty() ? nullptr : scales.data();
  }
  Cache& operator=(const Cache&) = delete;
  bool same(const Cache& o) const {
    return data.n == o.data.n && std::memcmp(data.p, o.data.p, data.n) == 0 && scales.size() == o.scales.size() &&
           (scales.empty() || std::memcmp(scales.data(), o.scales.data(), scales.size() * 4) == 0);
  }
};

static size_t act_bytes(DType t) { return t == DType::f32 ? 4 : 2; }
static void put_act(DType t, void* p, size_t i, float x) {
  if (t == DType::f32) std::memcpy(static_cast<char*>(p) + 4 * i, &x, 4);
  else {
    const uint16_t h = t == DType::f16 ? f32_to_f16(x) : f32_to_bf16(x);
    std::memcpy(static_cast<char*>(p) + 2 * i, &h, 2);
  }
}
static float get_act(DType t, const void* p, size_t i) {
  if (t == DType::f32) {
    float x;
    std::memcpy(&x, static_cast<const char*>(p) + 4 * i, 4);
    return x;
  }
  uint16_t h;
  std::memcpy(&h, static_cast<const char*>(p) + 2 * i, 2);
  return t == DType::f16 ? f16_to_f32(h) : bf16_to_f32(h);
}
static float round_to(DType t, float x) {
  return t == DType::f16 ? f16_to_f32(f32_to_f16(x)) : t == DType::bf16 ? bf16_to_f32(f32_to_bf16(x)) : x;
}
static DType compute_type(DType kv) { return kv == DType::bf16 ? DType::bf16 : DType::f16; }

// A region with PROT_NONE pages on both sides: [base, base + bytes) where base + bytes is the end
// of the last accessible page (so a write just past the end faults).
struct Guarded {
  unsigned char* map = nullptr;
  size_t total = 0;
  unsigned char* base = nullptr;
  Guarded(size_t bytes) {
    const size_t pg = size_t(sysconf(_SC_PAGESIZE));
    const size_t inner = (bytes + pg - 1) / pg * pg;
    total = inner + 2 * pg;
    map = static_cast<unsigned char*>(mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    mprotect(map, pg, PROT_NONE);
    mprotect(map + pg + inner, pg, PROT_NONE);
    base = map + pg + inner - bytes;
  }
  ~Guarded() { munmap(map, total); }
};

// ---- kv_append ------------------------------------------------------------------------------------
// Source rows with the awkward values: zero rows, huge (saturating), tiny (subnormal codes), inf,
// NaN (not for int8, whose NaN handling is undefined behaviour in the CPU kernel).
static std::vector<float> append_values(int64_t tokens, int H, int D, DType kv, uint32_t seed) {
  std::mt19937 r(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(size_t(tokens * H * D));
  for (int64_t t = 0; t < tokens; ++t)
    for (int h = 0; h < H; ++h) {
      const float mag = std::ldexp(1.0f, int(r() % 12) - 6);
      for (int d = 0; d < D; ++d) x[size_t((t * H + h) * D + d)] = nd(r) * mag;
    }
  // Token 0, head 0: round-to-nearest-even ties of every format (the test sets this head's fp8
  // scales to 1; 127 makes the int8 scale exactly 1).
  if (D >= 16) {
    const float ties[16] = {127.0f, 2.5f, -3.5f, 0.5f, 126.5f,            // int8 (scale 1)
                            1.0625f, 1.1875f, 0.0029296875f, -0.0009765625f,  // e4m3: 1+1/16, 1+3/16, 1.5*2^-9, 0.5*2^-9
                            1.125f, -1.375f,                               // e5m2
                            1.00048828125f, 1.00146484375f,               // f16: 1+2^-11, 1+3*2^-11
                            1.00390625f, 1.01171875f, -6.103515625e-05f};  // bf16: 1+2^-8, 1+3*2^-8; f16 min normal
    for (int d = 0; d < 16; ++d) x[size_t(d)] = ties[d];
    for (int d = 16; d < D; ++d) x[size_t(d)] = std::max(-3.0f, std::min(3.0f, x[size_t(d)]));  // int8 amax stays 127
  }
  if (tokens > 2) {
    for (int d = 0; d < D; ++d) x[size_t((1 * H + 0) * D + d)] = 0.0f;  // an all-zero row (int8 scale 0)
    float* s = &x[size_t((2 * H + (H - 1)) * D)];
    s[0] = 1e6f;        // saturates fp8
    s[1] = -7e4f;
    s[2] = 1e-7f;       // fp8 subnormal / zero
    s[3] = -3e-9f;
    s[4] = 65519.0f;    // f16 rounding edge
    s[5] = 65520.0f;    // -> f16 inf
    if (kv != DType::int8) {
      s[6] = INFINITY;
      s[7] = NAN;
      s[8] = -INFINITY;
    }
  }
  return x;
}

static void test_kv_append() {
  const DType kvs[] = {DType::f32, DType::f16, DType::bf16, DType::fp8e4m3, DType::fp8e5m2, DType::int8};
  const DType srcs[] = {DType::f32, DType::f16, DType::bf16};
  struct Shape {
    int H, bs, D;
  };
  const Shape shapes[] = {{2, 16, 64}, {3, 5, 80}, {1, 7, 256}, {2, 4, 16}};
  int runs = 0;
  for (DType kv : kvs)
    for (DType src : srcs)
      for (size_t si = 0; si < 4; ++si) {
        if ((int(kv) + int(src) + int(si)) % 2 && si != 0) continue;  // a spread, not the full product
        const Shape& sh = shapes[si];
        const int layers = 2, blocks = 5, layer = 1;
        Cache gpu(kv, layers, blocks, sh.H, sh.bs, sh.D, 7u + unsigned(si));
        if (kv_dtype_fp8(kv))  // head 0's scales 1: the tie values reach the encoder unchanged
          for (int k2 = 0; k2 < 2; ++k2) gpu.scales[size_t((layer * 2 + k2) * sh.H)] = 1.0f;
        Cache cpu(gpu);
        const int64_t tokens = 9;
        std::vector<float> kx = append_values(tokens, sh.H, sh.D, kv, 11u + unsigned(si)), vx = append_values(tokens, sh.H, sh.D, kv, 99u);
        Bytes kb(kx.size() * act_bytes(src)), vb(vx.size() * act_bytes(src));
        for (size_t i = 0; i < kx.size(); ++i) {
          put_act(src, kb.p, i, kx[i]);
          put_act(src, vb.p, i, vx[i]);
        }
        // shuffled slots over every block, one skipped token
        std::vector<int32_t> all(size_t(blocks) * sh.bs);
        std::iota(all.begin(), all.end(), 0);
        std::shuffle(all.begin(), all.end(), gRng);
        std::vector<int32_t> slots(all.begin(), all.begin() + tokens);
        slots[4] = -1;
        KvAppendArgs a;
        a.cache = cpu.c;
        a.layer = layer;
        a.tokens = tokens;
        a.srcDtype = src;
        a.k = kb.p;
        a.v = vb.p;
        a.slots = slots.data();
        SerialParallel par;
        kv_append_check(a);
        cpu::scalar::kv_append(a, par);
        a.cache = gpu.c;
        unsigned long long bad = tc::kKvNoError;
        const tc::Status st = tc::kv_append(a, &bad);
        CHECK(st.ok, "kv_append %s<-%s: %s", dn(kv), dn(src), st.message.c_str());
        CHECK(bad == tc::kKvNoError, "kv_append %s<-%s: fault slot set (%llx)", dn(kv), dn(src), bad);
        CHECK(gpu.same(cpu), "kv_append %s<-%s H=%d bs=%d D=%d: cache differs from the CPU kernel's (bit-exact expected)", dn(kv), dn(src),
              sh.H, sh.bs, sh.D);
        ++runs;
      }
  if (gVerbose) std::printf("  kv_append: %d dtype/shape combinations bit-exact\n", runs);

  // Out-of-range slots next to guard pages: one layer, the cache ends at a PROT_NONE page, so a
  // write to slot blocks * blockSize (or -2) would fault. Expected: the CPU result without them.
  for (DType kv : {DType::f16, DType::int8, DType::fp8e4m3}) {
    const int H = 1, bs = 16, D = 64, blocks = 3;
    Cache ref(kv, 1, blocks, H, bs, D, 5);
    Guarded g(ref.data.n);
    std::memcpy(g.base, ref.data.p, ref.data.n);
    KvCache gc = ref.c;
    gc.data = g.base;
    std::vector<float> gscales = ref.scales;
    gc.scales = gscales.empty() ? nullptr : gscales.data();
    const int64_t tokens = 6;
    std::vector<float> kx = append_values(tokens, H, D, DType::int8, 3), vx = append_values(tokens, H, D, DType::int8, 4);
    const int32_t nsl = blocks * bs;
    std::vector<int32_t> slots = {3, nsl, 17, -2, nsl + 1000, 40}, good = {3, -1, 17, -1, -1, 40};
    KvAppendArgs a;
    a.cache = ref.c;
    a.layer = 0;
    a.tokens = tokens;
    a.srcDtype = DType::f32;
    a.k = kx.data();
    a.v = vx.data();
    a.slots = good.data();
    SerialParallel par;
    cpu::scalar::kv_append(a, par);
    a.cache = gc;
    a.slots = slots.data();
    unsigned long long bad = tc::kKvNoError;
    CHECK(tc::kv_append(a, &bad).ok, "kv_append with bad slots must launch");
    tc::KvFault f;
    const bool flagged = tc::kv_fault(bad, &f);
    CHECK(flagged && f.kind == tc::kKvFaultIndex && f.index == 1 && f.value == nsl,
          "kv_append bad slots: expected fault (index, token 1, slot %d), got flagged=%d kind=%d index=%lld value=%d", nsl, flagged, f.kind,
          (long long)f.index, f.value);
    CHECK(std::memcmp(g.base, ref.data.p, ref.data.n) == 0 && gscales == ref.scales, "kv_append %s with bad slots: cache differs from the CPU's",
          dn(kv));
  }
  // fp8: a head whose scale is 0 is reported and left untouched; the other head matches the CPU.
  {
    const int H = 2, bs = 8, D = 64;
    Cache gpu(DType::fp8e5m2, 1, 2, H, bs, D, 8);
    Cache cpu(gpu);
    gpu.scales[1 * H + 1] = 0.0f;  // layer 0, V, head 1
    std::vector<float> kx = append_values(3, H, D, DType::fp8e5m2, 5), vx = append_values(3, H, D, DType::fp8e5m2, 6);
    std::vector<int32_t> slots = {0, 9, 15};
    KvAppendArgs a;
    a.cache = cpu.c;
    a.tokens = 3;
    a.k = kx.data();
    a.v = vx.data();
    a.slots = slots.data();
    SerialParallel par;
    Cache before(gpu);
    cpu::scalar::kv_append(a, par);
    a.cache = gpu.c;
    unsigned long long bad = tc::kKvNoError;
    CHECK(tc::kv_append(a, &bad).ok, "kv_append (zero scale) must launch");
    tc::KvFault f;
    CHECK(tc::kv_fault(bad, &f) && f.kind == tc::kKvFaultScale && f.index == 1 * H + 1, "zero fp8 scale: expected a scale fault for (V, head 1)");
    int wrong = 0;
    for (int s : slots)
      for (int kv = 0; kv < 2; ++kv)
        for (int h = 0; h < H; ++h)
          for (int d = 0; d < D; ++d) {
            const int64_t i = kv_index(gpu.c, 0, s / bs, kv, h, s % bs, d);
            const uint8_t want = (kv == 1 && h == 1) ? before.data.p[i] : cpu.data.p[i];
            wrong += gpu.data.p[i] != want;
          }
    CHECK(wrong == 0, "zero fp8 scale: %d codes wrong (the bad head must stay untouched, the others match the CPU)", wrong);
  }
}

// ---- block copy / swap ----------------------------------------------------------------------------
static void test_copy_swap() {
  for (DType kv : {DType::f16, DType::int8, DType::fp8e4m3, DType::f32}) {
    const int layers = 3, blocks = 9, H = 2, bs = 3, D = 16;  // int8: 12 scales per block (48 B: 16-aligned codes, 8-aligned host)
    Cache gpu(kv, layers, blocks, H, bs, D, 21);
    Cache cpu(gpu);
    std::vector<int32_t> pairs = {4, 0, 7, 2, 4, 8};
    KvCopyBlocksArgs a;
    a.cache = cpu.c;
    a.pairs = pairs.data();
    a.n = 3;
    kv_copy_blocks_check(a);
    SerialParallel par;
    cpu::scalar::kv_copy_blocks(a, par);
    a.cache = gpu.c;
    unsigned long long bad = tc::kKvNoError;
    CHECK(tc::kv_copy_blocks(a, &bad).ok && bad == tc::kKvNoError, "kv_copy_blocks %s", dn(kv));
    CHECK(gpu.same(cpu), "kv_copy_blocks %s: cache differs from the CPU kernel's", dn(kv));
    // swap out 3 blocks (odd count: the host rows of odd blocks are only 8-byte aligned for int8)
    std::vector<int32_t> ids = {5, 1, 8};
    const size_t hb = kv_block_host_bytes(gpu.c);
    Bytes hg(3 * hb), hc(3 * hb);
    KvSwapArgs s;
    s.cache = cpu.c;
    s.blocks = ids.data();
    s.n = 3;
    s.host = hc.p;
    s.out = true;
    kv_swap_check(s);
    cpu::scalar::kv_swap_blocks(s, par);
    s.cache = gpu.c;
    s.host = hg.p;
    CHECK(tc::kv_swap_blocks(s, &bad).ok && bad == tc::kKvNoError, "kv_swap_blocks out %s", dn(kv));
    CHECK(std::memcmp(hg.p, hc.p, 3 * hb) == 0, "kv_swap_blocks out %s: host buffer differs from the CPU's", dn(kv));
    // ... and back in to other blocks, from a host buffer shifted by 4 bytes (4-byte accesses)
    std::vector<int32_t> ids2 = {0, 6, 3};
    Bytes hs(3 * hb, 4);
    std::memcpy(hs.p, hg.p, 3 * hb);
    s.blocks = ids2.data();
    s.out = false;
    s.cache = cpu.c;
    s.host = hc.p;
    cpu::scalar::kv_swap_blocks(s, par);
    s.cache = gpu.c;
    s.host = hs.p;
    CHECK(tc::kv_swap_blocks(s, &bad).ok && bad == tc::kKvNoError, "kv_swap_blocks in %s", dn(kv));
    CHECK(gpu.same(cpu), "kv_swap_blocks in %s: cache differs from the CPU's", dn(kv));
  }
  // Bad ids next to guard pages: skipped and reported, nothing else touched.
  {
    const int layers = 1, blocks = 4, H = 1, bs = 16, D = 64;  // f16: 4096-byte blocks
    Cache ref(DType::f16, layers, blocks, H, bs, D, 3);
    Guarded g(ref.data.n);
    std::memcpy(g.base, ref.data.p, ref.data.n);
    KvCache gc = ref.c;
    gc.data = g.base;
    std::vector<int32_t> pairs = {0, 4, -1, 1, 1, 0};  // only (1 -> 0) is valid
    KvCopyBlocksArgs a;
    a.cache = gc;
    a.pairs = pairs.data();
    a.n = 3;
    unsigned long long bad = tc::kKvNoError;
    CHECK(tc::kv_copy_blocks(a, &bad).ok, "kv_copy_blocks with bad pairs must launch");
    tc::KvFault f;
    CHECK(tc::kv_fault(bad, &f) && f.kind == tc::kKvFaultIndex && f.index == 1 && f.value == 4,
          "kv_copy_blocks bad pairs: expected (index 1 = pair 0 dst, value 4), got index %lld value %d", (long long)f.index, f.value);
    const size_t cb = ref.data.n / blocks;
    CHECK(std::memcmp(g.base, ref.data.p + cb, cb) == 0 && std::memcmp(g.base + cb, ref.data.p + cb, 3 * cb) == 0,
          "kv_copy_blocks bad pairs: only pair 2 may be copied");
    std::vector<int32_t> ids = {1, 4, -5};
    Bytes host(3 * kv_block_host_bytes(gc));
    std::memset(host.p, 0x5a, host.n);
    KvSwapArgs s;
    s.cache = gc;
    s.blocks = ids.data();
    s.n = 3;
    s.host = host.p;
    bad = tc::kKvNoError;
    CHECK(tc::kv_swap_blocks(s, &bad).ok, "kv_swap_blocks with bad ids must launch");
    CHECK(tc::kv_fault(bad, &f) && f.index == 1 && f.value == 4, "kv_swap_blocks bad ids: expected (index 1, value 4)");
    CHECK(std::memcmp(host.p, g.base + cb, cb) == 0 && host.p[cb] == 0x5a && host.p[3 * cb - 1] == 0x5a,
          "kv_swap_blocks bad ids: block 1 copied out, the bad entries' host rows untouched");
    std::vector<unsigned char> before(g.base, g.base + ref.data.n);
    s.out = false;
    bad = tc::kKvNoError;
    CHECK(tc::kv_swap_blocks(s, &bad).ok, "kv_swap_blocks in with bad ids must launch");
    CHECK(tc::kv_fault(bad, &f) && f.index == 1 && std::memcmp(before.data(), g.base, ref.data.n) == 0,
          "kv_swap_blocks in with bad ids: reported, block 1 rewritten with its own bytes, nothing else touched");
  }
}

// ---- attention merge (AttentionMergeArgs) ---------------------------------------------------------
static void test_merge_op() {
  for (DType t : {DType::f32, DType::f16, DType::bf16})
    for (int alias = 0; alias < 2; ++alias) {
      const int64_t rows = 5;
      const int heads = 3, D = 40;
      const size_t n = size_t(rows * heads);
      Bytes oa(n * D * act_bytes(t)), ob(n * D * act_bytes(t)), og(n * D * act_bytes(t)), oc(n * D * act_bytes(t));
      std::vector<float> la(n), lb(n);
      std::normal_distribution<float> nd(0, 1);
      for (size_t i = 0; i < n * D; ++i) {
        put_act(t, oa.p, i, nd(gRng));
        put_act(t, ob.p, i, nd(gRng));
      }
      for (size_t i = 0; i < n; ++i) {
        la[i] = nd(gRng) * 4;
        lb[i] = nd(gRng) * 4;
      }
      la[1] = -INFINITY;
      la[2] = lb[2] = -INFINITY;
      lb[3] = -INFINITY;
      la[4] = 80.0f;
      lb[4] = -30.0f;
      AttentionMergeArgs a;
      a.dtype = t;
      a.rows = rows;
      a.heads = heads;
      a.headDim = D;
      a.oA = oa.p;
      a.lseA = la.data();
      a.oB = ob.p;
      a.lseB = lb.data();
      std::vector<float> lc(n), lg(n);
      a.o = oc.p;
      a.lse = lc.data();
      attention_merge_check(a);
      SerialParallel par;
      cpu::scalar::attention_merge(a, par);
      Bytes oaCopy(oa);
      std::vector<float> laCopy(la);
      if (alias) {  // o = oA, lse = lseA
        a.o = oa.p;
        a.lse = la.data();
      } else {
        a.o = og.p;
        a.lse = lg.data();
      }
      CHECK(tc::attention_merge(a).ok, "attention_merge %s", dn(t));
      const void* got = alias ? oa.p : og.p;
      const std::vector<float>& gl = alias ? la : lg;
      int wrong = 0;
      for (size_t i = 0; i < n; ++i) {
        // double reference from the inputs
        const double A = laCopy[i], B = lb[i], M = std::max(A, B);
        double wa = 0, wb = 0, L = -INFINITY;
        if (M != -INFINITY) {
          wa = std::exp(A - M);
          wb = std::exp(B - M);
          L = M + std::log(wa + wb);
        }
        if (!(gl[i] == L || std::fabs(gl[i] - L) <= 4e-7 * std::fabs(L) + 1e-6) || !(std::fabs(gl[i] - lc[i]) <= 4e-7 * std::fabs(L) + 1e-6 || gl[i] == lc[i]))
          ++wrong;
        for (int d = 0; d < D; ++d) {
          const double x = get_act(t, oaCopy.p, i * D + d), y = get_act(t, ob.p, i * D + d);
          const double want = M == -INFINITY ? 0.0 : (wa * x + wb * y) / (wa + wb);
          const double g = get_act(t, got, i * D + d);
          const double tol = 1e-6 * (std::fabs(x) + std::fabs(y)) + (t == DType::f16 ? 0x1p-11 : t == DType::bf16 ? 0x1p-8 : 0x1p-24) * std::fabs(want);
          if (!(std::fabs(g - want) <= tol)) ++wrong;
        }
      }
      CHECK(wrong == 0, "attention_merge %s alias=%d: %d values outside tolerance", dn(t), alias, wrong);
    }
}

// ---- attention ------------------------------------------------------------------------------------
struct AttnCase {
  std::string name;
  DType kv = DType::f16, qd = DType::f16, od = DType::f32;
  int D = 64, kvh = 2, G = 2, bs = 16;
  std::vector<int> kvLens, qLens;
  float softCap = 0.0f;
  int window = 0;
  int splitTokens = 0;
  int tk = 0;
  bool lse = true;
  int layers = 2, layer = 1;
};

struct Batch {
  AttnCase cs;
  Cache* cache = nullptr;
  std::vector<int32_t> qo, indptr, last, indices;
  std::vector<float> qv;  // [totalQ][qH][D] values as stored (qd)
  Bytes qb;
  std::vector<std::vector<float>> kd, vd;  // per sequence, dequantised [kvLen][kvh][D]
  int blocks = 0;
  float smScale = 0;
};

// Pages shuffled over the pool; K/V written by the CPU's kv_append (so the codes are the CPU's).
static void build_batch(Batch& b, uint32_t seed, const std::function<void(int seq, int t, int h, int kv, float* row)>& gen = nullptr,
                        const std::function<void(std::vector<float>& q)>& qgen = nullptr) {
  const AttnCase& cs = b.cs;
  std::mt19937 r(seed);
  int pages = 0;
  for (int L : cs.kvLens) pages += (L + cs.bs - 1) / cs.bs;
  b.blocks = pages + 3;
  b.cache = new Cache(cs.kv, cs.layers, b.blocks, cs.kvh, cs.bs, cs.D, seed + 1);
  if (gen && kv_dtype_fp8(cs.kv))
    for (auto& s : b.cache->scales) s = 1.0f;
  std::vector<int32_t> perm(size_t(b.blocks));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), r);
  b.qo = {0};
  b.indptr = {0};
  size_t next = 0;
  const int qH = cs.kvh * cs.G;
  std::normal_distribution<float> nd(0, 1);
  std::uniform_real_distribution<float> ud(0.25f, 2.0f);
  std::vector<float> kx, vx;
  std::vector<int32_t> slots;
  b.kd.resize(cs.kvLens.size());
  b.vd.resize(cs.kvLens.size());
  for (size_t s = 0; s < cs.kvLens.size(); ++s) {
    const int L = cs.kvLens[s], np = (L + cs.bs - 1) / cs.bs;
    b.qo.push_back(b.qo.back() + cs.qLens[s]);
    b.indptr.push_back(b.indptr.back() + np);
    b.last.push_back(np == 0 ? 0 : L - (np - 1) * cs.bs);
    for (int p = 0; p < np; ++p) b.indices.push_back(perm[next++]);
    std::vector<float> mag(size_t(2 * cs.kvh));
    for (auto& m : mag) m = ud(r);
    for (int t = 0; t < L; ++t) {
      for (int kv = 0; kv < 2; ++kv)
        for (int h = 0; h < cs.kvh; ++h) {
          std::vector<float> row(size_t(cs.D));
          if (gen) gen(int(s), t, h, kv, row.data());
          else
            for (auto& x : row) x = nd(r) * mag[size_t(kv * cs.kvh + h)];
          (kv ? vx : kx).insert((kv ? vx : kx).end(), row.begin(), row.end());
        }
      slots.push_back(b.indices[size_t(b.indptr[s] + t / cs.bs)] * cs.bs + t % cs.bs);
    }
  }
  KvAppendArgs a;
  a.cache = b.cache->c;
  a.layer = cs.layer;
  a.tokens = int64_t(slots.size());
  a.srcDtype = DType::f32;
  a.k = kx.data();
  a.v = vx.data();
  a.slots = slots.data();
  SerialParallel par;
  if (a.tokens > 0) {
    kv_append_check(a);
    cpu::scalar::kv_append(a, par);
  }
  for (size_t s = 0; s < cs.kvLens.size(); ++s) {
    const int L = cs.kvLens[s];
    b.kd[s].resize(size_t(L) * cs.kvh * cs.D);
    b.vd[s].resize(b.kd[s].size());
    for (int t = 0; t < L; ++t)
      for (int h = 0; h < cs.kvh; ++h)
        for (int d = 0; d < cs.D; ++d) {
          const int64_t blk = b.indices[size_t(b.indptr[s] + t / cs.bs)];
          b.kd[s][size_t((t * cs.kvh + h) * cs.D + d)] = kv_load(b.cache->c, cs.layer, blk, 0, h, t % cs.bs, d);
          b.vd[s][size_t((t * cs.kvh + h) * cs.D + d)] = kv_load(b.cache->c, cs.layer, blk, 1, h, t % cs.bs, d);
        }
  }
  b.qv.resize(size_t(b.qo.back()) * qH * cs.D);
  if (qgen) qgen(b.qv);
  else
    for (auto& x : b.qv) x = nd(r);
  b.qb = Bytes(b.qv.size() * act_bytes(cs.qd));
  for (size_t i = 0; i < b.qv.size(); ++i) {
    b.qv[i] = round_to(cs.qd, b.qv[i]);
    put_act(cs.qd, b.qb.p, i, b.qv[i]);
  }
  b.smScale = gen ? 1.0f : 1.0f / std::sqrt(float(cs.D));
}

struct RunResult {
  tc::Status st;
  Bytes o;
  std::vector<float> lse;
  unsigned long long bad = tc::kKvNoError;
  int nWork = 0, nMerge = 0;
  bool cpuAccepts = true;
};

template <int BUG = 0>
static RunResult run_gpu(Batch& b, const tc::DeviceLimits& lim = {}, const std::vector<int32_t>* indptrOverride = nullptr,
                         const std::vector<int32_t>* indicesOverride = nullptr, KvCache* cacheOverride = nullptr) {
  const AttnCase& cs = b.cs;
  const int qH = cs.kvh * cs.G;
  AttentionPlanArgs pa;
  pa.batch = int32_t(cs.kvLens.size());
  pa.qoIndptr = b.qo.data();
  pa.indptr = b.indptr.data();
  pa.lastPageLen = b.last.data();
  pa.blockSize = cs.bs;
  pa.qHeads = qH;
  pa.kvHeads = cs.kvh;
  pa.headDim = cs.D;
  pa.threads = 1;
  pa.splitTokens = cs.splitTokens;
  AttentionPlan plan;
  attention_plan(pa, &plan);
  Bytes dplan(tc::attention_plan_device_bytes(plan));
  tc::attention_plan_pack(plan, dplan.p);
  const tc::AttnDevicePlan dv = tc::attention_plan_device_view(plan, dplan.p);
  RunResult res;
  const size_t rows = size_t(b.qo.back()) * qH;
  res.o = Bytes(rows * cs.D * act_bytes(cs.od));
  std::memset(res.o.p, 0xff, res.o.n);  // NaN: every element must be written
  res.lse.assign(rows, NAN);
  std::vector<float> ws(plan.workspaceBytes / 4 + 4, NAN);
  AttentionArgs a;
  a.cache = cacheOverride ? *cacheOverride : b.cache->c;
  a.layer = cs.layer;
  a.qDtype = cs.qd;
  a.q = b.qb.p;
  a.oDtype = cs.od;
  a.o = res.o.p;
  a.lse = cs.lse ? res.lse.data() : nullptr;
  a.indptr = indptrOverride ? indptrOverride->data() : b.indptr.data();
  a.indices = indicesOverride ? indicesOverride->data() : b.indices.data();
  a.smScale = b.smScale;
  a.softCap = cs.softCap;
  a.window = cs.window;
  a.workspace = ws.data();
  res.cpuAccepts = true;  // what the CPU backend's validation says about the same call
  try {
    attention_run_check(plan, a);
  } catch (const ty::Error&) {
    res.cpuAccepts = false;
  }
  tc::AttnTuning tune;
  tune.tk = cs.tk;
  res.st = tc::detail::attention_run_impl<BUG>(plan, dv, a, &res.bad, nullptr, lim, tune);
  res.nWork = plan.nWork;
  res.nMerge = plan.nMerge;
  attention_plan_free(&plan);
  return res;
}

struct Tol {
  double o, lse;
};
// The tolerance model (see the file comment).
static Tol attn_tol(const AttnCase& cs, const ref::AttnRefOut& R, size_t r, double ref_o, bool split) {
  const DType ct = compute_type(cs.kv);
  const double uP = (ct == DType::bf16 ? 0x1p-8 : 0x1p-11) * (cs.kv == DType::int8 ? 2 : 1);
  const double n = double(R.count[r]);
  const double e = 0x1p-22 * (cs.D / 16.0 + 6) * R.dotMag[r] + (cs.softCap > 0 ? 0x1p-20 * cs.softCap : 0.0);
  const double sub = ct == DType::f16 ? n * 0x1p-25 : 0.0;
  Tol t;
  t.lse = e + uP + n * 0x1p-24 + 0x1p-21 * std::fabs(R.lse[r]) + sub + 1e-6;
  t.o = R.vMax[r] * (4 * e + 2 * uP + (n / 16 + 8) * 0x1p-23 + sub);
  if (split) {
    t.o += 4 * R.vMax[r] * t.lse;
    t.lse += 0x1p-22 * std::fabs(R.lse[r]);
  }
  t.o += cs.od == DType::f16 ? 0x1p-11 * std::fabs(ref_o) + 0x1p-25 : cs.od == DType::bf16 ? 0x1p-8 * std::fabs(ref_o) + 0x1p-133 : 0x1p-24 * std::fabs(ref_o);
  return t;
}

// Reference per sequence (q rounded to the compute type: the values the kernel multiplies).
static std::vector<ref::AttnRefOut> reference(const Batch& b) {
  const AttnCase& cs = b.cs;
  const int qH = cs.kvh * cs.G;
  const DType ct = compute_type(cs.kv);
  std::vector<ref::AttnRefOut> out(cs.kvLens.size());
  for (size_t s = 0; s < cs.kvLens.size(); ++s) {
    const int ql = cs.qLens[s];
    std::vector<float> q(size_t(ql) * qH * cs.D);
    for (size_t i = 0; i < q.size(); ++i) q[i] = round_to(ct, b.qv[size_t(b.qo[s]) * qH * cs.D + i]);
    ref::AttnRefArgs ra;
    ra.qlen = ql;
    ra.kvLen = cs.kvLens[s];
    ra.qHeads = qH;
    ra.kvHeads = cs.kvh;
    ra.headDim = cs.D;
    ra.q = q.data();
    ra.k = b.kd[s].data();
    ra.v = b.vd[s].data();
    ra.smScale = b.smScale;
    ra.softCap = cs.softCap;
    ra.window = cs.window;
    ref::attention_ref(ra, out[s]);
  }
  return out;
}

// Compares a run with the reference; returns the number of bad values.
static double gLastWorst = 0;  // worst err / tol of the last compare_attn
static int compare_attn(const Batch& b, const RunResult& res, const std::vector<ref::AttnRefOut>& refs, const char* what, bool record = true) {
  const AttnCase& cs = b.cs;
  const int qH = cs.kvh * cs.G, D = cs.D;
  const bool split = res.nMerge > 0;
  int bad = 0;
  double worst = 0;
  for (size_t s = 0; s < refs.size(); ++s) {
    const ref::AttnRefOut& R = refs[s];
    const size_t base = size_t(b.qo[s]) * qH;
    for (size_t r = 0; r < R.lse.size(); ++r) {
      for (int d = 0; d < D; ++d) {
        const double want = R.o[r * D + d], got = get_act(cs.od, res.o.p, (base + r) * D + d);
        const Tol t = attn_tol(cs, R, r, want, split);
        const double err = std::fabs(got - want);
        if (!(err <= t.o)) {
          if (bad++ < 4 && record)
            std::printf("    %s %s: seq %zu row %zu (q %zu, head %zu) d %d: got %.9g, expected %.9g (err %.3g > tol %.3g)\n", cs.name.c_str(), what,
                        s, r, r / qH, r % qH, d, got, want, err, t.o);
        } else if (t.o > 0) {
          worst = std::max(worst, err / t.o);
          if (getenv("ATTN_DEBUG") && record && err / t.o > 0.5)
            std::printf("    near tol: %s seq %zu row %zu d %d: got %.9g ref %.9g err %.3g tol %.3g (n %lld, vMax %g, dotMag %g)\n", cs.name.c_str(), s, r,
                        d, got, want, err, t.o, (long long)R.count[r], R.vMax[r], R.dotMag[r]);
        }
      }
      if (cs.lse) {
        const double want = R.lse[r], got = res.lse[base + r];
        if (std::isinf(want)) {
          if (!(std::isinf(got) && got < 0) && bad++ < 4 && record) std::printf("    %s %s: seq %zu row %zu lse %g, expected -inf\n", cs.name.c_str(), what, s, r, got);
        } else {
          const Tol t = attn_tol(cs, R, r, 0, split);
          const double err = std::fabs(got - want);
          if (!(err <= t.lse)) {
            if (bad++ < 4 && record)
              std::printf("    %s %s: seq %zu row %zu lse %.9g, expected %.9g (err %.3g > tol %.3g)\n", cs.name.c_str(), what, s, r, got, want, err,
                          t.lse);
          } else {
            worst = std::max(worst, err / t.lse);
            if (getenv("ATTN_DEBUG") && record && err / t.lse > 0.5)
              std::printf("    near tol lse: %s seq %zu row %zu: got %.9g ref %.9g err %.3g tol %.3g (n %lld)\n", cs.name.c_str(), s, r, got, want, err, t.lse,
                          (long long)R.count[r]);
          }
        }
      }
    }
  }
  double& w = gWorst[compute_type(cs.kv) == DType::bf16 ? 1 : 0];
  if (record) w = std::max(w, worst);
  gLastWorst = worst;
  return bad;
}

static void run_attn_case(const AttnCase& cs, uint32_t seed) {
  Batch b;
  b.cs = cs;
  build_batch(b, seed);
  const auto refs = reference(b);
  const RunResult res = run_gpu(b);
  CHECK(res.st.ok, "%s: %s", cs.name.c_str(), res.st.message.c_str());
  if (res.st.ok) {
    const int bad = compare_attn(b, res, refs, cs.splitTokens ? "split" : "");
    CHECK(bad == 0, "%s: %d values outside tolerance (%d work items, %d merges)", cs.name.c_str(), bad, res.nWork, res.nMerge);
    CHECK(res.bad == tc::kKvNoError, "%s: fault slot set (%llx)", cs.name.c_str(), res.bad);
    CHECK(res.cpuAccepts, "%s: the CPU backend's validation rejects this call", cs.name.c_str());
    if (cs.splitTokens > 0) CHECK(res.nMerge > 0, "%s: the plan was expected to split", cs.name.c_str());
    if (gVerbose) std::printf("  %-46s %3d items %2d merges, worst err/tol %.3f\n", cs.name.c_str(), res.nWork, res.nMerge, gLastWorst);
  }
  delete b.cache;
}

static void test_attention_accuracy() {
  std::vector<AttnCase> cases;
  auto add = [&](AttnCase c) { cases.push_back(std::move(c)); };
  {
    // A mixed batch: prefill with a partial last page, chunked prefill over a cached prefix, two
    // decode rows, a sequence with pages but no query rows, one with no pages at all.
    AttnCase c;
    c.name = "f16 G2 D64 mixed batch";
    c.kvLens = {37, 50, 20, 9, 0, 70};
    c.qLens = {37, 13, 1, 0, 0, 1};
    add(c);
    c.name = "f16 G2 D64 mixed batch, TK 16";
    c.tk = 16;
    add(c);
  }
  for (DType kv : {DType::bf16, DType::fp8e4m3, DType::fp8e5m2, DType::int8}) {
    AttnCase c;
    c.kv = kv;
    c.qd = kv == DType::bf16 ? DType::bf16 : DType::f16;
    c.od = kv == DType::bf16 ? DType::bf16 : DType::f16;
    c.name = std::string(dn(kv)) + " G4 D64 prefill+decode";
    c.G = 4;
    c.bs = 8;
    c.kvLens = {29, 40, 17};
    c.qLens = {29, 1, 5};
    c.tk = 16;
    add(c);
  }
  {
    AttnCase c;
    c.name = "f16 G3 D128 q f32 o bf16 window 9";
    c.G = 3;
    c.kvh = 1;
    c.D = 128;
    c.qd = DType::f32;
    c.od = DType::bf16;
    c.bs = 5;
    c.kvLens = {23, 31};
    c.qLens = {7, 2};
    c.window = 9;
    c.tk = 16;
    add(c);
  }
  {
    AttnCase c;
    c.name = "bf16 G1 D80 softcap 20 q f32";
    c.kv = DType::bf16;
    c.G = 1;
    c.kvh = 3;
    c.D = 80;
    c.qd = DType::f32;
    c.bs = 16;
    c.kvLens = {21, 12};
    c.qLens = {21, 3};
    c.softCap = 20.0f;
    c.tk = 16;
    add(c);
  }
  {
    AttnCase c;
    c.name = "e4m3 G8 D256 decode q bf16";
    c.kv = DType::fp8e4m3;
    c.qd = DType::bf16;
    c.G = 8;
    c.kvh = 1;
    c.D = 256;
    c.bs = 16;
    c.kvLens = {40, 19};
    c.qLens = {1, 2};
    c.tk = 16;
    add(c);
  }
  {
    // split-KV: decode and a few prefill rows over long-ish ranges, merged like the CPU
    AttnCase c;
    c.name = "f16 G4 D64 split-KV 24 decode";
    c.G = 4;
    c.kvh = 1;
    c.bs = 8;
    c.kvLens = {70, 45};
    c.qLens = {1, 3};
    c.splitTokens = 24;
    c.tk = 16;
    add(c);
    c.name = "int8 G2 D64 split-KV 20 window 30";
    c.kv = DType::int8;
    c.G = 2;
    c.kvLens = {61};
    c.qLens = {2};
    c.splitTokens = 20;
    c.window = 30;
    add(c);
    c.name = "bf16 G4 D128 split-KV 32 no lse";
    c.kv = DType::bf16;
    c.qd = DType::bf16;
    c.od = DType::f32;
    c.D = 128;
    c.G = 4;
    c.kvLens = {50};
    c.qLens = {1};
    c.splitTokens = 32;
    c.window = 0;
    c.lse = false;
    add(c);
  }
  {
    AttnCase c;
    c.name = "e5m2 G2 D64 TK 64 longer prefill";
    c.kv = DType::fp8e5m2;
    c.G = 2;
    c.kvh = 1;
    c.bs = 32;
    c.kvLens = {100};
    c.qLens = {35};
    add(c);
  }
  {
    // R = 40 rows: three row blocks, the fourth warp idle
    AttnCase c;
    c.name = "f16 G1 D64 40 query rows (3 row blocks)";
    c.G = 1;
    c.kvh = 2;
    c.bs = 16;
    c.kvLens = {90};
    c.qLens = {40};
    add(c);
  }
  {
    // decode, R = G: 16 rows (4 key groups), 32 (2), 64 (1 per item)
    AttnCase c;
    c.name = "f16 G16 D128 long decode, batch of 3";
    c.G = 16;
    c.kvh = 2;
    c.D = 128;
    c.bs = 16;
    c.kvLens = {300, 77, 129};
    c.qLens = {1, 1, 1};
    add(c);
    c.name = "bf16 G32 D64 decode";
    c.kv = DType::bf16;
    c.qd = DType::bf16;
    c.G = 32;
    c.kvh = 1;
    c.D = 64;
    c.kvLens = {150, 64};
    c.qLens = {1, 2};
    add(c);
    c.name = "f16 G64 D64 decode + 2 rows";
    c.kv = DType::f16;
    c.qd = DType::f16;
    c.G = 64;
    c.kvLens = {70};
    c.qLens = {2};
    add(c);
  }
  {
    AttnCase c;
    c.name = "f16 G2 D64 blockSize 1";
    c.bs = 1;
    c.kvLens = {17, 5};
    c.qLens = {17, 1};
    add(c);
    c.name = "f16 G2 D64 blockSize 64 (pages > tile)";
    c.bs = 64;
    c.kvLens = {150, 3};
    c.qLens = {20, 3};
    add(c);
  }
  // every head size the CPU accepts, with the mma k-steps and V n-tiles cut at D
  for (int D : {16, 32, 48, 96, 112, 144, 192, 256}) {
    AttnCase c;
    c.name = "f16 G2 D" + std::to_string(D) + " prefill+decode";
    c.D = D;
    c.G = 2;
    c.kvh = 1;
    c.bs = 8;
    c.kvLens = {45, 33};
    c.qLens = {9, 1};
    c.qd = D % 32 ? DType::bf16 : DType::f16;  // q bf16 into an f16 compute type
    add(c);
  }
  {
    // chunked prefill over a long cached prefix: two 32-position items per KV head
    AttnCase c;
    c.name = "int8 G2 D128 chunked prefill 50 over 200";
    c.kv = DType::int8;
    c.G = 2;
    c.kvh = 2;
    c.D = 128;
    c.bs = 16;
    c.kvLens = {200};
    c.qLens = {50};
    add(c);
    c.name = "e4m3 G3 D64 softcap 30, kvh 3";
    c.kv = DType::fp8e4m3;
    c.G = 3;
    c.kvh = 3;
    c.D = 64;
    c.bs = 7;
    c.kvLens = {60, 26};
    c.qLens = {11, 1};
    c.softCap = 30.0f;
    add(c);
    c.name = "f16 G4 D128 window 40 decode batch of 6";
    c.kv = DType::f16;
    c.G = 4;
    c.kvh = 2;
    c.D = 128;
    c.bs = 16;
    c.kvLens = {130, 40, 41, 1, 99, 64};
    c.qLens = {1, 1, 2, 1, 1, 1};
    c.softCap = 0.0f;
    c.window = 40;
    add(c);
  }
  uint32_t seed = 100;
  for (const AttnCase& c : cases) run_attn_case(c, seed++);
}

// int8 V rows that are all zero over whole 16-token groups (scale 0: the group adds nothing) and a
// V scale that jumps by 10^4 between groups (O's unit changes): against the reference.
static void test_int8_scales() {
  AttnCase c;
  c.name = "int8 zero and jumping V scales";
  c.kv = DType::int8;
  c.G = 4;
  c.kvh = 1;
  c.D = 64;
  c.bs = 16;
  c.kvLens = {80};
  c.qLens = {3};
  c.tk = 32;
  Batch b;
  b.cs = c;
  std::mt19937 r(5);
  std::normal_distribution<float> nd(0, 1);
  build_batch(b, 55, [&](int, int t, int, int kv, float* row) {
    const float mag = kv == 0 ? 1.0f : (t / 16 == 1 ? 0.0f : t / 16 == 3 ? 1e-4f : 1.0f);
    for (int d = 0; d < c.D; ++d) row[d] = nd(r) * mag;
  });
  b.smScale = 0.125f;
  const auto refs = reference(b);
  const RunResult res = run_gpu(b);
  CHECK(res.st.ok, "%s: %s", c.name.c_str(), res.st.message.c_str());
  CHECK(compare_attn(b, res, refs, "") == 0, "%s: values outside tolerance", c.name.c_str());
  delete b.cache;
}

// The same batch split and unsplit: the outputs agree with each other within both tolerances and
// the split plan's lse matches.
static void test_split_consistency() {
  AttnCase c;
  c.name = "split vs unsplit";
  c.G = 2;
  c.kvh = 2;
  c.bs = 16;
  c.kvLens = {90};
  c.qLens = {2};
  c.tk = 16;
  Batch b;
  b.cs = c;
  build_batch(b, 77);
  const RunResult whole = run_gpu(b);
  b.cs.splitTokens = 16;
  const RunResult parts = run_gpu(b);
  const auto refs = reference(b);
  CHECK(whole.st.ok && parts.st.ok && whole.nMerge == 0 && parts.nMerge > 0, "split consistency: runs");
  int bad = 0;
  for (size_t r = 0; r < refs[0].lse.size(); ++r) {
    const Tol tw = attn_tol(b.cs, refs[0], r, 0, false), tp = attn_tol(b.cs, refs[0], r, 0, true);
    if (!(std::fabs(whole.lse[r] - parts.lse[r]) <= tw.lse + tp.lse)) ++bad;
    for (int d = 0; d < c.D; ++d)
      if (!(std::fabs(get_act(c.od, whole.o.p, r * c.D + d) - get_act(c.od, parts.o.p, r * c.D + d)) <= tw.o + tp.o)) ++bad;
  }
  CHECK(bad == 0, "split vs unsplit: %d values differ beyond the two tolerances", bad);
  delete b.cache;
}

// ---- one-hot tests ---------------------------------------------------------------------------------
// Q.K selects one key per row: K[t] = e_(t mod D) (t < D, so keys are distinct), Q row r =
// 200 e_(sel(r) mod D), smScale 1: the selected score is 200, every other 0, exp(-200) is 0 in f32,
// so o must be exactly V[sel(r)] and lse exactly 200 up to the f32 log2e round trip. Every
// (row, key) pairing seen over the `rounds` moves a value through the S accumulator layout, the
// P -> A fragment, the V ldmatrix.trans and the O accumulator layout.
static double onehot_v(DType kv, int t, int d) {
  if (kv == DType::f16 || kv == DType::bf16) return double((t * 37 + d * 11) % 251 - 125) * 0.25;
  return double((t * 7 + d * 3) % 15 - 7);  // exact in e4m3 / e5m2 with scale 1
}

template <int BUG = 0>
static int onehot_select(DType kv, int D, int G, int kvLen, int tk, int rounds, bool report) {
  int wrong = 0, launches = 0;
  for (int round = 0; round < rounds; ++round) {
    AttnCase c;
    c.name = "one-hot select";
    c.kv = kv;
    c.qd = kv == DType::bf16 ? DType::bf16 : DType::f16;
    c.od = DType::f32;
    c.D = D;
    c.G = G;
    c.kvh = 2;
    c.bs = 7;  // pages end mid-tile
    c.kvLens = {kvLen};
    c.qLens = {kvLen};  // full causal prefill: query qi sees keys 0..qi
    c.tk = tk;
    c.layers = 1;
    c.layer = 0;
    const int qH = c.kvh * G;
    auto sel = [&](int qi, int h) { return (qi * 5 + h * 3 + round * 7) % (qi + 1); };
    Batch b;
    b.cs = c;
    build_batch(
        b, 500 + unsigned(round),
        [&](int, int t, int h, int kv2, float* row) {
          for (int d = 0; d < D; ++d) row[d] = kv2 ? float(onehot_v(kv, t + 64 * h, d)) : (d == t % D ? 1.0f : 0.0f);
        },
        [&](std::vector<float>& q) {
          std::fill(q.begin(), q.end(), 0.0f);
          for (int qi = 0; qi < kvLen; ++qi)
            for (int h = 0; h < qH; ++h) q[size_t((qi * qH + h) * D + sel(qi, h) % D)] = 200.0f;
        });
    const RunResult res = run_gpu<BUG>(b);
    ++launches;
    if (!res.st.ok) {
      if (report) CHECK(false, "one-hot: %s", res.st.message.c_str());
      delete b.cache;
      return -1;
    }
    for (int qi = 0; qi < kvLen; ++qi)
      for (int h = 0; h < qH; ++h) {
        const int t = sel(qi, h), kh = h / G;
        for (int d = 0; d < D; ++d) {
          const double got = get_act(DType::f32, res.o.p, size_t((qi * qH + h) * D + d));
          const double want = b.vd[0][size_t((t * c.kvh + kh) * D + d)];
          if (got != want) {
            if (report && wrong < 3)
              std::printf("    one-hot select %s D%d G%d round %d: q %d head %d (key %d) d %d: got %g, expected %g\n", dn(kv), D, G, round, qi, h, t,
                          d, got, want);
            ++wrong;
          }
        }
        const double l = res.lse[size_t(qi * qH + h)];
        if (!(std::fabs(l - 200.0) <= 1e-4)) ++wrong;
      }
    delete b.cache;
  }
  if (report) {
    CHECK(wrong == 0, "one-hot select %s D%d G%d kvLen %d TK %d: %d wrong values over %d launches", dn(kv), D, G, kvLen, tk, wrong, launches);
    if (gVerbose) std::printf("  one-hot select %s D%d G%d kvLen %d TK %d: %d launches\n", dn(kv), D, G, kvLen, tk, launches);
  }
  return wrong;
}

// Uniform weights (Q = 0) over integer V: o = the mean of the visible V rows, computed exactly in
// f32 up to the one rounding of the 1/l product (every P is exactly 1, every partial sum an
// integer). Pins the V fragment mapping for every (position, dim) at once.
static void onehot_mean(DType kv, int D, int G, int kvLen, int tk, int window) {
  AttnCase c;
  c.name = "one-hot mean";
  c.kv = kv;
  c.qd = DType::f16;
  c.od = DType::f32;
  c.D = D;
  c.G = G;
  c.kvh = 1;
  c.bs = 5;
  c.kvLens = {kvLen};
  c.qLens = {kvLen};
  c.tk = tk;
  c.window = window;
  c.layers = 1;
  c.layer = 0;
  Batch b;
  b.cs = c;
  build_batch(
      b, 900, [&](int, int t, int, int kv2, float* row) {
        for (int d = 0; d < D; ++d) row[d] = kv2 ? float(onehot_v(kv, t, d)) : 0.5f;
      },
      [&](std::vector<float>& q) { std::fill(q.begin(), q.end(), 0.0f); });
  const RunResult res = run_gpu(b);
  CHECK(res.st.ok, "one-hot mean: %s", res.st.message.c_str());
  int wrong = 0;
  for (int qi = 0; qi < kvLen; ++qi) {
    const int lo = window > 0 ? std::max(0, qi - window + 1) : 0;
    for (int h = 0; h < G; ++h)
      for (int d = 0; d < D; ++d) {
        double sum = 0;
        for (int t = lo; t <= qi; ++t) sum += b.vd[0][size_t(t * D + d)];
        const float want = float(sum) * (1.0f / float(qi - lo + 1));
        const float got = get_act(DType::f32, res.o.p, size_t((qi * G + h) * D + d));
        if (got != want) {
          if (wrong < 3) std::printf("    one-hot mean %s D%d: q %d head %d d %d: got %.9g, expected %.9g\n", dn(kv), D, qi, h, d, got, want);
          ++wrong;
        }
      }
  }
  CHECK(wrong == 0, "one-hot mean %s D%d G%d kvLen %d window %d: %d wrong values", dn(kv), D, G, kvLen, window, wrong);
  delete b.cache;
}

static void test_onehot() {
  onehot_select(DType::f16, 64, 2, 64, 16, 6, true);
  onehot_select(DType::f16, 64, 1, 50, 64, 4, true);
  onehot_select(DType::bf16, 64, 3, 30, 32, 4, true);
  onehot_select(DType::fp8e4m3, 64, 1, 40, 16, 3, true);
  onehot_select(DType::fp8e5m2, 64, 4, 16, 32, 2, true);
  onehot_select(DType::f16, 128, 4, 17, 16, 3, true);
  onehot_select(DType::bf16, 128, 8, 8, 64, 2, true);
  onehot_select(DType::f16, 80, 2, 12, 16, 2, true);
  onehot_select(DType::f16, 256, 2, 20, 32, 2, true);
  onehot_mean(DType::f16, 64, 2, 36, 16, 0);
  onehot_mean(DType::f16, 64, 1, 70, 64, 0);
  onehot_mean(DType::bf16, 128, 1, 20, 16, 7);
  onehot_mean(DType::fp8e5m2, 64, 4, 18, 32, 0);
  onehot_mean(DType::fp8e4m3, 256, 2, 25, 16, 9);
}

// ---- broken variants --------------------------------------------------------------------------------
template <int BUG>
static void test_broken(const char* what, bool viaOnehot) {
  std::string how;
  bool caught = false;
  try {
    if (viaOnehot) {
      const int wrong = onehot_select<BUG>(DType::f16, 64, 2, 24, 16, 1, false);
      caught = wrong != 0;
      how = std::to_string(wrong) + " one-hot values wrong";
    } else {
      AttnCase c;
      c.name = what;
      c.G = 2;
      c.kvLens = {40};
      c.qLens = {6};
      c.tk = 16;
      Batch b;
      b.cs = c;
      build_batch(b, 31);
      const auto refs = reference(b);
      const RunResult res = run_gpu<BUG>(b);
      const int bad = compare_attn(b, res, refs, "broken", false);
      caught = bad != 0;
      how = std::to_string(bad) + " values wrong";
      delete b.cache;
    }
  } catch (const cuemu::Error& e) {
    caught = true;
    how = std::string("cuemu error: ") + e.what();
    const size_t nl = how.find('\n');
    if (nl != std::string::npos) how.resize(nl);
  }
  CHECK(caught, "broken attention (%s) was NOT caught", what);
  std::printf("  broken attention (%s) under %s: %s -> %s\n", what, cuemu::schedule_name(cuemu::schedule()).c_str(), caught ? "CAUGHT" : "missed",
              how.c_str());
}

// ---- launch checks and the page-table guard ---------------------------------------------------------
static void test_refusals() {
  AttnCase c;
  c.name = "refusals";
  c.D = 256;
  c.G = 2;
  c.kvh = 1;
  c.kvLens = {20};
  c.qLens = {2};
  Batch b;
  b.cs = c;
  build_batch(b, 61);
  auto untouched = [](const RunResult& r) {
    for (size_t i = 0; i < r.o.n; ++i)
      if (r.o.p[i] != 0xff) return false;
    return true;
  };
  // shared memory: D = 256 needs ~68 KiB even at TK 16; refused on a 40 KiB device
  {
    tc::DeviceLimits lim;
    lim.smem_optin = 40 << 10;
    const RunResult r = run_gpu(b, lim);
    CHECK(!r.st.ok && r.st.code == Code::UNSUPPORTED && untouched(r), "D 256 on a 40 KiB device: expected UNSUPPORTED, nothing written");
    std::printf("  refused: %s\n", r.st.message.c_str());
    lim.smem_optin = 99 << 10;  // sm_89: the automatic tile shrinks to 16 and runs
    const RunResult r2 = run_gpu(b, lim);
    CHECK(r2.st.ok, "D 256 on a 99 KiB device must run (TK 16): %s", r2.st.message.c_str());
    b.cs.tk = 64;  // ... but a forced 64-token tile does not fit
    const RunResult r3 = run_gpu(b, lim);
    CHECK(!r3.st.ok && r3.st.code == Code::UNSUPPORTED, "forced TK 64 at D 256 on 99 KiB: expected UNSUPPORTED");
    b.cs.tk = 48;
    CHECK(run_gpu(b).st.code == Code::INVALID_ARG, "TK 48 must be refused");
    b.cs.tk = 0;
  }
  {
    Batch& bb = b;
    // refused by both backends' validation
    bb.cs.qd = DType::int8;
    RunResult r0 = run_gpu(bb);
    CHECK(!r0.st.ok && r0.st.code == Code::DTYPE && !r0.cpuAccepts && untouched(r0), "q int8 must be refused (DTYPE)");
    bb.cs.qd = DType::f16;
    bb.cs.od = DType::fp8e4m3;
    r0 = run_gpu(bb);
    CHECK(!r0.st.ok && r0.st.code == Code::DTYPE && !r0.cpuAccepts, "o fp8 must be refused (DTYPE)");
    bb.cs.od = DType::f32;
    bb.cs.softCap = -1.0f;
    r0 = run_gpu(bb);
    CHECK(r0.st.code == Code::INVALID_ARG && !r0.cpuAccepts, "negative softCap must be refused");
    bb.cs.softCap = NAN;
    r0 = run_gpu(bb);
    CHECK(r0.st.code == Code::INVALID_ARG && !r0.cpuAccepts, "NaN softCap must be refused");
    bb.cs.softCap = 0.0f;
    bb.cs.window = -3;
    r0 = run_gpu(bb);
    CHECK(r0.st.code == Code::INVALID_ARG && !r0.cpuAccepts, "negative window must be refused");
    bb.cs.window = 0;
    KvCache wrong = bb.cache->c;
    wrong.headDim = 128;
    r0 = run_gpu(bb, {}, nullptr, nullptr, &wrong);
    CHECK(r0.st.code == Code::SHAPE && !r0.cpuAccepts, "a cache whose headDim differs from the plan must be refused (SHAPE)");
    wrong = bb.cache->c;
    wrong.layers = 1;  // layer 1 no longer exists
    r0 = run_gpu(bb, {}, nullptr, nullptr, &wrong);
    CHECK(r0.st.code == Code::INVALID_ARG && !r0.cpuAccepts, "a layer outside the cache must be refused");
    wrong = bb.cache->c;
    wrong.data = static_cast<unsigned char*>(wrong.data) + 2;
    const RunResult r = run_gpu(bb, {}, nullptr, nullptr, &wrong);
    CHECK(!r.st.ok && untouched(r), "a misaligned cache must be refused");
    wrong = bb.cache->c;
    wrong.dtype = DType::f32;
    const RunResult r2 = run_gpu(bb, {}, nullptr, nullptr, &wrong);
    CHECK(!r2.st.ok && r2.st.code == Code::UNSUPPORTED, "an f32 cache must be refused (UNSUPPORTED)");
    std::printf("  refused: %s\n", r2.st.message.c_str());
  }
  delete b.cache;
  // a plan whose item is inconsistent with its sequences
  {
    std::vector<int32_t> qo = {0, 1}, ip = {0, 1}, last = {3};
    AttentionPlanArgs pa;
    pa.batch = 1;
    pa.qoIndptr = qo.data();
    pa.indptr = ip.data();
    pa.lastPageLen = last.data();
    pa.blockSize = 4;
    pa.qHeads = 2;
    pa.kvHeads = 1;
    pa.headDim = 64;
    AttentionPlan plan;
    attention_plan(pa, &plan);
    std::vector<AttnWork> w(plan.work, plan.work + plan.nWork);
    w[0].kvEnd = 9;  // past kvLen 3
    AttentionPlan bad = plan;
    bad.work = w.data();
    Cache cache(DType::f16, 1, 2, 1, 4, 64, 1);
    Bytes q(2 * 64 * 2), o(2 * 64 * 4);
    std::vector<int32_t> idx = {0};
    AttentionArgs a;
    a.cache = cache.c;
    a.qDtype = DType::f16;
    a.q = q.p;
    a.o = o.p;
    a.indptr = ip.data();
    a.indices = idx.data();
    Bytes dp(tc::attention_plan_device_bytes(bad));
    tc::attention_plan_pack(bad, dp.p);
    unsigned long long slot = tc::kKvNoError;
    const tc::Status st = tc::attention_run(bad, tc::attention_plan_device_view(bad, dp.p), a, &slot);
    CHECK(!st.ok && st.code == Code::INVALID_ARG, "an inconsistent plan item must be refused");
    std::printf("  refused: %s\n", st.message.c_str());
    CHECK(!tc::attention_run(plan, tc::attention_plan_device_view(bad, dp.p), a, nullptr).ok, "no error slot must be refused");
    attention_plan_free(&plan);
  }
  // kv ops
  {
    Cache cache(DType::f16, 2, 3, 1, 4, 64, 1);
    KvAppendArgs a;
    a.cache = cache.c;
    a.layer = 2;
    a.tokens = 1;
    unsigned long long slot = tc::kKvNoError;
    CHECK(tc::kv_append(a, &slot).code == Code::INVALID_ARG, "kv_append layer out of range");
    a.layer = 0;
    a.srcDtype = DType::int8;
    int32_t s0 = 0;
    float x[64] = {};
    a.k = x;
    a.v = x;
    a.slots = &s0;
    CHECK(tc::kv_append(a, &slot).code == Code::DTYPE, "kv_append int8 source");
    a.srcDtype = DType::f32;
    a.cache.headDim = 72;
    CHECK(tc::kv_append(a, &slot).code == Code::INVALID_ARG, "kv_append headDim 72");
    a.cache = cache.c;
    a.cache.dtype = DType::i32;
    CHECK(tc::kv_append(a, &slot).code == Code::DTYPE, "kv_append i32 cache");
    KvCopyBlocksArgs cpy;
    cpy.cache = cache.c;
    cpy.n = 4;
    cpy.pairs = &s0;
    CHECK(tc::kv_copy_blocks(cpy, &slot).code == Code::INVALID_ARG, "kv_copy_blocks n > blocks");
    CHECK(slot == tc::kKvNoError, "refused launches must not touch the slot");
  }
  CHECK(tc::attn::layout(128, 64, false, 2).total <= (99 << 10), "D 128 TK 64 f16 must fit sm_89's 99 KiB");
  CHECK(tc::attn::layout(128, 64, true, 2).total <= (99 << 10), "D 128 TK 64 fp8 must fit sm_89's 99 KiB");
}

static void test_page_guard() {
  // Cache: one layer, 4 blocks of 4096 bytes (f16, 1 head, bs 16, D 64) between guard pages, so a
  // read of block -1 or block 4 faults.
  const int D = 64, bs = 16;
  AttnCase c;
  c.name = "page guard";
  c.G = 2;
  c.kvh = 1;
  c.bs = bs;
  c.D = D;
  c.kvLens = {40, 20};
  c.qLens = {3, 1};
  c.layers = 1;
  c.layer = 0;
  Batch b;
  b.cs = c;
  build_batch(b, 71);
  Guarded g(b.cache->data.n);
  std::memcpy(g.base, b.cache->data.p, b.cache->data.n);
  KvCache gc = b.cache->c;
  gc.data = g.base;
  // sequence 0's second page -> block id `blocks` (just past the end), sequence 1's page -> -1
  std::vector<int32_t> idx = b.indices;
  idx[1] = b.blocks;
  idx[3] = -1;
  RunResult r = run_gpu(b, {}, nullptr, &idx, &gc);
  CHECK(r.st.ok, "page guard: %s", r.st.message.c_str());
  tc::KvFault f;
  CHECK(tc::kv_fault(r.bad, &f) && f.kind == tc::kKvFaultIndex && f.index == 1 && f.value == b.blocks,
        "page guard: expected (index, position 1, block %d), got kind %d index %lld value %d", b.blocks, f.kind, (long long)f.index, f.value);
  int nonfinite = 0;
  for (size_t i = 0; i < r.o.n / 4; ++i) nonfinite += !std::isfinite(get_act(DType::f32, r.o.p, i));
  CHECK(nonfinite == 0, "page guard: %d outputs not finite (bad pages must read as zeros)", nonfinite);
  // indptr that disagrees with the plan: sequence 1 claims 2 pages instead of 2 ... shift it
  std::vector<int32_t> ip = b.indptr;
  ip[1] -= 1;  // sequence 0: one page short, sequence 1: one page long
  r = run_gpu(b, {}, &ip, nullptr, &gc);
  CHECK(r.st.ok, "page table mismatch: %s", r.st.message.c_str());
  CHECK(tc::kv_fault(r.bad, &f) && f.kind == tc::kKvFaultPageTable && f.index == 0,
        "page table mismatch: expected (page table, sequence 0), got kind %d index %lld", f.kind, (long long)f.index);
  int nz = 0;
  for (size_t i = 0; i < size_t(c.qLens[0] + c.qLens[1]) * 2 * D; ++i) nz += get_act(DType::f32, r.o.p, i) != 0.0f;
  bool lseInf = true;
  for (size_t i = 0; i < r.lse.size(); ++i) lseInf = lseInf && std::isinf(r.lse[i]) && r.lse[i] < 0;
  CHECK(nz == 0 && lseInf, "page table mismatch: rows must be 0 with lse -inf (%d non-zero)", nz);
  delete b.cache;
}

// ---- driver -------------------------------------------------------------------------------------------
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
  std::fflush(stdout);
}

int main(int argc, char** argv) {
  gVerbose = argc > 1 && std::string(argv[1]) == "-v";
  const cuemu::Schedule orders[] = {{cuemu::Order::Forward, 0}, {cuemu::Order::Reverse, 0}};
  for (const auto& s : orders) {
    cuemu::set_schedule(s);
    std::printf("== schedule %s\n", cuemu::schedule_name(s).c_str());
    run_test("kv_append (bit-exact vs CPU)", test_kv_append);
    run_test("kv copy / swap (bit-exact vs CPU)", test_copy_swap);
    run_test("attention_merge op", test_merge_op);
    run_test("attention accuracy", test_attention_accuracy);
    run_test("attention split consistency", test_split_consistency);
    run_test("attention int8 scales", test_int8_scales);
    run_test("attention one-hot", test_onehot);
    run_test("broken: no barrier", [] { test_broken<1>("no __syncthreads after the cp.async wait", false); });
    run_test("broken: no cp.async wait", [] { test_broken<2>("no cp.async wait", false); });
    run_test("broken: bad shuffle mask", [] { test_broken<3>("shuffle mask 0x0000ffff", false); });
    run_test("broken: P fragment swapped", [] { test_broken<4>("P registers 1 and 2 swapped", true); });
    run_test("broken: V without .trans", [] { test_broken<5>("V ldmatrix without .trans", true); });
    run_test("launch refusals", test_refusals);
    run_test("page-table guard", test_page_guard);
  }
  std::printf("worst err/tol: f16 compute %.3f, bf16 compute %.3f\n", gWorst[0], gWorst[1]);
  std::printf("%d checks, %d failures\n", gChecks, gFailures);
  return gFailures == 0 ? 0 : 1;
}
