// The AVX-512 panel GEMM of kernels/simd/qgemm_x86.cc (prefill, M >= kPanelMinM). Not a
// standalone header: that file includes it once, for AVX-512 only, inside namespace
// mxlm::kernels::avx512::{anonymous}, after the tile kernels (it uses their decoders, layouts
// and group scales); its top comment states the rules.
//
// No include guard, on purpose.

// ---- prefill: int8 panels and a VNNI microkernel ----------------------------------------------
// With many activation rows the weight decode is amortized, so the tile kernel's cost is mostly
// its float step per (row, weight row, unit). Here the weights of 64 rows x one K block (256
// elements) are decoded once into a 16 KiB panel that stays in L1, in VNNI order: k-step s
// (elements 4s..4s+3) holds those elements of 16 rows as 16 dwords, 4 such vectors per k-step,
// natural K order (the decoders' qword order is undone by where each transposed vector is
// stored), and the block scales as f32 [block][row]. The microkernel runs 3 activation rows x
// 64 weight rows: per k-step 4 panel loads, 3 broadcasts and 12 vpdpbusd; per block each row's
// int32 sums start at -z * sum(a) (sum(a) recovered exactly as ds / d: see ActQ8) and are
// scaled once: cvt, mul, fma. Measured on Zen 4: the bare k-step loop reaches ~74% of the
// vpdpbusd peak (loads and broadcasts share the pipes), the whole GEMM at M = 128 ~55%.
// A row's result does not depend on [n0, n1) (every weight row is its own lane) nor on M.

constexpr int kPV = 4;                  // int32 vectors of weight rows per panel
constexpr int kPR = 16 * kPV;           // weight rows per panel
constexpr int kPUnits = 1;              // units per K block (the panel stays in L1)
constexpr int kPBlocks = kPUnits * kU;  // activation blocks per K block
constexpr int kNzStride = kPBlocks < 16 ? 16 : kPBlocks;  // row stride of the -z*sum(a) table
constexpr int kPSteps = kPBlocks * 8;   // k-steps of 4 elements per K block
constexpr int kPMR = 3;                 // activation rows per microtile
constexpr int kPMChunk = 128;           // activation rows per chunk of the sum(a) table
constexpr int kPanelMinM = 32;  // pp16 of TinyLlama: a wash (-5..+19 % by format); pp32: panels +12..45 %

struct alignas(64) Panel {
  uint8_t w[kPSteps * kPV * 64];  // [k-step][vector][16 rows x 4 bytes]
  float dw[kPBlocks][kPR];
  float mw[kPBlocks][kPR];  // asymmetric formats
};

// In-place transpose of a 16 x 16 dword matrix: r[i] lane j <-> r[j] lane i.
MXLM_QINLINE void transpose16(VI r[16]) {
  VI a[16], b[16];
  for (int i = 0; i < 16; i += 2) {
    a[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    a[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int g = 0; g < 16; g += 4) {
    b[g] = _mm512_unpacklo_epi64(a[g], a[g + 2]);
    b[g + 1] = _mm512_unpackhi_epi64(a[g], a[g + 2]);
    b[g + 2] = _mm512_unpacklo_epi64(a[g + 1], a[g + 3]);
    b[g + 3] = _mm512_unpackhi_epi64(a[g + 1], a[g + 3]);
  }
  // b[4g + c], 128-bit lane L: column 4L + c of rows 4g..4g+3.
  for (int c = 0; c < 4; ++c) {
    const VI x0 = _mm512_shuffle_i32x4(b[c], b[4 + c], _MM_SHUFFLE(1, 0, 1, 0));
    const VI x1 = _mm512_shuffle_i32x4(b[c], b[4 + c], _MM_SHUFFLE(3, 2, 3, 2));
    const VI x2 = _mm512_shuffle_i32x4(b[8 + c], b[12 + c], _MM_SHUFFLE(1, 0, 1, 0));
    const VI x3 = _mm512_shuffle_i32x4(b[8 + c], b[12 + c], _MM_SHUFFLE(3, 2, 3, 2));
    r[c] = _mm512_shuffle_i32x4(x0, x2, _MM_SHUFFLE(2, 0, 2, 0));
    r[4 + c] = _mm512_shuffle_i32x4(x0, x2, _MM_SHUFFLE(3, 1, 3, 1));
    r[8 + c] = _mm512_shuffle_i32x4(x1, x3, _MM_SHUFFLE(2, 0, 2, 0));
    r[12 + c] = _mm512_shuffle_i32x4(x1, x3, _MM_SHUFFLE(3, 1, 3, 1));
  }
}


// Decodes weight rows [0, nr) of `rows` (rows rb bytes apart), units [u0, u0 + nu), into
// vector v0 / 16 of P (rows v0 .. v0 + 15 of the panel).
template <QType T>
void build_panel16(const uint8_t* rows, size_t rb, int nr, const Geo& geo, int64_t u0, int nu, int v, Panel& P) {
  using F = Fmt<T>;
  const Layout& L = F::layout();
  VI cbv[16];
  for (int r = 0; r < 16; ++r) cbv[r] = r < nr ? codebook_vec<T>(rows + r * rb) : _mm512_setzero_si512();
  for (int u = 0; u < nu; ++u) {
    const int64_t gu = (u0 + u) * F::kGPU;  // first group of the unit
    const bool partial = gu + F::kGPU > geo.nb;
    VI dec[4][16];
    for (int r = 0; r < 16; ++r) {
      VI wv[4], aw[4];
      if (r < nr) {
        const uint8_t* q = rows + r * rb + geo.q_off + static_cast<size_t>(gu) * F::kGroupQBytes;
        alignas(64) uint8_t qb[F::kUnitQBytes];
        if (partial) {
          copy_partial<T>(qb, q, static_cast<int>(geo.nb - gu));
          q = qb;
        }
        decode_unit<T>(q, cbv[r], wv, aw);
      } else {
        for (int t = 0; t < 4; ++t) wv[t] = _mm512_setzero_si512();
      }
      for (int t = 0; t < 4; ++t) dec[t][r] = wv[t];
    }
    uint8_t* out = P.w + (static_cast<size_t>(u) * 64 * kPV + v) * 64;
    for (int t = 0; t < 4; ++t) {
      transpose16(dec[t]);
      // Dword j of vector t: elements src[t][j/2]*8 + (j%2)*4 .. +3 of the unit.
      for (int j = 0; j < 16; ++j) _mm512_store_si512(out + (2 * L.src[t][j / 2] + j % 2) * kPV * 64, dec[t][j]);
    }
  }
  // Block scales (and offsets), 16 blocks at a time: [row][block] -> transpose -> [block][row].
  const int64_t g0 = u0 * F::kGPU;
  for (int h = 0; h < (kPBlocks + 15) / 16; ++h) {
    const int64_t gh = g0 + h * (16 * 32 / F::kG);
    const int nj = min_of(16, kPBlocks - 16 * h);
    VI s[16];
    for (int r = 0; r < 16; ++r) {
      s[r] = r < nr ? _mm512_castps_si512(Scales<T>::panel(rows + r * rb, geo, gh, false)) : _mm512_setzero_si512();
    }
    transpose16(s);
    for (int j = 0; j < nj; ++j) _mm512_store_si512(&P.dw[16 * h + j][16 * v], s[j]);
    if constexpr (F::kAsym) {
      for (int r = 0; r < 16; ++r) {
        s[r] = r < nr ? _mm512_castps_si512(Scales<T>::panel(rows + r * rb, geo, gh, true)) : _mm512_setzero_si512();
      }
      transpose16(s);
      for (int j = 0; j < nj; ++j) _mm512_store_si512(&P.mw[16 * h + j][16 * v], s[j]);
    }
  }
}

// Rows [0, MR) of activations (a: first block of the K block; ad/ads: its block scales, nz its
// -z*sum(a) table, row stride kNzStride) x the panel's NV*16 weight rows, nblk blocks, into y
// (lanes of the last vector past its rows masked off).
template <QType T, int MR, int NV>
MXLM_QINLINE void panel_micro(const Panel& P, int nblk, const int8_t* a, int64_t kp, const float* ad, const float* ads,
                              int64_t nbs, const int32_t* nz, float* y, size_t ldy, __mmask16 nmask, bool first) {
  using F = Fmt<T>;
  VF acc[MR][NV];
  for (int m = 0; m < MR; ++m) {
    for (int v = 0; v < NV; ++v) {
      const __mmask16 k = v == NV - 1 ? nmask : 0xFFFF;
      acc[m][v] = first ? fzero() : _mm512_maskz_loadu_ps(k, y + m * ldy + 16 * v);
    }
  }
  for (int b = 0; b < nblk; ++b) {
    VI ia[MR][NV];
    for (int m = 0; m < MR; ++m) {
      const VI init = F::kZ != 0 ? _mm512_set1_epi32(nz[m * kNzStride + b]) : _mm512_setzero_si512();
      for (int v = 0; v < NV; ++v) ia[m][v] = init;
    }
    const uint8_t* wp = P.w + b * 8 * kPV * 64;
    for (int s = 0; s < 8; ++s) {
      VI wv[NV];
      for (int v = 0; v < NV; ++v) {
        wv[v] = _mm512_load_si512(wp + (s * kPV + v) * 64);
        // Keeps the vector in a register: GCC otherwise reloads it for every vpdpbusd, which
        // makes the loop load-bound.
        asm("" : "+v"(wv[v]));
      }
      for (int m = 0; m < MR; ++m) {
        int32_t av;
        std::memcpy(&av, a + m * kp + b * 32 + 4 * s, 4);
        const VI ab = _mm512_set1_epi32(av);
        for (int v = 0; v < NV; ++v) ia[m][v] = _mm512_dpbusd_epi32(ia[m][v], wv[v], ab);
      }
    }
    for (int m = 0; m < MR; ++m) {
      const VF da = _mm512_set1_ps(ad[m * nbs + b]);
      for (int v = 0; v < NV; ++v) {
        acc[m][v] = fmadd(to_float(ia[m][v]), fmul(_mm512_load_ps(&P.dw[b][16 * v]), da), acc[m][v]);
      }
    }
    if constexpr (F::kAsym) {
      for (int m = 0; m < MR; ++m) {
        const VF ds = _mm512_set1_ps(ads[m * nbs + b]);
        for (int v = 0; v < NV; ++v) acc[m][v] = fmadd(_mm512_load_ps(&P.mw[b][16 * v]), ds, acc[m][v]);
      }
    }
  }
  for (int m = 0; m < MR; ++m) {
    for (int v = 0; v < NV; ++v) {
      _mm512_mask_storeu_ps(y + m * ldy + 16 * v, v == NV - 1 ? nmask : 0xFFFF, acc[m][v]);
    }
  }
}

template <QType T, int NV>
MXLM_QINLINE void panel_rows(int mr, const Panel& P, int nblk, const int8_t* a, int64_t kp, const float* ad,
                             const float* ads, int64_t nbs, const int32_t* nz, float* y, size_t ldy, __mmask16 nmask,
                             bool first) {
  static_assert(kPMR == 3);
  switch (mr) {
    case 1: panel_micro<T, 1, NV>(P, nblk, a, kp, ad, ads, nbs, nz, y, ldy, nmask, first); break;
    case 2: panel_micro<T, 2, NV>(P, nblk, a, kp, ad, ads, nbs, nz, y, ldy, nmask, first); break;
    default: panel_micro<T, kPMR, NV>(P, nblk, a, kp, ad, ads, nbs, nz, y, ldy, nmask, first); break;
  }
}

template <QType T>
void qgemm_panel(int M, int n0, int n1, int64_t K, const ActQ8& a, const uint8_t* w, size_t rb, const Geo& geo,
                 float* y, size_t ldy) {
  using F = Fmt<T>;
  const int64_t nblk_all = (K + 31) / 32;  // activation blocks holding data
  const int64_t nbs = a.kp / 32;
  Panel P;
  alignas(64) int32_t nz[kPMChunk * kNzStride];
  for (int mc = 0; mc < M; mc += kPMChunk) {
    const int mn = min_of(kPMChunk, M - mc);
    for (int64_t b0 = 0; b0 < nblk_all; b0 += kPBlocks) {
      const int nblk = static_cast<int>(min_of<int64_t>(kPBlocks, nblk_all - b0));
      const bool first = b0 == 0;
      if constexpr (F::kZ != 0) {
        // -z * sum(a) per block: ds = d * sum exactly rounded and |sum| <= 32 * 127, so
        // ds / d is within 0.001 of the integer sum (d = 0 only for all-zero blocks).
        const VF negz = _mm512_set1_ps(-static_cast<float>(F::kZ));
        for (int m = 0; m < mn; ++m) {
          const float* ad = a.d + (mc + m) * nbs + b0;
          const float* ads = a.ds + (mc + m) * nbs + b0;
          for (int h = 0; h < kPBlocks; h += 16) {
            const int left = nblk - h;
            const __mmask16 k = left >= 16 ? 0xFFFF : left <= 0 ? 0 : static_cast<__mmask16>((1u << left) - 1);
            const VF d = _mm512_maskz_loadu_ps(k, ad + h), ds = _mm512_maskz_loadu_ps(k, ads + h);
            const __mmask16 nzk = _mm512_cmp_ps_mask(d, _mm512_setzero_ps(), _CMP_NEQ_UQ);
            const VF sum = _mm512_roundscale_ps(_mm512_maskz_div_ps(nzk, ds, d), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            _mm512_store_si512(nz + m * kNzStride + h, _mm512_cvtps_epi32(fmul(sum, negz)));
          }
        }
      }
      const int64_t u0 = b0 / kU;
      const int nu = (nblk + kU - 1) / kU;
      for (int ns = n0; ns < n1; ns += kPR) {
        const int nr = min_of(kPR, n1 - ns);
        const int nv = (nr + 15) / 16;
        for (int v = 0; v < nv; ++v) {
          build_panel16<T>(w + static_cast<size_t>(ns + 16 * v) * rb, rb, min_of(16, nr - 16 * v), geo, u0, nu, v, P);
        }
        const int last = nr - 16 * (nv - 1);
        const __mmask16 nmask = static_cast<__mmask16>(last >= 16 ? 0xFFFF : (1u << last) - 1);
        for (int m = 0; m < mn; m += kPMR) {
          const int row = mc + m, mr = min_of(kPMR, mn - m);
          const int8_t* ap = a.q + row * a.kp + b0 * 32;
          const float* ad = a.d + row * nbs + b0;
          const float* ads = a.ds + row * nbs + b0;
          const int32_t* nzp = nz + m * kNzStride;
          float* yp = y + static_cast<size_t>(row) * ldy + ns;
          static_assert(kPV == 4);
          switch (nv) {
            case 1: panel_rows<T, 1>(mr, P, nblk, ap, a.kp, ad, ads, nbs, nzp, yp, ldy, nmask, first); break;
            case 2: panel_rows<T, 2>(mr, P, nblk, ap, a.kp, ad, ads, nbs, nzp, yp, ldy, nmask, first); break;
            case 3: panel_rows<T, 3>(mr, P, nblk, ap, a.kp, ad, ads, nbs, nzp, yp, ldy, nmask, first); break;
            default: panel_rows<T, kPV>(mr, P, nblk, ap, a.kp, ad, ads, nbs, nzp, yp, ldy, nmask, first); break;
          }
        }
      }
    }
  }
}
