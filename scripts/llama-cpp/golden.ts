/**
 * Regenerates the committed llama.cpp golden fixtures in tests/fixtures/llama/<model>.json:
 * what llama.cpp (node-llama-cpp 3.22.1, CPU) computes for each model, so that jest tests
 * can check Tachyon against llama.cpp without installing it.
 *
 *   node scripts/llama-cpp/install.mjs            # once
 *   npx tsx scripts/llama-cpp/golden.ts           # stories260K + the generated test models
 *   npx tsx scripts/llama-cpp/golden.ts a.gguf b.gguf [--out dir] [--no-synthetic] [--threads N]
 *
 * Per model: name, file size and sha256; engine versions and settings; a fixed token sequence
 * with its last-position logits (and every position's when small); the greedy 64-token
 * continuation of a fixed prompt; the tokenization of every string in
 * tests/fixtures/tokenizer-corpus.json. No timestamps, so regenerating on the same machine
 * gives identical bytes.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createRequire } from 'node:module';
import * as prettier from 'prettier';
import {
  isLlamaCppInstalled,
  openLlamaCpp,
  unloadLlamaCpp,
  type LlamaCppModel,
} from '../../lib/bench/llama-cpp';

const ROOT = path.resolve(__dirname, '..', '..');
const CORPUS = path.join(ROOT, 'tests', 'fixtures', 'tokenizer-corpus.json');
/** Tokenized with add_special to give the logits test sequence. */
const LOGITS_TEXT = 'Once upon a time, there was a little robot. It liked to count: 1, 2, 3!';
/** At most this many tokens of LOGITS_TEXT are kept. */
const LOGITS_MAX_TOKENS = 32;
/** Budget for every position's logits (before base64): the first all_rows positions are kept. */
const ALL_LOGITS_MAX_BYTES = 64 * 1024;
const GREEDY_PROMPT = 'Once upon a time';
const GREEDY_TOKENS = 64;
const FIXTURE_LIMIT = 200 * 1024;

interface Args {
  models: string[];
  out: string;
  synthetic: boolean;
  threads: number;
}

function parseArgs(argv: string[]): Args {
  const a: Args = {
    models: [],
    out: path.join(ROOT, 'tests', 'fixtures', 'llama'),
    synthetic: true,
    threads: 1,
  };
  for (let i = 0; i < argv.length; i++) {
    const s = argv[i];
    if (s === '--out') a.out = path.resolve(argv[++i]);
    else if (s === '--no-synthetic') a.synthetic = false;
    else if (s === '--threads') a.threads = Number(argv[++i]);
    else if (s.startsWith('-')) throw new Error(`unknown option ${s}`);
    else a.models.push(path.resolve(s));
  }
  return a;
}

function sha256File(file: string): string {
  return crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

function f32Base64(a: Float32Array): string {
  // little-endian hosts only (x64/arm64): the bytes are written as they lie in memory
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString('base64');
}

interface CorpusCase {
  name?: string;
  text: string;
}

/** The cases of tests/fixtures/tokenizer-corpus.json ({cases: [{name, text}]}, or plain strings). */
function readCorpus(): { cases: CorpusCase[]; sha256: string } | undefined {
  if (!fs.existsSync(CORPUS)) return undefined;
  const raw = fs.readFileSync(CORPUS);
  const j = JSON.parse(raw.toString('utf8'));
  const pick = (v: unknown): CorpusCase[] => {
    if (typeof v === 'string') return [{ text: v }];
    if (Array.isArray(v)) return v.flatMap(pick);
    if (v && typeof v === 'object') {
      const o = v as Record<string, unknown>;
      if (typeof o.text === 'string')
        return [{ ...(typeof o.name === 'string' ? { name: o.name } : {}), text: o.text }];
      for (const k of ['cases', 'strings', 'texts', 'corpus', 'items'])
        if (k in o) return pick(o[k]);
    }
    return [];
  };
  const cases = pick(j);
  if (cases.length === 0) throw new Error(`${CORPUS}: found no strings in it`);
  return { cases, sha256: crypto.createHash('sha256').update(raw).digest('hex') };
}

/** Generated test models from lib/model/synthetic.ts, when that module exists. */
async function syntheticModels(dir: string): Promise<{ name: string; path: string }[]> {
  const mod = path.join(ROOT, 'lib', 'model', 'synthetic');
  if (!fs.existsSync(mod + '.ts')) {
    console.error('lib/model/synthetic.ts not found: generated test models skipped');
    return [];
  }
  // a computed path: tsc must not try to resolve a module that may not exist yet
  const { generateTestModels } = createRequire(__filename)(mod);
  return generateTestModels(dir);
}

async function golden(
  m: LlamaCppModel,
  name: string,
  file: string,
  corpus: ReturnType<typeof readCorpus>,
) {
  const info = m.info;
  const tokens = m.tokenize(LOGITS_TEXT, { addSpecial: true }).slice(0, LOGITS_MAX_TOKENS);
  const all = await m.allLogits(tokens);
  const last = all[all.length - 1];
  const order = Array.from(last.keys()).sort((x, y) => last[y] - last[x] || x - y);
  const logits: Record<string, unknown> = {
    text: LOGITS_TEXT,
    tokens,
    note:
      'raw llama.cpp logits after evaluating `tokens` as one batch from position 0 (nothing ' +
      'added); float32 little-endian, base64; `all` is [all_rows][n_vocab] row-major for the ' +
      'first all_rows positions, row i predicting token i+1. JS: const b = Buffer.from(s, "base64"); ' +
      'new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength))',
    argmax: order[0],
    top5: order.slice(0, 5).map((id) => [id, last[id]]),
    last_f32le_base64: f32Base64(last),
  };
  // every position's logits for as many leading positions as fit the byte budget
  const rows = Math.min(all.length, Math.floor(ALL_LOGITS_MAX_BYTES / (4 * last.length)));
  if (rows > 0) {
    const flat = new Float32Array(rows * last.length);
    for (let i = 0; i < rows; i++) flat.set(all[i], i * last.length);
    logits.all_rows = rows;
    logits.all_f32le_base64 = f32Base64(flat);
  }

  const promptTokens = m.tokenize(GREEDY_PROMPT, { addSpecial: true });
  const run = await m.greedyRun(promptTokens, GREEDY_TOKENS);

  let tokenizer: Record<string, unknown> | undefined;
  if (corpus) {
    const cases = corpus.cases.map(({ name, text }) => {
      const ids = m.tokenize(text, { addSpecial: true, parseSpecial: false });
      const c: Record<string, unknown> = { ...(name !== undefined ? { name } : {}), text, ids };
      const special = m.tokenize(text, { addSpecial: true, parseSpecial: true });
      if (JSON.stringify(special) !== JSON.stringify(ids)) c.ids_parse_special = special;
      return c;
    });
    tokenizer = {
      corpus: path.relative(ROOT, CORPUS),
      corpus_sha256: corpus.sha256,
      add_special: true,
      parse_special: false,
      note: '`ids_parse_special` is present only where parse_special true gives other ids',
      cases,
    };
  }

  return {
    format: 1,
    generator: 'scripts/llama-cpp/golden.ts',
    model: {
      name,
      file: path.basename(file),
      bytes: fs.statSync(file).size,
      sha256: sha256File(file),
      n_vocab: last.length,
      bos: info.bos ?? null,
      eos: info.eos ?? null,
      add_bos: info.addBos,
      add_eos: info.addEos,
    },
    engine: {
      node_llama_cpp: info.nodeLlamaCpp,
      llama_cpp_release: info.llamaCppRelease,
      llama_cpp_repo: info.llamaCppRepo,
      llama_cpp_commit: info.llamaCppCommit ?? null,
      build: info.build,
      gpu: false,
      cpu_variant: info.cpuVariant ?? null,
      system_info: info.systemInfo,
      threads: info.threads,
      batch: info.batchSize,
      context: info.contextSize,
      flash_attention: info.flashAttention,
    },
    logits,
    greedy: {
      sampling: 'greedy (temperature 0, no penalties); does not stop at EOS',
      prompt: GREEDY_PROMPT,
      prompt_tokens: promptTokens,
      n: GREEDY_TOKENS,
      tokens: run.tokens,
      first_eog_index: run.firstEogIndex,
      text: m.detokenize(run.tokens),
    },
    ...(tokenizer ? { tokenizer } : {}),
  };
}

async function main(): Promise<void> {
  if (!isLlamaCppInstalled()) {
    console.error('node-llama-cpp is not installed: node scripts/llama-cpp/install.mjs');
    process.exit(2);
  }
  const args = parseArgs(process.argv.slice(2));
  const models: { name: string; path: string }[] = args.models.map((p) => ({
    name: path.basename(p).replace(/\.gguf$/i, ''),
    path: p,
  }));
  let tmp: string | undefined;
  if (args.models.length === 0) {
    const dir = process.env.TACHYON_MODELS_DIR ?? path.resolve(ROOT, '..', 'shared', 'models');
    models.push({ name: 'stories260K', path: path.join(dir, 'stories260K.gguf') });
    if (args.synthetic) {
      tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tachyon-golden-'));
      models.push(...(await syntheticModels(tmp)));
    }
  }
  const corpus = readCorpus();
  if (!corpus) console.error(`${path.relative(ROOT, CORPUS)} not found: tokenizations skipped`);
  fs.mkdirSync(args.out, { recursive: true });
  let oversize = false;
  try {
    for (const { name, path: file } of models) {
      const m = await openLlamaCpp(file, { threads: args.threads, contextSize: 512 });
      try {
        const fixture = await golden(m, name, file, corpus);
        const out = path.join(args.out, `${name}.json`);
        // formatted the way `prettier --check .` (npm run lint) wants it, which also keeps
        // number arrays and short objects on shared lines
        const config = (await prettier.resolveConfig(path.join(ROOT, 'package.json'))) ?? {};
        const text = await prettier.format(JSON.stringify(fixture), { ...config, parser: 'json' });
        fs.writeFileSync(out, text);
        const kb = (Buffer.byteLength(text) / 1024).toFixed(1);
        oversize ||= Buffer.byteLength(text) > FIXTURE_LIMIT;
        console.log(
          `${path.relative(ROOT, out)}: ${kb} KiB, argmax ${fixture.logits.argmax}, ` +
            `greedy ${JSON.stringify(fixture.greedy.text.slice(0, 50))}...`,
        );
      } finally {
        await m.dispose();
      }
    }
  } finally {
    await unloadLlamaCpp();
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  }
  if (oversize) {
    console.error(`a fixture is over ${FIXTURE_LIMIT / 1024} KiB: shrink the corpus or the model`);
    process.exit(1);
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
