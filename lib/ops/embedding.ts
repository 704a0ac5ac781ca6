import { FloatDType } from '../runtime/dtype';
import { Tensor } from '../runtime/tensor';
import { binding, enqueue, OpOptions, outArg, streamOf, tensorArg } from './common';

export interface EmbeddingOptions extends OpOptions {
  out?: Tensor;
  /** Default f32. */
  outDtype?: FloatDType;
}

/** out[..., :] = table[ids[...], :]. ids is i32; every id is range-checked. */
export function embedding(table: Tensor, ids: Tensor, options: EmbeddingOptions = {}): Tensor {
  table = tensorArg(table, 'embedding', 'table');
  ids = tensorArg(ids, 'embedding', 'ids');
  const dim = table.shape.length === 2 ? table.shape[1] : 0;
  const out = outArg(
    options.out,
    table,
    [...ids.shape, dim],
    options.outDtype ?? 'f32',
    'embedding',
  );
  return enqueue(out, options.out === undefined, () =>
    binding().embedding(streamOf(table, options).native, table.native, ids.native, out.native),
  );
}
