// Tokenizers: llama.cpp's SPM test vectors, llama2.c / GGUF / tokenizer.model agreement,
// round trips, streaming UTF-8 and rejection of bad input.
#include <gtest/gtest.h>

#include <sstream>
#include <string>
#include <vector>

#include "base/error.h"
#include "model/file_util.h"
#include "model/gguf.h"
#include "tests/test_util.h"
#include "tokenizer/tokenizer.h"

namespace mxlm {
namespace {

std::unique_ptr<Tokenizer> load_model_file(const std::string& rel) {
  return Tokenizer::from_spm_proto(read_file(test::shared_path(rel)));
}

std::unique_ptr<Tokenizer> load_gguf_vocab(const std::string& rel) {
  gguf::File f(test::shared_path(rel));
  std::vector<VocabEntry> vocab;
  SpmBuildOptions options;
  gguf::read_spm_vocab(f, &vocab, &options);
  return Tokenizer::from_spm_proto(build_spm_model_proto(vocab, options));
}

std::unique_ptr<Tokenizer> load_llama2c(const std::string& rel, int n_vocab) {
  const std::vector<VocabEntry> vocab = read_llama2c_tokenizer(test::shared_path(rel), n_vocab);
  return Tokenizer::from_spm_proto(build_spm_model_proto(vocab, SpmBuildOptions{}));
}

std::string join(const std::vector<int>& ids) {
  std::string s;
  for (int id : ids) {
    if (!s.empty()) s.push_back(' ');
    s.append(std::to_string(id));
  }
  return s;
}

// llama.cpp's tokenizer test vectors (tests/test-tokenizer-0): inputs in .inp, each followed by
// "\n__ggml_vocab_test__\n"; expected ids (no BOS) one line per input in .out.
TEST(Tokenizer, LlamaCppSpmVectors) {
  const std::string base = "tokenizers/llamacpp-vocab/ggml-vocab-llama-spm.gguf";
  const std::string inp = read_file(test::shared_path(base + ".inp"));
  const std::string out = read_file(test::shared_path(base + ".out"));
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::vector<std::string> inputs;
  for (size_t pos = 0; pos < inp.size();) {
    const size_t end = inp.find(sep, pos);
    ASSERT_NE(end, std::string::npos) << "input without a separator at byte " << pos;
    inputs.push_back(inp.substr(pos, end - pos));
    pos = end + sep.size();
  }
  std::vector<std::vector<int>> expected;
  std::istringstream lines(out);
  for (std::string line; std::getline(lines, line);) {
    std::istringstream ids(line);
    std::vector<int> v;
    for (int id; ids >> id;) v.push_back(id);
    expected.push_back(v);
  }
  ASSERT_EQ(inputs.size(), 46u);
  ASSERT_EQ(expected.size(), inputs.size());

  auto tok = load_gguf_vocab(base);
  EXPECT_EQ(tok->n_vocab(), 32000);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  int passed = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const std::vector<int> got = tok->encode(inputs[i], /*add_bos=*/false);
    EXPECT_EQ(join(got), join(expected[i])) << "vector " << i << ": '" << inputs[i] << "'";
    passed += got == expected[i];
  }
  EXPECT_EQ(passed, 46);
}

TEST(Tokenizer, Stories260KSourcesAgree) {
  auto from_model = load_model_file("models/stories260K/tok512.model");
  auto from_bin = load_llama2c("models/stories260K/tok512.bin", 512);
  auto from_gguf = load_gguf_vocab("models/stories260K/stories260K.gguf");
  for (const Tokenizer* t : {from_model.get(), from_bin.get(), from_gguf.get()}) {
    EXPECT_EQ(t->n_vocab(), 512);
    EXPECT_EQ(t->bos_id(), 1);
    EXPECT_EQ(t->eos_id(), 2);
  }
  for (int id = 0; id < 512; ++id) {
    EXPECT_EQ(from_bin->piece(id), from_model->piece(id)) << id;
    EXPECT_EQ(from_gguf->piece(id), from_model->piece(id)) << id;
    EXPECT_EQ(from_bin->is_control(id), from_model->is_control(id)) << id;
  }
  const std::vector<std::string> texts = {
      "Once upon a time",
      "Once upon a time, there was a little girl named Lily. She loved to play outside.",
      "The cat sat on the mat.\nThe dog said: \"Woof!\"",
      "Zebra 42 quixotic, naïve café — 日本語 😀",
      "",
      "a",
  };
  for (const std::string& text : texts) {
    const std::vector<int> want = from_model->encode(text, true);
    EXPECT_EQ(join(from_bin->encode(text, true)), join(want)) << text;
    EXPECT_EQ(join(from_gguf->encode(text, true)), join(want)) << text;
    EXPECT_EQ(from_model->decode(want), text);
    EXPECT_EQ(from_gguf->decode(want), text);
  }
}

TEST(Tokenizer, Stories260KOnceUponATimeGolden) {
  // Columns: pos input_token next_token. The prompt's tokens are the first input tokens.
  std::istringstream in(read_file(test::shared_path("ref/stories260K/stories260K_once_n64.tokens.txt")));
  std::vector<int> inputs;
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream f(line);
    int pos, input, next;
    ASSERT_TRUE(f >> pos >> input >> next) << line;
    inputs.push_back(input);
  }
  ASSERT_EQ(inputs.size(), 64u) << "positions in stories260K_once_n64.tokens.txt";
  auto tok = load_model_file("models/stories260K/tok512.model");
  const std::vector<int> ids = tok->encode("Once upon a time", /*add_bos=*/true);
  ASSERT_GE(inputs.size(), ids.size());
  EXPECT_EQ(ids.front(), 1);
  EXPECT_EQ(join(ids), join(std::vector<int>(inputs.begin(), inputs.begin() + ids.size())));
  EXPECT_EQ(join(load_llama2c("models/stories260K/tok512.bin", 512)->encode("Once upon a time", true)), join(ids));
}

TEST(Tokenizer, TinymixRoundTrip) {
  auto tok = load_model_file("models/tinymix-26m/tokenizer.model");
  EXPECT_EQ(tok->n_vocab(), 4096);
  const std::vector<std::string> texts = {
      "Hello world",
      "Ça a été une journée très agréable à Paris, n'est-ce pas? é",
      "日本語のテキストです。",
      "emoji: 😀🎉👍🏽 and a flag 🇫🇷",
      "  leading spaces, double  spaces and trailing ",
      "tabs\tand\nnewlines\n\n",
      "mixed: Ünïcödé — «quotes» … ∑∫√ 한국어 עברית العربية",
  };
  for (const std::string& text : texts) {
    const std::vector<int> ids = tok->encode(text, /*add_bos=*/true);
    ASSERT_FALSE(ids.empty());
    EXPECT_EQ(ids[0], tok->bos_id());
    EXPECT_EQ(tok->decode(ids), text) << "ids: " << join(ids);
  }
}

// Feeds ids one by one; every step must be valid UTF-8 and the whole must equal `want`.
void expect_stream(const Tokenizer& tok, const std::vector<int>& ids, const std::string& want) {
  StreamDecoder dec(tok);
  std::string all;
  for (size_t i = 0; i < ids.size(); ++i) {
    const std::string part = dec.push(ids[i]);
    EXPECT_EQ(find_invalid_utf8(part), std::string::npos) << "step " << i << " id " << ids[i];
    all += part;
  }
  const std::string rest = dec.flush();
  EXPECT_EQ(find_invalid_utf8(rest), std::string::npos);
  all += rest;
  EXPECT_EQ(all, want) << "ids: " << join(ids);
}

TEST(Tokenizer, StreamDecoderHoldsPartialCharacters) {
  auto tok = load_model_file("models/stories260K/tok512.model");
  const std::string text = "Lily said: é 日本語 😀 ok";
  const std::vector<int> ids = tok->encode(text, /*add_bos=*/true);
  int n_byte_pieces = 0;
  for (int id : ids) n_byte_pieces += tok->piece(id).rfind("<0x", 0) == 0;
  // 日本語 and 😀 are not in the 512-piece vocabulary: 9 + 4 byte pieces.
  EXPECT_GE(n_byte_pieces, 9 + 4) << "expected byte-fallback pieces, ids: " << join(ids);
  expect_stream(*tok, ids, text);
  EXPECT_EQ(tok->decode(ids), text);

  auto mix = load_model_file("models/tinymix-26m/tokenizer.model");
  const std::string text2 = "Grüße aus 東京 🍣🍣! Ελληνικά";
  expect_stream(*mix, mix->encode(text2, true), text2);
  expect_stream(*mix, mix->encode(text2, false), text2);
}

TEST(Tokenizer, StreamDecoderReplacesInvalidBytes) {
  auto tok = load_model_file("models/stories260K/tok512.model");
  auto byte_id = [&](int b) { return 3 + b; };  // <0x00> is id 3
  ASSERT_EQ(tok->piece(byte_id(0xE6)), "<0xE6>");
  const std::string fffd = "\xEF\xBF\xBD";
  {
    StreamDecoder dec(*tok);
    EXPECT_EQ(dec.push(byte_id(0xE6)), "");  // held: first byte of a 3-byte sequence
    EXPECT_EQ(dec.push(byte_id(0x97)), "");
    EXPECT_EQ(dec.push(byte_id(0xA5)), "\xE6\x97\xA5");  // 日
    EXPECT_EQ(dec.flush(), "");
  }
  {
    StreamDecoder dec(*tok);
    EXPECT_EQ(dec.push(byte_id(0xE6)), "");
    EXPECT_EQ(dec.push(byte_id('A')), fffd + "A");  // interrupted sequence
    EXPECT_EQ(dec.push(byte_id(0xFF)), fffd);        // never valid
    EXPECT_EQ(dec.push(byte_id(0xF0)), "");
    EXPECT_EQ(dec.push(byte_id(0x9F)), "");
    EXPECT_EQ(dec.flush(), fffd);  // truncated at the end
  }
  {
    // The first piece after BOS loses the dummy-prefix space; later ones keep theirs.
    StreamDecoder dec(*tok);
    const std::vector<int> ids = tok->encode("Once upon", true);
    std::string all;
    for (int id : ids) all += dec.push(id);
    EXPECT_EQ(all, "Once upon");
  }
}

TEST(Tokenizer, TokenBytesAndPieces) {
  auto tok = load_model_file("models/stories260K/tok512.model");
  const std::vector<int> ids = tok->encode("Once upon", false);
  ASSERT_GE(ids.size(), 2u);
  EXPECT_EQ(tok->piece(ids[0]).rfind("\xE2\x96\x81", 0), 0u);  // "▁Once"
  EXPECT_EQ(tok->token_bytes(ids[0], /*first=*/true).front(), 'O');
  EXPECT_EQ(tok->token_bytes(ids[0], /*first=*/false).front(), ' ');
  EXPECT_EQ(tok->token_bytes(1, false), "");  // BOS
  EXPECT_TRUE(tok->is_control(1));
  EXPECT_FALSE(tok->is_control(ids[0]));
  EXPECT_EQ(tok->token_bytes(3 + 0x0A, true), "\n");
  EXPECT_THROW(tok->token_bytes(512, false), Error);
  EXPECT_THROW(tok->piece(-1), Error);
  EXPECT_THROW(tok->decode({1, 512}), Error);
}

TEST(Tokenizer, RejectsInvalidUtf8) {
  auto tok = load_model_file("models/stories260K/tok512.model");
  struct Case {
    std::string text;
    size_t offset;
  };
  const std::vector<Case> cases = {
      {"abc\xFF", 3},             // never-valid byte
      {"ab\xE6\x97", 2},          // truncated at the end
      {"\xC0\x80", 0},            // overlong NUL
      {"ok \xED\xA0\x80", 3},     // UTF-16 surrogate
      {"x\xF4\x90\x80\x80", 1},   // above U+10FFFF
      {"\x80", 0},                // stray continuation byte
      {"é\xE6" "A", 2},           // interrupted sequence
  };
  for (const Case& c : cases) {
    EXPECT_EQ(find_invalid_utf8(c.text), c.offset);
    try {
      tok->encode(c.text, false);
      ADD_FAILURE() << "no error for offset " << c.offset;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
      EXPECT_NE(std::string(e.what()).find("offset " + std::to_string(c.offset)), std::string::npos) << e.what();
    }
  }
  EXPECT_EQ(find_invalid_utf8("plain ascii, é, 日本語, 😀"), std::string::npos);
  EXPECT_EQ(find_invalid_utf8(""), std::string::npos);
}

TEST(Tokenizer, BuildAndLoadErrors) {
  EXPECT_THROW(build_spm_model_proto({}, SpmBuildOptions{}), Error);
  std::vector<VocabEntry> vocab = {{"<unk>", 0, VocabEntry::kUnknown}, {"<s>", 0, VocabEntry::kControl},
                                   {"</s>", 0, VocabEntry::kControl}, {"a", -1, VocabEntry::kNormal}};
  SpmBuildOptions opt;
  opt.byte_fallback = false;
  auto tok = Tokenizer::from_spm_proto(build_spm_model_proto(vocab, opt));
  EXPECT_EQ(tok->n_vocab(), 4);
  EXPECT_EQ(tok->bos_id(), 1);

  SpmBuildOptions bad = opt;
  bad.bos_id = 3;  // not a control piece
  EXPECT_THROW(build_spm_model_proto(vocab, bad), Error);
  bad = opt;
  bad.eos_id = 99;
  EXPECT_THROW(build_spm_model_proto(vocab, bad), Error);
  auto dup = vocab;
  dup.push_back({"a", -2, VocabEntry::kNormal});
  EXPECT_THROW(build_spm_model_proto(dup, opt), Error);
  auto empty_piece = vocab;
  empty_piece[3].piece.clear();
  EXPECT_THROW(build_spm_model_proto(empty_piece, opt), Error);
  auto bytes = vocab;
  bytes.push_back({"<0x41>", 0, VocabEntry::kByte});
  EXPECT_THROW(build_spm_model_proto(bytes, opt), Error);  // byte piece without byte_fallback

  try {
    Tokenizer::from_spm_proto("this is not a protobuf \xFF\xFF\xFF");
    ADD_FAILURE() << "garbage loaded";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kFormat);
  }

  const std::string dir = test::scratch_dir();
  {
    std::string data = read_file(test::shared_path("models/stories260K/tok512.bin"));
    AtomicFile f(dir + "/tok_truncated.bin");
    f.write(data.data(), data.size() - 3);
    f.commit();
  }
  try {
    read_llama2c_tokenizer(dir + "/tok_truncated.bin", 512);
    ADD_FAILURE() << "truncated tokenizer.bin loaded";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kFormat);
    EXPECT_NE(std::string(e.what()).find("tok_truncated.bin"), std::string::npos) << e.what();
  }
  EXPECT_THROW(read_llama2c_tokenizer(test::shared_path("models/stories260K/tok512.bin"), 500), Error);  // trailing bytes
}

TEST(Tokenizer, GgufRejectsBpeVocab) {
  gguf::File f(test::shared_path("tokenizers/llamacpp-vocab/ggml-vocab-gpt-2.gguf"));
  std::vector<VocabEntry> vocab;
  SpmBuildOptions options;
  try {
    gguf::read_spm_vocab(f, &vocab, &options);
    ADD_FAILURE() << "gpt2 vocab accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("gpt2"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace mxlm
