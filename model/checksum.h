// CRC-32C (Castagnoli), the per-tensor and header checksum of .mxlm files.
#pragma once

#include <cstddef>
#include <cstdint>

namespace mxlm {

// crc32c(data, n, crc) continues a running checksum; start with crc = 0.
uint32_t crc32c(const void* data, size_t n, uint32_t crc = 0);

}  // namespace mxlm
