/**
 * MoE routing policies beyond softmax top-k, and wrappers that compose with any policy:
 *
 * - {@link sigmoidGroupTopK}: DeepSeek-V3 gating (sigmoid scores, a selection-only bias,
 *   group-limited selection, routed scaling factor);
 * - {@link withCapacity}: a per-expert capacity (GShard / Switch style), dropping or
 *   re-routing the assignments over it;
 * - {@link withLoadStats}: per-layer, per-expert assignment counts.
 *
 * Wrappers nest outside-in: `withLoadStats(withCapacity(sigmoidGroupTopK(...), ...))` counts
 * what the model actually runs (drops included); with the nesting reversed it counts what the
 * inner policy asked for.
 */
import { invalidArg } from '../runtime/errors';
import {
  checkRouteArgs,
  RoutingContext,
  RoutingDecision,
  RoutingPolicy,
  RoutingRanking,
} from './moe';

const exp = Math.exp;
const ceil = Math.ceil;

export interface SigmoidGroupTopKOptions {
  /**
   * Per-expert bias ([numExperts]) added to the scores for selection only: it never enters
   * the weights (DeepSeek-V3's e_score_correction_bias, the auxiliary-loss-free balancing
   * term). A function gets the layer (RoutingContext.layer) and may return undefined for no
   * bias on that layer.
   */
  bias?: Float32Array | ((layer: number) => Float32Array | undefined);
  /** Split the experts into this many equal groups (n_group). Default 1. */
  groups?: number;
  /** Keep the experts of this many best groups (topk_group). Default: all groups. */
  topkGroups?: number;
  /** Rescale the chosen scores to sum to 1 (norm_topk_prob). Default true. */
  normalize?: boolean;
  /** Multiplies the weights, after normalization (routed_scaling_factor). Default 1. */
  scale?: number;
}

/**
 * DeepSeek-V3 routing. Per token: s = sigmoid(logits); selection scores s + bias; with
 * groups, each group scores the sum of its two best selection scores (its best one for
 * single-expert groups) and only the `topkGroups` best groups stay eligible; the k best
 * eligible experts are chosen (ties: lower group id, lower expert id). Weights are the
 * chosen experts' unbiased s, divided by their sum if `normalize` (0 when that sum is 0),
 * times `scale`. A NaN selection score ranks below every other.
 */
export function sigmoidGroupTopK(options: SigmoidGroupTopKOptions = {}): RoutingPolicy {
  const op = 'sigmoidGroupTopK';
  const { bias } = options;
  if (bias !== undefined && !(bias instanceof Float32Array) && typeof bias !== 'function')
    throw invalidArg(op, 'bias', 'a Float32Array or a function of the layer', bias);
  const groups = options.groups ?? 1;
  if (!Number.isSafeInteger(groups) || groups < 1)
    throw invalidArg(op, 'groups', 'a positive integer', groups);
  const topkGroups = options.topkGroups ?? groups;
  if (!Number.isSafeInteger(topkGroups) || topkGroups < 1 || topkGroups > groups)
    throw invalidArg(op, 'topkGroups', `an integer in [1, ${groups}] (groups)`, topkGroups);
  const normalize = options.normalize ?? true;
  if (typeof normalize !== 'boolean') throw invalidArg(op, 'normalize', 'a boolean', normalize);
  const scale = options.scale ?? 1;
  if (typeof scale !== 'number' || !(scale > 0) || scale === Infinity)
    throw invalidArg(op, 'scale', 'a positive finite number', scale);
  const limited = topkGroups < groups;

  // Scratch, grown to the largest expert count seen: route() allocates only its outputs.
  let s = new Float64Array(0); // unbiased sigmoid scores
  let sel = new Float64Array(0); // selection scores (biased, NaN → -Infinity)
  let blocked = new Uint8Array(0); // 1: outside the kept groups, or already chosen
  const gscore = new Float64Array(groups);
  const gkept = new Uint8Array(groups);

  function prepare(
    fn: string,
    logits: Float32Array,
    tokens: number,
    numExperts: number,
    k: number,
    ctx: RoutingContext | undefined,
  ): Float32Array | undefined {
    checkRouteArgs(fn, logits, tokens, numExperts, k);
    if (numExperts % groups !== 0)
      throw invalidArg(fn, 'groups', `a divisor of numExperts (${numExperts})`, groups);
    if (topkGroups * (numExperts / groups) < k)
      throw invalidArg(
        fn,
        'topkGroups',
        `at least ${ceil(k / (numExperts / groups))} groups of ${numExperts / groups} experts ` +
          `to choose k = ${k} from`,
        topkGroups,
      );
    let b: Float32Array | undefined;
    if (typeof bias === 'function') {
      const layer = ctx?.layer;
      if (layer === undefined)
        throw invalidArg(fn, 'ctx.layer', 'a layer index (the bias is per layer)', layer);
      b = bias(layer);
    } else b = bias;
    if (b !== undefined) {
      if (!(b instanceof Float32Array) || b.length !== numExperts)
        throw invalidArg(fn, 'bias', `a Float32Array of ${numExperts} values (numExperts)`, b);
      for (let e = 0; e < numExperts; e++)
        if (!Number.isFinite(b[e])) throw invalidArg(fn, 'bias', 'finite values', b[e]);
    }
    if (s.length < numExperts) {
      s = new Float64Array(numExperts);
      sel = new Float64Array(numExperts);
      blocked = new Uint8Array(numExperts);
    }
    return b;
  }

  /** Scores token t into s / sel and blocks the experts outside its kept groups. */
  function scoreToken(
    logits: Float32Array,
    t: number,
    numExperts: number,
    b: Float32Array | undefined,
  ): void {
    const row = t * numExperts;
    for (let e = 0; e < numExperts; e++) {
      const v = (s[e] = 1 / (1 + exp(-logits[row + e])));
      const x = b === undefined ? v : v + b[e];
      sel[e] = x === x ? x : -Infinity;
      blocked[e] = 0;
    }
    if (!limited) return;
    const size = numExperts / groups;
    for (let g = 0; g < groups; g++) {
      let m1 = -Infinity;
      let m2 = -Infinity;
      for (let e = g * size; e < (g + 1) * size; e++) {
        const x = sel[e];
        if (x > m1) {
          m2 = m1;
          m1 = x;
        } else if (x > m2) m2 = x;
      }
      gscore[g] = size >= 2 ? m1 + m2 : m1;
      gkept[g] = 0;
    }
    for (let r = 0; r < topkGroups; r++) {
      let best = -1;
      for (let g = 0; g < groups; g++)
        if (!gkept[g] && (best < 0 || gscore[g] > gscore[best])) best = g;
      gkept[best] = 1;
    }
    for (let g = 0; g < groups; g++) if (!gkept[g]) blocked.fill(1, g * size, (g + 1) * size);
  }

  return {
    name:
      `sigmoid-topk${normalize ? '-norm' : ''}` +
      (limited ? `-group${topkGroups}of${groups}` : '') +
      (bias ? '-bias' : '') +
      (scale !== 1 ? `-x${scale}` : ''),
    route(logits, tokens, numExperts, k, ctx) {
      const b = prepare('route', logits, tokens, numExperts, k, ctx);
      const experts = new Int32Array(tokens * k);
      const weights = new Float32Array(tokens * k);
      for (let t = 0; t < tokens; t++) {
        scoreToken(logits, t, numExperts, b);
        let sum = 0;
        // k is small: repeated max (first maximum wins → ties go to the lower id)
        for (let j = 0; j < k; j++) {
          let best = -1;
          for (let e = 0; e < numExperts; e++)
            if (!blocked[e] && (best < 0 || sel[e] > sel[best])) best = e;
          blocked[best] = 1;
          experts[t * k + j] = best;
          sum += s[best];
        }
        const f = normalize ? (sum > 0 ? scale / sum : 0) : scale;
        for (let j = t * k; j < t * k + k; j++) weights[j] = s[experts[j]] * f;
      }
      return { experts, weights };
    },
    rank(logits, tokens, numExperts, k, ctx) {
      const b = prepare('rank', logits, tokens, numExperts, k, ctx);
      const order = new Int32Array(tokens * numExperts);
      const weight = new Float32Array(tokens * numExperts);
      const idx = Array.from({ length: numExperts }, (_, e) => e);
      // the kept groups' experts first (so a re-route leaves them only when they are full)
      const cmp = (x: number, y: number) => blocked[x] - blocked[y] || sel[y] - sel[x] || x - y;
      for (let t = 0; t < tokens; t++) {
        scoreToken(logits, t, numExperts, b);
        for (let e = 0; e < numExperts; e++) idx[e] = e;
        idx.sort(cmp);
        let sum = 0;
        for (let j = 0; j < k; j++) sum += s[idx[j]];
        const f = normalize ? (sum > 0 ? scale / sum : 0) : scale;
        const row = t * numExperts;
        for (let e = 0; e < numExperts; e++) {
          order[row + e] = idx[e];
          weight[row + e] = s[e] * f;
        }
      }
      return { order, weight };
    },
  };
}

export type OverflowMode = 'drop' | 'reroute';

export interface CapacityOptions {
  /**
   * Capacity per expert = ceil(capacityFactor · tokens · k / numExperts) assignments per
   * routing call. > 0; Infinity disables the limit.
   */
  capacityFactor: number;
  /**
   * What happens to an assignment over its expert's capacity. 'drop' (default, GShard /
   * Switch): expert -1, weight 0; the token's other weights are left as they were, so its
   * weights no longer sum to 1 (the residual carries the rest). 'reroute': the token's next
   * best expert (the policy's rank()) that has room and that the token has not chosen
   * already, with the weight the policy gives that expert for this token (its top-k
   * normalization, not renormalized); dropped as above if no expert has room.
   */
  overflow?: OverflowMode;
}

export interface CapacityPolicy extends RoutingPolicy {
  readonly capacityFactor: number;
  readonly overflow: OverflowMode;
  /** Assignments one expert accepts in a call routing `tokens` tokens. */
  capacity(tokens: number, numExperts: number, k: number): number;
}

/**
 * Wraps a policy with a per-expert capacity. Assignments claim capacity rank-major: every
 * token's first choice, in token order, then every token's second choice, and so on (as
 * GShard does for its top-2). Why rank-major: a token's preferred expert is worth more to
 * it than another token's fallback, so a token never loses its top choice to another
 * token's k-th; token order inside a rank makes the result deterministic and favors
 * earlier positions. Re-routed assignments claim their new expert at once.
 */
export function withCapacity(policy: RoutingPolicy, options: CapacityOptions): CapacityPolicy {
  const op = 'withCapacity';
  if (!policy || typeof policy.route !== 'function')
    throw invalidArg(op, 'policy', 'a RoutingPolicy', policy);
  if (typeof options !== 'object' || options === null)
    throw invalidArg(op, 'options', 'an object', options);
  const cf = options.capacityFactor;
  if (typeof cf !== 'number' || !(cf > 0))
    throw invalidArg(op, 'capacityFactor', 'a number > 0 (Infinity: unlimited)', cf);
  const overflow = options.overflow ?? 'drop';
  if (overflow !== 'drop' && overflow !== 'reroute')
    throw invalidArg(op, 'overflow', "'drop' or 'reroute'", overflow);
  if (overflow === 'reroute' && typeof policy.rank !== 'function')
    throw invalidArg(op, 'policy', `a policy with rank() for overflow 'reroute'`, policy.name);
  const capacity = (tokens: number, numExperts: number, k: number) =>
    ceil((cf * tokens * k) / numExperts);
  let load = new Int32Array(0);

  return {
    name: `${policy.name}+capacity(${cf},${overflow})`,
    capacityFactor: cf,
    overflow,
    capacity,
    route(logits, tokens, numExperts, k, ctx) {
      const d = policy.route(logits, tokens, numExperts, k, ctx);
      const n = tokens * k;
      if (d.experts.length !== n || d.weights.length !== n)
        throw invalidArg(
          'route',
          'decision',
          `experts and weights of ${n} values from ${policy.name}`,
          d.experts.length,
        );
      const cap = capacity(tokens, numExperts, k);
      if (cap >= n) return d; // no expert can be over
      if (load.length < numExperts) load = new Int32Array(numExperts);
      load.fill(0, 0, numExperts);
      let { experts, weights } = d;
      let copied = false;
      // re-routing ranks only the tokens that overflow, each once (a full sort per token)
      let ranks: (RoutingRanking | undefined)[] | undefined;
      for (let j = 0; j < k; j++)
        for (let t = 0; t < tokens; t++) {
          const i = t * k + j;
          const e = experts[i];
          if (e === -1) continue; // dropped by the inner policy
          if (!(e >= 0 && e < numExperts))
            throw invalidArg('route', 'decision', `expert ids in [0, ${numExperts}) or -1`, e);
          if (load[e] < cap) {
            load[e]++;
            continue;
          }
          if (!copied) {
            // copy on write: the inner decision stays as the policy returned it
            experts = experts.slice();
            weights = weights.slice();
            copied = true;
          }
          let to = -1;
          if (overflow === 'reroute') {
            ranks ??= new Array<RoutingRanking | undefined>(tokens);
            const row = logits.subarray(t * numExperts, (t + 1) * numExperts);
            const rk = (ranks[t] ??= policy.rank!(row, 1, numExperts, k, ctx));
            for (let r = 0; r < numExperts && to < 0; r++) {
              const c = rk.order[r];
              if (load[c] >= cap) continue;
              let taken = false;
              for (let q = t * k; q < t * k + k; q++) if (experts[q] === c) taken = true;
              if (!taken) to = c;
            }
          }
          if (to >= 0) {
            load[to]++;
            experts[i] = to;
            weights[i] = ranks![t]!.weight[to];
          } else {
            experts[i] = -1;
            weights[i] = 0;
          }
        }
      return { experts, weights };
    },
  };
}

export interface ExpertLoad {
  /** Assignments per expert. */
  counts: number[];
  /** Assignments dropped (expert -1). */
  dropped: number;
  /** Tokens routed (sum(counts) + dropped = tokens · k). */
  tokens: number;
  /** route() calls. */
  calls: number;
  /** max(counts) / mean(counts): 1 is perfectly balanced; 0 when nothing was assigned. */
  imbalance: number;
}

export interface LayerLoad extends ExpertLoad {
  /** RoutingContext.layer, or -1 for calls without one. */
  layer: number;
}

export interface LoadReport {
  /** Ascending by layer. */
  perLayer: LayerLoad[];
  /** Every layer summed. */
  total: ExpertLoad;
}

export interface LoadStatsPolicy extends RoutingPolicy {
  loads(): LoadReport;
  resetLoads(): void;
}

interface LayerCounter {
  counts: Float64Array;
  dropped: number;
  tokens: number;
  calls: number;
}

function summarize(c: Float64Array, dropped: number, tokens: number, calls: number): ExpertLoad {
  let sum = 0;
  let max = 0;
  for (let e = 0; e < c.length; e++) {
    sum += c[e];
    if (c[e] > max) max = c[e];
  }
  return {
    counts: Array.from(c),
    dropped,
    tokens,
    calls,
    imbalance: sum > 0 ? max / (sum / c.length) : 0,
  };
}

/**
 * Counts each routing decision of `policy` per layer and expert. The cost per call is one
 * pass over the decision; the counters are allocated once per layer.
 */
export function withLoadStats(policy: RoutingPolicy): LoadStatsPolicy {
  if (!policy || typeof policy.route !== 'function')
    throw invalidArg('withLoadStats', 'policy', 'a RoutingPolicy', policy);
  const layers = new Map<number, LayerCounter>();
  const wrapped: LoadStatsPolicy = {
    name: policy.name,
    route(logits, tokens, numExperts, k, ctx) {
      const d: RoutingDecision = policy.route(logits, tokens, numExperts, k, ctx);
      const layer = ctx?.layer ?? -1;
      let c = layers.get(layer);
      if (c === undefined) {
        c = { counts: new Float64Array(numExperts), dropped: 0, tokens: 0, calls: 0 };
        layers.set(layer, c);
      } else if (c.counts.length !== numExperts)
        throw invalidArg(
          'route',
          'numExperts',
          `${c.counts.length} as in earlier calls for layer ${layer} (resetLoads() first)`,
          numExperts,
        );
      const counts = c.counts;
      const ex = d.experts;
      let dropped = 0;
      for (let i = 0; i < ex.length; i++) {
        const e = ex[i];
        if (e >= 0 && e < numExperts) counts[e]++;
        else dropped++;
      }
      c.dropped += dropped;
      c.tokens += tokens;
      c.calls++;
      return d;
    },
    loads() {
      const keys = [...layers.keys()].sort((a, b) => a - b);
      const perLayer = keys.map((layer) => {
        const c = layers.get(layer)!;
        return { layer, ...summarize(c.counts, c.dropped, c.tokens, c.calls) };
      });
      const E = keys.reduce((m, l) => Math.max(m, layers.get(l)!.counts.length), 0);
      const all = new Float64Array(E);
      let dropped = 0;
      let tokens = 0;
      let calls = 0;
      for (const c of layers.values()) {
        for (let e = 0; e < c.counts.length; e++) all[e] += c.counts[e];
        dropped += c.dropped;
        tokens += c.tokens;
        calls += c.calls;
      }
      return { perLayer, total: summarize(all, dropped, tokens, calls) };
    },
    resetLoads() {
      layers.clear();
    },
  };
  if (policy.rank) wrapped.rank = policy.rank.bind(policy);
  return wrapped;
}
