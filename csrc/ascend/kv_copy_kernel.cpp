// AscendC kernels for the KV push: gather a request's cache slots into a contiguous send
// buffer, and scatter received KV into cache slots (a head range of each slot).
// Semantics: vllm/attention/backends/npu_kv_copy.py (gather_kv_reference /
// scatter_kv_reference). Cache: (2, num_slots, KVH, D) viewed flat; slot = block * bs + off.
// Each AI core takes a contiguous share of the n tokens; rows move GM -> UB -> GM.
// DataCopy moves 32-byte units: copy_len * sizeof(T) must be a multiple of 32 (any head
// size of 16 or more in float16/bfloat16).
#include "kernel_operator.h"

using namespace AscendC;

constexpr int32_t BUFFER_NUM = 2;

template <typename T>
class KvRowCopy {
 public:
  __aicore__ inline void Init(GM_ADDR src, GM_ADDR dst, GM_ADDR slots, uint32_t n,
                              uint32_t num_slots, uint32_t row, uint32_t copy_len,
                              uint32_t head_offset, bool gather) {
    n_ = n; num_slots_ = num_slots; row_ = row; copy_len_ = copy_len;
    head_offset_ = head_offset; gather_ = gather;
    uint32_t per_core = (n + GetBlockNum() - 1) / GetBlockNum();
    begin_ = per_core * GetBlockIdx();
    end_ = begin_ + per_core < n ? begin_ + per_core : n;
    src_.SetGlobalBuffer((__gm__ T*)src);
    dst_.SetGlobalBuffer((__gm__ T*)dst);
    slots_.SetGlobalBuffer((__gm__ int64_t*)slots, n);
    pipe_.InitBuffer(queue_, BUFFER_NUM, copy_len * sizeof(T));
  }

  __aicore__ inline void Process() {
    for (uint32_t i = begin_; i < end_; ++i) {
      uint64_t slot = static_cast<uint64_t>(slots_.GetValue(i));
      for (uint32_t kv = 0; kv < 2; ++kv) {
        // gather: cache[kv, slot, :] -> buffer[kv, i, :]
        // scatter: buffer[kv, i, :h*D] -> cache[kv, slot, head_offset : head_offset + h*D]
        uint64_t cache_at = (kv * static_cast<uint64_t>(num_slots_) + slot) * row_;
        uint64_t buffer_at = (kv * static_cast<uint64_t>(n_) + i) * copy_len_;
        uint64_t from = gather_ ? cache_at : buffer_at;
        uint64_t to = gather_ ? buffer_at : cache_at + head_offset_;
        LocalTensor<T> staged = queue_.AllocTensor<T>();
        DataCopy(staged, src_[from], copy_len_);
        queue_.EnQue(staged);
        staged = queue_.DeQue<T>();
        DataCopy(dst_[to], staged, copy_len_);
        queue_.FreeTensor(staged);
      }
    }
  }

 private:
  TPipe pipe_;
  TQueBind<TPosition::VECIN, TPosition::VECOUT, BUFFER_NUM> queue_;
  GlobalTensor<T> src_, dst_;
  GlobalTensor<int64_t> slots_;
  uint32_t n_, num_slots_, row_, copy_len_, head_offset_, begin_, end_;
  bool gather_;
};

// row: KVH * D elements per slot. gather copies whole rows.
extern "C" __global__ __aicore__ void gather_kv_half(GM_ADDR cache, GM_ADDR slots, GM_ADDR out,
                                                     uint32_t n, uint32_t num_slots,
                                                     uint32_t row) {
  KvRowCopy<half> op;
  op.Init(cache, out, slots, n, num_slots, row, row, 0, true);
  op.Process();
}

extern "C" __global__ __aicore__ void gather_kv_bf16(GM_ADDR cache, GM_ADDR slots, GM_ADDR out,
                                                     uint32_t n, uint32_t num_slots,
                                                     uint32_t row) {
  KvRowCopy<bfloat16_t> op;
  op.Init(cache, out, slots, n, num_slots, row, row, 0, true);
  op.Process();
}

// copy_len: h * D elements received per slot, written at head_offset = head_start * D.
extern "C" __global__ __aicore__ void scatter_kv_half(GM_ADDR kv, GM_ADDR slots, GM_ADDR cache,
                                                      uint32_t n, uint32_t num_slots,
                                                      uint32_t row, uint32_t copy_len,
                                                      uint32_t head_offset) {
  KvRowCopy<half> op;
  op.Init(kv, cache, slots, n, num_slots, row, copy_len, head_offset, false);
  op.Process();
}

extern "C" __global__ __aicore__ void scatter_kv_bf16(GM_ADDR kv, GM_ADDR slots, GM_ADDR cache,
                                                      uint32_t n, uint32_t num_slots,
                                                      uint32_t row, uint32_t copy_len,
                                                      uint32_t head_offset) {
  KvRowCopy<bfloat16_t> op;
  op.Init(kv, cache, slots, n, num_slots, row, copy_len, head_offset, false);
  op.Process();
}
