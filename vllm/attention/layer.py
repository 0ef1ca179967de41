"""The attention layer models call; it dispatches to the platform's backend."""
import torch
import torch.nn.functional as F
from torch import nn

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
            out = self.impl.forward(q, k, v, kv_cache, ctx.attn_metadata)
            if ctx.kv_connector is not None:
                ctx.kv_connector.save_kv_layer(self.layer_name, kv_cache)
        return out.reshape(num_tokens, self.num_heads * self.head_size)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     scale: float, offset: int = 0) -> torch.Tensor:
    """q: (Lq, H, D); k, v: (Lk, KVH, D); query i sits at key position offset + i."""
    num_q = q.shape[0]
    num_k, group = k.shape[0], q.shape[1] // k.shape[1]
    # Contiguous (1, H, L, D) inputs take PyTorch's fastest CPU path (measured).
    qh = q.transpose(0, 1).unsqueeze(0).contiguous()  # (1, H, Lq, D)
    kh = k.transpose(0, 1).repeat_interleave(group, dim=0).unsqueeze(0)  # (1, H, Lk, D)
    vh = v.transpose(0, 1).repeat_interleave(group, dim=0).unsqueeze(0)  # (1, H, Lk, D)
    if offset == 0 and num_q == num_k:
        out = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, scale=scale)
    else:
        q_pos = torch.arange(num_q, device=q.device).unsqueeze(1) + offset  # (Lq, 1)
        mask = torch.arange(num_k, device=q.device).unsqueeze(0) <= q_pos  # (Lq, Lk)
        out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=scale)
    return out[0].transpose(0, 1)  # (Lq, H, D)
