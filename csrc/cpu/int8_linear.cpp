// W8A8 linear layers: int8 activations times int8 weights in exact int32 sums, then the
// float32 epilogue of vllm/model_executor/layers/quantization/int8_kernels.py, bit for bit.
//
// The products are exact in every build, chosen for what each ISA multiplies fastest without
// saturating:
//   AVX-512 VNNI  vpdpbusd on x + 128 (uint8) and the weights; the 128 * sum(w) this adds
//                 is taken off again from each row's weight sum (int8_vnni.cpp)
//   AVX-512, AVX2 vpmaddwd on int16 (sign-extended int8): exact for every int8 pair, -128 on
//                 both sides included. vpmaddubsw is not used: two products of a uint8 up to
//                 255 and an int8 saturate its int16 sums, and its exact variants (the sign
//                 trick, x kept in [0, 254] with split weights) cost as many instructions
//                 as vpmaddwd per product.
//   portable      plain int16 x int16 -> int32 loops, which the compiler vectorises.
#include <cmath>

#include <ATen/ops/from_blob.h>

#include "int8_tiles.h"
#include "ops.h"

namespace vllm_cpu::int8 {
void run_vnni(const Problem& p);  // int8_vnni.cpp (AVX-512 builds only)
}

namespace {

using vllm_cpu::int8::Problem;

#if VLLM_CPU_AVX512 || VLLM_CPU_AVX2
// vpmaddwd over kStep k of int16 lanes in a register of Bits bits.
struct Madd256 {
  using X = int16_t;
  using W = __m256i;
  using Acc = __m256i;
  static constexpr int64_t kStep = 16;
  static constexpr int32_t kXOffset = 0;
  static constexpr int kRows = 4;
  static constexpr int kSums = 12;  // of 16 ymm

  static X convert(int8_t v) { return v; }
  static Acc zero() { return _mm256_setzero_si256(); }
  static W load_w(const int8_t* p) {
    return _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static __m256i load_x(const X* p) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  }
  static Acc multiply_add(Acc acc, __m256i x, W w) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(x, w));
  }
  static int32_t total(Acc acc) {
    const __m128i half = _mm_add_epi32(_mm256_castsi256_si128(acc),
                                       _mm256_extracti128_si256(acc, 1));
    const __m128i quarter = _mm_add_epi32(half, _mm_shuffle_epi32(half, 0x4E));
    return _mm_cvtsi128_si32(_mm_add_epi32(quarter, _mm_shuffle_epi32(quarter, 0xB1)));
  }
};
#endif

#if VLLM_CPU_AVX512
struct Madd512 {
  using X = int16_t;
  using W = __m512i;
  using Acc = __m512i;
  static constexpr int64_t kStep = 32;
  static constexpr int32_t kXOffset = 0;
  static constexpr int kRows = 4;
  static constexpr int kSums = 24;  // of 32 zmm

  static X convert(int8_t v) { return v; }
  static Acc zero() { return _mm512_setzero_si512(); }
  static W load_w(const int8_t* p) {
    return _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static __m512i load_x(const X* p) { return _mm512_loadu_si512(p); }
  static Acc multiply_add(Acc acc, __m512i x, W w) {
    return _mm512_add_epi32(acc, _mm512_madd_epi16(x, w));
  }
  static int32_t total(Acc acc) { return _mm512_reduce_add_epi32(acc); }
};
#endif

// Eight int16 lanes in plain arrays: the portable (and NEON) build's.
struct PlainDot {
  static constexpr int kLanes = 8;
  using X = int16_t;
  struct W {
    int16_t v[kLanes];
  };
  struct Acc {
    int32_t v[kLanes];
  };
  static constexpr int64_t kStep = kLanes;
  static constexpr int32_t kXOffset = 0;
  static constexpr int kRows = 4;
  static constexpr int kSums = 4;

  static X convert(int8_t v) { return v; }
  static Acc zero() { return Acc{}; }
  static W load_w(const int8_t* p) {
    W w;
    for (int l = 0; l < kLanes; ++l) w.v[l] = p[l];
    return w;
  }
  static const X* load_x(const X* p) { return p; }
  static Acc multiply_add(Acc acc, const X* x, const W& w) {
    for (int l = 0; l < kLanes; ++l) acc.v[l] += static_cast<int32_t>(x[l]) * w.v[l];
    return acc;
  }
  static int32_t total(const Acc& acc) {
    uint32_t sum = 0;  // wraps as the int32 reference does
    for (int l = 0; l < kLanes; ++l) sum += static_cast<uint32_t>(acc.v[l]);
    return static_cast<int32_t>(sum);
  }
};

#if VLLM_CPU_AVX512
bool has_vnni() { return __builtin_cpu_supports("avx512vnni"); }
#endif

void run_gemm(const Problem& p) {
#if VLLM_CPU_AVX512
  if (has_vnni()) return vllm_cpu::int8::run_vnni(p);
  vllm_cpu::int8::run<Madd512>(p);
#elif VLLM_CPU_AVX2
  vllm_cpu::int8::run<Madd256>(p);
#else
  vllm_cpu::int8::run<PlainDot>(p);
#endif
}

void check(bool ok, const char* op, const char* name, const char* what,
           const torch::Tensor& t) {
  TORCH_CHECK(ok, op, ": ", name, " must be a contiguous ", what, " tensor, got ",
              t.scalar_type(), " of shape ", t.sizes(), t.is_contiguous() ? "" : " (strided)");
}

void check_vector(const std::optional<torch::Tensor>& t, at::ScalarType type, int64_t size,
                  const char* name, const char* what) {
  if (!t.has_value()) return;
  check(t->dim() == 1 && t->scalar_type() == type && t->is_contiguous() && t->numel() == size,
        "int8_linear", name, what, *t);
}

template <typename T>
const T* data_or_null(const std::optional<torch::Tensor>& t) {
  return t.has_value() ? t->data_ptr<T>() : nullptr;
}

void check_float_rows(const torch::Tensor& x, const char* op) {
  check(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), op, "x",
        "(m, k) float32", x);
}

}  // namespace

void int8_linear(torch::Tensor& out, const torch::Tensor& x_q, const torch::Tensor& weight,
                 const torch::Tensor& weight_sums, const std::optional<torch::Tensor>& x_scale,
                 const torch::Tensor& w_scale, const std::optional<torch::Tensor>& bias,
                 const std::optional<torch::Tensor>& acc_bias) {
  const char* op = "int8_linear";
  check(x_q.dim() == 2 && x_q.scalar_type() == at::kChar && x_q.is_contiguous(), op, "x_q",
        "(m, k) int8", x_q);
  check(weight.dim() == 2 && weight.scalar_type() == at::kChar && weight.is_contiguous(), op,
        "weight", "(n, k) int8", weight);
  const int64_t m = x_q.size(0), k = x_q.size(1), n = weight.size(0);
  TORCH_CHECK(weight.size(1) == k, op, ": x_q has ", k, " columns but the weight has ",
              weight.size(1));
  check(out.dim() == 2 && out.scalar_type() == at::kFloat && out.is_contiguous() &&
            out.size(0) == m && out.size(1) == n,
        op, "out", "(m, n) float32", out);
  check_vector(weight_sums, at::kInt, n, "weight_sums", "(n,) int32");
  check_vector(x_scale, at::kFloat, m, "x_scale", "(m,) float32");
  check_vector(w_scale, at::kFloat, n, "w_scale", "(n,) float32");
  check_vector(bias, at::kFloat, n, "bias", "(n,) float32");
  check_vector(acc_bias, at::kInt, n, "acc_bias", "(n,) int32");
  if (m == 0 || n == 0) return;
  run_gemm(Problem{x_q.data_ptr<int8_t>(), weight.data_ptr<int8_t>(),
                   weight_sums.data_ptr<int32_t>(), data_or_null<int32_t>(acc_bias),
                   data_or_null<float>(x_scale), w_scale.data_ptr<float>(),
                   data_or_null<float>(bias), out.data_ptr<float>(), m, n, k});
}

namespace {

// Rows [begin, end) of float32 x (m, k) to int8 with per-row scales (ops.h).
void quantize_rows(const float* x, int64_t begin, int64_t end, int64_t k, int8_t* q,
                   float* scales) {
  for (int64_t i = begin; i < end; ++i) {
    const float* row = x + i * k;
    float amax = 0.0f;
    for (int64_t c = 0; c < k; ++c) amax = std::max(amax, std::fabs(row[c]));
    const float s = amax > 0.0f ? amax / 127.0f : 1.0f;
    scales[i] = s;
    for (int64_t c = 0; c < k; ++c) {
      const float v = std::nearbyint(row[c] / s);
      q[i * k + c] = static_cast<int8_t>(std::clamp(v, -127.0f, 127.0f));
    }
  }
}

void quantize_dynamic(const float* x, int64_t m, int64_t k, int8_t* q, float* scales) {
  at::parallel_for(0, m, 16, [&](int64_t begin, int64_t end) {
    quantize_rows(x, begin, end, k, q, scales);
  });
}

}  // namespace

void int8_quantize_dynamic(torch::Tensor& x_q, torch::Tensor& scale, const torch::Tensor& x) {
  const char* op = "int8_quantize_dynamic";
  check_float_rows(x, op);
  const int64_t m = x.size(0), k = x.size(1);
  check(x_q.sizes() == x.sizes() && x_q.scalar_type() == at::kChar && x_q.is_contiguous(), op,
        "x_q", "(m, k) int8", x_q);
  check(scale.dim() == 1 && scale.numel() == m && scale.scalar_type() == at::kFloat &&
            scale.is_contiguous(),
        op, "scale", "(m,) float32", scale);
  quantize_dynamic(x.data_ptr<float>(), m, k, x_q.data_ptr<int8_t>(), scale.data_ptr<float>());
}

void int8_linear_dynamic(torch::Tensor& out, const torch::Tensor& x, const torch::Tensor& weight,
                         const torch::Tensor& weight_sums, const torch::Tensor& w_scale,
                         const std::optional<torch::Tensor>& bias) {
  check_float_rows(x, "int8_linear_dynamic");
  const int64_t m = x.size(0), k = x.size(1);
  std::vector<int8_t> x_q(static_cast<size_t>(m * k));
  std::vector<float> x_scale(static_cast<size_t>(m));
  quantize_dynamic(x.data_ptr<float>(), m, k, x_q.data(), x_scale.data());
  const auto bytes = at::TensorOptions().dtype(at::kChar);
  const auto floats = at::TensorOptions().dtype(at::kFloat);
  int8_linear(out, at::from_blob(x_q.data(), {m, k}, bytes), weight, weight_sums,
              at::from_blob(x_scale.data(), {m}, floats), w_scale, bias, std::nullopt);
}

void int8_quantize_static(torch::Tensor& x_q, const torch::Tensor& x, double scale,
                          double offset) {
  const char* op = "int8_quantize_static";
  check_float_rows(x, op);
  check(x_q.sizes() == x.sizes() && x_q.scalar_type() == at::kChar && x_q.is_contiguous(), op,
        "x_q", "(m, k) int8", x_q);
  const float s = static_cast<float>(scale), o = static_cast<float>(offset);
  const float* xs = x.data_ptr<float>();
  int8_t* qs = x_q.data_ptr<int8_t>();
  at::parallel_for(0, x.numel(), 4096, [&](int64_t begin, int64_t end) {
    for (int64_t e = begin; e < end; ++e)
      qs[e] = static_cast<int8_t>(std::clamp(std::nearbyint(xs[e] / s + o), -128.0f, 127.0f));
  });
}

std::string int8_dot_product() {
#if VLLM_CPU_AVX512
  return has_vnni() ? "avx512-vnni vpdpbusd" : "avx512 vpmaddwd";
#elif VLLM_CPU_AVX2
  return "avx2 vpmaddwd";
#else
  return "portable int16 loops";
#endif
}
