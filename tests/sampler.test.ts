/**
 * Sampler, StopMatcher and createRng against an obviously-correct reference written here: float64,
 * full sort of the vocabulary, every stage of docs/sampling.md spelled out. The sampler's
 * distribution() (the exact set and probabilities sample() draws from) must match the reference
 * for many random logit vectors and option combinations, on both internal paths (heap top-k and
 * the histogram path); sample() draws must pass a chi-square test against the reference, and
 * that same test must reject a deliberately wrong distribution.
 */
import {
  createRng,
  SampledToken,
  Sampler,
  SamplingOptions,
  StopMatcher,
} from '../lib/model/sampler';
import { rng, expectKernelError } from './helpers';

const M_exp = Math.exp;
const M_log = Math.log;
const M_abs = Math.abs;
const M_fround = Math.fround;
const M_sqrt = Math.sqrt;

// ------------------------------------------------------------------------------------------
// Reference

interface RefResult {
  /** Logits after bias and penalties (float32-rounded, as stored by the sampler). */
  x: Float64Array;
  /** Greedy token. */
  argmax: number;
  /** Final candidate set and renormalised probabilities. */
  dist: Map<number, number>;
  /** Processed logprobs (log-softmax of x/T over everything, T = 1 for greedy). */
  logprobs: Float64Array;
  /** Token ids by (x desc, id asc), finite only. */
  order: number[];
}

function reference(
  logits: Float32Array,
  o: SamplingOptions,
  accepted: readonly number[] = [],
): RefResult {
  const V = logits.length;
  const x = Float64Array.from(logits);
  for (const [k, b] of Object.entries(o.logitBias ?? {})) x[+k] = M_fround(x[+k] + b);
  const rp = o.repetitionPenalty ?? 1;
  const fp = o.frequencyPenalty ?? 0;
  const pp = o.presencePenalty ?? 0;
  const lastN = o.penaltyLastN ?? 64;
  if (lastN !== 0 && (rp !== 1 || fp !== 0 || pp !== 0)) {
    const window = lastN < 0 ? accepted : accepted.slice(Math.max(0, accepted.length - lastN));
    const counts = new Map<number, number>();
    for (const t of window) counts.set(t, (counts.get(t) ?? 0) + 1);
    for (const [t, c] of counts) {
      const v = x[t] > 0 ? x[t] / rp : x[t] * rp;
      x[t] = M_fround(v - (c * fp + pp));
    }
  }
  const order: number[] = [];
  for (let i = 0; i < V; i++) if (x[i] > -Infinity) order.push(i);
  order.sort((a, b) => x[b] - x[a] || a - b);
  const argmax = order[0];
  const T = o.temperature ?? 1;
  const Tl = T === 0 ? 1 : T;
  // Processed logprobs: full log-softmax of x / T.
  const zmax = x[argmax] / Tl;
  let Z = 0;
  for (const i of order) Z += M_exp(x[i] / Tl - zmax);
  const logprobs = new Float64Array(V).fill(-Infinity);
  for (const i of order) logprobs[i] = x[i] / Tl - zmax - M_log(Z);
  if (T === 0) return { x, argmax, dist: new Map([[argmax, 1]]), logprobs, order };
  // top-k
  let cand = order;
  const K = o.topK ?? 0;
  if (K > 0 && K < cand.length) cand = cand.slice(0, K);
  // temperature + softmax over the candidates
  let p = cand.map((i) => M_exp(x[i] / T - zmax));
  let s = p.reduce((a, b) => a + b, 0);
  p = p.map((v) => v / s);
  // top-p: smallest prefix with cumulative >= topP
  const P = o.topP ?? 1;
  if (P < 1) {
    let acc = 0;
    let n = p.length;
    for (let j = 0; j < p.length; j++) {
      acc += p[j];
      if (acc >= P) {
        n = j + 1;
        break;
      }
    }
    cand = cand.slice(0, n);
    p = p.slice(0, n);
  }
  // min-p: p >= minP * pmax
  const mp = o.minP ?? 0;
  if (mp > 0) {
    const keep = p.map((v) => v >= mp * p[0]);
    cand = cand.filter((_, j) => keep[j]);
    p = p.filter((_, j) => keep[j]);
  }
  s = p.reduce((a, b) => a + b, 0);
  const dist = new Map<number, number>();
  cand.forEach((i, j) => dist.set(i, p[j] / s));
  return { x, argmax, dist, logprobs, order };
}

// ------------------------------------------------------------------------------------------
// Helpers

/** Logits with an LLM-like shape: a gaussian bulk and a few strong candidates. */
function makeLogits(V: number, seed: number, scale = 3, peaks = 8): Float32Array {
  const r = rng(seed);
  const a = new Float32Array(V);
  for (let i = 0; i < V; i++) {
    const u = r() || 1e-12;
    a[i] = scale * M_sqrt(-2 * M_log(u)) * Math.cos(2 * Math.PI * r());
  }
  for (let j = 0; j < peaks; j++) a[Math.floor(r() * V)] = scale * (2 + 2 * r());
  return a;
}

function distMap(s: Sampler, logits: Float32Array): Map<number, number> {
  const d = s.distribution(logits);
  const m = new Map<number, number>();
  d.tokens.forEach((t, j) => m.set(t, d.probs[j]));
  return m;
}

function expectSameDist(got: Map<number, number>, want: Map<number, number>, what: string): void {
  const g = [...got.keys()].sort((a, b) => a - b);
  const w = [...want.keys()].sort((a, b) => a - b);
  if (g.length !== w.length || g.some((t, j) => t !== w[j]))
    throw new Error(
      `${what}: candidate sets differ: got ${g.length} [${g.slice(0, 12)}...], ` +
        `want ${w.length} [${w.slice(0, 12)}...]`,
    );
  for (const [t, p] of want) {
    const q = got.get(t) as number;
    if (!(M_abs(q - p) <= 1e-9 + 1e-9 * p)) throw new Error(`${what}: p(${t}) = ${q}, want ${p}`);
  }
}

/** JSON-like text that keeps NaN and Infinity (JSON.stringify turns them into null). */
function show(o: unknown): string {
  return JSON.stringify(o, (_k, v) =>
    typeof v === 'number' && !Number.isFinite(v) ? String(v) : v,
  );
}

/** Upper critical value of chi-square(df) at p = 1e-4 (Wilson-Hilferty). */
function chi2Crit(df: number): number {
  const z = 3.719;
  const a = 2 / (9 * df);
  return df * (1 - a + z * M_sqrt(a)) ** 3;
}

/** Pearson statistic of observed counts against probabilities; sparse bins pooled. */
function chi2(counts: Map<number, number>, probs: Map<number, number>, n: number) {
  let stat = 0;
  let df = -1;
  let poolE = 0;
  let poolO = 0;
  for (const [t, p] of probs) {
    const e = p * n;
    const o = counts.get(t) ?? 0;
    if (e >= 5) {
      stat += (o - e) ** 2 / e;
      df++;
    } else {
      poolE += e;
      poolO += o;
    }
  }
  let outside = 0;
  for (const [t, c] of counts) if (!probs.has(t)) outside += c;
  poolO += outside;
  if (poolE >= 5) {
    stat += (poolO - poolE) ** 2 / poolE;
    df++;
  } else if (poolO > poolE + 5) stat = Infinity; // mass where there should be (almost) none
  return { stat, df, outside };
}

function draws(s: Sampler, logits: Float32Array, n: number): Map<number, number> {
  const c = new Map<number, number>();
  for (let i = 0; i < n; i++) {
    const t = s.sample(logits).token;
    c.set(t, (c.get(t) ?? 0) + 1);
  }
  return c;
}

// ------------------------------------------------------------------------------------------

describe('Sampler: distribution after every stage matches the float64 full-sort reference', () => {
  // Options enabled cumulatively stage by stage, on both paths: heap (topK <= 1024) and
  // histogram (no topK, or topK > 1024).
  const combos: SamplingOptions[] = [
    { temperature: 1 },
    { temperature: 0.7 },
    { temperature: 1.3, topK: 1 },
    { temperature: 0.8, topK: 40 },
    { temperature: 0.8, topK: 1024 },
    { temperature: 0.8, topK: 1025 },
    { temperature: 0.8, topK: 2000 },
    { temperature: 0.8, topP: 0.95 },
    { temperature: 0.5, topP: 0.5 },
    { temperature: 1.5, topP: 0.999 },
    { temperature: 0.8, topK: 40, topP: 0.95 },
    { temperature: 0.8, topK: 500, topP: 0.9 },
    { temperature: 0.8, topK: 1100, topP: 0.9 },
    { temperature: 0.8, minP: 0.05 },
    { temperature: 2, minP: 0.3 },
    { temperature: 0.8, topK: 40, minP: 0.1 },
    { temperature: 0.8, topK: 400, minP: 0.02 },
    { temperature: 0.8, topK: 1500, minP: 0.02 },
    { temperature: 0.8, topP: 0.95, minP: 0.05 },
    { temperature: 0.8, topK: 40, topP: 0.9, minP: 0.05 },
    { temperature: 0.8, topK: 300, topP: 0.8, minP: 0.01 },
    { temperature: 0.8, topK: 1200, topP: 0.8, minP: 0.01 },
    { temperature: 1, topP: 0.999999, minP: 1e-4 },
    { temperature: 1, topP: 0.3, minP: 0.9 },
    { temperature: 1, minP: 1 },
    { temperature: 0.9, topK: 50, repetitionPenalty: 1.3, frequencyPenalty: 0.4 },
    {
      temperature: 0.9,
      topP: 0.9,
      repetitionPenalty: 1.2,
      presencePenalty: 0.6,
      penaltyLastN: 16,
      logitBias: { 3: 5, 10: -Infinity, 11: -2.5 },
    },
  ];

  test.each(combos.map((o, i) => [i, show(o), o] as const))('combo %i %s', (_i, _name, o) => {
    for (const V of [1200, 3000]) {
      for (let trial = 0; trial < 6; trial++) {
        const seed = 1000 * V + trial;
        const logits = makeLogits(V, seed, trial % 2 ? 2 : 3.5);
        const r = rng(seed + 7);
        const accepted = Array.from({ length: 40 }, () => Math.floor(r() * (r() < 0.5 ? 30 : V)));
        const s = new Sampler(V, { ...o, seed: 1 });
        s.acceptMany(accepted);
        const want = reference(logits, o, accepted);
        expectSameDist(distMap(s, logits), want.dist, `V=${V} trial ${trial}`);
      }
    }
  });

  test('random option combinations', () => {
    const r = rng(4242);
    const pick = <T>(xs: T[]): T => xs[Math.floor(r() * xs.length)];
    for (let trial = 0; trial < 120; trial++) {
      const V = pick([2, 7, 100, 1000, 2500, 4000]);
      const o: SamplingOptions = {
        temperature: pick([0.3, 0.7, 1, 1.8]),
        topK: pick([0, 0, 1, 3, 40, 1023, 1024, 1025, 1500, V, V + 5]),
        topP: pick([1, 1, 0.5, 0.9, 0.97]),
        minP: pick([0, 0, 0.01, 0.1, 0.5]),
        repetitionPenalty: pick([1, 1.15]),
        frequencyPenalty: pick([0, 0.3, -0.2]),
        presencePenalty: pick([0, 0.5]),
        penaltyLastN: pick([64, 8, -1, 0]),
        seed: trial,
      };
      const logits = makeLogits(V, 77 + trial, pick([1, 3]), pick([0, 3]));
      if (r() < 0.3) for (let j = 0; j < V / 10; j++) logits[Math.floor(r() * V)] = -Infinity;
      if (r() < 0.3) logits[Math.floor(r() * V)] = logits[Math.floor(r() * V)]; // a tie
      if (logits.every((v) => v === -Infinity)) logits[0] = 0;
      const accepted = Array.from({ length: Math.floor(r() * 100) }, () => Math.floor(r() * V));
      const s = new Sampler(V, o);
      s.acceptMany(accepted);
      const want = reference(logits, o, accepted);
      expectSameDist(distMap(s, logits), want.dist, `trial ${trial} ${JSON.stringify(o)} V=${V}`);
    }
  });

  test('ties: top-k and top-p cut ties by lowest id; greedy picks the lowest id', () => {
    const V = 600;
    const logits = new Float32Array(V).fill(-5);
    for (const i of [17, 3, 400, 250]) logits[i] = 2; // four-way tie at the top
    expect(new Sampler(V, { temperature: 0 }).sample(logits).token).toBe(3);
    expect(new Sampler(V, { temperature: 0, logprobs: 2 }).sample(logits).token).toBe(3);
    expect([...distMap(new Sampler(V, { temperature: 1, topK: 1 }), logits).keys()]).toEqual([3]);
    expect([...distMap(new Sampler(V, { temperature: 1, topK: 2 }), logits).keys()]).toEqual([
      3, 17,
    ]);
    // The 4 tied tokens carry almost all the mass: topP 0.3 keeps 2 of them (0.25 < 0.3).
    const tp = distMap(new Sampler(V, { temperature: 1, topP: 0.3 }), logits);
    expect([...tp.keys()].sort((a, b) => a - b)).toEqual([3, 17]);
    // Also on the histogram path with many equal logits (a flat distribution).
    const flat = new Float32Array(5000);
    const f = distMap(new Sampler(5000, { temperature: 1, topP: 0.3001 }), flat);
    expect([...f.keys()]).toEqual(Array.from({ length: 1501 }, (_, i) => i));
    for (const k of [1000, 2000]) {
      const fk = distMap(new Sampler(5000, { temperature: 1, topK: k }), flat);
      expect([...fk.keys()]).toEqual(Array.from({ length: k }, (_, i) => i));
    }
  });

  test('min-p whose threshold bucket holds only tokens below it (top-k histogram path)', () => {
    // ln(minP) = -2.99 falls in the 1/16-nat bucket (-3, -2.9375]; 1000 tokens sit in that
    // bucket just below the threshold and must all be dropped, though they hold most of the mass.
    const V = 3000;
    const logits = new Float32Array(V).fill(-5);
    logits[0] = 0;
    for (let i = 1; i <= 100; i++) logits[i * 7] = -1;
    for (let i = 0; i < 1000; i++) logits[1000 + i] = -2.995;
    for (const o of [
      { temperature: 1, topK: 2500, minP: Math.exp(-2.99) },
      { temperature: 1, topK: 2500, topP: 0.999, minP: Math.exp(-2.99) },
      { temperature: 1, minP: Math.exp(-2.99) },
    ]) {
      const want = reference(logits, o).dist;
      expect(want.size).toBe(101);
      const s = new Sampler(V, { ...o, seed: 3 });
      expectSameDist(distMap(s, logits), want, show(o));
      const c = draws(s, logits, 3000);
      expect([...c.keys()].every((t) => want.has(t))).toBe(true);
    }
  });

  test('topK larger than (or equal to) the vocabulary is the same as off', () => {
    const V = 500;
    const logits = makeLogits(V, 5);
    const off = distMap(new Sampler(V, { temperature: 0.9 }), logits);
    for (const k of [V - 1, V, V + 1, 10 ** 9]) {
      const d = distMap(new Sampler(V, { temperature: 0.9, topK: k }), logits);
      expectSameDist(d, reference(logits, { temperature: 0.9, topK: k }).dist, `k=${k}`);
      if (k >= V) expectSameDist(d, off, `k=${k} vs off`);
    }
  });

  test('a 128k vocabulary on every path', () => {
    const V = 128256;
    const logits = makeLogits(V, 99, 2.5, 30);
    for (const o of [
      { temperature: 0.8, topK: 40, topP: 0.95 },
      { temperature: 0.8, topP: 0.95 },
      { temperature: 0.8, minP: 0.05 },
      { temperature: 0.8, topK: 2000, topP: 0.9 },
    ]) {
      const s = new Sampler(V, o);
      expectSameDist(distMap(s, logits), reference(logits, o).dist, JSON.stringify(o));
    }
  });
});

describe('Sampler: draws', () => {
  const V = 800;
  const N = 20000;

  test.each([
    [{ temperature: 0.8, topK: 40, topP: 0.95 }, V],
    [{ temperature: 0.8, topP: 0.9 }, V],
    [{ temperature: 1.2, minP: 0.02 }, V],
    [{ temperature: 1 }, V],
    [{ temperature: 0.7, topK: 300 }, V],
    [{ temperature: 0.7, topK: 1500, topP: 0.97 }, 3000],
  ] as [SamplingOptions, number][])('chi-square of %j (vocab %i) against the reference', (o, v) => {
    const logits = makeLogits(v, 31, 1.5, 12);
    const want = reference(logits, o).dist;
    const counts = draws(new Sampler(v, { ...o, seed: 12345 }), logits, N);
    const { stat, df, outside } = chi2(counts, want, N);
    expect(outside).toBe(0); // never a token outside the candidate set
    expect(df).toBeGreaterThan(3);
    expect(stat).toBeLessThan(chi2Crit(df));
  });

  test('the chi-square test rejects a deliberately wrong distribution', () => {
    const o = { temperature: 0.8, topK: 40, topP: 0.95 };
    const logits = makeLogits(V, 31, 1.5, 12);
    const counts = draws(new Sampler(V, { ...o, seed: 12345 }), logits, N);
    // Same pipeline at a 10% different temperature: must be rejected.
    const wrongT = reference(logits, { ...o, temperature: 0.88 }).dist;
    const a = chi2(counts, wrongT, N);
    expect(a.stat).toBeGreaterThan(chi2Crit(a.df));
    // Probabilities not renormalised after truncation (the top-k/top-p mass as if untruncated,
    // the rest of the mass spread over the dropped tokens): must be rejected.
    const full = reference(logits, { temperature: 0.8 }).dist;
    const b = chi2(counts, full, N);
    expect(b.stat).toBeGreaterThan(chi2Crit(b.df));
    // And a draw from a distribution that favours lower ids among candidates.
    const right = reference(logits, o).dist;
    const skew = new Map<number, number>();
    let z = 0;
    for (const [t, p] of right) z += p * (1 + 0.1 * Math.sign(400 - t));
    for (const [t, p] of right) skew.set(t, (p * (1 + 0.1 * Math.sign(400 - t))) / z);
    const c = chi2(counts, skew, N);
    expect(c.stat).toBeGreaterThan(chi2Crit(c.df));
  });

  test('each draw is the inverse CDF, over ascending ids, of one createRng(seed) uniform', () => {
    const V2 = 3000;
    for (const o of [
      { temperature: 0.8, topK: 40, topP: 0.95 },
      { temperature: 1.1, topK: 1024 },
      { temperature: 0.8, topK: 1500, topP: 0.9 },
      { temperature: 0.9, topP: 0.9, minP: 0.02 },
      { temperature: 0.7, minP: 0.05 },
      { temperature: 1 },
    ] as SamplingOptions[]) {
      const s = new Sampler(V2, { ...o, seed: 99 });
      const u = createRng(99);
      const cases = Array.from({ length: 6 }, (_, i) => {
        const logits = makeLogits(V2, 700 + i, 1 + (i % 3));
        return { logits, want: [...reference(logits, o).dist].sort((a, b) => a[0] - b[0]) };
      });
      let mismatches = 0;
      for (let i = 0; i < 120; i++) {
        const { logits, want } = cases[i % cases.length];
        const target = u();
        let acc = 0;
        let tok = want[want.length - 1][0];
        for (const [t, p] of want) {
          acc += p;
          if (acc > target) {
            tok = t;
            break;
          }
        }
        if (s.sample(logits).token !== tok) mismatches++;
      }
      expect(`${show(o)}: ${mismatches} mismatches`).toBe(`${show(o)}: 0 mismatches`);
    }
  });

  test('same seed gives the same tokens, different seeds differ, reset() replays', () => {
    const o = { temperature: 1, topP: 0.95 };
    const rows = Array.from({ length: 5 }, (_, i) => makeLogits(V, i, 1));
    const seq = (s: Sampler): number[] =>
      Array.from({ length: 200 }, (_, i) => s.sample(rows[i % 5]).token);
    const s1 = new Sampler(V, { ...o, seed: 7 });
    const a = seq(s1);
    expect(seq(new Sampler(V, { ...o, seed: 7 }))).toEqual(a);
    expect(seq(new Sampler(V, { ...o, seed: 8 }))).not.toEqual(a);
    s1.reset();
    expect(seq(s1)).toEqual(a);
    // Unseeded samplers pick a random seed and expose it for replay.
    const u1 = new Sampler(V, o);
    const u2 = new Sampler(V, o);
    expect(u1.seed).not.toBe(u2.seed);
    const b = seq(u1);
    expect(seq(new Sampler(V, { ...o, seed: u1.seed }))).toEqual(b);
  });

  test('greedy: argmax after bias and penalties, one pass, no randomness', () => {
    const logits = makeLogits(V, 3);
    const ref = reference(logits, { temperature: 0 });
    const g = new Sampler(V, { temperature: 0, seed: 1 });
    const g2 = new Sampler(V, { temperature: 0, seed: 2 });
    for (let i = 0; i < 5; i++) {
      expect(g.sample(logits).token).toBe(ref.argmax);
      expect(g2.sample(logits).token).toBe(ref.argmax);
    }
    const biased = new Sampler(V, { temperature: 0, logitBias: { 5: 100 } });
    expect(biased.sample(logits).token).toBe(5);
  });

  test('all but one token masked, and -Infinity bias bans', () => {
    const logits = new Float32Array(1000).fill(-Infinity);
    logits[637] = -3;
    for (const o of [
      { temperature: 0 },
      { temperature: 1 },
      { temperature: 0.5, topK: 40, topP: 0.5, minP: 0.9 },
      { temperature: 2, topP: 0.9 },
      { temperature: 1, topK: 999 },
    ]) {
      const s = new Sampler(1000, { ...o, logprobs: 3 });
      for (let i = 0; i < 20; i++) {
        const t = s.sample(logits);
        expect(t.token).toBe(637);
        expect(t.logprob).toBe(0);
        expect(t.top).toEqual([{ token: 637, logprob: 0 }]); // masked tokens are never listed
      }
    }
    const ban = new Sampler(2, { temperature: 1, logitBias: { 0: -Infinity } });
    for (let i = 0; i < 50; i++) expect(ban.sample(Float32Array.of(10, 0)).token).toBe(1);
  });

  test('NaN and +Infinity logits are errors (arg logits); all -Infinity too', () => {
    const s = new Sampler(5, { temperature: 1 });
    const g = new Sampler(5, { temperature: 0 });
    for (const smp of [s, g, new Sampler(5, { topK: 2 }), new Sampler(5, { topP: 0.5 })]) {
      const e = expectKernelError(
        () => smp.sample(Float32Array.of(1, 2, NaN, 3, 4)),
        'E_INVALID_ARG',
        'logits',
      );
      expect(e.message).toMatch(/logits\[2\] is NaN/);
      expectKernelError(
        () => smp.sample(Float32Array.of(1, Infinity, 3, 4, 5)),
        'E_INVALID_ARG',
        'logits',
      );
      expectKernelError(
        () => smp.sample(new Float32Array(5).fill(-Infinity)),
        'E_INVALID_ARG',
        'logits',
      );
    }
    // A NaN created by the bias (+x on -Infinity stays -Infinity, so only a NaN input can do it).
    expectKernelError(
      () => s.sample(Float32Array.of(NaN, NaN, NaN, NaN, NaN)),
      'E_INVALID_ARG',
      'logits',
    );
    expectKernelError(() => s.sample(new Float32Array(4)), 'E_SHAPE', 'logits');
    expectKernelError(
      () => s.sample(new Float64Array(5) as unknown as Float32Array),
      'E_INVALID_ARG',
      'logits',
    );
  });

  test('sample() does not modify the logits', () => {
    const logits = makeLogits(V, 8);
    const copy = logits.slice();
    const s = new Sampler(V, { repetitionPenalty: 1.5, logitBias: { 1: 3 }, topP: 0.9 });
    s.acceptMany([1, 2, 3]);
    s.sample(logits);
    expect(logits).toEqual(copy);
  });
});

describe('Sampler: penalties (llama.cpp semantics)', () => {
  const V = 10;
  const logits = Float32Array.of(2, -1, 0.5, 3, -2, 1, 0, 4, -0.5, 1.5);

  function penalised(o: SamplingOptions, accepted: number[]): Float64Array {
    const s = new Sampler(V, { temperature: 1, ...o });
    s.acceptMany(accepted);
    const d = s.distribution(logits);
    const lp = new Float64Array(V).fill(-Infinity);
    d.tokens.forEach((t, j) => (lp[t] = M_log(d.probs[j])));
    return lp;
  }

  function softmaxLog(x: number[]): number[] {
    const m = Math.max(...x);
    const z = x.reduce((a, v) => a + M_exp(v - m), 0);
    return x.map((v) => v - m - M_log(z));
  }

  function expectLogDist(got: Float64Array, x: number[]): void {
    const want = softmaxLog(x);
    for (let i = 0; i < V; i++) expect(got[i]).toBeCloseTo(want[i], 6);
  }

  test('repetition penalty: once per distinct token, divide positive, multiply negative', () => {
    const x = Array.from(logits);
    // Token 0 three times, token 1 twice: each penalised once.
    x[0] = 2 / 2;
    x[1] = -1 * 2;
    expectLogDist(penalised({ repetitionPenalty: 2 }, [0, 0, 1, 0, 1]), x);
  });

  test('frequency (count times f) and presence (once) penalties', () => {
    const x = Array.from(logits);
    x[3] -= 3 * 0.5 + 1;
    x[7] -= 1 * 0.5 + 1;
    expectLogDist(penalised({ frequencyPenalty: 0.5, presencePenalty: 1 }, [3, 7, 3, 3]), x);
  });

  test('all three combine in llama.cpp order: repetition, then minus count*f + presence', () => {
    const x = Array.from(logits);
    x[2] = 0.5 / 1.5 - (2 * 0.25 + 0.5);
    x[4] = -2 * 1.5 - (1 * 0.25 + 0.5);
    expectLogDist(
      penalised(
        { repetitionPenalty: 1.5, frequencyPenalty: 0.25, presencePenalty: 0.5 },
        [2, 4, 2],
      ),
      x,
    );
  });

  test('the window: penaltyLastN recent tokens, -1 = all, 0 = none; bias comes first', () => {
    const acc = [7, 7, 7, 3, 5];
    const a = Array.from(logits);
    a[3] -= 1;
    a[5] -= 1; // last 2 only
    expectLogDist(penalised({ frequencyPenalty: 1, penaltyLastN: 2 }, acc), a);
    const b = Array.from(logits);
    b[7] -= 3;
    b[3] -= 1;
    b[5] -= 1;
    expectLogDist(penalised({ frequencyPenalty: 1, penaltyLastN: -1 }, acc), b);
    expectLogDist(penalised({ frequencyPenalty: 1, penaltyLastN: 0 }, acc), Array.from(logits));
    // Eviction from the ring keeps counts right over a long stream.
    const long = Array.from({ length: 1000 }, (_, i) => (i * 7) % V);
    const s = new Sampler(V, { temperature: 1, frequencyPenalty: 0.1, penaltyLastN: 13 });
    s.acceptMany(long);
    expectSameDist(
      distMap(s, logits),
      reference(logits, { temperature: 1, frequencyPenalty: 0.1, penaltyLastN: 13 }, long).dist,
      'ring',
    );
    // Bias before penalties: a biased positive logit is divided after the bias.
    const c = Array.from(logits);
    c[1] = (-1 + 3) / 2;
    expectLogDist(penalised({ logitBias: { 1: 3 }, repetitionPenalty: 2 }, [1]), c);
  });

  test('sample() does not accept; accept() feeds the window; reset() clears it', () => {
    const s = new Sampler(V, { temperature: 0, presencePenalty: 100 });
    expect(s.sample(logits).token).toBe(7);
    expect(s.sample(logits).token).toBe(7); // not auto-accepted
    s.accept(7);
    expect(s.sample(logits).token).toBe(3);
    s.accept(3);
    expect(s.sample(logits).token).toBe(0);
    s.reset();
    expect(s.sample(logits).token).toBe(7);
  });
});

describe('Sampler: logprobs', () => {
  test('token logprob and top-n: log-softmax after penalties and temperature, before truncation', () => {
    const V = 2000;
    for (const o of [
      { temperature: 0.8, topK: 40, topP: 0.9, logprobs: 5 },
      { temperature: 0.8, topK: 3, logprobs: 20 }, // n > k
      { temperature: 1.3, topP: 0.5, logprobs: 20 },
      { temperature: 0.6, minP: 0.1, logprobs: 1 },
      { temperature: 0.6, topK: 1000, logprobs: 7 },
      { temperature: 0.6, topK: 1500, topP: 0.9, logprobs: 7 },
      { temperature: 1, logprobs: 4 },
      { temperature: 0, logprobs: 6 }, // greedy: logprobs at temperature 1
      { temperature: 0.9, repetitionPenalty: 1.3, logitBias: { 4: 2 }, logprobs: 3 },
    ] as SamplingOptions[]) {
      for (let trial = 0; trial < 4; trial++) {
        const logits = makeLogits(V, 500 + trial, 2);
        logits[11] = logits[12] = logits[13]; // ties among the top-n candidates
        logits[11] = logits[12] = logits[13] = 12;
        const accepted = [4, 4, 9];
        const s = new Sampler(V, { ...o, seed: trial });
        s.acceptMany(accepted);
        const ref = reference(logits, o, accepted);
        for (let k = 0; k < 3; k++) {
          const t: SampledToken = s.sample(logits);
          expect(t.logprob).toBeCloseTo(ref.logprobs[t.token], 9);
          const n = o.logprobs as number;
          const want = ref.order.slice(0, n);
          expect(t.top?.map((a) => a.token)).toEqual(want);
          t.top?.forEach((a) => expect(a.logprob).toBeCloseTo(ref.logprobs[a.token], 9));
          for (let j = 1; j < (t.top?.length ?? 0); j++)
            expect(t.top![j].logprob).toBeLessThanOrEqual(t.top![j - 1].logprob);
        }
      }
    }
  });

  test('logprobs 0 gives an empty list, undefined gives none', () => {
    const logits = makeLogits(100, 1);
    expect(new Sampler(100, { logprobs: 0 }).sample(logits).top).toEqual([]);
    expect(new Sampler(100, {}).sample(logits).top).toBeUndefined();
  });
});

describe('Sampler: validation', () => {
  const bad: [SamplingOptions | Record<string, unknown>, string][] = [
    [{ temperature: -0.1 }, 'options.temperature'],
    [{ temperature: NaN }, 'options.temperature'],
    [{ temperature: Infinity }, 'options.temperature'],
    [{ temperature: 1e-320 }, 'options.temperature'],
    [{ topK: -1 }, 'options.topK'],
    [{ topK: 1.5 }, 'options.topK'],
    [{ topP: 0 }, 'options.topP'],
    [{ topP: 1.01 }, 'options.topP'],
    [{ topP: NaN }, 'options.topP'],
    [{ minP: -0.01 }, 'options.minP'],
    [{ minP: 2 }, 'options.minP'],
    [{ repetitionPenalty: 0 }, 'options.repetitionPenalty'],
    [{ repetitionPenalty: -1 }, 'options.repetitionPenalty'],
    [{ frequencyPenalty: Infinity }, 'options.frequencyPenalty'],
    [{ presencePenalty: NaN }, 'options.presencePenalty'],
    [{ penaltyLastN: -2 }, 'options.penaltyLastN'],
    [{ penaltyLastN: 3.5 }, 'options.penaltyLastN'],
    [{ seed: 1.5 }, 'options.seed'],
    [{ seed: 2 ** 60 }, 'options.seed'],
    [{ seed: Infinity }, 'options.seed'],
    [{ seed: '1' }, 'options.seed'],
    [{ logprobs: 21 }, 'options.logprobs'],
    [{ logprobs: -1 }, 'options.logprobs'],
    [{ logitBias: { 100: 1 } }, 'options.logitBias[100]'],
    [{ logitBias: { '-1': 1 } }, 'options.logitBias[-1]'],
    [{ logitBias: { 1.5: 1 } }, 'options.logitBias[1.5]'],
    [{ logitBias: { 3: NaN } }, 'options.logitBias[3]'],
    [{ logitBias: { 3: Infinity } }, 'options.logitBias[3]'],
    [{ logitBias: [1, 2] }, 'options.logitBias'],
    [{ top_p: 0.9 }, 'options.top_p'],
  ];
  test.each(bad.map(([o, arg]) => [show(o), arg, o] as const))('%s -> %s', (_n, arg, o) => {
    expectKernelError(() => new Sampler(100, o as SamplingOptions), 'E_INVALID_ARG', arg);
  });

  test('vocabSize, token ids, and accepted defaults', () => {
    for (const v of [0, -1, 1.5, 2 ** 21 + 1, NaN])
      expectKernelError(() => new Sampler(v), 'E_INVALID_ARG', 'vocabSize');
    const s = new Sampler(10);
    for (const t of [-1, 10, 1.5, NaN])
      expectKernelError(() => s.accept(t), 'E_INVALID_ARG', 'token');
    expect(s.options).toMatchObject({
      temperature: 1,
      topK: 0,
      topP: 1,
      minP: 0,
      repetitionPenalty: 1,
      frequencyPenalty: 0,
      presencePenalty: 0,
      penaltyLastN: 64,
      logprobs: undefined,
    });
    // null reads as unset (JSON request bodies); -Infinity bias and negative penalties are fine.
    expect(
      () =>
        new Sampler(10, {
          topP: null,
          logitBias: { 0: -Infinity },
          frequencyPenalty: -1,
        } as unknown as SamplingOptions),
    ).not.toThrow();
  });
});

describe('createRng', () => {
  test('uniform [0,1) doubles with 53 bits, deterministic per seed', () => {
    const r = createRng(42);
    let sum = 0;
    let lowBits = 0;
    const n = 100000;
    const bins = new Array(10).fill(0);
    let outOfRange = 0;
    for (let i = 0; i < n; i++) {
      const u = r();
      if (!(u >= 0 && u < 1)) outOfRange++;
      const k = u * 2 ** 53;
      if (k % 2 === 1) lowBits++;
      sum += u;
      bins[Math.floor(u * 10)]++;
    }
    expect(outOfRange).toBe(0);
    expect(M_abs(sum / n - 0.5)).toBeLessThan(0.005);
    expect(lowBits / n).toBeGreaterThan(0.48); // the last of the 53 bits is random too
    expect(lowBits / n).toBeLessThan(0.52);
    const st = bins.reduce((a, c) => a + (c - n / 10) ** 2 / (n / 10), 0);
    expect(st).toBeLessThan(chi2Crit(9));
    const a = createRng(42);
    const b = createRng(42);
    const c = createRng(43);
    const d = createRng(-42);
    const xs = Array.from({ length: 8 }, () => a());
    expect(Array.from({ length: 8 }, () => b())).toEqual(xs);
    expect(Array.from({ length: 8 }, () => c())).not.toEqual(xs);
    expect(Array.from({ length: 8 }, () => d())).not.toEqual(xs);
    expectKernelError(() => createRng(0.5), 'E_INVALID_ARG', 'seed');
  });
});

// ------------------------------------------------------------------------------------------

describe('StopMatcher', () => {
  /** Pushes the chunks; returns everything emitted (with flush) and whether it stopped. */
  function run(stops: string[], chunks: string[]): { text: string; stopped: boolean } {
    const m = new StopMatcher(stops);
    let text = '';
    let stopped = false;
    for (const c of chunks) {
      const r = m.push(c);
      text += r.emit;
      if (r.stopped) {
        stopped = true;
        break;
      }
    }
    if (!stopped) text += m.flush();
    return { text, stopped };
  }

  /** Naive reference on the whole text: cut at the earliest-ending stop (ties: earliest start). */
  function naive(stops: string[], text: string): { text: string; stopped: boolean } {
    for (let end = 1; end <= text.length; end++) {
      let best = -1;
      for (const s of stops)
        if (end >= s.length && text.slice(end - s.length, end) === s)
          if (best < 0 || end - s.length < best) best = end - s.length;
      if (best >= 0) return { text: text.slice(0, best), stopped: true };
    }
    return { text, stopped: false };
  }

  test('a stop split across many pushes; text before it is emitted, the stop is not', () => {
    const m = new StopMatcher(['</answer>']);
    expect(m.push('The result is 42')).toEqual({ emit: 'The result is 42', stopped: false });
    expect(m.push('<')).toEqual({ emit: '', stopped: false });
    expect(m.push('/ans')).toEqual({ emit: '', stopped: false });
    expect(m.push('wer')).toEqual({ emit: '', stopped: false });
    expect(m.push('> trailing')).toEqual({ emit: '', stopped: true });
    expect(m.matched).toBe('</answer>');
    expect(m.push('more')).toEqual({ emit: '', stopped: true });
    expect(m.flush()).toBe('');
  });

  test('a prefix that then diverges is released', () => {
    const m = new StopMatcher(['STOP']);
    expect(m.push('go ST')).toEqual({ emit: 'go ', stopped: false });
    expect(m.push('O')).toEqual({ emit: '', stopped: false });
    expect(m.push('RM')).toEqual({ emit: 'STORM', stopped: false });
    expect(m.push(' S')).toEqual({ emit: ' ', stopped: false });
    expect(m.flush()).toBe('S'); // end of generation releases the held text
    expect(m.stopped).toBe(false);
  });

  test('overlapping stops: "ab", "abc", "aab"', () => {
    const stops = ['ab', 'abc', 'aab'];
    // "aab" and "ab" complete together at "aab": the earlier start wins -> nothing of it emitted.
    expect(run(stops, ['x', 'a', 'a', 'b', 'c'])).toEqual({ text: 'x', stopped: true });
    expect(run(stops, ['xab'])).toEqual({ text: 'x', stopped: true });
    // "a" held, then "c" releases it.
    const m = new StopMatcher(stops);
    expect(m.push('ya')).toEqual({ emit: 'y', stopped: false });
    expect(m.push('a')).toEqual({ emit: '', stopped: false }); // "aa" is a prefix of "aab"
    expect(m.push('c')).toEqual({ emit: 'aac', stopped: false });
    // The shorter completes first: "b" ends "ab" before "abc" could.
    expect(run(['abc', 'b'], ['a', 'b', 'c'])).toEqual({ text: 'a', stopped: true });
    expect(run(['bc', 'abc'], ['xabc'])).toEqual({ text: 'x', stopped: true });
  });

  test('multiple stops, a stop at the very start, unicode stops', () => {
    expect(run(['\n\n', 'User:', '###'], ['Hello', ' there', '\n', 'Us', 'er:', 'x'])).toEqual({
      text: 'Hello there\n',
      stopped: true,
    });
    expect(run(['<|end|>'], ['<|end|>more'])).toEqual({ text: '', stopped: true });
    expect(run(['<|end|>'], ['<', '|end', '|>'])).toEqual({ text: '', stopped: true });
    // Astral characters (surrogate pairs) in the stop, split anywhere, even mid-pair.
    const stop = 'é🎉終';
    const text = 'café🎉 and é🎉終 after';
    for (let cut = 0; cut < text.length; cut++)
      expect(run([stop], [text.slice(0, cut), text.slice(cut)])).toEqual({
        text: 'café🎉 and ',
        stopped: true,
      });
    // A lone high surrogate at the end of a push is held, never emitted alone.
    const m = new StopMatcher(['zz']);
    const r = m.push('a\ud83c');
    expect(r.emit).toBe('a');
    expect(m.push('\udf89b').emit).toBe('🎉b');
  });

  test('chunking never changes the result (random texts, random splits) and matches naive', () => {
    const r = rng(9);
    const alphabet = ['a', 'b', 'c', 'ab', '\n', '🎉', 'é'];
    for (let trial = 0; trial < 400; trial++) {
      const stops = Array.from({ length: 1 + Math.floor(r() * 3) }, () =>
        Array.from({ length: 1 + Math.floor(r() * 3) }, () => alphabet[Math.floor(r() * 5)]).join(
          '',
        ),
      );
      const text = Array.from(
        { length: Math.floor(r() * 30) },
        () => alphabet[Math.floor(r() * alphabet.length)],
      ).join('');
      const want = naive(stops, text);
      const chunks: string[] = [];
      let i = 0;
      while (i < text.length) {
        let n = 1 + Math.floor(r() * 4);
        // keep surrogate pairs whole here: a detokenizer emits whole code points
        if (i + n < text.length && /[\ud800-\udbff]/.test(text[i + n - 1])) n++;
        chunks.push(text.slice(i, i + n));
        i += n;
      }
      expect(run(stops, chunks)).toEqual(want);
      expect(run(stops, [text])).toEqual(want);
      expect(run(stops, [...text])).toEqual(want); // code unit by code unit
    }
  });

  test('validation', () => {
    expectKernelError(() => new StopMatcher([''] as string[]), 'E_INVALID_ARG', 'stops[0]');
    expectKernelError(
      () => new StopMatcher(['a', 3 as unknown as string]),
      'E_INVALID_ARG',
      'stops[1]',
    );
    expectKernelError(
      () => new StopMatcher('abc' as unknown as string[]),
      'E_INVALID_ARG',
      'stops',
    );
    const m = new StopMatcher([]);
    expect(m.push('anything')).toEqual({ emit: 'anything', stopped: false });
    expect(m.flush()).toBe('');
  });
});
