import { Tensor } from '../runtime/tensor';
import { binding, enqueue, OpOptions, optTensorArg, outArg, streamOf, tensorArg } from './common';

export interface RmsNormOptions extends OpOptions {
  /** f32 gain of length cols; omitted means 1. */
  weight?: Tensor;
  /** Default 1e-5. */
  eps?: number;
  out?: Tensor;
}

/** x / sqrt(mean(x²) + eps) · weight, over the last dimension. */
export function rmsNorm(x: Tensor, options: RmsNormOptions = {}): Tensor {
  x = tensorArg(x, 'rmsNorm', 'x');
  const w = optTensorArg(options.weight, 'rmsNorm', 'weight');
  const out = outArg(options.out, x, x.shape, x.dtype, 'rmsNorm');
  return enqueue(out, options.out === undefined, () =>
    binding().rmsNorm(
      streamOf(x, options).native,
      x.native,
      w?.native ?? null,
      options.eps ?? 1e-5,
      out.native,
    ),
  );
}
