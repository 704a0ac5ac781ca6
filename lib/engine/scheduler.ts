/**
 * The step scheduler (vLLM V1's invariant, DESIGN.md section 5).
 *
 * Every request has a token list (prompt, then its outputs) and `numComputed`, the tokens whose
 * KV is in the cache. Each step the scheduler lets numComputed chase the token count under a
 * per-step token budget: running requests first (a decode costs 1 token, or 1 + k with
 * speculative drafts; an unfinished prefill takes what budget remains, so a long prompt is
 * computed in chunks and never stalls the decoders), then waiting requests in priority order
 * (higher first, FIFO within a level). The step is one ragged batch: one page table, one
 * attention plan for every layer.
 *
 * KV exhaustion preempts by recompute: the victim is the running request with the lowest
 * priority, latest arrival first; its blocks are freed (their full blocks stay in the prefix
 * cache, so the recompute often hits) and it returns to the waiting queue with its outputs
 * kept, to be re-prefilled as prompt + outputs. Admission control refuses up front any request
 * whose full length (prompt + maxTokens) could not fit in the whole pool, so one request alone
 * always fits and the engine cannot deadlock.
 *
 * The scheduler owns the BlockManager bookkeeping and nothing else: sampling, detokenization
 * and timing are the engine's.
 */
import { KernelError } from '../runtime/errors';
import { BlockManager, buildPageTable, PageTable, RetentionRange, SeqId } from '../kv/index';

export type RequestStatus = 'waiting' | 'running' | 'finished';

/** The scheduler's view of one request. */
export class SchedRequest {
  readonly id: number;
  readonly priority: number;
  /** Arrival order (ties within a priority level go to the earlier one). */
  readonly arrival: number;
  readonly promptLength: number;
  /** Prompt + the most tokens it may reach (admission control sizes it against the pool). */
  readonly maxLength: number;
  readonly salt: string | undefined;
  readonly retention: readonly RetentionRange[] | undefined;
  /** Prompt then outputs; `length` are valid. */
  tokens: Int32Array;
  length: number;
  numComputed = 0;
  seq: SeqId | undefined = undefined;
  status: RequestStatus = 'waiting';
  preemptions = 0;
  /** Prompt tokens served from the prefix cache at the first admission. */
  cachedTokens = -1;
  /** Whether to propose drafts for it. */
  speculative: boolean;

  constructor(args: {
    id: number;
    priority: number;
    arrival: number;
    prompt: Int32Array;
    maxLength: number;
    salt?: string;
    retention?: readonly RetentionRange[];
    speculative?: boolean;
  }) {
    this.id = args.id;
    this.priority = args.priority;
    this.arrival = args.arrival;
    this.promptLength = args.prompt.length;
    this.maxLength = args.maxLength;
    this.salt = args.salt;
    this.retention = args.retention;
    this.speculative = args.speculative ?? true;
    this.tokens = new Int32Array(Math.max(16, args.maxLength + 1));
    this.tokens.set(args.prompt);
    this.length = args.prompt.length;
  }

  get numOutputs(): number {
    return this.length - this.promptLength;
  }

  /** Appends emitted tokens. */
  push(tokens: ArrayLike<number>): void {
    if (this.length + tokens.length > this.tokens.length) {
      const t = new Int32Array(Math.max(this.tokens.length * 2, this.length + tokens.length));
      t.set(this.tokens.subarray(0, this.length));
      this.tokens = t;
    }
    for (let i = 0; i < tokens.length; i++) this.tokens[this.length++] = tokens[i];
  }
}

/** One request's share of a step: query rows `tokens` at positions start .. start + n − 1. */
export interface StepEntry {
  req: SchedRequest;
  /** First position computed this step (= numComputed before the step). */
  start: number;
  /** Real tokens computed (from the request's token list). */
  count: number;
  /** Speculative tokens after them (scored, then verified). */
  drafts: Int32Array;
  /** Whether the step's last real row (and every draft row) produces logits. */
  sample: boolean;
}

export interface StepPlan {
  entries: StepEntry[];
  /** Query-row token ids, in page-table row order. */
  tokens: Int32Array;
  table: PageTable;
  /** Rows whose logits are needed, ascending; entry e's rows are contiguous in it. */
  logitRows: Int32Array;
  /** For each entry, its first index into logitRows (-1 when it needs none). */
  logitOffset: Int32Array;
  /** Requests preempted while building this step. */
  preempted: SchedRequest[];
}

export interface SchedulerOptions {
  /** Query rows per step. */
  maxBatchTokens: number;
  /** Requests holding KV at once. */
  maxRunning: number;
  /**
   * Drafts for a decoding request: returns up to `max` tokens to verify after its last token
   * (called only for requests in the decode phase with room for them).
   */
  propose?: (req: SchedRequest, max: number) => Int32Array;
  /** Most drafts per request per step. */
  maxDrafts?: number;
}

const byPriority = (a: SchedRequest, b: SchedRequest) =>
  b.priority - a.priority || a.arrival - b.arrival;

export class Scheduler {
  readonly blocks: BlockManager;
  readonly options: SchedulerOptions;
  /** Waiting requests, kept sorted by (priority desc, arrival asc). */
  readonly waiting: SchedRequest[] = [];
  readonly running: SchedRequest[] = [];
  preemptions = 0;

  constructor(blocks: BlockManager, options: SchedulerOptions) {
    this.blocks = blocks;
    this.options = options;
  }

  /** Blocks a sequence of `tokens` tokens occupies. */
  blocksFor(tokens: number): number {
    return Math.ceil(tokens / this.blocks.blockSize);
  }

  /** Queues a request (admission control first: it must fit in the whole pool on its own). */
  add(req: SchedRequest): void {
    const need = this.blocksFor(req.maxLength);
    if (need > this.blocks.numBlocks)
      throw new KernelError(
        `The request needs up to ${req.maxLength} tokens of KV (${need} blocks of ` +
          `${this.blocks.blockSize}) but the whole pool has ${this.blocks.numBlocks} blocks: ` +
          'it could never run. Lower maxTokens or give the engine more kvBlocks / kvMemory',
        { code: 'E_KV_EXHAUSTED', op: 'Engine.generate', arg: 'request.maxTokens' },
      );
    this.insertWaiting(req);
  }

  /** Frees the request's KV and removes it from the queues (finish or abort). */
  remove(req: SchedRequest): void {
    if (req.seq !== undefined && this.blocks.hasSequence(req.seq)) this.blocks.free(req.seq);
    req.seq = undefined;
    req.status = 'finished';
    let i = this.running.indexOf(req);
    if (i >= 0) this.running.splice(i, 1);
    i = this.waiting.indexOf(req);
    if (i >= 0) this.waiting.splice(i, 1);
  }

  get hasWork(): boolean {
    return this.running.length > 0 || this.waiting.length > 0;
  }

  /** Builds the next step, or undefined when nothing can run now. */
  schedule(): StepPlan | undefined {
    const o = this.options;
    let budget = o.maxBatchTokens;
    const entries: StepEntry[] = [];
    const preempted: SchedRequest[] = [];
    const bm = this.blocks;
    this.running.sort(byPriority);

    // ---- running requests, highest priority first; victims come off the tail ----
    for (let i = 0; i < this.running.length && budget > 0; i++) {
      const req = this.running[i];
      const todo = req.length - req.numComputed;
      if (todo <= 0) continue; // nothing to compute (cannot happen between steps)
      const n = Math.min(todo, budget);
      let drafts: Int32Array = EMPTY;
      const decoding = todo === 1;
      if (decoding && o.propose && req.speculative && (o.maxDrafts ?? 0) > 0) {
        // Leave room for the token drawn after the drafts: length + drafts + 1 <= maxLength.
        const room = Math.min(o.maxDrafts!, budget - 1, req.maxLength - req.length - 1);
        if (room > 0) {
          drafts = o.propose(req, room);
          if (drafts.length > room) drafts = drafts.subarray(0, room);
          if (drafts.length > 0 && !bm.canAppend(req.seq!, 1 + drafts.length)) drafts = EMPTY;
        }
      }
      // Make room by preempting from the tail (lowest priority, latest arrival).
      let self = false;
      while (!bm.canAppend(req.seq!, n + drafts.length)) {
        const victimIdx = this.running.length - 1;
        if (victimIdx === i) {
          self = true;
          break;
        }
        preempted.push(this.preempt(this.running[victimIdx]));
      }
      if (self) {
        preempted.push(this.preempt(req));
        break;
      }
      const row = req.tokens.subarray(req.numComputed, req.numComputed + n);
      if (drafts.length === 0) bm.append(req.seq!, row);
      else {
        const all = new Int32Array(n + drafts.length);
        all.set(row);
        all.set(drafts, n);
        bm.append(req.seq!, all);
      }
      entries.push({
        req,
        start: req.numComputed,
        count: n,
        drafts,
        sample: req.numComputed + n === req.length,
      });
      budget -= n + drafts.length;
    }

    // ---- waiting requests, unless this step already had to preempt ----
    if (preempted.length === 0) {
      while (this.waiting.length > 0 && budget > 0 && this.running.length < o.maxRunning) {
        const req = this.waiting[0];
        const prompt = req.tokens.subarray(0, req.length);
        const opts = {
          salt: req.salt,
          retention: req.retention,
          maxCachedTokens: req.length - 1,
        };
        const adm = bm.checkAdmission(prompt, opts);
        const n = Math.min(req.length - adm.cachedTokens, budget);
        let cached: number;
        try {
          const a = bm.createSequence(prompt, { ...opts, numNewTokens: n, useWatermark: false });
          req.seq = a.seq;
          cached = a.cachedTokens;
        } catch (e) {
          if (e instanceof KernelError && e.code === 'E_KV_EXHAUSTED') break;
          throw e;
        }
        this.waiting.shift();
        if (req.cachedTokens < 0) req.cachedTokens = cached;
        req.numComputed = cached;
        req.status = 'running';
        this.running.push(req);
        entries.push({
          req,
          start: cached,
          count: n,
          drafts: EMPTY,
          sample: cached + n === req.length,
        });
        budget -= n;
      }
    }
    if (entries.length === 0) {
      // Only possible with preemptions that freed room for nothing scheduled: commit nothing.
      return preempted.length > 0 ? this.schedule() : undefined;
    }

    // ---- the batch: rows in entry order, one page table ----
    let rows = 0;
    let logitCount = 0;
    for (const e of entries) {
      rows += e.count + e.drafts.length;
      if (e.sample) logitCount += 1 + e.drafts.length;
    }
    const tokens = new Int32Array(rows);
    const logitRows = new Int32Array(logitCount);
    const logitOffset = new Int32Array(entries.length).fill(-1);
    let r = 0;
    let l = 0;
    for (let i = 0; i < entries.length; i++) {
      const e = entries[i];
      tokens.set(e.req.tokens.subarray(e.start, e.start + e.count), r);
      tokens.set(e.drafts, r + e.count);
      if (e.sample) {
        logitOffset[i] = l;
        for (let j = 0; j <= e.drafts.length; j++) logitRows[l++] = r + e.count - 1 + j;
      }
      r += e.count + e.drafts.length;
    }
    const table = buildPageTable(
      bm,
      entries.map((e) => e.req.seq!),
    );
    return { entries, tokens, table, logitRows, logitOffset, preempted };
  }

  /**
   * Records a finished step: entry e computed its `count` real tokens plus `acceptedDrafts`
   * of its drafts (their KV stays; the rejected drafts' slots are truncated away).
   */
  complete(e: StepEntry, acceptedDrafts: number): void {
    const req = e.req;
    if (req.status !== 'running' || req.seq === undefined) return; // aborted meanwhile
    req.numComputed = e.start + e.count + acceptedDrafts;
    if (e.drafts.length > acceptedDrafts) this.blocks.truncate(req.seq, req.numComputed);
  }

  private preempt(req: SchedRequest): SchedRequest {
    this.blocks.free(req.seq!);
    req.seq = undefined;
    req.numComputed = 0;
    req.status = 'waiting';
    req.preemptions++;
    this.preemptions++;
    this.running.splice(this.running.indexOf(req), 1);
    this.insertWaiting(req);
    return req;
  }

  private insertWaiting(req: SchedRequest): void {
    req.status = 'waiting';
    // Binary search for the first element that sorts after req.
    let lo = 0;
    let hi = this.waiting.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (byPriority(this.waiting[mid], req) <= 0) lo = mid + 1;
      else hi = mid;
    }
    this.waiting.splice(lo, 0, req);
  }
}

const EMPTY = new Int32Array(0);
