#include "kernels/onednn_gemm.h"

#include <algorithm>
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

// A matmul primitive and its descriptor (for the scratchpad's size), cached by shape (M, N, K,
// ldy). The context's pool calls this from several threads at once, so each call passes its own
// scratchpad (scratchpad_mode::user, a thread_local buffer below). The library-managed default
// is one global scratchpad unless oneDNN was built with DNNL_ENABLE_CONCURRENT_EXEC, which
// Debian's 2.6 is not (dnnl_config.h defines it only for SYCL): two threads' bf16 matmuls then
// wrote over each other's partial sums. OneDnn.PrefillBackendsAgreeOnAModel on 2 threads
// failed in 19 of 20 runs (logits off by up to 22), never on 1 thread or with the calls
// serialized; it surfaced when prefill tasks grew from 64 to 256 rows.
struct Matmul {
  dnnl::matmul::primitive_desc pd;
  dnnl::matmul prim;
};

const Matmul& primitive(int64_t M, int64_t N, int64_t K, int64_t ldy) {
  static std::mutex mu;
  static std::map<std::tuple<int64_t, int64_t, int64_t, int64_t>, std::unique_ptr<Matmul>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto& slot = cache[{M, N, K, ldy}];
  if (!slot) {
    using dt = dnnl::memory::data_type;
    dnnl::memory::desc a({M, K}, dt::bf16, dnnl::memory::dims{K, 1});
    dnnl::memory::desc b({K, N}, dt::bf16, dnnl::memory::dims{1, K});  // the panel is [N][K]
    dnnl::memory::desc c({M, N}, dt::f32, dnnl::memory::dims{ldy, 1});
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a, b, c), attr, engine().engine);
    slot = std::make_unique<Matmul>(Matmul{pd, dnnl::matmul(pd)});
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
  thread_local std::vector<uint8_t> scratch;
  panel.resize(static_cast<size_t>(N * K));
  acts.resize(static_cast<size_t>(int64_t{M} * K));
  row.resize(static_cast<size_t>(K));
  for (int64_t n = 0; n < N; ++n) {
    dequantize_row(wtype, w + static_cast<size_t>(n0 + n) * w_row_bytes, K, row.data());
    convert_row_from_f32(QType::kBF16, row.data(), panel.data() + n * K, static_cast<size_t>(K));
  }
  for (int m = 0; m < M; ++m) convert_row_from_f32(QType::kBF16, x + static_cast<size_t>(m) * ldx, acts.data() + m * K, static_cast<size_t>(K));
  // The operands' layouts are the cached descriptor's (primitive() states them once).
  const Matmul& mm = primitive(M, N, K, static_cast<int64_t>(ldy));
  const dnnl::engine& e = engine().engine;
  dnnl::memory am(mm.pd.src_desc(), e, acts.data()), bm(mm.pd.weights_desc(), e, panel.data()),
      cm(mm.pd.dst_desc(), e, y + n0);
  const dnnl::memory::desc sd = mm.pd.scratchpad_desc();
  scratch.resize(std::max<size_t>(scratch.size(), sd.get_size()));
  dnnl::memory sm(sd, e, scratch.data());
  dnnl::stream s(e);
  mm.prim.execute(s, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}, {DNNL_ARG_SCRATCHPAD, sm}});
  s.wait();
}

#else

bool onednn_available() { return false; }

void onednn_gemm(int, int, int, int64_t, const float*, size_t, QType, const uint8_t*, size_t, float*, size_t) {
  MXLM_ASSERT(!"onednn_gemm: this build has no oneDNN");
}

#endif

}  // namespace mxlm
