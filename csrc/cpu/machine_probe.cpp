// A peak-FMA probe for the benchmarks: every thread runs independent chains of
// fused multiply-adds in the widest registers this build targets, so the figure
// is the machine's float32 FMA limit as the kernels of this ISA can reach it.
#include <ATen/Parallel.h>

#include <atomic>
#include <chrono>

#include "isa.h"
#include "ops.h"

namespace {

constexpr int kChains = 12;  // enough independent accumulators to hide FMA latency

#if VLLM_CPU_AVX512
using Vec = __m512;
constexpr int kLanes = 16;
inline Vec splat(float v) { return _mm512_set1_ps(v); }
inline Vec fma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
inline float first(Vec v) { return _mm512_cvtss_f32(v); }
#elif VLLM_CPU_AVX2
using Vec = __m256;
constexpr int kLanes = 8;
inline Vec splat(float v) { return _mm256_set1_ps(v); }
inline Vec fma(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
inline float first(Vec v) { return _mm256_cvtss_f32(v); }
#elif VLLM_CPU_NEON
using Vec = float32x4_t;
constexpr int kLanes = 4;
inline Vec splat(float v) { return vdupq_n_f32(v); }
inline Vec fma(Vec a, Vec b, Vec c) { return vfmaq_f32(c, a, b); }
inline float first(Vec v) { return vgetq_lane_f32(v, 0); }
#else
using Vec = float;
constexpr int kLanes = 1;
inline Vec splat(float v) { return v; }
inline Vec fma(Vec a, Vec b, Vec c) { return a * b + c; }
inline float first(Vec v) { return v; }
#endif

// iterations x kChains FMAs of kLanes lanes; returns a value the compiler must keep.
float fma_chains(int64_t iterations) {
  Vec acc[kChains];
  for (int c = 0; c < kChains; ++c) acc[c] = splat(1.0f + c * 1e-3f);
  const Vec a = splat(0.999999f), b = splat(1e-7f);
  for (int64_t i = 0; i < iterations; ++i)
    for (int c = 0; c < kChains; ++c) acc[c] = fma(acc[c], a, b);
  float sum = 0.0f;
  for (int c = 0; c < kChains; ++c) sum += first(acc[c]);
  return sum;
}

}  // namespace

double fma_peak_gflops(int64_t iterations) {
  TORCH_CHECK(iterations > 0, "fma_peak_gflops: iterations must be positive");
  const int64_t threads = at::get_num_threads();
  std::atomic<int64_t> sink{0};
  const auto start = std::chrono::steady_clock::now();
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t)
      sink += static_cast<int64_t>(fma_chains(iterations) > 1e30f);
  });
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double flops = 2.0 * kLanes * kChains * static_cast<double>(iterations) * threads;
  return sink.load() < 0 ? 0.0 : flops / seconds / 1e9;
}
