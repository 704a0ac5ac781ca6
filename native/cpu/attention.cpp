// Tachyon CPU backend: validation and planning for the paged KV cache and paged attention
// (the kernels are the ISA variants in native/cpu/kernels/attention.cpp). Not a variant TU.
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include "tachyon/attention.h"
#include "tachyon/error.h"

namespace ty {
namespace {

[[noreturn]] void fail(Code c, const std::string& arg, const std::string& expected, const std::string& got) {
  throw Error(c, "Expected " + expected + " for " + arg + " but received " + got, arg);
}
std::string str(int64_t v) { return std::to_string(v); }
void need_ptr(const void* p, const char* arg) {
  if (!p) fail(Code::INVALID_ARG, arg, "a non-null pointer", "null");
}
void need_range(int64_t v, int64_t lo, int64_t hi, const std::string& arg) {
  if (v < lo || v > hi) fail(Code::INVALID_ARG, arg, "an integer in [" + str(lo) + ", " + str(hi) + "]", str(v));
}
bool act_dtype(DType t) { return t == DType::f32 || t == DType::f16 || t == DType::bf16; }
void need_act(DType t, const char* arg) {
  if (!act_dtype(t)) fail(Code::DTYPE, arg, "f32, f16 or bf16", dtype_name(t));
}
int32_t kv_len_of(const int32_t* indptr, const int32_t* last, int32_t b, int32_t bs) {
  const int32_t pages = indptr[b + 1] - indptr[b];
  return pages == 0 ? 0 : (pages - 1) * bs + last[b];
}
// Page table arrays: monotone indptr starting at 0, lastPageLen in [1, blockSize] where pages > 0.
void check_page_table(int32_t batch, const int32_t* indptr, const int32_t* last, int32_t bs) {
  need_ptr(indptr, "indptr");
  need_ptr(last, "lastPageLen");
  if (indptr[0] != 0) fail(Code::INVALID_ARG, "indptr[0]", "0", str(indptr[0]));
  for (int32_t b = 0; b < batch; ++b) {
    if (indptr[b + 1] < indptr[b])
      fail(Code::INVALID_ARG, "indptr[" + str(b + 1) + "]", "a value >= indptr[" + str(b) + "] = " + str(indptr[b]),
           str(indptr[b + 1]));
    if (indptr[b + 1] > indptr[b]) need_range(last[b], 1, bs, "lastPageLen[" + str(b) + "]");
  }
}

}  // namespace

void kv_cache_check(const KvCache& c) {
  switch (c.dtype) {
    case DType::f32: case DType::f16: case DType::bf16: case DType::fp8e4m3: case DType::fp8e5m2: case DType::int8:
      break;
    default: fail(Code::DTYPE, "cache.dtype", "f32, f16, bf16, fp8e4m3, fp8e5m2 or int8", dtype_name(c.dtype));
  }
  need_range(c.layers, 1, 1 << 16, "cache.layers");
  need_range(c.blocks, 1, 1 << 30, "cache.blocks");
  need_range(c.kvHeads, 1, 1 << 12, "cache.kvHeads");
  need_range(c.blockSize, 1, 1024, "cache.blockSize");
  if (c.headDim < 16 || c.headDim > 256 || c.headDim % 16 != 0)
    fail(Code::INVALID_ARG, "cache.headDim", "a multiple of 16 in [16, 256] (64, 80, 96, 128 or 256)", str(c.headDim));
  need_ptr(c.data, "cache.data");
  if (kv_cache_scale_count(c) > 0) need_ptr(c.scales, "cache.scales");
}

void kv_append_check(const KvAppendArgs& a) {
  kv_cache_check(a.cache);
  need_range(a.layer, 0, a.cache.layers - 1, "layer");
  need_range(a.tokens, 0, INT32_MAX, "tokens");
  need_act(a.srcDtype, "srcDtype");
  if (a.tokens == 0) return;
  need_ptr(a.k, "k");
  need_ptr(a.v, "v");
  need_ptr(a.slots, "slots");
  const int64_t nslots = (int64_t)a.cache.blocks * a.cache.blockSize;
  for (int64_t t = 0; t < a.tokens; ++t) {
    const int32_t s = a.slots[t];
    if (s < -1 || s >= nslots)
      fail(Code::INVALID_ARG, "slots[" + str(t) + "]", "-1 or a slot in [0, " + str(nslots) + ")", str(s));
  }
  if (kv_dtype_fp8(a.cache.dtype)) {
    for (int kv = 0; kv < 2; ++kv)
      for (int h = 0; h < a.cache.kvHeads; ++h) {
        const float s = a.cache.scales[kv_scale_index(a.cache, a.layer, 0, kv, h, 0)];
        if (!(s > 0.0f) || !std::isfinite(s))
          fail(Code::INVALID_ARG, "cache.scales[layer " + str(a.layer) + "][" + str(kv) + "][" + str(h) + "]",
               "a positive finite fp8 scale", std::to_string(s));
      }
  }
}

void attention_plan_check(const AttentionPlanArgs& a) {
  need_range(a.batch, 0, 1 << 24, "batch");
  need_range(a.blockSize, 1, 1024, "blockSize");
  need_range(a.kvHeads, 1, 1 << 12, "kvHeads");
  need_range(a.qHeads, 1, 1 << 16, "qHeads");
  if (a.qHeads % a.kvHeads != 0)
    fail(Code::SHAPE, "qHeads", "a multiple of kvHeads = " + str(a.kvHeads), str(a.qHeads));
  if (a.qHeads / a.kvHeads > 64)
    fail(Code::UNSUPPORTED, "qHeads", "at most 64 query heads per KV head", str(a.qHeads / a.kvHeads));
  if (a.headDim < 16 || a.headDim > 256 || a.headDim % 16 != 0)
    fail(Code::INVALID_ARG, "headDim", "a multiple of 16 in [16, 256]", str(a.headDim));
  need_range(a.threads, 1, 4096, "threads");
  need_range(a.splitTokens, 0, INT32_MAX, "splitTokens");
  need_ptr(a.qoIndptr, "qoIndptr");
  check_page_table(a.batch, a.indptr, a.lastPageLen, a.blockSize);
  if (a.qoIndptr[0] != 0) fail(Code::INVALID_ARG, "qoIndptr[0]", "0", str(a.qoIndptr[0]));
  for (int32_t b = 0; b < a.batch; ++b) {
    const int32_t ql = a.qoIndptr[b + 1] - a.qoIndptr[b];
    const int32_t kl = kv_len_of(a.indptr, a.lastPageLen, b, a.blockSize);
    if (ql < 0 || ql > kl)
      fail(Code::SHAPE, "qoIndptr[" + str(b + 1) + "]",
           "query rows of sequence " + str(b) + " in [0, kvLen = " + str(kl) + "] (qoIndptr[" + str(b) + "] = " +
               str(a.qoIndptr[b]) + ")",
           str(a.qoIndptr[b + 1]));
  }
}

void attention_plan(const AttentionPlanArgs& a, AttentionPlan* plan) {
  attention_plan_check(a);
  const int32_t G = a.qHeads / a.kvHeads;
  // Query positions per work item: up to 64 rows (query position x head of the group), so a
  // converted K/V tile is reused by many rows in prefill.
  const int32_t QT = G >= 64 ? 1 : 64 / G;
  struct Item { int32_t seq, kvh, q0, q1, len; };
  std::vector<Item> items;
  int64_t total_len = 0;
  for (int32_t b = 0; b < a.batch; ++b) {
    const int32_t q0 = a.qoIndptr[b], ql = a.qoIndptr[b + 1] - q0;
    const int32_t kl = kv_len_of(a.indptr, a.lastPageLen, b, a.blockSize);
    for (int32_t c = 0; c < ql; c += QT) {
      const int32_t ce = c + QT < ql ? c + QT : ql;
      const int32_t len = kl - ql + ce;  // positions [0, len) are visible to the item's last row
      for (int32_t h = 0; h < a.kvHeads; ++h) {
        items.push_back({b, h, q0 + c, q0 + ce, len});
        total_len += len;
      }
    }
  }
  int64_t chunk = INT64_MAX;
  if (a.splitTokens > 0) {
    chunk = a.splitTokens;
  } else {
    const int64_t target = 4 * (int64_t)a.threads;
    if ((int64_t)items.size() < target && a.threads > 1) {
      chunk = (total_len + target - 1) / target;
      if (chunk < 256) chunk = 256;
      chunk = (chunk + a.blockSize - 1) / a.blockSize * a.blockSize;
    }
  }
  std::vector<AttnWork> work;
  std::vector<AttnMerge> merge;
  int64_t ws = 0;  // floats
  for (const Item& it : items) {
    const int64_t n = it.len <= chunk ? 1 : (it.len + chunk - 1) / chunk;
    if (n == 1) {
      work.push_back({it.seq, it.kvh, it.q0, it.q1, 0, it.len, -1});
      continue;
    }
    const int64_t stride = (int64_t)(it.q1 - it.q0) * G * (a.headDim + 1);
    const int64_t per = (it.len + n - 1) / n;
    merge.push_back({it.seq, it.kvh, it.q0, it.q1, (int32_t)n, 0, ws, stride});
    for (int64_t s = 0; s < n; ++s) {
      const int64_t k0 = s * per, k1 = k0 + per < it.len ? k0 + per : it.len;
      work.push_back({it.seq, it.kvh, it.q0, it.q1, (int32_t)k0, (int32_t)k1, ws});
      ws += stride;
    }
  }
  // One allocation: work, merge, kvLen, qoIndptr.
  const size_t wb = work.size() * sizeof(AttnWork), mb = merge.size() * sizeof(AttnMerge);
  const size_t kb = (size_t)a.batch * 4, qb = ((size_t)a.batch + 1) * 4;
  char* mem = static_cast<char*>(std::malloc(wb + mb + kb + qb + 16));
  if (!mem) throw Error(Code::OOM, "attention_plan: out of memory");
  AttentionPlan p;
  p.batch = a.batch;
  p.totalQ = a.qoIndptr[a.batch];
  p.blockSize = a.blockSize;
  p.qHeads = a.qHeads;
  p.kvHeads = a.kvHeads;
  p.headDim = a.headDim;
  p.nWork = (int32_t)work.size();
  p.nMerge = (int32_t)merge.size();
  std::memcpy(mem, work.data(), wb);
  std::memcpy(mem + wb, merge.data(), mb);
  int32_t* kvl = reinterpret_cast<int32_t*>(mem + wb + mb);
  for (int32_t b = 0; b < a.batch; ++b) kvl[b] = kv_len_of(a.indptr, a.lastPageLen, b, a.blockSize);
  int32_t* qo = kvl + a.batch;
  std::memcpy(qo, a.qoIndptr, qb);
  p.work = reinterpret_cast<const AttnWork*>(mem);
  p.merge = reinterpret_cast<const AttnMerge*>(mem + wb);
  p.kvLen = kvl;
  p.qoIndptr = qo;
  p.workspaceBytes = (size_t)ws * 4;
  p.storage = mem;
  *plan = p;
}

void attention_plan_free(AttentionPlan* plan) {
  if (!plan) return;
  std::free(plan->storage);
  *plan = AttentionPlan();
}

void attention_run_check(const AttentionPlan& p, const AttentionArgs& a) {
  if (!p.storage && (p.nWork > 0 || p.batch > 0)) fail(Code::INVALID_ARG, "plan", "a plan from attention_plan()", "a freed or empty plan");
  kv_cache_check(a.cache);
  need_range(a.layer, 0, a.cache.layers - 1, "layer");
  if (a.cache.blockSize != p.blockSize) fail(Code::SHAPE, "cache.blockSize", "the planned " + str(p.blockSize), str(a.cache.blockSize));
  if (a.cache.kvHeads != p.kvHeads) fail(Code::SHAPE, "cache.kvHeads", "the planned " + str(p.kvHeads), str(a.cache.kvHeads));
  if (a.cache.headDim != p.headDim) fail(Code::SHAPE, "cache.headDim", "the planned " + str(p.headDim), str(a.cache.headDim));
  need_act(a.qDtype, "qDtype");
  need_act(a.oDtype, "oDtype");
  if (!std::isfinite(a.smScale)) fail(Code::INVALID_ARG, "smScale", "a finite number", std::to_string(a.smScale));
  if (!(a.softCap >= 0.0f) || !std::isfinite(a.softCap))
    fail(Code::INVALID_ARG, "softCap", "0 (off) or a positive finite number", std::to_string(a.softCap));
  need_range(a.window, 0, INT32_MAX, "window");
  if (p.totalQ == 0) return;
  need_ptr(a.q, "q");
  need_ptr(a.o, "o");
  need_ptr(a.indptr, "indptr");
  need_ptr(a.indices, "indices");
  if (p.workspaceBytes > 0) need_ptr(a.workspace, "workspace");
  if (a.indptr[0] != 0) fail(Code::INVALID_ARG, "indptr[0]", "0", str(a.indptr[0]));
  for (int32_t b = 0; b < p.batch; ++b) {
    const int32_t pages = a.indptr[b + 1] - a.indptr[b];
    const int32_t want = (p.kvLen[b] + p.blockSize - 1) / p.blockSize;
    if (pages != want)
      fail(Code::SHAPE, "indptr[" + str(b + 1) + "]",
           "indptr[" + str(b) + "] + " + str(want) + " pages (as planned, kvLen " + str(p.kvLen[b]) + ")",
           str(a.indptr[b + 1]));
  }
  const int32_t np = a.indptr[p.batch];
  for (int32_t i = 0; i < np; ++i)
    if (a.indices[i] < 0 || a.indices[i] >= a.cache.blocks)
      fail(Code::INVALID_ARG, "indices[" + str(i) + "]", "a block in [0, " + str(a.cache.blocks) + ")", str(a.indices[i]));
}

void attention_merge_check(const AttentionMergeArgs& a) {
  need_act(a.dtype, "dtype");
  need_range(a.rows, 0, INT64_MAX / 4, "rows");
  need_range(a.heads, 1, 1 << 16, "heads");
  need_range(a.headDim, 1, 1 << 16, "headDim");
  if (a.rows == 0) return;
  need_ptr(a.oA, "oA");
  need_ptr(a.lseA, "lseA");
  need_ptr(a.oB, "oB");
  need_ptr(a.lseB, "lseB");
  need_ptr(a.o, "o");
  need_ptr(a.lse, "lse");
}

void kv_copy_blocks_check(const KvCopyBlocksArgs& a) {
  kv_cache_check(a.cache);
  need_range(a.n, 0, a.cache.blocks, "n");
  if (a.n == 0) return;
  need_ptr(a.pairs, "pairs");
  std::vector<char> role((size_t)a.cache.blocks, 0);  // 1 source, 2 destination
  for (int64_t i = 0; i < 2 * a.n; ++i) {
    const std::string arg = "pairs[" + str(i / 2) + "][" + str(i % 2) + "]";
    need_range(a.pairs[i], 0, a.cache.blocks - 1, arg);
    if (i % 2 == 0) role[(size_t)a.pairs[i]] |= 1;
  }
  for (int64_t i = 0; i < a.n; ++i) {
    const int32_t d = a.pairs[2 * i + 1];
    if (role[(size_t)d] & 1)
      fail(Code::INVALID_ARG, "pairs[" + str(i) + "][1]", "a destination block that is not also a source", str(d));
    if (role[(size_t)d] & 2)
      fail(Code::INVALID_ARG, "pairs[" + str(i) + "][1]", "distinct destination blocks", str(d) + " twice");
    role[(size_t)d] |= 2;
  }
}

void kv_swap_check(const KvSwapArgs& a) {
  kv_cache_check(a.cache);
  need_range(a.n, 0, INT32_MAX, "n");
  if (a.n == 0) return;
  need_ptr(a.blocks, "blocks");
  need_ptr(a.host, "host");
  std::vector<char> seen(a.out ? 0 : (size_t)a.cache.blocks, 0);
  for (int64_t i = 0; i < a.n; ++i) {
    need_range(a.blocks[i], 0, a.cache.blocks - 1, "blocks[" + str(i) + "]");
    if (!a.out) {  // swapping in twice to one block would race
      if (seen[(size_t)a.blocks[i]])
        fail(Code::INVALID_ARG, "blocks[" + str(i) + "]", "distinct blocks when swapping in", str(a.blocks[i]) + " twice");
      seen[(size_t)a.blocks[i]] = 1;
    }
  }
}

}  // namespace ty
