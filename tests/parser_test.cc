// Parser hardening: each test pins one fix to the parsers of untrusted input (HF directories,
// safetensors, config.json, .mxlm, GGUF, llama2.c files) found by review or by the libFuzzer
// targets in fuzz/. Every bad input must end in an mxlm::Error that names the problem and the
// value or limit, never in a library exception, silent truncation, UB or a huge allocation.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "base/error.h"
#include "kernels/qtype.h"
#include "model/checksum.h"
#include "model/config.h"
#include "model/file_util.h"
#include "model/gguf.h"
#include "model/import.h"
#include "model/mxlm_file.h"
#include "mxlm/model.h"
#include "tests/container_util.h"
#include "tests/test_util.h"
#include "tokenizer/tokenizer.h"

namespace mxlm {
namespace {

namespace fs = std::filesystem;

using test::dump;
using test::slurp;

// A fresh directory under the scratch folder.
std::string fresh_dir(const std::string& name) {
  const std::string d = test::scratch_dir() + "/" + name;
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

// Runs fn and expects an mxlm::Error whose message contains every needle.
void expect_error(const std::function<void()>& fn, const std::vector<std::string>& needles,
                  ErrorCode code = ErrorCode::kFormat) {
  try {
    fn();
    ADD_FAILURE() << "no error (expected one containing '" << needles.front() << "')";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), code) << e.what();
    for (const auto& n : needles) EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << "message: " << e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "a non-mxlm exception escaped: " << e.what();
  }
}

template <typename T>
void put(std::string* s, T v) {
  s->append(reinterpret_cast<const char*>(&v), sizeof(T));
}

// A safetensors file: `pad` spaces make the header length (and so the data alignment) odd.
std::string safetensors_bytes(const nlohmann::json& header, const std::string& data) {
  const std::string text = header.dump();
  std::string out;
  put<uint64_t>(&out, text.size());
  return out + text + data;
}

// ---- HF directories --------------------------------------------------------------------------

const char* kTinymix = "models/tinymix-26m";

// A model directory with the real tinymix config.json and the given index (and files).
std::string hf_dir(const std::string& name, const nlohmann::json& index, const std::map<std::string, std::string>& files = {}) {
  const std::string d = fresh_dir(name);
  dump(d + "/config.json", slurp(test::shared_path(std::string(kTinymix) + "/config.json")));
  dump(d + "/model.safetensors.index.json", index.dump());
  for (const auto& [f, bytes] : files) dump(d + "/" + f, bytes);
  return d;
}

TEST(HfImport, RejectsShardPathsOutsideTheModelDirectory) {
  // A file outside the directory that looks like a shard: before the fix it was read.
  const std::string outside = fresh_dir("hf_outside") + "/secret.safetensors";
  dump(outside, safetensors_bytes({{"x", {{"dtype", "F32"}, {"shape", {1}}, {"data_offsets", {0, 4}}}}}, std::string(4, '\0')));
  for (const std::string& shard : {outside, std::string("../hf_outside/secret.safetensors"),
                                   std::string("sub/../../hf_outside/secret.safetensors")}) {
    const std::string d = hf_dir("hf_abs", {{"weight_map", {{"model.norm.weight", shard}}}});
    const std::string why = shard[0] == '/' ? "is absolute" : "contains '..'";
    expect_error([&] { import_hf(d, {}); }, {"shard path '" + shard + "'", why, "model.safetensors.index.json"});
    expect_error([&] { hf::parse_index(slurp(d + "/model.safetensors.index.json"), "index.json"); }, {shard, why});
  }
  // Plain relative names (also in a subfolder) stay accepted.
  const auto shards = hf::parse_index(R"({"weight_map": {"a": "m-1.safetensors", "b": "sub/m-2.safetensors", "c": "m-1.safetensors"}})", "i");
  EXPECT_EQ(shards, (std::vector<std::string>{"m-1.safetensors", "sub/m-2.safetensors"}));
  expect_error([] { hf::parse_index(R"({"weight_map": {"a": ""}})", "i"); }, {"is empty"});
  expect_error([] { hf::parse_index(R"({"weight_map": {"a": 7}})", "i"); }, {"'a' is not a file name"});
}

TEST(HfImport, RejectsATensorInTwoShards) {
  auto shard = [](const std::vector<std::string>& names) {
    nlohmann::json h = nlohmann::json::object();
    std::string data;
    for (const auto& n : names) {
      h[n] = {{"dtype", "F32"}, {"shape", {2}}, {"data_offsets", {data.size(), data.size() + 8}}};
      data.append(8, '\0');
    }
    return safetensors_bytes(h, data);
  };
  const std::string d = hf_dir("hf_dup",
                               {{"weight_map", {{"model.norm.weight", "a.safetensors"}, {"lm_head.weight", "b.safetensors"}}}},
                               {{"a.safetensors", shard({"model.norm.weight"})},
                                {"b.safetensors", shard({"lm_head.weight", "model.norm.weight"})}});
  expect_error([&] { import_hf(d, {}); }, {"tensor 'model.norm.weight'", "a.safetensors", "b.safetensors", "only one shard"});

  // The same name twice inside one header: nlohmann kept the last entry silently.
  const std::string one = "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                          "\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}";
  std::string bytes;
  put<uint64_t>(&bytes, one.size());
  bytes += one + std::string(8, '\0');
  std::map<std::string, hf::SafeTensor> all;
  expect_error([&] { hf::read_safetensors(MappedFile::from_memory("dup.safetensors", bytes.data(), bytes.size()), &all); },
               {"dup.safetensors", "'w' appears twice"});

  // A tensor found in another shard than the index names.
  const std::string d2 = hf_dir("hf_moved",
                                {{"weight_map", {{"model.norm.weight", "a.safetensors"}, {"lm_head.weight", "b.safetensors"}}}},
                                {{"a.safetensors", shard({"lm_head.weight"})}, {"b.safetensors", shard({"model.norm.weight"})}});
  expect_error([&] { import_hf(d2, {}); }, {"tensor 'lm_head.weight' is listed in 'b.safetensors' but found in", "a.safetensors"});
}

// ---- config values ---------------------------------------------------------------------------

nlohmann::json tinymix_config() { return nlohmann::json::parse(slurp(test::shared_path(std::string(kTinymix) + "/config.json"))); }

TEST(ConfigJson, IntegerFieldsAreCheckedNotTruncated) {
  EXPECT_EQ(hf::parse_config(tinymix_config().dump(), "config.json").n_vocab, 4096);
  struct Case {
    const char* key;
    nlohmann::json value;
    std::vector<std::string> needles;
  };
  const std::vector<Case> cases = {
      {"vocab_size", 3.7, {"vocab_size = 3.7", "is not an integer in [1, 2147483647]"}},
      {"vocab_size", 1e10, {"vocab_size = 10000000000.0", "is not an integer"}},
      {"hidden_size", uint64_t{10000000000}, {"hidden_size = 10000000000", "[1, 2147483647]"}},
      {"num_hidden_layers", "8", {"num_hidden_layers = \"8\"", "is not an integer"}},
      {"num_attention_heads", true, {"num_attention_heads = true"}},
      {"eos_token_id", {2.5, 3}, {"eos_token_id = 2.5"}},
      {"rms_norm_eps", "tiny", {"rms_norm_eps = \"tiny\"", "is not a number"}},
      {"rms_norm_eps", 1e300, {"rms_norm_eps = 1e+300", "finite float32"}},
      {"tie_word_embeddings", 1, {"tie_word_embeddings = 1", "true or false"}},
      {"model_type", 5, {"model_type = 5", "is not a string"}},
      {"architectures", {7}, {"architectures[0] = 7"}},
      {"attention_bias", "no", {"attention_bias = \"no\""}},
      {"rope_parameters", {{"rope_theta", "big"}, {"rope_type", "default"}}, {"rope_theta = \"big\""}},
  };
  int checked = 0;
  for (const Case& c : cases) {
    nlohmann::json cfg = tinymix_config();
    cfg[c.key] = c.value;
    SCOPED_TRACE(c.key);
    expect_error([&] { hf::parse_config(cfg.dump(), "cfg/config.json"); }, c.needles);
    ++checked;
  }
  EXPECT_EQ(checked, 13);
}

TEST(ConfigJson, MxlmHeaderConfigIsCheckedNotTruncated) {
  const ModelConfig c = test::tiny_config();
  EXPECT_EQ(ModelConfig::from_json(c.to_json()).n_vocab, 8);
  auto with = [&](const char* key, const nlohmann::json& v) {
    nlohmann::json j = c.to_json();
    j[key] = v;
    return j;
  };
  // get<int>() turned 8.9 into 8 and 2^32 + 8 into 8.
  expect_error([&] { ModelConfig::from_json(with("n_vocab", 8.9)); }, {"n_vocab = 8.9", "not an integer"});
  expect_error([&] { ModelConfig::from_json(with("n_vocab", uint64_t{4294967304})); }, {"n_vocab = 4294967304"});
  expect_error([&] { ModelConfig::from_json(with("tied_embeddings", "yes")); }, {"tied_embeddings = \"yes\""});
  expect_error([&] { ModelConfig::from_json(with("rope_theta", 1e39)); }, {"rope_theta", "finite float32"});
  expect_error([&] { ModelConfig::from_json(nlohmann::json::array()); }, {"not a JSON object"});
  nlohmann::json missing = c.to_json();
  missing.erase("n_ff");
  expect_error([&] { ModelConfig::from_json(missing); }, {"missing field 'n_ff'"});
}

// A GGUF file byte by byte (little endian).
struct Gguf {
  std::string kv;
  uint64_t n_kv = 0;
  void str(std::string* s, const std::string& v) {
    put<uint64_t>(s, v.size());
    *s += v;
  }
  void key(const std::string& k, uint32_t type) {
    str(&kv, k);
    put(&kv, type);
    ++n_kv;
  }
  void u32(const std::string& k, uint32_t v) {
    key(k, 4);
    put(&kv, v);
  }
  void f64(const std::string& k, double v) {
    key(k, 12);
    put(&kv, v);
  }
  void string(const std::string& k, const std::string& v) {
    key(k, 8);
    str(&kv, v);
  }
  std::string build() const {
    std::string s = "GGUF";
    put<uint32_t>(&s, 3);
    put<uint64_t>(&s, 0);
    put<uint64_t>(&s, n_kv);
    return s + kv;
  }
};

TEST(ConfigGguf, FloatKeysOutsideFloatRangeAreRejected) {
  auto base = [] {
    Gguf g;
    g.string("general.architecture", "llama");
    g.u32("llama.embedding_length", 8);
    g.u32("llama.block_count", 1);
    g.u32("llama.feed_forward_length", 16);
    g.u32("llama.attention.head_count", 2);
    return g;
  };
  // Before: static_cast<float>(1e300) (undefined; inf in practice), and inf passed rope_theta > 1.
  for (const char* key : {"llama.rope.freq_base", "llama.attention.layer_norm_rms_epsilon"}) {
    Gguf g = base();
    g.f64(key, 1e300);
    const std::string bytes = g.build();
    auto file = std::make_shared<const gguf::File>(MappedFile::from_memory("f.gguf", bytes.data(), bytes.size()));
    expect_error([&] { import_gguf(file, {}); }, {key, "not a finite float32"});
  }
}

// ---- unaligned safetensors data --------------------------------------------------------------

TEST(Safetensors, OddlyAlignedDataReadsExactly) {
  // Header lengths 1, 2 and 3 bytes past a multiple of 4: the F16/BF16/F32 data sits at every
  // misalignment. Before the fix the converters read it through uint16_t*/float* (UB, reported
  // by the UBSan build), now through an aligned copy.
  const std::vector<float> want = {1.0f, -2.5f, 0.375f, 65504.0f, -0.0f, 3.0f, 1e-3f};
  for (int pad = 0; pad < 4; ++pad) {
    for (QType q : {QType::kF16, QType::kBF16, QType::kF32}) {
      const size_t elem = static_cast<size_t>(qtype_info(q).block_bytes);
      std::string data(want.size() * elem, '\0');
      convert_row_from_f32(q, want.data(), data.data(), want.size());
      const char* dtype = q == QType::kF16 ? "F16" : q == QType::kBF16 ? "BF16" : "F32";
      nlohmann::json h = {{"t", {{"dtype", dtype}, {"shape", {1, want.size()}}, {"data_offsets", {0, data.size()}}}}};
      std::string text = h.dump();
      while ((8 + text.size()) % 4 != static_cast<size_t>(pad)) text += ' ';
      std::string bytes;
      put<uint64_t>(&bytes, text.size());
      bytes += text + data;
      const MappedFile map = MappedFile::from_memory("odd.safetensors", bytes.data(), bytes.size());
      std::map<std::string, hf::SafeTensor> all;
      hf::read_safetensors(map, &all);
      ASSERT_EQ(all.count("t"), 1u);
      EXPECT_EQ(reinterpret_cast<uintptr_t>(all["t"].data) % 4, static_cast<uintptr_t>(pad));
      SourceTensor s;
      s.name = "t";
      s.shape = {1, static_cast<int64_t>(want.size())};
      s.src_type = q;
      s.data = all["t"].data;
      std::vector<float> got(want.size()), ref(want.size());
      read_source_row(s, 0, got.data());
      convert_row_to_f32(q, data.data(), ref.data(), want.size());  // aligned reference
      EXPECT_EQ(std::memcmp(got.data(), ref.data(), 4 * want.size()), 0) << dtype << " pad " << pad;
    }
  }
}

TEST(Safetensors, RejectsNonIntegerShapesAndOffsets) {
  auto parse = [](const nlohmann::json& h, size_t data_bytes) {
    const std::string bytes = safetensors_bytes(h, std::string(data_bytes, '\0'));
    std::map<std::string, hf::SafeTensor> all;
    hf::read_safetensors(MappedFile::from_memory("s.safetensors", bytes.data(), bytes.size()), &all);
  };
  // get<vector<int64_t>> turned 2.9 into 2 and accepted it.
  expect_error([&] { parse({{"t", {{"dtype", "F32"}, {"shape", {2.9}}, {"data_offsets", {0, 8}}}}}, 8); },
               {"tensor 't' dimension = 2.9"});
  expect_error([&] { parse({{"t", {{"dtype", "F32"}, {"shape", {2}}, {"data_offsets", {0.5, 8}}}}}, 8); },
               {"data_offsets[0] = 0.5"});
  expect_error([&] { parse({{"t", {{"dtype", "F32"}, {"shape", {2}}, {"data_offsets", {0, 16}}}}}, 8); },
               {"data_offsets[1] = 16", "[0, 8]"});
  expect_error([&] { parse({{"t", {{"dtype", 5}, {"shape", {2}}, {"data_offsets", {0, 8}}}}}, 8); }, {"dtype = 5"});
  expect_error([&] { parse({{"t", 5}}, 8); }, {"tensor 't': expected an object"});
}

// ---- .mxlm container -------------------------------------------------------------------------

using test::tiny_config;

TensorToWrite f32_tensor(const std::string& name, std::vector<int64_t> shape, float value) {
  TensorToWrite t;
  t.name = name;
  t.shape = shape;
  t.qtype = QType::kF32;
  t.fill = [value](uint8_t* dst, size_t bytes) {
    for (size_t i = 0; i < bytes / 4; ++i) std::memcpy(dst + 4 * i, &value, 4);
  };
  return t;
}

// A container with a bf16 matrix [3, 5] and an f32 vector [7].
std::string write_small(const std::string& name) {
  const std::string path = test::scratch_dir() + "/" + name;
  MxlmWriteInput in;
  in.config = tiny_config();
  in.tokenizer_blob = "tok";
  TensorToWrite m = f32_tensor("matrix", {3, 5}, 1.0f);
  m.qtype = QType::kBF16;
  m.fill = [](uint8_t* dst, size_t bytes) { std::memset(dst, 0x3f, bytes); };
  in.tensors = {m, f32_tensor("vector", {7}, 2.0f)};
  write_mxlm(path, in);
  return path;
}

void expect_mxlm_rejected(const std::string& path, const std::vector<std::string>& needles) {
  expect_error([&] { MxlmFile f(path); }, needles);
}

TEST(Container, RejectsMisalignedSegments) {
  const std::string src = write_small("align_src.mxlm");
  MxlmFile ok(src);  // the writer's own file is accepted
  // The f32 vector's segment 2 bytes into its (enlarged) tensor: floats read in place would be
  // misaligned.
  auto p = test::edited_mxlm(src, "align.mxlm", [](nlohmann::json& h) {
    auto& t = h["tensors"][1];
    t["bytes"] = 32;
    t["segments"][0]["offset"] = t["offset"].get<uint64_t>() + 2;
  });
  expect_mxlm_rejected(p, {"tensor 'vector'", "segment at offset", "is not 4-byte aligned", "f32"});
  // bf16 needs 2 bytes.
  p = test::edited_mxlm(src, "align2.mxlm", [](nlohmann::json& h) {
    auto& t = h["tensors"][0];
    t["bytes"] = 31;
    t["segments"][0]["offset"] = t["offset"].get<uint64_t>() + 1;
  });
  expect_mxlm_rejected(p, {"tensor 'matrix'", "is not 2-byte aligned"});
}

TEST(Container, RejectsOverlappingSegmentsAndTensors) {
  const std::string src = write_small("overlap_src.mxlm");
  // Two segments of one tensor on the same bytes (each in range, total within the tensor).
  auto p = test::edited_mxlm(src, "seg_overlap.mxlm", [](nlohmann::json& h) {
    auto& t = h["tensors"][0];
    const uint64_t off = t["offset"].get<uint64_t>();
    t["segments"] = {{{"row_begin", 0}, {"row_end", 1}, {"qtype", 2}, {"format", "bf16"}, {"offset", off}, {"bytes", 10}},
                     {{"row_begin", 1}, {"row_end", 3}, {"qtype", 2}, {"format", "bf16"}, {"offset", off}, {"bytes", 20}}};
  });
  expect_mxlm_rejected(p, {"tensor 'matrix'", "segment of rows [0, 1)", "segment of rows [1, 3)", "overlap"});
  // Two tensors on the same bytes.
  p = test::edited_mxlm(src, "tensor_overlap.mxlm", [](nlohmann::json& h) {
    const uint64_t off = h["tensors"][0]["offset"].get<uint64_t>();
    h["tensors"][1]["offset"] = off;
    h["tensors"][1]["segments"][0]["offset"] = off;
  });
  expect_mxlm_rejected(p, {"tensor 'matrix'", "tensor 'vector'", "overlap"});
  // A tensor over the tokenizer blob.
  p = test::edited_mxlm(src, "tok_overlap.mxlm", [](nlohmann::json& h) {
    h["tokenizer"]["offset"] = h["tensors"][1]["offset"];
  });
  expect_mxlm_rejected(p, {"tokenizer blob", "overlap"});
}

TEST(Container, RejectsNonIntegerAndWrappingNumbers) {
  const std::string src = write_small("num_src.mxlm");
  // get<uint64_t>() truncated 64.5 to 64 and 2^32 + crc to the crc.
  auto p = test::edited_mxlm(src, "float_off.mxlm", [](nlohmann::json& h) {
    h["tensors"][1]["offset"] = h["tensors"][1]["offset"].get<double>() + 0.5;
  });
  expect_mxlm_rejected(p, {"tensor 'vector' offset =", "not an integer"});
  p = test::edited_mxlm(src, "crc.mxlm", [](nlohmann::json& h) {
    h["tensors"][1]["crc32c"] = h["tensors"][1]["crc32c"].get<uint64_t>() + (uint64_t{1} << 32);
  });
  expect_mxlm_rejected(p, {"tensor 'vector' crc32c", "[0, 4294967295]"});
  p = test::edited_mxlm(src, "neg.mxlm", [](nlohmann::json& h) { h["tensors"][1]["segments"][0]["bytes"] = -28; });
  expect_mxlm_rejected(p, {"segment bytes = -28"});
  // rows x cols beyond 64 bits.
  p = test::edited_mxlm(src, "wrap.mxlm", [](nlohmann::json& h) { h["tensors"][0]["shape"] = {int64_t{1} << 33, int64_t{1} << 33}; });
  expect_mxlm_rejected(p, {"tensor 'matrix'", "overflows 64 bits"});
  // More outliers than weights.
  p = test::edited_mxlm(src, "nnz.mxlm", [](nlohmann::json& h) {
    h["tensors"][0]["outliers"] = {{"offset", 0}, {"bytes", 0}, {"nnz", 16}};
  });
  expect_mxlm_rejected(p, {"tensor 'matrix'", "16 outliers, more than its 15 weights"});
}

TEST(Container, WriterRefusesMisalignedSegments) {
  // A bf16 segment of 1 x 3 (6 bytes) followed by an f32 segment would put floats at +6.
  MxlmWriteInput in;
  in.config = tiny_config();
  TensorToWrite t = f32_tensor("m", {2, 3}, 0.0f);
  t.segments = {{1, QType::kBF16}, {1, QType::kF32}};
  t.fill = [](uint8_t* dst, size_t bytes) { std::memset(dst, 0, bytes); };
  in.tensors = {t};
  expect_error([&] { write_mxlm(test::scratch_dir() + "/misaligned.mxlm", in); }, {"tensor 'm'", "4-byte aligned"},
               ErrorCode::kInvalidArgument);
}

// A complete f32 model of the tiny shape (n_vocab 512, stories260K's tokenizer) whose
// output_norm is written as `norm_values` and is followed by a tensor "after" of `after_values`.
std::string write_tiny_model(const std::string& name, float norm_values, float after_values) {
  const ModelConfig c = [] {
    ModelConfig c = tiny_config(512);
    c.tied_embeddings = true;
    return c;
  }();
  using namespace tensor_names;
  MxlmWriteInput in;
  in.config = c;
  in.tokenizer_blob = slurp(test::shared_path("models/stories260K/tok512.model"));
  const int64_t E = c.n_embd, Q = int64_t{c.n_heads} * c.head_dim, KV = int64_t{c.n_kv_heads} * c.head_dim;
  // "after" (16 floats) starts at the first 64-byte boundary after output_norm's 16 bytes.
  in.tensors = {f32_tensor(kOutputNorm, {E}, norm_values), f32_tensor("after", {16}, after_values),
                f32_tensor(kTokEmbd, {c.n_vocab, E}, 0.01f), f32_tensor(layer(0, kAttnNorm), {E}, 1.0f),
                f32_tensor(layer(0, kAttnQ), {Q, E}, 0.01f), f32_tensor(layer(0, kAttnK), {KV, E}, 0.01f),
                f32_tensor(layer(0, kAttnV), {KV, E}, 0.01f), f32_tensor(layer(0, kAttnO), {E, Q}, 0.01f),
                f32_tensor(layer(0, kFfnNorm), {E}, 1.0f), f32_tensor(layer(0, kFfnGate), {c.n_ff, E}, 0.01f),
                f32_tensor(layer(0, kFfnUp), {c.n_ff, E}, 0.01f), f32_tensor(layer(0, kFfnDown), {E, c.n_ff}, 0.01f)};
  const std::string path = test::scratch_dir() + "/" + name;
  write_mxlm(path, in);
  return path;
}

TEST(ModelLoad, NormIsBoundThroughItsSegment) {
  const std::string src = write_tiny_model("norm_src.mxlm", 1.0f, 2.0f);
  {
    // Without "after" in the directory, the norm reads as written.
    auto m = Model::load(test::edited_mxlm(src, "norm_plain.mxlm", [](nlohmann::json& h) { h["tensors"].erase(1); }));
    EXPECT_EQ(m->output_norm()[0], 1.0f);
  }
  // output_norm's tensor now spans its 64 bytes and the 64 of "after" (which leaves the
  // directory), and its segment is the second half: the norm must read 2.0, not the tensor's
  // first bytes.
  const std::string p = test::edited_mxlm(src, "norm_seg.mxlm", [](nlohmann::json& h) {
    auto& ts = h["tensors"];
    const uint64_t after_off = ts[1]["offset"].get<uint64_t>();
    ts[0]["bytes"] = after_off + 64 - ts[0]["offset"].get<uint64_t>();
    ts[0]["segments"][0]["offset"] = after_off;
    ts.erase(1);
  });
  // The tensor checksum now covers other bytes; loading without verify binds it.
  auto m = Model::load(p);
  EXPECT_EQ(m->output_norm()[0], 2.0f);
  EXPECT_EQ(m->output_norm()[3], 2.0f);
  // A norm with a row map (or outliers) is refused instead of being read as if it had none.
  uint64_t row_map_at = 0;
  const std::string q = test::edited_mxlm(
      src, "norm_rowmap.mxlm",
      [&](nlohmann::json& h) {
        auto& ts = h["tensors"];
        row_map_at = ts[1]["offset"].get<uint64_t>();
        ts[0]["bytes"] = row_map_at + 64 - ts[0]["offset"].get<uint64_t>();
        ts[0]["row_map"] = {{"offset", row_map_at}, {"bytes", 4}};
        ts.erase(1);
      },
      [&](std::string& data) { std::memset(data.data() + row_map_at, 0, 4); });  // row_map = {0}
  expect_error([&] { Model::load(q); }, {"norm tensor 'output_norm'", "no row map"});
}

// ---- GGUF ------------------------------------------------------------------------------------

TEST(Gguf, NumericArraysAreTypedViewsOfTheFile) {
  // One array per numeric type, read back exactly; none is copied (each is a view into the file).
  Gguf g;
  auto array = [&](const std::string& k, uint32_t elem, const std::string& raw, uint64_t count) {
    g.key(k, 9);
    put(&g.kv, elem);
    put(&g.kv, count);
    g.kv += raw;
  };
  std::string u8s;
  for (int i = 0; i < 300; ++i) u8s.push_back(static_cast<char>(i));
  array("u8", 0, u8s, 300);
  std::string i16s;
  for (int16_t v : {int16_t{-32768}, int16_t{7}, int16_t{32767}}) put(&i16s, v);
  array("i16", 3, i16s, 3);
  std::string u64s;
  put<uint64_t>(&u64s, uint64_t{1} << 52);
  array("u64", 10, u64s, 1);
  std::string f32s;
  put(&f32s, 0.25f);
  put(&f32s, -3.5f);
  array("f32", 6, f32s, 2);
  std::string f64s;
  put(&f64s, 1e300);
  array("f64", 12, f64s, 1);
  array("bool", 7, std::string("\x01\x00\x01", 3), 3);
  const std::string bytes = g.build();
  const MappedFile map = MappedFile::from_memory("arrays.gguf", bytes.data(), bytes.size());
  const gguf::File f(MappedFile::from_memory("arrays.gguf", bytes.data(), bytes.size()));
  const auto& a = f.get("u8").numbers;
  ASSERT_EQ(a.size(), 300u);
  EXPECT_EQ(a.elem_type(), gguf::ValueType::kU8);
  EXPECT_EQ(a[0], 0.0);
  EXPECT_EQ(a[255], 255.0);
  EXPECT_EQ(a[299], 43.0);
  EXPECT_EQ(f.get("i16").numbers[0], -32768.0);
  EXPECT_EQ(f.get("i16").numbers[2], 32767.0);
  EXPECT_EQ(f.get("u64").numbers[0], 4503599627370496.0);
  EXPECT_EQ(f.get("f32").numbers[1], -3.5);
  EXPECT_EQ(f.get("f64").numbers[0], 1e300);
  EXPECT_EQ(f.get("bool").numbers[1], 0.0);
  EXPECT_EQ(gguf::value_type_size(gguf::ValueType::kU8), 1u);
  EXPECT_EQ(gguf::value_type_size(gguf::ValueType::kI64), 8u);

  // A bool array element other than 0/1 is rejected like a bool scalar.
  Gguf bad;
  bad.key("b", 9);
  put<uint32_t>(&bad.kv, 7);
  put<uint64_t>(&bad.kv, 2);
  bad.kv += std::string("\x01\x05", 2);
  const std::string bb = bad.build();
  expect_error([&] { gguf::File(MappedFile::from_memory("bool.gguf", bb.data(), bb.size())); },
               {"element 1", "bool with value 5"});
}

TEST(Gguf, LargeU8ArrayCostsNoCopy) {
  // 32 MiB of u8 elements: stored as doubles this was 256 MiB of heap; now it is the file.
  const uint64_t n = uint64_t{32} << 20;
  Gguf g;
  g.key("big", 9);
  put<uint32_t>(&g.kv, 0);
  put<uint64_t>(&g.kv, n);
  std::string bytes = g.build();
  const size_t at = bytes.size();
  bytes.resize(at + n, '\x07');
  const gguf::File f(MappedFile::from_memory("big.gguf", bytes.data(), bytes.size()));
  const gguf::Value& v = f.get("big");
  ASSERT_EQ(v.numbers.size(), n);
  EXPECT_EQ(v.numbers[n - 1], 7.0);
  EXPECT_EQ(v.numbers.bytes() - f.tensor_data(gguf::TensorInfo{}), static_cast<ptrdiff_t>(at));
  // One element short: rejected before anything is allocated.
  bytes.resize(bytes.size() - 1);
  expect_error([&] { gguf::File(MappedFile::from_memory("short.gguf", bytes.data(), bytes.size())); },
               {"array key 'big' claims 33554432 elements"});
}

TEST(Gguf, ScoresOutsideFloatRangeAreRejected) {
  Gguf g;
  g.string("tokenizer.ggml.model", "llama");
  g.key("tokenizer.ggml.tokens", 9);
  put<uint32_t>(&g.kv, 8);
  put<uint64_t>(&g.kv, 2);
  g.str(&g.kv, "<unk>");
  g.str(&g.kv, "a");
  g.key("tokenizer.ggml.scores", 9);
  put<uint32_t>(&g.kv, 12);
  put<uint64_t>(&g.kv, 2);
  put(&g.kv, 0.0);
  put(&g.kv, -1e300);  // static_cast<float> of this was undefined behaviour
  const std::string bytes = g.build();
  const gguf::File f(MappedFile::from_memory("scores.gguf", bytes.data(), bytes.size()));
  std::vector<VocabEntry> vocab;
  SpmBuildOptions opt;
  expect_error([&] { gguf::read_spm_vocab(f, &vocab, &opt); }, {"token 1 ('a') has score", "not a finite float32"});
}

// ---- llama2.c --------------------------------------------------------------------------------

TEST(Llama2c, TokenizerVocabularyIsBoundedByTheFile) {
  // A model header may claim 2^24 tokens: the reader reserved that many entries (~1 GiB)
  // before reading the first one.
  const std::string bin = slurp(test::shared_path("models/stories260K/tok512.bin"));
  expect_error([&] { parse_llama2c_tokenizer(bin, 1 << 24, "tok.bin"); },
               {"tok.bin", "vocabulary of 16777216 tokens needs at least 134217732 bytes", "6227"});
  EXPECT_EQ(parse_llama2c_tokenizer(bin, 512, "tok.bin").size(), 512u);
  expect_error([&] { parse_llama2c_tokenizer("", 1, "empty.bin"); }, {"empty.bin"});
}

TEST(Llama2c, MostNegativeVocabSizeIsAnError) {
  // -INT32_MIN overflowed (UB) when the legacy header's negative vocab size was negated.
  std::string s;
  for (int32_t x : {8, 16, 1, 2, 1, INT32_MIN, 4}) put(&s, x);
  s.resize(4096, '\0');
  auto map = std::make_shared<const MappedFile>(MappedFile::from_memory("min.bin", s.data(), s.size()));
  expect_error([&] { import_llama2c(map, {}); }, {"min.bin", "n_vocab = 0"});
}

TEST(SpmModel, EmptyPieceIsAnErrorNotACrash) {
  // Found by fuzz/fuzz_spm (kept as fuzz/corpus/spm/seed_found_empty_piece): the second piece
  // starts with a NUL byte, an empty key to sentencepiece's trie builder, which threw
  // Darts::Details::Exception out of LoadFromSerializedProto and terminated the process.
  const std::string crash("\x0a\x0e\x0a\x05<unk>\x15\x00\x00\x00\x00\x18\x02\x0a\x0c\x0a\x0a\x00\x00\x00\x25"
                          "\x1a\xff\xff\xff\x00\x00\x28\x3e\x15\x00\x01\x00\x3e",
                          37);
  expect_error([&] { Tokenizer::from_spm_proto(crash); }, {"piece 1 is empty or contains a NUL byte"});
  // A well-formed model whose second piece is "" (written field by field).
  std::string proto;
  auto piece = [&](const std::string& p, int type) {
    std::string msg = "\x0a" + std::string(1, static_cast<char>(p.size())) + p + "\x18" + std::string(1, static_cast<char>(type));
    proto += "\x0a" + std::string(1, static_cast<char>(msg.size())) + msg;
  };
  piece("<unk>", 2);
  piece("", 1);
  expect_error([&] { Tokenizer::from_spm_proto(proto); }, {"piece 1 is empty or contains a NUL byte"});
  EXPECT_GT(Tokenizer::from_spm_proto(slurp(test::shared_path("models/stories260K/tok512.model")))->n_vocab(), 0);
}

TEST(MappedFile, FromMemoryCopiesAndAligns) {
  const std::string bytes = "hello";
  MappedFile m = MappedFile::from_memory("mem", bytes.data(), bytes.size());
  EXPECT_EQ(m.size(), 5u);
  EXPECT_EQ(m.path(), "mem");
  EXPECT_EQ(reinterpret_cast<uintptr_t>(m.data()) % 64, 0u);
  EXPECT_EQ(std::memcmp(m.data(), "hello", 5), 0);
  MappedFile moved = std::move(m);
  EXPECT_EQ(moved.size(), 5u);
  EXPECT_EQ(m.data(), nullptr);
  EXPECT_EQ(MappedFile::from_memory("empty", "", 0).data(), nullptr);
}

}  // namespace
}  // namespace mxlm
