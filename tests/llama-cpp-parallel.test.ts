/**
 * The llama.cpp side of the serving benchmark (serveLlamaCpp / bestServeLlamaCpp).
 *
 * Argument checks always run. The rest needs node-llama-cpp (node scripts/llama-cpp/install.mjs)
 * and, since it is an ES module, jest run with NODE_OPTIONS=--experimental-vm-modules; without
 * either it is skipped:
 *   NODE_OPTIONS=--experimental-vm-modules npx jest tests/llama-cpp-parallel.test.ts
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  bestServeLlamaCpp,
  isLlamaCppInstalled,
  LlamaCppServeRequest,
  openLlamaCpp,
  serveLlamaCpp,
  unloadLlamaCpp,
} from '../lib/bench/llama-cpp';

const STORIES = path.join(
  process.env.TACHYON_MODELS_DIR ?? '/work/shared/models',
  'stories260K.gguf',
);
const vmModules = [process.env.NODE_OPTIONS ?? '', ...process.execArgv].some((s) =>
  s.includes('--experimental-vm-modules'),
);
const canRun = isLlamaCppInstalled() && vmModules && fs.existsSync(STORIES);
const describeLlama = canRun ? describe : describe.skip;

/** `n` distinct prompts of `len` tokens (BOS first) within stories260K's 512-token vocabulary. */
function prompts(n: number, len: number): Int32Array[] {
  let s = 2024;
  return Array.from({ length: n }, () => {
    const p = new Int32Array(len);
    p[0] = 1;
    for (let k = 1; k < len; k++) {
      s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
      p[k] = 3 + ((s >>> 8) % 500);
    }
    return p;
  });
}

describe('serveLlamaCpp argument checks', () => {
  // Validation runs before node-llama-cpp is loaded: any existing file passes the path check.
  const modelPath = __filename;
  const req: LlamaCppServeRequest[] = [{ prompt: [1, 2, 3], maxTokens: 4 }];
  const base = { modelPath, parallel: 2, threads: 1 } as const;

  it.each([
    ['no requests', [], base, 'requests'],
    ['parallel 0', req, { ...base, parallel: 0 }, 'options.parallel'],
    ['threads 0', req, { ...base, threads: 0 }, 'options.threads'],
    ['missing model', req, { ...base, modelPath: '/nonexistent.gguf' }, 'options.modelPath'],
    ['empty prompt', [{ prompt: [], maxTokens: 4 }], base, 'requests[0].prompt'],
    ['negative token', [{ prompt: [1, -2], maxTokens: 4 }], base, 'requests[0].prompt'],
    ['maxTokens 0', [{ prompt: [1], maxTokens: 0 }], base, 'requests[0].maxTokens'],
    [
      'negative arrival',
      [{ prompt: [1], maxTokens: 1, arrivalMs: -1 }],
      base,
      'requests[0].arrivalMs',
    ],
    ['ignoreEos false', req, { ...base, ignoreEos: false }, 'options.ignoreEos'],
  ])('%s', async (_name, requests, options, arg) => {
    await expect(
      serveLlamaCpp(requests as LlamaCppServeRequest[], options as never),
    ).rejects.toMatchObject({ code: 'E_INVALID_ARG', arg });
  });

  it('bestServeLlamaCpp checks its thread list', async () => {
    await expect(
      bestServeLlamaCpp(req, { modelPath, parallel: 1, threads: [1, 0] }),
    ).rejects.toMatchObject({ code: 'E_INVALID_ARG', arg: 'options.threads' });
  });
});

describeLlama('serveLlamaCpp on stories260K (node-llama-cpp)', () => {
  afterAll(() => unloadLlamaCpp());

  it('batches every active sequence into one llama_decode per tick, same tokens as one at a time', async () => {
    const ps = prompts(4, 12);
    const requests = ps.map((prompt) => ({ prompt, maxTokens: 16 }));
    const par = await serveLlamaCpp(requests, { modelPath: STORIES, parallel: 4, threads: 1 });
    const seq = await serveLlamaCpp(requests, { modelPath: STORIES, parallel: 1, threads: 1 });

    expect(par.completed).toBe(true);
    expect(par.outputTokens).toBe(64);
    // all four arrive at 0 and fit: 16 ticks, each ONE decode carrying every sequence
    expect(par.ticks).toBe(16);
    expect(par.decodeCalls).toBe(16);
    expect(par.decodedTokens).toBe(4 * 12 + 4 * 15);
    expect(seq.ticks).toBe(64);
    expect(seq.decodeCalls).toBe(64);
    for (let i = 0; i < 4; i++) {
      const r = par.requests[i];
      expect(r.outputTokens).toBe(16);
      expect(r.itlMs).toHaveLength(15);
      expect(r.queueMs).toBeGreaterThanOrEqual(0);
      expect(r.ttftMs).toBeGreaterThan(0);
      expect(r.tpotMs).toBeCloseTo((r.endMs - r.arrivalMs - r.ttftMs) / 15, 6);
      expect(Array.from(r.tokens)).toEqual(Array.from(seq.requests[i].tokens));
    }
    // one at a time, the 4th request waits for the first three
    expect(seq.requests[3].queueMs).toBeGreaterThan(seq.requests[0].queueMs);

    // and they are llama.cpp's plain greedy continuation
    const m = await openLlamaCpp(STORIES, { threads: 1, contextSize: 64 });
    try {
      expect(Array.from(par.requests[2].tokens)).toEqual(await m.greedy(ps[2], 16));
    } finally {
      await m.dispose();
    }
  });

  it('honours arrival times and queues when every sequence is busy', async () => {
    const [a, b, c] = prompts(3, 8);
    const r = await serveLlamaCpp(
      [
        { prompt: a, maxTokens: 8 },
        { prompt: b, maxTokens: 8 },
        { prompt: c, maxTokens: 4, arrivalMs: 60 },
      ],
      { modelPath: STORIES, parallel: 1, threads: 1 },
    );
    const [ra, rb, rc] = r.requests;
    expect(ra.startMs).toBeLessThan(5);
    // b arrived at 0 but the only sequence was busy with a
    expect(rb.queueMs).toBeGreaterThanOrEqual(ra.endMs - 1);
    expect(rc.startMs).toBeGreaterThanOrEqual(60);
    expect(rc.ttftMs).toBeGreaterThanOrEqual(0);
    expect(r.wallMs).toBeGreaterThanOrEqual(60);
    expect(r.outputTokens).toBe(20);
  });

  it('refuses a context smaller than prompt + maxTokens', async () => {
    await expect(
      serveLlamaCpp([{ prompt: prompts(1, 30)[0], maxTokens: 40 }], {
        modelPath: STORIES,
        parallel: 1,
        threads: 1,
        contextSize: 64,
      }),
    ).rejects.toMatchObject({ code: 'E_INVALID_ARG', arg: 'options.contextSize' });
  });

  it('bestServeLlamaCpp runs each thread count and keeps the fastest', async () => {
    const requests = prompts(2, 8).map((prompt) => ({ prompt, maxTokens: 8 }));
    const r = await bestServeLlamaCpp(requests, {
      modelPath: STORIES,
      parallel: 2,
      threads: [1, 2],
    });
    expect(r.runs.map((x) => x.threads)).toEqual([1, 2]);
    const done = r.runs.filter((x) => x.completed);
    expect(done.length).toBeGreaterThan(0);
    expect(r.best.completed).toBe(true);
    expect(r.best.tokensPerS).toBe(Math.max(...done.map((x) => x.tokensPerS)));
  });
});
