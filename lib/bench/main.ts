/**
 * The main benchmark suite: the machine's rooflines, measured now (DRAM read bandwidth,
 * f32/bf16/int8 peak MAC rates), and dense GEMM at 1024³ and 4096³ against them.
 *
 * On a device backend (cuda, cuda-emu): the device's rooflines (memory bandwidth from a large
 * device copy, the f16 / bf16 tensor-core rates from a large matmul; int8 / fp8 derived, see
 * measureDeviceMachine) and dense f16 / bf16 GEMM (f16 / bf16 output) against them; cuda-emu
 * runs 64³ and 128³ (the path only).
 */
import { encode, FloatDType } from '../runtime/dtype';
import { Runtime } from '../runtime/runtime';
import { matmul } from '../ops/matmul';
import {
  BenchResult,
  deviceProbeSizes,
  isDevice,
  Machine,
  median,
  timeRuns,
  whereRan,
} from './common';

export async function runMain(
  rt: Runtime,
  machine: Machine,
  opts: { repeats: number; quick?: boolean },
): Promise<BenchResult[]> {
  const results: BenchResult[] = [];
  const device = isDevice(rt);
  const probeSizes = deviceProbeSizes(rt);
  results.push({
    suite: 'main',
    case: device ? 'device memory (copy)' : 'dram read',
    params: device
      ? { probe: 'device_copy', bytes: probeSizes.copyBytes, counted: 'read + write' }
      : { probe: 'dram_read', bytes: 512 << 20 },
    medianMs: 0,
    minMs: 0,
    repeats: opts.repeats,
    gbPerS: machine.bandwidthGBs,
    roofline: { kind: 'bandwidth', ratio: 1 },
    ...whereRan(rt, machine),
  });
  const peaks = device
    ? (['f16', 'bf16', 'int8', 'fp8'] as const)
    : (['f32', 'bf16', 'int8'] as const);
  for (const kind of peaks)
    results.push({
      suite: 'main',
      case: `peak ${kind}`,
      params: device
        ? { probe: kind, how: machine.probes?.[kind], derived: kind === 'int8' || kind === 'fp8' }
        : { probe: kind },
      medianMs: 0,
      minMs: 0,
      repeats: opts.repeats,
      macPerS: machine.peakMacPerS[kind],
      roofline: { kind: 'compute', ratio: 1 },
      ...whereRan(rt, machine),
    });
  const sizes =
    rt.backend === 'cuda-emu'
      ? opts.quick
        ? [64]
        : [64, 128]
      : opts.quick
        ? [256, 1024]
        : [1024, 4096];
  const dtypes: FloatDType[] = device ? ['f16', 'bf16'] : ['f32', 'bf16'];
  for (const dtype of dtypes)
    for (const n of sizes) {
      const vals = new Float32Array(n * n);
      for (let i = 0; i < vals.length; i++) vals[i] = ((i * 2654435761) % 1000) / 1000 - 0.5;
      const enc = encode(dtype, vals);
      const a = rt.tensor(enc, [n, n], { dtype });
      const b = rt.tensor(enc, [n, n], { dtype });
      // the CPU writes f32; a device writes the input dtype (its tensor-core epilogue)
      const outDtype: FloatDType = device ? dtype : 'f32';
      const c = rt.empty([n, n], outDtype);
      const repeats = !device && n >= 4096 ? Math.max(3, Math.min(opts.repeats, 5)) : opts.repeats;
      const { times, runsPerSample } = await timeRuns(
        rt.defaultStream,
        () => matmul(a, b, { out: c }),
        repeats,
      );
      const ms = median(times);
      const macs = n * n * n;
      const macPerS = macs / (ms / 1e3);
      const peakName = dtype === 'f32' ? 'f32' : dtype;
      const peak = machine.peakMacPerS[peakName] as number;
      const elem = dtype === 'f32' ? 4 : 2;
      const outElem = outDtype === 'f32' ? 4 : 2;
      results.push({
        suite: 'main',
        case: `gemm ${dtype} ${n}x${n}x${n}`,
        params: { op: 'matmul', dtype, m: n, n, k: n, output: outDtype },
        medianMs: ms,
        minMs: Math.min(...times),
        repeats,
        macPerS,
        gbPerS: (2 * n * n * elem + n * n * outElem) / (ms / 1e3) / 1e9,
        roofline: { kind: 'compute', ratio: macPerS / peak, peak: peakName },
        ...whereRan(rt, machine, { runsPerSample, medianMs: ms }),
      });
      a.dispose();
      b.dispose();
      c.dispose();
    }
  return results;
}
