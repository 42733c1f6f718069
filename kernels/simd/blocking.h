// Cache blocking shared by the float GEMMs of kernels/simd/f32_kernels.cc (x86) and
// neon_kernels.cc: weight rows are taken in blocks of about kWeightBlockBytes, a block stays in
// L2 while every MR-row tile of the activations streams over it (the MR x K activation tile
// itself stays in L1).
#pragma once

#include <cstddef>

namespace mxlm {

constexpr size_t kWeightBlockBytes = size_t{256} << 10;

// Rows per block for rows [n0, n1) of row_bytes each: as many as fit kWeightBlockBytes (all of
// them when fewer), rounded down to a multiple of the tile's nr rows, at least nr.
constexpr int weight_block_rows(int n0, int n1, size_t row_bytes, int nr) {
  const size_t fit = kWeightBlockBytes / (row_bytes > 0 ? row_bytes : 1);
  const int rows = fit > static_cast<size_t>(n1 - n0) ? n1 - n0 : static_cast<int>(fit);
  const int tiled = rows / nr * nr;
  return tiled > nr ? tiled : nr;
}

}  // namespace mxlm
