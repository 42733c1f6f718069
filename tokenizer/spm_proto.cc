// build_spm_model_proto: a sentencepiece ModelProto written in protobuf wire format by hand.
//
// Only the fields the sentencepiece runtime reads when it encodes and decodes are written
// (field numbers checked against sentencepiece_model.proto and real tokenizer.model files):
//
//   ModelProto      pieces = 1 (repeated SentencePiece), trainer_spec = 2, normalizer_spec = 3
//   SentencePiece   piece = 1 (string), score = 2 (float), type = 3 (enum)
//   TrainerSpec     model_type = 3 (1 UNIGRAM, 2 BPE), vocab_size = 4, byte_fallback = 35,
//                   unk_id = 40, bos_id = 41, eos_id = 42, pad_id = 43,
//                   unk_piece = 45, bos_piece = 46, eos_piece = 47, pad_piece = 48
//   NormalizerSpec  name = 1, add_dummy_prefix = 3, remove_extra_whitespaces = 4,
//                   escape_whitespaces = 5
//
// The runtime finds BOS/EOS/PAD through the *_piece strings (PieceToId), not the *_id fields,
// so both are written. The "identity" normalizer without a precompiled charsmap leaves the text
// as it is (no NFKC), as Llama's tokenizer does.
#include <cstdint>
#include <cstring>
#include <string>
#include <unordered_set>
#include <vector>

#include "base/error.h"
#include "tokenizer/tokenizer.h"

namespace mxlm {
namespace {

enum WireType : uint32_t { kVarint = 0, kFixed32 = 5, kLengthDelimited = 2 };

void put_varint(std::string* out, uint64_t v) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

void put_tag(std::string* out, uint32_t field, WireType wire) {
  put_varint(out, (static_cast<uint64_t>(field) << 3) | wire);
}

// int32 fields: negative values are sign-extended to 64 bits (10-byte varints), as protobuf does.
void put_int(std::string* out, uint32_t field, int64_t v) {
  put_tag(out, field, kVarint);
  put_varint(out, static_cast<uint64_t>(v));
}

void put_bool(std::string* out, uint32_t field, bool v) { put_int(out, field, v ? 1 : 0); }

void put_bytes(std::string* out, uint32_t field, std::string_view bytes) {
  put_tag(out, field, kLengthDelimited);
  put_varint(out, bytes.size());
  out->append(bytes.data(), bytes.size());
}

void put_float(std::string* out, uint32_t field, float v) {
  put_tag(out, field, kFixed32);
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  for (int i = 0; i < 4; ++i) out->push_back(static_cast<char>((bits >> (8 * i)) & 0xff));
}

// Checks that a special id is absent (-1) or names a piece of the expected type.
void check_special_id(const std::vector<VocabEntry>& vocab, const char* what, int id,
                      VocabEntry::Type want, bool required) {
  const int n = static_cast<int>(vocab.size());
  if (id < 0) {
    if (required) throw Error(ErrorCode::kInvalidArgument, std::string("spm model: ") + what + " is required, got -1");
    return;
  }
  if (id >= n) {
    throw Error(ErrorCode::kInvalidArgument, std::string("spm model: ") + what + " " + std::to_string(id) +
                                                 " is outside the vocabulary of " + std::to_string(n));
  }
  if (vocab[id].type != want) {
    throw Error(ErrorCode::kInvalidArgument,
                std::string("spm model: ") + what + " " + std::to_string(id) + " ('" + vocab[id].piece +
                    "') has piece type " + std::to_string(vocab[id].type) + ", expected " + std::to_string(want));
  }
}

}  // namespace

std::string build_spm_model_proto(const std::vector<VocabEntry>& vocab, const SpmBuildOptions& options) {
  if (vocab.empty()) throw Error(ErrorCode::kInvalidArgument, "spm model: the vocabulary is empty");
  if (vocab.size() > static_cast<size_t>(INT32_MAX)) {
    throw Error(ErrorCode::kInvalidArgument, "spm model: vocabulary of " + std::to_string(vocab.size()) + " entries is too large");
  }
  check_special_id(vocab, "unk_id", options.unk_id, VocabEntry::kUnknown, /*required=*/true);
  check_special_id(vocab, "bos_id", options.bos_id, VocabEntry::kControl, false);
  check_special_id(vocab, "eos_id", options.eos_id, VocabEntry::kControl, false);
  check_special_id(vocab, "pad_id", options.pad_id, VocabEntry::kControl, false);

  std::string out;
  std::unordered_set<std::string_view> seen;
  seen.reserve(vocab.size());
  int n_unknown = 0;
  for (size_t i = 0; i < vocab.size(); ++i) {
    const VocabEntry& e = vocab[i];
    if (e.piece.empty()) throw Error(ErrorCode::kInvalidArgument, "spm model: piece " + std::to_string(i) + " is empty");
    if (e.type < VocabEntry::kNormal || e.type > VocabEntry::kByte) {
      throw Error(ErrorCode::kInvalidArgument, "spm model: piece " + std::to_string(i) + " has unknown type " +
                                                   std::to_string(static_cast<int>(e.type)));
    }
    if (!seen.insert(e.piece).second) {
      throw Error(ErrorCode::kInvalidArgument, "spm model: piece " + std::to_string(i) + " ('" + e.piece + "') is a duplicate");
    }
    if (e.type == VocabEntry::kUnknown) ++n_unknown;
    if (e.type == VocabEntry::kByte && !options.byte_fallback) {
      throw Error(ErrorCode::kInvalidArgument, "spm model: byte piece " + std::to_string(i) + " ('" + e.piece +
                                                   "') found but byte_fallback is off");
    }
    std::string msg;
    put_bytes(&msg, 1, e.piece);
    put_float(&msg, 2, e.score);
    put_int(&msg, 3, e.type);
    put_bytes(&out, 1, msg);
  }
  if (n_unknown != 1) {
    throw Error(ErrorCode::kInvalidArgument, "spm model: expected exactly one unknown piece, found " + std::to_string(n_unknown));
  }

  // Absent specials get an empty piece name, which never matches a control piece.
  auto special_piece = [&](int id) -> std::string_view { return id >= 0 ? std::string_view(vocab[id].piece) : ""; };
  std::string trainer;
  put_int(&trainer, 3, options.bpe ? 2 : 1);
  put_int(&trainer, 4, static_cast<int64_t>(vocab.size()));
  put_bool(&trainer, 35, options.byte_fallback);
  put_int(&trainer, 40, options.unk_id);
  put_int(&trainer, 41, options.bos_id);
  put_int(&trainer, 42, options.eos_id);
  put_int(&trainer, 43, options.pad_id);
  put_bytes(&trainer, 45, special_piece(options.unk_id));
  put_bytes(&trainer, 46, special_piece(options.bos_id));
  put_bytes(&trainer, 47, special_piece(options.eos_id));
  put_bytes(&trainer, 48, special_piece(options.pad_id));
  put_bytes(&out, 2, trainer);

  std::string normalizer;
  put_bytes(&normalizer, 1, "identity");
  put_bool(&normalizer, 3, options.add_dummy_prefix);
  put_bool(&normalizer, 4, options.remove_extra_whitespaces);
  put_bool(&normalizer, 5, true);
  put_bytes(&out, 3, normalizer);
  return out;
}

}  // namespace mxlm
