import { decode, DType, storageView, StorageArray, FloatDType } from './dtype';
import { KernelError } from './errors';
import type { Runtime, Stream } from './runtime';

/* eslint-disable @typescript-eslint/no-explicit-any */

const disposeSym: symbol = (Symbol as any).dispose ?? Symbol.for('nodejs.dispose');

/**
 * A dense row-major tensor owned by a runtime. Data lives in native memory (or, with
 * zeroCopy, in the caller's ArrayBuffer). Reading is asynchronous and ordered on a stream.
 */
export class Tensor {
  /** @internal */ readonly native: any;
  readonly runtime: Runtime;
  readonly dtype: DType;
  readonly shape: readonly number[];
  private _disposed = false;

  /** @internal use runtime.tensor() / runtime.empty() */
  constructor(runtime: Runtime, native: any, dtype: DType, shape: readonly number[]) {
    this.runtime = runtime;
    this.native = native;
    this.dtype = dtype;
    this.shape = Object.freeze([...shape]);
  }

  get numel(): number {
    return this.shape.reduce((a, b) => a * b, 1);
  }
  get bytes(): number {
    return this.native.bytes();
  }
  get disposed(): boolean {
    return this._disposed;
  }
  /** True when the tensor aliases the TypedArray it was created from (zeroCopy). */
  get isZeroCopy(): boolean {
    return this.native.isExternal();
  }

  /** Resolves with a copy of the storage once every op queued before it on `stream` is done. */
  async read(stream?: Stream): Promise<StorageArray> {
    const s = stream ?? this.runtime.defaultStream;
    const ab: ArrayBuffer = await this.native.read(s.native);
    return storageView(this.dtype, ab);
  }

  /** Reads and decodes a float tensor (f32/f16/bf16) into a Float32Array. */
  async toFloat32(stream?: Stream): Promise<Float32Array> {
    const raw = await this.read(stream);
    if (this.dtype === 'f32') return raw as Float32Array;
    if (this.dtype !== 'f16' && this.dtype !== 'bf16')
      throw new KernelError(
        `Expected a float tensor (f32, f16 or bf16) for toFloat32 but received ${this.dtype}`,
        {
          code: 'E_DTYPE',
          op: 'toFloat32',
          arg: 'tensor',
        },
      );
    return Float32Array.from(decode(this.dtype as FloatDType, raw));
  }

  /** Overwrites the contents, in stream order. The data is snapshotted at call time. */
  write(data: ArrayBufferView, stream?: Stream): void {
    const s = stream ?? this.runtime.defaultStream;
    this.native.write(s.native, data);
  }

  /**
   * A view with another shape (and optionally dtype) over the same storage, which must hold
   * exactly the same number of bytes. Both tensors keep the storage alive; dispose each.
   */
  view(shape: readonly number[], dtype: DType = this.dtype): Tensor {
    if (this._disposed)
      throw new KernelError('Tensor has been disposed', {
        code: 'E_DISPOSED',
        op: 'view',
        arg: 'tensor',
        backend: this.runtime.backend,
      });
    return this.runtime.viewOf(this, shape, dtype);
  }

  /** Frees the tensor's memory once queued ops that use it are done. Idempotent. */
  dispose(): void {
    if (this._disposed) return;
    this._disposed = true;
    this.native.dispose();
  }
  [disposeSym](): void {
    this.dispose();
  }

  toString(): string {
    return `Tensor(${this.dtype}, [${this.shape.join(', ')}]${this._disposed ? ', disposed' : ''})`;
  }
}

export function isTensor(x: unknown): x is Tensor {
  return x instanceof Tensor;
}
