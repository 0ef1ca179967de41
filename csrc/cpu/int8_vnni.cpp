// The W8A8 GEMM of int8_linear.cpp with AVX-512 VNNI's vpdpbusd, for AVX-512 builds: the
// x86-64-v4 target lacks VNNI, so this file alone is compiled for it and int8_linear.cpp
// calls it only when the CPU says it has it (__builtin_cpu_supports).
//
// vpdpbusd multiplies uint8 by int8 and adds groups of four products to int32 lanes without
// saturating. x is stored as x + 128 (uint8, 0..255), so each sum is
// sum((x + 128) w) = sum(x w) + 128 sum(w); the tile takes 128 * w_sums[j] off again.
#include "isa.h"

#if VLLM_CPU_AVX512
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

#pragma GCC push_options
#pragma GCC target("avx512vnni")
#include "int8_tiles.h"

namespace vllm_cpu::int8 {
namespace {

struct Dpbusd512 {
  using X = uint8_t;
  using W = __m512i;
  using Acc = __m512i;
  static constexpr int64_t kStep = 64;
  static constexpr int32_t kXOffset = 128;
  static constexpr int kRows = 4;
  static constexpr int kSums = 24;  // of 32 zmm

  static X convert(int8_t v) { return static_cast<X>(v + 128); }
  static Acc zero() { return _mm512_setzero_si512(); }
  static W load_w(const int8_t* p) { return _mm512_loadu_si512(p); }
  static __m512i load_x(const X* p) { return _mm512_loadu_si512(p); }
  static Acc multiply_add(Acc acc, __m512i x, W w) { return _mm512_dpbusd_epi32(acc, x, w); }
  static int32_t total(Acc acc) { return _mm512_reduce_add_epi32(acc); }
};

}  // namespace

void run_vnni(const Problem& p) { run<Dpbusd512>(p); }

}  // namespace vllm_cpu::int8
#pragma GCC pop_options
#endif
