// Test kernels for cuemu, written as ordinary CUDA: the same file is compiled by g++ against
// native/cuemu (cuemu_test.cpp) and by nvcc -arch=sm_80/sm_89 -c (kernels_nvcc.cu).
#pragma once

#include "../../cuemu/cuemu.h"
#include "../../cuemu/ptx.cuh"

namespace cuemu_test {

// ---- fragment coordinates, transcribed from the PTX ISA tables (used to pack fragments by hand).
// g = lane >> 2, t = lane % 4.
// m16n8k16 (16-bit): A a0..a7, B b0..b3, C c0..c3.
__host__ __device__ inline int a16_row(int lane, int i) { return (lane >> 2) + ((i == 2 || i == 3 || i >= 6) ? 8 : 0); }
__host__ __device__ inline int a16_col(int lane, int i) { return (lane % 4) * 2 + (i & 1) + (i >= 4 ? 8 : 0); }
__host__ __device__ inline int b16_row(int lane, int i) { return (lane % 4) * 2 + (i & 1) + (i >= 2 ? 8 : 0); }
__host__ __device__ inline int b16_col(int lane, int) { return lane >> 2; }
// m16n8k32 (8-bit): A a0..a15, B b0..b7.
__host__ __device__ inline int a8_row(int lane, int i) { return (lane >> 2) + ((i < 4 || (i >= 8 && i < 12)) ? 0 : 8); }
__host__ __device__ inline int a8_col(int lane, int i) { return (lane % 4) * 4 + (i & 3) + (i >= 8 ? 16 : 0); }
__host__ __device__ inline int b8_row(int lane, int i) { return (lane % 4) * 4 + (i & 3) + (i >= 4 ? 16 : 0); }
__host__ __device__ inline int b8_col(int lane, int) { return lane >> 2; }
// Accumulators (both shapes).
__host__ __device__ inline int c_row(int lane, int i) { return (lane >> 2) + (i >= 2 ? 8 : 0); }
__host__ __device__ inline int c_col(int lane, int i) { return (lane % 4) * 2 + (i & 1); }

// ---- mma one-hot layout kernel ----------------------------------------------------------------
// Variant: 0 f16->f32, 1 bf16->f32, 2 f16->f16, 3 s8->s32, 4 e4m3->f32.
// Each block runs one independent 16x8xK problem: A [16][K], B [K][8] as raw element bits
// (2 bytes for 16-bit variants, 1 byte for 8-bit ones), C and D [16][8] as 32-bit values
// (f32 bits, s32, or for variant 2 the f16 bits in the low half).
template <int V>
__global__ void mma_layout_kernel(const unsigned char* A, const unsigned char* B, const uint32_t* C,
                                  uint32_t* D) {
  constexpr int K = (V <= 2) ? 16 : 32;
  constexpr int ES = (V <= 2) ? 2 : 1;  // element bytes
  const int lane = threadIdx.x;
  const unsigned char* a = A + blockIdx.x * 16 * K * ES;
  const unsigned char* b = B + blockIdx.x * K * 8 * ES;
  const uint32_t* c = C + blockIdx.x * 128;
  uint32_t* d = D + blockIdx.x * 128;
  uint32_t ar[4] = {0, 0, 0, 0}, br[2] = {0, 0};
  for (int i = 0; i < 16 / ES * 1; ++i) {  // 8 A elements (16-bit) or 16 (8-bit)
    int r = ES == 2 ? a16_row(lane, i) : a8_row(lane, i);
    int col = ES == 2 ? a16_col(lane, i) : a8_col(lane, i);
    uint32_t v = ES == 2 ? (uint32_t(a[(r * K + col) * 2]) | uint32_t(a[(r * K + col) * 2 + 1]) << 8)
                         : uint32_t(a[r * K + col]);
    ar[i * ES / 4] |= v << (8 * ((i * ES) % 4));
  }
  for (int i = 0; i < 8 / ES; ++i) {  // 4 B elements (16-bit) or 8 (8-bit)
    int r = ES == 2 ? b16_row(lane, i) : b8_row(lane, i);
    int col = ES == 2 ? b16_col(lane, i) : b8_col(lane, i);
    uint32_t v = ES == 2 ? (uint32_t(b[(r * 8 + col) * 2]) | uint32_t(b[(r * 8 + col) * 2 + 1]) << 8)
                         : uint32_t(b[r * 8 + col]);
    br[i * ES / 4] |= v << (8 * ((i * ES) % 4));
  }
  uint32_t cr[4], dr[4];
  for (int i = 0; i < 4; ++i) cr[i] = c[c_row(lane, i) * 8 + c_col(lane, i)];
  if (V == 2) {
    uint32_t ch[2] = {(cr[0] & 0xFFFF) | (cr[1] << 16), (cr[2] & 0xFFFF) | (cr[3] << 16)};
    uint32_t dh[2];
    ptx::mma_m16n8k16_f16_f16(dh, ar, br, ch);
    dr[0] = dh[0] & 0xFFFF;
    dr[1] = dh[0] >> 16;
    dr[2] = dh[1] & 0xFFFF;
    dr[3] = dh[1] >> 16;
  } else if (V == 3) {
    ptx::mma_m16n8k32_s32_s8(reinterpret_cast<int32_t*>(dr), ar, br, reinterpret_cast<const int32_t*>(cr));
  } else {
    float cf[4], df[4];
    for (int i = 0; i < 4; ++i) cf[i] = __uint_as_float(cr[i]);
    if (V == 0) ptx::mma_m16n8k16_f32_f16(df, ar, br, cf);
    if (V == 1) ptx::mma_m16n8k16_f32_bf16(df, ar, br, cf);
    if (V == 4) ptx::mma_m16n8k32_f32_e4m3(df, ar, br, cf);
    for (int i = 0; i < 4; ++i) dr[i] = __float_as_uint(df[i]);
  }
  for (int i = 0; i < 4; ++i) d[c_row(lane, i) * 8 + c_col(lane, i)] = dr[i];
}

// ---- ldmatrix one-hot layout kernel -------------------------------------------------------------
// One 16x16x16 f16 problem per block, D[16][16] f32 = A[16][16] * B[16 k][16 n] (global, f16 bits).
// Shared memory holds A row-major, B both as [n][k] (Bn) and [k][n] (Bk), rows padded to 24
// halves so that rows are 16-byte aligned but not contiguous. V selects the loader under test:
//   0 A by x4 | 1 A by 2 x x2 | 2 B by x1 | 3 B by x2 | 4 B by x4 (both n tiles) |
//   5 B by x1.trans | 6 B by x2.trans | 7 B by x4.trans; the other operand is packed by hand.
template <int V>
__global__ void ldmatrix_layout_kernel(const uint16_t* A, const uint16_t* B, float* D) {
  __shared__ __align__(16) uint16_t As[16][24];
  __shared__ __align__(16) uint16_t Bn[16][24];
  __shared__ __align__(16) uint16_t Bk[16][24];
  const int lane = threadIdx.x;
  const uint16_t* a = A + blockIdx.x * 256;
  const uint16_t* b = B + blockIdx.x * 256;
  for (int i = lane; i < 256; i += 32) {
    As[i / 16][i % 16] = a[i];
    Bk[i / 16][i % 16] = b[i];       // b is [k][n]
    Bn[i % 16][i / 16] = b[i];
  }
  __syncthreads();
  uint32_t ar[4] = {0, 0, 0, 0};
  if (V == 0) {
    ptx::ldmatrix_x4(ar, &As[(lane % 8) + 8 * ((lane / 8) % 2)][8 * (lane / 16)]);
  } else if (V == 1) {
    ptx::ldmatrix_x2(ar, &As[(lane % 8) + 8 * ((lane / 8) % 2)][0]);
    ptx::ldmatrix_x2(ar + 2, &As[(lane % 8) + 8 * ((lane / 8) % 2)][8]);
  } else {
    for (int i = 0; i < 8; ++i)
      ar[i / 2] |= uint32_t(As[a16_row(lane, i)][a16_col(lane, i)]) << (16 * (i % 2));
  }
  for (int nt = 0; nt < 2; ++nt) {
    const int n0 = nt * 8;
    uint32_t br[2] = {0, 0};
    uint32_t b4[4];
    switch (V) {
      case 2:
        ptx::ldmatrix_x1(br, &Bn[n0 + lane % 8][0]);
        ptx::ldmatrix_x1(br + 1, &Bn[n0 + lane % 8][8]);
        break;
      case 3: ptx::ldmatrix_x2(br, &Bn[n0 + lane % 8][8 * ((lane / 8) % 2)]); break;
      case 4:
        ptx::ldmatrix_x4(b4, &Bn[(lane % 8) + 8 * (lane / 16)][8 * ((lane / 8) % 2)]);
        br[0] = b4[2 * nt];
        br[1] = b4[2 * nt + 1];
        break;
      case 5:
        ptx::ldmatrix_x1_trans(br, &Bk[lane % 8][n0]);
        ptx::ldmatrix_x1_trans(br + 1, &Bk[8 + lane % 8][n0]);
        break;
      case 6: ptx::ldmatrix_x2_trans(br, &Bk[(lane % 8) + 8 * ((lane / 8) % 2)][n0]); break;
      case 7:
        ptx::ldmatrix_x4_trans(b4, &Bk[(lane % 8) + 8 * ((lane / 8) % 2)][8 * (lane / 16)]);
        br[0] = b4[2 * nt];
        br[1] = b4[2 * nt + 1];
        break;
      default:
        for (int i = 0; i < 4; ++i)
          br[i / 2] |= uint32_t(Bk[b16_row(lane, i)][n0 + b16_col(lane, i)]) << (16 * (i % 2));
    }
    float c[4] = {0, 0, 0, 0}, d[4];
    ptx::mma_m16n8k16_f32_f16(d, ar, br, c);
    for (int i = 0; i < 4; ++i) D[blockIdx.x * 256 + c_row(lane, i) * 16 + n0 + c_col(lane, i)] = d[i];
  }
}

// ---- tiled f16 GEMM with cp.async double buffering, ldmatrix and mma --------------------------
// C[M][N] (f32) = A[M][K] * B, with B stored [N][K] (BT) or [K][N]. K must be a multiple of 32;
// M and N are arbitrary (out-of-range rows are zero-filled by cp.async and not stored).
// 128 threads = 2 x 2 warps; each warp computes a 32 x 32 sub-tile as 2 x 4 m16n8k16 tiles.
constexpr int kBM = 64, kBN = 64, kBK = 32, kPad = 8;

template <bool BT>
__global__ void __launch_bounds__(128) gemm_f16_kernel(const __half* A, const __half* B, float* C, int M,
                                                       int N, int K) {
  __shared__ __align__(16) __half As[2][kBM][kBK + kPad];
  // BT: [n][k] tile; else [k][n] tile.
  __shared__ __align__(16) __half Bs[2][BT ? kBN : kBK][BT ? kBK + kPad : kBN + kPad];
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int wm = (warp / 2) * 32, wn = (warp % 2) * 32;
  const int m0 = blockIdx.y * kBM, n0 = blockIdx.x * kBN;

  auto load = [&](int stage, int k0) {
    for (int c = tid; c < kBM * kBK / 8; c += 128) {  // 16-byte chunks of A
      int r = c / (kBK / 8), kc = (c % (kBK / 8)) * 8;
      bool ok = m0 + r < M;
      ptx::cp_async_cg(&As[stage][r][kc], A + size_t(ok ? m0 + r : 0) * K + k0 + kc, ok ? 16 : 0);
    }
    for (int c = tid; c < kBN * kBK / 8; c += 128) {
      if (BT) {
        int r = c / (kBK / 8), kc = (c % (kBK / 8)) * 8;
        bool ok = n0 + r < N;
        ptx::cp_async_cg(&Bs[stage][r][kc], B + size_t(ok ? n0 + r : 0) * K + k0 + kc, ok ? 16 : 0);
      } else {
        int r = c / (kBN / 8), nc = (c % (kBN / 8)) * 8;
        bool ok = n0 + nc < N;  // N % 8 == 0 is required for the [K][N] layout
        ptx::cp_async_cg(&Bs[stage][r][nc], B + size_t(k0 + r) * N + (ok ? n0 + nc : 0), ok ? 16 : 0);
      }
    }
    ptx::cp_async_commit();
  };

  float acc[2][4][4];
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 4; ++j)
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

  const int nk = K / kBK;
  load(0, 0);
  for (int kt = 0; kt < nk; ++kt) {
    const int s = kt % 2;
    if (kt + 1 < nk) {
      load(s ^ 1, (kt + 1) * kBK);
      ptx::cp_async_wait<1>();
    } else {
      ptx::cp_async_wait<0>();
    }
    __syncthreads();
    for (int kk = 0; kk < kBK; kk += 16) {
      uint32_t af[2][4], bf[4][2];
      for (int i = 0; i < 2; ++i)
        ptx::ldmatrix_x4(af[i], &As[s][wm + i * 16 + (lane % 8) + 8 * ((lane / 8) % 2)][kk + 8 * (lane / 16)]);
      for (int j = 0; j < 4; j += 2) {
        uint32_t r[4];
        if (BT)
          ptx::ldmatrix_x4(r, &Bs[s][wn + j * 8 + (lane % 8) + 8 * (lane / 16)][kk + 8 * ((lane / 8) % 2)]);
        else
          ptx::ldmatrix_x4_trans(r, &Bs[s][kk + (lane % 8) + 8 * ((lane / 8) % 2)][wn + j * 8 + 8 * (lane / 16)]);
        bf[j][0] = r[0];
        bf[j][1] = r[1];
        bf[j + 1][0] = r[2];
        bf[j + 1][1] = r[3];
      }
      for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 4; ++j) ptx::mma_m16n8k16_f32_f16(acc[i][j], af[i], bf[j], acc[i][j]);
    }
    __syncthreads();  // the next iteration's cp.async overwrites the stage just read
  }
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 4; ++j)
      for (int e = 0; e < 4; ++e) {
        int r = m0 + wm + i * 16 + c_row(lane, e), c = n0 + wn + j * 8 + c_col(lane, e);
        if (r < M && c < N) C[size_t(r) * N + c] = acc[i][j][e];
      }
}

// ---- block reduction with shuffles and a final atomicAdd -----------------------------------------
template <bool UseXor>
__global__ void reduce_sum_kernel(const float* x, int n, float* out) {
  __shared__ float partial[32];
  float s = 0.0f;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) s += x[i];
  for (int o = 16; o > 0; o >>= 1)
    s += UseXor ? __shfl_xor_sync(0xffffffffu, s, o) : __shfl_down_sync(0xffffffffu, s, o);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = blockDim.x / 32;
  if (lane == 0) partial[warp] = s;
  __syncthreads();
  if (warp == 0) {
    s = lane < nw ? partial[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) s += __shfl_down_sync(0xffffffffu, s, o);
    if (lane == 0) atomicAdd(out, s);
  }
}

// Prefix sum of one warp with __shfl_up_sync, broadcast of lane 0 with __shfl_sync, and votes.
__global__ void warp_scan_kernel(const int* x, int* scan, int* bcast, unsigned* ballots, int* votes) {
  const int lane = threadIdx.x % 32;
  const int base = blockIdx.x * blockDim.x + threadIdx.x;
  int v = x[base];
  for (int o = 1; o < 32; o <<= 1) {
    int u = __shfl_up_sync(0xffffffffu, v, o);
    if (lane >= o) v += u;
  }
  scan[base] = v;
  bcast[base] = __shfl_sync(0xffffffffu, x[base], 0) + __shfl_sync(0xffffffffu, x[base], 5, 8);
  unsigned bal = __ballot_sync(0xffffffffu, x[base] > 0);
  if (lane == 0) ballots[base / 32] = bal;
  votes[base] = __any_sync(0xffffffffu, x[base] > 100) * 1 + __all_sync(0xffffffffu, x[base] >= 0) * 2 +
                int(__reduce_add_sync(0xffffffffu, unsigned(x[base] & 7))) * 4;
}

// ---- atomics ----------------------------------------------------------------------------------------
__global__ void atomics_kernel(const int* x, int n, unsigned* hist, float* fsum, double* dsum, int* imax,
                               int* imin, unsigned* umax, int* casCount, int* exch) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    int v = x[i];
    atomicAdd(&hist[v & 15], 1u);
    atomicAdd(fsum, float(v));
    atomicAdd(dsum, double(v) * 0.5);
    atomicMax(imax, v - 500);
    atomicMin(imin, v - 500);
    atomicMax(umax, unsigned(v));
    int old = *casCount, assumed;
    do {
      assumed = old;
      old = atomicCAS(casCount, assumed, assumed + 1);
    } while (old != assumed);
    atomicExch(exch, 7);
  }
}

// ---- shared memory semantics --------------------------------------------------------------------
// Reads static and dynamic shared memory before writing it (must see poison in every block), then
// checks that writes are visible to other threads after a barrier.
__global__ void smem_poison_kernel(uint32_t* firstRead, float* out) {
  __shared__ uint32_t s[64];
  CUEMU_DYNAMIC_SHARED(uint32_t, dyn);
  const int t = threadIdx.x;
  if (t == 0) {
    firstRead[blockIdx.x * 2] = s[63];
    firstRead[blockIdx.x * 2 + 1] = dyn[31];
  }
  __syncthreads();
  s[t] = blockIdx.x * 100 + t;
  dyn[t] = t;
  __syncthreads();
  out[blockIdx.x * 64 + t] = float(s[63 - t] + dyn[(t + 1) % 64]);
}

// Without the barrier the read of s[(t + 1) % n] races with the write (Missing = true).
template <bool Missing>
__global__ void neighbor_kernel(const float* x, float* y) {
  __shared__ float s[128];
  const int t = threadIdx.x, n = blockDim.x;
  s[t] = x[blockIdx.x * n + t];
  if (!Missing) __syncthreads();
  y[blockIdx.x * n + t] = s[(t + 1) % n] + s[(t + n - 1) % n];
}

// ---- checker triggers (each must be reported) ------------------------------------------------------
__global__ void divergent_barrier_kernel(int* y) {
  if (threadIdx.x < 32) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  y[threadIdx.x] = 1;
}

__global__ void exit_before_barrier_kernel(int* y) {
  if (threadIdx.x >= 40) return;
  __syncthreads();
  y[threadIdx.x] = 1;
}

__global__ void shfl_mask_mismatch_kernel(int* y) {
  const unsigned mask = threadIdx.x < 16 ? 0x0000ffffu : 0xffffffffu;
  y[threadIdx.x] = __shfl_xor_sync(mask, int(threadIdx.x), 1);
}

__global__ void shfl_site_mismatch_kernel(int* y) {
  int v;
  if (threadIdx.x < 16)
    v = __shfl_xor_sync(0xffffffffu, int(threadIdx.x), 1);
  else
    v = __shfl_xor_sync(0xffffffffu, int(threadIdx.x), 2);
  y[threadIdx.x] = v;
}

__global__ void shfl_outside_mask_kernel(int* y) {
  if (threadIdx.x < 16) y[threadIdx.x] = __shfl_sync(0x0000ffffu, int(threadIdx.x), 20);
}

__global__ void shfl_partial_warp_kernel(int* y) {  // launched with 48 threads: warp 1 is partial
  y[threadIdx.x] = __shfl_xor_sync(0xffffffffu, int(threadIdx.x), 1);
}

__global__ void mma_half_warp_kernel(float* y) {
  uint32_t a[4] = {0, 0, 0, 0}, b[2] = {0, 0};
  float c[4] = {0, 0, 0, 0}, d[4];
  if (threadIdx.x < 16) {
    ptx::mma_m16n8k16_f32_f16(d, a, b, c);
    y[threadIdx.x] = d[0];
  }
}

__global__ void ldmatrix_global_kernel(const uint16_t* g, uint32_t* y) {
  uint32_t r[1];
  ptx::ldmatrix_x1(r, g + (threadIdx.x % 8) * 8);  // global memory: not allowed
  y[threadIdx.x] = r[0];
}

// Reads the cp.async destination before (Early) or after waiting for it.
template <bool Early>
__global__ void cp_async_kernel(const float* x, float* y) {
  __shared__ __align__(16) float s[128];
  const int t = threadIdx.x;
  ptx::cp_async_ca<16>(&s[4 * t], x + 4 * t);
  ptx::cp_async_commit();
  if (!Early) ptx::cp_async_wait<0>();
  __syncthreads();
  for (int i = 0; i < 4; ++i) y[4 * t + i] = s[(4 * t + 4 + i) % 128];
  if (Early) ptx::cp_async_wait<0>();
}

// Cost of a barrier: every thread passes `iters` barriers.
__global__ void barrier_bench_kernel(int iters, int* y) {
  int s = 0;
  for (int i = 0; i < iters; ++i) {
    s += i;
    __syncthreads();
  }
  y[threadIdx.x] = s;
}

}  // namespace cuemu_test
