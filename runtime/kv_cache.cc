// KvCache: see runtime/kv_cache.h.

#include "runtime/kv_cache.h"

#include <cstring>

#include "kernels/common.h"

namespace mxlm {

KvCache::KvCache(int n_layers, int n_ctx, int n_kv_heads, int head_dim)
    : n_layers_(n_layers), n_ctx_(n_ctx), kv_dim_(n_kv_heads * head_dim) {
  MXLM_ASSERT(n_layers > 0 && n_ctx > 0 && kv_dim_ > 0);
  const size_t n = size_t(n_layers) * n_ctx * kv_dim_;
  k_.assign(n, 0.0f);
  v_.assign(n, 0.0f);
}

void KvCache::store(int l, int pos, const float* k, const float* v) {
  MXLM_DASSERT(l >= 0 && l < n_layers_ && pos >= 0 && pos < n_ctx_);
  const size_t o = (size_t(l) * n_ctx_ + pos) * kv_dim_;
  std::memcpy(&k_[o], k, sizeof(float) * kv_dim_);
  std::memcpy(&v_[o], v, sizeof(float) * kv_dim_);
}

}  // namespace mxlm
