// The Context's thread pool (runtime/thread_pool.h): every task runs exactly once per region,
// on a thread index in range, and regions follow each other without a lost wake-up, whether
// the workers are still spinning or already asleep.
#include "runtime/thread_pool.h"

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace mxlm {
namespace {

void check_region(ThreadPool& pool, int n_tasks) {
  std::vector<std::atomic<int>> hits(static_cast<size_t>(n_tasks));
  std::atomic<int> bad_thread{0};
  pool.run(n_tasks, [&](int task, int thread) {
    hits[size_t(task)].fetch_add(1, std::memory_order_relaxed);
    if (thread < 0 || thread >= pool.size()) bad_thread.fetch_add(1, std::memory_order_relaxed);
  });
  for (int t = 0; t < n_tasks; ++t) ASSERT_EQ(hits[size_t(t)].load(), 1) << "task " << t << " of " << n_tasks;
  ASSERT_EQ(bad_thread.load(), 0);
}

TEST(ThreadPool, EveryTaskOnceInManyRegions) {
  for (int threads : {1, 2, 3, 5}) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.size(), threads);
    pool.run(0, [](int, int) { FAIL() << "no task to run"; });
    for (int region = 0; region < 3000; ++region) check_region(pool, 1 + region % 37);
  }
  ThreadPool clamped(0);
  EXPECT_EQ(clamped.size(), 1);
}

// Gaps longer than the workers' spin: each region finds them asleep on the futex.
TEST(ThreadPool, WakesSleepingWorkers) {
  ThreadPool pool(3);
  for (int region = 0; region < 20; ++region) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    check_region(pool, 16);
  }
}

// Work done by the workers is visible to the caller when run() returns (no atomics in it).
TEST(ThreadPool, OutputsAreVisibleAfterRun) {
  ThreadPool pool(2);
  std::vector<int> out(4096);
  for (int round = 0; round < 200; ++round) {
    pool.run(int(out.size()) / 64, [&](int task, int) {
      for (int i = task * 64; i < task * 64 + 64; ++i) out[size_t(i)] = round + i;
    });
    for (size_t i = 0; i < out.size(); ++i) ASSERT_EQ(out[i], round + int(i));
  }
}

// A pool made and dropped at once (workers that never saw a region, or not started yet).
TEST(ThreadPool, CreatedAndDestroyedAtOnce) {
  for (int i = 0; i < 50; ++i) {
    ThreadPool pool(4);
    if (i % 2) check_region(pool, 8);
  }
}

// Timing (Context's phase profile): each thread's time in a region's tasks adds up, within the
// region's wall time times the threads; a single task runs on the caller and counts too; timing
// off adds nothing, and switching it clears the sum.
TEST(ThreadPool, TimingSumsEachThreadsTimeInTasks) {
  using clock = std::chrono::steady_clock;
  ThreadPool pool(2);
  auto nap = [](int, int) { std::this_thread::sleep_for(std::chrono::milliseconds(5)); };
  pool.run(4, nap);
  EXPECT_EQ(pool.busy_seconds(), 0.0) << "timing is off by default";
  pool.set_timing(true);
  const auto t0 = clock::now();
  pool.run(4, nap);
  pool.run(1, nap);
  const double wall = std::chrono::duration<double>(clock::now() - t0).count();
  const double busy = pool.busy_seconds();
  EXPECT_GE(busy, 5 * 0.005);
  EXPECT_LE(busy, 2 * wall + 1e-3);
  pool.set_timing(false);
  EXPECT_EQ(pool.busy_seconds(), 0.0);
  pool.run(4, nap);
  EXPECT_EQ(pool.busy_seconds(), 0.0);
}

}  // namespace
}  // namespace mxlm
