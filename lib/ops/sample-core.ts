/**
 * The sampling math: one row of logits, resolved per-row parameters and one uniform u in [0, 1)
 * in, one token out. This is the single definition of the semantics specified in
 * docs/sampling.md. Two callers share it: lib/model/sampler.ts (Sampler: per-request options,
 * penalties, logit bias and the seeded RNG around this core) and lib/ops/sample.ts (the batched
 * `sample` op's cpu backend; its CUDA kernel, native/cuda/kernels/sampling.cuh, is verified
 * against this code).
 *
 * Stages: greedy | top-k -> temperature -> softmax -> top-p -> min-p -> renormalise ->
 * inverse-CDF draw over the survivors in ascending id order (target = u * total mass; the first
 * survivor whose cumulative mass exceeds it, the last one when rounding runs past the end).
 *
 * Performance: this runs once per generated token per request in JS, so it never sorts the
 * vocabulary. One pass finds the max (with a bounded heap for top-k <= 1024 and for the reported
 * alternatives), one computes the softmax denominator with a table-driven exp. Otherwise the
 * truncation stages work on a 16-per-nat histogram of the scaled distribution, built in that
 * same pass for the few tokens that can survive, and order only the tokens of one boundary
 * bucket, by quickselect. Vocabulary-sized scratch buffers are module-level and shared by all
 * callers (JS runs one row at a time per isolate); a row's Prepared state is valid until the
 * next prepareRow().
 *
 * Pure TypeScript: no runtime, binding or model imports (lib/model builds on it).
 */

// Module-level aliases: in jest's vm sandbox each `Math.x` lookup is slow.
const M_log = Math.log;
const M_floor = Math.floor;
const M_min = Math.min;
const M_max = Math.max;

/** Largest vocabulary the sampler accepts (token ids live in 21 bits of the sort keys). */
export const MAX_VOCAB_SIZE = 1 << 21;

/** Why a row of logits cannot be sampled (index: the first NaN / +Infinity id; 0 for masked). */
export type LogitFault = 'nan' | 'posinf' | 'masked';
/** Raises the caller's error for a bad row (each caller words and types it). */
export type LogitFail = (fault: LogitFault, index: number) => never;

/** One row's parameters, validated by the caller (Sampler's option checks, the op's). */
export interface RowParams {
  vocabSize: number;
  /** 0 = greedy. */
  temperature: number;
  /** Effective top-k: 0 = off (a k >= vocabSize is off too; rowParams() maps it). */
  topK: number;
  topP: number;
  minP: number;
  /** ln(minP), or -Infinity when min-p is off. */
  lnMinP: number;
  /** How many top alternatives the caller will list (topList); undefined = none. */
  logprobs: number | undefined;
}

/** RowParams from validated option values. */
export function rowParams(
  vocabSize: number,
  temperature: number,
  topK: number,
  topP: number,
  minP: number,
  logprobs?: number,
): RowParams {
  return {
    vocabSize,
    temperature,
    topK: topK >= vocabSize ? 0 : topK,
    topP,
    minP,
    lnMinP: minP > 0 ? M_log(minP) : -Infinity,
    logprobs,
  };
}

// ---------------------------------------------------------------------------------------------
// Fast e^d for d in [-EXP_CUT, 0]. Math.exp costs ~20 ns in V8; this is ~3x faster, relative
// error < 2e-12: d = -k·ln2/32 + r with |r| <= ln2/64, e^d = 2^(-k/32) (table) · poly4(r).

/** Scaled log-ratios to the top token below -EXP_CUT count as probability 0 (e^-87 ≈ 1.6e-38). */
const EXP_CUT = 87;
const EXP_SCALE = 32 / Math.LN2;
const EXP_STEP = Math.LN2 / 32;
const EXP_TAB = new Float64Array(Math.ceil(EXP_CUT * EXP_SCALE) + 2);
for (let j = 0; j < EXP_TAB.length; j++) EXP_TAB[j] = Math.pow(2, -j / 32);
const C3 = 1 / 6;
const C4 = 1 / 24;

function expNeg(d: number): number {
  const k = (0.5 - d * EXP_SCALE) | 0;
  const r = d + k * EXP_STEP;
  return EXP_TAB[k] * (1 + r * (1 + r * (0.5 + r * (C3 + r * C4))));
}

// ---------------------------------------------------------------------------------------------
// Sort keys: one float64 per token that orders by (logit descending, id ascending). The float32
// bit pattern is mapped to an order-preserving uint32, times 2^21, plus the reversed id; all
// below 2^53, so exact. Smaller key = better token.

const ID_SPACE = MAX_VOCAB_SIZE;
const ID_MASK = ID_SPACE - 1;

function keyOf(bits: Uint32Array, i: number): number {
  let b = bits[i];
  if (b === 0x80000000) b = 0; // -0 orders as +0
  const u = b & 0x80000000 ? ~b >>> 0 : (b | 0x80000000) >>> 0;
  return -(u * ID_SPACE + (ID_MASK - i));
}

function idOfKey(key: number): number {
  const k = -key;
  return ID_MASK - (k - M_floor(k / ID_SPACE) * ID_SPACE);
}

function swap2(k: Float64Array, v: Float64Array, i: number, j: number): void {
  const tk = k[i];
  k[i] = k[j];
  k[j] = tk;
  const tv = v[i];
  v[i] = v[j];
  v[j] = tv;
}

/** Sorts keys[lo..hi] ascending, carrying vals along (quicksort, insertion sort below 16). */
function sortRange(k: Float64Array, v: Float64Array, lo: number, hi: number): void {
  while (hi - lo >= 16) {
    const p = partition(k, v, lo, hi);
    // Recurse into the smaller side to bound the stack.
    if (p - lo < hi - p) {
      sortRange(k, v, lo, p - 1);
      lo = p + 1;
    } else {
      sortRange(k, v, p + 1, hi);
      hi = p - 1;
    }
  }
  for (let i = lo + 1; i <= hi; i++) {
    const tk = k[i];
    const tv = v[i];
    let j = i - 1;
    while (j >= lo && k[j] > tk) {
      k[j + 1] = k[j];
      v[j + 1] = v[j];
      j--;
    }
    k[j + 1] = tk;
    v[j + 1] = tv;
  }
}

/** Lomuto partition of [lo, hi] around the median of three; returns the pivot's final index. */
function partition(k: Float64Array, v: Float64Array, lo: number, hi: number): number {
  const mid = (lo + hi) >>> 1;
  if (k[mid] < k[lo]) swap2(k, v, mid, lo);
  if (k[hi] < k[lo]) swap2(k, v, hi, lo);
  if (k[mid] < k[hi]) swap2(k, v, mid, hi); // now k[hi] is the median
  const pk = k[hi];
  let i = lo;
  for (let j = lo; j < hi; j++) {
    if (k[j] < pk) {
      if (i !== j) swap2(k, v, i, j);
      i++;
    }
  }
  swap2(k, v, i, hi);
  return i;
}

/** Reorders so that [0, r) holds the r smallest keys (any order). Keys are distinct. */
function selectCount(k: Float64Array, v: Float64Array, n: number, r: number): void {
  let lo = 0;
  let hi = n - 1;
  while (hi - lo >= 16) {
    const p = partition(k, v, lo, hi);
    if (p === r || p === r - 1) return;
    if (p > r) hi = p - 1;
    else lo = p + 1;
  }
  sortRange(k, v, lo, hi);
}

/**
 * The smallest t such that the t smallest keys carry vals summing to >= need; reorders so that
 * [0, t) holds them. Returns n if even all of them fall short (rounding). Weighted quickselect:
 * expected O(n), no full sort.
 */
function selectMass(k: Float64Array, v: Float64Array, n: number, need: number): number {
  let lo = 0;
  let hi = n - 1;
  let acc = 0; // mass of [0, lo), all committed; acc < need throughout
  while (hi - lo >= 16) {
    const p = partition(k, v, lo, hi);
    let left = 0;
    for (let j = lo; j < p; j++) left += v[j];
    if (acc + left >= need) hi = p - 1;
    else {
      acc += left + v[p];
      if (acc >= need) return p + 1;
      lo = p + 1;
    }
  }
  sortRange(k, v, lo, hi);
  for (let j = lo; j <= hi; j++) {
    acc += v[j];
    if (acc >= need) return j + 1;
  }
  return n;
}

// ---------------------------------------------------------------------------------------------
// Shared scratch.

/** Histogram resolution: buckets per nat of scaled log-ratio to the top token. */
const BUCKETS_PER_NAT = 16;
const NUM_BUCKETS = EXP_CUT * BUCKETS_PER_NAT + 1;
/** Top-k up to this uses a heap during the max pass; larger k uses the histogram. */
const HEAP_MAX = 1024;

interface Scratch {
  size: number;
  work: Float32Array;
  bits: Uint32Array;
  itKey: Float64Array;
  itVal: Float64Array;
  lId: Int32Array;
  lE: Float64Array;
  lB: Uint16Array;
  hCount: Float64Array;
  hMass: Float64Array;
  heap: Int32Array;
  cKey: Float64Array;
  cVal: Float64Array;
  dId: Float64Array;
  dVal: Float64Array;
}

let shared: Scratch | null = null;

function scratch(V: number): Scratch {
  if (shared && shared.size >= V) return shared;
  const work = new Float32Array(V);
  shared = {
    size: V,
    work,
    bits: new Uint32Array(work.buffer),
    itKey: new Float64Array(V),
    itVal: new Float64Array(V),
    lId: new Int32Array(V),
    lE: new Float64Array(V),
    lB: new Uint16Array(V),
    hCount: new Float64Array(NUM_BUCKETS),
    hMass: new Float64Array(NUM_BUCKETS),
    heap: new Int32Array(HEAP_MAX),
    cKey: new Float64Array(HEAP_MAX),
    cVal: new Float64Array(HEAP_MAX),
    dId: new Float64Array(HEAP_MAX),
    dVal: new Float64Array(HEAP_MAX),
  };
  return shared;
}

// Heap of token ids, worst (lowest logit, then highest id) at the root.
function worse(w: Float32Array, a: number, b: number): boolean {
  const x = w[a];
  const y = w[b];
  return x < y || (x === y && a > b);
}

function heapPush(h: Int32Array, size: number, w: Float32Array, id: number): void {
  let i = size;
  while (i > 0) {
    const p = (i - 1) >> 1;
    if (!worse(w, id, h[p])) break;
    h[i] = h[p];
    i = p;
  }
  h[i] = id;
}

function heapReplaceRoot(h: Int32Array, size: number, w: Float32Array, id: number): void {
  let i = 0;
  for (;;) {
    const l = 2 * i + 1;
    if (l >= size) break;
    let c = l;
    if (l + 1 < size && worse(w, h[l + 1], h[l])) c = l + 1;
    if (!worse(w, h[c], id)) break;
    h[i] = h[c];
    i = c;
  }
  h[i] = id;
}

// ---------------------------------------------------------------------------------------------
// Loop kernels. Each is one loop over the vocabulary (or the short list), call-free except for
// heap inserts, with the exp inlined by hand; it returns a number, with secondary results in
// OUT. They are warmed up on a tiny input when the module loads: V8 compiles a long first loop
// on-stack (OSR) before the code after the loop has ever run, and the resulting "insufficient
// feedback" deopt otherwise repeats on every call.

/** Secondary kernel results: [unused, argmax, first NaN index or -1, heap size, list count]. */
const OUT = new Float64Array(5);

/** Max and argmax (ties: lowest id; NaN is skipped here and caught by the sum pass). */
function kMax(w: Float32Array, V: number): number {
  let m = -Infinity;
  let am = -1;
  for (let i = 0; i < V; i++) {
    const x = w[i];
    if (x > m) {
      m = x;
      am = i;
    }
  }
  OUT[1] = am;
  return m;
}

/**
 * The H best finite tokens in a heap (OUT[3] = its size), and from them the max and argmax:
 * the best token is always in the heap, so the loop needs only the one heap comparison.
 */
function kMaxHeap(w: Float32Array, V: number, h: Int32Array, H: number): number {
  let hs = 0;
  let hmin = -Infinity;
  for (let i = 0; i < V; i++) {
    const x = w[i];
    if (x > hmin) {
      if (hs < H) {
        heapPush(h, hs, w, i);
        hs++;
        if (hs === H) hmin = w[h[0]];
      } else {
        heapReplaceRoot(h, H, w, i);
        hmin = w[h[0]];
      }
    }
  }
  let m = -Infinity;
  let am = -1;
  for (let j = 0; j < hs; j++) {
    const i = h[j];
    const x = w[i];
    if (x > m || (x === m && i < am)) {
      m = x;
      am = i;
    }
  }
  OUT[1] = am;
  OUT[3] = hs;
  return m;
}

/**
 * Σ e^((w[i]-m)·invT) over the tokens above -EXP_CUT, for a finite max m. Also finds NaN (the
 * only way d is NaN when m is finite) in its rarely taken branch: OUT[2] = index or -1.
 */
function kSum(w: Float32Array, V: number, m: number, invT: number): number {
  let s = 0;
  let bad = -1;
  for (let i = 0; i < V; i++) {
    const d = (w[i] - m) * invT;
    if (d >= -EXP_CUT) {
      const k = (0.5 - d * EXP_SCALE) | 0;
      const r = d + k * EXP_STEP;
      s += EXP_TAB[k] * (1 + r * (1 + r * (0.5 + r * (C3 + r * C4))));
    } else if (d !== d) {
      bad = i;
      break;
    }
  }
  OUT[2] = bad;
  return s;
}

/**
 * kSum plus, for the tokens with d >= lo only (the rest cannot be in the final set; skipping
 * them costs one comparison): a histogram of count and mass by bucket trunc(-d·16) of the
 * scaled log-ratio d = (w-m)·invT, and, when `list`, a list of them in id order (id, e,
 * bucket). Returns Σ e over all tokens; OUT[4] = how many are >= lo.
 */
function kSumHist(
  w: Float32Array,
  V: number,
  m: number,
  invT: number,
  lo: number,
  hc: Float64Array,
  hm: Float64Array,
  list: boolean,
  lid: Int32Array,
  le: Float64Array,
  lb: Uint16Array,
): number {
  let s = 0;
  let n = 0;
  let bad = -1;
  for (let i = 0; i < V; i++) {
    const d = (w[i] - m) * invT;
    if (d >= -EXP_CUT) {
      const k = (0.5 - d * EXP_SCALE) | 0;
      const r = d + k * EXP_STEP;
      const x = EXP_TAB[k] * (1 + r * (1 + r * (0.5 + r * (C3 + r * C4))));
      s += x;
      if (d >= lo) {
        const b = (-d * BUCKETS_PER_NAT) | 0;
        hc[b]++;
        hm[b] += x;
        if (list) {
          lid[n] = i;
          le[n] = x;
          lb[n] = b;
        }
        n++;
      }
    } else if (d !== d) {
      bad = i;
      break;
    }
  }
  OUT[2] = bad;
  OUT[4] = n;
  return s;
}

/** The (id, e, bucket) list of the tokens in buckets <= L, in id order. Returns its length. */
function kList(
  w: Float32Array,
  V: number,
  m: number,
  invT: number,
  L: number,
  lid: Int32Array,
  le: Float64Array,
  lb: Uint16Array,
): number {
  let n = 0;
  for (let i = 0; i < V; i++) {
    const d = (w[i] - m) * invT;
    if (d >= -EXP_CUT) {
      const b = (-d * BUCKETS_PER_NAT) | 0;
      if (b <= L) {
        const k = (0.5 - d * EXP_SCALE) | 0;
        const r = d + k * EXP_STEP;
        lid[n] = i;
        le[n] = EXP_TAB[k] * (1 + r * (1 + r * (0.5 + r * (C3 + r * C4))));
        lb[n] = b;
        n++;
      }
    }
  }
  return n;
}

/** Gathers (sort key, e) of the listed tokens in bucket b. Returns how many. */
function kCollect(
  lid: Int32Array,
  le: Float64Array,
  lb: Uint16Array,
  n: number,
  b: number,
  bits: Uint32Array,
  ik: Float64Array,
  iv: Float64Array,
): number {
  let c = 0;
  for (let j = 0; j < n; j++) {
    if (lb[j] === b) {
      const i = lid[j];
      let u = bits[i];
      if (u === 0x80000000) u = 0;
      u = u & 0x80000000 ? ~u >>> 0 : (u | 0x80000000) >>> 0;
      ik[c] = -(u * ID_SPACE + (ID_MASK - i));
      iv[c] = le[j];
      c++;
    }
  }
  return c;
}

/** Inverse-CDF walk in token id order over every token (no truncation), recomputing e. */
function kDrawAll(w: Float32Array, V: number, m: number, invT: number, target: number): number {
  let acc = 0;
  let last = -1;
  for (let i = 0; i < V; i++) {
    const d = (w[i] - m) * invT;
    if (d >= -EXP_CUT) {
      const k = (0.5 - d * EXP_SCALE) | 0;
      const r = d + k * EXP_STEP;
      acc += EXP_TAB[k] * (1 + r * (1 + r * (0.5 + r * (C3 + r * C4))));
      last = i;
      if (acc > target) return i;
    }
  }
  return last; // rounding: target at the very end of the mass
}

/**
 * Inverse-CDF walk, in id order, over the listed tokens that are kept: bucket <= L, and within
 * bucket L sort key <= keyLimit (0 = no key limit, -Infinity = none of bucket L). Returns the
 * token; if rounding runs the walk past the end, the last kept one.
 */
function kDrawList(
  lid: Int32Array,
  le: Float64Array,
  lb: Uint16Array,
  n: number,
  L: number,
  keyLimit: number,
  bits: Uint32Array,
  target: number,
): number {
  let acc = 0;
  let last = -1;
  for (let j = 0; j < n; j++) {
    const b = lb[j];
    if (b > L) continue;
    const i = lid[j];
    if (b === L && keyLimit < 0) {
      let u = bits[i];
      if (u === 0x80000000) u = 0;
      u = u & 0x80000000 ? ~u >>> 0 : (u | 0x80000000) >>> 0;
      if (-(u * ID_SPACE + (ID_MASK - i)) > keyLimit) continue;
    }
    acc += le[j];
    last = i;
    if (acc > target) return i;
  }
  return last;
}

function warmUp(): void {
  // Realistic arguments only: m must be the true max (d <= 0). An out-of-range table index here
  // once taught V8 that EXP_TAB[k] may be undefined, and every optimised loop then boxed numbers.
  const V = 64;
  const w = new Float32Array(V);
  for (let i = 0; i < V; i++) w[i] = ((i * 37) % 64) / 8.5 - (i === 5 ? 100 : 0);
  const m = kMax(w, V);
  const h = new Int32Array(8);
  const hc = new Float64Array(NUM_BUCKETS);
  const hm = new Float64Array(NUM_BUCKETS);
  const ik = new Float64Array(V);
  const iv = new Float64Array(V);
  const lid = new Int32Array(V);
  const le = new Float64Array(V);
  const lb = new Uint16Array(V);
  const bits = new Uint32Array(w.buffer);
  for (let r = 0; r < 3; r++) {
    kMax(w, V);
    kMaxHeap(w, V, h, 8);
    kSum(w, V, m, 1.25);
    kDrawAll(w, V, m, 1.25, 3.5);
    kSumHist(w, V, m, 0.75, -3.5, hc, hm, false, lid, le, lb);
    kSumHist(w, V, m, 1.25, -EXP_CUT, hc, hm, true, lid, le, lb);
    const n = OUT[4];
    kList(w, V, m, 1.25, 40, lid, le, lb);
    kCollect(lid, le, lb, n, 16, bits, ik, iv);
    kDrawList(lid, le, lb, n, 40, 0, bits, 3.5);
    kDrawList(lid, le, lb, n, 16, -1e9, bits, 1e9);
  }
  w[9] = NaN;
  kSum(w, V, m, 1.25);
  kSumHist(w, V, m, 1.25, -EXP_CUT, hc, hm, true, lid, le, lb);
}
warmUp();

/** Max pass (+ heap of the H best), then the softmax denominator at 1/invT. */
function maxAndSum(
  sc: Scratch,
  st: Prepared,
  V: number,
  H: number,
  invT: number,
  fail: LogitFail,
): void {
  const w = sc.work;
  const m = H === 0 ? kMax(w, V) : kMaxHeap(w, V, sc.heap, H);
  st.argmax = OUT[1];
  st.heapSize = H === 0 ? 0 : OUT[3];
  checkMax(w, V, m, fail);
  st.m = m;
  const s = kSum(w, V, m, invT);
  checkNaN(OUT[2], fail);
  st.logZ = M_log(s);
}

/** Heap path: order the heap, keep the first K, then top-p and min-p on that prefix. */
function heapCandidates(sc: Scratch, st: Prepared, p: RowParams, K: number): void {
  const w = sc.work;
  const bits = sc.bits;
  const h = sc.heap;
  const ck = sc.cKey;
  const cv = sc.cVal;
  const hs = st.heapSize;
  const m = st.m;
  const invT = st.invT;
  for (let j = 0; j < hs; j++) ck[j] = keyOf(bits, h[j]);
  sortRange(ck, cv, 0, hs - 1);
  let n = M_min(K, hs);
  let sk = 0;
  for (let j = 0; j < n; j++) {
    const d = (w[idOfKey(ck[j])] - m) * invT;
    const e = d >= -EXP_CUT ? expNeg(d) : 0;
    cv[j] = e;
    sk += e;
  }
  const o = p;
  if (o.topP < 1) {
    const target = o.topP * sk;
    let acc = 0;
    for (let j = 0; j < n; j++) {
      acc += cv[j];
      if (acc >= target) {
        n = j + 1;
        break;
      }
    }
  }
  if (o.minP > 0) {
    const t = p.lnMinP;
    for (let j = 0; j < n; j++)
      if ((w[idOfKey(ck[j])] - m) * invT < t) {
        n = j;
        break;
      }
  }
  // The draw walks the candidates in ascending id order, like the histogram path: re-sort the
  // (at most HEAP_MAX) survivors by id, leaving cKey in value order for the logprobs list.
  const di = sc.dId;
  const dv = sc.dVal;
  let total = 0;
  let c = 0;
  for (let j = 0; j < n; j++) {
    if (cv[j] > 0) {
      di[c] = idOfKey(ck[j]);
      dv[c] = cv[j];
      total += cv[j];
      c++;
    }
  }
  sortRange(di, dv, 0, c - 1);
  st.count = c;
  st.total = total;
}

/**
 * Histogram path (no top-k, or top-k above HEAP_MAX): max pass, then one exp pass that stores
 * e_i = exp(scaled log-ratio to the max) and a histogram of count and mass per 1/16 nat. Each
 * truncation stage finds its boundary bucket from the histogram, orders only that bucket's
 * tokens (quickselect), and relabels the ones it drops; the survivors are then "bucket <= L".
 */
function histPrepare(sc: Scratch, st: Prepared, p: RowParams, K: number, fail: LogitFail): void {
  const w = sc.work;
  const V = p.vocabSize;
  const o = p;
  const H = o.logprobs ?? 0;
  const m = H === 0 ? kMax(w, V) : kMaxHeap(w, V, sc.heap, H);
  st.heapSize = H === 0 ? 0 : OUT[3];
  checkMax(w, V, m, fail);
  st.m = m;
  const invT = st.invT;
  st.limit = NUM_BUCKETS - 1;
  st.keyLimit = 0;
  if (!(K !== 0 || o.topP < 1 || o.minP > 0)) {
    const s = kSum(w, V, m, invT);
    checkNaN(OUT[2], fail);
    st.logZ = M_log(s);
    st.total = s;
    st.listLen = -1; // no truncation: the draw scans the vocabulary
    return;
  }
  const hc = sc.hCount;
  const hm = sc.hMass;
  hc.fill(0);
  hm.fill(0);
  // Only tokens with d >= lo can survive, so only they enter the histogram. Min-p: d >= ln
  // minP. Top-p without top-k: tokens with p < (1-topP)/V carry < 1-topP of the mass in all,
  // so the nucleus lies above them; as Σe >= 1 (the top token's own term), that is implied by
  // e < (1-topP)/V, a bound known before the pass. Top-k needs every token counted.
  let lo = -EXP_CUT;
  if (K === 0) {
    if (o.topP < 1) lo = M_max(lo, M_log((1 - o.topP) / V));
    if (o.minP > 0) lo = M_max(lo, p.lnMinP);
  }
  // With top-k the histogram must count every token; the list is built after, for the
  // buckets the top-k set reaches.
  const S = kSumHist(w, V, m, invT, lo, hc, hm, K === 0, sc.lId, sc.lE, sc.lB);
  checkNaN(OUT[2], fail);
  st.logZ = M_log(S);
  const npos = OUT[4];
  let nList = npos;
  let L = NUM_BUCKETS - 1;
  let keyLimit = 0; // 0 = none (keys are negative)
  let itemsBucket = -1;
  let nItems = 0;
  const ik = sc.itKey;
  const iv = sc.itVal;
  const collect = (b: number): void => {
    nItems = kCollect(sc.lId, sc.lE, sc.lB, nList, b, sc.bits, ik, iv);
    itemsBucket = b;
  };
  // Keeps items [0, n) of the boundary bucket: their mass and largest key.
  const keep = (n: number): void => {
    nItems = n;
    let mass = 0;
    let kmax = -Infinity;
    for (let j = 0; j < n; j++) {
      mass += iv[j];
      if (ik[j] > kmax) kmax = ik[j];
    }
    hm[itemsBucket] = mass;
    keyLimit = kmax; // -Infinity when n = 0: nothing of this bucket
    L = itemsBucket;
  };

  // Top-k (k above HEAP_MAX): the K best tokens.
  let topKBound = false;
  if (K !== 0 && K < npos) {
    topKBound = true;
    let cum = 0;
    let b = 0;
    while (cum + hc[b] < K) cum += hc[b++];
    nList = kList(w, V, m, invT, b, sc.lId, sc.lE, sc.lB);
    collect(b);
    selectCount(ik, iv, nItems, K - cum);
    keep(K - cum);
  } else if (K !== 0) {
    nList = kList(w, V, m, invT, L, sc.lId, sc.lE, sc.lB); // k >= every token: no cut
  }
  // Top-p on the (top-k renormalised) distribution.
  if (o.topP < 1) {
    // Mass of the distribution top-p sees: the top-k set's, or everything's (the histogram
    // then holds only the tokens above lo, but the nucleus lies among them).
    let sk = S;
    if (topKBound) {
      sk = 0;
      for (let b = 0; b <= L; b++) sk += hm[b];
    }
    const target = o.topP * sk;
    let acc = 0;
    let b = 0;
    while (b < L && acc + hm[b] < target) acc += hm[b++];
    // (If even bucket L falls short, that is rounding: the whole set is the nucleus.)
    if (acc + hm[b] >= target) {
      if (itemsBucket !== b) collect(b);
      keep(selectMass(ik, iv, nItems, target - acc));
    }
  }
  // Min-p: keep d >= ln(minP). Buckets above the threshold's are whole; look inside its own.
  if (o.minP > 0) {
    const t = p.lnMinP;
    const pos = -t * BUCKETS_PER_NAT;
    if (pos < NUM_BUCKETS && M_floor(pos) <= L) {
      const bM = M_floor(pos);
      if (itemsBucket !== bM) collect(bM);
      let kept = 0;
      for (let j = 0; j < nItems; j++) {
        if ((w[idOfKey(ik[j])] - m) * invT >= t) {
          if (j !== kept) swap2(ik, iv, j, kept);
          kept++;
        }
      }
      // The survivors are a key prefix of the bucket (a value threshold), possibly empty.
      keep(kept);
    }
  }
  st.listLen = nList;
  let total = 0;
  for (let b = 0; b <= L; b++) total += hm[b];
  st.limit = L;
  st.keyLimit = keyLimit;
  st.total = total;
}
/** Processed logprob used everywhere: scaled log-ratio to the top token minus log Σ. */
function lp(w: Float32Array, i: number, m: number, invT: number, logZ: number): number {
  return (w[i] - m) * invT - logZ;
}

function checkNaN(bad: number, fail: LogitFail): void {
  if (bad >= 0) fail('nan', bad);
}

/**
 * After the max pass (OUT[1] = the argmax, the first +Infinity if any): +Infinity is an error;
 * so is all -Infinity (or NaN: the first NaN is reported).
 */
function checkMax(w: Float32Array, V: number, m: number, fail: LogitFail): void {
  if (m === Infinity) fail('posinf', OUT[1]);
  if (m === -Infinity) {
    for (let i = 0; i < V; i++) if (w[i] !== w[i]) fail('nan', i);
    fail('masked', 0);
  }
}

const MODE_GREEDY = 0;
const MODE_HEAP = 1;
const MODE_HIST = 2;

/** Per-row results of prepareRow(); one module-level instance, filled in place (no allocation). */
export interface Prepared {
  /** @internal */ sc: Scratch;
  /** The row's vocabulary size. */
  vocab: number;
  /** @internal */ mode: number;
  /** The max logit (after the caller's adjustments). */
  m: number;
  /** @internal */ invT: number;
  /** log Σ e^((w - m) / T) over the whole vocabulary. */
  logZ: number;
  /** @internal */ argmax: number;
  /** @internal */ heapSize: number;
  /** @internal */ count: number;
  /** @internal */ total: number;
  /** @internal Histogram path: kept = listed, bucket <= limit, and in bucket `limit` key <= keyLimit. */
  limit: number;
  /** @internal */ keyLimit: number;
  /** @internal Histogram path: length of the (id, e, bucket) list; -1 = no truncation, no list. */
  listLen: number;
}

const PREP: Prepared = {
  sc: null as unknown as Scratch,
  vocab: 0,
  mode: 0,
  m: 0,
  invT: 1,
  logZ: 0,
  argmax: 0,
  heapSize: 0,
  count: 0,
  total: 0,
  limit: -1,
  keyLimit: 0,
  listLen: -1,
};

/**
 * Copies `logits` (p.vocabSize values) into the shared scratch, lets `adjust` modify the copy in
 * place (Sampler: logit bias and penalties), checks it (fail() for NaN, +Infinity, all
 * -Infinity) and runs every truncation stage. The result is valid until the next call.
 */
export function prepareRow(
  logits: Float32Array,
  p: RowParams,
  fail: LogitFail,
  adjust?: (w: Float32Array) => void,
): Prepared {
  const V = p.vocabSize;
  const sc = scratch(V);
  const w = sc.work;
  w.set(logits);
  if (adjust) adjust(w);
  const st = PREP;
  st.sc = sc;
  st.vocab = V;
  if (p.temperature === 0) {
    st.mode = MODE_GREEDY;
    st.invT = 1;
    maxAndSum(sc, st, V, p.logprobs ?? 0, 1, fail);
    return st;
  }
  st.invT = 1 / p.temperature;
  const K = p.topK;
  if (K !== 0 && K <= HEAP_MAX) {
    st.mode = MODE_HEAP;
    maxAndSum(sc, st, V, M_max(K, p.logprobs ?? 0), st.invT, fail);
    heapCandidates(sc, st, p, K);
    return st;
  }
  st.mode = MODE_HIST;
  histPrepare(sc, st, p, K, fail);
  return st;
}

/** Whether draw() uses its uniform: false for greedy rows (which consume no randomness). */
export function needsUniform(st: Prepared): boolean {
  return st.mode !== MODE_GREEDY;
}

/**
 * The token for uniform u in [0, 1): the argmax when greedy, else the inverse CDF over the
 * survivors in ascending id order (target = u * total; the first survivor whose cumulative
 * mass exceeds it; the last survivor when rounding runs the walk past the end).
 */
export function draw(st: Prepared, u: number): number {
  const sc = st.sc;
  if (st.mode === MODE_GREEDY) return st.argmax;
  const target = u * st.total;
  if (st.mode === MODE_HEAP) {
    const n = st.count;
    const v = sc.dVal;
    let acc = 0;
    let j = 0;
    for (; j < n - 1; j++) {
      acc += v[j];
      if (acc > target) break;
    }
    return sc.dId[j]; // j = n - 1 also when rounding runs past the end
  }
  return st.listLen < 0
    ? kDrawAll(sc.work, st.vocab, st.m, st.invT, target)
    : kDrawList(sc.lId, sc.lE, sc.lB, st.listLen, st.limit, st.keyLimit, sc.bits, target);
}

/** The processed logprob of `token`: log-softmax of the adjusted logits / T, before truncation. */
export function logprobOf(st: Prepared, token: number): number {
  return lp(st.sc.work, token, st.m, st.invT, st.logZ);
}

/** The n most likely tokens (n <= the RowParams' logprobs), descending, ties: lower id first. */
export function topList(st: Prepared, n: number): { token: number; logprob: number }[] {
  const sc = st.sc;
  const out: { token: number; logprob: number }[] = [];
  if (n === 0) return out;
  const k = sc.cKey;
  const size = st.heapSize;
  // The heap holds the max(K, n) best finite tokens. In heap mode cKey already has them in
  // order; otherwise (greedy, histogram) cKey/cVal are free to sort them in.
  if (st.mode !== MODE_HEAP) {
    for (let j = 0; j < size; j++) k[j] = keyOf(sc.bits, sc.heap[j]);
    sortRange(k, sc.cVal, 0, size - 1);
  }
  const w = sc.work;
  for (let j = 0; j < M_min(n, size); j++) {
    const id = idOfKey(k[j]);
    out.push({ token: id, logprob: lp(w, id, st.m, st.invT, st.logZ) });
  }
  return out;
}

/**
 * The distribution draw() samples from (after every stage, renormalised), ids ascending. For
 * greedy, the argmax with probability 1.
 */
export function distributionOf(st: Prepared): { tokens: Int32Array; probs: Float64Array } {
  const sc = st.sc;
  if (st.mode === MODE_GREEDY)
    return { tokens: Int32Array.of(st.argmax), probs: Float64Array.of(1) };
  const pairs: [number, number][] = [];
  if (st.mode === MODE_HEAP) {
    for (let j = 0; j < st.count; j++) pairs.push([sc.dId[j], sc.dVal[j] / st.total]);
  } else {
    // The same predicate as kDrawList, written plainly (this is not a hot path).
    const w = sc.work;
    if (st.listLen < 0) {
      for (let i = 0; i < st.vocab; i++) {
        const d = (w[i] - st.m) * st.invT;
        if (d >= -EXP_CUT) pairs.push([i, expNeg(d) / st.total]);
      }
    } else {
      for (let j = 0; j < st.listLen; j++) {
        const i = sc.lId[j];
        const b = sc.lB[j];
        if (b > st.limit) continue;
        if (b === st.limit && st.keyLimit < 0 && keyOf(sc.bits, i) > st.keyLimit) continue;
        pairs.push([i, sc.lE[j] / st.total]);
      }
    }
  }
  return {
    tokens: Int32Array.from(pairs, (p) => p[0]),
    probs: Float64Array.from(pairs, (p) => p[1]),
  };
}
