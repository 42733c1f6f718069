// The quantized GEMM kernels of kernels/simd/neon_kernels.cc. Not a standalone header: that file
// includes it twice, inside namespace mxlm::kernels::neon::{anonymous}::nodot with
// MXLM_NEON_DOTPROD 0 (SMULL + SADALP, any AArch64 core) and inside ::dotprod with
// MXLM_NEON_DOTPROD 1 under #pragma GCC target("arch=armv8.2-a+dotprod") (SDOT). It uses the
// unpacking helpers defined before the includes (Fmt, RowPtrs, Chunk, load_chunk, ActRows).
// Both copies compute the same exact integer block dots, hence the same results.
//
// No include guard, on purpose.

// acc += the products a[i] * w[i]; exact in int32 for any int8 inputs. The two paths put the
// products in different lanes; only the sum of the four lanes is used.
MXLM_AI int32x4_t dot16(int32x4_t acc, int8x16_t a, int8x16_t w) {
#if MXLM_NEON_DOTPROD
  return vdotq_s32(acc, a, w);
#else
  acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(a), vget_low_s8(w)));
  return vpadalq_s16(acc, vmull_high_s8(a, w));
#endif
}

// The int8 peak (kernels/quant.h): 8 independent chains of dot16, 16 multiply-adds each.
uint64_t int8_peak(int64_t iters, int32_t* sink) {
  const int8x16_t a = vdupq_n_s8(3);
  int8x16_t w[8];
  int32x4_t acc[8];
#pragma GCC unroll 8
  for (int j = 0; j < 8; ++j) {
    w[j] = vdupq_n_s8(static_cast<int8_t>(j + 1));
    acc[j] = vdupq_n_s32(0);
  }
  for (int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 8
    for (int j = 0; j < 8; ++j) {
      __asm__ volatile("" : "+w"(w[j]));  // as if loaded: keeps the products in the loop
      acc[j] = dot16(acc[j], a, w[j]);
    }
  }
  int32x4_t t = acc[0];
#pragma GCC unroll 8
  for (int j = 1; j < 8; ++j) t = veorq_s32(t, acc[j]);
  *sink = vaddvq_s32(t);
  return static_cast<uint64_t>(iters) * 8 * 2 * 16;
}

// {a . w over block j, j = 0..3} for the 128 activations at `a` and the chunk's weights.
MXLM_AI int32x4_t chunk_dots(const int8_t* a, const int8x16_t* w) {
  const int32x4_t z = vdupq_n_s32(0);
  const int32x4_t c0 = dot16(dot16(z, vld1q_s8(a), w[0]), vld1q_s8(a + 16), w[1]);
  const int32x4_t c1 = dot16(dot16(z, vld1q_s8(a + 32), w[2]), vld1q_s8(a + 48), w[3]);
  const int32x4_t c2 = dot16(dot16(z, vld1q_s8(a + 64), w[4]), vld1q_s8(a + 80), w[5]);
  const int32x4_t c3 = dot16(dot16(z, vld1q_s8(a + 96), w[6]), vld1q_s8(a + 112), w[7]);
  return vpaddq_s32(vpaddq_s32(c0, c1), vpaddq_s32(c2, c3));
}

// acc[i] += the chunk's contribution for activation row i: per block, dot * d_w * d_a
// (+ m_w * ds_a for asymmetric formats).
template <QType T, int MR>
MXLM_AI void accumulate(const Chunk& ch, const ActRows<MR>& a, int64_t c, float32x4_t* acc) {
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i) {
    const float32x4_t dots = vcvtq_f32_s32(chunk_dots(a.q[i] + 128 * c, ch.w));
    acc[i] = vfmaq_f32(acc[i], dots, vmulq_f32(ch.d, vld1q_f32(a.d[i] + 4 * c)));
    if constexpr (Fmt<T>::kKind == QKind::kAsymmetric) acc[i] = vfmaq_f32(acc[i], ch.m, vld1q_f32(a.ds[i] + 4 * c));
  }
}

// y[i * ldy] = (weight row `row`) . (activation row i), i < MR. nb: groups per row.
template <QType T, int MR>
void row_dot(const uint8_t* row, int64_t nb, const ActRows<MR>& a, float* y, size_t ldy) {
  constexpr int gpc = Fmt<T>::kGroupsPerChunk;
  const RowPtrs r = row_ptrs<T>(row, nb);
  const int64_t nfull = nb / gpc;
  const int rest = static_cast<int>(nb - nfull * gpc);
  float32x4_t acc[MR];
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i) acc[i] = vdupq_n_f32(0.0f);
  Chunk ch;
  for (int64_t c = 0; c < nfull; ++c) {
    load_chunk<T, true>(r, c, gpc, &ch);
    accumulate<T, MR>(ch, a, c, acc);
  }
  if (rest > 0) {
    load_chunk<T, false>(r, nfull, rest, &ch);
    accumulate<T, MR>(ch, a, nfull, acc);
  }
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i) y[static_cast<size_t>(i) * ldy] = vaddvq_f32(acc[i]);
}

// Activation rows [m0, m0 + MR) against weight rows [n0, n1).
template <QType T, int MR>
void tile_rows(int m0, int n0, int n1, int64_t nb, const ActQ8& a, const uint8_t* w, size_t w_row_bytes, float* y,
               size_t ldy) {
  const int64_t nbs = a.kp / kActBlock;
  ActRows<MR> ar;
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i) {
    ar.q[i] = a.q + static_cast<int64_t>(m0 + i) * a.kp;
    ar.d[i] = a.d + static_cast<int64_t>(m0 + i) * nbs;
    ar.ds[i] = a.ds + static_cast<int64_t>(m0 + i) * nbs;
  }
  float* ym = y + static_cast<size_t>(m0) * ldy;
  for (int n = n0; n < n1; ++n) row_dot<T, MR>(w + static_cast<size_t>(n) * w_row_bytes, nb, ar, ym + n, ldy);
}

// The QGemmFn of format T (kernels/quant.h).
template <QType T>
void qgemm(int M, int n0, int n1, int /*N*/, int64_t K, const ActQ8& a, const uint8_t* w, size_t w_row_bytes,
           float* y, size_t ldy) {
  if (M <= 0 || n1 <= n0) return;
  constexpr int G = Fmt<T>::kG;
  const int64_t nb = (K + G - 1) / G;
  // Weight rows per N block (for M > 4, every M tile reuses the block from L2).
  const size_t rb = w_row_bytes > 0 ? w_row_bytes : 1;
  const int rows = kQWeightBlockBytes / rb >= static_cast<size_t>(n1 - n0) ? n1 - n0
                                                                          : max_int(1, static_cast<int>(kQWeightBlockBytes / rb));
  for (int b0 = n0; b0 < n1; b0 += rows) {
    const int b1 = b0 + min_int(rows, n1 - b0);
    int m = 0;
    for (; m + 4 <= M; m += 4) tile_rows<T, 4>(m, b0, b1, nb, a, w, w_row_bytes, y, ldy);
    if (M - m >= 2) {
      tile_rows<T, 2>(m, b0, b1, nb, a, w, w_row_bytes, y, ldy);
      m += 2;
    }
    if (m < M) tile_rows<T, 1>(m, b0, b1, nb, a, w, w_row_bytes, y, ldy);
  }
}
