"""The tensors one quantized linear layer stores: round-to-nearest symmetric int8 weights per
output channel, and for static W8A8 the calibrated input's scale / offset with the quant_bias
and deq_scale that make the stored arithmetic reproduce x W^T + b."""
from typing import Optional

import torch

from vllm.model_executor.layers.quantization.ascend_format import (
    encode_deq_scale, stored_dtype)
from vllm.model_executor.layers.quantization.int8_kernels import INT8_MAX, dynamic_quant

INT8_LEVELS = 255  # -128 ... 127 for a static, asymmetric input


def dynamic_tensors(weight: torch.Tensor, model_dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """weight (N, K) -> int8 weight, weight_scale (N, 1) float32, weight_offset (N, 1) zeros:
    each row's scale is its largest magnitude / 127 (the per-row rule of dynamic_quant)."""
    qweight, scale = dynamic_quant(weight)  # (N, K) int8, (N,) float32
    return {"weight": qweight, "weight_scale": scale[:, None].contiguous(),
            "weight_offset": torch.zeros(scale.shape[0], 1, dtype=model_dtype)}


def input_scale_offset(x_min: float, x_max: float) -> tuple[float, float]:
    """Per-tensor asymmetric int8 for inputs in [x_min, x_max] (widened to hold 0):
    x ~ scale * (round(x / scale + offset) - offset), offset a whole number."""
    low, high = min(x_min, 0.0), max(x_max, 0.0)
    scale = (high - low) / INT8_LEVELS if high > low else 1.0
    offset = max(-INT8_MAX - 1, min(INT8_MAX, round(-INT8_MAX - 1 - low / scale)))
    return scale, float(offset)


def static_tensors(weight: torch.Tensor, bias: Optional[torch.Tensor], x_min: float,
                   x_max: float, model_dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The W8A8 tensors of one layer (see int8_kernels.w8a8_static_linear):
    deq_scale = input_scale * weight_scale and
    quant_bias = round(b / deq_scale) - input_offset * sum_k weight[n, k], so that
    (x_q W_q^T + quant_bias) * deq_scale ~ x W^T + b."""
    tensors = dynamic_tensors(weight, model_dtype)
    scale, offset = input_scale_offset(x_min, x_max)
    input_scale = torch.tensor([scale], dtype=stored_dtype("input_scale", model_dtype))
    input_offset = torch.tensor([offset], dtype=stored_dtype("input_offset", model_dtype))
    deq_scale = input_scale.float() * tensors["weight_scale"][:, 0]  # (N,) float32
    row_sums = tensors["weight"].double().sum(dim=1)  # (N,) exact
    folded = torch.zeros_like(row_sums) if bias is None else \
        torch.round(bias.double() / deq_scale.double())  # (N,)
    quant_bias = folded - input_offset.double() * row_sums  # (N,)
    tensors.update(input_scale=input_scale, input_offset=input_offset,
                   quant_bias=quant_bias.to(torch.int32),
                   deq_scale=encode_deq_scale(deq_scale, model_dtype))
    return tensors
