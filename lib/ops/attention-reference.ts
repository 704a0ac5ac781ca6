/**
 * Naive float64 attention over contiguous K/V, for tests: the oracle for the paged kernels.
 * For each sequence b with kvLen positions and qlen queries (its last qlen positions), query
 * i attends causally to positions ≤ kvLen − qlen + i (and, with a window, > that − window).
 */
const M_exp = Math.exp;
const M_tanh = Math.tanh;
const M_log = Math.log;
const M_max = Math.max;

export function attention(
  q: ArrayLike<number>, // [totalQ][qHeads][D]
  k: ArrayLike<number>[], // per sequence: [kvLen][kvHeads][D]
  v: ArrayLike<number>[],
  qoIndptr: ArrayLike<number>,
  kvLens: ArrayLike<number>,
  qHeads: number,
  kvHeads: number,
  d: number,
  o: { smScale: number; softCap?: number; window?: number },
): { out: Float64Array; lse: Float64Array } {
  const totalQ = qoIndptr[qoIndptr.length - 1];
  const out = new Float64Array(totalQ * qHeads * d);
  const lse = new Float64Array(totalQ * qHeads);
  const g = qHeads / kvHeads;
  for (let b = 0; b < kvLens.length; b++) {
    const kl = kvLens[b];
    const q0 = qoIndptr[b];
    const ql = qoIndptr[b + 1] - q0;
    for (let i = 0; i < ql; i++) {
      const last = kl - ql + i;
      const first = o.window ? M_max(0, last - o.window + 1) : 0;
      for (let h = 0; h < qHeads; h++) {
        const kh = Math.floor(h / g);
        const qo = ((q0 + i) * qHeads + h) * d;
        const s = new Float64Array(last - first + 1);
        let mx = -Infinity;
        for (let p = first; p <= last; p++) {
          let dot = 0;
          for (let x = 0; x < d; x++) dot += q[qo + x] * k[b][(p * kvHeads + kh) * d + x];
          let sc = dot * o.smScale;
          if (o.softCap) sc = o.softCap * M_tanh(sc / o.softCap);
          s[p - first] = sc;
          mx = M_max(mx, sc);
        }
        let sum = 0;
        for (let j = 0; j < s.length; j++) sum += s[j] = M_exp(s[j] - mx);
        for (let p = first; p <= last; p++) {
          const w = s[p - first] / sum;
          for (let x = 0; x < d; x++) out[qo + x] += w * v[b][(p * kvHeads + kh) * d + x];
        }
        lse[(q0 + i) * qHeads + h] = s.length ? mx + M_log(sum) : -Infinity;
      }
    }
  }
  return { out, lse };
}
