"""Attention kernels (CPU) and their PyTorch references."""

from vllm.attention.ops.paged_attention import (
    HAS_CPU_KERNEL,
    paged_attention_decode,
    paged_attention_decode_reference,
    reshape_and_cache,
    reshape_and_cache_reference,
)

__all__ = [
    "HAS_CPU_KERNEL",
    "paged_attention_decode",
    "paged_attention_decode_reference",
    "reshape_and_cache",
    "reshape_and_cache_reference",
]
