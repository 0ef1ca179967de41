// Host-side launchers compiled by bisheng with the kernels (the <<<blocks, l2ctrl, stream>>>
// launch syntax of AscendC kernel calls).
#include "kernel_operator.h"
#include "kv_copy_kernel.cpp"

extern "C" void gather_kv_half_launch(uint32_t blocks, void* stream, void* cache, void* slots,
                                      void* out, uint32_t n, uint32_t num_slots, uint32_t row) {
  gather_kv_half<<<blocks, nullptr, stream>>>((GM_ADDR)cache, (GM_ADDR)slots, (GM_ADDR)out, n,
                                              num_slots, row);
}

extern "C" void gather_kv_bf16_launch(uint32_t blocks, void* stream, void* cache, void* slots,
                                      void* out, uint32_t n, uint32_t num_slots, uint32_t row) {
  gather_kv_bf16<<<blocks, nullptr, stream>>>((GM_ADDR)cache, (GM_ADDR)slots, (GM_ADDR)out, n,
                                              num_slots, row);
}

extern "C" void scatter_kv_half_launch(uint32_t blocks, void* stream, void* kv, void* slots,
                                       void* cache, uint32_t n, uint32_t num_slots, uint32_t row,
                                       uint32_t copy_len, uint32_t head_offset) {
  scatter_kv_half<<<blocks, nullptr, stream>>>((GM_ADDR)kv, (GM_ADDR)slots, (GM_ADDR)cache, n,
                                               num_slots, row, copy_len, head_offset);
}

extern "C" void scatter_kv_bf16_launch(uint32_t blocks, void* stream, void* kv, void* slots,
                                       void* cache, uint32_t n, uint32_t num_slots, uint32_t row,
                                       uint32_t copy_len, uint32_t head_offset) {
  scatter_kv_bf16<<<blocks, nullptr, stream>>>((GM_ADDR)kv, (GM_ADDR)slots, (GM_ADDR)cache, n,
                                               num_slots, row, copy_len, head_offset);
}
