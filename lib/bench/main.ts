/**
 * The main benchmark suite: the machine's rooflines, measured now (DRAM read bandwidth,
 * f32/bf16/int8 peak MAC rates), and dense GEMM at 1024³ and 4096³ against them.
 */
import { encode, FloatDType } from '../runtime/dtype';
import { Runtime } from '../runtime/runtime';
import { matmul } from '../ops/matmul';
import { BenchResult, Machine, median, timeOnStream } from './common';

export async function runMain(
  rt: Runtime,
  machine: Machine,
  opts: { repeats: number; quick?: boolean },
): Promise<BenchResult[]> {
  const results: BenchResult[] = [];
  results.push({
    suite: 'main',
    case: 'dram read',
    params: { probe: 'dram_read', bytes: 512 << 20 },
    medianMs: 0,
    minMs: 0,
    repeats: opts.repeats,
    gbPerS: machine.bandwidthGBs,
    roofline: { kind: 'bandwidth', ratio: 1 },
  });
  for (const kind of ['f32', 'bf16', 'int8'] as const)
    results.push({
      suite: 'main',
      case: `peak ${kind}`,
      params: { probe: kind },
      medianMs: 0,
      minMs: 0,
      repeats: opts.repeats,
      macPerS: machine.peakMacPerS[kind],
      roofline: { kind: 'compute', ratio: 1 },
    });
  const sizes = opts.quick ? [256, 1024] : [1024, 4096];
  for (const dtype of ['f32', 'bf16'] as FloatDType[])
    for (const n of sizes) {
      const vals = new Float32Array(n * n);
      for (let i = 0; i < vals.length; i++) vals[i] = ((i * 2654435761) % 1000) / 1000 - 0.5;
      const enc = encode(dtype, vals);
      const a = rt.tensor(enc, [n, n], { dtype });
      const b = rt.tensor(enc, [n, n], { dtype });
      const c = rt.empty([n, n], 'f32');
      const repeats = n >= 4096 ? Math.max(3, Math.min(opts.repeats, 5)) : opts.repeats;
      const times = await timeOnStream(rt.defaultStream, () => matmul(a, b, { out: c }), repeats);
      const ms = median(times);
      const macs = n * n * n;
      const macPerS = macs / (ms / 1e3);
      const peak = machine.peakMacPerS[dtype === 'f32' ? 'f32' : 'bf16'];
      results.push({
        suite: 'main',
        case: `gemm ${dtype} ${n}x${n}x${n}`,
        params: { op: 'matmul', dtype, m: n, n, k: n },
        medianMs: ms,
        minMs: Math.min(...times),
        repeats,
        macPerS,
        gbPerS: (2 * n * n * (dtype === 'f32' ? 4 : 2) + n * n * 4) / (ms / 1e3) / 1e9,
        roofline: { kind: 'compute', ratio: macPerS / peak },
      });
      a.dispose();
      b.dispose();
      c.dispose();
    }
  return results;
}
