"""Copying a request's KV slots out of the cache and back in (the KV push).

The AscendC kernels (csrc/ascend, built as ``vllm._ascend_C`` where CANN is installed) are
used when they load; the PyTorch references below run everywhere else and define the
semantics the kernels must match (tests/platforms/test_ascend_kernels.py).
Cache layout: (2, num_blocks, block_size, KVH, D); slot = block_id * block_size + offset.
"""
import torch

try:
    import vllm._ascend_C  # noqa: F401  (loading it registers torch.ops._ascend_C.*)
    HAS_ASCEND_KERNELS = hasattr(torch.ops._ascend_C, "gather_kv")
except ImportError:
    HAS_ASCEND_KERNELS = False


def gather_kv(kv_cache: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """Keys and values of the slots as one contiguous send buffer (2, n, KVH, D)."""
    if HAS_ASCEND_KERNELS and kv_cache.device.type != "cpu":
        out = kv_cache.new_empty((2, slots.numel()) + tuple(kv_cache.shape[3:]))
        torch.ops._ascend_C.gather_kv(kv_cache, slots.to(torch.int64), out)
        return out
    return gather_kv_reference(kv_cache, slots)


def scatter_kv(kv_cache: torch.Tensor, slots: torch.Tensor, head_start: int,
               kv: torch.Tensor) -> None:
    """Write kv (2, n, h, D) into heads [head_start, head_start + h) of the slots."""
    if HAS_ASCEND_KERNELS and kv_cache.device.type != "cpu":
        torch.ops._ascend_C.scatter_kv(kv_cache, slots.to(torch.int64), head_start,
                                       kv.contiguous())
        return
    scatter_kv_reference(kv_cache, slots, head_start, kv)


def gather_kv_reference(kv_cache: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    flat = kv_cache.flatten(1, 2)  # (2, num_slots, KVH, D), a view
    return flat.index_select(1, slots)  # (2, n, KVH, D), a copy


def scatter_kv_reference(kv_cache: torch.Tensor, slots: torch.Tensor, head_start: int,
                         kv: torch.Tensor) -> None:
    flat = kv_cache.flatten(1, 2)  # (2, num_slots, KVH, D), a view
    flat[:, slots, head_start:head_start + kv.shape[2]] = kv
