// Tokenizers. SentencePiece models run through libsentencepiece; a model can come from a
// serialized ModelProto (a tokenizer.model file, or one embedded in a .mxlm file) or be built
// from a vocabulary list (GGUF and llama2.c vocabularies) with build_spm_model_proto().
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace mxlm {

// One vocabulary entry, as GGUF (tokenizer.ggml.*) and llama2.c tokenizer.bin describe it.
struct VocabEntry {
  enum Type : int {  // values of sentencepiece's ModelProto.SentencePiece.Type
    kNormal = 1,
    kUnknown = 2,
    kControl = 3,
    kUserDefined = 4,
    kUnused = 5,
    kByte = 6,
  };
  std::string piece;
  float score = 0.0f;
  Type type = kNormal;
};

struct SpmBuildOptions {
  bool bpe = true;                  // BPE (scores are merge priorities) or unigram
  bool byte_fallback = true;        // unknown characters become <0xXX> byte pieces
  bool add_dummy_prefix = true;     // a leading space (▁) is added to the text
  bool remove_extra_whitespaces = false;
  int unk_id = 0, bos_id = 1, eos_id = 2, pad_id = -1;
};

// Serializes a sentencepiece ModelProto (protobuf wire format, written by hand since Debian's
// libsentencepiece ships no proto header) for the given vocabulary.
std::string build_spm_model_proto(const std::vector<VocabEntry>& vocab, const SpmBuildOptions& options);

// Reads a llama2.c tokenizer.bin (int32 max_token_length, then per token: float32 score,
// int32 length, bytes). Piece types are inferred: id 0 unknown, ids 1-2 control, "<0xXX>"
// byte pieces, the rest normal. Throws Error (kFormat) naming the file on bad input.
std::vector<VocabEntry> read_llama2c_tokenizer(const std::string& path, int vocab_size);
// The same over the file's bytes; `name` stands for the path in messages. vocab_size is checked
// against the bytes (at least 8 per token) before anything is allocated for it.
std::vector<VocabEntry> parse_llama2c_tokenizer(std::string_view data, int vocab_size, const std::string& name);

class Tokenizer {
 public:
  // Loads a serialized sentencepiece ModelProto. Throws Error (kFormat) when it does not parse.
  static std::unique_ptr<Tokenizer> from_spm_proto(std::string_view serialized);
  ~Tokenizer();

  // Encodes text (must be valid UTF-8, else Error kInvalidArgument naming the byte offset)
  // and prepends BOS when add_bos.
  std::vector<int> encode(std::string_view text, bool add_bos) const;
  // Decodes a whole sequence as sentencepiece would (control tokens dropped).
  std::string decode(const std::vector<int>& ids) const;

  int n_vocab() const;
  int bos_id() const;
  int eos_id() const;
  bool is_control(int id) const;
  std::string piece(int id) const;  // the raw piece text, e.g. "▁the" or "<0x0A>"

  // The raw bytes a token stands for when streamed: "▁" becomes a space, a byte piece its byte,
  // control tokens nothing. When `first` is set (the first generated piece after BOS) the
  // leading space that the dummy prefix adds is dropped.
  std::string token_bytes(int id, bool first) const;

 private:
  Tokenizer();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Turns a stream of token ids into valid UTF-8 text: bytes of incomplete multi-byte sequences
// (byte-fallback pieces) are held until complete; invalid sequences become U+FFFD.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tok) : tok_(tok) {}
  // Returns the text that is complete after this token (possibly empty).
  std::string push(int id);
  // Returns what is still held (invalid leftovers as U+FFFD) and resets.
  std::string flush();

 private:
  const Tokenizer& tok_;
  std::string pending_;
  bool first_ = true;
};

// Returns the byte offset of the first invalid UTF-8 sequence in s, or npos when s is valid.
size_t find_invalid_utf8(std::string_view s);

}  // namespace mxlm
