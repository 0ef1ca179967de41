// y = x W^T (+ b) with float32 W, in the register tiles of the GGUF kernel
// (linear_tiles.h): its point is not MKL's speed but a sum per output whose
// order does not depend on the batch (see ops.h).
#include "linear_tiles.h"
#include "ops.h"

namespace {

using vllm_cpu::lanes::Lanes;

// W's rows as a tile reads them: four vectors per step, then a vector at a time.
struct DenseRows {
  static constexpr int64_t kStep = 4 * Lanes::kLanes;
  static constexpr vllm_cpu::linear::Shape kShape = vllm_cpu::linear::kDenseShape;
  static constexpr bool kTail = true;

  struct Step {
    const float* p;
    Lanes weights(int v) const { return Lanes::load(p + v * Lanes::kLanes); }
  };

  const float* data;  // (n, k)
  int64_t k;

  int64_t row_bytes() const { return 4 * k; }
  Step step(int64_t row, int64_t s) const { return {data + row * k + s * kStep}; }
  Lanes tail(int64_t row, int64_t c, int64_t count) const {
    const float* p = data + row * k + c;
    return count == Lanes::kLanes ? Lanes::load(p) : Lanes::load_first(p, count, 0.0f);
  }
};

void check_float_matrix(const torch::Tensor& t, const char* name, const char* shape) {
  TORCH_CHECK(t.dim() == 2 && t.scalar_type() == at::kFloat && t.is_contiguous(),
              "dense_linear: ", name, " must be a contiguous ", shape, " float32 tensor, got ",
              t.scalar_type(), " of shape ", t.sizes(), t.is_contiguous() ? "" : " (strided)");
}

}  // namespace

void dense_linear(torch::Tensor& out, const torch::Tensor& x, const torch::Tensor& weight,
                  const std::optional<torch::Tensor>& bias) {
  check_float_matrix(x, "x", "(m, k)");
  check_float_matrix(weight, "weight", "(n, k)");
  const int64_t m = x.size(0), k = x.size(1), n = weight.size(0);
  TORCH_CHECK(weight.size(1) == k, "dense_linear: x has ", k, " columns but the weight has ",
              weight.size(1));
  TORCH_CHECK(out.scalar_type() == at::kFloat && out.is_contiguous() && out.dim() == 2 &&
                  out.size(0) == m && out.size(1) == n,
              "dense_linear: out must be a contiguous (", m, ", ", n, ") float32 tensor");
  const float* bias_ptr = nullptr;
  if (bias.has_value()) {
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->is_contiguous() &&
                    bias->dim() == 1 && bias->numel() == n,
                "dense_linear: bias must be a contiguous (", n, ",) float32 tensor");
    bias_ptr = bias->data_ptr<float>();
  }
  if (m == 0 || n == 0) return;
  const DenseRows rows{weight.data_ptr<float>(), k};
  vllm_cpu::linear::run(vllm_cpu::linear::Problem<DenseRows>{
      x.data_ptr<float>(), rows, bias_ptr, out.data_ptr<float>(), m, n, k});
}
