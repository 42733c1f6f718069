// The C API (runtime/include/mxlm.h) over the C++ runtime: handles own shared models and their
// contexts; every entry point runs its body under guard(), which turns any exception into a status
// and a thread-local message, so nothing thrown inside crosses into C. Pointers from C are checked
// before use: a NULL handle or output is MXLM_ERR_INVALID_ARGUMENT naming the argument.
#include "mxlm.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "base/error.h"
#include "mxlm/chat.h"
#include "mxlm/generate.h"
#include "mxlm/model.h"
#include "mxlm/sampler.h"
#include "tokenizer/tokenizer.h"

struct mxlm_model {
  std::shared_ptr<const mxlm::Model> model;
  std::unique_ptr<mxlm::ChatEncoder> chat_encoder;  // MXLM_TOKENIZE_SPECIAL (made at load: one vocabulary scan)
  std::vector<int> end_of_turn;  // control tokens the chat template ends a reply with (stop_at_end_of_turn)
};

struct mxlm_context {
  std::shared_ptr<const mxlm::Model> model;
  std::vector<int> end_of_turn;  // the model handle's
  std::unique_ptr<mxlm::Context> ctx;
  const float* logits = nullptr;  // of the last mxlm_eval
  int32_t rows = 0;
};

struct mxlm_sampler {
  mxlm::Sampler sampler;
};

struct mxlm_decoder {
  std::shared_ptr<const mxlm::Model> model;  // keeps the tokenizer alive
  mxlm::StreamDecoder dec;
  std::string text;  // what the last push or flush returned
};

namespace {

thread_local std::string t_last_error;

// An error the API itself reports with its own status (a NULL argument, a small buffer).
struct ApiError {
  mxlm_status status;
  std::string message;
};

mxlm_status status_of(mxlm::ErrorCode c) {
  switch (c) {
    case mxlm::ErrorCode::kInvalidArgument: return MXLM_ERR_INVALID_ARGUMENT;
    case mxlm::ErrorCode::kIo: return MXLM_ERR_IO;
    case mxlm::ErrorCode::kFormat: return MXLM_ERR_FORMAT;
    case mxlm::ErrorCode::kUnsupported: return MXLM_ERR_UNSUPPORTED;
    case mxlm::ErrorCode::kContextFull: return MXLM_ERR_CONTEXT_FULL;
    case mxlm::ErrorCode::kInternal: return MXLM_ERR_INTERNAL;
  }
  return MXLM_ERR_INTERNAL;
}

mxlm_status fail(mxlm_status s, const char* fn, const std::string& message) {
  try {
    t_last_error = std::string(fn) + ": " + message;
  } catch (...) {
    t_last_error.clear();
  }
  return s;
}

template <class F>
mxlm_status guard(const char* fn, F&& body) noexcept {
  try {
    body();
    return MXLM_OK;
  } catch (const ApiError& e) {
    return fail(e.status, fn, e.message);
  } catch (const mxlm::Error& e) {
    return fail(status_of(e.code()), fn, e.what());
  } catch (const std::bad_alloc&) {
    return fail(MXLM_ERR_OUT_OF_MEMORY, fn, "out of memory");
  } catch (const std::exception& e) {
    return fail(MXLM_ERR_INTERNAL, fn, e.what());
  } catch (...) {
    return fail(MXLM_ERR_INTERNAL, fn, "unknown exception");
  }
}

void require(const void* p, const char* name) {
  if (!p) throw ApiError{MXLM_ERR_INVALID_ARGUMENT, std::string(name) + " is NULL"};
}

void invalid(const std::string& message) { throw ApiError{MXLM_ERR_INVALID_ARGUMENT, message}; }

// The tokenizer's ids (the model may have more embeddings than pieces).
void check_piece_id(const mxlm::Tokenizer& tok, int32_t id) {
  if (id < 0 || id >= tok.n_vocab()) {
    invalid("token id " + std::to_string(id) + " is outside the tokenizer's vocabulary [0, " + std::to_string(tok.n_vocab()) + ")");
  }
}

// Text out through a caller's buffer: *len is its length; it is written with a NUL when it fits,
// else MXLM_ERR_BUFFER_TOO_SMALL.
void copy_text(const std::string& s, char* text, size_t capacity, size_t* len) {
  *len = s.size();
  if (s.size() + 1 > capacity) {
    throw ApiError{MXLM_ERR_BUFFER_TOO_SMALL,
                   "the text has " + std::to_string(s.size()) + " bytes (+1 for the NUL), the buffer room for " + std::to_string(capacity)};
  }
  std::memcpy(text, s.data(), s.size());
  text[s.size()] = '\0';
}

// The control tokens a model's chat template writes right after a reply's content (its
// end-of-turn marker as a single token): none when it has no template or one that does not parse.
std::vector<int> end_of_turn_tokens(const mxlm::Model& m, const mxlm::ChatEncoder& encoder) {
  std::vector<int> ids;
  try {
    bool fallback = false;
    const mxlm::ChatTemplate t = mxlm::ChatTemplate::for_model(m, &fallback);
    if (fallback) return ids;
    for (const std::string& stop : t.stop_strings()) {
      if (const int id = encoder.special_id(stop); id >= 0) ids.push_back(id);
    }
  } catch (const mxlm::Error&) {
    // mxlm_chat_apply_template reports the template's error.
  }
  return ids;
}

}  // namespace

extern "C" {

const char* mxlm_version(int* major, int* minor, int* patch) {
  if (major) *major = MXLM_VERSION_MAJOR;
  if (minor) *minor = MXLM_VERSION_MINOR;
  if (patch) *patch = MXLM_VERSION_PATCH;
#define MXLM_STR2(x) #x
#define MXLM_STR(x) MXLM_STR2(x)
  return MXLM_STR(MXLM_VERSION_MAJOR) "." MXLM_STR(MXLM_VERSION_MINOR) "." MXLM_STR(MXLM_VERSION_PATCH);
}

const char* mxlm_last_error(void) { return t_last_error.c_str(); }

const char* mxlm_status_name(mxlm_status status) {
  switch (status) {
    case MXLM_OK: return "ok";
    case MXLM_ERR_INVALID_ARGUMENT: return "invalid argument";
    case MXLM_ERR_IO: return "i/o error";
    case MXLM_ERR_FORMAT: return "bad format";
    case MXLM_ERR_UNSUPPORTED: return "unsupported";
    case MXLM_ERR_CONTEXT_FULL: return "context full";
    case MXLM_ERR_BUFFER_TOO_SMALL: return "buffer too small";
    case MXLM_ERR_OUT_OF_MEMORY: return "out of memory";
    case MXLM_ERR_INTERNAL: return "internal error";
  }
  return "unknown status";
}

// ---- Models ----

mxlm_model_params mxlm_model_default_params(void) { return mxlm_model_params{nullptr, 0, nullptr, 0}; }

mxlm_status mxlm_model_load(const char* path, const mxlm_model_params* params, mxlm_model** model) {
  return guard(__func__, [&] {
    require(model, "model");
    *model = nullptr;
    require(path, "path");
    const mxlm_model_params p = params ? *params : mxlm_model_default_params();
    mxlm::LoadOptions lo;
    lo.verify = p.verify != 0;
    if (p.n_threads < 0) invalid("n_threads " + std::to_string(p.n_threads) + " is negative (0: all cores)");
    lo.threads = p.n_threads;
    if (p.isa && *p.isa) {
      lo.isa = mxlm::isa_from_name(p.isa);
      if (!lo.isa) invalid(std::string("isa \"") + p.isa + "\" is not one of ref, avx2, avx512, neon");
    }
    if (p.memory && *p.memory) {
      auto m = mxlm::weight_memory_from_name(p.memory);
      if (!m) invalid(std::string("memory \"") + p.memory + "\" is not one of map, copy, huge");
      lo.memory = *m;
    }
    auto handle = std::make_unique<mxlm_model>();
    handle->model = mxlm::Model::open(path, lo);
    handle->chat_encoder = std::make_unique<mxlm::ChatEncoder>(*handle->model);
    handle->end_of_turn = end_of_turn_tokens(*handle->model, *handle->chat_encoder);
    *model = handle.release();
  });
}

void mxlm_model_free(mxlm_model* model) { delete model; }

mxlm_status mxlm_model_get_info(const mxlm_model* model, mxlm_model_info* info) {
  return guard(__func__, [&] {
    require(model, "model");
    require(info, "info");
    const mxlm::Model& m = *model->model;
    const mxlm::ModelConfig& c = m.config();
    *info = mxlm_model_info{};
    info->n_vocab = c.n_vocab;
    info->n_ctx_train = c.n_ctx;
    info->n_embd = c.n_embd;
    info->n_layers = c.n_layers;
    info->n_heads = c.n_heads;
    info->n_kv_heads = c.n_kv_heads;
    info->head_dim = c.head_dim;
    info->bos = c.bos_id;
    info->eos = c.eos_id;
    info->weight_bytes = m.weight_bytes();
    info->bits_per_weight = m.bits_per_weight();
    info->isa = mxlm::isa_name(m.isa()).data();  // a literal: NUL-terminated
    info->has_chat_template = !m.chat_template().empty();
  });
}

// ---- Contexts ----

mxlm_context_params mxlm_context_default_params(void) {
  const mxlm::ContextParams d;
  return mxlm_context_params{d.n_ctx, d.n_batch, d.n_threads, nullptr, d.kv_window};
}

mxlm_status mxlm_context_create(const mxlm_model* model, const mxlm_context_params* params, mxlm_context** ctx) {
  return guard(__func__, [&] {
    require(ctx, "ctx");
    *ctx = nullptr;
    require(model, "model");
    const mxlm_context_params p = params ? *params : mxlm_context_default_params();
    if (p.n_ctx < 0) invalid("n_ctx " + std::to_string(p.n_ctx) + " is negative");
    if (p.n_batch < 1) invalid("n_batch " + std::to_string(p.n_batch) + " is not positive");
    if (p.n_threads < 0) invalid("n_threads " + std::to_string(p.n_threads) + " is negative");
    if (p.kv_window < 0) invalid("kv_window " + std::to_string(p.kv_window) + " is negative");
    mxlm::ContextParams cp;
    cp.n_ctx = p.n_ctx;
    cp.n_batch = p.n_batch;
    cp.n_threads = p.n_threads;
    cp.kv_window = p.kv_window;
    if (p.kv && *p.kv) {
      auto plan = mxlm::parse_kv_plan(p.kv);
      if (!plan) {
        invalid(std::string("kv \"") + p.kv + "\" is not a KV cache format (f32, f16, bf16, k<t>v<t> with t in 32, 16, bf16, 8, 4, 2)");
      }
      cp.kv_layers = *plan;
    }
    auto handle = std::make_unique<mxlm_context>();
    handle->model = model->model;
    handle->end_of_turn = model->end_of_turn;
    handle->ctx = std::make_unique<mxlm::Context>(model->model, cp);
    *ctx = handle.release();
  });
}

void mxlm_context_free(mxlm_context* ctx) { delete ctx; }

mxlm_status mxlm_context_reset(mxlm_context* ctx) {
  return guard(__func__, [&] {
    require(ctx, "ctx");
    ctx->ctx->reset();
    ctx->logits = nullptr;
    ctx->rows = 0;
  });
}

mxlm_status mxlm_context_truncate(mxlm_context* ctx, int32_t n_past) {
  return guard(__func__, [&] {
    require(ctx, "ctx");
    if (n_past < 0 || n_past > ctx->ctx->n_past()) {
      invalid("n_past " + std::to_string(n_past) + " is outside [0, " + std::to_string(ctx->ctx->n_past()) + "] (the tokens held)");
    }
    ctx->ctx->truncate(n_past);
    ctx->logits = nullptr;
    ctx->rows = 0;
  });
}

mxlm_status mxlm_context_shift(mxlm_context* ctx, int32_t n_keep, int32_t n_discard) {
  return guard(__func__, [&] {
    require(ctx, "ctx");
    ctx->ctx->shift(n_keep, n_discard);
    ctx->logits = nullptr;
    ctx->rows = 0;
  });
}

mxlm_status mxlm_context_get_info(const mxlm_context* ctx, mxlm_context_info* info) {
  return guard(__func__, [&] {
    require(ctx, "ctx");
    require(info, "info");
    *info = mxlm_context_info{};
    info->n_ctx = ctx->ctx->n_ctx();
    info->n_past = ctx->ctx->n_past();
    info->n_threads = ctx->ctx->n_threads();
    info->kv_bytes_per_token = ctx->ctx->kv_bytes_per_token();
    info->kv_bytes = ctx->ctx->kv_bytes();
  });
}

// ---- Tokens and text ----

mxlm_status mxlm_tokenize(const mxlm_model* model, const char* text, size_t len, int32_t flags, int32_t* tokens,
                          size_t capacity, size_t* n_tokens) {
  return guard(__func__, [&] {
    require(model, "model");
    require(n_tokens, "n_tokens");
    *n_tokens = 0;
    if (len > 0) require(text, "text");
    if (capacity > 0) require(tokens, "tokens");
    const std::string_view s(text ? text : "", len);
    if (size_t bad = mxlm::find_invalid_utf8(s); bad != std::string_view::npos) {
      invalid("the text is not valid UTF-8 (bad byte at offset " + std::to_string(bad) + ")");
    }
    constexpr int32_t kAll = MXLM_TOKENIZE_BOS | MXLM_TOKENIZE_SPECIAL | MXLM_TOKENIZE_CONTINUE;
    if (flags & ~kAll) invalid("tokenize flags " + std::to_string(flags) + " name bits beyond MXLM_TOKENIZE_BOS|SPECIAL|CONTINUE (7)");
    const bool bos = flags & MXLM_TOKENIZE_BOS;
    if ((flags & MXLM_TOKENIZE_CONTINUE) && !(flags & MXLM_TOKENIZE_SPECIAL)) {
      invalid("MXLM_TOKENIZE_CONTINUE goes with MXLM_TOKENIZE_SPECIAL (text that continues a rendered conversation)");
    }
    const std::vector<int> ids = (flags & MXLM_TOKENIZE_SPECIAL)
                                     ? model->chat_encoder->encode(s, bos, (flags & MXLM_TOKENIZE_CONTINUE) != 0).ids
                                     : model->model->tokenizer().encode(s, bos);
    *n_tokens = ids.size();
    if (ids.size() > capacity) {
      throw ApiError{MXLM_ERR_BUFFER_TOO_SMALL,
                     "the text has " + std::to_string(ids.size()) + " tokens, the buffer room for " + std::to_string(capacity)};
    }
    std::copy(ids.begin(), ids.end(), tokens);
  });
}

mxlm_status mxlm_detokenize(const mxlm_model* model, const int32_t* tokens, size_t n_tokens, char* text, size_t capacity,
                            size_t* len) {
  return guard(__func__, [&] {
    require(model, "model");
    require(len, "len");
    *len = 0;
    if (n_tokens > 0) require(tokens, "tokens");
    if (capacity > 0) require(text, "text");
    const mxlm::Tokenizer& tok = model->model->tokenizer();
    std::vector<int> ids(tokens, tokens + n_tokens);
    for (int id : ids) check_piece_id(tok, id);
    copy_text(tok.decode(ids), text, capacity, len);
  });
}

mxlm_status mxlm_decoder_create(const mxlm_model* model, mxlm_decoder** decoder) {
  return guard(__func__, [&] {
    require(decoder, "decoder");
    *decoder = nullptr;
    require(model, "model");
    *decoder = new mxlm_decoder{model->model, mxlm::StreamDecoder(model->model->tokenizer()), {}};
  });
}

mxlm_status mxlm_decoder_push(mxlm_decoder* decoder, int32_t token, const char** text, size_t* len) {
  return guard(__func__, [&] {
    require(decoder, "decoder");
    require(text, "text");
    require(len, "len");
    check_piece_id(decoder->model->tokenizer(), token);
    decoder->text = decoder->dec.push(token);
    *text = decoder->text.c_str();
    *len = decoder->text.size();
  });
}

mxlm_status mxlm_decoder_flush(mxlm_decoder* decoder, const char** text, size_t* len) {
  return guard(__func__, [&] {
    require(decoder, "decoder");
    require(text, "text");
    require(len, "len");
    decoder->text = decoder->dec.flush();
    *text = decoder->text.c_str();
    *len = decoder->text.size();
  });
}

void mxlm_decoder_free(mxlm_decoder* decoder) { delete decoder; }

// ---- Chat templates ----

mxlm_status mxlm_chat_apply_template(const mxlm_model* model, const mxlm_chat_message* messages, size_t n_messages,
                                     int32_t add_generation_prompt, char* text, size_t capacity, size_t* len) {
  return guard(__func__, [&] {
    require(model, "model");
    require(len, "len");
    *len = 0;
    if (n_messages > 0) require(messages, "messages");
    if (capacity > 0) require(text, "text");
    std::vector<mxlm::ChatMessage> msgs;
    for (size_t i = 0; i < n_messages; ++i) {
      const std::string at = "messages[" + std::to_string(i) + "]";
      if (!messages[i].role || !messages[i].content) invalid(at + " has a NULL role or content");
      mxlm::ChatMessage m{messages[i].role, messages[i].content};
      if (m.role != "system" && m.role != "user" && m.role != "assistant") invalid(at + " has role '" + m.role + "' (system, user or assistant)");
      if (size_t bad = mxlm::find_invalid_utf8(m.content); bad != std::string::npos) {
        invalid(at + " content is not valid UTF-8 (bad byte at offset " + std::to_string(bad) + ")");
      }
      msgs.push_back(std::move(m));
    }
    copy_text(mxlm::ChatTemplate::for_model(*model->model).render(msgs, add_generation_prompt != 0), text, capacity, len);
  });
}

// ---- Evaluation ----

mxlm_status mxlm_eval(mxlm_context* ctx, const int32_t* tokens, size_t n_tokens, int32_t all_logits) {
  return guard(__func__, [&] {
    require(ctx, "ctx");
    require(tokens, "tokens");
    if (n_tokens == 0) invalid("no tokens to evaluate");
    ctx->logits = nullptr;
    ctx->rows = 0;
    const std::vector<int> ids(tokens, tokens + n_tokens);
    ctx->logits = ctx->ctx->eval(ids, all_logits != 0);
    ctx->rows = all_logits ? static_cast<int32_t>(n_tokens) : 1;
  });
}

mxlm_status mxlm_get_logits(const mxlm_context* ctx, const float** logits, int32_t* n_rows, int32_t* n_vocab) {
  return guard(__func__, [&] {
    require(ctx, "ctx");
    require(logits, "logits");
    if (!ctx->logits) throw ApiError{MXLM_ERR_INVALID_ARGUMENT, "no logits: nothing was evaluated since the context was made or changed"};
    *logits = ctx->logits;
    if (n_rows) *n_rows = ctx->rows;
    if (n_vocab) *n_vocab = ctx->model->config().n_vocab;
  });
}

// ---- Sampling ----

mxlm_sampler_params mxlm_sampler_default_params(void) {
  const mxlm::SamplerParams d;
  return mxlm_sampler_params{d.temperature, d.top_k, d.top_p, d.min_p, d.repeat_penalty, d.repeat_last_n, d.seed};
}

mxlm_status mxlm_sampler_create(const mxlm_sampler_params* params, mxlm_sampler** sampler) {
  return guard(__func__, [&] {
    require(sampler, "sampler");
    *sampler = nullptr;
    const mxlm_sampler_params p = params ? *params : mxlm_sampler_default_params();
    if (!(p.top_p == p.top_p) || !(p.min_p == p.min_p) || !(p.temperature == p.temperature) || !(p.repeat_penalty > 0)) {
      invalid("temperature, top_p and min_p must be numbers and repeat_penalty positive");
    }
    mxlm::SamplerParams sp;
    sp.temperature = p.temperature;
    sp.top_k = p.top_k;
    sp.top_p = p.top_p;
    sp.min_p = p.min_p;
    sp.repeat_penalty = p.repeat_penalty;
    sp.repeat_last_n = p.repeat_last_n;
    sp.seed = p.seed;
    *sampler = new mxlm_sampler{mxlm::Sampler(sp)};
  });
}

void mxlm_sampler_free(mxlm_sampler* sampler) { delete sampler; }

mxlm_status mxlm_sampler_sample(mxlm_sampler* sampler, const float* logits, int32_t n_vocab, const int32_t* history,
                                size_t n_history, int32_t* token) {
  return guard(__func__, [&] {
    require(sampler, "sampler");
    require(logits, "logits");
    require(token, "token");
    if (n_history > 0) require(history, "history");
    if (n_vocab < 1) invalid("n_vocab " + std::to_string(n_vocab) + " is not positive");
    *token = sampler->sampler.sample(logits, n_vocab, std::span<const int>(history, n_history));
  });
}

// ---- Generation ----

mxlm_generate_params mxlm_generate_default_params(void) {
  const mxlm::GenerateParams d;
  return mxlm_generate_params{d.n_predict, d.stop_at_eos, d.context_shift, d.n_keep, 0};
}

mxlm_status mxlm_generate(mxlm_context* ctx, mxlm_sampler* sampler, const int32_t* prompt, size_t n_prompt,
                          const mxlm_generate_params* params, mxlm_token_callback callback, void* user_data,
                          mxlm_generate_stats* stats) {
  if (stats) *stats = mxlm_generate_stats{};
  return guard(__func__, [&] {
    require(ctx, "ctx");
    require(sampler, "sampler");
    require(prompt, "prompt");
    if (n_prompt == 0) invalid("empty prompt: there is nothing to continue");
    const mxlm_generate_params p = params ? *params : mxlm_generate_default_params();
    if (p.n_keep < 0) invalid("n_keep " + std::to_string(p.n_keep) + " is negative");
    mxlm::GenerateParams gp;
    gp.n_predict = p.n_predict;
    gp.stop_at_eos = p.stop_at_eos != 0;
    gp.context_shift = p.context_shift != 0;
    gp.n_keep = p.n_keep;
    if (p.stop_at_end_of_turn) gp.stop_tokens = ctx->end_of_turn;
    const std::vector<int> ids(prompt, prompt + n_prompt);
    const mxlm::Tokenizer& tok = ctx->model->tokenizer();
    mxlm::StreamDecoder dec(tok);
    // The text goes on from the prompt: its first piece's leading space is real.
    if (ids.back() >= 0 && ids.back() < tok.n_vocab()) dec.push(ids.back());
    ctx->logits = nullptr;
    ctx->rows = 0;
    const mxlm::GenerateStats st = mxlm::generate(*ctx->ctx, sampler->sampler, ids, gp, [&](int id) {
      if (!callback) return true;
      const std::string piece = id < tok.n_vocab() ? dec.push(id) : std::string();
      return callback(user_data, id, piece.c_str(), piece.size()) != 0;
    });
    if (stats) {
      stats->n_prompt = st.n_prompt;
      stats->n_generated = st.n_generated;
      stats->prompt_seconds = st.prompt_seconds;
      stats->gen_seconds = st.gen_seconds;
      stats->hit_eos = st.hit_eos;
      stats->context_full = st.context_full;
      stats->stopped = st.stopped;
      stats->n_shifts = st.n_shifts;
    }
  });
}

}  // extern "C"
