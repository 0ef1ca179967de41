"""W8A8 linear arithmetic: int8 weights times int8 activations, int32 sums, float32 scales.

This module is the one interface the W8A8 layers call. The functions here are the exact
reference (float64 sums of int8 products are exact); platform kernels replace the body of
`w8a8_dynamic_linear` / `w8a8_static_linear` with faster code giving the same bits:
    dynamic: out[t, n] = (float32(acc[t, n]) * x_scale[t]) * w_scale[n] (+ bias[n])
    static:  out[t, n] = float32(acc[t, n] + quant_bias[n]) * deq_scale[n]
where acc = x_q @ w_q.T in int32, all float32 products evaluated left to right."""
from dataclasses import dataclass
from typing import Optional

import torch

INT8_MAX = 127


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


def w8a8_dynamic_linear(x: torch.Tensor, weight: Int8Weight,
                        bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """W8A8_DYNAMIC: (T, K) float -> (T, N) in x's dtype."""
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
    x_q = static_quant(x, input_scale, input_offset)  # (T, K)
    acc = int8_matmul(x_q, weight.qweight) + quant_bias.to(torch.int32)  # (T, N)
    return (acc.float() * deq_scale.float()[None, :]).to(x.dtype)
