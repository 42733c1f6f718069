// Assembles one F32Kernels table per ISA from the per-ISA translation units of
// kernels/simd/f32_kernels.cc (each compiled inside mxlm::kernels::<isa> with that ISA's flags).
#include "kernels/f32_ops.h"

#include "base/error.h"

namespace mxlm {
namespace kernels {
namespace ref {
void register_f32(F32Kernels* out);
void register_kv(F32Kernels* out);  // kernels/simd/kv_kernels.cc
}
#ifdef MXLM_HAVE_AVX2
namespace avx2 {
void register_f32(F32Kernels* out);
void register_kv(F32Kernels* out);  // kernels/simd/kv_kernels.cc
}
#endif
#ifdef MXLM_HAVE_AVX512
namespace avx512 {
void register_f32(F32Kernels* out);
void register_kv(F32Kernels* out);  // kernels/simd/kv_kernels.cc
}
#endif
#ifdef MXLM_HAVE_NEON
namespace neon {
void register_f32(F32Kernels* out);
void register_kv(F32Kernels* out);  // kernels/simd/kv_kernels.cc
}
#endif
}  // namespace kernels

namespace {

F32Kernels make_table(void (*reg)(F32Kernels*), void (*reg_kv)(F32Kernels*)) {
  F32Kernels t{};
  reg(&t);
  reg_kv(&t);
  return t;
}

}  // namespace

const F32Kernels& f32_kernels(Isa isa) {
  // Registering only fills function pointers (no CPU-specific instructions run), so building a
  // table is safe even for an ISA the CPU lacks; callers must still check isa_available.
  static const F32Kernels ref_table = make_table(&kernels::ref::register_f32, &kernels::ref::register_kv);
  switch (isa) {
    case Isa::kRef:
      return ref_table;
    case Isa::kAvx2: {
#ifdef MXLM_HAVE_AVX2
      static const F32Kernels table = make_table(&kernels::avx2::register_f32, &kernels::avx2::register_kv);
      return table;
#else
      break;
#endif
    }
    case Isa::kAvx512: {
#ifdef MXLM_HAVE_AVX512
      static const F32Kernels table = make_table(&kernels::avx512::register_f32, &kernels::avx512::register_kv);
      return table;
#else
      break;
#endif
    }
    case Isa::kNeon: {
#ifdef MXLM_HAVE_NEON
      static const F32Kernels table = make_table(&kernels::neon::register_f32, &kernels::neon::register_kv);
      return table;
#else
      break;
#endif
    }
  }
  // Not compiled in: a caller bug (the contract requires isa_available). Fail loudly.
  MXLM_ASSERT(!"f32_kernels: ISA not compiled into this build");
  return ref_table;
}

}  // namespace mxlm
