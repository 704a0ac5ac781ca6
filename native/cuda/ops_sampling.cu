// Tachyon CUDA backends: the sampling family (argmax, top-k / top-p / min-p) (see launch.h).
// Compiled by nvcc for `cuda` and, through native/cuda/emu/ops_sampling.cpp, by g++ against cuemu.
#include <cstddef>
#include <cstring>

#include "kernels/sampling.cuh"
#include "launch.h"

namespace ty {
namespace cuda {
inline namespace TY_CUDA_BUILD {

// The launcher uploads SampleParamRow (launch.h, no kernel header needed there); the kernel reads
// SampleRow. They must be the same bytes.
static_assert(sizeof(SampleParamRow) == sizeof(SampleRow), "SampleParamRow must mirror SampleRow");
static_assert(offsetof(SampleParamRow, temperature) == offsetof(SampleRow, temperature) &&
                  offsetof(SampleParamRow, top_p) == offsetof(SampleRow, top_p) &&
                  offsetof(SampleParamRow, min_p) == offsetof(SampleRow, min_p) &&
                  offsetof(SampleParamRow, u) == offsetof(SampleRow, u) &&
                  offsetof(SampleParamRow, top_k) == offsetof(SampleRow, top_k),
              "SampleParamRow must mirror SampleRow");

Status sample_params_host_check(const SampleParamRow* host, int64_t rows) {
  Status st = sample_params_check(reinterpret_cast<const SampleRow*>(host), rows);
  if (!st.ok) {
    // The kernel header names the C++ fields; the op's callers know the TS names.
    static const char* const names[][2] = {{"top_k", "topK"}, {"top_p", "topP"}, {"min_p", "minP"}};
    for (const auto& n : names) {
      const size_t at = st.arg.find(n[0]);
      if (at != std::string::npos) st.arg.replace(at, std::strlen(n[0]), n[1]);
    }
  }
  return st;
}

Status launch_sample(DType dtype, int64_t rows, int64_t vocab, const void* logits, const SampleParamRow* params, int32_t* token,
                     float* logprob, unsigned long long* err, stream_t s, const DeviceLimits& lim) {
  if (!params) {
    ArgmaxArgs a;
    a.dtype = dtype;
    a.rows = rows;
    a.vocab = vocab;
    a.ld = vocab;
    a.logits = logits;
    a.token = token;
    a.logprob = logprob;
    return argmax(a, err, s, lim);
  }
  SampleArgs a;
  a.dtype = dtype;
  a.rows = rows;
  a.vocab = vocab;
  a.ld = vocab;
  a.logits = logits;
  a.params = reinterpret_cast<const SampleRow*>(params);
  a.token = token;
  a.logprob = logprob;
  return sample(a, err, s, lim);
}

}  // namespace TY_CUDA_BUILD
}  // namespace cuda
}  // namespace ty
