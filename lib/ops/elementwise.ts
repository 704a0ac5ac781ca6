import { Tensor } from '../runtime/tensor';
import { binding, enqueue, OpOptions, outArg, streamOf, tensorArg } from './common';

export interface ElementwiseOptions extends OpOptions {
  /** Output tensor; may be `a` itself (in place). */
  out?: Tensor;
}

function binary(
  op: 0 | 1,
  name: string,
  a: Tensor,
  b: Tensor,
  options: ElementwiseOptions,
): Tensor {
  a = tensorArg(a, name, 'a');
  b = tensorArg(b, name, 'b');
  const out = outArg(options.out, a, a.shape, a.dtype, name);
  return enqueue(out, options.out === undefined, () =>
    binding().binary(streamOf(a, options).native, op, a.native, b.native, out.native),
  );
}

/** a + b, where b has a's shape or is one row broadcast over a's rows. */
export function add(a: Tensor, b: Tensor, options: ElementwiseOptions = {}): Tensor {
  return binary(0, 'add', a, b, options);
}

/** a * b, where b has a's shape or is one row broadcast over a's rows. */
export function mul(a: Tensor, b: Tensor, options: ElementwiseOptions = {}): Tensor {
  return binary(1, 'mul', a, b, options);
}

/** silu(gate) * up, the SwiGLU activation. */
export function siluMul(gate: Tensor, up: Tensor, options: ElementwiseOptions = {}): Tensor {
  gate = tensorArg(gate, 'siluMul', 'gate');
  up = tensorArg(up, 'siluMul', 'up');
  const out = outArg(options.out, gate, gate.shape, gate.dtype, 'siluMul');
  return enqueue(out, options.out === undefined, () =>
    binding().siluMul(streamOf(gate, options).native, gate.native, up.native, out.native),
  );
}
