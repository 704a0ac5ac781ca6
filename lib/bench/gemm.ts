/**
 * The `gemm` suite: quantized GEMM over the LLM projection shapes (N×K) and batch sizes M,
 * for each weight format, with a dense bf16 baseline.
 *
 * Small M is a decode step: it must read its weights from DRAM, as a real model does,
 * where every layer's weights are distinct. So each case rotates through enough copies of
 * its weights that no iteration finds them in cache (at least `rotateBytes` in total);
 * without that, a bandwidth ratio above 1 would be cache, not skill.
 *
 * Each case reports the effective GB/s (bytes of packed weights, incl. scales, per
 * second), MAC/s, and both ratios: to the DRAM read bandwidth and to the peak MAC rate of
 * the matching probe (int8 for int formats, bf16 for bf16 and fp8), all measured in the
 * same run. `roofline` is the larger of the two: the limit that binds.
 */
import { encode } from '../runtime/dtype';
import { Runtime } from '../runtime/runtime';
import { Tensor } from '../runtime/tensor';
import { matmul } from '../ops/matmul';
import { cast } from '../ops/cast';
import { qmatmul, quantize, QuantFormat, QuantizedTensor } from '../ops/quant';
import { BenchResult, Machine, median, timeOnStream } from './common';

export const GEMM_SHAPES: [number, number][] = [
  [4096, 4096],
  [11008, 4096],
  [4096, 11008],
  [14336, 4096],
  [2048, 2048],
  [5632, 2048],
];
export const GEMM_BATCHES = [1, 4, 16, 64, 512];

interface FormatCase {
  name: string;
  /** undefined: the dense bf16 baseline. */
  format?: QuantFormat;
  peak: 'int8' | 'bf16';
}
export const GEMM_FORMATS: FormatCase[] = [
  { name: 'int4-g32', format: { kind: 'int4', group: 32, scaleDtype: 'f16' }, peak: 'int8' },
  { name: 'int4-g128', format: { kind: 'int4', group: 128, scaleDtype: 'f16' }, peak: 'int8' },
  { name: 'int8', format: { kind: 'int8', group: 0, scaleDtype: 'f32' }, peak: 'int8' },
  { name: 'q4k', format: { kind: 'q4k' }, peak: 'int8' },
  {
    name: 'fp8e4m3-w8a16',
    format: { kind: 'fp8e4m3', scaleBlock: 'channel', act: 'w8a16' },
    peak: 'bf16',
  },
  {
    name: 'fp8e4m3-w8a8',
    format: { kind: 'fp8e4m3', scaleBlock: 'channel', act: 'w8a8' },
    peak: 'bf16',
  },
  { name: 'bf16', peak: 'bf16' },
];

export interface GemmSuiteOptions {
  repeats: number;
  quick?: boolean;
  /** Filters: only these format names / batch sizes / "NxK" shapes. */
  formats?: string[];
  batches?: number[];
  shapes?: string[];
  /** Total bytes of weight copies to rotate through at small M. Default 512 MiB. */
  rotateBytes?: number;
}

function weightValues(n: number, k: number, seed: number): Float32Array {
  const w = new Float32Array(n * k);
  let s = seed >>> 0;
  for (let i = 0; i < w.length; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    w[i] = (s / 4294967296 - 0.5) * 0.05;
  }
  return w;
}

export async function runGemm(
  rt: Runtime,
  machine: Machine,
  opts: GemmSuiteOptions,
): Promise<BenchResult[]> {
  const results: BenchResult[] = [];
  const shapes = opts.quick
    ? ([
        [2048, 2048],
        [5632, 2048],
      ] as [number, number][])
    : GEMM_SHAPES;
  const batches = opts.batches ?? (opts.quick ? [1, 16, 512] : GEMM_BATCHES);
  const rotateBytes = opts.rotateBytes ?? (opts.quick ? 256 : 512) * 2 ** 20;
  const formats = GEMM_FORMATS.filter((f) => !opts.formats || opts.formats.includes(f.name));
  for (const [n, k] of shapes) {
    if (opts.shapes && !opts.shapes.includes(`${n}x${k}`)) continue;
    const wv = weightValues(n, k, n ^ k);
    for (const fc of formats) {
      // one quantized (or bf16) weight tensor, then byte copies of it for rotation
      let first: QuantizedTensor | Tensor;
      if (fc.format) {
        const src = rt.tensor(wv, [n, k]);
        first = quantize(src, fc.format);
        src.dispose();
      } else {
        first = rt.tensor(encode('bf16', wv), [n, k], { dtype: 'bf16' });
      }
      const bytes = first instanceof QuantizedTensor ? first.bytes : first.bytes;
      const maxCopies = Math.max(2, Math.ceil(rotateBytes / bytes));
      const copies: (QuantizedTensor | Tensor)[] = [first];
      const needRotation = batches.some((m) => m <= 16);
      for (let i = 1; needRotation && i < maxCopies; i++) copies.push(duplicate(rt, first));
      for (const m of batches) {
        const rotate = m <= 16 ? copies.length : 1;
        const av = new Float32Array(m * k);
        for (let i = 0; i < av.length; i++) av[i] = Math.sin(i * 0.37) * 0.5;
        const a = fc.format
          ? rt.tensor(av, [m, k])
          : rt.tensor(encode('bf16', av), [m, k], { dtype: 'bf16' });
        const c = rt.empty([m, n], 'f32');
        let it = 0;
        const run = (): void => {
          const w = copies[it++ % rotate];
          if (w instanceof QuantizedTensor) qmatmul(a, w, { out: c });
          else matmul(a, w, { out: c });
        };
        const macs = m * n * k;
        // ~0.25 s of timed work per case at least, within the repeat budget
        const repeats = macs > 4e9 ? Math.max(3, Math.min(opts.repeats, 5)) : opts.repeats;
        const times = await timeOnStream(rt.defaultStream, run, repeats, Math.min(rotate, 3));
        const ms = median(times);
        const gbPerS = bytes / (ms / 1e3) / 1e9;
        const macPerS = macs / (ms / 1e3);
        const bwRatio = gbPerS / machine.bandwidthGBs;
        const computeRatio = macPerS / machine.peakMacPerS[fc.peak];
        results.push({
          suite: 'gemm',
          case: `${fc.name} ${n}x${k} M=${m}`,
          params: {
            format: fc.name,
            n,
            k,
            m,
            weightBytes: bytes,
            rotatedCopies: rotate,
            activations: fc.format ? 'f32' : 'bf16',
            peak: fc.peak,
          },
          medianMs: ms,
          minMs: Math.min(...times),
          repeats,
          gbPerS,
          macPerS,
          bandwidthRatio: bwRatio,
          computeRatio,
          roofline:
            bwRatio >= computeRatio
              ? { kind: 'bandwidth', ratio: bwRatio }
              : { kind: 'compute', ratio: computeRatio },
        });
        a.dispose();
        c.dispose();
      }
      for (const w of copies) w.dispose();
    }
  }
  return results;
}

function duplicate(rt: Runtime, w: QuantizedTensor | Tensor): QuantizedTensor | Tensor {
  if (w instanceof QuantizedTensor) {
    const p = rt.empty([w.bytes], 'u8');
    cast(w.packed, 'u8', { out: p });
    return new QuantizedTensor(w.format as Required<QuantFormat>, [w.shape[0], w.shape[1]], p);
  }
  const t = rt.empty(w.shape, w.dtype);
  cast(w, w.dtype, { out: t });
  return t;
}
