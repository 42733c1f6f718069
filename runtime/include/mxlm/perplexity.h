// Perplexity over a text, by the protocol of ../shared/README.md: documents separated by
// "\n\x1e\n", token stream = BOS + ids + EOS per document, windows of ctx+1 tokens evaluated
// each from an empty KV cache, predicting tokens 1..ctx of each window.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "mxlm/model.h"

namespace mxlm {

// Splits at "\n\x1e\n" (documents that are empty or only whitespace are skipped) and
// tokenizes each as BOS + ids + EOS. Text without separators is one document.
std::vector<int> tokenize_documents(const Tokenizer& tok, const std::string& text, int bos_id, int eos_id);

struct PplParams {
  int ctx = 512;     // predictions per window (the window holds ctx + 1 tokens)
  int windows = 0;   // 0: as many as the stream holds
  // Optional base model (e.g. the unquantized one) evaluated on the same windows: the result
  // then holds the KL divergence of this model's next-token distribution from the base's, as
  // llama-perplexity's KL mode reports it. Same vocabulary required; its context must fit ctx.
  Context* base = nullptr;
};

struct PplResult {
  double ppl = 0, mean_nll = 0;
  int64_t n_predictions = 0;
  int windows = 0;
  double seconds = 0;
  // With a base model: KL(P_base || P_model) per prediction, in nats (mean and 99th percentile),
  // the fraction of predictions whose argmax agrees, and the base's ppl on the same tokens.
  bool has_base = false;
  double kl_mean = 0, kl_p99 = 0, top1_agreement = 0, base_ppl = 0, base_mean_nll = 0;
};

// Throws Error (kInvalidArgument) when the stream is shorter than one window or ctx exceeds
// the context's size (the window's last token is only predicted, so ctx tokens must fit), or
// when the base model's vocabulary differs.
PplResult perplexity(Context& ctx, const std::vector<int>& stream, const PplParams& params,
                     const std::function<void(int done, int total, double running_ppl)>& progress = {});

}  // namespace mxlm
