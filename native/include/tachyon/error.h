// Tachyon: error codes shared by every layer. The string form is the stable `code`
// that JavaScript sees on KernelError.
#pragma once
#include <stdexcept>
#include <string>

namespace ty {

enum class Code : int {
  INVALID_ARG = 1,  // E_INVALID_ARG: wrong type / out-of-range value
  SHAPE,            // E_SHAPE: shapes do not agree
  DTYPE,            // E_DTYPE: unsupported or mismatched element type
  DISPOSED,         // E_DISPOSED: object used after dispose()
  OOM,              // E_OOM: allocation failed or exceeds a limit
  BACKEND,          // E_BACKEND: backend missing or unusable
  UNSUPPORTED,      // E_UNSUPPORTED: valid request this build/CPU cannot do
  ABORTED,          // E_ABORTED: work cancelled
  INTERNAL,         // E_INTERNAL: a bug in Tachyon
};

inline const char* code_name(Code c) {
  switch (c) {
    case Code::INVALID_ARG: return "E_INVALID_ARG";
    case Code::SHAPE: return "E_SHAPE";
    case Code::DTYPE: return "E_DTYPE";
    case Code::DISPOSED: return "E_DISPOSED";
    case Code::OOM: return "E_OOM";
    case Code::BACKEND: return "E_BACKEND";
    case Code::UNSUPPORTED: return "E_UNSUPPORTED";
    case Code::ABORTED: return "E_ABORTED";
    case Code::INTERNAL: return "E_INTERNAL";
  }
  return "E_INTERNAL";
}

// Thrown by validation (on the JS thread) and by kernels (on a stream thread, where it
// poisons the stream). `arg` names the offending argument, if any.
struct Error : std::runtime_error {
  Code code;
  std::string arg;
  Error(Code c, std::string message, std::string argument = {})
      : std::runtime_error(std::move(message)), code(c), arg(std::move(argument)) {}
};

}  // namespace ty
