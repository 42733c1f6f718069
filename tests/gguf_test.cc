// GGUF reader: the stories260K tensor table, and rejection of truncated or corrupt files
// (each must throw mxlm::Error naming the problem, never crash or allocate wildly).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "base/error.h"
#include "model/file_util.h"
#include "model/gguf.h"
#include "tests/test_util.h"

namespace mxlm {
namespace {

const char* kStories = "models/stories260K/stories260K.gguf";

std::string write_scratch(const std::string& name, const std::string& bytes) {
  const std::string path = test::scratch_dir() + "/" + name;
  AtomicFile f(path);
  f.write(bytes.data(), bytes.size());
  f.commit();
  return path;
}

// Expects gguf::File(path) to throw Error with `code` and a message containing `needle`.
void expect_rejected(const std::string& path, const std::string& needle, ErrorCode code = ErrorCode::kFormat) {
  try {
    gguf::File f(path);
    ADD_FAILURE() << path << " was accepted (expected an error containing '" << needle << "')";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), code) << e.what();
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << "message: " << e.what();
  }
}

// Builds small GGUF files byte by byte.
class GgufBuilder {
 public:
  explicit GgufBuilder(uint32_t version = 3) {
    header_.append("GGUF");
    put(&header_, version);
  }
  template <typename T>
  static void put(std::string* s, T v) {
    s->append(reinterpret_cast<const char*>(&v), sizeof(T));
  }
  static void put_str(std::string* s, const std::string& v) {
    put<uint64_t>(s, v.size());
    s->append(v);
  }
  void kv_u32(const std::string& key, uint32_t v) {
    put_str(&kv_, key);
    put<uint32_t>(&kv_, 4);
    put(&kv_, v);
    ++n_kv_;
  }
  void kv_raw(const std::string& key, uint32_t type, const std::string& value_bytes) {
    put_str(&kv_, key);
    put<uint32_t>(&kv_, type);
    kv_.append(value_bytes);
    ++n_kv_;
  }
  void tensor(const std::string& name, std::vector<uint64_t> ne, uint32_t type, uint64_t offset) {
    put_str(&ti_, name);
    put<uint32_t>(&ti_, static_cast<uint32_t>(ne.size()));
    for (uint64_t d : ne) put(&ti_, d);
    put(&ti_, type);
    put(&ti_, offset);
    ++n_tensors_;
  }
  // data_bytes of tensor data after the padding to `alignment`.
  std::string build(size_t data_bytes, uint32_t alignment = 32) const {
    std::string s = header_;
    put<uint64_t>(&s, n_tensors_);
    put<uint64_t>(&s, n_kv_);
    s += kv_ + ti_;
    while (s.size() % alignment) s.push_back('\0');
    s.append(data_bytes, '\x01');
    return s;
  }

 private:
  std::string header_, kv_, ti_;
  uint64_t n_kv_ = 0, n_tensors_ = 0;
};

TEST(Gguf, Stories260KTensorTable) {
  gguf::File f(test::shared_path(kStories));
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.alignment(), 32u);
  EXPECT_EQ(f.get("general.architecture").as_string("general.architecture"), "llama");
  EXPECT_EQ(f.get("llama.embedding_length").as_int("llama.embedding_length"), 64);
  EXPECT_EQ(f.get("llama.block_count").as_int("llama.block_count"), 5);
  EXPECT_EQ(f.get("llama.attention.head_count_kv").as_int("llama.attention.head_count_kv"), 4);
  EXPECT_NEAR(f.get("llama.attention.layer_norm_rms_epsilon").as_float("eps"), 1e-5, 1e-9);
  EXPECT_EQ(f.find("no.such.key"), nullptr);
  EXPECT_THROW(f.get("no.such.key"), Error);
  EXPECT_THROW(f.get("general.architecture").as_int("general.architecture"), Error);
  EXPECT_THROW(f.get("llama.block_count").as_string("llama.block_count"), Error);
  const gguf::Value& tokens = f.get("tokenizer.ggml.tokens");
  EXPECT_EQ(tokens.type, gguf::ValueType::kArray);
  EXPECT_EQ(tokens.elem_type, gguf::ValueType::kString);
  ASSERT_EQ(tokens.strings.size(), 512u);
  EXPECT_EQ(tokens.strings[1], "<s>");
  EXPECT_EQ(f.get("tokenizer.ggml.scores").numbers.size(), 512u);

  ASSERT_EQ(f.tensors().size(), 48u);  // 3 + 5 layers x 9
  const gguf::TensorInfo* emb = f.find_tensor("token_embd.weight");
  ASSERT_NE(emb, nullptr);
  EXPECT_EQ(emb->type, gguf::kGgmlF32);
  EXPECT_EQ(emb->ne, (std::vector<uint64_t>{64, 512}));
  EXPECT_EQ(emb->bytes, 64u * 512u * 4u);
  EXPECT_EQ(emb->offset % 32, 0u);
  const gguf::TensorInfo* norm = f.find_tensor("output_norm.weight");
  ASSERT_NE(norm, nullptr);
  EXPECT_EQ(norm->ne, (std::vector<uint64_t>{64}));
  const gguf::TensorInfo* down = f.find_tensor("blk.4.ffn_down.weight");
  ASSERT_NE(down, nullptr);
  EXPECT_EQ(down->ne, (std::vector<uint64_t>{172, 64}));
  EXPECT_EQ(f.find_tensor("blk.5.ffn_down.weight"), nullptr);
  uint64_t total = 0;
  for (const auto& t : f.tensors()) {
    EXPECT_EQ(t.type, gguf::kGgmlF32) << t.name;
    EXPECT_LE(t.offset + t.bytes, 1185376u) << t.name;
    total += t.bytes;
  }
  EXPECT_GT(total, 1000000u);
  float first[4];
  std::memcpy(first, f.tensor_data(*emb), sizeof(first));
  for (float x : first) EXPECT_TRUE(std::isfinite(x) && std::fabs(x) < 100.0f) << x;

  std::vector<VocabEntry> vocab;
  SpmBuildOptions opt;
  gguf::read_spm_vocab(f, &vocab, &opt);
  EXPECT_EQ(vocab.size(), 512u);
  EXPECT_EQ(opt.unk_id, 0);
  EXPECT_EQ(opt.bos_id, 1);
  EXPECT_EQ(opt.eos_id, 2);
  EXPECT_EQ(opt.pad_id, -1);  // stored as u32 0xFFFFFFFF
  EXPECT_TRUE(opt.byte_fallback);
  EXPECT_TRUE(opt.add_dummy_prefix);
  EXPECT_EQ(vocab[3].type, VocabEntry::kByte);
  EXPECT_EQ(vocab[3].piece, "<0x00>");
}

TEST(Gguf, TypeNames) {
  EXPECT_STREQ(gguf::ggml_type_name(0), "F32");
  EXPECT_STREQ(gguf::ggml_type_name(1), "F16");
  EXPECT_STREQ(gguf::ggml_type_name(2), "Q4_0");
  EXPECT_STREQ(gguf::ggml_type_name(8), "Q8_0");
  EXPECT_STREQ(gguf::ggml_type_name(12), "Q4_K");
  EXPECT_STREQ(gguf::ggml_type_name(30), "BF16");
  EXPECT_STREQ(gguf::ggml_type_name(4), "unknown");  // removed Q4_2
  EXPECT_STREQ(gguf::ggml_type_name(1000), "unknown");
}

TEST(Gguf, VocabOnlyFileWithoutTensors) {
  gguf::File f(test::shared_path("tokenizers/llamacpp-vocab/ggml-vocab-llama-spm.gguf"));
  EXPECT_TRUE(f.tensors().empty());
  EXPECT_EQ(f.get("tokenizer.ggml.tokens").strings.size(), 32000u);
  EXPECT_TRUE(f.get("tokenizer.ggml.add_bos_token").as_bool("tokenizer.ggml.add_bos_token"));
}

TEST(Gguf, RejectsTruncatedFiles) {
  const std::string data = read_file(test::shared_path(kStories));
  std::vector<size_t> sizes = {0, 1, 3, 4, 7, 8, 15, 16, 23, 24, 25, 31, 32, 40, 100, 1000, 5000, 10000,
                               14151, 14152, 14160, 20000, data.size() / 2, data.size() - 4, data.size() - 1};
  for (size_t n = 0; n < 14200; n += 97) sizes.push_back(n);
  for (size_t n : sizes) {
    const std::string path = write_scratch("trunc.gguf", data.substr(0, n));
    try {
      gguf::File f(path);
      ADD_FAILURE() << "a copy truncated to " << n << " bytes was accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kFormat) << n << ": " << e.what();
      const std::string msg = e.what();
      EXPECT_NE(msg.find("trunc.gguf"), std::string::npos) << msg;
      EXPECT_TRUE(msg.find("truncated") != std::string::npos || msg.find("past the end") != std::string::npos ||
                  msg.find("too short") != std::string::npos || msg.find("remain") != std::string::npos ||
                  msg.find("cannot fit") != std::string::npos)
          << n << ": " << msg;
    }
  }
}

TEST(Gguf, RejectsBadMagicAndVersion) {
  const std::string data = read_file(test::shared_path(kStories));
  std::string bad = data;
  bad[3] = 'X';
  expect_rejected(write_scratch("magic.gguf", bad), "magic 'GGUX'");
  bad = data;
  std::memcpy(bad.data(), "\x7f" "ELF", 4);
  expect_rejected(write_scratch("elf.gguf", bad), "not a GGUF file");
  for (uint32_t v : {0u, 1u, 4u, 99u}) {
    bad = data;
    std::memcpy(bad.data() + 4, &v, 4);
    expect_rejected(write_scratch("version.gguf", bad), "version " + std::to_string(v) + " (expected 2 or 3)");
  }
  bad = data;
  const uint32_t be3 = 0x03000000;
  std::memcpy(bad.data() + 4, &be3, 4);
  expect_rejected(write_scratch("bigendian.gguf", bad), "big-endian");
  // Version 2 has the same layout.
  bad = data;
  const uint32_t v2 = 2;
  std::memcpy(bad.data() + 4, &v2, 4);
  gguf::File f(write_scratch("v2.gguf", bad));
  EXPECT_EQ(f.version(), 2u);
}

TEST(Gguf, RejectsHugeCounts) {
  const std::string data = read_file(test::shared_path(kStories));
  std::string bad = data;
  const uint64_t huge = 0x0FFFFFFFFFFFFFFFull;
  std::memcpy(bad.data() + 8, &huge, 8);  // tensor count
  expect_rejected(write_scratch("ntensors.gguf", bad), "tensor count");
  bad = data;
  std::memcpy(bad.data() + 16, &huge, 8);  // key/value count
  expect_rejected(write_scratch("nkv.gguf", bad), "key/value count");
  bad = data;
  std::memcpy(bad.data() + 24, &huge, 8);  // length of the first key
  expect_rejected(write_scratch("keylen.gguf", bad), "length");

  // An array whose count is far larger than the file.
  for (uint64_t count : {uint64_t{1} << 60, uint64_t{1} << 62, ~uint64_t{0}, uint64_t{1000000}}) {
    for (uint32_t elem : {0u, 6u, 8u, 12u}) {
      GgufBuilder b;
      std::string v;
      GgufBuilder::put<uint32_t>(&v, elem);
      GgufBuilder::put<uint64_t>(&v, count);
      v.append(64, '\0');
      b.kv_raw("big.array", 9, v);
      expect_rejected(write_scratch("array.gguf", b.build(0)), "array key 'big.array' claims");
    }
  }
  // A string whose length runs past the end.
  GgufBuilder b;
  std::string v;
  GgufBuilder::put<uint64_t>(&v, 1ull << 40);
  v.append("abc");
  b.kv_raw("a.string", 8, v);
  expect_rejected(write_scratch("string.gguf", b.build(0)), "only");
}

TEST(Gguf, ValidatesTensorInfos) {
  {
    GgufBuilder b;
    b.kv_u32("general.alignment", 64);
    b.tensor("a", {4, 2}, 0, 0);
    b.tensor("b", {32}, 8, 64);  // Q8_0: one block of 34 bytes
    gguf::File f(write_scratch("ok.gguf", b.build(100, 64)));
    EXPECT_EQ(f.alignment(), 64u);
    ASSERT_EQ(f.tensors().size(), 2u);
    EXPECT_EQ(f.tensors()[0].bytes, 32u);
    EXPECT_EQ(f.tensors()[1].bytes, 34u);
    EXPECT_EQ(f.tensors()[1].offset, f.tensors()[0].offset + 64);
    EXPECT_EQ(f.tensors()[0].offset % 64, 0u);
  }
  struct Case {
    const char* name;
    std::vector<uint64_t> ne;
    uint32_t type;
    uint64_t offset;
    size_t data;
    const char* needle;
  };
  const std::vector<Case> cases = {
      {"past_end", {16}, 0, 1u << 20, 64, "past the end"},
      {"too_big", {1000}, 0, 0, 64, "past the end"},
      {"huge_offset", {16}, 0, ~uint64_t{0} - 31, 64, "offset"},
      {"misaligned", {4}, 0, 4, 64, "not a multiple of the alignment"},
      {"five_dims", {1, 1, 1, 1, 1}, 0, 0, 64, "5 dimensions"},
      {"no_dims", {}, 0, 0, 64, "0 dimensions"},
      {"zero_dim", {4, 0}, 0, 0, 64, "must be positive"},
      {"overflow", {1ull << 40, 1ull << 40}, 0, 0, 64, "overflows"},
      {"bytes_overflow", {1ull << 62, 1}, 0, 0, 64, "overflows"},
      {"removed_type", {4}, 4, 0, 64, "unknown or removed ggml type 4"},
      {"unknown_type", {4}, 1000, 0, 64, "ggml type 1000"},
      {"partial_block", {33}, 2, 0, 64, "not a multiple of the block size 32"},
  };
  for (const Case& c : cases) {
    GgufBuilder b;
    b.tensor(c.name, c.ne, c.type, c.offset);
    expect_rejected(write_scratch(std::string(c.name) + ".gguf", b.build(c.data)), c.needle);
  }
  {
    GgufBuilder b;
    b.tensor("a", {16}, 0, 0);
    b.tensor("b", {16}, 0, 32);  // a is 64 bytes: overlaps b
    expect_rejected(write_scratch("overlap.gguf", b.build(256)), "overlap");
  }
  {
    GgufBuilder b;
    b.tensor("same", {4}, 0, 0);
    b.tensor("same", {4}, 0, 32);
    expect_rejected(write_scratch("dupname.gguf", b.build(256)), "duplicate tensor name 'same'");
  }
  {
    GgufBuilder b;
    b.kv_u32("general.alignment", 48);
    b.tensor("a", {4}, 0, 0);
    expect_rejected(write_scratch("align.gguf", b.build(256)), "general.alignment 48");
  }
}

TEST(Gguf, ValidatesKeyValues) {
  {
    GgufBuilder b;
    b.kv_u32("x", 1);
    b.kv_u32("x", 2);
    expect_rejected(write_scratch("dupkey.gguf", b.build(0)), "duplicate key 'x'");
  }
  {
    GgufBuilder b;
    b.kv_raw("flag", 7, std::string(1, '\x02'));
    expect_rejected(write_scratch("bool.gguf", b.build(0)), "bool with value 2");
  }
  {
    GgufBuilder b;
    b.kv_raw("weird", 13, std::string(8, '\0'));
    expect_rejected(write_scratch("vtype.gguf", b.build(0)), "unknown value type 13");
  }
  {
    GgufBuilder b;
    std::string v;
    GgufBuilder::put<uint32_t>(&v, 9);  // array of arrays
    GgufBuilder::put<uint64_t>(&v, 1);
    GgufBuilder::put<uint32_t>(&v, 0);
    GgufBuilder::put<uint64_t>(&v, 0);
    b.kv_raw("nested", 9, v);
    expect_rejected(write_scratch("nested.gguf", b.build(0)), "nested", ErrorCode::kUnsupported);
  }
  {
    GgufBuilder b;
    std::string v;
    GgufBuilder::put<uint64_t>(&v, ~uint64_t{0});
    b.kv_raw("big", 10, v);
    std::string s;
    GgufBuilder::put<int32_t>(&s, -5);
    b.kv_raw("neg", 5, s);
    gguf::File f(write_scratch("ints.gguf", b.build(0)));
    EXPECT_THROW(f.get("big").as_int("big"), Error);
    EXPECT_DOUBLE_EQ(f.get("big").as_float("big"), 18446744073709551615.0);
    EXPECT_EQ(f.get("neg").as_int("neg"), -5);
    EXPECT_THROW(f.get("neg").as_bool("neg"), Error);
  }
}

// Random corruption of the metadata region: the reader must either accept the file or throw
// mxlm::Error, never crash (run under ASan/UBSan for the strong form of this check).
TEST(Gguf, SurvivesRandomCorruption) {
  const std::string data = read_file(test::shared_path(kStories));
  std::mt19937 rng(1234);
  int rejected = 0;
  for (int iter = 0; iter < 300; ++iter) {
    std::string bad = data;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < flips; ++k) {
      const size_t pos = rng() % 14152;  // the header, key/values and tensor infos
      bad[pos] = static_cast<char>(rng() & 0xff);
    }
    const std::string path = write_scratch("fuzz.gguf", bad);
    try {
      gguf::File f(path);
    } catch (const Error& e) {
      ++rejected;
      EXPECT_NE(std::string(e.what()).find("fuzz.gguf"), std::string::npos) << e.what();
    }
  }
  EXPECT_GT(rejected, 0);
}

}  // namespace
}  // namespace mxlm
