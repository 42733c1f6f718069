#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstdio>
#include <string>

#include "base/error.h"
#include "model/file_util.h"
#include "mxlm/perplexity.h"
#include "tokenizer/tokenizer.h"
#include "tools/commands.h"

namespace mxlm {

void reexec_with_huge_malloc(char** argv) {
  if (std::getenv("MXLM_NO_HUGE_MALLOC")) return;
  const char* old = std::getenv("GLIBC_TUNABLES");
  const std::string tunables = old ? old : "";
  if (tunables.find("glibc.malloc.hugetlb") != std::string::npos) return;  // set, by the user or by us
  // Huge pages, and large blocks kept in the heap once freed (no mmap per block, no trim): the
  // next layer's Gram matrices and encodings reuse pages already faulted in and zeroed.
  const std::string ours = "glibc.malloc.hugetlb=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736";
  const std::string next = tunables.empty() ? ours : tunables + ":" + ours;
  if (::setenv("GLIBC_TUNABLES", next.c_str(), 1) != 0) return;
  ::execv("/proc/self/exe", argv);  // returns only on failure: go on as we are
  if (old) ::setenv("GLIBC_TUNABLES", old, 1);
  else ::unsetenv("GLIBC_TUNABLES");
}

std::string human_bytes(uint64_t b) {
  char buf[32];
  if (b >= (uint64_t{1} << 30)) std::snprintf(buf, sizeof(buf), "%.2f GiB", b / double(uint64_t{1} << 30));
  else if (b >= (uint64_t{1} << 20)) std::snprintf(buf, sizeof(buf), "%.2f MiB", b / double(uint64_t{1} << 20));
  else std::snprintf(buf, sizeof(buf), "%llu B", static_cast<unsigned long long>(b));
  return buf;
}

void progress_bar(const char* what, size_t done, size_t total) {
  static const bool tty = ::isatty(::fileno(stderr));
  static std::string current;
  static std::chrono::steady_clock::time_point start;
  const auto now = std::chrono::steady_clock::now();
  if (current != what || done == 0) {
    current = what;
    start = now;
  }
  const double elapsed = std::chrono::duration<double>(now - start).count();
  if (!tty) {
    if (done == total) std::fprintf(stderr, "%s: %zu/%zu done in %.1f s\n", what, done, total, elapsed);
    return;
  }
  const int width = 30;
  const int filled = total ? static_cast<int>(width * done / total) : width;
  char eta[32] = "";
  if (done > 0 && done < total) std::snprintf(eta, sizeof(eta), ", ETA %.0f s", elapsed * double(total - done) / double(done));
  std::fprintf(stderr, "\r%s [%.*s%*s] %zu/%zu %.0f s%s   ", what, filled, "##############################", width - filled, "", done,
               total, elapsed, eta);
  if (done == total) std::fputc('\n', stderr);
  std::fflush(stderr);
}

QType parse_qtype(const std::string& name, const char* option) {
  auto q = qtype_from_name(name);
  if (!q) {
    std::string all;
    for (const auto& info : kQTypes) all += (all.empty() ? "" : ", ") + std::string(info.name);
    throw Error(ErrorCode::kInvalidArgument, std::string(option) + " " + name + " is not a format; known: " + all);
  }
  return *q;
}

WeightMemory parse_weight_memory(const std::string& name, const char* option) {
  if (auto m = weight_memory_from_name(name)) return *m;
  throw Error(ErrorCode::kInvalidArgument, std::string(option) + " " + name + " is not a weight memory; known: map, copy, huge");
}

std::shared_ptr<const Model> open_model(const std::string& path, const std::string& memory, int threads) {
  LoadOptions lo;
  lo.threads = threads;
  lo.memory = parse_weight_memory(memory, "--memory");
  std::string notice;
  auto model = Model::open(path, lo, &notice);
  if (!notice.empty()) std::fprintf(stderr, "mxlm: %s\n", notice.c_str());
  return model;
}

std::vector<KvFormats> parse_kv_option(const std::string& spec) {
  if (auto plan = parse_kv_plan(spec)) return *plan;
  throw Error(ErrorCode::kInvalidArgument, "--kv " + spec +
                                               " is not a KV cache format; known: f32, f16, bf16, k<t>v<t> with t in 32, 16, "
                                               "bf16, 8, 4, 2 (k8v8, k4v4, k2v2 ...), or one per layer joined by '/'");
}

void add_kv_options(CLI::App* app, KvArgs& a) {
  app->add_option("--kv", a.kv, std::string(kKvHelp) + "; or auto: each layer's formats by measured sensitivity (--kv-bits, --kv-calib)");
  app->add_option("--kv-window", a.window, kKvWindowHelp)->check(CLI::NonNegativeNumber);
  app->add_option("--kv-bits", a.bits, "--kv auto: bits per cached K/V element, scales included (k4v4 = 5, k2v2 = 3)")
      ->check(CLI::PositiveNumber);
  app->add_option("--kv-calib", a.calib, "--kv auto: calibration text whose next-token KL divergences measure each layer's formats");
  app->add_option("--kv-calib-windows", a.calib_windows, "--kv auto: windows of 512 tokens of the calibration text")
      ->check(CLI::PositiveNumber);
}

void apply_kv(const KvArgs& a, const std::shared_ptr<const Model>& model, int threads, ContextParams& cp) {
  cp.kv_window = a.window;
  if (a.kv != "auto") {
    if (a.bits > 0 || !a.calib.empty()) {
      throw Error(ErrorCode::kInvalidArgument, "--kv-bits and --kv-calib choose the formats of --kv auto, not of --kv " + a.kv);
    }
    cp.kv_layers = parse_kv_option(a.kv);
    return;
  }
  if (a.bits <= 0 || a.calib.empty()) {
    throw Error(ErrorCode::kInvalidArgument, "--kv auto needs --kv-bits (the budget) and --kv-calib (the text that measures it)");
  }
  const std::string text = read_file(a.calib);
  if (size_t bad = find_invalid_utf8(text); bad != std::string::npos) {
    throw Error(ErrorCode::kInvalidArgument, "'" + a.calib + "' is not valid UTF-8 (bad byte at offset " + std::to_string(bad) + ")");
  }
  const ModelConfig& c = model->config();
  const std::vector<int> stream = tokenize_documents(model->tokenizer(), text, c.bos_id, c.eos_id);
  KvProfileParams kp;
  kp.ctx = std::min(kp.ctx, c.n_ctx);
  kp.windows = a.calib_windows;
  kp.threads = threads;
  kp.kv_window = a.window;
  const KvProfile prof = measure_kv_profile(model, stream, kp, [](int done, int total) {
    std::fprintf(stderr, "\rmxlm: measuring KV formats: %d/%d", done, total);
    if (done == total) std::fputc('\n', stderr);
  });
  const int n_ctx = cp.n_ctx > 0 ? cp.n_ctx : c.n_ctx;
  const KvPlan plan = plan_kv(prof, a.bits, n_ctx);
  std::fprintf(stderr, "mxlm: KV plan (auto, %.2f bits per element read at ctx %d, predicted KL %.4g, measured in %.1f s): --kv %s\n", plan.bits, n_ctx,
               plan.predicted_kl, prof.seconds, kv_plan_name(plan.layers).c_str());
  cp.kv_layers = plan.layers;
}

void add_autoquant_options(CLI::App* app, AutoQuantArgs& a) {
  app->add_option("--calib", a.calib, "calibration text (documents split at lines holding only 0x1E); default: text the model samples itself");
  app->add_option("--calib-tokens", a.calib_tokens, "calibration tokens")->check(CLI::PositiveNumber);
  app->add_option("--calib-precision", a.calib_precision,
                  "arithmetic of the calibration passes: f32, bf16 (the float weights' matmuls and the Gram products in bfloat16, "
                  "~2x the f32 GEMM on AVX-512) or auto (bf16 for large models on AVX-512, else f32)")
      ->check(CLI::IsMember({"auto", "f32", "bf16"}));
  app->add_option("--kl-tokens", a.kl_tokens, "tokens of each KL run (per fit point) that calibrates a tensor's sensitivity")->check(CLI::PositiveNumber);
  app->add_option("--kl-points", a.kl_points,
                  "KL measurements per tensor: 2 (a power law through the ~3.5- and ~2.5-bit candidates), 1 (a line) or 3 (also ~5 bits)")
      ->check(CLI::IsMember({1, 2, 3}));
  app->add_option("--kl-layers", a.kl_layers, "KL runs on this many layers spread over the depth, the others interpolated (0: every layer, the default; 4 for large models, whose statistics pass 1 GiB)")
      ->check(CLI::NonNegativeNumber);
  app->add_option("--candidate-rows", a.candidate_rows,
                  "score each tensor's candidate formats on this many of its rows, evenly spaced (0: every row, the default; 256 for "
                  "large models)")
      ->check(CLI::NonNegativeNumber);
  app->add_option("--targets", a.targets,
                  "what each layer's encoding aims at: asymmetric (its output at the unquantized model's, from the inputs of the model whose earlier "
                  "layers are quantized: GPTAQ's asymmetric calibration), sequential (GPTQ's order: those inputs' statistics alone) or plain (the "
                  "unquantized model's statistics)")
      ->check(CLI::IsMember({"asymmetric", "sequential", "plain"}));
  app->add_option("--kl-text", a.kl_text, "text of the per-tensor KL runs: calib (the calibration text), self (sampled by the model) or both")
      ->check(CLI::IsMember({"calib", "self", "both"}));
  app->add_option("--stats", a.stats_in, "read calibration statistics written by quantize --save-stats");
  app->add_option("--encoder", a.encoder, "encoder with calibration: gptq, weighted (importance-weighted RTN) or rtn")
      ->check(CLI::IsMember({"gptq", "weighted", "rtn"}));
  app->add_option("--refine", a.refine, "coordinate-descent passes after GPTQ (each weight re-rounded against the others' errors)")
      ->check(CLI::NonNegativeNumber);
  app->add_option("--candidates", a.candidates, "formats the allocation chooses among (default: q2k_g32 .. q8_g64)")->delimiter(',');
  app->add_flag("--no-select", a.no_select, "keep the allocation's plan without measuring it against its variants (linear fit, uniform floors)");
  app->add_option("--select-tokens", a.select_tokens, "tokens of the held-out text the selection measures each plan's KL on")->check(CLI::PositiveNumber);
  app->add_option("--select-text", a.select_text, "held-out text of the selection's KL: self (sampled by the model), calib (the calibration text after the tokens it used) or both")
      ->check(CLI::IsMember({"calib", "self", "both"}));
  app->add_option("--select-encodings", a.select_encodings, "the encodings the selection measures each plan with: measured (the candidates') or written (each plan encoded as the file would be: slower, and no better on tinymix)")
      ->check(CLI::IsMember({"written", "measured"}));
  app->add_flag("--row-splits", a.row_splits, "also offer each tensor a split of its rows into two formats (the rows whose error falls most in the higher one)");
  app->add_flag("--outliers", a.outliers, "also offer each tensor sparse f16 outliers (0.1-1 % of its weights, picked by output-error reduction) with any format");
  app->add_flag("--rotate", a.rotate, "rotate the residual stream and value heads (random Hadamard, folded exactly into the weights) before quantizing");
}

AutoQuantOptions autoquant_options(const AutoQuantArgs& a) {
  AutoQuantOptions o;
  for (const std::string& c : a.candidates) o.candidates.push_back(parse_qtype(c, "--candidates"));
  o.encode.method = a.encoder == "rtn" ? EncodeMethod::kRtn : a.encoder == "weighted" ? EncodeMethod::kWeighted : EncodeMethod::kGptq;
  if (a.refine >= 0) o.encode.refine = a.refine;
  if (!a.calib.empty()) {
    o.calib_text = read_file(a.calib);
    if (o.calib_text.find_first_not_of(" \t\r\n\v\f\x1e") == std::string::npos) {
      throw Error(ErrorCode::kInvalidArgument, "the calibration text '" + a.calib + "' is empty");
    }
  }
  o.calib_tokens = a.calib_tokens;
  o.calib_precision = a.calib_precision == "f32"    ? AutoQuantOptions::CalibPrecision::kF32
                      : a.calib_precision == "bf16" ? AutoQuantOptions::CalibPrecision::kBf16
                                                    : AutoQuantOptions::CalibPrecision::kAuto;
  o.kl_tokens = a.kl_tokens;
  o.kl_text = a.kl_text == "self"   ? AutoQuantOptions::KlText::kSelf
              : a.kl_text == "both" ? AutoQuantOptions::KlText::kBoth
                                    : AutoQuantOptions::KlText::kCalib;
  o.sequential = a.targets != "plain";
  o.asymmetric = a.targets == "asymmetric";
  o.kl_points = a.kl_points;
  o.kl_layers = a.kl_layers;
  o.candidate_rows = a.candidate_rows;
  o.row_splits = a.row_splits;
  o.outliers = a.outliers;
  o.select = !a.no_select;
  o.select_tokens = a.select_tokens;
  o.select_as_written = a.select_encodings == "written";
  o.select_text = a.select_text == "calib"  ? AutoQuantOptions::KlText::kCalib
                  : a.select_text == "both" ? AutoQuantOptions::KlText::kBoth
                                            : AutoQuantOptions::KlText::kSelf;
  o.stats_in = a.stats_in;
  return o;
}

}  // namespace mxlm
