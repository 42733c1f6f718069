#include "kernels/qtype.h"

#include <cstring>

#include "base/error.h"

namespace mxlm {

const QTypeInfo* qtype_info(uint32_t id) {
  for (const QTypeInfo& info : kQTypes) {
    if (static_cast<uint32_t>(info.type) == id) return &info;
  }
  return nullptr;
}

std::optional<QType> qtype_from_name(std::string_view name) {
  for (const QTypeInfo& info : kQTypes) {
    if (info.name == name) return info.type;
  }
  return std::nullopt;
}

std::optional<uint64_t> qtype_row_bytes(QType t, uint64_t k) {
  const QTypeInfo& info = qtype_info(t);
  const uint64_t groups = (k + static_cast<uint64_t>(info.block_elems) - 1) / static_cast<uint64_t>(info.block_elems);
  uint64_t bytes = 0;
  if (k > (uint64_t{1} << 48) || __builtin_mul_overflow(groups, static_cast<uint64_t>(info.block_bytes), &bytes)) {
    return std::nullopt;
  }
  return bytes + static_cast<uint64_t>(info.row_prefix_bytes);
}

float bf16_to_f32(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t u;
  if (exp == 0) {
    if (mant == 0) {
      u = sign;
    } else {  // subnormal: normalize
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while ((mant & 0x400u) == 0);
      u = sign | static_cast<uint32_t>(127 - 15 - e) << 23 | (mant & 0x3ffu) << 13;
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000u | mant << 13;
  } else {
    u = sign | (exp + 127 - 15) << 23 | mant << 13;
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t f32_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return sign | 0x7e00u;         // NaN
  if (abs >= 0x477ff000u) return sign | 0x7c00u;        // overflow to inf (>= 65520)
  if (abs < 0x38800000u) {                              // subnormal or zero in f16
    if (abs < 0x33000000u) return sign;                 // < 2^-25 rounds to zero
    // value = mant * 2^(exp - 150); in units of the smallest half subnormal (2^-24) that is
    // mant >> (126 - exp), rounded to nearest even.
    const uint32_t exp = abs >> 23;
    const uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - exp;
    uint32_t r = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1);
    const uint32_t mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (r & 1u))) ++r;
    return static_cast<uint16_t>(sign | r);
  }
  uint32_t r = abs + 0xc8000000u;  // rebias exponent: (127-15) << 23
  r += 0xfffu + ((r >> 13) & 1u);
  return static_cast<uint16_t>(sign | (r >> 13));
}

namespace {
inline uint16_t load_u16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return h;
}
inline void store_u16(uint8_t* p, uint16_t h) { std::memcpy(p, &h, 2); }
}  // namespace

void convert_row_to_f32(QType t, const void* src, float* dst, size_t n) {
  switch (t) {
    case QType::kF32:
      std::memcpy(dst, src, n * 4);
      return;
    // src and dst may sit at any byte offset (a mapped file's tensor data): memcpy per element,
    // never a uint16_t* dereference (compilers turn it into plain loads anyway).
    case QType::kBF16: {
      const auto* s = static_cast<const uint8_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(load_u16(s + 2 * i));
      return;
    }
    case QType::kF16: {
      const auto* s = static_cast<const uint8_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = f16_to_f32(load_u16(s + 2 * i));
      return;
    }
    default:
      break;
  }
  MXLM_ASSERT(false && "convert_row_to_f32: not a float format");
}

void convert_row_from_f32(QType t, const float* src, void* dst, size_t n) {
  switch (t) {
    case QType::kF32:
      std::memcpy(dst, src, n * 4);
      return;
    case QType::kBF16: {
      auto* d = static_cast<uint8_t*>(dst);
      for (size_t i = 0; i < n; ++i) store_u16(d + 2 * i, f32_to_bf16(src[i]));
      return;
    }
    case QType::kF16: {
      auto* d = static_cast<uint8_t*>(dst);
      for (size_t i = 0; i < n; ++i) store_u16(d + 2 * i, f32_to_f16(src[i]));
      return;
    }
    default:
      break;
  }
  MXLM_ASSERT(false && "convert_row_from_f32: not a float format");
}

}  // namespace mxlm
