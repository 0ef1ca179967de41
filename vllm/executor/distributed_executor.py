"""Base of the executors that run each tensor-parallel rank in a process of its own."""
import atexit
import itertools
import threading
import time
import weakref
from typing import Any, Optional, Sequence

import zmq

from vllm.config import VllmConfig
from vllm.core.sched_output import ModelRunnerOutput, SchedulerOutput
from vllm.distributed.init import start_rendezvous_store
from vllm.executor.rank_channel import (STARTUP_CALL_ID, ExecutorChannel, RpcCall,
                                        pinned_base_port)
from vllm.executor.rank_launcher import RankHealth, RankLauncher, watch_ranks
from vllm.executor.worker_proc import EXECUTE_METHOD, SHUTDOWN_METHOD, RankSpec
from vllm.logger import init_logger

logger = init_logger(__name__)

POLL_MS = 100
STARTUP_TIMEOUT_S = 1800.0
SHUTDOWN_GRACE_S = 5.0


class ExecutorDeadError(RuntimeError):
    """A rank died or failed a step: this executor serves no more steps."""


class RankError(RuntimeError):
    """A rank raised while serving a call."""


class DistributedExecutor:
    """One worker per rank in its own process; each call is broadcast to every rank and
    execute_model returns rank 0's output. Subclasses say how ranks are launched."""

    def __init__(self, vllm_config: VllmConfig):
        self.vllm_config = vllm_config
        self.world_size = vllm_config.parallel_config.tensor_parallel_size
        self.health = RankHealth()
        self.launcher = self.make_launcher()
        host = self.launcher.host_address()
        base_port = pinned_base_port()
        store = start_rendezvous_store(host, base_port or 0)
        self.channel = ExecutorChannel(self.world_size, host, base_port)
        self._call_ids = itertools.count(STARTUP_CALL_ID + 1)
        self._finalizer = weakref.finalize(self, stop_ranks, self.launcher, self.channel,
                                           store, self.health)
        # Before the exit hooks of what the launcher set up (Ray's shutdown) run.
        atexit.register(self._finalizer)
        try:
            self.launcher.launch(vllm_config, RankSpec(
                rank=-1, world_size=self.world_size, local_rank=-1, local_world_size=-1,
                endpoints=self.channel.endpoints, master_addr=host, master_port=store.port,
                parent_pid=None))
            threading.Thread(target=watch_ranks, args=(self.launcher, self.health),
                             name="vllm-rank-monitor", daemon=True).start()
            self.worker_pids = self._collect(STARTUP_CALL_ID, "start-up",
                                             range(self.world_size), STARTUP_TIMEOUT_S)
        except BaseException:
            self.shutdown()
            raise
        logger.info("%d tensor-parallel ranks ready (pids %s)", self.world_size,
                    self.worker_pids)

    def make_launcher(self) -> RankLauncher:
        raise NotImplementedError

    # ---- the executor interface the engine core uses ---------------------------------
    def determine_num_blocks(self) -> int:
        return min(self.collective_rpc("determine_num_blocks"))

    def initialize_kv_cache(self, num_blocks: int) -> None:
        self.collective_rpc("initialize_kv_cache", (num_blocks,))

    def execute_model(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput:
        try:
            return self.collective_rpc(EXECUTE_METHOD, (scheduler_output,),
                                       reply_ranks=(0,))[0]
        except RankError as error:
            self.health.mark_dead(str(error))
            raise ExecutorDeadError(str(error)) from None

    def collective_rpc(self, method: str, args: tuple = (), kwargs: Optional[dict] = None,
                       reply_ranks: Optional[Sequence[int]] = None,
                       timeout_s: Optional[float] = None) -> list[Any]:
        """Call `method` on every rank's worker; the results of `reply_ranks` (default:
        all), in rank order. Raises RankError if a rank raised, ExecutorDeadError if a
        rank is gone, TimeoutError after `timeout_s`."""
        self.check_health()
        ranks = tuple(range(self.world_size)) if reply_ranks is None else tuple(reply_ranks)
        call_id = next(self._call_ids)
        try:
            self.channel.broadcast(RpcCall(call_id, method, tuple(args), dict(kwargs or {}),
                                           ranks))
        except ConnectionError as error:
            self.health.mark_dead(str(error))
            self.check_health()
        return self._collect(call_id, method, ranks, timeout_s)

    def check_health(self) -> None:
        if self.health.error is not None:
            raise ExecutorDeadError(f"the tensor-parallel workers are dead: "
                                    f"{self.health.error}")

    def register_failure_callback(self, callback) -> None:
        """`callback(error_line)` runs (in a monitor thread) when a rank dies."""
        self.health.add_callback(callback)

    def shutdown(self) -> None:
        self._finalizer()

    # ---- replies -----------------------------------------------------------------------
    def _collect(self, call_id: int, method: str, ranks: Sequence[int],
                 timeout_s: Optional[float]) -> list[Any]:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        results: dict[int, Any] = {}
        while len(results) < len(ranks):
            reply = self.channel.poll_reply(POLL_MS)
            if reply is None:
                self.check_health()
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"{method}: no reply from ranks "
                                       f"{sorted(set(ranks) - set(results))} in {timeout_s} s")
                continue
            if reply.call_id != call_id:
                continue
            if not reply.ok:
                message, trace = reply.value
                logger.debug("rank %d traceback:\n%s", reply.rank, trace)
                raise RankError(f"rank {reply.rank} failed in {method}: {message}")
            if reply.rank in ranks:
                results[reply.rank] = reply.value
        return [results[rank] for rank in ranks]


def stop_ranks(launcher: RankLauncher, channel: ExecutorChannel, store: Any,
               health: RankHealth) -> None:
    """Ask every rank to exit, end the ones that do not, close the sockets (runs once:
    at shutdown, when the executor is collected, or at interpreter exit)."""
    health.stopping.set()
    try:
        channel.broadcast(RpcCall(-1, SHUTDOWN_METHOD, (), {}, ()), connect_timeout_ms=0)
    except (ConnectionError, zmq.ZMQError):
        pass  # a rank that is gone needs no message
    launcher.stop(SHUTDOWN_GRACE_S)
    channel.close()
    del store
