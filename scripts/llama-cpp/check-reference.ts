/**
 * Re-runs the shared stories260K references ($TACHYON_MODELS_DIR/stories260K.logits.json and
 * stories260K.reference.json) through the llama.cpp oracle and prints how close it comes.
 * Exits 1 when a greedy run or the argmax differs, or the logits differ by more than --tol
 * (default 0.05: the references came from the zen4 AVX-512 CPU backend, other CPUs load other
 * ggml kernels that sum in another order).
 *
 *   npx tsx scripts/llama-cpp/check-reference.ts [--threads N] [--tol X]
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { isLlamaCppInstalled, openLlamaCpp, unloadLlamaCpp } from '../../lib/bench/llama-cpp';

// Base64 float32 LE -> Float32Array. Copies via byteOffset: Buffer.from() of a short string
// lives inside Node's shared 8 KiB pool, so `.buffer` alone is the wrong bytes.
function decodeF32(b64: string): Float32Array {
  const b = Buffer.from(b64, 'base64');
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
}

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 && process.argv[i + 1] ? process.argv[i + 1] : def;
}

async function main(): Promise<number> {
  if (!isLlamaCppInstalled()) {
    console.error('node-llama-cpp is not installed: node scripts/llama-cpp/install.mjs');
    return 2;
  }
  const dir = process.env.TACHYON_MODELS_DIR ?? path.resolve(__dirname, '../../../shared/models');
  const threads = Number(arg('--threads', '2'));
  const tol = Number(arg('--tol', '0.05'));
  const logitsRef = JSON.parse(fs.readFileSync(path.join(dir, 'stories260K.logits.json'), 'utf8'));
  const genRef = JSON.parse(fs.readFileSync(path.join(dir, 'stories260K.reference.json'), 'utf8'));
  const m = await openLlamaCpp(path.join(dir, 'stories260K.gguf'), { threads });
  let ok = true;
  try {
    console.log(
      `engine: node-llama-cpp ${m.info.nodeLlamaCpp}, llama.cpp ${m.info.llamaCppRelease} ` +
        `(${m.info.llamaCppCommit?.slice(0, 7)}), ${m.info.cpuVariant}, threads ${threads}`,
    );
    console.log(`reference engine: ${logitsRef.engine.cpu_variant}`);

    const ref = decodeF32(logitsRef.logits_f32le_base64);
    const got = await m.logits(logitsRef.prompt_tokens);
    let maxDiff = 0;
    let sumDiff = 0;
    let argmax = 0;
    for (let i = 0; i < got.length; i++) {
      const d = Math.abs(got[i] - ref[i]);
      maxDiff = Math.max(maxDiff, d);
      sumDiff += d;
      if (got[i] > got[argmax]) argmax = i;
    }
    console.log(
      `logits: n ${got.length}/${ref.length}, max |diff| ${maxDiff.toExponential(3)}, ` +
        `mean |diff| ${(sumDiff / got.length).toExponential(3)}, argmax ${argmax} ` +
        `(ref ${logitsRef.argmax}), logit ${got[argmax].toFixed(5)} (ref ${logitsRef.top10[0][1].toFixed(5)})`,
    );
    ok &&= got.length === ref.length && maxDiff <= tol && argmax === logitsRef.argmax;

    const cont = await m.greedy(logitsRef.prompt_tokens, logitsRef.greedy_continuation.length);
    const contOk = JSON.stringify(cont) === JSON.stringify(logitsRef.greedy_continuation);
    console.log(
      `greedy ${cont.length} after the logits prompt: ${contOk ? 'identical' : 'DIFFERENT'}`,
    );
    ok &&= contOk;

    const promptIds = m.tokenize(genRef.prompt, { addSpecial: true });
    const tokOk = JSON.stringify(promptIds) === JSON.stringify(genRef.prompt_tokens);
    console.log(
      `tokenize(${JSON.stringify(genRef.prompt)}) = [${promptIds}]: ${tokOk ? 'identical' : 'DIFFERENT'}`,
    );
    ok &&= tokOk;
    const run = await m.greedyRun(genRef.prompt_tokens, genRef.generated_tokens.length);
    const genOk = JSON.stringify(run.tokens) === JSON.stringify(genRef.generated_tokens);
    const text = m.detokenize(run.tokens);
    console.log(
      `greedy ${run.tokens.length} after "${genRef.prompt}": ${genOk ? 'identical' : 'DIFFERENT'}, ` +
        `first EOG ${run.firstEogIndex} (ref stopped_at_eos ${genRef.stopped_at_eos}), ` +
        `text ${text === genRef.generated_text ? 'identical' : 'DIFFERENT'}`,
    );
    ok &&= genOk && run.firstEogIndex >= 0 === genRef.stopped_at_eos;
  } finally {
    await m.dispose();
    await unloadLlamaCpp();
  }
  console.log(ok ? 'OK' : 'MISMATCH');
  return ok ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (e) => {
    console.error(e);
    process.exit(1);
  },
);
