// The NEON tile loop of kernels/simd/kv_kernels.cc, included there twice: inside namespace nodot
// and, under the armv8.2-a+dotprod target pragma, inside namespace dotprod, each of which defines
// dot(acc, a, b) (acc + the int8 products' sums in any lane grouping: only the sum of a row's
// four lanes is used). Compiled in each so that vdotq_s32 inlines where the target allows it.
// Four key rows per tile, one 32-element group at a time.

template <QType T>
void scores(const Query& q, int N, const uint8_t* w, size_t wrb, float* y) {
  constexpr int G = q8_group(T);
  const int nb = q.groups;
  const int per = G / 32;
  const int ns = G != 0 ? (nb + per - 1) / per : nb;
  const size_t qoff = G != 0 ? 2 * static_cast<size_t>(ns) : 4 * static_cast<size_t>(nb);
  for (int n0 = 0; n0 < N; n0 += 4) {
    const uint8_t* rows[4];
    for (int j = 0; j < 4; ++j) rows[j] = w + static_cast<size_t>(n0 + j < N ? n0 + j : N - 1) * wrb;
    float32x4_t acc = vdupq_n_f32(0.0f);
    for (int g = 0; g < nb; ++g) {
      int32x4_t r[4];
      if constexpr (G != 0) {
        const int8x16_t a0 = vld1q_s8(q.a + 32 * g), a1 = vld1q_s8(q.a + 32 * g + 16);
        const uint8x16_t bias = vdupq_n_u8(0x80);
        for (int j = 0; j < 4; ++j) {
          const uint8_t* p = rows[j] + qoff + 32 * static_cast<size_t>(g);
          const int8x16_t w0 = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(p), bias));
          const int8x16_t w1 = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(p + 16), bias));
          r[j] = dot(dot(vdupq_n_s32(0), w0, a0), w1, a1);
        }
      } else {
        const int8x16_t alo = vld1q_s8(q.lo + 16 * g), ahi = vld1q_s8(q.hi + 16 * g);
        const uint8x16_t m = vdupq_n_u8(15);
        for (int j = 0; j < 4; ++j) {
          const uint8x16_t v = vld1q_u8(rows[j] + qoff + 16 * static_cast<size_t>(g));
          const int8x16_t lo = vreinterpretq_s8_u8(vandq_u8(v, m)), hi = vreinterpretq_s8_u8(vshrq_n_u8(v, 4));
          r[j] = dot(dot(vdupq_n_s32(0), lo, alo), hi, ahi);
        }
      }
      const int32x4_t I = vpaddq_s32(vpaddq_s32(r[0], r[1]), vpaddq_s32(r[2], r[3]));
      const float32x4_t dq = vdupq_n_f32(q.d[g]);
      if constexpr (G != 0) {
        acc = vfmaq_f32(acc, vmulq_f32(f16x4(rows, 2 * static_cast<size_t>(g / per)), dq), vcvtq_f32_s32(I));
      } else {
        acc = vfmaq_f32(acc, vmulq_f32(f16x4(rows, 2 * static_cast<size_t>(g)), dq), vcvtq_f32_s32(I));
        acc = vfmaq_f32(acc, f16x4(rows, 2 * static_cast<size_t>(nb + g)), vdupq_n_f32(q.xs[g]));
      }
    }
    const float32x4_t out = acc;
    if (N - n0 >= 4) {
      vst1q_f32(y + n0, out);
    } else {
      float t[4];
      vst1q_f32(t, out);
      for (int j = 0; j < N - n0; ++j) y[n0 + j] = t[j];
    }
  }
}

