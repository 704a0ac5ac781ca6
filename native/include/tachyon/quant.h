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
};

struct QuantFormat {
  QKind kind = QKind::int8;
  // Quantization group along K: 32, 64 or 128. int8 also allows 0 = per channel (one
  // scale per output row over the whole of K). int4 requires a group.
  int32_t group = 0;
  bool asym = false;                 // int4 only: scale plus min (GGUF Q4_1 style)
  DType scale_dtype = DType::f32;    // f32 or f16; applies to scales and mins
};

// ---- block geometry (a "block" is one group, or the whole row for per-channel int8) ---

// Elements of K per block. Per-channel int8 uses one block of K rounded up to 4 (the
// repacked layout pads K with zero weights to a whole 4-byte VNNI step).
static inline int64_t q_block_len(const QuantFormat& f, int64_t K) {
  return f.group > 0 ? (int64_t)f.group : ((K + 3) & ~(int64_t)3);
}
static inline int64_t q_num_blocks(const QuantFormat& f, int64_t K) {
  return f.group > 0 ? K / f.group : 1;
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
struct QPlain {
  QuantFormat fmt;
  int64_t N = 0, K = 0;
  void* q = nullptr;
  void* scales = nullptr;
  void* mins = nullptr;
};
static inline size_t q_plain_q_bytes(const QuantFormat& f, int64_t N, int64_t K) {
  return f.kind == QKind::int8 ? (size_t)(N * K) : (size_t)(N * (K / 2));
}
static inline size_t q_plain_scale_bytes(const QuantFormat& f, int64_t N, int64_t K) {
  return (size_t)(N * q_num_blocks(f, K)) * q_scale_elem_bytes(f);
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
struct QPackedLayout {
  int64_t panels;        // ceil(N / 16)
  int64_t nb;            // blocks per row
  int64_t block_len;     // K elements per block (per-channel int8: K rounded up to 4)
  int64_t wblock_bytes;  // bytes of one block of one panel's weights
  int64_t scale_off;     // offset of the scales within a panel
  int64_t min_off;       // offset of the mins within a panel (asym), else 0
  int64_t panel_bytes;   // stride between panels (multiple of 64)
  size_t total;          // bytes of the whole repacked tensor
};
static constexpr int kQPanel = 16;  // output channels per panel

static inline QPackedLayout q_packed_layout(const QuantFormat& f, int64_t N, int64_t K) {
  QPackedLayout L;
  L.panels = (N + kQPanel - 1) / kQPanel;
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
//     amax = max|a|, sa = amax / 127, q = round_to_nearest_even(a * (127 / amax)).
//   The integer dot product of each block is exact (int32); per block the result is
//   scaled in f32:  acc += sa*sw * (dot_u - off*sum(qa))  [+ sa*sum(qa) * min  (asym)].
//   C: c_dtype (f32, f16 or bf16), row stride ldc; rounded once from f32.
//   bias: f32[N] or null. residual: c_dtype [M,N] with row stride ldr, or null; it may
//   alias C exactly (residual == C and ldr == ldc).
// Workspace: the kernel takes par.scratch(0, qgemm_workspace_bytes(...)) on the calling
// thread before it starts the parallel part (and does not use scratch inside tasks).
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
};

// Row stride (bytes) of the quantized activation buffer, and the whole workspace size.
static inline int64_t qgemm_act_stride(const QuantFormat& f, int64_t K) {
  return (q_num_blocks(f, K) * q_block_len(f, K) + 63) & ~(int64_t)63;
}
static inline size_t qgemm_workspace_bytes(const QuantFormat& f, int64_t M, int64_t K) {
  // int8 codes [M][stride] + f32 scales [M][nb] + i32 code sums [M][nb]
  return (size_t)(M * qgemm_act_stride(f, K)) + (size_t)(M * q_num_blocks(f, K)) * 8 + 64;
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
QuantStats quantize(const float* w, int64_t ldw, const QPlain& out);
// w[n][k] = dequantized value (row stride ldw). int8 / int4 sym: (float)q * d;
// int4 asym: (float)q * d + m (two roundings, no fused multiply-add), as ggml.
void dequantize(const QPlain& in, float* w, int64_t ldw);
// Plain -> repacked (out: q_packed_layout().total bytes, 64-byte aligned), and back.
void q_repack(const QPlain& in, uint8_t* out);
void q_unpack(const QPacked& in, const QPlain& out);

// GGUF / ggml block importers. ggml type ids: Q4_0 = 2, Q4_1 = 3, Q8_0 = 8.
//   Q4_0 -> int4 sym g32 f16;  Q4_1 -> int4 asym g32 f16;  Q8_0 -> int8 g32 f16.
// Lossless: dequantize() of the result equals ggml's dequantize_row_* bit for bit.
enum : int32_t { kGgmlQ4_0 = 2, kGgmlQ4_1 = 3, kGgmlQ8_0 = 8 };
// The native format a ggml type imports into; throws ty::Error(UNSUPPORTED) otherwise.
QuantFormat gguf_native_format(int32_t ggml_type);
// Bytes of N rows of K elements of a ggml block type.
size_t gguf_row_bytes(int32_t ggml_type, int64_t K);
// blocks: N rows of K/32 blocks, `bytes` long. out: a QPlain of gguf_native_format().
void gguf_import(int32_t ggml_type, const void* blocks, size_t bytes, int64_t N, int64_t K,
                 const QPlain& out);

// Validation for qgemm (what the ops layer should run before enqueueing): throws
// ty::Error with a message naming the argument. Documented in docs/formats.md.
void qgemm_check(const QGemmArgs& a, int64_t K_of_A);

}  // namespace ty
