/**
 * Backend parity for the quantized GEMMs: the same cases on `cpu`, on `cuda-emu` (the CUDA kernels
 * native/cuda/kernels/gemm_w4a16.cuh, gemm_int8.cuh, gemm_fp8.cuh and moe.cuh run by the emulator,
 * forward and reverse schedule) and on `cuda` when a usable GPU exists.
 *
 * Weights are made in the plain layout (random codes and scales, so the float64 reference sees
 * exactly the values the format defines, via lib/ops/quant-reference.ts) and packed by
 * packQuantized on each backend: the CPU's SIMD panels, or the device layout (int4 / q4k: the
 * W4A16 kernel's fragment tiles, repacked on the host and uploaded; int8 / fp8: codes then scales,
 * assembled on the device).
 *
 * What each backend computes (so which float64 reference it is checked against):
 *   - int4 / q4k on the CPU, and int8 everywhere: activations quantized to int8 per token and
 *     block (the weight group; q4k 256; per-channel int8 the row), sa rounded to f16 with f16
 *     weight scales (not q4k), then exact integer dots: ref = Σ_b sa_b Σ qa·w.
 *   - int4 / q4k on a device (W4A16): activations used as they are: ref = Σ a·w.
 *   - fp8 W8A16: ref = Σ a·w; fp8 W8A8: each row quantized to e4m3 (amax / 448) first.
 * plus bias and residual. Tolerance (per element; helpers.ts's model with a wider accumulation
 * term): |got - ref| <= ATOL[out] + RTOL[out]·|ref| + (2K + 64)·2^-24·absRef, where absRef =
 * Σ|a'|·(|w| + 2|min term|) + |bias| + |residual| (a' the activations the backend multiplies): one
 * rounding of the output dtype, and f32 accumulation (tensor-core partial sums, split-K and group
 * promotion included; the min term of asym / q4k is applied separately by every kernel).
 * Cross-backend: every device result is also compared with the CPU's for the same case:
 * |dev - cpu| <= bound_dev + bound_cpu + |ref_dev - ref_cpu| (the last term is the CPU's
 * activation quantization where the device keeps 16 bits), and moeCombine must be bit-exact.
 * Shapes are small but awkward: M = 1, 3, 17 (the GEMV, decode and larger tiles), N not a
 * multiple of 16, K not a multiple of the 128 tile (nor of 16, for int8 / fp8), every group size.
 */
import { decode, encode, f16ToF32, f32ToF16, FloatDType } from '../lib/runtime/dtype';
import { loadRuntime, Runtime } from '../lib/runtime/runtime';
import { Tensor } from '../lib/runtime/tensor';
import * as ops from '../lib/ops/index';
import {
  packedBytes,
  QuantFormat,
  QuantizedTensor,
  ResolvedQuantFormat,
  resolveFormat,
} from '../lib/ops/quant';
import * as qref from '../lib/ops/quant-reference';
import { ATOL, backendsToTest, BackendCase, expectKernelError, RTOL, rng } from './helpers';

const M_abs = Math.abs;
const M_ceil = Math.ceil;
const M_floor = Math.floor;
const M_max = Math.max;
const f32 = Math.fround;

type Act = 'f32' | 'f16' | 'bf16';
interface Spec {
  name: string;
  format: QuantFormat;
  n: number;
  k: number;
  /** activation dtypes to run (default f16 and bf16) */
  acts?: Act[];
}

const SPECS: Spec[] = [
  { name: 'int4 sym g32 f16', format: { kind: 'int4', group: 32 }, n: 40, k: 160 },
  {
    name: 'int4 asym g64 f32',
    format: { kind: 'int4', group: 64, asym: true, scaleDtype: 'f32' },
    n: 23,
    k: 192,
  },
  {
    name: 'int4 sym g128 f32',
    format: { kind: 'int4', group: 128, scaleDtype: 'f32' },
    n: 33,
    k: 384,
  },
  { name: 'int4 asym g32 f16', format: { kind: 'int4', group: 32, asym: true }, n: 17, k: 96 },
  { name: 'q4k', format: { kind: 'q4k' }, n: 24, k: 512 },
  {
    name: 'int8 per-channel f32',
    format: { kind: 'int8', group: 0, scaleDtype: 'f32' },
    n: 23,
    k: 72,
    acts: ['f16', 'bf16', 'f32'],
  },
  { name: 'int8 g32 f16', format: { kind: 'int8', group: 32 }, n: 40, k: 96 },
  { name: 'int8 g128 f32', format: { kind: 'int8', group: 128, scaleDtype: 'f32' }, n: 19, k: 256 },
  { name: 'fp8e4m3 channel w8a16', format: { kind: 'fp8e4m3' }, n: 40, k: 200 },
  {
    name: 'fp8e4m3 block128 w8a8',
    format: { kind: 'fp8e4m3', scaleBlock: 'block128', act: 'w8a8' },
    n: 150,
    k: 300,
    acts: ['f16', 'bf16', 'f32'],
  },
  {
    name: 'fp8e5m2 tensor w8a8',
    format: { kind: 'fp8e5m2', scaleBlock: 'tensor', act: 'w8a8' },
    n: 24,
    k: 64,
  },
  {
    name: 'fp8e5m2 block128 w8a16',
    format: { kind: 'fp8e5m2', scaleBlock: 'block128' },
    n: 20,
    k: 130,
  },
];

// ---- plain weights and their values ---------------------------------------------------------

interface Part {
  data: ArrayBufferView;
  shape: number[];
  dtype: 'u8' | 'int8' | 'f16' | 'f32' | 'fp8e4m3' | 'fp8e5m2';
}
interface Weights {
  f: ResolvedQuantFormat;
  n: number;
  k: number;
  parts: Record<'codes' | 'scales' | 'mins' | 'superD' | 'superDmin', Part | undefined>;
  /** The value of every weight [N*K] (what dequantize gives). */
  w: Float64Array;
  /** |min term| per weight (int4 asym, q4k), for absRef. */
  wMin?: Float64Array;
  /** The CPU's activation quantization block (int formats) and whether sa is rounded to f16. */
  actLen: number;
  actF16: boolean;
}

function resolve(f: QuantFormat): ResolvedQuantFormat {
  return resolveFormat(f, 'test');
}

/** A scale stored in `dtype` (f16 values are rounded so they are exact). */
function scaleVals(n: number, r: () => number, lo: number, hi: number, dtype: 'f16' | 'f32') {
  const v = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const x = (lo + (hi - lo) * r()) * (r() < 0.5 ? -1 : 1);
    v[i] = dtype === 'f16' ? f16ToF32(f32ToF16(x)) : f32(x);
  }
  return { v, data: dtype === 'f16' ? encode('f16', v) : Float32Array.from(v) };
}

function makeWeights(spec: Spec, seed: number): Weights {
  const f = resolve(spec.format);
  const { n, k } = spec;
  const r = rng(seed);
  const w = new Float64Array(n * k);
  const parts: Weights['parts'] = {
    codes: undefined,
    scales: undefined,
    mins: undefined,
    superD: undefined,
    superDmin: undefined,
  };
  if (f.kind === 'fp8e4m3' || f.kind === 'fp8e5m2') {
    const e4 = f.kind === 'fp8e4m3';
    const codes = new Uint8Array(n * k);
    for (let i = 0; i < codes.length; i++) {
      let c: number;
      do c = M_floor(r() * 256);
      while (e4 ? (c & 0x7f) === 0x7f : (c & 0x7f) >= 0x7c); // no NaN / inf codes
      codes[i] = c;
    }
    const nkb = M_ceil(k / 128);
    const ns =
      f.scaleBlock === 'tensor' ? 1 : f.scaleBlock === 'channel' ? n : M_ceil(n / 128) * nkb;
    // scales so that |w| stays below ~0.1 (e4m3 max 448, e5m2 max 57344)
    const top = e4 ? 0.1 / 448 : 0.1 / 57344;
    const sc = new Float32Array(ns);
    for (let i = 0; i < ns; i++) sc[i] = f32(top * (0.25 + 0.75 * r()));
    const at = (row: number, col: number) =>
      f.scaleBlock === 'tensor'
        ? 0
        : f.scaleBlock === 'channel'
          ? row
          : M_floor(row / 128) * nkb + M_floor(col / 128);
    for (let row = 0; row < n; row++)
      for (let c = 0; c < k; c++)
        w[row * k + c] = f32(qref.fp8Decode(f.kind, codes[row * k + c]) * sc[at(row, c)]);
    parts.codes = { data: codes, shape: [n, k], dtype: f.kind };
    parts.scales = {
      data: sc,
      shape:
        f.scaleBlock === 'tensor' ? [1] : f.scaleBlock === 'channel' ? [n] : [M_ceil(n / 128), nkb],
      dtype: 'f32',
    };
    return { f, n, k, parts, w, actLen: k, actF16: false };
  }
  if (f.kind === 'q4k') {
    const ns = k / 32;
    const nsb = k / 256;
    const codes = new Uint8Array((n * k) / 2);
    for (let i = 0; i < codes.length; i++) codes[i] = M_floor(r() * 256);
    const sc = new Uint8Array(n * ns);
    const mn = new Uint8Array(n * ns);
    for (let i = 0; i < sc.length; i++) {
      sc[i] = M_floor(r() * 64);
      mn[i] = M_floor(r() * 64);
    }
    const d = scaleVals(n * nsb, r, 2e-4, 6e-4, 'f16');
    const dmin = scaleVals(n * nsb, r, 2e-4, 6e-4, 'f16');
    for (let i = 0; i < d.v.length; i++) {
      d.v[i] = M_abs(d.v[i]);
      dmin.v[i] = M_abs(dmin.v[i]);
    }
    const dEnc = encode('f16', d.v);
    const dminEnc = encode('f16', dmin.v);
    const vals = qref.kquantPlainDequantize(
      'q4k',
      n,
      k,
      codes,
      sc,
      Float32Array.from(d.v),
      mn,
      Float32Array.from(dmin.v),
    );
    w.set(vals);
    const wMin = new Float64Array(n * k);
    for (let row = 0; row < n; row++)
      for (let i = 0; i < k; i++)
        wMin[row * k + i] = M_abs(
          f32(dmin.v[row * nsb + M_floor(i / 256)] * mn[row * ns + M_floor(i / 32)]),
        );
    parts.codes = { data: codes, shape: [n, k / 2], dtype: 'u8' };
    parts.scales = { data: sc, shape: [n, ns], dtype: 'u8' };
    parts.mins = { data: mn, shape: [n, ns], dtype: 'u8' };
    parts.superD = { data: dEnc, shape: [n, nsb], dtype: 'f16' };
    parts.superDmin = { data: dminEnc, shape: [n, nsb], dtype: 'f16' };
    return { f, n, k, parts, w, wMin, actLen: 256, actF16: false };
  }
  if (f.kind !== 'int4' && f.kind !== 'int8') throw new Error(`no generator for ${f.kind}`);
  const blocks = f.group === 0 ? 1 : k / f.group;
  const len = f.group === 0 ? k : f.group;
  const codes = new Int32Array(n * k);
  for (let i = 0; i < codes.length; i++)
    codes[i] =
      f.kind === 'int8'
        ? M_floor(r() * 255) - 127
        : f.asym
          ? M_floor(r() * 16)
          : M_floor(r() * 16) - 8;
  const top = f.kind === 'int8' ? 0.1 / 127 : 0.1 / 8;
  const s = scaleVals(n * blocks, r, top / 4, top, f.scaleDtype);
  const m =
    f.kind === 'int4' && f.asym ? scaleVals(n * blocks, r, 0.01, 0.05, f.scaleDtype) : undefined;
  const p: qref.PlainRef = {
    codes,
    scales: Float32Array.from(s.v),
    mins: m ? Float32Array.from(m.v) : undefined,
    blocks,
    groupLen: len,
  };
  w.set(qref.dequantize(p, n, k));
  let wMin: Float64Array | undefined;
  if (m) {
    wMin = new Float64Array(n * k);
    for (let i = 0; i < n * k; i++)
      wMin[i] = M_abs(m.v[M_floor(i / k) * blocks + M_floor((i % k) / len)]);
  }
  if (f.kind === 'int8') {
    parts.codes = { data: Int8Array.from(codes), shape: [n, k], dtype: 'int8' };
  } else {
    const b = new Uint8Array((n * k) / 2);
    for (let i = 0; i < n * k; i += 2) b[i >> 1] = (codes[i] & 15) | ((codes[i + 1] & 15) << 4);
    parts.codes = { data: b, shape: [n, k / 2], dtype: 'u8' };
  }
  parts.scales = { data: s.data, shape: [n, blocks], dtype: f.scaleDtype };
  if (m) parts.mins = { data: m.data, shape: [n, blocks], dtype: f.scaleDtype };
  return { f, n, k, parts, w, wMin, actLen: len, actF16: f.scaleDtype === 'f16' };
}

function pack(rt: Runtime, wt: Weights): QuantizedTensor {
  const t = (p: Part | undefined) =>
    p ? rt.tensor(p.data, p.shape, { dtype: p.dtype }) : undefined;
  const plain = {
    codes: t(wt.parts.codes)!,
    scales: t(wt.parts.scales)!,
    mins: t(wt.parts.mins),
    superD: t(wt.parts.superD),
    superDmin: t(wt.parts.superDmin),
  };
  const q = ops.packQuantized(plain, wt.f, [wt.n, wt.k]);
  for (const x of Object.values(plain)) x?.dispose(); // the queued pack holds its own references
  return q;
}

// ---- references ------------------------------------------------------------------------------

interface Ref {
  out: Float64Array;
  absRef: Float64Array;
}

/**
 * out[r, c] = Σ_i act[r, i]·w[c, i] (+ bias[c]) (+ res[r, c]); act given per element. rowOf maps
 * output row r to its activation row (grouped), wOf to its weights.
 */
function dense(
  act: Float64Array,
  k: number,
  rows: number,
  n: number,
  wOf: (r: number) => Weights,
  rowOf: (r: number) => number,
  bias?: (r: number, c: number) => number,
  res?: Float64Array,
): Ref {
  const out = new Float64Array(rows * n);
  const absRef = new Float64Array(rows * n);
  for (let r = 0; r < rows; r++) {
    const wt = wOf(r);
    const a0 = rowOf(r) * k;
    for (let c = 0; c < n; c++) {
      let s = 0;
      let sa = 0;
      const w0 = c * k;
      for (let i = 0; i < k; i++) {
        const x = act[a0 + i];
        s += x * wt.w[w0 + i];
        sa += M_abs(x) * (M_abs(wt.w[w0 + i]) + (wt.wMin ? 2 * wt.wMin[w0 + i] : 0));
      }
      if (bias) {
        s += bias(r, c);
        sa += M_abs(bias(r, c));
      }
      if (res) {
        s += res[r * n + c];
        sa += M_abs(res[r * n + c]);
      }
      out[r * n + c] = s;
      absRef[r * n + c] = sa;
    }
  }
  return { out, absRef };
}

/** The activations a backend multiplies (after its activation quantization, if any), [M*K]. */
function effectiveActs(a: Float64Array, m: number, wt: Weights, device: boolean): Float64Array {
  const f = wt.f;
  const k = wt.k;
  if (f.kind === 'fp8e4m3' || f.kind === 'fp8e5m2') {
    if (f.act === 'w8a16') return a;
    const out = new Float64Array(m * k);
    for (let r = 0; r < m; r++) {
      let amax = 0;
      for (let i = 0; i < k; i++) amax = M_max(amax, M_abs(a[r * k + i]));
      const sa = amax > 0 ? f32(amax / 448) : 0;
      const inv = amax > 0 ? f32(448 / amax) : 0;
      for (let i = 0; i < k; i++)
        out[r * k + i] =
          sa * qref.fp8Decode('fp8e4m3', qref.fp8Encode('fp8e4m3', f32(a[r * k + i] * inv)));
    }
    return out;
  }
  if (device && f.kind !== 'int8') return a; // W4A16: 16-bit activations as they are
  const blocks = k / wt.actLen;
  const { q, s } = qref.quantizeActivations(a, m, k, blocks, wt.actLen, wt.actF16 ? 'f16' : 'f32');
  const out = new Float64Array(m * k);
  for (let r = 0; r < m; r++)
    for (let i = 0; i < k; i++)
      out[r * k + i] = s[r * blocks + M_floor(i / wt.actLen)] * q[r * k + i];
  return out;
}

function bounds(ref: Ref, out: FloatDType, k: number): Float64Array {
  const b = new Float64Array(ref.out.length);
  const acc = (2 * k + 64) * 2 ** -24;
  for (let i = 0; i < b.length; i++)
    b[i] = ATOL[out] + RTOL[out] * M_abs(ref.out[i]) + acc * ref.absRef[i];
  return b;
}

function check(got: Float64Array, ref: Ref, bound: Float64Array, what: string): void {
  expect(got.length).toBe(ref.out.length);
  for (let i = 0; i < got.length; i++)
    if (!(M_abs(got[i] - ref.out[i]) <= bound[i]))
      throw new Error(
        `${what}: element ${i} is ${got[i]}, reference ${ref.out[i]}, allowed ±${bound[i]}`,
      );
}

function input(rt: Runtime, dtype: FloatDType, shape: number[], seed: number, scale = 1) {
  const r = rng(seed);
  const n = shape.reduce((x, y) => x * y, 1);
  const v = new Float64Array(n);
  for (let i = 0; i < n; i++) v[i] = (r() * 2 - 1) * scale;
  const enc = encode(dtype, v);
  return { t: rt.tensor(enc, shape, { dtype }), v: decode(dtype, enc) };
}
async function values(t: Tensor): Promise<Float64Array> {
  return decode(t.dtype as FloatDType, await t.read());
}

// The CPU's results by case key: {got, ref, bound}.
const cpuResults = new Map<string, { got: Float64Array; ref: Ref; bound: Float64Array }>();
// Largest |dev - cpu| / allowed seen, where both backends compute the same math (int8, fp8) and
// where the CPU quantizes activations the device keeps in 16 bits (int4, q4k); reported at the end.
const maxCross = { same: 0, actQuant: 0 };
function crossCheck(
  key: string,
  c: BackendCase,
  got: Float64Array,
  ref: Ref,
  bound: Float64Array,
): void {
  if (c.backend === 'cpu') {
    cpuResults.set(key, { got, ref, bound });
    return;
  }
  const cpu = cpuResults.get(key);
  if (!cpu) return; // the cpu case did not run (filtered): the reference check still applies
  for (let i = 0; i < got.length; i++) {
    const refDiff = M_abs(ref.out[i] - cpu.ref.out[i]);
    const allowed = bound[i] + cpu.bound[i] + refDiff;
    const d = M_abs(got[i] - cpu.got[i]);
    if (ref === cpu.ref || refDiff === 0) maxCross.same = M_max(maxCross.same, d / allowed);
    else maxCross.actQuant = M_max(maxCross.actQuant, d / allowed);
    if (!(d <= allowed))
      throw new Error(
        `${key}: element ${i} is ${got[i]} on ${c.name} but ${cpu.got[i]} on cpu (allowed ±${allowed})`,
      );
  }
}

const cases = backendsToTest();

describe.each(cases)('backend $name', (c) => {
  const { backend, schedule, arch } = c;
  const device = backend !== 'cpu';
  let rt: Runtime;
  beforeAll(async () => {
    rt = await loadRuntime({ backend, schedule, arch, threads: 2 });
  });
  afterAll(() => rt?.dispose());

  describe.each(SPECS)('qmatmul $name', (spec) => {
    let wt: Weights;
    let q: QuantizedTensor;
    beforeAll(() => {
      wt = makeWeights(spec, spec.n * 1000 + spec.k);
      q = pack(rt, wt);
    });
    afterAll(() => q?.dispose());

    test('packed size is the backend layout', () => {
      expect(q.bytes).toBe(packedBytes(spec.format, [spec.n, spec.k], backend));
      const f = wt.f;
      if (device && (f.kind === 'int4' || f.kind === 'q4k')) {
        // W4A16 tiles: 16 channels x 128 of K, 1024 bytes of codes + scales (and mins)
        const meta =
          f.kind === 'q4k'
            ? 192
            : (128 / f.group) * 16 * (f.scaleDtype === 'f32' ? 4 : 2) * (f.asym ? 2 : 1);
        expect(q.bytes).toBe(M_ceil(spec.n / 16) * M_ceil(spec.k / 128) * (1024 + meta));
      }
    });

    if (device && (spec.format.kind === 'int8' || spec.format.kind.startsWith('fp8')))
      test('device layout: codes [N, K], then the scales at a 256-byte boundary', async () => {
        const bytes = (await q.packed.read()) as Uint8Array;
        const codes = wt.parts.codes!.data as Uint8Array | Int8Array;
        const cb = new Uint8Array(codes.buffer, codes.byteOffset, codes.byteLength);
        expect(Buffer.from(bytes.subarray(0, cb.length)).equals(Buffer.from(cb))).toBe(true);
        const off = M_ceil((spec.n * spec.k) / 256) * 256;
        const sd = wt.parts.scales!.data;
        const sb = new Uint8Array(sd.buffer, sd.byteOffset, sd.byteLength);
        expect(Buffer.from(bytes.subarray(off, off + sb.length)).equals(Buffer.from(sb))).toBe(
          true,
        );
      });

    const acts = spec.acts ?? ['f16', 'bf16'];
    const f0 = resolve(spec.format);
    const w4 = f0.kind === 'int4' || f0.kind === 'q4k';
    const a16only = w4 || ((f0.kind === 'fp8e4m3' || f0.kind === 'fp8e5m2') && f0.act === 'w8a16');
    test.each(acts.flatMap((act) => [1, 3, 17].map((m) => [act, m] as [Act, number])))(
      '%s activations, M=%i, with bias / residual',
      async (act, m) => {
        const { n, k } = spec;
        if (device && a16only && act === 'f32') return; // (refused: see the bad-input tests)
        const seed = n * 31 + k * 7 + m + (act === 'bf16' ? 5000 : act === 'f32' ? 9000 : 0);
        // M=1: f32 out + bias; M=3: out in the activation dtype + residual, a as [1, 3, K];
        // M=17: the other 16-bit dtype, bias and residual accumulated in place (residual = out)
        const outDtype: FloatDType =
          m === 1 ? 'f32' : m === 3 ? act : act === 'f16' ? 'bf16' : 'f16';
        const a = input(rt, act, m === 3 ? [1, 3, k] : [m, k], seed);
        const biasV =
          m !== 3 ? Float32Array.from(input(rt, 'f32', [n], seed + 1, 0.5).v) : undefined;
        const res =
          m !== 1 ? input(rt, outDtype, m === 3 ? [1, 3, n] : [m, n], seed + 2, 0.5) : undefined;
        const bias = biasV ? rt.tensor(biasV, [n]) : undefined;
        let out: Tensor;
        if (m === 17) {
          out = ops.qmatmul(a.t, q, { bias, residual: res!.t, out: res!.t });
        } else {
          out = ops.qmatmul(a.t, q, { bias, residual: res?.t, outDtype });
        }
        expect(out.dtype).toBe(outDtype);
        expect(out.shape).toEqual(m === 3 ? [1, 3, n] : [m, n]);
        const got = await values(out);
        const eff = effectiveActs(a.v, m, wt, device);
        const ref = dense(
          eff,
          k,
          m,
          n,
          () => wt,
          (r) => r,
          biasV ? (_r, col) => biasV[col] : undefined,
          res?.v,
        );
        const bound = bounds(ref, outDtype, k);
        check(got, ref, bound, `${spec.name} ${act} M=${m} on ${c.name}`);
        crossCheck(`${spec.name}-${act}-${m}`, c, got, ref, bound);
        a.t.dispose();
        bias?.dispose();
        out.dispose();
      },
    );
  });

  // W4A16 split-K: cuda-emu plans for 8 SMs, so these decode shapes split K (gemv: 2 splits at
  // K=1024; m8: 2 at K=2048) and the tickets are exercised through the addon; repeating a shape
  // after another proves they were left zero (a stale ticket loses the tile's output).
  test('int4 decode shapes (split-K on the device), repeated across shape changes', async () => {
    const shapes: [number, number, number][] = [
      [1, 64, 1024],
      [5, 64, 2048],
      [1, 64, 1024],
      [3, 40, 256],
      [5, 64, 2048],
    ];
    const made = new Map<string, { wt: Weights; q: QuantizedTensor }>();
    for (const [m, n, k] of shapes) {
      const key = `${n}x${k}`;
      if (!made.has(key)) {
        const wt = makeWeights({ name: key, format: { kind: 'int4', group: 128 }, n, k }, n + k);
        made.set(key, { wt, q: pack(rt, wt) });
      }
      const { wt, q } = made.get(key)!;
      const a = input(rt, 'bf16', [m, k], m * k);
      const got = await values(ops.qmatmul(a.t, q, { outDtype: 'f32' }));
      const ref = dense(
        effectiveActs(a.v, m, wt, device),
        k,
        m,
        n,
        () => wt,
        (r) => r,
      );
      check(got, ref, bounds(ref, 'f32', k), `split-K M=${m} N=${n} K=${k}`);
    }
    for (const { q } of made.values()) q.dispose();
  });

  // ---- grouped (MoE) and combine ---------------------------------------------------------------
  const GROUPED: Spec[] = [
    { name: 'int4 sym g32 f16', format: { kind: 'int4', group: 32 }, n: 40, k: 160 },
    { name: 'q4k', format: { kind: 'q4k' }, n: 20, k: 256 },
    { name: 'int8 g64 f16', format: { kind: 'int8', group: 64 }, n: 24, k: 192 },
    { name: 'fp8e4m3 channel w8a16', format: { kind: 'fp8e4m3' }, n: 40, k: 200 },
    {
      name: 'fp8e4m3 block128 w8a8',
      format: { kind: 'fp8e4m3', scaleBlock: 'block128', act: 'w8a8' },
      n: 24,
      k: 136,
    },
  ];
  const E = 4;
  const T = 5;
  const TOPK = 2;
  // top-2 routing of 5 tokens over 4 experts; expert 2 gets no token
  const ROUTE = Int32Array.from([0, 3, 1, 0, 3, 1, 0, 1, 3, 0]);
  describe.each(GROUPED)('qmatmulGrouped + moeCombine $name', (spec) => {
    test.each(['f16', 'bf16'] as const)('%s activations, bias, empty expert', async (act) => {
      const { n, k } = spec;
      const fp8 = spec.format.kind.startsWith('fp8');
      const experts = Array.from({ length: E }, (_, e) => makeWeights(spec, 77 * e + n + k));
      const qs = experts.map((wt) => pack(rt, wt));
      const a = input(rt, act, [T, k], k + (act === 'bf16' ? 1 : 0));
      const perm = ops.expertPermutation(ROUTE, TOPK, E);
      const rows = rt.tensor(perm.rows, [perm.rows.length], { dtype: 'i32' });
      const offsets = rt.tensor(perm.offsets, [E + 1], { dtype: 'i32' });
      const biasV = Float32Array.from(input(rt, 'f32', [E * n], 3, 0.5).v);
      const bias = rt.tensor(biasV, [E, n]);
      const outDtype: FloatDType = act === 'f16' ? 'f32' : 'bf16';
      if (fp8 && !device) {
        // the CPU has no fp8 grouped kernel
        expectKernelError(
          () => ops.qmatmulGrouped(a.t, qs, rows, offsets),
          'E_UNSUPPORTED',
          'format',
        );
        return;
      }
      const y = ops.qmatmulGrouped(a.t, qs, rows, offsets, { bias, outDtype });
      const R = perm.rows.length;
      expect(y.shape).toEqual([R, n]);
      const got = await values(y);
      const expertOf = (i: number) => {
        let e = 0;
        while (perm.offsets[e + 1] <= i) e++;
        return e;
      };
      const eff = effectiveActs(a.v, T, experts[0], device);
      const ref = dense(
        eff,
        k,
        R,
        n,
        (i) => experts[expertOf(i)],
        (i) => perm.rows[i],
        (i, col) => biasV[expertOf(i) * n + col],
      );
      const bound = bounds(ref, outDtype, k);
      check(got, ref, bound, `grouped ${spec.name} ${act} on ${c.name}`);
      crossCheck(`grouped-${spec.name}-${act}`, c, got, ref, bound);

      // combine: out[t] (+)= Σ_j w[t,j]·y[slot[t,j]], the CPU's loop exactly (f32, no FMA)
      const wts = new Float32Array(T * TOPK);
      for (let i = 0; i < wts.length; i++) wts[i] = f32(0.25 + (i % 3) * 0.3);
      const start = input(rt, 'f32', [T, n], 99, 1);
      for (const accumulate of [false, true]) {
        const out = rt.tensor(Float32Array.from(start.v), [T, n]);
        ops.moeCombine(y, perm.slot, wts, TOPK, out, { accumulate });
        const cg = (await out.read()) as Float32Array;
        for (let t = 0; t < T; t++)
          for (let col = 0; col < n; col++) {
            let o = accumulate ? f32(start.v[t * n + col]) : 0;
            for (let j = 0; j < TOPK; j++)
              o = f32(o + f32(wts[t * TOPK + j] * got[perm.slot[t * TOPK + j] * n + col]));
            if (!Object.is(cg[t * n + col], o) && cg[t * n + col] !== o)
              throw new Error(
                `moeCombine[${t}, ${col}] is ${cg[t * n + col]}, want ${o} (bit-exact)`,
              );
          }
        out.dispose();
      }
      for (const t of [a.t, rows, offsets, bias, y, start.t]) t.dispose();
      for (const x of qs) x.dispose();
    });
  });

  // ---- bad input ---------------------------------------------------------------------------------
  describe('bad input', () => {
    const i4: QuantFormat = { kind: 'int4', group: 32 };
    let wt: Weights;
    let q: QuantizedTensor;
    beforeAll(() => {
      wt = makeWeights({ name: 'i4', format: i4, n: 24, k: 64 }, 5);
      q = pack(rt, wt);
    });
    afterAll(() => q?.dispose());

    test('a format the backend cannot run is E_UNSUPPORTED naming format', async () => {
      const q6: QuantFormat = { kind: 'q6k' };
      const cpuBytes = packedBytes(q6, [16, 256], 'cpu');
      if (!device) {
        expect(packedBytes(q6, [16, 256], backend)).toBe(cpuBytes);
        return;
      }
      expectKernelError(() => packedBytes(q6, [16, 256], backend), 'E_UNSUPPORTED', 'format');
      const plain = {
        codes: rt.zeros([16, 256], 'int8'),
        scales: rt.zeros([16, 16], 'int8'),
        superD: rt.zeros([16, 1], 'f16'),
      };
      expectKernelError(() => ops.packQuantized(plain, q6, [16, 256]), 'E_UNSUPPORTED', 'format');
      // a q6k tensor built by hand (any size) is refused by qmatmul, not computed on
      const fake = new QuantizedTensor(resolve(q6), [16, 256], rt.zeros([cpuBytes], 'u8'));
      const a = rt.zeros([2, 256], 'f16');
      expectKernelError(() => ops.qmatmul(a, fake), 'E_UNSUPPORTED', 'format');
      // fused gate/up tensors have no device layout either
      expectKernelError(() => ops.fuseGateUp(q, q), 'E_UNSUPPORTED', 'format');
      // the W4A16 kernel keeps 16-bit activations: f32 is refused (cast first), naming a
      expectKernelError(() => ops.qmatmul(rt.zeros([2, 64], 'f32'), q), 'E_UNSUPPORTED', 'a');
      fake.dispose();
      a.dispose();
      for (const t of Object.values(plain)) t.dispose();
      // the stream is healthy
      expect((await ops.qmatmul(rt.zeros([1, 64], 'f16'), q).toFloat32()).length).toBe(24);
    });

    test('a packed tensor of the wrong size is E_SHAPE naming weights (the CPU layout on a device too)', () => {
      const other = device ? packedBytes(i4, [24, 64], 'cpu') : q.bytes + 64;
      expect(other).not.toBe(q.bytes);
      const wrong = new QuantizedTensor(q.format, [24, 64], rt.zeros([other], 'u8'));
      expectKernelError(() => ops.qmatmul(rt.zeros([1, 64], 'f16'), wrong), 'E_SHAPE', 'weights');
      wrong.dispose();
    });

    test('mixing backends is E_BACKEND naming the foreign tensor', async () => {
      const other = cases.find((x) => x.backend !== backend && x.backend !== 'cuda');
      if (!other) return; // only one backend in this build
      const rt2 = await loadRuntime({
        backend: other.backend,
        schedule: other.schedule,
        threads: 1,
      });
      try {
        const a2 = rt2.zeros([1, 64], 'f16');
        expectKernelError(() => ops.qmatmul(a2, q), 'E_BACKEND', 'weights');
        const q2 = pack(rt2, wt);
        const a = rt.zeros([2, 64], 'f16');
        const rows = rt.tensor(Int32Array.from([0, 1]), [2], { dtype: 'i32' });
        const offs = rt.tensor(Int32Array.from([0, 1, 2]), [3], { dtype: 'i32' });
        expectKernelError(
          () => ops.qmatmulGrouped(a, [q, q2], rows, offs),
          'E_BACKEND',
          'experts[1]',
        );
        const plain = {
          codes: rt.tensor(wt.parts.codes!.data, wt.parts.codes!.shape, { dtype: 'u8' }),
          scales: rt2.tensor(wt.parts.scales!.data, wt.parts.scales!.shape, { dtype: 'f16' }),
        };
        expectKernelError(() => ops.packQuantized(plain, i4, [24, 64]), 'E_BACKEND', 'scales');
        q2.dispose();
      } finally {
        rt2.dispose();
      }
    });

    // int4 runs the W4A16 grouped kernel (routing checked per tile), int8 the planner kernel
    test.each(['int4', 'int8'] as const)(
      'bad routing in qmatmulGrouped (%s) is a typed error at the next completion point, and the stream recovers',
      async (kind) => {
        const wq =
          kind === 'int4'
            ? { wt, q }
            : (() => {
                const w8 = makeWeights(
                  { name: 'i8', format: { kind: 'int8', group: 32 }, n: 24, k: 64 },
                  6,
                );
                return { wt: w8, q: pack(rt, w8) };
              })();
        const a = input(rt, 'f16', [3, 64], 1);
        const run = (rowsV: number[], offsV: number[]) =>
          ops.qmatmulGrouped(
            a.t,
            [wq.q, wq.q],
            rt.tensor(Int32Array.from(rowsV), [rowsV.length], { dtype: 'i32' }),
            rt.tensor(Int32Array.from(offsV), [offsV.length], { dtype: 'i32' }),
            { outDtype: 'f32' },
          );
        for (const [rowsV, offsV, arg] of [
          [[0, 3, 1], [0, 2, 3], 'rows'], // a row outside [0, T)
          [[0, -1, 1], [0, 2, 3], 'rows'],
          [[0, 1, 2], [0, 4, 3], 'offsets'], // decreasing
          [[0, 1, 2], [0, 1, 2], 'offsets'], // offsets[E] != R
        ] as [number[], number[], string][]) {
          await expect(run(rowsV, offsV).read()).rejects.toMatchObject({
            code: 'E_INVALID_ARG',
            arg,
            backend,
          });
          rt.defaultStream.reset();
        }
        // recovered: a good call is right again
        const got = await values(run([2, 0, 1], [0, 1, 3]));
        const ref = dense(
          effectiveActs(a.v, 3, wq.wt, device),
          64,
          3,
          24,
          () => wq.wt,
          (r) => [2, 0, 1][r],
        );
        check(got, ref, bounds(ref, 'f32', 64), `grouped ${kind} after recovery on ${c.name}`);
        a.t.dispose();
        if (wq.q !== q) wq.q.dispose();
      },
    );

    test('moeCombine with a slot outside [0, R) (-1 included) is E_INVALID_ARG naming slot, and the stream recovers', async () => {
      const y = rt.tensor(Float32Array.from([1, 2, 3, 4, 5, 6]), [3, 2]);
      const out = rt.zeros([2, 2], 'f32');
      const w = Float32Array.from([0.5, 0.5, 1, 1]);
      for (const bad of [3, -1]) {
        ops.moeCombine(y, Int32Array.from([0, 1, bad, 2]), w, 2, out);
        await expect(out.read()).rejects.toMatchObject({
          code: 'E_INVALID_ARG',
          arg: 'slot',
          backend,
        });
        rt.defaultStream.reset();
      }
      ops.moeCombine(y, Int32Array.from([0, 1, 2, 2]), w, 2, out);
      expect(Array.from((await out.read()) as Float32Array)).toEqual([2, 3, 10, 12]);
      y.dispose();
      out.dispose();
    });
  });
});

afterAll(() => {
  if (cases.length > 1)
    process.stderr.write(
      `[parity-qgemm] largest device-vs-cpu difference, as a share of the allowed bound: ` +
        `${(maxCross.same * 100).toFixed(1)}% (same math: int8, fp8), ` +
        `${(maxCross.actQuant * 100).toFixed(1)}% (int4 / q4k: the CPU quantizes activations)\n`,
    );
});
