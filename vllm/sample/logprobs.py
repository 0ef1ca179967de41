"""Logprobs of the sampled token and of each row's top-k tokens."""

from typing import NamedTuple

import torch


class LogprobsTensors(NamedTuple):
    """Column 0 is the sampled token, columns 1..k the row's top-k tokens."""

    token_ids: torch.Tensor  # (B, k + 1) int64
    logprobs: torch.Tensor  # (B, k + 1) float32
    sampled_rank: torch.Tensor  # (B,) int64, 1-based rank of the sampled token


def gather_logprobs(
    logprobs: torch.Tensor, sampled_token_ids: torch.Tensor, num_logprobs: int
) -> LogprobsTensors:
    """Pick the sampled token's and the top ``num_logprobs`` logprobs of each row."""
    top_logprobs, top_ids = logprobs.topk(num_logprobs, dim=-1)  # (B, k)
    sampled_ids = sampled_token_ids[:, None]  # (B, 1)
    sampled_logprobs = logprobs.gather(1, sampled_ids)  # (B, 1)
    rank = (logprobs >= sampled_logprobs).sum(dim=-1)  # (B,)
    return LogprobsTensors(
        token_ids=torch.cat([sampled_ids, top_ids], dim=1),  # (B, k + 1)
        logprobs=torch.cat([sampled_logprobs, top_logprobs], dim=1),  # (B, k + 1)
        sampled_rank=rank,
    )
