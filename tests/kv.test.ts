/**
 * The paged KV block manager (lib/kv): unit tests of each behaviour, and property tests that
 * run seeded random operation sequences against a simulated KV memory: every slot holds the
 * fingerprint of the token prefix whose K/V it stores, block copies and kvAppend are executed
 * as the page table says, and after every step every live sequence must read, through its
 * block table, exactly the fingerprints of its own prefixes. That catches wrong prefix hits,
 * missing or misordered copy-on-write copies, and blocks reused while still in use, on top of
 * the manager's own invariant recount (checkInvariants) after every operation.
 */
import { KernelError } from '../lib/runtime/errors';
import {
  BlockHashFn,
  BlockManager,
  BlockManagerOptions,
  buildPageTable,
  fnv1a64Bytes,
  fnv1aBlockHash,
  hashBlocks,
  PageTable,
} from '../lib/kv/index';
import { expectKernelError, rng } from './helpers';

const range = (a: number, b: number): number[] => Array.from({ length: b - a }, (_, i) => a + i);

/** Everything observable about the manager, for "nothing changed" checks. */
function snapshot(bm: BlockManager): string {
  const seqs = bm.sequenceIds().map((id) => {
    const v = bm.sequenceView(id);
    return [id, v.length, v.committedLength, [...v.blocks], [...bm.sequenceTokens(id)]];
  });
  const blocks = range(0, bm.numBlocks).map((b) => {
    const i = bm.blockInfo(b);
    return [i.refCount, i.pins, i.cached, String(i.hash), i.parent, i.depth, i.priority, i.lastUse];
  });
  return JSON.stringify({
    stats: bm.stats(),
    seqs,
    blocks,
    dirty: bm.uncommittedSequences().sort(),
  });
}

// ---- BigInt reference of the default hash (the encoding in lib/kv/hash.ts) ----
const FNV_OFFSET = 0xcbf29ce484222325n;
const FNV_PRIME = 0x100000001b3n;
function refFnv(bytes: number[]): bigint {
  let h = FNV_OFFSET;
  for (const b of bytes) {
    h ^= BigInt(b);
    h = BigInt.asUintN(64, h * FNV_PRIME);
  }
  return h;
}
function u32le(v: number): number[] {
  return [v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff];
}
function refBlockHash(parent: bigint | null, tokens: number[], salt?: string): bigint {
  const bytes: number[] = [];
  if (parent === null) bytes.push(0);
  else {
    bytes.push(1);
    for (let i = 0; i < 8; i++) bytes.push(Number((parent >> BigInt(8 * i)) & 0xffn));
  }
  if (salt === undefined) bytes.push(0);
  else {
    const sb = [...Buffer.from(salt, 'utf8')];
    bytes.push(1, ...u32le(sb.length), ...sb);
  }
  bytes.push(...u32le(tokens.length));
  for (const t of tokens) bytes.push(...u32le(t));
  return refFnv(bytes);
}

describe('block hash', () => {
  test('FNV-1a 64 known vectors (two 32-bit lanes)', () => {
    const enc = (s: string) => [...Buffer.from(s, 'utf8')];
    expect(fnv1a64Bytes([])).toBe(0xcbf29ce484222325n);
    expect(fnv1a64Bytes(enc('a'))).toBe(0xaf63dc4c8601ec8cn);
    expect(fnv1a64Bytes(enc('foobar'))).toBe(0x85944171f73967e8n);
    const r = rng(7);
    for (let n = 0; n < 40; n++) {
      const bytes = range(0, n * 3).map(() => Math.floor(r() * 256));
      expect(fnv1a64Bytes(bytes)).toBe(refFnv(bytes));
    }
  });

  test('block hash matches the BigInt reference of the documented encoding', () => {
    const r = rng(11);
    for (let it = 0; it < 200; it++) {
      const len = 1 + Math.floor(r() * 20);
      const tokens = range(0, len).map(() => Math.floor(r() * 2 ** 31));
      const parent =
        r() < 0.3 ? null : BigInt.asUintN(64, BigInt(Math.floor(r() * 2 ** 53)) * 1234567n);
      const salt = r() < 0.5 ? undefined : `tenant-${Math.floor(r() * 100)}-ü`;
      expect(fnv1aBlockHash(parent, Int32Array.from(tokens), salt)).toBe(
        refBlockHash(parent, tokens, salt),
      );
    }
  });

  test('chained: a block key depends on its prefix, the salt and every token', () => {
    const a = hashBlocks([1, 2, 3, 4, 5, 6, 7, 8, 9], 4);
    expect(a.length).toBe(2); // the partial block has no hash
    const b = hashBlocks([9, 2, 3, 4, 5, 6, 7, 8], 4);
    expect(b[1]).not.toBe(a[1]); // same tokens in block 1, different prefix
    const s = hashBlocks([1, 2, 3, 4, 5, 6, 7, 8], 4, { salt: 'x' });
    expect(s[0]).not.toBe(a[0]);
    expect(s[1]).not.toBe(a[1]);
    expect(hashBlocks([1, 2, 3, 4, 5, 6, 7, 8], 4)).toEqual(a);
    expect(a[0]).toBe(refBlockHash(null, [1, 2, 3, 4]));
    expect(a[1]).toBe(refBlockHash(a[0], [5, 6, 7, 8]));
  });
});

describe('BlockManager basics', () => {
  test('argument validation', () => {
    expectKernelError(
      () => new BlockManager({ numBlocks: 0, blockSize: 16 }),
      'E_INVALID_ARG',
      /numBlocks/,
    );
    expectKernelError(
      () => new BlockManager({ numBlocks: 4, blockSize: 1.5 }),
      'E_INVALID_ARG',
      /blockSize/,
    );
    expectKernelError(
      () => new BlockManager({ numBlocks: 4, blockSize: 4, watermark: 1 }),
      'E_INVALID_ARG',
      /watermark/,
    );
    const bm = new BlockManager({ numBlocks: 4, blockSize: 4 });
    expectKernelError(() => bm.createSequence([1, -2]), 'E_INVALID_ARG', /prompt\[1\]/);
    expectKernelError(() => bm.createSequence([1, 2 ** 31]), 'E_INVALID_ARG', /token id/);
    expectKernelError(() => bm.append(123, [1]), 'E_INVALID_ARG', /live sequence/);
    const { seq } = bm.createSequence([1, 2, 3]);
    expectKernelError(() => bm.append(seq, [0.5]), 'E_INVALID_ARG');
    expectKernelError(() => bm.truncate(seq, 4), 'E_INVALID_ARG', /\[0, 3\]/);
    expectKernelError(
      () => bm.createSequence([1, 2], { retention: [{ start: 3, end: 1, priority: 1 }] }),
      'E_INVALID_ARG',
      /retention\[0\]\.end/,
    );
    expectKernelError(
      () => bm.createSequence([1, 2], { numNewTokens: 3 }),
      'E_INVALID_ARG',
      /numNewTokens/,
    );
    bm.checkInvariants();
  });

  test('create and append allocate blocks as needed; tokens land in order', () => {
    const bm = new BlockManager({ numBlocks: 8, blockSize: 4 });
    const a = bm.createSequence([10, 11, 12, 13, 14]);
    expect(a).toEqual({ seq: 0, cachedTokens: 0, length: 5 });
    expect(bm.blockTable(a.seq)).toEqual(Int32Array.from([0, 1]));
    expect(bm.append(a.seq, [15, 16, 17])).toEqual([]); // fills block 1, no new block
    expect(bm.blockTable(a.seq).length).toBe(2);
    bm.append(a.seq, [18]);
    expect(bm.blockTable(a.seq).length).toBe(3);
    expect([...bm.sequenceTokens(a.seq)]).toEqual(range(10, 19));
    expect(bm.stats()).toMatchObject({ usedBlocks: 3, freeBlocks: 5, evictableBlocks: 0 });
    expect(bm.stats().usage).toBeCloseTo(3 / 8);
    bm.checkInvariants();
    const e = bm.createSequence();
    expect(e.length).toBe(0);
    expect(bm.blockTable(e.seq).length).toBe(0);
    bm.free(a.seq);
    bm.free(e.seq);
    bm.checkInvariants();
    expect(bm.stats()).toMatchObject({ usedBlocks: 0, freeBlocks: 8, numSequences: 0 });
  });

  test('chunked prefill: numNewTokens allocates part of the prompt', () => {
    const bm = new BlockManager({ numBlocks: 8, blockSize: 4 });
    const prompt = range(100, 111);
    const a = bm.createSequence(prompt, { numNewTokens: 5 });
    expect(a.length).toBe(5);
    expect(bm.blockTable(a.seq).length).toBe(2);
    bm.append(a.seq, prompt.slice(5));
    expect([...bm.sequenceTokens(a.seq)]).toEqual(prompt);
    bm.checkInvariants();
  });
});

describe('fork and copy-on-write', () => {
  test('fork shares every block; first writer into the shared partial block copies it', () => {
    const bm = new BlockManager({ numBlocks: 10, blockSize: 4 });
    const a = bm.createSequence([1, 2, 3, 4, 5, 6]).seq;
    bm.commitStep();
    const b = bm.fork(a);
    const [full, part] = bm.blockTable(a);
    expect([...bm.blockTable(b)]).toEqual([full, part]);
    expect(bm.blockInfo(full).refCount).toBe(2);
    expect(bm.blockInfo(part).refCount).toBe(2);
    expect(bm.blocksNeededToAppend(b, 1)).toBe(1); // the copy
    expect(bm.blocksNeededToAppend(b, 3)).toBe(2); // the copy + one new block
    const copies = bm.append(b, [70]);
    expect(copies.length).toBe(1);
    const dst = copies[0].dst;
    expect(copies[0].src).toBe(part);
    expect([...bm.blockTable(b)]).toEqual([full, dst]);
    expect([...bm.sequenceTokens(b)]).toEqual([1, 2, 3, 4, 5, 6, 70]);
    expect(bm.blockInfo(part).refCount).toBe(1);
    expect(bm.blockInfo(part).pins).toBe(1); // pinned until the commit
    bm.checkInvariants();
    // a is now the sole holder: it writes in place.
    expect(bm.append(a, [80, 81])).toEqual([]);
    expect([...bm.blockTable(a)]).toEqual([full, part]);
    expect([...bm.sequenceTokens(a)]).toEqual([1, 2, 3, 4, 5, 6, 80, 81]);
    expect([...bm.sequenceTokens(b)]).toEqual([1, 2, 3, 4, 5, 6, 70]);
    expect(bm.stats()).toMatchObject({ cowCopies: 1, pendingCopies: 1 });
    const commit = bm.commitStep();
    expect([...commit.copies]).toEqual([part, dst]);
    expect(bm.blockInfo(part).pins).toBe(0);
    expect(bm.stats().pendingCopies).toBe(0);
    bm.checkInvariants();
    bm.free(a);
    bm.free(b);
    bm.checkInvariants();
    expect(bm.stats().usedBlocks).toBe(0);
  });

  test('parallel sampling: n forks, n-1 copies, full blocks stay shared', () => {
    const bm = new BlockManager({ numBlocks: 32, blockSize: 4 });
    const p = bm.createSequence(range(0, 10)).seq;
    bm.commitStep();
    const kids = [bm.fork(p), bm.fork(p), bm.fork(p)];
    bm.free(p);
    const copies = kids.flatMap((k, i) => bm.append(k, [100 + i]));
    expect(copies.length).toBe(2);
    const tables = kids.map((k) => [...bm.blockTable(k)]);
    expect(new Set(tables.map((t) => t[0])).size).toBe(1);
    expect(new Set(tables.map((t) => t[1])).size).toBe(1);
    expect(new Set(tables.map((t) => t[2])).size).toBe(3);
    kids.forEach((k, i) => expect(bm.sequenceTokens(k)[10]).toBe(100 + i));
    bm.checkInvariants();
  });

  test('a sequence with uncommitted tokens cannot be forked', () => {
    const bm = new BlockManager({ numBlocks: 16, blockSize: 4 });
    const a = bm.createSequence([1, 2, 3, 4, 5]).seq;
    const before = snapshot(bm);
    expectKernelError(() => bm.fork(a), 'E_INVALID_ARG', /uncommitted/);
    expect(snapshot(bm)).toBe(before);
    bm.commitStep();
    const b = bm.fork(a);
    expect(bm.append(b, [6]).length).toBe(1);
    expectKernelError(() => bm.fork(b), 'E_INVALID_ARG', /uncommitted/);
    bm.checkInvariants();
  });
});

describe('prefix caching', () => {
  test('full committed blocks are reused; the hit rate counts tokens', () => {
    const bm = new BlockManager({ numBlocks: 16, blockSize: 4 });
    const prompt = range(1, 11); // 10 tokens: 2 full blocks
    const a = bm.createSequence(prompt);
    expect(a.cachedTokens).toBe(0);
    // Not committed yet: no hit (its KV is not scheduled yet).
    expect(bm.lookupPrefix(prompt).cachedTokens).toBe(0);
    bm.commitStep();
    expect(bm.stats().cachedBlocks).toBe(2);
    const b = bm.createSequence([...prompt, 11, 12]);
    expect(b.cachedTokens).toBe(8);
    bm.commitStep();
    const ta = bm.blockTable(a.seq);
    const tb = bm.blockTable(b.seq);
    expect([...tb.slice(0, 2)]).toEqual([...ta.slice(0, 2)]);
    expect(tb[2]).not.toBe(ta[2]);
    expect(bm.blockInfo(ta[0]).refCount).toBe(2);
    expect([...bm.sequenceTokens(b.seq)]).toEqual([...prompt, 11, 12]);
    expect(bm.stats()).toMatchObject({ prefixQueryTokens: 22, prefixHitTokens: 8 });
    expect(bm.stats().prefixHitRate).toBeCloseTo(8 / 22);
    bm.checkInvariants();
    // Freed cached blocks stay cached (evictable) and still hit.
    bm.free(a.seq);
    bm.free(b.seq);
    bm.commitStep();
    expect(bm.stats()).toMatchObject({ usedBlocks: 0, evictableBlocks: 3, cachedBlocks: 3 });
    const c = bm.createSequence(range(1, 14));
    expect(c.cachedTokens).toBe(12);
    expect(bm.stats().evictableBlocks).toBe(0);
    bm.checkInvariants();
    // The cached keys are the chained hashes hashBlocks computes.
    const keys = [...bm.blockTable(c.seq).slice(0, 3)].map((blk) => bm.blockInfo(blk).hash);
    expect(keys).toEqual(hashBlocks(range(1, 14), 4));
    bm.resetStats();
    expect(bm.stats().prefixQueryTokens).toBe(0);
  });

  test('by default the last prompt token is always computed; maxCachedTokens lifts that', () => {
    const bm = new BlockManager({ numBlocks: 16, blockSize: 4 });
    const prompt = range(0, 8);
    bm.createSequence(prompt);
    bm.commitStep();
    expect(bm.createSequence(prompt).cachedTokens).toBe(4);
    const full = bm.createSequence(prompt, { maxCachedTokens: 8 });
    expect(full.cachedTokens).toBe(8);
    expect(full.length).toBe(8);
    expect(bm.uncommittedSequences()).not.toContain(full.seq);
    expect(bm.createSequence(prompt, { maxCachedTokens: 3 }).cachedTokens).toBe(0);
    bm.checkInvariants();
  });

  test('salts isolate tenants; cache: false opts out', () => {
    const bm = new BlockManager({ numBlocks: 32, blockSize: 4 });
    const prompt = range(0, 9);
    bm.createSequence(prompt, { salt: 'alice' });
    bm.createSequence(prompt, { cache: false });
    bm.commitStep();
    expect(bm.stats().cachedBlocks).toBe(2);
    expect(bm.createSequence(prompt).cachedTokens).toBe(0);
    expect(bm.createSequence(prompt, { salt: 'bob' }).cachedTokens).toBe(0);
    expect(bm.createSequence(prompt, { salt: 'alice' }).cachedTokens).toBe(8);
    expect(bm.createSequence(prompt, { salt: 'alice', cache: false }).cachedTokens).toBe(0);
    bm.checkInvariants();
    const off = new BlockManager({ numBlocks: 8, blockSize: 4, enablePrefixCaching: false });
    off.createSequence(prompt);
    off.commitStep();
    expect(off.stats().cachedBlocks).toBe(0);
    expect(off.createSequence(prompt).cachedTokens).toBe(0);
  });

  test('two sequences computing the same prefix in one step both register; lookups find the longest chain', () => {
    const bm = new BlockManager({ numBlocks: 32, blockSize: 2 });
    const a = bm.createSequence([1, 2, 3, 4]).seq;
    const b = bm.createSequence([1, 2, 3, 4, 5, 6, 7]).seq; // no hit: a is not committed
    bm.commitStep();
    expect(bm.stats().cachedBlocks).toBe(5); // 2 + 3, duplicates included
    bm.free(a);
    const c = bm.createSequence([1, 2, 3, 4, 5, 6, 7, 8, 9]);
    expect(c.cachedTokens).toBe(6); // through b's chain, not a's
    expect([...bm.blockTable(c.seq).slice(0, 3)]).toEqual([...bm.blockTable(b).slice(0, 3)]);
    bm.checkInvariants();
  });

  test('hash collisions never return a mismatched block', () => {
    // Every block hashes to the same value: only the stored tokens, parent and salt decide.
    const zero: BlockHashFn = () => 0n;
    const bm = new BlockManager({ numBlocks: 64, blockSize: 2, hashFn: zero });
    const p1 = [1, 2, 3, 4, 5, 6];
    const p2 = [1, 2, 9, 9, 5, 6]; // same first and third block as p1, different middle
    const p3 = [7, 7, 3, 4, 5, 6];
    for (const p of [p1, p2, p3]) bm.createSequence([...p, 0]);
    bm.createSequence([1, 2, 3, 4], { salt: 's' });
    bm.commitStep();
    bm.checkInvariants();
    const hit = (prompt: number[], salt?: string) => {
      const r = bm.createSequence(prompt, { salt });
      for (const [i, blk] of [...bm.blockTable(r.seq)].entries()) {
        if ((i + 1) * 2 <= r.cachedTokens)
          expect([...bm.blockTokens(blk)]).toEqual(prompt.slice(i * 2, i * 2 + 2));
      }
      return r.cachedTokens;
    };
    expect(hit([1, 2, 3, 4, 5, 6, 8])).toBe(6);
    expect(hit([1, 2, 9, 9, 5, 6, 8])).toBe(6);
    expect(hit([1, 2, 3, 3, 5, 6, 8])).toBe(2);
    expect(hit([7, 7, 9, 9, 5, 6, 8])).toBe(2);
    expect(hit([2, 1, 3, 4, 5, 6, 8])).toBe(0);
    expect(hit([1, 2, 3, 4, 5, 6, 8], 's')).toBe(4);
    expect(hit([1, 2, 3, 4, 8], 't')).toBe(0);
    bm.checkInvariants();
  });
});

describe('exhaustion', () => {
  test('append and admission throw E_KV_EXHAUSTED and change nothing', () => {
    const bm = new BlockManager({ numBlocks: 4, blockSize: 4 });
    const a = bm.createSequence(range(0, 10)).seq; // 3 blocks
    bm.commitStep();
    const b = bm.fork(a);
    let before = snapshot(bm);
    // b needs a copy of the partial block + 1 new block = 2, only 1 free.
    const e = expectKernelError(() => bm.append(b, range(0, 3)), 'E_KV_EXHAUSTED');
    expect(e.message).toMatch(/needs 2 block\(s\)/);
    expect(e.message).toMatch(/only 1 are available \(1 free \+ 0 evictable cached/);
    expect(e.op).toBe('BlockManager.append');
    expect(snapshot(bm)).toBe(before);
    expect(bm.canAppend(b, 3)).toBe(false);
    expect(bm.canAppend(b, 2)).toBe(true);
    bm.checkInvariants();
    before = snapshot(bm);
    expectKernelError(() => bm.createSequence(range(50, 59)), 'E_KV_EXHAUSTED', /needs 3 block/);
    expect(snapshot(bm)).toBe(before);
    const chk = bm.checkAdmission(range(50, 59));
    expect(chk).toMatchObject({ ok: false, cachedTokens: 0, blocksNeeded: 3, blocksAvailable: 1 });
    expect(chk.reason).toMatch(/KV cache exhausted/);
    // Evictable cached blocks count as available.
    bm.free(a);
    bm.free(b);
    bm.commitStep();
    expect(bm.stats()).toMatchObject({ freeBlocks: 2, evictableBlocks: 2 });
    const c = bm.createSequence(range(100, 116)); // 4 blocks: 2 free + 2 evicted
    expect(bm.blockTable(c.seq).length).toBe(4);
    expect(bm.stats()).toMatchObject({ evictions: 2, cachedBlocks: 0 });
    bm.checkInvariants();
  });

  test('admission that reuses evictable blocks counts them against the pool', () => {
    const bm = new BlockManager({ numBlocks: 4, blockSize: 2 });
    const a = bm.createSequence([1, 2, 3, 4, 5, 6]).seq;
    bm.commitStep();
    bm.free(a);
    // 3 evictable cached + 1 free. Hitting 2 cached blocks and adding 3 new needs 5 > 4.
    const before = snapshot(bm);
    expect(bm.checkAdmission([1, 2, 3, 4, 9, 9, 9, 9, 9, 9]).blocksNeeded).toBe(5);
    expectKernelError(() => bm.createSequence([1, 2, 3, 4, 9, 9, 9, 9, 9, 9]), 'E_KV_EXHAUSTED');
    expect(snapshot(bm)).toBe(before);
    const ok = bm.createSequence([1, 2, 3, 4, 9, 9, 9, 9]);
    expect(ok.cachedTokens).toBe(4);
    bm.checkInvariants();
  });

  test('the watermark holds blocks back from admission, not from appends', () => {
    const bm = new BlockManager({ numBlocks: 10, blockSize: 1, watermark: 0.2 });
    expect(bm.watermarkBlocks).toBe(2);
    expect(bm.canAllocate(8)).toBe(true);
    expect(bm.canAllocate(9)).toBe(false);
    expect(bm.canAllocate(9, { useWatermark: false })).toBe(true);
    expectKernelError(() => bm.createSequence(range(0, 9)), 'E_KV_EXHAUSTED', /watermark/);
    const a = bm.createSequence(range(0, 9), { useWatermark: false }).seq;
    expect(bm.canAppend(a, 1)).toBe(true);
    expectKernelError(() => bm.append(a, [1], { useWatermark: true }), 'E_KV_EXHAUSTED');
    bm.append(a, [1]);
    expect(bm.stats().freeBlocks).toBe(0);
    bm.checkInvariants();
  });
});

describe('eviction', () => {
  test('LRU, tail (deepest) block first, leaves before their parents', () => {
    const bm = new BlockManager({ numBlocks: 6, blockSize: 2 });
    const a = bm.createSequence([1, 1, 2, 2, 3, 3, 0], { numNewTokens: 6 }).seq; // 3 blocks
    const b = bm.createSequence([4, 4, 5, 5, 0], { numNewTokens: 4 }).seq; // 2 blocks
    bm.commitStep();
    const ta = [...bm.blockTable(a)];
    const tb = [...bm.blockTable(b)];
    bm.free(a); // older
    bm.free(b);
    bm.commitStep();
    const order: number[] = [];
    const c = bm.createSequence([9], { cache: false }).seq; // takes the one free block
    for (let i = 0; i < 5; i++) {
      bm.append(c, [9, 9]);
      order.push(bm.blockTable(c)[bm.blockTable(c).length - 1]);
    }
    // a's chain goes first, deepest block first, then b's.
    expect(order).toEqual([ta[2], ta[1], ta[0], tb[1], tb[0]]);
    expect(bm.stats().evictions).toBe(5);
    bm.checkInvariants();
  });

  test('retention priorities protect marked ranges', () => {
    const bm = new BlockManager({ numBlocks: 8, blockSize: 2 });
    // A system prompt of 4 tokens (2 blocks) marked high priority, then a user turn.
    const sys = [7, 7, 8, 8];
    const s1 = bm.createSequence([...sys, 1, 1, 0], {
      numNewTokens: 6,
      retention: [{ start: 0, end: 4, priority: 100 }],
    }).seq;
    bm.commitStep();
    bm.free(s1);
    // Later: unrelated default-priority traffic, released after the system prompt.
    const x = bm.createSequence([3, 3, 4, 4, 0], { numNewTokens: 4 }).seq;
    bm.commitStep();
    bm.free(x);
    bm.commitStep();
    expect(bm.stats()).toMatchObject({ freeBlocks: 3, evictableBlocks: 5 });
    // Pressure: 5 blocks, 3 free: evicts s1's user-turn block (the oldest default-priority
    // leaf), then x's last block; the older system prompt survives.
    const y = bm.createSequence(range(20, 30), { cache: false }).seq;
    expect(bm.stats().evictions).toBe(2);
    expect(bm.lookupPrefix([3, 3, 4, 4, 0]).cachedTokens).toBe(2);
    expect(bm.lookupPrefix([...sys, 1, 1, 0], { maxCachedTokens: 6 }).cachedTokens).toBe(4);
    // One more block: x's first block goes, although it was used after the system prompt.
    const hit = bm.createSequence([...sys, 5]);
    expect(hit.cachedTokens).toBe(4);
    expect(bm.stats().evictions).toBe(3);
    expect(bm.lookupPrefix([3, 3, 4, 4, 0]).cachedTokens).toBe(0);
    bm.free(hit.seq);
    bm.free(y);
    bm.checkInvariants();
  });

  test('setRetention: a high-priority prefix outlives more recent default-priority ones', () => {
    const bm = new BlockManager({ numBlocks: 6, blockSize: 2, defaultPriority: 10 });
    const k = bm.createSequence([1, 1, 2, 2, 0], { numNewTokens: 4 }).seq;
    const d = bm.createSequence([3, 3, 4, 4, 0], { numNewTokens: 4 }).seq;
    bm.commitStep();
    const [k0, k1] = bm.blockTable(k);
    const [d0] = bm.blockTable(d);
    bm.setRetention(k, [{ start: 0, priority: 50 }]);
    bm.free(k); // older, but high priority
    bm.free(d);
    expect([k0, k1, d0].map((b) => bm.blockInfo(b).priority)).toEqual([50, 50, 10]);
    const y = bm.createSequence(range(0, 6), { cache: false }).seq; // 2 free + 1 evicted
    expect(bm.stats().evictions).toBe(1);
    expect(bm.lookupPrefix([3, 3, 4, 4, 0]).cachedTokens).toBe(2); // d's tail went first
    bm.createSequence([9, 9], { cache: false });
    expect(bm.lookupPrefix([3, 3, 4, 4, 0]).cachedTokens).toBe(0); // then d's head
    expect(bm.lookupPrefix([1, 1, 2, 2, 0]).cachedTokens).toBe(4); // k survives
    bm.free(y);
    bm.checkInvariants();
  });

  test('clearPrefixCache evicts only unreferenced cached blocks', () => {
    const bm = new BlockManager({ numBlocks: 8, blockSize: 2 });
    const a = bm.createSequence([1, 2, 3, 4, 5]).seq;
    const b = bm.createSequence([6, 7, 8, 9, 5]).seq;
    bm.commitStep();
    bm.free(b);
    expect(bm.clearPrefixCache()).toBe(2);
    expect(bm.stats()).toMatchObject({ cachedBlocks: 2, evictableBlocks: 0, freeBlocks: 5 });
    expect(bm.lookupPrefix([1, 2, 3, 4, 0]).cachedTokens).toBe(4);
    bm.free(a);
    bm.checkInvariants();
  });
});

describe('truncate', () => {
  test('releases tail blocks; writing into a cached block uncaches it, a shared one is copied', () => {
    const bm = new BlockManager({ numBlocks: 16, blockSize: 4 });
    const a = bm.createSequence(range(0, 12)).seq;
    bm.commitStep();
    const t = [...bm.blockTable(a)];
    expect(bm.stats().cachedBlocks).toBe(3);
    bm.truncate(a, 6);
    expect([...bm.blockTable(a)]).toEqual(t.slice(0, 2));
    expect(bm.blockInfo(t[2]).refCount).toBe(0);
    expect(bm.stats().evictableBlocks).toBe(1);
    // Still cached and intact: another sequence hits all three blocks.
    const b = bm.createSequence(range(0, 13)).seq;
    expect(bm.lookupPrefix(range(0, 13)).cachedTokens).toBe(12);
    bm.commitStep();
    // a writes into t[1] (now shared with b): copy.
    const copies = bm.append(a, [99]);
    expect(copies).toEqual([{ src: t[1], dst: bm.blockTable(a)[1] }]);
    expect([...bm.sequenceTokens(b)]).toEqual(range(0, 13));
    bm.commitStep();
    bm.checkInvariants();
    // Sole holder of a cached block: uncache it (and its cached descendants) instead.
    bm.free(b);
    const c = bm.createSequence(range(0, 13)).seq;
    bm.commitStep();
    bm.free(a);
    bm.truncate(c, 5);
    const cached0 = bm.stats().cachedBlocks;
    expect(bm.append(c, [42])).toEqual([]);
    expect(bm.stats().cachedBlocks).toBe(cached0 - 2); // t[1] and its child t[2]
    expect([...bm.sequenceTokens(c)]).toEqual([0, 1, 2, 3, 4, 42]);
    bm.commitStep();
    bm.checkInvariants();
  });
});

describe('page table', () => {
  test('CSR layout, slot mapping, positions and copies follow the documented contract', () => {
    const bm = new BlockManager({ numBlocks: 16, blockSize: 4 });
    const a = bm.createSequence(range(0, 6)).seq; // prefill 6 tokens
    const b = bm.createSequence(range(10, 19)).seq; // prefill 9 tokens
    let pt = buildPageTable(bm, [a, { seq: b }]);
    const ta = [...bm.blockTable(a)];
    const tb = [...bm.blockTable(b)];
    expect(pt.batchSize).toBe(2);
    expect([...pt.indptr]).toEqual([0, 2, 5]);
    expect([...pt.indices]).toEqual([...ta, ...tb]);
    expect([...pt.lastPageLen]).toEqual([2, 1]);
    expect([...pt.kvLens]).toEqual([6, 9]);
    expect([...pt.qoIndptr]).toEqual([0, 6, 15]);
    expect([...pt.positions]).toEqual([...range(0, 6), ...range(0, 9)]);
    const slot = (t: number[], p: number) => t[Math.floor(p / 4)] * 4 + (p % 4);
    expect([...pt.slotMapping]).toEqual([
      ...range(0, 6).map((p) => slot(ta, p)),
      ...range(0, 9).map((p) => slot(tb, p)),
    ]);
    expect(pt.numTokens).toBe(15);
    expect(pt.maxQoLen).toBe(9);
    expect(pt.maxKvLen).toBe(9);
    expect(pt.copies.length).toBe(0);
    // Decode step with a fork: the copy rides along with the table.
    const c = bm.fork(a);
    const copies = bm.append(a, [7]); // a copies the shared partial block; c then writes in place
    expect(bm.append(c, [8])).toEqual([]);
    bm.append(b, [20, 21, 22]);
    pt = buildPageTable(bm, [b, c, a]);
    expect([...pt.qoIndptr]).toEqual([0, 3, 4, 5]);
    expect([...pt.kvLens]).toEqual([12, 7, 7]);
    expect([...pt.lastPageLen]).toEqual([4, 3, 3]);
    expect([...pt.positions]).toEqual([9, 10, 11, 6, 6]);
    expect([...pt.copies]).toEqual([copies[0].src, copies[0].dst]);
    expect(pt.slotMapping[3]).toBe(copies[0].src * 4 + 2);
    expect(pt.slotMapping[4]).toBe(copies[0].dst * 4 + 2);
    expect([...pt.seqIds]).toEqual([b, c, a]);
    bm.checkInvariants();
  });

  test('commit validation: every uncommitted sequence with exactly its new tokens, once', () => {
    const bm = new BlockManager({ numBlocks: 16, blockSize: 4 });
    const a = bm.createSequence(range(0, 6)).seq;
    const b = bm.createSequence(range(0, 3)).seq;
    const before = snapshot(bm);
    expectKernelError(() => buildPageTable(bm, [a]), 'E_INVALID_ARG', /not in the batch/);
    expectKernelError(() => buildPageTable(bm, [a, b, a]), 'E_INVALID_ARG', /already in the batch/);
    expectKernelError(
      () => buildPageTable(bm, [a, { seq: b, numNewTokens: 2 }]),
      'E_INVALID_ARG',
      /numNewTokens/,
    );
    expectKernelError(() => buildPageTable(bm, [a, b, 77]), 'E_INVALID_ARG', /live sequence/);
    expect(snapshot(bm)).toBe(before);
    // Without commit: anything in [1, length], nothing changes.
    const dry = buildPageTable(bm, [{ seq: a, numNewTokens: 1 }], { commit: false });
    expect([...dry.positions]).toEqual([5]);
    expect(snapshot(bm)).toBe(before);
    buildPageTable(bm, [a, b]);
    expect(bm.uncommittedSequences()).toEqual([]);
    expectKernelError(() => buildPageTable(bm, [a]), 'E_INVALID_ARG', /has none/);
    expect(buildPageTable(bm, []).batchSize).toBe(0);
  });
});

// =========================================================================================
// Property tests: random operations against a simulated KV memory.
// =========================================================================================

/** Fingerprint of a token prefix (what the K/V of its last position depends on). */
function fingerprints(tokens: number[]): string[] {
  const out: string[] = [];
  let h1 = 7;
  let h2 = 11;
  for (const t of tokens) {
    h1 = (h1 * 31 + t + 1) % 1000000007;
    h2 = (h2 * 37 + t + 3) % 998244353;
    out.push(`${h1}:${h2}`);
  }
  return out;
}

interface SimConfig {
  seed: number;
  numBlocks: number;
  blockSize: number;
  steps: number;
  hashFn?: BlockHashFn;
  watermark?: number;
  vocab: number;
}

function runSimulation(cfg: SimConfig): {
  hits: number;
  exhausted: number;
  copies: number;
  evictions: number;
} {
  const r = rng(cfg.seed);
  const ri = (n: number) => Math.floor(r() * n);
  const opts: BlockManagerOptions = {
    numBlocks: cfg.numBlocks,
    blockSize: cfg.blockSize,
    hashFn: cfg.hashFn,
    watermark: cfg.watermark,
  };
  const bm = new BlockManager(opts);
  const must = (cond: boolean, what: string) => {
    if (!cond) throw new Error(`seed ${cfg.seed}: ${what}`);
  };
  const bs = cfg.blockSize;
  const kv: (string | undefined)[] = new Array(cfg.numBlocks * bs).fill(undefined);
  const model = new Map<number, number[]>(); // seq -> tokens
  const salts = new Map<number, string | undefined>();
  // A few shared "system prompts" so prefix hits happen.
  const bases = range(0, 4).map(() => range(0, ri(4 * bs)).map(() => ri(cfg.vocab)));
  let hits = 0;
  let exhausted = 0;
  let copiesRun = 0;

  const live = () => [...model.keys()];
  const pick = () => {
    const l = live();
    return l.length ? l[ri(l.length)] : undefined;
  };
  const newTokens = (n: number) => range(0, n).map(() => ri(cfg.vocab));

  const checkTokens = () => {
    for (const [s, toks] of model) {
      const got = bm.sequenceTokens(s);
      must(got.length === toks.length && toks.every((t, i) => got[i] === t), 'sequence tokens');
    }
  };

  /** Executes a page table against the simulated memory and checks every live sequence's KV. */
  const execute = (pt: PageTable) => {
    // Copies first, in order; the contract: distinct destinations, never sources.
    const dsts = new Set<number>();
    const srcs = new Set<number>();
    for (let i = 0; i < pt.copies.length; i += 2) {
      srcs.add(pt.copies[i]);
      must(!dsts.has(pt.copies[i + 1]), 'copy destinations are distinct');
      dsts.add(pt.copies[i + 1]);
    }
    for (const d of dsts) must(!srcs.has(d), 'no copy destination is a source');
    for (let i = 0; i < pt.copies.length; i += 2) {
      const [s, d] = [pt.copies[i], pt.copies[i + 1]];
      for (let k = 0; k < bs; k++) kv[d * bs + k] = kv[s * bs + k];
      copiesRun++;
    }
    // kvAppend: every new token row writes its prefix fingerprint into its slot.
    const written = new Set<number>();
    for (let b = 0; b < pt.batchSize; b++) {
      const toks = model.get(pt.seqIds[b])!;
      const fp = fingerprints(toks);
      must(pt.kvLens[b] === toks.length, 'kvLen is the sequence length');
      for (let row = pt.qoIndptr[b]; row < pt.qoIndptr[b + 1]; row++) {
        const slot = pt.slotMapping[row];
        must(!written.has(slot), 'no two rows write one slot');
        written.add(slot);
        kv[slot] = fp[pt.positions[row]];
      }
      // Attention view through the CSR table.
      const pages = pt.indptr[b + 1] - pt.indptr[b];
      must(pages === Math.ceil(toks.length / bs), 'pages cover the sequence');
      must(pt.lastPageLen[b] === toks.length - (pages - 1) * bs, 'lastPageLen');
      for (let i = 0; i < pages; i++)
        must(pt.indices[pt.indptr[b] + i] === bm.blockTable(pt.seqIds[b])[i], 'indices');
    }
    // After the step, every live sequence reads exactly its own prefixes' KV.
    for (const [s, toks] of model) {
      const fp = fingerprints(toks);
      const t = bm.blockTable(s);
      for (let p = 0; p < toks.length; p++) {
        const got = kv[t[Math.floor(p / bs)] * bs + (p % bs)];
        if (got !== fp[p])
          throw new Error(`seed ${cfg.seed}: sequence ${s} position ${p} reads wrong KV`);
      }
    }
  };

  /**
   * Runs `fn`, which must fail with one of `allowed` exactly when `expectFail`; a failure must
   * leave the state unchanged.
   */
  const attempt = (fn: () => void, allowed: string[], expectFail: boolean): boolean => {
    const before = expectFail ? snapshot(bm) : '';
    try {
      fn();
    } catch (e) {
      if (!(e instanceof KernelError) || !allowed.includes(e.code) || !expectFail) throw e;
      if (e.code === 'E_KV_EXHAUSTED') exhausted++;
      must(snapshot(bm) === before, 'a refused operation changes nothing');
      return false;
    }
    must(!expectFail, 'the operation was expected to fail');
    return true;
  };

  for (let step = 0; step < cfg.steps; step++) {
    // Under pressure, lean towards freeing so the pool keeps turning over.
    const pressure = bm.availableBlocks() < cfg.numBlocks / 4 && r() < 0.15;
    const op = pressure ? 0.8 : r();
    const s = pick();
    if (op < 0.25 || s === undefined) {
      // Admission.
      const base = bases[ri(bases.length)];
      const prompt = [...base.slice(0, ri(base.length + 1)), ...newTokens(ri(3 * bs))];
      const salt = r() < 0.2 ? 'tenant' : undefined;
      const maxCached = r() < 0.2 ? prompt.length : undefined;
      const useWatermark = r() < 0.8;
      const retention =
        r() < 0.3 ? [{ start: 0, end: ri(prompt.length + 1), priority: ri(3) }] : undefined;
      const match = bm.lookupPrefix(prompt, { salt, maxCachedTokens: maxCached });
      const rest = prompt.length - match.cachedTokens;
      const numNewTokens = r() < 0.3 ? ri(rest + 1) : undefined;
      const chk = bm.checkAdmission(prompt, {
        salt,
        maxCachedTokens: maxCached,
        useWatermark,
        numNewTokens,
      });
      must(match.cachedTokens === chk.cachedTokens, 'lookupPrefix agrees with checkAdmission');
      let res: { seq: number; cachedTokens: number; length: number } | undefined;
      const ok = attempt(
        () => {
          res = bm.createSequence(prompt, {
            salt,
            maxCachedTokens: maxCached,
            useWatermark,
            retention,
            numNewTokens,
          });
        },
        ['E_KV_EXHAUSTED'],
        !chk.ok,
      );
      if (ok && res) {
        must(res.cachedTokens === chk.cachedTokens, 'createSequence hits what checkAdmission said');
        hits += res.cachedTokens;
        // Prefix hits return blocks whose recorded token ids are the prompt's.
        const t = bm.blockTable(res.seq);
        for (let i = 0; i < res.cachedTokens / bs; i++) {
          must(t[i] === match.blocks[i], 'hit blocks are the looked-up ones');
          const rec = bm.blockTokens(t[i]);
          for (let k = 0; k < bs; k++)
            must(rec[k] === prompt[i * bs + k], 'a hit block records the prompt tokens');
        }
        model.set(res.seq, prompt.slice(0, res.length));
        salts.set(res.seq, salt);
      }
    } else if (op < 0.55) {
      const n = r() < 0.7 ? 1 : 1 + ri(2 * bs);
      const toks = newTokens(n);
      const can = bm.canAppend(s, n);
      const need = bm.blocksNeededToAppend(s, n);
      must(can === need <= bm.availableBlocks(), 'canAppend agrees with blocksNeededToAppend');
      const ok = attempt(
        () => {
          const copies = bm.append(s, toks);
          must(copies.length <= 1, 'at most one copy per append');
        },
        ['E_KV_EXHAUSTED'],
        !can,
      );
      if (ok) model.get(s)!.push(...toks);
      else must(bm.blocksNeededToAppend(s, n) === need, 'need unchanged after a refusal');
    } else if (op < 0.65) {
      if (bm.uncommittedSequences().includes(s)) {
        attempt(() => bm.fork(s), ['E_INVALID_ARG'], true);
      } else {
        const c = bm.fork(s);
        model.set(c, model.get(s)!.slice());
        salts.set(c, salts.get(s));
      }
    } else if (op < 0.72) {
      const len = ri(model.get(s)!.length + 1);
      bm.truncate(s, len);
      model.set(s, model.get(s)!.slice(0, len));
    } else if (op < 0.85) {
      bm.free(s);
      model.delete(s);
    } else if (op < 0.99) {
      // Close the step: schedule every sequence with new tokens, execute, verify.
      const batch = bm.uncommittedSequences();
      for (let i = batch.length - 1; i > 0; i--) {
        const j = ri(i + 1);
        [batch[i], batch[j]] = [batch[j], batch[i]];
      }
      execute(buildPageTable(bm, batch));
    } else {
      bm.clearPrefixCache();
    }
    bm.checkInvariants();
    const st = bm.stats();
    must(
      st.usedBlocks + st.freeBlocks + st.evictableBlocks === cfg.numBlocks,
      'used + free + evictable',
    );
    if (step % 8 === 0) checkTokens();
  }
  // Drain: commit, free everything, commit: every reference is gone.
  execute(buildPageTable(bm, bm.uncommittedSequences()));
  for (const s of live()) bm.free(s);
  model.clear();
  bm.commitStep();
  bm.checkInvariants();
  for (let b = 0; b < cfg.numBlocks; b++) {
    expect(bm.blockInfo(b).refCount).toBe(0);
    expect(bm.blockInfo(b).pins).toBe(0);
  }
  expect(bm.stats()).toMatchObject({ usedBlocks: 0, numSequences: 0 });
  expect(bm.stats().freeBlocks + bm.stats().evictableBlocks).toBe(cfg.numBlocks);
  return { hits, exhausted, copies: copiesRun, evictions: bm.stats().evictions };
}

describe('property: random operations keep every invariant and every sequence reads its own KV', () => {
  const collide: BlockHashFn = (_p, t) => BigInt(t[0] % 2); // heavy, cross-prefix collisions
  const configs: [string, Omit<SimConfig, 'seed'>][] = [
    ['bs 4, tight pool', { numBlocks: 24, blockSize: 4, steps: 600, vocab: 3 }],
    ['bs 1', { numBlocks: 40, blockSize: 1, steps: 500, vocab: 2 }],
    [
      'bs 16, roomy, watermark',
      { numBlocks: 64, blockSize: 16, steps: 400, vocab: 4, watermark: 0.1 },
    ],
    [
      'bs 2, colliding hash',
      { numBlocks: 32, blockSize: 2, steps: 600, vocab: 3, hashFn: collide },
    ],
    [
      'bs 3, constant hash',
      { numBlocks: 20, blockSize: 3, steps: 500, vocab: 2, hashFn: () => 42n },
    ],
  ];
  test.each(configs)('%s', (_name, cfg) => {
    let hits = 0;
    let exhausted = 0;
    let copies = 0;
    let evictions = 0;
    for (let seed = 1; seed <= 4; seed++) {
      const r = runSimulation({ ...cfg, seed: seed * 7919 + cfg.blockSize });
      hits += r.hits;
      exhausted += r.exhausted;
      copies += r.copies;
      evictions += r.evictions;
      if (process.env.KV_DEBUG) console.log(_name, seed, r);
    }
    // The random workload really exercised the interesting paths.
    expect(hits).toBeGreaterThan(0);
    expect(exhausted).toBeGreaterThan(0);
    expect(evictions).toBeGreaterThan(0);
    if (cfg.blockSize > 1) expect(copies).toBeGreaterThan(0); // no partial blocks at bs 1
  });
});
