"""The attention layers models call; they dispatch to the platform's backend."""
from typing import Callable

import torch
from torch import nn

from vllm.attention.backend import AttentionBackend, MLADims
from vllm.attention.ops.mla import expand_latent
from vllm.attention.ops.sdpa import causal_attention
from vllm.forward_context import get_forward_context


def attention_backend() -> type[AttentionBackend]:
    from vllm.platforms import current_platform
    return current_platform.get_attn_backend_cls()


class PagedAttentionLayer(nn.Module):
    """An attention layer with one paged cache tensor, found in the forward context under
    `layer_name`; `impl` is the backend's implementation for it."""

    def __init__(self, prefix: str):
        super().__init__()
        self.layer_name = prefix

    def cache_shape(self, backend: type[AttentionBackend], num_blocks: int,
                    block_size: int) -> tuple[int, ...]:
        """Shape of this layer's cache tensor on this rank."""
        raise NotImplementedError

    def _forward_with_cache(self, compute: Callable) -> torch.Tensor:
        """compute(kv_cache, metadata), between the KV connector's hooks for this layer."""
        ctx = get_forward_context()
        kv_cache = ctx.kv_caches.get(self.layer_name)
        connector = ctx.kv_connector
        if connector is not None:
            connector.wait_for_layer_load(self.layer_name)
        out = compute(kv_cache, ctx.attn_metadata)
        if connector is not None:
            connector.save_kv_layer(self.layer_name, kv_cache)
        return out


def has_paged_context() -> bool:
    ctx = get_forward_context()
    return ctx is not None and ctx.attn_metadata is not None


class Attention(PagedAttentionLayer):
    """Attention over the paged KV cache of layer `prefix`.

    q: (num_tokens, num_heads * head_size); k, v: (num_tokens, num_kv_heads * head_size).
    Without a forward context, runs causal attention over the tokens as one sequence.
    """

    def __init__(self, num_heads: int, head_size: int, scale: float,
                 num_kv_heads: int, prefix: str = ""):
        super().__init__(prefix)
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of "
                             f"num_kv_heads ({num_kv_heads})")
        self.num_heads = num_heads
        self.head_size = head_size
        self.num_kv_heads = num_kv_heads
        self.scale = scale
        self.impl = attention_backend().impl_cls(num_heads, head_size, scale, num_kv_heads)

    def cache_shape(self, backend, num_blocks, block_size):
        return backend.get_kv_cache_shape(num_blocks, block_size, self.num_kv_heads,
                                          self.head_size)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        num_tokens = q.shape[0]
        q = q.view(num_tokens, self.num_heads, self.head_size)
        k = k.view(num_tokens, self.num_kv_heads, self.head_size)
        v = v.view(num_tokens, self.num_kv_heads, self.head_size)
        if has_paged_context():
            out = self._forward_with_cache(
                lambda kv_cache, metadata: self.impl.forward(q, k, v, kv_cache, metadata))
        else:
            out = causal_attention(q, k, v, self.scale)
        return out.reshape(num_tokens, self.num_heads * self.head_size)


class MLAAttention(PagedAttentionLayer):
    """Multi-head latent attention over the paged latent cache of layer `prefix`.

    q: (num_tokens, num_heads * qk_head_dim), rope part rotated; kv_c_normed:
    (num_tokens, kv_lora_rank); k_pe: (num_tokens, rope dim), rotated. Returns
    (num_tokens, num_heads * v_head_dim). `kv_b_proj` expands a latent into this rank's
    heads' keys and values (the model owns it; the backend may absorb it instead).
    Without a forward context, runs causal attention over the tokens as one sequence.
    """

    def __init__(self, dims: MLADims, scale: float, kv_b_proj, prefix: str = ""):
        super().__init__(prefix)
        backend = attention_backend()
        if backend.mla_impl_cls is None:
            raise ValueError(f"the {backend.name} attention backend has no MLA implementation "
                             "(issue 17)")
        self.dims = dims
        self.scale = scale
        self.impl = backend.mla_impl_cls(dims, scale, kv_b_proj)

    def cache_shape(self, backend, num_blocks, block_size):
        return backend.get_mla_cache_shape(num_blocks, block_size, self.dims.latent_size)

    def forward(self, q: torch.Tensor, kv_c_normed: torch.Tensor,
                k_pe: torch.Tensor) -> torch.Tensor:
        num_tokens = q.shape[0]
        q = q.view(num_tokens, self.dims.num_heads, self.dims.qk_head_dim)
        if has_paged_context():
            out = self._forward_with_cache(
                lambda kv_cache, metadata: self.impl.forward(q, kv_c_normed, k_pe, kv_cache,
                                                             metadata))
        else:
            keys, values = expand_latent(self.impl.kv_b_proj, self.dims, kv_c_normed, k_pe)
            out = causal_attention(q, keys, values, self.scale)
        return out.reshape(num_tokens, self.dims.num_heads * self.dims.v_head_dim)
