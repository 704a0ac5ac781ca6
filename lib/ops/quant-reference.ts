/**
 * Plain references for quantized weights, written from docs/formats.md and the ggml block
 * definitions, independent of the native code: quantization (the documented
 * round-to-nearest construction, in f32 exactly as specified), dequantization, ggml's
 * block dequantization, and the quantized matmul in float64 (activations quantized per
 * row and block as the kernels document, then exact products summed in float64).
 */
import { f16ToF32, f32ToF16 } from '../runtime/dtype';
import type { Fp8QuantFormat, IntQuantFormat } from './quant';

type IntFormat = Required<IntQuantFormat>;
type Fp8Format = Required<Fp8QuantFormat>;

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
  /** The scale dtype (activation scales follow it, see quantizeActivations). Default f32. */
  scaleDtype?: 'f32' | 'f16';
}

export function blocksOf(f: IntFormat, k: number): { blocks: number; len: number } {
  return f.group === 0 ? { blocks: 1, len: k } : { blocks: k / f.group, len: f.group };
}

/** quantize() as docs/formats.md specifies it. `w` must hold f32 values. */
export function quantize(w: ArrayLike<number>, n: number, k: number, f: IntFormat): PlainRef {
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
  return { codes, scales, mins, blocks, groupLen: len, scaleDtype: f.scaleDtype };
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
  /** The weights' scale dtype: f16 scales round the activation scale to f16 (quant.h). */
  scaleDtype: 'f32' | 'f16' = 'f32',
): { q: Int32Array; s: Float64Array } {
  const q = new Int32Array(m * k);
  const s = new Float64Array(m * blocks);
  for (let r = 0; r < m; r++)
    for (let b = 0; b < blocks; b++) {
      const base = r * k + b * len;
      let amax = 0;
      for (let i = 0; i < len; i++) amax = max(amax, abs(a[base + i]));
      const inv = amax > 0 ? f32(127 / amax) : 0;
      s[r * blocks + b] = storeScale(amax / 127, scaleDtype);
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
  const { q, s } = quantizeActivations(a, m, k, p.blocks, p.groupLen, p.scaleDtype);
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

// ---- fp8 ------------------------------------------------------------------------------

/** The value of an fp8 code, from the format definitions (OCP e4m3fn; IEEE-like e5m2). */
export function fp8Decode(kind: 'fp8e4m3' | 'fp8e5m2', code: number): number {
  const sign = code & 0x80 ? -1 : 1;
  const [eb, mb, bias] = kind === 'fp8e4m3' ? [4, 3, 7] : [5, 2, 15];
  const e = (code >> mb) & ((1 << eb) - 1);
  const m = code & ((1 << mb) - 1);
  if (kind === 'fp8e4m3' && e === 15 && m === 7) return NaN;
  if (kind === 'fp8e5m2' && e === 31) return m === 0 ? sign * Infinity : NaN;
  if (e === 0) return sign * m * 2 ** (1 - bias - mb);
  return sign * (1 + m / (1 << mb)) * 2 ** (e - bias);
}

const fp8Tables = new Map<string, { values: Float64Array; codes: Int32Array }>();
/** Finite non-negative values of a format, ascending, with their codes. */
function fp8Table(kind: 'fp8e4m3' | 'fp8e5m2'): { values: Float64Array; codes: Int32Array } {
  let t = fp8Tables.get(kind);
  if (!t) {
    const pairs: [number, number][] = [];
    for (let c = 0; c < 128; c++) {
      const v = fp8Decode(kind, c);
      if (Number.isFinite(v)) pairs.push([v, c]);
    }
    pairs.sort((a, b) => a[0] - b[0]);
    t = {
      values: Float64Array.from(pairs.map((p) => p[0])),
      codes: Int32Array.from(pairs.map((p) => p[1])),
    };
    fp8Tables.set(kind, t);
  }
  return t;
}

/**
 * Round to the nearest fp8 value, ties to the even code, saturating to the largest finite
 * value (NaN -> the NaN code 0x7f). Written as a search over the value table, not by bit
 * manipulation, so it is independent of the native conversion.
 */
export function fp8Encode(kind: 'fp8e4m3' | 'fp8e5m2', x: number): number {
  if (Number.isNaN(x)) return 0x7f;
  const neg = x < 0 || Object.is(x, -0);
  const a = abs(x);
  const { values, codes } = fp8Table(kind);
  let lo = 0;
  let hi = values.length - 1;
  if (a >= values[hi]) return codes[hi] | (neg ? 0x80 : 0);
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (values[mid] <= a) lo = mid;
    else hi = mid;
  }
  const dl = a - values[lo];
  const dh = values[hi] - a;
  const pick = dl < dh ? lo : dh < dl ? hi : (codes[lo] & 1) === 0 ? lo : hi;
  return codes[pick] | (neg ? 0x80 : 0);
}

export interface Fp8PlainRef {
  codes: Uint8Array;
  scales: Float32Array;
  /** scale index of element (n, k) */
  scaleAt: (n: number, k: number) => number;
}

/** fp8 quantize() as specified in tachyon/fp8.h: scale = amax / max per granule, code = RNE(w / scale). */
export function fp8Quantize(w: ArrayLike<number>, n: number, k: number, f: Fp8Format): Fp8PlainRef {
  const fmax = f.kind === 'fp8e4m3' ? 448 : 57344;
  const nkb = Math.ceil(k / 128);
  const scaleAt =
    f.scaleBlock === 'tensor'
      ? () => 0
      : f.scaleBlock === 'channel'
        ? (r: number) => r
        : (r: number, c: number) => floor(r / 128) * nkb + floor(c / 128);
  const nScales =
    f.scaleBlock === 'tensor' ? 1 : f.scaleBlock === 'channel' ? n : Math.ceil(n / 128) * nkb;
  const amax = new Float64Array(nScales);
  for (let r = 0; r < n; r++)
    for (let c = 0; c < k; c++) {
      const s = scaleAt(r, c);
      amax[s] = max(amax[s], abs(w[r * k + c]));
    }
  const scales = new Float32Array(nScales);
  for (let s = 0; s < nScales; s++) {
    let sc = amax[s] === 0 ? 1 : f32(amax[s] / fmax);
    if (sc === 0) sc = 1.401298464324817e-45;
    scales[s] = sc;
  }
  const codes = new Uint8Array(n * k);
  for (let r = 0; r < n; r++)
    for (let c = 0; c < k; c++)
      codes[r * k + c] = fp8Encode(f.kind, f32(w[r * k + c] / scales[scaleAt(r, c)]));
  return { codes, scales, scaleAt };
}

export function fp8Dequantize(
  p: Fp8PlainRef,
  kind: 'fp8e4m3' | 'fp8e5m2',
  n: number,
  k: number,
): Float32Array {
  const out = new Float32Array(n * k);
  for (let r = 0; r < n; r++)
    for (let c = 0; c < k; c++)
      out[r * k + c] = f32(fp8Decode(kind, p.codes[r * k + c]) * p.scales[p.scaleAt(r, c)]);
  return out;
}

/**
 * fp8 matmul in float64: W8A16 uses the activations as they are; W8A8 quantizes each row
 * to e4m3 first (amax/448 per row, as tachyon/fp8.h documents). absRef = Σ|a·w|.
 */
export function fp8Qmatmul(
  a: ArrayLike<number>,
  m: number,
  k: number,
  p: Fp8PlainRef,
  f: Fp8Format,
  n: number,
  o: { bias?: ArrayLike<number>; residual?: ArrayLike<number> } = {},
): { out: Float64Array; absRef: Float64Array } {
  const act = new Float64Array(m * k);
  for (let r = 0; r < m; r++) {
    if (f.act === 'w8a16') {
      for (let c = 0; c < k; c++) act[r * k + c] = a[r * k + c];
      continue;
    }
    let amax = 0;
    for (let c = 0; c < k; c++) amax = max(amax, abs(a[r * k + c]));
    const sa = amax > 0 ? f32(amax / 448) : 0;
    const inv = amax > 0 ? f32(448 / amax) : 0;
    for (let c = 0; c < k; c++)
      act[r * k + c] = sa * fp8Decode('fp8e4m3', fp8Encode('fp8e4m3', f32(a[r * k + c] * inv)));
  }
  const out = new Float64Array(m * n);
  const absRef = new Float64Array(m * n);
  for (let c = 0; c < n; c++) {
    const wrow = new Float64Array(k);
    for (let i = 0; i < k; i++)
      wrow[i] = fp8Decode(f.kind, p.codes[c * k + i]) * p.scales[p.scaleAt(c, i)];
    for (let r = 0; r < m; r++) {
      let s = 0;
      let sa = 0;
      for (let i = 0; i < k; i++) {
        s += act[r * k + i] * wrow[i];
        sa += abs(act[r * k + i] * wrow[i]);
      }
      if (o.bias) s += o.bias[c];
      if (o.residual) s += o.residual[r * n + c];
      out[r * n + c] = s;
      absRef[r * n + c] = sa + (o.residual ? abs(o.residual[r * n + c]) : 0);
    }
  }
  return { out, absRef };
}

// ---- GGUF K-quants (Q4_K, Q6_K) --------------------------------------------------------

/** Bytes of one 256-element super-block: Q4_K 144, Q6_K 210. */
export function kquantBlockBytes(type: 12 | 14): number {
  return type === 12 ? 144 : 210;
}

/** ggml's get_scale_min_k4: the 6-bit scale and min of sub-block j from the 12 packed bytes. */
function scaleMinK4(j: number, q: Uint8Array, o: number): [number, number] {
  if (j < 4) return [q[o + j] & 63, q[o + j + 4] & 63];
  return [
    (q[o + j + 4] & 0xf) | ((q[o + j - 4] >> 6) << 4),
    (q[o + j + 4] >> 4) | ((q[o + j] >> 6) << 4),
  ];
}

/**
 * ggml's dequantize_row_q4_K / dequantize_row_q6_K over N rows of K, from the block
 * definitions, evaluated in f32 as ggml's C does (no fused multiply-add):
 *   Q4_K: block {f16 d, f16 dmin, u8 scales[12], u8 qs[128]}:
 *         y = (d·sc)·q − (dmin·m) per sub-block of 32 (low nibbles, then high, per 64)
 *   Q6_K: block {u8 ql[128], u8 qh[64], i8 scales[16], f16 d}: y = (d·sc)·q, q in −32..31
 */
export function ggmlDequantizeK(
  type: 12 | 14,
  data: Uint8Array,
  n: number,
  k: number,
  /** Q4_K: receives each element's min term dmin·m (for error scales). */
  minsOut?: Float32Array,
): Float32Array {
  const out = new Float32Array(n * k);
  const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const bb = kquantBlockBytes(type);
  for (let blk = 0; blk < (n * k) / 256; blk++) {
    const o = blk * bb;
    const y = out.subarray(blk * 256, blk * 256 + 256);
    if (type === 12) {
      const d = f16ToF32(dv.getUint16(o, true));
      const dmin = f16ToF32(dv.getUint16(o + 2, true));
      let yi = 0;
      for (let j = 0, is = 0, q = o + 16; j < 256; j += 64, is += 2, q += 32) {
        const [sc1, m1] = scaleMinK4(is, data, o + 4);
        const [sc2, m2] = scaleMinK4(is + 1, data, o + 4);
        const d1 = f32(d * sc1);
        const mm1 = f32(dmin * m1);
        const d2 = f32(d * sc2);
        const mm2 = f32(dmin * m2);
        if (minsOut) {
          minsOut.fill(mm1, blk * 256 + yi, blk * 256 + yi + 32);
          minsOut.fill(mm2, blk * 256 + yi + 32, blk * 256 + yi + 64);
        }
        for (let l = 0; l < 32; l++) y[yi++] = f32(f32(d1 * (data[q + l] & 0xf)) - mm1);
        for (let l = 0; l < 32; l++) y[yi++] = f32(f32(d2 * (data[q + l] >> 4)) - mm2);
      }
    } else {
      const d = f16ToF32(dv.getUint16(o + 208, true));
      for (let half = 0; half < 2; half++) {
        const ql = o + half * 64;
        const qh = o + 128 + half * 32;
        const sc = o + 192 + half * 8;
        const yb = half * 128;
        for (let l = 0; l < 32; l++) {
          const is = l >> 4;
          const q1 = ((data[ql + l] & 0xf) | (((data[qh + l] >> 0) & 3) << 4)) - 32;
          const q2 = ((data[ql + l + 32] & 0xf) | (((data[qh + l] >> 2) & 3) << 4)) - 32;
          const q3 = ((data[ql + l] >> 4) | (((data[qh + l] >> 4) & 3) << 4)) - 32;
          const q4 = ((data[ql + l + 32] >> 4) | (((data[qh + l] >> 6) & 3) << 4)) - 32;
          const s = (i: number): number => dv.getInt8(sc + i);
          y[yb + l] = f32(f32(d * s(is)) * q1);
          y[yb + l + 32] = f32(f32(d * s(is + 2)) * q2);
          y[yb + l + 64] = f32(f32(d * s(is + 4)) * q3);
          y[yb + l + 96] = f32(f32(d * s(is + 6)) * q4);
        }
      }
    }
  }
  return out;
}

/**
 * A quantized matmul reference over any dequantized weights w [N, K] with activations
 * quantized per row and block of `len` (the K-quants use 256): out = Σ_b sa_b Σ qa·w in
 * float64. absRef uses |w| + |wMin| per element (wMin: the min term the kernel applies
 * separately; 0 where there is none).
 */
export function qmatmulDense(
  a: ArrayLike<number>,
  m: number,
  k: number,
  w: ArrayLike<number>,
  n: number,
  len: number,
  wMin?: ArrayLike<number>,
): { out: Float64Array; absRef: Float64Array } {
  const blocks = k / len;
  const { q, s } = quantizeActivations(a, m, k, blocks, len);
  const out = new Float64Array(m * n);
  const absRef = new Float64Array(m * n);
  for (let r = 0; r < m; r++)
    for (let c = 0; c < n; c++) {
      let acc = 0;
      let as = 0;
      for (let b = 0; b < blocks; b++) {
        let dot = 0;
        let dabs = 0;
        for (let i = b * len; i < (b + 1) * len; i++) {
          const qa = q[r * k + i];
          dot += qa * w[c * k + i];
          dabs += abs(qa) * (abs(w[c * k + i]) + (wMin ? 2 * abs(wMin[c * k + i]) : 0));
        }
        acc += s[r * blocks + b] * dot;
        as += s[r * blocks + b] * dabs;
      }
      out[r * n + c] = acc;
      absRef[r * n + c] = as;
    }
  return { out, absRef };
}

/** The value of every element of a K-quant plain layout (codes, sub-scales, mins, super scales), as the format defines it. */
export function kquantPlainDequantize(
  kind: 'q4k' | 'q6k',
  n: number,
  k: number,
  codes: Int8Array | Uint8Array,
  scales: Int8Array | Uint8Array,
  superD: Float32Array,
  mins?: Uint8Array,
  superDmin?: Float32Array,
): Float32Array {
  const out = new Float32Array(n * k);
  const sub = kind === 'q4k' ? 32 : 16;
  for (let r = 0; r < n; r++)
    for (let i = 0; i < k; i++) {
      const sb = r * (k / 256) + floor(i / 256);
      const sj = r * (k / sub) + floor(i / sub);
      const d = superD[sb];
      if (kind === 'q6k') {
        out[r * k + i] = f32(f32(d * scales[sj]) * codes[r * k + i]);
      } else {
        const byte = codes[r * (k / 2) + (i >> 1)];
        const q = i % 2 === 0 ? byte & 15 : byte >> 4;
        out[r * k + i] = f32(f32(f32(d * scales[sj]) * q) - f32(superDmin![sb] * mins![sj]));
      }
    }
  return out;
}
