// The PTX wrapper whitelist: the only place where kernels may use inline PTX.
//
// Each wrapper has the real instruction under nvcc (__CUDA_ARCH__) and a C++ emulation under
// cuemu. The emulations are written from the PTX ISA's fragment layout tables (sections
// "Matrix Fragments for mma.m16n8k16 with floating point type", "Matrix Fragments for
// mma.m16n8k32", "Warp-level matrix load instruction: ldmatrix", "cp.async"), never from our
// kernels, so a kernel that indexes fragments wrongly fails under cuemu as it would on a GPU.
//
// Notation of the tables: g = lane >> 2 (groupID), t = lane % 4 (threadID_in_group); element i of a
// fragment lives in register i / (elements per register), lowest bits first.
//
// Warp-collective wrappers (mma, ldmatrix) require all 32 lanes, at the same call site.
// cp.async: the source is read at issue, the destination holds poison (0xFF bytes) until the
// issuing thread's matching cp_async_wait*, so reading it early shows NaNs.
#pragma once

#include <cstdint>

#include "cuemu.h"

#if defined(__CUDACC__)
#define PTX_FN __device__ __forceinline__
#else
#define PTX_FN inline
#endif

namespace ptx {

#if !defined(__CUDACC__)
namespace emu {
using ::cuemu::detail::Collective;
using ::cuemu::detail::Site;

enum Elem { F16, BF16, E4M3, S8 };
enum Acc { AccF32, AccF16, AccS32 };

inline double decode16(uint32_t reg, int which, Elem e) {
  uint16_t bits = uint16_t(reg >> (16 * which));
  if (e == F16) {
    __half_raw r;
    r.x = bits;
    return double(__half2float(__half(r)));
  }
  __nv_bfloat16_raw r;
  r.x = bits;
  return double(__bfloat162float(__nv_bfloat16(r)));
}

inline double decode8(uint32_t reg, int which, Elem e) {
  uint8_t bits = uint8_t(reg >> (8 * which));
  if (e == S8) return double(int8_t(bits));
  __nv_fp8_e4m3 v;
  v.__x = bits;
  return double(float(v));
}

struct MmaIn {
  const uint32_t* a;
  const uint32_t* b;
  const void* c;
};

// D = A * B + C for one m16n8kK tile; K = 16 (16-bit A/B) or 32 (8-bit A/B).
template <int K, Elem E, Acc C>
void mma_complete(Collective* const* lanes, unsigned) {
  double A[16][K], B[K][8], Cm[16][8];
  for (int lane = 0; lane < 32; ++lane) {
    const MmaIn* in = static_cast<const MmaIn*>(lanes[lane]->in);
    const int g = lane >> 2, t = lane % 4;
    if (K == 16) {
      // A: a0..a7 in four .f16x2 regs. row = g for i in {0,1,4,5}, g + 8 otherwise;
      //    col = 2t + (i & 1), + 8 for i >= 4.
      for (int i = 0; i < 8; ++i)
        A[g + 8 * ((i >> 1) & 1)][2 * t + (i & 1) + 8 * (i >= 4)] = decode16(in->a[i / 2], i % 2, E);
      // B: b0..b3 in two .f16x2 regs. row = 2t + (i & 1), + 8 for i >= 2; col = g.
      for (int i = 0; i < 4; ++i) B[2 * t + (i & 1) + 8 * (i >= 2)][g] = decode16(in->b[i / 2], i % 2, E);
    } else {
      // A: a0..a15 in four .b32 regs of four 8-bit elements. row = g for i in [0,4) U [8,12),
      //    g + 8 otherwise; col = 4t + (i & 3), + 16 for i >= 8.
      for (int i = 0; i < 16; ++i)
        A[g + 8 * ((i >> 2) & 1)][4 * t + (i & 3) + 16 * (i >= 8)] = decode8(in->a[i / 4], i % 4, E);
      // B: b0..b7 in two .b32 regs. row = 4t + (i & 3), + 16 for i >= 4; col = g.
      for (int i = 0; i < 8; ++i) B[4 * t + (i & 3) + 16 * (i >= 4)][g] = decode8(in->b[i / 4], i % 4, E);
    }
    // C/D: c0..c3. row = g for i < 2, g + 8 otherwise; col = 2t + (i & 1).
    for (int i = 0; i < 4; ++i) {
      double v;
      if (C == AccF32)
        v = static_cast<const float*>(in->c)[i];
      else if (C == AccS32)
        v = static_cast<const int32_t*>(in->c)[i];
      else
        v = decode16(static_cast<const uint32_t*>(in->c)[i / 2], i % 2, F16);
      Cm[g + 8 * (i >= 2)][2 * t + (i & 1)] = v;
    }
  }
  // Products of these element types are exact in double; the sum is rounded once at the end.
  double D[16][8];
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 8; ++n) {
      double s = 0;
      for (int k = 0; k < K; ++k) s += A[m][k] * B[k][n];
      D[m][n] = s + Cm[m][n];
    }
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane >> 2, t = lane % 4;
    void* out = lanes[lane]->out;
    for (int i = 0; i < 4; ++i) {
      double v = D[g + 8 * (i >= 2)][2 * t + (i & 1)];
      if (C == AccF32) {
        static_cast<float*>(out)[i] = float(v);
      } else if (C == AccS32) {
        static_cast<int32_t*>(out)[i] = int32_t(uint32_t(int64_t(v)));  // wraps, no .satfinite
      } else {
        uint32_t& r = static_cast<uint32_t*>(out)[i / 2];
        uint16_t h = __half_raw(__float2half_rn(float(v))).x;
        r = (r & ~(0xFFFFu << (16 * (i % 2)))) | (uint32_t(h) << (16 * (i % 2)));
      }
    }
  }
}

template <int K, Elem E, Acc C>
inline void mma(const char* op, void* d, const uint32_t* a, const uint32_t* b, const void* c, Site s) {
  MmaIn in{a, b, c};
  // Outputs go to a temporary: d may alias c, and every lane's c is read before any d is written.
  uint32_t tmp[4];
  Collective col{op, 0xffffffffu, s, false, 0, 0, &in, tmp, 0, &mma_complete<K, E, C>};
  ::cuemu::detail::collective(col);
  std::memcpy(d, tmp, C == AccF16 ? 8 : 16);
}

// ldmatrix .m8n8 .b16: lanes 8j..8j+7 give the row addresses of matrix j (16 bytes each). Lane T
// receives, for matrix j, row T / 4, columns 2 (T % 4) and 2 (T % 4) + 1 in register j (lower
// column in the low half). With .trans the matrix is read column-major: lane T gets rows
// 2 (T % 4) and 2 (T % 4) + 1 of column T / 4.
template <int N, bool Trans>
void ldmatrix_complete(Collective* const* lanes, unsigned) {
  for (int j = 0; j < N; ++j)
    for (int r = 0; r < 8; ++r) {
      const void* p = lanes[8 * j + r]->in;
      if (reinterpret_cast<uintptr_t>(p) % 16 != 0)
        ::cuemu::detail::fail("ldmatrix: row address of lane " + std::to_string(8 * j + r) +
                                  " is not 16-byte aligned",
                              lanes[8 * j + r]->site);
      if (!::cuemu::detail::is_shared(p, 16))
        ::cuemu::detail::fail("ldmatrix: row address of lane " + std::to_string(8 * j + r) +
                                  " is not in shared memory",
                              lanes[8 * j + r]->site);
    }
  auto at = [&](int j, int row, int col) {
    uint16_t v;
    std::memcpy(&v, static_cast<const unsigned char*>(lanes[8 * j + row]->in) + 2 * col, 2);
    return uint32_t(v);
  };
  for (int T = 0; T < 32; ++T) {
    uint32_t* out = static_cast<uint32_t*>(lanes[T]->out);
    for (int j = 0; j < N; ++j) {
      const int q = T / 4, c = 2 * (T % 4);
      out[j] = Trans ? at(j, c, q) | at(j, c + 1, q) << 16 : at(j, q, c) | at(j, q, c + 1) << 16;
    }
  }
}

template <int N, bool Trans>
inline void ldmatrix(const char* op, uint32_t* r, const void* smem, Site s) {
  uint32_t tmp[4];
  Collective col{op, 0xffffffffu, s, false, 0, 0, smem, tmp, 0, &ldmatrix_complete<N, Trans>};
  ::cuemu::detail::collective(col);
  std::memcpy(r, tmp, 4 * N);
}
}  // namespace emu
#define PTX_SITE ::cuemu::detail::Site{cuemu_file_, cuemu_line_}
#endif

// ---- mma.sync ---------------------------------------------------------------------------------
// d[4] = A(16x16, row) * B(16x8, col) + c[4]; f16 inputs, f32 accumulators.
PTX_FN void mma_m16n8k16_f32_f16(float* d, const uint32_t* a, const uint32_t* b,
                                 const float* c CUEMU_SITE_PARAMS) {
#if defined(__CUDA_ARCH__)
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
        "f"(c[2]), "f"(c[3]));
#elif !defined(__CUDACC__)
  emu::mma<16, emu::F16, emu::AccF32>("mma.m16n8k16.row.col.f32.f16.f16.f32", d, a, b, c, PTX_SITE);
#endif
}

// Same with bf16 inputs.
PTX_FN void mma_m16n8k16_f32_bf16(float* d, const uint32_t* a, const uint32_t* b,
                                  const float* c CUEMU_SITE_PARAMS) {
#if defined(__CUDA_ARCH__)
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
        "f"(c[2]), "f"(c[3]));
#elif !defined(__CUDACC__)
  emu::mma<16, emu::BF16, emu::AccF32>("mma.m16n8k16.row.col.f32.bf16.bf16.f32", d, a, b, c, PTX_SITE);
#endif
}

// f16 inputs, f16 accumulators: d[2], c[2] are .f16x2 registers (c0,c1 | c2,c3).
PTX_FN void mma_m16n8k16_f16_f16(uint32_t* d, const uint32_t* a, const uint32_t* b,
                                 const uint32_t* c CUEMU_SITE_PARAMS) {
#if defined(__CUDA_ARCH__)
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f16.f16.f16.f16 {%0,%1}, {%2,%3,%4,%5}, {%6,%7}, {%8,%9};\n"
      : "=r"(d[0]), "=r"(d[1])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(c[0]), "r"(c[1]));
#elif !defined(__CUDACC__)
  emu::mma<16, emu::F16, emu::AccF16>("mma.m16n8k16.row.col.f16.f16.f16.f16", d, a, b, c, PTX_SITE);
#endif
}

// d[4] = A(16x32 s8, row) * B(32x8 s8, col) + c[4]; s32 accumulators (wrapping).
PTX_FN void mma_m16n8k32_s32_s8(int32_t* d, const uint32_t* a, const uint32_t* b,
                                const int32_t* c CUEMU_SITE_PARAMS) {
#if defined(__CUDA_ARCH__)
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%10,%11,%12,%13};\n"
      : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(c[0]), "r"(c[1]),
        "r"(c[2]), "r"(c[3]));
#elif !defined(__CUDACC__)
  emu::mma<32, emu::S8, emu::AccS32>("mma.m16n8k32.row.col.s32.s8.s8.s32", d, a, b, c, PTX_SITE);
#endif
}

// d[4] = A(16x32 e4m3, row) * B(32x8 e4m3, col) + c[4]; f32 accumulators. Needs sm_89.
PTX_FN void mma_m16n8k32_f32_e4m3(float* d, const uint32_t* a, const uint32_t* b,
                                  const float* c CUEMU_SITE_PARAMS) {
#if defined(__CUDA_ARCH__)
#if __CUDA_ARCH__ >= 890
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
        "f"(c[2]), "f"(c[3]));
#else
  __trap();  // e4m3 mma does not exist before sm_89; callers must dispatch on the arch
#endif
#elif !defined(__CUDACC__)
  emu::mma<32, emu::E4M3, emu::AccF32>("mma.m16n8k32.row.col.f32.e4m3.e4m3.f32", d, a, b, c, PTX_SITE);
#endif
}

// ---- ldmatrix ---------------------------------------------------------------------------------
#if defined(__CUDA_ARCH__)
#define PTX_SMEM_ADDR(p) static_cast<uint32_t>(__cvta_generic_to_shared(p))
#endif

PTX_FN void ldmatrix_x1(uint32_t* r, const void* smem CUEMU_SITE_PARAMS) {
#if defined(__CUDA_ARCH__)
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n"
               : "=r"(r[0])
               : "r"(PTX_SMEM_ADDR(smem)));
#elif !defined(__CUDACC__)
  emu::ldmatrix<1, false>("ldmatrix.m8n8.x1.b16", r, smem, PTX_SITE);
#endif
}
PTX_FN void ldmatrix_x2(uint32_t* r, const void* smem CUEMU_SITE_PARAMS) {
#if defined(__CUDA_ARCH__)
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(PTX_SMEM_ADDR(smem)));
#elif !defined(__CUDACC__)
  emu::ldmatrix<2, false>("ldmatrix.m8n8.x2.b16", r, smem, PTX_SITE);
#endif
}
PTX_FN void ldmatrix_x4(uint32_t* r, const void* smem CUEMU_SITE_PARAMS) {
#if defined(__CUDA_ARCH__)
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(PTX_SMEM_ADDR(smem)));
#elif !defined(__CUDACC__)
  emu::ldmatrix<4, false>("ldmatrix.m8n8.x4.b16", r, smem, PTX_SITE);
#endif
}
PTX_FN void ldmatrix_x1_trans(uint32_t* r, const void* smem CUEMU_SITE_PARAMS) {
#if defined(__CUDA_ARCH__)
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n"
               : "=r"(r[0])
               : "r"(PTX_SMEM_ADDR(smem)));
#elif !defined(__CUDACC__)
  emu::ldmatrix<1, true>("ldmatrix.m8n8.x1.trans.b16", r, smem, PTX_SITE);
#endif
}
PTX_FN void ldmatrix_x2_trans(uint32_t* r, const void* smem CUEMU_SITE_PARAMS) {
#if defined(__CUDA_ARCH__)
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(PTX_SMEM_ADDR(smem)));
#elif !defined(__CUDACC__)
  emu::ldmatrix<2, true>("ldmatrix.m8n8.x2.trans.b16", r, smem, PTX_SITE);
#endif
}
PTX_FN void ldmatrix_x4_trans(uint32_t* r, const void* smem CUEMU_SITE_PARAMS) {
#if defined(__CUDA_ARCH__)
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(PTX_SMEM_ADDR(smem)));
#elif !defined(__CUDACC__)
  emu::ldmatrix<4, true>("ldmatrix.m8n8.x4.trans.b16", r, smem, PTX_SITE);
#endif
}

// ---- cp.async ---------------------------------------------------------------------------------
// Copies Bytes (4, 8 or 16) from global to shared memory, reading srcBytes and zero-filling the
// rest (srcBytes = 0 zero-fills the whole destination, the usual out-of-bounds guard).
template <int Bytes>
PTX_FN void cp_async_ca(void* smem, const void* gmem, int srcBytes = Bytes CUEMU_SITE_PARAMS) {
  static_assert(Bytes == 4 || Bytes == 8 || Bytes == 16, "cp.async.ca copies 4, 8 or 16 bytes");
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(PTX_SMEM_ADDR(smem)),
               "l"(gmem), "n"(Bytes), "r"(srcBytes)
               : "memory");
#elif !defined(__CUDACC__)
  ::cuemu::detail::cp_async(smem, gmem, Bytes, srcBytes, PTX_SITE);
#endif
}
// .cg (bypasses L1) exists only for 16-byte copies.
PTX_FN void cp_async_cg(void* smem, const void* gmem, int srcBytes = 16 CUEMU_SITE_PARAMS) {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(PTX_SMEM_ADDR(smem)),
               "l"(gmem), "r"(srcBytes)
               : "memory");
#elif !defined(__CUDACC__)
  ::cuemu::detail::cp_async(smem, gmem, 16, srcBytes, PTX_SITE);
#endif
}
PTX_FN void cp_async_commit() {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#elif !defined(__CUDACC__)
  ::cuemu::detail::cp_async_commit();
#endif
}
// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
PTX_FN void cp_async_wait() {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#elif !defined(__CUDACC__)
  ::cuemu::detail::cp_async_wait(N);
#endif
}
// commit_group + wait_group 0.
PTX_FN void cp_async_wait_all() {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.wait_all;\n" ::: "memory");
#elif !defined(__CUDACC__)
  ::cuemu::detail::cp_async_commit();
  ::cuemu::detail::cp_async_wait(0);
#endif
}

}  // namespace ptx
