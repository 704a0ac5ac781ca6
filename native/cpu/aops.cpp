// Tachyon CPU backend: paged KV cache and attention ops (see aops.h).
#include "aops.h"

#include <cstring>

#include "akernels.h"
#include "validate.h"

namespace ty::cpu {
namespace {

void need_shape3(const T& t, int64_t a, int64_t b, int64_t c, const char* arg) {
  if (t->shape != std::vector<int64_t>{a, b, c})
    throw Error(Code::SHAPE, "Expected shape [" + std::to_string(a) + ", " + std::to_string(b) + ", " + std::to_string(c) +
                                 "] for " + arg + " but received " + t->shape_str(), arg);
}

// The plan's device copy on `d` (made once, under the plan's lock, by a synchronous upload from
// the stream thread; later runs on any stream of that device reuse it). Sets *indptr / *indices to
// the device copies of the page table.
const void* plan_on_device(PlanT& p, Device& d, const int32_t** indptr, const int32_t** indices) {
  std::lock_guard<std::mutex> lk(p.dev_mu);
  if (!p.dev || p.dev_owner != &d) {
    auto up16 = [](size_t x) { return (x + 15) & ~size_t(15); };
    const size_t planBytes = d.attention_plan_bytes(p.plan);
    const size_t off_ip = up16(planBytes), off_ix = off_ip + up16(p.indptr.size() * 4);
    const size_t total = off_ix + p.indices.size() * 4;
    std::vector<unsigned char> host(total ? total : 1, 0);
    d.attention_plan_pack(p.plan, host.data());
    if (!p.indptr.empty()) std::memcpy(host.data() + off_ip, p.indptr.data(), p.indptr.size() * 4);
    if (!p.indices.empty()) std::memcpy(host.data() + off_ix, p.indices.data(), p.indices.size() * 4);
    auto buf = d.allocate(host.size());
    d.upload(buf->data, host.data(), host.size());
    p.dev = std::move(buf);
    p.dev_owner = &d;
    p.dev_indptr = off_ip;
    p.dev_indices = off_ix;
  }
  unsigned char* base = static_cast<unsigned char*>(p.dev->data);
  *indptr = reinterpret_cast<const int32_t*>(base + p.dev_indptr);
  *indices = reinterpret_cast<const int32_t*>(base + p.dev_indices);
  return base;
}

// n i32 of device memory read back to the host (waits for the queue): for the ops whose index
// lists are checked on the host before their kernel runs.
std::vector<int32_t> download_i32(Device& d, DeviceStream& q, const int32_t* src, size_t n) {
  std::vector<int32_t> v(n);
  d.to_host(v.data(), src, n * sizeof(int32_t), q);
  q.synchronize();
  return v;
}

}  // namespace

void kv_cache_sizes(KvCache c, size_t* data_bytes, int64_t* scale_count) {
  static float dummy_scale;
  static uint8_t dummy_data;
  c.data = &dummy_data;  // geometry-only check
  c.scales = &dummy_scale;
  kv_cache_check(c);
  *data_bytes = kv_cache_data_bytes(c);
  *scale_count = kv_cache_scale_count(c);
}

KvCacheT make_kv_cache(KvCache g, const T& data, const T& scales) {
  size_t bytes;
  int64_t ns;
  kv_cache_sizes(g, &bytes, &ns);
  need(data, "cache.data");
  need_dtype(data, DType::u8, "cache.data");
  if (data->buf->bytes != bytes)
    throw Error(Code::SHAPE, "Expected " + std::to_string(bytes) + " bytes for cache.data but received " +
                                 std::to_string(data->buf->bytes), "cache.data");
  KvCacheT k;
  k.c = g;
  k.data = data;
  k.c.data = data->buf->data;
  k.c.scales = nullptr;
  if (ns > 0) {
    if (!scales) throw Error(Code::INVALID_ARG, "Expected a Tensor for cache.scales (fp8 / int8 KV) but received nothing", "cache.scales");
    need(scales, "cache.scales");
    need_dtype(scales, DType::f32, "cache.scales");
    if (scales->numel() != ns)
      throw Error(Code::SHAPE, "Expected " + std::to_string(ns) + " elements for cache.scales but received " +
                                   std::to_string(scales->numel()), "cache.scales");
    k.scales = scales;
    k.c.scales = static_cast<float*>(scales->buf->data);
  }
  return k;
}

std::shared_ptr<PlanT> make_attention_plan(int32_t batch, const int32_t* qoIndptr, const int32_t* indptr,
                                           const int32_t* indices, int64_t n_indices, const int32_t* lastPageLen,
                                           int32_t blockSize, int32_t qHeads, int32_t kvHeads, int32_t headDim,
                                           int32_t threads, int32_t splitTokens) {
  AttentionPlanArgs a;
  a.batch = batch;
  a.qoIndptr = qoIndptr;
  a.indptr = indptr;
  a.lastPageLen = lastPageLen;
  a.blockSize = blockSize;
  a.qHeads = qHeads;
  a.kvHeads = kvHeads;
  a.headDim = headDim;
  a.threads = threads;
  a.splitTokens = splitTokens;
  attention_plan_check(a);
  if (indptr[batch] != n_indices)
    throw Error(Code::SHAPE, "Expected indptr[batch] (" + std::to_string(indptr[batch]) + ") to equal the length of indices (" +
                                 std::to_string(n_indices) + ")", "indices");
  auto p = std::make_shared<PlanT>();
  attention_plan(a, &p->plan);
  p->kvHeads = kvHeads;
  p->blockSize = blockSize;
  p->headDim = headDim;
  p->indptr.assign(indptr, indptr + batch + 1);
  p->indices.assign(indices, indices + n_indices);
  return p;
}

void op_kv_append(const Core& rt, Stream& s, const KvCacheT& cache, int32_t layer, const T& k, const T& v, const T& slots) {
  need(k, "k"); need(v, "v"); need(slots, "slots");
  need_float(k, "k");
  need_dtype(v, k->dtype, "v");
  need_dtype(slots, DType::i32, "slots");
  need_rank(slots, 1, 1, "slots");
  const int64_t n = slots->shape[0];
  need_shape3(k, n, cache.c.kvHeads, cache.c.headDim, "k");
  need_shape3(v, n, cache.c.kvHeads, cache.c.headDim, "v");
  if (layer < 0 || layer >= cache.c.layers)
    throw Error(Code::INVALID_ARG, "Expected layer in [0, " + std::to_string(cache.c.layers) + ") but received " +
                                       std::to_string(layer), "layer");
  if (n == 0) return;
  KvAppendArgs a;
  a.cache = cache.c;
  a.layer = layer;
  a.tokens = n;
  a.srcDtype = k->dtype;
  a.k = k->buf->data;
  a.v = v->buf->data;
  a.slots = static_cast<const int32_t*>(slots->buf->data);
  // Device: slots and fp8 scales are device data, checked by the kernel (reported at the next
  // completion point with the same code and argument as here).
  if (device_enqueue(rt, s, "kvAppend", {cache.data, cache.scales, k, v, slots}, [a](Device& d, DeviceStream& q) { d.kv_append(a, q); }))
    return;
  auto fn = TY_DISPATCH(rt->isa, kv_append);
  s.enqueue("kvAppend", [rt, cache, k, v, slots, a, fn] {
    kv_append_check(a);  // slot values are data: checked here, right before use
    fn(a, rt->pool);
  });
}

void op_attention(const Core& rt, Stream& s, const std::shared_ptr<PlanT>& plan, const KvCacheT& cache, int32_t layer,
                  const T& q, const T& out, const T& lse, float smScale, float softCap, int32_t window) {
  if (!plan) throw Error(Code::INVALID_ARG, "Expected an attention plan", "plan");
  const AttentionPlan& p = plan->plan;
  if (p.kvHeads != cache.c.kvHeads || p.headDim != cache.c.headDim || p.blockSize != cache.c.blockSize)
    throw Error(Code::SHAPE, "The plan was built for kvHeads=" + std::to_string(p.kvHeads) + ", headDim=" + std::to_string(p.headDim) +
                                 ", blockSize=" + std::to_string(p.blockSize) + ", not this cache's geometry", "plan");
  need(q, "q"); need(out, "out");
  need_float(q, "q");
  need_float(out, "out");
  need_shape3(q, p.totalQ, p.qHeads, p.headDim, "q");
  need_shape3(out, p.totalQ, p.qHeads, p.headDim, "out");
  if (lse) {
    need(lse, "lse");
    need_dtype(lse, DType::f32, "lse");
    if (lse->shape != std::vector<int64_t>{p.totalQ, p.qHeads})
      throw Error(Code::SHAPE, "Expected shape [" + std::to_string(p.totalQ) + ", " + std::to_string(p.qHeads) +
                                   "] for lse but received " + lse->shape_str(), "lse");
  }
  need_finite(smScale, "smScale");
  need_finite(softCap, "softCap");
  AttentionArgs a;
  a.cache = cache.c;
  a.layer = layer;
  a.qDtype = q->dtype;
  a.q = q->buf->data;
  a.oDtype = out->dtype;
  a.o = out->buf->data;
  a.lse = lse ? static_cast<float*>(lse->buf->data) : nullptr;
  a.indptr = plan->indptr.data();
  a.indices = plan->indices.data();
  a.smScale = smScale;
  a.softCap = softCap;
  a.window = window;
  if (rt->device) {
    // The page table is the plan's own host copy: check it here exactly as on the CPU; the
    // kernel reads the plan's device copy, and its workspace is the queue's scratch.
    static char placeholder;
    a.workspace = &placeholder;
    attention_run_check(p, a);
    if (p.totalQ == 0) return;
    device_enqueue(rt, s, "attention", {cache.data, cache.scales, q, out, lse}, [plan, a](Device& d, DeviceStream& ds) {
      AttentionArgs da = a;
      da.workspace = nullptr;
      const void* dp = plan_on_device(*plan, d, &da.indptr, &da.indices);
      d.attention(plan->plan, dp, da, ds);
    });
    return;
  }
  // Split-KV partials: a buffer per call, so runs of one plan on several streams never share.
  std::shared_ptr<Buffer> ws = p.workspaceBytes ? Buffer::allocate(p.workspaceBytes) : nullptr;
  a.workspace = ws ? ws->data : nullptr;
  attention_run_check(p, a);  // the page table is the plan's own copy: safe to check here
  if (p.totalQ == 0) return;
  auto fn = TY_DISPATCH(rt->isa, attention_run);
  s.enqueue("attention", [rt, plan, cache, q, out, lse, ws, a, fn] { fn(plan->plan, a, rt->pool); });
}

void op_attention_merge(const Core& rt, Stream& s, const T& oA, const T& lseA, const T& oB, const T& lseB, const T& o,
                        const T& lse) {
  for (auto [t, arg] : {std::pair<const T&, const char*>{oA, "oA"}, {lseA, "lseA"}, {oB, "oB"}, {lseB, "lseB"}, {o, "out"}, {lse, "lse"}})
    need(t, arg);
  need_float(oA, "oA");
  need_rank(oA, 3, 3, "oA");
  need_dtype(oB, oA->dtype, "oB");
  need_dtype(o, oA->dtype, "out");
  need_same_shape(oB, oA, "oB", "oA");
  need_same_shape(o, oA, "out", "oA");
  const std::vector<int64_t> ls{oA->shape[0], oA->shape[1]};
  for (auto [t, arg] : {std::pair<const T&, const char*>{lseA, "lseA"}, {lseB, "lseB"}, {lse, "lse"}}) {
    need_dtype(t, DType::f32, arg);
    if (t->shape != ls)
      throw Error(Code::SHAPE, std::string("Expected shape [") + std::to_string(ls[0]) + ", " + std::to_string(ls[1]) + "] for " +
                                   arg + " but received " + t->shape_str(), arg);
  }
  AttentionMergeArgs a;
  a.dtype = oA->dtype;
  a.rows = oA->shape[0];
  a.heads = (int32_t)oA->shape[1];
  a.headDim = (int32_t)oA->shape[2];
  a.oA = oA->buf->data;
  a.lseA = static_cast<const float*>(lseA->buf->data);
  a.oB = oB->buf->data;
  a.lseB = static_cast<const float*>(lseB->buf->data);
  a.o = o->buf->data;
  a.lse = static_cast<float*>(lse->buf->data);
  attention_merge_check(a);
  if (a.rows == 0) return;
  if (device_enqueue(rt, s, "attentionMerge", {oA, lseA, oB, lseB, o, lse}, [a](Device& d, DeviceStream& q) { d.attention_merge(a, q); }))
    return;
  auto fn = TY_DISPATCH(rt->isa, attention_merge);
  s.enqueue("attentionMerge", [rt, oA, lseA, oB, lseB, o, lse, a, fn] { fn(a, rt->pool); });
}

void op_kv_copy_blocks(const Core& rt, Stream& s, const KvCacheT& cache, const T& pairs) {
  need(pairs, "pairs");
  need_dtype(pairs, DType::i32, "pairs");
  if (pairs->shape.size() != 2 || pairs->shape[1] != 2)
    throw Error(Code::SHAPE, "Expected shape [n, 2] for pairs but received " + pairs->shape_str(), "pairs");
  KvCopyBlocksArgs a;
  a.cache = cache.c;
  a.pairs = static_cast<const int32_t*>(pairs->buf->data);
  a.n = pairs->shape[0];
  if (a.n == 0) return;
  // Device: the pairs are read back (a synchronization; copy-on-write is rare) and checked on
  // the host exactly as on the CPU before the copy kernel runs.
  if (device_enqueue(rt, s, "kvCopyBlocks", {cache.data, cache.scales, pairs}, [a](Device& d, DeviceStream& q) {
        const std::vector<int32_t> host = download_i32(d, q, a.pairs, (size_t)a.n * 2);
        KvCopyBlocksArgs h = a;
        h.pairs = host.data();
        kv_copy_blocks_check(h);
        d.kv_copy_blocks(a, q);
      }))
    return;
  auto fn = TY_DISPATCH(rt->isa, kv_copy_blocks);
  s.enqueue("kvCopyBlocks", [rt, cache, pairs, a, fn] {
    kv_copy_blocks_check(a);  // pair values are data: checked right before use
    fn(a, rt->pool);
  });
}

void op_kv_swap(const Core& rt, Stream& s, const KvCacheT& cache, const T& blocks, const T& host, bool out) {
  need(blocks, "blocks");
  need_dtype(blocks, DType::i32, "blocks");
  need_rank(blocks, 1, 1, "blocks");
  need(host, "host");
  need_dtype(host, DType::u8, "host");
  const int64_t n = blocks->shape[0];
  const size_t want = (size_t)n * kv_block_host_bytes(cache.c);
  if (host->buf->bytes != want)
    throw Error(Code::SHAPE, "Expected " + std::to_string(want) + " bytes for host (" + std::to_string(n) +
                                 " blocks) but received " + std::to_string(host->buf->bytes), "host");
  if (rt->device && !(host->buf->space == MemSpace::host && host->buf->pinned))
    throw Error(Code::BACKEND, std::string("Expected pinned host memory for host on backend ") + rt->backend() +
                                   " (kvSwapOut's tensor, or runtime.empty(shape, 'u8', { pinned: true })) but it lives on " +
                                   mem_space_name(host->buf->space) + (host->buf->pinned ? "" : " and is not pinned"), "host");
  if (n == 0) return;
  KvSwapArgs a;
  a.cache = cache.c;
  a.blocks = static_cast<const int32_t*>(blocks->buf->data);
  a.n = n;
  a.host = host->buf->data;
  a.out = out;
  // Device: the block ids are read back (a synchronization; swaps are rare and large) and checked
  // on the host exactly as on the CPU, then one kernel moves every layer's blocks over the bus.
  if (device_enqueue(rt, s, out ? "kvSwapOut" : "kvSwapIn", {cache.data, cache.scales, blocks, host}, [a](Device& d, DeviceStream& q) {
        const std::vector<int32_t> ids = download_i32(d, q, a.blocks, (size_t)a.n);
        KvSwapArgs h = a;
        h.blocks = ids.data();
        kv_swap_check(h);
        d.kv_swap_blocks(a, q);
      }))
    return;
  auto fn = TY_DISPATCH(rt->isa, kv_swap_blocks);
  s.enqueue(out ? "kvSwapOut" : "kvSwapIn", [rt, cache, blocks, host, a, fn] {
    kv_swap_check(a);  // block ids are data: checked right before use
    fn(a, rt->pool);
  });
}

}  // namespace ty::cpu
