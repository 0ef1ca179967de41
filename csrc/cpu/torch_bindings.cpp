// Registers the CPU ops as torch.ops._C_<isa>.* and makes vllm._C_<isa> an
// importable Python module (importing it is what loads the registrations).
#include <torch/extension.h>

#include "isa.h"
#include "ops.h"

namespace {


// What this build's code paths are, checked against its name by the tests.
std::string built_isa() {
  if (VLLM_CPU_AVX512) return "avx512";
  if (VLLM_CPU_AVX2) return "avx2";
  if (VLLM_CPU_NEON) return "neon";
  return "portable";
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(VLLM_CPU_OPS_NAMESPACE, ops) {
  ops.def("built_isa() -> str", &built_isa);
  ops.def("fma_peak_gflops(int iterations) -> float", &fma_peak_gflops);
  ops.def(
      "paged_attention_decode(Tensor(a!) out, Tensor query, Tensor key_cache, "
      "Tensor value_cache, Tensor block_table, Tensor seq_lens, float scale) -> ()");
  ops.impl("paged_attention_decode", torch::kCPU, &paged_attention_decode);
  ops.def(
      "reshape_and_cache(Tensor key, Tensor value, Tensor(a!) key_cache, "
      "Tensor(b!) value_cache, Tensor slot_mapping) -> ()");
  ops.impl("reshape_and_cache", torch::kCPU, &reshape_and_cache);
  ops.def(
      "gguf_linear(Tensor(a!) out, Tensor x, Tensor weight_blocks, int qtype, "
      "Tensor? bias) -> ()");
  ops.impl("gguf_linear", torch::kCPU, &gguf_linear);
  ops.def(
      "exponential_race_sample(Tensor(a!) out, Tensor logits, Tensor seeds, "
      "Tensor positions) -> ()");
  ops.impl("exponential_race_sample", torch::kCPU, &exponential_race_sample);
  ops.def("dense_linear(Tensor(a!) out, Tensor x, Tensor weight, Tensor? bias) -> ()");
  ops.impl("dense_linear", torch::kCPU, &dense_linear);
  ops.def("panel_width() -> int", &panel_width);
  ops.def("panel_linear(Tensor(a!) out, Tensor x, Tensor panels, Tensor? bias) -> ()");
  ops.impl("panel_linear", torch::kCPU, &panel_linear);
  ops.def(
      "int8_linear(Tensor(a!) out, Tensor x_q, Tensor weight, Tensor weight_sums, "
      "Tensor? x_scale, Tensor w_scale, Tensor? bias, Tensor? acc_bias) -> ()");
  ops.impl("int8_linear", torch::kCPU, &int8_linear);
  ops.def("int8_dot_product() -> str", &int8_dot_product);
  ops.def(
      "int8_linear_dynamic(Tensor(a!) out, Tensor x, Tensor weight, Tensor weight_sums, "
      "Tensor w_scale, Tensor? bias) -> ()");
  ops.impl("int8_linear_dynamic", torch::kCPU, &int8_linear_dynamic);
  ops.def("int8_quantize_dynamic(Tensor(a!) x_q, Tensor(b!) scale, Tensor x) -> ()");
  ops.impl("int8_quantize_dynamic", torch::kCPU, &int8_quantize_dynamic);
  ops.def("int8_quantize_static(Tensor(a!) x_q, Tensor x, float scale, float offset) -> ()");
  ops.impl("int8_quantize_static", torch::kCPU, &int8_quantize_static);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.doc() = "vLLM CPU kernels for one instruction set; the ops live in torch.ops._C_<isa>";
}
