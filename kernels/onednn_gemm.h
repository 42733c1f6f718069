// Prefill GEMM through oneDNN: the weight rows are dequantized to a bf16 panel and multiplied
// with bf16-rounded activations by oneDNN's matmul (f32 accumulation and output). An
// alternative to the int8 kernels for large M, and a second oracle in tests. Kept behind this
// one wrapper because oneDNN 3.x changed the API.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/qtype.h"

namespace mxlm {

// True when this build has oneDNN and the CPU runs its bf16 matmul (AVX-512 cores).
bool onednn_available();

// y[m*ldy + n] = sum_k x[m*ldx + k] * W[n][k] for m in [0, M), n in [n0, n1), with W rows in any
// QType (w_row_bytes apart). Uses per-thread scratch that grows once; safe to call from several
// threads at once (each call runs oneDNN single-threaded inside an OpenMP parallel region).
void onednn_gemm(int M, int n0, int n1, int64_t K, const float* x, size_t ldx, QType wtype, const uint8_t* w,
                 size_t w_row_bytes, float* y, size_t ldy);

}  // namespace mxlm
