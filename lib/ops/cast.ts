import { DType } from '../runtime/dtype';
import { Tensor } from '../runtime/tensor';
import { binding, enqueue, OpOptions, outArg, streamOf, tensorArg } from './common';

/** Copies src into a new tensor (or `out`) of `dtype`, converting between f32/f16/bf16 (RNE). */
export function cast(
  src: Tensor,
  dtype: DType,
  options: OpOptions & { out?: Tensor } = {},
): Tensor {
  src = tensorArg(src, 'cast', 'src');
  const out = outArg(options.out, src, src.shape, dtype, 'cast');
  return enqueue(out, options.out === undefined, () =>
    binding().copy(streamOf(src, options).native, src.native, out.native),
  );
}
