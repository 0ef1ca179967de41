"""What differs between the data-parallel ranks of one host: each rank's config, its
pinned ports and its share of the cores."""
import dataclasses
import os

from vllm.config import VllmConfig
from vllm.executor.rank_channel import PORT_ENV, pinned_base_port


def rank_config(vllm_config: VllmConfig, rank: int) -> VllmConfig:
    """The config of the engine core of data-parallel `rank` (hosted here)."""
    parallel = vllm_config.parallel_config
    if rank not in range(parallel.data_parallel_size):
        raise ValueError(f"data-parallel rank {rank} is not in [0, "
                         f"{parallel.data_parallel_size})")
    return dataclasses.replace(vllm_config, parallel_config=dataclasses.replace(
        parallel, data_parallel_rank=rank,
        data_parallel_rank_local=rank - parallel.data_parallel_start_rank))


def ports_per_engine(tensor_parallel_size: int) -> int:
    """An engine core's executor pins a rendezvous, a reply and one call port per rank."""
    return tensor_parallel_size + 2


def pin_rank_ports(vllm_config: VllmConfig) -> None:
    """Shift VLLM_PORT (if set) past the lower local ranks' ports, so that two engine
    cores of this host never pick the same one."""
    base = pinned_base_port()
    parallel = vllm_config.parallel_config
    if base is None or parallel.data_parallel_size_local == 1:
        return
    span = ports_per_engine(parallel.tensor_parallel_size)
    os.environ[PORT_ENV] = str(base + parallel.data_parallel_rank_local * span)


def local_rank_slot(vllm_config: VllmConfig, tp_rank: int) -> tuple[int, int]:
    """(slot, slots): a tensor-parallel rank's place among every rank this host runs,
    for its device and its share of the cores."""
    parallel = vllm_config.parallel_config
    tp = parallel.tensor_parallel_size
    return (parallel.data_parallel_rank_local * tp + tp_rank,
            parallel.data_parallel_size_local * tp)
