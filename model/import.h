// Importers: HF directories (config.json + safetensors), GGUF files and llama2.c checkpoints,
// each read into one ImportedModel of canonical tensors (names in config.h, [N][K] row-major,
// RoPE in the HF rotate-half layout) whose data stays in the memory-mapped source files.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "kernels/qtype.h"
#include "model/config.h"
#include "model/file_util.h"

namespace mxlm {

enum class SourceFormat { kHf, kGguf, kLlama2c, kMxlm };
const char* source_format_name(SourceFormat f);

struct SourceTensor {
  std::string name;            // canonical name
  std::vector<int64_t> shape;  // [N, K] or [N]
  QType src_type = QType::kF32;
  const uint8_t* data = nullptr;  // rows of K elements of src_type, contiguous
  // Q and K projections stored for the interleaved RoPE (GGUF, llama2.c) have the rows of each
  // head permuted to the rotate-half order on import; head_dim > 0 marks them.
  int rope_unpermute_head_dim = 0;
};

struct ImportedModel {
  ModelConfig config;
  SourceFormat format = SourceFormat::kHf;
  std::string tokenizer_proto;  // serialized sentencepiece ModelProto
  // The model's chat template (Jinja2; runtime/jinja.h), empty when it has none: HF
  // chat_template.jinja or tokenizer_config.json "chat_template", GGUF tokenizer.chat_template.
  std::string chat_template;
  nlohmann::json provenance = nlohmann::json::object();
  std::vector<SourceTensor> tensors;
  std::vector<std::shared_ptr<const void>> files;  // keep the source data mapped
};

struct ImportOptions {
  std::string tokenizer_path;  // llama2.c: a tokenizer .model or llama2.c .bin (required)
};

// Detects the input kind (a directory → HF; GGUF magic; else a llama2.c checkpoint) and imports
// it. Throws Error naming the file/tensor/key and the values found on any problem: missing
// files or shards, unknown architectures, unsupported dtypes, tensors of the wrong shape.
ImportedModel import_model(const std::string& input, const ImportOptions& options = {});

ImportedModel import_hf(const std::string& dir, const ImportOptions& options);
ImportedModel import_gguf(const std::string& path, const ImportOptions& options);
ImportedModel import_llama2c(const std::string& path, const ImportOptions& options);
// The same from bytes already in memory (MappedFile::from_memory) or mapped: the fuzz targets
// and tests parse through these. The ImportedModel keeps `file` alive.
class MappedFile;
namespace gguf {
class File;
}
ImportedModel import_gguf(std::shared_ptr<const gguf::File> file, const ImportOptions& options);
ImportedModel import_llama2c(std::shared_ptr<const MappedFile> file, const ImportOptions& options);

// The parts of the HF importer, each on one untrusted input.
namespace hf {
struct SafeTensor {
  QType type = QType::kF32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // into the file, any alignment
  uint64_t bytes = 0;
  std::string file;  // the shard's path
};
// Parses one safetensors file (u64 header length, JSON header, data) and adds its tensors to
// *out; a name already in *out (from another shard) is an error naming both files.
void read_safetensors(const MappedFile& map, std::map<std::string, SafeTensor>* out);
// config.json text -> a validated ModelConfig (and the architectures[0] name). `path` names the
// file in messages.
ModelConfig parse_config(const std::string& text, const std::string& path, std::string* arch_name = nullptr);
// The chat template of an HF directory: chat_template.jinja (where transformers writes it
// since 4.43), else tokenizer_config.json's "chat_template" (a string, or a list of
// {"name", "template"} of which "default" or the first is taken); "" when neither has one. A
// tokenizer_config.json that is not JSON is an error naming it.
std::string read_chat_template(const std::string& dir);
// model.safetensors.index.json text -> the shard file names in order of first appearance (and
// the tensor -> shard map). Rejects shard paths that are absolute or contain "..".
std::vector<std::string> parse_index(const std::string& text, const std::string& path,
                                     std::map<std::string, std::string>* weight_map = nullptr);
}  // namespace hf
// An existing .mxlm file as a source (for re-quantization); tensors of any format.
ImportedModel import_mxlm(const std::string& path);

// Reads one source tensor's row r (after any RoPE row permutation) as float32; quantized
// sources are dequantized.
void read_source_row(const SourceTensor& t, int64_t r, float* dst);

// Checks that the imported tensor set is complete for the config, with the right shapes.
void check_tensor_set(const ImportedModel& m);

// Converts an imported model to a .mxlm file: 2-D weights in `weight_type` (f32, f16 or bf16),
// norm vectors in f32. Written atomically.
void convert_to_mxlm(const ImportedModel& m, const std::string& out_path, QType weight_type,
                     const std::function<void(size_t, size_t)>& progress = {});

// Writes an imported model with each 2-D tensor in the format `choose` returns for it (norm
// vectors stay f32); quantized formats go through quantize_row, rows in parallel on `threads`
// threads (0: all). `extra_header` keys ("quantization", provenance additions) are merged in.
void write_model(const ImportedModel& m, const std::string& out_path, const std::function<QType(const SourceTensor&)>& choose,
                 const nlohmann::json& quantization, int threads, const std::function<void(size_t, size_t)>& progress = {});
// The same with the 2-D tensors' bytes made by `encode(tensor, format, dst, bytes)` (the
// mixed-precision quantizer's encoders); norm vectors are still converted to f32 here.
using TensorEncoder = std::function<void(const SourceTensor&, QType, uint8_t* dst, size_t bytes)>;
void write_model(const ImportedModel& m, const std::string& out_path, const std::function<QType(const SourceTensor&)>& choose,
                 const nlohmann::json& quantization, const TensorEncoder& encode,
                 const std::function<void(size_t, size_t)>& progress = {});

// The general form: each 2-D tensor in one format, or split into row segments of their own
// formats (segment_rows[i] rows of segment_qtypes[i], in stored order) with a row map (stored
// row i is output row row_map[i]; empty: the identity). `encode(tensor, layout, dst, bytes)`
// writes the stored rows, segment after segment.
struct TensorLayout {
  QType qtype = QType::kF32;                // one format (segment_qtypes empty)
  std::vector<QType> segment_qtypes;
  std::vector<int64_t> segment_rows;
  std::vector<int32_t> row_map;
  // Sparse outliers known only once the tensor is encoded: when set, called after the encoder
  // to fill the tensor's CSR (model/mxlm_file.h: row_ptr of N + 1 entries, columns, f16 values).
  std::function<void(std::vector<int32_t>& row_ptr, std::vector<int32_t>& cols, std::vector<uint16_t>& values)> outliers;
};
using LayoutEncoder = std::function<void(const SourceTensor&, const TensorLayout&, uint8_t* dst, size_t bytes)>;
void write_model(const ImportedModel& m, const std::string& out_path, const std::function<TensorLayout(const SourceTensor&)>& layout,
                 const nlohmann::json& quantization, const LayoutEncoder& encode,
                 const std::function<void(size_t, size_t)>& progress = {});

}  // namespace mxlm
