/**
 * One backend-parity suite: the same cases on `cpu`, on `cuda-emu` (the CUDA kernels run on the
 * CPU by Tachyon's emulator, under the forward and the reverse schedule order) and on `cuda`
 * when a usable GPU exists. Every result is checked against the float64 references in
 * lib/ops/reference.ts under the tolerance model in helpers.ts, and device results are also
 * compared with the CPU backend's (bit for bit where both round once from exact math).
 * Shapes are small but awkward (odd sizes, several blocks, partial tiles) so the emulator stays
 * fast. The emulator's checks are proven live inside the addon by kernels that break a CUDA
 * rule on purpose (a divergent barrier, a shuffle with a wrong mask, a read before cp.async
 * landed): each must fail its op with a typed error, and the stream must recover.
 */
import { decode, encode, FloatDType } from '../lib/runtime/dtype';
import { binding, loadRuntime, Runtime } from '../lib/runtime/runtime';
import { KernelError } from '../lib/runtime/errors';
import { Tensor } from '../lib/runtime/tensor';
import * as ops from '../lib/ops/index';
import * as ref from '../lib/ops/reference';
import { backendsToTest, expectClose, expectKernelError, randn } from './helpers';

const FLOATS: FloatDType[] = ['f32', 'f16', 'bf16'];
const M_abs = Math.abs;

function input(rt: Runtime, dtype: FloatDType, shape: number[], seed: number, scale = 1) {
  const n = shape.reduce((a, b) => a * b, 1);
  const enc = encode(dtype, randn(n, seed, scale));
  return { t: rt.tensor(enc, shape, { dtype }), v: decode(dtype, enc), enc };
}
async function values(t: Tensor): Promise<Float64Array> {
  return decode(t.dtype as FloatDType, await t.read());
}

const cases = backendsToTest();
// The CPU backend's results, by case key, for the cross-backend comparisons.
const cpuResults = new Map<string, Float64Array>();
async function crossCheck(key: string, backend: string, got: Float64Array, exact: boolean) {
  if (backend === 'cpu') {
    cpuResults.set(key, got);
    return;
  }
  const c = cpuResults.get(key);
  if (!c) return; // the cpu case did not run (filtered): the reference check still applies
  expect(got.length).toBe(c.length);
  if (exact) {
    for (let i = 0; i < c.length; i++)
      if (!Object.is(got[i], c[i]) && !(got[i] === c[i]))
        throw new Error(`${key}: element ${i} is ${got[i]} on ${backend} but ${c[i]} on cpu`);
  }
}

describe.each(cases)('backend $name', ({ name, backend, schedule, arch }) => {
  let rt: Runtime;
  beforeAll(async () => {
    rt = await loadRuntime({ backend, schedule, arch, threads: 2 });
  });
  afterAll(() => rt?.dispose());
  const device = backend !== 'cpu';

  test('runtime reports its backend and device', () => {
    expect(rt.backend).toBe(backend);
    if (device) expect(rt.device).toMatch(backend === 'cuda-emu' ? /cuemu.*schedule/ : /sm_\d+/);
    else expect(rt.device).toBeUndefined();
  });

  // Tensor-core GEMM (f16/bf16, B stored [N, K]): shapes across tile edges and several blocks.
  const gemmShapes: [number, number, number][] = [
    [1, 8, 16],
    [7, 24, 40],
    [33, 40, 72],
    [70, 130, 48],
  ];
  describe.each(['f16', 'bf16'] as const)('matmul %s', (dtype) => {
    test.each(gemmShapes)('M=%i N=%i K=%i, every output dtype', async (m, n, k) => {
      const a = input(rt, dtype, [m, k], m * 100 + k);
      const b = input(rt, dtype, [n, k], n * 100 + k + 1);
      const r = ref.matmul(a.v, b.v, m, n, k);
      const abs = ref.matmulAbs(a.v, b.v, m, n, k, true);
      for (const outDtype of FLOATS) {
        const c = ops.matmul(a.t, b.t, { outDtype });
        const got = await values(c);
        expectClose(got, r, outDtype, { absRef: abs, k });
        await crossCheck(`mm-${dtype}-${m}-${n}-${k}-${outDtype}`, name, got, false);
        c.dispose();
      }
    });
    test('alpha, beta, bias, batched A', async () => {
      const [m, n, k] = [2 * 9, 23, 40];
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
      expectClose(await values(c), r, 'f32', {
        absRef: ref.matmulAbs(a.v, b.v, m, n, k),
        k,
        extraRtol: 1e-6,
      });
    });
  });

  describe.each(FLOATS)('elementwise, norms, rope, softmax, embedding %s', (dtype) => {
    test.each([
      [1, 1],
      [3, 17],
      [2, 1031],
    ])(
      'add/mul rows=%i cols=%i, same shape and row broadcast (bit-exact across backends)',
      async (rows, cols) => {
        const a = input(rt, dtype, [rows, cols], rows + cols);
        const b = input(rt, dtype, [rows, cols], rows + cols + 1);
        const row = input(rt, dtype, [cols], rows + cols + 2);
        for (const op of ['add', 'mul'] as const) {
          const f = op === 'add' ? ops.add : ops.mul;
          const g1 = await values(f(a.t, b.t));
          const g2 = await values(f(a.t, row.t));
          expectClose(g1, ref.binary(op, a.v, b.v, cols), dtype);
          expectClose(g2, ref.binary(op, a.v, row.v, cols), dtype);
          await crossCheck(`${op}-${dtype}-${rows}-${cols}`, name, g1, true);
          await crossCheck(`${op}b-${dtype}-${rows}-${cols}`, name, g2, true);
        }
      },
    );

    test.each([1, 33, 1027])('siluMul n=%i', async (n) => {
      const g = input(rt, dtype, [n], n, 8);
      const u = input(rt, dtype, [n], n + 1, 2);
      expectClose(await values(ops.siluMul(g.t, u.t)), ref.siluMul(g.v, u.v), dtype, {
        extraRtol: 2e-6,
      });
    });

    test.each([
      [1, 1],
      [3, 17],
      [2, 1100],
    ])('rmsNorm rows=%i cols=%i, with and without weight, in place', async (rows, cols) => {
      const x = input(rt, dtype, [rows, cols], rows * cols + 5);
      const w = randn(cols, 3);
      const tol = { extraRtol: 1e-6 * Math.log2(cols + 1) };
      const got = await values(
        ops.rmsNorm(x.t, { weight: rt.tensor(Float32Array.from(w), [cols]), eps: 1e-5 }),
      );
      expectClose(got, ref.rmsNorm(x.v, cols, 1e-5, Float32Array.from(w)), dtype, tol);
      ops.rmsNorm(x.t, { out: x.t, eps: 1e-6 });
      expectClose(await values(x.t), ref.rmsNorm(x.v, cols, 1e-6), dtype, tol);
    });

    test.each([
      [1, 1],
      [5, 33],
      [3, 1000],
      [2, 1500],
    ])('softmax rows=%i cols=%i (warp-per-row and block-per-row kernels)', async (rows, cols) => {
      const x = input(rt, dtype, [rows, cols], rows + 7 * cols, 30);
      const got = await values(ops.softmax(x.t, { scale: 0.7 }));
      expectClose(got, ref.softmax(x.v, cols, 0.7), dtype, {
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
      [80, 48, false],
      [128, 96, true],
    ])('rope headDim=%i rotaryDim=%i neox=%s', async (hd, rot, neox) => {
      const tokens = 4;
      const heads = 3;
      const x = input(rt, dtype, [tokens, heads, hd], hd + rot);
      const pos = Int32Array.from([0, 1, 100, 4095]);
      const opts = { rotaryDim: rot, freqBase: 10000, freqScale: 0.5, neox };
      ops.rope(x.t, rt.tensor(pos, [tokens]), opts);
      const r = ref.rope(x.v, tokens, heads, hd, pos, opts);
      const absX = Float64Array.from(x.v, (v, i) => M_abs(v) + M_abs(x.v[i ^ 1] ?? 0));
      const got = await values(x.t);
      expectClose(got, r, dtype, { absRef: absX, k: 8192 });
      // Dims past rotaryDim are untouched.
      for (let t = 0; t < tokens * heads; t++)
        for (let d = rot; d < hd; d++) expect(got[t * hd + d]).toBe(x.v[t * hd + d]);
    });

    test('embedding gathers rows and converts dtype (bit-exact across backends); a bad id fails the op', async () => {
      const vocab = 37;
      const dim = 19;
      const table = input(rt, dtype, [vocab, dim], 99);
      const ids = Int32Array.from([0, 36, 5, 5, 17]);
      for (const outDtype of FLOATS) {
        const out = ops.embedding(table.t, rt.tensor(ids, [5]), { outDtype });
        const got = await values(out);
        expectClose(got, ref.embedding(table.v, dim, ids), outDtype);
        await crossCheck(`emb-${dtype}-${outDtype}`, name, got, true);
      }
      const bad = ops.embedding(table.t, rt.tensor(Int32Array.from([3, 37, -1]), [3]));
      await expect(bad.read()).rejects.toMatchObject({
        code: 'E_INVALID_ARG',
        arg: 'ids',
        backend,
      });
      rt.defaultStream.reset();
      // The stream works again, and the table was not touched.
      expectClose(await values(table.t), table.v, dtype);
    });

    test('cast to the same dtype (a device copy) and write/read round trip', async () => {
      const x = input(rt, dtype, [3, 45], 7);
      const y = rt.empty([135], dtype);
      ops.cast(x.t, dtype, { out: y });
      expect(Array.from(await values(y))).toEqual(Array.from(x.v));
      const z = encode(dtype, randn(135, 8));
      y.write(z);
      expect(Array.from(await values(y))).toEqual(Array.from(decode(dtype, z)));
    });
  });

  test('bad input: wrong dtypes, mixed backends and unsupported ops are typed errors', async () => {
    const x = rt.tensor(Float32Array.from([1, 2, 3, 4]), [2, 2]);
    const other = await loadRuntime({ backend: device ? 'cpu' : 'cuda-emu', threads: 1 }).catch(
      () => undefined,
    );
    if (other) {
      const y = other.tensor(Float32Array.from([1, 2, 3, 4]), [2, 2]);
      const e = expectKernelError(() => ops.add(x, y), 'E_BACKEND', 'b');
      expect(e.backend).toBe(backend);
      other.dispose();
    }
    if (device) {
      const e = expectKernelError(() => ops.matmul(x, x), 'E_DTYPE', 'a');
      expect(e.backend).toBe(backend);
      const h = rt.tensor(Uint16Array.from([0x3c00, 0, 0, 0x3c00]), [2, 2], { dtype: 'f16' });
      expectKernelError(() => ops.matmul(h, h, { transB: false }), 'E_UNSUPPORTED', 'transB');
      expectKernelError(() => ops.cast(x, 'f16'), 'E_UNSUPPORTED', 'dst');
      const q = expectKernelError(
        () => ops.quantize(rt.zeros([2, 32], 'f32'), { kind: 'int8' }),
        'E_UNSUPPORTED',
        /not implemented on backend/,
      );
      expect(q.backend).toBe(backend);
    }
  });

  if (backend !== 'cpu') {
    test('a launch beyond the shared-memory limit is refused before launch, and the stream recovers', async () => {
      // rope keeps one cos/sin table of rotaryDim floats in shared memory: 16384 dims need
      // 64 KiB, beyond the 48 KiB a kernel gets without opting in.
      const x = rt.zeros([1, 1, 16384], 'f32');
      ops.rope(x, rt.tensor(Int32Array.from([3]), [1]));
      const err: KernelError = await rt.synchronize().then(
        () => {
          throw new Error('expected the launch to be refused');
        },
        (e) => e,
      );
      expect(err).toBeInstanceOf(KernelError);
      expect(err.code).toBe('E_UNSUPPORTED');
      expect(err.backend).toBe(backend);
      expect(err.message).toMatch(/shared memory/);
      rt.defaultStream.reset();
      const ok = ops.add(
        rt.tensor(Float32Array.from([1, 2]), [2]),
        rt.tensor(Float32Array.from([3, 4]), [2]),
      );
      expect(Array.from(await ok.read())).toEqual([4, 6]);
    });
  }

  if (backend === 'cuda-emu') {
    test.each([
      ['barrier', /threads exited while others wait at a barrier/],
      ['shuffle', /warp collective|deadlock at a warp collective/],
      ['cp-async', /before its cp\.async landed/],
    ])('a kernel with a broken %s is caught, and the stream recovers', async (kind, pattern) => {
      binding().emuSelftest(rt.defaultStream.native, kind);
      const err: KernelError = await rt.synchronize().then(
        () => {
          throw new Error(`the broken ${kind} kernel was not caught`);
        },
        (e) => e,
      );
      expect(err).toBeInstanceOf(KernelError);
      expect(err.code).toBe('E_INTERNAL');
      expect(err.backend).toBe('cuda-emu');
      expect(err.message).toMatch(pattern);
      rt.defaultStream.reset();
      // The same kernel with its cp.async wait passes, and ordinary work runs on.
      binding().emuSelftest(rt.defaultStream.native, 'cp-async-ok');
      await rt.synchronize();
      const ok = ops.mul(
        rt.tensor(Float32Array.from([2, 3]), [2]),
        rt.tensor(Float32Array.from([4, 5]), [2]),
      );
      expect(Array.from(await ok.read())).toEqual([8, 15]);
    });
  }
});

test('loadRuntime: device options are checked, and cuda without a device says why', async () => {
  await expect(
    loadRuntime({ backend: 'cuda-emu', schedule: 'sideways' as never }),
  ).rejects.toMatchObject({
    code: 'E_INVALID_ARG',
    arg: 'schedule',
  });
  await expect(loadRuntime({ backend: 'cpu', schedule: 'forward' })).rejects.toMatchObject({
    code: 'E_INVALID_ARG',
    arg: 'schedule',
  });
  await expect(loadRuntime({ backend: 'cpu', device: 0 })).rejects.toMatchObject({
    code: 'E_INVALID_ARG',
    arg: 'device',
  });
  if (!cases.some((c) => c.backend === 'cuda')) {
    await expect(loadRuntime({ backend: 'cuda' })).rejects.toMatchObject({
      code: 'E_BACKEND',
      backend: 'cuda',
      message: expect.stringMatching(/not usable: .{10,}/),
    });
  }
});
