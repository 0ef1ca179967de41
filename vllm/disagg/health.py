"""Background health checks: /health on every instance, /v1/kv_transfer/info until known."""
import asyncio
from typing import Optional

import aiohttp

from vllm.disagg.instances import Instance, InstanceRegistry
from vllm.kv_transfer_params import KvInfo
from vllm.disagg.upstream import describe
from vllm.logger import init_logger

logger = init_logger(__name__)

HEALTH_PATH = "/health"
KV_INFO_PATH = "/v1/kv_transfer/info"


class HealthMonitor:
    """Polls every instance each `interval_s`; start() runs a first round before returning."""

    def __init__(self, instances: InstanceRegistry, session: aiohttp.ClientSession,
                 interval_s: float, probe_timeout_s: float,
                 headers: Optional[dict[str, str]] = None):
        self._instances = instances
        self._session = session
        self._interval_s = interval_s
        self._timeout = aiohttp.ClientTimeout(total=probe_timeout_s)
        self._headers = headers or {}
        self._task: Optional[asyncio.Task] = None
        self._refused: set[str] = set()  # instances whose KV info answered 401/403

    async def start(self) -> None:
        await self.check_all()
        self._task = asyncio.create_task(self._loop(), name="proxy-health")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._task = None

    async def check_all(self) -> None:
        """One round of checks, all instances at once."""
        await asyncio.gather(*(self.check(inst) for inst in self._instances.instances()))

    async def check(self, instance: Instance) -> None:
        """Update one instance's health flag, and its KV info while that is unknown."""
        problem = await self._probe_health(instance)
        if problem is not None:
            self._instances.mark_unhealthy(instance, problem)
            return
        self._instances.mark_healthy(instance)
        if instance.kv_info is None:
            instance.kv_info = await self._fetch_kv_info(instance)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.check_all()
            except Exception:  # keep polling whatever one round hit
                logger.exception("health check round failed")

    async def _probe_health(self, instance: Instance) -> Optional[str]:
        try:
            async with self._session.get(instance.url + HEALTH_PATH, headers=self._headers,
                                         timeout=self._timeout) as response:
                await response.read()
                return None if response.status == 200 else f"/health answered {response.status}"
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as error:
            return f"/health failed: {describe(error)}"

    async def _fetch_kv_info(self, instance: Instance) -> Optional[KvInfo]:
        try:
            async with self._session.get(instance.url + KV_INFO_PATH, headers=self._headers,
                                         timeout=self._timeout) as response:
                if response.status in (401, 403):
                    self._warn_refused(instance, response.status)
                    return None
                if response.status != 200:
                    logger.debug("%s%s answered %d", instance.url, KV_INFO_PATH,
                                 response.status)
                    return None
                info = KvInfo.from_json(await response.json(content_type=None))
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as error:
            logger.warning("cannot read %s%s: %s", instance.url, KV_INFO_PATH, describe(error))
            return None
        self._refused.discard(instance.url)
        logger.info("%s instance %s: KV engine %s at %s:%d (tp %d)", instance.role,
                    instance.url, info.engine_id, info.kv_host, info.kv_port,
                    info.tensor_parallel_size)
        return info

    def _warn_refused(self, instance: Instance, status: int) -> None:
        if instance.url in self._refused:
            return
        self._refused.add(instance.url)
        logger.warning("%s%s answered %d: the instance wants an API key; give it to the "
                       "proxy with --instance-api-key (a prefill instance whose KV endpoint "
                       "is unknown is not used)", instance.url, KV_INFO_PATH, status)
