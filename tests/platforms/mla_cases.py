"""Random MLA batches over a paged latent cache, for comparing a backend's MLA implementation
with the CPU one layer by layer."""
from typing import NamedTuple

import torch
from torch import nn

from attn_cases import make_case
from vllm.attention.backend import CommonAttentionMetadata, MLADims

# 16-aligned sizes, as the Ascend MLA ops take them (R1: 128 heads, 512 + 64, 128 / 128)
NPU_DIMS = MLADims(num_heads=4, kv_lora_rank=64, qk_nope_head_dim=32, qk_rope_head_dim=16,
                   v_head_dim=32)


class MLACase(NamedTuple):
    q: torch.Tensor  # (T, H, nope + rope)
    kv_c: torch.Tensor  # (T, kv_lora_rank)
    k_pe: torch.Tensor  # (T, rope)
    cache: torch.Tensor  # (num_blocks, block_size, latent), cached prefixes filled
    common: CommonAttentionMetadata
    kv_b_weight: torch.Tensor  # (H * (nope + v), kv_lora_rank)
    dims: MLADims
    scale: float


def make_mla_case(requests: list[tuple[int, int]], dims: MLADims = NPU_DIMS,
                  block_size: int = 128, dtype=torch.float32, seed: int = 0) -> MLACase:
    """requests: (cached tokens, new tokens) each, decodes (new == 1) listed first."""
    gen = torch.Generator().manual_seed(seed + 1)
    paged = make_case(requests, num_heads=dims.num_heads, num_kv_heads=1,
                      head_size=dims.latent_size, block_size=block_size, seed=seed)
    total = paged.common.num_actual_tokens
    rows = dims.num_heads * (dims.qk_nope_head_dim + dims.v_head_dim)
    tensors = (torch.randn(total, dims.num_heads, dims.qk_head_dim, generator=gen),
               torch.randn(total, dims.kv_lora_rank, generator=gen),
               torch.randn(total, dims.qk_rope_head_dim, generator=gen),
               paged.kv_cache[0, :, :, 0].contiguous(),
               0.2 * torch.randn(rows, dims.kv_lora_rank, generator=gen))
    q, kv_c, k_pe, cache, weight = (t.to(dtype) for t in tensors)
    return MLACase(q, kv_c, k_pe, cache, paged.common, weight, dims, dims.qk_head_dim ** -0.5)


def run_mla(backend_cls, case: MLACase, chunk_tokens=None, **to
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(output (T, H, v), the cache after the step) of one layer's MLA implementation;
    inputs moved by `.to(**to)`; `chunk_tokens`: chunked context prefill in chunks of it."""
    cast = (lambda t: t.to(**to)) if to else (lambda t: t)  # noqa: E731
    kv_b_proj = nn.Linear(case.dims.kv_lora_rank, case.kv_b_weight.shape[0], bias=False)
    kv_b_proj.weight = nn.Parameter(cast(case.kv_b_weight), requires_grad=False)
    impl = backend_cls.mla_impl_cls(case.dims, case.scale, kv_b_proj)
    if chunk_tokens is not None:
        impl.enable_chunked_context_prefill()
        impl.context_chunk_tokens = chunk_tokens
    cache = cast(case.cache).clone()  # the case stays as made for the next backend
    metadata = backend_cls.build_metadata(case.common)
    with torch.no_grad():
        out = impl.forward(cast(case.q), cast(case.kv_c), cast(case.k_pe), cache, metadata)
    return out, cache
