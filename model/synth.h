// Synthetic models: random weights in the shapes of real models, in any format, because large
// real models are not available offline. The weights are Gaussian (std 0.02, norms 1), the
// tokenizer a generated SentencePiece vocabulary of the shape's size.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "kernels/qtype.h"
#include "model/config.h"

namespace mxlm {

struct SynthShape {
  std::string name;
  ModelConfig config;
  std::string description;
};

// The known shapes: tinyllama-1.1b, llama-7b, llama-7b-layers (4 layers of llama-7b),
// llama-13b-layers, tinymix-26m.
const std::vector<SynthShape>& synth_shapes();

struct SynthOptions {
  std::string shape = "tinyllama-1.1b";
  QType qtype = QType::kQ4G32;  // every matrix (embedding and output head included)
  int n_layers = 0;             // 0: the shape's
  uint64_t seed = 1;
  int threads = 0;
};

// Writes the synthetic model atomically. Throws Error (kInvalidArgument) for an unknown shape,
// naming the known ones.
void synth_model(const std::string& out_path, const SynthOptions& options,
                 const std::function<void(size_t, size_t)>& progress = {});

}  // namespace mxlm
