"""PyTorch SDPA over one sequence, and gathering a sequence's K or V from the paged cache."""
import torch
import torch.nn.functional as F


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


def gather_sequence(cache: torch.Tensor, block_row: torch.Tensor, seq_len: int,
                    start: int = 0) -> torch.Tensor:
    """cache: (num_blocks, block_size, ...) -> tokens [start, seq_len) of the sequence whose
    blocks are `block_row`, (seq_len - start, ...)."""
    block_size = cache.shape[1]
    first_block, num_blocks = start // block_size, -(-seq_len // block_size)
    blocks = cache.index_select(0, block_row[first_block:num_blocks])  # (n, block_size, ...)
    offset = start - first_block * block_size
    return blocks.flatten(0, 1)[offset:offset + seq_len - start]
