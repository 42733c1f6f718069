#include "model/quantize.h"

#include <nlohmann/json.hpp>

#include "base/error.h"

namespace mxlm {

void quantize_model(const ImportedModel& m, const std::string& out_path, const QuantizeOptions& options,
                    const std::function<void(size_t, size_t)>& progress) {
  auto choose = [&](const SourceTensor& t) -> QType {
    if (t.name == tensor_names::kTokEmbd) return options.embd_qtype.value_or(options.qtype);
    if (t.name == tensor_names::kOutput) return options.output_qtype.value_or(options.qtype);
    return options.qtype;
  };
  nlohmann::json record = {{"method", "rtn"}, {"qtype", qtype_info(options.qtype).name}};
  nlohmann::json tensors = nlohmann::json::object();
  double bits = 0, elems = 0;
  for (const SourceTensor& t : m.tensors) {
    const QType q = t.shape.size() == 1 ? QType::kF32 : choose(t);
    const double n = double(t.shape[0]) * (t.shape.size() == 2 ? double(t.shape[1]) : 1.0);
    const double b = 8.0 * double(*qtype_row_bytes(q, static_cast<uint64_t>(t.shape.back()))) * (t.shape.size() == 2 ? double(t.shape[0]) : 1.0) / n;
    tensors[t.name] = {{"format", qtype_info(q).name}, {"bits_per_weight", b}};
    bits += b * n;
    elems += n;
  }
  record["tensors"] = tensors;
  record["bits_per_weight"] = bits / elems;
  write_model(m, out_path, choose, record, options.threads, progress);
}

}  // namespace mxlm
