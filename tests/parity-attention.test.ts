/**
 * Backend parity for the paged KV cache and attention: the same cases on `cpu`, on `cuda-emu`
 * (native/cuda/kernels/attention.cuh and kv.cuh run by the emulator, forward and reverse
 * schedule) and on `cuda` when a usable GPU exists.
 *
 * Each case appends K/V for a ragged batch through kvAppend into shuffled pages (odd block
 * sizes, a skipped slot), plans, and runs attention with its log-sum-exp. Checked:
 *   - the cache bytes (codes and int8 / fp8 scales) after kvAppend and kvCopyBlocks are bit for
 *     bit the CPU backend's (the device quantizes exactly like the CPU);
 *   - out and lse against a float64 attention over the values the cache holds (decoded from the
 *     cache bytes, so the reference sees exactly what the kernels read) under the tolerance model
 *     below, on every backend.
 * Tolerance model (the CUDA kernel's, from native/tests/cuemu/attn_test.cpp; the CPU's f32 path
 * is well inside it): CT = the compute type (bf16 for a bf16 cache, else f16); q is given in CT so
 * it is exact; u_P = 2^-11 (f16) or 2^-8 (bf16), doubled for int8 (P also carries the V-scale
 * ratio); e = 2^-22 (D/16 + 6) dotMag [+ 2^-20 softCap] with dotMag = smScale max_t sum |q k_t|;
 * n = the row's attended positions, vMax = max |v| over them:
 *   out: vMax (4 e + 2 u_P + (n/16 + 8) 2^-23 + n 2^-25) + 2^-24 |ref|  (f32 output)
 *   lse: e + u_P + n 2^-24 + 2^-21 |lse| + n 2^-25 + 1e-6
 *   split-KV adds 4 vMax lse_tol to out and 2^-22 |lse| to lse (the merge weights).
 */
import { decode, encode } from '../lib/runtime/dtype';
import { loadRuntime, Runtime } from '../lib/runtime/runtime';
import { KernelError } from '../lib/runtime/errors';
import * as ops from '../lib/ops/index';
import * as qref from '../lib/ops/quant-reference';
import { backendsToTest, expectKernelError, randn, rng } from './helpers';

type KvD = 'f16' | 'bf16' | 'fp8e4m3' | 'fp8e5m2' | 'int8';
const M_abs = Math.abs;
const M_exp = Math.exp;
const M_log = Math.log;
const M_max = Math.max;
const M_tanh = Math.tanh;

interface Scenario {
  name: string;
  kv: KvD;
  qHeads: number;
  kvHeads: number;
  d: number;
  bs: number;
  /** [kvLen, qLen] per sequence: the queries are the last qLen positions. */
  seqs: [number, number][];
  softCap?: number;
  window?: number;
  splitTokens?: number;
  /** K/V source dtype for kvAppend. */
  src?: 'f32' | 'f16' | 'bf16';
}

const SCENARIOS: Scenario[] = [
  {
    name: 'f16 KV, GQA 4/2, D=64, block 7: prefill, chunk and decode rows in one batch',
    kv: 'f16',
    qHeads: 4,
    kvHeads: 2,
    d: 64,
    bs: 7,
    seqs: [
      [45, 45],
      [20, 1],
      [70, 13],
    ],
  },
  {
    name: 'bf16 KV, MQA 3/1, D=32, block 16, bf16 K/V source',
    kv: 'bf16',
    qHeads: 3,
    kvHeads: 1,
    d: 32,
    bs: 16,
    seqs: [
      [33, 5],
      [1, 1],
    ],
    src: 'bf16',
  },
  {
    name: 'fp8e4m3 KV (per-head scales), D=128, block 5, soft-cap 30',
    kv: 'fp8e4m3',
    qHeads: 2,
    kvHeads: 2,
    d: 128,
    bs: 5,
    seqs: [
      [23, 3],
      [9, 1],
    ],
    softCap: 30,
  },
  {
    name: 'fp8e5m2 KV, GQA 6/3, D=16, block 4, sliding window 9, f16 K/V source',
    kv: 'fp8e5m2',
    qHeads: 6,
    kvHeads: 3,
    d: 16,
    bs: 4,
    seqs: [
      [31, 17],
      [12, 2],
    ],
    window: 9,
    src: 'f16',
  },
  {
    name: 'int8 KV (per-token scales), GQA 8/2, D=48, block 13',
    kv: 'int8',
    qHeads: 8,
    kvHeads: 2,
    d: 48,
    bs: 13,
    seqs: [
      [40, 9],
      [27, 1],
    ],
  },
  {
    name: 'f16 KV, split-KV (chunks of 16 tokens) merged through (out, lse)',
    kv: 'f16',
    qHeads: 4,
    kvHeads: 1,
    d: 32,
    bs: 8,
    seqs: [
      [90, 1],
      [57, 2],
    ],
    splitTokens: 16,
  },
];

/** The K/V values one sequence attends to, decoded from the cache bytes: [kvLen][kvHeads][D]. */
function decodeCache(
  sc: Scenario,
  blocks: number,
  layer: number,
  data: Uint8Array,
  scales: Float32Array | undefined,
  pages: number[],
  kvLen: number,
): { k: Float64Array; v: Float64Array } {
  const { kvHeads: H, bs, d: D } = sc;
  const esz = sc.kv === 'f16' || sc.kv === 'bf16' ? 2 : 1;
  const out = { k: new Float64Array(kvLen * H * D), v: new Float64Array(kvLen * H * D) };
  for (let p = 0; p < kvLen; p++) {
    const block = pages[Math.floor(p / bs)];
    const tok = p % bs;
    for (let kv = 0; kv < 2; kv++)
      for (let h = 0; h < H; h++) {
        const base = ((((layer * blocks + block) * 2 + kv) * H + h) * bs + tok) * D;
        const bytes = data.subarray(base * esz, (base + D) * esz);
        let vals: Float64Array;
        if (sc.kv === 'f16' || sc.kv === 'bf16')
          vals = decode(sc.kv, new Uint16Array(bytes.slice().buffer));
        else if (sc.kv === 'int8') {
          const s = scales![(((layer * blocks + block) * 2 + kv) * H + h) * bs + tok];
          vals = Float64Array.from(new Int8Array(bytes.buffer, bytes.byteOffset, D), (c) => c * s);
        } else {
          const s = scales![(layer * 2 + kv) * H + h];
          vals = Float64Array.from(bytes, (c) => qref.fp8Decode(sc.kv as 'fp8e4m3', c) * s);
        }
        (kv === 0 ? out.k : out.v).set(vals, (p * H + h) * D);
      }
  }
  return out;
}

/** Float64 attention of one batch, with the tolerance model's per-row quantities. */
function reference(
  sc: Scenario,
  q: Float64Array,
  kv: { k: Float64Array; v: Float64Array }[],
  smScale: number,
) {
  const { qHeads: QH, kvHeads: H, d: D } = sc;
  const G = QH / H;
  const totalQ = sc.seqs.reduce((a, s) => a + s[1], 0);
  const out = new Float64Array(totalQ * QH * D);
  const lse = new Float64Array(totalQ * QH);
  const tolO = new Float64Array(totalQ * QH);
  const tolL = new Float64Array(totalQ * QH);
  const ct = sc.kv === 'bf16' ? 'bf16' : 'f16';
  const uP = (ct === 'bf16' ? 2 ** -8 : 2 ** -11) * (sc.kv === 'int8' ? 2 : 1);
  let row0 = 0;
  sc.seqs.forEach(([kvLen, qLen], b) => {
    for (let i = 0; i < qLen; i++) {
      const last = kvLen - qLen + i;
      const first = sc.window ? M_max(0, last - sc.window + 1) : 0;
      for (let h = 0; h < QH; h++) {
        const kh = Math.floor(h / G);
        const r = (row0 + i) * QH + h;
        const s: number[] = [];
        let mx = -Infinity;
        let dotMag = 0;
        let vMax = 0;
        for (let p = first; p <= last; p++) {
          let dot = 0;
          let mag = 0;
          for (let x = 0; x < D; x++) {
            const prod = q[r * D + x] * kv[b].k[(p * H + kh) * D + x];
            dot += prod;
            mag += M_abs(prod);
          }
          dotMag = M_max(dotMag, smScale * mag);
          let sv = dot * smScale;
          if (sc.softCap) sv = sc.softCap * M_tanh(sv / sc.softCap);
          s.push(sv);
          mx = M_max(mx, sv);
          for (let x = 0; x < D; x++) vMax = M_max(vMax, M_abs(kv[b].v[(p * H + kh) * D + x]));
        }
        let sum = 0;
        for (let j = 0; j < s.length; j++) {
          s[j] = M_exp(s[j] - mx);
          sum += s[j];
        }
        for (let j = 0; j < s.length; j++) {
          const w = s[j] / sum;
          const p = first + j;
          for (let x = 0; x < D; x++) out[r * D + x] += w * kv[b].v[(p * H + kh) * D + x];
        }
        lse[r] = mx + M_log(sum);
        const n = s.length;
        const e = 2 ** -22 * (D / 16 + 6) * dotMag + (sc.softCap ? 2 ** -20 * sc.softCap : 0);
        const sub = ct === 'f16' ? n * 2 ** -25 : 0;
        let tl = e + uP + n * 2 ** -24 + 2 ** -21 * M_abs(lse[r]) + sub + 1e-6;
        let to = vMax * (4 * e + 2 * uP + (n / 16 + 8) * 2 ** -23 + sub);
        if (sc.splitTokens) {
          to += 4 * vMax * tl;
          tl += 2 ** -22 * M_abs(lse[r]);
        }
        tolO[r] = to;
        tolL[r] = tl;
      }
    }
    row0 += qLen;
  });
  return { out, lse, tolO, tolL };
}

/** The small int8 pool of the block-moving tests (2 layers of 6 blocks), every slot written. */
const POOL = { layers: 2, blocks: 6, kvHeads: 2, blockSize: 3, headDim: 16 };
const POOL_BLOCK_BYTES = 2 * 2 * 3 * 16; // K|V x heads x tokens x D int8 codes
const POOL_BLOCK_SCALES = 2 * 2 * 3; // one f32 scale per token, head and K|V
async function filledPool(rt: Runtime, seed: number) {
  const cache = ops.createKvCache(rt, { ...POOL, dtype: 'int8' });
  const n = POOL.blocks * POOL.blockSize;
  const slots = Int32Array.from({ length: n }, (_, i) => i);
  for (let layer = 0; layer < POOL.layers; layer++) {
    const k = rt.tensor(Float32Array.from(randn(n * 2 * 16, seed + layer, 2)), [n, 2, 16]);
    const v = rt.tensor(Float32Array.from(randn(n * 2 * 16, seed + 10 + layer, 2)), [n, 2, 16]);
    ops.kvAppend(cache, layer, k, v, slots);
    k.dispose();
    v.dispose();
  }
  return { cache, ...(await poolBytes(cache)) };
}
async function poolBytes(cache: ops.KvCache) {
  const data = (await cache.data.read()) as Uint8Array;
  const scales = new Float32Array((await cache.scales!.read()).slice().buffer);
  return { data, scales };
}
/** Every layer of block `dst` in `after` holds what block `src` held in `before`. */
function expectBlocksMoved(
  before: { data: Uint8Array; scales: Float32Array },
  after: { data: Uint8Array; scales: Float32Array },
  moves: number[][],
) {
  const B = POOL_BLOCK_BYTES;
  const S = POOL_BLOCK_SCALES;
  for (let layer = 0; layer < POOL.layers; layer++)
    for (const [src, dst] of moves) {
      const from = layer * POOL.blocks + src;
      const to = layer * POOL.blocks + dst;
      expect(Array.from(after.data.subarray(to * B, (to + 1) * B))).toEqual(
        Array.from(before.data.subarray(from * B, (from + 1) * B)),
      );
      expect(Array.from(after.scales.subarray(to * S, (to + 1) * S))).toEqual(
        Array.from(before.scales.subarray(from * S, (from + 1) * S)),
      );
    }
}

const cases = backendsToTest();
// The CPU backend's cache bytes after each scenario's kvAppend, for the bit-exact comparison.
const cpuCache = new Map<string, { data: Uint8Array; scales?: Float32Array }>();

describe.each(cases)(
  'paged attention parity: backend $name',
  ({ name, backend, schedule, arch }) => {
    let rt: Runtime;
    beforeAll(async () => {
      rt = await loadRuntime({ backend, schedule, arch, threads: 2 });
    });
    afterAll(() => rt?.dispose());
    const device = backend !== 'cpu';

    test.each(SCENARIOS)('$name', async (sc) => {
      const r = rng(sc.qHeads * 1000 + sc.d * 10 + sc.bs);
      const layers = 2;
      const layer = 1;
      const pagesPer = sc.seqs.map(([kvLen]) => Math.ceil(kvLen / sc.bs));
      const blocks = pagesPer.reduce((a, b) => a + b, 0) + 5;
      // Shuffled physical pages: a random permutation of every block, handed out in order.
      const perm = Array.from({ length: blocks }, (_, i) => i);
      for (let i = blocks - 1; i > 0; i--) {
        const j = Math.floor(r() * (i + 1));
        [perm[i], perm[j]] = [perm[j], perm[i]];
      }
      let next = 0;
      const pages = pagesPer.map((n) => perm.slice(next, (next += n)));
      const cache = ops.createKvCache(rt, {
        layers,
        blocks,
        kvHeads: sc.kvHeads,
        blockSize: sc.bs,
        headDim: sc.d,
        dtype: sc.kv,
      });
      if (sc.kv === 'fp8e4m3' || sc.kv === 'fp8e5m2') {
        // non-trivial per-(layer, K|V, head) scales: the kernels must apply them
        const s = Float32Array.from({ length: layers * 2 * sc.kvHeads }, (_, i) => 0.05 + 0.01 * i);
        await cache.scales!.write(s);
      }
      // Append every sequence's K/V in one kvAppend (token rows in sequence order), plus one
      // skipped row (slot -1) that must leave the cache untouched.
      const H = sc.kvHeads;
      const D = sc.d;
      const src = sc.src ?? 'f32';
      const totalKv = sc.seqs.reduce((a, s) => a + s[0], 0) + 1;
      const slots = new Int32Array(totalKv);
      let t = 0;
      sc.seqs.forEach(([kvLen], b) => {
        for (let p = 0; p < kvLen; p++)
          slots[t++] = pages[b][Math.floor(p / sc.bs)] * sc.bs + (p % sc.bs);
      });
      slots[t] = -1;
      // (int8: rows of different magnitudes so the per-token scales differ)
      const kRaw = randn(totalKv * H * D, 11 + sc.d, sc.kv === 'fp8e4m3' ? 8 : 1.5);
      const vRaw = randn(totalKv * H * D, 12 + sc.d, sc.kv === 'fp8e4m3' ? 8 : 1.5);
      if (sc.kv === 'int8')
        for (let i = 0; i < totalKv * H; i++)
          for (let x = 0; x < D; x++) kRaw[i * D + x] *= 1 + (i % 5);
      const kT = rt.tensor(encode(src, kRaw), [totalKv, H, D], { dtype: src });
      const vT = rt.tensor(encode(src, vRaw), [totalKv, H, D], { dtype: src });
      ops.kvAppend(cache, layer, kT, vT, slots);

      const data = (await cache.data.read()) as Uint8Array;
      const scales = cache.scales
        ? new Float32Array((await cache.scales.read()).slice().buffer)
        : undefined;
      if (!device) cpuCache.set(sc.name, { data, scales });
      else {
        const c = cpuCache.get(sc.name);
        if (c) {
          // kvAppend quantizes exactly like the CPU: the whole pool matches byte for byte
          expect(data.length).toBe(c.data.length);
          let diff = -1;
          for (let i = 0; i < data.length && diff < 0; i++) if (data[i] !== c.data[i]) diff = i;
          if (diff >= 0)
            throw new Error(`${name}: cache byte ${diff} is ${data[diff]}, cpu ${c.data[diff]}`);
          if (scales) expect(Array.from(scales)).toEqual(Array.from(c.scales!));
        }
      }

      // Queries in the compute type (exact), the page table, the plan.
      const ct = sc.kv === 'bf16' ? 'bf16' : 'f16';
      const totalQ = sc.seqs.reduce((a, s) => a + s[1], 0);
      const qEnc = encode(ct, randn(totalQ * sc.qHeads * D, 13 + sc.d, 1));
      const qv = decode(ct, qEnc);
      const q = rt.tensor(qEnc, [totalQ, sc.qHeads, D], { dtype: ct });
      const qoIndptr = Int32Array.from([0, ...sc.seqs.map((s) => s[1])]);
      const indptr = Int32Array.from([0, ...pagesPer]);
      for (let b = 1; b < qoIndptr.length; b++) {
        qoIndptr[b] += qoIndptr[b - 1];
        indptr[b] += indptr[b - 1];
      }
      const table = {
        qoIndptr,
        indptr,
        indices: Int32Array.from(pages.flat()),
        lastPageLen: Int32Array.from(sc.seqs, ([kvLen]) => ((kvLen - 1) % sc.bs) + 1),
      };
      const plan = ops.planAttention(cache, table, {
        qHeads: sc.qHeads,
        splitTokens: sc.splitTokens ?? 0,
      });
      if (sc.splitTokens) expect(plan.merges).toBeGreaterThan(0);
      const lse = rt.empty([totalQ, sc.qHeads]);
      const smScale = 1 / Math.sqrt(D);
      const out = ops.attention(plan, cache, layer, q, {
        lse,
        outDtype: 'f32',
        softCap: sc.softCap ?? 0,
        window: sc.window ?? 0,
      });
      const got = await out.toFloat32();
      const gotLse = await lse.toFloat32();

      const kv = sc.seqs.map(([kvLen], b) =>
        decodeCache(sc, blocks, layer, data, scales, pages[b], kvLen),
      );
      const want = reference(sc, qv, kv, smScale);
      for (let i = 0; i < got.length; i++) {
        const rr = Math.floor(i / D);
        const tol = want.tolO[rr] + 2 ** -24 * M_abs(want.out[i]);
        if (!(M_abs(got[i] - want.out[i]) <= tol))
          throw new Error(`${name}: out[${i}] = ${got[i]}, want ${want.out[i]} (tol ${tol})`);
      }
      for (let i = 0; i < gotLse.length; i++)
        if (!(M_abs(gotLse[i] - want.lse[i]) <= want.tolL[i]))
          throw new Error(
            `${name}: lse[${i}] = ${gotLse[i]}, want ${want.lse[i]} (tol ${want.tolL[i]})`,
          );
      // The other layer was never written: still all zero.
      const layerBytes = data.length / layers;
      expect(data.subarray(0, layerBytes).every((b) => b === 0)).toBe(true);
      for (const x of [kT, vT, q, lse, out]) x.dispose();
      cache.dispose();
    });

    test('kvCopyBlocks copies every layer bit for bit (int8 codes and scales)', async () => {
      const { cache, ...before } = await filledPool(rt, 40);
      ops.kvCopyBlocks(cache, Int32Array.from([0, 4, 2, 5]));
      const after = await poolBytes(cache);
      expectBlocksMoved(before, after, [
        [0, 4],
        [2, 5],
        [1, 1],
        [3, 3],
      ]);
      // Bad pairs: a destination that is also a source, and an out-of-range block. The error is
      // the CPU's (code and argument), and the stream recovers.
      for (const [pairs, arg] of [
        [[0, 1, 1, 2], 'pairs[0][1]'],
        [[0, 9], 'pairs[0][1]'],
      ] as [number[], string][]) {
        ops.kvCopyBlocks(cache, Int32Array.from(pairs));
        const err = await cache.data.read().then(
          () => undefined,
          (e: unknown) => e,
        );
        expect(err).toBeInstanceOf(KernelError);
        expect((err as KernelError).code).toBe('E_INVALID_ARG');
        expect((err as KernelError).arg).toBe(arg);
        await rt.defaultStream.reset();
      }
      expect(Array.from(await cache.data.read())).toEqual(Array.from(after.data));
      cache.dispose();
    });

    test('attentionMerge matches the formula; o may alias an input', async () => {
      const [rows, heads, d] = [5, 3, 24];
      const a = Float32Array.from(randn(rows * heads * d, 61));
      const b = Float32Array.from(randn(rows * heads * d, 62));
      const lA = Float32Array.from(randn(rows * heads, 63, 4));
      const lB = Float32Array.from(randn(rows * heads, 64, 4));
      lA[0] = -Infinity;
      const oA = rt.tensor(a, [rows, heads, d]);
      const { out, lse } = ops.attentionMerge(
        oA,
        rt.tensor(lA, [rows, heads]),
        rt.tensor(b, [rows, heads, d]),
        rt.tensor(lB, [rows, heads]),
      );
      const [o, l] = await Promise.all([out.toFloat32(), lse.toFloat32()]);
      for (let i = 0; i < rows * heads; i++) {
        const m = M_max(lA[i], lB[i]);
        const wa = M_exp(lA[i] - m);
        const wb = M_exp(lB[i] - m);
        expect(M_abs(l[i] - (m + M_log(wa + wb)))).toBeLessThan(2e-6 * (1 + M_abs(l[i])));
        for (let x = 0; x < d; x++) {
          const want = (wa * a[i * d + x] + wb * b[i * d + x]) / (wa + wb);
          if (!(M_abs(o[i * d + x] - want) <= 1e-6 * (1 + M_abs(want))))
            throw new Error(`${name}: merged[${i * d + x}] = ${o[i * d + x]}, want ${want}`);
        }
      }
    });

    test('kvSwapOut / kvSwapIn move every layer of a block through pinned host memory, bit for bit', async () => {
      const { cache, ...before } = await filledPool(rt, 80);
      const host = ops.kvSwapOut(cache, Int32Array.from([4, 1]));
      const hostBytes = (await host.read()) as Uint8Array;
      // Host layout per block: every layer's codes (K then V), then every layer's int8 scales.
      expect(hostBytes.length).toBe(2 * (2 * POOL_BLOCK_BYTES + 2 * POOL_BLOCK_SCALES * 4));
      if (!device) cpuCache.set('swap', { data: hostBytes });
      else {
        const c = cpuCache.get('swap');
        if (c) expect(Array.from(hostBytes)).toEqual(Array.from(c.data));
      }
      // Reload them into blocks 0 and 5 of a cleared cache: each lands whole, in every layer.
      await cache.data.write(new Uint8Array(before.data.length));
      await cache.scales!.write(new Float32Array(before.scales.length));
      ops.kvSwapIn(cache, Int32Array.from([0, 5]), host);
      expectBlocksMoved(before, await poolBytes(cache), [
        [4, 0],
        [1, 5],
      ]);
      // Bad ids: out of range (out), and twice when swapping in. The CPU's code and argument.
      for (const [ids, out, arg] of [
        [[0, 6], true, 'blocks[1]'],
        [[2, 2], false, 'blocks[1]'],
      ] as [number[], boolean, string][]) {
        if (out) ops.kvSwapOut(cache, Int32Array.from(ids));
        else ops.kvSwapIn(cache, Int32Array.from(ids), host);
        const err = await rt.synchronize().then(
          () => undefined,
          (e: unknown) => e,
        );
        expect(err).toBeInstanceOf(KernelError);
        expect((err as KernelError).code).toBe('E_INVALID_ARG');
        expect((err as KernelError).arg).toBe(arg);
        rt.defaultStream.reset();
      }
      host.dispose();
      cache.dispose();
    });

    test('a bad slot fails the next completion point with the CPU error; the stream recovers', async () => {
      const cache = ops.createKvCache(rt, {
        layers: 1,
        blocks: 2,
        kvHeads: 1,
        blockSize: 4,
        headDim: 16,
        dtype: 'f16',
      });
      const k = rt.tensor(Float32Array.from(randn(3 * 16, 70)), [3, 1, 16]);
      ops.kvAppend(cache, 0, k, k, Int32Array.from([0, 8, 1]));
      const err = await cache.data.read().then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(KernelError);
      expect((err as KernelError).code).toBe('E_INVALID_ARG');
      expect((err as KernelError).arg).toBe('slots[1]');
      await rt.defaultStream.reset();
      ops.kvAppend(cache, 0, k, k, Int32Array.from([0, 7, 1]));
      const data = (await cache.data.read()) as Uint8Array;
      expect(data.some((x) => x !== 0)).toBe(true);
      k.dispose();
      cache.dispose();
    });

    test('device limits are typed errors: f32 caches, kvSwap, and mixed backends', async () => {
      if (!device) return;
      const geo = { layers: 1, blocks: 2, kvHeads: 1, blockSize: 4, headDim: 16 };
      const f32 = ops.createKvCache(rt, { ...geo, dtype: 'f32' });
      const q = rt.tensor(new Uint16Array(16), [1, 1, 16], { dtype: 'f16' });
      const table = {
        qoIndptr: Int32Array.from([0, 1]),
        indptr: Int32Array.from([0, 1]),
        indices: Int32Array.from([1]),
        lastPageLen: Int32Array.from([1]),
      };
      const plan = ops.planAttention(f32, table, { qHeads: 1 });
      const out = ops.attention(plan, f32, 0, q);
      const err = await out.read().then(
        () => undefined,
        (e: unknown) => e,
      );
      expect((err as KernelError).code).toBe('E_UNSUPPORTED');
      expect((err as KernelError).arg).toBe('cache.dtype');
      await rt.defaultStream.reset();
      const f16 = ops.createKvCache(rt, { ...geo, dtype: 'f16' });
      // The swap space must be pinned host memory: device memory is refused, naming host.
      const wrongHost = rt.empty([2 * 4 * 16 * 2], 'u8'); // one f16 block: K and V, 4 x 16
      expectKernelError(
        () => ops.kvSwapIn(f16, Int32Array.from([0]), wrongHost),
        'E_BACKEND',
        'host',
      );
      wrongHost.dispose();
      const cpu = await loadRuntime({ threads: 1 });
      const qc = cpu.tensor(new Float32Array(16), [1, 1, 16]);
      expectKernelError(
        () => ops.attention(ops.planAttention(f16, table, { qHeads: 1 }), f16, 0, qc),
        'E_BACKEND',
        'cache.data',
      );
      cpu.dispose();
      for (const x of [f32, f16, q, out]) x.dispose();
    });
  },
);
