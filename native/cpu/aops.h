// Tachyon CPU backend: op entry points for the paged KV cache and attention (see
// tachyon/attention.h). Framework-free, like ops.h: validate on the caller's thread, enqueue.
//
// A KV cache is two tensors (codes, and f32 scales for fp8 / int8) plus its geometry. Data
// that queued ops may still be writing (slots, copy pairs) is validated on the stream right
// before use; the page table of a plan is copied into the plan when it is built, so runs
// validate it once and never race with JS.
#pragma once
#include <memory>
#include <mutex>
#include <vector>

#include "ops.h"
#include "tachyon/attention.h"

namespace ty::cpu {

struct KvCacheT {
  KvCache c;  // geometry and dtype; data/scales point into the tensors below
  T data, scales;
};
// Byte size of the codes and the number of f32 scales of a cache geometry (validated).
void kv_cache_sizes(KvCache c, size_t* data_bytes, int64_t* scale_count);
// Checks the tensors against the geometry and fills c.data / c.scales.
KvCacheT make_kv_cache(KvCache geometry, const T& data, const T& scales);

struct PlanT {
  AttentionPlan plan;
  int32_t kvHeads = 0, blockSize = 0, headDim = 0;
  std::vector<int32_t> indptr, indices;
  // Device backends: the plan's device copy (the packed plan, then indptr, then indices), made
  // by its first run on a device and reused by every layer of the step.
  std::mutex dev_mu;
  std::shared_ptr<Buffer> dev;
  const Device* dev_owner = nullptr;
  size_t dev_indptr = 0, dev_indices = 0;  // byte offsets in dev
  ~PlanT() { attention_plan_free(&plan); }
};
// Builds a plan (on the caller's thread: O(batch + pages)) from page-table arrays it copies.
std::shared_ptr<PlanT> make_attention_plan(int32_t batch, const int32_t* qoIndptr, const int32_t* indptr,
                                           const int32_t* indices, int64_t n_indices, const int32_t* lastPageLen,
                                           int32_t blockSize, int32_t qHeads, int32_t kvHeads, int32_t headDim,
                                           int32_t threads, int32_t splitTokens);

// k, v: [tokens, kvHeads, headDim] f32/f16/bf16; slots: i32 [tokens].
void op_kv_append(const Core&, Stream&, const KvCacheT& cache, int32_t layer, const T& k, const T& v, const T& slots);
// q: [totalQ, qHeads, headDim]; out: same shape (f32/f16/bf16); lse: f32 [totalQ, qHeads] or null.
void op_attention(const Core&, Stream&, const std::shared_ptr<PlanT>& plan, const KvCacheT& cache, int32_t layer,
                  const T& q, const T& out, const T& lse, float smScale, float softCap, int32_t window);
// (o, lse) = merge((oA, lseA), (oB, lseB)); o* [rows, heads, headDim], lse* f32 [rows, heads].
void op_attention_merge(const Core&, Stream&, const T& oA, const T& lseA, const T& oB, const T& lseB, const T& o,
                        const T& lse);
// pairs: i32 [n, 2] (src, dst) for copy-on-write, all layers.
void op_kv_copy_blocks(const Core&, Stream&, const KvCacheT& cache, const T& pairs);

// Offload: out = true copies `blocks` (i32 [n], all layers) into host (u8, n *
// kv_block_host_bytes); out = false copies them back.
void op_kv_swap(const Core&, Stream&, const KvCacheT& cache, const T& blocks, const T& host, bool out);

}  // namespace ty::cpu
