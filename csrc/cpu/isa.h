// The instruction set this build of the kernels targets, as three 0/1 macros
// (at most one is 1). build_ext.py compiles every source once per ISA with its
// -march flags; VLLM_CPU_PORTABLE turns every intrinsics path off, leaving the
// plain C++ that the compiler vectorises alone.
#pragma once

#if !defined(VLLM_CPU_PORTABLE) && defined(__AVX512F__) && defined(__AVX512BW__) && \
    defined(__AVX512VL__) && defined(__AVX512DQ__)
#define VLLM_CPU_AVX512 1
#else
#define VLLM_CPU_AVX512 0
#endif

#if !defined(VLLM_CPU_PORTABLE) && !VLLM_CPU_AVX512 && defined(__AVX2__) && defined(__FMA__)
#define VLLM_CPU_AVX2 1
#else
#define VLLM_CPU_AVX2 0
#endif

#if !defined(VLLM_CPU_PORTABLE) && defined(__aarch64__) && defined(__ARM_NEON)
#define VLLM_CPU_NEON 1
#else
#define VLLM_CPU_NEON 0
#endif

#if VLLM_CPU_AVX512 || VLLM_CPU_AVX2
#include <immintrin.h>
#endif
#if VLLM_CPU_NEON
#include <arm_neon.h>
#endif

#ifndef VLLM_CPU_OPS_NAMESPACE
#define VLLM_CPU_OPS_NAMESPACE _C
#endif
