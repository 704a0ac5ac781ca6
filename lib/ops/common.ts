import { binding, Stream } from '../runtime/runtime';
import { DType } from '../runtime/dtype';
import { invalidArg, KernelError } from '../runtime/errors';
import { isTensor, Tensor } from '../runtime/tensor';

/** Options every op accepts. */
export interface OpOptions {
  /** Stream to enqueue on. Default: the runtime's default stream. */
  stream?: Stream;
}

export { binding };

export function tensorArg(x: unknown, op: string, arg: string): Tensor {
  if (!isTensor(x)) throw invalidArg(op, arg, 'a Tensor', x);
  if (x.disposed)
    throw new KernelError(`Tensor ${arg} has been disposed`, {
      code: 'E_DISPOSED',
      op,
      arg,
      backend: x.runtime.backend,
    });
  return x;
}

export function optTensorArg(x: unknown, op: string, arg: string): Tensor | undefined {
  return x === undefined || x === null ? undefined : tensorArg(x, op, arg);
}

export function streamOf(t: Tensor, opts: OpOptions | undefined): Stream {
  return opts?.stream ?? t.runtime.defaultStream;
}

/** Uses `out` if given, else allocates a tensor of `shape`/`dtype` on `like`'s runtime. */
export function outArg(
  out: unknown,
  like: Tensor,
  shape: readonly number[],
  dtype: DType,
  op: string,
): Tensor {
  if (out === undefined || out === null) return like.runtime.empty(shape, dtype);
  return tensorArg(out, op, 'out');
}

/** Runs a native enqueue; a fresh output tensor is disposed if validation throws. */
export function enqueue(out: Tensor, owned: boolean, fn: () => void): Tensor {
  try {
    fn();
  } catch (e) {
    if (owned) out.dispose();
    throw e;
  }
  return out;
}
