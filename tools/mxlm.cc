// mxlm: the command-line frontend: parses and dispatches (convert, run, ppl, synth here;
// quantize, sweep, inspect, bench and chat in their own files).
#include <omp.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>

#include "base/error.h"
#include "kernels/isa.h"
#include "model/file_util.h"
#include "model/import.h"
#include "model/mxlm_file.h"
#include "model/synth.h"
#include "mxlm.h"
#include "mxlm/generate.h"
#include "mxlm/model.h"
#include "mxlm/perplexity.h"
#include "tokenizer/tokenizer.h"
#include "tools/commands.h"

namespace {

using namespace mxlm;

struct ConvertArgs {
  std::string input, output, dtype = "bf16", tokenizer;
  bool quiet = false;
};

int cmd_convert(const ConvertArgs& a) {
  auto qt = qtype_from_name(a.dtype);
  if (!qt || (*qt != QType::kF32 && *qt != QType::kBF16 && *qt != QType::kF16)) {
    throw Error(ErrorCode::kInvalidArgument, "--dtype " + a.dtype + " is not one of bf16, f16, f32");
  }
  ImportOptions opt;
  opt.tokenizer_path = a.tokenizer;
  auto t0 = std::chrono::steady_clock::now();
  ImportedModel m = import_model(a.input, opt);
  // The tokenizer must load before anything is written.
  auto tok = Tokenizer::from_spm_proto(m.tokenizer_proto);
  if (tok->n_vocab() > m.config.n_vocab) {
    throw Error(ErrorCode::kFormat, "the tokenizer has " + std::to_string(tok->n_vocab()) + " pieces, the model only " +
                                        std::to_string(m.config.n_vocab) + " embeddings");
  }
  std::fprintf(stderr, "mxlm: %s model: %d layers, %d hidden, %d heads (%d kv), vocab %d, ctx %d\n", source_format_name(m.format),
               m.config.n_layers, m.config.n_embd, m.config.n_heads, m.config.n_kv_heads, m.config.n_vocab, m.config.n_ctx);
  std::function<void(size_t, size_t)> progress;
  if (!a.quiet) progress = [](size_t d, size_t t) { progress_bar("converting", d, t); };
  convert_to_mxlm(m, a.output, *qt, progress);
  MxlmFile check(a.output);
  std::fprintf(stderr, "mxlm: wrote %s (%s, %zu tensors, %s weights) in %.1f s\n", a.output.c_str(),
               human_bytes(check.file_bytes()).c_str(), check.tensors().size(), a.dtype.c_str(),
               std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  return 0;
}


struct SynthArgs {
  std::string shape = "tinyllama-1.1b", qtype = "q4_g32", output;
  int layers = 0, threads = 0;
  uint64_t seed = 1;
  bool quiet = false;
};

struct RunArgs {
  std::string model, prompt, prompt_file, memory = "huge";
  KvArgs kv;
  int n_predict = 128, threads = 0, ctx = 0, keep = 1;
  bool verbose = false, no_bos = false, ignore_eos = false, act_per_token = false;
  SamplerParams sampler;
};

int cmd_run(RunArgs a) {
  if (!a.prompt_file.empty()) a.prompt = read_file(a.prompt_file);
  if (a.prompt.empty()) throw Error(ErrorCode::kInvalidArgument, "empty prompt: give the text to continue with -p TEXT or -f FILE");
  if (size_t bad = find_invalid_utf8(a.prompt); bad != std::string::npos) {
    throw Error(ErrorCode::kInvalidArgument, "the prompt is not valid UTF-8 (bad byte at offset " + std::to_string(bad) + ")");
  }
  auto model = open_model(a.model, a.memory, a.threads);
  ContextParams cp;
  cp.n_ctx = a.ctx;
  cp.n_threads = a.threads;
  cp.act_per_token = a.act_per_token;
  apply_kv(a.kv, model, a.threads, cp);
  Context ctx(model, cp);
  const Tokenizer& tok = model->tokenizer();
  std::vector<int> prompt = tok.encode(a.prompt, !a.no_bos);
  if (a.verbose) {
    std::fprintf(stderr, "mxlm: model %s: %s, isa %s, %d threads, ctx %d\n", a.model.c_str(),
                 human_bytes(model->weight_bytes()).c_str(), std::string(isa_name(model->isa())).c_str(), ctx.n_threads(), ctx.n_ctx());
    std::fprintf(stderr, "mxlm: kernels: %s\n", model->kernel_summary().c_str());
    std::fprintf(stderr, "mxlm: KV cache %s: %s per token, %s at ctx %d (with %s of f16 windows)\n", kv_plan_name(cp.kv_layers).c_str(),
                 human_bytes(ctx.kv_bytes_per_token()).c_str(), human_bytes(ctx.kv_bytes()).c_str(), ctx.n_ctx(),
                 human_bytes(ctx.kv_bytes() - uint64_t(ctx.kv_bytes_per_token()) * uint64_t(ctx.n_ctx())).c_str());
    std::fprintf(stderr, "mxlm: prompt: %zu tokens:", prompt.size());
    for (int t : prompt) std::fprintf(stderr, " %d", t);
    std::fputc('\n', stderr);
  }
  GenerateParams gp;
  gp.n_predict = a.n_predict;
  gp.context_shift = true;
  gp.n_keep = a.keep;
  gp.sampler = a.sampler;
  gp.stop_at_eos = !a.ignore_eos;
  // Echo the prompt text, then stream the continuation.
  std::fwrite(a.prompt.data(), 1, a.prompt.size(), stdout);
  std::fflush(stdout);
  StreamDecoder dec(tok);
  // The continuation follows the prompt: its first piece's leading space is real text.
  dec.push(prompt.back());
  GenerateStats st = generate(ctx, prompt, gp, [&](int id) {
    const std::string s = dec.push(id);
    std::fwrite(s.data(), 1, s.size(), stdout);
    std::fflush(stdout);
    return true;
  });
  const std::string rest = dec.flush();
  std::fwrite(rest.data(), 1, rest.size(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
  std::fprintf(stderr, "mxlm: prompt %d tokens, %.1f tok/s | generated %d tokens, %.1f tok/s%s%s\n", st.n_prompt,
               st.prompt_tok_per_s(), st.n_generated, st.gen_tok_per_s(),
               st.hit_eos ? " (end of text)" : st.context_full ? " (context full)" : "",
               st.n_shifts ? (" (context shifted " + std::to_string(st.n_shifts) + "x)").c_str() : "");
  return 0;
}

struct PplArgs {
  std::string model, file, kl_base, memory = "huge";
  KvArgs kv;
  int ctx = 512, windows = 0, threads = 0;
  bool json = false, act_per_token = false;
};

int cmd_ppl(const PplArgs& a) {
  auto model = open_model(a.model, a.memory, a.threads);
  const std::string text = read_file(a.file);
  if (size_t bad = find_invalid_utf8(text); bad != std::string::npos) {
    throw Error(ErrorCode::kInvalidArgument, "'" + a.file + "' is not valid UTF-8 (bad byte at offset " + std::to_string(bad) + ")");
  }
  ContextParams cp;
  if (a.ctx > model->config().n_ctx) {
    throw Error(ErrorCode::kInvalidArgument, "--ctx " + std::to_string(a.ctx) + " exceeds the model's context of " +
                                                 std::to_string(model->config().n_ctx) + " tokens");
  }
  cp.n_ctx = a.ctx;
  cp.n_batch = a.ctx;
  cp.n_threads = a.threads;
  cp.act_per_token = a.act_per_token;
  apply_kv(a.kv, model, a.threads, cp);
  Context ctx(model, cp);
  const std::vector<int> stream = tokenize_documents(model->tokenizer(), text, model->config().bos_id, model->config().eos_id);
  PplParams pp;
  pp.ctx = a.ctx;
  pp.windows = a.windows;
  std::unique_ptr<Context> base;
  if (!a.kl_base.empty()) {
    auto base_model = open_model(a.kl_base, "huge", a.threads);
    if (a.ctx > base_model->config().n_ctx) {
      throw Error(ErrorCode::kInvalidArgument, "--ctx " + std::to_string(a.ctx) + " exceeds the base model's context of " +
                                                   std::to_string(base_model->config().n_ctx) + " tokens");
    }
    ContextParams bp = cp;
    bp.act_per_token = false;
    bp.kv_layers.clear();  // the base keeps its KV cache exact (f32)
    base = std::make_unique<Context>(base_model, bp);
    pp.base = base.get();
  }
  PplResult r = perplexity(ctx, stream, pp, [&](int d, int t, double p) {
    if (!a.json) {
      std::fprintf(stderr, "\rppl: window %d/%d, running ppl %.4f", d, t, p);
      if (d == t) std::fputc('\n', stderr);
      std::fflush(stderr);
    }
  });
  if (a.json) {
    nlohmann::json j = {{"model", a.model},      {"file", a.file},         {"ctx", a.ctx},
                        {"windows", r.windows},  {"ppl", r.ppl},           {"mean_nll", r.mean_nll},
                        {"tokens_evaluated", r.n_predictions}, {"seconds", r.seconds}, {"threads", ctx.n_threads()},
                        {"isa", std::string(isa_name(model->isa()))}};
    if (r.has_base) {
      j["kl_base"] = {{"model", a.kl_base},         {"ppl", r.base_ppl},           {"mean_nll", r.base_mean_nll},
                      {"delta_ppl", r.ppl / r.base_ppl - 1}, {"kl_mean", r.kl_mean}, {"kl_p99", r.kl_p99},
                      {"top1_agreement", r.top1_agreement}};
    }
    std::cout << j.dump(2) << "\n";
  } else {
    std::printf("ppl %.4f  mean NLL %.6f  tokens evaluated %lld  (%d windows of %d, %.1f s, %.0f tok/s)\n", r.ppl, r.mean_nll,
                static_cast<long long>(r.n_predictions), r.windows, a.ctx, r.seconds, r.n_predictions / r.seconds);
    if (r.has_base) {
      std::printf("vs %s: base ppl %.4f (%+.3f %%)  KL mean %.6f  p99 %.6f  top-1 agreement %.3f %%\n", a.kl_base.c_str(), r.base_ppl,
                  100 * (r.ppl / r.base_ppl - 1), r.kl_mean, r.kl_p99, 100 * r.top1_agreement);
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // First thing: a background job of a non-interactive shell starts with SIGINT ignored, and an
  // ignored signal stays ignored across the huge-page re-exec below, while a handled one comes
  // back as the default (terminate: no file is open yet). Installed after the re-exec, an early
  // Ctrl-C or kill -INT was lost and the quantizer ran to the end (seen under ASan in CI).
  remove_temporaries_on_signal();
  CLI::App app{"mxlm: mixed-precision quantized LLM runtime for CPUs"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "mxlm " + std::to_string(MXLM_VERSION_MAJOR) + "." + std::to_string(MXLM_VERSION_MINOR) + "." + std::to_string(MXLM_VERSION_PATCH));

  ConvertArgs conv;
  auto* c = app.add_subcommand("convert", "Import an HF directory, GGUF file or llama2.c checkpoint into a .mxlm file");
  c->add_option("input", conv.input, "HF model directory, .gguf file or llama2.c .bin checkpoint")->required();
  c->add_option("-o,--output", conv.output, "output .mxlm path (written atomically)")->required();
  c->add_option("--dtype", conv.dtype, "weight format: bf16, f16 or f32")->check(CLI::IsMember({"bf16", "f16", "f32"}));
  c->add_option("--tokenizer", conv.tokenizer, "tokenizer for llama2.c checkpoints (.model or llama2.c .bin); overrides an HF tokenizer.model");
  c->add_flag("-q,--quiet", conv.quiet, "no progress bar");

  const Command qz = add_quantize_command(app);
  const Command sw = add_sweep_command(app);

  const Command bn = add_bench_command(app);
  const Command ch = add_chat_command(app);

  SynthArgs synth;
  auto* sy = app.add_subcommand("synth", "Write a model of a real shape with random weights (for benchmarks)");
  std::string shape_help = "shape:";
  for (const auto& s : synth_shapes()) shape_help += " " + s.name;
  sy->add_option("--shape", synth.shape, shape_help);
  sy->add_option("--qtype", synth.qtype, "format of every matrix");
  sy->add_option("--layers", synth.layers, "override the number of layers");
  sy->add_option("--seed", synth.seed, "random seed");
  sy->add_option("-t,--threads", synth.threads, "threads (default: all cores)");
  sy->add_option("-o,--output", synth.output, "output .mxlm path")->required();
  sy->add_flag("-q,--quiet", synth.quiet, "no progress bar");

  const Command in = add_inspect_command(app);

  RunArgs run;
  auto* r = app.add_subcommand("run", "Generate text from a prompt");
  r->add_option("-m,--model", run.model, "model: .mxlm file, GGUF file or HF directory")->required();
  r->add_option("-p,--prompt", run.prompt, "prompt text");
  r->add_option("-f,--file", run.prompt_file, "read the prompt from a file");
  r->add_option("-n,--n-predict", run.n_predict, "tokens to generate (-1: until end of text)");
  r->add_option("-t,--threads", run.threads, "threads (default: all cores)");
  r->add_option("-c,--ctx", run.ctx, "context size (default: the model's)");
  r->add_option("--keep", run.keep,
                "when generation fills the context: tokens kept from its start (the older half of the rest is dropped and "
                "generation goes on)")
      ->check(CLI::NonNegativeNumber);
  r->add_option("--temp", run.sampler.temperature, "temperature (0: greedy)");
  r->add_option("--top-k", run.sampler.top_k, "top-k (0: off)");
  r->add_option("--top-p", run.sampler.top_p, "top-p (1: off)");
  r->add_option("--min-p", run.sampler.min_p, "min-p (0: off)");
  r->add_option("--repeat-penalty", run.sampler.repeat_penalty, "repetition penalty (1: off)");
  r->add_option("--repeat-last-n", run.sampler.repeat_last_n, "tokens the repetition penalty looks back");
  r->add_option("-s,--seed", run.sampler.seed, "random seed");
  r->add_flag("--no-bos", run.no_bos, "do not prepend BOS");
  r->add_flag("--ignore-eos", run.ignore_eos, "keep generating after end of text");
  r->add_flag("-v,--verbose", run.verbose, "print model, ISA, kernels and prompt tokens to stderr");
  r->add_flag("--act-per-token", run.act_per_token, "one activation scale per token instead of per 32 values");
  add_kv_options(r, run.kv);
  r->add_option("--memory", run.memory, "weight memory: huge (default: read into memory on huge pages), copy (4 KiB pages) or map (the file mapping: no copy)");

  PplArgs ppl;
  auto* p = app.add_subcommand("ppl", "Perplexity of a model on a text");
  p->add_option("-m,--model", ppl.model, "model: .mxlm file, GGUF file or HF directory")->required();
  p->add_option("-f,--file", ppl.file, "text file (documents separated by lines holding only 0x1E)")->required();
  p->add_option("--ctx", ppl.ctx, "predictions per window")->check(CLI::PositiveNumber);
  p->add_option("--windows", ppl.windows, "number of windows (default: all)")->check(CLI::NonNegativeNumber);
  p->add_option("-t,--threads", ppl.threads, "threads (default: all cores)");
  p->add_flag("--json", ppl.json, "print the result as JSON");
  p->add_flag("--act-per-token", ppl.act_per_token, "one activation scale per token instead of per 32 values");
  add_kv_options(p, ppl.kv);
  p->add_option("--memory", ppl.memory, "weight memory: huge (default: read into memory on huge pages), copy (4 KiB pages) or map (the file mapping: no copy)");
  p->add_option("--kl-base", ppl.kl_base, "base model (e.g. unquantized; .mxlm, GGUF or HF directory): also report KL divergence, top-1 agreement, delta ppl");

  CLI11_PARSE(app, argc, argv);
  if (*qz.app || *sw.app) reexec_with_huge_malloc(argv);  // the new image installs them first thing too
  try {
    if (*c) return cmd_convert(conv);
    if (*qz.app) return qz.run();
    if (*sw.app) return sw.run();
    if (*bn.app) return bn.run();
    if (*ch.app) return ch.run();
    if (*sy) {
      SynthOptions so;
      so.shape = synth.shape;
      so.qtype = parse_qtype(synth.qtype, "--qtype");
      so.n_layers = synth.layers;
      so.seed = synth.seed;
      so.threads = synth.threads;
      std::function<void(size_t, size_t)> progress;
      if (!synth.quiet) progress = [](size_t d, size_t t) { progress_bar("writing", d, t); };
      synth_model(synth.output, so, progress);
      std::fprintf(stderr, "mxlm: wrote %s (%s)\n", synth.output.c_str(), human_bytes(MxlmFile(synth.output).file_bytes()).c_str());
      return 0;
    }
    if (*in.app) return in.run();
    if (*r) return cmd_run(run);
    if (*p) return cmd_ppl(ppl);
  } catch (const mxlm::Error& e) {
    std::fprintf(stderr, "\nmxlm: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "\nmxlm: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
