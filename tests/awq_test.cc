// AWQ scaling (model/awq.h): the fold leaves the model's logits unchanged (tinymix-26m from bf16
// safetensors; stories260K from GGUF, whose q/k rows are RoPE-permuted on import), the search
// never increases its objective and helps on a layer with a few high-variance input channels,
// and the error identity output_error(Q(W'), W', H') = the error of Q(W')·diag(1/s) under H.
// AwqBench.DISABLED_TinymixRatios measures the search on tinymix-26m's calibration statistics:
// MXLM_AWQ_STATS=<stats file> (default /tmp/awq.stats) ./mxlm_tests
// --gtest_also_run_disabled_tests --gtest_filter='AwqBench.*' (MXLM_AWQ_METHODS=weighted,gptq,
// MXLM_AWQ_QTYPES=q3k_g32,q4k_g32,q3_g32, MXLM_AWQ_B=0 choose what runs);
// AwqBench.DISABLED_TinymixEndToEnd the KL and perplexity of the whole model quantized with and
// without the scales (the first method and format of those variables). Results: model/awq.cc.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "base/error.h"
#include "kernels/quant.h"
#include "model/awq.h"
#include "model/encode.h"
#include "model/file_util.h"
#include "model/import.h"
#include "mxlm/calibrate.h"
#include "mxlm/model.h"
#include "tests/test_util.h"
#include "tokenizer/tokenizer.h"

namespace mxlm {
namespace {

std::vector<float> logits_of(std::shared_ptr<const Model> model, const std::vector<int>& tokens) {
  Context ctx(model);
  const float* l = ctx.eval(tokens, true);
  return std::vector<float>(l, l + tokens.size() * size_t(model->config().n_vocab));
}

// Random positive scales, log-uniform in [1/4, 4].
std::vector<float> random_scales(std::mt19937& rng, int64_t k) {
  std::uniform_real_distribution<double> u(-std::log(4.0), std::log(4.0));
  std::vector<float> s(static_cast<size_t>(k));
  for (auto& v : s) v = float(std::exp(u(rng)));
  return s;
}

const SourceTensor& tensor(const ImportedModel& m, const std::string& name) {
  for (const auto& t : m.tensors) {
    if (t.name == name) return t;
  }
  throw std::runtime_error("no tensor " + name);
}

// Folds random scales into every layer's three inputs and compares the logits of the two models
// on a sentence. Returns max |Δlogit| / max |logit|.
double fold_logit_change(const std::string& rel, const char* text) {
  auto src = std::make_shared<ImportedModel>(import_model(test::shared_path(rel)));
  const ModelConfig& c = src->config;
  std::mt19937 rng(1234);
  std::vector<AwqLayerScales> scales(size_t(c.n_layers));
  for (auto& ls : scales) {
    ls.attn_in = random_scales(rng, c.n_embd);
    ls.ffn_in = random_scales(rng, c.n_embd);
    ls.ffn_mid = random_scales(rng, c.n_ff);
  }
  auto folded = std::make_shared<ImportedModel>(awq_fold(*src, scales));
  using namespace tensor_names;
  // Unaffected tensors still point to the source; affected ones are owned f32 rows in the
  // rotate-half order.
  EXPECT_EQ(tensor(*folded, kTokEmbd).data, tensor(*src, kTokEmbd).data);
  EXPECT_EQ(tensor(*folded, layer(0, kAttnO)).data, tensor(*src, layer(0, kAttnO)).data);
  for (const char* w : {kAttnNorm, kAttnQ, kAttnK, kAttnV, kFfnNorm, kFfnGate, kFfnUp, kFfnDown}) {
    const SourceTensor& t = tensor(*folded, layer(c.n_layers - 1, w));
    EXPECT_NE(t.data, tensor(*src, t.name).data) << t.name;
    EXPECT_EQ(t.src_type, QType::kF32) << t.name;
    EXPECT_EQ(t.rope_unpermute_head_dim, 0) << t.name;
  }
  // γ' = γ / s on layer 0's attn_norm, elementwise.
  {
    std::vector<float> g(size_t(c.n_embd)), g2(size_t(c.n_embd));
    read_source_row(tensor(*src, layer(0, kAttnNorm)), 0, g.data());
    read_source_row(tensor(*folded, layer(0, kAttnNorm)), 0, g2.data());
    for (int j = 0; j < c.n_embd; ++j) EXPECT_FLOAT_EQ(g2[size_t(j)], float(double(g[size_t(j)]) / scales[0].attn_in[size_t(j)]));
  }
  auto a = Model::from_imported(src);
  auto b = Model::from_imported(folded);
  const std::vector<int> tokens = a->tokenizer().encode(text, true);
  EXPECT_GE(tokens.size(), 8u);
  const std::vector<float> la = logits_of(a, tokens), lb = logits_of(b, tokens);
  double diff = 0, mag = 0;
  for (size_t i = 0; i < la.size(); ++i) {
    diff = std::max(diff, double(std::fabs(la[i] - lb[i])));
    mag = std::max(mag, double(std::fabs(la[i])));
  }
  std::printf("%s: max |Δlogit| %.3g, max |logit| %.3g, relative %.3g\n", rel.c_str(), diff, mag, diff / mag);
  return diff / mag;
}

// The fold is exact up to float rounding: random scales in [1/4, 4] on every input of every
// layer change the logits by a relative 4.1e-7 (tinymix-26m, bf16 read in place vs f32 copies)
// and 3.5e-7 (stories260K) (max |Δlogit| / max |logit| over all positions, measured: 1.0e-5 and
// 6.7e-6 absolute); asserted < 1e-4. A wrong fold (e.g. up's rows multiplied instead of divided) changes them by O(1).
TEST(AwqFold, TinymixLogitsUnchanged) {
  EXPECT_LT(fold_logit_change("models/tinymix-26m", "Once upon a time there was a little dog who liked to run."), 1e-4);
}

TEST(AwqFold, RopePermutedGgufLogitsUnchanged) {
  auto m = import_model(test::shared_path("models/stories260K/stories260K.gguf"));
  EXPECT_GT(tensor(m, tensor_names::layer(0, tensor_names::kAttnQ)).rope_unpermute_head_dim, 0);
  EXPECT_LT(fold_logit_change("models/stories260K/stories260K.gguf", "Lily saw a big red ball in the park and ran to it."), 1e-4);
}

TEST(AwqFold, RejectsBadScales) {
  const ImportedModel m = import_model(test::shared_path("models/stories260K/stories260K.gguf"));
  const ModelConfig& c = m.config;
  auto code_of = [&](const std::vector<AwqLayerScales>& s) {
    try {
      awq_fold(m, s);
    } catch (const Error& e) {
      std::printf("  %s\n", e.what());
      return e.code();
    }
    return ErrorCode::kInternal;
  };
  EXPECT_EQ(code_of(std::vector<AwqLayerScales>(size_t(c.n_layers + 1))), ErrorCode::kInvalidArgument);
  auto one = [&](int which, std::vector<float> s) {
    std::vector<AwqLayerScales> v(size_t(c.n_layers));
    (which == 0 ? v[1].attn_in : which == 1 ? v[1].ffn_in : v[1].ffn_mid) = std::move(s);
    return v;
  };
  const std::vector<float> ok_e(size_t(c.n_embd), 1.5f);
  EXPECT_EQ(code_of(one(0, std::vector<float>(size_t(c.n_embd) - 1, 1.0f))), ErrorCode::kInvalidArgument);
  EXPECT_EQ(code_of(one(2, ok_e)), ErrorCode::kInvalidArgument);  // ffn_mid needs n_ff
  for (float bad : {0.0f, -1.0f, NAN, INFINITY}) {
    std::vector<float> s = ok_e;
    s[3] = bad;
    EXPECT_EQ(code_of(one(1, s)), ErrorCode::kInvalidArgument) << bad;
  }
  // Empty scales: a plain copy sharing every tensor.
  const ImportedModel same = awq_fold(m, {});
  ASSERT_EQ(same.tensors.size(), m.tensors.size());
  for (size_t i = 0; i < m.tensors.size(); ++i) EXPECT_EQ(same.tensors[i].data, m.tensors[i].data);
}

// A synthetic layer: tensors Gaussian (std 0.02); inputs x = z ⊙ σ + 0.3·(shared factor)·σ over
// T tokens, σ_j = 1 except 1% of the channels (5 of 512) with σ_j in [10, 30].
struct Synth {
  int64_t k = 512;
  std::vector<std::vector<float>> w;  // [n_t][k]
  std::vector<int64_t> n;
  std::vector<double> h;
};

Synth make_synth(uint32_t seed, bool outliers) {
  Synth S;
  const int64_t k = S.k, T = 1024;
  std::mt19937 rng(seed);
  std::normal_distribution<double> g(0.0, 1.0);
  for (int64_t n : {256, 128}) {
    S.n.push_back(n);
    std::vector<float> w(size_t(n * k));
    for (auto& v : w) v = float(0.02 * g(rng));
    S.w.push_back(std::move(w));
  }
  std::vector<double> sigma(size_t(k), 1.0);
  if (outliers) {
    for (int64_t j = 37; j < k; j += 100) sigma[size_t(j)] = 10.0 + 20.0 * double((j * 7) % 11) / 10.0;
  }
  std::vector<double> x(static_cast<size_t>(k));
  S.h.assign(size_t(k * k), 0.0);
  for (int64_t t = 0; t < T; ++t) {
    const double f = g(rng);
    for (int64_t j = 0; j < k; ++j) x[size_t(j)] = (g(rng) + 0.3 * f) * sigma[size_t(j)];
    for (int64_t i = 0; i < k; ++i) {
      for (int64_t j = 0; j <= i; ++j) S.h[size_t(i * k + j)] += x[size_t(i)] * x[size_t(j)];
    }
  }
  for (int64_t i = 0; i < k; ++i) {
    for (int64_t j = 0; j <= i; ++j) {
      S.h[size_t(i * k + j)] /= double(T);
      S.h[size_t(j * k + i)] = S.h[size_t(i * k + j)];
    }
  }
  return S;
}

std::vector<AwqTensor> awq_tensors(const Synth& S) {
  std::vector<AwqTensor> v;
  for (size_t i = 0; i < S.w.size(); ++i) v.push_back({S.w[i].data(), S.n[i], i == 0 ? 1.0 : 0.5});
  return v;
}

// The search on the outlier layer (two tensors, β = 1 and 0.5). Measured after/before:
//   weighted RTN q3_g32 0.674 (a = 0.20), q4_g32 0.761 (a = 0.25); plain RTN q4_g32 0.533 (a = 0.30).
// Asserted: ≤ 0.75, ≤ 0.85 and ≤ 0.6; after ≤ before always, and the first candidate (s = 1) is
// exactly the plain encoder's error.
TEST(AwqSearch, HelpsHighVarianceChannelsAndNeverHurts) {
  const Synth S = make_synth(11, true);
  const std::vector<AwqTensor> ts = awq_tensors(S);
  struct Case {
    QType t;
    EncodeMethod m;
    double bound;
  } cases[] = {{QType::kQ3G32, EncodeMethod::kWeighted, 0.75},
               {QType::kQ4G32, EncodeMethod::kWeighted, 0.85},
               {QType::kQ4G32, EncodeMethod::kRtn, 0.6}};
  for (const Case& c : cases) {
    AwqOptions o;
    o.encode.method = c.m;
    const AwqResult r = awq_search(ts, S.h.data(), S.k, c.t, o);
    const double ratio = r.error_after / r.error_before;
    std::printf("%-8s %-8s before %.4e after %.4e ratio %.3f a %.2f\n", std::string(qtype_info(c.t).name).c_str(),
                encode_method_name(c.m), r.error_before, r.error_after, ratio, r.a);
    EXPECT_LE(ratio, c.bound) << qtype_info(c.t).name;
    EXPECT_LE(r.error_after, r.error_before);
    ASSERT_EQ(r.curve.size(), 21u);
    EXPECT_EQ(r.curve[0].a, 0.0);
    EXPECT_EQ(r.curve[0].error, r.error_before);
    for (const AwqPoint& p : r.curve) EXPECT_GE(p.error, r.error_after);
    // s = 1 is the plain encoder.
    EncodeOptions eo = o.encode;
    double plain = 0;
    for (const AwqTensor& t : ts) {
      const auto bytes = encode_tensor(c.t, t.w, t.n, S.k, S.h.data(), eo);
      plain += t.beta * output_error(c.t, bytes.data(), t.w, t.n, S.k, S.h.data());
    }
    EXPECT_EQ(plain, r.error_before);
    // Scales: positive, geometric mean 1, larger on the high-variance channels.
    double lsum = 0;
    for (float s : r.scales) {
      ASSERT_GT(s, 0.0f);
      lsum += std::log(double(s));
    }
    EXPECT_NEAR(lsum / double(S.k), 0.0, 1e-5);
    EXPECT_GT(r.scales[37], 1.3f * r.scales[38]);  // σ 22 vs 1: 22^a = 1.86 at a = 0.2
  }
}

// Without outlier channels (and with GPTQ, which already uses the full H) the search must not
// make things worse: it returns s = 1 or something no worse.
TEST(AwqSearch, NeverIncreasesTheObjective) {
  const Synth S = make_synth(5, false);
  const std::vector<AwqTensor> ts = awq_tensors(S);
  for (EncodeMethod m : {EncodeMethod::kWeighted, EncodeMethod::kGptq}) {
    AwqOptions o;
    o.encode.method = m;
    o.grid = 4;
    o.weight_exponents = {0.0, 0.5};
    const AwqResult r = awq_search(ts, S.h.data(), S.k, QType::kQ3G32, o);
    std::printf("%-8s ratio %.4f a %.2f b %.2f\n", encode_method_name(m), r.error_after / r.error_before, r.a, r.b);
    EXPECT_LE(r.error_after, r.error_before);
    EXPECT_EQ(r.curve.size(), 10u);
    if (r.a == 0 && r.b == 0) {
      for (float s : r.scales) EXPECT_EQ(s, 1.0f);
    }
  }
}

TEST(AwqSearch, RejectsBadArguments) {
  const int64_t k = 64;
  std::vector<float> w(size_t(4 * k), 0.01f);
  std::vector<double> h(size_t(k * k), 0.0);
  for (int64_t i = 0; i < k; ++i) h[size_t(i * k + i)] = 1.0;
  auto code = [&](auto f) {
    try {
      f();
    } catch (const Error& e) {
      std::printf("  %s\n", e.what());
      return e.code();
    }
    return ErrorCode::kInternal;
  };
  const QType t = QType::kQ4G32;
  EXPECT_EQ(code([&] { awq_search({}, h.data(), k, t); }), ErrorCode::kInvalidArgument);
  EXPECT_EQ(code([&] { awq_search({{nullptr, 4}}, h.data(), k, t); }), ErrorCode::kInvalidArgument);
  EXPECT_EQ(code([&] { awq_search({{w.data(), 0}}, h.data(), k, t); }), ErrorCode::kInvalidArgument);
  EXPECT_EQ(code([&] { awq_search({{w.data(), 4, -1.0}}, h.data(), k, t); }), ErrorCode::kInvalidArgument);
  EXPECT_EQ(code([&] { awq_search({{w.data(), 4}}, h.data(), 0, t); }), ErrorCode::kInvalidArgument);
  EXPECT_EQ(code([&] { awq_search({{w.data(), 4}}, nullptr, k, t); }), ErrorCode::kInvalidArgument);
  AwqOptions o;
  o.grid = 0;
  EXPECT_EQ(code([&] { awq_search({{w.data(), 4}}, h.data(), k, t, o); }), ErrorCode::kInvalidArgument);
  o = AwqOptions();
  o.weight_exponents = {-0.5};
  EXPECT_EQ(code([&] { awq_search({{w.data(), 4}}, h.data(), k, t, o); }), ErrorCode::kInvalidArgument);
  o = AwqOptions();
  o.floor = 0;
  EXPECT_EQ(code([&] { awq_search({{w.data(), 4}}, h.data(), k, t, o); }), ErrorCode::kInvalidArgument);
  w[5] = NAN;
  EXPECT_EQ(code([&] { awq_search({{w.data(), 4}}, h.data(), k, t); }), ErrorCode::kInvalidArgument);
  w[5] = 0.01f;
  h[3 * k + 3] = -1;
  EXPECT_EQ(code([&] { awq_search({{w.data(), 4}}, h.data(), k, t); }), ErrorCode::kInvalidArgument);
  h[3 * k + 3] = 1;
  std::vector<float> s(size_t(k), 1.0f);
  s[2] = 0;
  EXPECT_EQ(code([&] { awq_transform_h(h.data(), k, s.data()); }), ErrorCode::kInvalidArgument);
  EXPECT_EQ(code([&] { awq_check_scales(s, k, "test"); }), ErrorCode::kInvalidArgument);
  EXPECT_EQ(code([&] { awq_check_scales(std::vector<float>(size_t(k - 1), 1.0f), k, "test"); }), ErrorCode::kInvalidArgument);
}

// output_error of W' = W·diag(s) encoded under H' = diag(1/s) H diag(1/s) equals the error of the
// decoded Q(W')·diag(1/s) against W under H, summed in double here (measured relative
// difference ~1e-10, from output_error's float off-diagonal product); asserted < 1e-6.
TEST(AwqTransformH, ErrorIdentity) {
  const Synth S = make_synth(3, true);
  const int64_t n = S.n[0], k = S.k;
  const std::vector<float>& w = S.w[0];
  std::mt19937 rng(99);
  const std::vector<float> s = random_scales(rng, k);
  std::vector<float> ws = w;
  awq_scale_columns(ws.data(), n, k, s.data());
  std::vector<double> hs = S.h;
  awq_transform_h(hs.data(), k, s.data());
  for (int64_t i : {0, 37, 300}) {
    for (int64_t j : {1, 37, 511}) EXPECT_DOUBLE_EQ(hs[size_t(i * k + j)], S.h[size_t(i * k + j)] / double(s[size_t(i)]) / double(s[size_t(j)]));
  }
  for (QType t : {QType::kQ3G32, QType::kQ4KG32}) {
    EncodeOptions eo;
    eo.method = EncodeMethod::kWeighted;
    const auto bytes = encode_tensor(t, ws.data(), n, k, hs.data(), eo);
    const double scaled = output_error(t, bytes.data(), ws.data(), n, k, hs.data());
    const size_t rb = *qtype_row_bytes(t, uint64_t(k));
    std::vector<float> row(static_cast<size_t>(k));
    std::vector<double> d(static_cast<size_t>(k));
    double orig = 0;
    for (int64_t r = 0; r < n; ++r) {
      dequantize_row(t, bytes.data() + size_t(r) * rb, k, row.data());
      for (int64_t j = 0; j < k; ++j) d[size_t(j)] = double(row[size_t(j)]) / double(s[size_t(j)]) - double(w[size_t(r * k + j)]);
      for (int64_t i = 0; i < k; ++i) {
        double acc = 0;
        for (int64_t j = 0; j < k; ++j) acc += S.h[size_t(i * k + j)] * d[size_t(j)];
        orig += d[size_t(i)] * acc;
      }
    }
    std::printf("%-8s output_error(W', H') %.10e  original coordinates %.10e  rel %.2e\n", std::string(qtype_info(t).name).c_str(), scaled,
                orig, std::fabs(scaled - orig) / orig);
    EXPECT_NEAR(scaled, orig, 1e-6 * orig) << qtype_info(t).name;
  }
}

// ---- measurement on tinymix-26m's calibration statistics (disabled: minutes) ---------------------

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

std::string env_or(const char* name, const char* def) {
  const char* v = std::getenv(name);
  return v && *v ? v : def;
}

std::vector<float> read_tensor(const SourceTensor& t) {
  const int64_t n = t.shape[0], k = t.shape[1];
  std::vector<float> w(size_t(n * k));
  for (int64_t r = 0; r < n; ++r) read_source_row(t, r, w.data() + size_t(r * k));
  return w;
}

TEST(AwqBench, DISABLED_TinymixRatios) {
  const std::string stats_path = env_or("MXLM_AWQ_STATS", "/tmp/awq.stats");
  if (!std::filesystem::exists(stats_path)) GTEST_SKIP() << "no statistics file " << stats_path;
  const ImportedModel m = import_model(test::shared_path("models/tinymix-26m"));
  const CalibStats st = load_stats(stats_path, model_fingerprint(m));
  const ModelConfig& c = m.config;
  std::vector<double> bs;
  for (const auto& b : split(env_or("MXLM_AWQ_B", "0"))) bs.push_back(std::stod(b));
  using namespace tensor_names;
  struct Input {
    const char* name;
    MatmulInput in;
    std::vector<const char*> tensors;
  };
  const std::vector<Input> inputs = {{"attn_in", MatmulInput::kAttnIn, {kAttnQ, kAttnK, kAttnV}},
                                     {"ffn_in", MatmulInput::kFfnIn, {kFfnGate, kFfnUp}},
                                     {"ffn_mid", MatmulInput::kFfnMid, {kFfnDown}}};
  // ratios[method][qtype][input] over layers
  std::map<std::string, std::map<std::string, std::map<std::string, std::vector<double>>>> ratios;
  std::map<std::string, std::map<std::string, std::map<std::string, std::pair<double, double>>>> totals;  // Σ before, Σ after
  for (int l = 0; l < c.n_layers; ++l) {
    for (const Input& in : inputs) {
      const std::vector<double> h = st.layers[size_t(l)].at(in.in).second_moment();
      const int64_t k = st.layers[size_t(l)].at(in.in).k;
      std::vector<std::vector<float>> ws;
      std::vector<AwqTensor> ts;
      {
        std::vector<double> rms(static_cast<size_t>(k));
        for (int64_t j = 0; j < k; ++j) rms[size_t(j)] = std::sqrt(h[size_t(j * k + j)]);
        std::sort(rms.begin(), rms.end());
        std::printf("layer %d %-7s channel RMS: max/median %.1f, p99/median %.1f\n", l, in.name, rms.back() / rms[rms.size() / 2],
                    rms[rms.size() * 99 / 100] / rms[rms.size() / 2]);
      }
      for (const char* name : in.tensors) {
        const SourceTensor& t = tensor(m, layer(l, name));
        ws.push_back(read_tensor(t));
      }
      for (size_t i = 0; i < ws.size(); ++i) ts.push_back({ws[i].data(), tensor(m, layer(l, in.tensors[i])).shape[0], 1.0});
      for (const auto& meth : split(env_or("MXLM_AWQ_METHODS", "weighted,gptq"))) {
        for (const auto& qn : split(env_or("MXLM_AWQ_QTYPES", "q3k_g32,q4k_g32,q3_g32"))) {
          const QType t = *qtype_from_name(qn);
          AwqOptions o;
          o.encode.method = meth == "gptq" ? EncodeMethod::kGptq : meth == "rtn" ? EncodeMethod::kRtn : EncodeMethod::kWeighted;
          o.weight_exponents = bs;
          const AwqResult r = awq_search(ts, h.data(), k, t, o);
          const double ratio = r.error_after / r.error_before;
          ratios[meth][qn][in.name].push_back(ratio);
          totals[meth][qn][in.name].first += r.error_before;
          totals[meth][qn][in.name].second += r.error_after;
          std::printf("layer %d %-7s %-8s %-8s before %.4e after %.4e ratio %.3f a %.2f b %.2f\n", l, in.name, meth.c_str(),
                      qn.c_str(), r.error_before, r.error_after, ratio, r.a, r.b);
          std::fflush(stdout);
        }
      }
    }
  }
  std::printf("\nsummary: after/before, median (upper) [min, max] over %d layers; Σ after / Σ before\n", c.n_layers);
  for (auto& [meth, by_q] : ratios) {
    for (auto& [qn, by_in] : by_q) {
      std::printf("%-8s %-8s", meth.c_str(), qn.c_str());
      for (const Input& in : inputs) {
        std::vector<double> v = by_in[in.name];
        std::sort(v.begin(), v.end());
        const auto& tot = totals[meth][qn][in.name];
        std::printf("  %s %.3f [%.3f, %.3f] Σ %.3f", in.name, v[v.size() / 2], v.front(), v.back(), tot.second / tot.first);
      }
      std::printf("\n");
    }
  }
}

// End to end: every layer matrix of tinymix-26m encoded (MXLM_AWQ_QTYPES' first format, default
// q3_g32; MXLM_AWQ_METHODS' first method, default weighted) with and without the searched
// scales (folded into the model, H transformed), evaluated against the unquantized model on
// held-out text (text/tinymix-val.txt): mean KL(reference ‖ quantized) per token. Embedding and
// head stay bf16. The encoded rows go back into an ImportedModel as quantized source tensors,
// which Model::from_imported dequantizes once (fake quantization: the same weights the quantized
// file would hold).
TEST(AwqBench, DISABLED_TinymixEndToEnd) {
  const std::string stats_path = env_or("MXLM_AWQ_STATS", "/tmp/awq.stats");
  if (!std::filesystem::exists(stats_path)) GTEST_SKIP() << "no statistics file " << stats_path;
  auto src = std::make_shared<ImportedModel>(import_model(test::shared_path("models/tinymix-26m")));
  const CalibStats st = load_stats(stats_path, model_fingerprint(*src));
  const ModelConfig& c = src->config;
  const QType qt = *qtype_from_name(split(env_or("MXLM_AWQ_QTYPES", "q3_g32"))[0]);
  const std::string meth = split(env_or("MXLM_AWQ_METHODS", "weighted"))[0];
  EncodeOptions eo;
  eo.method = meth == "gptq" ? EncodeMethod::kGptq : meth == "rtn" ? EncodeMethod::kRtn : EncodeMethod::kWeighted;
  using namespace tensor_names;
  const std::pair<const char*, MatmulInput> mats[] = {
      {kAttnQ, MatmulInput::kAttnIn}, {kAttnK, MatmulInput::kAttnIn},  {kAttnV, MatmulInput::kAttnIn},
      {kAttnO, MatmulInput::kAttnOut}, {kFfnGate, MatmulInput::kFfnIn}, {kFfnUp, MatmulInput::kFfnIn},
      {kFfnDown, MatmulInput::kFfnMid}};
  // Scales per layer and input (searched on the original weights).
  std::vector<AwqLayerScales> scales(size_t(c.n_layers));
  for (int l = 0; l < c.n_layers; ++l) {
    const std::pair<MatmulInput, std::vector<const char*>> ins[] = {{MatmulInput::kAttnIn, {kAttnQ, kAttnK, kAttnV}},
                                                                     {MatmulInput::kFfnIn, {kFfnGate, kFfnUp}},
                                                                     {MatmulInput::kFfnMid, {kFfnDown}}};
    for (const auto& [in, names] : ins) {
      const std::vector<double> h = st.layers[size_t(l)].at(in).second_moment();
      const int64_t k = st.layers[size_t(l)].at(in).k;
      std::vector<std::vector<float>> ws;
      std::vector<AwqTensor> ts;
      for (const char* name : names) ws.push_back(read_tensor(tensor(*src, layer(l, name))));
      for (size_t i = 0; i < ws.size(); ++i) ts.push_back({ws[i].data(), int64_t(ws[i].size()) / k, 1.0});
      AwqOptions o;
      o.encode = eo;
      AwqResult r = awq_search(ts, h.data(), k, qt, o);
      (in == MatmulInput::kAttnIn ? scales[size_t(l)].attn_in : in == MatmulInput::kFfnIn ? scales[size_t(l)].ffn_in
                                                                                           : scales[size_t(l)].ffn_mid) = r.scales;
    }
  }
  auto folded = std::make_shared<ImportedModel>(awq_fold(*src, scales));
  // Encodes every layer matrix of m under its (transformed when awq) H.
  auto quantize = [&](const ImportedModel& m, bool awq, double* total_error) {
    auto q = std::make_shared<ImportedModel>(m);
    *total_error = 0;
    for (int l = 0; l < c.n_layers; ++l) {
      for (const auto& [name, in] : mats) {
        std::vector<double> h = st.layers[size_t(l)].at(in).second_moment();
        const int64_t k = st.layers[size_t(l)].at(in).k;
        if (awq && in != MatmulInput::kAttnOut) {
          const AwqLayerScales& ls = scales[size_t(l)];
          awq_transform_h(h.data(), k, (in == MatmulInput::kAttnIn ? ls.attn_in : in == MatmulInput::kFfnIn ? ls.ffn_in : ls.ffn_mid).data());
        }
        for (SourceTensor& t : q->tensors) {
          if (t.name != layer(l, name)) continue;
          const std::vector<float> w = read_tensor(t);
          auto bytes = std::make_shared<std::vector<uint8_t>>(encode_tensor(qt, w.data(), t.shape[0], k, h.data(), eo));
          *total_error += output_error(qt, bytes->data(), w.data(), t.shape[0], k, h.data());
          t.src_type = qt;
          t.data = bytes->data();
          t.rope_unpermute_head_dim = 0;
          q->files.push_back(bytes);
        }
      }
    }
    return q;
  };
  double e_plain = 0, e_awq = 0;
  auto ref = Model::from_imported(src);
  auto plain = Model::from_imported(quantize(*src, false, &e_plain));
  auto awq = Model::from_imported(quantize(*folded, true, &e_awq));
  const std::vector<std::vector<int>> windows =
      calibration_windows(*ref, read_file(test::shared_path("text/tinymix-val.txt")), 4096, 512);
  auto log_softmax = [](const float* x, int n, std::vector<double>* out) {
    out->resize(size_t(n));
    double mx = x[0];
    for (int i = 1; i < n; ++i) mx = std::max(mx, double(x[i]));
    double sum = 0;
    for (int i = 0; i < n; ++i) sum += std::exp(double(x[i]) - mx);
    const double lse = mx + std::log(sum);
    for (int i = 0; i < n; ++i) (*out)[size_t(i)] = double(x[i]) - lse;
  };
  double kl_plain = 0, kl_awq = 0, nll_ref = 0, nll_plain = 0, nll_awq = 0;
  int64_t count = 0;
  std::vector<double> lr, lq;
  for (const auto& w : windows) {
    const std::vector<float> a = logits_of(ref, w), b = logits_of(plain, w), d = logits_of(awq, w);
    for (size_t t = 0; t + 1 < w.size(); ++t) {
      const size_t off = t * size_t(c.n_vocab);
      log_softmax(&a[off], c.n_vocab, &lr);
      const int next = w[t + 1];
      nll_ref -= lr[size_t(next)];
      for (int v = 0; v < 2; ++v) {
        log_softmax(v == 0 ? &b[off] : &d[off], c.n_vocab, &lq);
        double kl = 0;
        for (int i = 0; i < c.n_vocab; ++i) kl += std::exp(lr[size_t(i)]) * (lr[size_t(i)] - lq[size_t(i)]);
        (v == 0 ? kl_plain : kl_awq) += kl;
        (v == 0 ? nll_plain : nll_awq) -= lq[size_t(next)];
      }
      ++count;
    }
  }
  std::printf("%s %s, %lld tokens: Σ output error plain %.4g awq %.4g (ratio %.3f); mean KL plain %.5f awq %.5f (ratio %.3f); "
              "ppl ref %.3f plain %.3f awq %.3f\n",
              meth.c_str(), std::string(qtype_info(qt).name).c_str(), (long long)count, e_plain, e_awq, e_awq / e_plain,
              kl_plain / count, kl_awq / count, kl_awq / kl_plain, std::exp(nll_ref / count), std::exp(nll_plain / count),
              std::exp(nll_awq / count));
}

}  // namespace
}  // namespace mxlm
