/**
 * Quantized weights on every ISA variant this CPU runs: quantize (codes and scales equal
 * the reference construction exactly), dequantize, plain <-> packed round trips, error
 * statistics, GGUF block import (bit-exact against ggml's dequantization), dense import,
 * and the quantized matmul over every format and shape class against the float64
 * reference (lib/ops/quant-reference.ts) under the tolerance model in helpers.ts.
 */
import { decode, encode, f32ToF16, FloatDType } from '../lib/runtime/dtype';
import { KernelError } from '../lib/runtime/errors';
import { loadRuntime, Runtime } from '../lib/runtime/runtime';
import * as ops from '../lib/ops/index';
import { Fp8QuantFormat, IntQuantFormat, QuantizedTensor } from '../lib/ops/quant';

type ResolvedQuantFormat = Required<IntQuantFormat>;
import * as qref from '../lib/ops/quant-reference';
import { expectClose, isasToTest, randn, rng } from './helpers';

const FORMATS: ResolvedQuantFormat[] = [
  { kind: 'int8', group: 0, asym: false, scaleDtype: 'f32' },
  { kind: 'int8', group: 32, asym: false, scaleDtype: 'f16' },
  { kind: 'int8', group: 128, asym: false, scaleDtype: 'f32' },
  { kind: 'int4', group: 32, asym: false, scaleDtype: 'f16' },
  { kind: 'int4', group: 64, asym: true, scaleDtype: 'f32' },
  { kind: 'int4', group: 128, asym: true, scaleDtype: 'f16' },
  { kind: 'int4', group: 128, asym: false, scaleDtype: 'f32' },
];
const name = (f: ResolvedQuantFormat): string =>
  `${f.kind} ${f.group === 0 ? 'per-channel' : 'g' + f.group}${f.asym ? ' asym' : ''} ${f.scaleDtype}`;

/** A K that is valid for the format and not a multiple of 256 unless forced. */
function kFor(f: ResolvedQuantFormat, want: number): number {
  const g = f.group === 0 ? 1 : f.group;
  return Math.max(g, Math.round(want / g) * g);
}

function f32Weights(n: number, k: number, seed: number): Float32Array {
  // A mix of magnitudes per row, and an outlier now and then, as real weights have.
  const r = rng(seed);
  const w = new Float32Array(n * k);
  for (let i = 0; i < n * k; i++) {
    const row = Math.floor(i / k);
    const scale = 0.02 * (1 + (row % 5));
    w[i] = (r() * 2 - 1) * scale * (r() < 0.01 ? 8 : 1);
  }
  return w;
}

/** Index of the first element that differs (Object.is), or -1. */
function firstDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) return -2;
  for (let i = 0; i < a.length; i++) if (!Object.is(a[i], b[i])) return i;
  return -1;
}

describe.each(isasToTest())('isa %s', (isa) => {
  let rt: Runtime;
  beforeAll(async () => {
    rt = await loadRuntime({ isa, threads: 2 });
  });
  afterAll(() => rt.dispose());

  describe.each(FORMATS.map((f) => [name(f), f] as const))('%s', (_n, f) => {
    test('quantize equals the reference construction; dequantize, unpack, pack round-trip', async () => {
      for (const [n, kw] of [
        [1, 32],
        [17, 96],
        [33, 416],
        [100, 1056],
      ]) {
        const k = kFor(f, kw);
        const wv = f32Weights(n, k, n * 31 + k);
        const w = rt.tensor(wv, [n, k]);
        const q = ops.quantize(w, f);
        const ref = qref.quantize(wv, n, k, f);
        const refDeq = qref.dequantize(ref, n, k);

        // plain layout: codes and scales exactly as specified
        const plain = q.unpack();
        const raw = (await plain.codes.read()) as Int8Array | Uint8Array;
        const codes = new Int32Array(n * k);
        for (let i = 0; i < n * k; i++) {
          if (f.kind === 'int8') codes[i] = (raw as Int8Array)[i];
          else {
            const byte = raw[Math.floor(i / 2)];
            let v = i % 2 === 0 ? byte & 15 : byte >> 4;
            if (!f.asym && v > 7) v -= 16;
            codes[i] = v;
          }
        }
        expect(firstDiff(codes, ref.codes)).toBe(-1);
        expect(firstDiff(await plain.scales.toFloat32(), ref.scales)).toBe(-1);
        if (ref.mins) expect(firstDiff(await plain.mins!.toFloat32(), ref.mins)).toBe(-1);
        else expect(plain.mins).toBeUndefined();

        // dequantize: the value every code represents, bit for bit
        const deq = (await q.dequantize().read()) as Float32Array;
        expect(Buffer.from(deq.buffer).equals(Buffer.from(refDeq.buffer))).toBe(true);

        // pack(unpack(q)) gives the same bytes
        const again = ops.packQuantized(plain, f, [n, k]);
        const [b1, b2] = await Promise.all([q.packed.read(), again.packed.read()]);
        expect(Buffer.from(b1.buffer).equals(Buffer.from(b2.buffer))).toBe(true);

        // error statistics agree with a direct computation
        const st = (await q.stats())!;
        let maxErr = 0;
        let sq = 0;
        for (let i = 0; i < n * k; i++) {
          const e = refDeq[i] - wv[i];
          maxErr = Math.max(maxErr, Math.abs(e));
          sq += e * e;
        }
        expect(st.maxAbsErr).toBe(maxErr);
        expect(st.rmsErr).toBeCloseTo(Math.sqrt(sq / (n * k)), 12);
        // round to nearest: within half a step unless the grid point was clamped
        if (st.clamped === 0) expect(st.maxErrStep).toBeLessThanOrEqual(0.5 + 1e-6);

        for (const t of [w, plain.codes, plain.scales, plain.mins]) t?.dispose();
        q.dispose();
        again.dispose();
      }
    });

    const shapes: [number, number, number][] = [
      [1, 1, 32],
      [1, 33, 416],
      [3, 17, 160],
      [8, 100, 96],
      [9, 33, 224],
      [17, 31, 1056],
      [64, 48, 288],
      [600, 19, 160],
    ];
    test.each(shapes)(
      'qmatmul M=%i N=%i K≈%i, f32/f16/bf16 activations and outputs',
      async (m, n, kw) => {
        const k = kFor(f, kw);
        const wv = f32Weights(n, k, m + n + k);
        const w = rt.tensor(wv, [n, k]);
        const q = ops.quantize(w, f);
        const plain = qref.quantize(wv, n, k, f);
        // every activation dtype on the small shapes; f32 alone at M=600 (the kernel's dtype
        // handling is per row, and the large case is there for the tiled path)
        for (const dtype of (m >= 600 ? ['f32'] : ['f32', 'f16', 'bf16']) as FloatDType[]) {
          const enc = encode(dtype, randn(m * k, m * 7 + k, 2));
          const av = decode(dtype, enc);
          const a = rt.tensor(enc, [m, k], { dtype });
          const { out, absRef } = qref.qmatmul(av, m, k, plain, n);
          for (const outDtype of ['f32', dtype] as FloatDType[]) {
            const c = ops.qmatmul(a, q, { outDtype });
            expectClose(decode(outDtype, await c.read()), out, outDtype, { absRef, k: k + 8 });
            c.dispose();
          }
          a.dispose();
        }
        w.dispose();
        q.dispose();
      },
    );

    test('bias and residual epilogue (residual may be the output itself)', async () => {
      const [m, n] = [5, 37];
      const k = kFor(f, 192);
      const wv = f32Weights(n, k, 99);
      const w = rt.tensor(wv, [n, k]);
      const q = ops.quantize(w, f);
      const plain = qref.quantize(wv, n, k, f);
      const av = Float32Array.from(randn(m * k, 5));
      const bias = Float32Array.from(randn(n, 6));
      const res = Float32Array.from(randn(m * n, 7));
      const a = rt.tensor(av, [m, k]);
      const b = rt.tensor(bias, [n]);
      const r = rt.tensor(res, [m, n]);
      const { out, absRef } = qref.qmatmul(av, m, k, plain, n, { bias, residual: res });
      const c = ops.qmatmul(a, q, { bias: b, residual: r });
      expectClose(await c.toFloat32(), out, 'f32', { absRef, k: k + 8 });
      // in place: out = residual
      ops.qmatmul(a, q, { bias: b, residual: r, out: r });
      expectClose(await r.toFloat32(), out, 'f32', { absRef, k: k + 8 });
      for (const t of [w, a, b, r, c]) t.dispose();
      q.dispose();
    });
  });

  test('leading batch dims fold into M; matmul() accepts a QuantizedTensor', async () => {
    const f: ResolvedQuantFormat = { kind: 'int4', group: 32, asym: false, scaleDtype: 'f16' };
    const [n, k] = [24, 64];
    const wv = f32Weights(n, k, 3);
    const q = ops.quantize(rt.tensor(wv, [n, k]), f);
    const av = Float32Array.from(randn(2 * 3 * k, 4));
    const a = rt.tensor(av, [2, 3, k]);
    const c = ops.matmul(a, q);
    expect(c.shape).toEqual([2, 3, n]);
    const { out, absRef } = qref.qmatmul(av, 6, k, qref.quantize(wv, n, k, f), n);
    expectClose(await c.toFloat32(), out, 'f32', { absRef, k: k + 8 });
  });
});

describe('GGUF import', () => {
  let rt: Runtime;
  beforeAll(async () => {
    rt = await loadRuntime({ threads: 2 });
  });
  afterAll(() => rt.dispose());

  /** Hand-built ggml blocks: random finite f16 scales (incl. negative and subnormal) and codes. */
  function blocks(type: number, n: number, k: number, seed: number): Uint8Array {
    const r = rng(seed);
    const bb = type === 2 ? 18 : type === 3 ? 20 : 34;
    const data = new Uint8Array((n * k * bb) / 32);
    const dv = new DataView(data.buffer);
    const scales = [0.0123, -0.5, 3.0e-7, 0, 65504, 1e-3];
    for (let b = 0; b < (n * k) / 32; b++) {
      const o = b * bb;
      for (let i = 0; i < bb; i++) data[o + i] = Math.floor(r() * 256);
      dv.setUint16(o, f32ToF16(scales[b % scales.length] * (r() + 0.5)), true);
      if (type === 3) dv.setUint16(o + 2, f32ToF16((r() - 0.5) * 2), true);
    }
    return data;
  }

  test.each([
    ['Q4_0', 2],
    ['Q4_1', 3],
    ['Q8_0', 8],
  ])('%s dequantizes to ggml values bit for bit, and multiplies', async (_n, type) => {
    for (const [n, k] of [
      [1, 32],
      [17, 96],
      [40, 256],
    ]) {
      const data = blocks(type, n, k, n * k + type);
      const q = ops.importGguf(rt, type, data, [n, k]) as QuantizedTensor;
      expect(q).toBeInstanceOf(QuantizedTensor);
      expect(q.format).toEqual(ops.ggmlNativeFormat(type));
      const want = qref.ggmlDequantize(type, data, n, k);
      const got = (await q.dequantize().read()) as Float32Array;
      expect(Buffer.from(got.buffer).equals(Buffer.from(want.buffer))).toBe(true);
    }
  });

  test('F32, F16 and BF16 import with the same bits', async () => {
    const r = rng(1);
    const raw = new Uint8Array(4 * 8 * 4);
    for (let i = 0; i < raw.length; i++) raw[i] = Math.floor(r() * 256);
    for (const [type, dtype, bytes] of [
      [0, 'f32', 4],
      [1, 'f16', 2],
      [30, 'bf16', 2],
    ] as const) {
      const data = raw.subarray(0, 4 * 8 * bytes);
      const t = ops.importGguf(rt, type, data, [4, 8]);
      expect(t).not.toBeInstanceOf(QuantizedTensor);
      const got = (await (t as { read(): Promise<ArrayBufferView> }).read()) as Uint8Array;
      expect(
        Buffer.from(got.buffer, got.byteOffset, got.byteLength).equals(Buffer.from(data)),
      ).toBe(true);
      expect((t as { dtype: string }).dtype).toBe(dtype);
    }
  });

  test('wrong sizes and unknown types raise KernelError', () => {
    expect(() => ops.importGguf(rt, 2, new Uint8Array(17), [1, 32])).toThrow(
      expect.objectContaining({ code: 'E_SHAPE', arg: 'blocks' }),
    );
    expect(() => ops.importGguf(rt, 99, new Uint8Array(18), [1, 32])).toThrow(
      expect.objectContaining({ code: 'E_UNSUPPORTED', arg: 'type' }),
    );
    expect(() => ops.importGguf(rt, 0, new Uint8Array(3), [1, 1])).toThrow(
      expect.objectContaining({ code: 'E_SHAPE', arg: 'data' }),
    );
  });
});

describe('quantized bad input', () => {
  let rt: Runtime;
  beforeAll(async () => {
    rt = await loadRuntime({ threads: 2 });
  });
  afterAll(() => rt.dispose());

  test('a group that does not divide K, a mismatched K, wrong dtypes, disposed weights', async () => {
    const w = rt.tensor(new Float32Array(4 * 48), [4, 48]);
    expect(() => ops.quantize(w, { kind: 'int4', group: 32 })).toThrow(
      expect.objectContaining({ code: 'E_SHAPE', arg: 'format' }),
    );
    expect(() => ops.quantize(w, { kind: 'int4', group: 0 })).toThrow(
      expect.objectContaining({ code: 'E_INVALID_ARG', arg: 'format' }),
    );
    expect(() => ops.quantize(w, { kind: 'int5' as 'int4' })).toThrow(KernelError);
    expect(() => ops.quantize(w, { kind: 'int8', group: 48 as 32 })).toThrow(
      expect.objectContaining({ arg: 'format' }),
    );
    const q = ops.quantize(w, { kind: 'int8', group: 0 });
    const a = rt.tensor(new Float32Array(2 * 40), [2, 40]);
    expect(() => ops.qmatmul(a, q)).toThrow(expect.objectContaining({ code: 'E_SHAPE', arg: 'a' }));
    const ai = rt.tensor(new Int32Array(2 * 48), [2, 48], { dtype: 'i32' });
    expect(() => ops.qmatmul(ai, q)).toThrow(
      expect.objectContaining({ code: 'E_DTYPE', arg: 'a' }),
    );
    const a16 = rt.tensor(new Float32Array(2 * 48), [2, 48]);
    const badBias = rt.tensor(new Float32Array(3), [3]);
    expect(() => ops.qmatmul(a16, q, { bias: badBias })).toThrow(
      expect.objectContaining({ code: 'E_SHAPE', arg: 'bias' }),
    );
    const wrongOut = rt.empty([2, 5]);
    expect(() => ops.qmatmul(a16, q, { out: wrongOut })).toThrow(
      expect.objectContaining({ code: 'E_SHAPE', arg: 'out' }),
    );
    expect(() =>
      ops.quantize(rt.tensor(new Uint16Array(4 * 32), [4, 32], { dtype: 'f16' }), { kind: 'int8' }),
    ).toThrow(expect.objectContaining({ code: 'E_DTYPE', arg: 'weights' }));
    // packed bytes whose size does not match the claimed format/shape are refused natively
    const forged = new QuantizedTensor(
      { kind: 'int8', group: 0, asym: false, scaleDtype: 'f32' },
      [400, 48],
      q.packed,
    );
    expect(() => ops.qmatmul(a16, forged)).toThrow(
      expect.objectContaining({ code: 'E_SHAPE', arg: 'weights' }),
    );
    q.dispose();
    expect(() => ops.qmatmul(a16, q)).toThrow(
      expect.objectContaining({ code: 'E_DISPOSED', arg: 'weights' }),
    );
    // non-finite weights: the stream rejects with a KernelError, and later work still runs
    const bad = rt.tensor(Float32Array.from([1, NaN, ...new Array(30).fill(0)]), [1, 32]);
    const qb = ops.quantize(bad, { kind: 'int8', group: 32 });
    await expect(rt.synchronize()).rejects.toMatchObject({ code: 'E_INVALID_ARG', arg: 'weights' });
    rt.defaultStream.reset();
    qb.dispose();
    const ok = ops.quantize(w, { kind: 'int8', group: 0 });
    await expect(ok.stats()).resolves.toBeDefined();
  });
});

const FP8_FORMATS: Required<Fp8QuantFormat>[] = [
  { kind: 'fp8e4m3', scaleBlock: 'channel', act: 'w8a16' },
  { kind: 'fp8e4m3', scaleBlock: 'tensor', act: 'w8a8' },
  { kind: 'fp8e4m3', scaleBlock: 'block128', act: 'w8a16' },
  { kind: 'fp8e4m3', scaleBlock: 'block128', act: 'w8a8' },
  { kind: 'fp8e5m2', scaleBlock: 'channel', act: 'w8a16' },
  { kind: 'fp8e5m2', scaleBlock: 'block128', act: 'w8a8' },
];

describe('fp8 reference conversions (independent of the native code)', () => {
  test('decode/encode agree on every code and round ties to even', () => {
    for (const kind of ['fp8e4m3', 'fp8e5m2'] as const)
      for (let c = 0; c < 256; c++) {
        const v = qref.fp8Decode(kind, c);
        if (Number.isFinite(v)) expect(qref.fp8Encode(kind, v) === c || v === 0).toBe(true);
      }
    // 1 + 1/16 lies halfway between 1 (code 0x38, even) and 1.125 (0x39): ties to even
    expect(qref.fp8Encode('fp8e4m3', 1.0625)).toBe(0x38);
    expect(qref.fp8Encode('fp8e4m3', 1000)).toBe(0x7e); // saturates to 448
    expect(qref.fp8Encode('fp8e5m2', -1e9)).toBe(0xfb); // -57344
  });
});

describe.each(isasToTest())('fp8 isa %s', (isa) => {
  let rt: Runtime;
  beforeAll(async () => {
    rt = await loadRuntime({ isa, threads: 2 });
  });
  afterAll(() => rt.dispose());

  describe.each(FP8_FORMATS.map((f) => [`${f.kind} ${f.scaleBlock} ${f.act}`, f] as const))(
    '%s',
    (_n, f) => {
      test('quantize equals the reference; dequantize bit-exact; unpack/pack round trip', async () => {
        for (const [n, k] of [
          [1, 1],
          [17, 45],
          [130, 300],
        ]) {
          const wv = f32Weights(n, k, n * 7 + k);
          const w = rt.tensor(wv, [n, k]);
          const q = ops.quantize(w, f);
          const ref = qref.fp8Quantize(wv, n, k, f);
          const plain = q.unpack();
          expect(firstDiff((await plain.codes.read()) as Uint8Array, ref.codes)).toBe(-1);
          expect(firstDiff(await plain.scales.toFloat32(), ref.scales)).toBe(-1);
          const deq = (await q.dequantize().read()) as Float32Array;
          expect(firstDiff(deq, qref.fp8Dequantize(ref, f.kind, n, k))).toBe(-1);
          const again = ops.packQuantized(plain, f, [n, k]);
          const [b1, b2] = await Promise.all([q.packed.read(), again.packed.read()]);
          expect(Buffer.from(b1.buffer).equals(Buffer.from(b2.buffer))).toBe(true);
          const st = (await q.stats())!;
          // amax / max rounds in f32, so a granule's largest element can land a hair above
          // the largest code and saturate (at most one per granule), with a tiny error
          expect(st.clamped).toBeLessThanOrEqual(ref.scales.length);
          expect(st.maxErrStep).toBeLessThanOrEqual(0.5 + 1e-6);
          for (const t of [w, plain.codes, plain.scales]) t.dispose();
          q.dispose();
          again.dispose();
        }
      });

      test.each([
        [1, 1, 1],
        [1, 33, 300],
        [4, 17, 130],
        [9, 40, 77],
        [64, 35, 260],
        [600, 19, 144],
      ])('qmatmul M=%i N=%i K=%i', async (m, n, k) => {
        const wv = f32Weights(n, k, m + n + k);
        const w = rt.tensor(wv, [n, k]);
        const q = ops.quantize(w, f);
        const plain = qref.fp8Quantize(wv, n, k, f);
        for (const dtype of (m >= 600 ? ['f32'] : ['f32', 'bf16']) as FloatDType[]) {
          const enc = encode(dtype, randn(m * k, m * 3 + k, 2));
          const av = decode(dtype, enc);
          const a = rt.tensor(enc, [m, k], { dtype });
          const bias = Float32Array.from(randn(n, 9));
          const b = rt.tensor(bias, [n]);
          const { out, absRef } = qref.fp8Qmatmul(av, m, k, plain, f, n, { bias });
          for (const outDtype of ['f32', 'bf16'] as FloatDType[]) {
            const c = ops.qmatmul(a, q, { outDtype, bias: b });
            expectClose(decode(outDtype, await c.read()), out, outDtype, { absRef, k: k + 8 });
            c.dispose();
          }
          a.dispose();
          b.dispose();
        }
        w.dispose();
        q.dispose();
      });
    },
  );
});

describe.each(isasToTest())('fused SwiGLU and grouped (MoE) isa %s', (isa) => {
  let rt: Runtime;
  beforeAll(async () => {
    rt = await loadRuntime({ isa, threads: 2 });
  });
  afterAll(() => rt.dispose());

  const silu = (x: number): number => x / (1 + Math.exp(-x));
  /** silu(g)·u with the error scale of both operands (|d silu/dx| <= 1.1). */
  function swigluRef(
    g: { out: Float64Array; absRef: Float64Array },
    u: { out: Float64Array; absRef: Float64Array },
  ): { out: Float64Array; absRef: Float64Array } {
    const out = new Float64Array(g.out.length);
    const absRef = new Float64Array(g.out.length);
    for (let i = 0; i < out.length; i++) {
      out[i] = silu(g.out[i]) * u.out[i];
      absRef[i] = 1.1 * Math.abs(u.out[i]) * g.absRef[i] + Math.abs(silu(g.out[i])) * u.absRef[i];
    }
    return { out, absRef };
  }
  const formats: ResolvedQuantFormat[] = [
    { kind: 'int8', group: 32, asym: false, scaleDtype: 'f16' },
    { kind: 'int4', group: 64, asym: true, scaleDtype: 'f32' },
  ];

  test.each(formats.map((f) => [name(f), f] as const))(
    'fuseGateUp + qmatmul = silu(gate)·up, %s',
    async (_n, f) => {
      for (const [m, F, kw] of [
        [1, 33, 128],
        [5, 100, 192],
        [9, 17, 256],
        [70, 40, 128],
      ]) {
        const k = kFor(f, kw);
        const gv = f32Weights(F, k, 11 + m);
        const uv = f32Weights(F, k, 12 + m);
        const gq = ops.quantize(rt.tensor(gv, [F, k]), f);
        const uq = ops.quantize(rt.tensor(uv, [F, k]), f);
        const gu = ops.fuseGateUp(gq, uq);
        expect(gu.gateUp).toBe(true);
        const av = Float32Array.from(randn(m * k, m + k));
        const a = rt.tensor(av, [m, k]);
        const bias = Float32Array.from(randn(2 * F, 3, 0.5));
        const g = qref.qmatmul(av, m, k, qref.quantize(gv, F, k, f), F, {
          bias: bias.subarray(0, F),
        });
        const u = qref.qmatmul(av, m, k, qref.quantize(uv, F, k, f), F, { bias: bias.subarray(F) });
        const want = swigluRef(g, u);
        const c = ops.qmatmul(a, gu, { bias: rt.tensor(bias, [2 * F]) });
        expect(c.shape).toEqual([m, F]);
        expectClose(await c.toFloat32(), want.out, 'f32', {
          absRef: want.absRef,
          k: k + 8,
          extraRtol: 8 * 2 ** -24,
        });
        for (const t of [gq, uq, gu]) t.dispose();
      }
    },
  );

  test.each(formats.map((f) => [name(f), f] as const))(
    'qmatmulGrouped, plain and gate/up experts, %s',
    async (_n, f) => {
      const [T, E, topk, N] = [37, 5, 2, 24];
      const k = kFor(f, 128);
      // skewed routing with one empty expert (4)
      const r = rng(5);
      const ids = new Int32Array(T * topk);
      for (let t = 0; t < T; t++) {
        const e1 = r() < 0.6 ? 0 : Math.floor(r() * 4);
        let e2 = Math.floor(r() * 4);
        if (e2 === e1) e2 = (e1 + 1) % 4;
        ids[t * topk] = e1;
        ids[t * topk + 1] = e2;
      }
      const perm = ops.expertPermutation(ids, topk, E);
      expect(perm.offsets[E]).toBe(T * topk);
      expect(perm.offsets[5] - perm.offsets[4]).toBe(0);
      const av = Float32Array.from(randn(T * k, 21));
      const a = rt.tensor(av, [T, k]);
      const rows = rt.tensor(perm.rows, [perm.rows.length], { dtype: 'i32' });
      const offsets = rt.tensor(perm.offsets, [E + 1], { dtype: 'i32' });
      const wv = Array.from({ length: E }, (_, e) => f32Weights(N, k, 100 + e));
      const uvs = Array.from({ length: E }, (_, e) => f32Weights(N, k, 200 + e));
      const experts = wv.map((w) => ops.quantize(rt.tensor(w, [N, k]), f));
      const ups = uvs.map((w) => ops.quantize(rt.tensor(w, [N, k]), f));
      const fused = experts.map((g, e) => ops.fuseGateUp(g, ups[e]));
      const plainRefs = wv.map((w) => qref.quantize(w, N, k, f));
      const upRefs = uvs.map((w) => qref.quantize(w, N, k, f));
      const outPlain = await ops.qmatmulGrouped(a, experts, rows, offsets).toFloat32();
      const outFused = await ops.qmatmulGrouped(a, fused, rows, offsets).toFloat32();
      for (let e = 0; e < E; e++)
        for (let i = perm.offsets[e]; i < perm.offsets[e + 1]; i++) {
          const src = av.subarray(perm.rows[i] * k, perm.rows[i] * k + k);
          const g = qref.qmatmul(src, 1, k, plainRefs[e], N);
          expectClose(outPlain.subarray(i * N, i * N + N), g.out, 'f32', {
            absRef: g.absRef,
            k: k + 8,
          });
          const u = qref.qmatmul(src, 1, k, upRefs[e], N);
          const want = swigluRef(g, u);
          expectClose(outFused.subarray(i * N, i * N + N), want.out, 'f32', {
            absRef: want.absRef,
            k: k + 8,
            extraRtol: 8 * 2 ** -24,
          });
        }
      // bad routing data is refused on the stream, naming the argument
      const badRows = rt.tensor(Int32Array.from(perm.rows).fill(T, 0, 1), [perm.rows.length], {
        dtype: 'i32',
      });
      ops.qmatmulGrouped(a, experts, badRows, offsets);
      await expect(rt.synchronize()).rejects.toMatchObject({
        code: expect.stringMatching(/^E_/),
        arg: 'rows',
      });
      rt.defaultStream.reset();
      for (const t of [...experts, ...ups, ...fused]) t.dispose();
    },
  );
});

describe.each(isasToTest())('GGUF K-quants (Q4_K, Q6_K) isa %s', (isa) => {
  let rt: Runtime;
  beforeAll(async () => {
    rt = await loadRuntime({ isa, threads: 2 });
  });
  afterAll(() => rt.dispose());

  /** Random super-blocks with finite f16 super scales of assorted magnitudes and signs. */
  function kblocks(type: 12 | 14, n: number, k: number, seed: number): Uint8Array {
    const r = rng(seed);
    const bb = qref.kquantBlockBytes(type);
    const data = new Uint8Array((n * k * bb) / 256);
    const dv = new DataView(data.buffer);
    const ds = [1.5e-3, -2e-4, 7e-6, 0.031, 0];
    for (let b = 0; b < (n * k) / 256; b++) {
      const o = b * bb;
      for (let i = 0; i < bb; i++) data[o + i] = Math.floor(r() * 256);
      if (type === 12) {
        dv.setUint16(o, f32ToF16(ds[b % ds.length] * (r() + 0.5)), true);
        dv.setUint16(o + 2, f32ToF16(ds[(b + 2) % ds.length] * (r() + 0.5)), true);
      } else {
        dv.setUint16(o + 208, f32ToF16(ds[b % ds.length] * (r() + 0.5)), true);
      }
    }
    return data;
  }

  test.each([
    ['Q4_K', 12],
    ['Q6_K', 14],
  ] as const)(
    '%s: import is bit-exact with ggml; qmatmul matches the reference',
    async (_n, type) => {
      for (const [m, n, k] of [
        [1, 1, 256],
        [3, 17, 512],
        [9, 33, 768],
        [40, 20, 256],
      ]) {
        const data = kblocks(type, n, k, n * k + type);
        const q = ops.importGguf(rt, type, data, [n, k]) as QuantizedTensor;
        expect(q.format.kind).toBe(type === 12 ? 'q4k' : 'q6k');
        const mins = new Float32Array(n * k);
        const want = qref.ggmlDequantizeK(type, data, n, k, mins);
        const got = (await q.dequantize().read()) as Float32Array;
        expect(firstDiff(got, want)).toBe(-1);
        // the plain layout means what docs/formats.md says it means
        const p = q.unpack();
        const fromPlain = qref.kquantPlainDequantize(
          type === 12 ? 'q4k' : 'q6k',
          n,
          k,
          (await p.codes.read()) as Int8Array,
          (await p.scales.read()) as Int8Array,
          await p.superD!.toFloat32(),
          p.mins ? ((await p.mins.read()) as Uint8Array) : undefined,
          p.superDmin ? await p.superDmin.toFloat32() : undefined,
        );
        expect(firstDiff(fromPlain, want)).toBe(-1);
        const again = ops.packQuantized(p, q.format, [n, k]);
        const [b1, b2] = await Promise.all([q.packed.read(), again.packed.read()]);
        expect(Buffer.from(b1.buffer).equals(Buffer.from(b2.buffer))).toBe(true);

        const av = Float32Array.from(randn(m * k, m + k, 3));
        const a = rt.tensor(av, [m, k]);
        const ref = qref.qmatmulDense(av, m, k, want, n, 256, type === 12 ? mins : undefined);
        const c = ops.qmatmul(a, q);
        expectClose(await c.toFloat32(), ref.out, 'f32', { absRef: ref.absRef, k: k + 8 });
        for (const t of [a, c, p.codes, p.scales, p.mins, p.superD, p.superDmin]) t?.dispose();
        q.dispose();
        again.dispose();
      }
    },
  );

  test.each(['q4k', 'q6k'] as const)(
    'quantize to %s: bounded error, dequantize agrees with the plain layout',
    async (kind) => {
      const [n, k] = [19, 512];
      const wv = f32Weights(n, k, 77);
      const q = ops.quantize(rt.tensor(wv, [n, k]), { kind });
      const deq = (await q.dequantize().read()) as Float32Array;
      const p = q.unpack();
      const fromPlain = qref.kquantPlainDequantize(
        kind,
        n,
        k,
        (await p.codes.read()) as Int8Array,
        (await p.scales.read()) as Int8Array,
        await p.superD!.toFloat32(),
        p.mins ? ((await p.mins.read()) as Uint8Array) : undefined,
        p.superDmin ? await p.superDmin.toFloat32() : undefined,
      );
      expect(firstDiff(deq, fromPlain)).toBe(-1);
      // error relative to each row's range: 4-bit codes ~1/30 of the range, 6-bit ~1/120,
      // plus the 6/8-bit sub-scale quantization
      const st = (await q.stats())!;
      let rmsW = 0;
      for (const x of wv) rmsW += x * x;
      rmsW = Math.sqrt(rmsW / wv.length);
      expect(st.rmsErr).toBeLessThan(kind === 'q4k' ? 0.12 * rmsW : 0.03 * rmsW);
      expect(st.rmsErr).toBeGreaterThan(0);
      q.dispose();
    },
  );
});

describe('quantized bad input: fp8, fused, grouped', () => {
  let rt: Runtime;
  beforeAll(async () => {
    rt = await loadRuntime({ threads: 2 });
  });
  afterAll(() => rt.dispose());

  test('each mistake raises a KernelError naming the argument, and nothing is left half-done', async () => {
    const w = rt.tensor(f32Weights(32, 64, 1), [32, 64]);
    // fp8 plain parts with the wrong scale shape
    const q8 = ops.quantize(w, { kind: 'fp8e4m3', scaleBlock: 'channel' });
    const p = q8.unpack();
    const wrongScales = rt.tensor(new Float32Array(3), [3]);
    expect(() =>
      ops.packQuantized(
        { codes: p.codes, scales: wrongScales },
        { kind: 'fp8e4m3', scaleBlock: 'channel' },
        [32, 64],
      ),
    ).toThrow(expect.objectContaining({ code: 'E_SHAPE', arg: 'scales' }));
    expect(() => ops.quantize(w, { kind: 'fp8e4m3', scaleBlock: 'rows' as 'tensor' })).toThrow(
      expect.objectContaining({ arg: 'format.scaleBlock' }),
    );
    // fp8 cannot be fused or grouped
    expect(() => ops.fuseGateUp(q8, q8)).toThrow(
      expect.objectContaining({ code: 'E_UNSUPPORTED', arg: 'format' }),
    );
    // fused gate/up needs matching halves, and refuses dequantize / residual
    const g = ops.quantize(w, { kind: 'int8', group: 32 });
    const u = ops.quantize(rt.tensor(f32Weights(16, 64, 2), [16, 64]), { kind: 'int8', group: 32 });
    expect(() => ops.fuseGateUp(g, u)).toThrow(
      expect.objectContaining({ code: 'E_SHAPE', arg: 'up' }),
    );
    const gu = ops.fuseGateUp(g, g);
    expect(() => gu.dequantize()).toThrow(
      expect.objectContaining({ code: 'E_UNSUPPORTED', arg: 'format' }),
    );
    const a = rt.tensor(new Float32Array(2 * 64), [2, 64]);
    expect(() => ops.qmatmul(a, gu, { residual: rt.empty([2, 32]) })).toThrow(
      expect.objectContaining({ code: 'E_UNSUPPORTED', arg: 'residual' }),
    );
    expect(() => ops.qmatmul(a, gu, { bias: rt.tensor(new Float32Array(32), [32]) })).toThrow(
      expect.objectContaining({ code: 'E_SHAPE', arg: 'bias' }),
    );
    // grouped: offsets of the wrong length, experts that differ, wrong dtypes
    const rows = rt.tensor(Int32Array.from([0, 1]), [2], { dtype: 'i32' });
    const off3 = rt.tensor(Int32Array.from([0, 1, 2]), [3], { dtype: 'i32' });
    expect(() => ops.qmatmulGrouped(a, [g], rows, off3)).toThrow(
      expect.objectContaining({ code: 'E_SHAPE', arg: 'offsets' }),
    );
    expect(() => ops.qmatmulGrouped(a, [g, u], rows, off3)).toThrow(
      expect.objectContaining({ code: 'E_SHAPE', arg: 'experts[1]' }),
    );
    const rowsF = rt.tensor(Float32Array.from([0, 1]), [2]);
    expect(() => ops.qmatmulGrouped(a, [g, g], rowsF, off3)).toThrow(
      expect.objectContaining({ code: 'E_DTYPE', arg: 'rows' }),
    );
    // offsets that do not end at R are refused on the stream; the stream recovers
    const offBad = rt.tensor(Int32Array.from([0, 1, 5]), [3], { dtype: 'i32' });
    ops.qmatmulGrouped(a, [g, g], rows, offBad);
    await expect(rt.synchronize()).rejects.toMatchObject({ arg: 'offsets' });
    rt.defaultStream.reset();
    const ok = await ops.qmatmulGrouped(a, [g, g], rows, off3).toFloat32();
    expect(ok.length).toBe(2 * 32);
    expect(ok.every(Number.isFinite)).toBe(true);
  });
});
