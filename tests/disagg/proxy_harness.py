"""Runs fake instances and the proxy in the test's event loop."""
import asyncio
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator, Callable

import aiohttp
from fake_pd_instance import FakeInstance, bound_socket

from vllm.disagg.proxy_app import start_server
from vllm.disagg.proxy_config import ProxyConfig
from vllm.disagg.proxy_state import ProxyState
from vllm.disagg.routing import STATE_KEY


def producer_info(name: str, port: int = 20002) -> dict:
    return {"engine_id": f"engine-{name}", "kv_role": "kv_producer", "kv_host": "10.1.1.1",
            "kv_port": port, "tensor_parallel_size": 2}


@dataclass
class Cluster:
    url: str
    state: ProxyState
    prefillers: list[FakeInstance]
    decoders: list[FakeInstance]
    client: aiohttp.ClientSession

    def instance(self, fake: FakeInstance):
        """The proxy's registry entry for a fake."""
        return next(inst for inst in self.state.instances.instances() if inst.url == fake.url)

    async def post(self, path: str, body: dict, **kwargs) -> tuple[int, str, bytes]:
        async with self.client.post(self.url + path, json=body, **kwargs) as response:
            return response.status, response.content_type, await response.read()


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached in time")
        await asyncio.sleep(0.01)


@asynccontextmanager
async def cluster(num_prefill: int = 1, num_decode: int = 1,
                  health_interval_s: float = 0.05,
                  prefill_kv_info: bool = True, fake_class=FakeInstance,
                  **proxy_options) -> AsyncIterator[Cluster]:
    """Fakes (prefillers publish producer KV info), a proxy in front, and a client.

    `fake_class` makes the fakes; `proxy_options` override ProxyConfig fields.
    """
    prefillers = [fake_class(f"p{i}", producer_info(f"p{i}", 20002 + i)
                             if prefill_kv_info else None)
                  for i in range(num_prefill)]
    decoders = [fake_class(f"d{i}") for i in range(num_decode)]
    fakes = prefillers + decoders
    for fake in fakes:
        await fake.start()
    options = {"request_timeout_s": 10.0, "probe_timeout_s": 2.0, **proxy_options}
    config = ProxyConfig("127.0.0.1", 0, [p.url for p in prefillers],
                         [d.url for d in decoders], health_interval_s=health_interval_s,
                         **options)
    sock = bound_socket()
    runner = await start_server(config, sock)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        async with aiohttp.ClientSession() as client:
            yield Cluster(url, runner.app[STATE_KEY], prefillers, decoders, client)
    finally:
        await runner.cleanup()
        for fake in fakes:
            await fake.stop()
