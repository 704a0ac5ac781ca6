/**
 * Turning GGUF tensors (memory-mapped) into runtime weights, in one pass over the bytes:
 * - block types (Q4_0, Q4_1, Q8_0, Q4_K, Q6_K) import losslessly into QuantizedTensors;
 * - F32 / F16 / BF16 stay dense (F32 and 16-bit data alias the mapping: no copy) or, with
 *   `weights: 'int4' | 'int8' | 'fp8'`, are requantized at load;
 * - the token embedding stays in the mapping and rows are dequantized on demand.
 */
import { KernelError } from '../runtime/errors';
import { bf16ToF32, f16ToF32 } from '../runtime/dtype';
import { MappedFile } from '../runtime/mmap';
import { Runtime } from '../runtime/runtime';
import { Tensor } from '../runtime/tensor';
import { GgmlType, importGguf, quantize, QuantFormat, QuantizedTensor } from '../ops/quant';
import { ggmlDequantize, ggmlDequantizeK } from '../ops/quant-reference';
import { GgufFile, GgufTensorInfo, ggmlTypeInfo, ggmlTypeName } from './gguf';

export type WeightMode = 'native' | 'int4' | 'int8' | 'fp8';
/** A [N, K] weight: dense (f32/f16/bf16, row-major) or quantized. */
export type Matrix = Tensor | QuantizedTensor;

/** The formats `weights` requantizes dense tensors to. */
export const REQUANT_FORMATS: Record<Exclude<WeightMode, 'native'>, QuantFormat> = {
  int4: { kind: 'int4', group: 32, asym: false, scaleDtype: 'f16' },
  int8: { kind: 'int8', group: 0 },
  fp8: { kind: 'fp8e4m3', scaleBlock: 'channel', act: 'w8a16' },
};

export class WeightLoader {
  private readonly views = new Map<string, Uint8Array>();
  constructor(
    readonly rt: Runtime,
    readonly file: GgufFile,
    readonly map: MappedFile,
    readonly mode: WeightMode,
  ) {}

  private fail(name: string, message: string): KernelError {
    return new KernelError(`${this.file.path}: tensor ${name}: ${message}`, {
      code: 'E_MODEL_FORMAT',
      op: 'loadModel',
      arg: name,
    });
  }

  has(name: string): boolean {
    return this.file.tensorMap.has(name);
  }

  /** The tensor's info, checked against the expected GGUF dims (ne order: innermost first). */
  info(name: string, dims: readonly number[]): GgufTensorInfo {
    const t = this.file.tensorMap.get(name);
    if (!t) throw this.fail(name, 'missing');
    const d = [...t.dims];
    while (d.length > dims.length && d[d.length - 1] === 1) d.pop();
    if (d.length !== dims.length || d.some((x, i) => x !== dims[i]))
      throw this.fail(
        name,
        `expected dims [${dims.join(', ')}] but the file has [${t.dims.join(', ')}]`,
      );
    if (t.offset + t.bytes > this.map.byteLength)
      throw this.fail(name, 'data extends past the end of the file');
    return t;
  }

  bytes(t: GgufTensorInfo, offset = 0, length = t.bytes - offset): Uint8Array {
    // One view per tensor, cached: for files over 4 GiB every view is its own mapping, and
    // embedding rows are looked up per step.
    let whole = this.views.get(t.name);
    if (!whole) this.views.set(t.name, (whole = this.map.view(t.offset, t.bytes)));
    return whole.subarray(offset, offset + length);
  }

  /** f32 values of `rows` rows of `cols` starting at row `row0` (any supported type). */
  dequantRows(t: GgufTensorInfo, row0: number, rows: number, cols: number): Float32Array {
    const rb = rowBytes(t.type, cols, t.name);
    const src = this.bytes(t, row0 * rb, rows * rb);
    return dequantize(t.type, src, rows, cols, t.name);
  }

  /** A 1-D f32 vector (norm weights). */
  vector(name: string, n: number): Tensor {
    const t = this.info(name, [n]);
    return this.rt.tensor(this.dequantRows(t, 0, 1, n), [n]);
  }

  /**
   * Weight [N, K] (GGUF dims [K, N]), or expert `expert` of a stacked [K, N, E] tensor.
   * `requant`: convert dense data per the load mode (when K fits the format's groups).
   */
  matrix(
    name: string,
    n: number,
    k: number,
    opts: { expert?: number; experts?: number; requant?: boolean } = {},
  ): Matrix {
    const t = this.info(name, opts.experts ? [k, n, opts.experts] : [k, n]);
    const rb = rowBytes(t.type, k, name);
    const off = (opts.expert ?? 0) * n * rb;
    const data = this.bytes(t, off, n * rb);
    const dense = t.type === GgmlType.F32 || t.type === GgmlType.F16 || t.type === GgmlType.BF16;
    if (!dense) {
      const view = this.rt.tensor(data, [data.byteLength], { dtype: 'u8', zeroCopy: true });
      try {
        return importGguf(this.rt, t.type, view, [n, k]);
      } finally {
        view.dispose(); // the queued import holds its own reference
      }
    }
    const dt = t.type === GgmlType.F32 ? 'f32' : t.type === GgmlType.F16 ? 'f16' : 'bf16';
    const w = this.denseView(data, dt, [n, k]);
    const target = opts.requant && this.mode !== 'native' ? REQUANT_FORMATS[this.mode] : undefined;
    if (!target || !fitsGroups(target, k)) return w;
    try {
      return quantize(w, target); // any float dtype
    } finally {
      w.dispose();
    }
  }

  /** A dense tensor over mapped bytes (no copy when aligned). */
  private denseView(data: Uint8Array, dt: 'f32' | 'f16' | 'bf16', shape: number[]): Tensor {
    const el = dt === 'f32' ? 4 : 2;
    const aligned = data.byteOffset % el === 0 ? data : data.slice();
    const arr =
      dt === 'f32'
        ? new Float32Array(aligned.buffer, aligned.byteOffset, aligned.byteLength / 4)
        : new Uint16Array(aligned.buffer, aligned.byteOffset, aligned.byteLength / 2);
    return this.rt.tensor(arr, shape, { dtype: dt, zeroCopy: true });
  }
}

function fitsGroups(f: QuantFormat, k: number): boolean {
  if (f.kind === 'int4' || f.kind === 'int8') {
    const g = (f as { group?: number }).group ?? 32;
    return g === 0 ? k % 4 === 0 : k % g === 0;
  }
  return k % 16 === 0;
}

export function rowBytes(type: number, cols: number, name: string): number {
  const info = ggmlTypeInfo(type);
  if (!info || cols % info.blockSize !== 0)
    throw new KernelError(
      `tensor ${name}: ${cols} columns do not fit ${ggmlTypeName(type)} blocks`,
      {
        code: 'E_MODEL_FORMAT',
        op: 'loadModel',
        arg: name,
      },
    );
  return (cols / info.blockSize) * info.typeSize;
}

/** f32 values of rows × cols elements of ggml `type` (the importable types). */
export function dequantize(
  type: number,
  src: Uint8Array,
  rows: number,
  cols: number,
  name: string,
): Float32Array {
  const n = rows * cols;
  switch (type) {
    case GgmlType.F32: {
      if (src.byteOffset % 4 === 0) return new Float32Array(src.buffer, src.byteOffset, n).slice();
      return new Float32Array(src.slice().buffer);
    }
    case GgmlType.F16:
    case GgmlType.BF16: {
      const h =
        src.byteOffset % 2 === 0
          ? new Uint16Array(src.buffer, src.byteOffset, n)
          : new Uint16Array(src.slice().buffer);
      const out = new Float32Array(n);
      const cvt = type === GgmlType.F16 ? f16ToF32 : bf16ToF32;
      for (let i = 0; i < n; i++) out[i] = cvt(h[i]);
      return out;
    }
    case GgmlType.Q4_0:
    case GgmlType.Q4_1:
    case GgmlType.Q8_0:
      return ggmlDequantize(type, src, rows, cols);
    case GgmlType.Q4_K:
    case GgmlType.Q6_K:
      return ggmlDequantizeK(type as 12 | 14, src, rows, cols);
    default:
      throw new KernelError(
        `tensor ${name}: ggml type ${ggmlTypeName(type)} is not supported (F32, F16, BF16, Q4_0, Q4_1, Q8_0, Q4_K, Q6_K)`,
        { code: 'E_UNSUPPORTED', op: 'loadModel', arg: name },
      );
  }
}
