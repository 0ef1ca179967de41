"""The attention layer models call; it dispatches to the platform's backend."""
import torch
from torch import nn

from vllm.attention.ops.sdpa import causal_attention
from vllm.forward_context import get_forward_context


class Attention(nn.Module):
    """Attention over the paged KV cache of layer `prefix`.

    q: (num_tokens, num_heads * head_size); k, v: (num_tokens, num_kv_heads * head_size).
    Without a forward context, runs causal attention over the tokens as one sequence.
    """

    def __init__(self, num_heads: int, head_size: int, scale: float,
                 num_kv_heads: int, prefix: str = ""):
        super().__init__()
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of "
                             f"num_kv_heads ({num_kv_heads})")
        self.num_heads = num_heads
        self.head_size = head_size
        self.num_kv_heads = num_kv_heads
        self.scale = scale
        self.layer_name = prefix
        from vllm.platforms import current_platform
        self.impl = current_platform.get_attn_backend_cls().impl_cls(
            num_heads, head_size, scale, num_kv_heads)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        num_tokens = q.shape[0]
        q = q.view(num_tokens, self.num_heads, self.head_size)
        k = k.view(num_tokens, self.num_kv_heads, self.head_size)
        v = v.view(num_tokens, self.num_kv_heads, self.head_size)
        ctx = get_forward_context()
        if ctx is None or ctx.attn_metadata is None:
            out = causal_attention(q, k, v, self.scale)
        else:
            kv_cache = ctx.kv_caches.get(self.layer_name)
            connector = ctx.kv_connector
            if connector is not None:
                connector.wait_for_layer_load(self.layer_name)
            out = self.impl.forward(q, k, v, kv_cache, ctx.attn_metadata)
            if connector is not None:
                connector.save_kv_layer(self.layer_name, kv_cache)
        return out.reshape(num_tokens, self.num_heads * self.head_size)

