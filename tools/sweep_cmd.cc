// `mxlm sweep MODEL --bpw 2.5,3,3.5,4,4.5,5 -f TEXT`: one calibration and sensitivity
// measurement, then an allocation, file and perplexity per budget, beside uniform formats
// encoded the same way; prints a markdown table and writes a self-contained HTML page with the
// Pareto plot (bits per weight against Δppl).
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>

#include "base/error.h"
#include "model/file_util.h"
#include "model/import.h"
#include "model/mxlm_file.h"
#include "model/report.h"
#include "model/rotate.h"
#include "mxlm/autoquant.h"
#include "mxlm/model.h"
#include "mxlm/perplexity.h"
#include "tokenizer/tokenizer.h"
#include "tools/commands.h"

namespace mxlm {

namespace {

struct SweepArgs {
  std::string input, text, html, out_dir, tokenizer;
  AutoQuantArgs aq;
  std::vector<double> bpw;
  std::vector<std::string> uniform = {"q2a_g32", "q3_g32", "q3a_g32", "q4_g128", "q4_g32", "q5_g32"};
  bool dry_run = false;
  int ctx = 512, windows = 64, threads = 0;
  bool quiet = false;
};

struct Row {
  std::string label;
  bool mixed = false;
  double bpw = 0, ppl = 0, dppl = 0, predicted_kl = NAN;
  uint64_t bytes = 0;
};

int run_sweep(const SweepArgs& a) {
  if (a.bpw.empty()) throw Error(ErrorCode::kInvalidArgument, "give the budgets to sweep, e.g. --bpw 2.5,3,3.5,4,4.5,5");
  if (a.text.empty() && !a.dry_run) throw Error(ErrorCode::kInvalidArgument, "give the evaluation text (-f TEXT), or --dry-run to plan only");
  ImportOptions io;
  io.tokenizer_path = a.tokenizer;
  const ImportedModel imported = import_model(a.input, io);
  const ImportedModel m = a.aq.rotate ? rotate_model(imported) : imported;
  auto source = std::shared_ptr<const ImportedModel>(std::shared_ptr<const ImportedModel>{}, &m);
  auto base_model = Model::from_imported(source);
  const std::string text = a.dry_run ? std::string() : read_file(a.text);
  const std::vector<int> stream = tokenize_documents(base_model->tokenizer(), text, m.config.bos_id, m.config.eos_id);
  PplParams pp;
  pp.ctx = a.ctx;
  pp.windows = a.windows;
  ContextParams cp;
  cp.n_threads = a.threads;
  double base_ppl = NAN;
  if (!a.dry_run) {
    Context ctx(base_model, cp);
    base_ppl = perplexity(ctx, stream, pp).ppl;
  }

  AutoQuantOptions o = autoquant_options(a.aq);
  o.threads = a.threads;
  if (!a.quiet) o.progress = [](const char* stage, size_t d, size_t t) { progress_bar(stage, d, t); };
  namespace fs = std::filesystem;
  const std::string dir = a.out_dir.empty() ? fs::temp_directory_path().string() + "/mxlm-sweep-" + std::to_string(::getpid()) : a.out_dir;
  fs::create_directories(dir);
  // The uniform files reuse the mixes' statistics rather than calibrating again.
  const std::string stats_path = a.aq.stats_in.empty() ? dir + "/calibration.stats" : a.aq.stats_in;
  if (a.aq.stats_in.empty()) o.stats_out = stats_path;
  AutoQuantizer q(m, o);
  for (double b : a.bpw) q.check_budget(b, 0);  // every budget is checked before the long part
  std::vector<QType> uniform;
  for (const std::string& u : a.uniform) uniform.push_back(parse_qtype(u, "--uniform"));
  q.measure();
  if (a.dry_run) {
    // The plans alone: bits per weight and the predicted KL of each budget.
    std::printf("| budget bpw | bits per weight | size | predicted KL | formats (tensors) |\n|---|---|---|---|---|\n");
    for (double b : a.bpw) {
      const AutoQuantResult r = q.plan(b, 0);
      std::map<std::string, int> count;
      for (const TensorPlan& t : r.tensors) ++count[std::string(qtype_info(t.format).name)];
      std::string formats;
      for (const auto& [name, n] : count) formats += (formats.empty() ? "" : ", ") + name + " " + std::to_string(n);
      std::printf("| %.3f | %.3f | %s | %.6f | %s |\n", b, r.bpw, human_bytes(r.tensor_bytes).c_str(), r.predicted_kl,
                  formats.c_str());
    }
    if (a.out_dir.empty()) fs::remove_all(dir);
    return 0;
  }

  std::vector<Row> rows;
  const size_t total = a.bpw.size() + uniform.size();
  auto evaluate = [&](const std::string& label, const std::string& path, bool mixed, double predicted) {
    auto model = Model::load(path);
    Context ctx(model, cp);
    Row r;
    r.label = label;
    r.mixed = mixed;
    r.ppl = perplexity(ctx, stream, pp).ppl;
    r.dppl = 100.0 * (r.ppl / base_ppl - 1.0);
    r.bpw = model->file().bits_per_weight();
    r.bytes = model->file().file_bytes();
    r.predicted_kl = predicted;
    rows.push_back(r);
    if (!a.quiet) progress_bar("sweep", rows.size(), total);
  };
  for (double b : a.bpw) {
    const AutoQuantResult r = q.choose(b, 0);
    char label[32];
    std::snprintf(label, sizeof(label), "mix %.2f", b);
    const std::string path = dir + "/mix-" + std::to_string(b) + ".mxlm";
    q.write(r, path);
    evaluate(label, path, true, r.predicted_kl);
    if (a.out_dir.empty()) fs::remove(path);
  }
  for (QType u : uniform) {
    AutoQuantOptions uo = o;
    uo.stats_in = stats_path;
    uo.stats_out.clear();
    uo.recipe = Recipe{};
    uo.recipe->default_format = u;
    uo.progress = nullptr;
    AutoQuantizer uq(m, uo);
    const std::string path = dir + "/" + std::string(qtype_info(u).name) + ".mxlm";
    // The same statistics (no second calibration): the uniform file is encoded like the mixes.
    uq.measure();
    uq.write(uq.plan(0, 0), path);
    evaluate(std::string(qtype_info(u).name), path, false, NAN);
    if (a.out_dir.empty()) fs::remove(path);
  }
  if (a.out_dir.empty()) fs::remove_all(dir);

  char buf[256];
  std::snprintf(buf, sizeof(buf), "| file | kind | bits per weight | size | ppl | Δppl vs %.4f | predicted KL |\n|---|---|---|---|---|---|---|\n",
                base_ppl);
  std::string table = buf;
  std::vector<ParetoPoint> pts;
  for (const Row& r : rows) {
    std::snprintf(buf, sizeof(buf), "| %s | %s | %.3f | %s | %.4f | %+.2f %% | %s |\n", r.label.c_str(), r.mixed ? "mix" : "uniform", r.bpw,
                  human_bytes(r.bytes).c_str(), r.ppl, r.dppl, std::isfinite(r.predicted_kl) ? std::to_string(r.predicted_kl).c_str() : "");
    table += buf;
    pts.push_back({r.label, r.bpw, r.dppl, r.mixed});
  }
  std::printf("%s", table.c_str());
  if (!a.html.empty()) {
    write_file(a.html, pareto_html("mxlm sweep: " + a.input + " on " + a.text, pts, table));
    if (!a.quiet) std::fprintf(stderr, "mxlm: wrote %s\n", a.html.c_str());
  }
  return 0;
}

}  // namespace

Command add_sweep_command(CLI::App& app) {
  auto a = std::make_shared<SweepArgs>();
  CLI::App* s = app.add_subcommand("sweep", "Quantize at several budgets (and uniform formats) and plot bits per weight against perplexity");
  s->add_option("input", a->input, "model to quantize (HF dir, GGUF, llama2.c)")->required();
  s->add_option("--bpw", a->bpw, "budgets in bits per weight, e.g. 2.5,3,3.5,4,4.5,5")->delimiter(',')->required();
  s->add_option("-f,--file", a->text, "evaluation text (documents split at lines holding only 0x1E); required unless --dry-run");
  add_autoquant_options(s, a->aq);
  s->add_option("--uniform", a->uniform, "uniform formats to compare, encoded the same way")->delimiter(',');
  s->add_flag("--dry-run", a->dry_run, "plan each budget and print its predicted KL; nothing is encoded or evaluated");
  s->add_option("--ctx", a->ctx, "predictions per perplexity window")->check(CLI::PositiveNumber);
  s->add_option("--windows", a->windows, "perplexity windows (0: all)")->check(CLI::NonNegativeNumber);
  s->add_option("--html", a->html, "write the table and the Pareto plot as a self-contained HTML page");
  s->add_option("-o,--out-dir", a->out_dir, "keep the quantized files in this folder (default: a temporary one, removed)");
  s->add_option("--tokenizer", a->tokenizer, "tokenizer for llama2.c checkpoints");
  s->add_option("-t,--threads", a->threads, "threads (default: all cores)");
  s->add_flag("-q,--quiet", a->quiet, "no progress bars");
  return {s, [a]() { return run_sweep(*a); }};
}

}  // namespace mxlm
