/**
 * The serving engine: many concurrent requests over one model, continuous batching.
 *
 *   const engine = await createEngine(model, { maxBatchTokens: 256, kvMemory: 1 << 30 });
 *   for await (const chunk of engine.generate({ prompt: 'Hello', maxTokens: 64 })) ...
 *
 * One loop runs steps while there is work: the scheduler (scheduler.ts) builds a ragged batch
 * of decodes and prefill chunks, the executor runs it (kernels on native threads; the loop
 * awaits, so the event loop stays free), then every request that reached its end samples,
 * verifies speculative drafts, and streams its chunks. Requests arriving mid-step join the next
 * step. Aborting a request (signal, or leaving the for-await loop) frees its blocks at once,
 * even while a step that includes it is running: stream order puts that step's kernels before
 * any later step's use of the blocks, and its results are ignored.
 *
 * Determinism: a request's tokens depend only on its own prompt, options and seed, never on
 * what it was batched with, as long as the executor computes every row the same way whatever
 * the batch (the CPU kernels do: per-row activation quantization, fixed reduction order; the
 * tests check greedy outputs alone against in a crowd). Sampled decoding draws from the
 * request's own seeded stream, one draw per token, so it is reproducible too, except with
 * speculation, where acceptance tests consume extra draws: outputs then follow the same
 * distribution but are not the same sequence as without speculation.
 */
import { EventEmitter } from 'node:events';
import { performance } from 'node:perf_hooks';
import { invalidArg, KernelError } from '../runtime/errors';
import { BlockManager, KvCacheStats, RetentionRange } from '../kv/index';
import { Model, samplingOptions } from '../model/model';
import { GenerateChunk, OutputStream } from '../model/output';
import { Sampler, SamplingOptions, SampledToken } from '../model/sampler';
import { Tokenizer } from '../model/tokenizer';
import { Executor, KvSizing, ModelExecutor } from './executor';
import { SchedRequest, Scheduler, StepEntry, StepPlan } from './scheduler';
import { acceptDraft, NgramOptions, proposeNgram, SpeculativeStats } from './speculative';
import { DraftProposer } from './draft';

export type SpeculativeOptions =
  | ({ method: 'ngram'; /** Drafts per step (default 4). */ numTokens?: number } & NgramOptions)
  | { method: 'draft'; /** The draft model (same tokenizer). */ model: Model; numTokens?: number };

export interface EngineOptions extends KvSizing {
  /** Query rows per step (decodes + prefill chunks + drafts). Default 256. */
  maxBatchTokens?: number;
  /** Requests holding KV at once. Default 64. */
  maxRunning?: number;
  /** Requests waiting beyond which generate() refuses (throws E_KV_EXHAUSTED, arg 'request'). Default unlimited. */
  maxQueued?: number;
  /** Automatic prefix caching. Default true. */
  prefixCaching?: boolean;
  /** Speculative decoding. Default none. */
  speculative?: SpeculativeOptions;
}

export interface EngineRequest extends SamplingOptions {
  /** Text (tokenized with BOS per the tokenizer unless addSpecial is false) or token ids. */
  prompt: string | ArrayLike<number>;
  /** Default: up to the context length. */
  maxTokens?: number;
  stop?: readonly string[];
  ignoreEos?: boolean;
  addSpecial?: boolean;
  /** Higher runs first; FIFO within a level. Default 0. */
  priority?: number;
  /** Prefix-cache salt: requests with different salts never share cached blocks. */
  cacheSalt?: string;
  /** Retention priority of this request's cached blocks (higher is evicted later), by token range. */
  retention?: readonly RetentionRange[];
  /** Opt out of the engine's speculation for this request. Default true. */
  speculative?: boolean;
}

export interface RequestMetrics {
  id: number;
  status: 'waiting' | 'running' | 'finished' | 'aborted' | 'failed';
  finishReason?: string;
  priority: number;
  promptTokens: number;
  outputTokens: number;
  /** Prompt tokens served from the prefix cache at admission. */
  cachedTokens: number;
  preemptions: number;
  /** Arrival to first admission. */
  queueMs: number | undefined;
  /** Arrival to first token. */
  ttftMs: number | undefined;
  /** Mean time per output token after the first. */
  tpotMs: number | undefined;
  /** Gaps between successive emissions (a speculative step emits several tokens at once). */
  itlMs: number[];
  /** Drafts scored / accepted for this request. */
  draftTokens: number;
  acceptedDrafts: number;
}

export interface StepInfo {
  step: number;
  rows: number;
  decodes: number;
  prefills: number;
  drafts: number;
  preempted: number;
  ms: number;
}

export interface EngineStats {
  waiting: number;
  running: number;
  finished: number;
  steps: number;
  preemptions: number;
  promptTokensComputed: number;
  generatedTokens: number;
  kv: KvCacheStats;
  speculative: SpeculativeStats;
  /** Per-expert routing loads when the model's routing policy records them. */
  moe?: unknown;
  /** Every waiting or running request. */
  requests: RequestMetrics[];
}

/** The async iterable generate() returns (also carries the request id and its metrics). */
export interface EngineStream extends AsyncIterableIterator<GenerateChunk> {
  readonly id: number;
  metrics(): RequestMetrics;
}

interface Live {
  sched: SchedRequest;
  sampler: Sampler;
  sampling: SamplingOptions;
  out: OutputStream;
  chan: Channel;
  arrivalMs: number;
  admittedMs?: number;
  firstMs?: number;
  lastMs?: number;
  itl: number[];
  draftTokens: number;
  acceptedDrafts: number;
  status: RequestMetrics['status'];
  finishReason?: string;
  onAbort?: () => void;
  signal?: AbortSignal;
}

/** What the engine needs besides the executor. */
export interface EngineModel {
  contextLength: number;
  tokenizer?: Pick<Tokenizer, 'tokenize' | 'createStream' | 'isEog'>;
  /** Per-expert loads (routing policies with load statistics). */
  moeLoads?: () => unknown;
}

export class Engine extends EventEmitter {
  readonly executor: Executor;
  readonly blocks: BlockManager;
  private readonly model: EngineModel;
  private readonly scheduler: Scheduler;
  private readonly live = new Map<SchedRequest, Live>();
  private readonly maxQueued: number;
  private readonly spec: { method: 'none' | 'ngram' | 'draft'; k: number; ngram: NgramOptions };
  private readonly draft: DraftProposer | undefined;
  private nextId = 1;
  private arrivals = 0;
  private loopRunning: Promise<void> | undefined;
  private disposed = false;
  private counters = {
    steps: 0,
    finished: 0,
    prompt: 0,
    generated: 0,
    verifySteps: 0,
    proposed: 0,
    accepted: 0,
    emittedInVerify: 0,
  };

  constructor(executor: Executor, model: EngineModel, options: EngineOptions = {}) {
    super();
    const op = 'createEngine';
    const posInt = (v: unknown, arg: string, dflt: number, max = 2 ** 31): number => {
      if (v === undefined) return dflt;
      if (!(typeof v === 'number' && Number.isSafeInteger(v) && v >= 1 && v <= max))
        throw invalidArg(op, arg, `an integer in [1, ${max}]`, v);
      return v;
    };
    const maxBatchTokens = posInt(options.maxBatchTokens, 'options.maxBatchTokens', 256, 65536);
    const maxRunning = posInt(options.maxRunning, 'options.maxRunning', 64, 65536);
    this.maxQueued =
      options.maxQueued === undefined
        ? Infinity
        : posInt(options.maxQueued, 'options.maxQueued', 1);
    const sp = options.speculative;
    if (
      sp !== undefined &&
      (sp === null || typeof sp !== 'object' || !['ngram', 'draft'].includes(sp.method))
    )
      throw invalidArg(op, 'options.speculative', "{ method: 'ngram' | 'draft', ... }", sp);
    const k = sp ? posInt(sp.numTokens, 'options.speculative.numTokens', 4, 64) : 0;
    this.spec = {
      method: sp?.method ?? 'none',
      k,
      ngram: sp?.method === 'ngram' ? { maxNgram: sp.maxNgram, minNgram: sp.minNgram } : {},
    };
    this.executor = executor;
    this.model = model;
    this.blocks = new BlockManager({
      numBlocks: executor.numBlocks,
      blockSize: executor.blockSize,
      enablePrefixCaching: options.prefixCaching ?? true,
    });
    if (sp?.method === 'draft')
      this.draft = new DraftProposer(sp.model, executor, k, (req) => {
        const l = this.live.get(req)!;
        return { ...l.sampling, seed: l.sampler.options.seed };
      });
    this.scheduler = new Scheduler(this.blocks, {
      maxBatchTokens,
      maxRunning,
      maxDrafts: k,
      propose: sp
        ? (req, max) =>
            this.draft
              ? this.draft.drafts(req, max)
              : proposeNgram(req.tokens, req.length, max, this.spec.ngram)
        : undefined,
    });
  }

  /**
   * Queues a request and streams its output chunks. Validation and admission control throw
   * here, synchronously. Aborting `signal` rejects the pending iteration with E_ABORTED and frees
   * the request's KV at once; leaving the for-await loop early does the same silently.
   */
  generate(request: EngineRequest, options: { signal?: AbortSignal } = {}): EngineStream {
    const op = 'Engine.generate';
    if (this.disposed)
      throw new KernelError('The engine has been disposed', { code: 'E_DISPOSED', op });
    if (request === null || typeof request !== 'object')
      throw invalidArg(op, 'request', 'a request object', request);
    const signal = options?.signal;
    if (signal?.aborted)
      throw new KernelError('The request was aborted', { code: 'E_ABORTED', op, arg: 'signal' });
    const V = this.executor.vocab;
    let prompt: Int32Array;
    if (typeof request.prompt === 'string') {
      const tok = this.model.tokenizer;
      if (!tok)
        throw invalidArg(
          op,
          'request.prompt',
          'token ids (this engine has no tokenizer)',
          request.prompt,
        );
      prompt = tok.tokenize(request.prompt, { addSpecial: request.addSpecial ?? true });
    } else {
      const p = request.prompt;
      if (p === null || typeof p !== 'object' || typeof p.length !== 'number')
        throw invalidArg(op, 'request.prompt', 'a string or an array of token ids', p);
      prompt = Int32Array.from(p);
      for (let i = 0; i < prompt.length; i++)
        if (!(prompt[i] >= 0 && prompt[i] < V && prompt[i] === p[i]))
          throw invalidArg(op, `request.prompt[${i}]`, `a token id in [0, ${V})`, p[i]);
    }
    if (prompt.length === 0)
      throw invalidArg(op, 'request.prompt', 'a non-empty prompt', request.prompt);
    const ctx = this.model.contextLength;
    if (prompt.length >= ctx)
      throw new KernelError(
        `The prompt has ${prompt.length} tokens but the context length is ${ctx}: no room to generate`,
        { code: 'E_INVALID_ARG', op, arg: 'request.prompt' },
      );
    let maxTokens = ctx - prompt.length;
    if (request.maxTokens !== undefined) {
      if (!Number.isSafeInteger(request.maxTokens) || request.maxTokens < 1)
        throw invalidArg(op, 'request.maxTokens', 'a positive integer', request.maxTokens);
      maxTokens = Math.min(maxTokens, request.maxTokens);
    }
    const priority = request.priority ?? 0;
    if (!Number.isFinite(priority))
      throw invalidArg(op, 'request.priority', 'a finite number', priority);
    if (request.cacheSalt !== undefined && typeof request.cacheSalt !== 'string')
      throw invalidArg(op, 'request.cacheSalt', 'a string', request.cacheSalt);
    if (this.scheduler.waiting.length >= this.maxQueued)
      throw new KernelError(
        `${this.scheduler.waiting.length} requests are already waiting (maxQueued ${this.maxQueued})`,
        { code: 'E_KV_EXHAUSTED', op, arg: 'request' },
      );
    const sampling = samplingOptions(request);
    const sampler = new Sampler(V, sampling);
    sampler.acceptMany(prompt);
    const sched = new SchedRequest({
      id: this.nextId++,
      priority,
      arrival: this.arrivals++,
      prompt,
      maxLength: prompt.length + maxTokens,
      salt: request.cacheSalt,
      retention: request.retention,
      speculative: request.speculative ?? true,
    });
    const out = new OutputStream({
      tokenizer: this.model.tokenizer,
      stop: request.stop,
      ignoreEos: request.ignoreEos,
      maxTokens,
      maxLength: ctx,
      promptLength: prompt.length,
    });
    this.scheduler.add(sched); // admission control throws before anything is registered
    const live: Live = {
      sched,
      sampler,
      sampling,
      out,
      chan: new Channel(() => this.abort(live, undefined)),
      arrivalMs: performance.now(),
      itl: [],
      draftTokens: 0,
      acceptedDrafts: 0,
      status: 'waiting',
    };
    this.live.set(sched, live);
    if (signal) {
      live.signal = signal;
      live.onAbort = () =>
        this.abort(
          live,
          new KernelError('The request was aborted', { code: 'E_ABORTED', op, arg: 'signal' }),
        );
      signal.addEventListener('abort', live.onAbort, { once: true });
    }
    this.kick();
    const stream = live.chan as unknown as EngineStream;
    Object.defineProperty(stream, 'id', { value: sched.id });
    Object.defineProperty(stream, 'metrics', { value: () => this.metricsOf(live) });
    return stream;
  }

  stats(): EngineStats {
    const c = this.counters;
    const requests: RequestMetrics[] = [];
    for (const l of this.live.values()) requests.push(this.metricsOf(l));
    const s: EngineStats = {
      waiting: this.scheduler.waiting.length,
      running: this.scheduler.running.length,
      finished: c.finished,
      steps: c.steps,
      preemptions: this.scheduler.preemptions,
      promptTokensComputed: c.prompt,
      generatedTokens: c.generated,
      kv: this.blocks.stats(),
      speculative: {
        method: this.spec.method,
        verifySteps: c.verifySteps,
        proposedTokens: c.proposed,
        acceptedTokens: c.accepted,
        acceptanceRate: c.proposed > 0 ? c.accepted / c.proposed : 0,
        tokensPerStep: c.verifySteps > 0 ? c.emittedInVerify / c.verifySteps : 0,
      },
      requests,
    };
    const moe = this.model.moeLoads?.();
    if (moe !== undefined) s.moe = moe;
    return s;
  }

  /** Resolves when no request is waiting or running. */
  async idle(): Promise<void> {
    while (this.loopRunning) await this.loopRunning;
  }

  /** Fails every pending request with E_DISPOSED, waits for the running step, frees the KV pool. */
  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    const err = new KernelError('The engine has been disposed', {
      code: 'E_DISPOSED',
      op: 'Engine.generate',
    });
    for (const l of [...this.live.values()]) this.abort(l, err);
    await this.idle();
    await this.draft?.dispose();
    await this.executor.dispose();
    this.removeAllListeners();
  }

  // ---- internals ----

  private kick(): void {
    if (this.loopRunning || this.disposed) return;
    this.loopRunning = this.loop().then(
      (stalled) => {
        this.loopRunning = undefined;
        // Work that arrived as the loop ended (not a stall: that waits for the next generate()).
        if (!stalled && this.scheduler.hasWork && !this.disposed) this.kick();
      },
      (e: unknown) => {
        // A bug, not a request's fault: fail everything rather than hang every caller.
        this.loopRunning = undefined;
        const err = new KernelError(`The engine loop failed: ${(e as Error)?.message ?? e}`, {
          code: 'E_INTERNAL',
          op: 'Engine.generate',
        });
        for (const l of [...this.live.values()]) this.abort(l, err, 'failed');
      },
    );
  }

  /** emit() that a throwing listener cannot break: its error becomes a process warning. */
  private notify(event: string, arg: unknown): void {
    try {
      this.emit(event, arg);
    } catch (e) {
      process.emitWarning(`A '${event}' listener of the engine threw: ${(e as Error)?.stack ?? e}`);
    }
  }

  /** Runs steps while there is work; true when it stopped because nothing could be scheduled. */
  private async loop(): Promise<boolean> {
    // Let requests queued in the same tick join the first step.
    await new Promise<void>((r) => setImmediate(r));
    while (!this.disposed && this.scheduler.hasWork) {
      if (this.draft) {
        try {
          await this.draft.prepare(this.scheduler.running);
        } catch (e) {
          this.draft.reset();
          this.notify('draftError', e);
        }
        if (this.disposed) break;
      }
      const plan = this.scheduler.schedule();
      if (!plan) return true;
      for (const r of plan.preempted) {
        this.draft?.release(r);
        const l = this.live.get(r);
        if (l) l.status = 'waiting';
        this.notify('preempt', { id: r.id });
      }
      const t0 = performance.now();
      let logits: Float32Array;
      try {
        logits = await this.executor.execute(plan);
      } catch (e) {
        for (const en of plan.entries) {
          const l = this.live.get(en.req);
          if (l) this.abort(l, e as Error, 'failed');
        }
        this.notify('stepError', e);
        continue;
      }
      this.process(plan, logits);
      const info: StepInfo = {
        step: this.counters.steps++,
        rows: plan.tokens.length,
        decodes: plan.entries.filter((e) => e.start >= e.req.promptLength).length,
        prefills: plan.entries.filter((e) => e.start < e.req.promptLength).length,
        drafts: plan.entries.reduce((a, e) => a + e.drafts.length, 0),
        preempted: plan.preempted.length,
        ms: performance.now() - t0,
      };
      this.notify('step', info);
    }
    return false;
  }

  private process(plan: StepPlan, logits: Float32Array): void {
    const V = this.executor.vocab;
    const now = performance.now();
    for (let i = 0; i < plan.entries.length; i++) {
      const e = plan.entries[i];
      const l = this.live.get(e.req);
      if (!l || e.req.status !== 'running') continue; // aborted while the step ran
      if (l.admittedMs === undefined) l.admittedMs = now;
      l.status = 'running';
      const prefillRows = Math.max(0, Math.min(e.start + e.count, e.req.promptLength) - e.start);
      this.counters.prompt += prefillRows;
      if (!e.sample) {
        this.scheduler.complete(e, 0);
        continue;
      }
      const off = plan.logitOffset[i];
      const row = (j: number) => logits.subarray((off + j) * V, (off + j + 1) * V);
      const emitted: SampledToken[] = [];
      let accepted = 0;
      const k = e.drafts.length;
      for (let j = 0; j < k; j++) {
        const d = e.drafts[j];
        const r = this.verify(l, e, j, row(j), d);
        emitted.push(r.token);
        l.sampler.accept(r.token.token);
        if (!r.accepted) break;
        accepted++;
        if (this.wouldFinish(l, emitted)) break;
      }
      if (accepted === k && (k === 0 || !this.wouldFinish(l, emitted))) {
        const s = l.sampler.sample(row(k));
        l.sampler.accept(s.token);
        emitted.push(s);
      }
      if (k > 0) {
        this.counters.verifySteps++;
        this.counters.proposed += k;
        this.counters.accepted += accepted;
        this.counters.emittedInVerify += emitted.length;
        l.draftTokens += k;
        l.acceptedDrafts += accepted;
      }
      this.scheduler.complete(e, accepted);
      this.emitTokens(l, emitted, now);
    }
  }

  /** Whether the step's tokens so far would end the request (EOS or length), before emitting. */
  private wouldFinish(l: Live, emitted: SampledToken[]): boolean {
    return l.out.endsWith(emitted[emitted.length - 1].token, emitted.length);
  }

  /** The acceptance test for draft j (see speculative.ts). */
  private verify(
    l: Live,
    e: StepEntry,
    j: number,
    logits: Float32Array,
    d: number,
  ): { token: SampledToken; accepted: boolean } {
    const s = l.sampler;
    if (s.options.temperature === 0) {
      const t = s.sample(logits); // greedy: no random draw
      return { token: t, accepted: t.token === d };
    }
    const q = this.draft?.distribution(e.req, j);
    const r = acceptDraft(s.distribution(logits), q, d, s.uniform(), () => s.uniform());
    return { token: s.score(logits, r.token), accepted: r.accepted };
  }

  private emitTokens(l: Live, tokens: SampledToken[], now: number): void {
    const sched = l.sched;
    if (tokens.length === 0) return;
    if (l.firstMs === undefined) l.firstMs = now;
    else l.itl.push(now - l.lastMs!);
    l.lastMs = now;
    for (const t of tokens) {
      const chunk = l.out.push(t);
      sched.push([t.token]);
      this.counters.generated++;
      l.chan.push(chunk);
      if (chunk.finishReason) {
        l.finishReason = chunk.finishReason;
        this.finish(l, 'finished');
        return;
      }
    }
  }

  private finish(l: Live, status: RequestMetrics['status']): void {
    l.status = status;
    this.scheduler.remove(l.sched);
    this.draft?.release(l.sched);
    this.live.delete(l.sched);
    if (l.signal && l.onAbort) l.signal.removeEventListener('abort', l.onAbort);
    this.counters.finished++;
    l.chan.close();
    this.notify('finish', this.metricsOf(l));
  }

  /** Abort (err: the iteration rejects with it) or cancel (err undefined: the consumer left). */
  private abort(
    l: Live,
    err: Error | undefined,
    status: RequestMetrics['status'] = 'aborted',
  ): void {
    if (!this.live.has(l.sched)) return;
    // Fail before finish: finish closes the channel, which would resolve a pending next() as
    // a normal end ({ done: true }) instead of rejecting it with err.
    if (err) l.chan.fail(err);
    this.finish(l, status);
  }

  private metricsOf(l: Live): RequestMetrics {
    const s = l.sched;
    const n = s.numOutputs;
    return {
      id: s.id,
      status: l.status,
      finishReason: l.finishReason,
      priority: s.priority,
      promptTokens: s.promptLength,
      outputTokens: n,
      cachedTokens: Math.max(0, s.cachedTokens),
      preemptions: s.preemptions,
      queueMs: l.admittedMs === undefined ? undefined : l.admittedMs - l.arrivalMs,
      ttftMs: l.firstMs === undefined ? undefined : l.firstMs - l.arrivalMs,
      tpotMs: n > 1 && l.firstMs !== undefined ? (l.lastMs! - l.firstMs) / (n - 1) : undefined,
      itlMs: l.itl.slice(),
      draftTokens: l.draftTokens,
      acceptedDrafts: l.acceptedDrafts,
    };
  }
}

/**
 * A single-consumer async queue of chunks. `return()` (the consumer left the loop) calls
 * `onCancel`; `fail` rejects the pending and every later next().
 */
class Channel implements AsyncIterableIterator<GenerateChunk> {
  private items: GenerateChunk[] = [];
  private waiter:
    { resolve: (r: IteratorResult<GenerateChunk>) => void; reject: (e: Error) => void } | undefined;
  private closed = false;
  private error: Error | undefined;
  private readonly onCancel: () => void;

  constructor(onCancel: () => void) {
    this.onCancel = onCancel;
  }

  push(c: GenerateChunk): void {
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = undefined;
      w.resolve({ value: c, done: false });
    } else this.items.push(c);
  }

  close(): void {
    this.closed = true;
    if (this.waiter && this.items.length === 0) {
      const w = this.waiter;
      this.waiter = undefined;
      w.resolve({ value: undefined, done: true });
    }
  }

  fail(e: Error): void {
    this.error = e;
    this.items = [];
    this.closed = true;
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = undefined;
      w.reject(e);
    }
  }

  next(): Promise<IteratorResult<GenerateChunk>> {
    if (this.items.length > 0) return Promise.resolve({ value: this.items.shift()!, done: false });
    if (this.error) return Promise.reject(this.error);
    if (this.closed) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve, reject) => (this.waiter = { resolve, reject }));
  }

  return(): Promise<IteratorResult<GenerateChunk>> {
    if (!this.closed) this.onCancel();
    this.closed = true;
    this.items = [];
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<GenerateChunk> {
    return this;
  }
}

/** An engine over a loaded model (its own KV pool; the model stays usable and is not disposed). */
export async function createEngine(model: Model, options: EngineOptions = {}): Promise<Engine> {
  if (!(model instanceof Model)) throw invalidArg('createEngine', 'model', 'a loaded Model', model);
  if (options === null || typeof options !== 'object')
    throw invalidArg('createEngine', 'options', 'an options object', options);
  const executor = new ModelExecutor(model, options);
  try {
    await model.runtime.synchronize();
    const routing = model.llama.routing as { loads?: () => unknown };
    return new Engine(
      executor,
      {
        contextLength: model.info.contextLength,
        tokenizer: model.tokenizer,
        moeLoads:
          model.info.config.experts > 0 && typeof routing.loads === 'function'
            ? () => routing.loads!()
            : undefined,
      },
      options,
    );
  } catch (e) {
    await executor.dispose();
    throw e;
  }
}
