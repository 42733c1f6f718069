// A Context's worker threads: persistent, woken per parallel region, spinning briefly between
// regions before they sleep.
//
// Why not OpenMP here: decode runs ~8 parallel regions per layer (~180 per token for a 22-layer
// model) of 10-500 us each, so the cost of waking a team shows. With libgomp's passive wait
// policy (OMP_WAIT_POLICY=passive, which the test scripts set for a shared machine) every region
// sleeps and wakes through futexes: TinyLlama-1.1B q4_g32 decoded at 25-27 tok/s on 2 threads
// against 41-43 under the default policy, and at 37-42 / 40-44 with this pool (alternating runs
// on a Zen 3 host; README, Speed). The workers spin for up to 100 us after a region (the gaps
// inside a token are microseconds), then sleep on a futex, so an idle Context costs no CPU
// whatever the OpenMP settings; the caller waits for the workers the same way.
//
// The caller is thread 0 and takes tasks too. Tasks are claimed one at a time from a shared
// counter (dynamic scheduling: on a shared machine a descheduled thread's tasks go to the
// others). Work must not throw.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <thread>
#include <type_traits>
#include <vector>

namespace mxlm {

class ThreadPool {
 public:
  // n_threads - 1 workers (none for 1).
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Busy time (Context's phase profile): with timing on, each thread adds the time from taking
  // a region's first task to finishing its last (two clock reads per thread and region);
  // busy_seconds() is the sum over threads since timing was switched on. Read it between runs.
  void set_timing(bool on);
  double busy_seconds() const;

  // Calls f(task, thread) for every task in [0, n_tasks), thread in [0, size()), and returns when
  // all are done. With one thread or one task it runs on the caller.
  template <class F>
  void run(int n_tasks, F&& f) {
    if (n_tasks <= 0) return;
    if (n_threads_ == 1 || n_tasks == 1) {
      const auto t0 = timing_ ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point{};
      for (int t = 0; t < n_tasks; ++t) f(t, 0);
      if (timing_) add_busy(0, t0);
      return;
    }
    using Fn = std::remove_reference_t<F>;
    dispatch(n_tasks, [](void* ctx, int task, int thread) { (*static_cast<Fn*>(ctx))(task, thread); },
             const_cast<void*>(static_cast<const void*>(&f)));
  }

 private:
  using Call = void (*)(void* ctx, int task, int thread);
  void dispatch(int n_tasks, Call call, void* ctx);
  void work(int thread);
  void claim(int thread);
  void add_busy(int thread, std::chrono::steady_clock::time_point t0);

  int n_threads_;
  std::vector<std::thread> workers_;
  // The job of the current region, published by gen_.
  Call call_ = nullptr;
  void* ctx_ = nullptr;
  int n_tasks_ = 0;
  alignas(64) std::atomic<uint32_t> gen_{0};   // bumped per region (and at shutdown)
  alignas(64) std::atomic<int> next_{0};       // the next unclaimed task
  alignas(64) std::atomic<uint32_t> finished_{0};  // workers done with the current region
  std::atomic<int> caller_sleeps_{0};               // the caller waits in futex_wait on finished_
  alignas(64) std::atomic<int> sleepers_{0};   // workers in (or entering) futex_wait
  std::atomic<bool> stop_{false};
  bool timing_ = false;
  struct alignas(64) Busy {
    double s = 0;
  };
  std::unique_ptr<Busy[]> busy_;  // per thread
};

}  // namespace mxlm
