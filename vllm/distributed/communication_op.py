"""Collectives over the tensor-parallel group; no-ops when the world size is 1."""
import torch
import torch.distributed as dist

from vllm.distributed.parallel_state import (
    get_tensor_model_parallel_group, get_tensor_model_parallel_world_size)


def tensor_model_parallel_all_reduce(x: torch.Tensor) -> torch.Tensor:
    """Sum `x` over the tensor-parallel ranks, in place; returns `x`."""
    if get_tensor_model_parallel_world_size() == 1:
        return x
    dist.all_reduce(x, group=get_tensor_model_parallel_group())
    return x


def tensor_model_parallel_all_gather(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Concatenate every rank's `x` along `dim`, in rank order."""
    world_size = get_tensor_model_parallel_world_size()
    if world_size == 1:
        return x
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(world_size)]
    dist.all_gather(parts, x, group=get_tensor_model_parallel_group())
    return torch.cat(parts, dim=dim)
