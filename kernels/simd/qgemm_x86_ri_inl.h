// Row-interleaved weights for kernels/simd/qgemm_x86.cc (AVX-512): the load-time layout of the
// 2-, 4- and 8-bit one-level formats (symmetric and asymmetric, f16 scales, any G), its GEMV and its
// panel build. Not a standalone header: that file includes it once, inside namespace
// mxlm::kernels::<isa>::{anonymous}, after the panel GEMM; its top comment states the rules.
//
// Layout ("RI16"). The rows are packed at load in groups of 16 (QKernel::pack_rows); a group's
// 16 rows become 16 * row_bytes contiguous bytes from its first row, scale group by scale group:
//   [d: 16 x f16, row r at 2r] [m: 16 x f16, asymmetric only] [G/32 blocks of bits * 64 bytes]
// A block (32 elements of each of the 16 rows) is `bits` vectors of 64 bytes; byte 4r + i of
// vector j holds, in bits [bits*s, bits*s + bits), element 4t + i of row r with k-step
// t = j + bits*s (s < 8 / bits). So a shift and a mask give k-step t as 16 rows x 4 unsigned
// bytes, lane r = row r: the operand vpdpbusd multiplies with one broadcast activation dword,
// and exactly a panel vector (qgemm_x86_panel_inl.h) with no transpose. The scales of the 16
// rows lie side by side: one vcvtph2ps gives them lane by lane. A last group of fewer than 16
// rows keeps the file's layout and the row kernels (QGemmFn's N says where it begins).
//
// Why. The row kernels (qgemm_x86_gemv_inl.h) reduce each row's int32 lanes per unit and convert
// per row, and at 2-3 bits that work, not memory, bounded decode on a shared core: `qgemv_cached`
// (weights in L2, one thread, Zen 5) read q2_g32 at 30-32 GB/s and q4_g32 at 45-51 in a busy
// minute, below one thread's share of the DRAM bandwidth. Here per block and 16 rows the GEMV
// does `bits` loads, 8 masks, 8 vpdpbusd against broadcast activation dwords and one convert,
// multiply and fma (asymmetric: one more fma): no lane reductions. Each k-step is masked in
// place (q * 2^(bits*s) in its byte), not shifted down: the 512-bit integer pipes bound this
// loop, and with a shift per k-step the decode took as many operations as the vpdpbusd (q2_g32
// in L2 42 GB/s, the row kernel's rate); the int32 sums of plane s go to chains of their own and
// are shifted once per block (exact: every product is a multiple of 2^(bits*s)). M = 1 runs
// kRIStrands groups per tile, each its own forward stream, as the row kernels' strands: one
// stream per thread (one group after the other) read 66-80 % of the bandwidth where four read
// 91-122 % (`qgemv` q4_g32 one thread, the same hour).
//
// The sums. Per block b and 16 rows: the int32 sum starts at -z * sum(a_b) (symmetric; 0
// asymmetric) and takes the 8 k-steps' products, then acc = fma(float(i), dw * da_b, acc); the
// asymmetric offset adds acc = fma(mw, ds_b, acc): the panel microkernel's operations in its
// order, so the GEMV (any M, any tiling) and the panel GEMM give a row the same bits, and a
// row's result does not depend on M or on [n0, n1).
//
// No include guard, on purpose.

#if defined(MXLM_TARGET_AVX512)

constexpr int kRIRows = 16;       // rows per interleaved group
constexpr int kRISlab = 512;      // activation blocks per slab of the GEMV's -z*sum(a) table
constexpr int kRIPartialM = 64;   // activation rows per pass over a partly covered group
constexpr int kRIStrands = 4;     // M = 1: groups per tile, each its own stream (see Why)
// The GEMV prefetches each strand this far ahead (one prefetcht0 per line it reads). TinyLlama
// decode, one thread (Zen 5, huge pages, bandwidth read in the same run): 1.5 KiB 96-100 % of
// the bandwidth, 4.5 KiB 74-77 %; `qgemv` q4_g32 one thread 1.5 KiB 97-123 %, 3 and 4.5 KiB
// 86-97 % (the probe reads low at times: compare within a row, not across).
constexpr int kRIPrefetch = 1536;

template <QType T>
struct RI {
  using F = Fmt<T>;
  static constexpr int kBPG = F::kG / 32;                      // blocks per scale group
  static constexpr size_t kSB = kRIRows * 2 * (F::kAsym ? 2 : 1);  // scale bytes per group
  static constexpr size_t kQB = static_cast<size_t>(F::kBits) * 64;  // quant bytes per block
  static constexpr size_t kGB = kSB + kBPG * kQB;              // bytes per scale group (16 rows)
  static_assert(kGB == kRIRows * static_cast<size_t>(info_of(T).block_bytes));
};

// QPackFn (pack_rows 16): a full group interleaved as above, a smaller one copied as it is. The
// quants go through the panel build (the rows' decoders and a transpose, per unit of 256
// elements) and are shifted back into planes: a scalar loop over the elements took 11 s more to
// load Llama-7B q4_g32 on two threads (18 s against 7).
template <QType T>
void pack_ri(const uint8_t* src, uint8_t* dst, int64_t K, int rows, size_t stride) {
  using F = Fmt<T>;
  using R = RI<T>;
  const Geo geo = make_geo<T>(K);
  const size_t row_bytes = geo.q_off + static_cast<size_t>(geo.nb) * F::kGroupQBytes;
  if (rows < kRIRows) {
    for (int r = 0; r < rows; ++r) std::memcpy(dst + r * stride, src + r * stride, row_bytes);
    return;
  }
  Panel P;
  for (int64_t u = 0; u * F::kGPU < geo.nb; ++u) {
    build_panel_vec<T>(src, stride, kRIRows, geo, u, 1, 0, P);
    for (int64_t g = u * F::kGPU; g < min_of<int64_t>(geo.nb, (u + 1) * F::kGPU); ++g) {
      uint8_t* out = dst + static_cast<size_t>(g) * R::kGB;
      for (int r = 0; r < kRIRows; ++r) {
        std::memcpy(out + 2 * r, src + r * stride + geo.d_off + 2 * g, 2);
        if constexpr (F::kAsym) std::memcpy(out + 2 * kRIRows + 2 * r, src + r * stride + geo.m_off + 2 * g, 2);
      }
      for (int j = 0; j < R::kBPG; ++j) {
        const int pb = static_cast<int>(g - u * F::kGPU) * R::kBPG + j;  // block within the unit
        uint8_t* q = out + R::kSB + j * R::kQB;
        for (int jv = 0; jv < F::kBits; ++jv) {
          VI v = vzero();
          for (int sp = 0; sp < 8 / F::kBits; ++sp) {
            const VI w = _mm512_load_si512(P.w + static_cast<size_t>((pb * 8 + jv + F::kBits * sp) * kPV) * kVB);
            v = _mm512_or_si512(v, _mm512_slli_epi16(w, F::kBits * sp));  // bytes < 2^bits: no carry
          }
          _mm512_storeu_si512(q + 64 * jv, v);
        }
      }
    }
  }
}

// The 8 k-steps of one block (quants at qp) as fn(t, 16 rows x 4 unsigned bytes), each vector
// loaded once.
template <int Bits, class Fn>
MXLM_QINLINE void ri_steps(const uint8_t* qp, Fn fn) {
  const VI mask = bcast8((1 << Bits) - 1);
#pragma GCC unroll 8
  for (int j = 0; j < Bits; ++j) {
    const VI v = _mm512_loadu_si512(qp + 64 * j);
#pragma GCC unroll 4
    for (int s = 0; s < 8 / Bits; ++s) {
      const VI w = Bits == 8 ? v : _mm512_and_si512(_mm512_srli_epi16(v, Bits * s), mask);
      fn(j + Bits * s, w);
    }
  }
}

// Rows [m0, m0 + MR) of activations x NG interleaved groups (grp[i]: group i's first byte; y[i]:
// row m0's 16 outputs of group i, null to compute and drop them; row stride ldy), blocks
// [bs, bs + sblk) (a slab starting on a scale group), nz the slab's -z*sum(a) table of these
// rows (row stride kRISlab): the sums so far from y unless first. The NG groups are NG forward
// streams (strands, as the row tiles' in qgemm_x86_gemv_inl.h) sharing each activation broadcast.
template <QType T, int MR, int NG>
MXLM_QINLINE void ri_tile(const uint8_t* const grp[NG], const ActQ8& a, int m0, int64_t nbs, int64_t bs, int sblk,
                          const int32_t* nz, float* const y[NG], size_t ldy, bool first) {
  using F = Fmt<T>;
  using R = RI<T>;
  // Four int32 chains per row and group, chain (s, j % (4 / planes)) for plane s of vector j:
  // the vpdpbusd latency spread, and each plane's sum scaled by 2^(bits*s) at the end.
  constexpr int kPlanes = 8 / F::kBits, kCPP = 4 / kPlanes;  // chains per plane
  VF acc[MR][NG];
  for (int m = 0; m < MR; ++m) {
    for (int n = 0; n < NG; ++n) acc[m][n] = first || !y[n] ? fzero() : _mm512_loadu_ps(y[n] + m * ldy);
  }
  const int64_t be = bs + sblk;
  for (int64_t g = bs / R::kBPG; g * R::kBPG < be; ++g) {
    const size_t go = static_cast<size_t>(g) * R::kGB;
    VF dw[NG], mw[NG];
    for (int n = 0; n < NG; ++n) {
      const uint8_t* gp = grp[n] + go;
      for (size_t c = 0; c < R::kGB; c += 64) {
        _mm_prefetch(reinterpret_cast<const char*>(gp + kRIPrefetch + c), _MM_HINT_T0);
      }
      dw[n] = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(gp)));
      if constexpr (F::kAsym) mw[n] = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(gp + 32)));
    }
    for (int j = 0; j < R::kBPG; ++j) {
      const int64_t b = g * R::kBPG + j;
      if (b >= be) break;
      VI ic[MR][NG][4];
      for (int m = 0; m < MR; ++m) {
        const VI init = F::kZ != 0 ? _mm512_set1_epi32(nz[m * kRISlab + (b - bs)]) : _mm512_setzero_si512();
        for (int n = 0; n < NG; ++n) {
          ic[m][n][0] = init;
          ic[m][n][1] = ic[m][n][2] = ic[m][n][3] = _mm512_setzero_si512();
        }
      }
      const size_t qo = go + R::kSB + j * R::kQB;
#pragma GCC unroll 8
      for (int jv = 0; jv < F::kBits; ++jv) {
        VI v[NG];
        for (int n = 0; n < NG; ++n) v[n] = _mm512_loadu_si512(grp[n] + qo + 64 * jv);
#pragma GCC unroll 4
        for (int sp = 0; sp < kPlanes; ++sp) {
          const int t = jv + F::kBits * sp, c = sp * kCPP + jv % kCPP;
          const VI mask = bcast8(((1 << F::kBits) - 1) << (F::kBits * sp));
          VI w[NG];
          for (int n = 0; n < NG; ++n) w[n] = F::kBits == 8 ? v[n] : _mm512_and_si512(v[n], mask);
          for (int m = 0; m < MR; ++m) {
            int32_t av;
            std::memcpy(&av, a.q + (m0 + m) * a.kp + b * 32 + 4 * t, 4);
            const VI ab = _mm512_set1_epi32(av);
            for (int n = 0; n < NG; ++n) ic[m][n][c] = _mm512_dpbusd_epi32(ic[m][n][c], w[n], ab);
          }
        }
      }
      for (int m = 0; m < MR; ++m) {
        const VF da = _mm512_set1_ps(a.d[(m0 + m) * nbs + b]);
        for (int n = 0; n < NG; ++n) {
          const auto plane = [&](int sp) {  // the sum of plane sp's chains
            if constexpr (kCPP == 4) {
              return _mm512_add_epi32(_mm512_add_epi32(ic[m][n][0], ic[m][n][1]),
                                      _mm512_add_epi32(ic[m][n][2], ic[m][n][3]));
            } else if constexpr (kCPP == 2) {
              return _mm512_add_epi32(ic[m][n][2 * sp], ic[m][n][2 * sp + 1]);
            } else {
              return ic[m][n][sp];
            }
          };
          VI i = plane(0);
#pragma GCC unroll 4
          for (int sp = 1; sp < kPlanes; ++sp) {
            i = _mm512_add_epi32(i, _mm512_srai_epi32(plane(sp), F::kBits * sp));  // exact: a multiple
          }
          acc[m][n] = fmadd(to_float(i), fmul(dw[n], da), acc[m][n]);
        }
      }
      if constexpr (F::kAsym) {
        for (int m = 0; m < MR; ++m) {
          const VF ds = _mm512_set1_ps(a.ds[(m0 + m) * nbs + b]);
          for (int n = 0; n < NG; ++n) acc[m][n] = fmadd(mw[n], ds, acc[m][n]);
        }
      }
    }
  }
  for (int m = 0; m < MR; ++m) {
    for (int n = 0; n < NG; ++n) {
      if (y[n]) _mm512_storeu_ps(y[n] + m * ldy, acc[m][n]);
    }
  }
}

// Rows [m0, m0 + MR) x the groups of rows [g0, g1) (multiples of 16, all full groups), NG strands
// of consecutive groups: tile t takes groups t, t + len, ... (len: strand_rows in groups, so that
// strands do not lie a multiple of 4 KiB apart); a tile past the last group recomputes group t
// and drops it.
template <QType T, int MR, int NG>
void ri_block(const ActQ8& a, int m0, int g0, int g1, int64_t K, const uint8_t* w, size_t rb, float* y, size_t ldy) {
  const int64_t nblk_all = (K + 31) / 32, nbs = a.kp / 32;
  const int ng = (g1 - g0) / kRIRows;
  const size_t gb = kRIRows * rb;
  const int len = strand_rows(ng, NG, gb);
  alignas(64) int32_t nz[MR * kRISlab];
  for (int64_t bs = 0; bs < nblk_all; bs += kRISlab) {
    const int sblk = static_cast<int>(min_of<int64_t>(kRISlab, nblk_all - bs));
    if constexpr (Fmt<T>::kZ != 0) neg_z_sums<T>(a, m0, MR, bs, sblk, nbs, nz, kRISlab);
    for (int t = 0; t < len; ++t) {
      const uint8_t* grp[NG];
      float* yp[NG];
      for (int i = 0; i < NG; ++i) {
        const int gi = t + i * len;
        grp[i] = w + static_cast<size_t>(g0) * rb + static_cast<size_t>(gi < ng ? gi : t) * gb;
        yp[i] = gi < ng ? y + static_cast<size_t>(m0) * ldy + g0 + gi * kRIRows : nullptr;
      }
      ri_tile<T, MR, NG>(grp, a, m0, nbs, bs, sblk, nz, yp, ldy, bs == 0);
    }
  }
}

// The GEMV of interleaved rows [g0, g1) (full groups), M < kPanelMinM. M > 4 passes over blocks
// of ~512 KiB of rows, which stay in L2 while all 4-row tiles pass over them.
template <QType T>
void ri_gemv(int M, int g0, int g1, int64_t K, const ActQ8& a, const uint8_t* w, size_t rb, float* y, size_t ldy) {
  int nblock = g1 - g0;
  if (M > 4) {
    nblock = static_cast<int>(max_of<size_t>(1, (size_t{512} << 10) / (kRIRows * max_of<size_t>(rb, 1)))) * kRIRows;
  }
  for (int nb0 = g0; nb0 < g1; nb0 += nblock) {
    const int nb1 = min_of(g1, nb0 + nblock);
    for (int m0 = 0, mr = 0; m0 < M; m0 += mr) {
      mr = min_of(4, M - m0);
      switch (mr) {
        case 1: ri_block<T, 1, kRIStrands>(a, m0, nb0, nb1, K, w, rb, y, ldy); break;
        case 2: ri_block<T, 2, 1>(a, m0, nb0, nb1, K, w, rb, y, ldy); break;
        case 3: ri_block<T, 3, 1>(a, m0, nb0, nb1, K, w, rb, y, ldy); break;
        default: ri_block<T, 4, 1>(a, m0, nb0, nb1, K, w, rb, y, ldy); break;
      }
    }
  }
}

// Panel vector v of P from one interleaved group (grp), units [u0, u0 + nu): the k-step vectors
// as they are, the scales converted; blocks past the row's groups zero. Not inlined, so that the driver's
// code (and its registers for the microkernel) stays as without it: inlined, it made TinyLlama
// q4_g32 pp128 (one thread) 251 -> 134 tok/s.
template <QType T>
__attribute__((noinline)) void build_panel_vec_ri(const uint8_t* grp, const Geo& geo, int64_t u0, int nu, int v, Panel& P) {
  using F = Fmt<T>;
  using R = RI<T>;
  for (int u = 0; u < nu; ++u) {
    for (int jb = 0; jb < kU; ++jb) {
      const int pb = u * kU + jb;  // block within the panel
      const int64_t b = (u0 + u) * kU + jb, g = b / R::kBPG;
      uint8_t* out = P.w + (static_cast<size_t>(pb) * 8 * kPV + v) * kVB;
      if (g >= geo.nb) {
        for (int t = 0; t < 8; ++t) vstore(out + t * kPV * kVB, vzero());
        _mm512_store_ps(&P.dw[pb][16 * v], fzero());
        if constexpr (F::kAsym) _mm512_store_ps(&P.mw[pb][16 * v], fzero());
        continue;
      }
      const uint8_t* gp = grp + static_cast<size_t>(g) * R::kGB;
      ri_steps<F::kBits>(gp + R::kSB + (b % R::kBPG) * R::kQB, [&](int t, VI w) { vstore(out + t * kPV * kVB, w); });
      _mm512_store_ps(&P.dw[pb][16 * v], _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(gp))));
      if constexpr (F::kAsym) {
        const __m256i m16 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(gp + 32));
        _mm512_store_ps(&P.mw[pb][16 * v], _mm512_cvtph_ps(m16));
      }
    }
  }
}

// Prefetches unit u0's bytes of the interleaved groups of rows [ns, ns + nr) (see
// prefetch_next_panel).
template <QType T>
void prefetch_next_panel_ri(const uint8_t* w, size_t rb, const Geo& geo, int ns, int64_t u0, int nr,
                            int64_t nblk_all) {
  using R = RI<T>;
  if (u0 * kU >= nblk_all) return;
  const int64_t g0 = u0 * kU / R::kBPG, g1 = min_of<int64_t>(geo.nb, ((u0 + kPUnits) * kU + R::kBPG - 1) / R::kBPG);
  for (int r = 0; r < nr; r += kRIRows) {
    const uint8_t* p = w + static_cast<size_t>(ns + r) * rb + static_cast<size_t>(g0) * R::kGB;
    for (size_t c = 0; c < static_cast<size_t>(g1 - g0) * R::kGB; c += 64) {
      _mm_prefetch(reinterpret_cast<const char*>(p + c), _MM_HINT_T0);
    }
  }
}

#endif
