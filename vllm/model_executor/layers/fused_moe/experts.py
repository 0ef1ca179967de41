"""Routed experts run expert by expert: an expert's tokens in one gate+up and one down matmul."""
import sys
from abc import ABC, abstractmethod
from typing import Callable

import torch

from vllm.model_executor.layers.activation import SiluAndMul

# matmul_into(out (n, out_features), x (n, in), weight (out_features, in)): out = x weight^T,
# every tensor contiguous
MatmulInto = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]

_silu_and_mul = SiluAndMul()


class MoEKernels(ABC):
    """A platform's own routing and routed-expert compute (Platform.moe_kernels), in place of
    routing.route and run_experts below; the same contracts."""

    @abstractmethod
    def route(self, routing, router_logits: torch.Tensor,
              correction_bias) -> tuple[torch.Tensor, torch.Tensor]:
        """As routing.route: (weights (T, k) float32, expert ids (T, k) int64)."""

    @abstractmethod
    def experts(self, hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
                weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """As run_experts: sum_k weights[t, k] * expert_{ids[t, k]}(hidden[t]), (T, H)
        float32."""


def gemm_into(out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> None:
    torch.mm(x, weight.t(), out=out)


def kernel_into(kernel: Callable, max_rows: int = sys.maxsize) -> MatmulInto:
    """A platform kernel `kernel(out, x, weight, bias)` as a MatmulInto for at most
    `max_rows` rows, the GEMM above."""
    def matmul_into(out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> None:
        if x.shape[0] <= max_rows:
            kernel(out, x, weight, None)
        else:
            gemm_into(out, x, weight)
    return matmul_into


def run_experts(hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
                weights: torch.Tensor, ids: torch.Tensor,
                matmul_into: MatmulInto = gemm_into) -> torch.Tensor:
    """sum_k weights[t, k] * expert_{ids[t, k]}(hidden[t]) for every token t, summed in
    float32 in slot order k = 0, 1, ...: (T, H) float32.

    hidden (T, H); w13 (E, 2I, H) with each expert's gate rows then up rows; w2 (E, H, I);
    weights (T, k) and ids (T, k) from routing. The (token, expert) pairs are sorted by
    expert, so each expert that got tokens multiplies all of its rows at once.
    """
    num_tokens, top_k = ids.shape
    flat_ids = ids.reshape(-1)  # (P,) pairs, P = T * k
    order = torch.argsort(flat_ids, stable=True)  # (P,) pairs grouped by expert
    pair_tokens = order // top_k  # (P,)
    spans = expert_spans(torch.bincount(flat_ids, minlength=w13.shape[0]).tolist())
    rows = hidden.index_select(0, pair_tokens)  # (P, H)
    gate_up = hidden.new_empty(rows.shape[0], w13.shape[1])  # (P, 2I)
    for expert, start, end in spans:
        matmul_into(gate_up[start:end], rows[start:end], w13[expert])
    scale = weights.reshape(-1)[order].to(hidden.dtype).unsqueeze(1)  # (P, 1)
    act = _silu_and_mul(gate_up).mul_(scale).contiguous()  # (P, I)
    down = hidden.new_empty(rows.shape)  # (P, H)
    for expert, start, end in spans:
        matmul_into(down[start:end], act[start:end], w2[expert])
    return sum_over_slots(down, order, num_tokens, top_k)


def sum_over_slots(down: torch.Tensor, order: torch.Tensor, num_tokens: int,
                   top_k: int) -> torch.Tensor:
    """Each token's k expert outputs (rows of `down` in expert order) added in float32 in
    the token's own slot order 0..k-1, so the sum never depends on the rest of the batch."""
    by_slot = down.index_select(0, order.argsort()).view(num_tokens, top_k, -1)  # (T, k, H)
    out = torch.zeros(num_tokens, down.shape[1], dtype=torch.float32,
                      device=down.device)  # (T, H)
    for slot in range(top_k):
        out.add_(by_slot[:, slot])
    return out


def expert_spans(counts: list[int]) -> list[tuple[int, int, int]]:
    """(expert, first pair, end) of every expert that got pairs, in expert order."""
    spans, start = [], 0
    for expert, count in enumerate(counts):
        if count:
            spans.append((expert, start, start + count))
            start += count
    return spans
