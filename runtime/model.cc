#include "mxlm/model.h"

#include <omp.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <cmath>
#include <cstring>
#include <map>
#include <new>

#include "base/error.h"
#include "kernels/f32_ops.h"
#include "kernels/onednn_gemm.h"
#include "model/file_util.h"
#include "model/mxlm_file.h"
#include "runtime/attention.h"
#include "runtime/core_budget.h"
#include "runtime/kv_cache.h"
#include "runtime/thread_pool.h"
#include "tokenizer/tokenizer.h"

namespace mxlm {

namespace {

// Calls f(col, value) for each outlier of output row `row` (the CSR arrays are unaligned).
template <typename F>
void for_each_outlier(const TensorOutliers& o, int64_t row, F&& f) {
  int32_t b, e;
  std::memcpy(&b, o.row_ptr + 4 * size_t(row), 4);
  std::memcpy(&e, o.row_ptr + 4 * size_t(row + 1), 4);
  for (int32_t j = b; j < e; ++j) {
    int32_t col;
    uint16_t v;
    std::memcpy(&col, o.cols + 4 * size_t(j), 4);
    std::memcpy(&v, o.values + 2 * size_t(j), 2);
    f(col, f16_to_f32(v));
  }
}

Isa checked_isa(Isa isa) {
  if (!isa_available(isa)) {
    std::string avail;
    for (Isa a : available_isas()) avail += (avail.empty() ? "" : ", ") + std::string(isa_name(a));
    throw Error(ErrorCode::kUnsupported, "ISA " + std::string(isa_name(isa)) + " was asked for, but this build or CPU cannot run it; available: " + avail);
  }
  return isa;
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

const TensorEntry& require(const MxlmFile& f, const std::string& name, const std::vector<int64_t>& shape) {
  const TensorEntry* t = f.find(name);
  if (!t) throw Error(ErrorCode::kFormat, "'" + f.path() + "': tensor '" + name + "' is missing");
  if (t->shape != shape) {
    throw Error(ErrorCode::kFormat, "'" + f.path() + "': tensor '" + name + "' has shape " + shape_str(t->shape) +
                                        ", the config needs " + shape_str(shape));
  }
  return *t;
}

// Binds rows [row_begin, row_end) in format t at `data` to the kernel of `isa`. matmul: the weight
// feeds matmuls (else only embedding lookups read it: no kernel, no repacked copy). `what` names
// the tensor in errors. in_place: the same rows, writable, when nothing but the kernel will read
// them (else null): a kernel with its own layout repacks them there instead of into a copy.
WeightSegment bind_segment(QType t, const uint8_t* data, int64_t row_begin, int64_t row_end, int64_t k, Isa isa,
                           bool matmul, const std::string& what, bool huge_pages = false, uint8_t* in_place = nullptr) {
  WeightSegment s;
  s.row_begin = row_begin;
  s.row_end = row_end;
  s.qtype = t;
  s.data = data;
  s.row_bytes = *qtype_row_bytes(t, static_cast<uint64_t>(k));
  if (is_float_qtype(t)) {
    s.kernel_isa = isa;
    return s;
  }
  const QKernel qk = find_qkernel(t, isa);
  if (!qk.gemm) {
    throw Error(ErrorCode::kUnsupported, what + " has format " + std::string(qtype_info(t).name) + ", which has no kernel in this build");
  }
  s.qgemm = matmul ? qk.gemm : nullptr;
  s.qdata = s.data;
  // The kernel's groups of rows (QKernel::pack_rows; the last may be smaller), each packed in one
  // call.
  const int64_t rows = row_end - row_begin, pr = qk.pack_rows, groups = (rows + pr - 1) / pr;
  const size_t group_bytes = s.row_bytes * size_t(pr);
  auto group_rows = [&](int64_t g) { return int(std::min<int64_t>(pr, rows - g * pr)); };
  if (qk.pack && matmul && in_place) {
    // The kernel reads its own layout and the rows are the model's own memory: repack each group
    // through a scratch group. The file's layout is gone (s.data null): no dequantization, no
    // oneDNN path (the Context refuses it). A copy would double the resident size of every
    // format whose AVX2 or AVX-512 kernel repacks (all 4-bit formats).
    // Scratch allocated before the region: nothing inside it can throw (an exception leaving an
    // OpenMP region terminates the process; the C API promises none escapes).
    const int nt = omp_get_max_threads();
    std::vector<uint8_t> scratch(group_bytes * size_t(nt));
#pragma omp parallel num_threads(nt)
    {
      uint8_t* mine = scratch.data() + group_bytes * size_t(omp_get_thread_num());
#pragma omp for schedule(static)
      for (int64_t g = 0; g < groups; ++g) {
        uint8_t* at = in_place + group_bytes * size_t(g);
        const int n = group_rows(g);
        qk.pack(at, mine, k, n, s.row_bytes);
        std::memcpy(at, mine, s.row_bytes * size_t(n));
      }
    }
    s.qdata = in_place;
    s.data = nullptr;
    s.repacked = true;
  } else if (qk.pack && matmul) {
    // The kernel reads its own layout: repack the segment's rows once (same size; the original
    // rows stay for dequantization, the oneDNN path and embedding lookups).
    const size_t bytes = s.row_bytes * static_cast<size_t>(rows);
    std::shared_ptr<uint8_t> mem = alloc_anonymous(bytes, huge_pages, what + " repacked");
    uint8_t* buf = mem.get();
    s.packed = std::move(mem);
#pragma omp parallel for schedule(static)
    for (int64_t g = 0; g < groups; ++g) {
      qk.pack(s.data + group_bytes * size_t(g), buf + group_bytes * size_t(g), k, group_rows(g), s.row_bytes);
    }
    s.qdata = buf;
    s.repacked = true;
  }
  s.kernel_isa = qk.isa;
  return s;
}

// in_place: the weight's rows may be repacked in the file's memory (bind_segment).
Weight bind_weight(MxlmFile& f, const std::string& name, int64_t n, int64_t k, Isa isa, bool huge_pages,
                   bool matmul = true, bool in_place = true) {
  const TensorEntry& t = require(f, name, {n, k});
  Weight w;
  w.n = n;
  w.k = k;
  w.row_map = t.row_map;
  w.outliers = t.outliers;
  for (const TensorSegment& ts : t.segments) {
    w.segments.push_back(bind_segment(ts.qtype, ts.data, ts.row_begin, ts.row_end, k, isa, matmul,
                                      "'" + f.path() + "': tensor '" + name + "'", huge_pages,
                                      in_place ? f.writable(ts.data) : nullptr));
    w.any_quantized |= !is_float_qtype(ts.qtype);
  }
  return w;
}

const float* bind_norm(const MxlmFile& f, const std::string& name, int64_t n) {
  const TensorEntry& t = require(f, name, {n});
  // Bound through its validated segment (in range, 4-byte aligned for f32), not the tensor's
  // start: a segment may sit anywhere inside the tensor's bytes. A norm has no row map or
  // outliers to apply, so a file that gives it some is rejected rather than half-read.
  if (t.segments.size() != 1 || t.segments[0].qtype != QType::kF32 || t.row_map || t.outliers.nnz) {
    throw Error(ErrorCode::kFormat, "'" + f.path() + "': norm tensor '" + name +
                                        "' must be one plain f32 segment (no row map, no outliers)");
  }
  return reinterpret_cast<const float*>(t.segments[0].data);
}

// Caps the OpenMP regions this thread starts while it lives at n threads (n > 0; 0: no change;
// negative: Error). nthreads-var is a per-thread ICV: other threads' regions keep their own.
class ScopedOmpThreads {
 public:
  explicit ScopedOmpThreads(int n) : saved_(omp_get_max_threads()), set_(n > 0) {
    if (n < 0) throw Error(ErrorCode::kInvalidArgument, "load threads " + std::to_string(n) + " is negative");
    if (set_) omp_set_num_threads(n);
  }
  ~ScopedOmpThreads() {
    if (set_) omp_set_num_threads(saved_);
  }
  ScopedOmpThreads(const ScopedOmpThreads&) = delete;
  ScopedOmpThreads& operator=(const ScopedOmpThreads&) = delete;

 private:
  int saved_;
  bool set_;
};

}  // namespace

std::string_view weight_memory_name(WeightMemory m) {
  switch (m) {
    case WeightMemory::kMap: return "map";
    case WeightMemory::kCopy: return "copy";
    case WeightMemory::kHuge: return "huge";
  }
  return "?";
}

std::optional<WeightMemory> weight_memory_from_name(std::string_view name) {
  for (WeightMemory m : {WeightMemory::kMap, WeightMemory::kCopy, WeightMemory::kHuge}) {
    if (name == weight_memory_name(m)) return m;
  }
  return std::nullopt;
}

Weight make_weight(QType t, const uint8_t* rows, int64_t n, int64_t k, Isa isa) {
  Weight w;
  w.n = n;
  w.k = k;
  w.segments.push_back(bind_segment(t, rows, 0, n, k, isa, true, "a candidate weight"));
  w.any_quantized = !is_float_qtype(t);
  return w;
}

Model::~Model() = default;

const MxlmFile& Model::file() const {
  if (!file_) throw Error(ErrorCode::kInvalidArgument, "this model runs from imported tensors and has no .mxlm file");
  return *file_;
}

std::shared_ptr<const Model> Model::load(const std::string& path, const LoadOptions& options) {
  const ScopedOmpThreads threads(options.threads);
  std::shared_ptr<Model> m(new Model());
  m->file_ = options.memory == WeightMemory::kMap
                 ? std::make_unique<MxlmFile>(path)
                 : std::make_unique<MxlmFile>(MappedFile::read_into_memory(path, options.memory == WeightMemory::kHuge));
  MxlmFile& f = *m->file_;
  if (options.verify) f.verify();
  m->config_ = f.config();
  const ModelConfig& c = m->config_;
  if (f.tokenizer_kind() != "sentencepiece") {
    throw Error(ErrorCode::kUnsupported, "'" + path + "': tokenizer kind '" + std::string(f.tokenizer_kind()) + "' is not supported");
  }
  m->tokenizer_ = Tokenizer::from_spm_proto(f.tokenizer_blob());
  if (m->tokenizer_->n_vocab() > c.n_vocab) {
    throw Error(ErrorCode::kFormat, "'" + path + "': the tokenizer has " + std::to_string(m->tokenizer_->n_vocab()) +
                                        " pieces, more than the model's vocabulary of " + std::to_string(c.n_vocab));
  }
  m->isa_ = options.isa ? checked_isa(*options.isa) : selected_isa();
  using namespace tensor_names;
  const int64_t q = int64_t{c.n_heads} * c.head_dim, kv = int64_t{c.n_kv_heads} * c.head_dim;
  const bool huge = options.memory == WeightMemory::kHuge;
  // Embedding lookups read the file's rows: a tied table is never repacked in place.
  m->tok_embd_ = bind_weight(f, kTokEmbd, c.n_vocab, c.n_embd, m->isa_, huge, c.tied_embeddings, false);
  m->output_norm_ = bind_norm(f, kOutputNorm, c.n_embd);
  if (c.tied_embeddings) {
    if (f.find(kOutput)) throw Error(ErrorCode::kFormat, "'" + path + "': tied embeddings but an 'output' tensor is present");
    m->output_ = m->tok_embd_;
  } else {
    m->output_ = bind_weight(f, kOutput, c.n_vocab, c.n_embd, m->isa_, huge);
  }
  for (int i = 0; i < c.n_layers; ++i) {
    LayerWeights l;
    l.attn_norm = bind_norm(f, layer(i, kAttnNorm), c.n_embd);
    l.wq = bind_weight(f, layer(i, kAttnQ), q, c.n_embd, m->isa_, huge);
    l.wk = bind_weight(f, layer(i, kAttnK), kv, c.n_embd, m->isa_, huge);
    l.wv = bind_weight(f, layer(i, kAttnV), kv, c.n_embd, m->isa_, huge);
    l.wo = bind_weight(f, layer(i, kAttnO), c.n_embd, q, m->isa_, huge);
    l.ffn_norm = bind_norm(f, layer(i, kFfnNorm), c.n_embd);
    l.gate = bind_weight(f, layer(i, kFfnGate), c.n_ff, c.n_embd, m->isa_, huge);
    l.up = bind_weight(f, layer(i, kFfnUp), c.n_ff, c.n_embd, m->isa_, huge);
    l.down = bind_weight(f, layer(i, kFfnDown), c.n_embd, c.n_ff, m->isa_, huge);
    m->layers_.push_back(l);
  }
  f.seal();
  if (m->tok_embd_.row_map) {
    m->embd_stored_row_.resize(static_cast<size_t>(c.n_vocab));
    for (int i = 0; i < c.n_vocab; ++i) {
      int32_t r;
      std::memcpy(&r, m->tok_embd_.row_map + 4 * size_t(i), 4);
      m->embd_stored_row_[static_cast<size_t>(r)] = i;
    }
  }
  const size_t expected = 2 + (c.tied_embeddings ? 0 : 1) + size_t{9} * c.n_layers;
  if (f.tensors().size() != expected) {
    for (const auto& t : f.tensors()) {
      bool known = t.name == kTokEmbd || t.name == kOutputNorm || t.name == kOutput || t.name.rfind("blk.", 0) == 0;
      if (!known) throw Error(ErrorCode::kFormat, "'" + path + "': unexpected tensor '" + t.name + "'");
    }
    throw Error(ErrorCode::kFormat, "'" + path + "': " + std::to_string(f.tensors().size()) + " tensors, the config needs " +
                                        std::to_string(expected));
  }
  return m;
}

std::shared_ptr<const Model> Model::from_imported(std::shared_ptr<const ImportedModel> source, std::optional<Isa> isa) {
  check_tensor_set(*source);
  std::shared_ptr<Model> m(new Model());
  m->source_ = source;
  m->config_ = source->config;
  const ModelConfig& c = m->config_;
  m->tokenizer_ = Tokenizer::from_spm_proto(source->tokenizer_proto);
  m->isa_ = isa ? checked_isa(*isa) : selected_isa();
  std::map<std::string, const SourceTensor*> by_name;
  for (const SourceTensor& t : source->tensors) by_name[t.name] = &t;
  // The tensor's rows as a float format the f32 kernels read in place, converting to f32 when
  // they cannot (quantized or RoPE-permuted sources, or data off its element alignment).
  auto rows_of = [&](const SourceTensor& t, QType* type) -> const uint8_t* {
    const int64_t n = t.shape.size() == 2 ? t.shape[0] : 1, k = t.shape.back();
    const size_t elem = is_float_qtype(t.src_type) ? size_t(qtype_info(t.src_type).block_bytes) : 0;
    if (elem && t.rope_unpermute_head_dim == 0 && reinterpret_cast<uintptr_t>(t.data) % elem == 0) {
      *type = t.src_type;
      return t.data;
    }
    auto buf = std::shared_ptr<float[]>(new float[size_t(n) * size_t(k)]);
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < n; ++r) read_source_row(t, r, buf.get() + size_t(r) * size_t(k));
    m->owned_.push_back(buf);
    *type = QType::kF32;
    return reinterpret_cast<const uint8_t*>(buf.get());
  };
  auto weight = [&](const std::string& name, bool matmul = true) {
    const SourceTensor& t = *by_name.at(name);
    QType type;
    const uint8_t* rows = rows_of(t, &type);
    Weight w;
    w.n = t.shape[0];
    w.k = t.shape[1];
    w.segments.push_back(bind_segment(type, rows, 0, w.n, w.k, m->isa_, matmul, "tensor '" + name + "'"));
    return w;
  };
  auto norm = [&](const std::string& name) {
    const SourceTensor& t = *by_name.at(name);
    if (t.src_type == QType::kF32 && reinterpret_cast<uintptr_t>(t.data) % 4 == 0) return reinterpret_cast<const float*>(t.data);
    auto buf = std::shared_ptr<float[]>(new float[size_t(t.shape[0])]);
    read_source_row(t, 0, buf.get());
    m->owned_.push_back(buf);
    return static_cast<const float*>(buf.get());
  };
  using namespace tensor_names;
  m->tok_embd_ = weight(kTokEmbd, c.tied_embeddings);
  m->output_norm_ = norm(kOutputNorm);
  m->output_ = c.tied_embeddings ? m->tok_embd_ : weight(kOutput);
  for (int i = 0; i < c.n_layers; ++i) {
    LayerWeights l;
    l.attn_norm = norm(layer(i, kAttnNorm));
    l.wq = weight(layer(i, kAttnQ));
    l.wk = weight(layer(i, kAttnK));
    l.wv = weight(layer(i, kAttnV));
    l.wo = weight(layer(i, kAttnO));
    l.ffn_norm = norm(layer(i, kFfnNorm));
    l.gate = weight(layer(i, kFfnGate));
    l.up = weight(layer(i, kFfnUp));
    l.down = weight(layer(i, kFfnDown));
    m->layers_.push_back(l);
  }
  return m;
}

void Model::embedding_row(int id, float* out) const {
  const Weight& w = tok_embd_;
  const int64_t stored = embd_stored_row_.empty() ? id : embd_stored_row_[static_cast<size_t>(id)];
  for (const WeightSegment& s : w.segments) {
    if (stored >= s.row_begin && stored < s.row_end) {
      dequantize_row(s.qtype, s.data + static_cast<size_t>(stored - s.row_begin) * s.row_bytes, w.k, out);
      break;
    }
  }
  if (w.outliers.nnz) for_each_outlier(w.outliers, id, [&](int32_t col, float v) { out[col] += v; });
}

std::string Model::kernel_summary() const {
  std::vector<std::string> seen;
  auto add = [&](const Weight& w) {
    for (const WeightSegment& s : w.segments) {
      std::string k = std::string(qtype_info(s.qtype).name) + ":" + std::string(isa_name(s.kernel_isa)) +
                      (s.repacked ? "/repacked" : "");
      if (std::find(seen.begin(), seen.end(), k) == seen.end()) seen.push_back(k);
    }
  };
  for_each_matmul_weight(add);
  std::string r;
  for (const auto& k : seen) r += (r.empty() ? "" : ", ") + k;
  return r;
}

std::shared_ptr<const Model> Model::open(const std::string& path, const LoadOptions& options, std::string* notice) {
  if (notice) notice->clear();
  const ScopedOmpThreads threads(options.threads);
  const auto t0 = std::chrono::steady_clock::now();
  auto imported = [&](ImportedModel m) {
    auto model = from_imported(std::make_shared<const ImportedModel>(std::move(m)), options.isa);
    if (notice) {
      char buf[64];
      std::snprintf(buf, sizeof(buf), "%.1f s", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      *notice = "imported '" + path + "' (" + source_format_name(model->source_->format) + ") in memory in " + buf +
                "; converting it once (mxlm convert " + path + " -o model.mxlm) loads faster";
    }
    return model;
  };
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) return imported(import_hf(path, {}));
  char magic[8] = {};
  {
    std::FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) throw Error(ErrorCode::kIo, "cannot open model '" + path + "': " + std::strerror(errno));
    const size_t got = std::fread(magic, 1, sizeof(magic), f);
    std::fclose(f);
    if (got < 4) throw Error(ErrorCode::kFormat, "'" + path + "' is not a model: " + std::to_string(got) + " bytes long");
  }
  if (std::memcmp(magic, kMxlmMagic, sizeof(magic)) == 0) return load(path, options);
  if (std::memcmp(magic, "GGUF", 4) == 0) return imported(import_gguf(path, {}));
  throw Error(ErrorCode::kFormat, "'" + path +
                                      "' is not a model mxlm runs: neither an .mxlm file, a GGUF file nor an HF model directory "
                                      "(a llama2.c checkpoint converts with mxlm convert CHECKPOINT --tokenizer TOKENIZER -o model.mxlm)");
}

uint64_t Model::bytes_per_token() const {
  if (file_) {
    uint64_t total = 0;
    for (const auto& t : file_->tensors()) {
      const bool table = t.name == tensor_names::kTokEmbd && !config_.tied_embeddings;
      total += table ? t.bytes / static_cast<uint64_t>(t.rows()) : t.bytes;
    }
    return total;
  }
  auto bytes = [](const Weight& w) {
    uint64_t b = 0;
    for (const WeightSegment& s : w.segments) b += uint64_t(s.row_bytes) * uint64_t(s.row_end - s.row_begin);
    return b;
  };
  uint64_t total = 0;
  for_each_matmul_weight([&](const Weight& w) { total += bytes(w); });
  if (!config_.tied_embeddings) total += bytes(tok_embd_) / uint64_t(tok_embd_.n);
  return total + sizeof(float) * uint64_t(config_.n_embd) * uint64_t(2 * config_.n_layers + 1);
}

double Model::bits_per_weight() const {
  if (file_) return file_->bits_per_weight();
  double bits = 0, elems = 0;
  auto add = [&](const Weight& w) {
    for (const WeightSegment& s : w.segments) bits += 8.0 * double(s.row_bytes) * double(s.row_end - s.row_begin);
    elems += double(w.n) * double(w.k);
  };
  for_each_matmul_weight(add);
  if (!config_.tied_embeddings) add(tok_embd_);
  return elems > 0 ? bits / elems : 0.0;
}

uint64_t Model::weight_bytes() const {
  uint64_t total = 0;
  if (file_) {
    for (const auto& t : file_->tensors()) total += t.bytes;
    return total;
  }
  for (const SourceTensor& t : source_->tensors) {
    total += *qtype_row_bytes(t.src_type, uint64_t(t.shape.back())) * uint64_t(t.shape.size() == 2 ? t.shape[0] : 1);
  }
  return total;
}

Context::Context(std::shared_ptr<const Model> model, const ContextParams& params) : model_(std::move(model)) {
  const ModelConfig& c = model_->config();
  n_ctx_ = params.n_ctx > 0 ? params.n_ctx : c.n_ctx;
  if (n_ctx_ > c.n_ctx) {
    throw Error(ErrorCode::kInvalidArgument, "context of " + std::to_string(n_ctx_) + " tokens exceeds the model's trained context of " +
                                                 std::to_string(c.n_ctx));
  }
  n_batch_ = std::clamp(params.n_batch, 1, n_ctx_);
  n_threads_ = params.n_threads > 0 ? params.n_threads : omp_get_num_procs();
  const size_t kv = size_t(c.n_kv_heads) * c.head_dim, q = size_t(c.n_heads) * c.head_dim;
  std::vector<KvFormats> kv_plan = params.kv_layers;
  if (kv_plan.size() <= 1) kv_plan.assign(size_t(c.n_layers), kv_plan.empty() ? params.kv : kv_plan[0]);
  if (kv_plan.size() != size_t(c.n_layers)) {
    throw Error(ErrorCode::kInvalidArgument, "a KV plan of " + std::to_string(kv_plan.size()) + " layers for a model of " +
                                                 std::to_string(c.n_layers));
  }
  if (params.kv_window < 0) {
    throw Error(ErrorCode::kInvalidArgument, "a KV window of " + std::to_string(params.kv_window) + " tokens: it must be >= 0");
  }
  // A window past the context keeps every position in it: no longer than the context.
  kv_ = std::make_unique<KvCache>(c.n_layers, n_ctx_, c.n_kv_heads, c.head_dim, kv_plan, std::min(params.kv_window, n_ctx_));
  const int half = c.head_dim / 2;
  rope_cos_.resize(size_t(n_ctx_) * half);
  rope_sin_.resize(size_t(n_ctx_) * half);
  for (int p = 0; p < n_ctx_; ++p) {
    for (int i = 0; i < half; ++i) {
      const double inv_freq = std::pow(double(c.rope_theta), -2.0 * i / c.head_dim);
      const double a = p * inv_freq;
      rope_cos_[size_t(p) * half + i] = static_cast<float>(std::cos(a));
      rope_sin_[size_t(p) * half + i] = static_cast<float>(std::sin(a));
    }
  }
  const size_t B = n_batch_;
  x_.resize(B * c.n_embd);
  xb_.resize(B * std::max<size_t>(c.n_embd, q));
  xb2_.resize(B * c.n_embd);
  q_.resize(B * q);
  k_.resize(B * kv);
  v_.resize(B * kv);
  att_out_.resize(B * q);
  hb_.resize(B * c.n_ff);
  hb2_.resize(B * c.n_ff);
  att_slice_ = params.attention_slice == 0 ? kAttSlice : params.attention_slice;
  if (att_slice_ < 0 || att_slice_ % KvCache::kBlock != 0) {
    throw Error(ErrorCode::kInvalidArgument, "an attention slice of " + std::to_string(params.attention_slice) +
                                                 " positions: it must be a positive multiple of " + std::to_string(KvCache::kBlock));
  }
  const int slices_max = attention_slices(n_ctx_ - 1, att_slice_);
  // Per-thread slots of whole cache lines (threads write their own slot; see base/aligned.h).
  auto slots = [&](size_t per_thread) { return size_t(n_threads_) * ((per_thread + 15) / 16 * 16); };
  scores_.resize(slots(size_t(att_rows()) * n_ctx_));
  att_lse_.resize(slots(size_t(att_rows()) * slices_max));
  att_parts_.resize(slots(2 * size_t(att_rows()) * c.head_dim * slices_max));
  att_q_.resize(slots(size_t(att_rows()) * c.head_dim));
  att_o_.resize(att_q_.size());
  att_w_.resize(slots(attention_window_scratch(*kv_, att_rows(), att_rows() / (c.n_heads / c.n_kv_heads))));
  pool_ = std::make_unique<ThreadPool>(n_threads_);
  act_per_token_ = params.act_per_token;
  prefill_ = params.prefill;
  if (prefill_ == ContextParams::Prefill::kOneDnn && !onednn_available()) {
    throw Error(ErrorCode::kUnsupported, "the oneDNN prefill needs a build with oneDNN and an AVX-512 CPU");
  }
  if (prefill_ == ContextParams::Prefill::kOneDnn) {
    bool ok = true;
    model_->for_each_matmul_weight([&](const Weight& w) {
      for (const WeightSegment& s : w.segments) ok = ok && s.data != nullptr;
    });
    if (!ok) {
      throw Error(ErrorCode::kUnsupported, "the oneDNN prefill reads the file's rows, which this load repacked in place for the " +
                                               std::string(isa_name(model_->isa())) + " kernels: load the model with --memory map");
    }
  }
  const int64_t kmax = act_padded_k(std::max<int64_t>({c.n_embd, int64_t(q), c.n_ff}));
  aq_.resize(B * size_t(kmax));
  ad_.resize(B * size_t(kmax / kActBlock));
  ads_.resize(B * size_t(kmax / kActBlock));
}

Context::~Context() = default;

// The norms, RoPE, SwiGLU and residual adds of a batch: on the pool from kPerTokenPool tokens on
// (at pp128 they were ~4 % of the batch's time on one thread while the others waited), else in
// order on the caller. Per token the same operations either way.
constexpr int kPerTokenPool = 8;

template <class F>
void Context::per_token(int n, F&& f) {
  if (n >= kPerTokenPool) {
    pool_->run(n, [&](int b, int) { f(b); });
  } else {
    for (int b = 0; b < n; ++b) f(b);
  }
}

void Context::quantize_acts(Acts& a) {
  if (a.quantized) return;
  const QuantizeActFn fn = find_quantize_act(model_->isa());
  const int64_t kp = act_padded_k(a.k);
  auto row = [&](int r, int) {
    fn(a.x + size_t(r) * a.k, a.k, kp, &aq_[size_t(r) * kp], &ad_[size_t(r) * (kp / kActBlock)],
       &ads_[size_t(r) * (kp / kActBlock)], act_per_token_);
  };
  if (a.m >= 8) {
    pool_->run(a.m, row);
  } else {
    for (int r = 0; r < a.m; ++r) row(r, 0);
  }
  a.quantized = true;
}

void Context::matmul_dense(Acts& a, std::span<const MatmulJob> jobs, bool onednn, bool bf16) {
  const F32Kernels& kr = f32_kernels(model_->isa());
  const int k = a.k, m = a.m;
  bool any_quantized = false, any_float = false;
  for (const MatmulJob& j : jobs) {
    any_quantized |= j.w->any_quantized;
    for (const WeightSegment& s : j.w->segments) any_float |= !s.qgemm;
  }
  if (any_quantized && !onednn) quantize_acts(a);
  // bf16: the activations rounded once for every float weight; each task's weight rows (at most
  // 64, see next_chunk) rounded into its thread's slot unless they are bf16 already.
  constexpr int kBf16Rows = 64;
  bf16 = bf16 && any_float;
  if (bf16) {
    x_bf16_.resize(std::max(x_bf16_.size(), size_t(m) * size_t(k)));
    w_bf16_.resize(std::max(w_bf16_.size(), size_t(n_threads_) * kBf16Rows * size_t(k)));
    pool_->run(m, [&](int r, int) { kr.to_bf16(a.x + size_t(r) * k, QType::kF32, &x_bf16_[size_t(r) * k], size_t(k)); });
  }
  const ActQ8 acts{aq_.data(), ad_.data(), ads_.data(), act_padded_k(k)};
  // A task: rows [n0, n1) of one segment, written to y + its row_begin (row stride ldy).
  struct Task {
    const WeightSegment* s;
    int n0, n1;
    float* y;
    int ldy;
  };
  std::vector<Task> tasks;
  tasks.reserve(64);
  int64_t total_rows = 0;
  for (const MatmulJob& j : jobs) total_rows += j.w->n;
  // Prefill: chunks of kPrefillChunk rows, claimed dynamically. Decode (m = 1): guided chunks over every
  // job's rows in order, each taking 1/threads of the rows not yet handed out (at least 32, in
  // multiples of 16; OpenMP's guided schedule), so that the threads start on long contiguous runs
  // and finish together: the region ends when its slowest thread does, and a thread left alone
  // reads at about half the bandwidth of two. (Equal chunks of total / (4 x threads) left each
  // region a tail of up to one chunk on one thread, tens of microseconds on the FFN's weights.)
  // Every chunk costs a start: the kernel prepares the activations over all of K again and its
  // four strands begin cold. With 1/(2 x threads) of the rest per chunk a 2048-row region took
  // ~14 chunks, with 1/threads ~6. 2 threads, tokens alternating between the two rules in one
  // process (both see the same neighbours; the first token of each repetition, the warm-up's
  // slow, goes to a third rule, not compared), four runs each: TinyLlama q4_g32 +2.1, +4.0,
  // +5.1 and -7.9 %, q8_g32 +0.8 to +2.1 %; Llama-7B q4_g32 -4.4 to +5.0 % (no difference its
  // noise shows). The threads stay busy for all but ~3 % of each region. One chunk per thread
  // measured about the same on TinyLlama, and lost whenever one core was slowed.
  // kPrefillChunk: the outputs' rows are 64-byte aligned (base/aligned.h), so tasks of whole
  // 64-row panels share no cache line; before, a 16-byte offset put every task boundary inside
  // a line that both threads' panel GEMMs rewrote once per K block, and pp128 on 2 threads ran at
  // 38 % of the int8 peak against 60 % on one (TinyLlama q4_g32, Zen 5). Alternating runs, 2
  // threads, pp128 tok/s: 64-byte-offset 64-row tasks 288-290; aligned, 64 rows 379-413, 256
  // rows 380-452, 512 rows 398-453 (the peak probe read 1.2-1.7 TOP/s). 256: as fast as 512 and
  // twice the tasks to balance (a TinyLlama K/V projection is one). Both rules cut at multiples
  // of 16 rows: the AVX-512 kernels that interleave groups of 16 rows (QKernel::pack_rows) run a
  // group that a task covers in part through a scratch tile.
  constexpr int kPrefillChunk = 256;
  int64_t handed = 0;
  auto next_chunk = [&](int rows_left_in_segment, bool float_rows) {
    if (m != 1) return std::min(rows_left_in_segment, bf16 && float_rows ? kBf16Rows : kPrefillChunk);
    if (n_threads_ == 1) return rows_left_in_segment;
    const int64_t want = std::max<int64_t>(32, ((total_rows - handed) / n_threads_ + 15) / 16 * 16);
    return int(std::min<int64_t>(rows_left_in_segment, want));
  };
  for (const MatmulJob& j : jobs) {
    for (const auto& s : j.w->segments) {
      const int rows = static_cast<int>(s.row_end - s.row_begin);
      for (int r = 0; r < rows;) {
        const int c = next_chunk(rows - r, !s.qgemm);
        tasks.push_back({&s, r, r + c, j.y, int(j.w->n)});
        r += c;
        handed += c;
      }
    }
  }
  pool_->run(static_cast<int>(tasks.size()), [&](int t, int thread) {
    const Task& tk = tasks[size_t(t)];
    const WeightSegment& s = *tk.s;
    float* ys = tk.y + s.row_begin;
    if (bf16 && !s.qgemm) {
      MXLM_ASSERT(s.data);  // float rows are never repacked
      const uint8_t* rows = s.data + size_t(tk.n0) * s.row_bytes;
      const uint16_t* wb = reinterpret_cast<const uint16_t*>(rows);
      if (s.qtype != QType::kBF16 || reinterpret_cast<uintptr_t>(rows) % 2 != 0) {
        uint16_t* dst = &w_bf16_[size_t(thread) * kBf16Rows * size_t(k)];
        MXLM_ASSERT(tk.n1 - tk.n0 <= kBf16Rows && s.row_bytes * 8 == size_t(k) * qtype_info(s.qtype).bits);
        kr.to_bf16(rows, s.qtype, dst, size_t(tk.n1 - tk.n0) * size_t(k));
        wb = dst;
      }
      kr.gemm_bf16(m, 0, tk.n1 - tk.n0, k, x_bf16_.data(), size_t(k), wb, size_t(k), ys + tk.n0, size_t(tk.ldy));
    } else if (onednn) {
      onednn_gemm(m, tk.n0, tk.n1, k, a.x, size_t(k), s.qtype, s.data, s.row_bytes, ys, size_t(tk.ldy));
    } else if (s.qgemm) {
      s.qgemm(m, tk.n0, tk.n1, int(s.row_end - s.row_begin), k, acts, s.qdata, s.row_bytes, ys, size_t(tk.ldy));
    } else {
      kr.gemm(m, tk.n0, tk.n1, k, a.x, size_t(k), s.data, s.row_bytes, s.qtype, ys, size_t(tk.ldy));
    }
  });
}

void Context::matmul(Acts& a, std::initializer_list<MatmulJob> jobs_in) {
  const ProfMark mark = prof_mark();
  if (observer_ && !a.observed) {
    observer_->observe(a.layer, a.in, a.x, a.m, a.k);
    a.observed = true;
  }
  const int k = a.k, m = a.m;
  // With a row map, compute in stored order into mm_tmp_, then scatter.
  MatmulJob jobs[4];
  size_t tmp_at[4], tmp = 0;
  const size_t n_jobs = jobs_in.size();
  if (n_jobs > std::size(jobs)) throw Error(ErrorCode::kInternal, "matmul: too many weights in one region");
  for (size_t i = 0; i < n_jobs; ++i) {
    jobs[i] = jobs_in.begin()[i];
    if (jobs[i].w->k != k) throw Error(ErrorCode::kInternal, "matmul: weight and input widths differ");
    tmp_at[i] = tmp;
    if (jobs[i].w->row_map) tmp += size_t(m) * size_t(jobs[i].w->n);
  }
  mm_tmp_.resize(std::max(mm_tmp_.size(), tmp));
  for (size_t i = 0; i < n_jobs; ++i) {
    if (jobs[i].w->row_map) jobs[i].y = mm_tmp_.data() + tmp_at[i];
  }
  // The prefill path is a fixed rule, never a measurement, so that logits, perplexity and greedy
  // text do not change from run to run: auto and kKernels run the int8/f32 kernels for every
  // weight; oneDNN's bf16 matmul runs only when forced (kOneDnn), for M >= 16. (Auto used to
  // time both paths on a slice of each weight at its first prefill and keep the faster: a noisy
  // 64-row probe on a shared machine sent some weights to oneDNN, and the logits of the second
  // prefill differed from the first; tests/eval_test.cc Prefill.AutoIsDeterministic caught it
  // at M = 16.) The rule costs no speed. `mxlm bench -p M -n 0 -t 1 --prefill X` on this
  // machine kind (Zen 4, AVX-512 VNNI; both paths in one session on a loaded machine, so read
  // the ratios, not the absolute rates), kernels vs oneDNN in tok/s: tinymix-26m q8_g32 pp16
  // 1096 vs 1.3, pp64 2227 vs 6.1; q4_g32 pp16 1284 vs 1.4, pp64 2515 vs 5.1; a 2-layer
  // tinyllama-1.1b synth q4_g32 pp16 / pp32 / pp128 363 / 177 / 251 vs 0.8 / 1.0 / 5.1.
  // (oneDNN dequantizes every weight row to bf16 on each call; the kernels never do.)
  const bool onednn = m >= 16 && prefill_ == ContextParams::Prefill::kOneDnn;
  const bool bf16 = m >= 16 && prefill_ == ContextParams::Prefill::kBf16;
  matmul_dense(a, std::span<const MatmulJob>(jobs, n_jobs), onednn, bf16);
  for (size_t i = 0; i < n_jobs; ++i) {
    const Weight& w = *jobs[i].w;
    const int n = static_cast<int>(w.n);
    float* y = jobs_in.begin()[i].y;
    if (w.row_map) {
      const float* out = jobs[i].y;
      for (int r0 = 0; r0 < n; ++r0) {
        int32_t r;
        std::memcpy(&r, w.row_map + 4 * size_t(r0), 4);
        for (int b = 0; b < m; ++b) y[size_t(b) * n + r] = out[size_t(b) * n + r0];
      }
    }
    if (w.outliers.nnz) {
      for (int r = 0; r < n; ++r) {
        for_each_outlier(w.outliers, r, [&](int32_t col, float v) {
          for (int b = 0; b < m; ++b) y[size_t(b) * n + r] += v * a.x[size_t(b) * k + col];
        });
      }
    }
  }
  if (profiling_) {
    static constexpr Phase kPhaseOf[kMatmulInputs] = {Phase::kQkv, Phase::kWo, Phase::kGateUp, Phase::kDown, Phase::kHead};
    double bytes = 0, ops = 0;
    for (const MatmulJob& j : jobs_in) {
      for (const WeightSegment& sg : j.w->segments) bytes += double(sg.row_bytes) * double(sg.row_end - sg.row_begin);
      ops += 2.0 * double(a.m) * double(j.w->n) * double(j.w->k);
    }
    prof_add(kPhaseOf[int(a.in)], mark, bytes, ops);
  }
}

void Context::set_profiling(bool on) {
  profiling_ = on;
  pool_->set_timing(on);
  clear_profile();
}

void Context::clear_profile() { profile_ = EvalProfile{}; }

Context::ProfMark Context::prof_mark() const {
  if (!profiling_) return {};
  return {std::chrono::steady_clock::now(), pool_->busy_seconds()};
}

void Context::prof_add(Phase p, const ProfMark& m, double bytes, double ops) {
  if (!profiling_) return;
  PhaseStats& st = profile_.phase[size_t(p)];
  st.wall_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - m.t).count();
  st.busy_s += pool_->busy_seconds() - m.busy;
  st.bytes += bytes;
  st.ops += ops;
  ++st.calls;
}

const char* phase_name(Phase p) {
  switch (p) {
    case Phase::kQkv: return "qkv";
    case Phase::kWo: return "wo";
    case Phase::kGateUp: return "gate_up";
    case Phase::kDown: return "down";
    case Phase::kHead: return "head";
    case Phase::kKvStore: return "kv_store";
    case Phase::kAttention: return "attention";
  }
  return "?";
}

const float* Context::eval(std::span<const int> tokens, bool all_logits) {
  const ModelConfig& c = model_->config();
  if (tokens.empty()) throw Error(ErrorCode::kInvalidArgument, "eval: no tokens to evaluate");
  if (n_past_ + static_cast<int64_t>(tokens.size()) > n_ctx_) {
    throw Error(ErrorCode::kContextFull, std::to_string(n_past_) + " tokens in the context + " + std::to_string(tokens.size()) +
                                             " new ones exceed the context of " + std::to_string(n_ctx_) + " tokens");
  }
  for (int t : tokens) {
    if (t < 0 || t >= c.n_vocab) {
      throw Error(ErrorCode::kInvalidArgument, "token id " + std::to_string(t) + " is outside the vocabulary [0, " +
                                                   std::to_string(c.n_vocab) + ")");
    }
  }
  const size_t n = tokens.size();
  const ProfMark mark = prof_mark();
  logits_.resize((all_logits ? n : 1) * size_t(c.n_vocab));
  for (size_t i = 0; i < n; i += n_batch_) {
    const int nb = static_cast<int>(std::min<size_t>(n_batch_, n - i));
    const bool last = i + nb == n;
    float* out = all_logits ? logits_.data() + i * c.n_vocab : logits_.data();
    const CoreLease lease(CoreBudget::process(), n_threads_);  // runtime/core_budget.h
    forward_batch(tokens.data() + i, nb, all_logits, all_logits || last ? out : nullptr);
  }
  if (profiling_) {
    profile_.eval_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - mark.t).count();
    profile_.tokens += n;
  }
  return logits_.data();
}

const char* matmul_input_name(MatmulInput in) {
  switch (in) {
    case MatmulInput::kAttnIn: return "attn_in";
    case MatmulInput::kAttnOut: return "attn_out";
    case MatmulInput::kFfnIn: return "ffn_in";
    case MatmulInput::kFfnMid: return "ffn_mid";
    case MatmulInput::kHeadIn: return "head_in";
  }
  return "?";
}

void Context::check_span(int n, int p0, const char* what) const {
  if (n < 1 || n > n_batch_ || p0 < 0 || p0 + int64_t{n} > n_ctx_) {
    throw Error(ErrorCode::kInvalidArgument, std::string(what) + ": " + std::to_string(n) + " tokens at position " + std::to_string(p0) +
                                                 " do not fit a batch of " + std::to_string(n_batch_) + " in a context of " +
                                                 std::to_string(n_ctx_));
  }
}

void Context::embed(std::span<const int> tokens, float* x, const Weight* tok_embd) {
  const ModelConfig& c = model_->config();
  for (size_t b = 0; b < tokens.size(); ++b) {
    const int t = tokens[b];
    if (t < 0 || t >= c.n_vocab) {
      throw Error(ErrorCode::kInvalidArgument, "token id " + std::to_string(t) + " is outside the vocabulary [0, " +
                                                   std::to_string(c.n_vocab) + ")");
    }
    float* row = x + b * size_t(c.n_embd);
    if (!tok_embd) {
      model_->embedding_row(t, row);
      continue;
    }
    for (const WeightSegment& s : tok_embd->segments) {
      if (t >= s.row_begin && t < s.row_end) dequantize_row(s.qtype, s.data + size_t(t - s.row_begin) * s.row_bytes, c.n_embd, row);
    }
  }
}

void Context::check_layer(int l, int n, int p0, const char* what) const {
  check_span(n, p0, what);
  if (l < 0 || l >= model_->config().n_layers) {
    throw Error(ErrorCode::kInvalidArgument, std::string(what) + ": layer " + std::to_string(l) + " outside [0, " +
                                                 std::to_string(model_->config().n_layers) + ")");
  }
}

void Context::eval_layer(int l, float* x, int n, int p0, const LayerWeights* weights) {
  check_layer(l, n, p0, "eval_layer");
  layer_forward(weights ? *weights : model_->layers()[l], l, x, n, p0);
}

void Context::observe_layer(int l, float* x, int n, int p0) {
  check_layer(l, n, p0, "observe_layer");
  layer_forward(model_->layers()[l], l, x, n, p0, false);
}

void Context::eval_head(const float* x, int n, float* logits, const Weight* output) {
  check_span(n, 0, "eval_head");
  head_forward(output ? *output : model_->output(), x, n, logits);
}

// The final norm of x [n][E] and the output head: logits [n][n_vocab].
void Context::head_forward(const Weight& output, const float* x, int n, float* logits) {
  const ModelConfig& c = model_->config();
  const F32Kernels& kr = f32_kernels(model_->isa());
  per_token(n, [&](int b) {
    kr.rmsnorm(x + size_t(b) * c.n_embd, model_->output_norm(), &xb_[size_t(b) * c.n_embd], c.n_embd, c.norm_eps);
  });
  Acts out{xb_.data(), n, c.n_embd};
  matmul(out, output, logits);
}

void Context::truncate(int n) {
  if (n < 0 || n > n_past_) {
    throw Error(ErrorCode::kInvalidArgument, "truncate to " + std::to_string(n) + " tokens: the context holds " +
                                                 std::to_string(n_past_));
  }
  kv_->truncate(n);
  n_past_ = n;
}

void Context::shift(int n_keep, int n_discard) {
  if (n_keep < 0 || n_discard < 1 || n_keep + n_discard > n_past_) {
    throw Error(ErrorCode::kInvalidArgument, "context shift keeping " + std::to_string(n_keep) + " and dropping " +
                                                 std::to_string(n_discard) + " tokens: the context holds " +
                                                 std::to_string(n_past_));
  }
  const size_t half = size_t(model_->config().head_dim / 2);
  kv_->shift(n_keep, n_discard, n_past_, &rope_cos_[size_t(n_discard) * half], &rope_sin_[size_t(n_discard) * half]);
  n_past_ -= n_discard;
}

size_t Context::kv_bytes_per_token() const { return kv_->bytes_per_token(); }
size_t Context::kv_bytes() const { return kv_->bytes(); }
double Context::kv_read_bytes(int n) const { return kv_->read_bytes(n); }

int Context::att_rows() const {
  const ModelConfig& c = model_->config();
  const int group = c.n_heads / c.n_kv_heads;
  return std::max(1, std::min(kAttRows / group, n_batch_)) * group;
}

void Context::forward_batch(const int* tokens, int n, bool all_logits, float* logits_out) {
  const ModelConfig& c = model_->config();
  const int E = c.n_embd;
  for (int b = 0; b < n; ++b) model_->embedding_row(tokens[b], &x_[size_t(b) * E]);
  for (int l = 0; l < c.n_layers; ++l) layer_forward(model_->layers()[l], l, x_.data(), n, n_past_);
  n_past_ += n;
  if (!logits_out) return;
  const int first = all_logits ? 0 : n - 1;
  head_forward(model_->output(), &x_[size_t(first) * E], n - first, logits_out);
}

// One transformer block on x [n][E] in place: tokens at positions p0 .. p0 + n - 1, layer l's
// KV cache written at those positions.
void Context::layer_forward(const LayerWeights& w, int l, float* x, int n, int p0, bool output) {
  const ModelConfig& c = model_->config();
  const F32Kernels& kr = f32_kernels(model_->isa());
  const int E = c.n_embd, D = c.head_dim, H = c.n_heads, HKV = c.n_kv_heads, F = c.n_ff;
  const int Q = H * D, KV = HKV * D, half = D / 2, group = H / HKV;
  const float att_scale = 1.0f / std::sqrt(static_cast<float>(D));

  auto rope = [&](float* v, int pos) {
    const float* cs = &rope_cos_[size_t(pos) * half];
    const float* sn = &rope_sin_[size_t(pos) * half];
    for (int i = 0; i < half; ++i) {
      const float a = v[i], bb = v[i + half];
      v[i] = a * cs[i] - bb * sn[i];
      v[i + half] = a * sn[i] + bb * cs[i];
    }
  };

  per_token(n, [&](int b) { kr.rmsnorm(&x[size_t(b) * E], w.attn_norm, &xb_[size_t(b) * E], E, c.norm_eps); });
  Acts attn_in{xb_.data(), n, E, l, MatmulInput::kAttnIn};
  matmul(attn_in, {{&w.wq, q_.data()}, {&w.wk, k_.data()}, {&w.wv, v_.data()}});
  per_token(n, [&](int b) {
    for (int h = 0; h < H; ++h) rope(&q_[size_t(b) * Q + size_t(h) * D], p0 + b);
    for (int h = 0; h < HKV; ++h) rope(&k_[size_t(b) * KV + size_t(h) * D], p0 + b);
  });
  ProfMark mark = prof_mark();
  kv_->round_window(l, n, k_.data(), v_.data(), size_t(KV));
  kv_->store(l, p0, n, k_.data(), v_.data(), size_t(KV), pool_.get());
  prof_add(Phase::kKvStore, mark, 0);
  mark = prof_mark();
  // Causal attention (runtime/attention.h). A task is one KV head and a chunk of tokens: the
  // queries of every head that shares the KV head (GQA) for those tokens are gathered into rows
  // r = token * group + j (scaled by 1/sqrt(D), and rotated when the keys are), so that each key
  // and value row is read once per chunk, not once per query head (TinyLlama: 8 query heads per
  // KV head). (The int8 weight kernels were tried for q·Kᵀ first: built for rows of thousands of
  // elements, they copy a row's partial last unit and its scales per row, and on rows of 64-128
  // that was 17 % of a Llama-7B decode token at depth 1024, 3x the dot itself.) Past one slice of
  // positions, a task runs its chunk's slices in turn, or, when the tasks are too few for the
  // threads, each slice is a task of its own (flash-decoding); both combine the same parts.
  const KvCache& kv = *kv_;
  const bool rot_q = kv.keys(l).rotated;
  const AttentionBatch batch{p0, k_.data(), v_.data(), size_t(KV)};
  const int rows_max = att_rows(), bchunk = rows_max / group, n_chunks = (n + bchunk - 1) / bchunk;
  const int S = att_slice_;
  const size_t wsize = att_w_.size() / size_t(n_threads_);
  auto gather_q = [&](int kvh, int b0, int nb, float* qg) {
    for (int bb = 0; bb < nb; ++bb) {
      for (int j = 0; j < group; ++j) {
        const float* src = &q_[size_t(b0 + bb) * Q + size_t(kvh * group + j) * D];
        float* dst = qg + size_t(bb * group + j) * D;
        for (int i = 0; i < D; ++i) dst[i] = src[i] * att_scale;
        if (rot_q) kv.rotate(dst);
      }
    }
  };
  auto scatter = [&](int kvh, int b0, int nb, const float* og) {
    for (int bb = 0; bb < nb; ++bb) {
      for (int j = 0; j < group; ++j) {
        const float* o = og + size_t(bb * group + j) * D;
        std::copy(o, o + D, &att_out_[size_t(b0 + bb) * Q + size_t(kvh * group + j) * D]);
      }
    }
  };
  auto scratch = [&](int thread) {
    return AttentionScratch{&scores_[size_t(thread) * (scores_.size() / size_t(n_threads_))], &att_w_[size_t(thread) * wsize],
                            &att_lse_[thread * (att_lse_.size() / size_t(n_threads_))],
                            &att_parts_[thread * (att_parts_.size() / size_t(n_threads_))]};
  };
  const int n_slices = attention_slices(p0 + n - 1, S);  // the last chunk's, the most
  if (n_slices > 1 && HKV * n_chunks < n_threads_) {
    // Fewer (KV head, chunk) tasks than threads (a decoded token of a model with few KV heads on
    // many cores): every slice is a task, its parts and lse in a slot of att_par_, combined
    // afterwards as attend() combines them. Only then: each slice's keys and values are two
    // short streams and the combination runs on one thread (TinyLlama, 4 KV heads, 2 threads,
    // depth 2000: tg 13-20 % slower with its 16 slices as tasks than with 4 head tasks).
    const size_t slot = 2 * size_t(rows_max) * D;  // attend_slice's two parts
    const int n_tasks = HKV * n_chunks * n_slices;
    att_par_.resize(std::max(att_par_.size(), size_t(n_tasks) * (slot + size_t(rows_max))));
    float* parts = att_par_.data();
    float* lses = parts + size_t(n_tasks) * slot;
    pool_->run(n_tasks, [&](int task, int thread) {
      const int j = task % n_slices, c = task / n_slices, kvh = c / n_chunks, b0 = (c % n_chunks) * bchunk;
      const int nb = std::min(bchunk, n - b0);
      if (j >= attention_slices(p0 + b0 + nb - 1, S)) return;
      float* qg = &att_q_[size_t(thread) * (att_q_.size() / size_t(n_threads_))];
      gather_q(kvh, b0, nb, qg);
      attend_slice(kr, kv, l, kvh, batch, p0 + b0, nb, group, qg, j * S, S, scratch(thread), parts + size_t(task) * slot,
                   lses + size_t(task) * rows_max);
    });
    for (int c = 0; c < HKV * n_chunks; ++c) {
      const int kvh = c / n_chunks, b0 = (c % n_chunks) * bchunk, nb = std::min(bchunk, n - b0);
      const size_t first = size_t(c) * n_slices;
      combine_slices(kv, l, nb * group, attention_slices(p0 + b0 + nb - 1, S), parts + first * slot, slot,
                     lses + first * rows_max, size_t(rows_max), att_o_.data());
      scatter(kvh, b0, nb, att_o_.data());
    }
  } else {
    pool_->run(HKV * n_chunks, [&](int task, int thread) {
      const int kvh = task / n_chunks, b0 = (task % n_chunks) * bchunk, nb = std::min(bchunk, n - b0);
      float* qg = &att_q_[size_t(thread) * (att_q_.size() / size_t(n_threads_))];
      float* og = &att_o_[size_t(thread) * (att_o_.size() / size_t(n_threads_))];
      gather_q(kvh, b0, nb, qg);
      attend(kr, kv, l, kvh, batch, p0 + b0, nb, group, qg, S, scratch(thread), og);
      scatter(kvh, b0, nb, og);
    });
  }
  kv_->settle(l, p0, n, k_.data(), v_.data(), size_t(KV));
  if (profiling_) prof_add(Phase::kAttention, mark, kv_->read_bytes(p0 + n) / double(c.n_layers));
  Acts att{att_out_.data(), n, Q, l, MatmulInput::kAttnOut};
  matmul(att, w.wo, xb2_.data());
  per_token(n, [&](int b) {
    float* xr = &x[size_t(b) * E];
    const float* o = &xb2_[size_t(b) * E];
    for (int i = 0; i < E; ++i) xr[i] += o[i];
    kr.rmsnorm(xr, w.ffn_norm, &xb_[size_t(b) * E], E, c.norm_eps);
  });
  Acts ffn_in{xb_.data(), n, E, l, MatmulInput::kFfnIn};
  matmul(ffn_in, {{&w.gate, hb_.data()}, {&w.up, hb2_.data()}});
  per_token(n, [&](int b) { kr.swiglu(&hb_[size_t(b) * F], &hb2_[size_t(b) * F], &hb_[size_t(b) * F], F); });
  Acts ffn_mid{hb_.data(), n, F, l, MatmulInput::kFfnMid};
  if (!output) {
    if (observer_) observer_->observe(l, MatmulInput::kFfnMid, ffn_mid.x, n, F);
    return;
  }
  matmul(ffn_mid, w.down, xb2_.data());
  per_token(n, [&](int b) {
    for (size_t i = size_t(b) * E; i < size_t(b + 1) * E; ++i) x[i] += xb2_[i];
  });
}

}  // namespace mxlm
