/**
 * Paged attention end to end through the block manager: lib/kv builds each step's page
 * table (chunked prefill, then decode steps, in one ragged batch), physical pages are
 * shuffled by a random permutation, kvAppend writes K/V, planAttention + attention run the
 * native kernels, and every query row is compared with a naive float64 attention over the
 * contiguous K/V (lib/ops/attention-reference.ts) built from exactly the values the cache
 * holds (K/V rounded to the KV dtype, fp8 / int8 dequantized as specified).
 */
import { decode, encode } from '../lib/runtime/dtype';
import { loadRuntime, Runtime } from '../lib/runtime/runtime';
import * as ops from '../lib/ops/index';
import * as aref from '../lib/ops/attention-reference';
import * as qref from '../lib/ops/quant-reference';
import { BlockManager, buildPageTable } from '../lib/kv/index';
import { isasToTest, randn, rng } from './helpers';

type KvD = 'f32' | 'f16' | 'bf16' | 'fp8e4m3' | 'int8';

/** The value the cache holds for x after kvAppend (per token-head row `row` for int8). */
function stored(dtype: KvD, row: Float64Array): Float64Array {
  if (dtype === 'f32' || dtype === 'f16' || dtype === 'bf16')
    return decode(dtype, encode(dtype, row));
  if (dtype === 'fp8e4m3')
    return Float64Array.from(row, (x) =>
      qref.fp8Decode('fp8e4m3', qref.fp8Encode('fp8e4m3', Math.fround(x))),
    );
  let amax = 0;
  for (const x of row) amax = Math.max(amax, Math.abs(x));
  const s = Math.fround(amax / 127);
  return Float64Array.from(row, (x) =>
    s === 0 ? 0 : Math.max(-127, Math.min(127, qref.rne(Math.fround(x / s)))) * s,
  );
}

describe.each(isasToTest())('paged attention isa %s', (isa) => {
  let rt: Runtime;
  beforeAll(async () => {
    rt = await loadRuntime({ isa, threads: 2 });
  });
  afterAll(() => rt.dispose());

  const cases: [KvD, number, number, number, number][] = [
    // dtype, qHeads, kvHeads, headDim, blockSize
    ['f32', 8, 2, 64, 16],
    ['f16', 4, 4, 128, 7],
    ['bf16', 16, 1, 80, 16],
    ['fp8e4m3', 6, 2, 96, 16],
    ['int8', 8, 8, 64, 13],
  ];
  test.each(cases)(
    '%s KV, %i q heads / %i kv heads, D=%i, block %i: chunked prefill + decode, shuffled pages',
    async (dtype, qHeads, kvHeads, d, bs) => {
      const r = rng(qHeads * 100 + d + bs);
      const layers = 2;
      const layer = 1;
      const numBlocks = 200;
      const bm = new BlockManager({ numBlocks, blockSize: bs, enablePrefixCaching: false });
      const cache = ops.createKvCache(rt, {
        layers,
        blocks: numBlocks,
        kvHeads,
        blockSize: bs,
        headDim: d,
        dtype,
      });
      const perm = Int32Array.from({ length: numBlocks }, (_, i) => i);
      for (let i = numBlocks - 1; i > 0; i--) {
        const j = Math.floor(r() * (i + 1));
        [perm[i], perm[j]] = [perm[j], perm[i]];
      }
      const phys = (slot: number): number =>
        slot < 0 ? slot : perm[Math.floor(slot / bs)] * bs + (slot % bs);

      // three sequences: long prompt in two chunks, a short one, a 1-token one; then decode
      const lens = [300, 37, 1];
      const maxLen = 310;
      const raws = {
        k: lens.map((_, s) => Float64Array.from(randn(maxLen * kvHeads * d, 10 + s, 1.5))),
        v: lens.map((_, s) => Float64Array.from(randn(maxLen * kvHeads * d, 20 + s, 1.5))),
      };
      const kAll = lens.map((_, s) =>
        stored(dtype, Float64Array.from(randn(maxLen * kvHeads * d, 10 + s, 1.5))),
      );
      const vAll = lens.map((_, s) =>
        stored(dtype, Float64Array.from(randn(maxLen * kvHeads * d, 20 + s, 1.5))),
      );
      // int8 quantizes per (token, head) row: recompute the stored values row by row
      if (dtype === 'int8')
        for (const arr of [kAll, vAll])
          for (let s = 0; s < arr.length; s++) {
            const raw = (arr === kAll ? raws.k : raws.v)[s];
            for (let row = 0; row < maxLen * kvHeads; row++)
              arr[s].set(stored('int8', raw.subarray(row * d, row * d + d)), row * d);
          }
      const rawOf = (s: number, kv: 'k' | 'v'): Float64Array =>
        dtype === 'int8' ? raws[kv][s] : (kv === 'k' ? kAll : vAll)[s];

      const seqs = lens.map((n, s) =>
        bm.createSequence(
          Array.from({ length: n }, (_, i) => s * 1000 + i),
          { numNewTokens: s === 0 ? 173 : n },
        ),
      );
      const done = [0, 0, 0];
      const steps: (number | undefined)[][] = [[173, 37, 1], [127], [1, 1, 1], [1, 1, 1]];
      for (let step = 0; step < steps.length; step++) {
        const entries = steps[step]
          .map((n, s) => ({ seq: seqs[s].seq, n, s }))
          .filter((e) => e.n !== undefined && e.n > 0);
        if (step === 1)
          bm.append(
            seqs[0].seq,
            Array.from({ length: 127 }, (_, i) => 173 + i),
          );
        if (step >= 2) for (const e of entries) bm.append(e.seq, [7]);
        const pt = buildPageTable(
          bm,
          entries.map((e) => ({ seq: e.seq, numNewTokens: e.n })),
        );
        const indices = Int32Array.from(pt.indices, (b) => perm[b]);
        const slots = Int32Array.from(pt.slotMapping, phys);
        // K / V rows of this step, in query-row order
        const T = pt.numTokens;
        const kStep = new Float64Array(T * kvHeads * d);
        const vStep = new Float64Array(T * kvHeads * d);
        entries.forEach((e, b) => {
          for (let i = 0; i < e.n!; i++) {
            const pos = pt.kvLens[b] - e.n! + i;
            const row = pt.qoIndptr[b] + i;
            kStep.set(
              rawOf(e.s, 'k').subarray(pos * kvHeads * d, (pos + 1) * kvHeads * d),
              row * kvHeads * d,
            );
            vStep.set(
              rawOf(e.s, 'v').subarray(pos * kvHeads * d, (pos + 1) * kvHeads * d),
              row * kvHeads * d,
            );
          }
          done[e.s] = pt.kvLens[b];
        });
        const kT = rt.tensor(Float32Array.from(kStep), [T, kvHeads, d]);
        const vT = rt.tensor(Float32Array.from(vStep), [T, kvHeads, d]);
        ops.kvAppend(cache, layer, kT, vT, slots);
        const qv = Float64Array.from(randn(T * qHeads * d, 100 + step, 1));
        const q = rt.tensor(Float32Array.from(qv), [T, qHeads, d]);
        const plan = ops.planAttention(
          cache,
          { qoIndptr: pt.qoIndptr, indptr: pt.indptr, indices, lastPageLen: pt.lastPageLen },
          { qHeads, splitTokens: step === 3 ? 64 : 0 },
        );
        const lse = rt.empty([T, qHeads]);
        const out = ops.attention(plan, cache, layer, q, { lse, softCap: step === 2 ? 30 : 0 });
        const smScale = 1 / Math.sqrt(d);
        const want = aref.attention(
          qv,
          entries.map((e) => kAll[e.s]),
          entries.map((e) => vAll[e.s]),
          pt.qoIndptr,
          pt.kvLens,
          qHeads,
          kvHeads,
          d,
          { smScale, softCap: step === 2 ? 30 : 0 },
        );
        const got = await out.toFloat32();
        const gotLse = await lse.toFloat32();
        // f32 accumulation over ≤ 310 positions: the output is a convex combination of V rows
        // (|v| ≤ ~1.5 after rounding), so 2e-5 absolute is ~100 ulp of headroom
        for (let i = 0; i < got.length; i++)
          if (!(Math.abs(got[i] - want.out[i]) <= 2e-5 + 1e-5 * Math.abs(want.out[i])))
            throw new Error(`step ${step} out[${i}]: got ${got[i]}, want ${want.out[i]}`);
        for (let i = 0; i < gotLse.length; i++)
          if (!(Math.abs(gotLse[i] - want.lse[i]) <= 2e-5 * (1 + Math.abs(want.lse[i]))))
            throw new Error(`step ${step} lse[${i}]: got ${gotLse[i]}, want ${want.lse[i]}`);
        for (const t of [kT, vT, q, lse, out]) t.dispose();
      }
      expect(done).toEqual([302, 39, 3]);
      cache.dispose();
    },
  );

  test('merge of two halves equals the whole; bad input names its argument', async () => {
    const [rows, heads, d] = [5, 3, 16];
    const mk = (seed: number): ReturnType<Runtime['tensor']> =>
      rt.tensor(Float32Array.from(randn(rows * heads * d, seed)), [rows, heads, d]);
    const oA = mk(1);
    const oB = mk(2);
    const lA = Float32Array.from(randn(rows * heads, 3, 4));
    const lB = Float32Array.from(randn(rows * heads, 4, 4));
    lA[0] = -Infinity;
    const { out, lse } = ops.attentionMerge(
      oA,
      rt.tensor(lA, [rows, heads]),
      oB,
      rt.tensor(lB, [rows, heads]),
    );
    const [a, b, o, l] = await Promise.all([
      oA.toFloat32(),
      oB.toFloat32(),
      out.toFloat32(),
      lse.toFloat32(),
    ]);
    for (let i = 0; i < rows * heads; i++) {
      const m = Math.max(lA[i], lB[i]);
      const wa = Math.exp(lA[i] - m);
      const wb = Math.exp(lB[i] - m);
      expect(Math.abs(l[i] - (m + Math.log(wa + wb)))).toBeLessThan(1e-5);
      for (let x = 0; x < d; x++) {
        const want = (wa * a[i * d + x] + wb * b[i * d + x]) / (wa + wb);
        expect(Math.abs(o[i * d + x] - want)).toBeLessThan(1e-5);
      }
    }
    const cache = ops.createKvCache(rt, {
      layers: 1,
      blocks: 4,
      kvHeads: 2,
      blockSize: 4,
      headDim: 16,
    });
    expect(() =>
      ops.createKvCache(rt, { layers: 1, blocks: 4, kvHeads: 2, blockSize: 4, headDim: 20 }),
    ).toThrow(expect.objectContaining({ arg: 'cache.headDim' }));
    const table = {
      qoIndptr: Int32Array.from([0, 1]),
      indptr: Int32Array.from([0, 1]),
      indices: Int32Array.from([9]),
      lastPageLen: Int32Array.from([1]),
    };
    const plan = ops.planAttention(
      cache,
      { ...table, indices: Int32Array.from([0]) },
      { qHeads: 4 },
    );
    expect(() =>
      ops.planAttention(cache, { ...table, lastPageLen: Int32Array.from([5]) }, { qHeads: 4 }),
    ).toThrow(expect.objectContaining({ arg: 'lastPageLen[0]' }));
    const badPlan = ops.planAttention(cache, table, { qHeads: 4 });
    const q = rt.tensor(new Float32Array(4 * 16), [1, 4, 16]);
    expect(() => ops.attention(badPlan, cache, 0, q)).toThrow(
      expect.objectContaining({ arg: 'indices[0]' }),
    );
    expect(() =>
      ops.attention(plan, cache, 0, rt.tensor(new Float32Array(2 * 16), [1, 2, 16])),
    ).toThrow(expect.objectContaining({ code: 'E_SHAPE', arg: 'q' }));
    // slots are data: a bad one poisons the stream with a KernelError, then reset recovers
    const kv = rt.tensor(new Float32Array(2 * 16), [1, 2, 16]);
    ops.kvAppend(cache, 0, kv, kv, Int32Array.from([16]));
    await expect(rt.synchronize()).rejects.toMatchObject({ arg: 'slots[0]' });
    rt.defaultStream.reset();
    ops.kvAppend(cache, 0, kv, kv, Int32Array.from([0]));
    const o1 = await ops.attention(plan, cache, 0, q).toFloat32();
    expect(o1.every((x) => x === 0)).toBe(true); // zero K/V: output is the zero V row
    cache.dispose();
  });

  test.each(['f16', 'int8'] as const)(
    '%s: copy-on-write copies and swap out/in move KV exactly',
    async (dtype) => {
      const [bs, kvH, d, qH] = [4, 2, 16, 4];
      const cache = ops.createKvCache(rt, {
        layers: 2,
        blocks: 10,
        kvHeads: kvH,
        blockSize: bs,
        headDim: d,
        dtype,
      });
      const n = 7; // tokens in blocks 0 and 1 (last page 3)
      const k = rt.tensor(Float32Array.from(randn(n * kvH * d, 1)), [n, kvH, d]);
      const v = rt.tensor(Float32Array.from(randn(n * kvH * d, 2)), [n, kvH, d]);
      for (const layer of [0, 1])
        ops.kvAppend(
          cache,
          layer,
          k,
          v,
          Int32Array.from({ length: n }, (_, i) => i),
        );
      const q = rt.tensor(Float32Array.from(randn(qH * d, 3)), [1, qH, d]);
      const run = async (b0: number, b1: number): Promise<Float32Array> => {
        const plan = ops.planAttention(
          cache,
          {
            qoIndptr: Int32Array.from([0, 1]),
            indptr: Int32Array.from([0, 2]),
            indices: Int32Array.from([b0, b1]),
            lastPageLen: Int32Array.from([3]),
          },
          { qHeads: qH },
        );
        return ops.attention(plan, cache, 1, q).toFloat32();
      };
      const base = await run(0, 1);
      ops.kvCopyBlocks(cache, Int32Array.from([0, 7, 1, 8]));
      expect(await run(7, 8)).toEqual(base);
      const host = ops.kvSwapOut(cache, Int32Array.from([0, 1]));
      ops.kvSwapIn(cache, Int32Array.from([5, 6]), host);
      expect(await run(5, 6)).toEqual(base);
      // a block id out of range is refused on the stream
      ops.kvSwapIn(cache, Int32Array.from([5, 10]), host);
      await expect(rt.synchronize()).rejects.toMatchObject({ code: expect.stringMatching(/^E_/) });
      rt.defaultStream.reset();
      cache.dispose();
    },
  );

  test('ragged decode batch with sequence lengths 1 to 5000, split-KV, shuffled pages', async () => {
    const [qH, kvH, d, bs] = [8, 2, 64, 16];
    const lens = [1, 2, 17, 999, 5000];
    const numBlocks = lens.reduce((a, n) => a + Math.ceil(n / bs), 0) + 8;
    const r = rng(77);
    const perm = Int32Array.from({ length: numBlocks }, (_, i) => i);
    for (let i = numBlocks - 1; i > 0; i--) {
      const j = Math.floor(r() * (i + 1));
      [perm[i], perm[j]] = [perm[j], perm[i]];
    }
    const bm = new BlockManager({ numBlocks, blockSize: bs, enablePrefixCaching: false });
    const cache = ops.createKvCache(rt, {
      layers: 1,
      blocks: numBlocks,
      kvHeads: kvH,
      blockSize: bs,
      headDim: d,
      dtype: 'f16',
    });
    const ks = lens.map((n, s) => decode('f16', encode('f16', randn(n * kvH * d, 300 + s, 1.5))));
    const vs = lens.map((n, s) => decode('f16', encode('f16', randn(n * kvH * d, 400 + s, 1.5))));
    // prefill everything but the last token of each sequence (written, not checked) ...
    const seqs = lens.map(
      (n, s) =>
        bm.createSequence(
          Array.from({ length: n }, (_, i) => s * 10000 + i),
          { numNewTokens: n },
        ).seq,
    );
    const pt0 = buildPageTable(bm, seqs);
    const kv0 = (arrs: Float64Array[]): Float32Array => {
      const out = new Float32Array(pt0.numTokens * kvH * d);
      lens.forEach((n, s) => out.set(arrs[s], pt0.qoIndptr[s] * kvH * d));
      return out;
    };
    const slots = Int32Array.from(pt0.slotMapping, (x) => perm[Math.floor(x / bs)] * bs + (x % bs));
    const kT = rt.tensor(kv0(ks), [pt0.numTokens, kvH, d]);
    const vT = rt.tensor(kv0(vs), [pt0.numTokens, kvH, d]);
    ops.kvAppend(cache, 0, kT, vT, slots);
    // ... then one decode query per sequence (its last position), with and without split-KV
    const qv = Float64Array.from(randn(lens.length * qH * d, 9));
    const q = rt.tensor(Float32Array.from(qv), [lens.length, qH, d]);
    const table = {
      qoIndptr: Int32Array.from({ length: lens.length + 1 }, (_, b) => b),
      indptr: pt0.indptr,
      indices: Int32Array.from(pt0.indices, (b) => perm[b]),
      lastPageLen: pt0.lastPageLen,
    };
    const want = aref.attention(qv, ks, vs, table.qoIndptr, pt0.kvLens, qH, kvH, d, {
      smScale: 1 / Math.sqrt(d),
    });
    for (const splitTokens of [0, 100]) {
      const plan = ops.planAttention(cache, table, { qHeads: qH, splitTokens });
      const got = await ops.attention(plan, cache, 0, q).toFloat32();
      for (let i = 0; i < got.length; i++)
        if (!(Math.abs(got[i] - want.out[i]) <= 2e-5 + 1e-5 * Math.abs(want.out[i])))
          throw new Error(`split ${splitTokens} out[${i}]: got ${got[i]}, want ${want.out[i]}`);
    }
    cache.dispose();
  });
});
