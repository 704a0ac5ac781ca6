/**
 * GGUF writer (v3 by default, or v2): deterministic bytes for a given spec. Tensor data is
 * pulled lazily, one tensor at a time, and streamed to disk, so a large model never has to
 * sit in memory at once. The file is written next to the target under a temporary name and
 * renamed into place when complete (a failed write leaves no partial file behind).
 *
 * Layout written (what llama.cpp's gguf writer produces): header, metadata in the order
 * given, tensor infos in the order given, zero padding to the alignment, then each tensor's
 * data followed by zero padding to the alignment. Offsets are assigned in order.
 */
import * as fs from 'node:fs';
import * as nodePath from 'node:path';
import { KernelError } from '../runtime/errors';
import { ggmlRowBytes } from './ggml-quants';
import {
  GgufArray,
  GgufValue,
  GgufValueType,
  ggmlTypeInfo,
  ggmlTypeName,
  ggufValueTypeName,
} from './gguf';

export type GgufMetaEntry = {
  key: string;
  /** GgufValueType */
  type: number;
  value: GgufValue;
  /** Element type when type is ARRAY (inferred from a typed array when omitted). */
  arrayType?: number;
};

export interface GgufTensorSpec {
  name: string;
  /** ggml type id */
  type: number;
  /** ne order: dims[0] is the contiguous dimension */
  dims: number[];
  /** Encoded bytes, or a function producing them when the tensor is written (streaming). */
  data: Uint8Array | (() => Uint8Array);
}

export interface GgufWriteSpec {
  version?: 2 | 3;
  alignment?: number;
  metadata: GgufMetaEntry[];
  tensors: GgufTensorSpec[];
}

const OP = 'writeGguf';
/** llama.cpp keeps tensor names in char[64] (GGML_MAX_NAME), NUL included. */
const MAX_TENSOR_NAME_BYTES = 63;
const T = GgufValueType;

function bad(arg: string, msg: string): KernelError {
  return new KernelError(msg, { code: 'E_INVALID_ARG', op: OP, arg, backend: 'js' });
}

const encoder = new TextEncoder();

/** A growable little-endian byte buffer. */
class ByteWriter {
  buf = new Uint8Array(1 << 16);
  dv = new DataView(this.buf.buffer);
  len = 0;
  private ensure(n: number): void {
    if (this.len + n <= this.buf.length) return;
    let cap = this.buf.length * 2;
    while (cap < this.len + n) cap *= 2;
    const next = new Uint8Array(cap);
    next.set(this.buf.subarray(0, this.len));
    this.buf = next;
    this.dv = new DataView(next.buffer);
  }
  u8(v: number): void {
    this.ensure(1);
    this.buf[this.len++] = v;
  }
  u32(v: number): void {
    this.ensure(4);
    this.dv.setUint32(this.len, v, true);
    this.len += 4;
  }
  u64(v: number | bigint): void {
    this.ensure(8);
    this.dv.setBigUint64(this.len, BigInt(v), true);
    this.len += 8;
  }
  bytes(b: Uint8Array): void {
    this.ensure(b.length);
    this.buf.set(b, this.len);
    this.len += b.length;
  }
  string(s: string): void {
    // encodeInto writes straight into the buffer (no temporary array per string).
    this.ensure(8 + s.length * 3);
    const { written } = encoder.encodeInto(s, this.buf.subarray(this.len + 8));
    this.dv.setBigUint64(this.len, BigInt(written), true);
    this.len += 8 + written;
  }
  /** One scalar of a numeric / bool type, already validated. */
  scalar(type: number, v: number | bigint | boolean): void {
    this.ensure(8);
    const p = this.len;
    const dv = this.dv;
    switch (type) {
      case T.UINT8:
        dv.setUint8(p, v as number);
        this.len += 1;
        break;
      case T.INT8:
        dv.setInt8(p, v as number);
        this.len += 1;
        break;
      case T.BOOL:
        dv.setUint8(p, v ? 1 : 0);
        this.len += 1;
        break;
      case T.UINT16:
        dv.setUint16(p, v as number, true);
        this.len += 2;
        break;
      case T.INT16:
        dv.setInt16(p, v as number, true);
        this.len += 2;
        break;
      case T.UINT32:
        dv.setUint32(p, v as number, true);
        this.len += 4;
        break;
      case T.INT32:
        dv.setInt32(p, v as number, true);
        this.len += 4;
        break;
      case T.FLOAT32:
        dv.setFloat32(p, v as number, true);
        this.len += 4;
        break;
      case T.FLOAT64:
        dv.setFloat64(p, v as number, true);
        this.len += 8;
        break;
      case T.UINT64:
        dv.setBigUint64(p, BigInt(v as number | bigint), true);
        this.len += 8;
        break;
      case T.INT64:
        dv.setBigInt64(p, BigInt(v as number | bigint), true);
        this.len += 8;
        break;
    }
  }
  result(): Uint8Array {
    return this.buf.subarray(0, this.len);
  }
}

const INT_RANGES: Record<number, [number, number]> = {
  [T.UINT8]: [0, 255],
  [T.INT8]: [-128, 127],
  [T.UINT16]: [0, 65535],
  [T.INT16]: [-32768, 32767],
  [T.UINT32]: [0, 4294967295],
  [T.INT32]: [-2147483648, 2147483647],
};
const U64_MAX = (1n << 64n) - 1n;
const I64_MIN = -(1n << 63n);
const I64_MAX = (1n << 63n) - 1n;

/** Validates one value; `where` (with `[index]` when index >= 0) names it in errors. */
function checkScalar(type: number, v: unknown, where: string, arg: string, index = -1): void {
  // A nested function, not an arrow in a const: nothing is allocated on the happy path.
  function fail(expected: string): never {
    const got = typeof v === 'string' ? `'${v}'` : typeof v === 'object' ? 'an object' : String(v);
    const name = index >= 0 ? `${where}[${index}]` : where;
    throw bad(arg, `Expected ${expected} for ${name} but received ${got}`);
  }
  const range = INT_RANGES[type];
  if (range) {
    if (typeof v !== 'number' || !Number.isInteger(v) || v < range[0] || v > range[1])
      fail(`an integer in [${range[0]}, ${range[1]}] (${ggufValueTypeName(type)})`);
    return;
  }
  switch (type) {
    case T.FLOAT32:
    case T.FLOAT64:
      if (typeof v !== 'number') fail(`a number (${ggufValueTypeName(type)})`);
      return;
    case T.BOOL:
      if (typeof v !== 'boolean') fail('a boolean');
      return;
    case T.STRING:
      if (typeof v !== 'string') fail('a string');
      // A lone surrogate has no UTF-8 encoding (TextEncoder would silently write U+FFFD).
      if (!(v as unknown as { isWellFormed(): boolean }).isWellFormed())
        fail('a well-formed string (it has a lone surrogate)');
      return;
    case T.UINT64:
    case T.INT64: {
      const lo = type === T.UINT64 ? 0n : I64_MIN;
      const hi = type === T.UINT64 ? U64_MAX : I64_MAX;
      const ok =
        typeof v === 'bigint'
          ? v >= lo && v <= hi
          : typeof v === 'number' && Number.isSafeInteger(v) && BigInt(v) >= lo;
      if (!ok) fail(`a bigint or safe integer in range (${ggufValueTypeName(type)})`);
      return;
    }
    default:
      throw bad(arg, `Expected a GGUF value type (0..12) for ${where} but received ${type}`);
  }
}

/** The GgufValueType a typed array holds, or undefined for plain arrays. */
function typedArrayType(v: unknown): number | undefined {
  if (v instanceof Uint8Array) return T.UINT8;
  if (v instanceof Int8Array) return T.INT8;
  if (v instanceof Uint16Array) return T.UINT16;
  if (v instanceof Int16Array) return T.INT16;
  if (v instanceof Uint32Array) return T.UINT32;
  if (v instanceof Int32Array) return T.INT32;
  if (v instanceof Float32Array) return T.FLOAT32;
  if (v instanceof Float64Array) return T.FLOAT64;
  if (v instanceof BigUint64Array) return T.UINT64;
  if (v instanceof BigInt64Array) return T.INT64;
  return undefined;
}

function isArrayValue(v: unknown): v is GgufArray {
  return Array.isArray(v) || (ArrayBuffer.isView(v) && typedArrayType(v) !== undefined);
}

/** Element type of a nested array (no declared type): from its class or first element. */
function inferElementType(v: GgufArray): number {
  const t = typedArrayType(v);
  if (t !== undefined) return t;
  const a = v as unknown[];
  if (a.length === 0) return T.STRING; // undecidable; an empty array reads back the same
  const first = a[0];
  if (typeof first === 'string') return T.STRING;
  if (typeof first === 'boolean') return T.BOOL;
  if (isArrayValue(first)) return T.ARRAY;
  return -1;
}

function writeArray(
  w: ByteWriter,
  v: unknown,
  elementType: number | undefined,
  where: string,
  arg: string,
  depth: number,
): void {
  if (!isArrayValue(v)) throw bad(arg, `Expected an array for ${where}`);
  if (depth > 16) throw bad(arg, `Arrays of ${where} are nested deeper than 16 levels`);
  const ta = typedArrayType(v);
  const et = elementType ?? inferElementType(v);
  if (!(et >= 0 && et <= 12))
    throw bad(
      arg,
      `Expected an array element type for ${where} (give arrayType, or use a typed array) but received ${elementType}`,
    );
  if (ta !== undefined && ta !== et)
    throw bad(
      arg,
      `Expected ${ggufValueTypeName(et)} elements for ${where} but received a ${v.constructor.name}`,
    );
  w.u32(et);
  w.u64(v.length);
  if (ta !== undefined) {
    // Typed arrays of the declared type: raw little-endian bytes.
    const view = v as unknown as ArrayBufferView;
    w.bytes(new Uint8Array(view.buffer, view.byteOffset, view.byteLength));
    return;
  }
  const a = v as unknown[];
  for (let i = 0; i < a.length; i++) {
    const x = a[i];
    if (et === T.ARRAY) writeArray(w, x, undefined, `${where}[${i}]`, arg, depth + 1);
    else if (et === T.STRING) {
      checkScalar(T.STRING, x, where, arg, i);
      w.string(x as string);
    } else {
      checkScalar(et, x, where, arg, i);
      w.scalar(et, x as number | bigint | boolean);
    }
  }
}

interface PlannedTensor {
  spec: GgufTensorSpec;
  bytes: number;
  offset: number; // relative to the data section
}

function planTensors(tensors: GgufTensorSpec[], alignment: number): PlannedTensor[] {
  if (!Array.isArray(tensors)) throw bad('tensors', 'Expected an array for tensors');
  const names = new Set<string>();
  const out: PlannedTensor[] = [];
  let offset = 0;
  tensors.forEach((t, i) => {
    const name = t?.name;
    if (typeof name !== 'string' || name === '')
      throw bad(`tensors[${i}]`, `Expected a non-empty name for tensors[${i}]`);
    const nameBytes = encoder.encode(name).length;
    if (nameBytes > MAX_TENSOR_NAME_BYTES)
      throw bad(
        name,
        `Tensor name ${name} is ${nameBytes} bytes; GGUF readers (llama.cpp) allow at most ${MAX_TENSOR_NAME_BYTES}`,
      );
    if (names.has(name)) throw bad(name, `Duplicate tensor name ${name}`);
    names.add(name);
    const info = ggmlTypeInfo(t.type);
    if (!info || info.removed)
      throw bad(name, `Expected a ggml type id for tensor ${name} but received ${String(t.type)}`);
    const dims = t.dims;
    if (
      !Array.isArray(dims) ||
      dims.length < 1 ||
      dims.length > 4 ||
      !dims.every((d) => Number.isSafeInteger(d) && d > 0)
    )
      throw bad(
        name,
        `Expected 1 to 4 positive integer dims for tensor ${name} but received ${JSON.stringify(dims)}`,
      );
    if (dims[0] % info.blockSize !== 0)
      throw bad(
        name,
        `Tensor ${name}: dims[0] = ${dims[0]} is not a multiple of the ${info.name} block size ${info.blockSize}`,
      );
    let rows = 1;
    for (let d = 1; d < dims.length; d++) rows *= dims[d];
    const bytes = ggmlRowBytes(t.type, dims[0]) * rows;
    if (!Number.isSafeInteger(bytes)) throw bad(name, `Tensor ${name} is too large`);
    if (t.data instanceof Uint8Array) {
      if (t.data.length !== bytes)
        throw bad(name, dataSizeMessage(name, t.type, dims, bytes, t.data.length));
    } else if (typeof t.data !== 'function')
      throw bad(name, `Expected a Uint8Array or a function for the data of tensor ${name}`);
    out.push({ spec: t, bytes, offset });
    offset += Math.ceil(bytes / alignment) * alignment;
  });
  return out;
}

function dataSizeMessage(
  name: string,
  type: number,
  dims: number[],
  bytes: number,
  got: number,
): string {
  return `Expected ${bytes} bytes of ${ggmlTypeName(type)} data for tensor ${name} (dims [${dims.join(', ')}]) but received ${got}`;
}

/** Builds the header bytes (through the tensor infos, before padding). */
function buildHeader(
  version: number,
  metadata: GgufMetaEntry[],
  planned: PlannedTensor[],
): Uint8Array {
  const w = new ByteWriter();
  w.u32(0x46554747); // 'GGUF'
  w.u32(version);
  w.u64(planned.length);
  w.u64(metadata.length);
  const keys = new Set<string>();
  metadata.forEach((m, i) => {
    const key = m?.key;
    if (typeof key !== 'string' || key === '')
      throw bad(`metadata[${i}]`, `Expected a non-empty key for metadata[${i}]`);
    if (keys.has(key)) throw bad(key, `Duplicate metadata key ${key}`);
    keys.add(key);
    checkScalar(T.STRING, key, `metadata key ${key}`, key);
    w.string(key);
    if (!Number.isInteger(m.type) || m.type < 0 || m.type > 12)
      throw bad(key, `Expected a GGUF value type (0..12) for ${key} but received ${m.type}`);
    w.u32(m.type);
    if (m.type === T.ARRAY) {
      const et = m.arrayType ?? typedArrayType(m.value);
      writeArray(w, m.value, et, key, key, 0);
    } else if (m.type === T.STRING) {
      checkScalar(T.STRING, m.value, key, key);
      w.string(m.value as string);
    } else {
      checkScalar(m.type, m.value, key, key);
      w.scalar(m.type, m.value as number | bigint | boolean);
    }
  });
  for (const p of planned) {
    w.string(p.spec.name);
    w.u32(p.spec.dims.length);
    for (const d of p.spec.dims) w.u64(d);
    w.u32(p.spec.type);
    w.u64(p.offset);
  }
  return w.result();
}

async function writeAll(fh: fs.promises.FileHandle, b: Uint8Array): Promise<void> {
  let done = 0;
  while (done < b.length) {
    const { bytesWritten } = await fh.write(b, done, b.length - done);
    done += bytesWritten;
  }
}

/**
 * Writes a GGUF file. Metadata keeps the given order; `general.alignment` (u32) is added at
 * the end when `alignment` is not 32 and the metadata lacks it. Throws E_INVALID_ARG naming
 * the key or tensor at fault (also when a lazy data function returns the wrong byte count),
 * E_IO when the file cannot be written.
 */
export async function writeGguf(path: string, spec: GgufWriteSpec): Promise<void> {
  if (typeof path !== 'string' || path === '') throw bad('path', 'Expected a file path for path');
  if (!spec || typeof spec !== 'object') throw bad('spec', 'Expected a spec object');
  const version = spec.version ?? 3;
  if (version !== 2 && version !== 3)
    throw bad('version', `Expected 2 or 3 for version but received ${String(version)}`);
  const metadata = Array.isArray(spec.metadata) ? spec.metadata.slice() : undefined;
  if (!metadata) throw bad('metadata', 'Expected an array for metadata');
  const alignEntry = metadata.find((m) => m?.key === 'general.alignment');
  let alignment = spec.alignment;
  if (alignEntry) {
    const a = alignEntry.value;
    if (alignEntry.type !== T.UINT32 || typeof a !== 'number')
      throw bad('general.alignment', 'Expected general.alignment to be a uint32');
    if (alignment !== undefined && alignment !== a)
      throw bad(
        'alignment',
        `alignment ${alignment} disagrees with the general.alignment metadata (${a})`,
      );
    alignment = a;
  }
  alignment ??= 32;
  if (
    !Number.isInteger(alignment) ||
    alignment < 1 ||
    alignment > 2 ** 30 ||
    (alignment & (alignment - 1)) !== 0
  )
    throw bad('alignment', `Expected a power of two for alignment but received ${alignment}`);
  if (!alignEntry && alignment !== 32)
    metadata.push({ key: 'general.alignment', type: T.UINT32, value: alignment });

  const planned = planTensors(spec.tensors, alignment);
  const header = buildHeader(version, metadata, planned);

  const dir = nodePath.dirname(path);
  const tmp = nodePath.join(dir, `.${nodePath.basename(path)}.${process.pid}.${Date.now()}.tmp`);
  let fh: fs.promises.FileHandle;
  try {
    fh = await fs.promises.open(tmp, 'w');
  } catch (e) {
    throw new KernelError(`Cannot write ${path}: ${(e as Error).message}`, {
      code: 'E_IO',
      op: OP,
      arg: 'path',
      backend: 'js',
    });
  }
  let ok = false;
  try {
    const zeros = new Uint8Array(alignment);
    const pad = (n: number): Uint8Array =>
      zeros.subarray(0, (alignment - (n % alignment)) % alignment);
    try {
      await writeAll(fh, header);
      await writeAll(fh, pad(header.length));
    } catch (e) {
      throw ioError(path, e);
    }
    for (const p of planned) {
      const t = p.spec;
      const data = typeof t.data === 'function' ? t.data() : t.data;
      if (!(data instanceof Uint8Array))
        throw bad(t.name, `Expected the data function of tensor ${t.name} to return a Uint8Array`);
      if (data.length !== p.bytes)
        throw bad(t.name, dataSizeMessage(t.name, t.type, t.dims, p.bytes, data.length));
      try {
        await writeAll(fh, data);
        await writeAll(fh, pad(p.bytes));
      } catch (e) {
        throw ioError(path, e);
      }
    }
    try {
      await fh.close();
    } catch (e) {
      throw ioError(path, e);
    }
    try {
      await fs.promises.rename(tmp, path);
    } catch (e) {
      throw ioError(path, e);
    }
    ok = true;
  } finally {
    if (!ok) {
      await fh.close().catch(() => undefined);
      await fs.promises.unlink(tmp).catch(() => undefined);
    }
  }
}

function ioError(path: string, e: unknown): KernelError {
  return new KernelError(`Cannot write ${path}: ${(e as Error)?.message ?? String(e)}`, {
    code: 'E_IO',
    op: OP,
    arg: 'path',
    backend: 'js',
  });
}
