import { FloatDType } from '../runtime/dtype';
import { invalidArg } from '../runtime/errors';
import { Tensor } from '../runtime/tensor';
import { binding, enqueue, OpOptions, optTensorArg, outArg, streamOf, tensorArg } from './common';
import { isQuantized, qmatmul, QuantizedTensor } from './quant';

export interface MatmulOptions extends OpOptions {
  /** B is stored [N, K] (weights, the default) or, when false, [K, N]. */
  transB?: boolean;
  /** f32 bias of length N, added to every row. */
  bias?: Tensor;
  alpha?: number;
  /** With beta != 0, `out` must be given; C = alpha·A·op(B) + beta·C + bias. */
  beta?: number;
  out?: Tensor;
  /** Output dtype when `out` is not given. Default f32. */
  outDtype?: FloatDType;
}

/**
 * C[..., N] = alpha · A[..., K] · op(B) + beta · C + bias. A and B share dtype (f32, f16 or
 * bf16). With quantized weights B (a QuantizedTensor, always [N, K]) this is qmatmul():
 * alpha, beta and transB do not apply.
 */
export function matmul(
  a: Tensor,
  b: Tensor | QuantizedTensor,
  options: MatmulOptions = {},
): Tensor {
  if (isQuantized(b)) {
    if ((options.alpha ?? 1) !== 1 || (options.beta ?? 0) !== 0 || options.transB === false)
      throw invalidArg(
        'matmul',
        'options',
        'no alpha, beta or transB with quantized weights',
        options,
      );
    return qmatmul(a, b, { ...options, outDtype: options.outDtype ?? 'f32' });
  }
  a = tensorArg(a, 'matmul', 'a');
  b = tensorArg(b, 'matmul', 'b');
  const transB = options.transB ?? true;
  const bias = optTensorArg(options.bias, 'matmul', 'bias');
  const n = b.shape.length === 2 ? (transB ? b.shape[0] : b.shape[1]) : 0;
  const shape = [...a.shape.slice(0, -1), n];
  const out = outArg(options.out, a, shape, options.outDtype ?? 'f32', 'matmul');
  return enqueue(out, options.out === undefined, () =>
    binding().matmul(
      streamOf(a, options).native,
      a.native,
      b.native,
      bias?.native ?? null,
      out.native,
      transB,
      options.alpha ?? 1,
      options.beta ?? 0,
    ),
  );
}
