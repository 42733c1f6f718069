// Helpers shared by the kernel benchmarks (one binary, mxlm_bench_kernels).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>

namespace mxlm::bench {

// Weight bytes a decode benchmark rotates through so that every call reads from DRAM.
inline constexpr size_t kRotateBytes = size_t{64} << 20;  // > L3 (32 MiB) with margin

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};
using Buffer = std::unique_ptr<uint8_t[], FreeDeleter>;

// 64-byte aligned, like tensors in an mmap'ed .mxlm file.
inline Buffer alloc_aligned(size_t bytes) {
  const size_t rounded = (bytes + 63) / 64 * 64;
  return Buffer(static_cast<uint8_t*>(std::aligned_alloc(64, rounded == 0 ? 64 : rounded)));
}

}  // namespace mxlm::bench
