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

// Rows per strand when `nr` strands share `rows` rows of row_bytes each (the GEMV tile of
// kernels/simd/qgemm_x86_gemv_inl.h: tile t reads rows t, t + len, t + 2 len, ...). The plain
// len = ceil(rows / nr) puts the strands len * row_bytes apart; when len is a power of two from
// 512 up (a 2048- or 4096-row matrix on one thread) and the rows a multiple of 8 bytes (every
// format's at the Llama widths), that is a multiple of 4 KiB, so each step of the tile loads nr
// lines of the same L1 set (the L1D repeats its sets every 4 KiB on Zen 4 and Zen 5) and the
// strands' lines and the L1 prefetcher's evict each other. So a power-of-two len grows, by at
// most len / 128 rows (each one more tile whose last row is a dummy: under 0.8 % more tiles), to
// the length that puts the distance closest to 1 or 3 KiB modulo 4 KiB, if one is within 256 B:
// the nr strands then sit about a quarter of the set range apart. The last strand keeps the rows left, at least one.
// Measured with the two rules alternating call by call in one process (1 thread, Zen 5, the
// same rule against itself within 1 %), over the 25 formats on 4096 x 4096, 2048 x 5632 and
// 2048 x 2048: geomean +2.1 % on one thread (q4_g32 2048 x 5632 +5-9 %, 4096 x 4096 +1-7 %;
// q2a_g32 4096 x 4096 +23 %; worst -2.7 %), +0.3 % on two (each thread's rows are half as
// many). Why only powers of two: other lengths whose distance is also a multiple of 4 KiB
// lost when staggered (11008 x 4096 at 4096 wide: q4_g32 -1-2 %, q2_g32 -5-12 % for every
// added row count from 1 to 16), which the set conflict alone does not explain; those keep the
// plain length. TinyLlama q4_g32 decode, alternating runs: 1 thread +0.4 to +4.1 %.
constexpr int strand_rows(int rows, int nr, size_t row_bytes) {
  const int len = (rows + nr - 1) / nr;
  if (nr < 2 || rows < 2 || (len & (len - 1)) != 0) return len;
  const int cap = (rows - 1) / (nr - 1);  // the last strand keeps >= 1 row
  int best = len;
  size_t best_off = 257;  // within 256 B of 1 or 3 KiB, the closest (len itself if it is)
  for (int s = 0; s <= len / 128 && len + s <= cap; ++s) {
    const size_t r = static_cast<size_t>(len + s) * row_bytes % 2048;  // 1 and 3 KiB: 1024
    const size_t off = r > 1024 ? r - 1024 : 1024 - r;
    if (off < best_off) best = len + s, best_off = off;
  }
  return best;
}
