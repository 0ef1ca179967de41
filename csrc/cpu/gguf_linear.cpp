// y = x W^T (+ b) with W kept in GGUF blocks: each block is dequantised in
// registers and used for every row of x, so a small batch streams the packed
// weights (0.6-1.1 bytes per weight) instead of float32 ones (4 bytes).
#include <ATen/Parallel.h>

#include <vector>

#include "gguf_blocks.h"
#include "isa.h"
#include "ops.h"

namespace {

using namespace vllm_cpu::gguf;

// Output rows (weight rows) handed to one task; a multiple of kTileN.
constexpr int64_t kRowsPerTask = 16;
constexpr int kTileN = 2;  // weight rows dequantised together
constexpr int kTileM = 8;  // rows of x that reuse them

struct Problem {
  const float* x;       // (m, k)
  const uint8_t* w;     // (n, k / 32, bytes per block)
  const float* bias;    // (n,) or nullptr
  float* out;           // (m, n)
  int64_t m, n, k;
};

#if VLLM_CPU_AVX512

// out[0:MR, n0:n0+NR] for x rows [m0, m0 + MR).
template <typename Block, int MR, int NR>
void tile(const Problem& p, int64_t m0, int64_t n0) {
  const int64_t blocks = p.k / kBlockSize;
  const int64_t row_bytes = blocks * Block::kBytes;
  __m512 acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int64_t b = 0; b < blocks; ++b) {
    __m512 w_lo[NR], w_hi[NR];
    for (int j = 0; j < NR; ++j)
      Block::dequantize(p.w + (n0 + j) * row_bytes + b * Block::kBytes, w_lo[j], w_hi[j]);
    for (int i = 0; i < MR; ++i) {
      const float* xi = p.x + (m0 + i) * p.k + b * kBlockSize;
      const __m512 x_lo = _mm512_loadu_ps(xi);
      const __m512 x_hi = _mm512_loadu_ps(xi + 16);
      for (int j = 0; j < NR; ++j) {
        acc[i][j] = _mm512_fmadd_ps(w_lo[j], x_lo, acc[i][j]);
        acc[i][j] = _mm512_fmadd_ps(w_hi[j], x_hi, acc[i][j]);
      }
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) {
      const float b = p.bias ? p.bias[n0 + j] : 0.0f;
      p.out[(m0 + i) * p.n + n0 + j] = _mm512_reduce_add_ps(acc[i][j]) + b;
    }
}

template <typename Block, int NR>
void rows_tile(const Problem& p, int64_t n0) {
  int64_t m0 = 0;
  for (; m0 + kTileM <= p.m; m0 += kTileM) tile<Block, kTileM, NR>(p, m0, n0);
  switch (p.m - m0) {
    case 7: tile<Block, 7, NR>(p, m0, n0); break;
    case 6: tile<Block, 6, NR>(p, m0, n0); break;
    case 5: tile<Block, 5, NR>(p, m0, n0); break;
    case 4: tile<Block, 4, NR>(p, m0, n0); break;
    case 3: tile<Block, 3, NR>(p, m0, n0); break;
    case 2: tile<Block, 2, NR>(p, m0, n0); break;
    case 1: tile<Block, 1, NR>(p, m0, n0); break;
    default: break;
  }
}

template <typename Block>
void weight_rows(const Problem& p, int64_t n_begin, int64_t n_end) {
  int64_t n0 = n_begin;
  for (; n0 + kTileN <= n_end; n0 += kTileN) rows_tile<Block, kTileN>(p, n0);
  for (; n0 < n_end; ++n0) rows_tile<Block, 1>(p, n0);
}

#else  // portable: dequantise one weight row, then dot it with every row of x

template <typename Block>
void weight_rows(const Problem& p, int64_t n_begin, int64_t n_end) {
  const int64_t blocks = p.k / kBlockSize;
  std::vector<float> row(p.k);
  for (int64_t n = n_begin; n < n_end; ++n) {
    const uint8_t* w = p.w + n * blocks * Block::kBytes;
    for (int64_t b = 0; b < blocks; ++b)
      Block::dequantize(w + b * Block::kBytes, row.data() + b * kBlockSize);
    for (int64_t i = 0; i < p.m; ++i) {
      const float* xi = p.x + i * p.k;
      float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
      for (int64_t c = 0; c < p.k; ++c) sum += row[c] * xi[c];
      p.out[i * p.n + n] = sum + (p.bias ? p.bias[n] : 0.0f);
    }
  }
}

#endif

template <typename Block>
void run(const Problem& p) {
  at::parallel_for(0, p.n, kRowsPerTask, [&](int64_t begin, int64_t end) {
    weight_rows<Block>(p, begin, end);
  });
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
  const Problem p{x.data_ptr<float>(), weight_blocks.data_ptr<uint8_t>(), bias_ptr,
                  out.data_ptr<float>(), m, n, k};
  if (qtype == kTypeQ4_1) {
    run<Q4_1>(p);
  } else {
    run<Q8_0>(p);
  }
}
