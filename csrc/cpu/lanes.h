// The float32 register type the linear kernels are written over, one name in every build.
//
// SIMD builds use vec::Vec (AVX-512: 16 lanes, AVX2: 8, NEON: 4), which also widens
// GGUF's quants to floats in registers (kConvertsBytes). The portable build gets
// `PlainLanes`, four floats with the same arithmetic in plain C++ that the compiler
// vectorises as far as the target allows (four measured faster than eight on SSE2).
// Every operation works lane by lane, in an order fixed by the code, so a sum built from
// them rounds the same way wherever and however often it is computed.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "isa.h"
#include "vec_ops.h"

namespace vllm_cpu::lanes {

#if VLLM_CPU_AVX512 || VLLM_CPU_AVX2 || VLLM_CPU_NEON

using Lanes = vec::Vec;
using vec::fma;
using vec::reduce_add;
constexpr bool kConvertsBytes = true;  // Lanes::from_nibbles, Lanes::from_int8

#else

// a * b + c, rounded once where the target has a fused multiply-add (said explicitly:
// GCC may fuse a plain a * b + c there, but need not everywhere alike) and twice where
// it has none (nothing can be fused there).
inline float fused_multiply_add(float a, float b, float c) {
#if defined(__FP_FAST_FMAF)
  return std::fmaf(a, b, c);
#else
  return a * b + c;
#endif
}

struct PlainLanes {
  static constexpr int kLanes = 4;
  float v[kLanes];

  static PlainLanes load(const float* p) {
    PlainLanes r;
    std::memcpy(r.v, p, sizeof(r.v));
    return r;
  }
  static PlainLanes splat(float x) {
    PlainLanes r;
    for (int l = 0; l < kLanes; ++l) r.v[l] = x;
    return r;
  }
  void store(float* p) const { std::memcpy(p, v, sizeof(v)); }
  // The first `count` (< kLanes) floats of p, `fill` in the other lanes.
  static PlainLanes load_first(const float* p, int64_t count, float fill) {
    PlainLanes r = splat(fill);
    std::memcpy(r.v, p, count * sizeof(float));
    return r;
  }
};

inline PlainLanes fma(PlainLanes a, PlainLanes b, PlainLanes c) {
  PlainLanes r;
  for (int l = 0; l < PlainLanes::kLanes; ++l) r.v[l] = fused_multiply_add(a.v[l], b.v[l], c.v[l]);
  return r;
}

// In a fixed order: (lane 0 + lane 2) + (lane 1 + lane 3).
inline float reduce_add(PlainLanes a) { return (a.v[0] + a.v[2]) + (a.v[1] + a.v[3]); }

using Lanes = PlainLanes;
constexpr bool kConvertsBytes = false;  // GGUF blocks are dequantised through memory

#endif

}  // namespace vllm_cpu::lanes
