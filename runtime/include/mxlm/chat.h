// Conversations as prompt text: the messages of a chat and the template that renders them.
//
// Today one template exists: the plain fallback for models that carry none (base models such as
// tinymix-26m). Models' own templates (HF chat_template, GGUF tokenizer.chat_template) render
// through the same interface once the template engine lands (issue 12, item 1).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace mxlm {

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
  bool operator==(const ChatMessage&) const = default;
};

class ChatTemplate {
 public:
  // The plain fallback:
  //   <system>\n\n  (when there is a system message)
  //   User: <content>\n
  //   Assistant: <content>\n   (each earlier reply; no space when the content begins with one)
  //   Assistant:               (the generation prompt)
  // A reply ends at end of text or where it starts a new "User:" line.
  static ChatTemplate plain();

  const std::string& name() const { return name_; }
  // The conversation as prompt text (without BOS: the tokenizer adds it); with
  // add_generation_prompt, followed by what opens the assistant's reply.
  std::string render(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const;
  // The content of an assistant message from the text its reply generated: without what the
  // template puts between the generation prompt and the content (plain: one space before a
  // non-space). Nothing else is trimmed, so the rendered conversation holds the reply's text as generated and the
  // context keeps its tokens (tools/chat_cmd.cc).
  std::string reply_content(std::string generated) const;
  // Text that ends a reply besides the end-of-text token; a reply never contains it.
  const std::vector<std::string>& stop_strings() const { return stops_; }

 private:
  std::string name_;
  std::vector<std::string> stops_;
};

// A conversation as JSON ({"messages": [{"role", "content"}...]}) and back; from_json throws
// Error (kFormat) naming what is wrong (`what` names the source in the message).
nlohmann::json chat_to_json(const std::vector<ChatMessage>& messages);
std::vector<ChatMessage> chat_from_json(const nlohmann::json& j, const std::string& what);

// The length of the longest prefix of `text` that could begin one of `stops` at its end: text a
// streaming reply must hold back until it knows whether a stop string follows.
size_t stop_holdback(std::string_view text, const std::vector<std::string>& stops);

}  // namespace mxlm
