"""The engine-core process and its ZMQ client (and AsyncLLM on top), with a fake executor.

The fake executor stands in for the model: it "samples" Hello / world alternately, so these
tests run the real busy loop, scheduler, KV cache manager and wire protocol in a few seconds.
"""
import asyncio
import os
import signal
import time
import types

import pytest
import torch

from vllm.config import CacheConfig, ModelConfig, SchedulerConfig, VllmConfig
from vllm.core.sched_output import ModelRunnerOutput
from vllm.engine.async_llm import AsyncLLM
from vllm.engine.core_client import EngineCoreClient, EngineDeadError, EngineStartError
from vllm.core.messages import EngineCoreRequest
from vllm.engine.processor import InvalidRequestError
from vllm.sampling_params import SamplingParams

HELLO, WORLD = 19556, 905  # "Hello", " world" in the demo tokenizer
CRASH_TOKEN = 13
NUM_BLOCKS = 32
BLOCK_SIZE = 16
MAX_MODEL_LEN = 128


class FakeExecutor:
    """Samples HELLO, WORLD, HELLO, ... once a request's prompt is computed."""

    def __init__(self, vllm_config):
        self.config = vllm_config
        self.step_sleep = vllm_config.additional_config.get("step_sleep", 0.0)
        self.requests: dict[str, list[int]] = {}  # id -> [prompt length, generated]

    def determine_num_blocks(self) -> int:
        return self.config.cache_config.num_gpu_blocks_override or NUM_BLOCKS

    def initialize_kv_cache(self, num_blocks: int) -> None:
        pass

    def execute_model(self, scheduler_output) -> ModelRunnerOutput:
        time.sleep(self.step_sleep)
        for request_id in scheduler_output.finished_req_ids:
            self.requests.pop(request_id, None)
        computed = {}
        for new in scheduler_output.scheduled_new_reqs:
            if new.prompt_token_ids[0] == CRASH_TOKEN:
                raise RuntimeError("boom: the fake model crashed")
            self.requests[new.req_id] = [len(new.prompt_token_ids), 0]
            computed[new.req_id] = new.num_computed_tokens
        for cached in scheduler_output.scheduled_cached_reqs:
            computed[cached.req_id] = cached.num_computed_tokens
        request_ids, sampled = [], []
        for request_id, count in scheduler_output.num_scheduled_tokens.items():
            state = self.requests[request_id]
            request_ids.append(request_id)
            if computed[request_id] + count < state[0]:
                sampled.append([])
                continue
            sampled.append([(HELLO, WORLD)[state[1] % 2]])
            state[1] += 1
        return ModelRunnerOutput(req_ids=request_ids, sampled_token_ids=sampled)

    def shutdown(self) -> None:
        pass


class FailingExecutor(FakeExecutor):

    def __init__(self, vllm_config):
        raise ValueError("no such model: the fake loader refuses")


def make_config(step_sleep: float = 0.0) -> VllmConfig:
    hf_config = types.SimpleNamespace(vocab_size=49152, eos_token_id=2)
    return VllmConfig(
        model_config=ModelConfig("fake", "fake", hf_config, torch.float32, MAX_MODEL_LEN),
        cache_config=CacheConfig(BLOCK_SIZE, True, num_gpu_blocks_override=NUM_BLOCKS),
        scheduler_config=SchedulerConfig(8, 256, MAX_MODEL_LEN),
        additional_config={"step_sleep": step_sleep})


def engine_request(request_id: str, prompt: list[int], **params) -> EngineCoreRequest:
    return EngineCoreRequest(request_id, prompt, SamplingParams(**params), time.time())


async def started_client(executor=FakeExecutor, step_sleep: float = 0.0) -> EngineCoreClient:
    return await wait_started(EngineCoreClient(make_config(step_sleep), executor))


async def wait_started(client):
    """Start a client (one engine core or several) and wait until it is ready."""
    client.start()
    try:
        await asyncio.wait_for(client.wait_ready(), 120)
    except BaseException:
        client.shutdown()
        raise
    return client


async def collect_until(client: EngineCoreClient, done, timeout: float = 60):
    """Receive output batches until done(batch) is true; return every batch seen."""
    batches = []
    deadline = time.monotonic() + timeout
    while True:
        batch = await asyncio.wait_for(client.get_output(), deadline - time.monotonic())
        batches.append(batch)
        if done(batch):
            return batches


def finished_ids(batches) -> dict[str, str]:
    return {o.request_id: o.finish_reason for b in batches for o in b.outputs if o.finished}


def idle(batch) -> bool:
    stats = batch.scheduler_stats
    return stats.num_running == 0 and stats.num_waiting == 0 and \
        stats.num_free_blocks == NUM_BLOCKS


def test_round_trip_then_clean_shutdown():
    async def run():
        client = await started_client()
        assert client.ready.num_blocks == NUM_BLOCKS
        assert client.ready.max_model_len == MAX_MODEL_LEN
        client.add_request(engine_request("a", [1, 2, 3], max_tokens=5))
        client.add_request(engine_request("b", list(range(1, 40)), max_tokens=3))
        seen = []
        await collect_until(client, lambda b: seen.append(b) or (
            idle(b) and len(finished_ids(seen)) == 2))
        return client, seen

    client, batches = asyncio.run(run())
    try:
        tokens = {}
        for batch in batches:
            for output in batch.outputs:
                tokens.setdefault(output.request_id, []).extend(output.new_token_ids)
        assert tokens["a"] == [HELLO, WORLD, HELLO, WORLD, HELLO]
        assert tokens["b"] == [HELLO, WORLD, HELLO]
        assert finished_ids(batches) == {"a": "length", "b": "length"}
    finally:
        ipc_dir = client._ipc_dir
        client.shutdown()
    assert client.process.exitcode == 0
    assert not os.path.exists(ipc_dir)
    client.shutdown()  # a second call is a no-op


def test_abort_frees_blocks_and_stops_outputs():
    async def run():
        client = await started_client(step_sleep=0.02)
        try:
            client.add_request(engine_request("long", [1, 2, 3], max_tokens=100,
                                              ignore_eos=True))
            first = await collect_until(client, lambda b: any(
                o.request_id == "long" for o in b.outputs))
            assert first[-1].scheduler_stats.num_free_blocks < NUM_BLOCKS
            client.abort_requests(["long", "unknown-id"])
            after = await collect_until(client, idle)
            return after
        finally:
            client.shutdown()

    after = asyncio.run(run())
    assert "long" not in finished_ids(after)


def test_engine_rejects_what_it_can_never_run():
    async def run():
        client = await started_client()
        try:
            too_long = list(range(1, NUM_BLOCKS * BLOCK_SIZE + 2))
            client.add_request(engine_request("huge", too_long, max_tokens=1))
            # Sampling values were validated by the front end; the vocabulary is the engine's.
            client.add_request(engine_request("bad", [1, 2], max_tokens=1,
                                              logit_bias={49152: 1.0}))
            client.add_request(engine_request("fine", [1, 2], max_tokens=2))
            seen = []
            await collect_until(client, lambda b: seen.append(b) or "fine" in finished_ids(seen))
            return seen
        finally:
            client.shutdown()

    seen = asyncio.run(run())
    rejected = {k: v for batch in seen for k, v in batch.rejected.items()}
    assert set(rejected) == {"huge", "bad"}
    assert "can never fit" in rejected["huge"]
    assert "logit_bias is outside the vocabulary" in rejected["bad"]


def test_start_failure_is_reported_with_its_reason():
    async def run():
        client = EngineCoreClient(make_config(), FailingExecutor)
        client.start()
        try:
            with pytest.raises(EngineStartError, match="fake loader refuses") as info:
                await asyncio.wait_for(client.wait_ready(), 120)
            assert info.value.is_config_error
        finally:
            client.shutdown()
        return client

    client = asyncio.run(run())
    assert client.process.exitcode == 1


def test_crash_in_busy_loop_marks_engine_dead():
    async def run():
        client = await started_client()
        try:
            client.add_request(engine_request("crash", [CRASH_TOKEN, 1], max_tokens=2))
            with pytest.raises(EngineDeadError, match="boom"):
                await collect_until(client, lambda b: False)
            with pytest.raises(EngineDeadError):
                client.add_request(engine_request("after", [1], max_tokens=1))
            assert not client.is_alive
        finally:
            client.shutdown()

    asyncio.run(run())


def test_killed_engine_is_detected():
    async def run():
        client = await started_client()
        try:
            os.kill(client.process.pid, signal.SIGKILL)
            with pytest.raises(EngineDeadError, match="died unexpectedly"):
                await collect_until(client, lambda b: False)
        finally:
            client.shutdown()

    asyncio.run(run())


# ---- AsyncLLM over the fake engine -------------------------------------------------------
async def started_async_llm(tokenizer, step_sleep: float = 0.0) -> AsyncLLM:
    client = await started_client(step_sleep=step_sleep)
    engine = AsyncLLM(make_config(step_sleep), tokenizer, client)
    engine.start_output_handler()
    return engine


async def generate_all(engine: AsyncLLM, prompt, params: SamplingParams, request_id: str):
    return [output async for output in engine.generate(prompt, params, request_id)]


def test_async_llm_streams_deltas_and_handles_stop_strings(tokenizer):
    async def run():
        engine = await started_async_llm(tokenizer)
        try:
            deltas = await generate_all(engine, [1, 2, 3], SamplingParams(max_tokens=4), "r1")
            stopped = await generate_all(engine, "Hi", SamplingParams(max_tokens=50, stop=[
                " world"]), "r2")
            fanned = await generate_all(engine, [4, 5], SamplingParams(max_tokens=2, n=3),
                                        "r3")
            await asyncio.sleep(0.2)
            engine.client.request_stats()
            await wait_for_idle(engine)
            return deltas, stopped, fanned
        finally:
            await engine.shutdown()

    deltas, stopped, fanned = asyncio.run(run())
    assert "".join(d.outputs[0].text for d in deltas) == "Hello worldHello world"
    assert [t for d in deltas for t in d.outputs[0].token_ids] == [HELLO, WORLD, HELLO, WORLD]
    assert deltas[-1].finished and deltas[-1].outputs[0].finish_reason == "length"
    assert "".join(d.outputs[0].text for d in stopped) == "Hello"
    assert stopped[-1].outputs[0].finish_reason == "stop"
    assert stopped[-1].outputs[0].stop_reason == " world"
    assert all(d.request_id == "r3" for d in fanned) and fanned[-1].finished
    assert sorted({d.outputs[0].index for d in fanned}) == [0, 1, 2]


async def wait_for_idle(engine: AsyncLLM, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = engine.latest_stats
        if stats.num_running == 0 and stats.num_waiting == 0 and \
                stats.num_free_blocks == NUM_BLOCKS:
            return
        engine.client.request_stats()
        await asyncio.sleep(0.05)
    raise TimeoutError(f"engine not idle: {engine.latest_stats}")


def test_async_llm_aborts_when_the_consumer_stops(tokenizer):
    async def run():
        engine = await started_async_llm(tokenizer, step_sleep=0.02)
        try:
            outputs = engine.generate([1, 2], SamplingParams(max_tokens=100, ignore_eos=True),
                                      "gone")
            await outputs.__anext__()
            assert engine.latest_stats.num_running == 1
            await outputs.aclose()
            await wait_for_idle(engine)
            task = asyncio.ensure_future(generate_all(
                engine, [1, 2], SamplingParams(max_tokens=100, ignore_eos=True), "cancelled"))
            await asyncio.sleep(0.3)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await wait_for_idle(engine)
            with pytest.raises(InvalidRequestError, match="too long"):
                engine.generate(list(range(1, MAX_MODEL_LEN + 1)), SamplingParams(), "long")
        finally:
            await engine.shutdown()

    asyncio.run(run())


def test_async_llm_fails_requests_when_the_engine_dies(tokenizer):
    async def run():
        engine = await started_async_llm(tokenizer, step_sleep=0.02)
        try:
            outputs = engine.generate([1, 2], SamplingParams(max_tokens=100, ignore_eos=True),
                                      "victim")
            await outputs.__anext__()
            os.kill(engine.client.process.pid, signal.SIGKILL)
            with pytest.raises(EngineDeadError):
                async for _ in outputs:
                    pass
            with pytest.raises(EngineDeadError):
                engine.generate([1], SamplingParams(), "next")
            with pytest.raises(EngineDeadError):
                engine.check_health()
        finally:
            await engine.shutdown()

    asyncio.run(run())
