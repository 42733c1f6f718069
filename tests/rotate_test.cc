// Rotation of the residual stream and value heads (model/rotate.h): the matrix is orthogonal and
// fixed by its seed (powers of two and sizes with an odd factor), and the rotated tinymix-26m
// computes the same logits as the original; a tied head is refused.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "base/error.h"
#include "model/import.h"
#include "model/rotate.h"
#include "mxlm/model.h"
#include "tests/test_util.h"
#include "tokenizer/tokenizer.h"

namespace mxlm {
namespace {

TEST(Rotation, IsOrthogonalAndFixedBySeed) {
  for (int64_t n : {1, 8, 64, 172, 96}) {  // 172 = 4 · 43, 96 = 32 · 3
    SCOPED_TRACE(n);
    const std::vector<double> r = Rotation(n, 7).matrix();
    double worst = 0;
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        double d = 0;
        for (int64_t t = 0; t < n; ++t) d += r[size_t(i * n + t)] * r[size_t(j * n + t)];
        worst = std::max(worst, std::abs(d - (i == j ? 1.0 : 0.0)));
      }
    }
    EXPECT_LT(worst, 1e-12);
    EXPECT_EQ(Rotation(n, 7).matrix(), r);
    if (n > 1) {
      EXPECT_NE(Rotation(n, 8).matrix(), r);
    }
    // It mixes: no row keeps its energy in one element (a plain permutation or identity would).
    if (n >= 8) {
      double max_elem = 0;
      for (double v : r) max_elem = std::max(max_elem, std::abs(v));
      EXPECT_LT(max_elem, 0.9);
    }
  }
  EXPECT_THROW(Rotation(0, 1), Error);
}

TEST(RotateModel, TinymixLogitsUnchanged) {
  auto src = std::make_shared<ImportedModel>(import_model(test::shared_path("models/tinymix-26m")));
  auto rot = std::make_shared<ImportedModel>(rotate_model(*src));
  EXPECT_TRUE(rot->provenance.contains("rotation"));
  // The norms are folded into their readers.
  std::vector<float> g(size_t(src->config.n_embd));
  for (const SourceTensor& t : rot->tensors) {
    if (t.shape.size() != 1) continue;
    read_source_row(t, 0, g.data());
    for (float v : g) ASSERT_EQ(v, 1.0f) << t.name;
  }
  auto a = Model::from_imported(src);
  auto b = Model::from_imported(rot);
  const std::vector<int> tokens = a->tokenizer().encode("Once upon a time there was a little dog who liked to run.", true);
  Context ca(a), cb(b);
  const float* la = ca.eval(tokens, true);
  const float* lb = cb.eval(tokens, true);
  double diff = 0, mag = 0;
  for (size_t i = 0; i < tokens.size() * size_t(a->config().n_vocab); ++i) {
    diff = std::max(diff, double(std::fabs(la[i] - lb[i])));
    mag = std::max(mag, double(std::fabs(la[i])));
  }
  std::printf("rotated tinymix: max |Δlogit| %.3g, relative %.3g\n", diff, diff / mag);
  EXPECT_LT(diff / mag, 1e-4);
}

TEST(RotateModel, TiedHeadIsAClearError) {
  ImportedModel m = import_model(test::shared_path("models/tinymix-26m"));
  m.config.tied_embeddings = true;  // as if the head reused tok_embd
  try {
    rotate_model(m);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tied"), std::string::npos) << e.what();
  }
  RotateOptions o;
  o.residual = false;  // the value heads alone need no untying
  EXPECT_NO_THROW(rotate_model(m, o));
}

}  // namespace
}  // namespace mxlm
