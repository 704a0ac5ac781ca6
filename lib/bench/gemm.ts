/**
 * The `gemm` suite: quantized GEMM over the LLM projection shapes (N×K) and batch sizes M,
 * for each weight format, with a dense bf16 baseline (and f16 on the device backends).
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
 *
 * On a device backend (cuda, cuda-emu) the weights are quantized on a CPU runtime, unpacked to
 * the plain layout, uploaded, and packed into the device layout there (packQuantized); the
 * activations are f16 (bf16 for the bf16 baseline), as the CUDA kernels take them (int4 / q4k:
 * W4A16; int8: W8A8; fp8: W8A16, or W8A8 on sm_89+), and so is the output. The rooflines are
 * the device's (common.ts measureDeviceMachine), decode rotates through more than the GPU's L2
 * (DEVICE_ROTATE_BYTES), and each case also reports its speedup over the dense f16 GEMM of the
 * same shape (`speedupVsF16`).
 */
import { encode } from '../runtime/dtype';
import { KernelError, invalidArg } from '../runtime/errors';
import { loadRuntime, Runtime } from '../runtime/runtime';
import { Tensor } from '../runtime/tensor';
import { matmul } from '../ops/matmul';
import { cast } from '../ops/cast';
import {
  packQuantized,
  PlainQuantized,
  qmatmul,
  quantize,
  QuantFormat,
  QuantizedTensor,
} from '../ops/quant';
import {
  BenchResult,
  DEVICE_ROTATE_BYTES,
  isDevice,
  Machine,
  median,
  PeakMacPerS,
  timeRuns,
  whereRan,
} from './common';

export const GEMM_SHAPES: [number, number][] = [
  [4096, 4096],
  [11008, 4096],
  [4096, 11008],
  [14336, 4096],
  [2048, 2048],
  [5632, 2048],
];
export const GEMM_BATCHES = [1, 4, 16, 64, 512];
/** On a GPU, large M also means a prefill-sized 4096 rows: M = 512 is one wave on 132 SMs. */
export const GEMM_BATCHES_CUDA = [1, 4, 16, 64, 512, 4096];
const QUICK_SHAPES: [number, number][] = [
  [2048, 2048],
  [5632, 2048],
];
// cuda-emu runs the kernels about 10^5× slower than a GPU: tiny shapes that still take every
// code path (several tiles of N, K over more than one 128-wide k-tile, the GEMV and the tiled
// kernels). Its figures mean nothing.
const EMU_SHAPES: [number, number][] = [
  [256, 256],
  [512, 256],
];
const EMU_QUICK_FORMATS = ['int4-g128', 'f16'];

interface FormatCase {
  name: string;
  /** undefined: a dense baseline in `dense`. */
  format?: QuantFormat;
  dense?: 'bf16' | 'f16';
  /** The CPU probe the MAC rate is compared with. */
  peak: 'int8' | 'bf16' | 'f32';
  /** The device roof: the tensor-core rate of the math the CUDA kernel does. */
  devicePeak: keyof PeakMacPerS;
  /** Run on the CPU unless asked for by name (--formats). */
  cpuDefault: boolean;
}
export const GEMM_FORMATS: FormatCase[] = [
  {
    name: 'int4-g32',
    format: { kind: 'int4', group: 32, scaleDtype: 'f16' },
    peak: 'int8',
    devicePeak: 'f16',
    cpuDefault: true,
  },
  {
    name: 'int4-g128',
    format: { kind: 'int4', group: 128, scaleDtype: 'f16' },
    peak: 'int8',
    devicePeak: 'f16',
    cpuDefault: true,
  },
  {
    name: 'int8',
    format: { kind: 'int8', group: 0, scaleDtype: 'f32' },
    peak: 'int8',
    devicePeak: 'int8',
    cpuDefault: true,
  },
  { name: 'q4k', format: { kind: 'q4k' }, peak: 'int8', devicePeak: 'f16', cpuDefault: true },
  {
    name: 'fp8e4m3-w8a16',
    format: { kind: 'fp8e4m3', scaleBlock: 'channel', act: 'w8a16' },
    peak: 'bf16',
    devicePeak: 'f16',
    cpuDefault: true,
  },
  {
    name: 'fp8e4m3-w8a8',
    format: { kind: 'fp8e4m3', scaleBlock: 'channel', act: 'w8a8' },
    peak: 'bf16',
    devicePeak: 'fp8',
    cpuDefault: true,
  },
  { name: 'bf16', dense: 'bf16', peak: 'bf16', devicePeak: 'bf16', cpuDefault: true },
  // the baseline the device targets are stated against (int4 vs f16 at decode)
  { name: 'f16', dense: 'f16', peak: 'f32', devicePeak: 'f16', cpuDefault: false },
];

export interface GemmSuiteOptions {
  repeats: number;
  quick?: boolean;
  /** Only these format names (default: all that run on the backend). */
  formats?: string[];
  /** Batch sizes M (default: per backend, see GEMM_BATCHES). */
  batches?: number[];
  /** "NxK" shapes to run instead of the default list. */
  shapes?: string[];
  /**
   * Total bytes of weight copies to rotate through at small M. Default 512 MiB on the CPU
   * (256 with quick), DEVICE_ROTATE_BYTES on cuda, 0 (two copies) on cuda-emu.
   */
  rotateBytes?: number;
  /** Device backends: the CPU runtime that quantizes the weights (default: one made here). */
  host?: Runtime;
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

function parseShapes(list: string[]): [number, number][] {
  return list.map((s) => {
    const m = /^(\d+)x(\d+)$/.exec(s);
    if (!m || Number(m[1]) <= 0 || Number(m[2]) <= 0)
      throw invalidArg('bench gemm', 'shapes', 'NxK shapes such as 4096x4096', s);
    return [Number(m[1]), Number(m[2])];
  });
}

/** Which formats, shapes, batches and rotation this backend runs by default. */
function plan(rt: Runtime, opts: GemmSuiteOptions) {
  const backend = rt.backend;
  const emu = backend === 'cuda-emu';
  const shapes = opts.shapes
    ? parseShapes(opts.shapes)
    : emu
      ? opts.quick
        ? EMU_SHAPES.slice(0, 1)
        : EMU_SHAPES
      : opts.quick
        ? QUICK_SHAPES
        : GEMM_SHAPES;
  const batches =
    opts.batches ??
    (emu
      ? opts.quick
        ? [1, 16]
        : [1, 16, 64]
      : backend === 'cuda'
        ? opts.quick
          ? [1, 16, 4096]
          : GEMM_BATCHES_CUDA
        : opts.quick
          ? [1, 16, 512]
          : GEMM_BATCHES);
  if (!batches.every((m) => Number.isSafeInteger(m) && m > 0))
    throw invalidArg('bench gemm', 'batches', 'positive integers', batches);
  const names =
    opts.formats ??
    (emu && opts.quick
      ? EMU_QUICK_FORMATS
      : GEMM_FORMATS.filter((f) => isDevice(rt) || f.cpuDefault).map((f) => f.name));
  const unknown = names.filter((n) => !GEMM_FORMATS.some((f) => f.name === n));
  if (unknown.length)
    throw invalidArg(
      'bench gemm',
      'formats',
      `format names among ${GEMM_FORMATS.map((f) => f.name).join(', ')}`,
      unknown.join(','),
    );
  const formats = GEMM_FORMATS.filter((f) => names.includes(f.name));
  const rotateBytes =
    opts.rotateBytes ??
    (backend === 'cuda'
      ? DEVICE_ROTATE_BYTES
      : emu
        ? 0 // the path is exercised with two copies; the emulator has no cache to defeat
        : (opts.quick ? 256 : 512) * 2 ** 20);
  return { shapes, batches, formats, rotateBytes };
}

export async function runGemm(
  rt: Runtime,
  machine: Machine,
  opts: GemmSuiteOptions,
): Promise<BenchResult[]> {
  const results: BenchResult[] = [];
  const device = isDevice(rt);
  const { shapes, batches, formats, rotateBytes } = plan(rt, opts);
  const ownHost = device && !opts.host;
  const host = device ? (opts.host ?? (await loadRuntime({ threads: rt.threads }))) : rt;
  const skipped: string[] = [];
  try {
    for (const [n, k] of shapes) {
      const wv = weightValues(n, k, n ^ k);
      for (const fc of formats) {
        const actDtype = device ? (fc.dense ?? 'f16') : fc.format ? 'f32' : fc.dense!;
        let copies: (QuantizedTensor | Tensor)[] = [];
        try {
          // one quantized (or dense) weight tensor, then byte copies of it for rotation
          const first = fc.format
            ? device
              ? await devicePack(rt, host, wv, n, k, fc.format)
              : quantizeOn(rt, wv, n, k, fc.format)
            : rt.tensor(encode(fc.dense!, wv), [n, k], { dtype: fc.dense! });
          copies = [first];
          const bytes = first.bytes;
          const maxCopies = Math.max(2, Math.ceil(rotateBytes / bytes));
          const needRotation = batches.some((m) => m <= 16);
          for (let i = 1; needRotation && i < maxCopies; i++) copies.push(duplicate(rt, first));
          for (const m of batches) {
            const rotate = m <= 16 ? copies.length : 1;
            const av = new Float32Array(m * k);
            for (let i = 0; i < av.length; i++) av[i] = Math.sin(i * 0.37) * 0.5;
            const a =
              actDtype === 'f32'
                ? rt.tensor(av, [m, k])
                : rt.tensor(encode(actDtype, av), [m, k], { dtype: actDtype });
            // the CPU writes f32 (its kernels accumulate in f32 anyway); a device writes the
            // activation dtype, as a model's layers do
            const c = rt.empty([m, n], device ? actDtype : 'f32');
            let it = 0;
            const run = (): void => {
              const w = copies[it++ % rotate];
              if (w instanceof QuantizedTensor) qmatmul(a, w, { out: c });
              else matmul(a, w, { out: c });
            };
            const macs = m * n * k;
            // ~0.25 s of timed work per case at least, within the repeat budget
            const repeats =
              !device && macs > 4e9 ? Math.max(3, Math.min(opts.repeats, 5)) : opts.repeats;
            let timed: { times: number[]; runsPerSample: number };
            try {
              timed = await timeRuns(rt.defaultStream, run, repeats, Math.min(rotate, 3));
            } finally {
              a.dispose();
              c.dispose();
            }
            const { times, runsPerSample } = timed;
            const ms = median(times);
            const gbPerS = bytes / (ms / 1e3) / 1e9;
            const macPerS = macs / (ms / 1e3);
            const peak = device ? fc.devicePeak : fc.peak;
            const bwRatio = gbPerS / machine.bandwidthGBs;
            const computeRatio = macPerS / (machine.peakMacPerS[peak] as number);
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
                activations: actDtype,
                output: device ? actDtype : 'f32',
                peak,
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
                  : { kind: 'compute', ratio: computeRatio, peak },
              ...whereRan(rt, machine, { runsPerSample, medianMs: ms }),
            });
          }
        } catch (e) {
          // a format the backend has no kernel for (q6k, fused gate/up on a device) is a note,
          // not a failure; the error may surface at the stream's completion point, so reset it
          if (!(e instanceof KernelError) || e.code !== 'E_UNSUPPORTED') throw e;
          rt.defaultStream.reset();
          skipped.push(`${fc.name} ${n}x${k} (${e.message})`);
        } finally {
          for (const w of copies) w.dispose();
        }
      }
    }
  } finally {
    if (ownHost) host.dispose();
  }
  // the device targets compare with the dense f16 GEMM of the same shape and M
  for (const r of results) {
    const p = r.params;
    if (p.format === 'f16') continue;
    const base = results.find(
      (x) =>
        x.params.format === 'f16' && x.params.n === p.n && x.params.k === p.k && x.params.m === p.m,
    );
    if (base) r.speedupVsF16 = base.medianMs / r.medianMs;
  }
  if (skipped.length)
    console.log(`gemm: skipped (not supported on ${rt.backend}): ${skipped.join('; ')}`);
  return results;
}

function quantizeOn(
  rt: Runtime,
  wv: Float32Array,
  n: number,
  k: number,
  format: QuantFormat,
): QuantizedTensor {
  const src = rt.tensor(wv, [n, k]);
  const q = quantize(src, format);
  src.dispose();
  return q;
}

/**
 * Weights in a device's layout: quantized on the CPU runtime `host`, unpacked to the plain
 * layout, uploaded, and packed on the device (the device layout is not the CPU's).
 */
async function devicePack(
  rt: Runtime,
  host: Runtime,
  wv: Float32Array,
  n: number,
  k: number,
  format: QuantFormat,
): Promise<QuantizedTensor> {
  const q = quantizeOn(host, wv, n, k, format);
  const plain = q.unpack();
  const parts: (keyof PlainQuantized)[] = ['codes', 'scales', 'mins', 'superD', 'superDmin'];
  const dev: Partial<Record<keyof PlainQuantized, Tensor>> = {};
  try {
    for (const p of parts) {
      const t = plain[p];
      if (t) dev[p] = rt.tensor(await t.read(), t.shape, { dtype: t.dtype });
    }
    return packQuantized(dev as PlainQuantized, format, [n, k]);
  } finally {
    // (the queued pack holds its own references to the uploaded parts)
    for (const p of parts) {
      plain[p]?.dispose();
      dev[p]?.dispose();
    }
    q.dispose();
  }
}

function duplicate(rt: Runtime, w: QuantizedTensor | Tensor): QuantizedTensor | Tensor {
  if (w instanceof QuantizedTensor) {
    const p = rt.empty([w.bytes], 'u8');
    cast(w.packed, 'u8', { out: p });
    return new QuantizedTensor(w.format, [w.shape[0], w.shape[1]], p);
  }
  const t = rt.empty(w.shape, w.dtype);
  cast(w, w.dtype, { out: t });
  return t;
}
