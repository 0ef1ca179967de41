// Random sampling by an exponential race (Gumbel-max) over counter-based noise: one token
// per row of float32 logits.
//
//   key_i = logit_i + g_i,   g_i = -log(-log(u_i)),   u_i = token i's uniform (counter_rng.h)
//   token = the lowest index among the largest keys
// -log(u_i) is Exp(1), so the race picks token i with probability softmax(logits)_i. Each
// key depends on its own logit and noise only, so a last-bit change of a logit moves the
// outcome only when two keys are that close; there is no cumulative sum whose rounding
// shifts every boundary.
//
// Pruning: u lies in [2^-24, 1 - 2^-24], so every g lies in [kNoiseMin, kNoiseMax]. The
// largest logit m has a key of at least fl(m + kNoiseMin); a token with
// fl(logit + kNoiseMax) below that cannot win (rounded addition is monotonic), so its noise
// is never computed and the result is that of the full race. Filtered (-inf) tokens and
// the far tail then cost one comparison each.
//
// Work is split over rows and, when there are fewer rows than threads, over slices of the
// vocabulary, whose winners are compared in order afterwards.
#include "ops.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "counter_rng.h"
#include "vec_ops.h"

namespace vllm_cpu {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
// -log(-log(1 - 2^-24)) = 16.6355 and -log(-log(2^-24)) = -2.8115, with room for the
// error of log_positive.
constexpr float kNoiseMax = 16.7f;
constexpr float kNoiseMin = -2.9f;
constexpr int64_t kBlock = 512;            // tokens whose candidates get noise together
constexpr int64_t kMinSliceTokens = 4096;  // the smallest vocabulary slice worth a thread

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

// The largest of z[0..n), NaN ignored (a NaN result is handled by the caller).
float largest(const float* z, int64_t n) {
  float m = -kInf;
#pragma omp simd reduction(max : m)
  for (int64_t i = 0; i < n; ++i) m = std::max(m, z[i]);
  return m;
}

// Offsets i < count with z[i] + kNoiseMax >= floor, in increasing order; returns how many.
int64_t find_candidates(const float* z, int64_t count, float floor, int32_t* offsets) {
  int64_t n = 0;
  for (int64_t i = 0; i < count; ++i) {
    offsets[n] = static_cast<int32_t>(i);
    n += z[i] + kNoiseMax >= floor;
  }
  return n;
}

// noise[j] = the Gumbel noise of token start + offsets[j].
void draw_noise(uint64_t stream, int64_t start, const int32_t* offsets, int64_t n,
                float* noise) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    noise[j] = gumbel_noise(rng::token_uniform(stream, start + offsets[j]));
  }
}

struct Winner {
  float key = -kInf;
  int64_t token = -1;  // none yet: no key above -inf
};

// The race among tokens [begin, end) of one row of logits.
Winner race_slice(const float* logits, int64_t begin, int64_t end, uint64_t stream) {
  const float top = largest(logits + begin, end - begin);
  const float floor = std::isnan(top) ? -kInf : top + kNoiseMin;  // NaN: no pruning
  Winner best;
  int32_t offsets[kBlock];
  float noise[kBlock];
  for (int64_t start = begin; start < end; start += kBlock) {
    const int64_t n = find_candidates(logits + start, std::min(kBlock, end - start), floor,
                                      offsets);
    draw_noise(stream, start, offsets, n, noise);
    for (int64_t j = 0; j < n; ++j) {
      const float key = logits[start + offsets[j]] + noise[j];
      if (key > best.key) best = {key, start + offsets[j]};  // NaN never wins
    }
  }
  return best;
}

// Vocabulary slices per row: enough work items for every thread, none tiny.
int64_t slices_per_row(int64_t rows, int64_t vocab) {
  const int64_t threads = at::get_num_threads();
  if (rows >= threads) return 1;
  const int64_t wanted = (threads + rows - 1) / rows;
  return std::max<int64_t>(1, std::min(wanted, vocab / kMinSliceTokens));
}

void check_row_values(const torch::Tensor& t, const char* name, int64_t rows) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == torch::kInt64 && t.dim() == 1 &&
                  t.size(0) == rows && t.is_contiguous(),
              "exponential_race_sample: ", name, " must be a contiguous int64 CPU tensor (",
              rows, ",), got ", t.scalar_type(), " ", t.sizes());
}

}  // namespace
}  // namespace vllm_cpu

void exponential_race_sample(torch::Tensor& out, const torch::Tensor& logits,
                             const torch::Tensor& seeds, const torch::Tensor& positions) {
  using namespace vllm_cpu;
  TORCH_CHECK(logits.device().is_cpu() && logits.scalar_type() == torch::kFloat32 &&
                  logits.dim() == 2 && logits.size(1) > 0 && logits.stride(1) == 1,
              "exponential_race_sample: logits must be a float32 CPU tensor (rows, vocab) "
              "with vocab > 0 and a contiguous last dim, got ", logits.scalar_type(), " ",
              logits.sizes());
  const int64_t rows = logits.size(0);
  const int64_t vocab = logits.size(1);
  check_row_values(out, "out", rows);
  check_row_values(seeds, "seeds", rows);
  check_row_values(positions, "positions", rows);

  const float* base = logits.data_ptr<float>();
  const int64_t row_stride = logits.stride(0);
  const int64_t* seed = seeds.data_ptr<int64_t>();
  const int64_t* position = positions.data_ptr<int64_t>();
  const int64_t slices = slices_per_row(rows, vocab);
  std::vector<Winner> winners(rows * slices);
  at::parallel_for(0, rows * slices, /*grain_size=*/1, [&](int64_t first, int64_t last) {
    for (int64_t item = first; item < last; ++item) {
      const int64_t row = item / slices;
      const int64_t slice = item % slices;
      winners[item] = race_slice(base + row * row_stride, vocab * slice / slices,
                                 vocab * (slice + 1) / slices,
                                 rng::token_stream(seed[row], position[row]));
    }
  });

  int64_t* tokens = out.data_ptr<int64_t>();
  for (int64_t row = 0; row < rows; ++row) {
    Winner best;
    for (int64_t slice = 0; slice < slices; ++slice) {  // in order: ties keep the lowest index
      const Winner& candidate = winners[row * slices + slice];
      if (candidate.key > best.key) best = candidate;
    }
    tokens[row] = best.token < 0 ? 0 : best.token;
  }
}
