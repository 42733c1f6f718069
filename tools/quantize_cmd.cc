// `mxlm quantize`: one format everywhere (--qtype, round-to-nearest), or a mixed-precision
// allocation under a budget (--bpw / --size) calibrated on a text (--calib), or a fixed mix
// (--recipe). See runtime/include/mxlm/autoquant.h for the method.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>

#include "base/error.h"
#include "model/allocate.h"
#include "model/file_util.h"
#include "model/import.h"
#include "model/mxlm_file.h"
#include "model/quantize.h"
#include "model/recipe.h"
#include "model/rotate.h"
#include "mxlm/autoquant.h"
#include "tokenizer/tokenizer.h"
#include "tools/commands.h"

namespace mxlm {

namespace {

struct QuantizeArgs {
  std::string input, output, qtype, embd_qtype, output_qtype, tokenizer;
  int threads = 0;
  bool quiet = false;
  // Mixed precision.
  AutoQuantArgs aq;
  double bpw = 0;
  std::string size, stats_out, recipe, write_recipe;
  double rank_check_bpw = 0;
  bool dry_run = false, json = false, rank_check = false;
};

int run_uniform(const QuantizeArgs& a, const ImportedModel& m) {
  QuantizeOptions opt;
  opt.qtype = parse_qtype(a.qtype, "--qtype");
  if (!a.embd_qtype.empty()) opt.embd_qtype = parse_qtype(a.embd_qtype, "--embd-qtype");
  if (!a.output_qtype.empty()) opt.output_qtype = parse_qtype(a.output_qtype, "--output-qtype");
  opt.threads = a.threads;
  std::function<void(size_t, size_t)> progress;
  if (!a.quiet) progress = [](size_t d, size_t t) { progress_bar("quantizing", d, t); };
  quantize_model(m, a.output, opt, progress);
  return 0;
}

void print_plan(const AutoQuantResult& r) {
  std::printf("%-22s %-9s %7s %12s %6s %12s %12s\n", "tensor", "format", "bits", "alpha", "gamma", "kl@ref", "predicted");
  for (const TensorPlan& p : r.tensors) {
    std::string split;
    if (!p.split_rows.empty()) {
      split = "  + " + std::to_string(p.split_rows.size()) + " rows " + std::string(qtype_info(p.split_format).name);
    }
    if (p.outliers > 0) split += "  + " + std::to_string(p.outliers) + " outliers";
    std::printf("%-22s %-9s %7.3f %12.4g %6.3f %12.4g %12.4g%s%s\n", p.name.c_str(), std::string(qtype_info(p.format).name).c_str(),
                8.0 * double(p.bytes) / (double(p.n) * double(p.k)), p.alpha, p.gamma, p.measured_kl, p.predicted_kl,
                p.fixed ? "  (recipe)" : p.kl_interpolated ? "  (kl interpolated)" : "", split.c_str());
  }
  std::printf("\n%.4f bits per weight, %s of tensors, predicted KL %.4g nats/token (sum over tensors)\n", r.bpw,
              human_bytes(r.tensor_bytes).c_str(), r.predicted_kl);
  if (std::isfinite(r.rank_correlation)) std::printf("rank correlation of predicted and measured KL at the rank check's candidate: %.3f\n", r.rank_correlation);
}

nlohmann::json plan_json(const AutoQuantResult& r) {
  nlohmann::json t = nlohmann::json::array();
  for (const TensorPlan& p : r.tensors) {
    t.push_back({{"name", p.name},
                 {"format", qtype_info(p.format).name},
                 {"bytes", p.bytes},
                 {"alpha", p.alpha},
                 {"gamma", p.gamma},
                 {"measured_kl", p.measured_kl},
                 {"predicted_kl", p.predicted_kl},
                 {"fixed", p.fixed},
                 {"kl_interpolated", p.kl_interpolated}});
    if (!p.split_rows.empty()) t.back()["split"] = {{"format", qtype_info(p.split_format).name}, {"rows", p.split_rows.size()}};
    if (p.outliers > 0) t.back()["outliers"] = p.outliers;
    if (!p.error.empty()) {
      // Each candidate's output error e (predicted KL = alpha * e).
      nlohmann::json e = nlohmann::json::object();
      for (size_t j = 0; j < p.error.size() && j < r.candidates.size(); ++j) e[std::string(qtype_info(r.candidates[j]).name)] = p.error[j];
      t.back()["errors"] = e;
    }
    if (std::isfinite(p.low_kl)) t.back()["low_kl"] = p.low_kl;
    if (std::isfinite(p.high_kl)) {
      t.back()["high_kl"] = p.high_kl;
      t.back()["gamma_high"] = p.gamma_high;
    }
    if (std::isfinite(p.check_measured_kl)) {
      t.back()["check_measured_kl"] = p.check_measured_kl;
      t.back()["check_predicted_kl"] = p.check_predicted_kl;
    }
  }
  nlohmann::json j = {{"bits_per_weight", r.bpw},
                      {"tensor_bytes", r.tensor_bytes},
                      {"predicted_kl", r.predicted_kl},
                      {"calibration", {{"source", r.calib_source}, {"tokens", r.calib_tokens}}},
                      {"measurement", {{"large_model", r.large_model}, {"calib_precision", r.calib_bf16 ? "bf16" : "f32"}, {"kl_tokens", r.kl_tokens}, {"kl_layers", r.kl_layers},
                                       {"candidate_rows", r.candidate_rows}}},
                      {"seconds", {{"calibrate", r.seconds_calibrate}, {"candidates", r.seconds_candidates}, {"kl", r.seconds_kl}, {"write", r.seconds_write}}},
                      {"tensors", t}};
  if (std::isfinite(r.rank_correlation)) j["rank_correlation"] = r.rank_correlation;
  if (!r.measured_plans.empty()) {
    nlohmann::json sel = nlohmann::json::array();
    for (const PlanMeasurement& m : r.measured_plans) {
      sel.push_back({{"plan", m.label}, {"bits_per_weight", m.bpw}, {"predicted_kl", m.predicted_kl}, {"measured_kl", m.measured_kl}});
    }
    j["selection"] = {{"chosen", r.chosen_plan}, {"plans", sel}};
    j["seconds"]["select"] = r.seconds_select;
  }
  return j;
}

int run_mixed(const QuantizeArgs& a, const ImportedModel& m) {
  AutoQuantOptions o = autoquant_options(a.aq);
  o.bpw = a.bpw;
  if (!a.size.empty()) o.size_bytes = parse_size_arg(a.size);
  if (!a.recipe.empty()) o.recipe = parse_recipe(read_file(a.recipe), a.recipe);
  if (!a.qtype.empty()) {
    // A uniform format with calibration: a recipe whose default is that format.
    if (!o.recipe) o.recipe = Recipe{};
    o.recipe->default_format = parse_qtype(a.qtype, "--qtype");
    if (!a.embd_qtype.empty()) o.recipe->rules.insert(o.recipe->rules.begin(), {tensor_names::kTokEmbd, parse_qtype(a.embd_qtype, "--embd-qtype")});
    if (!a.output_qtype.empty()) o.recipe->rules.insert(o.recipe->rules.begin(), {tensor_names::kOutput, parse_qtype(a.output_qtype, "--output-qtype")});
  }
  o.stats_out = a.stats_out;
  o.dry_run = a.dry_run;
  o.rank_check = a.rank_check || a.rank_check_bpw > 0;
  if (a.rank_check_bpw > 0) o.rank_check_bpw = a.rank_check_bpw;
  o.threads = a.threads;
  if (!a.quiet) o.progress = [](const char* stage, size_t d, size_t t) { progress_bar(stage, d, t); };
  const AutoQuantResult r = auto_quantize(m, a.output, o);
  if (a.json) std::printf("%s\n", plan_json(r).dump(2).c_str());
  else if (a.dry_run) print_plan(r);
  if (!a.write_recipe.empty()) {
    std::vector<std::pair<std::string, QType>> per;
    int split = 0;
    for (const TensorPlan& p : r.tensors) {
      per.emplace_back(p.name, p.format);
      split += !p.split_rows.empty() || p.outliers > 0;
    }
    write_file(a.write_recipe, recipe_to_json(per));
    if (split > 0) {
      std::fprintf(stderr, "mxlm: note: a recipe holds one format per tensor: the %d row-split or outlier tensors are recorded in their dense (lower) format\n",
                   split);
    }
  }
  if (!a.quiet) {
    const bool allocated = std::any_of(r.tensors.begin(), r.tensors.end(), [](const TensorPlan& p) { return !p.fixed; });
    if (r.large_model && allocated) {
      std::fprintf(stderr,
                   "mxlm: a large model: KL runs on %s layers, candidates scored on %lld rows per tensor, calibration in %s "
                   "(--kl-layers 0, --candidate-rows 0 and --calib-precision f32 measure every one in f32, slower)\n",
                   r.kl_layers > 0 ? std::to_string(r.kl_layers).c_str() : "all", static_cast<long long>(r.candidate_rows),
                   r.calib_bf16 ? "bf16" : "f32");
    }
    for (const PlanMeasurement& m : r.measured_plans) {
      std::fprintf(stderr, "mxlm: plan %-18s %.3f bpw, predicted KL %.6f, measured %.6f%s\n", m.label.c_str(), m.bpw, m.predicted_kl,
                   m.measured_kl, m.label == r.chosen_plan ? "  (chosen)" : "");
    }
    std::fprintf(stderr, "mxlm: calibration %.1f s (%lld tokens), candidates %.1f s, KL %.1f s, selection %.1f s, write %.1f s\n",
                 r.seconds_calibrate, static_cast<long long>(r.calib_tokens), r.seconds_candidates, r.seconds_kl, r.seconds_select,
                 r.seconds_write);
  }
  return 0;
}

}  // namespace

Command add_quantize_command(CLI::App& app) {
  auto a = std::make_shared<QuantizeArgs>();
  CLI::App* q = app.add_subcommand("quantize", "Quantize a model (HF dir, GGUF, llama2.c or .mxlm) to a .mxlm file");
  q->add_option("input", a->input, "model to quantize")->required();
  q->add_option("-o,--output", a->output, "output .mxlm path (written atomically)");
  q->add_option("--qtype", a->qtype, "one format for every linear layer (e.g. q4_g32, q8_g32, nu4_g32)");
  q->add_option("--embd-qtype", a->embd_qtype, "format of the token embedding (default: --qtype)");
  q->add_option("--output-qtype", a->output_qtype, "format of the output head (default: --qtype)");
  q->add_option("--bpw", a->bpw, "mixed precision: bits per weight of the whole file's tensors (e.g. 3.5)")->check(CLI::PositiveNumber);
  q->add_option("--size", a->size, "mixed precision: bytes of the whole file (e.g. 300M, 1.5G; K/M/G are powers of 1024)");
  q->add_option("--recipe", a->recipe, "JSON file of formats per tensor name or glob pattern (fixed; the rest is allocated)");
  add_autoquant_options(q, a->aq);
  q->add_option("--save-stats", a->stats_out, "write the calibration statistics to this file");
  q->add_flag("--dry-run", a->dry_run, "print the allocation and its predicted loss; write nothing");
  q->add_option("--write-recipe", a->write_recipe, "write the chosen formats as a recipe (reusable with --recipe)");
  q->add_flag("--json", a->json, "print the plan as JSON");
  q->add_flag("--rank-check", a->rank_check, "also measure each tensor's KL at 4.5 bits and report the rank correlation with the prediction");
  q->add_option("--rank-check-bpw", a->rank_check_bpw, "the rank check's candidate: the one nearest this many bits per weight (default 4.5)");
  q->add_option("--tokenizer", a->tokenizer, "tokenizer for llama2.c checkpoints");
  q->add_option("-t,--threads", a->threads, "threads (default: all cores)");
  q->add_flag("-q,--quiet", a->quiet, "no progress bar");
  return {q, [a]() {
            const bool mixed = a->bpw > 0 || !a->size.empty() || !a->recipe.empty() || !a->aq.calib.empty() || !a->aq.stats_in.empty();
            if (!mixed && a->qtype.empty()) {
              throw Error(ErrorCode::kInvalidArgument, "give --qtype (one format everywhere) or a budget --bpw / --size (mixed precision)");
            }
            if (a->output.empty() && !a->dry_run) throw Error(ErrorCode::kInvalidArgument, "give -o/--output (or --dry-run)");
            ImportOptions io;
            io.tokenizer_path = a->tokenizer;
            auto t0 = std::chrono::steady_clock::now();
            const ImportedModel imported = import_model(a->input, io);
            const ImportedModel m = a->aq.rotate ? rotate_model(imported) : imported;
            Tokenizer::from_spm_proto(m.tokenizer_proto);  // fails before anything is written
            const int rc = mixed ? run_mixed(*a, m) : run_uniform(*a, m);
            if (a->dry_run) return rc;
            MxlmFile check(a->output);
            std::fprintf(stderr, "mxlm: wrote %s (%s, %.3f bits per weight) in %.1f s\n", a->output.c_str(),
                         human_bytes(check.file_bytes()).c_str(), check.bits_per_weight(),
                         std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
            return rc;
          }};
}

}  // namespace mxlm
