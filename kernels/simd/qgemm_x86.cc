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
// AVX-512; registered with a QPackFn, kernels/quant.h).
//
// Blocking. A call runs over tiles of MR activation rows x NR weight rows; each unit of a weight
// row is decoded once and used for the MR rows. Activations are prepared in slabs of at most
// kSlabBytes per call (K-slabs when K is very long; partial sums then go through y).
//   M <= 4 (decode): the weights stream from DRAM once, so the memory access pattern decides.
//     Row i of a tile comes from its own "strand" of consecutive rows (tile t takes rows
//     t, t + len, t + 2*len, ...), and every row is read strictly forward ([codebook | scales |
//     offsets | quants]: scales and offsets are copied out first). NR = 4 while 4 rows are
//     small (<= 10 KiB together), else NR = 1. Measured on Zen 4: 4 adjacent rows per tile reach
//     ~40% of the read bandwidth, 4 strands of 2.3 KiB rows ~100%, 4 strands of 6 KiB rows ~75%,
//     1 row of 6 KiB ~90%; software prefetches 0.5-2 KiB ahead in each strand halve it. For M = 1 two units are folded into one int32 lane per block before
//     the float step, which halves the conversions and scale multiplies.
//   M > 4 (prefill): N is cut into blocks of ~512 KiB of weight rows, which stay in L2 while
//     all 4-row tiles pass over them; 4 x 4 tiles (AVX2: 4 x 2). On AVX-512, M >= kPanelMinM
//     runs the panel GEMM instead (section "prefill" below).
//
// Every output is the sum of the same terms as the reference; only float rounding and summation
// order differ (tests/qgemm_test.cc states the bound). For a given M the result of a row does not
// depend on how [n0, n1) is split (threads); it may differ in the last bits between calls with
// different M (M = 1 folds unit pairs; K beyond one slab is summed in MR-dependent slabs).

#if defined(MXLM_TARGET_AVX2) || defined(MXLM_TARGET_AVX512)

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <utility>

// GCC 12 warns inside the AVX-512 headers about their own _mm512_undefined_* (PR 105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include "kernels/quant.h"
#include "kernels/qtype.h"

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
template <size_t N>
MXLM_QINLINE VI load_table(const uint8_t (&t)[N]) {
  static_assert(N == 64);
  return _mm512_loadu_si512(t);
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
template <size_t N>
MXLM_QINLINE VI load_table(const uint8_t (&t)[N]) {
  static_assert(N == 32);
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t));
}
#endif

// ---- decoders -------------------------------------------------------------------------------
// Dec<bits, G>::run(q, w) reads the kBytes = kUnitElems*bits/8 quant bytes of one unit (groups
// back to back, bit planes as in kernels/qtype.h) and writes the raw unsigned values (codebook
// indices) into w[0..3]. It reads no byte outside [q, q + kBytes).

template <int Bits, int G>
struct Dec;

// Constant tables for byte permutes / multishift controls, built at compile time.
struct Table {
  uint8_t v[kVB];
};

// 2 bits, G = 32 (both ISAs): 8 groups of 8 bytes (AVX2: 4); byte j of a group holds element
// j + 8s in bits 2s. Shifts and masks: on AVX-512 four GFNI affine transforms (which share the
// execution ports of vpdpbusd on Zen 4) measured no faster here, while the other decoders gain
// 3-20 % from them.
template <>
struct Dec<2, 32> {
  static constexpr int kBytes = kVB;
  static MXLM_QINLINE void run(const uint8_t* q, VI w[4]) {
    const VI m = bcast8(3), x = loadu(q);
    w[0] = vand(x, m);
    w[1] = vand(srli16<2>(x), m);
    w[2] = vand(srli16<4>(x), m);
    w[3] = vand(srli16<6>(x), m);
  }
};

#if defined(MXLM_TARGET_AVX512)

// GF(2) affine byte transform (vgf2p8affineqb) that moves bits [lo, lo + width) of every byte
// down to bit 0 and clears the rest: output bit i takes the input bits of matrix byte 7 - i.
constexpr uint64_t bit_field(int lo, int width) {
  uint64_t m = 0;
  for (int i = 0; i < width; ++i) m |= (uint64_t{1} << (lo + i)) << (8 * (7 - i));
  return m;
}
constexpr uint64_t field2(int lo) { return bit_field(lo, 2); }
MXLM_QINLINE VI gf_field(VI x, VI matrix) { return _mm512_gf2p8affine_epi64_epi8(x, matrix, 0); }
// High nibble of every byte, shifted down (one op instead of a shift and a mask).
MXLM_QINLINE VI high_nibble(VI x) {
  return gf_field(x, _mm512_set1_epi64(static_cast<long long>(bit_field(4, 4))));
}

// 2 bits, G = 64: 4 groups of 16 bytes (one per 128-bit lane); byte j holds element j + 16s.
// Elements 0..31 (block 2g) are fields 0, 1; elements 32..63 (block 2g+1) fields 2, 3. Taking
// fields 0/1 from the even qwords and 2/3 from the odd ones (and again with the qwords swapped)
// keeps each qword position on one block; the affine matrix is per qword.
template <>
struct Dec<2, 64> {
  static constexpr int kBytes = 64;
  static MXLM_QINLINE void run(const uint8_t* q, VI w[4]) {
    const VI x = loadu(q);
    const VI y = _mm512_shuffle_epi32(x, _MM_PERM_BADC);  // swap the qwords of each lane
    const auto f = [](int lo) { return static_cast<long long>(field2(lo)); };
    const VI m0 = _mm512_set_epi64(f(4), f(0), f(4), f(0), f(4), f(0), f(4), f(0));
    const VI m1 = _mm512_set_epi64(f(6), f(2), f(6), f(2), f(6), f(2), f(6), f(2));
    w[0] = gf_field(x, m0);
    w[1] = gf_field(x, m1);
    w[2] = gf_field(y, m0);
    w[3] = gf_field(y, m1);
  }
};

// 4 bits, G = 32: 8 groups of 16 bytes; low nibbles are elements 0..15, high ones 16..31.
template <>
struct Dec<4, 32> {
  static constexpr int kBytes = 128;
  static MXLM_QINLINE void run(const uint8_t* q, VI w[4]) {
    const VI f = bcast8(0x0F), x0 = loadu(q), x1 = loadu(q + 64);
    const VI u0 = _mm512_unpacklo_epi64(x0, x1), u1 = _mm512_unpackhi_epi64(x0, x1);
    w[0] = vand(u0, f);
    w[1] = high_nibble(u0);
    w[2] = vand(u1, f);
    w[3] = high_nibble(u1);
  }
};

// 4 bits, G = 64 or 128: the two nibbles of a byte belong to different blocks. Qwords taken
// from the low half of a 256-bit lane keep their low nibble, those from the high half their
// high nibble, and the swapped copy supplies the other nibbles at the same positions.
struct Dec4Wide {
  static constexpr int kBytes = 128;
  static MXLM_QINLINE void run(const uint8_t* q, VI w[4]) {
    const VI x0 = loadu(q), x1 = loadu(q + 64);
    const VI u0 = _mm512_unpacklo_epi64(x0, x1), u1 = _mm512_unpackhi_epi64(x0, x1);
    const VI v0 = _mm512_shuffle_i64x2(u0, u0, _MM_SHUFFLE(2, 3, 0, 1));
    const VI v1 = _mm512_shuffle_i64x2(u1, u1, _MM_SHUFFLE(2, 3, 0, 1));
    // Per qword: the low nibbles (qwords 0, 1 of each 256-bit half) or the high ones (2, 3).
    const long long lo = static_cast<long long>(bit_field(0, 4)), hi = static_cast<long long>(bit_field(4, 4));
    const VI sel = _mm512_set_epi64(hi, hi, lo, lo, hi, hi, lo, lo);
    w[0] = gf_field(u0, sel);
    w[1] = gf_field(v0, sel);
    w[2] = gf_field(u1, sel);
    w[3] = gf_field(v1, sel);
  }
};
template <>
struct Dec<4, 64> : Dec4Wide {};
template <>
struct Dec<4, 128> : Dec4Wide {};

// 8 bits: 8 blocks of 32 contiguous bytes (whatever the group size); vector t takes qword t of
// every block.
struct Dec8 {
  static constexpr int kBytes = 256;
  static MXLM_QINLINE void run(const uint8_t* q, VI w[4]) {
    const VI x0 = loadu(q), x1 = loadu(q + 64), x2 = loadu(q + 128), x3 = loadu(q + 192);
    const VI base = _mm512_set_epi64(12, 8, 4, 0, 12, 8, 4, 0);
    for (int t = 0; t < 4; ++t) {
      const VI idx = _mm512_add_epi64(base, _mm512_set1_epi64(t));
      const VI lo = _mm512_permutex2var_epi64(x0, idx, x1);
      const VI hi = _mm512_permutex2var_epi64(x2, idx, x3);
      w[t] = _mm512_mask_blend_epi64(0xF0, lo, hi);
    }
  }
};
template <>
struct Dec<8, 32> : Dec8 {};
template <>
struct Dec<8, 64> : Dec8 {};
template <>
struct Dec<8, 128> : Dec8 {};

// 6 bits, G = 32: 8 groups of 24 bytes = [nibbles q0 | nibbles q1 | 2-bit plane], i.e. 24
// qwords; gather each kind with one two-source and one masked one-source qword permute.
// qword gather: qword i <- qword 3i + first of 24 (from the l0/l1 pair below 16, l2 above).
struct QGather {
  alignas(64) uint64_t idx[8];
  unsigned hi;
};
constexpr QGather make_qgather(int first) {
  QGather g{};
  for (int i = 0; i < 8; ++i) {
    const int s = 3 * i + first;
    g.idx[i] = static_cast<uint64_t>(s < 16 ? s : s - 16);
    if (s >= 16) g.hi |= 1u << i;
  }
  return g;
}

// 6 bits, G = 32: 8 groups of 24 bytes = [nibbles q0 | nibbles q1 | 2-bit plane], i.e. 24
// qwords; gather each kind with one two-source and one masked one-source qword permute.
template <>
struct Dec<6, 32> {
  static constexpr int kBytes = 192;
  static constexpr QGather kN0 = make_qgather(0), kN1 = make_qgather(1), kT = make_qgather(2);
  static MXLM_QINLINE VI gather(const QGather& g, VI l0, VI l1, VI l2) {
    const VI iv = _mm512_load_si512(g.idx);
    return _mm512_mask_permutexvar_epi64(_mm512_permutex2var_epi64(l0, iv, l1), static_cast<__mmask8>(g.hi), iv, l2);
  }
  static MXLM_QINLINE void run(const uint8_t* q, VI w[4]) {
    const VI l0 = loadu(q), l1 = loadu(q + 64), l2 = loadu(q + 128);
    const VI n0 = gather(kN0, l0, l1, l2), n1 = gather(kN1, l0, l1, l2), t = gather(kT, l0, l1, l2);
    const VI f = bcast8(0x0F), c = bcast8(0x30);
    // Element e has nibble byte e%16 (low/high nibble for e < 16 / >= 16) and 2-bit field e/8 of
    // plane byte e%8.
    w[0] = or_and(vand(n0, f), _mm512_slli_epi64(t, 4), c);                        // 0..7
    w[1] = or_and(vand(n1, f), _mm512_slli_epi64(t, 2), c);                        // 8..15
    w[2] = or_and(high_nibble(n0), t, c);                        // 16..23
    w[3] = or_and(high_nibble(n1), _mm512_srli_epi64(t, 2), c);  // 24..31
  }
};

// Byte-gather index for a two-source byte permute (table bytes 0..127) and the one-source
// permute of a third vector (bytes 128..191): qword i of the result takes bytes
// [start(i), start(i) + 8) (dword_dup: bytes start..start+3 twice).
struct ByteGather {
  alignas(64) uint8_t lo[64];
  alignas(64) uint8_t hi[64];
  uint64_t hi_mask;
};
constexpr ByteGather make_gather(int stride, int offset, bool dword_dup) {
  ByteGather g{};
  for (int i = 0; i < 8; ++i) {
    for (int p = 0; p < 8; ++p) {
      const int src = stride * i + offset + (dword_dup ? p % 4 : p);
      const int pos = 8 * i + p;
      if (src < 128) {
        g.lo[pos] = static_cast<uint8_t>(src);
      } else {
        g.hi[pos] = static_cast<uint8_t>(src - 128);
        g.hi_mask |= 1ull << pos;
      }
    }
  }
  return g;
}
MXLM_QINLINE VI gather_bytes(const ByteGather& g, VI l0, VI l1, VI l2) {
  const VI r = _mm512_permutex2var_epi8(l0, _mm512_load_si512(g.lo), l1);
  if (g.hi_mask == 0) return r;
  return _mm512_mask_permutexvar_epi8(r, g.hi_mask, _mm512_load_si512(g.hi), l2);
}
// Multishift control: byte p of every qword selects the 8 bits starting at bit
// (first + p - lift) mod 64 of its qword (a 32-bit plane duplicated), which puts plane bit
// first + p at bit `lift` of the byte.
struct Ctrl {
  alignas(64) uint8_t v[64];
};
constexpr Ctrl make_ctrl(int first, int lift) {
  Ctrl c{};
  for (int i = 0; i < 64; ++i) c.v[i] = static_cast<uint8_t>((first + i % 8 - lift) & 63);
  return c;
}

// 5 bits, G = 32: 8 groups of 20 bytes = [16 nibble bytes | 32-bit plane of bit 4].
template <>
struct Dec<5, 32> {
  static constexpr int kBytes = 160;
  static constexpr ByteGather kN0 = make_gather(20, 0, false), kN1 = make_gather(20, 8, false),
                              kP = make_gather(20, 16, true);
  static constexpr Ctrl kC0 = make_ctrl(0, 4), kC1 = make_ctrl(8, 4), kC2 = make_ctrl(16, 4), kC3 = make_ctrl(24, 4);
  static MXLM_QINLINE void run(const uint8_t* q, VI w[4]) {
    const VI l0 = loadu(q), l1 = loadu(q + 64), l2 = load_head32(q + 128);
    const VI n0 = gather_bytes(kN0, l0, l1, l2), n1 = gather_bytes(kN1, l0, l1, l2), p = gather_bytes(kP, l0, l1, l2);
    const VI f = bcast8(0x0F), c = bcast8(0x10);
    w[0] = or_and(vand(n0, f), _mm512_multishift_epi64_epi8(_mm512_load_si512(kC0.v), p), c);
    w[1] = or_and(vand(n1, f), _mm512_multishift_epi64_epi8(_mm512_load_si512(kC1.v), p), c);
    w[2] = or_and(high_nibble(n0), _mm512_multishift_epi64_epi8(_mm512_load_si512(kC2.v), p), c);
    w[3] = or_and(high_nibble(n1), _mm512_multishift_epi64_epi8(_mm512_load_si512(kC3.v), p), c);
  }
};

// Per-qword GF(2) matrices: `lo` for the low 256-bit half, `hi` for the high one.
MXLM_QINLINE VI halves(uint64_t lo, uint64_t hi) {
  const long long l = static_cast<long long>(lo), h = static_cast<long long>(hi);
  return _mm512_set_epi64(h, h, h, h, l, l, l, l);
}

// 3 bits, G = 32, on the load-time repacked unit (repack below). The file's layout, 8 groups of
// 12 bytes = [8 bytes of the 2-bit plane | 32-bit plane of bit 2], needs two byte gathers and
// four multishifts per unit; here vector t, qword i, byte j is element 8t + j of group i, stored
//   bytes [0, 64):  byte b = 8i + j: vector 0's value in bits 0-2, vector 1's in bits 3-5, the low
//                   two bits of vector 2's in bits 6-7;
//   bytes [64, 96): read into both 256-bit halves; byte c serves byte c (half h = 0) and c + 32
//                   (h = 1) of a vector: bit h = bit 2 of vector 2's value, bits 2 + 3h .. 4 + 3h
//                   = vector 3's value.
// One GF(2) affine transform (the matrix is per qword, so each half takes its own field) or one
// mask extracts vectors 0, 1 and 3; vector 2 is a bitwise select of two. 6 operations per unit
// instead of 14: compute-bound GEMV +40 % (q3_g32), +47 % (nu3_g32, with run_cb). Trailing
// partial units stay in the file's layout in the packed row and are repacked when they are copied
// out (copy_partial).
template <>
struct Dec<3, 32> {
  static constexpr int kBytes = 96;
  static MXLM_QINLINE void run(const uint8_t* q, VI w[4]) {
    const VI x = loadu(q);
    const VI hb = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 64)));
    w[0] = vand(x, bcast8(0x07));
    w[1] = gf_field(x, _mm512_set1_epi64(static_cast<long long>(bit_field(3, 3))));
    // Bits 0-1 from x >> 6, bit 2 from hb's bit h moved there (byte 5 of a matrix feeds output
    // bit 2), bits 3-7 clear.
    const VI hi2 = gf_field(hb, halves(bit_field(0, 1) >> 16, bit_field(1, 1) >> 16));
    w[2] = _mm512_ternarylogic_epi64(bcast8(0x03), srli16<6>(x), hi2, 0xCA);
    w[3] = gf_field(hb, halves(bit_field(2, 3), bit_field(5, 3)));
  }
  // Codebook formats: cb[index] through vpermb with cb in every qword (codebook_vec), which
  // reads index bits 0-5 only, so bits 3-5 may hold anything: vectors 0 and 1 need no mask.
  static MXLM_QINLINE void run_cb(const uint8_t* q, VI cb, VI w[4]) {
    const VI x = loadu(q);
    const VI hb = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 64)));
    w[0] = _mm512_permutexvar_epi8(x, cb);
    w[1] = _mm512_permutexvar_epi8(srli16<3>(x), cb);
    const VI hi2 = gf_field(hb, halves(bit_field(0, 1) >> 16, bit_field(1, 1) >> 16));
    w[2] = _mm512_permutexvar_epi8(_mm512_ternarylogic_epi64(bcast8(0x03), srli16<6>(x), hi2, 0xCA), cb);
    w[3] = _mm512_permutexvar_epi8(_mm512_srlv_epi64(hb, _mm512_set_epi64(5, 5, 5, 5, 2, 2, 2, 2)), cb);
  }
  // The file's unit (8 groups of 12 bytes) -> the layout above.
  static void repack(const uint8_t* raw, uint8_t* out) {
    // Element 8t + j of a group: bits 2t..2t+1 of plane byte j, and bit j of bit-2 byte t.
    uint8_t hb[32] = {};
    for (int g = 0; g < 8; ++g) {
      const uint8_t* t = raw + 12 * g;
      const uint8_t* p = t + 8;
      for (int j = 0; j < 8; ++j) {
        const int b = 8 * g + j, h = b / 32, c = b % 32;
        const unsigned lo = t[j];
        const unsigned e0 = (lo & 3) | ((p[0] >> j) & 1) << 2;
        const unsigned e1 = ((lo >> 2) & 3) | ((p[1] >> j) & 1) << 2;
        const unsigned e3 = (lo >> 6) | ((p[3] >> j) & 1) << 2;
        out[b] = static_cast<uint8_t>(e0 | e1 << 3 | ((lo >> 4) & 3) << 6);
        hb[c] = static_cast<uint8_t>(hb[c] | ((p[2] >> j) & 1) << h | e3 << (2 + 3 * h));
      }
    }
    std::memcpy(out + 64, hb, 32);
  }
};

#else  // AVX2

template <>
struct Dec<2, 64> {
  static constexpr int kBytes = 32;
  static MXLM_QINLINE void run(const uint8_t* q, VI w[4]) {
    const VI m = bcast8(3), x = loadu(q);
    const VI y = _mm256_shuffle_epi32(x, 0x4E);
    const VI s0 = _mm256_set_epi64x(4, 0, 4, 0), s1 = _mm256_set_epi64x(6, 2, 6, 2);
    w[0] = vand(_mm256_srlv_epi64(x, s0), m);
    w[1] = vand(_mm256_srlv_epi64(x, s1), m);
    w[2] = vand(_mm256_srlv_epi64(y, s0), m);
    w[3] = vand(_mm256_srlv_epi64(y, s1), m);
  }
};

template <>
struct Dec<4, 32> {
  static constexpr int kBytes = 64;
  static MXLM_QINLINE void run(const uint8_t* q, VI w[4]) {
    const VI f = bcast8(0x0F), x0 = loadu(q), x1 = loadu(q + 32);
    const VI u0 = _mm256_unpacklo_epi64(x0, x1), u1 = _mm256_unpackhi_epi64(x0, x1);
    w[0] = vand(u0, f);
    w[1] = vand(_mm256_srli_epi16(u0, 4), f);
    w[2] = vand(u1, f);
    w[3] = vand(_mm256_srli_epi16(u1, 4), f);
  }
};

struct Dec4Wide {
  static constexpr int kBytes = 64;
  static MXLM_QINLINE void run(const uint8_t* q, VI w[4]) {
    const VI f = bcast8(0x0F), x0 = loadu(q), x1 = loadu(q + 32);
    const VI u0 = _mm256_unpacklo_epi64(x0, x1), u1 = _mm256_unpackhi_epi64(x0, x1);
    const VI v0 = _mm256_permute4x64_epi64(u0, 0x4E), v1 = _mm256_permute4x64_epi64(u1, 0x4E);
    const VI sh = _mm256_set_epi64x(4, 4, 0, 0);
    w[0] = vand(_mm256_srlv_epi64(u0, sh), f);
    w[1] = vand(_mm256_srlv_epi64(v0, sh), f);
    w[2] = vand(_mm256_srlv_epi64(u1, sh), f);
    w[3] = vand(_mm256_srlv_epi64(v1, sh), f);
  }
};
template <>
struct Dec<4, 64> : Dec4Wide {};
template <>
struct Dec<4, 128> : Dec4Wide {};

struct Dec8 {
  static constexpr int kBytes = 128;
  static MXLM_QINLINE void run(const uint8_t* q, VI w[4]) {
    // Lanes: [block 0 | block 2] and [block 1 | block 3], 16 bytes at a time.
    const VI a0 = load2(q, q + 64), a1 = load2(q + 32, q + 96);
    const VI b0 = load2(q + 16, q + 80), b1 = load2(q + 48, q + 112);
    w[0] = _mm256_unpacklo_epi64(a0, a1);
    w[1] = _mm256_unpackhi_epi64(a0, a1);
    w[2] = _mm256_unpacklo_epi64(b0, b1);
    w[3] = _mm256_unpackhi_epi64(b0, b1);
  }
};
template <>
struct Dec<8, 32> : Dec8 {};
template <>
struct Dec<8, 64> : Dec8 {};
template <>
struct Dec<8, 128> : Dec8 {};

template <>
struct Dec<6, 32> {
  static constexpr int kBytes = 96;
  static MXLM_QINLINE void run(const uint8_t* q, VI w[4]) {
    // Group i at 24i: nibbles [24i, 24i+16), 2-bit plane [24i+16, 24i+24).
    const VI a = load2(q, q + 48), b = load2(q + 24, q + 72);
    const VI n0 = _mm256_unpacklo_epi64(a, b), n1 = _mm256_unpackhi_epi64(a, b);
    const VI t = _mm256_blend_epi32(load2(q + 16, q + 64), load2(q + 32, q + 80), 0xCC);
    const VI f = bcast8(0x0F), c = bcast8(0x30);
    w[0] = or_and(vand(n0, f), _mm256_slli_epi16(t, 4), c);
    w[1] = or_and(vand(n1, f), _mm256_slli_epi16(t, 2), c);
    w[2] = or_and(vand(_mm256_srli_epi16(n0, 4), f), t, c);
    w[3] = or_and(vand(_mm256_srli_epi16(n1, 4), f), _mm256_srli_epi16(t, 2), c);
  }
};

// Bit p of plane byte k of the qword's group -> `bit` in byte p (pb holds the 32-bit planes of
// the lane's two groups at bytes 0..3 and 12..15).
constexpr Table make_bit_shuffle(int k) {
  Table t{};
  for (int i = 0; i < 32; ++i) t.v[i] = static_cast<uint8_t>((i % 16) < 8 ? k : 12 + k);
  return t;
}
constexpr Table make_bit_select() {
  Table t{};
  for (int i = 0; i < 32; ++i) t.v[i] = static_cast<uint8_t>(1u << (i % 8));
  return t;
}
constexpr Table kBitSel = make_bit_select();
MXLM_QINLINE VI expand_bits(VI pb, const Table& shuf, VI bit) {
  const VI sel = load_table(kBitSel.v);
  const VI x = _mm256_and_si256(_mm256_shuffle_epi8(pb, load_table(shuf.v)), sel);
  return _mm256_and_si256(_mm256_cmpeq_epi8(x, sel), bit);
}

template <>
struct Dec<5, 32> {
  static constexpr int kBytes = 80;
  static constexpr Table kS0 = make_bit_shuffle(0), kS1 = make_bit_shuffle(1), kS2 = make_bit_shuffle(2),
                         kS3 = make_bit_shuffle(3);
  static MXLM_QINLINE void run(const uint8_t* q, VI w[4]) {
    // Group i at 20i: nibbles [20i, 20i+16), plane [20i+16, 20i+20).
    const VI a = load2(q, q + 40), b = load2(q + 20, q + 60);
    const VI n0 = _mm256_unpacklo_epi64(a, b), n1 = _mm256_unpackhi_epi64(a, b);
    const VI pb = _mm256_blend_epi32(load2(q + 16, q + 56), load2(q + 24, q + 64), 0x88);
    const VI f = bcast8(0x0F), c = bcast8(0x10);
    w[0] = _mm256_or_si256(vand(n0, f), expand_bits(pb, kS0, c));
    w[1] = _mm256_or_si256(vand(n1, f), expand_bits(pb, kS1, c));
    w[2] = _mm256_or_si256(vand(_mm256_srli_epi16(n0, 4), f), expand_bits(pb, kS2, c));
    w[3] = _mm256_or_si256(vand(_mm256_srli_epi16(n1, 4), f), expand_bits(pb, kS3, c));
  }
};

template <>
struct Dec<3, 32> {
  static constexpr int kBytes = 48;
  static constexpr Table kS0 = make_bit_shuffle(0), kS1 = make_bit_shuffle(1), kS2 = make_bit_shuffle(2),
                         kS3 = make_bit_shuffle(3);
  static MXLM_QINLINE void run(const uint8_t* q, VI w[4]) {
    // Group i at 12i: 2-bit plane [12i, 12i+8), bit plane [12i+8, 12i+12).
    const VI x = _mm256_blend_epi32(load2(q, q + 24), load2(q + 4, q + 28), 0xCC);
    const VI pb = load2(q + 8, q + 32);
    const VI m = bcast8(3), c = bcast8(0x04);
    w[0] = _mm256_or_si256(vand(x, m), expand_bits(pb, kS0, c));
    w[1] = _mm256_or_si256(vand(_mm256_srli_epi16(x, 2), m), expand_bits(pb, kS1, c));
    w[2] = _mm256_or_si256(vand(_mm256_srli_epi16(x, 4), m), expand_bits(pb, kS2, c));
    w[3] = _mm256_or_si256(vand(_mm256_srli_epi16(x, 6), m), expand_bits(pb, kS3, c));
  }
};

#endif  // decoders

// Decoders of a load-time repacked unit layout define repack(raw, out) of one whole unit
// (kernels/quant.h QPackFn).
template <class D>
constexpr bool is_repacked() {
  return requires(const uint8_t* raw, uint8_t* out) { D::repack(raw, out); };
}

// ---- layouts (probed) -----------------------------------------------------------------------

// Where each decoded byte comes from, found by running the decoder on units whose values are
// the bits of the element index (probe_layout).
struct Layout {
  bool ok;
  uint8_t src[4][kU];                  // vector t, qword i: source qword (element / 8) in the unit
  uint8_t blk[kU];                     // qword i -> block in the unit (same for every vector)
  alignas(64) int32_t dw_idx[kLanes];  // int32 lane -> weight group in the unit
  // Pairing two units' int32 results (lanes 2i, 2i+1 of block blk[i]) into one lane per block,
  // blocks in natural order: lane L = dword pair_a[L] + dword pair_b[L] of (unit 0, unit 1).
  alignas(64) int32_t pair_a[kLanes];
  alignas(64) int32_t pair_b[kLanes];
};

template <int Bits, int G>
struct LayoutOf {
  static Layout value;  // zero-initialized (no dynamic initialization in this file)
};
template <int Bits, int G>
Layout LayoutOf<Bits, G>::value;

template <int Bits, int G>
bool probe_layout() {
  using D = Dec<Bits, G>;
  static_assert(D::kBytes == kUnitElems * Bits / 8);
  Layout& L = LayoutOf<Bits, G>::value;
  uint8_t q[kUnitElems], packed[D::kBytes];
  alignas(64) uint8_t out[4][kVB];
  uint16_t elem[4][kVB] = {};
  for (int bit = 0; bit < 8; ++bit) {
    for (int e = 0; e < kUnitElems; ++e) q[e] = static_cast<uint8_t>((e >> bit) & 1);
    for (int g = 0; g < kUnitElems / G; ++g) pack_group(Bits, G, q + g * G, packed + g * (G * Bits / 8));
    if constexpr (is_repacked<D>()) {
      uint8_t raw[D::kBytes];
      std::memcpy(raw, packed, sizeof(raw));
      D::repack(raw, packed);
    }
    VI w[4];
    D::run(packed, w);
    for (int t = 0; t < 4; ++t) std::memcpy(out[t], &w[t], kVB);
    for (int t = 0; t < 4; ++t) {
      for (int j = 0; j < kVB; ++j) {
        if (out[t][j] > 1) return false;
        elem[t][j] = static_cast<uint16_t>(elem[t][j] | out[t][j] << bit);
      }
    }
  }
  bool seen[kUnitElems] = {};
  for (int t = 0; t < 4; ++t) {
    for (int i = 0; i < kU; ++i) {
      const int e0 = elem[t][8 * i];
      if (e0 % 8 != 0) return false;
      for (int p = 0; p < 8; ++p) {
        const int e = elem[t][8 * i + p];
        if (e != e0 + p || seen[e]) return false;
        seen[e] = true;
      }
      const int b = e0 / 32;
      if (t == 0) {
        L.blk[i] = static_cast<uint8_t>(b);
      } else if (L.blk[i] != b) {
        return false;
      }
      L.src[t][i] = static_cast<uint8_t>(e0 / 8);
    }
  }
  for (int j = 0; j < kLanes; ++j) L.dw_idx[j] = L.blk[j / 2] * 32 / G;
  for (int lane = 0; lane < kLanes; ++lane) {
    const int unit = lane / kU, b = lane % kU;
    int i = 0;
    while (L.blk[i] != b) ++i;
    L.pair_a[lane] = 2 * i + unit * kLanes;
    L.pair_b[lane] = 2 * i + 1 + unit * kLanes;
  }
  L.ok = true;
  return true;
}

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

// Per row offsets within a weight row.
struct Geo {
  int64_t nb;     // groups
  size_t d_off;   // f16 scales
  size_t m_off;   // f16 offsets (asymmetric)
  size_t q_off;   // quants
};

template <QType T>
Geo make_geo(int64_t K) {
  using F = Fmt<T>;
  Geo geo;
  geo.nb = (K + F::kG - 1) / F::kG;
  geo.d_off = F::kPrefix;
  geo.m_off = geo.d_off + 2 * static_cast<size_t>(geo.nb);
  geo.q_off = geo.m_off + (F::kAsym ? 2 * static_cast<size_t>(geo.nb) : 0);
  return geo;
}

// QPackFn of repacked formats: whole units repacked, everything else copied.
template <QType T>
void pack_row(const uint8_t* src, uint8_t* dst, int64_t K) {
  using F = Fmt<T>;
  const Geo geo = make_geo<T>(K);
  std::memcpy(dst, src, geo.q_off + static_cast<size_t>(geo.nb) * F::kGroupQBytes);
  for (int64_t u = 0; u < geo.nb / F::kGPU; ++u) {
    const size_t o = geo.q_off + static_cast<size_t>(u) * F::kUnitQBytes;
    F::D::repack(src + o, dst + o);
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

// ---- prepared activations -------------------------------------------------------------------

// One slab of up to MR activation rows in the format's order: for row r and unit u,
// aq[(r*nu_cap + u)*kUnitElems ...] (4 vectors of kVB bytes), the matching per-lane block
// scales dal[(r*nu_cap + u)*kLanes ...], and the offset sums zs[r*zcap + g] of the slab's groups
// (zero-padded to a whole vector).
struct alignas(64) Prep {
  int8_t aq[kSlabBytes];
  float dal[kSlabBytes / 32 * 2];
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

// Per-lane weight scales of one unit: lane j gets the f16 scale of its block's group.
template <QType T>
MXLM_QINLINE VF dw_lanes(const uint8_t* dp, VI idx) {
  using F = Fmt<T>;
  __m128i h;
  if constexpr (F::kGPU * 2 == 16) {
    h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(dp));
  } else if constexpr (F::kGPU * 2 == 8) {
    h = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(dp));
  } else if constexpr (F::kGPU * 2 == 4) {
    uint32_t v;
    std::memcpy(&v, dp, 4);
    h = _mm_cvtsi32_si128(static_cast<int>(v));
  } else {
    uint16_t v;
    std::memcpy(&v, dp, 2);
    h = _mm_cvtsi32_si128(v);
  }
#if defined(MXLM_TARGET_AVX512)
  if constexpr (F::kGPU == 8) {
    return _mm512_permutexvar_ps(idx, _mm512_castps256_ps512(_mm256_cvtph_ps(h)));
  } else {
    return _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(_mm_cvtph_ps(h)));
  }
#else
  return _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_cvtph_ps(h)), idx);
#endif
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

#if defined(MXLM_TARGET_AVX512)
// Scales of 2*kU = 16 consecutive blocks from f16 group scales starting at block 0's group.
template <QType T>
MXLM_QINLINE VF dw_blocks16(const uint16_t* d) {
  using F = Fmt<T>;
  if constexpr (F::kG == 32) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(d)));
  } else if constexpr (F::kG == 64) {
    const __m512i idx = _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);
    return _mm512_permutexvar_ps(idx, _mm512_castps256_ps512(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(d)))));
  } else {
    const __m512i idx = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    return _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(_mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(d)))));
  }
}
#endif

template <QType T, int MR, int NR>
void tile(const TileArgs& ta, const uint8_t* const rows[NR], const int cols[NR], float* y, size_t ldy, int m0,
          bool first) {
  using F = Fmt<T>;
  const Layout& L = F::layout();
  const Prep& p = *ta.p;
  const Geo& geo = ta.geo;
  const int64_t g0 = ta.u0 * F::kGPU;  // first group of the slab
  const int nu = ta.nu_full + (ta.rem_groups > 0 ? 1 : 0);
  // Each row is read strictly forward, [codebook | scales | offsets | quants]: scales are copied
  // out (zero-padded to an even number of units) and the offset terms summed before the quants
  // stream. Reading the scales alongside the quants instead makes two interleaved streams per
  // row, which the hardware prefetchers handle badly once rows exceed ~4 KiB; masked loads
  // straight from DRAM are slow too.
  alignas(64) uint16_t dloc[NR][slab_groups<T, MR>() + 2 * F::kGPU];
  VI cbv[NR];
  for (int n = 0; n < NR; ++n) {
    cbv[n] = codebook_vec<T>(rows[n]);
    std::memcpy(dloc[n], rows[n] + geo.d_off + 2 * static_cast<size_t>(g0), 2 * static_cast<size_t>(ta.ngroups));
    for (int g = ta.ngroups; g < (nu + 1) * F::kGPU; ++g) dloc[n][g] = 0;
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
  if constexpr (F::kOffsets) {
    // sum_g c_g * S_g, c = offset (asymmetric) or scale (symmetric, codebook), from the row (in
    // cache now). Groups outer: the MR x NR sums stay in registers as independent chains.
    const size_t c_off = (F::kAsym ? geo.m_off : geo.d_off) + 2 * static_cast<size_t>(g0);
    for (int g = 0; g < ta.ngroups; g += kLanes) {
      const int cnt = min_of(kLanes, ta.ngroups - g);
      for (int n = 0; n < NR; ++n) {
        const VF cv = f16_lanes(rows[n] + c_off + 2 * static_cast<size_t>(g), cnt);
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
#if defined(MXLM_TARGET_AVX512)
  if constexpr (MR == 1) {
    // Two units at a time: their int32 results fold into one lane per block (natural order),
    // so converting, scaling and accumulating happens once per 16 blocks.
    const VI pa = _mm512_load_si512(L.pair_a), pb = _mm512_load_si512(L.pair_b);
    for (int u = 0; u < nu; u += 2) {
      const uint8_t* qp[NR];
      VI i0[NR], i1[NR];
      quants(u, qp);
      unit_ints<T, NR>(qp, cbv, p.aq + static_cast<size_t>(u) * kUnitElems, i0);
      if (u + 1 < nu) {
        quants(u + 1, qp);
        unit_ints<T, NR>(qp, cbv, p.aq + static_cast<size_t>(u + 1) * kUnitElems, i1);
      } else {
        for (int n = 0; n < NR; ++n) i1[n] = _mm512_setzero_si512();
      }
      const VF da = fload(p.dn + static_cast<size_t>(u) * kU);
      for (int n = 0; n < NR; ++n) {
        const VI sum = _mm512_add_epi32(_mm512_permutex2var_epi32(i0[n], pa, i1[n]),
                                        _mm512_permutex2var_epi32(i0[n], pb, i1[n]));
        const VF sc = fmul(dw_blocks16<T>(dloc[n] + u * F::kGPU), da);
        acc[0][n] = fmadd(to_float(sum), sc, acc[0][n]);
      }
    }
  } else
#endif
  {
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
      for (int n = 0; n < NR; ++n) {
        VI w[4], aw[4];
        decode_unit<T>(qp[n], cbv[n], w, aw);
        const VF dwl = dw_lanes<T>(reinterpret_cast<const uint8_t*>(dloc[n] + u * F::kGPU), dwidx);
        for (int m = 0; m < MR; ++m) {
          const VI d = unit_dot<T>(w, aw, aq + m * aq_stride);
          acc[m][n] = fmadd(to_float(d), fmul(dwl, fload(dal + m * dal_stride)), acc[m][n]);
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

// Weight rows per tile for MR activation rows when tiles are "wide" (MR*NR float accumulators
// plus 4 decoded vectors must fit 16 vector registers on AVX2, 32 on AVX-512).
constexpr int wide_nr(int mr) {
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
    // Tile t takes rows nb0 + t + i*len (i < NR): every row of a tile advances along its own
    // long sequential stream ("strand") of rows. Rows of one tile that lie next to each other
    // in memory (the obvious tiling) defeat the hardware prefetchers: each row's stream ends
    // after one row and they share 4 KiB pages, which halves the DRAM bandwidth of decode.
    const int len = (nb1 - nb0 + NR - 1) / NR;
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

#if defined(MXLM_TARGET_AVX512)
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

// Scales (f16 at p, groups [g0, nb)) of the 16 blocks starting at group g0's first block, as
// floats; blocks past the row's groups get 0. Reads no f16 at or past index nb.
template <QType T>
MXLM_QINLINE VF scales16(const uint8_t* p, int64_t g0, int64_t nb) {
  using F = Fmt<T>;
  constexpr int kGroups = 16 * 32 / F::kG;  // groups covering 16 blocks
  const int64_t avail = nb - g0;
  const int n = avail <= 0 ? 0 : avail >= kGroups ? kGroups : static_cast<int>(avail);
  const __m256i h = _mm256_maskz_loadu_epi16(static_cast<__mmask16>((1u << n) - 1), p + 2 * g0);
  const VF f = _mm512_cvtph_ps(h);
  if constexpr (F::kG == 32) {
    return f;
  } else if constexpr (F::kG == 64) {
    return _mm512_permutexvar_ps(_mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0), f);
  } else {
    return _mm512_permutexvar_ps(_mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0), f);
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
      s[r] = r < nr ? _mm512_castps_si512(scales16<T>(rows + r * rb + geo.d_off, gh, geo.nb)) : _mm512_setzero_si512();
    }
    transpose16(s);
    for (int j = 0; j < nj; ++j) _mm512_store_si512(&P.dw[16 * h + j][16 * v], s[j]);
    if constexpr (F::kAsym) {
      for (int r = 0; r < 16; ++r) {
        s[r] = r < nr ? _mm512_castps_si512(scales16<T>(rows + r * rb + geo.m_off, gh, geo.nb)) : _mm512_setzero_si512();
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
#endif  // MXLM_TARGET_AVX512

template <QType T>
void qgemm(int M, int n0, int n1, int64_t K, const ActQ8& a, const uint8_t* w, size_t w_row_bytes, float* y,
           size_t ldy) {
  if (M <= 0 || n1 <= n0 || K <= 0) return;
  const Geo geo = make_geo<T>(K);
#if defined(MXLM_TARGET_AVX512)
  if (M >= kPanelMinM) {
    qgemm_panel<T>(M, n0, n1, K, a, w, w_row_bytes, geo, y, ldy);
    return;
  }
#endif
  // M > 4: cut N into blocks of ~512 KiB of weight rows, which stay in L2 while all row tiles
  // pass over them, and use wide tiles. M <= 4 streams the weights once from DRAM: wide tiles
  // (4 strands) while 4 rows are small, else one row at a time, which keeps a single
  // sequential stream and the activations in L1 (measured: 4 strands of 2.3 KiB rows reach the
  // read bandwidth, 4 strands of 6 KiB rows lose a quarter of it, 1 row of 6 KiB does not).
  int nblock = n1 - n0;
  if (M > 4) nblock = static_cast<int>(max_of<size_t>(16, (size_t{512} << 10) / max_of<size_t>(w_row_bytes, 1)));
  const bool wide = M > 4 || 4 * w_row_bytes <= (size_t{10} << 10);
  for (int nb0 = n0; nb0 < n1; nb0 += nblock) {
    const int nb1 = static_cast<int>(min_of<int64_t>(n1, static_cast<int64_t>(nb0) + nblock));
    for (int m0 = 0; m0 < M; m0 += 4) {
      const int mr = min_of(4, M - m0);
      if (wide) {
        switch (mr) {
          case 1: run_block<T, 1, wide_nr(1)>(a, m0, nb0, nb1, w, w_row_bytes, geo, y, ldy); break;
          case 2: run_block<T, 2, wide_nr(2)>(a, m0, nb0, nb1, w, w_row_bytes, geo, y, ldy); break;
          case 3: run_block<T, 3, wide_nr(3)>(a, m0, nb0, nb1, w, w_row_bytes, geo, y, ldy); break;
          default: run_block<T, 4, wide_nr(4)>(a, m0, nb0, nb1, w, w_row_bytes, geo, y, ldy); break;
        }
      } else {
        switch (mr) {
          case 1: run_block<T, 1, 1>(a, m0, nb0, nb1, w, w_row_bytes, geo, y, ldy); break;
          case 2: run_block<T, 2, 1>(a, m0, nb0, nb1, w, w_row_bytes, geo, y, ldy); break;
          case 3: run_block<T, 3, 1>(a, m0, nb0, nb1, w, w_row_bytes, geo, y, ldy); break;
          default: run_block<T, 4, 1>(a, m0, nb0, nb1, w, w_row_bytes, geo, y, ldy); break;
        }
      }
    }
  }
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

}  // namespace

void register_quant_kernels() {
  register_all(std::make_index_sequence<sizeof(kQTypes) / sizeof(kQTypes[0])>());
  register_quantize_act(kIsa, &quantize_act);
}

}  // namespace mxlm::kernels::MXLM_TARGET_NS

#endif  // MXLM_TARGET_AVX2 || MXLM_TARGET_AVX512
