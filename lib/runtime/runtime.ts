/**
 * The runtime: one backend, a compute pool, and streams (DESIGN.md section 2).
 * Ops enqueue on a stream and return at once; `await tensor.read()` or
 * `await stream.synchronize()` waits for results without blocking the event loop.
 */
import * as os from 'node:os';
import { loadBinding, NativeBinding } from './binding';
import { DType, isDType, storageBytes } from './dtype';
import { describe, invalidArg, KernelError } from './errors';
import { Tensor } from './tensor';

/* eslint-disable @typescript-eslint/no-explicit-any */

export type Backend = 'cpu' | 'cuda' | 'cuda-emu';
export type Isa = 'scalar' | 'avx2' | 'avx512';
export const BACKENDS: readonly Backend[] = ['cpu', 'cuda', 'cuda-emu'];
export const ISAS: readonly Isa[] = ['scalar', 'avx2', 'avx512'];

/** cuemu's order for running blocks and threads: `forward`, `reverse` or `random:SEED`. */
export type EmuSchedule = 'forward' | 'reverse' | `random:${number}`;
export type EmuArch = 80 | 89 | 90;

export interface RuntimeOptions {
  /**
   * Default `cpu`. `cuda` needs a CUDA device (sm_80+) and a build with nvcc. `cuda-emu` runs
   * the same CUDA kernels on the CPU through Tachyon's emulator of the CUDA execution model
   * (slow, strict: for testing kernels without a GPU); it needs a build with the CUDA headers.
   * On both, tensors live in device memory and only the ops with CUDA kernels run (others raise
   * E_UNSUPPORTED); see `doctor()`.
   */
  backend?: Backend;
  /** `cuda`: the device index (default 0). */
  device?: number;
  /** `cuda-emu`: the schedule order (default TACHYON_EMU_SCHEDULE, else `forward`). */
  schedule?: EmuSchedule;
  /**
   * `cuda-emu`: the compute capability the emulated device reports, 80 (default), 89 or 90. It
   * picks the same kernel paths a GPU of that arch gets (e.g. fp8 W8A8 on the e4m3 tensor cores
   * from 89) and that arch's shared-memory opt-in limit.
   */
  arch?: EmuArch;
  /** Compute threads. Default: TACHYON_THREADS, else os.availableParallelism(). */
  threads?: number;
  /** CPU kernel variant. Default: TACHYON_ISA, else the best the CPU supports. */
  isa?: Isa;
}

const disposeSym: symbol = (Symbol as any).dispose ?? Symbol.for('nodejs.dispose');
let errorClassRegistered = false;

export function binding(): NativeBinding {
  const b = loadBinding();
  if (!errorClassRegistered) {
    b.setErrorClass(KernelError);
    errorClassRegistered = true;
  }
  return b;
}

/** An ordered queue of work, like a CUDA stream. Backed by a native thread on the CPU. */
export class Stream {
  /** @internal */ readonly native: any;
  readonly runtime: Runtime;
  constructor(runtime: Runtime) {
    this.runtime = runtime;
    this.native = new (binding().Stream)(runtime.native);
  }
  /** Resolves when all work queued so far is done; rejects with the stream's KernelError if a kernel failed. */
  synchronize(): Promise<void> {
    return this.native.synchronize();
  }
  /**
   * Resolves with a monotonic timestamp in ms, taken when the stream reaches this point (like a
   * cudaEvent recorded and waited on: on a device, once the work queued before it has finished).
   */
  timestamp(): Promise<number> {
    return this.native.timestamp();
  }
  /** Clears a failed (poisoned) state so later work runs again. */
  reset(): void {
    this.native.reset();
  }
  /** Ops queued and not yet finished. */
  get pending(): number {
    return this.native.pending();
  }
  /** Waits for queued work (synchronously joins the stream thread). Idempotent. */
  dispose(): void {
    this.native.dispose();
  }
  [disposeSym](): void {
    this.dispose();
  }
}

export class Runtime {
  /** @internal */ readonly native: any;
  readonly backend: Backend;
  readonly threads: number;
  readonly isa: Isa;
  /** The device behind a `cuda` / `cuda-emu` runtime, in words; undefined on `cpu`. */
  readonly device: string | undefined;
  /**
   * How many independent workers a work partition should fill: the thread count on `cpu`, the
   * SM count on `cuda` (planAttention splits work for it).
   */
  readonly parallelism: number;
  readonly defaultStream: Stream;
  private _disposed = false;

  /** @internal use loadRuntime() */
  constructor(
    backend: Backend,
    threads: number,
    isa: Isa,
    deviceOptions: { device?: number; schedule?: string; arch?: number } = {},
  ) {
    const b = binding();
    this.native = new b.Runtime(threads, isa, backend, deviceOptions);
    const info = this.native.info();
    this.device = info.device;
    this.parallelism = info.parallelism ?? threads;
    this.backend = backend;
    this.threads = threads;
    this.isa = isa;
    this.defaultStream = new Stream(this);
  }

  get disposed(): boolean {
    return this._disposed;
  }

  createStream(): Stream {
    return new Stream(this);
  }

  /**
   * A tensor holding `data`. With `zeroCopy: true` the tensor aliases the TypedArray's
   * memory (no copy): the caller must not modify or transfer it while ops use the tensor.
   */
  tensor(
    data: ArrayBufferView,
    shape: readonly number[],
    options: { dtype?: DType; zeroCopy?: boolean } = {},
  ): Tensor {
    const dtype = options.dtype ?? inferDType(data);
    if (!isDType(dtype)) throw invalidArg('tensor', 'dtype', 'a dtype name', dtype, 'E_DTYPE');
    if (!ArrayBuffer.isView(data)) throw invalidArg('tensor', 'data', 'a TypedArray', data);
    const shp = checkShape(shape, 'tensor');
    const native = new (binding().Tensor)(this.native, dtype, shp, data, !!options.zeroCopy);
    return new Tensor(this, native, dtype, shp);
  }

  /**
   * An uninitialised tensor. `pinned`: on `cuda` / `cuda-emu`, page-locked host memory the device
   * can address instead of device memory: the KV cache's swap space (kvSwapOut / kvSwapIn);
   * read() and write() work on it, device ops other than the swap do not take it. On `cpu` it is
   * ordinary memory.
   */
  empty(
    shape: readonly number[],
    dtype: DType = 'f32',
    options: { pinned?: boolean } = {},
  ): Tensor {
    const shp = checkShape(shape, 'empty');
    const native = options.pinned
      ? new (binding().Tensor)(this.native, dtype, shp, undefined, false, true)
      : new (binding().Tensor)(this.native, dtype, shp);
    return new Tensor(this, native, dtype, shp);
  }

  /** @internal Tensor.view() */
  viewOf(src: Tensor, shape: readonly number[], dtype: DType): Tensor {
    if (!isDType(dtype)) throw invalidArg('view', 'dtype', 'a dtype name', dtype, 'E_DTYPE');
    const shp = checkShape(shape, 'view');
    const native = new (binding().Tensor)(this.native, dtype, shp, src.native);
    return new Tensor(this, native, dtype, shp);
  }

  /** A zero-filled tensor. */
  zeros(shape: readonly number[], dtype: DType = 'f32'): Tensor {
    const shp = checkShape(shape, 'zeros');
    const n = shp.reduce((a, b) => a * b, 1);
    return this.tensor(new Uint8Array(storageBytes(dtype, n)), shp, { dtype });
  }

  synchronize(): Promise<void> {
    return this.defaultStream.synchronize();
  }

  /** Releases the runtime. Queued work still completes; later calls raise E_DISPOSED. */
  dispose(): void {
    if (this._disposed) return;
    this._disposed = true;
    this.defaultStream.dispose();
    this.native.dispose();
  }
  [disposeSym](): void {
    this.dispose();
  }
}

function inferDType(data: unknown): DType {
  if (data instanceof Float32Array) return 'f32';
  if (data instanceof Int32Array) return 'i32';
  if (data instanceof Int8Array) return 'int8';
  if (data instanceof Uint8Array) return 'u8';
  throw invalidArg(
    'tensor',
    'options.dtype',
    'a dtype (it cannot be inferred from this array type)',
    data,
    'E_DTYPE',
  );
}

function checkShape(shape: unknown, op: string): number[] {
  if (!Array.isArray(shape))
    throw invalidArg(op, 'shape', 'an array of non-negative integers', shape, 'E_SHAPE');
  for (let i = 0; i < shape.length; i++) {
    const d = shape[i];
    if (typeof d !== 'number' || !Number.isInteger(d) || d < 0)
      throw new KernelError(
        `Expected a non-negative integer for shape[${i}] but received ${describe(d)}`,
        {
          code: 'E_SHAPE',
          op,
          arg: 'shape',
        },
      );
  }
  return shape as number[];
}

function envInt(name: string): number | undefined {
  const v = process.env[name];
  if (v === undefined || v === '') return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw invalidArg('loadRuntime', name, 'a positive integer', v);
  return n;
}

/** Best ISA this CPU supports, as detected natively (cpuid). */
export function detectedIsa(): Isa {
  return binding().doctor().isaDetected as Isa;
}

/** Creates a runtime. Async so that future backends (CUDA context creation) need no API change. */
export async function loadRuntime(options: RuntimeOptions = {}): Promise<Runtime> {
  if (options === null || typeof options !== 'object')
    throw invalidArg('loadRuntime', 'options', 'an object', options);
  const backend = options.backend ?? 'cpu';
  if (!BACKENDS.includes(backend))
    throw invalidArg('loadRuntime', 'backend', `one of ${BACKENDS.join(', ')}`, backend);
  const deviceOptions: { device?: number; schedule?: string; arch?: number } = {};
  if (options.arch !== undefined) {
    if (backend !== 'cuda-emu')
      throw invalidArg(
        'loadRuntime',
        'arch',
        "no arch option unless backend is 'cuda-emu'",
        options.arch,
      );
    if (options.arch !== 80 && options.arch !== 89 && options.arch !== 90)
      throw invalidArg('loadRuntime', 'arch', '80, 89 or 90', options.arch);
    deviceOptions.arch = options.arch;
  }
  if (options.device !== undefined) {
    if (backend !== 'cuda')
      throw invalidArg(
        'loadRuntime',
        'device',
        "no device option unless backend is 'cuda'",
        options.device,
      );
    if (!Number.isInteger(options.device) || options.device < 0)
      throw invalidArg('loadRuntime', 'device', 'a non-negative integer', options.device);
    deviceOptions.device = options.device;
  }
  const schedule =
    options.schedule ??
    (backend === 'cuda-emu' ? process.env.TACHYON_EMU_SCHEDULE || undefined : undefined);
  if (schedule !== undefined) {
    if (backend !== 'cuda-emu')
      throw invalidArg(
        'loadRuntime',
        'schedule',
        "no schedule option unless backend is 'cuda-emu'",
        schedule,
      );
    if (typeof schedule !== 'string' || !/^(forward|reverse|random:\d+)$/.test(schedule))
      throw invalidArg('loadRuntime', 'schedule', 'forward, reverse or random:SEED', schedule);
    deviceOptions.schedule = schedule;
  }
  const threads = options.threads ?? envInt('TACHYON_THREADS') ?? os.availableParallelism();
  if (typeof threads !== 'number' || !Number.isInteger(threads) || threads < 1 || threads > 1024)
    throw invalidArg('loadRuntime', 'threads', 'an integer between 1 and 1024', threads);
  const isa = options.isa ?? (process.env.TACHYON_ISA as Isa | undefined) ?? detectedIsa();
  if (!ISAS.includes(isa)) throw invalidArg('loadRuntime', 'isa', `one of ${ISAS.join(', ')}`, isa);
  try {
    return new Runtime(backend, threads, isa, deviceOptions);
  } catch (e) {
    if (e instanceof KernelError && e.code === 'E_BACKEND' && e.op === 'loadRuntime')
      throw new KernelError(
        `Backend '${backend}' is not usable: ${e.message}. Use backend: 'cpu'${backend === 'cuda' ? " (or 'cuda-emu' to run the CUDA kernels on the CPU)" : ''}.`,
        { code: 'E_BACKEND', op: 'loadRuntime', backend, arg: 'backend' },
      );
    throw e;
  }
}
