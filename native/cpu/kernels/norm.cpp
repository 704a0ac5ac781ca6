// Tachyon CPU kernel (ISA variant): RMS norm.
//   out[r,:] = x[r,:] * scale_r * weight[:],  scale_r = 1 / sqrt(mean(x[r,:]^2) + eps)
// The sum of squares is accumulated in double (as llama.cpp does; the squares are exact
// in double), scale_r is computed in double and rounded to f32 once; then two f32
// multiplies per element (x*scale, then *weight, llama.cpp's order). Rows are split into
// tasks of about av::kGrain elements. out may alias x (a row is fully read first).
#include "act_vec.h"
#include "kernels.h"

TY_VARIANT_BEGIN
namespace {

using namespace av;

template <DType T>
void rms_row(const void* x, const float* w, void* out, int64_t n, float eps) {
  vd lo = vdzero(), hi = vdzero();
  int64_t j = 0;
  for (; j + VL <= n; j += VL) vsq_acc(lo, hi, vld<T>(x, j));
  if (j < n) vsq_acc(lo, hi, vld_n<T>(x, j, (int)(n - j)));
  const double mean = hsum_d(lo, hi) / (double)n;
  const vf s = vset((float)(1.0 / std::sqrt(mean + (double)eps)));
  j = 0;
  if (w) {
    for (; j + VL <= n; j += VL) vst<T>(out, j, vmul(vmul(vld<T>(x, j), s), vld<DType::f32>(w, j)));
    if (j < n) {
      const int r = (int)(n - j);
      vst_n<T>(out, j, vmul(vmul(vld_n<T>(x, j, r), s), vld_n<DType::f32>(w, j, r)), r);
    }
  } else {
    for (; j + VL <= n; j += VL) vst<T>(out, j, vmul(vld<T>(x, j), s));
    if (j < n) {
      const int r = (int)(n - j);
      vst_n<T>(out, j, vmul(vld_n<T>(x, j, r), s), r);
    }
  }
}

template <DType T>
void rms_norm_t(const RmsNormArgs& a, Parallel& par) {
  const int64_t n = a.cols;
  par_chunks(par, a.rows, rows_per_task(n), [&](int64_t r0, int64_t r1, int) {
    for (int64_t r = r0; r < r1; ++r) rms_row<T>(at<T>(a.x, r * n), a.weight, at<T>(a.out, r * n), n, a.eps);
  });
}

}  // namespace

void rms_norm(const RmsNormArgs& args, Parallel& par) {
  if (args.rows <= 0 || args.cols <= 0) return;
  with_act_dtype(args.dtype, [&](auto t) { rms_norm_t<decltype(t)::value>(args, par); });
}

TY_VARIANT_END
