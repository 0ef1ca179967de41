"""W8A8_DYNAMIC routed experts: FusedMoE's stacked weights in int8 with per-expert,
per-output-channel scales, each expert's rows multiplied through w8a8_dynamic_linear."""
import torch
from torch import nn

from vllm.model_executor.layers.quantization.ascend_format import W8A8_DYNAMIC
from vllm.model_executor.layers.quantization.int8_kernels import (
    Int8Weight, w8a8_dynamic_linear)
from vllm.model_executor.layers.quantization.w8a8_linear import replace_parameter

EXPERT_FAMILIES = ("w13", "w2")


class Int8Experts:
    """Stacked experts as run_experts reads them: `shape` (E, N, K) and `[e]` an Int8Weight."""

    def __init__(self, weights: list[Int8Weight]):
        self.weights = weights
        self.shape = torch.Size((len(weights), *weights[0].qweight.shape))

    def __getitem__(self, expert: int) -> Int8Weight:
        return self.weights[expert]


def int8_matmul_into(out: torch.Tensor, x: torch.Tensor, weight: Int8Weight) -> None:
    out.copy_(w8a8_dynamic_linear(x, weight))  # (n, N)


class W8A8DynamicExpertsMethod:
    """`w13_weight` / `w2_weight` become int8; `w13_weight_scale` (E, 2I/tp) and
    `w2_weight_scale` (E, H) float32 load through FusedMoE's own loader (gate/up rows
    split like the weight's, the down projection's scale whole), as do the offsets."""
    name = W8A8_DYNAMIC

    def __init__(self, suffixes: tuple[str, ...]):
        self.suffixes = suffixes  # weight_scale, and weight_offset when the checkpoint has it

    def create_weights(self, layer: nn.Module, prefix: str) -> None:
        for family in EXPERT_FAMILIES:
            weight = getattr(layer, f"{family}_weight")
            replace_parameter(layer, f"{family}_weight",
                              torch.empty(weight.shape, dtype=torch.int8), layer.weight_loader)
            for suffix in self.suffixes:
                replace_parameter(layer, f"{family}_{suffix}",
                                  torch.zeros(weight.shape[:2], dtype=torch.float32),
                                  layer.weight_loader)
        layer.expert_suffixes = ("weight", *self.suffixes)
        layer.matmul_into = int8_matmul_into

    def process_weights_after_loading(self, layer: nn.Module, prefix: str) -> None:
        self.experts = {}
        for family in EXPERT_FAMILIES:
            offset = getattr(layer, f"{family}_weight_offset", None)
            if offset is not None and bool(offset.data.ne(0).any()):
                raise ValueError(f"{prefix}: only symmetric int8 expert weights "
                                 "(weight_offset all zero) are supported")
            qweight = getattr(layer, f"{family}_weight").data  # (E, N, K)
            scale = getattr(layer, f"{family}_weight_scale").data  # (E, N)
            self.experts[family] = Int8Experts(
                [Int8Weight(qweight[e], scale[e].contiguous()) for e in range(qweight.shape[0])])

    def expert_weights(self, layer: nn.Module) -> tuple[Int8Experts, Int8Experts]:
        return self.experts["w13"], self.experts["w2"]
