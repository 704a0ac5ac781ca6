/**
 * llama.cpp throughput (through node-llama-cpp) for one or more GGUF models, llama-bench style:
 * prefill of -p tokens and decode of -n tokens, at each thread count, best reported.
 *
 *   npx tsx scripts/llama-cpp/bench.ts [model.gguf ...] [-p 512] [-n 128] [-t 1,2] [-r 5] [--json out.json] [--native-llama]
 *
 * Default model: $TACHYON_MODELS_DIR/stories260K.gguf. --native-llama also runs the native
 * llama-bench built by scripts/llama-cpp/build-native.sh (same llama.cpp commit, -march=native).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  benchLlamaCpp,
  isLlamaBenchBuilt,
  isLlamaCppInstalled,
  llamaCppVersions,
  runLlamaBench,
  unloadLlamaCpp,
} from '../../lib/bench/llama-cpp';

function parseArgs(argv: string[]) {
  const opts = { models: [] as string[], p: 512, n: 128, t: [1, 2], r: 5, json: '', native: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = (): string => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    if (a === '-p') opts.p = Number(next());
    else if (a === '-n') opts.n = Number(next());
    else if (a === '-t') opts.t = next().split(',').map(Number);
    else if (a === '-r') opts.r = Number(next());
    else if (a === '--json') opts.json = next();
    else if (a === '--native-llama') opts.native = true;
    else if (a.startsWith('-')) throw new Error(`unknown option ${a}`);
    else opts.models.push(a);
  }
  if (opts.models.length === 0) {
    const dir = process.env.TACHYON_MODELS_DIR ?? path.resolve(__dirname, '../../../shared/models');
    opts.models.push(path.join(dir, 'stories260K.gguf'));
  }
  return opts;
}

async function main(): Promise<void> {
  if (!isLlamaCppInstalled()) {
    console.error('node-llama-cpp is not installed: node scripts/llama-cpp/install.mjs');
    process.exit(2);
  }
  const o = parseArgs(process.argv.slice(2));
  if (o.native && !isLlamaBenchBuilt()) {
    console.error('llama-bench is not built: bash scripts/llama-cpp/build-native.sh');
    process.exit(2);
  }
  const versions = await llamaCppVersions();
  console.log(
    `llama.cpp ${versions.llamaCppRelease} (${versions.llamaCppCommit?.slice(0, 7)}) via node-llama-cpp ` +
      `${versions.nodeLlamaCpp}; pp${o.p} / tg${o.n}, threads ${o.t.join(',')}, ${o.r} runs each`,
  );
  const results = [];
  for (const model of o.models) {
    const r = await benchLlamaCpp(model, {
      promptTokens: o.p,
      decodeTokens: o.n,
      threads: o.t,
      repeats: o.r,
    });
    const cpu = (await llamaCppVersions()).cpuVariant;
    console.log(`\n${path.basename(model)} (${cpu})`);
    for (const run of r.runs) {
      console.log(
        `  threads ${run.threads}: pp${o.p} ${run.promptTokensPerS.toFixed(0)} tok/s ` +
          `(best ${run.promptTokensPerSBest.toFixed(0)}), tg${o.n} ` +
          `${run.decodeTokensPerS.toFixed(0)} tok/s (best ${run.decodeTokensPerSBest.toFixed(0)})`,
      );
    }
    console.log(
      `  best: pp ${r.prompt.tokensPerS.toFixed(0)} tok/s @${r.prompt.threads}t, ` +
        `tg ${r.decode.tokensPerS.toFixed(0)} tok/s @${r.decode.threads}t (medians)`,
    );
    let native;
    if (o.native) {
      native = await runLlamaBench(model, { threads: o.t, p: o.p, n: o.n, r: o.r });
      for (const x of native)
        console.log(
          `  native llama-bench (${x.buildCommit}, ${x.backends}) threads ${x.threads}: ` +
            `pp${o.p} ${x.promptTokensPerS.toFixed(0)} ± ${x.promptStddev.toFixed(0)} tok/s, ` +
            `tg${o.n} ${x.decodeTokensPerS.toFixed(0)} ± ${x.decodeStddev.toFixed(0)} tok/s`,
        );
    }
    results.push({ model: path.basename(model), ...r, ...(native ? { native } : {}) });
  }
  if (o.json) {
    const out = { date: new Date().toISOString(), engine: versions, results };
    fs.writeFileSync(o.json, JSON.stringify(out, null, 1) + '\n');
    console.log(`\nwrote ${o.json}`);
  }
  await unloadLlamaCpp();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
