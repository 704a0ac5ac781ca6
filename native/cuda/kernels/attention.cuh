// Tachyon CUDA kernels: paged attention over the CPU backend's CSR page table and the CPU's plan
// (semantics: tachyon/attention.h, native/cpu/kernels/attention.cpp; the plan is ty::attention_plan's
// output, reused as is).
//
// One thread block (4 warps, 128 threads) per plan work item: one sequence, one KV head, up to 64
// rows (query positions x the G = qHeads / kvHeads query heads that share the KV head, row
// r = qi * G + g, as on the CPU), one KV range. So K and V are read once per GQA group, and prefill,
// chunked prefill and decode are one kernel. Split items write f32 partials (o, lse) to the
// workspace exactly where the CPU does, and a merge kernel combines them like the CPU's merge.
// For the GPU, plan with AttentionPlanArgs::threads = the SM count: the planner then splits long
// KV ranges until there are about 4 blocks per SM (at least 256 tokens per split).
//
// Per block:
//   - Q rows -> f16/bf16 (the compute type CT) in shared memory, once. Warps keep their Q
//     fragments in registers (headDim <= 128) or reload them with ldmatrix (256).
//   - KV positions in tiles of TK tokens (64; 32 or 16 when shared memory is short). A tile may
//     span pages: each token row's address comes from the page table. The block ids of tile
//     j + STAGES are loaded into registers while tile j is computed and parked in a shared ring,
//     so the page-table lookups never sit on the critical path of the copies.
//   - K/V rows go global -> shared with cp.async (16 bytes, .cg), STAGES = 2 deep: one commit group
//     per tile; wait_group STAGES-2 + __syncthreads before computing a tile, which also frees the
//     stage that is refilled next. Positions past the range, and bad block ids, are zero-filled
//     (src-size 0), so nothing outside the cache is read.
//   - f16 / bf16 caches: the copied tile is the mma operand. fp8 (e4m3, e5m2) and int8 caches: the
//     raw codes are copied (half the bytes), then converted to f16 in shared memory (fp8 and int8
//     codes are exact in f16); the scales are applied outside the products: fp8's per-head K scale
//     goes into the score multiplier and its V scale into the final normalisation; int8's per-token
//     K scale multiplies the score column and its per-token V scale multiplies P (normalised by the
//     16-token group's largest scale so P stays in [0, 1] in f16, with O kept in units of that
//     scale).
//   - Warp layout: the 64 rows are 4 row blocks of 16 (m16). With R rows in use, the 4 warps are
//     ceil(R/16) row blocks x WK key groups (WK = 4 for R <= 16, as in decode: every warp streams a
//     quarter of each tile; 2 for R <= 32; 1 otherwise). A warp works on 16-token sub-tiles:
//     S = Q K^T with mma.m16n8k16 (A = Q by ldmatrix.x4, B = K rows by ldmatrix.x4), scale,
//     soft-cap, causal / window / range mask, online softmax in the log2 domain (row max through
//     two quad shuffles; O rescaled only when a row's max moves), P rounded to CT and fed from the
//     accumulator registers straight into the A fragment of O += P V (B = V by ldmatrix.x4.trans).
//     Sub-tiles wholly outside the warp's rows' windows are skipped (the causal triangle).
//   - End: the warps' (m, l, O) go through shared memory; the rows are merged over key groups
//     (weights 2^(m_k - M)) and normalised, o = O / l and lse = ln 2 (M + log2 l), written as o/lse
//     (rounded once to oDtype) or as the plan's f32 partial.
// l sums the P values as rounded to CT, the weights the products actually used, so o is an exact
// convex combination of the V rows with those weights.
//
// Page table guard (indptr / indices are device arrays): a block whose sequence's page count
// disagrees with the planned kvLen attends to nothing (o = 0, lse = -inf) and reports
// kKvFaultPageTable; a block id outside [0, blocks) is read as zeros and reports kKvFaultIndex
// (index = its position in `indices`). See kv.cuh for the fault slot.
#pragma once

#include "../../cuemu/ptx.cuh"
#include "kv.cuh"

#include <climits>
#include <cmath>
#include <cstring>

#if !defined(TY_HD)
#if defined(__CUDACC__)
#define TY_HD __host__ __device__ __forceinline__
#else
#define TY_HD inline
#endif
#endif

namespace ty {
namespace cuda {
inline namespace TY_CUDA_BUILD {  // see common.cuh

// ---- the plan on the device ---------------------------------------------------------------------
// The backend packs the host plan (attention_plan_pack into a staging buffer of
// attention_plan_device_bytes, one cudaMemcpyAsync per step) and views the device copy with
// attention_plan_device_view. Under cuemu the packed host buffer is the "device" copy.
struct AttnDevicePlan {
  const AttnWork* work = nullptr;
  const AttnMerge* merge = nullptr;
  const int32_t* kvLen = nullptr;     // [batch]
  const int32_t* qoIndptr = nullptr;  // [batch + 1]
};
namespace attn {
struct PackOffsets {
  size_t work, merge, kvLen, qo, total;
};
inline PackOffsets pack_offsets(const AttentionPlan& p) {
  PackOffsets o;
  o.work = 0;
  o.merge = o.work + size_t(p.nWork) * sizeof(AttnWork);
  o.kvLen = o.merge + size_t(p.nMerge) * sizeof(AttnMerge);
  o.qo = o.kvLen + size_t(p.batch) * 4;
  o.total = o.qo + (size_t(p.batch) + 1) * 4;
  return o;
}
}  // namespace attn
inline size_t attention_plan_device_bytes(const AttentionPlan& p) { return attn::pack_offsets(p).total; }
inline void attention_plan_pack(const AttentionPlan& p, void* dst) {
  const attn::PackOffsets o = attn::pack_offsets(p);
  unsigned char* d = static_cast<unsigned char*>(dst);
  if (p.nWork > 0) std::memcpy(d + o.work, p.work, size_t(p.nWork) * sizeof(AttnWork));
  if (p.nMerge > 0) std::memcpy(d + o.merge, p.merge, size_t(p.nMerge) * sizeof(AttnMerge));
  if (p.batch > 0) std::memcpy(d + o.kvLen, p.kvLen, size_t(p.batch) * 4);
  if (p.qoIndptr) std::memcpy(d + o.qo, p.qoIndptr, (size_t(p.batch) + 1) * 4);
  else std::memset(d + o.qo, 0, (size_t(p.batch) + 1) * 4);
}
// `base` must be 8-byte aligned (cudaMalloc gives 256).
inline AttnDevicePlan attention_plan_device_view(const AttentionPlan& p, const void* base) {
  const attn::PackOffsets o = attn::pack_offsets(p);
  const unsigned char* b = static_cast<const unsigned char*>(base);
  AttnDevicePlan v;
  v.work = reinterpret_cast<const AttnWork*>(b + o.work);
  v.merge = reinterpret_cast<const AttnMerge*>(b + o.merge);
  v.kvLen = reinterpret_cast<const int32_t*>(b + o.kvLen);
  v.qoIndptr = reinterpret_cast<const int32_t*>(b + o.qo);
  return v;
}

// Test / tuning knobs. tk: KV tile (16, 32 or 64 tokens; 0 = automatic).
struct AttnTuning {
  int tk = 0;
};

namespace attn {

constexpr int kThreads = 128;  // 4 warps
constexpr int kRows = 64;      // rows per block (the planner's item size)
constexpr int kStages = 2;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

enum KvKind : int { kKvF16 = 0, kKvBF16 = 1, kKvE4M3 = 2, kKvE5M2 = 3, kKvI8 = 4 };
enum ActKind : int { kActF32 = 0, kActF16 = 1, kActBF16 = 2 };

struct Params {
  const void* q;
  void* o;
  float* lse;
  float* ws;
  const unsigned char* kv;
  const float* scales;
  const int32_t* indptr;
  const int32_t* indices;
  const AttnWork* work;
  const int32_t* kvLen;
  const int32_t* qoIndptr;
  unsigned long long* bad;
  int layer, blocks, H, bs, D, G, qHeads, totalPages, TK;
  int qKind, oKind, kvKind, window;
  float smScale, softCap;
  bool oVec;  // o is 16-byte aligned: 16-byte stores
};

// Shared memory layout (bytes), the same on host and device.
struct Layout {
  int ring, q, kv, raw, rawS, ep, total;
};
TY_HD int align16(int x) { return (x + 15) & ~15; }
TY_HD Layout layout(int D, int TK, bool raw8, int stages) {
  const int ldk = D + 8;
  Layout L;
  L.ring = 0;                                                          // int64 row index per token, per stage
  L.q = align16(L.ring + stages * TK * 8);                             // Q [64][D + 8] CT
  L.kv = align16(L.q + kRows * ldk * 2);                               // K, V [TK][D + 8] CT, per stage (raw8: once)
  L.raw = align16(L.kv + (raw8 ? 1 : stages) * 2 * TK * ldk * 2);     // raw8: K, V codes [TK][D] per stage
  L.rawS = align16(L.raw + (raw8 ? stages * 2 * TK * D : 0));          // raw8: int8 K, V scales [TK] per stage
  const int pipe = align16(L.rawS + (raw8 ? stages * 2 * TK * 4 : 0));
  L.ep = L.kv;                                                         // epilogue, after the pipeline drained:
  const int ep = L.ep + kRows * (D + 4) * 4 + 2 * kRows * 4;          //   O [64][D + 4] f32, m [64], l [64]
  L.total = pipe > ep ? pipe : ep;
  return L;
}

template <class CT>
struct Mma;
template <>
struct Mma<__half> {
  static TY_DEV void run(float* d, const uint32_t* a, const uint32_t* b) { ptx::mma_m16n8k16_f32_f16(d, a, b, d); }
};
template <>
struct Mma<__nv_bfloat16> {
  static TY_DEV void run(float* d, const uint32_t* a, const uint32_t* b) { ptx::mma_m16n8k16_f32_bf16(d, a, b, d); }
};

template <class CT>
TY_DEV uint16_t ct_bits(float x);
template <>
TY_DEV uint16_t ct_bits<__half>(float x) {
  const __half_raw r = __float2half_rn(x);
  return r.x;
}
template <>
TY_DEV uint16_t ct_bits<__nv_bfloat16>(float x) {
  const __nv_bfloat16_raw r = __float2bfloat16_rn(x);
  return r.x;
}
template <class CT>
TY_DEV float ct_float(uint16_t b);
template <>
TY_DEV float ct_float<__half>(uint16_t b) {
  __half_raw r;
  r.x = b;
  return __half2float(__half(r));
}
template <>
TY_DEV float ct_float<__nv_bfloat16>(uint16_t b) {
  __nv_bfloat16_raw r;
  r.x = b;
  return __bfloat162float(__nv_bfloat16(r));
}

TY_DEV float ld_act(int kind, const void* p, int64_t i) {
  if (kind == kActF32) return static_cast<const float*>(p)[i];
  const uint16_t b = static_cast<const uint16_t*>(p)[i];
  return kind == kActF16 ? kv_f16_to_f32(b) : __uint_as_float(uint32_t(b) << 16);
}
// The CPU's st_act (tachyon/dtype.h conversions, NaN handling included).
TY_DEV void st_act(int kind, void* p, int64_t i, float v) {
  if (kind == kActF32) static_cast<float*>(p)[i] = v;
  else static_cast<uint16_t*>(p)[i] = kind == kActF16 ? kv_f32_to_f16(v) : kv_f32_to_bf16(v);
}

// Thread tid's chunks c = tid, tid + 128, ... of rows of `cpr` chunks, as (row, chunk) without a
// division per chunk (cpr is a runtime value): start at (tid / cpr, tid % cpr), step by
// (128 / cpr, 128 % cpr) with a carry.
struct ChunkWalk {
  int cpr, r, c, dr, dc;
  TY_DEV ChunkWalk(int cpr_, int tid) : cpr(cpr_), r(tid / cpr_), c(tid % cpr_), dr(kThreads / cpr_), dc(kThreads % cpr_) {}
  TY_DEV void next() {
    r += dr;
    c += dc;
    if (c >= cpr) {
      c -= cpr;
      ++r;
    }
  }
};

// 16 codes (fp8 or int8) -> 16 f16 values, exactly.
TY_DEV void cvt16(const uint4 in, uint32_t* out, int kind) {
  const uint32_t w[4] = {in.x, in.y, in.z, in.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    if (kind == kKvI8) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const float a = float(int8_t(w[i] >> (16 * h))), b = float(int8_t(w[i] >> (16 * h + 8)));
        out[2 * i + h] = uint32_t(ct_bits<__half>(a)) | uint32_t(ct_bits<__half>(b)) << 16;
      }
    } else {
      const __nv_fp8_interpretation_t f = kind == kKvE4M3 ? __NV_E4M3 : __NV_E5M2;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const __half2_raw r = __nv_cvt_fp8x2_to_halfraw2(__nv_fp8x2_storage_t((w[i] >> (16 * h)) & 0xffffu), f);
        out[2 * i + h] = uint32_t(r.x) | uint32_t(r.y) << 16;
      }
    }
  }
}

// BUG != 0 builds deliberately broken variants for the emulator's negative tests only:
// 1 = no __syncthreads after the cp.async wait, 2 = no cp.async wait, 3 = a shuffle mask that
// leaves out half the warp, 4 = the P fragment's registers 1 and 2 swapped, 5 = V loaded without
// .trans.
template <class CT, bool RAW8, int DP, int STAGES, int BUG>
__global__ void __launch_bounds__(kThreads) attn_kernel(const Params p) {
  constexpr bool QREG = DP <= 128;
  constexpr int NKK = DP / 16;  // k16 steps over headDim
  constexpr int NN = DP / 8;    // n8 tiles of O
  CUEMU_DYNAMIC_SHARED(unsigned char, smem);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t4 = lane & 3;
  const AttnWork w = p.work[blockIdx.x];
  const int D = p.D, G = p.G, TK = p.TK, ldk = D + 8, ldo = D + 4;
  const Layout L = layout(D, TK, RAW8, STAGES);
  int64_t* ring = reinterpret_cast<int64_t*>(smem + L.ring);
  uint16_t* sQ = reinterpret_cast<uint16_t*>(smem + L.q);
  uint16_t* sKV = reinterpret_cast<uint16_t*>(smem + L.kv);
  unsigned char* raw = smem + L.raw;
  float* rawS = reinterpret_cast<float*>(smem + L.rawS);
  const bool isI8 = RAW8 && p.kvKind == kKvI8;

  // ---- rows and the KV range (the CPU's run_item) ----
  const int nq = w.qEnd - w.qBegin, R = nq * G;
  const int kvLen = p.kvLen[w.seq];
  const int qs = p.qoIndptr[w.seq], ql = p.qoIndptr[w.seq + 1] - qs;
  const int hiBase = kvLen - ql + (w.qBegin - qs);  // last visible position of query qi: hiBase + qi
  auto loOf = [&](int qi) {
    const int lo = p.window > 0 ? hiBase + qi - p.window + 1 : 0;
    return lo < 0 ? 0 : lo;
  };
  const int k0 = w.kvBegin > loOf(0) ? w.kvBegin : loOf(0);
  int k1 = w.kvEnd < hiBase + nq ? w.kvEnd : hiBase + nq;
  // The sequence's pages: every thread reads the same two words, so the decision is uniform.
  const int pb = p.indptr[w.seq];
  {
    const int64_t pe = p.indptr[w.seq + 1], np = pe - int64_t(pb);
    if (!(pb >= 0 && np == (int64_t(kvLen) + p.bs - 1) / p.bs && pe <= p.totalPages)) {
      if (tid == 0) kv_report(p.bad, kKvFaultPageTable, w.seq, int32_t(np));
      k1 = k0;  // attend to nothing
    }
  }
  const int nt = k1 > k0 ? (k1 - k0 + TK - 1) / TK : 0;
  const int64_t vRow = int64_t(p.H) * p.bs;  // K row -> V row of the same token
  const int64_t rowBase = int64_t(p.layer) * p.blocks;

  // row index (element offset / D) of position pos, -1 past the range or for a bad block id
  auto finish = [&](int pos, int blk) -> int64_t {
    if (pos < 0) return -1;
    if (blk < 0 || blk >= p.blocks) {
      kv_report(p.bad, kKvFaultIndex, int64_t(pb) + pos / p.bs, blk);
      return -1;
    }
    return (((rowBase + blk) * 2) * p.H + w.kvHead) * p.bs + pos % p.bs;
  };
  auto posOf = [&](int tile, int r) {
    const int pos = k0 + tile * TK + r;
    return pos < k1 ? pos : -1;
  };

  // ---- warp layout ----
  const int nRB = (R + 15) >> 4, nRBp = nRB == 3 ? 4 : nRB, WK = 4 / nRBp;
  const int rb = warp % nRBp, wk = warp / nRBp;
  const bool active = rb < nRB;
  int lo[2], hi[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int r = rb * 16 + g + 8 * i;
    lo[i] = r < R ? loOf(r / G) : INT_MAX;
    hi[i] = r < R ? hiBase + r / G : -1;
  }
  const int wLo = active ? loOf(rb * 16 / G) : INT_MAX;
  int wHi = active ? hiBase + ((R < rb * 16 + 16 ? R : rb * 16 + 16) - 1) / G : -1;
  wHi = wHi < k1 - 1 ? wHi : k1 - 1;

  // ---- prologue: block ids of tiles 0 .. STAGES-1, Q -> shared ----
  if (tid < TK)
    for (int s = 0; s < STAGES && s < nt; ++s) {
      const int pos = posOf(s, tid);
      ring[s * TK + tid] = finish(pos, pos >= 0 ? p.indices[pb + pos / p.bs] : 0);
    }
  {
    const int cpr = D / 8;
    for (int c = tid; c < kRows * cpr; c += kThreads) {
      const int r = c / cpr, d0 = (c - r * cpr) * 8;
      uint32_t v4[4] = {0, 0, 0, 0};
      if (r < R) {
        const int64_t src = ((int64_t(w.qBegin) + r / G) * p.qHeads + int64_t(w.kvHead) * G + r % G) * D + d0;
#pragma unroll
        for (int e = 0; e < 4; ++e)
          v4[e] = uint32_t(ct_bits<CT>(ld_act(p.qKind, p.q, src + 2 * e))) | uint32_t(ct_bits<CT>(ld_act(p.qKind, p.q, src + 2 * e + 1))) << 16;
      }
      *reinterpret_cast<uint4*>(sQ + r * ldk + d0) = make_uint4(v4[0], v4[1], v4[2], v4[3]);
    }
  }
  __syncthreads();
  uint32_t qf[QREG ? NKK : 1][4];
  if (QREG) {
#pragma unroll
    for (int kk = 0; kk < NKK; ++kk)
      if (kk * 16 < D) ptx::ldmatrix_x4(qf[QREG ? kk : 0], sQ + (rb * 16 + (lane & 15)) * ldk + kk * 16 + 8 * (lane >> 4));
  }

  // Scale of the scores: smScale, times fp8's per-head K scale; fp8's V scale is applied at the end.
  float sclNat = p.smScale, vScale = 1.0f;
  if (RAW8 && !isI8) {
    sclNat *= p.scales[(int64_t(p.layer) * 2 + 0) * p.H + w.kvHead];
    vScale = p.scales[(int64_t(p.layer) * 2 + 1) * p.H + w.kvHead];
  }
  const float scl2 = sclNat * kLog2e, cap = p.softCap, capInv = cap > 0.0f ? 1.0f / cap : 0.0f;

  // ---- per-warp state: rows g and g + 8 of the warp's row block ----
  float O[NN][4];
#pragma unroll
  for (int n = 0; n < NN; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) O[n][e] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  float cunit = 1.0f;  // int8: O is kept in units of cunit

  auto issue = [&](int tile) {
    const int slot = tile % STAGES;
    const int64_t* rows = ring + slot * TK;
    if (!RAW8) {
      uint16_t* dK = sKV + slot * 2 * TK * ldk;
      uint16_t* dV = dK + TK * ldk;
      ChunkWalk w8(D / 8, tid);
      for (int c = tid; c < TK * w8.cpr; c += kThreads, w8.next()) {
        const int r = w8.r, cc = w8.c;
        const int64_t ri = rows[r];
        const int n = ri >= 0 ? 16 : 0;  // src-size 0: zero-fill, read nothing
        ptx::cp_async_cg(dK + r * ldk + cc * 8, ri >= 0 ? p.kv + (ri * D + cc * 8) * 2 : p.kv, n);
        ptx::cp_async_cg(dV + r * ldk + cc * 8, ri >= 0 ? p.kv + ((ri + vRow) * D + cc * 8) * 2 : p.kv, n);
      }
    } else {
      unsigned char* dK = raw + slot * 2 * TK * D;
      unsigned char* dV = dK + TK * D;
      ChunkWalk w16(D / 16, tid);
      for (int c = tid; c < TK * w16.cpr; c += kThreads, w16.next()) {
        const int r = w16.r, cc = w16.c;
        const int64_t ri = rows[r];
        const int n = ri >= 0 ? 16 : 0;
        ptx::cp_async_cg(dK + r * D + cc * 16, ri >= 0 ? p.kv + ri * D + cc * 16 : p.kv, n);
        ptx::cp_async_cg(dV + r * D + cc * 16, ri >= 0 ? p.kv + (ri + vRow) * D + cc * 16 : p.kv, n);
      }
      if (isI8)
        for (int i = tid; i < 2 * TK; i += kThreads) {
          const int kv = i >= TK, r = i - kv * TK;
          const int64_t ri = rows[r];
          ptx::cp_async_ca<4>(rawS + slot * 2 * TK + i, ri >= 0 ? p.scales + ri + kv * vRow : p.scales, ri >= 0 ? 4 : 0);
        }
    }
  };
  auto convert = [&](int tile) {  // raw8: codes of `tile` -> the f16 K, V tile
    const unsigned char* src = raw + (tile % STAGES) * 2 * TK * D;
    ChunkWalk w16(D / 16, tid);
    for (int c = tid; c < 2 * TK * w16.cpr; c += kThreads, w16.next()) {
      const int r = w16.r, cc = w16.c;  // r < 2 TK: K rows, then V rows
      uint32_t o8[8];
      cvt16(*reinterpret_cast<const uint4*>(src + r * D + cc * 16), o8, p.kvKind);
      uint16_t* dst = sKV + r * ldk + cc * 16;
      *reinterpret_cast<uint4*>(dst) = make_uint4(o8[0], o8[1], o8[2], o8[3]);
      *reinterpret_cast<uint4*>(dst + 8) = make_uint4(o8[4], o8[5], o8[6], o8[7]);
    }
  };

  auto compute = [&](int tile) {
    const int tp = k0 + tile * TK;
    const uint16_t* sK = RAW8 ? sKV : sKV + (tile % STAGES) * 2 * TK * ldk;
    const uint16_t* sV = sK + TK * ldk;
    const float* ksc = rawS + (tile % STAGES) * 2 * TK;  // int8 scales (raw stage: intact until refilled)
    const float* vsc = ksc + TK;
    if (!active) return;  // warp-uniform
    for (int s = wk; s < TK / 16; s += WK) {
      const int sp = tp + s * 16;
      if (sp > wHi || sp + 15 < wLo) continue;  // every row of the warp masks the whole sub-tile
      // S = Q K^T: 16 rows x 16 tokens
      float sacc[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
#pragma unroll
      for (int kk = 0; kk < NKK; ++kk) {
        if (kk * 16 >= D) break;
        uint32_t a[4], b[4];
        if (QREG) {
#pragma unroll
          for (int e = 0; e < 4; ++e) a[e] = qf[QREG ? kk : 0][e];
        } else {
          ptx::ldmatrix_x4(a, sQ + (rb * 16 + (lane & 15)) * ldk + kk * 16 + 8 * (lane >> 4));
        }
        // K rows s*16 + 0..15 as B ([n = token][k = d]): matrix 0 = tokens 0-7 / d 0-7 (b0b1 of
        // n-tile 0), 1 = tokens 0-7 / d 8-15 (b2b3), 2 and 3 the same for tokens 8-15 (n-tile 1).
        ptx::ldmatrix_x4(b, sK + (s * 16 + (lane & 7) + 8 * (lane >> 4)) * ldk + kk * 16 + 8 * ((lane >> 3) & 1));
        Mma<CT>::run(sacc[0], a, b);
        Mma<CT>::run(sacc[1], a, b + 2);
      }
      // scale, soft-cap, mask (log2 domain). Accumulator element e of n-tile j: row g + 8 (e >> 1),
      // token s*16 + 8j + 2 t4 + (e & 1).
      float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int j = 0; j < 2; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int tok = s * 16 + 8 * j + 2 * t4 + (e & 1), pos = tp + tok, ri = e >> 1;
          float x = sacc[j][e];
          if (isI8) x *= ksc[tok];
          if (cap > 0.0f) x = cap * tanhf(x * sclNat * capInv) * kLog2e;
          else x *= scl2;
          x = pos >= lo[ri] && pos <= hi[ri] && pos < k1 ? x : -INFINITY;
          sacc[j][e] = x;
          mx[ri] = x > mx[ri] ? x : mx[ri];
        }
      float fr[2], mu[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        // the quad (t4 = 0..3) holds the row's 16 tokens
#pragma unroll
        for (int o = 1; o <= 2; o <<= 1) {
          const float u = __shfl_xor_sync(BUG == 3 ? 0x0000ffffu : 0xffffffffu, mx[i], o);
          mx[i] = u > mx[i] ? u : mx[i];
        }
        const float mn = mx[i] > m[i] ? mx[i] : m[i];
        mu[i] = mn == -INFINITY ? 0.0f : mn;  // a row with nothing visible yet: every p is 0
        fr[i] = exp2f(m[i] - mu[i]);
        m[i] = mn;
      }
      // P = 2^(s - m), rounded to CT; register 2j + i of the A fragment holds row g + 8i, tokens
      // 8j + 2 t4, +1 (a0a1 / a2a3 / a4a5 / a6a7).
      uint32_t pa[4];
      float ls[2] = {0.0f, 0.0f};
#pragma unroll
      for (int j = 0; j < 2; ++j)
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          const uint16_t b0 = ct_bits<CT>(exp2f(sacc[j][2 * i] - mu[i]));
          const uint16_t b1 = ct_bits<CT>(exp2f(sacc[j][2 * i + 1] - mu[i]));
          ls[i] += ct_float<CT>(b0) + ct_float<CT>(b1);
          pa[2 * j + i] = uint32_t(b0) | uint32_t(b1) << 16;
        }
#pragma unroll
      for (int i = 0; i < 2; ++i) l[i] = l[i] * fr[i] + ls[i];
      bool doPV = true;
      if (isI8) {
        // P *= vscale(token) / vmax (vmax = the sub-tile's largest V scale); O in units of vmax.
        float vm = vsc[s * 16 + (lane & 15)];
#pragma unroll
        for (int o = 1; o <= 8; o <<= 1) {
          const float u = __shfl_xor_sync(0xffffffffu, vm, o);
          vm = u > vm ? u : vm;
        }
        doPV = vm > 0.0f;  // all-zero V rows (scale 0) add nothing
        if (doPV) {
          const float inv = 1.0f / vm;
#pragma unroll
          for (int j = 0; j < 2; ++j)
#pragma unroll
            for (int i = 0; i < 2; ++i) {
              const int tok = s * 16 + 8 * j + 2 * t4;
              const uint32_t v = pa[2 * j + i];
              const uint16_t b0 = ct_bits<CT>(ct_float<CT>(uint16_t(v & 0xffffu)) * (vsc[tok] * inv));
              const uint16_t b1 = ct_bits<CT>(ct_float<CT>(uint16_t(v >> 16)) * (vsc[tok + 1] * inv));
              pa[2 * j + i] = uint32_t(b0) | uint32_t(b1) << 16;
            }
          fr[0] *= cunit * inv;
          fr[1] *= cunit * inv;
          cunit = vm;
        }
      }
      if (BUG == 4) {
        const uint32_t t = pa[1];
        pa[1] = pa[2];
        pa[2] = t;
      }
#pragma unroll
      for (int i = 0; i < 2; ++i)
        if (fr[i] != 1.0f)
#pragma unroll
          for (int n = 0; n < NN; ++n) {
            O[n][2 * i] *= fr[i];
            O[n][2 * i + 1] *= fr[i];
          }
      if (doPV) {
        // V rows s*16 + 0..15 as B ([k = token][n = d], .trans): matrix 0 = tokens 0-7 / d 0-7
        // (b0b1 of n-tile 2 n2), 1 = tokens 8-15 / d 0-7 (b2b3), 2 and 3 the same for d 8-15.
#pragma unroll
        for (int n2 = 0; n2 < NKK; ++n2) {
          if (n2 * 16 >= D) break;
          uint32_t b[4];
          const uint16_t* va = sV + (s * 16 + (lane & 7) + 8 * ((lane >> 3) & 1)) * ldk + n2 * 16 + 8 * (lane >> 4);
          if (BUG == 5) ptx::ldmatrix_x4(b, va);
          else ptx::ldmatrix_x4_trans(b, va);
          Mma<CT>::run(O[2 * n2], pa, b);
          Mma<CT>::run(O[2 * n2 + 1], pa, b + 2);
        }
      }
    }
  };

  // ---- main loop ----
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < nt) issue(s);
    ptx::cp_async_commit();
  }
  for (int j = 0; j < nt; ++j) {
    // block id of tile j + STAGES, row tid: loaded now, used after this tile's math
    int prePos = -1, preBlk = 0;
    if (tid < TK && j + STAGES < nt) {
      prePos = posOf(j + STAGES, tid);
      if (prePos >= 0) preBlk = p.indices[pb + prePos / p.bs];
    }
    if (BUG != 2) ptx::cp_async_wait<STAGES - 2>();  // this thread's copies of tile j landed
    if (BUG != 1) __syncthreads();                    // everyone's; tile j-1 (and its stage) is done
    if (j + STAGES - 1 < nt) issue(j + STAGES - 1);
    ptx::cp_async_commit();
    if (RAW8) {
      convert(j);
      __syncthreads();
    }
    compute(j);
    if (tid < TK && j + STAGES < nt) ring[(j % STAGES) * TK + tid] = finish(prePos, preBlk);
  }
  ptx::cp_async_wait<0>();
  __syncthreads();  // the pipeline's shared memory becomes the epilogue's

  // ---- epilogue ----
  float* epO = reinterpret_cast<float*>(smem + L.ep);
  float* epM = epO + kRows * ldo;
  float* epL = epM + kRows;
  const float fo = cunit * vScale;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    l[i] += __shfl_xor_sync(0xffffffffu, l[i], 1);
    l[i] += __shfl_xor_sync(0xffffffffu, l[i], 2);
    const int row = warp * 16 + g + 8 * i;
    if (t4 == 0) {
      epM[row] = m[i];
      epL[row] = l[i];
    }
#pragma unroll
    for (int n = 0; n < NN; ++n)
      if (n * 8 < D) {
        epO[row * ldo + n * 8 + 2 * t4] = O[n][2 * i] * fo;
        epO[row * ldo + n * 8 + 2 * t4 + 1] = O[n][2 * i + 1] * fo;
      }
  }
  __syncthreads();
  const int cpr = D / 8;
  for (int c = tid; c < R * cpr; c += kThreads) {
    const int r = c / cpr, d0 = (c - r * cpr) * 8, rbk = r >> 4, rr = r & 15;
    float M = -INFINITY;
    for (int k = 0; k < WK; ++k) {
      const float mk = epM[(k * nRBp + rbk) * 16 + rr];
      M = mk > M ? mk : M;
    }
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0}, Lt = 0.0f;
    if (M != -INFINITY)
      for (int k = 0; k < WK; ++k) {
        const int wr = (k * nRBp + rbk) * 16 + rr;
        if (epM[wr] == -INFINITY) continue;
        const float wt = exp2f(epM[wr] - M);
        Lt += wt * epL[wr];
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[e] += wt * epO[wr * ldo + d0 + e];
      }
    const float inv = Lt > 0.0f ? 1.0f / Lt : 0.0f;
    const float lse = Lt > 0.0f ? (M + log2f(Lt)) * kLn2 : -INFINITY;
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[e] *= inv;
    if (w.partial >= 0) {
      float* pw = p.ws + w.partial;
#pragma unroll
      for (int e = 0; e < 8; ++e) pw[int64_t(r) * D + d0 + e] = acc[e];
      if (d0 == 0) pw[int64_t(R) * D + r] = lse;
    } else {
      const int64_t orow = (int64_t(w.qBegin) + r / G) * p.qHeads + int64_t(w.kvHead) * G + r % G;
      if (p.oVec && p.oKind != kActF32) {
        uint32_t v4[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float a = acc[2 * e], b = acc[2 * e + 1];
          v4[e] = p.oKind == kActF16 ? uint32_t(kv_f32_to_f16(a)) | uint32_t(kv_f32_to_f16(b)) << 16
                                     : uint32_t(kv_f32_to_bf16(a)) | uint32_t(kv_f32_to_bf16(b)) << 16;
        }
        *reinterpret_cast<uint4*>(static_cast<uint16_t*>(p.o) + orow * D + d0) = make_uint4(v4[0], v4[1], v4[2], v4[3]);
      } else if (p.oVec) {
        float4* o4 = reinterpret_cast<float4*>(static_cast<float*>(p.o) + orow * D + d0);
        o4[0] = make_float4(acc[0], acc[1], acc[2], acc[3]);
        o4[1] = make_float4(acc[4], acc[5], acc[6], acc[7]);
      } else {
#pragma unroll
        for (int e = 0; e < 8; ++e) st_act(p.oKind, p.o, orow * D + d0 + e, acc[e]);
      }
      if (d0 == 0 && p.lse) p.lse[orow] = lse;
    }
  }
}

// The plan's merges (the CPU's merge_item): one block per merge item, a warp per row, lane l
// columns l, l + 32, ... (headDim <= 256).
__global__ void __launch_bounds__(kThreads)
    attn_merge_kernel(const AttnMerge* merges, const float* ws, void* o, float* lse, int D, int G, int qHeads, int oKind) {
  const AttnMerge mg = merges[blockIdx.x];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, R = (mg.qEnd - mg.qBegin) * G;
  for (int r = warp; r < R; r += kThreads / 32) {
    float mx = -INFINITY;
    for (int i = 0; i < mg.count; ++i) {
      const float x = ws[mg.first + i * mg.stride + int64_t(R) * D + r];
      mx = x > mx ? x : mx;
    }
    const int64_t row = (int64_t(mg.qBegin) + r / G) * qHeads + int64_t(mg.kvHead) * G + r % G;
    if (mx == -INFINITY) {
      for (int d = lane; d < D; d += 32) st_act(oKind, o, row * D + d, 0.0f);
      if (lane == 0 && lse) lse[row] = -INFINITY;
      continue;
    }
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0}, sw = 0.0f;
    for (int i = 0; i < mg.count; ++i) {
      const float* part = ws + mg.first + i * mg.stride;
      const float wt = expf(part[int64_t(R) * D + r] - mx);
      if (wt == 0.0f) continue;
      sw += wt;
#pragma unroll
      for (int e = 0; e < 8; ++e)
        if (lane + 32 * e < D) acc[e] = fmaf(wt, part[int64_t(r) * D + lane + 32 * e], acc[e]);
    }
    const float inv = 1.0f / sw;
#pragma unroll
    for (int e = 0; e < 8; ++e)
      if (lane + 32 * e < D) st_act(oKind, o, row * D + lane + 32 * e, acc[e] * inv);
    if (lane == 0 && lse) lse[row] = mx + logf(sw);
  }
}

// ty::attention_merge (AttentionMergeArgs): one warp per (row, head). o / lse may alias the inputs:
// every lane reads lseA / lseB before the __syncwarp that precedes lane 0's write of lse.
__global__ void __launch_bounds__(256)
    attn_merge2_kernel(int kind, int64_t n, int D, const void* oA, const float* lseA, const void* oB, const float* lseB, void* o,
                       float* lse) {
  const int lane = threadIdx.x & 31;
  for (int64_t it = int64_t(blockIdx.x) * 8 + (threadIdx.x >> 5); it < n; it += int64_t(gridDim.x) * 8) {  // warp-uniform
    const float la = lseA[it], lb = lseB[it];
    const float mx = la > lb ? la : lb;
    if (mx == -INFINITY || mx != mx) {
      for (int d = lane; d < D; d += 32) st_act(kind, o, it * D + d, mx == -INFINITY ? 0.0f : mx);
      __syncwarp();
      if (lane == 0) lse[it] = mx;
      continue;
    }
    const float wa = expf(la - mx), wb = expf(lb - mx), s = wa + wb;
    const float ca = wa / s, cb = wb / s;
    for (int d = lane; d < D; d += 32) {
      const float x = ld_act(kind, oA, it * D + d), y = ld_act(kind, oB, it * D + d);
      st_act(kind, o, it * D + d, ca * x + cb * y);
    }
    __syncwarp();
    if (lane == 0) lse[it] = mx + logf(s);
  }
}

inline bool act_kind(DType t, int* k) {
  switch (t) {
    case DType::f32: *k = kActF32; return true;
    case DType::f16: *k = kActF16; return true;
    case DType::bf16: *k = kActBF16; return true;
    default: return false;
  }
}

}  // namespace attn

namespace detail {

inline Status attn_fail(Code c, const std::string& m, const char* arg) { return Status::fail(c, "attention: " + m, arg); }

// The plan's items, checked on the host (they are host data): a corrupt or mismatched plan must
// not make a kernel index out of bounds.
inline Status attn_check_plan(const AttentionPlan& p) {
  const int G = p.qHeads / p.kvHeads;
  const int64_t wsFloats = int64_t(p.workspaceBytes / 4);
  if (p.qoIndptr[0] != 0 || p.qoIndptr[p.batch] != p.totalQ) return attn_fail(Code::INVALID_ARG, "plan.qoIndptr is inconsistent", "plan");
  for (int32_t b = 0; b < p.batch; ++b)
    if (p.qoIndptr[b + 1] < p.qoIndptr[b] || p.kvLen[b] < 0 || p.qoIndptr[b + 1] - p.qoIndptr[b] > p.kvLen[b])
      return attn_fail(Code::INVALID_ARG, "plan sequence " + std::to_string(b) + " is inconsistent", "plan");
  auto rows_ok = [&](int32_t seq, int32_t kvh, int32_t q0, int32_t q1) {
    return seq >= 0 && seq < p.batch && kvh >= 0 && kvh < p.kvHeads && q0 >= p.qoIndptr[seq] && q1 <= p.qoIndptr[seq + 1] && q0 < q1 &&
           int64_t(q1 - q0) * G <= attn::kRows;
  };
  for (int32_t i = 0; i < p.nWork; ++i) {
    const AttnWork& w = p.work[i];
    const int64_t R = int64_t(w.qEnd - w.qBegin) * G;
    if (!rows_ok(w.seq, w.kvHead, w.qBegin, w.qEnd) || w.kvBegin < 0 || w.kvBegin > w.kvEnd || w.kvEnd > p.kvLen[w.seq] ||
        (w.partial >= 0 && w.partial + R * (p.headDim + 1) > wsFloats) || w.partial < -1)
      return attn_fail(Code::INVALID_ARG, "plan work item " + std::to_string(i) + " is inconsistent", "plan");
  }
  for (int32_t i = 0; i < p.nMerge; ++i) {
    const AttnMerge& m = p.merge[i];
    const int64_t R = int64_t(m.qEnd - m.qBegin) * G;
    if (!rows_ok(m.seq, m.kvHead, m.qBegin, m.qEnd) || m.count < 1 || m.first < 0 || m.stride < R * (p.headDim + 1) ||
        m.first + (m.count - 1) * m.stride + R * (p.headDim + 1) > wsFloats)
      return attn_fail(Code::INVALID_ARG, "plan merge item " + std::to_string(i) + " is inconsistent", "plan");
  }
  return {};
}

template <class CT, bool RAW8, int DP, int BUG>
Status attn_launch(const attn::Params& prm, int nWork, const DeviceLimits& lim, stream_t s) {
  const attn::Layout L = attn::layout(prm.D, prm.TK, RAW8, attn::kStages);
  LaunchCfg c{dim3(unsigned(nWork)), dim3(attn::kThreads), size_t(L.total), 0};
  return launch("attn_kernel", attn::attn_kernel<CT, RAW8, DP, attn::kStages, BUG>, c, lim, s, prm);
}
template <class CT, bool RAW8, int BUG>
Status attn_launch_d(const attn::Params& prm, int nWork, const DeviceLimits& lim, stream_t s) {
  if (prm.D <= 64) return attn_launch<CT, RAW8, 64, BUG>(prm, nWork, lim, s);
  if (prm.D <= 128) return attn_launch<CT, RAW8, 128, BUG>(prm, nWork, lim, s);
  return attn_launch<CT, RAW8, 256, BUG>(prm, nWork, lim, s);
}

template <int BUG = 0>
Status attention_run_impl(const AttentionPlan& plan, const AttnDevicePlan& dp, const AttentionArgs& a, unsigned long long* bad,
                          stream_t s, const DeviceLimits& lim, AttnTuning tune) {
  const KvCache& c = a.cache;
  if (!plan.storage && (plan.nWork > 0 || plan.batch > 0))
    return attn_fail(Code::INVALID_ARG, "plan must come from attention_plan() (it is freed or empty)", "plan");
  Status st = kv_cache_ok(c, "attention");
  if (!st.ok) return st;
  if (a.layer < 0 || a.layer >= c.layers) return attn_fail(Code::INVALID_ARG, "layer " + std::to_string(a.layer) + " is out of range", "layer");
  if (c.blockSize != plan.blockSize || c.kvHeads != plan.kvHeads || c.headDim != plan.headDim)
    return attn_fail(Code::SHAPE, "the cache's blockSize / kvHeads / headDim differ from the plan's", "cache");
  if (plan.kvHeads < 1 || plan.qHeads % plan.kvHeads != 0) return attn_fail(Code::SHAPE, "qHeads is not a multiple of kvHeads", "plan");
  attn::Params prm{};
  if (!attn::act_kind(a.qDtype, &prm.qKind)) return bad_dtype("attention", a.qDtype, "qDtype");
  if (!attn::act_kind(a.oDtype, &prm.oKind)) return bad_dtype("attention", a.oDtype, "oDtype");
  switch (c.dtype) {
    case DType::f16: prm.kvKind = attn::kKvF16; break;
    case DType::bf16: prm.kvKind = attn::kKvBF16; break;
    case DType::fp8e4m3: prm.kvKind = attn::kKvE4M3; break;
    case DType::fp8e5m2: prm.kvKind = attn::kKvE5M2; break;
    case DType::int8: prm.kvKind = attn::kKvI8; break;
    default:
      return Status::fail(Code::UNSUPPORTED, "attention: the CUDA kernels read f16, bf16, fp8e4m3, fp8e5m2 or int8 caches, not " +
                                                 std::string(dtype_name(c.dtype)), "cache.dtype");
  }
  if (!std::isfinite(a.smScale)) return attn_fail(Code::INVALID_ARG, "smScale must be finite", "smScale");
  if (!(a.softCap >= 0.0f) || !std::isfinite(a.softCap)) return attn_fail(Code::INVALID_ARG, "softCap must be 0 (off) or positive and finite", "softCap");
  if (a.window < 0) return attn_fail(Code::INVALID_ARG, "window must be >= 0", "window");
  if (!bad) return Status::fail(Code::INTERNAL, "attention: no error slot");
  if (plan.totalQ == 0 || plan.nWork == 0) return {};
  if (!a.q || !a.o || !a.indptr || !a.indices)
    return attn_fail(Code::INVALID_ARG, "q, o, indptr and indices must be non-null", !a.q ? "q" : !a.o ? "o" : !a.indptr ? "indptr" : "indices");
  if (plan.workspaceBytes > 0 && !a.workspace) return attn_fail(Code::INVALID_ARG, "the plan needs a workspace", "workspace");
  if (!dp.work || !dp.kvLen || !dp.qoIndptr || (plan.nMerge > 0 && !dp.merge))
    return attn_fail(Code::INVALID_ARG, "the device plan is incomplete", "plan");
  if (!aligned16(c.data)) return attn_fail(Code::UNSUPPORTED, "cache.data must be 16-byte aligned (cp.async)", "cache.data");
  if ((reinterpret_cast<uintptr_t>(a.workspace) & 3) != 0) return attn_fail(Code::INVALID_ARG, "workspace must be 4-byte aligned", "workspace");
  st = attn_check_plan(plan);
  if (!st.ok) return st;
  int64_t pages = 0;
  for (int32_t b = 0; b < plan.batch; ++b) pages += (int64_t(plan.kvLen[b]) + plan.blockSize - 1) / plan.blockSize;
  if (pages > INT32_MAX) return attn_fail(Code::UNSUPPORTED, "more than 2^31 pages", "indices");
  if (int64_t(plan.totalQ) * plan.qHeads * plan.headDim > (int64_t(1) << 62)) return attn_fail(Code::UNSUPPORTED, "q is too large", "q");

  prm.q = a.q;
  prm.o = a.o;
  prm.lse = a.lse;
  prm.ws = static_cast<float*>(a.workspace);
  prm.kv = static_cast<const unsigned char*>(c.data);
  prm.scales = c.scales;
  prm.indptr = a.indptr;
  prm.indices = a.indices;
  prm.work = dp.work;
  prm.kvLen = dp.kvLen;
  prm.qoIndptr = dp.qoIndptr;
  prm.bad = bad;
  prm.layer = a.layer;
  prm.blocks = c.blocks;
  prm.H = c.kvHeads;
  prm.bs = c.blockSize;
  prm.D = c.headDim;
  prm.G = plan.qHeads / plan.kvHeads;
  prm.qHeads = plan.qHeads;
  prm.totalPages = int(pages);
  prm.window = a.window;
  prm.smScale = a.smScale;
  prm.softCap = a.softCap;
  prm.oVec = aligned16(a.o);
  const bool raw8 = prm.kvKind >= attn::kKvE4M3;
  // KV tile: 64 tokens (32 for headDim > 128), halved while the block's shared memory exceeds the
  // device's opt-in limit.
  if (tune.tk != 0) {
    if (tune.tk != 16 && tune.tk != 32 && tune.tk != 64) return attn_fail(Code::INVALID_ARG, "tuning.tk must be 16, 32 or 64", "tuning");
    prm.TK = tune.tk;
  } else {
    prm.TK = c.headDim > 128 ? 32 : 64;
    while (prm.TK > 16 && size_t(attn::layout(c.headDim, prm.TK, raw8, attn::kStages).total) > lim.smem_optin) prm.TK /= 2;
  }
  if constexpr (BUG != 0) {  // the broken test variants exist for f16 caches with headDim <= 64 only
    if (prm.kvKind != attn::kKvF16 || prm.D > 64) return attn_fail(Code::UNSUPPORTED, "broken variants: f16, headDim <= 64", "cache");
    st = attn_launch<__half, false, 64, BUG>(prm, plan.nWork, lim, s);
  } else {
    switch (prm.kvKind) {
      case attn::kKvF16: st = attn_launch_d<__half, false, BUG>(prm, plan.nWork, lim, s); break;
      case attn::kKvBF16: st = attn_launch_d<__nv_bfloat16, false, BUG>(prm, plan.nWork, lim, s); break;
      default: st = attn_launch_d<__half, true, BUG>(prm, plan.nWork, lim, s); break;
    }
  }
  if (!st.ok || plan.nMerge == 0) return st;
  LaunchCfg mc{dim3(unsigned(plan.nMerge)), dim3(attn::kThreads), 0, 0};
  return launch("attn_merge_kernel", attn::attn_merge_kernel, mc, lim, s, dp.merge, static_cast<const float*>(a.workspace), a.o, a.lse,
                int(c.headDim), prm.G, int(plan.qHeads), prm.oKind);
}

}  // namespace detail

// Paged attention (ty::attention_run's semantics) over `plan` (the host plan, for the launch
// configuration and checks) and `dplan` (its device copy). a.q, a.o, a.lse, a.indptr, a.indices,
// a.workspace, the cache and `bad` are device pointers; `bad` must hold kKvNoError before the
// launch. Checked on the host: what ty::attention_run_check checks without reading device memory,
// plus the plan's items. Checked on the device: the page table (see the file comment).
// Q is rounded to the compute type (f16; bf16 for a bf16 cache) before the products: pass q in that
// dtype to avoid the extra rounding; with fp8 / int8 caches, |q| must stay within f16's range.
// The KV cache must be f16, bf16, fp8e4m3, fp8e5m2 or int8 (f32 caches: E_UNSUPPORTED).
inline Status attention_run(const AttentionPlan& plan, const AttnDevicePlan& dplan, const AttentionArgs& a, unsigned long long* bad,
                            stream_t s = stream_t(), const DeviceLimits& lim = {}, AttnTuning tune = {}) {
  return detail::attention_run_impl<0>(plan, dplan, a, bad, s, lim, tune);
}

// ty::attention_merge (AttentionMergeArgs): pointers are device pointers; o may alias oA or oB, lse
// may alias lseA or lseB. f32 math: m = max, w = expf(lse - m), o = (wA/s) oA + (wB/s) oB.
inline Status attention_merge(const AttentionMergeArgs& a, stream_t s = stream_t(), const DeviceLimits& lim = {}) {
  int kind;
  if (!attn::act_kind(a.dtype, &kind)) return bad_dtype("attention_merge", a.dtype, "dtype");
  if (a.rows < 0 || a.heads < 1 || a.heads > (1 << 16) || a.headDim < 1 || a.headDim > (1 << 16))
    return Status::fail(Code::INVALID_ARG, "attention_merge: rows >= 0, heads in [1, 65536] and headDim in [1, 65536]");
  if (a.rows == 0) return {};
  if (!a.oA || !a.lseA || !a.oB || !a.lseB || !a.o || !a.lse)
    return Status::fail(Code::INVALID_ARG, "attention_merge: every pointer must be non-null");
  const int64_t n = a.rows * a.heads;
  const int64_t blocks = (n + 7) / 8 < (int64_t(1) << 20) ? (n + 7) / 8 : (int64_t(1) << 20);
  LaunchCfg c{dim3(unsigned(blocks)), dim3(256), 0, 0};
  return launch("attn_merge2_kernel", attn::attn_merge2_kernel, c, lim, s, kind, n, int(a.headDim), a.oA, a.lseA, a.oB, a.lseB, a.o,
                a.lse);
}

}  // namespace TY_CUDA_BUILD
}  // namespace cuda
}  // namespace ty
