"""Sending the whole request set on its arrival schedule, under a concurrency cap."""
import asyncio
import contextlib
import time
from dataclasses import dataclass

import aiohttp
from tqdm import tqdm

from vllm.benchmarks.serving.arrivals import arrival_offsets
from vllm.benchmarks.serving.random_dataset import SampleRequest
from vllm.benchmarks.serving.request_funcs import (BACKENDS, Backend, RequestInput,
                                                   RequestOutput, send_request)

REQUEST_TIMEOUT_S = 6 * 60 * 60


@dataclass
class TrafficConfig:
    """Where and how fast the requests go."""
    backend: str
    api_url: str
    model: str
    temperature: float = 0.0
    ignore_eos: bool = False
    request_rate: float = float("inf")
    burstiness: float = 1.0
    max_concurrency: int | None = None
    seed: int = 0
    disable_tqdm: bool = False


def describe_traffic(config: TrafficConfig) -> str:
    """The lines vLLM prints before sending traffic."""
    shape = " (Poisson process)" if config.burstiness == 1.0 else " (Gamma distribution)"
    return (f"Traffic request rate: {config.request_rate}\n"
            f"Burstiness factor: {config.burstiness}{shape}\n"
            f"Maximum request concurrency: {config.max_concurrency}")


async def run_requests(config: TrafficConfig,
                       samples: list[SampleRequest]) -> tuple[list[RequestOutput], float]:
    """Send every sample at its arrival time; return the outputs (in order) and the duration."""
    offsets = arrival_offsets(len(samples), config.request_rate, config.burstiness, config.seed)
    limit = (asyncio.Semaphore(config.max_concurrency)
             if config.max_concurrency else contextlib.nullcontext())
    progress = tqdm(total=len(samples), disable=config.disable_tqdm)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        sender = _Sender(session, BACKENDS[config.backend], limit, progress)
        start = time.perf_counter()
        outputs = await asyncio.gather(*(
            sender.send_at(start + offset, _request_input(config, sample))
            for offset, sample in zip(offsets, samples)))
        duration = time.perf_counter() - start
    progress.close()
    return list(outputs), duration


def _request_input(config: TrafficConfig, sample: SampleRequest) -> RequestInput:
    return RequestInput(prompt=sample.prompt, api_url=config.api_url,
                        prompt_len=sample.prompt_len, output_len=sample.expected_output_len,
                        model=config.model, temperature=config.temperature,
                        ignore_eos=config.ignore_eos)


@dataclass
class _Sender:
    session: aiohttp.ClientSession
    backend: Backend
    limit: asyncio.Semaphore | contextlib.nullcontext
    progress: tqdm

    async def send_at(self, send_time: float, request: RequestInput) -> RequestOutput:
        await asyncio.sleep(max(0.0, send_time - time.perf_counter()))
        async with self.limit:
            output = await send_request(self.session, self.backend, request)
        self.progress.update(1)
        return output
