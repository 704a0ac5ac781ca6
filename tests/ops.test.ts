/**
 * Every op, on every ISA variant this CPU runs, for f32/f16/bf16, on odd shapes, against
 * the float64 references in lib/ops/reference.ts under the tolerance model in helpers.ts.
 */
import { decode, encode, FloatDType } from '../lib/runtime/dtype';
import { loadRuntime, Runtime } from '../lib/runtime/runtime';
import { Tensor } from '../lib/runtime/tensor';
import * as ops from '../lib/ops/index';
import * as ref from '../lib/ops/reference';
import { expectClose, isasToTest, randn } from './helpers';

const DTYPES: FloatDType[] = ['f32', 'f16', 'bf16'];

/** Random values exactly representable in `dtype`, plus the tensor holding them. */
function input(
  rt: Runtime,
  dtype: FloatDType,
  shape: number[],
  seed: number,
  scale = 1,
): { t: Tensor; v: Float64Array } {
  const n = shape.reduce((a, b) => a * b, 1);
  const enc = encode(dtype, randn(n, seed, scale));
  return { t: rt.tensor(enc, shape, { dtype }), v: decode(dtype, enc) };
}

async function values(t: Tensor): Promise<Float64Array> {
  return decode(t.dtype as FloatDType, await t.read());
}

describe.each(isasToTest())('isa %s', (isa) => {
  let rt: Runtime;
  beforeAll(async () => {
    rt = await loadRuntime({ isa, threads: 2 });
  });
  afterAll(() => rt.dispose());

  const gemmShapes: [number, number, number][] = [
    [1, 1, 1],
    [1, 17, 33],
    [7, 5, 3],
    [13, 31, 257],
    [64, 64, 64],
    [127, 129, 300],
    [33, 70, 1000],
  ];
  describe.each(DTYPES)('matmul %s', (dtype) => {
    test.each(gemmShapes)(
      'M=%i N=%i K=%i, transB both ways, all output dtypes',
      async (m, n, k) => {
        const seed = m * 1000 + n * 10 + k;
        const a = input(rt, dtype, [m, k], seed);
        for (const transB of [true, false]) {
          const b = input(rt, dtype, transB ? [n, k] : [k, n], seed + 1);
          const r = ref.matmul(a.v, b.v, m, n, k, { transB });
          const abs = ref.matmulAbs(a.v, b.v, m, n, k, transB);
          for (const outDtype of DTYPES) {
            const c = ops.matmul(a.t, b.t, { transB, outDtype });
            expectClose(await values(c), r, outDtype, { absRef: abs, k });
            c.dispose();
          }
          b.t.dispose();
        }
        a.t.dispose();
      },
    );

    test('alpha, beta, bias and a batched A', async () => {
      const [m, n, k] = [2 * 9, 23, 130];
      const a = input(rt, dtype, [2, 9, k], 11);
      const b = input(rt, dtype, [n, k], 12);
      const bias = randn(n, 13);
      const c0 = randn(m * n, 14);
      const c = rt.tensor(encode('f32', c0), [2, 9, n]);
      ops.matmul(a.t, b.t, {
        alpha: 0.5,
        beta: -2,
        bias: rt.tensor(Float32Array.from(bias), [n]),
        out: c,
      });
      const r = ref.matmul(a.v, b.v, m, n, k, {
        alpha: 0.5,
        beta: -2,
        c: Float32Array.from(c0),
        bias: Float32Array.from(bias),
      });
      const abs = ref.matmulAbs(a.v, b.v, m, n, k);
      expectClose(await values(c), r, 'f32', { absRef: abs, k, extraRtol: 1e-6 });
      expect(c.shape).toEqual([2, 9, n]);
    });
  });

  describe.each(DTYPES)('elementwise %s', (dtype) => {
    test.each([
      [1, 1],
      [3, 17],
      [5, 33],
      [2, 4097],
    ])('add/mul rows=%i cols=%i, same shape and row broadcast', async (rows, cols) => {
      const a = input(rt, dtype, [rows, cols], rows + cols);
      const b = input(rt, dtype, [rows, cols], rows + cols + 1);
      const row = input(rt, dtype, [cols], rows + cols + 2);
      for (const op of ['add', 'mul'] as const) {
        const f = op === 'add' ? ops.add : ops.mul;
        expectClose(await values(f(a.t, b.t)), ref.binary(op, a.v, b.v, cols), dtype);
        expectClose(await values(f(a.t, row.t)), ref.binary(op, a.v, row.v, cols), dtype);
      }
    });

    test.each([1, 7, 33, 1000, 4099])('siluMul n=%i', async (n) => {
      const g = input(rt, dtype, [n], n, 8);
      const u = input(rt, dtype, [n], n + 1, 2);
      // silu uses exp: allow a few f32 ulps beyond one output rounding.
      expectClose(await values(ops.siluMul(g.t, u.t)), ref.siluMul(g.v, u.v), dtype, {
        extraRtol: 2e-6,
      });
    });

    test('in place (out = a)', async () => {
      const a = input(rt, dtype, [4, 9], 5);
      const b = input(rt, dtype, [4, 9], 6);
      const r = ref.binary('add', a.v, b.v, 9);
      const out = ops.add(a.t, b.t, { out: a.t });
      expect(out).toBe(a.t);
      expectClose(await values(a.t), r, dtype);
    });
  });

  describe.each(DTYPES)('rmsNorm / softmax / rope / embedding %s', (dtype) => {
    test.each([
      [1, 1],
      [3, 17],
      [4, 127],
      [2, 4097],
    ])('rmsNorm rows=%i cols=%i', async (rows, cols) => {
      const x = input(rt, dtype, [rows, cols], rows * cols);
      const w = randn(cols, 3);
      const out = ops.rmsNorm(x.t, { weight: rt.tensor(Float32Array.from(w), [cols]), eps: 1e-5 });
      expectClose(await values(out), ref.rmsNorm(x.v, cols, 1e-5, Float32Array.from(w)), dtype, {
        extraRtol: 1e-6 * Math.log2(cols + 1),
      });
      const zeros = rt.zeros([rows, cols], dtype);
      const z = await values(ops.rmsNorm(zeros, { eps: 1e-6 }));
      expect(Array.from(z).every((v) => v === 0)).toBe(true);
    });

    test.each([
      [1, 1],
      [3, 17],
      [2, 33],
      [4, 1000],
      [1, 4097],
    ])('softmax rows=%i cols=%i (scaled, large logits)', async (rows, cols) => {
      const x = input(rt, dtype, [rows, cols], rows + 7 * cols, 30);
      const out = ops.softmax(x.t, { scale: 0.7 });
      expectClose(await values(out), ref.softmax(x.v, cols, 0.7), dtype, {
        absRef: new Float64Array(rows * cols).fill(1),
        k: 8,
      });
    });

    test('softmax of an all -Infinity row is zeros', async () => {
      const enc = encode(dtype, [-Infinity, -Infinity, -Infinity, 1, 2, 3]);
      const out = await values(ops.softmax(rt.tensor(enc, [2, 3], { dtype })));
      expect(Array.from(out.slice(0, 3))).toEqual([0, 0, 0]);
      expect(out[3] + out[4] + out[5]).toBeCloseTo(1, 2);
    });

    test.each([
      [64, 64, false],
      [64, 64, true],
      [80, 80, false],
      [128, 96, true],
      [128, 32, false],
    ])('rope headDim=%i rotaryDim=%i neox=%s', async (hd, rot, neox) => {
      const tokens = 5;
      const heads = 3;
      const x = input(rt, dtype, [tokens, heads, hd], hd + rot);
      const pos = Int32Array.from([0, 1, 7, 100, 4095]);
      const opts = { rotaryDim: rot, freqBase: 10000, freqScale: 0.5, neox };
      ops.rope(x.t, rt.tensor(pos, [tokens]), opts);
      const r = ref.rope(x.v, tokens, heads, hd, pos, opts);
      // The angle pos·θ is computed in f32 (as llama.cpp does): at pos 4095 that is an
      // absolute angle error up to ~4095·2^-24 rad, i.e. a relative error ~2.5e-4 of |x|.
      const absX = Float64Array.from(x.v, (v, i) => Math.abs(v) + Math.abs(x.v[i ^ 1] ?? 0));
      expectClose(await values(x.t), r, dtype, { absRef: absX, k: 8192 });
    });

    test('embedding gathers rows, converts dtype', async () => {
      const vocab = 37;
      const dim = 19;
      const table = input(rt, dtype, [vocab, dim], 99);
      const ids = Int32Array.from([0, 36, 5, 5, 17]);
      for (const outDtype of DTYPES) {
        const out = ops.embedding(table.t, rt.tensor(ids, [5]), { outDtype });
        expect(out.shape).toEqual([5, dim]);
        expectClose(await values(out), ref.embedding(table.v, dim, ids), outDtype);
      }
    });
  });

  test('cast round-trips f32 -> f16 -> f32 like the TypeScript encoder', async () => {
    const v = randn(1001, 4, 100);
    const t = rt.tensor(Float32Array.from(v), [1001]);
    const h = ops.cast(t, 'f16');
    const want = encode('f16', Float32Array.from(v));
    expect(Array.from((await h.read()) as Uint16Array)).toEqual(Array.from(want));
    const b = ops.cast(t, 'bf16');
    expect(Array.from((await b.read()) as Uint16Array)).toEqual(
      Array.from(encode('bf16', Float32Array.from(v))),
    );
  });
});
