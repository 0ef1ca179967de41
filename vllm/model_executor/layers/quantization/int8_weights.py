"""The int8 weights of W8A8 layers and the interface of a platform's W8A8 kernels (data
and contract only: int8_kernels.py runs them, platforms/ implement them)."""
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class Int8Weight:
    """A linear layer's int8 weight (out_features, in_features) and its per-output-channel
    float32 scale; platforms may add a packed copy in `packed`."""
    qweight: torch.Tensor  # (N, K) int8
    scale: torch.Tensor  # (N,) float32
    packed: Optional[object] = None

    @property
    def out_features(self) -> int:
        return self.qweight.shape[0]


@dataclass
class Int8Experts:
    """A MoE layer's int8 expert weights (E, out_features, in_features) and their
    per-expert, per-output-channel float32 scales; platforms may add a packed copy."""
    qweight: torch.Tensor  # (E, N, K) int8
    scale: torch.Tensor  # (E, N) float32
    packed: Optional[object] = None


class W8A8Kernels:
    """A platform's W8A8 kernels. Each linear returns None where it does not take these
    arguments (the reference then runs); `pack` makes the form its kernels read, once per
    weight (stored in Int8Weight.packed)."""

    def pack(self, weight: Int8Weight) -> object:
        raise NotImplementedError

    def packed(self, weight: Int8Weight) -> object:
        """weight.packed, packed now if it was not at load."""
        if weight.packed is None:
            weight.packed = self.pack(weight)
        return weight.packed

    def dynamic_linear(self, x: torch.Tensor, weight: Int8Weight,
                       bias: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        return None

    def static_linear(self, x: torch.Tensor, weight: Int8Weight, input_scale: torch.Tensor,
                      input_offset: torch.Tensor, quant_bias: torch.Tensor,
                      deq_scale: torch.Tensor) -> Optional[torch.Tensor]:
        return None

    def grouped_dynamic_linear(self, x: torch.Tensor, experts: Int8Experts,
                               group_sizes: torch.Tensor) -> Optional[torch.Tensor]:
        return None
