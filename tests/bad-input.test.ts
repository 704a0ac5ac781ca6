/**
 * Every native entry point fed wrong types, wrong shapes, NaN/Infinity, negative and huge
 * sizes, and disposed objects: each must raise a KernelError with a stable code, naming
 * the argument, and never crash. The raw binding is called directly too, because native
 * code must not trust the TypeScript layer.
 */
import { binding, loadRuntime, Runtime } from '../lib/runtime/runtime';
import * as ops from '../lib/ops/index';
import { expectKernelError } from './helpers';
import { doctor } from '../lib/runtime/doctor';

let rt: Runtime;
beforeAll(async () => {
  rt = await loadRuntime({ threads: 2 });
});
afterAll(() => rt.dispose());

const f32 = (shape: number[]) => rt.empty(shape, 'f32');

test('loadRuntime options', async () => {
  await expect(loadRuntime({ threads: 0 })).rejects.toMatchObject({
    code: 'E_INVALID_ARG',
    arg: 'threads',
  });
  await expect(loadRuntime({ threads: NaN })).rejects.toMatchObject({ code: 'E_INVALID_ARG' });
  await expect(loadRuntime({ threads: 1e9 })).rejects.toMatchObject({ code: 'E_INVALID_ARG' });
  await expect(loadRuntime({ backend: 'tpu' as never })).rejects.toMatchObject({
    code: 'E_INVALID_ARG',
    arg: 'backend',
  });
  // Without a usable GPU, cuda is refused with the reason (backend-parity.test.ts covers it too).
  if (!doctor().backends.find((x) => x.name === 'cuda')?.usable)
    await expect(loadRuntime({ backend: 'cuda' })).rejects.toMatchObject({
      code: 'E_BACKEND',
      backend: 'cuda',
    });
  await expect(loadRuntime({ isa: 'sse9' as never })).rejects.toMatchObject({
    code: 'E_INVALID_ARG',
    arg: 'isa',
  });
  const b = binding();
  expect(() => new b.Runtime(-1, 'scalar')).toThrow(
    expect.objectContaining({ code: 'E_INVALID_ARG', arg: 'threads' }),
  );
  expect(() => new b.Runtime(2, 42)).toThrow(
    expect.objectContaining({ code: 'E_INVALID_ARG', arg: 'isa' }),
  );
});

test('tensor creation: dtypes, shapes, data', () => {
  expectKernelError(() => rt.empty([2, -1]), 'E_SHAPE', 'shape');
  expectKernelError(() => rt.empty([2, 1.5]), 'E_SHAPE', 'shape');
  expectKernelError(() => rt.empty([NaN]), 'E_SHAPE', 'shape');
  expectKernelError(() => rt.empty([Infinity]), 'E_SHAPE', 'shape');
  expectKernelError(() => rt.empty([2 ** 40, 2 ** 40]), 'E_OOM');
  expectKernelError(() => rt.empty([2 ** 39]), 'E_OOM'); // 2 TiB of f32
  expectKernelError(() => rt.empty([1, 2, 3, 4, 5, 6, 7, 8, 9]), 'E_SHAPE');
  expectKernelError(() => rt.empty([3], 'int4'), 'E_SHAPE');
  expectKernelError(() => rt.empty([3], 'f64' as never), 'E_DTYPE');
  expectKernelError(() => rt.tensor(new Float32Array(3), [4]), 'E_SHAPE', 'data');
  expectKernelError(() => rt.tensor(new Float64Array(3), [3]), 'E_DTYPE');
  expectKernelError(
    () => rt.tensor([1, 2, 3] as never, [3], { dtype: 'f32' }),
    'E_INVALID_ARG',
    'data',
  );
  const b = binding();
  expect(() => new b.Tensor({}, 'f32', [1])).toThrow(
    expect.objectContaining({ code: 'E_INVALID_ARG', arg: 'runtime' }),
  );
  expect(() => new b.Tensor(rt.native, 'f32', 'nope')).toThrow(
    expect.objectContaining({ code: 'E_SHAPE', arg: 'shape' }),
  );
  expect(() => new b.Tensor(rt.native, 'f32', [2], 'data')).toThrow(
    expect.objectContaining({ code: 'E_INVALID_ARG', arg: 'data' }),
  );
});

test('matmul', () => {
  const a = f32([4, 8]);
  const b = f32([5, 8]);
  expectKernelError(() => ops.matmul(a, f32([5, 7])), 'E_SHAPE', 'b');
  expectKernelError(() => ops.matmul(a, b, { transB: false }), 'E_SHAPE', 'b');
  expectKernelError(() => ops.matmul(a, rt.empty([5, 8], 'f16')), 'E_DTYPE', 'b');
  expectKernelError(
    () => ops.matmul(rt.empty([4, 8], 'int8'), rt.empty([5, 8], 'int8')),
    'E_DTYPE',
    'a',
  );
  expectKernelError(() => ops.matmul(f32([8]), b), 'E_SHAPE', 'a');
  expectKernelError(() => ops.matmul(a, b, { out: f32([4, 4]) }), 'E_SHAPE', 'out');
  expectKernelError(() => ops.matmul(a, b, { bias: f32([4]) }), 'E_SHAPE', 'bias');
  expectKernelError(() => ops.matmul(a, b, { alpha: NaN }), 'E_INVALID_ARG', 'alpha');
  expectKernelError(() => ops.matmul(a, b, { beta: Infinity }), 'E_INVALID_ARG', 'beta');
  expectKernelError(() => ops.matmul(a, 3 as never), 'E_INVALID_ARG', 'b');
  const d = f32([5, 8]);
  d.dispose();
  expectKernelError(() => ops.matmul(a, d), 'E_DISPOSED', 'b');
  // raw binding: wrong argument kinds
  const B = binding();
  const s = rt.defaultStream.native;
  expect(() => B.matmul(s, a.native, b.native, null, f32([4, 5]).native, 'yes', 1, 0)).toThrow(
    expect.objectContaining({ code: 'E_INVALID_ARG', arg: 'transB' }),
  );
  expect(() => B.matmul({}, a.native, b.native, null, f32([4, 5]).native, true, 1, 0)).toThrow(
    expect.objectContaining({ code: 'E_INVALID_ARG', arg: 'stream' }),
  );
  expect(() => B.matmul(s, a.native, {}, null, f32([4, 5]).native, true, 1, 0)).toThrow(
    expect.objectContaining({ code: 'E_INVALID_ARG', arg: 'b' }),
  );
  expect(() => B.matmul(s, a.native, b.native, 7, f32([4, 5]).native, true, 1, 0)).toThrow(
    expect.objectContaining({ code: 'E_INVALID_ARG', arg: 'bias' }),
  );
});

test('elementwise, norm, softmax', () => {
  const x = f32([3, 4]);
  expectKernelError(() => ops.add(x, f32([3, 5])), 'E_SHAPE', 'b');
  expectKernelError(() => ops.add(x, f32([2])), 'E_SHAPE', 'b');
  expectKernelError(() => ops.mul(x, rt.empty([3, 4], 'bf16')), 'E_DTYPE', 'b');
  expectKernelError(() => ops.add(x, x, { out: f32([4, 3]) }), 'E_SHAPE', 'out');
  expectKernelError(() => ops.siluMul(x, f32([3, 3])), 'E_SHAPE', 'up');
  expectKernelError(
    () => ops.siluMul(rt.empty([3], 'i32'), rt.empty([3], 'i32')),
    'E_DTYPE',
    'gate',
  );
  expectKernelError(() => ops.rmsNorm(x, { eps: -1 }), 'E_INVALID_ARG', 'eps');
  expectKernelError(() => ops.rmsNorm(x, { eps: NaN }), 'E_INVALID_ARG', 'eps');
  expectKernelError(() => ops.rmsNorm(x, { weight: f32([3]) }), 'E_SHAPE', 'weight');
  expectKernelError(() => ops.rmsNorm(x, { weight: rt.empty([4], 'f16') }), 'E_DTYPE', 'weight');
  expectKernelError(() => ops.softmax(x, { scale: Infinity }), 'E_INVALID_ARG', 'scale');
  expectKernelError(() => ops.softmax(x, { out: rt.empty([3, 4], 'f16') }), 'E_DTYPE', 'out');
  expectKernelError(
    () => binding().binary(rt.defaultStream.native, 7, x.native, x.native, x.native),
    'E_INVALID_ARG',
    'op',
  );
});

test('rope and embedding', () => {
  const x = f32([2, 3, 8]);
  const pos = rt.tensor(Int32Array.from([0, 1]), [2]);
  expectKernelError(
    () => ops.rope(x, rt.tensor(Int32Array.from([0]), [1])),
    'E_SHAPE',
    'positions',
  );
  expectKernelError(
    () => ops.rope(x, rt.tensor(Float32Array.from([0, 1]), [2])),
    'E_DTYPE',
    'positions',
  );
  expectKernelError(() => ops.rope(x, pos, { rotaryDim: 7 }), 'E_INVALID_ARG', 'rotaryDim');
  expectKernelError(() => ops.rope(x, pos, { rotaryDim: 16 }), 'E_INVALID_ARG', 'rotaryDim');
  expectKernelError(() => ops.rope(x, pos, { freqBase: 0 }), 'E_INVALID_ARG', 'freqBase');
  expectKernelError(() => ops.rope(x, pos, { freqScale: NaN }), 'E_INVALID_ARG', 'freqScale');
  expectKernelError(() => ops.rope(f32([2, 8]), pos), 'E_SHAPE', 'x');
  const table = f32([10, 4]);
  expectKernelError(
    () => ops.embedding(table, rt.tensor(Float32Array.from([0]), [1])),
    'E_DTYPE',
    'ids',
  );
  expectKernelError(
    () => ops.embedding(f32([10]), rt.tensor(Int32Array.from([0]), [1])),
    'E_SHAPE',
    'table',
  );
});

test('out-of-range embedding ids are caught in the kernel, in stream order', async () => {
  const table = f32([10, 4]);
  for (const bad of [[0, 10], [-1]]) {
    const s = rt.createStream();
    ops.embedding(table, rt.tensor(Int32Array.from(bad), [bad.length]), { stream: s });
    await expect(s.synchronize()).rejects.toMatchObject({
      code: 'E_INVALID_ARG',
      arg: 'ids',
      op: 'embedding',
    });
    s.dispose();
  }
});

test('streams, reads and writes', async () => {
  const t = f32([4]);
  expectKernelError(() => t.write(new Float32Array(3)), 'E_SHAPE', 'data');
  expectKernelError(() => t.write('abc' as never), 'E_INVALID_ARG', 'data');
  await expect(t.read({ native: {} } as never)).rejects.toThrow();
  expect(() => t.native.read({})).toThrow(
    expect.objectContaining({ code: 'E_INVALID_ARG', arg: 'stream' }),
  );
  const B = binding();
  expect(() => new B.Stream({})).toThrow(
    expect.objectContaining({ code: 'E_INVALID_ARG', arg: 'runtime' }),
  );
  expect(() => B.probe(rt.defaultStream.native, 9, 1, null, rt.empty([16], 'u8').native)).toThrow(
    expect.objectContaining({ code: 'E_INVALID_ARG', arg: 'kind' }),
  );
  expect(() => B.probe(rt.defaultStream.native, 1, -5, null, rt.empty([16], 'u8').native)).toThrow(
    expect.objectContaining({ code: 'E_INVALID_ARG', arg: 'iters' }),
  );
  // After all of that the runtime still works.
  const y = ops.add(
    rt.tensor(Float32Array.from([1, 2]), [2]),
    rt.tensor(Float32Array.from([3, 4]), [2]),
  );
  expect(Array.from((await y.read()) as Float32Array)).toEqual([4, 6]);
});

test('error messages name the argument, the expectation and what was received', () => {
  const e = expectKernelError(() => ops.matmul(f32([4, 8]), f32([5, 7])), 'E_SHAPE', 'b');
  expect(e.message).toMatch(/Expected b\.shape\[1\] \(K\) to be 8 .* but received 7/);
  expect(e.op).toBe('matmul');
  expect(e.backend).toBe('cpu');
  const e2 = expectKernelError(() => rt.empty([2, -1]), 'E_SHAPE');
  expect(e2.message).toMatch(/Expected a non-negative integer for shape\[1\] but received -1/);
});
