/**
 * The public model API: loadModel → Model { info, tokenize, detokenize, logits, generate,
 * dispose }. One Model owns its runtime (unless given one), the weights, a paged KV pool and
 * its BlockManager (with automatic prefix caching). Steps of concurrent calls are serialised
 * (a promise-chain lock): continuous batching across requests is the engine's job.
 */
import * as fs from 'node:fs';
import { KernelError, invalidArg } from '../runtime/errors';
import { mapFile, MappedFile } from '../runtime/mmap';
import { Backend, Isa, loadRuntime, Runtime } from '../runtime/runtime';
import { KvDType } from '../ops/attention';
import { RoutingPolicy } from '../ops/moe';
import { BlockManager, buildPageTable, SeqId } from '../kv/index';
import { llamaConfig, LlamaConfig } from './config';
import { GgufFile, readGguf } from './gguf';
import { LlamaModel } from './llama';
import { GenerateChunk, OutputStream } from './output';
import { Sampler, SAMPLING_OPTION_KEYS, SamplingOptions } from './sampler';
import { Tokenizer, tokenizerFromGguf } from './tokenizer';
import { WeightLoader, WeightMode } from './weights';

export interface LoadModelOptions {
  /** Default 'cpu'. */
  backend?: Backend;
  /** Compute threads (default: all cores, or TACHYON_THREADS). */
  threads?: number;
  isa?: Isa;
  /** Share an existing runtime instead of creating one (backend/threads/isa are then ignored). */
  runtime?: Runtime;
  /**
   * 'native' (default) runs every tensor in its file format (block types imported
   * losslessly). 'int4' | 'int8' | 'fp8' requantize the F32/F16/BF16 matrices at load.
   */
  weights?: WeightMode;
  /** KV cache dtype. Default 'f16'. */
  kvDtype?: KvDType;
  /** Longest sequence (prompt + generation). Default min(the model's, 4096). */
  contextLength?: number;
  /** Sequences the KV pool holds at full length at once. Default 1. */
  maxSequences?: number;
  /** Prompt tokens per forward step (chunked prefill). Default 512. */
  batchSize?: number;
  /** Automatic prefix caching of prompt blocks. Default true. */
  prefixCaching?: boolean;
  /** MoE routing policy. Default softmax top-k with renormalisation (Mixtral). */
  routing?: RoutingPolicy;
  /** Load progress: called after each layer. */
  onProgress?: (p: { stage: 'weights'; done: number; total: number }) => void;
}

export interface ModelInfo {
  path: string;
  arch: 'llama';
  name: string | undefined;
  /** Parameter count (every tensor of the file). */
  parameters: number;
  /** Bytes of tensor data in the file. */
  fileBytes: number;
  config: Readonly<LlamaConfig>;
  tokenizer: 'spm' | 'bpe';
  contextLength: number;
  weights: WeightMode;
  kvDtype: KvDType;
  /** Token slots in the KV pool. */
  kvTokens: number;
  backend: Backend;
  threads: number;
  isa: Isa;
}

export interface LogitsOptions {
  /** Logits of every position ([tokens, vocab] row-major) instead of the last one. */
  all?: boolean;
  signal?: AbortSignal;
}

export interface GenerateOptions extends SamplingOptions {
  /** Default 256 (and never past the context length). */
  maxTokens?: number;
  /** Stop strings: generation ends before the first occurrence; text is held back until disambiguated. */
  stop?: readonly string[];
  /** Keep generating after end-of-generation tokens. Default false. */
  ignoreEos?: boolean;
  /** Prepend BOS per the tokenizer when the prompt is a string. Default true. */
  addSpecial?: boolean;
  signal?: AbortSignal;
}

export type { FinishReason, GenerateChunk } from './output';

export class Model {
  readonly info: ModelInfo;
  readonly tokenizer: Tokenizer;
  /** @internal */ readonly llama: LlamaModel;
  /** @internal */ readonly blocks: BlockManager;
  private readonly ownsRuntime: boolean;
  private readonly map: MappedFile;
  private readonly batchSize: number;
  private lock: Promise<void> = Promise.resolve();
  private active = new Set<SeqId>();
  private disposed = false;

  /** @internal use loadModel() */
  constructor(args: {
    info: ModelInfo;
    tokenizer: Tokenizer;
    llama: LlamaModel;
    ownsRuntime: boolean;
    map: MappedFile;
    batchSize: number;
    prefixCaching: boolean;
  }) {
    this.info = args.info;
    this.tokenizer = args.tokenizer;
    this.llama = args.llama;
    this.ownsRuntime = args.ownsRuntime;
    this.map = args.map;
    this.batchSize = args.batchSize;
    this.blocks = new BlockManager({
      numBlocks: args.llama.cache.blocks,
      blockSize: args.llama.blockSize,
      enablePrefixCaching: args.prefixCaching,
    });
  }

  get runtime(): Runtime {
    return this.llama.rt;
  }

  tokenize(text: string, options?: { addSpecial?: boolean; parseSpecial?: boolean }): Int32Array {
    this.check('tokenize');
    return this.tokenizer.tokenize(text, options);
  }

  detokenize(ids: ArrayLike<number>, options?: { removeSpecial?: boolean }): string {
    this.check('detokenize');
    return this.tokenizer.detokenize(ids, options);
  }

  /**
   * Next-token logits after `tokens` (the last position's, vocab floats), or with `all` every
   * position's ([tokens.length, vocab] row-major). Uses a temporary sequence (prefix cache
   * hits included) that is freed afterwards.
   */
  async logits(tokens: ArrayLike<number>, options: LogitsOptions = {}): Promise<Float32Array> {
    this.check('logits');
    const ids = this.tokensArg(tokens, 'logits');
    if (ids.length === 0) throw invalidArg('logits', 'tokens', 'at least one token', tokens);
    const V = this.info.config.vocab;
    const all = options.all ?? false;
    const out = new Float32Array(all ? ids.length * V : V);
    const seq = await this.prefill(ids, options.signal, all, (rows, first) => {
      if (all) out.set(rows, first * V);
      else out.set(rows.subarray(rows.length - V));
    });
    this.release(seq);
    return out;
  }

  /**
   * Streams generated tokens. The prompt is text (tokenized with BOS per the tokenizer) or
   * token ids. Aborting the signal rejects the pending step with E_ABORTED and frees the
   * request's KV blocks; breaking out of the loop frees them too.
   */
  async *generate(
    prompt: string | ArrayLike<number>,
    options: GenerateOptions = {},
  ): AsyncGenerator<GenerateChunk, void, undefined> {
    this.check('generate');
    if (options === null || typeof options !== 'object')
      throw invalidArg('generate', 'options', 'an options object', options);
    const ids =
      typeof prompt === 'string'
        ? this.tokenizer.tokenize(prompt, { addSpecial: options.addSpecial ?? true })
        : this.tokensArg(prompt, 'generate');
    if (ids.length === 0) throw invalidArg('generate', 'prompt', 'a non-empty prompt', prompt);
    const ctx = this.info.contextLength;
    if (ids.length >= ctx)
      throw new KernelError(
        `The prompt has ${ids.length} tokens but the context length is ${ctx}: no room to generate`,
        { code: 'E_INVALID_ARG', op: 'generate', arg: 'prompt' },
      );
    const maxTokens = options.maxTokens ?? 256;
    if (!Number.isSafeInteger(maxTokens) || maxTokens < 1)
      throw invalidArg('generate', 'options.maxTokens', 'a positive integer', maxTokens);
    const V = this.info.config.vocab;
    const sampler = new Sampler(V, samplingOptions(options));
    const out = new OutputStream({
      tokenizer: this.tokenizer,
      stop: options.stop,
      ignoreEos: options.ignoreEos,
      maxTokens,
      maxLength: ctx,
      promptLength: ids.length,
    });
    sampler.acceptMany(ids);
    const signal = options.signal;
    let logits: Float32Array = new Float32Array(V);
    let seq: SeqId | undefined;
    try {
      seq = await this.prefill(ids, signal, false, (rows) =>
        logits.set(rows.subarray(rows.length - V)),
      );
      for (;;) {
        const s = sampler.sample(logits);
        sampler.accept(s.token);
        const chunk = out.push(s);
        yield chunk;
        if (chunk.finishReason) return;
        logits = await this.decodeStep(seq, s.token, signal, logits);
      }
    } finally {
      if (seq !== undefined) this.release(seq);
    }
  }

  /** Frees the KV pool, weights and (if it owns it) the runtime, after queued work. */
  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    try {
      await this.lock;
    } catch {
      /* a failed step already reported */
    }
    for (const s of this.active) if (this.blocks.hasSequence(s)) this.blocks.free(s);
    this.active.clear();
    try {
      await this.llama.rt.synchronize();
    } catch {
      /* poisoned stream: still release everything */
    }
    this.llama.dispose();
    this.map.close();
    if (this.ownsRuntime) this.llama.rt.dispose();
  }

  // ---- internals ----

  private check(op: string): void {
    if (this.disposed)
      throw new KernelError('The model has been disposed', { code: 'E_DISPOSED', op });
  }

  private tokensArg(tokens: ArrayLike<number>, op: string): Int32Array {
    if (tokens === null || typeof tokens !== 'object' || typeof tokens.length !== 'number')
      throw invalidArg(op, 'tokens', 'an array of token ids', tokens);
    const V = this.info.config.vocab;
    const ids = Int32Array.from(tokens);
    for (let i = 0; i < ids.length; i++)
      if (!(ids[i] >= 0 && ids[i] < V && ids[i] === tokens[i]))
        throw invalidArg(op, `tokens[${i}]`, `a token id in [0, ${V})`, tokens[i]);
    return ids;
  }

  /** Runs `fn` after every earlier step (steps of concurrent requests never interleave). */
  private async locked<T>(fn: () => Promise<T>): Promise<T> {
    const prev = this.lock;
    let done!: () => void;
    this.lock = new Promise<void>((r) => (done = r));
    try {
      await prev;
      return await fn();
    } finally {
      done();
    }
  }

  /**
   * Settles with `p`, or rejects with E_ABORTED as soon as `signal` aborts. The step keeps
   * running in the background (its queued kernels cannot be recalled), but the request is
   * released at once: its blocks may be reused right away because every later step is
   * ordered after it on the stream.
   */
  private abortable<T>(signal: AbortSignal | undefined, op: string, p: Promise<T>): Promise<T> {
    if (!signal) return p;
    return new Promise<T>((resolve, reject) => {
      const onAbort = () =>
        reject(
          new KernelError('The request was aborted', { code: 'E_ABORTED', op, arg: 'signal' }),
        );
      if (signal.aborted) onAbort();
      signal.addEventListener('abort', onAbort, { once: true });
      p.then(
        (v) => {
          signal.removeEventListener('abort', onAbort);
          resolve(v);
        },
        (e) => {
          signal.removeEventListener('abort', onAbort);
          reject(e);
        },
      );
    });
  }

  private throwIfAborted(signal: AbortSignal | undefined, op: string): void {
    if (signal?.aborted)
      throw new KernelError('The request was aborted', { code: 'E_ABORTED', op, arg: 'signal' });
  }

  /**
   * Admits `ids` as a new sequence and computes them in chunks of batchSize; `sink` gets each
   * chunk's logits ([rows, vocab]; only the last row unless `all`) and the chunk's first
   * row index. Returns the sequence (its KV stays; release() frees it).
   */
  private async prefill(
    ids: Int32Array,
    signal: AbortSignal | undefined,
    all: boolean,
    sink: (rows: Float32Array, firstRow: number) => void,
  ): Promise<SeqId> {
    this.throwIfAborted(signal, 'prefill');
    const ctx = this.info.contextLength;
    if (ids.length > ctx)
      throw new KernelError(`${ids.length} tokens exceed the context length ${ctx}`, {
        code: 'E_INVALID_ARG',
        op: 'prefill',
        arg: 'tokens',
      });
    let seq: SeqId | undefined;
    try {
      let done = 0;
      while (done < ids.length) {
        const step = await this.abortable(
          signal,
          'prefill',
          this.locked(async () => {
            this.check('prefill');
            this.throwIfAborted(signal, 'prefill');
            let first = done;
            let n: number;
            if (seq === undefined) {
              // With `all` every position's logits are wanted: no cached prefix.
              const cache = all ? false : undefined;
              const adm = this.blocks.checkAdmission(ids, { cache });
              n = Math.min(this.batchSize, ids.length - adm.cachedTokens);
              const a = this.blocks.createSequence(ids, { cache, numNewTokens: n });
              seq = a.seq;
              this.active.add(seq);
              first = a.cachedTokens;
            } else {
              n = Math.min(this.batchSize, ids.length - done);
              this.blocks.append(seq, ids.subarray(first, first + n));
            }
            const table = buildPageTable(this.blocks, [{ seq, numNewTokens: n }]);
            const last = first + n === ids.length;
            // Intermediate chunks of a last-logits request need no logits (one row is computed).
            const logitRows = all ? undefined : Int32Array.of(n - 1);
            const t = await this.llama.forward({
              tokens: ids.subarray(first, first + n),
              table,
              logitRows,
            });
            try {
              const data = all || last ? ((await t.read()) as Float32Array) : undefined;
              return { first, n, data };
            } finally {
              t.dispose();
            }
          }),
        );
        done = step.first + step.n;
        if (step.data) sink(step.data, step.first);
      }
      return seq!;
    } catch (e) {
      if (seq !== undefined) this.release(seq);
      throw e;
    }
  }

  private async decodeStep(
    seq: SeqId,
    token: number,
    signal: AbortSignal | undefined,
    out: Float32Array,
  ): Promise<Float32Array> {
    return this.abortable(
      signal,
      'generate',
      this.locked(async () => {
        this.check('generate');
        this.throwIfAborted(signal, 'generate');
        this.blocks.append(seq, [token]);
        const table = buildPageTable(this.blocks, [seq]);
        const t = await this.llama.forward({ tokens: Int32Array.of(token), table });
        try {
          out.set((await t.read()) as Float32Array);
        } finally {
          t.dispose();
        }
        return out;
      }),
    );
  }

  private release(seq: SeqId): void {
    if (this.active.delete(seq) && this.blocks.hasSequence(seq)) this.blocks.free(seq);
  }
}

/** Loads a GGUF model (memory-mapped; block-quantized tensors imported losslessly). */
export async function loadModel(path: string, options: LoadModelOptions = {}): Promise<Model> {
  if (typeof path !== 'string' || path === '')
    throw invalidArg('loadModel', 'path', 'a path to a GGUF file', path);
  if (options === null || typeof options !== 'object')
    throw invalidArg('loadModel', 'options', 'an options object', options);
  const mode = options.weights ?? 'native';
  if (!['native', 'int4', 'int8', 'fp8'].includes(mode))
    throw invalidArg('loadModel', 'options.weights', "'native', 'int4', 'int8' or 'fp8'", mode);
  if (!fs.existsSync(path))
    throw new KernelError(`No such model file: ${path}`, {
      code: 'E_IO',
      op: 'loadModel',
      arg: 'path',
    });
  const file: GgufFile = await readGguf(path);
  const config = llamaConfig(file);
  const tokenizer = tokenizerFromGguf(file);
  if (tokenizer.vocabSize !== config.vocab)
    throw new KernelError(
      `The tokenizer has ${tokenizer.vocabSize} tokens but token_embd.weight has ${config.vocab} rows`,
      { code: 'E_MODEL_FORMAT', op: 'loadModel', arg: 'tokenizer.ggml.tokens' },
    );
  const ctxLen = options.contextLength ?? Math.min(config.contextLength, 4096);
  if (!Number.isSafeInteger(ctxLen) || ctxLen < 2 || ctxLen > 1 << 20)
    throw invalidArg('loadModel', 'options.contextLength', 'an integer in [2, 2^20]', ctxLen);
  const maxSeqs = options.maxSequences ?? 1;
  if (!Number.isSafeInteger(maxSeqs) || maxSeqs < 1 || maxSeqs > 4096)
    throw invalidArg('loadModel', 'options.maxSequences', 'an integer in [1, 4096]', maxSeqs);
  const batchSize = options.batchSize ?? 512;
  if (!Number.isSafeInteger(batchSize) || batchSize < 1 || batchSize > 65536)
    throw invalidArg('loadModel', 'options.batchSize', 'an integer in [1, 65536]', batchSize);
  const ownsRuntime = !options.runtime;
  const rt =
    options.runtime ??
    (await loadRuntime({ backend: options.backend, threads: options.threads, isa: options.isa }));
  let map: MappedFile | undefined;
  try {
    map = mapFile(path);
    const loader = new WeightLoader(rt, file, map, mode);
    const blockSize = 16;
    // one spare block per sequence: a sequence of exactly ctxLen tokens may straddle blocks
    const kvTokens = (Math.ceil(ctxLen / blockSize) + 1) * blockSize * maxSeqs;
    const llama = new LlamaModel(
      loader,
      config,
      { kvDtype: options.kvDtype, kvTokens, blockSize, routing: options.routing },
      (i) => options.onProgress?.({ stage: 'weights', done: i + 1, total: config.layers }),
    );
    try {
      await rt.synchronize(); // surfaces import errors now, not at the first step
    } catch (e) {
      llama.dispose();
      throw e;
    }
    let params = 0;
    let bytes = 0;
    for (const t of file.tensors) {
      params += t.dims.reduce((a, b) => a * b, 1);
      bytes += t.bytes;
    }
    const info: ModelInfo = {
      path,
      arch: 'llama',
      name: config.name,
      parameters: params,
      fileBytes: bytes,
      config: Object.freeze({ ...config }),
      tokenizer: tokenizer.kind,
      contextLength: ctxLen,
      weights: mode,
      kvDtype: llama.cache.dtype,
      kvTokens: llama.cache.blocks * blockSize,
      backend: rt.backend,
      threads: rt.threads,
      isa: rt.isa,
    };
    return new Model({
      info,
      tokenizer,
      llama,
      ownsRuntime,
      map,
      batchSize,
      prefixCaching: options.prefixCaching ?? true,
    });
  } catch (e) {
    map?.close();
    if (ownsRuntime) rt.dispose();
    throw e;
  }
}

/** The sampling fields of a request's options. */
export function samplingOptions(o: SamplingOptions): SamplingOptions {
  const r: Record<string, unknown> = {};
  for (const k of SAMPLING_OPTION_KEYS) if (o[k] !== undefined) r[k] = o[k];
  return r as SamplingOptions;
}
