#include "kernels/isa.h"

#include <array>
#include <cstdlib>
#include <string>

#include "base/error.h"

namespace mxlm {
namespace detail {
// kernels/cpu_features.cc (baseline flags, probed once).
bool cpu_can_run(Isa isa);
}  // namespace detail

namespace {

constexpr std::array<Isa, 4> kAllIsas = {Isa::kRef, Isa::kAvx2, Isa::kAvx512, Isa::kNeon};

// Whether this build compiled kernels for `isa` (CMake defines MXLM_HAVE_<ISA> on mxlm_kernels).
constexpr bool compiled_in(Isa isa) {
  switch (isa) {
    case Isa::kRef:
      return true;
    case Isa::kAvx2:
#ifdef MXLM_HAVE_AVX2
      return true;
#else
      return false;
#endif
    case Isa::kAvx512:
#ifdef MXLM_HAVE_AVX512
      return true;
#else
      return false;
#endif
    case Isa::kNeon:
#ifdef MXLM_HAVE_NEON
      return true;
#else
      return false;
#endif
  }
  return false;
}

std::string available_list() {
  std::string s;
  for (Isa isa : available_isas()) {
    if (!s.empty()) s += ", ";
    s += isa_name(isa);
  }
  return s;
}

}  // namespace

std::string_view isa_name(Isa isa) {
  switch (isa) {
    case Isa::kRef:
      return "ref";
    case Isa::kAvx2:
      return "avx2";
    case Isa::kAvx512:
      return "avx512";
    case Isa::kNeon:
      return "neon";
  }
  return "unknown";
}

std::optional<Isa> isa_from_name(std::string_view name) {
  for (Isa isa : kAllIsas) {
    if (isa_name(isa) == name) return isa;
  }
  return std::nullopt;
}

bool isa_available(Isa isa) { return compiled_in(isa) && detail::cpu_can_run(isa); }

std::vector<Isa> available_isas() {
  std::vector<Isa> out;
  for (Isa isa : kAllIsas) {
    if (isa_available(isa)) out.push_back(isa);
  }
  return out;
}

Isa selected_isa() {
  // The environment is read on every call (cheap; callers resolve kernels once per tensor), so
  // tests can change MXLM_ISA; the CPU probe behind isa_available is cached.
  const char* env = std::getenv("MXLM_ISA");
  if (env && *env) {
    const std::string_view name(env);
    const std::optional<Isa> isa = isa_from_name(name);
    if (!isa) {
      throw Error(ErrorCode::kUnsupported, "MXLM_ISA=" + std::string(name) +
                                               " is not an ISA (ref|avx2|avx512|neon); available here: " +
                                               available_list());
    }
    if (!isa_available(*isa)) {
      throw Error(ErrorCode::kUnsupported,
                  "MXLM_ISA=" + std::string(name) + " requested, but " +
                      (compiled_in(*isa) ? "this CPU cannot run it" : "this build has no kernels for it") +
                      "; available here: " + available_list());
    }
    return *isa;
  }
  const std::vector<Isa> isas = available_isas();
  // Best first: avx512 > avx2 (x86), neon (arm), else ref.
  for (Isa best : {Isa::kAvx512, Isa::kAvx2, Isa::kNeon}) {
    for (Isa isa : isas) {
      if (isa == best) return isa;
    }
  }
  return Isa::kRef;
}

}  // namespace mxlm
