// Registers the CPU ops as torch.ops._C.* and makes vllm._C an importable
// Python module (importing it is what loads the registrations).
#include <torch/extension.h>

#include "ops.h"

TORCH_LIBRARY_FRAGMENT(_C, ops) {
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
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.doc() = "vLLM CPU kernels; the ops live in torch.ops._C";
}
