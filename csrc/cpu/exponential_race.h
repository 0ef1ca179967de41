// The exponential race (Gumbel-max) over counter-based noise for one slice of a row of
// float32 logits: the core of the exponential_race_sample op (sampling.cpp), free of torch.
//
//   key_i = logit_i + g_i,   g_i = -log(-log(u_i)),   u_i = token i's uniform (counter_rng.h)
//   token = the lowest index among the largest keys
// -log(u_i) is Exp(1), so the race picks token i with probability softmax(logits)_i. Each
// key depends on its own logit and noise only, so a last-bit change of a logit moves the
// outcome only when two keys are that close; there is no cumulative sum whose rounding
// shifts every boundary.
//
// Pruning: u lies in [2^-24, 1 - 2^-24], so every g lies in [kNoiseMin, kNoiseMax]. The
// largest logit m has a key of at least fl(m + kNoiseMin), and the winner's key is at least
// the best key found so far; a token with fl(logit + kNoiseMax) below either floor cannot
// win (rounded addition is monotonic), so its noise need not be computed and the result is
// that of the full race. Filtered (-inf) tokens and the far tail then cost a comparison.
//
// Plain C++ throughout: the loops are written for the compiler to vectorise in every
// build, and no result depends on how a vector max treats NaN.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "counter_rng.h"
#include "vec_ops.h"

namespace vllm_cpu::race {

constexpr float kInf = std::numeric_limits<float>::infinity();
// -log(-log(1 - 2^-24)) = 16.6355 and -log(-log(2^-24)) = -2.8115, with room for the
// error of log_positive.
constexpr float kNoiseMax = 16.7f;
constexpr float kNoiseMin = -2.9f;
constexpr int64_t kBlock = 512;            // tokens whose candidates get noise together
static_assert(kBlock % 2 == 0, "blocks must start on a word (two tokens)");
constexpr int64_t kChunk = 32;             // tokens counted at once when listing candidates
constexpr int64_t kDenseShare = 4;         // blocks with >= 1/4 candidates are raced whole
constexpr int64_t kMaxLanes = 32;          // independent running maxima in largest()

// log(x) for a positive normal float, within 4 ulp. x = 2^e m with m in [sqrt(1/2),
// sqrt(2)); log(m) = 2 atanh(s) with s = (m - 1) / (m + 1), |s| < 0.1716, summed to s^9
// (the rest is below 2e-9 relative). Plain C++, so the loops calling it vectorise in
// every build.
inline float log_positive(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  const int32_t exponent = static_cast<int32_t>(bits - 0x3F3504F3u) >> 23;  // sqrt(1/2)
  const uint32_t mantissa_bits = bits - (static_cast<uint32_t>(exponent) << 23);
  float m;
  std::memcpy(&m, &mantissa_bits, sizeof(m));
  const float f = m - 1.0f;  // exact
  const float s = f / (2.0f + f);
  const float s2 = s * s;
  float series = 2.0f / 9.0f;
  series = series * s2 + 2.0f / 7.0f;
  series = series * s2 + 2.0f / 5.0f;
  series = series * s2 + 2.0f / 3.0f;
  series = series * s2 + 2.0f;
  const float e = static_cast<float>(exponent);
  return e * vec::kLn2Hi + (s * series + e * vec::kLn2Lo);
}

// -log(-log(u)) for u in (0, 1): -log(u) is Exp(1) and this its negated log (Gumbel).
inline float gumbel_noise(float u) { return -log_positive(-log_positive(u)); }

// The largest of z[0..n). With NaN among them the result is NaN or a number no larger
// than the largest (vector max instructions differ); race_slice allows for both. Written
// with kMaxLanes independent maxima, which the compiler turns into vector registers.
inline float largest(const float* z, int64_t n) {
  float lanes[kMaxLanes];
  std::fill(lanes, lanes + kMaxLanes, -kInf);
  const int64_t whole = n / kMaxLanes * kMaxLanes;
  for (int64_t i = 0; i < whole; i += kMaxLanes) {
    for (int64_t l = 0; l < kMaxLanes; ++l) lanes[l] = z[i + l] > lanes[l] ? z[i + l] : lanes[l];
  }
  float m = -kInf;
  for (int64_t i = whole; i < n; ++i) m = z[i] > m ? z[i] : m;
  for (int64_t l = 0; l < kMaxLanes; ++l) m = lanes[l] > m ? lanes[l] : m;
  return m;
}

// How many of z[0..n) may win against a best key of at least `floor`.
inline int32_t count_candidates(const float* z, int64_t n, float floor) {
  int32_t count = 0;
#pragma omp simd reduction(+ : count)
  for (int64_t i = 0; i < n; ++i) count += z[i] + kNoiseMax >= floor;
  return count;
}

// The offsets i < n of those candidates, in increasing order; returns how many. Chunks
// without one are passed over after a vectorised count.
inline int64_t find_candidates(const float* z, int64_t n, float floor, int32_t* offsets) {
  int64_t found = 0;
  for (int64_t chunk = 0; chunk < n; chunk += kChunk) {
    const int64_t size = std::min(kChunk, n - chunk);
    if (count_candidates(z + chunk, size, floor) == 0) continue;
    for (int64_t i = chunk; i < chunk + size; ++i) {
      offsets[found] = static_cast<int32_t>(i);
      found += z[i] + kNoiseMax >= floor;
    }
  }
  return found;
}

// keys[j] = z[j] + the noise of token start + j for j < n, -inf for NaN logits; start is
// even and keys has room for n rounded up to even. (Two loops: each vectorises better
// alone; the first takes two tokens per word.)
inline void race_keys_dense(const float* z, uint64_t stream, int64_t start, int64_t n,
                            float* keys) {
#pragma omp simd
  for (int64_t k = 0; k < (n + 1) / 2; ++k) {
    const uint64_t word = rng::pair_word(stream, start / 2 + k);
    keys[2 * k] = rng::high_uniform(word);
    keys[2 * k + 1] = rng::low_uniform(word);
  }
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const float key = z[j] + gumbel_noise(keys[j]);
    keys[j] = std::isnan(key) ? -kInf : key;
  }
}

// keys[j] = z[offsets[j]] + the noise of token start + offsets[j], for j < n.
inline void race_keys_sparse(const float* z, uint64_t stream, int64_t start,
                             const int32_t* offsets, int64_t n, float* keys) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) keys[j] = rng::token_uniform(stream, start + offsets[j]);
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) keys[j] = z[offsets[j]] + gumbel_noise(keys[j]);
}

struct Winner {
  float key = -kInf;
  int64_t token = -1;  // none yet: no key above -inf
};

// Takes the first of keys[0..n) (none NaN) when it beats `best`. offsets == nullptr: key j
// is token start + j.
inline void update_winner(const float* keys, int64_t n, int64_t start,
                          const int32_t* offsets, Winner& best) {
  const float top = largest(keys, n);
  if (!(top > best.key)) return;
  const int64_t j = std::find(keys, keys + n, top) - keys;
  best = {top, start + (offsets ? offsets[j] : j)};
}

// The race among tokens [begin, end) (begin even) of one row of logits, a block at a
// time: blocks without candidates cost two vectorised passes, blocks with few get their
// list, the others are raced whole (keys of tokens that cannot win do no harm). The best
// key so far, once above the floor, prunes the blocks after it.
inline Winner race_slice(const float* logits, int64_t begin, int64_t end, uint64_t stream) {
  const float top = largest(logits + begin, end - begin);
  float floor = std::isnan(top) ? -kInf : top + kNoiseMin;  // NaN: no pruning to start
  Winner best;
  int32_t offsets[kBlock];
  float keys[kBlock];
  for (int64_t start = begin; start < end; start += kBlock) {
    const float* z = logits + start;
    const int64_t size = std::min(kBlock, end - start);
    const int64_t count = count_candidates(z, size, floor);
    if (count * kDenseShare >= size) {
      race_keys_dense(z, stream, start, size, keys);
      update_winner(keys, size, start, nullptr, best);
    } else if (count > 0) {
      const int64_t n = find_candidates(z, size, floor, offsets);
      race_keys_sparse(z, stream, start, offsets, n, keys);
      update_winner(keys, n, start, offsets, best);
    }
    floor = std::max(floor, best.key);
  }
  return best;
}

}  // namespace vllm_cpu::race
