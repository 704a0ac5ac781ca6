/** The model layer: GGUF I/O, tokenizers, sampling, the Llama/Mixtral forward pass and loadModel. */
export { loadModel, Model } from './model';
export type {
  LoadModelOptions,
  ModelInfo,
  LogitsOptions,
  GenerateOptions,
  GenerateChunk,
  FinishReason,
} from './model';
export type { LlamaConfig } from './config';
export type { WeightMode } from './weights';
export { LlamaModel } from './llama';
export type { ForwardStep } from './llama';
export {
  readGguf,
  parseGguf,
  GgufValueType,
  ggmlTypeName,
  metaString,
  metaStringOpt,
  metaNumber,
  metaNumberOpt,
  metaBoolOpt,
  metaArray,
  metaArrayOpt,
} from './gguf';
export type { GgufFile, GgufTensorInfo, GgufValue, GgufArray, GgufScalar } from './gguf';
export { writeGguf } from './gguf-writer';
export type { GgufMetaEntry, GgufTensorSpec, GgufWriteSpec } from './gguf-writer';
export { encodeGgml, ggmlRowBytes } from './ggml-quants';
export { formatGgufInfo } from './inspect';
export {
  tokenizerFromGguf,
  tokenizerFromMetadata,
  syntheticSpmVocab,
  syntheticBpeVocab,
} from './tokenizer';
export type { Tokenizer, DetokenizeStream } from './tokenizer';
export { Sampler, StopMatcher, createRng } from './sampler';
export type { SamplingOptions, SampledToken } from './sampler';
export { writeSyntheticModel, syntheticModel, generateTestModels, TEST_MODELS } from './synthetic';
export type { SyntheticModelSpec, SyntheticWeightType } from './synthetic';
export { quantizeFile } from './quantize-file';
export type { QuantizeTarget, QuantizeFileOptions, QuantizeFileResult } from './quantize-file';
export { ReferenceLlama } from './reference';
