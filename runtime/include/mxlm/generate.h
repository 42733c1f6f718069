// The generation loop: prefill the prompt, then sample and decode token by token.
#pragma once

#include <functional>
#include <vector>

#include "mxlm/model.h"
#include "mxlm/sampler.h"

namespace mxlm {

struct GenerateParams {
  int n_predict = 128;      // tokens to generate at most (-1: until EOS, or the context is full)
  bool stop_at_eos = true;
  // Tokens that end the text as EOS does (hit_eos), whatever stop_at_eos: a chat template's
  // end-of-turn tokens (<|im_end|>, <|eot_id|>, <end_of_turn>, ...).
  std::vector<int> stop_tokens;
  // When the context fills: keep its first n_keep tokens, drop the older half of the rest
  // (Context::shift) and go on; false: stop (context_full).
  bool context_shift = false;
  int n_keep = 1;
  SamplerParams sampler;
};

struct GenerateStats {
  int n_prompt = 0, n_generated = 0;
  double prompt_seconds = 0, gen_seconds = 0;
  bool hit_eos = false, context_full = false;
  bool stopped = false;  // on_token returned false
  int n_shifts = 0;  // context shifts done
  double prompt_tok_per_s() const { return prompt_seconds > 0 ? n_prompt / prompt_seconds : 0; }
  double gen_tok_per_s() const { return gen_seconds > 0 ? n_generated / gen_seconds : 0; }
};

// Runs the prompt (token ids, BOS included as the caller wants) from the context's current
// position, then generates. `on_token` receives each generated id and returns false to stop.
// Throws Error (kInvalidArgument) for an empty prompt and (kContextFull) when the prompt
// does not fit the context with room for one generated token.
GenerateStats generate(Context& ctx, const std::vector<int>& prompt, const GenerateParams& params,
                       const std::function<bool(int)>& on_token);
// The same with the caller's sampler (params.sampler is not used): its generator goes on from
// where earlier calls left it. The context ends holding the prompt and every generated token but
// the last (which was sampled, not evaluated).
GenerateStats generate(Context& ctx, Sampler& sampler, const std::vector<int>& prompt, const GenerateParams& params,
                       const std::function<bool(int)>& on_token);

}  // namespace mxlm
