// Tachyon CPU backend: instruction-set variants and runtime dispatch.
//
// Hot kernels live in "variant" translation units (native/cpu/kernels/*.cpp, listed under
// "cpu_variant" in native/sources.json). Each is compiled three times: with
// -DTY_ISA=scalar (baseline x86-64 / any arch), -DTY_ISA=avx2 (-mavx2 -mfma -mf16c) and
// -DTY_ISA=avx512 (F/BW/VL/DQ/VNNI/BF16/VBMI). Everything a variant TU defines must sit
// inside `namespace ty::cpu::TY_ISA { ... }` (use TY_VARIANT_BEGIN/END), so the three
// copies never collide and the linker can never swap an AVX-512 copy into the scalar
// path. Headers included by variant TUs must only define `static inline` functions or
// put their definitions inside the variant namespace too.
//
// Dispatch: non-variant code calls TY_DISPATCH(isa, fn)(args...), which picks
// ty::cpu::{scalar,avx2,avx512}::fn according to the runtime's selected ISA.
#pragma once
#include <cstdint>

namespace ty::cpu {

enum class Isa : int { scalar = 0, avx2 = 1, avx512 = 2 };

const char* isa_name(Isa isa);
// Best ISA this CPU and OS support (cpuid + xgetbv), ignoring any override.
Isa isa_detected();
// Parses "scalar" | "avx2" | "avx512"; returns false on anything else.
bool isa_parse(const char* s, Isa* out);
// Human-readable CPU brand string.
const char* cpu_brand();

}  // namespace ty::cpu

#define TY_VARIANT_BEGIN namespace ty { namespace cpu { namespace TY_ISA {
#define TY_VARIANT_END } } }

// Declare `ret name(params)` in all three variant namespaces.
#define TY_DECLARE_VARIANTS(ret, name, params)   \
  namespace ty::cpu::scalar { ret name params; } \
  namespace ty::cpu::avx2 { ret name params; }   \
  namespace ty::cpu::avx512 { ret name params; }

#define TY_DISPATCH(isa, name)                                  \
  ((isa) == ::ty::cpu::Isa::avx512 ? &::ty::cpu::avx512::name   \
   : (isa) == ::ty::cpu::Isa::avx2 ? &::ty::cpu::avx2::name     \
                                   : &::ty::cpu::scalar::name)
