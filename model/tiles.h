// Tiled passes over k × k matrices (the quantizer's statistics: model/encode.cc's checks,
// copies and transposes of H, runtime/calibrate.cc's symmetrize): a tile of kTile × kTile keeps
// both its rows and its columns in cache, where a column walk over a 5632-wide double matrix
// takes a cache miss per element, and the tiles spread over threads. On one thread these passes
// left the second core idle for seconds per layer while the quantizer wrote a TinyLlama-shaped
// model (README).
#pragma once

#include <algorithm>
#include <cstdint>

namespace mxlm {

constexpr int64_t kTile = 64;

// fn(i0, i1, j0, j1) on every tile of a k × k matrix (lower: only the tiles with j0 <= i0),
// the tile rows spread over nt threads. Tiles are disjoint: fn may write its tile (and, for
// lower, the mirrored one) without synchronization.
template <class F>
void for_each_tile(int64_t k, int nt, bool lower, const F& fn) {
  const int64_t nb = (k + kTile - 1) / kTile;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1)
  for (int64_t bi = 0; bi < nb; ++bi) {
    const int64_t i0 = bi * kTile, i1 = std::min(k, i0 + kTile);
    for (int64_t bj = 0; bj <= (lower ? bi : nb - 1); ++bj) fn(i0, i1, bj * kTile, std::min(k, bj * kTile + kTile));
  }
}

}  // namespace mxlm
