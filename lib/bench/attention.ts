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
 *
 * On a device backend (cuda, cuda-emu) queries and outputs are f16 (the kernels' compute type
 * for f16 and fp8 KV), decode rotates through layers totalling more than the GPU's L2
 * (DEVICE_ROTATE_BYTES), prefill is compared with the device's f16 tensor-core peak, and the
 * unfused path runs in f16 with Vᵀ stored [D, n] (the device matmul takes B as [N, K] only).
 * cuda-emu runs tiny contexts (the emulator is ~10^5× slower than a GPU): the path, not figures.
 * KV dtypes a backend cannot attend over (f32 on a device) are skipped and listed.
 */
import { DType, encode } from '../runtime/dtype';
import { KernelError } from '../runtime/errors';
import { Runtime } from '../runtime/runtime';
import { Tensor } from '../runtime/tensor';
import { attention, createKvCache, KvCache, planAttention, AttentionPlan } from '../ops/attention';
import { matmul } from '../ops/matmul';
import { add } from '../ops/elementwise';
import { softmax } from '../ops/softmax';
import {
  BenchResult,
  DEVICE_ROTATE_BYTES,
  isDevice,
  Machine,
  median,
  timeRuns,
  whereRan,
} from './common';

const QH = 32;
const KVH = 8;
const D = 128;
const BS = 16;

export interface AttentionSuiteOptions {
  repeats: number;
  quick?: boolean;
  maxKvBytes?: number;
}

/** Contexts, batches and prefill lengths per backend. */
function sizes(rt: Runtime, quick?: boolean) {
  if (rt.backend === 'cuda-emu')
    return quick
      ? { contexts: [64], batches: [1], prefill: [32] }
      : { contexts: [64, 256], batches: [1, 4], prefill: [32, 64] };
  return quick
    ? { contexts: [512, 4096], batches: [1, 8], prefill: [512] }
    : { contexts: [512, 4096, 32768], batches: [1, 8, 32], prefill: [512, 4096] };
}

/** A tensor of `shape` filled with `x`, in `dtype`. */
function filled(rt: Runtime, shape: number[], x: number, dtype: 'f32' | 'f16'): Tensor {
  const v = new Float32Array(shape.reduce((a, b) => a * b, 1)).fill(x);
  return dtype === 'f32' ? rt.tensor(v, shape) : rt.tensor(encode(dtype, v), shape, { dtype });
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
  const device = isDevice(rt);
  const { contexts, batches, prefill } = sizes(rt, opts.quick);
  // the compute type: f16 queries and outputs on a device (f32 on the CPU, its kernels' type)
  const qDtype = device ? 'f16' : 'f32';
  // decode caches that fit in the last-level cache are rotated through until this many bytes
  const rotate = rt.backend === 'cuda' ? DEVICE_ROTATE_BYTES : device ? 0 : 256 * 2 ** 20;
  const fitsInCache = rt.backend === 'cuda' ? DEVICE_ROTATE_BYTES : device ? 2 ** 60 : 64 * 2 ** 20;
  const skipped: string[] = [];
  const unsupported: string[] = [];
  // E_UNSUPPORTED (a KV dtype the backend cannot attend over) is a note, not a failure; it may
  // surface at the stream's completion point, so the stream is reset
  const orSkip = async (what: string, f: () => Promise<void>): Promise<void> => {
    try {
      await f();
    } catch (e) {
      if (!(e instanceof KernelError) || e.code !== 'E_UNSUPPORTED') throw e;
      rt.defaultStream.reset();
      unsupported.push(`${what} (${e.message})`);
    }
  };
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
        // several layers so consecutive calls alternate: a cache that fits in L3 (a GPU's L2)
        // is not re-read hot
        const layers = kvBytes < fitsInCache ? Math.max(2, Math.ceil(rotate / kvBytes)) : 1;
        const cache = createKvCache(rt, {
          layers,
          blocks,
          kvHeads: KVH,
          blockSize: BS,
          headDim: D,
          dtype,
        });
        const q = filled(rt, [batch, QH, D], 0.01, qDtype);
        const out = rt.empty([batch, QH, D], qDtype);
        for (const shuffle of [false, true]) {
          const name = `decode ${dtype} ctx=${ctx} batch=${batch} ${shuffle ? 'paged (shuffled)' : 'contiguous'}`;
          await orSkip(name, async () => {
            const plan = planAttention(
              cache,
              pageTable(batch, ctx, 1, shuffle, blocks, ctx + batch),
              { qHeads: QH },
            );
            let layer = 0;
            const { times, runsPerSample } = await timeRuns(
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
              case: name,
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
                query: qDtype,
              },
              medianMs: ms,
              minMs: Math.min(...times),
              repeats: opts.repeats,
              gbPerS,
              roofline: { kind: 'bandwidth', ratio: gbPerS / machine.bandwidthGBs },
              ...whereRan(rt, machine, { runsPerSample, medianMs: ms }),
            });
          });
        }
        dispose(cache, q, out);
      }
  }
  // the compute roof of prefill: the f32 FMA peak on the CPU, the f16 tensor cores on a device
  const peakName = device ? 'f16' : 'f32';
  const peak = machine.peakMacPerS[peakName] as number;
  for (const n of prefill) {
    const blocks = Math.ceil(n / BS);
    const cache = createKvCache(rt, {
      layers: 1,
      blocks,
      kvHeads: KVH,
      blockSize: BS,
      headDim: D,
      dtype: 'f16',
    });
    const q = filled(rt, [n, QH, D], 0.01, qDtype);
    const out = rt.empty([n, QH, D], qDtype);
    const plan: AttentionPlan = planAttention(cache, pageTable(1, n, n, false, blocks, 1), {
      qHeads: QH,
    });
    const repeats = !device && n >= 4096 ? Math.max(3, Math.min(opts.repeats, 5)) : opts.repeats;
    const macs = QH * D * 2 * ((n * (n + 1)) / 2);
    let fusedMs = NaN;
    await orSkip(`prefill f16 ${n} tokens`, async () => {
      const { times, runsPerSample } = await timeRuns(
        rt.defaultStream,
        () => attention(plan, cache, 0, q, { out }),
        repeats,
        1,
      );
      const ms = (fusedMs = median(times));
      const macPerS = macs / (ms / 1e3);
      results.push({
        suite: 'attention',
        case: `prefill f16 ${n} tokens`,
        params: {
          kind: 'prefill',
          dtype: 'f16',
          tokens: n,
          qHeads: QH,
          kvHeads: KVH,
          headDim: D,
          query: qDtype,
          peak: peakName,
        },
        medianMs: ms,
        minMs: Math.min(...times),
        repeats,
        macPerS,
        roofline: { kind: 'compute', ratio: macPerS / peak, peak: peakName },
        ...whereRan(rt, machine, { runsPerSample, medianMs: ms }),
      });
    });
    dispose(cache, q, out);

    // unfused: the same work through matmul / add / softmax / matmul, one head at a time
    // (f32 on the CPU; f16 on a device, with V stored transposed: its matmul takes B as [N, K])
    const udt: DType = device ? 'f16' : 'f32';
    const qh = filled(rt, [n, D], 0.01, udt);
    const kvh = Array.from({ length: KVH }, (_, i) => filled(rt, [n, D], 0.001 * (i + 1), udt));
    const vth = device
      ? Array.from({ length: KVH }, (_, i) => filled(rt, [D, n], 0.001 * (i + 1), 'f16'))
      : kvh;
    const maskv = new Float32Array(n * n);
    // -1e30 is -inf in f16: exp(-inf) = 0 all the same
    for (let i = 0; i < n; i++) maskv.fill(-1e30, i * n + i + 1, (i + 1) * n);
    const mask = device
      ? rt.tensor(encode('f16', maskv), [n, n], { dtype: 'f16' })
      : rt.tensor(maskv, [n, n]);
    const sc = rt.empty([n, n], udt);
    const oh = rt.empty([n, D], udt);
    const scale = 1 / Math.sqrt(D);
    const runUnfused = (): void => {
      for (let h = 0; h < QH; h++) {
        const g = Math.floor(h / (QH / KVH));
        matmul(qh, kvh[g], { out: sc });
        add(sc, mask, { out: sc });
        softmax(sc, { scale, out: sc });
        if (device) matmul(sc, vth[g], { out: oh });
        else matmul(sc, kvh[g], { transB: false, out: oh });
      }
    };
    await orSkip(`prefill ${udt} ${n} tokens, unfused`, async () => {
      const { times: ut, runsPerSample } = await timeRuns(rt.defaultStream, runUnfused, repeats, 1);
      const ums = median(ut);
      results.push({
        suite: 'attention',
        case: `prefill ${udt} ${n} tokens, unfused (materialised scores)`,
        params: {
          kind: 'prefill-unfused',
          dtype: udt,
          tokens: n,
          qHeads: QH,
          kvHeads: KVH,
          headDim: D,
          fusedMs,
          peak: peakName,
        },
        medianMs: ums,
        minMs: Math.min(...ut),
        repeats,
        macPerS: macs / (ums / 1e3),
        roofline: { kind: 'compute', ratio: macs / (ums / 1e3) / peak, peak: peakName },
        ...(Number.isFinite(fusedMs) ? { fusedSpeedup: ums / fusedMs } : {}),
        ...whereRan(rt, machine, { runsPerSample, medianMs: ums }),
      });
    });
    for (const t of new Set([qh, ...kvh, ...vth, mask, sc, oh])) t.dispose();
  }
  if (skipped.length)
    console.log(
      `attention: skipped (over ${(maxKv / 2 ** 30).toFixed(0)} GiB): ${skipped.join('; ')}`,
    );
  if (unsupported.length)
    console.log(`attention: skipped (not supported on ${rt.backend}): ${unsupported.join('; ')}`);
  return results;
}

function dispose(cache: KvCache, ...ts: Tensor[]): void {
  cache.dispose();
  for (const t of ts) t.dispose();
}
