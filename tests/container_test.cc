// The .mxlm container: round trip, checksums and rejection of corrupt files.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "base/error.h"
#include "model/checksum.h"
#include "model/mxlm_file.h"
#include "tests/container_util.h"
#include "tests/test_util.h"

namespace mxlm {
namespace {

using test::tiny_config;

std::string write_tiny(const std::string& name) {
  const std::string path = test::scratch_dir() + "/" + name;
  MxlmWriteInput in;
  in.config = tiny_config();
  in.tokenizer_blob = "not-a-real-tokenizer";
  in.provenance = {{"source", "unit test"}};
  TensorToWrite a;
  a.name = "matrix";
  a.shape = {3, 5};
  a.qtype = QType::kBF16;
  a.fill = [](uint8_t* dst, size_t bytes) {
    for (size_t i = 0; i < bytes / 2; ++i) {
      uint16_t v = f32_to_bf16(0.5f * static_cast<float>(i));
      std::memcpy(dst + 2 * i, &v, 2);
    }
  };
  TensorToWrite b;
  b.name = "vector";
  b.shape = {7};
  b.qtype = QType::kF32;
  b.fill = [](uint8_t* dst, size_t bytes) {
    for (size_t i = 0; i < bytes / 4; ++i) {
      float v = -1.0f * static_cast<float>(i);
      std::memcpy(dst + 4 * i, &v, 4);
    }
  };
  in.tensors = {a, b};
  write_mxlm(path, in);
  return path;
}

using test::dump;
using test::slurp;

// Expects opening (and verifying) `path` to throw an Error whose message contains `needle`.
void expect_rejected(const std::string& path, const std::string& needle) {
  try {
    MxlmFile f(path);
    f.verify();
    FAIL() << "no error for " << path << " (expected '" << needle << "')";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << "message: " << e.what();
  }
}

TEST(Crc32c, KnownVector) {
  EXPECT_EQ(crc32c("123456789", 9), 0xE3069283u);
  EXPECT_EQ(crc32c("", 0), 0u);
  // Continuation equals one pass.
  EXPECT_EQ(crc32c("6789", 4, crc32c("12345", 5)), 0xE3069283u);
}

TEST(Container, RoundTrip) {
  const std::string path = write_tiny("round.mxlm");
  MxlmFile f(path);
  EXPECT_EQ(f.version(), kMxlmVersion);
  EXPECT_EQ(f.config().n_embd, 4);
  EXPECT_EQ(f.tokenizer_blob(), "not-a-real-tokenizer");
  EXPECT_EQ(f.tokenizer_kind(), "sentencepiece");
  ASSERT_EQ(f.tensors().size(), 2u);
  const TensorEntry* m = f.find("matrix");
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(m->shape, (std::vector<int64_t>{3, 5}));
  EXPECT_EQ(m->qtype(), QType::kBF16);
  EXPECT_EQ(m->bytes, 30u);
  EXPECT_EQ(m->offset % kMxlmAlign, 0u);
  uint16_t v;
  std::memcpy(&v, m->data + 2 * 7, 2);
  EXPECT_EQ(bf16_to_f32(v), 3.5f);
  const TensorEntry* vec = f.find("vector");
  ASSERT_NE(vec, nullptr);
  EXPECT_EQ(reinterpret_cast<const float*>(vec->data)[6], -6.0f);
  EXPECT_EQ(f.header()["provenance"]["source"], "unit test");
  EXPECT_NO_THROW(f.verify());
}

TEST(Container, WriteIsAtomic) {
  const std::string path = test::scratch_dir() + "/atomic.mxlm";
  dump(path, "precious");
  MxlmWriteInput in;
  in.config = tiny_config();
  TensorToWrite t;
  t.name = "boom";
  t.shape = {2};
  t.qtype = QType::kF32;
  t.fill = [](uint8_t*, size_t) { throw Error(ErrorCode::kIo, "simulated failure"); };
  in.tensors = {t};
  EXPECT_THROW(write_mxlm(path, in), Error);
  EXPECT_EQ(slurp(path), "precious");  // the old file is untouched, no temporary left behind
  int count = 0;
  for (auto& e : std::filesystem::directory_iterator(test::scratch_dir())) {
    if (e.path().filename().string().find("atomic.mxlm.tmp") != std::string::npos) ++count;
  }
  EXPECT_EQ(count, 0);
}

TEST(Container, RejectsTruncated) {
  const std::string src = write_tiny("trunc_src.mxlm");
  const std::string bytes = slurp(src);
  for (size_t n : {size_t{0}, size_t{10}, size_t{63}, size_t{64}, size_t{200}, bytes.size() - 1}) {
    const std::string p = test::scratch_dir() + "/trunc.mxlm";
    dump(p, bytes.substr(0, n));
    expect_rejected(p, "truncated");
  }
}

TEST(Container, RejectsWrongMagicAndVersion) {
  std::string bytes = slurp(write_tiny("magic_src.mxlm"));
  std::string bad = bytes;
  bad[0] = 'X';
  dump(test::scratch_dir() + "/magic.mxlm", bad);
  expect_rejected(test::scratch_dir() + "/magic.mxlm", "wrong magic");
  bad = bytes;
  uint32_t v = 99;
  std::memcpy(bad.data() + 8, &v, 4);
  dump(test::scratch_dir() + "/version.mxlm", bad);
  expect_rejected(test::scratch_dir() + "/version.mxlm", "unsupported .mxlm version 99");
}

TEST(Container, RejectsCorruptHeader) {
  std::string bytes = slurp(write_tiny("hdr_src.mxlm"));
  uint64_t hoff;
  std::memcpy(&hoff, bytes.data() + 16, 8);
  bytes[hoff + 3] ^= 0x20;
  dump(test::scratch_dir() + "/hdr.mxlm", bytes);
  expect_rejected(test::scratch_dir() + "/hdr.mxlm", "header checksum mismatch");
}

TEST(Container, RejectsOffsetsPastTheEnd) {
  const std::string src = write_tiny("off_src.mxlm");
  auto p = test::edited_mxlm(src, "off.mxlm", [](nlohmann::json& h) {
    h["tensors"][0]["offset"] = uint64_t{1} << 40;
    h["tensors"][0]["segments"][0]["offset"] = uint64_t{1} << 40;
  });
  expect_rejected(p, "tensor 'matrix': data at offset 1099511627776");
  p = test::edited_mxlm(src, "off2.mxlm", [](nlohmann::json& h) { h["tensors"][1]["bytes"] = ~uint64_t{0} - 10; });
  expect_rejected(p, "tensor 'vector'");
  p = test::edited_mxlm(src, "tok.mxlm", [](nlohmann::json& h) { h["tokenizer"]["bytes"] = uint64_t{1} << 50; });
  expect_rejected(p, "tokenizer blob");
}

TEST(Container, RejectsOverflowingShapes) {
  const std::string src = write_tiny("shape_src.mxlm");
  auto p = test::edited_mxlm(src, "shape.mxlm", [](nlohmann::json& h) { h["tensors"][0]["shape"] = {int64_t{1} << 39, int64_t{1} << 39}; });
  expect_rejected(p, "tensor 'matrix'");
  p = test::edited_mxlm(src, "shape2.mxlm", [](nlohmann::json& h) { h["tensors"][0]["shape"] = {3, -5}; });
  expect_rejected(p, "dimension = -5");
  p = test::edited_mxlm(src, "shape3.mxlm", [](nlohmann::json& h) { h["tensors"][0]["shape"] = {4, 5}; });
  expect_rejected(p, "tensor 'matrix'");
}

TEST(Container, RejectsUnknownFormatAndBadConfig) {
  const std::string src = write_tiny("fmt_src.mxlm");
  auto p = test::edited_mxlm(src, "fmt.mxlm", [](nlohmann::json& h) { h["tensors"][0]["segments"][0]["qtype"] = 250; });
  expect_rejected(p, "unknown format id 250");
  p = test::edited_mxlm(src, "cfg.mxlm", [](nlohmann::json& h) { h["config"]["arch"] = "gpt-j"; });
  expect_rejected(p, "unknown architecture 'gpt-j'");
  p = test::edited_mxlm(src, "cfg2.mxlm", [](nlohmann::json& h) { h["config"]["n_kv_heads"] = 3; });
  expect_rejected(p, "n_kv_heads");
  p = test::edited_mxlm(src, "json.mxlm", [](nlohmann::json& h) { h.erase("tensors"); });
  expect_rejected(p, "lacks 'config' or 'tensors'");
}

TEST(Container, VerifyFindsCorruptTensor) {
  std::string bytes = slurp(write_tiny("crc_src.mxlm"));
  MxlmFile good(test::scratch_dir() + "/crc_src.mxlm");
  const uint64_t off = good.find("vector")->offset;
  bytes[off + 5] ^= 1;
  const std::string p = test::scratch_dir() + "/crc.mxlm";
  dump(p, bytes);
  MxlmFile f(p);  // opening does not read the data
  try {
    f.verify();
    FAIL() << "verify passed on a corrupt tensor";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("checksum mismatch in tensor 'vector'"), std::string::npos) << e.what();
  }
}

TEST(Container, MissingFile) {
  try {
    MxlmFile f(test::scratch_dir() + "/does-not-exist.mxlm");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kIo);
    EXPECT_NE(std::string(e.what()).find("does-not-exist.mxlm"), std::string::npos);
  }
}

TEST(Float16, RoundTripsEveryHalf) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = f16_to_f32(static_cast<uint16_t>(h));
    if (f != f) continue;  // NaN
    ASSERT_EQ(f32_to_f16(f), h) << "half " << h;
  }
  EXPECT_EQ(f32_to_f16(1.0f + 1.0f / 4096), f32_to_f16(1.0f));  // ties to even
  EXPECT_EQ(f32_to_bf16(1.0f + 1.0f / 256), f32_to_bf16(1.0f));
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(3.140625f)), 3.140625f);
}

}  // namespace
}  // namespace mxlm
