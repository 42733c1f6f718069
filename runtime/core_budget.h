// The cores of the machine, shared by every Context of the process.
//
// Each Context runs its own pool of n_threads (runtime/thread_pool.h). Apps that evaluate several
// contexts on several threads at once (the C API allows any number) would otherwise run
// sum(n_threads) busy threads on fewer cores: every parallel region then waits for its slowest,
// descheduled thread, and all of them slow down together. So each evaluated batch leases its
// threads' cores here first (Context::eval), and a lease waits while the process's running
// leases hold all the cores. Leases are granted in the order they were asked for, so a large one
// is not starved by a stream of small ones. A lease is never held while user code runs (the
// token callbacks of generation run between batches).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <mutex>

namespace mxlm {

class CoreBudget {
 public:
  // The process's budget: one core per processor omp_get_num_procs() counts.
  static CoreBudget& process();
  explicit CoreBudget(int cores);
  int cores() const { return cores_; }
  // Blocks until min(n, cores()) cores are free and every earlier request was granted; returns
  // the cores granted.
  int acquire(int n);
  void release(int granted);
  int in_use() const;

 private:
  const int cores_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  int used_ = 0;
  uint64_t next_ticket_ = 0, serving_ = 0;
};

// A lease of n threads' cores for a scope.
class CoreLease {
 public:
  CoreLease(CoreBudget& budget, int n) : budget_(budget), granted_(budget.acquire(n)) {}
  ~CoreLease() { budget_.release(granted_); }
  CoreLease(const CoreLease&) = delete;
  CoreLease& operator=(const CoreLease&) = delete;

 private:
  CoreBudget& budget_;
  int granted_;
};

}  // namespace mxlm
