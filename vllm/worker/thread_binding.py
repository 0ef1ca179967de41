"""Which cores each tensor-parallel rank's intra-op threads run on.

VLLM_CPU_OMP_THREADS_BIND, as in vLLM's CPU build: one core list per rank, separated
by "|" ("0-3|4-7", "0,2,4-5|1,3,6-7"); "auto" or unset splits the cores this process
may use evenly across the ranks; "nobind" leaves affinity alone and only sets the
thread count to the ranks' share of the cores.
"""
import os
from typing import NamedTuple, Optional

import torch

from vllm.logger import init_logger

logger = init_logger(__name__)

THREADS_BIND_ENV = "VLLM_CPU_OMP_THREADS_BIND"


class ThreadBinding(NamedTuple):
    cores: Optional[list[int]]  # None: leave the affinity as it is
    num_threads: int


def parse_core_list(text: str) -> list[int]:
    """'0-3,6,8-9' -> [0, 1, 2, 3, 6, 8, 9]."""
    cores: list[int] = []
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        try:
            low, high = int(first), int(last) if dash else int(first)
        except ValueError:
            raise ValueError(f"{THREADS_BIND_ENV}: {part!r} is not a core or a core range "
                             "such as 4-7") from None
        if low < 0 or high < low:
            raise ValueError(f"{THREADS_BIND_ENV}: bad core range {part!r}")
        cores.extend(range(low, high + 1))
    return sorted(set(cores))


def split_cores_evenly(cores: list[int], world_size: int) -> list[list[int]]:
    """Contiguous, equal shares; with fewer cores than ranks, ranks share cores."""
    if world_size < 1 or not cores:
        raise ValueError(f"cannot split {len(cores)} cores over {world_size} ranks")
    if len(cores) < world_size:
        return [[cores[rank % len(cores)]] for rank in range(world_size)]
    share = len(cores) // world_size
    return [cores[rank * share:(rank + 1) * share] for rank in range(world_size)]


def thread_binding_for_rank(rank: int, world_size: int, setting: Optional[str],
                            available_cores: list[int]) -> ThreadBinding:
    """The binding of `rank` given the env setting and the cores this process may use."""
    setting = (setting or "auto").strip()
    if setting == "nobind":
        return ThreadBinding(None, max(1, len(available_cores) // world_size))
    if setting == "auto":
        cores = split_cores_evenly(available_cores, world_size)[rank]
        return ThreadBinding(cores, len(cores))
    per_rank = setting.split("|")
    if len(per_rank) != world_size:
        raise ValueError(f"{THREADS_BIND_ENV}={setting!r} lists {len(per_rank)} core "
                         f"range(s) but there are {world_size} tensor-parallel ranks")
    cores = parse_core_list(per_rank[rank])
    return ThreadBinding(cores, len(cores))


def bind_rank_threads(rank: int, world_size: int) -> ThreadBinding:
    """Apply this rank's binding to the current process (affinity and torch threads)."""
    available = sorted(os.sched_getaffinity(0))
    binding = thread_binding_for_rank(rank, world_size, os.environ.get(THREADS_BIND_ENV),
                                      available)
    if binding.cores is not None:
        os.sched_setaffinity(0, binding.cores)
    torch.set_num_threads(binding.num_threads)
    logger.info("rank %d: %d intra-op thread(s) on cores %s", rank, binding.num_threads,
                binding.cores if binding.cores is not None else "(not bound)")
    return binding
