import { Tensor } from '../runtime/tensor';
import { binding, OpOptions, streamOf, tensorArg } from './common';

export interface RopeOptions extends OpOptions {
  /** Rotated dims per head (even). Default: the whole head. */
  rotaryDim?: number;
  /** Default 10000. */
  freqBase?: number;
  /** Linear position scaling. Default 1. */
  freqScale?: number;
  /** NeoX rotation (pairs i, i+d/2) instead of the usual (2i, 2i+1). Default false. */
  neox?: boolean;
}

/** Rotary position embedding, in place, on x[tokens, heads, headDim]; positions is i32[tokens]. Returns x. */
export function rope(x: Tensor, positions: Tensor, options: RopeOptions = {}): Tensor {
  x = tensorArg(x, 'rope', 'x');
  positions = tensorArg(positions, 'rope', 'positions');
  binding().rope(
    streamOf(x, options).native,
    x.native,
    positions.native,
    options.rotaryDim ?? -1,
    options.freqBase ?? 10000,
    options.freqScale ?? 1,
    options.neox ?? false,
  );
  return x;
}
