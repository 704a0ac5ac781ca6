/**
 * Typed errors. Every failure that Tachyon reports, from argument validation in
 * TypeScript, from native validation, or from a kernel on a stream thread, is a
 * KernelError with a stable `code`.
 */
export type ErrorCode =
  | 'E_INVALID_ARG'
  | 'E_SHAPE'
  | 'E_DTYPE'
  | 'E_DISPOSED'
  | 'E_OOM'
  | 'E_BACKEND'
  | 'E_UNSUPPORTED'
  | 'E_ABORTED'
  | 'E_INTERNAL'
  | 'E_KV_EXHAUSTED'
  | 'E_MODEL_FORMAT'
  | 'E_IO';

export interface KernelErrorOptions {
  code: ErrorCode;
  /** The operation that failed, e.g. `matmul`, `loadRuntime`. */
  op?: string;
  /** The backend that raised it: `cpu`, `cuda`, `cuda-emu`, or `js` for TypeScript-side checks. */
  backend?: string;
  /** The argument at fault, when there is one. */
  arg?: string;
}

export class KernelError extends Error {
  readonly code: ErrorCode;
  readonly op: string;
  readonly backend: string;
  readonly arg: string | undefined;

  constructor(message: string, options: KernelErrorOptions) {
    super(message);
    this.name = 'KernelError';
    this.code = options.code;
    this.op = options.op ?? '';
    this.backend = options.backend ?? 'js';
    this.arg = options.arg;
  }
}

/** Describes a received value the way sharp does: "-1 of type number". */
export function describe(v: unknown): string {
  if (v === null) return 'null';
  if (v === undefined) return 'undefined';
  if (typeof v === 'string') return `'${v}' of type string`;
  if (typeof v === 'number' || typeof v === 'boolean' || typeof v === 'bigint')
    return `${String(v)} of type ${typeof v}`;
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'function') return 'a function';
  return `an object (${(v as object).constructor?.name ?? 'Object'})`;
}

export function invalidArg(
  op: string,
  arg: string,
  expected: string,
  got: unknown,
  code: ErrorCode = 'E_INVALID_ARG',
): KernelError {
  return new KernelError(`Expected ${expected} for ${arg} but received ${describe(got)}`, {
    code,
    op,
    arg,
    backend: 'js',
  });
}
