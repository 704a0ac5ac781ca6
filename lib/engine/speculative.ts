/**
 * Speculative decoding: proposals and the acceptance rule.
 *
 * A proposer guesses the next k tokens of a sequence; the target model scores the last real
 * token plus the k drafts in one step (k + 1 query rows of the same ragged batch); the rule
 * below accepts a prefix of the drafts and draws one more token, so every verification step
 * yields between 1 and k + 1 tokens.
 *
 * Exactness (Leviathan et al. 2023, Chen et al. 2023): with target distribution p and draft
 * distribution q at a position, accepting draft d with probability min(1, p(d) / q(d)) and,
 * on rejection, drawing from norm(max(0, p − q)) yields a token distributed exactly as p.
 * N-gram drafts are deterministic (q is one-hot on d), so the rule becomes: accept with
 * probability p(d), otherwise draw from p with d removed. Greedy decoding is the case where p
 * is one-hot on the argmax: accept iff d is the argmax, so the output equals plain greedy.
 */
import { SamplingDistribution } from '../model/sampler';

export interface NgramOptions {
  /** Longest suffix matched against the history. Default 3. */
  maxNgram?: number;
  /** Shortest suffix tried before giving up. Default 1. */
  minNgram?: number;
}

/**
 * Prompt lookup (n-gram) proposal: finds the most recent earlier occurrence of the sequence's
 * last n tokens (n from maxNgram down to minNgram) and proposes up to `k` tokens that followed
 * it. Returns an empty array when nothing matches. O(length · n) per call, no index: a
 * backwards scan of a few thousand tokens costs microseconds, less than maintaining a
 * suffix structure across truncations.
 */
export function proposeNgram(
  tokens: ArrayLike<number>,
  length: number,
  k: number,
  options: NgramOptions = {},
): Int32Array {
  const maxN = options.maxNgram ?? 3;
  const minN = options.minNgram ?? 1;
  if (k <= 0 || length < 2) return new Int32Array(0);
  for (let n = Math.min(maxN, length - 1); n >= minN; n--) {
    const tail = length - n; // the suffix is tokens[tail .. length)
    // Candidate starts s < tail, most recent first; the continuation begins at s + n.
    for (let s = tail - 1; s >= 0; s--) {
      let j = 0;
      while (j < n && tokens[s + j] === tokens[tail + j]) j++;
      if (j < n) continue;
      const from = s + n;
      const count = Math.min(k, length - from);
      if (count <= 0) continue;
      const out = new Int32Array(count);
      for (let i = 0; i < count; i++) out[i] = tokens[from + i];
      return out;
    }
  }
  return new Int32Array(0);
}

/** Probability of `token` in a sparse distribution (0 when absent). Tokens are ascending. */
export function probOf(dist: SamplingDistribution, token: number): number {
  const t = dist.tokens;
  let lo = 0;
  let hi = t.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (t[mid] === token) return dist.probs[mid];
    if (t[mid] < token) lo = mid + 1;
    else hi = mid - 1;
  }
  return 0;
}

/**
 * The rejection rule's residual draw: a token from norm(max(0, p − q)), with q given sparsely
 * (q = undefined with `exclude` means q is one-hot on `exclude`). `u` is one uniform in [0, 1).
 * Falls back to p when the residual has no mass (p ≤ q everywhere, which only rounding makes
 * possible after a rejection).
 */
export function drawResidual(
  p: SamplingDistribution,
  q: SamplingDistribution | undefined,
  exclude: number,
  u: number,
): number {
  const n = p.tokens.length;
  const r = new Float64Array(n);
  let total = 0;
  for (let i = 0; i < n; i++) {
    const t = p.tokens[i];
    const qi = q ? probOf(q, t) : t === exclude ? 1 : 0;
    const v = p.probs[i] - qi;
    if (v > 0) total += r[i] = v;
  }
  const w = total > 0 ? r : p.probs;
  if (total <= 0) for (let i = 0; i < n; i++) total += w[i];
  const target = u * total;
  let acc = 0;
  for (let i = 0; i < n; i++) {
    acc += w[i];
    if (acc > target && w[i] > 0) return p.tokens[i];
  }
  for (let i = n - 1; i >= 0; i--) if (w[i] > 0) return p.tokens[i];
  return p.tokens[n - 1];
}

/**
 * The acceptance test for draft `d` at one position: p is the target's distribution, q the
 * draft's (undefined: a deterministic proposal, q one-hot on d). `u1` decides acceptance
 * (accept iff u1 < min(1, p(d) / q(d))); on rejection `u2` draws from the residual. Returns the
 * token to emit and whether it is the draft.
 */
export function acceptDraft(
  p: SamplingDistribution,
  q: SamplingDistribution | undefined,
  d: number,
  u1: number,
  u2: () => number,
): { token: number; accepted: boolean } {
  const pd = probOf(p, d);
  const qd = q ? probOf(q, d) : 1;
  if (qd > 0 && u1 < Math.min(1, pd / qd)) return { token: d, accepted: true };
  return { token: drawResidual(p, q, d, u2()), accepted: false };
}

/** Counters of one engine's speculation. */
export interface SpeculativeStats {
  method: 'none' | 'ngram' | 'draft';
  /** Verification entries (decode rows that carried at least one draft). */
  verifySteps: number;
  /** Draft tokens proposed and scored. */
  proposedTokens: number;
  /** Of those, accepted. */
  acceptedTokens: number;
  /** acceptedTokens / proposedTokens. */
  acceptanceRate: number;
  /** Tokens emitted per verification entry (accepted + the one drawn): 1 .. k + 1. */
  tokensPerStep: number;
}
