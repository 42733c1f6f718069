#include "model/mxlm_file.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <set>
#include <vector>

#include "base/error.h"
#include "model/checksum.h"

namespace mxlm {

namespace {

struct Preamble {
  char magic[8];
  uint32_t version;
  uint32_t preamble_bytes;
  uint64_t header_offset;
  uint64_t header_bytes;
  uint64_t data_offset;
  uint64_t file_bytes;
  uint32_t header_crc;
  uint8_t pad[12];
};
static_assert(sizeof(Preamble) == 64, "preamble must be 64 bytes");

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw Error(ErrorCode::kFormat, "'" + path + "': " + what);
}

uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

// Bytes of a segment of `rows` rows of `k` elements; nullopt on overflow or a partial block.
std::optional<uint64_t> segment_bytes(QType q, int64_t rows, int64_t k) {
  auto row = qtype_row_bytes(q, static_cast<uint64_t>(k));
  if (!row) return std::nullopt;
  uint64_t total;
  if (__builtin_mul_overflow(*row, static_cast<uint64_t>(rows), &total)) return std::nullopt;
  return total;
}

// A name from the file, shortened for messages.
std::string shown_name(const std::string& s) { return s.size() > 64 ? s.substr(0, 64) + "..." : s; }

std::string shown(const nlohmann::json& v) {
  std::string d = v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  return d.size() > 64 ? d.substr(0, 64) + "..." : d;
}

const nlohmann::json& field(const std::string& path, const nlohmann::json& j, const char* key, const std::string& where) {
  if (!j.is_object()) fail(path, where + ": expected an object with field '" + key + "', found " + shown(j));
  auto it = j.find(key);
  if (it == j.end()) fail(path, where + ": missing field '" + key + "'");
  return *it;
}

template <typename T>
T get_field(const std::string& path, const nlohmann::json& j, const char* key, const std::string& where) {
  const nlohmann::json& v = field(path, j, key, where);
  try {
    return v.get<T>();
  } catch (const nlohmann::json::exception&) {
    fail(path, where + ": field '" + key + "' has the wrong type (" + shown(v) + ")");
  }
}

// Strict integers (config.h's json_int/json_uint), with the file named in the message.
int64_t as_int(const std::string& path, const nlohmann::json& v, const std::string& what, int64_t lo, int64_t hi) {
  try {
    return json_int(v, what, lo, hi);
  } catch (const Error& e) {
    fail(path, e.what());
  }
}

uint64_t as_uint(const std::string& path, const nlohmann::json& v, const std::string& what, uint64_t hi = UINT64_MAX) {
  try {
    return json_uint(v, what, hi);
  } catch (const Error& e) {
    fail(path, e.what());
  }
}

// The alignment a segment's offset needs: kernels read f32 rows as floats and every other
// format in 16-bit units (f16/bf16 elements, f16 scales; row and block sizes are even).
uint64_t segment_alignment(QType q) { return q == QType::kF32 ? 4 : 2; }

// Throws when two of the byte ranges overlap (empty ranges overlap nothing), naming both.
template <typename R>
void check_disjoint(const std::string& path, const std::string& prefix, std::vector<R>* ranges) {
  std::sort(ranges->begin(), ranges->end(), [](const R& a, const R& b) { return a.begin < b.begin; });
  const R* prev = nullptr;
  for (const R& r : *ranges) {
    if (r.begin == r.end) continue;
    if (prev && r.begin < prev->end) {
      fail(path, prefix + prev->what + " (bytes " + std::to_string(prev->begin) + ".." + std::to_string(prev->end) + ") and " +
                     r.what + " (bytes " + std::to_string(r.begin) + ".." + std::to_string(r.end) + ") overlap");
    }
    if (!prev || r.end > prev->end) prev = &r;
  }
}

}  // namespace

QType TensorEntry::qtype() const {
  if (segments.size() != 1) {
    throw Error(ErrorCode::kUnsupported, "tensor '" + name + "' has " + std::to_string(segments.size()) + " segments");
  }
  return segments[0].qtype;
}

MxlmFile::MxlmFile(const std::string& path) : map_(path) { parse(); }

MxlmFile::MxlmFile(MappedFile map) : map_(std::move(map)) { parse(); }

uint8_t* MxlmFile::writable(const uint8_t* p) {
  uint8_t* base = map_.mutable_data();
  MXLM_ASSERT(p >= map_.data() && p <= map_.data() + map_.size());
  return base ? base + (p - map_.data()) : nullptr;
}

void MxlmFile::parse() {
  const std::string& path = map_.path();
  const uint64_t size = map_.size();
  if (size < sizeof(Preamble)) {
    fail(path, "truncated: " + std::to_string(size) + " bytes, an .mxlm file has at least " +
                   std::to_string(sizeof(Preamble)));
  }
  Preamble pre;
  std::memcpy(&pre, map_.data(), sizeof(pre));
  if (std::memcmp(pre.magic, kMxlmMagic, 8) != 0) fail(path, "not an .mxlm file (wrong magic)");
  version_ = pre.version;
  if (pre.version != kMxlmVersion) {
    fail(path, "unsupported .mxlm version " + std::to_string(pre.version) + " (this build reads version " +
                   std::to_string(kMxlmVersion) + ")");
  }
  if (pre.file_bytes != size) {
    fail(path, std::string(size < pre.file_bytes ? "truncated" : "has trailing bytes") + ": the header says " +
                   std::to_string(pre.file_bytes) + " bytes, the file has " + std::to_string(size));
  }
  uint64_t header_end;
  if (pre.preamble_bytes != sizeof(Preamble) || pre.data_offset < sizeof(Preamble) || pre.data_offset > size ||
      pre.data_offset % kMxlmAlign != 0 || __builtin_add_overflow(pre.header_offset, pre.header_bytes, &header_end) ||
      header_end > size || pre.header_offset < pre.data_offset) {
    fail(path, "corrupt preamble: header at " + std::to_string(pre.header_offset) + " + " +
                   std::to_string(pre.header_bytes) + " bytes, data at " + std::to_string(pre.data_offset) +
                   " (must be 64-byte aligned), file has " + std::to_string(size) + " bytes");
  }
  const auto* hdr = reinterpret_cast<const char*>(map_.data() + pre.header_offset);
  if (crc32c(hdr, pre.header_bytes) != pre.header_crc) fail(path, "header checksum mismatch (the file is corrupt)");
  try {
    header_ = nlohmann::json::parse(hdr, hdr + pre.header_bytes);
  } catch (const nlohmann::json::exception& e) {
    fail(path, std::string("header is not valid JSON: ") + e.what());
  }
  if (!header_.is_object() || !header_.contains("config") || !header_.contains("tensors") ||
      !header_["tensors"].is_array()) {
    fail(path, "header lacks 'config' or 'tensors'");
  }
  try {
    config_ = ModelConfig::from_json(header_["config"]);
    config_.validate();
  } catch (const Error& e) {
    throw Error(e.code(), "'" + path + "': " + e.what());
  }

  // Tensor data must lie in [data_offset, header_offset). Every byte range found is recorded so
  // that no two (tensors, the parts of one tensor, the tokenizer blob) can overlap.
  const uint64_t data_end = pre.header_offset;
  struct Range {
    uint64_t begin, end;
    std::string what;
  };
  std::vector<Range> tensor_ranges;
  std::set<std::string> names;
  for (const auto& jt : header_["tensors"]) {
    TensorEntry t;
    t.name = get_field<std::string>(path, jt, "name", "tensor entry");
    const std::string where = "tensor '" + shown_name(t.name) + "'";
    if (!names.insert(t.name).second) fail(path, where + " appears twice");
    const nlohmann::json& jshape = field(path, jt, "shape", where);
    if (!jshape.is_array() || jshape.empty() || jshape.size() > 2) {
      fail(path, where + " has shape " + jshape.dump() + " (1 or 2 dimensions allowed)");
    }
    for (const auto& jd : jshape) {
      t.shape.push_back(as_int(path, jd, where + " dimension", 1, int64_t{1} << 40));
    }
    t.offset = as_uint(path, field(path, jt, "offset", where), where + " offset");
    t.bytes = as_uint(path, field(path, jt, "bytes", where), where + " bytes");
    t.crc32c = static_cast<uint32_t>(as_uint(path, field(path, jt, "crc32c", where), where + " crc32c", UINT32_MAX));
    uint64_t end;
    if (t.offset % kMxlmAlign != 0 || t.offset < pre.data_offset || __builtin_add_overflow(t.offset, t.bytes, &end) ||
        end > data_end) {
      fail(path, where + ": data at offset " + std::to_string(t.offset) + " + " + std::to_string(t.bytes) +
                     " bytes lies outside the data section [" + std::to_string(pre.data_offset) + ", " +
                     std::to_string(data_end) + ") or is not 64-byte aligned");
    }
    const uint64_t t_end = end;
    tensor_ranges.push_back({t.offset, t_end, where});
    t.data = map_.data() + t.offset;
    // Rows x columns as elements, checked: two dimensions of up to 2^40 each overflow 64 bits.
    const uint64_t n_rows = static_cast<uint64_t>(t.rows()), n_cols = static_cast<uint64_t>(t.cols());
    uint64_t n_elems;
    if (__builtin_mul_overflow(n_rows, n_cols, &n_elems)) {
      fail(path, where + ": shape " + std::to_string(n_rows) + " x " + std::to_string(n_cols) + " overflows 64 bits");
    }
    auto jsegs_it = jt.find("segments");
    if (jsegs_it == jt.end() || !jsegs_it->is_array() || jsegs_it->empty()) fail(path, where + " has no segments");
    std::vector<Range> parts;  // inside this tensor
    int64_t next_row = 0;
    for (const auto& js : *jsegs_it) {
      TensorSegment s;
      s.row_begin = as_int(path, field(path, js, "row_begin", where), where + " segment row_begin", 0, t.rows());
      s.row_end = as_int(path, field(path, js, "row_end", where), where + " segment row_end", 0, t.rows());
      const auto qid = static_cast<uint32_t>(as_uint(path, field(path, js, "qtype", where), where + " segment qtype", UINT32_MAX));
      const QTypeInfo* info = qtype_info(qid);
      if (!info) fail(path, where + " has unknown format id " + std::to_string(qid) + " (a newer mxlm wrote it?)");
      if (js.contains("format") && js["format"] != info->name) {
        fail(path, where + ": format id " + std::to_string(qid) + " is '" + std::string(info->name) + "' but the file names it " +
                       shown(js["format"]));
      }
      s.qtype = info->type;
      s.offset = as_uint(path, field(path, js, "offset", where), where + " segment offset");
      s.bytes = as_uint(path, field(path, js, "bytes", where), where + " segment bytes");
      if (s.row_begin != next_row || s.row_end <= s.row_begin) {
        fail(path, where + ": segment rows [" + std::to_string(s.row_begin) + ", " + std::to_string(s.row_end) +
                       ") do not continue from row " + std::to_string(next_row) + " within " + std::to_string(t.rows()) + " rows");
      }
      next_row = s.row_end;
      auto expect = segment_bytes(s.qtype, s.row_end - s.row_begin, t.cols());
      if (!expect) {
        fail(path, where + ": " + std::to_string(t.cols()) + " columns do not fit format " + std::string(info->name) +
                       " (partial block or size overflow)");
      }
      uint64_t seg_end;
      if (*expect != s.bytes || s.offset < t.offset || __builtin_add_overflow(s.offset, s.bytes, &seg_end) ||
          seg_end > t_end) {
        fail(path, where + ": segment of " + std::to_string(s.bytes) + " bytes at " + std::to_string(s.offset) +
                       " does not match its shape (" + std::to_string(expect.value_or(0)) + " bytes expected) or lies outside the tensor");
      }
      // Kernels read a segment's elements in place: f32 rows as floats, the other formats as
      // 16-bit units (f16/bf16 elements, f16 scales).
      const uint64_t align = segment_alignment(s.qtype);
      if (s.offset % align != 0) {
        fail(path, where + ": segment at offset " + std::to_string(s.offset) + " is not " + std::to_string(align) +
                       "-byte aligned, as format " + std::string(info->name) + " needs");
      }
      parts.push_back({s.offset, seg_end, "segment of rows [" + std::to_string(s.row_begin) + ", " + std::to_string(s.row_end) + ")"});
      s.data = map_.data() + s.offset;
      t.segments.push_back(s);
    }
    if (next_row != t.rows()) {
      fail(path, where + ": segments cover " + std::to_string(next_row) + " of " + std::to_string(t.rows()) + " rows");
    }
    // Optional parts inside the tensor's data: {offset, bytes} with offset absolute, 4-byte
    // aligned (int32 arrays).
    auto part = [&](const char* key, uint64_t expect_bytes) -> const uint8_t* {
      const auto& jp = jt[key];
      const auto off = as_uint(path, field(path, jp, "offset", where + " " + key), where + " " + key + " offset");
      const auto len = as_uint(path, field(path, jp, "bytes", where + " " + key), where + " " + key + " bytes");
      uint64_t end;
      if (len != expect_bytes || off < t.offset || off % 4 != 0 || __builtin_add_overflow(off, len, &end) || end > t_end) {
        fail(path, where + ": " + key + " of " + std::to_string(len) + " bytes at " + std::to_string(off) +
                       " does not fit the tensor (" + std::to_string(expect_bytes) + " bytes expected, 4-byte aligned)");
      }
      parts.push_back({off, end, key});
      return map_.data() + off;
    };
    if (jt.contains("row_map")) {
      t.row_map = part("row_map", 4 * n_rows);  // n_rows <= 2^40: no overflow
      std::vector<bool> seen(n_rows, false);
      for (uint64_t i = 0; i < n_rows; ++i) {
        int32_t r;
        std::memcpy(&r, t.row_map + 4 * i, 4);
        if (r < 0 || static_cast<uint64_t>(r) >= n_rows || seen[r]) fail(path, where + ": row_map is not a permutation of its rows");
        seen[r] = true;
      }
    }
    if (jt.contains("outliers")) {
      const auto nnz = as_uint(path, field(path, jt["outliers"], "nnz", where + " outliers"), where + " outliers nnz");
      if (nnz > n_elems) fail(path, where + ": " + std::to_string(nnz) + " outliers, more than its " + std::to_string(n_elems) + " weights");
      // 4 (N + 1) + 6 nnz bytes, checked (nnz <= 2^64 / 2^0 could wrap).
      uint64_t ol_bytes;
      if (__builtin_mul_overflow(nnz, uint64_t{6}, &ol_bytes) || __builtin_add_overflow(ol_bytes, 4 * (n_rows + 1), &ol_bytes)) {
        fail(path, where + ": " + std::to_string(nnz) + " outliers overflow the size computation");
      }
      const uint8_t* p = part("outliers", ol_bytes);
      t.outliers.nnz = nnz;
      t.outliers.row_ptr = p;
      t.outliers.cols = p + 4 * (n_rows + 1);
      t.outliers.values = t.outliers.cols + 4 * nnz;
      int32_t prev = 0;
      for (uint64_t i = 0; i <= n_rows; ++i) {
        int32_t v;
        std::memcpy(&v, t.outliers.row_ptr + 4 * i, 4);
        if ((i == 0 && v != 0) || v < prev || static_cast<uint64_t>(v) > nnz || (i == n_rows && static_cast<uint64_t>(v) != nnz)) {
          fail(path, where + ": outlier row pointers are not monotonic from 0 to " + std::to_string(nnz));
        }
        prev = v;
      }
      for (uint64_t i = 0; i < nnz; ++i) {
        int32_t c;
        std::memcpy(&c, t.outliers.cols + 4 * i, 4);
        if (c < 0 || c >= t.cols()) fail(path, where + ": outlier column " + std::to_string(c) + " outside [0, " + std::to_string(t.cols()) + ")");
      }
    }
    check_disjoint(path, where + ": ", &parts);
    tensors_.push_back(std::move(t));
  }

  const auto& jtok = header_.value("tokenizer", nlohmann::json());
  if (!jtok.is_object()) fail(path, "header lacks 'tokenizer'");
  tokenizer_kind_ = get_field<std::string>(path, jtok, "kind", "tokenizer");
  if (jtok.contains("chat_template")) chat_template_ = get_field<std::string>(path, jtok, "chat_template", "tokenizer");
  const auto tok_off = as_uint(path, field(path, jtok, "offset", "tokenizer"), "tokenizer offset");
  const auto tok_bytes = as_uint(path, field(path, jtok, "bytes", "tokenizer"), "tokenizer bytes");
  tokenizer_crc_ = static_cast<uint32_t>(as_uint(path, field(path, jtok, "crc32c", "tokenizer"), "tokenizer crc32c", UINT32_MAX));
  uint64_t tok_end;
  if (tok_off < pre.data_offset || __builtin_add_overflow(tok_off, tok_bytes, &tok_end) || tok_end > data_end) {
    fail(path, "tokenizer blob at " + std::to_string(tok_off) + " + " + std::to_string(tok_bytes) + " bytes lies outside the data section");
  }
  tensor_ranges.push_back({tok_off, tok_end, "the tokenizer blob"});
  check_disjoint(path, "", &tensor_ranges);
  tokenizer_blob_ = std::string_view(reinterpret_cast<const char*>(map_.data() + tok_off), tok_bytes);
}

double MxlmFile::bits_per_weight() const {
  double bits = 0, elems = 0;
  for (const TensorEntry& t : tensors_) {
    bits += 8.0 * double(t.bytes);
    elems += double(t.rows()) * double(t.cols());
  }
  return elems > 0 ? bits / elems : 0.0;
}

const TensorEntry* MxlmFile::find(std::string_view name) const {
  for (const auto& t : tensors_) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

void MxlmFile::verify() const {
  for (const auto& t : tensors_) {
    const uint32_t c = crc32c(t.data, t.bytes);
    if (c != t.crc32c) {
      char buf[160];
      std::snprintf(buf, sizeof(buf), "checksum mismatch in tensor '%s': stored %08x, computed %08x (the file is corrupt)",
                    t.name.c_str(), t.crc32c, c);
      fail(path(), buf);
    }
  }
  if (crc32c(tokenizer_blob_.data(), tokenizer_blob_.size()) != tokenizer_crc_) {
    fail(path(), "checksum mismatch in the tokenizer blob (the file is corrupt)");
  }
}

void write_mxlm(const std::string& path, const MxlmWriteInput& input, const std::function<void(size_t, size_t)>& progress) {
  input.config.validate();
  AtomicFile out(path);
  Preamble pre{};
  std::memcpy(pre.magic, kMxlmMagic, 8);
  pre.version = kMxlmVersion;
  pre.preamble_bytes = sizeof(Preamble);
  pre.data_offset = kMxlmAlign;
  out.write(&pre, sizeof(pre));  // placeholder, rewritten at the end

  nlohmann::json tensors = nlohmann::json::array();
  std::vector<uint8_t> buf;
  for (size_t i = 0; i < input.tensors.size(); ++i) {
    const TensorToWrite& t = input.tensors[i];
    if (t.shape.empty() || t.shape.size() > 2) throw Error(ErrorCode::kInvalidArgument, "tensor '" + t.name + "': 1 or 2 dimensions expected");
    const int64_t rows = t.shape.size() == 2 ? t.shape[0] : 1, cols = t.shape.back();
    std::vector<TensorToWrite::Segment> segs = t.segments;
    if (segs.empty()) segs.push_back({rows, t.qtype});
    out.write_zeros(align_up(out.tell(), kMxlmAlign) - out.tell());
    const uint64_t offset = out.tell();
    nlohmann::json jsegs = nlohmann::json::array();
    uint64_t dense = 0;
    int64_t row = 0;
    for (const auto& sg : segs) {
      auto bytes = segment_bytes(sg.qtype, sg.rows, cols);
      if (!bytes || sg.rows <= 0) throw Error(ErrorCode::kInvalidArgument, "tensor '" + t.name + "': bad segment");
      if ((offset + dense) % segment_alignment(sg.qtype) != 0) {
        throw Error(ErrorCode::kInvalidArgument, "tensor '" + t.name + "': a " + std::string(qtype_info(sg.qtype).name) +
                                                     " segment would start at an offset that is not " +
                                                     std::to_string(segment_alignment(sg.qtype)) + "-byte aligned (reorder the segments)");
      }
      jsegs.push_back({{"row_begin", row},
                       {"row_end", row + sg.rows},
                       {"qtype", static_cast<uint32_t>(sg.qtype)},
                       {"format", qtype_info(sg.qtype).name},
                       {"offset", offset + dense},
                       {"bytes", *bytes}});
      row += sg.rows;
      dense += *bytes;
    }
    if (row != rows) throw Error(ErrorCode::kInvalidArgument, "tensor '" + t.name + "': segments cover " + std::to_string(row) + " rows of " + std::to_string(rows));
    buf.assign(dense, 0);
    t.fill(buf.data(), buf.size());
    // Row map and outliers follow the dense data (4-byte aligned).
    nlohmann::json extra = nlohmann::json::object();
    auto append = [&](const void* p, size_t n) {
      const auto* b = static_cast<const uint8_t*>(p);
      buf.insert(buf.end(), b, b + n);
    };
    if (!t.row_map.empty()) {
      if (static_cast<int64_t>(t.row_map.size()) != rows) throw Error(ErrorCode::kInvalidArgument, "tensor '" + t.name + "': row map size");
      buf.resize(align_up(buf.size(), 4), 0);
      extra["row_map"] = {{"offset", offset + buf.size()}, {"bytes", 4 * t.row_map.size()}};
      append(t.row_map.data(), 4 * t.row_map.size());
    }
    std::vector<int32_t> picked_row_ptr, picked_cols;
    std::vector<uint16_t> picked_values;
    if (t.fill_outliers) t.fill_outliers(picked_row_ptr, picked_cols, picked_values);
    const auto& row_ptr = t.fill_outliers ? picked_row_ptr : t.outlier_row_ptr;
    const auto& ocols = t.fill_outliers ? picked_cols : t.outlier_cols;
    const auto& values = t.fill_outliers ? picked_values : t.outlier_values;
    if (!row_ptr.empty()) {
      const size_t nnz = ocols.size();
      if (static_cast<int64_t>(row_ptr.size()) != rows + 1 || values.size() != nnz || row_ptr.back() != int64_t(nnz)) {
        throw Error(ErrorCode::kInvalidArgument, "tensor '" + t.name + "': outlier arrays do not match");
      }
      buf.resize(align_up(buf.size(), 4), 0);
      const uint64_t start = buf.size();
      append(row_ptr.data(), 4 * row_ptr.size());
      append(ocols.data(), 4 * nnz);
      append(values.data(), 2 * nnz);
      extra["outliers"] = {{"offset", offset + start}, {"bytes", buf.size() - start}, {"nnz", nnz}};
    }
    out.write(buf.data(), buf.size());
    nlohmann::json jt = {{"name", t.name}, {"shape", t.shape}, {"offset", offset}, {"bytes", buf.size()},
                         {"crc32c", crc32c(buf.data(), buf.size())}, {"segments", jsegs}};
    jt.update(extra);
    tensors.push_back(jt);
    if (progress) progress(i + 1, input.tensors.size());
  }
  out.write_zeros(align_up(out.tell(), kMxlmAlign) - out.tell());
  const uint64_t tok_offset = out.tell();
  out.write(input.tokenizer_blob.data(), input.tokenizer_blob.size());

  nlohmann::json header = {
      {"format", "mxlm"},
      {"version", kMxlmVersion},
      {"config", input.config.to_json()},
      {"tokenizer",
       {{"kind", input.tokenizer_kind},
        {"offset", tok_offset},
        {"bytes", input.tokenizer_blob.size()},
        {"crc32c", crc32c(input.tokenizer_blob.data(), input.tokenizer_blob.size())}}},
      {"provenance", input.provenance},
      {"quantization", input.quantization},
      {"tensors", tensors},
  };
  if (!input.chat_template.empty()) header["tokenizer"]["chat_template"] = input.chat_template;
  const std::string text = header.dump(1);
  out.write_zeros(align_up(out.tell(), kMxlmAlign) - out.tell());
  pre.header_offset = out.tell();
  pre.header_bytes = text.size();
  pre.header_crc = crc32c(text.data(), text.size());
  out.write(text.data(), text.size());
  pre.file_bytes = out.tell();
  out.write_at(0, &pre, sizeof(pre));
  out.commit();
}

}  // namespace mxlm
