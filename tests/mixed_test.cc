// Mixed precision inside a tensor: row segments of different formats, a row map and sparse f16
// outliers, end to end through the .mxlm file and the runtime.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "kernels/common.h"
#include "kernels/quant.h"
#include "model/import.h"
#include "model/mxlm_file.h"
#include "mxlm/model.h"
#include "tests/test_util.h"

namespace mxlm {
namespace {

// Writes stories260K with every matrix split into a q8_g32 and a q4_g32 segment, rows stored in
// reverse order, and the largest residual of each row kept as an outlier (when `mixed`); or,
// when !mixed, the very same effective weights as f32.
void write_variant(const ImportedModel& m, const std::string& path, bool mixed) {
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
    // Effective weights: stored row i holds output row n-1-i; the outlier restores the exact
    // value of each row's largest-magnitude weight.
    std::vector<float> eff(size_t(n * k));
    std::vector<int32_t> row_ptr(1, 0), cols;
    std::vector<uint16_t> vals;
    std::vector<float> src(static_cast<size_t>(k)), deq(static_cast<size_t>(k));
    std::vector<uint8_t> qrow(*qtype_row_bytes(QType::kQ8G32, uint64_t(k)));
    for (int64_t r = 0; r < n; ++r) {
      const int64_t i = n - 1 - r;
      read_source_row(t, r, src.data());
      quantize_row(qtype_of_stored(i), src.data(), k, qrow.data());
      dequantize_row(qtype_of_stored(i), qrow.data(), k, deq.data());
      int64_t best = 0;
      for (int64_t c = 0; c < k; ++c) {
        if (std::abs(src[c]) > std::abs(src[best])) best = c;
      }
      const uint16_t h = f32_to_f16(src[best] - deq[best]);
      cols.push_back(int32_t(best));
      vals.push_back(h);
      row_ptr.push_back(int32_t(cols.size()));
      for (int64_t c = 0; c < k; ++c) eff[size_t(r * k + c)] = deq[c] + (c == best ? f16_to_f32(h) : 0.0f);
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
      w.fill = [&t, n, k, half, qtype_of_stored](uint8_t* dst, size_t) {
        std::vector<float> row(static_cast<size_t>(k));
        for (int64_t i = 0; i < n; ++i) {
          read_source_row(t, n - 1 - i, row.data());
          const QType q = qtype_of_stored(i);
          const size_t rb = *qtype_row_bytes(q, uint64_t(k));
          uint8_t* base = i < half ? dst + size_t(i) * rb
                                   : dst + size_t(half) * *qtype_row_bytes(QType::kQ8G32, uint64_t(k)) + size_t(i - half) * rb;
          quantize_row(q, row.data(), k, base);
        }
      };
    }
    in.tensors.push_back(w);
  }
  write_mxlm(path, in);
}

TEST(MixedPrecision, SegmentsRowMapAndOutliersMatchTheirDenseEquivalent) {
  ImportedModel m = import_model(test::shared_path("models/stories260K/stories260K.gguf"));
  const std::string mixed = test::scratch_dir() + "/mixed.mxlm", dense = test::scratch_dir() + "/mixed_dense.mxlm";
  write_variant(m, mixed, true);
  write_variant(m, dense, false);
  {
    MxlmFile f(mixed);
    f.verify();
    const TensorEntry* t = f.find("blk.0.ffn_up");
    ASSERT_NE(t, nullptr);
    ASSERT_EQ(t->segments.size(), 2u);
    EXPECT_EQ(t->segments[1].qtype, QType::kQ4G32);
    EXPECT_NE(t->row_map, nullptr);
    EXPECT_EQ(t->outliers.nnz, 172u);
  }
  auto mq = Model::load(mixed), md = Model::load(dense);
  std::vector<int> toks = {1, 403, 407, 261, 378, 300, 268, 419, 297};
  Context cq(mq), cd(md);
  const float* lq = cq.eval(toks, true);
  std::vector<float> a(lq, lq + toks.size() * 512);
  const float* ld = cd.eval(toks, true);
  double worst = 0, scale = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    worst = std::max(worst, double(std::abs(a[i] - ld[i])));
    scale = std::max(scale, double(std::abs(ld[i])));
  }
  std::printf("mixed vs dense: max diff %.4f, max logit %.2f\n", worst, scale);
  // The only difference left is int8 activation quantization in the mixed model.
  EXPECT_LT(worst, 0.02 * scale) << "max |diff| " << worst << " of logits up to " << scale;
  // Greedy continuations agree.
  int argmax_q = 0, argmax_d = 0;
  for (int v = 1; v < 512; ++v) {
    if (a[(toks.size() - 1) * 512 + v] > a[(toks.size() - 1) * 512 + argmax_q]) argmax_q = v;
    if (ld[(toks.size() - 1) * 512 + v] > ld[(toks.size() - 1) * 512 + argmax_d]) argmax_d = v;
  }
  EXPECT_EQ(argmax_q, argmax_d);
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
