// Tachyon CUDA kernels: token sampling on the device, one thread block per row of logits.
// Semantics: lib/model/sampler.ts as specified in docs/sampling.md (the TS sampler is the oracle):
//   bias -> penalties (logit_adjust) -> greedy | top-k -> temperature -> softmax -> top-p -> min-p
//   -> renormalise -> inverse-CDF draw walking the survivors in ascending id order.
// The caller supplies each row's uniform u in [0, 1) (the request's seeded stream, Sampler's
// rng()), so the TS side keeps deciding the randomness; the kernel maps u exactly as sample()
// does: target = u * total, the token is the first survivor (ids ascending) whose cumulative
// mass exceeds target, or the last survivor when rounding runs past the end.
//
// Ops (host helpers return Status and validate before launching):
//   argmax(ArgmaxArgs, err)          per row: the argmax (ties -> lowest id) and, optionally, its
//                                    processed logprob at T = 1 (= -log sum exp(x - max)).
//   sample(SampleArgs, err)          per row: greedy (temperature 0) or the full pipeline; the
//                                    token and, optionally, its processed logprob (log-softmax of
//                                    x / T over the whole vocabulary, before truncation).
//   logit_adjust(LogitAdjustArgs, err)  in place on f32 logits: logit bias, then repetition /
//                                    frequency / presence penalties, for sparse per-row entries.
//
// Bad logits are reported like the TS sampler reports them (it throws E_INVALID_ARG): a row with
// NaN (first NaN id), +Infinity, or every logit -Infinity gets token -1 and logprob NaN, and the
// error slot `err` (device u64, kSampleNoError before the launch) is lowered to
// row << 32 | kind << 24 | index, so sample_error() names the first bad row. Bad per-row
// parameters (device memory, so checked on the device) are reported the same way.
//
// Design (block of 512 threads per row; see the "Sampling" section of the kernels README):
//   P1  max pass: the max as a 56-bit composite key (order-preserving f32 bits << 24 | (2^24-1-id))
//       so one u64 max gives the max and the lowest id among ties; NaN / +inf / all -inf.
//   P2  exp pass: e = expf((x - m) * (1/T)) in f32 (0 below -87, as TS), S = sum e (f32 Kahan
//       per thread, double across threads), the fixed-point mass sum Sq (e * 2^40 truncated,
//       u64: exact and order-independent), the count of e > 0, and the level-0 histogram of the
//       composite's top 11 bits (counts, and masses when top-p is on) in shared memory.
//   Top-k / top-p cut: a radix descent over the composite key, 11 bits then 8 bits per level:
//       each level finds the boundary bin from the histogram (warp 0: per-lane sums + a warp
//       scan), then, unless the cut is settled, one more pass histograms that bin's members on
//       the next 8 bits. Top-k counts to rank k; top-p accumulates fixed-point mass to
//       top_p * (mass of the top-k set, or Sq). Typical logits settle in 1-2 levels; massive
//       ties go down to the id bits (at most 7 levels). No sort, no candidate buffer, any k.
//       The cut is a composite threshold: survivors = e > 0 && key >= cut && min-p predicate
//       (d >= ln(min_p), decided in double near the threshold, exactly as TS).
//   D1  draw pass: the row is split into 16 contiguous parts (one per warp); per part the
//       survivors' mass (f32 Kahan per lane, double per part). target = u * total, and the part
//       where the cumulative mass crosses it. A part longer than 2 steps of the walk is split
//       once more the same way (the whole block over 1/16 of the row), so the walk below covers
//       at most ~1/256 of the row.
//   D2  that part's warp walks it in id order, 32 * VEC ids at a time (warp scan in double),
//       and picks the first survivor whose cumulative mass exceeds the target. Rounding that
//       runs past the end of a range picks that range's last survivor (TS: `last`).
//   top_k = 1 (or one token with e > 0) skips the cut and the draw: the argmax.
// Everything is deterministic: integer atomics only, fixed reduction orders.
//
// Differences from the TS sampler (all at floating-point tolerance; the order of stages, the
// tie rules, the candidate sets and the u -> token mapping are the same):
//   - e = expf(f32 scaled log-ratio) instead of TS's double table exp (relative error 2e-12):
//     CDF boundaries move by ~1e-7 relative on a GPU (expf <= 2 ulp), so a u that close to a
//     boundary may give the neighbouring token. Measured under cuemu (glibc expf): 3572 draws,
//     u within 1e-8 of boundaries included, all inside the reference token's CDF interval; and
//     72 golden draws of the real TS sampler reproduced exactly. Tests allow 1e-5.
//   - top-p accumulates fixed-point masses (2^-40 units, truncated) of those f32 e: a nucleus
//     whose cumulative mass is within ~1e-6 relative of top_p * mass may end one token off.
//   - the -87 cut is taken on the f32 scaled log-ratio: a token within ~1e-5 of it (probability
//     <= 1.6e-38 relative to the top token) may count as alive or not.
//   - 1/T is clamped to FLT_MAX in the f32 passes (only T < 3e-39 is affected).
//   - logprob is an f32, from the f32 exps (~1e-6 absolute); TS's `top` alternatives are not
//     computed here. Errors go to the slot instead of throwing.
#pragma once

#include "common.cuh"

#include <cfloat>

namespace ty {
namespace cuda {
inline namespace TY_CUDA_BUILD {  // see common.cuh

// ---- public API ---------------------------------------------------------------------------------

constexpr unsigned long long kSampleNoError = ~0ull;

enum class SampleErrorKind : uint32_t {
  nan_logit = 1,     // index: the first NaN id
  pos_inf = 2,       // index: the first +Infinity id
  all_masked = 3,    // every logit is -Infinity
  bad_param = 4,     // index: 0 temperature, 1 top_k, 2 top_p, 3 min_p, 4 u
  bad_adjust = 5,    // logit_adjust: index = entry (ids out of range / not strictly increasing,
                     // or a row_ptr out of order)
};

struct SampleFailure {
  int64_t row = -1;
  SampleErrorKind kind = SampleErrorKind::nan_logit;
  int32_t index = 0;
};

// Decodes the error slot after the stream syncs; false when no row failed.
inline bool sample_error(unsigned long long slot, SampleFailure* f) {
  if (slot == kSampleNoError) return false;
  f->row = int64_t(slot >> 32);
  f->kind = SampleErrorKind(uint32_t(slot >> 24) & 0xffu);
  f->index = int32_t(slot & 0xffffffu);
  return true;
}

// One row's sampling parameters (device memory, [rows]); the TS SamplingOptions after defaults.
struct SampleRow {
  double temperature = 1.0;  // 0 = greedy; otherwise finite > 0 with 1/T finite
  double top_p = 1.0;        // (0, 1]; 1 = off
  double min_p = 0.0;        // [0, 1]; 0 = off
  double u = 0.0;            // [0, 1): this row's uniform (ignored when greedy)
  int32_t top_k = 0;         // >= 0; 0 = off; >= vocab = off
  int32_t reserved = 0;
};

struct SampleArgs {
  DType dtype = DType::f32;         // logits: f32, f16 or bf16
  int64_t rows = 0, vocab = 0;      // vocab in [1, 2^24)
  int64_t ld = 0;                   // elements between rows; 0 = every row reads row 0
  const void* logits = nullptr;     // [rows, ld] (after logit_adjust when bias / penalties apply)
  const SampleRow* params = nullptr;
  int32_t* token = nullptr;         // [rows]; -1 for a failed row
  float* logprob = nullptr;         // [rows] or null; NaN for a failed row
};

struct ArgmaxArgs {
  DType dtype = DType::f32;
  int64_t rows = 0, vocab = 0, ld = 0;
  const void* logits = nullptr;
  int32_t* token = nullptr;
  float* logprob = nullptr;  // optional: log-softmax at T = 1 of the argmax
};

// Sparse per-row logit adjustments (CSR): entries row_ptr[r] .. row_ptr[r+1]-1 of row r, ids
// strictly increasing. For each entry, as Sampler.applyBiasAndPenalties (all biases first, then
// one penalty per distinct window token; per id the two compose the same way):
//   w = f32(double(w) + bias)                                     (bias 0: no change)
//   if count > 0: x = w > 0 ? w / rep : w * rep;  w = f32(x - (count * freq + presence))
// in double, no fused multiply-add, like the JS numbers.
struct PenaltyRow {
  double repetition = 1.0, frequency = 0.0, presence = 0.0;
};
struct LogitAdjustArgs {
  int64_t rows = 0, vocab = 0, ld = 0;
  float* logits = nullptr;            // f32 [rows, ld], modified in place (ld >= vocab)
  int64_t nnz = 0;                    // entries in all
  const int32_t* row_ptr = nullptr;   // [rows + 1]
  const int32_t* ids = nullptr;       // [nnz]
  const double* bias = nullptr;       // [nnz] or null (no bias)
  const int32_t* count = nullptr;     // [nnz] or null (no penalties): occurrences in the window
  const PenaltyRow* penalty = nullptr;  // [rows] (needed when count is given)
};

constexpr int kSampleThreads = 512;
constexpr int kSampleWarps = kSampleThreads / 32;
constexpr int64_t kSampleMaxVocab = int64_t(1) << 24;

// ---- device helpers -----------------------------------------------------------------------------
namespace sdetail {

using u64 = unsigned long long;
constexpr int kL0Bits = 11, kL0Bins = 1 << kL0Bits;  // level 0: the composite's top 11 bits
constexpr int kLnBits = 8, kLnBins = 1 << kLnBits;   // deeper levels: 8 bits each
constexpr int kCompBits = 56;                        // 32 key bits + 24 id bits
constexpr uint32_t kIdMask = (1u << 24) - 1;
constexpr float kExpCut = -87.0f;             // TS: scaled log-ratio below -87 -> probability 0
constexpr float kMassScale = 1099511627776.0f;  // 2^40: fixed-point mass units

// Double arithmetic without contraction (the TS side computes in unfused doubles).
TY_DEV double dadd(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
TY_DEV double dsub(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dsub_rn(a, b);
#else
  return a - b;
#endif
}
TY_DEV double dmul(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

TY_DEV u64 umax64(u64 a, u64 b) { return a > b ? a : b; }
TY_DEV uint32_t umin32(uint32_t a, uint32_t b) { return a < b ? a : b; }

// Order-preserving key of a non-NaN f32: larger value -> larger key; -0 orders as +0.
TY_DEV uint32_t ord_key(float x) {
  uint32_t b = __float_as_uint(x);
  if (b == 0x80000000u) b = 0;
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
TY_DEV float key_float(uint32_t k) { return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k); }
// (value descending, id ascending) as one unsigned order: larger composite = better token.
TY_DEV u64 composite(uint32_t key, uint32_t id) { return (u64(key) << 24) | u64(kIdMask - id); }

// The scaled log-ratio to the max in f32, the way every pass computes it (so every pass agrees
// on each token). x == m gives exactly 0 even when inv_t is huge.
TY_DEV float scaled(float x, float m, float inv_t) { return x == m ? 0.0f : (x - m) * inv_t; }
TY_DEV bool alive(float d) { return d >= kExpCut; }  // e > 0 (TS: d >= -EXP_CUT); false for NaN
TY_DEV u64 quant(float e) { return static_cast<u64>(e * kMassScale); }  // e in (0, 1]

// Min-p: d = (x - m) / T >= ln(min_p), decided like TS (double) whenever f32 is not clear.
struct MinP {
  bool on;
  double t;   // ln(min_p)
  float tf, margin;
  double m, inv_t;
};
TY_DEV bool minp_ok(const MinP& p, float x, float d) {
  if (!p.on) return true;
  if (d > p.tf + p.margin) return true;
  if (d < p.tf - p.margin) return false;
  return dmul(dsub(double(x), p.m), p.inv_t) >= p.t;
}

// Reads V elements of a row as f32: thread `tid` of `nth` takes VEC-wide chunks tid, tid+nth, ...
// (U chunk loads in flight: 64 bytes per thread when vectorized, 4 scalars otherwise; f is
// inlined U * VEC times, so more would only cost registers), then the scalar tail. f(x, id) sees
// each thread's ids in increasing order.
template <class T, int VEC, int NTH, class F>
TY_DEV void for_row(const T* row, int V, int tid, F&& f) {
  constexpr int U = VEC == 1 ? 4 : 64 / (VEC * int(sizeof(T)));
  const int nvec = V / VEC;
  const Pack<T, VEC>* p = reinterpret_cast<const Pack<T, VEC>*>(row);
  for (int c0 = tid; c0 < nvec; c0 += NTH * U) {
    Pack<T, VEC> pk[U];
#pragma unroll
    for (int u = 0; u < U; ++u)
      if (c0 + u * NTH < nvec) pk[u] = p[c0 + u * NTH];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int c = c0 + u * NTH;
      if (c < nvec) {
#pragma unroll
        for (int v = 0; v < VEC; ++v) f(to_f32(pk[u].v[v]), c * VEC + v);
      }
    }
  }
  for (int i = nvec * VEC + tid; i < V; i += NTH) f(to_f32(row[i]), i);
}

// Shared-memory histogram add with a one-entry run cache: a thread whose consecutive tokens fall
// in the same bin (massive ties) does one atomic per run instead of one per token.
struct RunCache {
  int bin = -1;
  uint32_t cnt = 0;
  u64 mass = 0;
  TY_DEV void add(int b, u64 q, unsigned* hc, u64* hm) {
    if (b != bin) {
      flush(hc, hm);
      bin = b;
    }
    ++cnt;
    mass += q;
  }
  TY_DEV void flush(unsigned* hc, u64* hm) {
    if (cnt) {
      atomicAdd(hc + bin, cnt);
      if (mass) atomicAdd(hm + bin, mass);
    }
    cnt = 0;
    mass = 0;
  }
};

// Result of a boundary search (shared memory, written by warp 0).
struct Bound {
  int found;
  int bin;
  uint32_t above_c, cnt;  // above_c: count of everything ranked before the bin (absolute)
  u64 above_m, mass;
};

// Shared memory of the sampling kernel. ARGMAX: only the reduction buffers.
template <bool ARGMAX>
struct SampleSmem {
  u64 ra[kSampleThreads];
  u64 rb[kSampleThreads];
  double rd[kSampleThreads];
  u64 bu[4];
  double bd[4];
  unsigned h0c[kL0Bins];  // level-0 histogram, kept for both descents
  u64 h0m[kL0Bins];
  unsigned hc[kLnBins];  // deeper levels
  u64 hm[kLnBins];
  Bound bound[2];  // alternating: a search may start before every thread has read the last one
  int seg;  // D1 -> D2: the segment holding the draw (-1: none), its relative target
  double seg_target;
  int last_id;  // the last survivor overall (fallback)
};
template <>
struct SampleSmem<true> {
  u64 ra[kSampleThreads];
  u64 rb[kSampleThreads];
  double rd[kSampleThreads];
  u64 bu[4];
  double bd[4];
};

// Finds the first bin (walking bins from the top, i.e. best tokens first) at which the running
// count reaches `need_c` (by_mass false) or the running fixed-point mass reaches `need_m`, counting
// from the absolute offsets base_c / base_m. Warp 0: each lane sums NB/32 consecutive bins, a warp
// scan gives each lane its offset, and the one lane whose range crosses walks its bins. All
// threads call it; the result is in *res after the trailing barrier.
template <int NB, int BUG>
TY_DEV void find_boundary(const unsigned* hc, const u64* hm, bool by_mass, uint32_t base_c, uint32_t need_c, u64 base_m,
                          double need_m, Bound* res) {
  if (threadIdx.x < 32) {
    constexpr int PER = NB / 32;
    const int lane = threadIdx.x;
    const int hi = NB - 1 - lane * PER;
    uint32_t c = 0;
    u64 m = 0;
    for (int j = 0; j < PER; ++j) {
      c += hc[hi - j];
      m += hm[hi - j];
    }
    uint32_t ci = c;
    u64 mi = m;
    // BUG 2 (test only): a shuffle mask without lane 31.
    constexpr unsigned kMask = BUG == 2 ? 0x7fffffffu : 0xffffffffu;
    for (int o = 1; o < 32; o <<= 1) {
      const uint32_t tc = __shfl_up_sync(kMask, ci, o);
      const u64 tm = __shfl_up_sync(kMask, mi, o);
      if (lane >= o) {
        ci += tc;
        mi += tm;
      }
    }
    auto reached = [&](uint32_t cc, u64 mm) {
      return by_mass ? double(base_m + mm) >= need_m : base_c + cc >= need_c;
    };
    const bool mine = reached(ci, mi) && !reached(ci - c, mi - m);
    if (mine) {
      uint32_t cc = ci - c;
      u64 mm = mi - m;
      for (int j = 0; j < PER; ++j) {
        const int b = hi - j;
        const uint32_t nc = cc + hc[b];
        const u64 nm = mm + hm[b];
        if (reached(nc, nm)) {
          res->found = 1;
          res->bin = b;
          res->above_c = base_c + cc;
          res->above_m = base_m + mm;
          res->cnt = hc[b];
          res->mass = hm[b];
          break;
        }
        cc = nc;
        mm = nm;
      }
    }
    if (__ballot_sync(0xffffffffu, mine) == 0 && lane == 0) *res = Bound{0, 0, base_c, 0, base_m, 0};
  }
  __syncthreads();
}

struct Cut {
  u64 cut;        // survivors: composite >= cut
  u64 mass;       // fixed-point mass of the survivors of this stage
};

// Radix descent over the composite key of the e > 0 tokens. by_mass false: the top `rank`
// tokens; true: the shortest prefix whose fixed-point mass reaches `target`. Level 0 uses the
// histogram P2 built (sm.h0c / h0m); each deeper level is one pass over the row restricted to
// the boundary bin. track_mass: also accumulate masses (needed for the top-k set's mass).
template <class T, int VEC, int BUG>
TY_DEV Cut descend(SampleSmem<false>& sm, int& parity, const T* row, int V, float m, float inv_t, bool by_mass, bool track_mass,
                   uint32_t rank, double target) {
  const int tid = threadIdx.x;
  find_boundary<kL0Bins, BUG>(sm.h0c, sm.h0m, by_mass, 0, rank, 0, target, &sm.bound[parity]);
  Bound b = sm.bound[parity];
  parity ^= 1;
  u64 prefix = u64(b.found ? b.bin : 0);
  int shift = kCompBits - kL0Bits;
  for (;;) {
    if (!b.found) return {prefix << shift, b.above_m};  // not reached (cannot happen): keep all
    const bool done = by_mass ? b.cnt == 1 : b.above_c + b.cnt == rank;
    if (done || shift == 0) return {prefix << shift, b.above_m + b.mass};
    const int width = shift < kLnBits ? shift : kLnBits;
    const int nshift = shift - width;
    const uint32_t dmask = (1u << width) - 1u;
    // The previous find_boundary ended with a barrier, so nobody still reads these bins.
    if (tid < kLnBins) {
      sm.hc[tid] = 0;
      sm.hm[tid] = 0;
    }
    if (BUG != 1) __syncthreads();  // BUG 1 (test only): histogram zeroing races the adds
    RunCache rc;
    for_row<T, VEC, kSampleThreads>(row, V, tid, [&](float x, int id) {
      const u64 c = composite(ord_key(x), uint32_t(id));
      if ((c >> shift) != prefix) return;
      const float d = scaled(x, m, inv_t);
      if (!alive(d)) return;
      rc.add(int((c >> nshift) & dmask), track_mass ? quant(expf(d)) : 0, sm.hc, sm.hm);
    });
    rc.flush(sm.hc, sm.hm);
    __syncthreads();
    find_boundary<kLnBins, BUG>(sm.hc, sm.hm, by_mass, b.above_c, rank, b.above_m, target, &sm.bound[parity]);
    const Bound nb = sm.bound[parity];
    parity ^= 1;
    if (nb.found) {
      prefix = (prefix << width) | u64(nb.bin);
      shift = nshift;
      b = nb;
    } else {
      b.found = 0;
    }
  }
}

// Block reduction through shared memory: every thread's value into buf, one barrier, warp 0
// combines (fixed order), one barrier; every thread returns the result.
template <class T, class Op>
TY_DEV T block_reduce(T v, T* buf, T* out, Op op) {
  const int tid = threadIdx.x;
  buf[tid] = v;
  __syncthreads();
  if (tid < 32) {
    T a = buf[tid];
    for (int j = tid + 32; j < int(blockDim.x); j += 32) a = op(a, buf[j]);
    for (int o = 16; o > 0; o >>= 1) a = op(a, __shfl_xor_sync(0xffffffffu, a, o));
    if (tid == 0) *out = a;
  }
  __syncthreads();
  return *out;
}

TY_DEV void report(unsigned long long* err, int64_t row, SampleErrorKind kind, uint32_t index) {
  atomicMin(err, (static_cast<unsigned long long>(row) << 32) | (u64(uint32_t(kind)) << 24) | u64(index & 0xffffffu));
}

}  // namespace sdetail

// ---- the kernel ---------------------------------------------------------------------------------
// ARGMAX: argmax (+ logprob at T = 1) only; params unused. BUG: test-only broken variants
// (1: a missing barrier, 2: a bad shuffle mask, 3: no barrier between the draw's two passes).
template <class T, int VEC, bool ARGMAX, int BUG>
__global__ void __launch_bounds__(kSampleThreads, 1)
    sample_kernel(const T* logits, int64_t ld, int V, const SampleRow* params, int32_t* token, float* logprob,
                  unsigned long long* err) {
  using namespace sdetail;
  __shared__ SampleSmem<ARGMAX> sm;
  const int tid = threadIdx.x;
  const int64_t r = blockIdx.x;
  const T* row = logits + r * ld;

  auto fail = [&](SampleErrorKind kind, uint32_t index) {
    if (tid == 0) {
      token[r] = -1;
      if (logprob) logprob[r] = __int_as_float(0x7fc00000);
      report(err, r, kind, index);
    }
  };

  // Parameters (every thread reads them: uniform control flow).
  double temp = 0.0, top_p = 1.0, min_p = 0.0, u = 0.0;
  int top_k = 0;
  if (!ARGMAX) {
    const SampleRow p = params[r];
    temp = p.temperature;
    top_p = p.top_p;
    min_p = p.min_p;
    u = p.u;
    top_k = p.top_k;
    const double inv = 1.0 / temp;
    if (!(temp == 0.0 || (temp > 0.0 && inv <= DBL_MAX && temp <= DBL_MAX))) return fail(SampleErrorKind::bad_param, 0);
    if (top_k < 0) return fail(SampleErrorKind::bad_param, 1);
    if (!(top_p > 0.0 && top_p <= 1.0)) return fail(SampleErrorKind::bad_param, 2);
    if (!(min_p >= 0.0 && min_p <= 1.0)) return fail(SampleErrorKind::bad_param, 3);
    if (temp != 0.0 && !(u >= 0.0 && u < 1.0)) return fail(SampleErrorKind::bad_param, 4);
  }
  const bool greedy = ARGMAX || temp == 0.0;

  // ---- P1: max (as the best composite), first NaN ---------------------------------------------
  if constexpr (!ARGMAX) {
    // Level-0 histogram zeroed here; the reductions' barriers order it before P2.
    for (int i = tid; i < kL0Bins; i += kSampleThreads) {
      sm.h0c[i] = 0;
      sm.h0m[i] = 0;
    }
  }
  u64 best = 0;  // 0: no non-NaN value (every composite of a non-NaN value is > 0)
  uint32_t nan_first = 0xffffffffu;
  for_row<T, VEC, kSampleThreads>(row, V, tid, [&](float x, int id) {
    if (x != x) nan_first = umin32(nan_first, uint32_t(id));
    else best = umax64(best, composite(ord_key(x), uint32_t(id)));
  });
  best = block_reduce(best, sm.ra, &sm.bu[0], [](u64 a, u64 b) { return a > b ? a : b; });
  nan_first = uint32_t(block_reduce(u64(nan_first), sm.rb, &sm.bu[1], [](u64 a, u64 b) { return a < b ? a : b; }));
  const uint32_t best_key = uint32_t(best >> 24);
  const int argmax = int(kIdMask - uint32_t(best & kIdMask));
  const float m = key_float(best_key);
  if (best == 0) return fail(SampleErrorKind::nan_logit, nan_first);  // all NaN
  if (m == INFINITY) return fail(SampleErrorKind::pos_inf, uint32_t(argmax));
  if (m == -INFINITY) {
    if (nan_first != 0xffffffffu) return fail(SampleErrorKind::nan_logit, nan_first);
    return fail(SampleErrorKind::all_masked, 0);
  }
  if (nan_first != 0xffffffffu) return fail(SampleErrorKind::nan_logit, nan_first);

  const double inv_t = greedy ? 1.0 : 1.0 / temp;
  const float inv_tf = float(inv_t < double(FLT_MAX) ? inv_t : double(FLT_MAX));

  // ---- greedy / argmax ----------------------------------------------------------------------
  if (greedy) {
    if (!logprob) {
      if (tid == 0) token[r] = argmax;
      return;
    }
    float s = 0.0f, comp = 0.0f;
    for_row<T, VEC, kSampleThreads>(row, V, tid, [&](float x, int) {
      const float d = scaled(x, m, 1.0f);
      if (alive(d)) {
        const float y = expf(d) - comp, t = s + y;
        comp = (t - s) - y;
        s = t;
      }
    });
    const double S = block_reduce(double(s), sm.rd, &sm.bd[0], [](double a, double b) { return a + b; });
    if (tid == 0) {
      token[r] = argmax;
      logprob[r] = float(-log(S));
    }
    return;
  }

  if constexpr (!ARGMAX) {
    // ---- P2: S, Sq, npos, level-0 histogram ---------------------------------------------------
    const bool want_p = top_p < 1.0;
    const bool want_hist = (top_k > 0 && top_k < V) || want_p;
    float s = 0.0f, comp = 0.0f;
    u64 sq = 0;
    uint32_t npos = 0;
    {
      RunCache rc;
      for_row<T, VEC, kSampleThreads>(row, V, tid, [&](float x, int id) {
        const float d = scaled(x, m, inv_tf);
        if (!alive(d)) return;
        const float e = expf(d);
        const float y = e - comp, t = s + y;
        comp = (t - s) - y;
        s = t;
        const u64 q = quant(e);
        sq += q;
        ++npos;
        if (want_hist) rc.add(int(ord_key(x) >> (32 - kL0Bits)), want_p ? q : 0, sm.h0c, sm.h0m);
      });
      rc.flush(sm.h0c, sm.h0m);
      (void)comp;
    }
    const double S = block_reduce(double(s), sm.rd, &sm.bd[0], [](double a, double b) { return a + b; });
    const u64 Sq = block_reduce(sq, sm.ra, &sm.bu[0], [](u64 a, u64 b) { return a + b; });
    const uint32_t Npos = uint32_t(block_reduce(u64(npos), sm.rb, &sm.bu[1], [](u64 a, u64 b) { return a + b; }));

    // ---- top-k, then top-p on the top-k distribution ------------------------------------------
    u64 cut = 0;
    int parity = 0;
    u64 base = Sq;  // the mass top-p measures against: the top-k set's (or everything's)
    const bool single = top_k == 1 || Npos == 1;  // one survivor: the argmax, no cut or draw needed
    if (!single && top_k > 0 && uint32_t(top_k) < Npos) {
      const Cut c = descend<T, VEC, BUG>(sm, parity, row, V, m, inv_tf, false, want_p, uint32_t(top_k), 0.0);
      cut = c.cut;
      base = c.mass;
    }
    if (!single && want_p) {
      const double target = top_p * double(base);
      if (target <= double(base)) {  // else rounding: the whole set is the nucleus
        const Cut c = descend<T, VEC, BUG>(sm, parity, row, V, m, inv_tf, true, true, 0, target);
        cut = umax64(cut, c.cut);
      }
    }
    MinP mp;
    mp.on = min_p > 0.0;
    mp.t = mp.on ? log(min_p) : 0.0;
    mp.tf = float(mp.t);
    mp.margin = float(fabs(mp.t) * 1e-6 + 1e-30);
    mp.m = double(m);
    mp.inv_t = inv_t;

    auto survivor_e = [&](float x, int id, float* e) {
      const float d = scaled(x, m, inv_tf);
      if (!alive(d)) return false;
      if (composite(ord_key(x), uint32_t(id)) < cut) return false;
      if (!minp_ok(mp, x, d)) return false;
      *e = expf(d);
      return true;
    };

    // ---- the draw: locate the crossing part of the row, then walk it ---------------------------
    const int lane = tid % 32, warp = tid / 32;
    // The lane's VEC elements at i0 (a multiple of VEC) of the range ending at hi; -inf past it.
    auto load_chunk = [&](int i0, int hi, float (&xv)[VEC]) {
      if (i0 + VEC <= hi) {
        const Pack<T, VEC> pk = *reinterpret_cast<const Pack<T, VEC>*>(row + i0);
#pragma unroll
        for (int v = 0; v < VEC; ++v) xv[v] = to_f32(pk.v[v]);
      } else {
#pragma unroll
        for (int v = 0; v < VEC; ++v) xv[v] = i0 + v < hi ? to_f32(row[i0 + v]) : -INFINITY;
      }
    };
    // Warp w's part of [lo, hi): contiguous, a multiple of VEC long, so vector loads stay aligned.
    auto part_of = [&](int lo, int hi, int w, int* plo, int* phi) {
      const int len = ((hi - lo + kSampleWarps - 1) / kSampleWarps + VEC - 1) / VEC * VEC;
      *plo = lo + w * len < hi ? lo + w * len : hi;
      *phi = *plo + len < hi ? *plo + len : hi;
    };
    // D1: every warp sums the survivors' mass over its part of [lo, hi) (f32 Kahan per lane,
    // double per part, in lane order), then warp 0 scans the 16 parts: the first part whose
    // inclusive prefix exceeds the target (u * the range's total when from_u), the target
    // relative to that part, and the range's last survivor. Results in sm.seg / seg_target /
    // last_id after the trailing barrier.
    auto locate = [&](int lo, int hi, bool from_u, double target_in) {
      int plo, phi;
      part_of(lo, hi, warp, &plo, &phi);
      float ls = 0.0f, lc = 0.0f;
      int last = -1;
      for (int b0 = plo; b0 < phi; b0 += 32 * VEC) {
        const int i0 = b0 + lane * VEC;
        if (i0 >= phi) continue;
        float xv[VEC];
        load_chunk(i0, phi, xv);
#pragma unroll
        for (int v = 0; v < VEC; ++v) {
          float e;
          if (survivor_e(xv[v], i0 + v, &e)) {
            const float y = e - lc, t = ls + y;
            lc = (t - ls) - y;
            ls = t;
            last = i0 + v;
          }
        }
      }
      sm.rd[tid] = double(ls);
      sm.ra[tid] = u64(int64_t(last) + 1);  // 0: none
      __syncthreads();
      if (tid < 32) {
        double partsum = 0.0;
        u64 partlast = 0;
        if (lane < kSampleWarps)
          for (int j = 0; j < 32; ++j) {
            partsum += sm.rd[lane * 32 + j];
            partlast = umax64(partlast, sm.ra[lane * 32 + j]);
          }
        double incl = partsum;
        for (int o = 1; o < 32; o <<= 1) {
          const double t = __shfl_up_sync(0xffffffffu, incl, o);
          if (lane >= o) incl += t;
        }
        const double target = from_u ? u * __shfl_sync(0xffffffffu, incl, 31) : target_in;
        const unsigned hit = __ballot_sync(0xffffffffu, lane < kSampleWarps && incl > target);
        const int seg = hit ? __ffs(int(hit)) - 1 : -1;
        const double before = __shfl_sync(0xffffffffu, incl - partsum, seg < 0 ? 0 : seg);
        u64 last_all = partlast;
        for (int o = 16; o > 0; o >>= 1) last_all = umax64(last_all, __shfl_xor_sync(0xffffffffu, last_all, o));
        if (lane == 0) {
          sm.seg = seg;
          sm.seg_target = target - before;
          sm.last_id = int(int64_t(last_all) - 1);
        }
      }
      if (BUG != 3) __syncthreads();  // BUG 3 (test only): the parts are read before they are set
    };

    int lo = 0, hi = V, seg = -1, chosen = -1;
    double target = 0.0;
    if (single) {
      chosen = argmax;  // u is still consumed by the caller's stream, as TS draws once per call
    } else {
      locate(0, V, true, 0.0);
      seg = sm.seg;
      target = sm.seg_target;
      if (seg >= 0) {
        part_of(0, V, seg, &lo, &hi);
        // A long part: split it once more with the whole block, so that the one-warp walk
        // below covers at most ~1/256 of the row.
        if (hi - lo > 2 * 32 * VEC) {
          locate(lo, hi, false, target);
          const int seg2 = sm.seg;
          if (seg2 >= 0) {
            part_of(lo, hi, seg2, &lo, &hi);
            seg = seg2;
            target = sm.seg_target;
          } else {
            seg = -1;  // rounding: the target lies past this part's mass; its last survivor
          }
        }
      }
      if (seg < 0) chosen = sm.last_id;  // rounding ran past the end of the range: TS's `last`
    }

    // ---- D2: the crossing part's warp walks it in id order, 32 * VEC ids per step ---------------
    if (seg >= 0 && warp == seg) {
      double acc = 0.0;
      int last = -1;
      bool done = false;
      for (int b0 = lo; b0 < hi && !done; b0 += 32 * VEC) {
        const int i0 = b0 + lane * VEC;
        float xv[VEC], ev[VEC];
        double lsum = 0.0;
        bool any = false;
        int llast = -1;
#pragma unroll
        for (int v = 0; v < VEC; ++v) xv[v] = -INFINITY;  // lanes past the part: no survivors
        if (i0 < hi) load_chunk(i0, hi, xv);
#pragma unroll
        for (int v = 0; v < VEC; ++v) {
          ev[v] = 0.0f;
          if (survivor_e(xv[v], i0 + v, &ev[v])) {
            lsum += double(ev[v]);
            any = true;
            llast = i0 + v;
          }
        }
        double incl = lsum;
        for (int o = 1; o < 32; o <<= 1) {
          const double t = __shfl_up_sync(0xffffffffu, incl, o);
          if (lane >= o) incl += t;
        }
        const double chunk = __shfl_sync(0xffffffffu, incl, 31);
        int cl = llast;
        for (int o = 16; o > 0; o >>= 1) {
          const int t = __shfl_xor_sync(0xffffffffu, cl, o);
          cl = t > cl ? t : cl;
        }
        if (acc + chunk > target) {
          const unsigned hit = __ballot_sync(0xffffffffu, any && acc + incl > target);
          const int L = hit ? __ffs(int(hit)) - 1 : 31;
          int pick = -1;
          if (lane == L) {
            double run = acc + (incl - lsum);
            for (int v = 0; v < VEC; ++v)
              if (ev[v] > 0.0f) {
                run += double(ev[v]);
                pick = i0 + v;
                if (run > target) break;
              }
          }
          pick = __shfl_sync(0xffffffffu, pick, L);
          chosen = pick >= 0 ? pick : cl;
          done = true;
        } else {
          acc += chunk;
          if (cl >= 0) last = cl;
        }
      }
      if (!done) chosen = last;  // rounding: the part's last survivor
    }
    if ((seg < 0 && tid == 0) || (seg >= 0 && warp == seg && lane == 0)) {
      if (chosen < 0 || chosen >= V) chosen = argmax;  // cannot happen (the top token survives); never index out of the row
      token[r] = chosen;
      if (logprob) {
        const float x = to_f32(row[chosen]);
        logprob[r] = float(dsub(dmul(dsub(double(x), double(m)), inv_t), log(S)));
      }
    }
  }
}

// ---- logit bias + penalties, in place --------------------------------------------------------------
constexpr int kAdjustThreads = 128;

template <int BUG>
__global__ void __launch_bounds__(kAdjustThreads)
    logit_adjust_kernel(float* logits, int64_t ld, int V, int64_t nnz, const int32_t* row_ptr, const int32_t* ids,
                        const double* bias, const int32_t* count, const PenaltyRow* pen, unsigned long long* err) {
  using namespace sdetail;
  __shared__ unsigned bad_entry;
  const int64_t r = blockIdx.x;
  const int tid = threadIdx.x;
  const int64_t b = row_ptr[r], e = row_ptr[r + 1];
  if (!(b >= 0 && b <= e && e <= nnz)) {
    if (tid == 0) report(err, r, SampleErrorKind::bad_adjust, uint32_t(b < 0 || b > nnz ? 0 : b));
    return;
  }
  if (tid == 0) bad_entry = 0xffffffffu;
  __syncthreads();
  // Check every entry first (ids in range, strictly increasing): a bad row is left untouched.
  bool bad = false;
  for (int64_t j = b + tid; j < e; j += kAdjustThreads) {
    const int32_t id = ids[j];
    const bool ok = id >= 0 && id < V && (j == b || ids[j - 1] < id);
    if (!ok) {
      atomicMin(&bad_entry, uint32_t(j < 0xffffffLL ? j : 0xffffff));
      bad = true;
    }
  }
  if (__syncthreads_or(bad)) {
    if (tid == 0) report(err, r, SampleErrorKind::bad_adjust, bad_entry);
    return;
  }
  float* row = logits + r * ld;
  const PenaltyRow p = count ? pen[r] : PenaltyRow{};
  for (int64_t j = b + tid; j < e; j += kAdjustThreads) {
    const int32_t id = ids[j];
    float w = row[id];
    if (bias) w = float(dadd(double(w), bias[j]));
    if (count && count[j] > 0) {
      double x = double(w);
      x = x > 0.0 ? x / p.repetition : dmul(x, p.repetition);
      w = float(dsub(x, dadd(dmul(double(count[j]), p.frequency), p.presence)));
    }
    row[id] = w;
  }
}

// ---- host helpers ---------------------------------------------------------------------------------
namespace detail {

inline Status sample_common_checks(const char* op, int64_t rows, int64_t vocab, int64_t ld, const void* logits, const void* token,
                                   const unsigned long long* err) {
  for (Status st : {need_int(rows, "rows", op), need_int(vocab, "vocab", op)})
    if (!st.ok) return st;
  if (vocab < 1 || vocab >= kSampleMaxVocab)
    return Status::fail(Code::UNSUPPORTED, std::string(op) + ": vocab = " + std::to_string(vocab) +
                                               " is outside the CUDA sampler's range [1, 2^24)", "vocab");
  if (ld != 0 && ld < vocab)
    return Status::fail(Code::INVALID_ARG, std::string(op) + ": ld = " + std::to_string(ld) + " is below vocab (" +
                                               std::to_string(vocab) + "); 0 means every row reads row 0", "ld");
  if (ld < 0 || ld > (int64_t(1) << 40)) return Status::fail(Code::INVALID_ARG, std::string(op) + ": bad ld", "ld");
  if (rows > 0 && (!logits || !token)) return Status::fail(Code::INVALID_ARG, std::string(op) + ": null logits or token", "logits");
  if (!err) return Status::fail(Code::INTERNAL, std::string(op) + ": no error slot");
  return {};
}

template <class T, bool ARGMAX, int BUG>
Status sample_launch(const char* name, const T* x, int64_t rows, int64_t vocab, int64_t ld, const SampleRow* params, int32_t* token,
                     float* logprob, unsigned long long* err, const DeviceLimits& lim, stream_t s) {
  constexpr int VEC = 16 / int(sizeof(T));
  LaunchCfg c{dim3(unsigned(rows)), dim3(kSampleThreads), 0, sizeof(sdetail::SampleSmem<ARGMAX>)};
  const bool vec = aligned16(x) && (ld * int64_t(sizeof(T))) % 16 == 0;
  if (vec)
    return launch(name, sample_kernel<T, VEC, ARGMAX, BUG>, c, lim, s, x, ld, int(vocab), params, token, logprob, err);
  return launch(name, sample_kernel<T, 1, ARGMAX, BUG>, c, lim, s, x, ld, int(vocab), params, token, logprob, err);
}

template <bool ARGMAX, int BUG>
Status sample_dispatch(const char* name, DType t, const void* x, int64_t rows, int64_t vocab, int64_t ld, const SampleRow* params,
                       int32_t* token, float* logprob, unsigned long long* err, const DeviceLimits& lim, stream_t s) {
  switch (t) {
    case DType::f32:
      return sample_launch<float, ARGMAX, BUG>(name, static_cast<const float*>(x), rows, vocab, ld, params, token, logprob, err, lim, s);
    case DType::f16:
      return sample_launch<__half, ARGMAX, BUG>(name, static_cast<const __half*>(x), rows, vocab, ld, params, token, logprob, err, lim,
                                                s);
    case DType::bf16:
      return sample_launch<__nv_bfloat16, ARGMAX, BUG>(name, static_cast<const __nv_bfloat16*>(x), rows, vocab, ld, params, token,
                                                       logprob, err, lim, s);
    default: return bad_dtype(name, t, "logits");
  }
}

template <int BUG = 0>
Status sample_impl(const SampleArgs& a, unsigned long long* err, stream_t s, const DeviceLimits& lim) {
  Status st = sample_common_checks("sample", a.rows, a.vocab, a.ld, a.logits, a.token, err);
  if (!st.ok) return st;
  if (a.rows > 0 && !a.params) return Status::fail(Code::INVALID_ARG, "sample: null params", "params");
  if (a.rows == 0) return {};
  if constexpr (BUG != 0) {  // the test-only broken variants exist for f32 logits only
    if (a.dtype != DType::f32) return bad_dtype("sample (broken variant)", a.dtype, "logits");
    return sample_launch<float, false, BUG>("sample_kernel", static_cast<const float*>(a.logits), a.rows, a.vocab, a.ld, a.params, a.token,
                                            a.logprob, err, lim, s);
  }
  return sample_dispatch<false, BUG>("sample_kernel", a.dtype, a.logits, a.rows, a.vocab, a.ld, a.params, a.token, a.logprob, err, lim,
                                     s);
}

}  // namespace detail

// `err` must point to device memory holding kSampleNoError (it is only ever lowered).
inline Status argmax(const ArgmaxArgs& a, unsigned long long* err, stream_t s = stream_t(), const DeviceLimits& lim = {}) {
  Status st = detail::sample_common_checks("argmax", a.rows, a.vocab, a.ld, a.logits, a.token, err);
  if (!st.ok || a.rows == 0) return st;
  return detail::sample_dispatch<true, 0>("argmax_kernel", a.dtype, a.logits, a.rows, a.vocab, a.ld, nullptr, a.token, a.logprob, err,
                                          lim, s);
}

// Per-row parameters are device data: they are checked on the device (bad_param in the slot).
// sample_params_check() validates a host copy the same way before it is uploaded.
inline Status sample(const SampleArgs& a, unsigned long long* err, stream_t s = stream_t(), const DeviceLimits& lim = {}) {
  return detail::sample_impl<0>(a, err, s, lim);
}

inline Status sample_params_check(const SampleRow* host, int64_t rows) {
  for (int64_t i = 0; i < rows; ++i) {
    const SampleRow& p = host[i];
    const std::string at = "params[" + std::to_string(i) + "].";
    const double inv = 1.0 / p.temperature;
    if (!(p.temperature == 0.0 || (p.temperature > 0.0 && inv <= DBL_MAX && p.temperature <= DBL_MAX)))
      return Status::fail(Code::INVALID_ARG, "sample: temperature must be 0 or finite > 0 with 1/T finite", at + "temperature");
    if (p.top_k < 0) return Status::fail(Code::INVALID_ARG, "sample: top_k must be >= 0", at + "top_k");
    if (!(p.top_p > 0.0 && p.top_p <= 1.0)) return Status::fail(Code::INVALID_ARG, "sample: top_p must be in (0, 1]", at + "top_p");
    if (!(p.min_p >= 0.0 && p.min_p <= 1.0)) return Status::fail(Code::INVALID_ARG, "sample: min_p must be in [0, 1]", at + "min_p");
    if (p.temperature != 0.0 && !(p.u >= 0.0 && p.u < 1.0))
      return Status::fail(Code::INVALID_ARG, "sample: u must be in [0, 1)", at + "u");
  }
  return {};
}

namespace detail {
template <int BUG = 0>
Status logit_adjust_impl(const LogitAdjustArgs& a, unsigned long long* err, stream_t s, const DeviceLimits& lim) {
  for (Status st : {need_int(a.rows, "rows", "logitAdjust"), need_int(a.vocab, "vocab", "logitAdjust"),
                    need_int(a.nnz, "nnz", "logitAdjust")})
    if (!st.ok) return st;
  if (a.vocab < 1 || a.vocab >= kSampleMaxVocab)
    return Status::fail(Code::UNSUPPORTED, "logitAdjust: vocab outside [1, 2^24)", "vocab");
  if (a.ld < a.vocab) return Status::fail(Code::INVALID_ARG, "logitAdjust: ld must be >= vocab (rows are written)", "ld");
  if (!err) return Status::fail(Code::INTERNAL, "logitAdjust: no error slot");
  if (a.rows == 0) return {};
  if (!a.logits || !a.row_ptr) return Status::fail(Code::INVALID_ARG, "logitAdjust: null logits or row_ptr", "logits");
  if (a.nnz > 0 && !a.ids) return Status::fail(Code::INVALID_ARG, "logitAdjust: null ids", "ids");
  if (a.count && !a.penalty) return Status::fail(Code::INVALID_ARG, "logitAdjust: count given without penalty rows", "penalty");
  LaunchCfg c{dim3(unsigned(a.rows)), dim3(kAdjustThreads), 0, sizeof(unsigned)};
  return launch("logit_adjust_kernel", logit_adjust_kernel<BUG>, c, lim, s, a.logits, a.ld, int(a.vocab), a.nnz, a.row_ptr, a.ids,
                a.bias, a.count, a.penalty, err);
}
}  // namespace detail

inline Status logit_adjust(const LogitAdjustArgs& a, unsigned long long* err, stream_t s = stream_t(), const DeviceLimits& lim = {}) {
  return detail::logit_adjust_impl<0>(a, err, s, lim);
}

}  // namespace TY_CUDA_BUILD
}  // namespace cuda
}  // namespace ty
