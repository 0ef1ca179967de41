"""A loaded model switched to fixed-order kernels at every batch size (VLLM_BATCH_INVARIANT)."""
import sys
from typing import Callable, Optional

import torch
from torch import nn

from vllm.attention.layer import PagedAttentionLayer


class DenseKernelLinear:
    """A layer's float32 weight and the platform's fixed-order kernel
    `kernel(out, x, weight, bias)`; the same calls as PackedLinear."""

    def __init__(self, weight: torch.Tensor, kernel: Callable):
        self.weight = weight  # (out_features, in_features)
        self.kernel = kernel

    def applies_to(self, x: torch.Tensor) -> bool:
        return x.dim() == 2 and x.dtype == torch.float32

    def __call__(self, x: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        out = x.new_empty(x.shape[0], self.weight.shape[0])  # (num_tokens, out_features)
        self.kernel(out, x.contiguous(), self.weight, bias)
        return out


def make_batch_invariant(model: nn.Module, dense_kernel: Callable) -> int:
    """Every linear layer multiplies through a kernel at every batch size (its GGUF blocks,
    else `dense_kernel` on its weight), every attention layer takes its fixed-order path,
    every module with `use_fixed_order_kernel(kernel)` (FusedMoE) is handed `dense_kernel`.
    Returns the number of linear and expert layers switched."""
    switched = 0
    for module in model.modules():
        if isinstance(module, PagedAttentionLayer):
            module.impl.make_batch_invariant()
        if hasattr(module, "use_fixed_order_kernel"):
            module.use_fixed_order_kernel(dense_kernel)
            switched += 1
        if not hasattr(module, "packed") or getattr(module, "quant_method", None) is not None:
            continue  # a W8A8 layer sums each row in a fixed order already
        if module.packed is None:
            module.packed = DenseKernelLinear(module.weight.data, dense_kernel)
        else:
            module.packed.max_tokens = sys.maxsize
        switched += 1
    return switched
