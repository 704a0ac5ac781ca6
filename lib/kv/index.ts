/** The paged KV block manager and the step page table (pure TypeScript; DESIGN.md section 4). */
export { BlockManager } from './block-manager';
export type {
  AdmissionCheck,
  BlockCopy,
  BlockInfo,
  BlockManagerOptions,
  CreateSequenceOptions,
  KvCacheStats,
  PrefixMatch,
  RetentionRange,
  SeqId,
  SequenceAllocation,
  SequenceView,
  StepCommit,
} from './block-manager';
export { buildPageTable } from './page-table';
export type { BuildPageTableOptions, PageTable, PageTableEntry } from './page-table';
export { fnv1aBlockHash, fnv1a64Bytes, hashBlocks } from './hash';
export type { BlockHash, BlockHashFn } from './hash';
