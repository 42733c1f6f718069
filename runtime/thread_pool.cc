#include "runtime/thread_pool.h"

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <chrono>
#include <climits>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace mxlm {

namespace {

// How long a worker spins for the next region before it sleeps. Inside a decoded token the
// gaps between regions are a few microseconds (norms, RoPE, the residual adds); between tokens
// (sampling, the caller's own work) they can be long, and a sleeping worker costs nothing.
constexpr int64_t kSpinNs = 100'000;

// Sleeps while *word == expected (the kernel checks atomically: no wake-up is lost), and wakes
// every sleeper. (libstdc++ 12's std::atomic::wait lost wake-ups here: a worker slept through a
// region's notify_all and the caller waited for it forever.)
void futex_wait(std::atomic<uint32_t>* word, uint32_t expected) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAIT_PRIVATE, expected, nullptr, nullptr, 0);
}
void futex_wake_all(std::atomic<uint32_t>* word) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr, nullptr, 0);
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#elif defined(__aarch64__)
  __asm__ volatile("yield");
#endif
}

}  // namespace

ThreadPool::ThreadPool(int n_threads) : n_threads_(n_threads < 1 ? 1 : n_threads), busy_(new Busy[size_t(n_threads_)]) {
  workers_.reserve(size_t(n_threads_ - 1));
  for (int t = 1; t < n_threads_; ++t) workers_.emplace_back([this, t] { work(t); });
}

ThreadPool::~ThreadPool() {
  stop_.store(true, std::memory_order_relaxed);
  gen_.fetch_add(1, std::memory_order_seq_cst);
  futex_wake_all(&gen_);
  for (std::thread& w : workers_) w.join();
}

void ThreadPool::set_timing(bool on) {
  timing_ = on;
  for (int t = 0; t < n_threads_; ++t) busy_[t].s = 0;
}

double ThreadPool::busy_seconds() const {
  double s = 0;
  for (int t = 0; t < n_threads_; ++t) s += busy_[t].s;
  return s;
}

void ThreadPool::add_busy(int thread, std::chrono::steady_clock::time_point t0) {
  busy_[thread].s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void ThreadPool::claim(int thread) {
  // timing_ is written only between regions: the region's publication (gen_) orders it.
  std::chrono::steady_clock::time_point t0{};
  int t = next_.fetch_add(1, std::memory_order_relaxed);
  if (t >= n_tasks_) return;
  if (timing_) t0 = std::chrono::steady_clock::now();
  for (; t < n_tasks_; t = next_.fetch_add(1, std::memory_order_relaxed)) call_(ctx_, t, thread);
  if (timing_) add_busy(thread, t0);
}

void ThreadPool::dispatch(int n_tasks, Call call, void* ctx) {
  call_ = call;
  ctx_ = ctx;
  n_tasks_ = n_tasks;
  next_.store(0, std::memory_order_relaxed);
  finished_.store(0, std::memory_order_relaxed);
  // Publishes the job. seq_cst with the sleepers' count (work): either this load sees a worker's
  // increment and wakes it, or that worker's futex finds gen_ already bumped and does not sleep.
  gen_.fetch_add(1, std::memory_order_seq_cst);
  if (sleepers_.load(std::memory_order_seq_cst) > 0) futex_wake_all(&gen_);
  claim(0);
  // The workers' task writes happen before their finished_ increments, which these acquire
  // loads see: the caller may read every output after run() returns. Spin, then sleep: on an
  // oversubscribed machine (two test processes on two cores) a worker may wait for a core, and a
  // caller spinning through its time slice would keep it from one.
  const int workers = n_threads_ - 1;
  const auto t0 = std::chrono::steady_clock::now();
  int spins = 0;
  for (int f; (f = finished_.load(std::memory_order_acquire)) < workers;) {
    cpu_relax();
    if (++spins % 256 == 0 &&
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count() > kSpinNs) {
      caller_sleeps_.store(1, std::memory_order_seq_cst);
      futex_wait(&finished_, uint32_t(f));  // returns at once if a worker finished meanwhile
      caller_sleeps_.store(0, std::memory_order_seq_cst);
    }
  }
}

void ThreadPool::work(int thread) {
  // Generation 0 is the pool's start, not whatever gen_ reads when this thread gets going: a
  // region may already have been published (reading gen_ here once lost it: a deadlock).
  uint32_t seen = 0;
  for (;;) {
    // Spin for the next region, then sleep until it is published.
    const auto t0 = std::chrono::steady_clock::now();
    uint32_t g;
    int spins = 0;
    while ((g = gen_.load(std::memory_order_acquire)) == seen) {
      cpu_relax();
      if (++spins % 256 == 0 &&
          std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count() > kSpinNs) {
        sleepers_.fetch_add(1, std::memory_order_seq_cst);
        futex_wait(&gen_, seen);
        sleepers_.fetch_sub(1, std::memory_order_seq_cst);
      }
    }
    seen = g;
    if (stop_.load(std::memory_order_relaxed)) return;
    claim(thread);
    // seq_cst with caller_sleeps_, as gen_ with sleepers_ (dispatch).
    finished_.fetch_add(1, std::memory_order_seq_cst);
    if (caller_sleeps_.load(std::memory_order_seq_cst)) futex_wake_all(&finished_);
  }
}

}  // namespace mxlm
