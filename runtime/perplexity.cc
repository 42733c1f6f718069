#include "mxlm/perplexity.h"

#include <chrono>
#include <cmath>

#include "kernels/common.h"
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
  auto t0 = std::chrono::steady_clock::now();
  double nll = 0;
  int64_t count = 0;
  for (int w = 0; w < windows; ++w) {
    const int* tokens = stream.data() + int64_t{w} * params.ctx;
    ctx.reset();
    // Evaluate the first ctx tokens; logits at position i predict token i + 1.
    const float* logits = ctx.eval(std::span<const int>(tokens, params.ctx), true);
    for (int i = 0; i < params.ctx; ++i) {
      const float* l = logits + int64_t{i} * n_vocab;
      float mx = l[0];
      for (int v = 1; v < n_vocab; ++v) mx = std::max(mx, l[v]);
      double sum = 0;
      for (int v = 0; v < n_vocab; ++v) sum += std::exp(double(l[v]) - mx);
      nll += (std::log(sum) + mx) - l[tokens[i + 1]];
      ++count;
    }
    if (progress) progress(w + 1, windows, std::exp(nll / count));
  }
  ctx.reset();
  PplResult r;
  r.mean_nll = nll / count;
  r.ppl = std::exp(r.mean_nll);
  r.n_predictions = count;
  r.windows = windows;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace mxlm
