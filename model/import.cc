#include "model/import.h"

#include <omp.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <map>

#include "base/error.h"
#include "kernels/quant.h"
#include "model/mxlm_file.h"

namespace mxlm {

const char* source_format_name(SourceFormat f) {
  switch (f) {
    case SourceFormat::kHf: return "hf-safetensors";
    case SourceFormat::kGguf: return "gguf";
    case SourceFormat::kLlama2c: return "llama2c";
    case SourceFormat::kMxlm: return "mxlm";
  }
  return "unknown";
}

ImportedModel import_model(const std::string& input, const ImportOptions& options) {
  struct stat st {};
  if (::stat(input.c_str(), &st) != 0) throw Error(ErrorCode::kIo, "input '" + input + "' does not exist");
  ImportedModel m;
  if (S_ISDIR(st.st_mode)) {
    m = import_hf(input, options);
  } else {
    MappedFile probe(input);
    if (probe.size() >= 4 && std::memcmp(probe.data(), "GGUF", 4) == 0) {
      m = import_gguf(input, options);
    } else if (probe.size() >= 8 && std::memcmp(probe.data(), kMxlmMagic, 8) == 0) {
      m = import_mxlm(input);
    } else {
      m = import_llama2c(input, options);
    }
  }
  m.config.validate();
  check_tensor_set(m);
  return m;
}

void read_source_row(const SourceTensor& t, int64_t r, float* dst) {
  const int64_t k = t.shape.back();
  int64_t src_row = r;
  if (t.rope_unpermute_head_dim > 0) {
    // Interleaved pairs (2i, 2i+1) of a head become (i, i + d/2).
    const int64_t d = t.rope_unpermute_head_dim;
    const int64_t head = r / d, j = r % d;
    src_row = head * d + (j < d / 2 ? 2 * j : 2 * (j - d / 2) + 1);
  }
  const uint64_t row_bytes = *qtype_row_bytes(t.src_type, static_cast<uint64_t>(k));
  const uint8_t* row = t.data + static_cast<uint64_t>(src_row) * row_bytes;
  if (is_float_qtype(t.src_type)) {
    // Source rows may sit at any alignment (a safetensors header has any length, GGUF's
    // alignment may be 1), and the converters read uint16_t/float elements in place: go
    // through an aligned buffer, a chunk at a time.
    alignas(64) uint8_t buf[4096];
    const uint64_t elem = static_cast<uint64_t>(qtype_info(t.src_type).block_bytes);
    const int64_t chunk = static_cast<int64_t>(sizeof(buf) / elem);
    for (int64_t i = 0; i < k; i += chunk) {
      const int64_t n = std::min(chunk, k - i);
      std::memcpy(buf, row + static_cast<uint64_t>(i) * elem, static_cast<size_t>(n) * elem);
      convert_row_to_f32(t.src_type, buf, dst + i, static_cast<size_t>(n));
    }
    return;
  }
  dequantize_row(t.src_type, row, k, dst);
}

void check_tensor_set(const ImportedModel& m) {
  const ModelConfig& c = m.config;
  std::map<std::string, const SourceTensor*> by_name;
  for (const auto& t : m.tensors) by_name[t.name] = &t;
  auto expect = [&](const std::string& name, std::vector<int64_t> shape) {
    auto it = by_name.find(name);
    if (it == by_name.end()) throw Error(ErrorCode::kFormat, "model lacks tensor '" + name + "'");
    if (it->second->shape != shape) {
      auto str = [](const std::vector<int64_t>& s) {
        std::string r = "[";
        for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
        return r + "]";
      };
      throw Error(ErrorCode::kFormat, "tensor '" + name + "' has shape " + str(it->second->shape) + ", expected " +
                                          str(shape) + " from the model config");
    }
    by_name.erase(it);
  };
  const int64_t q = int64_t{c.n_heads} * c.head_dim, kv = int64_t{c.n_kv_heads} * c.head_dim;
  expect(tensor_names::kTokEmbd, {c.n_vocab, c.n_embd});
  expect(tensor_names::kOutputNorm, {c.n_embd});
  if (!c.tied_embeddings) expect(tensor_names::kOutput, {c.n_vocab, c.n_embd});
  for (int i = 0; i < c.n_layers; ++i) {
    using namespace tensor_names;
    expect(layer(i, kAttnNorm), {c.n_embd});
    expect(layer(i, kAttnQ), {q, c.n_embd});
    expect(layer(i, kAttnK), {kv, c.n_embd});
    expect(layer(i, kAttnV), {kv, c.n_embd});
    expect(layer(i, kAttnO), {c.n_embd, q});
    expect(layer(i, kFfnNorm), {c.n_embd});
    expect(layer(i, kFfnGate), {c.n_ff, c.n_embd});
    expect(layer(i, kFfnUp), {c.n_ff, c.n_embd});
    expect(layer(i, kFfnDown), {c.n_embd, c.n_ff});
  }
  if (!by_name.empty()) throw Error(ErrorCode::kFormat, "unexpected tensor '" + by_name.begin()->first + "' in the model");
}

ImportedModel import_mxlm(const std::string& path) {
  auto file = std::make_shared<MxlmFile>(path);
  ImportedModel m;
  m.format = SourceFormat::kMxlm;
  m.config = file->config();
  m.tokenizer_proto = std::string(file->tokenizer_blob());
  m.chat_template = file->chat_template();
  m.provenance = file->header().value("provenance", nlohmann::json::object());
  m.provenance["requantized_from"] = path;
  for (const TensorEntry& t : file->tensors()) {
    if (t.segments.size() != 1 || t.row_map || t.outliers.nnz) {
      throw Error(ErrorCode::kUnsupported, "'" + path + "': tensor '" + t.name + "' is mixed-precision; re-quantize from the original model");
    }
    SourceTensor s;
    s.name = t.name;
    s.shape = t.shape;
    s.src_type = t.qtype();
    s.data = t.data;
    m.tensors.push_back(s);
  }
  m.files.push_back(file);
  return m;
}

void write_model(const ImportedModel& m, const std::string& out_path, const std::function<QType(const SourceTensor&)>& choose,
                 const nlohmann::json& quantization, int threads, const std::function<void(size_t, size_t)>& progress) {
  const TensorEncoder rtn = [threads](const SourceTensor& t, QType dst_type, uint8_t* dst, size_t bytes) {
    const int64_t rows = t.shape.size() == 2 ? t.shape[0] : 1, k = t.shape.back();
    const uint64_t dst_row = *qtype_row_bytes(dst_type, static_cast<uint64_t>(k));
    MXLM_ASSERT(dst_row * static_cast<uint64_t>(rows) == bytes);
    if (t.src_type == dst_type && t.rope_unpermute_head_dim == 0) {
      std::memcpy(dst, t.data, bytes);
      return;
    }
    const int nt = threads > 0 ? threads : omp_get_num_procs();
#pragma omp parallel num_threads(nt)
    {
      std::vector<float> row(static_cast<size_t>(k));
#pragma omp for schedule(dynamic, 16)
      for (int64_t r = 0; r < rows; ++r) {
        read_source_row(t, r, row.data());
        quantize_row(dst_type, row.data(), k, dst + static_cast<uint64_t>(r) * dst_row);
      }
    }
  };
  write_model(m, out_path, choose, quantization, rtn, progress);
}

void write_model(const ImportedModel& m, const std::string& out_path, const std::function<QType(const SourceTensor&)>& choose,
                 const nlohmann::json& quantization, const TensorEncoder& encode,
                 const std::function<void(size_t, size_t)>& progress) {
  write_model(
      m, out_path,
      [&choose](const SourceTensor& t) {
        TensorLayout l;
        l.qtype = choose(t);
        return l;
      },
      quantization,
      [&encode](const SourceTensor& t, const TensorLayout& l, uint8_t* dst, size_t bytes) { encode(t, l.qtype, dst, bytes); },
      progress);
}

void write_model(const ImportedModel& m, const std::string& out_path, const std::function<TensorLayout(const SourceTensor&)>& layout,
                 const nlohmann::json& quantization, const LayoutEncoder& encode,
                 const std::function<void(size_t, size_t)>& progress) {
  MxlmWriteInput in;
  in.config = m.config;
  in.tokenizer_blob = m.tokenizer_proto;
  in.chat_template = m.chat_template;
  in.provenance = m.provenance;
  in.provenance["source_format"] = source_format_name(m.format);
  in.quantization = quantization;
  for (const SourceTensor& t : m.tensors) {
    TensorToWrite w;
    w.name = t.name;
    w.shape = t.shape;
    const bool vec = t.shape.size() == 1;
    auto lay = std::make_shared<TensorLayout>();
    if (!vec) *lay = layout(t);
    w.qtype = vec ? QType::kF32 : lay->qtype;
    if (!lay->segment_qtypes.empty()) {
      MXLM_ASSERT(lay->segment_qtypes.size() == lay->segment_rows.size());
      for (size_t i = 0; i < lay->segment_qtypes.size(); ++i) w.segments.push_back({lay->segment_rows[i], lay->segment_qtypes[i]});
      w.qtype = lay->segment_qtypes[0];
    }
    w.row_map = lay->row_map;
    w.fill_outliers = lay->outliers;
    const SourceTensor* src = &t;
    w.fill = [src, lay, vec, &encode](uint8_t* dst, size_t bytes) {
      if (!vec) {
        encode(*src, *lay, dst, bytes);
        return;
      }
      MXLM_ASSERT(bytes == sizeof(float) * static_cast<size_t>(src->shape[0]));
      std::vector<float> row(static_cast<size_t>(src->shape[0]));
      read_source_row(*src, 0, row.data());
      std::memcpy(dst, row.data(), bytes);
    };
    in.tensors.push_back(std::move(w));
  }
  write_mxlm(out_path, in, progress);
}

void convert_to_mxlm(const ImportedModel& m, const std::string& out_path, QType weight_type,
                     const std::function<void(size_t, size_t)>& progress) {
  if (!is_float_qtype(weight_type)) {
    throw Error(ErrorCode::kInvalidArgument, "convert writes f32, f16 or bf16 weights; use 'mxlm quantize' for quantized formats");
  }
  write_model(
      m, out_path, [weight_type](const SourceTensor&) { return weight_type; },
      nlohmann::json::object(), 0, progress);
}

}  // namespace mxlm
