/**
 * End-to-end benchmark: prompt processing (512 tokens) and decode (128 tokens) through the
 * public Model API, with the same figures for llama.cpp (node-llama-cpp, when installed)
 * on the same GGUF file in the same run.
 *
 * Rooflines: prompt processing is compute-bound (MACs of the matmuls and attention per token
 * against the int8 or f32 peak, whichever the weights use); decode is bandwidth-bound (the
 * weight bytes every token reads, plus its KV, against DRAM read bandwidth).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Runtime } from '../runtime/runtime';
import { packageRoot } from '../runtime/binding';
import { GgmlType } from '../ops/quant';
import { readGguf } from '../model/gguf';
import { loadModel, Model } from '../model/model';
import { SyntheticModelSpec, writeSyntheticModel } from '../model/synthetic';
import { BenchResult, Machine, median } from './common';
import { benchLlamaCpp, isLlamaBenchBuilt, isLlamaCppInstalled, runLlamaBench } from './llama-cpp';

/** The default: a Llama-shaped ~1.1B model in Q4_0 (TinyLlama's shape). */
export const E2E_DEFAULT_SPEC: SyntheticModelSpec = {
  name: 'tachyon-bench-1b-q4_0',
  dim: 2048,
  layers: 22,
  heads: 32,
  kvHeads: 4,
  ffn: 5632,
  vocab: 32000,
  type: 'Q4_0',
  embdType: 'Q4_0',
  outputType: 'Q6_K',
  seed: 7,
};
const QUICK_SPEC: SyntheticModelSpec = {
  ...E2E_DEFAULT_SPEC,
  name: 'tachyon-bench-quick-q4_0',
  dim: 512,
  layers: 4,
  heads: 8,
  kvHeads: 2,
  ffn: 1536,
  vocab: 4096,
};

export interface E2eOptions {
  repeats: number;
  quick?: boolean;
  model?: string;
  promptTokens?: number;
  decodeTokens?: number;
  /** Skip llama.cpp even when installed. */
  noLlama?: boolean;
  /** Also run llama.cpp's own llama-bench, built natively (scripts/llama-cpp/build-native.sh). */
  nativeLlama?: boolean;
  log?: (s: string) => void;
}

/**
 * Generates (once, cached under .cache/models) the default benchmark model; with `copy`, the
 * same shapes and types with a copying head (synthetic.ts copyHead) for copy-heavy traffic.
 */
export async function defaultBenchModel(
  quick = false,
  log?: (s: string) => void,
  copy = false,
): Promise<string> {
  const spec = benchModelSpec(quick, copy);
  const dir = path.join(packageRoot(), '.cache', 'models');
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, `${spec.name}.gguf`);
  if (!fs.existsSync(file)) {
    log?.(`generating ${file} (once) ...`);
    const tmp = `${file}.${process.pid}.tmp`;
    await writeSyntheticModel(tmp, spec);
    fs.renameSync(tmp, file);
  }
  return file;
}

/** The spec defaultBenchModel writes. */
export function benchModelSpec(quick = false, copy = false): SyntheticModelSpec {
  const base = quick ? QUICK_SPEC : E2E_DEFAULT_SPEC;
  // gain 0.5: weaker layers, so the copying head decides the greedy token (one miss in 64 at
  // gain 1 on the 22-layer model); shapes and types, hence speed, are the same.
  return copy ? { ...base, name: `${base.name}-copy-v2`, copyHead: true, gain: 0.5 } : base;
}

/** Per-token costs of a model: matmul MACs, weight bytes read per decoded token. */
export async function modelCosts(
  file: string,
  m: Model,
): Promise<{ macsPerToken: number; weightBytes: number; intWeights: boolean }> {
  const g = await readGguf(file);
  let macs = 0;
  let bytes = 0;
  let intWeights = true;
  for (const t of g.tensors) {
    if (t.dims.length < 2) continue;
    const isEmbd = t.name === 'token_embd.weight';
    const used = !isEmbd || m.info.config.tiedOutput;
    if (!used) continue; // the embedding is a row lookup, not a matmul
    let elems = t.dims.reduce((a, b) => a * b, 1);
    let tb = t.bytes;
    if (t.name.includes('_exps.')) {
      // MoE: a token reads expertsUsed of the experts
      const frac = m.info.config.expertsUsed / m.info.config.experts;
      elems *= frac;
      tb *= frac;
    }
    macs += elems;
    bytes += tb;
    if (t.type === GgmlType.F32 || t.type === GgmlType.F16 || t.type === GgmlType.BF16)
      intWeights = m.info.weights === 'int4' || m.info.weights === 'int8';
  }
  return { macsPerToken: macs, weightBytes: bytes, intWeights };
}

export function promptIds(m: Model, n: number, seed: number): Int32Array {
  const V = m.info.config.vocab;
  const ids = new Int32Array(n);
  let x = seed >>> 0 || 1;
  ids[0] = m.tokenizer.bos ?? 1;
  for (let i = 1; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    // skip the low ids (special and byte tokens in llama vocabularies)
    ids[i] = 300 + ((x >>> 0) % Math.max(1, V - 300));
  }
  return ids;
}

export async function runE2e(
  rt: Runtime,
  machine: Machine,
  opts: E2eOptions,
): Promise<BenchResult[]> {
  const log = opts.log ?? ((s: string) => console.error(s));
  const P = opts.promptTokens ?? (opts.quick ? 128 : 512);
  const N = opts.decodeTokens ?? (opts.quick ? 32 : 128);
  const file = opts.model ?? (await defaultBenchModel(opts.quick, log));
  const results: BenchResult[] = [];
  const m = await loadModel(file, {
    runtime: rt,
    contextLength: Math.max(P, N + 1) + 16,
    batchSize: P,
    prefixCaching: false,
  });
  try {
    const costs = await modelCosts(file, m);
    const c = m.info.config;
    const peak = costs.intWeights ? machine.peakMacPerS.int8 : machine.peakMacPerS.f32;
    const repeats = Math.max(1, opts.repeats);
    // ---- prompt processing ----
    const ids = promptIds(m, P, 12345);
    await m.logits(ids.subarray(0, Math.min(P, 32))); // warm-up (page in weights)
    const pp: number[] = [];
    for (let r = 0; r < repeats; r++) {
      const t0 = performance.now();
      await m.logits(ids);
      pp.push(performance.now() - t0);
    }
    const ppMs = median(pp);
    // attention MACs of a causal prompt: Σ_t (t+1)·heads·headDim·2 (QK and PV)
    const attnMacs = ((P * (P + 1)) / 2) * c.heads * c.headDim * 2 * c.layers;
    const ppMacPerS = (P * costs.macsPerToken + attnMacs) / (ppMs / 1e3);
    results.push({
      suite: 'e2e',
      case: `prompt ${P} tachyon`,
      params: {
        engine: 'tachyon',
        phase: 'prompt',
        tokens: P,
        model: path.basename(file),
        threads: rt.threads,
        isa: rt.isa,
      },
      medianMs: ppMs,
      minMs: Math.min(...pp),
      repeats,
      tokensPerS: P / (ppMs / 1e3),
      macPerS: ppMacPerS,
      roofline: {
        kind: 'compute',
        ratio: ppMacPerS / peak,
        peak: costs.intWeights ? 'int8' : 'f32',
      },
    });
    // ---- decode: N tokens after a 1-token (BOS) prompt, as llama-bench's tg test ----
    const tg: number[] = [];
    for (let r = 0; r < repeats; r++) {
      let t0 = 0;
      let n = 0;
      for await (const _ of m.generate(ids.subarray(0, 1), {
        temperature: 0,
        maxTokens: N + 1,
        ignoreEos: true,
      })) {
        void _;
        if (n === 0) t0 = performance.now(); // the first token comes from the prompt step
        n++;
      }
      tg.push((performance.now() - t0) / (n - 1));
    }
    const msPerTok = median(tg);
    const kvBytesPerTok = c.layers * 2 * c.kvHeads * m.llama.paddedHeadDim * 2 * (N / 2); // f16, mean context N/2
    const bytesPerS = (costs.weightBytes + kvBytesPerTok) / (msPerTok / 1e3);
    results.push({
      suite: 'e2e',
      case: `decode ${N} tachyon`,
      params: {
        engine: 'tachyon',
        phase: 'decode',
        tokens: N,
        model: path.basename(file),
        threads: rt.threads,
        isa: rt.isa,
      },
      medianMs: msPerTok * N,
      minMs: Math.min(...tg) * N,
      repeats,
      tokensPerS: 1e3 / msPerTok,
      gbPerS: bytesPerS / 1e9,
      roofline: { kind: 'bandwidth', ratio: bytesPerS / 1e9 / machine.bandwidthGBs },
    });
    // ---- llama.cpp on the same file ----
    if (opts.noLlama) return results;
    if (!isLlamaCppInstalled()) {
      log(
        'llama.cpp (node-llama-cpp) is not installed: run scripts/llama-cpp/install.sh to compare',
      );
      return results;
    }
    log('llama.cpp: measuring at 1 and 2 threads ...');
    const lc = await benchLlamaCpp(file, {
      promptTokens: P,
      decodeTokens: N,
      repeats,
      threads: [...new Set([1, Math.min(2, os.availableParallelism())])],
    });
    for (const phase of ['prompt', 'decode'] as const) {
      const best = phase === 'prompt' ? lc.prompt : lc.decode;
      const ms = (1e3 / best.tokensPerS) * (phase === 'prompt' ? P : N);
      const run = lc.runs.find((r) => r.threads === best.threads)!;
      const perThreads = Object.fromEntries(
        lc.runs.map((r) => [
          `t${r.threads}`,
          phase === 'prompt' ? r.promptTokensPerS : r.decodeTokensPerS,
        ]),
      );
      const res: BenchResult = {
        suite: 'e2e',
        case: `${phase} ${phase === 'prompt' ? P : N} llama.cpp`,
        params: {
          engine: 'llama.cpp',
          phase,
          tokens: phase === 'prompt' ? P : N,
          model: path.basename(file),
          threads: best.threads,
          tokensPerSByThreads: perThreads,
        },
        medianMs: ms,
        minMs: ms,
        repeats: (phase === 'prompt' ? run.promptRuns : run.decodeRuns).length,
        tokensPerS: best.tokensPerS,
      };
      if (phase === 'prompt') {
        const macPerS = (P * costs.macsPerToken + attnMacs) / (ms / 1e3);
        res.macPerS = macPerS;
        res.roofline = {
          kind: 'compute',
          ratio: macPerS / peak,
          peak: costs.intWeights ? 'int8' : 'f32',
        };
      } else {
        const bps = (costs.weightBytes + kvBytesPerTok) / (ms / N / 1e3);
        res.gbPerS = bps / 1e9;
        res.roofline = { kind: 'bandwidth', ratio: bps / 1e9 / machine.bandwidthGBs };
      }
      results.push(res);
    }
    if (opts.nativeLlama) {
      if (!isLlamaBenchBuilt())
        log('--native-llama: llama-bench is not built: run bash scripts/llama-cpp/build-native.sh');
      else {
        log('llama-bench (native build): measuring at 1 and 2 threads ...');
        const nb = await runLlamaBench(file, { threads: [1, 2], p: P, n: N, r: repeats });
        for (const phase of ['prompt', 'decode'] as const) {
          const key = phase === 'prompt' ? 'promptTokensPerS' : 'decodeTokensPerS';
          const best = nb.reduce((a, b) => (b[key] > a[key] ? b : a));
          const tps = best[key];
          const n = phase === 'prompt' ? P : N;
          const res: BenchResult = {
            suite: 'e2e',
            case: `${phase} ${n} llama-bench (native)`,
            params: {
              engine: 'llama.cpp',
              build: 'native',
              phase,
              tokens: n,
              model: path.basename(file),
              threads: best.threads,
              commit: best.buildCommit,
              tokensPerSByThreads: Object.fromEntries(nb.map((r) => [`t${r.threads}`, r[key]])),
            },
            medianMs: (1e3 / tps) * n,
            minMs: (1e3 / tps) * n,
            repeats,
            tokensPerS: tps,
          };
          if (phase === 'prompt') {
            res.macPerS = (P * costs.macsPerToken + attnMacs) * (tps / P);
            res.roofline = {
              kind: 'compute',
              ratio: res.macPerS / peak,
              peak: costs.intWeights ? 'int8' : 'f32',
            };
          } else {
            res.gbPerS = ((costs.weightBytes + kvBytesPerTok) * tps) / 1e9;
            res.roofline = { kind: 'bandwidth', ratio: res.gbPerS / machine.bandwidthGBs };
          }
          results.push(res);
        }
      }
    }
    for (const phase of ['prompt', 'decode'] as const) {
      const t = results.find((r) => r.params.engine === 'tachyon' && r.params.phase === phase);
      const l = results.find(
        (r) => r.params.engine === 'llama.cpp' && r.params.phase === phase && !r.params.build,
      );
      if (t && l) t.vsLlamaCpp = (t.tokensPerS as number) / (l.tokensPerS as number);
    }
    return results;
  } finally {
    await m.dispose();
  }
}
