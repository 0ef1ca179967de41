"""The prefill and decode instances: health flag, KV endpoint and the proxy's load on each."""
from dataclasses import dataclass
from typing import Callable, Optional

from vllm.disagg.proxy_config import DECODE, PREFILL, ROLES
from vllm.kv_transfer_params import KvInfo
from vllm.logger import init_logger

logger = init_logger(__name__)


@dataclass(eq=False)
class Instance:
    """One upstream server. `in_flight` counts requests this proxy has open to it."""
    role: str
    url: str
    healthy: bool = False
    in_flight: int = 0
    kv_info: Optional[KvInfo] = None


class InstanceRegistry:
    """All instances by role; picks the least loaded healthy one (round robin on ties)."""

    def __init__(self, prefill_urls: list[str], decode_urls: list[str]):
        self._by_role = {PREFILL: [Instance(PREFILL, url) for url in prefill_urls],
                         DECODE: [Instance(DECODE, url) for url in decode_urls]}
        self._cursor = {role: 0 for role in ROLES}

    def instances(self, role: Optional[str] = None) -> list[Instance]:
        """Instances of one role, or all of them (prefill first) when role is None."""
        if role is None:
            return self._by_role[PREFILL] + self._by_role[DECODE]
        return list(self._by_role[_checked_role(role)])

    def healthy(self, role: str) -> list[Instance]:
        return [inst for inst in self._by_role[_checked_role(role)] if inst.healthy]

    def acquire(self, role: str,
                eligible: Callable[[Instance], bool] = lambda _: True) -> Optional[Instance]:
        """Pick and count one request on the least loaded healthy eligible instance."""
        pool = self._by_role[_checked_role(role)]
        candidates = [inst for inst in pool if inst.healthy and eligible(inst)]
        if not candidates:
            return None
        least = min(inst.in_flight for inst in candidates)
        start = self._cursor[role]
        for step in range(len(pool)):
            index = (start + step) % len(pool)
            chosen = pool[index]
            if chosen.healthy and eligible(chosen) and chosen.in_flight == least:
                self._cursor[role] = index + 1
                chosen.in_flight += 1
                return chosen
        return None

    @staticmethod
    def release(instance: Instance) -> None:
        """End one request counted by acquire()."""
        instance.in_flight = max(0, instance.in_flight - 1)

    @staticmethod
    def mark_unhealthy(instance: Instance, reason: str) -> None:
        """Take an instance out of rotation until its /health answers 200 again."""
        if instance.healthy:
            logger.warning("%s instance %s is unhealthy: %s", instance.role, instance.url,
                           reason)
        instance.healthy = False
        instance.kv_info = None

    @staticmethod
    def mark_healthy(instance: Instance) -> None:
        if not instance.healthy:
            logger.info("%s instance %s is healthy", instance.role, instance.url)
        instance.healthy = True


def _checked_role(role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; expected one of {ROLES}")
    return role
