#include "mxlm/generate.h"

#include <algorithm>
#include <chrono>
#include <cstdint>

#include "base/error.h"

namespace mxlm {

GenerateStats generate(Context& ctx, const std::vector<int>& prompt, const GenerateParams& params,
                       const std::function<bool(int)>& on_token) {
  Sampler sampler(params.sampler);
  return generate(ctx, sampler, prompt, params, on_token);
}

GenerateStats generate(Context& ctx, Sampler& sampler, const std::vector<int>& prompt, const GenerateParams& params,
                       const std::function<bool(int)>& on_token) {
  using clock = std::chrono::steady_clock;
  if (prompt.empty()) throw Error(ErrorCode::kInvalidArgument, "empty prompt: there is nothing to continue");
  const int room = ctx.n_ctx() - ctx.n_past();
  if (static_cast<int64_t>(prompt.size()) >= room) {
    throw Error(ErrorCode::kContextFull, "prompt of " + std::to_string(prompt.size()) + " tokens does not fit the context of " +
                                             std::to_string(ctx.n_ctx()) + " tokens (" + std::to_string(ctx.n_past()) +
                                             " used; one more is needed to generate); shorten the prompt or raise --ctx");
  }
  const int n_vocab = ctx.model().config().n_vocab;
  const int eos = ctx.model().config().eos_id;
  GenerateStats st;
  st.n_prompt = static_cast<int>(prompt.size());
  std::vector<int> history = prompt;

  auto t0 = clock::now();
  const float* logits = ctx.eval(prompt, false);
  st.prompt_seconds = std::chrono::duration<double>(clock::now() - t0).count();

  auto t1 = clock::now();
  const int limit = params.n_predict >= 0 ? params.n_predict : params.context_shift ? INT32_MAX : ctx.n_ctx();
  while (st.n_generated < limit) {
    const int tok = sampler.sample(logits, n_vocab, history);
    history.push_back(tok);
    ++st.n_generated;
    if ((params.stop_at_eos && tok == eos) ||
        std::find(params.stop_tokens.begin(), params.stop_tokens.end(), tok) != params.stop_tokens.end()) {
      st.hit_eos = true;
      break;
    }
    if (!on_token(tok)) {
      st.stopped = true;
      break;
    }
    if (st.n_generated >= limit) break;
    if (ctx.n_past() >= ctx.n_ctx()) {
      const int keep = std::clamp(params.n_keep, 0, ctx.n_past() - 2);
      if (!params.context_shift || ctx.n_past() - keep < 2) {
        st.context_full = true;
        break;
      }
      ctx.shift(keep, (ctx.n_past() - keep) / 2);
      ++st.n_shifts;
    }
    const int one[1] = {tok};
    logits = ctx.eval(one, false);
  }
  st.gen_seconds = std::chrono::duration<double>(clock::now() - t1).count();
  return st;
}

}  // namespace mxlm
