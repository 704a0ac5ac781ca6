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
