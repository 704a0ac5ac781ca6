/**
 * Mixture-of-experts plumbing around the grouped matmul (quant.ts qmatmulGrouped):
 * routing policies (pure TypeScript, pluggable) and the weighted combine (native).
 *
 * A MoE FFN step: router logits [T, E] → policy → (experts [T·k], weights [T·k]) →
 * expertPermutation → qmatmulGrouped (gate/up, then down) → moeCombine into the residual.
 */
import { invalidArg } from '../runtime/errors';
import { Tensor } from '../runtime/tensor';
import { binding, OpOptions, streamOf, tensorArg } from './common';

/**
 * Top-k choices per token: `experts` and `weights` are [T·k], token-major. An expert id of
 * -1 marks an assignment dropped (e.g. by {@link withCapacity}): its weight is 0 and it
 * gets no row in the grouped matmul (see expertPermutation).
 */
export interface RoutingDecision {
  experts: Int32Array;
  weights: Float32Array;
}

/** What the caller knows about a routing call. */
export interface RoutingContext {
  /** The transformer layer being routed (per-layer biases, per-layer load statistics). */
  layer?: number;
}

/**
 * A policy's full preference for every token, for wrappers that re-route (withCapacity).
 * `order` [T, E]: each token's experts, most preferred first; its first k are exactly the
 * experts route() picks, in the same order. `weight` [T, E], indexed by expert id: the
 * weight expert e would carry for token t, on the normalization of the token's top-k.
 */
export interface RoutingRanking {
  order: Int32Array;
  weight: Float32Array;
}

/** A routing policy maps router logits ([tokens, numExperts], row-major) to top-k choices. */
export interface RoutingPolicy {
  readonly name: string;
  /**
   * Returns arrays the caller owns (wrappers may modify them). Ties between equal scores go
   * to the lower expert id, so a decision is a pure function of its inputs.
   */
  route(
    logits: Float32Array,
    tokens: number,
    numExperts: number,
    k: number,
    ctx?: RoutingContext,
  ): RoutingDecision;
  /**
   * Optional full ranking (O(T·E log E)); needed by withCapacity's 'reroute', which ranks
   * one token at a time (tokens = 1, that token's logits row): token-choice policies decide
   * each token from its own row only.
   */
  rank?(
    logits: Float32Array,
    tokens: number,
    numExperts: number,
    k: number,
    ctx?: RoutingContext,
  ): RoutingRanking;
}

const exp = Math.exp;
const fround = Math.fround;

/** Validates route()/rank() arguments (shared by every policy). */
export function checkRouteArgs(
  op: string,
  logits: Float32Array,
  tokens: number,
  numExperts: number,
  k: number,
): void {
  if (!(logits instanceof Float32Array)) throw invalidArg(op, 'logits', 'a Float32Array', logits);
  if (!Number.isSafeInteger(tokens) || tokens < 0)
    throw invalidArg(op, 'tokens', 'a non-negative integer', tokens);
  if (!Number.isSafeInteger(numExperts) || numExperts < 1)
    throw invalidArg(op, 'numExperts', 'a positive integer', numExperts);
  if (!Number.isInteger(k) || k < 1 || k > numExperts)
    throw invalidArg(op, 'k', `an integer in [1, ${numExperts}]`, k);
  if (logits.length !== tokens * numExperts)
    throw invalidArg(
      op,
      'logits',
      `${tokens * numExperts} values ([${tokens}, ${numExperts}])`,
      logits.length,
    );
}

/** Fills p (float64 [E]) with the softmax of one logits row. */
function softmaxRow(logits: Float32Array, row: number, numExperts: number, p: Float64Array): void {
  let m = -Infinity;
  for (let e = 0; e < numExperts; e++) if (logits[row + e] > m) m = logits[row + e];
  let sum = 0;
  for (let e = 0; e < numExperts; e++) sum += p[e] = exp(logits[row + e] - m);
  for (let e = 0; e < numExperts; e++) p[e] /= sum;
}

/**
 * Softmax over all experts, keep the k largest probabilities (ties: lower expert id), and
 * with `normalize` (Mixtral) rescale the kept ones to sum to 1. This is llama.cpp's
 * build_moe_ffn with softmax gating; with normalize it equals a softmax over the top-k logits.
 */
export function softmaxTopK(options: { normalize?: boolean } = {}): RoutingPolicy {
  const normalize = options.normalize ?? true;
  return {
    name: normalize ? 'softmax-topk-norm' : 'softmax-topk',
    route(logits, tokens, numExperts, k) {
      checkRouteArgs('route', logits, tokens, numExperts, k);
      const experts = new Int32Array(tokens * k);
      const weights = new Float32Array(tokens * k);
      const p = new Float64Array(numExperts);
      for (let t = 0; t < tokens; t++) {
        softmaxRow(logits, t * numExperts, numExperts, p);
        // k is small (1..8): selection by repeated max beats sorting.
        let kept = 0;
        for (let j = 0; j < k; j++) {
          let best = -1;
          for (let e = 0; e < numExperts; e++)
            if (p[e] >= 0 && (best < 0 || p[e] > p[best])) best = e;
          experts[t * k + j] = best;
          weights[t * k + j] = p[best];
          kept += p[best];
          p[best] = -1; // taken
        }
        if (normalize) for (let j = 0; j < k; j++) weights[t * k + j] /= kept;
      }
      return { experts, weights };
    },
    rank(logits, tokens, numExperts, k) {
      checkRouteArgs('rank', logits, tokens, numExperts, k);
      const order = new Int32Array(tokens * numExperts);
      const weight = new Float32Array(tokens * numExperts);
      const p = new Float64Array(numExperts);
      const idx = Array.from({ length: numExperts }, (_, e) => e);
      for (let t = 0; t < tokens; t++) {
        const row = t * numExperts;
        softmaxRow(logits, row, numExperts, p);
        for (let e = 0; e < numExperts; e++) idx[e] = e;
        idx.sort((a, b) => p[b] - p[a] || a - b);
        let kept = 0;
        for (let j = 0; j < k; j++) kept += p[idx[j]];
        for (let e = 0; e < numExperts; e++) {
          order[row + e] = idx[e];
          // rounded as route() rounds: the chosen experts' weights match it bit for bit
          weight[row + e] = normalize ? fround(p[e]) / kept : p[e];
        }
      }
      return { order, weight };
    },
  };
}

export interface MoeCombineOptions extends OpOptions {
  /** Add into `out` (e.g. the residual stream) instead of overwriting it. Default false. */
  accumulate?: boolean;
}

/**
 * The weighted un-permute after a grouped matmul: out[t] (+)= Σ_j weights[t·k+j] ·
 * y[slot[t·k+j]] (slot from expertPermutation). y [R, N] (f32/f16/bf16), out f32 [T, N].
 * Slot values are checked on the stream.
 */
export function moeCombine(
  y: Tensor,
  slot: Tensor | Int32Array,
  weights: Tensor | Float32Array,
  k: number,
  out: Tensor,
  options: MoeCombineOptions = {},
): Tensor {
  y = tensorArg(y, 'moeCombine', 'y');
  out = tensorArg(out, 'moeCombine', 'out');
  const rt = y.runtime;
  const s = slot instanceof Int32Array ? rt.tensor(slot, [slot.length], { dtype: 'i32' }) : slot;
  const w = weights instanceof Float32Array ? rt.tensor(weights, [weights.length]) : weights;
  try {
    binding().moeCombine(
      streamOf(y, options).native,
      y.native,
      tensorArg(s, 'moeCombine', 'slot').native,
      tensorArg(w, 'moeCombine', 'weights').native,
      k,
      options.accumulate ?? false,
      out.native,
    );
  } finally {
    // queued ops hold their own references
    if (s !== slot) s.dispose();
    if (w !== weights) w.dispose();
  }
  return out;
}
