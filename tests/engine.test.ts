/**
 * The serving engine (lib/engine) against a mock executor that is an honest oracle of the KV
 * contract (tests/engine-helpers.ts): every logits row is a function of the token history the
 * mock reads back from its simulated KV through the page table, so any scheduling, paging,
 * prefix-cache or preemption bug changes the generated tokens, which are compared with a
 * sequential reference. Also: the speculative acceptance rule, statistically.
 */
import { Engine, EngineRequest, StepInfo } from '../lib/engine/engine';
import { acceptDraft, drawResidual, proposeNgram } from '../lib/engine/speculative';
import { KernelError } from '../lib/runtime/errors';
import { SamplingDistribution } from '../lib/model/sampler';
import {
  collect,
  CTX,
  MockExecutor,
  MockExecutorOptions,
  mockEngine,
  randomTokens,
  referenceGreedy,
  rng,
} from './engine-helpers';

const V = 64;

const budgets = new WeakMap<Engine, { steps: StepInfo[]; budget: number }>();

/** Records every step; expectClean checks the batch budget on each. */
function watch(engine: Engine, budget: number): StepInfo[] {
  const steps: StepInfo[] = [];
  // Record, do not throw: a throwing listener would throw inside the engine's loop.
  engine.on('step', (s: StepInfo) => steps.push(s));
  budgets.set(engine, { steps, budget });
  return steps;
}

/** The end-of-test checks: no leaked block, consistent manager, honest KV traffic. */
function expectClean(engine: Engine, executor: MockExecutor): void {
  const kv = engine.blocks.stats();
  expect(kv.usedBlocks).toBe(0);
  expect(kv.numSequences).toBe(0);
  expect(() => engine.blocks.checkInvariants()).not.toThrow();
  expect(executor.violations).toEqual([]);
  const w = budgets.get(engine);
  if (w) {
    expect(w.steps.length).toBe(engine.stats().steps);
    const over = w.steps.filter((s) => s.rows > w.budget || s.rows < 1);
    expect(over).toEqual([]);
  }
  const st = engine.stats();
  expect(st.waiting).toBe(0);
  expect(st.running).toBe(0);
}

async function expectCode(p: Promise<unknown>, code: string): Promise<void> {
  await expect(p).rejects.toBeInstanceOf(KernelError);
  await expect(p).rejects.toMatchObject({ code });
}

function expectThrowCode(f: () => unknown, code: string, arg?: string): void {
  let err: unknown;
  try {
    f();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(KernelError);
  expect((err as KernelError).code).toBe(code);
  if (arg !== undefined) expect((err as KernelError).arg).toBe(arg);
}

describe('mock executor oracle', () => {
  test('a corrupted page table changes the output (the oracle can fail)', async () => {
    // Swap two physical blocks in every table of one request's second step onward: the rows
    // then read the wrong tokens back and the greedy output departs from the reference.
    const prompt = randomTokens(rng(1), 23, V);
    const { engine, executor } = mockEngine({
      onExecute: (input, step) => {
        const t = input.table;
        if (step >= 1 && t.indptr[1] - t.indptr[0] >= 3) {
          const a = t.indices[0];
          t.indices[0] = t.indices[1];
          t.indices[1] = a;
        }
      },
    });
    const got = (await collect(engine.generate({ prompt, maxTokens: 12, temperature: 0 }))).tokens;
    expect(got).not.toEqual(referenceGreedy('hash', V, prompt, 12));
    expect(executor.violations.length).toBeGreaterThan(0);
    await engine.dispose();
  });
});

describe('scheduling', () => {
  test('greedy outputs equal the sequential reference; every step within budget', async () => {
    const r = rng(2);
    for (const kind of ['hash', 'bigram'] as const) {
      const { engine, executor } = mockEngine({ kind }, { maxBatchTokens: 24 });
      const steps = watch(engine, 24);
      const reqs = Array.from({ length: 12 }, () => ({
        prompt: randomTokens(r, 1 + ((r() * 50) | 0), V),
        maxTokens: 1 + ((r() * 25) | 0),
      }));
      const outs = await Promise.all(
        reqs.map((q) => collect(engine.generate({ ...q, temperature: 0 }))),
      );
      outs.forEach((o, i) => {
        expect(o.tokens).toEqual(referenceGreedy(kind, V, reqs[i].prompt, reqs[i].maxTokens));
        expect(o.chunks[o.chunks.length - 1].finishReason).toBe('length');
        expect(o.chunks.slice(0, -1).every((c) => c.finishReason === undefined)).toBe(true);
      });
      expect(steps.length).toBeGreaterThan(1);
      expect(steps.some((s) => s.rows === 24)).toBe(true); // the budget was actually binding
      const st = engine.stats();
      expect(st.generatedTokens).toBe(reqs.reduce((a, q) => a + q.maxTokens, 0));
      expect(st.promptTokensComputed).toBeGreaterThanOrEqual(
        reqs.reduce((a, q) => a + q.prompt.length, 0) - st.kv.prefixHitTokens,
      );
      expectClean(engine, executor);
      await engine.dispose();
    }
  });

  test('a long chunked prefill never stalls the running decoders', async () => {
    const budget = 16;
    const { engine, executor } = mockEngine({}, { maxBatchTokens: budget });
    const steps = watch(engine, budget);
    const r = rng(3);
    const decPrompts = [0, 1, 2].map(() => randomTokens(r, 4, V));
    const counts = [0, 0, 0];
    const streams = decPrompts.map((prompt) =>
      engine.generate({ prompt, maxTokens: 60, temperature: 0 }),
    );
    // Wait until every decoder has its first token, then send a 200-token prompt.
    const firsts = await Promise.all(streams.map((s) => s.next()));
    firsts.forEach((f, i) => {
      expect(f.done).toBe(false);
      counts[i]++;
    });
    const decDone = streams.map(async (s, i) => {
      const toks = [firsts[i].value.token as number];
      for await (const c of s) {
        toks.push(c.token);
        counts[i]++;
      }
      return toks;
    });
    const longPrompt = randomTokens(r, 200, V);
    const stepAtArrival = steps.length;
    const countsAtArrival = counts.slice();
    const long = engine.generate({ prompt: longPrompt, maxTokens: 3, temperature: 0 });
    const first = await long.next();
    const prefillSteps = steps.slice(stepAtArrival);
    const countsAtFirst = counts.slice();
    // The prompt took several chunks; every one of those steps also decoded all 3 requests.
    expect(prefillSteps.length).toBeGreaterThanOrEqual(Math.ceil(200 / (budget - 3)));
    for (const s of prefillSteps) {
      expect(s.decodes).toBe(3);
      expect(s.rows).toBeLessThanOrEqual(budget);
    }
    // And each decoder got a token per step in between (the last step's may still be queued).
    for (let i = 0; i < 3; i++)
      expect(countsAtFirst[i] - countsAtArrival[i]).toBeGreaterThanOrEqual(prefillSteps.length - 1);
    const rest = (await collect(long)).tokens;
    expect([first.value.token, ...rest]).toEqual(referenceGreedy('hash', V, longPrompt, 3));
    const dec = await Promise.all(decDone);
    dec.forEach((t, i) => expect(t).toEqual(referenceGreedy('hash', V, decPrompts[i], 60)));
    expectClean(engine, executor);
    await engine.dispose();
  });

  test('preemption under a tiny pool: same tokens as the reference, nothing leaks', async () => {
    const r = rng(4);
    // 12 blocks of 4 tokens; each request needs up to 8 blocks: most cannot run together.
    for (const prefixCaching of [true, false]) {
      const { engine, executor } = mockEngine(
        { numBlocks: 12 },
        { maxBatchTokens: 32, prefixCaching },
      );
      watch(engine, 32);
      const preempted: number[] = [];
      engine.on('preempt', (p: { id: number }) => preempted.push(p.id));
      const reqs = Array.from({ length: 8 }, () => ({
        prompt: randomTokens(r, 6 + ((r() * 6) | 0), V),
        maxTokens: 20,
      }));
      const streams = reqs.map((q) => engine.generate({ ...q, temperature: 0 }));
      const outs = await Promise.all(streams.map(collect));
      outs.forEach((o, i) =>
        expect(o.tokens).toEqual(referenceGreedy('hash', V, reqs[i].prompt, 20)),
      );
      const st = engine.stats();
      expect(st.preemptions).toBeGreaterThan(0);
      expect(preempted.length).toBe(st.preemptions);
      expect(streams.reduce((a, s) => a + s.metrics().preemptions, 0)).toBe(st.preemptions);
      expectClean(engine, executor);
      await engine.dispose();
    }
  });

  test('maxRunning 1: queued requests finish by priority, FIFO within a level', async () => {
    const { engine, executor } = mockEngine({}, { maxRunning: 1 });
    const prios = [0, 2, 1, 2, 0, 1, -1, 2];
    const order: number[] = [];
    engine.on('finish', (m: { id: number }) => order.push(m.id));
    const r = rng(5);
    const streams = prios.map((priority) =>
      engine.generate({ prompt: randomTokens(r, 5, V), maxTokens: 3, priority, temperature: 0 }),
    );
    await Promise.all(streams.map(collect));
    const expected = streams
      .map((s, i) => ({ id: s.id, p: prios[i], i }))
      .sort((a, b) => b.p - a.p || a.i - b.i)
      .map((x) => x.id);
    expect(order).toEqual(expected);
    // With one running request, each started after the previous one finished.
    for (const s of streams) expect(s.metrics().status).toBe('finished');
    expectClean(engine, executor);
    await engine.dispose();
  });

  test('the preemption victim is the lowest priority, then the latest arrival', async () => {
    // A (prio 0), B (prio 1), C (prio 0): all admitted at once, growing in lockstep until the
    // pool runs out. C goes first (lowest priority, latest arrival), B never.
    const { engine, executor } = mockEngine({ numBlocks: 9 }, { maxBatchTokens: 64 });
    const preempted: number[] = [];
    engine.on('preempt', (p: { id: number }) => preempted.push(p.id));
    const r = rng(6);
    const prompts = [0, 1, 2].map(() => randomTokens(r, 4, V));
    const a = engine.generate({ prompt: prompts[0], maxTokens: 12, priority: 0, temperature: 0 });
    const b = engine.generate({ prompt: prompts[1], maxTokens: 12, priority: 1, temperature: 0 });
    const c = engine.generate({ prompt: prompts[2], maxTokens: 12, priority: 0, temperature: 0 });
    const outs = await Promise.all([a, b, c].map(collect));
    outs.forEach((o, i) => expect(o.tokens).toEqual(referenceGreedy('hash', V, prompts[i], 12)));
    expect(preempted.length).toBeGreaterThan(0);
    expect(preempted[0]).toBe(c.id);
    expect(preempted).not.toContain(b.id);
    expect(b.metrics().preemptions).toBe(0);
    expectClean(engine, executor);
    await engine.dispose();
  });
});

describe('aborts', () => {
  test('abort mid-prefill (while its step runs) rejects E_ABORTED and frees at once', async () => {
    const ac = new AbortController();
    let usedAfterAbort = -1;
    const holder: { engine?: Engine } = {};
    const exec: Partial<MockExecutorOptions> = {
      onExecute: (_input, step) => {
        if (step === 2) {
          ac.abort();
          usedAfterAbort = holder.engine!.blocks.stats().usedBlocks;
        }
      },
    };
    const { engine, executor } = mockEngine(exec, { maxBatchTokens: 8 });
    holder.engine = engine;
    const prompt = randomTokens(rng(7), 100, V);
    const s = engine.generate({ prompt, maxTokens: 5, temperature: 0 }, { signal: ac.signal });
    await expectCode(collect(s), 'E_ABORTED');
    expect(usedAfterAbort).toBe(0); // freed synchronously, while the step was still running
    expect(s.metrics().status).toBe('aborted');
    expect(s.metrics().outputTokens).toBe(0);
    // The engine goes on correctly with the freed blocks.
    const p2 = randomTokens(rng(8), 30, V);
    expect(
      (await collect(engine.generate({ prompt: p2, maxTokens: 6, temperature: 0 }))).tokens,
    ).toEqual(referenceGreedy('hash', V, p2, 6));
    expectClean(engine, executor);
    await engine.dispose();
  });

  test('abort mid-decode among other requests: E_ABORTED, blocks freed, others unaffected', async () => {
    const { engine, executor } = mockEngine({ numBlocks: 64 }, { maxBatchTokens: 32 });
    const r = rng(9);
    const others = Array.from({ length: 4 }, () => randomTokens(r, 10, V));
    const otherOut = others.map((prompt) =>
      collect(engine.generate({ prompt, maxTokens: 30, temperature: 0 })),
    );
    const ac = new AbortController();
    const prompt = randomTokens(r, 9, V);
    const s = engine.generate({ prompt, maxTokens: 40, temperature: 0 }, { signal: ac.signal });
    const seen: number[] = [];
    let usedBefore = -1;
    let usedAfter = -1;
    const consumer = (async () => {
      for await (const c of s) {
        seen.push(c.token);
        if (seen.length === 3) {
          usedBefore = engine.blocks.stats().usedBlocks;
          ac.abort();
          usedAfter = engine.blocks.stats().usedBlocks;
        }
      }
    })();
    await expectCode(consumer, 'E_ABORTED');
    expect(seen).toEqual(referenceGreedy('hash', V, prompt, 3));
    // Its blocks (prompt 9 + 2 decoded inputs: at least 3 of 4 tokens) went back at once.
    expect(usedBefore - usedAfter).toBeGreaterThanOrEqual(3);
    const outs = await Promise.all(otherOut);
    outs.forEach((o, i) => expect(o.tokens).toEqual(referenceGreedy('hash', V, others[i], 30)));
    // A later abort of a finished request's signal is harmless.
    ac.abort();
    expectClean(engine, executor);
    await engine.dispose();
  });

  test('leaving the for-await loop early frees the request', async () => {
    const { engine, executor } = mockEngine({}, { maxBatchTokens: 16 });
    const r = rng(10);
    const prompt = randomTokens(r, 20, V);
    const other = randomTokens(r, 7, V);
    const o = collect(engine.generate({ prompt: other, maxTokens: 25, temperature: 0 }));
    const s = engine.generate({ prompt, maxTokens: 50, temperature: 0 });
    const got: number[] = [];
    for await (const c of s) {
      got.push(c.token);
      if (got.length === 2) break;
    }
    expect(got).toEqual(referenceGreedy('hash', V, prompt, 2));
    expect(s.metrics().status).toBe('aborted');
    // Only the other request holds blocks now.
    expect(engine.blocks.stats().numSequences).toBeLessThanOrEqual(1);
    expect((await o).tokens).toEqual(referenceGreedy('hash', V, other, 25));
    expectClean(engine, executor);
    // A pre-aborted signal throws synchronously.
    expectThrowCode(
      () => engine.generate({ prompt, maxTokens: 2 }, { signal: AbortSignal.abort() }),
      'E_ABORTED',
    );
    await engine.dispose();
  });

  test('random workload with aborts, cancels, shared prefixes and a tiny pool', async () => {
    const r = rng(11);
    for (const speculative of [false, true]) {
      const { engine, executor } = mockEngine(
        { numBlocks: 40, kind: 'bigram' },
        {
          maxBatchTokens: 24,
          speculative: speculative ? { method: 'ngram', numTokens: 3 } : undefined,
        },
      );
      watch(engine, 24);
      const system = randomTokens(r, 13, V);
      const jobs: Promise<{ ok: boolean; prompt: number[]; max: number; tokens: number[] }>[] = [];
      for (let i = 0; i < 60; i++) {
        const prompt = (r() < 0.5 ? system : []).concat(randomTokens(r, 1 + ((r() * 25) | 0), V));
        const max = 1 + ((r() * 20) | 0);
        const ac = new AbortController();
        const mode = r();
        const req: EngineRequest = {
          prompt,
          maxTokens: max,
          temperature: 0,
          priority: (r() * 3) | 0,
        };
        const s = engine.generate(req, { signal: ac.signal });
        if (mode < 0.2) setTimeout(() => ac.abort(), (r() * 30) | 0);
        const cancelAt = mode > 0.9 ? 1 + ((r() * 4) | 0) : Infinity;
        jobs.push(
          (async () => {
            const tokens: number[] = [];
            for await (const c of s) {
              tokens.push(c.token);
              if (tokens.length >= cancelAt) return { ok: false, prompt, max, tokens };
            }
            return { ok: true, prompt, max, tokens };
          })(),
        );
      }
      const settled = await Promise.allSettled(jobs);
      let ok = 0;
      for (const st of settled) {
        if (st.status === 'rejected') {
          expect(st.reason).toBeInstanceOf(KernelError);
          expect((st.reason as KernelError).code).toBe('E_ABORTED');
          continue;
        }
        const v = st.value;
        const ref = referenceGreedy('bigram', V, v.prompt, v.max);
        if (v.ok) {
          ok++;
          expect(v.tokens).toEqual(ref);
        } else expect(v.tokens).toEqual(ref.slice(0, v.tokens.length));
      }
      expect(ok).toBeGreaterThan(30);
      const stats = engine.stats();
      expect(stats.preemptions).toBeGreaterThan(0);
      expect(stats.kv.prefixHitTokens).toBeGreaterThan(0);
      if (speculative) expect(stats.speculative.acceptedTokens).toBeGreaterThan(0);
      expectClean(engine, executor);
      await engine.dispose();
    }
  });
});

describe('admission control and arguments', () => {
  test('a request that cannot fit in the whole pool throws E_KV_EXHAUSTED synchronously', async () => {
    const { engine, executor } = mockEngine({ numBlocks: 8 }); // 32 token slots
    const prompt = randomTokens(rng(12), 10, V);
    expectThrowCode(() => engine.generate({ prompt, maxTokens: 23 }), 'E_KV_EXHAUSTED');
    // Exactly the pool: runs.
    const out = await collect(engine.generate({ prompt, maxTokens: 22, temperature: 0 }));
    expect(out.tokens).toEqual(referenceGreedy('hash', V, prompt, 22));
    // No maxTokens means "up to the context length": far more than this pool.
    expectThrowCode(() => engine.generate({ prompt }), 'E_KV_EXHAUSTED');
    expectClean(engine, executor);
    await engine.dispose();
  });

  test('maxQueued refuses beyond the queue limit', async () => {
    const { engine, executor } = mockEngine({}, { maxQueued: 2, maxRunning: 1 });
    const a = engine.generate({ prompt: [1, 2], maxTokens: 2 });
    const b = engine.generate({ prompt: [1, 3], maxTokens: 2 });
    expectThrowCode(() => engine.generate({ prompt: [1, 4], maxTokens: 2 }), 'E_KV_EXHAUSTED');
    await Promise.all([collect(a), collect(b)]);
    await collect(engine.generate({ prompt: [1, 4], maxTokens: 2 }));
    expectClean(engine, executor);
    await engine.dispose();
  });

  test('bad request arguments: E_INVALID_ARG naming the argument', async () => {
    const { engine, executor } = mockEngine();
    const bad: [EngineRequest, string][] = [
      [{ prompt: [] }, 'request.prompt'],
      [{ prompt: [1, V] }, 'request.prompt[1]'],
      [{ prompt: [-1] }, 'request.prompt[0]'],
      [{ prompt: [1.5] }, 'request.prompt[0]'],
      [{ prompt: [1, NaN] }, 'request.prompt[1]'],
      [{ prompt: 'text' }, 'request.prompt'], // no tokenizer
      [{ prompt: 5 as never }, 'request.prompt'],
      [{ prompt: new Array(CTX).fill(1) }, 'request.prompt'], // no room to generate
      [{ prompt: [1], maxTokens: 0 }, 'request.maxTokens'],
      [{ prompt: [1], maxTokens: 2.5 }, 'request.maxTokens'],
      [{ prompt: [1], maxTokens: -3 }, 'request.maxTokens'],
      [{ prompt: [1], priority: NaN }, 'request.priority'],
      [{ prompt: [1], priority: Infinity }, 'request.priority'],
      [{ prompt: [1], cacheSalt: 7 as never }, 'request.cacheSalt'],
    ];
    for (const [req, arg] of bad) expectThrowCode(() => engine.generate(req), 'E_INVALID_ARG', arg);
    expectThrowCode(() => engine.generate(null as never), 'E_INVALID_ARG', 'request');
    // Sampling options are validated too (by the sampler).
    expectThrowCode(() => engine.generate({ prompt: [1], temperature: -1 }), 'E_INVALID_ARG');
    expect(engine.stats().waiting).toBe(0);
    expectClean(engine, executor);
    await engine.dispose();
  });

  test('bad engine options: E_INVALID_ARG naming the option', () => {
    const bad: [object, string][] = [
      [{ maxBatchTokens: 0 }, 'options.maxBatchTokens'],
      [{ maxBatchTokens: 1.5 }, 'options.maxBatchTokens'],
      [{ maxBatchTokens: '8' }, 'options.maxBatchTokens'],
      [{ maxRunning: -1 }, 'options.maxRunning'],
      [{ maxQueued: 0 }, 'options.maxQueued'],
      [{ speculative: { method: 'medusa' } }, 'options.speculative'],
      [{ speculative: null }, 'options.speculative'],
      [{ speculative: { method: 'ngram', numTokens: 0 } }, 'options.speculative.numTokens'],
      [{ speculative: { method: 'draft', model: {} } }, 'options.speculative.model'],
    ];
    for (const [o, arg] of bad)
      expectThrowCode(
        () => new Engine(new MockExecutor(), { contextLength: CTX }, o as never),
        'E_INVALID_ARG',
        arg,
      );
  });

  test('a failing step fails the requests in it; the engine goes on', async () => {
    const boom = new Error('device lost');
    const { engine, executor } = mockEngine(
      {
        onExecute: (_i, step) => {
          if (step === 3) throw boom;
        },
      },
      { maxBatchTokens: 16, maxRunning: 2 },
    );
    const errors: unknown[] = [];
    engine.on('stepError', (e) => errors.push(e));
    const r = rng(20);
    const prompts = Array.from({ length: 4 }, () => randomTokens(r, 6, V));
    const settled = await Promise.allSettled(
      prompts.map((prompt) => collect(engine.generate({ prompt, maxTokens: 8, temperature: 0 }))),
    );
    // The first two ran in step 3 and failed with the executor's error; the two queued behind
    // them (maxRunning 2) ran afterwards, correctly.
    expect(settled.map((s) => s.status)).toEqual([
      'rejected',
      'rejected',
      'fulfilled',
      'fulfilled',
    ]);
    expect((settled[0] as PromiseRejectedResult).reason).toBe(boom);
    expect(errors).toEqual([boom]);
    for (const i of [2, 3])
      expect((settled[i] as PromiseFulfilledResult<{ tokens: number[] }>).value.tokens).toEqual(
        referenceGreedy('hash', V, prompts[i], 8),
      );
    expectClean(engine, executor);
    await engine.dispose();
  });

  test('a throwing event listener becomes a warning; serving goes on', async () => {
    const { engine, executor } = mockEngine({}, { maxBatchTokens: 16 });
    const warn = jest.spyOn(process, 'emitWarning').mockImplementation(() => undefined);
    engine.on('step', () => {
      throw new Error('listener bug');
    });
    const prompt = [3, 4, 5, 6];
    try {
      const { tokens } = await collect(engine.generate({ prompt, maxTokens: 5, temperature: 0 }));
      expect(tokens).toEqual(referenceGreedy('hash', V, prompt, 5));
      expect(warn.mock.calls.some((c) => String(c[0]).includes('listener bug'))).toBe(true);
    } finally {
      warn.mockRestore();
    }
    expectClean(engine, executor);
    await engine.dispose();
  });

  test('dispose settles everything in flight with E_DISPOSED; generate after dispose throws', async () => {
    const { engine, executor } = mockEngine({ delayMs: 2 }, { maxBatchTokens: 8, maxRunning: 2 });
    const r = rng(13);
    const jobs = Array.from({ length: 6 }, () =>
      collect(engine.generate({ prompt: randomTokens(r, 20, V), maxTokens: 50 })),
    );
    await new Promise((res) => setTimeout(res, 15)); // some running, some waiting, a step in flight
    expect(executor.steps).toBeGreaterThan(0);
    const all = Promise.allSettled(jobs); // handlers attached before the rejections
    await engine.dispose();
    const settled = await all;
    for (const s of settled) {
      expect(s.status).toBe('rejected');
      expect((s as PromiseRejectedResult).reason).toMatchObject({ code: 'E_DISPOSED' });
    }
    expect(executor.disposed).toBe(true);
    expect(engine.blocks.stats().usedBlocks).toBe(0);
    engine.blocks.checkInvariants();
    expectThrowCode(() => engine.generate({ prompt: [1], maxTokens: 1 }), 'E_DISPOSED');
    await engine.dispose(); // idempotent
  });
});

describe('prefix caching', () => {
  test('a repeated system prompt hits the cache; another salt does not', async () => {
    const { engine, executor } = mockEngine({ numBlocks: 128 });
    const r = rng(14);
    const system = randomTokens(r, 33, V);
    const run = async (suffixLen: number, cacheSalt?: string) => {
      const prompt = system.concat(randomTokens(r, suffixLen, V));
      const before = engine.stats().promptTokensComputed;
      const s = engine.generate({ prompt, maxTokens: 4, temperature: 0, cacheSalt });
      const out = await collect(s);
      expect(out.tokens).toEqual(referenceGreedy('hash', V, prompt, 4));
      return {
        cached: s.metrics().cachedTokens,
        computed: engine.stats().promptTokensComputed - before,
        len: prompt.length,
      };
    };
    const first = await run(5);
    expect(first.cached).toBe(0);
    expect(first.computed).toBe(first.len);
    const second = await run(6);
    expect(second.cached).toBe(32); // 8 full blocks of 4 of the 33-token system prompt
    expect(second.computed).toBe(second.len - 32);
    const salted = await run(6, 'tenant-b');
    expect(salted.cached).toBe(0);
    expect(salted.computed).toBe(salted.len);
    const salted2 = await run(2, 'tenant-b');
    expect(salted2.cached).toBe(32);
    expectClean(engine, executor);
    await engine.dispose();

    const off = mockEngine({ numBlocks: 128 }, { prefixCaching: false });
    for (let i = 0; i < 2; i++) {
      const s = off.engine.generate({ prompt: system.concat([i]), maxTokens: 2 });
      await collect(s);
      expect(s.metrics().cachedTokens).toBe(0);
    }
    expectClean(off.engine, off.executor);
    await off.engine.dispose();
  });
});

describe('speculative decoding (n-gram)', () => {
  test('greedy outputs equal non-speculative, drafts get accepted, fewer steps', async () => {
    const r = rng(15);
    const reqs = Array.from({ length: 8 }, () => ({
      prompt: randomTokens(r, 3 + ((r() * 20) | 0), V),
      maxTokens: 40,
    }));
    for (const kind of ['bigram', 'hash'] as const) {
      const results = [];
      for (const spec of [false, true]) {
        const { engine, executor } = mockEngine(
          { kind },
          { maxBatchTokens: 48, speculative: spec ? { method: 'ngram', numTokens: 4 } : undefined },
        );
        const steps = watch(engine, 48);
        const outs = await Promise.all(
          reqs.map((q) => collect(engine.generate({ ...q, temperature: 0 }))),
        );
        outs.forEach((o, i) =>
          expect(o.tokens).toEqual(referenceGreedy(kind, V, reqs[i].prompt, reqs[i].maxTokens)),
        );
        results.push({ stats: engine.stats(), steps: steps.length });
        expectClean(engine, executor);
        await engine.dispose();
      }
      const [plain, spec] = results;
      expect(plain.stats.speculative.proposedTokens).toBe(0);
      expect(spec.stats.speculative.method).toBe('ngram');
      expect(spec.stats.speculative.proposedTokens).toBeGreaterThan(0);
      if (kind === 'bigram') {
        expect(spec.stats.speculative.acceptanceRate).toBeGreaterThan(0.5);
        expect(spec.stats.speculative.tokensPerStep).toBeGreaterThan(2);
        expect(spec.steps).toBeLessThan(plain.steps * 0.85);
      }
    }
  });

  test('per-request opt-out, and sampled speculation stays reproducible', async () => {
    const make = () =>
      mockEngine({ kind: 'bigram' }, { speculative: { method: 'ngram', numTokens: 4 } });
    const prompt = randomTokens(rng(16), 12, V);
    const { engine, executor } = make();
    const s = engine.generate({ prompt, maxTokens: 30, temperature: 0, speculative: false });
    expect((await collect(s)).tokens).toEqual(referenceGreedy('bigram', V, prompt, 30));
    expect(s.metrics().draftTokens).toBe(0);
    const a = await collect(engine.generate({ prompt, maxTokens: 30, seed: 5 }));
    const b = await collect(engine.generate({ prompt, maxTokens: 30, seed: 5 }));
    expect(a.tokens).toEqual(b.tokens);
    expect(a.tokens.every((t) => t >= 0 && t < V)).toBe(true);
    expect(engine.stats().speculative.acceptedTokens).toBeGreaterThan(0);
    expectClean(engine, executor);
    await engine.dispose();
  });
});

describe('determinism', () => {
  test('same seed at temperature 1: the same tokens alone as in a crowd (with preemptions)', async () => {
    const r = rng(17);
    const reqs = Array.from({ length: 10 }, (_, i) => ({
      prompt: randomTokens(r, 2 + ((r() * 30) | 0), V),
      maxTokens: 5 + ((r() * 20) | 0),
      seed: 1000 + i,
      temperature: 1,
      topK: i % 3 === 0 ? 10 : undefined,
      topP: i % 3 === 1 ? 0.9 : undefined,
    }));
    const alone: number[][] = [];
    for (const q of reqs) {
      const { engine } = mockEngine({ numBlocks: 64 });
      alone.push((await collect(engine.generate(q))).tokens);
      await engine.dispose();
    }
    const { engine, executor } = mockEngine({ numBlocks: 20 }, { maxBatchTokens: 16 });
    const crowd = await Promise.all(reqs.map((q) => collect(engine.generate(q))));
    crowd.forEach((o, i) => expect(o.tokens).toEqual(alone[i]));
    expect(engine.stats().preemptions).toBeGreaterThan(0);
    // Sampling really sampled: not the greedy output everywhere.
    expect(
      reqs.some(
        (q, i) => alone[i].join() !== referenceGreedy('hash', V, q.prompt, q.maxTokens).join(),
      ),
    ).toBe(true);
    expectClean(engine, executor);
    await engine.dispose();
  });
});

// -------------------------------------------------------------------------------------------
// The acceptance rule, statistically.

const dist = (pairs: [number, number][]): SamplingDistribution => {
  pairs.sort((a, b) => a[0] - b[0]);
  const tot = pairs.reduce((a, p) => a + p[1], 0);
  return {
    tokens: Int32Array.from(pairs.map((p) => p[0])),
    probs: Float64Array.from(pairs.map((p) => p[1] / tot)),
  };
};

/** Pearson chi-square of observed counts against p (over p's support; mass outside fails). */
function chiSquare(counts: Map<number, number>, p: SamplingDistribution, n: number): number {
  let chi = 0;
  let inSupport = 0;
  for (let i = 0; i < p.tokens.length; i++) {
    const e = p.probs[i] * n;
    const o = counts.get(p.tokens[i]) ?? 0;
    inSupport += o;
    chi += ((o - e) * (o - e)) / e;
  }
  return inSupport === n ? chi : Infinity;
}

/** Samples from q with one uniform. */
function drawFrom(q: SamplingDistribution, u: number): number {
  let acc = 0;
  for (let i = 0; i < q.tokens.length; i++) {
    acc += q.probs[i];
    if (u < acc) return q.tokens[i];
  }
  return q.tokens[q.tokens.length - 1];
}

type Rule = typeof acceptDraft;

/** N trials of draft + acceptance; returns the chi-square of the emitted tokens against p. */
function trial(
  rule: Rule,
  p: SamplingDistribution,
  q: SamplingDistribution | 'onehot',
  d0: number,
  seed: number,
): number {
  const N = 20000;
  const u = rng(seed);
  const counts = new Map<number, number>();
  for (let t = 0; t < N; t++) {
    const d = q === 'onehot' ? d0 : drawFrom(q, u());
    const r = rule(p, q === 'onehot' ? undefined : q, d, u(), u);
    counts.set(r.token, (counts.get(r.token) ?? 0) + 1);
  }
  return chiSquare(counts, p, N);
}

// chi-square with 5 degrees of freedom exceeds 40 with probability ~1.4e-7.
const CHI_LIMIT = 40;

describe('acceptDraft (exactness of speculative sampling)', () => {
  const p = dist([
    [3, 0.3],
    [7, 0.25],
    [11, 0.2],
    [12, 0.1],
    [20, 0.1],
    [40, 0.05],
  ]);
  // q: overlaps p partly, puts mass on a token p never emits (5) and misses one p has (40).
  const q = dist([
    [3, 0.1],
    [5, 0.2],
    [7, 0.4],
    [11, 0.05],
    [12, 0.15],
    [20, 0.1],
  ]);
  const alwaysAccept: Rule = (_p, _q, d) => ({ token: d, accepted: true });
  // Plausible-looking wrong rule: accept with min(1, p/q) but resample from p, not the residual.
  const resampleFromP: Rule = (pp, qq, d, u1, u2) => {
    const r = acceptDraft(pp, qq, d, u1, u2);
    return r.accepted ? r : { token: drawFrom(pp, u2()), accepted: false };
  };

  test('q one-hot (n-gram drafts): emitted tokens follow p', () => {
    for (const d of [3, 12, 40, 99]) {
      // 99: a draft p gives no mass; it must never be emitted.
      expect(trial(acceptDraft, p, 'onehot', d, 100 + d)).toBeLessThan(CHI_LIMIT);
    }
    // The same check fails for wrong rules.
    expect(trial(alwaysAccept, p, 'onehot', 12, 1)).toBeGreaterThan(1000);
    expect(trial(resampleFromP, p, 'onehot', 3, 2)).toBeGreaterThan(200);
  });

  test('general q (draft model): emitted tokens follow p', () => {
    expect(trial(acceptDraft, p, q, 0, 3)).toBeLessThan(CHI_LIMIT);
    expect(trial(acceptDraft, p, p, 0, 4)).toBeLessThan(CHI_LIMIT); // q = p
    expect(trial(alwaysAccept, p, q, 0, 5)).toBe(Infinity); // emits 5, outside p's support
    expect(trial(resampleFromP, p, q, 0, 6)).toBeGreaterThan(200);
  });

  test('acceptance probability is min(1, p/q); greedy p accepts iff d is the argmax', () => {
    const u = rng(7);
    let acc = 0;
    const N = 20000;
    for (let i = 0; i < N; i++) if (acceptDraft(p, q, 7, u(), u).accepted) acc++;
    // p(7)/q(7) = 0.625; binomial sd ~0.0034: 6 sd is 0.021.
    expect(Math.abs(acc / N - 0.625)).toBeLessThan(0.021);
    const greedy = dist([[9, 1]]);
    expect(acceptDraft(greedy, undefined, 9, 0.999999, u)).toEqual({ token: 9, accepted: true });
    expect(acceptDraft(greedy, undefined, 8, 0, u)).toEqual({ token: 9, accepted: false });
  });

  test('drawResidual: the normalised positive part of p - q, p as a fallback', () => {
    // p - q positive on 3 (0.2), 11 (0.15), 40 (0.05): 0.5, 0.375, 0.125 of 0.4.
    const pick = (x: number) => drawResidual(p, q, -1, x);
    expect(pick(0)).toBe(3);
    expect(pick(0.49)).toBe(3);
    expect(pick(0.51)).toBe(11);
    expect(pick(0.874)).toBe(11);
    expect(pick(0.876)).toBe(40);
    expect(drawResidual(p, p, -1, 0.5)).toBe(drawFrom(p, 0.5)); // no residual mass: p
    // One-hot q on 7: p with 7 removed.
    expect(drawResidual(p, undefined, 7, 0.3 / 0.75 + 1e-9)).toBe(11);
  });
});

describe('proposeNgram', () => {
  const arr = (a: number[]) => Array.from(proposeNgram(a, a.length, 3));
  test('matches the longest recent suffix and proposes what followed it', () => {
    expect(arr([1, 2, 3, 4, 1, 2])).toEqual([3, 4, 1]);
    // Most recent occurrence wins.
    expect(Array.from(proposeNgram([1, 5, 1, 6, 1], 5, 1))).toEqual([6]);
    // The longest n-gram wins over a more recent shorter one.
    expect(Array.from(proposeNgram([7, 8, 9, 1, 8, 2, 7, 8], 8, 2))).toEqual([9, 1]);
    // Continuation truncated by the sequence end.
    expect(Array.from(proposeNgram([7, 7], 2, 4))).toEqual([7]);
    // `length` bounds the history (later entries of the array are ignored).
    expect(Array.from(proposeNgram([1, 2, 1, 9, 9], 3, 2))).toEqual([2, 1]);
  });
  test('nothing to propose', () => {
    expect(arr([1, 2, 3, 4])).toEqual([]);
    expect(arr([5])).toEqual([]);
    expect(Array.from(proposeNgram([1, 2, 1], 3, 0))).toEqual([]);
    // minNgram 2 refuses the 1-gram match.
    expect(Array.from(proposeNgram([1, 2, 3, 1], 4, 2, { minNgram: 2 }))).toEqual([]);
    expect(Array.from(proposeNgram([1, 2, 3, 1], 4, 2))).toEqual([2, 3]);
    // maxNgram 1 uses only the last token.
    expect(Array.from(proposeNgram([1, 2, 9, 2, 5, 1, 2], 7, 1, { maxNgram: 1 }))).toEqual([5]);
  });
});
