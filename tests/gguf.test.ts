/**
 * GGUF I/O: the reader (lib/model/gguf.ts) against files written by our writer and by a raw
 * byte builder in this file (so malformed files are independent of the writer), the real
 * stories260K.gguf, the native mmap, the ggml encoders (round-tripped through the
 * independent decoders of lib/ops/quant-reference.ts and dtype.ts), a fuzzer, and inspect.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { KernelError } from '../lib/runtime/errors';
import { f32ToBf16, f32ToF16 } from '../lib/runtime/dtype';
import { _setMappedBufferLimitForTests, mapFile } from '../lib/runtime/mmap';
import { ggmlDequantize, ggmlDequantizeK } from '../lib/ops/quant-reference';
import {
  GgufArray,
  GgufFile,
  GgufValueType as T,
  metaArray,
  metaArrayOpt,
  metaBoolOpt,
  metaNumber,
  metaNumberOpt,
  metaString,
  metaStringOpt,
  parseGguf,
  readGguf,
} from '../lib/model/gguf';
import { GgufMetaEntry, GgufTensorSpec, writeGguf } from '../lib/model/gguf-writer';
import { encodeGgml, ggmlBlockSize, ggmlRowBytes, f32ToF16Bits } from '../lib/model/ggml-quants';
import { formatGgufInfo } from '../lib/model/inspect';
import { expectKernelError, rng } from './helpers';

const M_abs = Math.abs;
const M_floor = Math.floor;

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tachyon-gguf-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));
const tmpFile = (name: string): string => path.join(tmp, name);

const MODELS_DIR = process.env.TACHYON_MODELS_DIR ?? path.resolve(__dirname, '../../shared/models');
const STORIES = path.join(MODELS_DIR, 'stories260K.gguf');
const haveStories = fs.existsSync(STORIES);
if (!haveStories)
  console.warn(
    `gguf.test: ${STORIES} not found; skipping the stories260K tests (set TACHYON_MODELS_DIR)`,
  );

async function expectKernelErrorAsync(
  p: Promise<unknown>,
  code: string,
  msg?: RegExp,
): Promise<KernelError> {
  let err: unknown;
  try {
    await p;
  } catch (e) {
    err = e;
  }
  if (!(err instanceof KernelError))
    throw new Error(
      `expected a KernelError ${code} but got ${err === undefined ? 'no error' : String(err)}`,
    );
  expect(err.code).toBe(code);
  if (msg) expect(err.message).toMatch(msg);
  return err;
}

// ---- a raw GGUF byte builder, independent of the writer ------------------------------------

class Raw {
  private b: number[] = [];
  u8(v: number): this {
    this.b.push(v & 0xff);
    return this;
  }
  u32(v: number): this {
    for (let i = 0; i < 4; i++) this.b.push((v >>> (8 * i)) & 0xff);
    return this;
  }
  u64(v: number | bigint): this {
    let x = BigInt(v);
    for (let i = 0; i < 8; i++) {
      this.b.push(Number(x & 0xffn));
      x >>= 8n;
    }
    return this;
  }
  bytes(a: ArrayLike<number>): this {
    for (let i = 0; i < a.length; i++) this.b.push(a[i]);
    return this;
  }
  str(s: string | Uint8Array): this {
    const b = typeof s === 'string' ? new TextEncoder().encode(s) : s;
    return this.u64(b.length).bytes(b);
  }
  padTo(align: number): this {
    while (this.b.length % align) this.b.push(0);
    return this;
  }
  get length(): number {
    return this.b.length;
  }
  done(): Uint8Array {
    return Uint8Array.from(this.b);
  }
}

interface RawTensor {
  name: string;
  dims: (number | bigint)[];
  type: number;
  offset: number | bigint;
  nDims?: number;
}

/** A GGUF file: kvs written by `kv`, tensors as given, data = `dataBytes` zero bytes. */
function rawGguf(o: {
  version?: number;
  magic?: number[];
  kvCount?: number | bigint;
  tensorCount?: number | bigint;
  kv?: (r: Raw) => void;
  nKv?: number;
  tensors?: RawTensor[];
  dataBytes?: number;
  alignment?: number;
}): Uint8Array {
  const r = new Raw();
  r.bytes(o.magic ?? [0x47, 0x47, 0x55, 0x46]);
  r.u32(o.version ?? 3);
  const tensors = o.tensors ?? [];
  r.u64(o.tensorCount ?? tensors.length);
  r.u64(o.kvCount ?? o.nKv ?? 0);
  o.kv?.(r);
  for (const t of tensors) {
    r.str(t.name);
    r.u32(t.nDims ?? t.dims.length);
    for (const d of t.dims) r.u64(d);
    r.u32(t.type);
    r.u64(t.offset);
  }
  r.padTo(o.alignment ?? 32);
  r.bytes(new Uint8Array(o.dataBytes ?? 0));
  return r.done();
}

const parse = (b: Uint8Array): GgufFile => parseGguf(b, b.length, 'test.gguf');
const f32Tensor = (name: string, n: number, offset: number | bigint): RawTensor => ({
  name,
  dims: [n],
  type: 0,
  offset,
});

// ---- round trips through the writer --------------------------------------------------------

function allTypesMetadata(): GgufMetaEntry[] {
  return [
    { key: 'general.architecture', type: T.STRING, value: 'llama' },
    { key: 't.u8', type: T.UINT8, value: 255 },
    { key: 't.i8', type: T.INT8, value: -128 },
    { key: 't.u16', type: T.UINT16, value: 65535 },
    { key: 't.i16', type: T.INT16, value: -32768 },
    { key: 't.u32', type: T.UINT32, value: 4294967295 },
    { key: 't.i32', type: T.INT32, value: -2147483648 },
    { key: 't.f32', type: T.FLOAT32, value: Math.fround(1e-5) },
    { key: 't.bool', type: T.BOOL, value: true },
    { key: 't.bool0', type: T.BOOL, value: false },
    { key: 't.str', type: T.STRING, value: 'héllo ▁wörld 🦙' },
    { key: 't.str.empty', type: T.STRING, value: '' },
    { key: 't.str.bom', type: T.STRING, value: '\uFEFFbom kept' },
    { key: 't.u64', type: T.UINT64, value: 18446744073709551615n },
    { key: 't.i64', type: T.INT64, value: -9223372036854775808n },
    { key: 't.f64', type: T.FLOAT64, value: Math.PI },
    { key: 'a.u8', type: T.ARRAY, arrayType: T.UINT8, value: new Uint8Array([0, 1, 255]) },
    { key: 'a.i8', type: T.ARRAY, arrayType: T.INT8, value: new Int8Array([-128, 0, 127]) },
    { key: 'a.u16', type: T.ARRAY, arrayType: T.UINT16, value: new Uint16Array([1, 65535]) },
    { key: 'a.i16', type: T.ARRAY, arrayType: T.INT16, value: new Int16Array([-32768, 5]) },
    { key: 'a.u32', type: T.ARRAY, value: new Uint32Array([7, 4294967295]) },
    { key: 'a.i32', type: T.ARRAY, arrayType: T.INT32, value: new Int32Array([-1, 2, -3]) },
    { key: 'a.f32', type: T.ARRAY, arrayType: T.FLOAT32, value: new Float32Array([0.5, -1e-7]) },
    { key: 'a.f64', type: T.ARRAY, arrayType: T.FLOAT64, value: new Float64Array([Math.E]) },
    { key: 'a.u64', type: T.ARRAY, arrayType: T.UINT64, value: new BigUint64Array([2n ** 63n]) },
    { key: 'a.i64', type: T.ARRAY, arrayType: T.INT64, value: new BigInt64Array([-5n, 6n]) },
    { key: 'a.bool', type: T.ARRAY, arrayType: T.BOOL, value: [true, false, true] },
    { key: 'a.str', type: T.ARRAY, arrayType: T.STRING, value: ['<s>', '', '▁the', 'ü'] },
    { key: 'a.empty', type: T.ARRAY, arrayType: T.STRING, value: [] },
    { key: 'a.empty.i32', type: T.ARRAY, arrayType: T.INT32, value: new Int32Array(0) },
    {
      key: 'a.nested',
      type: T.ARRAY,
      arrayType: T.ARRAY,
      value: [
        new Int32Array([1, 2, 3]),
        ['x', 'y'],
        [true],
        [new Float32Array([1.5]), [new BigInt64Array([-1n])]],
      ],
    },
  ];
}

function tensorSpecs(seed: number): { specs: GgufTensorSpec[]; bytes: Uint8Array[] } {
  const r = rng(seed);
  const make = (n: number): Float32Array => {
    const v = new Float32Array(n);
    for (let i = 0; i < n; i++) v[i] = (r() * 2 - 1) * 0.5;
    return v;
  };
  const list: [string, number, number[]][] = [
    ['token_embd.weight', 2, [64, 3]],
    ['norm.weight', 0, [7]],
    ['q8', 8, [32, 2, 2]],
    ['half', 1, [5, 3]],
    ['bf', 30, [3]],
    ['q4k', 12, [256, 2]],
    ['q6k', 14, [256, 1, 1, 2]],
    ['q41', 3, [32]],
  ];
  const specs: GgufTensorSpec[] = [];
  const bytes: Uint8Array[] = [];
  list.forEach(([name, type, dims], i) => {
    const cols = dims[0];
    const rows = dims.slice(1).reduce((a, b) => a * b, 1);
    const enc = encodeGgml(type, make(rows * cols), rows, cols);
    bytes.push(enc);
    // Alternate eager bytes and lazy producers.
    specs.push({ name, type, dims, data: i % 2 ? enc : () => enc });
  });
  return { specs, bytes };
}

describe('writer -> reader round trip', () => {
  for (const version of [2, 3] as const)
    for (const alignment of [32, 64, 1]) {
      test(`v${version}, alignment ${alignment}: every value type, nested arrays, tensors`, async () => {
        const file = tmpFile(`rt-${version}-${alignment}.gguf`);
        const metadata = allTypesMetadata();
        const { specs, bytes } = tensorSpecs(version * 100 + alignment);
        await writeGguf(file, { version, alignment, metadata, tensors: specs });
        const f = await readGguf(file);
        expect(f.version).toBe(version);
        expect(f.alignment).toBe(alignment);
        expect(f.fileSize).toBe(fs.statSync(file).size);
        expect(f.dataOffset % alignment).toBe(0);
        for (const m of metadata) {
          expect(f.metadataTypes.get(m.key)).toBe(m.type);
          expect(f.metadata.get(m.key)).toStrictEqual(m.value);
        }
        if (m32(alignment)) expect(f.metadata.has('general.alignment')).toBe(false);
        else expect(f.metadata.get('general.alignment')).toBe(alignment);
        expect(f.arrayTypes?.get('a.u32')).toBe(T.UINT32);
        expect(f.arrayTypes?.get('a.nested')).toBe(T.ARRAY);
        expect(f.metadata.get('t.str.bom')).toBe('\uFEFFbom kept');
        // Tensors: order, dims, types, sizes, alignment, contiguous padded layout.
        expect(f.tensors.map((t) => t.name)).toEqual(specs.map((s) => s.name));
        let expectOffset = f.dataOffset;
        const mapped = mapFile(file);
        f.tensors.forEach((t, i) => {
          expect(t.dims).toEqual(specs[i].dims);
          expect(t.type).toBe(specs[i].type);
          expect(t.bytes).toBe(bytes[i].length);
          expect(t.offset).toBe(expectOffset);
          expect((t.offset - f.dataOffset) % alignment).toBe(0);
          expect(f.tensorMap.get(t.name)).toBe(t);
          expect(Buffer.from(mapped.view(t.offset, t.bytes)).equals(Buffer.from(bytes[i]))).toBe(
            true,
          );
          expectOffset += Math.ceil(t.bytes / alignment) * alignment;
        });
        expect(f.fileSize).toBe(expectOffset);
        mapped.close();
        // Deterministic bytes.
        const again = tmpFile(`rt-${version}-${alignment}-again.gguf`);
        await writeGguf(again, {
          version,
          alignment,
          metadata,
          tensors: tensorSpecs(version * 100 + alignment).specs,
        });
        expect(fs.readFileSync(again).equals(fs.readFileSync(file))).toBe(true);
        // No temporary files left behind.
        expect(fs.readdirSync(tmp).filter((n) => n.endsWith('.tmp'))).toEqual([]);
      });
    }

  test('bytes are exactly the GGUF layout (checked against the raw builder)', async () => {
    const file = tmpFile('layout.gguf');
    const data = new Uint8Array(40).map((_, i) => i + 1);
    await writeGguf(file, {
      metadata: [{ key: 'k', type: T.UINT32, value: 7 }],
      tensors: [{ name: 'w', type: 0, dims: [10], data }],
    });
    const want = new Raw()
      .bytes([0x47, 0x47, 0x55, 0x46])
      .u32(3)
      .u64(1)
      .u64(1)
      .str('k')
      .u32(T.UINT32)
      .u32(7)
      .str('w')
      .u32(1)
      .u64(10)
      .u32(0)
      .u64(0)
      .padTo(32)
      .bytes(data)
      .padTo(32)
      .done();
    expect(Buffer.from(fs.readFileSync(file)).equals(Buffer.from(want))).toBe(true);
  });

  test('readGguf grows its read for a header larger than the first MiB', async () => {
    const file = tmpFile('bigvocab.gguf');
    const tokens: string[] = [];
    for (let i = 0; i < 50000; i++)
      tokens.push(`token_${i}_${'ä'.repeat(i % 7)}_${'▁x'.repeat(i % 5)}`);
    const scores = new Float32Array(tokens.length).map((_, i) => -i);
    await writeGguf(file, {
      metadata: [
        { key: 'tokenizer.ggml.tokens', type: T.ARRAY, arrayType: T.STRING, value: tokens },
        { key: 'tokenizer.ggml.scores', type: T.ARRAY, value: scores },
      ],
      tensors: [{ name: 'x', type: 0, dims: [4], data: new Uint8Array(16) }],
    });
    expect(fs.statSync(file).size).toBeGreaterThan(1.5 * (1 << 20));
    const f = await readGguf(file);
    const got = metaArray(f, 'tokenizer.ggml.tokens') as string[];
    expect(got.length).toBe(tokens.length);
    expect(got.every((t, i) => t === tokens[i])).toBe(true); // (a loop: toEqual is slow here)
    expect(metaArray(f, 'tokenizer.ggml.scores')).toStrictEqual(scores);
    expect(f.tensors[0].offset).toBe(f.fileSize - 32);
    // The same header handed to parseGguf short: a clear error, not a crash.
    const head = fs.readFileSync(file).subarray(0, 1 << 20);
    expectKernelError(
      () => parseGguf(head, f.fileSize),
      'E_MODEL_FORMAT',
      /continues past the 1048576 bytes/,
    );
  });
});

function m32(a: number): boolean {
  return a === 32;
}

describe('writer validation', () => {
  const ok = (): GgufTensorSpec => ({
    name: 'w',
    type: 2,
    dims: [32, 2],
    data: new Uint8Array(36),
  });
  const cases: [string, () => Parameters<typeof writeGguf>[1], string, RegExp][] = [
    [
      'wrong data length',
      () => ({ metadata: [], tensors: [{ ...ok(), data: new Uint8Array(35) }] }),
      'w',
      /Expected 36 bytes of Q4_0 data for tensor w/,
    ],
    [
      'lazy wrong length',
      () => ({
        metadata: [],
        tensors: [ok(), { ...ok(), name: 'lazy', data: () => new Uint8Array(3) }],
      }),
      'lazy',
      /tensor lazy/,
    ],
    [
      'row not a multiple of the block',
      () => ({ metadata: [], tensors: [{ ...ok(), dims: [31, 2] }] }),
      'w',
      /not a multiple of the Q4_0 block size 32/,
    ],
    ['zero dim', () => ({ metadata: [], tensors: [{ ...ok(), dims: [32, 0] }] }), 'w', /dims/],
    [
      '5 dims',
      () => ({ metadata: [], tensors: [{ ...ok(), dims: [32, 1, 1, 1, 2] }] }),
      'w',
      /1 to 4/,
    ],
    ['unknown type', () => ({ metadata: [], tensors: [{ ...ok(), type: 99 }] }), 'w', /ggml type/],
    ['removed type', () => ({ metadata: [], tensors: [{ ...ok(), type: 31 }] }), 'w', /ggml type/],
    [
      'duplicate tensor',
      () => ({ metadata: [], tensors: [ok(), ok()] }),
      'w',
      /Duplicate tensor name w/,
    ],
    [
      'long tensor name',
      () => ({ metadata: [], tensors: [{ ...ok(), name: 'x'.repeat(64) }] }),
      'x'.repeat(64),
      /at most 63/,
    ],
    [
      'duplicate key',
      () => ({
        metadata: [
          { key: 'a', type: T.UINT8, value: 1 },
          { key: 'a', type: T.UINT8, value: 1 },
        ],
        tensors: [],
      }),
      'a',
      /Duplicate metadata key a/,
    ],
    [
      'u8 out of range',
      () => ({ metadata: [{ key: 'a', type: T.UINT8, value: 256 }], tensors: [] }),
      'a',
      /\[0, 255\]/,
    ],
    [
      'lone surrogate',
      () => ({ metadata: [{ key: 's', type: T.STRING, value: 'x\uD800' }], tensors: [] }),
      's',
      /lone surrogate/,
    ],
    [
      'array element type mismatch',
      () => ({
        metadata: [{ key: 'a', type: T.ARRAY, arrayType: T.INT32, value: new Float32Array(2) }],
        tensors: [],
      }),
      'a',
      /int32 elements/,
    ],
    [
      'bad array element',
      () => ({
        metadata: [
          { key: 'a', type: T.ARRAY, arrayType: T.STRING, value: ['x', 3] as unknown as string[] },
        ],
        tensors: [],
      }),
      'a',
      /a\[1\]/,
    ],
    [
      'unknown value type',
      () => ({ metadata: [{ key: 'a', type: 13, value: 1 }], tensors: [] }),
      'a',
      /value type/,
    ],
    [
      'alignment not a power of two',
      () => ({ alignment: 48, metadata: [], tensors: [] }),
      'alignment',
      /power of two/,
    ],
    ['bad version', () => ({ version: 1 as 2, metadata: [], tensors: [] }), 'version', /2 or 3/],
  ];
  for (const [name, spec, arg, msg] of cases)
    test(name, async () => {
      const file = tmpFile(`bad-${name.replace(/\W+/g, '_')}.gguf`);
      const e = await expectKernelErrorAsync(writeGguf(file, spec()), 'E_INVALID_ARG', msg);
      expect(e.arg).toBe(arg);
      expect(fs.existsSync(file)).toBe(false);
      expect(fs.readdirSync(tmp).filter((n) => n.endsWith('.tmp'))).toEqual([]);
    });
});

// ---- the reader on malformed files ---------------------------------------------------------

describe('reader rejects malformed files with E_MODEL_FORMAT', () => {
  const kvU32 = (key: string, v: number) => (r: Raw) => r.str(key).u32(T.UINT32).u32(v);
  const cases: [string, () => Uint8Array, RegExp, string?][] = [
    ['empty file', () => new Uint8Array(0), /empty/],
    ['bad magic', () => rawGguf({ magic: [0x47, 0x47, 0x4d, 0x4c] }), /bad magic 'GGML'/, 'magic'],
    ['version 1', () => rawGguf({ version: 1 }), /version 1 is not supported/, 'version'],
    ['version 4', () => rawGguf({ version: 4 }), /unsupported GGUF version 4/, 'version'],
    ['big-endian', () => rawGguf({ version: 0x03000000 }), /big-endian/, 'version'],
    ['truncated header', () => rawGguf({}).subarray(0, 20), /truncated/],
    [
      'absurd tensor count',
      () => rawGguf({ tensorCount: 2n ** 60n }),
      /tensor count 1152921504606846976 is impossible/,
      'tensor_count',
    ],
    [
      'absurd kv count',
      () => rawGguf({ kvCount: 2n ** 64n - 1n }),
      /metadata count .* is impossible/,
      'kv_count',
    ],
    [
      'absurd string length',
      () => rawGguf({ nKv: 1, kv: (r) => r.u64(2n ** 60n).bytes(new Uint8Array(64)) }),
      /length 1152921504606846976 is larger than/,
    ],
    [
      'absurd array length',
      () =>
        rawGguf({
          nKv: 1,
          kv: (r) =>
            r
              .str('a')
              .u32(T.ARRAY)
              .u32(T.UINT64)
              .u64(2n ** 59n),
        }),
      /array length 576460752303423488 of a needs more bytes than the 15 left/,
      'a',
    ],
    [
      'absurd string array',
      () => rawGguf({ nKv: 1, kv: (r) => r.str('a').u32(T.ARRAY).u32(T.STRING).u64(1e12) }),
      /array length 1000000000000 of a/,
      'a',
    ],
    [
      'unknown value type',
      () => rawGguf({ nKv: 1, kv: (r) => r.str('k').u32(13).u32(0) }),
      /unknown metadata value type 13 for k/,
      'k',
    ],
    [
      'unknown array type',
      () => rawGguf({ nKv: 1, kv: (r) => r.str('k').u32(T.ARRAY).u32(77).u64(0) }),
      /unknown array element type 77 for k/,
      'k',
    ],
    [
      'duplicate key',
      () =>
        rawGguf({
          nKv: 2,
          kv: (r) => {
            kvU32('k', 1)(r);
            kvU32('k', 2)(r);
          },
        }),
      /duplicate metadata key 'k'/,
      'k',
    ],
    [
      'invalid UTF-8 key',
      () =>
        rawGguf({
          nKv: 1,
          kv: (r) =>
            r
              .str(Uint8Array.from([0x6b, 0xc3, 0x28]))
              .u32(T.UINT8)
              .u8(1),
        }),
      /not valid UTF-8/,
    ],
    [
      'invalid UTF-8 value',
      () =>
        rawGguf({
          nKv: 1,
          kv: (r) =>
            r
              .str('s')
              .u32(T.STRING)
              .str(Uint8Array.from([0xff])),
        }),
      /value of s is not valid UTF-8/,
      's',
    ],
    [
      'overlong UTF-8',
      () =>
        rawGguf({
          nKv: 1,
          kv: (r) =>
            r
              .str('s')
              .u32(T.STRING)
              .str(Uint8Array.from([0xc0, 0xaf])),
        }),
      /not valid UTF-8/,
      's',
    ],
    [
      'bool 2',
      () => rawGguf({ nKv: 1, kv: (r) => r.str('b').u32(T.BOOL).u8(2) }),
      /bool value of b is 2/,
      'b',
    ],
    [
      'nested too deep',
      () =>
        rawGguf({
          nKv: 1,
          kv: (r) => {
            r.str('n').u32(T.ARRAY);
            for (let i = 0; i < 40; i++) r.u32(T.ARRAY).u64(1);
            r.u32(T.UINT8).u64(0);
          },
        }),
      /nested deeper/,
      'n',
    ],
    [
      'alignment 0',
      () => rawGguf({ nKv: 1, kv: kvU32('general.alignment', 0) }),
      /power of two/,
      'general.alignment',
    ],
    [
      'alignment 24',
      () => rawGguf({ nKv: 1, kv: kvU32('general.alignment', 24) }),
      /power of two/,
      'general.alignment',
    ],
    [
      'alignment as string',
      () => rawGguf({ nKv: 1, kv: (r) => r.str('general.alignment').u32(T.STRING).str('32') }),
      /power of two/,
      'general.alignment',
    ],
    [
      'n_dims 0',
      () => rawGguf({ tensors: [{ name: 't', dims: [], type: 0, offset: 0 }], dataBytes: 32 }),
      /t has 0 dimensions/,
      't',
    ],
    [
      'n_dims 5',
      () =>
        rawGguf({
          tensors: [{ name: 't', dims: [1, 1, 1, 1, 1], type: 0, offset: 0 }],
          dataBytes: 32,
        }),
      /t has 5 dimensions/,
      't',
    ],
    [
      'zero dim',
      () => rawGguf({ tensors: [{ name: 't', dims: [4, 0], type: 0, offset: 0 }], dataBytes: 32 }),
      /zero dimension/,
      't',
    ],
    [
      'element overflow',
      () =>
        rawGguf({
          tensors: [{ name: 't', dims: [2 ** 30, 2 ** 30, 2 ** 30], type: 0, offset: 0 }],
          dataBytes: 32,
        }),
      /more than 2\^53 elements/,
      't',
    ],
    [
      'huge dim',
      () =>
        rawGguf({ tensors: [{ name: 't', dims: [2n ** 63n], type: 0, offset: 0 }], dataBytes: 32 }),
      /more than 2\^53 elements/,
      't',
    ],
    [
      'unknown ggml type',
      () => rawGguf({ tensors: [{ name: 't', dims: [32], type: 40, offset: 0 }], dataBytes: 64 }),
      /unknown ggml type 40/,
      't',
    ],
    [
      'removed ggml type',
      () => rawGguf({ tensors: [{ name: 't', dims: [32], type: 31, offset: 0 }], dataBytes: 64 }),
      /Q4_0_4_4 .* removed/,
      't',
    ],
    [
      'row not a multiple of the block',
      () => rawGguf({ tensors: [{ name: 't', dims: [48], type: 2, offset: 0 }], dataBytes: 64 }),
      /row length 48 is not a multiple of the Q4_0 block size 32/,
      't',
    ],
    [
      'K-quant row',
      () => rawGguf({ tensors: [{ name: 't', dims: [128], type: 12, offset: 0 }], dataBytes: 160 }),
      /Q4_K block size 256/,
      't',
    ],
    [
      'misaligned offset',
      () => rawGguf({ tensors: [f32Tensor('a', 8, 0), f32Tensor('b', 8, 40)], dataBytes: 128 }),
      /offset 40, which is not a multiple of the alignment 32/,
      'b',
    ],
    [
      'overlap',
      () => rawGguf({ tensors: [f32Tensor('a', 16, 0), f32Tensor('b', 8, 32)], dataBytes: 128 }),
      /tensors a .* and b .* overlap/,
      'b',
    ],
    [
      'past end of file',
      () => rawGguf({ tensors: [f32Tensor('a', 16, 0)], dataBytes: 63 }),
      /extends past the end of the file/,
      'a',
    ],
    [
      'offset far past end',
      () => rawGguf({ tensors: [f32Tensor('a', 1, 2n ** 62n)], dataBytes: 32 }),
      /past the end of the file/,
      'a',
    ],
    [
      'duplicate tensor',
      () => rawGguf({ tensors: [f32Tensor('a', 8, 0), f32Tensor('a', 8, 32)], dataBytes: 64 }),
      /duplicate tensor name 'a'/,
      'a',
    ],
  ];
  for (const [name, bytes, msg, arg] of cases)
    test(name, () => {
      const e = expectKernelError(() => parse(bytes()), 'E_MODEL_FORMAT', msg);
      expect(e.op).toBe('readGguf');
      expect(e.message).toMatch(/^Invalid GGUF file test\.gguf: /);
      if (arg !== undefined) expect(e.arg).toBe(arg);
    });

  test('a valid raw file parses (the builder itself is right)', () => {
    const b = rawGguf({
      nKv: 2,
      kv: (r) => {
        r.str('general.architecture').u32(T.STRING).str('llama');
        r.str('general.alignment').u32(T.UINT32).u32(64);
      },
      tensors: [f32Tensor('a', 16, 0), { name: 'b', dims: [32, 2], type: 8, offset: 64 }],
      alignment: 64,
      dataBytes: 64 + 68,
    });
    const f = parse(b);
    expect(f.alignment).toBe(64);
    expect(f.dataOffset % 64).toBe(0);
    expect(f.tensors.map((t) => [t.name, t.offset - f.dataOffset, t.bytes])).toEqual([
      ['a', 0, 64],
      ['b', 64, 68],
    ]);
    expect(metaString(f, 'general.architecture')).toBe('llama');
  });

  test('v2 files parse like v3', () => {
    const f = parse(rawGguf({ version: 2, tensors: [f32Tensor('a', 8, 0)], dataBytes: 32 }));
    expect(f.version).toBe(2);
    expect(f.tensors[0].bytes).toBe(32);
  });

  test('readGguf: I/O errors are E_IO, garbage is E_MODEL_FORMAT', async () => {
    let e = await expectKernelErrorAsync(readGguf(tmpFile('missing.gguf')), 'E_IO', /ENOENT/);
    expect(e.arg).toBe('path');
    e = await expectKernelErrorAsync(readGguf(tmp), 'E_IO', /directory/);
    expect(e.arg).toBe('path');
    const garbage = tmpFile('garbage.bin');
    fs.writeFileSync(garbage, 'not a gguf file at all');
    await expectKernelErrorAsync(readGguf(garbage), 'E_MODEL_FORMAT', /bad magic 'not '/);
    fs.writeFileSync(garbage, '');
    await expectKernelErrorAsync(readGguf(garbage), 'E_MODEL_FORMAT', /empty/);
  });
});

describe('metadata accessors', () => {
  const f = parse(
    rawGguf({
      nKv: 5,
      kv: (r) => {
        r.str('s').u32(T.STRING).str('text');
        r.str('n').u32(T.INT16).bytes([0xfe, 0xff]);
        r.str('big')
          .u32(T.UINT64)
          .u64(2n ** 60n);
        r.str('small64')
          .u32(T.INT64)
          .u64(2n ** 64n - 3n);
        r.str('arr').u32(T.ARRAY).u32(T.BOOL).u64(2).u8(1).u8(0);
      },
    }),
  );
  test('typed access and errors naming the key', () => {
    expect(metaString(f, 's')).toBe('text');
    expect(metaStringOpt(f, 'nope')).toBeUndefined();
    expect(metaNumber(f, 'n')).toBe(-2);
    expect(metaNumber(f, 'small64')).toBe(-3);
    expect(metaNumberOpt(f, 'nope')).toBeUndefined();
    expect(metaArray(f, 'arr')).toEqual([true, false]);
    expect(metaArrayOpt(f, 'nope')).toBeUndefined();
    expect(metaBoolOpt(f, 'nope')).toBeUndefined();
    let e = expectKernelError(
      () => metaString(f, 'nope'),
      'E_MODEL_FORMAT',
      /Missing metadata key nope/,
    );
    expect(e.arg).toBe('nope');
    e = expectKernelError(
      () => metaString(f, 'n'),
      'E_MODEL_FORMAT',
      /n to be a string but it is a int16/,
    );
    expect(e.arg).toBe('n');
    expectKernelError(() => metaNumber(f, 'big'), 'E_MODEL_FORMAT', /too large/);
    expectKernelError(() => metaNumber(f, 's'), 'E_MODEL_FORMAT', /a number but it is a string/);
    expectKernelError(() => metaBoolOpt(f, 'arr'), 'E_MODEL_FORMAT', /array of bool/);
    expectKernelError(() => metaArray(f, 's'), 'E_MODEL_FORMAT', /an array/);
  });
});

// ---- the real model ------------------------------------------------------------------------

(haveStories ? describe : describe.skip)('stories260K.gguf', () => {
  let f: GgufFile;
  beforeAll(async () => {
    f = await readGguf(STORIES);
  });
  test('header, metadata and tensor index', () => {
    expect(f.version).toBe(3);
    expect(f.alignment).toBe(32);
    expect(f.fileSize).toBe(1185376);
    expect(metaString(f, 'general.architecture')).toBe('llama');
    expect(metaNumber(f, 'llama.embedding_length')).toBe(64);
    expect(metaNumber(f, 'llama.block_count')).toBe(5);
    expect(metaNumber(f, 'llama.attention.head_count')).toBe(8);
    expect(metaNumber(f, 'llama.attention.head_count_kv')).toBe(4);
    expect(metaNumber(f, 'llama.feed_forward_length')).toBe(172);
    expect(metaNumber(f, 'llama.rope.dimension_count')).toBe(8);
    expect(metaNumber(f, 'llama.attention.layer_norm_rms_epsilon')).toBeCloseTo(1e-5, 9);
    expect(metaString(f, 'tokenizer.ggml.model')).toBe('llama');
    expect(metaArray(f, 'tokenizer.ggml.tokens')).toHaveLength(512);
    expect(metaNumber(f, 'tokenizer.ggml.bos_token_id')).toBe(1);
    expect(metaNumber(f, 'tokenizer.ggml.eos_token_id')).toBe(2);
    expect(f.tensors).toHaveLength(3 + 5 * 9);
    expect(f.tensors.every((t) => t.type === 0)).toBe(true);
    expect(f.tensors.reduce((s, t) => s + t.dims.reduce((a, b) => a * b, 1), 0)).toBe(292800);
    const dims = (n: string): number[] | undefined => f.tensorMap.get(n)?.dims;
    expect(dims('token_embd.weight')).toEqual([64, 512]);
    expect(dims('output.weight')).toEqual([64, 512]);
    expect(dims('output_norm.weight')).toEqual([64]);
    for (let l = 0; l < 5; l++) {
      expect(dims(`blk.${l}.attn_q.weight`)).toEqual([64, 64]);
      expect(dims(`blk.${l}.attn_k.weight`)).toEqual([64, 32]);
      expect(dims(`blk.${l}.attn_v.weight`)).toEqual([64, 32]);
      expect(dims(`blk.${l}.attn_output.weight`)).toEqual([64, 64]);
      expect(dims(`blk.${l}.ffn_gate.weight`)).toEqual([64, 172]);
      expect(dims(`blk.${l}.ffn_up.weight`)).toEqual([64, 172]);
      expect(dims(`blk.${l}.ffn_down.weight`)).toEqual([172, 64]);
      expect(dims(`blk.${l}.attn_norm.weight`)).toEqual([64]);
      expect(dims(`blk.${l}.ffn_norm.weight`)).toEqual([64]);
    }
  });

  test('mapFile + offsets give the bytes fs reads', () => {
    const all = fs.readFileSync(STORIES);
    const m = mapFile(STORIES);
    expect(m.byteLength).toBe(all.length);
    for (const t of f.tensors) {
      const want = all.subarray(t.offset, t.offset + t.bytes);
      expect(Buffer.from(new Uint8Array(m.buffer, t.offset, t.bytes)).equals(want)).toBe(true);
      expect(Buffer.from(m.view(t.offset, t.bytes)).equals(want)).toBe(true);
    }
    // The norm weights are real trained values (not zero-filled).
    const norm = new Float32Array(
      m.view(f.tensorMap.get('output_norm.weight')!.offset, 256).slice().buffer,
    );
    expect(norm.some((v) => v !== 0 && Number.isFinite(v))).toBe(true);
    m.close();
  });

  test('round trip through the writer reproduces the file byte for byte', async () => {
    const m = mapFile(STORIES);
    const meta: GgufMetaEntry[] = [...f.metadata].map(([key, value]) => ({
      key,
      type: f.metadataTypes.get(key)!,
      value,
      arrayType: f.arrayTypes?.get(key),
    }));
    const out = tmpFile('stories-copy.gguf');
    await writeGguf(out, {
      version: 3,
      metadata: meta,
      tensors: f.tensors.map((t) => ({
        name: t.name,
        type: t.type,
        dims: t.dims,
        data: () => m.view(t.offset, t.bytes),
      })),
    });
    expect(fs.readFileSync(out).equals(fs.readFileSync(STORIES))).toBe(true);
    m.close();
  });

  test('formatGgufInfo', () => {
    const s = formatGgufInfo(f);
    expect(s).toMatch(/GGUF v3/);
    expect(s).toMatch(/general\.architecture\s+string\s+llama/);
    expect(s).toMatch(/tokenizer\.ggml\.tokens\s+array<string>\[512\]/);
    expect(s).toMatch(/blk\.4\.ffn_down\.weight\s+F32\s+172 x 64/);
    expect(s.split('\n').length).toBeLessThan(120); // long arrays summarized
    expect(s).toMatch(/layer_norm_rms_epsilon\s+float32\s+0\.00001\n/);
  });
});

describe('formatGgufInfo', () => {
  test('summarizes long strings and arrays, lists every tensor', async () => {
    const file = tmpFile('inspect.gguf');
    const { specs } = tensorSpecs(3);
    await writeGguf(file, {
      metadata: [
        ...allTypesMetadata(),
        {
          key: 'tokenizer.chat_template',
          type: T.STRING,
          value: '{% for m in messages %}\n'.repeat(50),
        },
        { key: 'big', type: T.ARRAY, value: new Int32Array(100000).map((_, i) => i) },
      ],
      tensors: specs,
    });
    const f = await readGguf(file);
    const s = formatGgufInfo(f);
    expect(s).toMatch(/GGUF v3/);
    expect(s).toMatch(
      /tokenizer\.chat_template\s+string\s+\{% for m in messages %\}\\n.*… \(1200 chars\)/,
    );
    expect(s).toMatch(/big\s+array<int32>\[100000\]\s+\[0, 1, 2, 3, 4, 5, … 99994 more\]/);
    expect(s).toMatch(/a\.nested\s+array<array>\[4\]\s+\[\[3 items\], \[2 items\]/);
    expect(s).toMatch(/t\.u64\s+uint64\s+18446744073709551615/);
    expect(s).toMatch(/q4k\s+Q4_K\s+256 x 2\s+288\s+\d+/);
    for (const t of specs) expect(s).toContain(t.name);
    expect(s.length).toBeLessThan(6000);
  });
});

// ---- mmap ----------------------------------------------------------------------------------

describe('mapFile', () => {
  test('errors', () => {
    let e = expectKernelError(() => mapFile(tmpFile('nope')), 'E_IO', /No such file/);
    expect(e.arg).toBe('path');
    e = expectKernelError(() => mapFile(tmp), 'E_IO', /directory/);
    expect(e.arg).toBe('path');
    const empty = tmpFile('empty');
    fs.writeFileSync(empty, '');
    expectKernelError(() => mapFile(empty), 'E_IO', /empty/);
    expectKernelError(() => mapFile(42 as unknown as string), 'E_INVALID_ARG');
    expectKernelError(() => mapFile(''), 'E_INVALID_ARG');
  });

  test('views, ranges, close', () => {
    const file = tmpFile('bytes.bin');
    const data = new Uint8Array(20000).map((_, i) => (i * 7) & 255);
    fs.writeFileSync(file, data);
    const m = mapFile(file);
    expect(m.byteLength).toBe(20000);
    expect(Buffer.from(m.buffer).equals(Buffer.from(data))).toBe(true);
    expect(Array.from(m.view(19990, 10))).toEqual(Array.from(data.subarray(19990)));
    expectKernelError(() => m.view(19990, 11), 'E_INVALID_ARG');
    expectKernelError(() => m.view(-1, 1), 'E_INVALID_ARG');
    const v = m.view(0, 4);
    m.close();
    expectKernelError(() => m.buffer, 'E_DISPOSED');
    expectKernelError(() => m.view(0, 1), 'E_DISPOSED');
    expect(Array.from(v)).toEqual([0, 7, 14, 21]); // earlier views stay valid
  });

  test('files larger than one ArrayBuffer map range by range', () => {
    const file = tmpFile('ranges.bin');
    const data = new Uint8Array(50000).map((_, i) => (i * 13 + 5) & 255);
    fs.writeFileSync(file, data);
    _setMappedBufferLimitForTests(8192);
    try {
      const m = mapFile(file);
      expect(m.byteLength).toBe(50000);
      expectKernelError(() => m.buffer, 'E_UNSUPPORTED', /use view/);
      for (const [off, len] of [
        [0, 10],
        [4095, 2],
        [12345, 4000],
        [49999, 1],
      ])
        expect(
          Buffer.from(m.view(off, len)).equals(Buffer.from(data.subarray(off, off + len))),
        ).toBe(true);
      expectKernelError(() => m.view(0, 9000), 'E_UNSUPPORTED');
    } finally {
      _setMappedBufferLimitForTests(undefined);
    }
  });
});

// ---- encoders ------------------------------------------------------------------------------

function weights(n: number, seed: number): Float32Array {
  const r = rng(seed);
  const w = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    // roughly Gaussian, per-block magnitudes vary, occasional outliers and exact zeros
    const g = r() + r() + r() - 1.5;
    const scale = 0.01 + ((i >> 5) % 7) * 0.05;
    w[i] = i % 301 === 0 ? 0 : g * scale * (i % 97 === 0 ? 8 : 1);
  }
  for (let i = 64; i < 96; i++) w[i] = 0; // an all-zero block
  for (let i = 96; i < 128; i++) w[i] = 0.25; // a constant block
  return w;
}

describe('ggml encoders', () => {
  test('block sizes and row bytes', () => {
    expect([0, 1, 2, 3, 8, 12, 14, 30, 39].map(ggmlBlockSize)).toEqual([
      1, 1, 32, 32, 32, 256, 256, 1, 32,
    ]);
    expect(ggmlRowBytes(2, 4096)).toBe(2304);
    expect(ggmlRowBytes(14, 512)).toBe(420);
    expect(ggmlRowBytes(39, 64)).toBe(34);
    expectKernelError(() => ggmlRowBytes(2, 48), 'E_SHAPE');
    expectKernelError(() => ggmlBlockSize(4), 'E_INVALID_ARG');
    expectKernelError(() => encodeGgml(2, new Float32Array(40), 1, 40), 'E_SHAPE');
    expectKernelError(() => encodeGgml(2, new Float32Array(64), 1, 32), 'E_SHAPE');
    expectKernelError(() => encodeGgml(6, new Float32Array(32), 1, 32), 'E_INVALID_ARG'); // Q5_0: no encoder
  });

  test('F16 and BF16 match the independent conversions in dtype.ts (round to nearest even)', () => {
    const r = rng(5);
    const n = 100000;
    const v = new Float32Array(n);
    const bits = new Uint32Array(v.buffer);
    for (let i = 0; i < n; i++) bits[i] = M_floor(r() * 4294967296) >>> 0;
    // plus the interesting edges: ties, subnormals, overflow boundary, zeros, inf
    const edges = [
      0,
      -0,
      65504,
      65519.99,
      65520,
      -65520,
      2 ** -24,
      2 ** -25,
      1.5 * 2 ** -25,
      2 ** -14,
      1 + 2 ** -11,
      1 + 3 * 2 ** -11,
      Infinity,
      -Infinity,
    ];
    v.set(edges);
    const h = new Uint16Array(encodeGgml(1, v, 1, n).buffer);
    const b = new Uint16Array(encodeGgml(30, v, 1, n).buffer);
    let bad = 0;
    for (let i = 0; i < n; i++) {
      if (Number.isNaN(v[i])) {
        expect(h[i] & 0x7fff).toBe(0x7e00);
        expect(b[i] & 0x7f80).toBe(0x7f80);
        expect(b[i] & 0x7f).not.toBe(0);
        continue;
      }
      if (h[i] !== f32ToF16(v[i]) || b[i] !== f32ToBf16(v[i])) bad++;
    }
    expect(bad).toBe(0);
    expect(f32ToF16Bits(65520)).toBe(0x7c00);
    expect(f32ToF16Bits(2 ** -25)).toBe(0);
    expect(f32ToF16Bits(1.5 * 2 ** -25)).toBe(1);
  });

  test('F32 is the raw bytes', () => {
    const w = weights(64, 1);
    expect(Buffer.from(encodeGgml(0, w, 2, 32)).equals(Buffer.from(w.buffer))).toBe(true);
  });

  for (const [type, name, bb] of [
    [8, 'Q8_0', 34],
    [2, 'Q4_0', 18],
    [3, 'Q4_1', 20],
  ] as const)
    test(`${name}: error within half a step, decode -> re-encode is bit-exact`, () => {
      const rows = 24;
      const cols = 512;
      const w = weights(rows * cols, type);
      const q = encodeGgml(type, w, rows, cols);
      expect(q.length).toBe((rows * cols * bb) / 32);
      const d = ggmlDequantize(type, q, rows, cols);
      const dv = new DataView(q.buffer);
      const U = 2 ** -11; // f16 rounding of the block scale (and min), relative
      let clampedQ4 = 0;
      for (let blk = 0; blk < (rows * cols) / 32; blk++) {
        const s = M_abs(f16(dv.getUint16(blk * bb, true)));
        const m = type === 3 ? f16(dv.getUint16(blk * bb + 2, true)) : 0;
        for (let j = 0; j < 32; j++) {
          const i = blk * 32 + j;
          const err = M_abs(d[i] - w[i]);
          const code = s === 0 ? 0 : Math.round(M_abs(d[i] - m) / s);
          // ggml picks codes with the f32 scale and stores it as f16: each code moves by
          // at most code·U·s, the min by |m|·U.
          let bound = 0.5 * s + code * s * U + M_abs(m) * U + 1e-7 * M_abs(w[i]) + 1e-12;
          // Q4_0 maps the largest magnitude to -8; its mirror image clamps at +7.
          if (type === 2 && code === 7 && M_abs(w[i]) > 7.4 * s) {
            bound = s * (1 + 8 * U) + 1e-12;
            clampedQ4++;
          }
          if (!(err <= bound))
            throw new Error(`${name} block ${blk} [${j}]: |${d[i]} - ${w[i]}| > ${bound}`);
        }
      }
      if (type === 2) expect(clampedQ4 / w.length).toBeLessThan(0.02);
      // the all-zero block decodes to zeros, the constant block exactly (Q4_1) or nearly
      expect(Array.from(d.subarray(64, 96)).every((x) => x === 0)).toBe(true);
      expect(Array.from(d.subarray(96, 128)).every((x) => M_abs(x - 0.25) < 0.25 * U * 8)).toBe(
        true,
      );
      // Decoded values are on the grid: encoding them again gives the same bytes (Q4_1
      // re-derives min and range from the decoded values, so its scales may move an ulp).
      const q2 = encodeGgml(type, d, rows, cols);
      if (type !== 3) expect(Buffer.from(q2).equals(Buffer.from(q))).toBe(true);
      else {
        const d2 = ggmlDequantize(type, q2, rows, cols);
        let maxDiff = 0;
        for (let i = 0; i < d.length; i++) maxDiff = Math.max(maxDiff, M_abs(d2[i] - d[i]));
        expect(maxDiff).toBeLessThan(1e-3);
      }
    });

  test('Q8_0 / Q4_0 golden blocks (hand-computed from the ggml reference)', () => {
    // Q4_0: max-magnitude value -2 -> d = -2/-8 = 0.25, codes = round(x/d) + 8 via trunc(x*id + 8.5)
    const x = new Float32Array(32);
    x[0] = -2;
    x[1] = 1;
    x[2] = 0.3; // 1.2 + 8.5 -> 9
    x[16] = 0.125; // 0.5 + 8.5 = 9 -> 9 (ties round up)
    x[17] = -0.125; // -0.5 + 8.5 = 8 -> 8
    const q4 = encodeGgml(2, x, 1, 32);
    expect(Array.from(q4.subarray(0, 2))).toEqual([0x00, 0x34]); // f16(0.25) = 0x3400
    expect(q4[2]).toBe(0 | (9 << 4)); // x0 = -2 -> 0; x16 -> 9
    expect(q4[3]).toBe(12 | (8 << 4)); // x1 = 1 -> 12; x17 -> 8
    expect(q4[4]).toBe(9 | (8 << 4)); // x2 -> 9; x18 = 0 -> 8
    // Q8_0: amax 127 -> d = 1; roundf is half away from zero
    const y = new Float32Array(32);
    y[0] = 127;
    y[1] = 2.5;
    y[2] = -2.5;
    y[3] = -127;
    const q8 = encodeGgml(8, y, 1, 32);
    expect(Array.from(q8.subarray(0, 6))).toEqual([0x00, 0x3c, 127, 3, 253, 129]);
  });

  for (const [type, name, nb, bound, lo, hi] of [
    [12, 'Q4_K', 144, 0.1, 0, 15],
    [14, 'Q6_K', 210, 0.03, -32, 31],
  ] as const)
    test(`${name}: valid blocks, error within half a step except clamped codes, quality`, () => {
      const rows = 8;
      const cols = 1024;
      const w = weights(rows * cols, type);
      const q = encodeGgml(type, w, rows, cols);
      expect(q.length).toBe((rows * cols * nb) / 256);
      const mins = new Float32Array(rows * cols);
      const d = ggmlDequantizeK(type, q, rows, cols, mins);
      const step = kquantSteps(type, q, rows * cols);
      let clamped = 0;
      let se = 0;
      let sx = 0;
      for (let i = 0; i < w.length; i++) {
        const err = M_abs(d[i] - w[i]);
        se += err * err;
        sx += w[i] * w[i];
        if (step[i] === 0) continue;
        // K-quants pick codes with the stored (decoded) scales: half a step, unless the
        // scale search chose to clip this element to the end code.
        const code = Math.round((d[i] + mins[i]) / step[i]);
        if (code === lo || code === hi) {
          if (err > 0.5 * M_abs(step[i])) clamped++;
          continue;
        }
        const bound = 0.5 * M_abs(step[i]) * (1 + 2 ** -20) + 2 ** -22 * M_abs(w[i]) + 1e-12;
        if (!(err <= bound))
          throw new Error(`${name} [${i}] code ${code}: |${d[i]} - ${w[i]}| > ${bound}`);
      }
      // The scale search trades a few clipped extremes for a finer grid; they stay few.
      expect(clamped / w.length).toBeLessThan(0.05);
      expect(Math.sqrt(se / sx)).toBeLessThan(bound);
      expect(Array.from(d.subarray(64, 96)).every((v) => M_abs(v) < 1e-3)).toBe(true);
      // deterministic
      expect(Buffer.from(encodeGgml(type, w, rows, cols)).equals(Buffer.from(q))).toBe(true);
    });

  test('bytes equal ggml reference quantizers (sha256 of quantize_row_*_ref output)', () => {
    // Digests of what ggml-quants.c's quantize_row_{q4_0,q4_1,q8_0,q4_K,q6_K}_ref produce
    // for this input, compiled with gcc -O2 (no FMA contraction) in a local harness.
    const r = rng(2024);
    const n = 256 * 64;
    const x = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      const blk = i >> 8;
      const scale = 2 ** ((blk % 13) - 8) * (1 + (blk % 3) * 0.25);
      x[i] =
        (r() + r() + r() - 1.5) * scale * (i % 97 === 0 ? 8 : 1) +
        (blk % 5 === 1 ? 0.5 * scale : 0);
    }
    x.fill(0, 0, 256);
    x.fill(0.25, 256, 512);
    for (let i = 512; i < 768; i++) x[i] = ((i % 17) - 8) * 0.125;
    for (let i = 768; i < 1024; i++) x[i] = (i - 900) * 1e-7;
    const want: [number, string][] = [
      [2, '107977bb21435ba1c6a9c4d728b7a17df33bb0e2fcf66dc97f568bb5d4a026b4'],
      [3, '2922795aba1d6f048546c37433bd86c6295d458cb65f6c88f77c276b3e1c9c05'],
      [8, 'fb98490fcc907a8bd82023df3086e60e30a7357aaa7de8f771ca2bcc18928427'],
      [12, '9a4033389ac784b325c20dac70823fb227040ed19968cad1b0ec7843e7f07fa6'],
      [14, '73eab5ba461fae88e174021c60b651fe1e46d25d6906229305e8ccd8e26fbb1b'],
    ];
    for (const [type, digest] of want) {
      const got = createHash('sha256')
        .update(encodeGgml(type, x, 64, 256))
        .digest('hex');
      expect([type, got]).toEqual([type, digest]);
    }
  });

  test('Q4_0 encoding speed (a 1.1B-parameter model must take well under a minute)', () => {
    const n = 4096 * 256;
    const w = weights(n, 9);
    encodeGgml(2, w.subarray(0, 4096 * 16), 16, 4096);
    // Best of a few runs, in CPU time: the machine is shared and its wall clock noisy.
    let best = Infinity;
    for (let k = 0; k < 4; k++) {
      const c0 = process.cpuUsage();
      encodeGgml(2, w, 256, 4096);
      const c = process.cpuUsage(c0);
      best = Math.min(best, (c.user + c.system) / 1e6);
    }
    const rate = n / best;
    console.log(
      `Q4_0 encode: ${(rate / 1e6).toFixed(0)}M weights/s (1.1B params: ${(1.1e9 / rate).toFixed(0)} s)`,
    );
    expect(rate).toBeGreaterThan(20e6); // ~60-100M/s measured
  });
});

function f16(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

/** Each element's quantization step d·sc, read from the block bytes. */
function kquantSteps(type: 12 | 14, q: Uint8Array, n: number): Float64Array {
  const out = new Float64Array(n);
  const dv = new DataView(q.buffer, q.byteOffset, q.byteLength);
  for (let blk = 0; blk < n / 256; blk++) {
    if (type === 12) {
      const o = blk * 144;
      const d = f16(dv.getUint16(o, true));
      for (let j = 0; j < 8; j++) {
        const s = o + 4;
        const sc = j < 4 ? q[s + j] & 63 : (q[s + j + 4] & 0xf) | ((q[s + j - 4] >> 6) << 4);
        out.fill(M_abs(d * sc), blk * 256 + 32 * j, blk * 256 + 32 * j + 32);
      }
    } else {
      const o = blk * 210;
      const d = f16(dv.getUint16(o + 208, true));
      for (let j = 0; j < 16; j++)
        out.fill(d * dv.getInt8(o + 192 + j), blk * 256 + 16 * j, blk * 256 + 16 * j + 16);
    }
  }
  return out;
}

// ---- fuzzing -------------------------------------------------------------------------------

/** Parse must succeed or throw KernelError E_MODEL_FORMAT; anything else fails the test. */
function parseOrFormatError(b: Uint8Array, fileSize = b.length): 'ok' | 'error' {
  try {
    parseGguf(b, fileSize);
    return 'ok';
  } catch (e) {
    if (!(e instanceof KernelError) || e.code !== 'E_MODEL_FORMAT')
      throw new Error(`non-E_MODEL_FORMAT failure: ${e instanceof Error ? e.stack : String(e)}`, {
        cause: e,
      });
    return 'error';
  }
}

describe('fuzz', () => {
  // A small valid file with a bit of everything, written by the writer.
  let valid: Uint8Array;
  let headerEnd = 0;
  let lastTensorEnd = 0;
  beforeAll(async () => {
    const file = tmpFile('fuzz-base.gguf');
    const metadata = allTypesMetadata().filter((m) => m.key !== 'a.nested' || true);
    const { specs } = tensorSpecs(77);
    await writeGguf(file, { metadata, tensors: specs.slice(0, 4) });
    valid = new Uint8Array(fs.readFileSync(file));
    const f = parse(valid);
    headerEnd = f.dataOffset;
    lastTensorEnd = Math.max(...f.tensors.map((t) => t.offset + t.bytes));
  });

  test('random byte strings', () => {
    const r = rng(1234);
    let errors = 0;
    for (let i = 0; i < 3000; i++) {
      const n = M_floor(r() * 200);
      const b = new Uint8Array(n);
      for (let j = 0; j < n; j++) b[j] = M_floor(r() * 256);
      // Half of them start like a GGUF v3 file so that parsing goes further.
      if (i % 2 && n >= 8) b.set([0x47, 0x47, 0x55, 0x46, 3, 0, 0, 0]);
      if (parseOrFormatError(b) === 'error') errors++;
    }
    expect(errors).toBeGreaterThan(2900);
  });

  test('strings: strict UTF-8 exactly as a fatal TextDecoder decides', () => {
    const td = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
    const r = rng(31);
    // Bytes biased towards UTF-8 lead/continuation boundaries so every rule gets exercised.
    const pool = [
      0x00, 0x41, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xc1, 0xc2, 0xdf, 0xe0, 0xe1,
      0xec, 0xed, 0xee, 0xef, 0xf0, 0xf1, 0xf3, 0xf4, 0xf5, 0xff,
    ];
    let valid = 0;
    const enc = new TextEncoder();
    const points = [
      0x41, 0x7f, 0x80, 0x7ff, 0x800, 0xfeff, 0xfffd, 0xffff, 0x10000, 0x1f999, 0x10ffff,
    ];
    for (let i = 0; i < 2000; i++) {
      let bytes: Uint8Array;
      if (i % 2) {
        // valid text (1- to 4-byte sequences), then half the time one byte changed or cut
        let str = '';
        for (let j = 1 + M_floor(r() * 3); j > 0; j--)
          str += String.fromCodePoint(points[M_floor(r() * points.length)]);
        bytes = enc.encode(str);
        if (r() < 0.5) {
          if (r() < 0.5) bytes = bytes.subarray(0, M_floor(r() * bytes.length));
          else bytes[M_floor(r() * bytes.length)] = pool[M_floor(r() * pool.length)];
        }
      } else {
        const n = 1 + M_floor(r() * 6);
        bytes = new Uint8Array(n);
        for (let j = 0; j < n; j++)
          bytes[j] = r() < 0.7 ? pool[M_floor(r() * pool.length)] : M_floor(r() * 256);
      }
      let want: string | undefined;
      try {
        want = td.decode(bytes);
      } catch {
        want = undefined;
      }
      const file = rawGguf({ nKv: 1, kv: (w) => w.str('s').u32(T.STRING).str(bytes) });
      if (want === undefined)
        expectKernelError(() => parse(file), 'E_MODEL_FORMAT', /not valid UTF-8/);
      else {
        valid++;
        expect(parse(file).metadata.get('s')).toBe(want);
      }
    }
    expect(valid).toBeGreaterThan(600);
    expect(valid).toBeLessThan(1700);
  });

  test('every truncation of a valid file fails cleanly (and none of them hangs)', () => {
    for (let i = 0; i < valid.length; i++) {
      const got = parseOrFormatError(valid.subarray(0, i));
      // Only the zero padding after the last tensor may be cut.
      expect(got).toBe(i >= lastTensorEnd ? 'ok' : 'error');
    }
    // A short header with the true file size: the parser asks for more, never reads past.
    for (let i = 0; i < headerEnd; i += 7) parseOrFormatError(valid.subarray(0, i), valid.length);
  });

  test('random byte flips in the header region', () => {
    const r = rng(99);
    let ok = 0;
    const t0 = performance.now();
    for (let i = 0; i < 4000; i++) {
      const b = valid.slice();
      const flips = 1 + M_floor(r() * 4);
      for (let k = 0; k < flips; k++) {
        const p = M_floor(r() * headerEnd);
        b[p] = r() < 0.5 ? b[p] ^ (1 << M_floor(r() * 8)) : M_floor(r() * 256);
      }
      if (parseOrFormatError(b) === 'ok') ok++;
    }
    // Flips inside string bytes or numbers often still parse; length/type flips must not crash.
    expect(ok).toBeGreaterThan(0);
    expect(performance.now() - t0).toBeLessThan(10000);
  });

  test('huge values patched into every 8-byte field', () => {
    const huge = [
      2n ** 64n - 1n,
      2n ** 63n,
      2n ** 60n,
      2n ** 53n + 1n,
      2n ** 32n,
      BigInt(valid.length),
      BigInt(valid.length - 1),
    ];
    const before = process.memoryUsage().arrayBuffers;
    let n = 0;
    for (let p = 8; p + 8 <= headerEnd; p++) {
      for (const h of huge) {
        const b = valid.slice();
        new DataView(b.buffer).setBigUint64(p, h, true);
        parseOrFormatError(b);
        n++;
      }
    }
    expect(n).toBeGreaterThan(1000);
    // Nothing big was allocated along the way (a 2^60 length must never be believed).
    expect(process.memoryUsage().arrayBuffers - before).toBeLessThan(64 << 20);
  });

  test('mutated files through readGguf (file I/O path)', async () => {
    const r = rng(7);
    const file = tmpFile('fuzz-file.gguf');
    for (let i = 0; i < 40; i++) {
      const b = valid.slice();
      const p = 8 + M_floor(r() * (headerEnd - 16));
      new DataView(b.buffer).setBigUint64(
        p,
        i % 2 ? 2n ** 62n : BigInt(M_floor(r() * 2 ** 40)),
        true,
      );
      fs.writeFileSync(file, b);
      try {
        await readGguf(file);
      } catch (e) {
        expect(e).toBeInstanceOf(KernelError);
        expect((e as KernelError).code).toBe('E_MODEL_FORMAT');
      }
    }
  });
});

// keep the type import used
export type _Unused = GgufArray;
