/**
 * `tachyon quantize IN OUT --to int4|int8`: rewrites a GGUF model with its 2-D weight matrices
 * requantized, keeping every metadata key and every other tensor as it is.
 *
 * Output format: GGUF, readable by llama.cpp. Tachyon's int4 (groups of 32, symmetric, f16
 * scales) is exactly ggml's Q4_0 and int8 (groups of 32) exactly Q8_0, so those are written as
 * Q4_0 / Q8_0 with ggml's reference rounding (lib/model/ggml-quants.ts). fp8 has no ggml type:
 * GGUF cannot express it, and rather than invent a container llama.cpp would misread, fp8 is
 * applied at load instead (loadModel(path, { weights: 'fp8' })).
 */
import { KernelError, invalidArg } from '../runtime/errors';
import { mapFile } from '../runtime/mmap';
import { GgmlType } from '../ops/quant';
import { encodeGgml } from './ggml-quants';
import { GgufFile, GgufValueType, readGguf } from './gguf';
import { GgufMetaEntry, GgufTensorSpec, writeGguf } from './gguf-writer';
import { dequantize, rowBytes } from './weights';

export type QuantizeTarget = 'int4' | 'int8';

const TARGET_TYPE: Record<QuantizeTarget, number> = { int4: GgmlType.Q4_0, int8: GgmlType.Q8_0 };
const TARGET_FTYPE: Record<QuantizeTarget, number> = { int4: 2, int8: 7 };

export interface QuantizeFileOptions {
  to: QuantizeTarget;
  /** Called after each tensor is written. */
  onProgress?: (p: { done: number; total: number; tensor: string }) => void;
}

export interface QuantizeFileResult {
  tensors: number;
  quantized: number;
  inBytes: number;
  outBytes: number;
}

/** Which tensors get requantized: 2-D (or stacked expert) matrices whose rows fit 32-blocks. */
function shouldQuantize(name: string, dims: number[], type: number, target: number): boolean {
  if (dims.length < 2 || dims[0] % 32 !== 0) return false;
  if (name.endsWith('ffn_gate_inp.weight')) return false; // the router stays exact, as llama.cpp keeps it
  return type !== target;
}

export async function quantizeFile(
  input: string,
  output: string,
  options: QuantizeFileOptions,
): Promise<QuantizeFileResult> {
  const op = 'quantize';
  if (options?.to === ('fp8' as string))
    throw new KernelError(
      "GGUF has no fp8 tensor type, so an fp8 file cannot be written; load with { weights: 'fp8' } instead",
      { code: 'E_UNSUPPORTED', op, arg: 'to' },
    );
  if (!(options?.to in TARGET_TYPE)) throw invalidArg(op, 'to', "'int4' or 'int8'", options?.to);
  if (input === output) throw invalidArg(op, 'output', 'a path other than the input', output);
  const f: GgufFile = await readGguf(input);
  const map = mapFile(input);
  const target = TARGET_TYPE[options.to];
  const metadata: GgufMetaEntry[] = [];
  for (const [key, value] of f.metadata) {
    if (key === 'general.alignment') continue; // written from `alignment`
    const type = f.metadataTypes.get(key)!;
    const entry: GgufMetaEntry = { key, type, value };
    if (type === GgufValueType.ARRAY) entry.arrayType = f.arrayTypes?.get(key);
    if (key === 'general.file_type') entry.value = TARGET_FTYPE[options.to];
    metadata.push(entry);
  }
  if (!f.metadata.has('general.file_type'))
    metadata.push({
      key: 'general.file_type',
      type: GgufValueType.UINT32,
      value: TARGET_FTYPE[options.to],
    });
  let quantized = 0;
  let done = 0;
  let outBytes = 0;
  const tensors: GgufTensorSpec[] = f.tensors.map((t) => {
    const q = shouldQuantize(t.name, t.dims, t.type, target);
    if (q) quantized++;
    return {
      name: t.name,
      type: q ? target : t.type,
      dims: t.dims,
      data: () => {
        const src = map.view(t.offset, t.bytes);
        let out: Uint8Array;
        if (!q) out = src;
        else {
          const cols = t.dims[0];
          const rows = t.bytes / rowBytes(t.type, cols, t.name);
          out = encodeGgml(target, dequantize(t.type, src, rows, cols, t.name), rows, cols);
        }
        outBytes += out.byteLength;
        options.onProgress?.({ done: ++done, total: f.tensors.length, tensor: t.name });
        return out;
      },
    };
  });
  try {
    await writeGguf(output, { version: 3, alignment: f.alignment, metadata, tensors });
  } finally {
    map.close();
  }
  const inBytes = f.tensors.reduce((a, t) => a + t.bytes, 0);
  return { tensors: f.tensors.length, quantized, inBytes, outBytes };
}
