/**
 * Token sampling for one request: logit bias, repetition/frequency/presence penalties, greedy,
 * top-k, temperature, top-p, min-p, a seeded draw, and processed logprobs; plus StopMatcher
 * (stop strings on streamed text) and createRng (seeded xoshiro128**).
 *
 * The pipeline and every choice in it are specified in docs/sampling.md. The Sampler holds a
 * request's state (validated options, logit bias, the penalty window, the seeded RNG); the
 * per-row math (truncation stages, the draw, logprobs) is lib/ops/sample-core.ts, shared with
 * the batched `sample` op so both have one definition. A sampler per request costs O(penalty
 * window) memory: the vocabulary-sized scratch is the core's, shared by all. */
import { KernelError, invalidArg } from '../runtime/errors';
import {
  distributionOf,
  draw,
  LogitFail,
  logprobOf,
  MAX_VOCAB_SIZE,
  needsUniform,
  Prepared,
  prepareRow,
  rowParams,
  RowParams,
  topList,
} from '../ops/sample-core';

// Module-level aliases: in jest's vm sandbox each `Math.x` lookup is slow.
const M_min = Math.min;
const M_max = Math.max;
const M_imul = Math.imul;

const OP = 'Sampler';

/** Largest vocabulary a Sampler accepts (token ids live in 21 bits of the sort keys). */
export { MAX_VOCAB_SIZE };
/** Largest `logprobs` (number of top alternatives) a request may ask for. */
export const MAX_LOGPROBS = 20;

export interface SamplingOptions {
  /** Default 1. 0 selects greedy decoding (argmax, ties to the lowest token id). */
  temperature?: number;
  /** Keep the k most likely tokens. 0 or undefined = off; k >= vocabSize is off. */
  topK?: number;
  /** Nucleus: keep the smallest most-likely prefix whose mass reaches p. In (0, 1]; 1 = off. */
  topP?: number;
  /** Drop tokens whose probability is below minP times the top token's. In [0, 1]; 0 = off. */
  minP?: number;
  /** > 0; 1 = off. CTRL / llama.cpp style: logit > 0 ? logit / r : logit * r. */
  repetitionPenalty?: number;
  /** OpenAI style: logit -= count * f. 0 = off. */
  frequencyPenalty?: number;
  /** OpenAI style: logit -= p if the token occurs in the window. 0 = off. */
  presencePenalty?: number;
  /** How many most recent accepted tokens the penalties see. Default 64; -1 = all; 0 = none. */
  penaltyLastN?: number;
  /** Seed of this request's RNG (a safe integer). Default: a random one, see Sampler.seed. */
  seed?: number;
  /** Added to the logits before anything else; -Infinity bans a token. */
  logitBias?: Record<number, number>;
  /** 0..20: how many top alternatives to report with each token. Undefined = none. */
  logprobs?: number;
}

export interface SampledToken {
  token: number;
  /** Processed logprob of `token`: see docs/sampling.md (after penalties and temperature). */
  logprob: number;
  /** The `logprobs` most likely tokens, same definition, descending (ties: lower id first). */
  top?: { token: number; logprob: number }[];
}

/** The distribution a sample() draw is made from, for inspection and speculative decoding. */
export interface SamplingDistribution {
  /** Candidate token ids, ascending. */
  tokens: Int32Array;
  /** Their renormalised probabilities (sum 1). */
  probs: Float64Array;
}

// ---------------------------------------------------------------------------------------------
// Seeded RNG: xoshiro128** seeded through splitmix64.

const MASK64 = (1n << 64n) - 1n;

function splitmix64(state: bigint): [bigint, bigint] {
  const s = (state + 0x9e3779b97f4a7c15n) & MASK64;
  let z = s;
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & MASK64;
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & MASK64;
  return [s, z ^ (z >> 31n)];
}

function checkSeed(seed: unknown, arg: string): number {
  if (typeof seed !== 'number' || !Number.isSafeInteger(seed))
    throw invalidArg(OP, arg, 'a safe integer', seed);
  return seed;
}

/**
 * A seeded PRNG returning uniform doubles in [0, 1) with 53 random bits (xoshiro128**, two
 * 32-bit outputs per double). The 128-bit state comes from two splitmix64 outputs of the seed,
 * so distinct seeds give distinct streams. Any safe integer (negative too) is a valid seed.
 */
export function createRng(seed: number): () => number {
  checkSeed(seed, 'seed');
  let st = BigInt(seed) & MASK64;
  const [st1, a] = splitmix64(st);
  st = st1;
  const [, b] = splitmix64(st);
  let s0 = Number(a & 0xffffffffn) | 0;
  let s1 = Number(a >> 32n) | 0;
  let s2 = Number(b & 0xffffffffn) | 0;
  let s3 = Number(b >> 32n) | 0;
  if ((s0 | s1 | s2 | s3) === 0) s0 = 1; // the one state xoshiro cannot leave
  const next = (): number => {
    const m = M_imul(s1, 5);
    const r = M_imul((m << 7) | (m >>> 25), 9);
    const t = s1 << 9;
    s2 ^= s0;
    s3 ^= s1;
    s1 ^= s2;
    s0 ^= s3;
    s2 ^= t;
    s3 = (s3 << 11) | (s3 >>> 21);
    return r >>> 0;
  };
  // 27 + 26 bits -> a double in [0, 1) on the 2^-53 grid.
  return () => ((next() >>> 5) * 67108864 + (next() >>> 6)) / 9007199254740992;
}

function randomSeed(): number {
  const c = (globalThis as { crypto?: { getRandomValues?: (a: Uint32Array) => Uint32Array } })
    .crypto;
  const a = new Uint32Array(2);
  if (c && typeof c.getRandomValues === 'function') c.getRandomValues(a);
  else {
    a[0] = (Math.random() * 4294967296) >>> 0;
    a[1] = (Math.random() * 4294967296) >>> 0;
  }
  return (a[0] & 0x1fffff) * 4294967296 + a[1]; // 53 bits: a safe integer
}

// ---------------------------------------------------------------------------------------------
// Options.

/** SamplingOptions with the defaults filled in (logitBias omitted). */
export interface ResolvedSamplingOptions {
  temperature: number;
  topK: number;
  topP: number;
  minP: number;
  repetitionPenalty: number;
  frequencyPenalty: number;
  presencePenalty: number;
  penaltyLastN: number;
  seed: number;
  logprobs: number | undefined;
}

/** Every key of SamplingOptions (callers pick these out of wider option objects). */
export const SAMPLING_OPTION_KEYS = [
  'temperature',
  'topK',
  'topP',
  'minP',
  'repetitionPenalty',
  'frequencyPenalty',
  'presencePenalty',
  'penaltyLastN',
  'seed',
  'logitBias',
  'logprobs',
] as const satisfies readonly (keyof SamplingOptions)[];

const KNOWN = new Set<string>(SAMPLING_OPTION_KEYS);

function num(
  o: Record<string, unknown>,
  name: string,
  def: number,
  ok: (x: number) => boolean,
  expected: string,
): number {
  const v = o[name];
  if (v === undefined || v === null) return def;
  if (typeof v !== 'number' || !ok(v)) throw invalidArg(OP, `options.${name}`, expected, v);
  return v;
}

function isInt(x: number): boolean {
  return Number.isInteger(x);
}

// ---------------------------------------------------------------------------------------------

/**
 * Samples tokens for one request. Penalty state is kept inside the sampler: feed it the prompt
 * with acceptMany() and every token you keep with accept(). sample() never records the token it
 * returns (so a caller can drop it, e.g. on a stop string or a rejected speculative token).
 */
export class Sampler {
  readonly vocabSize: number;
  /** The seed actually used (the given one, or the random default) to replay the request. */
  readonly seed: number;
  private readonly o: ResolvedSamplingOptions;
  /** The core's per-row parameters (top-k >= vocabSize mapped to off, ln minP). */
  private readonly row: RowParams;
  private readonly adjust: (w: Float32Array) => void;
  private rng: () => number;
  private readonly biasIds: Int32Array;
  private readonly biasVals: Float64Array;
  // Penalty window: counts of the distinct tokens among the last penaltyLastN accepted.
  private readonly penalize: boolean;
  private readonly counts = new Map<number, number>();
  private ring: Int32Array | null = null;
  private ringHead = 0;
  private ringLen = 0;
  private readonly applyOne: (count: number, token: number) => void;
  private curWork: Float32Array | null = null;

  constructor(vocabSize: number, options?: SamplingOptions) {
    if (
      typeof vocabSize !== 'number' ||
      !isInt(vocabSize) ||
      vocabSize < 1 ||
      vocabSize > MAX_VOCAB_SIZE
    )
      throw invalidArg(OP, 'vocabSize', `an integer in [1, ${MAX_VOCAB_SIZE}]`, vocabSize);
    this.vocabSize = vocabSize;
    if (options !== undefined && (options === null || typeof options !== 'object'))
      throw invalidArg(OP, 'options', 'an object', options);
    const o = (options ?? {}) as Record<string, unknown>;
    for (const k of Object.keys(o))
      if (!KNOWN.has(k) && o[k] !== undefined)
        throw invalidArg(OP, `options.${k}`, 'no such option (see SamplingOptions)', o[k]);
    const temperature = num(
      o,
      'temperature',
      1,
      (x) => x === 0 || (x > 0 && 1 / x < Infinity && x < Infinity),
      'a finite number >= 0 (0 = greedy)',
    );
    const topK = num(o, 'topK', 0, (x) => isInt(x) && x >= 0, 'an integer >= 0 (0 = off)');
    const topP = num(o, 'topP', 1, (x) => x > 0 && x <= 1, 'a number in (0, 1] (1 = off)');
    const minP = num(o, 'minP', 0, (x) => x >= 0 && x <= 1, 'a number in [0, 1] (0 = off)');
    const repetitionPenalty = num(
      o,
      'repetitionPenalty',
      1,
      (x) => x > 0 && x < Infinity,
      'a finite number > 0 (1 = off)',
    );
    const fin = (x: number): boolean => Number.isFinite(x);
    const frequencyPenalty = num(o, 'frequencyPenalty', 0, fin, 'a finite number (0 = off)');
    const presencePenalty = num(o, 'presencePenalty', 0, fin, 'a finite number (0 = off)');
    const penaltyLastN = num(
      o,
      'penaltyLastN',
      64,
      (x) => isInt(x) && x >= -1,
      'an integer >= -1 (-1 = whole context, 0 = off)',
    );
    const seed =
      o.seed === undefined || o.seed === null ? randomSeed() : checkSeed(o.seed, 'options.seed');
    let logprobs: number | undefined;
    if (o.logprobs !== undefined && o.logprobs !== null)
      logprobs = num(
        o,
        'logprobs',
        0,
        (x) => isInt(x) && x >= 0 && x <= MAX_LOGPROBS,
        `an integer in [0, ${MAX_LOGPROBS}]`,
      );
    this.o = {
      temperature,
      topK,
      topP,
      minP,
      repetitionPenalty,
      frequencyPenalty,
      presencePenalty,
      penaltyLastN,
      seed,
      logprobs,
    };
    this.row = rowParams(vocabSize, temperature, topK, topP, minP, logprobs);
    this.adjust = (w) => this.applyBiasAndPenalties(w);

    // Logit bias -> parallel arrays, validated once.
    const bias = o.logitBias;
    const ids: number[] = [];
    const vals: number[] = [];
    if (bias !== undefined && bias !== null) {
      if (typeof bias !== 'object' || Array.isArray(bias))
        throw invalidArg(OP, 'options.logitBias', 'an object mapping token id to bias', bias);
      for (const [k, v] of Object.entries(bias as Record<string, unknown>)) {
        const id = Number(k);
        if (!/^(0|[1-9]\d*)$/.test(k) || id >= vocabSize)
          throw invalidArg(OP, `options.logitBias[${k}]`, `a token id in [0, ${vocabSize})`, k);
        if (typeof v !== 'number' || Number.isNaN(v) || v === Infinity)
          throw invalidArg(OP, `options.logitBias[${k}]`, 'a finite number or -Infinity (ban)', v);
        ids.push(id);
        vals.push(v);
      }
    }
    this.biasIds = Int32Array.from(ids);
    this.biasVals = Float64Array.from(vals);

    this.seed = seed;
    this.rng = createRng(seed);
    this.penalize =
      penaltyLastN !== 0 &&
      (repetitionPenalty !== 1 || frequencyPenalty !== 0 || presencePenalty !== 0);
    const rp = repetitionPenalty;
    const sub1 = presencePenalty;
    const fp = frequencyPenalty;
    // One closure, allocated once: Map.forEach calls it per distinct token in the window.
    this.applyOne = (count: number, token: number): void => {
      const w = this.curWork as Float32Array;
      let x = w[token];
      x = x > 0 ? x / rp : x * rp;
      w[token] = x - (count * fp + sub1);
    };
  }

  /** The effective options, defaults filled in (logitBias omitted). */
  get options(): ResolvedSamplingOptions {
    return { ...this.o };
  }

  /** Records a token into the penalty window (the prompt, then each generated token kept). */
  accept(token: number): void {
    if (typeof token !== 'number' || !isInt(token) || token < 0 || token >= this.vocabSize)
      throw invalidArg(OP, 'token', `a token id in [0, ${this.vocabSize})`, token);
    if (!this.penalize) return;
    const n = this.o.penaltyLastN;
    const counts = this.counts;
    if (n > 0) {
      let ring = this.ring;
      if (ring === null) ring = this.ring = new Int32Array(n);
      if (this.ringLen === n) {
        const old = ring[this.ringHead];
        const c = (counts.get(old) as number) - 1;
        if (c === 0) counts.delete(old);
        else counts.set(old, c);
        ring[this.ringHead] = token;
        this.ringHead = this.ringHead + 1 === n ? 0 : this.ringHead + 1;
      } else {
        ring[(this.ringHead + this.ringLen) % n] = token;
        this.ringLen++;
      }
    }
    counts.set(token, (counts.get(token) ?? 0) + 1);
  }

  /** accept() for each token in order (e.g. the prompt). */
  acceptMany(tokens: ArrayLike<number>): void {
    if (tokens === null || typeof tokens !== 'object' || typeof tokens.length !== 'number')
      throw invalidArg(OP, 'tokens', 'an array of token ids', tokens);
    for (let i = 0; i < tokens.length; i++) this.accept(tokens[i]);
  }

  /** Clears the penalty window and rewinds the RNG to the seed: the request starts over. */
  reset(): void {
    this.counts.clear();
    this.ringHead = 0;
    this.ringLen = 0;
    this.rng = createRng(this.seed);
  }

  /**
   * Samples one token from `logits` (length vocabSize, not modified). Does not accept() it.
   * Greedy (temperature 0) consumes no random numbers; otherwise exactly one per call.
   */
  sample(logits: Float32Array): SampledToken {
    const st = this.prepare(logits);
    const token = draw(st, needsUniform(st) ? this.rng() : 0);
    const out: SampledToken = { token, logprob: logprobOf(st, token) };
    if (this.o.logprobs !== undefined) out.top = topList(st, this.o.logprobs);
    return out;
  }

  /**
   * `token` scored the way sample() scores what it draws (its processed logprob, and the top
   * list when logprobs are on), without drawing: for tokens chosen elsewhere, such as accepted
   * speculative drafts. Consumes no random numbers.
   */
  score(logits: Float32Array, token: number): SampledToken {
    if (!(Number.isInteger(token) && token >= 0 && token < this.vocabSize))
      throw invalidArg(OP, 'token', `a token id in [0, ${this.vocabSize})`, token);
    const st = this.prepare(logits);
    const out: SampledToken = { token, logprob: logprobOf(st, token) };
    if (this.o.logprobs !== undefined) out.top = topList(st, this.o.logprobs);
    return out;
  }

  /** One uniform double in [0, 1) from this sampler's seeded stream (speculative acceptance tests). */
  uniform(): number {
    return this.rng();
  }

  /**
   * The distribution sample() would draw from for `logits` right now (after every stage,
   * renormalised). Consumes no random numbers. For greedy, the argmax with probability 1.
   */
  distribution(logits: Float32Array): SamplingDistribution {
    return distributionOf(this.prepare(logits));
  }

  // -------------------------------------------------------------------------------------------

  private applyBiasAndPenalties(w: Float32Array): void {
    const ids = this.biasIds;
    const vals = this.biasVals;
    for (let j = 0; j < ids.length; j++) w[ids[j]] += vals[j];
    if (this.penalize && this.counts.size > 0) {
      this.curWork = w;
      this.counts.forEach(this.applyOne);
      this.curWork = null;
    }
  }

  /** Checks `logits`, then the shared core: bias and penalties on its copy, every stage. */
  private prepare(logits: Float32Array): Prepared {
    const V = this.vocabSize;
    if (!(logits instanceof Float32Array))
      throw invalidArg(OP, 'logits', `a Float32Array of length ${V}`, logits);
    if (logits.length !== V)
      throw new KernelError(
        `Expected a Float32Array of length ${V} for logits but received length ${logits.length}`,
        { code: 'E_SHAPE', op: OP, arg: 'logits', backend: 'js' },
      );
    return prepareRow(logits, this.row, samplerFail, this.adjust);
  }
}

function logitsError(message: string): KernelError {
  return new KernelError(message, { code: 'E_INVALID_ARG', op: OP, arg: 'logits', backend: 'js' });
}

/** The Sampler's wording of a bad row (lib/ops/sample.ts words the op's with the row). */
const samplerFail: LogitFail = (fault, i) => {
  if (fault === 'nan')
    throw logitsError(
      `logits[${i}] is NaN after logit bias and penalties; logits must be finite or -Infinity`,
    );
  if (fault === 'posinf')
    throw logitsError('logits contain +Infinity; logits must be finite or -Infinity');
  throw logitsError('every logit is -Infinity (all tokens masked): nothing to sample');
};

// ---------------------------------------------------------------------------------------------

/**
 * Stop sequences on detokenized text. push() returns the text that is safe to emit: it holds
 * back the longest tail that is a proper prefix of some stop string until later text settles
 * it. When a stop string completes, it returns the text before it (the stop string and all
 * that follows are dropped) with stopped = true; after that it returns nothing. If several
 * stops complete, the one that completes first in the text wins, and of those the one that
 * starts first. The result does not depend on how the text is split into pushes. Matching is
 * exact (case-sensitive, on UTF-16 code units, no Unicode normalisation); a lone high surrogate
 * at the end of a push is held back too, so emitted text never ends mid-pair.
 */
export class StopMatcher {
  private readonly stops: readonly string[];
  private readonly maxLen: number;
  private pending = '';
  private done = false;
  private matchedStop: string | undefined;

  constructor(stops: readonly string[]) {
    if (!Array.isArray(stops))
      throw invalidArg('StopMatcher', 'stops', 'an array of strings', stops);
    stops.forEach((s, i) => {
      if (typeof s !== 'string' || s.length === 0)
        throw invalidArg('StopMatcher', `stops[${i}]`, 'a non-empty string', s);
    });
    this.stops = [...new Set(stops)];
    this.maxLen = this.stops.reduce((a, s) => M_max(a, s.length), 0);
  }

  /** Whether a stop string has been seen. */
  get stopped(): boolean {
    return this.done;
  }

  /** The stop string that ended generation, if any. */
  get matched(): string | undefined {
    return this.matchedStop;
  }

  push(text: string): { emit: string; stopped: boolean } {
    if (typeof text !== 'string') throw invalidArg('StopMatcher', 'text', 'a string', text);
    if (this.done) return { emit: '', stopped: true };
    const p = this.pending + text;
    // Earliest-ending complete occurrence; ties: earliest start (the longer stop).
    let bestEnd = Infinity;
    let bestStart = 0;
    let best: string | undefined;
    for (const s of this.stops) {
      const at = p.indexOf(s);
      if (at < 0) continue;
      const end = at + s.length;
      if (end < bestEnd || (end === bestEnd && at < bestStart)) {
        bestEnd = end;
        bestStart = at;
        best = s;
      }
    }
    if (best !== undefined) {
      this.done = true;
      this.matchedStop = best;
      this.pending = '';
      return { emit: p.slice(0, bestStart), stopped: true };
    }
    // Hold back the longest tail that could still grow into a stop string.
    let hold = 0;
    const lim = M_min(p.length, this.maxLen - 1);
    for (const s of this.stops) {
      for (let k = M_min(lim, s.length - 1); k > hold; k--) {
        if (p.endsWith(s.slice(0, k))) {
          hold = k;
          break;
        }
      }
    }
    let cut = p.length - hold;
    if (cut > 0) {
      const c = p.charCodeAt(cut - 1);
      if (c >= 0xd800 && c <= 0xdbff) cut--; // never emit half a surrogate pair
    }
    this.pending = p.slice(cut);
    return { emit: p.slice(0, cut), stopped: false };
  }

  /** End of generation: the held-back text (nothing once stopped). */
  flush(): string {
    const p = this.done ? '' : this.pending;
    this.pending = '';
    return p;
  }
}
