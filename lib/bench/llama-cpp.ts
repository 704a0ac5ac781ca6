/**
 * The llama.cpp oracle: a small typed bridge over node-llama-cpp, used to produce golden
 * fixtures (scripts/llama-cpp/golden.ts) and to benchmark Tachyon against llama.cpp.
 *
 * node-llama-cpp is NOT a dependency: `node scripts/llama-cpp/install.mjs` installs the pinned
 * version with only this platform's prebuilt CPU binary into .cache/node-llama-cpp/ (see
 * docs/llama-cpp.md). It is ESM-only, so it is loaded with a real dynamic import() at run time.
 * That needs a plain Node process (tsx, node), or jest under
 * NODE_OPTIONS=--experimental-vm-modules (its vm sandbox refuses dynamic import() otherwise);
 * ordinary tests read the committed fixtures in tests/fixtures/llama/ instead.
 */
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import { packageRoot } from '../runtime/binding';
import { KernelError, invalidArg } from '../runtime/errors';

/** The node-llama-cpp version that produced the shared references. Keep in sync with install.mjs. */
export const NODE_LLAMA_CPP_VERSION = '3.22.1';

/* eslint-disable @typescript-eslint/no-explicit-any */
// node-llama-cpp's own types live in the uninstalled package, so its objects are typed loosely
// here and wrapped in the strict interfaces below.
type Any = any;

// tsc (module: commonjs) rewrites `import(x)` into `require(x)`, which cannot load ESM; a
// Function body is opaque to tsc, so this stays a genuine dynamic import.
const importEsm = new Function('s', 'return import(s)') as (specifier: string) => Promise<Any>;

/** Where the oracle is installed: $TACHYON_LLAMA_CPP_DIR or <package root>/.cache/node-llama-cpp. */
export function llamaCppDir(): string {
  const env = process.env.TACHYON_LLAMA_CPP_DIR;
  return env ? path.resolve(env) : path.join(packageRoot(), '.cache', 'node-llama-cpp');
}

function nodeLlamaCppRoot(): string {
  return path.join(llamaCppDir(), 'node_modules', 'node-llama-cpp');
}

function installedVersion(): string | undefined {
  try {
    const pj = path.join(nodeLlamaCppRoot(), 'package.json');
    return JSON.parse(fs.readFileSync(pj, 'utf8')).version;
  } catch {
    return undefined;
  }
}

/** True when the pinned node-llama-cpp is installed (does not load it). */
export function isLlamaCppInstalled(): boolean {
  return installedVersion() === NODE_LLAMA_CPP_VERSION;
}

function notInstalled(op: string): KernelError {
  const have = installedVersion();
  return new KernelError(
    `node-llama-cpp ${NODE_LLAMA_CPP_VERSION} is not installed in ${llamaCppDir()}` +
      (have ? ` (found ${have})` : '') +
      '; install it with: node scripts/llama-cpp/install.mjs',
    { code: 'E_UNSUPPORTED', op, backend: 'js' },
  );
}

interface Loaded {
  nlc: Any;
  llama: Any;
}
let loaded: Promise<Loaded> | undefined;

/**
 * Loads node-llama-cpp and its llama.cpp binary once per process: CPU only, prebuilt binary
 * only (never downloads or builds), maxThreads 0 so a context's `threads` is exact rather than
 * a hint node-llama-cpp may lower.
 */
function loadLlama(): Promise<Loaded> {
  if (!isLlamaCppInstalled()) return Promise.reject(notInstalled('loadLlamaCpp'));
  loaded ??= (async () => {
    const entry = path.join(nodeLlamaCppRoot(), 'dist', 'index.js');
    let nlc: Any;
    try {
      nlc = await importEsm(pathToFileURL(entry).href);
    } catch (e) {
      if (String((e as { code?: unknown }).code).startsWith('ERR_VM_DYNAMIC_IMPORT'))
        throw new KernelError(
          'node-llama-cpp is an ES module and this vm sandbox (jest) cannot import() it: ' +
            'run jest with NODE_OPTIONS=--experimental-vm-modules, or use node/tsx',
          { code: 'E_UNSUPPORTED', op: 'loadLlamaCpp', backend: 'js' },
        );
      throw e;
    }
    const level = process.env.TACHYON_LLAMA_CPP_LOG ?? 'error';
    const llama = await nlc.getLlama({
      gpu: false,
      build: 'never',
      usePrebuiltBinaries: true,
      skipDownload: true,
      progressLogs: false,
      maxThreads: 0,
      logLevel: level,
    });
    return { nlc, llama };
  })();
  loaded.catch(() => (loaded = undefined));
  return loaded;
}

/** Releases the process-wide llama.cpp instance (after every model handle is disposed). */
export async function unloadLlamaCpp(): Promise<void> {
  const l = loaded;
  loaded = undefined;
  if (l) await (await l).llama.dispose();
}

/** Which ggml CPU backend llama.cpp picked (e.g. libggml-cpu-haswell.so); Linux only. */
export function llamaCppCpuVariant(): string | undefined {
  try {
    const maps = fs.readFileSync('/proc/self/maps', 'utf8');
    const m = /\/(libggml-cpu-[\w.-]+\.so)\s*$/m.exec(maps);
    return m?.[1];
  } catch {
    return undefined;
  }
}

/** The llama.cpp commit node-llama-cpp bundles (head of llama/gitRelease.bundle). */
function bundleCommit(): string | undefined {
  try {
    const fd = fs.openSync(path.join(nodeLlamaCppRoot(), 'llama', 'gitRelease.bundle'), 'r');
    const buf = Buffer.alloc(256);
    const n = fs.readSync(fd, buf, 0, 256, 0);
    fs.closeSync(fd);
    return /^([0-9a-f]{40}) /m.exec(buf.toString('latin1', 0, n))?.[1];
  } catch {
    return undefined;
  }
}

export interface LlamaCppVersions {
  nodeLlamaCpp: string;
  /** node-llama-cpp's llama.cpp release tag (its own numbering, e.g. v0.5.0). */
  llamaCppRelease: string;
  llamaCppRepo: string;
  /** The llama.cpp git commit of that release. */
  llamaCppCommit: string | undefined;
  build: string;
  cpuVariant: string | undefined;
  systemInfo: string;
}

/** Versions of the oracle engine (loads it). */
export async function llamaCppVersions(): Promise<LlamaCppVersions> {
  const { llama } = await loadLlama();
  return {
    nodeLlamaCpp: installedVersion() ?? '?',
    llamaCppRelease: llama.llamaCppRelease.release,
    llamaCppRepo: llama.llamaCppRelease.repo,
    llamaCppCommit: bundleCommit(),
    build: llama.buildType,
    cpuVariant: llamaCppCpuVariant(),
    systemInfo: String(llama.systemInfo).trim(),
  };
}

export interface LlamaCppOptions {
  /** CPU threads for evaluation (exact, not a hint). Default 1. */
  threads?: number;
  /** KV cache size in tokens. Default min(4096, the model's training context). */
  contextSize?: number;
  /** Tokens per llama_decode batch. Default 512. */
  batchSize?: number;
  /** Default false: the shared references were produced with flash attention off. */
  flashAttention?: boolean;
}

export interface LlamaCppTokenizeOptions {
  /** Add BOS/EOS as the model's vocabulary asks (llama.cpp add_special). Default true. */
  addSpecial?: boolean;
  /** Parse special-token text such as `<s>` into its id (llama.cpp parse_special). Default false. */
  parseSpecial?: boolean;
}

export interface LlamaCppGreedyResult {
  /** Exactly n generated ids (generation does not stop at end-of-generation tokens). */
  tokens: number[];
  /** Index in `tokens` of the first end-of-generation token, or -1. */
  firstEogIndex: number;
}

export interface LlamaCppBenchOptions {
  /** Prompt length for the prefill test (llama-bench `-p`). Default 512. */
  promptTokens?: number;
  /** Tokens generated for the decode test (llama-bench `-n`). Default 128. */
  decodeTokens?: number;
  /** Default: the handle's thread count. */
  threads?: number;
  /** Timed runs per test. Default 5. */
  repeats?: number;
  /** Untimed runs first. Default 1. */
  warmup?: number;
}

export interface LlamaCppBenchResult {
  threads: number;
  promptTokens: number;
  decodeTokens: number;
  /** Median over the runs. */
  promptTokensPerS: number;
  decodeTokensPerS: number;
  /** Fastest run. */
  promptTokensPerSBest: number;
  decodeTokensPerSBest: number;
  promptRuns: number[];
  decodeRuns: number[];
}

export interface LlamaCppInfo extends LlamaCppVersions {
  modelPath: string;
  vocabSize: number;
  bos: number | undefined;
  eos: number | undefined;
  addBos: boolean;
  addEos: boolean;
  threads: number;
  contextSize: number;
  batchSize: number;
  flashAttention: boolean;
}

export interface LlamaCppModel {
  readonly info: LlamaCppInfo;
  tokenize(text: string, options?: LlamaCppTokenizeOptions): number[];
  /** llama.cpp's llama_detokenize (remove_special false); `unparseSpecial` renders e.g. `<s>`. */
  detokenize(ids: ArrayLike<number>, options?: { unparseSpecial?: boolean }): string;
  isEog(id: number): boolean;
  /** Raw next-token logits after evaluating `tokens` as one sequence from position 0. */
  logits(tokens: ArrayLike<number>): Promise<Float32Array>;
  /** Raw logits at every position (`result[i]` predicts token i + 1). */
  allLogits(tokens: ArrayLike<number>): Promise<Float32Array[]>;
  /** Greedy (temperature 0, no penalties) continuation: exactly n ids, EOS included. */
  greedy(promptTokens: ArrayLike<number>, n: number): Promise<number[]>;
  greedyRun(promptTokens: ArrayLike<number>, n: number): Promise<LlamaCppGreedyResult>;
  /** llama-bench style pp/tg throughput; see docs/llama-cpp.md for what is timed. */
  bench(options?: LlamaCppBenchOptions): Promise<LlamaCppBenchResult>;
  dispose(): Promise<void>;
}

function checkInt(op: string, arg: string, v: unknown, min: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min)
    throw invalidArg(op, arg, `an integer >= ${min}`, v);
  return v;
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

/** Deterministic pseudo-random prompt (llama-bench uses random ids too), BOS first if used. */
function benchPrompt(n: number, vocab: number, bos: number | undefined): number[] {
  const out: number[] = [];
  if (bos !== undefined) out.push(bos);
  let s = 0x9e3779b9;
  while (out.length < n) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out.push((s >>> 8) % vocab);
  }
  return out;
}

/** Opens a GGUF model in llama.cpp (CPU). */
export async function openLlamaCpp(
  modelPath: string,
  options: LlamaCppOptions = {},
): Promise<LlamaCppModel> {
  const op = 'openLlamaCpp';
  if (typeof modelPath !== 'string' || !fs.existsSync(modelPath))
    throw invalidArg(op, 'modelPath', 'the path of an existing GGUF file', modelPath);
  const threads = checkInt(op, 'options.threads', options.threads ?? 1, 1);
  const batchSize = checkInt(op, 'options.batchSize', options.batchSize ?? 512, 1);
  const flashAttention = options.flashAttention ?? false;
  if (options.contextSize !== undefined)
    checkInt(op, 'options.contextSize', options.contextSize, 1);

  const { llama } = await loadLlama();
  const model: Any = await llama.loadModel({ modelPath: path.resolve(modelPath), gpuLayers: 0 });
  const contextSize = options.contextSize ?? Math.min(4096, model.trainContextSize || 4096);
  const tokensMeta = model.fileInfo?.metadata?.tokenizer?.ggml?.tokens;
  const vocabSize: number = Array.isArray(tokensMeta) ? tokensMeta.length : 0;

  const newContext = (t: number, size: number): Promise<Any> =>
    model.createContext({
      contextSize: size,
      batchSize: Math.min(batchSize, size),
      flashAttention,
      threads: { ideal: t, min: t },
      sequences: 1,
    });
  const context: Any = await newContext(threads, contextSize);
  const seq: Any = context.getSequence();
  let disposed = false;

  const bos: number | undefined = model.tokens.bos ?? undefined;
  const eos: number | undefined = model.tokens.eos ?? undefined;
  const addBos: boolean = !!model.tokens.shouldPrependBosToken;
  const addEos: boolean = !!model.tokens.shouldAppendEosToken;

  const info: LlamaCppInfo = {
    ...(await llamaCppVersions()),
    modelPath: path.resolve(modelPath),
    vocabSize,
    bos,
    eos,
    addBos,
    addEos,
    threads,
    contextSize: context.contextSize,
    batchSize: context.batchSize,
    flashAttention,
  };

  const ensureOpen = (name: string): void => {
    if (disposed)
      throw new KernelError('The llama.cpp model handle is disposed', {
        code: 'E_DISPOSED',
        op: name,
        backend: 'js',
      });
  };
  const toIds = (name: string, arg: string, ids: ArrayLike<number>, room: number): number[] => {
    const out = Array.from(ids ?? []);
    if (out.length === 0) throw invalidArg(name, arg, 'a non-empty token list', ids);
    for (const t of out)
      if (!Number.isInteger(t) || t < 0 || (vocabSize > 0 && t >= vocabSize))
        throw invalidArg(name, arg, `token ids in [0, ${vocabSize})`, t);
    if (out.length + room > info.contextSize)
      throw invalidArg(
        name,
        arg,
        `at most ${info.contextSize - room} tokens (context size)`,
        out.length,
      );
    return out;
  };
  const toLogits = (m: Map<number, number>): Float32Array => {
    const n = vocabSize || m.size;
    const out = new Float32Array(n);
    for (const [id, v] of m) out[id] = v;
    return out;
  };

  // Evaluates `tokens` from position 0 and returns llama.cpp's raw logits at the flagged
  // positions. generateNext.logits returns the candidate array after the sampler chain; with
  // temperature 0 and no penalties/bias that chain is only the greedy sampler, which selects
  // without touching the values, so these are the raw llama_get_logits_ith rows.
  const evalLogits = async (tokens: number[], all: boolean): Promise<Float32Array[]> => {
    await seq.clearHistory();
    const last = tokens.length - 1;
    const input = tokens.map((t, i) =>
      all || i === last ? [t, { generateNext: { logits: true, options: { temperature: 0 } } }] : t,
    );
    const out: Any[] = await seq.controlledEvaluate(input);
    const rows: Float32Array[] = [];
    for (let i = all ? 0 : last; i <= last; i++) {
      const m = out[i]?.next?.logits;
      if (!(m instanceof Map))
        throw new KernelError(`llama.cpp returned no logits at ${i}`, {
          code: 'E_BACKEND',
          op: 'llamaCpp.logits',
        });
      rows.push(toLogits(m));
    }
    return rows;
  };

  async function greedyRun(prompt: ArrayLike<number>, n: number): Promise<LlamaCppGreedyResult> {
    ensureOpen('llamaCpp.greedy');
    checkInt('llamaCpp.greedy', 'n', n, 0);
    const ids = toIds('llamaCpp.greedy', 'promptTokens', prompt, n);
    const tokens: number[] = [];
    let firstEogIndex = -1;
    if (n === 0) return { tokens, firstEogIndex };
    await seq.clearHistory();
    // temperature 0 = llama.cpp's greedy sampler; no repeat penalty/bias is configured;
    // yieldEogToken keeps going past EOS so the run always has n tokens.
    for await (const t of seq.evaluate(ids, { temperature: 0, yieldEogToken: true })) {
      if (firstEogIndex < 0 && model.isEogToken(t)) firstEogIndex = tokens.length;
      tokens.push(t);
      if (tokens.length >= n) break;
    }
    return { tokens, firstEogIndex };
  }

  async function benchOn(ctxSeq: Any, t: number, p: number, n: number, reps: number, warm: number) {
    const prompt = benchPrompt(p, vocabSize || 2, addBos ? bos : undefined);
    const ppInput = prompt.map((tok, i) =>
      i === p - 1 ? [tok, { generateNext: { token: true } }] : tok,
    );
    const start = prompt[0];
    const promptRuns: number[] = [];
    const decodeRuns: number[] = [];
    for (let r = 0; r < warm + reps; r++) {
      // prefill: one sequence of p tokens from an empty cache, logits for the last one only
      // (like llama-bench pp). clearHistory is outside the timed region.
      await ctxSeq.clearHistory();
      let t0 = performance.now();
      await ctxSeq.controlledEvaluate(ppInput);
      const ppMs = performance.now() - t0;
      // decode: n single-token llama_decode calls from an empty cache, each followed by
      // llama.cpp's greedy sampling (llama-bench tg decodes n tokens without sampling).
      await ctxSeq.clearHistory();
      let got = 0;
      let tgMs = 0;
      t0 = performance.now();
      for await (const _tok of ctxSeq.evaluate([start], { temperature: 0, yieldEogToken: true })) {
        if (++got >= n) {
          tgMs = performance.now() - t0;
          break;
        }
      }
      if (r >= warm) {
        promptRuns.push((p * 1000) / ppMs);
        decodeRuns.push((n * 1000) / tgMs);
      }
    }
    return {
      threads: t,
      promptTokens: p,
      decodeTokens: n,
      promptTokensPerS: median(promptRuns),
      decodeTokensPerS: median(decodeRuns),
      promptTokensPerSBest: Math.max(...promptRuns),
      decodeTokensPerSBest: Math.max(...decodeRuns),
      promptRuns,
      decodeRuns,
    };
  }

  return {
    info,
    tokenize(text, opts = {}) {
      ensureOpen('llamaCpp.tokenize');
      if (typeof text !== 'string') throw invalidArg('llamaCpp.tokenize', 'text', 'a string', text);
      // node-llama-cpp's tokenize never adds BOS/EOS (it calls common_tokenize with
      // add_special false), so add_special is applied here the way llama_tokenize does it.
      const ids: number[] = text === '' ? [] : model.tokenize(text, opts.parseSpecial ?? false);
      if (opts.addSpecial ?? true) {
        if (addBos && bos !== undefined) ids.unshift(bos);
        if (addEos && eos !== undefined) ids.push(eos);
      }
      return ids;
    },
    detokenize(ids, opts = {}) {
      ensureOpen('llamaCpp.detokenize');
      return model.detokenize(Array.from(ids), opts.unparseSpecial ?? false);
    },
    isEog(id) {
      return model.isEogToken(id);
    },
    async logits(tokens) {
      ensureOpen('llamaCpp.logits');
      return (await evalLogits(toIds('llamaCpp.logits', 'tokens', tokens, 0), false))[0];
    },
    async allLogits(tokens) {
      ensureOpen('llamaCpp.allLogits');
      return evalLogits(toIds('llamaCpp.allLogits', 'tokens', tokens, 0), true);
    },
    greedyRun,
    async greedy(prompt, n) {
      return (await greedyRun(prompt, n)).tokens;
    },
    async bench(opts = {}) {
      ensureOpen('llamaCpp.bench');
      const name = 'llamaCpp.bench';
      const p = checkInt(name, 'promptTokens', opts.promptTokens ?? 512, 1);
      const n = checkInt(name, 'decodeTokens', opts.decodeTokens ?? 128, 1);
      const t = checkInt(name, 'threads', opts.threads ?? threads, 1);
      const reps = checkInt(name, 'repeats', opts.repeats ?? 5, 1);
      const warm = checkInt(name, 'warmup', opts.warmup ?? 1, 0);
      const need = Math.max(p, n + 1);
      if (t === threads && need <= info.contextSize) return benchOn(seq, t, p, n, reps, warm);
      const ctx: Any = await newContext(t, need);
      try {
        return await benchOn(ctx.getSequence(), t, p, n, reps, warm);
      } finally {
        await ctx.dispose();
      }
    },
    async dispose() {
      if (disposed) return;
      disposed = true;
      await context.dispose();
      await model.dispose();
    },
  };
}

export interface LlamaCppBestBench {
  /** Per thread count, in the order given. */
  runs: LlamaCppBenchResult[];
  /** The thread count with the highest median for each test, and that median. */
  prompt: { threads: number; tokensPerS: number };
  decode: { threads: number; tokensPerS: number };
}

/**
 * llama.cpp's best throughput over several thread counts (default 1 and 2: on a small VM the
 * prebuilt binary can decode slower with 2 threads than with 1, so both are measured and the
 * better one is what Tachyon is compared with). Thread counts are interleaved run by run so
 * that noise from other processes hits them alike.
 */
export async function benchLlamaCpp(
  modelPath: string,
  options: Omit<LlamaCppBenchOptions, 'threads'> & { threads?: number[] } = {},
): Promise<LlamaCppBestBench> {
  const threadList = options.threads ?? [1, Math.min(2, os.availableParallelism())];
  const uniq = [...new Set(threadList)];
  const repeats = options.repeats ?? 5;
  const handles: LlamaCppModel[] = [];
  try {
    for (const t of uniq) {
      const ctxSize = Math.max(options.promptTokens ?? 512, (options.decodeTokens ?? 128) + 1);
      handles.push(await openLlamaCpp(modelPath, { threads: t, contextSize: ctxSize }));
    }
    const acc = uniq.map((t) => ({ t, pp: [] as number[], tg: [] as number[] }));
    for (let r = 0; r < repeats; r++) {
      for (let i = 0; i < uniq.length; i++) {
        const res = await handles[i].bench({
          promptTokens: options.promptTokens,
          decodeTokens: options.decodeTokens,
          repeats: 1,
          warmup: r === 0 ? (options.warmup ?? 1) : 0,
        });
        acc[i].pp.push(...res.promptRuns);
        acc[i].tg.push(...res.decodeRuns);
      }
    }
    const runs: LlamaCppBenchResult[] = acc.map(({ t, pp, tg }) => ({
      threads: t,
      promptTokens: options.promptTokens ?? 512,
      decodeTokens: options.decodeTokens ?? 128,
      promptTokensPerS: median(pp),
      decodeTokensPerS: median(tg),
      promptTokensPerSBest: Math.max(...pp),
      decodeTokensPerSBest: Math.max(...tg),
      promptRuns: pp,
      decodeRuns: tg,
    }));
    const best = (key: 'promptTokensPerS' | 'decodeTokensPerS') => {
      const r = runs.reduce((a, b) => (b[key] > a[key] ? b : a));
      return { threads: r.threads, tokensPerS: r[key] };
    };
    return { runs, prompt: best('promptTokensPerS'), decode: best('decodeTokensPerS') };
  } finally {
    for (const h of handles) await h.dispose();
  }
}

// ---------------------------------------------------------------------------------------------
// Native llama-bench, built from the same llama.cpp commit by scripts/llama-cpp/build-native.sh
// with GGML_NATIVE=ON (-march=native) into .cache/llama.cpp/: llama.cpp's own numbers, without
// node-llama-cpp's per-token JavaScript/async overhead.

/** Where build-native.sh puts llama-bench: $TACHYON_LLAMA_BENCH or .cache/llama.cpp/build/bin. */
export function llamaBenchPath(): string {
  const env = process.env.TACHYON_LLAMA_BENCH;
  if (env) return path.resolve(env);
  const exe = process.platform === 'win32' ? 'llama-bench.exe' : 'llama-bench';
  return path.join(packageRoot(), '.cache', 'llama.cpp', 'build', 'bin', exe);
}

export function isLlamaBenchBuilt(): boolean {
  return fs.existsSync(llamaBenchPath());
}

export interface LlamaBenchOptions {
  /** One or more thread counts (llama-bench -t). Default [1, 2]. */
  threads?: number | number[];
  /** Prompt tokens (-p). Default 512. */
  p?: number;
  /** Generated tokens (-n). Default 128. */
  n?: number;
  /** Repetitions (-r). Default 5. */
  r?: number;
  /** Flash attention (-fa). Default false. */
  flashAttention?: boolean;
}

export interface LlamaBenchResult {
  threads: number;
  /** Mean tokens/s over the repetitions, as llama-bench prints. */
  promptTokensPerS: number;
  decodeTokensPerS: number;
  promptStddev: number;
  decodeStddev: number;
  promptRuns: number[];
  decodeRuns: number[];
  buildCommit: string;
  cpuInfo: string;
  backends: string;
}

/** Runs the native llama-bench (`-o json`) and returns one result per thread count. */
export async function runLlamaBench(
  modelPath: string,
  options: LlamaBenchOptions = {},
): Promise<LlamaBenchResult[]> {
  const op = 'runLlamaBench';
  const bin = llamaBenchPath();
  if (!fs.existsSync(bin))
    throw new KernelError(
      `llama-bench is not built (${bin}); build it with: bash scripts/llama-cpp/build-native.sh`,
      { code: 'E_UNSUPPORTED', op, backend: 'js' },
    );
  if (typeof modelPath !== 'string' || !fs.existsSync(modelPath))
    throw invalidArg(op, 'modelPath', 'the path of an existing GGUF file', modelPath);
  const threads = [options.threads ?? [1, 2]].flat();
  threads.forEach((t) => checkInt(op, 'options.threads', t, 1));
  const p = checkInt(op, 'options.p', options.p ?? 512, 1);
  const n = checkInt(op, 'options.n', options.n ?? 128, 1);
  const r = checkInt(op, 'options.r', options.r ?? 5, 1);
  const args = ['-m', modelPath, '-p', String(p), '-n', String(n), '-r', String(r)];
  args.push('-t', threads.join(','), '-fa', options.flashAttention ? '1' : '0', '-o', 'json');
  const stdout = await new Promise<string>((resolve, reject) =>
    execFile(bin, args, { maxBuffer: 64 << 20 }, (err, out, errOut) =>
      err
        ? reject(
            new KernelError(`llama-bench failed: ${err.message}\n${String(errOut).slice(-2000)}`, {
              code: 'E_BACKEND',
              op,
              backend: 'js',
            }),
          )
        : resolve(out),
    ),
  );
  const rows: Any[] = JSON.parse(stdout);
  return threads.map((t) => {
    const pp = rows.find((x) => x.n_threads === t && x.n_prompt === p && x.n_gen === 0);
    const tg = rows.find((x) => x.n_threads === t && x.n_gen === n && x.n_prompt === 0);
    if (!pp || !tg)
      throw new KernelError(`llama-bench output lacks the threads=${t} results`, {
        code: 'E_BACKEND',
        op,
        backend: 'js',
      });
    return {
      threads: t,
      promptTokensPerS: pp.avg_ts,
      decodeTokensPerS: tg.avg_ts,
      promptStddev: pp.stddev_ts,
      decodeStddev: tg.stddev_ts,
      promptRuns: pp.samples_ts,
      decodeRuns: tg.samples_ts,
      buildCommit: pp.build_commit,
      cpuInfo: pp.cpu_info,
      backends: pp.backends,
    };
  });
}

// ---------------------------------------------------------------------------------------------
// Serving: several requests at once on one context with `parallel` sequences, the way
// llama-server's slots work (the `npx tachyon bench serve` comparison).

export interface LlamaCppServeRequest {
  /** Prompt token ids, BOS included when the model uses it (nothing is added). */
  prompt: ArrayLike<number>;
  /** Generated tokens: exactly this many (end-of-generation tokens do not stop it). */
  maxTokens: number;
  /** When the request arrives, in ms after the run starts. Default 0. */
  arrivalMs?: number;
}

export interface LlamaCppServeOptions {
  modelPath: string;
  /** Sequences (slots) in the context, served concurrently. */
  parallel: number;
  /** CPU threads (exact). */
  threads: number;
  /**
   * KV cells per sequence (node-llama-cpp's contextSize; the KV cache holds parallel times as
   * many). Default: the longest prompt + maxTokens, + 1. Smaller values are refused, since a
   * context shift would change the work.
   */
  contextSize?: number;
  /** Tokens per llama_decode (llama.cpp n_batch). Default 512. */
  batchSize?: number;
  /** Must be true (the default): generation never stops at EOS. */
  ignoreEos?: true;
  /** Default false, as in the shared references. */
  flashAttention?: boolean;
  /** One untimed lockstep tick on every sequence first. Default true. */
  warmup?: boolean;
  /**
   * Stop after this many ms of serving; the result then has completed false and partial
   * figures. bestServeLlamaCpp uses it to cut a thread count that cannot win.
   */
  deadlineMs?: number;
}

export interface LlamaCppServeRequestResult {
  /** First generated token − arrival (queueing and prefill included). */
  ttftMs: number;
  /** (last token − first token) / (n − 1); 0 when n = 1. */
  tpotMs: number;
  /** Gaps between consecutive generated tokens (n − 1 of them). */
  itlMs: number[];
  /** Start of service (a sequence took it) − arrival. */
  queueMs: number;
  promptTokens: number;
  outputTokens: number;
  /** The generated ids (greedy). */
  tokens: Int32Array;
  /** Arrival, start of service and last token, in ms after the run started. */
  arrivalMs: number;
  startMs: number;
  endMs: number;
}

export interface LlamaCppServeResult {
  threads: number;
  parallel: number;
  /** From the start of the run to the last generated token. */
  wallMs: number;
  outputTokens: number;
  promptTokens: number;
  /** outputTokens / wallMs. */
  tokensPerS: number;
  /** In the order the requests were given. */
  requests: LlamaCppServeRequestResult[];
  /** False when deadlineMs stopped the run (unfinished requests have NaN latencies). */
  completed: boolean;
  /** Lockstep ticks: each submits one token (or the prompt) of every active sequence. */
  ticks: number;
  /**
   * llama_decode calls and the tokens they carried, counted on node-llama-cpp's native context;
   * with full batching decodeCalls equals ticks (more only when prompts overflow batchSize).
   * Undefined when the counter could not be attached.
   */
  decodeCalls: number | undefined;
  decodedTokens: number | undefined;
  /** KV cells per sequence and llama_decode batch size actually used. */
  contextSize: number;
  batchSize: number;
}

interface ServeJob {
  index: number;
  prompt: number[];
  maxTokens: number;
  arrivalMs: number;
}

/** Validates without loading anything, so bad input fails fast (and without node-llama-cpp). */
function checkServe(
  op: string,
  requests: readonly LlamaCppServeRequest[],
  options: Omit<LlamaCppServeOptions, 'threads'>,
): ServeJob[] {
  if (!Array.isArray(requests) || requests.length === 0)
    throw invalidArg(op, 'requests', 'a non-empty array of requests', requests);
  if (typeof options !== 'object' || options === null)
    throw invalidArg(op, 'options', 'an object', options);
  if (typeof options.modelPath !== 'string' || !fs.existsSync(options.modelPath))
    throw invalidArg(
      op,
      'options.modelPath',
      'the path of an existing GGUF file',
      options.modelPath,
    );
  checkInt(op, 'options.parallel', options.parallel, 1);
  if (options.contextSize !== undefined)
    checkInt(op, 'options.contextSize', options.contextSize, 2);
  if (options.batchSize !== undefined) checkInt(op, 'options.batchSize', options.batchSize, 1);
  if (options.ignoreEos !== undefined && options.ignoreEos !== true)
    throw invalidArg(
      op,
      'options.ignoreEos',
      'true (generation always ignores EOS)',
      options.ignoreEos,
    );
  if (
    options.deadlineMs !== undefined &&
    !(typeof options.deadlineMs === 'number' && options.deadlineMs > 0)
  )
    throw invalidArg(op, 'options.deadlineMs', 'a positive number', options.deadlineMs);
  return requests.map((r, i) => {
    const at = `requests[${i}]`;
    if (typeof r !== 'object' || r === null) throw invalidArg(op, at, 'a request object', r);
    const prompt: number[] = Array.from<number>(r.prompt ?? []);
    if (prompt.length === 0)
      throw invalidArg(op, `${at}.prompt`, 'a non-empty token list', r.prompt);
    for (const t of prompt)
      if (!Number.isInteger(t) || t < 0) throw invalidArg(op, `${at}.prompt`, 'token ids >= 0', t);
    const maxTokens = checkInt(op, `${at}.maxTokens`, r.maxTokens, 1);
    const arrivalMs = r.arrivalMs ?? 0;
    if (typeof arrivalMs !== 'number' || !Number.isFinite(arrivalMs) || arrivalMs < 0)
      throw invalidArg(op, `${at}.arrivalMs`, 'a finite number >= 0', r.arrivalMs);
    return { index: i, prompt, maxTokens, arrivalMs };
  });
}

/**
 * Counts llama_decode calls by wrapping node-llama-cpp's native context (`_ctx`, internal in
 * 3.22.1): every decode starts with initBatch(nTokens). Calls are forwarded to the real
 * object, so the cost is one Map lookup per native call. Not attached for models that take KV
 * checkpoints (SWA/recurrent), which hand `_ctx` itself to native code.
 */
function attachDecodeCounter(
  context: Any,
  seq: Any,
): { calls: number; tokens: number } | undefined {
  const raw = context?._ctx;
  if (!raw || typeof raw.initBatch !== 'function' || seq?.needsCheckpoints !== false) return;
  const stats = { calls: 0, tokens: 0 };
  const bound = new Map<PropertyKey, unknown>();
  context._ctx = new Proxy(raw, {
    get(target, key) {
      const v = target[key];
      if (typeof v !== 'function') return v;
      let f = bound.get(key);
      if (!f) {
        f =
          key === 'initBatch'
            ? (n: number) => {
                stats.calls++;
                stats.tokens += n;
                return v.call(target, n);
              }
            : v.bind(target);
        bound.set(key, f);
      }
      return f;
    },
  });
  return stats;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, Math.max(0, ms)));

interface Slot {
  seq: Any;
  gen: AsyncGenerator<number, void, unknown> | undefined;
  job: ServeJob | undefined;
  startMs: number;
  tokens: number[];
  times: number[];
}

/**
 * Serves the jobs on a fresh context of `model` (disposed before returning).
 *
 * A lockstep loop stands in for llama-server's slot loop: each tick hands free sequences the
 * requests that have arrived (FIFO), then calls next() on every active sequence's evaluate()
 * generator in the same synchronous pass. node-llama-cpp queues each sequence's tokens and its
 * dispatcher sends everything queued as one llama_decode, so every decode carries all active
 * sequences (a newcomer's prompt rides along with the others' single tokens). Letting each
 * sequence run its own `for await` loop instead splits the batches: its dispatch loop picks up
 * whatever sequences have re-queued by the time it looks, e.g. 3 + 1 at parallel 4 (171
 * llama_decode calls for 128 ticks on stories260K).
 */
async function serveOnModel(
  model: Any,
  jobs: ServeJob[],
  options: Omit<LlamaCppServeOptions, 'threads'>,
  threads: number,
): Promise<LlamaCppServeResult> {
  const op = 'serveLlamaCpp';
  const parallel = options.parallel;
  const tokensMeta = model.fileInfo?.metadata?.tokenizer?.ggml?.tokens;
  const vocabSize: number = Array.isArray(tokensMeta) ? tokensMeta.length : 0;
  if (vocabSize > 0)
    for (const j of jobs)
      for (const t of j.prompt)
        if (t >= vocabSize)
          throw invalidArg(op, `requests[${j.index}].prompt`, `token ids in [0, ${vocabSize})`, t);
  // The sequence refuses to go past contextSize - 1 cells (it would shift the context), and it
  // evaluates the prompt plus all generated tokens but the last.
  const need = Math.max(...jobs.map((j) => j.prompt.length + j.maxTokens)) + 1;
  const contextSize = options.contextSize ?? need;
  if (contextSize < need)
    throw invalidArg(
      op,
      'options.contextSize',
      `at least ${need} (longest prompt + maxTokens + 1)`,
      contextSize,
    );
  const batchSize = Math.min(options.batchSize ?? 512, contextSize * parallel);

  const context: Any = await model.createContext({
    contextSize,
    batchSize,
    sequences: parallel,
    flashAttention: options.flashAttention ?? false,
    threads: { ideal: threads, min: threads },
  });
  try {
    const slots: Slot[] = [];
    for (let i = 0; i < parallel; i++)
      slots.push({
        seq: context.getSequence(),
        gen: undefined,
        job: undefined,
        startMs: 0,
        tokens: [],
        times: [],
      });
    const counter = attachDecodeCounter(context, slots[0].seq);
    const evalOptions = { temperature: 0, yieldEogToken: true };
    const noToken = (): KernelError =>
      new KernelError('llama.cpp stopped generating before maxTokens', { code: 'E_BACKEND', op });

    if (options.warmup ?? true) {
      // One untimed tick on every sequence: first-use costs (graph allocation, thread start,
      // page faults) out of the timed run.
      const first = jobs[0].prompt[0];
      const gens = slots.map((s) => s.seq.evaluate([first], evalOptions) as AsyncGenerator<number>);
      for (let k = 0; k < 2; k++) await Promise.all(gens.map((g) => g.next()));
      await Promise.all(gens.map((g) => g.return(undefined)));
      await Promise.all(slots.map((s) => s.seq.clearHistory()));
    }
    if (counter) counter.calls = counter.tokens = 0;

    const order = [...jobs].sort((a, b) => a.arrivalMs - b.arrivalMs || a.index - b.index);
    const results: LlamaCppServeRequestResult[] = jobs.map((j) => ({
      ttftMs: NaN,
      tpotMs: NaN,
      itlMs: [],
      queueMs: NaN,
      promptTokens: j.prompt.length,
      outputTokens: 0,
      tokens: new Int32Array(0),
      arrivalMs: j.arrivalMs,
      startMs: NaN,
      endMs: NaN,
    }));
    const record = (s: Slot): void => {
      const j = s.job!;
      const n = s.tokens.length;
      const itl: number[] = [];
      for (let i = 1; i < n; i++) itl.push(s.times[i] - s.times[i - 1]);
      results[j.index] = {
        ttftMs: n ? s.times[0] - j.arrivalMs : NaN,
        tpotMs: n > 1 ? (s.times[n - 1] - s.times[0]) / (n - 1) : n ? 0 : NaN,
        itlMs: itl,
        queueMs: s.startMs - j.arrivalMs,
        promptTokens: j.prompt.length,
        outputTokens: n,
        tokens: Int32Array.from(s.tokens),
        arrivalMs: j.arrivalMs,
        startMs: s.startMs,
        endMs: n ? s.times[n - 1] : NaN,
      };
    };

    let next = 0;
    let finished = 0;
    let ticks = 0;
    let completed = true;
    let lastMs = 0;
    const t0 = performance.now();
    const clock = (): number => performance.now() - t0;
    try {
      while (finished < jobs.length) {
        const now = clock();
        if (options.deadlineMs !== undefined && now > options.deadlineMs) {
          completed = false;
          break;
        }
        const fresh: Slot[] = [];
        for (const s of slots) {
          if (s.job || next >= order.length || order[next].arrivalMs > now) continue;
          s.job = order[next++];
          s.startMs = now;
          s.tokens = [];
          s.times = [];
          fresh.push(s);
        }
        const active = slots.filter((s) => s.job);
        if (active.length === 0) {
          // idle: nothing running, the next request is still to come
          await sleep(order[next].arrivalMs - now);
          continue;
        }
        if (fresh.length) {
          await Promise.all(fresh.map((s) => s.seq.clearHistory()));
          for (const s of fresh) s.gen = s.seq.evaluate(s.job!.prompt, evalOptions);
        }
        // All next() calls in one synchronous pass: their decodes are queued before
        // node-llama-cpp's dispatcher runs, so they go out as one llama_decode.
        await Promise.all(
          active.map((s) =>
            s.gen!.next().then((r) => {
              if (r.done) throw noToken();
              s.times.push(clock());
              s.tokens.push(r.value);
            }),
          ),
        );
        ticks++;
        const done = active.filter((s) => s.tokens.length >= s.job!.maxTokens);
        if (done.length) {
          await Promise.all(done.map((s) => s.gen!.return(undefined)));
          for (const s of done) {
            record(s);
            lastMs = Math.max(lastMs, s.times[s.times.length - 1]);
            s.job = s.gen = undefined;
            finished++;
          }
        }
      }
    } finally {
      // unfinished requests (deadline or error): close their generators, keep partial figures
      for (const s of slots)
        if (s.job) {
          await s.gen?.return(undefined);
          record(s);
          if (s.times.length) lastMs = Math.max(lastMs, s.times[s.times.length - 1]);
        }
    }
    const wallMs = completed ? lastMs : clock();
    const outputTokens = results.reduce((a, r) => a + r.outputTokens, 0);
    return {
      threads,
      parallel,
      wallMs,
      outputTokens,
      promptTokens: results.reduce((a, r) => a + r.promptTokens, 0),
      tokensPerS: wallMs > 0 ? (outputTokens * 1000) / wallMs : 0,
      requests: results,
      completed,
      ticks,
      decodeCalls: counter?.calls,
      decodedTokens: counter?.tokens,
      contextSize: context.contextSize,
      batchSize: context.batchSize,
    };
  } finally {
    await context.dispose();
  }
}

async function loadServeModel(modelPath: string): Promise<Any> {
  const { llama } = await loadLlama();
  return llama.loadModel({ modelPath: path.resolve(modelPath), gpuLayers: 0 });
}

/**
 * Serves `requests` with llama.cpp (node-llama-cpp) on `parallel` sequences of one context:
 * greedy (temperature 0), exactly maxTokens tokens each, arrivals honoured, every llama_decode
 * carrying all active sequences. Loads the model, serves, and disposes of both.
 */
export async function serveLlamaCpp(
  requests: LlamaCppServeRequest[],
  options: LlamaCppServeOptions,
): Promise<LlamaCppServeResult> {
  const op = 'serveLlamaCpp';
  const jobs = checkServe(op, requests, options);
  const threads = checkInt(op, 'options.threads', options.threads, 1);
  const model = await loadServeModel(options.modelPath);
  try {
    return await serveOnModel(model, jobs, options, threads);
  } finally {
    await model.dispose();
  }
}

export interface LlamaCppBestServe {
  /** The run with the highest tokensPerS. */
  best: LlamaCppServeResult;
  /** One per thread count, in the order run. */
  runs: LlamaCppServeResult[];
}

/**
 * serveLlamaCpp at several thread counts (default 1 and 2), the model loaded once; returns the
 * best by tokensPerS. Every run produces the same number of tokens, so a run that has gone on
 * longer than the best so far cannot win: it is stopped at twice that wall time
 * (completed: false) instead of letting a pathological thread count (the prebuilt binary at 2
 * threads on 2 busy vCPUs can be 20x slower) take minutes.
 */
export async function bestServeLlamaCpp(
  requests: LlamaCppServeRequest[],
  options: Omit<LlamaCppServeOptions, 'threads'> & { threads?: number[] },
): Promise<LlamaCppBestServe> {
  const op = 'bestServeLlamaCpp';
  const jobs = checkServe(op, requests, options);
  const list = options.threads ?? [1, Math.min(2, os.availableParallelism())];
  if (!Array.isArray(list) || list.length === 0)
    throw invalidArg(op, 'options.threads', 'a non-empty array of thread counts', list);
  list.forEach((t) => checkInt(op, 'options.threads', t, 1));
  const model = await loadServeModel(options.modelPath);
  try {
    const runs: LlamaCppServeResult[] = [];
    let best: LlamaCppServeResult | undefined;
    for (const t of [...new Set(list)]) {
      const cut = best?.completed ? 2 * best.wallMs : undefined;
      const deadlineMs =
        cut === undefined ? options.deadlineMs : Math.min(cut, options.deadlineMs ?? Infinity);
      const r = await serveOnModel(model, jobs, { ...options, deadlineMs }, t);
      runs.push(r);
      if (
        !best ||
        (r.completed && !best.completed) ||
        (r.completed === best.completed && r.tokensPerS > best.tokensPerS)
      )
        best = r;
    }
    return { best: best!, runs };
  } finally {
    await model.dispose();
  }
}
