/** The serving engine (DESIGN.md section 5): continuous batching over a loaded model. */
export { createEngine, Engine } from './engine';
export type {
  EngineModel,
  EngineOptions,
  EngineRequest,
  EngineStats,
  EngineStream,
  RequestMetrics,
  SpeculativeOptions,
  StepInfo,
} from './engine';
export { ModelExecutor } from './executor';
export type { ExecuteInput, Executor, KvSizing } from './executor';
export { Scheduler, SchedRequest } from './scheduler';
export type { SchedulerOptions, StepEntry, StepPlan } from './scheduler';
export { acceptDraft, drawResidual, probOf, proposeNgram } from './speculative';
export type { NgramOptions, SpeculativeStats } from './speculative';
