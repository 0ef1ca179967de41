// GGUF block-quantised weight formats (llama.cpp's ggml types) and their
// dequantisation to float32, 32 weights per block.
//
//   Q4_1 (ggml type 3), 20 bytes: fp16 d, fp16 m, 16 bytes of 4-bit q;
//        weight j = d * q_j + m, q_j = low nibble of byte j (j < 16),
//        high nibble of byte j - 16 (j >= 16).
//   Q8_0 (ggml type 8), 34 bytes: fp16 d, 32 int8 q; weight j = d * q_j.
//
// d * q is exact in float32 (an 11-bit mantissa times at most 8 bits), so
// fma(q, d, m) rounds once, as gguf-py's (d * q) + m does: both give the same
// float32 weights as the dequantised checkpoint.
#pragma once

#include <c10/util/Half.h>

#include <cstdint>
#include <cstring>

#include "isa.h"

namespace vllm_cpu::gguf {

constexpr int64_t kBlockSize = 32;
constexpr int64_t kTypeQ4_1 = 3;
constexpr int64_t kTypeQ8_0 = 8;

inline float half_bits_to_float(const uint8_t* bytes) {
  uint16_t bits;
  std::memcpy(&bits, bytes, sizeof(bits));
  return static_cast<float>(c10::Half(bits, c10::Half::from_bits()));
}

struct Q4_1 {
  static constexpr int64_t kBytes = 20;

  static void dequantize(const uint8_t* block, float* out) {
    const float d = half_bits_to_float(block);
    const float m = half_bits_to_float(block + 2);
    const uint8_t* q = block + 4;
    for (int j = 0; j < 16; ++j) {
      out[j] = static_cast<float>(q[j] & 0x0F) * d + m;
      out[j + 16] = static_cast<float>(q[j] >> 4) * d + m;
    }
  }

#if VLLM_CPU_AVX512
  // Weights 0-15 into lo, 16-31 into hi.
  static inline void dequantize(const uint8_t* block, __m512& lo, __m512& hi) {
    const __m512 d = _mm512_set1_ps(half_bits_to_float(block));
    const __m512 m = _mm512_set1_ps(half_bits_to_float(block + 2));
    const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(block + 4));
    const __m128i nibble = _mm_set1_epi8(0x0F);
    const __m512i q_lo = _mm512_cvtepu8_epi32(_mm_and_si128(q, nibble));
    const __m512i q_hi = _mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(q, 4), nibble));
    lo = _mm512_fmadd_ps(_mm512_cvtepi32_ps(q_lo), d, m);
    hi = _mm512_fmadd_ps(_mm512_cvtepi32_ps(q_hi), d, m);
  }
#endif
};

struct Q8_0 {
  static constexpr int64_t kBytes = 34;

  static void dequantize(const uint8_t* block, float* out) {
    const float d = half_bits_to_float(block);
    const int8_t* q = reinterpret_cast<const int8_t*>(block + 2);
    for (int j = 0; j < 32; ++j) out[j] = static_cast<float>(q[j]) * d;
  }

#if VLLM_CPU_AVX512
  static inline void dequantize(const uint8_t* block, __m512& lo, __m512& hi) {
    const __m512 d = _mm512_set1_ps(half_bits_to_float(block));
    const __m128i q_lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(block + 2));
    const __m128i q_hi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(block + 18));
    lo = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q_lo)), d);
    hi = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q_hi)), d);
  }
#endif
};

}  // namespace vllm_cpu::gguf
