// Tachyon: quantized weight formats (int8, int4) and the quantized GEMM argument struct.
// Framework-free. Byte layouts are documented in docs/formats.md; this header is the
// code form of that document.
//
// Two layouts per format:
//  - plain:    what quantize() and the GGUF importers produce and what tests read;
//              row-major [N, K] codes plus [N, K/group] scales (and mins).
//  - repacked: the SIMD layout the kernels read, produced once at load by q_repack().
//              One layout serves every ISA (scalar, AVX2, AVX-512).
//
// Everything defined here is `static inline` (this header is included by ISA-variant
// translation units; see native/cpu/isa.h for why).
#pragma once
#include <cstddef>
#include <cstdint>

#include "tachyon/dtype.h"
#include "tachyon/parallel.h"

namespace ty {

enum class QKind : int32_t {
  int8 = 0,  // signed 8-bit codes, w = d * q                (q in [-128, 127])
  int4 = 1,  // 4-bit codes; sym: w = d * q, q in [-8, 7]; asym: w = d * q + m, q in [0, 15]
  // K-quants (GGUF Q4_K / Q6_K semantics): super-blocks of 256 along K with an f16 scale
  // per super-block and small integer scales per sub-block. See docs/formats.md "K-quants".
  q4k = 2,   // 8 sub-blocks of 32: w = (d*sc)*q - (dmin*m), q in [0, 15], sc, m in [0, 63]
  q6k = 3,   // 16 sub-blocks of 16: w = (d*sc)*q, q in [-32, 31], sc in [-128, 127]
};
static inline bool q_is_kquant(QKind k) { return k == QKind::q4k || k == QKind::q6k; }
static constexpr int kQSuper = 256;  // K-quant super-block length

struct QuantFormat {
  QKind kind = QKind::int8;
  // Quantization group along K: 32, 64 or 128. int8 also allows 0 = per channel (one
  // scale per output row over the whole of K). int4 requires a group.
  // q4k / q6k: 0 or 256 (both mean super-blocks of 256); scale_dtype must be f16 (the
  // super-block scales are f16, as in GGUF) and asym false (q4k's mins are intrinsic).
  int32_t group = 0;
  bool asym = false;                 // int4 only: scale plus min (GGUF Q4_1 style)
  DType scale_dtype = DType::f32;    // f32 or f16; applies to scales and mins
};

// ---- block geometry (a "block" is one group, or the whole row for per-channel int8) ---

// Elements of K per block. Per-channel int8 uses one block of K rounded up to 4 (the
// repacked layout pads K with zero weights to a whole 4-byte VNNI step).
// K-quants: a block is one super-block of 256.
static inline int64_t q_block_len(const QuantFormat& f, int64_t K) {
  if (q_is_kquant(f.kind)) return kQSuper;
  return f.group > 0 ? (int64_t)f.group : ((K + 3) & ~(int64_t)3);
}
static inline int64_t q_num_blocks(const QuantFormat& f, int64_t K) {
  if (q_is_kquant(f.kind)) return K / kQSuper;
  return f.group > 0 ? K / f.group : 1;
}
// K-quant sub-block length (q4k 32, q6k 16); 0 for the other kinds.
static inline int64_t q_sub_len(const QuantFormat& f) {
  return f.kind == QKind::q4k ? 32 : f.kind == QKind::q6k ? 16 : 0;
}
static inline size_t q_scale_elem_bytes(const QuantFormat& f) {
  return f.scale_dtype == DType::f16 ? 2 : 4;
}

// ---- plain layout -------------------------------------------------------------------
// q:      int8:  int8_t[N][K], element (n,k) at q[n*K + k].
//         int4:  two codes per byte, row n starts at byte n*K/2, element k in byte
//                n*K/2 + k/2, low nibble when k is even (ty::DType::int4 convention).
//                sym: the nibble is a two's-complement signed code in [-8, 7];
//                asym: the nibble is an unsigned code in [0, 15].
// scales: scale_dtype[N][nb] (nb = q_num_blocks), element (n,b) = scale of block b of row n.
// mins:   scale_dtype[N][nb], asym int4 only (null otherwise).
// K-quants (ns = K/sub_len sub-blocks per row, nsb = K/256 super-blocks per row):
//   q4k: q as unsigned int4 (above, codes 0..15); scales u8[N][ns] (sc, 0..63);
//        mins u8[N][ns] (m, 0..63); super_d f16[N][nsb]; super_dmin f16[N][nsb].
//   q6k: q int8[N][K] (codes -32..31); scales int8[N][ns]; super_d f16[N][nsb];
//        mins and super_dmin null.
struct QPlain {
  QuantFormat fmt;
  int64_t N = 0, K = 0;
  void* q = nullptr;
  void* scales = nullptr;
  void* mins = nullptr;
  void* super_d = nullptr;     // K-quants only
  void* super_dmin = nullptr;  // q4k only
};
static inline size_t q_plain_q_bytes(const QuantFormat& f, int64_t N, int64_t K) {
  return (f.kind == QKind::int8 || f.kind == QKind::q6k) ? (size_t)(N * K) : (size_t)(N * (K / 2));
}
static inline size_t q_plain_scale_bytes(const QuantFormat& f, int64_t N, int64_t K) {
  if (q_is_kquant(f.kind)) return (size_t)(N * (K / q_sub_len(f)));  // one byte per sub-block
  return (size_t)(N * q_num_blocks(f, K)) * q_scale_elem_bytes(f);
}
// Bytes of `mins` (0 when the format has none).
static inline size_t q_plain_min_bytes(const QuantFormat& f, int64_t N, int64_t K) {
  if (f.kind == QKind::q4k) return (size_t)(N * (K / 32));
  return (f.kind == QKind::int4 && f.asym) ? q_plain_scale_bytes(f, N, K) : 0;
}
// Bytes of `super_d` (K-quants) and of `super_dmin` (q4k); 0 otherwise.
static inline size_t q_plain_super_bytes(const QuantFormat& f, int64_t N, int64_t K) {
  return q_is_kquant(f.kind) ? (size_t)(N * (K / kQSuper)) * 2 : 0;
}

// ---- repacked layout ------------------------------------------------------------------
// N is split into panels of 16 output channels (the last one zero-padded). A panel is
// contiguous and 64-byte aligned:
//   [weights: nb blocks, each wblock bytes][scales: nb x 16][mins: nb x 16 (asym)][pad to 64]
// Weights are stored as UNSIGNED bytes u (the u8 operand of vpdpbusd):
//   int8: u = q + 128 (q ^ 0x80);  int4 sym: u = q + 8;  int4 asym: u = q.
// int8 block: (block_len/4) vectors of 64 bytes; vector s holds k = 4s..4s+3:
//   byte 4c+i = u[channel c][k = 4s + i]          (c = 0..15, i = 0..3)
// int4 block: (block_len/8) vectors of 64 bytes; vector v holds k = 8v..8v+7:
//   byte 4c+i: low nibble = u[c][8v + i], high nibble = u[c][8v + 4 + i]
// Bytes 0..31 of every vector are channels 0..7 and bytes 32..63 channels 8..15, so the
// AVX2 path reads the same layout as two 32-byte halves.
//
// K-quants: a "block" is a super-block of 256 and carries its sub-block scales:
//   [weights: nb super-blocks, each wblock bytes][d: nb x 16 f16][dmin: nb x 16 f16 (q4k)][pad]
//   q4k super-block (2304 B): [int4 weights as above, u = q: 2048 B]
//        [sc u8 [8 sub][16 ch]: 128 B at sub_off][m u8 [4 pairs][16 ch][2]: 128 B at
//        submin_off; byte p*32 + 2c + t = m of sub-block 2p+t, channel c]
//   q6k super-block (4352 B): [int8 layout as above with u = q + 32 in [0, 63]: 4096 B]
//        [sc int8 [16 sub][16 ch]: 256 B at sub_off]
struct QPackedLayout {
  int64_t panels;        // ceil(N / 16)
  int64_t nb;            // blocks per row
  int64_t block_len;     // K elements per block (per-channel int8: K rounded up to 4)
  int64_t wblock_bytes;  // bytes of one block of one panel's weights
  int64_t scale_off;     // offset of the scales within a panel
  int64_t min_off;       // offset of the mins within a panel (asym), else 0
  int64_t panel_bytes;   // stride between panels (multiple of 64)
  size_t total;          // bytes of the whole repacked tensor
  int64_t sub_off = 0;     // K-quants: offset of the sub-block scales within a block
  int64_t submin_off = 0;  // q4k: offset of the sub-block mins within a block
};
static constexpr int kQPanel = 16;  // output channels per panel

static inline QPackedLayout q_packed_layout(const QuantFormat& f, int64_t N, int64_t K) {
  QPackedLayout L;
  L.panels = (N + kQPanel - 1) / kQPanel;
  if (q_is_kquant(f.kind)) {
    const bool q4 = f.kind == QKind::q4k;
    L.nb = K / kQSuper;
    L.block_len = kQSuper;
    L.sub_off = q4 ? kQSuper * kQPanel / 2 : kQSuper * kQPanel;
    L.submin_off = q4 ? L.sub_off + 8 * kQPanel : 0;
    L.wblock_bytes = q4 ? L.sub_off + 16 * kQPanel : L.sub_off + 16 * kQPanel;
    L.scale_off = L.nb * L.wblock_bytes;
    L.min_off = q4 ? L.scale_off + L.nb * kQPanel * 2 : 0;
    const int64_t end = L.scale_off + L.nb * kQPanel * 2 * (q4 ? 2 : 1);
    L.panel_bytes = (end + 63) & ~(int64_t)63;
    L.total = (size_t)(L.panels * L.panel_bytes);
    return L;
  }
  L.nb = q_num_blocks(f, K);
  L.block_len = q_block_len(f, K);
  L.wblock_bytes = f.kind == QKind::int8 ? L.block_len * kQPanel : L.block_len * kQPanel / 2;
  const int64_t sbytes = L.nb * kQPanel * (int64_t)q_scale_elem_bytes(f);
  L.scale_off = L.nb * L.wblock_bytes;
  L.min_off = (f.kind == QKind::int4 && f.asym) ? L.scale_off + sbytes : 0;
  const int64_t end = L.scale_off + sbytes * ((f.kind == QKind::int4 && f.asym) ? 2 : 1);
  L.panel_bytes = (end + 63) & ~(int64_t)63;
  L.total = (size_t)(L.panels * L.panel_bytes);
  return L;
}

// A repacked weight tensor [N, K]. `data` is 64-byte aligned, q_packed_layout().total bytes.
struct QPacked {
  QuantFormat fmt;
  int64_t N = 0, K = 0;
  const uint8_t* data = nullptr;
};

// ---- quantized GEMM -------------------------------------------------------------------
// C[M,N] = A[M,K] · Wᵀ (+ bias[N]) (+ residual[M,N])
//   W: repacked weights [N, K] (nn.Linear / GGUF layout).
//   A: a_dtype (f32, f16 or bf16), row stride lda (elements).
//   Activations are quantized inside the kernel, per row (token) and per block of K
//   (the weight group, or the whole row for per-channel int8), to int8 in [-127, 127]:
//     amax = max|a|, sa = amax / 127, q = round_to_nearest_even(a * (127 / amax)),
//   with sa rounded to f16 when the weight scales are f16 (not K-quants), as ggml's
//   Q8_0 / Q8_1 activation blocks store it (so GGUF Q4_0 / Q4_1 / Q8_0 agree with llama.cpp).
//   The integer dot product of each block is exact (int32); per block the result is
//   scaled in f32:  acc += sa*sw * (dot_u - off*sum(qa))  [+ sa*sum(qa) * min  (asym)].
//   K-quants: the block is the 256-element super-block (one sa per row and super-block).
//   Per sub-block j the exact int32 dot_j is multiplied by the integer sub-scale sc_j in
//   int32, and once per super-block:  acc += (sa*d) * sum_j sc_j*dot_j
//   [q4k: - (sa*dmin) * sum_j m_j*sum_j(qa)], both sums exact in int32.
//   C: c_dtype (f32, f16 or bf16), row stride ldc; rounded once from f32.
//   bias: f32[N] or null. residual: c_dtype [M,N] with row stride ldr, or null; it may
//   alias C exactly (residual == C and ldr == ldc).
// Workspace: the kernel takes par.scratch(0, qgemm_workspace_bytes(...)) on the calling
// thread before it starts the parallel part (and does not use scratch inside tasks).
// Epilogue applied to the f32 accumulators (see the "fused epilogues" section at the end).
enum class QEpilogue : int32_t { none = 0, swiglu = 1 };

struct QGemmArgs {
  QPacked w;
  DType a_dtype = DType::f32;
  int64_t M = 0;
  const void* A = nullptr;
  int64_t lda = 0;
  DType c_dtype = DType::f32;
  void* C = nullptr;
  int64_t ldc = 0;
  const float* bias = nullptr;
  const void* residual = nullptr;
  int64_t ldr = 0;
  // QEpilogue::swiglu: w is a gate/up tensor from q_repack_gate_up() with w.N = F, C is
  // [M, F] = silu(A·Wgᵀ + bg) ⊙ (A·Wuᵀ + bu); bias (optional) is f32[2F] (bg then bu);
  // residual must be null. See the section at the end of this header.
  QEpilogue epilogue = QEpilogue::none;
};

// Row stride (bytes) of the quantized activation buffer, and the whole workspace size.
static inline int64_t qgemm_act_stride(const QuantFormat& f, int64_t K) {
  return (q_num_blocks(f, K) * q_block_len(f, K) + 63) & ~(int64_t)63;
}
static inline size_t qgemm_workspace_bytes(const QuantFormat& f, int64_t M, int64_t K) {
  // int8 codes [M][stride] + f32 scales [M][nb] + i32 code sums [M][nb]
  // (+ K-quants: i16 code sums per sub-block [M][K/sub_len])
  const size_t sub = q_is_kquant(f.kind) ? (size_t)(M * (K / q_sub_len(f))) * 2 : 0;
  return (size_t)(M * qgemm_act_stride(f, K)) + (size_t)(M * q_num_blocks(f, K)) * 8 + sub + 64;
}

// ---- non-variant operations (native/cpu/quant.cpp) ------------------------------------

// Error statistics of quantize(): over all elements, err = dequant(quant(w)) - w.
struct QuantStats {
  double max_abs_err = 0;  // max |err|
  double rms_err = 0;      // sqrt(mean(err^2))
  double max_err_step = 0; // max |err| / (step of its block, d); <= 0.5 unless clamped
  int64_t clamped = 0;     // elements whose nearest grid point lay outside the code range
};

// nullptr when (fmt, N, K) is a valid weight shape, else a message naming the problem.
const char* q_format_error(const QuantFormat& f, int64_t N, int64_t K);
// Throws ty::Error (INVALID_ARG / SHAPE / DTYPE) naming the offending argument.
void q_format_check(const QuantFormat& f, int64_t N, int64_t K);

// Round-to-nearest(-even) quantization of w[N][K] (row stride ldw) into `out` (buffers
// sized by q_plain_*_bytes). Deterministic: the same input gives the same bytes.
//   int8:      d = amax/127 (stored in scale_dtype, rounded), q = clamp(rne(w/d), -127, 127)
//   int4 sym:  v = the element of largest |w| in the block, d = v / -8,
//              q = clamp(rne(w/d), -8, 7)          (the ggml Q4_0 construction)
//   int4 asym: m = min, d = (max - min)/15 (both stored in scale_dtype),
//              q = clamp(rne((w - m)/d), 0, 15)
// The codes are computed against the stored (rounded) d and m, so dequantize() is the
// value the code actually represents. Throws ty::Error(INVALID_ARG) for a non-finite
// weight or an f16 scale/min that would overflow (|w| beyond about 8e6 for int8).
//   q4k (per super-block; a simple one-pass construction, not llama.cpp's search):
//              per sub-block j: lo_j = min(0, min w), s_j = (max w - lo_j)/15, n_j = -lo_j;
//              d = f16(max_j s_j / 63), dmin = f16(max_j n_j / 63);
//              m_j = rne(n_j/dmin), sc_j = rne(s'_j/d) with s'_j = (max w + dmin*m_j)/15,
//              each moved one step up when the nearest value would clip the sub-block's
//              min / max, then clamped to [0, 63];
//              q = the code in [0, 15] whose dequantized value is nearest to w.
//   q6k:       per sub-block j: v_j = the element of largest |w|, s_j = v_j / -32;
//              d = f16(s_max / -128) (s_max: the s_j of largest |s_j|),
//              sc_j = rne(s_j/d), moved one step outwards when v_j would clip at -32,
//              clamped to [-128, 127]; q = the nearest code in [-32, 31].
//   (For the K-quants "clamped" counts elements whose rne(w/step) lay outside the codes;
//   max_err_step is relative to the sub-block step d*sc_j.)
QuantStats quantize(const float* w, int64_t ldw, const QPlain& out);
// w[n][k] = dequantized value (row stride ldw). int8 / int4 sym: (float)q * d;
// int4 asym: (float)q * d + m (two roundings, no fused multiply-add), as ggml.
// q4k: (d*(float)sc) * (float)q - dmin*(float)m;  q6k: (d*(float)sc) * (float)q, each
// product and the difference rounded to f32 in that order (ggml's dequantize_row_q4_K/q6_K).
void dequantize(const QPlain& in, float* w, int64_t ldw);
// Plain -> repacked (out: q_packed_layout().total bytes, 64-byte aligned), and back.
void q_repack(const QPlain& in, uint8_t* out);
void q_unpack(const QPacked& in, const QPlain& out);

// GGUF / ggml block importers. ggml type ids: Q4_0 = 2, Q4_1 = 3, Q8_0 = 8, Q4_K = 12,
// Q6_K = 14.
//   Q4_0 -> int4 sym g32 f16;  Q4_1 -> int4 asym g32 f16;  Q8_0 -> int8 g32 f16;
//   Q4_K -> q4k (group 256, f16);  Q6_K -> q6k (group 256, f16).
// Lossless: dequantize() of the result equals ggml's dequantize_row_* bit for bit.
// Q4_K / Q6_K need K to be a multiple of 256 (their 144 / 210-byte super-blocks).
enum : int32_t { kGgmlQ4_0 = 2, kGgmlQ4_1 = 3, kGgmlQ8_0 = 8, kGgmlQ4_K = 12, kGgmlQ6_K = 14 };
// The native format a ggml type imports into; throws ty::Error(UNSUPPORTED) otherwise.
QuantFormat gguf_native_format(int32_t ggml_type);
// Bytes of N rows of K elements of a ggml block type.
size_t gguf_row_bytes(int32_t ggml_type, int64_t K);
// blocks: N rows of K/32 (K/256 for K-quants) blocks, `bytes` long. out: a QPlain of
// gguf_native_format().
void gguf_import(int32_t ggml_type, const void* blocks, size_t bytes, int64_t N, int64_t K,
                 const QPlain& out);

// Validation for qgemm (what the ops layer should run before enqueueing): throws
// ty::Error with a message naming the argument. Documented in docs/formats.md.
void qgemm_check(const QGemmArgs& a, int64_t K_of_A);

// ==== fused SwiGLU gate/up and grouped (MoE) GEMM ======================================
// (Section owned by the fused/grouped quantized GEMM work; kernels at the end of
// native/cpu/kernels/qgemm.cpp, non-variant code in native/cpu/qgemm_fused.cpp, except
// qgemm_epilogue_check, which is at the end of native/cpu/quant.cpp next to qgemm_check.)
//
// Gate/up layout. A Llama MLP computes h = silu(A·Wgᵀ) ⊙ (A·Wuᵀ) with Wg, Wu both [F, K]
// of the same QuantFormat. q_repack_gate_up() stores them as ONE tensor of panels in the
// ordinary repacked panel format (q_packed_layout(fmt, F, K).panel_bytes each), with the
// panels of the two matrices interleaved:
//   panel 2p   = gate channels 16p .. 16p+15   (zero-padded past F)
//   panel 2p+1 = up   channels 16p .. 16p+15   (zero-padded past F)
// for p in [0, ceil(F/16)). Byte for byte it is the repacked layout of an N = 32*ceil(F/16)
// matrix whose rows are gate/up blocks of 16 alternately, so one task reading panels 2p and
// 2p+1 (adjacent in memory) has both operands of output channels 16p.. of h.
// silu(x) = x / (1 + exp(-x)) in f32 (scalar: std::exp). The AVX2 / AVX-512 kernels use a
// vectorised exp (Cephes polynomial; silu within 2 ulp measured by qgemm_fused_test for
// x >= -87); it overflows to +inf for arguments above 88.38 instead of 88.72, so silu(x)
// is -0 for x < -88.38, where the true |silu(x)| < 4e-37.
static inline QPackedLayout q_gate_up_layout(const QuantFormat& f, int64_t F, int64_t K) {
  QPackedLayout L = q_packed_layout(f, F, K);
  L.panels *= 2;
  L.total *= 2;
  return L;
}
// gate, up: plain tensors of the same format and shape [F, K]. out: q_gate_up_layout().total
// bytes (64-byte aligned for the kernels).
void q_repack_gate_up(const QPlain& gate, const QPlain& up, uint8_t* out);
// Inverse (for tests): in.N = F; gate and up receive the plain tensors.
void q_unpack_gate_up(const QPacked& in, const QPlain& gate, const QPlain& up);

// Grouped GEMM for mixture-of-experts: one call runs E experts of the same format and
// shape. Routing (TypeScript) produces the expert-sorted assignment list:
//   rows[R]:      source row (token) in A of each assignment, sorted by expert;
//   offsets[E+1]: expert e serves assignments [offsets[e], offsets[e+1]) (offsets[0] = 0,
//                 non-decreasing, offsets[E] = R). A token may appear under several
//                 experts (top-k); each distinct source row is quantized once.
// C row i is the result for assignment i (source row rows[i], expert of segment i):
//   none:   C[i, 0:N] = A[rows[i]] · W_eᵀ (+ bias_e)                     (down projection)
//   swiglu: C[i, 0:N] = silu(A[rows[i]]·Wg_eᵀ + bg_e) ⊙ (A[rows[i]]·Wu_eᵀ + bu_e) (gate/up)
// Weights: w[e] points at expert e's repacked tensor: q_packed_layout(fmt, N, K) (none) or
// q_gate_up_layout(fmt, N, K) (swiglu; N = F), 64-byte aligned. A pointer array (not base +
// stride) so experts can live in separate buffers / mmap regions; w[e] may be null when the
// expert has no rows. Empty experts cost nothing.
struct QGroupedArgs {
  QuantFormat fmt;
  int64_t N = 0, K = 0;                 // per expert: output channels (F for swiglu), K
  int64_t E = 0;                        // experts
  const uint8_t* const* w = nullptr;    // [E] repacked weights
  QEpilogue epilogue = QEpilogue::none;
  DType a_dtype = DType::f32;           // f32, f16 or bf16
  int64_t T = 0;                        // rows of A (tokens)
  const void* A = nullptr;              // [T, K], row stride lda (elements)
  int64_t lda = 0;
  int64_t R = 0;                        // assignments (rows of C); 0 is a no-op
  const int32_t* rows = nullptr;        // [R] in [0, T)
  const int32_t* offsets = nullptr;     // [E+1]
  DType c_dtype = DType::f32;           // f32, f16 or bf16
  void* C = nullptr;                    // [R, N], row stride ldc (elements)
  int64_t ldc = 0;
  // Optional f32 [E][ldb]: expert e's bias at bias + e*ldb; N values (none) or 2N (swiglu:
  // gate bias then up bias). ldb >= N (none) or 2N (swiglu).
  const float* bias = nullptr;
  int64_t ldb = 0;
};
// Workspace: the kernel takes par.scratch(0, qgemm_grouped_workspace_bytes(...)) on the
// calling thread before its parallel part: the quantized activations of the R assignment
// rows (qgemm_workspace_bytes layout), a T-entry first-use table and a per-expert task table.
static inline size_t qgemm_grouped_workspace_bytes(const QuantFormat& f, int64_t T, int64_t R, int64_t K, int64_t E) {
  return qgemm_workspace_bytes(f, R, K) + (size_t)T * 4 + (size_t)(E + 1) * 8 + 192;
}
// Validation for qgemm_grouped (throws ty::Error naming the argument): format and shapes,
// dtypes, strides, w[e] non-null and aligned for every non-empty expert, offsets[0] = 0,
// non-decreasing, offsets[E] = R, every rows[i] in [0, T).
void qgemm_grouped_check(const QGroupedArgs& a, int64_t K_of_A);
// Checks the epilogue-specific arguments of a QGemmArgs (called by qgemm_check).
void qgemm_epilogue_check(const QGemmArgs& a);

}  // namespace ty
