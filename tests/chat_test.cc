// mxlm chat as people use it: scripted through stdin (turns, commands, KV reuse measured in
// tokens evaluated, /save and /load, bad input) and in a real terminal driven through tmux
// (streamed turns, a full context, /reset, Ctrl-C in the middle of a reply and at the prompt,
// /exit). The plain template's rendering and the conversation JSON directly.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <string>
#include <thread>

#include "base/error.h"
#include "model/import.h"
#include "mxlm/chat.h"
#include "tests/test_util.h"

namespace mxlm {
namespace {

// tinymix-26m in bf16 (the HF directory converted once per test process).
std::string tinymix() {
  static std::string path;
  if (path.empty()) {
    path = test::scratch_dir() + "/chat_tinymix.mxlm";
    std::string out;
    const int st = test::run_command(test::mxlm_binary() + " convert " + test::shared_path("models/tinymix-26m") + " -o " + path + " -q", &out);
    EXPECT_EQ(st, 0) << out;
  }
  return path;
}

// Runs chat with `input` on stdin; returns stdout (stderr too when merge).
std::string scripted(const std::string& input, const std::string& flags = "", bool merge = false) {
  const std::string in = test::scratch_dir() + "/chat_input.txt";
  std::ofstream(in, std::ios::binary) << input;
  std::string out;
  const int st = test::run_command(test::mxlm_binary() + " chat -m " + tinymix() + " --temp 0 -t 1 -n 16 " + flags + " < " + in +
                                       (merge ? "" : " 2>/dev/null"),
                                   &out, merge);
  EXPECT_EQ(st, 0) << out;
  return out;
}

// The "evaluated N new tokens" counts of every /stats in the output.
std::vector<int> evaluated(const std::string& out) {
  std::vector<int> r;
  const std::regex re("evaluated (\\d+) new tokens");
  for (std::sregex_iterator it(out.begin(), out.end(), re), end; it != end; ++it) r.push_back(std::stoi((*it)[1]));
  return r;
}

TEST(ChatTemplate, PlainRendersTurnsAndStops) {
  const ChatTemplate t = ChatTemplate::plain();
  const std::vector<ChatMessage> m = {{"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello!"}, {"user", "Why?"}};
  EXPECT_EQ(t.render(m, true), "Be brief.\n\nUser: Hi\nAssistant: Hello!\nUser: Why?\nAssistant:");
  EXPECT_EQ(t.render(m, false), "Be brief.\n\nUser: Hi\nAssistant: Hello!\nUser: Why?\n");
  EXPECT_EQ(t.reply_content(" Sure.  "), "Sure.  ");
  // A reply's own leading whitespace renders as generated.
  for (const std::string g : {" Sure.", "  Sure.", "\n\tSure.", "Sure."}) {
    EXPECT_EQ(t.render({{"user", "Hi"}, {"assistant", t.reply_content(g)}}, false), "User: Hi\nAssistant:" + (g[0] == 'S' ? " " + g : g) + "\n") << g;
  }
  EXPECT_THROW(t.render({{"tool", "x"}}, true), Error);
  // A streamed reply holds back exactly what could start a stop string.
  EXPECT_EQ(stop_holdback("Fine.\nUs", t.stop_strings()), 3u);
  EXPECT_EQ(stop_holdback("Fine.\n", t.stop_strings()), 1u);
  EXPECT_EQ(stop_holdback("Fine.", t.stop_strings()), 0u);
  EXPECT_EQ(stop_holdback("", t.stop_strings()), 0u);
}

TEST(ChatTemplate, ConversationJsonRoundTripsAndRejectsBadInput) {
  const std::vector<ChatMessage> m = {{"system", "S"}, {"user", "ü \"q\""}, {"assistant", "a\nb"}};
  EXPECT_EQ(chat_from_json(chat_to_json(m), "x"), m);
  for (const char* bad : {R"({"messages": 3})", R"({"messages": [{"role": "user"}]})", R"({"messages": [{"role": "bot", "content": "x"}]})",
                          R"({"messages": [{"role": "user", "content": "x"}, {"role": "system", "content": "y"}]})", R"([1, 2])"}) {
    try {
      chat_from_json(nlohmann::json::parse(bad), "'f.json'");
      ADD_FAILURE() << bad;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kFormat);
      EXPECT_NE(std::string(e.what()).find("'f.json'"), std::string::npos) << e.what();
    }
  }
}

// Where an HF directory keeps its template: chat_template.jinja first, else tokenizer_config.json
// as a string or as a list of named templates ("default", else the first).
TEST(ChatTemplate, HfDirectoryForms) {
  namespace fs = std::filesystem;
  const std::string d = test::scratch_dir() + "/hf-forms";
  fs::create_directories(d);
  EXPECT_EQ(hf::read_chat_template(d), "");
  std::ofstream(d + "/tokenizer_config.json") << R"({"chat_template": "A"})";
  EXPECT_EQ(hf::read_chat_template(d), "A");
  std::ofstream(d + "/tokenizer_config.json") << R"({"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]})";
  EXPECT_EQ(hf::read_chat_template(d), "D");
  std::ofstream(d + "/tokenizer_config.json") << R"({"chat_template": [{"name": "rag", "template": "R"}]})";
  EXPECT_EQ(hf::read_chat_template(d), "R");
  std::ofstream(d + "/tokenizer_config.json") << R"({"bos_token": "<s>"})";
  EXPECT_EQ(hf::read_chat_template(d), "");
  std::ofstream(d + "/chat_template.jinja") << "J";
  EXPECT_EQ(hf::read_chat_template(d), "J");
  fs::remove(d + "/chat_template.jinja");
  std::ofstream(d + "/tokenizer_config.json") << "{not json";
  try {
    hf::read_chat_template(d);
    ADD_FAILURE() << "bad JSON accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer_config.json"), std::string::npos) << e.what();
  }
}

// Each turn evaluates only its own tokens: the second turn costs the same whether the first was
// short or long.
TEST(Chat, ScriptedTurnsReuseTheCache) {
  std::string long_first = "Tell me";
  for (int i = 0; i < 40; ++i) long_first += " about the old house by the sea";
  const std::string a = scripted("Hi\n/stats\nWhat did the dog do next?\n/stats\n");
  const std::string b = scripted(long_first + "\n/stats\nWhat did the dog do next?\n/stats\n");
  const std::vector<int> ea = evaluated(a), eb = evaluated(b);
  ASSERT_EQ(ea.size(), 2u) << a;
  ASSERT_EQ(eb.size(), 2u) << b;
  EXPECT_GT(eb[0], ea[0] + 200) << b;  // the long first turn is long
  EXPECT_EQ(ea[1], eb[1]) << a << "\n---\n" << b;
  EXPECT_LT(ea[1], 24) << a;  // "\nUser: What did the dog do next?\nAssistant:" and the reply's last token
  EXPECT_NE(a.find("turns 2"), std::string::npos) << a;
  // Replies are printed one per line of output, without the framing.
  EXPECT_EQ(a.find("Assistant:"), std::string::npos) << a;
  // The notice that the model has no template goes to stderr.
  const std::string c = scripted("Hi\n", "", true);
  EXPECT_NE(c.find("no chat template"), std::string::npos) << c;
}

TEST(Chat, SaveLoadSystemAndBadInput) {
  const std::string conv = test::scratch_dir() + "/conv.json";
  std::string out = scripted("/system You are terse.\nHi\nAnd then?\n/save " + conv + "\n");
  EXPECT_NE(out.find("(saved 5 messages"), std::string::npos) << out;
  std::ifstream f(conv);
  const nlohmann::json j = nlohmann::json::parse(f);
  ASSERT_EQ(j["messages"].size(), 5u) << j.dump();
  EXPECT_EQ(j["messages"][0]["role"], "system");
  EXPECT_EQ(j["messages"][0]["content"], "You are terse.");
  EXPECT_EQ(j["messages"][3]["content"], "And then?");

  // A loaded conversation goes on: the same reply to the same next turn as the original run.
  const std::string next = scripted("/system You are terse.\nHi\nAnd then?\nWhy?\n");
  const std::string loaded = scripted("/load " + conv + "\nWhy?\n");
  EXPECT_NE(loaded.find("(loaded 5 messages"), std::string::npos) << loaded;
  auto last_line = [](const std::string& s) {
    std::string t = s;
    while (!t.empty() && t.back() == '\n') t.pop_back();
    return t.substr(t.rfind('\n') + 1);
  };
  EXPECT_EQ(last_line(loaded), last_line(next)) << loaded << "\n---\n" << next;

  // Bad input is reported and the chat goes on; nothing the user had is overwritten.
  std::ofstream(test::scratch_dir() + "/notjson.txt") << "{nope";
  out = scripted("/load " + test::scratch_dir() + "/missing.json\n/load " + test::scratch_dir() +
                 "/notjson.txt\nbad \xff byte\n/frobnicate\n/save\nHi\n/stats\n/save /nonexistent-dir/x.json\n");
  EXPECT_NE(out.find("missing.json"), std::string::npos) << out;
  EXPECT_NE(out.find("is not JSON"), std::string::npos) << out;
  EXPECT_NE(out.find("not valid UTF-8"), std::string::npos) << out;
  EXPECT_NE(out.find("unknown command /frobnicate"), std::string::npos) << out;
  EXPECT_NE(out.find("/save needs a file name"), std::string::npos) << out;
  EXPECT_NE(out.find("turns 1"), std::string::npos) << out;
  EXPECT_NE(out.find("/nonexistent-dir"), std::string::npos) << out;
}

// A model's own template travels from the HF directory (tokenizer_config.json) into the .mxlm
// file, and chat renders turns with it (the model's special tokens as their ids); an imported
// directory does the same. Each turn still evaluates only its new tokens.
TEST(Chat, TheModelsOwnTemplate) {
  namespace fs = std::filesystem;
  const std::string dir = test::scratch_dir() + "/tinymix-chat";
  fs::create_directories(dir);
  for (const auto& e : fs::directory_iterator(test::shared_path("models/tinymix-26m"))) {
    fs::create_symlink(e.path(), dir + "/" + e.path().filename().string());
  }
  const std::string tmpl = std::string(MXLM_SOURCE_DIR) + "/tests/data/chat_templates/TinyLlama-1.1B-Chat-v1.0.jinja";
  std::ifstream tf(tmpl, std::ios::binary);
  const std::string source((std::istreambuf_iterator<char>(tf)), {});
  std::ofstream(dir + "/tokenizer_config.json") << nlohmann::json({{"chat_template", source}, {"bos_token", "<s>"}}).dump();
  const std::string out_model = test::scratch_dir() + "/tinymix-chat.mxlm";
  std::string out;
  ASSERT_EQ(test::run_command(test::mxlm_binary() + " convert " + dir + " -o " + out_model + " -q", &out), 0) << out;
  const std::string in = test::scratch_dir() + "/turns.txt";
  std::ofstream(in) << "Hi\n/stats\nWhat did the dog do next?\n/stats\n";
  for (const std::string& m : {out_model, dir}) {
    std::string o;
    ASSERT_EQ(test::run_command(test::mxlm_binary() + " chat -m " + m + " --system 'Be kind.' --temp 0 -t 1 -n 12 < " + in, &o), 0) << o;
    EXPECT_NE(o.find("chat template: the model's"), std::string::npos) << o;
    EXPECT_EQ(o.find("plain"), std::string::npos) << o;
    const std::vector<int> ev = evaluated(o);
    ASSERT_EQ(ev.size(), 2u) << o;
    // Turn 1: BOS, "<|system|>\nBe kind.</s>\n<|user|>\nHi</s>\n<|assistant|>\n"; turn 2 only
    // "</s>\n<|user|>\nWhat did the dog do next?</s>\n<|assistant|>\n" and the reply's last token.
    EXPECT_GT(ev[0], 15) << o;
    EXPECT_LT(ev[1], 40) << o;
  }
  {
    std::string o;
    ASSERT_EQ(test::run_command(test::mxlm_binary() + " inspect " + out_model, &o), 0) << o;
    EXPECT_NE(o.find("chat template: " + std::to_string(source.size()) + " bytes of Jinja2"), std::string::npos) << o;
  }
  // --chat-template overrides: plain, or a file; a missing file is a clear error.
  std::string o;
  EXPECT_EQ(test::run_command(test::mxlm_binary() + " chat -m " + out_model + " --chat-template plain -t 1 -n 4 < " + in, &o), 0) << o;
  EXPECT_NE(o.find("--chat-template plain"), std::string::npos) << o;
  EXPECT_EQ(test::run_command(test::mxlm_binary() + " chat -m " + out_model + " --chat-template /nonexistent.jinja -t 1 < " + in, &o), 1);
  EXPECT_NE(o.find("neither plain, model nor a template file"), std::string::npos) << o;
  // A template that does not parse names its line.
  const std::string bad = test::scratch_dir() + "/bad.jinja";
  std::ofstream(bad) << "{% for m in messages %}\n{{ m.content }";
  EXPECT_EQ(test::run_command(test::mxlm_binary() + " chat -m " + out_model + " --chat-template " + bad + " -t 1 < " + in, &o), 1);
  EXPECT_NE(o.find("chat template, line 2"), std::string::npos) << o;
}

// A tmux session running chat on a pty.
class Tmux {
 public:
  // A server of its own per session: a new one on a killed one's socket can fail to start.
  explicit Tmux(const std::string& command) : sock_("mxlm" + std::to_string(::getpid()) + "-" + std::to_string(count_++)) {
    const int st = test::run_command("tmux -L " + sock_ + " new-session -d -s chat -x 160 -y 50 \"" + command + "; echo EXITED rc=\\$?; sleep 120\"");
    EXPECT_EQ(st, 0);
  }
  ~Tmux() { test::run_command("tmux -L " + sock_ + " kill-server"); }
  void keys(const std::string& k) { test::run_command("tmux -L " + sock_ + " send-keys -t chat " + k); }
  std::string screen() {
    std::string out;
    test::run_command("tmux -L " + sock_ + " capture-pane -t chat -p -S -2000", &out, false);
    return out;
  }
  // Waits until the screen holds `n` matches of `re` and returns the screen. Up to 4 minutes:
  // under ASan on a loaded 2-core CI host a turn of tinymix-26m takes seconds, not milliseconds.
  std::string wait_for(const std::string& re, int n = 1) {
    const std::regex r(re);
    std::string s;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(4);
    while (std::chrono::steady_clock::now() < deadline) {
      s = screen();
      if (std::distance(std::sregex_iterator(s.begin(), s.end(), r), std::sregex_iterator()) >= n) return s;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    ADD_FAILURE() << "timed out waiting for /" << re << "/ x" << n << " on:\n" << s;
    return s;
  }
  // The "evaluated N new tokens" of the last /stats line on the screen (-1 when there is none).
  static int last_evaluated(const std::string& screen) {
    int n = -1;
    const std::regex r("last turn: evaluated (\\d+) new tokens");
    for (auto it = std::sregex_iterator(screen.begin(), screen.end(), r); it != std::sregex_iterator(); ++it) n = std::stoi((*it)[1]);
    return n;
  }

 private:
  static inline int count_ = 0;
  std::string sock_;
};

// Two sessions in a real terminal (tmux), turns rendered with a real template (TinyLlama-Chat's,
// which tinymix does not carry) in tinymix's 512-token context.
//  1. Replies of 40 tokens: a long first turn, then a short one that evaluates only its own
//     tokens (KV reuse: far fewer than the first turn's, which the context keeps), then a third
//     that no longer fits beside them and drops the oldest exchange, /reset and /exit.
//  2. Replies of up to 450 tokens: Ctrl-C in the middle of one stops it and keeps the
//     conversation, Ctrl-C at the prompt clears the line, Ctrl-D quits.
TEST(Chat, InATerminal) {
  if (test::run_command("command -v tmux >/dev/null") != 0) GTEST_SKIP() << "tmux is not installed (scripts/setup.sh installs it)";
  const std::string dir = test::scratch_dir();
  const std::string tmpl = std::string(MXLM_SOURCE_DIR) + "/tests/data/chat_templates/TinyLlama-1.1B-Chat-v1.0.jinja";
  const std::string chat = test::mxlm_binary() + " chat -m " + tinymix() + " --chat-template " + tmpl + " --temp 0 -t 1 --ignore-eos";
  // A prompt, with what was typed after it or empty (capture-pane may trim its trailing space).
  const std::string prompt = "\n>( |\n)";
  std::string long_turn;
  for (const char* s : {"Once upon a time there was a little girl named Lily who lived in a small house near the big forest",
                        "Every morning she walked to the river with her dog Max and her friend Tom to look at the fish",
                        "One day they found a shiny red box under an old tree and they did not know what was inside it",
                        "Lily wanted to open the box but Tom said that they should ask her mother first because it was not theirs",
                        "So they carried the box home and her mother smiled and told them a story about the old man who lost it",
                        "The next day they went back to the forest to find the old man and give the box back to him",
                        "He was very happy to see the box again and he gave them each a small cake and a big red apple",
                        "When the sun went down they walked home together and told everyone what a good day it had been"}) {
    long_turn += std::string(long_turn.empty() ? "" : " and then ") + s;
  }
  {
    Tmux t("MXLM_CHAT_HISTORY=" + dir + "/history " + chat + " -n 40 2>" + dir + "/chat_err.txt");
    t.wait_for(prompt);
    t.keys("'" + long_turn + "' Enter");
    t.wait_for(prompt, 2);
    t.keys("/stats Enter");
    std::string s = t.wait_for("turns 1 \\| last turn: evaluated \\d+ new tokens");
    const int first = Tmux::last_evaluated(s);
    t.keys("'What happened next?' Enter");
    t.wait_for(prompt, 4);
    t.keys("/stats Enter");
    s = t.wait_for("turns 2 \\| last turn: evaluated \\d+ new tokens");
    const int second = Tmux::last_evaluated(s);
    EXPECT_GT(first, 200) << s;
    // The second turn evaluates its own framing and text (and the first reply's last token),
    // not the first turn again: its cost does not grow with the first turn's length
    // (Chat.ScriptedTurnsReuseTheCache: the same count after a first turn of 12 or ~330 tokens).
    EXPECT_LT(second, 60) << s;
    EXPECT_LT(second * 3, first) << s;
    EXPECT_GT(second, 5) << s;
    int held = -1;
    const std::regex used("context (\\d+) of 512 tokens");
    for (auto it = std::sregex_iterator(s.begin(), s.end(), used); it != std::sregex_iterator(); ++it) held = std::stoi((*it)[1]);
    EXPECT_GT(held, first + second + 40) << s;  // both turns and both replies stay
    // A third long turn leaves no room for a reply of 40 beside the first exchange: it goes.
    t.keys("'" + long_turn + "' Enter");
    s = t.wait_for(prompt, 6);
    EXPECT_NE(s.find("(context full: dropped the 2 oldest messages)"), std::string::npos) << s;
    t.keys("/reset Enter");
    t.wait_for("\\(conversation reset\\)");
    t.keys("/stats Enter");
    t.wait_for("context 0 of 512 tokens");
    t.keys("/exit Enter");
    t.wait_for("EXITED rc=0");
  }
  std::ifstream e(dir + "/chat_err.txt");
  const std::string err((std::istreambuf_iterator<char>(e)), {});
  EXPECT_NE(err.find("chat template: '" + tmpl + "'"), std::string::npos) << err;
  {
    Tmux t("MXLM_CHAT_HISTORY=" + dir + "/history " + chat + " -n 450 2>/dev/null");
    t.wait_for(prompt);
    // Ctrl-C once the reply is streaming: it stops there and the conversation goes on.
    t.keys("'Tell me a story' Enter");
    t.wait_for("> Tell me a story\n.*\\S");
    t.keys("C-c");
    t.wait_for("\\(stopped\\)\n>( |\n)");
    t.keys("/stats Enter");
    const std::string s = t.wait_for("turns 1 \\| last turn: evaluated \\d+ new tokens \\([0-9.]+ tok/s\\), replied (\\d+) tokens");
    std::smatch m;
    ASSERT_TRUE(std::regex_search(s, m, std::regex("turns 1 .* replied (\\d+) tokens")));
    EXPECT_LT(std::stoi(m[1]), 450) << s;  // stopped before -n
    EXPECT_GT(std::stoi(m[1]), 0) << s;
    // Ctrl-C at the prompt clears the line; Ctrl-D quits.
    t.keys("'half a line' C-c");
    t.wait_for("\\(Ctrl-D or /exit quits\\)");
    t.keys("C-d");
    t.wait_for("EXITED rc=0");
  }
  std::ifstream h(dir + "/history");
  const std::string history((std::istreambuf_iterator<char>(h)), {});
  EXPECT_NE(history.find("story"), std::string::npos) << history;  // libedit's format escapes the spaces
  EXPECT_NE(history.find("happened"), std::string::npos) << history;  // kept from the first session
}

}  // namespace
}  // namespace mxlm
