// Chat templates and conversations: see mxlm/chat.h.
#include "mxlm/chat.h"

#include <algorithm>
#include <cctype>

#include "kernels/common.h"

namespace mxlm {

ChatTemplate ChatTemplate::plain() {
  ChatTemplate t;
  t.name_ = "plain";
  t.stops_ = {"\nUser:"};
  return t;
}

std::string ChatTemplate::render(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const {
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

}  // namespace mxlm
