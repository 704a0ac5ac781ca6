/**
 * Tachyon: fast LLM kernels and runtime for Node.js.
 * Layers (imports flow one way): runtime → ops → (kv → model → engine) → cli.
 */
export { loadRuntime, Runtime, Stream, detectedIsa } from './runtime/runtime';
export type { RuntimeOptions, Backend, Isa, EmuSchedule, EmuArch } from './runtime/runtime';
export { Tensor } from './runtime/tensor';
export { KernelError } from './runtime/errors';
export type { ErrorCode } from './runtime/errors';
export { DTYPES, encode, decode, f16ToF32, f32ToF16, bf16ToF32, f32ToBf16 } from './runtime/dtype';
export type { DType, FloatDType } from './runtime/dtype';
export { doctor } from './runtime/doctor';
export type { DoctorReport } from './runtime/doctor';
export * as ops from './ops/index';
export * as kv from './kv/index';
export * as model from './model/index';
export { loadModel, Model } from './model/model';
export type { LoadModelOptions, ModelInfo, GenerateOptions, GenerateChunk } from './model/model';
export * as engine from './engine/index';
export { createEngine, Engine } from './engine/index';
export type {
  EngineOptions,
  EngineRequest,
  EngineStats,
  EngineStream,
  RequestMetrics,
} from './engine/index';
export { mapFile } from './runtime/mmap';
export type { MappedFile } from './runtime/mmap';
export { version } from './version';
