// Mixed-precision quantization: calibrate, measure each tensor's sensitivity, allocate bits
// under a size budget, encode, write (`mxlm quantize --bpw 3.5`).
//
// The loss model. Quantizing tensor t with candidate c (a format and its encoder) changes the
// tensor's output by ΔW x per token; its mean square is e_tc = tr(ΔW H ΔWᵀ) with H = E[x xᵀ] of
// the tensor's input (calibrate.h). To second order the end loss, the KL divergence of the
// model's next-token distribution from the unquantized one, grows linearly in that squared
// error, with a factor α_t that says how much an error at t's output matters downstream (a
// head error feeds the logits directly; a v error is mixed by attention and normed away in
// part). So the predicted KL of candidate c is α_t·e_tc, and α_t is measured: quantize t
// alone with a reference candidate r_t (the one nearest 3.5 bits per weight), run the
// calibration's KL windows and set α_t = KL_t / e_t,r.
//
// Far from r_t the line bends for some tensors: the KL each tensor alone causes at the ~2.5-bit
// candidate, against α_t·e, was 2.1x the line for the embedding and 1.4-1.6x for layer 0's q,
// gate and up on tinymix (γ below 1.25-1.46), 1.00 ± 0.05 for most others; a mix built on the
// line put exactly those tensors at 2 bits and measured a higher KL than uniform q3k_g32 at the
// same size. So by default a second point is measured (the candidate nearest 2.5 bits) and
// each tensor gets the power law through both, KL_t(e) = KL_t,r·(e / e_t,r)^γ_t (γ_t clamped
// to [0.8, 2]). Tensor errors are taken as additive (errors of different tensors are nearly
// uncorrelated), so the model's predicted KL is Σ_t KL_t(e_t,c(t)), which the allocator
// (model/allocate.h) minimizes under the byte budget.
//
// The embedding has no input matrix: a row is read when its token occurs, so e = Σ_r f_r ‖Δw_r‖²
// with f_r the token's frequency in the calibration text.
//
// Rank check (AutoQuantResult::rank_correlation): the predicted KL at one more candidate (the
// one nearest rank_check_bpw, 4.5 by default) is compared with the KL measured for it, over
// all tensors: Spearman's ρ.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kernels/qtype.h"
#include "model/encode.h"
#include "model/import.h"
#include "model/recipe.h"
#include "mxlm/calibrate.h"

namespace mxlm {

struct AutoQuantOptions {
  // The budget: bits per weight over all tensors (as `mxlm inspect` counts them) or bytes of the
  // whole file; exactly one is set unless a recipe fixes every tensor.
  double bpw = 0;
  uint64_t size_bytes = 0;
  std::optional<Recipe> recipe;  // fixed formats for the tensors it matches
  std::vector<QType> candidates;  // empty: default_candidates()
  EncodeOptions encode;           // method (GPTQ by default), damping, threads set from `threads`
  // Calibration: a text (documents split at 0x1E lines) or, when empty, text the model samples.
  std::string calib_text;
  // Two settings trade time for accuracy and default ("auto") by the model's size: large models,
  // whose calibration statistics (the Gram matrices in double) exceed large_stats_bytes
  // (TinyLlama-1.1B: 7.7 GB), run KL on 4 layers (kl_layers) and score candidates on
  // kAutoCandidateRows rows (candidate_rows). README: the time they save on TinyLlama's shape
  // and what they cost on tinymix; fewer calibration or KL tokens cost more there.
  uint64_t large_stats_bytes = uint64_t(1) << 30;
  // The arithmetic of the calibration passes (CalibParams::bf16): f32, or bfloat16 for the float
  // weights' matmuls and the Gram and cross products (~2x the f32 GEMM on AVX-512; the statistics
  // move by the rounding of bf16, README). Auto: bf16 for large models on AVX-512 hosts, f32
  // otherwise (AVX2 has no bf16 dot product, and small models are fast enough exact).
  enum class CalibPrecision { kAuto, kF32, kBf16 };
  CalibPrecision calib_precision = CalibPrecision::kAuto;
  int64_t calib_tokens = 16384;
  // With sequential targets, the statistics the candidates are measured with (the allocation's
  // errors) are taken over the first measure_tokens of them (0: all); the encodings written
  // use all calib_tokens. Halves the first calibration pass (tinymix: 8 → 4 s).
  int64_t measure_tokens = 8192;
  int window = 512;               // tokens per calibration window (capped at the context)
  // Statistics larger than this (the Gram matrices in double: TinyLlama-1.1B 7.7 GB, Llama-7B
  // 44 GB) are streamed: each layer's are measured as they complete and dropped, and writing
  // calibrates again (one more pass) instead of holding them all. The same bytes either way,
  // except that streaming skips the measured selection. 0: 40 % of the physical memory (not
  // the default: the 4-layer TinyLlama-1.1B shape, held that way, measured its calibration at
  // 423 s against 78 s streamed, not yet understood; README).
  uint64_t keep_stats_bytes = uint64_t(1) << 30;
  // Every candidate's encoding is kept from the measurement for the selection and the file when
  // all of them take at most this many bytes (tinymix: ~170 MB); else they are encoded again.
  uint64_t keep_encodings_bytes = uint64_t(1) << 30;
  // Rows each tensor's candidates are encoded and scored on: rows encode independently and a
  // tensor's error is the sum of its rows', so every candidate is scored on the same evenly
  // spaced rows and its error scaled by n / rows (the KL points' encodings are still whole).
  // -1: auto (kAutoCandidateRows for large models, else every row); 0: every row; N > 0: at most
  // N (the candidates' encodings are then not kept for the selection and the file). Not the embedding
  // (its rows weigh by token frequency), nor with row splits or outliers (they need every row).
  int64_t candidate_rows = -1;
  std::string stats_in, stats_out;  // --stats / --save-stats paths (empty: none)
  // Tokens of the KL windows that calibrate α_t (per point of the two-point fit: 2048 KL
  // tokens in all by default, which keeps tinymix under a minute; 2048 per point measured a
  // little better at 4.5-5.4 bits, README).
  int64_t kl_tokens = 1024;
  // The per-tensor KL runs take every other tensor in q8_g32 (the base they are measured from
  // too), whose int8 kernels run the windows ~1.85x faster than the bf16/f32 weights (tinymix,
  // pp512, 2 threads): the swapped tensor's KL is measured next to the unquantized model, not at
  // it, and with the int8 activations the runtime gives every quantized tensor (README).
  bool kl_base_q8 = true;
  // Layers whose tensors get KL runs (0: all). A KL run for a tensor of layer l runs layers
  // l..L-1 and the head, so their cost grows with the square of the depth (TinyLlama-1.1B:
  // ~35 of ~70 minutes on 2 threads; README). With N < L, N layers spread over the depth (the
  // first and the last included) are measured, and every other layer's tensors take α and the
  // exponents interpolated between the nearest measured layers' tensors of the same kind
  // (log α and γ linear in depth); their errors are still their own. -1: auto (every layer /
  // 4 for large models).
  int kl_layers = -1;
  // The text of the KL windows: the calibration text, text the model samples itself, or half
  // of each.
  enum class KlText { kCalib, kSelf, kBoth };
  KlText kl_text = KlText::kCalib;
  // The targets of the encodings written (the plan's errors and α stay those of the
  // unquantized model's statistics). Sequential (GPTQ's order): when the file is written, each
  // layer is encoded with the statistics of its inputs in the model whose earlier layers are
  // already quantized (one more pass over the calibration windows). Asymmetric (with
  // sequential; GPTAQ's idea, model/encode.h's asymmetric_target): each layer's target also
  // cancels the part of its inputs' upstream error that is linear in them, so that the quantized
  // layer's output approaches the unquantized model's (the pass also runs the unquantized model:
  // tinymix Δppl −20 to −55 % at the eight budgets of the README). Both off: every tensor is
  // encoded with the unquantized model's statistics (the measured candidates are reused).
  bool sequential = true;
  bool asymmetric = true;
  // Points of the KL-vs-error curve measured per tensor: 1 (the candidate nearest 3.5 bits per
  // weight: a line, KL_t(e) = α_t·e), 2 (also the one nearest 2.5 bits: the power law
  // KL_t,ref · (e / e_ref)^γ_t through both) or 3 (also the one nearest 5 bits: below e_ref the
  // curve bends to the exponent through the ref and high points, γ_high,t).
  int kl_points = 2;
  // Row splits: a tensor may also take two formats, the rows whose error falls most in the
  // higher one (a fraction of 1/8, 1/4, 1/2 or 3/4 of its rows, in multiples of 32, stored
  // behind a row map of 4 bytes per row), when that predicts less loss per byte. Off by
  // default: on tinymix the predicted KL fell 6-18 % but Δppl on held-out text moved -1.5 to
  // +0.4 points (the same sum over the eight budgets of the README; README).
  bool row_splits = false;
  // Sparse outliers (SpQR's idea; model/outliers.h): a tensor may also take, with any candidate,
  // 0.1 / 0.25 / 0.5 / 1 % of its weights as f16 corrections picked greedily by output-error
  // reduction (6 bytes each plus 4 per row of the tensor), when that predicts less loss per byte.
  // Off by default: on tinymix, after GPTQ, they lower a tensor's error by 0.1-0.9 nats of
  // e per added bit per weight (the first 0.01 % included), where one more bit of format lowers
  // it by 1.3-1.5, so the allocation never takes them (README).
  bool outliers = false;
  // Measured selection (AutoQuantizer::choose): besides the allocation's plan, the plans with
  // every tensor at or above each of the two largest candidates within the budget (a uniform
  // floor, topped up by the allocation) are encoded, the KL of each whole quantized model is
  // measured on windows held out from calibration (the calibration text's tokens after those
  // calibration used, else text the model samples), and the lowest wins. The predicted KL is a
  // sum of per-tensor curves; the measured one sees the tensors' interactions (tinymix: README).
  // Skipped when the statistics are streamed (large models: they are gone by then).
  bool select = true;
  int64_t select_tokens = 1024;  // tokens of the selection's KL windows, held out from calibration
  // Their text: sampled by the model (default), the calibration text after the tokens
  // calibration used (too short: the rest sampled), or half of each. On tinymix, whose
  // calibration text is memorized training data, sampled text chose better (README).
  KlText select_text = KlText::kSelf;
  // With sequential targets: measure each plan as written (one sequential pass per plan; write()
  // then reuses the chosen one's) instead of with the measured candidates' encodings. Off by
  // default: on tinymix it chose the same plans at six of the eight budgets of the README and
  // worse ones at 4.08 and 4.7 (+1.10 / +0.87 % Δppl against +0.88 / +0.50 %), in 2.8× the time.
  bool select_as_written = false;
  bool rank_check = false;        // also measure KL at one more candidate (rank_correlation)
  double rank_check_bpw = 4.5;    // ... the one nearest this many bits per weight
  bool dry_run = false;           // plan only: nothing is encoded or written
  int threads = 0;
  // (stage, done, total): stages "calibrating", "measuring tensors", "encoding" (large models:
  // statistics taken again), "encoding sequentially", "writing".
  std::function<void(const char*, size_t, size_t)> progress;
};

// candidate_rows' default for large models (README: measured on tinymix and TinyLlama's shape).
inline constexpr int64_t kAutoCandidateRows = 256;

// The formats the allocator chooses among by default, from 2.26 to 8.25 bits per weight.
std::vector<QType> default_candidates();

struct TensorPlan {
  std::string name;
  int64_t n = 0, k = 0;
  QType format = QType::kF32;
  uint64_t bytes = 0;
  double alpha = 0;           // measured KL per unit output error at the reference candidate
  double measured_kl = 0;     // KL with this tensor alone at its reference candidate
  double low_kl = NAN;        // two-point fit: KL with this tensor alone at the ~2.5-bit candidate
  double gamma = 1;           // exponent of the KL-vs-error curve (two-point fit; else 1)
  double high_kl = NAN;       // three-point fit: KL with this tensor alone at the ~5-bit candidate
  double gamma_high = 1;      // exponent below e_ref (three-point fit; else γ)
  bool kl_interpolated = false;  // α and γ from the neighbouring measured layers (kl_layers)
  double predicted_kl = 0;    // α · e of the chosen format
  // A row split: the output rows `split_rows` (ascending) in `split_format`, the others in
  // `format` (split_rows empty: every row in `format`). `bytes` counts both and the row map.
  QType split_format = QType::kF32;
  std::vector<int32_t> split_rows;
  // Sparse outliers (AutoQuantOptions::outliers): this many f16 corrections, picked on the
  // written encoding by model/outliers.h; `bytes` counts them (row pointers, columns, values).
  int64_t outliers = 0;
  bool fixed = false;         // set by the recipe
  // With rank_check: the KL measured and predicted at the rank check's candidate.
  double check_measured_kl = NAN, check_predicted_kl = NAN;
  std::vector<double> error;  // e per candidate (AutoQuantResult::candidates order)
  // With outliers: per candidate, the error reduction of the first outlier_levels()[l] picks.
  std::vector<std::vector<double>> outlier_gain;
};

// The outlier counts offered per tensor, as fractions of its weights (AutoQuantOptions::outliers).
inline constexpr double kOutlierLevels[] = {0.001, 0.0025, 0.005, 0.01};

// One plan measured by AutoQuantizer::choose.
struct PlanMeasurement {
  std::string label;       // "allocation" or "floor <format>"
  double bpw = 0;
  double predicted_kl = 0;
  double measured_kl = 0;  // mean KL per token of the whole quantized model on the held-out windows
};

struct AutoQuantResult {
  std::vector<QType> candidates;
  std::vector<TensorPlan> tensors;  // the 2-D tensors, in file order
  uint64_t tensor_bytes = 0;        // all tensors (norms included): what inspect counts
  double bpw = 0;
  double predicted_kl = 0;          // Σ predicted
  double rank_correlation = NAN;    // when rank_check
  std::string calib_source;
  int64_t calib_tokens = 0;
  // The settings the measurement ran with (the "auto" ones resolved): large model, KL tokens per
  // point, KL layers (0: every layer), rows the candidates were scored on (0: every row).
  bool large_model = false;
  bool calib_bf16 = false;  // the calibration passes ran in bf16 (calib_precision resolved)
  int64_t kl_tokens = 0, candidate_rows = 0;
  int kl_layers = 0;
  std::vector<PlanMeasurement> measured_plans;  // choose(): every plan measured (empty: plan())
  std::string chosen_plan;                       // ... the label of this one
  double seconds_calibrate = 0, seconds_candidates = 0, seconds_kl = 0, seconds_write = 0, seconds_select = 0;
};

// The steps, for callers that plan several budgets on one measurement (mxlm sweep):
//   AutoQuantizer q(m, o);       // cheap: tensors, recipe check
//   q.check_budget(4.0, 0);      // throws for a budget outside the reachable range
//   q.measure();                 // calibration, candidate errors, KL (the expensive part)
//   AutoQuantResult r = q.choose(4.0, 0);  // or plan(): the allocation alone, not measured
//   q.write(r, "out.mxlm");
class AutoQuantizer {
 public:
  AutoQuantizer(const ImportedModel& m, const AutoQuantOptions& options);
  ~AutoQuantizer();
  AutoQuantizer(const AutoQuantizer&) = delete;
  AutoQuantizer& operator=(const AutoQuantizer&) = delete;
  // Bits per weight (as inspect counts them) of the smallest and largest mix.
  double min_bpw() const;
  double max_bpw() const;
  void check_budget(double bpw, uint64_t size_bytes) const;
  void measure();
  AutoQuantResult plan(double bpw, uint64_t size_bytes) const;
  // plan(), then (options.select) the measured selection among it and its floored variants
  // (AutoQuantOptions::select); the encodings are kept for write().
  AutoQuantResult choose(double bpw, uint64_t size_bytes);
  void write(const AutoQuantResult& plan, const std::string& out_path);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Plans and (unless dry_run) writes `out_path` atomically. Throws Error naming the problem: a
// budget outside the reachable range (with the range in bits per weight and bytes), a missing,
// empty or too short calibration text, statistics of another model, a recipe naming an unknown
// tensor or format.
AutoQuantResult auto_quantize(const ImportedModel& m, const std::string& out_path, const AutoQuantOptions& options);

}  // namespace mxlm
