// Conversations as prompt text: the messages of a chat and the template that renders them.
//
// A model's own template (HF chat_template, GGUF tokenizer.chat_template, kept in the .mxlm file)
// renders through the Jinja2 interpreter (runtime/jinja.h) as transformers renders it; a model
// without one (a base model such as tinymix-26m) gets the plain fallback.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace mxlm {

namespace jinja {
class Template;
}
class Model;
class Tokenizer;

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
  // A Jinja2 template (Error kFormat when it does not parse), rendered with the model's BOS and
  // EOS strings as bos_token / eos_token. Its stop strings are what it renders after an
  // assistant message (its end-of-turn marker: "</s>", "<|im_end|>", "<end_of_turn>", ...).
  static ChatTemplate jinja(const std::string& source, std::string name, std::string bos_token, std::string eos_token);
  // The model's own template; the plain fallback when it has none (*fallback then set).
  static ChatTemplate for_model(const Model& model, bool* fallback = nullptr);
  // --chat-template SPEC: "plain", "model" (the model's own, or plain), or a file holding a
  // Jinja2 template.
  static ChatTemplate from_spec(const std::string& spec, const Model& model);

  const std::string& name() const { return name_; }
  bool is_jinja() const { return jinja_ != nullptr; }
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
  std::shared_ptr<const jinja::Template> jinja_;
  std::string bos_, eos_;
  std::string sep_;  // what the template puts between the generation prompt and a reply
};

// Tokens of rendered chat text. A template writes its special tokens as text (<s>, </s>,
// <|im_end|>, <start_of_turn>, ...): every control piece of the vocabulary found in the text
// becomes its id, and the text between them is encoded as SentencePiece encodes a whole text (a
// dummy-prefix space in front, as llama.cpp and the slow HF tokenizers do after a special
// token). Text that continues earlier text (`continuation`) takes no dummy prefix: it is encoded
// behind a line break that is then dropped. With add_bos, BOS comes first unless the text
// begins with the BOS piece itself (which then becomes BOS).
class ChatEncoder {
 public:
  explicit ChatEncoder(const Model& model);  // the model's tokenizer and BOS; it must outlive this
  struct Tokens {
    std::vector<int> ids;
    std::vector<std::string> texts;  // the text each token stands for in `text` (BOS added: "")
  };
  Tokens encode(std::string_view text, bool add_bos, bool continuation) const;
  // The id of the control token whose piece is `piece` (e.g. "<|im_end|>"), or -1.
  int special_id(std::string_view piece) const;

 private:
  const Tokenizer& tok_;
  int bos_;
  std::vector<std::pair<std::string, int>> specials_;  // control pieces longer than one byte, and their ids
};

// A conversation as JSON ({"messages": [{"role", "content"}...]}) and back; from_json throws
// Error (kFormat) naming what is wrong (`what` names the source in the message).
nlohmann::json chat_to_json(const std::vector<ChatMessage>& messages);
std::vector<ChatMessage> chat_from_json(const nlohmann::json& j, const std::string& what);

// The length of the longest prefix of `text` that could begin one of `stops` at its end: text a
// streaming reply must hold back until it knows whether a stop string follows.
size_t stop_holdback(std::string_view text, const std::vector<std::string>& stops);

}  // namespace mxlm
