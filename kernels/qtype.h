// Weight and activation formats ("QTypes").
//
// Each format has a stable numeric id (it is written into .mxlm files: never reuse or renumber
// an id; comment a retired one out) and a stable name (it appears in files and on the command
// line). The on-disk layout below is ISA-independent; an ISA may repack at load time.
//
// Float formats store a row of K elements as K values.
//
// Quantized formats cut a row into groups of G elements (the last group zero-padded when K is
// not a multiple of G) and store the row "planar", so that SIMD kernels load many scales with
// one instruction and quants stay contiguous:
//
//   [codebook: int8[2^b]     codebook formats only (one table per row)]
//   [d:        f16[nb]       one scale per group                      ]
//   [m:        f16[nb]       one offset per group, asymmetric formats ]
//   [quants:   nb groups of G*b/8 bytes                                ]      nb = ceil(K / G)
//
// A group's b-bit values q[0..G) are packed in bit planes whose element order makes unpacking a
// pair of shifts and masks over the whole group:
//   8 bits:  byte e = q[e]
//   4 bits:  G/2 bytes; byte j: low nibble q[j], high nibble q[j + G/2]
//   2 bits:  G/4 bytes; byte j, bits 2s..2s+1 = q[j + s*G/4], s = 0..3
//   1 bit:   G/8 bytes; bit e (byte e/8, bit e%8) in natural order
//   6 bits = 4-bit plane (low bits) then 2-bit plane (high bits)
//   5 bits = 4-bit plane (low bits) then 1-bit plane (bit 4)
//   3 bits = 2-bit plane (low bits) then 1-bit plane (bit 2)
// Dequantization:
//   symmetric (qN_gG):       w = d * (q - 2^(b-1))
//   asymmetric (qNa_gG):     w = d * q + m
//   codebook (nuN_gG):       w = d * codebook[q]
//
// Two-level formats (qNk_g32, qNak_g32; "k" as in llama.cpp's K-quants, whose sub-block scales
// under one scale per super-block they follow) store a group's scale and offset as 8-bit codes
// under one f32 scale per row, which costs 8 bits per group instead of 16:
//
//   [D:      f32        row scale (>= 0)                                ]
//   [M:      f32        row offset scale (>= 0), asymmetric only        ]
//   [s:      i8[nb]     group scale codes:  d = D * s (asymmetric: u8)  ]
//   [o:      i8[nb]     group offset codes: m = M * o, asymmetric only  ]
//   [quants: nb groups of G*b/8 bytes, bit planes as above            ]
//
// and dequantize as their one-level kind with d = D * s and m = M * o, each one float multiply
// (rounded once). D is f32, not f16: a row of small weights at 6 bits has D ~ 1e-5, where f16
// is subnormal. Rows have no alignment beyond 1 byte (nb may be odd): D and M are read with
// unaligned loads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace mxlm {

enum class QType : uint8_t {
  kF32 = 0,   // IEEE float32
  kF16 = 1,   // IEEE float16
  kBF16 = 2,  // bfloat16: the top 16 bits of a float32
  // Uniform symmetric: w = d * (q - 2^(b-1)), f16 d per group.
  kQ8G32 = 16,   // 8.50 bpw
  kQ8G64 = 17,   // 8.25 bpw
  kQ8G128 = 18,  // 8.125 bpw
  kQ6G32 = 19,   // 6.50 bpw
  kQ5G32 = 20,   // 5.50 bpw
  kQ4G32 = 21,   // 4.50 bpw
  kQ4G64 = 22,   // 4.25 bpw
  kQ4G128 = 23,  // 4.125 bpw
  kQ3G32 = 24,   // 3.50 bpw
  kQ2G32 = 25,   // 2.50 bpw
  // Uniform asymmetric: w = d * q + m, f16 d and m per group.
  kQ4AG32 = 26,  // 5.00 bpw
  kQ3AG32 = 27,  // 4.00 bpw
  kQ2AG32 = 28,  // 3.00 bpw
  kQ4AG64 = 31,  // 4.50 bpw
  kQ2AG64 = 32,  // 2.50 bpw
  // Non-uniform: w = d * codebook[q], an int8 codebook of 2^b entries per row, f16 d per group.
  kNU4G32 = 29,  // 4.50 bpw + 128 bits per row
  kNU3G32 = 30,  // 3.50 bpw + 64 bits per row
  // Two-level symmetric: d = D * s, an f32 D per row, an i8 s per group of 32.
  kQ2KG32 = 40,  // 2.25 bpw + 32 bits per row
  kQ3KG32 = 41,  // 3.25 bpw + 32 bits per row
  kQ4KG32 = 42,  // 4.25 bpw + 32 bits per row
  kQ5KG32 = 43,  // 5.25 bpw + 32 bits per row
  kQ6KG32 = 44,  // 6.25 bpw + 32 bits per row
  // Two-level asymmetric: d = D * s, m = M * o, f32 D and M per row, u8 s and i8 o per group.
  kQ2AKG32 = 45,  // 2.50 bpw + 64 bits per row
  kQ3AKG32 = 46,  // 3.50 bpw + 64 bits per row
  kQ4AKG32 = 47,  // 4.50 bpw + 64 bits per row
};

enum class QKind : uint8_t { kFloat, kSymmetric, kAsymmetric, kCodebook };

struct QTypeInfo {
  QType type;
  std::string_view name;  // stable: appears in files and on the command line
  QKind kind;
  int bits;               // bits per quant (float formats: bits per element)
  int block_elems;        // G: elements per group (1 for float formats)
  int block_bytes;        // bytes per group: scale (+ offset) + quants
  int row_prefix_bytes;   // bytes before the groups of a row (codebook; two-level: D, M)
  double bits_per_weight; // including scales, offsets and (at K = 4096) codebooks, D and M
  bool two_level = false; // scales and offsets as 8-bit codes under an f32 per row
};

// The quantized group sizes and their bytes.
inline constexpr int quant_block_bytes(int bits, int group, bool asym) { return 2 + (asym ? 2 : 0) + group * bits / 8; }
// Two-level: a u8 scale code (and an i8 offset code) per group.
inline constexpr int quant2_block_bytes(int bits, int group, bool asym) { return 1 + (asym ? 1 : 0) + group * bits / 8; }

inline constexpr QTypeInfo kQTypes[] = {
    {QType::kF32, "f32", QKind::kFloat, 32, 1, 4, 0, 32.0},
    {QType::kF16, "f16", QKind::kFloat, 16, 1, 2, 0, 16.0},
    {QType::kBF16, "bf16", QKind::kFloat, 16, 1, 2, 0, 16.0},
    {QType::kQ8G32, "q8_g32", QKind::kSymmetric, 8, 32, quant_block_bytes(8, 32, false), 0, 8.5},
    {QType::kQ8G64, "q8_g64", QKind::kSymmetric, 8, 64, quant_block_bytes(8, 64, false), 0, 8.25},
    {QType::kQ8G128, "q8_g128", QKind::kSymmetric, 8, 128, quant_block_bytes(8, 128, false), 0, 8.125},
    {QType::kQ6G32, "q6_g32", QKind::kSymmetric, 6, 32, quant_block_bytes(6, 32, false), 0, 6.5},
    {QType::kQ5G32, "q5_g32", QKind::kSymmetric, 5, 32, quant_block_bytes(5, 32, false), 0, 5.5},
    {QType::kQ4G32, "q4_g32", QKind::kSymmetric, 4, 32, quant_block_bytes(4, 32, false), 0, 4.5},
    {QType::kQ4G64, "q4_g64", QKind::kSymmetric, 4, 64, quant_block_bytes(4, 64, false), 0, 4.25},
    {QType::kQ4G128, "q4_g128", QKind::kSymmetric, 4, 128, quant_block_bytes(4, 128, false), 0, 4.125},
    {QType::kQ3G32, "q3_g32", QKind::kSymmetric, 3, 32, quant_block_bytes(3, 32, false), 0, 3.5},
    {QType::kQ2G32, "q2_g32", QKind::kSymmetric, 2, 32, quant_block_bytes(2, 32, false), 0, 2.5},
    {QType::kQ4AG32, "q4a_g32", QKind::kAsymmetric, 4, 32, quant_block_bytes(4, 32, true), 0, 5.0},
    {QType::kQ3AG32, "q3a_g32", QKind::kAsymmetric, 3, 32, quant_block_bytes(3, 32, true), 0, 4.0},
    {QType::kQ2AG32, "q2a_g32", QKind::kAsymmetric, 2, 32, quant_block_bytes(2, 32, true), 0, 3.0},
    {QType::kQ4AG64, "q4a_g64", QKind::kAsymmetric, 4, 64, quant_block_bytes(4, 64, true), 0, 4.5},
    {QType::kQ2AG64, "q2a_g64", QKind::kAsymmetric, 2, 64, quant_block_bytes(2, 64, true), 0, 2.5},
    {QType::kNU4G32, "nu4_g32", QKind::kCodebook, 4, 32, quant_block_bytes(4, 32, false), 16, 4.53},
    {QType::kNU3G32, "nu3_g32", QKind::kCodebook, 3, 32, quant_block_bytes(3, 32, false), 8, 3.52},
    {QType::kQ2KG32, "q2k_g32", QKind::kSymmetric, 2, 32, quant2_block_bytes(2, 32, false), 4, 2.258, true},
    {QType::kQ3KG32, "q3k_g32", QKind::kSymmetric, 3, 32, quant2_block_bytes(3, 32, false), 4, 3.258, true},
    {QType::kQ4KG32, "q4k_g32", QKind::kSymmetric, 4, 32, quant2_block_bytes(4, 32, false), 4, 4.258, true},
    {QType::kQ5KG32, "q5k_g32", QKind::kSymmetric, 5, 32, quant2_block_bytes(5, 32, false), 4, 5.258, true},
    {QType::kQ6KG32, "q6k_g32", QKind::kSymmetric, 6, 32, quant2_block_bytes(6, 32, false), 4, 6.258, true},
    {QType::kQ2AKG32, "q2ak_g32", QKind::kAsymmetric, 2, 32, quant2_block_bytes(2, 32, true), 8, 2.516, true},
    {QType::kQ3AKG32, "q3ak_g32", QKind::kAsymmetric, 3, 32, quant2_block_bytes(3, 32, true), 8, 3.516, true},
    {QType::kQ4AKG32, "q4ak_g32", QKind::kAsymmetric, 4, 32, quant2_block_bytes(4, 32, true), 8, 4.516, true},
};

// Null for ids that are not (or no longer) formats.
const QTypeInfo* qtype_info(uint32_t id);
inline const QTypeInfo& qtype_info(QType t) { return *qtype_info(static_cast<uint32_t>(t)); }
std::optional<QType> qtype_from_name(std::string_view name);
inline bool is_float_qtype(QType t) { return t == QType::kF32 || t == QType::kF16 || t == QType::kBF16; }
// Codebook entries per row (0 for other formats).
inline int codebook_size(const QTypeInfo& info) { return info.kind == QKind::kCodebook ? 1 << info.bits : 0; }

// Bytes of one row of k elements; nullopt when the size overflows (or, for float formats,
// never: any k works).
std::optional<uint64_t> qtype_row_bytes(QType t, uint64_t k);

// Scalar conversions (exact, round-to-nearest-even on the way down).
float bf16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f);
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

// Converts n elements of src (in format t, one of the float formats) to float32.
void convert_row_to_f32(QType t, const void* src, float* dst, size_t n);
// Converts n float32 elements to format t (one of the float formats).
void convert_row_from_f32(QType t, const float* src, void* dst, size_t n);

}  // namespace mxlm
