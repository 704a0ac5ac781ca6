// Runtime ISA detection (cpuid + xgetbv). Compiled without any -m flags.
#include "isa.h"

#include <cstring>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#include <immintrin.h>
#define TY_X86 1
#endif

namespace ty::cpu {

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::scalar: return "scalar";
    case Isa::avx2: return "avx2";
    case Isa::avx512: return "avx512";
  }
  return "scalar";
}

bool isa_parse(const char* s, Isa* out) {
  if (!s) return false;
  if (!std::strcmp(s, "scalar")) { *out = Isa::scalar; return true; }
  if (!std::strcmp(s, "avx2")) { *out = Isa::avx2; return true; }
  if (!std::strcmp(s, "avx512")) { *out = Isa::avx512; return true; }
  return false;
}

#ifdef TY_X86
// Only called after cpuid reported OSXSAVE, so the instruction exists.
__attribute__((target("xsave"))) static uint64_t xgetbv0() { return _xgetbv(0); }
#endif

Isa isa_detected() {
#ifdef TY_X86
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return Isa::scalar;
  bool osxsave = c & (1u << 27), fma = c & (1u << 12), f16c = c & (1u << 29);
  if (!osxsave) return Isa::scalar;
  uint64_t xcr0 = xgetbv0();
  bool ymm_os = (xcr0 & 0x6) == 0x6;
  bool zmm_os = (xcr0 & 0xe6) == 0xe6;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return Isa::scalar;
  bool avx2 = b & (1u << 5), bmi2 = b & (1u << 8);
  bool f = b & (1u << 16), dq = b & (1u << 17), bw = b & (1u << 30), vl = b & (1u << 31);
  bool vbmi = c & (1u << 1), vnni = c & (1u << 11);
  unsigned a1 = 0, b1, c1, d1;
  __get_cpuid_count(7, 1, &a1, &b1, &c1, &d1);
  bool bf16 = a1 & (1u << 5);
  if (zmm_os && f && dq && bw && vl && vnni && bf16 && vbmi && avx2 && fma) return Isa::avx512;
  if (ymm_os && avx2 && fma && f16c && bmi2) return Isa::avx2;
#endif
  return Isa::scalar;
}

const char* cpu_brand() {
  static char brand[49] = {0};
  if (brand[0]) return brand;
#ifdef TY_X86
  unsigned r[12];
  unsigned max_ext = __get_cpuid_max(0x80000000, nullptr);
  if (max_ext >= 0x80000004) {
    for (unsigned i = 0; i < 3; ++i) __get_cpuid(0x80000002 + i, &r[i * 4], &r[i * 4 + 1], &r[i * 4 + 2], &r[i * 4 + 3]);
    std::memcpy(brand, r, 48);
    // trim leading/trailing spaces
    char* s = brand;
    while (*s == ' ') ++s;
    std::memmove(brand, s, std::strlen(s) + 1);
    for (int i = (int)std::strlen(brand) - 1; i >= 0 && brand[i] == ' '; --i) brand[i] = 0;
  }
#endif
  if (!brand[0]) std::strcpy(brand, "unknown");
  return brand;
}

}  // namespace ty::cpu
