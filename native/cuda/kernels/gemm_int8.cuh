// Tachyon CUDA kernels: W8A8 INT8 GEMM on tensor cores, the activation quantizer that feeds it,
// the grouped (MoE) tile planner, and the 8-bit GEMM skeleton that gemm_fp8.cuh reuses.
//
// Semantics (the CPU backend's, tachyon/quant.h QGemmArgs / QGroupedArgs, kind int8):
//   C[M,N] = A[M,K] · Wᵀ (+ bias[N]) (+ residual[M,N])
//   W: int8 codes q[N][K] with scales s[N][nb] (f32 or f16), nb = K / group; group 0 = one
//      scale per output channel (nb = 1), 32 / 64 / 128 = group-wise along K (GGUF Q8_0 is
//      group 32 with f16 scales). Weights are read in the PLAIN layout (QPlain: row-major
//      [N][K] codes, which is the mma's column-major B operand as is); the CPU's repacked AVX
//      panels are not used on the GPU.
//   A: f32 / f16 / bf16, quantized per row (token) and per block (the weight's group, or the
//      whole row) exactly as the CPU does it, in the same f32 operations, so codes and scales
//      are bit-identical to the CPU's:  amax = max|a| (f32), inv = 127 / amax, sa = amax / 127
//      (rounded to f16 when the weight scales are f16, as ggml's Q8_0 activations), q =
//      rne(a * inv) in [-127, 127]; amax = 0 gives inv = 0, sa = 0.
//   Per block b the int32 dot product dot_b = Σ qa·qw is exact (mma.m16n8k32.s32.s8.s8) and
//   is promoted to f32 as  acc += (sa_b * sw_b) * (float)dot_b  (the CPU's order). Per
//   channel there is one block: out = (sa * sw) * (float)dot. Then + bias + residual in f32,
//   rounded once to the output dtype (f32, f16, bf16). |dot| <= 128·127·K < 2^31 for
//   K <= 65536 (the CPU's limit, refused beyond).
//
// The skeleton (q8_gemm_kernel) is one tile loop for three operand kinds (OP):
//   OpI8<G>           int8 A and W, mma.m16n8k32.s32.s8, group promotion every G (or none);
//   OpE4M3<BLOCK>     e4m3 A and W, mma.m16n8k32.f32.e4m3 (sm_89+), promotion every 128 of K
//                     (gemm_fp8.cuh);
//   OpW8A16<T,F,BLK>  f16/bf16 A, fp8 W dequantized in registers, mma.m16n8k16 (gemm_fp8.cuh).
// Structure per thread block (tile TL = BM x BN x BK, W = 8-bit weight bytes):
//   - A [BM][BK] and W [BN][BK] tiles in dynamic shared memory, STAGES deep, filled with
//     cp.async.cg 16-byte chunks, one commit group per k-tile; before computing k-tile kt each
//     thread waits until <= STAGES-2 of its groups are in flight, then one __syncthreads
//     publishes everyone's copies and frees the stage computed at kt-1 (as gemm_f16.cuh).
//     Rows are padded by 16 bytes (8-bit A and W: 80 / 272 byte strides) so the 8 row
//     addresses of an ldmatrix fall in 8 distinct 16-byte bank groups; 16-bit A rows (W8A16)
//     are padded by 32 bytes so the 64-bit fragment loads are conflict-free per half-warp.
//   - Chunks past K or past the last row are issued with src-size < 16 (or 0): cp.async
//     zero-fills them, nothing outside the operands is read. Operands whose rows are not
//     16-byte aligned (K % 16 != 0, odd lda, misaligned base; decided per block) are loaded
//     with predicated byte loads instead (same pipeline, no copy/compute overlap).
//   - Fragments: for 8-bit A, ldmatrix.x4 on 16-byte rows gives exactly the m16n8k32 A
//     fragment (lane: row g / g+8, bytes 4t..4t+3 and 16+4t..); for W stored [n][k],
//     ldmatrix.x4 gives the B fragments (k 4t..4t+3 and 16+4t.. of column g) of two n8 tiles.
//   - Promotion: partial sums live in the mma accumulators (int32 or f32) and are folded into
//     a separate f32 accumulator at every promotion boundary (group end, 128-K block end, or
//     never), with that block's scales; the scales of int8 groups travel with the tiles: each
//     thread loads its share into registers while the tile is in flight and stores them into
//     the stage's scale area after computing (the barrier of the next iteration publishes).
//   - Grouped (MoE): a planner kernel turns the expert-sorted offsets into a tile table
//     {expert, first row, end row}; blockIdx.y indexes it, A rows are gathered through
//     rows[] with cp.async, entries past the real tiles are empty (the block exits).
// Include paths: native/include (tachyon/*.h).
#pragma once

#include "../../cuemu/ptx.cuh"
#include "common.cuh"
#include "tachyon/quant.h"

namespace ty {
namespace cuda {
inline namespace TY_CUDA_BUILD {  // see common.cuh

// The device a quantized GEMM runs on: the launch limits and the compute capability
// (major * 10 + minor, from cudaDevAttrComputeCapabilityMajor / Minor; the backend fills it).
// The default (80) never selects an sm_89+ instruction.
struct QDevice {
  DeviceLimits limits;
  int sm = 80;
};

enum class QTileChoice { automatic, decode, small, large };

template <int BM_, int BN_, int BK_, int WARPS_M_, int WARPS_N_, int STAGES_>
struct QTile {
  static constexpr int BM = BM_, BN = BN_, BK = BK_, WARPS_M = WARPS_M_, WARPS_N = WARPS_N_, STAGES = STAGES_;
  static constexpr int NT = 32 * WARPS_M * WARPS_N;
  static constexpr int WM = BM / WARPS_M, WN = BN / WARPS_N;  // one warp's sub-tile
  static constexpr int MI = WM / 16, NI = WN / 8;             // m16n8 mma tiles per warp
  static constexpr int KSTEPS = BK / 32;                      // 32-wide k steps per k-tile
  static_assert(WM % 16 == 0 && WN % 8 == 0 && BK % 32 == 0 && STAGES >= 2, "bad quantized GEMM tile");
  static_assert(128 % BN == 0, "BN must divide 128 (an fp8 block128 scale is uniform over a block's columns)");
};
// Prefill: 8 warps as 2 x 4, each 64 x 32 (4 x 4 mma tiles), 64 of K per stage, 3 stages.
using QTileLarge = QTile<128, 128, 64, 2, 4, 3>;
// Prefill for the kinds that promote (two accumulator sets per thread): 16 warps as 4 x 4, each
// 32 x 32, so that the registers stay at <= 128 per thread (one 512-thread block per SM).
using QTileLargeP = QTile<128, 128, 64, 4, 4, 3>;
// Prefill, half width: 8 warps as 4 x 2, each 32 x 32, for the promoting kinds that need more than
// the 128 registers a 512-thread block allows (the e4m3 mma: ~118 on sm_89, ~135 on sm_90; W8A16
// with block128 scales).
using QTileLargeH = QTile<128, 64, 64, 4, 2, 3>;
// Mid-size M: 4 warps as 2 x 2, each 32 x 32.
using QTileSmall = QTile<64, 64, 64, 2, 2, 3>;
// Decode (M <= 16): 4 warps side by side, each 16 x 8, 256 of K per stage, 4 stages: narrow
// blocks so that N/32 blocks stream the weights, 32 KiB of them in flight per block.
using QTileDecode = QTile<16, 32, 256, 1, 4, 4>;

// Shared-memory geometry of one stage: A [BM][LDA], W [BN][LDB], then NG groups of scales
// ([NG][BM] activation, [NG][BN] weight, f32).
template <class TL, int A_BYTES, int NG>
struct QSmem {
  static constexpr int A_ROW = TL::BK * A_BYTES;  // bytes of one A row per k-tile
  static constexpr int LDA = A_ROW + (A_BYTES == 2 ? 32 : 16);
  static constexpr int LDB = TL::BK + 16;
  static constexpr int A_STAGE = TL::BM * LDA, B_STAGE = TL::BN * LDB;
  // Scale staging, padded to a whole number of slots per thread (the padding holds zeros).
  static constexpr int SC_FLOATS = (NG * (TL::BM + TL::BN) + TL::NT - 1) / TL::NT * TL::NT;
  static constexpr int STAGE = (A_STAGE + B_STAGE + 4 * SC_FLOATS + 15) / 16 * 16;
  static constexpr size_t SMEM = size_t(TL::STAGES) * STAGE;
  static constexpr int CPR_A = A_ROW / 16, CPR_B = TL::BK / 16;  // 16-byte chunks per row
  static constexpr int IT_A = TL::BM * CPR_A / TL::NT, IT_B = TL::BN * CPR_B / TL::NT;
  static_assert((TL::BM * CPR_A) % TL::NT == 0 && (TL::BN * CPR_B) % TL::NT == 0, "loads must split evenly over the threads");
};

// ---- grouped (MoE) tile table -------------------------------------------------------------
// Expert e's weights: codes [N][K] (row stride K bytes) and scales (the format's layout).
struct QExpertW {
  const void* q = nullptr;
  const void* scales = nullptr;
};
// One block's rows: assignments [m0, m1) of expert e; e < 0: no work.
struct QTileEntry {
  int32_t e, m0, m1, pad;
};
// Error slot of the planner (like embedding.cuh's): it must hold kQGroupNoError before the
// launch; a bad table lowers it to (kind << 32 | index) with atomicMin, so the host reads the
// first problem back after a sync (grouped_error()). With any error no tile runs (C untouched).
constexpr unsigned long long kQGroupNoError = ~0ull;
enum QGroupErrorKind : unsigned { kQGroupBadOffsets = 1, kQGroupBadRow = 2, kQGroupNullWeights = 3 };
inline bool grouped_error(unsigned long long slot, unsigned* kind, int64_t* index) {
  if (slot == kQGroupNoError) return false;
  if (kind) *kind = unsigned(slot >> 32);
  if (index) *index = int64_t(slot & 0xffffffffu);
  return true;
}
inline const char* grouped_error_name(unsigned kind) {
  return kind == kQGroupBadOffsets ? "offsets are not 0 = o[0] <= o[1] <= ... <= o[E] = R"
         : kind == kQGroupBadRow   ? "a row index is outside [0, T)"
         : kind == kQGroupNullWeights ? "an expert with rows has null weights or scales"
                                      : "unknown";
}
// Upper bound of the tile count: sum_e ceil(n_e / BM) <= R / BM + E.
inline int64_t grouped_plan_capacity(int64_t R, int64_t E, int BM) { return R / BM + E + 1; }

// ---- the kernel's arguments -----------------------------------------------------------------
enum QColFactor : int { kColNone = 0, kColF32 = 1, kColF16 = 2, kColScalar = 3 };
struct Q8Params {
  const uint8_t* A = nullptr;     // activation rows, lda BYTES apart (codes, or f16 / bf16)
  int64_t lda = 0;
  const uint8_t* B = nullptr;     // weight codes [N][K], row stride K bytes
  const void* bscale = nullptr;   // weight scales (int8: [N][nb]; fp8: tensor / channel / block128)
  const float* ascale = nullptr;  // int8 groups: activation scales [A row][nb]
  int nb = 1;                     // int8: blocks per row (K / group)
  int bscale_f16 = 0;             // int8: the weight scales are f16
  const float* rowf = nullptr;    // epilogue factor per A row (per-token scale), or null
  int colf = kColNone;            // epilogue factor per column, read from bscale
  int nkb = 0;                    // fp8 block128: ceil(K / 128), the scale row length
  const int32_t* rows = nullptr;  // A row of each output row (gather), or null (identity)
  int T = 0;                      // rows of A (gathered indices are checked against it)
  const QTileEntry* plan = nullptr;  // grouped: tile table indexed by blockIdx.y
  const QExpertW* experts = nullptr;  // grouped: [E]; B and bscale come from here
  int64_t bias_ld = 0;            // grouped: bias row of expert e at bias + e * bias_ld
  void* C = nullptr;
  int64_t ldc = 0;
  int c_dtype = 0;                // 0 f32, 1 f16, 2 bf16
  const float* bias = nullptr;
  const void* residual = nullptr;  // c_dtype, row stride ldr; may alias C exactly
  int64_t ldr = 0;
  int M = 0, N = 0, K = 0;
};

inline int out_code(DType t) { return t == DType::f32 ? 0 : t == DType::f16 ? 1 : t == DType::bf16 ? 2 : -1; }

TY_DEV float q8_load_out(const void* p, int dt, size_t i) {
  if (dt == 0) return static_cast<const float*>(p)[i];
  if (dt == 1) return __half2float(static_cast<const __half*>(p)[i]);
  return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
}
TY_DEV void q8_store_out(void* p, int dt, size_t i, float v) {
  if (dt == 0) static_cast<float*>(p)[i] = v;
  else if (dt == 1) static_cast<__half*>(p)[i] = __float2half_rn(v);
  else static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v);
}

// Copies a [ROWS][ROW_BYTES] slice starting at byte kb0 of each row into dst[ROWS][LDS].
// rp[it] is the global start of the row this thread copies in iteration it (null: past the
// operand, zero-filled); kbytes = bytes per row that exist. vec: 16-byte cp.async (aligned
// rows), else predicated byte loads.
template <int ROWS, int ROW_BYTES, int LDS, int NT>
TY_DEV void q8_load_tile(uint8_t* dst, const uint8_t* const* rp, const uint8_t* base, int kb0, int kbytes, bool vec, int tid) {
  constexpr int CPR = ROW_BYTES / 16;
#pragma unroll
  for (int it = 0; it < ROWS * CPR / NT; ++it) {
    const int c = tid + it * NT;
    const int r = c / CPR, kc = (c % CPR) * 16;
    const int gk = kb0 + kc;
    const uint8_t* src = rp[it];
    int valid = src ? kbytes - gk : 0;
    valid = valid < 0 ? 0 : (valid > 16 ? 16 : valid);
    uint8_t* d = dst + r * LDS + kc;
    if (vec) {
      // src-size 0 reads nothing; `base` is only there to be a valid address.
      ptx::cp_async_cg(d, valid > 0 ? src + gk : base, valid);
    } else {
      uint32_t w[4] = {0u, 0u, 0u, 0u};
      if (valid > 0) {
        const uint8_t* s = src + gk;
#pragma unroll
        for (int b = 0; b < 16; ++b)
          if (b < valid) w[b / 4] |= uint32_t(s[b]) << (8 * (b % 4));
      }
      uint4 v;
      v.x = w[0];
      v.y = w[1];
      v.z = w[2];
      v.w = w[3];
      *reinterpret_cast<uint4*>(d) = v;
    }
  }
}

// ---- mma / fragment helpers ----------------------------------------------------------------
struct MmaS8 {
  using Acc = int32_t;
  static TY_DEV void run(int32_t* d, const uint32_t* a, const uint32_t* b) { ptx::mma_m16n8k32_s32_s8(d, a, b, d); }
};
struct MmaE4M3 {
  using Acc = float;
  static TY_DEV void run(float* d, const uint32_t* a, const uint32_t* b) { ptx::mma_m16n8k32_f32_e4m3(d, a, b, d); }
};

// B fragments of one 32-wide k step for the warp's NI n8 tiles, from W stored [n][k] bytes:
// ldmatrix matrix 0 = rows n 0-7 / bytes 0-15 (reg 0 of tile j: k 4t..4t+3 of column g),
// matrix 1 = the same rows / bytes 16-31 (reg 1), matrices 2, 3 the same for tile j + 1.
template <int NI, int LDB>
TY_DEV void q8_load_b(uint32_t (&bf)[NI][2], const uint8_t* sb, int wn, int lane, int kb) {
#pragma unroll
  for (int j = 0; j + 1 < NI; j += 2) {
    uint32_t r[4];
    ptx::ldmatrix_x4(r, sb + (wn + j * 8 + lane % 8 + 8 * (lane / 16)) * LDB + kb + 16 * ((lane / 8) % 2));
    bf[j][0] = r[0];
    bf[j][1] = r[1];
    bf[j + 1][0] = r[2];
    bf[j + 1][1] = r[3];
  }
  if (NI % 2) {  // the last tile alone: x2 (lanes 0-15 give the addresses)
    uint32_t r[2];
    ptx::ldmatrix_x2(r, sb + (wn + (NI - 1) * 8 + lane % 8) * LDB + kb + 16 * ((lane / 8) % 2));
    bf[NI - 1][0] = r[0];
    bf[NI - 1][1] = r[1];
  }
}

// One 32-wide k step with 8-bit A and W (s8 or e4m3): A 16x32 via ldmatrix.x4 — lanes 0-15
// address rows 0-15 at byte kb (matrices 0, 1 = a0-3 rows g, a4-7 rows g+8), lanes 16-31 the
// same rows at byte kb + 16 (matrices 2, 3 = a8-11, a12-15). BUG 3 swaps matrices 1 and 2.
template <class TL, int LDA, int LDB, class MMA, int BUG>
TY_DEV void q8_step8(typename MMA::Acc (&acc)[TL::MI][TL::NI][4], const uint8_t* sa, const uint8_t* sb, int wm, int wn, int lane, int kb) {
  uint32_t af[TL::MI][4], bf[TL::NI][2];
#pragma unroll
  for (int i = 0; i < TL::MI; ++i) {
    const int row = BUG == 3 ? lane % 8 + 8 * (lane / 16) : lane % 16;
    const int col = BUG == 3 ? 16 * ((lane / 8) % 2) : 16 * (lane / 16);
    ptx::ldmatrix_x4(af[i], sa + (wm + i * 16 + row) * LDA + kb + col);
  }
  q8_load_b<TL::NI, LDB>(bf, sb, wn, lane, kb);
#pragma unroll
  for (int i = 0; i < TL::MI; ++i)
#pragma unroll
    for (int j = 0; j < TL::NI; ++j) MMA::run(acc[i][j], af[i], bf[j]);
}

// How partial sums are promoted to the f32 accumulator.
enum QPromote : int {
  kPromoteNone = 0,   // never: the mma accumulator holds all of K
  kPromoteUnit = 1,   // facc += pacc every PK
  kPromoteBlock = 2,  // facc += pacc * (fp8 block128 scale of this block's columns)
  kPromoteGroup = 3,  // facc += (float)pacc * (sa[row][g] * sw[col][g]) (int8 groups)
};

// The prefill tile of an operand kind (OP::LARGE: 0 QTileLarge, 1 QTileLargeP, 2 QTileLargeH).
template <class OP>
using QTileLargeFor =
    typename std::conditional<OP::LARGE == 0, QTileLarge, typename std::conditional<OP::LARGE == 1, QTileLargeP, QTileLargeH>::type>::type;

// W8A8 int8, group G (0 = per channel).
template <int G>
struct OpI8 {
  static constexpr int A_BYTES = 1;
  using PAcc = int32_t;
  static constexpr int PK = G;
  static constexpr int KIND = G ? kPromoteGroup : kPromoteNone;
  static constexpr int LARGE = G ? 1 : 0;
  template <class TL>
  static constexpr int NG = G == 0 ? 0 : (TL::BK >= G ? TL::BK / G : 1);  // scale groups staged per k-tile
  template <class TL, int LDA, int LDB, int BUG>
  static TY_DEV void step(PAcc (&acc)[TL::MI][TL::NI][4], const uint8_t* sa, const uint8_t* sb, int wm, int wn, int lane, int kb) {
    q8_step8<TL, LDA, LDB, MmaS8, BUG>(acc, sa, sb, wm, wn, lane, kb);
  }
};

// Blocks per SM the kernel's registers are budgeted for (__launch_bounds__): 2 for the per-channel
// int8 kind on the 256-thread large tile (<= 128 registers, so two blocks fit an SM's 64K
// registers where the shared memory allows: 2 x 60 KiB on sm_80 / sm_90, not on sm_89's 100 KiB),
// 1 for the rest (the promoting kinds and W8A16 need more than 128 registers on that tile).
template <class TL, class OP>
constexpr int q8_min_blocks() {
  return std::is_same<TL, QTileLarge>::value && OP::KIND == kPromoteNone && OP::A_BYTES == 1 ? 2 : 1;
}

TY_DEV float q8_to_f32(int32_t v) { return __int2float_rn(v); }
TY_DEV float q8_to_f32(float v) { return v; }

// BUG != 0 builds deliberately broken variants for the emulator's negative tests only:
// 1 = no __syncthreads between the pipeline stages, 2 = no cp.async wait before computing,
// 3 = A fragment matrices 1 and 2 swapped (8-bit A) / A columns of the unpermuted layout
// (16-bit A), 4 = group promotion with the first group's scales of the tile.
template <class TL, class OP, int BUG>
__global__ void __launch_bounds__(TL::NT, q8_min_blocks<TL, OP>()) q8_gemm_kernel(const Q8Params p) {
  constexpr int NG = OP::template NG<TL>;
  using SM = QSmem<TL, OP::A_BYTES, NG>;
  using PAcc = typename OP::PAcc;
  constexpr int BM = TL::BM, BN = TL::BN, BK = TL::BK, NT = TL::NT, MI = TL::MI, NI = TL::NI;
  CUEMU_DYNAMIC_SHARED(uint8_t, smem);
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int wm = (warp / TL::WARPS_N) * TL::WM, wn = (warp % TL::WARPS_N) * TL::WN;
  const int n0 = blockIdx.x * BN;

  // The block's output rows [m0, m1) and its weights (grouped: from the tile table).
  int m0, m1, e = 0;
  if (p.plan) {
    const QTileEntry t = p.plan[blockIdx.y];
    if (t.e < 0) return;  // past the real tiles (uniform: the whole block leaves)
    e = t.e;
    m0 = t.m0;
    m1 = t.m1;
  } else {
    m0 = blockIdx.y * BM;
    m1 = min(m0 + BM, p.M);
  }
  const uint8_t* B = p.plan ? static_cast<const uint8_t*>(p.experts[e].q) : p.B;
  const void* bsc = p.plan ? p.experts[e].scales : p.bscale;
  const float* bias = p.bias && p.plan ? p.bias + e * p.bias_ld : p.bias;
  const int K = p.K, N = p.N, nk = (K + BK - 1) / BK;
  const int kbytes_a = K * OP::A_BYTES;
  // A row of output row m, or -1 (past the block's rows, or a gathered index outside [0, T)).
  auto src_row = [&](int m) -> int {
    if (m >= m1) return -1;
    const int s = p.rows ? p.rows[m] : m;
    return unsigned(s) < unsigned(p.T) ? s : -1;
  };
  // 16-byte cp.async needs 16-byte aligned rows (uniform per block).
  const bool a_vec = (reinterpret_cast<uintptr_t>(p.A) & 15) == 0 && p.lda % 16 == 0;
  const bool b_vec = (reinterpret_cast<uintptr_t>(B) & 15) == 0 && K % 16 == 0;

  const uint8_t* arp[SM::IT_A > 0 ? SM::IT_A : 1];
  const uint8_t* brp[SM::IT_B > 0 ? SM::IT_B : 1];
#pragma unroll
  for (int it = 0; it < SM::IT_A; ++it) {
    const int s = src_row(m0 + (tid + it * NT) / SM::CPR_A);
    arp[it] = s >= 0 ? p.A + int64_t(s) * p.lda : nullptr;
  }
#pragma unroll
  for (int it = 0; it < SM::IT_B; ++it) {
    const int n = n0 + (tid + it * NT) / SM::CPR_B;
    brp[it] = n < N ? B + int64_t(n) * K : nullptr;
  }

  // int8 groups: this thread's share of the scale staging (index q = tid + it*NT of the
  // stage's [NG][BM] activation + [NG][BN] weight scales + padding): the A row or weight row, or
  // -1 (past the rows, or padding: stores 0).
  constexpr int SCT = NG * (BM + BN), SCN = SCT > 0 ? SM::SC_FLOATS / NT : 1;
  int sidx[SCN];
  float sreg[SCN];
#pragma unroll
  for (int it = 0; it < SCN; ++it) {
    const int q = tid + it * NT;
    sidx[it] = -1;
    sreg[it] = 0.0f;
    if (q < NG * BM) sidx[it] = src_row(m0 + q % BM);
    else if (q < SCT) sidx[it] = n0 + (q - NG * BM) % BN < N ? n0 + (q - NG * BM) % BN : -1;
  }
  auto load_scales = [&](int kt) {
#pragma unroll
    for (int it = 0; it < SCN; ++it) {
      const int q = tid + it * NT;
      const bool is_a = q < NG * BM;
      const int b = (OP::PK > 0 ? kt * BK / (OP::PK > 0 ? OP::PK : 1) : 0) + (is_a ? q / BM : (q - NG * BM) / BN);
      float v = 0.0f;
      if (sidx[it] >= 0 && b < p.nb) {
        const int64_t i = int64_t(sidx[it]) * p.nb + b;
        v = is_a ? p.ascale[i]
                 : (p.bscale_f16 ? __half2float(static_cast<const __half*>(bsc)[i]) : static_cast<const float*>(bsc)[i]);
      }
      sreg[it] = v;
    }
  };
  auto store_scales = [&](int stage) {
    float* ssc = reinterpret_cast<float*>(smem + stage * SM::STAGE + SM::A_STAGE + SM::B_STAGE);
#pragma unroll
    for (int it = 0; it < SCN; ++it) ssc[tid + it * NT] = sreg[it];
  };
  auto load_tile = [&](int kt) {
    uint8_t* st = smem + (kt % TL::STAGES) * SM::STAGE;
    q8_load_tile<BM, SM::A_ROW, SM::LDA, NT>(st, arp, p.A, kt * SM::A_ROW, kbytes_a, a_vec, tid);
    q8_load_tile<BN, BK, SM::LDB, NT>(st + SM::A_STAGE, brp, B, kt * BK, K, b_vec, tid);
  };

  PAcc pacc[MI][NI][4];
  float facc[MI][NI][4];
#pragma unroll
  for (int i = 0; i < MI; ++i)
#pragma unroll
    for (int j = 0; j < NI; ++j)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        pacc[i][j][c] = PAcc(0);
        facc[i][j][c] = 0.0f;
      }
  const int g = lane >> 2, t4 = lane & 3;

  // Folds the partial sums of the block ending at k = kend into facc.
  auto promote = [&](int kt, int kend, const float* ssc) {
    if constexpr (OP::KIND == kPromoteGroup) {
      const int lg = BUG == 4 ? 0 : (kend - 1) / OP::PK - kt * BK / OP::PK;  // group within the stage
      float sa[MI][2], sw[NI][2];
#pragma unroll
      for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int h = 0; h < 2; ++h) sa[i][h] = ssc[lg * BM + wm + i * 16 + g + 8 * h];
#pragma unroll
      for (int j = 0; j < NI; ++j)
#pragma unroll
        for (int h = 0; h < 2; ++h) sw[j][h] = ssc[NG * BM + lg * BN + wn + j * 8 + 2 * t4 + h];
#pragma unroll
      for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int j = 0; j < NI; ++j)
#pragma unroll
          for (int c = 0; c < 4; ++c) {
            facc[i][j][c] += (sa[i][c >> 1] * sw[j][c & 1]) * q8_to_f32(pacc[i][j][c]);
            pacc[i][j][c] = PAcc(0);
          }
    } else if constexpr (OP::KIND == kPromoteBlock || OP::KIND == kPromoteUnit) {
      float s = 1.0f;
      if (OP::KIND == kPromoteBlock) s = static_cast<const float*>(bsc)[(n0 / 128) * p.nkb + (kend - 1) / 128];
#pragma unroll
      for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int j = 0; j < NI; ++j)
#pragma unroll
          for (int c = 0; c < 4; ++c) {
            facc[i][j][c] += q8_to_f32(pacc[i][j][c]) * s;
            pacc[i][j][c] = PAcc(0);
          }
    }
    (void)kt;
    (void)ssc;
  };

  // Prologue: k-tiles 0 .. STAGES-2 in flight; every step commits a group, empty or not, so that
  // "group kt" always means k-tile kt.
#pragma unroll
  for (int s = 0; s < TL::STAGES - 1; ++s) {
    if (s < nk) {
      load_tile(s);
      if (SCT > 0) {
        load_scales(s);
        store_scales(s);
      }
    }
    ptx::cp_async_commit();
  }

  for (int kt = 0; kt < nk; ++kt) {
    if (BUG != 2) ptx::cp_async_wait<TL::STAGES - 2>();  // this thread's copies of k-tile kt landed
    if (BUG != 1) __syncthreads();                        // ... and everyone's; stage kt-1 is free
    const int nt = kt + TL::STAGES - 1;
    if (nt < nk) {
      load_tile(nt);
      if (SCT > 0) load_scales(nt);  // into registers; stored after the compute below
    }
    ptx::cp_async_commit();

    const int stage = kt % TL::STAGES;
    const uint8_t* sa = smem + stage * SM::STAGE;
    const uint8_t* sb = sa + SM::A_STAGE;
    const float* ssc = reinterpret_cast<const float*>(sb + SM::B_STAGE);
#pragma unroll
    for (int ss = 0; ss < TL::KSTEPS; ++ss) {
      const int kend = kt * BK + (ss + 1) * 32;  // k just past this step
      if (kend - 32 >= K) break;                 // a step wholly past K (uniform)
      OP::template step<TL, SM::LDA, SM::LDB, (BUG == 3 ? 3 : 0)>(pacc, sa, sb, wm, wn, lane, ss * 32);
      if constexpr (OP::PK > 0) {
        if (kend % OP::PK == 0 || kend >= K) promote(kt, kend < K ? kend : K, ssc);
      }
    }
    if (SCT > 0 && nt < nk) store_scales(nt % TL::STAGES);
  }
  ptx::cp_async_wait<0>();  // the groups still open are empty; leave none behind

  // Epilogue. Accumulator element c of an m16n8 tile: row g (+8 for c >= 2), column 2t + (c & 1).
  float rf[MI][2];
  int orow[MI][2];
#pragma unroll
  for (int i = 0; i < MI; ++i)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = m0 + wm + i * 16 + g + 8 * h;
      const int s = src_row(r);
      orow[i][h] = r < m1 ? r : -1;
      rf[i][h] = p.rowf && s >= 0 ? p.rowf[s] : 1.0f;
    }
  float cf[NI][2];
#pragma unroll
  for (int j = 0; j < NI; ++j)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int c = n0 + wn + j * 8 + 2 * t4 + h;
      float v = 1.0f;
      if (c < N) {
        if (p.colf == kColF32) v = static_cast<const float*>(bsc)[c];
        else if (p.colf == kColF16) v = __half2float(static_cast<const __half*>(bsc)[c]);
        else if (p.colf == kColScalar) v = static_cast<const float*>(bsc)[0];
      }
      cf[j][h] = v;
    }
#pragma unroll
  for (int i = 0; i < MI; ++i)
#pragma unroll
    for (int j = 0; j < NI; ++j)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int r = orow[i][c >> 1];
        const int col = n0 + wn + j * 8 + 2 * t4 + (c & 1);
        if (r < 0 || col >= N) continue;
        float v = OP::KIND == kPromoteNone ? q8_to_f32(pacc[i][j][c]) : facc[i][j][c];
        v = (rf[i][c >> 1] * cf[j][c & 1]) * v;
        if (bias) v += bias[col];
        if (p.residual) v += q8_load_out(p.residual, p.c_dtype, size_t(r) * size_t(p.ldr) + col);
        q8_store_out(p.C, p.c_dtype, size_t(r) * size_t(p.ldc) + col, v);
      }
}

// ---- activation quantization (int8) ------------------------------------------------------------
// One 128-thread block per row. Group G > 0: warp w handles groups w, w + 4, ...; lane l holds
// the G/32 consecutive elements at l*G/32 (one warp_max per group). G = 0: the whole row, two
// passes (block max, then quantize). Codes go to q[row][ldq], scales to sc[row][nb].
template <class T, int G, bool F16S>
__global__ void __launch_bounds__(128) act_quant_i8_kernel(const T* A, int64_t lda, int K, int8_t* q, int64_t ldq, float* sc, int nb) {
  __shared__ float red[4];
  const int row = blockIdx.x, tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const T* a = A + int64_t(row) * lda;
  int8_t* qr = q + int64_t(row) * ldq;
  auto scales = [](float amax, float* inv, float* s) {
    // The CPU's f32 operations (tachyon/quant.h): inv = 127 / amax, sa = amax / 127.
    *inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    float v = amax / 127.0f;
    if (F16S) v = __half2float(__float2half_rn(v));
    *s = v;
  };
  if (G > 0) {
    constexpr int PER = G > 0 ? G / 32 : 1;
    for (int b = warp; b < nb; b += 4) {  // uniform per warp
      float v[PER], amax = 0.0f;
#pragma unroll
      for (int i = 0; i < PER; ++i) {
        v[i] = to_f32(a[b * G + lane * PER + i]);
        amax = fmaxf(amax, fabsf(v[i]));
      }
      amax = warp_max(amax);
      float inv, s;
      scales(amax, &inv, &s);
#pragma unroll
      for (int i = 0; i < PER; ++i) qr[b * G + lane * PER + i] = int8_t(__float2int_rn(__fmul_rn(v[i], inv)));
      if (lane == 0) sc[int64_t(row) * nb + b] = s;
    }
  } else {
    float amax = 0.0f;
    for (int k = tid; k < K; k += 128) amax = fmaxf(amax, fabsf(to_f32(a[k])));
    amax = block_maxmin<4>(amax, true, red);
    float inv, s;
    scales(amax, &inv, &s);
    for (int k = tid; k < K; k += 128) qr[k] = int8_t(__float2int_rn(__fmul_rn(to_f32(a[k]), inv)));
    if (tid == 0) sc[row] = s;
  }
}

// ---- grouped planner -----------------------------------------------------------------------------
// One 256-thread block: validates offsets / rows / expert pointers (any problem: error slot,
// every entry empty), then writes the tile table: expert e's rows [o_e, o_{e+1}) in tiles of
// BM, in expert order, and marks entries [total, cap) empty.
__global__ void __launch_bounds__(256) q8_group_plan_kernel(const int32_t* offsets, int E, int R, const int32_t* rows, int T,
                                                            const QExpertW* w, int BM, QTileEntry* plan, int cap,
                                                            unsigned long long* err) {
  __shared__ int wsum[8];
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  int bad = 0;
  auto flag = [&](unsigned kind, int64_t index) {
    atomicMin(err, (static_cast<unsigned long long>(kind) << 32) | static_cast<unsigned long long>(index & 0xffffffff));
    bad = 1;
  };
  for (int e = tid; e <= E; e += 256) {
    const int o = offsets[e];
    if ((e == 0 && o != 0) || (e == E && o != R) || o < 0 || o > R) flag(kQGroupBadOffsets, e);
    if (e < E) {
      const int o1 = offsets[e + 1];
      if (o1 < o) flag(kQGroupBadOffsets, e + 1);
      else if (o1 > o && (!w[e].q || !w[e].scales)) flag(kQGroupNullWeights, e);
    }
  }
  for (int i = tid; i < R; i += 256)
    if (unsigned(rows[i]) >= unsigned(T)) flag(kQGroupBadRow, i);
  if (__syncthreads_or(bad)) {
    for (int i = tid; i < cap; i += 256) plan[i] = QTileEntry{-1, 0, 0, 0};
    return;
  }
  // Each thread owns a contiguous run of experts; an exclusive scan of their tile counts gives
  // each run's first table entry.
  const int chunk = (E + 255) / 256, e0 = min(E, tid * chunk), e1 = min(E, e0 + chunk);
  int mine = 0;
  for (int e = e0; e < e1; ++e) mine += (offsets[e + 1] - offsets[e] + BM - 1) / BM;
  int incl = mine;
  for (int o = 1; o < 32; o <<= 1) {
    const int u = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += u;
  }
  if (lane == 31) wsum[warp] = incl;
  __syncthreads();
  int before = 0, total = 0;
  for (int v = 0; v < 8; ++v) {
    if (v < warp) before += wsum[v];
    total += wsum[v];
  }
  int pos = before + incl - mine;
  for (int e = e0; e < e1; ++e)
    for (int m = offsets[e]; m < offsets[e + 1]; m += BM) {
      if (pos < cap) plan[pos] = QTileEntry{e, m, min(m + BM, offsets[e + 1]), 0};
      ++pos;
    }
  for (int i = total + tid; i < cap; i += 256) plan[i] = QTileEntry{-1, 0, 0, 0};
}

// ---- host side -------------------------------------------------------------------------------------
namespace detail {

template <class TL, class OP>
constexpr size_t q8_smem() {
  return QSmem<TL, OP::A_BYTES, OP::template NG<TL>>::SMEM;
}

template <class TL, class OP, int BUG = 0>
Status q8_launch(const char* name, const Q8Params& p, unsigned grid_y, const DeviceLimits& lim, stream_t s, bool dry) {
  LaunchCfg c{dim3(unsigned((p.N + TL::BN - 1) / TL::BN), grid_y), dim3(TL::NT), q8_smem<TL, OP>(), 0};
  if (dry) return check_launch(name, c, lim);
  return launch(name, q8_gemm_kernel<TL, OP, BUG>, c, lim, s, p);
}

// The tile for `m` rows per block-row: decode (<= 16), small (<= 64), large; each falls back to
// a smaller one when the device's shared memory cannot hold it.
template <class OP>
QTileChoice q8_pick(QTileChoice t, int64_t m, const DeviceLimits& lim) {
  if (t != QTileChoice::automatic) return t;
  if (m <= 16 && q8_smem<QTileDecode, OP>() <= lim.smem_optin) return QTileChoice::decode;
  if (m <= 64 || q8_smem<QTileLargeFor<OP>, OP>() > lim.smem_optin) return QTileChoice::small;
  return QTileChoice::large;
}

// Launches (or, dry, only checks) the GEMM with the chosen tile. grouped: grid.y = plan capacity.
template <class OP, int BUG = 0>
Status q8_run(const char* name, const Q8Params& p, QTileChoice tile, int64_t m_hint, int64_t grid_rows, const DeviceLimits& lim,
              stream_t s, bool dry) {
  tile = q8_pick<OP>(tile, m_hint, lim);
  auto gy = [&](int bm) -> unsigned {
    const int64_t v = p.plan || grid_rows >= 0 ? grid_rows : (int64_t(p.M) + bm - 1) / bm;
    return v > 0xffffffffLL ? 0xffffffffu : unsigned(v);
  };
  switch (tile) {
    case QTileChoice::decode: return q8_launch<QTileDecode, OP, BUG>(name, p, gy(QTileDecode::BM), lim, s, dry);
    case QTileChoice::large: return q8_launch<QTileLargeFor<OP>, OP, BUG>(name, p, gy(QTileLarge::BM), lim, s, dry);
    default: return q8_launch<QTileSmall, OP, BUG>(name, p, gy(QTileSmall::BM), lim, s, dry);
  }
}

inline int q8_tile_bm(QTileChoice t) {
  return t == QTileChoice::decode ? QTileDecode::BM : t == QTileChoice::large ? QTileLarge::BM : QTileSmall::BM;
}

inline Status q8_fail(Code c, const char* op, const std::string& m, const char* arg) {
  return Status::fail(c, std::string(op) + ": " + m, arg);
}

// Shared output checks: dtype, ldc, residual (stride, exact alias only), bias.
inline Status q8_check_out(const char* op, DType c_dtype, const void* C, int64_t ldc, int64_t N, int64_t M, const void* residual,
                           int64_t ldr) {
  if (out_code(c_dtype) < 0) return bad_dtype(op, c_dtype, "out");
  if (!C) return q8_fail(Code::INVALID_ARG, op, "out must not be null", "out");
  if (ldc < N) return q8_fail(Code::SHAPE, op, "ldc (" + std::to_string(ldc) + ") < N (" + std::to_string(N) + ")", "out");
  if (residual) {
    if (ldr < N) return q8_fail(Code::SHAPE, op, "ldr (" + std::to_string(ldr) + ") < N", "residual");
    if (residual == C) {
      if (ldr != ldc) return q8_fail(Code::INVALID_ARG, op, "residual aliases out with a different row stride", "residual");
    } else if (M > 0) {
      const size_t es = c_dtype == DType::f32 ? 4 : 2;
      const char* r0 = static_cast<const char*>(residual);
      const char* c0 = static_cast<const char*>(C);
      const char* r1 = r0 + size_t((M - 1) * ldr + N) * es;
      const char* c1 = c0 + size_t((M - 1) * ldc + N) * es;
      if (r0 < c1 && c0 < r1) return q8_fail(Code::INVALID_ARG, op, "residual overlaps out without being out", "residual");
    }
  }
  return {};
}

inline Status q8_check_int8_format(const char* op, const QuantFormat& f, int64_t N, int64_t K) {
  if (f.kind != QKind::int8)
    return q8_fail(Code::UNSUPPORTED, op, "the CUDA W8A8 kernel takes int8 weights (kind " + std::to_string(int(f.kind)) + ")", "w");
  if (f.scale_dtype != DType::f32 && f.scale_dtype != DType::f16) return bad_dtype(op, f.scale_dtype, "w");
  if (f.asym) return q8_fail(Code::INVALID_ARG, op, "int8 weights are symmetric (asym is for int4)", "w");
  if (f.group != 0 && f.group != 32 && f.group != 64 && f.group != 128)
    return q8_fail(Code::INVALID_ARG, op, "group must be 0 (per channel), 32, 64 or 128, got " + std::to_string(f.group), "w");
  if (N < 1 || K < 1) return q8_fail(Code::SHAPE, op, "N and K must be positive", "w");
  if (f.group > 0 && K % f.group != 0)
    return q8_fail(Code::SHAPE, op, "K = " + std::to_string(K) + " is not a multiple of the group (" + std::to_string(f.group) + ")", "w");
  // |dot| <= 128 * 127 * K stays below 2^31 (the CPU's limit too).
  if (K > 65536) return q8_fail(Code::SHAPE, op, "K = " + std::to_string(K) + " exceeds 65536 (int32 accumulation)", "w");
  return {};
}

template <class T, int G>
Status act_quant_i8_launch(const T* A, int64_t lda, int64_t rows, int64_t K, bool f16s, int8_t* q, int64_t ldq, float* sc,
                           const DeviceLimits& lim, stream_t s) {
  LaunchCfg c{dim3(unsigned(rows)), dim3(128), 0, sizeof(float) * 4};
  const int nb = G > 0 ? int(K / G) : 1;
  if (f16s) return launch("act_quant_int8", act_quant_i8_kernel<T, G, true>, c, lim, s, A, lda, int(K), q, ldq, sc, nb);
  return launch("act_quant_int8", act_quant_i8_kernel<T, G, false>, c, lim, s, A, lda, int(K), q, ldq, sc, nb);
}
template <class T>
Status act_quant_i8_g(int group, const T* A, int64_t lda, int64_t rows, int64_t K, bool f16s, int8_t* q, int64_t ldq, float* sc,
                      const DeviceLimits& lim, stream_t s) {
  switch (group) {
    case 32: return act_quant_i8_launch<T, 32>(A, lda, rows, K, f16s, q, ldq, sc, lim, s);
    case 64: return act_quant_i8_launch<T, 64>(A, lda, rows, K, f16s, q, ldq, sc, lim, s);
    case 128: return act_quant_i8_launch<T, 128>(A, lda, rows, K, f16s, q, ldq, sc, lim, s);
    default: return act_quant_i8_launch<T, 0>(A, lda, rows, K, f16s, q, ldq, sc, lim, s);
  }
}

template <int BUG = 0>
Status int8_gemm_dispatch(int group, const Q8Params& p, QTileChoice tile, int64_t m_hint, int64_t grid_rows, const DeviceLimits& lim,
                          stream_t s, bool dry) {
  switch (group) {
    case 32: return q8_run<OpI8<32>, BUG>("qgemm_int8", p, tile, m_hint, grid_rows, lim, s, dry);
    case 64: return q8_run<OpI8<64>, BUG>("qgemm_int8", p, tile, m_hint, grid_rows, lim, s, dry);
    case 128: return q8_run<OpI8<128>, BUG>("qgemm_int8", p, tile, m_hint, grid_rows, lim, s, dry);
    default: return q8_run<OpI8<0>, BUG>("qgemm_int8", p, tile, m_hint, grid_rows, lim, s, dry);
  }
}

inline size_t align256(size_t v) { return (v + 255) & ~size_t(255); }

inline Status q8_need_workspace(const char* op, const void* ws, size_t bytes, size_t need) {
  if (!ws || bytes < need || !aligned16(ws))
    return q8_fail(Code::INVALID_ARG, op, "needs a 16-byte aligned workspace of " + std::to_string(need) + " bytes", "workspace");
  return {};
}

// The int8 scales in the kernel's terms: groups promote with per-block activation scales sa
// [row][nb]; per channel (group 0) sa is the epilogue's row factor and the weight scale its
// column factor.
inline void int8_scale_params(const QuantFormat& f, int64_t K, const float* sa, Q8Params& p) {
  const int G = f.group;
  p.ascale = G > 0 ? sa : nullptr;
  p.nb = G > 0 ? int(K / G) : 1;
  p.bscale_f16 = f.scale_dtype == DType::f16;
  p.rowf = G > 0 ? nullptr : sa;
  p.colf = G > 0 ? kColNone : (p.bscale_f16 ? kColF16 : kColF32);
}

}  // namespace detail

// ==== public API: activation quantization ======================================================
// Row stride (bytes) of quantized int8 activations: K rounded up to 16 (16-byte aligned rows).
inline int64_t int8_act_ld(int64_t K) { return (K + 15) & ~int64_t(15); }
// Bytes of `rows` quantized rows: codes [rows][int8_act_ld] then f32 scales [rows][nb].
inline size_t int8_act_bytes(const QuantFormat& f, int64_t rows, int64_t K) {
  const int64_t nb = f.group > 0 ? K / f.group : 1;
  return detail::align256(size_t(rows * int8_act_ld(K))) + detail::align256(size_t(rows * nb) * 4);
}

// Quantizes rows x K activations (a_dtype f32 / f16 / bf16, row stride lda elements) per row and
// per block of the weight format f (group 0 = whole row), bit-identical to the CPU backend:
// codes q[rows][ldq], f32 scales sc[rows][nb] (f16-rounded values when f.scale_dtype is f16).
inline Status quantize_act_int8(const QuantFormat& f, DType a_dtype, const void* A, int64_t lda, int64_t rows, int64_t K, int8_t* q,
                                int64_t ldq, float* sc, stream_t s = stream_t(), const QDevice& dev = {}) {
  const char* op = "quantize_act_int8";
  for (Status st : {need_int(rows, "rows", op), need_int(K, "K", op)})
    if (!st.ok) return st;
  if (Status st = detail::q8_check_int8_format(op, f, 1, K); !st.ok) return st;
  if (lda < K || ldq < K) return detail::q8_fail(Code::SHAPE, op, "lda and ldq must be >= K", "a");
  if (rows == 0) return {};
  if (!A || !q || !sc) return detail::q8_fail(Code::INVALID_ARG, op, "null pointer", "a");
  const bool f16s = f.scale_dtype == DType::f16;
  switch (a_dtype) {
    case DType::f32: return detail::act_quant_i8_g(f.group, static_cast<const float*>(A), lda, rows, K, f16s, q, ldq, sc, dev.limits, s);
    case DType::f16: return detail::act_quant_i8_g(f.group, static_cast<const __half*>(A), lda, rows, K, f16s, q, ldq, sc, dev.limits, s);
    case DType::bf16:
      return detail::act_quant_i8_g(f.group, static_cast<const __nv_bfloat16*>(A), lda, rows, K, f16s, q, ldq, sc, dev.limits, s);
    default: return bad_dtype(op, a_dtype, "a");
  }
}

// ==== public API: W8A8 int8 GEMM from quantized activations ======================================
// The output of every non-grouped 8-bit GEMM (int8 and fp8): C [M][ldc] of c_dtype (f32 / f16 /
// bf16) = the dequantized product (+ bias[N]) (+ residual).
struct Q8OutArgs {
  DType c_dtype = DType::f32;
  void* C = nullptr;
  int64_t ldc = 0;
  const float* bias = nullptr;
  const void* residual = nullptr;  // c_dtype [M][ldr]; may alias C exactly
  int64_t ldr = 0;
};

// w: int8 plain weights in device memory (codes [N][K], scales [N][nb] f32 / f16). qa / sa: the
// output of quantize_act_int8 for the same format.
struct Int8GemmArgs : Q8OutArgs {
  QPlain w;
  int64_t M = 0;
  const int8_t* qa = nullptr;
  int64_t ldq = 0;  // bytes
  const float* sa = nullptr;
};

namespace detail {
// The kernel's output and shape for an M x N x K product (M rows of A, no gather).
inline void q8_set_out(const Q8OutArgs& o, int64_t M, int64_t N, int64_t K, Q8Params& p) {
  p.T = int(M);
  p.C = o.C;
  p.ldc = o.ldc;
  p.c_dtype = out_code(o.c_dtype);
  p.bias = o.bias;
  p.residual = o.residual;
  p.ldr = o.ldr;
  p.M = int(M);
  p.N = int(N);
  p.K = int(K);
}

inline Status int8_gemm_check(const Int8GemmArgs& g, Q8Params& p) {
  const char* op = "qgemm_int8";
  for (Status st : {need_int(g.M, "M", op), need_int(g.w.N, "N", op), need_int(g.w.K, "K", op)})
    if (!st.ok) return st;
  if (Status st = q8_check_int8_format(op, g.w.fmt, g.w.N, g.w.K); !st.ok) return st;
  if (Status st = q8_check_out(op, g.c_dtype, g.C, g.ldc, g.w.N, g.M, g.residual, g.ldr); !st.ok) return st;
  if (g.ldq < g.w.K) return q8_fail(Code::SHAPE, op, "ldq < K", "a");
  if (g.M > 0 && (!g.qa || !g.sa || !g.w.q || !g.w.scales)) return q8_fail(Code::INVALID_ARG, op, "null pointer", "w");
  p.A = reinterpret_cast<const uint8_t*>(g.qa);
  p.lda = g.ldq;
  p.B = static_cast<const uint8_t*>(g.w.q);
  p.bscale = g.w.scales;
  int8_scale_params(g.w.fmt, g.w.K, g.sa, p);
  q8_set_out(g, g.M, g.w.N, g.w.K, p);
  return {};
}
}  // namespace detail

inline Status gemm_int8(const Int8GemmArgs& g, stream_t s = stream_t(), const QDevice& dev = {},
                        QTileChoice tile = QTileChoice::automatic) {
  Q8Params p;
  if (Status st = detail::int8_gemm_check(g, p); !st.ok) return st;
  if (g.M == 0) return {};
  return detail::int8_gemm_dispatch(g.w.fmt.group, p, tile, g.M, -1, dev.limits, s, false);
}

// ==== public API: the CPU's qgemm (int8) in one call ============================================
// Same semantics as ty::QGemmArgs with int8 weights, but the weights are the PLAIN layout in device
// memory. workspace: int8_act_bytes(w.fmt, M, K) bytes (16-byte aligned) for the quantized A.
// Q8PlainArgs<W>: the one-call arguments of the int8 and fp8 GEMMs (W: their plain weights).
template <class W>
struct Q8PlainArgs : Q8OutArgs {
  W w;
  DType a_dtype = DType::f32;
  int64_t M = 0;
  const void* A = nullptr;  // a_dtype [M][lda]
  int64_t lda = 0;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};
struct QGemmPlainArgs : Q8PlainArgs<QPlain> {};

inline Status qgemm_int8(const QGemmPlainArgs& a, stream_t s = stream_t(), const QDevice& dev = {},
                         QTileChoice tile = QTileChoice::automatic) {
  const char* op = "qgemm_int8";
  const int64_t K = a.w.K;
  for (Status st : {need_int(a.M, "M", op), need_int(K, "K", op)})
    if (!st.ok) return st;
  if (Status st = detail::q8_check_int8_format(op, a.w.fmt, a.w.N, K); !st.ok) return st;
  if (a.a_dtype != DType::f32 && a.a_dtype != DType::f16 && a.a_dtype != DType::bf16) return bad_dtype(op, a.a_dtype, "a");
  if (a.lda < K) return detail::q8_fail(Code::SHAPE, op, "lda (" + std::to_string(a.lda) + ") < K", "a");
  if (a.M > 0 && !a.A) return detail::q8_fail(Code::INVALID_ARG, op, "a must not be null", "a");
  if (a.M > 0)
    if (Status st = detail::q8_need_workspace(op, a.workspace, a.workspace_bytes, int8_act_bytes(a.w.fmt, a.M, K)); !st.ok) return st;
  Int8GemmArgs g;
  static_cast<Q8OutArgs&>(g) = a;
  g.w = a.w;
  g.M = a.M;
  g.ldq = int8_act_ld(K);
  g.qa = static_cast<int8_t*>(a.workspace);
  g.sa = reinterpret_cast<float*>(static_cast<char*>(a.workspace) + detail::align256(size_t(a.M * g.ldq)));
  Q8Params p;
  if (Status st = detail::int8_gemm_check(g, p); !st.ok) return st;
  if (a.M == 0) return {};
  // Check the GEMM's launch before quantizing (a refused launch must not have read A).
  if (Status st = detail::int8_gemm_dispatch(a.w.fmt.group, p, tile, a.M, -1, dev.limits, s, true); !st.ok) return st;
  if (Status st = quantize_act_int8(a.w.fmt, a.a_dtype, a.A, a.lda, a.M, K, const_cast<int8_t*>(g.qa), g.ldq,
                                    const_cast<float*>(g.sa), s, dev);
      !st.ok)
    return st;
  return detail::int8_gemm_dispatch(a.w.fmt.group, p, tile, a.M, -1, dev.limits, s, false);
}

// ==== public API: grouped (MoE) planner and int8 grouped GEMM ====================================
// Builds the tile table for tiles of BM rows (the GEMM's tile: grouped_tile_bm()) from the
// expert-sorted assignment list (tachyon/quant.h QGroupedArgs): offsets[E+1], rows[R] in [0, T),
// w[E] (device arrays). plan: grouped_plan_capacity(R, E, BM) entries; err: the error slot.
inline Status grouped_plan(const int32_t* offsets, int64_t E, int64_t R, const int32_t* rows, int64_t T, const QExpertW* w, int BM,
                           QTileEntry* plan, int64_t cap, unsigned long long* err, stream_t s = stream_t(), const QDevice& dev = {}) {
  const char* op = "grouped_plan";
  for (Status st : {need_int(E, "E", op), need_int(R, "R", op), need_int(T, "T", op), need_int(cap, "cap", op)})
    if (!st.ok) return st;
  if (!offsets || !w || !plan || !err || (R > 0 && !rows)) return detail::q8_fail(Code::INVALID_ARG, op, "null pointer", "offsets");
  if (E < 1) return detail::q8_fail(Code::SHAPE, op, "E must be positive", "offsets");
  if (cap < grouped_plan_capacity(R, E, BM)) return detail::q8_fail(Code::INVALID_ARG, op, "plan capacity too small", "plan");
  LaunchCfg c{dim3(1), dim3(256), 0, sizeof(int) * 8};
  return launch("grouped_plan", q8_group_plan_kernel, c, dev.limits, s, offsets, int(E), int(R), rows, int(T), w, BM, plan, int(cap), err);
}

// The tile (and so BM) a grouped GEMM uses for R assignments over E experts.
template <class OP>
inline QTileChoice grouped_tile(QTileChoice t, int64_t R, int64_t E, const DeviceLimits& lim) {
  return detail::q8_pick<OP>(t, (R + E - 1) / (E > 0 ? E : 1), lim);
}

// Grouped int8 GEMM (QGroupedArgs semantics, epilogue none): C[i] = A[rows[i]] · W_eᵀ (+ bias_e)
// for assignment i of expert e. Weights: w[e] = {codes [N][K] int8, scales [N][nb]} (device array;
// null allowed for experts without rows). A (T rows) is quantized once per token.
// workspace: qgemm_grouped_int8_workspace() bytes. err: kQGroupNoError before the call.
// Q8GroupedArgs: what the int8 and fp8 grouped GEMMs share (everything but the weight format).
struct Q8GroupedArgs {
  int64_t N = 0, K = 0, E = 0;
  const QExpertW* w = nullptr;
  DType a_dtype = DType::f32;
  int64_t T = 0;
  const void* A = nullptr;
  int64_t lda = 0;
  int64_t R = 0;
  const int32_t* rows = nullptr;
  const int32_t* offsets = nullptr;
  DType c_dtype = DType::f32;
  void* C = nullptr;
  int64_t ldc = 0;
  const float* bias = nullptr;  // f32 [E][ldb] or null
  int64_t ldb = 0;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  unsigned long long* err = nullptr;
};
struct QGroupedPlainArgs : Q8GroupedArgs {
  QuantFormat fmt;
};
inline size_t qgemm_grouped_int8_workspace(const QuantFormat& f, int64_t T, int64_t R, int64_t K, int64_t E) {
  return int8_act_bytes(f, T, K) + size_t(grouped_plan_capacity(R, E, QTileDecode::BM)) * sizeof(QTileEntry);
}

namespace detail {
inline Status grouped_common_check(const char* op, const Q8GroupedArgs& a) {
  for (Status st : {need_int(a.N, "N", op), need_int(a.K, "K", op), need_int(a.E, "E", op), need_int(a.T, "T", op),
                    need_int(a.R, "R", op)})
    if (!st.ok) return st;
  if (a.E < 1) return q8_fail(Code::SHAPE, op, "E must be positive", "w");
  if (a.a_dtype != DType::f32 && a.a_dtype != DType::f16 && a.a_dtype != DType::bf16) return bad_dtype(op, a.a_dtype, "a");
  if (a.lda < a.K) return q8_fail(Code::SHAPE, op, "lda < K", "a");
  if (Status st = q8_check_out(op, a.c_dtype, a.C, a.ldc, a.N, a.R, nullptr, 0); !st.ok) return st;
  if (a.bias && a.ldb < a.N) return q8_fail(Code::SHAPE, op, "ldb < N", "bias");
  if (a.R > 0 && (!a.A || !a.rows || !a.offsets || !a.w || !a.err)) return q8_fail(Code::INVALID_ARG, op, "null pointer", "a");
  if (a.R > 0 && a.T < 1) return q8_fail(Code::SHAPE, op, "T must be positive", "a");
  return {};
}

// The kernel's gather, tile table, experts, output and shape for a grouped GEMM.
inline void q8_set_grouped(const Q8GroupedArgs& a, QTileEntry* plan, Q8Params& p) {
  p.rows = a.rows;
  p.T = int(a.T);
  p.plan = plan;
  p.experts = a.w;
  p.bias_ld = a.ldb;
  p.C = a.C;
  p.ldc = a.ldc;
  p.c_dtype = out_code(a.c_dtype);
  p.bias = a.bias;
  p.M = int(a.R);
  p.N = int(a.N);
  p.K = int(a.K);
}
}  // namespace detail

inline Status qgemm_grouped_int8(const QGroupedPlainArgs& a, stream_t s = stream_t(), const QDevice& dev = {},
                                 QTileChoice tile = QTileChoice::automatic) {
  const char* op = "qgemm_grouped_int8";
  if (Status st = detail::grouped_common_check(op, a); !st.ok) return st;
  if (Status st = detail::q8_check_int8_format(op, a.fmt, a.N, a.K); !st.ok) return st;
  if (a.R == 0) return {};
  const int G = a.fmt.group;
  if (Status st = detail::q8_need_workspace(op, a.workspace, a.workspace_bytes, qgemm_grouped_int8_workspace(a.fmt, a.T, a.R, a.K, a.E));
      !st.ok)
    return st;
  // Every tile choice has the same per-call planning cost; the decode tile's BM bounds the table.
  QTileChoice t = tile;
  switch (G) {
    case 32: t = grouped_tile<OpI8<32>>(tile, a.R, a.E, dev.limits); break;
    case 64: t = grouped_tile<OpI8<64>>(tile, a.R, a.E, dev.limits); break;
    case 128: t = grouped_tile<OpI8<128>>(tile, a.R, a.E, dev.limits); break;
    default: t = grouped_tile<OpI8<0>>(tile, a.R, a.E, dev.limits); break;
  }
  const int BM = detail::q8_tile_bm(t);
  const int64_t ldq = int8_act_ld(a.K), cap = grouped_plan_capacity(a.R, a.E, BM);
  char* ws = static_cast<char*>(a.workspace);
  int8_t* q = reinterpret_cast<int8_t*>(ws);
  float* sc = reinterpret_cast<float*>(ws + detail::align256(size_t(a.T * ldq)));
  QTileEntry* plan = reinterpret_cast<QTileEntry*>(ws + int8_act_bytes(a.fmt, a.T, a.K));
  Q8Params p;
  p.A = reinterpret_cast<const uint8_t*>(q);
  p.lda = ldq;
  detail::int8_scale_params(a.fmt, a.K, sc, p);
  detail::q8_set_grouped(a, plan, p);
  if (Status st = detail::int8_gemm_dispatch(G, p, t, 0, cap, dev.limits, s, true); !st.ok) return st;
  if (Status st = quantize_act_int8(a.fmt, a.a_dtype, a.A, a.lda, a.T, a.K, q, ldq, sc, s, dev); !st.ok) return st;
  if (Status st = grouped_plan(a.offsets, a.E, a.R, a.rows, a.T, a.w, BM, plan, cap, a.err, s, dev); !st.ok) return st;
  return detail::int8_gemm_dispatch(G, p, t, 0, cap, dev.limits, s, false);
}

}  // namespace TY_CUDA_BUILD
}  // namespace cuda
}  // namespace ty
