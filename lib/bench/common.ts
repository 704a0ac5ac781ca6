/**
 * Shared benchmark plumbing: machine probes (the rooflines), timing on the stream,
 * medians, the one JSON shape every suite writes, and the printed table.
 *
 * On a device backend (cuda, cuda-emu) the rooflines are the device's, measured in the same
 * run by {@link measureDeviceMachine}, and the work is timed in stream order on the device
 * (see {@link timeRuns}).
 */
import * as fs from 'node:fs';
import Table from 'cli-table3';
import { encode } from '../runtime/dtype';
import { Backend, Runtime, Stream, binding } from '../runtime/runtime';
import { version } from '../version';

export interface Roofline {
  kind: 'bandwidth' | 'compute';
  ratio: number;
  /** For compute: which peak (f32, bf16, int8) the ratio is against. */
  peak?: string;
}

export interface BenchResult {
  suite: string;
  case: string;
  params: Record<string, unknown>;
  medianMs: number;
  minMs: number;
  repeats: number;
  gbPerS?: number;
  macPerS?: number;
  roofline?: Roofline;
  [extra: string]: unknown;
}

/** The MAC-rate ceilings; on a device, which are measured and which derived: {@link Machine.probes}. */
export interface PeakMacPerS {
  /** 0 on the device backends: they have no f32 GEMM (nothing to measure). */
  f32: number;
  bf16: number;
  int8: number;
  /** Device backends: the dense f16 tensor-core rate. */
  f16?: number;
  /** Device backends: the rate of the fp8 W8A8 path (e4m3 tensor cores on sm_89+). */
  fp8?: number;
}

export interface Machine {
  /** The host CPU (also on device runs). */
  cpu: string;
  isa: string;
  threads: number;
  /** CPU: DRAM read bandwidth. Device: device-memory bandwidth (a large copy, read + write). */
  bandwidthGBs: number;
  peakMacPerS: PeakMacPerS;
  /** Where the rooflines were measured and the suites ran (absent in older reports: cpu). */
  backend?: Backend;
  /** Device backends: the device, in words (name, sm_XX, SMs, memory). */
  device?: string;
  /** Device backends: how each roofline figure was obtained. */
  probes?: Record<string, string>;
  /**
   * Device backends: microseconds per op of a tiny kernel issued back to back, the host's cost
   * of launching one op: no device figure can read below it (see `launchFloorRatio`).
   */
  launchFloorUs?: number;
}

export interface BenchReport {
  version: 1;
  tachyon: string;
  date: string;
  machine: Machine;
  results: BenchResult[];
}

/** A device backend (the work runs on a CUDA device, or on the emulator of one). */
export function isDevice(rt: Runtime): boolean {
  return rt.backend !== 'cpu';
}

/**
 * The fields every result carries about where it ran: `backend`; on a device also `device`,
 * `runsPerSample` (see timeRuns) and `launchFloorRatio` = median / the launch floor (an op
 * launches one kernel or more: a ratio under ~2 means the figure may be the host's launch
 * rate, not the kernel's).
 */
export function whereRan(
  rt: Runtime,
  machine: Machine,
  timing?: { runsPerSample: number; medianMs: number },
): Record<string, unknown> {
  if (!isDevice(rt)) return { backend: rt.backend };
  const r: Record<string, unknown> = { backend: rt.backend, device: rt.device };
  if (timing) {
    r.runsPerSample = timing.runsPerSample;
    if (machine.launchFloorUs) r.launchFloorRatio = timing.medianMs / (machine.launchFloorUs / 1e3);
  }
  return r;
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/**
 * Times `enqueue` on the stream (stream-side timestamps, so JS overhead is excluded),
 * `repeats` times after `warmup` runs; returns per-run milliseconds.
 */
export async function timeOnStream(
  stream: Stream,
  enqueue: () => void,
  repeats: number,
  warmup = 1,
): Promise<number[]> {
  return (await timeRuns(stream, enqueue, repeats, warmup)).times;
}

/**
 * The shortest sample timed on a device stream: runs are repeated back to back until one
 * sample lasts this long, so the fixed cost of a sample (one stream synchronization and two
 * timestamps: ~10-20 µs on a GPU) stays under 1%.
 */
export const DEVICE_MIN_SAMPLE_MS = 2;
const DEVICE_MAX_RUNS_PER_SAMPLE = 4096;

/**
 * timeOnStream, with the runs per sample. On the CPU a stream timestamp is taken after the
 * work queued before it has run (ops run on the stream thread), so one run per sample.
 *
 * On a device the stream thread only launches kernels, and a timestamp is read on that thread
 * before the device queue is synchronized: `enqueue(); timestamp()` would time the launch. So
 * each sample's end is a synchronize() queued before the timestamp (the stream thread reaches
 * the timestamp only once the device has finished the sample's kernels), and a sample is
 * `runsPerSample` back-to-back runs (doubled from 1 until a sample lasts DEVICE_MIN_SAMPLE_MS):
 * a time per run = sample / runsPerSample, the device's throughput for that op in a stream of
 * them, as a model's layers run. The launches are asynchronous, but the stream thread issues
 * them one by one: a run can never read below the host's cost of launching it (see
 * measureDeviceMachine's launch floor; results report `launchFloorRatio`).
 */
export async function timeRuns(
  stream: Stream,
  enqueue: () => void,
  repeats: number,
  warmup = 1,
): Promise<{ times: number[]; runsPerSample: number }> {
  const device = stream.runtime.backend !== 'cpu';
  for (let i = 0; i < warmup; i++) enqueue();
  await stream.synchronize();
  const sample = async (runs: number): Promise<number> => {
    const t0 = stream.timestamp();
    for (let i = 0; i < runs; i++) enqueue();
    const done = device ? stream.synchronize() : Promise.resolve();
    const t1 = stream.timestamp();
    // all three awaited together: a failed run rejects them all, none may go unhandled
    const [a, , b] = await Promise.all([t0, done, t1]);
    return b - a;
  };
  let runsPerSample = 1;
  if (device)
    for (;;) {
      const t = await sample(runsPerSample);
      if (t >= DEVICE_MIN_SAMPLE_MS || runsPerSample >= DEVICE_MAX_RUNS_PER_SAMPLE) break;
      // at least double (fixed costs make a short sample over-read), aim 20% over the minimum
      const aim = Math.ceil((runsPerSample * DEVICE_MIN_SAMPLE_MS * 1.2) / Math.max(t, 1e-3));
      runsPerSample = Math.min(DEVICE_MAX_RUNS_PER_SAMPLE, Math.max(2 * runsPerSample, aim));
    }
  const times: number[] = [];
  for (let i = 0; i < repeats; i++) times.push((await sample(runsPerSample)) / runsPerSample);
  return { times, runsPerSample };
}

const PROBE = { dram: 0, f32: 1, bf16: 2, int8: 3 } as const;

async function probe(
  rt: Runtime,
  kind: number,
  iters: number,
  buf: unknown,
  repeats: number,
): Promise<number> {
  const result = rt.empty([16], 'u8');
  const rates: number[] = [];
  for (let i = 0; i < repeats; i++) {
    binding().probe(rt.defaultStream.native, kind, iters, buf ?? null, result.native);
    const r = new Float64Array(((await result.read()) as Uint8Array).slice().buffer);
    rates.push(r[0] / r[1]);
  }
  result.dispose();
  // A ceiling is the best rate the machine showed, not a typical one: on a shared machine
  // the median under-reads the roof and pushes ratios above 1.
  return Math.max(...rates);
}

/** Measures this machine's DRAM read bandwidth and peak MAC rates, in this process, now. */
export async function measureMachine(rt: Runtime, repeats = 5): Promise<Machine> {
  // 512 MiB: far beyond any L3. Written once so every page is really backed by DRAM
  // (untouched anonymous pages all map the one zero page, which sits in cache).
  const buf = rt.zeros([128 << 20], 'f32');
  const { add } = await import('../ops/elementwise');
  add(buf, buf, { out: buf });
  await rt.synchronize();
  const bw = await probe(rt, PROBE.dram, 2, buf.native, repeats);
  buf.dispose();
  const iters = 20_000_000;
  const f32 = await probe(rt, PROBE.f32, iters, null, repeats);
  const bf16 = await probe(rt, PROBE.bf16, iters, null, repeats);
  const int8 = await probe(rt, PROBE.int8, iters, null, repeats);
  const d = binding().doctor();
  return {
    cpu: d.cpu,
    isa: rt.isa,
    threads: rt.threads,
    backend: 'cpu',
    bandwidthGBs: bw / 1e9,
    peakMacPerS: { f32, bf16, int8 },
  };
}

/**
 * The L2 cache of the largest GPU these benchmarks target: 50 MB on H100 (SXM and PCIe) and
 * H200 (A100: 40 MB). Decode cases rotate through distinct copies of their operands totalling
 * DEVICE_ROTATE_BYTES = 4× this, so that no call finds its weights (or KV) in L2: a cyclic
 * sweep over more than the cache misses every time, and the margin covers L2 policies that keep
 * part of a stream resident (H100's L2 is two partitions that may each hold a copy of a line).
 */
export const GPU_L2_BYTES = 50 * 2 ** 20;
export const DEVICE_ROTATE_BYTES = 4 * GPU_L2_BYTES;

/** The compute capability in a device description ("... sm_90 ..."), or 0. */
export function deviceSm(machine: Machine): number {
  const m = /sm_(\d+)/.exec(machine.device ?? '');
  return m ? Number(m[1]) : 0;
}

/** Sizes of the device probes: real ones on a GPU, tiny ones on the emulator (code path only). */
export function deviceProbeSizes(rt: Runtime): { copyBytes: number; gemm: number } {
  return rt.backend === 'cuda'
    ? // 1 GiB: 20× a 50 MB L2, so the copy streams from and to HBM. 8192³: thousands of
      // output tiles (tens of waves on 132 SMs, so the last partial wave costs little), and a
      // K long enough that the prologue / epilogue of each tile are negligible.
      { copyBytes: 2 ** 30, gemm: 8192 }
    : { copyBytes: 4 * 2 ** 20, gemm: 128 };
}

/**
 * The rooflines of a device backend, measured on the device in this process, now:
 *   - bandwidth: a device-to-device copy (same-dtype cast) of `copyBytes`, counted as bytes read
 *     plus bytes written (a copy is the simplest kernel that streams at the memory's rate);
 *   - f16 / bf16: a dense tensor-core matmul of gemm³ (our own kernel, gemm_f16.cuh: the roof
 *     is what this library's best dense GEMM reaches; compare it with the spec sheet);
 *   - int8 and fp8 (W8A8 on sm_89+) are 2× the measured f16 rate: every tensor-core generation
 *     targeted (sm_80, sm_89, sm_90) runs 8-bit mma at twice the 16-bit rate, and there is no
 *     dense 8-bit GEMM to measure that is not itself under test. Below sm_89 the fp8 W8A8 path
 *     runs on the 16-bit tensor cores (gemm_fp8.cuh), so its roof is the f16 rate.
 * Like the CPU probes, each figure is the best of `repeats` samples (a ceiling, not a typical
 * rate). On cuda-emu the sizes are tiny and the figures meaningless: only the path is real.
 */
export async function measureDeviceMachine(rt: Runtime, repeats = 5): Promise<Machine> {
  const { copyBytes, gemm: n } = deviceProbeSizes(rt);
  const { cast } = await import('../ops/cast');
  const { matmul } = await import('../ops/matmul');
  const src = rt.zeros([copyBytes], 'u8');
  const dst = rt.empty([copyBytes], 'u8');
  const copy = await timeRuns(rt.defaultStream, () => cast(src, 'u8', { out: dst }), repeats);
  src.dispose();
  dst.dispose();
  const bandwidth = (2 * copyBytes) / (Math.min(...copy.times) / 1e3);
  const vals = new Float32Array(n * n);
  for (let i = 0; i < vals.length; i++) vals[i] = ((i * 2654435761) % 1000) / 1000 - 0.5;
  const peak = async (dtype: 'f16' | 'bf16'): Promise<number> => {
    const enc = encode(dtype, vals);
    const a = rt.tensor(enc, [n, n], { dtype });
    const b = rt.tensor(enc, [n, n], { dtype });
    const c = rt.empty([n, n], dtype);
    const r = await timeRuns(rt.defaultStream, () => matmul(a, b, { out: c }), repeats);
    a.dispose();
    b.dispose();
    c.dispose();
    return (n * n * n) / (Math.min(...r.times) / 1e3);
  };
  const f16 = await peak('f16');
  const bf16 = await peak('bf16');
  // the launch floor: an elementwise add of 256 f16 (~nothing on the device), back to back
  const { add } = await import('../ops/elementwise');
  const x = rt.tensor(new Uint16Array(256), [256], { dtype: 'f16' });
  const y = rt.empty([256], 'f16');
  const floor = await timeRuns(rt.defaultStream, () => add(x, x, { out: y }), repeats);
  x.dispose();
  y.dispose();
  const d = binding().doctor();
  const machine: Machine = {
    cpu: d.cpu,
    isa: rt.isa,
    threads: rt.threads,
    backend: rt.backend,
    device: rt.device,
    bandwidthGBs: bandwidth / 1e9,
    peakMacPerS: { f32: 0, bf16, int8: 2 * f16, f16, fp8: 0 },
    probes: {},
    launchFloorUs: median(floor.times) * 1e3,
  };
  const fp8Mma = deviceSm(machine) >= 89;
  machine.peakMacPerS.fp8 = fp8Mma ? 2 * f16 : f16;
  machine.probes = {
    bandwidth: `device copy of ${fmtBytes(copyBytes)} (read + write), best of ${repeats}`,
    f16: `matmul f16 ${n}x${n}x${n} (gemm_f16.cuh), best of ${repeats}`,
    bf16: `matmul bf16 ${n}x${n}x${n} (gemm_f16.cuh), best of ${repeats}`,
    int8: '2x the f16 rate (8-bit tensor-core mma rate on sm_80/89/90; derived, not measured)',
    fp8: fp8Mma
      ? '2x the f16 rate (e4m3 tensor-core mma on sm_89+; derived, not measured)'
      : 'the f16 rate (below sm_89 fp8 W8A8 runs on the 16-bit tensor cores)',
    f32: 'none (no f32 GEMM on the device backends)',
    launchFloor: `add of 256 f16 issued back to back, median of ${repeats}`,
  };
  if (rt.backend === 'cuda-emu')
    machine.probes.note = 'cuda-emu: the CUDA kernels on the CPU emulator; figures meaningless';
  return machine;
}

function fmtBytes(b: number): string {
  return b >= 2 ** 30 ? `${b / 2 ** 30} GiB` : `${b / 2 ** 20} MiB`;
}

/** The machine probes for `rt`'s backend: the CPU's, or the device's. */
export function measureRooflines(rt: Runtime, repeats = 5): Promise<Machine> {
  return isDevice(rt) ? measureDeviceMachine(rt, repeats) : measureMachine(rt, repeats);
}

export function makeReport(machine: Machine, results: BenchResult[]): BenchReport {
  return { version: 1, tachyon: version, date: new Date().toISOString(), machine, results };
}

export function fmt(x: number | undefined, digits = 3): string {
  if (x === undefined || !Number.isFinite(x)) return '-';
  if (Math.abs(x) >= 1e9) return (x / 1e9).toFixed(1) + 'G';
  if (Math.abs(x) >= 1e6) return (x / 1e6).toFixed(1) + 'M';
  return x.toPrecision(digits);
}

export function printReport(report: BenchReport, log: (s: string) => void = console.log): void {
  const m = report.machine;
  if (m.backend && m.backend !== 'cpu') {
    const p = m.peakMacPerS;
    log(
      `device (${m.backend}): ${m.device} | host ${m.cpu} | memory ${m.bandwidthGBs.toFixed(1)} GB/s (copy, read + write) | ` +
        `peak MAC/s f16 ${fmt(p.f16)} bf16 ${fmt(p.bf16)} int8 ${fmt(p.int8)} fp8 ${fmt(p.fp8)} (8-bit: derived) | ` +
        `launch floor ${fmt(m.launchFloorUs)} µs/op`,
    );
    if (m.backend === 'cuda-emu')
      log('cuda-emu: CUDA kernels on the CPU emulator; the figures below are meaningless');
  } else
    log(
      `machine: ${m.cpu} | isa ${m.isa} | ${m.threads} threads | DRAM read ${m.bandwidthGBs.toFixed(1)} GB/s | ` +
        `peak MAC/s f32 ${fmt(m.peakMacPerS.f32)} bf16 ${fmt(m.peakMacPerS.bf16)} int8 ${fmt(m.peakMacPerS.int8)}`,
    );
  const t = new Table({
    head: ['suite', 'case', 'median ms', 'min ms', 'GB/s', 'MAC/s', 'roofline', 'ratio', 'tok/s'],
  });
  for (const r of report.results)
    t.push([
      r.suite,
      r.case,
      r.medianMs.toFixed(3),
      r.minMs.toFixed(3),
      fmt(r.gbPerS),
      fmt(r.macPerS),
      r.roofline?.kind ?? '-',
      r.roofline ? (r.roofline.ratio * 100).toFixed(1) + '%' : '-',
      typeof r.tokensPerS === 'number' ? r.tokensPerS.toFixed(2) : '-',
    ]);
  log(t.toString());
  const vs = report.results.filter((r) => typeof r.speedupVsF16 === 'number');
  if (vs.length) {
    const v = new Table({ head: ['case', 'median ms', 'f16 median ms', 'speedup vs f16'] });
    for (const r of vs)
      v.push([
        r.case,
        r.medianMs.toFixed(4),
        (r.medianMs * (r.speedupVsF16 as number)).toFixed(4),
        (r.speedupVsF16 as number).toFixed(2) + 'x',
      ]);
    log(v.toString());
  }
  const serve = report.results.filter((r) => typeof r.ttftP50Ms === 'number');
  if (serve.length === 0) return;
  const ms = (x: unknown) => (typeof x === 'number' ? x.toFixed(0) : '-');
  const pct = (x: unknown) => (typeof x === 'number' ? (x * 100).toFixed(0) + '%' : '-');
  const s = new Table({
    head: [
      'case',
      'tok/s',
      'req/s',
      'TTFT p50/p99 ms',
      'TPOT p50/p99 ms',
      'ITL p50/p99 ms',
      'goodput',
      'prefix hit',
      'preempt',
      'accept',
    ],
  });
  for (const r of serve)
    s.push([
      r.case,
      (r.tokensPerS as number).toFixed(2),
      fmt(r.requestsPerS as number),
      `${ms(r.ttftP50Ms)} / ${ms(r.ttftP99Ms)}`,
      `${ms(r.tpotP50Ms)} / ${ms(r.tpotP99Ms)}`,
      `${ms(r.itlP50Ms)} / ${ms(r.itlP99Ms)}`,
      fmt(r.goodputRps as number),
      pct(r.prefixHitRate),
      r.preemptions === undefined ? '-' : String(r.preemptions),
      pct(r.acceptanceRate),
    ]);
  log(s.toString());
}

export function writeJson(file: string, report: BenchReport): void {
  fs.writeFileSync(file, JSON.stringify(report, null, 2) + '\n');
}
