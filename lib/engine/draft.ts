/**
 * Draft-model speculation: a smaller model with the same tokenizer proposes k tokens per
 * decoding request, autoregressively, in k batched forward steps over a KV pool of its own;
 * the target then verifies them in its ordinary step (engine.ts, speculative.ts).
 *
 * The draft's KV mirrors each request's tokens lazily: before proposing, the draft sequence is
 * cut back to its longest common prefix with the request's tokens (rejected drafts, or
 * drafts never verified because the step had no budget for them), and the missing tokens are
 * computed in the first draft step. Drafts are drawn from the draft's own distribution q
 * (same sampling options as the request, a fresh seeded stream per round so draws stay
 * independent of the target's acceptance draws); q is kept for the acceptance test.
 */
import { KernelError } from '../runtime/errors';
import { BlockManager, buildPageTable, SeqId } from '../kv/index';
import { Model } from '../model/model';
import { Sampler, SamplingDistribution, SamplingOptions } from '../model/sampler';
import type { KvCache } from '../ops/attention';
import { Executor } from './executor';
import { SchedRequest } from './scheduler';

interface DraftState {
  seq: SeqId | undefined;
  drafts: Int32Array;
  q: SamplingDistribution[];
  round: number;
}

export class DraftProposer {
  readonly k: number;
  private readonly model: Model;
  private readonly cache: KvCache;
  private readonly blocks: BlockManager;
  private readonly state = new Map<SchedRequest, DraftState>();
  private readonly optionsOf: (req: SchedRequest) => SamplingOptions;

  constructor(
    model: Model,
    target: Executor,
    k: number,
    optionsOf: (req: SchedRequest) => SamplingOptions,
  ) {
    const op = 'createEngine';
    if (!(model instanceof Model))
      throw new KernelError('speculative.model must be a loaded Model', {
        code: 'E_INVALID_ARG',
        op,
        arg: 'options.speculative.model',
      });
    if (model.info.config.vocab !== target.vocab)
      throw new KernelError(
        `The draft model has ${model.info.config.vocab} tokens but the target has ${target.vocab}: ` +
          'they must share the tokenizer',
        { code: 'E_INVALID_ARG', op, arg: 'options.speculative.model' },
      );
    this.model = model;
    this.k = k;
    this.optionsOf = optionsOf;
    const llama = model.llama;
    // As many token slots as the target's pool: the draft never runs out first.
    const blocks = Math.ceil((target.numBlocks * target.blockSize) / llama.blockSize) + 1;
    this.cache = llama.createCache(blocks, 'f16');
    this.blocks = new BlockManager({ numBlocks: blocks, blockSize: llama.blockSize });
  }

  /** Proposes drafts for every decoding request of `running` (k batched draft steps). */
  async prepare(running: readonly SchedRequest[]): Promise<void> {
    const reqs = running.filter(
      (r) => r.speculative && r.length - r.numComputed === 1 && r.maxLength - r.length > 1,
    );
    for (const st of this.state.values()) {
      st.drafts = EMPTY;
      st.q = [];
    }
    if (reqs.length === 0 || this.k === 0) return;
    const V = this.model.info.config.vocab;
    const bm = this.blocks;
    // Sync each draft sequence with its request: keep the common prefix, queue the rest.
    const active: { req: SchedRequest; st: DraftState; sampler: Sampler; k: number }[] = [];
    for (const req of reqs) {
      let st = this.state.get(req);
      if (!st) this.state.set(req, (st = { seq: undefined, drafts: EMPTY, q: [], round: 0 }));
      const k = Math.min(this.k, req.maxLength - req.length - 1);
      try {
        if (st.seq !== undefined) {
          const have = bm.sequenceTokens(st.seq);
          let c = 0;
          const n = Math.min(have.length, req.length - 1);
          while (c < n && have[c] === req.tokens[c]) c++;
          bm.truncate(st.seq, c);
          bm.append(st.seq, req.tokens.subarray(c, req.length));
        } else {
          const prompt = req.tokens.subarray(0, req.length);
          st.seq = bm.createSequence(prompt, { maxCachedTokens: req.length - 1 }).seq;
        }
      } catch (e) {
        if (!(e instanceof KernelError && e.code === 'E_KV_EXHAUSTED')) throw e;
        this.release(req); // no room: no drafts for it this round
        continue;
      }
      const opts = this.optionsOf(req);
      const sampler = new Sampler(V, {
        ...opts,
        seed: mixSeed(opts.seed ?? 0, req.id, st.round++),
      });
      sampler.acceptMany(req.tokens.subarray(0, req.length));
      active.push({ req, st, sampler, k });
    }
    const drafts = active.map((a) => new Int32Array(a.k));
    for (let step = 0; step < this.k && active.length > 0; step++) {
      // Step 0 computes each sequence's uncommitted tokens; later steps feed the last draft.
      // A request released while a draft step ran (aborted, engine disposed) drops out: its
      // draft sequence is gone.
      let live = active.filter((a) => a.k > step && this.state.get(a.req) === a.st);
      if (step > 0) {
        for (const a of live) {
          try {
            bm.append(a.st.seq!, [drafts[active.indexOf(a)][step - 1]]);
          } catch (e) {
            // The draft pool mirrors the target's tokens plus up to k - 1 drafts per request,
            // so it can run out when the target's pool is full: this request stops drafting
            // here (keeping its drafts so far) instead of failing the round for everyone.
            if (!(e instanceof KernelError && e.code === 'E_KV_EXHAUSTED')) throw e;
            a.k = step;
          }
        }
        live = live.filter((a) => a.k > step);
      }
      if (live.length === 0) break;
      // Others that stopped drafting keep no uncommitted tokens (they were not appended).
      const table = buildPageTable(
        bm,
        live.map((a) => a.st.seq!),
      );
      const tokens = new Int32Array(table.numTokens);
      const logitRows = new Int32Array(live.length);
      for (let b = 0; b < live.length; b++) {
        const seqTokens = bm.sequenceTokens(live[b].st.seq!);
        const q0 = table.qoIndptr[b];
        const q1 = table.qoIndptr[b + 1];
        tokens.set(seqTokens.subarray(seqTokens.length - (q1 - q0)), q0);
        logitRows[b] = q1 - 1;
      }
      const t = await this.model.llama.forward({ tokens, table, logitRows, cache: this.cache });
      let logits: Float32Array;
      try {
        logits = (await t.read()) as Float32Array;
      } finally {
        t.dispose();
      }
      for (let b = 0; b < live.length; b++) {
        const a = live[b];
        const row = logits.subarray(b * V, (b + 1) * V);
        a.st.q.push(a.sampler.distribution(row));
        const d = a.sampler.sample(row).token;
        a.sampler.accept(d);
        drafts[active.indexOf(a)][step] = d;
      }
    }
    for (let i = 0; i < active.length; i++)
      active[i].st.drafts = drafts[i].subarray(0, active[i].k);
  }

  /** The drafts prepared for `req` (at most `max`). */
  drafts(req: SchedRequest, max: number): Int32Array {
    const d = this.state.get(req)?.drafts ?? EMPTY;
    return d.length > max ? d.subarray(0, max) : d;
  }

  /** q for draft j of the current round. */
  distribution(req: SchedRequest, j: number): SamplingDistribution | undefined {
    return this.state.get(req)?.q[j];
  }

  /** Frees the request's draft sequence. */
  release(req: SchedRequest): void {
    const st = this.state.get(req);
    if (!st) return;
    if (st.seq !== undefined && this.blocks.hasSequence(st.seq)) this.blocks.free(st.seq);
    this.state.delete(req);
  }

  /** Drops every draft sequence (after a failed draft step). */
  reset(): void {
    for (const r of [...this.state.keys()]) this.release(r);
  }

  async dispose(): Promise<void> {
    this.reset();
    try {
      await this.model.runtime.synchronize();
    } catch {
      /* reported already */
    }
    this.cache.dispose();
  }
}

/** A per-round seed (splitmix-style mixing keeps the rounds' streams unrelated). */
function mixSeed(seed: number, id: number, round: number): number {
  let h = (seed ^ Math.imul(id, 0x9e3779b1) ^ Math.imul(round + 1, 0x85ebca6b)) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x7feb352d) >>> 0;
  h = Math.imul(h ^ (h >>> 15), 0x846ca68b) >>> 0;
  return (h ^ (h >>> 16)) >>> 0;
}

const EMPTY = new Int32Array(0);
