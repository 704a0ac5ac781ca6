// Tachyon CUDA kernel: W4A16 GEMM, int4 weights x f16/bf16 activations on tensor cores, and its
// grouped (mixture-of-experts) variant. Semantics: tachyon/quant.h QGemmArgs / QGroupedArgs with
// activations kept in 16 bits (no activation quantization):
//   C[M,N] = A[M,K] · dequant(W)[N,K]ᵀ (+ bias[N]) (+ residual[M,N])
// where dequant is the CPU's dequantize() (native/cpu/quant.cpp):
//   int4 sym  (Q4_0 style):  w = d * q                  q in [-8, 7]
//   int4 asym (Q4_1 style):  w = d * q + m              q in [0, 15]
//   q4k       (GGUF Q4_K):   w = (d*sc) * q - dmin*m    q in [0, 15], per 32-element sub-block
// d/m are f16 or f32 (int4) or f16 with u8 sub-scales (q4k). Groups of 32, 64 or 128 along K.
// Every 4-bit format the CPU has is supported; int8 and q6k are refused (E_UNSUPPORTED).
//
// ---- How the weights are applied (and why this is bit-exact to the CPU's dequantize) ----------
// The tensor cores multiply the 4-bit CODES, not dequantized weights: a code is a small integer,
// exact in f16 and in bf16, so each mma forms sum_k a_k * q_k with exact products and f32
// accumulation. The group's scale (and min) are applied once per group, in f32 registers, to
// that partial sum:   acc += s * sum_k(a_k q_k)  [+ m * sum_k(a_k)   (asym / q4k)]
// so no weight is ever rounded to 16 bits. (Marlin-style kernels multiply f16 weights by f16
// scales: one more rounding per weight, and for bf16 an 8-bit significand.) With a one-hot
// activation row the kernel returns round(s*q) (sym) and round(round(s*q) + m) (asym, q4k:
// s = d*sc and m = -dmin*m exactly), the CPU's dequantized f32 value bit for bit; w4a16_test
// checks that for every weight of every format through the real kernel.
// The min term needs sum_k a_k per group and token: one extra mma per k16 step with an all-ones
// weight fragment (asym and q4k only).
//
// ---- Packed layout (w4a16_repack; one layout for f16 and bf16 activations) --------------------
// Channels are split into panels of 16 (the last zero-padded), K into tiles of 128 (the last
// zero-padded). Tile (panel p, k-tile kt) is tile_bytes long at byte (p * ktiles + kt) * tile_bytes,
// so each panel's K is one contiguous stream:
//   [0, 1024)    codes: 4 chunks of 256 B; chunk c holds k = 128 kt + 32 c ... + 31, i.e. the two
//                k16 steps s = 2c and 2c + 1. Inside a chunk, lane L (g = L / 4, t = L % 4) of the
//                warp owns the 8 bytes at 8 L: word w (0, 1) is its mma.m16n8k16 A fragment of
//                step 2c + w (weights are the A operand: 16 channels x 16 k, see "swap AB").
//                Word layout: nibble j (0..3) of the low half-word = fragment element 2j, nibble
//                j of the high half-word = element 2j + 1 (Marlin's interleave). Element e is
//                  channel 16 p + g + 8 ((e >> 1) & 1),   k = 16 s + 2 t + (e & 1) + 8 (e >= 4)
//                (PTX ISA "Matrix Fragments for mma.m16n8k16", A operand). Nibbles hold the
//                UNSIGNED code u: sym u = q + 8, asym / q4k u = q. Padding: u = 0 and scale 0.
//   [1024, end)  meta, channel c of the panel stored at position pos(c) = 2 (c % 8) + c / 8, so
//                a lane reads the pair (g, g + 8) with one load:
//                int4: scales [128/G groups][16] (f16 or f32, as the plain format), then for asym
//                      mins [128/G][16]; group i of the tile = group 128 kt / G + i of the row.
//                q4k:  sc u8 [4 sub-blocks][16], m u8 [4][16], d f16 [16], dmin f16 [16] (the
//                      super-block's d / dmin, repeated in both of its 128-k tiles).
//   tile_bytes = 1024 + meta: sym f16 g32 1152 (4.5 bits / weight), g128 1056 (4.125), q4k 1216.
// Dequantization (no int -> float conversion): for f16, (w & 0x000F000F) | 0x64006400 is the
// f16 pair (1024 + u0, 1024 + u1) and (w & 0x00F000F0) | 0x54005400 is (64 + u2, 64 + u3)
// (the nibble lands in the mantissa: ulp 1 at 1024, ulp 1/16 at 64); one __hsub2 of
// 1024 + 8 / 64 + 8 (sym) or 1024 / 64 gives the code exactly. w >> 8 gives the other four.
// bf16 has 7 mantissa bits, so every nibble goes to bits 0..3 (shifts of 4, 8, 12) over
// 0x4300 (128.0, ulp 1) and __hsub2 of 136 / 128. 9 (f16) or 11 (bf16) integer/half2
// instructions per 8 weights.
//
// ---- Kernel structure ("swap AB": weights are the mma A operand) ------------------------------
// mma.m16n8k16 computes a 16 x 8 tile: here 16 output channels x 8 tokens, so a decode batch of
// 1..8 tokens uses one n8 tile (half the mma count of the usual orientation, where tokens would
// fill a 16-row A tile) and one 32-bit word of codes is exactly one lane's A fragment.
//   Block: WN x WK warps. Warp (wn, wk) owns panel wn of the block (16 channels) and a 1/WK slice
//   of every 128-k tile; BM = 8 NT tokens. Tiles of codes+meta (WN x tile_bytes) and of
//   activations (BM x 128, rows padded to 272 B: conflict-free ldmatrix) are staged through
//   dynamic shared memory by cp.async.cg (16 B) in a STAGES-deep pipeline: one commit group per
//   k-tile, wait_group STAGES-2, then one __syncthreads (the gemm_f16 protocol).
//   Per k32 chunk a lane loads its 8 bytes of codes (one LDS.64), dequantizes two fragments,
//   loads the activation B fragments with one ldmatrix.x4 per n8 tile (two k16 steps) and issues
//   2 NT mma (+ 2 NT for the min term). At the end of each group (or of the warp's slice of it)
//   the f32 partial sums are scaled into the accumulators.
//   The WK warps of a panel are summed through shared memory; blocks that split K (split-K,
//   grid.z) write f32 partials to a workspace and the last block to finish a tile (atomic
//   ticket) adds them in split order (deterministic) and runs the epilogue.
//   M = 1 (GEMV): the activation tile is one row; its B fragments are read directly (lanes with
//   g = 0 hold token 0, the others zero) instead of ldmatrix over 8 rows, with 6 stages and a
//   decode-oriented split.
//   Grouped: grid.y enumerates (expert, 8 NT-row tile) pairs found on the device from offsets
//   (a warp prefix sum over the experts); A rows are gathered through rows[], C rows are the
//   assignments. Experts with no rows cost one early-exit block per grid slot at most.
//
// Launch helpers validate everything host-visible and return a Status. Device-resident routing
// (rows, offsets, w[e]) is checked on the device: nothing outside the operands is read or
// written, and the first problem is reported through an error slot (w4a16_grouped_error).
#pragma once

#include <cstring>

#include "../../cuemu/ptx.cuh"
#include "common.cuh"
#include "tachyon/quant.h"

#if defined(__CUDACC__)
#define TY_W4_HD __host__ __device__
#else
#define TY_W4_HD
#endif

namespace ty {
namespace cuda {
inline namespace TY_CUDA_BUILD {  // see common.cuh

// ================================================================================================
// Host side: packed layout, repack, unpack
// ================================================================================================

enum class W4Kind : int32_t { sym = 0, asym = 1, q4k = 2 };

constexpr int kW4TileK = 128;        // K per tile
constexpr int kW4Panel = 16;         // channels per panel
constexpr int kW4CodeBytes = 1024;   // 16 x 128 nibbles per tile

struct W4A16Layout {
  W4Kind kind = W4Kind::sym;
  int32_t group = 0;        // 32, 64 or 128 (q4k: 32, its sub-block)
  bool scale_f32 = false;   // int4 with f32 scales (and mins)
  int64_t N = 0, K = 0;
  int64_t panels = 0;       // ceil(N / 16)
  int64_t ktiles = 0;       // ceil(K / 128)
  int32_t meta_bytes = 0;   // per tile
  int32_t tile_bytes = 0;   // 1024 + meta_bytes (a multiple of 16)
  size_t total = 0;         // bytes of the packed tensor
};

// Meta position of channel c (0..15) of a panel: (g, g + 8) pairs are adjacent.
inline int w4_pos(int c) { return 2 * (c & 7) + (c >> 3); }

// The packed layout of (fmt, N, K), or a Status naming what is wrong.
inline Status w4a16_layout(const QuantFormat& f, int64_t N, int64_t K, W4A16Layout* out) {
  const char* op = "w4a16";
  W4A16Layout L;
  if (f.kind == QKind::q4k) {
    if (f.scale_dtype != DType::f16) return Status::fail(Code::DTYPE, std::string(op) + ": q4k super-block scales must be f16", "weights");
    if (f.asym || (f.group != 0 && f.group != kQSuper))
      return Status::fail(Code::INVALID_ARG, std::string(op) + ": q4k needs group 0 or 256 and no asym flag", "weights");
    if (N < 1 || K < 1) return Status::fail(Code::SHAPE, std::string(op) + ": N and K must be positive", "weights");
    if (K % kQSuper != 0)
      return Status::fail(Code::SHAPE, std::string(op) + ": q4k needs K to be a multiple of 256 (K = " + std::to_string(K) + ")", "weights");
    L.kind = W4Kind::q4k;
    L.group = 32;
    L.meta_bytes = 192;
  } else if (f.kind == QKind::int4) {
    if (f.group != 32 && f.group != 64 && f.group != 128)
      return Status::fail(Code::INVALID_ARG, std::string(op) + ": int4 needs a group of 32, 64 or 128 (got " + std::to_string(f.group) + ")",
                          "weights");
    if (f.scale_dtype != DType::f16 && f.scale_dtype != DType::f32)
      return Status::fail(Code::DTYPE, std::string(op) + ": int4 scales must be f16 or f32", "weights");
    if (N < 1 || K < 1) return Status::fail(Code::SHAPE, std::string(op) + ": N and K must be positive", "weights");
    if (K % f.group != 0)
      return Status::fail(Code::SHAPE, std::string(op) + ": K = " + std::to_string(K) + " is not a multiple of the group size " +
                                           std::to_string(f.group), "weights");
    L.kind = f.asym ? W4Kind::asym : W4Kind::sym;
    L.group = f.group;
    L.scale_f32 = f.scale_dtype == DType::f32;
    L.meta_bytes = (kW4TileK / f.group) * kW4Panel * (L.scale_f32 ? 4 : 2) * (f.asym ? 2 : 1);
  } else {
    return Status::fail(Code::UNSUPPORTED, std::string(op) + ": the W4A16 kernel takes 4-bit weights (int4, q4k); " +
                                               (f.kind == QKind::int8 ? "int8" : "q6k") + " is not supported", "weights");
  }
  if (N > 0x7fffffffLL || K > 0x7fffffffLL - kW4TileK)
    return Status::fail(Code::UNSUPPORTED, std::string(op) + ": N or K beyond the kernel's int32 range", "weights");
  L.N = N;
  L.K = K;
  L.panels = (N + kW4Panel - 1) / kW4Panel;
  L.ktiles = (K + kW4TileK - 1) / kW4TileK;
  L.tile_bytes = kW4CodeBytes + L.meta_bytes;
  L.total = size_t(L.panels) * size_t(L.ktiles) * size_t(L.tile_bytes);
  *out = L;
  return {};
}

namespace detail {
// Unsigned nibble u of plain element (n, k): sym u = q + 8 (the signed nibble ^ 8), else u = q.
inline uint32_t w4_plain_u(const QPlain& in, bool sym, int64_t n, int64_t k) {
  const uint8_t b = static_cast<const uint8_t*>(in.q)[n * (in.K / 2) + k / 2];
  const uint32_t nib = (k & 1) ? uint32_t(b >> 4) : uint32_t(b & 15);
  return sym ? nib ^ 8u : nib;
}
inline void w4_set_plain_u(const QPlain& out, bool sym, int64_t n, int64_t k, uint32_t u) {
  uint8_t& b = static_cast<uint8_t*>(out.q)[n * (out.K / 2) + k / 2];
  const uint8_t nib = uint8_t(sym ? (u ^ 8u) : u) & 15;
  b = (k & 1) ? uint8_t((b & 0x0f) | (nib << 4)) : uint8_t((b & 0xf0) | nib);
}
// Fragment element e (0..7) of lane (g, t): (channel within the panel, k within the k16 step).
inline void w4_elem(int lane, int e, int* row, int* col) {
  const int g = lane >> 2, t = lane & 3;
  *row = g + 8 * ((e >> 1) & 1);
  *col = 2 * t + (e & 1) + 8 * (e >= 4 ? 1 : 0);
}
// Bit offset of element e in its word: low half-word nibble e/2 (e even), high half-word (e odd).
inline int w4_shift(int e) { return (e & 1) * 16 + 4 * (e >> 1); }
inline Status w4_plain_ok(const QPlain& p, const W4A16Layout& L, const char* what) {
  if (!p.q || !p.scales || (L.kind != W4Kind::sym && !p.mins) || (L.kind == W4Kind::q4k && (!p.super_d || !p.super_dmin)))
    return Status::fail(Code::INVALID_ARG, std::string("w4a16: ") + what + ": a plain buffer of the format is null", "weights");
  return {};
}
}  // namespace detail

// Plain (tachyon/quant.h QPlain) -> packed. out: w4a16_layout().total bytes, 16-byte aligned
// for the kernel. Host code; deterministic; padding is zero.
inline Status w4a16_repack(const QPlain& in, void* out, size_t out_bytes) {
  W4A16Layout L;
  Status st = w4a16_layout(in.fmt, in.N, in.K, &L);
  if (!st.ok) return st;
  if ((st = detail::w4_plain_ok(in, L, "repack")).ok == false) return st;
  if (!out || out_bytes < L.total)
    return Status::fail(Code::INVALID_ARG, "w4a16_repack: the output needs " + std::to_string(L.total) + " bytes", "out");
  uint8_t* o = static_cast<uint8_t*>(out);
  std::memset(o, 0, L.total);
  const bool sym = L.kind == W4Kind::sym;
  const int64_t N = L.N, K = L.K;
  const int sb = L.scale_f32 ? 4 : 2, ng = kW4TileK / L.group;
  const int64_t nb = K / L.group;  // groups (q4k: sub-blocks) per row
  for (int64_t p = 0; p < L.panels; ++p)
    for (int64_t kt = 0; kt < L.ktiles; ++kt) {
      uint8_t* T = o + (p * L.ktiles + kt) * L.tile_bytes;
      for (int c = 0; c < 4; ++c)
        for (int lane = 0; lane < 32; ++lane)
          for (int w = 0; w < 2; ++w) {
            uint32_t word = 0;
            for (int e = 0; e < 8; ++e) {
              int row, col;
              detail::w4_elem(lane, e, &row, &col);
              const int64_t n = p * kW4Panel + row, k = kt * kW4TileK + 16 * (2 * c + w) + col;
              if (n < N && k < K) word |= detail::w4_plain_u(in, sym, n, k) << detail::w4_shift(e);
            }
            for (int b = 0; b < 4; ++b) T[c * 256 + lane * 8 + w * 4 + b] = uint8_t(word >> (8 * b));
          }
      uint8_t* meta = T + kW4CodeBytes;
      for (int ch = 0; ch < kW4Panel; ++ch) {
        const int64_t n = p * kW4Panel + ch;
        if (n >= N) continue;
        const int pos = w4_pos(ch);
        if (L.kind == W4Kind::q4k) {
          const int64_t nsb = K / kQSuper, sbi = kt / 2;
          for (int i = 0; i < 4; ++i) {
            const int64_t j = kt * 4 + i;  // sub-block of 32
            meta[i * 16 + pos] = static_cast<const uint8_t*>(in.scales)[n * nb + j];
            meta[64 + i * 16 + pos] = static_cast<const uint8_t*>(in.mins)[n * nb + j];
          }
          std::memcpy(meta + 128 + 2 * pos, static_cast<const uint8_t*>(in.super_d) + 2 * (n * nsb + sbi), 2);
          std::memcpy(meta + 160 + 2 * pos, static_cast<const uint8_t*>(in.super_dmin) + 2 * (n * nsb + sbi), 2);
        } else {
          for (int i = 0; i < ng; ++i) {
            const int64_t b = kt * ng + i;
            if (b >= nb) break;
            std::memcpy(meta + (i * 16 + pos) * sb, static_cast<const uint8_t*>(in.scales) + (n * nb + b) * sb, size_t(sb));
            if (L.kind == W4Kind::asym)
              std::memcpy(meta + (ng * 16 + i * 16 + pos) * sb, static_cast<const uint8_t*>(in.mins) + (n * nb + b) * sb, size_t(sb));
          }
        }
      }
    }
  return {};
}

// Packed -> plain (the inverse of w4a16_repack on the valid region; for tests and debugging).
// `out` must have the same format and shape as L and hold its q_plain_* buffers.
inline Status w4a16_unpack(const W4A16Layout& L, const void* packed, const QPlain& out) {
  W4A16Layout L2;
  Status st = w4a16_layout(out.fmt, out.N, out.K, &L2);
  if (!st.ok) return st;
  if (L2.total != L.total || L2.kind != L.kind || L2.group != L.group || L2.N != L.N || L2.K != L.K)
    return Status::fail(Code::SHAPE, "w4a16_unpack: the plain tensor does not match the layout", "out");
  if ((st = detail::w4_plain_ok(out, L, "unpack")).ok == false) return st;
  const uint8_t* o = static_cast<const uint8_t*>(packed);
  const bool sym = L.kind == W4Kind::sym;
  const int sb = L.scale_f32 ? 4 : 2, ng = kW4TileK / L.group;
  const int64_t nb = L.K / L.group;
  for (int64_t p = 0; p < L.panels; ++p)
    for (int64_t kt = 0; kt < L.ktiles; ++kt) {
      const uint8_t* T = o + (p * L.ktiles + kt) * L.tile_bytes;
      for (int c = 0; c < 4; ++c)
        for (int lane = 0; lane < 32; ++lane)
          for (int w = 0; w < 2; ++w) {
            uint32_t word = 0;
            for (int b = 0; b < 4; ++b) word |= uint32_t(T[c * 256 + lane * 8 + w * 4 + b]) << (8 * b);
            for (int e = 0; e < 8; ++e) {
              int row, col;
              detail::w4_elem(lane, e, &row, &col);
              const int64_t n = p * kW4Panel + row, k = kt * kW4TileK + 16 * (2 * c + w) + col;
              if (n < L.N && k < L.K) detail::w4_set_plain_u(out, sym, n, k, (word >> detail::w4_shift(e)) & 15u);
            }
          }
      const uint8_t* meta = T + kW4CodeBytes;
      for (int ch = 0; ch < kW4Panel; ++ch) {
        const int64_t n = p * kW4Panel + ch;
        if (n >= L.N) continue;
        const int pos = w4_pos(ch);
        if (L.kind == W4Kind::q4k) {
          const int64_t nsb = L.K / kQSuper, sbi = kt / 2;
          for (int i = 0; i < 4; ++i) {
            const int64_t j = kt * 4 + i;
            static_cast<uint8_t*>(out.scales)[n * nb + j] = meta[i * 16 + pos];
            static_cast<uint8_t*>(out.mins)[n * nb + j] = meta[64 + i * 16 + pos];
          }
          std::memcpy(static_cast<uint8_t*>(out.super_d) + 2 * (n * nsb + sbi), meta + 128 + 2 * pos, 2);
          std::memcpy(static_cast<uint8_t*>(out.super_dmin) + 2 * (n * nsb + sbi), meta + 160 + 2 * pos, 2);
        } else {
          for (int i = 0; i < ng; ++i) {
            const int64_t b = kt * ng + i;
            if (b >= nb) break;
            std::memcpy(static_cast<uint8_t*>(out.scales) + (n * nb + b) * sb, meta + (i * 16 + pos) * sb, size_t(sb));
            if (L.kind == W4Kind::asym)
              std::memcpy(static_cast<uint8_t*>(out.mins) + (n * nb + b) * sb, meta + (ng * 16 + i * 16 + pos) * sb, size_t(sb));
          }
        }
      }
    }
  return {};
}

// ================================================================================================
// Device side
// ================================================================================================

// Block shapes. NT: n8 token tiles (BM = 8 NT tokens; GEMV: 1 token), WN: warps along channels
// (BN = 16 WN), WK: warps splitting each 128-k tile, STAGES: cp.async pipeline depth.
template <int NT_, int WN_, int WK_, int STAGES_, bool GEMV_, int MINB_>
struct W4Tile {
  static constexpr int NT = NT_, WN = WN_, WK = WK_, STAGES = STAGES_;
  static constexpr int MINB = MINB_;  // blocks per SM the registers must allow (__launch_bounds__)
  static constexpr bool GEMV = GEMV_;
  static constexpr int BM = GEMV ? 1 : 8 * NT;
  static constexpr int BN = 16 * WN;
  static constexpr int THREADS = 32 * WN * WK;
  static constexpr int CPW = 4 / WK;        // k32 chunks per warp per tile
  static constexpr int LDA = kW4TileK + 8;  // activation row stride in shared memory (elements)
  static constexpr int A_BYTES = BM * LDA * 2;
  static constexpr int SLOT_FLOATS = WN * NT * 32 * 4;  // one block's f32 partial tile (fragment order)
  static_assert(NT >= 1 && (WK == 1 || WK == 2 || WK == 4) && STAGES >= 2 && (!GEMV || NT == 1), "bad W4A16 tile");
  static TY_W4_HD size_t stage_bytes(int tile_bytes) { return size_t(WN) * size_t(tile_bytes) + size_t(A_BYTES); }
  static size_t smem(int tile_bytes) {
    const size_t pipe = size_t(STAGES) * stage_bytes(tile_bytes);
    const size_t red = size_t(WK - 1) * SLOT_FLOATS * 4;  // k-slice reduction, reuses the stages
    return pipe > red ? pipe : red;
  }
};
// Shared memory with the largest meta (int4 asym f32 g32, 1536-byte tiles) / the usual one
// (int4 sym f16 g128, 1056 bytes): gemv 38 / 26 KiB, m8 57 / 42, m16 65 / 50, m32 82 / 67,
// m64 87 / 76, small 31 / 25. Above 48 KiB they need the opt-in (sm_80 / sm_90 227 KiB,
// sm_86 / sm_89 99 KiB); `small` always fits the 48 KiB default.
// The last parameter caps registers so that that many 256-thread blocks fit an SM (64 / 64 /
// 85 / 128 / 255 / 85 registers): memory-bound streaming wants several blocks' cp.async stages
// in flight per SM.
using W4TileGemv = W4Tile<1, 4, 2, 6, true, 4>;    // M = 1: BN 64, warps split each k-tile in two
using W4Tile8 = W4Tile<1, 8, 1, 4, false, 4>;      // M <= 8: BN 128
using W4Tile16 = W4Tile<2, 8, 1, 4, false, 3>;     // M <= 16
using W4Tile32 = W4Tile<4, 8, 1, 4, false, 2>;     // M <= 32
using W4Tile64 = W4Tile<8, 8, 1, 3, false, 1>;     // M > 32
using W4TileSmall = W4Tile<2, 4, 2, 3, false, 3>;  // fallback for small shared memory: BN 64, BM 16

enum class W4Config { automatic = 0, gemv, m8, m16, m32, m64, small };

inline const char* w4_config_name(W4Config c) {
  switch (c) {
    case W4Config::gemv: return "gemv";
    case W4Config::m8: return "m8";
    case W4Config::m16: return "m16";
    case W4Config::m32: return "m32";
    case W4Config::m64: return "m64";
    case W4Config::small: return "small";
    default: return "auto";
  }
}

// Kernel parameters (one struct, passed by value).
struct W4Params {
  const uint8_t* W = nullptr;               // plain: packed weights
  const uint8_t* const* Wexp = nullptr;     // grouped: [E] packed weights (device array)
  const void* A = nullptr;
  int64_t lda = 0;
  void* C = nullptr;
  int64_t ldc = 0;
  int c_dt = 0;                             // 0 f32, 1 f16, 2 bf16
  const float* bias = nullptr;
  int64_t ldb = 0;                          // grouped: bias stride per expert
  const void* res = nullptr;                // plain: residual, c_dt, stride ldr
  int64_t ldr = 0;
  int M = 0;                                // rows of C (plain: M, grouped: R)
  int N = 0, K = 0, ktiles = 0, panels = 0, tile_bytes = 0, scale_f32 = 0, splits = 1, n_tiles = 0;
  int group = 32, group_shift = 5;          // group size (q4k: 32) and its log2
  int q4k = 0;                              // q4k meta (with ASYM kernels)
  const int32_t* rows = nullptr;            // grouped
  const int32_t* offsets = nullptr;
  int E = 0, T = 0;
  unsigned long long* err = nullptr;        // grouped: error slot (may be null)
  float* ws_part = nullptr;                 // split-K partials
  unsigned* ws_cnt = nullptr;               // split-K tickets, one per output tile, zero between launches
};

// Grouped error slot: min over problems of (kind << 32 | index); kW4NoError when none.
constexpr unsigned long long kW4NoError = ~0ull;
enum class W4GroupedError : uint32_t { none = 0, offsets = 1, row = 2, weights = 3 };
// kind offsets: offsets[index] / offsets[index + 1] break 0 = offsets[0] <= ... <= offsets[E] = R;
// kind row: rows[index] is outside [0, T); kind weights: expert index has rows but a null or
// misaligned weight pointer (its rows of C are not written).
inline W4GroupedError w4a16_grouped_error(unsigned long long slot, int64_t* index) {
  if (slot == kW4NoError) return W4GroupedError::none;
  *index = int64_t(uint32_t(slot & 0xffffffffu));
  return W4GroupedError(uint32_t(slot >> 32));
}

template <class V>
TY_DEV V w4_bits_as(uint32_t u) {
  V v;
  memcpy(static_cast<void*>(&v), &u, 4);
  return v;
}
template <class V>
TY_DEV uint32_t w4_as_bits(V v) {
  uint32_t u;
  memcpy(&u, static_cast<const void*>(&v), 4);
  return u;
}

// Codes of one packed word -> the four A-fragment registers (exact integers in T).
template <class T, bool SYM>
TY_DEV void w4_dequant(uint32_t w, uint32_t* a);
template <>
TY_DEV void w4_dequant<__half, true>(uint32_t w, uint32_t* a) {
  const __half2 lo = w4_bits_as<__half2>(0x64086408u), hi = w4_bits_as<__half2>(0x54805480u);  // 1032, 72
  const uint32_t w8 = w >> 8;
  a[0] = w4_as_bits(__hsub2(w4_bits_as<__half2>((w & 0x000F000Fu) | 0x64006400u), lo));
  a[1] = w4_as_bits(__hsub2(w4_bits_as<__half2>((w & 0x00F000F0u) | 0x54005400u), hi));
  a[2] = w4_as_bits(__hsub2(w4_bits_as<__half2>((w8 & 0x000F000Fu) | 0x64006400u), lo));
  a[3] = w4_as_bits(__hsub2(w4_bits_as<__half2>((w8 & 0x00F000F0u) | 0x54005400u), hi));
}
template <>
TY_DEV void w4_dequant<__half, false>(uint32_t w, uint32_t* a) {
  const __half2 lo = w4_bits_as<__half2>(0x64006400u), hi = w4_bits_as<__half2>(0x54005400u);  // 1024, 64
  const uint32_t w8 = w >> 8;
  a[0] = w4_as_bits(__hsub2(w4_bits_as<__half2>((w & 0x000F000Fu) | 0x64006400u), lo));
  a[1] = w4_as_bits(__hsub2(w4_bits_as<__half2>((w & 0x00F000F0u) | 0x54005400u), hi));
  a[2] = w4_as_bits(__hsub2(w4_bits_as<__half2>((w8 & 0x000F000Fu) | 0x64006400u), lo));
  a[3] = w4_as_bits(__hsub2(w4_bits_as<__half2>((w8 & 0x00F000F0u) | 0x54005400u), hi));
}
template <bool SYM>
TY_DEV void w4_dequant_bf16(uint32_t w, uint32_t* a) {
  const __nv_bfloat162 off = w4_bits_as<__nv_bfloat162>(SYM ? 0x43084308u : 0x43004300u);  // 136 or 128
#pragma unroll
  for (int j = 0; j < 4; ++j)
    a[j] = w4_as_bits(__hsub2(w4_bits_as<__nv_bfloat162>(((w >> (4 * j)) & 0x000F000Fu) | 0x43004300u), off));
}
template <>
TY_DEV void w4_dequant<__nv_bfloat16, true>(uint32_t w, uint32_t* a) {
  w4_dequant_bf16<true>(w, a);
}
template <>
TY_DEV void w4_dequant<__nv_bfloat16, false>(uint32_t w, uint32_t* a) {
  w4_dequant_bf16<false>(w, a);
}

template <class T>
struct W4Mma;
template <>
struct W4Mma<__half> {
  static constexpr uint32_t kOnes = 0x3C003C00u;  // f16 (1, 1)
  static TY_DEV void run(float* d, const uint32_t* a, const uint32_t* b) { ptx::mma_m16n8k16_f32_f16(d, a, b, d); }
};
template <>
struct W4Mma<__nv_bfloat16> {
  static constexpr uint32_t kOnes = 0x3F803F80u;  // bf16 (1, 1)
  static TY_DEV void run(float* d, const uint32_t* a, const uint32_t* b) { ptx::mma_m16n8k16_f32_bf16(d, a, b, d); }
};

// u8 -> f32 through the exponent (exact; no I2F).
TY_DEV float w4_u8f(uint32_t x) { return __uint_as_float(0x4B000000u | x) - 8388608.0f; }
TY_DEV float w4_h2f(uint32_t bits16) {
  __half_raw r;
  r.x = uint16_t(bits16);
  return __half2float(__half(r));
}

// Scale (and min) of channels g and g + 8 for group gi of the tile (ng groups per tile). Mins
// are returned with the sign the kernel adds (q4k: -dmin*m).
template <bool ASYM>
TY_DEV void w4_meta(const uint8_t* meta, int gi, int ng, int g, bool f32, bool q4k, float* s, float* mn) {
  if (ASYM && q4k) {
    const uint32_t sc = *reinterpret_cast<const uint16_t*>(meta + gi * 16 + 2 * g);
    const uint32_t m = *reinterpret_cast<const uint16_t*>(meta + 64 + gi * 16 + 2 * g);
    const uint32_t d = *reinterpret_cast<const uint32_t*>(meta + 128 + 4 * g);
    const uint32_t dm = *reinterpret_cast<const uint32_t*>(meta + 160 + 4 * g);
    // d*sc and dmin*m are exact in f32 (11 x 6 significant bits), as on the CPU.
    s[0] = __fmul_rn(w4_h2f(d & 0xffffu), w4_u8f(sc & 0xffu));
    s[1] = __fmul_rn(w4_h2f(d >> 16), w4_u8f(sc >> 8));
    mn[0] = -__fmul_rn(w4_h2f(dm & 0xffffu), w4_u8f(m & 0xffu));
    mn[1] = -__fmul_rn(w4_h2f(dm >> 16), w4_u8f(m >> 8));
    return;
  }
  if (f32) {
    const float2 v = *reinterpret_cast<const float2*>(meta + (gi * 16 + 2 * g) * 4);
    s[0] = v.x;
    s[1] = v.y;
    if (ASYM) {
      const float2 u = *reinterpret_cast<const float2*>(meta + (ng * 16 + gi * 16 + 2 * g) * 4);
      mn[0] = u.x;
      mn[1] = u.y;
    }
  } else {
    const uint32_t v = *reinterpret_cast<const uint32_t*>(meta + (gi * 16 + 2 * g) * 2);
    s[0] = w4_h2f(v & 0xffffu);
    s[1] = w4_h2f(v >> 16);
    if (ASYM) {
      const uint32_t u = *reinterpret_cast<const uint32_t*>(meta + (ng * 16 + gi * 16 + 2 * g) * 2);
      mn[0] = w4_h2f(u & 0xffffu);
      mn[1] = w4_h2f(u >> 16);
    }
  }
}

TY_DEV float4 w4_f4(float a, float b, float c, float d) {
  float4 v;
  v.x = a;
  v.y = b;
  v.z = c;
  v.w = d;
  return v;
}
TY_DEV float4 w4_ld_cg(const float4* p) {
#if defined(__CUDA_ARCH__)
  return __ldcg(p);  // other blocks' partials: from L2, never a stale L1 line
#else
  return *p;
#endif
}
TY_DEV float w4_load_out(const void* p, int dt, size_t i) {
  if (dt == 0) return static_cast<const float*>(p)[i];
  if (dt == 1) return __half2float(static_cast<const __half*>(p)[i]);
  return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
}
TY_DEV void w4_store_out(void* p, int dt, size_t i, float v) {
  if (dt == 0)
    static_cast<float*>(p)[i] = v;
  else if (dt == 1)
    static_cast<__half*>(p)[i] = __float2half_rn(v);
  else
    static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v);
}
TY_DEV void w4_flag(unsigned long long* err, W4GroupedError kind, uint32_t index) {
  if (err) atomicMin(err, (static_cast<unsigned long long>(kind) << 32) | index);
}

// Grouped: warp 0 finds which (expert, row tile) grid row `mt` is. Expert e's segment
// [offsets[e], offsets[e+1]) is clamped into [0, R) (invalid offsets are flagged, never followed
// out of bounds); its tiles are numbered after those of experts 0..e-1 (warp prefix sum).
// info = {expert or -1, first assignment, rows}.
template <int BM>
TY_DEV void w4_find_tile(const W4Params& p, int mt, int lane, int* info) {
  int base = 0, e_found = -1, first = 0, nrows = 0;
  for (int e0 = 0; e0 < p.E; e0 += 32) {
    const int e = e0 + lane;
    int lo = 0, hi = 0;
    if (e < p.E) {
      const int a = p.offsets[e], b = p.offsets[e + 1];
      lo = a < 0 ? 0 : (a > p.M ? p.M : a);
      hi = b < lo ? lo : (b > p.M ? p.M : b);
      const bool bad = b < a || a < 0 || b > p.M || (e == 0 && a != 0) || (e == p.E - 1 && b != p.M);
      if (bad) w4_flag(p.err, W4GroupedError::offsets, uint32_t(e));
    }
    const int tiles = (hi - lo + BM - 1) / BM;
    int incl = tiles;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int v = __shfl_up_sync(0xffffffffu, incl, o);
      if (lane >= o) incl += v;
    }
    const int start = base + incl - tiles;
    if (tiles > 0 && mt >= start && mt < start + tiles) {  // exactly one lane of one chunk
      e_found = e;
      first = lo + (mt - start) * BM;
      nrows = hi - first < BM ? hi - first : BM;
    }
    base += __shfl_sync(0xffffffffu, incl, 31);
  }
  if (e_found >= 0) {
    const uint8_t* w = p.Wexp[e_found];
    if (w == nullptr || (reinterpret_cast<uintptr_t>(w) & 15) != 0) {
      w4_flag(p.err, W4GroupedError::weights, uint32_t(e_found));
      e_found = -1;
    }
    info[0] = e_found;
    info[1] = first;
    info[2] = nrows;
  }
}

// BUG != 0 builds deliberately broken variants for the emulator's negative tests only:
// 1 = no __syncthreads between pipeline stages, 2 = no cp.async wait before computing,
// 3 = split-K: every split stores its partial into slot 0 (the split index is dropped),
// 4 = split-K: the tile's ticket is not reset for the next launch.
// ASYM: int4 asym and q4k (a min term per group; p.q4k selects the q4k meta), else int4 sym.
template <class T, class TL, bool ASYM, bool GROUPED, int BUG>
__global__ void __launch_bounds__(TL::THREADS, TL::MINB) w4a16_kernel(const W4Params p) {
  CUEMU_DYNAMIC_SHARED(uint8_t, smem);
  __shared__ int s_row[TL::BM];  // grouped: source row of A per tile row (-1: none, zero-filled)
  __shared__ int s_info[4];      // grouped: expert, first assignment, rows; [3]: split-K "I reduce"
  // k between scale applications: the group, or the warp's slice of the tile if that is shorter
  // (powers of two). The group size is a runtime value: the test is one AND per k32 chunk.
  const int span_mask = (p.group < kW4TileK / TL::WK ? p.group : kW4TileK / TL::WK) - 1;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wn = warp % TL::WN, wk = warp / TL::WN;
  const int g = lane >> 2, t = lane & 3;
  const int ntile = blockIdx.x, mtile = blockIdx.y, split = blockIdx.z;
  const int S = p.splits;
  const int kt0 = int(int64_t(split) * p.ktiles / S), kt1 = int(int64_t(split + 1) * p.ktiles / S);
  const int nk = kt1 - kt0;
  const T* A = static_cast<const T*>(p.A);
  const int tb = p.tile_bytes;
  const size_t stage_bytes = TL::stage_bytes(tb);

  const uint8_t* W = p.W;
  int m0, valid, expert = 0;
  if (GROUPED) {
    if (tid == 0) s_info[0] = -1;
    __syncthreads();
    if (warp == 0) w4_find_tile<TL::BM>(p, mtile, lane, s_info);
    __syncthreads();
    expert = s_info[0];
    if (expert < 0) return;  // block-uniform: no tile in this grid row, or the expert is unusable
    m0 = s_info[1];
    valid = s_info[2];
    W = p.Wexp[expert];
    if (tid < TL::BM) {
      int r = -1;
      if (tid < valid) {
        r = p.rows[m0 + tid];
        if (r < 0 || r >= p.T) {
          w4_flag(p.err, W4GroupedError::row, uint32_t(m0 + tid));
          r = -1;  // computed from a zero activation row; nothing outside A is read
        }
      }
      s_row[tid] = r;
    }
    __syncthreads();
  } else {
    m0 = mtile * TL::BM;
    valid = p.M - m0 < TL::BM ? p.M - m0 : TL::BM;
  }

  // Activation rows no copy writes (tokens >= valid) are zeroed once, in every stage.
  if (!TL::GEMV && valid < TL::BM) {
    constexpr int ROW16 = TL::LDA * 2 / 16;
    const int per_stage = (TL::BM - valid) * ROW16;
    for (int i = tid; i < TL::STAGES * per_stage; i += TL::THREADS) {
      const int s = i / per_stage, r = i - s * per_stage;
      uint4 z;
      z.x = z.y = z.z = z.w = 0u;
      *reinterpret_cast<uint4*>(smem + s * stage_bytes + TL::WN * tb + (valid * ROW16 + r) * 16) = z;
    }
  }

  // One stage: WN tiles of codes + meta, and the activation tile (rows < valid, k < K).
  // Thread tid copies the 16-byte chunks tid, tid + THREADS, ... of the WN tiles: (panel wp,
  // chunk c16) advances by (dw, dc) per step with a carry, so the runtime division by the tile
  // size happens once per kernel, not per copy.
  const int tb16 = tb >> 4, dw = TL::THREADS / tb16, dc = TL::THREADS - dw * tb16;
  const int wp0 = tid / tb16, c0 = tid - wp0 * tb16;
  auto load_stage = [&](int stage, int kt) {
    uint8_t* st = smem + stage * stage_bytes;
    for (int wp = wp0, c16 = c0; wp < TL::WN;) {
      const int panel = ntile * TL::WN + wp;
      const bool ok = panel < p.panels;
      const uint8_t* src = ok ? W + (int64_t(panel) * p.ktiles + kt) * tb + c16 * 16 : W;
      ptx::cp_async_cg(st + wp * tb + c16 * 16, src, ok ? 16 : 0);
      wp += dw;
      c16 += dc;
      if (c16 >= tb16) {
        c16 -= tb16;
        ++wp;
      }
    }
    T* sa = reinterpret_cast<T*>(st + TL::WN * tb);
    for (int c = tid; c < valid * 16; c += TL::THREADS) {
      const int r = c >> 4, kc = (c & 15) * 8, gk = kt * kW4TileK + kc;
      const int64_t row = GROUPED ? int64_t(s_row[r]) : int64_t(m0 + r);
      const bool ok = row >= 0 && gk < p.K;  // K % 32 == 0: a chunk is all in or all out
      ptx::cp_async_cg(sa + r * TL::LDA + kc, ok ? A + row * p.lda + gk : A, ok ? 16 : 0);
    }
  };

  // Prologue: k-tiles 0 .. STAGES-2 in flight; one commit group per k-tile, empty or not.
#pragma unroll
  for (int s = 0; s < TL::STAGES - 1; ++s) {
    if (s < nk) load_stage(s, kt0 + s);
    ptx::cp_async_commit();
  }

  float acc[TL::NT][4];
#pragma unroll
  for (int j = 0; j < TL::NT; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[j][e] = 0.0f;
  uint32_t ones[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) ones[i] = W4Mma<T>::kOnes;

  for (int it = 0; it < nk; ++it) {
    if (BUG != 2) ptx::cp_async_wait<TL::STAGES - 2>();  // this thread's copies of k-tile it landed
    if (BUG != 1) __syncthreads();                        // everyone's; stage it-1 is free again
    {
      const int nx = it + TL::STAGES - 1;
      if (nx < nk) load_stage(nx % TL::STAGES, kt0 + nx);
      ptx::cp_async_commit();
    }
    const uint8_t* st = smem + (it % TL::STAGES) * stage_bytes;
    const uint8_t* wt = st + wn * tb;
    const uint8_t* meta = wt + kW4CodeBytes;
    const T* sa = reinterpret_cast<const T*>(st + TL::WN * tb);

    float part[TL::NT][4], asum[TL::NT][4];
#pragma unroll
    for (int j = 0; j < TL::NT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) part[j][e] = asum[j][e] = 0.0f;

    // (Fully unrolled for small NT; for NT >= 4 one chunk at a time, which keeps ptxas from
    // hoisting every chunk's ldmatrix and running out of registers.)
#pragma unroll(TL::NT >= 4 ? 1 : TL::CPW)
    for (int cc = 0; cc < TL::CPW; ++cc) {
      const int c = wk * TL::CPW + cc;  // k32 chunk of the tile
      const uint2 wv = *reinterpret_cast<const uint2*>(wt + c * 256 + lane * 8);
      uint32_t a0[4], a1[4];  // A fragments of k16 steps 2c and 2c+1
      w4_dequant<T, !ASYM>(wv.x, a0);
      w4_dequant<T, !ASYM>(wv.y, a1);
#pragma unroll
      for (int j = 0; j < TL::NT; ++j) {
        uint32_t b[4];  // B fragments: b[0..1] step 2c, b[2..3] step 2c+1
        if (TL::GEMV) {
          // One token: b0b1 = (k = 2t, 2t+1), b2b3 = (k = 2t+8, 2t+9) of column g = 0.
          const T* r0 = sa + 32 * c + 2 * t;
#pragma unroll
          for (int q = 0; q < 4; ++q) {
            const uint32_t v = *reinterpret_cast<const uint32_t*>(r0 + 8 * q);
            b[q] = g == 0 ? v : 0u;
          }
        } else {
          // Matrix q = lane / 8 is tokens 8j..8j+7 at k = 32c + 8q: b0b1 / b2b3 of step 2c
          // (q = 0, 1) and of step 2c+1 (q = 2, 3).
          ptx::ldmatrix_x4(b, sa + (8 * j + (lane & 7)) * TL::LDA + 32 * c + 8 * (lane >> 3));
        }
        W4Mma<T>::run(part[j], a0, b);
        W4Mma<T>::run(part[j], a1, b + 2);
        if (ASYM) {
          W4Mma<T>::run(asum[j], ones, b);
          W4Mma<T>::run(asum[j], ones, b + 2);
        }
      }
      if ((((cc + 1) * 32) & span_mask) == 0) {
        // End of a group (or of this warp's slice of one): scale the partial sums into acc.
        // acc element e is channel g (e < 2) or g + 8, token 2t + (e & 1).
        const int gi = (c * 32) >> p.group_shift;
        float s[2], mn[2] = {0.0f, 0.0f};
        w4_meta<ASYM>(meta, gi, kW4TileK >> p.group_shift, g, p.scale_f32 != 0, p.q4k != 0, s, mn);
#pragma unroll
        for (int j = 0; j < TL::NT; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            if (ASYM)  // (s*P + m*S) in f32 with these roundings: the CPU's value for one-hot A
              acc[j][e] = __fadd_rn(acc[j][e], __fadd_rn(__fmul_rn(s[e >> 1], part[j][e]), __fmul_rn(mn[e >> 1], asum[j][e & 1])));
            else
              acc[j][e] = __fmaf_rn(s[e >> 1], part[j][e], acc[j][e]);
          }
#pragma unroll
        for (int j = 0; j < TL::NT; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) part[j][e] = asum[j][e] = 0.0f;  // (after: e = 2, 3 read asum[j][0, 1])
      }
    }
  }
  ptx::cp_async_wait<0>();  // the groups still open are empty; leave none behind

  // The WK warps of a panel: sum through shared memory (the pipeline's, now idle).
  if (TL::WK > 1) {
    __syncthreads();
    float4* red = reinterpret_cast<float4*>(smem);
    if (wk > 0)
#pragma unroll
      for (int j = 0; j < TL::NT; ++j)
        red[(((wk - 1) * TL::WN + wn) * TL::NT + j) * 32 + lane] = w4_f4(acc[j][0], acc[j][1], acc[j][2], acc[j][3]);
    __syncthreads();
    if (wk == 0)
      for (int w2 = 1; w2 < TL::WK; ++w2)
#pragma unroll
        for (int j = 0; j < TL::NT; ++j) {
          const float4 v = red[(((w2 - 1) * TL::WN + wn) * TL::NT + j) * 32 + lane];
          acc[j][0] += v.x;
          acc[j][1] += v.y;
          acc[j][2] += v.z;
          acc[j][3] += v.w;
        }
  }

  // Split-K: every block stores its partial tile; the last one to arrive adds all S of them in
  // split order (so the result does not depend on which block is last) and writes C.
  if (S > 1) {
    const int tile = mtile * p.n_tiles + ntile;
    float4* slots = reinterpret_cast<float4*>(p.ws_part) + size_t(tile) * S * (TL::SLOT_FLOATS / 4);
    // (A fragment whose two tokens are both past the tile's rows is neither written nor read.)
    if (wk == 0)
#pragma unroll
      for (int j = 0; j < TL::NT; ++j)
        if (8 * j + 2 * t < valid)
          slots[size_t(BUG == 3 ? 0 : split) * (TL::SLOT_FLOATS / 4) + (wn * TL::NT + j) * 32 + lane] = w4_f4(acc[j][0], acc[j][1], acc[j][2], acc[j][3]);
    __threadfence();  // release: the partial is visible device-wide before the ticket
    __syncthreads();
    if (tid == 0) {
      const unsigned prev = atomicAdd(p.ws_cnt + tile, 1u);
      s_info[3] = prev == unsigned(S - 1);
    }
    __syncthreads();
    if (!s_info[3]) return;
    __threadfence();  // acquire
    if (wk == 0)
#pragma unroll
      for (int j = 0; j < TL::NT; ++j) {
        if (8 * j + 2 * t >= valid) continue;
        const int f = (wn * TL::NT + j) * 32 + lane;
        float4 v = w4_ld_cg(slots + f);
        for (int s2 = 1; s2 < S; ++s2) {
          const float4 u = w4_ld_cg(slots + size_t(s2) * (TL::SLOT_FLOATS / 4) + f);
          v.x += u.x;
          v.y += u.y;
          v.z += u.z;
          v.w += u.w;
        }
        acc[j][0] = v.x;
        acc[j][1] = v.y;
        acc[j][2] = v.z;
        acc[j][3] = v.w;
      }
    if (tid == 0 && BUG != 4) p.ws_cnt[tile] = 0u;  // ready for the next launch
  }

  // Epilogue: element e of n8 tile j is channel 16 (BN-panel) + g (+8 for e >= 2), token
  // 8j + 2t + (e & 1); bias, residual, one rounding to the output dtype.
  if (wk != 0) return;
  const float* bias = p.bias ? p.bias + (GROUPED ? int64_t(expert) * p.ldb : 0) : nullptr;
#pragma unroll
  for (int j = 0; j < TL::NT; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int r = 8 * j + 2 * t + (e & 1);
      const int ch = ntile * TL::BN + wn * 16 + g + 8 * (e >> 1);
      if (r < valid && ch < p.N) {
        const int64_t row = m0 + r;
        float v = acc[j][e];
        if (bias) v += bias[ch];
        if (!GROUPED && p.res) v += w4_load_out(p.res, p.c_dt, size_t(row * p.ldr + ch));
        w4_store_out(p.C, p.c_dt, size_t(row * p.ldc + ch), v);
      }
    }
}

// ================================================================================================
// Host launch helpers
// ================================================================================================

// Split-K workspace (device memory). The first `cnt_bytes` hold one u32 ticket per output tile
// and must be zero before the first launch that uses the buffer (cudaMemset once); the kernel
// leaves them zero after every complete launch. One workspace per stream.
// Optionally the tickets live in a buffer of their own (`tickets`, at least W4A16Plan::cnt_bytes,
// zero before its first use): then `ptr` holds only the partials, and a caller that launches
// shapes of different tile counts can zero the tickets once (with one combined buffer the
// partials of a launch with few tiles land where a larger launch keeps its tickets).
struct W4A16Workspace {
  void* ptr = nullptr;
  size_t bytes = 0;
  unsigned* tickets = nullptr;
  size_t ticket_bytes = 0;
};

struct W4A16Tuning {
  int sms = 132;                           // SMs to fill (cudaDevAttrMultiProcessorCount)
  int splits = 0;                          // 0: automatic; else forced (clamped to [1, k-tiles])
  W4Config config = W4Config::automatic;   // forced block shape (tests, tuning)
};

// What a launch will do (w4a16_plan): block shape, split-K factor, grid, memory.
struct W4A16Plan {
  W4Config config = W4Config::automatic;
  int splits = 1;
  int n_tiles = 0, m_tiles = 0;
  size_t smem = 0;
  size_t ws_bytes = 0;   // workspace needed (0 when splits == 1; partials only with W4A16Workspace::tickets)
  size_t cnt_bytes = 0;  // of which tickets
};

namespace detail {
inline int w4_dt(DType t) { return t == DType::f32 ? 0 : t == DType::f16 ? 1 : 2; }
inline bool w4_out_dtype(DType t) { return t == DType::f32 || t == DType::f16 || t == DType::bf16; }

inline int w4_bm(W4Config c) {
  switch (c) {
    case W4Config::gemv: return W4TileGemv::BM;
    case W4Config::m8: return W4Tile8::BM;
    case W4Config::m16: return W4Tile16::BM;
    case W4Config::m32: return W4Tile32::BM;
    case W4Config::small: return W4TileSmall::BM;
    default: return W4Tile64::BM;
  }
}
inline int w4_bn(W4Config c) {
  switch (c) {
    case W4Config::gemv: return W4TileGemv::BN;
    case W4Config::m8: return W4Tile8::BN;
    case W4Config::m16: return W4Tile16::BN;
    case W4Config::m32: return W4Tile32::BN;
    case W4Config::small: return W4TileSmall::BN;
    default: return W4Tile64::BN;
  }
}
inline size_t w4_smem(W4Config c, int tb) {
  switch (c) {
    case W4Config::gemv: return W4TileGemv::smem(tb);
    case W4Config::m8: return W4Tile8::smem(tb);
    case W4Config::m16: return W4Tile16::smem(tb);
    case W4Config::m32: return W4Tile32::smem(tb);
    case W4Config::small: return W4TileSmall::smem(tb);
    default: return W4Tile64::smem(tb);
  }
}
inline size_t w4_slot_floats(W4Config c) {
  switch (c) {
    case W4Config::gemv: return W4TileGemv::SLOT_FLOATS;
    case W4Config::m8: return W4Tile8::SLOT_FLOATS;
    case W4Config::m16: return W4Tile16::SLOT_FLOATS;
    case W4Config::m32: return W4Tile32::SLOT_FLOATS;
    case W4Config::small: return W4TileSmall::SLOT_FLOATS;
    default: return W4Tile64::SLOT_FLOATS;
  }
}

// rows: M (plain) or R (grouped); experts: 0 (plain) or E.
inline Status w4_plan(const W4A16Layout& L, int64_t rows, int64_t experts, const W4A16Workspace& ws, const DeviceLimits& lim,
                      const W4A16Tuning& tune, W4A16Plan* out) {
  const bool grouped = experts > 0;
  W4Config cfg = tune.config;
  if (cfg == W4Config::gemv && (grouped || rows != 1))
    return Status::fail(Code::INVALID_ARG, "w4a16: the GEMV block shape is for M = 1 (plain GEMM) only", "config");
  if (cfg == W4Config::automatic) {
    // Grouped: size the tile for the average rows per active expert.
    const int64_t active = experts < rows ? experts : rows;  // experts that can have rows
    const int64_t per = grouped ? (rows + active - 1) / (active > 0 ? active : 1) : rows;
    cfg = (!grouped && rows == 1) ? W4Config::gemv : per <= 8 ? W4Config::m8 : per <= 16 ? W4Config::m16 : per <= 32 ? W4Config::m32 : W4Config::m64;
    // Step down to a shape that fits the device's shared memory (small always fits 48 KiB).
    while (w4_smem(cfg, L.tile_bytes) > lim.smem_optin && cfg != W4Config::small)
      cfg = cfg == W4Config::m64 ? W4Config::m32 : cfg == W4Config::m32 ? W4Config::m16 : W4Config::small;
  }
  W4A16Plan P;
  P.config = cfg;
  P.smem = w4_smem(cfg, L.tile_bytes);
  const int BM = w4_bm(cfg), BN = w4_bn(cfg);
  P.n_tiles = int((L.N + BN - 1) / BN);
  const int64_t mt = grouped ? (rows + BM - 1) / BM + (experts < rows ? experts : rows) : (rows + BM - 1) / BM;
  if (mt > 65535)
    return Status::fail(Code::UNSUPPORTED, "w4a16: " + std::to_string(rows) + " rows need " + std::to_string(mt) +
                                               " row tiles; the grid allows 65535 (split the call)", "M");
  P.m_tiles = int(mt);
  const int64_t tiles = int64_t(P.n_tiles) * P.m_tiles;
  int S;
  if (tune.splits > 0) {
    S = int(tune.splits < L.ktiles ? tune.splits : L.ktiles);
  } else {
    // Fill the GPU: ~3 blocks per SM for decode shapes (memory-bound streaming needs bytes in
    // flight, not waves), 2 otherwise; at least 2 k-tiles per split, at most 16 splits.
    const int64_t target = int64_t(tune.sms > 0 ? tune.sms : 1) * ((cfg == W4Config::gemv || cfg == W4Config::m8) ? 3 : 2);
    int64_t s = (target + tiles - 1) / tiles;
    const int64_t cap = L.ktiles / 2 > 0 ? L.ktiles / 2 : 1;
    s = s > cap ? cap : s;
    // The partials (written and read back once, mostly in L2) stay under a quarter of the
    // weight bytes, so that splitting never costs more than it hides.
    const double wbytes = double(L.total);  // grouped: per expert, a lower bound
    while (s > 1 && 2.0 * double(tiles) * double(s) * double(w4_slot_floats(cfg)) * 4.0 > 0.25 * wbytes) --s;
    S = int(s > 16 ? 16 : (s < 1 ? 1 : s));
  }
  const bool own_tickets = ws.tickets != nullptr;  // tickets in their own buffer: ptr holds partials only
  auto need = [&](int s, size_t* cnt) {
    *cnt = (size_t(tiles) * 4 + 255) & ~size_t(255);
    return s > 1 ? (own_tickets ? 0 : *cnt) + size_t(tiles) * size_t(s) * w4_slot_floats(cfg) * 4 : size_t(0);
  };
  auto fits = [&](int s) {
    size_t c = 0;
    const size_t n = need(s, &c);
    return s <= 1 || (ws.ptr && n <= ws.bytes && (!own_tickets || c <= ws.ticket_bytes));
  };
  size_t cnt = 0;
  if (!fits(S)) {
    if (tune.splits > 0 && S > 1)
      return Status::fail(Code::INVALID_ARG, "w4a16: " + std::to_string(S) + " splits need a workspace of " +
                                                 std::to_string(need(S, &cnt)) + " bytes (" + std::to_string(ws.bytes) + " given)" +
                                                 (own_tickets ? " and " + std::to_string(cnt) + " bytes of tickets" : std::string()),
                          "workspace");
    while (!fits(S)) --S;
  }
  need(S, &cnt);
  P.splits = S;
  P.ws_bytes = need(S, &cnt);
  P.cnt_bytes = S > 1 ? cnt : 0;
  *out = P;
  return {};
}

template <class T, class TL, bool GROUPED, int BUG>
inline Status w4_launch_fmt(const char* name, const W4A16Layout& L, const LaunchCfg& c, const DeviceLimits& lim, stream_t s,
                            const W4Params& p) {
  if (L.kind == W4Kind::sym) return launch(name, w4a16_kernel<T, TL, false, GROUPED, BUG>, c, lim, s, p);
  return launch(name, w4a16_kernel<T, TL, true, GROUPED, BUG>, c, lim, s, p);  // asym, q4k
}

template <class T, bool GROUPED, int BUG>
inline Status w4_launch_cfg(const W4A16Plan& P, const W4A16Layout& L, const DeviceLimits& lim, stream_t s, const W4Params& p) {
  const char* name = GROUPED ? "w4a16_grouped_kernel" : "w4a16_kernel";
  auto cfg = [&](int threads, int bm) {  // static shared: s_row[BM] + s_info[4]
    return LaunchCfg{dim3(unsigned(P.n_tiles), unsigned(P.m_tiles), unsigned(P.splits)), dim3(unsigned(threads)), P.smem,
                     size_t(bm + 4) * sizeof(int)};
  };
  if constexpr (BUG != 0) {
    // The broken variants (tests only) exist for one instantiation: f16, int4 sym, m16.
    if (!std::is_same<T, __half>::value || P.config != W4Config::m16 || L.kind != W4Kind::sym)
      return Status::fail(Code::INTERNAL, "w4a16: broken test variants exist for f16 / int4 sym / m16 only");
    return launch(name, w4a16_kernel<__half, W4Tile16, false, GROUPED, BUG>, cfg(W4Tile16::THREADS, W4Tile16::BM), lim, s, p);
  } else {
    switch (P.config) {
      case W4Config::gemv:
        if constexpr (!GROUPED)
          return w4_launch_fmt<T, W4TileGemv, GROUPED, BUG>(name, L, cfg(W4TileGemv::THREADS, W4TileGemv::BM), lim, s, p);
        else
          return Status::fail(Code::INTERNAL, "w4a16: GEMV shape for a grouped launch");
      case W4Config::m8: return w4_launch_fmt<T, W4Tile8, GROUPED, BUG>(name, L, cfg(W4Tile8::THREADS, W4Tile8::BM), lim, s, p);
      case W4Config::m16: return w4_launch_fmt<T, W4Tile16, GROUPED, BUG>(name, L, cfg(W4Tile16::THREADS, W4Tile16::BM), lim, s, p);
      case W4Config::m32: return w4_launch_fmt<T, W4Tile32, GROUPED, BUG>(name, L, cfg(W4Tile32::THREADS, W4Tile32::BM), lim, s, p);
      case W4Config::small: return w4_launch_fmt<T, W4TileSmall, GROUPED, BUG>(name, L, cfg(W4TileSmall::THREADS, W4TileSmall::BM), lim, s, p);
      default: return w4_launch_fmt<T, W4Tile64, GROUPED, BUG>(name, L, cfg(W4Tile64::THREADS, W4Tile64::BM), lim, s, p);
    }
  }
}

// The W4Params fields every W4A16 launch (one matrix or grouped) shares: activations, output,
// bias, the layout and the plan; `rows` is M (or R, the assignments of a grouped call).
template <class G>
inline W4Params w4_params_from(const G& g, const W4A16Layout& L, const W4A16Plan& P, int64_t rows) {
  W4Params p;
  p.A = g.A;
  p.lda = g.lda;
  p.C = g.C;
  p.ldc = g.ldc;
  p.c_dt = detail::w4_dt(g.c_dtype);
  p.bias = g.bias;
  p.M = int(rows);
  p.N = int(L.N);
  p.K = int(L.K);
  p.ktiles = int(L.ktiles);
  p.panels = int(L.panels);
  p.tile_bytes = L.tile_bytes;
  p.scale_f32 = L.scale_f32;
  p.group = L.group;
  p.group_shift = L.group == 32 ? 5 : L.group == 64 ? 6 : 7;
  p.q4k = L.kind == W4Kind::q4k;
  p.splits = P.splits;
  p.n_tiles = P.n_tiles;
  return p;
}
inline bool w4_overlap(const void* a, size_t an, const void* b, size_t bn) {
  const char* x = static_cast<const char*>(a);
  const char* y = static_cast<const char*>(b);
  return x < y + bn && y < x + an;
}

inline Status w4_common_checks(const char* op, const W4A16Layout& L, DType a_dtype, DType c_dtype, const void* A, int64_t lda,
                               const void* C, int64_t ldc) {
  if (a_dtype != DType::f16 && a_dtype != DType::bf16)
    return Status::fail(Code::DTYPE, std::string(op) + ": activations must be f16 or bf16 (got " + dtype_name(a_dtype) + ")", "A");
  if (!w4_out_dtype(c_dtype))
    return Status::fail(Code::DTYPE, std::string(op) + ": the output must be f32, f16 or bf16 (got " + dtype_name(c_dtype) + ")", "C");
  if (!A || !C) return Status::fail(Code::INVALID_ARG, std::string(op) + ": A and C must not be null", !A ? "A" : "C");
  if (lda < L.K) return Status::fail(Code::SHAPE, std::string(op) + ": lda (" + std::to_string(lda) + ") < K (" + std::to_string(L.K) + ")", "lda");
  if (ldc < L.N) return Status::fail(Code::SHAPE, std::string(op) + ": ldc (" + std::to_string(ldc) + ") < N (" + std::to_string(L.N) + ")", "ldc");
  if (lda % 8 != 0 || !aligned16(A))
    return Status::fail(Code::UNSUPPORTED, std::string(op) + ": A rows must be 16-byte aligned (lda a multiple of 8, aligned base) for cp.async",
                        "A");
  return {};
}
}  // namespace detail

// The plan a w4a16_gemm launch with these arguments would use (workspace size included).
inline Status w4a16_plan(const QGemmArgs& g, const W4A16Workspace& ws, const DeviceLimits& lim, const W4A16Tuning& tune, W4A16Plan* out) {
  W4A16Layout L;
  Status st = w4a16_layout(g.w.fmt, g.w.N, g.w.K, &L);
  if (!st.ok) return st;
  return detail::w4_plan(L, g.M, 0, ws, lim, tune, out);
}

// C = A · dequant(W)ᵀ (+ bias) (+ residual). g.w.data: w4a16_repack() output (device memory).
// A: f16 / bf16 [M, K] (lda % 8 == 0, 16-byte aligned); C: f32 / f16 / bf16; bias f32[N];
// residual c_dtype [M, N] (stride ldr), may alias C exactly. g.epilogue must be none.
// ws: split-K workspace (see W4A16Workspace); with too little (or none) the split is reduced.
template <int BUG = 0>
inline Status w4a16_gemm(const QGemmArgs& g, const W4A16Workspace& ws = {}, stream_t s = stream_t(), const DeviceLimits& lim = {},
                         const W4A16Tuning& tune = {}) {
  const char* op = "w4a16_gemm";
  W4A16Layout L;
  Status st = w4a16_layout(g.w.fmt, g.w.N, g.w.K, &L);
  if (!st.ok) return st;
  if (g.epilogue != QEpilogue::none)
    return Status::fail(Code::UNSUPPORTED, std::string(op) + ": fused epilogues (swiglu) are not implemented in the CUDA W4A16 kernel", "epilogue");
  if ((st = need_int(g.M, "M", op)).ok == false) return st;
  if (g.M == 0) return {};
  if (!g.w.data || !aligned16(g.w.data))
    return Status::fail(Code::INVALID_ARG, std::string(op) + ": packed weights must be non-null and 16-byte aligned", "w");
  if ((st = detail::w4_common_checks(op, L, g.a_dtype, g.c_dtype, g.A, g.lda, g.C, g.ldc)).ok == false) return st;
  const size_t cb = dtype_bytes(g.c_dtype, 1);
  W4A16Plan P;  // (first: it refuses grids no GPU runs, before any size arithmetic below)
  if ((st = detail::w4_plan(L, g.M, 0, ws, lim, tune, &P)).ok == false) return st;
  if (g.residual) {
    if (g.ldr < L.N) return Status::fail(Code::SHAPE, std::string(op) + ": ldr < N", "ldr");
    const bool same = g.residual == g.C && g.ldr == g.ldc;
    if (!same && detail::w4_overlap(g.residual, size_t((g.M - 1) * g.ldr + L.N) * cb, g.C, size_t((g.M - 1) * g.ldc + L.N) * cb))
      return Status::fail(Code::INVALID_ARG, std::string(op) + ": residual overlaps C without being C", "residual");
  }
  if (detail::w4_overlap(g.A, size_t((g.M - 1) * g.lda + L.K) * 2, g.C, size_t((g.M - 1) * g.ldc + L.N) * cb))
    return Status::fail(Code::INVALID_ARG, std::string(op) + ": C overlaps A", "C");
  W4Params p = detail::w4_params_from(g, L, P, g.M);
  p.W = static_cast<const uint8_t*>(g.w.data);
  p.res = g.residual;
  p.ldr = g.ldr;
  if (P.splits > 1) {
    p.ws_cnt = ws.tickets ? ws.tickets : static_cast<unsigned*>(ws.ptr);
    p.ws_part = reinterpret_cast<float*>(static_cast<char*>(ws.ptr) + (ws.tickets ? 0 : P.cnt_bytes));
  }
  if (g.a_dtype == DType::f16) return detail::w4_launch_cfg<__half, false, BUG>(P, L, lim, s, p);
  return detail::w4_launch_cfg<__nv_bfloat16, false, BUG>(P, L, lim, s, p);
}

// Host-side validation of device routing data that happens to be host-visible (or copied back):
// the checks of qgemm_grouped_check on offsets, rows and the weight pointers. The kernel checks
// the same on the device and reports through the error slot, so this is optional.
inline Status w4a16_grouped_check_routing(const QGroupedArgs& g, const int32_t* offsets, const int32_t* rows, const void* const* w) {
  const char* op = "w4a16_grouped";
  if (!offsets) return Status::fail(Code::INVALID_ARG, std::string(op) + ": offsets must not be null", "offsets");
  if (offsets[0] != 0)
    return Status::fail(Code::INVALID_ARG, std::string(op) + ": offsets[0] must be 0 but is " + std::to_string(offsets[0]), "offsets");
  for (int64_t e = 0; e < g.E; ++e) {
    if (offsets[e + 1] < offsets[e])
      return Status::fail(Code::INVALID_ARG, std::string(op) + ": offsets must be non-decreasing (offsets[" + std::to_string(e + 1) +
                                                 "] = " + std::to_string(offsets[e + 1]) + " < offsets[" + std::to_string(e) + "])", "offsets");
    if (offsets[e + 1] > offsets[e] && w && (!w[e] || !aligned16(w[e])))
      return Status::fail(Code::INVALID_ARG, std::string(op) + ": expert " + std::to_string(e) + " has rows but no (16-byte aligned) weights",
                          "w");
  }
  if (offsets[g.E] != g.R)
    return Status::fail(Code::INVALID_ARG, std::string(op) + ": offsets[E] = " + std::to_string(offsets[g.E]) + " must equal R = " +
                                               std::to_string(g.R), "offsets");
  for (int64_t i = 0; rows && i < g.R; ++i)
    if (rows[i] < 0 || rows[i] >= g.T)
      return Status::fail(Code::INVALID_ARG, std::string(op) + ": rows[" + std::to_string(i) + "] = " + std::to_string(rows[i]) +
                                                 " is outside [0, T = " + std::to_string(g.T) + ")", "rows");
  return {};
}

// Grouped (MoE) GEMM, QGroupedArgs semantics with 16-bit activations: C row i = A[rows[i]] ·
// dequant(W_e)ᵀ (+ bias_e) for the expert e whose segment [offsets[e], offsets[e+1]) holds i.
// g.w: DEVICE array of E pointers to w4a16_repack() outputs (null allowed for empty experts).
// rows / offsets: device int32 arrays, read on the device only; `err` (device u64 holding
// kW4NoError before the launch, or null) receives the first routing problem; nothing outside
// the operands is read or written whatever they hold. A row of A referenced by no assignment is
// simply not read; an expert with no rows costs nothing but a grid slot.
template <int BUG = 0>
inline Status w4a16_grouped(const QGroupedArgs& g, unsigned long long* err, const W4A16Workspace& ws = {}, stream_t s = stream_t(),
                            const DeviceLimits& lim = {}, const W4A16Tuning& tune = {}) {
  const char* op = "w4a16_grouped";
  W4A16Layout L;
  Status st = w4a16_layout(g.fmt, g.N, g.K, &L);
  if (!st.ok) return st;
  if (g.epilogue != QEpilogue::none)
    return Status::fail(Code::UNSUPPORTED, std::string(op) + ": fused epilogues (swiglu) are not implemented in the CUDA W4A16 kernel", "epilogue");
  if (g.E < 1 || g.E > 0x7fffffffLL - 1) return Status::fail(Code::SHAPE, std::string(op) + ": E must be positive", "E");
  if (g.T < 1 || g.T > 0x7fffffffLL) return Status::fail(Code::SHAPE, std::string(op) + ": T must be in [1, 2^31)", "T");
  if (g.R < 0 || g.R > 0x7fffffffLL) return Status::fail(Code::SHAPE, std::string(op) + ": R must be in [0, 2^31)", "R");
  if (g.R == 0) return {};
  if (!g.w || !g.rows || !g.offsets)
    return Status::fail(Code::INVALID_ARG, std::string(op) + ": w, rows and offsets must not be null", !g.w ? "w" : !g.rows ? "rows" : "offsets");
  if ((st = detail::w4_common_checks(op, L, g.a_dtype, g.c_dtype, g.A, g.lda, g.C, g.ldc)).ok == false) return st;
  if (g.bias && g.ldb < L.N)
    return Status::fail(Code::SHAPE, std::string(op) + ": ldb (" + std::to_string(g.ldb) + ") < N bias values per expert", "ldb");
  const size_t cb = dtype_bytes(g.c_dtype, 1);
  if (detail::w4_overlap(g.A, size_t((g.T - 1) * g.lda + L.K) * 2, g.C, size_t((g.R - 1) * g.ldc + L.N) * cb))
    return Status::fail(Code::INVALID_ARG, std::string(op) + ": C overlaps A", "C");
  W4A16Plan P;
  if ((st = detail::w4_plan(L, g.R, g.E, ws, lim, tune, &P)).ok == false) return st;
  W4Params p = detail::w4_params_from(g, L, P, g.R);
  p.Wexp = reinterpret_cast<const uint8_t* const*>(g.w);
  p.ldb = g.ldb;
  p.rows = g.rows;
  p.offsets = g.offsets;
  p.E = int(g.E);
  p.T = int(g.T);
  p.err = err;
  if (P.splits > 1) {
    p.ws_cnt = ws.tickets ? ws.tickets : static_cast<unsigned*>(ws.ptr);
    p.ws_part = reinterpret_cast<float*>(static_cast<char*>(ws.ptr) + (ws.tickets ? 0 : P.cnt_bytes));
  }
  if (g.a_dtype == DType::f16) return detail::w4_launch_cfg<__half, true, BUG>(P, L, lim, s, p);
  return detail::w4_launch_cfg<__nv_bfloat16, true, BUG>(P, L, lim, s, p);
}

inline Status w4a16_grouped_plan(const QGroupedArgs& g, const W4A16Workspace& ws, const DeviceLimits& lim, const W4A16Tuning& tune,
                                 W4A16Plan* out) {
  W4A16Layout L;
  Status st = w4a16_layout(g.fmt, g.N, g.K, &L);
  if (!st.ok) return st;
  return detail::w4_plan(L, g.R, g.E, ws, lim, tune, out);
}

}  // namespace TY_CUDA_BUILD
}  // namespace cuda
}  // namespace ty
