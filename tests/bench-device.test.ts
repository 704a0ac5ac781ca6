/**
 * The benchmark suites on a device backend: `tachyon bench {gemm,attention,main} --backend
 * cuda-emu --quick` run through the real CLI (from source, as `npm run bench` does), and their
 * JSON is checked: version 1, the device rooflines measured in the same run, and every result's
 * backend, timing and roofline fields. cuda-emu runs the CUDA kernels on the CPU emulator, so
 * the figures are meaningless; what this proves is that the device path of the benchmark code
 * (weights packed in the device layout, device KV caches, device timing) works, so that
 * `--backend cuda` produces figures the day a GPU is there.
 *
 * Also: the device timing itself (a mock stream): a sample must end with a synchronize() queued
 * before its end timestamp, or it would time the launches and not the device's work.
 */
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { doctor } from '../lib/runtime/doctor';
import { Stream } from '../lib/runtime/runtime';
import { packedBytes } from '../lib/ops/quant';
import { BenchReport, BenchResult, DEVICE_MIN_SAMPLE_MS, timeRuns } from '../lib/bench/common';

const run = promisify(execFile);
const ROOT = path.join(__dirname, '..');
const TSX = path.join(ROOT, 'node_modules', '.bin', 'tsx');

const emu = doctor().backends.find((b) => b.name === 'cuda-emu');
const usable = !!emu?.usable;
if (!usable)
  process.stderr.write(
    `[bench-device] cuda-emu is not usable (${emu?.reason ?? 'no such backend'}): the device benchmark runs are SKIPPED\n`,
  );

let dir = '';
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tachyon-bench-device-'));
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

/** Runs `tachyon bench ARGS --json FILE` from source; returns the report and the output. */
async function bench(args: string[]): Promise<{ report: BenchReport; stdout: string }> {
  const file = path.join(dir, `${args[0]}.json`);
  const { stdout } = await run(TSX, [path.join(ROOT, 'bench/run.ts'), ...args, '--json', file], {
    cwd: ROOT,
    timeout: 60_000,
    env: { ...process.env, TACHYON_EMU_SCHEDULE: 'forward' },
  });
  return { report: JSON.parse(fs.readFileSync(file, 'utf8')) as BenchReport, stdout };
}

const finitePos = (x: unknown): boolean => typeof x === 'number' && Number.isFinite(x) && x > 0;

/** What every device report and result must carry. */
function checkDeviceReport(report: BenchReport): void {
  expect(report.version).toBe(1);
  const m = report.machine;
  expect(m.backend).toBe('cuda-emu');
  expect(m.device).toMatch(/cuemu/);
  expect(finitePos(m.bandwidthGBs)).toBe(true);
  for (const k of ['f16', 'bf16', 'int8', 'fp8'] as const)
    expect(finitePos(m.peakMacPerS[k])).toBe(true);
  // the derived 8-bit roof; fp8 W8A8 on sm_80 (the emulator's limits) runs on the f16 tensor cores
  expect(m.peakMacPerS.int8).toBeCloseTo(2 * m.peakMacPerS.f16!, 0);
  expect(m.peakMacPerS.fp8).toBe(m.peakMacPerS.f16);
  expect(finitePos(m.launchFloorUs)).toBe(true);
  expect(Object.keys(m.probes ?? {})).toEqual(
    expect.arrayContaining(['bandwidth', 'f16', 'bf16', 'int8', 'fp8', 'launchFloor']),
  );
  expect(report.results.length).toBeGreaterThan(0);
  for (const r of report.results) {
    expect(r.backend).toBe('cuda-emu');
    expect(r.device).toBe(m.device);
    expect(r.roofline).toBeDefined();
    expect(['bandwidth', 'compute']).toContain(r.roofline!.kind);
    expect(finitePos(r.roofline!.ratio)).toBe(true);
  }
}

/** A timed device result: finite positive medians and the device timing fields. */
function checkTimed(r: BenchResult): void {
  expect(finitePos(r.medianMs)).toBe(true);
  expect(finitePos(r.minMs)).toBe(true);
  expect(r.minMs).toBeLessThanOrEqual(r.medianMs);
  expect(r.repeats).toBe(2);
  expect(Number.isInteger(r.runsPerSample) && (r.runsPerSample as number) >= 1).toBe(true);
  expect(finitePos(r.launchFloorRatio)).toBe(true);
}

const suite = usable ? describe : describe.skip;

suite('bench --backend cuda-emu --quick (through the CLI)', () => {
  test('gemm: device-packed weights, f16 activations, both ratios, speedup vs f16', async () => {
    const { report, stdout } = await bench([
      'gemm',
      '--backend',
      'cuda-emu',
      '--quick',
      '--repeats',
      '2',
    ]);
    expect(stdout).toMatch(/meaningless/);
    checkDeviceReport(report);
    const cases = report.results.map((r) => r.case).sort();
    expect(cases).toEqual(
      [
        'f16 256x256 M=1',
        'f16 256x256 M=16',
        'int4-g128 256x256 M=1',
        'int4-g128 256x256 M=16',
      ].sort(),
    );
    for (const r of report.results) {
      checkTimed(r);
      const p = r.params;
      expect(p.activations).toBe('f16');
      expect(p.output).toBe('f16');
      // decode rotates through (at least two) distinct weight copies
      expect(p.rotatedCopies).toBeGreaterThanOrEqual(2);
      const int4 = p.format === 'int4-g128';
      // the device layout's size, not the CPU's
      expect(p.weightBytes).toBe(
        int4
          ? packedBytes({ kind: 'int4', group: 128, scaleDtype: 'f16' }, [256, 256], 'cuda-emu')
          : 256 * 256 * 2,
      );
      expect(p.peak).toBe('f16');
      expect(finitePos(r.gbPerS) && finitePos(r.macPerS)).toBe(true);
      const bw = r.bandwidthRatio as number;
      const cr = r.computeRatio as number;
      expect(finitePos(bw) && finitePos(cr)).toBe(true);
      expect(bw).toBeCloseTo((r.gbPerS as number) / report.machine.bandwidthGBs, 6);
      expect(cr).toBeCloseTo((r.macPerS as number) / report.machine.peakMacPerS.f16!, 6);
      expect(r.roofline!.ratio).toBe(Math.max(bw, cr));
      if (int4) {
        const base = report.results.find((x) => x.params.format === 'f16' && x.params.m === p.m)!;
        expect(r.speedupVsF16).toBeCloseTo(base.medianMs / r.medianMs, 6);
      } else expect(r.speedupVsF16).toBeUndefined();
    }
  });

  test('attention: f16 / fp8 decode, fused and unfused prefill on the device', async () => {
    const { report } = await bench([
      'attention',
      '--backend',
      'cuda-emu',
      '--quick',
      '--repeats',
      '2',
    ]);
    checkDeviceReport(report);
    const kinds = report.results.map((r) => `${r.params.kind} ${r.params.dtype}`);
    expect(kinds.sort()).toEqual(
      [
        'decode f16',
        'decode f16',
        'decode fp8e4m3',
        'decode fp8e4m3',
        'prefill f16',
        'prefill-unfused f16',
      ].sort(),
    );
    for (const r of report.results) {
      checkTimed(r);
      if (r.params.kind === 'decode') {
        expect(r.params.query).toBe('f16');
        expect(r.roofline!.kind).toBe('bandwidth');
        expect(r.roofline!.ratio).toBeCloseTo(
          (r.gbPerS as number) / report.machine.bandwidthGBs,
          6,
        );
        expect(r.params.layers).toBeGreaterThanOrEqual(2);
      } else {
        expect(r.roofline!.kind).toBe('compute');
        expect(r.roofline!.peak).toBe('f16');
        expect(r.roofline!.ratio).toBeCloseTo(
          (r.macPerS as number) / report.machine.peakMacPerS.f16!,
          6,
        );
      }
    }
    const unfused = report.results.find((r) => r.params.kind === 'prefill-unfused')!;
    expect(finitePos(unfused.fusedSpeedup)).toBe(true);
  });

  test('main: the device rooflines and dense f16 / bf16 GEMM against them', async () => {
    const { report } = await bench(['main', '--backend', 'cuda-emu', '--quick', '--repeats', '2']);
    checkDeviceReport(report);
    const gemms = report.results.filter((r) => r.params.op === 'matmul');
    expect(gemms.map((r) => r.case).sort()).toEqual(['gemm bf16 64x64x64', 'gemm f16 64x64x64']);
    for (const r of gemms) checkTimed(r);
    expect(report.results.find((r) => r.case === 'device memory (copy)')?.gbPerS).toBe(
      report.machine.bandwidthGBs,
    );
  });

  test('suites that run a whole model refuse a device backend', async () => {
    const err = await run(TSX, [path.join(ROOT, 'bench/run.ts'), 'e2e', '--backend', 'cuda-emu'], {
      cwd: ROOT,
      timeout: 30_000,
    }).then(
      () => undefined,
      (e: { code?: number; stderr?: string }) => e,
    );
    expect(err?.code).toBe(2);
    expect(err?.stderr).toMatch(/runs on the CPU only/);
  });
});

describe('device timing (timeRuns on a mock device stream)', () => {
  // A device stream whose launches cost nothing on the host: each run is 0.1 ms of device work,
  // done (and the clock advanced) only when the stream is synchronized, as a GPU queue behaves.
  function mockDevice(backend: string) {
    let clock = 0;
    let pending = 0;
    const log: string[] = [];
    const stream = {
      runtime: { backend },
      timestamp: () => {
        log.push('t');
        return Promise.resolve(clock);
      },
      synchronize: () => {
        log.push('s');
        clock += pending * 0.1;
        pending = 0;
        return Promise.resolve();
      },
    } as unknown as Stream;
    const enqueue = () => {
      log.push('r');
      pending++;
    };
    return { stream, enqueue, log };
  }

  test('each sample synchronizes the device before its end timestamp', async () => {
    const { stream, enqueue, log } = mockDevice('cuda');
    const { times, runsPerSample } = await timeRuns(stream, enqueue, 3, 1);
    expect(times).toHaveLength(3);
    for (const t of times) expect(t).toBeCloseTo(0.1, 9); // the device's time per run
    // enough runs per sample to last DEVICE_MIN_SAMPLE_MS
    expect(runsPerSample * 0.1).toBeGreaterThanOrEqual(DEVICE_MIN_SAMPLE_MS);
    const last = log.join('').slice(-(runsPerSample + 3));
    expect(last).toBe('t' + 'r'.repeat(runsPerSample) + 'st');
  });

  test('the CPU path is unchanged: one run per sample, no extra synchronize', async () => {
    const { stream, enqueue, log } = mockDevice('cpu');
    const { runsPerSample } = await timeRuns(stream, enqueue, 2, 1);
    expect(runsPerSample).toBe(1);
    expect(log.join('')).toBe('rs' + 'trt'.repeat(2));
  });
});
