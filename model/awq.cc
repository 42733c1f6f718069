// AWQ scale search and fold (see awq.h for the math).
//
// Search. For each candidate (a, b): s from awq_family_scales (float), W'_t = W_t·diag(s) (float
// products), H' = H_ij / (s_i s_j) with the same float s (so the error identity of awq.h holds
// for exactly the s returned), each tensor encoded with H' (encode_tensor; GPTQ shares one
// gptq_factor of H' among the tensors) and scored by output_error under one prepared H'. The
// first candidate is a = b = 0, i.e. s = 1 exactly (every log is multiplied by 0, the mean is 0,
// exp(0) = 1): its encodes are bit-identical to encoding W under H, which makes error_before the
// plain encoder's error; a later candidate replaces the best only when strictly better.
//
// Fold. Each affected tensor gets one factor per column and one per row (all 1 but for the
// inputs scaled), accumulated over the layer's three inputs (ffn_up takes both the ffn input's
// column factors and the ffn mid's row factors), then is rewritten once: its rows read by
// read_source_row (which dequantizes, converts and undoes the interleaved-RoPE row permutation
// of GGUF / llama2.c q and k: column scaling commutes with that row permutation, and the rows
// are stored already permuted, so the new tensor has rope_unpermute_head_dim = 0), multiplied in
// double and rounded once to f32. Model::from_imported reads these owned f32 rows in place.
//
// Measured (AwqBench.DISABLED_TinymixRatios in tests/awq_test.cc): tinymix-26m, the statistics of
// 16384 calibration tokens of text/tinymix-calib.txt, β = 1, grid 20 (21 points), b = 0; per input
// kind, after/before of the search's objective: median (upper) [min, max] over the 8 layers, and
// Σ after / Σ before over the layers:
//                     attn_in (q,k,v)            ffn_in (gate,up)           ffn_mid (down)
//   weighted q3_g32   0.995 [0.971, 0.999] 0.994  0.998 [0.972, 0.999] 0.998  0.988 [0.944, 0.993] 0.984
//   weighted q3k_g32  0.997 [0.973, 1.000] 0.994  0.998 [0.972, 0.999] 0.998  0.990 [0.947, 0.992] 0.984
//   weighted q4k_g32  0.992 [0.950, 0.995] 0.990  0.997 [0.971, 0.999] 0.997  0.985 [0.952, 0.991] 0.982
//   gptq     q3_g32   1.000 [0.994, 1.000] 0.999  1.000 [0.997, 1.000] 1.000  0.997 [0.985, 1.000] 0.996
//   gptq     q3k_g32  1.000 [0.996, 1.000] 0.999  1.000 [0.994, 1.000] 1.000  0.998 [0.991, 1.000] 0.996
//   gptq     q4k_g32  1.000 [0.996, 1.000] 1.000  1.000 [1.000, 1.000] 1.000  0.996 [0.992, 1.000] 0.994
//   rtn      q3_g32   0.993 [0.969, 0.998] 0.991  0.998 [0.984, 0.999] 0.997  0.982 [0.876, 0.985] 0.962
//   rtn      q4k_g32  0.987 [0.952, 0.993] 0.986  0.997 [0.961, 0.998] 0.996  0.978 [0.895, 0.986] 0.969
// Chosen a: 0.05–0.4 with weighted RTN (attn_in mostly 0.05–0.2, ffn_mid 0.15–0.3), 0–0.15 with
// GPTQ (a = 0 in 33 of 72 cases). The gains are small because tinymix has no strong activation
// outliers: max/median channel RMS 1.4–7.6 (p99/median ≤ 3.6) at the attention and FFN inputs,
// 2.4–11.9 at down's input; weighted RTN already gives each channel its diag(H) importance in the
// group-scale search, and GPTQ compensates through the full H. For scale: GPTQ without scaling has
// 0.62 (q3) / 0.63 (q4k) of weighted RTN's Σ error on attn_in, so AWQ + weighted RTN does not
// replace GPTQ here. On a synthetic layer with 1% of the channels at 10–30× the RMS
// (tests/awq_test.cc) weighted RTN gains much more: 0.674 (q3_g32), 0.761 (q4_g32); plain RTN
// 0.533 (q4_g32). The weight-magnitude variant (b ∈ {0, 0.25, 0.5}, b = 0.25 chosen in 20 of 72
// cases) moved the weighted Σ ratios by ≤ 0.002 (attn_in 0.994 → 0.992 at q3): not worth its
// cost (3× the encodes), so b = 0 is the default. Cost: 21 candidates × the tensors' encodes
// and output errors: all 8 layers × 3 inputs × 3 formats took 91 s with weighted RTN and 137 s
// with GPTQ (2 threads, shared VM).
// End to end (AwqBench.DISABLED_TinymixEndToEnd: all 56 layer matrices encoded, scales searched
// per input at the same format, folded, H transformed; 4088 held-out tokens of
// text/tinymix-val.txt; unquantized perplexity 12.334):
//                     Σ output error   mean KL (ref ‖ quant)        perplexity
//                     awq / plain      plain    awq     ratio       plain   awq
//   weighted q3_g32      0.995         0.2560   0.2505  0.978       14.165  14.193
//   weighted q4k_g32     0.994         0.0611   0.0628  1.027       12.725  12.802
//   rtn      q3_g32      0.990         0.2559   0.2584  1.010       14.171  14.392
// i.e. on tinymix the 0.5–1% lower layer output error does not carry over to the model's KL or
// perplexity (±3%, either sign): the scaling is exact and safe, but worth enabling only for
// models with strong activation outliers (the synthetic case above), and its benefit should be
// judged by the quantizer's KL measurement, not by the output error alone.
#include "model/awq.h"


#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <string>

#include "base/error.h"

namespace mxlm {

namespace {

[[noreturn]] void fail(const std::string& what) { throw Error(ErrorCode::kInvalidArgument, what); }

void check_tensors(const char* f, const std::vector<AwqTensor>& tensors, int64_t k) {
  if (k <= 0) fail(std::string(f) + ": k = " + std::to_string(k) + " must be > 0");
  if (tensors.empty()) fail(std::string(f) + ": no tensors read the input");
  for (size_t i = 0; i < tensors.size(); ++i) {
    const AwqTensor& t = tensors[i];
    const std::string who = std::string(f) + ": tensor " + std::to_string(i);
    if (!t.w) fail(who + " has a null weight pointer");
    if (t.n <= 0) fail(who + " has n = " + std::to_string(t.n) + " (must be > 0)");
    if (!std::isfinite(t.beta) || t.beta < 0) fail(who + " has beta = " + std::to_string(t.beta) + " (must be finite and >= 0)");
    for (int64_t j = 0; j < t.n * k; ++j) {
      if (!std::isfinite(t.w[j])) {
        fail(who + ": weight [" + std::to_string(j / k) + "][" + std::to_string(j % k) + "] = " + std::to_string(t.w[j]) +
             " is not finite");
      }
    }
  }
}

void check_h_diag(const char* f, const double* h, int64_t k) {
  if (!h) fail(std::string(f) + ": null h");
  for (int64_t i = 0; i < k; ++i) {
    const double d = h[i * k + i];
    if (!std::isfinite(d) || d < 0) {
      fail(std::string(f) + ": h diagonal [" + std::to_string(i) + "] = " + std::to_string(d) + " must be finite and >= 0");
    }
  }
}

// log(max(v_j, floor · max v)), or 0 for every j when max v = 0.
std::vector<double> floored_log(const std::vector<double>& v, double floor) {
  const double mx = *std::max_element(v.begin(), v.end());
  std::vector<double> out(v.size(), 0.0);
  if (!(mx > 0)) return out;
  for (size_t j = 0; j < v.size(); ++j) out[j] = std::log(std::max(v[j], floor * mx));
  return out;
}

std::vector<float> scales_from_logs(const std::vector<double>& lr, const std::vector<double>& lm, double a, double b) {
  const size_t k = lr.size();
  std::vector<double> ls(k);
  double mean = 0;
  for (size_t j = 0; j < k; ++j) {
    ls[j] = a * lr[j] - b * lm[j];
    mean += ls[j];
  }
  mean /= double(k);
  std::vector<float> s(k);
  for (size_t j = 0; j < k; ++j) s[j] = static_cast<float>(std::exp(ls[j] - mean));
  return s;
}

struct FamilyBases {
  std::vector<double> lr, lm;  // floored logs of sqrt(H_jj) and max |W_{:,j}|
};

FamilyBases family_bases(const std::vector<AwqTensor>& tensors, const double* h, int64_t k, double floor) {
  std::vector<double> r(static_cast<size_t>(k)), m(static_cast<size_t>(k), 0.0);
  for (int64_t j = 0; j < k; ++j) r[size_t(j)] = std::sqrt(h[j * k + j]);
  for (const AwqTensor& t : tensors) {
    for (int64_t row = 0; row < t.n; ++row) {
      const float* w = t.w + row * k;
      for (int64_t j = 0; j < k; ++j) m[size_t(j)] = std::max(m[size_t(j)], double(std::fabs(w[j])));
    }
  }
  return {floored_log(r, floor), floored_log(m, floor)};
}

void check_exponent(const char* f, const char* name, double v) {
  if (!std::isfinite(v) || v < 0) fail(std::string(f) + ": exponent " + name + " = " + std::to_string(v) + " must be finite and >= 0");
}

void check_floor(const char* f, double floor) {
  if (!(floor > 0 && floor <= 1)) fail(std::string(f) + ": floor = " + std::to_string(floor) + " must be in (0, 1]");
}

}  // namespace

void awq_check_scales(const std::vector<float>& s, int64_t k, const std::string& what) {
  if (int64_t(s.size()) != k) fail(what + ": " + std::to_string(s.size()) + " scales, expected " + std::to_string(k));
  for (size_t j = 0; j < s.size(); ++j) {
    if (!std::isfinite(s[j]) || !(s[j] > 0)) {
      fail(what + ": scale [" + std::to_string(j) + "] = " + std::to_string(s[j]) + " must be finite and > 0");
    }
  }
}

std::vector<float> awq_family_scales(const std::vector<AwqTensor>& tensors, const double* h, int64_t k, double a, double b,
                                     double floor) {
  const char* f = "awq_family_scales";
  check_tensors(f, tensors, k);
  check_h_diag(f, h, k);
  check_exponent(f, "a", a);
  check_exponent(f, "b", b);
  check_floor(f, floor);
  const FamilyBases fb = family_bases(tensors, h, k, floor);
  return scales_from_logs(fb.lr, fb.lm, a, b);
}

void awq_scale_columns(float* w, int64_t n, int64_t k, const float* s) {
  if (n < 0 || k < 0 || ((!w || !s) && n * k > 0)) fail("awq_scale_columns: bad arguments");
  for (int64_t r = 0; r < n; ++r) {
    float* row = w + r * k;
    for (int64_t j = 0; j < k; ++j) row[j] *= s[j];
  }
}

void awq_transform_h(double* h, int64_t k, const float* s) {
  if (k < 0 || ((!h || !s) && k > 0)) fail("awq_transform_h: bad arguments");
  std::vector<double> inv(static_cast<size_t>(k));
  for (int64_t j = 0; j < k; ++j) {
    if (!std::isfinite(s[j]) || !(s[j] > 0)) {
      fail("awq_transform_h: scale [" + std::to_string(j) + "] = " + std::to_string(s[j]) + " must be finite and > 0");
    }
    inv[size_t(j)] = 1.0 / double(s[j]);
  }
  for (int64_t i = 0; i < k; ++i) {
    double* row = h + i * k;
    for (int64_t j = 0; j < k; ++j) row[j] = row[j] * inv[size_t(i)] * inv[size_t(j)];
  }
}

AwqResult awq_search(const std::vector<AwqTensor>& tensors, const double* h, int64_t k, QType t, const AwqOptions& o) {
  const char* f = "awq_search";
  check_tensors(f, tensors, k);
  check_h_diag(f, h, k);
  check_floor(f, o.floor);
  if (o.grid < 1) fail(std::string(f) + ": grid = " + std::to_string(o.grid) + " must be >= 1");
  for (double b : o.weight_exponents) check_exponent(f, "b", b);
  for (int64_t i = 0; i < k * k; ++i) {
    if (!std::isfinite(h[i])) fail(std::string(f) + ": h[" + std::to_string(i / k) + "][" + std::to_string(i % k) + "] is not finite");
  }

  // Candidates: (0, 0) first (s = 1), then every (a, b) of the grid except (0, 0).
  std::vector<std::pair<double, double>> cands = {{0.0, 0.0}};
  for (int i = 0; i <= o.grid; ++i) {
    const double a = double(i) / double(o.grid);
    for (double b : o.weight_exponents) {
      if (a == 0 && b == 0) continue;
      cands.emplace_back(a, b);
    }
  }

  const FamilyBases fb = family_bases(tensors, h, k, o.floor);
  const bool gptq = o.encode.method == EncodeMethod::kGptq;
  AwqResult res;
  res.scales.assign(size_t(k), 1.0f);
  std::vector<double> hs(size_t(k * k));
  std::vector<std::vector<float>> ws(tensors.size());
  bool first = true;
  for (const auto& [a, b] : cands) {
    const std::vector<float> s = scales_from_logs(fb.lr, fb.lm, a, b);
    std::copy(h, h + k * k, hs.begin());
    awq_transform_h(hs.data(), k, s.data());
    const auto prepared = prepare_output_error_h(hs.data(), k);
    std::shared_ptr<const GptqFactor> factor;
    if (gptq) factor = gptq_factor(hs.data(), k, o.encode);
    double total = 0;
    std::vector<double> per(tensors.size());
    for (size_t ti = 0; ti < tensors.size(); ++ti) {
      const AwqTensor& tt = tensors[ti];
      ws[ti].assign(tt.w, tt.w + tt.n * k);
      awq_scale_columns(ws[ti].data(), tt.n, k, s.data());
      const std::vector<uint8_t> bytes = factor ? encode_tensor(t, ws[ti].data(), tt.n, k, *factor, o.encode)
                                                : encode_tensor(t, ws[ti].data(), tt.n, k, hs.data(), o.encode);
      // The error of Q(W') under H' = the error of Q(W')·diag(1/s) under H (awq.h).
      per[ti] = output_error(t, bytes.data(), ws[ti].data(), tt.n, k, *prepared);
      total += tt.beta * per[ti];
    }
    res.curve.push_back({a, b, total});
    if (first) {
      res.error_before = res.error_after = total;
      res.tensor_before = res.tensor_after = per;
      first = false;
    } else if (total < res.error_after) {
      res.error_after = total;
      res.tensor_after = per;
      res.a = a;
      res.b = b;
      res.scales = s;
    }
  }
  return res;
}

ImportedModel awq_fold(const ImportedModel& m, const std::vector<AwqLayerScales>& layers) {
  const ModelConfig& c = m.config;
  if (!layers.empty() && int64_t(layers.size()) != c.n_layers) {
    fail("awq_fold: scales for " + std::to_string(layers.size()) + " layers, the model has " + std::to_string(c.n_layers));
  }
  ImportedModel out = m;
  std::map<std::string, size_t> index;
  for (size_t i = 0; i < out.tensors.size(); ++i) index[out.tensors[i].name] = i;

  // Per affected tensor: a factor per column and per row (1 where not scaled).
  struct Factors {
    std::vector<double> col, row;
  };
  std::map<size_t, Factors> todo;
  auto factors_of = [&](const std::string& name) -> Factors& {
    auto it = index.find(name);
    if (it == index.end()) throw Error(ErrorCode::kFormat, "awq_fold: model lacks tensor '" + name + "'");
    const SourceTensor& t = out.tensors[it->second];
    Factors& fa = todo[it->second];
    if (fa.col.empty()) {
      fa.col.assign(size_t(t.shape.back()), 1.0);
      fa.row.assign(size_t(t.shape.size() == 2 ? t.shape[0] : 1), 1.0);
    }
    return fa;
  };
  auto need_cols = [&](const std::string& name, Factors& fa, size_t k) {
    if (fa.col.size() != k) {
      throw Error(ErrorCode::kFormat, "awq_fold: tensor '" + name + "' has " + std::to_string(fa.col.size()) +
                                          " columns, the scales " + std::to_string(k));
    }
  };
  auto need_rows = [&](const std::string& name, Factors& fa, size_t n) {
    if (fa.row.size() != n) {
      throw Error(ErrorCode::kFormat, "awq_fold: tensor '" + name + "' has " + std::to_string(fa.row.size()) +
                                          " rows, the scales " + std::to_string(n));
    }
  };
  // x' = x / s at the producer (a norm vector: its elements are its "columns") ...
  auto divide_vector = [&](const std::string& name, const std::vector<float>& s) {
    Factors& fa = factors_of(name);
    need_cols(name, fa, s.size());
    for (size_t j = 0; j < s.size(); ++j) fa.col[j] /= double(s[j]);
  };
  // ... or a matrix's rows (up's rows produce down's input) ...
  auto divide_rows = [&](const std::string& name, const std::vector<float>& s) {
    Factors& fa = factors_of(name);
    need_rows(name, fa, s.size());
    for (size_t j = 0; j < s.size(); ++j) fa.row[j] /= double(s[j]);
  };
  // ... and W' = W·diag(s) at the consumers.
  auto scale_cols = [&](const std::string& name, const std::vector<float>& s) {
    Factors& fa = factors_of(name);
    need_cols(name, fa, s.size());
    for (size_t j = 0; j < s.size(); ++j) fa.col[j] *= double(s[j]);
  };

  using namespace tensor_names;
  int scaled_inputs = 0;
  for (size_t l = 0; l < layers.size(); ++l) {
    const AwqLayerScales& ls = layers[l];
    const int li = int(l);
    const std::string where = "awq_fold: layer " + std::to_string(l);
    if (!ls.attn_in.empty()) {
      awq_check_scales(ls.attn_in, c.n_embd, where + " attn_in");
      divide_vector(layer(li, kAttnNorm), ls.attn_in);
      for (const char* w : {kAttnQ, kAttnK, kAttnV}) scale_cols(layer(li, w), ls.attn_in);
      ++scaled_inputs;
    }
    if (!ls.ffn_in.empty()) {
      awq_check_scales(ls.ffn_in, c.n_embd, where + " ffn_in");
      divide_vector(layer(li, kFfnNorm), ls.ffn_in);
      for (const char* w : {kFfnGate, kFfnUp}) scale_cols(layer(li, w), ls.ffn_in);
      ++scaled_inputs;
    }
    if (!ls.ffn_mid.empty()) {
      awq_check_scales(ls.ffn_mid, c.n_ff, where + " ffn_mid");
      divide_rows(layer(li, kFfnUp), ls.ffn_mid);
      scale_cols(layer(li, kFfnDown), ls.ffn_mid);
      ++scaled_inputs;
    }
  }

  for (auto& entry : todo) {
    SourceTensor& t = out.tensors[entry.first];
    const Factors& fa = entry.second;
    const int64_t n = int64_t(fa.row.size()), k = int64_t(fa.col.size());
    auto buf = std::make_shared<std::vector<float>>(size_t(n) * size_t(k));
    const SourceTensor src = t;
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < n; ++r) {
      float* dst = buf->data() + size_t(r) * size_t(k);
      read_source_row(src, r, dst);  // RoPE rows already in the rotate-half order
      const double g = fa.row[size_t(r)];
      for (int64_t j = 0; j < k; ++j) dst[j] = static_cast<float>(double(dst[j]) * fa.col[size_t(j)] * g);
    }
    t.src_type = QType::kF32;
    t.data = reinterpret_cast<const uint8_t*>(buf->data());
    t.rope_unpermute_head_dim = 0;
    out.files.push_back(buf);
  }
  if (scaled_inputs > 0) out.provenance["awq_scaled_inputs"] = scaled_inputs;
  return out;
}

}  // namespace mxlm
