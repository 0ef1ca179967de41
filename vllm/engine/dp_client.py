"""The front end's handle on every data-parallel rank: one EngineCoreClient per engine
core; each new request goes to the least-loaded rank and stays there."""
import asyncio
from typing import Optional

from vllm.core.messages import EngineCoreOutputs, EngineCoreRequest, EngineReady
from vllm.engine.core_client import EngineCoreClient, EngineDeadError
from vllm.engine.dp_ranks import rank_config
from vllm.logger import init_logger

logger = init_logger(__name__)


def rank_name(rank: int) -> str:
    return f"data-parallel rank {rank}'s engine core"


def make_engine_client(vllm_config, executor_cls=None):
    """EngineCoreClient for one engine core, DPEngineClient for several."""
    if vllm_config.parallel_config.data_parallel_size == 1:
        return EngineCoreClient(vllm_config, executor_cls)
    return DPEngineClient(vllm_config, executor_cls)


class RankLoads:
    """Waiting + running requests per rank: the latest count each engine core reported
    with its outputs (every front end's requests), or this front end's own unfinished
    requests there when that is higher (a report lags the requests just sent)."""

    def __init__(self, size: int):
        self.reported = [0] * size
        self.own = [0] * size

    def least_loaded(self) -> int:
        return min(range(len(self.own)),
                   key=lambda r: (max(self.reported[r], self.own[r]), self.own[r], r))

    def load(self, rank: int) -> int:
        return max(self.reported[rank], self.own[rank])


class DPEngineClient:
    """The EngineCoreClient interface over data_parallel_size engine cores.

    Local ranks are spawned here; remote ones (headless nodes) connect to TCP sockets
    bound on the data-parallel address. The instance is dead as soon as one rank is.
    """

    def __init__(self, vllm_config, executor_cls=None, client_index: int = 0):
        parallel = vllm_config.parallel_config
        local = parallel.local_dp_ranks
        remote_host = parallel.data_parallel_address
        self.client_index = client_index
        self.ranks = [EngineCoreClient(rank_config(vllm_config, rank), executor_cls,
                                       host=None if rank in local else remote_host,
                                       spawn=rank in local, name=rank_name(rank))
                      for rank in range(parallel.data_parallel_size)]
        self.loads = RankLoads(len(self.ranks))
        self.rank_of: dict[str, int] = {}  # unfinished request id -> its rank
        self.dead_error: Optional[EngineDeadError] = None
        self._receiving: dict[asyncio.Future, int] = {}

    # ---- life cycle ----------------------------------------------------------------------
    def start(self) -> None:
        for rank in self.ranks:
            rank.start()

    async def wait_ready(self) -> list[EngineReady]:
        """Every rank's READY; EngineStartError (naming the rank) if one fails first."""
        waits = [asyncio.ensure_future(rank.wait_ready()) for rank in self.ranks]
        try:
            return list(await asyncio.gather(*waits))
        finally:
            for wait in waits:
                wait.cancel()

    @property
    def is_alive(self) -> bool:
        return self.dead_error is None and all(rank.is_alive for rank in self.ranks)

    def check_health(self) -> None:
        if self.dead_error is not None:
            raise self.dead_error
        for rank in self.ranks:
            rank.check_health()

    def shutdown(self, timeout: float = 10.0) -> None:
        for receiving in self._receiving:
            receiving.cancel()
        for rank in self.ranks:
            rank.shutdown(timeout)

    # ---- requests --------------------------------------------------------------------------
    def add_request(self, request: EngineCoreRequest) -> None:
        self._check_alive()
        rank = self.loads.least_loaded()
        request.client_index = self.client_index
        self.ranks[rank].add_request(request)
        self.rank_of[request.request_id] = rank
        self.loads.own[rank] += 1

    def abort_requests(self, request_ids: list[str]) -> None:
        by_rank: dict[int, list[str]] = {}
        for request_id in request_ids:
            rank = self._forget(request_id)
            if rank is not None:
                by_rank.setdefault(rank, []).append(request_id)
        for rank, ids in by_rank.items():
            self.ranks[rank].abort_requests(ids)

    def request_stats(self) -> None:
        self._check_alive()
        for rank in self.ranks:
            rank.request_stats()

    def _forget(self, request_id: str) -> Optional[int]:
        rank = self.rank_of.pop(request_id, None)
        if rank is not None:
            self.loads.own[rank] -= 1
        return rank

    def _check_alive(self) -> None:
        if self.dead_error is not None:
            raise self.dead_error

    # ---- outputs ---------------------------------------------------------------------------
    async def get_output(self) -> EngineCoreOutputs:
        """The next batch from any rank (its engine_index says which); EngineDeadError
        once any rank is gone."""
        self._check_alive()
        if not self._receiving:
            for index, rank in enumerate(self.ranks):
                self._receive_from(index)
        done, _ = await asyncio.wait(self._receiving, return_when=asyncio.FIRST_COMPLETED)
        receiving = next(iter(done))
        index = self._receiving.pop(receiving)
        try:
            batch = receiving.result()
        except EngineDeadError as error:
            self.dead_error = error
            raise
        self._receive_from(index)
        self._account(index, batch)
        return batch

    def _receive_from(self, index: int) -> None:
        self._receiving[asyncio.ensure_future(self.ranks[index].get_output())] = index

    def _account(self, index: int, batch: EngineCoreOutputs) -> None:
        if batch.scheduler_stats is not None:
            stats = batch.scheduler_stats
            self.loads.reported[index] = stats.num_waiting + stats.num_running
        for output in batch.outputs:
            if output.finished:
                self._forget(output.request_id)
        for reasons in (batch.rejected, batch.failed, batch.errored):
            for request_id in reasons:
                self._forget(request_id)
