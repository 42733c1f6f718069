// CPU feature probe. Built with baseline flags and without LTO (kernels/CMakeLists.txt): it runs
// before anything knows which instructions are safe, so nothing here may be compiled for, or
// inlined into, an ISA-specific translation unit.
//
// Exported (declared where used):
//   bool mxlm::detail::cpu_can_run(Isa isa)   -- the CPU and the OS support every feature that
//                                                 the kernels of `isa` use. Probed once, cached.
//                                                 (kernels/isa.cc)
//   bool mxlm::detail::cpu_has_neon_dotprod() -- AArch64 with the dot-product instructions
//                                                 (SDOT, HWCAP_ASIMDDP): the NEON kernels pick
//                                                 their sdot or their widening-multiply path by it.
//                                                 (kernels/simd/neon_kernels.cc)

#include <cstdint>

#include "kernels/isa.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#elif defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1UL << 20)  // <asm/hwcap.h>
#endif
#endif

namespace mxlm::detail {
namespace {

struct CpuFeatures {
  bool avx2_set = false;    // AVX + AVX2 + FMA + F16C + BMI2, with YMM state enabled by the OS
  bool avx512_set = false;  // F/CD/DQ/BW/VL + VNNI + VBMI + BF16 + GFNI, with ZMM/opmask state enabled
  bool neon = false;        // Advanced SIMD (always present on AArch64)
  bool neon_dotprod = false;  // + SDOT/UDOT (optional from Armv8.2, mandatory from Armv8.4)
};

#if defined(__x86_64__) || defined(__i386__)

// XGETBV with ECX=0: the OS-enabled state components (XCR0). Written as raw asm so that this
// file needs no -mxsave.
uint64_t read_xcr0() {
  uint32_t eax = 0, edx = 0;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<uint64_t>(edx) << 32) | eax;
}

bool bit(uint32_t reg, int b) { return (reg >> b) & 1u; }

CpuFeatures probe() {
  CpuFeatures f;
  uint32_t eax, ebx, ecx, edx;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return f;
  const bool fma = bit(ecx, 12), osxsave = bit(ecx, 27), avx = bit(ecx, 28), f16c = bit(ecx, 29);
  if (!osxsave || !avx) return f;  // no XGETBV, or no AVX: nothing beyond SSE is usable

  const uint64_t xcr0 = read_xcr0();
  const bool os_ymm = (xcr0 & 0x6) == 0x6;     // SSE (bit 1) and AVX (bit 2) state
  const bool os_zmm = (xcr0 & 0xe6) == 0xe6;   // + opmask (5), ZMM_Hi256 (6), Hi16_ZMM (7)

  uint32_t max_leaf = __get_cpuid_max(0, nullptr);
  if (max_leaf < 7) return f;
  uint32_t b7 = 0, c7 = 0, a71 = 0;
  __cpuid_count(7, 0, eax, ebx, ecx, edx);
  b7 = ebx;
  c7 = ecx;
  const uint32_t max_sub7 = eax;
  if (max_sub7 >= 1) {
    __cpuid_count(7, 1, eax, ebx, ecx, edx);
    a71 = eax;
  }
  const bool avx2 = bit(b7, 5), bmi2 = bit(b7, 8);
  const bool avx512f = bit(b7, 16), avx512dq = bit(b7, 17), avx512cd = bit(b7, 28);
  const bool avx512bw = bit(b7, 30), avx512vl = bit(b7, 31);
  const bool avx512vbmi = bit(c7, 1), gfni = bit(c7, 8), avx512vnni = bit(c7, 11);
  const bool avx512bf16 = bit(a71, 5);

  f.avx2_set = os_ymm && avx && avx2 && fma && f16c && bmi2;
  f.avx512_set = f.avx2_set && os_zmm && avx512f && avx512cd && avx512dq && avx512bw && avx512vl &&
                 avx512vnni && avx512vbmi && avx512bf16 && gfni;
  return f;
}

#elif defined(__aarch64__)

CpuFeatures probe() {
  CpuFeatures f;
  f.neon = true;
#if defined(__linux__)
  f.neon_dotprod = (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
#endif
  return f;
}

#else

CpuFeatures probe() { return CpuFeatures{}; }

#endif

const CpuFeatures& cpu_features() {
  static const CpuFeatures features = probe();  // thread-safe one-time probe
  return features;
}

}  // namespace

bool cpu_can_run(Isa isa) {
  const CpuFeatures& f = cpu_features();
  switch (isa) {
    case Isa::kRef:
      return true;
    case Isa::kAvx2:
      return f.avx2_set;
    case Isa::kAvx512:
      return f.avx512_set;
    case Isa::kNeon:
      return f.neon;
  }
  return false;
}

bool cpu_has_neon_dotprod() { return cpu_features().neon_dotprod; }

}  // namespace mxlm::detail
