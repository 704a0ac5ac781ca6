/**
 * The `tachyon` command: doctor, bench. Top of the layering: it may import anything.
 */
import { Command } from 'commander';
import { doctor } from '../runtime/doctor';
import { loadRuntime, Isa } from '../runtime/runtime';
import { version } from '../version';
import { makeReport, measureMachine, printReport, writeJson } from '../bench/common';
import { runMain } from '../bench/main';
import { GEMM_FORMATS, runGemm } from '../bench/gemm';
import { runAttention } from '../bench/attention';

const SUITES = ['main', 'gemm', 'attention', 'e2e', 'serve'] as const;

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
    .option('--quick', 'smaller shapes (smoke test)')
    .option(
      '--formats <list>',
      `gemm: comma-separated formats (${GEMM_FORMATS.map((f) => f.name).join(',')})`,
    )
    .option('--batches <list>', 'gemm: comma-separated batch sizes M')
    .option('--shapes <list>', 'gemm: comma-separated NxK shapes')
    .action(
      async (
        suite: string,
        o: {
          json?: string;
          repeats: string;
          threads?: string;
          isa?: string;
          quick?: boolean;
          formats?: string;
          batches?: string;
          shapes?: string;
        },
      ) => {
        if (!(SUITES as readonly string[]).includes(suite)) {
          console.error(`Unknown suite '${suite}'. Expected one of: ${SUITES.join(', ')}`);
          process.exitCode = 2;
          return;
        }
        if (suite !== 'main' && suite !== 'gemm' && suite !== 'attention') {
          console.error(
            `Suite '${suite}' is not implemented yet in this version. Available now: main, gemm, attention`,
          );
          process.exitCode = 2;
          return;
        }
        const rt = await loadRuntime({
          threads: o.threads ? Number(o.threads) : undefined,
          isa: o.isa as Isa | undefined,
        });
        const repeats = Math.max(1, Number(o.repeats) || 7);
        const machine = await measureMachine(rt, Math.min(repeats, 5));
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

  program.parseAsync(argv).catch((e: Error & { code?: string }) => {
    console.error(`tachyon: ${e.code ? e.code + ': ' : ''}${e.message}`);
    process.exitCode = 1;
  });
}
