// Chat templates and conversations: see mxlm/chat.h.
#include "mxlm/chat.h"

#include <algorithm>
#include <cctype>
#include <ctime>

#include "base/error.h"
#include "model/file_util.h"
#include "mxlm/model.h"
#include "runtime/jinja.h"
#include "tokenizer/tokenizer.h"

namespace mxlm {

ChatTemplate ChatTemplate::plain() {
  ChatTemplate t;
  t.name_ = "plain";
  t.stops_ = {"\nUser:"};
  return t;
}

ChatTemplate ChatTemplate::jinja(const std::string& source, std::string name, std::string bos_token, std::string eos_token) {
  ChatTemplate t;
  t.name_ = std::move(name);
  t.jinja_ = std::make_shared<const jinja::Template>(source);
  t.bos_ = std::move(bos_token);
  t.eos_ = std::move(eos_token);
  // What the template renders around a reply, from a probe conversation: the text between the
  // generation prompt and the reply, and the end-of-turn marker after it.
  const std::string marker = "\x02mxlm-reply\x02";
  try {
    const std::vector<ChatMessage> q = {{"user", "Hi"}};
    const std::string prompt = t.render(q, true);
    const std::string with = t.render({{"user", "Hi"}, {"assistant", marker}}, false);
    const size_t at = with.find(marker);
    if (at != std::string::npos && at >= prompt.size() && with.compare(0, prompt.size(), prompt) == 0) {
      t.sep_ = with.substr(prompt.size(), at - prompt.size());
    }
    if (at != std::string::npos) {
      std::string after = with.substr(at + marker.size());
      const size_t b = after.find_first_not_of(" \t\n");
      after = b == std::string::npos ? "" : after.substr(b);
      const size_t e = after.find_first_of(" \t\n");
      if (e != std::string::npos) after.resize(e);
      if (!after.empty()) t.stops_.push_back(after);
    }
  } catch (const Error&) {
    // A template that rejects the probe (it wants a system message first, ...): no stop
    // strings beyond EOS; the conversation's own rendering reports its errors.
  }
  return t;
}

namespace {

// A Jinja2 template rendered with the model's BOS and EOS pieces as bos_token / eos_token.
ChatTemplate jinja_for(const Model& model, const std::string& source, std::string name) {
  const Tokenizer& tok = model.tokenizer();
  auto piece = [&](int id) { return id >= 0 && id < tok.n_vocab() ? tok.piece(id) : std::string(); };
  return ChatTemplate::jinja(source, std::move(name), piece(model.config().bos_id), piece(model.config().eos_id));
}

}  // namespace

ChatTemplate ChatTemplate::for_model(const Model& model, bool* fallback) {
  const std::string& src = model.chat_template();
  if (fallback) *fallback = src.empty();
  if (src.empty()) return plain();
  return jinja_for(model, src, "the model's");
}

ChatTemplate ChatTemplate::from_spec(const std::string& spec, const Model& model) {
  if (spec == "plain") return plain();
  if (spec.empty() || spec == "model") return for_model(model);
  if (!file_exists(spec)) {
    throw Error(ErrorCode::kInvalidArgument, "--chat-template " + spec + ": neither plain, model nor a template file");
  }
  return jinja_for(model, read_file(spec), "'" + spec + "'");
}

std::string ChatTemplate::render(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const {
  if (jinja_) {
    nlohmann::ordered_json msgs = nlohmann::ordered_json::array();
    for (const ChatMessage& m : messages) msgs.push_back({{"role", m.role}, {"content", m.content}});
    nlohmann::ordered_json ctx = {{"messages", msgs},     {"add_generation_prompt", add_generation_prompt},
                                  {"bos_token", bos_},    {"eos_token", eos_},
                                  {"tools", nullptr},     {"documents", nullptr}};
    const std::time_t now = std::time(nullptr);
    std::tm tm{};
    localtime_r(&now, &tm);
    return jinja_->render(ctx, tm);
  }
  std::string out;
  for (const ChatMessage& m : messages) {
    if (m.role == "system") {
      out += m.content + "\n\n";
    } else if (m.role == "user") {
      out += "User: " + m.content + "\n";
    } else if (m.role == "assistant") {
      // The reply's own leading whitespace stands in for the separating space: the rendered text
      // is the reply as generated (reply_content).
      const bool ws = !m.content.empty() && std::isspace(static_cast<unsigned char>(m.content[0]));
      out += (ws || m.content.empty() ? "Assistant:" : "Assistant: ") + m.content + "\n";
    } else {
      throw Error(ErrorCode::kInvalidArgument, "chat message role '" + m.role + "' is not system, user or assistant");
    }
  }
  if (add_generation_prompt) out += "Assistant:";
  return out;
}

std::string ChatTemplate::reply_content(std::string generated) const {
  if (jinja_) {
    if (!sep_.empty() && generated.compare(0, sep_.size(), sep_) == 0) generated.erase(0, sep_.size());
    else if (!generated.empty() && generated[0] == ' ' && !sep_.empty() && sep_.back() == ' ') generated.erase(0, 1);
    return generated;
  }
  if (generated.size() >= 2 && generated[0] == ' ' && !std::isspace(static_cast<unsigned char>(generated[1]))) generated.erase(0, 1);
  return generated;
}

nlohmann::json chat_to_json(const std::vector<ChatMessage>& messages) {
  nlohmann::json arr = nlohmann::json::array();
  for (const ChatMessage& m : messages) arr.push_back({{"role", m.role}, {"content", m.content}});
  return {{"messages", arr}};
}

std::vector<ChatMessage> chat_from_json(const nlohmann::json& j, const std::string& what) {
  auto bad = [&](const std::string& why) { return Error(ErrorCode::kFormat, what + ": " + why); };
  if (!j.is_object() || !j.contains("messages") || !j["messages"].is_array()) throw bad("no \"messages\" array");
  std::vector<ChatMessage> out;
  for (size_t i = 0; i < j["messages"].size(); ++i) {
    const nlohmann::json& m = j["messages"][i];
    const std::string at = "message " + std::to_string(i);
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string() || !m.contains("content") || !m["content"].is_string()) {
      throw bad(at + " is not an object with string \"role\" and \"content\"");
    }
    ChatMessage msg{m["role"].get<std::string>(), m["content"].get<std::string>()};
    if (msg.role != "system" && msg.role != "user" && msg.role != "assistant") {
      throw bad(at + " has role '" + msg.role + "' (system, user or assistant)");
    }
    if (msg.role == "system" && i != 0) throw bad(at + " is a system message after the first");
    out.push_back(std::move(msg));
  }
  return out;
}

size_t stop_holdback(std::string_view text, const std::vector<std::string>& stops) {
  size_t hold = 0;
  for (const std::string& s : stops) {
    for (size_t n = std::min(s.size() - (s.empty() ? 0 : 1), text.size()); n > hold; --n) {
      if (text.substr(text.size() - n) == std::string_view(s).substr(0, n)) {
        hold = n;
        break;
      }
    }
  }
  return hold;
}

ChatEncoder::ChatEncoder(const Model& model) : tok_(model.tokenizer()), bos_(model.config().bos_id) {
  for (int id = 0; id < tok_.n_vocab(); ++id) {
    if (tok_.is_control(id) && tok_.piece(id).size() > 1) specials_.emplace_back(tok_.piece(id), id);
  }
}

int ChatEncoder::special_id(std::string_view piece) const {
  for (const auto& [p, id] : specials_) {
    if (p == piece) return id;
  }
  return -1;
}

ChatEncoder::Tokens ChatEncoder::encode(std::string_view text, bool add_bos, bool continuation) const {
  Tokens out;
  if (add_bos && bos_ >= 0 && bos_ < tok_.n_vocab() && text.substr(0, tok_.piece(bos_).size()) != tok_.piece(bos_)) {
    out.ids.push_back(bos_);
    out.texts.emplace_back();
  }
  size_t pos = 0;
  bool first_segment = true;
  while (pos < text.size()) {
    // The earliest special token at or after pos (the longest at one position).
    size_t at = std::string_view::npos;
    int id = -1;
    size_t id_len = 0;
    for (const auto& [piece, pid] : specials_) {
      const size_t f = text.find(piece, pos);
      if (f != std::string_view::npos && (f < at || (f == at && piece.size() > id_len))) {
        at = f;
        id = pid;
        id_len = piece.size();
      }
    }
    const std::string_view seg = text.substr(pos, at == std::string_view::npos ? std::string_view::npos : at - pos);
    if (!seg.empty()) {
      std::vector<int> ids;
      const bool cont = first_segment && continuation;
      if (cont) {
        // Behind a line break, the segment's first token carries no dummy-prefix space; the
        // break's own token(s) are dropped when they spell exactly "\n".
        ids = tok_.encode("\n" + std::string(seg), false);
        std::string lead;
        size_t drop = 0;
        for (size_t i = 0; i < ids.size() && lead.empty(); ++i) {
          lead += tok_.token_bytes(ids[i], i == 0);
          drop = i + 1;
        }
        if (lead == "\n") ids.erase(ids.begin(), ids.begin() + long(drop));
        else ids = tok_.encode(seg, false);
      } else {
        ids = tok_.encode(seg, false);
      }
      for (size_t i = 0; i < ids.size(); ++i) {
        out.ids.push_back(ids[i]);
        out.texts.push_back(tok_.token_bytes(ids[i], i == 0 && !cont));
      }
    }
    first_segment = false;
    if (at == std::string_view::npos) break;
    out.ids.push_back(id);
    out.texts.push_back(tok_.piece(id));
    pos = at + id_len;
  }
  return out;
}

}  // namespace mxlm
