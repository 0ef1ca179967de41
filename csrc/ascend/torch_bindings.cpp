// torch.ops._ascend_C.gather_kv / scatter_kv: launch the AscendC kernels of
// kv_copy_kernel.cpp on the current stream of the cache's NPU (callers may be KV transfer
// threads, whose current device is not necessarily the cache's). Semantics and shapes:
// vllm/attention/backends/npu_kv_copy.py.
#include <algorithm>
#include <mutex>
#include <unordered_map>

#include <torch/extension.h>
#include <torch/library.h>

#include "acl/acl.h"
#include "torch_npu/csrc/core/npu/NPUStream.h"
#include "torch_npu/csrc/core/npu/NPUGuard.h"

extern "C" {
void gather_kv_half_launch(uint32_t blocks, void* stream, void* cache, void* slots, void* out,
                           uint32_t n, uint32_t num_slots, uint32_t row);
void gather_kv_bf16_launch(uint32_t blocks, void* stream, void* cache, void* slots, void* out,
                           uint32_t n, uint32_t num_slots, uint32_t row);
void scatter_kv_half_launch(uint32_t blocks, void* stream, void* kv, void* slots, void* cache,
                            uint32_t n, uint32_t num_slots, uint32_t row, uint32_t copy_len,
                            uint32_t head_offset);
void scatter_kv_bf16_launch(uint32_t blocks, void* stream, void* kv, void* slots, void* cache,
                            uint32_t n, uint32_t num_slots, uint32_t row, uint32_t copy_len,
                            uint32_t head_offset);
}

namespace {

// One block per vector core at most (the kernels are built vector-only, dav-c220-vec):
// the device's count from aclrtGetDeviceInfo(ACL_DEV_ATTR_VECTOR_CORE_NUM) (CANN runtime
// API, aclrtDevAttr), asked once per device.
uint32_t vector_cores(int32_t device) {
  static std::mutex lock;
  static std::unordered_map<int32_t, uint32_t> cores;
  std::lock_guard<std::mutex> held(lock);
  auto found = cores.find(device);
  if (found != cores.end()) return found->second;
  int64_t count = 0;
  aclError status = aclrtGetDeviceInfo(static_cast<uint32_t>(device),
                                       ACL_DEV_ATTR_VECTOR_CORE_NUM, &count);
  TORCH_CHECK(status == ACL_SUCCESS && count > 0,
              "aclrtGetDeviceInfo(ACL_DEV_ATTR_VECTOR_CORE_NUM) failed on NPU ", device,
              " (error ", status, ")");
  return cores[device] = static_cast<uint32_t>(count);
}

uint32_t blocks_for(const at::Tensor& cache, int64_t n) {
  const int64_t most = vector_cores(cache.device().index());
  return static_cast<uint32_t>(std::max<int64_t>(1, std::min<int64_t>(n, most)));
}

void check_device(const at::Tensor& cache, const at::Tensor& other, const char* name) {
  TORCH_CHECK(other.device() == cache.device(), name, " is on ", other.device(),
              ", the cache on ", cache.device());
}

void check(const at::Tensor& cache, const at::Tensor& slots) {
  TORCH_CHECK(cache.dim() == 5 && cache.size(0) == 2 && cache.is_contiguous(),
              "kv_cache must be a contiguous (2, num_blocks, block_size, KVH, D) tensor");
  TORCH_CHECK(slots.dim() == 1 && slots.scalar_type() == at::kLong && slots.is_contiguous(),
              "slots must be a contiguous int64 vector");
  TORCH_CHECK(cache.scalar_type() == at::kHalf || cache.scalar_type() == at::kBFloat16,
              "kv_cache must be float16 or bfloat16");
}

void gather_kv(const at::Tensor& cache, const at::Tensor& slots, at::Tensor& out) {
  check(cache, slots);
  const int64_t n = slots.size(0), heads = cache.size(3), dim = cache.size(4);
  TORCH_CHECK(out.is_contiguous() && out.sizes() == at::IntArrayRef({2, n, heads, dim}) &&
                  out.scalar_type() == cache.scalar_type(), "out must be (2, n, KVH, D)");
  check_device(cache, slots, "slots");
  check_device(cache, out, "out");
  if (n == 0) return;
  c10_npu::OptionalNPUGuard guard(cache.device());
  void* stream = c10_npu::getCurrentNPUStream(cache.device().index()).stream();
  const uint32_t num_slots = cache.size(1) * cache.size(2), row = heads * dim;
  auto launch = cache.scalar_type() == at::kHalf ? gather_kv_half_launch : gather_kv_bf16_launch;
  launch(blocks_for(cache, n), stream, cache.data_ptr(), slots.data_ptr(), out.data_ptr(), n,
         num_slots, row);
}

void scatter_kv(at::Tensor& cache, const at::Tensor& slots, int64_t head_start,
                const at::Tensor& kv) {
  check(cache, slots);
  const int64_t n = slots.size(0), heads = cache.size(3), dim = cache.size(4);
  TORCH_CHECK(kv.is_contiguous() && kv.dim() == 4 && kv.size(0) == 2 && kv.size(1) == n &&
                  kv.size(3) == dim && kv.scalar_type() == cache.scalar_type(),
              "kv must be a contiguous (2, n, h, D) tensor of the cache dtype");
  TORCH_CHECK(head_start >= 0 && head_start + kv.size(2) <= heads, "head range out of cache");
  check_device(cache, slots, "slots");
  check_device(cache, kv, "kv");
  if (n == 0) return;
  c10_npu::OptionalNPUGuard guard(cache.device());
  void* stream = c10_npu::getCurrentNPUStream(cache.device().index()).stream();
  const uint32_t num_slots = cache.size(1) * cache.size(2), row = heads * dim;
  auto launch = cache.scalar_type() == at::kHalf ? scatter_kv_half_launch
                                                 : scatter_kv_bf16_launch;
  launch(blocks_for(cache, n), stream, kv.data_ptr(), slots.data_ptr(), cache.data_ptr(), n,
         num_slots, row, kv.size(2) * dim, head_start * dim);
}

}  // namespace

TORCH_LIBRARY(_ascend_C, m) {
  m.def("gather_kv(Tensor kv_cache, Tensor slots, Tensor(a!) out) -> ()");
  m.def("scatter_kv(Tensor(a!) kv_cache, Tensor slots, int head_start, Tensor kv) -> ()");
}

TORCH_LIBRARY_IMPL(_ascend_C, PrivateUse1, m) {
  m.impl("gather_kv", &gather_kv);
  m.impl("scatter_kv", &scatter_kv);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {}
