/**
 * Llama- and Mixtral-shaped GGUF models with seeded random weights and a real (synthetic)
 * tokenizer, so tests and benchmarks need no downloads. The bytes are a pure function of
 * the spec: the same spec always writes the same file (golden fixtures rely on it).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { invalidArg } from '../runtime/errors';
import { GgmlType } from '../ops/quant';
import { encodeGgml } from './ggml-quants';
import { GgufValueType as V } from './gguf';
import { GgufMetaEntry, GgufTensorSpec, writeGguf } from './gguf-writer';
import { syntheticBpeVocab, syntheticSpmVocab } from './tokenizer';

export type SyntheticWeightType =
  'F32' | 'F16' | 'BF16' | 'Q8_0' | 'Q4_0' | 'Q4_1' | 'Q4_K' | 'Q6_K';

export interface SyntheticModelSpec {
  name?: string;
  dim: number;
  layers: number;
  heads: number;
  /** Default heads (MHA). */
  kvHeads?: number;
  ffn: number;
  /** Vocabulary size (the synthetic tokenizer is built to this size). */
  vocab: number;
  contextLength?: number;
  ropeBase?: number;
  rmsEps?: number;
  /** Mixtral-style MoE when > 0. */
  experts?: number;
  expertsUsed?: number;
  /** Type of the 2-D weight matrices. */
  type: SyntheticWeightType;
  /** token_embd type (default: type). */
  embdType?: SyntheticWeightType;
  /** output.weight type (default: type); ignored when tied. */
  outputType?: SyntheticWeightType;
  /** No output.weight: the head reuses token_embd. */
  tied?: boolean;
  tokenizer?: 'spm' | 'bpe';
  seed: number;
  /** Amplitude of the attention/FFN weights relative to 1/sqrt(K). Default 1. */
  gain?: number;
  /**
   * A "copying" head: output.weight row v is token_embd row π⁻¹(v) (π = copyPermutation(spec)),
   * so the logits favour π(current token) and greedy decoding walks π's orbit. Random weights
   * never reproduce earlier text; this gives benchmarks a model whose continuation can be
   * quoted in the prompt (copy-heavy traffic for n-gram speculation). Not with `tied`.
   */
  copyHead?: boolean;
}

/** The token permutation a copyHead model follows (seeded Fisher-Yates over the vocabulary). */
export function copyPermutation(spec: SyntheticModelSpec): Int32Array {
  const n = spec.vocab;
  const pi = Int32Array.from({ length: n }, (_, i) => i);
  let x = hashSeed(spec.seed, 'copy-permutation');
  for (let i = n - 1; i > 0; i--) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    const j = (x >>> 0) % (i + 1);
    const t = pi[i];
    pi[i] = pi[j];
    pi[j] = t;
  }
  return pi;
}

const TYPE_IDS: Record<SyntheticWeightType, number> = {
  F32: GgmlType.F32,
  F16: GgmlType.F16,
  BF16: GgmlType.BF16,
  Q8_0: GgmlType.Q8_0,
  Q4_0: GgmlType.Q4_0,
  Q4_1: GgmlType.Q4_1,
  Q4_K: GgmlType.Q4_K,
  Q6_K: GgmlType.Q6_K,
};

// llama_ftype of the dominant type (general.file_type; informational).
const FILE_TYPES: Record<SyntheticWeightType, number> = {
  F32: 0,
  F16: 1,
  Q4_0: 2,
  Q4_1: 3,
  Q8_0: 7,
  Q4_K: 15,
  Q6_K: 18,
  BF16: 32,
};

/** 32-bit FNV-1a of a string: an independent seed per tensor, so tensors generate in any order. */
function hashSeed(seed: number, name: string): number {
  let h = (0x811c9dc5 ^ seed) >>> 0;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193) >>> 0;
  return h || 1;
}

/** Uniform values in [-amp, amp) (+ offset) from xorshift32: fast and exactly reproducible. */
function uniform(n: number, seed: number, amp: number, offset = 0): Float32Array {
  const out = new Float32Array(n);
  let x = seed >>> 0 || 1;
  const scale = (2 * amp) / 4294967296;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = (x >>> 0) * scale - amp + offset;
  }
  return out;
}

export function validateSpec(s: SyntheticModelSpec): void {
  const op = 'writeSyntheticModel';
  const pos = (k: keyof SyntheticModelSpec) => {
    const v = s[k];
    if (!Number.isSafeInteger(v) || (v as number) < 1)
      throw invalidArg(op, `spec.${String(k)}`, 'a positive integer', v);
  };
  (['dim', 'layers', 'heads', 'ffn', 'vocab'] as const).forEach(pos);
  const kv = s.kvHeads ?? s.heads;
  if (s.heads % kv !== 0)
    throw invalidArg(op, 'spec.kvHeads', `a divisor of heads (${s.heads})`, kv);
  if (s.dim % s.heads !== 0) throw invalidArg(op, 'spec.dim', `a multiple of heads`, s.dim);
  if (!(s.type in TYPE_IDS))
    throw invalidArg(op, 'spec.type', Object.keys(TYPE_IDS).join(', '), s.type);
  if (s.copyHead && s.tied) throw invalidArg(op, 'spec.copyHead', 'false with tied', true);
  if ((s.experts ?? 0) > 0 && !((s.expertsUsed ?? 0) >= 1 && s.expertsUsed! <= s.experts!))
    throw invalidArg(op, 'spec.expertsUsed', `an integer in [1, ${s.experts}]`, s.expertsUsed);
}

/** The spec's GGUF tensors and metadata (tensor data produced lazily, when written). */
export function syntheticModel(spec: SyntheticModelSpec): {
  metadata: GgufMetaEntry[];
  tensors: GgufTensorSpec[];
} {
  validateSpec(spec);
  const s = spec;
  const kvHeads = s.kvHeads ?? s.heads;
  const hd = s.dim / s.heads;
  const E = s.experts ?? 0;
  const gain = s.gain ?? 1;
  const vocabEntries =
    (s.tokenizer ?? 'spm') === 'spm'
      ? syntheticSpmVocab({ size: s.vocab, seed: s.seed })
      : syntheticBpeVocab({ size: s.vocab, seed: s.seed, pre: 'llama-bpe' });
  const u32 = (key: string, value: number): GgufMetaEntry => ({ key, type: V.UINT32, value });
  const f32 = (key: string, value: number): GgufMetaEntry => ({ key, type: V.FLOAT32, value });
  const metadata: GgufMetaEntry[] = [
    { key: 'general.architecture', type: V.STRING, value: 'llama' },
    { key: 'general.name', type: V.STRING, value: s.name ?? 'tachyon-synthetic' },
    u32('general.file_type', FILE_TYPES[s.type]),
    u32('llama.context_length', s.contextLength ?? 2048),
    u32('llama.embedding_length', s.dim),
    u32('llama.block_count', s.layers),
    u32('llama.feed_forward_length', s.ffn),
    u32('llama.rope.dimension_count', hd),
    u32('llama.attention.head_count', s.heads),
    u32('llama.attention.head_count_kv', kvHeads),
    f32('llama.attention.layer_norm_rms_epsilon', s.rmsEps ?? 1e-5),
    f32('llama.rope.freq_base', s.ropeBase ?? 10000),
    u32('llama.vocab_size', s.vocab),
  ];
  if (E > 0)
    metadata.push(u32('llama.expert_count', E), u32('llama.expert_used_count', s.expertsUsed!));
  metadata.push(...vocabEntries);

  const tensors: GgufTensorSpec[] = [];
  const seed = s.seed;
  // A [N, K] matrix (GGUF dims [K, N]), or E stacked ones ([K, N, E]).
  const mat = (name: string, n: number, k: number, t: SyntheticWeightType, amp: number, e = 0) => {
    const type = TYPE_IDS[t];
    const rows = n * Math.max(e, 1);
    tensors.push({
      name,
      type,
      dims: e > 0 ? [k, n, e] : [k, n],
      data: () => encodeGgml(type, uniform(rows * k, hashSeed(seed, name), amp), rows, k),
    });
  };
  const norm = (name: string) =>
    tensors.push({
      name,
      type: GgmlType.F32,
      dims: [s.dim],
      data: () => {
        const v = uniform(s.dim, hashSeed(seed, name), 0.2, 1);
        return new Uint8Array(v.buffer);
      },
    });
  // Uniform in [-a, a) has std a/sqrt(3): a = sqrt(3/K) keeps unit-variance activations.
  const amp = (k: number) => gain * Math.sqrt(3 / k);
  // A tied head reuses the embedding: scale it like an output projection (logit std ~4).
  mat('token_embd.weight', s.vocab, s.dim, s.embdType ?? s.type, s.tied ? amp(s.dim) * 4 : 1);
  for (let i = 0; i < s.layers; i++) {
    const p = `blk.${i}.`;
    norm(p + 'attn_norm.weight');
    mat(p + 'attn_q.weight', s.heads * hd, s.dim, s.type, amp(s.dim));
    mat(p + 'attn_k.weight', kvHeads * hd, s.dim, s.type, amp(s.dim));
    mat(p + 'attn_v.weight', kvHeads * hd, s.dim, s.type, amp(s.dim));
    mat(p + 'attn_output.weight', s.dim, s.heads * hd, s.type, amp(s.dim));
    norm(p + 'ffn_norm.weight');
    if (E > 0) {
      mat(p + 'ffn_gate_inp.weight', E, s.dim, 'F32', amp(s.dim) * 2);
      mat(p + 'ffn_gate_exps.weight', s.ffn, s.dim, s.type, amp(s.dim), E);
      mat(p + 'ffn_down_exps.weight', s.dim, s.ffn, s.type, amp(s.ffn), E);
      mat(p + 'ffn_up_exps.weight', s.ffn, s.dim, s.type, amp(s.dim), E);
    } else {
      mat(p + 'ffn_gate.weight', s.ffn, s.dim, s.type, amp(s.dim));
      mat(p + 'ffn_down.weight', s.dim, s.ffn, s.type, amp(s.ffn));
      mat(p + 'ffn_up.weight', s.ffn, s.dim, s.type, amp(s.dim));
    }
  }
  norm('output_norm.weight');
  if (s.copyHead) {
    const type = TYPE_IDS[s.outputType ?? s.type];
    tensors.push({
      name: 'output.weight',
      type,
      dims: [s.dim, s.vocab],
      data: () => {
        // The embedding's float values (before its own quantization), rows permuted.
        const e = uniform(s.vocab * s.dim, hashSeed(seed, 'token_embd.weight'), 1);
        const pi = copyPermutation(s);
        const w = new Float32Array(s.vocab * s.dim);
        const c = amp(s.dim) * 4;
        for (let v = 0; v < s.vocab; v++) {
          const src = pi[v]; // row π(v) of the head reads embedding row v: logit π(v) ∝ e_v · h
          const row = e.subarray(v * s.dim, (v + 1) * s.dim);
          for (let i = 0; i < s.dim; i++) w[src * s.dim + i] = row[i] * c;
        }
        return encodeGgml(type, w, s.vocab, s.dim);
      },
    });
  } else if (!s.tied) mat('output.weight', s.vocab, s.dim, s.outputType ?? s.type, amp(s.dim) * 4);
  return { metadata, tensors };
}

/** Writes the spec's model to `file` (deterministic bytes). */
export async function writeSyntheticModel(file: string, spec: SyntheticModelSpec): Promise<void> {
  const m = syntheticModel(spec);
  await writeGguf(file, { version: 3, metadata: m.metadata, tensors: m.tensors });
}

/** Bump when the bytes a spec produces change (encoders, metadata, vocabularies). */
export const GENERATOR_VERSION = 2;

/** The generated models the tests and golden fixtures use (small: each writes in < 1 s). */
export const TEST_MODELS: Record<string, SyntheticModelSpec> = {
  // dense F32, multi-head attention, SentencePiece vocabulary
  'f32-mha-spm': { dim: 256, layers: 2, heads: 4, ffn: 512, vocab: 512, type: 'F32', seed: 1 },
  // Q8_0, GQA 4, byte-level BPE vocabulary (Llama 3 style), F32 embeddings
  'q8_0-gqa-bpe': {
    dim: 256,
    layers: 2,
    heads: 8,
    kvHeads: 2,
    ffn: 768,
    vocab: 1024,
    type: 'Q8_0',
    tokenizer: 'bpe',
    seed: 2,
  },
  // Q4_0, GQA 4, head dim 64, tied output head
  'q4_0-gqa-spm': {
    dim: 512,
    layers: 3,
    heads: 8,
    kvHeads: 2,
    ffn: 1024,
    vocab: 768,
    type: 'Q4_0',
    tied: true,
    seed: 3,
  },
  // Mixtral-style MoE: 4 experts, top-2, Q8_0 experts
  'moe-q8_0': {
    dim: 256,
    layers: 2,
    heads: 4,
    kvHeads: 2,
    ffn: 512,
    vocab: 512,
    experts: 4,
    expertsUsed: 2,
    type: 'Q8_0',
    seed: 4,
  },
};

/** Writes TEST_MODELS into `dir` (skipping files already there) and lists them. */
export async function generateTestModels(dir: string): Promise<{ name: string; path: string }[]> {
  fs.mkdirSync(dir, { recursive: true });
  const out: { name: string; path: string }[] = [];
  for (const [name, spec] of Object.entries(TEST_MODELS)) {
    // The name carries a hash of the spec and generator version: a changed spec never
    // reuses a stale file.
    const tag = hashSeed(GENERATOR_VERSION, JSON.stringify(spec)).toString(16).padStart(8, '0');
    const file = path.join(dir, `${name}-${tag}.gguf`);
    if (!fs.existsSync(file)) {
      const tmp = `${file}.${process.pid}.tmp`;
      await writeSyntheticModel(tmp, { ...spec, name });
      fs.renameSync(tmp, file);
    }
    out.push({ name, path: file });
  }
  return out;
}
