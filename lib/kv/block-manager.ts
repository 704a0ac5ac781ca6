/**
 * The paged KV block manager (DESIGN.md section 4): a preallocated pool of `numBlocks`
 * physical blocks of `blockSize` token slots, reference counts, copy-on-write forks, automatic
 * prefix caching with chained block hashes, and LRU eviction with retention priorities.
 * Pure TypeScript: it never touches KV memory. It decides which block every token's K/V lives
 * in; the native kernels (kvAppend, attention, kvCopyBlocks) do the memory work from the page
 * table (see page-table.ts) and the block copies this class asks for.
 *
 * ## Block states
 * Every block is in exactly one state, and used + free + evictable == numBlocks always:
 * - used: referenced by at least one sequence, or pinned by a pending block copy;
 * - evictable: in the prefix cache with no reference (its KV is kept until the memory is needed);
 * - free: neither.
 * "Available" blocks are free + evictable: an allocation takes a free block first, else evicts.
 *
 * ## Steps
 * The manager follows the engine's steps. Between two steps the scheduler calls
 * createSequence / append / fork / truncate / free; then `commitStep()` (which
 * `buildPageTable` calls) closes the step: it returns the block copies to run before the step's
 * kvAppend, and declares every token appended so far as computed by this step. Only then do the
 * step's full blocks enter the prefix cache, so a prefix hit can never see a block whose KV has
 * not been scheduled for computation (a sequence freed before the commit takes its uncommitted
 * blocks with it). A sequence can be forked only when it has no uncommitted tokens (fork after
 * the step that computed them, as parallel sampling does), so no step computes a token twice
 * and a copy-on-write copy only ever copies computed KV.
 *
 * ## Copy-on-write
 * `fork` shares every block (ref count + 1). Full blocks are immutable, so they stay shared for
 * ever. The partially filled last block is shared too; the first sequence that writes into it
 * while it is shared gets a fresh copy: `append` returns the copy (src -> dst) and queues it for
 * `commitStep()`. Until that commit both blocks are pinned (they cannot be freed or reused), so
 * within one step's copy list destinations are distinct and never sources, as kvCopyBlocks
 * requires. Run each copy once, before the step's kvAppend: either the ones `append` returns,
 * or (recommended) the batch `commitStep()` / the page table returns, not both.
 * A sole holder writing into a partial block that is in the prefix cache (possible after
 * `truncate`) removes it (and its cached descendants) from the cache instead of copying.
 *
 * ## Prefix caching
 * A full committed block is keyed by a chained hash (hash.ts) of (parent hash, token ids,
 * salt for the first block). `createSequence` matches the longest chain of cached blocks for
 * the prompt (by default at most prompt.length - 1 tokens, so the last prompt token is always
 * computed and yields logits), takes them (ref + 1) and reports `cachedTokens` so the caller
 * skips their prefill. Hits are verified: the candidate's stored token ids, its parent block (by
 * identity) and its salt must match, so a hash collision can never return wrong KV. Several
 * blocks may carry the same key (two sequences that computed the same prefix in one step); the
 * lookup searches all of them breadth-first for the longest verified chain.
 *
 * ## Eviction
 * Only leaves of the cached prefix tree are evicted (a block with cached children is evicted
 * after them, so the deepest block of a chain goes first and no cached block is ever orphaned).
 * Among evictable leaves the victim is the one with the lowest retention priority, then the
 * least recently used (a logical clock read when its last reference went away; a sequence's
 * blocks released together share one tick), then the deepest.
 * A sequence's retention ranges give its blocks priorities (default `defaultPriority`); a cached
 * block keeps the highest priority any of its holders gave it until it is evicted, so e.g. a
 * system prompt marked with priority 100 is evicted only after every lower-priority leaf.
 *
 * ## Failure
 * Every mutating call validates and computes its whole need before changing anything: an
 * append or admission that does not fit throws KernelError E_KV_EXHAUSTED (the message says how
 * many blocks were needed and how many were available) and leaves the state exactly as before.
 */
import { invalidArg, KernelError } from '../runtime/errors';
import { BlockHash, BlockHashFn, fnv1aBlockHash } from './hash';

export type SeqId = number;

/** Token range [start, end) of a sequence whose cached blocks get `priority` (higher = kept longer). */
export interface RetentionRange {
  start: number;
  /** Exclusive; default: no end. */
  end?: number;
  priority: number;
}

export interface BlockManagerOptions {
  /** Physical blocks in the pool (>= 1). */
  numBlocks: number;
  /** Token slots per block (>= 1; 16 is usual). */
  blockSize: number;
  /** Automatic prefix caching. Default true. */
  enablePrefixCaching?: boolean;
  /**
   * Fraction of the pool in [0, 1) that admission (createSequence) keeps free for the running
   * sequences' growth. Appends ignore it unless asked. Default 0.
   */
  watermark?: number;
  /** Retention priority of blocks outside every retention range. Default 0. */
  defaultPriority?: number;
  /** Block hash; default 64-bit FNV-1a (hash.ts). Injectable to test collision handling. */
  hashFn?: BlockHashFn;
}

export interface CreateSequenceOptions {
  /** Per-tenant salt: prompts with different salts never share cached blocks. */
  salt?: string;
  /** Look up and register cached blocks for this sequence (and its forks). Default: the manager's setting. */
  cache?: boolean;
  /** Retention ranges over this sequence's token positions. */
  retention?: readonly RetentionRange[];
  /**
   * Upper bound on the tokens taken from the cache. Default prompt.length - 1 (the last prompt
   * token must be computed to produce logits); pass prompt.length to allow a full hit.
   */
  maxCachedTokens?: number;
  /**
   * Prompt tokens after the cached prefix to allocate slots for now (chunked prefill).
   * Default: all of them. The rest are appended later with `append`.
   */
  numNewTokens?: number;
  /** Keep the watermark free (admission control). Default true. */
  useWatermark?: boolean;
}

export interface SequenceAllocation {
  seq: SeqId;
  /** Leading prompt tokens whose KV came from the prefix cache (a multiple of blockSize). */
  cachedTokens: number;
  /** Tokens the sequence now holds slots for: cachedTokens + numNewTokens. */
  length: number;
}

export interface AdmissionCheck {
  ok: boolean;
  cachedTokens: number;
  /** Blocks the admission takes out of the available pool (new blocks + evictable cached blocks it reuses). */
  blocksNeeded: number;
  /** Available blocks (free + evictable) minus the watermark when it applies. */
  blocksAvailable: number;
  /** Why it does not fit, when it does not. */
  reason?: string;
}

export interface PrefixMatch {
  cachedTokens: number;
  /** The matched physical blocks, in position order. */
  blocks: Int32Array;
}

/** One block copy: copy every layer's K/V (and scales) of block `src` into block `dst`. */
export interface BlockCopy {
  src: number;
  dst: number;
}

export interface StepCommit {
  /** Pending block copies as [src0, dst0, src1, dst1, ...], the layout kvCopyBlocks takes. */
  copies: Int32Array;
  /** Blocks that entered the prefix cache with this commit. */
  registeredBlocks: number;
}

export interface KvCacheStats {
  numBlocks: number;
  blockSize: number;
  /** Blocks referenced by a sequence or pinned by a pending copy. */
  usedBlocks: number;
  /** Blocks neither used nor cached. */
  freeBlocks: number;
  /** Cached blocks with no reference (kept until their memory is needed). */
  evictableBlocks: number;
  /** Blocks in the prefix cache, used or not. */
  cachedBlocks: number;
  /** free + evictable. */
  availableBlocks: number;
  /** usedBlocks / numBlocks. */
  usage: number;
  numSequences: number;
  /** Prompt tokens looked up in the prefix cache by successful createSequence calls. */
  prefixQueryTokens: number;
  /** Of those, tokens served from the cache. */
  prefixHitTokens: number;
  /** prefixHitTokens / prefixQueryTokens (0 when nothing was queried). */
  prefixHitRate: number;
  /** Cached blocks evicted to make room. */
  evictions: number;
  /** Copy-on-write block copies issued. */
  cowCopies: number;
  /** Copies issued but not yet returned by commitStep(). */
  pendingCopies: number;
  /** Committed steps. */
  steps: number;
}

/** Read-only view of a sequence's state; valid until the next mutating call. */
export interface SequenceView {
  readonly id: SeqId;
  /** Tokens with allocated slots. */
  readonly length: number;
  /** Tokens computed by committed steps (length - committedLength are new this step). */
  readonly committedLength: number;
  /** Physical blocks, in position order: ceil(length / blockSize) of them. */
  readonly blocks: readonly number[];
}

export interface BlockInfo {
  refCount: number;
  pins: number;
  cached: boolean;
  hash: BlockHash | undefined;
  /** Parent block in the cached prefix tree (-1: first block of a chain or not cached). */
  parent: number;
  depth: number;
  priority: number;
  lastUse: number;
}

interface Seq {
  id: SeqId;
  blocks: number[];
  length: number;
  committed: number;
  /** Leading blocks known to be in the prefix cache. */
  registered: number;
  salt: string | undefined;
  cache: boolean;
  retention: RetentionRange[];
}

const NONE = -1;
const MAX_TOKEN = 0x7fffffff;

function isPosInt(v: unknown): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= 1;
}
function isNonNegInt(v: unknown): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= 0;
}

export class BlockManager {
  readonly numBlocks: number;
  readonly blockSize: number;
  readonly enablePrefixCaching: boolean;
  readonly watermarkBlocks: number;
  readonly defaultPriority: number;
  private readonly hashFn: BlockHashFn;

  // ---- per-block state ----
  private readonly ref: Int32Array;
  private readonly pins: Int32Array;
  private readonly pendingDst: Uint8Array;
  private readonly cached: Uint8Array;
  private readonly hashes: BigUint64Array;
  private readonly salts: (string | undefined)[];
  private readonly parent: Int32Array;
  private readonly depth: Int32Array;
  private readonly firstChild: Int32Array;
  private readonly nextSibling: Int32Array;
  private readonly prevSibling: Int32Array;
  private readonly nextInBucket: Int32Array;
  private readonly priority: Float64Array;
  private readonly lastUse: Float64Array;
  /** Token id of every slot, as written: slots[block * blockSize + offset]. */
  private readonly slots: Int32Array;

  // ---- pools ----
  private readonly freeStack: Int32Array;
  private freeTop = 0;
  private numEvictable = 0;
  private numCached = 0;
  private readonly buckets = new Map<BlockHash, number>();
  /** Min-heap of evictable leaves (indexed: heapPos[b] = index or -1). */
  private readonly heap: Int32Array;
  private readonly heapPos: Int32Array;
  private heapSize = 0;

  // ---- sequences and steps ----
  private readonly seqs = new Map<SeqId, Seq>();
  private readonly dirty = new Set<SeqId>();
  private nextSeqId = 0;
  private clock = 1;
  private pending: number[] = [];

  // ---- statistics ----
  private queryTokens = 0;
  private hitTokens = 0;
  private evictions = 0;
  private cowCopies = 0;
  private steps = 0;

  constructor(options: BlockManagerOptions) {
    const op = 'BlockManager';
    if (options === null || typeof options !== 'object')
      throw invalidArg(op, 'options', 'an object', options);
    if (!isPosInt(options.numBlocks) || options.numBlocks > 0x3fffffff)
      throw invalidArg(op, 'numBlocks', 'an integer in [1, 2^30)', options.numBlocks);
    if (!isPosInt(options.blockSize) || options.blockSize > 65536)
      throw invalidArg(op, 'blockSize', 'an integer in [1, 65536]', options.blockSize);
    if (options.numBlocks * options.blockSize > 0x7fffffff)
      throw invalidArg(
        op,
        'numBlocks',
        `at most ${Math.floor(0x7fffffff / options.blockSize)} blocks of ${options.blockSize} tokens (slots must fit in int32)`,
        options.numBlocks,
      );
    const wm = options.watermark ?? 0;
    if (typeof wm !== 'number' || !(wm >= 0 && wm < 1))
      throw invalidArg(op, 'watermark', 'a number in [0, 1)', wm);
    const dp = options.defaultPriority ?? 0;
    if (typeof dp !== 'number' || !Number.isFinite(dp))
      throw invalidArg(op, 'defaultPriority', 'a finite number', dp);
    if (options.hashFn !== undefined && typeof options.hashFn !== 'function')
      throw invalidArg(op, 'hashFn', 'a function', options.hashFn);
    const n = options.numBlocks;
    this.numBlocks = n;
    this.blockSize = options.blockSize;
    this.enablePrefixCaching = options.enablePrefixCaching ?? true;
    this.watermarkBlocks = Math.floor(wm * n);
    this.defaultPriority = dp;
    this.hashFn = options.hashFn ?? fnv1aBlockHash;

    this.ref = new Int32Array(n);
    this.pins = new Int32Array(n);
    this.pendingDst = new Uint8Array(n);
    this.cached = new Uint8Array(n);
    this.hashes = new BigUint64Array(n);
    this.salts = new Array<string | undefined>(n).fill(undefined);
    this.parent = new Int32Array(n).fill(NONE);
    this.depth = new Int32Array(n);
    this.firstChild = new Int32Array(n).fill(NONE);
    this.nextSibling = new Int32Array(n).fill(NONE);
    this.prevSibling = new Int32Array(n).fill(NONE);
    this.nextInBucket = new Int32Array(n).fill(NONE);
    this.priority = new Float64Array(n);
    this.lastUse = new Float64Array(n);
    this.slots = new Int32Array(n * this.blockSize);
    this.freeStack = new Int32Array(n);
    // Pop order 0, 1, 2, ...
    for (let i = 0; i < n; i++) this.freeStack[i] = n - 1 - i;
    this.freeTop = n;
    this.heap = new Int32Array(n);
    this.heapPos = new Int32Array(n).fill(NONE);
  }

  // =========================================================================================
  // Queries
  // =========================================================================================

  get numFreeBlocks(): number {
    return this.freeTop;
  }
  get numEvictableBlocks(): number {
    return this.numEvictable;
  }
  get numCachedBlocks(): number {
    return this.numCached;
  }
  get numUsedBlocks(): number {
    return this.numBlocks - this.freeTop - this.numEvictable;
  }
  get numSequences(): number {
    return this.seqs.size;
  }

  /** Blocks an allocation can take now: free + evictable, minus the watermark if asked. */
  availableBlocks(useWatermark = false): number {
    return this.freeTop + this.numEvictable - (useWatermark ? this.watermarkBlocks : 0);
  }

  /** Whether `numBlocks` blocks can be allocated now (watermark applied by default). */
  canAllocate(numBlocks: number, options: { useWatermark?: boolean } = {}): boolean {
    if (!isNonNegInt(numBlocks))
      throw invalidArg(
        'BlockManager.canAllocate',
        'numBlocks',
        'a non-negative integer',
        numBlocks,
      );
    return numBlocks <= this.availableBlocks(options?.useWatermark ?? true);
  }

  /** Blocks `append(seq, numTokens tokens)` would take from the pool (new blocks + a copy-on-write copy). */
  blocksNeededToAppend(seq: SeqId, numTokens: number): number {
    const s = this.seqArg('BlockManager.blocksNeededToAppend', seq);
    if (!isNonNegInt(numTokens))
      throw invalidArg(
        'BlockManager.blocksNeededToAppend',
        'numTokens',
        'a non-negative integer',
        numTokens,
      );
    return this.appendNeed(s, numTokens);
  }

  /** Whether `append(seq, numTokens tokens)` fits now (watermark not applied by default). */
  canAppend(seq: SeqId, numTokens: number, options: { useWatermark?: boolean } = {}): boolean {
    return (
      this.blocksNeededToAppend(seq, numTokens) <=
      this.availableBlocks(options?.useWatermark ?? false)
    );
  }

  /** What `createSequence(prompt, options)` would do, without doing it. */
  checkAdmission(prompt: ArrayLike<number>, options: CreateSequenceOptions = {}): AdmissionCheck {
    const op = 'BlockManager.checkAdmission';
    const tokens = this.tokensArg(op, 'prompt', prompt);
    const plan = this.planAdmission(op, tokens, options);
    const check: AdmissionCheck = {
      ok: plan.need <= plan.available,
      cachedTokens: plan.cachedTokens,
      blocksNeeded: plan.need,
      blocksAvailable: plan.available,
    };
    if (!check.ok) check.reason = this.exhaustedMessage(op, plan.need, plan.newTokens, plan.wm);
    return check;
  }

  /** The longest verified cached prefix of `prompt` (no side effects, no statistics). */
  lookupPrefix(
    prompt: ArrayLike<number>,
    options: { salt?: string; maxCachedTokens?: number } = {},
  ): PrefixMatch {
    const op = 'BlockManager.lookupPrefix';
    const tokens = this.tokensArg(op, 'prompt', prompt);
    const o = options ?? {};
    if (o.salt !== undefined && typeof o.salt !== 'string')
      throw invalidArg(op, 'options.salt', 'a string', o.salt);
    const max = this.maxCachedArg(op, tokens.length, o.maxCachedTokens);
    const path = this.enablePrefixCaching ? this.lookup(tokens, o.salt, max) : [];
    return { cachedTokens: path.length * this.blockSize, blocks: Int32Array.from(path) };
  }

  hasSequence(seq: SeqId): boolean {
    return this.seqs.has(seq);
  }

  /** Live sequence ids, in creation order. */
  sequenceIds(): SeqId[] {
    return [...this.seqs.keys()];
  }

  /** Sequences holding tokens appended since the last commitStep(). */
  uncommittedSequences(): SeqId[] {
    return [...this.dirty];
  }

  sequenceLength(seq: SeqId): number {
    return this.seqArg('BlockManager.sequenceLength', seq).length;
  }

  /** A read-only view of the sequence (no copy); valid until the next mutating call. */
  sequenceView(seq: SeqId): SequenceView {
    const s = this.seqArg('BlockManager.sequenceView', seq);
    return { id: s.id, length: s.length, committedLength: s.committed, blocks: s.blocks };
  }

  /** The physical blocks of the sequence, in position order (a copy). */
  blockTable(seq: SeqId): Int32Array {
    return Int32Array.from(this.seqArg('BlockManager.blockTable', seq).blocks);
  }

  /** The token ids the sequence's slots hold (a copy), as written by append. */
  sequenceTokens(seq: SeqId): Int32Array {
    const s = this.seqArg('BlockManager.sequenceTokens', seq);
    const out = new Int32Array(s.length);
    const bs = this.blockSize;
    for (let i = 0; i < s.length; i++) out[i] = this.slots[s.blocks[(i / bs) | 0] * bs + (i % bs)];
    return out;
  }

  /** The token ids recorded in a block's slots (a copy; only the filled prefix is meaningful). */
  blockTokens(block: number): Int32Array {
    this.blockArg('BlockManager.blockTokens', block);
    return this.slots.slice(block * this.blockSize, (block + 1) * this.blockSize);
  }

  blockInfo(block: number): BlockInfo {
    this.blockArg('BlockManager.blockInfo', block);
    const c = this.cached[block] === 1;
    return {
      refCount: this.ref[block],
      pins: this.pins[block],
      cached: c,
      hash: c ? this.hashes[block] : undefined,
      parent: c ? this.parent[block] : NONE,
      depth: c ? this.depth[block] : 0,
      priority: this.priority[block],
      lastUse: this.lastUse[block],
    };
  }

  stats(): KvCacheStats {
    const used = this.numUsedBlocks;
    return {
      numBlocks: this.numBlocks,
      blockSize: this.blockSize,
      usedBlocks: used,
      freeBlocks: this.freeTop,
      evictableBlocks: this.numEvictable,
      cachedBlocks: this.numCached,
      availableBlocks: this.freeTop + this.numEvictable,
      usage: used / this.numBlocks,
      numSequences: this.seqs.size,
      prefixQueryTokens: this.queryTokens,
      prefixHitTokens: this.hitTokens,
      prefixHitRate: this.queryTokens > 0 ? this.hitTokens / this.queryTokens : 0,
      evictions: this.evictions,
      cowCopies: this.cowCopies,
      pendingCopies: this.pending.length / 2,
      steps: this.steps,
    };
  }

  /** Zeroes the counters (hit rate, evictions, copies); the pool is untouched. */
  resetStats(): void {
    this.queryTokens = 0;
    this.hitTokens = 0;
    this.evictions = 0;
    this.cowCopies = 0;
  }

  // =========================================================================================
  // Mutations
  // =========================================================================================

  /**
   * Admits a sequence: takes the longest cached prefix of `prompt` (ref + 1 on each block) and
   * allocates slots for the next `numNewTokens` prompt tokens (default: the rest). Throws
   * E_KV_EXHAUSTED, changing nothing, when that does not fit (the watermark applies by default).
   */
  createSequence(
    prompt: ArrayLike<number> = [],
    options: CreateSequenceOptions = {},
  ): SequenceAllocation {
    const op = 'BlockManager.createSequence';
    const tokens = this.tokensArg(op, 'prompt', prompt);
    const plan = this.planAdmission(op, tokens, options);
    if (plan.need > plan.available) throw this.exhausted(op, plan.need, plan.newTokens, plan.wm);

    // ---- commit: nothing below can fail ----
    const s: Seq = {
      id: this.nextSeqId++,
      blocks: [],
      length: 0,
      committed: 0,
      registered: 0,
      salt: options.salt,
      cache: plan.cache,
      retention: plan.retention,
    };
    for (const b of plan.path) {
      this.incRef(b);
      s.blocks.push(b);
    }
    s.length = s.committed = plan.cachedTokens;
    s.registered = plan.path.length;
    this.seqs.set(s.id, s);
    if (plan.cache) {
      this.queryTokens += tokens.length;
      this.hitTokens += plan.cachedTokens;
    }
    this.writeTokens(s, tokens.subarray(plan.cachedTokens, plan.cachedTokens + plan.newTokens));
    return { seq: s.id, cachedTokens: plan.cachedTokens, length: s.length };
  }

  /**
   * Allocates slots for `tokens` at the end of the sequence (a prefill chunk, a decoded token,
   * speculative tokens). Returns the block copies this needed (at most one: the shared partial
   * last block; they are also queued for commitStep()). Throws E_KV_EXHAUSTED, changing nothing,
   * when the pool cannot provide the blocks (the watermark does not apply unless asked).
   */
  append(
    seq: SeqId,
    tokens: ArrayLike<number>,
    options: { useWatermark?: boolean } = {},
  ): BlockCopy[] {
    const op = 'BlockManager.append';
    const s = this.seqArg(op, seq);
    const t = this.tokensArg(op, 'tokens', tokens);
    if (t.length === 0) return [];
    const need = this.appendNeed(s, t.length);
    const wm = options?.useWatermark ? this.watermarkBlocks : 0;
    const available = this.freeTop + this.numEvictable - wm;
    if (need > available) throw this.exhausted(op, need, t.length, wm);
    const bs = this.blockSize;
    const off = s.length % bs;
    const copies: BlockCopy[] = [];
    if (off !== 0) {
      const last = s.blocks[s.blocks.length - 1];
      if (this.ref[last] > 1) {
        // Unreachable: a pending copy's destination belongs to a sequence with uncommitted
        // tokens, which can be neither forked nor hit. Kept so the copy list stays valid.
        if (this.pendingDst[last])
          throw new KernelError(
            `${op}: block ${last} would be both a copy destination and a source in one step`,
            { code: 'E_INTERNAL', op, backend: 'js' },
          );
        // ---- commit: nothing below can fail ----
        const dst = this.allocBlock();
        this.slots.copyWithin(dst * bs, last * bs, last * bs + off);
        this.pins[last]++;
        this.pins[dst]++;
        this.pendingDst[dst] = 1;
        this.pending.push(last, dst);
        this.cowCopies++;
        copies.push({ src: last, dst });
        s.blocks[s.blocks.length - 1] = dst;
        this.decRef(last, this.seqPriority(s, s.blocks.length - 1), this.clock++);
      } else if (this.cached[last]) {
        // Sole holder writing into a cached block (after truncate): it stops being cacheable.
        this.uncacheSubtree(last);
        s.registered = Math.min(s.registered, s.blocks.length - 1);
      }
    }
    this.writeTokens(s, t);
    return copies;
  }

  /**
   * A new sequence sharing every block of `seq` (copy-on-write for the partial last block),
   * with its salt, caching setting and retention ranges. Never allocates. The sequence must
   * have no uncommitted tokens (fork after the step that computes them: E_INVALID_ARG
   * otherwise), so a step never computes one token twice and copies only computed KV.
   */
  fork(seq: SeqId): SeqId {
    const op = 'BlockManager.fork';
    const s = this.seqArg(op, seq);
    if (s.committed < s.length)
      throw new KernelError(
        `${op}: sequence ${seq} has ${s.length - s.committed} uncommitted token(s); fork it after ` +
          'the step that computes them (after commitStep() / buildPageTable), so that the forks ' +
          'do not both compute them',
        { code: 'E_INVALID_ARG', op, arg: 'seq', backend: 'js' },
      );
    const c: Seq = {
      id: this.nextSeqId++,
      blocks: s.blocks.slice(),
      length: s.length,
      committed: s.committed,
      registered: s.registered,
      salt: s.salt,
      cache: s.cache,
      retention: s.retention.slice(),
    };
    for (const b of c.blocks) this.incRef(b);
    this.seqs.set(c.id, c);
    if (this.dirty.has(s.id)) this.dirty.add(c.id);
    return c.id;
  }

  /**
   * Drops the last tokens so the sequence holds `length` (e.g. rejected speculative tokens).
   * Blocks past the end are released (cached ones stay cached); the next append into a
   * partial block that is shared or cached copies it or uncaches it first.
   */
  truncate(seq: SeqId, length: number): void {
    const op = 'BlockManager.truncate';
    const s = this.seqArg(op, seq);
    if (!isNonNegInt(length) || length > s.length)
      throw invalidArg(op, 'length', `an integer in [0, ${s.length}]`, length);
    const keep = Math.ceil(length / this.blockSize);
    const clock = this.clock++;
    for (let i = s.blocks.length - 1; i >= keep; i--)
      this.decRef(s.blocks[i], this.seqPriority(s, i), clock);
    s.blocks.length = keep;
    s.length = length;
    s.committed = Math.min(s.committed, length);
    s.registered = Math.min(s.registered, Math.floor(length / this.blockSize));
    if (s.length === s.committed) this.dirty.delete(s.id);
  }

  /** Releases every block of the sequence (cached ones become evictable, tail first). */
  free(seq: SeqId): void {
    const s = this.seqArg('BlockManager.free', seq);
    const clock = this.clock++;
    for (let i = s.blocks.length - 1; i >= 0; i--)
      this.decRef(s.blocks[i], this.seqPriority(s, i), clock);
    s.blocks.length = 0;
    this.seqs.delete(s.id);
    this.dirty.delete(s.id);
  }

  /** Replaces the sequence's retention ranges (they apply when its blocks are released). */
  setRetention(seq: SeqId, retention: readonly RetentionRange[]): void {
    const op = 'BlockManager.setRetention';
    const s = this.seqArg(op, seq);
    s.retention = this.retentionArg(op, retention);
  }

  /**
   * Closes a step: returns (and unpins) the pending block copies, which must run before this
   * step's kvAppend, and declares every appended token computed, registering the sequences'
   * new full blocks in the prefix cache. `buildPageTable` calls it; call it directly when you
   * build page tables yourself.
   */
  commitStep(): StepCommit {
    let registered = 0;
    for (const id of this.dirty) {
      const s = this.seqs.get(id);
      if (!s) continue;
      if (s.cache && this.enablePrefixCaching) registered += this.register(s);
      s.committed = s.length;
    }
    this.dirty.clear();
    const copies = Int32Array.from(this.pending);
    this.pending = [];
    const clock = this.clock++;
    for (let i = 0; i < copies.length; i++) {
      const b = copies[i];
      this.pendingDst[b] = 0;
      this.pins[b]--;
      if (this.pins[b] === 0 && this.ref[b] === 0) this.becameIdle(b, clock);
    }
    this.steps++;
    return { copies, registeredBlocks: registered };
  }

  /** Evicts every evictable cached block (they become free). Returns how many. */
  clearPrefixCache(): number {
    let n = 0;
    while (this.heapSize > 0) {
      this.uncacheOne(this.heap[0]);
      n++;
    }
    return n;
  }

  /**
   * Checks every internal invariant against a from-scratch recount and throws E_INTERNAL
   * naming the first violation. O(numBlocks + total sequence blocks); for tests and debugging.
   */
  checkInvariants(): void {
    const n = this.numBlocks;
    const bs = this.blockSize;
    const fail = (msg: string): never => {
      throw new KernelError(`BlockManager invariant violated: ${msg}`, {
        code: 'E_INTERNAL',
        op: 'BlockManager.checkInvariants',
      });
    };
    const refs = new Int32Array(n);
    for (const s of this.seqs.values()) {
      if (s.blocks.length !== Math.ceil(s.length / bs))
        fail(`sequence ${s.id} holds ${s.blocks.length} blocks for ${s.length} tokens`);
      if (s.committed > s.length) fail(`sequence ${s.id} committed > length`);
      if (s.committed < s.length && !this.dirty.has(s.id))
        fail(`sequence ${s.id} has uncommitted tokens but is not marked dirty`);
      const seen = new Set<number>();
      for (let i = 0; i < s.blocks.length; i++) {
        const b = s.blocks[i];
        if (seen.has(b)) fail(`sequence ${s.id} holds block ${b} twice`);
        seen.add(b);
        refs[b]++;
        const full = (i + 1) * bs <= s.committed;
        if (s.cache && this.enablePrefixCaching && full && !this.cached[b])
          fail(`sequence ${s.id}: committed full block ${i} (${b}) is not cached`);
        if (i < s.registered && !this.cached[b])
          fail(`sequence ${s.id}: block ${i} (${b}) counted as registered but not cached`);
        if (this.cached[b]) {
          const p = i === 0 ? NONE : s.blocks[i - 1];
          if (this.parent[b] !== p)
            fail(`sequence ${s.id}: cached block ${b} has parent ${this.parent[b]}, expected ${p}`);
          if (this.depth[b] !== i) fail(`cached block ${b} has depth ${this.depth[b]}, at ${i}`);
        }
      }
    }
    const pins = new Int32Array(n);
    for (let i = 0; i < this.pending.length; i++) pins[this.pending[i]]++;
    for (let i = 1; i < this.pending.length; i += 2) {
      const d = this.pending[i];
      if (!this.pendingDst[d]) fail(`copy destination ${d} not marked`);
      for (let j = 0; j < this.pending.length; j += 2)
        if (this.pending[j] === d) fail(`block ${d} is both a copy source and destination`);
      for (let j = 1; j < i; j += 2)
        if (this.pending[j] === d) fail(`block ${d} is the destination of two copies`);
    }
    const inFree = new Uint8Array(n);
    for (let i = 0; i < this.freeTop; i++) {
      const b = this.freeStack[i];
      if (inFree[b]) fail(`block ${b} is on the free list twice`);
      inFree[b] = 1;
    }
    let used = 0;
    let free = 0;
    let evictable = 0;
    let cachedCount = 0;
    let leaves = 0;
    for (let b = 0; b < n; b++) {
      if (this.ref[b] !== refs[b])
        fail(`block ${b} ref count ${this.ref[b]} but ${refs[b]} sequence references`);
      if (this.pins[b] !== pins[b]) fail(`block ${b} pins ${this.pins[b]} but ${pins[b]} copies`);
      if (!pins[b] && this.pendingDst[b]) fail(`block ${b} marked as a pending destination`);
      const isUsed = refs[b] > 0 || pins[b] > 0;
      const isCached = this.cached[b] === 1;
      if (isCached) cachedCount++;
      if (isUsed) {
        used++;
        if (inFree[b]) fail(`used block ${b} is on the free list`);
      } else if (isCached) {
        evictable++;
        if (inFree[b]) fail(`cached block ${b} is on the free list`);
      } else {
        free++;
        if (!inFree[b]) fail(`free block ${b} is not on the free list`);
      }
      const inHeap = this.heapPos[b] !== NONE;
      const leaf = this.firstChild[b] === NONE;
      if (inHeap !== (isCached && !isUsed && leaf))
        fail(
          `block ${b} heap membership ${inHeap} wrong (cached ${isCached}, used ${isUsed}, leaf ${leaf})`,
        );
      if (inHeap) {
        leaves++;
        if (this.heap[this.heapPos[b]] !== b) fail(`heap position of ${b} is stale`);
      }
      if (isCached) {
        const p = this.parent[b];
        if (p !== NONE) {
          if (!this.cached[p]) fail(`cached block ${b} has uncached parent ${p}`);
          if (this.depth[b] !== this.depth[p] + 1) fail(`depth of ${b} is not parent's + 1`);
          if (refs[b] > 0 && refs[p] === 0)
            fail(`block ${b} is referenced but its parent ${p} is not`);
        } else if (this.depth[b] !== 0) fail(`root block ${b} has depth ${this.depth[b]}`);
        const expect = this.hash(
          p === NONE ? null : this.hashes[p],
          this.slots.subarray(b * bs, (b + 1) * bs),
          p === NONE ? this.salts[b] : undefined,
        );
        if (expect !== this.hashes[b]) fail(`hash of cached block ${b} does not match its tokens`);
        let found = false;
        for (let x = this.buckets.get(this.hashes[b]) ?? NONE; x !== NONE; x = this.nextInBucket[x])
          if (x === b) found = true;
        if (!found) fail(`cached block ${b} is missing from its hash bucket`);
        for (let c = this.firstChild[b]; c !== NONE; c = this.nextSibling[c])
          if (this.parent[c] !== b || !this.cached[c]) fail(`child list of ${b} is wrong`);
      } else if (this.firstChild[b] !== NONE) fail(`uncached block ${b} has children`);
    }
    for (let i = 0; i < this.heapSize; i++) {
      const l = 2 * i + 1;
      const r = l + 1;
      if (l < this.heapSize && this.less(this.heap[l], this.heap[i])) fail('heap order');
      if (r < this.heapSize && this.less(this.heap[r], this.heap[i])) fail('heap order');
    }
    let bucketed = 0;
    for (const [h, head] of this.buckets) {
      for (let x = head; x !== NONE; x = this.nextInBucket[x]) {
        bucketed++;
        if (!this.cached[x] || this.hashes[x] !== h) fail(`bucket ${h} holds block ${x}`);
      }
    }
    if (used + free + evictable !== n)
      fail(`used ${used} + free ${free} + evictable ${evictable} != ${n}`);
    if (free !== this.freeTop) fail(`free list has ${this.freeTop} blocks, ${free} are free`);
    if (evictable !== this.numEvictable)
      fail(`evictable count ${this.numEvictable}, recount ${evictable}`);
    if (cachedCount !== this.numCached || bucketed !== cachedCount)
      fail(`cached count ${this.numCached}, recount ${cachedCount}, bucketed ${bucketed}`);
    if (leaves !== this.heapSize) fail(`heap size ${this.heapSize}, ${leaves} members`);
    for (const id of this.dirty)
      if (!this.seqs.has(id)) fail(`dirty set holds dead sequence ${id}`);
  }

  // =========================================================================================
  // Internals
  // =========================================================================================

  private seqArg(op: string, seq: SeqId): Seq {
    const s = typeof seq === 'number' ? this.seqs.get(seq) : undefined;
    if (!s) throw invalidArg(op, 'seq', 'the id of a live sequence', seq);
    return s;
  }

  private blockArg(op: string, block: number): void {
    if (!isNonNegInt(block) || block >= this.numBlocks)
      throw invalidArg(op, 'block', `a block id in [0, ${this.numBlocks})`, block);
  }

  private tokensArg(op: string, arg: string, v: ArrayLike<number>): Int32Array {
    if (
      v === null ||
      typeof v !== 'object' ||
      typeof (v as { length?: unknown }).length !== 'number'
    )
      throw invalidArg(op, arg, 'an array of token ids', v);
    const out = new Int32Array(v.length);
    for (let i = 0; i < v.length; i++) {
      const t = v[i];
      if (!(typeof t === 'number' && Number.isInteger(t) && t >= 0 && t <= MAX_TOKEN))
        throw invalidArg(op, `${arg}[${i}]`, 'a token id (integer in [0, 2^31))', t);
      out[i] = t;
    }
    return out;
  }

  private maxCachedArg(op: string, promptLength: number, v: number | undefined): number {
    if (v === undefined) return Math.max(0, promptLength - 1);
    if (!isNonNegInt(v))
      throw invalidArg(op, 'options.maxCachedTokens', 'a non-negative integer', v);
    return Math.min(v, promptLength);
  }

  private retentionArg(op: string, r: readonly RetentionRange[] | undefined): RetentionRange[] {
    if (r === undefined) return [];
    if (!Array.isArray(r)) throw invalidArg(op, 'retention', 'an array of ranges', r);
    return r.map((x: RetentionRange, i) => {
      if (x === null || typeof x !== 'object')
        throw invalidArg(op, `retention[${i}]`, '{ start, end?, priority }', x);
      if (!isNonNegInt(x.start))
        throw invalidArg(op, `retention[${i}].start`, 'a non-negative integer', x.start);
      if (x.end !== undefined && !(isNonNegInt(x.end) && x.end >= x.start))
        throw invalidArg(op, `retention[${i}].end`, `an integer >= start (${x.start})`, x.end);
      if (typeof x.priority !== 'number' || !Number.isFinite(x.priority))
        throw invalidArg(op, `retention[${i}].priority`, 'a finite number', x.priority);
      return { start: x.start, end: x.end, priority: x.priority };
    });
  }

  private planAdmission(
    op: string,
    tokens: Int32Array,
    options: CreateSequenceOptions,
  ): {
    path: number[];
    cachedTokens: number;
    newTokens: number;
    need: number;
    available: number;
    wm: number;
    cache: boolean;
    retention: RetentionRange[];
  } {
    if (options === null || typeof options !== 'object')
      throw invalidArg(op, 'options', 'an object', options);
    if (options.salt !== undefined && typeof options.salt !== 'string')
      throw invalidArg(op, 'options.salt', 'a string', options.salt);
    if (options.cache !== undefined && typeof options.cache !== 'boolean')
      throw invalidArg(op, 'options.cache', 'a boolean', options.cache);
    const retention = this.retentionArg(op, options.retention);
    const max = this.maxCachedArg(op, tokens.length, options.maxCachedTokens);
    const cache = (options.cache ?? true) && this.enablePrefixCaching;
    const path = cache ? this.lookup(tokens, options.salt, max) : [];
    const cachedTokens = path.length * this.blockSize;
    const rest = tokens.length - cachedTokens;
    const newTokens = options.numNewTokens ?? rest;
    if (!isNonNegInt(newTokens) || newTokens > rest)
      throw invalidArg(
        op,
        'options.numNewTokens',
        `an integer in [0, ${rest}] (prompt tokens after the ${cachedTokens} cached ones)`,
        newTokens,
      );
    let reused = 0;
    for (const b of path) if (this.ref[b] === 0 && this.pins[b] === 0) reused++;
    const newBlocks = Math.ceil((cachedTokens + newTokens) / this.blockSize) - path.length;
    const wm = options.useWatermark === false ? 0 : this.watermarkBlocks;
    return {
      path,
      cachedTokens,
      newTokens,
      // Reused evictable blocks leave the available pool too.
      need: newBlocks + reused,
      available: this.freeTop + this.numEvictable - wm,
      wm,
      cache,
      retention,
    };
  }

  private appendNeed(s: Seq, numTokens: number): number {
    if (numTokens === 0) return 0;
    const bs = this.blockSize;
    const cow = s.length % bs !== 0 && this.ref[s.blocks[s.blocks.length - 1]] > 1 ? 1 : 0;
    return Math.ceil((s.length + numTokens) / bs) - s.blocks.length + cow;
  }

  private exhaustedMessage(op: string, need: number, tokens: number, wm: number): string {
    const free = this.freeTop;
    const ev = this.numEvictable;
    const avail = free + ev - wm;
    return (
      `KV cache exhausted: ${op} needs ${need} block(s) of ${this.blockSize} tokens ` +
      `(for ${tokens} new token(s)) but only ${Math.max(0, avail)} are available ` +
      `(${free} free + ${ev} evictable cached` +
      (wm > 0 ? `, minus ${wm} held back by the watermark` : '') +
      `, of ${this.numBlocks} in the pool)`
    );
  }

  private exhausted(op: string, need: number, tokens: number, wm: number): KernelError {
    return new KernelError(this.exhaustedMessage(op, need, tokens, wm), {
      code: 'E_KV_EXHAUSTED',
      op,
      backend: 'js',
    });
  }

  /** Priority this sequence gives its block at index i. */
  private seqPriority(s: Seq, i: number): number {
    let p = -Infinity;
    const lo = i * this.blockSize;
    const hi = lo + this.blockSize;
    for (const r of s.retention) {
      if (r.start < hi && (r.end === undefined || r.end > lo) && r.priority > p) p = r.priority;
    }
    return p === -Infinity ? this.defaultPriority : p;
  }

  /** Writes token ids into the sequence's slots, allocating blocks (need checked by the caller). */
  private writeTokens(s: Seq, t: Int32Array): void {
    if (t.length === 0) return;
    const bs = this.blockSize;
    let pos = s.length;
    let b = s.blocks.length > 0 ? s.blocks[s.blocks.length - 1] : NONE;
    for (let i = 0; i < t.length; i++, pos++) {
      const off = pos % bs;
      if (off === 0) {
        b = this.allocBlock();
        s.blocks.push(b);
      }
      this.slots[b * bs + off] = t[i];
    }
    s.length = pos;
    this.dirty.add(s.id);
  }

  private hash(parent: BlockHash | null, tokens: Int32Array, salt: string | undefined): BlockHash {
    const h = this.hashFn(parent, tokens, salt);
    if (typeof h !== 'bigint')
      throw invalidArg('BlockManager', 'hashFn', 'a function returning a bigint', h);
    return BigInt.asUintN(64, h);
  }

  /** The longest verified chain of cached blocks for `tokens`, at most `maxTokens` tokens. */
  private lookup(tokens: Int32Array, salt: string | undefined, maxTokens: number): number[] {
    const bs = this.blockSize;
    const maxBlocks = Math.floor(Math.min(maxTokens, tokens.length) / bs);
    if (maxBlocks === 0 || this.numCached === 0) return [];
    let frontier: number[] = [NONE];
    let parentHash: BlockHash | null = null;
    let depth = 0;
    for (; depth < maxBlocks; depth++) {
      const blockTokens = tokens.subarray(depth * bs, (depth + 1) * bs);
      const h = this.hash(parentHash, blockTokens, depth === 0 ? salt : undefined);
      const next: number[] = [];
      for (let c = this.buckets.get(h) ?? NONE; c !== NONE; c = this.nextInBucket[c]) {
        if (this.depth[c] !== depth || !frontier.includes(this.parent[c])) continue;
        if (depth === 0 && this.salts[c] !== salt) continue;
        let same = true;
        const base = c * bs;
        for (let k = 0; k < bs; k++) {
          if (this.slots[base + k] !== blockTokens[k]) {
            same = false;
            break;
          }
        }
        if (same) next.push(c);
      }
      if (next.length === 0) break;
      frontier = next;
      parentHash = h;
    }
    if (depth === 0) return [];
    // Prefer a referenced block (taking it does not shrink the available pool).
    let end = frontier[0];
    for (const c of frontier) if (this.ref[c] > 0 || this.pins[c] > 0) end = c;
    const path = new Array<number>(depth);
    for (let i = depth - 1, b = end; i >= 0; i--, b = this.parent[b]) path[i] = b;
    return path;
  }

  /** Registers the sequence's committed full blocks in the prefix cache. */
  private register(s: Seq): number {
    const bs = this.blockSize;
    const full = Math.floor(s.length / bs);
    let n = 0;
    let i = s.registered;
    for (; i < full; i++) {
      const b = s.blocks[i];
      const p = i === 0 ? NONE : s.blocks[i - 1];
      if (this.cached[b]) continue; // shared with a sibling that registered it first
      if (p !== NONE && !this.cached[p]) break; // cannot happen; keeps the tree sound if it did
      const h = this.hash(
        p === NONE ? null : this.hashes[p],
        this.slots.subarray(b * bs, (b + 1) * bs),
        i === 0 ? s.salt : undefined,
      );
      this.cached[b] = 1;
      this.numCached++;
      this.hashes[b] = h;
      this.salts[b] = i === 0 ? s.salt : undefined;
      this.parent[b] = p;
      this.depth[b] = i;
      this.priority[b] = this.seqPriority(s, i);
      this.nextInBucket[b] = this.buckets.get(h) ?? NONE;
      this.buckets.set(h, b);
      if (p !== NONE) {
        // p is held by s, so it is not in the eviction heap.
        const first = this.firstChild[p];
        this.nextSibling[b] = first;
        this.prevSibling[b] = NONE;
        if (first !== NONE) this.prevSibling[first] = b;
        this.firstChild[p] = b;
      }
      n++;
    }
    s.registered = i;
    return n;
  }

  private allocBlock(): number {
    if (this.freeTop === 0) {
      // Need checked by the caller: an evictable leaf exists.
      this.uncacheOne(this.heap[0]);
      this.evictions++;
    }
    const b = this.freeStack[--this.freeTop];
    this.ref[b] = 1;
    this.priority[b] = this.defaultPriority;
    return b;
  }

  private freePush(b: number): void {
    this.freeStack[this.freeTop++] = b;
  }

  private incRef(b: number): void {
    if (this.ref[b] === 0 && this.pins[b] === 0) {
      // Evictable (a free block is never referenced this way).
      this.numEvictable--;
      if (this.heapPos[b] !== NONE) this.heapRemove(b);
    }
    this.ref[b]++;
  }

  private decRef(b: number, priority: number, clock: number): void {
    if (this.cached[b] && priority > this.priority[b]) this.priority[b] = priority;
    this.ref[b]--;
    if (this.ref[b] === 0 && this.pins[b] === 0) this.becameIdle(b, clock);
  }

  private becameIdle(b: number, clock: number): void {
    this.lastUse[b] = clock;
    if (this.cached[b]) {
      this.numEvictable++;
      if (this.firstChild[b] === NONE) this.heapPush(b);
    } else {
      this.freePush(b);
    }
  }

  /** Removes a cached block with no cached children from the cache. */
  private uncacheOne(b: number): void {
    // Out of its bucket.
    const h = this.hashes[b];
    let x = this.buckets.get(h) ?? NONE;
    if (x === b) {
      const nx = this.nextInBucket[b];
      if (nx === NONE) this.buckets.delete(h);
      else this.buckets.set(h, nx);
    } else {
      while (x !== NONE && this.nextInBucket[x] !== b) x = this.nextInBucket[x];
      if (x !== NONE) this.nextInBucket[x] = this.nextInBucket[b];
    }
    this.nextInBucket[b] = NONE;
    // Out of its parent's child list.
    const p = this.parent[b];
    if (p !== NONE) {
      const prev = this.prevSibling[b];
      const next = this.nextSibling[b];
      if (prev !== NONE) this.nextSibling[prev] = next;
      else this.firstChild[p] = next;
      if (next !== NONE) this.prevSibling[next] = prev;
    }
    this.prevSibling[b] = this.nextSibling[b] = NONE;
    this.parent[b] = NONE;
    this.depth[b] = 0;
    this.salts[b] = undefined;
    this.cached[b] = 0;
    this.numCached--;
    if (this.ref[b] === 0 && this.pins[b] === 0) {
      this.numEvictable--;
      if (this.heapPos[b] !== NONE) this.heapRemove(b);
      this.priority[b] = this.defaultPriority;
      this.freePush(b);
    }
    // The parent may have become an evictable leaf.
    if (
      p !== NONE &&
      this.firstChild[p] === NONE &&
      this.ref[p] === 0 &&
      this.pins[p] === 0 &&
      this.heapPos[p] === NONE
    )
      this.heapPush(p);
  }

  /** Removes a cached block and all its cached descendants (which are unreferenced) from the cache. */
  private uncacheSubtree(b: number): void {
    let c = this.firstChild[b];
    while (c !== NONE) {
      this.uncacheSubtree(c);
      c = this.firstChild[b];
    }
    this.uncacheOne(b);
  }

  // ---- indexed min-heap of evictable leaves ----

  /** Eviction order: lower priority, then older, then deeper, then lower id. */
  private less(a: number, b: number): boolean {
    const pa = this.priority[a];
    const pb = this.priority[b];
    if (pa !== pb) return pa < pb;
    const ua = this.lastUse[a];
    const ub = this.lastUse[b];
    if (ua !== ub) return ua < ub;
    const da = this.depth[a];
    const db = this.depth[b];
    if (da !== db) return da > db;
    return a < b;
  }

  private heapPush(b: number): void {
    const i = this.heapSize++;
    this.heap[i] = b;
    this.heapPos[b] = i;
    this.siftUp(i);
  }

  private heapRemove(b: number): void {
    const i = this.heapPos[b];
    const last = this.heap[--this.heapSize];
    this.heapPos[b] = NONE;
    if (i === this.heapSize) return;
    this.heap[i] = last;
    this.heapPos[last] = i;
    this.siftUp(i);
    this.siftDown(this.heapPos[last]);
  }

  private siftUp(i: number): void {
    const h = this.heap;
    const b = h[i];
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.less(b, h[p])) break;
      h[i] = h[p];
      this.heapPos[h[i]] = i;
      i = p;
    }
    h[i] = b;
    this.heapPos[b] = i;
  }

  private siftDown(i: number): void {
    const h = this.heap;
    const n = this.heapSize;
    const b = h[i];
    for (;;) {
      const l = 2 * i + 1;
      if (l >= n) break;
      const r = l + 1;
      const c = r < n && this.less(h[r], h[l]) ? r : l;
      if (!this.less(h[c], b)) break;
      h[i] = h[c];
      this.heapPos[h[i]] = i;
      i = c;
    }
    h[i] = b;
    this.heapPos[b] = i;
  }
}
