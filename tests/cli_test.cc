// The mxlm binary as a user runs it: convert, inspect, run, ppl, and its errors.
#include <gtest/gtest.h>

#include <fstream>

#include "tests/test_util.h"

namespace mxlm {
namespace {

std::string mxlm(const std::string& args, int* status) {
  std::string out;
  *status = test::run_command(test::mxlm_binary() + " " + args, &out);
  return out;
}

std::string converted_stories() {
  static std::string path;
  if (path.empty()) {
    path = test::scratch_dir() + "/cli_stories.mxlm";
    int st;
    std::string out = mxlm("convert " + test::shared_path("models/stories260K/stories260K.gguf") + " -o " + path + " --dtype f32 -q", &st);
    EXPECT_EQ(st, 0) << out;
  }
  return path;
}

TEST(Cli, ConvertInspectVerify) {
  const std::string m = converted_stories();
  int st;
  std::string out = mxlm("inspect " + m + " --verify", &st);
  EXPECT_EQ(st, 0) << out;
  EXPECT_NE(out.find("blk.4.ffn_down"), std::string::npos) << out;
  EXPECT_NE(out.find("172"), std::string::npos);  // hidden size 172 appears in shapes
  EXPECT_NE(out.find("verified"), std::string::npos);
  EXPECT_NE(out.find("isa:"), std::string::npos);
}

TEST(Cli, RunGreedyMatchesLlama2c) {
  const std::string m = converted_stories();
  int st;
  std::string out;
  st = test::run_command(test::mxlm_binary() + " run -m " + m + " -p 'Once upon a time' -n 60 --temp 0 2>/dev/null", &out, false);
  ASSERT_EQ(st, 0) << out;
  std::ifstream f(test::shared_path("ref/stories260K/stories260K_t0_n64_once.txt"), std::ios::binary);
  const std::string want((std::istreambuf_iterator<char>(f)), {});
  EXPECT_EQ(out, want);
}

TEST(Cli, RunReportsSpeed) {
  int st;
  std::string out = mxlm("run -m " + converted_stories() + " -p 'Once upon a time' -n 8 --temp 0.8 --seed 7 -t 1", &st);
  EXPECT_EQ(st, 0) << out;
  EXPECT_NE(out.find("tok/s"), std::string::npos) << out;
}

TEST(Cli, ErrorsAreClear) {
  int st;
  std::string out = mxlm("run -m " + converted_stories() + " -p ''", &st);
  EXPECT_EQ(st, 1);
  EXPECT_NE(out.find("empty prompt"), std::string::npos) << out;

  const std::string bad = test::scratch_dir() + "/bad_utf8.txt";
  std::ofstream(bad, std::ios::binary) << "bad \xff byte";
  out = mxlm("run -m " + converted_stories() + " -f " + bad, &st);
  EXPECT_EQ(st, 1);
  EXPECT_NE(out.find("not valid UTF-8"), std::string::npos) << out;

  std::string long_prompt;
  for (int i = 0; i < 600; ++i) long_prompt += "the ";
  out = mxlm("run -m " + converted_stories() + " -c 256 -p '" + long_prompt + "'", &st);
  EXPECT_EQ(st, 1);
  EXPECT_NE(out.find("does not fit the context of 256"), std::string::npos) << out;

  out = mxlm("run -m " + test::scratch_dir() + "/missing.mxlm -p hi", &st);
  EXPECT_EQ(st, 1);
  EXPECT_NE(out.find("missing.mxlm"), std::string::npos) << out;

  // A model file that is not an .mxlm file.
  out = mxlm("inspect " + test::shared_path("models/stories260K/stories260K.gguf"), &st);
  EXPECT_EQ(st, 1);
  EXPECT_NE(out.find("wrong magic"), std::string::npos) << out;

  // A failed convert leaves an existing output untouched.
  const std::string keep = test::scratch_dir() + "/keep.mxlm";
  std::ofstream(keep) << "precious";
  out = mxlm("convert " + test::shared_path("models/stories260K/stories260K.bin") + " -o " + keep, &st);
  EXPECT_EQ(st, 1);
  EXPECT_NE(out.find("--tokenizer"), std::string::npos) << out;
  std::ifstream k(keep);
  std::string content;
  k >> content;
  EXPECT_EQ(content, "precious");
}

TEST(Cli, ForcedIsaAndVerboseKernels) {
  int st;
  std::string out = mxlm("run -m " + converted_stories() + " -p 'Once upon a time' -n 4 --temp 0 -v", &st);
  ASSERT_EQ(st, 0) << out;
  EXPECT_NE(out.find("isa "), std::string::npos) << out;
  EXPECT_NE(out.find("kernels:"), std::string::npos) << out;
  out = mxlm("run -m " + converted_stories() + " -p 'Once upon a time' -n 4 --temp 0", &st);
  std::string forced;
  st = test::run_command("MXLM_ISA=ref " + test::mxlm_binary() + " run -m " + converted_stories() +
                             " -p 'Once upon a time' -n 4 --temp 0 2>/dev/null", &forced, false);
  EXPECT_EQ(st, 0);
  EXPECT_EQ(out.substr(0, out.find('\n')), forced.substr(0, forced.find('\n')));
  st = test::run_command("MXLM_ISA=neon " + test::mxlm_binary() + " inspect " + converted_stories(), &out);
  EXPECT_EQ(st, 1);
  EXPECT_NE(out.find("neon"), std::string::npos) << out;
  st = test::run_command("MXLM_ISA=sse9 " + test::mxlm_binary() + " inspect " + converted_stories(), &out);
  EXPECT_EQ(st, 1);
  EXPECT_NE(out.find("sse9"), std::string::npos) << out;
}

TEST(Cli, QuantizeInspectRun) {
  int st;
  const std::string q = test::scratch_dir() + "/cli_q8.mxlm";
  std::string out = mxlm("quantize " + test::shared_path("models/stories260K/stories260K.gguf") + " -o " + q + " --qtype q8_g32 -q", &st);
  ASSERT_EQ(st, 0) << out;
  out = mxlm("inspect " + q + " --verify", &st);
  EXPECT_EQ(st, 0) << out;
  EXPECT_NE(out.find("q8_g32"), std::string::npos) << out;
  out = mxlm("run -m " + q + " -p 'Once upon a time' -n 20 --temp 0", &st);
  EXPECT_EQ(st, 0) << out;
  EXPECT_NE(out.find("Once upon a time, there was a little girl"), std::string::npos) << out;
  out = mxlm("quantize " + test::shared_path("models/stories260K/stories260K.gguf") + " -o " + q + " --qtype q7_g32", &st);
  EXPECT_EQ(st, 1);
  EXPECT_NE(out.find("q7_g32 is not a format"), std::string::npos) << out;
}

TEST(Cli, PplJson) {
  int st;
  std::string out;
  st = test::run_command(test::mxlm_binary() + " ppl -m " + converted_stories() + " -f " +
                             test::shared_path("text/tinymix-val.txt") + " --ctx 64 --windows 2 --json 2>/dev/null",
                         &out, false);
  ASSERT_EQ(st, 0) << out;
  EXPECT_NE(out.find("\"tokens_evaluated\": 128"), std::string::npos) << out;
  EXPECT_NE(out.find("\"ppl\""), std::string::npos);
}

}  // namespace
}  // namespace mxlm
