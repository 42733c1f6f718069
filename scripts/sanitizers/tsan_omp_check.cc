// Self-check of the TSan setup in scripts/test_sanitize.sh (clang++ -fsanitize=thread -fopenmp,
// LLVM libomp + archer). Run with argument "race": one unsynchronized += from every thread of an
// omp parallel for, which TSan must report. Without an argument: only correctly synchronized
// OpenMP (disjoint writes, a reduction, a critical section, reads after the implicit barrier),
// which must run clean: if libomp's barriers were invisible to TSan (archer not loaded) this
// would report false races, and the real run's silence would mean nothing.
#include <cstdio>
#include <cstring>
#include <vector>

int main(int argc, char** argv) {
  const bool race = argc > 1 && std::strcmp(argv[1], "race") == 0;
  std::vector<float> in(4096, 1.0f), out(4096);
  float sum = 0, crit = 0;
#pragma omp parallel
  {
#pragma omp for
    for (int i = 0; i < 4096; ++i) out[i] = 2 * in[i];
#pragma omp for reduction(+ : sum)
    for (int i = 0; i < 4096; ++i) sum += out[4095 - i];  // written by other threads before the barrier
#pragma omp critical
    crit += 1;
  }
  float racy = 0;
  if (race) {
#pragma omp parallel for
    for (int i = 0; i < 4096; ++i) racy += in[i];
  }
  std::printf("sum %g, threads counted %g, racy %g\n", sum, crit, racy);
  return crit >= 2 ? 0 : 3;  // 3: fewer than two threads ran, nothing was checked
}
