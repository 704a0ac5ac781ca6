export { matmul } from './matmul';
export type { MatmulOptions } from './matmul';
export { add, mul, siluMul } from './elementwise';
export type { ElementwiseOptions } from './elementwise';
export { rmsNorm } from './norm';
export type { RmsNormOptions } from './norm';
export { rope } from './rope';
export type { RopeOptions } from './rope';
export { softmax } from './softmax';
export type { SoftmaxOptions } from './softmax';
export { embedding } from './embedding';
export type { EmbeddingOptions } from './embedding';
export { sample, argmax, type SampleParams, type SampleOptions, type SampleResult } from './sample';
export { cast } from './cast';
export type { OpOptions } from './common';
export * as reference from './reference';
export {
  quantize,
  qmatmul,
  packQuantized,
  importGguf,
  ggmlNativeFormat,
  isQuantized,
  QuantizedTensor,
  GgmlType,
  fuseGateUp,
  qmatmulGrouped,
  expertPermutation,
  packedBytes,
} from './quant';
export type {
  QuantFormat,
  QuantKind,
  ResolvedQuantFormat,
  QuantStats,
  PlainQuantized,
  QMatmulOptions,
  QMatmulGroupedOptions,
  IntQuantFormat,
  Fp8QuantFormat,
} from './quant';
export {
  createKvCache,
  KvCache,
  kvAppend,
  planAttention,
  AttentionPlan,
  attention,
  attentionMerge,
  kvCopyBlocks,
  kvSwapOut,
  kvSwapIn,
} from './attention';
export type {
  KvDType,
  KvCacheOptions,
  AttentionPageTable,
  PlanAttentionOptions,
  AttentionOptions,
} from './attention';
export { softmaxTopK, moeCombine } from './moe';
export type {
  RoutingDecision,
  RoutingPolicy,
  RoutingContext,
  RoutingRanking,
  MoeCombineOptions,
} from './moe';
export { sigmoidGroupTopK, withCapacity, withLoadStats } from './moe-routing';
export type {
  SigmoidGroupTopKOptions,
  CapacityOptions,
  CapacityPolicy,
  OverflowMode,
  ExpertLoad,
  LayerLoad,
  LoadReport,
  LoadStatsPolicy,
} from './moe-routing';
