// Declarations of the CPU ops registered by vllm._C_<isa> (torch.ops._C_<isa>.*).
#pragma once

// The tensor type alone, not <torch/all.h>: every kernel file includes this header, and
// the whole C++ frontend costs ~25 s of compile per file and ISA build (torch_bindings.cpp
// includes <torch/extension.h> for the registration).
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>

namespace torch {
using at::Tensor;
using namespace c10;  // the scalar types and devices: kCPU, kFloat, kBFloat16, kInt, kLong
}  // namespace torch

// Decode attention over a paged KV cache (one query token per sequence).
//   out, query:  (num_seqs, num_heads, head_size) float32 or bfloat16 (both the
//                same), last dim contiguous
//   key_cache, value_cache: (num_blocks, block_size, num_kv_heads, head_size)
//                float32 or bfloat16 (both the same, not necessarily the
//                query's), contiguous
//   block_table: (num_seqs, max_blocks_per_seq) int32, last dim contiguous
//   seq_lens:    (num_seqs,) int32, cached tokens to attend to per sequence
// Query head h reads kv head h / (num_heads / num_kv_heads). `out` may be
// the same tensor as `query`. Arithmetic is float32 whatever the dtypes; a
// bfloat16 out is rounded to nearest even.
void paged_attention_decode(torch::Tensor& out, const torch::Tensor& query,
                            const torch::Tensor& key_cache,
                            const torch::Tensor& value_cache,
                            const torch::Tensor& block_table,
                            const torch::Tensor& seq_lens, double scale);

// Stores token t's key and value rows at cache slot slot_mapping[t]
// (slot = block_id * block_size + offset); negative slots are skipped.
//   key, value:  (num_tokens, num_kv_heads, head_size) of the cache's dtype, last dim
//                contiguous
//   key_cache, value_cache: (num_blocks, block_size, num_kv_heads, head_size) float32
//                or bfloat16, contiguous
//   slot_mapping: (num_tokens,) int64
void reshape_and_cache(const torch::Tensor& key, const torch::Tensor& value,
                       torch::Tensor& key_cache, torch::Tensor& value_cache,
                       const torch::Tensor& slot_mapping);

// y = x W^T (+ bias) with W in GGUF blocks of 32 weights (see gguf_blocks.h).
//   out:           (m, n) float32, contiguous
//   x:             (m, k) float32, contiguous; k a multiple of 32
//   weight_blocks: (n, k / 32, block bytes) uint8, contiguous: row r of W
//   qtype:         the ggml type: 3 = Q4_1 (20 bytes), 8 = Q8_0 (34 bytes)
//   bias:          (n,) float32 or None
// Meant for small m (decode batches): each block is dequantised once per
// register tile of x rows (linear_tiles.h). Row-invariant (below).
void gguf_linear(torch::Tensor& out, const torch::Tensor& x,
                 const torch::Tensor& weight_blocks, int64_t qtype,
                 const std::optional<torch::Tensor>& bias);

// y = x W^T (+ bias) with float32 W, in the same register tiles as gguf_linear.
//   out:    (m, n) float32, contiguous
//   x:      (m, k) float32, contiguous; any k
//   weight: (n, k) float32, contiguous
//   bias:   (n,) float32 or None
// Slower than MKL's GEMM at large m; it exists for its row invariance.
//
// Row invariance (gguf_linear and dense_linear, every ISA build): out[i, :] is bit
// for bit the same whatever m is, whatever the other rows of x hold and however many
// threads run. Each output is one fixed sequence of float32 operations: lane-wise
// fused multiply-adds over k in a fixed order, a fixed horizontal sum, then + bias;
// the tile an output falls in and the thread that computes it do not change it.
// (Different ISA builds round differently: the lanes differ.) A batch-invariant mode
// relies on this.
void dense_linear(torch::Tensor& out, const torch::Tensor& x, const torch::Tensor& weight,
                  const std::optional<torch::Tensor>& bias);

// Samples one token per row by an exponential race (Gumbel-max) over counter-based noise.
//   out:       (rows,) int64, contiguous
//   logits:    (rows, vocab) float32, vocab > 0, last dim contiguous (need not sum to
//              anything: log-probabilities up to a constant per row)
//   seeds, positions: (rows,) int64, contiguous; any values (used as 64-bit words)
// out[r] is the lowest index among the largest keys logits[r, i] - log(-log(u_i)), u_i the
// uniform of (seeds[r], positions[r], i) in counter_rng.h: token i with probability
// softmax(logits[r])_i. NaN logits never win; a row without a key above -inf gets 0; +inf
// logits beat every finite one (the first of them wins).
void exponential_race_sample(torch::Tensor& out, const torch::Tensor& logits,
                             const torch::Tensor& seeds, const torch::Tensor& positions);

// float32 GFLOP/s of `iterations` rounds of independent FMA chains on every
// thread of at::get_num_threads(), in this build's widest registers.
double fma_peak_gflops(int64_t iterations);

// y = x W^T (+ bias) with float32 W packed once into panels (panel_linear.cpp): the
// large-batch GEMM. Panel p holds W's rows [p * width, (p + 1) * width) column by
// column: panels[p, c, r] = W[p * width + r, c], zeros past W's last row.
//   out:    (m, n) float32, contiguous
//   x:      (m, k) float32, contiguous
//   panels: (ceil(n / width), k, width) float32, contiguous; width = panel_width()
//   bias:   (n,) float32 or None
// Row invariant like dense_linear, but with its own summation order (one lane per
// output, k in order), so its rows differ from dense_linear's and gguf_linear's.
int64_t panel_width();
void panel_linear(torch::Tensor& out, const torch::Tensor& x, const torch::Tensor& panels,
                  const std::optional<torch::Tensor>& bias);

// W8A8 linear (int8_linear.cpp): exact int32 sums of int8 x int8, then, in float32 and in
// this order (vllm/model_executor/layers/quantization/int8_kernels.py, bit for bit):
//   out[i, j] = float(acc[i, j] + acc_bias[j]) * x_scale[i] * w_scale[j] + bias[j]
// where each optional term that is None is left out (dynamic: x_scale and maybe bias;
// static: acc_bias). acc = x_q W^T wraps as int32.
//   out:         (m, n) float32, contiguous
//   x_q:         (m, k) int8, contiguous
//   weight:      (n, k) int8, contiguous, as the checkpoint stores it
//   weight_sums: (n,) int32, each weight row's sum (the VNNI path needs it)
//   x_scale:     (m,) float32 or None;  w_scale: (n,) float32
//   bias:        (n,) float32 or None;  acc_bias: (n,) int32 or None
// int8_dot_product() names the instructions this build's CPU runs for it.
void int8_linear(torch::Tensor& out, const torch::Tensor& x_q, const torch::Tensor& weight,
                 const torch::Tensor& weight_sums, const std::optional<torch::Tensor>& x_scale,
                 const torch::Tensor& w_scale, const std::optional<torch::Tensor>& bias,
                 const std::optional<torch::Tensor>& acc_bias);
std::string int8_dot_product();

// Per-row symmetric int8 of float32 x (m, k): scale[i] = amax_i / 127 (1 for an all-zero
// row), x_q = round_half_even(x / scale) clamped to [-127, 127].
void int8_quantize_dynamic(torch::Tensor& x_q, torch::Tensor& scale, const torch::Tensor& x);

// int8_quantize_dynamic then int8_linear (dynamic: x_scale from the quantisation), in one
// call: x (m, k) float32, contiguous; out, weight, weight_sums, w_scale, bias as above.
void int8_linear_dynamic(torch::Tensor& out, const torch::Tensor& x, const torch::Tensor& weight,
                         const torch::Tensor& weight_sums, const torch::Tensor& w_scale,
                         const std::optional<torch::Tensor>& bias);

// Per-tensor int8: x_q = round_half_even(x / scale + offset) clamped to [-128, 127], the
// arithmetic in float32 (scale and offset are float32 values passed as doubles).
void int8_quantize_static(torch::Tensor& x_q, const torch::Tensor& x, double scale,
                          double offset);
