"""W8A8 linear arithmetic: int8 weights times int8 activations, int32 sums, float32 scales.

This module is the one interface the W8A8 layers call. `w8a8_dynamic_linear` and
`w8a8_static_linear` run the platform's kernels (`current_platform.w8a8_kernels()`: the CPU's
vllm._C int8 GEMM, torch_npu's quant ops) and fall back to the `*_reference` functions here,
the exact arithmetic every kernel must reproduce bit for bit (float64 sums of int8 products
are exact):
    dynamic: out[t, n] = (float32(acc[t, n]) * x_scale[t]) * w_scale[n] (+ bias[n])
    static:  out[t, n] = float32(acc[t, n] + quant_bias[n]) * deq_scale[n]
where acc = x_q @ w_q.T in int32, all float32 products evaluated left to right."""
import functools
from typing import Optional

import torch

from vllm.model_executor.layers.quantization.int8_weights import (  # noqa: F401 (re-exported)
    Int8Experts, Int8Weight, W8A8Kernels)

INT8_MAX = 127


def dynamic_quant(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token symmetric int8: scale = amax / 127 (1.0 for an all-zero row), values
    rounded half to even. (T, K) float -> (T, K) int8, (T,) float32."""
    x = x.float()  # (T, K)
    amax = x.abs().amax(dim=-1)  # (T,)
    scale = torch.where(amax > 0, amax / INT8_MAX, torch.ones_like(amax))  # (T,)
    x_q = torch.round(x / scale[:, None]).clamp_(-INT8_MAX, INT8_MAX)  # (T, K)
    return x_q.to(torch.int8), scale


def int8_matmul(x_q: torch.Tensor, w_q: torch.Tensor) -> torch.Tensor:
    """Exact int32 sums: (T, K) int8 @ (N, K) int8 -> (T, N) int32."""
    return (x_q.double() @ w_q.double().T).to(torch.int32)  # (T, N)


@functools.lru_cache(maxsize=1)
def platform_kernels() -> Optional[W8A8Kernels]:
    """This process's W8A8 kernels, or None (the references run)."""
    from vllm.platforms import current_platform
    return current_platform.w8a8_kernels()


def pack_int8_weight(weight: Int8Weight) -> Int8Weight:
    """Packs `weight` for the platform's kernels (at load; else on its first use)."""
    kernels = platform_kernels()
    weight.packed = None if kernels is None else kernels.pack(weight)
    return weight


def w8a8_dynamic_linear(x: torch.Tensor, weight: Int8Weight,
                        bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """W8A8_DYNAMIC: (T, K) float -> (T, N) in x's dtype."""
    kernels = platform_kernels()
    out = None if kernels is None else kernels.dynamic_linear(x, weight, bias)
    return w8a8_dynamic_linear_reference(x, weight, bias) if out is None else out


def w8a8_dynamic_linear_reference(x: torch.Tensor, weight: Int8Weight,
                                  bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    x_q, x_scale = dynamic_quant(x)
    acc = int8_matmul(x_q, weight.qweight).float()  # (T, N)
    out = acc * x_scale[:, None] * weight.scale[None, :]  # (T, N)
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)


def static_quant(x: torch.Tensor, input_scale: torch.Tensor,
                 input_offset: torch.Tensor) -> torch.Tensor:
    """Per-tensor int8 with a zero point: round(x / scale + offset), clamped to int8."""
    q = torch.round(x.float() / input_scale.float() + input_offset.float())  # (T, K)
    return q.clamp_(-128, INT8_MAX).to(torch.int8)


def w8a8_static_linear(x: torch.Tensor, weight: Int8Weight, input_scale: torch.Tensor,
                       input_offset: torch.Tensor, quant_bias: torch.Tensor,
                       deq_scale: torch.Tensor) -> torch.Tensor:
    """W8A8 (static): (T, K) float -> (T, N) in x's dtype; quant_bias (N,) int32 and
    deq_scale (N,) float32 as the checkpoint stores them (after decoding)."""
    kernels = platform_kernels()
    args = (x, weight, input_scale, input_offset, quant_bias, deq_scale)
    out = None if kernels is None else kernels.static_linear(*args)
    return w8a8_static_linear_reference(*args) if out is None else out


def w8a8_static_linear_reference(x: torch.Tensor, weight: Int8Weight,
                                 input_scale: torch.Tensor, input_offset: torch.Tensor,
                                 quant_bias: torch.Tensor,
                                 deq_scale: torch.Tensor) -> torch.Tensor:
    x_q = static_quant(x, input_scale, input_offset)  # (T, K)
    acc = int8_matmul(x_q, weight.qweight) + quant_bias.to(torch.int32)  # (T, N)
    return (acc.float() * deq_scale.float()[None, :]).to(x.dtype)


def w8a8_grouped_dynamic_linear(x: torch.Tensor, experts: Int8Experts,
                                group_sizes: torch.Tensor) -> torch.Tensor:
    """W8A8_DYNAMIC experts: rows of x (T, K) sorted by expert, group_sizes (E,) rows each
    -> (T, N) in x's dtype, each row through its expert."""
    kernels = platform_kernels()
    out = None if kernels is None else kernels.grouped_dynamic_linear(x, experts, group_sizes)
    return _per_expert(x, experts, group_sizes, w8a8_dynamic_linear) if out is None else out


def w8a8_grouped_dynamic_linear_reference(x: torch.Tensor, experts: Int8Experts,
                                          group_sizes: torch.Tensor) -> torch.Tensor:
    return _per_expert(x, experts, group_sizes, w8a8_dynamic_linear_reference)


def _per_expert(x, experts: Int8Experts, group_sizes: torch.Tensor, linear) -> torch.Tensor:
    out = x.new_empty(x.shape[0], experts.qweight.shape[1])  # (T, N)
    start = 0
    for e, rows in enumerate(group_sizes.tolist()):
        weight = Int8Weight(experts.qweight[e], experts.scale[e])
        out[start:start + rows] = linear(x[start:start + rows], weight)
        start += rows
    return out
