// make_seeds: regenerates the synthetic seeds of the fuzz corpora from the shared models.
//
//   build-fuzz/fuzz/make_seeds <out dir>      (writes <out dir>/<target>/seed_*)
//
// Every seed stays small (<= 64 KiB) so that a fuzzer's executions stay fast: real files are
// shrunk (the stories260K GGUF keeps its header and metadata but only two small tensors; a real
// safetensors header keeps its names and dtypes with tiny shapes) and the rest are tiny models
// written by the project's own writers. Copied real files (config.json, the index, tokenizers)
// are placed by fuzz/make_seeds.sh.
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "base/error.h"
#include "kernels/qtype.h"
#include "kernels/quant.h"
#include "model/file_util.h"
#include "model/gguf.h"
#include "model/mxlm_file.h"
#include "tokenizer/tokenizer.h"

using namespace mxlm;
namespace fs = std::filesystem;

namespace {

std::string g_shared;
std::mt19937 g_rng(1234);

std::string shared(const std::string& rel) { return g_shared + "/" + rel; }

void write(const fs::path& path, const std::string& bytes) {
  fs::create_directories(path.parent_path());
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (bytes.size() > 64 * 1024) std::cerr << "warning: " << path << " has " << bytes.size() << " bytes (> 64 KiB)\n";
  std::cout << path.string() << ": " << bytes.size() << " bytes\n";
}

template <typename T>
void put(std::string* s, T v) {
  s->append(reinterpret_cast<const char*>(&v), sizeof(T));
}

float rnd() { return std::normal_distribution<float>(0.0f, 0.5f)(g_rng); }

// Row-major values of `n` elements in float format q.
std::string float_bytes(QType q, size_t n) {
  std::vector<float> v(n);
  for (float& x : v) x = rnd();
  std::string out(n * static_cast<size_t>(qtype_info(q).block_bytes), '\0');
  convert_row_from_f32(q, v.data(), out.data(), n);
  return out;
}

// ---- GGUF ------------------------------------------------------------------------------------

class GgufWriter {
 public:
  explicit GgufWriter(uint32_t alignment = 32) : alignment_(alignment) {}
  static void str(std::string* s, std::string_view v) {
    put<uint64_t>(s, v.size());
    s->append(v);
  }
  // Copies a value read from another file, in its original types.
  void kv(const std::string& key, const gguf::Value& v) {
    str(&kv_, key);
    put<uint32_t>(&kv_, static_cast<uint32_t>(v.type));
    value(v.type, v);
    ++n_kv_;
  }
  void kv_u32(const std::string& key, uint32_t x) {
    str(&kv_, key);
    put<uint32_t>(&kv_, 4);
    put(&kv_, x);
    ++n_kv_;
  }
  void kv_f32(const std::string& key, float x) {
    str(&kv_, key);
    put<uint32_t>(&kv_, 6);
    put(&kv_, x);
    ++n_kv_;
  }
  void kv_str(const std::string& key, const std::string& x) {
    str(&kv_, key);
    put<uint32_t>(&kv_, 8);
    str(&kv_, x);
    ++n_kv_;
  }
  // ne in ggml order (ne[0] = row length); data in ggml type `type`.
  void tensor(const std::string& name, std::vector<uint64_t> ne, uint32_t type, const std::string& bytes) {
    while (data_.size() % alignment_) data_.push_back('\0');
    str(&ti_, name);
    put<uint32_t>(&ti_, static_cast<uint32_t>(ne.size()));
    for (uint64_t d : ne) put(&ti_, d);
    put(&ti_, type);
    put<uint64_t>(&ti_, data_.size());
    data_ += bytes;
    ++n_tensors_;
  }
  std::string build() const {
    std::string s = "GGUF";
    put<uint32_t>(&s, 3);
    put<uint64_t>(&s, n_tensors_);
    put<uint64_t>(&s, n_kv_);
    s += kv_ + ti_;
    while (s.size() % alignment_) s.push_back('\0');
    return s + data_;
  }

 private:
  void value(gguf::ValueType t, const gguf::Value& v) {
    using VT = gguf::ValueType;
    switch (t) {
      case VT::kString: str(&kv_, std::get<std::string>(v.scalar)); return;
      case VT::kBool: put<uint8_t>(&kv_, std::get<bool>(v.scalar)); return;
      case VT::kF32: put<float>(&kv_, static_cast<float>(std::get<double>(v.scalar))); return;
      case VT::kF64: put<double>(&kv_, std::get<double>(v.scalar)); return;
      case VT::kArray: {
        put<uint32_t>(&kv_, static_cast<uint32_t>(v.elem_type));
        if (v.elem_type == VT::kString) {
          put<uint64_t>(&kv_, v.strings.size());
          for (std::string_view s : v.strings) str(&kv_, s);
        } else {
          put<uint64_t>(&kv_, v.numbers.size());
          kv_.append(reinterpret_cast<const char*>(v.numbers.bytes()), v.numbers.size() * gguf::value_type_size(v.elem_type));
        }
        return;
      }
      default: {  // integers
        const int64_t x = std::holds_alternative<int64_t>(v.scalar) ? std::get<int64_t>(v.scalar)
                                                                     : static_cast<int64_t>(std::get<uint64_t>(v.scalar));
        kv_.append(reinterpret_cast<const char*>(&x), gguf::value_type_size(t));
      }
    }
  }

  uint32_t alignment_;
  std::string kv_, ti_, data_;
  uint64_t n_kv_ = 0, n_tensors_ = 0;
};

void gguf_seeds(const fs::path& out) {
  gguf::File src(shared("models/stories260K/stories260K.gguf"));
  // 1. The real header and metadata, two small tensors of the real file.
  {
    GgufWriter w;
    for (const auto& [key, v] : src.kv()) w.kv(key, v);
    for (const char* name : {"output_norm.weight", "blk.0.attn_norm.weight"}) {
      const gguf::TensorInfo* t = src.find_tensor(name);
      w.tensor(name, t->ne, t->type, std::string(reinterpret_cast<const char*>(src.tensor_data(*t)), t->bytes));
    }
    write(out / "seed_stories260K_meta.gguf", w.build());
  }
  // 2. A complete tiny llama (every tensor the importer needs) with the real vocabulary, in
  // F16, BF16 and F32 tensors; alignment 8 so that some data sits at odd multiples.
  {
    const uint32_t E = 8, F = 16, V = 512, H = 2, KV = 1, D = E / H;
    GgufWriter w(8);
    w.kv_str("general.architecture", "llama");
    w.kv_str("general.name", "fuzz-tiny");
    w.kv_u32("general.alignment", 8);
    w.kv_u32("llama.embedding_length", E);
    w.kv_u32("llama.block_count", 1);
    w.kv_u32("llama.feed_forward_length", F);
    w.kv_u32("llama.attention.head_count", H);
    w.kv_u32("llama.attention.head_count_kv", KV);
    w.kv_u32("llama.context_length", 64);
    w.kv_u32("llama.rope.dimension_count", D);
    w.kv_f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
    w.kv_f32("llama.rope.freq_base", 10000.0f);
    for (const auto& [key, v] : src.kv()) {
      if (key.rfind("tokenizer.", 0) == 0) w.kv(key, v);
    }
    auto mat = [&](const std::string& name, uint32_t n, uint32_t k, uint32_t ggml, QType q) {
      w.tensor(name, {k, n}, ggml, float_bytes(q, size_t{n} * k));
    };
    mat("token_embd.weight", V, E, gguf::kGgmlF16, QType::kF16);
    w.tensor("output_norm.weight", {E}, gguf::kGgmlF32, float_bytes(QType::kF32, E));
    mat("output.weight", V, E, gguf::kGgmlBF16, QType::kBF16);
    w.tensor("blk.0.attn_norm.weight", {E}, gguf::kGgmlF32, float_bytes(QType::kF32, E));
    w.tensor("blk.0.ffn_norm.weight", {E}, gguf::kGgmlF32, float_bytes(QType::kF32, E));
    mat("blk.0.attn_q.weight", H * D, E, gguf::kGgmlF16, QType::kF16);
    mat("blk.0.attn_k.weight", KV * D, E, gguf::kGgmlBF16, QType::kBF16);
    mat("blk.0.attn_v.weight", KV * D, E, gguf::kGgmlF32, QType::kF32);
    mat("blk.0.attn_output.weight", E, H * D, gguf::kGgmlF16, QType::kF16);
    mat("blk.0.ffn_gate.weight", F, E, gguf::kGgmlF16, QType::kF16);
    mat("blk.0.ffn_up.weight", F, E, gguf::kGgmlBF16, QType::kBF16);
    mat("blk.0.ffn_down.weight", E, F, gguf::kGgmlF32, QType::kF32);
    write(out / "seed_tiny_llama.gguf", w.build());
  }
}

// ---- .mxlm -----------------------------------------------------------------------------------

ModelConfig tiny_config(int n_vocab) {
  ModelConfig c;
  c.n_vocab = n_vocab;
  c.n_embd = 32;
  c.n_layers = 1;
  c.n_heads = 2;
  c.n_kv_heads = 1;
  c.head_dim = 16;
  c.n_ff = 64;
  c.n_ctx = 64;
  c.tied_embeddings = true;
  return c;
}

TensorToWrite tensor(const std::string& name, std::vector<int64_t> shape, QType q) {
  TensorToWrite t;
  t.name = name;
  t.shape = shape;
  t.qtype = q;
  const int64_t k = shape.back();
  t.fill = [q, k](uint8_t* dst, size_t bytes) {
    const uint64_t row = *qtype_row_bytes(q, static_cast<uint64_t>(k));
    std::vector<float> v(static_cast<size_t>(k));
    for (size_t r = 0; r < bytes / row; ++r) {
      for (float& x : v) x = rnd();
      quantize_row(q, v.data(), k, dst + r * row);
    }
  };
  return t;
}

void mxlm_seeds(const fs::path& out, const fs::path& scratch) {
  const ModelConfig c = tiny_config(512);
  using namespace tensor_names;
  MxlmWriteInput in;
  in.config = c;
  in.tokenizer_blob = read_file(shared("models/stories260K/tok512.model"));
  in.provenance = {{"source", "fuzz/make_seeds"}};
  const int64_t E = c.n_embd, Q = int64_t{c.n_heads} * c.head_dim, KV = int64_t{c.n_kv_heads} * c.head_dim;
  in.tensors.push_back(tensor(kTokEmbd, {c.n_vocab, E}, QType::kQ4G32));
  in.tensors.push_back(tensor(kOutputNorm, {E}, QType::kF32));
  in.tensors.push_back(tensor(layer(0, kAttnNorm), {E}, QType::kF32));
  // A mixed-precision tensor: two segments, a row map and sparse outliers.
  {
    TensorToWrite t = tensor(layer(0, kAttnQ), {Q, E}, QType::kQ8G32);
    t.segments = {{Q / 2, QType::kQ8G32}, {Q - Q / 2, QType::kQ4G32}};
    const uint64_t r8 = *qtype_row_bytes(QType::kQ8G32, E), r4 = *qtype_row_bytes(QType::kQ4G32, E);
    t.fill = [=](uint8_t* dst, size_t) {
      std::vector<float> v(static_cast<size_t>(E));
      for (int64_t r = 0; r < Q; ++r) {
        for (float& x : v) x = rnd();
        if (r < Q / 2) {
          quantize_row(QType::kQ8G32, v.data(), E, dst + r * r8);
        } else {
          quantize_row(QType::kQ4G32, v.data(), E, dst + (Q / 2) * r8 + (r - Q / 2) * r4);
        }
      }
    };
    for (int64_t r = 0; r < Q; ++r) t.row_map.push_back(static_cast<int32_t>(Q - 1 - r));
    t.outlier_row_ptr.push_back(0);
    for (int64_t r = 0; r < Q; ++r) {
      if (r % 5 == 0) {
        t.outlier_cols.push_back(static_cast<int32_t>(r % E));
        t.outlier_values.push_back(f32_to_f16(3.0f));
      }
      t.outlier_row_ptr.push_back(static_cast<int32_t>(t.outlier_cols.size()));
    }
    in.tensors.push_back(t);
  }
  in.tensors.push_back(tensor(layer(0, kAttnK), {KV, E}, QType::kQ6G32));
  in.tensors.push_back(tensor(layer(0, kAttnV), {KV, E}, QType::kNU4G32));
  in.tensors.push_back(tensor(layer(0, kAttnO), {E, Q}, QType::kQ4AG32));
  in.tensors.push_back(tensor(layer(0, kFfnNorm), {E}, QType::kF32));
  in.tensors.push_back(tensor(layer(0, kFfnGate), {c.n_ff, E}, QType::kBF16));
  in.tensors.push_back(tensor(layer(0, kFfnUp), {c.n_ff, E}, QType::kF16));
  in.tensors.push_back(tensor(layer(0, kFfnDown), {E, c.n_ff}, QType::kQ3G32));
  const fs::path tmp = scratch / "tiny.mxlm";
  write_mxlm(tmp.string(), in);
  write(out / "seed_tiny_mixed.mxlm", read_file(tmp.string()));

  // The smallest container: one tensor, an empty tokenizer blob.
  MxlmWriteInput small;
  small.config = tiny_config(8);
  small.tensors.push_back(tensor("vector", {7}, QType::kF32));
  write_mxlm(tmp.string(), small);
  write(out / "seed_small.mxlm", read_file(tmp.string()));
}

// ---- safetensors -----------------------------------------------------------------------------

// A safetensors file of the given (name, dtype, shape) list with random data.
std::string safetensors(const std::vector<std::tuple<std::string, std::string, std::vector<int64_t>>>& list,
                        const nlohmann::json& metadata) {
  nlohmann::json h = nlohmann::json::object();
  if (!metadata.is_null()) h["__metadata__"] = metadata;
  std::string data;
  for (const auto& [name, dtype, shape] : list) {
    const QType q = dtype == "F32" ? QType::kF32 : dtype == "F16" ? QType::kF16 : QType::kBF16;
    size_t n = 1;
    for (int64_t d : shape) n *= static_cast<size_t>(d);
    const size_t begin = data.size();
    data += float_bytes(q, n);
    h[name] = {{"dtype", dtype}, {"shape", shape}, {"data_offsets", {begin, data.size()}}};
  }
  std::string text = h.dump();
  if (text.size() % 2 == 0) text += ' ';  // an odd header length: the data starts unaligned
  std::string out;
  put<uint64_t>(&out, text.size());
  return out + text + data;
}

void safetensors_seeds(const fs::path& out) {
  write(out / "seed_tiny.safetensors",
        safetensors({{"model.embed_tokens.weight", "BF16", {16, 8}},
                     {"model.norm.weight", "F32", {8}},
                     {"lm_head.weight", "F16", {16, 8}}},
                    nlohmann::json{{"format", "pt"}}));
  // The real header of a tinymix shard: its names and dtypes, with tiny shapes.
  const MappedFile shard(shared("models/tinymix-26m/model-00003-of-00003.safetensors"));
  uint64_t hlen;
  std::memcpy(&hlen, shard.data(), 8);
  const auto h = nlohmann::json::parse(shard.data() + 8, shard.data() + 8 + hlen);
  std::vector<std::tuple<std::string, std::string, std::vector<int64_t>>> list;
  for (auto it = h.begin(); it != h.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    const auto shape = it.value()["shape"].get<std::vector<int64_t>>();
    list.emplace_back(it.key(), it.value()["dtype"].get<std::string>(),
                      shape.size() == 1 ? std::vector<int64_t>{4} : std::vector<int64_t>{2, 4});
  }
  write(out / "seed_tinymix_shard3_shrunk.safetensors", safetensors(list, h.value("__metadata__", nlohmann::json())));
}

// ---- llama2.c --------------------------------------------------------------------------------

void llama2c_seeds(const fs::path& out) {
  // dim, hidden, layers, heads, kv heads, vocab, seq
  const int32_t dim = 8, hidden = 16, L = 1, H = 2, KV = 1, V = 32, T = 4;
  const int32_t hd = dim / H, kv = KV * hd;
  auto f32s = [](size_t n) { return float_bytes(QType::kF32, n); };
  // Legacy layout: negative vocab = unshared classifier.
  {
    std::string s;
    for (int32_t x : {dim, hidden, L, H, KV, -V, T}) put(&s, x);
    s += f32s(size_t(V) * dim);                       // token_embedding_table
    s += f32s(size_t(L) * dim);                       // rms_att_weight
    s += f32s(size_t(L) * dim * dim);                 // wq
    s += f32s(size_t(L) * kv * dim);                  // wk
    s += f32s(size_t(L) * kv * dim);                  // wv
    s += f32s(size_t(L) * dim * dim);                 // wo
    s += f32s(size_t(L) * dim);                       // rms_ffn_weight
    s += f32s(size_t(L) * hidden * dim);              // w1
    s += f32s(size_t(L) * dim * hidden);              // w2
    s += f32s(size_t(L) * hidden * dim);              // w3
    s += f32s(size_t(dim));                           // rms_final_weight
    s += f32s(size_t(T) * hd / 2) + f32s(size_t(T) * hd / 2);  // freq_cis_real, freq_cis_imag
    s += f32s(size_t(V) * dim);                       // wcls
    write(out / "seed_tiny_legacy.bin", s);
  }
  // v1 "ak42": 256-byte header, shared classifier.
  {
    std::string s;
    put<uint32_t>(&s, 0x616b3432);
    put<int32_t>(&s, 1);
    for (int32_t x : {dim, hidden, L, H, KV, V, T}) put(&s, x);
    s.push_back(1);  // shared classifier
    s.resize(256, '\0');
    s += f32s(size_t(L) * dim) + f32s(size_t(L) * dim) + f32s(size_t(dim));  // norms
    s += f32s(size_t(V) * dim);                                               // embeddings
    s += f32s(size_t(L) * dim * dim) + f32s(size_t(L) * kv * dim) + f32s(size_t(L) * kv * dim) + f32s(size_t(L) * dim * dim);
    s += f32s(size_t(L) * hidden * dim) + f32s(size_t(L) * dim * hidden) + f32s(size_t(L) * hidden * dim);
    write(out / "seed_tiny_v1.bin", s);
  }
  // The real stories260K header and its first bytes (rejected as truncated: covers the header).
  const std::string real = read_file(shared("models/stories260K/stories260K.bin"));
  write(out / "seed_stories260K_head.bin", real.substr(0, 4096));
}

// ---- tokenizers ------------------------------------------------------------------------------

void tokenizer_seeds(const fs::path& tok_out, const fs::path& spm_out) {
  const std::string bin = read_file(shared("models/stories260K/tok512.bin"));
  std::string s;
  put<uint16_t>(&s, 512);
  write(tok_out / "seed_tok512.bin", s + bin);
  // A generated SentencePiece model of a small vocabulary (build_spm_model_proto's output).
  std::vector<VocabEntry> vocab = parse_llama2c_tokenizer(bin, 512, "tok512.bin");
  vocab.resize(300);
  write(spm_out / "seed_built_300.model", build_spm_model_proto(vocab, SpmBuildOptions{}));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: make_seeds <corpus dir>\n";
    return 2;
  }
  const char* env = std::getenv("MXLM_SHARED");
  g_shared = env && *env ? env : MXLM_SHARED_DEFAULT;
  const fs::path out = argv[1];
  const fs::path scratch = fs::temp_directory_path() / ("mxlm_make_seeds_" + std::to_string(::getpid()));
  fs::create_directories(scratch);
  try {
    gguf_seeds(out / "gguf");
    mxlm_seeds(out / "mxlm", scratch);
    safetensors_seeds(out / "safetensors");
    llama2c_seeds(out / "llama2c");
    tokenizer_seeds(out / "llama2c_tokenizer", out / "spm");
  } catch (const Error& e) {
    std::cerr << "make_seeds: " << e.what() << "\n";
    fs::remove_all(scratch);
    return 1;
  }
  fs::remove_all(scratch);
  return 0;
}
