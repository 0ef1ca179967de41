// Float32 vector helpers for the CPU kernels: one register type per ISA, the helpers once.
//
// `Vec` is the build's widest float32 register (AVX-512: 16 lanes, AVX2: 8,
// NEON: 4) with the handful of operations the kernels need (the linear kernels
// also widen GGUF's 4- and 8-bit quants with it, see lanes.h). The helpers are
// written once against it and used when the head size is a compile-time
// multiple of Vec::kLanes; otherwise (and in the portable build) they run as
// plain loops that the compiler vectorises under `#pragma omp simd`.
//
// Cached rows may be float32 or bfloat16. bfloat16 is the upper half of a
// float32, so widening it is a 16-bit shift in registers (no BF16 instructions
// needed); every sum is accumulated in float32.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "isa.h"

namespace vllm_cpu::vec {

// bfloat16 as stored in a tensor: the 16 high bits of a float32.
struct bf16 {
  uint16_t bits;
};
static_assert(sizeof(bf16) == 2, "bf16 must match the tensor element size");

inline float to_float(float x) { return x; }

inline float to_float(bf16 x) {
  const uint32_t bits = static_cast<uint32_t>(x.bits) << 16;
  float result;
  std::memcpy(&result, &bits, sizeof(result));
  return result;
}

// float32 -> bfloat16, rounding to nearest even (what torch's .to(bfloat16) does).
inline bf16 to_bf16(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  if (std::isnan(x)) return bf16{static_cast<uint16_t>((bits >> 16) | 0x40u)};  // stay NaN
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  return bf16{static_cast<uint16_t>(bits >> 16)};
}

// exp(x) = 2^n * exp(r), n = round(x / ln2), r = x - n ln2 in [-ln2/2, ln2/2]
// (ln2 split in a high part exact in float and a low correction). exp(r) is
// its degree-7 Taylor polynomial: the remainder r^8 / 8! < 6e-9, below float
// precision. Inputs are clamped to [-104, 88.7]: exp underflows to 0 below
// and stays under FLT_MAX above.
constexpr float kExpMin = -104.0f;
constexpr float kExpMax = 88.7f;
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693359375f;
constexpr float kLn2Lo = -2.12194440e-4f;
constexpr float kExpTaylor[8] = {1.0f / 5040.0f, 1.0f / 720.0f, 1.0f / 120.0f, 1.0f / 24.0f,
                                 1.0f / 6.0f,    0.5f,          1.0f,          1.0f};

#if VLLM_CPU_AVX512

struct Vec {
  static constexpr int kLanes = 16;
  __m512 v;

  static Vec load(const float* p) { return {_mm512_loadu_ps(p)}; }
  static Vec load(const bf16* p) {
    const __m512i halves =
        _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return {_mm512_castsi512_ps(_mm512_slli_epi32(halves, 16))};
  }
  static Vec splat(float x) { return {_mm512_set1_ps(x)}; }
  void store(float* p) const { _mm512_storeu_ps(p, v); }

  static __mmask16 first_lanes(int64_t count) {
    return count >= kLanes ? static_cast<__mmask16>(0xFFFF)
                           : static_cast<__mmask16>((1u << count) - 1u);
  }
  // The first `count` (< kLanes) floats of p, `fill` in the other lanes.
  static Vec load_first(const float* p, int64_t count, float fill) {
    return {_mm512_mask_loadu_ps(_mm512_set1_ps(fill), first_lanes(count), p)};
  }
  void store_first(float* p, int64_t count) const {
    _mm512_mask_storeu_ps(p, first_lanes(count), v);
  }
  // kLanes bytes as floats: their low 4 bits, or their high 4 bits when `high`.
  static Vec from_nibbles(const uint8_t* p, bool high) {
    __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    if (high) bytes = _mm_srli_epi16(bytes, 4);
    bytes = _mm_and_si128(bytes, _mm_set1_epi8(0x0F));
    return {_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(bytes))};
  }
  // kLanes signed bytes as floats.
  static Vec from_int8(const int8_t* p) {
    const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return {_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes))};
  }
};

inline Vec operator+(Vec a, Vec b) { return {_mm512_add_ps(a.v, b.v)}; }
inline Vec operator-(Vec a, Vec b) { return {_mm512_sub_ps(a.v, b.v)}; }
inline Vec operator*(Vec a, Vec b) { return {_mm512_mul_ps(a.v, b.v)}; }
inline Vec fma(Vec a, Vec b, Vec c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
inline Vec fnma(Vec a, Vec b, Vec c) { return {_mm512_fnmadd_ps(a.v, b.v, c.v)}; }
inline Vec max(Vec a, Vec b) { return {_mm512_max_ps(a.v, b.v)}; }
inline Vec min(Vec a, Vec b) { return {_mm512_min_ps(a.v, b.v)}; }
inline float reduce_add(Vec a) { return _mm512_reduce_add_ps(a.v); }
inline float reduce_max(Vec a) { return _mm512_reduce_max_ps(a.v); }
inline Vec round_nearest(Vec a) {
  return {_mm512_roundscale_ps(a.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)};
}
// a * 2^n for integral n in [-150, 128]; scalef rounds once, into subnormals too.
inline Vec times_pow2(Vec a, Vec n) { return {_mm512_scalef_ps(a.v, n.v)}; }

#elif VLLM_CPU_AVX2

struct Vec {
  static constexpr int kLanes = 8;
  __m256 v;

  static Vec load(const float* p) { return {_mm256_loadu_ps(p)}; }
  static Vec load(const bf16* p) {
    const __m256i halves =
        _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return {_mm256_castsi256_ps(_mm256_slli_epi32(halves, 16))};
  }
  static Vec splat(float x) { return {_mm256_set1_ps(x)}; }
  void store(float* p) const { _mm256_storeu_ps(p, v); }

  // All-ones in the first `count` 32-bit lanes: the mask maskload/maskstore take.
  static __m256i first_lanes(int64_t count) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(count)),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  // The first `count` (< kLanes) floats of p, `fill` in the other lanes; the
  // masked-off lanes are not read, so p + count may be the end of the buffer.
  static Vec load_first(const float* p, int64_t count, float fill) {
    const __m256i mask = first_lanes(count);
    return {_mm256_blendv_ps(_mm256_set1_ps(fill), _mm256_maskload_ps(p, mask),
                             _mm256_castsi256_ps(mask))};
  }
  void store_first(float* p, int64_t count) const {
    _mm256_maskstore_ps(p, first_lanes(count), v);
  }
  // kLanes bytes as floats: their low 4 bits, or their high 4 bits when `high`.
  static Vec from_nibbles(const uint8_t* p, bool high) {
    const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
    const __m256i words = _mm256_cvtepu8_epi32(bytes);
    const __m256i nibbles = high ? _mm256_srli_epi32(words, 4)
                                 : _mm256_and_si256(words, _mm256_set1_epi32(0x0F));
    return {_mm256_cvtepi32_ps(nibbles)};
  }
  // kLanes signed bytes as floats.
  static Vec from_int8(const int8_t* p) {
    const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
    return {_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes))};
  }
};

inline Vec operator+(Vec a, Vec b) { return {_mm256_add_ps(a.v, b.v)}; }
inline Vec operator-(Vec a, Vec b) { return {_mm256_sub_ps(a.v, b.v)}; }
inline Vec operator*(Vec a, Vec b) { return {_mm256_mul_ps(a.v, b.v)}; }
inline Vec fma(Vec a, Vec b, Vec c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
inline Vec fnma(Vec a, Vec b, Vec c) { return {_mm256_fnmadd_ps(a.v, b.v, c.v)}; }
inline Vec max(Vec a, Vec b) { return {_mm256_max_ps(a.v, b.v)}; }
inline Vec min(Vec a, Vec b) { return {_mm256_min_ps(a.v, b.v)}; }
inline float reduce_add(Vec a) {
  __m128 sum = _mm_add_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
  sum = _mm_add_ps(sum, _mm_movehl_ps(sum, sum));     // lanes 0+2, 1+3
  sum = _mm_add_ss(sum, _mm_movehdup_ps(sum));        // + lane 1
  return _mm_cvtss_f32(sum);
}
inline float reduce_max(Vec a) {
  __m128 best = _mm_max_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
  best = _mm_max_ps(best, _mm_movehl_ps(best, best));
  best = _mm_max_ss(best, _mm_movehdup_ps(best));
  return _mm_cvtss_f32(best);
}
inline Vec round_nearest(Vec a) {
  return {_mm256_round_ps(a.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)};
}
// 2^k as a float for integral k in [-126, 127]: k + 127 in the exponent field.
inline __m256 pow2_int(__m256i k) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k, _mm256_set1_epi32(127)), 23));
}
// a * 2^n for integral n in [-150, 128]. 2^n alone may not be a normal float,
// so it is applied as 2^(n/2) then 2^(n - n/2): the first product is exact and
// the second rounds once, into subnormals too, as AVX-512's scalef does.
inline Vec times_pow2(Vec a, Vec n) {
  const __m256i k = _mm256_cvtps_epi32(n.v);  // exact: n is integral
  const __m256i half = _mm256_srai_epi32(k, 1);
  const __m256 once = _mm256_mul_ps(a.v, pow2_int(half));
  return {_mm256_mul_ps(once, pow2_int(_mm256_sub_epi32(k, half)))};
}

#elif VLLM_CPU_NEON

struct Vec {
  static constexpr int kLanes = 4;
  float32x4_t v;

  static Vec load(const float* p) { return {vld1q_f32(p)}; }
  static Vec load(const bf16* p) {
    const uint16x4_t halves = vld1_u16(reinterpret_cast<const uint16_t*>(p));
    return {vreinterpretq_f32_u32(vshll_n_u16(halves, 16))};
  }
  static Vec splat(float x) { return {vdupq_n_f32(x)}; }
  void store(float* p) const { vst1q_f32(p, v); }

  // NEON has no masked loads: partial vectors go through a small stack buffer.
  static Vec load_first(const float* p, int64_t count, float fill) {
    float lanes[kLanes] = {fill, fill, fill, fill};
    std::memcpy(lanes, p, count * sizeof(float));
    return {vld1q_f32(lanes)};
  }
  void store_first(float* p, int64_t count) const {
    float lanes[kLanes];
    vst1q_f32(lanes, v);
    std::memcpy(p, lanes, count * sizeof(float));
  }
  // kLanes bytes as floats: their low 4 bits, or their high 4 bits when `high`.
  static Vec from_nibbles(const uint8_t* p, bool high) {
    uint32_t word;
    std::memcpy(&word, p, sizeof(word));
    const uint8x8_t bytes = vreinterpret_u8_u32(vdup_n_u32(word));
    const uint8x8_t nibbles = high ? vshr_n_u8(bytes, 4) : vand_u8(bytes, vdup_n_u8(0x0F));
    return {vcvtq_f32_u32(vmovl_u16(vget_low_u16(vmovl_u8(nibbles))))};
  }
  // kLanes signed bytes as floats.
  static Vec from_int8(const int8_t* p) {
    int32_t word;
    std::memcpy(&word, p, sizeof(word));
    const int8x8_t bytes = vreinterpret_s8_s32(vdup_n_s32(word));
    return {vcvtq_f32_s32(vmovl_s16(vget_low_s16(vmovl_s8(bytes))))};
  }
};

inline Vec operator+(Vec a, Vec b) { return {vaddq_f32(a.v, b.v)}; }
inline Vec operator-(Vec a, Vec b) { return {vsubq_f32(a.v, b.v)}; }
inline Vec operator*(Vec a, Vec b) { return {vmulq_f32(a.v, b.v)}; }
inline Vec fma(Vec a, Vec b, Vec c) { return {vfmaq_f32(c.v, a.v, b.v)}; }
inline Vec fnma(Vec a, Vec b, Vec c) { return {vfmsq_f32(c.v, a.v, b.v)}; }
inline Vec max(Vec a, Vec b) { return {vmaxq_f32(a.v, b.v)}; }
inline Vec min(Vec a, Vec b) { return {vminq_f32(a.v, b.v)}; }
inline float reduce_add(Vec a) { return vaddvq_f32(a.v); }
inline float reduce_max(Vec a) { return vmaxvq_f32(a.v); }
inline Vec round_nearest(Vec a) { return {vrndnq_f32(a.v)}; }
// 2^k as a float for integral k in [-126, 127]: k + 127 in the exponent field.
inline float32x4_t pow2_int(int32x4_t k) {
  return vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(k, vdupq_n_s32(127)), 23));
}
// a * 2^n for integral n in [-150, 128], in two exact-range steps (see AVX2).
inline Vec times_pow2(Vec a, Vec n) {
  const int32x4_t k = vcvtq_s32_f32(n.v);  // exact: n is integral
  const int32x4_t half = vshrq_n_s32(k, 1);
  const float32x4_t once = vmulq_f32(a.v, pow2_int(half));
  return {vmulq_f32(once, pow2_int(vsubq_s32(k, half)))};
}

#endif

#if VLLM_CPU_AVX512 || VLLM_CPU_AVX2 || VLLM_CPU_NEON
constexpr bool kHasVec = true;

inline Vec exp(Vec x) {
  x = min(max(x, Vec::splat(kExpMin)), Vec::splat(kExpMax));
  const Vec n = round_nearest(x * Vec::splat(kLog2e));
  Vec r = fnma(n, Vec::splat(kLn2Hi), x);
  r = fnma(n, Vec::splat(kLn2Lo), r);
  Vec poly = Vec::splat(kExpTaylor[0]);
  for (int i = 1; i < 8; ++i) poly = fma(poly, r, Vec::splat(kExpTaylor[i]));
  return times_pow2(poly, n);
}
#else
constexpr bool kHasVec = false;
#endif

// True when the vector path handles rows of kHeadSize elements whole.
template <int kHeadSize>
constexpr bool use_vec_rows() {
#if VLLM_CPU_AVX512 || VLLM_CPU_AVX2 || VLLM_CPU_NEON
  return kHeadSize > 0 && kHeadSize % Vec::kLanes == 0;
#else
  return false;
#endif
}

// scores[t] = dot(query, rows + t * row_stride) for t < num_rows.
//   query: (head_size,) float32; rows: float32 or bf16, row t at t * row_stride.
template <int kHeadSize, typename T>
inline void dot_rows(const float* query, const T* rows, int64_t row_stride,
                     int64_t num_rows, int64_t head_size, float* scores) {
#if VLLM_CPU_AVX512 || VLLM_CPU_AVX2 || VLLM_CPU_NEON
  if constexpr (use_vec_rows<kHeadSize>()) {
    constexpr int kChunks = kHeadSize / Vec::kLanes;
    Vec query_chunks[kChunks];
    for (int c = 0; c < kChunks; ++c) query_chunks[c] = Vec::load(query + c * Vec::kLanes);
    for (int64_t t = 0; t < num_rows; ++t) {
      const T* row = rows + t * row_stride;
      // Two independent chains: half the FMA latency on the critical path.
      Vec even = query_chunks[0] * Vec::load(row);
      Vec odd = Vec::splat(0.0f);
      for (int c = 1; c < kChunks; ++c) {
        Vec& sum = c % 2 ? odd : even;
        sum = fma(query_chunks[c], Vec::load(row + c * Vec::kLanes), sum);
      }
      scores[t] = reduce_add(even + odd);
    }
    return;
  }
#endif
  const int64_t size = kHeadSize > 0 ? kHeadSize : head_size;
  for (int64_t t = 0; t < num_rows; ++t) {
    const T* row = rows + t * row_stride;
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t d = 0; d < size; ++d) sum += query[d] * to_float(row[d]);
    scores[t] = sum;
  }
}

// acc += sum over t < num_rows of weights[t] * (rows + t * row_stride).
//   rows: float32 or bf16; weights: (num_rows,) float32; acc: (head_size,) float32.
template <int kHeadSize, typename T>
inline void accumulate_weighted_rows(const T* rows, int64_t row_stride, const float* weights,
                                     int64_t num_rows, int64_t head_size, float* acc) {
#if VLLM_CPU_AVX512 || VLLM_CPU_AVX2 || VLLM_CPU_NEON
  if constexpr (use_vec_rows<kHeadSize>()) {
    constexpr int kChunks = kHeadSize / Vec::kLanes;
    Vec acc_chunks[kChunks];
    for (int c = 0; c < kChunks; ++c) acc_chunks[c] = Vec::load(acc + c * Vec::kLanes);
    for (int64_t t = 0; t < num_rows; ++t) {
      const T* row = rows + t * row_stride;
      const Vec weight = Vec::splat(weights[t]);
      for (int c = 0; c < kChunks; ++c) {
        acc_chunks[c] = fma(weight, Vec::load(row + c * Vec::kLanes), acc_chunks[c]);
      }
    }
    for (int c = 0; c < kChunks; ++c) acc_chunks[c].store(acc + c * Vec::kLanes);
    return;
  }
#endif
  const int64_t size = kHeadSize > 0 ? kHeadSize : head_size;
  for (int64_t t = 0; t < num_rows; ++t) {
    const T* row = rows + t * row_stride;
    const float weight = weights[t];
#pragma omp simd
    for (int64_t d = 0; d < size; ++d) acc[d] += weight * to_float(row[d]);
  }
}

// Query heads of one kv head that the *_heads helpers handle per call: enough
// independent FMA chains to hide latency, few enough accumulators for registers.
constexpr int kMaxHeadTile = 4;

// Divisor of kChunks that keeps kHeads x tile accumulators within 12 registers.
template <int kChunks, int kHeads>
constexpr int chunk_tile() {
  int tile = 12 / kHeads < 1 ? 1 : 12 / kHeads;
  if (tile > kChunks) tile = kChunks;
  while (kChunks % tile != 0) --tile;
  return tile;
}

// scores[g * score_stride + t] = dot(queries + g * head_size, row t) for the
// kHeads (<= kMaxHeadTile) query heads that share these rows: each row chunk is
// loaded, and widened from bf16, once for all of them.
//   queries: (kHeads, head_size) float32; rows: float32 or bf16, row t at t * row_stride.
template <int kHeadSize, int kHeads, typename T>
inline void dot_rows_heads(const float* queries, const T* rows, int64_t row_stride,
                           int64_t num_rows, int64_t head_size, float* scores,
                           int64_t score_stride) {
#if VLLM_CPU_AVX512 || VLLM_CPU_AVX2 || VLLM_CPU_NEON
  if constexpr (use_vec_rows<kHeadSize>() && kHeads > 1) {
    constexpr int kChunks = kHeadSize / Vec::kLanes;
    for (int64_t t = 0; t < num_rows; ++t) {
      const T* row = rows + t * row_stride;
      Vec sums[kHeads];
      const Vec first = Vec::load(row);
      for (int g = 0; g < kHeads; ++g) sums[g] = Vec::load(queries + g * kHeadSize) * first;
      for (int c = 1; c < kChunks; ++c) {
        const Vec chunk = Vec::load(row + c * Vec::kLanes);
        for (int g = 0; g < kHeads; ++g) {
          sums[g] = fma(Vec::load(queries + g * kHeadSize + c * Vec::kLanes), chunk, sums[g]);
        }
      }
      for (int g = 0; g < kHeads; ++g) scores[g * score_stride + t] = reduce_add(sums[g]);
    }
    return;
  }
#endif
  for (int g = 0; g < kHeads; ++g) {
    dot_rows<kHeadSize>(queries + g * head_size, rows, row_stride, num_rows, head_size,
                        scores + g * score_stride);
  }
}

// acc[g] += sum over t of weights[g * weight_stride + t] * row t, for the kHeads
// query heads sharing these rows: each row chunk is loaded (and widened) once.
//   weights: (kHeads, weight_stride) float32; acc: (kHeads, head_size) float32.
template <int kHeadSize, int kHeads, typename T>
inline void accumulate_weighted_rows_heads(const T* rows, int64_t row_stride,
                                           const float* weights, int64_t weight_stride,
                                           int64_t num_rows, int64_t head_size, float* acc) {
#if VLLM_CPU_AVX512 || VLLM_CPU_AVX2 || VLLM_CPU_NEON
  if constexpr (use_vec_rows<kHeadSize>() && kHeads > 1) {
    constexpr int kChunks = kHeadSize / Vec::kLanes;
    constexpr int kTile = chunk_tile<kChunks, kHeads>();
    // The head dim in tiles of kTile chunks, so kHeads x kTile sums stay in registers.
    for (int c0 = 0; c0 < kChunks; c0 += kTile) {
      Vec sums[kHeads][kTile];
      for (int g = 0; g < kHeads; ++g)
        for (int c = 0; c < kTile; ++c)
          sums[g][c] = Vec::load(acc + g * kHeadSize + (c0 + c) * Vec::kLanes);
      for (int64_t t = 0; t < num_rows; ++t) {
        const T* row = rows + t * row_stride + c0 * Vec::kLanes;
        Vec weight[kHeads];
        for (int g = 0; g < kHeads; ++g) weight[g] = Vec::splat(weights[g * weight_stride + t]);
        for (int c = 0; c < kTile; ++c) {
          const Vec chunk = Vec::load(row + c * Vec::kLanes);
          for (int g = 0; g < kHeads; ++g) sums[g][c] = fma(weight[g], chunk, sums[g][c]);
        }
      }
      for (int g = 0; g < kHeads; ++g)
        for (int c = 0; c < kTile; ++c)
          sums[g][c].store(acc + g * kHeadSize + (c0 + c) * Vec::kLanes);
    }
    return;
  }
#endif
  for (int g = 0; g < kHeads; ++g) {
    accumulate_weighted_rows<kHeadSize>(rows, row_stride, weights + g * weight_stride,
                                        num_rows, head_size, acc + g * head_size);
  }
}

// Largest of values[0..n); -inf when n == 0.
inline float max_of(const float* values, int64_t n) {
  constexpr float kLowest = -std::numeric_limits<float>::infinity();
#if VLLM_CPU_AVX512 || VLLM_CPU_AVX2 || VLLM_CPU_NEON
  Vec best = Vec::splat(kLowest);
  int64_t i = 0;
  for (; i + Vec::kLanes <= n; i += Vec::kLanes) best = max(best, Vec::load(values + i));
  if (i < n) best = max(best, Vec::load_first(values + i, n - i, kLowest));
  return reduce_max(best);
#else
  float result = kLowest;
  for (int64_t i = 0; i < n; ++i) result = std::max(result, values[i]);
  return result;
#endif
}

// values[i] = exp(values[i] - max_value) in place; returns their sum.
inline float exp_minus_max_inplace(float* values, int64_t n, float max_value) {
#if VLLM_CPU_AVX512 || VLLM_CPU_AVX2 || VLLM_CPU_NEON
  const Vec shift = Vec::splat(max_value);
  Vec total = Vec::splat(0.0f);
  int64_t i = 0;
  for (; i + Vec::kLanes <= n; i += Vec::kLanes) {
    const Vec e = exp(Vec::load(values + i) - shift);
    e.store(values + i);
    total = total + e;
  }
  float sum = reduce_add(total);
  if (i < n) {  // the tail: unused lanes (exp(0)) are neither stored nor summed
    exp(Vec::load_first(values + i, n - i, max_value) - shift).store_first(values + i, n - i);
    for (; i < n; ++i) sum += values[i];
  }
  return sum;
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
