/**
 * The `attention` suite: fused paged attention over a Llama-3-8B-shaped layer (32 query
 * heads, 8 KV heads, head dim 128, block 16).
 *
 * - decode: one query per sequence at contexts 512 / 4k / 32k and batch 1 / 8 / 32, KV in
 *   f16 and fp8e4m3. Figure: KV bytes read per second, as a ratio to the DRAM probe. Each
 *   case rotates between two caches (separate layers) when one fits in cache.
 * - paged vs contiguous: the same decode with the physical pages shuffled at random versus
 *   laid out in order (an identity page table is contiguous storage).
 * - prefill of 512 and 4k tokens (causal): MAC/s (QKᵀ and PV, causal half) vs the f32 peak,
 *   fused (the paged kernel) against unfused: per head, S = Q·Kᵀ materialised [n, n] in f32,
 *   + a causal mask, softmax, then S·V (the classic path; it computes the full square).
 * Cases whose KV would exceed `maxKvBytes` (default 6 GiB) are skipped and listed.
 */
import { Runtime } from '../runtime/runtime';
import { Tensor } from '../runtime/tensor';
import { attention, createKvCache, KvCache, planAttention, AttentionPlan } from '../ops/attention';
import { matmul } from '../ops/matmul';
import { add } from '../ops/elementwise';
import { softmax } from '../ops/softmax';
import { BenchResult, Machine, median, timeOnStream } from './common';

const QH = 32;
const KVH = 8;
const D = 128;
const BS = 16;

export interface AttentionSuiteOptions {
  repeats: number;
  quick?: boolean;
  maxKvBytes?: number;
}

function pageTable(
  batch: number,
  ctx: number,
  qlen: number,
  shuffle: boolean,
  blocks: number,
  seed: number,
): { qoIndptr: Int32Array; indptr: Int32Array; indices: Int32Array; lastPageLen: Int32Array } {
  const pages = Math.ceil(ctx / BS);
  const ids = Int32Array.from({ length: blocks }, (_, i) => i);
  if (shuffle) {
    let s = seed >>> 0;
    for (let i = blocks - 1; i > 0; i--) {
      s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
      const j = s % (i + 1);
      [ids[i], ids[j]] = [ids[j], ids[i]];
    }
  }
  return {
    qoIndptr: Int32Array.from({ length: batch + 1 }, (_, b) => b * qlen),
    indptr: Int32Array.from({ length: batch + 1 }, (_, b) => b * pages),
    indices: ids.subarray(0, batch * pages),
    lastPageLen: new Int32Array(batch).fill(ctx - (pages - 1) * BS),
  };
}

export async function runAttention(
  rt: Runtime,
  machine: Machine,
  opts: AttentionSuiteOptions,
): Promise<BenchResult[]> {
  const results: BenchResult[] = [];
  const maxKv = opts.maxKvBytes ?? 6 * 2 ** 30;
  const contexts = opts.quick ? [512, 4096] : [512, 4096, 32768];
  const batches = opts.quick ? [1, 8] : [1, 8, 32];
  const skipped: string[] = [];
  for (const dtype of ['f16', 'fp8e4m3'] as const) {
    const elem = dtype === 'f16' ? 2 : 1;
    for (const ctx of contexts)
      for (const batch of batches) {
        const pages = Math.ceil(ctx / BS);
        const blocks = batch * pages;
        const kvBytes = blocks * BS * KVH * D * 2 * elem;
        if (kvBytes > maxKv) {
          skipped.push(
            `decode ${dtype} ctx=${ctx} batch=${batch} (${(kvBytes / 2 ** 30).toFixed(1)} GiB of KV)`,
          );
          continue;
        }
        // two layers so consecutive calls alternate: a cache that fits in L3 is not re-read hot
        const layers =
          kvBytes < 64 * 2 ** 20 ? Math.max(2, Math.ceil((256 * 2 ** 20) / kvBytes)) : 1;
        const cache = createKvCache(rt, {
          layers,
          blocks,
          kvHeads: KVH,
          blockSize: BS,
          headDim: D,
          dtype,
        });
        const q = rt.tensor(new Float32Array(batch * QH * D).fill(0.01), [batch, QH, D]);
        const out = rt.empty([batch, QH, D]);
        for (const shuffle of [false, true]) {
          const plan = planAttention(
            cache,
            pageTable(batch, ctx, 1, shuffle, blocks, ctx + batch),
            { qHeads: QH },
          );
          let layer = 0;
          const times = await timeOnStream(
            rt.defaultStream,
            () => attention(plan, cache, layer++ % layers, q, { out }),
            opts.repeats,
            2,
          );
          const ms = median(times);
          const bytes = batch * ctx * KVH * D * 2 * elem;
          const gbPerS = bytes / (ms / 1e3) / 1e9;
          results.push({
            suite: 'attention',
            case: `decode ${dtype} ctx=${ctx} batch=${batch} ${shuffle ? 'paged (shuffled)' : 'contiguous'}`,
            params: {
              kind: 'decode',
              dtype,
              ctx,
              batch,
              shuffled: shuffle,
              qHeads: QH,
              kvHeads: KVH,
              headDim: D,
              layers,
            },
            medianMs: ms,
            minMs: Math.min(...times),
            repeats: opts.repeats,
            gbPerS,
            roofline: { kind: 'bandwidth', ratio: gbPerS / machine.bandwidthGBs },
          });
        }
        dispose(cache, q, out);
      }
  }
  for (const n of opts.quick ? [512] : [512, 4096]) {
    const blocks = Math.ceil(n / BS);
    const cache = createKvCache(rt, {
      layers: 1,
      blocks,
      kvHeads: KVH,
      blockSize: BS,
      headDim: D,
      dtype: 'f16',
    });
    const q = rt.tensor(new Float32Array(n * QH * D).fill(0.01), [n, QH, D]);
    const out = rt.empty([n, QH, D]);
    const plan: AttentionPlan = planAttention(cache, pageTable(1, n, n, false, blocks, 1), {
      qHeads: QH,
    });
    const repeats = n >= 4096 ? Math.max(3, Math.min(opts.repeats, 5)) : opts.repeats;
    const times = await timeOnStream(
      rt.defaultStream,
      () => attention(plan, cache, 0, q, { out }),
      repeats,
      1,
    );
    const ms = median(times);
    const macs = QH * D * 2 * ((n * (n + 1)) / 2);
    const macPerS = macs / (ms / 1e3);
    results.push({
      suite: 'attention',
      case: `prefill f16 ${n} tokens`,
      params: { kind: 'prefill', dtype: 'f16', tokens: n, qHeads: QH, kvHeads: KVH, headDim: D },
      medianMs: ms,
      minMs: Math.min(...times),
      repeats,
      macPerS,
      roofline: { kind: 'compute', ratio: macPerS / machine.peakMacPerS.f32 },
    });
    dispose(cache, q, out);

    // unfused: the same work through matmul / add / softmax / matmul, one head at a time
    const qh = rt.tensor(new Float32Array(n * D).fill(0.01), [n, D]);
    const kvh = Array.from({ length: KVH }, (_, i) =>
      rt.tensor(new Float32Array(n * D).fill(0.001 * (i + 1)), [n, D]),
    );
    const maskv = new Float32Array(n * n);
    for (let i = 0; i < n; i++) maskv.fill(-1e30, i * n + i + 1, (i + 1) * n);
    const mask = rt.tensor(maskv, [n, n]);
    const sc = rt.empty([n, n]);
    const oh = rt.empty([n, D]);
    const scale = 1 / Math.sqrt(D);
    const runUnfused = (): void => {
      for (let h = 0; h < QH; h++) {
        const kv = kvh[Math.floor(h / (QH / KVH))];
        matmul(qh, kv, { out: sc });
        add(sc, mask, { out: sc });
        softmax(sc, { scale, out: sc });
        matmul(sc, kv, { transB: false, out: oh });
      }
    };
    const ut = await timeOnStream(rt.defaultStream, runUnfused, repeats, 1);
    const ums = median(ut);
    results.push({
      suite: 'attention',
      case: `prefill f32 ${n} tokens, unfused (materialised scores)`,
      params: {
        kind: 'prefill-unfused',
        dtype: 'f32',
        tokens: n,
        qHeads: QH,
        kvHeads: KVH,
        headDim: D,
        fusedMs: ms,
      },
      medianMs: ums,
      minMs: Math.min(...ut),
      repeats,
      macPerS: macs / (ums / 1e3),
      roofline: { kind: 'compute', ratio: macs / (ums / 1e3) / machine.peakMacPerS.f32 },
      fusedSpeedup: ums / ms,
    });
    for (const t of [qh, ...kvh, mask, sc, oh]) t.dispose();
  }
  if (skipped.length)
    console.log(
      `attention: skipped (over ${(maxKv / 2 ** 30).toFixed(0)} GiB): ${skipped.join('; ')}`,
    );
  return results;
}

function dispose(cache: KvCache, ...ts: Tensor[]): void {
  cache.dispose();
  for (const t of ts) t.dispose();
}
