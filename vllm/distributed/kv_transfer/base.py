"""The two halves of a KV connector, as vLLM v1 names their methods.

The scheduler half lives in the engine core and decides what moves where; the worker half
lives in every tensor-parallel rank and moves the bytes. They talk only through the
metadata the scheduler half attaches to each SchedulerOutput.
"""
from abc import ABC, abstractmethod
from typing import Any, NamedTuple, Optional

import torch

from vllm.kv_transfer_params import KvInfo


class ConnectorEvents(NamedTuple):
    """What happened since the scheduler last asked (see KVConnectorScheduler.poll)."""
    loaded: list[str]  # consumer: requests whose remote KV has fully arrived
    failed: list[tuple[str, str]]  # consumer: (request id, reason) the KV will not come
    release: list[str]  # producer: finished requests whose held blocks may be freed
    abort: list[str]  # producer: unfinished requests the consumer gave up on


NO_EVENTS = ConnectorEvents([], [], [], [])


class KVConnectorScheduler(ABC):
    """Scheduler half: lives in the engine core."""

    @abstractmethod
    def get_num_new_matched_tokens(self, request, num_computed_tokens: int
                                   ) -> tuple[int, bool]:
        """Tokens beyond num_computed_tokens that will arrive from elsewhere, and whether
        they arrive asynchronously (the request then waits in WAITING_FOR_REMOTE_KVS)."""

    @abstractmethod
    def update_state_after_alloc(self, request, block_ids: list[int],
                                 num_external_tokens: int) -> None:
        """Blocks are reserved for the request: the KV may now be sent to them."""

    @abstractmethod
    def build_connector_meta(self, scheduler_output) -> Any:
        """What the worker halves must do during this step."""

    @abstractmethod
    def request_finished(self, request, block_ids: list[int]
                         ) -> tuple[bool, Optional[dict[str, Any]]]:
        """The request left the scheduler: (keep its blocks until poll() releases them,
        kv_transfer_params for the response)."""

    @abstractmethod
    def poll(self) -> ConnectorEvents:
        """Handle control messages and deadlines; called every engine step."""

    def has_pending_work(self) -> bool:
        """True while the workers must hear from us even with nothing to schedule."""
        return False

    def wake_sockets(self) -> list:
        """ZMQ sockets whose traffic should wake an idle engine core."""
        return []

    def info(self) -> Optional[KvInfo]:
        """Where a consumer reaches this instance's KV (None: nowhere)."""
        return None

    def shutdown(self) -> None:
        pass


class KVConnectorWorker(ABC):
    """Worker half: lives in every tensor-parallel rank."""

    @abstractmethod
    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        """The rank's KV cache tensors, one per attention layer, in model order."""

    @abstractmethod
    def bind_connector_metadata(self, metadata: Any) -> None:
        """This step's instructions, before the forward pass."""

    def start_load_kv(self) -> None:
        """Begin pulling KV for this step, before the forward pass (pull connectors)."""

    def wait_for_layer_load(self, layer_name: str) -> None:
        """Block until layer_name's KV for this step is in place; the attention layer calls
        it before reading its cache (pull connectors)."""

    @abstractmethod
    def save_kv_layer(self, layer_name: str, kv_cache: torch.Tensor) -> None:
        """layer_name just wrote this step's KV into kv_cache: ship what must leave."""

    def wait_for_save(self) -> None:
        """End of the forward pass."""

    def shutdown(self) -> None:
        pass
