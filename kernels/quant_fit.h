// The quantizer's row fit (kernels/quant_fit.cc), internal to kernels/: quantize_row and
// quantize_row_params (kernels/quant.h) run it.
#pragma once

#include <cstdint>

#include "kernels/isa.h"
#include "kernels/qtype.h"

namespace mxlm::detail {

// Fits one row of k values x (importance imp per column, null for uniform) in format `info`
// (quantized, not float): d[nb] and, asymmetric, m[nb] per group as dequantization computes
// them (f16-rounded; two-level: D * s, M * o), the codebook cb[2^b] (codebook formats), rs[2] =
// D, M (two-level) and, when q is not null, the quant indices q[nb * G] of the one-level fit
// (padding past k: z = 2^(b-1) symmetric, 0 asymmetric; two-level formats' levels are
// re-assigned by the caller under the final d, m).
using FitRowFn = void (*)(const QTypeInfo& info, const float* x, int64_t k, const float* imp, float* d, float* m,
                          int8_t* cb, uint8_t* q, float* rs);

// The copy for the runtime's selected ISA (resolved once).
FitRowFn fit_row_fn();
// The copy for `isa`: null where this build or CPU has none. Every copy writes the same bits.
FitRowFn fit_row_for(Isa isa);

}  // namespace mxlm::detail
