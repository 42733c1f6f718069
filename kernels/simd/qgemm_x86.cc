// Quantized GEMM (kernels/quant.h) for AVX2 and AVX-512 (VNNI + VBMI), and the SIMD
// activation quantizer. Compiled once per ISA (MXLM_TARGET_NS names the namespace); the ref
// compile of this file is empty. Only register_quant_kernels() is exported: everything else has
// internal linkage, there is no dynamic initialization, and no inline function from a header
// (std::min, ...) is called, so nothing compiled with AVX-512 flags can be merged into callers
// built for older CPUs.
//
// The integer identity. Weights are unsigned b-bit q (codebook formats: the int8 entry cb[q],
// made unsigned as cb + 128 on AVX-512), activations are int8 a with a scale da per 32-element
// block b and ds_b = da_b * sum(a in b). For a weight group g with scale dw (and offset mw):
//   symmetric   sum_b dw*(da_b*dot_u(b) - z*ds_b)   z = 2^(bits-1)   (codebook: z = 128)
//   asymmetric  sum_b dw*da_b*dot_u(b) + mw*ds_b
// where dot_u is the exact integer dot product of the unsigned values. The kernel accumulates
// dw*da_b*float(dot_u(b)) in float lanes (one multiply-add per 2 int32 lanes per block), and adds
// the offset terms separately as sum_g c_g * S_g with c = dw (or mw) and S_g = -z*sum_{b in g} ds_b
// (or sum ds_b), 16 (8) groups per vector. On AVX2, 8-bit and codebook weights are used signed
// (q - 128, resp. cb[q]) through the abs/sign trick so that maddubs cannot saturate, with z = 0.
// Two-level formats (qtype.h: 8-bit scale and offset codes under f32 row scales, G = 32) are
// their one-level kind with dw = D * s, mw = M * o: same decoders, same identity; only where the
// scales come from differs (section "group scales").
//
// Layout. Work is done per "unit" of kU activation blocks (kU = qwords per vector: 8 for zmm, 4
// for ymm), decoded into 4 vectors of unsigned bytes. Each qword of a decoded vector holds 8
// consecutive elements of one block, and qword i of all 4 vectors belongs to the same block, a
// format-specific permutation of the unit's blocks. Hence the 4 dot products of a unit
// accumulate into one int32 vector whose lanes 2i, 2i+1 belong to one block. The decoders pick
// whatever element order is cheapest for their bit planes; the matching activation order is
// found by probing each decoder once at registration (probe_layout) and the activations are
// permuted into that order once per call (prep), not per weight row. A decoder may instead read a
// layout of its own that the row was repacked into at load (Dec::repack: the 3-bit decoder on
// AVX-512, the 3- to 6-bit decoders on AVX2; registered with a QPackFn, kernels/quant.h).
//
// Blocking. A call runs over tiles of MR activation rows x NR weight rows; each unit of a weight
// row is decoded once and used for the MR rows. Activations are prepared in slabs of at most
// kSlabBytes per call (K-slabs when K is very long; partial sums then go through y).
//   M <= 4 (decode): the weights stream from DRAM once, so the memory access pattern decides.
//     Row i of a tile comes from its own "strand" of consecutive rows (tile t takes rows
//     t, t + len, t + 2*len, ...), and every row is read strictly forward ([codebook or row
//     scales | scales | offsets | quants]: scales and offsets are copied out first). NR =
//     tile_nr(MR) strands (4 for M = 1) at every row length (measured on Zen 4: 4 adjacent rows per tile reach ~40 % of the
//     read bandwidth, 4 strands of 2.3 KiB rows ~100 %; on Zen 3 and Zen 5 with huge pages 4
//     strands beat one-row tiles at 3-6 KiB rows too: TinyLlama's ffn_down, 2048 x 5632,
//     q4_g32 one thread 14.5-15 -> 21.6-24 GB/s on Zen 5). M = 1 prefetches each strand
//     kPrefetchAhead bytes ahead. For M = 1 two units are folded into one int32 lane per block
//     before the float step, which halves the conversions and scale multiplies (AVX-512:
//     two-source permutes; AVX2: one hadd and a permute, measured neutral there, kept for one
//     code path); prefill rows are tiled so that no tile has one row (qgemm below).
//   M > 4 (prefill): N is cut into blocks of ~512 KiB of weight rows, which stay in L2 while
//     all 4-row tiles pass over them; 4 x 4 tiles (AVX2: 4 x 2). M >= kPanelMinM (AVX-512: 32,
//     AVX2: 16, unsigned weights only) runs the panel GEMM instead: weights decoded once per
//     K block into an L1 panel in dot order, small microtiles over it (qgemm_x86_panel_inl.h).
//
// Interleaved rows. On AVX-512 every format but the codebooks packs its rows at load in groups of
// 16 interleaved rows (qgemm_x86_ri_inl.h), with a GEMV of its own and panels built without a
// transpose; the row kernels described above then serve those formats' last, incomplete group,
// the codebooks, and AVX2.
//
// Parts. The decoders, the layout probing, the tile kernels (GEMV and small prefill), the panel
// GEMM and the interleaved rows live in qgemm_x86_{decoders,layout,gemv,panel,ri}_inl.h, included
// below inside this file's anonymous namespace: one translation unit per ISA, the rules above
// apply to them.
//
// Every output is the sum of the same terms as the reference; only float rounding and summation
// order differ (tests/qgemm_test.cc states the bound). For a given M the result of a row does not
// depend on how [n0, n1) is split (threads); it may differ in the last bits between calls with
// different M (M = 1 folds unit pairs; K beyond one slab is summed in MR-dependent slabs).

#if defined(MXLM_TARGET_AVX2) || defined(MXLM_TARGET_AVX512)

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

// GCC 12 warns inside the AVX-512 headers about their own _mm512_undefined_* (PR 105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include "kernels/quant.h"
#include "kernels/qtype.h"
#include "kernels/simd/blocking.h"

#ifndef MXLM_TARGET_NS
#error "kernels/simd/qgemm_x86.cc must be compiled with -DMXLM_TARGET_NS=<isa>"
#endif

#define MXLM_QINLINE inline __attribute__((always_inline))

namespace mxlm::kernels::MXLM_TARGET_NS {
namespace {

#if defined(MXLM_TARGET_AVX512)
using VI = __m512i;
using VF = __m512;
constexpr int kVB = 64;
constexpr Isa kIsa = Isa::kAvx512;
#else
using VI = __m256i;
using VF = __m256;
constexpr int kVB = 32;
constexpr Isa kIsa = Isa::kAvx2;
#endif
constexpr int kU = kVB / 8;          // blocks per unit = qwords per vector
constexpr int kUnitElems = kU * 32;  // elements (= prepared activation bytes) per unit
constexpr int kLanes = kVB / 4;      // int32 / float lanes per vector
// Prepared activation bytes per call slab, over all MR rows (plus scales: see Prep).
constexpr int kSlabBytes = 16384;
// Decode (M = 1) prefetches every strand this many bytes ahead of the unit pair it reads
// (prefetcht0, one per 64-byte line). Measured on a 2-core Zen 5 (huge pages; four rounds of
// alternating builds, the read bandwidth measured around each run): `qgemv` q4_g32, q3a_g32 and
// q8_g32 at one thread 55-78 % -> 80-95 % of the bandwidth, TinyLlama q4_g32 decode 35 -> 45-47
// tok/s (one thread) and 54-63 -> 67-77 (two), with 4 KiB pages (`--memory map`) +30-45 % as
// well; 1, 1.5 and 2 KiB ahead were within noise of each other, 0.75 KiB and 3 KiB lost at
// times. The AVX2 kernels gained alike on that host (q4_g32 one thread 46-69 % -> 65-86 %);
// the 2-core Zen 3 AVX2 hosts have not measured it, and an earlier measurement on a Zen 4 with
// 4 KiB pages found prefetches 0.5-2 KiB ahead halving the rate: measure again on those hosts.
constexpr int kPrefetchAhead = 1536;

template <typename T>
constexpr T min_of(T a, T b) { return a < b ? a : b; }
template <typename T>
constexpr T max_of(T a, T b) { return a < b ? b : a; }

// ---- small vector helpers -------------------------------------------------------------------

#if defined(MXLM_TARGET_AVX512)
MXLM_QINLINE VI loadu(const void* p) { return _mm512_loadu_si512(p); }
MXLM_QINLINE VI bcast8(int v) { return _mm512_set1_epi8(static_cast<char>(v)); }
template <int N>
MXLM_QINLINE VI srli16(VI a) { return _mm512_srli_epi16(a, N); }
MXLM_QINLINE VI vand(VI a, VI b) { return _mm512_and_si512(a, b); }
MXLM_QINLINE VF fzero() { return _mm512_setzero_ps(); }
MXLM_QINLINE VF fload(const float* p) { return _mm512_loadu_ps(p); }
MXLM_QINLINE VF fmul(VF a, VF b) { return _mm512_mul_ps(a, b); }
MXLM_QINLINE VF fmadd(VF a, VF b, VF c) { return _mm512_fmadd_ps(a, b, c); }
MXLM_QINLINE VF to_float(VI a) { return _mm512_cvtepi32_ps(a); }
MXLM_QINLINE float reduce(VF a) { return _mm512_reduce_add_ps(a); }
// a | (b & c)
MXLM_QINLINE VI or_and(VI a, VI b, VI c) { return _mm512_ternarylogic_epi64(a, b, c, 0xF8); }
// Bytes [0, 32) from p (no access past them), zeros above: a plain 256-bit load, no mask.
MXLM_QINLINE VI load_head32(const void* p) {
  return _mm512_zextsi256_si512(_mm256_loadu_si256(static_cast<const __m256i*>(p)));
}
#else
MXLM_QINLINE VI loadu(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
MXLM_QINLINE VI bcast8(int v) { return _mm256_set1_epi8(static_cast<char>(v)); }
template <int N>
MXLM_QINLINE VI srli16(VI a) { return _mm256_srli_epi16(a, N); }
MXLM_QINLINE VI vand(VI a, VI b) { return _mm256_and_si256(a, b); }
MXLM_QINLINE VF fzero() { return _mm256_setzero_ps(); }
MXLM_QINLINE VF fload(const float* p) { return _mm256_loadu_ps(p); }
MXLM_QINLINE VF fmul(VF a, VF b) { return _mm256_mul_ps(a, b); }
MXLM_QINLINE VF fmadd(VF a, VF b, VF c) { return _mm256_fmadd_ps(a, b, c); }
MXLM_QINLINE VF to_float(VI a) { return _mm256_cvtepi32_ps(a); }
MXLM_QINLINE float reduce(VF a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
MXLM_QINLINE VI or_and(VI a, VI b, VI c) { return _mm256_or_si256(a, _mm256_and_si256(b, c)); }
// Two unaligned 16-byte loads: lo into the low lane, hi into the high lane.
MXLM_QINLINE VI load2(const uint8_t* lo, const uint8_t* hi) {
  return _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(lo))),
                                 _mm_loadu_si128(reinterpret_cast<const __m128i*>(hi)), 1);
}
#endif

#include "kernels/simd/qgemm_x86_decoders_inl.h"

#include "kernels/simd/qgemm_x86_layout_inl.h"

// ---- format traits --------------------------------------------------------------------------

constexpr const QTypeInfo& info_of(QType t) {
  for (const QTypeInfo& i : kQTypes) {
    if (i.type == t) return i;
  }
  return kQTypes[0];
}

template <QType T>
struct Fmt {
  static constexpr QKind kKind = info_of(T).kind;
  static constexpr int kBits = info_of(T).bits;
  static constexpr int kG = info_of(T).block_elems;
  static constexpr int kPrefix = info_of(T).row_prefix_bytes;
  static constexpr int kGroupQBytes = kG * kBits / 8;
  static constexpr int kGPU = kUnitElems / kG;  // groups per unit
  static constexpr int kUnitQBytes = kUnitElems * kBits / 8;
  static constexpr bool kCodebook = kKind == QKind::kCodebook;
  static constexpr bool kAsym = kKind == QKind::kAsymmetric;
  // Two-level (qtype.h): 8-bit scale (offset) codes under f32 row scales (section "group scales").
  static constexpr bool kTwoLevel = info_of(T).two_level;
  static constexpr int kCodeBytes = kTwoLevel ? 1 : 2;  // bytes per group scale (offset)
  // Symmetric two-level: the offset terms join the block terms in the tile's main loops (see
  // there) instead of a pass of their own.
  static constexpr bool kFusedOffsets = kTwoLevel && !kAsym;
#if defined(MXLM_TARGET_AVX512)
  static constexpr bool kSigned = false;
  static constexpr int kZ = kAsym ? 0 : kCodebook ? 128 : 1 << (kBits - 1);
#else
  // maddubs(u8, s8) saturates int16 for u8 values above ~128: use these signed.
  static constexpr bool kSigned = kCodebook || kBits == 8;
  static constexpr int kZ = (kAsym || kSigned) ? 0 : 1 << (kBits - 1);
#endif
  static constexpr bool kOffsets = kAsym || kZ != 0;  // add sum_g c_g * S_g
  using D = Dec<kBits, kG>;
  static constexpr bool kRepacked = is_repacked<D>();
  static const Layout& layout() { return LayoutOf<kBits, kG>::value; }
};

// Whether format T's rows are interleaved at load (qgemm_x86_ri_inl.h): AVX-512's formats but
// the codebooks (16 rows' tables do not fit one vpshufb).
template <QType T>
constexpr bool has_ri() {
#if defined(MXLM_TARGET_AVX512)
  return !Fmt<T>::kCodebook;
#else
  return false;
#endif
}

// Per row offsets within a weight row (qrow_layout in kernels/quant.h; two-level rows start
// with their f32 row scales D, M at offsets 0 and 4).
struct Geo {
  int64_t nb;     // groups
  size_t d_off;   // group scales: f16, two-level 8-bit codes
  size_t m_off;   // group offsets (asymmetric): f16, two-level i8 codes
  size_t q_off;   // quants
};

template <QType T>
Geo make_geo(int64_t K) {
  using F = Fmt<T>;
  Geo geo;
  geo.nb = (K + F::kG - 1) / F::kG;
  geo.d_off = F::kPrefix;
  geo.m_off = geo.d_off + F::kCodeBytes * static_cast<size_t>(geo.nb);
  geo.q_off = geo.m_off + (F::kAsym ? F::kCodeBytes * static_cast<size_t>(geo.nb) : 0);
  return geo;
}

// QPackFn of repacked formats (pack_rows 1): whole units repacked, everything else copied.
template <QType T>
void pack_row(const uint8_t* src, uint8_t* dst, int64_t K, int rows, size_t stride) {
  using F = Fmt<T>;
  const Geo geo = make_geo<T>(K);
  for (int r = 0; r < rows; ++r, src += stride, dst += stride) {
    std::memcpy(dst, src, geo.q_off + static_cast<size_t>(geo.nb) * F::kGroupQBytes);
    for (int64_t u = 0; u < geo.nb / F::kGPU; ++u) {
      const size_t o = geo.q_off + static_cast<size_t>(u) * F::kUnitQBytes;
      F::D::repack(src + o, dst + o);
    }
  }
}

// Copies the `groups` groups of a row's trailing partial unit (file layout, see Dec<3, 32>) into
// a whole zero-padded unit in the layout the decoder reads.
template <QType T>
MXLM_QINLINE void copy_partial(uint8_t* dst, const uint8_t* src, int groups) {
  using F = Fmt<T>;
  std::memset(dst, 0, F::kUnitQBytes);
  std::memcpy(dst, src, static_cast<size_t>(groups) * F::kGroupQBytes);
  if constexpr (F::kRepacked) {
    uint8_t raw[F::kUnitQBytes];
    std::memcpy(raw, dst, sizeof(raw));
    F::D::repack(raw, dst);
  }
}

#include "kernels/simd/qgemm_x86_gemv_inl.h"

#include "kernels/simd/qgemm_x86_panel_inl.h"

#include "kernels/simd/qgemm_x86_ri_inl.h"

// Rows [n0, n1) in the file's layout (or a per-row repacked one).
template <QType T>
void qgemm_rows(int M, int n0, int n1, int64_t K, const ActQ8& a, const uint8_t* w, size_t w_row_bytes,
                const Geo& geo, float* y, size_t ldy) {
  if constexpr (has_panel<T>()) {
    if (M >= kPanelMinM) {
      qgemm_panel<T>(M, n0, n1, K, a, w, w_row_bytes, geo, y, ldy);
      return;
    }
  }
  // M > 4: cut N into blocks of ~512 KiB of weight rows, which stay in L2 while all row tiles
  // pass over them. M <= 4 streams the weights once from DRAM, tile_nr(MR) strands per tile
  // (see run_block).
  int nblock = n1 - n0;
  if (M > 4) nblock = static_cast<int>(max_of<size_t>(16, (size_t{512} << 10) / max_of<size_t>(w_row_bytes, 1)));
  for (int nb0 = n0; nb0 < n1; nb0 += nblock) {
    const int nb1 = static_cast<int>(min_of<int64_t>(n1, static_cast<int64_t>(nb0) + nblock));
    for (int m0 = 0, mr = 0; m0 < M; m0 += mr) {
      // Rows in tiles of 4, the last ones in tiles of 2 or 3: MR = 1 is decode's tile (M = 1),
      // which folds unit pairs (another summation order), so a prefill row's result does not
      // depend on where the call's rows end (chunked prefill equals one call, Eval.*).
      mr = M - m0 == 5 ? 3 : min_of(4, M - m0);
      switch (mr) {
        case 1: run_block<T, 1, tile_nr(1)>(a, m0, nb0, nb1, w, w_row_bytes, geo, y, ldy); break;
        case 2: run_block<T, 2, tile_nr(2)>(a, m0, nb0, nb1, w, w_row_bytes, geo, y, ldy); break;
        case 3: run_block<T, 3, tile_nr(3)>(a, m0, nb0, nb1, w, w_row_bytes, geo, y, ldy); break;
        default: run_block<T, 4, tile_nr(4)>(a, m0, nb0, nb1, w, w_row_bytes, geo, y, ldy); break;
      }
    }
  }
}

#if defined(MXLM_TARGET_AVX512)
// Whole interleaved groups [g0, g1): the panel GEMM from M = kPanelMinM, else the GEMV (both
// give a row the same bits: qgemm_x86_ri_inl.h).
template <QType T>
void qgemm_ri_groups(int M, int g0, int g1, int64_t K, const ActQ8& a, const uint8_t* w, size_t rb, const Geo& geo,
                     float* y, size_t ldy) {
  if (M >= kPanelMinM) {
    qgemm_panel<T>(M, g0, g1, K, a, w, rb, geo, y, ldy, true);
  } else {
    ri_gemv<T>(M, g0, g1, K, a, w, rb, y, ldy);
  }
}

// Rows [n, e) of the interleaved group at row g (g <= n < e <= g + 16): the whole group into a
// scratch tile, kRIPartialM activation rows at a time, and those rows copied out.
template <QType T>
void qgemm_ri_part(int M, int g, int n, int e, int64_t K, const ActQ8& a, const uint8_t* w, size_t rb,
                   const Geo& geo, float* y, size_t ldy) {
  const int64_t nbs = a.kp / 32;
  alignas(64) float tmp[kRIPartialM * kRIRows];
  for (int m0 = 0; m0 < M; m0 += kRIPartialM) {
    const int mn = min_of(kRIPartialM, M - m0);
    const ActQ8 am{a.q + m0 * a.kp, a.d + m0 * nbs, a.ds + m0 * nbs, a.kp};
    qgemm_ri_groups<T>(mn, 0, kRIRows, K, am, w + static_cast<size_t>(g) * rb, rb, geo, tmp, kRIRows);
    for (int m = 0; m < mn; ++m) {
      for (int r = n; r < e; ++r) y[static_cast<size_t>(m0 + m) * ldy + r] = tmp[m * kRIRows + r - g];
    }
  }
}
#endif

// The QGemmFn of format T. Interleaved formats (has_ri): whole groups of 16 rows in the
// interleaved kernels, rows [n0, n1) that cover a group in part through the whole group into a
// scratch tile (threads split at multiples of 16, so only tests take that path), the rows of
// the last, incomplete group (from N rounded down to 16) in the row kernels.
template <QType T>
void qgemm(int M, int n0, int n1, int N, int64_t K, const ActQ8& a, const uint8_t* w, size_t w_row_bytes, float* y,
           size_t ldy) {
  if (M <= 0 || n1 <= n0 || K <= 0) return;
  const Geo geo = make_geo<T>(K);
  int n = n0;
#if defined(MXLM_TARGET_AVX512)
  if constexpr (has_ri<T>()) {
    const int nfull = N / kRIRows * kRIRows;
    while (n < n1 && n < nfull) {
      const int g = n / kRIRows * kRIRows;
      if (n == g && n1 >= g + kRIRows) {
        const int e = min_of(n1, nfull) / kRIRows * kRIRows;
        qgemm_ri_groups<T>(M, g, e, K, a, w, w_row_bytes, geo, y, ldy);
        n = e;
        continue;
      }
      const int e = min_of(n1, g + kRIRows);
      qgemm_ri_part<T>(M, g, n, e, K, a, w, w_row_bytes, geo, y, ldy);
      n = e;
    }
  }
#else
  (void)N;
#endif
  if (n < n1) qgemm_rows<T>(M, n, n1, K, a, w, w_row_bytes, geo, y, ldy);
}

// ---- activation quantization ----------------------------------------------------------------
// Bit-identical to quantize_act_row_ref: the same float amax (max is exact in any order; NaN
// elements are skipped like std::max(amax, |x|) skips them: maxps returns its second operand
// when one is NaN), the same kActTiny cut-off, the same float 127/amax, a float multiply and
// round-to-nearest-even (cvtps2dq under the default MXCSR, like nearbyint), an exact integer sum.

#if defined(MXLM_TARGET_AVX512)
void quantize_act(const float* x, int64_t k, int64_t kp, int8_t* q, float* d, float* ds, bool per_token) {
  const int64_t nb = kp / kActBlock;
  const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
  float row_amax = 0.0f;
  if (per_token) {
    __m512 mx = _mm512_setzero_ps();
    for (int64_t i = 0; i < k; i += 16) {
      const int64_t n = k - i;
      const __m512 v = _mm512_maskz_loadu_ps(n >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << n) - 1), x + i);
      mx = _mm512_max_ps(_mm512_and_ps(v, absmask), mx);
    }
    row_amax = _mm512_reduce_max_ps(mx);
  }
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t i0 = b * kActBlock;
    const int64_t n = k - i0 < 0 ? 0 : k - i0;
    const __mmask16 m0 = n >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << n) - 1);
    const __mmask16 m1 = n >= 32 ? 0xFFFF : n <= 16 ? 0 : static_cast<__mmask16>((1u << (n - 16)) - 1);
    const __m512 x0 = _mm512_maskz_loadu_ps(m0, x + i0), x1 = _mm512_maskz_loadu_ps(m1, x + i0 + 16);
    float amax = row_amax;
    if (!per_token) {
      const __m512 m = _mm512_max_ps(_mm512_and_ps(x1, absmask), _mm512_setzero_ps());
      amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_and_ps(x0, absmask), m));
    }
    const bool zero = !(amax > kActTiny);
    const float id = zero ? 0.0f : 127.0f / amax;
    const __m512 vid = _mm512_set1_ps(id);
    const __m512i v0 = _mm512_cvtps_epi32(_mm512_mul_ps(x0, vid));
    const __m512i v1 = _mm512_cvtps_epi32(_mm512_mul_ps(x1, vid));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i0), _mm512_cvtepi32_epi8(v0));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i0 + 16), _mm512_cvtepi32_epi8(v1));
    const int sum = _mm512_reduce_add_epi32(_mm512_add_epi32(v0, v1));
    d[b] = zero ? 0.0f : amax / 127.0f;
    ds[b] = d[b] * static_cast<float>(sum);
  }
}
#else
MXLM_QINLINE __m256 load_f32_head(const float* p, int64_t n) {
  if (n >= 8) return _mm256_loadu_ps(p);
  if (n <= 0) return _mm256_setzero_ps();
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), idx);
  return _mm256_maskload_ps(p, mask);
}
MXLM_QINLINE float hmax(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
void quantize_act(const float* x, int64_t k, int64_t kp, int8_t* q, float* d, float* ds, bool per_token) {
  const int64_t nb = kp / kActBlock;
  const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  float row_amax = 0.0f;
  if (per_token) {
    __m256 mx = _mm256_setzero_ps();
    for (int64_t i = 0; i < k; i += 8) mx = _mm256_max_ps(_mm256_and_ps(load_f32_head(x + i, k - i), absmask), mx);
    row_amax = hmax(mx);
  }
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t i0 = b * kActBlock;
    __m256 v[4];
    __m256 mx = _mm256_setzero_ps();
    for (int j = 0; j < 4; ++j) {
      v[j] = load_f32_head(x + i0 + 8 * j, k - i0 - 8 * j);
      mx = _mm256_max_ps(_mm256_and_ps(v[j], absmask), mx);
    }
    const float amax = per_token ? row_amax : hmax(mx);
    const bool zero = !(amax > kActTiny);
    const float id = zero ? 0.0f : 127.0f / amax;
    const __m256 vid = _mm256_set1_ps(id);
    __m256i iv[4];
    for (int j = 0; j < 4; ++j) iv[j] = _mm256_cvtps_epi32(_mm256_mul_ps(v[j], vid));
    // Narrow: packs work per 128-bit lane; a final permute restores the element order.
    const __m256i p01 = _mm256_packs_epi32(iv[0], iv[1]), p23 = _mm256_packs_epi32(iv[2], iv[3]);
    const __m256i p = _mm256_packs_epi16(p01, p23);
    const __m256i ordered = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + i0), ordered);
    __m256i s = _mm256_add_epi32(_mm256_add_epi32(iv[0], iv[1]), _mm256_add_epi32(iv[2], iv[3]));
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
    const int sum = _mm_cvtsi128_si32(s4);
    d[b] = zero ? 0.0f : amax / 127.0f;
    ds[b] = d[b] * static_cast<float>(sum);
  }
}
#endif

// ---- registration ---------------------------------------------------------------------------

template <QType T>
void register_one() {
  using F = Fmt<T>;
  if (!probe_layout<F::kBits, F::kG>()) return;
#if defined(MXLM_TARGET_AVX512)
  if constexpr (has_ri<T>()) {
    register_qkernel(T, kIsa, &qgemm<T>, &pack_ri<T>, kRIRows);
    return;
  }
#endif
  if constexpr (F::kRepacked) {
    register_qkernel(T, kIsa, &qgemm<T>, &pack_row<T>);
  } else {
    register_qkernel(T, kIsa, &qgemm<T>);
  }
}

template <size_t I>
void register_index() {
  if constexpr (kQTypes[I].kind != QKind::kFloat) register_one<kQTypes[I].type>();
}

template <size_t... I>
void register_all(std::index_sequence<I...>) {
  (register_index<I>(), ...);
}

// ---- the int8 peak (kernels/quant.h) ----------------------------------------------------------
// Independent chains of the dot instruction the tiles are built on. AVX2 counts vpmaddubsw's 32
// multiply-adds (the int16 adds that follow it in the tiles ride along); AVX-512 vpdpbusd's 64.
MXLM_QINLINE VI peak_step(VI acc, VI w, VI a) {
#if defined(MXLM_TARGET_AVX512)
  return _mm512_dpbusd_epi32(acc, w, a);
#else
  return _mm256_add_epi16(acc, _mm256_maddubs_epi16(w, a));
#endif
}

uint64_t int8_peak(int64_t iters, int32_t* sink) {
  // Chains: enough to cover the instruction's latency at its throughput, few enough that the
  // weights, the accumulators and `a` stay in registers (16 on AVX2: GCC spilled with 8 chains).
#if defined(MXLM_TARGET_AVX512)
  constexpr int kChains = 8;
#else
  constexpr int kChains = 6;
#endif
  const VI a = bcast8(3);
  VI w0 = bcast8(1), w1 = bcast8(2), w2 = bcast8(3), w3 = bcast8(4), w4 = bcast8(5), w5 = bcast8(6), w6 = bcast8(7),
     w7 = bcast8(8);
  VI c0 = bcast8(0), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0;
  // Named registers, not arrays (GCC kept arrays on the stack), and the weights pass through an
  // empty asm each round, as if loaded, so that the products stay in the loop.
  for (int64_t i = 0; i < iters; ++i) {
    __asm__ volatile("" : "+x"(w0), "+x"(w1), "+x"(w2), "+x"(w3), "+x"(w4), "+x"(w5));
    c0 = peak_step(c0, w0, a);
    c1 = peak_step(c1, w1, a);
    c2 = peak_step(c2, w2, a);
    c3 = peak_step(c3, w3, a);
    c4 = peak_step(c4, w4, a);
    c5 = peak_step(c5, w5, a);
    if constexpr (kChains == 8) {
      __asm__ volatile("" : "+x"(w6), "+x"(w7));
      c6 = peak_step(c6, w6, a);
      c7 = peak_step(c7, w7, a);
    }
  }
#if defined(MXLM_TARGET_AVX512)
  const VI t = _mm512_xor_si512(_mm512_xor_si512(_mm512_xor_si512(c0, c1), _mm512_xor_si512(c2, c3)),
                                _mm512_xor_si512(_mm512_xor_si512(c4, c5), _mm512_xor_si512(c6, c7)));
  // Two lanes, xor-ed like AVX2's below: the chains' int32 sums wrap, and a sum of lanes in int
  // (_mm512_reduce_add_epi32) is signed overflow (UBSan stopped `mxlm bench` on it).
  *sink = _mm_cvtsi128_si32(_mm512_castsi512_si128(t)) ^ _mm_extract_epi32(_mm512_extracti32x4_epi32(t, 3), 3);
#else
  const VI t = _mm256_xor_si256(_mm256_xor_si256(_mm256_xor_si256(c0, c1), _mm256_xor_si256(c2, c3)),
                                _mm256_xor_si256(c4, c5));
  *sink = _mm256_extract_epi32(t, 0) ^ _mm256_extract_epi32(t, 7);
#endif
  return static_cast<uint64_t>(iters) * kChains * 2 * kVB;
}

}  // namespace

void register_quant_kernels() {
  register_all(std::make_index_sequence<sizeof(kQTypes) / sizeof(kQTypes[0])>());
  register_quantize_act(kIsa, &quantize_act);
  register_int8_peak(kIsa, &int8_peak);
}

}  // namespace mxlm::kernels::MXLM_TARGET_NS

#endif  // MXLM_TARGET_AVX2 || MXLM_TARGET_AVX512
