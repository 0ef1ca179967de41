// Writing new tokens' keys and values (float32 or bfloat16) into the paged KV cache.
#include "ops.h"

#include <ATen/Parallel.h>

#include <cstring>

namespace {

bool is_cache_dtype(const torch::Tensor& t) {
  return t.scalar_type() == torch::kFloat || t.scalar_type() == torch::kBFloat16;
}

// Rows are copied bit for bit, so they must have the cache's dtype.
void check_token_rows(const torch::Tensor& rows, const char* name,
                      const torch::Tensor& cache) {
  TORCH_CHECK(rows.device().is_cpu() && rows.scalar_type() == cache.scalar_type(),
              "reshape_and_cache: ", name, " must be a CPU tensor of the cache's dtype (",
              cache.scalar_type(), "), got ", rows.scalar_type());
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
  TORCH_CHECK(key_cache.device().is_cpu() && is_cache_dtype(key_cache) &&
                  key_cache.dim() == 4 && key_cache.is_contiguous(),
              "reshape_and_cache: key_cache must be a contiguous float32 or bfloat16 CPU "
              "tensor (num_blocks, block_size, num_kv_heads, head_size)");
  TORCH_CHECK(value_cache.sizes() == key_cache.sizes() && value_cache.is_contiguous() &&
                  value_cache.scalar_type() == key_cache.scalar_type(),
              "reshape_and_cache: value_cache must match key_cache (shape, dtype) and be "
              "contiguous");
  check_token_rows(key, "key", key_cache);
  check_token_rows(value, "value", key_cache);
  TORCH_CHECK(slot_mapping.scalar_type() == torch::kLong && slot_mapping.dim() == 1 &&
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

  // Byte pointers: the copy is the same for every element size.
  const int64_t element = key_cache.element_size();
  const char* key_rows = static_cast<const char*>(key.data_ptr());
  const char* value_rows = static_cast<const char*>(value.data_ptr());
  char* key_slots = static_cast<char*>(key_cache.data_ptr());
  char* value_slots = static_cast<char*>(value_cache.data_ptr());
  const int64_t slot_bytes = num_kv_heads * head_size * element;
  const size_t head_bytes = head_size * element;
  const int64_t key_token_stride = key.stride(0) * element;  // in bytes
  const int64_t key_head_stride = key.stride(1) * element;
  const int64_t value_token_stride = value.stride(0) * element;
  const int64_t value_head_stride = value.stride(1) * element;
  at::parallel_for(0, num_tokens, /*grain_size=*/256, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      if (slots[t] < 0) continue;  // padding token: nothing to store
      char* key_slot = key_slots + slots[t] * slot_bytes;
      char* value_slot = value_slots + slots[t] * slot_bytes;
      for (int64_t h = 0; h < num_kv_heads; ++h) {
        std::memcpy(key_slot + h * head_bytes,
                    key_rows + t * key_token_stride + h * key_head_stride, head_bytes);
        std::memcpy(value_slot + h * head_bytes,
                    value_rows + t * value_token_stride + h * value_head_stride, head_bytes);
      }
    }
  });
}
