// Per-CPU builds of a hot loop. MHC_CPU_AVX2 marks the AVX2+FMA twin of a function whose body
// is an always-inlined (MHC_CPU_INLINE) template; has_avx2() picks one at run time. The source
// fixes the arithmetic order; only the instructions differ.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__)
#define MHC_CPU_AVX2 __attribute__((target("avx2,fma")))
#else
#define MHC_CPU_AVX2
#endif
#define MHC_CPU_INLINE inline __attribute__((always_inline))

namespace mhc::cpu {

inline bool has_avx2() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
#else
  return false;
#endif
}

}  // namespace mhc::cpu
