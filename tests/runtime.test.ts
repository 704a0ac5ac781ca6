/** The stream model: enqueue-and-return, ordering, poisoning and reset, dispose, zero-copy, workers. */
import { Worker } from 'node:worker_threads';
import * as path from 'node:path';
import { KernelError } from '../lib/runtime/errors';
import { loadRuntime, Runtime } from '../lib/runtime/runtime';
import * as ops from '../lib/ops/index';

let rt: Runtime;

beforeAll(async () => {
  rt = await loadRuntime({ threads: 2 });
});
afterAll(() => rt.dispose());

test('ops return before the work is done and results arrive in stream order', async () => {
  const n = 512;
  const a = rt.tensor(new Float32Array(n * n).fill(1), [n, n]);
  const t0 = process.hrtime.bigint();
  let c = a;
  for (let i = 0; i < 8; i++) c = ops.matmul(c, a); // 8 × 512³ MACs queued
  const enqueueMs = Number(process.hrtime.bigint() - t0) / 1e6;
  expect(rt.defaultStream.pending).toBeGreaterThan(0); // still running: enqueue did not block
  const stamp = await rt.defaultStream.timestamp();
  expect(stamp).toBeGreaterThan(0);
  const v = (await c.read()) as Float32Array;
  // 1·512^k grows fast; check one element exactly: all-ones matrix power = 512^8
  expect(v[0]).toBe(512 ** 8);
  expect(enqueueMs).toBeLessThan(1000);
});

test('the event loop keeps running while kernels execute', async () => {
  const n = 768;
  const a = rt.tensor(new Float32Array(n * n).fill(0.001), [n, n]);
  let ticks = 0;
  const timer = setInterval(() => ticks++, 1);
  let c = a;
  for (let i = 0; i < 6; i++) c = ops.matmul(c, a);
  await c.read();
  clearInterval(timer);
  expect(ticks).toBeGreaterThan(0);
});

test('a kernel failure poisons the stream with a KernelError; reset() recovers', async () => {
  const s = rt.createStream();
  const table = rt.tensor(new Float32Array(4 * 2), [4, 2]);
  const ids = rt.tensor(Int32Array.from([1, 2]), [2]);
  const out = ops.embedding(table, ids, { stream: s });
  // Corrupt the ids in stream order: only the kernel can see the bad id.
  ids.write(Int32Array.from([1, 99]), s);
  ops.embedding(table, ids, { stream: s, out });
  const err = await s.synchronize().catch((e) => e);
  expect(err).toBeInstanceOf(KernelError);
  expect(err.code).toBe('E_INVALID_ARG');
  expect(err.op).toBe('embedding');
  expect(err.arg).toBe('ids');
  // Still poisoned: later completions report the same error.
  await expect(out.read(s)).rejects.toMatchObject({ code: 'E_INVALID_ARG' });
  s.reset();
  ids.write(Int32Array.from([3, 0]), s);
  ops.embedding(table, ids, { stream: s, out });
  await expect(s.synchronize()).resolves.toBeUndefined();
  s.dispose();
});

test('streams are independent: a poisoned stream does not affect another', async () => {
  const s1 = rt.createStream();
  const s2 = rt.createStream();
  const table = rt.tensor(new Float32Array(8), [4, 2]);
  const ids = rt.tensor(Int32Array.from([0]), [1]);
  ids.write(Int32Array.from([9]), s1);
  ops.embedding(table, ids, { stream: s1 });
  const x = rt.tensor(Float32Array.from([1, 2, 3]), [3]);
  const y = ops.add(x, x, { stream: s2 });
  expect(Array.from((await y.read(s2)) as Float32Array)).toEqual([2, 4, 6]);
  await expect(s1.synchronize()).rejects.toBeInstanceOf(KernelError);
  s1.dispose();
  s2.dispose();
});

test('dispose: idempotent, E_DISPOSED afterwards, and queued work still completes', async () => {
  const a = rt.tensor(Float32Array.from([1, 2, 3, 4]), [2, 2]);
  const c = ops.matmul(a, a);
  a.dispose(); // queued matmul holds its own reference
  a.dispose();
  expect(a.disposed).toBe(true);
  expect(Array.from((await c.read()) as Float32Array)).toEqual([5, 11, 11, 25]);
  expect(() => ops.matmul(a, a)).toThrow(expect.objectContaining({ code: 'E_DISPOSED', arg: 'a' }));
  await expect(a.read()).rejects.toMatchObject({ code: 'E_DISPOSED' });
  const s = rt.createStream();
  s.dispose();
  s.dispose();
  expect(() => ops.add(c, c, { stream: s })).toThrow(
    expect.objectContaining({ code: 'E_DISPOSED' }),
  );
});

test('Symbol.dispose works with `using`-style cleanup', async () => {
  const sym = (Symbol as unknown as { dispose: symbol }).dispose ?? Symbol.for('nodejs.dispose');
  const t = rt.tensor(Float32Array.from([1]), [1]);
  (t as unknown as Record<symbol, () => void>)[sym]();
  expect(t.disposed).toBe(true);
});

test('zero-copy tensors alias the TypedArray; copies do not', async () => {
  const data = Float32Array.from([1, 2, 3, 4]);
  const z = rt.tensor(data, [4], { zeroCopy: true });
  const c = rt.tensor(data, [4]);
  expect(z.isZeroCopy).toBe(true);
  expect(c.isZeroCopy).toBe(false);
  ops.add(z, z, { out: z }); // writes through to `data`
  await rt.synchronize();
  expect(Array.from(data)).toEqual([2, 4, 6, 8]);
  expect(Array.from((await c.read()) as Float32Array)).toEqual([1, 2, 3, 4]);
  z.dispose();
  // A view into the middle of a larger buffer
  const big = new Float32Array(10).fill(1);
  const view = new Float32Array(big.buffer, 8, 4);
  const v = rt.tensor(view, [4], { zeroCopy: true });
  ops.add(v, v, { out: v });
  await rt.synchronize();
  expect(Array.from(big)).toEqual([1, 1, 2, 2, 2, 2, 1, 1, 1, 1]);
});

test('tensors created and disposed in a loop do not leak native memory', async () => {
  const round = async () => {
    for (let i = 0; i < 8; i++) {
      const t = rt.empty([1024, 1024]); // 4 MiB
      ops.add(t, t, { out: t });
      t.dispose();
    }
    await rt.synchronize();
  };
  for (let r = 0; r < 5; r++) await round(); // warm the allocator
  const before = process.memoryUsage().rss;
  for (let r = 0; r < 40; r++) await round(); // 1.25 GiB allocated in total
  const grown = (process.memoryUsage().rss - before) / 2 ** 20;
  expect(grown).toBeLessThan(64);
});

test('works inside worker_threads, concurrently with the main thread', async () => {
  const script = `
    require('tsx/cjs');
    const { parentPort } = require('node:worker_threads');
    const { loadRuntime, ops } = require(${JSON.stringify(path.join(__dirname, '..', 'lib', 'index.ts'))});
    (async () => {
      const rt = await loadRuntime({ threads: 1 });
      const a = rt.tensor(Float32Array.from([1, 2, 3, 4]), [2, 2]);
      const c = ops.matmul(a, a);
      parentPort.postMessage(Array.from(await c.read()));
      rt.dispose();
    })().catch((e) => parentPort.postMessage(String(e)));`;
  const results = await Promise.all(
    [0, 1].map(
      () =>
        new Promise((resolve, reject) => {
          const w = new Worker(script, { eval: true });
          w.once('message', (m) => {
            resolve(m);
            void w.terminate();
          });
          w.once('error', reject);
        }),
    ),
  );
  const local = ops.matmul(
    rt.tensor(Float32Array.from([1, 2, 3, 4]), [2, 2]),
    rt.tensor(Float32Array.from([1, 2, 3, 4]), [2, 2]),
  );
  expect(Array.from((await local.read()) as Float32Array)).toEqual([5, 11, 11, 25]);
  for (const r of results) expect(r).toEqual([5, 11, 11, 25]);
});

test('runtime dispose: later use raises E_DISPOSED, queued work still finishes', async () => {
  const r2 = await loadRuntime({ threads: 2 });
  const a = r2.tensor(Float32Array.from([1, 2]), [1, 2]);
  const b = ops.add(a, a);
  const p = b.read();
  r2.dispose();
  expect(Array.from((await p) as Float32Array)).toEqual([2, 4]);
  expect(() => r2.empty([2])).toThrow(expect.objectContaining({ code: 'E_DISPOSED' }));
});
