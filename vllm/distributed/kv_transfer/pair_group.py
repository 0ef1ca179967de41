"""Per-pair process groups: one producer rank and one consumer rank, joined through the
consumer instance's TCP store, on the platform's collective backend."""
import threading
from datetime import timedelta
from typing import NamedTuple, Optional

import torch.distributed as dist

from vllm.distributed.network import serve_tcp_store
from vllm.platforms import current_platform

PRODUCER, CONSUMER = 0, 1


class PairKey(NamedTuple):
    producer_engine: str
    producer_nonce: str
    producer_rank: int
    consumer_engine: str
    consumer_nonce: str
    consumer_rank: int

    def prefix(self) -> str:
        return "kv-pair/" + "/".join(str(part) for part in self)


def host_store(address: str, timeout: timedelta) -> dist.TCPStore:
    host, port = split_address(address)
    return serve_tcp_store(host, port, timeout)


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


class PairGroups:
    """Joins and caches the pair groups of one rank; joining blocks until the peer joins."""

    def __init__(self, timeouts: dict[int, timedelta], host: Optional[str] = None):
        self.timeouts = timeouts  # by role: how long an operation may wait for the peer
        self.host = host  # where this rank's end of each group listens (kv_ip)
        self._stores: dict[str, dist.Store] = {}
        self._groups: dict[PairKey, object] = {}
        self._lock = threading.Lock()

    def get(self, key: PairKey, store_address: str, role: int):
        with self._lock:
            group = self._groups.get(key)
        if group is not None:
            return group
        store = dist.PrefixStore(key.prefix(), self._store(store_address, self.timeouts[role]))
        group = current_platform.create_pair_group(store, role, 2, self.timeouts[role],
                                                   host=self.host)
        with self._lock:
            self._groups[key] = group
        return group

    def drop(self, key: PairKey) -> None:
        with self._lock:
            self._groups.pop(key, None)

    def _store(self, address: str, timeout: timedelta) -> dist.Store:
        with self._lock:
            store = self._stores.get(address)
            if store is None:
                host, port = split_address(address)
                store = dist.TCPStore(host, port, None, is_master=False, timeout=timeout)
                self._stores[address] = store
            return store
