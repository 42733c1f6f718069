// The panel GEMM of kernels/simd/qgemm_x86.cc (prefill, M >= kPanelMinM) on AVX-512 and AVX2.
// Not a standalone header: that file includes it once, inside namespace
// mxlm::kernels::<isa>::{anonymous}, after the tile kernels (it uses their decoders, layouts
// and group scales); its top comment states the rules.
//
// Both ISAs decode the weights of kPR rows x one K block once into a panel that stays in L1, in
// dot order: k-step s (elements 4s..4s+3) holds those elements of kLanes rows as kLanes dwords,
// kPV such vectors per k-step, natural K order (the decoders' qword order is undone by where each
// transposed vector is stored), and the block scales as f32 [block][row]. A microkernel then
// runs kPMR activation rows x the panel's rows, broadcasting 4 activation bytes per k-step. The
// K block is kPBlocks activation blocks; per block each row's int32 sums start at -z * sum(a)
// (sum(a) recovered exactly as ds / d: see ActQ8) and are scaled once: cvt, mul, fma.
// A row's result does not depend on [n0, n1) (every weight row is its own lane) nor on M.
//
// No include guard, on purpose.

#if defined(MXLM_TARGET_AVX512)
// ---- AVX-512: int8 panels and a VNNI microkernel ---------------------------------------------
// With many activation rows the weight decode is amortized, so the tile kernel's cost is mostly
// its float step per (row, weight row, unit). Here a panel is 64 rows x 256 elements (16 KiB);
// the microkernel runs 3 activation rows x 64 weight rows: per k-step 4 panel loads, 3
// broadcasts and 12 vpdpbusd. Measured on Zen 4: the bare k-step loop reaches ~74% of the
// vpdpbusd peak (loads and broadcasts share the pipes), the whole GEMM at M = 128 ~55%.

constexpr int kPV = 4;                  // int32 vectors of weight rows per panel
constexpr int kPR = 16 * kPV;           // weight rows per panel
constexpr int kPUnits = 1;              // units per K block (the panel stays in L1)
constexpr int kPBlocks = kPUnits * kU;  // activation blocks per K block
constexpr int kPSlab = 8;               // K blocks per slab (the driver's order: see there)
constexpr int kNzStride = kPSlab * kPBlocks;  // row stride of the -z*sum(a) table (one slab)
constexpr int kPSteps = kPBlocks * 8;   // k-steps of 4 elements per K block
constexpr int kPMR = 3;                 // activation rows per microtile
constexpr int kPMChunk = 128;           // activation rows per chunk of the sum(a) table
constexpr int kPanelMinM = 32;  // pp16 of TinyLlama: a wash (-5..+19 % by format); pp32: panels +12..45 %

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

#else  // AVX2

// ---- AVX2: int8 panels and a vpmaddubsw microkernel --------------------------------------------
// No dot instruction to int32: vpmaddubsw multiplies unsigned weight bytes by signed activation
// bytes and adds pairs into int16, so a row's dword of a k-step becomes two int16 lanes; those
// are summed in int16 over the k-steps of a block (s16_steps: the largest count whose worst
// case, steps * 2 * (2^bits - 1) * 127, fits int16: all 8 for bits <= 4) and widened once by
// vpmaddwd with ones. Per k-step and 8 weight rows that is one vpmaddubsw and one vpaddw, what
// the peak probe counts. Only unsigned weights (Fmt::kSigned false): 8-bit and codebook weights
// would need the sign trick per activation row (two more operations per product) and stay on
// the tile kernel. A panel is 16 rows x 256 elements (4 KiB); the microkernel runs 3 activation
// rows x 16 weight rows (per k-step 2 panel loads, 3 broadcasts, 6 vpmaddubsw, 6 vpaddw; GCC
// keeps 4 of the 6 float sums in registers). Measured on a Zen 3 host (int8 peak 290-320 GOP/s
// per core), one thread, M = 128, K = N = 4096, GOP/s tile -> panel: q4_g32 114-121 -> 145-154,
// q3_g32 76-83 -> 137-144, q5_g32 70-78 -> 125-142, q2_g32 111-126 -> 137-139, q4k_g32 106-125
// -> 128-139, q2ak_g32 112-131 -> 112-121 (a wash); 3 x 1 and 6 x 1 microtiles (8-row vectors)
// were 10-20 % slower, 2 x 2 the same. The k-step loop needs its unroll pragma and the empty
// asm on each int16 sum: without them GCC computed a block's 48 products first and added them
// as a tree through the stack (86 GOP/s).

constexpr int kPV = 2;                  // vectors of 8 weight rows per panel
constexpr int kPR = 8 * kPV;            // weight rows per panel
constexpr int kPUnits = 2;              // units per K block
constexpr int kPBlocks = kPUnits * kU;  // activation blocks per K block (= kLanes)
constexpr int kPSlab = 8;               // K blocks per slab (the driver's order: see there)
constexpr int kNzStride = kPSlab * kPBlocks;  // row stride of the -z*sum(a) table (one slab)
constexpr int kPSteps = kPBlocks * 8;   // k-steps of 4 elements per K block
constexpr int kPMR = 3;                 // activation rows per microtile
constexpr int kPMChunk = 64;            // activation rows per chunk
// TinyLlama-1.1B on a Zen 3 host, 1 thread, tok/s tile -> panel: pp16 q4_g32 46 -> 49-51, q3a_g32
// 30-33 -> 43-46, q2_g32 46-49 -> 47-49; pp24 +10-60 %; pp8 a loss for q2_g32 (39-47 -> 34-35).
constexpr int kPanelMinM = 16;

// In-place transpose of an 8 x 8 dword matrix: r[i] lane j <-> r[j] lane i.
MXLM_QINLINE void transpose8(VI r[8]) {
  VI a[8], b[8];
  for (int i = 0; i < 8; i += 2) {
    a[i] = _mm256_unpacklo_epi32(r[i], r[i + 1]);
    a[i + 1] = _mm256_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int g = 0; g < 8; g += 4) {
    b[g] = _mm256_unpacklo_epi64(a[g], a[g + 2]);
    b[g + 1] = _mm256_unpackhi_epi64(a[g], a[g + 2]);
    b[g + 2] = _mm256_unpacklo_epi64(a[g + 1], a[g + 3]);
    b[g + 3] = _mm256_unpackhi_epi64(a[g + 1], a[g + 3]);
  }
  // b[4g + c], 128-bit lane L: column 4L + c of rows 4g..4g+3.
  for (int c = 0; c < 4; ++c) {
    r[c] = _mm256_permute2x128_si256(b[c], b[4 + c], 0x20);
    r[4 + c] = _mm256_permute2x128_si256(b[c], b[4 + c], 0x31);
  }
}
#endif

// ---- the panel (both ISAs) ------------------------------------------------------------------

struct alignas(64) Panel {
  uint8_t w[kPSteps * kPV * kVB];  // [k-step][vector][kLanes rows x 4 bytes]
  float dw[kPBlocks][kPR];
  float mw[kPBlocks][kPR];  // asymmetric formats
};

MXLM_QINLINE VI cast_si(VF f) {
#if defined(MXLM_TARGET_AVX512)
  return _mm512_castps_si512(f);
#else
  return _mm256_castps_si256(f);
#endif
}
MXLM_QINLINE void transpose_lanes(VI r[kLanes]) {
#if defined(MXLM_TARGET_AVX512)
  transpose16(r);
#else
  transpose8(r);
#endif
}
MXLM_QINLINE VI vzero() {
#if defined(MXLM_TARGET_AVX512)
  return _mm512_setzero_si512();
#else
  return _mm256_setzero_si256();
#endif
}
MXLM_QINLINE void vstore(void* p, VI v) {
#if defined(MXLM_TARGET_AVX512)
  _mm512_store_si512(p, v);
#else
  _mm256_store_si256(static_cast<__m256i*>(p), v);
#endif
}

// Decodes weight rows [0, nr) of `rows` (rows rb bytes apart), units [u0, u0 + nu), into
// vector v of P (rows kLanes * v .. kLanes * v + kLanes - 1 of the panel).
template <QType T>
void build_panel_vec(const uint8_t* rows, size_t rb, int nr, const Geo& geo, int64_t u0, int nu, int v, Panel& P) {
  using F = Fmt<T>;
  constexpr int kUnitSteps = kUnitElems / 4;  // k-steps per unit
  const Layout& L = F::layout();
  VI cbv[kLanes];
  for (int r = 0; r < kLanes; ++r) cbv[r] = r < nr ? codebook_vec<T>(rows + r * rb) : vzero();
  for (int u = 0; u < nu; ++u) {
    const int64_t gu = (u0 + u) * F::kGPU;  // first group of the unit
    const bool partial = gu + F::kGPU > geo.nb;
    VI dec[4][kLanes];
    for (int r = 0; r < kLanes; ++r) {
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
        for (int t = 0; t < 4; ++t) wv[t] = vzero();
      }
      for (int t = 0; t < 4; ++t) dec[t][r] = wv[t];
    }
    uint8_t* out = P.w + (static_cast<size_t>(u) * kUnitSteps * kPV + v) * kVB;
    for (int t = 0; t < 4; ++t) {
      transpose_lanes(dec[t]);
      // Dword j of vector t: elements src[t][j/2]*8 + (j%2)*4 .. +3 of the unit.
      for (int j = 0; j < kLanes; ++j) vstore(out + (2 * L.src[t][j / 2] + j % 2) * kPV * kVB, dec[t][j]);
    }
  }
  // Block scales (and offsets), kLanes blocks at a time: [row][block] -> transpose -> [block][row].
  const int64_t g0 = u0 * F::kGPU;
  for (int h = 0; h < (kPBlocks + kLanes - 1) / kLanes; ++h) {
    const int64_t gh = g0 + h * (kLanes * 32 / F::kG);
    const int nj = min_of(kLanes, kPBlocks - kLanes * h);
    VI s[kLanes];
    for (int r = 0; r < kLanes; ++r) {
      s[r] = r < nr ? cast_si(Scales<T>::panel(rows + r * rb, geo, gh, false)) : vzero();
    }
    transpose_lanes(s);
    for (int j = 0; j < nj; ++j) vstore(&P.dw[kLanes * h + j][kLanes * v], s[j]);
    if constexpr (F::kAsym) {
      for (int r = 0; r < kLanes; ++r) {
        s[r] = r < nr ? cast_si(Scales<T>::panel(rows + r * rb, geo, gh, true)) : vzero();
      }
      transpose_lanes(s);
      for (int j = 0; j < nj; ++j) vstore(&P.mw[kLanes * h + j][kLanes * v], s[j]);
    }
  }
}

// ---- the microkernels and drivers -------------------------------------------------------------

// A microtile's activations: rows from `row` (tile row m of the chunk), K block from block b0 of
// the slab starting at bs: quants, block scales, d * sums, and the -z*sum(a) table's entries.
struct MicroActs {
  const int8_t* q;
  const float* d;
  const float* ds;
  const int32_t* nz;
};
MXLM_QINLINE MicroActs micro_acts(const ActQ8& a, int64_t nbs, const int32_t* nz, int row, int m, int64_t b0,
                                  int64_t bs) {
  return {a.q + row * a.kp + b0 * 32, a.d + row * nbs + b0, a.ds + row * nbs + b0, nz + m * kNzStride + (b0 - bs)};
}

#if defined(MXLM_TARGET_AVX512)
// Rows [0, MR) of activations (a: first block of the K block; ad/ads: its block scales, nz its
// -z*sum(a) table, row stride kNzStride) x the panel's NV*16 weight rows, nblk blocks: the sums
// so far from y (row stride ldy; none if first) plus these blocks' into yo (row stride ldo; may
// be y). Lanes of the last vector past its rows are masked off.
template <QType T, int MR, int NV>
MXLM_QINLINE void panel_micro(const Panel& P, int nblk, const int8_t* a, int64_t kp, const float* ad, const float* ads,
                              int64_t nbs, const int32_t* nz, const float* y, size_t ldy, float* yo, size_t ldo,
                              __mmask16 nmask, bool first) {
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
      _mm512_mask_storeu_ps(yo + m * ldo + 16 * v, v == NV - 1 ? nmask : 0xFFFF, acc[m][v]);
    }
  }
}

// Not inlined: a function of its own gets the microkernel's registers whatever the driver around
// it holds. Inlined into the driver (as before), GCC's code for it depended on that driver: the
// k-step loop gained register moves and a spill when the driver's four calls went through one
// lambda, and again when it grew the interleaved layout's build, and `qgemm` M = 128 (one thread,
// Zen 5, K = N = 4096) fell to 44-52 % of the int8 peak; now 53-68 % in the same runs (q4_g32
// 51 -> 67 %, q8_g32 48 -> 55-58 %, q3a_g32 44-45 -> 53-55 %, q6k_g32 46-47 -> 58-66 %), and
// TinyLlama pp128 one thread q4_g32 184-187 -> 255-267 tok/s, q3a_g32 176-177 -> 223-226, q8_g32
// 177-180 -> 229 (builds alternating, the int8 peak read 836-858 GOP/s in each run).
template <QType T, int NV>
__attribute__((noinline)) void panel_rows(int mr, const Panel& P, int nblk, const int8_t* a, int64_t kp,
                                          const float* ad, const float* ads, int64_t nbs, const int32_t* nz,
                                          const float* y, size_t ldy, float* yo, size_t ldo, int last, bool first) {
  static_assert(kPMR == 3);
  const __mmask16 nmask = static_cast<__mmask16>(last >= 16 ? 0xFFFF : (1u << last) - 1);
  switch (mr) {
    case 1: panel_micro<T, 1, NV>(P, nblk, a, kp, ad, ads, nbs, nz, y, ldy, yo, ldo, nmask, first); break;
    case 2: panel_micro<T, 2, NV>(P, nblk, a, kp, ad, ads, nbs, nz, y, ldy, yo, ldo, nmask, first); break;
    default: panel_micro<T, kPMR, NV>(P, nblk, a, kp, ad, ads, nbs, nz, y, ldy, yo, ldo, nmask, first); break;
  }
}

// -z * sum(a) of blocks [b0, b0 + nblk) of activation rows [mc, mc + mn), row stride `stride`:
// ds = d * sum exactly rounded and |sum| <= 32 * 127, so ds / d is within 0.001 of the integer
// sum (d = 0 only for all-zero blocks).
template <QType T>
void neg_z_sums(const ActQ8& a, int mc, int mn, int64_t b0, int nblk, int64_t nbs, int32_t* nz,
                int stride = kNzStride) {
  const VF negz = _mm512_set1_ps(-static_cast<float>(Fmt<T>::kZ));
  for (int m = 0; m < mn; ++m) {
    const float* ad = a.d + (mc + m) * nbs + b0;
    const float* ads = a.ds + (mc + m) * nbs + b0;
    for (int h = 0; h < nblk; h += 16) {
      const int left = nblk - h;
      const __mmask16 k = left >= 16 ? 0xFFFF : left <= 0 ? 0 : static_cast<__mmask16>((1u << left) - 1);
      const VF d = _mm512_maskz_loadu_ps(k, ad + h), ds = _mm512_maskz_loadu_ps(k, ads + h);
      const __mmask16 nzk = _mm512_cmp_ps_mask(d, _mm512_setzero_ps(), _CMP_NEQ_UQ);
      const VF sum = _mm512_roundscale_ps(_mm512_maskz_div_ps(nzk, ds, d), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      _mm512_storeu_si512(nz + m * stride + h, _mm512_cvtps_epi32(fmul(sum, negz)));
    }
  }
}

#else  // AVX2

// k-steps per int16 sum (see the section comment).
template <QType T>
constexpr int s16_steps() {
  constexpr int kMax = 2 * ((1 << Fmt<T>::kBits) - 1) * 127;
  constexpr int kSteps = 32767 / kMax;
  return kSteps >= 8 ? 8 : kSteps >= 4 ? 4 : kSteps >= 2 ? 2 : 1;
}

// Rows [0, MR) of activations x the panel's NV*8 weight rows, nblk blocks, into y (the last
// vector holds `last` rows; lanes past them are neither read nor written).
template <QType T, int MR, int NV>
MXLM_QINLINE void panel_micro(const Panel& P, int nblk, const int8_t* a, int64_t kp, const float* ad, const float* ads,
                              int64_t nbs, const int32_t* nz, float* y, size_t ldy, int last, bool first) {
  using F = Fmt<T>;
  constexpr int kS = s16_steps<T>();
  const VI ones = _mm256_set1_epi16(1);
  const bool full = last >= 8;
  const VI lmask = _mm256_cmpgt_epi32(_mm256_set1_epi32(last), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  VF acc[MR][NV];
  for (int m = 0; m < MR; ++m) {
    for (int v = 0; v < NV; ++v) {
      float* yp = y + m * ldy + 8 * v;
      acc[m][v] = first ? fzero() : (v < NV - 1 || full) ? _mm256_loadu_ps(yp) : _mm256_maskload_ps(yp, lmask);
    }
  }
  for (int b = 0; b < nblk; ++b) {
    VI ia[MR][NV];
    const uint8_t* wp = P.w + b * 8 * kPV * 32;
#pragma GCC unroll 8
    for (int s0 = 0; s0 < 8; s0 += kS) {
      VI is[MR][NV];
#pragma GCC unroll 8
      for (int s = s0; s < s0 + kS; ++s) {
        VI wv[NV];
        for (int v = 0; v < NV; ++v) {
          wv[v] = _mm256_load_si256(reinterpret_cast<const __m256i*>(wp + (s * kPV + v) * 32));
          asm("" : "+x"(wv[v]));  // one load per vector and k-step, not one per use
        }
        for (int m = 0; m < MR; ++m) {
          int32_t av;
          std::memcpy(&av, a + m * kp + b * 32 + 4 * s, 4);
          const VI ab = _mm256_set1_epi32(av);
          for (int v = 0; v < NV; ++v) {
            const VI p = _mm256_maddubs_epi16(wv[v], ab);
            is[m][v] = s == s0 ? p : _mm256_add_epi16(is[m][v], p);
            // Summed in order, in a register: GCC otherwise computes all the block's products
            // first and adds them as a tree, spilling most of them.
            asm("" : "+x"(is[m][v]));
          }
        }
      }
      for (int m = 0; m < MR; ++m) {
        for (int v = 0; v < NV; ++v) {
          const VI w32 = _mm256_madd_epi16(is[m][v], ones);
          ia[m][v] = s0 == 0 ? w32 : _mm256_add_epi32(ia[m][v], w32);
        }
      }
    }
    for (int m = 0; m < MR; ++m) {
      const VF da = _mm256_set1_ps(ad[m * nbs + b]);
      if constexpr (F::kZ != 0) {
        const VI z = _mm256_set1_epi32(nz[m * kNzStride + b]);
        for (int v = 0; v < NV; ++v) ia[m][v] = _mm256_add_epi32(ia[m][v], z);
      }
      for (int v = 0; v < NV; ++v) {
        acc[m][v] = fmadd(to_float(ia[m][v]), fmul(_mm256_load_ps(&P.dw[b][8 * v]), da), acc[m][v]);
      }
    }
    if constexpr (F::kAsym) {
      for (int m = 0; m < MR; ++m) {
        const VF ds = _mm256_set1_ps(ads[m * nbs + b]);
        for (int v = 0; v < NV; ++v) acc[m][v] = fmadd(_mm256_load_ps(&P.mw[b][8 * v]), ds, acc[m][v]);
      }
    }
  }
  for (int m = 0; m < MR; ++m) {
    for (int v = 0; v < NV; ++v) {
      float* yp = y + m * ldy + 8 * v;
      if (v < NV - 1 || full) {
        _mm256_storeu_ps(yp, acc[m][v]);
      } else {
        _mm256_maskstore_ps(yp, lmask, acc[m][v]);
      }
    }
  }
}

// A microtile of mr <= MR activation rows.
template <QType T, int NV, int MR = kPMR>
MXLM_QINLINE void panel_rows(int mr, const Panel& P, int nblk, const int8_t* a, int64_t kp, const float* ad,
                             const float* ads, int64_t nbs, const int32_t* nz, float* y, size_t ldy, int last,
                             bool first) {
  if constexpr (MR > 1) {
    if (mr < MR) {
      panel_rows<T, NV, MR - 1>(mr, P, nblk, a, kp, ad, ads, nbs, nz, y, ldy, last, first);
      return;
    }
  }
  panel_micro<T, MR, NV>(P, nblk, a, kp, ad, ads, nbs, nz, y, ldy, last, first);
}

// -z * sum(a) of blocks [b0, b0 + nblk) of activation rows [mc, mc + mn), row stride kNzStride
// (see the AVX-512 version).
template <QType T>
void neg_z_sums(const ActQ8& a, int mc, int mn, int64_t b0, int nblk, int64_t nbs, int32_t* nz) {
  const VF negz = _mm256_set1_ps(-static_cast<float>(Fmt<T>::kZ));
  for (int h = 0; h < nblk; h += kLanes) {
    const VI k = _mm256_cmpgt_epi32(_mm256_set1_epi32(nblk - h), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    for (int m = 0; m < mn; ++m) {
      const float* ad = a.d + (mc + m) * nbs + b0 + h;
      const float* ads = a.ds + (mc + m) * nbs + b0 + h;
      const VF d = _mm256_maskload_ps(ad, k), ds = _mm256_maskload_ps(ads, k);
      const VF nzk = _mm256_cmp_ps(d, _mm256_setzero_ps(), _CMP_NEQ_UQ);
      const VF sum =
          _mm256_round_ps(_mm256_and_ps(_mm256_div_ps(ds, d), nzk), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(nz + m * kNzStride + h), _mm256_cvtps_epi32(fmul(sum, negz)));
    }
  }
}

// Order: per chunk of kPMChunk activation rows and slab of kPSlab K blocks, panels outer and the
// slab's K blocks inner, so that a panel's outputs (64 rows x 16 floats) stay in cache across the
// slab and each weight row is read forward, one run per slab, while the slab's activations (64
// rows x 2 KiB) come from L2. The order AVX-512 had then (K blocks outer, panels inner) streams
// the whole y through every K block (128 x 4096 floats, 2 MiB: past L2) and reads a panel's rows
// 2.3 KiB apart: q4_g32, q2_g32 and q4k_g32 at M = 128, K = N = 4096, one thread, 96-131 ->
// 111-149 GOP/s (three alternating runs). Summing each panel's slab in a contiguous 4 KiB tile
// instead of in y (whose rows, N floats apart, share L1 sets) measured no better here (AVX-512,
// with 4x the panel's floats, gains from it: see there).
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
    for (int64_t bs = 0; bs < nblk_all; bs += kNzStride) {
      const int sblk = static_cast<int>(min_of<int64_t>(kNzStride, nblk_all - bs));
      if constexpr (F::kZ != 0) neg_z_sums<T>(a, mc, mn, bs, sblk, nbs, nz);
      for (int ns = n0; ns < n1; ns += kPR) {
        const int nr = min_of(kPR, n1 - ns);
        const int nv = (nr + kLanes - 1) / kLanes;
        const int last = nr - kLanes * (nv - 1);
        for (int64_t b0 = bs; b0 < bs + sblk; b0 += kPBlocks) {
          const int nblk = static_cast<int>(min_of<int64_t>(kPBlocks, bs + sblk - b0));
          const bool first = b0 == 0;
          const int64_t u0 = b0 / kU;
          const int nu = (nblk + kU - 1) / kU;
          for (int v = 0; v < nv; ++v) {
            build_panel_vec<T>(w + static_cast<size_t>(ns + kLanes * v) * rb, rb, min_of(kLanes, nr - kLanes * v), geo,
                               u0, nu, v, P);
          }
          if (b0 + kPBlocks < nblk_all) {
            // The next K block's quants of these rows, while the microtiles run (the panel build
            // waited on them: 7 % -> 3 % of the GEMM's samples).
            const size_t o = geo.q_off + static_cast<size_t>(u0 + kPUnits) * F::kUnitQBytes;
            for (int r = 0; r < nr; ++r) {
              for (int c = 0; c < kPUnits * F::kUnitQBytes; c += 64) {
                _mm_prefetch(reinterpret_cast<const char*>(w + static_cast<size_t>(ns + r) * rb + o + c), _MM_HINT_T0);
              }
            }
          }
          for (int m = 0; m < mn; m += kPMR) {
            const int row = mc + m, mr = min_of(kPMR, mn - m);
            const MicroActs ma = micro_acts(a, nbs, nz, row, m, b0, bs);
            float* yp = y + static_cast<size_t>(row) * ldy + ns;
            if (nv == 1) {
              panel_rows<T, 1>(mr, P, nblk, ma.q, a.kp, ma.d, ma.ds, nbs, ma.nz, yp, ldy, last, first);
            } else {
              panel_rows<T, kPV>(mr, P, nblk, ma.q, a.kp, ma.d, ma.ds, nbs, ma.nz, yp, ldy, last, first);
            }
          }
        }
      }
    }
  }
}

#endif  // AVX2

// Whether format T has a panel GEMM on this ISA.
template <QType T>
constexpr bool has_panel() {
#if defined(MXLM_TARGET_AVX512)
  return true;
#else
  return !Fmt<T>::kSigned;
#endif
}

#if defined(MXLM_TARGET_AVX512)
// The interleaved layout's panel build and prefetch (qgemm_x86_ri_inl.h).
template <QType T>
void build_panel_vec_ri(const uint8_t* grp, const Geo& geo, int64_t u0, int nu, int v, Panel& P);
template <QType T>
void prefetch_next_panel_ri(const uint8_t* w, size_t rb, const Geo& geo, int ns, int64_t u0, int nr, int64_t nblk_all);

// Prefetches the quants and scales of the panel the driver builds next (rows [ns, ns + nr), unit
// u0), while the microtiles run over this one: its 64 rows are 64 streams a row apart, which the
// hardware prefetchers do not follow, so the build otherwise waits on each row's lines.
template <QType T>
MXLM_QINLINE void prefetch_next_panel(const uint8_t* w, size_t rb, const Geo& geo, int ns, int64_t u0, int nr,
                                      int64_t nblk_all) {
  using F = Fmt<T>;
  if (u0 * kU >= nblk_all) return;
  const size_t qo = geo.q_off + static_cast<size_t>(u0) * F::kUnitQBytes;
  const size_t d0 = geo.d_off + static_cast<size_t>(u0 * F::kGPU) * F::kCodeBytes;
  const size_t m0 = geo.m_off + static_cast<size_t>(u0 * F::kGPU) * F::kCodeBytes;
  for (int r = 0; r < nr; ++r) {
    const uint8_t* row = w + static_cast<size_t>(ns + r) * rb;
    for (int c = 0; c < kPUnits * F::kUnitQBytes; c += 64) _mm_prefetch(reinterpret_cast<const char*>(row + qo + c), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(row + d0), _MM_HINT_T0);
    if constexpr (F::kAsym) _mm_prefetch(reinterpret_cast<const char*>(row + m0), _MM_HINT_T0);
  }
}

// Order (as AVX2's): per chunk of kPMChunk activation rows and slab of kPSlab K blocks, panels
// outer and the slab's K blocks inner. A panel's sums (kPMChunk x 64 floats, 32 KiB) live in a
// contiguous tile across the slab: read from y at its first K block, written to y at its last.
// Before, the K blocks were outer and the panels inner, so every K block read and wrote all of
// y (M x N floats: 2 MiB at M = 128, N = 4096, past L2) through rows N floats apart, which share
// L1 sets. `qgemm` AVX-512 on a Zen 5, the two orders alternating call by call in one process,
// two rounds, M = 128, one thread: q4_g32 +4-9 % (71 -> 78 % of the peak in the quieter round),
// q4_g64 +10-12 %, q8_g32 +5-6 %, q2_g32 +10-13 %, q3a_g32 +10 %, q6k_g32 +7-8 %, nu4_g32 +6-8 %;
// two threads +7-13 %, M = 512 +2-16 %; the same sums bit for bit. Copying the slab's activation
// rows (4 KiB apart at K = 4096, so they share L1 sets too) into a contiguous buffer gained
// another 0-1.5 %: not kept (256 KiB of stack or a heap buffer per call).
// ri: rows [n0, n1) are whole groups of interleaved rows (qgemm_x86_ri_inl.h), n0 a multiple of
// 16, and their panels are built from that layout (a run-time flag: one driver per format).
template <QType T>
void qgemm_panel(int M, int n0, int n1, int64_t K, const ActQ8& a, const uint8_t* w, size_t rb, const Geo& geo,
                 float* y, size_t ldy, bool ri = false) {
  using F = Fmt<T>;
  const int64_t nblk_all = (K + 31) / 32;  // activation blocks holding data
  const int64_t nbs = a.kp / 32;
  Panel P;
  alignas(64) int32_t nz[kPMChunk * kNzStride];
  alignas(64) float tile[kPMChunk * kPR];
  const auto prefetch = [&](int ns, int64_t u0, int nr) {
    if constexpr (has_ri<T>()) {
      if (ri) {
        prefetch_next_panel_ri<T>(w, rb, geo, ns, u0, nr, nblk_all);
        return;
      }
    }
    prefetch_next_panel<T>(w, rb, geo, ns, u0, nr, nblk_all);
  };
  for (int mc = 0; mc < M; mc += kPMChunk) {
    const int mn = min_of(kPMChunk, M - mc);
    for (int64_t bs = 0; bs < nblk_all; bs += kNzStride) {
      const int sblk = static_cast<int>(min_of<int64_t>(kNzStride, nblk_all - bs));
      if constexpr (F::kZ != 0) neg_z_sums<T>(a, mc, mn, bs, sblk, nbs, nz);
      for (int ns = n0; ns < n1; ns += kPR) {
        const int nr = min_of(kPR, n1 - ns);
        const int nv = (nr + kLanes - 1) / kLanes;
        const int last = nr - kLanes * (nv - 1);
        for (int64_t b0 = bs; b0 < bs + sblk; b0 += kPBlocks) {
          const int nblk = static_cast<int>(min_of<int64_t>(kPBlocks, bs + sblk - b0));
          const bool first = b0 == 0, from_y = b0 == bs, to_y = b0 + kPBlocks >= bs + sblk;
          const int64_t u0 = b0 / kU;
          const int nu = (nblk + kU - 1) / kU;
          for (int v = 0; v < nv; ++v) {
            const uint8_t* rows = w + static_cast<size_t>(ns + kLanes * v) * rb;
            if constexpr (has_ri<T>()) {
              if (ri) {
                build_panel_vec_ri<T>(rows, geo, u0, nu, v, P);
                continue;
              }
            }
            build_panel_vec<T>(rows, rb, min_of(kLanes, nr - kLanes * v), geo, u0, nu, v, P);
          }
          // The panel built next: these rows' next K block, else the next panel's first block of
          // the slab, else the first panel of the next slab.
          if (!to_y) {
            prefetch(ns, u0 + kPUnits, nr);
          } else if (ns + kPR < n1) {
            prefetch(ns + kPR, bs / kU, min_of(kPR, n1 - ns - kPR));
          } else {
            prefetch(n0, (bs + sblk) / kU, min_of(kPR, n1 - n0));
          }
          for (int m = 0; m < mn; m += kPMR) {
            const int row = mc + m, mr = min_of(kPMR, mn - m);
            const MicroActs ma = micro_acts(a, nbs, nz, row, m, b0, bs);
            float* yp = y + static_cast<size_t>(row) * ldy + ns;
            float* tp = tile + m * kPR;
            const float* yi = from_y ? yp : tp;
            const size_t li = from_y ? ldy : kPR;
            float* yo = to_y ? yp : tp;
            const size_t lo = to_y ? ldy : kPR;
            const auto run = [&](auto nvc) {
              panel_rows<T, decltype(nvc)::value>(mr, P, nblk, ma.q, a.kp, ma.d, ma.ds, nbs, ma.nz, yi, li, yo, lo,
                                                  last, first);
            };
            switch (nv) {
              case 1: run(std::integral_constant<int, 1>{}); break;
              case 2: run(std::integral_constant<int, 2>{}); break;
              case 3: run(std::integral_constant<int, 3>{}); break;
              default: run(std::integral_constant<int, kPV>{}); break;
            }
          }
        }
      }
    }
  }
}
#endif  // AVX-512
