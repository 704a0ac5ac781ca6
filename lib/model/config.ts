/**
 * The Llama-family hyperparameters, read from GGUF metadata with llama.cpp's key names and
 * defaults (llama-model.cpp, LLM_ARCH_LLAMA). Mixtral is the same arch with experts.
 */
import { KernelError } from '../runtime/errors';
import {
  GgufFile,
  metaArrayOpt,
  metaNumber,
  metaNumberOpt,
  metaString,
  metaStringOpt,
} from './gguf';

export interface LlamaConfig {
  arch: 'llama';
  /** general.name, when present. */
  name: string | undefined;
  dim: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  ffn: number;
  vocab: number;
  /** The context length the model was trained for ({arch}.context_length). */
  contextLength: number;
  rmsEps: number;
  ropeBase: number;
  /** Rotated dims per head. */
  ropeDim: number;
  /** Linear position scaling (1 / rope.scaling.factor for 'linear'). */
  ropeScale: number;
  experts: number;
  expertsUsed: number;
  /** output.weight is absent: the output head reuses token_embd. */
  tiedOutput: boolean;
}

const SUPPORTED_ARCHS = ['llama'];

function formatError(f: GgufFile, message: string, arg: string): KernelError {
  return new KernelError(`${f.path || 'GGUF'}: ${message}`, {
    code: 'E_MODEL_FORMAT',
    op: 'loadModel',
    arg,
  });
}

function positiveInt(f: GgufFile, key: string, v: number, max = 1 << 30): number {
  if (!Number.isSafeInteger(v) || v < 1 || v > max)
    throw formatError(f, `Expected ${key} to be an integer in [1, ${max}] but it is ${v}`, key);
  return v;
}

export function llamaConfig(f: GgufFile): LlamaConfig {
  const arch = metaString(f, 'general.architecture');
  if (!SUPPORTED_ARCHS.includes(arch))
    throw new KernelError(
      `${f.path || 'GGUF'}: architecture '${arch}' is not supported (supported: ${SUPPORTED_ARCHS.join(', ')}; Mistral, TinyLlama and Mixtral files use 'llama')`,
      { code: 'E_UNSUPPORTED', op: 'loadModel', arg: 'general.architecture' },
    );
  const k = (s: string) => `${arch}.${s}`;
  const num = (s: string) => positiveInt(f, k(s), metaNumber(f, k(s)));
  const dim = num('embedding_length');
  const layers = num('block_count');
  const heads = num('attention.head_count');
  const kvHeads = positiveInt(
    f,
    k('attention.head_count_kv'),
    metaNumberOpt(f, k('attention.head_count_kv')) ?? heads,
  );
  if (heads % kvHeads !== 0)
    throw formatError(
      f,
      `attention.head_count (${heads}) must be a multiple of attention.head_count_kv (${kvHeads})`,
      k('attention.head_count_kv'),
    );
  const headDim = positiveInt(
    f,
    k('attention.key_length'),
    metaNumberOpt(f, k('attention.key_length')) ?? dim / heads,
  );
  const vLen = metaNumberOpt(f, k('attention.value_length')) ?? headDim;
  if (vLen !== headDim)
    throw new KernelError(`attention.value_length ${vLen} != key_length ${headDim}`, {
      code: 'E_UNSUPPORTED',
      op: 'loadModel',
      arg: k('attention.value_length'),
    });
  const tokenEmbd = f.tensorMap.get('token_embd.weight');
  if (!tokenEmbd) throw formatError(f, 'missing tensor token_embd.weight', 'token_embd.weight');
  const vocabMeta =
    metaNumberOpt(f, k('vocab_size')) ?? metaArrayOpt(f, 'tokenizer.ggml.tokens')?.length;
  const vocab = positiveInt(f, 'vocab', tokenEmbd.dims[1] ?? 0);
  if (vocabMeta !== undefined && vocabMeta !== vocab)
    throw formatError(
      f,
      `token_embd.weight has ${vocab} rows but the vocabulary has ${vocabMeta} tokens`,
      'token_embd.weight',
    );
  const ropeDim = metaNumberOpt(f, k('rope.dimension_count')) ?? headDim;
  if (ropeDim % 2 !== 0 || ropeDim < 2 || ropeDim > headDim)
    throw formatError(
      f,
      `rope.dimension_count ${ropeDim} must be even and at most the head dim ${headDim}`,
      k('rope.dimension_count'),
    );
  let ropeScale = 1;
  const scalingType = metaStringOpt(f, k('rope.scaling.type')) ?? 'none';
  const factor = metaNumberOpt(f, k('rope.scaling.factor')) ?? 0;
  if (scalingType === 'linear' && factor > 0) ropeScale = 1 / factor;
  else if (scalingType !== 'none' && scalingType !== 'linear')
    throw new KernelError(`rope.scaling.type '${scalingType}' is not supported (none, linear)`, {
      code: 'E_UNSUPPORTED',
      op: 'loadModel',
      arg: k('rope.scaling.type'),
    });
  if (f.tensorMap.has('rope_freqs.weight'))
    throw new KernelError(
      'rope_freqs.weight (Llama 3.1-style rope frequency factors) is not supported yet',
      { code: 'E_UNSUPPORTED', op: 'loadModel', arg: 'rope_freqs.weight' },
    );
  const experts = metaNumberOpt(f, k('expert_count')) ?? 0;
  const expertsUsed = metaNumberOpt(f, k('expert_used_count')) ?? 0;
  if (experts > 0 && !(expertsUsed >= 1 && expertsUsed <= experts))
    throw formatError(
      f,
      `expert_used_count ${expertsUsed} must be in [1, expert_count ${experts}]`,
      k('expert_used_count'),
    );
  const rmsEps = metaNumberOpt(f, k('attention.layer_norm_rms_epsilon')) ?? 1e-5;
  const ropeBase = metaNumberOpt(f, k('rope.freq_base')) ?? 10000;
  if (!(rmsEps > 0) || !(ropeBase > 0))
    throw formatError(f, 'layer_norm_rms_epsilon and rope.freq_base must be positive', k('rope'));
  return {
    arch: 'llama',
    name: metaStringOpt(f, 'general.name'),
    dim,
    layers,
    heads,
    kvHeads,
    headDim,
    ffn:
      experts > 0
        ? (metaNumberOpt(f, k('expert_feed_forward_length')) ?? num('feed_forward_length'))
        : num('feed_forward_length'),
    vocab,
    contextLength: metaNumberOpt(f, k('context_length')) ?? 2048,
    rmsEps,
    ropeBase,
    ropeDim,
    ropeScale,
    experts,
    expertsUsed: experts > 0 ? expertsUsed : 0,
    tiedOutput: !f.tensorMap.has('output.weight'),
  };
}
