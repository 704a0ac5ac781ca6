// Tachyon CUDA kernels: FP8 GEMMs (semantics: tachyon/fp8.h Fp8GemmArgs, the CPU backend's):
//   C[M,N] = A[M,K] · Wᵀ (+ bias[N]) (+ residual[M,N]),  W = fp8 code (e4m3 / e5m2) * scale
//   scales: tensor [1], channel [N], or block128 [ceil(N/128)][ceil(K/128)] (f32); weights in
//   the PLAIN layout (Fp8Plain: codes [N][K] row-major) in device memory.
//   act = w8a16: A (f16 / bf16) is used as is.  act = w8a8: each row of A (f32 / f16 / bf16) is
//   quantized to e4m3 first, in the CPU's f32 operations (amax = max|a|, sa = amax / 448,
//   inv = 448 / amax, q = e4m3_satfinite_rne(a * inv)), codes and sa bit-identical to the CPU's;
//   C = sa · Σ q·w.
// Two kernels (the skeleton of gemm_int8.cuh, q8_gemm_kernel):
//   - W8A8 on tensor cores (OpE4M3): mma.m16n8k32.f32.e4m3.e4m3, sm_89+ only (the PTX wrapper
//     traps below; fp8gemm_w8a8_mma() refuses on an sm_80 QDevice). As DeepGEMM does, each
//     128-wide block of K is accumulated in the mma's own f32 accumulators and then folded into a
//     separate f32 accumulator (with the block128 scale, or 1), so the tensor core's limited
//     internal accumulation precision on fp8 never sees more than 128 products. The per-token sa
//     and the channel / tensor scale are applied in the epilogue.
//   - W8A16 for sm_80+ (OpW8A16): the fp8 weight bytes go through shared memory as they are
//     (half the bytes of f16), ldmatrix gives each lane 4 consecutive k codes of its column,
//     and they are dequantized in registers EXACTLY (every e4m3 and e5m2 value is representable
//     in f16 and in bf16) into m16n8k16 B fragments. Because a lane then holds k = 4t..4t+3
//     (not the mma's 2t, 2t+1, 2t+8, 2t+9), the A fragment uses the same permutation of k:
//     slot 2t+e <- k 4t+e, slot 8+2t+e <- k 4t+2+e, i.e. one 64-bit shared load per row per
//     k16 (a dot product is invariant under a common permutation of k). block128 scales are
//     applied per 128 of K (promotion), channel / tensor scales in the epilogue.
//   w8a8 with e5m2 weights, or on sm_80, runs through the W8A16 kernel: the e4m3 activation
//   codes are written as f16 values (exact), with sa as the epilogue row factor: the same math.
// Dequantization (bit-exact to fp8_to_f32, NaN codes excepted):
//   f16:  e5m2 -> the code is the f16's top byte;  e4m3 -> sign | (code & 0x7f) << 7 is the f16
//         of value * 2^-8 (subnormals included), times 256 with HMUL2 (exact).
//   bf16: the f32 bits of value * 2^-120 (e4m3) / 2^-112 (e5m2) from shifts and masks, one FMUL
//         by the power of two (exact; f32 subnormal inputs are not flushed), the top halves.
//   e4m3 NaN codes decode to +-480 (finite, unspecified per tachyon/fp8.h); e5m2 inf / NaN codes
//   decode to inf / NaN in f16 but to finite values in bf16 (fp8_quantize never produces them).
#pragma once

#include "gemm_int8.cuh"
#include "tachyon/fp8.h"

namespace ty {
namespace cuda {
inline namespace TY_CUDA_BUILD {  // see common.cuh

enum class Fp8Path { automatic, mma, dequant };

enum Fp8Fmt : int { kE4M3 = 0, kE5M2 = 1 };

TY_DEV uint32_t q8_h2_mul_bits(uint32_t x, __half2 k) {
  __half2_raw r;
  r.x = uint16_t(x & 0xffffu);
  r.y = uint16_t(x >> 16);
  const __half2_raw o = __hmul2(__half2(r), k);
  return uint32_t(o.x) | (uint32_t(o.y) << 16);
}

// fp8 pair -> f16x2 / bf16x2 bits. lo: codes in bytes 0, 1 of r; hi: bytes 2, 3.
template <class T, int FMT>
struct Fp8Dq;
template <int FMT>
struct Fp8Dq<__half, FMT> {
  static TY_DEV uint32_t cvt(uint32_t x) {  // x: the two codes in the high byte of each half
    if (FMT == kE5M2) return x;
    const uint32_t h = (x & 0x80008000u) | ((x >> 1) & 0x3f803f80u);
    __half2_raw k;
    k.x = 0x5c00;  // 256
    k.y = 0x5c00;
    return q8_h2_mul_bits(h, __half2(k));
  }
  static TY_DEV uint32_t lo(uint32_t r) { return cvt(__byte_perm(r, 0u, 0x1404)); }
  static TY_DEV uint32_t hi(uint32_t r) { return cvt(__byte_perm(r, 0u, 0x3424)); }
};
template <int FMT>
struct Fp8Dq<__nv_bfloat16, FMT> {
  // Byte I of r as f32 (exact): sign | exponent-and-mantissa bits placed under the f32
  // exponent, then one multiply by 2^120 (e4m3) or 2^112 (e5m2) fixes the bias.
  template <int I>
  static TY_DEV float one(uint32_t r) {
    const uint32_t x = I == 3 ? r : r << (24 - 8 * I);  // byte I in bits 31..24
    const uint32_t b = (x & 0x80000000u) | (FMT == kE4M3 ? (x >> 4) & 0x07f00000u : (x >> 3) & 0x0fe00000u);
    return __uint_as_float(b) * __uint_as_float(FMT == kE4M3 ? 0x7b800000u : 0x77800000u);
  }
  static TY_DEV uint32_t pack(float a, float b) { return __byte_perm(__float_as_uint(a), __float_as_uint(b), 0x7632); }
  static TY_DEV uint32_t lo(uint32_t r) { return pack(one<0>(r), one<1>(r)); }
  static TY_DEV uint32_t hi(uint32_t r) { return pack(one<2>(r), one<3>(r)); }
};

template <class T>
struct Mma16;
template <>
struct Mma16<__half> {
  static TY_DEV void run(float* d, const uint32_t* a, const uint32_t* b) { ptx::mma_m16n8k16_f32_f16(d, a, b, d); }
};
template <>
struct Mma16<__nv_bfloat16> {
  static TY_DEV void run(float* d, const uint32_t* a, const uint32_t* b) { ptx::mma_m16n8k16_f32_bf16(d, a, b, d); }
};

// W8A8 e4m3 on tensor cores (sm_89+).
template <bool BLOCK>
struct OpE4M3 {
  static constexpr int A_BYTES = 1;
  using PAcc = float;
  static constexpr int PK = 128;
  static constexpr int KIND = BLOCK ? kPromoteBlock : kPromoteUnit;
  static constexpr int LARGE = 2;
  template <class TL>
  static constexpr int NG = 0;
  template <class TL, int LDA, int LDB, int BUG>
  static TY_DEV void step(float (&acc)[TL::MI][TL::NI][4], const uint8_t* sa, const uint8_t* sb, int wm, int wn, int lane, int kb) {
    q8_step8<TL, LDA, LDB, MmaE4M3, BUG>(acc, sa, sb, wm, wn, lane, kb);
  }
};

// W8A16: A is T (f16 / bf16), W fp8 (FMT) dequantized in registers.
template <class T, int FMT, bool BLOCK>
struct OpW8A16 {
  static constexpr int A_BYTES = 2;
  using PAcc = float;
  static constexpr int PK = BLOCK ? 128 : 0;
  static constexpr int KIND = BLOCK ? kPromoteBlock : kPromoteNone;
  static constexpr int LARGE = BLOCK ? 2 : 0;
  template <class TL>
  static constexpr int NG = 0;
  // One 32-wide k step = two m16n8k16 per tile. B: one ldmatrix gives codes k 4t..4t+3 (reg 0,
  // first k16) and 16+4t.. (reg 1) of column g. A in the same k order: row g at byte
  // 2 (kb + 16h + 4t), 8 bytes = k 4t..4t+3 -> a0a1 (4t, 4t+1) and a4a5 (4t+2, 4t+3); row g + 8
  // -> a2a3, a6a7. BUG 3 puts them in the unpermuted register order.
  template <class TL, int LDA, int LDB, int BUG>
  static TY_DEV void step(float (&acc)[TL::MI][TL::NI][4], const uint8_t* sa, const uint8_t* sb, int wm, int wn, int lane, int kb) {
    const int g = lane >> 2, t4 = lane & 3;
    uint32_t bf[TL::NI][2];
    q8_load_b<TL::NI, LDB>(bf, sb, wn, lane, kb);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      uint32_t af[TL::MI][4], bd[TL::NI][2];
#pragma unroll
      for (int i = 0; i < TL::MI; ++i) {
        const uint8_t* r0 = sa + (wm + i * 16 + g) * LDA + 2 * (kb + 16 * h + 4 * t4);
        const uint2 x = *reinterpret_cast<const uint2*>(r0);
        const uint2 y = *reinterpret_cast<const uint2*>(r0 + 8 * LDA);
        af[i][0] = x.x;
        af[i][1] = BUG == 3 ? x.y : y.x;
        af[i][2] = BUG == 3 ? y.x : x.y;
        af[i][3] = y.y;
      }
#pragma unroll
      for (int j = 0; j < TL::NI; ++j) {
        bd[j][0] = Fp8Dq<T, FMT>::lo(bf[j][h]);
        bd[j][1] = Fp8Dq<T, FMT>::hi(bf[j][h]);
      }
#pragma unroll
      for (int i = 0; i < TL::MI; ++i)
#pragma unroll
        for (int j = 0; j < TL::NI; ++j) Mma16<T>::run(acc[i][j], af[i], bd[j]);
    }
  }
};

// ---- activation quantization (per token, e4m3) -------------------------------------------------
// One 128-thread block per row: block max, then codes (F16OUT: the codes' exact f16 values, for
// the W8A16 kernel) at q[row][ldq] and sa at sa[row].
template <class T, bool F16OUT>
__global__ void __launch_bounds__(128) act_quant_fp8_kernel(const T* A, int64_t lda, int K, void* q, int64_t ldq, float* sa) {
  __shared__ float red[4];
  const int row = blockIdx.x, tid = threadIdx.x;
  const T* a = A + int64_t(row) * lda;
  float amax = 0.0f;
  for (int k = tid; k < K; k += 128) amax = fmaxf(amax, fabsf(to_f32(a[k])));
  amax = block_maxmin<4>(amax, true, red);
  // The CPU's f32 operations (tachyon/fp8.h): inv = 448 / amax, sa = amax / 448.
  const float inv = amax > 0.0f ? 448.0f / amax : 0.0f;
  for (int k = tid; k < K; k += 128) {
    const __nv_fp8_storage_t c = __nv_cvt_float_to_fp8(__fmul_rn(to_f32(a[k]), inv), __NV_SATFINITE, __NV_E4M3);
    if (F16OUT) static_cast<__half*>(q)[int64_t(row) * ldq + k] = __half(__nv_cvt_fp8_to_halfraw(c, __NV_E4M3));
    else static_cast<uint8_t*>(q)[int64_t(row) * ldq + k] = c;
  }
  if (tid == 0) sa[row] = amax / 448.0f;
}

namespace detail {

inline Status fp8_check_format(const char* op, const Fp8Format& f, int64_t N, int64_t K) {
  if (f.dtype != DType::fp8e4m3 && f.dtype != DType::fp8e5m2) return bad_dtype(op, f.dtype, "w");
  if (f.scale != Fp8Scale::tensor && f.scale != Fp8Scale::channel && f.scale != Fp8Scale::block128)
    return q8_fail(Code::INVALID_ARG, op, "scale granularity must be tensor, channel or block128", "w");
  if (N < 1 || K < 1) return q8_fail(Code::SHAPE, op, "N and K must be positive", "w");
  if (N > (int64_t(1) << 24) || K > (int64_t(1) << 24)) return q8_fail(Code::SHAPE, op, "N and K must be <= 16777216", "w");
  return {};
}

inline void fp8_scale_params(const Fp8Format& f, int64_t K, Q8Params& p) {
  p.colf = f.scale == Fp8Scale::channel ? kColF32 : f.scale == Fp8Scale::tensor ? kColScalar : kColNone;
  p.nkb = int((K + kFp8Block - 1) / kFp8Block);
}

template <int BUG = 0>
Status fp8_mma_dispatch(bool block, const Q8Params& p, QTileChoice tile, int64_t m_hint, int64_t grid_rows, const DeviceLimits& lim,
                        stream_t s, bool dry) {
  if (block) return q8_run<OpE4M3<true>, BUG>("fp8gemm_mma", p, tile, m_hint, grid_rows, lim, s, dry);
  return q8_run<OpE4M3<false>, BUG>("fp8gemm_mma", p, tile, m_hint, grid_rows, lim, s, dry);
}

template <class T, int FMT, int BUG = 0>
Status fp8_a16_dispatch_t(bool block, const Q8Params& p, QTileChoice tile, int64_t m_hint, int64_t grid_rows, const DeviceLimits& lim,
                          stream_t s, bool dry) {
  if (block) return q8_run<OpW8A16<T, FMT, true>, BUG>("fp8gemm_w8a16", p, tile, m_hint, grid_rows, lim, s, dry);
  return q8_run<OpW8A16<T, FMT, false>, BUG>("fp8gemm_w8a16", p, tile, m_hint, grid_rows, lim, s, dry);
}
template <int BUG = 0>
Status fp8_a16_dispatch(DType a, DType w, bool block, const Q8Params& p, QTileChoice tile, int64_t m_hint, int64_t grid_rows,
                        const DeviceLimits& lim, stream_t s, bool dry) {
  const bool e5 = w == DType::fp8e5m2;
  if (a == DType::f16)
    return e5 ? fp8_a16_dispatch_t<__half, kE5M2, BUG>(block, p, tile, m_hint, grid_rows, lim, s, dry)
              : fp8_a16_dispatch_t<__half, kE4M3, BUG>(block, p, tile, m_hint, grid_rows, lim, s, dry);
  return e5 ? fp8_a16_dispatch_t<__nv_bfloat16, kE5M2, BUG>(block, p, tile, m_hint, grid_rows, lim, s, dry)
            : fp8_a16_dispatch_t<__nv_bfloat16, kE4M3, BUG>(block, p, tile, m_hint, grid_rows, lim, s, dry);
}

template <class T>
Status act_quant_fp8_t(const T* A, int64_t lda, int64_t rows, int64_t K, bool f16out, void* q, int64_t ldq, float* sa,
                       const DeviceLimits& lim, stream_t s) {
  LaunchCfg c{dim3(unsigned(rows)), dim3(128), 0, sizeof(float) * 4};
  if (f16out) return launch("act_quant_fp8", act_quant_fp8_kernel<T, true>, c, lim, s, A, lda, int(K), q, ldq, sa);
  return launch("act_quant_fp8", act_quant_fp8_kernel<T, false>, c, lim, s, A, lda, int(K), q, ldq, sa);
}

// Whether the e4m3 tensor-core path can run: refuses with the reason otherwise.
inline Status fp8_mma_ok(const char* op, const Fp8Format& f, const QDevice& dev) {
  if (dev.sm < 89)
    return q8_fail(Code::UNSUPPORTED, op,
                   "the fp8 tensor-core path (mma e4m3) needs sm_89 or newer; this device is sm_" + std::to_string(dev.sm) +
                       " (use Fp8Path::dequant or automatic)",
                   "w");
  if (f.dtype != DType::fp8e4m3)
    return q8_fail(Code::UNSUPPORTED, op, "the fp8 tensor-core path takes e4m3 weights (e5m2 runs on the dequant path)", "w");
  return {};
}

}  // namespace detail

// ==== public API: activation quantization (per token, e4m3) ======================================
// Row stride (elements) of quantized activations: codes (bytes) K rounded up to 16, f16 values K
// rounded up to 8 (16-byte aligned rows either way).
inline int64_t fp8_act_ld(int64_t K, bool f16out) { return f16out ? (K + 7) & ~int64_t(7) : (K + 15) & ~int64_t(15); }
// Bytes for `rows` quantized rows in either form: [rows][K rounded up to 16] x 2 bytes, then sa.
inline size_t fp8_act_bytes(int64_t rows, int64_t K) {
  return detail::align256(size_t(rows * ((K + 15) & ~int64_t(15))) * 2) + detail::align256(size_t(rows) * 4);
}
namespace detail {
// sa in a workspace laid out as fp8_act_bytes() says (the quantized rows start at ws).
inline float* fp8_act_scales(void* ws, int64_t rows, int64_t K) {
  return reinterpret_cast<float*>(static_cast<char*>(ws) + align256(size_t(rows * ((K + 15) & ~int64_t(15))) * 2));
}
}  // namespace detail

// Quantizes rows x K activations (f32 / f16 / bf16, stride lda elements) to e4m3 per row, as the
// CPU's w8a8 does: codes (uint8) or, f16out, their exact f16 values at q[row][ldq]; sa[row].
inline Status quantize_act_fp8(DType a_dtype, const void* A, int64_t lda, int64_t rows, int64_t K, bool f16out, void* q, int64_t ldq,
                               float* sa, stream_t s = stream_t(), const QDevice& dev = {}) {
  const char* op = "quantize_act_fp8";
  for (Status st : {need_int(rows, "rows", op), need_int(K, "K", op)})
    if (!st.ok) return st;
  if (lda < K || ldq < K) return detail::q8_fail(Code::SHAPE, op, "lda and ldq must be >= K", "a");
  if (rows == 0) return {};
  if (!A || !q || !sa) return detail::q8_fail(Code::INVALID_ARG, op, "null pointer", "a");
  switch (a_dtype) {
    case DType::f32: return detail::act_quant_fp8_t(static_cast<const float*>(A), lda, rows, K, f16out, q, ldq, sa, dev.limits, s);
    case DType::f16: return detail::act_quant_fp8_t(static_cast<const __half*>(A), lda, rows, K, f16out, q, ldq, sa, dev.limits, s);
    case DType::bf16:
      return detail::act_quant_fp8_t(static_cast<const __nv_bfloat16*>(A), lda, rows, K, f16out, q, ldq, sa, dev.limits, s);
    default: return bad_dtype(op, a_dtype, "a");
  }
}

// ==== public API: the two kernels from prepared activations =======================================
// w: plain fp8 weights in device memory. The output / bias / residual as in Fp8GemmArgs.
struct Fp8KernelArgs : Q8OutArgs {
  Fp8Plain w;
  int64_t M = 0;
  // mma: e4m3 codes [M][lda] (bytes) with per-row scales sa (required).
  // w8a16: a_dtype (f16 / bf16) [M][lda] (elements); sa = optional per-row factor (null = 1).
  DType a_dtype = DType::f16;
  const void* A = nullptr;
  int64_t lda = 0;
  const float* sa = nullptr;
};

namespace detail {
inline Status fp8_kernel_check(const char* op, const Fp8KernelArgs& g, bool mma, Q8Params& p) {
  for (Status st : {need_int(g.M, "M", op), need_int(g.w.N, "N", op), need_int(g.w.K, "K", op)})
    if (!st.ok) return st;
  if (Status st = fp8_check_format(op, g.w.fmt, g.w.N, g.w.K); !st.ok) return st;
  if (Status st = q8_check_out(op, g.c_dtype, g.C, g.ldc, g.w.N, g.M, g.residual, g.ldr); !st.ok) return st;
  if (!mma && g.a_dtype != DType::f16 && g.a_dtype != DType::bf16)
    return q8_fail(Code::DTYPE, op, std::string("the fp8 W8A16 kernel takes f16 or bf16 activations, not ") + dtype_name(g.a_dtype), "a");
  if (g.lda < g.w.K) return q8_fail(Code::SHAPE, op, "lda < K", "a");
  if (g.M > 0 && (!g.A || !g.w.codes || !g.w.scales || (mma && !g.sa))) return q8_fail(Code::INVALID_ARG, op, "null pointer", "a");
  p.A = static_cast<const uint8_t*>(g.A);
  p.lda = mma ? g.lda : g.lda * 2;
  p.B = g.w.codes;
  p.bscale = g.w.scales;
  p.rowf = g.sa;
  fp8_scale_params(g.w.fmt, g.w.K, p);
  q8_set_out(g, g.M, g.w.N, g.w.K, p);
  return {};
}
// Fp8KernelArgs for the one-call API: its weights and output, the given activations.
inline Fp8KernelArgs fp8_kernel_args(const Q8PlainArgs<Fp8Plain>& a, DType a_dtype, const void* A, int64_t lda, const float* sa) {
  Fp8KernelArgs g;
  static_cast<Q8OutArgs&>(g) = a;
  g.w = a.w;
  g.M = a.M;
  g.a_dtype = a_dtype;
  g.A = A;
  g.lda = lda;
  g.sa = sa;
  return g;
}
}  // namespace detail

// W8A8 on tensor cores from e4m3 codes (quantize_act_fp8 without f16out). sm_89+, e4m3 weights.
inline Status fp8gemm_w8a8_mma(const Fp8KernelArgs& g, stream_t s = stream_t(), const QDevice& dev = {},
                               QTileChoice tile = QTileChoice::automatic) {
  const char* op = "fp8gemm_mma";
  Q8Params p;
  if (Status st = detail::fp8_kernel_check(op, g, true, p); !st.ok) return st;
  if (Status st = detail::fp8_mma_ok(op, g.w.fmt, dev); !st.ok) return st;
  if (g.M == 0) return {};
  return detail::fp8_mma_dispatch(g.w.fmt.scale == Fp8Scale::block128, p, tile, g.M, -1, dev.limits, s, false);
}

// W8A16 (any sm_80+): f16 / bf16 activations, fp8 weights dequantized in registers.
inline Status fp8gemm_w8a16(const Fp8KernelArgs& g, stream_t s = stream_t(), const QDevice& dev = {},
                            QTileChoice tile = QTileChoice::automatic) {
  const char* op = "fp8gemm_w8a16";
  Q8Params p;
  if (Status st = detail::fp8_kernel_check(op, g, false, p); !st.ok) return st;
  if (g.M == 0) return {};
  return detail::fp8_a16_dispatch(g.a_dtype, g.w.fmt.dtype, g.w.fmt.scale == Fp8Scale::block128, p, tile, g.M, -1, dev.limits, s, false);
}

// ==== public API: the CPU's fp8gemm in one call ===================================================
// Fp8GemmArgs semantics with plain weights in device memory. workspace: fp8gemm_gpu_workspace_bytes()
// (16-byte aligned; none for w8a16). path: automatic = the e4m3 mma for w8a8 on sm_89+ with e4m3
// weights, else the W8A16 kernel; mma = refuse when that is not possible; dequant = always W8A16.
struct Fp8GemmPlainArgs : Q8PlainArgs<Fp8Plain> {
  Fp8Act act = Fp8Act::w8a16;
};
inline size_t fp8gemm_gpu_workspace_bytes(Fp8Act act, int64_t M, int64_t K) { return act == Fp8Act::w8a8 ? fp8_act_bytes(M, K) : 0; }

inline Status fp8gemm(const Fp8GemmPlainArgs& a, stream_t s = stream_t(), const QDevice& dev = {},
                      QTileChoice tile = QTileChoice::automatic, Fp8Path path = Fp8Path::automatic) {
  const char* op = "fp8gemm";
  if (a.act != Fp8Act::w8a16 && a.act != Fp8Act::w8a8) return detail::q8_fail(Code::INVALID_ARG, op, "act must be w8a16 or w8a8", "a");
  if (a.act == Fp8Act::w8a16) {
    if (path == Fp8Path::mma)
      return detail::q8_fail(Code::UNSUPPORTED, op, "the fp8 tensor-core path is W8A8 (act = w8a8)", "a");
    return fp8gemm_w8a16(detail::fp8_kernel_args(a, a.a_dtype, a.A, a.lda, nullptr), s, dev, tile);
  }
  if (Status st = detail::fp8_check_format(op, a.w.fmt, a.w.N, a.w.K); !st.ok) return st;
  bool mma = path != Fp8Path::dequant && dev.sm >= 89 && a.w.fmt.dtype == DType::fp8e4m3;
  if (path == Fp8Path::mma)
    if (Status st = detail::fp8_mma_ok(op, a.w.fmt, dev); !st.ok) return st;
  if (a.a_dtype != DType::f32 && a.a_dtype != DType::f16 && a.a_dtype != DType::bf16) return bad_dtype(op, a.a_dtype, "a");
  const int64_t K = a.w.K;
  if (a.lda < K) return detail::q8_fail(Code::SHAPE, op, "lda < K", "a");
  if (a.M > 0 && !a.A) return detail::q8_fail(Code::INVALID_ARG, op, "a must not be null", "a");
  if (a.M > 0)
    if (Status st = detail::q8_need_workspace(op, a.workspace, a.workspace_bytes, fp8gemm_gpu_workspace_bytes(a.act, a.M, K)); !st.ok)
      return st;
  const int64_t ldq = fp8_act_ld(K, !mma);
  void* ws = a.workspace;
  float* sa = detail::fp8_act_scales(ws, a.M, K);
  const Fp8KernelArgs g = detail::fp8_kernel_args(a, mma ? DType::fp8e4m3 : DType::f16, ws, ldq, sa);
  Q8Params p;
  if (Status st = detail::fp8_kernel_check(op, g, mma, p); !st.ok) return st;
  if (a.M == 0) return {};
  const bool block = a.w.fmt.scale == Fp8Scale::block128;
  auto gemm = [&](bool dry) {
    return mma ? detail::fp8_mma_dispatch(block, p, tile, a.M, -1, dev.limits, s, dry)
               : detail::fp8_a16_dispatch(DType::f16, a.w.fmt.dtype, block, p, tile, a.M, -1, dev.limits, s, dry);
  };
  if (Status st = gemm(true); !st.ok) return st;  // refuse before touching A
  if (Status st = quantize_act_fp8(a.a_dtype, a.A, a.lda, a.M, K, !mma, ws, ldq, sa, s, dev); !st.ok) return st;
  return gemm(false);
}

// ==== public API: grouped (MoE) fp8 GEMM ===========================================================
// QGroupedArgs semantics (epilogue none) with fp8 experts: w[e] = {codes [N][K], scales (fmt's
// layout)} in device memory (null allowed for experts without rows). act as in Fp8GemmArgs; w8a8
// quantizes each of the T tokens once. workspace: fp8gemm_grouped_workspace_bytes().
struct Fp8GroupedPlainArgs : Q8GroupedArgs {
  Fp8Format fmt;
  Fp8Act act = Fp8Act::w8a16;
};
inline size_t fp8gemm_grouped_workspace_bytes(Fp8Act act, int64_t T, int64_t R, int64_t K, int64_t E) {
  return (act == Fp8Act::w8a8 ? fp8_act_bytes(T, K) : 0) + size_t(grouped_plan_capacity(R, E, QTileDecode::BM)) * sizeof(QTileEntry);
}

inline Status fp8gemm_grouped(const Fp8GroupedPlainArgs& a, stream_t s = stream_t(), const QDevice& dev = {},
                              QTileChoice tile = QTileChoice::automatic, Fp8Path path = Fp8Path::automatic) {
  const char* op = "fp8gemm_grouped";
  if (Status st = detail::grouped_common_check(op, a); !st.ok) return st;
  if (Status st = detail::fp8_check_format(op, a.fmt, a.N, a.K); !st.ok) return st;
  if (a.act != Fp8Act::w8a16 && a.act != Fp8Act::w8a8) return detail::q8_fail(Code::INVALID_ARG, op, "act must be w8a16 or w8a8", "a");
  const bool w8a8 = a.act == Fp8Act::w8a8;
  if (!w8a8 && a.a_dtype == DType::f32)
    return detail::q8_fail(Code::DTYPE, op, "the fp8 W8A16 kernel takes f16 or bf16 activations, not f32", "a");
  if (path == Fp8Path::mma) {
    if (!w8a8) return detail::q8_fail(Code::UNSUPPORTED, op, "the fp8 tensor-core path is W8A8 (act = w8a8)", "a");
    if (Status st = detail::fp8_mma_ok(op, a.fmt, dev); !st.ok) return st;
  }
  if (a.R == 0) return {};
  const bool mma = w8a8 && path != Fp8Path::dequant && dev.sm >= 89 && a.fmt.dtype == DType::fp8e4m3;
  if (Status st = detail::q8_need_workspace(op, a.workspace, a.workspace_bytes, fp8gemm_grouped_workspace_bytes(a.act, a.T, a.R, a.K, a.E));
      !st.ok)
    return st;
  const bool block = a.fmt.scale == Fp8Scale::block128;
  const DType at = w8a8 ? DType::f16 : a.a_dtype;  // what the W8A16 kernel reads
  QTileChoice t;
  if (mma) t = block ? grouped_tile<OpE4M3<true>>(tile, a.R, a.E, dev.limits) : grouped_tile<OpE4M3<false>>(tile, a.R, a.E, dev.limits);
  else t = grouped_tile<OpW8A16<__half, kE4M3, false>>(tile, a.R, a.E, dev.limits);  // same smem for every W8A16 variant
  const int BM = detail::q8_tile_bm(t);
  const int64_t cap = grouped_plan_capacity(a.R, a.E, BM);
  char* ws = static_cast<char*>(a.workspace);
  const int64_t ldq = fp8_act_ld(a.K, !mma);
  float* sa = detail::fp8_act_scales(ws, a.T, a.K);
  QTileEntry* plan = reinterpret_cast<QTileEntry*>(ws + (w8a8 ? fp8_act_bytes(a.T, a.K) : 0));
  Q8Params p;
  p.A = w8a8 ? reinterpret_cast<const uint8_t*>(ws) : static_cast<const uint8_t*>(a.A);
  p.lda = w8a8 ? (mma ? ldq : ldq * 2) : a.lda * 2;
  p.rowf = w8a8 ? sa : nullptr;
  detail::fp8_scale_params(a.fmt, a.K, p);
  detail::q8_set_grouped(a, plan, p);
  auto gemm = [&](bool dry) {
    return mma ? detail::fp8_mma_dispatch(block, p, t, 0, cap, dev.limits, s, dry)
               : detail::fp8_a16_dispatch(at, a.fmt.dtype, block, p, t, 0, cap, dev.limits, s, dry);
  };
  if (Status st = gemm(true); !st.ok) return st;
  if (w8a8)
    if (Status st = quantize_act_fp8(a.a_dtype, a.A, a.lda, a.T, a.K, !mma, ws, ldq, sa, s, dev); !st.ok) return st;
  if (Status st = grouped_plan(a.offsets, a.E, a.R, a.rows, a.T, a.w, BM, plan, cap, a.err, s, dev); !st.ok) return st;
  return gemm(false);
}

}  // namespace TY_CUDA_BUILD
}  // namespace cuda
}  // namespace ty
