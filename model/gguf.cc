// GGUF v2/v3 reader. Layout (little endian):
//
//   "GGUF" | u32 version | u64 n_tensors | u64 n_kv
//   n_kv    x { string key | u32 value_type | value }
//   n_tensors x { string name | u32 n_dims | u64 ne[n_dims] | u32 ggml_type | u64 offset }
//   padding to general.alignment (default 32) | tensor data (offsets relative to its start)
//
// where string = u64 length + bytes, array = u32 elem_type + u64 count + elements. Every read is
// bounds-checked against the mapped size, and every count is checked against the bytes that
// remain before anything is allocated for it, so a corrupt file costs at most O(file size).
// Arrays are not copied: numeric arrays are typed views of the mapped bytes (NumberArray) and
// string arrays views of their bytes, so metadata costs at most ~2x its size in the file.
#include "model/gguf.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>

#include "base/error.h"

namespace mxlm::gguf {
namespace {

constexpr uint32_t kDefaultAlignment = 32;
constexpr uint32_t kMaxDims = 4;  // GGML_MAX_DIMS

// ggml's type table: elements per block and bytes per block. Removed ids (4, 5, 31-33, 36-38)
// have block_bytes 0. Sizes follow the block structs of ggml-common.h (QK_K = 256).
struct GgmlTypeInfo {
  const char* name;
  uint32_t block_elems;
  uint32_t block_bytes;
};

constexpr GgmlTypeInfo kGgmlTypes[] = {
    {"F32", 1, 4},         // 0
    {"F16", 1, 2},         // 1
    {"Q4_0", 32, 18},      // 2: f16 d + 16 B nibbles
    {"Q4_1", 32, 20},      // 3: f16 d, m + 16 B
    {"Q4_2", 0, 0},        // 4: removed
    {"Q4_3", 0, 0},        // 5: removed
    {"Q5_0", 32, 22},      // 6: f16 d + 4 B high bits + 16 B
    {"Q5_1", 32, 24},      // 7
    {"Q8_0", 32, 34},      // 8: f16 d + 32 B
    {"Q8_1", 32, 36},      // 9: f16 d, s + 32 B
    {"Q2_K", 256, 84},     // 10
    {"Q3_K", 256, 110},    // 11
    {"Q4_K", 256, 144},    // 12
    {"Q5_K", 256, 176},    // 13
    {"Q6_K", 256, 210},    // 14
    {"Q8_K", 256, 292},    // 15: f32 d + 256 B + 16 x i16 sums
    {"IQ2_XXS", 256, 66},  // 16
    {"IQ2_XS", 256, 74},   // 17
    {"IQ3_XXS", 256, 98},  // 18
    {"IQ1_S", 256, 50},    // 19
    {"IQ4_NL", 32, 18},    // 20
    {"IQ3_S", 256, 110},   // 21
    {"IQ2_S", 256, 82},    // 22
    {"IQ4_XS", 256, 136},  // 23
    {"I8", 1, 1},          // 24
    {"I16", 1, 2},         // 25
    {"I32", 1, 4},         // 26
    {"I64", 1, 8},         // 27
    {"F64", 1, 8},         // 28
    {"IQ1_M", 256, 56},    // 29
    {"BF16", 1, 2},        // 30
    {"Q4_0_4_4", 0, 0},    // 31: removed (repacked layouts are not stored in files any more)
    {"Q4_0_4_8", 0, 0},    // 32: removed
    {"Q4_0_8_8", 0, 0},    // 33: removed
    {"TQ1_0", 256, 54},    // 34
    {"TQ2_0", 256, 66},    // 35
    {"IQ4_NL_4_4", 0, 0},  // 36: removed
    {"IQ4_NL_4_8", 0, 0},  // 37: removed
    {"IQ4_NL_8_8", 0, 0},  // 38: removed
    {"MXFP4", 32, 17},     // 39: e8m0 scale + 16 B of fp4 nibbles
};
constexpr uint32_t kNumGgmlTypes = sizeof(kGgmlTypes) / sizeof(kGgmlTypes[0]);

const GgmlTypeInfo* ggml_type_info(uint32_t type) {
  if (type >= kNumGgmlTypes || kGgmlTypes[type].block_bytes == 0) return nullptr;
  return &kGgmlTypes[type];
}

const char* value_type_name(ValueType t) {
  switch (t) {
    case ValueType::kU8: return "u8";
    case ValueType::kI8: return "i8";
    case ValueType::kU16: return "u16";
    case ValueType::kI16: return "i16";
    case ValueType::kU32: return "u32";
    case ValueType::kI32: return "i32";
    case ValueType::kF32: return "f32";
    case ValueType::kBool: return "bool";
    case ValueType::kString: return "string";
    case ValueType::kArray: return "array";
    case ValueType::kU64: return "u64";
    case ValueType::kI64: return "i64";
    case ValueType::kF64: return "f64";
  }
  return "?";
}

// Size in the file of one scalar of type t (strings: the minimum, their length prefix).
uint64_t min_value_bytes(ValueType t) {
  switch (t) {
    case ValueType::kU8: case ValueType::kI8: case ValueType::kBool: return 1;
    case ValueType::kU16: case ValueType::kI16: return 2;
    case ValueType::kU32: case ValueType::kI32: case ValueType::kF32: return 4;
    case ValueType::kU64: case ValueType::kI64: case ValueType::kF64: case ValueType::kString: return 8;
    case ValueType::kArray: return 12;  // u32 elem type + u64 count
  }
  return 1;
}

bool valid_value_type(uint32_t t) { return t <= static_cast<uint32_t>(ValueType::kF64); }

bool is_integer(ValueType t) {
  switch (t) {
    case ValueType::kU8: case ValueType::kI8: case ValueType::kU16: case ValueType::kI16:
    case ValueType::kU32: case ValueType::kI32: case ValueType::kU64: case ValueType::kI64:
      return true;
    default:
      return false;
  }
}

std::string quoted(std::string_view s) {
  // Keys and names come from the file: show at most 64 bytes of them in messages.
  std::string out = "'";
  out.append(s.substr(0, 64));
  if (s.size() > 64) out += "...";
  return out + "'";
}

// Bounds-checked cursor over the mapped file.
class Reader {
 public:
  Reader(const std::string& path, const uint8_t* data, size_t size) : path_(path), data_(data), size_(size) {}

  [[noreturn]] void fail(const std::string& what) const {
    throw Error(ErrorCode::kFormat, "gguf " + quoted(path_) + ": " + what);
  }

  const std::string& path() const { return path_; }
  size_t pos() const { return pos_; }
  size_t remaining() const { return size_ - pos_; }

  void need(uint64_t n, const std::string& what) const {
    if (n > remaining()) {
      fail("truncated: " + what + " needs " + std::to_string(n) + " bytes at offset " + std::to_string(pos_) +
           " but the file has " + std::to_string(size_) + " bytes");
    }
  }

  template <typename T>
  T read(const std::string& what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }

  // A view of the string's bytes in the file (valid while the mapping lives).
  std::string_view read_string_view(const std::string& what) {
    const uint64_t len = read<uint64_t>(what + " length");
    if (len > remaining()) {
      fail(what + " has length " + std::to_string(len) + " at offset " + std::to_string(pos_ - 8) + " but only " +
           std::to_string(remaining()) + " bytes remain in the file");
    }
    std::string_view s(reinterpret_cast<const char*>(data_ + pos_), len);
    pos_ += len;
    return s;
  }
  std::string read_string(const std::string& what) { return std::string(read_string_view(what)); }

  // Skips n bytes (already checked with need()) and returns where they start.
  const uint8_t* take(uint64_t n, const std::string& what) {
    need(n, what);
    const uint8_t* p = data_ + pos_;
    pos_ += n;
    return p;
  }

 private:
  const std::string& path_;
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

// Reads one scalar of type t into v->scalar.
void read_number(Reader& r, ValueType t, const std::string& what, Value* v) {
  switch (t) {
    case ValueType::kU8: v->scalar = int64_t{r.read<uint8_t>(what)}; return;
    case ValueType::kI8: v->scalar = int64_t{r.read<int8_t>(what)}; return;
    case ValueType::kU16: v->scalar = int64_t{r.read<uint16_t>(what)}; return;
    case ValueType::kI16: v->scalar = int64_t{r.read<int16_t>(what)}; return;
    case ValueType::kU32: v->scalar = int64_t{r.read<uint32_t>(what)}; return;
    case ValueType::kI32: v->scalar = int64_t{r.read<int32_t>(what)}; return;
    case ValueType::kI64: v->scalar = r.read<int64_t>(what); return;
    case ValueType::kU64: {
      const auto x = r.read<uint64_t>(what);
      if (x > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        v->scalar = x;
      } else {
        v->scalar = static_cast<int64_t>(x);
      }
      return;
    }
    case ValueType::kF32: v->scalar = double{r.read<float>(what)}; return;
    case ValueType::kF64: v->scalar = r.read<double>(what); return;
    case ValueType::kBool: {
      const auto x = r.read<uint8_t>(what);
      if (x > 1) r.fail(what + " is a bool with value " + std::to_string(x) + " (expected 0 or 1)");
      v->scalar = x != 0;
      return;
    }
    default:
      r.fail(what + ": internal error, not a number type");
  }
}

template <typename T>
double load_as_double(const uint8_t* p) {
  T x;
  std::memcpy(&x, p, sizeof(T));
  return static_cast<double>(x);
}

Value read_value(Reader& r, const std::string& key) {
  Value v;
  const std::string what = "value of key " + quoted(key);
  const uint32_t type = r.read<uint32_t>("type of key " + quoted(key));
  if (!valid_value_type(type)) r.fail("key " + quoted(key) + " has unknown value type " + std::to_string(type) + " (expected 0..12)");
  v.type = static_cast<ValueType>(type);
  if (v.type == ValueType::kString) {
    v.scalar = r.read_string(what);
  } else if (v.type != ValueType::kArray) {
    read_number(r, v.type, what, &v);
  } else {
    const uint32_t elem = r.read<uint32_t>("element type of key " + quoted(key));
    if (!valid_value_type(elem)) {
      r.fail("array key " + quoted(key) + " has unknown element type " + std::to_string(elem) + " (expected 0..12)");
    }
    v.elem_type = static_cast<ValueType>(elem);
    if (v.elem_type == ValueType::kArray) {
      throw Error(ErrorCode::kUnsupported,
                  "gguf " + quoted(r.path()) + ": array key " + quoted(key) + " holds nested arrays, which mxlm does not read");
    }
    const uint64_t count = r.read<uint64_t>("element count of key " + quoted(key));
    const uint64_t min_bytes = min_value_bytes(v.elem_type);
    // The count is bounded by the bytes left before anything is allocated for it.
    if (count > r.remaining() / min_bytes) {
      r.fail("array key " + quoted(key) + " claims " + std::to_string(count) + " elements of " + value_type_name(v.elem_type) +
             " (at least " + std::to_string(min_bytes) + " bytes each) but only " + std::to_string(r.remaining()) +
             " bytes remain in the file");
    }
    if (v.elem_type == ValueType::kString) {
      v.strings.reserve(count);
      for (uint64_t i = 0; i < count; ++i) v.strings.push_back(r.read_string_view("element " + std::to_string(i) + " of " + what));
    } else {
      // Numbers stay in the file: a typed view, no copy.
      const uint8_t* p = r.take(count * min_bytes, what);
      if (v.elem_type == ValueType::kBool) {
        for (uint64_t i = 0; i < count; ++i) {
          if (p[i] > 1) {
            r.fail("element " + std::to_string(i) + " of " + what + " is a bool with value " + std::to_string(p[i]) +
                   " (expected 0 or 1)");
          }
        }
      }
      v.numbers = NumberArray(v.elem_type, p, static_cast<size_t>(count));
    }
  }
  return v;
}

[[noreturn]] void type_error(std::string_view key, const char* want, const Value& v) {
  throw Error(ErrorCode::kFormat, "gguf key " + quoted(key) + ": expected " + want + ", found " +
                                      (v.type == ValueType::kArray ? std::string("array of ") + value_type_name(v.elem_type)
                                                                   : std::string(value_type_name(v.type))));
}

uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

}  // namespace

size_t value_type_size(ValueType t) {
  return t == ValueType::kString || t == ValueType::kArray ? 0 : static_cast<size_t>(min_value_bytes(t));
}

double NumberArray::operator[](size_t i) const {
  MXLM_ASSERT(i < count_);
  const uint8_t* p = data_ + i * value_type_size(type_);
  switch (type_) {
    case ValueType::kU8: case ValueType::kBool: return *p;
    case ValueType::kI8: return load_as_double<int8_t>(p);
    case ValueType::kU16: return load_as_double<uint16_t>(p);
    case ValueType::kI16: return load_as_double<int16_t>(p);
    case ValueType::kU32: return load_as_double<uint32_t>(p);
    case ValueType::kI32: return load_as_double<int32_t>(p);
    case ValueType::kF32: return load_as_double<float>(p);
    case ValueType::kU64: return load_as_double<uint64_t>(p);
    case ValueType::kI64: return load_as_double<int64_t>(p);
    case ValueType::kF64: return load_as_double<double>(p);
    case ValueType::kString: case ValueType::kArray: break;
  }
  MXLM_ASSERT(false && "NumberArray of a non-numeric type");
  return 0.0;
}

const char* ggml_type_name(uint32_t type) {
  const GgmlTypeInfo* info = ggml_type_info(type);
  return info ? info->name : "unknown";
}

int64_t Value::as_int(std::string_view key) const {
  if (!is_integer(type)) type_error(key, "an integer", *this);
  if (const auto* u = std::get_if<uint64_t>(&scalar)) {
    throw Error(ErrorCode::kFormat, "gguf key " + quoted(key) + ": value " + std::to_string(*u) + " does not fit int64");
  }
  return std::get<int64_t>(scalar);
}

double Value::as_float(std::string_view key) const {
  if (type == ValueType::kF32 || type == ValueType::kF64) return std::get<double>(scalar);
  if (is_integer(type)) {
    if (const auto* u = std::get_if<uint64_t>(&scalar)) return static_cast<double>(*u);
    return static_cast<double>(std::get<int64_t>(scalar));
  }
  type_error(key, "a number", *this);
}

bool Value::as_bool(std::string_view key) const {
  if (type != ValueType::kBool) type_error(key, "a bool", *this);
  return std::get<bool>(scalar);
}

const std::string& Value::as_string(std::string_view key) const {
  if (type != ValueType::kString) type_error(key, "a string", *this);
  return std::get<std::string>(scalar);
}

File::File(const std::string& path) : map_(path) { parse(); }

File::File(MappedFile map) : map_(std::move(map)) { parse(); }

void File::parse() {
  Reader r(map_.path(), map_.data(), map_.size());
  if (map_.size() < 4) r.fail("file has " + std::to_string(map_.size()) + " bytes, too short for the GGUF magic");
  if (std::memcmp(map_.data(), "GGUF", 4) != 0) {
    std::string found;
    for (int i = 0; i < 4; ++i) {
      const auto c = static_cast<unsigned char>(map_.data()[i]);
      static const char* kHex = "0123456789abcdef";
      if (c >= 0x20 && c < 0x7f) {
        found.push_back(static_cast<char>(c));
      } else {
        found += std::string("\\x") + kHex[c >> 4] + kHex[c & 15];
      }
    }
    r.fail("not a GGUF file: magic '" + found + "' (expected 'GGUF')");
  }
  r.read<uint32_t>("magic");
  version_ = r.read<uint32_t>("version");
  if (version_ != 2 && version_ != 3) {
    const uint32_t swapped = __builtin_bswap32(version_);
    if (swapped == 2 || swapped == 3) r.fail("big-endian GGUF (version " + std::to_string(swapped) + ") is not supported");
    r.fail("unsupported GGUF version " + std::to_string(version_) + " (expected 2 or 3)");
  }
  const uint64_t n_tensors = r.read<uint64_t>("tensor count");
  const uint64_t n_kv = r.read<uint64_t>("key/value count");
  // Smallest encodings: a key/value is a string length, a type and a 1-byte value; a tensor
  // info is a name length, n_dims, one dim, a type and an offset.
  if (n_kv > r.remaining() / 13) {
    r.fail("key/value count " + std::to_string(n_kv) + " cannot fit in the " + std::to_string(r.remaining()) +
           " bytes after the header");
  }
  if (n_tensors > r.remaining() / 32) {
    r.fail("tensor count " + std::to_string(n_tensors) + " cannot fit in the " + std::to_string(r.remaining()) +
           " bytes after the header");
  }

  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key = r.read_string("key " + std::to_string(i));
    if (key.empty()) r.fail("key " + std::to_string(i) + " is empty");
    if (kv_.count(key)) r.fail("duplicate key " + quoted(key));
    Value v = read_value(r, key);
    kv_.emplace(std::move(key), std::move(v));
  }

  if (const Value* a = find("general.alignment")) {
    if (!is_integer(a->type) || !std::holds_alternative<int64_t>(a->scalar)) {
      r.fail(std::string("general.alignment has type ") + value_type_name(a->type) + ", expected an integer");
    }
    const int64_t al = std::get<int64_t>(a->scalar);
    if (al <= 0 || al > (1 << 30) || (al & (al - 1)) != 0) {
      r.fail("general.alignment " + std::to_string(al) + " is not a power of two in 1..2^30");
    }
    alignment_ = static_cast<uint32_t>(al);
  } else {
    alignment_ = kDefaultAlignment;
  }

  tensors_.reserve(n_tensors);
  for (uint64_t i = 0; i < n_tensors; ++i) {
    TensorInfo t;
    t.name = r.read_string("name of tensor " + std::to_string(i));
    if (t.name.empty()) r.fail("tensor " + std::to_string(i) + " has an empty name");
    const std::string tn = "tensor " + quoted(t.name);
    const uint32_t n_dims = r.read<uint32_t>("n_dims of " + tn);
    if (n_dims == 0 || n_dims > kMaxDims) {
      r.fail(tn + " has " + std::to_string(n_dims) + " dimensions (expected 1.." + std::to_string(kMaxDims) + ")");
    }
    uint64_t n_elems = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t ne = r.read<uint64_t>("dims of " + tn);
      if (ne == 0 || ne > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        r.fail(tn + " has dimension " + std::to_string(d) + " = " + std::to_string(ne) + " (must be positive)");
      }
      if (n_elems > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / ne) {
        r.fail(tn + ": the element count overflows at dimension " + std::to_string(d) + " = " + std::to_string(ne));
      }
      n_elems *= ne;
      t.ne.push_back(ne);
    }
    t.type = r.read<uint32_t>("type of " + tn);
    const GgmlTypeInfo* info = ggml_type_info(t.type);
    if (!info) r.fail(tn + " has unknown or removed ggml type " + std::to_string(t.type));
    if (t.ne[0] % info->block_elems != 0) {
      r.fail(tn + " of type " + info->name + " has a row of " + std::to_string(t.ne[0]) +
             " elements, not a multiple of the block size " + std::to_string(info->block_elems));
    }
    const uint64_t n_blocks = n_elems / info->block_elems;
    if (n_blocks > std::numeric_limits<uint64_t>::max() / info->block_bytes) {
      r.fail(tn + ": the byte size overflows (" + std::to_string(n_blocks) + " blocks of " + std::to_string(info->block_bytes) + " bytes)");
    }
    t.bytes = n_blocks * info->block_bytes;
    t.offset = r.read<uint64_t>("offset of " + tn);  // relative for now
    if (t.offset % alignment_ != 0) {
      r.fail(tn + " has offset " + std::to_string(t.offset) + ", not a multiple of the alignment " + std::to_string(alignment_));
    }
    tensors_.push_back(std::move(t));
  }

  // Tensor data starts at the next multiple of the alignment. A file without tensors (a vocab-only
  // GGUF) may end right after its metadata, without the padding.
  const uint64_t data_start = align_up(r.pos(), alignment_);
  const uint64_t file_size = map_.size();
  if (!tensors_.empty() && data_start > file_size) {
    r.fail("truncated: tensor data should start at offset " + std::to_string(data_start) + " but the file has " +
           std::to_string(file_size) + " bytes");
  }
  for (TensorInfo& t : tensors_) {
    const uint64_t room = file_size - data_start;
    if (t.offset > room || t.bytes > room - t.offset) {
      r.fail("tensor " + quoted(t.name) + " (" + std::to_string(t.bytes) + " bytes at data offset " + std::to_string(t.offset) +
             ") extends past the end of the file: data section starts at " + std::to_string(data_start) + ", file has " +
             std::to_string(file_size) + " bytes");
    }
    t.offset += data_start;
  }

  // Names are unique and the tensors do not overlap.
  std::vector<const TensorInfo*> sorted;
  sorted.reserve(tensors_.size());
  for (const TensorInfo& t : tensors_) sorted.push_back(&t);
  std::sort(sorted.begin(), sorted.end(), [](const TensorInfo* a, const TensorInfo* b) { return a->name < b->name; });
  for (size_t i = 1; i < sorted.size(); ++i) {
    if (sorted[i]->name == sorted[i - 1]->name) r.fail("duplicate tensor name " + quoted(sorted[i]->name));
  }
  std::sort(sorted.begin(), sorted.end(), [](const TensorInfo* a, const TensorInfo* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < sorted.size(); ++i) {
    const TensorInfo& a = *sorted[i - 1];
    const TensorInfo& b = *sorted[i];
    if (a.offset + a.bytes > b.offset) {
      r.fail("tensors " + quoted(a.name) + " (bytes " + std::to_string(a.offset) + ".." + std::to_string(a.offset + a.bytes) +
             ") and " + quoted(b.name) + " (from " + std::to_string(b.offset) + ") overlap");
    }
  }
}

const Value* File::find(std::string_view key) const {
  auto it = kv_.find(std::string(key));
  return it == kv_.end() ? nullptr : &it->second;
}

const Value& File::get(std::string_view key) const {
  const Value* v = find(key);
  if (!v) throw Error(ErrorCode::kFormat, "gguf " + quoted(path()) + ": missing key " + quoted(key));
  return *v;
}

const TensorInfo* File::find_tensor(std::string_view name) const {
  for (const TensorInfo& t : tensors_) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

namespace {

bool is_byte_piece(std::string_view p) {
  auto hex = [](char c) { return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F') || (c >= 'a' && c <= 'f'); };
  return p.size() == 6 && p.substr(0, 3) == "<0x" && hex(p[3]) && hex(p[4]) && p[5] == '>';
}

}  // namespace

void read_spm_vocab(const File& file, std::vector<VocabEntry>* vocab, SpmBuildOptions* options) {
  const std::string where = "gguf " + quoted(file.path());
  auto fail = [&](const std::string& what) { throw Error(ErrorCode::kFormat, where + ": " + what); };

  const std::string& model = file.get("tokenizer.ggml.model").as_string("tokenizer.ggml.model");
  if (model != "llama") {
    throw Error(ErrorCode::kUnsupported, where + ": tokenizer model " + quoted(model) +
                                             " is not supported (only SentencePiece vocabularies, 'llama')");
  }
  const Value& tokens = file.get("tokenizer.ggml.tokens");
  if (tokens.type != ValueType::kArray || tokens.elem_type != ValueType::kString) {
    type_error("tokenizer.ggml.tokens", "an array of strings", tokens);
  }
  const size_t n = tokens.strings.size();
  if (n == 0) fail("tokenizer.ggml.tokens is empty");
  if (n > static_cast<size_t>(std::numeric_limits<int32_t>::max())) fail("vocabulary of " + std::to_string(n) + " tokens is too large");

  const Value* scores = file.find("tokenizer.ggml.scores");
  if (scores) {
    if (scores->type != ValueType::kArray || scores->elem_type == ValueType::kString) {
      type_error("tokenizer.ggml.scores", "an array of numbers", *scores);
    }
    if (scores->numbers.size() != n) {
      fail("tokenizer.ggml.scores has " + std::to_string(scores->numbers.size()) + " entries for " + std::to_string(n) + " tokens");
    }
  }
  const Value* types = file.find("tokenizer.ggml.token_type");
  if (types) {
    if (types->type != ValueType::kArray || !is_integer(types->elem_type)) {
      type_error("tokenizer.ggml.token_type", "an array of integers", *types);
    }
    if (types->numbers.size() != n) {
      fail("tokenizer.ggml.token_type has " + std::to_string(types->numbers.size()) + " entries for " + std::to_string(n) + " tokens");
    }
  }

  // Special ids: absent keys keep the defaults; u32 0xFFFFFFFF (and negatives) mean "none".
  auto special = [&](const char* key, int fallback) -> int {
    const Value* v = file.find(key);
    if (!v) return fallback;
    const int64_t id = v->as_int(key);
    if (id < 0 || id == 0xFFFFFFFFll) return -1;
    if (id >= static_cast<int64_t>(n)) {
      fail(std::string(key) + " = " + std::to_string(id) + " is outside the vocabulary of " + std::to_string(n));
    }
    return static_cast<int>(id);
  };
  SpmBuildOptions opt;
  opt.bpe = true;  // llama.cpp's SPM tokenizer merges by score, as sentencepiece's BPE does
  opt.bos_id = special("tokenizer.ggml.bos_token_id", 1);
  opt.eos_id = special("tokenizer.ggml.eos_token_id", 2);
  opt.pad_id = special("tokenizer.ggml.padding_token_id", -1);
  opt.unk_id = special("tokenizer.ggml.unknown_token_id", -1);
  if (const Value* v = file.find("tokenizer.ggml.add_space_prefix")) opt.add_dummy_prefix = v->as_bool("tokenizer.ggml.add_space_prefix");
  if (const Value* v = file.find("tokenizer.ggml.remove_extra_whitespaces")) {
    opt.remove_extra_whitespaces = v->as_bool("tokenizer.ggml.remove_extra_whitespaces");
  }

  std::vector<VocabEntry> out(n);
  bool any_byte = false;
  for (size_t i = 0; i < n; ++i) {
    VocabEntry& e = out[i];
    e.piece = std::string(tokens.strings[i]);
    if (scores) {
      // A double outside the float range does not convert (undefined behaviour): reject it.
      const double sc = scores->numbers[i];
      if (!(std::fabs(sc) <= static_cast<double>(std::numeric_limits<float>::max()))) {
        fail("token " + std::to_string(i) + " (" + quoted(e.piece) + ") has score " + std::to_string(sc) +
             " (not a finite float32)");
      }
      e.score = static_cast<float>(sc);
    }
    if (types) {
      const double t = types->numbers[i];
      if (!(t >= static_cast<double>(VocabEntry::kNormal) && t <= static_cast<double>(VocabEntry::kByte))) {
        fail("token " + std::to_string(i) + " (" + quoted(e.piece) + ") has token type " + std::to_string(t) +
             " (expected 1..6)");
      }
      e.type = static_cast<VocabEntry::Type>(static_cast<int>(t));
    } else if (static_cast<int>(i) == opt.unk_id) {
      e.type = VocabEntry::kUnknown;
    } else if (static_cast<int>(i) == opt.bos_id || static_cast<int>(i) == opt.eos_id || static_cast<int>(i) == opt.pad_id) {
      e.type = VocabEntry::kControl;
    } else if (is_byte_piece(e.piece)) {
      e.type = VocabEntry::kByte;
    }
    if (e.type == VocabEntry::kByte) any_byte = true;
    if (e.type == VocabEntry::kUnknown && opt.unk_id < 0) opt.unk_id = static_cast<int>(i);
  }
  if (opt.unk_id < 0) {
    if (!types && n > 0) {
      opt.unk_id = 0;  // llama's convention when neither an id nor types say otherwise
      out[0].type = VocabEntry::kUnknown;
    } else {
      fail("the vocabulary has no unknown token (no tokenizer.ggml.unknown_token_id and no token of type 2)");
    }
  }
  opt.byte_fallback = any_byte;
  *vocab = std::move(out);
  *options = opt;
}

}  // namespace mxlm::gguf
