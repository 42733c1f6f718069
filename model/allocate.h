// The bit allocator of the mixed-precision quantizer, and the size argument that feeds it.
//
// Allocation is a multiple-choice knapsack: every tensor i ("item") must take exactly one of its
// candidate formats j ("choices"), each with a size b_ij in bytes and a predicted loss l_ij
// (e.g. the sensitivity-weighted quantization error of that tensor in that format):
//
//   minimize  Σ_i l_i,c(i)   subject to   Σ_i b_i,c(i) <= budget.
//
// Method (allocate.cc): the best mix along the Lagrangian relaxation's path as the incumbent,
// then a dynamic program over the bytes above the smallest mix, in buckets of u bytes whose
// states keep exact byte counts (so the result never exceeds the budget), pruned against the
// incumbent with exact lower bounds; both results are polished by a local search and the better
// one wins. u = 1 while the headroom is under 2^18 bytes, which makes small instances exact; the
// answer is never worse than any Lagrangian-feasible mix.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace mxlm {

struct AllocChoice {
  uint64_t bytes = 0;  // the tensor's stored size in this format
  double loss = 0;     // predicted loss in this format (finite; lower is better)
};

struct AllocItem {
  std::string name;                  // for error messages
  std::vector<AllocChoice> choices;  // at least one
};

struct Allocation {
  std::vector<int> choice;  // per item: an index into its choices
  uint64_t bytes = 0;       // Σ chosen bytes (<= budget)
  double loss = 0;          // Σ chosen losses
};

// Minimizes Σ loss over one choice per item subject to Σ bytes <= budget. A dominated choice
// (another one of the same item has no more bytes and no more loss, and is strictly better in
// one) is never picked. Of several equally good choices, the smallest is picked. A budget above
// Σ max bytes just takes every item's lowest-loss choice.
// Throws Error (kInvalidArgument) when an item has no choices or a non-finite loss, when an item
// has more than 255 non-dominated choices, or when budget < Σ min bytes; that message names
// the reachable range "[Σ min bytes, Σ max bytes]".
// Time: at most O(n · 2^18 · choices), far less after pruning: 0.01-0.15 s for 300 items × 15
// choices. Memory: at most 8 Mi DP states (about 40 MB).
Allocation allocate(const std::vector<AllocItem>& items, uint64_t budget);

// Parses a size on the command line (e.g. --size 300M) into bytes:
//   "123456"                      bytes
//   "64K", "300M", "1.5G", "2T"   K/M/G/T = 2^10, 2^20, 2^30, 2^40 bytes (powers of 1024, not 1000)
//   "300MB", "300MiB", "4096B"    the same, with an optional "B" or "iB" after the suffix
// Suffixes are case-insensitive; a fraction needs a suffix and is rounded down to whole bytes.
// Throws Error (kInvalidArgument) naming the accepted forms for anything else: an empty
// string, garbage, a sign, zero bytes, or more than 2^64 - 1 bytes.
uint64_t parse_size_arg(const std::string& s);

}  // namespace mxlm
