/**
 * Test helpers for the serving engine: a mock executor that is an honest oracle of the KV
 * contract, two mock "models", and a sequential reference.
 *
 * The mock keeps a simulated KV store (per physical slot: the token id and position written
 * there by slotMapping, after the step's block copies have run) and computes every logits row
 * from the token history it READS BACK through the page table (indptr / indices / positions).
 * So any page-table, block-reuse, copy-on-write or prefix-cache bug that makes a row see wrong
 * KV changes that row's logits, and with them the generated tokens; the reference applies the
 * same function to the true token sequence, one token at a time.
 */
import { Engine, EngineOptions, EngineRequest, EngineStream } from '../lib/engine/engine';
import { ExecuteInput, Executor } from '../lib/engine/executor';
import { GenerateChunk } from '../lib/model/output';

const imul = Math.imul;

export type MockModelKind = 'hash' | 'bigram';

/** Rolling 32-bit hash of a token history (FNV-1a over 32-bit ids, then a finaliser). */
function historyHash(tokens: ArrayLike<number>, n: number): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < n; i++) h = imul(h ^ tokens[i], 0x01000193) >>> 0;
  return mix(h ^ n);
}

function mix(x: number): number {
  x = imul(x ^ (x >>> 16), 0x7feb352d) >>> 0;
  x = imul(x ^ (x >>> 15), 0x846ca68b) >>> 0;
  return (x ^ (x >>> 16)) >>> 0;
}

/**
 * A deterministic "model": logits of the next token after `tokens[0 .. n)`, written into `out`.
 * - 'hash': pseudo-random logits in [0, 8) from a hash of the whole history.
 * - 'bigram': the next token is mostly succ(last) (cycles of 8 inside groups of 8, so outputs
 *   repeat and n-gram drafts get accepted), with noise from the whole history and, one time
 *   in 16, a history-chosen token instead: still a function of the full history.
 */
export function mockLogits(
  kind: MockModelKind,
  V: number,
  tokens: ArrayLike<number>,
  n: number,
  out: Float32Array,
): void {
  const h = historyHash(tokens, n);
  for (let v = 0; v < V; v++) {
    const r = mix(h ^ imul(v + 1, 0x9e3779b1)) / 4294967296;
    out[v] = kind === 'hash' ? r * 8 : r;
  }
  if (kind === 'bigram') {
    const last = tokens[n - 1];
    const succ = (last & ~7) + (((last & 7) + 1) & 7);
    const t = (h & 15) === 0 ? (h >>> 8) % V : succ % V;
    out[t] += 6;
  }
}

function argmax(x: Float32Array): number {
  let b = 0;
  for (let i = 1; i < x.length; i++) if (x[i] > x[b]) b = i;
  return b;
}

/** Greedy reference: the model applied to the true sequence, one token at a time. */
export function referenceGreedy(
  kind: MockModelKind,
  V: number,
  prompt: ArrayLike<number>,
  maxTokens: number,
): number[] {
  const seq = Array.from(prompt);
  const row = new Float32Array(V);
  const out: number[] = [];
  for (let i = 0; i < maxTokens; i++) {
    mockLogits(kind, V, seq, seq.length, row);
    const t = argmax(row);
    out.push(t);
    seq.push(t);
  }
  return out;
}

export interface MockExecutorOptions {
  kind?: MockModelKind;
  vocab?: number;
  blockSize?: number;
  numBlocks?: number;
  /** Called at the start of every execute (after the KV writes), e.g. to abort mid-step. */
  onExecute?: (input: ExecuteInput, step: number) => void;
  /** Make each step take this long (default: one setImmediate). */
  delayMs?: number;
}

/** An Executor over a simulated KV store (see the file comment). */
export class MockExecutor implements Executor {
  readonly vocab: number;
  readonly blockSize: number;
  readonly numBlocks: number;
  readonly kind: MockModelKind;
  /** Token id and position in every slot (-1: never written). */
  readonly kvToken: Int32Array;
  readonly kvPos: Int32Array;
  /** Contract violations seen (must stay empty). */
  readonly violations: string[] = [];
  steps = 0;
  rowsComputed = 0;
  disposed = false;
  private readonly o: MockExecutorOptions;

  constructor(o: MockExecutorOptions = {}) {
    this.o = o;
    this.kind = o.kind ?? 'hash';
    this.vocab = o.vocab ?? 64;
    this.blockSize = o.blockSize ?? 4;
    this.numBlocks = o.numBlocks ?? 256;
    this.kvToken = new Int32Array(this.numBlocks * this.blockSize).fill(-1);
    this.kvPos = new Int32Array(this.numBlocks * this.blockSize).fill(-1);
  }

  private violation(msg: string): void {
    if (this.violations.length < 20) this.violations.push(`step ${this.steps}: ${msg}`);
  }

  async execute(input: ExecuteInput): Promise<Float32Array> {
    if (this.disposed) throw new Error('mock executor used after dispose');
    const { tokens, table, logitRows } = input;
    const bs = this.blockSize;
    const V = this.vocab;
    const step = this.steps++;
    // Copies first (kvCopyBlocks runs before kvAppend).
    const c = table.copies;
    for (let i = 0; i < c.length; i += 2) {
      const src = c[i] * bs;
      const dst = c[i + 1] * bs;
      this.kvToken.copyWithin(dst, src, src + bs);
      this.kvPos.copyWithin(dst, src, src + bs);
    }
    if (tokens.length !== table.numTokens) this.violation('tokens.length !== table.numTokens');
    // Appends (kvAppend): every query row writes its slot.
    for (let r = 0; r < table.numTokens; r++) {
      const s = table.slotMapping[r];
      if (!(s >= 0 && s < this.kvToken.length)) {
        this.violation(`slot ${s} out of the pool`);
        continue;
      }
      this.kvToken[s] = tokens[r];
      this.kvPos[s] = table.positions[r];
    }
    // Structural checks of the page table.
    for (let b = 0; b < table.batchSize; b++) {
      const pages = table.indptr[b + 1] - table.indptr[b];
      const kvLen = table.kvLens[b];
      if (pages !== Math.ceil(kvLen / bs))
        this.violation(`entry ${b}: ${pages} pages, len ${kvLen}`);
      const q0 = table.qoIndptr[b];
      const q1 = table.qoIndptr[b + 1];
      for (let r = q0; r < q1; r++)
        if (table.positions[r] !== kvLen - (q1 - q0) + (r - q0))
          this.violation(`entry ${b}: row ${r} has position ${table.positions[r]}`);
    }
    this.o.onExecute?.(input, step);
    // Logits: each row reads its history back from the simulated KV.
    const out = new Float32Array(logitRows.length * V);
    const hist = new Int32Array(table.maxKvLen + 1);
    let b = 0;
    for (let i = 0; i < logitRows.length; i++) {
      const r = logitRows[i];
      while (table.qoIndptr[b + 1] <= r) b++;
      const p = table.positions[r];
      const base = table.indptr[b];
      for (let j = 0; j <= p; j++) {
        const page = base + ((j / bs) | 0);
        if (page >= table.indptr[b + 1]) {
          this.violation(`entry ${b}: position ${j} past its pages`);
          hist[j] = -7;
          continue;
        }
        const slot = table.indices[page] * bs + (j % bs);
        if (this.kvPos[slot] !== j)
          this.violation(`slot ${slot} holds position ${this.kvPos[slot]}, read as ${j}`);
        hist[j] = this.kvToken[slot];
      }
      mockLogits(this.kind, V, hist, p + 1, out.subarray(i * V, (i + 1) * V));
    }
    this.rowsComputed += table.numTokens;
    if (this.o.delayMs) await new Promise((r) => setTimeout(r, this.o.delayMs));
    else await new Promise<void>((r) => setImmediate(r));
    return out;
  }

  async dispose(): Promise<void> {
    this.disposed = true;
  }
}

export const CTX = 512;

export function mockEngine(
  exec: Partial<MockExecutorOptions> = {},
  options: EngineOptions = {},
): { engine: Engine; executor: MockExecutor } {
  const executor = new MockExecutor(exec);
  const engine = new Engine(executor, { contextLength: CTX }, options);
  return { engine, executor };
}

/** Drains a stream into its tokens (and the chunks). */
export async function collect(
  s: EngineStream,
): Promise<{ tokens: number[]; chunks: GenerateChunk[] }> {
  const chunks: GenerateChunk[] = [];
  for await (const c of s) chunks.push(c);
  return { tokens: chunks.map((c) => c.token), chunks };
}

/** Runs one request alone on a fresh engine and returns its tokens. */
export async function runAlone(make: () => Engine, req: EngineRequest): Promise<number[]> {
  const e = make();
  try {
    return (await collect(e.generate(req))).tokens;
  } finally {
    await e.dispose();
  }
}

export { rng } from './helpers';

export function randomTokens(r: () => number, n: number, V: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < n; i++) out.push((r() * V) | 0);
  return out;
}
