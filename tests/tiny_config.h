// The smallest valid model config, for container and parser tests (kept apart from
// test_util.h, which the kernels-only NEON build includes without the model library).
#pragma once

#include "model/config.h"

namespace mxlm::test {

// A valid config of the smallest shape (8-token vocabulary, 4-wide, one layer) for container
// and parser tests.
inline ModelConfig tiny_config(int n_vocab = 8) {
  ModelConfig c;
  c.n_vocab = n_vocab;
  c.n_embd = 4;
  c.n_layers = 1;
  c.n_heads = 2;
  c.n_kv_heads = 1;
  c.head_dim = 2;
  c.n_ff = 6;
  c.n_ctx = 16;
  return c;
}

}  // namespace mxlm::test
