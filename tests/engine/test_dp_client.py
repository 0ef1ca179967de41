"""DPEngineClient over two engine-core processes with the fake executor: requests spread
by load and stay on their rank, aborts reach the right rank, a dead rank fails the
whole instance at once."""
import asyncio
import dataclasses
import os
import signal
import time

import pytest

from test_core_client import (FakeExecutor, collect_until, engine_request, finished_ids,
                              make_config, wait_started)
from vllm.core.messages import EngineCoreOutputs
from vllm.engine.core_client import EngineDeadError, EngineStartError
from vllm.engine.dp_client import DPEngineClient, RankLoads


def dp_config(size: int = 2, step_sleep: float = 0.0):
    config = make_config(step_sleep)
    parallel = dataclasses.replace(config.parallel_config, data_parallel_size=size,
                                   data_parallel_size_local=size)
    return dataclasses.replace(config, parallel_config=parallel)


async def started(size: int = 2, step_sleep: float = 0.0) -> DPEngineClient:
    return await wait_started(DPEngineClient(dp_config(size, step_sleep), FakeExecutor))


def engines_of(batches: list[EngineCoreOutputs]) -> dict[str, int]:
    return {o.request_id: b.engine_index for b in batches for o in b.outputs}


def test_least_loaded_rank_counts_reports_and_own_requests():
    loads = RankLoads(3)
    assert loads.least_loaded() == 0
    loads.own[0] = 1
    assert loads.least_loaded() == 1
    loads.reported[1] = 5  # another front end's requests run there
    loads.own[2] = 2
    assert loads.least_loaded() == 0
    loads.own[0] = 3
    assert loads.least_loaded() == 2


def test_requests_spread_stay_on_their_rank_and_abort_there():
    async def run():
        client = await started(step_sleep=0.01)
        try:
            for i in range(16):
                client.add_request(engine_request(f"r{i}", [1, 2, 3], max_tokens=4))
            seen = []
            await collect_until(client, lambda b: seen.append(b) or
                                len(finished_ids(seen)) == 16)
            assert client.rank_of == {} and client.loads.own == [0, 0]
            await abort_on_rank_1(client)
            return client, seen
        finally:
            client.shutdown()

    client, batches = asyncio.run(run())
    engines = engines_of(batches)
    counts = [list(engines.values()).count(rank) for rank in (0, 1)]
    assert counts == [8, 8]
    for batch in batches:  # every output of a request comes from its first rank
        for output in batch.outputs:
            assert engines[output.request_id] == batch.engine_index
    assert not any(rank.process.is_alive() for rank in client.ranks)


async def abort_on_rank_1(client: DPEngineClient) -> None:
    client.add_request(engine_request("a", [1, 2], max_tokens=100, ignore_eos=True))
    client.add_request(engine_request("b", [1, 2], max_tokens=100, ignore_eos=True))
    assert client.rank_of == {"a": 0, "b": 1}
    await collect_until(client, lambda b: b.engine_index == 1 and b.outputs)
    client.abort_requests(["b"])
    seen = []

    def rank_1_idle(batch):
        seen.append(batch)
        return batch.engine_index == 1 and batch.scheduler_stats.num_running == 0
    await collect_until(client, rank_1_idle)
    assert client.loads.own == [1, 0]
    assert "b" not in finished_ids(seen)
    client.abort_requests(["a"])


def test_a_killed_rank_fails_the_instance_promptly():
    async def run():
        client = await started(step_sleep=0.02)
        try:
            client.add_request(engine_request("a", [1, 2], max_tokens=500, ignore_eos=True))
            client.add_request(engine_request("b", [1, 2], max_tokens=500, ignore_eos=True))
            await collect_until(client, lambda b: b.engine_index == 1 and b.outputs)
            os.kill(client.ranks[1].process.pid, signal.SIGKILL)
            started_at = time.monotonic()
            with pytest.raises(EngineDeadError, match="data-parallel rank 1.*died"):
                await collect_until(client, lambda b: False)
            assert time.monotonic() - started_at < 10
            with pytest.raises(EngineDeadError, match="rank 1"):
                client.check_health()
            with pytest.raises(EngineDeadError):
                client.add_request(engine_request("c", [1], max_tokens=1))
        finally:
            client.shutdown()

    asyncio.run(run())


class FailsOnRankOne(FakeExecutor):

    def __init__(self, vllm_config):
        if vllm_config.parallel_config.data_parallel_rank == 1:
            raise ValueError("rank 1 cannot load the model")
        super().__init__(vllm_config)


def test_a_rank_that_cannot_start_names_itself():
    async def run():
        client = DPEngineClient(dp_config(), FailsOnRankOne)
        client.start()
        try:
            with pytest.raises(EngineStartError,
                               match="data-parallel rank 1's engine core failed to start"):
                await asyncio.wait_for(client.wait_ready(), 120)
        finally:
            client.shutdown()

    asyncio.run(run())
