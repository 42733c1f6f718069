// Row-interleaved weights for kernels/simd/qgemm_x86.cc (AVX-512): the load-time layout of every
// format but the codebooks (2 to 8 bits, symmetric and asymmetric, f16 scales with any G or
// two-level codes), its GEMV and its panel build. Not a standalone header: that file includes it
// once, inside namespace mxlm::kernels::<isa>::{anonymous}, after the panel GEMM; its top
// comment states the rules.
//
// Layout ("RI16"). The rows are packed at load in groups of 16 (QKernel::pack_rows); a group's
// 16 rows become 16 * row_bytes contiguous bytes from its first row:
//   [two-level only: D: 16 x f32, then M: 16 x f32 (asymmetric)] then per scale group
//   [d: 16 scales, row r at r] [m: 16 offsets, asymmetric only] [G/32 blocks of bits * 64 bytes]
// where a scale (offset) is an f16, or for two-level formats its 8-bit code (times the row's D,
// M). A block (32 elements of each of the 16 rows) is `bits` vectors of 64 bytes; byte 4r + i of
// each vector holds bits of elements 4t + i of row r (k-steps t = 0..7), placed by the format's
// bit planes (RIPlan below; at 2, 4 and 8 bits: vector j holds k-step t = j + bits*s in bits
// [bits*s, bits*s + bits)). So masks (and at 3, 5 and 6 bits an or of two or three parts) give
// k-step t as 16 rows x 4 unsigned bytes, lane r = row r: the operand vpdpbusd multiplies with
// one broadcast activation dword, and exactly a panel vector (qgemm_x86_panel_inl.h) with no
// transpose. The scales of the 16 rows lie side by side: one vcvtph2ps (or a widening of 16
// codes and a multiply by D) gives them lane by lane. A last group of fewer than 16 rows keeps
// the row kernels' layout (QGemmFn's N says where it begins).
//
// Why. The row kernels (qgemm_x86_gemv_inl.h) reduce each row's int32 lanes per unit and convert
// per row, and at 2-3 bits that work, not memory, bounded decode on a shared core: `qgemv_cached`
// (weights in L2, one thread, Zen 5) read q2_g32 at 30-32 GB/s and q4_g32 at 45-51 in a busy
// minute, below one thread's share of the DRAM bandwidth. Here per block and 16 rows the GEMV
// does `bits` loads, one mask and one vpdpbusd per term of the plan (8 at 2, 4 and 8 bits, 10-12
// at 3, 5 and 6) against broadcast activation dwords and one convert, multiply and fma
// (asymmetric: one more fma): no lane reductions. Each term is masked in place (its bits times
// 2^sh in the byte), not shifted down: the 512-bit integer pipes bound this loop, and with a
// shift per k-step the decode took as many operations as the vpdpbusd (q2_g32 in L2 42 GB/s,
// the row kernel's rate); the int32 sums of each sh go to chains of their own and are shifted
// once per block (exact: every product is a multiple of 2^sh). M = 1 runs
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

// The bit planes. A block's `bits` vectors hold 8 bits per (row, element
// 4t + i) position and vector: 8 * bits bits for the 8 k-steps' values. Each k-step's value is one
// or more "terms": the bits of vector j under a byte mask, which are a part of the value (its bits
// from `off` on) times 2^sh, sh = lsb(mask) - off. Masked in place, a term is an exact vpdpbusd
// operand whose sums are 2^sh times the part's; the sums of each sh go to chains of their own,
// shifted once per block. The planes (byte bits, high to low):
//   2, 4, 8 bits  vector j = t % bits holds k-step t in bits [bits * (t / bits), +bits)
//   3 bits        v0 = [t6 b0-1 | t1 | t0], v1 = [t7 b0-1 | t3 | t2], v2 = [t7 b2 | t6 b2 | t5 | t4]
//   5 bits        vj (j < 5) bits 0-4: t = j; bits 5-7: v0 t5 b0-2, v1 t6 b0-2, v2 t7 b0-2,
//                 v3 [t7 b3 | t5 b3-4], v4 [t7 b4 | t6 b3-4]
//   6 bits        vj (j < 6) bits 0-5: t = j; bits 6-7: v0-v2 t6 b0-1, b2-3, b4-5; v3-v5 t7 likewise
// 2/4/8 bits: 8 terms; 3 bits 10, 5 and 6 bits 12; at most 5 distinct shifts. Per block and
// 16 rows the GEMV does a mask and a vpdpbusd per term: no shift per k-step.
struct RITerm {
  int t, j, mask, off;  // k-step, vector, byte mask, the part's first bit in the value
};
struct RIPlan {
  int n = 0;              // terms
  RITerm term[12] = {};   // in vector order
  int chain[12] = {};     // the int32 chain each term sums into
  int nch = 0;            // chains
  int ch_sh[8] = {};      // chain c sums 2^ch_sh[c] times its terms' parts
  int cpk = 1;            // chains per distinct shift (kinds with fewer than 4 get more: latency)
};
constexpr int lsb8(int m) {
  int i = 0;
  while (i < 8 && !((m >> i) & 1)) ++i;
  return i;
}
constexpr int popcount8(int m) {
  int c = 0;
  for (int i = 0; i < 8; ++i) c += (m >> i) & 1;
  return c;
}
constexpr RIPlan ri_plan(int bits) {
  RIPlan p;
  const auto add = [&p](int t, int j, int mask, int off) { p.term[p.n++] = RITerm{t, j, mask, off}; };
  if (bits == 2 || bits == 4 || bits == 8) {
    for (int j = 0; j < bits; ++j) {
      for (int t = j; t < 8; t += bits) add(t, j, (((1 << bits) - 1) << (bits * (t / bits))) & 0xFF, 0);
    }
  } else if (bits == 3) {
    add(0, 0, 0x07, 0), add(1, 0, 0x38, 0), add(6, 0, 0xC0, 0);
    add(2, 1, 0x07, 0), add(3, 1, 0x38, 0), add(7, 1, 0xC0, 0);
    add(4, 2, 0x07, 0), add(5, 2, 0x38, 0), add(6, 2, 0x40, 2), add(7, 2, 0x80, 2);
  } else if (bits == 5) {
    add(0, 0, 0x1F, 0), add(5, 0, 0xE0, 0);
    add(1, 1, 0x1F, 0), add(6, 1, 0xE0, 0);
    add(2, 2, 0x1F, 0), add(7, 2, 0xE0, 0);
    add(3, 3, 0x1F, 0), add(5, 3, 0x60, 3), add(7, 3, 0x80, 3);
    add(4, 4, 0x1F, 0), add(6, 4, 0x60, 3), add(7, 4, 0x80, 4);
  } else if (bits == 6) {
    for (int j = 0; j < 6; ++j) add(j, j, 0x3F, 0), add(6 + j / 3, j, 0xC0, 2 * (j % 3));
  }
  int sh[8] = {}, nk = 0, kind[12] = {};
  for (int i = 0; i < p.n; ++i) {
    const int s = lsb8(p.term[i].mask) - p.term[i].off;
    int k = 0;
    while (k < nk && sh[k] != s) ++k;
    if (k == nk) sh[nk++] = s;
    kind[i] = k;
  }
  p.cpk = nk >= 4 ? 1 : 4 / nk;
  p.nch = nk * p.cpk;
  int used[8] = {};
  for (int i = 0; i < p.n; ++i) p.chain[i] = kind[i] * p.cpk + used[kind[i]]++ % p.cpk;
  for (int c = 0; c < p.nch; ++c) p.ch_sh[c] = sh[c / p.cpk];
  return p;
}
// Every bit of every vector belongs to one term, every bit of every k-step's value to one term,
// shifts are >= 0, and the plain (shift 0) kind comes first (the symmetric -z*sum(a) starts there).
constexpr bool ri_plan_ok(int bits) {
  const RIPlan p = ri_plan(bits);
  int vbits[8] = {}, tbits[8] = {};
  for (int i = 0; i < p.n; ++i) {
    const RITerm& e = p.term[i];
    const int w = popcount8(e.mask);
    if (e.j >= bits || (vbits[e.j] & e.mask) || lsb8(e.mask) < e.off) return false;
    if (e.mask != ((((1 << w) - 1) << lsb8(e.mask)) & 0xFF)) return false;  // contiguous
    vbits[e.j] |= e.mask;
    const int part = ((1 << w) - 1) << e.off;
    if (tbits[e.t] & part) return false;
    tbits[e.t] |= part;
    if (i > 0 && p.term[i - 1].j > e.j) return false;
  }
  for (int j = 0; j < bits; ++j) {
    if (vbits[j] != 0xFF) return false;
  }
  for (int t = 0; t < 8; ++t) {
    if (tbits[t] != (1 << bits) - 1) return false;
  }
  return p.ch_sh[0] == 0 && p.nch <= 8;
}
static_assert(ri_plan_ok(2) && ri_plan_ok(3) && ri_plan_ok(4) && ri_plan_ok(5) && ri_plan_ok(6) && ri_plan_ok(8));
template <int Bits>
inline constexpr RIPlan kRIPlan = ri_plan(Bits);

template <QType T>
struct RI {
  using F = Fmt<T>;
  static constexpr int kBPG = F::kG / 32;                      // blocks per scale group
  // Two-level formats: the 16 rows' f32 D (then M) once per group of rows, before the groups.
  static constexpr size_t kHead = F::kTwoLevel ? kRIRows * static_cast<size_t>(F::kPrefix) : 0;
  static constexpr size_t kMOff = kRIRows * static_cast<size_t>(F::kCodeBytes);  // offsets in a scale group
  static constexpr size_t kSB = kMOff * (F::kAsym ? 2 : 1);  // scale bytes per scale group
  static constexpr size_t kQB = static_cast<size_t>(F::kBits) * 64;  // quant bytes per block
  static constexpr size_t kGB = kSB + kBPG * kQB;              // bytes per scale group (16 rows)
  static_assert(kGB == kRIRows * static_cast<size_t>(info_of(T).block_bytes));
  static_assert(!F::kCodebook && (F::kTwoLevel || F::kPrefix == 0));
};

// The 16 rows' scales (dw) and offsets (mw) of the scale group at gp, in a group of rows whose
// head is at grp: f16 converted, or the two-level codes times the rows' D (M), as the row kernels
// and the reference compute them.
template <QType T>
MXLM_QINLINE VF ri_dw(const uint8_t* grp, const uint8_t* gp) {
  if constexpr (Fmt<T>::kTwoLevel) {
    const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(gp));
    const VI i = Scales<T>::kSignedS ? _mm512_cvtepi8_epi32(c) : _mm512_cvtepu8_epi32(c);
    return fmul(to_float(i), _mm512_loadu_ps(reinterpret_cast<const float*>(grp)));
  } else {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(gp)));
  }
}
template <QType T>
MXLM_QINLINE VF ri_mw(const uint8_t* grp, const uint8_t* gp) {
  if constexpr (Fmt<T>::kTwoLevel) {
    const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(gp + RI<T>::kMOff));
    return fmul(to_float(_mm512_cvtepi8_epi32(c)), _mm512_loadu_ps(reinterpret_cast<const float*>(grp + 64)));
  } else {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(gp + RI<T>::kMOff)));
  }
}

// The 8 k-steps of one block (quants at qp) as fn(t, 16 rows x 4 unsigned bytes), each vector
// loaded once: a k-step's terms shifted down and or-ed (their bits lie in the byte: sh <= lsb).
template <int Bits, class Fn>
MXLM_QINLINE void ri_steps(const uint8_t* qp, Fn fn) {
  constexpr const RIPlan& PL = kRIPlan<Bits>;
  VI v[Bits];
  for (int j = 0; j < Bits; ++j) v[j] = _mm512_loadu_si512(qp + 64 * j);
  VI w[8];
#pragma GCC unroll 12
  for (int i = 0; i < PL.n; ++i) {
    const RITerm e = PL.term[i];
    const int sh = lsb8(e.mask) - e.off;
    VI x = e.mask == 0xFF ? v[e.j] : _mm512_and_si512(v[e.j], bcast8(e.mask));
    if (sh > 0) x = _mm512_srli_epi16(x, static_cast<unsigned>(sh));
    bool first = true;  // the k-step's first term
    for (int k = 0; k < i; ++k) first = first && PL.term[k].t != e.t;
    w[e.t] = first ? x : _mm512_or_si512(w[e.t], x);
  }
  for (int t = 0; t < 8; ++t) fn(t, w[t]);
}

// QPackFn (pack_rows 16): a full group interleaved as above, a smaller one as the row kernels
// read it. The quants go through the panel build (the rows' decoders and a transpose, per unit of
// 256 elements) and are or-ed into their planes: a scalar loop over the elements took 11 s more
// to load Llama-7B q4_g32 on two threads (18 s against 7). Formats whose decoder reads a repacked
// row (Dec::repack) are repacked into a scratch copy first.
template <QType T>
void pack_ri(const uint8_t* src, uint8_t* dst, int64_t K, int rows, size_t stride) {
  using F = Fmt<T>;
  using R = RI<T>;
  constexpr const RIPlan& PL = kRIPlan<F::kBits>;
  const Geo geo = make_geo<T>(K);
  const size_t row_bytes = geo.q_off + static_cast<size_t>(geo.nb) * F::kGroupQBytes;
  if (rows < kRIRows) {
    if constexpr (F::kRepacked) {
      pack_row<T>(src, dst, K, rows, stride);
    } else {
      for (int r = 0; r < rows; ++r) std::memcpy(dst + r * stride, src + r * stride, row_bytes);
    }
    return;
  }
  const uint8_t* rsrc = src;
  size_t rstride = stride;
  uint8_t* scratch = nullptr;  // new[], not a std::vector: see the rules (qgemm_x86.cc)
  if constexpr (F::kRepacked) {
    scratch = new uint8_t[kRIRows * row_bytes];
    for (int r = 0; r < kRIRows; ++r) pack_row<T>(src + r * stride, scratch + r * row_bytes, K, 1, 0);
    rsrc = scratch;
    rstride = row_bytes;
  }
  if constexpr (F::kTwoLevel) {
    for (int r = 0; r < kRIRows; ++r) {
      std::memcpy(dst + 4 * r, src + r * stride, 4);
      if constexpr (F::kAsym) std::memcpy(dst + 64 + 4 * r, src + r * stride + 4, 4);
    }
  }
  Panel P;
  for (int64_t u = 0; u * F::kGPU < geo.nb; ++u) {
    build_panel_vec<T>(rsrc, rstride, kRIRows, geo, u, 1, 0, P);
    for (int64_t g = u * F::kGPU; g < min_of<int64_t>(geo.nb, (u + 1) * F::kGPU); ++g) {
      uint8_t* out = dst + R::kHead + static_cast<size_t>(g) * R::kGB;
      const size_t cb = F::kCodeBytes;
      for (int r = 0; r < kRIRows; ++r) {
        std::memcpy(out + cb * r, src + r * stride + geo.d_off + cb * g, cb);
        if constexpr (F::kAsym) std::memcpy(out + R::kMOff + cb * r, src + r * stride + geo.m_off + cb * g, cb);
      }
      for (int j = 0; j < R::kBPG; ++j) {
        const int pb = static_cast<int>(g - u * F::kGPU) * R::kBPG + j;  // block within the unit
        VI v[F::kBits];
        for (int jv = 0; jv < F::kBits; ++jv) v[jv] = vzero();
        for (int i = 0; i < PL.n; ++i) {
          const RITerm e = PL.term[i];
          const int lo = lsb8(e.mask);
          const VI w = _mm512_load_si512(P.w + static_cast<size_t>((pb * 8 + e.t) * kPV) * kVB);
          // The part's bits down to bit 0 (bits pulled in from the next byte lie above the part's
          // width), masked, and up to their place: no carry out of the byte.
          const VI part = _mm512_and_si512(_mm512_srli_epi16(w, static_cast<unsigned>(e.off)), bcast8(e.mask >> lo));
          v[e.j] = _mm512_or_si512(v[e.j], _mm512_slli_epi16(part, static_cast<unsigned>(lo)));
        }
        uint8_t* q = out + R::kSB + j * R::kQB;
        for (int jv = 0; jv < F::kBits; ++jv) _mm512_storeu_si512(q + 64 * jv, v[jv]);
      }
    }
  }
  delete[] scratch;
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
  // The plan's chains per row and group (at least four: the vpdpbusd latency spread), each
  // kind's sums shifted down by its sh once per block.
  constexpr const RIPlan& PL = kRIPlan<F::kBits>;
  // Strands per pass: all NG while their chains fit 16 registers (2, 4, 6 and 8 bits at M = 1),
  // else fewer (3 and 5 bits: 5 chains each).
  constexpr int kNB = MR * NG * PL.nch <= 16 ? NG : 16 / (MR * PL.nch) >= 2 && NG % 2 == 0 ? 2 : 1;
  VF acc[MR][NG];
  for (int m = 0; m < MR; ++m) {
    for (int n = 0; n < NG; ++n) acc[m][n] = first || !y[n] ? fzero() : _mm512_loadu_ps(y[n] + m * ldy);
  }
  const int64_t be = bs + sblk;
  for (int64_t g = bs / R::kBPG; g * R::kBPG < be; ++g) {
    const size_t go = R::kHead + static_cast<size_t>(g) * R::kGB;
    VF dw[NG], mw[NG];
    for (int n = 0; n < NG; ++n) {
      const uint8_t* gp = grp[n] + go;
      if constexpr (R::kBPG == 1) {
        for (size_t c = 0; c < R::kGB; c += 64) {
          _mm_prefetch(reinterpret_cast<const char*>(gp + kRIPrefetch + c), _MM_HINT_T0);
        }
      }
      dw[n] = ri_dw<T>(grp[n], gp);
      if constexpr (F::kAsym) mw[n] = ri_mw<T>(grp[n], gp);
    }
    for (int j = 0; j < R::kBPG; ++j) {
      const int64_t b = g * R::kBPG + j;
      if (b >= be) break;
      const size_t qo = go + R::kSB + j * R::kQB;
      // Each strand's bytes kRIPrefetch ahead: G = 32 a scale group at a time (above), longer
      // groups block by block (the scales with the first block). A whole q4_g128 group at once
      // (17 lines per strand in a burst) read 80-92 % of the bandwidth in `qgemv` one thread where
      // q4_g32 read 97-103 %; block by block 88-114 % against the old 84-96 % (three rounds,
      // builds alternating), TinyLlama q4_g128 one thread 49.5-50.4 -> 56.2-56.6 tok/s.
      if constexpr (R::kBPG > 1) {
        const size_t p0 = j == 0 ? go : qo, p1 = qo + R::kQB;
        for (int n = 0; n < NG; ++n) {
          for (size_t c = p0; c < p1; c += 64) {
            _mm_prefetch(reinterpret_cast<const char*>(grp[n] + kRIPrefetch + c), _MM_HINT_T0);
          }
        }
      }
      // Strands in passes of kNB, so that the passes' chains stay in registers.
#pragma GCC unroll 4
      for (int n0 = 0; n0 < NG; n0 += kNB) {
        VI ic[MR][kNB][PL.nch];
        for (int m = 0; m < MR; ++m) {
          const VI init = F::kZ != 0 ? _mm512_set1_epi32(nz[m * kRISlab + (b - bs)]) : _mm512_setzero_si512();
          for (int n = 0; n < kNB; ++n) {
            ic[m][n][0] = init;
            for (int c = 1; c < PL.nch; ++c) ic[m][n][c] = _mm512_setzero_si512();
          }
        }
        VI v[kNB];
        // A loop unrolled over the plan's constants, not a lambda per term: GCC kept the chains
        // of a lambda's captured array on the stack (a load and a store per vpdpbusd).
#pragma GCC unroll 12
        for (int i = 0; i < PL.n; ++i) {
          const RITerm e = PL.term[i];
          const int c = PL.chain[i];
          if (i == 0 || PL.term[i == 0 ? 0 : i - 1].j != e.j) {  // the term's vector, once
            for (int n = 0; n < kNB; ++n) v[n] = _mm512_loadu_si512(grp[n0 + n] + qo + 64 * e.j);
          }
          VI w[kNB];
          for (int n = 0; n < kNB; ++n) w[n] = e.mask == 0xFF ? v[n] : _mm512_and_si512(v[n], bcast8(e.mask));
          for (int m = 0; m < MR; ++m) {
            int32_t av;
            std::memcpy(&av, a.q + (m0 + m) * a.kp + b * 32 + 4 * e.t, 4);
            const VI ab = _mm512_set1_epi32(av);
            for (int n = 0; n < kNB; ++n) ic[m][n][c] = _mm512_dpbusd_epi32(ic[m][n][c], w[n], ab);
          }
        }
        for (int m = 0; m < MR; ++m) {
          const VF da = _mm512_set1_ps(a.d[(m0 + m) * nbs + b]);
          for (int n = 0; n < kNB; ++n) {
            VI i = _mm512_setzero_si512();
#pragma GCC unroll 8
            for (int k = 0; k < PL.nch / PL.cpk; ++k) {  // each kind: its chains summed, then shifted
              VI s = ic[m][n][k * PL.cpk];
#pragma GCC unroll 4
              for (int c = 1; c < PL.cpk; ++c) s = _mm512_add_epi32(s, ic[m][n][k * PL.cpk + c]);
              const int sh = PL.ch_sh[k * PL.cpk];
              i = k == 0 ? s : _mm512_add_epi32(i, _mm512_srai_epi32(s, sh));  // exact: a multiple of 2^sh
            }
            acc[m][n0 + n] = fmadd(to_float(i), fmul(dw[n0 + n], da), acc[m][n0 + n]);
          }
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
      const uint8_t* gp = grp + R::kHead + static_cast<size_t>(g) * R::kGB;
      ri_steps<F::kBits>(gp + R::kSB + (b % R::kBPG) * R::kQB, [&](int t, VI w) { vstore(out + t * kPV * kVB, w); });
      _mm512_store_ps(&P.dw[pb][16 * v], ri_dw<T>(grp, gp));
      if constexpr (F::kAsym) _mm512_store_ps(&P.mw[pb][16 * v], ri_mw<T>(grp, gp));
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
    const uint8_t* p = w + static_cast<size_t>(ns + r) * rb + R::kHead + static_cast<size_t>(g0) * R::kGB;
    for (size_t c = 0; c < static_cast<size_t>(g1 - g0) * R::kGB; c += 64) {
      _mm_prefetch(reinterpret_cast<const char*>(p + c), _MM_HINT_T0);
    }
  }
}

#endif
