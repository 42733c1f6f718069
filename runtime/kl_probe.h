// Per-tensor and whole-model KL measurements of the mixed-precision quantizer (autoquant.cc):
// the KL divergence KL(P_base || P_swapped) per token, in nats, of the model's next-token
// distributions on a few token windows, with one tensor (kl) or any set of tensors (kl_model)
// replaced by an encoding. The base's hidden state at every layer's input and its
// log-probabilities (and probabilities) are computed once, so swapping a tensor of layer l
// costs layers l .. L-1 and the head per window; a whole model costs every layer.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "mxlm/model.h"

namespace mxlm {

// The member of layer `layer`'s weights `lw` that holds tensor `name` (blk.<layer>.attn_q ..
// ffn_down), or null when `name` is not one of that layer's matmuls.
Weight* layer_matmul(LayerWeights& lw, int layer, const std::string& name);

// The weights a KlProbe runs the other tensors with (instead of the model's own): the layers'
// matmuls and, if has_head, the head; `bytes` holds what they point into.
struct ProbeBase {
  std::vector<LayerWeights> layers;
  Weight head;
  bool has_head = false;
  std::vector<std::vector<uint8_t>> bytes;
};

class KlProbe {
 public:
  // keep_hidden false: only the base's log-probabilities are kept (kl_model alone). `base`
  // (optional; kl() only, kl_model runs the model's own weights) must outlive the probe, as must
  // the model.
  KlProbe(const Model& model, std::vector<std::vector<int>> windows, int threads, bool keep_hidden = true,
          const ProbeBase* base = nullptr);

  // Mean KL(P_base || P) per token with tensor `name` (of `layer`, or -1: the head or the token
  // embedding, which when tied is the head too) swapped for `swapped`.
  double kl(const std::string& name, int layer, const Weight& swapped);

  // Mean KL per token of a whole quantized model: every tensor named in `swapped` replaced
  // (the others the model's own), all layers run from the embedding.
  double kl_model(const std::map<std::string, Weight>& swapped);

 private:
  const LayerWeights* base_layer(int l) const { return base_ ? &base_->layers[size_t(l)] : &model_.layers()[size_t(l)]; }
  const Weight* base_head() const { return base_ && base_->has_head ? &base_->head : nullptr; }
  // Adds KL(P_base || P) of window w's n tokens (logits_ holds P's logits); d: scratch.
  void accumulate(size_t w, int n, std::vector<double>& d, double& sum, int64_t& count) const;
  void log_softmax(const float* l, float* out) const;

  const Model& model_;
  std::vector<std::vector<int>> windows_;
  const ProbeBase* base_ = nullptr;
  int threads_ = 1;
  std::unique_ptr<Context> ctx_;
  std::vector<std::vector<std::vector<float>>> hidden_;  // [window][layer 0..L][n × E]
  std::vector<std::vector<float>> base_lp_, base_p_;    // [window][n × V]: log P_base, P_base
  std::vector<float> logits_;
};

}  // namespace mxlm
