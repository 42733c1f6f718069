// The key/value cache of one Context (runtime/model.cc): for every layer, the keys and values of
// up to n_ctx positions, both stored row-major per token, [n_ctx][n_kv_heads * head_dim], a
// head's slice at offset head * head_dim of the row.
//
// Why rows per token for values too: a generated token appends one row of each, which a
// block-quantized format (a scale per token and head, or per group of 32) can encode in place;
// the transposed value layout this replaces ([kv_dim][n_ctx], so that P·V ran as a dot-product
// gemm) scattered each token's values over kv_dim cache lines: 4.7 % of a Llama-7B decode token
// at one thread, in the store alone. Attention now reads value rows with kernels' gemm_nn.
//
// Keys are stored after RoPE, so attention reads them as they are. A context shift (dropping
// the oldest positions) re-rotates the kept keys by the position delta: RoPE's rotations compose,
// R(p - d) = R(-d) R(p), so that costs one rotation per kept key, instead of a rotation of
// every key on every token had they been stored before RoPE.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace mxlm {

class KvCache {
 public:
  KvCache(int n_layers, int n_ctx, int n_kv_heads, int head_dim);

  int n_ctx() const { return n_ctx_; }
  int kv_dim() const { return kv_dim_; }   // floats per token and layer, in each of K and V
  size_t row_stride() const { return size_t(kv_dim_); }

  // Token `pos` of layer l: its keys (after RoPE) and values, kv_dim floats each.
  void store(int l, int pos, const float* k, const float* v);
  const float* keys(int l) const { return &k_[size_t(l) * n_ctx_ * kv_dim_]; }
  const float* values(int l) const { return &v_[size_t(l) * n_ctx_ * kv_dim_]; }

  // Bytes of K and V per token over all layers, and of the whole cache.
  size_t bytes_per_token() const { return size_t(2) * n_layers_ * kv_dim_ * sizeof(float); }
  size_t bytes() const { return bytes_per_token() * size_t(n_ctx_); }

 private:
  int n_layers_ = 0, n_ctx_ = 0, kv_dim_ = 0;
  std::vector<float> k_, v_;
};

}  // namespace mxlm
