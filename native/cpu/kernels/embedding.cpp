// Tachyon CPU kernel (ISA variant): embedding gather, out[t,:] = table[ids[t],:].
// Same dtype: a row memcpy. Otherwise each element is converted through f32 (exact for
// f16/bf16 -> f32) and rounded once to the output dtype, bit-identical to dtype.h.
// Tokens are split into tasks of about av::kGrain elements.
#include "act_vec.h"
#include "kernels.h"

TY_VARIANT_BEGIN
namespace {

using namespace av;

template <DType TI, DType TO>
void convert_row(const void* src, void* dst, int64_t n) {
  int64_t j = 0;
  for (; j + VL <= n; j += VL) vst<TO>(dst, j, vld<TI>(src, j));
  if (j < n) vst_n<TO>(dst, j, vld_n<TI>(src, j, (int)(n - j)), (int)(n - j));
}

template <DType TI, DType TO>
void embedding_t(const EmbeddingArgs& a, Parallel& par) {
  const int64_t dim = a.dim;
  par_chunks(par, a.tokens, rows_per_task(dim), [&](int64_t t0, int64_t t1, int) {
    for (int64_t t = t0; t < t1; ++t) {
      const void* src = at<TI>(a.table, (int64_t)a.ids[t] * dim);
      void* dst = at<TO>(a.out, t * dim);
      if constexpr (TI == TO) std::memcpy(dst, src, (size_t)(dim * esize<TI>()));
      else convert_row<TI, TO>(src, dst, dim);
    }
  });
}

}  // namespace

void embedding(const EmbeddingArgs& args, Parallel& par) {
  if (args.tokens <= 0 || args.dim <= 0) return;
  with_act_dtype(args.table_dtype, [&](auto ti) {
    with_act_dtype(args.out_dtype, [&](auto to) {
      embedding_t<decltype(ti)::value, decltype(to)::value>(args, par);
    });
  });
}

TY_VARIANT_END
