// Shared pieces of the libFuzzer targets.
//
// The contract every parser is fuzzed against: any input either parses or throws mxlm::Error.
// Anything else (a crash, a sanitizer report, another exception type escaping such as a
// nlohmann or std::length_error, an allocation beyond libFuzzer's -malloc_limit_mb, a hang) is a
// finding. So the targets catch mxlm::Error only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "base/error.h"
#include "model/import.h"

namespace mxlm::fuzz {

// Runs fn; an mxlm::Error is an expected outcome and is swallowed.
template <typename Fn>
void expect_parse_or_error(Fn&& fn) {
  try {
    fn();
  } catch (const Error&) {
  }
}

// Reads every byte of [p, p + n) so that AddressSanitizer checks a range a parser handed out
// (a pointer into the input must lie inside it). Returns a value so the reads are kept.
inline unsigned touch(const uint8_t* p, size_t n) {
  unsigned acc = 0;
  for (size_t i = 0; i < n; ++i) acc += p[i];
  return acc;
}

// Reads the first and the last row of every tensor of an imported model: a row's bytes, as the
// importer located them, must lie inside the input.
inline void read_edge_rows(const ImportedModel& m) {
  std::vector<float> row;
  for (const SourceTensor& t : m.tensors) {
    const int64_t rows = t.shape.size() == 2 ? t.shape[0] : 1;
    row.resize(static_cast<size_t>(t.shape.back()));
    read_source_row(t, 0, row.data());
    read_source_row(t, rows - 1, row.data());
  }
}

// The shared data folder: $MXLM_SHARED, else the default configured at build time.
inline std::string shared_path(const std::string& rel) {
  const char* env = std::getenv("MXLM_SHARED");
  return std::string(env && *env ? env : MXLM_SHARED_DEFAULT) + "/" + rel;
}

// Fails the run loudly (a finding) when an invariant of a successful parse does not hold.
#define MXLM_FUZZ_CHECK(cond)                                                        \
  do {                                                                               \
    if (!(cond)) {                                                                   \
      std::fprintf(stderr, "fuzz invariant failed: %s at %s:%d\n", #cond, __FILE__, __LINE__); \
      std::abort();                                                                  \
    }                                                                                \
  } while (0)

}  // namespace mxlm::fuzz
