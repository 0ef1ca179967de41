"""Tensor-parallel group state of this process (rank 0 of 1 until initialised)."""
from typing import Any, Optional

_tp_rank: int = 0
_tp_world_size: int = 1
_tp_group: Optional[Any] = None


def init_tensor_parallel(rank: int, world_size: int, group: Optional[Any] = None) -> None:
    """Set this process's tensor-parallel rank, world size and torch.distributed group.

    `group` is the process group the collectives use (None: the default group).
    """
    if world_size < 1:
        raise ValueError(f"tensor parallel world_size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"tensor parallel rank must be in [0, {world_size}), got {rank}")
    global _tp_rank, _tp_world_size, _tp_group
    _tp_rank, _tp_world_size, _tp_group = rank, world_size, group


def destroy_tensor_parallel() -> None:
    """Return to the single-process state (rank 0 of 1)."""
    init_tensor_parallel(0, 1, None)


def get_tensor_model_parallel_rank() -> int:
    return _tp_rank


def get_tensor_model_parallel_world_size() -> int:
    return _tp_world_size


def get_tensor_model_parallel_group() -> Optional[Any]:
    return _tp_group
