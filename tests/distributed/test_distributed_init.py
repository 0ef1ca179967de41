"""Ranks join the tensor-parallel group through a store hosted by the parent process."""
import pytest
import torch
import torch.multiprocessing as mp

from vllm.distributed import parallel_state
from vllm.distributed.init import (destroy_worker_distributed, init_worker_distributed,
                                   start_rendezvous_store)


def sum_ranks(rank: int, world_size: int, port: int, queue) -> None:
    from vllm.distributed.communication_op import tensor_model_parallel_all_reduce
    torch.set_num_threads(1)
    init_worker_distributed(rank, world_size, "127.0.0.1", port, backend="gloo")
    try:
        x = torch.full((2, 3), float(rank + 1))  # (2, 3)
        tensor_model_parallel_all_reduce(x)
        queue.put((rank, parallel_state.get_tensor_model_parallel_rank(),
                   parallel_state.get_tensor_model_parallel_world_size(), x.tolist()))
    finally:
        destroy_worker_distributed()


def test_two_ranks_all_reduce_through_hosted_store():
    store = start_rendezvous_store("127.0.0.1")
    assert store.port > 0
    queue = mp.get_context("spawn").SimpleQueue()
    mp.start_processes(sum_ranks, args=(2, store.port, queue), nprocs=2, join=True,
                       start_method="spawn")
    results = sorted(queue.get() for _ in range(2))
    for rank, (reported_rank, tp_rank, tp_size, values) in enumerate(results):
        assert (reported_rank, tp_rank, tp_size) == (rank, rank, 2)
        assert values == [[3.0] * 3] * 2


@pytest.mark.parametrize("rank, world_size, port, match", [
    (2, 2, 1234, "rank 2 is not in a world of size 2"),
    (0, 0, 1234, "world of size 0"),
    (0, 2, 0, "rendezvous port"),
    (0, 2, 70000, "rendezvous port"),
])
def test_bad_arguments_are_rejected(rank, world_size, port, match):
    with pytest.raises(ValueError, match=match):
        init_worker_distributed(rank, world_size, "127.0.0.1", port)
    assert parallel_state.get_tensor_model_parallel_world_size() == 1


def test_single_rank_group_and_destroy():
    store = start_rendezvous_store("127.0.0.1")
    init_worker_distributed(0, 1, "127.0.0.1", store.port, backend="gloo")
    try:
        assert torch.distributed.get_world_size() == 1
        with pytest.raises(RuntimeError, match="already joined"):
            init_worker_distributed(0, 1, "127.0.0.1", store.port)
    finally:
        destroy_worker_distributed()
    assert not torch.distributed.is_initialized()
    assert parallel_state.get_tensor_model_parallel_world_size() == 1
