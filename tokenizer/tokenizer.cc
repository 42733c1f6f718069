// Tokenizer over libsentencepiece, UTF-8 validation and the streaming decoder.
#include "tokenizer/tokenizer.h"

#include <sentencepiece_processor.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "base/error.h"

namespace mxlm {
namespace {

constexpr std::string_view kSpaceSymbol = "\xE2\x96\x81";        // "▁" (U+2581)
constexpr std::string_view kReplacement = "\xEF\xBF\xBD";        // U+FFFD
constexpr std::string_view kUnknownSurface = " \xE2\x81\x87 ";   // sentencepiece's default " ⁇ "

enum class Utf8Status { kValid, kInvalid, kIncomplete };

// Classifies the UTF-8 sequence that starts at p[0] (n > 0 bytes available). *len is the length
// of a valid sequence, or of the maximal ill-formed subpart (at least 1) for kInvalid, or of the
// truncated but so far well-formed prefix for kIncomplete.
Utf8Status classify_utf8(const unsigned char* p, size_t n, size_t* len) {
  const unsigned char b0 = p[0];
  size_t need;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (b0 < 0x80) {
    *len = 1;
    return Utf8Status::kValid;
  } else if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 3;
    if (b0 == 0xE0) lo = 0xA0;  // no overlongs
    if (b0 == 0xED) hi = 0x9F;  // no surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 4;
    if (b0 == 0xF0) lo = 0x90;  // no overlongs
    if (b0 == 0xF4) hi = 0x8F;  // nothing above U+10FFFF
  } else {
    *len = 1;
    return Utf8Status::kInvalid;
  }
  for (size_t i = 1; i < need; ++i) {
    if (i >= n) {
      *len = i;
      return Utf8Status::kIncomplete;
    }
    const unsigned char lo_i = i == 1 ? lo : 0x80, hi_i = i == 1 ? hi : 0xBF;
    if (p[i] < lo_i || p[i] > hi_i) {
      *len = i;
      return Utf8Status::kInvalid;
    }
  }
  *len = need;
  return Utf8Status::kValid;
}

int parse_byte_piece(std::string_view p) {
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  if (p.size() != 6 || p.substr(0, 3) != "<0x" || p[5] != '>') return -1;
  const int h = hex(p[3]), l = hex(p[4]);
  return h < 0 || l < 0 ? -1 : h * 16 + l;
}

// Protobuf wire reading, just enough to find NormalizerSpec.add_dummy_prefix (field 3 of field
// 3), which sentencepiece 0.1.97's public API does not expose. Returns false on malformed input.
bool read_varint(std::string_view s, size_t* pos, uint64_t* v) {
  *v = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (*pos >= s.size()) return false;
    const auto b = static_cast<unsigned char>(s[(*pos)++]);
    *v |= static_cast<uint64_t>(b & 0x7f) << shift;
    if (b < 0x80) return true;
  }
  return false;
}

// Calls fn(field, wire, varint_value, bytes) for each field of message s; false when malformed.
template <typename Fn>
bool for_each_field(std::string_view s, Fn fn) {
  size_t pos = 0;
  while (pos < s.size()) {
    uint64_t key, v = 0;
    if (!read_varint(s, &pos, &key)) return false;
    const uint32_t wire = key & 7;
    std::string_view bytes;
    switch (wire) {
      case 0:
        if (!read_varint(s, &pos, &v)) return false;
        break;
      case 1:
        if (s.size() - pos < 8) return false;
        pos += 8;
        break;
      case 5:
        if (s.size() - pos < 4) return false;
        pos += 4;
        break;
      case 2:
        if (!read_varint(s, &pos, &v) || v > s.size() - pos) return false;
        bytes = s.substr(pos, v);
        pos += v;
        break;
      default:
        return false;
    }
    fn(key >> 3, wire, v, bytes);
  }
  return true;
}

bool proto_add_dummy_prefix(std::string_view serialized) {
  bool add_dummy_prefix = true;  // the proto default
  for_each_field(serialized, [&](uint64_t field, uint32_t wire, uint64_t, std::string_view bytes) {
    if (field != 3 || wire != 2) return;
    for_each_field(bytes, [&](uint64_t f, uint32_t w, uint64_t v, std::string_view) {
      if (f == 3 && w == 0) add_dummy_prefix = v != 0;
    });
  });
  return add_dummy_prefix;
}

// sentencepiece 0.1.97 puts every piece into a darts_clone trie of NUL-terminated keys, which
// throws its own exception type (not a status) on an empty key: a piece that is empty, starts
// with or contains a NUL byte (found by fuzz/fuzz_spm), or is missing (a SentencePiece message
// without field 1). Returns the index of the first such piece, or -1.
int64_t first_bad_piece(std::string_view serialized) {
  int64_t index = 0, found = -1;
  for_each_field(serialized, [&](uint64_t field, uint32_t wire, uint64_t, std::string_view bytes) {
    if (field != 1 || wire != 2) return;
    bool has_piece = false;
    for_each_field(bytes, [&](uint64_t f, uint32_t w, uint64_t, std::string_view piece) {
      // The last occurrence wins, as in protobuf.
      if (f == 1 && w == 2) has_piece = !piece.empty() && piece.find('\0') == std::string_view::npos;
    });
    if (!has_piece && found < 0) found = index;
    ++index;
  });
  return found;
}

}  // namespace

size_t find_invalid_utf8(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  size_t i = 0;
  while (i < s.size()) {
    size_t len;
    if (classify_utf8(p + i, s.size() - i, &len) != Utf8Status::kValid) return i;
    i += len;
  }
  return std::string_view::npos;
}

struct Tokenizer::Impl {
  sentencepiece::SentencePieceProcessor sp;
  bool add_dummy_prefix = true;
  int n_vocab = 0;
  // Per id: the bytes it streams as (▁ -> space, byte pieces -> their byte, control -> "").
  std::vector<std::string> bytes;
  std::vector<bool> control;
};

Tokenizer::Tokenizer() : impl_(std::make_unique<Impl>()) {}
Tokenizer::~Tokenizer() = default;

std::unique_ptr<Tokenizer> Tokenizer::from_spm_proto(std::string_view serialized) {
  std::unique_ptr<Tokenizer> tok(new Tokenizer());
  Impl& m = *tok->impl_;
  if (const int64_t i = first_bad_piece(serialized); i >= 0) {
    throw Error(ErrorCode::kFormat, "sentencepiece model (" + std::to_string(serialized.size()) + " bytes): piece " +
                                        std::to_string(i) + " is empty or contains a NUL byte");
  }
  sentencepiece::util::Status status;
  try {
    status = m.sp.LoadFromSerializedProto(serialized);
  } catch (const std::exception& e) {  // anything else its dependencies throw: a bad model too
    throw Error(ErrorCode::kFormat, "sentencepiece model (" + std::to_string(serialized.size()) +
                                        " bytes) does not load: " + e.what());
  }
  if (!status.ok()) {
    throw Error(ErrorCode::kFormat, "sentencepiece model (" + std::to_string(serialized.size()) +
                                        " bytes) does not load: " + status.ToString());
  }
  m.n_vocab = m.sp.GetPieceSize();
  if (m.n_vocab <= 0) throw Error(ErrorCode::kFormat, "sentencepiece model has an empty vocabulary");
  m.add_dummy_prefix = proto_add_dummy_prefix(serialized);
  m.bytes.resize(m.n_vocab);
  m.control.resize(m.n_vocab);
  for (int id = 0; id < m.n_vocab; ++id) {
    const std::string piece = m.sp.IdToPiece(id);
    std::string& out = m.bytes[id];
    if (m.sp.IsControl(id)) {
      m.control[id] = true;
    } else if (m.sp.IsUnknown(id)) {
      out = std::string(kUnknownSurface);
    } else if (int b = m.sp.IsByte(id) ? parse_byte_piece(piece) : -1; b >= 0) {
      out.push_back(static_cast<char>(b));
    } else {
      for (size_t i = 0; i < piece.size();) {
        if (piece.compare(i, kSpaceSymbol.size(), kSpaceSymbol) == 0) {
          out.push_back(' ');
          i += kSpaceSymbol.size();
        } else {
          out.push_back(piece[i++]);
        }
      }
    }
  }
  return tok;
}

std::vector<int> Tokenizer::encode(std::string_view text, bool add_bos) const {
  if (size_t bad = find_invalid_utf8(text); bad != std::string_view::npos) {
    throw Error(ErrorCode::kInvalidArgument, "encode: invalid UTF-8 at byte offset " + std::to_string(bad) + " (byte 0x" +
                                                 [&] {
                                                   static const char* kHex = "0123456789ABCDEF";
                                                   const auto c = static_cast<unsigned char>(text[bad]);
                                                   return std::string{kHex[c >> 4], kHex[c & 15]};
                                                 }() +
                                                 ") of " + std::to_string(text.size()) + " bytes");
  }
  std::vector<int> ids;
  const auto status = impl_->sp.Encode(text, &ids);
  if (!status.ok()) throw Error(ErrorCode::kInternal, "sentencepiece encode failed: " + status.ToString());
  if (add_bos) {
    const int bos = bos_id();
    if (bos < 0) throw Error(ErrorCode::kInvalidArgument, "encode: BOS requested but the tokenizer has no BOS token");
    ids.insert(ids.begin(), bos);
  }
  return ids;
}

std::string Tokenizer::decode(const std::vector<int>& ids) const {
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= impl_->n_vocab) {
      throw Error(ErrorCode::kInvalidArgument, "decode: token id " + std::to_string(ids[i]) + " at position " +
                                                   std::to_string(i) + " is outside the vocabulary of " +
                                                   std::to_string(impl_->n_vocab));
    }
  }
  std::string text;
  const auto status = impl_->sp.Decode(ids, &text);
  if (!status.ok()) throw Error(ErrorCode::kInternal, "sentencepiece decode failed: " + status.ToString());
  return text;
}

int Tokenizer::n_vocab() const { return impl_->n_vocab; }
int Tokenizer::bos_id() const { return impl_->sp.bos_id(); }
int Tokenizer::eos_id() const { return impl_->sp.eos_id(); }

bool Tokenizer::is_control(int id) const { return id >= 0 && id < impl_->n_vocab && impl_->control[id]; }

std::string Tokenizer::piece(int id) const {
  if (id < 0 || id >= impl_->n_vocab) {
    throw Error(ErrorCode::kInvalidArgument,
                "piece: token id " + std::to_string(id) + " is outside the vocabulary of " + std::to_string(impl_->n_vocab));
  }
  return impl_->sp.IdToPiece(id);
}

std::string Tokenizer::token_bytes(int id, bool first) const {
  if (id < 0 || id >= impl_->n_vocab) {
    throw Error(ErrorCode::kInvalidArgument, "token_bytes: token id " + std::to_string(id) +
                                                 " is outside the vocabulary of " + std::to_string(impl_->n_vocab));
  }
  const std::string& b = impl_->bytes[id];
  // Only a space that came from a "▁" piece prefix is the dummy prefix (not a <0x20> byte).
  if (first && impl_->add_dummy_prefix && !b.empty() && b[0] == ' ' && !impl_->sp.IsByte(id) && !impl_->sp.IsUnknown(id)) {
    return b.substr(1);
  }
  return b;
}

std::string StreamDecoder::push(int id) {
  pending_ += tok_.token_bytes(id, first_);
  if (!tok_.is_control(id)) first_ = false;
  std::string out;
  const auto* p = reinterpret_cast<const unsigned char*>(pending_.data());
  const size_t n = pending_.size();
  size_t i = 0;
  while (i < n) {
    size_t len;
    const Utf8Status st = classify_utf8(p + i, n - i, &len);
    if (st == Utf8Status::kIncomplete) break;  // hold until more bytes arrive
    if (st == Utf8Status::kValid) {
      out.append(pending_, i, len);
    } else {
      out.append(kReplacement);
    }
    i += len;
  }
  pending_.erase(0, i);
  return out;
}

std::string StreamDecoder::flush() {
  // Whatever is held is a truncated sequence (push() emits everything else): one U+FFFD.
  std::string out = pending_.empty() ? std::string() : std::string(kReplacement);
  pending_.clear();
  first_ = true;
  return out;
}

}  // namespace mxlm
