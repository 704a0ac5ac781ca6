// Tachyon: element types and scalar conversions. Framework-free; no Node, no CUDA.
//
// Every function here is `static inline` on purpose: this header is included by the
// ISA-variant translation units (compiled with -mavx512f etc.). A non-static inline
// function would be emitted by several TUs with different codegen and the linker would
// keep one arbitrary copy, which could put AVX-512 code on the scalar path (ODR trap).
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace ty {

enum class DType : int32_t {
  f32 = 0,
  f16 = 1,
  bf16 = 2,
  fp8e4m3 = 3,
  fp8e5m2 = 4,
  int8 = 5,
  i32 = 6,
  int4 = 7,  // packed: two signed 4-bit values per byte, element 2i in the low nibble
  u8 = 8,    // raw bytes (packed quantized blocks, scales)
};
constexpr int kDTypeCount = 9;

static inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "f32";
    case DType::f16: return "f16";
    case DType::bf16: return "bf16";
    case DType::fp8e4m3: return "fp8e4m3";
    case DType::fp8e5m2: return "fp8e5m2";
    case DType::int8: return "int8";
    case DType::i32: return "i32";
    case DType::int4: return "int4";
    case DType::u8: return "u8";
  }
  return "?";
}

// Bytes needed for `n` elements (int4 rounds up to whole bytes).
static inline size_t dtype_bytes(DType t, int64_t n) {
  switch (t) {
    case DType::f32: case DType::i32: return (size_t)n * 4;
    case DType::f16: case DType::bf16: return (size_t)n * 2;
    case DType::int4: return (size_t)(n + 1) / 2;
    default: return (size_t)n;
  }
}

static inline uint32_t f32_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
static inline float bits_f32(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

// IEEE binary16 -> f32, exact.
static inline float f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff;
  if (exp == 0x1f) return bits_f32(sign | 0x7f800000u | (man << 13));  // inf / nan
  if (exp == 0) {
    // zero or subnormal: value = man * 2^-24
    float v = (float)man * 5.9604644775390625e-08f;
    return sign ? -v : v;
  }
  return bits_f32(sign | ((exp + 112) << 23) | (man << 13));
}

// f32 -> IEEE binary16, round to nearest even, overflow to inf, NaN stays NaN.
static inline uint16_t f32_to_f16(float f) {
  uint32_t x = f32_bits(f);
  uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
  uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) return (uint16_t)(sign | 0x7c00 | (ax > 0x7f800000u ? 0x200 : 0));
  if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00);  // rounds to >= 65520 -> inf
  if (ax < 0x38800000u) {
    // result is subnormal or zero: scale so that the f16 subnormal ulp (2^-24) is 1.0,
    // and let the FPU round to nearest even.
    float v = bits_f32(ax) * 16777216.0f;  // * 2^24
    // v < 1024 here; adding 2^23 forces rounding at the unit place.
    float r = (v + 8388608.0f) - 8388608.0f;
    return (uint16_t)(sign | (uint16_t)r);
  }
  uint32_t mant_odd = (ax >> 13) & 1;
  ax += 0xfffu + mant_odd;  // round to nearest even on bit 13
  return (uint16_t)(sign | (uint16_t)((ax - 0x38000000u) >> 13));
}

static inline float bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

// f32 -> bf16, round to nearest even; NaN stays (quiet) NaN.
static inline uint16_t f32_to_bf16(float f) {
  uint32_t x = f32_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40);
  x += 0x7fffu + ((x >> 16) & 1);
  return (uint16_t)(x >> 16);
}

}  // namespace ty
