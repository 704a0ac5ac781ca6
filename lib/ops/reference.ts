/**
 * Plain float64 reference implementations of every op, written for obviousness, not
 * speed. Tests compare every backend and ISA variant against these. Inputs are decoded
 * values (see runtime/dtype `decode`); outputs are float64 before output rounding.
 */

// Module-level aliases: in jest's vm sandbox each `Math.x` lookup is slow.
const M_abs = Math.abs;
const M_exp = Math.exp;
const M_sqrt = Math.sqrt;
const M_max = Math.max;
const M_pow = Math.pow;
const M_cos = Math.cos;
const M_sin = Math.sin;

/** C[M,N] = alpha·A[M,K]·op(B) + beta·C + bias. B is [N,K] if transB else [K,N]. */
export function matmul(
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  m: number,
  n: number,
  k: number,
  o: {
    transB?: boolean;
    alpha?: number;
    beta?: number;
    c?: ArrayLike<number>;
    bias?: ArrayLike<number>;
  } = {},
): Float64Array {
  const transB = o.transB ?? true;
  const alpha = o.alpha ?? 1;
  const beta = o.beta ?? 0;
  const out = new Float64Array(m * n);
  for (let i = 0; i < m; i++)
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let p = 0; p < k; p++) s += a[i * k + p] * (transB ? b[j * k + p] : b[p * n + j]);
      let v = alpha * s;
      if (beta !== 0 && o.c) v += beta * o.c[i * n + j];
      if (o.bias) v += o.bias[j];
      out[i * n + j] = v;
    }
  return out;
}

/** Σ|a||b| per output: the scale that bounds a dot product's rounding error. */
export function matmulAbs(
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  m: number,
  n: number,
  k: number,
  transB = true,
): Float64Array {
  const out = new Float64Array(m * n);
  for (let i = 0; i < m; i++)
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let p = 0; p < k; p++) s += M_abs(a[i * k + p] * (transB ? b[j * k + p] : b[p * n + j]));
      out[i * n + j] = s;
    }
  return out;
}

export function binary(
  op: 'add' | 'mul',
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  cols: number,
): Float64Array {
  const out = new Float64Array(a.length);
  const bcast = b.length !== a.length;
  for (let i = 0; i < a.length; i++) {
    const bv = bcast ? b[i % cols] : b[i];
    out[i] = op === 'add' ? a[i] + bv : a[i] * bv;
  }
  return out;
}

export function siluMul(gate: ArrayLike<number>, up: ArrayLike<number>): Float64Array {
  const out = new Float64Array(gate.length);
  for (let i = 0; i < gate.length; i++) out[i] = (gate[i] / (1 + M_exp(-gate[i]))) * up[i];
  return out;
}

export function rmsNorm(
  x: ArrayLike<number>,
  cols: number,
  eps: number,
  weight?: ArrayLike<number>,
): Float64Array {
  const out = new Float64Array(x.length);
  for (let r = 0; r < x.length / cols; r++) {
    let ss = 0;
    for (let c = 0; c < cols; c++) ss += x[r * cols + c] ** 2;
    const inv = 1 / M_sqrt(ss / cols + eps);
    for (let c = 0; c < cols; c++)
      out[r * cols + c] = x[r * cols + c] * inv * (weight ? weight[c] : 1);
  }
  return out;
}

/** RoPE on x[tokens, heads, headDim] (llama.cpp semantics: θ = pos·scale·base^(-2i/rotDim)). */
export function rope(
  x: ArrayLike<number>,
  tokens: number,
  heads: number,
  headDim: number,
  positions: ArrayLike<number>,
  o: { rotaryDim?: number; freqBase?: number; freqScale?: number; neox?: boolean } = {},
): Float64Array {
  const rot = o.rotaryDim ?? headDim;
  const base = o.freqBase ?? 10000;
  const scale = o.freqScale ?? 1;
  const out = Float64Array.from(x as ArrayLike<number>);
  for (let t = 0; t < tokens; t++)
    for (let h = 0; h < heads; h++) {
      const off = (t * heads + h) * headDim;
      for (let i = 0; i < rot / 2; i++) {
        const theta = positions[t] * scale * M_pow(base, (-2 * i) / rot);
        const c = M_cos(theta);
        const s = M_sin(theta);
        const i0 = o.neox ? off + i : off + 2 * i;
        const i1 = o.neox ? off + i + rot / 2 : off + 2 * i + 1;
        const x0 = x[i0];
        const x1 = x[i1];
        out[i0] = x0 * c - x1 * s;
        out[i1] = x0 * s + x1 * c;
      }
    }
  return out;
}

export function softmax(x: ArrayLike<number>, cols: number, scale = 1): Float64Array {
  const out = new Float64Array(x.length);
  for (let r = 0; r < x.length / cols; r++) {
    let mx = -Infinity;
    for (let c = 0; c < cols; c++) mx = M_max(mx, scale * x[r * cols + c]);
    if (mx === -Infinity) continue;
    let sum = 0;
    for (let c = 0; c < cols; c++) sum += M_exp(scale * x[r * cols + c] - mx);
    for (let c = 0; c < cols; c++) out[r * cols + c] = M_exp(scale * x[r * cols + c] - mx) / sum;
  }
  return out;
}

export function embedding(
  table: ArrayLike<number>,
  dim: number,
  ids: ArrayLike<number>,
): Float64Array {
  const out = new Float64Array(ids.length * dim);
  for (let t = 0; t < ids.length; t++)
    for (let d = 0; d < dim; d++) out[t * dim + d] = table[ids[t] * dim + d];
  return out;
}
