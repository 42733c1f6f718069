// CoreBudget: see runtime/core_budget.h.
#include "runtime/core_budget.h"

#include <omp.h>

#include <algorithm>

namespace mxlm {

CoreBudget& CoreBudget::process() {
  static CoreBudget budget(omp_get_num_procs());
  return budget;
}

CoreBudget::CoreBudget(int cores) : cores_(std::max(1, cores)) {}

int CoreBudget::acquire(int n) {
  const int want = std::clamp(n, 1, cores_);
  std::unique_lock<std::mutex> lock(mu_);
  const uint64_t ticket = next_ticket_++;
  cv_.wait(lock, [&] { return serving_ == ticket && used_ + want <= cores_; });
  used_ += want;
  ++serving_;
  lock.unlock();
  cv_.notify_all();  // the next ticket may fit too
  return want;
}

void CoreBudget::release(int granted) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    used_ -= granted;
  }
  cv_.notify_all();
}

int CoreBudget::in_use() const {
  std::lock_guard<std::mutex> lock(mu_);
  return used_;
}

}  // namespace mxlm
