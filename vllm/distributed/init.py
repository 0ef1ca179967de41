"""Joining the tensor-parallel process group through a TCP store rendezvous."""
import contextlib
import os
from datetime import timedelta
from typing import Optional

import torch.distributed as dist

from vllm.distributed.network import interface_of, serve_tcp_store
from vllm.distributed.parallel_state import (destroy_tensor_parallel,
                                             init_tensor_parallel)

DEFAULT_TIMEOUT_S = 600.0
GLOO_IFNAME_ENV = "GLOO_SOCKET_IFNAME"


def start_rendezvous_store(host: str, port: int = 0, world_size: int = 1,
                           timeout_s: float = DEFAULT_TIMEOUT_S) -> dist.TCPStore:
    """Host the rendezvous store in this process, listening on `host` only; port 0 picks
    a free port (see `.port`).

    The ranks then join with `init_worker_distributed(..., master_port=store.port)`.
    """
    _check_port(port, allow_zero=True)
    return serve_tcp_store(host, port, timedelta(seconds=timeout_s))


def init_worker_distributed(rank: int, world_size: int, master_addr: str, master_port: int,
                            backend: Optional[str] = None,
                            timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Join the process group of `world_size` ranks and make it the tensor-parallel group.

    The store at master_addr:master_port must already be served (start_rendezvous_store).
    `backend` defaults to the platform's collective backend.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of size {world_size}")
    _check_port(master_port, allow_zero=False)
    if dist.is_initialized():
        raise RuntimeError("this process has already joined a process group")
    if backend is None:
        from vllm.platforms import current_platform
        backend = current_platform.dist_backend
    timeout = timedelta(seconds=timeout_s)
    store = dist.TCPStore(master_addr, master_port, is_master=False, timeout=timeout)
    with _gloo_listens_on(master_addr if backend == "gloo" else None):
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size,
                                timeout=timeout)
    init_tensor_parallel(rank, world_size, group=None)


def destroy_worker_distributed() -> None:
    """Leave the process group (if joined) and return to rank 0 of 1."""
    if dist.is_initialized():
        dist.destroy_process_group()
    destroy_tensor_parallel()


@contextlib.contextmanager
def _gloo_listens_on(host: Optional[str]):
    # init_process_group builds gloo's device from GLOO_SOCKET_IFNAME (else from the
    # hostname's address): name the interface holding the rendezvous host, which is this
    # host's for local ranks, unless the user chose one.
    interface = interface_of(host) if host and not os.environ.get(GLOO_IFNAME_ENV) else None
    if interface is None:
        yield
        return
    os.environ[GLOO_IFNAME_ENV] = interface
    try:
        yield
    finally:
        os.environ.pop(GLOO_IFNAME_ENV, None)


def _check_port(port: int, allow_zero: bool) -> None:
    low = 0 if allow_zero else 1
    if not isinstance(port, int) or not low <= port <= 65535:
        raise ValueError(f"rendezvous port must be an integer in [{low}, 65535], got {port!r}")
