/**
 * The page table of one engine step, in the CSR form of FlashInfer, as the native paged
 * attention (native/include/tachyon/attention.h) and kvAppend consume it.
 *
 * Contract. For a batch of `batch` entries (sequence b = entries[b], with n_b new tokens this
 * step, and kvLen_b = the sequence's length after its appends, new tokens included):
 * - `indptr` Int32Array[batch + 1]: indptr[0] = 0, indptr[b + 1] = indptr[b] + pages_b with
 *   pages_b = ceil(kvLen_b / blockSize).
 * - `indices` Int32Array[indptr[batch]]: sequence b's physical blocks, in position order, at
 *   indices[indptr[b] .. indptr[b + 1]). Token position p of sequence b lives in block
 *   indices[indptr[b] + floor(p / blockSize)], slot offset p % blockSize.
 * - `lastPageLen` Int32Array[batch]: tokens used in the last page, in [1, blockSize]
 *   (kvLen_b = (pages_b - 1) * blockSize + lastPageLen[b]).
 * - `kvLens` Int32Array[batch]: kvLen_b.
 * - `qoIndptr` Int32Array[batch + 1]: sequence b's query rows (its new tokens) are rows
 *   qoIndptr[b] .. qoIndptr[b + 1) of q / o; they are its LAST n_b positions
 *   kvLen_b - n_b .. kvLen_b - 1 (causal: row i attends to positions <= kvLen_b - n_b + i).
 * - `slotMapping` Int32Array[qoIndptr[batch]]: for every new token row, in row order, its
 *   physical slot block * blockSize + offset: where kvAppend writes its K and V.
 * - `positions` Int32Array[qoIndptr[batch]]: each row's token position (for RoPE).
 * - `copies` Int32Array[2 * nCopies]: block copies [src, dst, ...] (kvCopyBlocks) that must run
 *   BEFORE this step's kvAppend; destinations are distinct and never sources.
 * Every sequence appears at most once; every entry has at least one new token.
 *
 * Commit (the default): building the table closes the step (BlockManager.commitStep): the
 * pending copies are moved into the table and every appended token counts as computed, which
 * lets the step's full blocks enter the prefix cache. So that no cached block is left
 * uncomputed, every sequence with uncommitted tokens must be in the batch with exactly its
 * uncommitted tokens as its new tokens (numNewTokens defaults to that). Validation happens
 * before anything changes: a rejected table leaves the manager untouched.
 * With `commit: false` nothing changes in the manager, numNewTokens may be any count in
 * [1, length] (default: the uncommitted tokens), and `copies` is empty.
 */
import { invalidArg, KernelError } from '../runtime/errors';
import { BlockManager, SeqId, SequenceView } from './block-manager';

export interface PageTableEntry {
  seq: SeqId;
  /** New tokens of this sequence this step (its last ones). Default: its uncommitted tokens. */
  numNewTokens?: number;
}

export interface PageTable {
  batchSize: number;
  blockSize: number;
  /** The batch's sequence ids, in entry order. */
  seqIds: SeqId[];
  indptr: Int32Array;
  indices: Int32Array;
  lastPageLen: Int32Array;
  kvLens: Int32Array;
  qoIndptr: Int32Array;
  slotMapping: Int32Array;
  positions: Int32Array;
  /** Total new tokens (query rows): qoIndptr[batch]. */
  numTokens: number;
  maxQoLen: number;
  maxKvLen: number;
  copies: Int32Array;
}

export interface BuildPageTableOptions {
  /** Close the step (see the file comment). Default true. */
  commit?: boolean;
}

/** Builds the step's page table for `entries` (sequence ids or { seq, numNewTokens }). */
export function buildPageTable(
  manager: BlockManager,
  entries: readonly (SeqId | PageTableEntry)[],
  options: BuildPageTableOptions = {},
): PageTable {
  const op = 'buildPageTable';
  if (!(manager instanceof BlockManager))
    throw invalidArg(op, 'manager', 'a BlockManager', manager);
  if (!Array.isArray(entries)) throw invalidArg(op, 'entries', 'an array of entries', entries);
  const commit = options.commit ?? true;
  const batch = entries.length;
  const bs = manager.blockSize;

  // ---- validate, and size everything ----
  const seqIds: SeqId[] = new Array<SeqId>(batch);
  const newTokens = new Int32Array(batch);
  const views: SequenceView[] = [];
  const seen = new Set<SeqId>();
  let totalPages = 0;
  let totalTokens = 0;
  for (let b = 0; b < batch; b++) {
    const e = entries[b];
    const seq = typeof e === 'number' ? e : e !== null && typeof e === 'object' ? e.seq : undefined;
    if (typeof seq !== 'number' || !manager.hasSequence(seq))
      throw invalidArg(op, `entries[${b}].seq`, 'the id of a live sequence', seq);
    if (seen.has(seq))
      throw invalidArg(op, `entries[${b}].seq`, 'a sequence not already in the batch', seq);
    seen.add(seq);
    const v = manager.sequenceView(seq);
    const uncommitted = v.length - v.committedLength;
    const given = typeof e === 'number' ? undefined : e.numNewTokens;
    const n = given ?? uncommitted;
    if (commit) {
      if (n !== uncommitted || n < 1)
        throw invalidArg(
          op,
          `entries[${b}].numNewTokens`,
          uncommitted > 0
            ? `${uncommitted} (the tokens appended to sequence ${seq} since the last commit)`
            : `a sequence with tokens appended since the last commit (sequence ${seq} has none)`,
          n,
        );
    } else if (!(typeof n === 'number' && Number.isInteger(n) && n >= 1 && n <= v.length)) {
      throw invalidArg(op, `entries[${b}].numNewTokens`, `an integer in [1, ${v.length}]`, n);
    }
    seqIds[b] = seq;
    newTokens[b] = n;
    views.push(v);
    totalPages += v.blocks.length;
    totalTokens += n;
  }
  if (commit) {
    const missing = manager.uncommittedSequences().filter((s) => !seen.has(s));
    if (missing.length > 0)
      throw new KernelError(
        `${op}: sequence(s) ${missing.slice(0, 8).join(', ')}${missing.length > 8 ? ', ...' : ''} ` +
          'have tokens appended since the last commit but are not in the batch; schedule them, ' +
          'truncate or free them, or pass { commit: false }',
        { code: 'E_INVALID_ARG', op, arg: 'entries', backend: 'js' },
      );
  }

  // ---- build ----
  const indptr = new Int32Array(batch + 1);
  const indices = new Int32Array(totalPages);
  const lastPageLen = new Int32Array(batch);
  const kvLens = new Int32Array(batch);
  const qoIndptr = new Int32Array(batch + 1);
  const slotMapping = new Int32Array(totalTokens);
  const positions = new Int32Array(totalTokens);
  let maxQoLen = 0;
  let maxKvLen = 0;
  let page = 0;
  let row = 0;
  for (let b = 0; b < batch; b++) {
    const v = views[b];
    const blocks = v.blocks;
    for (let i = 0; i < blocks.length; i++) indices[page + i] = blocks[i];
    page += blocks.length;
    indptr[b + 1] = page;
    const len = v.length;
    kvLens[b] = len;
    lastPageLen[b] = len - (blocks.length - 1) * bs;
    const n = newTokens[b];
    for (let p = len - n; p < len; p++, row++) {
      slotMapping[row] = blocks[(p / bs) | 0] * bs + (p % bs);
      positions[row] = p;
    }
    qoIndptr[b + 1] = row;
    if (n > maxQoLen) maxQoLen = n;
    if (len > maxKvLen) maxKvLen = len;
  }
  const copies = commit ? manager.commitStep().copies : new Int32Array(0);
  return {
    batchSize: batch,
    blockSize: bs,
    seqIds,
    indptr,
    indices,
    lastPageLen,
    kvLens,
    qoIndptr,
    slotMapping,
    positions,
    numTokens: totalTokens,
    maxQoLen,
    maxKvLen,
    copies,
  };
}
