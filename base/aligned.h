// A std::vector allocator aligned to the cache line: buffers that threads write in parallel
// (a matmul's output rows, split into row ranges per task) then share no line between tasks
// whose ranges start at multiples of 16 floats. std::vector's default (malloc: 16 bytes, and for
// large buffers an mmap'd chunk 16 bytes past a page) put every such boundary inside a line.
#pragma once

#include <cstddef>
#include <new>
#include <vector>

namespace mxlm {

template <class T>
struct CacheAligned {
  using value_type = T;
  static constexpr std::align_val_t kAlign{64};
  CacheAligned() = default;
  template <class U>
  CacheAligned(const CacheAligned<U>&) {}
  T* allocate(size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), kAlign)); }
  void deallocate(T* p, size_t) { ::operator delete(p, kAlign); }
  template <class U>
  bool operator==(const CacheAligned<U>&) const { return true; }
};

template <class T>
using AlignedVector = std::vector<T, CacheAligned<T>>;

}  // namespace mxlm
