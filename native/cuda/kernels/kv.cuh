// Tachyon CUDA kernels: paged KV cache writes and block moves (semantics: tachyon/attention.h, as
// native/cpu/kernels/attention.cpp):
//   kv_append       new tokens' K and V into their slots, quantised on the way in, BIT-IDENTICAL to
//                   the CPU's codes (the CPU's scalar conversions are ported below as device code:
//                   f16 / bf16 RNE with the CPU's NaN canonicalisation; fp8 code =
//                   f32_to_fp8(x / scale), RNE, saturating, NaN -> 0x7f; int8 scale = amax / 127,
//                   code = rint(x / scale) clamped to [-127, 127], one f32 division each).
//   kv_copy_blocks  copy-on-write: for every layer, block pairs[2i] -> pairs[2i+1] (codes and int8
//                   scales).
//   kv_swap_blocks  blocks (all layers) to / from a host buffer laid out as kv_block_host_bytes()
//                   per block. On a GPU the buffer must be device-accessible host memory (pinned
//                   and mapped, cudaHostAlloc(..., cudaHostAllocMapped), reached through UVA): one
//                   kernel moves every block of every layer over PCIe instead of
//                   layers x blocks cudaMemcpyAsync calls. Under cuemu it is ordinary memory.
//
// Device-side guards (the slot / pair / block arrays live in device memory, so the host cannot
// check them without a sync): an entry outside its range is skipped (nothing is read or written
// through it) and reported in `bad`, a device u64 the caller sets to kKvNoError before the launch
// and reads after the stream syncs (kv_fault() decodes it). The slot keeps the minimum of
// (kind << 62 | index << 32 | value) over every fault, so the lowest kind, then the first index,
// wins. What the CPU additionally checks on the host (distinct copy destinations, no destination
// that is also a source, distinct swap-in blocks) is the caller's job: run ty::kv_copy_blocks_check
// / ty::kv_swap_check on the host copy of the arrays before uploading them (a duplicate only makes
// two copies race; it can never write out of bounds).
#pragma once

#include "common.cuh"
#include "tachyon/attention.h"

namespace ty {
namespace cuda {
inline namespace TY_CUDA_BUILD {  // see common.cuh

// ---- device fault slot (shared with attention.cuh) ---------------------------------------------
constexpr unsigned long long kKvNoError = ~0ull;
enum KvFaultKind : int {
  kKvFaultIndex = 0,      // an index out of range: index = where it was found, value = the index
  kKvFaultScale = 1,      // kv_append: an fp8 scale that is not positive and finite:
                          //   index = kv * kvHeads + head, value = the scale's f32 bits
  kKvFaultPageTable = 2,  // attention: indptr of sequence `index` does not match the plan:
                          //   value = indptr[index + 1] - indptr[index]
};
struct KvFault {
  int kind = 0;
  int64_t index = 0;  // saturates at 2^30 - 1
  int32_t value = 0;
};

TY_DEV void kv_report(unsigned long long* slot, int kind, int64_t index, int32_t value) {
  const unsigned long long ix = index < 0 ? 0ull : index > 0x3fffffff ? 0x3fffffffull : static_cast<unsigned long long>(index);
  atomicMin(slot, (static_cast<unsigned long long>(kind) << 62) | (ix << 32) | static_cast<uint32_t>(value));
}
// False when the slot holds no fault.
inline bool kv_fault(unsigned long long slot, KvFault* f) {
  if (slot == kKvNoError) return false;
  f->kind = int(slot >> 62);
  f->index = int64_t((slot >> 32) & 0x3fffffffull);
  f->value = int32_t(uint32_t(slot & 0xffffffffull));
  return true;
}

// ---- the CPU's scalar conversions as device code (tachyon/dtype.h, tachyon/fp8.h) -------------
// __fadd_rn keeps nvcc from contracting or reassociating the round-at-the-unit-place trick.
// f16 -> f32 as the CPU does it (a NaN keeps its payload; the hardware conversion canonicalises).
TY_DEV float kv_f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16, e = (h >> 10) & 0x1f, man = h & 0x3ff;
  if (e == 0x1f) return __uint_as_float(sign | 0x7f800000u | (man << 13));
  if (e == 0) {
    const float v = float(man) * 5.9604644775390625e-08f;
    return sign ? -v : v;
  }
  return __uint_as_float(sign | ((e + 112) << 23) | (man << 13));
}
TY_DEV float kv_src_f32(float x) { return x; }
TY_DEV float kv_src_f32(__half x) { return kv_f16_to_f32(__half_raw(x).x); }
TY_DEV float kv_src_f32(__nv_bfloat16 x) { return __uint_as_float(uint32_t(__nv_bfloat16_raw(x).x) << 16); }
TY_DEV uint16_t kv_f32_to_f16(float f) {
  const uint32_t x = __float_as_uint(f);
  const uint16_t sign = uint16_t((x >> 16) & 0x8000);
  uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) return uint16_t(sign | 0x7c00 | (ax > 0x7f800000u ? 0x200 : 0));
  if (ax >= 0x477ff000u) return uint16_t(sign | 0x7c00);
  if (ax < 0x38800000u) {
    const float v = __uint_as_float(ax) * 16777216.0f;
    const float r = __fadd_rn(__fadd_rn(v, 8388608.0f), -8388608.0f);
    return uint16_t(sign | uint16_t(r));
  }
  ax += 0xfffu + ((ax >> 13) & 1);
  return uint16_t(sign | uint16_t((ax - 0x38000000u) >> 13));
}
TY_DEV uint16_t kv_f32_to_bf16(float f) {
  uint32_t x = __float_as_uint(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return uint16_t((x >> 16) | 0x40);
  x += 0x7fffu + ((x >> 16) & 1);
  return uint16_t(x >> 16);
}
TY_DEV uint8_t kv_f32_to_e4m3(float f) {
  const uint32_t x = __float_as_uint(f);
  uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return 0x7f;
  const uint8_t sign = uint8_t((x >> 24) & 0x80);
  if (ax >= 0x43e80000u) return uint8_t(sign | 0x7e);
  if (ax < 0x3c800000u) {
    const float v = __uint_as_float(ax) * 512.0f;
    const float r = __fadd_rn(__fadd_rn(v, 8388608.0f), -8388608.0f);
    return uint8_t(sign | uint8_t(r));
  }
  ax += 0x7ffffu + ((ax >> 20) & 1);
  return uint8_t(sign | uint8_t((ax >> 20) - (120u << 3)));
}
TY_DEV uint8_t kv_f32_to_e5m2(float f) {
  const uint32_t x = __float_as_uint(f);
  uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return 0x7f;
  const uint8_t sign = uint8_t((x >> 24) & 0x80);
  if (ax >= 0x47700000u) return uint8_t(sign | 0x7b);
  if (ax < 0x38800000u) {
    const float v = __uint_as_float(ax) * 65536.0f;
    const float r = __fadd_rn(__fadd_rn(v, 8388608.0f), -8388608.0f);
    return uint8_t(sign | uint8_t(r));
  }
  ax += 0xfffffu + ((ax >> 21) & 1);
  return uint8_t(sign | uint8_t((ax >> 21) - (112u << 2)));
}

// The cache geometry the kernels need (KvCache without the host-side dtype enum).
struct KvGeom {
  int layers, blocks, kvHeads, blockSize, headDim;
};
inline KvGeom kv_geom(const KvCache& c) { return {c.layers, c.blocks, c.kvHeads, c.blockSize, c.headDim}; }
// Row index of (layer, block, kv, head, tok): the element offset of the row is row * headDim, and
// for int8 it is also the index of the row's scale (tachyon/attention.h kv_index / kv_scale_index).
TY_DEV int64_t kv_row(const KvGeom& g, int64_t layer, int64_t block, int kv, int64_t head, int64_t tok) {
  return (((layer * g.blocks + block) * 2 + kv) * g.kvHeads + head) * g.blockSize + tok;
}

enum class KvStore : int { f32 = 0, f16 = 1, bf16 = 2, e4m3 = 3, e5m2 = 4, i8 = 5 };
inline bool kv_store_of(DType t, KvStore* s) {
  switch (t) {
    case DType::f32: *s = KvStore::f32; return true;
    case DType::f16: *s = KvStore::f16; return true;
    case DType::bf16: *s = KvStore::bf16; return true;
    case DType::fp8e4m3: *s = KvStore::e4m3; return true;
    case DType::fp8e5m2: *s = KvStore::e5m2; return true;
    case DType::int8: *s = KvStore::i8; return true;
    default: return false;
  }
}

// ---- kv_append --------------------------------------------------------------------------------
// One 128-thread block per token; warp w quantises rows (kv, head) = w, w + 4, ... of the token's
// 2 * kvHeads rows, lane l elements l, l + 32, ... of the row (headDim <= 256: at most 8 each).
constexpr int kKvAppendThreads = 128;

template <class TS, KvStore ST>
__global__ void __launch_bounds__(kKvAppendThreads)
    kv_append_kernel(KvGeom g, int layer, void* data, float* scales, const TS* k, const TS* v, const int32_t* slots,
                     unsigned long long* bad) {
  const int64_t t = blockIdx.x;
  const int32_t slot = slots[t];
  if (slot == -1) return;
  const int64_t nslots = int64_t(g.blocks) * g.blockSize;
  if (slot < -1 || slot >= nslots) {
    if (threadIdx.x == 0) kv_report(bad, kKvFaultIndex, t, slot);
    return;
  }
  const int64_t block = slot / g.blockSize, off = slot % g.blockSize;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, H = g.kvHeads, D = g.headDim;
  for (int row = warp; row < 2 * H; row += kKvAppendThreads / 32) {  // warp-uniform
    const int kv = row / H, h = row % H;
    const TS* src = (kv ? v : k) + (t * H + h) * D;
    const int64_t dst = kv_row(g, layer, block, kv, h, off) * D;
    float x[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) x[i] = lane + 32 * i < D ? kv_src_f32(src[lane + 32 * i]) : 0.0f;
    if (ST == KvStore::f32) {
#pragma unroll
      for (int i = 0; i < 8; ++i)
        if (lane + 32 * i < D) static_cast<float*>(data)[dst + lane + 32 * i] = x[i];
    } else if (ST == KvStore::f16 || ST == KvStore::bf16) {
#pragma unroll
      for (int i = 0; i < 8; ++i)
        if (lane + 32 * i < D)
          static_cast<uint16_t*>(data)[dst + lane + 32 * i] = ST == KvStore::f16 ? kv_f32_to_f16(x[i]) : kv_f32_to_bf16(x[i]);
    } else if (ST == KvStore::i8) {
      // amax as the CPU takes it: a NaN never wins a comparison, so it never becomes the max.
      float amax = 0.0f;
#pragma unroll
      for (int i = 0; i < 8; ++i) amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) {
        const float u = __shfl_xor_sync(0xffffffffu, amax, o);
        amax = u > amax ? u : amax;
      }
      const float sc = amax / 127.0f;  // kv_int8_row_scale
#pragma unroll
      for (int i = 0; i < 8; ++i)
        if (lane + 32 * i < D) {
          float q = sc > 0.0f ? rintf(x[i] / sc) : 0.0f;
          q = q > 127.0f ? 127.0f : (q < -127.0f ? -127.0f : q);
          static_cast<int8_t*>(data)[dst + lane + 32 * i] = q != q ? int8_t(0) : int8_t(int(q));
        }
      if (lane == 0) scales[dst / D] = sc;
    } else {
      const float sc = scales[(int64_t(layer) * 2 + kv) * H + h];
      if (!(sc > 0.0f) || !(sc < INFINITY)) {
        if (lane == 0) kv_report(bad, kKvFaultScale, int64_t(kv) * H + h, int32_t(__float_as_uint(sc)));
        continue;
      }
#pragma unroll
      for (int i = 0; i < 8; ++i)
        if (lane + 32 * i < D)
          static_cast<uint8_t*>(data)[dst + lane + 32 * i] = ST == KvStore::e4m3 ? kv_f32_to_e4m3(x[i] / sc) : kv_f32_to_e5m2(x[i] / sc);
    }
  }
}

namespace detail {
template <class TS, KvStore ST>
Status kv_append_t(const KvAppendArgs& a, unsigned long long* bad, const DeviceLimits& lim, stream_t s) {
  LaunchCfg c{dim3(unsigned(a.tokens)), dim3(kKvAppendThreads), 0, 0};
  return launch("kv_append_kernel", kv_append_kernel<TS, ST>, c, lim, s, kv_geom(a.cache), int(a.layer), a.cache.data,
                a.cache.scales, static_cast<const TS*>(a.k), static_cast<const TS*>(a.v), a.slots, bad);
}
template <class TS>
Status kv_append_s(const KvAppendArgs& a, KvStore st, unsigned long long* bad, const DeviceLimits& lim, stream_t s) {
  switch (st) {
    case KvStore::f32: return kv_append_t<TS, KvStore::f32>(a, bad, lim, s);
    case KvStore::f16: return kv_append_t<TS, KvStore::f16>(a, bad, lim, s);
    case KvStore::bf16: return kv_append_t<TS, KvStore::bf16>(a, bad, lim, s);
    case KvStore::e4m3: return kv_append_t<TS, KvStore::e4m3>(a, bad, lim, s);
    case KvStore::e5m2: return kv_append_t<TS, KvStore::e5m2>(a, bad, lim, s);
    default: return kv_append_t<TS, KvStore::i8>(a, bad, lim, s);
  }
}

// The parts of ty::kv_cache_check that do not read device memory.
inline Status kv_cache_ok(const KvCache& c, const char* op) {
  const std::string o = op;
  KvStore st;
  if (!kv_store_of(c.dtype, &st)) return bad_dtype(op, c.dtype, "cache.dtype");
  auto range = [&](int64_t v, int64_t lo, int64_t hi, const char* arg) {
    if (v < lo || v > hi)
      return Status::fail(Code::INVALID_ARG, o + ": " + arg + " = " + std::to_string(v) + " is outside [" + std::to_string(lo) + ", " +
                                                 std::to_string(hi) + "]", arg);
    return Status();
  };
  for (Status s : {range(c.layers, 1, 1 << 16, "cache.layers"), range(c.blocks, 1, 1 << 30, "cache.blocks"),
                   range(c.kvHeads, 1, 1 << 12, "cache.kvHeads"), range(c.blockSize, 1, 1024, "cache.blockSize"),
                   range(c.headDim, 16, 256, "cache.headDim")})
    if (!s.ok) return s;
  if (c.headDim % 16 != 0)
    return Status::fail(Code::INVALID_ARG, o + ": cache.headDim = " + std::to_string(c.headDim) + " is not a multiple of 16", "cache.headDim");
  if (!c.data) return Status::fail(Code::INVALID_ARG, o + ": cache.data is null", "cache.data");
  if (kv_cache_scale_count(c) > 0 && !c.scales) return Status::fail(Code::INVALID_ARG, o + ": cache.scales is null", "cache.scales");
  // Row indices (and, for int8, scale indices) are formed in 64 bits; element offsets must fit too.
  if (double(kv_cache_data_bytes(c)) > 9.0e18) return Status::fail(Code::UNSUPPORTED, o + ": the cache is too large", "cache");
  return {};
}
}  // namespace detail

// `a.k`, `a.v`, `a.slots`, the cache and `bad` are device pointers. `bad` must hold kKvNoError
// before the launch. The CPU's host check of the slots and fp8 scales (kv_append_check) becomes
// the device guard: a slot outside [-1, blocks * blockSize) and a row whose fp8 scale is not
// positive and finite are skipped and reported.
inline Status kv_append(const KvAppendArgs& a, unsigned long long* bad, stream_t s = stream_t(), const DeviceLimits& lim = {}) {
  Status st = detail::kv_cache_ok(a.cache, "kv_append");
  if (!st.ok) return st;
  if (a.layer < 0 || a.layer >= a.cache.layers)
    return Status::fail(Code::INVALID_ARG, "kv_append: layer " + std::to_string(a.layer) + " is outside [0, " +
                                               std::to_string(a.cache.layers) + ")", "layer");
  if (a.tokens < 0 || a.tokens > 0x7fffffffLL)
    return Status::fail(Code::INVALID_ARG, "kv_append: tokens = " + std::to_string(a.tokens) + " is outside [0, 2^31)", "tokens");
  if (!bad) return Status::fail(Code::INTERNAL, "kv_append: no error slot");
  if (a.tokens == 0) return {};
  if (!a.k || !a.v || !a.slots) return Status::fail(Code::INVALID_ARG, "kv_append: k, v and slots must be non-null", !a.k ? "k" : !a.v ? "v" : "slots");
  KvStore ks = KvStore::f16;
  kv_store_of(a.cache.dtype, &ks);
  switch (a.srcDtype) {
    case DType::f32: return detail::kv_append_s<float>(a, ks, bad, lim, s);
    case DType::f16: return detail::kv_append_s<__half>(a, ks, bad, lim, s);
    case DType::bf16: return detail::kv_append_s<__nv_bfloat16>(a, ks, bad, lim, s);
    default: return bad_dtype("kv_append", a.srcDtype, "srcDtype");
  }
}

// ---- block copy / swap --------------------------------------------------------------------------
constexpr int kKvCopyThreads = 256;

// Copies n bytes with the widest access that every address allows (uniform across the block: the
// same pointers for every thread).
TY_DEV void kv_copy_bytes(unsigned char* dst, const unsigned char* src, int64_t n) {
  const uintptr_t al = reinterpret_cast<uintptr_t>(dst) | reinterpret_cast<uintptr_t>(src) | uintptr_t(n);
  const int tid = threadIdx.x, nt = blockDim.x;
  if ((al & 15) == 0) {
    for (int64_t i = tid; i < n / 16; i += nt) reinterpret_cast<uint4*>(dst)[i] = reinterpret_cast<const uint4*>(src)[i];
  } else if ((al & 7) == 0) {
    for (int64_t i = tid; i < n / 8; i += nt) reinterpret_cast<uint2*>(dst)[i] = reinterpret_cast<const uint2*>(src)[i];
  } else if ((al & 3) == 0) {
    for (int64_t i = tid; i < n / 4; i += nt) reinterpret_cast<uint32_t*>(dst)[i] = reinterpret_cast<const uint32_t*>(src)[i];
  } else {
    for (int64_t i = tid; i < n; i += nt) dst[i] = src[i];
  }
}

// grid (pair i, layer). codeBytes / scaleCount: one (layer, block)'s codes and int8 scales.
__global__ void __launch_bounds__(kKvCopyThreads)
    kv_copy_blocks_kernel(unsigned char* data, float* scales, int blocks, int64_t codeBytes, int64_t scaleCount, const int32_t* pairs,
                          unsigned long long* bad) {
  const int64_t i = blockIdx.x, layer = blockIdx.y;
  const int32_t s = pairs[2 * i], d = pairs[2 * i + 1];
  if (s < 0 || s >= blocks || d < 0 || d >= blocks) {
    if (threadIdx.x == 0 && layer == 0) {
      const bool bs = s < 0 || s >= blocks;
      kv_report(bad, kKvFaultIndex, 2 * i + (bs ? 0 : 1), bs ? s : d);
    }
    return;
  }
  kv_copy_bytes(data + (layer * blocks + d) * codeBytes, data + (layer * blocks + s) * codeBytes, codeBytes);
  if (scaleCount > 0)
    kv_copy_bytes(reinterpret_cast<unsigned char*>(scales + (layer * blocks + d) * scaleCount),
                  reinterpret_cast<const unsigned char*>(scales + (layer * blocks + s) * scaleCount), scaleCount * 4);
}

// grid (block i, layer). Host buffer of block i: [layers][codeBytes] then [layers][scaleCount] f32.
__global__ void __launch_bounds__(kKvCopyThreads)
    kv_swap_blocks_kernel(unsigned char* data, float* scales, int layers, int blocks, int64_t codeBytes, int64_t scaleCount,
                          const int32_t* ids, unsigned char* host, bool out, unsigned long long* bad) {
  const int64_t i = blockIdx.x, layer = blockIdx.y;
  const int32_t b = ids[i];
  if (b < 0 || b >= blocks) {
    if (threadIdx.x == 0 && layer == 0) kv_report(bad, kKvFaultIndex, i, b);
    return;
  }
  const int64_t hb = int64_t(layers) * (codeBytes + scaleCount * 4);
  unsigned char* hc = host + i * hb + layer * codeBytes;
  unsigned char* hs = host + i * hb + int64_t(layers) * codeBytes + layer * scaleCount * 4;
  unsigned char* dc = data + (layer * blocks + b) * codeBytes;
  unsigned char* ds = reinterpret_cast<unsigned char*>(scales + (layer * blocks + b) * scaleCount);
  if (out) {
    kv_copy_bytes(hc, dc, codeBytes);
    if (scaleCount > 0) kv_copy_bytes(hs, ds, scaleCount * 4);
  } else {
    kv_copy_bytes(dc, hc, codeBytes);
    if (scaleCount > 0) kv_copy_bytes(ds, hs, scaleCount * 4);
  }
}

// `pairs` (device) holds n (src, dst) pairs; run ty::kv_copy_blocks_check on the host copy first
// (distinct destinations that are not sources). Entries outside [0, blocks) are skipped and
// reported in `bad` (kKvFaultIndex, index = 2 * pair + (0 src | 1 dst)).
inline Status kv_copy_blocks(const KvCopyBlocksArgs& a, unsigned long long* bad, stream_t s = stream_t(), const DeviceLimits& lim = {}) {
  Status st = detail::kv_cache_ok(a.cache, "kv_copy_blocks");
  if (!st.ok) return st;
  if (a.n < 0 || a.n > a.cache.blocks)
    return Status::fail(Code::INVALID_ARG, "kv_copy_blocks: n = " + std::to_string(a.n) + " is outside [0, blocks]", "n");
  if (!bad) return Status::fail(Code::INTERNAL, "kv_copy_blocks: no error slot");
  if (a.n == 0) return {};
  if (!a.pairs) return Status::fail(Code::INVALID_ARG, "kv_copy_blocks: pairs is null", "pairs");
  const int64_t cb = kv_block_elems(a.cache) * int64_t(kv_elem_bytes(a.cache.dtype));
  LaunchCfg c{dim3(unsigned(a.n), unsigned(a.cache.layers)), dim3(kKvCopyThreads), 0, 0};
  return launch("kv_copy_blocks_kernel", kv_copy_blocks_kernel, c, lim, s, static_cast<unsigned char*>(a.cache.data), a.cache.scales,
                int(a.cache.blocks), cb, int64_t(kv_block_scale_count(a.cache)), a.pairs, bad);
}

// `blocks` (device) holds n block ids; `host` is n * kv_block_host_bytes(cache) bytes of
// device-accessible host memory. Ids outside [0, blocks) are skipped and reported (kKvFaultIndex,
// index = i). Swapping in, ids must be distinct (ty::kv_swap_check on the host copy).
inline Status kv_swap_blocks(const KvSwapArgs& a, unsigned long long* bad, stream_t s = stream_t(), const DeviceLimits& lim = {}) {
  Status st = detail::kv_cache_ok(a.cache, "kv_swap_blocks");
  if (!st.ok) return st;
  if (a.n < 0 || a.n > 0x7fffffffLL)
    return Status::fail(Code::INVALID_ARG, "kv_swap_blocks: n = " + std::to_string(a.n) + " is outside [0, 2^31)", "n");
  if (!bad) return Status::fail(Code::INTERNAL, "kv_swap_blocks: no error slot");
  if (a.n == 0) return {};
  if (!a.blocks || !a.host)
    return Status::fail(Code::INVALID_ARG, "kv_swap_blocks: blocks and host must be non-null", !a.blocks ? "blocks" : "host");
  const int64_t cb = kv_block_elems(a.cache) * int64_t(kv_elem_bytes(a.cache.dtype));
  LaunchCfg c{dim3(unsigned(a.n), unsigned(a.cache.layers)), dim3(kKvCopyThreads), 0, 0};
  return launch("kv_swap_blocks_kernel", kv_swap_blocks_kernel, c, lim, s, static_cast<unsigned char*>(a.cache.data), a.cache.scales,
                int(a.cache.layers), int(a.cache.blocks), cb, int64_t(kv_block_scale_count(a.cache)), a.blocks,
                static_cast<unsigned char*>(a.host), a.out, bad);
}

}  // namespace TY_CUDA_BUILD
}  // namespace cuda
}  // namespace ty
