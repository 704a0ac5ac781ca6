/**
 * Shared test helpers: a seeded RNG, the ISA list to cover, and THE tolerance model.
 *
 * Tolerance model (the one place it is written down):
 *   |got - ref| <= atol + rtol·|ref| + acc·absRef
 * - rtol is one rounding of the output dtype: f32 2^-24·4, f16 2^-11, bf16 2^-8
 *   (the ulp of the result, with slack of 1 ulp for f32 where the kernel rounds twice).
 * - acc covers reductions: the worst-case f32 summation bound K·2^-24 applied to
 *   absRef = Σ|terms| (e.g. Σ_k |a_ik·b_kj| for GEMM). Elementwise ops pass absRef = 0.
 * - atol absorbs denormal/flush effects: 1e-30 for f32, the output dtype's smallest
 *   normal for f16/bf16 (6.1e-5 / 1.2e-38).
 * Inputs are generated exactly representable in the input dtype, so the float64
 * reference sees exactly what the kernel sees.
 */
import { FloatDType } from '../lib/runtime/dtype';
import { Backend, detectedIsa, EmuArch, EmuSchedule, Isa } from '../lib/runtime/runtime';
import { doctor } from '../lib/runtime/doctor';
import { KernelError } from '../lib/runtime/errors';

// Module-level aliases: in jest's vm sandbox each `Math.x` lookup is slow.
const M_imul = Math.imul;
const M_abs = Math.abs;

export function rng(seed: number): () => number {
  // mulberry32
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = M_imul(t ^ (t >>> 15), t | 1);
    t ^= t + M_imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function randn(n: number, seed: number, scale = 1): Float64Array {
  const r = rng(seed);
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) out[i] = (r() * 2 - 1) * scale;
  return out;
}

const ORDER: Isa[] = ['scalar', 'avx2', 'avx512'];

/** Every ISA variant this CPU can run. Variants it cannot run are reported, not silently dropped. */
export function isasToTest(): Isa[] {
  const best = detectedIsa();
  const list = ORDER.slice(0, ORDER.indexOf(best) + 1);
  const missing = ORDER.slice(ORDER.indexOf(best) + 1);
  if (missing.length && !(globalThis as { __tyWarned?: boolean }).__tyWarned) {
    (globalThis as { __tyWarned?: boolean }).__tyWarned = true;
    process.stderr.write(
      `[tachyon tests] this CPU cannot execute ISA variant(s) ${missing.join(', ')}: NOT RUN here\n`,
    );
  }
  return list;
}

export const RTOL: Record<FloatDType, number> = { f32: 4 * 2 ** -24, f16: 2 ** -11, bf16: 2 ** -8 };
export const ATOL: Record<FloatDType, number> = { f32: 1e-30, f16: 6.2e-5, bf16: 1.2e-38 };

export interface Mismatch {
  index: number;
  got: number;
  ref: number;
  bound: number;
}

/** Returns the first element outside the tolerance model, or null. */
export function firstMismatch(
  got: ArrayLike<number>,
  ref: ArrayLike<number>,
  outDtype: FloatDType,
  opts: { absRef?: ArrayLike<number>; k?: number; extraRtol?: number } = {},
): Mismatch | null {
  if (got.length !== ref.length) return { index: -1, got: got.length, ref: ref.length, bound: 0 };
  const acc = opts.k ? opts.k * 2 ** -24 : 0;
  const rtol = RTOL[outDtype] + (opts.extraRtol ?? 0);
  for (let i = 0; i < ref.length; i++) {
    const g = got[i];
    const r = ref[i];
    if (Number.isNaN(r) ? !Number.isNaN(g) : false) return { index: i, got: g, ref: r, bound: 0 };
    if (Number.isNaN(r)) continue;
    const bound = ATOL[outDtype] + rtol * M_abs(r) + acc * (opts.absRef ? opts.absRef[i] : 0);
    if (!(M_abs(g - r) <= bound)) return { index: i, got: g, ref: r, bound };
  }
  return null;
}

export function expectClose(
  got: ArrayLike<number>,
  ref: ArrayLike<number>,
  outDtype: FloatDType,
  opts: { absRef?: ArrayLike<number>; k?: number; extraRtol?: number } = {},
): void {
  const m = firstMismatch(got, ref, outDtype, opts);
  if (m) throw new Error(`mismatch at ${m.index}: got ${m.got}, ref ${m.ref}, allowed ±${m.bound}`);
}

/**
 * Runs fn, which must throw a KernelError with `code` and a real message; `expected` is the
 * `arg` it must name (a string) or a pattern its message must match (a RegExp).
 */
export function expectKernelError(
  fn: () => unknown,
  code: string,
  expected?: string | RegExp,
): KernelError {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  if (!(err instanceof KernelError))
    throw new Error(
      `expected a KernelError ${code} but got ${err === undefined ? 'no error' : String(err)}`,
    );
  expect(err.code).toBe(code);
  if (typeof expected === 'string') expect(err.arg).toBe(expected);
  else if (expected) expect(err.message).toMatch(expected);
  expect(err.message.length).toBeGreaterThan(10);
  return err;
}

/**
 * The backends the parity suites cover: `cpu`; `cuda-emu` under two schedule orders (forward
 * and reverse block/thread order, so a kernel that depends on scheduling fails one of them)
 * when this build has the emulator; and `cuda` when a usable GPU exists. Backends that cannot
 * run here are reported once, not silently dropped.
 */
export interface BackendCase {
  name: string;
  backend: Backend;
  schedule?: EmuSchedule;
  /** cuda-emu: the emulated compute capability. */
  arch?: EmuArch;
}
export function backendsToTest(): BackendCase[] {
  const d = doctor();
  const has = (n: string) => d.backends.find((b) => b.name === n);
  const out: BackendCase[] = [{ name: 'cpu', backend: 'cpu' }];
  const missing: string[] = [];
  if (has('cuda-emu')?.usable) {
    // Two schedule orders, and two archs: sm_80 paths (fp8 W8A8 on the 16-bit tensor cores, 227
    // KiB opt-in shared memory) and sm_89 paths (e4m3 mma, 99 KiB opt-in).
    out.push({
      name: 'cuda-emu/forward sm_80',
      backend: 'cuda-emu',
      schedule: 'forward',
      arch: 80,
    });
    out.push({
      name: 'cuda-emu/reverse sm_89',
      backend: 'cuda-emu',
      schedule: 'reverse',
      arch: 89,
    });
  } else missing.push(`cuda-emu (${has('cuda-emu')?.reason})`);
  if (has('cuda')?.usable) out.push({ name: 'cuda', backend: 'cuda' });
  else missing.push(`cuda (${has('cuda')?.reason})`);
  const g = globalThis as { __tyBackendsWarned?: boolean };
  if (missing.length && !g.__tyBackendsWarned) {
    g.__tyBackendsWarned = true;
    process.stderr.write(`[tachyon tests] backends NOT RUN here: ${missing.join('; ')}\n`);
  }
  return out;
}
