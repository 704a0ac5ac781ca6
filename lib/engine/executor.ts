/**
 * What the engine drives: one forward step over a ragged batch. The model executor runs a
 * loaded Model's forward pass over a KV pool of the engine's own (sized by kvBlocks /
 * kvMemory); tests drive the engine with a mock executor instead.
 */
import { KernelError } from '../runtime/errors';
import { KvDType } from '../ops/attention';
import { PageTable } from '../kv/index';
import { Model } from '../model/model';
import type { KvCache } from '../ops/attention';

export interface ExecuteInput {
  /** Query-row token ids in page-table row order. */
  tokens: Int32Array;
  table: PageTable;
  /** Rows that need logits, ascending. */
  logitRows: Int32Array;
}

export interface Executor {
  readonly vocab: number;
  readonly blockSize: number;
  /** Blocks in the KV pool the page tables index. */
  readonly numBlocks: number;
  /** Logits of the requested rows: [logitRows.length, vocab], row-major. */
  execute(input: ExecuteInput): Promise<Float32Array>;
  dispose(): Promise<void>;
}

export interface KvSizing {
  /** Blocks of the engine's KV pool. */
  kvBlocks?: number;
  /** Or bytes for it (blocks = floor(kvMemory / bytes per block)). Default 512 MiB. */
  kvMemory?: number;
  /** Default: the model's KV dtype. */
  kvDtype?: KvDType;
}

/** Runs a Model's forward pass on a KV pool of its own. */
export class ModelExecutor implements Executor {
  readonly vocab: number;
  readonly blockSize: number;
  readonly numBlocks: number;
  readonly cache: KvCache;
  readonly bytesPerBlock: number;
  private readonly model: Model;

  constructor(model: Model, sizing: KvSizing = {}) {
    const llama = model.llama;
    this.model = model;
    this.vocab = model.info.config.vocab;
    this.blockSize = llama.blockSize;
    const dtype = sizing.kvDtype ?? model.info.kvDtype;
    this.bytesPerBlock = llama.kvBlockBytes(dtype);
    let blocks: number;
    if (sizing.kvBlocks !== undefined) {
      blocks = sizing.kvBlocks;
      if (!Number.isSafeInteger(blocks) || blocks < 1)
        throw new KernelError(`Expected a positive integer for kvBlocks but received ${blocks}`, {
          code: 'E_INVALID_ARG',
          op: 'createEngine',
          arg: 'options.kvBlocks',
        });
    } else {
      const mem = sizing.kvMemory ?? 512 * 2 ** 20;
      blocks = Math.floor(mem / this.bytesPerBlock);
      if (!(typeof mem === 'number' && mem > 0) || blocks < 1)
        throw new KernelError(
          `kvMemory ${mem} holds no KV block (one block takes ${this.bytesPerBlock} bytes)`,
          { code: 'E_INVALID_ARG', op: 'createEngine', arg: 'options.kvMemory' },
        );
    }
    this.numBlocks = blocks;
    this.cache = llama.createCache(blocks, dtype);
  }

  async execute(input: ExecuteInput): Promise<Float32Array> {
    const t = await this.model.llama.forward({ ...input, cache: this.cache, batchInvariant: true });
    try {
      return (await t.read()) as Float32Array;
    } finally {
      t.dispose();
    }
  }

  async dispose(): Promise<void> {
    try {
      await this.model.runtime.synchronize();
    } catch {
      /* a failed step already reported */
    }
    this.cache.dispose();
  }
}
