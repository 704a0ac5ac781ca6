// Tachyon CPU backend: op entry points for quantized weights (quantize, dequantize, pack,
// unpack, GGUF import, quantized matmul). Framework-free, like ops.h: each function
// validates on the caller's thread, naming the argument, then enqueues on the stream.
//
// A quantized weight travels as a u8 tensor holding the repacked bytes (tachyon/quant.h)
// plus its format and logical shape [N, K], which the caller passes with every op.
// On a device runtime (cuda, cuda-emu) the bytes are the device layout (cpu::Device, device.h):
// qpack builds it from plain parts, and qmatmul, qmatmulGrouped and moeCombine run the CUDA
// kernels after the same validation; quantize, dequantize, qunpack, ggufImport and fuseGateUp are
// CPU-only (pack on the CPU, unpack, and qpack the plain parts on the device). The
// native side trusts none of it: the format is checked, and the tensor's byte size must
// equal the packed size of (format, N, K). Any byte content is safe to compute on (the
// kernels index nothing by weight data), so a corrupted tensor gives wrong numbers, never
// an out-of-bounds access.
#pragma once
#include "ops.h"
#include "tachyon/fp8.h"
#include "tachyon/quant.h"

namespace ty::cpu {

// One of the two weight families: integer (int8 / int4 and their GGUF forms, quant.h) or
// fp8 (e4m3 / e5m2 with tensor, channel or 128x128 block scales, fp8.h). `act` selects
// how an fp8 matmul treats the activations (as they are, or quantized to e4m3).
struct WeightFormat {
  bool fp8 = false;
  QuantFormat q;
  Fp8Format f8;
  Fp8Act act = Fp8Act::w8a16;
  // Integer formats: a fused gate/up tensor (q_repack_gate_up) of two [N, K] matrices;
  // matmul with it computes silu(A·Wgᵀ) ⊙ (A·Wuᵀ).
  bool gate_up = false;
};

// Bytes of the repacked tensor; throws ty::Error naming "format" for an invalid format.
// device: the layout of the device backends (cuda, cuda-emu; cpu::Device in device.h) instead of
// the CPU's SIMD panels; formats without a device kernel (q6k, fused gate/up) throw UNSUPPORTED
// naming "format".
size_t packed_bytes(const WeightFormat& f, int64_t N, int64_t K, bool device = false);

// w: f32 [N, K] -> packed. stats (optional): u8 tensor of >= 32 bytes receiving
// {max_abs_err, rms_err, max_err_step, clamped} as four f64.
void op_quantize(const Core&, Stream&, const T& w, const WeightFormat& f, const T& packed, const T& stats);
// packed -> f32 [N, K] (the value each code represents).
void op_dequantize(const Core&, Stream&, const T& packed, const WeightFormat& f, int64_t N, int64_t K, const T& out);
// The plain layout as tensors (null where the format has no such part):
//  int8:  codes int8 [N, K]; scales [N, blocks] (scale dtype).
//  int4:  codes u8 [N, K/2] (two per byte, low nibble first); scales, and mins for
//         asymmetric, [N, blocks] (scale dtype).
//  q4k:   codes u8 [N, K/2] (unsigned 0..15); scales u8 [N, K/32] (0..63); mins u8
//         [N, K/32] (0..63); superD, superDmin f16 [N, K/256].
//  q6k:   codes int8 [N, K] (-32..31); scales int8 [N, K/16]; superD f16 [N, K/256].
//  fp8:   codes fp8e4m3/fp8e5m2 [N, K]; scales f32 [1] (tensor), [N] (channel) or
//         [ceil(N/128), ceil(K/128)] (block128).
struct PlainTensors {
  T codes, scales, mins, super_d, super_dmin;
};
void op_qpack(const Core&, Stream&, const PlainTensors& plain, const WeightFormat& f, int64_t N, int64_t K,
              const T& packed);
void op_qunpack(const Core&, Stream&, const T& packed, const WeightFormat& f, int64_t N, int64_t K,
                const PlainTensors& plain);
// GGUF / ggml blocks (u8, N rows) -> packed weights of gguf_native_format(type).
void op_gguf_import(const Core&, Stream&, int32_t ggml_type, const T& blocks, int64_t N, int64_t K, const T& packed);
// out[..., N] = a[..., K] · Wᵀ (+ bias f32[N]) (+ residual, same shape and dtype as out).
void op_qmatmul(const Core&, Stream&, const T& a, const T& packed, const WeightFormat& f, int64_t N, int64_t K,
                const T& bias, const T& residual, const T& out);

// gate, up: packed integer weights [F, K] of the same format -> out: one fused gate/up
// tensor (format.gate_up = true) for the SwiGLU epilogue.
void op_fuse_gate_up(const Core&, Stream&, const T& gate, const T& up, const WeightFormat& f, int64_t F, int64_t K,
                     const T& out);
// Grouped (MoE) matmul, see QGroupedArgs in tachyon/quant.h. experts: E packed tensors of
// format f and shape [N, K] (gate/up tensors when f.gate_up: then out is [R, N] =
// silu(gate) ⊙ up). a [T, K]; rows i32 [R]; offsets i32 [E+1]; bias f32 [E, N] (or
// [E, 2N] for gate/up) or null; out [R, N].
void op_qmatmul_grouped(const Core&, Stream&, const T& a, const std::vector<T>& experts, const WeightFormat& f,
                        int64_t N, int64_t K, const T& rows, const T& offsets, const T& bias, const T& out);
// MoE combine (the weighted un-permute after a grouped matmul): for token t and choice j,
// out[t] += weights[t*k+j] · y[slot[t*k+j]] (out is overwritten first unless accumulate, so
// out may be the residual stream). y f32/f16/bf16 [R, N]; slot i32 [T*k] (checked on the
// stream, in [0, R)); weights f32 [T*k]; out f32 [T, N].
void op_moe_combine(const Core&, Stream&, const T& y, const T& slot, const T& weights, int64_t k, bool accumulate,
                    const T& out);

}  // namespace ty::cpu
