// A counter-based random number generator: the uniform of token i of the draw at
// (seed, position) is a pure function of those three numbers, with no state to carry.
//
// It is built from splitmix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number
// generators", OOPSLA 2014): the k-th output of a stream started at `state` is
// mix64(state + k * kGolden), so any output is computed directly from its index.
//   stream(seed, position) = output position + 1 of the stream started at seed
//   word(stream, k)        = output k + 1 of the stream started at stream
//   token 2k, 2k + 1       = the top 24 bits of word k's high, low 32-bit half, as an odd
//                            multiple of 2^-24: a uniform in (0, 1), never 0 or 1
// All arithmetic is on 64-bit words modulo 2^64 (seeds and positions as two's complement),
// so the PyTorch version (vllm/sample/counter_rng.py) gives the same bits from int64 tensors.
#pragma once

#include <cstdint>

namespace vllm_cpu::rng {

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;  // 2^64 / golden ratio, splitmix64's step
constexpr uint64_t kMix1 = 0xBF58476D1CE4E5B9ull;
constexpr uint64_t kMix2 = 0x94D049BB133111EBull;

// splitmix64's output function: a bijection of 64-bit words, every input bit reaching every
// output bit.
inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * kMix1;
  z = (z ^ (z >> 27)) * kMix2;
  return z ^ (z >> 31);
}

// Output k (k >= 1) of the splitmix64 stream started at `state`.
inline uint64_t splitmix64_at(uint64_t state, uint64_t k) { return mix64(state + k * kGolden); }

// The stream whose outputs are the token uniforms of one draw.
inline uint64_t token_stream(int64_t seed, int64_t position) {
  return splitmix64_at(static_cast<uint64_t>(seed), static_cast<uint64_t>(position) + 1);
}

// Word k of a draw's stream: the bits of tokens 2k and 2k + 1.
inline uint64_t pair_word(uint64_t stream, int64_t pair) {
  return splitmix64_at(stream, static_cast<uint64_t>(pair) + 1);
}

// (2 * (half >> 9) + 1) / 2^24: exact in float32, in [2^-24, 1 - 2^-24].
inline float half_uniform(uint32_t half) {
  return static_cast<float>(static_cast<int32_t>((half >> 8) | 1u)) * 0x1p-24f;
}

inline float high_uniform(uint64_t word) { return half_uniform(static_cast<uint32_t>(word >> 32)); }
inline float low_uniform(uint64_t word) { return half_uniform(static_cast<uint32_t>(word)); }

// The uniform of token `token` (>= 0) in the draw whose stream is `stream`.
inline float token_uniform(uint64_t stream, int64_t token) {
  const uint64_t index = static_cast<uint64_t>(token);
  const uint64_t word = splitmix64_at(stream, (index >> 1) + 1);
  return index & 1 ? low_uniform(word) : high_uniform(word);
}

}  // namespace vllm_cpu::rng
