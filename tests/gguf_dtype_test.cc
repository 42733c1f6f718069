// GGUF F16 and BF16 import. The shared stories260K GGUF is F32 only, so this test rewrites it
// with its own minimal GGUF writer: every key/value and the vocabulary copied byte for byte,
// every 2-D tensor converted to F16 or BF16 (round to nearest, ties to even, computed here in
// the value domain, independent of base/error.h), the 1-D norms kept F32 as llama.cpp does.
// Both copies go through the project's importer; the weights must equal the correctly rounded
// F32 weights exactly, and the logits must stay within a bound proportional to the unit
// roundoff of the format. Swapping the F16 and BF16 cases of the importer reads one format's
// bits as the other's and fails both checks by orders of magnitude.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "model/import.h"
#include "mxlm/model.h"
#include "tests/test_util.h"

namespace mxlm {
namespace {

// ---- rounding, in the value domain ----------------------------------------------------------

// x rounded to `mant_bits` significant bits after the leading one (f16: 10, bf16: 7), with the
// exponent floored at `min_exp` (subnormals: the quantum stops shrinking there), ties to even.
double round_to_format(float x, int mant_bits, int min_exp) {
  if (x == 0.0f || !std::isfinite(x)) return x;
  int e;
  std::frexp(static_cast<double>(x), &e);  // |x| = f * 2^e, f in [0.5, 1): the leading one is 2^(e-1)
  const int lead = std::max(e - 1, min_exp);
  const double quantum = std::ldexp(1.0, lead - mant_bits);
  return std::nearbyint(static_cast<double>(x) / quantum) * quantum;  // default rounding: ties to even
}

double round_f16(float x) { return round_to_format(x, 10, -14); }
double round_bf16(float x) { return round_to_format(x, 7, -126); }

// IEEE half bits of a value that is exactly representable in f16 (the output of round_f16).
uint16_t f16_bits(double v) {
  const uint16_t sign = std::signbit(v) ? 0x8000 : 0;
  const double a = std::fabs(v);
  if (a == 0) return sign;
  if (a >= 65536.0) return sign | 0x7c00;  // rounded past the largest half: infinity
  if (a < std::ldexp(1.0, -14)) return sign | static_cast<uint16_t>(a / std::ldexp(1.0, -24));  // subnormal
  int e;
  const double f = std::frexp(a, &e);  // a = f * 2^e
  const int exp = e - 1 + 15;
  const auto mant = static_cast<uint16_t>(std::ldexp(f, 11) - 1024);
  return sign | static_cast<uint16_t>(exp << 10) | mant;
}

double f16_value(uint16_t h) {  // decoder for the self-check of f16_bits
  const int exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
  const double v = exp == 0 ? std::ldexp(mant, -24) : std::ldexp(1024 + mant, exp - 25);
  return (h & 0x8000) ? -v : v;
}

uint16_t bf16_bits(double v) {
  const float f = static_cast<float>(v);  // exact: v has 8 significant bits
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if (u & 0xffff) throw std::logic_error("bf16_bits: value not representable");
  return static_cast<uint16_t>(u >> 16);
}

// ---- a minimal GGUF reader/writer -----------------------------------------------------------

constexpr uint32_t kF32 = 0, kF16 = 1, kBF16 = 30;  // ggml type ids

struct GgufTensor {
  std::string name;
  std::vector<uint64_t> ne;
  uint32_t type = 0;
  uint64_t offset = 0;  // relative to the data section
};

struct Gguf {
  uint32_t version = 0;
  uint64_t n_kv = 0;
  std::string kv_bytes;  // the key/value section, verbatim
  uint32_t alignment = 32;
  std::vector<GgufTensor> tensors;
  std::string data;  // the data section
};

class Reader {
 public:
  explicit Reader(const std::string& b) : b_(b) {}
  template <typename T>
  T get() {
    if (pos_ + sizeof(T) > b_.size()) throw std::runtime_error("gguf: truncated");
    T v;
    std::memcpy(&v, b_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string str() {
    const auto n = get<uint64_t>();
    if (n > b_.size() - pos_) throw std::runtime_error("gguf: truncated string");
    std::string s = b_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  void skip_value(uint32_t type) {
    static const int kSize[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    if (type == 8) {
      str();
    } else if (type == 9) {
      const auto et = get<uint32_t>();
      const auto n = get<uint64_t>();
      for (uint64_t i = 0; i < n; ++i) skip_value(et);
    } else if (type < 13) {
      pos_ += kSize[type];
    } else {
      throw std::runtime_error("gguf: bad value type");
    }
  }
  size_t pos() const { return pos_; }

 private:
  const std::string& b_;
  size_t pos_ = 0;
};

uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

Gguf read_gguf(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  const std::string b((std::istreambuf_iterator<char>(f)), {});
  Reader r(b);
  if (r.get<uint32_t>() != 0x46554747u) throw std::runtime_error("not GGUF");
  Gguf g;
  g.version = r.get<uint32_t>();
  const auto n_tensors = r.get<uint64_t>();
  g.n_kv = r.get<uint64_t>();
  const size_t kv_begin = r.pos();
  for (uint64_t i = 0; i < g.n_kv; ++i) {
    const std::string key = r.str();
    const auto type = r.get<uint32_t>();
    if (key == "general.alignment") {
      if (type != 4) throw std::runtime_error("alignment type");
      g.alignment = r.get<uint32_t>();
    } else {
      r.skip_value(type);
    }
  }
  g.kv_bytes = b.substr(kv_begin, r.pos() - kv_begin);
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensor t;
    t.name = r.str();
    const auto nd = r.get<uint32_t>();
    for (uint32_t d = 0; d < nd; ++d) t.ne.push_back(r.get<uint64_t>());
    t.type = r.get<uint32_t>();
    t.offset = r.get<uint64_t>();
    g.tensors.push_back(t);
  }
  g.data = b.substr(align_up(r.pos(), g.alignment));
  return g;
}

void write_gguf(const std::string& path, const Gguf& g) {
  std::string out = "GGUF";
  auto put = [&](auto v) { out.append(reinterpret_cast<const char*>(&v), sizeof(v)); };
  put(g.version);
  put(static_cast<uint64_t>(g.tensors.size()));
  put(g.n_kv);
  out += g.kv_bytes;
  for (const auto& t : g.tensors) {
    put(static_cast<uint64_t>(t.name.size()));
    out += t.name;
    put(static_cast<uint32_t>(t.ne.size()));
    for (uint64_t n : t.ne) put(n);
    put(t.type);
    put(t.offset);
  }
  out.resize(align_up(out.size(), g.alignment), '\0');
  out += g.data;
  std::ofstream(path, std::ios::binary) << out;
}

uint64_t elements(const GgufTensor& t) {
  uint64_t n = 1;
  for (uint64_t d : t.ne) n *= d;
  return n;
}

// The F32 GGUF with every 2-D tensor converted to `type` (kF16 or kBF16); returns the path.
std::string converted_gguf(uint32_t type) {
  const Gguf src = read_gguf(test::shared_path("models/stories260K/stories260K.gguf"));
  Gguf dst = src;
  dst.tensors.clear();
  dst.data.clear();
  for (const auto& t : src.tensors) {
    if (t.type != kF32) throw std::runtime_error("source tensor " + t.name + " is not F32");
    GgufTensor o = t;
    const uint64_t n = elements(t);
    const char* p = src.data.data() + t.offset;
    dst.data.resize(align_up(dst.data.size(), src.alignment), '\0');
    o.offset = dst.data.size();
    if (t.ne.size() == 2) {
      o.type = type;
      for (uint64_t i = 0; i < n; ++i) {
        float x;
        std::memcpy(&x, p + 4 * i, 4);
        const uint16_t h = type == kF16 ? f16_bits(round_f16(x)) : bf16_bits(round_bf16(x));
        dst.data.append(reinterpret_cast<const char*>(&h), 2);
      }
    } else {
      dst.data.append(p, 4 * n);
    }
    dst.tensors.push_back(o);
  }
  const std::string path = test::scratch_dir() + (type == kF16 ? "/stories260K_f16.gguf" : "/stories260K_bf16.gguf");
  write_gguf(path, dst);
  return path;
}

TEST(GgufDtypeHelpers, RoundingIsToNearestEven) {
  // Ties to even at the f16 boundary between 1 and 1 + 2^-10, subnormals, carries.
  EXPECT_EQ(round_f16(1.0f + std::ldexp(1.0f, -11)), 1.0);                                  // tie: to even (down)
  EXPECT_EQ(round_f16(1.0f + 3 * std::ldexp(1.0f, -11)), 1.0 + std::ldexp(1.0, -9));        // tie: to even (up)
  EXPECT_EQ(round_f16(1.0f + std::ldexp(1.0f, -11) + std::ldexp(1.0f, -20)), 1.0 + std::ldexp(1.0, -10));
  EXPECT_EQ(round_f16(std::ldexp(1.0f, -25) * 3), std::ldexp(1.0, -23));                    // subnormal tie, to even
  EXPECT_EQ(round_f16(2047.9f), 2048.0);                                                    // carry into the exponent
  EXPECT_EQ(round_bf16(1.0f + std::ldexp(1.0f, -8)), 1.0);
  EXPECT_EQ(round_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 1.0 + std::ldexp(1.0, -6));
  EXPECT_EQ(round_bf16(-3.14159f), -3.140625);
  EXPECT_EQ(f16_bits(1.0), 0x3c00);
  EXPECT_EQ(f16_bits(-2.0), 0xc000);
  EXPECT_EQ(f16_bits(std::ldexp(1.0, -24)), 0x0001);
  EXPECT_EQ(f16_bits(65504.0), 0x7bff);
  EXPECT_EQ(bf16_bits(1.0), 0x3f80);
  for (float x : {0.3f, -1e-6f, 7e-5f, 1234.5f, -0.0123f}) EXPECT_EQ(f16_value(f16_bits(round_f16(x))), round_f16(x)) << x;
}

// A model imported from a GGUF file, converted to a .mxlm f32 file (which holds the imported
// values exactly) and loaded.
std::shared_ptr<const Model> load_via_mxlm(const ImportedModel& m, const std::string& name) {
  const std::string out = test::scratch_dir() + "/" + name + ".mxlm";
  convert_to_mxlm(m, out, QType::kF32);
  return Model::load(out);
}

std::vector<int> story_tokens() {
  std::ifstream f(test::shared_path("ref/stories260K/stories260K_once_n64.tokens.txt"));
  std::vector<int> ids;
  std::string line;
  while (std::getline(f, line)) {
    if (line.empty() || line[0] == '#') continue;
    int pos, in, next;
    if (std::sscanf(line.c_str(), "%d %d %d", &pos, &in, &next) == 3) ids.push_back(in);
  }
  return ids;
}

struct DtypeCase {
  const char* name;
  uint32_t ggml_type;
  QType qtype;
  double (*round)(float);
  double unit_roundoff;  // 2^-(mantissa bits + 1)
};

void expect_correct_import(const DtypeCase& c) {
  const ImportedModel ref = import_model(test::shared_path("models/stories260K/stories260K.gguf"));
  const ImportedModel got = import_model(converted_gguf(c.ggml_type));
  EXPECT_EQ(got.config.to_json(), ref.config.to_json());
  EXPECT_EQ(got.tokenizer_proto, ref.tokenizer_proto);
  ASSERT_EQ(got.tensors.size(), ref.tensors.size());
  ASSERT_EQ(ref.tensors.size(), 48u);  // embedding, output norm, output head, 9 per layer × 5
  std::map<std::string, const SourceTensor*> by_name;
  for (const auto& t : ref.tensors) by_name[t.name] = &t;
  int64_t checked = 0, changed = 0, wrong = 0, matrices = 0, wrong_type = 0;
  for (const SourceTensor& t : got.tensors) {
    ASSERT_TRUE(by_name.count(t.name)) << t.name;
    const SourceTensor& r = *by_name[t.name];
    ASSERT_EQ(t.shape, r.shape) << t.name;
    const bool matrix = t.shape.size() == 2;
    matrices += matrix;
    if (t.src_type != (matrix ? c.qtype : QType::kF32) && ++wrong_type == 1) {
      ADD_FAILURE() << t.name << " imported as " << qtype_info(t.src_type).name;
    }
    const int64_t rows = matrix ? t.shape[0] : 1, k = t.shape.back();
    std::vector<float> a(k), b(k);
    for (int64_t row = 0; row < rows; ++row) {
      read_source_row(r, row, a.data());
      read_source_row(t, row, b.data());
      for (int64_t i = 0; i < k; ++i) {
        const double want = matrix ? c.round(a[i]) : a[i];
        if (static_cast<double>(b[i]) != want) {
          if (++wrong <= 5) ADD_FAILURE() << t.name << "[" << row << "][" << i << "] = " << b[i] << ", want " << want << " (f32 " << a[i] << ")";
        }
        changed += want != a[i];
        ++checked;
      }
    }
  }
  EXPECT_EQ(wrong_type, 0) << "tensors imported in the wrong format";
  EXPECT_EQ(wrong, 0) << "weights differing from the rounded f32, of " << checked;
  EXPECT_EQ(matrices, 2 + 7 * 5) << "2-D tensors (embedding, output head, 7 per layer)";
  // The conversion must have changed most weights, or the check above proves nothing.
  EXPECT_GT(changed, checked * 9 / 10) << "weights changed by rounding";
  std::printf("%s: %lld weights checked, %lld changed by rounding, all equal to the rounded f32\n", c.name,
              static_cast<long long>(checked), static_cast<long long>(changed));

  // Logits over the 64 story positions against the F32 model. Each weight moves by at most u
  // relative (u = 2^-11 for f16, 2^-8 for bf16), with random signs; the logits then move by
  // about u × max|logit| (measured: 1.05 × for f16, 1.03 × for bf16; max|logit| = 22). The
  // check is the window [0.25, 4] × u × max|logit| (f16: 0.0027..0.043, bf16: 0.021..0.34):
  // the upper end catches weights decoded wrongly (a swapped F16/BF16 case reads garbage:
  // errors of 10s or non-finite); the lower end catches weights that were not rounded at all,
  // and the two windows do not overlap at the measured values, so each format must show its
  // own rounding.
  const std::vector<int> ids = story_tokens();
  ASSERT_EQ(ids.size(), 64u);
  auto m32 = load_via_mxlm(ref, "gguf_dtype_ref");
  auto mq = load_via_mxlm(got, std::string("gguf_dtype_") + c.name);
  ContextParams cp;
  cp.n_threads = 1;  // small matmuls: one thread is fastest on a shared machine (same results)
  Context c32(m32, cp), cq(mq, cp);
  const float* l32 = c32.eval(ids, true);
  const std::vector<float> want(l32, l32 + ids.size() * 512);
  const float* lq = cq.eval(ids, true);
  double max_logit = 0, max_diff = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    max_logit = std::max(max_logit, std::fabs(double(want[i])));
    const double d = std::fabs(double(lq[i]) - want[i]);
    max_diff = std::isfinite(d) ? std::max(max_diff, d) : INFINITY;
  }
  const double scale = c.unit_roundoff * max_logit;
  std::printf("%s: max |logit - f32| = %.4g = %.2f × u × max|logit| (max|logit| %.2f, u %.3g)\n", c.name, max_diff,
              max_diff / scale, max_logit, c.unit_roundoff);
  EXPECT_LT(max_diff, 4 * scale);
  EXPECT_GT(max_diff, 0.25 * scale);
}

TEST(GgufDtype, F16ImportsCorrectlyRoundedWeightsAndCloseLogits) {
  expect_correct_import({"f16", kF16, QType::kF16, &round_f16, 1.0 / 2048});
}

TEST(GgufDtype, Bf16ImportsCorrectlyRoundedWeightsAndCloseLogits) {
  expect_correct_import({"bf16", kBF16, QType::kBF16, &round_bf16, 1.0 / 256});
}


// tokenizer.chat_template travels from a GGUF file into the imported model and the .mxlm file
// converted from it (and back through a re-quantization's import).
TEST(GgufChatTemplate, ImportedAndKeptInTheMxlmFile) {
  Gguf g = read_gguf(test::shared_path("models/stories260K/stories260K.gguf"));
  const std::string tmpl = "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}{{ eos_token }}\n{% endfor %}ünï";
  auto put_str = [&](const std::string& s) {
    const uint64_t n = s.size();
    g.kv_bytes.append(reinterpret_cast<const char*>(&n), 8);
    g.kv_bytes += s;
  };
  put_str("tokenizer.chat_template");
  const uint32_t string_type = 8;
  g.kv_bytes.append(reinterpret_cast<const char*>(&string_type), 4);
  put_str(tmpl);
  ++g.n_kv;
  const std::string path = test::scratch_dir() + "/stories260K_chat.gguf";
  write_gguf(path, g);
  const ImportedModel m = import_model(path);
  EXPECT_EQ(m.chat_template, tmpl);
  const std::string out = test::scratch_dir() + "/stories260K_chat.mxlm";
  convert_to_mxlm(m, out, QType::kF32);
  EXPECT_EQ(Model::load(out)->chat_template(), tmpl);
  EXPECT_EQ(import_mxlm(out).chat_template, tmpl);
  EXPECT_TRUE(import_model(test::shared_path("models/stories260K/stories260K.gguf")).chat_template.empty());
}

}  // namespace
}  // namespace mxlm
