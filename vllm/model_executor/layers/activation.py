"""Gated activations."""
import torch
import torch.nn.functional as F
from torch import nn


class SiluAndMul(nn.Module):
    """x = [gate, up] along the last dim -> silu(gate) * up (half the width).

    Works in place on the gate half of `x` and returns a view of it.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        gate = x[..., :half]  # (num_tokens, half)
        return F.silu(gate, inplace=True).mul_(x[..., half:])
