/** Element types. Names match native/include/tachyon/dtype.h. */

// Module-level aliases: in jest's vm sandbox each `Math.x` lookup is slow.
const M_fround = Math.fround;
const M_abs = Math.abs;
const M_round = Math.round;
const M_trunc = Math.trunc;
const M_floor = Math.floor;
const M_log2 = Math.log2;
const M_ceil = Math.ceil;
export const DTYPES = [
  'f32',
  'f16',
  'bf16',
  'fp8e4m3',
  'fp8e5m2',
  'int8',
  'i32',
  'int4',
  'u8',
] as const;
export type DType = (typeof DTYPES)[number];
export type FloatDType = 'f32' | 'f16' | 'bf16';

/** The TypedArray that holds a dtype's raw storage (int4 is packed two per byte). */
export type StorageArray = Float32Array | Uint16Array | Uint8Array | Int8Array | Int32Array;

export function isDType(x: unknown): x is DType {
  return typeof x === 'string' && (DTYPES as readonly string[]).includes(x);
}

export function storageBytes(dtype: DType, numel: number): number {
  switch (dtype) {
    case 'f32':
    case 'i32':
      return numel * 4;
    case 'f16':
    case 'bf16':
      return numel * 2;
    case 'int4':
      return M_ceil(numel / 2);
    default:
      return numel;
  }
}

export function storageView(dtype: DType, buf: ArrayBuffer): StorageArray {
  switch (dtype) {
    case 'f32':
      return new Float32Array(buf);
    case 'f16':
    case 'bf16':
      return new Uint16Array(buf);
    case 'int8':
      return new Int8Array(buf);
    case 'i32':
      return new Int32Array(buf);
    default:
      return new Uint8Array(buf);
  }
}

// ---- scalar conversions (independent of the native ones: tests use these as an oracle) ----
const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

export function f16ToF32(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

/** Round-to-nearest-even f16 encoding of a number (computed in float64). */
export function f32ToF16(v: number): number {
  v = M_fround(v);
  if (Number.isNaN(v)) return 0x7e00;
  const sign = v < 0 || Object.is(v, -0) ? 0x8000 : 0;
  const a = M_abs(v);
  if (a >= 65520) return sign | 0x7c00;
  if (a < 2 ** -14) {
    // subnormal: units of 2^-24, round half to even
    const q = a / 2 ** -24;
    let r = M_round(q);
    if (M_abs(q - M_trunc(q) - 0.5) === 0) r = M_trunc(q) % 2 === 0 ? M_trunc(q) : M_trunc(q) + 1;
    return sign | r;
  }
  let e = M_floor(M_log2(a));
  if (2 ** e > a) e -= 1;
  if (2 ** (e + 1) <= a) e += 1;
  const q = (a / 2 ** e - 1) * 1024;
  let m = M_floor(q);
  const frac = q - m;
  if (frac > 0.5 || (frac === 0.5 && m % 2 === 1)) m += 1;
  if (m === 1024) {
    m = 0;
    e += 1;
  }
  if (e > 15) return sign | 0x7c00;
  return sign | ((e + 15) << 10) | m;
}

export function bf16ToF32(h: number): number {
  u32[0] = h << 16;
  return f32[0];
}

export function f32ToBf16(v: number): number {
  f32[0] = v;
  const x = u32[0];
  if ((x & 0x7fffffff) > 0x7f800000) return ((x >>> 16) | 0x40) & 0xffff;
  return ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
}

/** Encodes float values into a dtype's storage. */
export function encode(dtype: FloatDType, values: ArrayLike<number>): Float32Array | Uint16Array {
  if (dtype === 'f32') return Float32Array.from(values);
  const out = new Uint16Array(values.length);
  const enc = dtype === 'f16' ? f32ToF16 : f32ToBf16;
  for (let i = 0; i < values.length; i++) out[i] = enc(values[i]);
  return out;
}

/** Decodes a float dtype's storage into numbers. */
export function decode(dtype: FloatDType, data: ArrayLike<number>): Float64Array {
  const out = new Float64Array(data.length);
  if (dtype === 'f32') for (let i = 0; i < data.length; i++) out[i] = data[i];
  else {
    const dec = dtype === 'f16' ? f16ToF32 : bf16ToF32;
    for (let i = 0; i < data.length; i++) out[i] = dec(data[i]);
  }
  return out;
}
