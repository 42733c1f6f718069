// The mixed-precision pipeline of autoquant.h: tensors and budget (AutoQuantizer), calibration
// and per-candidate errors and KL (measure), knapsack (plan), encoding and the record (write).
//
// Measured on tinymix-26m (58 tensors, the 11 default candidates, 2 threads on the 2-core build
// machine, benchmarks/quantize_bench.cc, read bandwidth 34.0 GB/s in the same run): calibration
// of 16384 tokens 9.9 s, encoding every candidate with GPTQ plus its output error 14.6 s (one
// factorization per distinct input, shared by its tensors and candidates), the 2 × 58 KL runs
// of 1024 tokens 28.1 s, writing 0.9 s: 53.5 s in all. The two-point fit (candidates nearest
// 3.5 and 2.5 bits) predicts each tensor's KL at the ~4.5-bit candidate with Spearman ρ = 0.983
// over the tensors. The README has the perplexities and what the KL objective does and does
// not transfer to held-out text.
#include "mxlm/autoquant.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <map>
#include <numeric>

#include "kernels/common.h"
#include "model/allocate.h"
#include "tokenizer/tokenizer.h"

namespace mxlm {

// The two-level formats (8-bit group scales under a row scale) cost 0.25 bits per weight less
// than their f16-scaled twins at the same group size, and the allocator takes them almost
// everywhere: with the 15 one-level formats alone the predicted KL of tinymix's mixes (GPTQ,
// calibrated on tinymix-calib) was 1.30 / 0.705 / 0.238 / 0.0744 / 0.0213 at 2.6 / 3.0 / 3.65 /
// 4.5 / 5.4 bpw; adding the 8 two-level formats gave 1.04 / 0.529 / 0.204 / 0.0608 / 0.0170
// (-12 to -25 %), and the plans then used, besides them, only q2a_g64 and q4_g128 of the
// one-level formats (`mxlm sweep --dry-run` prints the formats of each plan). Those plus
// q8_g64 for the top are the default.
std::vector<QType> default_candidates() {
  return {QType::kQ2KG32, QType::kQ2AG64,  QType::kQ2AKG32, QType::kQ3KG32,  QType::kQ3AKG32, QType::kQ4G128,
          QType::kQ4KG32, QType::kQ4AKG32, QType::kQ5KG32,  QType::kQ6KG32,  QType::kQ8G64};
}

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// A 2-D tensor and where its input comes from.
struct Slot {
  const SourceTensor* src = nullptr;
  int layer = -1;  // -1: embedding or head
  MatmulInput in = MatmulInput::kHeadIn;
  bool embedding = false;  // tok_embd read by lookups only (untied)
};

// Which matmul input feeds `name` (blk.<l>.<suffix>), or the head / embedding.
Slot slot_of(const SourceTensor& t, const ModelConfig& c) {
  using namespace tensor_names;
  Slot s;
  s.src = &t;
  if (t.name == kTokEmbd) {
    s.embedding = !c.tied_embeddings;
    return s;
  }
  if (t.name == kOutput) return s;
  for (int l = 0; l < c.n_layers; ++l) {
    const std::pair<const char*, MatmulInput> map[] = {
        {kAttnQ, MatmulInput::kAttnIn}, {kAttnK, MatmulInput::kAttnIn},  {kAttnV, MatmulInput::kAttnIn},
        {kAttnO, MatmulInput::kAttnOut}, {kFfnGate, MatmulInput::kFfnIn}, {kFfnUp, MatmulInput::kFfnIn},
        {kFfnDown, MatmulInput::kFfnMid}};
    for (const auto& [suffix, in] : map) {
      if (t.name == layer(l, suffix)) {
        s.layer = l;
        s.in = in;
        return s;
      }
    }
  }
  throw Error(ErrorCode::kFormat, "tensor '" + t.name + "' is not a weight of the model");
}

std::vector<float> read_tensor(const SourceTensor& t) {
  const int64_t n = t.shape[0], k = t.shape[1];
  std::vector<float> w(size_t(n) * size_t(k));
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < n; ++r) read_source_row(t, r, w.data() + size_t(r) * size_t(k));
  return w;
}

uint64_t tensor_bytes(QType t, int64_t n, int64_t k) { return *qtype_row_bytes(t, uint64_t(k)) * uint64_t(n); }

// Spearman's rank correlation (average ranks for ties).
double spearman(const std::vector<double>& a, const std::vector<double>& b) {
  auto ranks = [](const std::vector<double>& v) {
    std::vector<size_t> idx(v.size());
    std::iota(idx.begin(), idx.end(), 0);
    std::sort(idx.begin(), idx.end(), [&](size_t i, size_t j) { return v[i] < v[j]; });
    std::vector<double> r(v.size());
    for (size_t i = 0; i < idx.size();) {
      size_t j = i;
      while (j + 1 < idx.size() && v[idx[j + 1]] == v[idx[i]]) ++j;
      for (size_t q = i; q <= j; ++q) r[idx[q]] = 0.5 * double(i + j);
      i = j + 1;
    }
    return r;
  };
  const std::vector<double> ra = ranks(a), rb = ranks(b);
  const double n = double(a.size()), mean = (n - 1) / 2;
  double sab = 0, saa = 0, sbb = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    sab += (ra[i] - mean) * (rb[i] - mean);
    saa += (ra[i] - mean) * (ra[i] - mean);
    sbb += (rb[i] - mean) * (rb[i] - mean);
  }
  return saa > 0 && sbb > 0 ? sab / std::sqrt(saa * sbb) : NAN;
}

// Measures the KL divergence of the model with one tensor swapped from the unquantized model, on
// a few calibration windows. The unquantized hidden state at every layer's input and the
// unquantized log-probabilities are kept, so a tensor of layer l costs layers l .. L-1 and the
// head.
class KlProbe {
 public:
  KlProbe(const Model& model, std::vector<std::vector<int>> windows, int threads) : model_(model), windows_(std::move(windows)) {
    const ModelConfig& c = model.config();
    int longest = 1;
    for (const auto& w : windows_) longest = std::max(longest, int(w.size()));
    ContextParams cp;
    cp.n_ctx = longest;
    cp.n_batch = longest;
    cp.n_threads = threads;
    ctx_ = std::make_unique<Context>(std::shared_ptr<const Model>(std::shared_ptr<const Model>{}, &model), cp);
    const size_t L = size_t(c.n_layers), E = size_t(c.n_embd);
    hidden_.resize(windows_.size());
    base_lp_.resize(windows_.size());
    for (size_t w = 0; w < windows_.size(); ++w) {
      const size_t n = windows_[w].size();
      hidden_[w].resize(L + 1);
      hidden_[w][0].resize(n * E);
      ctx_->embed(windows_[w], hidden_[w][0].data());
      for (size_t l = 0; l < L; ++l) {
        hidden_[w][l + 1] = hidden_[w][l];
        ctx_->eval_layer(int(l), hidden_[w][l + 1].data(), int(n), 0);
      }
      logits_.resize(n * size_t(c.n_vocab));
      ctx_->eval_head(hidden_[w][L].data(), int(n), logits_.data());
      base_lp_[w].resize(n * size_t(c.n_vocab));
      for (size_t t = 0; t < n; ++t) log_softmax(&logits_[t * c.n_vocab], &base_lp_[w][t * c.n_vocab]);
    }
  }

  // Mean KL(P_base || P_swapped) per token, in nats.
  double kl(const Slot& s, const Weight& swapped) {
    const ModelConfig& c = model_.config();
    const size_t E = size_t(c.n_embd), V = size_t(c.n_vocab);
    double sum = 0;
    int64_t count = 0;
    std::vector<float> x, lq(V);
    for (size_t w = 0; w < windows_.size(); ++w) {
      const int n = int(windows_[w].size());
      const float* final_x = nullptr;
      if (s.layer < 0 && !s.embedding && s.src->name != tensor_names::kTokEmbd) {
        ctx_->eval_head(hidden_[w][size_t(c.n_layers)].data(), n, logits_.data(), &swapped);  // the head
      } else {
        int first = 0;
        if (s.layer >= 0) {
          x = hidden_[w][size_t(s.layer)];
          LayerWeights lw = model_.layers()[size_t(s.layer)];
          Weight* slots[] = {&lw.wq, &lw.wk, &lw.wv, &lw.wo, &lw.gate, &lw.up, &lw.down};
          const char* names[] = {tensor_names::kAttnQ, tensor_names::kAttnK, tensor_names::kAttnV, tensor_names::kAttnO,
                                 tensor_names::kFfnGate, tensor_names::kFfnUp, tensor_names::kFfnDown};
          for (int i = 0; i < 7; ++i) {
            if (s.src->name == tensor_names::layer(s.layer, names[i])) *slots[i] = swapped;
          }
          ctx_->eval_layer(s.layer, x.data(), n, 0, &lw);
          first = s.layer + 1;
        } else {  // the embedding (tied: also the head)
          x.resize(size_t(n) * E);
          ctx_->embed(windows_[w], x.data(), &swapped);
        }
        for (int l = first; l < c.n_layers; ++l) ctx_->eval_layer(l, x.data(), n, 0);
        final_x = x.data();
        const bool tied_head = c.tied_embeddings && s.src->name == tensor_names::kTokEmbd;
        ctx_->eval_head(final_x, n, logits_.data(), tied_head ? &swapped : nullptr);
      }
      for (int t = 0; t < n; ++t) {
        log_softmax(&logits_[size_t(t) * V], lq.data());
        const float* lp = &base_lp_[w][size_t(t) * V];
        double d = 0;
        for (size_t v = 0; v < V; ++v) d += std::exp(double(lp[v])) * (double(lp[v]) - lq[v]);
        sum += std::max(d, 0.0);
        ++count;
      }
    }
    return sum / double(count);
  }

 private:
  void log_softmax(const float* l, float* out) const {
    const int V = model_.config().n_vocab;
    float mx = l[0];
    for (int v = 1; v < V; ++v) mx = std::max(mx, l[v]);
    double s = 0;
    for (int v = 0; v < V; ++v) s += std::exp(double(l[v]) - mx);
    const double lse = std::log(s) + mx;
    for (int v = 0; v < V; ++v) out[v] = static_cast<float>(double(l[v]) - lse);
  }

  const Model& model_;
  std::vector<std::vector<int>> windows_;
  std::unique_ptr<Context> ctx_;
  std::vector<std::vector<std::vector<float>>> hidden_;  // [window][layer 0..L][n × E]
  std::vector<std::vector<float>> base_lp_;             // [window][n × V]
  std::vector<float> logits_;
};

// The candidate whose bits per weight lie nearest `bpw`.
size_t nearest_candidate(const std::vector<QType>& cands, double bpw) {
  size_t best = 0;
  for (size_t i = 1; i < cands.size(); ++i) {
    if (std::abs(qtype_info(cands[i]).bits_per_weight - bpw) < std::abs(qtype_info(cands[best]).bits_per_weight - bpw)) best = i;
  }
  return best;
}

std::string fmt_bpw(double b) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.3f", b);
  return buf;
}

}  // namespace

struct AutoQuantizer::Impl {
  const ImportedModel& m;
  AutoQuantOptions o;
  int threads = 1;
  std::vector<QType> candidates;
  std::vector<Slot> slots;
  std::vector<TensorPlan> base;  // name, shape, fixed formats; errors and α after measure()
  double elems = 0;
  uint64_t fixed_bytes = 0;      // norm vectors
  uint64_t min_bytes = 0, max_bytes = 0, overhead = 0;
  bool all_fixed = false, measured = false;
  CalibStats stats;
  std::vector<std::vector<int>> windows;  // the calibration windows (sequential encoding reruns them)
  // Per distinct input (layer, MatmulInput): E[x xᵀ], and what the encoders prepare from it
  // once for all its tensors and candidates (GPTQ's factorization, the float H of output_error).
  struct Prepared {
    std::vector<double> h;
    std::shared_ptr<const GptqFactor> factor;
    std::shared_ptr<const OutputErrorH> error_h;
  };
  std::map<std::pair<int, int>, Prepared> prepared;
  double seconds_calibrate = 0, seconds_candidates = 0, seconds_kl = 0;
  double rank_correlation = NAN;
  size_t ref = 0;  // the reference candidate (nearest 3.5 bits per weight)

  // The predicted KL of tensor p at candidate j: the power law through the measured point(s).
  double predict(const TensorPlan& p, size_t j) const {
    const double e = p.error[j], er = p.error[ref];
    if (er <= 0 || e <= 0 || p.gamma == 1.0) return p.alpha * e;
    return p.measured_kl * std::pow(e / er, p.gamma);
  }

  Impl(const ImportedModel& model, const AutoQuantOptions& options) : m(model), o(options) {}

  void report(const char* stage, size_t done, size_t total) const {
    if (o.progress) o.progress(stage, done, total);
  }
  const Prepared* prepared_of(const Slot& s) {
    if (s.embedding || stats.layers.empty()) return nullptr;
    const auto key = std::make_pair(s.layer, int(s.in));
    auto it = prepared.find(key);
    if (it == prepared.end()) {
      const InputStats& in = s.layer < 0 ? stats.head : stats.layers[size_t(s.layer)].at(s.in);
      Prepared p;
      p.h = in.second_moment();
      EncodeOptions e = o.encode;
      e.threads = threads;
      if (e.method != EncodeMethod::kRtn) p.factor = gptq_factor(p.h.data(), in.k, e);
      p.error_h = prepare_output_error_h(p.h.data(), in.k);
      it = prepared.emplace(key, std::move(p)).first;
    }
    return &it->second;
  }
  std::vector<uint8_t> encode(const Slot& s, QType q, const std::vector<float>& w) {
    EncodeOptions e = o.encode;
    e.threads = threads;
    const Prepared* p = prepared_of(s);
    if (!p || !p->factor) {
      e.method = EncodeMethod::kRtn;
      return encode_tensor(q, w.data(), s.src->shape[0], s.src->shape[1], nullptr, e);
    }
    return encode_tensor(q, w.data(), s.src->shape[0], s.src->shape[1], *p->factor, e);
  }
  // The output error of an encoding: tr(ΔW H ΔWᵀ), or for the embedding Σ_r f_r ‖Δw_r‖².
  double error_of(const Slot& s, QType q, const std::vector<uint8_t>& bytes, const std::vector<float>& w) {
    const int64_t n = s.src->shape[0], k = s.src->shape[1];
    if (!s.embedding) {
      const Prepared* p = prepared_of(s);
      return p ? output_error(q, bytes.data(), w.data(), n, k, *p->error_h) : output_error(q, bytes.data(), w.data(), n, k, nullptr);
    }
    std::vector<double> rows;
    output_error(q, bytes.data(), w.data(), n, k, nullptr, &rows);
    double e = 0;
    for (int64_t r = 0; r < n; ++r) e += rows[size_t(r)] * double(stats.token_counts[size_t(r)]);
    return e / double(std::max<int64_t>(1, stats.n_tokens));
  }
  // GPTQ's sequential order: calibrates again, and encodes each layer (in its planned formats)
  // as soon as its inputs' statistics are complete; the layer's outputs are then recomputed
  // with the quantized weights, so the next layer sees the quantized model's activations. The
  // head follows the last layer. Returns the bytes of every layer tensor and the head.
  std::map<std::string, std::vector<uint8_t>> encode_sequentially(const AutoQuantResult& res,
                                                                 const std::map<std::string, size_t>& plan_of) {
    const ModelConfig& c = m.config;
    auto source = std::shared_ptr<const ImportedModel>(std::shared_ptr<const ImportedModel>{}, &m);
    std::shared_ptr<const Model> model = Model::from_imported(source);
    if (windows.empty()) {
      const int window = std::min(o.window, c.n_ctx);
      windows = !o.calib_text.empty() ? calibration_windows(*model, o.calib_text, o.calib_tokens, window)
                                      : self_generated_windows(*model, o.calib_tokens, window, 0x5eed, threads);
    }
    EncodeOptions e = o.encode;
    e.threads = threads;
    std::map<std::string, std::vector<uint8_t>> out;
    auto encode_with = [&](const Slot& s, const InputStats& in) {
      const size_t i = plan_of.at(s.src->name);
      const QType q = res.tensors[i].format;
      const std::vector<double> h = in.second_moment();
      const std::vector<float> w = read_tensor(*s.src);
      return encode_tensor(q, w.data(), s.src->shape[0], s.src->shape[1], h.data(), e);
    };
    LayerWeights lw;
    CalibParams cp;
    cp.threads = threads;
    cp.progress = [&](size_t d, size_t t) { report("encoding sequentially", d, t); };
    cp.quantize_layer = [&](int l, const LayerStats& ls) -> const LayerWeights* {
      lw = model->layers()[size_t(l)];
      Weight* dst[] = {&lw.wq, &lw.wk, &lw.wv, &lw.wo, &lw.gate, &lw.up, &lw.down};
      const char* names[] = {tensor_names::kAttnQ, tensor_names::kAttnK, tensor_names::kAttnV, tensor_names::kAttnO,
                             tensor_names::kFfnGate, tensor_names::kFfnUp, tensor_names::kFfnDown};
      for (int j = 0; j < 7; ++j) {
        const Slot& s = slots[plan_of.at(tensor_names::layer(l, names[j]))];
        std::vector<uint8_t>& b = out[s.src->name] = encode_with(s, ls.at(s.in));
        *dst[j] = make_weight(res.tensors[plan_of.at(s.src->name)].format, b.data(), s.src->shape[0], s.src->shape[1],
                              model->isa());
      }
      return &lw;
    };
    const CalibStats st = calibrate(*model, windows, cp);
    for (const Slot& s : slots) {
      if (s.layer < 0 && !s.embedding) out[s.src->name] = encode_with(s, st.head);  // the head (untied)
    }
    return out;
  }
};

AutoQuantizer::~AutoQuantizer() = default;

AutoQuantizer::AutoQuantizer(const ImportedModel& m, const AutoQuantOptions& o) : impl_(std::make_unique<Impl>(m, o)) {
  Impl& I = *impl_;
  I.threads = o.threads > 0 ? o.threads : omp_get_num_procs();
  I.candidates = o.candidates.empty() ? default_candidates() : o.candidates;
  for (QType q : I.candidates) {
    if (is_float_qtype(q)) throw Error(ErrorCode::kInvalidArgument, "candidate formats must be quantized formats, not " + std::string(qtype_info(q).name));
  }
  std::vector<std::string> names;
  for (const SourceTensor& t : m.tensors) {
    names.push_back(t.name);
    I.elems += double(t.shape[0]) * (t.shape.size() == 2 ? double(t.shape[1]) : 1.0);
    if (t.shape.size() == 1) {
      I.fixed_bytes += 4 * uint64_t(t.shape[0]);
      continue;
    }
    I.slots.push_back(slot_of(t, m.config));
  }
  if (o.recipe) check_recipe(*o.recipe, names, "--recipe");
  I.base.resize(I.slots.size());
  I.min_bytes = I.max_bytes = I.fixed_bytes;
  for (size_t i = 0; i < I.slots.size(); ++i) {
    TensorPlan& p = I.base[i];
    p.name = I.slots[i].src->name;
    p.n = I.slots[i].src->shape[0];
    p.k = I.slots[i].src->shape[1];
    const std::optional<QType> fixed = o.recipe ? recipe_format(*o.recipe, p.name) : std::nullopt;
    if (fixed) {
      p.fixed = true;
      p.format = *fixed;
      p.bytes = tensor_bytes(*fixed, p.n, p.k);
      I.min_bytes += p.bytes;
      I.max_bytes += p.bytes;
      continue;
    }
    uint64_t lo = UINT64_MAX, hi = 0;
    for (QType q : I.candidates) {
      lo = std::min(lo, tensor_bytes(q, p.n, p.k));
      hi = std::max(hi, tensor_bytes(q, p.n, p.k));
    }
    I.min_bytes += lo;
    I.max_bytes += hi;
  }
  I.all_fixed = std::all_of(I.base.begin(), I.base.end(), [](const TensorPlan& p) { return p.fixed; });
  // --size counts the whole file: the preamble, the tokenizer, the JSON header and the 64-byte
  // alignment of each tensor come off first. The header holds a directory entry per tensor and
  // a quantization record per 2-D tensor, plus the config and provenance: measured on
  // tinymix-26m's mixed files, 35.8 KB for 75 tensors (58 of them 2-D). The estimate below is
  // a little above that; auto_quantize rewrites with a smaller budget should a file still
  // come out over --size.
  I.overhead = 64 + m.tokenizer_proto.size() + m.provenance.dump().size() + 4096;
  for (const SourceTensor& t : m.tensors) I.overhead += 32 + (t.shape.size() == 2 ? 520 : 300);
}

double AutoQuantizer::min_bpw() const { return 8.0 * double(impl_->min_bytes) / impl_->elems; }
double AutoQuantizer::max_bpw() const { return 8.0 * double(impl_->max_bytes) / impl_->elems; }

void AutoQuantizer::check_budget(double bpw, uint64_t size_bytes) const {
  const Impl& I = *impl_;
  if (bpw < 0 || !std::isfinite(bpw)) throw Error(ErrorCode::kInvalidArgument, "--bpw must be a positive number");
  if (bpw > 0 && size_bytes > 0) throw Error(ErrorCode::kInvalidArgument, "give --bpw or --size, not both");
  if (I.all_fixed) return;
  if (bpw == 0 && size_bytes == 0) {
    throw Error(ErrorCode::kInvalidArgument, "give a budget (--bpw or --size) or a recipe that sets every tensor's format");
  }
  const uint64_t budget = bpw > 0 ? static_cast<uint64_t>(std::floor(bpw * I.elems / 8.0)) : (size_bytes > I.overhead ? size_bytes - I.overhead : 0);
  // Above the largest mix by less than half a percent (a rounded --bpw) takes the largest mix.
  if (budget < I.min_bytes || double(budget) > double(I.max_bytes) * 1.005) {
    const std::string range = "[" + fmt_bpw(min_bpw()) + ", " + fmt_bpw(max_bpw()) + "] bits per weight, [" +
                              std::to_string(I.min_bytes + I.overhead) + ", " + std::to_string(I.max_bytes + I.overhead) + "] bytes of file";
    const std::string asked = bpw > 0 ? "--bpw " + fmt_bpw(bpw) : "--size " + std::to_string(size_bytes);
    throw Error(ErrorCode::kInvalidArgument, asked + " is outside the range these candidate formats reach: " + range);
  }
}

void AutoQuantizer::measure() {
  Impl& I = *impl_;
  const AutoQuantOptions& o = I.o;
  const ModelConfig& c = I.m.config;
  if (I.measured) return;
  I.measured = true;
  auto source = std::shared_ptr<const ImportedModel>(std::shared_ptr<const ImportedModel>{}, &I.m);
  std::shared_ptr<const Model> model = Model::from_imported(source);
  const std::string fingerprint = model_fingerprint(I.m);
  const int window = std::min(o.window, c.n_ctx);
  auto t0 = Clock::now();
  // Calibrate when the allocation needs statistics or the fixed formats can use them (GPTQ).
  const bool calibrate_now = o.stats_in.empty() && (!I.all_fixed || !o.stats_out.empty() || !o.calib_text.empty());
  std::vector<std::vector<int>> windows;
  std::string calib_source;
  if (calibrate_now || !I.all_fixed) {  // the KL windows come from the same text
    if (!o.calib_text.empty()) {
      windows = calibration_windows(*model, o.calib_text, o.calib_tokens, window);
      calib_source = text_hash(o.calib_text);
    } else {
      windows = self_generated_windows(*model, o.calib_tokens, window, 0x5eed, I.threads);
      calib_source = "self-generated:seed=0x5eed";
    }
  }
  if (!o.stats_in.empty()) {
    I.stats = load_stats(o.stats_in, fingerprint);
    if (I.stats.layers.size() != size_t(c.n_layers) || I.stats.head.k != c.n_embd || I.stats.token_counts.size() != size_t(c.n_vocab)) {
      throw Error(ErrorCode::kInvalidArgument, "'" + o.stats_in + "' holds statistics of a model of another shape");
    }
  } else if (calibrate_now) {
    CalibParams cp;
    cp.threads = I.threads;
    cp.progress = [&](size_t d, size_t t) { I.report("calibrating", d, t); };
    I.stats = calibrate(*model, windows, cp);
    I.stats.source = calib_source;
    I.stats.model_fingerprint = fingerprint;
  }
  if (!o.stats_out.empty()) save_stats(I.stats, o.stats_out);
  I.windows = windows;
  I.seconds_calibrate = since(t0);
  if (I.all_fixed) return;

  // Every candidate of every tensor: its error, and the KL of the reference candidate.
  t0 = Clock::now();
  const size_t ref = nearest_candidate(I.candidates, 3.5), low = nearest_candidate(I.candidates, 2.5),
               check = nearest_candidate(I.candidates, o.rank_check_bpw);
  I.ref = ref;
  const bool two_point = o.kl_two_point && low != ref;
  std::vector<std::vector<int>> kl_windows;
  if (o.kl_self_generated) {
    kl_windows = self_generated_windows(*model, o.kl_tokens, window, 0x6b6c, I.threads);
  } else {
    for (int64_t used = 0; used < o.kl_tokens && kl_windows.size() < windows.size();) {
      kl_windows.push_back(windows[kl_windows.size()]);
      used += int64_t(kl_windows.back().size());
    }
  }
  std::vector<std::vector<uint8_t>> ref_bytes(I.slots.size()), low_bytes(I.slots.size()), check_bytes(I.slots.size());
  size_t done = 0;
  for (size_t i = 0; i < I.slots.size(); ++i) {
    TensorPlan& p = I.base[i];
    if (p.fixed) continue;
    const std::vector<float> w = read_tensor(*I.slots[i].src);
    p.error.resize(I.candidates.size());
    for (size_t j = 0; j < I.candidates.size(); ++j) {
      std::vector<uint8_t> bytes = I.encode(I.slots[i], I.candidates[j], w);
      p.error[j] = I.error_of(I.slots[i], I.candidates[j], bytes, w);
      if (j == check && o.rank_check) check_bytes[i] = bytes;
      if (j == ref) ref_bytes[i] = std::move(bytes);
      else if (j == low && two_point) low_bytes[i] = std::move(bytes);
    }
    I.report("encoding candidates", ++done, I.slots.size());
  }
  I.seconds_candidates = since(t0);

  t0 = Clock::now();
  KlProbe probe(*model, kl_windows, I.threads);
  std::vector<double> predicted_low, measured_low;
  done = 0;
  for (size_t i = 0; i < I.slots.size(); ++i) {
    TensorPlan& p = I.base[i];
    if (p.fixed) continue;
    const Weight wr = make_weight(I.candidates[ref], ref_bytes[i].data(), p.n, p.k, model->isa());
    p.measured_kl = probe.kl(I.slots[i], wr);
    p.alpha = p.error[ref] > 0 ? p.measured_kl / p.error[ref] : 0.0;
    if (two_point) {
      const Weight wl = make_weight(I.candidates[low], low_bytes[i].data(), p.n, p.k, model->isa());
      p.low_kl = probe.kl(I.slots[i], wl);
      const double er = p.error[ref], el = p.error[low];
      if (p.measured_kl > 0 && p.low_kl > 0 && er > 0 && el > 1.05 * er) {
        p.gamma = std::clamp(std::log(p.low_kl / p.measured_kl) / std::log(el / er), 0.8, 2.0);
      }
    }
    if (o.rank_check) {
      const Weight wl = make_weight(I.candidates[check], check_bytes[i].data(), p.n, p.k, model->isa());
      p.check_measured_kl = probe.kl(I.slots[i], wl);
      p.check_predicted_kl = I.predict(p, check);
      measured_low.push_back(p.check_measured_kl);
      predicted_low.push_back(p.check_predicted_kl);
    }
    I.report("measuring KL", ++done, I.slots.size());
  }
  if (o.rank_check) I.rank_correlation = spearman(predicted_low, measured_low);
  I.seconds_kl = since(t0);
}

AutoQuantResult AutoQuantizer::plan(double bpw, uint64_t size_bytes) const {
  const Impl& I = *impl_;
  check_budget(bpw, size_bytes);
  if (!I.measured) throw Error(ErrorCode::kInvalidArgument, "AutoQuantizer::plan before measure()");
  AutoQuantResult res;
  res.candidates = I.candidates;
  res.tensors = I.base;
  res.calib_source = I.stats.source;
  res.calib_tokens = I.stats.n_tokens;
  res.rank_correlation = I.rank_correlation;
  res.seconds_calibrate = I.seconds_calibrate;
  res.seconds_candidates = I.seconds_candidates;
  res.seconds_kl = I.seconds_kl;
  if (!I.all_fixed) {
    const uint64_t budget = bpw > 0 ? static_cast<uint64_t>(std::floor(bpw * I.elems / 8.0)) : size_bytes - I.overhead;
    // Allocation over the tensors the recipe leaves free.
    std::vector<AllocItem> items;
    std::vector<size_t> item_of;
    uint64_t free_budget = std::min(budget, I.max_bytes) - I.fixed_bytes;
    for (size_t i = 0; i < res.tensors.size(); ++i) {
      const TensorPlan& p = res.tensors[i];
      if (p.fixed) {
        free_budget -= p.bytes;
        continue;
      }
      AllocItem it;
      it.name = p.name;
      for (size_t j = 0; j < I.candidates.size(); ++j) it.choices.push_back({tensor_bytes(I.candidates[j], p.n, p.k), I.predict(p, j)});
      items.push_back(std::move(it));
      item_of.push_back(i);
    }
    const Allocation a = allocate(items, free_budget);
    for (size_t j = 0; j < items.size(); ++j) {
      TensorPlan& p = res.tensors[item_of[j]];
      const int ch = a.choice[j];
      p.format = I.candidates[size_t(ch)];
      p.bytes = items[j].choices[size_t(ch)].bytes;
      p.predicted_kl = items[j].choices[size_t(ch)].loss;
    }
  }
  res.tensor_bytes = I.fixed_bytes;
  for (const TensorPlan& p : res.tensors) {
    res.tensor_bytes += p.bytes;
    res.predicted_kl += p.predicted_kl;
  }
  res.bpw = 8.0 * double(res.tensor_bytes) / I.elems;
  return res;
}

void AutoQuantizer::write(const AutoQuantResult& res, const std::string& out_path) {
  Impl& I = *impl_;
  const AutoQuantOptions& o = I.o;
  std::map<std::string, size_t> plan_of;
  for (size_t i = 0; i < res.tensors.size(); ++i) plan_of[res.tensors[i].name] = i;
  const EncodeMethod method = I.stats.layers.empty() ? EncodeMethod::kRtn : o.encode.method;
  nlohmann::json record = {{"method", "mixed"},
                           {"encoder", encode_method_name(method)},
                           {"bits_per_weight", res.bpw},
                           {"predicted_kl", res.predicted_kl},
                           {"calibration", {{"source", res.calib_source}, {"tokens", res.calib_tokens}}}};
  if (o.bpw > 0) record["budget_bpw"] = o.bpw;
  if (o.size_bytes > 0) record["budget_bytes"] = o.size_bytes;
  nlohmann::json tensors = nlohmann::json::object();
  for (const TensorPlan& p : res.tensors) {
    tensors[p.name] = {{"format", qtype_info(p.format).name},
                       {"bits_per_weight", 8.0 * double(p.bytes) / (double(p.n) * double(p.k))},
                       {"method", I.slots[plan_of[p.name]].embedding ? "rtn" : encode_method_name(method)},
                       {"chosen_by", p.fixed ? "recipe" : "allocation"},
                       {"predicted_kl", p.predicted_kl},
                       {"alpha", p.alpha},
                       {"gamma", p.gamma}};
  }
  record["tensors"] = tensors;
  // Sequential: every layer's tensors and the head encoded with the statistics of the model
  // whose earlier layers are quantized (kept until written).
  std::map<std::string, std::vector<uint8_t>> sequential;
  if (o.sequential && method != EncodeMethod::kRtn) {
    record["sequential"] = true;
    sequential = I.encode_sequentially(res, plan_of);
  }
  size_t written = 0;
  const TensorEncoder enc = [&](const SourceTensor& t, QType q, uint8_t* dst, size_t bytes) {
    auto it = sequential.find(t.name);
    std::vector<uint8_t> b;
    if (it != sequential.end()) {
      b = std::move(it->second);
      sequential.erase(it);
    } else {
      b = I.encode(I.slots[plan_of.at(t.name)], q, read_tensor(t));
    }
    MXLM_ASSERT(b.size() == bytes);
    std::memcpy(dst, b.data(), bytes);
    I.report("writing", ++written, I.slots.size());
  };
  write_model(
      I.m, out_path, [&](const SourceTensor& t) { return res.tensors[plan_of.at(t.name)].format; }, record, enc);
}

AutoQuantResult auto_quantize(const ImportedModel& m, const std::string& out_path, const AutoQuantOptions& o) {
  AutoQuantizer q(m, o);
  q.check_budget(o.bpw, o.size_bytes);
  q.measure();
  AutoQuantResult r = q.plan(o.bpw, o.size_bytes);
  if (o.dry_run) return r;
  const auto t0 = Clock::now();
  q.write(r, out_path);
  // --size counts the whole file, whose header the plan could only estimate: should the file
  // come out larger, plan again with the overshoot taken off the budget and rewrite (the
  // estimate is conservative, so this is a safety net, not the normal path).
  for (int attempt = 0; o.size_bytes > 0 && attempt < 3; ++attempt) {
    const uint64_t actual = MxlmFile(out_path).file_bytes();
    if (actual <= o.size_bytes) break;
    const uint64_t over = actual - o.size_bytes + 1024 * uint64_t(attempt + 1);
    if (over >= o.size_bytes) break;
    r = q.plan(0, o.size_bytes - over);
    q.write(r, out_path);
  }
  r.seconds_write = since(t0);
  return r;
}

}  // namespace mxlm
