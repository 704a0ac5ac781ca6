// Tachyon CUDA kernel: f16/bf16 GEMM on tensor cores (semantics: tachyon/kernels.h GemmArgs with
// b_trans = true, the nn.Linear / GGUF weight layout):
//   C[M,N] = alpha * A[M,K] · B[N,K]ᵀ + beta * C + bias[N]
// A and B are f16 or bf16 (the same), accumulation is f32 (mma.m16n8k16 .f32), C is f32, f16 or
// bf16, rounded once from the f32 epilogue value. beta = 0 never reads C; bias is f32 or null.
//
// Structure (per thread block, TL = the tile shape below):
//   - A and B tiles [BM|BN][BK] live in dynamic shared memory, STAGES deep. Rows are padded to
//     LDS = BK + 8 elements (80 bytes for BK = 32): every row start is 16-byte aligned, as
//     ldmatrix and cp.async need, and the 8 row addresses of one ldmatrix 8x8 matrix fall in 8
//     distinct 4-bank groups, so the loads are bank-conflict free.
//   - Global -> shared with cp.async.cg (16 bytes = 8 elements) in a STAGES-deep pipeline: one
//     commit group per k-tile; before computing k-tile kt each thread waits until at most
//     STAGES-2 of its groups are in flight (group kt has landed), then one __syncthreads makes
//     every thread's copies visible and also guarantees that the stage about to be refilled
//     (the one computed in iteration kt-1) is no longer being read.
//   - M, N, K need not be multiples of the tile: a 16-byte chunk past the end of a row of A/B
//     or past the last row is copied with src-size < 16 (or 0), and cp.async zero-fills the
//     rest, so no global memory outside the operands is read. Stores are predicated.
//   - Fragments: ldmatrix.x4 loads a 16x16 A fragment (a0..a7) and, from B stored [n][k], the
//     B fragments (b0..b3) of two n8 tiles at once; mma.m16n8k16.row.col accumulates in f32.
//   - Unaligned operands (lda or ldb not a multiple of 8, or a base not 16-byte aligned) take
//     a slower variant whose loads are ordinary predicated element loads stored to shared
//     memory (the same pipeline, without cp.async overlap); always with the small tile.
#pragma once

#include "../../cuemu/ptx.cuh"
#include "common.cuh"

namespace ty {
namespace cuda {
inline namespace TY_CUDA_BUILD {  // see common.cuh

template <int BM_, int BN_, int BK_, int WARPS_M_, int WARPS_N_, int STAGES_>
struct GemmTile {
  static constexpr int BM = BM_, BN = BN_, BK = BK_, WARPS_M = WARPS_M_, WARPS_N = WARPS_N_, STAGES = STAGES_;
  static constexpr int NT = 32 * WARPS_M * WARPS_N;
  static constexpr int WM = BM / WARPS_M, WN = BN / WARPS_N;  // one warp's sub-tile
  static constexpr int MI = WM / 16, NI = WN / 8;             // m16n8 mma tiles per warp
  static constexpr int LDS = BK + 8;                          // shared row stride (elements)
  static constexpr int STAGE_ELEMS = (BM + BN) * LDS;
  static constexpr size_t SMEM = size_t(STAGES) * STAGE_ELEMS * 2;
  static_assert(WM % 16 == 0 && WN % 16 == 0 && BK % 16 == 0 && STAGES >= 2, "bad GEMM tile");
  static_assert((BM * BK / 8) % NT == 0 && (BN * BK / 8) % NT == 0, "loads must split evenly over the threads");
};
// 8 warps as 2 (m) x 4 (n), each 64 x 32; 3 stages = 60 KiB (needs the opt-in above 48 KiB).
using GemmTileLarge = GemmTile<128, 128, 32, 2, 4, 3>;
// 4 warps as 2 x 2, each 32 x 32; 3 stages = 30 KiB. For M <= 64 (and unaligned operands).
using GemmTileSmall = GemmTile<64, 64, 32, 2, 2, 3>;

enum class GemmTileChoice { automatic, small, large };

template <class T>
struct MmaF32;
template <>
struct MmaF32<__half> {
  static TY_DEV void run(float* d, const uint32_t* a, const uint32_t* b) { ptx::mma_m16n8k16_f32_f16(d, a, b, d); }
};
template <>
struct MmaF32<__nv_bfloat16> {
  static TY_DEV void run(float* d, const uint32_t* a, const uint32_t* b) { ptx::mma_m16n8k16_f32_bf16(d, a, b, d); }
};

// Copies rows [r0, r0 + ROWS) x columns [k0, k0 + BK) of a row-major operand (rows_total rows of K
// elements, leading dimension ld) into the shared tile dst[ROWS][LDS]; whatever lies outside the
// operand is zero-filled.
template <class TL, int ROWS, bool VEC, class T>
TY_DEV void gemm_load_tile(T* dst, const T* src, int rows_total, int K, int64_t ld, int r0, int k0, int tid) {
  constexpr int CPR = TL::BK / 8;  // 16-byte chunks per row
#pragma unroll
  for (int it = 0; it < ROWS * CPR / TL::NT; ++it) {
    const int c = tid + it * TL::NT;
    const int r = c / CPR, kc = (c % CPR) * 8;
    const int gr = r0 + r, gk = k0 + kc;
    T* d = dst + r * TL::LDS + kc;
    int valid = gr < rows_total ? K - gk : 0;  // elements of this chunk inside the operand
    valid = valid < 0 ? 0 : (valid > 8 ? 8 : valid);
    if (VEC) {
      // src-size 0 reads nothing; the base pointer is only there to be a valid address.
      ptx::cp_async_cg(d, valid > 0 ? src + gr * ld + gk : src, valid * 2);
    } else {
      const uint16_t* s = reinterpret_cast<const uint16_t*>(src) + (valid > 0 ? gr * ld + gk : 0);
      uint32_t w[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const uint32_t lo = 2 * e < valid ? s[2 * e] : 0u, hi = 2 * e + 1 < valid ? s[2 * e + 1] : 0u;
        w[e] = lo | (hi << 16);
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

// BUG != 0 builds deliberately broken variants for the emulator's negative tests only:
// 1 = no __syncthreads between the pipeline stages, 2 = no cp.async wait before computing.
template <class TL, class T, class TO, bool VEC, int BUG>
__global__ void __launch_bounds__(TL::NT) gemm_tc_kernel(const T* A, int64_t lda, const T* B, int64_t ldb, TO* C, int64_t ldc,
                                                         const float* bias, float alpha, float beta, int M, int N, int K) {
  CUEMU_DYNAMIC_SHARED(T, smem);
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int wm = (warp / TL::WARPS_N) * TL::WM, wn = (warp % TL::WARPS_N) * TL::WN;
  const int m0 = blockIdx.y * TL::BM, n0 = blockIdx.x * TL::BN;
  const int nk = (K + TL::BK - 1) / TL::BK;

  float acc[TL::MI][TL::NI][4];
#pragma unroll
  for (int i = 0; i < TL::MI; ++i)
#pragma unroll
    for (int j = 0; j < TL::NI; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

  // Prologue: k-tiles 0 .. STAGES-2 in flight. Every step commits a group, empty or not, so that
  // "group kt" always means k-tile kt.
#pragma unroll
  for (int s = 0; s < TL::STAGES - 1; ++s) {
    if (s < nk) {
      T* st = smem + s * TL::STAGE_ELEMS;
      gemm_load_tile<TL, TL::BM, VEC>(st, A, M, K, lda, m0, s * TL::BK, tid);
      gemm_load_tile<TL, TL::BN, VEC>(st + TL::BM * TL::LDS, B, N, K, ldb, n0, s * TL::BK, tid);
    }
    ptx::cp_async_commit();
  }

  for (int kt = 0; kt < nk; ++kt) {
    if (BUG != 2) ptx::cp_async_wait<TL::STAGES - 2>();  // this thread's copies of k-tile kt landed
    if (BUG != 1) __syncthreads();                        // ... and everyone's; stage kt-1 is free
    const int nt = kt + TL::STAGES - 1;
    if (nt < nk) {
      T* st = smem + (nt % TL::STAGES) * TL::STAGE_ELEMS;
      gemm_load_tile<TL, TL::BM, VEC>(st, A, M, K, lda, m0, nt * TL::BK, tid);
      gemm_load_tile<TL, TL::BN, VEC>(st + TL::BM * TL::LDS, B, N, K, ldb, n0, nt * TL::BK, tid);
    }
    ptx::cp_async_commit();

    const T* sa = smem + (kt % TL::STAGES) * TL::STAGE_ELEMS;
    const T* sb = sa + TL::BM * TL::LDS;
#pragma unroll
    for (int kk = 0; kk < TL::BK; kk += 16) {
      uint32_t af[TL::MI][4], bf[TL::NI][2];
      // A 16x16 at (wm + 16i, kk): lanes 0-15 address rows 0-15 at column kk (matrices 0, 1 =
      // a0a1, a2a3), lanes 16-31 the same rows at column kk + 8 (matrices 2, 3 = a4a5, a6a7).
#pragma unroll
      for (int i = 0; i < TL::MI; ++i)
        ptx::ldmatrix_x4(af[i], sa + (wm + i * 16 + lane % 16) * TL::LDS + kk + 8 * (lane / 16));
      // B from [n][k]: matrix 0 = n 0-7 / k 0-7 (b0b1 of tile j), 1 = n 0-7 / k 8-15 (b2b3 of j),
      // 2 and 3 the same for tile j + 1 (n 8-15).
#pragma unroll
      for (int j = 0; j < TL::NI; j += 2) {
        uint32_t r[4];
        ptx::ldmatrix_x4(r, sb + (wn + j * 8 + lane % 8 + 8 * (lane / 16)) * TL::LDS + kk + 8 * ((lane / 8) % 2));
        bf[j][0] = r[0];
        bf[j][1] = r[1];
        bf[j + 1][0] = r[2];
        bf[j + 1][1] = r[3];
      }
#pragma unroll
      for (int i = 0; i < TL::MI; ++i)
#pragma unroll
        for (int j = 0; j < TL::NI; ++j) MmaF32<T>::run(acc[i][j], af[i], bf[j]);
    }
  }
  ptx::cp_async_wait<0>();  // the groups still open are empty; leave none behind

  // Epilogue. Accumulator element e of an m16n8 tile: row g (+8 for e >= 2), column 2t + (e & 1).
  const int g = lane >> 2, t4 = lane & 3;
#pragma unroll
  for (int i = 0; i < TL::MI; ++i)
#pragma unroll
    for (int j = 0; j < TL::NI; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = m0 + wm + i * 16 + g + (e >= 2 ? 8 : 0);
        const int c = n0 + wn + j * 8 + 2 * t4 + (e & 1);
        if (r < M && c < N) {
          TO* p = C + size_t(r) * size_t(ldc) + c;
          float v = alpha * acc[i][j][e];
          if (beta != 0.0f) v += beta * to_f32(*p);
          if (bias) v += bias[c];
          *p = from_f32<TO>(v);
        }
      }
}

namespace detail {
template <class TL, class T, class TO, bool VEC, int BUG = 0>
Status gemm_launch(const GemmArgs& g, const DeviceLimits& lim, stream_t s) {
  LaunchCfg c{dim3(unsigned((g.N + TL::BN - 1) / TL::BN), unsigned((g.M + TL::BM - 1) / TL::BM)), dim3(TL::NT), TL::SMEM, 0};
  return launch("gemm_tc_kernel", gemm_tc_kernel<TL, T, TO, VEC, BUG>, c, lim, s, static_cast<const T*>(g.A), g.lda,
                static_cast<const T*>(g.B), g.ldb, static_cast<TO*>(g.C), g.ldc, g.bias, g.alpha, g.beta, int(g.M), int(g.N),
                int(g.K));
}

// Whether the cp.async path applies: 16-byte aligned bases and rows.
inline bool gemm_vec_ok(const GemmArgs& g) { return aligned16(g.A) && aligned16(g.B) && g.lda % 8 == 0 && g.ldb % 8 == 0; }

template <class T, class TO>
Status gemm_t(const GemmArgs& g, GemmTileChoice tile, const DeviceLimits& lim, stream_t s) {
  const bool vec = gemm_vec_ok(g);
  if (tile == GemmTileChoice::automatic)
    tile = (g.M > 64 && vec && GemmTileLarge::SMEM <= lim.smem_optin) ? GemmTileChoice::large : GemmTileChoice::small;
  if (tile == GemmTileChoice::large) {
    if (!vec)
      return Status::fail(Code::UNSUPPORTED, "gemm: the large tile needs 16-byte aligned operands (lda, ldb multiples of 8)");
    return gemm_launch<GemmTileLarge, T, TO, true>(g, lim, s);
  }
  return vec ? gemm_launch<GemmTileSmall, T, TO, true>(g, lim, s) : gemm_launch<GemmTileSmall, T, TO, false>(g, lim, s);
}

template <class T>
Status gemm_d(const GemmArgs& g, GemmTileChoice tile, const DeviceLimits& lim, stream_t s) {
  switch (g.c_dtype) {
    case DType::f32: return gemm_t<T, float>(g, tile, lim, s);
    case DType::f16: return gemm_t<T, __half>(g, tile, lim, s);
    case DType::bf16: return gemm_t<T, __nv_bfloat16>(g, tile, lim, s);
    default: return bad_dtype("gemm", g.c_dtype, "out");
  }
}
}  // namespace detail

inline Status gemm(const GemmArgs& g, stream_t s = stream_t(), const DeviceLimits& lim = {},
                   GemmTileChoice tile = GemmTileChoice::automatic) {
  for (Status st : {need_int(g.M, "M", "gemm"), need_int(g.N, "N", "gemm"), need_int(g.K, "K", "gemm")})
    if (!st.ok) return st;
  if (!g.b_trans)
    return Status::fail(Code::UNSUPPORTED, "gemm: the tensor-core kernel takes B as [N,K] (b_trans = true) only", "b");
  if (g.lda < g.K || g.ldb < g.K || g.ldc < g.N)
    return Status::fail(Code::INVALID_ARG, "gemm: a leading dimension is smaller than its row (lda >= K, ldb >= K, ldc >= N)");
  if (g.M == 0 || g.N == 0) return {};
  switch (g.dtype) {
    case DType::f16: return detail::gemm_d<__half>(g, tile, lim, s);
    case DType::bf16: return detail::gemm_d<__nv_bfloat16>(g, tile, lim, s);
    default: return bad_dtype("gemm", g.dtype, "a");
  }
}

}  // namespace TY_CUDA_BUILD
}  // namespace cuda
}  // namespace ty
