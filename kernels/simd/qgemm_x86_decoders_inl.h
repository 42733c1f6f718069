// The unit decoders of kernels/simd/qgemm_x86.cc (Dec<bits, G>, per ISA). Not a standalone
// header: that file includes it once, inside namespace mxlm::kernels::<isa>::{anonymous}, after
// its vector types and helpers; its top comment states the rules (internal linkage, no dynamic
// initialization, no inline functions from headers).
//
// No include guard, on purpose.

// ---- decoders -------------------------------------------------------------------------------
// Dec<bits, G>::run(q, w) reads the kBytes = kUnitElems*bits/8 quant bytes of one unit (groups
// back to back, bit planes as in kernels/qtype.h) and writes the raw unsigned values (codebook
// indices) into w[0..3]. It reads no byte outside [q, q + kBytes).

template <int Bits, int G>
struct Dec;

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

// 3 bits, G = 32: the load-time layout both ISAs' decoders read (Dec<3, 32>::repack). The file's
// unit, kU groups of 12 bytes = [8 bytes of the 2-bit plane | 32-bit plane of bit 2], becomes
// one vector of kVB bytes and half a vector more; vector t, qword i, byte j is element 8t + j of
// group i, and with h = the vector half a byte position falls in:
//   bytes [0, kVB):           byte b = 8i + j: vector 0's value in bits 0-2, vector 1's in bits
//                             3-5, the low two bits of vector 2's in bits 6-7;
//   bytes [kVB, 3 * kVB / 2): read into both halves; byte c serves byte c (h = 0) and
//                             c + kVB / 2 (h = 1) of a vector: bit h = bit 2 of vector 2's value,
//                             bits 2 + 3h .. 4 + 3h = vector 3's value.
// A decoder then extracts vectors 0, 1 and 3 with a shift (per qword: each half its own) and a
// mask; vector 2 joins two fields. Trailing partial units stay in the file's layout in the packed
// row and are repacked when they are copied out (copy_partial).
MXLM_QINLINE void repack3(const uint8_t* raw, uint8_t* out) {
  // Element 8t + j of a group: bits 2t..2t+1 of plane byte j, and bit j of bit-2 byte t.
  constexpr int kHalf = kVB / 2;
  uint8_t hb[kHalf] = {};
  for (int g = 0; g < kU; ++g) {
    const uint8_t* t = raw + 12 * g;
    const uint8_t* p = t + 8;
    for (int j = 0; j < 8; ++j) {
      const int b = 8 * g + j, h = b / kHalf, c = b % kHalf;
      const unsigned lo = t[j];
      const unsigned e0 = (lo & 3) | ((p[0] >> j) & 1) << 2;
      const unsigned e1 = ((lo >> 2) & 3) | ((p[1] >> j) & 1) << 2;
      const unsigned e3 = (lo >> 6) | ((p[3] >> j) & 1) << 2;
      out[b] = static_cast<uint8_t>(e0 | e1 << 3 | ((lo >> 4) & 3) << 6);
      hb[c] = static_cast<uint8_t>(hb[c] | ((p[2] >> j) & 1) << h | e3 << (2 + 3 * h));
    }
  }
  std::memcpy(out + kVB, hb, kHalf);
}

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

// 3 bits, G = 32, on the load-time repacked unit (repack3). One GF(2) affine transform (the
// matrix is per qword, so each half takes its own field) or one mask extracts vectors 0, 1 and 3;
// vector 2 is a bitwise select of two. 6 operations per unit instead of 14: compute-bound GEMV
// +40 % (q3_g32), +47 % (nu3_g32, with run_cb).
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
  static void repack(const uint8_t* raw, uint8_t* out) { repack3(raw, out); }
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

// 4 bits, every G, on the load-time repacked unit (repack below): vector t, qword i holds
// elements 32i + 8t .. 32i + 8t + 7 (block i); bytes [0, 32) carry vector 0 in the low nibbles
// and vector 1 in the high ones, bytes [32, 64) vectors 2 and 3. Two loads, two shifts and four
// masks per unit. The file's layout needed two qword unpacks more at G = 32 (byte j of a group
// holds elements j and j + 16), and at G = 64, 128 (elements j and j + G/2: two blocks per byte)
// also two cross-lane permutes and variable shifts. Compute-bound GEMV (qgemv_cached, three
// alternating runs of both builds on a Zen 3), GB/s before -> after: q4_g64 14.5-18.1 -> 21.5-23.5,
// q4_g128 15.9-17.2 -> 20.2-22.0, q4a_g64 15.6-18.7 -> 22.7-25.2, nu4_g32 12.5-14.4 -> 14.9-16.8,
// q4_g32 19.9-22.6 -> 19.6-25.6, q4k_g32 17.4-20.9 -> 18.0-20.8. The model loader repacks in
// place when the weights are in its own memory (runtime/model.cc bind_segment).
struct Dec4 {
  static constexpr int kBytes = 64;
  static MXLM_QINLINE void run(const uint8_t* q, VI w[4]) {
    const VI f = bcast8(0x0F), x0 = loadu(q), x1 = loadu(q + 32);
    w[0] = vand(x0, f);
    w[1] = vand(_mm256_srli_epi16(x0, 4), f);
    w[2] = vand(x1, f);
    w[3] = vand(_mm256_srli_epi16(x1, 4), f);
  }
};
template <int G>
struct Dec4R : Dec4 {
  // The file's unit (128 / G groups of G/2 bytes; byte j: elements j, j + G/2) -> the layout
  // above, a qword at a time: elements 8c .. 8c + 7 of block i are 8 nibbles in one qword of
  // the file (chunk(i, c)), so each output qword is two masked loads, shifts and an or.
  static void repack(const uint8_t* raw, uint8_t* out) {
    constexpr uint64_t kLow = 0x0F0F0F0F0F0F0F0Full;
    auto chunk = [&](int i, int c) {
      const int e = 32 * i + 8 * c, g = e / G, t = e % G;
      uint64_t v;
      std::memcpy(&v, raw + g * (G / 2) + t % (G / 2), 8);
      return (v >> (4 * (t / (G / 2)))) & kLow;
    };
    for (int half = 0; half < 2; ++half) {
      for (int i = 0; i < 4; ++i) {
        const uint64_t v = chunk(i, 2 * half) | chunk(i, 2 * half + 1) << 4;
        std::memcpy(out + 32 * half + 8 * i, &v, 8);
      }
    }
  }
};
template <>
struct Dec<4, 32> : Dec4R<32> {};
template <>
struct Dec<4, 64> : Dec4R<64> {};
template <>
struct Dec<4, 128> : Dec4R<128> {};

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

// 5 and 6 bits, G = 32, on load-time repacked units: the low four bits of every element as Dec4
// reads them (bytes [0, 64)), then the high bits:
//   6 bits, bytes [64, 96):  byte 8i + j = byte j of group i's 2-bit plane: bits 2t, 2t + 1 are
//                            the top bits of vector t's value there;
//   5 bits, bytes [64, 80):  read into both lanes; byte c serves byte c (lane h = 0) and c + 16
//                            (h = 1) of a vector: bit t + 4h = bit 4 of vector t's value.
// The file's layout (groups of [16 nibble bytes | high-bit plane]) took four two-lane loads, two
// qword unpacks and a blend per unit, and at 5 bits a byte shuffle, two masks and a compare per
// vector to spread the bit plane.
// The nibble part of a 5- or 6-bit unit (each group's first 16 bytes, `stride` bytes apart) is a
// 4-bit unit in the file's layout: Dec4R's repack writes it as bytes [0, 64).
MXLM_QINLINE void repack_nibbles(const uint8_t* raw, int stride, uint8_t* out) {
  uint8_t nib[Dec4R<32>::kBytes];
  for (int g = 0; g < kU; ++g) std::memcpy(nib + 16 * g, raw + stride * g, 16);
  Dec4R<32>::repack(nib, out);
}

template <>
struct Dec<6, 32> {
  static constexpr int kBytes = 96;
  static MXLM_QINLINE void run(const uint8_t* q, VI w[4]) {
    VI lo[4];
    Dec4::run(q, lo);
    const VI t = loadu(q + 64), c = bcast8(0x30);
    w[0] = or_and(lo[0], _mm256_slli_epi16(t, 4), c);
    w[1] = or_and(lo[1], _mm256_slli_epi16(t, 2), c);
    w[2] = or_and(lo[2], t, c);
    w[3] = or_and(lo[3], _mm256_srli_epi16(t, 2), c);
  }
  // The file's unit: 4 groups of 24 bytes = [16 nibble bytes | 2-bit plane, byte j bits 2s:
  // element j + 8s].
  static void repack(const uint8_t* raw, uint8_t* out) {
    repack_nibbles(raw, 24, out);
    for (int g = 0; g < kU; ++g) std::memcpy(out + 64 + 8 * g, raw + 24 * g + 16, 8);
  }
};

template <>
struct Dec<5, 32> {
  static constexpr int kBytes = 80;
  static MXLM_QINLINE void run(const uint8_t* q, VI w[4]) {
    VI lo[4];
    Dec4::run(q, lo);
    // Lane 1's bits moved down: bit t of every byte is vector t's bit 4 in both lanes.
    const VI hb = _mm256_srlv_epi64(_mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + 64))),
                                    _mm256_set_epi64x(4, 4, 0, 0));
    const VI c = bcast8(0x10);
    w[0] = or_and(lo[0], _mm256_slli_epi16(hb, 4), c);
    w[1] = or_and(lo[1], _mm256_slli_epi16(hb, 3), c);
    w[2] = or_and(lo[2], _mm256_slli_epi16(hb, 2), c);
    w[3] = or_and(lo[3], _mm256_slli_epi16(hb, 1), c);
  }
  // The file's unit: 4 groups of 20 bytes = [16 nibble bytes | 32-bit plane of bit 4 (bit e:
  // element e)].
  static void repack(const uint8_t* raw, uint8_t* out) {
    repack_nibbles(raw, 20, out);
    uint8_t hb[16] = {};
    for (int g = 0; g < kU; ++g) {
      const uint8_t* p = raw + 20 * g + 16;
      for (int j = 0; j < 8; ++j) {
        const int b = 8 * g + j, h = b / 16, c = b % 16;
        for (int t = 0; t < 4; ++t) hb[c] = static_cast<uint8_t>(hb[c] | ((p[t] >> j) & 1) << (t + 4 * h));
      }
    }
    std::memcpy(out + 64, hb, 16);
  }
};

// 3 bits, G = 32, on the load-time repacked unit (repack3): a load, a broadcast load and 10
// operations per unit. The file's layout took 4 two-lane loads, a blend and a byte shuffle, two
// compares and three masks per vector (~30 operations).
template <>
struct Dec<3, 32> {
  static constexpr int kBytes = 48;
  static MXLM_QINLINE void run(const uint8_t* q, VI w[4]) {
    const VI x = loadu(q);
    const VI hb = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + 32)));
    const VI m = bcast8(7);
    w[0] = vand(x, m);
    w[1] = vand(srli16<3>(x), m);
    // Bits 0-1 from x >> 6, bit 2 from hb's bit h (lane h) moved there.
    w[2] = _mm256_or_si256(vand(srli16<6>(x), bcast8(3)), vand(_mm256_sllv_epi64(hb, _mm256_set_epi64x(1, 1, 2, 2)), bcast8(4)));
    w[3] = vand(_mm256_srlv_epi64(hb, _mm256_set_epi64x(5, 5, 2, 2)), m);
  }
  static void repack(const uint8_t* raw, uint8_t* out) { repack3(raw, out); }
};

#endif  // decoders

// Decoders of a load-time repacked unit layout define repack(raw, out) of one whole unit
// (kernels/quant.h QPackFn).
template <class D>
constexpr bool is_repacked() {
  return requires(const uint8_t* raw, uint8_t* out) { D::repack(raw, out); };
}
