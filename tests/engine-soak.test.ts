/**
 * Engine soak on a real (tiny, generated) model: a few hundred concurrent requests over a KV
 * pool small enough to force preemption, with random priorities, aborts at random times and
 * consumers leaving early. Every promise must settle, every block must come back, and the
 * requests that finished must produce what they produce alone. Plus draft-model speculation
 * with the model itself as the draft (acceptance must be ~1 and greedy outputs unchanged).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createEngine, Engine, EngineRequest } from '../lib/engine/engine';
import { loadModel, Model } from '../lib/model/model';
import { writeSyntheticModel } from '../lib/model/synthetic';
import { KernelError } from '../lib/runtime/errors';
import { collect, randomTokens, rng } from './engine-helpers';

const V = 320; // the synthetic SPM vocabulary needs >= 267 entries
const file = path.join(os.tmpdir(), `tachyon-engine-soak-${process.pid}.gguf`);
let model: Model;

beforeAll(async () => {
  await writeSyntheticModel(file, {
    dim: 64,
    layers: 2,
    heads: 4,
    ffn: 128,
    vocab: V,
    type: 'F32',
    seed: 11,
  });
  model = await loadModel(file, { threads: 2 });
});

afterAll(async () => {
  await model?.dispose();
  fs.rmSync(file, { force: true });
});

function expectNoLeak(engine: Engine): void {
  const kv = engine.blocks.stats();
  expect(kv.usedBlocks).toBe(0);
  expect(kv.numSequences).toBe(0);
  engine.blocks.checkInvariants();
  const st = engine.stats();
  expect(st.running + st.waiting).toBe(0);
}

interface Job {
  req: EngineRequest;
  kind: 'normal' | 'abort' | 'leave';
}

test('soak: hundreds of concurrent requests, preemption, aborts, early exits', async () => {
  const engine = await createEngine(model, { kvBlocks: 24, maxBatchTokens: 64 });
  const r = rng(2024);
  const N = 300;
  const jobs: Job[] = [];
  for (let i = 0; i < N; i++) {
    const u = r();
    const req: EngineRequest = {
      prompt: randomTokens(r, 1 + ((r() * 60) | 0), V),
      maxTokens: 1 + ((r() * 20) | 0),
      priority: (r() * 4) | 0,
      ignoreEos: r() < 0.7,
      ...(r() < 0.25 ? { temperature: 1, seed: 500 + i } : { temperature: 0 }),
    };
    jobs.push({ req, kind: u < 0.3 ? 'abort' : u < 0.4 ? 'leave' : 'normal' });
  }
  let maxRows = 0;
  engine.on('step', (s: { rows: number }) => (maxRows = Math.max(maxRows, s.rows)));
  const abortAt: { step: number; ac: AbortController }[] = [];
  engine.on('step', (s: { step: number }) => {
    for (const a of abortAt) if (a.step === s.step) a.ac.abort();
  });
  const t0 = Date.now();
  const runs = jobs.map(async (j, i) => {
    const ac = new AbortController();
    // Aborts spread over the run: half at a random step (between steps, so they hit requests
    // waiting, prefilling or decoding whatever the machine's speed), half on a timer (mostly
    // while a step is running).
    if (j.kind === 'abort') {
      if (i % 2 === 0) abortAt.push({ step: (r() * 200) | 0, ac });
      else setTimeout(() => ac.abort(), (r() * 300) | 0);
    }
    const leaveAt = j.kind === 'leave' ? 1 + (i % 5) : Infinity;
    const s = engine.generate(j.req, { signal: ac.signal });
    const tokens: number[] = [];
    let finish: string | undefined;
    for await (const c of s) {
      tokens.push(c.token);
      finish = c.finishReason;
      if (tokens.length >= leaveAt) break;
    }
    return { tokens, finish, status: s.metrics().status };
  });
  const settled = await Promise.allSettled(runs);
  const ms = Date.now() - t0;
  expect(settled).toHaveLength(N);
  let rejected = 0;
  let completed = 0;
  const done: { i: number; tokens: number[] }[] = [];
  settled.forEach((s, i) => {
    if (s.status === 'rejected') {
      rejected++;
      expect(jobs[i].kind).toBe('abort');
      expect(s.reason).toBeInstanceOf(KernelError);
      expect((s.reason as KernelError).code).toBe('E_ABORTED');
      return;
    }
    const v = s.value;
    if (v.status === 'finished') {
      completed++;
      expect(v.finish).toBeDefined();
      if (jobs[i].req.ignoreEos) expect(v.tokens).toHaveLength(jobs[i].req.maxTokens!);
      done.push({ i, tokens: v.tokens });
    } else expect(v.status).toBe('aborted'); // left the loop early
  });
  const stats = engine.stats();
  process.stderr.write(
    `[engine soak] ${N} requests in ${ms} ms: ${completed} completed, ${rejected} aborted, ` +
      `${stats.steps} steps, ${stats.preemptions} preemptions, prefix hit ${stats.kv.prefixHitTokens} tokens\n`,
  );
  expect(rejected).toBeGreaterThan(20);
  expect(completed).toBeGreaterThan(100);
  expect(stats.preemptions).toBeGreaterThan(0);
  expect(maxRows).toBeLessThanOrEqual(64);
  expectNoLeak(engine);
  await engine.dispose();

  // A sample of the completed requests, each alone on a fresh engine: the same tokens
  // (greedy and seeded sampling alike: a request's tokens never depend on its batch).
  const sample = done.filter((_, k) => k % Math.ceil(done.length / 16) === 0);
  expect(sample.some((d) => jobs[d.i].req.temperature === 0)).toBe(true);
  const solo = await createEngine(model, { kvBlocks: 64, maxBatchTokens: 64 });
  for (const d of sample) {
    const alone = (await collect(solo.generate(jobs[d.i].req))).tokens;
    expect({ i: d.i, tokens: alone }).toEqual({ i: d.i, tokens: d.tokens });
  }
  // And the engine agrees with Model.generate (its own KV pool and step loop) on a few.
  for (const d of sample.slice(0, 4)) {
    const { prompt, ...opts } = jobs[d.i].req;
    const ref: number[] = [];
    for await (const c of model.generate(prompt, opts)) ref.push(c.token);
    expect(ref).toEqual(d.tokens);
  }
  expectNoLeak(solo);
  await solo.dispose();
});

test('draft-model speculation with the model itself as the draft', async () => {
  const draft = await loadModel(file, { threads: 2 });
  try {
    const r = rng(7);
    const reqs = Array.from({ length: 6 }, () => ({
      prompt: randomTokens(r, 2 + ((r() * 30) | 0), V),
      maxTokens: 24,
      ignoreEos: true,
      temperature: 0,
    }));
    const plainEngine = await createEngine(model, { kvBlocks: 64, maxBatchTokens: 64 });
    const plain = await Promise.all(reqs.map((q) => collect(plainEngine.generate(q))));
    expectNoLeak(plainEngine);
    await plainEngine.dispose();

    const engine = await createEngine(model, {
      kvBlocks: 64,
      maxBatchTokens: 64,
      speculative: { method: 'draft', model: draft, numTokens: 4 },
    });
    const spec = await Promise.all(reqs.map((q) => collect(engine.generate(q))));
    spec.forEach((o, i) => expect(o.tokens).toEqual(plain[i].tokens));
    let s = engine.stats().speculative;
    expect(s.method).toBe('draft');
    expect(s.proposedTokens).toBeGreaterThan(50);
    expect(s.acceptanceRate).toBeGreaterThan(0.95);
    expect(s.tokensPerStep).toBeGreaterThan(3);
    // Sampled: p = q, so min(1, p/q) ~ 1 and nearly every draft is accepted.
    const sampled = await Promise.all(
      reqs.map((q, i) => collect(engine.generate({ ...q, temperature: 1, seed: i }))),
    );
    sampled.forEach((o) => expect(o.tokens).toHaveLength(24));
    const before = s;
    s = engine.stats().speculative;
    expect(
      (s.acceptedTokens - before.acceptedTokens) / (s.proposedTokens - before.proposedTokens),
    ).toBeGreaterThan(0.9);
    expectNoLeak(engine);
    await engine.dispose();

    // Under preemption and aborts: greedy outputs still unchanged, no block leaks anywhere.
    const crowd = await createEngine(model, {
      kvBlocks: 10,
      maxBatchTokens: 32,
      speculative: { method: 'draft', model: draft, numTokens: 3 },
    });
    const draftErrors: unknown[] = [];
    crowd.on('draftError', (e) => draftErrors.push(e));
    const many = Array.from({ length: 24 }, (_, i) => reqs[i % reqs.length]);
    const res = await Promise.allSettled(
      many.map((q, i) => {
        const ac = new AbortController();
        if (i % 4 === 3) setTimeout(() => ac.abort(), 20 + i * 10);
        return collect(crowd.generate(q, { signal: ac.signal }));
      }),
    );
    let ok = 0;
    res.forEach((x, i) => {
      if (x.status === 'rejected') expect(x.reason).toMatchObject({ code: 'E_ABORTED' });
      else {
        ok++;
        expect(x.value.tokens).toEqual(plain[i % reqs.length].tokens);
      }
    });
    expect(ok).toBeGreaterThanOrEqual(18);
    expect(ok).toBeLessThan(24);
    expect(draftErrors).toEqual([]);
    expect(crowd.stats().preemptions).toBeGreaterThan(0);
    expect(crowd.stats().speculative.acceptanceRate).toBeGreaterThan(0.9);
    expectNoLeak(crowd);
    // The draft's own pool (private; read here only to check that nothing leaks there either).
    const draftBlocks = (crowd as unknown as { draft: { blocks: Engine['blocks'] } }).draft.blocks;
    expect(draftBlocks.stats().numSequences).toBe(0);
    draftBlocks.checkInvariants();
    await crowd.dispose();
  } finally {
    await draft.dispose();
  }
});
