// Tachyon: FP8 weight formats (OCP e4m3 "fn" and e5m2), their scalar conversions, the
// plain and repacked (SIMD) layouts and the FP8 GEMM argument struct. Framework-free.
// Byte layouts are documented in docs/formats.md ("FP8"); this header is the code form.
//
//   e4m3 (OCP E4M3FN, torch.float8_e4m3fn): S.EEEE.MMM, bias 7, max 448, no inf,
//        NaN = S.1111.111 (0x7f / 0xff), subnormals m * 2^-9.
//   e5m2 (IEEE-like, torch.float8_e5m2):   S.EEEEE.MM, bias 15, max 57344, inf = S.11111.00,
//        NaN = S.11111.{01,10,11}; bit for bit the top byte of an IEEE binary16.
//
// The f32 -> fp8 conversions round to nearest even and saturate to the largest finite
// value (inf included), exactly like CUDA's __nv_cvt_float_to_fp8(x, __NV_SATFINITE, ...)
// in host code: NaN -> 0x7f (either format, sign dropped), |x| below half the smallest
// subnormal -> +-0. native/tests/fp8_test.sh checks them bit for bit against cuda_fp8.h.
//
// Everything defined here is `static inline` (this header is included by ISA-variant
// translation units; see native/cpu/isa.h for why).
#pragma once
#include <cstddef>
#include <cstdint>

#include "tachyon/dtype.h"
#include "tachyon/parallel.h"
#include "tachyon/quant.h"  // QuantStats

namespace ty {

// ---- scalar conversions -------------------------------------------------------------

static inline float fp8e4m3_to_f32(uint8_t b) {
  const uint32_t s = (uint32_t)(b & 0x80) << 24;
  const uint32_t e = (b >> 3) & 15, m = b & 7;
  if (e == 15 && m == 7) return bits_f32(0x7fc00000u | s);  // NaN
  if (e == 0) {
    const float v = (float)m * 0.001953125f;  // m * 2^-9 (subnormal or zero)
    return s ? -v : v;
  }
  return bits_f32(s | ((e + 120) << 23) | (m << 20));
}

static inline float fp8e5m2_to_f32(uint8_t b) { return f16_to_f32((uint16_t)(b << 8)); }

static inline uint8_t f32_to_fp8e4m3(float f) {
  const uint32_t x = f32_bits(f);
  uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return 0x7f;  // NaN (canonical, sign dropped)
  const uint8_t sign = (uint8_t)((x >> 24) & 0x80);
  if (ax >= 0x43e80000u) return (uint8_t)(sign | 0x7e);  // >= 464 (incl. inf): saturate to 448
  if (ax < 0x3c800000u) {
    // below 2^-6: subnormal grid of step 2^-9. Scale the step to 1 and let the FPU round
    // to nearest even at the unit place (v < 8, so adding 2^23 does it). r = 8 is the
    // smallest normal, code 0x08, so the sum below is right in that case too.
    const float v = bits_f32(ax) * 512.0f;
    const float r = (v + 8388608.0f) - 8388608.0f;
    return (uint8_t)(sign | (uint8_t)r);
  }
  ax += 0x7ffffu + ((ax >> 20) & 1);  // round to nearest even at bit 20 (3 mantissa bits)
  return (uint8_t)(sign | (uint8_t)((ax >> 20) - (120u << 3)));
}

static inline uint8_t f32_to_fp8e5m2(float f) {
  const uint32_t x = f32_bits(f);
  uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return 0x7f;  // NaN
  const uint8_t sign = (uint8_t)((x >> 24) & 0x80);
  if (ax >= 0x47700000u) return (uint8_t)(sign | 0x7b);  // >= 61440 (incl. inf): saturate to 57344
  if (ax < 0x38800000u) {  // below 2^-14: subnormal grid of step 2^-16
    const float v = bits_f32(ax) * 65536.0f;
    const float r = (v + 8388608.0f) - 8388608.0f;
    return (uint8_t)(sign | (uint8_t)r);
  }
  ax += 0xfffffu + ((ax >> 21) & 1);  // round to nearest even at bit 21 (2 mantissa bits)
  return (uint8_t)(sign | (uint8_t)((ax >> 21) - (112u << 2)));
}

// Dispatch on the format dtype (DType::fp8e4m3 or DType::fp8e5m2).
static inline float fp8_to_f32(DType t, uint8_t b) {
  return t == DType::fp8e5m2 ? fp8e5m2_to_f32(b) : fp8e4m3_to_f32(b);
}
static inline uint8_t f32_to_fp8(DType t, float f) {
  return t == DType::fp8e5m2 ? f32_to_fp8e5m2(f) : f32_to_fp8e4m3(f);
}
// Largest finite value of the format: 448 (e4m3) or 57344 (e5m2).
static inline float fp8_max(DType t) { return t == DType::fp8e5m2 ? 57344.0f : 448.0f; }
// True for the NaN codes (e4m3: S.1111.111; e5m2: S.11111.xx with xx != 0 ... and inf is
// S.11111.00, reported by fp8_is_inf).
static inline bool fp8_is_nan(DType t, uint8_t b) {
  return t == DType::fp8e5m2 ? (b & 0x7f) > 0x7c : (b & 0x7f) == 0x7f;
}
static inline bool fp8_is_inf(DType t, uint8_t b) { return t == DType::fp8e5m2 && (b & 0x7f) == 0x7c; }

// ---- format descriptor ----------------------------------------------------------------

enum class Fp8Scale : int32_t {
  tensor = 0,    // one f32 scale for the whole tensor
  channel = 1,   // one f32 scale per output channel (row n)
  block128 = 2,  // one f32 scale per 128 x 128 block (rows n/128, columns k/128)
};

struct Fp8Format {
  DType dtype = DType::fp8e4m3;  // fp8e4m3 or fp8e5m2
  Fp8Scale scale = Fp8Scale::channel;
};

constexpr int64_t kFp8Block = 128;  // block128 edge

// ---- plain layout -------------------------------------------------------------------
// codes:  u8[N][K] row-major, element (n,k) at codes[n*K + k].
// scales: f32; tensor: [1]; channel: [N]; block128: [ceil(N/128)][ceil(K/128)], element
//         (n/128)*ceil(K/128) + k/128. The last block row / column may be partial.
// Value of (n,k) = fp8_to_f32(code) * scale (one f32 multiplication: what fp8_dequantize gives).
struct Fp8Plain {
  Fp8Format fmt;
  int64_t N = 0, K = 0;
  uint8_t* codes = nullptr;
  float* scales = nullptr;
};
static inline int64_t fp8_num_scales(const Fp8Format& f, int64_t N, int64_t K) {
  switch (f.scale) {
    case Fp8Scale::tensor: return 1;
    case Fp8Scale::channel: return N;
    default: return ((N + kFp8Block - 1) / kFp8Block) * ((K + kFp8Block - 1) / kFp8Block);
  }
}
static inline size_t fp8_plain_code_bytes(int64_t N, int64_t K) { return (size_t)(N * K); }
static inline size_t fp8_plain_scale_bytes(const Fp8Format& f, int64_t N, int64_t K) {
  return (size_t)fp8_num_scales(f, N, K) * 4;
}
// Index of the plain scale that applies to element (n, k).
static inline int64_t fp8_scale_index(const Fp8Format& f, int64_t K, int64_t n, int64_t k) {
  switch (f.scale) {
    case Fp8Scale::tensor: return 0;
    case Fp8Scale::channel: return n;
    default: return (n / kFp8Block) * ((K + kFp8Block - 1) / kFp8Block) + k / kFp8Block;
  }
}

// ---- repacked layout ------------------------------------------------------------------
// N is split into panels of 16 output channels (the last one zero-padded); K is padded
// with zero codes to Kp = a multiple of 16. A panel is contiguous and 64-byte aligned:
//   [codes: Kp x 16 bytes][scales][pad to 64]
// The code of (k, channel c of the panel) is the byte at fp8_code_pos(dtype, k, c), stored
// as fp8_stored_byte(dtype, code):
//   e5m2: position k*16 + c, the code unchanged (each 16-byte row k = the 16 channels);
//   e4m3: within each 32-byte group g = k/2 (rows 2g, 2g+1), position
//         32g + 16*((c>>2)&1) + 8*(k&1) + 4*(c>>3) + (c&3), the code nibble-swapped
//         (e0 m2 m1 m0 | s e3 e2 e1). Both are chosen so that AVX2 builds the f32 bits of
//         value * 2^-120 with two ANDs, one vpshufb and two unpack levels (no shift, no
//         vcvtph2ps), the channels coming out in order: see fp8gemm.cpp.
// The f32 lanes of the kernels are channels.
// Scales (f32): tensor / channel: 16 floats, lane c = scale of channel c of the panel
// (tensor: the one scale repeated; padding channels: 0). block128: ceil(K/128) floats,
// float b = scale of the 128 x 128 block holding this panel's channels and columns
// [128b, 128b+128) (16 divides 128, so a panel never straddles two block rows).
struct Fp8PackedLayout {
  int64_t panels;       // ceil(N / 16)
  int64_t Kp;           // K rounded up to 16
  int64_t nkb;          // ceil(K / 128)
  int64_t scale_off;    // byte offset of the scales within a panel (= Kp * 16)
  int64_t n_scales;     // floats of scales per panel (16, or nkb)
  int64_t panel_bytes;  // stride between panels (multiple of 64)
  size_t total;         // bytes of the whole repacked tensor
};
static constexpr int kFp8Panel = 16;

// Byte offset of (k, c) within a panel's code area (c in [0, 16)).
static inline int64_t fp8_code_pos(DType t, int64_t k, int c) {
  if (t != DType::fp8e4m3) return k * 16 + c;
  return (k >> 1) * 32 + ((c >> 2) & 1) * 16 + (k & 1) * 8 + (c >> 3) * 4 + (c & 3);
}
// Code -> stored byte, and back (the e4m3 nibble swap is its own inverse).
static inline uint8_t fp8_stored_byte(DType t, uint8_t b) {
  return t == DType::fp8e4m3 ? (uint8_t)((b << 4) | (b >> 4)) : b;
}

static inline Fp8PackedLayout fp8_packed_layout(const Fp8Format& f, int64_t N, int64_t K) {
  Fp8PackedLayout L;
  L.panels = (N + kFp8Panel - 1) / kFp8Panel;
  L.Kp = (K + 15) & ~(int64_t)15;
  L.nkb = (K + kFp8Block - 1) / kFp8Block;
  L.scale_off = L.Kp * kFp8Panel;
  L.n_scales = f.scale == Fp8Scale::block128 ? L.nkb : kFp8Panel;
  L.panel_bytes = (L.scale_off + L.n_scales * 4 + 63) & ~(int64_t)63;
  L.total = (size_t)(L.panels * L.panel_bytes);
  return L;
}

// A repacked weight tensor [N, K]. `data` is 64-byte aligned, fp8_packed_layout().total bytes.
struct Fp8Packed {
  Fp8Format fmt;
  int64_t N = 0, K = 0;
  const uint8_t* data = nullptr;
};

// ---- FP8 GEMM -------------------------------------------------------------------------
// C[M,N] = A[M,K] · Wᵀ (+ bias[N]) (+ residual[M,N]), W = fp8 codes * scales.
//   act = w8a16: A (f32, f16 or bf16) is used as is (widened to f32).
//   act = w8a8:  each row m of A is quantized to e4m3 first (dynamic, per token):
//                  amax = max_k |a[m][k]| (in f32), sa = amax / 448, inv = 448 / amax
//                  (both one f32 division; 0 when amax == 0),
//                  qa[m][k] = f32_to_fp8e4m3(a[m][k] * inv)   (RNE, saturating),
//                and C = sa * sum_k e4m3(qa) * w (the f32 product of two fp8 values is exact).
//   Arithmetic: f32 multiply-add (products of fp8 weights with f32 activations), f32
//   sums; C rounded once to c_dtype (f32, f16 or bf16), row stride ldc.
//   bias: f32[N] or null. residual: c_dtype [M,N] with row stride ldr, or null; it may
//   alias C exactly (residual == C and ldr == ldc).
// Weights holding NaN codes give unspecified (possibly finite) outputs in the rows they
// touch; they never fault. Non-finite activations give NaN / inf outputs.
enum class Fp8Act : int32_t { w8a16 = 0, w8a8 = 1 };

struct Fp8GemmArgs {
  Fp8Packed w;
  DType a_dtype = DType::f32;
  Fp8Act act = Fp8Act::w8a16;
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

// Workspace: the kernel takes par.scratch(0, fp8gemm_workspace_bytes(M, K, par.threads()))
// on the calling thread before the parallel part; tasks use per-thread slices of it and
// never call scratch() themselves. Layout: activations widened (and, for w8a8, quantized)
// to f32 [round_up(M, 24)][Kp] (row-major or in row panels, per path), f32 row scales
// [M], then per thread a converted weight strip (256 x 64 f32) and an f32 tile (96 x 64).
constexpr int64_t kFp8RowAlign = 24;   // row padding of the activation buffer
constexpr int64_t kFp8KC = 256;        // large-M path: K chunk
constexpr int64_t kFp8NC = 64;         // large-M path: channels per task
constexpr int64_t kFp8MC = 96;         // large-M path: rows per task
static inline size_t fp8gemm_thread_bytes() {
  return (size_t)(kFp8KC * kFp8NC * 4 + kFp8MC * kFp8NC * 4 + 256);
}
static inline size_t fp8gemm_workspace_bytes(int64_t M, int64_t K, int threads) {
  const int64_t Kp = (K + 15) & ~(int64_t)15;
  const int64_t Mp = (M + kFp8RowAlign - 1) / kFp8RowAlign * kFp8RowAlign;
  const size_t act = ((size_t)(Mp * Kp) * 4 + (size_t)Mp * 4 + 63) & ~(size_t)63;
  return act + (size_t)(threads < 1 ? 1 : threads) * fp8gemm_thread_bytes() + 64;
}

// ---- non-variant operations (native/cpu/fp8.cpp) ----------------------------------------

// nullptr when (fmt, N, K) is a valid weight shape, else a message naming the problem.
const char* fp8_format_error(const Fp8Format& f, int64_t N, int64_t K);
// Throws ty::Error (DTYPE / INVALID_ARG / SHAPE, naming `arg`) when the format is invalid.
void fp8_format_check(const Fp8Format& f, int64_t N, int64_t K, const char* arg = "weights");

// Quantizes w[N][K] (row stride ldw) into `out` (codes and scales sized by fp8_plain_*).
// Per granule (tensor / channel / 128x128 block): amax = max |w|, scale = amax / fp8_max
// (one f32 division; 1 when amax == 0; the smallest positive f32 if it underflows to 0),
// code = f32_to_fp8(w / scale) (f32 division, RNE, saturating). Deterministic.
// Statistics: err = dequantize(code) - w; max_err_step = max |err| / (spacing of the fp8
// grid at the code's magnitude * scale), <= 0.5 except where saturated (counted in
// `clamped`). Throws ty::Error(INVALID_ARG, arg "weights") for a non-finite weight.
QuantStats fp8_quantize(const float* w, int64_t ldw, const Fp8Plain& out);
// w[n][k] = fp8_to_f32(code) * scale (row stride ldw). NaN codes give NaN, e5m2 inf codes inf.
void fp8_dequantize(const Fp8Plain& in, float* w, int64_t ldw);
// Plain -> repacked (out: fp8_packed_layout().total bytes, 64-byte aligned; every byte
// written, padding zero), and back. Throws ty::Error(INVALID_ARG, "scales") for a
// non-finite scale.
void fp8_repack(const Fp8Plain& in, uint8_t* out);
void fp8_unpack(const Fp8Packed& in, const Fp8Plain& out);

// Validation for fp8gemm (what the ops layer runs before enqueueing): throws ty::Error
// naming the argument: "w" (format, data, alignment), "a" (dtype, K, lda, M, null),
// "out" (dtype, ldc, null), "bias", "residual" (stride, partial overlap with C).
void fp8gemm_check(const Fp8GemmArgs& a, int64_t K_of_A);

}  // namespace ty
