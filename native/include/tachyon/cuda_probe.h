// Tachyon: what the CUDA backend reports about itself. Implemented in
// native/cuda/backend.cu when the build includes CUDA, else by a fallback in the binding.
#pragma once
#include <cstddef>

extern "C" {
// Returns the number of usable CUDA devices (0 if none); on 0 writes why into `reason`.
int ty_cuda_device_count(char* reason, size_t reason_len);
// Comma-separated SM archs compiled into this binary, e.g. "80,89,90".
const char* ty_cuda_archs(void);
}
