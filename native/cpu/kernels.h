// Tachyon CPU backend: declarations of every ISA-variant kernel.
// One line per kernel; each is defined in native/cpu/kernels/<op>.cpp.
#pragma once
#include "isa.h"
#include "tachyon/kernels.h"

TY_DECLARE_VARIANTS(void, gemm, (const ty::GemmArgs&, ty::Parallel&))
TY_DECLARE_VARIANTS(void, binary, (const ty::BinaryArgs&, ty::Parallel&))
TY_DECLARE_VARIANTS(void, silu_mul, (const ty::SiluMulArgs&, ty::Parallel&))
TY_DECLARE_VARIANTS(void, rms_norm, (const ty::RmsNormArgs&, ty::Parallel&))
TY_DECLARE_VARIANTS(void, rope, (const ty::RopeArgs&, ty::Parallel&))
TY_DECLARE_VARIANTS(void, softmax, (const ty::SoftmaxArgs&, ty::Parallel&))
TY_DECLARE_VARIANTS(void, embedding, (const ty::EmbeddingArgs&, ty::Parallel&))

// Benchmark probes (native/cpu/kernels/probe.cpp). Each returns the amount of work done
// so the caller can time it: bytes read, or multiply-accumulates executed.
namespace ty { struct ProbeArgs { int kind; int64_t iters; const void* buf; int64_t bytes; double* sink; }; }
TY_DECLARE_VARIANTS(double, probe, (const ty::ProbeArgs&, ty::Parallel&))
