// Instruction sets mxlm has kernels for, CPU detection and the forced-ISA override.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

namespace mxlm {

enum class Isa : uint8_t { kRef = 0, kAvx2 = 1, kAvx512 = 2, kNeon = 3 };

std::string_view isa_name(Isa isa);                   // "ref", "avx2", "avx512", "neon"
std::optional<Isa> isa_from_name(std::string_view name);

// True when this build has kernels for `isa` and the CPU (and OS, via XGETBV) can run them.
// avx2 needs AVX2+FMA+F16C+BMI2; avx512 needs F/CD/DQ/BW/VL + VNNI + VBMI + BF16 + GFNI (Sapphire
// Rapids, Zen 4 and later).
bool isa_available(Isa isa);
// All available ISAs, ref first.
std::vector<Isa> available_isas();
// The ISA the runtime uses: MXLM_ISA from the environment when set (throws Error
// kUnsupported when unknown or not available on this CPU, naming it and what is available),
// else the best available.
Isa selected_isa();

}  // namespace mxlm
