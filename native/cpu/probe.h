// Tachyon CPU backend: roofline probe kinds, for ty::ProbeArgs::kind (see kernels.h).
// The probes (native/cpu/kernels/probe.cpp) measure the machine's limits so that every
// benchmark figure can carry its roofline ratio. The caller times one probe() call; the
// call returns the work it did (bytes read, or multiply-accumulates executed).
//
// Numeric values (stable; TypeScript passes them as plain ints):
//   0 = dram_read   bytes read      (sequential read + sum of `bytes` of `buf`, `iters` passes)
//   1 = fma_f32     f32 MACs        (register-resident independent FMA chains)
//   2 = dot_bf16    bf16 MACs       (vdpbf16ps; avx2/scalar run the f32 FMA loop instead)
//   3 = dot_int8    int8 MACs       (vpdpbusd; avx2: vpmaddubsw+vpmaddwd; scalar: int loop)
#pragma once

namespace ty {

enum class ProbeKind : int { dram_read = 0, fma_f32 = 1, dot_bf16 = 2, dot_int8 = 3 };

}  // namespace ty
