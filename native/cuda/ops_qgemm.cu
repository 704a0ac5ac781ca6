// Tachyon CUDA backends: the quantized GEMM family (W4A16 int4, W8A8 int8, fp8; grouped MoE GEMM, MoE permute/combine) (see launch.h).
// Compiled by nvcc for `cuda` and, through native/cuda/emu/ops_qgemm.cpp, by g++ against cuemu.
#include "kernels/gemm_w4a16.cuh"
#include "kernels/gemm_int8.cuh"
#include "kernels/gemm_fp8.cuh"
#include "kernels/moe.cuh"
#include "launch.h"

#include <cstring>

namespace ty {
namespace cuda {
inline namespace TY_CUDA_BUILD {

Status w4a16_packed_size(const QuantFormat& f, int64_t N, int64_t K, size_t* bytes) {
  W4A16Layout L;
  Status st = w4a16_layout(f, N, K, &L);
  if (st.ok) *bytes = L.total;
  return st;
}

Status w4a16_repack_host(const QPlain& plain, void* out, size_t bytes) { return w4a16_repack(plain, out, bytes); }

namespace {
// A workspace as big as any plan wants: the plan then shows what a launch will take.
W4A16Workspace w4_unbounded() {
  W4A16Workspace ws;
  ws.ptr = reinterpret_cast<void*>(uintptr_t(256));
  ws.bytes = ~size_t(0) >> 1;
  ws.tickets = reinterpret_cast<unsigned*>(uintptr_t(256));
  ws.ticket_bytes = ~size_t(0) >> 1;
  return ws;
}
W4A16Workspace w4_ws(const W4Scratch& s) {
  W4A16Workspace ws;
  ws.ptr = s.partials;
  ws.bytes = s.partial_bytes;
  ws.tickets = s.tickets;
  ws.ticket_bytes = s.ticket_bytes;
  return ws;
}
}  // namespace

Status w4a16_workspace(const QuantFormat& f, int64_t N, int64_t K, int64_t rows, int64_t experts, int sms, const DeviceLimits& lim,
                       size_t* ticket_bytes, size_t* partial_bytes) {
  W4A16Layout L;
  Status st = w4a16_layout(f, N, K, &L);
  if (!st.ok) return st;
  W4A16Tuning tune;
  tune.sms = sms;
  W4A16Plan P;
  if ((st = detail::w4_plan(L, rows, experts, w4_unbounded(), lim, tune, &P)).ok == false) return st;
  *ticket_bytes = P.splits > 1 ? P.cnt_bytes : 0;
  *partial_bytes = P.splits > 1 ? P.ws_bytes : 0;
  return {};
}

Status launch_w4a16_gemm(const QGemmArgs& g, const W4Scratch& s, int sms, stream_t st, const DeviceLimits& lim) {
  W4A16Tuning tune;
  tune.sms = sms;
  return w4a16_gemm(g, w4_ws(s), st, lim, tune);
}

Status launch_w4a16_grouped(const QGroupedArgs& g, unsigned long long* bad, const W4Scratch& s, int sms, stream_t st,
                            const DeviceLimits& lim) {
  W4A16Tuning tune;
  tune.sms = sms;
  return w4a16_grouped(g, bad, w4_ws(s), st, lim, tune);
}

// The CPU's argument structs (QGemmArgs / Fp8GemmArgs, QGroupedArgs) -> the 8-bit kernels' plain
// argument structs: the fields every int8 and fp8 call shares (the weights' own fields and the
// format-specific ones are set by the caller).
template <class P, class G>
void q8_plain_from(P& a, const G& g, void* ws, size_t ws_bytes) {
  a.w.fmt = g.w.fmt;
  a.w.N = g.w.N;
  a.w.K = g.w.K;
  a.a_dtype = g.a_dtype;
  a.M = g.M;
  a.A = g.A;
  a.lda = g.lda;
  a.c_dtype = g.c_dtype;
  a.C = g.C;
  a.ldc = g.ldc;
  a.bias = g.bias;
  a.residual = g.residual;
  a.ldr = g.ldr;
  a.workspace = ws;
  a.workspace_bytes = ws_bytes;
}
template <class P>
void q8_grouped_from(P& a, const QGroupedArgs& g, const void* experts, void* ws, size_t ws_bytes, unsigned long long* bad) {
  a.N = g.N;
  a.K = g.K;
  a.E = g.E;
  a.w = static_cast<const QExpertW*>(experts);
  a.a_dtype = g.a_dtype;
  a.T = g.T;
  a.A = g.A;
  a.lda = g.lda;
  a.R = g.R;
  a.rows = g.rows;
  a.offsets = g.offsets;
  a.c_dtype = g.c_dtype;
  a.C = g.C;
  a.ldc = g.ldc;
  a.bias = g.bias;
  a.ldb = g.ldb;
  a.workspace = ws;
  a.workspace_bytes = ws_bytes;
  a.err = bad;
}

size_t qgemm_int8_workspace(const QuantFormat& f, int64_t M, int64_t K) { return int8_act_bytes(f, M, K); }

Status launch_qgemm_int8(const QGemmArgs& g, const void* scales, void* ws, size_t ws_bytes, stream_t st, const DeviceLimits& lim, int sm) {
  if (g.epilogue != QEpilogue::none)
    return Status::fail(Code::UNSUPPORTED, "qgemm_int8: fused epilogues (swiglu) have no CUDA kernel", "format");
  QGemmPlainArgs a;
  q8_plain_from(a, g, ws, ws_bytes);
  a.w.q = const_cast<uint8_t*>(g.w.data);
  a.w.scales = const_cast<void*>(scales);
  return qgemm_int8(a, st, QDevice{lim, sm});
}

size_t qgemm_int8_grouped_workspace(const QuantFormat& f, int64_t T, int64_t R, int64_t K, int64_t E) {
  return qgemm_grouped_int8_workspace(f, T, R, K, E);
}

Status launch_qgemm_int8_grouped(const QGroupedArgs& g, const void* experts, void* ws, size_t ws_bytes, unsigned long long* bad,
                                 stream_t st, const DeviceLimits& lim, int sm) {
  if (g.epilogue != QEpilogue::none)
    return Status::fail(Code::UNSUPPORTED, "qgemm_grouped_int8: fused epilogues (swiglu) have no CUDA kernel", "format");
  QGroupedPlainArgs a;
  q8_grouped_from(a, g, experts, ws, ws_bytes, bad);
  a.fmt = g.fmt;
  return qgemm_grouped_int8(a, st, QDevice{lim, sm});
}

size_t fp8gemm_workspace(Fp8Act act, int64_t M, int64_t K) { return fp8gemm_gpu_workspace_bytes(act, M, K); }

Status launch_fp8gemm(const Fp8GemmArgs& g, const float* scales, void* ws, size_t ws_bytes, stream_t st, const DeviceLimits& lim, int sm) {
  Fp8GemmPlainArgs a;
  q8_plain_from(a, g, ws, ws_bytes);
  a.w.codes = const_cast<uint8_t*>(g.w.data);
  a.w.scales = const_cast<float*>(scales);
  a.act = g.act;
  return fp8gemm(a, st, QDevice{lim, sm});
}

size_t fp8gemm_grouped_workspace(Fp8Act act, int64_t T, int64_t R, int64_t K, int64_t E) {
  return fp8gemm_grouped_workspace_bytes(act, T, R, K, E);
}

Status launch_fp8gemm_grouped(const Fp8Format& f, Fp8Act act, const QGroupedArgs& g, const void* experts, void* ws, size_t ws_bytes,
                              unsigned long long* bad, stream_t st, const DeviceLimits& lim, int sm) {
  Fp8GroupedPlainArgs a;
  q8_grouped_from(a, g, experts, ws, ws_bytes, bad);
  a.fmt = f;
  a.act = act;
  return fp8gemm_grouped(a, st, QDevice{lim, sm});
}

size_t qgemm_expert_table_bytes(bool w4a16, int64_t E) { return size_t(E) * (w4a16 ? sizeof(const uint8_t*) : sizeof(QExpertW)); }

void qgemm_expert_table_host(bool w4a16, const uint8_t* const* w, int64_t E, int64_t scale_offset, void* out) {
  if (w4a16) {
    std::memcpy(out, w, size_t(E) * sizeof(const uint8_t*));
    return;
  }
  QExpertW* t = static_cast<QExpertW*>(out);
  for (int64_t e = 0; e < E; ++e) {
    t[e].q = w[e];
    t[e].scales = w[e] ? w[e] + scale_offset : nullptr;
  }
}

bool qgroup_fault_decode(unsigned long long word, int* kind, int64_t* index) {
  // The W4A16 kernel (w4a16_grouped_error) and the int8 / fp8 planner (grouped_error) share one
  // encoding: (kind << 32 | index), kinds 1 offsets, 2 row, 3 weights.
  static_assert(int(W4GroupedError::offsets) == int(kQGroupBadOffsets) && int(W4GroupedError::row) == int(kQGroupBadRow) &&
                    int(W4GroupedError::weights) == int(kQGroupNullWeights) && kW4NoError == kQGroupNoError,
                "one grouped fault encoding");
  unsigned k = 0;
  if (!grouped_error(word, &k, index)) return false;
  *kind = int(k);
  return true;
}

Status launch_moe_combine(DType y_dtype, int64_t tokens, int64_t k, int64_t n, int64_t rows, const void* y, const int32_t* slot,
                          const float* weights, bool accumulate, float* out, unsigned long long* bad, stream_t st, const DeviceLimits& lim) {
  MoeCombineArgs a;
  a.y_dtype = y_dtype;
  a.tokens = tokens;
  a.k = k;
  a.n = n;
  a.y_rows = rows;
  a.y = y;
  a.slot = slot;
  a.weights = weights;
  a.accumulate = accumulate;
  a.out = out;
  a.allow_dropped = false;  // the CPU op's rule: every slot in [0, rows)
  return moe_combine(a, bad, st, lim);
}

bool moe_fault_decode(unsigned long long word, int64_t* index, int32_t* value) { return moe_error(word, index, value); }

}  // namespace TY_CUDA_BUILD
}  // namespace cuda
}  // namespace ty
