/**
 * Block hashes for automatic prefix caching.
 *
 * A full KV block is keyed by a chained hash: hash(parent block's hash, the block's token ids,
 * salt). Chaining makes a block's key depend on every token before it, so two blocks with the
 * same tokens but different prefixes get different keys. The salt (e.g. a tenant id) is mixed
 * into the first block of a chain only; every later block inherits it through the chain.
 *
 * The default hash is 64-bit FNV-1a over an unambiguous byte encoding, computed in two 32-bit
 * lanes (no BigInt in the inner loop):
 *
 *   parent:  0x00                              (first block of a chain)
 *          | 0x01, 8 bytes little-endian       (the parent block's hash)
 *   salt:    0x00                              (no salt)
 *          | 0x01, u32 LE byte length, UTF-8 bytes
 *   tokens:  u32 LE count, then each token id as u32 LE
 *
 * Hashes are only an index. The block manager stores the token ids of every cached block and
 * its parent block, and a lookup accepts a block only when its tokens, its parent block (by
 * identity) and, for a first block, its salt all match exactly. A collision, natural or
 * injected (see `BlockManagerOptions.hashFn`), can cost a cache hit but can never return KV
 * computed for other tokens.
 */

import { invalidArg } from '../runtime/errors';

/** A 64-bit block hash, as an unsigned bigint in [0, 2^64). */
export type BlockHash = bigint;

/**
 * Computes the hash of one full block. `tokens` holds exactly `blockSize` token ids (a view:
 * do not keep it). `parent` is null for the first block of a chain; `salt` is passed for the
 * first block only (undefined otherwise). Must be deterministic. The result is reduced to 64
 * unsigned bits by the caller.
 */
export type BlockHashFn = (
  parent: BlockHash | null,
  tokens: Int32Array,
  salt: string | undefined,
) => BlockHash;

const OFFSET_HI = 0xcbf29ce4;
const OFFSET_LO = 0x84222325;
const TWO32 = 4294967296;
// Module-level alias: in some sandboxes (jest's vm) every `Math.x` lookup is slow.
const M_imul = Math.imul;

// Lane state of the running hash for the (short) header. The token loop keeps it in locals.
let hLo = 0;
let hHi = 0;

/** h ^= byte; h *= 0x100000001b3 (mod 2^64), on the two 32-bit lanes. */
function mixByte(byte: number): void {
  const lo = (hLo ^ byte) >>> 0;
  // prime = 2^40 + 0x1b3: h * prime = h * 0x1b3 + (h << 40) (mod 2^64).
  const tLo = lo * 0x1b3; // < 2^41: exact in a double
  hHi = (M_imul(hHi, 0x1b3) + ((tLo / TWO32) >>> 0) + (lo << 8)) >>> 0;
  hLo = tLo >>> 0;
}

function mixU32(v: number): void {
  mixByte(v & 0xff);
  mixByte((v >>> 8) & 0xff);
  mixByte((v >>> 16) & 0xff);
  mixByte((v >>> 24) & 0xff);
}

const saltBytesCache = new Map<string, Uint8Array>();

function saltBytes(salt: string): Uint8Array {
  let b = saltBytesCache.get(salt);
  if (!b) {
    b = new TextEncoder().encode(salt);
    if (saltBytesCache.size > 1024) saltBytesCache.clear();
    saltBytesCache.set(salt, b);
  }
  return b;
}

function result(): BlockHash {
  return (BigInt(hHi) << 32n) | BigInt(hLo);
}

/** Plain 64-bit FNV-1a of a byte string (exposed to test the lane arithmetic). */
export function fnv1a64Bytes(bytes: ArrayLike<number>): BlockHash {
  hLo = OFFSET_LO;
  hHi = OFFSET_HI;
  for (let i = 0; i < bytes.length; i++) mixByte(bytes[i] & 0xff);
  return result();
}

/** The default block hash: 64-bit FNV-1a over the encoding in this file's doc comment. */
export const fnv1aBlockHash: BlockHashFn = (parent, tokens, salt) => {
  hLo = OFFSET_LO;
  hHi = OFFSET_HI;
  if (parent === null) {
    mixByte(0);
  } else {
    mixByte(1);
    const p = BigInt.asUintN(64, parent);
    mixU32(Number(p & 0xffffffffn));
    mixU32(Number(p >> 32n));
  }
  if (salt === undefined) {
    mixByte(0);
  } else {
    mixByte(1);
    const sb = saltBytes(salt);
    mixU32(sb.length);
    for (let i = 0; i < sb.length; i++) mixByte(sb[i]);
  }
  mixU32(tokens.length);
  // The token bytes, with the lanes in locals (the hot loop).
  let l = hLo;
  let h = hHi;
  for (let i = 0; i < tokens.length; i++) {
    const t = tokens[i];
    for (let k = 0; k < 32; k += 8) {
      const lo = (l ^ ((t >>> k) & 0xff)) >>> 0;
      const tLo = lo * 0x1b3;
      h = (M_imul(h, 0x1b3) + ((tLo / TWO32) >>> 0) + (lo << 8)) >>> 0;
      l = tLo >>> 0;
    }
  }
  hLo = l;
  hHi = h;
  return result();
};

/**
 * The chained hashes of every full block of `tokens` (a trailing partial block has none), as
 * the block manager computes them. Useful to route requests to the replica that caches their
 * prefix.
 */
export function hashBlocks(
  tokens: ArrayLike<number>,
  blockSize: number,
  options: { salt?: string; hashFn?: BlockHashFn } = {},
): BlockHash[] {
  if (!(Number.isInteger(blockSize) && blockSize >= 1))
    throw invalidArg('hashBlocks', 'blockSize', 'a positive integer', blockSize);
  const fn = options.hashFn ?? fnv1aBlockHash;
  const t = Int32Array.from(tokens);
  const out: BlockHash[] = [];
  let parent: BlockHash | null = null;
  for (let i = 0; (i + 1) * blockSize <= t.length; i++) {
    const h: BlockHash = BigInt.asUintN(
      64,
      fn(
        parent,
        t.subarray(i * blockSize, (i + 1) * blockSize),
        i === 0 ? options.salt : undefined,
      ),
    );
    out.push(h);
    parent = h;
  }
  return out;
}
