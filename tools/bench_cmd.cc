// `mxlm bench`: prompt processing and generation speed beside the limits measured in the same
// run (read bandwidth for decode, the int8 peak for prefill); several weight memories
// (--memory map,huge) are loaded side by side and measured in alternating repetitions.
#include <chrono>
#include <cstdio>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "base/error.h"
#include "kernels/isa.h"
#include "mxlm/bench.h"
#include "mxlm/model.h"
#include "tools/commands.h"

namespace mxlm {

namespace {

struct BenchArgs {
  std::string model, prefill = "auto";
  std::vector<std::string> kv = {"f32"};
  int kv_window = ContextParams{}.kv_window;
  std::vector<std::string> memory;
  int n_prompt = 128, n_gen = 64, reps = 3;
  std::vector<int> threads = {1, 2};
  std::vector<int> depths = {0};
  bool json = false, act_per_token = false, roofline = false, phases = false;
};

ContextParams::Prefill parse_prefill(const std::string& s) {
  if (s == "kernels") return ContextParams::Prefill::kKernels;
  if (s == "onednn") return ContextParams::Prefill::kOneDnn;
  if (s == "bf16") return ContextParams::Prefill::kBf16;
  return ContextParams::Prefill::kAuto;
}

int run_bench_cmd(const BenchArgs& a) {
  std::vector<BenchModel> models;
  std::vector<double> load_s;
  std::vector<WeightMemory> memories;
  for (const std::string& m : a.memory) memories.push_back(parse_weight_memory(m, "--memory"));
  if (memories.empty()) memories.push_back(LoadOptions{}.memory);
  for (WeightMemory m : memories) {
    LoadOptions lo;
    lo.memory = m;
    const auto t0 = std::chrono::steady_clock::now();
    std::string notice;
    auto model = Model::open(a.model, lo, &notice);
    load_s.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    if (model->imported()) {
      // An imported model's tensors live in the source's mapping or in f32 copies: one variant.
      std::fprintf(stderr, "mxlm: %s\n", notice.c_str());
      if (memories.size() > 1) {
        throw Error(ErrorCode::kInvalidArgument, "--memory compares the loads of an .mxlm file; '" + a.model + "' is imported");
      }
      models.push_back({"imported", std::move(model)});
      break;
    }
    models.push_back({std::string(weight_memory_name(m)), std::move(model)});
  }
  BenchParams bp;
  bp.n_prompt = a.n_prompt;
  bp.n_gen = a.n_gen;
  bp.reps = a.reps;
  bp.threads = a.threads;
  bp.depths = a.depths;
  bp.kvs.clear();
  for (const std::string& k : a.kv) bp.kvs.push_back(parse_kv_option(k));
  bp.kv_window = a.kv_window;
  bp.act_per_token = a.act_per_token;
  bp.prefill = parse_prefill(a.prefill);
  bp.phases = a.phases;
  const auto results = run_bench(models, bp);
  const Model& model = *models[0].model;
  const double bits = model.bits_per_weight();
  const std::string name =
      model.imported() ? a.model : model.file().header().value("provenance", nlohmann::json::object()).value("shape", a.model);
  auto load_seconds = [&](const std::string& label) {
    for (size_t i = 0; i < models.size(); ++i) {
      if (models[i].label == label) return load_s[i];
    }
    return 0.0;
  };
  if (a.json) {
    nlohmann::json j = nlohmann::json::array();
    for (const auto& r : results) {
      j.push_back({{"model", a.model}, {"size_bytes", model.weight_bytes()}, {"bits_per_weight", bits},
                   {"isa", std::string(isa_name(model.isa()))}, {"memory", r.label}, {"load_s", load_seconds(r.label)},
                   {"threads", r.threads}, {"test", r.test}, {"depth", r.depth}, {"kv", r.kv}, {"tok_s", r.tok_s_mean},
                   {"tok_s_sd", r.tok_s_sd}, {"weight_gb_s", r.weight_gb_s}, {"kv_bytes_per_token", r.kv_bytes_per_token}, {"kv_bytes", r.kv_bytes},
                   {"kv_gb_s", r.kv_gb_s}, {"bandwidth_gb_s", r.bandwidth_gb_s}, {"bandwidth_pct", r.bandwidth_pct},
                   {"roofline_tok_s", r.roofline_tok_s}, {"gop_s", r.gop_s}, {"peak_gop_s", r.peak_gop_s},
                   {"peak_pct", r.peak_pct}, {"bytes_per_token", model.bytes_per_token()},
                   {"macs_per_token", macs_per_token(model)}, {"kernels", model.kernel_summary()}});
      if (!r.phases.empty()) {
        nlohmann::json ph = nlohmann::json::array();
        for (const BenchPhase& p : r.phases) {
          ph.push_back({{"phase", p.name}, {"ms_per_token", p.ms_per_token}, {"share_pct", p.share_pct}, {"gb_s", p.gb_s},
                        {"bandwidth_pct", p.bandwidth_pct}, {"gop_s", p.gop_s}, {"peak_pct", p.peak_pct},
                        {"busy_pct", p.busy_pct}, {"calls_per_token", p.calls_per_token}});
        }
        j.back()["phases"] = ph;
      }
    }
    std::cout << j.dump(2) << "\n";
    return 0;
  }
  // Decode against the read bandwidth (weights and KV cache read per token; with --roofline, the
  // tok/s it allows), prefill against the int8 peak: both measured in this run, per thread count.
  std::printf("| model | size | bpw | isa | memory | kv | threads | test | t/s | weight GB/s | KV GB/s | read BW GB/s | %% of BW |%s"
              " int8 GOP/s | int8 peak GOP/s | %% of peak |\n",
              a.roofline ? " roofline t/s |" : "");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|%s---|---|---|\n", a.roofline ? "---|" : "");
  for (const auto& r : results) {
    const bool tg = r.test.rfind("tg", 0) == 0;
    char gbs[32] = "-", kvs[32] = "-", pct[32] = "-", roof[32] = "-", gop[32] = "-", ppct[32] = "-";
    if (tg) {
      std::snprintf(gbs, sizeof(gbs), "%.2f", r.weight_gb_s);
      std::snprintf(kvs, sizeof(kvs), "%.2f", r.kv_gb_s);
      std::snprintf(pct, sizeof(pct), "%.1f", r.bandwidth_pct);
      std::snprintf(roof, sizeof(roof), "%.2f", r.roofline_tok_s);
    } else {
      std::snprintf(gop, sizeof(gop), "%.1f", r.gop_s);
      if (r.peak_gop_s > 0) std::snprintf(ppct, sizeof(ppct), "%.1f", r.peak_pct);
    }
    std::string roof_col = a.roofline ? std::string(" ") + roof + " |" : "";
    std::printf("| %s | %s | %.2f | %s | %s | %s | %d | %s | %.2f ± %.2f | %s | %s | %.1f | %s |%s %s | %.0f | %s |\n",
                name.c_str(), human_bytes(model.weight_bytes()).c_str(), bits, std::string(isa_name(model.isa())).c_str(),
                r.label.c_str(), r.kv.c_str(), r.threads, r.test.c_str(), r.tok_s_mean, r.tok_s_sd, gbs, kvs, r.bandwidth_gb_s, pct,
                roof_col.c_str(), gop,
                r.peak_gop_s, ppct);
  }
  // --phases: where the tokens' time goes, one table over every result: read rates against the
  // bandwidth (decode's limit), the projections' int8 rate against the peak (prefill's).
  bool any_phases = false;
  for (const auto& r : results) any_phases |= !r.phases.empty();
  if (any_phases) {
    std::printf("\n| memory | kv | threads | test | phase | calls/token | ms/token | %% of token | GB/s | %% of BW | GOP/s |"
                " %% of peak | threads busy %% |\n");
    std::printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (const auto& r : results) {
      for (const BenchPhase& p : r.phases) {
        char gbs[32] = "-", pct[32] = "-", gop[32] = "-", ppct[32] = "-", busy[32] = "-", calls[32] = "-";
        if (p.gb_s > 0) {
          std::snprintf(gbs, sizeof(gbs), "%.1f", p.gb_s);
          std::snprintf(pct, sizeof(pct), "%.1f", p.bandwidth_pct);
        }
        if (p.gop_s > 0) {
          std::snprintf(gop, sizeof(gop), "%.1f", p.gop_s);
          if (p.peak_pct > 0) std::snprintf(ppct, sizeof(ppct), "%.1f", p.peak_pct);
        }
        if (p.name != "other") {
          std::snprintf(busy, sizeof(busy), "%.1f", p.busy_pct);
          std::snprintf(calls, sizeof(calls), "%.2g", p.calls_per_token);
        }
        std::printf("| %s | %s | %d | %s | %s | %s | %.3f | %.1f | %s | %s | %s | %s | %s |\n", r.label.c_str(), r.kv.c_str(),
                    r.threads, r.test.c_str(), p.name.c_str(), calls, p.ms_per_token, p.share_pct, gbs, pct, gop, ppct, busy);
      }
    }
  }
  std::printf("\nkernels: %s\n", model.kernel_summary().c_str());
  for (size_t i = 0; i < models.size(); ++i) std::printf("load (%s): %.2f s\n", models[i].label.c_str(), load_s[i]);
  return 0;
}

}  // namespace

Command add_bench_command(CLI::App& app) {
  auto a = std::make_shared<BenchArgs>();
  CLI::App* bn = app.add_subcommand("bench", "Prompt-processing and generation speed against the measured memory bandwidth and int8 peak");
  bn->add_option("-m,--model", a->model, "model: .mxlm file, GGUF file or HF directory")->required();
  bn->add_option("-p,--n-prompt", a->n_prompt, "prompt tokens per pp run (0: skip)")->check(CLI::NonNegativeNumber);
  bn->add_option("-n,--n-gen", a->n_gen, "generated tokens per tg run (0: skip)")->check(CLI::NonNegativeNumber);
  bn->add_option("-r,--reps", a->reps, "repetitions")->check(CLI::PositiveNumber);
  bn->add_option("-t,--threads", a->threads, "thread counts, e.g. 1,2")->delimiter(',');
  bn->add_option("-d,--depth", a->depths,
                 "tokens already in the context before pp and tg, e.g. 0,512,2048 (filled once per depth, untimed)")
      ->delimiter(',')
      ->check(CLI::NonNegativeNumber);
  bn->add_option("--memory", a->memory,
                 "weight memory: map, copy, huge, or a list (e.g. map,huge: each loaded, repetitions alternate)")
      ->delimiter(',');
  bn->add_option("--kv", a->kv, std::string(kKvHelp) + "; a list (f32,k4v4) measures each, repetitions alternating")
      ->delimiter(',');
  bn->add_option("--kv-window", a->kv_window, kKvWindowHelp)->check(CLI::NonNegativeNumber);
  bn->add_flag("--roofline", a->roofline, "add the decode speed the read bandwidth allows (bandwidth / bytes per token)");
  bn->add_flag("--act-per-token", a->act_per_token, "one activation scale per token instead of per 32 values");
  bn->add_flag("--phases", a->phases,
               "where the tokens' time goes (pp and tg): each projection, the head, the KV store and attention, with "
               "the GB/s each reads, the projections' GOP/s and how busy the threads were in each");
  bn->add_flag("--json", a->json, "JSON output");
  bn->add_option("--prefill", a->prefill,
                 "prefill matmuls: auto (a fixed rule: the kernels), kernels, onednn (forced) or bf16 (float weights in bfloat16)")
      ->check(CLI::IsMember({"auto", "kernels", "onednn", "bf16"}));
  return {bn, [a]() { return run_bench_cmd(*a); }};
}

}  // namespace mxlm
