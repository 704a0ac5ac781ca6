/**
 * The `tachyon` command: doctor, bench, generate, inspect, quantize. Top of the layering: it
 * may import anything.
 */
import { Command } from 'commander';
import { SingleBar, Presets } from 'cli-progress';
import { readGguf } from '../model/gguf';
import { formatGgufInfo } from '../model/inspect';
import { loadModel, LoadModelOptions } from '../model/model';
import { quantizeFile, QuantizeTarget } from '../model/quantize-file';
import { runE2e } from '../bench/e2e';
import { doctor } from '../runtime/doctor';
import { Backend, BACKENDS, loadRuntime, Isa } from '../runtime/runtime';
import { version } from '../version';
import { makeReport, measureRooflines, printReport, writeJson } from '../bench/common';
import { runMain } from '../bench/main';
import { GEMM_FORMATS, runGemm } from '../bench/gemm';
import { runAttention } from '../bench/attention';
import { runServe, ServeScenario } from '../bench/serve';

const SUITES = ['main', 'gemm', 'attention', 'e2e', 'serve'] as const;
/** The suites that run on a device backend (the others drive a whole model on the CPU). */
const DEVICE_SUITES: readonly string[] = ['main', 'gemm', 'attention'];

export function main(argv: string[]): void {
  const program = new Command();
  program.name('tachyon').description('Fast LLM kernels and runtime for Node.js').version(version);

  program
    .command('doctor')
    .description('print the version, backends, CPU ISA, threads and CUDA archs')
    .option('--json', 'print JSON')
    .action((o: { json?: boolean }) => {
      const d = doctor();
      if (o.json) {
        console.log(JSON.stringify(d, null, 2));
        return;
      }
      console.log(`tachyon ${d.version} (node ${d.node}, ${d.platform})`);
      console.log(
        `native addon: ${d.binding.loaded ? d.binding.path : 'NOT LOADED\n' + d.binding.error}`,
      );
      console.log(`cpu: ${d.cpu}`);
      console.log(
        `isa: detected ${d.isaDetected}, in use ${d.isaInUse}${d.isaOverride ? ' (TACHYON_ISA)' : ''}`,
      );
      console.log(`threads: ${d.threads}`);
      for (const b of d.backends)
        console.log(
          `backend ${b.name}: ${b.compiled ? 'compiled' : 'not compiled'}, ${b.usable ? 'usable' : 'unusable'}${b.reason ? ` (${b.reason})` : ''}`,
        );
      console.log(`cuda archs compiled: ${d.cudaArchs.length ? d.cudaArchs.join(', ') : 'none'}`);
    });

  program
    .command('bench')
    .description(
      `run a benchmark suite (${SUITES.join(', ')}); prints a table, writes JSON with --json`,
    )
    .argument('[suite]', 'suite name', 'main')
    .option('--json <file>', 'write results as JSON')
    .option('--repeats <n>', 'timed repeats per case (median reported)', '7')
    .option('--threads <n>', 'compute threads')
    .option('--isa <isa>', 'force an ISA variant (scalar, avx2, avx512)')
    .option(
      '--backend <name>',
      `main, gemm, attention: where the kernels and the rooflines run (${BACKENDS.join(', ')})`,
      'cpu',
    )
    .option('--quick', 'smaller shapes (smoke test)')
    .option(
      '--formats <list>',
      `gemm: comma-separated formats (${GEMM_FORMATS.map((f) => f.name).join(',')})`,
    )
    .option('--batches <list>', 'gemm: comma-separated batch sizes M')
    .option('--shapes <list>', 'gemm: comma-separated NxK shapes')
    .option('--model <file>', 'e2e, serve: a GGUF model (default: a generated ~1B Q4_0 Llama)')
    .option('--no-llama', 'e2e, serve: do not measure llama.cpp')
    .option('--scenarios <list>', 'serve: comma-separated scenarios (decode, mixed, copy)')
    .option('--concurrency <n>', 'serve: concurrent requests of the decode and mixed scenarios')
    .option('--rate <r>', 'serve: Poisson arrival rate of the mixed scenario (requests/s)')
    .option('--native-llama', "e2e: also run llama.cpp's own llama-bench (native build)")
    .action(
      async (
        suite: string,
        o: {
          json?: string;
          repeats: string;
          threads?: string;
          isa?: string;
          backend: string;
          quick?: boolean;
          formats?: string;
          batches?: string;
          shapes?: string;
          model?: string;
          llama?: boolean;
          nativeLlama?: boolean;
          scenarios?: string;
          concurrency?: string;
          rate?: string;
        },
      ) => {
        if (!(SUITES as readonly string[]).includes(suite)) {
          console.error(`Unknown suite '${suite}'. Expected one of: ${SUITES.join(', ')}`);
          process.exitCode = 2;
          return;
        }
        if (!(BACKENDS as readonly string[]).includes(o.backend)) {
          console.error(`Unknown backend '${o.backend}'. Expected one of: ${BACKENDS.join(', ')}`);
          process.exitCode = 2;
          return;
        }
        if (o.backend !== 'cpu' && !DEVICE_SUITES.includes(suite)) {
          console.error(
            `--backend ${o.backend}: the ${suite} suite runs on the CPU only (device suites: ${DEVICE_SUITES.join(', ')})`,
          );
          process.exitCode = 2;
          return;
        }
        const rt = await loadRuntime({
          backend: o.backend as Backend,
          threads: o.threads ? Number(o.threads) : undefined,
          isa: o.isa as Isa | undefined,
        });
        const repeats = Math.max(1, Number(o.repeats) || 7);
        const machine = await measureRooflines(rt, Math.min(repeats, 5));
        const list = (x?: string): string[] | undefined => x?.split(',').map((s) => s.trim());
        const results =
          suite === 'gemm'
            ? await runGemm(rt, machine, {
                repeats,
                quick: o.quick,
                formats: list(o.formats),
                batches: list(o.batches)?.map(Number),
                shapes: list(o.shapes),
              })
            : suite === 'attention'
              ? await runAttention(rt, machine, { repeats, quick: o.quick })
              : suite === 'serve'
                ? await runServe(rt, machine, {
                    quick: o.quick,
                    model: o.model,
                    noLlama: o.llama === false,
                    scenarios: list(o.scenarios) as ServeScenario[] | undefined,
                    concurrency: o.concurrency ? Number(o.concurrency) : undefined,
                    rate: o.rate ? Number(o.rate) : undefined,
                  })
                : suite === 'e2e'
                  ? await runE2e(rt, machine, {
                      repeats: o.repeats === '7' ? 5 : repeats,
                      quick: o.quick,
                      model: o.model,
                      noLlama: o.llama === false,
                      nativeLlama: o.nativeLlama,
                    })
                  : await runMain(rt, machine, { repeats, quick: o.quick });
        const report = makeReport(machine, results);
        printReport(report);
        if (o.json) {
          writeJson(o.json, report);
          console.log(`wrote ${o.json}`);
        }
        rt.dispose();
      },
    );

  program
    .command('generate')
    .description('stream a completion of PROMPT from a GGUF model')
    .requiredOption('-m, --model <file>', 'GGUF model file')
    .argument('<prompt>', 'prompt text')
    .option('-n, --max-tokens <n>', 'tokens to generate', '128')
    .option('-t, --temperature <x>', 'sampling temperature (0 = greedy)', '0.8')
    .option('--top-k <n>', 'top-k (0 = off)', '40')
    .option('--top-p <x>', 'top-p (1 = off)', '0.95')
    .option('--min-p <x>', 'min-p (0 = off)', '0.05')
    .option('--repeat-penalty <x>', 'repetition penalty (1 = off)', '1')
    .option('--seed <n>', 'sampling seed')
    .option('--stop <s...>', 'stop strings')
    .option('--threads <n>', 'compute threads')
    .option('--weights <mode>', 'native, int4, int8 or fp8 (requantize F32/F16/BF16 at load)')
    .option('--kv <dtype>', 'KV cache dtype (f16, bf16, f32, fp8e4m3, int8)', 'f16')
    .option('--ctx <n>', 'context length')
    .option('--stats', 'print load time and tokens/s to stderr')
    .action(async (prompt: string, o: Record<string, string | string[] | boolean | undefined>) => {
      const t0 = performance.now();
      const model = await loadModel(o.model as string, {
        threads: o.threads ? Number(o.threads) : undefined,
        weights: o.weights as LoadModelOptions['weights'],
        kvDtype: o.kv as LoadModelOptions['kvDtype'],
        contextLength: o.ctx ? Number(o.ctx) : undefined,
        onProgress: progress('loading', !!o.stats || process.stderr.isTTY),
      });
      const t1 = performance.now();
      const ac = new AbortController();
      const onSig = () => ac.abort();
      process.once('SIGINT', onSig);
      let n = 0;
      let tFirst = 0;
      try {
        process.stdout.write(prompt);
        for await (const c of model.generate(prompt, {
          maxTokens: Number(o.maxTokens),
          temperature: Number(o.temperature),
          topK: Number(o.topK),
          topP: Number(o.topP),
          minP: Number(o.minP),
          repetitionPenalty: Number(o.repeatPenalty),
          seed: o.seed !== undefined ? Number(o.seed) : undefined,
          stop: o.stop as string[] | undefined,
          signal: ac.signal,
        })) {
          if (n++ === 0) tFirst = performance.now();
          process.stdout.write(c.text);
        }
        process.stdout.write('\n');
      } catch (e) {
        if ((e as { code?: string }).code !== 'E_ABORTED') throw e;
        process.stdout.write('\n');
      } finally {
        process.off('SIGINT', onSig);
        await model.dispose();
      }
      if (o.stats) {
        const t2 = performance.now();
        console.error(
          `load ${((t1 - t0) / 1e3).toFixed(2)} s | prompt+first token ${((tFirst - t1) / 1e3).toFixed(2)} s | ` +
            `decode ${n > 1 ? ((n - 1) / ((t2 - tFirst) / 1e3)).toFixed(2) : '-'} tok/s (${n} tokens)`,
        );
      }
    });

  program
    .command('inspect')
    .description("print a GGUF file's metadata and tensor table")
    .argument('<file>', 'GGUF file')
    .action(async (file: string) => {
      console.log(formatGgufInfo(await readGguf(file)));
    });

  program
    .command('quantize')
    .description(
      'requantize the weight matrices of a GGUF model; writes GGUF (int4 = Q4_0, int8 = Q8_0)',
    )
    .argument('<in>', 'input GGUF')
    .argument('<out>', 'output GGUF')
    .requiredOption(
      '--to <format>',
      'int4 or int8 (fp8 has no GGUF type: use --weights fp8 at load)',
    )
    .action(async (input: string, output: string, o: { to: string }) => {
      const t0 = performance.now();
      const r = await quantizeFile(input, output, {
        to: o.to as QuantizeTarget,
        onProgress: progress('quantizing', process.stderr.isTTY),
      });
      console.error(
        `wrote ${output}: ${r.quantized}/${r.tensors} tensors requantized, ` +
          `${(r.inBytes / 2 ** 20).toFixed(1)} MiB -> ${(r.outBytes / 2 ** 20).toFixed(1)} MiB in ${((performance.now() - t0) / 1e3).toFixed(1)} s`,
      );
    });

  program.parseAsync(argv).catch((e: Error & { code?: string }) => {
    console.error(`tachyon: ${e.code ? e.code + ': ' : ''}${e.message}`);
    process.exitCode = 1;
  });
}

/** A progress bar on a TTY (stderr), else nothing. */
function progress(
  label: string,
  show: boolean | undefined,
): ((p: { done: number; total: number }) => void) | undefined {
  if (!show || !process.stderr.isTTY) return undefined;
  let bar: SingleBar | undefined;
  return (p) => {
    if (!bar) {
      bar = new SingleBar(
        {
          format: `${label} [{bar}] {value}/{total}`,
          stream: process.stderr,
          clearOnComplete: true,
        },
        Presets.shades_classic,
      );
      bar.start(p.total, 0);
    }
    bar.update(p.done);
    if (p.done >= p.total) bar.stop();
  };
}
