"""Float32 weights packed once into panels for the CPU's mid-sized-batch GEMM (panel_linear)."""
from typing import Callable

import torch
from torch import nn


def pack_panels(weight: torch.Tensor, width: int) -> torch.Tensor:
    """(n, k) -> (ceil(n / width), k, width): panel p, column c holds rows p * width ...
    of column c side by side; rows past n are zeros."""
    rows, cols = weight.shape
    num_panels = -(-rows // width)
    padded = weight.new_zeros(num_panels * width, cols)  # (num_panels * width, k)
    padded[:rows] = weight
    return padded.view(num_panels, width, cols).transpose(1, 2).contiguous()


class PanelLinear:
    """A layer's float32 weight in panels and the platform kernel
    `kernel(out, x, panels, bias)`, for float32 batches of `min_tokens` to `max_tokens`
    rows (where it beats both the GGUF-block kernel and the library GEMM)."""

    def __init__(self, weight: torch.Tensor, kernel: Callable, width: int,
                 min_tokens: int, max_tokens: int):
        self.panels = pack_panels(weight, width)  # (num_panels, k, width)
        self.out_features = weight.shape[0]
        self.kernel = kernel
        self.min_tokens = min_tokens
        self.max_tokens = max_tokens

    def applies_to(self, x: torch.Tensor) -> bool:
        return (x.dim() == 2 and x.dtype == torch.float32
                and self.min_tokens <= x.shape[0] <= self.max_tokens)

    def __call__(self, x: torch.Tensor, bias) -> torch.Tensor:
        out = x.new_empty(x.shape[0], self.out_features)  # (num_tokens, out_features)
        self.kernel(out, x.contiguous(), self.panels, bias)
        return out


def attach_panels(model: nn.Module, kernel_spec) -> int:
    """Pack the float32 weight of every linear layer (a module with `packed`) once, as
    `weight.panels` (tied weights share theirs). `kernel_spec`: the platform's
    (kernel, width, min_tokens, max_tokens) or None. Returns the number of weights packed."""
    if kernel_spec is None:
        return 0
    kernel, width, min_tokens, max_tokens = kernel_spec
    packed = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if not hasattr(module, "packed") or not isinstance(weight, torch.Tensor) \
                or weight.dtype != torch.float32 or weight.dim() != 2 \
                or getattr(weight, "panels", None) is not None:
            continue
        weight.panels = PanelLinear(weight.data, kernel, width, min_tokens, max_tokens)
        packed += 1
    return packed
