/* mxlm.h: the C API of libmxlm (C99).
 *
 * Opaque handles; every call returns an mxlm_status (MXLM_OK = 0) and never lets an exception or
 * a crash through for bad input: NULL handles, bad paths, token ids out of range, a full context
 * and invalid UTF-8 all come back as an error code, with mxlm_last_error() describing it on the
 * calling thread. Getters of plain values that cannot fail return them directly.
 *
 * Threads: a model is immutable once loaded and may be shared by any number of contexts, samplers
 * and decoders on any threads. A context (the KV cache and scratch of one sequence), a sampler and a
 * decoder are each used by one thread at a time. Contexts evaluated on several threads at once
 * share the machine's cores: each evaluated batch leases its threads' cores from the process and
 * waits while other contexts hold them all, so the process never runs more evaluation threads
 * than cores (give each context n_threads = cores / concurrent contexts to run them side by side).
 *
 * A minimal program (error checks left out):
 *
 *   mxlm_model* model;
 *   mxlm_context* ctx;
 *   mxlm_sampler* sampler;
 *   mxlm_model_load("model.mxlm", NULL, &model);
 *   mxlm_context_create(model, NULL, &ctx);
 *   mxlm_sampler_create(NULL, &sampler);
 *   int32_t prompt[256];
 *   size_t n;
 *   mxlm_tokenize(model, "Once upon a time", 16, MXLM_TOKENIZE_BOS, prompt, 256, &n);
 *   mxlm_generate(ctx, sampler, prompt, n, NULL, print_piece, NULL, NULL);
 *   mxlm_sampler_free(sampler);
 *   mxlm_context_free(ctx);
 *   mxlm_model_free(model);
 */
#ifndef MXLM_H_
#define MXLM_H_

#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__) || defined(__clang__)
#define MXLM_API __attribute__((visibility("default")))
#else
#define MXLM_API
#endif

#define MXLM_VERSION_MAJOR 0
#define MXLM_VERSION_MINOR 2
#define MXLM_VERSION_PATCH 0

#ifdef __cplusplus
extern "C" {
#endif

typedef enum mxlm_status {
  MXLM_OK = 0,
  MXLM_ERR_INVALID_ARGUMENT = 1, /* a NULL handle, a value out of range, invalid UTF-8 */
  MXLM_ERR_IO = 2,               /* a file could not be opened, read or written */
  MXLM_ERR_FORMAT = 3,           /* a model file is corrupt, truncated or of an unknown kind */
  MXLM_ERR_UNSUPPORTED = 4,      /* valid, but not supported here (an architecture, an ISA) */
  MXLM_ERR_CONTEXT_FULL = 5,     /* the tokens do not fit the context */
  MXLM_ERR_BUFFER_TOO_SMALL = 6, /* the output needs more room: the size needed was returned */
  MXLM_ERR_OUT_OF_MEMORY = 7,
  MXLM_ERR_INTERNAL = 8
} mxlm_status;

/* The library's version, "MAJOR.MINOR.PATCH"; *major etc. may be NULL. */
MXLM_API const char* mxlm_version(int* major, int* minor, int* patch);
/* The message of the last call that failed on this thread ("" when none has); valid until the
 * next failing call on this thread. */
MXLM_API const char* mxlm_last_error(void);
/* "ok", "invalid argument", ... */
MXLM_API const char* mxlm_status_name(mxlm_status status);

typedef struct mxlm_model mxlm_model;
typedef struct mxlm_context mxlm_context;
typedef struct mxlm_sampler mxlm_sampler;
typedef struct mxlm_decoder mxlm_decoder;

/* ---- Models ---------------------------------------------------------------------------- */

typedef struct mxlm_model_params {
  const char* isa;    /* NULL or "": MXLM_ISA, else the best this CPU runs; or "ref", "avx2", "avx512", "neon" */
  int32_t verify;     /* nonzero: recompute every tensor checksum at load */
  const char* memory; /* NULL or "": "huge"; "map", "copy" or "huge" (mxlm run --memory) */
  int32_t n_threads;  /* threads for the load itself (reading, repacking, importing); 0: all cores */
} mxlm_model_params;
MXLM_API mxlm_model_params mxlm_model_default_params(void);

/* Loads an .mxlm file, or imports a GGUF file or an HF model directory in memory. params may be
 * NULL (the defaults). */
MXLM_API mxlm_status mxlm_model_load(const char* path, const mxlm_model_params* params, mxlm_model** model);
/* Frees the handle (NULL: nothing); contexts made from it keep the weights alive until they are
 * freed too. */
MXLM_API void mxlm_model_free(mxlm_model* model);

typedef struct mxlm_model_info {
  int32_t n_vocab, n_ctx_train, n_embd, n_layers, n_heads, n_kv_heads, head_dim;
  int32_t bos, eos;                 /* token ids; -1 when the model has none */
  uint64_t weight_bytes;            /* all tensors */
  double bits_per_weight;           /* over the 2-D tensors */
  const char* isa;                  /* the kernels' ISA, e.g. "avx512" (static storage) */
  int32_t has_chat_template;        /* the model carries its own chat template */
} mxlm_model_info;
MXLM_API mxlm_status mxlm_model_get_info(const mxlm_model* model, mxlm_model_info* info);

/* ---- Contexts -------------------------------------------------------------------------- */

typedef struct mxlm_context_params {
  int32_t n_ctx;      /* 0: the model's trained context */
  int32_t n_batch;    /* tokens per forward pass (512) */
  int32_t n_threads;  /* 0: all cores */
  const char* kv;     /* NULL or "": "f32"; a KV cache spec as mxlm run --kv: "k8v8", "k4v4", "k2v2", ... */
  int32_t kv_window;  /* 2-bit KV formats: recent tokens kept in f16 (64) */
} mxlm_context_params;
MXLM_API mxlm_context_params mxlm_context_default_params(void);

/* params may be NULL (the defaults). */
MXLM_API mxlm_status mxlm_context_create(const mxlm_model* model, const mxlm_context_params* params, mxlm_context** ctx);
MXLM_API void mxlm_context_free(mxlm_context* ctx);
/* Forgets every token. */
MXLM_API mxlm_status mxlm_context_reset(mxlm_context* ctx);
/* Keeps the first n_past tokens (n_past <= the tokens held) and forgets the rest. */
MXLM_API mxlm_status mxlm_context_truncate(mxlm_context* ctx, int32_t n_past);
/* Context shift: forgets positions [n_keep, n_keep + n_discard) and moves the later ones down. */
MXLM_API mxlm_status mxlm_context_shift(mxlm_context* ctx, int32_t n_keep, int32_t n_discard);

typedef struct mxlm_context_info {
  int32_t n_ctx, n_past, n_threads;
  uint64_t kv_bytes_per_token; /* over all layers */
  uint64_t kv_bytes;           /* the whole cache at n_ctx */
} mxlm_context_info;
MXLM_API mxlm_status mxlm_context_get_info(const mxlm_context* ctx, mxlm_context_info* info);

/* ---- Tokens and text ------------------------------------------------------------------- */

/* Flags of mxlm_tokenize (or-ed; 0 and 1 read as the add_bos flag of earlier versions). */
#define MXLM_TOKENIZE_BOS 1      /* BOS first (with SPECIAL: unless the text begins with the BOS piece) */
#define MXLM_TOKENIZE_SPECIAL 2  /* control pieces written in the text (<s>, </s>, <|im_end|>, ...) become
                                  * their ids: text from mxlm_chat_apply_template */
#define MXLM_TOKENIZE_CONTINUE 4 /* with SPECIAL: the text continues text already evaluated (a new turn
                                  * rendered behind the last): no dummy-prefix space in front */

/* Tokenizes len bytes of UTF-8 text as `flags` say. *n_tokens receives the count; when it exceeds
 * capacity nothing is written and MXLM_ERR_BUFFER_TOO_SMALL is returned (tokens may then be NULL:
 * a call with capacity 0 asks for the count). */
MXLM_API mxlm_status mxlm_tokenize(const mxlm_model* model, const char* text, size_t len, int32_t flags,
                                   int32_t* tokens, size_t capacity, size_t* n_tokens);
/* The text of n tokens (control tokens give none). *len receives its length; when len + 1 (for the
 * terminating NUL) exceeds capacity, MXLM_ERR_BUFFER_TOO_SMALL. */
MXLM_API mxlm_status mxlm_detokenize(const mxlm_model* model, const int32_t* tokens, size_t n_tokens, char* text,
                                     size_t capacity, size_t* len);

/* A streaming decoder: turns generated tokens into valid UTF-8 as they come (the bytes of an
 * incomplete character are held until it completes). The text returned stays valid until the
 * next call on the decoder. */
MXLM_API mxlm_status mxlm_decoder_create(const mxlm_model* model, mxlm_decoder** decoder);
MXLM_API mxlm_status mxlm_decoder_push(mxlm_decoder* decoder, int32_t token, const char** text, size_t* len);
/* What is still held (an incomplete character becomes U+FFFD), and a fresh start. */
MXLM_API mxlm_status mxlm_decoder_flush(mxlm_decoder* decoder, const char** text, size_t* len);
MXLM_API void mxlm_decoder_free(mxlm_decoder* decoder);

/* ---- Chat templates -------------------------------------------------------------------- */

typedef struct mxlm_chat_message {
  const char* role;    /* "system", "user" or "assistant" */
  const char* content; /* UTF-8 */
} mxlm_chat_message;

/* Renders a conversation with the model's own chat template (Jinja2, rendered as Hugging Face
 * transformers renders it), or with the plain "User: / Assistant:" fallback when the model has
 * none; with add_generation_prompt, followed by what opens the assistant's reply. Tokenize the
 * text with add_bos unless it begins with the model's BOS text. *len receives the length; when
 * len + 1 exceeds capacity, MXLM_ERR_BUFFER_TOO_SMALL (text may then be NULL). A template that
 * rejects the conversation (raise_exception) is MXLM_ERR_INVALID_ARGUMENT with its message. */
MXLM_API mxlm_status mxlm_chat_apply_template(const mxlm_model* model, const mxlm_chat_message* messages, size_t n_messages,
                                              int32_t add_generation_prompt, char* text, size_t capacity, size_t* len);

/* ---- Evaluation ------------------------------------------------------------------------ */

/* Evaluates n_tokens at the context's next positions. Logits of every token when all_logits,
 * else of the last only: read them with mxlm_get_logits. */
MXLM_API mxlm_status mxlm_eval(mxlm_context* ctx, const int32_t* tokens, size_t n_tokens, int32_t all_logits);
/* The logits of the last mxlm_eval: *n_rows rows of *n_vocab floats, valid until the next
 * evaluation on the context. */
MXLM_API mxlm_status mxlm_get_logits(const mxlm_context* ctx, const float** logits, int32_t* n_rows, int32_t* n_vocab);

/* ---- Sampling -------------------------------------------------------------------------- */

typedef struct mxlm_sampler_params {
  float temperature;    /* <= 0: greedy (0.8) */
  int32_t top_k;        /* <= 0: off (40) */
  float top_p;          /* >= 1: off (0.95) */
  float min_p;          /* <= 0: off (0.05) */
  float repeat_penalty; /* 1: off (1) */
  int32_t repeat_last_n;/* (64) */
  uint64_t seed;
} mxlm_sampler_params;
MXLM_API mxlm_sampler_params mxlm_sampler_default_params(void);
/* params may be NULL (the defaults). */
MXLM_API mxlm_status mxlm_sampler_create(const mxlm_sampler_params* params, mxlm_sampler** sampler);
MXLM_API void mxlm_sampler_free(mxlm_sampler* sampler);
/* Picks a token from logits[n_vocab]; history (may be NULL when n_history is 0) is the sequence
 * so far, for the repetition penalty. */
MXLM_API mxlm_status mxlm_sampler_sample(mxlm_sampler* sampler, const float* logits, int32_t n_vocab,
                                         const int32_t* history, size_t n_history, int32_t* token);

/* ---- Generation ------------------------------------------------------------------------ */

/* Receives each generated token and its text (complete UTF-8, possibly empty); returns nonzero
 * to go on, 0 to stop. It runs on the thread that called mxlm_generate, between evaluations. */
typedef int (*mxlm_token_callback)(void* user_data, int32_t token, const char* text, size_t len);

typedef struct mxlm_generate_params {
  int32_t n_predict;     /* tokens to generate at most; -1: until EOS or a full context (128) */
  int32_t stop_at_eos;   /* (1) */
  int32_t context_shift; /* nonzero: a full context drops the older half after n_keep tokens and goes on (0) */
  int32_t n_keep;        /* (1) */
  int32_t stop_at_end_of_turn; /* nonzero: also stop, as at EOS (stats->hit_eos), at the control tokens the model's
                                * chat template writes after a reply: <|im_end|>, <|eot_id|>, <end_of_turn>, ... (0) */
} mxlm_generate_params;
MXLM_API mxlm_generate_params mxlm_generate_default_params(void);

typedef struct mxlm_generate_stats {
  int32_t n_prompt, n_generated;
  double prompt_seconds, gen_seconds;
  int32_t hit_eos, context_full, stopped, n_shifts;
} mxlm_generate_stats;

/* Evaluates the prompt at the context's next positions, then samples and evaluates token by
 * token, calling callback (may be NULL) with each. The context then holds the prompt and every
 * generated token but the last, which was sampled, not evaluated: a next turn starts with it
 * (unless it was EOS). params and stats may be NULL. */
MXLM_API mxlm_status mxlm_generate(mxlm_context* ctx, mxlm_sampler* sampler, const int32_t* prompt, size_t n_prompt,
                                   const mxlm_generate_params* params, mxlm_token_callback callback, void* user_data,
                                   mxlm_generate_stats* stats);

#ifdef __cplusplus
}
#endif

#endif /* MXLM_H_ */
