"""Helpers the parallel layers use to copy checkpoint tensors into parameters."""
import torch
from torch import nn

from vllm.distributed.parallel_state import (
    get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size)


def tp_rank_and_size() -> tuple[int, int]:
    return get_tensor_model_parallel_rank(), get_tensor_model_parallel_world_size()


def divide(numerator: int, denominator: int, what: str) -> int:
    if numerator % denominator:
        raise ValueError(f"{what} ({numerator}) is not divisible by the tensor "
                         f"parallel size ({denominator})")
    return numerator // denominator


def new_parameter(*shape: int) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape), requires_grad=False)


def copy_checked(dst: torch.Tensor, src: torch.Tensor, where: str) -> None:
    if dst.shape != src.shape:
        raise ValueError(f"{where}: checkpoint tensor shape {tuple(src.shape)} does not "
                         f"match parameter shape {tuple(dst.shape)}")
    dst.copy_(src)


def narrow_checked(loaded: torch.Tensor, dim: int, full_size: int, start: int,
                   length: int, where: str) -> torch.Tensor:
    """This rank's slice of `loaded` along `dim`, after checking its full size."""
    if loaded.dim() <= dim or loaded.shape[dim] != full_size:
        raise ValueError(f"{where}: checkpoint tensor shape {tuple(loaded.shape)} should "
                         f"have size {full_size} in dim {dim}")
    return loaded.narrow(dim, start, length)


def default_weight_loader(param: nn.Parameter, loaded_weight: torch.Tensor,
                          shard_id=None) -> None:
    """Copy a whole (unsharded) checkpoint tensor into `param`."""
    if shard_id is not None:
        raise ValueError(f"unsharded parameter got shard_id {shard_id!r}")
    copy_checked(param.data, loaded_weight, "parameter")
