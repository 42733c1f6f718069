// The error type and assertions every layer (kernels, model, tokenizer, runtime, tools) shares:
// below all of them, so none depends on another for these.
//
// Recoverable errors (bad files, bad arguments, a full context) throw mxlm::Error with a code
// and a message that names the object and the values found (and the limit). Kernels never
// throw: they only use MXLM_DASSERT. MXLM_ASSERT is always on and aborts with file:line.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace mxlm {

enum class ErrorCode : int {
  kInvalidArgument = 1,  // a bad option or argument from the caller
  kIo = 2,               // a file could not be opened, read or written
  kFormat = 3,           // a model/tokenizer file is corrupt, truncated or of an unknown kind
  kUnsupported = 4,      // a valid input that this build does not support (architecture, dtype)
  kContextFull = 5,      // the prompt or generation does not fit the context
  kInternal = 6,
};

class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
  ErrorCode code() const { return code_; }

 private:
  ErrorCode code_;
};

[[noreturn]] inline void assert_fail(const char* expr, const char* file, int line) {
  std::fprintf(stderr, "mxlm: assertion failed: %s at %s:%d\n", expr, file, line);
  std::abort();
}

}  // namespace mxlm

#define MXLM_ASSERT(cond) \
  ((cond) ? static_cast<void>(0) : ::mxlm::assert_fail(#cond, __FILE__, __LINE__))
#ifdef NDEBUG
#define MXLM_DASSERT(cond) static_cast<void>(0)
#else
#define MXLM_DASSERT(cond) MXLM_ASSERT(cond)
#endif
