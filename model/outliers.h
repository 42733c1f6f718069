// Sparse outliers (the idea of SpQR, Dettmers et al. 2023): a few weights of a quantized tensor
// get an exact correction, stored apart from the dense rows as f16 values in CSR by output row
// (the file's "outliers" part, model/mxlm_file.h) and added after the dense product.
//
// Which weights. With the dense encoding fixed, ΔW = dequant(bytes) − W and g = H Δwᵣᵀ for a row
// r, the row's output error Δwᵣ H Δwᵣᵀ as a function of one correction o added at column i,
// Δwᵣ + o·uᵢ, is  J + 2·o·gᵢ + o²·Hᵢᵢ:  the best o = −gᵢ / Hᵢᵢ (rounded to f16) lowers it by
// gain = −2·o·gᵢ − o²·Hᵢᵢ ≈ gᵢ² / Hᵢᵢ. All outliers cost the same bytes (an int32 column and an f16
// value, plus the tensor's row pointers once), so the error reduction per byte orders them by
// gain. The picks are greedy: after each, g = H Δwᵣᵀ is updated (one axpy with H's row i), so a
// later pick in the row accounts for the earlier ones (matching pursuit); a column is picked at
// most once per row. Rows are independent given H: each row's sequence is computed alone (up to
// a cap) and the rows' sequences are merged by gain, which is the global greedy order while no
// row reaches its cap. The first m picks of that order are the best m-outlier set it knows, so
// one call gives the error at every outlier count (the allocator's candidates).
//
// This corrects the dense encoding; it does not re-fit the group scales without the outlier
// weights (SpQR's other half), so a group with a large weight keeps the wider scale its search
// chose (the scale searches minimize the importance-weighted error and clip where that wins).
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/qtype.h"
#include "model/encode.h"

namespace mxlm {

// A tensor's outliers in CSR by output row: row_ptr of n + 1 entries (empty when nnz = 0).
struct SparseOutliers {
  std::vector<int32_t> row_ptr, cols;
  std::vector<uint16_t> values;  // f16, added to the dense product's weights
  int64_t nnz() const { return static_cast<int64_t>(cols.size()); }
};

// Bytes the file stores for nnz outliers of an n-row tensor (row pointers, columns, values),
// before the 4-byte alignment of the part: 0 when nnz = 0.
inline uint64_t outlier_bytes(int64_t n, int64_t nnz) {
  return nnz > 0 ? 4 * uint64_t(n + 1) + 6 * uint64_t(nnz) : 0;
}

// The greedy picks of a tensor, best first.
struct OutlierPicks {
  int64_t n = 0, k = 0;
  std::vector<int32_t> row, col;
  std::vector<uint16_t> value;  // f16
  std::vector<double> gain;     // each pick's error reduction (non-increasing over the merge)
  int64_t size() const { return static_cast<int64_t>(row.size()); }
  // Σ gain of the first m picks (m clamped to size()).
  double gain_of_first(int64_t m) const;
  // The first m picks (m clamped to size()) in CSR (columns ascending within a row).
  SparseOutliers first(int64_t m) const;
};

// Picks up to max_nnz outliers of the encoding `bytes` (format t) of W [n][k] against the
// prepared H of the layer's input (encode.h): the greedy order above, each row at most
// row_cap picks (0: max(16, 4 × ceil(max_nnz / n)), at most k). Dead inputs (H_ii = 0) are never
// picked. Deterministic for any thread count (threads 0: all cores). Throws Error
// (kInvalidArgument) for bad shapes, a null pointer, a non-finite weight or max_nnz < 0.
OutlierPicks pick_outliers(QType t, const uint8_t* bytes, const float* w, int64_t n, int64_t k, const OutputErrorH& h,
                           int64_t max_nnz, int64_t row_cap = 0, int threads = 0);

// Adds outliers to dequantized rows: w[r][col] += value (w: n × k row-major, as W).
void add_outliers(const SparseOutliers& o, int64_t n, int64_t k, float* w);

}  // namespace mxlm
