"""Filters that remove unlikely tokens before random sampling (min_p, top_k, top_p)."""

import torch


def apply_min_p(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Drop tokens whose probability is below min_p times the row's top probability."""
    probs = logits.softmax(dim=-1)  # (B, V)
    threshold = probs.amax(dim=-1, keepdim=True) * min_p[:, None]  # (B, 1)
    return logits.masked_fill(probs < threshold, float("-inf"))  # (B, V)


def apply_top_k_top_p(
    logits: torch.Tensor, top_k: torch.Tensor | None, top_p: torch.Tensor | None
) -> torch.Tensor:
    """Keep each row's top_k tokens, then the smallest set reaching top_p mass.

    top_k is (B,) int64 with vocab_size where disabled; top_p is (B,) with 1.0
    where disabled; either may be None. The top token always survives
    (rows need a finite maximum: the sampler shifts it to 0).
    """
    sorted_logits, sorted_ids = logits.sort(dim=-1, descending=True)  # (B, V)
    drop = torch.zeros_like(sorted_logits, dtype=torch.bool)  # (B, V)
    if top_k is not None:
        positions = torch.arange(logits.shape[-1])  # (V,)
        drop |= positions[None, :] >= top_k[:, None]
    if top_p is not None:
        probs = sorted_logits.masked_fill(drop, float("-inf")).softmax(dim=-1)  # (B, V)
        mass_before = probs.cumsum(dim=-1) - probs  # (B, V)
        drop |= mass_before >= top_p[:, None]
    drop[:, 0] = False  # a top_p that rounds to 0 in float32 would drop the top token too
    drop_in_vocab_order = torch.empty_like(drop).scatter_(1, sorted_ids, drop)  # (B, V)
    return logits.masked_fill(drop_in_vocab_order, float("-inf"))  # (B, V)
