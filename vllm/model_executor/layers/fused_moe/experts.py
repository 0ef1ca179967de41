"""Routed experts run expert by expert: an expert's tokens in one gate+up and one down matmul."""
from typing import Callable

import torch
import torch.nn.functional as F

from vllm.model_executor.layers.activation import SiluAndMul

# matmul(x (n, in), weight (out, in)) -> x weight^T (n, out)
Matmul = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_silu_and_mul = SiluAndMul()


def dense_matmul(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return F.linear(x, weight)


def run_experts(hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
                weights: torch.Tensor, ids: torch.Tensor,
                matmul: Matmul = dense_matmul) -> torch.Tensor:
    """sum_k weights[t, k] * expert_{ids[t, k]}(hidden[t]) for every token t, summed in
    float32 in ascending expert order: (T, H) float32.

    hidden (T, H); w13 (E, 2I, H) with each expert's gate rows then up rows; w2 (E, H, I);
    weights (T, k) and ids (T, k) from routing. The (token, expert) pairs are sorted by
    expert, so each expert that got tokens runs once on all of them.
    """
    num_tokens, top_k = ids.shape
    out = torch.zeros(num_tokens, hidden.shape[1], dtype=torch.float32,
                      device=hidden.device)  # (T, H)
    flat_ids = ids.reshape(-1)  # (T * k,)
    order = torch.argsort(flat_ids, stable=True)  # (T * k,) pairs grouped by expert
    pair_tokens = order // top_k  # (T * k,)
    pair_weights = weights.reshape(-1)[order].to(hidden.dtype)  # (T * k,)
    counts = torch.bincount(flat_ids, minlength=w13.shape[0]).tolist()
    start = 0
    for expert, count in enumerate(counts):
        if count == 0:
            continue
        tokens = pair_tokens[start:start + count]  # (n,)
        rows = hidden.index_select(0, tokens)  # (n, H)
        expert_out = expert_mlp(rows, w13[expert], w2[expert],
                                pair_weights[start:start + count], matmul)  # (n, H)
        out.index_add_(0, tokens, expert_out.float())
        start += count
    return out


def expert_mlp(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, scale: torch.Tensor,
               matmul: Matmul) -> torch.Tensor:
    """scale * down(silu(gate(x)) * up(x)) for one expert's rows x (n, H)."""
    gate_up = matmul(x, w13)  # (n, 2I)
    hidden = _silu_and_mul(gate_up)  # (n, I)
    hidden.mul_(scale.unsqueeze(1))
    return matmul(hidden, w2)  # (n, H)
