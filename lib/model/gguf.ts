/**
 * GGUF reader (versions 2 and 3): header, metadata, tensor index. Only the header region is
 * read; tensor data stays on disk, to be mapped (lib/runtime/mmap.ts) at the absolute offsets
 * recorded here.
 *
 * Layout (little-endian): magic 'GGUF', u32 version, u64 tensor count, u64 metadata count,
 * then the metadata pairs {string key, u32 type, value}, then per tensor {string name,
 * u32 n_dims, u64 dims[n_dims], u32 ggml type, u64 offset}; the data section starts at the
 * next multiple of `general.alignment` (default 32) and tensor offsets are relative to it.
 * A string is a u64 byte length followed by UTF-8 bytes (no terminator).
 *
 * Every defect is a KernelError with code E_MODEL_FORMAT (op 'readGguf') whose message names
 * the problem and the byte offset, and whose `arg` names the key, tensor or field. Lengths and
 * counts are checked against the bytes the file could still hold BEFORE anything is
 * allocated, so a corrupt length of 2^60 costs nothing.
 */
import * as fs from 'node:fs';
import { KernelError } from '../runtime/errors';

export type GgufScalar = number | bigint | boolean | string;
export type GgufArray =
  | string[]
  | boolean[]
  | Int8Array
  | Uint8Array
  | Int16Array
  | Uint16Array
  | Int32Array
  | Uint32Array
  | Float32Array
  | Float64Array
  | BigInt64Array
  | BigUint64Array
  | GgufArray[];
export type GgufValue = GgufScalar | GgufArray;

export const GgufValueType = {
  UINT8: 0,
  INT8: 1,
  UINT16: 2,
  INT16: 3,
  UINT32: 4,
  INT32: 5,
  FLOAT32: 6,
  BOOL: 7,
  STRING: 8,
  ARRAY: 9,
  UINT64: 10,
  INT64: 11,
  FLOAT64: 12,
} as const;

const VALUE_TYPE_NAMES = [
  'uint8',
  'int8',
  'uint16',
  'int16',
  'uint32',
  'int32',
  'float32',
  'bool',
  'string',
  'array',
  'uint64',
  'int64',
  'float64',
];

/** 'uint32', 'string', ... for a GgufValueType id. */
export function ggufValueTypeName(t: number): string {
  return VALUE_TYPE_NAMES[t] ?? `type ${t}`;
}

export interface GgufTensorInfo {
  name: string;
  /** ggml type id (GgmlType in lib/ops/quant.ts). */
  type: number;
  /** GGUF order: dims[0] = ne0, the contiguous dimension. A [N,K] row-major weight has dims [K, N]. */
  dims: number[];
  /** ABSOLUTE byte offset in the file. */
  offset: number;
  /** Byte size of the data. */
  bytes: number;
}

export interface GgufFile {
  path: string;
  version: 2 | 3;
  alignment: number;
  fileSize: number;
  /** Absolute offset of the data section (tensor offsets are already absolute). */
  dataOffset: number;
  metadata: Map<string, GgufValue>;
  /** GgufValueType of each key (ARRAY for arrays; see arrayTypes for the element type). */
  metadataTypes: Map<string, number>;
  /** Element GgufValueType of each array-valued key (an extension: lets a writer round-trip). */
  arrayTypes?: Map<string, number>;
  tensors: GgufTensorInfo[];
  tensorMap: Map<string, GgufTensorInfo>;
}

// ---- ggml types ----------------------------------------------------------------------------

export interface GgmlTypeInfo {
  id: number;
  name: string;
  /** Elements per block (1 for plain types). */
  blockSize: number;
  /** Bytes per block. */
  typeSize: number;
  /** An id ggml once used and has dropped; files with it are rejected (as llama.cpp does). */
  removed?: boolean;
}

// [id, name, block size, bytes per block]; block sizes from ggml-common.h's block structs.
const TYPE_TABLE: [number, string, number, number][] = [
  [0, 'F32', 1, 4],
  [1, 'F16', 1, 2],
  [2, 'Q4_0', 32, 18],
  [3, 'Q4_1', 32, 20],
  [6, 'Q5_0', 32, 22],
  [7, 'Q5_1', 32, 24],
  [8, 'Q8_0', 32, 34],
  [9, 'Q8_1', 32, 36],
  [10, 'Q2_K', 256, 84],
  [11, 'Q3_K', 256, 110],
  [12, 'Q4_K', 256, 144],
  [13, 'Q5_K', 256, 176],
  [14, 'Q6_K', 256, 210],
  [15, 'Q8_K', 256, 292],
  [16, 'IQ2_XXS', 256, 66],
  [17, 'IQ2_XS', 256, 74],
  [18, 'IQ3_XXS', 256, 98],
  [19, 'IQ1_S', 256, 50],
  [20, 'IQ4_NL', 32, 18],
  [21, 'IQ3_S', 256, 110],
  [22, 'IQ2_S', 256, 82],
  [23, 'IQ4_XS', 256, 136],
  [24, 'I8', 1, 1],
  [25, 'I16', 1, 2],
  [26, 'I32', 1, 4],
  [27, 'I64', 1, 8],
  [28, 'F64', 1, 8],
  [29, 'IQ1_M', 256, 56],
  [30, 'BF16', 1, 2],
  [34, 'TQ1_0', 256, 54],
  [35, 'TQ2_0', 256, 66],
  [39, 'MXFP4', 32, 17],
];
const REMOVED_TYPES: [number, string][] = [
  [4, 'Q4_2'],
  [5, 'Q4_3'],
  [31, 'Q4_0_4_4'],
  [32, 'Q4_0_4_8'],
  [33, 'Q4_0_8_8'],
  [36, 'IQ4_NL_4_4'],
  [37, 'IQ4_NL_4_8'],
  [38, 'IQ4_NL_8_8'],
];

/** Every ggml type id known to this reader, indexed by id (holes are unknown ids). */
export const GGML_TYPES: readonly (GgmlTypeInfo | undefined)[] = (() => {
  const t: (GgmlTypeInfo | undefined)[] = [];
  for (const [id, name, blockSize, typeSize] of TYPE_TABLE)
    t[id] = { id, name, blockSize, typeSize };
  for (const [id, name] of REMOVED_TYPES)
    t[id] = { id, name, blockSize: 0, typeSize: 0, removed: true };
  return t;
})();

export function ggmlTypeInfo(id: number): GgmlTypeInfo | undefined {
  return Number.isInteger(id) && id >= 0 ? GGML_TYPES[id] : undefined;
}

/** 'Q4_0', 'F32', ... or 'type 99' for an unknown id. */
export function ggmlTypeName(id: number): string {
  return ggmlTypeInfo(id)?.name ?? `type ${id}`;
}

// ---- parsing -------------------------------------------------------------------------------

const MAGIC = 0x46554747; // 'GGUF' read as a little-endian u32
const DEFAULT_ALIGNMENT = 32;
const MAX_DIMS = 4;
/** Nested arrays deeper than this are rejected (recursion stays bounded on hostile input). */
const MAX_ARRAY_DEPTH = 16;
/** The smallest possible encoding of one metadata pair: key length, type, 1-byte value. */
const MIN_KV_BYTES = 8 + 4 + 1;
/** The smallest possible tensor info: name length, n_dims, one dim, type, offset. */
const MIN_TENSOR_BYTES = 8 + 4 + 8 + 4 + 8;
/** readGguf refuses header regions (metadata + tensor index) larger than this. */
export const MAX_HEADER_BYTES = 256 * 1024 * 1024;
const TWO32 = 4294967296;
const MAX_SAFE = Number.MAX_SAFE_INTEGER;

/** Thrown inside the parser when the header continues past the bytes provided (readGguf grows). */
class NeedMore {
  constructor(readonly end: number) {}
}

function elementBytes(t: number): number {
  switch (t) {
    case GgufValueType.UINT8:
    case GgufValueType.INT8:
    case GgufValueType.BOOL:
      return 1;
    case GgufValueType.UINT16:
    case GgufValueType.INT16:
      return 2;
    case GgufValueType.UINT32:
    case GgufValueType.INT32:
    case GgufValueType.FLOAT32:
      return 4;
    case GgufValueType.UINT64:
    case GgufValueType.INT64:
    case GgufValueType.FLOAT64:
      return 8;
    case GgufValueType.STRING:
      return 8; // the length alone
    case GgufValueType.ARRAY:
      return 4 + 8; // type and count alone
    default:
      return 0;
  }
}

/**
 * Strict UTF-8 check (WHATWG rules: no overlongs, no surrogates, nothing above U+10FFFF, no
 * truncated sequences) of b[p..end). Node's native decoder then does the decoding: it is much
 * faster than a TextDecoder call per string, but would silently replace invalid bytes.
 */
// Buffer#utf8Slice skips toString's argument handling (a third of the time for short
// strings); it is not in Node's typings, so fall back to toString where it is missing.
const nativeSlice = (
  Buffer.prototype as unknown as { utf8Slice?: (s: number, e: number) => string }
).utf8Slice;
function utf8Slice(b: Buffer, start: number, end: number): string {
  return nativeSlice ? nativeSlice.call(b, start, end) : b.toString('utf8', start, end);
}

function isUtf8(b: Uint8Array, p: number, end: number): boolean {
  while (p < end) {
    const c = b[p++];
    if (c < 0x80) continue;
    let need: number;
    let lo = 0x80;
    let hi = 0xbf;
    if (c >= 0xc2 && c <= 0xdf) need = 1;
    else if (c >= 0xe0 && c <= 0xef) {
      need = 2;
      if (c === 0xe0)
        lo = 0xa0; // overlong
      else if (c === 0xed) hi = 0x9f; // surrogates
    } else if (c >= 0xf0 && c <= 0xf4) {
      need = 3;
      if (c === 0xf0)
        lo = 0x90; // overlong
      else if (c === 0xf4) hi = 0x8f; // above U+10FFFF
    } else return false;
    if (p + need > end) return false;
    for (let k = 0; k < need; k++) {
      const x = b[p++];
      if (x < lo || x > hi) return false;
      lo = 0x80;
      hi = 0xbf;
    }
  }
  return true;
}

class Parser {
  pos = 0;
  private readonly dv: DataView;
  private readonly avail: number;
  /** The same bytes as a Buffer, for Node's native UTF-8 decoding. */
  private readonly text: Buffer;

  constructor(
    private readonly buf: Uint8Array,
    private readonly fileSize: number,
    private readonly path: string,
  ) {
    this.dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    this.text = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
    this.avail = Math.min(buf.length, fileSize);
  }

  fail(msg: string, arg: string, at: number = this.pos): never {
    const where = this.path ? ` ${this.path}` : '';
    throw new KernelError(`Invalid GGUF file${where}: ${msg} (at byte ${at})`, {
      code: 'E_MODEL_FORMAT',
      op: 'readGguf',
      arg,
      backend: 'js',
    });
  }

  /** Bytes the file holds after the cursor. */
  left(): number {
    return this.fileSize - this.pos;
  }

  need(n: number, what: string, arg: string): void {
    const end = this.pos + n;
    if (end > this.fileSize)
      this.fail(
        `truncated: ${what} needs ${n} bytes but the file ends ${this.left()} bytes later`,
        arg,
      );
    if (end > this.avail) throw new NeedMore(end);
  }

  u8(what: string, arg: string): number {
    this.need(1, what, arg);
    return this.buf[this.pos++];
  }
  u32(what: string, arg: string): number {
    this.need(4, what, arg);
    const v = this.dv.getUint32(this.pos, true);
    this.pos += 4;
    return v;
  }
  /** A u64 as a number: exact up to 2^53, larger values come back > MAX_SAFE (callers reject). */
  u64(what: string, arg: string): number {
    this.need(8, what, arg);
    const lo = this.dv.getUint32(this.pos, true);
    const hi = this.dv.getUint32(this.pos + 4, true);
    this.pos += 8;
    return hi * TWO32 + lo;
  }

  /** The exact u64 at byte p, for messages (u64() loses precision above 2^53). */
  exact(p: number): string {
    return this.dv.getBigUint64(p, true).toString();
  }

  /**
   * A string; `what` (with `[index]` when index >= 0) names it in errors. Hot for large
   * vocabularies, so no message text is built unless something is wrong.
   */
  private label(what: string, index: number): string {
    return index >= 0 ? `${what}[${index}]` : what;
  }

  string(what: string, arg: string, index = -1): string {
    const start = this.pos;
    if (start + 8 > this.avail) this.need(8, `${this.label(what, index)} length`, arg);
    const len = this.dv.getUint32(start + 4, true) * TWO32 + this.dv.getUint32(start, true);
    this.pos += 8;
    if (len > this.left())
      this.fail(
        `${this.label(what, index)} length ${this.exact(start)} is larger than the ${this.left()} bytes left in the file`,
        arg,
        start,
      );
    const p = this.pos;
    if (p + len > this.avail) this.need(len, this.label(what, index), arg);
    this.pos += len;
    if (!isUtf8(this.buf, p, p + len))
      this.fail(`${this.label(what, index)} is not valid UTF-8`, arg, p);
    return utf8Slice(this.text, p, p + len);
  }

  value(type: number, key: string, depth: number): GgufValue {
    const T = GgufValueType;
    const dv = this.dv;
    let v: GgufValue;
    const p = this.pos;
    switch (type) {
      case T.UINT8:
        this.need(1, `value of ${key}`, key);
        v = dv.getUint8(p);
        this.pos += 1;
        return v;
      case T.INT8:
        this.need(1, `value of ${key}`, key);
        v = dv.getInt8(p);
        this.pos += 1;
        return v;
      case T.UINT16:
        this.need(2, `value of ${key}`, key);
        v = dv.getUint16(p, true);
        this.pos += 2;
        return v;
      case T.INT16:
        this.need(2, `value of ${key}`, key);
        v = dv.getInt16(p, true);
        this.pos += 2;
        return v;
      case T.UINT32:
        this.need(4, `value of ${key}`, key);
        v = dv.getUint32(p, true);
        this.pos += 4;
        return v;
      case T.INT32:
        this.need(4, `value of ${key}`, key);
        v = dv.getInt32(p, true);
        this.pos += 4;
        return v;
      case T.FLOAT32:
        this.need(4, `value of ${key}`, key);
        v = dv.getFloat32(p, true);
        this.pos += 4;
        return v;
      case T.FLOAT64:
        this.need(8, `value of ${key}`, key);
        v = dv.getFloat64(p, true);
        this.pos += 8;
        return v;
      case T.UINT64:
        this.need(8, `value of ${key}`, key);
        v = dv.getBigUint64(p, true);
        this.pos += 8;
        return v;
      case T.INT64:
        this.need(8, `value of ${key}`, key);
        v = dv.getBigInt64(p, true);
        this.pos += 8;
        return v;
      case T.BOOL: {
        const b = this.u8(`value of ${key}`, key);
        if (b > 1) this.fail(`bool value of ${key} is ${b} (expected 0 or 1)`, key, p);
        return b === 1;
      }
      case T.STRING:
        return this.string(`value of ${key}`, key);
      case T.ARRAY:
        return this.array(key, depth);
      default:
        return this.fail(`unknown metadata value type ${type} for ${key}`, key, p - 4);
    }
  }

  /** An array body: u32 element type, u64 count, elements. Returns the value and element type. */
  array(key: string, depth: number, typeOut?: { t: number }): GgufArray {
    const T = GgufValueType;
    if (depth >= MAX_ARRAY_DEPTH)
      this.fail(`arrays of ${key} are nested deeper than ${MAX_ARRAY_DEPTH} levels`, key);
    const tpos = this.pos;
    const et = this.u32(`array element type of ${key}`, key);
    const eb = elementBytes(et);
    if (eb === 0) this.fail(`unknown array element type ${et} for ${key}`, key, tpos);
    if (typeOut) typeOut.t = et;
    const cpos = this.pos;
    const n = this.u64(`array length of ${key}`, key);
    // Check before allocating: n elements need at least n * eb bytes.
    if (n > this.left() / eb)
      this.fail(
        `array length ${this.exact(cpos)} of ${key} needs more bytes than the ${this.left()} left in the file`,
        key,
        cpos,
      );
    const p = this.pos;
    switch (et) {
      case T.STRING: {
        const out: string[] = new Array(n);
        for (let i = 0; i < n; i++) out[i] = this.string(key, key, i);
        return out;
      }
      case T.ARRAY: {
        const out: GgufArray[] = new Array(n);
        for (let i = 0; i < n; i++) out[i] = this.array(key, depth + 1);
        return out;
      }
      case T.BOOL: {
        this.need(n, `array ${key}`, key);
        const out: boolean[] = new Array(n);
        for (let i = 0; i < n; i++) {
          const b = this.buf[p + i];
          if (b > 1) this.fail(`bool ${key}[${i}] is ${b} (expected 0 or 1)`, key, p + i);
          out[i] = b === 1;
        }
        this.pos += n;
        return out;
      }
      default: {
        const bytes = n * eb;
        this.need(bytes, `array ${key}`, key);
        // A copy with its own (aligned) buffer; GGUF arrays need not be aligned in the file.
        const ab = this.buf.slice(p, p + bytes).buffer;
        this.pos += bytes;
        return numericArray(et, ab);
      }
    }
  }
}

function numericArray(et: number, ab: ArrayBuffer): GgufArray {
  const T = GgufValueType;
  if (!LITTLE_ENDIAN) byteSwapInPlace(ab, elementBytes(et));
  switch (et) {
    case T.UINT8:
      return new Uint8Array(ab);
    case T.INT8:
      return new Int8Array(ab);
    case T.UINT16:
      return new Uint16Array(ab);
    case T.INT16:
      return new Int16Array(ab);
    case T.UINT32:
      return new Uint32Array(ab);
    case T.INT32:
      return new Int32Array(ab);
    case T.FLOAT32:
      return new Float32Array(ab);
    case T.FLOAT64:
      return new Float64Array(ab);
    case T.UINT64:
      return new BigUint64Array(ab);
    default:
      return new BigInt64Array(ab);
  }
}

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
function byteSwapInPlace(ab: ArrayBuffer, size: number): void {
  if (size === 1) return;
  const b = new Uint8Array(ab);
  for (let i = 0; i < b.length; i += size) b.subarray(i, i + size).reverse();
}

/**
 * Parses a GGUF header. `header` holds the file's first bytes (it need not be the whole
 * file); `fileSize` is the size of the whole file. Throws E_MODEL_FORMAT naming the problem,
 * including when the header runs past the bytes given.
 */
export function parseGguf(header: Uint8Array, fileSize: number, path = ''): GgufFile {
  try {
    return parseInternal(header, fileSize, path);
  } catch (e) {
    if (e instanceof NeedMore) {
      const where = path ? ` ${path}` : '';
      throw new KernelError(
        `Invalid GGUF file${where}: the header continues past the ${header.length} bytes provided (needs ${e.end})`,
        { code: 'E_MODEL_FORMAT', op: 'readGguf', arg: 'header', backend: 'js' },
      );
    }
    throw e;
  }
}

function parseInternal(header: Uint8Array, fileSize: number, path: string): GgufFile {
  if (!Number.isSafeInteger(fileSize) || fileSize < 0)
    throw new KernelError(`Expected a non-negative integer file size but received ${fileSize}`, {
      code: 'E_INVALID_ARG',
      op: 'readGguf',
      arg: 'fileSize',
      backend: 'js',
    });
  const r = new Parser(header, fileSize, path);
  if (fileSize === 0) r.fail('the file is empty', 'magic', 0);

  const magic = r.u32('magic', 'magic');
  if (magic !== MAGIC) {
    const b = header.subarray(0, 4);
    const shown = Array.from(b, (x) => (x >= 0x20 && x < 0x7f ? String.fromCharCode(x) : '.'));
    r.fail(
      `bad magic '${shown.join('')}' (0x${[...b].map((x) => x.toString(16).padStart(2, '0')).join('')}); expected 'GGUF'`,
      'magic',
      0,
    );
  }
  const version = r.u32('version', 'version');
  if (version !== 2 && version !== 3) {
    if (version === 1)
      r.fail(
        'GGUF version 1 is not supported (v1 used 32-bit counts; re-convert the model with a current llama.cpp)',
        'version',
        4,
      );
    if ((version & 0xffff) === 0 && version !== 0)
      r.fail(
        `unsupported GGUF version ${version} (this looks like a big-endian file; only little-endian GGUF is supported)`,
        'version',
        4,
      );
    r.fail(`unsupported GGUF version ${version} (supported: 2, 3)`, 'version', 4);
  }

  const tensorCount = r.u64('tensor count', 'tensor_count');
  const kvCount = r.u64('metadata count', 'kv_count');
  if (tensorCount > r.left() / MIN_TENSOR_BYTES)
    r.fail(
      `tensor count ${r.exact(8)} is impossible: ${r.left()} bytes left in the file hold at most ${Math.floor(r.left() / MIN_TENSOR_BYTES)} tensor infos`,
      'tensor_count',
      8,
    );
  if (
    kvCount > r.left() / MIN_KV_BYTES ||
    tensorCount * MIN_TENSOR_BYTES + kvCount * MIN_KV_BYTES > r.left()
  )
    r.fail(
      `metadata count ${r.exact(16)} is impossible: ${r.left()} bytes left in the file cannot hold ${r.exact(16)} pairs and ${tensorCount} tensor infos`,
      'kv_count',
      16,
    );

  const metadata = new Map<string, GgufValue>();
  const metadataTypes = new Map<string, number>();
  const arrayTypes = new Map<string, number>();
  const et = { t: 0 };
  for (let i = 0; i < kvCount; i++) {
    const kpos = r.pos;
    const key = r.string(`key of metadata pair ${i}`, `metadata[${i}]`);
    if (metadata.has(key)) r.fail(`duplicate metadata key '${key}'`, key, kpos);
    const tpos = r.pos;
    const type = r.u32(`value type of ${key}`, key);
    if (type > 12) r.fail(`unknown metadata value type ${type} for ${key}`, key, tpos);
    let value: GgufValue;
    if (type === GgufValueType.ARRAY) {
      value = r.array(key, 0, et);
      arrayTypes.set(key, et.t);
    } else value = r.value(type, key, 0);
    metadata.set(key, value);
    metadataTypes.set(key, type);
  }

  let alignment = DEFAULT_ALIGNMENT;
  if (metadata.has('general.alignment')) {
    const a = metadata.get('general.alignment');
    const t = metadataTypes.get('general.alignment')!;
    const isInt = t <= 5 || t === 10 || t === 11;
    const n = typeof a === 'bigint' ? Number(a) : typeof a === 'number' ? a : NaN;
    if (!isInt || !(n > 0) || n > 2 ** 30 || (n & (n - 1)) !== 0)
      r.fail(
        `general.alignment must be a power of two integer (received ${String(a)} of type ${ggufValueTypeName(t)})`,
        'general.alignment',
        16,
      );
    alignment = n;
  }

  const tensors: GgufTensorInfo[] = new Array(tensorCount);
  const tensorMap = new Map<string, GgufTensorInfo>();
  const relOffsets: number[] = new Array(tensorCount);
  for (let i = 0; i < tensorCount; i++) {
    const npos = r.pos;
    const name = r.string(`name of tensor ${i}`, `tensor[${i}]`);
    if (tensorMap.has(name)) r.fail(`duplicate tensor name '${name}'`, name, npos);
    const dpos = r.pos;
    const nDims = r.u32(`n_dims of tensor ${name}`, name);
    if (nDims === 0 || nDims > MAX_DIMS)
      r.fail(`tensor ${name} has ${nDims} dimensions (expected 1 to ${MAX_DIMS})`, name, dpos);
    const dims: number[] = [];
    let numel = 1;
    for (let d = 0; d < nDims; d++) {
      const p = r.pos;
      const n = r.u64(`dims of tensor ${name}`, name);
      if (n === 0) r.fail(`tensor ${name} has a zero dimension (dims[${d}])`, name, p);
      if (n > MAX_SAFE || numel * n > MAX_SAFE)
        r.fail(`tensor ${name} has more than 2^53 elements (dims[${d}] = ${r.exact(p)})`, name, p);
      numel *= n;
      dims.push(n);
    }
    const tpos = r.pos;
    const type = r.u32(`type of tensor ${name}`, name);
    const ti =
      GGML_TYPES[type] ?? r.fail(`tensor ${name} has unknown ggml type ${type}`, name, tpos);
    if (ti.removed)
      r.fail(
        `tensor ${name} has ggml type ${ti.name} (${type}), which ggml has removed`,
        name,
        tpos,
      );
    if (dims[0] % ti.blockSize !== 0)
      r.fail(
        `tensor ${name}: row length ${dims[0]} is not a multiple of the ${ti.name} block size ${ti.blockSize}`,
        name,
        dpos,
      );
    const bytes = (numel / ti.blockSize) * ti.typeSize;
    if (bytes > MAX_SAFE) r.fail(`tensor ${name} is larger than 2^53 bytes`, name, dpos);
    const opos = r.pos;
    const off = r.u64(`offset of tensor ${name}`, name);
    if (off > fileSize)
      r.fail(`tensor ${name} has offset ${r.exact(opos)}, past the end of the file`, name, opos);
    if (off % alignment !== 0)
      r.fail(
        `tensor ${name} has offset ${off}, which is not a multiple of the alignment ${alignment}`,
        name,
        opos,
      );
    relOffsets[i] = off;
    const info: GgufTensorInfo = { name, type, dims, offset: 0, bytes };
    tensors[i] = info;
    tensorMap.set(name, info);
  }

  const dataOffset = Math.ceil(r.pos / alignment) * alignment;
  if (tensorCount > 0 && dataOffset > fileSize)
    r.fail(
      `the data section would start at byte ${dataOffset}, past the end of the file (${fileSize} bytes)`,
      'data',
    );
  for (let i = 0; i < tensorCount; i++) {
    const t = tensors[i];
    t.offset = dataOffset + relOffsets[i];
    if (t.offset + t.bytes > fileSize)
      r.fail(
        `tensor ${t.name} (${t.bytes} bytes at byte ${t.offset}) extends past the end of the file (${fileSize} bytes)`,
        t.name,
      );
  }
  // No two tensors may share bytes.
  const byOffset = tensors.slice().sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < byOffset.length; i++) {
    const a = byOffset[i - 1];
    const b = byOffset[i];
    if (a.offset + a.bytes > b.offset)
      r.fail(
        `tensors ${a.name} (bytes ${a.offset}..${a.offset + a.bytes}) and ${b.name} (from byte ${b.offset}) overlap`,
        b.name,
      );
  }

  return {
    path,
    version: version as 2 | 3,
    alignment,
    fileSize,
    dataOffset,
    metadata,
    metadataTypes,
    arrayTypes,
    tensors,
    tensorMap,
  };
}

function ioError(path: string, e: unknown, what: string): KernelError {
  const err = e as NodeJS.ErrnoException;
  return new KernelError(`Cannot ${what} GGUF file ${path}: ${err.message ?? String(e)}`, {
    code: 'E_IO',
    op: 'readGguf',
    arg: 'path',
    backend: 'js',
  });
}

/**
 * Reads and validates a GGUF file's header region (never the tensor data): starts with the
 * first MiB and re-reads a larger prefix while the header (e.g. a big tokenizer) continues.
 */
export async function readGguf(path: string): Promise<GgufFile> {
  if (typeof path !== 'string' || path === '')
    throw new KernelError(`Expected a file path for path but received ${String(path)}`, {
      code: 'E_INVALID_ARG',
      op: 'readGguf',
      arg: 'path',
      backend: 'js',
    });
  let fh: fs.promises.FileHandle;
  try {
    fh = await fs.promises.open(path, 'r');
  } catch (e) {
    throw ioError(path, e, 'open');
  }
  try {
    let st: fs.Stats;
    try {
      st = await fh.stat();
    } catch (e) {
      throw ioError(path, e, 'stat');
    }
    if (st.isDirectory()) throw ioError(path, new Error('EISDIR: it is a directory'), 'read');
    const fileSize = st.size;
    let want = Math.min(fileSize, 1 << 20);
    let buf = new Uint8Array(0);
    for (;;) {
      if (want > buf.length) {
        const next = new Uint8Array(want);
        next.set(buf);
        let got = buf.length;
        while (got < want) {
          let n: number;
          try {
            ({ bytesRead: n } = await fh.read(next, got, want - got, got));
          } catch (e) {
            throw ioError(path, e, 'read');
          }
          if (n === 0) break; // the file shrank under us: parse what we have
          got += n;
        }
        buf = got === want ? next : next.subarray(0, got);
      }
      try {
        return parseInternal(buf, fileSize, path);
      } catch (e) {
        if (!(e instanceof NeedMore)) throw e;
        if (buf.length < want) {
          // The file was shorter than stat said.
          return parseGguf(buf, buf.length, path);
        }
        if (e.end > MAX_HEADER_BYTES)
          throw new KernelError(
            `Invalid GGUF file ${path}: the metadata and tensor index continue past ${MAX_HEADER_BYTES} bytes (to byte ${e.end}); refusing to read a header that large`,
            { code: 'E_MODEL_FORMAT', op: 'readGguf', arg: 'header', backend: 'js' },
          );
        // Grow fast: each retry re-parses from the start.
        want = Math.min(fileSize, Math.max(buf.length * 4, e.end + (1 << 20)));
      }
    }
  } finally {
    await fh.close().catch(() => undefined);
  }
}

// ---- typed metadata accessors ----------------------------------------------------------------

function metaError(f: GgufFile, key: string, msg: string): KernelError {
  const where = f.path ? ` in ${f.path}` : '';
  return new KernelError(`${msg}${where}`, {
    code: 'E_MODEL_FORMAT',
    op: 'readGguf',
    arg: key,
    backend: 'js',
  });
}

function typeOf(f: GgufFile, key: string): string {
  const t = f.metadataTypes.get(key);
  if (t === GgufValueType.ARRAY) {
    const et = f.arrayTypes?.get(key);
    return et === undefined ? 'array' : `array of ${ggufValueTypeName(et)}`;
  }
  return t === undefined ? typeof f.metadata.get(key) : ggufValueTypeName(t);
}

function wrongType(f: GgufFile, key: string, expected: string): KernelError {
  return metaError(
    f,
    key,
    `Expected metadata ${key} to be ${expected} but it is a ${typeOf(f, key)}`,
  );
}

function missing(f: GgufFile, key: string): KernelError {
  return metaError(f, key, `Missing metadata key ${key}`);
}

export function metaStringOpt(f: GgufFile, key: string): string | undefined {
  const v = f.metadata.get(key);
  if (v === undefined) return undefined;
  if (typeof v !== 'string') throw wrongType(f, key, 'a string');
  return v;
}

export function metaString(f: GgufFile, key: string): string {
  const v = metaStringOpt(f, key);
  if (v === undefined) throw missing(f, key);
  return v;
}

/** Any integer or float type; 64-bit integers are converted when they are exact (|v| <= 2^53). */
export function metaNumberOpt(f: GgufFile, key: string): number | undefined {
  const v = f.metadata.get(key);
  if (v === undefined) return undefined;
  if (typeof v === 'number') return v;
  if (typeof v === 'bigint') {
    if (v > BigInt(MAX_SAFE) || v < -BigInt(MAX_SAFE))
      throw metaError(f, key, `Metadata ${key} = ${v} is too large to be used as a number`);
    return Number(v);
  }
  throw wrongType(f, key, 'a number');
}

export function metaNumber(f: GgufFile, key: string): number {
  const v = metaNumberOpt(f, key);
  if (v === undefined) throw missing(f, key);
  return v;
}

export function metaBoolOpt(f: GgufFile, key: string): boolean | undefined {
  const v = f.metadata.get(key);
  if (v === undefined) return undefined;
  if (typeof v !== 'boolean') throw wrongType(f, key, 'a bool');
  return v;
}

export function metaArrayOpt(f: GgufFile, key: string): GgufArray | undefined {
  const v = f.metadata.get(key);
  if (v === undefined) return undefined;
  if (!Array.isArray(v) && !ArrayBuffer.isView(v)) throw wrongType(f, key, 'an array');
  return v as GgufArray;
}

export function metaArray(f: GgufFile, key: string): GgufArray {
  const v = metaArrayOpt(f, key);
  if (v === undefined) throw missing(f, key);
  return v;
}
