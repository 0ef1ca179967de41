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

namespace vllm_cpu::gguf {

constexpr int64_t kBlockSize = 32;
constexpr int64_t kTypeQ4_1 = 3;
constexpr int64_t kTypeQ8_0 = 8;

inline float half_bits_to_float(const uint8_t* bytes) {
  uint16_t bits;
  std::memcpy(&bits, bytes, sizeof(bits));
  return static_cast<float>(c10::Half(bits, c10::Half::from_bits()));
}

// Per format: dequantize() writes a block's 32 weights; Block<V> is a block of one
// weight row decoded for the linear kernels over a register type V that widens bytes
// (lanes.h): weights(v) is weights v * V::kLanes .. + kLanes - 1 in registers, the
// same values dequantize() writes.
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

  template <typename V>
  struct Block {
    V d, m;
    const uint8_t* q;

    Block() = default;
    explicit Block(const uint8_t* block)
        : d(V::splat(half_bits_to_float(block))),
          m(V::splat(half_bits_to_float(block + 2))),
          q(block + 4) {}

    V weights(int v) const {
      const int first = v * V::kLanes;  // weights 0-15: low nibbles, 16-31: high ones
      return fma(V::from_nibbles(q + first % 16, first >= 16), d, m);
    }
  };
};

struct Q8_0 {
  static constexpr int64_t kBytes = 34;

  static void dequantize(const uint8_t* block, float* out) {
    const float d = half_bits_to_float(block);
    const int8_t* q = reinterpret_cast<const int8_t*>(block + 2);
    for (int j = 0; j < 32; ++j) out[j] = static_cast<float>(q[j]) * d;
  }

  template <typename V>
  struct Block {
    V d;
    const int8_t* q;

    Block() = default;
    explicit Block(const uint8_t* block)
        : d(V::splat(half_bits_to_float(block))),
          q(reinterpret_cast<const int8_t*>(block + 2)) {}

    V weights(int v) const { return V::from_int8(q + v * V::kLanes) * d; }
  };
};

}  // namespace vllm_cpu::gguf
