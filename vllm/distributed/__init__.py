"""Tensor-parallel state and collectives."""
from vllm.distributed.communication_op import (
    tensor_model_parallel_all_gather, tensor_model_parallel_all_reduce)
from vllm.distributed.parallel_state import (
    destroy_tensor_parallel, get_tensor_model_parallel_group,
    get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size,
    init_tensor_parallel)

__all__ = [
    "destroy_tensor_parallel",
    "get_tensor_model_parallel_group",
    "get_tensor_model_parallel_rank",
    "get_tensor_model_parallel_world_size",
    "init_tensor_parallel",
    "tensor_model_parallel_all_gather",
    "tensor_model_parallel_all_reduce",
]
