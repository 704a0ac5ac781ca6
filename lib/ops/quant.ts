import { DType, FloatDType } from '../runtime/dtype';
import { invalidArg, KernelError } from '../runtime/errors';
import { Backend, Runtime } from '../runtime/runtime';
import { Tensor } from '../runtime/tensor';
import { binding, enqueue, OpOptions, optTensorArg, outArg, streamOf, tensorArg } from './common';

/**
 * Quantized weights: formats, quantize / dequantize, plain <-> packed layouts, GGUF block
 * import, and the quantized matmul. Byte layouts are in docs/formats.md.
 *
 * A {@link QuantizedTensor} is the repacked (SIMD-interleaved) bytes of a weight matrix
 * [N, K] (nn.Linear / GGUF layout: one row per output channel) plus its format. The
 * packing is done once, at quantize / import time; matmul reads it directly.
 */

export type QuantKind = 'int8' | 'int4' | 'q4k' | 'q6k' | 'fp8e4m3' | 'fp8e5m2';

/** A quantized weight format: integer or fp8. */
export type QuantFormat = IntQuantFormat | Fp8QuantFormat;

/**
 * Integer weights with group scales (activations are quantized to int8 in the kernel):
 * int8, int4, and the GGUF K-quants q4k (Q4_K) and q6k (Q6_K), which have super-blocks of
 * 256 with small integer sub-block scales (group 256, f16 super-block scales).
 */
export interface IntQuantFormat {
  kind: 'int8' | 'int4' | 'q4k' | 'q6k';
  /**
   * Quantization group along K: 32, 64 or 128 elements share one scale. int8 also
   * allows 0, one scale per output channel. Default: 32.
   */
  group?: 0 | 32 | 64 | 128 | 256;
  /** int4 only: scale plus min (codes 0..15) instead of symmetric codes -8..7. */
  asym?: boolean;
  /** Storage dtype of scales and mins. Default f16. */
  scaleDtype?: 'f32' | 'f16';
}

/** fp8 weights with f32 scales. */
export interface Fp8QuantFormat {
  kind: 'fp8e4m3' | 'fp8e5m2';
  /** Scale granularity: one per tensor, per output channel (default), or per 128×128 block. */
  scaleBlock?: 'tensor' | 'channel' | 'block128';
  /**
   * 'w8a16' (default): activations used as they are (f32/f16/bf16). 'w8a8': each row of
   * activations is quantized to e4m3 with its own scale first.
   */
  act?: 'w8a16' | 'w8a8';
}

/** A format with every field filled in. */
export type ResolvedQuantFormat = Required<IntQuantFormat> | Required<Fp8QuantFormat>;

export function isFp8Format(f: QuantFormat): f is Fp8QuantFormat {
  return f.kind === 'fp8e4m3' || f.kind === 'fp8e5m2';
}

/** Error statistics of a quantization, over all elements: err = dequantize(q) - w. */
export interface QuantStats {
  maxAbsErr: number;
  rmsErr: number;
  /** max |err| / (the step of its block); at most 0.5 unless a value was clamped. */
  maxErrStep: number;
  /** Elements whose nearest grid point lay outside the code range. */
  clamped: number;
}

/** ggml tensor type ids, as stored in GGUF files. */
export const GgmlType = {
  F32: 0,
  F16: 1,
  Q4_0: 2,
  Q4_1: 3,
  Q8_0: 8,
  Q4_K: 12,
  Q6_K: 14,
  BF16: 30,
} as const;
export type GgmlTypeId = (typeof GgmlType)[keyof typeof GgmlType];

const GGML_BLOCK_FORMATS: Record<number, ResolvedQuantFormat> = {
  [GgmlType.Q4_0]: { kind: 'int4', group: 32, asym: false, scaleDtype: 'f16' },
  [GgmlType.Q4_1]: { kind: 'int4', group: 32, asym: true, scaleDtype: 'f16' },
  [GgmlType.Q8_0]: { kind: 'int8', group: 32, asym: false, scaleDtype: 'f16' },
  [GgmlType.Q4_K]: { kind: 'q4k', group: 256, asym: false, scaleDtype: 'f16' },
  [GgmlType.Q6_K]: { kind: 'q6k', group: 256, asym: false, scaleDtype: 'f16' },
};
const GGML_DENSE: Record<number, FloatDType> = {
  [GgmlType.F32]: 'f32',
  [GgmlType.F16]: 'f16',
  [GgmlType.BF16]: 'bf16',
};

export function resolveFormat(format: QuantFormat, op: string): ResolvedQuantFormat {
  if (typeof format !== 'object' || format === null)
    throw invalidArg(op, 'format', 'a format object', format);
  if (isFp8Format(format))
    return {
      kind: format.kind,
      scaleBlock: format.scaleBlock ?? 'channel',
      act: format.act ?? 'w8a16',
    };
  const g = format as IntQuantFormat;
  const kq = g.kind === 'q4k' || g.kind === 'q6k';
  const f: Required<IntQuantFormat> = {
    kind: g.kind,
    group: g.group ?? (kq ? 256 : 32),
    asym: g.asym ?? false,
    scaleDtype: g.scaleDtype ?? 'f16',
  };
  if (!['int8', 'int4', 'q4k', 'q6k'].includes(f.kind))
    throw invalidArg(
      op,
      'format.kind',
      "'int8', 'int4', 'q4k', 'q6k', 'fp8e4m3' or 'fp8e5m2'",
      f.kind,
    );
  // group, asym and scaleDtype are checked natively against the shape (one rule, one place).
  return f;
}

function shapeArg(shape: unknown, op: string): [number, number] {
  if (
    !Array.isArray(shape) ||
    shape.length !== 2 ||
    !shape.every((d) => Number.isSafeInteger(d) && (d as number) > 0)
  )
    throw invalidArg(op, 'shape', 'an [N, K] pair of positive integers', shape, 'E_SHAPE');
  return [shape[0] as number, shape[1] as number];
}

/** The plain layout: what importers produce and tests read. */
export interface PlainQuantized {
  /**
   * int8: int8 [N, K]. int4: u8 [N, K/2], element k in byte k/2, low nibble first.
   * fp8: fp8e4m3 / fp8e5m2 [N, K].
   */
  codes: Tensor;
  /** int: scaleDtype [N, blocks]. fp8: f32 [1], [N] or [ceil(N/128), ceil(K/128)]. */
  scales: Tensor;
  /** Asymmetric int4: scaleDtype [N, blocks]. q4k: u8 [N, K/32] (0..63). */
  mins?: Tensor;
  /** K-quants: f16 [N, K/256] super-block scales. */
  superD?: Tensor;
  /** q4k: f16 [N, K/256] super-block min scales. */
  superDmin?: Tensor;
}

/** Repacked quantized weights [N, K]. */
export class QuantizedTensor {
  readonly format: ResolvedQuantFormat;
  /** Logical shape [N, K]. */
  readonly shape: readonly [number, number];
  /** The repacked bytes (u8). */
  readonly packed: Tensor;
  /**
   * A fused gate/up pair (from fuseGateUp): two [N, K] matrices whose matmul is
   * silu(a·gateᵀ) ⊙ (a·upᵀ), [..., N].
   */
  readonly gateUp: boolean;
  private readonly statsTensor: Tensor | undefined;

  /** @internal Use quantize(), packQuantized(), importGguf() or fuseGateUp(). */
  constructor(
    format: ResolvedQuantFormat,
    shape: [number, number],
    packed: Tensor,
    stats?: Tensor,
    gateUp = false,
  ) {
    this.format = Object.freeze({ ...format });
    this.shape = Object.freeze([shape[0], shape[1]]) as readonly [number, number];
    this.packed = packed;
    this.statsTensor = stats;
    this.gateUp = gateUp;
  }

  /** @internal The format as the binding takes it. */
  get nativeFormat(): ResolvedQuantFormat & { gateUp: boolean } {
    return { ...this.format, gateUp: this.gateUp };
  }

  get runtime(): Runtime {
    return this.packed.runtime;
  }
  get disposed(): boolean {
    return this.packed.disposed;
  }
  /** Bytes of the packed weights (codes, scales and padding). */
  get bytes(): number {
    return this.packed.bytes;
  }

  /** The values the codes represent, as f32 [N, K]. */
  dequantize(options: OpOptions & { out?: Tensor } = {}): Tensor {
    const w = this.packedArg('dequantize');
    const out = outArg(options.out, w, this.shape, 'f32', 'dequantize');
    return enqueue(out, options.out === undefined, () =>
      binding().dequantize(
        streamOf(w, options).native,
        w.native,
        this.nativeFormat,
        this.shape[0],
        this.shape[1],
        out.native,
      ),
    );
  }

  /** The plain layout (see {@link PlainQuantized}). */
  unpack(options: OpOptions = {}): PlainQuantized {
    const w = this.packedArg('unpack');
    const p = allocPlain(w.runtime, this.format, this.shape);
    try {
      binding().qunpack(
        streamOf(w, options).native,
        w.native,
        this.nativeFormat,
        this.shape[0],
        this.shape[1],
        nativePlain(p),
      );
    } catch (e) {
      disposePlain(p);
      throw e;
    }
    return p;
  }

  /** Error statistics, when this tensor came from quantize(); undefined otherwise. */
  async stats(options: OpOptions = {}): Promise<QuantStats | undefined> {
    if (!this.statsTensor) return undefined;
    const raw = (await this.statsTensor.read(options.stream)) as Uint8Array;
    const d = new Float64Array(raw.buffer, raw.byteOffset, 4);
    return { maxAbsErr: d[0], rmsErr: d[1], maxErrStep: d[2], clamped: d[3] };
  }

  dispose(): void {
    this.packed.dispose();
    this.statsTensor?.dispose();
  }
  [Symbol.dispose](): void {
    this.dispose();
  }
  toString(): string {
    const f = this.format;
    if (isFp8Format(f))
      return `QuantizedTensor(${f.kind} ${f.scaleBlock} scales ${f.act}, [${this.shape.join(', ')}])`;
    const g = f.group === 0 ? 'per-channel' : `g${f.group}`;
    return `QuantizedTensor(${f.kind} ${g}${f.asym ? ' asym' : ''} ${f.scaleDtype} scales, [${this.shape.join(', ')}])`;
  }

  /** @internal */
  packedArg(op: string): Tensor {
    return tensorArg(this.packed, op, 'weights');
  }
}

export function isQuantized(x: unknown): x is QuantizedTensor {
  return x instanceof QuantizedTensor;
}

function allocPlain(
  rt: Runtime,
  f: ResolvedQuantFormat,
  [n, k]: readonly [number, number],
): PlainQuantized {
  if (isFp8Format(f)) {
    const sshape =
      f.scaleBlock === 'tensor'
        ? [1]
        : f.scaleBlock === 'channel'
          ? [n]
          : [Math.ceil(n / 128), Math.ceil(k / 128)];
    return { codes: rt.empty([n, k], f.kind), scales: rt.empty(sshape, 'f32') };
  }
  if (f.kind === 'q4k' || f.kind === 'q6k') {
    const q4 = f.kind === 'q4k';
    const ns = k / (q4 ? 32 : 16);
    return {
      codes: q4 ? rt.empty([n, k / 2], 'u8') : rt.empty([n, k], 'int8'),
      scales: rt.empty([n, ns], q4 ? 'u8' : 'int8'),
      mins: q4 ? rt.empty([n, ns], 'u8') : undefined,
      superD: rt.empty([n, k / 256], 'f16'),
      superDmin: q4 ? rt.empty([n, k / 256], 'f16') : undefined,
    };
  }
  const blocks = f.group === 0 ? 1 : k / f.group;
  const codes = f.kind === 'int4' ? rt.empty([n, k / 2], 'u8') : rt.empty([n, k], 'int8');
  const scales = rt.empty([n, blocks], f.scaleDtype);
  const mins = f.kind === 'int4' && f.asym ? rt.empty([n, blocks], f.scaleDtype) : undefined;
  return { codes, scales, mins };
}
function disposePlain(p: PlainQuantized): void {
  p.codes.dispose();
  p.scales.dispose();
  p.mins?.dispose();
  p.superD?.dispose();
  p.superDmin?.dispose();
}
function nativePlain(p: PlainQuantized): Record<string, unknown> {
  return {
    codes: p.codes.native,
    scales: p.scales.native,
    mins: p.mins?.native,
    superD: p.superD?.native,
    superDmin: p.superDmin?.native,
  };
}

/**
 * Bytes of the packed form of quantized weights [N, K] on a backend. The layouts differ: the CPU
 * packs 16-channel SIMD panels; the device backends (cuda, cuda-emu) keep the layout their kernels
 * read: int4 and q4k in the W4A16 kernel's tensor-core fragment tiles, int8 and fp8 as codes
 * [N, K] followed by the scales at a 256-byte boundary (native/cpu/device.h). So a packed tensor
 * belongs to the backend that packed it: on a device, build it with packQuantized from the plain
 * parts (quantize / importGguf / unpack run on the CPU). Formats a backend cannot run throw
 * E_UNSUPPORTED naming `format` (q6k and fused gate/up on the device backends).
 */
export function packedBytes(
  format: QuantFormat,
  shape: readonly [number, number],
  backend: Backend = 'cpu',
): number {
  return packedBytesOf(
    resolveFormat(format, 'packedBytes'),
    shapeArg(shape, 'packedBytes'),
    backend,
    'packedBytes',
  );
}

function packedBytesOf(
  f: ResolvedQuantFormat & { gateUp?: boolean },
  shape: readonly [number, number],
  backend: Backend,
  op: string,
): number {
  try {
    return binding().packedBytes(f, shape[0], shape[1], backend);
  } catch (e) {
    if (e instanceof KernelError) Object.assign(e, { op, backend });
    throw e;
  }
}

function allocPacked(
  rt: Runtime,
  f: ResolvedQuantFormat,
  shape: [number, number],
  op: string,
): Tensor {
  return rt.empty([packedBytesOf(f, shape, rt.backend, op)], 'u8');
}

/**
 * Quantizes f32 weights [N, K] (round to nearest even, deterministic) and repacks them.
 * `await q.stats()` gives the error statistics.
 */
export function quantize(
  weights: Tensor,
  format: QuantFormat,
  options: OpOptions = {},
): QuantizedTensor {
  const w = tensorArg(weights, 'quantize', 'weights');
  const f = resolveFormat(format, 'quantize');
  if (w.dtype !== 'f32')
    throw new KernelError(
      `Expected f32 for dtype of weights but received ${w.dtype} (cast first)`,
      {
        code: 'E_DTYPE',
        op: 'quantize',
        arg: 'weights',
        backend: w.runtime.backend,
      },
    );
  if (w.shape.length !== 2)
    throw invalidArg('quantize', 'weights', 'a 2-D [N, K] tensor', w.shape, 'E_SHAPE');
  const shape = shapeArg(w.shape, 'quantize');
  const packed = allocPacked(w.runtime, f, shape, 'quantize');
  const stats = w.runtime.empty([32], 'u8');
  try {
    binding().quantize(streamOf(w, options).native, w.native, f, packed.native, stats.native);
  } catch (e) {
    packed.dispose();
    stats.dispose();
    throw e;
  }
  return new QuantizedTensor(f, shape, packed, stats);
}

/** Packs weights given in the plain layout. */
export function packQuantized(
  plain: PlainQuantized,
  format: QuantFormat,
  shape: readonly [number, number],
  options: OpOptions = {},
): QuantizedTensor {
  const f = resolveFormat(format, 'packQuantized');
  const shp = shapeArg(shape, 'packQuantized');
  const codes = tensorArg(plain?.codes, 'packQuantized', 'codes');
  const scales = tensorArg(plain.scales, 'packQuantized', 'scales');
  const mins = optTensorArg(plain.mins, 'packQuantized', 'mins');
  const superD = optTensorArg(plain.superD, 'packQuantized', 'superD');
  const superDmin = optTensorArg(plain.superDmin, 'packQuantized', 'superDmin');
  const packed = allocPacked(codes.runtime, f, shp, 'packQuantized');
  try {
    binding().qpack(
      streamOf(codes, options).native,
      nativePlain({ codes, scales, mins, superD, superDmin }),
      f,
      shp[0],
      shp[1],
      packed.native,
    );
  } catch (e) {
    packed.dispose();
    throw e;
  }
  return new QuantizedTensor(f, shp, packed);
}

/** The native form a GGUF tensor of this ggml type loads into (undefined: unsupported). */
export function ggmlNativeFormat(type: number): ResolvedQuantFormat | FloatDType | undefined {
  return GGML_BLOCK_FORMATS[type] ?? GGML_DENSE[type];
}

/**
 * Imports a GGUF tensor's data (`data`: the raw bytes of N rows of K elements, as stored
 * in the file) losslessly: dense types (F32, F16, BF16) become a tensor of that dtype
 * with the same bits; block types (Q4_0, Q4_1, Q8_0, Q4_K, Q6_K) become a QuantizedTensor whose
 * dequantized values equal ggml's dequantization bit for bit.
 */
export function importGguf(
  rt: Runtime,
  type: number,
  data: Uint8Array | Tensor,
  shape: readonly [number, number],
  options: OpOptions = {},
): Tensor | QuantizedTensor {
  const shp = shapeArg(shape, 'importGguf');
  const dense = GGML_DENSE[type];
  if (dense !== undefined) {
    const bytes = shp[0] * shp[1] * (dense === 'f32' ? 4 : 2);
    // Dense data is copied from a Uint8Array (a mapped tensor can be used as it is).
    if (!(data instanceof Uint8Array))
      throw invalidArg('importGguf', 'data', 'a Uint8Array for a dense type', data);
    const src = data;
    if (src.byteLength !== bytes) throw sizeError(bytes, src.byteLength, rt);
    const copy = new Uint8Array(src); // own, aligned storage
    return rt.tensor(
      dense === 'f32' ? new Float32Array(copy.buffer) : new Uint16Array(copy.buffer),
      shp,
      { dtype: dense },
    );
  }
  const f = GGML_BLOCK_FORMATS[type];
  if (!f)
    throw new KernelError(
      `Unsupported ggml type ${type} for GGUF import (supported: F32, F16, BF16, Q4_0, Q4_1, Q8_0, Q4_K, Q6_K)`,
      { code: 'E_UNSUPPORTED', op: 'importGguf', arg: 'type', backend: rt.backend },
    );
  const blocks =
    data instanceof Uint8Array ? rt.tensor(data, [data.byteLength], { dtype: 'u8' }) : data;
  const owned = data instanceof Uint8Array;
  const b = tensorArg(blocks, 'importGguf', 'data');
  const packed = allocPacked(rt, f, shp, 'importGguf');
  try {
    binding().ggufImport(
      streamOf(packed, options).native,
      type,
      b.native,
      shp[0],
      shp[1],
      packed.native,
    );
  } catch (e) {
    packed.dispose();
    throw e;
  } finally {
    // the queued import holds its own reference to the blocks
    if (owned) blocks.dispose();
  }
  return new QuantizedTensor(f, shp, packed);

  function sizeError(want: number, got: number, r: Runtime): KernelError {
    return new KernelError(
      `Expected ${want} bytes for data (ggml type ${type}, [${shp.join(', ')}]) but received ${got}`,
      { code: 'E_SHAPE', op: 'importGguf', arg: 'data', backend: r.backend },
    );
  }
}

export interface QMatmulOptions extends OpOptions {
  /** f32 bias [N]. */
  bias?: Tensor;
  /** Added after the bias; same shape and dtype as the output. May be `out` itself. */
  residual?: Tensor;
  out?: Tensor;
  /** Output dtype when `out` is not given. Default: the dtype of a. */
  outDtype?: FloatDType;
}

/**
 * out[..., N] = a[..., K] · Wᵀ (+ bias) (+ residual) with quantized weights.
 * Integer formats: activations (f32, f16 or bf16) are quantized per row and per group to
 * int8 inside the kernel; the integer dot products are exact (int32), scales are applied
 * in f32. fp8: W8A16 multiplies the activations as they are with the fp8 values in f32;
 * W8A8 first quantizes each row of activations to e4m3 (per-row scale).
 */
export function qmatmul(a: Tensor, w: QuantizedTensor, options: QMatmulOptions = {}): Tensor {
  a = tensorArg(a, 'qmatmul', 'a');
  if (!isQuantized(w)) throw invalidArg('qmatmul', 'weights', 'a QuantizedTensor', w);
  const packed = w.packedArg('qmatmul');
  const bias = optTensorArg(options.bias, 'qmatmul', 'bias');
  const residual = optTensorArg(options.residual, 'qmatmul', 'residual');
  // fused gate/up: bias is [2N] (gate then up); the output is [..., N] = silu(g) ⊙ u
  const shape = [...a.shape.slice(0, -1), w.shape[0]];
  const dtype: DType = options.outDtype ?? (a.dtype as FloatDType);
  const out = outArg(options.out, a, shape, dtype, 'qmatmul');
  return enqueue(out, options.out === undefined, () =>
    binding().qmatmul(
      streamOf(a, options).native,
      a.native,
      packed.native,
      w.nativeFormat,
      w.shape[0],
      w.shape[1],
      bias?.native ?? null,
      residual?.native ?? null,
      out.native,
    ),
  );
}

/**
 * Fuses the gate and up projections of a SwiGLU MLP (two quantized [F, K] tensors of the
 * same format) into one tensor whose matmul computes silu(a·gateᵀ) ⊙ (a·upᵀ) in one pass
 * over the weights, with the activation applied to the f32 accumulators. Integer formats.
 */
export function fuseGateUp(
  gate: QuantizedTensor,
  up: QuantizedTensor,
  options: OpOptions = {},
): QuantizedTensor {
  if (!isQuantized(gate) || gate.gateUp)
    throw invalidArg('fuseGateUp', 'gate', 'an unfused QuantizedTensor', gate);
  if (!isQuantized(up) || up.gateUp)
    throw invalidArg('fuseGateUp', 'up', 'an unfused QuantizedTensor', up);
  const g = gate.packedArg('fuseGateUp');
  const u = up.packedArg('fuseGateUp');
  if (
    JSON.stringify(gate.format) !== JSON.stringify(up.format) ||
    gate.shape.join() !== up.shape.join()
  )
    throw new KernelError(
      `Expected up to have the format and shape of gate (${gate}) but received ${up}`,
      { code: 'E_SHAPE', op: 'fuseGateUp', arg: 'up', backend: g.runtime.backend },
    );
  const shape: [number, number] = [gate.shape[0], gate.shape[1]];
  const fused = { ...gate.format, gateUp: true };
  const bytes = packedBytesOf(fused, shape, g.runtime.backend, 'fuseGateUp');
  const out = g.runtime.empty([bytes], 'u8');
  try {
    binding().fuseGateUp(
      streamOf(g, options).native,
      g.native,
      u.native,
      gate.format,
      shape[0],
      shape[1],
      out.native,
    );
  } catch (e) {
    out.dispose();
    throw e;
  }
  return new QuantizedTensor(gate.format, shape, out, undefined, true);
}

export interface QMatmulGroupedOptions extends OpOptions {
  /** f32 [E, N] (or [E, 2N] for fused gate/up experts: gate bias then up bias). */
  bias?: Tensor;
  out?: Tensor;
  /** Output dtype when `out` is not given. Default: the dtype of a. */
  outDtype?: FloatDType;
}

/**
 * Grouped matmul for mixture-of-experts: one call runs every expert over its own rows.
 * `rows` (i32 [R]) lists source rows of `a` ([T, K]) sorted by expert, `offsets` (i32
 * [E+1]) bounds each expert's segment (see {@link expertPermutation}); out[i] (row i of
 * [R, N]) = a[rows[i]] · W_eᵀ for the expert e whose segment holds i, or
 * silu(gate) ⊙ up for fused gate/up experts. Each source row is quantized once.
 */
export function qmatmulGrouped(
  a: Tensor,
  experts: readonly QuantizedTensor[],
  rows: Tensor,
  offsets: Tensor,
  options: QMatmulGroupedOptions = {},
): Tensor {
  a = tensorArg(a, 'qmatmulGrouped', 'a');
  if (!Array.isArray(experts) || experts.length === 0 || !experts.every(isQuantized))
    throw invalidArg('qmatmulGrouped', 'experts', 'a non-empty array of QuantizedTensor', experts);
  const e0 = experts[0];
  for (let i = 1; i < experts.length; i++) {
    const e = experts[i];
    if (
      JSON.stringify(e.format) !== JSON.stringify(e0.format) ||
      e.shape.join() !== e0.shape.join() ||
      e.gateUp !== e0.gateUp
    )
      throw new KernelError(
        `Expected every expert to match experts[0] (${e0}) but experts[${i}] is ${e}`,
        {
          code: 'E_SHAPE',
          op: 'qmatmulGrouped',
          arg: `experts[${i}]`,
          backend: a.runtime.backend,
        },
      );
  }
  const packed = experts.map((e, i) => tensorArg(e.packed, 'qmatmulGrouped', `experts[${i}]`));
  rows = tensorArg(rows, 'qmatmulGrouped', 'rows');
  offsets = tensorArg(offsets, 'qmatmulGrouped', 'offsets');
  const bias = optTensorArg(options.bias, 'qmatmulGrouped', 'bias');
  const n = e0.shape[0];
  const out = outArg(
    options.out,
    a,
    [rows.shape[0] ?? 0, n],
    options.outDtype ?? (a.dtype as FloatDType),
    'qmatmulGrouped',
  );
  return enqueue(out, options.out === undefined, () =>
    binding().qmatmulGrouped(
      streamOf(a, options).native,
      a.native,
      packed.map((p) => p.native),
      e0.nativeFormat,
      n,
      e0.shape[1],
      rows.native,
      offsets.native,
      bias?.native ?? null,
      out.native,
    ),
  );
}

/**
 * The expert-sorted permutation a grouped matmul takes, from top-k routing decisions:
 * `experts` holds k expert ids per token ([T*k], token-major). Returns `rows` (the source
 * token of each assignment, grouped by expert, tokens ascending within an expert),
 * `offsets` ([E+1]) and `slot` (for assignment j of token t, i.e. index t*k+j, the row of
 * the grouped output that holds it). A stable counting sort: O(T*k + E).
 *
 * An expert id of -1 is a dropped assignment (capacity limits, see withCapacity): it gets
 * no row, so rows.length = offsets[E] = the number of kept assignments, and its slot is 0,
 * which moeCombine accepts (it checks slots against the rows of y) and which its weight
 * of 0 makes harmless. When every assignment is dropped (rows.length 0) there is nothing
 * to compute: skip the grouped matmuls and the combine.
 */
export function expertPermutation(
  experts: Int32Array,
  k: number,
  numExperts: number,
): { rows: Int32Array; offsets: Int32Array; slot: Int32Array } {
  if (!Number.isSafeInteger(k) || k < 1 || experts.length % k !== 0)
    throw invalidArg(
      'expertPermutation',
      'k',
      `a positive divisor of experts.length (${experts.length})`,
      k,
    );
  if (!Number.isSafeInteger(numExperts) || numExperts < 1)
    throw invalidArg('expertPermutation', 'numExperts', 'a positive integer', numExperts);
  const offsets = new Int32Array(numExperts + 1);
  let kept = 0;
  for (let i = 0; i < experts.length; i++) {
    const e = experts[i];
    if (e === -1) continue;
    if (!(e >= 0 && e < numExperts))
      throw invalidArg(
        'expertPermutation',
        'experts',
        `expert ids in [0, ${numExperts}) or -1 (dropped)`,
        e,
      );
    offsets[e + 1]++;
    kept++;
  }
  for (let e = 0; e < numExperts; e++) offsets[e + 1] += offsets[e];
  const next = offsets.slice(0, numExperts);
  const rows = new Int32Array(kept);
  const slot = new Int32Array(experts.length); // dropped assignments keep slot 0
  for (let t = 0, i = 0; i < experts.length; t++)
    for (let j = 0; j < k; j++, i++) {
      const e = experts[i];
      if (e < 0) continue;
      const p = next[e]++;
      rows[p] = t;
      slot[i] = p;
    }
  return { rows, offsets, slot };
}
