// The tile kernels of kernels/simd/qgemm_x86.cc: prepared activations, group scales, the tile
// (GEMV, M <= 4, and prefill below the panel threshold) and the blocking over N. Not a
// standalone header: that file includes it once, inside namespace
// mxlm::kernels::<isa>::{anonymous}, after the decoders, layouts and format traits; its top
// comment states the rules and the design.
//
// No include guard, on purpose.

// ---- prepared activations -------------------------------------------------------------------

// One slab of up to MR activation rows in the format's order: for row r and unit u,
// aq[(r*nu_cap + u)*kUnitElems ...] (4 vectors of kVB bytes), the matching per-lane block
// scales dal[(r*nu_cap + u)*kLanes ...], and the offset sums zs[r*zcap + g] of the slab's groups
// (zero-padded to a whole vector).
struct alignas(64) Prep {
  int8_t aq[kSlabBytes];
  float dal[kSlabBytes / 32 * 2];
  float zl[kSlabBytes / 32 * 2];  // Fmt::kFusedOffsets: -z * ds of lane 2i's block, 0 in lane 2i + 1
  float zs[kSlabBytes / 32 + 4 * 16];
  float dn[kSlabBytes / 32 + 4 * 8];  // block scales in natural order, row stride dn_stride()
};
constexpr int dn_stride(int nu_cap) { return nu_cap * kU + kU; }

template <QType T>
void prep_rows(const ActQ8& a, int m0, int mr, int64_t u0, int nu, int nu_cap, int zcap, int ngroups, Prep& p) {
  using F = Fmt<T>;
  const Layout& L = F::layout();
  const int64_t nbk = a.kp / 32;
  for (int r = 0; r < mr; ++r) {
    const int8_t* aq = a.q + static_cast<int64_t>(m0 + r) * a.kp;
    const float* ad = a.d + static_cast<int64_t>(m0 + r) * nbk;
    const float* ads = a.ds + static_cast<int64_t>(m0 + r) * nbk;
    for (int u = 0; u < nu; ++u) {
      const int64_t e0 = (u0 + u) * kUnitElems;
      int8_t* dst = p.aq + (static_cast<int64_t>(r) * nu_cap + u) * kUnitElems;
      for (int t = 0; t < 4; ++t) {
        for (int i = 0; i < kU; ++i) {
          const int64_t s = e0 + 8 * L.src[t][i];
          int8_t* o = dst + t * kVB + 8 * i;
          if (s < a.kp) {
            std::memcpy(o, aq + s, 8);  // a.kp is a multiple of 128: whole qwords
          } else {
            std::memset(o, 0, 8);
          }
        }
      }
      float* dl = p.dal + (static_cast<int64_t>(r) * nu_cap + u) * kLanes;
      for (int j = 0; j < kLanes; ++j) {
        const int64_t b = (u0 + u) * kU + L.blk[j / 2];
        dl[j] = b < nbk ? ad[b] : 0.0f;
      }
      if constexpr (F::kFusedOffsets) {
        float* zl = p.zl + (static_cast<int64_t>(r) * nu_cap + u) * kLanes;
        for (int j = 0; j < kLanes; ++j) {
          const int64_t b = (u0 + u) * kU + L.blk[j / 2];
          zl[j] = j % 2 == 0 && b < nbk ? -static_cast<float>(F::kZ) * ads[b] : 0.0f;
        }
      }
    }
    float* dn = p.dn + static_cast<int64_t>(r) * dn_stride(nu_cap);
    for (int b = 0; b < (nu + 1) * kU; ++b) {
      const int64_t gb = u0 * kU + b;
      dn[b] = gb < nbk ? ad[gb] : 0.0f;
    }
    if constexpr (F::kOffsets) {
      float* z = p.zs + static_cast<int64_t>(r) * zcap;
      constexpr int kSub = F::kG / 32;
      for (int g = 0; g < ngroups; ++g) {
        const int64_t b0 = (u0 * F::kGPU + g) * kSub;
        float s = 0.0f;
        for (int b = 0; b < kSub; ++b) s += b0 + b < nbk ? ads[b0 + b] : 0.0f;
        z[g] = F::kAsym ? s : -static_cast<float>(F::kZ) * s;
      }
      for (int g = ngroups; g < zcap; ++g) z[g] = 0.0f;
    }
  }
}

// ---- the tile -------------------------------------------------------------------------------

// The first N f16 values at p as floats in the low lanes (the lanes above: unspecified); reads
// exactly 2N bytes.
template <int N>
MXLM_QINLINE VF f16_head(const uint8_t* p) {
  static_assert(N == 1 || N == 2 || N == 4 || N == 8 || N == 16);
  __m128i h;
  if constexpr (N >= 8) {
#if defined(MXLM_TARGET_AVX512)
    if constexpr (N == 16) return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
#endif
    h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  } else if constexpr (N == 4) {
    h = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  } else if constexpr (N == 2) {
    uint32_t v;
    std::memcpy(&v, p, 4);
    h = _mm_cvtsi32_si128(static_cast<int>(v));
  } else {
    uint16_t v;
    std::memcpy(&v, p, 2);
    h = _mm_cvtsi32_si128(v);
  }
#if defined(MXLM_TARGET_AVX512)
  if constexpr (N == 8) return _mm512_castps256_ps512(_mm256_cvtph_ps(h));
  return _mm512_castps128_ps512(_mm_cvtph_ps(h));
#else
  if constexpr (N == 8) return _mm256_cvtph_ps(h);
  return _mm256_castps128_ps256(_mm_cvtph_ps(h));
#endif
}

MXLM_QINLINE VF permute_lanes(VF f, VI idx) {
#if defined(MXLM_TARGET_AVX512)
  return _mm512_permutexvar_ps(idx, f);
#else
  return _mm256_permutevar8x32_ps(f, idx);
#endif
}

// Per-lane weight scales of one unit: lane j gets the f16 scale of its block's group.
template <QType T>
MXLM_QINLINE VF dw_lanes(const uint8_t* dp, VI idx) {
  return permute_lanes(f16_head<Fmt<T>::kGPU>(dp), idx);
}

// Up to kLanes f16 values (n of them, rest zero) to float.
MXLM_QINLINE VF f16_lanes(const uint8_t* p, int n) {
#if defined(MXLM_TARGET_AVX512)
  if (n >= 16) return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  const __m256i h = _mm256_maskz_loadu_epi16(static_cast<__mmask16>((1u << n) - 1), p);
  return _mm512_cvtph_ps(h);
#else
  __m128i h;
  if (n >= 8) {
    h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  } else {
    alignas(16) uint16_t tmp[8] = {};
    std::memcpy(tmp, p, 2 * static_cast<size_t>(n));
    h = _mm_load_si128(reinterpret_cast<const __m128i*>(tmp));
  }
  return _mm256_cvtph_ps(h);
#endif
}

// Integer dot products of one unit: int32 lanes 2i, 2i+1 sum block blk[i]. kChain: one
// accumulator (fewest ops, for callers with enough independent units in flight, +2-4 % at
// NR = 4), else two chains of half the latency.
template <QType T, bool kChain = false>
MXLM_QINLINE VI unit_dot(const VI w[4], const VI aw[4], const int8_t* a) {
#if defined(MXLM_TARGET_AVX512)
  (void)aw;
  if constexpr (kChain) {
    VI acc = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[0], loadu(a));
    acc = _mm512_dpbusd_epi32(acc, w[1], loadu(a + kVB));
    acc = _mm512_dpbusd_epi32(acc, w[2], loadu(a + 2 * kVB));
    return _mm512_dpbusd_epi32(acc, w[3], loadu(a + 3 * kVB));
  }
  VI acc0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[0], loadu(a));
  VI acc1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[1], loadu(a + kVB));
  acc0 = _mm512_dpbusd_epi32(acc0, w[2], loadu(a + 2 * kVB));
  acc1 = _mm512_dpbusd_epi32(acc1, w[3], loadu(a + 3 * kVB));
  return _mm512_add_epi32(acc0, acc1);
#else
  using F = Fmt<T>;
  const VI ones = _mm256_set1_epi16(1);
  if constexpr (F::kSigned) {
    // |w| * (a * sign(w)) = w * a; |w| <= 128, |a| <= 127: a pair sums to at most 32512.
    VI acc = _mm256_madd_epi16(_mm256_maddubs_epi16(aw[0], _mm256_sign_epi8(loadu(a), w[0])), ones);
    for (int t = 1; t < 4; ++t) {
      acc = _mm256_add_epi32(
          acc, _mm256_madd_epi16(_mm256_maddubs_epi16(aw[t], _mm256_sign_epi8(loadu(a + t * kVB), w[t])), ones));
    }
    return acc;
  } else if constexpr (F::kBits <= 5) {
    // 4 * 2 * 31 * 127 = 31496: the int16 sums of 4 vectors cannot overflow.
    VI s = _mm256_maddubs_epi16(w[0], loadu(a));
    s = _mm256_add_epi16(s, _mm256_maddubs_epi16(w[1], loadu(a + kVB)));
    s = _mm256_add_epi16(s, _mm256_maddubs_epi16(w[2], loadu(a + 2 * kVB)));
    s = _mm256_add_epi16(s, _mm256_maddubs_epi16(w[3], loadu(a + 3 * kVB)));
    return _mm256_madd_epi16(s, ones);
  } else {
    // 6 bits: 2 * 2 * 63 * 127 = 32004, sum two at a time.
    const VI s0 = _mm256_add_epi16(_mm256_maddubs_epi16(w[0], loadu(a)), _mm256_maddubs_epi16(w[1], loadu(a + kVB)));
    const VI s1 =
        _mm256_add_epi16(_mm256_maddubs_epi16(w[2], loadu(a + 2 * kVB)), _mm256_maddubs_epi16(w[3], loadu(a + 3 * kVB)));
    return _mm256_add_epi32(_mm256_madd_epi16(s0, ones), _mm256_madd_epi16(s1, ones));
  }
#endif
}

struct TileArgs {
  const Prep* p;
  int64_t u0;        // first unit of the slab
  int nu_full;       // whole units with weights in the slab
  int rem_groups;    // groups of a trailing partial unit (0: none)
  int ngroups;       // weight groups in the slab
  int nu_cap;        // units per prepared row
  int zcap;          // offset sums per prepared row
  Geo geo;
};

// Groups of one prepared slab for MR activation rows, rounded up to whole vectors.
template <QType T, int MR>
constexpr int slab_groups() {
  return ((kSlabBytes / (MR * kUnitElems)) * Fmt<T>::kGPU + kLanes - 1) / kLanes * kLanes;
}

// A row's codebook as a byte-lookup table (zero for other formats): in every 128-bit lane for
// pshufb (AVX-512: made unsigned, + 128). 3-bit codebooks (8 entries) fill every qword instead,
// which serves pshufb and vpermb alike (a 64-entry table whose entry e is cb[e % 8]).
template <QType T>
MXLM_QINLINE VI codebook_vec(const uint8_t* row) {
  using F = Fmt<T>;
  if constexpr (F::kCodebook) {
#if defined(MXLM_TARGET_AVX512)
    const VI u = bcast8(0x80);
    if constexpr (F::kBits == 3) {
      uint64_t c;
      std::memcpy(&c, row, 8);
      return _mm512_xor_si512(_mm512_set1_epi64(static_cast<long long>(c)), u);
    } else {
      return _mm512_xor_si512(_mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row))), u);
    }
#else
    const __m128i c = F::kBits == 4 ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(row))
                                    : _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row));
    return _mm256_broadcastsi128_si256(c);
#endif
  } else {
    (void)row;
    return VI{};
  }
}

template <class D>
constexpr bool has_codebook_run() {
  return requires(const uint8_t* q, VI cb, VI* w) { D::run_cb(q, cb, w); };
}

// Decodes one unit of quants into dot-ready bytes w (and |w| for the AVX2 signed path).
template <QType T>
MXLM_QINLINE void decode_unit(const uint8_t* q, VI cbv, VI w[4], VI aw[4]) {
  using F = Fmt<T>;
  if constexpr (F::kCodebook && has_codebook_run<typename F::D>()) {
    // The decoder applies the codebook itself (fewer operations than decode, then look up).
    F::D::run_cb(q, cbv, w);
    for (int t = 0; t < 4; ++t) aw[t] = w[t];
    return;
  }
  F::D::run(q, w);
  for (int t = 0; t < 4; ++t) {
#if defined(MXLM_TARGET_AVX512)
    if constexpr (F::kCodebook) w[t] = _mm512_shuffle_epi8(cbv, w[t]);
    aw[t] = w[t];
#else
    if constexpr (F::kCodebook) w[t] = _mm256_shuffle_epi8(cbv, w[t]);
    if constexpr (F::kBits == 8) w[t] = _mm256_xor_si256(w[t], _mm256_set1_epi8(static_cast<char>(0x80)));
    if constexpr (F::kSigned) aw[t] = _mm256_abs_epi8(w[t]);
#endif
  }
}

// Decodes unit quants qp[n] and returns their int32 dot products with the prepared unit aq.
template <QType T, int NR>
MXLM_QINLINE void unit_ints(const uint8_t* const qp[NR], const VI cbv[NR], const int8_t* aq, VI out[NR]) {
  for (int n = 0; n < NR; ++n) {
    VI w[4], aw[4];
    decode_unit<T>(qp[n], cbv[n], w, aw);
    out[n] = unit_dot<T, (NR >= 2)>(w, aw, aq);
  }
}

// Group values f (lane g: group g) spread over the blocks they cover: lane b gets group
// b * 32 / G (G = 32: f itself).
template <QType T>
MXLM_QINLINE VF expand_groups(VF f) {
  constexpr int kR = Fmt<T>::kG / 32;  // blocks per group
  if constexpr (kR == 1) {
    return f;
  } else {
    struct Idx {
      alignas(64) int32_t v[kLanes];
    };
    static constexpr Idx kIdx = [] {
      Idx x{};
      for (int b = 0; b < kLanes; ++b) x.v[b] = b / kR;
      return x;
    }();
#if defined(MXLM_TARGET_AVX512)
    return permute_lanes(f, _mm512_load_si512(kIdx.v));
#else
    return permute_lanes(f, _mm256_load_si256(reinterpret_cast<const __m256i*>(kIdx.v)));
#endif
  }
}

// Scales of the kLanes = 2 * kU consecutive blocks (two units) whose f16 group scales start at d.
template <QType T>
MXLM_QINLINE VF dw_blocks(const uint16_t* d) {
  return expand_groups<T>(f16_head<kLanes * 32 / Fmt<T>::kG>(reinterpret_cast<const uint8_t*>(d)));
}

// Scales (f16 at p, groups [g0, nb)) of the kLanes blocks starting at group g0's first block, as
// floats; blocks past the row's groups get 0. Reads no f16 at or past index nb.
template <QType T>
MXLM_QINLINE VF scales_lanes(const uint8_t* p, int64_t g0, int64_t nb) {
  constexpr int kGroups = kLanes * 32 / Fmt<T>::kG;  // groups covering kLanes blocks
  const int64_t avail = nb - g0;
  const int n = avail <= 0 ? 0 : avail >= kGroups ? kGroups : static_cast<int>(avail);
  return expand_groups<T>(f16_lanes(p + 2 * g0, n));
}

// ---- group scales ---------------------------------------------------------------------------
// Scales<T> is where the kernels read a row's group scales d_g and offsets m_g; the hot loops
// only see what it returns. One-level formats: f16 per group; the tile copies a slab's f16
// scales out of the row as they are and converts them per unit (dw_lanes, dw_blocks).
// Two-level formats (qtype.h): d_g = D * float(s_g) (s: i8, asymmetric u8) and m_g = M *
// float(int8 o_g) under the row's f32 D and M, each one float multiply as in the reference, so
// the kernels' scales are bit-identical to qgemm_ref's. The tile copies a slab's codes out as
// bytes and converts them per unit like f16 (converting to float while copying measured 10 %
// faster compute-bound GEMV on AVX2 but 15-20 % slower from DRAM: a longer prologue per row);
// offset codes are read from the row (the pass over the groups, the panel). Nothing reads past
// the row: masked loads on AVX-512; on AVX2 8-byte loads at a code, and at least 8 quant bytes
// follow the last code (G = 32, bits >= 2). Symmetric two-level formats fold their offset terms
// into the main loops (Fmt::kFusedOffsets, tile). Rows have no alignment (qtype.h): misaligned
// quant loads cost 3-6 % of compute-bound GEMV (q4_g32 measured with rows 4 bytes off).

MXLM_QINLINE float load_f32u(const uint8_t* p) {
  float f;
  std::memcpy(&f, p, 4);
  return f;
}

// Up to kLanes 8-bit codes at p (n of them; none when n <= 0) times `scale`, as float lanes,
// zero above n.
template <bool kSignedCode>
MXLM_QINLINE VF code_lanes(const uint8_t* p, int n, float scale) {
#if defined(MXLM_TARGET_AVX512)
  if (n >= 16) {
    const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return fmul(to_float(kSignedCode ? _mm512_cvtepi8_epi32(c) : _mm512_cvtepu8_epi32(c)), _mm512_set1_ps(scale));
  }
  const __mmask16 k = n <= 0 ? 0 : static_cast<__mmask16>((1u << n) - 1);
  const __m128i c = _mm_maskz_loadu_epi8(k, p);
  const VI i = kSignedCode ? _mm512_cvtepi8_epi32(c) : _mm512_cvtepu8_epi32(c);
  return _mm512_maskz_mul_ps(k, to_float(i), _mm512_set1_ps(scale));
#else
  if (n <= 0) return fzero();
  const __m128i c = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  const VI i = kSignedCode ? _mm256_cvtepi8_epi32(c) : _mm256_cvtepu8_epi32(c);
  const VF f = fmul(to_float(i), _mm256_set1_ps(scale));
  if (n >= 8) return f;
  const VI keep = _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  return _mm256_and_ps(f, _mm256_castsi256_ps(keep));
#endif
}

template <QType T, bool kTwoLevel = Fmt<T>::kTwoLevel>
struct Scales;

template <QType T>
struct Scales<T, false> {
  using F = Fmt<T>;
  using Local = uint16_t;  // the tile's copy: f16
  static constexpr int local_len(int cap) { return cap; }
  // The row's scale factor that unit() and blocks() take (none).
  static MXLM_QINLINE float row_scale(const uint8_t*) { return 0.0f; }
  // Scales of groups [g0, g0 + n) into d[0, n), zeros in [n, cap).
  static MXLM_QINLINE void copy(const uint8_t* row, const Geo& geo, int64_t g0, int n, int cap, Local* d) {
    std::memcpy(d, row + geo.d_off + 2 * static_cast<size_t>(g0), 2 * static_cast<size_t>(n));
    for (int g = n; g < cap; ++g) d[g] = 0;
  }
  // Per-lane scales of the unit whose groups start at d (dw_lanes).
  static MXLM_QINLINE VF unit(const Local* d, VI idx, float) { return dw_lanes<T>(reinterpret_cast<const uint8_t*>(d), idx); }
  // Scales of the kLanes blocks (two units) whose groups start at d.
  static MXLM_QINLINE VF blocks(const Local* d, float) { return dw_blocks<T>(d); }
  // The panel's scales (offsets) of the kLanes blocks from group g0 on, from the row.
  static MXLM_QINLINE VF panel(const uint8_t* row, const Geo& geo, int64_t g0, bool offsets) {
    return scales_lanes<T>(row + (offsets ? geo.m_off : geo.d_off), g0, geo.nb);
  }
  // Offset coefficients c (asymmetric: m, else d) of groups [g, g + n), n <= kLanes, from the row.
  static MXLM_QINLINE VF coef(const uint8_t* row, const Geo& geo, int64_t g, int n) {
    return f16_lanes(row + (F::kAsym ? geo.m_off : geo.d_off) + 2 * static_cast<size_t>(g), n);
  }
};

template <QType T>
struct Scales<T, true> {
  using F = Fmt<T>;
  static_assert(F::kG == 32 && F::kGroupQBytes >= 8 && !F::kCodebook);
  static constexpr bool kSignedS = !F::kAsym;  // scale codes: i8, asymmetric u8
  using Local = uint8_t;                        // the tile's copy: the codes s
#if defined(MXLM_TARGET_AVX512)
  static constexpr int kChunk = 64;
#else
  static constexpr int kChunk = 8;
#endif
  // copy() writes whole chunks: the tile's copy holds local_len(cap) codes.
  static constexpr int local_len(int cap) { return (cap + kChunk - 1) / kChunk * kChunk; }
  static MXLM_QINLINE float row_scale(const uint8_t* row) { return load_f32u(row); }
  // Vector copies: GCC inlines a variable-length byte memcpy as rep movsq, whose start-up cost
  // per row made q4k_g32 GEMV ~10 % slower than q4_g32 per byte (f16 scales: a library call).
  // Writes zeros in [n, local_len(cap)).
  static MXLM_QINLINE void copy(const uint8_t* row, const Geo& geo, int64_t g0, int n, int cap, Local* d) {
    const uint8_t* s = row + geo.d_off + g0;
#if defined(MXLM_TARGET_AVX512)
    for (int g = 0; g < cap; g += kChunk) {
      const int left = n - g;
      const __mmask64 k = _bzhi_u64(~0ull, static_cast<unsigned>(left <= 0 ? 0 : left >= 64 ? 64 : left));
      _mm512_storeu_si512(d + g, _mm512_maskz_loadu_epi8(k, s + g));
    }
#else
    int g = 0;
    for (; g + 32 <= n; g += 32) _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + g), loadu(s + g));
    for (; g < cap; g += kChunk) {
      const int left = n - g;
      __m128i x = _mm_setzero_si128();
      if (left > 0) {
        x = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(s + g));
        if (left < 8) {
          x = _mm_and_si128(x, _mm_cmpgt_epi8(_mm_set1_epi8(static_cast<char>(left)),
                                              _mm_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)));
        }
      }
      _mm_storel_epi64(reinterpret_cast<__m128i*>(d + g), x);
    }
#endif
  }
  static MXLM_QINLINE VF unit(const Local* d, VI idx, float rd) {
#if defined(MXLM_TARGET_AVX512)
    static_assert(F::kGPU == 8);
    const __m128i c = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(d));
    const __m256i i = kSignedS ? _mm256_cvtepi8_epi32(c) : _mm256_cvtepu8_epi32(c);
    const __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(i), _mm256_set1_ps(rd));
    return _mm512_permutexvar_ps(idx, _mm512_castps256_ps512(f));
#else
    static_assert(F::kGPU == 4);
    uint32_t v;
    std::memcpy(&v, d, 4);
    const __m128i c = _mm_cvtsi32_si128(static_cast<int>(v));
    const __m128i i = kSignedS ? _mm_cvtepi8_epi32(c) : _mm_cvtepu8_epi32(c);
    const __m128 f = _mm_mul_ps(_mm_cvtepi32_ps(i), _mm_set1_ps(rd));
    return _mm256_permutevar8x32_ps(_mm256_castps128_ps256(f), idx);
#endif
  }
  static MXLM_QINLINE VF blocks(const Local* d, float rd) { return code_lanes<kSignedS>(d, kLanes, rd); }
  // The panel's scales (offsets) of the kLanes blocks (= groups) from group g0 on, from the row.
  static MXLM_QINLINE VF panel(const uint8_t* row, const Geo& geo, int64_t g0, bool offsets) {
    const int64_t avail = geo.nb - g0;
    const int n = avail <= 0 ? 0 : avail >= kLanes ? kLanes : static_cast<int>(avail);
    if (offsets) return code_lanes<true>(row + geo.m_off + g0, n, load_f32u(row + 4));
    return code_lanes<kSignedS>(row + geo.d_off + g0, n, load_f32u(row));
  }
  static MXLM_QINLINE VF coef(const uint8_t* row, const Geo& geo, int64_t g, int n) {
    if constexpr (F::kAsym) return code_lanes<true>(row + geo.m_off + g, n, load_f32u(row + 4));
    return code_lanes<kSignedS>(row + geo.d_off + g, n, load_f32u(row));
  }
};

template <QType T, int MR, int NR>
void tile(const TileArgs& ta, const uint8_t* const rows[NR], const int cols[NR], float* y, size_t ldy, int m0,
          bool first) {
  using F = Fmt<T>;
  using S = Scales<T>;
  const Layout& L = F::layout();
  const Prep& p = *ta.p;
  const Geo& geo = ta.geo;
  const int64_t g0 = ta.u0 * F::kGPU;  // first group of the slab
  const int nu = ta.nu_full + (ta.rem_groups > 0 ? 1 : 0);
  // Each row is read strictly forward, [codebook or row scales | scales | offsets | quants]:
  // scales are copied out (zero-padded to an even number of units; two-level: as floats, see
  // Scales) and the offset terms summed before the quants stream. Reading the scales alongside the quants instead makes two interleaved streams per
  // row, which the hardware prefetchers handle badly once rows exceed ~4 KiB; masked loads
  // straight from DRAM are slow too.
  constexpr bool kFuse = F::kFusedOffsets;
  alignas(64) typename S::Local dloc[NR][S::local_len(slab_groups<T, MR>() + 2 * F::kGPU)];
  VI cbv[NR];
  float rsc[NR];
  for (int n = 0; n < NR; ++n) {
    cbv[n] = codebook_vec<T>(rows[n]);
    rsc[n] = S::row_scale(rows[n]);
    S::copy(rows[n], geo, g0, ta.ngroups, (nu + 1) * F::kGPU, dloc[n]);
  }
  // Quants of unit u of row n (a zero-padded copy for a unit the row ends in).
  alignas(64) uint8_t qb[NR][F::kUnitQBytes];
  if (ta.rem_groups > 0) {
    const int64_t gu = g0 + static_cast<int64_t>(ta.nu_full) * F::kGPU;
    for (int n = 0; n < NR; ++n) {
      copy_partial<T>(qb[n], rows[n] + geo.q_off + static_cast<size_t>(gu) * F::kGroupQBytes, ta.rem_groups);
    }
  }
  // The accumulators start after the last library call (memcpy, memset): a vector live across a
  // call is kept in memory, and the offset loop below then ran through a store and a reload per
  // step, a third of the whole GEMV time at 2 bits.
  VF acc[MR][NR];
  for (int m = 0; m < MR; ++m) {
    for (int n = 0; n < NR; ++n) acc[m][n] = fzero();
  }
  if constexpr (F::kOffsets && !kFuse) {
    // sum_g c_g * S_g, c = offset (asymmetric) or scale (symmetric, codebook), from the row (in
    // cache now). Groups outer: the MR x NR sums stay in registers as independent chains.
    for (int g = 0; g < ta.ngroups; g += kLanes) {
      const int cnt = min_of(kLanes, ta.ngroups - g);
      for (int n = 0; n < NR; ++n) {
        const VF cv = S::coef(rows[n], geo, g0 + g, cnt);
        for (int m = 0; m < MR; ++m) acc[m][n] = fmadd(cv, fload(p.zs + m * ta.zcap + g), acc[m][n]);
      }
    }
  }
  auto quants = [&](int u, const uint8_t* qp[NR]) {
    for (int n = 0; n < NR; ++n) {
      qp[n] = u < ta.nu_full
                  ? rows[n] + geo.q_off + static_cast<size_t>(g0 + static_cast<int64_t>(u) * F::kGPU) * F::kGroupQBytes
                  : qb[n];
    }
  };
  const size_t aq_stride = static_cast<size_t>(ta.nu_cap) * kUnitElems;
  if constexpr (MR == 1) {
    // Two units at a time: their int32 results fold into one lane per block (natural order),
    // so converting, scaling and accumulating happens once per 2 * kU blocks.
#if defined(MXLM_TARGET_AVX512)
    const VI pa = _mm512_load_si512(L.pair_a), pb = _mm512_load_si512(L.pair_b);
    const auto fold = [&](VI i0, VI i1) {
      return _mm512_add_epi32(_mm512_permutex2var_epi32(i0, pa, i1), _mm512_permutex2var_epi32(i0, pb, i1));
    };
#else
    const VI fidx = _mm256_load_si256(reinterpret_cast<const __m256i*>(L.fold_idx));
    const auto fold = [&](VI i0, VI i1) { return _mm256_permutevar8x32_epi32(_mm256_hadd_epi32(i0, i1), fidx); };
#endif
    for (int u = 0; u < nu; u += 2) {
      const uint8_t* qp[NR];
      VI i0[NR], i1[NR];
      quants(u, qp);
      // The strands' lines kPrefetchAhead bytes on (past a row's end: the strand's next row, its
      // scales first); harmless past the weights or on the padded copy.
      for (int n = 0; n < NR; ++n) {
        for (int b = 0; b < 2 * F::kUnitQBytes; b += 64) {
          _mm_prefetch(reinterpret_cast<const char*>(qp[n]) + kPrefetchAhead + b, _MM_HINT_T0);
        }
      }
      unit_ints<T, NR>(qp, cbv, p.aq + static_cast<size_t>(u) * kUnitElems, i0);
      if (u + 1 < nu) {
        quants(u + 1, qp);
        unit_ints<T, NR>(qp, cbv, p.aq + static_cast<size_t>(u + 1) * kUnitElems, i1);
      } else {
        for (int n = 0; n < NR; ++n) i1[n] = VI{};
      }
      const VF da = fload(p.dn + static_cast<size_t>(u) * kU);
      for (int n = 0; n < NR; ++n) {
        const VI sum = fold(i0[n], i1[n]);
        const VF dw = S::blocks(dloc[n] + u * F::kGPU, rsc[n]);
        if constexpr (kFuse) {
          // G = 32: lane b is block b and its group. dw * (da * dot + S) adds the offset term
          // dw * S (S = -z * ds) at no extra operation, where the separate pass above costs
          // three conversion steps per 16 groups (i8 -> i32 -> float, times D): measured 6-9 %
          // of q4k_g32 GEMV time. (Asymmetric: m * S needs its own conversion either way; in
          // this loop it measured slower than the separate pass.)
          acc[0][n] = fmadd(dw, fmadd(to_float(sum), da, fload(p.zs + static_cast<size_t>(u) * F::kGPU)), acc[0][n]);
        } else {
          acc[0][n] = fmadd(to_float(sum), fmul(dw, da), acc[0][n]);
        }
      }
    }
  } else {
#if defined(MXLM_TARGET_AVX512)
    const VI dwidx = _mm512_load_si512(L.dw_idx);
#else
    const VI dwidx = _mm256_load_si256(reinterpret_cast<const __m256i*>(L.dw_idx));
#endif
    const size_t dal_stride = static_cast<size_t>(ta.nu_cap) * kLanes;
    for (int u = 0; u < nu; ++u) {
      const uint8_t* qp[NR];
      quants(u, qp);
      const int8_t* aq = p.aq + static_cast<size_t>(u) * kUnitElems;
      const float* dal = p.dal + static_cast<size_t>(u) * kLanes;
      [[maybe_unused]] const float* zl = p.zl + static_cast<size_t>(u) * kLanes;
      for (int n = 0; n < NR; ++n) {
        VI w[4], aw[4];
        decode_unit<T>(qp[n], cbv[n], w, aw);
        const VF dwl = S::unit(dloc[n] + u * F::kGPU, dwidx, rsc[n]);
        for (int m = 0; m < MR; ++m) {
          const VI d = unit_dot<T>(w, aw, aq + m * aq_stride);
          if constexpr (kFuse) {
            // dw * (da * dot + S): S = -z * ds in the even lane of the block (see M = 1 above).
            const VF x = fmadd(to_float(d), fload(dal + m * dal_stride), fload(zl + m * dal_stride));
            acc[m][n] = fmadd(dwl, x, acc[m][n]);
          } else {
            acc[m][n] = fmadd(to_float(d), fmul(dwl, fload(dal + m * dal_stride)), acc[m][n]);
          }
        }
      }
    }
  }
  for (int m = 0; m < MR; ++m) {
    float* yr = y + static_cast<size_t>(m0 + m) * ldy;
    for (int n = 0; n < NR; ++n) {
      if (cols[n] >= 0) {
        const float s = reduce(acc[m][n]);
        yr[cols[n]] = first ? s : yr[cols[n]] + s;
      }
    }
  }
}

// Weight rows per tile for MR activation rows (MR*NR float accumulators plus 4 decoded vectors
// must fit 16 vector registers on AVX2, 32 on AVX-512).
constexpr int tile_nr(int mr) {
#if defined(MXLM_TARGET_AVX512)
  (void)mr;
  return 4;
#else
  return mr == 1 ? 4 : mr == 2 ? 3 : 2;
#endif
}

// Rows [m0, m0 + MR) x weight rows [nb0, nb1).
template <QType T, int MR, int NR>
void run_block(const ActQ8& a, int m0, int nb0, int nb1, const uint8_t* w, size_t w_row_bytes, const Geo& geo,
               float* y, size_t ldy) {
  using F = Fmt<T>;
  constexpr int kNuCap = kSlabBytes / (MR * kUnitElems);
  constexpr int kZCap = slab_groups<T, MR>();
  static_assert(kNuCap >= 1 && MR * kZCap <= static_cast<int>(sizeof(Prep::zs) / sizeof(float)));
  Prep p;
  const int64_t nu_full_all = geo.nb / F::kGPU;
  const int rem = static_cast<int>(geo.nb % F::kGPU);
  const int64_t nu_all = nu_full_all + (rem > 0 ? 1 : 0);
  // Tile t takes rows nb0 + t + i*len (i < NR): every row of a tile advances along its own
  // long sequential stream ("strand") of rows. Rows of one tile that lie next to each other
  // in memory (the obvious tiling) defeat the hardware prefetchers: each row's stream ends
  // after one row and they share 4 KiB pages, which halves the DRAM bandwidth of decode.
  // The strands are len rows apart: ceil((nb1 - nb0) / NR), or a few rows more where that put
  // them a multiple of 4 KiB apart (strand_rows, kernels/simd/blocking.h). A tile past the last
  // row reads row nb0 + t again (in range: len <= nb1 - nb0) and writes nothing for it.
  const int len = strand_rows(nb1 - nb0, NR, w_row_bytes);
  for (int64_t us = 0; us < nu_all; us += kNuCap) {
    const int nu = static_cast<int>(min_of<int64_t>(kNuCap, nu_all - us));
    const bool last = us + nu == nu_all;
    TileArgs ta;
    ta.p = &p;
    ta.u0 = us;
    ta.rem_groups = last ? rem : 0;
    ta.nu_full = nu - (ta.rem_groups > 0 ? 1 : 0);
    ta.ngroups = ta.nu_full * F::kGPU + ta.rem_groups;
    ta.nu_cap = kNuCap;
    ta.zcap = kZCap;
    ta.geo = geo;
    prep_rows<T>(a, m0, MR, us, nu, kNuCap, kZCap, ta.ngroups, p);
    for (int t = 0; t < len; ++t) {
      const uint8_t* rows[NR];
      int cols[NR];
      for (int i = 0; i < NR; ++i) {
        const int n = nb0 + t + i * len;
        cols[i] = n < nb1 ? n : -1;
        rows[i] = w + static_cast<size_t>(n < nb1 ? n : nb0 + t) * w_row_bytes;
      }
      tile<T, MR, NR>(ta, rows, cols, y, ldy, m0, us == 0);
    }
  }
}
