import { Tensor } from '../runtime/tensor';
import { binding, enqueue, OpOptions, outArg, streamOf, tensorArg } from './common';

export interface SoftmaxOptions extends OpOptions {
  /** Multiplies the logits first. Default 1. */
  scale?: number;
  out?: Tensor;
}

/** Softmax over the last dimension. Rows that are entirely -Infinity give zeros. */
export function softmax(x: Tensor, options: SoftmaxOptions = {}): Tensor {
  x = tensorArg(x, 'softmax', 'x');
  const out = outArg(options.out, x, x.shape, x.dtype, 'softmax');
  return enqueue(out, options.out === undefined, () =>
    binding().softmax(streamOf(x, options).native, x.native, options.scale ?? 1, out.native),
  );
}
