"""Plain PyTorch attention (float32 inside) the fake ops compute with."""
import torch


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor,
           scale: float) -> torch.Tensor:
    """q: (Lq, H, D); k, v: (Lk, KVH, D); allowed: (Lq, Lk) bool -> (Lq, H, D) float32."""
    group = q.shape[1] // k.shape[1]
    qf = q.float().transpose(0, 1)  # (H, Lq, D)
    kf = k.float().repeat_interleave(group, dim=1).transpose(0, 1)  # (H, Lk, D)
    vf = v.float().repeat_interleave(group, dim=1).transpose(0, 1)  # (H, Lk, D)
    scores = (qf @ kf.transpose(1, 2)) * scale  # (H, Lq, Lk)
    scores = scores.masked_fill(~allowed, float("-inf"))
    return (torch.softmax(scores, dim=-1) @ vf).transpose(0, 1)  # (Lq, H, D)


def paged_tokens(cache: torch.Tensor, ids: torch.Tensor, seq_len: int) -> torch.Tensor:
    """cache (num_blocks, block_size, ...) -> the sequence's first seq_len rows."""
    return cache[ids].flatten(0, 1)[:seq_len]


def causal(num_q: int, num_k: int, device) -> torch.Tensor:
    """(Lq, Lk) bool: query i sits at key position num_k - num_q + i."""
    q_pos = torch.arange(num_q, device=device).unsqueeze(1) + (num_k - num_q)
    return torch.arange(num_k, device=device).unsqueeze(0) <= q_pos
