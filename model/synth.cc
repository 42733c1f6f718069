#include "model/synth.h"

#include <omp.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "base/error.h"
#include "kernels/quant.h"
#include "kernels/splitmix.h"
#include "model/mxlm_file.h"
#include "tokenizer/tokenizer.h"

namespace mxlm {

namespace {

ModelConfig llama(int vocab, int embd, int layers, int heads, int kv_heads, int ff, int ctx, float eps, float theta) {
  ModelConfig c;
  c.n_vocab = vocab;
  c.n_embd = embd;
  c.n_layers = layers;
  c.n_heads = heads;
  c.n_kv_heads = kv_heads;
  c.head_dim = embd / heads;
  c.n_ff = ff;
  c.n_ctx = ctx;
  c.norm_eps = eps;
  c.rope_theta = theta;
  return c;
}

// A counter-based Gaussian: the same value for (seed, tensor, index) on every platform and
// thread split (splitmix64 + Box-Muller).
float gaussian(uint64_t seed, uint64_t i) {
  const uint64_t a = splitmix64_at(seed ^ (2 * i)), b = splitmix64_at(seed ^ (2 * i + 1));
  const double u1 = (static_cast<double>(a >> 11) + 1.0) * (1.0 / 9007199254740992.0);
  const double u2 = static_cast<double>(b >> 11) * (1.0 / 9007199254740992.0);
  return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
}

std::string synth_tokenizer(int n_vocab) {
  std::vector<VocabEntry> v;
  v.push_back({"<unk>", 0.0f, VocabEntry::kUnknown});
  v.push_back({"<s>", 0.0f, VocabEntry::kControl});
  v.push_back({"</s>", 0.0f, VocabEntry::kControl});
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    std::snprintf(buf, sizeof(buf), "<0x%02X>", b);
    v.push_back({buf, 0.0f, VocabEntry::kByte});
  }
  for (int i = static_cast<int>(v.size()); i < n_vocab; ++i) {
    v.push_back({"\xe2\x96\x81t" + std::to_string(i), -static_cast<float>(i), VocabEntry::kNormal});
  }
  return build_spm_model_proto(v, SpmBuildOptions{});
}

}  // namespace

const std::vector<SynthShape>& synth_shapes() {
  static const std::vector<SynthShape> shapes = {
      {"tinyllama-1.1b", llama(32000, 2048, 22, 32, 4, 5632, 2048, 1e-5f, 10000.0f), "TinyLlama 1.1B (22 layers, GQA 32/4)"},
      {"llama-7b", llama(32000, 4096, 32, 32, 32, 11008, 4096, 1e-5f, 10000.0f), "Llama-2 7B (32 layers)"},
      {"llama-7b-layers", llama(32000, 4096, 4, 32, 32, 11008, 4096, 1e-5f, 10000.0f), "4 layers of Llama-2 7B"},
      {"llama-13b-layers", llama(32000, 5120, 4, 40, 40, 13824, 4096, 1e-5f, 10000.0f), "4 layers of Llama-2 13B"},
      {"tinymix-26m", llama(4096, 512, 8, 8, 4, 1280, 512, 1e-5f, 10000.0f), "the tinymix-26m shape"},
  };
  return shapes;
}

void synth_model(const std::string& out_path, const SynthOptions& options, const std::function<void(size_t, size_t)>& progress) {
  const SynthShape* shape = nullptr;
  std::string known;
  for (const auto& s : synth_shapes()) {
    known += (known.empty() ? "" : ", ") + s.name;
    if (s.name == options.shape) shape = &s;
  }
  if (!shape) throw Error(ErrorCode::kInvalidArgument, "unknown shape '" + options.shape + "'; known: " + known);
  ModelConfig c = shape->config;
  if (options.n_layers > 0) c.n_layers = options.n_layers;
  MxlmWriteInput in;
  in.config = c;
  in.tokenizer_blob = synth_tokenizer(c.n_vocab);
  in.provenance = {{"source", "synthetic"}, {"shape", shape->name}, {"seed", options.seed}};
  in.quantization = {{"method", "rtn"}, {"qtype", qtype_info(options.qtype).name}, {"synthetic", true}};
  const int threads = options.threads > 0 ? options.threads : omp_get_num_procs();
  uint64_t tensor_id = 0;
  auto matrix = [&](const std::string& name, int64_t n, int64_t k) {
    TensorToWrite t;
    t.name = name;
    t.shape = {n, k};
    t.qtype = options.qtype;
    const uint64_t seed = splitmix64_at(options.seed * 1000003 + ++tensor_id);
    const QType q = options.qtype;
    t.fill = [seed, n, k, q, threads](uint8_t* dst, size_t) {
      const size_t rb = *qtype_row_bytes(q, static_cast<uint64_t>(k));
#pragma omp parallel num_threads(threads)
      {
        std::vector<float> row(static_cast<size_t>(k));
#pragma omp for schedule(dynamic, 32)
        for (int64_t r = 0; r < n; ++r) {
          for (int64_t i = 0; i < k; ++i) row[size_t(i)] = 0.02f * gaussian(seed, static_cast<uint64_t>(r * k + i));
          quantize_row(q, row.data(), k, dst + static_cast<size_t>(r) * rb);
        }
      }
    };
    in.tensors.push_back(std::move(t));
  };
  auto norm = [&](const std::string& name, int64_t n) {
    TensorToWrite t;
    t.name = name;
    t.shape = {n};
    t.qtype = QType::kF32;
    t.fill = [n](uint8_t* dst, size_t) {
      auto* f = reinterpret_cast<float*>(dst);
      for (int64_t i = 0; i < n; ++i) f[i] = 1.0f;
    };
    in.tensors.push_back(std::move(t));
  };
  using namespace tensor_names;
  const int64_t q = int64_t{c.n_heads} * c.head_dim, kv = int64_t{c.n_kv_heads} * c.head_dim;
  matrix(kTokEmbd, c.n_vocab, c.n_embd);
  norm(kOutputNorm, c.n_embd);
  matrix(kOutput, c.n_vocab, c.n_embd);
  for (int i = 0; i < c.n_layers; ++i) {
    norm(layer(i, kAttnNorm), c.n_embd);
    matrix(layer(i, kAttnQ), q, c.n_embd);
    matrix(layer(i, kAttnK), kv, c.n_embd);
    matrix(layer(i, kAttnV), kv, c.n_embd);
    matrix(layer(i, kAttnO), c.n_embd, q);
    norm(layer(i, kFfnNorm), c.n_embd);
    matrix(layer(i, kFfnGate), c.n_ff, c.n_embd);
    matrix(layer(i, kFfnUp), c.n_ff, c.n_embd);
    matrix(layer(i, kFfnDown), c.n_embd, c.n_ff);
  }
  write_mxlm(out_path, in, progress);
}

}  // namespace mxlm
