// Causal attention of one KV head over the KV cache (runtime/kv_cache.h), for a chunk of queries.
//
// The chunk is tokens at positions pf .. pf + nb - 1, each with `group` query heads (GQA): query
// row r = token r / group. The query at position p attends to positions 0 .. p:
//   scores = q·Kᵀ  over the quantized keys of [0, quant_end(p)) (per-token int8 / int4 rows:
//                  gemm_i8, the query quantized to int8 per row and exact integer dots; other
//                  per-token rows: the float gemm in their format; per-channel blocks: gemm_nn, a
//                  block being head_dim rows of 32 tokens) and the window's keys of [quant_end(p), p] (its f16 rows before the
//                  batch, the batch's own rows, rounded to f16 alike, after);
//   P = softmax(scores);  out = P·V  alike over the values.
// Rows of one chunk can differ in quant_end (a batch crossing a block boundary of the window):
// both forms are computed over the positions where they differ and each row takes its own, so a
// prompt evaluated as one batch or token by token reads the same numbers.
#pragma once

#include <cstddef>

#include "kernels/f32_ops.h"
#include "runtime/kv_cache.h"

namespace mxlm {

// The batch being evaluated: its keys (after RoPE) and values in f32 (rounded to f16 where the
// layer keeps a window: KvCache::round_window), row b (position p0 + b) at k + b * ld, head h at
// + h * head_dim.
struct AttentionBatch {
  int p0;
  const float* k;
  const float* v;
  size_t ld;
};

// Per-thread buffers, for up to R = nb * group rows of a chunk ending at position T - 1:
// scores R x T (row stride T), wscores R x (window + kBlock + nb), out2 R x head_dim.
struct AttentionScratch {
  float* scores;
  float* wscores;
  float* out2;
};

// q: R rows of head_dim, scaled by 1/sqrt(head_dim) and rotated when the keys are (kv.rotate);
// writes out: R rows of head_dim, unrotated.
void attend(const F32Kernels& kr, const KvCache& kv, int l, int h, const AttentionBatch& batch, int pf, int nb,
            int group, const float* q, const AttentionScratch& s, float* out);

// The floats of AttentionScratch::wscores for chunks of up to nb tokens (0 without a window).
size_t attention_window_scratch(const KvCache& kv, int rows, int nb);

}  // namespace mxlm
