/**
 * MoE routing: softmaxTopK, sigmoidGroupTopK, withCapacity and withLoadStats against plain
 * float64, sort-based references written here; expertPermutation with dropped assignments
 * (-1) and moeCombine over them; argument errors; one end-to-end run on the generated MoE
 * model.
 */
import * as os from 'node:os';
import * as path from 'node:path';
import { loadRuntime, Runtime } from '../lib/runtime/runtime';
import {
  expertPermutation,
  moeCombine,
  RoutingDecision,
  RoutingPolicy,
  sigmoidGroupTopK,
  SigmoidGroupTopKOptions,
  softmaxTopK,
  withCapacity,
  withLoadStats,
} from '../lib/ops/index';
import { loadModel } from '../lib/model/model';
import { generateTestModels } from '../lib/model/synthetic';
import { expectKernelError, rng } from './helpers';

const M_exp = Math.exp;
const M_abs = Math.abs;
const M_max = Math.max;
const M_floor = Math.floor;
const M_ceil = Math.ceil;

/** Logits with many exact ties: half the values from a 7-value grid, half continuous. */
function tieLogits(n: number, seed: number): Float32Array {
  const r = rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = r() < 0.5 ? M_floor(r() * 7) * 0.5 - 1.5 : (r() - 0.5) * 8;
  return out;
}

function byScoreThenId(score: ArrayLike<number>): (a: number, b: number) => number {
  return (a, b) => (score[a] !== score[b] ? score[b] - score[a] : a - b);
}
const range = (n: number) => Array.from({ length: n }, (_, i) => i);

interface Ref {
  experts: number[][]; // [T][k]
  weights: number[][]; // [T][k]
  order: number[][]; // [T][E], full preference
  weightOf: number[][]; // [T][E], by expert id
}

function refSoftmax(logits: Float32Array, T: number, E: number, k: number, norm: boolean): Ref {
  const r: Ref = { experts: [], weights: [], order: [], weightOf: [] };
  for (let t = 0; t < T; t++) {
    const x = Array.from(logits.subarray(t * E, t * E + E));
    const m = M_max(...x);
    const ex = x.map((v) => M_exp(v - m));
    const z = ex.reduce((a, b) => a + b, 0);
    const p = ex.map((v) => v / z);
    const order = range(E).sort(byScoreThenId(x)); // softmax is monotone in the logit
    const chosen = order.slice(0, k);
    const sum = norm ? chosen.reduce((a, e) => a + p[e], 0) : 1;
    r.experts.push(chosen);
    r.weights.push(chosen.map((e) => p[e] / sum));
    r.order.push(order);
    r.weightOf.push(p.map((v) => v / sum));
  }
  return r;
}

function refSigmoid(
  logits: Float32Array,
  T: number,
  E: number,
  k: number,
  o: SigmoidGroupTopKOptions & { bias?: Float32Array },
): Ref & { keptGroups: number[][] } {
  const G = o.groups ?? 1;
  const TG = o.topkGroups ?? G;
  const size = E / G;
  const scale = o.scale ?? 1;
  const r = { experts: [], weights: [], order: [], weightOf: [], keptGroups: [] } as Ref & {
    keptGroups: number[][];
  };
  for (let t = 0; t < T; t++) {
    const s = range(E).map((e) => 1 / (1 + M_exp(-logits[t * E + e])));
    const sel = s.map((v, e) => v + (o.bias ? o.bias[e] : 0));
    const gscore = range(G).map((g) => {
      const top = range(size)
        .map((i) => sel[g * size + i])
        .sort((a, b) => b - a);
      return top[0] + (size > 1 ? top[1] : 0);
    });
    const kept = range(G).sort(byScoreThenId(gscore)).slice(0, TG);
    const inKept = (e: number) => kept.includes(M_floor(e / size));
    const order = range(E).sort(
      (a, b) => Number(inKept(b)) - Number(inKept(a)) || byScoreThenId(sel)(a, b),
    );
    const chosen = order.slice(0, k);
    const sum = o.normalize === false ? 1 : chosen.reduce((a, e) => a + s[e], 0);
    r.experts.push(chosen);
    r.weights.push(chosen.map((e) => (s[e] / sum) * scale));
    r.order.push(order);
    r.weightOf.push(s.map((v) => (v / sum) * scale));
    r.keptGroups.push(kept.sort((a, b) => a - b));
  }
  return r;
}

function expectDecision(d: RoutingDecision, ref: Ref, T: number, k: number, tag: string): void {
  expect(d.experts.length).toBe(T * k);
  expect(d.weights.length).toBe(T * k);
  for (let t = 0; t < T; t++)
    for (let j = 0; j < k; j++) {
      const i = t * k + j;
      if (d.experts[i] !== ref.experts[t][j])
        throw new Error(`${tag}: token ${t} choice ${j}: ${d.experts[i]} != ${ref.experts[t][j]}`);
      const w = ref.weights[t][j];
      if (!(M_abs(d.weights[i] - w) <= 1e-6 * M_abs(w) + 1e-30))
        throw new Error(`${tag}: token ${t} weight ${j}: ${d.weights[i]} != ${w}`);
    }
}

/** The capacity assignment, written plainly: rank-major, token order, as documented. */
function refCapacity(
  ref: Ref,
  T: number,
  E: number,
  k: number,
  cap: number,
  reroute: boolean,
): { experts: number[][]; weights: number[][] } {
  const experts = ref.experts.map((a) => a.slice());
  const weights = ref.weights.map((a) => a.slice());
  const load = new Array<number>(E).fill(0);
  for (let j = 0; j < k; j++)
    for (let t = 0; t < T; t++) {
      const e = experts[t][j];
      if (load[e] < cap) {
        load[e]++;
        continue;
      }
      const alt = reroute
        ? ref.order[t].find((c) => load[c] < cap && !experts[t].includes(c))
        : undefined;
      if (alt === undefined) {
        experts[t][j] = -1;
        weights[t][j] = 0;
      } else {
        load[alt]++;
        experts[t][j] = alt;
        weights[t][j] = ref.weightOf[t][alt];
      }
    }
  return { experts, weights };
}

// [E, k]: odd counts, k = 1, k = E
const SHAPES: [number, number][] = [
  [1, 1],
  [5, 1],
  [5, 5],
  [7, 3],
  [8, 2],
  [64, 6],
];
const T = 37;

describe('softmaxTopK', () => {
  test.each(SHAPES)('E=%i k=%i: route and rank match the sort-based reference', (E, k) => {
    for (const norm of [true, false]) {
      const logits = tieLogits(T * E, E * 100 + k);
      const p = softmaxTopK({ normalize: norm });
      const ref = refSoftmax(logits, T, E, k, norm);
      const d = p.route(logits, T, E, k);
      expectDecision(d, ref, T, k, `softmax E=${E} k=${k} norm=${norm}`);
      const rk = p.rank!(logits, T, E, k);
      expect(Array.from(rk.order)).toEqual(ref.order.flat());
      for (let t = 0; t < T; t++)
        for (let j = 0; j < k; j++)
          // the ranking's weights for the chosen experts are route()'s, bit for bit
          expect(rk.weight[t * E + d.experts[t * k + j]]).toBe(d.weights[t * k + j]);
    }
  });
});

describe('sigmoidGroupTopK', () => {
  const configs: [string, number, number, SigmoidGroupTopKOptions][] = [
    ['plain', 7, 3, {}],
    ['plain k=1', 5, 1, {}],
    ['plain k=E', 5, 5, { scale: 2.5 }],
    ['no normalize', 8, 2, { normalize: false, scale: 1.5 }],
    ['groups 4 keep 2', 8, 2, { groups: 4, topkGroups: 2 }],
    ['groups 3 keep 1 (odd)', 9, 3, { groups: 3, topkGroups: 1 }],
    ['groups of one', 6, 2, { groups: 6, topkGroups: 3 }],
    ['groups, k = kept experts', 12, 6, { groups: 4, topkGroups: 2 }],
    ['deepseek-like', 64, 8, { groups: 8, topkGroups: 4, scale: 2.5 }],
  ];
  test.each(configs)(
    '%s (E=%i k=%i): matches the reference, with and without bias',
    (_n, E, k, o) => {
      const logits = tieLogits(T * E, E * 7 + k);
      const r = rng(E + k);
      // bias on a grid too: equal logit + equal bias is an exact tie
      const bias = Float32Array.from({ length: E }, () => M_floor(r() * 5) * 0.25 - 0.5);
      for (const b of [undefined, bias]) {
        const p = sigmoidGroupTopK({ ...o, bias: b });
        const ref = refSigmoid(logits, T, E, k, { ...o, bias: b });
        const d = p.route(logits, T, E, k);
        expectDecision(d, ref, T, k, `${_n} bias=${!!b}`);
        const rk = p.rank!(logits, T, E, k);
        expect(Array.from(rk.order)).toEqual(ref.order.flat());
        for (let t = 0; t < T; t++)
          for (let j = 0; j < k; j++)
            expect(rk.weight[t * E + d.experts[t * k + j]]).toBe(d.weights[t * k + j]);
        if (o.groups)
          for (let t = 0; t < T; t++)
            for (let j = 0; j < k; j++) {
              const g = M_floor(d.experts[t * k + j] / (E / o.groups));
              expect(ref.keptGroups[t]).toContain(g);
            }
      }
    },
  );

  test('bias changes the selection, never the weights', () => {
    const E = 4;
    const logits = Float32Array.from([3, 2, 1, 0, 0.5, 0.25, 0, -1]);
    const plain = sigmoidGroupTopK({ normalize: false });
    const biased = sigmoidGroupTopK({ normalize: false, bias: Float32Array.from([0, 0, 0, 1]) });
    const a = plain.route(logits, 2, E, 2);
    const b = biased.route(logits, 2, E, 2);
    expect(Array.from(a.experts)).toEqual([0, 1, 0, 1]);
    expect(Array.from(b.experts)).toEqual([3, 0, 3, 0]); // the bias lifts expert 3 to first
    const sig = (x: number) => Math.fround(1 / (1 + M_exp(-x)));
    // weights: the unbiased sigmoid of the chosen experts' logits
    expect(Array.from(b.weights)).toEqual([sig(0), sig(3), sig(-1), sig(0.5)]);
    // normalized: same ratio as the unbiased scores
    const n = sigmoidGroupTopK({ bias: Float32Array.from([0, 0, 0, 1]) }).route(logits, 2, E, 2);
    expect(n.weights[0]).toBeCloseTo(sig(0) / (sig(0) + sig(3)), 6);
    expect(n.weights[0] + n.weights[1]).toBeCloseTo(1, 6);
  });

  test('per-layer bias function', () => {
    const E = 4;
    const logits = Float32Array.from([1, 0, 0, 0]);
    const biases = [undefined, Float32Array.from([0, 0, 2, 0])];
    const p = sigmoidGroupTopK({ bias: (layer) => biases[layer] });
    expect(p.route(logits, 1, E, 1, { layer: 0 }).experts[0]).toBe(0);
    expect(p.route(logits, 1, E, 1, { layer: 1 }).experts[0]).toBe(2);
    expectKernelError(() => p.route(logits, 1, E, 1), 'E_INVALID_ARG', 'ctx.layer');
  });

  test('a group scores its two best experts: a lone best expert loses to a strong pair', () => {
    // groups of 2: {0,1}: 5 and -5 (score ≈ 1.0); {2,3}: 2 and 2 (≈ 1.76); keep one group
    const logits = Float32Array.from([5, -5, 2, 2, -9, -9, -9, -9]);
    const p = sigmoidGroupTopK({ groups: 4, topkGroups: 1 });
    expect(Array.from(p.route(logits, 1, 8, 1).experts)).toEqual([2]);
    expect(Array.from(p.route(logits, 1, 8, 2).experts)).toEqual([2, 3]);
    // ungrouped, expert 0 wins
    expect(sigmoidGroupTopK().route(logits, 1, 8, 1).experts[0]).toBe(0);
    // group ties go to the lower group: {0,1} and {2,3} both at (1, 1)
    const tie = Float32Array.from([1, 1, 1, 1, 0, 0, 0, 0]);
    expect(Array.from(p.route(tie, 1, 8, 2).experts)).toEqual([0, 1]);
  });

  test('NaN logits rank last instead of breaking the selection', () => {
    const logits = Float32Array.from([NaN, 1, NaN, 0]);
    const d = sigmoidGroupTopK().route(logits, 1, 4, 3);
    expect(Array.from(d.experts)).toEqual([1, 3, 0]);
  });
});

describe('withCapacity', () => {
  test('capacity = ceil(factor · tokens · k / experts)', () => {
    const p = withCapacity(softmaxTopK(), { capacityFactor: 1.25 });
    expect(p.capacity(37, 8, 2)).toBe(M_ceil((1.25 * 37 * 2) / 8));
    expect(p.capacity(1, 8, 2)).toBe(1);
    expect(p.overflow).toBe('drop');
    expect(p.name).toBe('softmax-topk-norm+capacity(1.25,drop)');
  });

  const cases: [string, number, number, number, 'drop' | 'reroute'][] = [
    ['drop', 8, 2, 1.0, 'drop'],
    ['drop tight', 7, 3, 0.5, 'drop'],
    ['drop k=1', 5, 1, 1.0, 'drop'],
    ['reroute', 8, 2, 1.0, 'reroute'],
    ['reroute tight', 7, 3, 0.5, 'reroute'],
    ['reroute k=E', 5, 5, 1.0, 'reroute'],
    ['reroute k=1', 5, 1, 1.25, 'reroute'],
  ];
  test.each(cases)('%s (E=%i k=%i factor %p): matches the reference', (_n, E, k, cf, overflow) => {
    // skewed logits: expert 0 is popular, so capacity binds
    const logits = tieLogits(T * E, E + k + 1000);
    for (let t = 0; t < T; t++) logits[t * E] += 2;
    for (const [inner, ref] of [
      [softmaxTopK(), refSoftmax(logits, T, E, k, true)],
      [sigmoidGroupTopK({ scale: 2 }), refSigmoid(logits, T, E, k, { scale: 2 })],
    ] as [RoutingPolicy, Ref][]) {
      const p = withCapacity(inner, { capacityFactor: cf, overflow });
      const cap = p.capacity(T, E, k);
      const d = p.route(logits, T, E, k);
      const want = refCapacity(ref, T, E, k, cap, overflow === 'reroute');
      expectDecision(d, { ...ref, ...want }, T, k, `${_n} ${inner.name}`);
      // never over capacity, never the same expert twice for a token
      const load = new Array<number>(E).fill(0);
      let dropped = 0;
      for (let t = 0; t < T; t++) {
        const mine = Array.from(d.experts.subarray(t * k, t * k + k)).filter((e) => e >= 0);
        expect(new Set(mine).size).toBe(mine.length);
        for (const e of mine) load[e]++;
        dropped += k - mine.length;
      }
      expect(M_max(...load)).toBeLessThanOrEqual(cap);
      if (overflow === 'drop' && cap * E < T * k) expect(dropped).toBeGreaterThan(0);
      // deterministic
      const again = p.route(logits, T, E, k);
      expect(Array.from(again.experts)).toEqual(Array.from(d.experts));
      expect(Array.from(again.weights)).toEqual(Array.from(d.weights));
    }
  });

  test('drop vs reroute on a crafted overload', () => {
    // 4 tokens, all prefer expert 0, then 1, 2, 3; k = 1, capacity 1
    const logits = new Float32Array(16);
    for (let t = 0; t < 4; t++) logits.set([4, 3, 2, 1], t * 4);
    const drop = withCapacity(softmaxTopK({ normalize: false }), { capacityFactor: 1 });
    const d = drop.route(logits, 4, 4, 1);
    expect(Array.from(d.experts)).toEqual([0, -1, -1, -1]);
    expect(Array.from(d.weights.subarray(1))).toEqual([0, 0, 0]);
    const re = withCapacity(softmaxTopK({ normalize: false }), {
      capacityFactor: 1,
      overflow: 'reroute',
    });
    const r = re.route(logits, 4, 4, 1);
    expect(Array.from(r.experts)).toEqual([0, 1, 2, 3]);
    // each re-routed token carries its own probability of the new expert
    const p = refSoftmax(logits, 1, 4, 1, false).weightOf[0];
    for (let t = 0; t < 4; t++) expect(r.weights[t]).toBeCloseTo(p[t], 7);
  });

  test('rank-major order: a first choice beats an earlier token’s second choice', () => {
    // token 0 wants (1, 0), token 1 wants (0, 2); capacity 1 (factor 1, T·k/E = 1... = 4/4)
    const logits = Float32Array.from([2, 3, 0, -1, 3, -1, 2, 0]);
    const p = withCapacity(softmaxTopK(), { capacityFactor: 1 });
    expect(p.capacity(2, 4, 2)).toBe(1);
    const d = p.route(logits, 2, 4, 2);
    // token-major order would have given expert 0 to token 0's second choice
    expect(Array.from(d.experts)).toEqual([1, -1, 0, 2]);
  });

  test('unlimited capacity returns the inner decision; the inner arrays are never modified', () => {
    const E = 8;
    const k = 2;
    const logits = tieLogits(T * E, 3);
    for (let t = 0; t < T; t++) logits[t * E] += 3;
    let last: RoutingDecision | undefined;
    const spy: RoutingPolicy = {
      name: 'spy',
      route(...args) {
        return (last = softmaxTopK().route(...args));
      },
    };
    const inf = withCapacity(spy, { capacityFactor: Infinity }).route(logits, T, E, k);
    expect(inf).toBe(last);
    const d = withCapacity(spy, { capacityFactor: 1 }).route(logits, T, E, k);
    expect(d.experts).not.toBe(last!.experts);
    expect(Array.from(d.experts)).toContain(-1);
    expect(Array.from(last!.experts)).not.toContain(-1);
  });

  test('nested capacities: the outer one skips what the inner one dropped', () => {
    const E = 4;
    const logits = new Float32Array(4 * E);
    for (let t = 0; t < 4; t++) logits.set([4, 3, 2, 1], t * E);
    const inner = withCapacity(softmaxTopK(), { capacityFactor: 1 });
    const outer = withCapacity(inner, { capacityFactor: 1 });
    expect(Array.from(outer.route(logits, 4, E, 1).experts)).toEqual([0, -1, -1, -1]);
  });
});

describe('withLoadStats', () => {
  test('counts per layer and expert; sum(counts) + dropped = tokens · k', () => {
    const E = 8;
    const k = 2;
    const stats = withLoadStats(withCapacity(softmaxTopK(), { capacityFactor: 1 }));
    const want = new Map<number, number[]>();
    let wantDropped = 0;
    for (let step = 0; step < 6; step++) {
      const layer = step % 3;
      const n = 1 + step * 5;
      const logits = tieLogits(n * E, 50 + step);
      for (let t = 0; t < n; t++) logits[t * E + 5] += 2;
      const d = stats.route(logits, n, E, k, { layer });
      const c = want.get(layer) ?? new Array<number>(E).fill(0);
      for (const e of d.experts) if (e >= 0) c[e]++;
      wantDropped += Array.from(d.experts).filter((e) => e < 0).length;
      want.set(layer, c);
    }
    const r = stats.loads();
    expect(r.perLayer.map((l) => l.layer)).toEqual([0, 1, 2]);
    for (const l of r.perLayer) {
      expect(l.counts).toEqual(want.get(l.layer));
      expect(l.calls).toBe(2);
      expect(l.counts.reduce((a, b) => a + b, 0) + l.dropped).toBe(l.tokens * k);
      expect(l.imbalance).toBeCloseTo((M_max(...l.counts) / (l.tokens * k - l.dropped)) * E, 10);
    }
    expect(r.total.tokens).toBe([0, 1, 2, 3, 4, 5].reduce((a, s) => a + 1 + s * 5, 0));
    expect(r.total.dropped).toBe(wantDropped);
    expect(wantDropped).toBeGreaterThan(0);
    expect(r.total.counts.reduce((a, b) => a + b, 0) + r.total.dropped).toBe(r.total.tokens * k);
    expect(r.total.calls).toBe(6);
    stats.resetLoads();
    expect(stats.loads().perLayer).toEqual([]);
    expect(stats.loads().total.imbalance).toBe(0);
  });

  test('calls without a layer count as layer -1; rank() passes through; E must not change', () => {
    const stats = withLoadStats(sigmoidGroupTopK());
    const logits = Float32Array.from([0, 1, 2, 3]);
    stats.route(logits, 1, 4, 2);
    expect(stats.loads().perLayer).toMatchObject([{ layer: -1, counts: [0, 0, 1, 1] }]);
    expect(Array.from(stats.rank!(logits, 1, 4, 2).order)).toEqual([3, 2, 1, 0]);
    // a rerouting capacity accepts it (it has rank())
    withCapacity(stats, { capacityFactor: 1, overflow: 'reroute' });
    expectKernelError(() => stats.route(logits, 2, 2, 1), 'E_INVALID_ARG', 'numExperts');
  });
});

describe('expertPermutation with dropped assignments', () => {
  test('dropped assignments get no row; kept slots point at their rows', () => {
    const E = 5;
    const k = 3;
    const r = rng(9);
    const experts = new Int32Array(T * k);
    for (let t = 0; t < T; t++) {
      const pick = range(E).sort(() => r() - 0.5);
      for (let j = 0; j < k; j++) experts[t * k + j] = r() < 0.3 ? -1 : pick[j];
    }
    const { rows, offsets, slot } = expertPermutation(experts, k, E);
    const kept = Array.from(experts).filter((e) => e >= 0).length;
    expect(rows.length).toBe(kept);
    expect(offsets[E]).toBe(kept);
    for (let e = 0; e < E; e++) {
      const mine: number[] = [];
      for (let i = 0; i < experts.length; i++) if (experts[i] === e) mine.push(M_floor(i / k));
      expect(Array.from(rows.subarray(offsets[e], offsets[e + 1]))).toEqual(mine);
    }
    for (let i = 0; i < experts.length; i++) {
      if (experts[i] < 0) expect(slot[i]).toBe(0);
      else {
        expect(rows[slot[i]]).toBe(M_floor(i / k));
        expect(slot[i]).toBeGreaterThanOrEqual(offsets[experts[i]]);
        expect(slot[i]).toBeLessThan(offsets[experts[i] + 1]);
      }
    }
    const none = expertPermutation(new Int32Array(6).fill(-1), 2, E);
    expect(none.rows.length).toBe(0);
    expect(Array.from(none.offsets)).toEqual([0, 0, 0, 0, 0, 0]);
    expectKernelError(
      () => expertPermutation(Int32Array.from([0, -2]), 2, E),
      'E_INVALID_ARG',
      'experts',
    );
    expectKernelError(
      () => expertPermutation(Int32Array.from([0, 5]), 2, E),
      'E_INVALID_ARG',
      'experts',
    );
  });

  describe('moeCombine over a permutation with drops', () => {
    let rt: Runtime;
    beforeAll(async () => {
      rt = await loadRuntime({ threads: 2 });
    });
    afterAll(() => rt.dispose());

    test('dropped assignments (slot 0, weight 0) contribute nothing', async () => {
      const [Tn, E, k, N] = [6, 4, 2, 5];
      const logits = tieLogits(Tn * E, 77);
      for (let t = 0; t < Tn; t++) logits[t * E + 1] += 3;
      const d = withCapacity(softmaxTopK(), { capacityFactor: 0.75 }).route(logits, Tn, E, k);
      expect(Array.from(d.experts)).toContain(-1);
      const perm = expertPermutation(d.experts, k, E);
      const R = perm.rows.length;
      const r = rng(4);
      const y = Float32Array.from({ length: R * N }, () => r() - 0.5);
      const base = Float32Array.from({ length: Tn * N }, () => r());
      const out = rt.tensor(base, [Tn, N]);
      moeCombine(rt.tensor(y, [R, N]), perm.slot, d.weights, k, out, { accumulate: true });
      const got = (await out.read()) as Float32Array;
      for (let t = 0; t < Tn; t++)
        for (let n = 0; n < N; n++) {
          let want = base[t * N + n];
          for (let j = 0; j < k; j++) {
            const i = t * k + j;
            if (d.experts[i] >= 0) want += d.weights[i] * y[perm.slot[i] * N + n];
          }
          expect(got[t * N + n]).toBeCloseTo(want, 5);
        }
    });
  });
});

describe('argument errors', () => {
  const logits = new Float32Array(8);
  test.each([
    ['groups', () => sigmoidGroupTopK({ groups: 0 })],
    ['groups', () => sigmoidGroupTopK({ groups: 1.5 })],
    ['topkGroups', () => sigmoidGroupTopK({ groups: 2, topkGroups: 3 })],
    ['topkGroups', () => sigmoidGroupTopK({ groups: 2, topkGroups: 0 })],
    ['scale', () => sigmoidGroupTopK({ scale: -1 })],
    ['scale', () => sigmoidGroupTopK({ scale: NaN })],
    ['bias', () => sigmoidGroupTopK({ bias: [1, 2] as unknown as Float32Array })],
    ['groups', () => sigmoidGroupTopK({ groups: 3 }).route(logits, 1, 8, 2)],
    ['topkGroups', () => sigmoidGroupTopK({ groups: 4, topkGroups: 1 }).route(logits, 1, 8, 3)],
    ['bias', () => sigmoidGroupTopK({ bias: new Float32Array(7) }).route(logits, 1, 8, 2)],
    [
      'bias',
      () => sigmoidGroupTopK({ bias: new Float32Array(8).fill(NaN) }).route(logits, 1, 8, 2),
    ],
    ['k', () => sigmoidGroupTopK().route(logits, 1, 8, 0)],
    ['k', () => sigmoidGroupTopK().route(logits, 1, 8, 9)],
    ['k', () => softmaxTopK().route(logits, 1, 8, 9)],
    ['logits', () => sigmoidGroupTopK().route(logits, 2, 8, 2)],
    ['logits', () => softmaxTopK().route(logits, 2, 8, 2)],
    ['tokens', () => softmaxTopK().route(logits, -1, 8, 2)],
    ['numExperts', () => softmaxTopK().route(new Float32Array(0), 1, 0, 1)],
    ['capacityFactor', () => withCapacity(softmaxTopK(), { capacityFactor: 0 })],
    ['capacityFactor', () => withCapacity(softmaxTopK(), { capacityFactor: NaN })],
    [
      'overflow',
      () => withCapacity(softmaxTopK(), { capacityFactor: 1, overflow: 'spill' as 'drop' }),
    ],
    [
      'policy',
      () =>
        withCapacity(
          { name: 'no-rank', route: softmaxTopK().route },
          {
            capacityFactor: 1,
            overflow: 'reroute',
          },
        ),
    ],
    ['policy', () => withLoadStats(undefined as unknown as RoutingPolicy)],
    ['k', () => expertPermutation(new Int32Array(3), 2, 4)],
    ['numExperts', () => expertPermutation(new Int32Array(2), 2, 0)],
  ])('%s', (arg, fn) => {
    expectKernelError(fn, 'E_INVALID_ARG', arg);
  });
});

describe('end to end on the generated MoE model', () => {
  const prompt = [1, 17, 42, 99, 7, 300, 12, 5, 250, 64, 33, 2];
  let file = '';
  let bare: Float32Array;
  const run = async (routing?: RoutingPolicy) => {
    const m = await loadModel(file, { threads: 2, kvDtype: 'f32', routing });
    try {
      return await m.logits(prompt, { all: true });
    } finally {
      await m.dispose();
    }
  };
  beforeAll(async () => {
    const list = await generateTestModels(path.join(os.tmpdir(), 'tachyon-test-models'));
    file = list.find((m) => m.name === 'moe-q8_0')!.path;
    bare = await run();
  }, 60000);

  test("unlimited capacity gives the bare policy's logits; stats see every layer", async () => {
    const stats = withLoadStats(withCapacity(softmaxTopK(), { capacityFactor: Infinity }));
    expect(Array.from(await run(stats))).toEqual(Array.from(bare));
    const L = stats.loads();
    expect(L.perLayer.map((l) => l.layer)).toEqual([0, 1]);
    expect(L.total.dropped).toBe(0);
    expect(L.total.counts.reduce((a, b) => a + b, 0)).toBe(2 * prompt.length * 2);
  });

  test('a tight capacity drops assignments and the model still runs', async () => {
    const tight = withLoadStats(withCapacity(softmaxTopK(), { capacityFactor: 0.5 }));
    const got = await run(tight);
    expect(got.length).toBe(bare.length);
    expect(got.every((v) => Number.isFinite(v))).toBe(true);
    expect(tight.loads().total.dropped).toBeGreaterThan(0);
    expect(Array.from(got)).not.toEqual(Array.from(bare)); // dropping changes the output
  });
});
