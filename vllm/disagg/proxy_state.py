"""Everything the proxy's handlers share: settings, instances, metrics, HTTP session."""
import asyncio
from dataclasses import dataclass, field
from typing import Coroutine, Optional

import aiohttp

from vllm.disagg.instances import InstanceRegistry
from vllm.disagg.proxy_config import ProxyConfig
from vllm.disagg.proxy_metrics import ProxyMetrics


@dataclass
class ProxyState:
    """Shared state of one proxy app; `session` exists while the app runs."""
    config: ProxyConfig
    instances: InstanceRegistry
    metrics: ProxyMetrics
    session: Optional[aiohttp.ClientSession] = None
    background: set[asyncio.Task] = field(default_factory=set)

    @classmethod
    def from_config(cls, config: ProxyConfig) -> "ProxyState":
        instances = InstanceRegistry(config.prefill_urls, config.decode_urls)
        return cls(config, instances, ProxyMetrics(instances))

    @property
    def request_timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=self.config.request_timeout_s)

    def http(self) -> aiohttp.ClientSession:
        """The shared client session; RuntimeError before the app started."""
        if self.session is None:
            raise RuntimeError("the proxy's HTTP session is not open")
        return self.session

    def spawn(self, coro: Coroutine, name: str) -> asyncio.Task:
        """Run a task in the background, keeping a reference until it ends."""
        task = asyncio.create_task(coro, name=name)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return task

    async def cancel_background(self) -> None:
        tasks = list(self.background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
