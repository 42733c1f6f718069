// The executor: Model (immutable weights, shareable across threads) and Context (KV cache and
// scratch; used by one thread at a time).
#pragma once

#include <array>
#include <chrono>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/aligned.h"
#include "kernels/isa.h"
#include "kernels/qtype.h"
#include "kernels/quant.h"
#include "model/config.h"
#include "model/import.h"
#include "model/mxlm_file.h"

namespace mxlm {

class Tokenizer;

// Rows [row_begin, row_end) of a weight in one format, bound to its kernel at load.
struct WeightSegment {
  int64_t row_begin = 0, row_end = 0;
  QType qtype = QType::kF32;
  // First row of the segment in the file's layout; null when the rows were repacked in place
  // (weights in the model's own memory, runtime/model.cc bind_segment).
  const uint8_t* data = nullptr;
  size_t row_bytes = 0;
  QGemmFn qgemm = nullptr;        // quantized formats: the kernel for the model's ISA
  const uint8_t* qdata = nullptr; // what qgemm reads: data, or the rows repacked at load
  std::shared_ptr<const uint8_t> packed;  // owns a repacked copy of the rows, if one was made
  bool repacked = false;          // qdata is in the kernel's own layout (a QPackFn)
  Isa kernel_isa = Isa::kRef;
};

// A weight matrix [n][k] inside the mapped file: row segments of one format each, an optional
// row map (stored row i is output row row_map[i]) and optional sparse f16 outliers.
struct Weight {
  int64_t n = 0, k = 0;
  std::vector<WeightSegment> segments;
  const uint8_t* row_map = nullptr;  // int32[n] or null
  TensorOutliers outliers;
  bool any_quantized = false;
};

struct LayerWeights {
  const float* attn_norm = nullptr;  // [n_embd]
  Weight wq, wk, wv, wo;
  const float* ffn_norm = nullptr;   // [n_embd]
  Weight gate, up, down;
};

// A weight over rows already in memory (one segment of format t, n rows of k elements), bound
// to the kernel of `isa` and repacked when that kernel reads its own layout (the Weight then owns
// the repacked copy; `rows` must outlive it). For calibration and sensitivity runs that swap one
// tensor of a model for a candidate encoding.
Weight make_weight(QType t, const uint8_t* rows, int64_t n, int64_t k, Isa isa);

// Where a loaded model's weights live. kHuge, the default, decoded TinyLlama-1.1B q4_g32 ~7 %
// faster than kMap on one thread (alternating runs in one process, `mxlm bench --memory
// map,copy,huge`; README, Speed): the hardware prefetchers stop at every 4 KiB page boundary.
// It costs a copy at load (0.3 s for 590 MB) and the model's size in anonymous memory. Copy
// and huge repack rows in place for kernels with a layout of their own (every 4-bit format on
// AVX2, q3 on AVX-512); map cannot, and makes a repacked copy of those tensors beside the file.
enum class WeightMemory {
  kMap,   // the file's read-only mapping: pages shared with the page cache (4 KiB)
  kCopy,  // read into anonymous memory (4 KiB pages)
  kHuge,  // read into anonymous memory backed by transparent huge pages where the system allows
};
std::string_view weight_memory_name(WeightMemory m);                   // "map", "copy", "huge"
std::optional<WeightMemory> weight_memory_from_name(std::string_view name);

struct LoadOptions {
  bool verify = false;  // recompute every tensor checksum at load
  WeightMemory memory = WeightMemory::kHuge;
  // The kernels' ISA: unset, selected_isa() (MXLM_ISA, else the best available); set, that one
  // (Error kUnsupported when this build or CPU cannot run it).
  std::optional<Isa> isa;
  // Threads for the load's own work (reading the file into memory, repacking rows for the
  // kernels, importing a GGUF or HF model); 0: OpenMP's default (every core). An app that loads
  // while other threads run inference gives it fewer, so that the two do not oversubscribe.
  int threads = 0;
};

class Model {
 public:
  // Maps and validates a .mxlm file, binds every tensor (checking its shape against the config)
  // and loads the embedded tokenizer. Throws Error naming the file and the problem.
  static std::shared_ptr<const Model> load(const std::string& path, const LoadOptions& options = {});
  // The tensor-source seam: a model that runs straight from imported tensors (the quantizer
  // calibrates on it). Float tensors in f32/f16/bf16 at their element alignment are read in place
  // from the source mapping (no copy: a 7B bf16 model costs its page cache, not 28 GB of f32);
  // RoPE-permuted, quantized or misaligned ones are converted to f32 once. Checks the tensor set
  // against the config (check_tensor_set).
  static std::shared_ptr<const Model> from_imported(std::shared_ptr<const ImportedModel> source,
                                                    std::optional<Isa> isa = std::nullopt);
  // Any model a user names: an .mxlm file (load, with `options`), or a GGUF file or an HF model
  // directory imported in memory (from_imported; of `options` only the ISA applies). Tells them apart by
  // content, not by name. *notice, when given, receives a line for the user when the model was
  // imported (that converting it once loads faster), else is cleared. Throws Error naming the path
  // and the kinds it reads when it is none of them.
  static std::shared_ptr<const Model> open(const std::string& path, const LoadOptions& options = {},
                                           std::string* notice = nullptr);
  ~Model();

  const ModelConfig& config() const { return config_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  // The model's chat template (Jinja2), "" when it carries none.
  const std::string& chat_template() const { return file_ ? file_->chat_template() : source_->chat_template; }
  // The .mxlm file (a loaded model only: throws for one made from_imported).
  const MxlmFile& file() const;
  Isa isa() const { return isa_; }
  const Weight& tok_embd() const { return tok_embd_; }
  const Weight& output() const { return output_; }
  const float* output_norm() const { return output_norm_; }
  const std::vector<LayerWeights>& layers() const { return layers_; }
  // Calls f(weight) for every weight a matmul reads: the output head, then each layer's seven.
  template <class F>
  void for_each_matmul_weight(F&& f) const {
    f(output_);
    for (const LayerWeights& l : layers_) {
      for (const Weight* w : {&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down}) f(*w);
    }
  }
  uint64_t weight_bytes() const;  // bytes of all tensors (what a token reads, roughly)
  // Bytes one decoded token reads: every matmul weight as the kernels read it, the norms and one
  // embedding row (all of a tied table, which the head reads).
  uint64_t bytes_per_token() const;
  // Bits per weight over the 2-D tensors as stored (an imported model: as the kernels read them).
  double bits_per_weight() const;
  bool imported() const { return file_ == nullptr; }
  // The embedding of token `id` as floats (dequantized, outliers added): n_embd values.
  void embedding_row(int id, float* out) const;
  // "format:isa" of every distinct (format, kernel ISA) pair, for logs ("/repacked" when the
  // kernel reads rows repacked at load).
  std::string kernel_summary() const;

 private:
  Model() = default;
  ModelConfig config_;
  std::unique_ptr<MxlmFile> file_;                // null for a model made from_imported
  std::shared_ptr<const ImportedModel> source_;   // its tensors (from_imported)
  std::vector<std::shared_ptr<const void>> owned_;  // tensors converted to f32 at load
  std::unique_ptr<Tokenizer> tokenizer_;
  Isa isa_ = Isa::kRef;
  Weight tok_embd_, output_;
  const float* output_norm_ = nullptr;
  std::vector<LayerWeights> layers_;
  std::vector<int32_t> embd_stored_row_;  // output row -> stored row, when tok_embd has a row map
};

// The distinct inputs of a layer's matmuls: q/k/v share the attention input, gate/up the FFN
// input.
enum class MatmulInput : uint8_t { kAttnIn, kAttnOut, kFfnIn, kFfnMid, kHeadIn };
inline constexpr int kMatmulInputs = 5;
const char* matmul_input_name(MatmulInput in);

// Where a Context's evaluation time goes (Context::set_profiling), by phase: the q/k/v, output,
// gate/up and down projections (each one parallel region, its activation quantization
// included), the output head, the KV cache's store, and attention (with the window's settle).
// The rest of a token (norms, RoPE, residual adds, SwiGLU, the embedding row) is the
// evaluation's time minus the phases'.
enum class Phase : uint8_t { kQkv, kWo, kGateUp, kDown, kHead, kKvStore, kAttention };
inline constexpr int kPhases = 7;
const char* phase_name(Phase p);

struct PhaseStats {
  double wall_s = 0;   // inside the phase
  double busy_s = 0;   // summed over the threads: inside the phase's parallel tasks
  double bytes = 0;    // read: the weights (once per call); attention: the KV cache a pass over
                       // the positions before the batch's last token reads (a decoded token's)
  double ops = 0;      // the projections' and head's: 2 x tokens x rows x K
  uint64_t calls = 0;
};

struct EvalProfile {
  std::array<PhaseStats, kPhases> phase{};
  double eval_s = 0;    // inside eval(): every phase and the rest
  uint64_t tokens = 0;  // evaluated by eval()
};

// Sees each distinct matmul input once per forward pass, before its matmuls run (calibration
// statistics hook in here): x is [m][k] row-major; layer is -1 for the output head's input.
class MatmulObserver {
 public:
  virtual ~MatmulObserver() = default;
  virtual void observe(int layer, MatmulInput in, const float* x, int m, int k) = 0;
};

// KV cache formats (runtime/kv_cache.h has the layouts): f32, f16, bf16, q8 (int8, a scale per
// token and head), q4 (4-bit asymmetric groups of 32), q2 (2-bit KIVI-style: keys per channel
// over blocks of 32 tokens, values per token, the recent tokens in f16); keys and values choose
// independently, and each layer its own.
enum class KvType : uint8_t { kF32, kF16, kBF16, kQ8, kQ4, kQ2 };
struct KvFormats {
  KvType k = KvType::kF32, v = KvType::kF32;
};
// "f32", "f16", "bf16", or "k<t>v<t>" with t in {32, 16, bf16, 8, 4, 2} ("k8v8", "k8v4", "k2v2",
// "k16v4" ...); nullopt otherwise.
std::optional<KvFormats> parse_kv_formats(std::string_view spec);
std::string kv_formats_name(KvFormats f);  // "f32", "k8v4", ...
// A per-layer plan: one spec for every layer ("k4v4"), or one per layer joined by '/'
// ("k8v8/k4v4/k4v2/...").
std::optional<std::vector<KvFormats>> parse_kv_plan(std::string_view spec);
std::string kv_plan_name(const std::vector<KvFormats>& plan);  // one spec when uniform
// Bytes of a model's KV cache in the formats of `plan` (one per layer, or one for every layer):
// per cached token over all layers, and in all at a context of n_ctx tokens with the 2-bit
// formats' f16 windows of `window` tokens (as a Context allocates them).
struct KvCacheSize {
  uint64_t per_token = 0, total = 0;
};
KvCacheSize kv_cache_size(const ModelConfig& c, const std::vector<KvFormats>& plan, int n_ctx, int window);

struct ContextParams {
  int n_ctx = 0;      // 0: the model's trained context
  int n_batch = 512;  // tokens evaluated per forward pass
  int n_threads = 0;  // 0: all cores
  // Activation quantization for quantized weights: one int8 scale per token (row), or one per
  // block of 32 values.
  bool act_per_token = false;
  // Prefill (M >= 16) matmuls: the int8/f32 kernels, or oneDNN's bf16 matmul on weight panels
  // dequantized on each call (forced only; it needs oneDNN and AVX-512, else the Context throws).
  // Auto is a fixed rule, not a measurement, so results never depend on timing: today it is the
  // kernels for every weight (they measured 50-1000x faster than the oneDNN path at M = 16..128;
  // the numbers are in Context::matmul). kBf16: float weights (f32, f16, bf16) at M >= 16 are
  // multiplied in bfloat16, the activations and weights rounded to bf16 and their exact products
  // summed in f32 (F32Kernels::gemm_bf16: AVX512-BF16's dot product), quantized weights as the
  // kernels: not exact (bf16 keeps 8 significant bits), and 1.85-2x the f16 weights' GEMM at 512
  // tokens on AVX-512 (README); the quantizer's statistics passes over large models run so.
  enum class Prefill { kAuto, kKernels, kOneDnn, kBf16 } prefill = Prefill::kAuto;
  KvFormats kv;                    // every layer's K and V cache formats, unless kv_layers
  std::vector<KvFormats> kv_layers;  // a plan (parse_kv_plan): one per layer, or one for all; overrides kv
  int kv_window = 64;              // 2-bit formats: recent tokens kept in f16 (KIVI's residual)
  // Attention's keys are taken in slices of this many positions (a multiple of 32; 0: 1024),
  // combined by their log-sum-exp (runtime/attention.h); a decoded token's slices run on separate
  // threads when the KV heads are few. The numbers depend on it (never on the thread count).
  int attention_slice = 0;
};

class ThreadPool;
class KvCache;

class Context {
 public:
  explicit Context(std::shared_ptr<const Model> model, const ContextParams& params = {});
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  // Evaluates `tokens` at positions n_past() .. n_past() + size - 1 (in batches of n_batch) and
  // returns their logits: [size][n_vocab] when all_logits, else [1][n_vocab] for the last token.
  // The pointer stays valid until the next eval. Throws Error (kContextFull) when the tokens do
  // not fit, (kInvalidArgument) for an empty list or an id outside the vocabulary. Each batch
  // first leases its threads' cores from the process (runtime/core_budget.h), so contexts
  // evaluated on several threads at once share the cores instead of oversubscribing them.
  const float* eval(std::span<const int> tokens, bool all_logits = false);

  // Layer-by-layer evaluation, for calibration and sensitivity runs that hold every token's
  // hidden state between layers and may swap a layer's weights. x is [n][n_embd] with
  // n <= n_batch tokens at positions p0 .. p0 + n - 1; eval_layer writes layer l's KV cache at
  // those positions (so a sequence's layer l runs after its positions < p0 have) and leaves
  // n_past() alone. Null overrides mean the model's own weights.
  void embed(std::span<const int> tokens, float* x, const Weight* tok_embd = nullptr);
  void eval_layer(int l, float* x, int n, int p0, const LayerWeights* weights = nullptr);
  // Layer l's matmul inputs only (for the observer): eval_layer up to the FFN's down projection,
  // whose output only the layer's output needs and which is skipped (a quarter of the layer's
  // multiply-adds on Llama shapes); x is left as scratch, layer l's KV cache written.
  void observe_layer(int l, float* x, int n, int p0);
  // Logits [n][n_vocab] of the final hidden states x [n][n_embd].
  void eval_head(const float* x, int n, float* logits, const Weight* output = nullptr);
  // Every matmul input of later evaluations goes to `observer` (null: none); not owned.
  void set_observer(MatmulObserver* observer) { observer_ = observer; }

  int n_past() const { return n_past_; }
  int n_ctx() const { return n_ctx_; }
  int n_threads() const { return n_threads_; }
  void reset() { truncate(0); }
  // Forgets positions n .. n_past() - 1 (n <= n_past()): the cache keeps the first n tokens, so
  // evaluation goes on from a shared prefix (a benchmark's filled context, a regenerated reply).
  void truncate(int n);
  // Context shift: forgets positions [n_keep, n_keep + n_discard) and moves the later ones down
  // (their cached keys re-rotated), so evaluation goes on with n_past() - n_discard positions
  // used, as if the kept tokens had been evaluated alone (up to rounding, and to requantizing
  // quantized keys). Throws Error (kInvalidArgument) unless n_keep >= 0, n_discard >= 1 and
  // n_keep + n_discard <= n_past().
  void shift(int n_keep, int n_discard);
  // Bytes of keys and values one token holds in the cache, over all layers (what attention
  // reads per cached token and generated token).
  size_t kv_bytes_per_token() const;
  // The phase profile of eval() (EvalProfile): switched on (and cleared) or off; off costs a
  // branch per phase, on two clock reads per phase and thread. profile() accumulates until
  // cleared; it is empty while profiling is off.
  void set_profiling(bool on);
  void clear_profile();
  const EvalProfile& profile() const { return profile_; }
  size_t kv_bytes() const;  // the whole cache at n_ctx(), with the 2-bit formats' f16 windows
  // Bytes of the cache a token at position n - 1 reads (n positions held), over all layers.
  double kv_read_bytes(int n) const;
  const Model& model() const { return *model_; }

 private:
  // Activations feeding one or more matmuls: quantized once, on first use by a quantized weight.
  struct Acts {
    const float* x;
    int m, k;
    int layer = -1;  // for the observer
    MatmulInput in = MatmulInput::kHeadIn;
    bool quantized = false, observed = false;
  };
  void forward_batch(const int* tokens, int n, bool all_logits, float* logits_out);
  // output false: stops after the down projection's input is observed (observe_layer).
  void layer_forward(const LayerWeights& w, int l, float* x, int n, int p0, bool output = true);
  void head_forward(const Weight& output, const float* x, int n, float* logits);
  void check_span(int n, int p0, const char* what) const;
  void check_layer(int l, int n, int p0, const char* what) const;  // check_span and l in range
  // y = a · wᵀ for one or more weights sharing the input a (q/k/v, gate/up): one task list
  // over all their rows, one parallel region.
  struct MatmulJob {
    const Weight* w;
    float* y;
  };
  void matmul(Acts& a, std::initializer_list<MatmulJob> jobs);
  void matmul(Acts& a, const Weight& w, float* y) { matmul(a, {MatmulJob{&w, y}}); }
  void matmul_dense(Acts& a, std::span<const MatmulJob> jobs, bool onednn, bool bf16);
  void quantize_acts(Acts& a);
  // f(b) for every token b < n of a batch (model.cc).
  template <class F>
  void per_token(int n, F&& f);

  std::shared_ptr<const Model> model_;
  int n_ctx_ = 0, n_batch_ = 0, n_threads_ = 1, n_past_ = 0;
  std::unique_ptr<KvCache> kv_;  // runtime/kv_cache.h
  // Attention runs over chunks of up to kAttRows query rows (tokens x the query heads of one KV
  // head); att_rows() is the most one chunk holds. Per thread: the rows, their outputs, scores
  // [rows][n_ctx], the slices' parts and log-sum-exps; att_par_: those of a decode step whose
  // slices run as separate tasks (layer_forward).
  static constexpr int kAttRows = 64;
  int att_rows() const;
  int att_slice_ = 0;
  AlignedVector<float> att_q_, att_o_, att_w_, att_lse_, att_parts_, att_par_;
  std::vector<float> rope_cos_, rope_sin_;  // [n_ctx][head_dim / 2]
  AlignedVector<float> x_, xb_, xb2_, q_, k_, v_, att_out_, hb_, hb2_, scores_;
  std::vector<float> logits_;
  bool act_per_token_ = false;
  AlignedVector<int8_t> aq_;        // [n_batch][kp]
  AlignedVector<float> ad_, ads_;   // [n_batch][kp / 32]
  AlignedVector<float> mm_tmp_;     // row-mapped outputs before scattering
  std::vector<uint16_t> x_bf16_, w_bf16_;  // Prefill::kBf16: the activations, each thread's weight rows
  ContextParams::Prefill prefill_ = ContextParams::Prefill::kAuto;
  MatmulObserver* observer_ = nullptr;
  // The phase profile: a mark at a phase's start, added to its stats at the end (no-ops when off).
  struct ProfMark {
    std::chrono::steady_clock::time_point t;
    double busy = 0;
  };
  ProfMark prof_mark() const;
  void prof_add(Phase p, const ProfMark& m, double bytes, double ops = 0);
  bool profiling_ = false;
  EvalProfile profile_;
  std::unique_ptr<ThreadPool> pool_;  // the parallel regions of eval (runtime/thread_pool.h)
};

}  // namespace mxlm
