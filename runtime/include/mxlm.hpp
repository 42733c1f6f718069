// mxlm.hpp: a header-only C++17 wrapper over the C API (mxlm.h): RAII handles that free
// themselves, std::string and std::vector in place of buffers, and mxlm::Error (with the status)
// in place of status codes. It holds nothing but the C handles, so it works the same against the
// shared and the static library.
//
//   mxlm::Model model("model.mxlm");
//   mxlm::Context ctx(model);
//   mxlm::Sampler sampler;
//   ctx.generate(sampler, model.tokenize("Once upon a time", true), mxlm::generate_params(64),
//                [](int32_t, std::string_view text) { std::cout << text << std::flush; return true; });
#ifndef MXLM_HPP_
#define MXLM_HPP_

#include <exception>
#include <functional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "mxlm.h"

namespace mxlm {

class Error : public std::runtime_error {
 public:
  Error(mxlm_status status, const std::string& message) : std::runtime_error(message), status_(status) {}
  mxlm_status status() const { return status_; }

 private:
  mxlm_status status_;
};

inline void check(mxlm_status s) {
  if (s != MXLM_OK) throw Error(s, mxlm_last_error());
}

namespace detail {
// A move-only owner of one C handle.
template <class T, void (*Free)(T*)>
class Handle {
 public:
  Handle() = default;
  explicit Handle(T* p) : p_(p) {}
  Handle(Handle&& o) noexcept : p_(std::exchange(o.p_, nullptr)) {}
  Handle& operator=(Handle&& o) noexcept {
    if (this != &o) {
      if (p_) Free(p_);
      p_ = std::exchange(o.p_, nullptr);
    }
    return *this;
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  ~Handle() {
    if (p_) Free(p_);
  }
  T* get() const { return p_; }

 private:
  T* p_ = nullptr;
};
}  // namespace detail

class Model {
 public:
  explicit Model(const std::string& path, const mxlm_model_params& params = mxlm_model_default_params()) {
    mxlm_model* m = nullptr;
    check(mxlm_model_load(path.c_str(), &params, &m));
    h_ = Handle(m);
  }
  mxlm_model* get() const { return h_.get(); }

  mxlm_model_info info() const {
    mxlm_model_info i;
    check(mxlm_model_get_info(get(), &i));
    return i;
  }
  std::vector<int32_t> tokenize(std::string_view text, bool add_bos) const { return tokenize_flags(text, add_bos ? MXLM_TOKENIZE_BOS : 0); }
  // Text rendered by apply_chat_template, its special tokens as their ids: the whole conversation
  // (BOS first), or with continuation the part of it rendered behind what the context holds.
  std::vector<int32_t> tokenize_chat(std::string_view text, bool continuation) const {
    return tokenize_flags(text, MXLM_TOKENIZE_SPECIAL | (continuation ? MXLM_TOKENIZE_CONTINUE : MXLM_TOKENIZE_BOS));
  }
  std::vector<int32_t> tokenize_flags(std::string_view text, int32_t flags) const {
    size_t n = 0;
    mxlm_status s = mxlm_tokenize(get(), text.data(), text.size(), flags, nullptr, 0, &n);
    if (s != MXLM_ERR_BUFFER_TOO_SMALL && s != MXLM_OK) check(s);
    std::vector<int32_t> ids(n);
    check(mxlm_tokenize(get(), text.data(), text.size(), flags, ids.data(), ids.size(), &n));
    return ids;
  }
  std::string detokenize(const std::vector<int32_t>& ids) const {
    size_t len = 0;
    mxlm_status s = mxlm_detokenize(get(), ids.data(), ids.size(), nullptr, 0, &len);
    if (s != MXLM_ERR_BUFFER_TOO_SMALL && s != MXLM_OK) check(s);
    std::string text(len + 1, '\0');
    check(mxlm_detokenize(get(), ids.data(), ids.size(), text.data(), text.size(), &len));
    text.resize(len);
    return text;
  }

  // The conversation rendered with the model's chat template (or the plain fallback).
  std::string apply_chat_template(const std::vector<std::pair<std::string, std::string>>& messages, bool add_generation_prompt) const {
    std::vector<mxlm_chat_message> m;
    for (const auto& [role, content] : messages) m.push_back({role.c_str(), content.c_str()});
    size_t len = 0;
    mxlm_status s = mxlm_chat_apply_template(get(), m.data(), m.size(), add_generation_prompt, nullptr, 0, &len);
    if (s != MXLM_ERR_BUFFER_TOO_SMALL && s != MXLM_OK) check(s);
    std::string text(len + 1, '\0');
    check(mxlm_chat_apply_template(get(), m.data(), m.size(), add_generation_prompt, text.data(), text.size(), &len));
    text.resize(len);
    return text;
  }

 private:
  using Handle = detail::Handle<mxlm_model, mxlm_model_free>;
  Handle h_;
};

class Sampler {
 public:
  explicit Sampler(const mxlm_sampler_params& params = mxlm_sampler_default_params()) {
    mxlm_sampler* s = nullptr;
    check(mxlm_sampler_create(&params, &s));
    h_ = Handle(s);
  }
  mxlm_sampler* get() const { return h_.get(); }
  int32_t sample(const float* logits, int32_t n_vocab, const std::vector<int32_t>& history = {}) {
    int32_t t = 0;
    check(mxlm_sampler_sample(get(), logits, n_vocab, history.data(), history.size(), &t));
    return t;
  }

 private:
  using Handle = detail::Handle<mxlm_sampler, mxlm_sampler_free>;
  Handle h_;
};

// Streams generated tokens as valid UTF-8.
class Decoder {
 public:
  explicit Decoder(const Model& model) {
    mxlm_decoder* d = nullptr;
    check(mxlm_decoder_create(model.get(), &d));
    h_ = Handle(d);
  }
  std::string_view push(int32_t token) {
    const char* t = nullptr;
    size_t n = 0;
    check(mxlm_decoder_push(h_.get(), token, &t, &n));
    return {t, n};
  }
  std::string_view flush() {
    const char* t = nullptr;
    size_t n = 0;
    check(mxlm_decoder_flush(h_.get(), &t, &n));
    return {t, n};
  }

 private:
  using Handle = detail::Handle<mxlm_decoder, mxlm_decoder_free>;
  Handle h_;
};

class Context {
 public:
  explicit Context(const Model& model, const mxlm_context_params& params = mxlm_context_default_params()) {
    mxlm_context* c = nullptr;
    check(mxlm_context_create(model.get(), &params, &c));
    h_ = Handle(c);
  }
  mxlm_context* get() const { return h_.get(); }

  mxlm_context_info info() const {
    mxlm_context_info i;
    check(mxlm_context_get_info(get(), &i));
    return i;
  }
  void reset() { check(mxlm_context_reset(get())); }
  void truncate(int32_t n_past) { check(mxlm_context_truncate(get(), n_past)); }
  void shift(int32_t n_keep, int32_t n_discard) { check(mxlm_context_shift(get(), n_keep, n_discard)); }

  // Evaluates the tokens; returns the last token's logits (n_vocab floats, valid until the next
  // evaluation), or every token's when all_logits.
  const float* eval(const std::vector<int32_t>& tokens, bool all_logits = false) {
    check(mxlm_eval(get(), tokens.data(), tokens.size(), all_logits));
    const float* logits = nullptr;
    check(mxlm_get_logits(get(), &logits, nullptr, nullptr));
    return logits;
  }

  // on_token(token, text) returns false to stop.
  using OnToken = std::function<bool(int32_t, std::string_view)>;
  // An exception thrown by on_token stops generation and is rethrown here (it never unwinds
  // through the C library).
  mxlm_generate_stats generate(Sampler& sampler, const std::vector<int32_t>& prompt,
                               const mxlm_generate_params& params, const OnToken& on_token) {
    mxlm_generate_stats st;
    Callback cb{&on_token, nullptr};
    const mxlm_status s = mxlm_generate(get(), sampler.get(), prompt.data(), prompt.size(), &params,
                                        on_token ? &trampoline : nullptr, &cb, &st);
    if (cb.error) std::rethrow_exception(cb.error);
    check(s);
    return st;
  }

 private:
  struct Callback {
    const OnToken* f;
    std::exception_ptr error;
  };
  static int trampoline(void* user, int32_t token, const char* text, size_t len) {
    auto* cb = static_cast<Callback*>(user);
    try {
      return (*cb->f)(token, std::string_view(text, len)) ? 1 : 0;
    } catch (...) {
      cb->error = std::current_exception();
      return 0;
    }
  }
  using Handle = detail::Handle<mxlm_context, mxlm_context_free>;
  Handle h_;
};

// Default parameters for generate(): mxlm_generate_default_params() with the fields a caller
// changes most.
inline mxlm_generate_params generate_params(int32_t n_predict, bool context_shift = false) {
  mxlm_generate_params p = mxlm_generate_default_params();
  p.n_predict = n_predict;
  p.context_shift = context_shift;
  return p;
}

}  // namespace mxlm

#endif  // MXLM_HPP_
