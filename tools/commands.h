// Pieces the subcommand files of the `mxlm` tool share: each subcommand that has its own file
// registers its options on the app and returns how to run it.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "kernels/qtype.h"
#include "mxlm/autoquant.h"
#include "mxlm/kv_auto.h"
#include "mxlm/model.h"

namespace mxlm {

struct Command {
  CLI::App* app = nullptr;    // the subcommand (true when it was given)
  std::function<int()> run;   // runs it after parsing; throws Error on bad input
};

Command add_quantize_command(CLI::App& app);
Command add_sweep_command(CLI::App& app);
Command add_inspect_command(CLI::App& app);
Command add_bench_command(CLI::App& app);
Command add_chat_command(CLI::App& app);

// Runs this program again (the same arguments, pid and descriptors) with glibc's malloc backing
// its large blocks by transparent huge pages (GLIBC_TUNABLES glibc.malloc.hugetlb=1) and keeping
// freed ones in its heap (mmap_max=0, trim_threshold 64 GiB), unless the environment already
// sets glibc.malloc.hugetlb or MXLM_NO_HUGE_MALLOC is set; returns if it cannot. For the
// quantizer, whose Gram matrices, hidden states and encodings (tens to hundreds of MB each) are
// allocated and freed per layer: on 4 KiB pages its page faults, each a VM exit on this machine,
// took 12 % of its CPU time and 17 % of its wall time; on huge pages that glibc still unmapped
// at each free, clearing the next block's pages took ~6 % of a writing pass (README).
void reexec_with_huge_malloc(char** argv);
// "12.34 MiB"-style sizes.
std::string human_bytes(uint64_t b);
// A progress bar with the elapsed time and an ETA on a terminal (one line at the end
// otherwise). A new `what`, or done == 0, restarts the clock.
void progress_bar(const char* what, size_t done, size_t total);
// A format name, or Error naming `option` and the known formats.
QType parse_qtype(const std::string& name, const char* option);
// A weight memory name (map, copy, huge), or Error naming `option` and the known ones.
WeightMemory parse_weight_memory(const std::string& name, const char* option);
// The model of -m: an .mxlm file, or a GGUF file or HF directory imported in memory (with a
// notice on stderr that converting it once loads faster); `memory` is --memory's value, `threads`
// caps the load's own threads as -t caps inference's (0: all cores).
std::shared_ptr<const Model> open_model(const std::string& path, const std::string& memory, int threads = 0);
// --kv SPEC: the KV cache formats, or an Error naming the known ones.
// --kv: a KV plan (one spec, or one per layer joined by '/'), for ContextParams::kv_layers.
std::vector<KvFormats> parse_kv_option(const std::string& spec);
inline constexpr const char* kKvHelp =
    "KV cache formats: f32 (default), f16, bf16, or k<t>v<t> for keys and values with t 32, 16, bf16, 8 (int8, a scale "
    "per token and head), 4 (4-bit groups of 32 with scale and offset) or 2 (2-bit, keys per channel over 32 tokens, "
    "recent tokens in f16: --kv-window), e.g. k8v8, k8v4, k4v4, k2v2; or one per layer joined by '/'";
inline constexpr const char* kKvWindowHelp = "2-bit KV formats: the recent tokens kept in f16 (KIVI's residual)";

// --kv with --kv-window, and --kv auto's budget and calibration (mxlm/kv_auto.h).
struct KvArgs {
  std::string kv = "f32";
  int window = ContextParams{}.kv_window;
  double bits = 0;
  std::string calib;
  int calib_windows = KvProfileParams{}.windows;
};
void add_kv_options(CLI::App* app, KvArgs& a);
// Sets cp's KV plan: the one named, or for "auto" the plan measured on --kv-calib within
// --kv-bits (printed to stderr, so that it can be passed as --kv later).
void apply_kv(const KvArgs& a, const std::shared_ptr<const Model>& model, int threads, ContextParams& cp);

// The method options `quantize` and `sweep` share: calibration, sensitivity, allocation and
// encoder (the budget, statistics output and reporting stay each command's own).
struct AutoQuantArgs {
  std::string calib, stats_in, encoder = "gptq", kl_text = "calib", select_text = "self", targets = "asymmetric",
      select_encodings = "measured", calib_precision = "auto";
  std::vector<std::string> candidates;
  int64_t calib_tokens = 16384, kl_tokens = 1024, select_tokens = 1024;
  int kl_points = 2, kl_layers = -1, refine = -1;  // -1: the library's default (kl_layers: by model size)
  int64_t candidate_rows = -1;
  bool row_splits = false, outliers = false, rotate = false, no_select = false;
};
void add_autoquant_options(CLI::App* app, AutoQuantArgs& a);
// The options they ask for (the calibration text read, and refused when empty); `rotate` is
// the caller's (it changes the model, not the options).
AutoQuantOptions autoquant_options(const AutoQuantArgs& a);

}  // namespace mxlm
