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
//
// Slices (flash-decoding's split of the keys). The positions are cut into slices of `slice`
// positions, [j·slice, (j+1)·slice); each slice's attention is computed alone (its own softmax,
// its log-sum-exp lse_j, out_j = its P·V) and the slices are combined:
//   out = Σ_j w_j out_j,  w_j = exp(lse_j − M) / Σ_i exp(lse_i − M),  M = max_i lse_i,
// which is the attention over all positions (softmax over a union of parts, reweighted by each
// part's mass). Slices can be independent tasks (attend_slice), so one decoded token's attention
// spreads over the threads when the KV heads are fewer than they are; attend() runs a chunk's
// slices in turn, with the same bits. The cut depends on positions alone, never on the thread
// count or the batch, so the numbers stay the same for a prompt in one batch or token by token,
// on any number of threads; a context of at most one slice is one slice, computed exactly as
// without slices.
#pragma once

#include <cstddef>

#include "kernels/f32_ops.h"
#include "runtime/kv_cache.h"

namespace mxlm {

// Positions per slice unless the Context is told otherwise (ContextParams::attention_slice). A
// multiple of KvCache::kBlock (per-channel key blocks never straddle two slices). Contexts up to
// one slice compute as before slices existed (tinymix's 512-token evaluations among them); each
// further slice costs two more kernel calls and a combination per head: one Llama-7B layer at
// depth 2048, one thread (`attention/` in mxlm_bench_kernels, S:512 against S:2048 when this was
// 512, eight interleaved repetitions): k4v4 +8 %, k8v8 +13 % time, f32 within noise. 1024 halves
// that per position (half as many slices).
constexpr int kAttSlice = 1024;

// The batch being evaluated: its keys (after RoPE) and values in f32 (rounded to f16 where the
// layer keeps a window: KvCache::round_window), row b (position p0 + b) at k + b * ld, head h at
// + h * head_dim.
struct AttentionBatch {
  int p0;
  const float* k;
  const float* v;
  size_t ld;
};

// Per-thread buffers, for up to R = nb * group rows of a chunk ending at position T - 1: scores
// R x slice for attend_slice(), R x T for attend(); wscores R x (window + kBlock + nb); for
// attend() lse (slices x R) and parts (slices x 2 x R x head_dim), slices = attention_slices().
struct AttentionScratch {
  float* scores;
  float* wscores;
  float* lse;
  float* parts;
};

// Slice [a, a + slice) of the chunk's keys (a a multiple of slice), uncombined: for each row r
// whose position p_r >= a, the softmax of its scores over [a, min(a + slice, p_r + 1)) (lse[r]
// its log-sum-exp) times those positions' values, in two parts: out (2 x R rows of head_dim)
// holds in its first R rows the product over the quantized values (still rotated when they are)
// and in the next R the product over the window's rows (when the values keep a window). Rows with
// p_r < a: zeros and -inf. q: R rows of head_dim, scaled by 1/sqrt(head_dim) and rotated when the
// keys are (kv.rotate).
void attend_slice(const F32Kernels& kr, const KvCache& kv, int l, int h, const AttentionBatch& batch, int pf, int nb,
                  int group, const float* q, int a, int slice, const AttentionScratch& s, float* out, float* lse);

// The slices of a chunk ending at position pl: ceil((pl + 1) / slice).
inline int attention_slices(int pl, int slice) { return pl / slice + 1; }

// out (R x head_dim, unrotated) = the combination above of n slices of layer l's attention, slice
// j's two parts (attend_slice's out) at parts + j * part_stride and its lse at lse + j *
// lse_stride: per row, the quantized parts weighted in ascending j and unrotated once, then the
// windows' parts weighted alike (n = 1: weight 1, the parts themselves).
void combine_slices(const KvCache& kv, int l, int R, int n, const float* parts, size_t part_stride, const float* lse,
                    size_t lse_stride, float* out);

// The chunk's attention over all its positions, unrotated: every slice's scores, then softmaxes,
// then P·V (one forward stream over the keys, one over the values), then combined.
void attend(const F32Kernels& kr, const KvCache& kv, int l, int h, const AttentionBatch& batch, int pf, int nb,
            int group, const float* q, int slice, const AttentionScratch& s, float* out);

// The floats of AttentionScratch::wscores for chunks of up to nb tokens (0 without a window).
size_t attention_window_scratch(const KvCache& kv, int rows, int nb);

}  // namespace mxlm
