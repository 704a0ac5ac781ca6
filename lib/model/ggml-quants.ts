/**
 * Encoders for ggml tensor types, used to write GGUF files: F32, F16, BF16, Q8_0, Q4_0, Q4_1,
 * Q4_K and Q6_K.
 *
 * They reproduce ggml's reference quantizers (quantize_row_*_ref in ggml-quants.c, what
 * llama-quantize uses without an importance matrix) step by step, in float32 arithmetic:
 * every operation is rounded to f32 with Math.fround exactly where C rounds it, so the bytes
 * equal ggml's for the same input. The K-quants port make_qkx2_quants (Q4_K) and
 * make_qx_quants (Q6_K) the same way. Checked byte for byte against ggml's C compiled with
 * gcc -O2 for x86-64 (no FMA): identical for 1M weights of every type, edge blocks included
 * (tests/gguf.test.ts pins sha256 digests of that C output). A build that contracts a*b+c
 * into fused multiply-adds (-march with FMA and GNU C's default -ffp-contract=fast) rounds
 * the K-quant searches differently: there about 5% of Q4_K and 0.3% of Q6_K blocks pick a
 * different (equally valid) scale. Q8_0/Q4_0/Q4_1 match either way.
 * f32 -> f16 rounds to nearest even (as F16C and ggml's portable conversion do); NaN becomes
 * the canonical 0x7e00 (with its sign).
 *
 * Hot loops use typed arrays and module-level Math aliases (jest's vm sandbox makes every
 * `Math.x` lookup slow) and allocate nothing per element.
 */
import { KernelError } from '../runtime/errors';
import { ggmlTypeInfo, ggmlTypeName } from './gguf';

const fr = Math.fround;
const abs = Math.abs;
const sqrt = Math.sqrt;
const floor = Math.floor;

const F32 = 0;
const F16 = 1;
const Q4_0 = 2;
const Q4_1 = 3;
const Q8_0 = 8;
const Q4_K = 12;
const Q6_K = 14;
const BF16 = 30;

/** The types encodeGgml can produce. */
export const ENCODABLE_GGML_TYPES: readonly number[] = [
  F32,
  F16,
  BF16,
  Q8_0,
  Q4_0,
  Q4_1,
  Q4_K,
  Q6_K,
];

function typeError(op: string, type: unknown, what = 'a known ggml type id'): KernelError {
  return new KernelError(`Expected ${what} for type but received ${String(type)}`, {
    code: 'E_INVALID_ARG',
    op,
    arg: 'type',
    backend: 'js',
  });
}

/** Elements per block of a ggml type (1 for F32/F16/BF16, 32 for Q8_0/Q4_0/Q4_1, 256 for K-quants). */
export function ggmlBlockSize(type: number): number {
  const t = ggmlTypeInfo(type);
  if (!t || t.removed) throw typeError('ggmlBlockSize', type);
  return t.blockSize;
}

/** Bytes per block of a ggml type. */
export function ggmlTypeSize(type: number): number {
  const t = ggmlTypeInfo(type);
  if (!t || t.removed) throw typeError('ggmlTypeSize', type);
  return t.typeSize;
}

/** Bytes of one row of `cols` elements; cols must be a multiple of the block size. */
export function ggmlRowBytes(type: number, cols: number): number {
  const t = ggmlTypeInfo(type);
  if (!t || t.removed) throw typeError('ggmlRowBytes', type);
  if (!Number.isSafeInteger(cols) || cols < 0 || cols % t.blockSize !== 0)
    throw new KernelError(
      `Expected a non-negative multiple of ${t.blockSize} (the ${t.name} block size) for cols but received ${cols}`,
      { code: 'E_SHAPE', op: 'ggmlRowBytes', arg: 'cols', backend: 'js' },
    );
  return (cols / t.blockSize) * t.typeSize;
}

// ---- scalar conversions ----------------------------------------------------------------------

const scratchF = new Float32Array(1);
const scratchU = new Uint32Array(scratchF.buffer);

/** f16 bits of the f32 whose bits are `x`, round to nearest even. */
function f16FromBits(x: number): number {
  const sign = (x >>> 16) & 0x8000;
  const a = x & 0x7fffffff;
  if (a >= 0x7f800000) return a > 0x7f800000 ? sign | 0x7e00 : sign | 0x7c00;
  if (a >= 0x477ff000) return sign | 0x7c00; // >= 65520 rounds to infinity
  if (a >= 0x38800000) {
    // Normal: re-bias the exponent (127 -> 15) and round the 13 dropped mantissa bits.
    return sign | (((a + 0xfff + ((a >>> 13) & 1)) >>> 13) - 0x1c000);
  }
  const e = a >>> 23;
  if (e < 102) return sign; // below 2^-25 (ties at 2^-25 round to even: zero)
  // Subnormal f16: units of 2^-24.
  const shift = 126 - e;
  const mant = (a & 0x7fffff) | 0x800000;
  let k = mant >>> shift;
  const rem = mant & ((1 << shift) - 1);
  const half = 1 << (shift - 1);
  if (rem > half || (rem === half && (k & 1) !== 0)) k++;
  return sign | k;
}

/** f32 -> f16 bits (round to nearest even). */
export function f32ToF16Bits(v: number): number {
  scratchF[0] = v;
  return f16FromBits(scratchU[0]);
}

/** f32 -> bf16 bits, as ggml_compute_fp32_to_bf16 (round to nearest even, NaN kept quiet). */
function bf16FromBits(x: number): number {
  if ((x & 0x7fffffff) > 0x7f800000) return ((x >>> 16) | 64) & 0xffff;
  return ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
}

let f16Table: Float32Array | undefined;
/** f16 bits -> f32 value (a table: the K-quant encoders decode their own scales). */
function f16ToF32(h: number): number {
  if (!f16Table) {
    const t = new Float32Array(65536);
    for (let i = 0; i < 65536; i++) {
      const s = i & 0x8000 ? -1 : 1;
      const e = (i >> 10) & 0x1f;
      const m = i & 0x3ff;
      t[i] =
        e === 0
          ? s * m * 2 ** -24
          : e === 31
            ? m
              ? NaN
              : s * Infinity
            : s * (1 + m / 1024) * 2 ** (e - 15);
    }
    f16Table = t;
  }
  return f16Table[h];
}

/** ggml's nearest_int: round half to even through the 1.5·2^23 trick, bit for bit. */
function nearestInt(f: number): number {
  const v = fr(f + 12582912);
  if (v >= 8388608 && v < 16777216) return v - 12582912;
  // Out of the trick's range (|f| > 2^22): C reads the mantissa bits of whatever it got.
  scratchF[0] = v;
  return (scratchU[0] & 0x007fffff) - 0x00400000;
}

// ---- plain types ---------------------------------------------------------------------------------

function encodeF16(x: Float32Array, out: Uint8Array): void {
  const bits = new Uint32Array(x.buffer, x.byteOffset, x.length);
  const o = new Uint16Array(out.buffer, out.byteOffset, x.length);
  for (let i = 0; i < bits.length; i++) o[i] = f16FromBits(bits[i]);
}

function encodeBf16(x: Float32Array, out: Uint8Array): void {
  const bits = new Uint32Array(x.buffer, x.byteOffset, x.length);
  const o = new Uint16Array(out.buffer, out.byteOffset, x.length);
  for (let i = 0; i < bits.length; i++) o[i] = bf16FromBits(bits[i]);
}

// ---- 32-element blocks -------------------------------------------------------------------------

/** quantize_row_q8_0_ref: d = amax/127, q = roundf(x/d) (half away from zero). */
function encodeQ8_0(x: Float32Array, out: Uint8Array): void {
  const nb = x.length >>> 5;
  for (let i = 0; i < nb; i++) {
    const xo = i << 5;
    const o = i * 34;
    let amax = 0;
    for (let j = 0; j < 32; j++) {
      const a = abs(x[xo + j]);
      amax = amax > a ? amax : a;
    }
    const d = fr(amax / 127);
    const id = d !== 0 ? fr(1 / d) : 0;
    const h = f32ToF16Bits(d);
    out[o] = h & 0xff;
    out[o + 1] = h >>> 8;
    for (let j = 0; j < 32; j++) {
      const v = fr(x[xo + j] * id);
      // roundf: half away from zero (v is f32, so v ± 0.5 is exact in double)
      const q = v >= 0 ? floor(v + 0.5) : -floor(0.5 - v);
      out[o + 2 + j] = q & 0xff;
    }
  }
}

/** quantize_row_q4_0_ref: d = max/-8 (max = the signed value of largest magnitude). */
function encodeQ4_0(x: Float32Array, out: Uint8Array): void {
  const nb = x.length >>> 5;
  for (let i = 0; i < nb; i++) {
    const xo = i << 5;
    const o = i * 18;
    let amax = 0;
    let max = 0;
    for (let j = 0; j < 32; j++) {
      const v = x[xo + j];
      const a = abs(v);
      if (amax < a) {
        amax = a;
        max = v;
      }
    }
    const d = fr(max / -8);
    const id = d !== 0 ? fr(1 / d) : 0;
    const h = f32ToF16Bits(d);
    out[o] = h & 0xff;
    out[o + 1] = h >>> 8;
    for (let j = 0; j < 16; j++) {
      // (int8_t)(x*id + 8.5f): truncation of an f32 sum
      let q0 = fr(fr(x[xo + j] * id) + 8.5) | 0;
      let q1 = fr(fr(x[xo + 16 + j] * id) + 8.5) | 0;
      if (q0 > 15) q0 = 15;
      if (q1 > 15) q1 = 15;
      out[o + 2 + j] = q0 | (q1 << 4);
    }
  }
}

/** quantize_row_q4_1_ref: d = (max-min)/15, m = min, q = (x-min)/d + 0.5 truncated. */
function encodeQ4_1(x: Float32Array, out: Uint8Array): void {
  const nb = x.length >>> 5;
  const FLT_MAX = 3.4028234663852886e38;
  for (let i = 0; i < nb; i++) {
    const xo = i << 5;
    const o = i * 20;
    let min = FLT_MAX;
    let max = -FLT_MAX;
    for (let j = 0; j < 32; j++) {
      const v = x[xo + j];
      if (v < min) min = v;
      if (v > max) max = v;
    }
    const d = fr(fr(max - min) / 15);
    const id = d !== 0 ? fr(1 / d) : 0;
    const hd = f32ToF16Bits(d);
    const hm = f32ToF16Bits(min);
    out[o] = hd & 0xff;
    out[o + 1] = hd >>> 8;
    out[o + 2] = hm & 0xff;
    out[o + 3] = hm >>> 8;
    for (let j = 0; j < 16; j++) {
      let q0 = fr(fr(fr(x[xo + j] - min) * id) + 0.5) | 0;
      let q1 = fr(fr(fr(x[xo + 16 + j] - min) * id) + 0.5) | 0;
      if (q0 > 15) q0 = 15;
      if (q1 > 15) q1 = 15;
      out[o + 4 + j] = q0 | (q1 << 4);
    }
  }
}

// ---- K-quants (256-element super-blocks) ---------------------------------------------------------

const F01 = fr(0.1);
const GROUP_MAX_EPS = fr(1e-15);

// Scratch shared by the K-quant encoders (single-threaded JS: no reentrancy).
const kL = new Uint8Array(256);
const kLaux = new Uint8Array(32);
const kW = new Float32Array(32);
const kScales = new Float32Array(16);
const kMins = new Float32Array(8);
let kTheMin = 0;

/**
 * make_qkx2_quants: codes 0..nmax for x[xo..xo+n) with weights w, searching nstep+1 scales
 * around nmax/(max-min) by weighted least squares. Returns the scale; the (positive) min
 * goes to kTheMin; codes to L[lo..].
 */
function makeQkx2(
  n: number,
  nmax: number,
  x: Float32Array,
  xo: number,
  w: Float32Array,
  L: Uint8Array,
  lo: number,
  rmin: number,
  rdelta: number,
  nstep: number,
): number {
  const Laux = kLaux;
  let min = x[xo];
  let max = x[xo];
  let sumW = w[0];
  let sumX = fr(sumW * x[xo]);
  for (let i = 1; i < n; i++) {
    const xi = x[xo + i];
    if (xi < min) min = xi;
    if (xi > max) max = xi;
    const wi = w[i];
    sumW = fr(sumW + wi);
    sumX = fr(sumX + fr(wi * xi));
  }
  if (min > 0) min = 0;
  if (max === min) {
    L.fill(0, lo, lo + n);
    kTheMin = -min;
    return 0;
  }
  let iscale = fr(nmax / fr(max - min));
  let scale = fr(1 / iscale);
  let bestError = 0;
  for (let i = 0; i < n; i++) {
    const xi = x[xo + i];
    let l = nearestInt(fr(iscale * fr(xi - min)));
    l = l < 0 ? 0 : l > nmax ? nmax : l;
    L[lo + i] = l;
    const diff = fr(fr(fr(scale * l) + min) - xi);
    bestError = fr(bestError + fr(w[i] * fr(diff * diff)));
  }
  if (nstep < 1) {
    kTheMin = -min;
    return scale;
  }
  // Note: `min` may change inside this loop (a better candidate replaces it), and later
  // candidates quantize against the new min, as ggml does.
  for (let is = 0; is <= nstep; is++) {
    iscale = fr(fr(fr(rmin + fr(rdelta * is)) + nmax) / fr(max - min));
    let sumL = 0;
    let sumL2 = 0;
    let sumXL = 0;
    for (let i = 0; i < n; i++) {
      const xi = x[xo + i];
      let l = nearestInt(fr(iscale * fr(xi - min)));
      l = l < 0 ? 0 : l > nmax ? nmax : l;
      Laux[i] = l;
      const wl = fr(w[i] * l);
      sumL = fr(sumL + wl);
      sumL2 = fr(sumL2 + fr(wl * l));
      sumXL = fr(sumXL + fr(wl * xi));
    }
    const D = fr(fr(sumW * sumL2) - fr(sumL * sumL));
    if (D > 0) {
      let thisScale = fr(fr(fr(sumW * sumXL) - fr(sumX * sumL)) / D);
      let thisMin = fr(fr(fr(sumL2 * sumX) - fr(sumL * sumXL)) / D);
      if (thisMin > 0) {
        thisMin = 0;
        thisScale = fr(sumXL / sumL2);
      }
      let curError = 0;
      for (let i = 0; i < n; i++) {
        const diff = fr(fr(fr(thisScale * Laux[i]) + thisMin) - x[xo + i]);
        curError = fr(curError + fr(w[i] * fr(diff * diff)));
      }
      if (curError < bestError) {
        for (let i = 0; i < n; i++) L[lo + i] = Laux[i];
        bestError = curError;
        scale = thisScale;
        min = thisMin;
      }
    }
  }
  kTheMin = -min;
  return scale;
}

/** quantize_row_q4_K_ref: 8 sub-blocks of 32, 6-bit scales and mins, f16 d and dmin. */
function encodeQ4_K(x: Float32Array, out: Uint8Array): void {
  const nb = x.length >>> 8;
  const L = kL;
  const w = kW;
  const scales = kScales;
  const mins = kMins;
  for (let i = 0; i < nb; i++) {
    const xb = i << 8;
    const o = i * 144;
    let maxScale = 0;
    let maxMin = 0;
    for (let j = 0; j < 8; j++) {
      const xo = xb + 32 * j;
      let sumX2 = 0;
      for (let l = 0; l < 32; l++) {
        const v = x[xo + l];
        sumX2 = fr(sumX2 + fr(v * v));
      }
      const avX = fr(sqrt(fr(sumX2 / 32)));
      for (let l = 0; l < 32; l++) w[l] = fr(avX + abs(x[xo + l]));
      const s = makeQkx2(32, 15, x, xo, w, L, 32 * j, -1, F01, 20);
      scales[j] = s;
      mins[j] = kTheMin;
      if (s > maxScale) maxScale = s;
      if (kTheMin > maxMin) maxMin = kTheMin;
    }
    const invScale = maxScale > 0 ? fr(63 / maxScale) : 0;
    const invMin = maxMin > 0 ? fr(63 / maxMin) : 0;
    const sc = o + 4; // 12 packed scale bytes
    for (let k = 0; k < 12; k++) out[sc + k] = 0;
    for (let j = 0; j < 8; j++) {
      let ls = nearestInt(fr(invScale * scales[j])) & 0xff; // uint8_t conversion
      let lm = nearestInt(fr(invMin * mins[j])) & 0xff;
      if (ls > 63) ls = 63;
      if (lm > 63) lm = 63;
      if (j < 4) {
        out[sc + j] = ls;
        out[sc + j + 4] = lm;
      } else {
        out[sc + j + 4] = (ls & 0xf) | ((lm & 0xf) << 4);
        out[sc + j - 4] |= (ls >> 4) << 6;
        out[sc + j] |= (lm >> 4) << 6;
      }
    }
    const hd = f32ToF16Bits(fr(maxScale / 63));
    const hm = f32ToF16Bits(fr(maxMin / 63));
    out[o] = hd & 0xff;
    out[o + 1] = hd >>> 8;
    out[o + 2] = hm & 0xff;
    out[o + 3] = hm >>> 8;
    const dAll = f16ToF32(hd);
    const mAll = f16ToF32(hm);
    for (let j = 0; j < 8; j++) {
      let s: number;
      let m: number;
      if (j < 4) {
        s = out[sc + j] & 63;
        m = out[sc + j + 4] & 63;
      } else {
        s = (out[sc + j + 4] & 0xf) | ((out[sc + j - 4] >> 6) << 4);
        m = (out[sc + j + 4] >> 4) | ((out[sc + j] >> 6) << 4);
      }
      const d = fr(dAll * s);
      if (d === 0) continue;
      const dm = fr(mAll * m);
      const xo = xb + 32 * j;
      for (let ii = 0; ii < 32; ii++) {
        let l = nearestInt(fr(fr(x[xo + ii] + dm) / d));
        l = l < 0 ? 0 : l > 15 ? 15 : l;
        L[32 * j + ii] = l;
      }
    }
    const q = o + 16;
    for (let j = 0, qo = q; j < 256; j += 64, qo += 32)
      for (let l = 0; l < 32; l++) out[qo + l] = L[j + l] | (L[j + l + 32] << 4);
  }
}

/**
 * make_qx_quants with rmse_type 1 (weights x²), no importance weights: signed codes
 * -nmax..nmax-1 stored as L = code + nmax; returns the scale.
 */
function makeQx(
  n: number,
  nmax: number,
  x: Float32Array,
  xo: number,
  L: Uint8Array,
  lo: number,
): number {
  let max = 0;
  let amax = 0;
  for (let i = 0; i < n; i++) {
    const v = x[xo + i];
    const ax = abs(v);
    if (ax > amax) {
      amax = ax;
      max = v;
    }
  }
  if (amax < GROUP_MAX_EPS) {
    L.fill(0, lo, lo + n);
    return 0;
  }
  let iscale = fr(-nmax / max);
  let sumlx = 0;
  let suml2 = 0;
  for (let i = 0; i < n; i++) {
    const v = x[xo + i];
    let l = nearestInt(fr(iscale * v));
    l = l < -nmax ? -nmax : l > nmax - 1 ? nmax - 1 : l;
    L[lo + i] = l + nmax;
    const w = fr(v * v);
    sumlx = fr(sumlx + fr(fr(w * v) * l));
    suml2 = fr(suml2 + fr(fr(w * l) * l));
  }
  let scale = suml2 !== 0 ? fr(sumlx / suml2) : 0;
  let best = fr(scale * sumlx);
  for (let is = -9; is <= 9; is++) {
    if (is === 0) continue;
    iscale = fr(-fr(nmax + fr(F01 * is)) / max);
    sumlx = 0;
    suml2 = 0;
    for (let i = 0; i < n; i++) {
      const v = x[xo + i];
      let l = nearestInt(fr(iscale * v));
      l = l < -nmax ? -nmax : l > nmax - 1 ? nmax - 1 : l;
      const w = fr(v * v);
      sumlx = fr(sumlx + fr(fr(w * v) * l));
      suml2 = fr(suml2 + fr(fr(w * l) * l));
    }
    if (suml2 > 0 && fr(sumlx * sumlx) > fr(best * suml2)) {
      for (let i = 0; i < n; i++) {
        let l = nearestInt(fr(iscale * x[xo + i]));
        l = l < -nmax ? -nmax : l > nmax - 1 ? nmax - 1 : l;
        L[lo + i] = l + nmax;
      }
      scale = fr(sumlx / suml2);
      best = fr(scale * sumlx);
    }
  }
  return scale;
}

/** quantize_row_q6_K_ref: 16 sub-blocks of 16, int8 scales, f16 d, 6-bit codes (ql + qh). */
function encodeQ6_K(x: Float32Array, out: Uint8Array): void {
  const nb = x.length >>> 8;
  const L = kL;
  const scales = kScales;
  for (let i = 0; i < nb; i++) {
    const xb = i << 8;
    const o = i * 210;
    let maxScale = 0;
    let maxAbsScale = 0;
    for (let ib = 0; ib < 16; ib++) {
      const s = makeQx(16, 32, x, xb + 16 * ib, L, 16 * ib);
      scales[ib] = s;
      const a = abs(s);
      if (a > maxAbsScale) {
        maxAbsScale = a;
        maxScale = s;
      }
    }
    if (maxAbsScale < GROUP_MAX_EPS) {
      out.fill(0, o, o + 210);
      continue;
    }
    const iscale = fr(-128 / maxScale);
    const hd = f32ToF16Bits(fr(1 / iscale));
    out[o + 208] = hd & 0xff;
    out[o + 209] = hd >>> 8;
    const dAll = f16ToF32(hd);
    for (let ib = 0; ib < 16; ib++) {
      let s = nearestInt(fr(iscale * scales[ib]));
      if (s > 127) s = 127;
      out[o + 192 + ib] = s & 0xff;
    }
    for (let j = 0; j < 16; j++) {
      const s = (out[o + 192 + j] << 24) >> 24; // int8
      const d = fr(dAll * s);
      if (d === 0) continue;
      const xo = xb + 16 * j;
      for (let ii = 0; ii < 16; ii++) {
        let l = nearestInt(fr(x[xo + ii] / d));
        l = l < -32 ? -32 : l > 31 ? 31 : l;
        L[16 * j + ii] = l + 32;
      }
    }
    for (let j = 0, ql = o, qh = o + 128; j < 256; j += 128, ql += 64, qh += 32) {
      for (let l = 0; l < 32; l++) {
        const a = L[j + l];
        const b = L[j + l + 32];
        const c = L[j + l + 64];
        const e = L[j + l + 96];
        out[ql + l] = (a & 0xf) | ((c & 0xf) << 4);
        out[ql + l + 32] = (b & 0xf) | ((e & 0xf) << 4);
        out[qh + l] = (a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6);
      }
    }
  }
}

// ---- entry point -------------------------------------------------------------------------------

/**
 * Encodes `rows` x `cols` f32 values (row-major) as ggml type `type`; cols must be a multiple
 * of the type's block size. Deterministic: the same input gives the same bytes.
 */
export function encodeGgml(
  type: number,
  values: Float32Array,
  rows: number,
  cols: number,
): Uint8Array {
  const op = 'encodeGgml';
  if (!ENCODABLE_GGML_TYPES.includes(type))
    throw typeError(
      op,
      type,
      `one of the encodable ggml types (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K)`,
    );
  if (!(values instanceof Float32Array))
    throw new KernelError(`Expected a Float32Array for values but received ${typeof values}`, {
      code: 'E_INVALID_ARG',
      op,
      arg: 'values',
      backend: 'js',
    });
  for (const [name, v] of [
    ['rows', rows],
    ['cols', cols],
  ] as const)
    if (!Number.isSafeInteger(v) || v < 0)
      throw new KernelError(`Expected a non-negative integer for ${name} but received ${v}`, {
        code: 'E_INVALID_ARG',
        op,
        arg: name,
        backend: 'js',
      });
  if (values.length !== rows * cols)
    throw new KernelError(
      `Expected ${rows * cols} values (${rows} x ${cols}) but received ${values.length}`,
      { code: 'E_SHAPE', op, arg: 'values', backend: 'js' },
    );
  const rowBytes = ggmlRowBytes(type, cols); // E_SHAPE when cols is not a multiple of the block
  const out = new Uint8Array(rowBytes * rows);
  // Rows hold whole blocks, so the matrix is one run of blocks.
  switch (type) {
    case F32:
      out.set(new Uint8Array(values.buffer, values.byteOffset, values.byteLength));
      break;
    case F16:
      encodeF16(values, out);
      break;
    case BF16:
      encodeBf16(values, out);
      break;
    case Q8_0:
      encodeQ8_0(values, out);
      break;
    case Q4_0:
      encodeQ4_0(values, out);
      break;
    case Q4_1:
      encodeQ4_1(values, out);
      break;
    case Q4_K:
      encodeQ4_K(values, out);
      break;
    case Q6_K:
      encodeQ6_K(values, out);
      break;
  }
  return out;
}

/** 'Q4_0' etc.; re-exported for writers' messages. */
export { ggmlTypeName };
