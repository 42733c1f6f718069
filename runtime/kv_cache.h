// The key/value cache of one Context (runtime/model.cc): for every layer and KV head, the keys
// and values of up to n_ctx positions. Head-major, so that attention, which reads one head's rows
// for every position, streams one contiguous run (Llama-7B, 2 threads, depth 2048, f32 KV: a
// token-major cache, rows 16 KiB apart, decoded at 3.2 tok/s, 25 % of the bandwidth).
//
// Each layer chooses its keys' and values' formats (KvType) independently: a Tensor is one
// layer's keys or values.
//   f32, f16, bf16  the floats, rounded (f16: to nearest even; bf16: likewise);
//   q8   int8 with one f16 scale per token and head: the weight format q8_g{head_dim} (q8_g32
//        when head_dim is not 32, 64 or 128), w = d * (q - 128), d = max|x| / 127;
//   q4   4-bit asymmetric groups of 32 per token: q4a_g32, w = d * q + m, from m = min and
//        d = (max - min) / 15 refined by two least-squares rounds (encode());
//   q2   2-bit, KIVI-style (Liu et al. 2024): values per token (q2a_g32, as q4), keys per
//        channel over blocks of kBlock = 32 tokens (a block is head_dim rows of 32 tokens, each
//        a q2a_g32 row: keys have a few large channels, whose range a per-token group would
//        spread over all the others), and a window of the most recent tokens kept in f16.
//
// The window. A query at position p reads positions [0, quant_end(p)) quantized and
// [quant_end(p), p] from the window in f16, with quant_end(p) = kBlock * floor((p + 1 - window) / kBlock) (at
// least 0): between `window` and `window + kBlock - 1` recent tokens at 16 bits, and a
// key block quantized once it is whole and out of the window. This is a function of the query's
// position alone, so a prompt evaluated in one batch or token by token attends to the same
// numbers (the batch reads the f32 rows of its own tokens from the Context's scratch, and the
// rows before it from the window buffer). Quantized rows and blocks are written as soon as they
// are whole (store()); the f16 window buffer keeps the rows a later query may still need
// (settle(), after the layer's attention).
//
// Per-token rows are encoded with no wide scale search (the weight quantizer's): a token's rows
// are written once per layer as it is evaluated, on the decode path. Attention reads them in place
// (kernels/f32_ops.h): gemm_i8 for q·Kᵀ over int8 and int4 keys (the query quantized to int8,
// exact integer dots), gemm for other per-token keys, gemm_nn for q·Kᵀ over a per-channel key
// block and for P·V, the float kernels dequantizing in registers.
//
// Why rows per token for values: a generated token appends one row of each, which a
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

#include "base/aligned.h"
#include "kernels/qtype.h"
#include "mxlm/model.h"

namespace mxlm {

class ThreadPool;

// The storage format of a head's row of head_dim elements (q2: the values' row; the keys' block
// rows are q2a_g32 too, over kBlock tokens).
QType kv_qtype(KvType t, int head_dim);
// Bytes one token adds to one layer's keys (is_k) or values in format t, over its KV heads
// (per-channel 2-bit keys: a block's bytes / 32).
uint64_t kv_bytes_per_token(KvType t, bool is_k, int n_kv_heads, int head_dim);
// Bytes of one layer's keys or values a token at position n - 1 reads (n positions cached),
// over its KV heads: n rows, or for a 2-bit tensor the quantized rows before quant_end and the
// window's f16 rows after.
double kv_read_bytes(KvType t, bool is_k, int n_kv_heads, int head_dim, int n, int window);

class KvCache {
 public:
  static constexpr int kBlock = 32;  // tokens per block of per-channel keys; the window's step

  // One layer's keys or values.
  struct Tensor {
    KvType type = KvType::kF32;
    QType qtype = QType::kF32;  // a per-token row's format, or a per-channel block row's
    size_t seg = 0;             // bytes of one head's row (per token), or of one block (per channel)
    size_t head_bytes = 0;      // bytes of one head's rows or blocks
    bool rotated = false;       // stored times H (see rotate())
    bool per_channel = false;   // blocks of kBlock tokens, head_dim rows of kBlock each
    bool windowed = false;      // recent positions in f16 (the window)
    std::vector<uint8_t> q;     // [head] rows (n_ctx) or blocks (n_ctx / kBlock)
    std::vector<uint16_t> win;  // f16 [head][window + kBlock][head_dim]: positions [win0, win1)
    int win0 = 0, win1 = 0;
  };

  // formats: one per layer. window: the recent tokens the 2-bit formats keep in f16 (>= 0).
  KvCache(int n_layers, int n_ctx, int n_kv_heads, int head_dim, const std::vector<KvFormats>& formats, int window);

  const Tensor& keys(int l) const { return k_[size_t(l)]; }
  const Tensor& values(int l) const { return v_[size_t(l)]; }
  // Head h's quantized rows (row t at + t * seg) or blocks (block b at + b * seg).
  const uint8_t* rows(const Tensor& t, int h) const { return &t.q[size_t(h) * t.head_bytes]; }
  // The end of the positions a query at p reads from rows(): p + 1 when t is not windowed.
  int quant_end(const Tensor& t, int p) const;
  // Head h's f16 row of position pos, pos in [win0, win1).
  const uint16_t* window_row(const Tensor& t, int h, int pos) const;
  // Head h's row at position pos as attention reads it, unrotated: the window's when pos is in
  // it, else the decoded quantized row (or a per-channel block's column).
  void row(const Tensor& t, int h, int pos, float* out) const;
  // Head h's quantized row at pos decoded and unrotated, whether or not the window holds pos
  // (pos below quant_end of the latest position for per-channel keys: a whole block).
  void quantized_row(const Tensor& t, int h, int pos, float* out) const;
  int window() const { return window_; }
  int head_dim() const { return head_dim_; }

  // Rounds layer l's keys and values of a batch (as store() takes them) to f16 in place where
  // the layer's format keeps a window: the batch's own rows, which attention reads from the
  // caller's buffers, then equal the window's f16 rows that later queries read.
  void round_window(int l, int n, float* k, float* v, size_t ld) const;
  // Layer l's keys (after RoPE) and values of tokens p0 .. p0 + n - 1: row b of each at k + b * ld
  // (v + b * ld), n_kv_heads * head_dim floats. Encodes their per-token rows and every key block
  // they complete; p0 is at most the positions the layer holds (fewer: it forgets the later ones).
  // With a pool, a task per KV head and tensor (the same bytes as without): serial, the encoding
  // was 2.2 % of a 2-thread Llama-7B decode token's cycles at depth 2048 (k4v4), with the other
  // thread waiting.
  void store(int l, int p0, int n, const float* k, const float* v, size_t ld, ThreadPool* pool = nullptr);
  // After layer l's attention over that batch: the window buffer keeps the f16 rows a later
  // query still reads (from its own rows and the batch's).
  void settle(int l, int p0, int n, const float* k, const float* v, size_t ld);
  // The cache holds positions [0, n) now (n <= what it held): for a window, its f16 rows of the
  // positions it reads again (decoded from the quantized rows where the window had dropped them).
  void truncate(int n);

  // Quantized keys and values of a power-of-two head_dim are stored rotated by an orthogonal
  // H = diag(s)·W/√D (W the Walsh-Hadamard matrix, s fixed random signs): a head's few large
  // channels spread over all of them, so a group's range is not set by one outlier. Scores are
  // unchanged when the queries are rotated alike ((qH)·(kH)ᵀ = q·kᵀ), and P·V over rotated
  // values is the output rotated, undone by Hᵀ. Each of these is O(D log D) per head and token.
  // Per-channel keys are not rotated: their groups are channels, an outlier channel its own.
  void rotate(float* x) const;    // x ← x·H, one head (head_dim floats)
  void unrotate(float* x) const;  // x ← x·Hᵀ

  // Context shift: drops positions [n_keep, n_keep + n_discard) of the first n_past and moves the
  // rest down by n_discard, re-rotating their keys by RoPE's rotation of -n_discard positions
  // (cos_d, sin_d: its head_dim / 2 angles, pairs (i, i + head_dim / 2) as the model rotates
  // them). Quantized keys are decoded, rotated and encoded again (per-channel key blocks
  // re-formed at their new positions).
  void shift(int n_keep, int n_discard, int n_past, const float* cos_d, const float* sin_d);

  // Bytes of K and V per token over all layers (per-channel blocks: a block's bytes / kBlock),
  // the f16 windows' bytes, and the whole cache's.
  size_t bytes_per_token() const;
  size_t window_bytes() const;
  size_t bytes() const { return bytes_per_token() * size_t(n_ctx_) + window_bytes(); }
  // Bytes a query at position n - 1 (n positions in the cache) reads over all layers.
  double read_bytes(int n) const;

 private:
  void init(Tensor& t, KvType type, bool is_k);
  // Row x of n elements in format t into dst; the affine formats' per-group (d, m) fitted here,
  // or taken from d_fit and m_fit (one per group) when given.
  void encode(QType t, const float* x, uint8_t* dst, int n, const uint16_t* d_fit = nullptr,
              const uint16_t* m_fit = nullptr) const;
  // Head h's rows of positions p0 .. p0 + n - 1; scratch: head_dim floats.
  void store_rows(Tensor& t, int h, int p0, int n, const float* x, size_t ld, float* scratch) const;
  void truncate(Tensor& t, int n);
  // Per-channel key block b of head h decoded: kBlock rows of head_dim, token-major.
  void decode_block(const Tensor& t, int h, int b, float* out) const;
  // Key blocks [b0, b1) of head h from the rows of positions row_at(pos); chans: head_dim *
  // kBlock floats.
  template <class RowAt>
  void encode_blocks(Tensor& t, int h, int b0, int b1, RowAt row_at, float* chans) const;
  // Floats of one thread's scratch in store(): a block's channels and a window row.
  size_t scratch_floats() const { return (size_t(head_dim_) * (kBlock + 1) + 15) / 16 * 16; }  // whole lines

  int n_layers_ = 0, n_ctx_ = 0, n_heads_ = 0, head_dim_ = 0, window_ = 0, win_cap_ = 0;
  std::vector<Tensor> k_, v_;
  std::vector<float> signs_;  // s of the rotation, head_dim of ±1
  AlignedVector<float> scratch_;  // per thread: a rotated row or a key block's channels, a window row
};

}  // namespace mxlm
