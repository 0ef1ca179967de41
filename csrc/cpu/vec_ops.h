// Small float32 vector helpers for the CPU attention kernels.
//
// Each helper has an AVX-512 version (used when the build targets AVX-512 and
// the head size is a compile-time multiple of 16) and a portable version that
// relies on `#pragma omp simd` so that compilers still vectorise it.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "isa.h"

namespace vllm_cpu::vec {

#if VLLM_CPU_AVX512
constexpr bool kHasAvx512 = true;
#else
constexpr bool kHasAvx512 = false;
#endif

// True when the AVX-512 path can handle rows of kHeadSize floats.
template <int kHeadSize>
constexpr bool use_avx512_rows() {
  return kHasAvx512 && kHeadSize > 0 && kHeadSize % 16 == 0;
}

#if VLLM_CPU_AVX512

constexpr int kLanes = 16;

// exp(x) for 16 lanes: x = n * ln2 + r with |r| <= ln2 / 2, exp(r) by its
// degree-7 Taylor polynomial (relative error below 1e-7), then scaled by 2^n.
inline __m512 exp_avx512(__m512 x) {
  const __m512 log2e = _mm512_set1_ps(1.44269504088896341f);
  const __m512 ln2_hi = _mm512_set1_ps(0.693359375f);
  const __m512 ln2_lo = _mm512_set1_ps(-2.12194440e-4f);
  x = _mm512_max_ps(x, _mm512_set1_ps(-104.0f));  // exp underflows to 0 anyway
  x = _mm512_min_ps(x, _mm512_set1_ps(88.7f));    // keep below FLT_MAX
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, log2e),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, ln2_hi, x);
  r = _mm512_fnmadd_ps(n, ln2_lo, r);
  __m512 poly = _mm512_set1_ps(1.0f / 5040.0f);
  poly = _mm512_fmadd_ps(poly, r, _mm512_set1_ps(1.0f / 720.0f));
  poly = _mm512_fmadd_ps(poly, r, _mm512_set1_ps(1.0f / 120.0f));
  poly = _mm512_fmadd_ps(poly, r, _mm512_set1_ps(1.0f / 24.0f));
  poly = _mm512_fmadd_ps(poly, r, _mm512_set1_ps(1.0f / 6.0f));
  poly = _mm512_fmadd_ps(poly, r, _mm512_set1_ps(0.5f));
  poly = _mm512_fmadd_ps(poly, r, _mm512_set1_ps(1.0f));
  poly = _mm512_fmadd_ps(poly, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(poly, n);
}

// Mask selecting the first `count` lanes (count in [0, 16]).
inline __mmask16 first_lanes(int64_t count) {
  return count >= kLanes ? static_cast<__mmask16>(0xFFFF)
                         : static_cast<__mmask16>((1u << count) - 1u);
}

#endif  // VLLM_CPU_AVX512

// scores[t] = dot(query, rows + t * row_stride) for t < num_rows.
template <int kHeadSize>
inline void dot_rows(const float* query, const float* rows, int64_t row_stride,
                     int64_t num_rows, int64_t head_size, float* scores) {
#if VLLM_CPU_AVX512
  if constexpr (use_avx512_rows<kHeadSize>()) {
    constexpr int kChunks = kHeadSize / kLanes;
    __m512 query_chunks[kChunks];
    for (int c = 0; c < kChunks; ++c) query_chunks[c] = _mm512_loadu_ps(query + c * kLanes);
    for (int64_t t = 0; t < num_rows; ++t) {
      const float* row = rows + t * row_stride;
      __m512 sum = _mm512_mul_ps(query_chunks[0], _mm512_loadu_ps(row));
      for (int c = 1; c < kChunks; ++c) {
        sum = _mm512_fmadd_ps(query_chunks[c], _mm512_loadu_ps(row + c * kLanes), sum);
      }
      scores[t] = _mm512_reduce_add_ps(sum);
    }
    return;
  }
#endif
  const int64_t size = kHeadSize > 0 ? kHeadSize : head_size;
  for (int64_t t = 0; t < num_rows; ++t) {
    const float* row = rows + t * row_stride;
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t d = 0; d < size; ++d) sum += query[d] * row[d];
    scores[t] = sum;
  }
}

// acc += sum over t < num_rows of weights[t] * (rows + t * row_stride).
template <int kHeadSize>
inline void accumulate_weighted_rows(const float* rows, int64_t row_stride,
                                     const float* weights, int64_t num_rows,
                                     int64_t head_size, float* acc) {
#if VLLM_CPU_AVX512
  if constexpr (use_avx512_rows<kHeadSize>()) {
    constexpr int kChunks = kHeadSize / kLanes;
    __m512 acc_chunks[kChunks];
    for (int c = 0; c < kChunks; ++c) acc_chunks[c] = _mm512_loadu_ps(acc + c * kLanes);
    for (int64_t t = 0; t < num_rows; ++t) {
      const float* row = rows + t * row_stride;
      const __m512 weight = _mm512_set1_ps(weights[t]);
      for (int c = 0; c < kChunks; ++c) {
        acc_chunks[c] = _mm512_fmadd_ps(weight, _mm512_loadu_ps(row + c * kLanes), acc_chunks[c]);
      }
    }
    for (int c = 0; c < kChunks; ++c) _mm512_storeu_ps(acc + c * kLanes, acc_chunks[c]);
    return;
  }
#endif
  const int64_t size = kHeadSize > 0 ? kHeadSize : head_size;
  for (int64_t t = 0; t < num_rows; ++t) {
    const float* row = rows + t * row_stride;
    const float weight = weights[t];
#pragma omp simd
    for (int64_t d = 0; d < size; ++d) acc[d] += weight * row[d];
  }
}

// Largest of values[0..n); -inf when n == 0.
inline float max_of(const float* values, int64_t n) {
  float result = -std::numeric_limits<float>::infinity();
#if VLLM_CPU_AVX512
  __m512 best = _mm512_set1_ps(result);
  for (int64_t i = 0; i < n; i += kLanes) {
    const __mmask16 mask = first_lanes(n - i);
    best = _mm512_mask_max_ps(best, mask, best, _mm512_maskz_loadu_ps(mask, values + i));
  }
  result = _mm512_reduce_max_ps(best);
#else
  for (int64_t i = 0; i < n; ++i) result = std::max(result, values[i]);
#endif
  return result;
}

// values[i] = exp(values[i] - max_value) in place; returns their sum.
inline float exp_minus_max_inplace(float* values, int64_t n, float max_value) {
#if VLLM_CPU_AVX512
  const __m512 shift = _mm512_set1_ps(max_value);
  __m512 total = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += kLanes) {
    const __mmask16 mask = first_lanes(n - i);
    const __m512 x = _mm512_maskz_loadu_ps(mask, values + i);
    const __m512 e = exp_avx512(_mm512_sub_ps(x, shift));
    _mm512_mask_storeu_ps(values + i, mask, e);
    total = _mm512_mask_add_ps(total, mask, total, e);
  }
  return _mm512_reduce_add_ps(total);
#else
  float total = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    values[i] = std::exp(values[i] - max_value);
    total += values[i];
  }
  return total;
#endif
}

}  // namespace vllm_cpu::vec
