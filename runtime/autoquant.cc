// The mixed-precision pipeline of autoquant.h: tensors and budget (AutoQuantizer), calibration
// and per-candidate errors and KL (measure), knapsack (plan), the measured selection among the
// plan and its variants (choose), encoding and the record (write).
//
// Measured on tinymix-26m (58 tensors, the 11 default candidates, 2 threads on the 2-core build
// machine, benchmarks/quantize_bench.cc with the f32 GEMM at 94 % of its peak and a read
// bandwidth of 35.1 GB/s in the same run): calibration of 16384 tokens ~10 s, encoding every
// candidate with GPTQ and 4 refine passes plus its output error 18.7 s (one factorization per
// distinct input, shared by its tensors and candidates), KL 20.6 s (the q8 base, 1024 tokens the
// model samples for the selection, the 2 × 58 per-tensor runs of 1024 tokens), selection 0.6 s
// (the candidates' encodings kept), writing 0.02 s: 49.5 s in all. The two-point fit
// (candidates nearest 3.5 and 2.5 bits) predicts each tensor's KL at the ~4.5-bit candidate
// with Spearman ρ = 0.983 over the tensors. The README has the perplexities and what the KL
// objective does and does not transfer to held-out text.
//
// Memory: each tensor's candidates are encoded, scored and (at the fit points) KL-measured one
// tensor at a time (their encodings kept only when all fit keep_encodings_bytes), and each layer
// input's factorization is dropped once its layer is done. Statistics above the keep limit (1 GiB
// by default) are streamed (measure() runs on each layer's as calibrate()
// completes it; write() calibrates again and encodes layer by layer): a 4-layer TinyLlama-1.1B
// shape peaked at 2.3 GB RSS streamed, where holding the 22-layer model's statistics and
// factorizations would take ~23 GB (the statistics alone 7.7 GB).
//
// Time: large models (statistics over large_stats_bytes) score each tensor's candidates on 256
// of its rows and run KL on 4 layers; on the 4-layer TinyLlama shape (AVX2 host) the sampled
// candidates took 197 s against 445 s whole, and writing (the asymmetric pass over 16384 tokens,
// ~100 s per layer there) is now the larger part (README). The 22-layer shape on a Zen 5 host,
// with malloc on huge pages (tools/commands.h): 23.8 min, writing 836 s of it (~38 s a layer);
// with the calibration passes in bf16 (calib_precision, auto for large models on AVX-512):
// 18.4 min, writing 618 s. With the k × k passes over H on every thread (model/encode.cc) and a
// layer's statistics reused by the next (calibrate.cc), on a day the old build took 20.5 min:
// 18.8 min, writing 628 s. With freed blocks kept by malloc and each layer's widest input
// factorized beside the other tensors' work: 17.8 min, writing 572 s; without the unused
// selection probe of streamed statistics, on a faster day: 15.5 min (README).
#include "mxlm/autoquant.h"

#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <future>
#include <map>
#include <numeric>

#include "base/error.h"
#include "kernels/isa.h"
#include "model/allocate.h"
#include "model/outliers.h"
#include "runtime/kl_probe.h"
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

// Outliers of a level (a fraction of the n·k weights, at least one), and the stored bytes of a
// tensor in format t with m outliers (the part is 4-byte aligned after the dense rows).
int64_t outlier_count(double level, int64_t n, int64_t k) { return std::max<int64_t>(1, std::llround(level * double(n) * double(k))); }
int64_t max_outlier_count(int64_t n, int64_t k) { return outlier_count(std::end(kOutlierLevels)[-1], n, k); }
uint64_t bytes_with_outliers(QType t, int64_t n, int64_t k, int64_t m) {
  return m > 0 ? (tensor_bytes(t, n, k) + 3) / 4 * 4 + outlier_bytes(n, m) : tensor_bytes(t, n, k);
}

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

// keep_stats_bytes, 0 resolved to 40 % of the physical memory (this 23 GiB machine: 9.2 GiB,
// which holds TinyLlama-1.1B's statistics).
uint64_t keep_stats_limit(uint64_t keep) {
  if (keep > 0) return keep;
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? uint64_t(pages) * uint64_t(page) / 5 * 2 : uint64_t(1) << 30;
}

// Bytes of a model's calibration statistics (the Gram matrices in double): tinymix-26m 67 MB,
// TinyLlama-1.1B 7.7 GB, Llama-7B 44 GB. Above the keep limit the quantizer streams them
// (measure() takes each layer's as it completes and drops it; write() calibrates again).
uint64_t stats_bytes(const ModelConfig& c) {
  const uint64_t e = uint64_t(c.n_embd), q = uint64_t(c.n_heads) * uint64_t(c.head_dim), f = uint64_t(c.n_ff);
  return 8 * (uint64_t(c.n_layers) * (2 * e * e + q * q + f * f) + e * e);
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
  std::string written_source;             // encode_streaming's calibration: its text and tokens
  int64_t written_tokens = 0;
  // Per distinct input (layer, MatmulInput): E[x xᵀ], and what the encoders prepare from it
  // once for all its tensors and candidates (GPTQ's factorization, the float H of output_error).
  struct Prepared {
    std::vector<double> h;
    std::shared_ptr<const GptqFactor> factor;
    std::shared_ptr<const OutputErrorH> error_h;
  };
  std::map<std::pair<int, int>, Prepared> prepared;
  void drop_prepared(int layer) {
    for (auto it = prepared.begin(); it != prepared.end();) it = it->first.first == layer ? prepared.erase(it) : std::next(it);
  }
  // Streaming (measure): the statistics of the layer being measured, handed out by calibrate()
  // and dropped after it; `streamed` then tells write() to calibrate again.
  bool streamed = false;
  const LayerStats* live = nullptr;
  int live_layer = -1;
  double seconds_calibrate = 0, seconds_candidates = 0, seconds_kl = 0;
  double rank_correlation = NAN;
  // Measured selection (choose): the KL probe and its model, kept from measure(), and the
  // encodings of the plans last measured, by (tensor, format), which write() reuses.
  std::shared_ptr<const Model> probe_model;
  std::unique_ptr<KlProbe> probe, select_probe;
  ProbeBase probe_base;  // kl_base_q8: the per-tensor probe's other tensors
  std::map<std::pair<std::string, int>, std::vector<uint8_t>> encoded;
  // Every candidate's encoding kept from measure() (when they fit keep_encodings_bytes): the
  // selection and writing then encode nothing but row splits, and `encoded` outlives write().
  bool keep_candidates = false;
  bool large = false;       // the statistics exceed large_stats_bytes: the "auto" settings for large models
  bool calib_bf16 = false;  // calib_precision resolved
  int64_t sample_rows = 0;  // candidate_rows resolved with the other "auto" settings (0: every row)
  std::string select_source;  // the text of select_probe's windows
  // The row-split tensors of the plan choose() picked: their plan (formats and rows) and stored
  // bytes, used by write() for a tensor planned exactly alike.
  std::map<std::string, std::pair<TensorPlan, std::vector<uint8_t>>> split_encoded;
  size_t ref = 0;  // the reference candidate (nearest 3.5 bits per weight)

  // The rows a tensor's candidates are scored on (candidate_rows): every (n / count)-th row, or
  // none (empty: all rows) when no sample is asked for, it would not be smaller, the
  // tensor is the embedding (its rows weigh by token frequency), or row splits or outliers need
  // every row's error.
  std::vector<int64_t> sampled_rows(const Slot& s) const {
    const int64_t n = s.src->shape[0], c = sample_rows;
    if (c <= 0 || n <= c || s.embedding || o.row_splits || o.outliers) return {};
    std::vector<int64_t> rows(static_cast<size_t>(c));
    for (int64_t i = 0; i < c; ++i) rows[size_t(i)] = (2 * i + 1) * n / (2 * c);
    return rows;
  }
  // Per tensor and candidate, each output row's error (its part of e), for row splits.
  std::vector<std::vector<std::vector<float>>> row_error;

  // kl_layers: each unmeasured layer tensor takes log α, γ and γ_high interpolated linearly in
  // depth between the nearest measured layers' tensors of the same kind (one side: copied).
  void interpolate_kl() {
    auto kind = [](const std::string& name) { return name.substr(name.find('.', 4) + 1); };  // "blk.<l>.<kind>"
    for (size_t i = 0; i < base.size(); ++i) {
      TensorPlan& p = base[i];
      if (!p.kl_interpolated) continue;
      const int l = slots[i].layer;
      const TensorPlan *a = nullptr, *b = nullptr;
      int la = -1, lb = -1;
      for (size_t j = 0; j < base.size(); ++j) {
        const TensorPlan& q = base[j];
        const int lq = slots[j].layer;
        if (j == i || q.kl_interpolated || q.fixed || lq < 0 || slots[j].embedding || kind(q.name) != kind(p.name)) continue;
        if (lq < l && lq > la) la = lq, a = &q;
        if (lq > l && (lb < 0 || lq < lb)) lb = lq, b = &q;
      }
      if (!a && !b) throw Error(ErrorCode::kInvalidArgument, "kl_layers: no measured layer holds a tensor like '" + p.name + "'");
      if (!a) a = b, la = lb;
      if (!b) b = a, lb = la;
      const double t = lb == la ? 0.0 : double(l - la) / double(lb - la);
      const double floor = 1e-30;
      p.alpha = std::exp((1 - t) * std::log(std::max(a->alpha, floor)) + t * std::log(std::max(b->alpha, floor)));
      p.gamma = (1 - t) * a->gamma + t * b->gamma;
      p.gamma_high = (1 - t) * a->gamma_high + t * b->gamma_high;
      p.measured_kl = p.alpha * p.error[ref];
    }
  }

  // The predicted KL of tensor p at output error e: the power law through the measured points.
  double predict_error(const TensorPlan& p, double e) const {
    const double er = p.error[ref];
    const double g = e < er ? p.gamma_high : p.gamma;
    if (er <= 0 || e <= 0 || g == 1.0) return p.alpha * e;
    return p.measured_kl * std::pow(e / er, g);
  }
  double predict(const TensorPlan& p, size_t j) const { return predict_error(p, p.error[j]); }

  // Row splits of tensor i: rows ranked by how much their error falls from candidate lo to hi
  // (a higher-bit candidate, one of the two next above lo in bits per weight), the first m of
  // them in hi. The error of a split is the sum of its rows' errors, its predicted KL the
  // tensor's curve at that error; the row map costs 4 bytes per row.
  struct Split {
    size_t lo = 0, hi = 0;
    int64_t m = 0;  // rows in hi
    uint64_t bytes = 0;
    double loss = 0;
  };
  std::vector<size_t> split_order(size_t i, size_t lo, size_t hi) const {
    const std::vector<float>&a = row_error[i][lo], &b = row_error[i][hi];
    std::vector<size_t> order(a.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](size_t x, size_t y) { return a[x] - b[x] > a[y] - b[y]; });
    return order;
  }
  std::vector<Split> row_splits(size_t i) const {
    std::vector<Split> out;
    const TensorPlan& p = base[i];
    if (row_error.size() <= i || row_error[i].size() != candidates.size() || p.n < 64) return out;
    std::vector<size_t> by_bits(candidates.size());
    std::iota(by_bits.begin(), by_bits.end(), 0);
    std::sort(by_bits.begin(), by_bits.end(),
              [&](size_t x, size_t y) { return tensor_bytes(candidates[x], p.n, p.k) < tensor_bytes(candidates[y], p.n, p.k); });
    for (size_t a = 0; a < by_bits.size(); ++a) {
      for (size_t b = a + 1; b < by_bits.size() && b <= a + 2; ++b) {
        const size_t lo = by_bits[a], hi = by_bits[b];
        const uint64_t rb_lo = tensor_bytes(candidates[lo], 1, p.k), rb_hi = tensor_bytes(candidates[hi], 1, p.k);
        if (rb_hi <= rb_lo) continue;
        const std::vector<size_t> order = split_order(i, lo, hi);
        double e_lo = 0;
        for (float v : row_error[i][lo]) e_lo += v;
        for (int eighths : {1, 2, 4, 6}) {
          const int64_t m = (p.n * eighths / 8) / 32 * 32;
          if (m <= 0 || m >= p.n) continue;
          double e = e_lo;
          for (int64_t r = 0; r < m; ++r) e -= double(row_error[i][lo][order[size_t(r)]]) - double(row_error[i][hi][order[size_t(r)]]);
          Split sp;
          sp.lo = lo;
          sp.hi = hi;
          sp.m = m;
          const uint64_t dense = rb_lo * uint64_t(p.n - m) + rb_hi * uint64_t(m);
          sp.bytes = (dense + 3) / 4 * 4 + 4 * uint64_t(p.n);  // the row map is 4-byte aligned
          sp.loss = predict_error(p, std::max(e, 0.0));
          out.push_back(sp);
        }
      }
    }
    return out;
  }
  // The stored layout of a planned tensor: one format, or its rows outside split_rows in
  // `format` then split_rows in `split_format`, behind a row map.
  static TensorLayout layout_of(const TensorPlan& p) {
    TensorLayout l;
    l.qtype = p.format;
    if (p.split_rows.empty()) return l;
    const int64_t m = int64_t(p.split_rows.size());
    l.segment_qtypes = {p.format, p.split_format};
    l.segment_rows = {p.n - m, m};
    std::vector<char> hi(size_t(p.n), 0);
    for (int32_t r : p.split_rows) hi[size_t(r)] = 1;
    for (int64_t r = 0; r < p.n; ++r)
      if (!hi[size_t(r)]) l.row_map.push_back(int32_t(r));
    l.row_map.insert(l.row_map.end(), p.split_rows.begin(), p.split_rows.end());
    return l;
  }
  // The runtime weight of a planned tensor's stored bytes (layout_of's layout): one format, or
  // one segment per format over the stored rows and the row map (kept in `row_map`, which must
  // outlive the weight).
  static Weight weight_of(const TensorPlan& p, const uint8_t* b, std::vector<int32_t>& row_map, Isa isa,
                          const SparseOutliers* outliers = nullptr) {
    const TensorLayout lay = layout_of(p);
    if (lay.segment_qtypes.empty()) {
      Weight w = make_weight(p.format, b, p.n, p.k, isa);
      if (outliers && outliers->nnz() > 0) {  // the CSR arrays (outliers must outlive the weight)
        w.outliers.nnz = uint64_t(outliers->nnz());
        w.outliers.row_ptr = reinterpret_cast<const uint8_t*>(outliers->row_ptr.data());
        w.outliers.cols = reinterpret_cast<const uint8_t*>(outliers->cols.data());
        w.outliers.values = reinterpret_cast<const uint8_t*>(outliers->values.data());
      }
      return w;
    }
    MXLM_ASSERT(!outliers || outliers->nnz() == 0);  // the allocation offers outliers on one format only
    const int64_t n_lo = lay.segment_rows[0];
    Weight wl = make_weight(p.format, b, n_lo, p.k, isa);
    Weight wh = make_weight(p.split_format, b + size_t(n_lo) * tensor_bytes(p.format, 1, p.k), p.n - n_lo, p.k, isa);
    for (WeightSegment& sg : wh.segments) {
      sg.row_begin += n_lo;
      sg.row_end += n_lo;
      wl.segments.push_back(sg);
    }
    wl.n = p.n;
    row_map = lay.row_map;
    wl.row_map = reinterpret_cast<const uint8_t*>(row_map.data());
    return wl;
  }
  // Encodes a planned tensor into its stored layout: a split tensor is encoded whole in both
  // formats (every encoder treats rows independently given H), and each stored row copied from
  // the encoding of its format.
  std::vector<uint8_t> encode_planned(const TensorPlan& p, const std::function<std::vector<uint8_t>(QType)>& enc) {
    if (p.split_rows.empty()) return enc(p.format);
    const TensorLayout l = layout_of(p);
    const std::vector<uint8_t> lo = enc(p.format), hi = enc(p.split_format);
    const size_t rb_lo = tensor_bytes(p.format, 1, p.k), rb_hi = tensor_bytes(p.split_format, 1, p.k);
    const int64_t n_lo = l.segment_rows[0];
    std::vector<uint8_t> out(rb_lo * size_t(n_lo) + rb_hi * size_t(p.n - n_lo));
    for (int64_t i = 0; i < p.n; ++i) {
      const size_t r = size_t(l.row_map[size_t(i)]);
      if (i < n_lo) std::memcpy(out.data() + size_t(i) * rb_lo, lo.data() + r * rb_lo, rb_lo);
      else std::memcpy(out.data() + size_t(n_lo) * rb_lo + size_t(i - n_lo) * rb_hi, hi.data() + r * rb_hi, rb_hi);
    }
    return out;
  }
  std::vector<int32_t> split_rows(size_t i, const Split& sp) const {
    const std::vector<size_t> order = split_order(i, sp.lo, sp.hi);
    std::vector<int32_t> rows(order.begin(), order.begin() + sp.m);
    std::sort(rows.begin(), rows.end());
    return rows;
  }

  Impl(const ImportedModel& model, const AutoQuantOptions& options) : m(model), o(options) {}

  void report(const char* stage, size_t done, size_t total) const {
    if (o.progress) o.progress(stage, done, total);
  }
  const Prepared* prepared_of(const Slot& s) {
    if (s.embedding || (stats.layers.empty() && !live)) return nullptr;
    const auto key = std::make_pair(s.layer, int(s.in));
    auto it = prepared.find(key);
    if (it == prepared.end()) {
      const InputStats& in = s.layer < 0                                  ? stats.head
                             : live && s.layer == live_layer              ? live->at(s.in)
                                                                          : stats.layers[size_t(s.layer)].at(s.in);
      MXLM_ASSERT(in.k == s.src->shape[1]);
      it = prepared.emplace(key, key == pending_key && pending.valid() ? pending.get() : make_prepared(in, threads)).first;
    }
    return &it->second;
  }
  Prepared make_prepared(const InputStats& in, int nt) const {
    Prepared p;
    p.h = in.second_moment();
    EncodeOptions e = o.encode;
    e.threads = nt;
    if (e.method != EncodeMethod::kRtn) p.factor = gptq_factor(p.h.data(), in.k, e);
    p.error_h = prepare_output_error_h(p.h.data(), in.k);
    return p;
  }
  // The input of a layer whose preparation runs on a thread of its own while the layer's other
  // tensors are measured (measure) or encoded (encode_streaming): ffn_down's, when it is the
  // widest and there are threads to spare; else -1. Its LAPACK factorizations run on one thread
  // (so that the bytes do not depend on the thread count; its copies then run on one thread
  // too), and waited for, they left the second core idle for ~2 s a layer of TinyLlama-1.1B
  // (README).
  int wide_input(const LayerStats& ls) const {
    const int64_t k = ls.at(MatmulInput::kFfnMid).k;
    const bool widest = k > ls.at(MatmulInput::kAttnIn).k && k > ls.at(MatmulInput::kAttnOut).k;
    return threads > 1 && widest ? int(MatmulInput::kFfnMid) : -1;
  }
  // Waits for (and drops) a wide input's preparation when its layer is left, also by an error:
  // its thread reads that layer's statistics.
  template <class T>
  struct Joined {
    std::future<T>& f;
    ~Joined() {
      if (f.valid()) f.wait();
      f = {};
    }
  };
  // measure's wide input, (layer, input) = pending_key; prepared_of takes it.
  std::future<Prepared> pending;
  std::pair<int, int> pending_key{-2, -1};
  // The measured encodings (candidates, the selection's plans; written only with plain
  // targets). Sequential targets encode the written ones again, refined: these skip the
  // refinement (its ~20 % lower error is about the same for every candidate). `w` holds the
  // tensor's rows or a sample of them (candidate_rows): rows encode independently.
  std::vector<uint8_t> encode(const Slot& s, QType q, const std::vector<float>& w) {
    EncodeOptions e = o.encode;
    e.threads = threads;
    if (o.sequential) e.refine = 0;
    const int64_t k = s.src->shape[1], n = int64_t(w.size()) / k;
    const Prepared* p = prepared_of(s);
    if (!p || !p->factor) {
      e.method = EncodeMethod::kRtn;
      return encode_tensor(q, w.data(), n, k, nullptr, e);
    }
    return encode_tensor(q, w.data(), n, k, *p->factor, e);
  }
  // The outliers of a tensor's encoding `bytes` in format q (not the embedding: it has no H):
  // the first m of model/outliers.h's greedy picks against the input's H.
  OutlierPicks outlier_picks(const Slot& s, QType q, const std::vector<uint8_t>& bytes, const std::vector<float>& w, int64_t m) {
    const Prepared* p = prepared_of(s);
    MXLM_ASSERT(p && !s.embedding);
    return pick_outliers(q, bytes.data(), w.data(), s.src->shape[0], s.src->shape[1], *p->error_h, m, 0, threads);
  }
  // The outliers of the tensors written (or of the plan choose() picked), by name, with the format
  // of the encoding they were picked on and the count asked for (the picks may fall short of it
  // when fewer weights lower the error: the file then stores fewer than the plan counted).
  struct KeptOutliers {
    QType format = QType::kF32;
    int64_t requested = 0;
    SparseOutliers o;
  };
  std::map<std::string, KeptOutliers> written_outliers;
  // choose() with sequential targets measures each plan encoded as write() would encode it; the
  // chosen plan's encodings (layer tensors and head) and outliers are kept for write().
  struct WrittenPlan {
    AutoQuantResult plan;
    std::map<std::string, std::vector<uint8_t>> bytes;
    std::map<std::string, KeptOutliers> outliers;
  };
  std::optional<WrittenPlan> written_plan;
  const SparseOutliers* kept_outliers(const TensorPlan& p) const {
    auto it = written_outliers.find(p.name);
    return it != written_outliers.end() && it->second.format == p.format && it->second.requested == p.outliers ? &it->second.o : nullptr;
  }
  // The output error of an encoding: tr(ΔW H ΔWᵀ), or for the embedding Σ_r f_r ‖Δw_r‖²
  // (f_r: token r's frequency); `rows` (if set) receives each output row's part. `w` may be a
  // sample of the rows (not for the embedding): the error is then the sample's.
  double error_of(const Slot& s, QType q, const std::vector<uint8_t>& bytes, const std::vector<float>& w,
                  std::vector<float>* rows = nullptr) {
    const int64_t k = s.src->shape[1], n = int64_t(w.size()) / k;
    std::vector<double> r;
    if (!s.embedding) {
      const Prepared* p = prepared_of(s);
      const double e = p ? output_error(q, bytes.data(), w.data(), n, k, *p->error_h, rows ? &r : nullptr)
                         : output_error(q, bytes.data(), w.data(), n, k, nullptr, rows ? &r : nullptr);
      if (rows) rows->assign(r.begin(), r.end());
      return e;
    }
    MXLM_ASSERT(n == s.src->shape[0]);
    output_error(q, bytes.data(), w.data(), n, k, nullptr, &r);
    const double scale = 1.0 / double(std::max<int64_t>(1, stats.n_tokens));
    double e = 0;
    for (int64_t i = 0; i < n; ++i) {
      r[size_t(i)] *= double(stats.token_counts[size_t(i)]) * scale;
      e += r[size_t(i)];
    }
    if (rows) rows->assign(r.begin(), r.end());
    return e;
  }
  // Encoding with statistics taken again, layer by layer (one layer's Gram matrices held at a
  // time): calibrates, and encodes each layer (in its planned formats) as soon as its inputs'
  // statistics are complete, one factorization per input. Sequential (GPTQ's order): the
  // layer's outputs are then recomputed with the quantized weights, so the next layer sees the
  // quantized model's activations; otherwise the statistics are the unquantized model's, as in
  // measure() (the streamed path of large models). The head follows the last layer. Returns the
  // bytes of every layer tensor and the head.
  std::map<std::string, std::vector<uint8_t>> encode_streaming(const AutoQuantResult& res,
                                                              const std::map<std::string, size_t>& plan_of, bool sequential) {
    const ModelConfig& c = m.config;
    auto source = std::shared_ptr<const ImportedModel>(std::shared_ptr<const ImportedModel>{}, &m);
    std::shared_ptr<const Model> model = Model::from_imported(source);
    if (windows.empty()) {
      const int window = std::min(o.window, c.n_ctx);
      windows = !o.calib_text.empty() ? calibration_windows(*model, o.calib_text, o.calib_tokens, window)
                                      : self_generated_windows(*model, o.calib_tokens, window, 0x5eed, threads);
    }
    written_source = !o.calib_text.empty() ? text_hash(o.calib_text) : "self-generated:seed=0x5eed";
    written_tokens = 0;
    for (const auto& w : windows) written_tokens += int64_t(w.size());
    EncodeOptions e = o.encode;
    e.threads = threads;
    std::map<std::string, std::vector<uint8_t>> out;
    written_outliers.clear();
    std::map<int, std::shared_ptr<const GptqFactor>> factors;  // the current layer's, by input
    std::map<int, std::shared_ptr<const AsymmetricInput>> asym;  // the current layer's, by input (null: C = 0)
    std::map<int, std::shared_ptr<const OutputErrorH>> error_h;   // the current layer's, by input (outliers)
    // An input's factor and (asymmetric) target, prepared from one copy of H.
    struct Ready {
      std::shared_ptr<const GptqFactor> f;
      std::shared_ptr<const AsymmetricInput> a;
    };
    auto prepare = [](const InputStats& in, const EncodeOptions& eo) {
      const std::vector<double> h = in.second_moment();
      Ready r{gptq_factor(h.data(), in.k, eo), nullptr};
      if (!in.cross.empty()) r.a = prepare_asymmetric(h.data(), in.mean_cross().data(), in.k, eo.damp);
      return r;
    };
    std::future<Ready> wide;  // the layer's wide input (wide_input), prepared on its own thread
    int wide_in = -1;
    auto encode_with = [&](const Slot& s, const InputStats& in) {
      const size_t i = plan_of.at(s.src->name);
      std::vector<float> w = read_tensor(*s.src);
      std::shared_ptr<const GptqFactor>& f = factors[int(s.in)];
      if (!f) {
        Ready r = int(s.in) == wide_in ? wide.get() : prepare(in, e);
        f = std::move(r.f);
        asym[int(s.in)] = std::move(r.a);
      }
      if (!in.cross.empty()) {  // asymmetric: the target that also cancels the upstream error
        if (const auto& a = asym.at(int(s.in))) w = asymmetric_target(w.data(), s.src->shape[0], s.src->shape[1], *a);
      }
      const TensorPlan& p = res.tensors[i];
      std::vector<uint8_t> b = encode_planned(p, [&](QType q) {
        return encode_tensor(q, w.data(), s.src->shape[0], s.src->shape[1], *f, e);
      });
      if (p.outliers > 0) {  // picked on this encoding, towards its target, under these statistics
        std::shared_ptr<const OutputErrorH>& eh = error_h[int(s.in)];
        if (!eh) eh = prepare_output_error_h(in.second_moment().data(), in.k);
        written_outliers[p.name] = {p.format, p.outliers,
                                    pick_outliers(p.format, b.data(), w.data(), p.n, p.k, *eh, p.outliers, 0, threads).first(p.outliers)};
      }
      return b;
    };
    LayerWeights lw;
    std::vector<std::vector<int32_t>> row_maps(7);
    CalibParams cp;
    cp.threads = threads;
    cp.bf16 = calib_bf16;
    cp.progress = [&](size_t d, size_t t) { report(sequential ? "encoding sequentially" : "encoding", d, t); };
    cp.asymmetric = sequential && o.asymmetric;
    auto encode_layer = [&](int l, const LayerStats& ls) -> const LayerWeights* {
      factors.clear();
      asym.clear();
      error_h.clear();
      wide_in = wide_input(ls);
      if (wide_in >= 0) {
        EncodeOptions one = e;
        one.threads = 1;
        wide = std::async(std::launch::async, prepare, std::cref(ls.at(MatmulInput(wide_in))), one);
      }
      const Joined<Ready> join{wide};
      lw = model->layers()[size_t(l)];
      Weight* dst[] = {&lw.wq, &lw.wk, &lw.wv, &lw.wo, &lw.gate, &lw.up, &lw.down};
      const char* names[] = {tensor_names::kAttnQ, tensor_names::kAttnK, tensor_names::kAttnV, tensor_names::kAttnO,
                             tensor_names::kFfnGate, tensor_names::kFfnUp, tensor_names::kFfnDown};
      for (int j = 0; j < 7; ++j) {
        const Slot& s = slots[plan_of.at(tensor_names::layer(l, names[j]))];
        std::vector<uint8_t>& b = out[s.src->name] = encode_with(s, ls.at(s.in));
        if (!sequential) continue;
        const TensorPlan& p = res.tensors[plan_of.at(s.src->name)];
        *dst[j] = weight_of(p, b.data(), row_maps[size_t(j)], model->isa(), kept_outliers(p));
      }
      return sequential ? &lw : nullptr;
    };
    // Sequential: the layer's outputs recomputed by its encoded weights; otherwise encoded as the
    // statistics arrive, which are dropped then (left in place: their buffers serve the next layer).
    if (sequential) {
      cp.on_layer = [](int, LayerStats&&) {};
      cp.quantize_layer = encode_layer;
    } else {
      cp.on_layer = [&](int l, LayerStats&& ls) { encode_layer(l, ls); };
    }
    const CalibStats st = calibrate(*model, windows, cp);
    factors.clear();
    asym.clear();
    error_h.clear();
    for (const Slot& s : slots) {
      if (s.layer < 0 && !s.embedding) out[s.src->name] = encode_with(s, st.head);  // the head (untied)
    }
    return out;
  }
  // The allocation under the budget; floor >= 0: no tensor below candidate `floor`'s bytes
  // (choices under it dropped); linear: every tensor's KL taken as α·e (the line through its
  // reference point) instead of its fitted curve. Empty tensors: the floor does not fit.
  AutoQuantResult allocate_plan(double bpw, uint64_t size_bytes, int floor, bool linear = false) const {
    const Impl& I = *this;
    AutoQuantResult res;
    res.candidates = I.candidates;
    res.tensors = I.base;
    res.calib_source = I.stats.source;
    res.calib_tokens = I.stats.n_tokens;
    res.rank_correlation = I.rank_correlation;
    res.large_model = I.large;
    res.calib_bf16 = I.calib_bf16;
    res.kl_tokens = I.o.kl_tokens;
    res.kl_layers = I.o.kl_layers;
    res.candidate_rows = I.sample_rows;
    res.seconds_calibrate = I.seconds_calibrate;
    res.seconds_candidates = I.seconds_candidates;
    res.seconds_kl = I.seconds_kl;
    if (!I.all_fixed) {
      const uint64_t budget = bpw > 0 ? static_cast<uint64_t>(std::floor(bpw * I.elems / 8.0)) : size_bytes - I.overhead;
      // Allocation over the tensors the recipe leaves free.
      std::vector<AllocItem> items;
      std::vector<size_t> item_of;
      std::vector<std::vector<Impl::Split>> splits;  // per item: what each choice after the candidates is
      // Per item: its choices' candidate indices j, then splits (candidates + split index), then
      // candidates with outliers (candidates + splits + j · levels + level).
      std::vector<std::vector<size_t>> choice_of;
      const size_t n_levels = std::size(kOutlierLevels);
      uint64_t free_budget = std::min(budget, I.max_bytes) - I.fixed_bytes;
      for (size_t i = 0; i < res.tensors.size(); ++i) {
        const TensorPlan& p = res.tensors[i];
        if (p.fixed) {
          free_budget -= p.bytes;
          continue;
        }
        AllocItem it;
        it.name = p.name;
        const uint64_t min_bytes = floor >= 0 ? tensor_bytes(I.candidates[size_t(floor)], p.n, p.k) : 0;
        std::vector<size_t> kept;  // choice -> candidate j, or candidates + split index
        for (size_t j = 0; j < I.candidates.size(); ++j) {
          const uint64_t b = tensor_bytes(I.candidates[j], p.n, p.k);
          if (b < min_bytes) continue;
          it.choices.push_back({b, linear ? p.alpha * p.error[j] : I.predict(p, j)});
          kept.push_back(j);
        }
        splits.push_back(I.o.row_splits ? I.row_splits(i) : std::vector<Impl::Split>{});
        for (size_t q = 0; q < splits.back().size(); ++q) {
          if (splits.back()[q].bytes < min_bytes) continue;
          it.choices.push_back({splits.back()[q].bytes, splits.back()[q].loss});
          kept.push_back(I.candidates.size() + q);
        }
        for (size_t j = 0; j < p.outlier_gain.size(); ++j) {
          if (tensor_bytes(I.candidates[j], p.n, p.k) < min_bytes) continue;
          for (size_t l = 0; l < p.outlier_gain[j].size(); ++l) {
            const double e = std::max(p.error[j] - p.outlier_gain[j][l], 0.0);
            it.choices.push_back({bytes_with_outliers(I.candidates[j], p.n, p.k, outlier_count(kOutlierLevels[l], p.n, p.k)),
                                  linear ? p.alpha * e : I.predict_error(p, e)});
            kept.push_back(I.candidates.size() + splits.back().size() + j * n_levels + l);
          }
        }
        if (it.choices.empty()) return AutoQuantResult{};  // nothing at or above the floor
        choice_of.push_back(std::move(kept));
        items.push_back(std::move(it));
        item_of.push_back(i);
      }
      uint64_t least = 0;
      for (const AllocItem& it : items) {
        uint64_t b = UINT64_MAX;
        for (const AllocChoice& ch : it.choices) b = std::min(b, ch.bytes);
        least += b;
      }
      if (floor >= 0 && least > free_budget) return AutoQuantResult{};  // the floor does not fit
      const Allocation a = allocate(items, free_budget);
      for (size_t j = 0; j < items.size(); ++j) {
        TensorPlan& p = res.tensors[item_of[j]];
        const size_t c = size_t(a.choice[j]), ch = choice_of[j][c];
        p.bytes = items[j].choices[c].bytes;
        p.predicted_kl = items[j].choices[c].loss;
        if (ch < I.candidates.size()) {
          p.format = I.candidates[ch];
          continue;
        }
        if (ch >= I.candidates.size() + splits[j].size()) {
          const size_t x = ch - I.candidates.size() - splits[j].size();
          p.format = I.candidates[x / n_levels];
          p.outliers = outlier_count(kOutlierLevels[x % n_levels], p.n, p.k);
          continue;
        }
        const Impl::Split& sp = splits[j][ch - I.candidates.size()];
        p.format = I.candidates[sp.lo];
        p.split_format = I.candidates[sp.hi];
        p.split_rows = I.split_rows(item_of[j], sp);
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

  // Whether two plans store every tensor alike.
  static bool same_formats(const AutoQuantResult& a, const AutoQuantResult& b) {
    if (a.tensors.size() != b.tensors.size()) return false;
    for (size_t i = 0; i < a.tensors.size(); ++i) {
      const TensorPlan &p = a.tensors[i], &q = b.tensors[i];
      if (p.format != q.format || p.split_format != q.split_format || p.split_rows != q.split_rows || p.outliers != q.outliers) {
        return false;
      }
    }
    return true;
  }
  // Encodes what the plans need into `encoded` (cleared first, unless it keeps every candidate):
  // per tensor each format any plan gives it, under (name, format). Returns, per plan, its row
  // splits' stored bytes by tensor name, and fills `outliers` with each plan's outliers by tensor
  // name. Tensor by tensor in file order, each layer input's factorization dropped after its layer.
  std::vector<std::map<std::string, std::vector<uint8_t>>> encode_plans(
      const std::vector<std::pair<std::string, AutoQuantResult>>& plans,
      std::vector<std::map<std::string, SparseOutliers>>& outliers) {
    if (!keep_candidates) encoded.clear();
    std::vector<std::map<std::string, std::vector<uint8_t>>> split(plans.size());
    outliers.assign(plans.size(), {});
    int last_layer = -2;
    for (size_t i = 0; i < slots.size(); ++i) {
      const Slot& s = slots[i];
      if (s.layer != last_layer) drop_prepared(last_layer);
      last_layer = s.layer;
      std::vector<float> w;
      auto enc = [&](QType q) -> const std::vector<uint8_t>& {
        auto it = encoded.find({s.src->name, int(q)});
        if (it != encoded.end()) return it->second;
        if (w.empty()) w = read_tensor(*s.src);
        return encoded[{s.src->name, int(q)}] = encode(s, q, w);
      };
      std::map<std::pair<int, int64_t>, OutlierPicks> picks;  // by (format, count): plans may share them
      for (size_t j = 0; j < plans.size(); ++j) {
        const TensorPlan& p = plans[j].second.tensors[i];
        if (p.fixed && is_float_qtype(p.format)) continue;
        if (p.split_rows.empty()) {
          const std::vector<uint8_t>& b = enc(p.format);
          if (p.outliers > 0) {
            auto it = picks.find({int(p.format), p.outliers});
            if (it == picks.end()) {
              if (w.empty()) w = read_tensor(*s.src);
              it = picks.emplace(std::make_pair(int(p.format), p.outliers), outlier_picks(s, p.format, b, w, p.outliers)).first;
            }
            outliers[j][p.name] = it->second.first(p.outliers);
          }
          continue;
        }
        split[j][p.name] = encode_planned(p, [&](QType q) { return enc(q); });
      }
    }
    drop_prepared(last_layer);
    return split;
  }

};

AutoQuantizer::~AutoQuantizer() = default;

AutoQuantizer::AutoQuantizer(const ImportedModel& m, const AutoQuantOptions& o) : impl_(std::make_unique<Impl>(m, o)) {
  Impl& I = *impl_;
  I.threads = o.threads > 0 ? o.threads : omp_get_num_procs();
  if (o.kl_layers < -1 || o.kl_layers == 1) {
    throw Error(ErrorCode::kInvalidArgument, "--kl-layers " + std::to_string(o.kl_layers) + ": give 0 (every layer) or at least 2");
  }
  // The settings left to the model's size (AutoQuantOptions: "auto").
  I.large = stats_bytes(m.config) > o.large_stats_bytes;
  if (I.o.kl_layers < 0) I.o.kl_layers = I.large ? std::min(m.config.n_layers, 4) : 0;
  I.sample_rows = o.candidate_rows > 0 ? o.candidate_rows : o.candidate_rows < 0 && I.large ? kAutoCandidateRows : 0;
  I.calib_bf16 = o.calib_precision == AutoQuantOptions::CalibPrecision::kBf16 ||
                 (o.calib_precision == AutoQuantOptions::CalibPrecision::kAuto && I.large && selected_isa() == Isa::kAvx512);
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
      if (o.outliers && !I.slots[i].embedding) {
        hi = std::max(hi, bytes_with_outliers(q, p.n, p.k, max_outlier_count(p.n, p.k)));
      }
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
  // (Fixed formats with sequential targets calibrate when writing.)
  const bool calibrate_now =
      o.stats_in.empty() && (!I.all_fixed || !o.stats_out.empty() || (!o.calib_text.empty() && !o.sequential));
  // Streaming: each layer's tensors are measured as soon as its statistics are complete, and
  // the statistics dropped (write() calibrates again), so one layer's Gram matrices are held at a
  // time. Kept whole when they are small or are to be saved. Streaming skips the measured
  // selection, so no selection probe is built then (its held-out windows, sampled by the float
  // model when the text runs short, and their base pass took ~55 s of TinyLlama-1.1B's run).
  I.streamed = calibrate_now && !I.all_fixed && o.stats_out.empty() && stats_bytes(c) > keep_stats_limit(o.keep_stats_bytes);
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
  // Every candidate of every tensor: its error, and the KL of the reference candidate(s).
  const size_t ref = nearest_candidate(I.candidates, 3.5), low = nearest_candidate(I.candidates, 2.5),
               check = nearest_candidate(I.candidates, o.rank_check_bpw), high = nearest_candidate(I.candidates, 5.0);
  I.ref = ref;
  {
    uint64_t all = 0;
    for (const TensorPlan& p : I.base) {
      if (p.fixed) continue;
      for (QType q : I.candidates) all += tensor_bytes(q, p.n, p.k);
    }
    I.keep_candidates = !I.all_fixed && all <= o.keep_encodings_bytes && I.sample_rows == 0;
  }
  const bool two_point = o.kl_points >= 2 && low != ref, three_point = o.kl_points >= 3 && high != ref;
  std::unique_ptr<KlProbe>& probe = I.probe;
  I.probe_model = model;
  if (!I.all_fixed) {
    const auto tk = Clock::now();
    std::vector<std::vector<int>> kl_windows;
    const int64_t self_tokens = o.kl_text == AutoQuantOptions::KlText::kSelf   ? o.kl_tokens
                                : o.kl_text == AutoQuantOptions::KlText::kBoth ? o.kl_tokens / 2
                                                                               : 0;
    for (int64_t used = 0; used < o.kl_tokens - self_tokens && kl_windows.size() < windows.size();) {
      kl_windows.push_back(windows[kl_windows.size()]);
      used += int64_t(kl_windows.back().size());
    }
    if (self_tokens > 0) {
      for (auto& w : self_generated_windows(*model, self_tokens, window, 0x6b6c, I.threads)) kl_windows.push_back(std::move(w));
    }
    if (o.kl_base_q8) {
      // The other tensors in q8_g32 (round to nearest): the int8 kernels run the KL windows'
      // many forward passes ~1.85x faster than bf16/f32 weights (tinymix, pp512 on 2 threads).
      ProbeBase& b = I.probe_base;
      b.layers = model->layers();
      b.bytes.clear();
      EncodeOptions rtn;
      rtn.method = EncodeMethod::kRtn;
      rtn.threads = I.threads;
      for (const Slot& s : I.slots) {
        if (s.embedding) continue;
        const int64_t n = s.src->shape[0], k = s.src->shape[1];
        const std::vector<float> w = read_tensor(*s.src);
        b.bytes.push_back(encode_tensor(QType::kQ8G32, w.data(), n, k, nullptr, rtn));
        const Weight q = make_weight(QType::kQ8G32, b.bytes.back().data(), n, k, model->isa());
        if (s.layer < 0) {
          b.head = q;
          b.has_head = true;
          continue;
        }
        *layer_matmul(b.layers[size_t(s.layer)], s.layer, s.src->name) = q;
      }
    }
    probe = std::make_unique<KlProbe>(*model, kl_windows, I.threads, true, o.kl_base_q8 ? &I.probe_base : nullptr);
    if (o.select && o.select_tokens > 0 && !I.streamed) {
      // Held out from calibration: text the model samples with a seed of its own, and/or the
      // calibration text's windows after those calibration used (too short a text: sampled).
      std::vector<std::vector<int>> held;
      const int64_t from_text = o.calib_text.empty()                                 ? 0
                                : o.select_text == AutoQuantOptions::KlText::kCalib ? o.select_tokens
                                : o.select_text == AutoQuantOptions::KlText::kBoth  ? o.select_tokens / 2
                                                                                     : 0;
      int64_t got = 0;
      if (from_text > 0) {
        std::vector<std::vector<int>> all = calibration_windows(*model, o.calib_text, o.calib_tokens + from_text, window);
        for (size_t i = windows.size(); i < all.size(); ++i) {
          got += int64_t(all[i].size());
          held.push_back(std::move(all[i]));
        }
        if (got > 0) I.select_source = "calibration text after its first " + std::to_string(o.calib_tokens) + " tokens";
      }
      if (got < o.select_tokens) {
        for (auto& w : self_generated_windows(*model, o.select_tokens - got, window, 0x5e1ec7, I.threads)) held.push_back(std::move(w));
        I.select_source += std::string(I.select_source.empty() ? "" : " and ") + "self-generated:seed=0x5e1ec7";
      }
      I.select_probe = std::make_unique<KlProbe>(*model, std::move(held), I.threads, false);
    }
    I.seconds_kl += since(tk);
    t0 += Clock::now() - tk;  // not calibration time
  }
  std::vector<double> predicted_check, measured_check;
  size_t done = 0;
  I.row_error.assign(I.slots.size(), {});
  // One tensor: every candidate encoded and scored, then the KL of the fit points (the encodings
  // are dropped as soon as they are measured, unless all of them are kept).
  // The layers whose tensors get KL runs (kl_layers), spread over the depth.
  std::vector<char> kl_layer(size_t(c.n_layers), 1);
  if (o.kl_layers > 0 && o.kl_layers < c.n_layers) {
    std::fill(kl_layer.begin(), kl_layer.end(), 0);
    for (int j = 0; j < o.kl_layers; ++j) kl_layer[size_t(std::lround(double(j) * (c.n_layers - 1) / (o.kl_layers - 1)))] = 1;
  }
  auto measure_tensor = [&](size_t i) {
    TensorPlan& p = I.base[i];
    if (p.fixed) return;
    const bool kl_here = I.slots[i].layer < 0 || kl_layer[size_t(I.slots[i].layer)];
    auto tc = Clock::now();
    const std::vector<float> w = read_tensor(*I.slots[i].src);
    p.error.resize(I.candidates.size());
    if (o.row_splits) I.row_error[i].resize(I.candidates.size());
    // With a sample of rows (never with kept encodings), only the KL points of a measured layer
    // are encoded whole too.
    auto needs_whole = [&](size_t j) {
      return kl_here && (j == ref || (j == low && two_point) || (j == high && three_point) || (j == check && o.rank_check));
    };
    const std::vector<int64_t> sample = I.sampled_rows(I.slots[i]);
    std::vector<float> ws;
    for (int64_t r : sample) ws.insert(ws.end(), w.begin() + r * p.k, w.begin() + (r + 1) * p.k);
    const double scale = double(p.n) / double(std::max<size_t>(1, sample.size()));
    std::vector<uint8_t> ref_bytes, low_bytes, high_bytes, check_bytes;
    for (size_t j = 0; j < I.candidates.size(); ++j) {
      std::vector<uint8_t> bytes;
      if (sample.empty()) {
        bytes = I.encode(I.slots[i], I.candidates[j], w);
        p.error[j] = I.error_of(I.slots[i], I.candidates[j], bytes, w, o.row_splits ? &I.row_error[i][j] : nullptr);
      } else {  // every candidate scored on the same rows: their ratios are sharper than their sum
        p.error[j] = scale * I.error_of(I.slots[i], I.candidates[j], I.encode(I.slots[i], I.candidates[j], ws), ws);
        if (!needs_whole(j)) continue;
        bytes = I.encode(I.slots[i], I.candidates[j], w);
      }
      if (o.outliers && !I.slots[i].embedding) {
        const OutlierPicks picks =
            I.outlier_picks(I.slots[i], I.candidates[j], bytes, w, max_outlier_count(p.n, p.k));
        p.outlier_gain.resize(I.candidates.size());
        for (double level : kOutlierLevels) p.outlier_gain[j].push_back(picks.gain_of_first(outlier_count(level, p.n, p.k)));
      }
      if (I.keep_candidates) I.encoded[{p.name, int(I.candidates[j])}] = bytes;
      if (j == check && o.rank_check) check_bytes = bytes;
      if (j == high && three_point) high_bytes = bytes;
      if (j == ref) ref_bytes = std::move(bytes);
      else if (j == low && two_point) low_bytes = std::move(bytes);
    }
    I.seconds_candidates += since(tc);
    if (!kl_here) {
      p.kl_interpolated = true;  // α and γ come after every measured layer is done
      I.report("measuring tensors", ++done, I.slots.size());
      return;
    }
    tc = Clock::now();
    auto kl_of = [&](size_t j, const std::vector<uint8_t>& b) {
      return probe->kl(p.name, I.slots[i].layer, make_weight(I.candidates[j], b.data(), p.n, p.k, model->isa()));
    };
    p.measured_kl = kl_of(ref, ref_bytes);
    p.alpha = p.error[ref] > 0 ? p.measured_kl / p.error[ref] : 0.0;
    if (two_point) {
      p.low_kl = kl_of(low, low_bytes);
      const double er = p.error[ref], el = p.error[low];
      if (p.measured_kl > 0 && p.low_kl > 0 && er > 0 && el > 1.05 * er) {
        p.gamma = std::clamp(std::log(p.low_kl / p.measured_kl) / std::log(el / er), 0.8, 2.0);
      }
    }
    p.gamma_high = p.gamma;
    if (three_point) {
      p.high_kl = kl_of(high, high_bytes);
      const double er = p.error[ref], eh = p.error[high];
      if (p.measured_kl > 0 && p.high_kl > 0 && eh > 0 && er > 1.05 * eh) {
        p.gamma_high = std::clamp(std::log(p.measured_kl / p.high_kl) / std::log(er / eh), 0.5, 2.0);
      }
    }
    if (o.rank_check) {
      p.check_measured_kl = kl_of(check, check_bytes);
      p.check_predicted_kl = I.predict(p, check);
      measured_check.push_back(p.check_measured_kl);
      predicted_check.push_back(p.check_predicted_kl);
    }
    I.seconds_kl += since(tc);
    I.report("measuring tensors", ++done, I.slots.size());
  };
  auto measure_layer = [&](int l) {
    for (size_t i = 0; i < I.slots.size(); ++i) {
      if (I.slots[i].layer == l && !I.slots[i].embedding) measure_tensor(i);
    }
  };
  auto measure_rest = [&]() {  // the head and the embedding
    for (size_t i = 0; i < I.slots.size(); ++i) {
      if (I.slots[i].layer < 0) measure_tensor(i);
    }
  };

  if (!o.stats_in.empty()) {
    I.stats = load_stats(o.stats_in, fingerprint);
    if (I.stats.layers.size() != size_t(c.n_layers) || I.stats.head.k != c.n_embd || I.stats.token_counts.size() != size_t(c.n_vocab)) {
      throw Error(ErrorCode::kInvalidArgument, "'" + o.stats_in + "' holds statistics of a model of another shape");
    }
    I.seconds_calibrate = since(t0);
  } else if (calibrate_now) {
    CalibParams cp;
    cp.threads = I.threads;
    cp.bf16 = I.calib_bf16;
    cp.progress = [&](size_t d, size_t t) { I.report("calibrating", d, t); };
    if (I.streamed) {
      cp.on_layer = [&](int l, LayerStats&& ls) {
        const auto tl = Clock::now();
        I.live = &ls;
        I.live_layer = l;
        if (const int wi = I.wide_input(ls); wi >= 0) {
          const InputStats& in = ls.at(MatmulInput(wi));
          I.pending_key = {l, wi};
          I.pending = std::async(std::launch::async, [&I, &in] { return I.make_prepared(in, 1); });
        }
        const Impl::Joined<Impl::Prepared> join{I.pending};
        measure_layer(l);
        I.live = nullptr;
        I.live_layer = -1;
        I.drop_prepared(l);
        t0 += Clock::now() - tl;  // not calibration time
      };
    }
    // Sequential targets encode again when writing, over all the windows: the statistics the
    // candidates are measured with need fewer (measure_tokens).
    std::vector<std::vector<int>> measured = windows;
    if (o.sequential && o.measure_tokens > 0 && !I.all_fixed) {
      int64_t used = 0;
      size_t nw = 0;
      while (nw < measured.size() && used < o.measure_tokens) used += int64_t(measured[nw++].size());
      measured.resize(nw);
    }
    I.stats = calibrate(*model, measured, cp);
    I.stats.source = calib_source;
    I.stats.model_fingerprint = fingerprint;
    I.seconds_calibrate = since(t0);
  } else {
    I.seconds_calibrate = since(t0);
  }
  if (!o.stats_out.empty()) save_stats(I.stats, o.stats_out);
  I.windows = windows;
  if (I.all_fixed) return;
  if (!I.streamed) {
    for (int l = 0; l < c.n_layers; ++l) {
      measure_layer(l);
      I.drop_prepared(l);
    }
  }
  measure_rest();
  I.drop_prepared(-1);
  I.interpolate_kl();
  if (o.rank_check) I.rank_correlation = spearman(predicted_check, measured_check);
}

AutoQuantResult AutoQuantizer::plan(double bpw, uint64_t size_bytes) const {
  check_budget(bpw, size_bytes);
  if (!impl_->measured) throw Error(ErrorCode::kInvalidArgument, "AutoQuantizer::plan before measure()");
  return impl_->allocate_plan(bpw, size_bytes, -1);
}

AutoQuantResult AutoQuantizer::choose(double bpw, uint64_t size_bytes) {
  Impl& I = *impl_;
  AutoQuantResult best = plan(bpw, size_bytes);
  if (!I.o.select || I.all_fixed || !I.select_probe || I.streamed) return best;
  const auto t0 = Clock::now();
  // The plans: the allocation's own, and the allocation with every tensor at or above each of
  // the two largest candidates that fit the budget on average (a uniform floor topped up).
  const double target = best.bpw;
  std::vector<size_t> floors(I.candidates.size());
  std::iota(floors.begin(), floors.end(), 0);
  std::sort(floors.begin(), floors.end(), [&](size_t a, size_t b) {
    return qtype_info(I.candidates[a]).bits_per_weight > qtype_info(I.candidates[b]).bits_per_weight;
  });
  std::vector<std::pair<std::string, AutoQuantResult>> plans = {{"allocation", best}};
  auto add = [&](std::string label, AutoQuantResult r) {
    if (r.tensors.empty()) return;
    for (const auto& q : plans) {
      if (I.same_formats(q.second, r)) return;
    }
    plans.emplace_back(std::move(label), std::move(r));
  };
  if (I.o.kl_points >= 2) add("linear", I.allocate_plan(bpw, size_bytes, -1, true));
  int n_floors = 0;
  for (size_t f : floors) {
    if (n_floors == 2) break;
    if (qtype_info(I.candidates[f]).bits_per_weight > target) continue;
    ++n_floors;
    add("floor " + std::string(qtype_info(I.candidates[f]).name), I.allocate_plan(bpw, size_bytes, int(f)));
  }
  std::vector<std::map<std::string, SparseOutliers>> outliers;
  std::vector<std::map<std::string, std::vector<uint8_t>>> split = I.encode_plans(plans, outliers);
  // Sequential (and asymmetric) targets write other encodings than the measured candidates: with
  // select_as_written each plan is encoded as write() encodes it (one more calibration pass per
  // plan), so the selection compares the files it could write (not the default: README).
  const bool as_written = I.o.select_as_written && I.o.sequential && I.o.encode.method != EncodeMethod::kRtn;
  std::map<std::string, size_t> plan_of;
  for (size_t t = 0; t < best.tensors.size(); ++t) plan_of[best.tensors[t].name] = t;
  I.written_plan.reset();
  size_t chosen = 0;
  std::vector<PlanMeasurement> measured;
  for (size_t i = 0; i < plans.size(); ++i) {
    std::map<std::string, Weight> swapped;
    std::vector<std::vector<int32_t>> row_maps(plans[i].second.tensors.size());
    Impl::WrittenPlan written;
    if (as_written) {
      written.bytes = I.encode_streaming(plans[i].second, plan_of, true);
      written.outliers = std::move(I.written_outliers);
      I.written_outliers.clear();
    }
    for (size_t t = 0; t < plans[i].second.tensors.size(); ++t) {
      const TensorPlan& p = plans[i].second.tensors[t];
      auto w = written.bytes.find(p.name);
      if (w != written.bytes.end()) {  // as written (layer tensors and the head)
        auto ol = written.outliers.find(p.name);
        swapped[p.name] = Impl::weight_of(p, w->second.data(), row_maps[t], I.probe_model->isa(),
                                          ol == written.outliers.end() ? nullptr : &ol->second.o);
      } else if (!p.split_rows.empty()) {  // the stored rows of both formats, behind the row map
        swapped[p.name] = Impl::weight_of(p, split[i].at(p.name).data(), row_maps[t], I.probe_model->isa());
      } else if (!is_float_qtype(p.format)) {
        auto ol = outliers[i].find(p.name);
        swapped[p.name] = Impl::weight_of(p, I.encoded.at({p.name, int(p.format)}).data(), row_maps[t], I.probe_model->isa(),
                                          ol == outliers[i].end() ? nullptr : &ol->second);
      }
    }
    PlanMeasurement m{plans[i].first, plans[i].second.bpw, plans[i].second.predicted_kl, I.select_probe->kl_model(swapped)};
    measured.push_back(m);
    if (m.measured_kl < measured[chosen].measured_kl) chosen = i;
    if (as_written && chosen == i) I.written_plan = Impl::WrittenPlan{plans[i].second, std::move(written.bytes), std::move(written.outliers)};
    I.report("measuring plans", i + 1, plans.size());
  }
  I.split_encoded.clear();  // write() finds the chosen plan's splits and outliers here
  for (const TensorPlan& p : plans[chosen].second.tensors) {
    if (!p.split_rows.empty()) I.split_encoded[p.name] = {p, std::move(split[chosen].at(p.name))};
  }
  I.written_outliers.clear();
  for (auto& [name, so] : outliers[chosen]) {
    const TensorPlan& p = plans[chosen].second.tensors[plan_of.at(name)];
    I.written_outliers[name] = {p.format, p.outliers, std::move(so)};
  }
  best = std::move(plans[chosen].second);
  best.measured_plans = std::move(measured);
  best.chosen_plan = best.measured_plans[chosen].label;
  best.seconds_select = since(t0);
  return best;
}

void AutoQuantizer::write(const AutoQuantResult& res, const std::string& out_path) {
  Impl& I = *impl_;
  const AutoQuantOptions& o = I.o;
  std::map<std::string, size_t> plan_of;
  for (size_t i = 0; i < res.tensors.size(); ++i) plan_of[res.tensors[i].name] = i;
  // Statistics were taken, or (fixed formats, sequential targets) are taken as the file is written.
  const bool calibrated = !I.stats.layers.empty() || (I.all_fixed && o.sequential && !o.calib_text.empty());
  const EncodeMethod method = calibrated ? o.encode.method : EncodeMethod::kRtn;
  nlohmann::json record = {{"method", "mixed"},
                           {"encoder", encode_method_name(method)},
                           {"bits_per_weight", res.bpw},
                           {"predicted_kl", res.predicted_kl},
                           {"calibration",
                            {{"source", res.calib_source}, {"tokens", res.calib_tokens}, {"precision", I.calib_bf16 ? "bf16" : "f32"}}}};
  if (!I.all_fixed) {
    record["measurement"] = {{"kl_tokens", res.kl_tokens}, {"kl_layers", res.kl_layers}, {"candidate_rows", res.candidate_rows}};
  }
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
    if (o.kl_points >= 3) tensors[p.name]["gamma_high"] = p.gamma_high;
    if (p.kl_interpolated) tensors[p.name]["kl"] = "interpolated";
    if (!p.split_rows.empty()) {
      tensors[p.name]["split"] = {{"format", qtype_info(p.split_format).name}, {"rows", p.split_rows.size()}};
    }
    if (p.outliers > 0) tensors[p.name]["outliers"] = p.outliers;
  }
  record["tensors"] = tensors;
  if (!res.measured_plans.empty()) {
    nlohmann::json sel = nlohmann::json::array();
    for (const PlanMeasurement& m : res.measured_plans) {
      sel.push_back({{"plan", m.label}, {"bits_per_weight", m.bpw}, {"predicted_kl", m.predicted_kl}, {"measured_kl", m.measured_kl}});
    }
    record["selection"] = {{"chosen", res.chosen_plan}, {"text", I.select_source}, {"plans", sel}};
  }
  // Sequential: every layer's tensors and the head encoded with the statistics of the model
  // whose earlier layers are quantized (kept until written).
  std::map<std::string, std::vector<uint8_t>> sequential;
  if (o.sequential && method != EncodeMethod::kRtn) {
    record["sequential"] = true;
    if (o.asymmetric) record["asymmetric"] = true;
    if (I.written_plan && Impl::same_formats(I.written_plan->plan, res)) {  // choose() encoded it so
      sequential = std::move(I.written_plan->bytes);
      I.written_outliers = std::move(I.written_plan->outliers);
    } else {
      sequential = I.encode_streaming(res, plan_of, true);
    }
    I.written_plan.reset();
    // The written encodings' statistics (the candidates' may have been fewer: measure_tokens).
    record["calibration"] = {{"source", I.written_source},
                             {"tokens", I.written_tokens},
                             {"measured_tokens", res.calib_tokens},
                             {"precision", I.calib_bf16 ? "bf16" : "f32"}};
  } else if (I.streamed && method != EncodeMethod::kRtn) {
    sequential = I.encode_streaming(res, plan_of, false);
  }
  size_t written = 0;
  int last_layer = -2;
  const LayoutEncoder enc = [&](const SourceTensor& t, const TensorLayout&, uint8_t* dst, size_t bytes) {
    auto it = sequential.find(t.name);
    std::vector<uint8_t> b;
    if (it != sequential.end()) {
      b = std::move(it->second);
      sequential.erase(it);
    } else {
      const size_t i = plan_of.at(t.name);
      if (I.slots[i].layer != last_layer) I.drop_prepared(last_layer);  // one input's factorization at a time
      last_layer = I.slots[i].layer;
      const TensorPlan& p = res.tensors[i];
      auto cached = p.split_rows.empty() ? I.encoded.find({p.name, int(p.format)}) : I.encoded.end();
      auto split = I.split_encoded.find(p.name);
      const bool split_cached = !p.split_rows.empty() && split != I.split_encoded.end() &&
                                split->second.first.format == p.format && split->second.first.split_format == p.split_format &&
                                split->second.first.split_rows == p.split_rows;
      if (split_cached) {  // choose() encoded it
        b = std::move(split->second.second);
        I.split_encoded.erase(split);
      } else if (cached != I.encoded.end()) {  // measure() or choose() encoded it
        if (I.keep_candidates) b = cached->second;
        else b = std::move(cached->second);
      } else {
        const std::vector<float> w = read_tensor(t);
        b = I.encode_planned(p, [&](QType q) { return I.encode(I.slots[i], q, w); });
      }
      if (p.outliers > 0 && !I.kept_outliers(p)) {  // picked on the encoding written
        const std::vector<float> w = read_tensor(t);
        I.written_outliers[p.name] = {p.format, p.outliers, I.outlier_picks(I.slots[i], p.format, b, w, p.outliers).first(p.outliers)};
      }
    }
    MXLM_ASSERT(b.size() == bytes);
    std::memcpy(dst, b.data(), bytes);
    I.report("writing", ++written, I.slots.size());
  };
  const auto layout = [&](const SourceTensor& t) {
    const TensorPlan& p = res.tensors[plan_of.at(t.name)];
    TensorLayout l = Impl::layout_of(p);
    if (p.outliers > 0) {  // the encoder has just picked them (enc runs first)
      l.outliers = [&I, &p](std::vector<int32_t>& row_ptr, std::vector<int32_t>& cols, std::vector<uint16_t>& values) {
        const SparseOutliers* o = I.kept_outliers(p);
        MXLM_ASSERT(o);
        row_ptr = o->row_ptr;
        cols = o->cols;
        values = o->values;
      };
    }
    return l;
  };
  write_model(I.m, out_path, layout, record, enc);
  I.prepared.clear();
  I.split_encoded.clear();
  I.written_outliers.clear();
  if (!I.keep_candidates) I.encoded.clear();
}

AutoQuantResult auto_quantize(const ImportedModel& m, const std::string& out_path, const AutoQuantOptions& o) {
  AutoQuantizer q(m, o);
  q.check_budget(o.bpw, o.size_bytes);
  q.measure();
  AutoQuantResult r = o.dry_run ? q.plan(o.bpw, o.size_bytes) : q.choose(o.bpw, o.size_bytes);
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
    r = q.choose(0, o.size_bytes - over);
    q.write(r, out_path);
  }
  r.seconds_write = since(t0);
  return r;
}

}  // namespace mxlm
