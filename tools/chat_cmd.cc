// mxlm chat: a conversation with a model in the terminal.
//
// Each turn renders the whole conversation through the chat template (mxlm/chat.h), tokenizes
// it, and evaluates only the tokens after the longest prefix the context already holds: the
// earlier turns stay in the KV cache, so a turn costs its own tokens whatever came before (a
// reply re-tokenized inside the rendered text can differ from the tokens sampled in its last few
// tokens; those are re-evaluated). When the conversation outgrows the context, the oldest turns
// are dropped (the system message stays) and the user is told.
//
// On a terminal: line editing and history (libedit; history in $MXLM_CHAT_HISTORY, else
// ~/.mxlm_chat_history), the reply streamed as it is sampled, Ctrl-C stops a reply and keeps the
// conversation, Ctrl-D or /exit quits. Without a terminal it reads one user turn (or command) per
// line of stdin and prints each reply on its own line, for scripts.
#include <editline/readline.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "base/error.h"
#include "model/file_util.h"
#include "mxlm/chat.h"
#include "mxlm/model.h"
#include "mxlm/sampler.h"
#include "tokenizer/tokenizer.h"
#include "tools/commands.h"

namespace mxlm {
namespace {

std::atomic<bool> g_interrupted{false};
extern "C" void on_sigint(int) { g_interrupted.store(true); }

struct ChatArgs {
  std::string model, system, memory = "huge", chat_template = "model";
  KvArgs kv;
  int ctx = 0, threads = 0, n_predict = -1;
  bool ignore_eos = false;
  SamplerParams sampler;
};

std::string trim(std::string s) {
  const size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  const size_t e = s.find_last_not_of(" \t\r\n");
  return s.substr(b, e - b + 1);
}

class Chat {
 public:
  Chat(std::shared_ptr<const Model> model, const ContextParams& cp, const ChatArgs& a)
      : model_(std::move(model)), ctx_(model_, cp), tok_(model_->tokenizer()), tmpl_(ChatTemplate::from_spec(a.chat_template, *model_)),
        sampler_(a.sampler), args_(a), tty_(::isatty(0) && ::isatty(1)), encoder_(*model_) {
    if (!a.system.empty()) messages_.push_back({"system", a.system});
  }

  int run() {
    if (!tmpl_.is_jinja()) {
      std::fprintf(stderr, "mxlm: %s: turns are framed as plain \"User:\" / \"Assistant:\" lines\n",
                   model_->chat_template().empty() ? "the model has no chat template" : "--chat-template plain");
    } else {
      std::fprintf(stderr, "mxlm: chat template: %s\n", tmpl_.name().c_str());
    }
    if (tty_) {
      std::printf("mxlm chat: %s, context %d tokens. /help for commands; Ctrl-C stops a reply, Ctrl-D or /exit quits.\n",
                  args_.model.c_str(), ctx_.n_ctx());
      std::fflush(stdout);
      const char* h = std::getenv("MXLM_CHAT_HISTORY");
      const char* home = std::getenv("HOME");
      if (h && *h) history_ = h;
      else if (home && *home) history_ = std::string(home) + "/.mxlm_chat_history";
      if (!history_.empty()) read_history(history_.c_str());
    }
    struct sigaction sa = {};
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, nullptr);
    while (std::optional<std::string> line = read_line()) {
      const std::string in = trim(*line);
      if (in.empty()) continue;
      if (in[0] == '/') {
        if (!command(in)) break;
        continue;
      }
      if (size_t bad = find_invalid_utf8(in); bad != std::string::npos) {
        say("error: the message is not valid UTF-8 (bad byte at offset " + std::to_string(bad) + ")");
        continue;
      }
      turn(in);
    }
    if (tty_) {
      std::printf("\n");
      if (!history_.empty()) write_history(history_.c_str());
    }
    return 0;
  }

 private:
  // A line of input, nullopt at its end (Ctrl-D). Ctrl-C at the prompt clears the line.
  std::optional<std::string> read_line() {
    if (!tty_) {
      std::string s;
      if (!std::getline(std::cin, s)) return std::nullopt;
      return s;
    }
    for (;;) {
      g_interrupted.store(false);
      char* l = readline("> ");
      if (!l) {
        if (g_interrupted.exchange(false)) {
          std::printf("\n(Ctrl-D or /exit quits)\n");
          continue;
        }
        return std::nullopt;
      }
      std::string s(l);
      std::free(l);
      if (g_interrupted.exchange(false)) continue;
      if (!trim(s).empty()) add_history(s.c_str());
      return s;
    }
  }

  void say(const std::string& s) {
    std::printf("%s\n", s.c_str());
    std::fflush(stdout);
  }

  // Returns false to quit.
  bool command(const std::string& in) {
    const size_t sp = in.find(' ');
    const std::string cmd = in.substr(0, sp);
    const std::string arg = sp == std::string::npos ? "" : trim(in.substr(sp + 1));
    try {
      if (cmd == "/exit" || cmd == "/quit") return false;
      if (cmd == "/help") {
        say("/reset  forget the conversation (the system message stays)\n/system TEXT  set the system message\n"
            "/stats  tokens, speed, context and KV cache\n/save FILE  write the conversation as JSON\n"
            "/load FILE  read a conversation written by /save\n/exit  quit (also Ctrl-D)");
      } else if (cmd == "/reset") {
        std::vector<ChatMessage> keep;
        if (!messages_.empty() && messages_[0].role == "system") keep.push_back(messages_[0]);
        messages_ = keep;
        ctx_.reset();
        cached_.clear();
        cached_text_.clear();
        say("(conversation reset)");
      } else if (cmd == "/system") {
        if (!messages_.empty() && messages_[0].role == "system") messages_.erase(messages_.begin());
        if (!arg.empty()) messages_.insert(messages_.begin(), ChatMessage{"system", arg});
        say(arg.empty() ? "(system message removed)" : "(system message set)");
      } else if (cmd == "/stats") {
        stats();
      } else if (cmd == "/save") {
        if (arg.empty()) throw Error(ErrorCode::kInvalidArgument, "/save needs a file name");
        write_file(arg, chat_to_json(messages_).dump(2) + "\n");
        say("(saved " + std::to_string(messages_.size()) + " messages to " + arg + ")");
      } else if (cmd == "/load") {
        if (arg.empty()) throw Error(ErrorCode::kInvalidArgument, "/load needs a file name");
        const std::string text = read_file(arg);
        const nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
        if (j.is_discarded()) throw Error(ErrorCode::kFormat, "'" + arg + "' is not JSON");
        messages_ = chat_from_json(j, "'" + arg + "'");
        say("(loaded " + std::to_string(messages_.size()) + " messages from " + arg + ")");
      } else {
        say("unknown command " + cmd + " (/help lists them)");
      }
    } catch (const Error& e) {
      say(std::string("error: ") + e.what());
    }
    return true;
  }

  void stats() {
    char buf[512];
    const double used = 100.0 * ctx_.n_past() / ctx_.n_ctx();
    std::snprintf(buf, sizeof(buf),
                  "turns %d | last turn: evaluated %d new tokens (%.1f tok/s), replied %d tokens (%.1f tok/s)\n"
                  "context %d of %d tokens (%.1f %%) | KV cache %s per token, %s held, %s at the full context",
                  turns_, last_prompt_, last_prompt_s_ > 0 ? last_prompt_ / last_prompt_s_ : 0.0, last_reply_,
                  last_reply_s_ > 0 ? last_reply_ / last_reply_s_ : 0.0, ctx_.n_past(), ctx_.n_ctx(), used,
                  human_bytes(ctx_.kv_bytes_per_token()).c_str(),
                  human_bytes(uint64_t(ctx_.kv_bytes_per_token()) * uint64_t(ctx_.n_past())).c_str(), human_bytes(ctx_.kv_bytes()).c_str());
    say(buf);
  }

  // Brings the context to the rendered conversation `text` and returns the tokens it must
  // evaluate. The context keeps the longest run of the tokens it holds (sampled replies
  // included, as sampled) whose texts begin the conversation's text; the rest is encoded as its
  // continuation. So earlier turns are never evaluated again, whatever tokens a fresh encoding
  // of their text would give. At least one token is evaluated (its logits start the reply).
  using Tokens = ChatEncoder::Tokens;
  Tokens sync(const std::string& text) {
    size_t k = 0, bytes = 0;
    for (size_t i = 0; i < cached_.size(); ++i) {
      const std::string& t = cached_text_[i];
      if (bytes + t.size() > text.size() || text.compare(bytes, t.size(), t) != 0) break;
      bytes += t.size();
      k = i + 1;
    }
    if (k > 0 && bytes == text.size()) {  // all held: evaluate the last token again for its logits
      --k;
      bytes -= cached_text_[k].size();
    }
    Tokens fresh = encoder_.encode(std::string_view(text).substr(bytes), k == 0, k > 0);
    if (fresh.ids.empty() && k > 0) {
      --k;
      fresh.ids = {cached_[k]};
      fresh.texts = {cached_text_[k]};
    }
    ctx_.truncate(int(k));
    cached_.resize(k);
    cached_text_.resize(k);
    return fresh;
  }

  // The conversation rendered with the generation prompt, fitted into the context (the oldest
  // turns dropped, with a notice, until it leaves room for a reply); nullopt when even the last
  // message alone does not fit or the template rejects the conversation.
  std::optional<std::string> fitted_prompt() {
    const int reserve = std::max(1, args_.n_predict > 0 ? std::min(args_.n_predict, ctx_.n_ctx() / 2) : ctx_.n_ctx() / 4);
    int dropped = 0;
    for (;;) {
      std::string text;
      try {
        text = tmpl_.render(messages_, true);
      } catch (const Error& e) {
        say(std::string("error: ") + e.what());
        messages_.pop_back();
        return std::nullopt;
      }
      const size_t n = encoder_.encode(text, true, false).ids.size();
      if (int(n) + reserve <= ctx_.n_ctx()) {
        if (dropped) say("(context full: dropped the " + std::to_string(dropped) + " oldest messages)");
        return text;
      }
      const size_t first = !messages_.empty() && messages_[0].role == "system" ? 1 : 0;
      if (messages_.size() <= first + 1) {
        say("error: the message is " + std::to_string(n) + " tokens with the template; the context holds " +
            std::to_string(ctx_.n_ctx()) + " with room for a reply (raise -c or shorten it)");
        messages_.pop_back();
        return std::nullopt;
      }
      // A whole exchange at a time: templates that want user and assistant to alternate still
      // render what is left.
      messages_.erase(messages_.begin() + long(first));
      ++dropped;
      if (messages_.size() > first + 1 && messages_[first].role == "assistant") {
        messages_.erase(messages_.begin() + long(first));
        ++dropped;
      }
    }
  }

  void turn(const std::string& user) {
    using clock = std::chrono::steady_clock;
    messages_.push_back({"user", user});
    const auto prompt = fitted_prompt();
    if (!prompt) return;
    const Tokens fresh_tokens = sync(*prompt);
    const std::vector<int>& fresh = fresh_tokens.ids;
    g_interrupted.store(false);
    const auto t0 = clock::now();
    const float* logits = ctx_.eval(fresh);
    cached_.insert(cached_.end(), fresh.begin(), fresh.end());
    cached_text_.insert(cached_text_.end(), fresh_tokens.texts.begin(), fresh_tokens.texts.end());
    last_prompt_ = int(fresh.size());
    last_prompt_s_ = std::chrono::duration<double>(clock::now() - t0).count();

    const auto t1 = clock::now();
    const int n_vocab = model_->config().n_vocab, eos = model_->config().eos_id;
    const std::vector<std::string>& stops = args_.ignore_eos ? no_stops_ : tmpl_.stop_strings();
    StreamDecoder dec(tok_);
    dec.push(cached_.back());  // the reply goes on from the prompt: its leading space is real text
    std::string reply;
    size_t shown = 0;
    bool started = false;  // leading whitespace of the reply is not shown
    auto show = [&](size_t upto) {
      for (; shown < upto; ++shown) {
        if (!started && (reply[shown] == ' ' || reply[shown] == '\n')) continue;
        started = true;
        std::fputc(reply[shown], stdout);
      }
      std::fflush(stdout);
    };
    int n = 0;
    std::string ended;
    for (; args_.n_predict < 0 || n < args_.n_predict; ++n) {
      if (g_interrupted.load()) {
        ended = "stopped";
        break;
      }
      const int t = sampler_.sample(logits, n_vocab, cached_);
      if (!args_.ignore_eos && t == eos) break;
      // A special token that ends the turn (the template's end-of-turn marker).
      if (!args_.ignore_eos && tok_.is_control(t) &&
          std::find(stops.begin(), stops.end(), tok_.piece(t)) != stops.end()) {
        break;
      }
      const std::string piece = dec.push(t);
      reply += piece;
      bool stop = false;
      for (const std::string& s : stops) {
        if (size_t at = reply.find(s); at != std::string::npos) {
          reply.resize(at);
          stop = true;
        }
      }
      if (stop) break;
      show(reply.size() - stop_holdback(reply, stops));
      if (ctx_.n_past() >= ctx_.n_ctx()) {
        ended = "context full: the reply was cut; the oldest turns make room for the next";
        ++n;
        break;
      }
      const int one[1] = {t};
      logits = ctx_.eval(one);
      cached_.push_back(t);
      cached_text_.push_back(tok_.is_control(t) ? tok_.piece(t) : tok_.token_bytes(t, false));
    }
    reply += dec.flush();
    for (const std::string& s : stops) {
      if (size_t at = reply.find(s); at != std::string::npos) reply.resize(at);
    }
    show(reply.size());
    std::printf("\n");
    if (!ended.empty()) say("(" + ended + ")");
    last_reply_ = n;
    last_reply_s_ = std::chrono::duration<double>(clock::now() - t1).count();
    ++turns_;
    messages_.push_back({"assistant", tmpl_.reply_content(reply)});
    g_interrupted.store(false);
  }

  std::shared_ptr<const Model> model_;
  Context ctx_;
  const Tokenizer& tok_;
  ChatTemplate tmpl_;
  Sampler sampler_;
  ChatArgs args_;
  bool tty_;
  std::string history_;
  std::vector<ChatMessage> messages_;
  std::vector<int> cached_;  // the tokens the context holds, in order
  std::vector<std::string> cached_text_;  // the text each stands for in the rendered conversation
  ChatEncoder encoder_;  // the template's special tokens written as text become their ids
  const std::vector<std::string> no_stops_;
  int turns_ = 0, last_prompt_ = 0, last_reply_ = 0;
  double last_prompt_s_ = 0, last_reply_s_ = 0;
};

}  // namespace

Command add_chat_command(CLI::App& app) {
  auto a = std::make_shared<ChatArgs>();
  a->sampler.temperature = 0.7f;
  CLI::App* c = app.add_subcommand("chat", "Chat with a model in the terminal (one turn per line of stdin without one)");
  c->add_option("-m,--model", a->model, "model: .mxlm file, GGUF file or HF directory")->required();
  c->add_option("--system", a->system, "system message");
  c->add_option("--chat-template", a->chat_template,
                "model (default: the model's own template, else plain), plain (User:/Assistant: lines) or a Jinja2 template file");
  c->add_option("-c,--ctx", a->ctx, "context size (default: the model's)")->check(CLI::NonNegativeNumber);
  c->add_option("-n,--n-predict", a->n_predict, "tokens per reply at most (-1: until the reply ends)");
  c->add_option("-t,--threads", a->threads, "threads (default: all cores)");
  c->add_option("--temp", a->sampler.temperature, "temperature (0: greedy)");
  c->add_option("--top-k", a->sampler.top_k, "top-k (0: off)");
  c->add_option("--top-p", a->sampler.top_p, "top-p (1: off)");
  c->add_option("--min-p", a->sampler.min_p, "min-p (0: off)");
  c->add_option("--repeat-penalty", a->sampler.repeat_penalty, "repetition penalty (1: off)");
  c->add_option("--repeat-last-n", a->sampler.repeat_last_n, "tokens the repetition penalty looks back");
  c->add_option("-s,--seed", a->sampler.seed, "random seed");
  c->add_flag("--ignore-eos", a->ignore_eos, "replies end only at -n, Ctrl-C or a full context (not at end of text or of the turn)");
  add_kv_options(c, a->kv);
  c->add_option("--memory", a->memory, "weight memory: huge (default), copy or map");
  return {c, [a] {
            auto model = open_model(a->model, a->memory, a->threads);
            ContextParams cp;
            cp.n_ctx = a->ctx;
            cp.n_threads = a->threads;
            apply_kv(a->kv, model, a->threads, cp);
            Chat chat(model, cp, *a);
            return chat.run();
          }};
}

}  // namespace mxlm
