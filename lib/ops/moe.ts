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

/** Top-k choices per token: `experts` and `weights` are [T·k], token-major. */
export interface RoutingDecision {
  experts: Int32Array;
  weights: Float32Array;
}

/** A routing policy maps router logits ([tokens, numExperts], row-major) to top-k choices. */
export interface RoutingPolicy {
  readonly name: string;
  route(logits: Float32Array, tokens: number, numExperts: number, k: number): RoutingDecision;
}

const exp = Math.exp;

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
      if (!Number.isInteger(k) || k < 1 || k > numExperts)
        throw invalidArg('route', 'k', `an integer in [1, ${numExperts}]`, k);
      if (logits.length !== tokens * numExperts)
        throw invalidArg(
          'route',
          'logits',
          `${tokens * numExperts} values ([${tokens}, ${numExperts}])`,
          logits.length,
        );
      const experts = new Int32Array(tokens * k);
      const weights = new Float32Array(tokens * k);
      const p = new Float64Array(numExperts);
      for (let t = 0; t < tokens; t++) {
        const row = t * numExperts;
        let m = -Infinity;
        for (let e = 0; e < numExperts; e++) if (logits[row + e] > m) m = logits[row + e];
        let sum = 0;
        for (let e = 0; e < numExperts; e++) sum += p[e] = exp(logits[row + e] - m);
        for (let e = 0; e < numExperts; e++) p[e] /= sum;
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
