// The .mxlm container: one mmap-able file holding a model.
//
// Layout (version 1, all integers little-endian):
//   [0, 64)          preamble: magic "MXLMFILE", u32 version, u32 preamble bytes (64),
//                    u64 header offset, u64 header bytes, u64 data offset, u64 file bytes,
//                    u32 header CRC-32C, zero padding
//   [data offset, …) tensor data, each tensor 64-byte aligned; then the tokenizer blob
//   [header offset, header offset + header bytes)  the JSON header (written last, so the
//                    writer streams tensors and their checksums without holding them)
//
// The JSON header holds "config" (ModelConfig), "tokenizer" {kind, offset, bytes, crc32c},
// "provenance" (source, format, converter, time), "quantization" (per-tensor record, written by
// the quantizer) and "tensors": a list of
//   {name, shape: [N, K] or [N], offset, bytes, crc32c,
//    segments: [{row_begin, row_end, qtype, format, offset, bytes}]}
// where a tensor's rows are split into segments of one format each (a plain tensor has one
// segment). Mixed precision inside a tensor adds more segments plus two optional parts, each
// {offset, bytes} inside the tensor's data (so its checksum covers them):
//   "row_map":  int32[N]; stored row i is output row row_map[i] (a permutation), so rows of one
//               format can be grouped into one segment;
//   "outliers": {offset, bytes, nnz}: sparse f16 values added after the dense product, in CSR by
//               output row: int32 row_ptr[N+1], int32 col[nnz], f16 value[nnz].
// Segment offsets are absolute and aligned for in-place reads (f32 segments to 4 bytes, other
// formats to 2; row_map and outliers to 4). The segments, row_map and outliers of a tensor never
// overlap, nor do two tensors or a tensor and the tokenizer blob; readers reject files where
// they do, and unknown versions.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "kernels/qtype.h"
#include "model/config.h"
#include "model/file_util.h"

namespace mxlm {

inline constexpr char kMxlmMagic[8] = {'M', 'X', 'L', 'M', 'F', 'I', 'L', 'E'};
inline constexpr uint32_t kMxlmVersion = 1;
inline constexpr uint64_t kMxlmAlign = 64;

struct TensorSegment {
  int64_t row_begin = 0, row_end = 0;  // rows [row_begin, row_end) of the tensor
  QType qtype = QType::kF32;
  uint64_t offset = 0;                 // absolute file offset
  uint64_t bytes = 0;
  const uint8_t* data = nullptr;       // into the mapping
};

// Sparse outliers in CSR by output row (pointers into the mapping; unaligned-safe access only).
struct TensorOutliers {
  uint64_t nnz = 0;
  const uint8_t* row_ptr = nullptr;  // int32[N + 1]
  const uint8_t* cols = nullptr;     // int32[nnz]
  const uint8_t* values = nullptr;   // f16[nnz]
};

struct TensorEntry {
  std::string name;
  std::vector<int64_t> shape;  // [N, K] for matrices, [N] for vectors
  uint64_t offset = 0, bytes = 0;
  uint32_t crc32c = 0;
  std::vector<TensorSegment> segments;
  const uint8_t* data = nullptr;
  const uint8_t* row_map = nullptr;  // int32[N] or null (identity)
  TensorOutliers outliers;

  int64_t rows() const { return shape.size() == 2 ? shape[0] : 1; }
  int64_t cols() const { return shape.back(); }
  // The format when the tensor has a single segment (throws Error otherwise).
  QType qtype() const;
};

// A validated, memory-mapped .mxlm file. Construction checks the preamble, version, sizes,
// header checksum, JSON, config and every tensor's offsets, sizes and shapes (overflow-safe);
// errors throw Error naming the file, the tensor and the values found.
class MxlmFile {
 public:
  explicit MxlmFile(const std::string& path);
  // Validates bytes already mapped or in memory (MappedFile::from_memory), e.g. for fuzzing.
  explicit MxlmFile(MappedFile map);
  MxlmFile(const MxlmFile&) = delete;
  MxlmFile& operator=(const MxlmFile&) = delete;

  const std::string& path() const { return map_.path(); }
  uint32_t version() const { return version_; }
  uint64_t file_bytes() const { return map_.size(); }
  const ModelConfig& config() const { return config_; }
  const nlohmann::json& header() const { return header_; }
  const std::vector<TensorEntry>& tensors() const { return tensors_; }
  const TensorEntry* find(std::string_view name) const;
  // 8 × (bytes of all tensors) / (elements of all tensors): what `mxlm inspect` and the
  // quantizer's --bpw budget count (scales, codebooks, outliers and norm vectors included).
  double bits_per_weight() const;
  std::string_view tokenizer_kind() const { return tokenizer_kind_; }
  // The model's chat template (Jinja2), "" when the file has none.
  const std::string& chat_template() const { return chat_template_; }
  std::string_view tokenizer_blob() const { return tokenizer_blob_; }

  // Recomputes every checksum (tensors and tokenizer). Throws Error (kFormat) naming the first
  // tensor whose data does not match.
  void verify() const;

  // A file read into memory (MappedFile::read_into_memory), before seal(): the writable address
  // of the file's bytes at p (a pointer into this file's data). Null for mapped files and after
  // seal(), which makes the bytes read-only. verify() fails once tensors were changed.
  uint8_t* writable(const uint8_t* p);
  void seal() { map_.seal(); }

 private:
  void parse();

  MappedFile map_;
  uint32_t version_ = 0;
  ModelConfig config_;
  nlohmann::json header_;
  std::vector<TensorEntry> tensors_;
  std::string tokenizer_kind_;
  std::string chat_template_;
  std::string_view tokenizer_blob_;
  uint32_t tokenizer_crc_ = 0;
};

// What the writer needs for one tensor: its shape and format and a function that fills its
// bytes (rows × row bytes of the format) when the writer asks, one tensor at a time.
struct TensorToWrite {
  struct Segment {
    int64_t rows = 0;
    QType qtype = QType::kF32;
  };
  std::string name;
  std::vector<int64_t> shape;
  QType qtype = QType::kF32;  // the format when `segments` is empty
  // Mixed precision: consecutive row ranges with their own format (rows add up to N). `fill`
  // then writes every segment's rows, one segment after another.
  std::vector<Segment> segments;
  std::vector<int32_t> row_map;  // empty, or N entries (a permutation)
  // Sparse outliers in CSR by output row: empty, or row_ptr of N + 1 entries.
  std::vector<int32_t> outlier_row_ptr, outlier_cols;
  std::vector<uint16_t> outlier_values;  // f16
  std::function<void(uint8_t* dst, size_t bytes)> fill;
  // Outliers the encoder picks: when set, called after `fill` for the three arrays above.
  std::function<void(std::vector<int32_t>& row_ptr, std::vector<int32_t>& cols, std::vector<uint16_t>& values)> fill_outliers;
};

struct MxlmWriteInput {
  ModelConfig config;
  std::string tokenizer_kind = "sentencepiece";
  std::string tokenizer_blob;
  std::string chat_template;  // header "tokenizer": {"chat_template": ...} when not empty
  nlohmann::json provenance = nlohmann::json::object();
  nlohmann::json quantization = nlohmann::json::object();
  std::vector<TensorToWrite> tensors;
};

// Writes the file atomically (a temporary beside `path`, renamed at the end). `progress`, when
// set, is called after each tensor with (done, total).
void write_mxlm(const std::string& path, const MxlmWriteInput& input,
                const std::function<void(size_t, size_t)>& progress = {});

}  // namespace mxlm
