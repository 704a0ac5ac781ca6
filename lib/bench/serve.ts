/**
 * Serving benchmark (`tachyon bench serve`): a synthetic, seeded workload (no network) run
 * through the engine in several modes, on one generated GGUF, in one process:
 *
 * - `sequential`: one request at a time, in arrival order (the single-request baseline);
 * - `static`: classic static batching: whenever the engine is free, the requests that have
 *   arrived (up to `concurrency`) form a batch that runs to completion before the next starts;
 * - `continuous`: the engine's continuous batching with `maxRunning = concurrency`;
 * - `llama.cpp`: node-llama-cpp with `concurrency` parallel sequences on the same file, at its
 *   best thread count (lib/bench/llama-cpp.ts serveLlamaCpp: all sequences submit in the same
 *   tick so each decode call carries all of them).
 *
 * Scenarios:
 * - `decode`: `concurrency` requests at t = 0, short prompts: aggregate decode throughput;
 * - `mixed`: Poisson arrivals, random prompt and output lengths, requests in groups that share a
 *   system prompt (prefix caching);
 * - `copy`: batch 1, prompts that repeat a passage: n-gram speculation against none.
 *
 * Every request ignores EOS, so output lengths are exactly as drawn and every mode does the same
 * work. Roofline: the work done (prompt + output tokens) times MACs per token, over the wall
 * time, against the measured int8 (or f32) MAC peak.
 */
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { Runtime } from '../runtime/runtime';
import { loadModel, Model } from '../model/model';
import { createRng } from '../model/sampler';
import { createEngine, Engine, EngineOptions, RequestMetrics } from '../engine/index';
import { BenchResult, Machine } from './common';
import { benchModelSpec, defaultBenchModel, modelCosts } from './e2e';
import { copyPermutation } from '../model/synthetic';
import { bestServeLlamaCpp, isLlamaCppInstalled } from './llama-cpp';

export type ServeMode = 'sequential' | 'static' | 'continuous' | 'llama.cpp';
export type ServeScenario = 'decode' | 'mixed' | 'copy';
export type SpecMode = 'none' | 'ngram' | 'draft';

export interface WorkItem {
  prompt: Int32Array;
  maxTokens: number;
  /** Milliseconds after the start. */
  arrivalMs: number;
}

export interface ServeOptions {
  quick?: boolean;
  model?: string;
  noLlama?: boolean;
  scenarios?: ServeScenario[];
  /** Concurrency of the decode and mixed scenarios. Default 16 (quick: 4). */
  concurrency?: number;
  /** SLOs for goodput. Default TTFT 20 s, TPOT 1 s (this is a 2-core CPU). */
  sloTtftMs?: number;
  sloTpotMs?: number;
  /** Poisson arrival rate of the mixed scenario (requests/s). Default 2 (quick: 4). */
  rate?: number;
  seed?: number;
  log?: (s: string) => void;
}

const EXCLUDE_LOW = 300; // skip the low ids (special and byte tokens of llama vocabularies)

/** Seeded synthetic workloads. */
export function makeWorkload(
  scenario: ServeScenario,
  vocab: number,
  o: {
    n: number;
    seed: number;
    quick?: boolean;
    bos?: number;
    copyPermutation?: Int32Array;
    /** Copy scenario: fraction of quoted tokens edited. Default COPY_EDIT_RATE. */
    editRate?: number;
    /** Mixed scenario: Poisson arrival rate, requests per second. */
    rate?: number;
  },
): WorkItem[] {
  const rnd = createRng(o.seed);
  const tok = () => EXCLUDE_LOW + Math.floor(rnd() * Math.max(1, vocab - EXCLUDE_LOW));
  const span = (n: number) => Array.from({ length: n }, tok);
  const int = (lo: number, hi: number) => lo + Math.floor(rnd() * (hi - lo + 1));
  const bos = o.bos !== undefined ? [o.bos] : [];
  const q = o.quick ? 0.5 : 1;
  const items: WorkItem[] = [];
  if (scenario === 'decode') {
    for (let i = 0; i < o.n; i++)
      items.push({
        prompt: Int32Array.from([...bos, ...span(15)]),
        maxTokens: Math.round(32 * q),
        arrivalMs: 0,
      });
  } else if (scenario === 'mixed') {
    // 4 groups with a 64-token system prompt each; Poisson arrivals.
    const systems = Array.from({ length: 4 }, () => span(Math.round(64 * q)));
    // Offered load above what the machine serves (saturation), where batching policies differ
    // in throughput; below it, every policy's throughput is just the arrival rate.
    const rate = o.rate ?? (o.quick ? 4 : 2); // requests per second
    let t = 0;
    for (let i = 0; i < o.n; i++) {
      t += (-Math.log(1 - rnd()) / rate) * 1e3;
      const sys = systems[int(0, systems.length - 1)];
      items.push({
        prompt: Int32Array.from([
          ...bos,
          ...sys,
          ...span(int(Math.round(8 * q), Math.round(48 * q))),
        ]),
        maxTokens: int(Math.round(16 * q), Math.round(48 * q)),
        arrivalMs: t,
      });
    }
  } else {
    // Copy-heavy: the prompt quotes the text the model will produce (for a copyHead model,
    // π's orbit from the prompt's last token), with one quoted token in 40 edited, as when a
    // request rewrites code it was given.
    const pi = o.copyPermutation;
    if (!pi) throw new Error("the copy scenario needs the model's copy permutation");
    const L = Math.round(64 * q);
    for (let i = 0; i < o.n; i++) {
      const a = tok();
      const passage = [a];
      for (let j = 1; j < L + 8; j++) passage.push(pi.length ? pi[passage[j - 1]] : tok());
      // Edits evenly spaced (every 1/editRate tokens, random phase), so every request meets
      // its share inside the generated span rather than by luck before or after it.
      const every = Math.max(1, Math.round(1 / (o.editRate ?? COPY_EDIT_RATE)));
      for (let j = 1 + Math.floor(rnd() * every); j < passage.length; j += every)
        passage[j] = tok();
      items.push({
        prompt: Int32Array.from([...bos, ...span(8), ...passage, ...span(4), a]),
        maxTokens: L,
        arrivalMs: 0,
      });
    }
  }
  return items;
}

/** p-th percentile (nearest rank on the sorted values); undefined for no values. */
export function percentile(xs: number[], p: number): number | undefined {
  if (xs.length === 0) return undefined;
  const s = [...xs].sort((a, b) => a - b);
  const i = Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1));
  return s[i];
}

interface RunOutcome {
  wallMs: number;
  metrics: {
    ttftMs: number;
    tpotMs: number | undefined;
    itlMs: number[];
    outputTokens: number;
    queueMs: number;
  }[];
  promptTokens: number;
  outputTokens: number;
  prefixHitRate?: number;
  preemptions?: number;
  acceptanceRate?: number;
  tokensPerStep?: number;
}

/** Fraction of the quoted passage edited in the copy scenario. */
export const COPY_EDIT_RATE = 1 / 40;
/** Drafts per verification in the copy scenario. */
const SPEC_TOKENS = 6;
/** Placeholder permutation: quoteOwnContinuation replaces the quoted passage. */
const IDENTITY_MARK = new Int32Array(0);

/**
 * For a model of the user's: the copy prompt quotes what the model itself will say. The
 * passage is its greedy continuation of the prompt's opening, then the prompt repeats that
 * opening, so a model that copies (real ones do) continues with the quoted passage.
 */
async function quoteOwnContinuation(model: Model, items: WorkItem[]): Promise<WorkItem[]> {
  const out: WorkItem[] = [];
  for (const w of items) {
    const head = w.prompt.subarray(0, Math.min(16, w.prompt.length));
    const cont: number[] = [];
    for await (const c of model.generate(head, {
      maxTokens: w.maxTokens,
      temperature: 0,
      ignoreEos: true,
    }))
      cont.push(c.token);
    out.push({ ...w, prompt: Int32Array.from([...head, ...cont, ...head]) });
  }
  return out;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, Math.max(0, ms)));

/** Runs `items` through `engine` in `mode` (sequential, static or continuous). */
async function runEngineMode(
  engine: Engine,
  items: WorkItem[],
  mode: 'sequential' | 'static' | 'continuous',
  concurrency: number,
): Promise<RunOutcome> {
  const metrics: RequestMetrics[] = [];
  const t0 = performance.now();
  const one = async (w: WorkItem): Promise<void> => {
    // The engine stamps arrival at generate(); sequential and static hold requests back
    // before that, which counts as queueing too.
    const held = Math.max(0, performance.now() - t0 - w.arrivalMs);
    const s = engine.generate({
      prompt: w.prompt,
      maxTokens: w.maxTokens,
      temperature: 0,
      ignoreEos: true,
    });
    for await (const _ of s) void _;
    const m = s.metrics();
    metrics.push({ ...m, ttftMs: (m.ttftMs ?? 0) + held, queueMs: (m.queueMs ?? 0) + held });
  };
  if (mode === 'continuous') {
    await Promise.all(
      items.map(async (w) => {
        await sleep(w.arrivalMs - (performance.now() - t0));
        await one(w);
      }),
    );
  } else {
    const B = mode === 'sequential' ? 1 : concurrency;
    let next = 0;
    while (next < items.length) {
      const now = performance.now() - t0;
      if (items[next].arrivalMs > now) await sleep(items[next].arrivalMs - now);
      const arrived = performance.now() - t0;
      const batch: WorkItem[] = [];
      while (next < items.length && batch.length < B && items[next].arrivalMs <= arrived)
        batch.push(items[next++]);
      await Promise.all(batch.map(one));
    }
  }
  const wallMs = performance.now() - t0;
  const st = engine.stats();
  return {
    wallMs,
    metrics: metrics.map((m) => ({
      ttftMs: m.ttftMs!,
      tpotMs: m.tpotMs,
      itlMs: m.itlMs,
      outputTokens: m.outputTokens,
      queueMs: m.queueMs ?? 0,
    })),
    // Computed, not submitted: prefix-cache hits cost nothing (the roofline counts work done).
    promptTokens: st.promptTokensComputed,
    outputTokens: metrics.reduce((a, m) => a + m.outputTokens, 0),
    prefixHitRate: st.kv.prefixHitRate,
    preemptions: st.preemptions,
    acceptanceRate: st.speculative.method === 'none' ? undefined : st.speculative.acceptanceRate,
    tokensPerStep: st.speculative.method === 'none' ? undefined : st.speculative.tokensPerStep,
  };
}

export async function runServe(
  rt: Runtime,
  machine: Machine,
  opts: ServeOptions,
): Promise<BenchResult[]> {
  const log = opts.log ?? ((s: string) => console.error(s));
  const quick = opts.quick ?? false;
  const file = opts.model ?? (await defaultBenchModel(quick, log));
  const conc = opts.concurrency ?? (quick ? 4 : 16);
  const seed = opts.seed ?? 2026;
  const scenarios = opts.scenarios ?? ['decode', 'mixed', 'copy'];
  const sloTtft = opts.sloTtftMs ?? 20_000;
  const sloTpot = opts.sloTpotMs ?? 1_000;
  const mixedRate = opts.rate ?? (quick ? 4 : 2);
  const model = await loadModel(file, { runtime: rt, contextLength: 1024 });
  const results: BenchResult[] = [];
  try {
    const costs = await modelCosts(file, model);
    const peak = costs.intWeights ? machine.peakMacPerS.int8 : machine.peakMacPerS.f32;
    const V = model.info.config.vocab;
    const bos = model.tokenizer.bos;
    const engineOptions: EngineOptions = {
      maxBatchTokens: 256,
      kvMemory: 512 * 2 ** 20,
    };
    // Warm-up: page the weights in.
    await model.logits(Int32Array.of(bos ?? 1, 400, 401));

    const record = (
      scenario: ServeScenario,
      mode: ServeMode,
      concurrency: number,
      speculative: SpecMode,
      items: WorkItem[],
      r: RunOutcome,
      extra: Record<string, unknown> = {},
    ) => {
      const ttft = r.metrics.map((m) => m.ttftMs);
      const tpot = r.metrics.map((m) => m.tpotMs).filter((x): x is number => x !== undefined);
      const itl = r.metrics.flatMap((m) => m.itlMs);
      const aggregateDecode = r.metrics.reduce((a, m) => a + (m.tpotMs ? 1e3 / m.tpotMs : 0), 0);
      const good = r.metrics.filter(
        (m) => m.ttftMs <= sloTtft && (m.tpotMs ?? 0) <= sloTpot,
      ).length;
      const macPerS = ((r.promptTokens + r.outputTokens) * costs.macsPerToken) / (r.wallMs / 1e3);
      const res: BenchResult = {
        suite: 'serve',
        case: `${scenario} ${mode} c${concurrency}${speculative !== 'none' ? ' ' + speculative : ''}`,
        params: {
          mode,
          concurrency,
          scenario,
          speculative,
          requests: items.length,
          model: path.basename(file),
          threads: (extra.threads as number | undefined) ?? rt.threads,
        },
        medianMs: r.wallMs,
        minMs: r.wallMs,
        repeats: 1,
        tokensPerS: r.outputTokens / (r.wallMs / 1e3),
        requestsPerS: items.length / (r.wallMs / 1e3),
        ttftP50Ms: percentile(ttft, 50),
        ttftP99Ms: percentile(ttft, 99),
        tpotP50Ms: percentile(tpot, 50),
        tpotP99Ms: percentile(tpot, 99),
        itlP50Ms: percentile(itl, 50),
        itlP99Ms: percentile(itl, 99),
        goodputRps: good / (r.wallMs / 1e3),
        // Meaningful where every request decodes through the whole run (the decode scenario).
        aggregateDecodeTokensPerS:
          scenario === 'decode' && mode !== 'sequential' ? aggregateDecode : undefined,
        slo: { ttftMs: sloTtft, tpotMs: sloTpot },
        promptTokens: r.promptTokens,
        outputTokens: r.outputTokens,
        macPerS,
        roofline: {
          kind: 'compute',
          ratio: macPerS / peak,
          peak: costs.intWeights ? 'int8' : 'f32',
        },
      };
      if (r.prefixHitRate !== undefined) res.prefixHitRate = r.prefixHitRate;
      if (r.preemptions !== undefined) res.preemptions = r.preemptions;
      if (r.acceptanceRate !== undefined) res.acceptanceRate = r.acceptanceRate;
      if (r.tokensPerStep !== undefined) res.tokensPerStep = r.tokensPerStep;
      Object.assign(res, extra);
      results.push(res);
      log(
        `  ${res.case}: ${(res.tokensPerS as number).toFixed(2)} tok/s, TTFT p50 ${fmtMs(res.ttftP50Ms)} p99 ${fmtMs(res.ttftP99Ms)}, ` +
          `TPOT p50 ${fmtMs(res.tpotP50Ms)} p99 ${fmtMs(res.tpotP99Ms)}` +
          (r.acceptanceRate !== undefined
            ? `, acceptance ${(r.acceptanceRate * 100).toFixed(0)}%`
            : ''),
      );
      return res;
    };

    const withEngine = async <T>(
      o: EngineOptions,
      fn: (e: Engine) => Promise<T>,
      m: Model = model,
    ): Promise<T> => {
      const e = await createEngine(m, o);
      try {
        return await fn(e);
      } finally {
        await e.dispose();
      }
    };

    for (const scenario of scenarios) {
      const c = scenario === 'copy' ? 1 : conc;
      const n =
        scenario === 'decode' ? conc : scenario === 'mixed' ? (quick ? 8 : 24) : quick ? 2 : 4;
      // The copy scenario runs on the copying variant of the generated model (same shapes and
      // types); with --model, on that model, quoting its own greedy continuation.
      const copyModel =
        scenario === 'copy'
          ? opts.model
            ? model
            : await loadModel(await defaultBenchModel(quick, log, true), {
                runtime: rt,
                contextLength: 1024,
              })
          : undefined;
      if (copyModel && copyModel !== model)
        await copyModel.logits(Int32Array.of(bos ?? 1, 400, 401)); // page in
      let pi: Int32Array | undefined;
      if (scenario === 'copy')
        pi = opts.model ? undefined : copyPermutation(benchModelSpec(quick, true));
      let items = makeWorkload(scenario, V, {
        n,
        seed,
        quick,
        bos,
        copyPermutation: pi ?? IDENTITY_MARK,
        rate: mixedRate,
      });
      if (scenario === 'copy' && !pi) items = await quoteOwnContinuation(model, items);
      log(`serve ${scenario}: ${items.length} requests, concurrency ${c}`);
      if (scenario === 'copy') {
        try {
          for (const spec of ['none', 'ngram'] as const) {
            const r = await withEngine(
              {
                ...engineOptions,
                maxRunning: 1,
                speculative:
                  spec === 'ngram' ? { method: 'ngram', numTokens: SPEC_TOKENS } : undefined,
              },
              (e) => runEngineMode(e, items, 'sequential', 1),
              copyModel,
            );
            record(scenario, 'sequential', 1, spec, items, r, {
              numTokens: SPEC_TOKENS,
              editRate: pi ? COPY_EDIT_RATE : undefined,
            });
          }
        } finally {
          if (copyModel !== model) await copyModel!.dispose();
        }
        const base = results.find(
          (x) => x.params.scenario === 'copy' && x.params.speculative === 'none',
        );
        const ng = results.find(
          (x) => x.params.scenario === 'copy' && x.params.speculative === 'ngram',
        );
        if (base && ng) {
          // Wall-clock output tok/s (prefill included) and decode alone (TPOT).
          ng.speedupVsNone = (ng.tokensPerS as number) / (base.tokensPerS as number);
          ng.decodeSpeedupVsNone = (base.tpotP50Ms as number) / (ng.tpotP50Ms as number);
        }
        continue;
      }
      const modes: ('sequential' | 'static' | 'continuous')[] =
        scenario === 'decode' ? ['sequential', 'static', 'continuous'] : ['static', 'continuous'];
      for (const mode of modes) {
        const r = await withEngine(
          { ...engineOptions, maxRunning: mode === 'sequential' ? 1 : c },
          (e) => runEngineMode(e, items, mode, c),
        );
        record(scenario, mode, mode === 'sequential' ? 1 : c, 'none', items, r, {
          arrivalRatePerS: scenario === 'mixed' ? mixedRate : undefined,
        });
      }
      if (!opts.noLlama) {
        if (!isLlamaCppInstalled())
          log('llama.cpp (node-llama-cpp) is not installed: npm run llama:install to compare');
        else {
          log(`  llama.cpp: ${c} parallel sequences at 1 and 2 threads ...`);
          const lc = await bestServeLlamaCpp(
            items.map((w) => ({
              prompt: w.prompt,
              maxTokens: w.maxTokens,
              arrivalMs: w.arrivalMs,
            })),
            { modelPath: file, parallel: c, ignoreEos: true },
          );
          const b = lc.best;
          record(
            scenario,
            'llama.cpp',
            c,
            'none',
            items,
            {
              wallMs: b.wallMs,
              metrics: b.requests.map((q) => ({ ...q })),
              promptTokens: items.reduce((a, w) => a + w.prompt.length, 0),
              outputTokens: b.outputTokens,
            },
            {
              threads: b.threads,
              arrivalRatePerS: scenario === 'mixed' ? mixedRate : undefined,
              tokensPerSByThreads: Object.fromEntries(
                lc.runs.map((x) => [`t${x.threads}`, x.tokensPerS]),
              ),
            },
          );
        }
      }
      const pick = (mode: ServeMode) =>
        results.find((x) => x.params.scenario === scenario && x.params.mode === mode);
      const cont = pick('continuous');
      for (const m of ['sequential', 'static', 'llama.cpp'] as const) {
        const o = pick(m);
        if (cont && o) cont[`vs_${m}`] = (cont.tokensPerS as number) / (o.tokensPerS as number);
      }
    }
    // The single-request decode rate (for the 16-concurrency target): sequential decode TPOT.
    const seq = results.find(
      (x) => x.params.scenario === 'decode' && x.params.mode === 'sequential',
    );
    const cont = results.find(
      (x) => x.params.scenario === 'decode' && x.params.mode === 'continuous',
    );
    // Every request of the decode scenario decodes through the whole run, so the aggregate
    // decode rate is Σ 1 / TPOT_i (aggregateDecodeTokensPerS); compare it with one request's.
    if (seq && cont && seq.tpotP50Ms)
      for (const r of results)
        if (r.params.scenario === 'decode' && r.params.mode !== 'sequential')
          r.vsSingleRequestDecodeRate =
            (r.aggregateDecodeTokensPerS as number) / (1e3 / (seq.tpotP50Ms as number));
  } finally {
    await model.dispose();
  }
  return results;
}

function fmtMs(x: unknown): string {
  return typeof x === 'number' ? `${x.toFixed(0)} ms` : '-';
}
