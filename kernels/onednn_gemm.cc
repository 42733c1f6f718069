#include "kernels/onednn_gemm.h"

#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <vector>

#include "base/error.h"
#include "kernels/isa.h"
#include "kernels/quant.h"

#ifdef MXLM_HAVE_ONEDNN
#include <oneapi/dnnl/dnnl.hpp>
#endif

namespace mxlm {

#ifdef MXLM_HAVE_ONEDNN

namespace {

struct Engine {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
};

Engine& engine() {
  static Engine e;
  return e;
}

// Primitives cached by shape (M, N, K, ldy); oneDNN primitives are immutable and may execute
// concurrently.
dnnl::matmul& primitive(int64_t M, int64_t N, int64_t K, int64_t ldy) {
  static std::mutex mu;
  static std::map<std::tuple<int64_t, int64_t, int64_t, int64_t>, std::unique_ptr<dnnl::matmul>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto& slot = cache[{M, N, K, ldy}];
  if (!slot) {
    using dt = dnnl::memory::data_type;
    dnnl::memory::desc a({M, K}, dt::bf16, dnnl::memory::dims{K, 1});
    dnnl::memory::desc b({K, N}, dt::bf16, dnnl::memory::dims{1, K});  // the panel is [N][K]
    dnnl::memory::desc c({M, N}, dt::f32, dnnl::memory::dims{ldy, 1});
    dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a, b, c), engine().engine);
    slot = std::make_unique<dnnl::matmul>(pd);
  }
  return *slot;
}

}  // namespace

bool onednn_available() {
  static const bool ok = isa_available(Isa::kAvx512);
  return ok;
}

void onednn_gemm(int M, int n0, int n1, int64_t K, const float* x, size_t ldx, QType wtype, const uint8_t* w,
                 size_t w_row_bytes, float* y, size_t ldy) {
  const int64_t N = n1 - n0;
  if (M <= 0 || N <= 0) return;
  thread_local std::vector<uint16_t> panel, acts;
  thread_local std::vector<float> row;
  panel.resize(static_cast<size_t>(N * K));
  acts.resize(static_cast<size_t>(int64_t{M} * K));
  row.resize(static_cast<size_t>(K));
  for (int64_t n = 0; n < N; ++n) {
    dequantize_row(wtype, w + static_cast<size_t>(n0 + n) * w_row_bytes, K, row.data());
    convert_row_from_f32(QType::kBF16, row.data(), panel.data() + n * K, static_cast<size_t>(K));
  }
  for (int m = 0; m < M; ++m) convert_row_from_f32(QType::kBF16, x + static_cast<size_t>(m) * ldx, acts.data() + m * K, static_cast<size_t>(K));
  using dt = dnnl::memory::data_type;
  dnnl::memory::desc a({M, K}, dt::bf16, dnnl::memory::dims{K, 1});
  dnnl::memory::desc b({K, N}, dt::bf16, dnnl::memory::dims{1, K});
  dnnl::memory::desc c({M, N}, dt::f32, dnnl::memory::dims{static_cast<int64_t>(ldy), 1});
  dnnl::memory am(a, engine().engine, acts.data()), bm(b, engine().engine, panel.data()), cm(c, engine().engine, y + n0);
  dnnl::stream s(engine().engine);
  primitive(M, N, K, static_cast<int64_t>(ldy)).execute(s, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}});
  s.wait();
}

#else

bool onednn_available() { return false; }

void onednn_gemm(int, int, int, int64_t, const float*, size_t, QType, const uint8_t*, size_t, float*, size_t) {
  MXLM_ASSERT(!"onednn_gemm: this build has no oneDNN");
}

#endif

}  // namespace mxlm
