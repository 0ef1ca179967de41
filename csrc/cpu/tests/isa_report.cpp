// The ISA macros of isa.h as one kernel variant's compiler flags set them: compiled with
// exactly the flags of that variant's kernels, so kernel_harness.cpp can check them.
#include "isa.h"

#define VLLM_HARNESS_STR(x) #x
#define VLLM_HARNESS_VALUE(x) VLLM_HARNESS_STR(x)

// 0/1 per macro, read by the harness to check the variant is what its name says.
int harness_isa_avx512() { return VLLM_CPU_AVX512; }
int harness_isa_avx2() { return VLLM_CPU_AVX2; }
int harness_isa_neon() { return VLLM_CPU_NEON; }

// The compiler's own view, printed beside the macros (an empty value: not defined).
const char* harness_isa_macros() {
  return "VLLM_CPU_NEON=" VLLM_HARNESS_VALUE(VLLM_CPU_NEON)
         " VLLM_CPU_AVX512=" VLLM_HARNESS_VALUE(VLLM_CPU_AVX512)
         " VLLM_CPU_AVX2=" VLLM_HARNESS_VALUE(VLLM_CPU_AVX2)
#ifdef VLLM_CPU_PORTABLE
         " VLLM_CPU_PORTABLE=defined"
#else
         " VLLM_CPU_PORTABLE=undefined"
#endif
#ifdef __ARM_NEON
         " __ARM_NEON=" VLLM_HARNESS_VALUE(__ARM_NEON)
#else
         " __ARM_NEON=undefined"
#endif
#ifdef __ARM_ARCH
         " __ARM_ARCH=" VLLM_HARNESS_VALUE(__ARM_ARCH)
#endif
         " ops_namespace=" VLLM_HARNESS_VALUE(VLLM_CPU_OPS_NAMESPACE);
}
