// The C API (runtime/include/mxlm.h) as an app calls it: generation against the CLI's reference
// text, tokens and streaming text, multi-turn KV reuse, bad input as error codes with messages,
// and one model shared by contexts on several threads (also run under TSan:
// scripts/test_sanitize.sh tsan). The core budget that keeps those threads within the cores.
#include "mxlm.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "runtime/core_budget.h"
#include "tests/test_util.h"

namespace {

std::string stories() { return mxlm::test::shared_path("models/stories260K/stories260K.gguf"); }

// A loaded model for a test, freed at scope exit.
struct ModelHandle {
  mxlm_model* m = nullptr;
  explicit ModelHandle(const std::string& path, const mxlm_model_params* params = nullptr) {
    EXPECT_EQ(mxlm_model_load(path.c_str(), params, &m), MXLM_OK) << mxlm_last_error();
  }
  ~ModelHandle() { mxlm_model_free(m); }
};

std::vector<int32_t> tokenize(mxlm_model* m, const std::string& text, bool bos) {
  size_t n = 0;
  EXPECT_EQ(mxlm_tokenize(m, text.data(), text.size(), bos, nullptr, 0, &n), text.empty() && !bos ? MXLM_OK : MXLM_ERR_BUFFER_TOO_SMALL);
  std::vector<int32_t> ids(n);
  EXPECT_EQ(mxlm_tokenize(m, text.data(), text.size(), bos, ids.data(), ids.size(), &n), MXLM_OK) << mxlm_last_error();
  return ids;
}

struct Collected {
  std::string text;
  std::vector<int32_t> ids;
  int stop_after = -1;  // stop once this many tokens came
};

int collect(void* user, int32_t token, const char* text, size_t len) {
  auto* c = static_cast<Collected*>(user);
  c->text.append(text, len);
  c->ids.push_back(token);
  return c->stop_after < 0 || int(c->ids.size()) < c->stop_after;
}

Collected greedy(mxlm_context* ctx, const std::vector<int32_t>& prompt, int n, mxlm_generate_stats* st = nullptr) {
  mxlm_sampler_params sp = mxlm_sampler_default_params();
  sp.temperature = 0;
  mxlm_sampler* s = nullptr;
  EXPECT_EQ(mxlm_sampler_create(&sp, &s), MXLM_OK);
  mxlm_generate_params gp = mxlm_generate_default_params();
  gp.n_predict = n;
  Collected c;
  EXPECT_EQ(mxlm_generate(ctx, s, prompt.data(), prompt.size(), &gp, collect, &c, st), MXLM_OK) << mxlm_last_error();
  mxlm_sampler_free(s);
  return c;
}

TEST(CApi, VersionAndInfo) {
  int major = -1, minor = -1, patch = -1;
  EXPECT_STREQ(mxlm_version(&major, &minor, &patch), MXLM_PROJECT_VERSION);  // mxlm.h agrees with CMake
  EXPECT_EQ(major, MXLM_VERSION_MAJOR);
  EXPECT_EQ(minor, MXLM_VERSION_MINOR);
  EXPECT_EQ(patch, MXLM_VERSION_PATCH);
  ModelHandle m(stories());
  mxlm_model_info info;
  ASSERT_EQ(mxlm_model_get_info(m.m, &info), MXLM_OK);
  EXPECT_EQ(info.n_vocab, 512);
  EXPECT_EQ(info.n_embd, 64);
  EXPECT_EQ(info.n_layers, 5);
  EXPECT_EQ(info.n_kv_heads, 4);
  EXPECT_EQ(info.bos, 1);
  EXPECT_NEAR(info.bits_per_weight, 32.0, 1e-9);
  EXPECT_GT(std::string(info.isa).size(), 0u);
  mxlm_context* ctx = nullptr;
  mxlm_context_params cp = mxlm_context_default_params();
  cp.n_ctx = 256;
  cp.kv = "f16";
  ASSERT_EQ(mxlm_context_create(m.m, &cp, &ctx), MXLM_OK) << mxlm_last_error();
  mxlm_context_info ci;
  ASSERT_EQ(mxlm_context_get_info(ctx, &ci), MXLM_OK);
  EXPECT_EQ(ci.n_ctx, 256);
  EXPECT_EQ(ci.n_past, 0);
  // f16 keys and values: 5 layers x 4 KV heads x 8 x 2 bytes x (K and V).
  EXPECT_EQ(ci.kv_bytes_per_token, 5u * 4u * 8u * 2u * 2u);
  EXPECT_EQ(ci.kv_bytes, 256u * ci.kv_bytes_per_token);
  mxlm_context_free(ctx);
}

// The CLI's greedy reference text (tests/cli_test.cc RunGreedyMatchesLlama2c), through the C API,
// from a model loaded (imported from GGUF) on one thread.
TEST(CApi, GreedyGenerationMatchesTheReference) {
  mxlm_model_params mp = mxlm_model_default_params();
  mp.n_threads = 1;
  ModelHandle m(stories(), &mp);
  mxlm_context* ctx = nullptr;
  ASSERT_EQ(mxlm_context_create(m.m, nullptr, &ctx), MXLM_OK);
  const std::string prompt = "Once upon a time";
  mxlm_generate_stats st;
  const Collected c = greedy(ctx, tokenize(m.m, prompt, true), 60, &st);
  std::ifstream f(mxlm::test::shared_path("ref/stories260K/stories260K_t0_n64_once.txt"), std::ios::binary);
  const std::string want((std::istreambuf_iterator<char>(f)), {});
  EXPECT_EQ(prompt + c.text + "\n", want);
  EXPECT_EQ(st.n_generated, int(c.ids.size()));
  EXPECT_EQ(st.n_prompt, int(tokenize(m.m, prompt, true).size()));
  // The context holds the prompt and every generated token but the last.
  mxlm_context_info ci;
  ASSERT_EQ(mxlm_context_get_info(ctx, &ci), MXLM_OK);
  EXPECT_EQ(ci.n_past, st.n_prompt + st.n_generated - 1);
  mxlm_context_free(ctx);
}

TEST(CApi, TokensTextAndStreaming) {
  ModelHandle m(stories());
  const std::string text = "The cat sat. Ünïcödé — 猫 ok";
  const std::vector<int32_t> ids = tokenize(m.m, text, false);
  ASSERT_FALSE(ids.empty());
  size_t len = 0;
  std::vector<char> buf(256);
  ASSERT_EQ(mxlm_detokenize(m.m, ids.data(), ids.size(), buf.data(), buf.size(), &len), MXLM_OK) << mxlm_last_error();
  EXPECT_EQ(std::string(buf.data(), len), text);
  EXPECT_EQ(buf[len], '\0');
  // Too small: the length needed comes back.
  EXPECT_EQ(mxlm_detokenize(m.m, ids.data(), ids.size(), buf.data(), 4, &len), MXLM_ERR_BUFFER_TOO_SMALL);
  EXPECT_EQ(len, text.size());
  size_t n = 0;
  EXPECT_EQ(mxlm_tokenize(m.m, text.data(), text.size(), 0, buf.empty() ? nullptr : reinterpret_cast<int32_t*>(buf.data()), 1, &n),
            MXLM_ERR_BUFFER_TOO_SMALL);
  EXPECT_EQ(n, ids.size());
  EXPECT_NE(std::string(mxlm_last_error()).find("buffer"), std::string::npos) << mxlm_last_error();

  // Token by token, the decoder gives only complete UTF-8 (byte-fallback pieces of 猫 are held).
  mxlm_decoder* d = nullptr;
  ASSERT_EQ(mxlm_decoder_create(m.m, &d), MXLM_OK);
  std::string streamed;
  for (int32_t id : ids) {
    const char* piece = nullptr;
    size_t plen = 0;
    ASSERT_EQ(mxlm_decoder_push(d, id, &piece, &plen), MXLM_OK);
    const std::string p(piece, plen);
    // Every piece is valid UTF-8 on its own.
    std::vector<int32_t> back;
    size_t nb = 0;
    EXPECT_NE(mxlm_tokenize(m.m, p.data(), p.size(), 0, nullptr, 0, &nb), MXLM_ERR_INVALID_ARGUMENT) << mxlm_last_error();
    streamed += p;
  }
  const char* rest = nullptr;
  size_t rlen = 0;
  ASSERT_EQ(mxlm_decoder_flush(d, &rest, &rlen), MXLM_OK);
  streamed.append(rest, rlen);
  EXPECT_EQ(streamed, text);
  mxlm_decoder_free(d);
}

// Multi-turn use: each turn evaluates only its new tokens on top of the cache, and reaches the
// same state as evaluating the whole conversation at once.
TEST(CApi, TurnsReuseTheCache) {
  ModelHandle m(stories());
  mxlm_context* a = nullptr;
  mxlm_context* b = nullptr;
  ASSERT_EQ(mxlm_context_create(m.m, nullptr, &a), MXLM_OK);
  ASSERT_EQ(mxlm_context_create(m.m, nullptr, &b), MXLM_OK);
  mxlm_generate_stats st1, st2;
  const std::vector<int32_t> p1 = tokenize(m.m, "Once upon a time", true);
  const Collected r1 = greedy(a, p1, 20, &st1);
  // Turn 2: the last reply token (not yet evaluated) and the new text.
  std::vector<int32_t> p2 = {r1.ids.back()};
  for (int32_t t : tokenize(m.m, " Then the dog said", false)) p2.push_back(t);
  const Collected r2 = greedy(a, p2, 20, &st2);
  EXPECT_EQ(st2.n_prompt, int(p2.size()));  // only the new tokens were evaluated
  mxlm_context_info ia;
  ASSERT_EQ(mxlm_context_get_info(a, &ia), MXLM_OK);
  EXPECT_EQ(ia.n_past, int(p1.size() + r1.ids.size() - 1 + p2.size() + r2.ids.size() - 1));

  // The whole conversation at once in the other context: the same next reply.
  std::vector<int32_t> all = p1;
  all.insert(all.end(), r1.ids.begin(), r1.ids.end() - 1);
  all.insert(all.end(), p2.begin(), p2.end());
  const Collected r2b = greedy(b, all, 20);
  EXPECT_EQ(r2b.ids, r2.ids);

  // A callback that stops: the reply ends there, flagged.
  ASSERT_EQ(mxlm_context_reset(b), MXLM_OK);
  mxlm_sampler* s = nullptr;
  ASSERT_EQ(mxlm_sampler_create(nullptr, &s), MXLM_OK);
  Collected c;
  c.stop_after = 3;
  mxlm_generate_stats st;
  ASSERT_EQ(mxlm_generate(b, s, p1.data(), p1.size(), nullptr, collect, &c, &st), MXLM_OK);
  EXPECT_EQ(c.ids.size(), 3u);
  EXPECT_TRUE(st.stopped);
  mxlm_sampler_free(s);

  // Truncate back to the first turn and eval: logits of the same rows as a fresh evaluation.
  ASSERT_EQ(mxlm_context_truncate(a, int32_t(p1.size()) - 1), MXLM_OK);
  ASSERT_EQ(mxlm_eval(a, &p1.back(), 1, 0), MXLM_OK);
  ASSERT_EQ(mxlm_context_reset(b), MXLM_OK);
  ASSERT_EQ(mxlm_eval(b, p1.data(), p1.size(), 1), MXLM_OK);
  const float* la = nullptr;
  const float* lb = nullptr;
  int32_t rows = 0, nv = 0;
  ASSERT_EQ(mxlm_get_logits(a, &la, &rows, &nv), MXLM_OK);
  EXPECT_EQ(rows, 1);
  ASSERT_EQ(mxlm_get_logits(b, &lb, &rows, &nv), MXLM_OK);
  EXPECT_EQ(rows, int(p1.size()));
  EXPECT_EQ(nv, 512);
  const float* last = lb + size_t(rows - 1) * size_t(nv);
  for (int i = 0; i < nv; ++i) ASSERT_NEAR(la[i], last[i], 1e-4f * (1 + std::abs(last[i]))) << i;
  mxlm_context_free(a);
  mxlm_context_free(b);
}

// The model's own chat template through the C API renders as Jinja2 rendered it (the reference
// of tests/data/chat_templates); a model without one gets the plain fallback.
TEST(CApi, ChatTemplate) {
  namespace fs = std::filesystem;
  const std::string dir = mxlm::test::scratch_dir() + "/tinymix-tmpl";
  fs::create_directories(dir);
  for (const auto& e : fs::directory_iterator(mxlm::test::shared_path("models/tinymix-26m"))) {
    fs::create_symlink(e.path(), dir + "/" + e.path().filename().string());
  }
  const std::string data = std::string(MXLM_SOURCE_DIR) + "/tests/data/chat_templates/";
  auto slurp = [](const std::string& p) {
    std::ifstream f(p, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(f)), {});
  };
  std::ofstream(dir + "/tokenizer_config.json") << nlohmann::json({{"chat_template", slurp(data + "TinyLlama-1.1B-Chat-v1.0.jinja")}}).dump();
  const mxlm_chat_message msgs[] = {{"system", "You are a helpful assistant."}, {"user", "What is 2+2?"}, {"assistant", "2+2 is 4."},
                                    {"user", "And 3+3?"}};
  ModelHandle with(dir);
  mxlm_model_info info;
  ASSERT_EQ(mxlm_model_get_info(with.m, &info), MXLM_OK);
  EXPECT_EQ(info.has_chat_template, 1);
  size_t len = 0;
  ASSERT_EQ(mxlm_chat_apply_template(with.m, msgs, 4, 1, nullptr, 0, &len), MXLM_ERR_BUFFER_TOO_SMALL);
  std::vector<char> buf(len + 1);
  ASSERT_EQ(mxlm_chat_apply_template(with.m, msgs, 4, 1, buf.data(), buf.size(), &len), MXLM_OK) << mxlm_last_error();
  EXPECT_EQ(std::string(buf.data(), len), slurp(data + "TinyLlama-1.1B-Chat-v1.0.system.txt"));

  // The rendered text's special tokens: "</s>" after each message is EOS with
  // MXLM_TOKENIZE_SPECIAL, plain text pieces without it.
  const std::string text(buf.data(), len);
  auto count = [](const std::vector<int32_t>& ids, int32_t id) { return std::count(ids.begin(), ids.end(), id); };
  auto tokens = [&](const std::string& t, int32_t flags) {
    size_t n = 0;
    EXPECT_EQ(mxlm_tokenize(with.m, t.data(), t.size(), flags, nullptr, 0, &n), MXLM_ERR_BUFFER_TOO_SMALL) << mxlm_last_error();
    std::vector<int32_t> ids(n);
    EXPECT_EQ(mxlm_tokenize(with.m, t.data(), t.size(), flags, ids.data(), n, &n), MXLM_OK) << mxlm_last_error();
    return ids;
  };
  const std::vector<int32_t> special = tokens(text, MXLM_TOKENIZE_SPECIAL | MXLM_TOKENIZE_BOS);
  ASSERT_FALSE(special.empty());
  EXPECT_EQ(special[0], info.bos);
  EXPECT_EQ(count(special, info.eos), 4);  // each of the four messages ends with it
  const std::vector<int32_t> plain = tokens(text, MXLM_TOKENIZE_BOS);
  EXPECT_EQ(count(plain, info.eos), 0);
  EXPECT_GT(plain.size(), special.size());
  // Text that begins with the BOS piece gets no second BOS.
  EXPECT_EQ(count(tokens("<s>" + text, MXLM_TOKENIZE_SPECIAL | MXLM_TOKENIZE_BOS), info.bos), 1);
  // A continuation: no BOS, and its first word has no dummy-prefix space ("Then" continues
  // "...said" as one word would, where a fresh text begins with "▁Then").
  const std::vector<int32_t> cont = tokens("Then</s>", MXLM_TOKENIZE_SPECIAL | MXLM_TOKENIZE_CONTINUE);
  const std::vector<int32_t> fresh = tokens("Then</s>", MXLM_TOKENIZE_SPECIAL);
  ASSERT_FALSE(cont.empty());
  EXPECT_NE(cont.front(), info.bos);
  EXPECT_EQ(cont.back(), info.eos);
  EXPECT_EQ(fresh.back(), info.eos);
  char piece[64];
  size_t plen = 0;
  ASSERT_EQ(mxlm_detokenize(with.m, fresh.data(), fresh.size() - 1, piece, sizeof(piece), &plen), MXLM_OK);
  EXPECT_STREQ(piece, "Then");
  EXPECT_NE(cont, fresh);
  size_t n = 0;
  EXPECT_EQ(mxlm_tokenize(with.m, "a", 1, 8, nullptr, 0, &n), MXLM_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(mxlm_last_error()).find("flags 8"), std::string::npos) << mxlm_last_error();
  EXPECT_EQ(mxlm_tokenize(with.m, "a", 1, MXLM_TOKENIZE_CONTINUE, nullptr, 0, &n), MXLM_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(mxlm_last_error()).find("goes with MXLM_TOKENIZE_SPECIAL"), std::string::npos) << mxlm_last_error();

  // stop_at_end_of_turn: the template ends a reply with "</s>", EOS here; with stop_at_eos off,
  // the reply ends there all the same, as the unstopped greedy text shows.
  {
    const std::vector<int32_t> prompt = tokens(text, MXLM_TOKENIZE_SPECIAL | MXLM_TOKENIZE_BOS);
    std::vector<std::vector<int32_t>> got;
    std::vector<mxlm_generate_stats> stats;
    for (int end_of_turn : {0, 1}) {
      mxlm_context* c = nullptr;
      ASSERT_EQ(mxlm_context_create(with.m, nullptr, &c), MXLM_OK);
      mxlm_sampler_params sp = mxlm_sampler_default_params();
      sp.temperature = 0;
      mxlm_sampler* s = nullptr;
      ASSERT_EQ(mxlm_sampler_create(&sp, &s), MXLM_OK);
      mxlm_generate_params gp = mxlm_generate_default_params();
      EXPECT_EQ(gp.stop_at_end_of_turn, 0);
      gp.n_predict = 120;
      gp.stop_at_eos = 0;
      gp.stop_at_end_of_turn = end_of_turn;
      Collected col;
      mxlm_generate_stats st;
      ASSERT_EQ(mxlm_generate(c, s, prompt.data(), prompt.size(), &gp, collect, &col, &st), MXLM_OK) << mxlm_last_error();
      got.push_back(col.ids);
      stats.push_back(st);
      mxlm_sampler_free(s);
      mxlm_context_free(c);
    }
    const auto eos_at = std::find(got[0].begin(), got[0].end(), info.eos);
    ASSERT_NE(eos_at, got[0].end()) << "the greedy reply never ends its turn: nothing to check";
    EXPECT_EQ(got[1], std::vector<int32_t>(got[0].begin(), eos_at));
    EXPECT_TRUE(stats[1].hit_eos);
    EXPECT_FALSE(stats[0].hit_eos);
  }

  ModelHandle without(mxlm::test::shared_path("models/tinymix-26m"));
  ASSERT_EQ(mxlm_model_get_info(without.m, &info), MXLM_OK);
  EXPECT_EQ(info.has_chat_template, 0);
  char small[256];
  ASSERT_EQ(mxlm_chat_apply_template(without.m, msgs + 1, 1, 1, small, sizeof(small), &len), MXLM_OK);
  EXPECT_STREQ(small, "User: What is 2+2?\nAssistant:");
  const mxlm_chat_message bad_role[] = {{"robot", "x"}};
  EXPECT_EQ(mxlm_chat_apply_template(without.m, bad_role, 1, 1, small, sizeof(small), &len), MXLM_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(mxlm_last_error()).find("robot"), std::string::npos);
  const mxlm_chat_message bad_utf8[] = {{"user", "a\xff"}};
  EXPECT_EQ(mxlm_chat_apply_template(without.m, bad_utf8, 1, 1, small, sizeof(small), &len), MXLM_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(mxlm_last_error()).find("UTF-8"), std::string::npos);
  EXPECT_EQ(mxlm_chat_apply_template(nullptr, msgs, 1, 1, small, sizeof(small), &len), MXLM_ERR_INVALID_ARGUMENT);
}

TEST(CApi, SamplerIsSeeded) {
  std::vector<float> logits(64);
  for (int i = 0; i < 64; ++i) logits[size_t(i)] = float((i * 37) % 11) * 0.3f;
  auto draw = [&](uint64_t seed) {
    mxlm_sampler_params p = mxlm_sampler_default_params();
    p.seed = seed;
    p.temperature = 1.5f;
    p.top_k = 0;
    p.min_p = 0;
    mxlm_sampler* s = nullptr;
    EXPECT_EQ(mxlm_sampler_create(&p, &s), MXLM_OK);
    std::vector<int32_t> out;
    for (int i = 0; i < 32; ++i) {
      int32_t t = -1;
      EXPECT_EQ(mxlm_sampler_sample(s, logits.data(), 64, out.data(), out.size(), &t), MXLM_OK);
      out.push_back(t);
    }
    mxlm_sampler_free(s);
    return out;
  };
  EXPECT_EQ(draw(7), draw(7));
  EXPECT_NE(draw(7), draw(8));
}

// Every kind of bad input is a status with a message naming the problem; nothing aborts.
TEST(CApi, BadInputIsAnErrorWithAMessage) {
  auto expect = [](mxlm_status got, mxlm_status want, const std::string& words) {
    EXPECT_EQ(got, want) << mxlm_status_name(got) << ": " << mxlm_last_error();
    EXPECT_NE(std::string(mxlm_last_error()).find(words), std::string::npos) << mxlm_last_error() << " lacks " << words;
  };
  mxlm_model* m = reinterpret_cast<mxlm_model*>(0x1);
  expect(mxlm_model_load(nullptr, nullptr, &m), MXLM_ERR_INVALID_ARGUMENT, "path is NULL");
  EXPECT_EQ(m, nullptr);
  expect(mxlm_model_load("x", nullptr, nullptr), MXLM_ERR_INVALID_ARGUMENT, "model is NULL");
  const std::string missing = mxlm::test::scratch_dir() + "/missing.mxlm";
  expect(mxlm_model_load(missing.c_str(), nullptr, &m), MXLM_ERR_IO, "missing.mxlm");
  expect(mxlm_model_load(mxlm::test::shared_path("models/stories260K/stories260K.bin").c_str(), nullptr, &m), MXLM_ERR_FORMAT,
         "neither an .mxlm file");
  const std::string truncated = mxlm::test::scratch_dir() + "/truncated.gguf";
  {
    std::ifstream in(stories(), std::ios::binary);
    std::string head(4000, '\0');
    in.read(head.data(), std::streamsize(head.size()));
    std::ofstream(truncated, std::ios::binary) << head;
  }
  EXPECT_NE(mxlm_model_load(truncated.c_str(), nullptr, &m), MXLM_OK);
  EXPECT_NE(std::string(mxlm_last_error()).find("truncated.gguf"), std::string::npos) << mxlm_last_error();
  mxlm_model_params mp = mxlm_model_default_params();
  mp.isa = "sse9";
  expect(mxlm_model_load(stories().c_str(), &mp, &m), MXLM_ERR_INVALID_ARGUMENT, "sse9");
  mp = mxlm_model_default_params();
  mp.memory = "swap";
  expect(mxlm_model_load(stories().c_str(), &mp, &m), MXLM_ERR_INVALID_ARGUMENT, "swap");
  mp = mxlm_model_default_params();
  mp.n_threads = -1;
  expect(mxlm_model_load(stories().c_str(), &mp, &m), MXLM_ERR_INVALID_ARGUMENT, "n_threads -1 is negative");

  ModelHandle model(stories());
  mxlm_model_info info;
  expect(mxlm_model_get_info(nullptr, &info), MXLM_ERR_INVALID_ARGUMENT, "model is NULL");
  expect(mxlm_model_get_info(model.m, nullptr), MXLM_ERR_INVALID_ARGUMENT, "info is NULL");

  mxlm_context* ctx = nullptr;
  mxlm_context_params cp = mxlm_context_default_params();
  cp.kv = "k3v3";
  expect(mxlm_context_create(model.m, &cp, &ctx), MXLM_ERR_INVALID_ARGUMENT, "k3v3");
  cp = mxlm_context_default_params();
  cp.n_ctx = 1 << 20;
  expect(mxlm_context_create(model.m, &cp, &ctx), MXLM_ERR_INVALID_ARGUMENT, "2048");
  cp.n_ctx = -3;
  expect(mxlm_context_create(model.m, &cp, &ctx), MXLM_ERR_INVALID_ARGUMENT, "negative");
  expect(mxlm_context_create(nullptr, nullptr, &ctx), MXLM_ERR_INVALID_ARGUMENT, "model is NULL");
  cp = mxlm_context_default_params();
  cp.n_ctx = 16;
  ASSERT_EQ(mxlm_context_create(model.m, &cp, &ctx), MXLM_OK);

  // Tokens and text.
  size_t n = 0;
  const char bad[] = "bad \xff byte";
  expect(mxlm_tokenize(model.m, bad, sizeof(bad) - 1, 1, nullptr, 0, &n), MXLM_ERR_INVALID_ARGUMENT, "not valid UTF-8");
  expect(mxlm_tokenize(model.m, nullptr, 3, 1, nullptr, 0, &n), MXLM_ERR_INVALID_ARGUMENT, "text is NULL");
  expect(mxlm_tokenize(nullptr, "a", 1, 1, nullptr, 0, &n), MXLM_ERR_INVALID_ARGUMENT, "model is NULL");
  const int32_t out_of_range[] = {1, 9999};
  char buf[64];
  size_t len = 0;
  expect(mxlm_detokenize(model.m, out_of_range, 2, buf, sizeof(buf), &len), MXLM_ERR_INVALID_ARGUMENT, "9999");
  mxlm_decoder* d = nullptr;
  ASSERT_EQ(mxlm_decoder_create(model.m, &d), MXLM_OK);
  const char* piece = nullptr;
  expect(mxlm_decoder_push(d, -5, &piece, &len), MXLM_ERR_INVALID_ARGUMENT, "-5");
  mxlm_decoder_free(d);

  // Evaluation.
  expect(mxlm_eval(ctx, out_of_range, 2, 0), MXLM_ERR_INVALID_ARGUMENT, "9999");
  expect(mxlm_eval(nullptr, out_of_range, 1, 0), MXLM_ERR_INVALID_ARGUMENT, "ctx is NULL");
  expect(mxlm_eval(ctx, out_of_range, 0, 0), MXLM_ERR_INVALID_ARGUMENT, "no tokens");
  const float* logits = nullptr;
  expect(mxlm_get_logits(ctx, &logits, nullptr, nullptr), MXLM_ERR_INVALID_ARGUMENT, "nothing was evaluated");
  std::vector<int32_t> many(20, 42);
  expect(mxlm_eval(ctx, many.data(), many.size(), 0), MXLM_ERR_CONTEXT_FULL, "context of 16");
  mxlm_sampler* s = nullptr;
  ASSERT_EQ(mxlm_sampler_create(nullptr, &s), MXLM_OK);
  expect(mxlm_generate(ctx, s, many.data(), many.size(), nullptr, nullptr, nullptr, nullptr), MXLM_ERR_CONTEXT_FULL, "16");
  expect(mxlm_generate(ctx, s, many.data(), 0, nullptr, nullptr, nullptr, nullptr), MXLM_ERR_INVALID_ARGUMENT, "empty prompt");
  expect(mxlm_generate(ctx, nullptr, many.data(), 1, nullptr, nullptr, nullptr, nullptr), MXLM_ERR_INVALID_ARGUMENT, "sampler is NULL");
  // A full context without shifting stops generation, flagged; with shifting it goes on.
  mxlm_generate_params gp = mxlm_generate_default_params();
  gp.n_predict = 40;
  gp.stop_at_eos = 0;
  mxlm_generate_stats st;
  ASSERT_EQ(mxlm_generate(ctx, s, many.data(), 4, &gp, nullptr, nullptr, &st), MXLM_OK) << mxlm_last_error();
  EXPECT_TRUE(st.context_full);
  EXPECT_LT(st.n_generated, 40);
  ASSERT_EQ(mxlm_context_reset(ctx), MXLM_OK);
  gp.context_shift = 1;
  ASSERT_EQ(mxlm_generate(ctx, s, many.data(), 4, &gp, nullptr, nullptr, &st), MXLM_OK) << mxlm_last_error();
  EXPECT_EQ(st.n_generated, 40);
  EXPECT_GT(st.n_shifts, 0);
  expect(mxlm_context_truncate(ctx, 999), MXLM_ERR_INVALID_ARGUMENT, "999");
  expect(mxlm_context_shift(ctx, 0, 999), MXLM_ERR_INVALID_ARGUMENT, "");
  int32_t tok = 0;
  expect(mxlm_sampler_sample(s, nullptr, 10, nullptr, 0, &tok), MXLM_ERR_INVALID_ARGUMENT, "logits is NULL");
  mxlm_sampler_free(s);
  mxlm_context_free(ctx);

  // Freeing NULL is nothing; the model outlives its handle while a context uses it.
  mxlm_model_free(nullptr);
  mxlm_context_free(nullptr);
  mxlm_sampler_free(nullptr);
  mxlm_decoder_free(nullptr);
  mxlm_model* m2 = nullptr;
  ASSERT_EQ(mxlm_model_load(stories().c_str(), nullptr, &m2), MXLM_OK);
  mxlm_context* c2 = nullptr;
  ASSERT_EQ(mxlm_context_create(m2, nullptr, &c2), MXLM_OK);
  mxlm_model_free(m2);
  const int32_t one[] = {1};
  EXPECT_EQ(mxlm_eval(c2, one, 1, 0), MXLM_OK) << mxlm_last_error();
  mxlm_context_free(c2);

  // The message is the calling thread's own.
  mxlm_model_get_info(nullptr, &info);
  const std::string mine = mxlm_last_error();
  std::thread([&] {
    EXPECT_STREQ(mxlm_last_error(), "");
    mxlm_tokenize(model.m, bad, sizeof(bad) - 1, 1, nullptr, 0, &n);
  }).join();
  EXPECT_EQ(mxlm_last_error(), mine);
}

// One model, four threads, four contexts at once: each gives the same greedy text as one context
// alone. Together they ask for 6 threads, more than a small machine's cores: the core budget
// makes their batches wait for cores instead of oversubscribing them.
TEST(CApi, FourThreadsFourContextsOneModel) {
  ModelHandle m(stories());
  const std::string prompts[4] = {"Once upon a time", "The little dog", "Lily and Ben went", "One day, a bird"};
  std::vector<std::string> alone(4), together(4);
  {
    mxlm_context* ctx = nullptr;
    ASSERT_EQ(mxlm_context_create(m.m, nullptr, &ctx), MXLM_OK);
    for (int i = 0; i < 4; ++i) {
      ASSERT_EQ(mxlm_context_reset(ctx), MXLM_OK);
      alone[size_t(i)] = greedy(ctx, tokenize(m.m, prompts[i], true), 48).text;
    }
    mxlm_context_free(ctx);
  }
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      mxlm_context_params cp = mxlm_context_default_params();
      cp.n_threads = 1 + i % 2;
      mxlm_context* ctx = nullptr;
      ASSERT_EQ(mxlm_context_create(m.m, &cp, &ctx), MXLM_OK);
      together[size_t(i)] = greedy(ctx, tokenize(m.m, prompts[i], true), 48).text;
      mxlm_context_free(ctx);
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(together[size_t(i)], alone[size_t(i)]) << prompts[i];
    EXPECT_GT(together[size_t(i)].size(), 40u);
  }
}

TEST(CoreBudget, NeverMoreThanItsCoresAndInOrder) {
  mxlm::CoreBudget budget(3);
  std::atomic<int> peak{0}, running{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&, i] {
      for (int r = 0; r < 50; ++r) {
        const int want = 1 + (i + r) % 4;  // 4 asks for more than the budget: it gets all 3
        mxlm::CoreLease lease(budget, want);
        const int now = running.fetch_add(std::min(want, 3)) + std::min(want, 3);
        int p = peak.load();
        while (now > p && !peak.compare_exchange_weak(p, now)) {
        }
        EXPECT_LE(budget.in_use(), 3);
        std::this_thread::yield();
        running.fetch_sub(std::min(want, 3));
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_LE(peak.load(), 3);
  EXPECT_EQ(budget.in_use(), 0);
}

}  // namespace
