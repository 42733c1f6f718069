#include "model/mxlm_file.h"

#include <chrono>
#include <cstring>
#include <set>
#include <vector>

#include "kernels/common.h"
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

template <typename T>
T get_field(const std::string& path, const nlohmann::json& j, const char* key, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end()) fail(path, where + ": missing field '" + key + "'");
  try {
    return it->get<T>();
  } catch (const nlohmann::json::exception&) {
    fail(path, where + ": field '" + key + "' has the wrong type (" + it->dump() + ")");
  }
}

}  // namespace

QType TensorEntry::qtype() const {
  if (segments.size() != 1) {
    throw Error(ErrorCode::kUnsupported, "tensor '" + name + "' has " + std::to_string(segments.size()) + " segments");
  }
  return segments[0].qtype;
}

MxlmFile::MxlmFile(const std::string& path) : map_(path) {
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
      __builtin_add_overflow(pre.header_offset, pre.header_bytes, &header_end) || header_end > size ||
      pre.header_offset < pre.data_offset) {
    fail(path, "corrupt preamble: header at " + std::to_string(pre.header_offset) + " + " +
                   std::to_string(pre.header_bytes) + " bytes, data at " + std::to_string(pre.data_offset) +
                   ", file has " + std::to_string(size) + " bytes");
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

  // Tensor data must lie in [data_offset, header_offset).
  const uint64_t data_end = pre.header_offset;
  std::set<std::string> names;
  for (const auto& jt : header_["tensors"]) {
    TensorEntry t;
    t.name = get_field<std::string>(path, jt, "name", "tensor entry");
    const std::string where = "tensor '" + t.name + "'";
    if (!names.insert(t.name).second) fail(path, where + " appears twice");
    t.shape = get_field<std::vector<int64_t>>(path, jt, "shape", where);
    if (t.shape.empty() || t.shape.size() > 2) fail(path, where + " has " + std::to_string(t.shape.size()) + " dimensions (1 or 2 allowed)");
    for (int64_t d : t.shape) {
      if (d <= 0 || d > (int64_t{1} << 40)) fail(path, where + " has dimension " + std::to_string(d) + " (allowed 1 .. 2^40)");
    }
    t.offset = get_field<uint64_t>(path, jt, "offset", where);
    t.bytes = get_field<uint64_t>(path, jt, "bytes", where);
    t.crc32c = get_field<uint32_t>(path, jt, "crc32c", where);
    uint64_t end;
    if (t.offset % kMxlmAlign != 0 || t.offset < pre.data_offset || __builtin_add_overflow(t.offset, t.bytes, &end) ||
        end > data_end) {
      fail(path, where + ": data at offset " + std::to_string(t.offset) + " + " + std::to_string(t.bytes) +
                     " bytes lies outside the data section [" + std::to_string(pre.data_offset) + ", " +
                     std::to_string(data_end) + ") or is not 64-byte aligned");
    }
    t.data = map_.data() + t.offset;
    const auto& jsegs = jt.contains("segments") ? jt["segments"] : nlohmann::json();
    if (!jsegs.is_array() || jsegs.empty()) fail(path, where + " has no segments");
    int64_t next_row = 0;
    uint64_t seg_total = 0;
    for (const auto& js : jsegs) {
      TensorSegment s;
      s.row_begin = get_field<int64_t>(path, js, "row_begin", where);
      s.row_end = get_field<int64_t>(path, js, "row_end", where);
      const auto qid = get_field<uint32_t>(path, js, "qtype", where);
      const QTypeInfo* info = qtype_info(qid);
      if (!info) fail(path, where + " has unknown format id " + std::to_string(qid) + " (a newer mxlm wrote it?)");
      if (js.contains("format") && js["format"] != info->name) {
        fail(path, where + ": format id " + std::to_string(qid) + " is '" + std::string(info->name) + "' but the file names it " + js["format"].dump());
      }
      s.qtype = info->type;
      s.offset = get_field<uint64_t>(path, js, "offset", where);
      s.bytes = get_field<uint64_t>(path, js, "bytes", where);
      if (s.row_begin != next_row || s.row_end <= s.row_begin || s.row_end > t.rows()) {
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
          seg_end > t.offset + t.bytes) {
        fail(path, where + ": segment of " + std::to_string(s.bytes) + " bytes at " + std::to_string(s.offset) +
                       " does not match its shape (" + std::to_string(expect.value_or(0)) + " bytes expected) or lies outside the tensor");
      }
      seg_total += s.bytes;
      s.data = map_.data() + s.offset;
      t.segments.push_back(s);
    }
    if (next_row != t.rows() || seg_total > t.bytes) {
      fail(path, where + ": segments cover " + std::to_string(next_row) + " of " + std::to_string(t.rows()) + " rows");
    }
    // Optional parts inside the tensor's data: {offset, bytes} with offset absolute.
    auto part = [&](const char* key, uint64_t expect_bytes) -> const uint8_t* {
      const auto& jp = jt[key];
      const auto off = get_field<uint64_t>(path, jp, "offset", where + " " + key);
      const auto len = get_field<uint64_t>(path, jp, "bytes", where + " " + key);
      uint64_t end;
      if (len != expect_bytes || off < t.offset || __builtin_add_overflow(off, len, &end) || end > t.offset + t.bytes) {
        fail(path, where + ": " + key + " of " + std::to_string(len) + " bytes at " + std::to_string(off) +
                       " does not fit the tensor (" + std::to_string(expect_bytes) + " bytes expected)");
      }
      return map_.data() + off;
    };
    const uint64_t n_rows = static_cast<uint64_t>(t.rows());
    if (jt.contains("row_map")) {
      t.row_map = part("row_map", 4 * n_rows);
      std::vector<bool> seen(n_rows, false);
      for (uint64_t i = 0; i < n_rows; ++i) {
        int32_t r;
        std::memcpy(&r, t.row_map + 4 * i, 4);
        if (r < 0 || static_cast<uint64_t>(r) >= n_rows || seen[r]) fail(path, where + ": row_map is not a permutation of its rows");
        seen[r] = true;
      }
    }
    if (jt.contains("outliers")) {
      const auto nnz = get_field<uint64_t>(path, jt["outliers"], "nnz", where + " outliers");
      if (nnz > static_cast<uint64_t>(t.rows()) * static_cast<uint64_t>(t.cols())) fail(path, where + ": more outliers than weights");
      const uint8_t* p = part("outliers", 4 * (n_rows + 1) + 4 * nnz + 2 * nnz);
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
    tensors_.push_back(std::move(t));
  }

  const auto& jtok = header_.value("tokenizer", nlohmann::json());
  if (!jtok.is_object()) fail(path, "header lacks 'tokenizer'");
  tokenizer_kind_ = get_field<std::string>(path, jtok, "kind", "tokenizer");
  const auto tok_off = get_field<uint64_t>(path, jtok, "offset", "tokenizer");
  const auto tok_bytes = get_field<uint64_t>(path, jtok, "bytes", "tokenizer");
  tokenizer_crc_ = get_field<uint32_t>(path, jtok, "crc32c", "tokenizer");
  uint64_t tok_end;
  if (tok_off < pre.data_offset || __builtin_add_overflow(tok_off, tok_bytes, &tok_end) || tok_end > data_end) {
    fail(path, "tokenizer blob at " + std::to_string(tok_off) + " + " + std::to_string(tok_bytes) + " bytes lies outside the data section");
  }
  tokenizer_blob_ = std::string_view(reinterpret_cast<const char*>(map_.data() + tok_off), tok_bytes);
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
    if (!t.outlier_row_ptr.empty()) {
      const size_t nnz = t.outlier_cols.size();
      if (static_cast<int64_t>(t.outlier_row_ptr.size()) != rows + 1 || t.outlier_values.size() != nnz) {
        throw Error(ErrorCode::kInvalidArgument, "tensor '" + t.name + "': outlier arrays do not match");
      }
      buf.resize(align_up(buf.size(), 4), 0);
      const uint64_t start = buf.size();
      append(t.outlier_row_ptr.data(), 4 * t.outlier_row_ptr.size());
      append(t.outlier_cols.data(), 4 * nnz);
      append(t.outlier_values.data(), 2 * nnz);
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
