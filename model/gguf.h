// GGUF (v2 and v3) reader: metadata key/values and tensor infos over a memory-mapped file.
// Every count, length and offset is validated against the file size before use; any problem
// throws Error (kFormat) naming the file, the key or tensor, and the values found.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "model/file_util.h"
#include "tokenizer/tokenizer.h"

namespace mxlm::gguf {

enum class ValueType : uint32_t {
  kU8 = 0, kI8 = 1, kU16 = 2, kI16 = 3, kU32 = 4, kI32 = 5, kF32 = 6, kBool = 7,
  kString = 8, kArray = 9, kU64 = 10, kI64 = 11, kF64 = 12,
};

// A numeric GGUF array as a view of its bytes in the file: elements are decoded on access, so
// an array costs no memory of its own whatever its element type (storing each element as a
// double made a u8 array cost 8x its size in the file). Valid while its File lives.
class NumberArray {
 public:
  NumberArray() = default;
  NumberArray(ValueType elem_type, const uint8_t* data, size_t count) : type_(elem_type), data_(data), count_(count) {}
  size_t size() const { return count_; }
  bool empty() const { return count_ == 0; }
  ValueType elem_type() const { return type_; }
  // Element i as a double (u64/i64 beyond 2^53 round); i < size().
  double operator[](size_t i) const;
  // The raw little-endian element bytes: size() * element size.
  const uint8_t* bytes() const { return data_; }

 private:
  ValueType type_ = ValueType::kU8;
  const uint8_t* data_ = nullptr;
  size_t count_ = 0;
};

// Bytes of one element of a numeric type (0 for strings and arrays).
size_t value_type_size(ValueType t);

struct Value {
  ValueType type = ValueType::kU8;
  ValueType elem_type = ValueType::kU8;  // for arrays
  // Scalars: integers as int64 (u64 above INT64_MAX is kept as uint64), floats as double.
  std::variant<int64_t, uint64_t, double, bool, std::string> scalar;
  // Arrays: numbers as a typed view of the file, strings as views of the file (16 bytes per
  // element of at least 8 file bytes); nested arrays unsupported.
  NumberArray numbers;
  std::vector<std::string_view> strings;

  // Typed accessors; throw Error (kFormat) naming `key` when the type does not fit.
  int64_t as_int(std::string_view key) const;
  double as_float(std::string_view key) const;
  bool as_bool(std::string_view key) const;
  const std::string& as_string(std::string_view key) const;
};

// ggml tensor types mxlm knows the size of (for validation); only F32/F16/BF16 can be imported.
enum GgmlType : uint32_t { kGgmlF32 = 0, kGgmlF16 = 1, kGgmlBF16 = 30 };
const char* ggml_type_name(uint32_t type);  // "Q4_0", … or "unknown"

struct TensorInfo {
  std::string name;
  std::vector<uint64_t> ne;  // ggml order: ne[0] is the fastest-varying (row length)
  uint32_t type = 0;         // ggml type id
  uint64_t offset = 0;       // absolute offset in the file
  uint64_t bytes = 0;
};

class File {
 public:
  explicit File(const std::string& path);  // maps and validates the whole structure
  explicit File(MappedFile map);           // validates bytes already mapped (or in memory)
  File(const File&) = delete;
  File& operator=(const File&) = delete;

  uint32_t version() const { return version_; }
  const std::string& path() const { return map_.path(); }
  const std::map<std::string, Value>& kv() const { return kv_; }
  const Value* find(std::string_view key) const;  // null when absent
  const Value& get(std::string_view key) const;   // throws Error (kFormat) naming a missing key
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* find_tensor(std::string_view name) const;
  const uint8_t* tensor_data(const TensorInfo& t) const { return map_.data() + t.offset; }
  uint32_t alignment() const { return alignment_; }

 private:
  void parse();

  MappedFile map_;
  uint32_t version_ = 0;
  uint32_t alignment_ = 32;
  std::map<std::string, Value> kv_;
  std::vector<TensorInfo> tensors_;
};

// Reads the SentencePiece-style vocabulary of a GGUF file (tokenizer.ggml.model == "llama":
// tokens, scores, token_type, bos/eos/unk ids, add_space_prefix) into entries and build
// options. Throws Error (kUnsupported) for other tokenizer models (e.g. "gpt2"), naming it.
void read_spm_vocab(const File& file, std::vector<VocabEntry>* vocab, SpmBuildOptions* options);

}  // namespace mxlm::gguf
