"""W8A8_DYNAMIC and W8A8 (static) linear methods: a parallel linear layer's int8 weight, its
scales, and the matmul through int8_kernels."""
from typing import Optional

import torch
from torch import nn

from vllm.model_executor.layers.linear import RowParallelLinear
from vllm.model_executor.layers.quantization.ascend_format import (
    PER_TENSOR, W8A8, W8A8_DYNAMIC)
from vllm.model_executor.layers.quantization.int8_kernels import (
    Int8Weight, w8a8_dynamic_linear, w8a8_static_linear)


def replace_parameter(layer: nn.Module, name: str, data: torch.Tensor, loader) -> None:
    param = nn.Parameter(data, requires_grad=False)
    param.weight_loader = loader
    setattr(layer, name, param)


def load_per_tensor(where: str):
    """A loader for a (1,) per-tensor parameter: every shard of a fused layer gives the same
    value (they quantize the same input), checked."""
    def loader(param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
        name = where if shard_id is None else f"{where}[{shard_id}]"
        if loaded.numel() != 1:
            raise ValueError(f"{name}: a per-tensor value must have one element, "
                             f"got shape {tuple(loaded.shape)}")
        value = loaded.reshape(1).to(param.dtype)
        if getattr(param, "filled", False) and not torch.equal(param.data, value):
            raise ValueError(f"{name}: {float(value)} differs from another shard's "
                             f"{float(param.data)}; the shards of a fused layer share "
                             "one input, hence one value")
        param.data.copy_(value)
        param.filled = True
    return loader


class W8A8LinearMethod:
    """Shared by both methods: `weight` becomes int8 (same shape, same loader); each
    per-output-channel tensor a 1-D float32 parameter loaded as the layer's bias would be
    (split with the outputs, whole on a row-parallel layer); `int8` is built after loading."""
    name = ""

    def __init__(self, suffixes: tuple[str, ...]):
        self.suffixes = suffixes  # the quantization tensors this layer's checkpoint has

    def create_weights(self, layer: nn.Module, prefix: str) -> None:
        rows = layer.weight.shape[0]
        replace_parameter(layer, "weight", torch.empty(layer.weight.shape, dtype=torch.int8),
                          layer.weight_loader)
        for suffix in self.suffixes:
            if suffix in PER_TENSOR:
                replace_parameter(layer, suffix, torch.zeros(1),
                                  load_per_tensor(f"{prefix}.{suffix}"))
            elif suffix == "quant_bias":
                replace_parameter(layer, suffix, torch.zeros(rows, dtype=torch.int32),
                                  layer.weight_loader)
            else:
                replace_parameter(layer, suffix, torch.zeros(rows, dtype=torch.float32),
                                  layer.weight_loader)

    def process_weights_after_loading(self, layer: nn.Module, prefix: str) -> None:
        offset = getattr(layer, "weight_offset", None)
        if offset is not None and bool(offset.data.ne(0).any()):
            raise ValueError(f"{prefix}.weight_offset: only symmetric int8 weights "
                             "(weight_offset all zero) are supported")
        scale = getattr(layer, "weight_scale", None)
        scale = torch.ones(layer.weight.shape[0]) if scale is None else scale.data
        layer.int8 = Int8Weight(layer.weight.data, scale.float().contiguous())


class W8A8DynamicLinearMethod(W8A8LinearMethod):
    """Per-token dynamic int8 activations; the layer's float bias is added as it is."""
    name = W8A8_DYNAMIC

    def apply(self, layer: nn.Module, x: torch.Tensor,
              bias: Optional[torch.Tensor]) -> torch.Tensor:
        return w8a8_dynamic_linear(x, layer.int8, bias)  # (T, N)


class W8A8StaticLinearMethod(W8A8LinearMethod):
    """Per-tensor static int8 activations (input_scale, input_offset); quant_bias holds the
    float bias, so the layer keeps none. Ranks of a row-parallel layer after the first add
    no quant_bias (their partial sums are added up), as vllm-ascend does."""
    name = W8A8

    def create_weights(self, layer: nn.Module, prefix: str) -> None:
        super().create_weights(layer, prefix)
        layer.register_parameter("bias", None)

    def process_weights_after_loading(self, layer: nn.Module, prefix: str) -> None:
        super().process_weights_after_loading(layer, prefix)
        quant_bias = layer.quant_bias.data
        if isinstance(layer, RowParallelLinear) and layer.tp_rank > 0:
            quant_bias = torch.zeros_like(quant_bias)  # row-parallel: rank 0 adds it
        layer.static_bias = quant_bias

    def apply(self, layer: nn.Module, x: torch.Tensor,
              bias: Optional[torch.Tensor]) -> torch.Tensor:
        return w8a8_static_linear(x, layer.int8, layer.input_scale.data,
                                  layer.input_offset.data, layer.static_bias,
                                  layer.deq_scale.data)  # (T, N)


LINEAR_METHODS = {W8A8_DYNAMIC: W8A8DynamicLinearMethod, W8A8: W8A8StaticLinearMethod}


def dequantized(layer: nn.Module, prefix: str, dtype: torch.dtype) -> None:
    """Turn a loaded W8A8_DYNAMIC layer back into a float one (weight = int8 x scale), for
    a layer whose weight other code reads (MLA absorbs kv_b_proj's)."""
    if layer.quant_method.name != W8A8_DYNAMIC:
        raise ValueError(f"{prefix}: only a {W8A8_DYNAMIC} layer can be dequantized for "
                         f"MLA; keep it FLOAT or {W8A8_DYNAMIC}")
    weight = layer.int8.qweight.float() * layer.int8.scale[:, None]  # (N, K)
    replace_parameter(layer, "weight", weight.to(dtype), layer.weight_loader)
    for suffix in layer.quant_method.suffixes:
        delattr(layer, suffix)
    layer.quant_method = None
    del layer.int8
