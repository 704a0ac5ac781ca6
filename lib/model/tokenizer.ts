/**
 * Tokenizers of GGUF models (SentencePiece and byte-level BPE, as llama.cpp runs them) and
 * synthetic vocabularies for generated test models. See tokenizer/core.ts.
 */
export {
  cleanUpSpaces,
  LlamaTokenizer,
  TokenType,
  tokenizerFromGguf,
  tokenizerFromMetadata,
} from './tokenizer/core';
export type {
  DetokenizeOptions,
  DetokenizeStream,
  DetokenizeStreamOptions,
  TokenizeOptions,
  Tokenizer,
} from './tokenizer/core';
export { PRE_TOKENIZERS, preTokenize } from './tokenizer/unicode';
export type { PreFamily } from './tokenizer/unicode';
export {
  BPE_MIN_SIZE,
  BPE_SPECIAL_TOKENS,
  SPM_MIN_SIZE,
  syntheticBpeVocab,
  syntheticSpmVocab,
} from './tokenizer/synthetic';
