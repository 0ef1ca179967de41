"""The main loop of one tensor-parallel rank: start the worker, then serve the
executor's calls until it says shutdown or goes away."""
import os
import traceback
from typing import NamedTuple, Optional

import torch

from vllm.config import VllmConfig
from vllm.executor.rank_channel import STARTUP_CALL_ID, Endpoints, RankChannel, RpcCall
from vllm.logger import init_logger

logger = init_logger(__name__)

SHUTDOWN_METHOD = "shutdown"
EXECUTE_METHOD = "execute_model"
PARENT_CHECK_INTERVAL_MS = 1000


class RankSpec(NamedTuple):
    """Everything one rank needs to start; picklable."""
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    endpoints: Endpoints
    master_addr: str
    master_port: int
    parent_pid: Optional[int]  # exit when this process is gone (None: not watched)


def run_rank(vllm_config: VllmConfig, spec: RankSpec) -> None:
    """Entry point of a rank process (or Ray actor): returns at shutdown.

    Start-up failures are reported to the executor, then raised.
    """
    channel = RankChannel(spec.endpoints, spec.rank)
    try:
        worker = _report_startup(vllm_config, spec, channel)
        _serve(worker, channel, spec)
        worker.shutdown()
    finally:
        channel.close()


def _report_startup(vllm_config: VllmConfig, spec: RankSpec, channel: RankChannel):
    try:
        worker = start_worker(vllm_config, spec)
    except BaseException as error:
        channel.reply(STARTUP_CALL_ID, False, _describe(error))
        raise
    channel.reply(STARTUP_CALL_ID, True, os.getpid())
    return worker


def start_worker(vllm_config: VllmConfig, spec: RankSpec):
    from vllm.worker.worker import Worker
    worker = Worker(vllm_config, spec.rank, spec.local_rank)
    worker.init_distributed(spec.world_size, spec.master_addr, spec.master_port,
                            spec.local_world_size)
    worker.load_model()
    # Every rank samples the same tokens, so their global generators must agree.
    torch.manual_seed(vllm_config.model_config.seed)
    return worker


def _serve(worker, channel: RankChannel, spec: RankSpec) -> None:
    while True:
        call = channel.receive(PARENT_CHECK_INTERVAL_MS)
        if call is None:
            if _parent_is_gone(spec.parent_pid):
                logger.error("rank %d: the executor process is gone; exiting", spec.rank)
                return
            continue
        if call.method == SHUTDOWN_METHOD:
            return
        _handle(worker, channel, call, spec.rank)


def _handle(worker, channel: RankChannel, call: RpcCall, rank: int) -> None:
    try:
        value = _lookup(worker, call.method)(*call.args, **call.kwargs)
    except Exception as error:
        channel.reply(call.call_id, False, _describe(error))
        if call.method == EXECUTE_METHOD:
            raise  # the ranks are out of step now: this rank stops
        return
    if call.reply_ranks is None or rank in call.reply_ranks:
        channel.reply(call.call_id, True, value)


def _lookup(worker, method: str):
    function = getattr(worker, method, None) if not method.startswith("_") else None
    if not callable(function):
        raise AttributeError(f"the worker has no method {method!r}")
    return function


def _parent_is_gone(parent_pid: Optional[int]) -> bool:
    return parent_pid is not None and os.getppid() != parent_pid


def _describe(error: BaseException) -> tuple[str, str]:
    return f"{type(error).__name__}: {error}", traceback.format_exc()
