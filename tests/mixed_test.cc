// Mixed precision inside a tensor: row segments of different formats, a row map and sparse f16
// outliers, end to end through the .mxlm file and the runtime.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "base/error.h"
#include "kernels/quant.h"
#include "model/import.h"
#include "model/mxlm_file.h"
#include "mxlm/model.h"
#include "tests/test_util.h"

namespace mxlm {
namespace {

// Writes stories260K with every matrix split into a q8_g32 and a q4_g32 segment, rows stored in
// reverse order, and the `n_out` largest-magnitude weights of each row taken out before
// quantizing and kept as f16 outliers (as SpQR does), when `mixed`; or, when !mixed, the very
// same effective weights as f32. The outliers carry the largest weights of every row, so that
// any mistake in applying them (a lost outlier, a wrong row or column) moves the logits far
// more than the int8 activation rounding that separates the two files otherwise.
void write_variant(const ImportedModel& m, const std::string& path, bool mixed, int n_out) {
  MxlmWriteInput in;
  in.config = m.config;
  in.tokenizer_blob = m.tokenizer_proto;
  for (const SourceTensor& t : m.tensors) {
    TensorToWrite w;
    w.name = t.name;
    w.shape = t.shape;
    if (t.shape.size() == 1) {
      w.qtype = QType::kF32;
      w.fill = [&t](uint8_t* dst, size_t) { read_source_row(t, 0, reinterpret_cast<float*>(dst)); };
      in.tensors.push_back(w);
      continue;
    }
    const int64_t n = t.shape[0], k = t.shape[1], half = n / 2;
    auto qtype_of_stored = [half](int64_t i) { return i < half ? QType::kQ8G32 : QType::kQ4G32; };
    // Effective weights: stored row i holds output row n-1-i; quantized without its outliers,
    // which are added back exactly (to f16).
    std::vector<float> eff(size_t(n * k)), rest(size_t(n * k));
    std::vector<int32_t> row_ptr(1, 0), cols;
    std::vector<uint16_t> vals;
    std::vector<float> deq(static_cast<size_t>(k));
    std::vector<uint8_t> qrow(*qtype_row_bytes(QType::kQ8G32, uint64_t(k)));
    for (int64_t r = 0; r < n; ++r) {
      const int64_t i = n - 1 - r;
      float* src = rest.data() + r * k;
      read_source_row(t, r, src);
      std::vector<int32_t> idx(static_cast<size_t>(k));
      for (int64_t c = 0; c < k; ++c) idx[size_t(c)] = int32_t(c);
      std::partial_sort(idx.begin(), idx.begin() + n_out, idx.end(),
                        [&](int32_t a, int32_t b) { return std::abs(src[a]) > std::abs(src[b]); });
      std::sort(idx.begin(), idx.begin() + n_out);
      std::vector<float> out_vals;
      for (int j = 0; j < n_out; ++j) {
        const uint16_t h = f32_to_f16(src[idx[j]]);
        cols.push_back(idx[j]);
        vals.push_back(h);
        out_vals.push_back(f16_to_f32(h));
        src[idx[j]] = 0.0f;
      }
      row_ptr.push_back(int32_t(cols.size()));
      quantize_row(qtype_of_stored(i), src, k, qrow.data());
      dequantize_row(qtype_of_stored(i), qrow.data(), k, deq.data());
      for (int64_t c = 0; c < k; ++c) eff[size_t(r * k + c)] = deq[c];
      for (int j = 0; j < n_out; ++j) eff[size_t(r * k + idx[j])] += out_vals[size_t(j)];
    }
    if (!mixed) {
      w.qtype = QType::kF32;
      w.fill = [eff](uint8_t* dst, size_t bytes) { std::memcpy(dst, eff.data(), bytes); };
    } else {
      w.segments = {{half, QType::kQ8G32}, {n - half, QType::kQ4G32}};
      for (int64_t i = 0; i < n; ++i) w.row_map.push_back(int32_t(n - 1 - i));
      w.outlier_row_ptr = row_ptr;
      w.outlier_cols = cols;
      w.outlier_values = vals;
      w.fill = [rest, n, k, half, qtype_of_stored](uint8_t* dst, size_t) {
        for (int64_t i = 0; i < n; ++i) {
          const QType q = qtype_of_stored(i);
          const size_t rb = *qtype_row_bytes(q, uint64_t(k));
          uint8_t* base = i < half ? dst + size_t(i) * rb
                                   : dst + size_t(half) * *qtype_row_bytes(QType::kQ8G32, uint64_t(k)) + size_t(i - half) * rb;
          quantize_row(q, rest.data() + (n - 1 - i) * k, k, base);
        }
      };
    }
    in.tensors.push_back(w);
  }
  write_mxlm(path, in);
}

// Max |logit difference| relative to the largest logit, over a 9-token prompt, and whether the
// last position's argmax agrees.
struct LogitGap {
  double rel;
  bool same_argmax;
};
LogitGap logit_gap(const std::shared_ptr<const Model>& a, const std::shared_ptr<const Model>& b) {
  const std::vector<int> toks = {1, 403, 407, 261, 378, 300, 268, 419, 297};
  Context ca(a), cb(b);
  const float* la = ca.eval(toks, true);
  std::vector<float> x(la, la + toks.size() * 512);
  const float* lb = cb.eval(toks, true);
  double worst = 0, scale = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    worst = std::max(worst, double(std::abs(x[i] - lb[i])));
    scale = std::max(scale, double(std::abs(lb[i])));
  }
  const float* xa = x.data() + (toks.size() - 1) * 512;
  const float* xb = lb + (toks.size() - 1) * 512;
  return {worst / scale, std::max_element(xa, xa + 512) - xa == std::max_element(xb, xb + 512) - xb};
}

// With 4 outliers per row (6 % of stories260K's 64-wide rows: the largest weights), the mixed
// file sits at 1.5 % of the largest logit from its dense equivalent (int8 activation rounding in
// the quantized segments). The limit is 5 %; the mutations of scripts/mutations.txt move the
// logits by 89 % (all outliers lost), 51 % (the last outlier of every row lost) and 70 % (each
// outlier at half its value): 10-18x the limit, while the unbroken code sits at 0.3 of it.
TEST(MixedPrecision, SegmentsRowMapAndOutliersMatchTheirDenseEquivalent) {
  ImportedModel m = import_model(test::shared_path("models/stories260K/stories260K.gguf"));
  const std::string mixed = test::scratch_dir() + "/mixed.mxlm", dense = test::scratch_dir() + "/mixed_dense.mxlm";
  write_variant(m, mixed, true, 4);
  write_variant(m, dense, false, 4);
  {
    MxlmFile f(mixed);
    f.verify();
    const TensorEntry* t = f.find("blk.0.ffn_up");
    ASSERT_NE(t, nullptr);
    ASSERT_EQ(t->segments.size(), 2u);
    EXPECT_EQ(t->segments[1].qtype, QType::kQ4G32);
    EXPECT_NE(t->row_map, nullptr);
    EXPECT_EQ(t->outliers.nnz, 4u * 172u);
  }
  const LogitGap gap = logit_gap(Model::load(mixed), Model::load(dense));
  std::printf("mixed vs dense: max |diff| / max |logit| = %.5f\n", gap.rel);
  EXPECT_LT(gap.rel, 0.05);
  EXPECT_TRUE(gap.same_argmax);
}

TEST(MixedPrecision, RejectsBadRowMapAndOutliers) {
  ImportedModel m = import_model(test::shared_path("models/stories260K/stories260K.gguf"));
  MxlmWriteInput in;
  in.config = m.config;
  TensorToWrite w;
  w.name = "x";
  w.shape = {4, 32};
  w.qtype = QType::kQ4G32;
  w.row_map = {0, 1, 1, 3};  // not a permutation
  w.fill = [](uint8_t*, size_t) {};
  in.tensors = {w};
  const std::string p = test::scratch_dir() + "/badmap.mxlm";
  write_mxlm(p, in);
  EXPECT_THROW(MxlmFile f(p), Error);
  w.row_map.clear();
  w.outlier_row_ptr = {0, 1, 1, 1, 1};
  w.outlier_cols = {40};  // column past K
  w.outlier_values = {0};
  in.tensors = {w};
  write_mxlm(p, in);
  try {
    MxlmFile f(p);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("outlier column 40"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace mxlm
