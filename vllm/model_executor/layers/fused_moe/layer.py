"""FusedMoE: routing and the routed experts, each expert's intermediate dim split over TP ranks."""
from typing import Callable, Optional

import torch
from torch import nn

from vllm.distributed.communication_op import tensor_model_parallel_all_reduce
from vllm.model_executor.layers.fused_moe.experts import (
    MatmulInto, gemm_into, kernel_into, run_experts)
from vllm.model_executor.layers.fused_moe.routing import Routing, route
from vllm.model_executor.layers.fused_moe.weights import EXPERT_SHARDS, expert_checkpoint_name
from vllm.model_executor.layers.weight_utils import (
    copy_checked, divide, narrow_checked, new_parameter, tp_rank_and_size)
from vllm.platforms import current_platform


def small_batch_matmul(dtype: torch.dtype) -> MatmulInto:
    """The platform's small-batch kernel for an expert's few rows where it has one."""
    small = current_platform.small_batch_linear(dtype)
    return gemm_into if small is None else kernel_into(*small)


class FusedMoE(nn.Module):
    """The routed experts of a DeepSeek MoE layer (the gate's matmul and the shared
    experts stay in the model).

    Parameters: `w13_weight` (E, 2 * I / tp, H), each expert's gate rows then up rows;
    `w2_weight` (E, H, I / tp); `e_score_correction_bias` (E,) float32 when
    `has_score_correction_bias`. Expert weights load through
    `weight_loader(param, tensor, shard_id, expert_id)` with shard ids w1 (gate),
    w3 (up), w2 (down), from full checkpoint tensors.
    """

    def __init__(self, num_experts: int, top_k: int, hidden_size: int,
                 intermediate_size: int, *, scoring_func: str, renormalize: bool,
                 topk_method: str, num_expert_group: Optional[int] = None,
                 topk_group: Optional[int] = None, has_score_correction_bias: bool = False,
                 routed_scaling_factor: float = 1.0, reduce_results: bool = True,
                 prefix: str = ""):
        super().__init__()
        self.routing = Routing(num_experts, top_k, scoring_func, renormalize, topk_method,
                               num_expert_group, topk_group, routed_scaling_factor)
        if topk_method == "noaux_tc" and not has_score_correction_bias:
            raise ValueError(f"{prefix or 'FusedMoE'}: topk_method 'noaux_tc' needs "
                             "has_score_correction_bias")
        self.tp_rank, self.tp_size = tp_rank_and_size()
        self.prefix = prefix
        self.num_experts = num_experts
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.local_intermediate = divide(intermediate_size, self.tp_size,
                                         f"{prefix or 'experts'} moe_intermediate_size")
        self.reduce_results = reduce_results
        self.w13_weight = new_parameter(num_experts, 2 * self.local_intermediate, hidden_size)
        self.w2_weight = new_parameter(num_experts, hidden_size, self.local_intermediate)
        self.w13_weight.weight_loader = self.weight_loader
        self.w2_weight.weight_loader = self.weight_loader
        if has_score_correction_bias:
            self.e_score_correction_bias = nn.Parameter(
                torch.zeros(num_experts, dtype=torch.float32), requires_grad=False)
        else:
            self.register_parameter("e_score_correction_bias", None)
        self.matmul_into = small_batch_matmul(self.w13_weight.dtype)
        self.platform_kernels = current_platform.moe_kernels()  # None: route + run_experts
        self.row_invariant_routing = False  # batch-invariant mode (use_fixed_order_kernel)
        self.quant_method = None  # W8A8 experts (layers/quantization/w8a8_experts.py)
        self.expert_suffixes: tuple[str, ...] = ("weight",)  # tensors each projection loads
        self.loaded: set[tuple[int, str, str]] = set()

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor,
                      shard_id: str, expert_id: int) -> None:
        if shard_id not in EXPERT_SHARDS:
            raise ValueError(f"{self.prefix}: shard_id must be one of "
                             f"{tuple(EXPERT_SHARDS)}, got {shard_id!r}")
        suffix = self._suffix_of(param, shard_id)
        where = expert_checkpoint_name(self.prefix, expert_id, shard_id, suffix or "weight")
        if not 0 <= expert_id < self.num_experts:
            raise ValueError(f"{where}: expert id {expert_id} outside [0, {self.num_experts})")
        if suffix is None:
            raise ValueError(f"{where}: shard {shard_id} does not belong to this parameter")
        if shard_id == "w2":
            self._load_down(param.data[expert_id], loaded_weight, where)
        else:
            self._load_gate_or_up(param.data[expert_id], loaded_weight, shard_id, where)
        self.loaded.add((expert_id, shard_id, suffix))

    def _suffix_of(self, param: nn.Parameter, shard_id: str):
        """`param`'s suffix (weight, weight_scale, ...) when it is one of `shard_id`'s
        parameters (`<family>_<suffix>`), else None."""
        family = EXPERT_SHARDS[shard_id][0]
        return next((suffix for suffix in self.expert_suffixes
                     if getattr(self, f"{family}_{suffix}", None) is param), None)

    def _load_gate_or_up(self, dst: torch.Tensor, loaded: torch.Tensor, shard_id: str,
                         where: str) -> None:
        rows = self.local_intermediate
        shard = narrow_checked(loaded, 0, self.intermediate_size, self.tp_rank * rows, rows,
                               where)  # (I / tp, H)
        offset = 0 if shard_id == "w1" else rows
        copy_checked(dst.narrow(0, offset, rows), shard, where)

    def _load_down(self, dst: torch.Tensor, loaded: torch.Tensor, where: str) -> None:
        if dst.dim() == 1:  # a per-output-channel scale (H,): every rank holds all of it
            copy_checked(dst, loaded, where)
            return
        cols = self.local_intermediate
        shard = narrow_checked(loaded, 1, self.intermediate_size, self.tp_rank * cols, cols,
                               where)  # (H, I / tp)
        copy_checked(dst, shard, where)

    def missing_expert_weights(self) -> list[str]:
        """Checkpoint names of the expert tensors not loaded yet."""
        return [expert_checkpoint_name(self.prefix, expert, shard_id, suffix)
                for expert in range(self.num_experts) for shard_id in EXPERT_SHARDS
                for suffix in self.expert_suffixes
                if (expert, shard_id, suffix) not in self.loaded]

    def use_fixed_order_kernel(self, kernel: Callable) -> None:
        """Batch-invariant mode: every expert matmul through the platform's fixed-order
        dense kernel, so a token's output does not depend on its expert's row count (W8A8
        experts are row-wise already and keep theirs)."""
        if self.quant_method is None:
            self.matmul_into = kernel_into(kernel)
        self.platform_kernels = None
        self.row_invariant_routing = True

    def forward(self, hidden: torch.Tensor, router_logits: torch.Tensor) -> torch.Tensor:
        """sum_k w_k * expert_k(hidden) per token: (T, H) in hidden's dtype, summed over
        the TP ranks when `reduce_results` (else this rank's partial sum)."""
        if hidden.dim() != 2 or hidden.shape[1] != self.hidden_size \
                or router_logits.shape[0] != hidden.shape[0]:
            raise ValueError(f"{self.prefix or 'FusedMoE'}: hidden must be (T, "
                             f"{self.hidden_size}) with router_logits (T, {self.num_experts}), "
                             f"got {tuple(hidden.shape)} and {tuple(router_logits.shape)}")
        kernels = self.platform_kernels
        if kernels is None or self.quant_method is not None:
            weights, ids = route(self.routing, router_logits, self.e_score_correction_bias,
                                 self.row_invariant_routing)
            w13, w2 = (self.w13_weight, self.w2_weight) if self.quant_method is None \
                else self.quant_method.expert_weights(self)
            out = run_experts(hidden, w13, w2, weights, ids, self.matmul_into)  # (T, H) float32
        else:
            weights, ids = kernels.route(self.routing, router_logits,
                                         self.e_score_correction_bias)
            out = kernels.experts(hidden, self.w13_weight, self.w2_weight, weights, ids)
        if self.reduce_results:
            out = tensor_model_parallel_all_reduce(out)
        return out.to(hidden.dtype)
