// read_llama2c_tokenizer: llama2.c's tokenizer.bin.
//
// Layout (little endian): int32 max_token_length, then vocab_size records of
// {float32 score, int32 length, length bytes}. llama2.c's exporter writes pieces with "▁"
// replaced by a space and BOS/EOS as "\n<s>\n" / "\n</s>\n"; both are undone here so the entries
// match the sentencepiece model the file came from.
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "base/error.h"
#include "model/file_util.h"
#include "tokenizer/tokenizer.h"

namespace mxlm {
namespace {

constexpr std::string_view kSpaceSymbol = "\xE2\x96\x81";  // "▁" (U+2581)

bool is_byte_piece(std::string_view p) {
  auto hex = [](char c) { return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F') || (c >= 'a' && c <= 'f'); };
  return p.size() == 6 && p.substr(0, 3) == "<0x" && hex(p[3]) && hex(p[4]) && p[5] == '>';
}

std::string trim(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e && (s[b] == '\n' || s[b] == ' ' || s[b] == '\t' || s[b] == '\r')) ++b;
  while (e > b && (s[e - 1] == '\n' || s[e - 1] == ' ' || s[e - 1] == '\t' || s[e - 1] == '\r')) --e;
  return std::string(s.substr(b, e - b));
}

}  // namespace

std::vector<VocabEntry> read_llama2c_tokenizer(const std::string& path, int vocab_size) {
  if (vocab_size <= 0) {
    throw Error(ErrorCode::kInvalidArgument, "llama2.c tokenizer '" + path + "': vocab_size " + std::to_string(vocab_size) + " must be positive");
  }
  return parse_llama2c_tokenizer(read_file(path), vocab_size, path);
}

std::vector<VocabEntry> parse_llama2c_tokenizer(std::string_view data, int vocab_size, const std::string& path) {
  if (vocab_size <= 0) {
    throw Error(ErrorCode::kInvalidArgument, "llama2.c tokenizer '" + path + "': vocab_size " + std::to_string(vocab_size) + " must be positive");
  }
  auto fail = [&](const std::string& what) {
    throw Error(ErrorCode::kFormat, "llama2.c tokenizer '" + path + "': " + what);
  };
  // Each token takes at least 8 bytes (score, length): a vocabulary the file cannot hold is
  // rejected before reserve() (a model header claiming 2^24 tokens would reserve ~1 GiB).
  if (data.size() < 4 || static_cast<uint64_t>(vocab_size) > (data.size() - 4) / 8) {
    fail("a vocabulary of " + std::to_string(vocab_size) + " tokens needs at least " +
         std::to_string(4 + 8 * static_cast<uint64_t>(vocab_size)) + " bytes, the file has " + std::to_string(data.size()));
  }
  size_t pos = 0;
  auto read_u32 = [&](const char* what, size_t index) -> uint32_t {
    if (data.size() - pos < 4) {
      fail("truncated at byte " + std::to_string(pos) + " reading the " + what + " of token " + std::to_string(index) +
           " (file has " + std::to_string(data.size()) + " bytes)");
    }
    uint32_t v;
    std::memcpy(&v, data.data() + pos, 4);
    pos += 4;
    return v;
  };

  const uint32_t max_len = read_u32("header", 0);
  if (max_len == 0 || max_len > (1u << 16)) fail("max_token_length " + std::to_string(max_len) + " is out of range (1..65536)");

  std::vector<VocabEntry> vocab;
  vocab.reserve(static_cast<size_t>(vocab_size));
  for (int i = 0; i < vocab_size; ++i) {
    const uint32_t score_bits = read_u32("score", i);
    const uint32_t len = read_u32("length", i);
    if (len > max_len) {
      fail("token " + std::to_string(i) + " has length " + std::to_string(len) + " > max_token_length " + std::to_string(max_len));
    }
    if (data.size() - pos < len) {
      fail("truncated in token " + std::to_string(i) + " (needs " + std::to_string(len) + " bytes at offset " +
           std::to_string(pos) + ", file has " + std::to_string(data.size()) + ")");
    }
    std::string raw(data.substr(pos, len));
    pos += len;

    VocabEntry e;
    std::memcpy(&e.score, &score_bits, 4);
    if (i == 0) {
      e.type = VocabEntry::kUnknown;
      e.piece = trim(raw);
    } else if (i == 1 || i == 2) {
      e.type = VocabEntry::kControl;
      e.piece = trim(raw);
    } else if (is_byte_piece(raw)) {
      e.type = VocabEntry::kByte;
      e.piece = raw;
    } else {
      e.type = VocabEntry::kNormal;
      e.piece.reserve(raw.size() + 8);
      for (char c : raw) {
        if (c == ' ') {
          e.piece.append(kSpaceSymbol);
        } else {
          e.piece.push_back(c);
        }
      }
    }
    if (e.piece.empty()) fail("token " + std::to_string(i) + " is empty");
    vocab.push_back(std::move(e));
  }
  if (pos != data.size()) {
    fail(std::to_string(data.size() - pos) + " trailing bytes after " + std::to_string(vocab_size) +
         " tokens: is the vocabulary size right?");
  }
  return vocab;
}

}  // namespace mxlm
