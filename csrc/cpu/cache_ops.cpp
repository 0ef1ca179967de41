// Writing new tokens' keys and values into the paged KV cache.
#include "ops.h"

#include <ATen/Parallel.h>

#include <cstring>

namespace {

void check_token_rows(const torch::Tensor& rows, const char* name,
                      const torch::Tensor& cache) {
  TORCH_CHECK(rows.device().is_cpu() && rows.scalar_type() == torch::kFloat32,
              "reshape_and_cache: ", name, " must be a float32 CPU tensor");
  TORCH_CHECK(rows.dim() == 3 && rows.size(1) == cache.size(2) && rows.size(2) == cache.size(3),
              "reshape_and_cache: ", name, " shape ", rows.sizes(),
              " must be (num_tokens, num_kv_heads, head_size) matching the cache ",
              cache.sizes());
  TORCH_CHECK(rows.stride(2) == 1, "reshape_and_cache: ", name,
              " needs a contiguous last dim");
}

}  // namespace

void reshape_and_cache(const torch::Tensor& key, const torch::Tensor& value,
                       torch::Tensor& key_cache, torch::Tensor& value_cache,
                       const torch::Tensor& slot_mapping) {
  TORCH_CHECK(key_cache.device().is_cpu() && key_cache.scalar_type() == torch::kFloat32 &&
                  key_cache.dim() == 4 && key_cache.is_contiguous(),
              "reshape_and_cache: key_cache must be a contiguous float32 CPU tensor "
              "(num_blocks, block_size, num_kv_heads, head_size)");
  TORCH_CHECK(value_cache.sizes() == key_cache.sizes() && value_cache.is_contiguous() &&
                  value_cache.scalar_type() == torch::kFloat32,
              "reshape_and_cache: value_cache must match key_cache and be contiguous");
  check_token_rows(key, "key", key_cache);
  check_token_rows(value, "value", key_cache);
  TORCH_CHECK(slot_mapping.scalar_type() == torch::kInt64 && slot_mapping.dim() == 1 &&
                  slot_mapping.is_contiguous() && slot_mapping.size(0) == key.size(0) &&
                  value.size(0) == key.size(0),
              "reshape_and_cache: slot_mapping must be a contiguous int64 (num_tokens,) "
              "tensor with one slot per key/value row");

  const int64_t num_tokens = key.size(0);
  const int64_t num_kv_heads = key_cache.size(2);
  const int64_t head_size = key_cache.size(3);
  const int64_t num_slots = key_cache.size(0) * key_cache.size(1);
  const int64_t* slots = slot_mapping.data_ptr<int64_t>();
  for (int64_t t = 0; t < num_tokens; ++t) {
    TORCH_CHECK(slots[t] < num_slots, "reshape_and_cache: slot_mapping[", t, "] = ", slots[t],
                " is outside the cache (", num_slots, " slots)");
  }

  const float* key_rows = key.data_ptr<float>();
  const float* value_rows = value.data_ptr<float>();
  float* key_slots = key_cache.data_ptr<float>();
  float* value_slots = value_cache.data_ptr<float>();
  const int64_t slot_floats = num_kv_heads * head_size;
  const size_t head_bytes = head_size * sizeof(float);
  const int64_t key_token_stride = key.stride(0), key_head_stride = key.stride(1);
  const int64_t value_token_stride = value.stride(0), value_head_stride = value.stride(1);
  at::parallel_for(0, num_tokens, /*grain_size=*/256, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      if (slots[t] < 0) continue;  // padding token: nothing to store
      float* key_slot = key_slots + slots[t] * slot_floats;
      float* value_slot = value_slots + slots[t] * slot_floats;
      for (int64_t h = 0; h < num_kv_heads; ++h) {
        std::memcpy(key_slot + h * head_size,
                    key_rows + t * key_token_stride + h * key_head_stride, head_bytes);
        std::memcpy(value_slot + h * head_size,
                    value_rows + t * value_token_stride + h * value_head_stride, head_bytes);
      }
    }
  });
}
