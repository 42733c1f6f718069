// The quantizer's entry points: uniform round-to-nearest for every linear layer (this file);
// sensitivity-driven mixed precision builds on the same write path.
#pragma once

#include <functional>
#include <optional>
#include <string>

#include "kernels/qtype.h"
#include "model/import.h"

namespace mxlm {

struct QuantizeOptions {
  QType qtype = QType::kQ4G32;         // every linear layer (attention, FFN)
  std::optional<QType> embd_qtype;     // token embedding (default: qtype)
  std::optional<QType> output_qtype;   // output head (default: qtype; ignored when tied)
  int threads = 0;                     // 0: all cores
};

// Quantizes an imported model and writes it atomically. The header's "quantization" record
// lists the method and each tensor's format and bits per weight.
void quantize_model(const ImportedModel& m, const std::string& out_path, const QuantizeOptions& options,
                    const std::function<void(size_t, size_t)>& progress = {});

}  // namespace mxlm
