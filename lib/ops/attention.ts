import { DType, FloatDType } from '../runtime/dtype';
import { invalidArg, KernelError } from '../runtime/errors';
import { Runtime } from '../runtime/runtime';
import { Tensor } from '../runtime/tensor';
import { binding, enqueue, OpOptions, optTensorArg, outArg, streamOf, tensorArg } from './common';

/**
 * Paged KV cache and fused attention (native/include/tachyon/attention.h).
 *
 * Storage: [layers][blocks][K|V][kvHeads][blockSize][headDim] codes, so one head's tokens
 * of a block are contiguous. KV dtypes f32, f16, bf16, fp8e4m3 / fp8e5m2 (one f32 scale
 * per layer, K|V and head: `scales` [layers, 2, kvHeads], default 1, set them with
 * `cache.scales.write(...)`) and int8 (a scale per token and head, written by kvAppend).
 * Dequantization happens inside the attention kernel.
 *
 * A step: lib/kv's BlockManager builds the page table (CSR `indptr` / `indices` /
 * `lastPageLen`, `qoIndptr`, slot mapping); `kvAppend` writes the new tokens' K and V;
 * `planAttention` partitions the work once; `attention(plan, cache, layer, q)` runs it for
 * every layer.
 */

export type KvDType = 'f32' | 'f16' | 'bf16' | 'fp8e4m3' | 'fp8e5m2' | 'int8';

export interface KvCacheOptions {
  layers: number;
  blocks: number;
  kvHeads: number;
  blockSize: number;
  /** A multiple of 16 up to 256 (64, 80, 96, 128 and 256 are the tested ones). */
  headDim: number;
  dtype?: KvDType;
}

export class KvCache {
  readonly layers: number;
  readonly blocks: number;
  readonly kvHeads: number;
  readonly blockSize: number;
  readonly headDim: number;
  readonly dtype: KvDType;
  /** Codes (u8 view of the whole pool). */
  readonly data: Tensor;
  /** f32 scales: fp8 [layers, 2, kvHeads]; int8 [layers, blocks, 2, kvHeads, blockSize]. */
  readonly scales: Tensor | undefined;

  /** @internal use createKvCache() */
  constructor(o: Required<KvCacheOptions>, data: Tensor, scales: Tensor | undefined) {
    this.layers = o.layers;
    this.blocks = o.blocks;
    this.kvHeads = o.kvHeads;
    this.blockSize = o.blockSize;
    this.headDim = o.headDim;
    this.dtype = o.dtype;
    this.data = data;
    this.scales = scales;
  }
  get runtime(): Runtime {
    return this.data.runtime;
  }
  get disposed(): boolean {
    return this.data.disposed;
  }
  /** @internal the descriptor the binding takes */
  nativeArg(op: string): Record<string, unknown> {
    const data = tensorArg(this.data, op, 'cache');
    return {
      dtype: this.dtype,
      layers: this.layers,
      blocks: this.blocks,
      kvHeads: this.kvHeads,
      blockSize: this.blockSize,
      headDim: this.headDim,
      data: data.native,
      scales: this.scales ? tensorArg(this.scales, op, 'cache.scales').native : null,
    };
  }
  dispose(): void {
    this.data.dispose();
    this.scales?.dispose();
  }
  [Symbol.dispose](): void {
    this.dispose();
  }
}

/** Allocates a paged KV pool (zero-filled; fp8 scales 1). */
export function createKvCache(rt: Runtime, options: KvCacheOptions): KvCache {
  if (typeof options !== 'object' || options === null)
    throw invalidArg('createKvCache', 'options', 'an options object', options);
  const o: Required<KvCacheOptions> = { dtype: 'f16', ...options };
  let sizes: { dataBytes: number; scaleCount: number };
  try {
    sizes = binding().kvCacheSizes(o);
  } catch (e) {
    if (e instanceof KernelError) (e as { op: string }).op = 'createKvCache';
    throw e;
  }
  const data = rt.zeros([sizes.dataBytes], 'u8');
  let scales: Tensor | undefined;
  if (sizes.scaleCount > 0) {
    const init = new Float32Array(sizes.scaleCount).fill(o.dtype === 'int8' ? 0 : 1);
    scales = rt.tensor(init, o.dtype === 'int8' ? [sizes.scaleCount] : [o.layers, 2, o.kvHeads]);
  }
  return new KvCache(o, data, scales);
}

/**
 * Writes new tokens' K and V ([tokens, kvHeads, headDim], f32/f16/bf16) into their slots
 * (i32 [tokens]: block·blockSize + offset, or -1 to skip) of `layer`, quantizing on the way
 * in. Slot values are checked on the stream, right before use.
 */
export function kvAppend(
  cache: KvCache,
  layer: number,
  k: Tensor,
  v: Tensor,
  slots: Tensor | Int32Array,
  options: OpOptions = {},
): void {
  k = tensorArg(k, 'kvAppend', 'k');
  v = tensorArg(v, 'kvAppend', 'v');
  const owned = slots instanceof Int32Array;
  const s = owned
    ? k.runtime.tensor(slots, [slots.length], { dtype: 'i32' })
    : tensorArg(slots, 'kvAppend', 'slots');
  try {
    binding().kvAppend(
      streamOf(k, options).native,
      cache.nativeArg('kvAppend'),
      layer,
      k.native,
      v.native,
      s.native,
    );
  } finally {
    if (owned) s.dispose(); // the queued op holds its own reference
  }
}

/** The page table of one step (what lib/kv's buildPageTable returns has these fields). */
export interface AttentionPageTable {
  qoIndptr: Int32Array;
  indptr: Int32Array;
  indices: Int32Array;
  lastPageLen: Int32Array;
}

/** A work partition for one step, reused by every layer's attention(). */
export class AttentionPlan {
  /** @internal */
  readonly handle: unknown;
  readonly qHeads: number;
  readonly totalQ: number;
  readonly workItems: number;
  readonly merges: number;
  /** @internal */
  constructor(
    h: { handle: unknown; totalQ: number; workItems: number; merges: number },
    qHeads: number,
  ) {
    this.handle = h.handle;
    this.totalQ = h.totalQ;
    this.workItems = h.workItems;
    this.merges = h.merges;
    this.qHeads = qHeads;
  }
}

export interface PlanAttentionOptions {
  qHeads: number;
  /** Split every KV range into chunks of at most this many tokens (0: automatic split-KV). */
  splitTokens?: number;
}

/**
 * Builds the attention work partition for a step's page table (copied into the plan): one
 * item per (sequence, KV head, query rows, KV range), with split-KV for long contexts and
 * few items; the partial results are merged through (output, log-sum-exp).
 */
export function planAttention(
  cache: KvCache,
  table: AttentionPageTable,
  options: PlanAttentionOptions,
): AttentionPlan {
  if (!(cache instanceof KvCache)) throw invalidArg('planAttention', 'cache', 'a KvCache', cache);
  try {
    const h = binding().planAttention(
      cache.nativeArg('planAttention'),
      options.qHeads,
      table.qoIndptr,
      table.indptr,
      table.indices,
      table.lastPageLen,
      cache.runtime.parallelism,
      options.splitTokens ?? 0,
    );
    return new AttentionPlan(h, options.qHeads);
  } catch (e) {
    if (e instanceof KernelError) (e as { op: string }).op = 'planAttention';
    throw e;
  }
}

export interface AttentionOptions extends OpOptions {
  /** Softmax scale; default 1/sqrt(headDim). */
  smScale?: number;
  /** > 0: logits become cap·tanh(s/cap). */
  softCap?: number;
  /** > 0: each query attends only to the last `window` positions (itself included). */
  window?: number;
  out?: Tensor;
  outDtype?: FloatDType;
  /** An f32 [totalQ, qHeads] tensor to receive the log-sum-exp (natural log). */
  lse?: Tensor;
}

/**
 * Fused paged attention for one layer: q [totalQ, qHeads, headDim] → out (same shape).
 * Causal: the queries of a sequence are its last qlen positions. GQA/MQA when qHeads is a
 * multiple of the cache's kvHeads.
 */
export function attention(
  plan: AttentionPlan,
  cache: KvCache,
  layer: number,
  q: Tensor,
  options: AttentionOptions = {},
): Tensor {
  if (!(plan instanceof AttentionPlan))
    throw invalidArg('attention', 'plan', 'an AttentionPlan', plan);
  q = tensorArg(q, 'attention', 'q');
  const lse = optTensorArg(options.lse, 'attention', 'lse');
  const out = outArg(options.out, q, q.shape, options.outDtype ?? (q.dtype as DType), 'attention');
  return enqueue(out, options.out === undefined, () =>
    binding().attention(
      streamOf(q, options).native,
      plan.handle,
      cache.nativeArg('attention'),
      layer,
      q.native,
      out.native,
      lse?.native ?? null,
      options.smScale ?? 1 / Math.sqrt(cache.headDim),
      options.softCap ?? 0,
      options.window ?? 0,
    ),
  );
}

/**
 * Merges two partial attention results over the same queries:
 * o = (e^{lseA−m}·oA + e^{lseB−m}·oB) / (e^{lseA−m} + e^{lseB−m}), lse = m + log(Σ).
 * o* [rows, heads, headDim], lse* f32 [rows, heads]. Returns {out, lse}.
 */
export function attentionMerge(
  oA: Tensor,
  lseA: Tensor,
  oB: Tensor,
  lseB: Tensor,
  options: OpOptions & { out?: Tensor; lse?: Tensor } = {},
): { out: Tensor; lse: Tensor } {
  oA = tensorArg(oA, 'attentionMerge', 'oA');
  const out = outArg(options.out, oA, oA.shape, oA.dtype, 'attentionMerge');
  const lse = outArg(options.lse, oA, oA.shape.slice(0, 2), 'f32', 'attentionMerge');
  try {
    binding().attentionMerge(
      streamOf(oA, options).native,
      oA.native,
      tensorArg(lseA, 'attentionMerge', 'lseA').native,
      tensorArg(oB, 'attentionMerge', 'oB').native,
      tensorArg(lseB, 'attentionMerge', 'lseB').native,
      out.native,
      lse.native,
    );
  } catch (e) {
    if (options.out === undefined) out.dispose();
    if (options.lse === undefined) lse.dispose();
    throw e;
  }
  return { out, lse };
}

/** Copy-on-write: copies block pairs [src, dst, src, dst, ...] in every layer. */
export function kvCopyBlocks(cache: KvCache, pairs: Int32Array, options: OpOptions = {}): void {
  if (!(pairs instanceof Int32Array) || pairs.length % 2 !== 0)
    throw invalidArg('kvCopyBlocks', 'pairs', 'an Int32Array of [src, dst] pairs', pairs);
  if (pairs.length === 0) return;
  const t = cache.runtime.tensor(pairs, [pairs.length / 2, 2], { dtype: 'i32' });
  try {
    binding().kvCopyBlocks(
      streamOf(cache.data, options).native,
      cache.nativeArg('kvCopyBlocks'),
      t.native,
    );
  } finally {
    t.dispose();
  }
}

/**
 * Offload: copies `blocks` (every layer, codes and int8 scales) out of the pool into a new
 * host u8 tensor of blocks.length × bytesPerBlock; kvSwapIn copies such a tensor back
 * into (possibly different) blocks. Block ids are checked on the stream.
 */
export function kvSwapOut(cache: KvCache, blocks: Int32Array, options: OpOptions = {}): Tensor {
  if (!(blocks instanceof Int32Array))
    throw invalidArg('kvSwapOut', 'blocks', 'an Int32Array', blocks);
  const per = binding().kvBlockHostBytes(cache.nativeArg('kvSwapOut'));
  // On a device the swap space is pinned host memory the swap kernel reads and writes directly.
  const host = cache.runtime.empty([blocks.length * per], 'u8', { pinned: true });
  return enqueue(host, true, () => swap(cache, blocks, host, true, options));
}
export function kvSwapIn(
  cache: KvCache,
  blocks: Int32Array,
  host: Tensor,
  options: OpOptions = {},
): void {
  if (!(blocks instanceof Int32Array))
    throw invalidArg('kvSwapIn', 'blocks', 'an Int32Array', blocks);
  swap(cache, blocks, tensorArg(host, 'kvSwapIn', 'host'), false, options);
}
function swap(
  cache: KvCache,
  blocks: Int32Array,
  host: Tensor,
  out: boolean,
  options: OpOptions,
): void {
  const b = cache.runtime.tensor(blocks, [blocks.length], { dtype: 'i32' });
  try {
    binding().kvSwap(
      streamOf(cache.data, options).native,
      cache.nativeArg('kvSwap'),
      b.native,
      host.native,
      out,
    );
  } finally {
    b.dispose();
  }
}
