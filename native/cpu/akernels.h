// Tachyon CPU backend: declarations of the paged-attention ISA-variant kernels (issue 4).
// Defined in native/cpu/kernels/attention.cpp; arguments validated by the *_check
// functions of native/cpu/attention.cpp (see tachyon/attention.h for layouts).
#pragma once
#include "isa.h"
#include "tachyon/attention.h"

// Writes new tokens' K/V into their slots, quantizing on the way in.
TY_DECLARE_VARIANTS(void, kv_append, (const ty::KvAppendArgs&, ty::Parallel&))
// Paged attention (prefill, chunked prefill and decode) over a plan from attention_plan().
TY_DECLARE_VARIANTS(void, attention_run, (const ty::AttentionPlan&, const ty::AttentionArgs&, ty::Parallel&))
// (o, lse) merge of two partial attention results.
TY_DECLARE_VARIANTS(void, attention_merge, (const ty::AttentionMergeArgs&, ty::Parallel&))
// Block copy (copy-on-write) and swap to / from a host buffer.
TY_DECLARE_VARIANTS(void, kv_copy_blocks, (const ty::KvCopyBlocksArgs&, ty::Parallel&))
TY_DECLARE_VARIANTS(void, kv_swap_blocks, (const ty::KvSwapArgs&, ty::Parallel&))
// Test hook: y[i] = the exp the attention kernel uses (vectorised on AVX2 / AVX-512).
TY_DECLARE_VARIANTS(void, attention_exp_probe, (const float* x, float* y, int64_t n))
// Test hook: y[i] = the tanh the soft-cap uses.
TY_DECLARE_VARIANTS(void, attention_tanh_probe, (const float* x, float* y, int64_t n))
