// Tachyon: float64 reference for paged attention (native/cpu/kernels/attention.cpp) over
// CONTIGUOUS K/V. Plain, obviously-correct loops; not an ISA variant; for tests only.
#pragma once
#include <cstdint>
#include <vector>

namespace ty::ref {

// One sequence: q [qlen][qHeads][headDim], k / v [kvLen][kvHeads][headDim] (the exact values
// the kernel sees, i.e. already rounded / dequantised). The queries are the last qlen
// positions (causal); window > 0 keeps the last `window` positions; softCap > 0 applies
// softCap * tanh(s / softCap) to s = smScale * q.k. Positions outside [kvBegin, kvEnd) are
// dropped too (to build split-KV partials).
struct AttnRefArgs {
  int64_t qlen = 0, kvLen = 0;
  int32_t qHeads = 0, kvHeads = 0, headDim = 0;
  const float* q = nullptr;
  const float* k = nullptr;
  const float* v = nullptr;
  double smScale = 1.0, softCap = 0.0;
  int64_t window = 0;
  int64_t kvBegin = 0, kvEnd = INT64_MAX;
};
struct AttnRefOut {
  std::vector<double> o;    // [qlen][qHeads][headDim]; 0 for a row that attends to nothing
  std::vector<double> lse;  // [qlen][qHeads], natural log; -inf for a row that attends to nothing
  // per row: max over attended t of smScale * sum_i |q_i k_ti| (scale of the dot's rounding),
  // max over attended t and d of |v_td|, and the number of attended positions
  std::vector<double> dotMag, vMax;
  std::vector<int64_t> count;
};
void attention_ref(const AttnRefArgs& a, AttnRefOut& out);

}  // namespace ty::ref
