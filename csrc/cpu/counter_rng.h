// A counter-based random number generator: the uniform of token i of the draw at
// (seed, position) is a pure function of those three numbers, with no state to carry.
//
// It is built from splitmix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number
// generators", OOPSLA 2014): the k-th output of a stream started at `state` is
// mix64(state + k * kGolden), so any output is computed directly from its index.
//   stream(seed, position) = output position + 1 of the stream started at seed
//   bits(stream, i)        = output i + 1 of the stream started at stream
//   uniform                = the top 24 bits, as an odd multiple of 2^-24: in (0, 1), never 0 or 1
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

// (2 * (bits >> 41) + 1) / 2^24: exact in float32, in [2^-24, 1 - 2^-24].
inline float open_uniform(uint64_t bits) {
  return static_cast<float>(static_cast<int32_t>((bits >> 40) | 1u)) * 0x1p-24f;
}

// The uniform of token `token` in the draw whose stream is `stream`.
inline float token_uniform(uint64_t stream, int64_t token) {
  return open_uniform(splitmix64_at(stream, static_cast<uint64_t>(token) + 1));
}

}  // namespace vllm_cpu::rng
