"""Repetition, frequency and presence penalties (OpenAI / vLLM semantics)."""

import torch


def apply_repetition_penalty(
    logits: torch.Tensor, penalties: torch.Tensor, seen_token_mask: torch.Tensor
) -> torch.Tensor:
    """Divide positive / multiply negative logits of tokens already seen
    (prompt or output) by the row's penalty."""
    penalty = penalties[:, None]  # (B, 1)
    scaled = torch.where(logits > 0, logits / penalty, logits * penalty)  # (B, V)
    if not ((penalties > 0) & torch.isfinite(penalties)).all():
        # a penalty that rounded to 0 or inf in float32 would make 0 * inf, inf / inf or
        # -inf * 0 NaN; 0 and +-inf are fixed points of every penalty
        fixed = (logits == 0) | torch.isinf(logits)  # (B, V)
        scaled = torch.where(fixed, logits, scaled)  # (B, V)
    return torch.where(seen_token_mask, scaled, logits)  # (B, V)


def apply_frequency_presence_penalties(
    logits: torch.Tensor,
    frequency_penalties: torch.Tensor,
    presence_penalties: torch.Tensor,
    output_token_counts: torch.Tensor,
) -> torch.Tensor:
    """Subtract freq * count + presence * (count > 0), counting output tokens only."""
    counts = output_token_counts.to(logits.dtype)  # (B, V)
    frequency_term = frequency_penalties[:, None] * counts  # (B, V)
    presence_term = presence_penalties[:, None] * (counts > 0)  # (B, V)
    return logits - frequency_term - presence_term  # (B, V)
