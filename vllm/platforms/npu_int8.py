"""The W8A8 linear layers on Ascend: torch_npu's int8 ops behind W8A8Kernels, called as
vllm-ascend v0.9.1 calls them (vllm_ascend/quantization/w8a8.py, w8a8_dynamic.py)."""
from dataclasses import dataclass
from typing import Optional

import torch

from vllm.model_executor.layers.quantization.int8_weights import (Int8Experts, Int8Weight,
                                                                  W8A8Kernels)

# torch_npu.npu_format_cast(tensor, acl_format): 29 is ACL_FORMAT_FRACTAL_NZ, the layout the
# cube unit reads int8 weights fastest in (vllm-ascend casts every quantized weight to it).
ACL_FORMAT_FRACTAL_NZ = 29
HALF_TYPES = (torch.float16, torch.bfloat16)


@dataclass
class NpuInt8Packed:
    """npu_quant_matmul's x2: the weight transposed to (K, N), in FRACTAL_NZ."""
    weight_kn: torch.Tensor  # (K, N) int8
    scale: torch.Tensor  # (N,) float32


class NpuW8A8Kernels(W8A8Kernels):
    def __init__(self, torch_npu):
        self.npu = torch_npu

    def pack(self, weight: Int8Weight) -> NpuInt8Packed:
        weight_kn = weight.qweight.t().contiguous()  # (K, N)
        return NpuInt8Packed(self.npu.npu_format_cast(weight_kn, ACL_FORMAT_FRACTAL_NZ),
                             weight.scale.float().contiguous())

    def dynamic_linear(self, x: torch.Tensor, weight: Int8Weight,
                       bias: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        if x.dtype not in HALF_TYPES or x.dim() != 2:
            return None
        packed = self.packed(weight)
        # npu_dynamic_quant(Tensor x, *, Tensor? smooth_scales=None, Tensor? group_index=None,
        #     ScalarType? dst_type=None) -> (Tensor y int8, Tensor scale float32 x.shape[:-1])
        x_q, x_scale = self.npu.npu_dynamic_quant(x)  # (T, K) int8, (T,) float32
        # npu_quant_matmul(Tensor x1, Tensor x2, Tensor scale, *, Tensor? offset=None,
        #     Tensor? pertoken_scale=None, Tensor? bias=None, ScalarType? output_dtype=None)
        #     -> Tensor: x2 is (K, N); a float bias is added after both scales.
        bias32 = None if bias is None else bias.float()  # (N,)
        return self.npu.npu_quant_matmul(x_q, packed.weight_kn, packed.scale,
                                         pertoken_scale=x_scale, bias=bias32,
                                         output_dtype=x.dtype)

    def static_linear(self, x: torch.Tensor, weight: Int8Weight, input_scale: torch.Tensor,
                      input_offset: torch.Tensor, quant_bias: torch.Tensor,
                      deq_scale: torch.Tensor) -> Optional[torch.Tensor]:
        if x.dtype not in HALF_TYPES or x.dim() != 2 or input_scale.numel() != 1:
            return None
        packed = self.packed(weight)
        k = x.shape[1]
        # npu_quantize(Tensor input, Tensor scales, Tensor? zero_points, ScalarType dtype,
        #     int axis=1, bool div_mode=True) -> Tensor: round(input / scales + zero_points)
        # (div_mode), scales and zero_points along the last axis, here repeated to (K,).
        scales = input_scale.float().reshape(1).repeat(k)  # (K,)
        offsets = input_offset.reshape(1).to(torch.int8).repeat(k)  # (K,)
        x_q = self.npu.npu_quantize(x, scales, offsets, torch.qint8, -1, True)  # (T, K)
        # npu_quant_matmul with an int32 bias: (x1 @ x2 + bias) * scale, the W8A8 epilogue.
        return self.npu.npu_quant_matmul(x_q, packed.weight_kn, deq_scale.float().reshape(-1),
                                         bias=quant_bias.to(torch.int32).reshape(-1),
                                         output_dtype=x.dtype)

    def pack_experts(self, experts: Int8Experts) -> NpuInt8Packed:
        weight_kn = experts.qweight.transpose(1, 2).contiguous()  # (E, K, N)
        return NpuInt8Packed(self.npu.npu_format_cast(weight_kn, ACL_FORMAT_FRACTAL_NZ),
                             experts.scale.float().contiguous())

    def grouped_dynamic_linear(self, x: torch.Tensor, experts: Int8Experts,
                               group_sizes: torch.Tensor) -> Optional[torch.Tensor]:
        if x.dtype not in HALF_TYPES or x.dim() != 2:
            return None
        if not isinstance(experts.packed, NpuInt8Packed):
            experts.packed = self.pack_experts(experts)
        x_q, x_scale = self.npu.npu_dynamic_quant(x)  # (T, K) int8, (T,) float32
        # npu_grouped_matmul(x, weight, *, bias=None, scale=None, offset=None,
        #     antiquant_scale=None, antiquant_offset=None, per_token_scale=None,
        #     group_list=None, activation_input=None, activation_quant_scale=None,
        #     activation_quant_offset=None, split_item=0, group_type=-1, group_list_type=0,
        #     act_type=0, output_dtype=None) -> List[Tensor]: one x split by rows (split_item
        #     2, group_type 0), group_list_type 1 = rows per expert; per-token quantization
        #     y = (x @ w[e]) * scale[e] * per_token_scale.
        return self.npu.npu_grouped_matmul(
            [x_q], [experts.packed.weight_kn], scale=[experts.packed.scale],
            per_token_scale=[x_scale], group_list=group_sizes.to(torch.int64),
            split_item=2, group_type=0, group_list_type=1, output_dtype=x.dtype)[0]
