// Weight and activation formats ("QTypes").
//
// Each format has a stable numeric id (it is written into .mxlm files: never reuse or renumber
// an id; comment a retired one out) and a stable name. A format stores a row of K elements as
// ceil(K / block_elems) blocks of block_bytes each; plain float formats have 1-element blocks.
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
  // Quantized formats (ids from 16 upwards) come with the quantization kernels.
};

struct QTypeInfo {
  QType type;
  std::string_view name;   // stable: appears in files and on the command line
  int block_elems;         // elements per block
  int block_bytes;         // bytes per block
  double bits_per_weight;  // including scales and codebooks
};

inline constexpr QTypeInfo kQTypes[] = {
    {QType::kF32, "f32", 1, 4, 32.0},
    {QType::kF16, "f16", 1, 2, 16.0},
    {QType::kBF16, "bf16", 1, 2, 16.0},
};

// Null for ids that are not (or no longer) formats.
const QTypeInfo* qtype_info(uint32_t id);
inline const QTypeInfo& qtype_info(QType t) { return *qtype_info(static_cast<uint32_t>(t)); }
std::optional<QType> qtype_from_name(std::string_view name);

// Bytes of one row of k elements; nullopt when k is not a whole number of blocks or the size
// overflows.
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
