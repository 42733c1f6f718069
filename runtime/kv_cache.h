// The key/value cache of one Context (runtime/model.cc): for every layer and KV head, the keys
// and values of up to n_ctx positions, each stored as rows per token, [layer][head][n_ctx] rows
// of head_dim elements in the K (or V) format. Head-major, so that attention, which reads one
// head's rows for every position, streams one contiguous run (Llama-7B, 2 threads, depth 2048,
// f32 KV: a token-major cache, rows 16 KiB apart, decoded at 3.2 tok/s, 25 % of the bandwidth).
//
// Formats (KvType), chosen for K and V independently (today the same in every layer):
//   f32  the floats;
//   q8   int8 with one f16 scale per token and head: the weight format q8_g{head_dim} (q8_g32
//        when head_dim is not 32, 64 or 128), w = d * (q - 128), d = max|x| / 127;
//   q4   4-bit asymmetric groups of 32: q4a_g32, w = d * q + m, from m = min and d = (max -
//        min) / 15 refined by two least-squares rounds (encode()).
// Rows are encoded with no wide scale search (the weight quantizer's): a token's rows are written
// once per layer as it is evaluated, on the decode path. Attention reads them with
// the float kernels (kernels/f32_ops.h: gemm for q·Kᵀ, gemm_nn for P·V), which dequantize rows
// in registers: the queries stay float.
//
// Why rows per token for values too: a generated token appends one row of each, which a
// block-quantized format encodes in place; the transposed value layout this replaced ([kv_dim]
// [n_ctx], so that P·V ran as a dot-product gemm) scattered each token's values over kv_dim cache
// lines: 4.7 % of a Llama-7B decode token at one thread, in the store alone.
//
// Keys are stored after RoPE, so attention reads them as they are. A context shift (dropping the
// oldest positions) re-rotates the kept keys by the position delta: RoPE's rotations compose,
// R(p - d) = R(-d) R(p), so that costs one rotation per kept key (dequantized, rotated and
// encoded again when quantized), instead of a rotation of every key on every token had they
// been stored before RoPE.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels/qtype.h"
#include "mxlm/model.h"

namespace mxlm {

// The storage format of a head's row of head_dim elements.
QType kv_qtype(KvType t, int head_dim);

class KvCache {
 public:
  KvCache(int n_layers, int n_ctx, int n_kv_heads, int head_dim, KvFormats formats);

  // Token `pos` of layer l: its keys (after RoPE) and values, n_kv_heads * head_dim floats each.
  void store(int l, int pos, const float* k, const float* v);

  // Layer l's keys (values) of head h: row t at keys(l, h) + t * k_row_bytes(), in k_qtype().
  const uint8_t* keys(int l, int h) const { return &k_[row(l, h, 0) * k_seg_]; }
  const uint8_t* values(int l, int h) const { return &v_[row(l, h, 0) * v_seg_]; }
  size_t k_row_bytes() const { return k_seg_; }
  size_t v_row_bytes() const { return v_seg_; }
  QType k_qtype() const { return kq_; }
  QType v_qtype() const { return vq_; }

  // Quantized keys and values of a power-of-two head_dim are stored rotated by an orthogonal
  // H = diag(s)·W/√D (W the Walsh-Hadamard matrix, s fixed random signs): a head's few large
  // channels spread over all of them, so a group's range is not set by one outlier. Scores are
  // unchanged when the queries are rotated alike ((qH)·(kH)ᵀ = q·kᵀ), and P·V over rotated
  // values is the output rotated, undone by Hᵀ. Each of these is O(D log D) per head and token.
  bool rotates_k() const { return rotate_k_; }
  bool rotates_v() const { return rotate_v_; }
  void rotate(float* x) const;    // x ← x·H, one head (head_dim floats)
  void unrotate(float* x) const;  // x ← x·Hᵀ

  // Context shift: drops positions [n_keep, n_keep + n_discard) of the first n_past and moves the
  // rest down by n_discard, re-rotating their keys by RoPE's rotation of -n_discard positions
  // (cos_d, sin_d: its head_dim / 2 angles, pairs (i, i + head_dim / 2) as the model rotates
  // them). Quantized keys are decoded, rotated and encoded again.
  void shift(int n_keep, int n_discard, int n_past, const float* cos_d, const float* sin_d);

  // Bytes of K and V per token over all layers, and of the whole cache.
  size_t bytes_per_token() const { return size_t(n_layers_) * n_heads_ * (k_seg_ + v_seg_); }
  size_t bytes() const { return bytes_per_token() * size_t(n_ctx_); }

 private:
  void encode(QType t, const float* x, uint8_t* dst);
  // Index of layer l, head h, position t among all rows (times a row's bytes: its offset).
  size_t row(int l, int h, int t) const { return (size_t(l) * n_heads_ + h) * n_ctx_ + t; }

  int n_layers_ = 0, n_ctx_ = 0, n_heads_ = 0, head_dim_ = 0;
  QType kq_ = QType::kF32, vq_ = QType::kF32;
  size_t k_seg_ = 0, v_seg_ = 0;  // bytes of one head's row of K, V
  bool rotate_k_ = false, rotate_v_ = false;
  std::vector<float> signs_;  // s of the rotation, head_dim of ±1
  std::vector<float> rot_;    // a head's rotated row before encoding
  std::vector<uint8_t> k_, v_;
};

}  // namespace mxlm
