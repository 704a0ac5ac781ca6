// Tachyon CPU kernels (ISA variant): elementwise binary ops and the SwiGLU gate.
//   binary:   out = a (+|*) b, b same shape or one row broadcast over every row
//   silu_mul: out = silu(gate) * up, silu(g) = g / (1 + e^-g)
// Both are streaming kernels: the flat element range is cut into chunks of av::kGrain
// elements (one task for small inputs). f16/bf16 are converted to f32, computed, and
// rounded once on store. out may alias an input (each element is read before written).
#include "act_vec.h"
#include "kernels.h"

TY_VARIANT_BEGIN
namespace {

using namespace av;

template <BinaryOp OP>
inline vf bop(vf a, vf b) { return OP == BinaryOp::add ? vadd(a, b) : vmul(a, b); }

// out[o + k] = a[ia + k] op b[ib + k] for k in [0, n)
template <DType T, BinaryOp OP>
void binary_span(const void* a, const void* b, void* out, int64_t ia, int64_t ib, int64_t n) {
  a = at<T>(a, ia);
  b = at<T>(b, ib);
  out = at<T>(out, ia);
  int64_t j = 0;
  for (; j + VL <= n; j += VL) vst<T>(out, j, bop<OP>(vld<T>(a, j), vld<T>(b, j)));
  if (j < n) {
    const int r = (int)(n - j);
    vst_n<T>(out, j, bop<OP>(vld_n<T>(a, j, r), vld_n<T>(b, j, r)), r);
  }
}

template <DType T, BinaryOp OP>
void binary_t(const BinaryArgs& args, Parallel& par) {
  const int64_t total = args.rows * args.cols, cols = args.cols;
  par_chunks(par, total, kGrain, [&](int64_t s, int64_t e, int) {
    if (!args.b_row_bcast) {
      binary_span<T, OP>(args.a, args.b, args.out, s, s, e - s);
      return;
    }
    while (s < e) {  // walk row segments of the chunk
      const int64_t c = s % cols, len = (cols - c < e - s) ? cols - c : e - s;
      binary_span<T, OP>(args.a, args.b, args.out, s, c, len);
      s += len;
    }
  });
}

// silu(g) = g * sigmoid(g) with e = exp(-|g|), which never overflows:
//   g >= 0: g / (1 + e)   (exactly llama.cpp's g / (1 + expf(-g)))
//   g <  0: g * e / (1 + e)   (llama.cpp's form overflows to -0 below g = -88.7)
inline vf silu_mul_v(vf g, vf u) {
  const vf one = vset(1.0f), e = vexp(vmin(g, vsub(vzero(), g)));
  return vmul(vdiv(vmul(g, vsel_neg(g, e, one)), vadd(one, e)), u);
}

template <DType T>
void silu_mul_t(const SiluMulArgs& args, Parallel& par) {
  par_chunks(par, args.n, kGrain, [&](int64_t s, int64_t e, int) {
    const void* g = at<T>(args.gate, s);
    const void* u = at<T>(args.up, s);
    void* o = at<T>(args.out, s);
    const int64_t n = e - s;
    int64_t j = 0;
    for (; j + VL <= n; j += VL) vst<T>(o, j, silu_mul_v(vld<T>(g, j), vld<T>(u, j)));
    if (j < n) {
      const int r = (int)(n - j);
      vst_n<T>(o, j, silu_mul_v(vld_n<T>(g, j, r), vld_n<T>(u, j, r)), r);
    }
  });
}

}  // namespace

void binary(const BinaryArgs& args, Parallel& par) {
  if (args.rows <= 0 || args.cols <= 0) return;
  with_act_dtype(args.dtype, [&](auto t) {
    constexpr DType T = decltype(t)::value;
    if (args.op == BinaryOp::add) binary_t<T, BinaryOp::add>(args, par);
    else binary_t<T, BinaryOp::mul>(args, par);
  });
}

void silu_mul(const SiluMulArgs& args, Parallel& par) {
  if (args.n <= 0) return;
  with_act_dtype(args.dtype, [&](auto t) { silu_mul_t<decltype(t)::value>(args, par); });
}

TY_VARIANT_END
