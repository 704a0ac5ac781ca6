/**
 * Plain references for quantized weights, written from docs/formats.md and the ggml block
 * definitions, independent of the native code: quantization (the documented
 * round-to-nearest construction, in f32 exactly as specified), dequantization, ggml's
 * block dequantization, and the quantized matmul in float64 (activations quantized per
 * row and block as the kernels document, then exact products summed in float64).
 */
import { f16ToF32, f32ToF16 } from '../runtime/dtype';
import type { ResolvedQuantFormat } from './quant';

// Module-level aliases: inside jest's vm sandbox every `Math.x` lookup goes through the
// sandbox's global object, which made these loops ~20x slower.
const f32 = Math.fround;
const abs = Math.abs;
const max = Math.max;
const min = Math.min;
const round = Math.round;
const trunc = Math.trunc;
const floor = Math.floor;

/** Round half to even (the kernels' and quantize()'s rounding). */
export function rne(x: number): number {
  const r = round(x);
  return abs(x - trunc(x)) === 0.5 ? 2 * round(x / 2) : r;
}

/** Stores a scale in the format's dtype and returns the value actually stored. */
function storeScale(v: number, dtype: 'f32' | 'f16'): number {
  return dtype === 'f16' ? f16ToF32(f32ToF16(v)) : f32(v);
}

export interface PlainRef {
  /** One signed (int8 / int4 sym) or unsigned (int4 asym) code per element, [N*K]. */
  codes: Int32Array;
  /** [N * blocks] */
  scales: Float32Array;
  mins?: Float32Array;
  blocks: number;
  groupLen: number;
}

export function blocksOf(f: ResolvedQuantFormat, k: number): { blocks: number; len: number } {
  return f.group === 0 ? { blocks: 1, len: k } : { blocks: k / f.group, len: f.group };
}

/** quantize() as docs/formats.md specifies it. `w` must hold f32 values. */
export function quantize(
  w: ArrayLike<number>,
  n: number,
  k: number,
  f: ResolvedQuantFormat,
): PlainRef {
  const { blocks, len } = blocksOf(f, k);
  const codes = new Int32Array(n * k);
  const scales = new Float32Array(n * blocks);
  const asym = f.kind === 'int4' && f.asym;
  const mins = asym ? new Float32Array(n * blocks) : undefined;
  const [qmin, qmax] = f.kind === 'int8' ? [-127, 127] : asym ? [0, 15] : [-8, 7];
  for (let r = 0; r < n; r++)
    for (let b = 0; b < blocks; b++) {
      const base = r * k + b * len;
      let d: number;
      let m = 0;
      if (f.kind === 'int8') {
        let amax = 0;
        for (let i = 0; i < len; i++) amax = max(amax, abs(w[base + i]));
        d = storeScale(f32(amax / 127), f.scaleDtype);
      } else if (!asym) {
        let amax = 0;
        let vmax = 0;
        for (let i = 0; i < len; i++)
          if (abs(w[base + i]) > amax) {
            amax = abs(w[base + i]);
            vmax = w[base + i];
          }
        d = storeScale(f32(vmax / -8), f.scaleDtype);
      } else {
        let lo = w[base];
        let hi = w[base];
        for (let i = 1; i < len; i++) {
          lo = min(lo, w[base + i]);
          hi = max(hi, w[base + i]);
        }
        m = storeScale(lo, f.scaleDtype);
        d = storeScale(f32(f32(hi - lo) / 15), f.scaleDtype);
        mins![r * blocks + b] = m;
      }
      scales[r * blocks + b] = d;
      const id = d !== 0 ? f32(1 / d) : 0;
      for (let i = 0; i < len; i++) {
        const t = asym ? f32(f32(w[base + i] - m) * id) : f32(w[base + i] * id);
        codes[base + i] = max(qmin, min(qmax, rne(t)));
      }
    }
  return { codes, scales, mins, blocks, groupLen: len };
}

/** The f32 value each code represents: q·d, or q·d + m (two roundings, as ggml). */
export function dequantize(p: PlainRef, n: number, k: number): Float32Array {
  const out = new Float32Array(n * k);
  for (let r = 0; r < n; r++)
    for (let i = 0; i < k; i++) {
      const b = r * p.blocks + floor(i / p.groupLen);
      const qd = f32(p.codes[r * k + i] * p.scales[b]);
      out[r * k + i] = p.mins ? f32(qd + p.mins[b]) : qd;
    }
  return out;
}

/** ggml's dequantization of Q4_0 / Q4_1 / Q8_0 blocks (N rows of K), from the block definitions. */
export function ggmlDequantize(type: number, data: Uint8Array, n: number, k: number): Float32Array {
  const out = new Float32Array(n * k);
  const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const bb = type === 2 ? 18 : type === 3 ? 20 : 34;
  for (let blk = 0; blk < (n * k) / 32; blk++) {
    const o = blk * bb;
    const d = f16ToF32(dv.getUint16(o, true));
    const y = out.subarray(blk * 32, blk * 32 + 32);
    if (type === 8) {
      for (let j = 0; j < 32; j++) y[j] = f32(dv.getInt8(o + 2 + j) * d);
    } else if (type === 2) {
      for (let j = 0; j < 16; j++) {
        const x = data[o + 2 + j];
        y[j] = f32(((x & 15) - 8) * d);
        y[j + 16] = f32(((x >> 4) - 8) * d);
      }
    } else {
      const m = f16ToF32(dv.getUint16(o + 2, true));
      for (let j = 0; j < 16; j++) {
        const x = data[o + 4 + j];
        y[j] = f32(f32((x & 15) * d) + m);
        y[j + 16] = f32(f32((x >> 4) * d) + m);
      }
    }
  }
  return out;
}

/**
 * The activation quantization every quantized kernel applies, per row and per block of
 * `len` elements: amax = max|a|, sa = amax/127, code = rne(a · (127/amax)) in f32.
 * Returns codes [M*K] and scales [M*blocks].
 */
export function quantizeActivations(
  a: ArrayLike<number>,
  m: number,
  k: number,
  blocks: number,
  len: number,
): { q: Int32Array; s: Float64Array } {
  const q = new Int32Array(m * k);
  const s = new Float64Array(m * blocks);
  for (let r = 0; r < m; r++)
    for (let b = 0; b < blocks; b++) {
      const base = r * k + b * len;
      let amax = 0;
      for (let i = 0; i < len; i++) amax = max(amax, abs(a[base + i]));
      const inv = amax > 0 ? f32(127 / amax) : 0;
      s[r * blocks + b] = f32(amax / 127);
      for (let i = 0; i < len; i++) q[base + i] = rne(f32(a[base + i] * inv));
    }
  return { q, s };
}

/**
 * out = Σ_b sa_b · Σ_{k∈b} qa_k · w_k (+ bias) (+ residual) in float64, with w the
 * dequantized weights [N, K]. Also returns absRef = Σ|sa·qa|·(|q·d| + |m|), the scale of
 * the kernel's f32 rounding (it applies q·d and the min separately).
 */
export function qmatmul(
  a: ArrayLike<number>,
  m: number,
  k: number,
  p: PlainRef,
  n: number,
  o: { bias?: ArrayLike<number>; residual?: ArrayLike<number> } = {},
): { out: Float64Array; absRef: Float64Array } {
  const { q, s } = quantizeActivations(a, m, k, p.blocks, p.groupLen);
  const w = dequantize(p, n, k);
  const out = new Float64Array(m * n);
  const absRef = new Float64Array(m * n);
  for (let r = 0; r < m; r++)
    for (let c = 0; c < n; c++) {
      let acc = 0;
      let absSum = 0;
      for (let b = 0; b < p.blocks; b++) {
        const sa = s[r * p.blocks + b];
        const sw = p.scales[c * p.blocks + b];
        const mn = p.mins ? abs(p.mins[c * p.blocks + b]) : 0;
        let dot = 0;
        let dabs = 0;
        for (let i = b * p.groupLen; i < (b + 1) * p.groupLen; i++) {
          const qa = q[r * k + i];
          dot += qa * w[c * k + i];
          dabs += abs(qa) * (abs(p.codes[c * k + i] * sw) + mn);
        }
        acc += sa * dot;
        absSum += sa * dabs;
      }
      if (o.bias) acc += o.bias[c];
      if (o.residual) acc += o.residual[r * n + c];
      out[r * n + c] = acc;
      absRef[r * n + c] = absSum + (o.residual ? abs(o.residual[r * n + c]) : 0);
    }
  return { out, absRef };
}
