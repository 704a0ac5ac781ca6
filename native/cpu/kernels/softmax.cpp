// Tachyon CPU kernel (ISA variant): row softmax, out[r,:] = softmax(scale * x[r,:]).
//
// Three passes per row (a row of a few thousand columns stays in L1/L2 between them):
//   1. m = the x that maximises scale*x (max x for scale >= 0, min x for scale < 0)
//   2. e_j = exp(scale * (x_j - m)), sum_j e_j accumulated in double; e goes to `out`
//      (f32) or to per-thread scratch (f16/bf16)
//   3. out_j = e_j * (1 / sum), rounded once to the output dtype
// Subtracting m from x before scaling (instead of llama.cpp's scale*x - max(scale*x))
// keeps the exponent argument's relative error at a few ulp even when |x| is huge.
// A row whose every scale*x is -inf (a fully masked row) gives zeros. exp is the
// polynomial av::vexp on AVX2/AVX-512 and libm expf on the scalar path.
#include "act_vec.h"
#include "kernels.h"

TY_VARIANT_BEGIN
namespace {

using namespace av;

template <DType T>
void softmax_row(const void* x, void* out, int64_t n, float scale, float* buf) {
  const bool use_max = !(scale < 0.0f);
  // pass 1
  vf acc = vset(use_max ? -INFINITY : INFINITY);
  int64_t j = 0;
  if (use_max) {
    for (; j + VL <= n; j += VL) acc = vmax(acc, vld<T>(x, j));
    if (j < n) acc = vmax(acc, vkeep(vld_n<T>(x, j, (int)(n - j)), vset(-INFINITY), (int)(n - j)));
  } else {
    for (; j + VL <= n; j += VL) acc = vmin(acc, vld<T>(x, j));
    if (j < n) acc = vmin(acc, vkeep(vld_n<T>(x, j, (int)(n - j)), vset(INFINITY), (int)(n - j)));
  }
  const float m = use_max ? hmax(acc) : hmin(acc);
  if (use_max ? m == -INFINITY : m == INFINITY) {  // every scale*x is -inf
    const vf z = vzero();
    for (j = 0; j + VL <= n; j += VL) vst<T>(out, j, z);
    if (j < n) vst_n<T>(out, j, z, (int)(n - j));
    return;
  }
  // pass 2
  const vf vm = vset(m), vs = vset(scale);
  vd slo = vdzero(), shi = vdzero();
  for (j = 0; j + VL <= n; j += VL) {
    const vf e = vexp(vmul(vs, vsub(vld<T>(x, j), vm)));
    vsum_acc(slo, shi, e);
    vst<DType::f32>(buf, j, e);
  }
  if (j < n) {
    const int r = (int)(n - j);
    const vf e = vkeep(vexp(vmul(vs, vsub(vld_n<T>(x, j, r), vm))), vzero(), r);
    vsum_acc(slo, shi, e);
    vst_n<DType::f32>(buf, j, e, r);
  }
  // pass 3
  const vf inv = vset((float)(1.0 / hsum_d(slo, shi)));
  for (j = 0; j + VL <= n; j += VL) vst<T>(out, j, vmul(vld<DType::f32>(buf, j), inv));
  if (j < n) {
    const int r = (int)(n - j);
    vst_n<T>(out, j, vmul(vld_n<DType::f32>(buf, j, r), inv), r);
  }
}

template <DType T>
void softmax_t(const SoftmaxArgs& a, Parallel& par) {
  const int64_t n = a.cols;
  par_chunks(par, a.rows, rows_per_task(n), [&](int64_t r0, int64_t r1, int th) {
    float* scratch = T == DType::f32 ? nullptr : static_cast<float*>(par.scratch(th, (size_t)n * sizeof(float)));
    for (int64_t r = r0; r < r1; ++r) {
      void* o = at<T>(a.out, r * n);
      softmax_row<T>(at<T>(a.x, r * n), o, n, a.scale, T == DType::f32 ? static_cast<float*>(o) : scratch);
    }
  });
}

}  // namespace

void softmax(const SoftmaxArgs& args, Parallel& par) {
  if (args.rows <= 0 || args.cols <= 0) return;
  with_act_dtype(args.dtype, [&](auto t) { softmax_t<decltype(t)::value>(args, par); });
}

// Test hook (not in kernels.h): y[i] = the exp this variant's softmax uses.
void softmax_exp_probe(const float* x, float* y, int64_t n) {
  using namespace av;
  int64_t j = 0;
  for (; j + VL <= n; j += VL) vst<DType::f32>(y, j, vexp(vld<DType::f32>(x, j)));
  if (j < n) vst_n<DType::f32>(y, j, vexp(vld_n<DType::f32>(x, j, (int)(n - j))), (int)(n - j));
}

TY_VARIANT_END
