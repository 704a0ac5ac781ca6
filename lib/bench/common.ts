/**
 * Shared benchmark plumbing: machine probes (the rooflines), timing on the stream,
 * medians, the one JSON shape every suite writes, and the printed table.
 */
import * as fs from 'node:fs';
import Table from 'cli-table3';
import { Runtime, Stream, binding } from '../runtime/runtime';
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

export interface Machine {
  cpu: string;
  isa: string;
  threads: number;
  bandwidthGBs: number;
  peakMacPerS: { f32: number; bf16: number; int8: number };
}

export interface BenchReport {
  version: 1;
  tachyon: string;
  date: string;
  machine: Machine;
  results: BenchResult[];
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
  for (let i = 0; i < warmup; i++) enqueue();
  await stream.synchronize();
  const times: number[] = [];
  for (let i = 0; i < repeats; i++) {
    const t0 = stream.timestamp();
    enqueue();
    const t1 = stream.timestamp();
    times.push((await t1) - (await t0));
  }
  return times;
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
    bandwidthGBs: bw / 1e9,
    peakMacPerS: { f32, bf16, int8 },
  };
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
