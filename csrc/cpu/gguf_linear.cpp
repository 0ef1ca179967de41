// y = x W^T (+ b) with W kept in GGUF blocks: each block is dequantised in
// registers and used for every row of x in a tile (linear_tiles.h), so a small
// batch streams the packed weights (0.6-1.1 bytes per weight) instead of float32
// ones (4 bytes).
#include <type_traits>

#include "gguf_blocks.h"
#include "linear_tiles.h"
#include "ops.h"

namespace {

using namespace vllm_cpu::gguf;
using vllm_cpu::lanes::Lanes;

// A block dequantised into memory, then loaded: for lanes that cannot widen bytes in
// registers (the portable build, whose plain loops the compiler vectorises this way).
template <typename Format>
struct DequantizedBlock {
  float weights_[kBlockSize];

  DequantizedBlock() = default;
  explicit DequantizedBlock(const uint8_t* block) { Format::dequantize(block, weights_); }
  Lanes weights(int v) const { return Lanes::load(weights_ + v * Lanes::kLanes); }
};

// W's rows as a tile reads them: one 32-weight block per step.
template <typename Format>
struct BlockRows {
  static constexpr int64_t kStep = kBlockSize;
  static constexpr vllm_cpu::linear::Shape kShape = vllm_cpu::linear::kBlockShape;
  static constexpr bool kTail = false;
  using Step = std::conditional_t<vllm_cpu::lanes::kConvertsBytes,
                                  typename Format::template Block<Lanes>,
                                  DequantizedBlock<Format>>;

  const uint8_t* data;  // (n, k / 32, Format::kBytes)
  int64_t bytes_per_row;

  int64_t row_bytes() const { return bytes_per_row; }
  Step step(int64_t row, int64_t s) const {
    return Step(data + row * bytes_per_row + s * Format::kBytes);
  }
};

template <typename Format>
void run(const torch::Tensor& out, const torch::Tensor& x, const torch::Tensor& blocks,
         const float* bias) {
  const int64_t k = x.size(1);
  const BlockRows<Format> rows{blocks.data_ptr<uint8_t>(), k / kBlockSize * Format::kBytes};
  vllm_cpu::linear::run(vllm_cpu::linear::Problem<BlockRows<Format>>{
      x.data_ptr<float>(), rows, bias, out.data_ptr<float>(), x.size(0), out.size(1), k});
}

int64_t block_bytes(int64_t qtype) {
  if (qtype == kTypeQ4_1) return Q4_1::kBytes;
  if (qtype == kTypeQ8_0) return Q8_0::kBytes;
  TORCH_CHECK(false, "gguf_linear: unsupported ggml type ", qtype,
              " (supported: 3 = Q4_1, 8 = Q8_0)");
  return 0;
}

}  // namespace

void gguf_linear(torch::Tensor& out, const torch::Tensor& x,
                 const torch::Tensor& weight_blocks, int64_t qtype,
                 const std::optional<torch::Tensor>& bias) {
  const int64_t bytes = block_bytes(qtype);
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(),
              "gguf_linear: x must be a contiguous (m, k) float32 tensor");
  TORCH_CHECK(weight_blocks.dim() == 3 && weight_blocks.scalar_type() == at::kByte &&
                  weight_blocks.is_contiguous() && weight_blocks.size(2) == bytes,
              "gguf_linear: weight_blocks must be a contiguous (n, k / 32, ", bytes,
              ") uint8 tensor");
  const int64_t m = x.size(0), k = x.size(1), n = weight_blocks.size(0);
  TORCH_CHECK(weight_blocks.size(1) * kBlockSize == k, "gguf_linear: x has ", k,
              " columns but the weight has ", weight_blocks.size(1), " blocks of 32");
  TORCH_CHECK(out.scalar_type() == at::kFloat && out.is_contiguous() &&
                  out.dim() == 2 && out.size(0) == m && out.size(1) == n,
              "gguf_linear: out must be a contiguous (", m, ", ", n, ") float32 tensor");
  const float* bias_ptr = nullptr;
  if (bias.has_value()) {
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->is_contiguous() &&
                    bias->numel() == n,
                "gguf_linear: bias must be a contiguous (", n, ",) float32 tensor");
    bias_ptr = bias->data_ptr<float>();
  }
  if (m == 0 || n == 0) return;
  if (qtype == kTypeQ4_1) {
    run<Q4_1>(out, x, weight_blocks, bias_ptr);
  } else {
    run<Q8_0>(out, x, weight_blocks, bias_ptr);
  }
}
