"""The W8A8 linear layers on CPU: vllm._C's int8 GEMM (int8_linear.cpp) behind W8A8Kernels."""
from dataclasses import dataclass
from typing import Optional

import torch

from vllm.model_executor.layers.quantization.int8_weights import (Int8Experts, Int8Weight,
                                                                  W8A8Kernels)


@dataclass
class CpuInt8Packed:
    """What int8_linear reads: the weight as stored (row-major int8) and each row's sum."""
    qweight: torch.Tensor  # (N, K) int8, contiguous
    row_sums: torch.Tensor  # (N,) int32
    scale: torch.Tensor  # (N,) float32, contiguous


class CpuW8A8Kernels(W8A8Kernels):
    def __init__(self, ops):
        self.ops = ops  # torch.ops._C_<isa>
        # quantisation and GEMM in one call (what a decode step pays), where built
        self.fused_dynamic = getattr(ops, "int8_linear_dynamic", None)

    def pack(self, weight: Int8Weight) -> CpuInt8Packed:
        qweight = weight.qweight.contiguous()  # (N, K)
        return CpuInt8Packed(qweight, qweight.sum(dim=1, dtype=torch.int32),
                             weight.scale.contiguous())

    def dynamic_linear(self, x: torch.Tensor, weight: Int8Weight,
                       bias: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        if not _takes(x, weight) or weight.scale.dtype != torch.float32:
            return None
        packed = self.packed(weight)
        x32 = x.float().contiguous()  # (T, K)
        bias32 = None if bias is None else bias.float().contiguous()  # (N,)
        out = torch.empty(x32.shape[0], packed.qweight.shape[0], dtype=torch.float32)  # (T, N)
        if self.fused_dynamic is not None:
            self.fused_dynamic(out, x32, packed.qweight, packed.row_sums, packed.scale, bias32)
            return out.to(x.dtype)
        x_q, x_scale = self._quantize(x32)
        self.ops.int8_linear(out, x_q, packed.qweight, packed.row_sums, x_scale, packed.scale,
                             bias32, None)
        return out.to(x.dtype)

    def _quantize(self, x32: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_q = torch.empty(x32.shape, dtype=torch.int8)  # (T, K)
        x_scale = torch.empty(x32.shape[0], dtype=torch.float32)  # (T,)
        self.ops.int8_quantize_dynamic(x_q, x_scale, x32)
        return x_q, x_scale

    def static_linear(self, x: torch.Tensor, weight: Int8Weight, input_scale: torch.Tensor,
                      input_offset: torch.Tensor, quant_bias: torch.Tensor,
                      deq_scale: torch.Tensor) -> Optional[torch.Tensor]:
        if not _takes(x, weight) or input_scale.numel() != 1 or input_offset.numel() != 1:
            return None
        packed = self.packed(weight)
        x32 = x.float().contiguous()  # (T, K)
        x_q = torch.empty(x32.shape, dtype=torch.int8)  # (T, K)
        self.ops.int8_quantize_static(x_q, x32, input_scale.float().item(),
                                      input_offset.float().item())
        acc_bias = quant_bias.to(torch.int32).reshape(-1).contiguous()  # (N,)
        out = self._matmul(x_q, packed, None, deq_scale.float().reshape(-1).contiguous(),
                           None, acc_bias)
        return out.to(x.dtype)

    def grouped_dynamic_linear(self, x: torch.Tensor, experts: Int8Experts,
                               group_sizes: torch.Tensor) -> Optional[torch.Tensor]:
        if x.dim() != 2 or not x.is_floating_point() or experts.scale.dtype != torch.float32:
            return None
        if not isinstance(experts.packed, list):
            experts.packed = [self.pack(Int8Weight(experts.qweight[e], experts.scale[e]))
                              for e in range(experts.qweight.shape[0])]
        x_q, x_scale = self._quantize(x.float().contiguous())  # (T, K), (T,)
        out = torch.empty(x.shape[0], experts.qweight.shape[1], dtype=torch.float32)  # (T, N)
        start = 0
        for packed, rows in zip(experts.packed, group_sizes.tolist()):
            if rows:
                rows_of = slice(start, start + rows)
                out[rows_of] = self._matmul(x_q[rows_of], packed, x_scale[rows_of],
                                            packed.scale, None, None)
            start += rows
        return out.to(x.dtype)

    def _matmul(self, x_q, packed, x_scale, w_scale, bias, acc_bias) -> torch.Tensor:
        out = torch.empty(x_q.shape[0], packed.qweight.shape[0], dtype=torch.float32)  # (T, N)
        self.ops.int8_linear(out, x_q, packed.qweight, packed.row_sums, x_scale, w_scale,
                             bias, acc_bias)
        return out


def _takes(x: torch.Tensor, weight: Int8Weight) -> bool:
    """Whether the kernels take these arguments: 2-D float x on the CPU, an int8 weight."""
    return (x.dim() == 2 and x.is_floating_point() and x.device.type == "cpu"
            and weight.qweight.dtype == torch.int8 and weight.qweight.dim() == 2)
