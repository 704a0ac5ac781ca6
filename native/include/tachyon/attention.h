// Tachyon: paged KV cache and paged attention (CPU kernels in native/cpu/kernels/attention.cpp,
// validation and planning in native/cpu/attention.cpp). Framework-free.
//
// Everything defined here is `static inline` or plain data (this header is included by the
// ISA-variant translation units; see native/cpu/isa.h for why).
//
// ---- KV pool layout (one pool per model) ------------------------------------------------
//   codes:  [layers][blocks][2 (0 = K, 1 = V)][kvHeads][blockSize][headDim], dtype elements
//           (f32 / f16 / bf16 / fp8e4m3 / fp8e5m2 / int8). One head's tokens of a block are
//           contiguous (blockSize * headDim elements), so attention streams them.
//   scales (f32):
//     fp8:  [layers][2][kvHeads]: one static scale per layer, K/V and head (calibrated; the
//           caller fills it). value = fp8_to_f32(code) * scale.
//     int8: [layers][blocks][2][kvHeads][blockSize]: one scale per token per head, written by
//           kv_append (amax / 127). value = code * scale. Kept in a separate array with the
//           same block-major order as the codes ("beside the block": block b's scales of a
//           layer are contiguous, and copy/swap move them with the block).
//     f32 / f16 / bf16: none (scales = nullptr).
//   A slot is block * blockSize + offset.
//
// ---- Page table (CSR, as in FlashInfer) -----------------------------------------------
//   indptr[batch + 1]: sequence b owns pages indices[indptr[b] .. indptr[b+1]) (block ids),
//   in position order; lastPageLen[b] in [1, blockSize] tokens are used in its last page, so
//   kvLen(b) = (pages - 1) * blockSize + lastPageLen[b] (0 when it has no page).
//   qoIndptr[batch + 1]: sequence b's query rows are q rows qoIndptr[b] .. qoIndptr[b+1); they
//   are its LAST qlen positions (causal): query i attends to positions <= kvLen - qlen + i,
//   and with a sliding window W > 0 only to positions > kvLen - qlen + i - W.
//
// ---- Attention ------------------------------------------------------------------------
//   q [totalQ][qHeads][headDim] (f32/f16/bf16), o [totalQ][qHeads][headDim] (f32/f16/bf16),
//   lse [totalQ][qHeads] f32 (optional), natural log: lse = log(sum_t exp(s_t)).
//   s_t = smScale * q.k_t, then, with softCap > 0, s_t = softCap * tanh(s_t / softCap).
//   Query head h uses KV head h / (qHeads / kvHeads). headDim is a multiple of 16, <= 256
//   (64, 80, 96, 128, 256 are the tested ones). A row that attends to nothing (possible
//   only through a split) has o = 0 and lse = -inf.
//   attention_plan() partitions the work once per step; attention_run() reuses the plan for
//   every layer (any layer, any window / soft-cap / scale; the page table and query layout
//   must be the ones it was planned with).
#pragma once
#include <cstddef>
#include <cstdint>

#include "tachyon/dtype.h"
#include "tachyon/fp8.h"
#include "tachyon/parallel.h"

namespace ty {

// ---- KV cache ---------------------------------------------------------------------------
struct KvCache {
  DType dtype = DType::f16;  // f32, f16, bf16, fp8e4m3, fp8e5m2, int8
  int32_t layers = 0, blocks = 0, kvHeads = 0, blockSize = 0, headDim = 0;
  void* data = nullptr;     // codes, kv_cache_data_bytes() long
  float* scales = nullptr;  // kv_cache_scale_count() floats, or nullptr (f32/f16/bf16)
};

static inline bool kv_dtype_fp8(DType t) { return t == DType::fp8e4m3 || t == DType::fp8e5m2; }
static inline size_t kv_elem_bytes(DType t) {
  return t == DType::f32 ? 4 : (t == DType::f16 || t == DType::bf16) ? 2 : 1;
}
// Elements of one (layer, block, K|V, head): blockSize * headDim.
static inline int64_t kv_head_elems(const KvCache& c) { return (int64_t)c.blockSize * c.headDim; }
// Elements of one (layer, block): both K and V of every head.
static inline int64_t kv_block_elems(const KvCache& c) { return 2 * (int64_t)c.kvHeads * kv_head_elems(c); }
static inline size_t kv_cache_data_bytes(const KvCache& c) {
  return (size_t)c.layers * (size_t)c.blocks * (size_t)kv_block_elems(c) * kv_elem_bytes(c.dtype);
}
static inline int64_t kv_cache_scale_count(const KvCache& c) {
  if (kv_dtype_fp8(c.dtype)) return (int64_t)c.layers * 2 * c.kvHeads;
  if (c.dtype == DType::int8) return (int64_t)c.layers * c.blocks * 2 * c.kvHeads * c.blockSize;
  return 0;
}
// Element index of (layer, block, kv, head, token-in-block, d) in `data`.
static inline int64_t kv_index(const KvCache& c, int64_t layer, int64_t block, int kv, int64_t head,
                               int64_t tok, int64_t d) {
  return ((((layer * c.blocks + block) * 2 + kv) * c.kvHeads + head) * c.blockSize + tok) * c.headDim + d;
}
// Index of the scale that applies to (layer, block, kv, head, tok): fp8 per head, int8 per token.
static inline int64_t kv_scale_index(const KvCache& c, int64_t layer, int64_t block, int kv, int64_t head,
                                     int64_t tok) {
  if (kv_dtype_fp8(c.dtype)) return (layer * 2 + kv) * c.kvHeads + head;
  return (((layer * c.blocks + block) * 2 + kv) * c.kvHeads + head) * c.blockSize + tok;
}
// Scales of one (layer, block) for int8: 2 * kvHeads * blockSize floats, contiguous.
static inline int64_t kv_block_scale_count(const KvCache& c) {
  return c.dtype == DType::int8 ? 2 * (int64_t)c.kvHeads * c.blockSize : 0;
}
// Bytes one block takes in a swap (host) buffer: every layer's codes, then every layer's int8
// scales. Host buffer layout for n blocks: [n][kv_block_host_bytes] in the order given.
static inline size_t kv_block_host_bytes(const KvCache& c) {
  return (size_t)c.layers * ((size_t)kv_block_elems(c) * kv_elem_bytes(c.dtype) + (size_t)kv_block_scale_count(c) * 4);
}
// The dequantized value of one element (the exact value attention uses). Slow; for tests/tools.
static inline float kv_load(const KvCache& c, int64_t layer, int64_t block, int kv, int64_t head, int64_t tok,
                            int64_t d) {
  const int64_t i = kv_index(c, layer, block, kv, head, tok, d);
  switch (c.dtype) {
    case DType::f32: return static_cast<const float*>(c.data)[i];
    case DType::f16: return f16_to_f32(static_cast<const uint16_t*>(c.data)[i]);
    case DType::bf16: return bf16_to_f32(static_cast<const uint16_t*>(c.data)[i]);
    case DType::int8:
      return (float)static_cast<const int8_t*>(c.data)[i] * c.scales[kv_scale_index(c, layer, block, kv, head, tok)];
    default:
      return fp8_to_f32(c.dtype, static_cast<const uint8_t*>(c.data)[i]) *
             c.scales[kv_scale_index(c, layer, block, kv, head, tok)];
  }
}
// int8 quantization of one token-head row, as kv_append does it: scale = amax / 127 (0 for an
// all-zero row), code = round-to-nearest-even(x / scale) clamped to [-127, 127].
static inline float kv_int8_row_scale(float amax) { return amax / 127.0f; }

// ---- kv_append --------------------------------------------------------------------------
// Writes `tokens` new tokens' K and V into their slots of `layer`, quantizing on the way in
// (fp8: code = f32_to_fp8(x / scale), RNE, saturating; int8: per token per head, see above).
// Two tokens with the same slot in one call race (which one lands is unspecified). Codes are
// bit-identical on every ISA. A NaN input is stored as the NaN code; an e4m3 NaN code decodes
// to NaN on the scalar path but to +-480 * scale on AVX2/AVX-512 (e5m2 keeps NaN/inf).
struct KvAppendArgs {
  KvCache cache;
  int32_t layer = 0;
  int64_t tokens = 0;
  DType srcDtype = DType::f32;      // f32 / f16 / bf16
  const void* k = nullptr;          // [tokens][kvHeads][headDim]
  const void* v = nullptr;          // [tokens][kvHeads][headDim]
  const int32_t* slots = nullptr;   // [tokens]: block * blockSize + offset, or -1 (skip)
};

// ---- attention plan ---------------------------------------------------------------------
// One work item: KV head `kvHead` of sequence `seq`, query rows [qBegin, qEnd) (absolute rows
// of q), KV positions [kvBegin, kvEnd). partial < 0: it writes o / lse directly; otherwise its
// normalised f32 output [rows][qPerKv][headDim] and lse [rows][qPerKv] go to the workspace at
// float offset `partial` (outputs first, then lse) and a merge item combines them.
struct AttnWork {
  int32_t seq, kvHead, qBegin, qEnd, kvBegin, kvEnd;
  int64_t partial;
};
// Combines `count` consecutive partials (float offsets first, first + stride, ...) into o/lse.
struct AttnMerge {
  int32_t seq, kvHead, qBegin, qEnd, count, pad;
  int64_t first, stride;
};
struct AttentionPlanArgs {
  int32_t batch = 0;
  const int32_t* qoIndptr = nullptr;     // [batch + 1]
  const int32_t* indptr = nullptr;       // [batch + 1]
  const int32_t* lastPageLen = nullptr;  // [batch]
  int32_t blockSize = 0, qHeads = 0, kvHeads = 0, headDim = 0;
  int32_t threads = 1;
  // Split-KV: 0 = automatic (split long contexts when there are fewer work items than about
  // 4 per thread); > 0 = split every item's KV range into chunks of at most this many tokens.
  int32_t splitTokens = 0;
};
struct AttentionPlan {
  int32_t batch = 0, totalQ = 0, blockSize = 0, qHeads = 0, kvHeads = 0, headDim = 0;
  int32_t nWork = 0, nMerge = 0;
  const AttnWork* work = nullptr;
  const AttnMerge* merge = nullptr;
  const int32_t* kvLen = nullptr;     // [batch]
  const int32_t* qoIndptr = nullptr;  // [batch + 1], a copy of the planned one
  size_t workspaceBytes = 0;       // f32 partials; attention_run needs this much
  void* storage = nullptr;         // owns the arrays above; attention_plan_free releases it
};

struct AttentionArgs {
  KvCache cache;
  int32_t layer = 0;
  DType qDtype = DType::f32;  // f32 / f16 / bf16
  const void* q = nullptr;    // [totalQ][qHeads][headDim]
  DType oDtype = DType::f32;  // f32 / f16 / bf16
  void* o = nullptr;          // [totalQ][qHeads][headDim]
  float* lse = nullptr;       // [totalQ][qHeads] or nullptr
  const int32_t* indptr = nullptr;   // [batch + 1]
  const int32_t* indices = nullptr;  // [indptr[batch]]
  float smScale = 1.0f;
  float softCap = 0.0f;  // > 0: s = softCap * tanh(s / softCap)
  int32_t window = 0;    // > 0: attend only to the last `window` positions (incl. itself)
  void* workspace = nullptr;  // plan.workspaceBytes, 64-byte aligned preferred
};

// ---- merge --------------------------------------------------------------------------------
// (o, lse) = merge((oA, lseA), (oB, lseB)) over [rows][heads][headDim]: with m = max(lseA, lseB),
// wA = exp(lseA - m), wB = exp(lseB - m): o = (wA oA + wB oB) / (wA + wB), lse = m + log(wA + wB).
// Both -inf: o = 0, lse = -inf. o may alias oA or oB, lse may alias lseA or lseB.
struct AttentionMergeArgs {
  DType dtype = DType::f32;  // of oA, oB and o (f32 / f16 / bf16)
  int64_t rows = 0;
  int32_t heads = 0, headDim = 0;
  const void* oA = nullptr;
  const float* lseA = nullptr;
  const void* oB = nullptr;
  const float* lseB = nullptr;
  void* o = nullptr;
  float* lse = nullptr;
};

// ---- block ops ----------------------------------------------------------------------------
// Copy-on-write: for every layer, block pairs[2i] is copied to block pairs[2i+1] (codes and
// int8 scales). Destinations must be distinct and must not be sources.
struct KvCopyBlocksArgs {
  KvCache cache;
  const int32_t* pairs = nullptr;  // [n][2] (src, dst)
  int64_t n = 0;
};
// Offload: out = true copies blocks[i] (all layers) to host + i * kv_block_host_bytes(cache);
// out = false copies them back from there.
struct KvSwapArgs {
  KvCache cache;
  const int32_t* blocks = nullptr;  // [n]
  int64_t n = 0;
  void* host = nullptr;             // n * kv_block_host_bytes(cache)
  bool out = true;
};

// ---- non-variant entry points (native/cpu/attention.cpp) ----------------------------------
// Validation: throw ty::Error naming the offending argument.
void kv_cache_check(const KvCache& c);
void kv_append_check(const KvAppendArgs& a);
void attention_plan_check(const AttentionPlanArgs& a);
void attention_run_check(const AttentionPlan& p, const AttentionArgs& a);
void attention_merge_check(const AttentionMergeArgs& a);
void kv_copy_blocks_check(const KvCopyBlocksArgs& a);
void kv_swap_check(const KvSwapArgs& a);
// Builds the plan (validates first). Free with attention_plan_free.
void attention_plan(const AttentionPlanArgs& a, AttentionPlan* plan);
void attention_plan_free(AttentionPlan* plan);

}  // namespace ty
