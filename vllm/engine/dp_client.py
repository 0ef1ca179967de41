"""The front end's handle on every data-parallel rank: one EngineCoreClient per engine
core; each new request goes to the least-loaded rank and stays there."""
import asyncio
from typing import Optional

from vllm.core.messages import EngineCoreOutputs, EngineCoreRequest, EngineReady
from vllm.engine.core_client import EngineCoreClient, EngineDeadError
from vllm.engine.core_launcher import RankAddresses
from vllm.engine.dp_handshake import HeadListener, RankEndpoint
from vllm.engine.dp_ranks import rank_config
from vllm.logger import init_logger

logger = init_logger(__name__)


def rank_name(rank: int) -> str:
    return f"data-parallel rank {rank}'s engine core"


def make_engine_client(vllm_config, executor_cls=None, client_index: int = 0,
                       attach: Optional[dict[int, RankAddresses]] = None):
    """EngineCoreClient for one engine core of its own, else DPEngineClient."""
    if vllm_config.parallel_config.data_parallel_size == 1 and attach is None:
        return EngineCoreClient(vllm_config, executor_cls)
    return DPEngineClient(vllm_config, executor_cls, client_index, attach)


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
    bound on the data-parallel address, which a HeadListener hands them when they join.
    The instance is dead as soon as one rank is.
    """

    def __init__(self, vllm_config, executor_cls=None, client_index: int = 0,
                 attach: Optional[dict[int, RankAddresses]] = None):
        """`attach`: the engine cores are started by another process (one of several API
        servers: `client_index` is ours), bind these addresses."""
        parallel = vllm_config.parallel_config
        self.client_index = client_index
        if attach is None:
            self.ranks = [self._own_rank(vllm_config, executor_cls, rank)
                          for rank in range(parallel.data_parallel_size)]
        else:
            self.ranks = [self._attached_rank(attach[rank], client_index,
                                              rank in parallel.remote_dp_ranks)
                          for rank in range(parallel.data_parallel_size)]
        self.head_listener = None
        if parallel.remote_dp_ranks and attach is None:
            try:
                self.head_listener = HeadListener(vllm_config, {
                    rank: RankEndpoint(rank, [self.ranks[rank].input_address],
                                       [self.ranks[rank].output_address])
                    for rank in parallel.remote_dp_ranks})
            except OSError:
                for rank in self.ranks:
                    rank.shutdown()
                raise
        self.loads = RankLoads(len(self.ranks))
        self.rank_of: dict[str, int] = {}  # unfinished request id -> its rank
        self.dead_error: Optional[EngineDeadError] = None
        self._receiving: dict[asyncio.Future, int] = {}

    @staticmethod
    def _own_rank(vllm_config, executor_cls, rank: int) -> EngineCoreClient:
        parallel = vllm_config.parallel_config
        local = rank in parallel.local_dp_ranks
        return EngineCoreClient(rank_config(vllm_config, rank), executor_cls,
                                host=None if local else parallel.data_parallel_address,
                                spawn=local, name=rank_name(rank))

    @staticmethod
    def _attached_rank(addresses: RankAddresses, client_index: int,
                       remote: bool) -> EngineCoreClient:
        # The launcher stops local engine cores; the first API server stops remote ones.
        bound = (addresses.input_addresses[client_index],
                 addresses.output_addresses[client_index])
        return EngineCoreClient(None, spawn=False, name=rank_name(addresses.rank),
                                addresses=bound, stops_engine=remote and client_index == 0)

    # ---- life cycle ----------------------------------------------------------------------
    def start(self) -> None:
        for rank in self.ranks:
            rank.start()
        if self.head_listener is not None:
            self.head_listener.start()

    async def wait_ready(self) -> list[EngineReady]:
        """Every rank's READY; EngineStartError (naming the rank) if one fails first."""
        waits = [asyncio.ensure_future(rank.wait_ready()) for rank in self.ranks]
        try:
            return list(await asyncio.gather(*waits))
        finally:
            for wait in waits:
                wait.cancel()
            self._stop_listening()

    def _stop_listening(self) -> None:
        if self.head_listener is not None:
            self.head_listener.close()
            self.head_listener = None

    @property
    def is_alive(self) -> bool:
        return self.dead_error is None and all(rank.is_alive for rank in self.ranks)

    def check_health(self) -> None:
        if self.dead_error is not None:
            raise self.dead_error
        for rank in self.ranks:
            rank.check_health()

    def shutdown(self, timeout: float = 10.0) -> None:
        self._stop_listening()
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
