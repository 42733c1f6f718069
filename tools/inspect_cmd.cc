// `mxlm inspect`: a .mxlm file's header, config and tensor table; --report writes a layer ×
// tensor heat map of bits, predicted sensitivity and bytes as a self-contained HTML page.
#include <cstdio>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "base/error.h"
#include "kernels/isa.h"
#include "model/file_util.h"
#include "model/mxlm_file.h"
#include "model/report.h"
#include "tools/commands.h"

namespace mxlm {

namespace {

// One cell per 2-D tensor: its layer (-1 for the embedding and head), bits, bytes and the
// predicted loss the quantizer recorded (0 when the file has no mixed-precision record).
void write_report(const MxlmFile& f, const std::string& path) {
  const nlohmann::json q = f.header().value("quantization", nlohmann::json::object());
  const nlohmann::json rec = q.value("tensors", nlohmann::json::object());
  std::vector<HeatCell> cells;
  for (const TensorEntry& t : f.tensors()) {
    if (t.shape.size() != 2) continue;
    HeatCell c;
    c.layer = -1;
    c.tensor = t.name;
    if (t.name.rfind("blk.", 0) == 0) {
      const size_t dot = t.name.find('.', 4);
      c.layer = std::stoi(t.name.substr(4, dot - 4));
      c.tensor = t.name.substr(dot + 1);
    }
    for (size_t i = 0; i < t.segments.size(); ++i) c.format += (i ? "+" : "") + std::string(qtype_info(t.segments[i].qtype).name);
    c.bytes = t.bytes;
    c.bits = 8.0 * double(t.bytes) / (double(t.rows()) * double(t.cols()));
    c.predicted_loss = rec.contains(t.name) ? rec[t.name].value("predicted_kl", 0.0) : 0.0;
    cells.push_back(c);
  }
  write_file(path, heatmap_html("mxlm inspect: " + f.path(), cells));
  std::fprintf(stderr, "mxlm: wrote %s\n", path.c_str());
}

int run_inspect(const std::string& path, bool verify, bool json, const std::string& report) {
  MxlmFile f(path);
  if (verify) f.verify();
  if (!report.empty()) write_report(f, report);
  if (json) {
    nlohmann::json j = f.header();
    j["file_bytes"] = f.file_bytes();
    j["isa"] = std::string(isa_name(selected_isa()));
    if (verify) j["verified"] = true;
    std::cout << j.dump(2) << "\n";
    return 0;
  }
  const ModelConfig& c = f.config();
  std::printf("file:       %s (%s, .mxlm version %u)\n", path.c_str(), human_bytes(f.file_bytes()).c_str(), f.version());
  std::printf("config:     %s\n", c.to_json().dump().c_str());
  std::printf("tokenizer:  %s, %s; chat template: %s\n", std::string(f.tokenizer_kind()).c_str(), human_bytes(f.tokenizer_blob().size()).c_str(),
              f.chat_template().empty() ? "none (mxlm chat uses the plain fallback)" : (std::to_string(f.chat_template().size()) + " bytes of Jinja2").c_str());
  std::printf("provenance: %s\n", f.header().value("provenance", nlohmann::json::object()).dump().c_str());
  std::printf("isa:        %s\n", std::string(isa_name(selected_isa())).c_str());
  std::printf("\n%-28s %-8s %-16s %12s\n", "tensor", "format", "shape", "bytes");
  uint64_t total = 0;
  for (const auto& t : f.tensors()) {
    std::string shape;
    for (size_t i = 0; i < t.shape.size(); ++i) {
      if (i) shape += " x ";
      shape += std::to_string(t.shape[i]);
    }
    std::string fmt;
    for (size_t i = 0; i < t.segments.size(); ++i) {
      if (i) fmt += '+';
      fmt += qtype_info(t.segments[i].qtype).name;
    }
    std::printf("%-28s %-8s %-16s %12llu\n", t.name.c_str(), fmt.c_str(), shape.c_str(), static_cast<unsigned long long>(t.bytes));
    total += t.bytes;
  }
  std::printf("\n%zu tensors, %s of weights, %.2f bits per weight\n", f.tensors().size(), human_bytes(total).c_str(), f.bits_per_weight());
  if (verify) std::printf("checksums:  all %zu tensors and the tokenizer verified\n", f.tensors().size());
  // What the KV cache costs beside the weights (run, ppl and bench take --kv; runtime/kv_cache.h).
  const int window = ContextParams{}.kv_window;
  std::printf("\nKV cache (--kv)  per token   at the trained context of %d tokens\n", c.n_ctx);
  for (const char* spec : {"f32", "f16", "k8v8", "k4v4", "k2v2"}) {
    const KvCacheSize kv = kv_cache_size(c, {*parse_kv_formats(spec)}, c.n_ctx, window);
    std::printf("%-16s %10s   %s%s\n", spec, human_bytes(kv.per_token).c_str(), human_bytes(kv.total).c_str(),
                std::string(spec) == "k2v2" ? " (with the f16 windows of --kv-window 64)" : "");
  }
  return 0;
}

}  // namespace

Command add_inspect_command(CLI::App& app) {
  struct Args {
    std::string path, report;
    bool verify = false, json = false;
  };
  auto a = std::make_shared<Args>();
  CLI::App* in = app.add_subcommand("inspect", "Print a .mxlm file's header, config and tensor table");
  in->add_option("model", a->path, ".mxlm file")->required();
  in->add_flag("--verify", a->verify, "recompute and check every checksum");
  in->add_flag("--json", a->json, "print the header as JSON");
  in->add_option("--report", a->report, "write a layer x tensor heat map (bits, predicted loss, bytes) as HTML");
  return {in, [a]() { return run_inspect(a->path, a->verify, a->json, a->report); }};
}

}  // namespace mxlm
