/**
 * Memory-mapped files: a file mapped read-only (PROT_READ, MAP_PRIVATE) by the native addon
 * and exposed as an external ArrayBuffer. Model weights are read through views of it, so they
 * are paged in on demand from the page cache and never copied into the JS heap.
 *
 * Use `view(offset, length)` for tensor data: it works for files of any size. `buffer` (the
 * whole file as one ArrayBuffer) exists only while the file fits in one external ArrayBuffer,
 * which on Node 20 is buffer.constants.MAX_LENGTH = 4 GiB (N-API builds external ArrayBuffers
 * through Buffer). For a larger file `buffer` throws E_UNSUPPORTED and each view() maps just
 * the pages of its range.
 *
 * Lifetime: every mapping belongs to its ArrayBuffer; the addon's finalizer munmaps it when
 * the ArrayBuffer is garbage collected. close() drops this object's references (later use
 * throws E_DISPOSED), but views or zero-copy tensors made earlier keep their pages mapped
 * until they are collected too. That is deliberate: unmapping eagerly would leave a native
 * tensor pointing at unmapped memory (a crash, not an error). The pages are clean and
 * file-backed, so a lingering mapping costs address space, not memory the kernel cannot
 * reclaim.
 */
import { constants as bufferConstants } from 'node:buffer';
import { KernelError } from './errors';
import { binding } from './runtime';

export interface MappedFile {
  /** The whole file. Throws E_UNSUPPORTED for files over maxMappedBuffer() bytes: use view(). */
  readonly buffer: ArrayBuffer;
  readonly byteLength: number;
  /** Bytes [offset, offset + length) of the file, zero-copy (any file size). */
  view(offset: number, length: number): Uint8Array;
  close(): void;
}

interface NativeMapping {
  buffer?: ArrayBuffer;
  delta: number;
  fileSize: number;
}

/** The largest mapping one external ArrayBuffer can hold in this Node. */
export function maxMappedBuffer(): number {
  return Math.min(bufferConstants.MAX_LENGTH, Number.MAX_SAFE_INTEGER);
}

let testLimit: number | undefined;
/** @internal Tests: pretend external ArrayBuffers are capped at `bytes` (undefined: reset). */
export function _setMappedBufferLimitForTests(bytes: number | undefined): void {
  testLimit = bytes;
}

function nativeMap(path: string, offset?: number, length?: number): NativeMapping {
  const fn = binding().mapFile;
  if (typeof fn !== 'function')
    throw new KernelError(
      'The loaded native addon predates mapFile; rebuild it: npm run build:native',
      { code: 'E_BACKEND', op: 'mapFile', backend: 'cpu' },
    );
  return fn(path, offset, length, testLimit ?? maxMappedBuffer()) as NativeMapping;
}

class Mapped implements MappedFile {
  private buf: ArrayBuffer | undefined;
  private open = true;
  constructor(
    private readonly path: string,
    readonly byteLength: number,
    buf: ArrayBuffer | undefined,
  ) {
    this.buf = buf;
  }

  private disposed(arg: string): KernelError {
    return new KernelError(`The mapping of ${this.path} has been closed`, {
      code: 'E_DISPOSED',
      op: 'mapFile',
      arg,
      backend: 'js',
    });
  }

  get buffer(): ArrayBuffer {
    if (!this.open) throw this.disposed('buffer');
    if (!this.buf)
      throw new KernelError(
        `${this.path} is ${this.byteLength} bytes, more than one ArrayBuffer can map in this Node (${maxMappedBuffer()}); use view(offset, length)`,
        { code: 'E_UNSUPPORTED', op: 'mapFile', arg: 'buffer', backend: 'js' },
      );
    return this.buf;
  }

  get closed(): boolean {
    return !this.open;
  }

  view(offset: number, length: number): Uint8Array {
    if (!this.open) throw this.disposed('view');
    for (const [name, v] of [
      ['offset', offset],
      ['length', length],
    ] as const)
      if (!Number.isSafeInteger(v) || v < 0)
        throw new KernelError(`Expected a non-negative integer for ${name} but received ${v}`, {
          code: 'E_INVALID_ARG',
          op: 'mapFile',
          arg: name,
          backend: 'js',
        });
    if (offset + length > this.byteLength)
      throw new KernelError(
        `Expected a range within the ${this.byteLength} bytes of ${this.path} but received offset ${offset}, length ${length}`,
        { code: 'E_INVALID_ARG', op: 'mapFile', arg: 'offset', backend: 'js' },
      );
    if (this.buf) return new Uint8Array(this.buf, offset, length);
    if (length === 0) return new Uint8Array(0);
    const m = nativeMap(this.path, offset, length);
    if (m.fileSize !== this.byteLength)
      throw new KernelError(
        `${this.path} changed size while mapped (${this.byteLength} -> ${m.fileSize} bytes)`,
        { code: 'E_IO', op: 'mapFile', arg: 'path', backend: 'js' },
      );
    if (!m.buffer)
      throw new KernelError(
        `A range of ${length} bytes is more than one ArrayBuffer can map in this Node (${maxMappedBuffer()})`,
        { code: 'E_UNSUPPORTED', op: 'mapFile', arg: 'length', backend: 'js' },
      );
    return new Uint8Array(m.buffer, m.delta, length);
  }

  close(): void {
    this.open = false;
    this.buf = undefined;
  }
}

/**
 * Maps `path` read-only. Throws E_IO (arg 'path') when it cannot be opened, is a directory or
 * other non-regular file, or is empty; E_INVALID_ARG when `path` is not a non-empty string.
 */
export function mapFile(path: string): MappedFile {
  if (typeof path !== 'string' || path === '')
    throw new KernelError(`Expected a file path for path but received ${String(path)}`, {
      code: 'E_INVALID_ARG',
      op: 'mapFile',
      arg: 'path',
      backend: 'js',
    });
  const m = nativeMap(path);
  return new Mapped(path, m.fileSize, m.buffer);
}
