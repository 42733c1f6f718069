// Layout probing of kernels/simd/qgemm_x86.cc: where each decoded byte comes from. Not a
// standalone header: that file includes it once, inside namespace
// mxlm::kernels::<isa>::{anonymous}, after the decoders; its top comment states the rules.
//
// No include guard, on purpose.

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
  // AVX2: the same with one hadd: lane L = lane fold_idx[L] of hadd(unit 0, unit 1).
  alignas(64) int32_t fold_idx[kLanes];
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
#if !defined(MXLM_TARGET_AVX512)
  for (int lane = 0; lane < kLanes; ++lane) {
    // hadd(a, b) lane 4 * (q / 2) + 2 * unit + q % 2 sums qword q's two lanes of a (unit 0) or b.
    const int unit = lane / kU, b = lane % kU;
    int q = 0;
    while (L.blk[q] != b) ++q;
    L.fold_idx[lane] = 4 * (q / 2) + 2 * unit + q % 2;
  }
#endif
  L.ok = true;
  return true;
}
