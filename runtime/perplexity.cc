#include "mxlm/perplexity.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "base/error.h"
#include "runtime/log_softmax.h"
#include "tokenizer/tokenizer.h"

namespace mxlm {

std::vector<int> tokenize_documents(const Tokenizer& tok, const std::string& text, int bos_id, int eos_id) {
  static const std::string kSep = "\n\x1e\n";
  std::vector<int> out;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find(kSep, start);
    if (end == std::string::npos) end = text.size();
    const std::string_view doc(text.data() + start, end - start);
    if (doc.find_first_not_of(" \t\r\n\v\f") != std::string_view::npos) {
      out.push_back(bos_id);
      const std::vector<int> ids = tok.encode(doc, false);
      out.insert(out.end(), ids.begin(), ids.end());
      out.push_back(eos_id);
    }
    if (end == text.size()) break;
    start = end + kSep.size();
  }
  return out;
}

PplResult perplexity(Context& ctx, const std::vector<int>& stream, const PplParams& params,
                     const std::function<void(int, int, double)>& progress) {
  if (params.ctx < 1 || params.ctx > ctx.n_ctx()) {
    throw Error(ErrorCode::kInvalidArgument, "perplexity window of " + std::to_string(params.ctx) + " tokens does not fit the context of " +
                                                 std::to_string(ctx.n_ctx()) + " tokens");
  }
  const int64_t win = params.ctx + 1;
  const int available = static_cast<int>((static_cast<int64_t>(stream.size()) - 1) / params.ctx);
  if (available < 1) {
    throw Error(ErrorCode::kInvalidArgument, "the text has " + std::to_string(stream.size()) + " tokens, fewer than one window of " +
                                                 std::to_string(win));
  }
  int windows = params.windows > 0 ? params.windows : available;
  if (windows > available) {
    throw Error(ErrorCode::kInvalidArgument, "the text has " + std::to_string(stream.size()) + " tokens, enough for " +
                                                 std::to_string(available) + " windows of " + std::to_string(params.ctx) +
                                                 ", not " + std::to_string(windows));
  }
  const int n_vocab = ctx.model().config().n_vocab;
  const F32Kernels& kr = f32_kernels(ctx.model().isa());
  Context* base = params.base;
  if (base) {
    if (base->model().config().n_vocab != n_vocab) {
      throw Error(ErrorCode::kInvalidArgument, "the base model's vocabulary has " + std::to_string(base->model().config().n_vocab) +
                                                   " tokens, this model's " + std::to_string(n_vocab));
    }
    if (params.ctx > base->n_ctx()) {
      throw Error(ErrorCode::kInvalidArgument, "perplexity window of " + std::to_string(params.ctx) +
                                                   " tokens does not fit the base model's context of " + std::to_string(base->n_ctx()) + " tokens");
    }
  }
  auto t0 = std::chrono::steady_clock::now();
  double nll = 0, base_nll = 0;
  int64_t count = 0, agree = 0;
  std::vector<double> kl, lp(static_cast<size_t>(n_vocab)), lq(static_cast<size_t>(n_vocab));
  if (base) kl.reserve(static_cast<size_t>(windows) * params.ctx);
  std::vector<float> base_logits;
  for (int w = 0; w < windows; ++w) {
    const int* tokens = stream.data() + int64_t{w} * params.ctx;
    if (base) {
      base->reset();
      const float* bl = base->eval(std::span<const int>(tokens, params.ctx), true);
      base_logits.assign(bl, bl + int64_t{params.ctx} * n_vocab);
    }
    ctx.reset();
    // Evaluate the first ctx tokens; logits at position i predict token i + 1.
    const float* logits = ctx.eval(std::span<const int>(tokens, params.ctx), true);
    for (int i = 0; i < params.ctx; ++i) {
      const float* l = logits + int64_t{i} * n_vocab;
      log_softmax(kr, l, n_vocab, lq.data());
      nll -= lq[tokens[i + 1]];
      ++count;
      if (!base) continue;
      const float* b = base_logits.data() + int64_t{i} * n_vocab;
      log_softmax(kr, b, n_vocab, lp.data());
      base_nll -= lp[tokens[i + 1]];
      // KL(P || Q) = sum_v p_v (log p_v - log q_v): exactly 0 when the logits are identical.
      double d = 0;
      for (int v = 0; v < n_vocab; ++v) d += std::exp(lp[v]) * (lp[v] - lq[v]);
      kl.push_back(std::max(d, 0.0));
      agree += (std::max_element(l, l + n_vocab) - l) == (std::max_element(b, b + n_vocab) - b);
    }
    if (progress) progress(w + 1, windows, std::exp(nll / count));
  }
  if (base) base->reset();
  ctx.reset();
  PplResult r;
  r.mean_nll = nll / count;
  r.ppl = std::exp(r.mean_nll);
  r.n_predictions = count;
  r.windows = windows;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (base) {
    r.has_base = true;
    double sum = 0;
    for (double d : kl) sum += d;
    r.kl_mean = sum / double(kl.size());
    // The 99th percentile: the value below which 99 % of the predictions' KL lie (nearest rank).
    const size_t k = std::min(kl.size() - 1, static_cast<size_t>(std::ceil(0.99 * double(kl.size()))) - 1);
    std::nth_element(kl.begin(), kl.begin() + static_cast<std::ptrdiff_t>(k), kl.end());
    r.kl_p99 = kl[k];
    r.top1_agreement = double(agree) / double(count);
    r.base_mean_nll = base_nll / double(count);
    r.base_ppl = std::exp(r.base_mean_nll);
  }
  return r;
}

}  // namespace mxlm
