"""RMS normalisation, optionally fused with the residual add before it."""
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight.

    `forward(x)` returns y; `forward(x, residual)` first adds `residual` into `x`
    in place and returns `(y, x)`, the sum being the next residual.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        if hidden_size < 1 or eps < 0:
            raise ValueError(f"RMSNorm needs hidden_size >= 1 and eps >= 0, got "
                             f"{hidden_size}, {eps}")
        self.hidden_size = hidden_size
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size), requires_grad=False)

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None
                ) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        if residual is None:
            return F.rms_norm(x, (self.hidden_size,), self.weight, self.eps)
        x.add_(residual)  # (num_tokens, hidden_size), becomes the new residual
        return F.rms_norm(x, (self.hidden_size,), self.weight, self.eps), x

    def extra_repr(self) -> str:
        return f"{self.hidden_size}, eps={self.eps}"
