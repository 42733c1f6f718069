#include "mxlm/calibrate.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>
#include <memory>
#include <nlohmann/json.hpp>

#include "base/error.h"
#include "kernels/f32_ops.h"
#include "model/checksum.h"
#include "model/file_util.h"
#include "model/tiles.h"
#include "mxlm/perplexity.h"
#include "mxlm/sampler.h"
#include "tokenizer/tokenizer.h"

namespace mxlm {

void InputStats::reset(int64_t k_in) {
  k = k_in;
  n_tokens = 0;
  gram.assign(size_t(k) * size_t(k), 0.0);
  amax.assign(size_t(k), 0.0f);
  cross.clear();  // its capacity kept: accumulate_cross assigns it again without a new allocation
}

// k × k passes run on all threads (k² doubles: 254 MB at k = 5632; on one thread they left the
// other core idle while the quantizer wrote a large model, model/encode.cc).
std::vector<double> InputStats::second_moment() const {
  std::vector<double> h(gram.size());
  const double inv = n_tokens ? 1.0 / double(n_tokens) : 0.0;
  const int64_t n = int64_t(h.size());
#pragma omp parallel for schedule(static) if (n > (int64_t{1} << 20))
  for (int64_t i = 0; i < n; ++i) h[size_t(i)] = gram[size_t(i)] * inv;
  return h;
}

std::vector<double> InputStats::mean_cross() const {
  std::vector<double> c(cross.size());
  const double inv = n_tokens ? 1.0 / double(n_tokens) : 0.0;
  const int64_t n = int64_t(c.size());
#pragma omp parallel for schedule(static) if (n > (int64_t{1} << 20))
  for (int64_t i = 0; i < n; ++i) c[size_t(i)] = cross[size_t(i)] * inv;
  return c;
}

std::vector<float> InputStats::mean_square() const {
  std::vector<float> d(static_cast<size_t>(k));
  const double inv = n_tokens ? 1.0 / double(n_tokens) : 0.0;
  for (int64_t i = 0; i < k; ++i) d[size_t(i)] = static_cast<float>(gram[size_t(i) * size_t(k) + size_t(i)] * inv);
  return d;
}

namespace {

// xt [k][m] = x [m][k]ᵀ, in 32 × 32 tiles (a plain loop's strided stores cost as much as a
// third of the Gram products).
void transpose(const float* x, int m, int k, float* xt) {
  constexpr int B = 32;
  for (int t0 = 0; t0 < m; t0 += B) {
    const int t1 = std::min(m, t0 + B);
    for (int i0 = 0; i0 < k; i0 += B) {
      const int i1 = std::min(k, i0 + B);
      for (int t = t0; t < t1; ++t) {
        for (int i = i0; i < i1; ++i) xt[size_t(i) * m + t] = x[size_t(t) * k + i];
      }
    }
  }
}

// One window's products: the f32 GEMM on the f32 operands, or (bf16) gemm_bf16 on operands
// rounded to bfloat16 here.
struct Products {
  bool bf16 = false;
  std::vector<float> y;            // the window's product [k][k]
  std::vector<uint16_t> a16, b16;  // bf16: the operands
};

// g [k][k] += A Bᵀ for A, B [k][m] (rows = channels, m tokens): the f32 (bf16) gemm kernel per
// chunk of 32 rows, split over threads, summed into double. lower: only columns up to each
// chunk's last row (the lower triangle and the diagonal blocks).
void add_product(double* g, const float* a, const float* b, int m, int k, bool lower, int threads, Isa isa, Products* p) {
  p->y.resize(size_t(k) * k);
  const F32Kernels& kr = f32_kernels(isa);
  const uint16_t *a16 = nullptr, *b16 = nullptr;
  if (p->bf16) {
    const size_t n = size_t(k) * m;
    p->a16.resize(n);
    kr.to_bf16(a, QType::kF32, p->a16.data(), n);
    a16 = p->a16.data();
    if (b != a) {
      p->b16.resize(n);
      kr.to_bf16(b, QType::kF32, p->b16.data(), n);
    }
    b16 = b != a ? p->b16.data() : a16;
  }
  const int chunk = 32, n_chunks = (k + chunk - 1) / chunk;
  float* y = p->y.data();
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) if (threads > 1)
  for (int c = n_chunks - 1; c >= 0; --c) {  // the longest rows first
    const int r0 = c * chunk, r1 = std::min(k, r0 + chunk), n1 = lower ? r1 : k;
    if (a16) {
      kr.gemm_bf16(r1 - r0, 0, n1, m, a16 + size_t(r0) * m, size_t(m), b16, size_t(m), y + size_t(r0) * k, size_t(k));
    } else {
      kr.gemm(r1 - r0, 0, n1, m, a + size_t(r0) * m, size_t(m), b, sizeof(float) * size_t(m), QType::kF32, y + size_t(r0) * k,
              size_t(k));
    }
    for (int i = r0; i < r1; ++i) {
      for (int j = 0; j < n1; ++j) g[size_t(i) * k + j] += y[size_t(i) * k + j];
    }
  }
}

// Adds x [m][k]'s XᵀX into s (and the channel maxima). The float product of one window runs on
// the f32 gemm kernel over Xᵀ (rows = channels), split by output rows over threads; the sum
// across windows is double.
void accumulate(InputStats& s, const float* x, int m, int k, int threads, Isa isa, std::vector<float>* xt, Products* prod) {
  MXLM_ASSERT(s.k == k);
  xt->resize(size_t(k) * m);
  for (int t = 0; t < m; ++t) {
    for (int i = 0; i < k; ++i) s.amax[size_t(i)] = std::max(s.amax[size_t(i)], std::abs(x[size_t(t) * k + i]));
  }
  transpose(x, m, k, xt->data());
  // Only the lower triangle (half the products); symmetrize mirrors it once the statistics are
  // complete.
  add_product(s.gram.data(), xt->data(), xt->data(), m, k, true, threads, isa, prod);
  s.n_tokens += m;
}

// Copies the lower triangle of the Gram matrix onto the upper one (accumulate fills the lower),
// by tiles (model/tiles.h) on all threads.
void symmetrize(InputStats& s, int threads) {
  const int64_t k = s.k;
  double* g = s.gram.data();
  for_each_tile(k, threads, true, [&](int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    for (int64_t i = i0; i < i1; ++i) {
      for (int64_t j = j0; j < std::min(j1, i); ++j) g[j * k + i] = g[i * k + j];
    }
  });
}
void symmetrize(LayerStats& ls, int threads) {
  for (InputStats& in : ls.in) symmetrize(in, threads);
}

// Adds Σ_t (r_t − x_t) x_tᵀ into s.cross: r [m][k] the reference (unquantized) model's input
// for the same tokens. The same float-per-window, double-across-windows sums as accumulate().
// xt: x transposed (accumulate's, for the same x); dt, d: scratch.
void accumulate_cross(InputStats& s, const float* r, const float* x, int m, int k, int threads, Isa isa,
                      std::vector<float>* d, std::vector<float>* dt, const std::vector<float>* xt, Products* prod) {
  if (s.cross.empty()) s.cross.assign(size_t(k) * size_t(k), 0.0);
  d->resize(size_t(k) * m);
  dt->resize(size_t(k) * m);
  MXLM_ASSERT(xt->size() == size_t(k) * m);
  bool any = false;
  for (size_t i = 0; i < size_t(k) * m; ++i) {
    (*d)[i] = r[i] - x[i];
    any = any || (*d)[i] != 0;
  }
  if (!any) return;  // both models agree here: nothing to add
  transpose(d->data(), m, k, dt->data());
  add_product(s.cross.data(), dt->data(), xt->data(), m, k, false, threads, isa, prod);
}

// Accumulates the statistics of every matmul input it sees. Asymmetric calibration: in
// `capture` mode it only copies each input (the unquantized model's run of a window), and the
// next run of the same window (the quantized model's) also accumulates the cross moments
// against those copies.
class StatsObserver : public MatmulObserver {
 public:
  StatsObserver(int threads, Isa isa, bool bf16) : threads_(threads), isa_(isa) { prod_.bf16 = bf16; }
  LayerStats* layer = nullptr;
  InputStats* head = nullptr;
  bool capture = false;    // store the inputs as the reference, accumulate nothing
  bool with_ref = false;   // also accumulate the cross moments against the stored reference
  void observe(int l, MatmulInput in, const float* x, int m, int k) override {
    (void)l;
    const size_t slot = static_cast<size_t>(in);
    if (capture) {
      ref_[slot].assign(x, x + size_t(m) * k);
      return;
    }
    InputStats& s = in == MatmulInput::kHeadIn ? *head : layer->at(in);
    accumulate(s, x, m, k, threads_, isa_, &xt_, &prod_);
    if (with_ref) {
      MXLM_ASSERT(ref_[slot].size() == size_t(m) * k);
      accumulate_cross(s, ref_[slot].data(), x, m, k, threads_, isa_, &d_, &dt_, &xt_, &prod_);
    }
  }

 private:
  int threads_;
  Isa isa_;
  std::vector<float> xt_, d_, dt_;
  Products prod_;
  std::array<std::vector<float>, 5> ref_;  // by MatmulInput (the head's input included)
};

}  // namespace

std::vector<std::vector<int>> calibration_windows(const Model& model, const std::string& text, int64_t n_tokens, int window) {
  const ModelConfig& c = model.config();
  if (window < 1 || window > c.n_ctx) {
    throw Error(ErrorCode::kInvalidArgument, "calibration window of " + std::to_string(window) + " tokens outside [1, " +
                                                 std::to_string(c.n_ctx) + "] (the model's context)");
  }
  if (n_tokens < window) {
    throw Error(ErrorCode::kInvalidArgument, "--calib-tokens " + std::to_string(n_tokens) + " is less than one window of " +
                                                 std::to_string(window) + " tokens");
  }
  if (text.find_first_not_of(" \t\r\n\v\f\x1e") == std::string::npos) {
    throw Error(ErrorCode::kInvalidArgument, "the calibration text is empty");
  }
  const std::vector<int> stream = tokenize_documents(model.tokenizer(), text, c.bos_id, c.eos_id);
  if (int64_t(stream.size()) < window) {
    throw Error(ErrorCode::kInvalidArgument, "the calibration text has " + std::to_string(stream.size()) +
                                                 " tokens, fewer than one window of " + std::to_string(window));
  }
  std::vector<std::vector<int>> out;
  int64_t used = 0;
  for (size_t i = 0; i < stream.size() && used < n_tokens; i += size_t(window)) {
    const int64_t len = std::min<int64_t>({window, int64_t(stream.size() - i), n_tokens - used});
    if (len < 64 && !out.empty()) break;
    out.emplace_back(stream.begin() + int64_t(i), stream.begin() + int64_t(i) + len);
    used += len;
  }
  return out;
}

// One window of `len` tokens the model samples from BOS (temperature 1, a new BOS after EOS).
static std::vector<int> sample_window(Context& ctx, int len, uint64_t seed) {
  const ModelConfig& c = ctx.model().config();
  SamplerParams sp;
  sp.temperature = 1.0f;
  sp.top_k = 0;
  sp.top_p = 1.0f;
  sp.min_p = 0.0f;
  sp.seed = seed;
  Sampler sampler(sp);
  std::vector<int> w{c.bos_id};
  ctx.reset();
  const float* logits = ctx.eval(std::span<const int>(w.data(), 1));
  while (int(w.size()) < len) {
    const int t = sampler.sample(logits, c.n_vocab, w);
    w.push_back(t);
    if (int(w.size()) == len) break;
    if (t == c.eos_id) {  // a new document
      w.push_back(c.bos_id);
      if (int(w.size()) == len) break;
      logits = ctx.eval(std::span<const int>(&w[w.size() - 2], 2));
      continue;
    }
    logits = ctx.eval(std::span<const int>(&w.back(), 1));
  }
  return w;
}

std::vector<std::vector<int>> self_generated_windows(const Model& model, int64_t n_tokens, int window, uint64_t seed,
                                                     int threads) {
  const ModelConfig& c = model.config();
  if (window < 2 || window > c.n_ctx) {
    throw Error(ErrorCode::kInvalidArgument, "calibration window of " + std::to_string(window) + " tokens outside [2, " +
                                                 std::to_string(c.n_ctx) + "]");
  }
  std::vector<int> lens;
  for (int64_t used = 0; used < n_tokens;) {
    const int len = static_cast<int>(std::min<int64_t>(window, n_tokens - used));
    if (len < 2) break;
    lens.push_back(len);
    used += len;
  }
  // Each window is sampled from its own seed (seed, index) by its own context, so the text does
  // not depend on how many are sampled at once: with several windows, one single-threaded
  // context per thread (decoding one token at a time is latency-bound: a 2-thread context
  // sampled tinymix at 263 tok/s, one thread at 352), else one context with every thread.
  const int nt = threads > 0 ? threads : std::max(1, omp_get_max_threads());
  const int par = std::max(1, std::min<int>(nt, int(lens.size())));
  std::vector<std::vector<int>> out(lens.size());
  std::exception_ptr failed;
#pragma omp parallel num_threads(par) if (par > 1)
  {
    ContextParams cp;
    cp.n_ctx = window;
    cp.n_threads = par > 1 ? 1 : nt;
    std::unique_ptr<Context> ctx;
    try {
      ctx = std::make_unique<Context>(std::shared_ptr<const Model>(std::shared_ptr<const Model>{}, &model), cp);
    } catch (...) {
#pragma omp critical(mxlm_self_generated)
      if (!failed) failed = std::current_exception();
    }
    // Every thread takes part in the loop (a worksharing construct), with or without a context.
#pragma omp for schedule(dynamic, 1)
    for (size_t i = 0; i < lens.size(); ++i) {
      if (!ctx) continue;
      try {
        out[i] = sample_window(*ctx, lens[i], seed ^ (0x9e3779b97f4a7c15ull * (uint64_t(i) + 1)));
      } catch (...) {
#pragma omp critical(mxlm_self_generated)
        if (!failed) failed = std::current_exception();
      }
    }
  }
  if (failed) std::rethrow_exception(failed);
  return out;
}

CalibStats calibrate(const Model& model, const std::vector<std::vector<int>>& windows, const CalibParams& params) {
  const ModelConfig& c = model.config();
  if (windows.empty()) throw Error(ErrorCode::kInvalidArgument, "calibration needs at least one window of tokens");
  int longest = 0;
  for (const auto& w : windows) longest = std::max(longest, int(w.size()));
  if (longest < 1 || longest > c.n_ctx) {
    throw Error(ErrorCode::kInvalidArgument, "calibration windows of up to " + std::to_string(longest) +
                                                 " tokens must fit the model's context of " + std::to_string(c.n_ctx));
  }
  ContextParams cp;
  cp.n_ctx = longest;
  cp.n_batch = longest;
  cp.n_threads = params.threads;
  if (params.bf16) cp.prefill = ContextParams::Prefill::kBf16;
  // The Context shares the caller's model without owning it.
  Context ctx(std::shared_ptr<const Model>(std::shared_ptr<const Model>{}, &model), cp);
  const int threads = ctx.n_threads();
  StatsObserver obs(threads, model.isa(), params.bf16);
  ctx.set_observer(&obs);

  CalibStats out;
  out.token_counts.assign(size_t(c.n_vocab), 0);
  out.layers.resize(size_t(c.n_layers));
  out.head.reset(c.n_embd);
  const int E = c.n_embd;
  std::vector<std::vector<float>> h(windows.size());
  for (size_t w = 0; w < windows.size(); ++w) {
    h[w].resize(windows[w].size() * size_t(E));
    ctx.embed(windows[w], h[w].data());
    for (int t : windows[w]) ++out.token_counts[size_t(t)];
    out.n_tokens += int64_t(windows[w].size());
  }
  // Asymmetric: the unquantized model's hidden states, run beside the quantized ones.
  const bool asym = params.asymmetric && params.quantize_layer;
  std::vector<std::vector<float>> ref;
  if (asym) ref = h;
  // Sequential: each layer's outputs are recomputed from its inputs (saved in `before`) by the
  // weights quantize_layer returns, so the observed run needs only the layer's matmul inputs
  // (Context::observe_layer: the down projection skipped, TinyLlama-1.1B's 22-layer --bpw 4
  // run 915 -> 899 s, its write stage 536 -> 516 s, the same bytes).
  const bool recompute = bool(params.quantize_layer);
  // One window through layer l (asymmetric: the reference first, its inputs captured).
  auto eval_window = [&](int l, size_t w) {
    const int m = int(windows[w].size());
    if (asym) {
      obs.capture = true;
      ctx.eval_layer(l, ref[w].data(), m, 0);
      obs.capture = false;
      obs.with_ref = true;
    }
    if (recompute) ctx.observe_layer(l, h[w].data(), m, 0);
    else ctx.eval_layer(l, h[w].data(), m, 0);
    obs.with_ref = false;
  };
  const size_t total = size_t(c.n_layers) + 1;
  // One layer's statistics and saved inputs are reused by the next layer unless on_layer takes
  // them: their hundreds of MB are not allocated (and faulted in) again for every layer.
  LayerStats ls;
  std::vector<std::vector<float>> before;
  for (int l = 0; l < c.n_layers; ++l) {
    ls.at(MatmulInput::kAttnIn).reset(E);
    ls.at(MatmulInput::kAttnOut).reset(int64_t{c.n_heads} * c.head_dim);
    ls.at(MatmulInput::kFfnIn).reset(E);
    ls.at(MatmulInput::kFfnMid).reset(c.n_ff);
    obs.layer = &ls;
    if (recompute) before = h;  // the layer's inputs, to recompute its outputs
    for (size_t w = 0; w < windows.size(); ++w) eval_window(l, w);
    symmetrize(ls, threads);
    if (recompute) {
      const LayerWeights* q = params.quantize_layer(l, ls);  // null: the model's own
      ctx.set_observer(nullptr);
      std::swap(h, before);
      for (size_t w = 0; w < windows.size(); ++w) ctx.eval_layer(l, h[w].data(), int(windows[w].size()), 0, q);
      ctx.set_observer(&obs);
    }
    if (params.on_layer) params.on_layer(l, std::move(ls));
    else out.layers[size_t(l)] = std::move(ls);
    if (params.progress) params.progress(size_t(l) + 1, total);
  }
  // The head's input: the final norm of the last hidden states (the logits are not needed).
  obs.head = &out.head;
  const F32Kernels& kr = f32_kernels(model.isa());
  std::vector<float> xn;
  for (size_t w = 0; w < windows.size(); ++w) {
    const int m = int(windows[w].size());
    xn.resize(size_t(m) * E);
    if (asym) {
      for (int t = 0; t < m; ++t) kr.rmsnorm(&ref[w][size_t(t) * E], model.output_norm(), &xn[size_t(t) * E], E, c.norm_eps);
      obs.capture = true;
      obs.observe(-1, MatmulInput::kHeadIn, xn.data(), m, E);
      obs.capture = false;
      obs.with_ref = true;
    }
    for (int t = 0; t < m; ++t) kr.rmsnorm(&h[w][size_t(t) * E], model.output_norm(), &xn[size_t(t) * E], E, c.norm_eps);
    obs.observe(-1, MatmulInput::kHeadIn, xn.data(), m, E);
    obs.with_ref = false;
  }
  symmetrize(out.head, threads);
  if (params.progress) params.progress(total, total);
  return out;
}

std::string model_fingerprint(const ImportedModel& m) {
  uint32_t crc = crc32c(m.config.to_json().dump().data(), m.config.to_json().dump().size());
  for (const SourceTensor& t : m.tensors) {
    crc = crc32c(t.name.data(), t.name.size(), crc);
    for (int64_t d : t.shape) crc = crc32c(&d, sizeof(d), crc);
    const uint8_t type = static_cast<uint8_t>(t.src_type);
    crc = crc32c(&type, 1, crc);
    const uint64_t bytes = *qtype_row_bytes(t.src_type, uint64_t(t.shape.back())) * uint64_t(t.shape.size() == 2 ? t.shape[0] : 1);
    const uint64_t n = std::min<uint64_t>(bytes, 4096);
    crc = crc32c(t.data, n, crc);
    crc = crc32c(t.data + bytes - n, n, crc);
  }
  char buf[16];
  std::snprintf(buf, sizeof(buf), "%08x", crc);
  return buf;
}

std::string text_hash(const std::string& text) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "crc32c:%08x:%zu", crc32c(text.data(), text.size()), text.size());
  return buf;
}

// ---- statistics files ---------------------------------------------------------------------------

namespace {

constexpr char kStatsMagic[8] = {'M', 'X', 'L', 'M', 'S', 'T', 'A', 'T'};

void write_input(AtomicFile& f, const InputStats& s) {
  f.write(s.gram.data(), s.gram.size() * sizeof(double));
  f.write(s.amax.data(), s.amax.size() * sizeof(float));
}

}  // namespace

void save_stats(const CalibStats& s, const std::string& path) {
  nlohmann::json h = {{"version", 1},
                      {"model_fingerprint", s.model_fingerprint},
                      {"source", s.source},
                      {"n_tokens", s.n_tokens},
                      {"n_vocab", s.token_counts.size()},
                      {"n_layers", s.layers.size()}};
  nlohmann::json layers = nlohmann::json::array();
  for (const LayerStats& l : s.layers) {
    nlohmann::json ks = nlohmann::json::array();
    for (const InputStats& in : l.in) {
      if (in.k == 0) throw Error(ErrorCode::kInvalidArgument, "save_stats: a layer's statistics were handed out during calibration");
      ks.push_back({{"k", in.k}, {"n_tokens", in.n_tokens}});
    }
    layers.push_back(ks);
  }
  h["layers"] = layers;
  h["head"] = {{"k", s.head.k}, {"n_tokens", s.head.n_tokens}};
  const std::string header = h.dump();
  AtomicFile f(path);
  f.write(kStatsMagic, 8);
  const uint64_t n = header.size();
  f.write(&n, 8);
  f.write(header.data(), header.size());
  f.write(s.token_counts.data(), s.token_counts.size() * sizeof(uint64_t));
  for (const LayerStats& l : s.layers) {
    for (const InputStats& in : l.in) write_input(f, in);
  }
  write_input(f, s.head);
  f.commit();
}

CalibStats load_stats(const std::string& path, const std::string& expected_fingerprint) {
  const MappedFile map(path);
  const uint8_t* p = map.data();
  uint64_t left = map.size(), hn = 0;
  auto bad = [&](const std::string& why) { return Error(ErrorCode::kFormat, "'" + path + "' is not a usable statistics file: " + why); };
  if (left < 16 || std::memcmp(p, kStatsMagic, 8) != 0) throw bad("no MXLMSTAT magic");
  std::memcpy(&hn, p + 8, 8);
  if (hn > left - 16) throw bad("the header runs past the end of the file");
  nlohmann::json h;
  try {
    h = nlohmann::json::parse(std::string(reinterpret_cast<const char*>(p + 16), hn));
  } catch (const nlohmann::json::exception& e) {
    throw bad(std::string("header JSON: ") + e.what());
  }
  p += 16 + hn;
  left -= 16 + hn;
  CalibStats s;
  try {
    if (json_int(h.at("version"), "version", 1, 1) != 1) throw bad("version");
    s.model_fingerprint = json_string(h.at("model_fingerprint"), "model_fingerprint");
    s.source = json_string(h.at("source"), "source");
    s.n_tokens = json_int(h.at("n_tokens"), "n_tokens", 1, INT64_MAX);
    const int64_t n_vocab = json_int(h.at("n_vocab"), "n_vocab", 1, 1 << 24);
    const int64_t n_layers = json_int(h.at("n_layers"), "n_layers", 0, 4096);
    if (!expected_fingerprint.empty() && s.model_fingerprint != expected_fingerprint) {
      throw Error(ErrorCode::kInvalidArgument, "'" + path + "' holds statistics of another model (fingerprint " + s.model_fingerprint +
                                                   ", this model's is " + expected_fingerprint + ")");
    }
    auto take = [&](void* dst, uint64_t bytes) {
      if (bytes > left) throw bad("truncated (" + std::to_string(map.size()) + " bytes)");
      std::memcpy(dst, p, bytes);
      p += bytes;
      left -= bytes;
    };
    auto read_input = [&](const nlohmann::json& j, InputStats& in) {
      in.reset(json_int(j.at("k"), "k", 1, 1 << 20));
      in.n_tokens = json_int(j.at("n_tokens"), "n_tokens", 1, INT64_MAX);
      take(in.gram.data(), in.gram.size() * sizeof(double));
      take(in.amax.data(), in.amax.size() * sizeof(float));
    };
    s.token_counts.resize(size_t(n_vocab));
    take(s.token_counts.data(), s.token_counts.size() * sizeof(uint64_t));
    const nlohmann::json& layers = h.at("layers");
    if (!layers.is_array() || int64_t(layers.size()) != n_layers) throw bad("layer list");
    s.layers.resize(size_t(n_layers));
    for (int64_t l = 0; l < n_layers; ++l) {
      if (!layers[size_t(l)].is_array() || layers[size_t(l)].size() != 4) throw bad("layer " + std::to_string(l));
      for (size_t i = 0; i < 4; ++i) read_input(layers[size_t(l)][i], s.layers[size_t(l)].in[i]);
    }
    read_input(h.at("head"), s.head);
    if (left != 0) throw bad(std::to_string(left) + " bytes past the statistics");
  } catch (const nlohmann::json::exception& e) {
    throw bad(std::string("header: ") + e.what());
  }
  return s;
}

}  // namespace mxlm
