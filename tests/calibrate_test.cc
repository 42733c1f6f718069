// The tensor-source seam (Model::from_imported), layer-by-layer evaluation, the matmul observer
// and calibration statistics against a brute-force sum.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "base/error.h"
#include "kernels/quant.h"
#include "model/file_util.h"
#include "model/import.h"
#include "mxlm/calibrate.h"
#include "mxlm/model.h"
#include "tests/test_util.h"
#include "tokenizer/tokenizer.h"

namespace mxlm {
namespace {

std::shared_ptr<const ImportedModel> imported(const std::string& rel) {
  return std::make_shared<ImportedModel>(import_model(test::shared_path(rel)));
}

std::string calib_excerpt(size_t bytes) {
  std::string t = read_file(test::shared_path("text/tinymix-calib.txt"));
  return t.substr(0, std::min(bytes, t.size()));
}

// max |want − got| over equal-sized arrays; *scale receives max |want|.
double max_abs_diff(const std::vector<double>& want, const std::vector<double>& got, double* scale) {
  double err = 0;
  *scale = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    *scale = std::max(*scale, std::abs(want[i]));
    err = std::max(err, std::abs(want[i] - got[i]));
  }
  return err;
}

// Runs `tokens` through a fresh context of `model` and returns all logits.
std::vector<float> logits_of(std::shared_ptr<const Model> model, const std::vector<int>& tokens) {
  Context ctx(model);
  const float* l = ctx.eval(tokens, true);
  return std::vector<float>(l, l + tokens.size() * size_t(model->config().n_vocab));
}

TEST(TensorSource, FromImportedGivesTheConvertedFilesLogitsExactly) {
  // tinymix's bf16 shards are read in place; stories260K's GGUF has RoPE-permuted q/k, which
  // are converted to f32 at load. Either way the logits equal those of the converted file.
  struct Case {
    const char* rel;
    QType dtype;
  } cases[] = {{"models/tinymix-26m", QType::kBF16}, {"models/stories260K/stories260K.gguf", QType::kF32}};
  for (const Case& c : cases) {
    SCOPED_TRACE(c.rel);
    auto src = imported(c.rel);
    const std::string path = test::scratch_dir() + "/seam.mxlm";
    convert_to_mxlm(*src, path, c.dtype);
    auto file_model = Model::load(path);
    auto seam_model = Model::from_imported(src);
    const std::vector<int> tokens = file_model->tokenizer().encode("Once upon a time there was a little dog.", true);
    ASSERT_GE(tokens.size(), 8u);
    const std::vector<float> a = logits_of(file_model, tokens), b = logits_of(seam_model, tokens);
    ASSERT_EQ(a.size(), b.size());
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0);
    EXPECT_THROW(seam_model->file(), Error);
  }
}

TEST(TensorSource, LayerSteppingEqualsEval) {
  auto model = Model::from_imported(imported("models/stories260K/stories260K.gguf"));
  const ModelConfig& c = model->config();
  const std::vector<int> tokens = model->tokenizer().encode("Lily saw a big red ball in the park.", true);
  const int n = int(tokens.size());
  const std::vector<float> ref = logits_of(model, tokens);
  ContextParams cp;
  cp.n_batch = n;
  Context ctx(model, cp);
  std::vector<float> x(size_t(n) * c.n_embd), logits(size_t(n) * c.n_vocab);
  ctx.embed(tokens, x.data());
  for (int l = 0; l < c.n_layers; ++l) ctx.eval_layer(l, x.data(), n, 0);
  ctx.eval_head(x.data(), n, logits.data());
  EXPECT_EQ(std::memcmp(ref.data(), logits.data(), logits.size() * sizeof(float)), 0);
  // A layer given explicitly is the one used: swapping in layer 0's weights for layer 1 changes
  // the result.
  ctx.embed(tokens, x.data());
  ctx.eval_layer(0, x.data(), n, 0);
  ctx.eval_layer(1, x.data(), n, 0, &model->layers()[0]);
  for (int l = 2; l < c.n_layers; ++l) ctx.eval_layer(l, x.data(), n, 0);
  ctx.eval_head(x.data(), n, logits.data());
  EXPECT_NE(std::memcmp(ref.data(), logits.data(), logits.size() * sizeof(float)), 0);
  EXPECT_THROW(ctx.eval_layer(c.n_layers, x.data(), n, 0), Error);
  EXPECT_THROW(ctx.eval_layer(0, x.data(), n + 1, 0), Error);
}

// Records every observed input in double.
struct Recorder : MatmulObserver {
  struct Seen {
    int layer;
    MatmulInput in;
    int m, k;
    std::vector<double> gram;
    std::vector<float> amax;
  };
  std::vector<Seen> seen;
  void observe(int layer, MatmulInput in, const float* x, int m, int k) override {
    Seen s{layer, in, m, k, std::vector<double>(size_t(k) * k, 0.0), std::vector<float>(size_t(k), 0.0f)};
    for (int t = 0; t < m; ++t) {
      for (int i = 0; i < k; ++i) {
        s.amax[size_t(i)] = std::max(s.amax[size_t(i)], std::abs(x[size_t(t) * k + i]));
        for (int j = 0; j < k; ++j) s.gram[size_t(i) * k + j] += double(x[size_t(t) * k + i]) * x[size_t(t) * k + j];
      }
    }
    seen.push_back(std::move(s));
  }
};

TEST(Calibration, StatisticsEqualABruteForceSumOverTheObservedInputs) {
  auto model = Model::from_imported(imported("models/stories260K/stories260K.gguf"));
  const ModelConfig& c = model->config();
  const auto windows = calibration_windows(*model, calib_excerpt(20000), 700, 256);
  ASSERT_EQ(windows.size(), 3u);  // 256 + 256 + 188
  EXPECT_EQ(windows[2].size(), 188u);
  // Brute force: one ordinary eval per window with a recording observer.
  Recorder rec;
  {
    Context ctx(model);
    ctx.set_observer(&rec);
    for (const auto& w : windows) {
      ctx.reset();
      ctx.eval(w, true);
    }
  }
  // Each eval: 4 inputs per layer (q/k/v share one, gate/up share one) and the head's.
  ASSERT_EQ(rec.seen.size(), windows.size() * (4 * size_t(c.n_layers) + 1));
  CalibStats s = calibrate(*model, windows, CalibParams{});
  EXPECT_EQ(s.n_tokens, 700);
  uint64_t counted = 0;
  for (uint64_t v : s.token_counts) counted += v;
  EXPECT_EQ(counted, 700u);
  EXPECT_EQ(s.token_counts[size_t(c.bos_id)], uint64_t(std::count(windows[0].begin(), windows[0].end(), c.bos_id) +
                                                           std::count(windows[1].begin(), windows[1].end(), c.bos_id) +
                                                           std::count(windows[2].begin(), windows[2].end(), c.bos_id)));
  int checked = 0;
  auto compare = [&](const InputStats& got, int layer, MatmulInput in) {
    std::vector<double> gram;
    std::vector<float> amax;
    int64_t tokens = 0;
    for (const auto& r : rec.seen) {
      if (r.layer != layer || r.in != in) continue;
      if (gram.empty()) {
        gram.assign(r.gram.size(), 0.0);
        amax.assign(r.amax.size(), 0.0f);
      }
      for (size_t i = 0; i < gram.size(); ++i) gram[i] += r.gram[i];
      for (size_t i = 0; i < amax.size(); ++i) amax[i] = std::max(amax[i], r.amax[i]);
      tokens += r.m;
    }
    ASSERT_EQ(got.n_tokens, tokens);
    ASSERT_EQ(got.gram.size(), gram.size());
    double scale = 0, err = 0;
    for (size_t i = 0; i < gram.size(); ++i) {
      scale = std::max(scale, std::abs(gram[i]));
      err = std::max(err, std::abs(gram[i] - got.gram[i]));
    }
    EXPECT_LT(err, 1e-5 * scale) << "layer " << layer << " " << matmul_input_name(in);
    EXPECT_EQ(got.amax, amax);
    const std::vector<float> ms = got.mean_square();
    EXPECT_NEAR(ms[0], gram[0] / double(tokens), 1e-5 * scale / double(tokens));
    ++checked;
  };
  for (int l = 0; l < c.n_layers; ++l) {
    for (int i = 0; i < 4; ++i) compare(s.layers[size_t(l)].in[size_t(i)], l, MatmulInput(i));
  }
  compare(s.head, -1, MatmulInput::kHeadIn);
  EXPECT_EQ(checked, 4 * c.n_layers + 1);

  // Streaming: on_layer receives each layer's statistics once, in order, and the result keeps
  // none of them.
  std::vector<int> order;
  CalibParams cp;
  cp.on_layer = [&](int l, LayerStats&& ls) {
    order.push_back(l);
    EXPECT_EQ(ls.at(MatmulInput::kFfnMid).gram, s.layers[size_t(l)].at(MatmulInput::kFfnMid).gram);
  };
  CalibStats streamed = calibrate(*model, windows, cp);
  EXPECT_EQ(order, std::vector<int>({0, 1, 2, 3, 4}));
  EXPECT_EQ(streamed.layers[0].at(MatmulInput::kAttnIn).k, 0);
  EXPECT_EQ(streamed.head.gram, s.head.gram);
}

// CalibParams::bf16: the same statistics within bf16's rounding (8 significant bits in every
// operand, through the layers), identical whatever the thread count.
TEST(Calibration, Bf16StatisticsWithinTheRoundingOfBf16) {
  auto model = Model::from_imported(imported("models/stories260K/stories260K.gguf"));
  const auto windows = calibration_windows(*model, calib_excerpt(20000), 700, 256);
  CalibParams f32p, bf1, bf2;
  f32p.threads = bf1.threads = 1;
  bf2.threads = 2;
  bf1.bf16 = bf2.bf16 = true;
  const CalibStats want = calibrate(*model, windows, f32p);
  const CalibStats got = calibrate(*model, windows, bf1), got2 = calibrate(*model, windows, bf2);
  double worst = 0;
  auto compare = [&](const InputStats& w, const InputStats& g, const InputStats& g2, const std::string& what) {
    EXPECT_EQ(g.gram, g2.gram) << what;
    EXPECT_EQ(g.amax, g2.amax) << what;
    double scale = 0;
    const double err = max_abs_diff(w.gram, g.gram, &scale);
    worst = std::max(worst, err / scale);
    // Measured at most 7.9e-3 of max|Gram| over stories260K's inputs; bound 2e-2.
    EXPECT_LT(err, 2e-2 * scale) << what;
    EXPECT_GT(err, 0.0) << what;  // it really ran in bf16
  };
  for (size_t l = 0; l < want.layers.size(); ++l) {
    for (int i = 0; i < 4; ++i) {
      compare(want.layers[l].in[size_t(i)], got.layers[l].in[size_t(i)], got2.layers[l].in[size_t(i)],
              "layer " + std::to_string(l) + " " + matmul_input_name(MatmulInput(i)));
    }
  }
  compare(want.head, got.head, got2.head, "head");
  std::printf("bf16 calibration: max |ΔGram| / max|Gram| = %.3g\n", worst);
}

// Sequential calibration (CalibParams::quantize_layer): layer l + 1's statistics are those of
// the model whose layers 0..l run the returned (here q2_g32, a large change) weights. Layer 0
// sees the embeddings either way; layer 1's inputs equal a brute-force run of the embeddings
// through the quantized layer 0.
TEST(Calibration, SequentialSeesTheQuantizedPrefix) {
  auto src = imported("models/stories260K/stories260K.gguf");
  auto model = Model::from_imported(src);
  const ModelConfig& c = model->config();
  const auto windows = calibration_windows(*model, calib_excerpt(20000), 500, 256);
  ASSERT_EQ(windows.size(), 2u);
  // Every layer's weights in q2_g32 (round to nearest), kept alive for the whole run.
  std::vector<std::vector<std::vector<uint8_t>>> bytes(size_t(c.n_layers));
  std::vector<LayerWeights> quantized(size_t(c.n_layers));
  const char* names[] = {tensor_names::kAttnQ, tensor_names::kAttnK, tensor_names::kAttnV, tensor_names::kAttnO,
                         tensor_names::kFfnGate, tensor_names::kFfnUp, tensor_names::kFfnDown};
  for (int l = 0; l < c.n_layers; ++l) {
    LayerWeights& lw = quantized[size_t(l)];
    lw = model->layers()[size_t(l)];
    Weight* dst[] = {&lw.wq, &lw.wk, &lw.wv, &lw.wo, &lw.gate, &lw.up, &lw.down};
    for (int j = 0; j < 7; ++j) {
      const SourceTensor* t = nullptr;
      for (const SourceTensor& st : src->tensors) {
        if (st.name == tensor_names::layer(l, names[j])) t = &st;
      }
      ASSERT_NE(t, nullptr);
      const int64_t n = t->shape[0], k = t->shape[1];
      const size_t rb = *qtype_row_bytes(QType::kQ2G32, uint64_t(k));
      std::vector<uint8_t>& b = bytes[size_t(l)].emplace_back(rb * size_t(n));
      std::vector<float> row(static_cast<size_t>(k), 0.0f);
      for (int64_t r = 0; r < n; ++r) {
        read_source_row(*t, r, row.data());
        quantize_row(QType::kQ2G32, row.data(), k, b.data() + rb * size_t(r));
      }
      *dst[j] = make_weight(QType::kQ2G32, b.data(), n, k, model->isa());
    }
  }
  const CalibStats plain = calibrate(*model, windows, CalibParams{});
  std::vector<int> asked;
  CalibParams cp;
  cp.quantize_layer = [&](int l, const LayerStats& ls) -> const LayerWeights* {
    asked.push_back(l);
    EXPECT_GT(ls.at(MatmulInput::kFfnMid).n_tokens, 0);
    return &quantized[size_t(l)];
  };
  const CalibStats seq = calibrate(*model, windows, cp);
  EXPECT_EQ(asked, std::vector<int>({0, 1, 2, 3, 4}));
  EXPECT_EQ(seq.layers[0].at(MatmulInput::kAttnIn).gram, plain.layers[0].at(MatmulInput::kAttnIn).gram);
  for (int l = 1; l < c.n_layers; ++l) {
    EXPECT_NE(seq.layers[size_t(l)].at(MatmulInput::kAttnIn).gram, plain.layers[size_t(l)].at(MatmulInput::kAttnIn).gram) << l;
  }
  EXPECT_NE(seq.head.gram, plain.head.gram);
  // Brute force for layer 1's attention input.
  Recorder rec;
  {
    ContextParams p;
    p.n_ctx = 256;
    p.n_batch = 256;
    Context ctx(model, p);
    for (const auto& w : windows) {
      std::vector<float> x(w.size() * size_t(c.n_embd));
      ctx.embed(w, x.data());
      ctx.eval_layer(0, x.data(), int(w.size()), 0, &quantized[0]);
      ctx.set_observer(&rec);
      ctx.eval_layer(1, x.data(), int(w.size()), 0);
      ctx.set_observer(nullptr);
    }
  }
  std::vector<double> gram;
  for (const auto& r : rec.seen) {
    if (r.in != MatmulInput::kAttnIn) continue;
    if (gram.empty()) gram.assign(r.gram.size(), 0.0);
    for (size_t i = 0; i < gram.size(); ++i) gram[i] += r.gram[i];
  }
  const std::vector<double>& got = seq.layers[1].at(MatmulInput::kAttnIn).gram;
  ASSERT_EQ(got.size(), gram.size());
  double scale = 0;
  const double err = max_abs_diff(gram, got, &scale);
  EXPECT_LT(err, 1e-5 * scale);

  // Asymmetric calibration (CalibParams::asymmetric) runs the unquantized model beside: the
  // statistics of the quantized model's inputs stay exactly those above, layer 0's attention
  // input (the embeddings, the same in both) has no cross moment, and layer 1's is the
  // brute-force Σ (x_ref − x) xᵀ over the two runs of layer 1.
  CalibParams ca = cp;
  ca.asymmetric = true;
  const CalibStats asym = calibrate(*model, windows, ca);
  for (int l = 0; l < c.n_layers; ++l) {
    for (size_t i = 0; i < 4; ++i) EXPECT_EQ(asym.layers[size_t(l)].in[i].gram, seq.layers[size_t(l)].in[i].gram) << l << " " << i;
  }
  EXPECT_EQ(asym.head.gram, seq.head.gram);
  for (double v : asym.layers[0].at(MatmulInput::kAttnIn).cross) ASSERT_EQ(v, 0.0);
  EXPECT_TRUE(seq.layers[1].at(MatmulInput::kAttnIn).cross.empty());  // not asked: none
  struct Inputs : MatmulObserver {
    std::vector<float> x;
    void observe(int, MatmulInput in, const float* v, int m, int k) override {
      if (in == MatmulInput::kAttnIn) x.insert(x.end(), v, v + size_t(m) * k);
    }
  };
  Inputs xq, xr;
  {
    ContextParams p;
    p.n_ctx = 256;
    p.n_batch = 256;
    Context ctx(model, p);
    for (const auto& w : windows) {
      std::vector<float> a(w.size() * size_t(c.n_embd)), b;
      ctx.embed(w, a.data());
      b = a;
      ctx.eval_layer(0, a.data(), int(w.size()), 0, &quantized[0]);
      ctx.eval_layer(0, b.data(), int(w.size()), 0);
      ctx.set_observer(&xq);
      ctx.eval_layer(1, a.data(), int(w.size()), 0);
      ctx.set_observer(&xr);
      ctx.eval_layer(1, b.data(), int(w.size()), 0);
      ctx.set_observer(nullptr);
    }
  }
  const int E = c.n_embd;
  ASSERT_EQ(xq.x.size(), xr.x.size());
  const size_t T = xq.x.size() / size_t(E);
  std::vector<double> cross(size_t(E) * E, 0.0);
  for (size_t t = 0; t < T; ++t) {
    for (int i = 0; i < E; ++i) {
      const double d = double(xr.x[t * E + i]) - xq.x[t * E + i];
      for (int j = 0; j < E; ++j) cross[size_t(i) * E + j] += d * xq.x[t * E + j];
    }
  }
  const std::vector<double>& gc = asym.layers[1].at(MatmulInput::kAttnIn).cross;
  ASSERT_EQ(gc.size(), cross.size());
  double cs = 0;
  const double ce = max_abs_diff(cross, gc, &cs);
  EXPECT_GT(cs, 0.0);
  EXPECT_LT(ce, 1e-4 * cs);
}

// Sequential calibration observes each layer through Context::observe_layer, which skips the
// down projection: the inputs it reports are eval_layer's, bit for bit, and a quantize_layer
// that keeps the model's weights (returns null) gives exactly the plain statistics.
TEST(Calibration, ObservingALayerSeesEvalLayersInputsAndNullKeepsTheModel) {
  auto model = Model::from_imported(imported("models/stories260K/stories260K.gguf"));
  const ModelConfig& c = model->config();
  const auto windows = calibration_windows(*model, calib_excerpt(20000), 500, 256);
  struct All : MatmulObserver {
    std::vector<std::pair<MatmulInput, std::vector<float>>> seen;
    void observe(int, MatmulInput in, const float* v, int m, int k) override {
      seen.emplace_back(in, std::vector<float>(v, v + size_t(m) * k));
    }
  };
  ContextParams p;
  p.n_ctx = 256;
  p.n_batch = 256;
  Context ctx(model, p);
  std::vector<float> x(windows[0].size() * size_t(c.n_embd));
  ctx.embed(windows[0], x.data());
  ctx.eval_layer(0, x.data(), int(windows[0].size()), 0);
  std::vector<float> y = x;
  All full, inputs;
  ctx.set_observer(&full);
  ctx.eval_layer(1, x.data(), int(windows[0].size()), 0);
  ctx.set_observer(&inputs);
  ctx.observe_layer(1, y.data(), int(windows[0].size()), 0);
  ctx.set_observer(nullptr);
  ASSERT_EQ(full.seen.size(), 4u);  // q/k/v, o, gate/up, down: one each
  ASSERT_EQ(inputs.seen.size(), full.seen.size());
  for (size_t i = 0; i < full.seen.size(); ++i) {
    EXPECT_EQ(inputs.seen[i].first, full.seen[i].first) << i;
    EXPECT_EQ(inputs.seen[i].second, full.seen[i].second) << i;
  }
  EXPECT_THROW(ctx.observe_layer(c.n_layers, y.data(), 1, 0), Error);

  CalibParams keep;
  std::vector<int> asked;
  keep.quantize_layer = [&](int l, const LayerStats&) -> const LayerWeights* {
    asked.push_back(l);
    return nullptr;
  };
  const CalibStats plain = calibrate(*model, windows, CalibParams{});
  const CalibStats kept = calibrate(*model, windows, keep);
  EXPECT_EQ(int(asked.size()), c.n_layers);
  for (int l = 0; l < c.n_layers; ++l) {
    for (size_t i = 0; i < 4; ++i) {
      EXPECT_EQ(kept.layers[size_t(l)].in[i].gram, plain.layers[size_t(l)].in[i].gram) << l << " " << i;
      EXPECT_EQ(kept.layers[size_t(l)].in[i].amax, plain.layers[size_t(l)].in[i].amax) << l << " " << i;
    }
  }
  EXPECT_EQ(kept.head.gram, plain.head.gram);
}

TEST(Calibration, StatisticsFilesRoundTripAndRejectAnotherModel) {
  auto src = imported("models/stories260K/stories260K.gguf");
  auto model = Model::from_imported(src);
  CalibStats s = calibrate(*model, calibration_windows(*model, calib_excerpt(8000), 256, 128), CalibParams{});
  s.model_fingerprint = model_fingerprint(*src);
  s.source = "test";
  const std::string path = test::scratch_dir() + "/s.stats";
  save_stats(s, path);
  const CalibStats r = load_stats(path, s.model_fingerprint);
  EXPECT_EQ(r.n_tokens, s.n_tokens);
  EXPECT_EQ(r.token_counts, s.token_counts);
  EXPECT_EQ(r.head.gram, s.head.gram);
  for (size_t l = 0; l < s.layers.size(); ++l) {
    for (size_t i = 0; i < 4; ++i) {
      EXPECT_EQ(r.layers[l].in[i].gram, s.layers[l].in[i].gram);
      EXPECT_EQ(r.layers[l].in[i].amax, s.layers[l].in[i].amax);
    }
  }
  // Another model: tinymix's fingerprint differs.
  const std::string other = model_fingerprint(*imported("models/tinymix-26m"));
  ASSERT_NE(other, s.model_fingerprint);
  try {
    load_stats(path, other);
    FAIL() << "statistics of another model were accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("another model"), std::string::npos) << e.what();
  }
  // Truncated and foreign files.
  const std::string bytes = read_file(path);
  for (size_t cut : {size_t(4), size_t(40), bytes.size() / 2, bytes.size() - 1}) {
    std::ofstream(path + ".cut", std::ios::binary).write(bytes.data(), std::streamsize(cut));
    EXPECT_THROW(load_stats(path + ".cut", ""), Error) << cut;
  }
  EXPECT_THROW(load_stats(test::shared_path("models/stories260K/stories260K.gguf"), ""), Error);
  EXPECT_THROW(load_stats(test::scratch_dir() + "/missing.stats", ""), Error);
}

TEST(Calibration, TextsThatCannotCalibrateAreClearErrors) {
  auto model = Model::from_imported(imported("models/stories260K/stories260K.gguf"));
  auto message = [&](const std::string& text, int64_t tokens, int window) {
    try {
      calibration_windows(*model, text, tokens, window);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message("", 1024, 256).find("empty"), std::string::npos);
  EXPECT_NE(message("\n\x1e\n  \n", 1024, 256).find("empty"), std::string::npos);
  EXPECT_NE(message("A short text.", 1024, 256).find("fewer than one window of 256"), std::string::npos);
  EXPECT_NE(message(calib_excerpt(8000), 100, 256).find("less than one window"), std::string::npos);
  EXPECT_NE(message(calib_excerpt(8000), 1024, 100000).find("outside"), std::string::npos);
  // Self-generated text: the requested count, starting with BOS, reproducible.
  const auto a = self_generated_windows(*model, 300, 128, 7, 1), b = self_generated_windows(*model, 300, 128, 7, 2);
  ASSERT_EQ(a.size(), 3u);
  EXPECT_EQ(a[0].size() + a[1].size() + a[2].size(), 300u);
  EXPECT_EQ(a[0][0], model->config().bos_id);
  EXPECT_EQ(a, b);
}

}  // namespace
}  // namespace mxlm
