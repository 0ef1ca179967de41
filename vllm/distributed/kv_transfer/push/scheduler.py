"""Scheduler half of the push connector: the engine core's side of every transfer.

Producer (prefill instance): a request carrying `do_remote_decode` is tracked from
admission. Once its consumer says ConsumerReady, each step's newly computed tokens are
streamed layer by layer (SendJob streamed=True) and tokens computed earlier are sent from
the cache. Its blocks are held after it finishes until ConsumerAck, an abort, or the lease.

Consumer (decode instance): a request carrying `do_remote_prefill` reserves blocks for its
prompt, asks the producer for tokens [local hits, prompt_len - 1) and waits. When every
rank reports the KV in place it is scheduled to compute only the last prompt token; when
the KV cannot come it is recomputed locally or failed (kv_load_failure_policy). The KV
cannot come when the wait times out, a receiving rank's pair group breaks, or the
producer's control socket is gone (PeerWatch: the connection broke, or it was never
reachable within kv_peer_timeout_s); each applies the policy at the next poll.
"""
import itertools
import random
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Callable, Optional

from vllm.config import ConfigError
from vllm.distributed.kv_transfer.base import ConnectorEvents, KVConnectorScheduler
from vllm.distributed.kv_transfer.control import ControlEndpoint
from vllm.distributed.kv_transfer.messages import (ConsumerAck, ConsumerReady, KVLayout,
                                                   ProducerAccept, RankRecvDone,
                                                   RankTransferFailed, TransferAbort)
from vllm.distributed.kv_transfer.pair_group import host_store
from vllm.distributed.kv_transfer.push.metadata import PushMetadata, RecvJob, SendJob
from vllm.kv_transfer_params import (DO_REMOTE_DECODE, DO_REMOTE_PREFILL, TRANSFER_ID, KvInfo,
                                     computed_locally, consumer_params, producer_address)
from vllm.logger import init_logger

logger = init_logger(__name__)

DEFAULT_LEASE_S = 60.0
DEFAULT_KV_WAIT_TIMEOUT_S = 60.0
DEFAULT_PEER_TIMEOUT_S = 3.0  # consumer: a producer silent or unreachable this long is gone


def transfer_key(request) -> str:
    """Requests are matched across instances by the proxy's id, never rewritten."""
    params = request.kv_transfer_params or {}
    return str(params.get(TRANSFER_ID) or request.request_id)


def kv_layout(vllm_config) -> KVLayout:
    model = vllm_config.model_config
    return KVLayout(model.num_layers, model.cache_units, str(model.dtype).removeprefix("torch."))


@dataclass
class _Produced:
    request: Any = None
    consumer: Optional[ConsumerReady] = None
    sent_upto: int = 0
    held: bool = False
    deadline: float = float("inf")


@dataclass
class _Consumed:
    request: Any
    producer_addr: str
    transfer_id: int
    token_start: int
    token_end: int
    block_ids: list[int]
    asked_at: float  # when ConsumerReady left
    deadline: float
    ranks_done: set[int] = field(default_factory=set)


class PushConnectorScheduler(KVConnectorScheduler):

    def __init__(self, vllm_config):
        config = vllm_config.kv_transfer_config
        self.config = config
        self.tp_size = vllm_config.parallel_config.tensor_parallel_size
        self.layout = kv_layout(vllm_config)
        self.nonce = f"{random.getrandbits(48):012x}"
        self.lease_s = float(config.extra("kv_lease_s", DEFAULT_LEASE_S))
        self.wait_timeout_s = float(config.extra("kv_wait_timeout_s",
                                                 DEFAULT_KV_WAIT_TIMEOUT_S))
        self.endpoint = ControlEndpoint(config.kv_ip, config.kv_port)
        self._peers = self._watch_producers() if config.is_consumer else None
        self.store_addr = f"{config.kv_ip}:{config.kv_port + 1}"
        self._store = None
        if config.is_consumer:
            self._store = host_store(self.store_addr, timedelta(seconds=self.wait_timeout_s))
        self._transfer_ids = itertools.count(random.getrandbits(30) << 20)
        self._produced: dict[str, _Produced] = {}
        self._consumed: dict[str, _Consumed] = {}
        self._early_ready: dict[str, tuple[ConsumerReady, float]] = {}
        self._tombstones: dict[str, float] = {}
        self._dropped: dict[str, tuple[int, float]] = {}  # consumer: given-up transfer ids
        self._meta = PushMetadata(self.nonce)
        self._events = ConnectorEvents([], [], [], [])
        self._block_ids_of: Callable[[str], list[int]] = lambda request_id: []

    def _watch_producers(self):
        timeout_s = float(self.config.extra("kv_peer_timeout_s", DEFAULT_PEER_TIMEOUT_S))
        if timeout_s <= 0:
            raise ConfigError(f"--kv-transfer-config: kv_peer_timeout_s must be > 0, got "
                              f"{timeout_s:g}")
        return self.endpoint.watch_peers(timeout_s)

    def bind_block_lookup(self, block_ids_of: Callable[[str], list[int]]) -> None:
        self._block_ids_of = block_ids_of

    def info(self) -> KvInfo:
        host, _, port = self.endpoint.address.rpartition(":")
        return KvInfo(self.config.engine_id, self.config.kv_role, host, int(port), self.tp_size)

    def wake_sockets(self) -> list:
        peers = self._peers.monitors() if self._peers is not None else []
        return [self.endpoint.inbox, *peers]

    def has_pending_work(self) -> bool:
        meta = self._meta
        return bool(meta.sends or meta.recvs or meta.cancels or any(self._events))

    # ---- admission -----------------------------------------------------------------------
    def get_num_new_matched_tokens(self, request, num_computed_tokens: int):
        params = request.kv_transfer_params or {}
        if params.get(DO_REMOTE_DECODE) and self.config.is_producer:
            self._track_production(request)
        if not (params.get(DO_REMOTE_PREFILL) and self.config.is_consumer):
            return 0, False
        producer = producer_address(params)
        num_external = request.num_prompt_tokens - 1 - num_computed_tokens
        if producer is None or num_external <= 0:
            if producer is not None:
                self._send(producer, TransferAbort(transfer_key(request), "not needed"))
            request.kv_transfer_params = computed_locally(params)
            return 0, False
        return num_external, True

    def update_state_after_alloc(self, request, block_ids, num_external_tokens) -> None:
        params = request.kv_transfer_params or {}
        end = request.num_prompt_tokens - 1
        now = time.monotonic()
        state = _Consumed(request, producer_address(params), next(self._transfer_ids),
                          end - num_external_tokens, end, list(block_ids), now,
                          now + self.wait_timeout_s)
        self._consumed[transfer_key(request)] = state
        self._send(state.producer_addr, ConsumerReady(
            transfer_key(request), self.config.engine_id, self.nonce, self.endpoint.address,
            self.store_addr, self.tp_size, state.transfer_id, state.token_start,
            state.token_end, self.layout))

    def _track_production(self, request) -> None:
        key = transfer_key(request)
        if key in self._tombstones:
            del self._tombstones[key]
            self._events.abort.append(request.request_id)
            return
        state = self._produced.setdefault(key, _Produced())
        state.request = request
        early = self._early_ready.pop(key, None)
        if early is not None and state.consumer is None:
            self._attach_consumer(key, state, early[0])

    # ---- each step -----------------------------------------------------------------------
    def build_connector_meta(self, scheduler_output) -> PushMetadata:
        scheduled = scheduler_output.num_scheduled_tokens
        for key, state in self._produced.items():
            request = state.request
            if state.consumer is None or state.held or request is None:
                continue
            if request.request_id in scheduled:
                self._queue_step_sends(key, state, scheduled[request.request_id])
        meta, self._meta = self._meta, PushMetadata(self.nonce)
        return meta

    def _queue_step_sends(self, key: str, state: _Produced, num_new: int) -> None:
        computed = state.request.num_computed_tokens  # before this step
        end = state.consumer.token_end
        if computed > state.sent_upto:
            self._queue_send(key, state, min(computed, end), streamed=False)
        stream_end = min(computed + num_new, end)
        if stream_end > state.sent_upto:
            self._queue_send(key, state, stream_end, streamed=True)

    def _queue_send(self, key: str, state: _Produced, upto: int, streamed: bool) -> None:
        ready = state.consumer
        start = max(state.sent_upto, ready.token_start)
        if upto <= start:
            return
        self._meta.sends.append(SendJob(
            key, ready.transfer_id, ready.engine_id, ready.nonce, ready.tp_size,
            ready.store_addr, self._block_ids_of(state.request.request_id), start, upto,
            streamed))
        state.sent_upto = upto

    def request_finished(self, request, block_ids):
        key = transfer_key(request)
        consumed = self._consumed.pop(key, None)
        if consumed is not None and consumed.request is request:
            self._forget_consumed(key, consumed)
            self._send(consumed.producer_addr, TransferAbort(key, "consumer finished early"))
        aborted = request.get_finished_reason() == "abort"
        if aborted and (request.kv_transfer_params or {}).get(DO_REMOTE_DECODE):
            self._refuse_consumers(key)
        state = self._produced.get(key)
        if state is None or state.request is not request:
            return False, None
        if aborted:
            self._drop_production(key, "producer aborted the request")
            return False, None
        if state.consumer is not None:
            self._queue_send(key, state, state.consumer.token_end, streamed=False)
        state.held = True
        state.deadline = time.monotonic() + self.lease_s
        return True, consumer_params(self.info())

    def _refuse_consumers(self, key: str) -> None:
        """The producer aborted the request: a consumer that already asked is told now, one
        that asks later is told when it does (the tombstone)."""
        early = self._early_ready.pop(key, None)
        if early is not None:
            self._send(early[0].control_addr, TransferAbort(key, "producer aborted the request"))
        self._tombstones[key] = time.monotonic() + self.lease_s

    # ---- control messages and deadlines -------------------------------------------------
    def poll(self) -> ConnectorEvents:
        for message in self.endpoint.receive_all():
            self._handle(message)
        now = time.monotonic()
        if self._peers is not None:
            self._peers.update(now)
            self._fail_if_producer_gone(now)
        self._expire(now)
        events, self._events = self._events, ConnectorEvents([], [], [], [])
        return events

    def _handle(self, message) -> None:
        if isinstance(message, ConsumerReady):
            self._on_consumer_ready(message)
        elif isinstance(message, ProducerAccept):
            self._on_producer_accept(message)
        elif isinstance(message, ConsumerAck):
            self._release(message.key)
        elif isinstance(message, TransferAbort):
            self._on_abort(message)
        elif isinstance(message, RankRecvDone):
            self._on_rank_done(message)
        elif isinstance(message, RankTransferFailed):
            for key in message.keys:
                self._fail_consumed(key, message.reason)
                self._drop_production(key, message.reason)

    def _on_consumer_ready(self, ready: ConsumerReady) -> None:
        if ready.layout != self.layout:
            self._send(ready.control_addr, TransferAbort(
                ready.key, f"KV layout differs: producer {self.layout}, consumer "
                f"{ready.layout}"))
            return
        state = self._produced.get(ready.key)
        if state is None:
            if ready.key in self._tombstones:
                self._send(ready.control_addr, TransferAbort(ready.key, "producer aborted"))
                return
            self._early_ready[ready.key] = (ready, time.monotonic() + self.lease_s)
            return
        self._attach_consumer(ready.key, state, ready)

    def _attach_consumer(self, key: str, state: _Produced, ready: ConsumerReady) -> None:
        state.consumer = ready
        state.sent_upto = ready.token_start
        self._send(ready.control_addr, ProducerAccept(key, self.config.engine_id, self.nonce,
                                                      self.tp_size))
        if state.held:
            self._queue_send(key, state, ready.token_end, streamed=False)

    def _on_producer_accept(self, accept: ProducerAccept) -> None:
        state = self._consumed.get(accept.key)
        if state is not None:
            self._meta.recvs.append(RecvJob(
                accept.key, state.transfer_id, state.block_ids, state.token_start,
                state.token_end, accept.engine_id, accept.nonce, accept.tp_size,
                self.store_addr))
            return
        dropped = self._dropped.get(accept.key)
        if dropped is not None:
            # We gave up on it, but the producer may already be joining the pair group:
            # listen anyway (the transfer id is cancelled, its bytes are discarded), or
            # the producer's first send to us would wait out its timeout.
            self._meta.recvs.append(RecvJob(
                accept.key, dropped[0], [], 0, 0, accept.engine_id, accept.nonce,
                accept.tp_size, self.store_addr))

    def _on_abort(self, abort: TransferAbort) -> None:
        if abort.key in self._consumed:
            self._fail_consumed(abort.key, f"the prefill instance gave up: {abort.reason}")
        elif abort.key in self._produced:
            self._drop_production(abort.key, None)
        else:
            self._early_ready.pop(abort.key, None)
            self._tombstones[abort.key] = time.monotonic() + self.lease_s

    def _on_rank_done(self, done: RankRecvDone) -> None:
        state = self._consumed.get(done.key)
        if state is None:
            return
        state.ranks_done.add(done.rank)
        if len(state.ranks_done) == self.tp_size:
            del self._consumed[done.key]
            self._events.loaded.append(state.request.request_id)
            self._send(state.producer_addr, ConsumerAck(done.key))

    def _fail_consumed(self, key: str, reason: str) -> None:
        state = self._consumed.pop(key, None)
        if state is None:
            return
        self._forget_consumed(key, state)
        self._events.failed.append((state.request.request_id, reason))
        self._send(state.producer_addr, TransferAbort(key, reason))

    def _forget_consumed(self, key: str, state: _Consumed) -> None:
        self._meta.cancels.append(state.transfer_id)
        self._dropped[key] = (state.transfer_id, time.monotonic() + self.lease_s)

    def _drop_production(self, key: str, reason: Optional[str]) -> None:
        state = self._produced.pop(key, None)
        if state is None:
            return
        self._unqueue_sends(key, state)
        if reason and state.consumer is not None:
            self._send(state.consumer.control_addr, TransferAbort(key, reason))
        if state.held:
            self._events.release.append(state.request.request_id)
        elif state.request is not None:
            self._events.abort.append(state.request.request_id)

    def _unqueue_sends(self, key: str, state: _Produced) -> None:
        """A dropped transfer sends nothing more: jobs not yet given to the workers are
        withdrawn, jobs they still queue are cancelled."""
        self._meta.sends = [job for job in self._meta.sends if job.key != key]
        if state.consumer is not None:
            self._meta.cancels.append(state.consumer.transfer_id)

    def _release(self, key: str) -> None:
        state = self._produced.get(key)
        if state is not None and state.held:
            del self._produced[key]
            self._events.release.append(state.request.request_id)

    def _fail_if_producer_gone(self, now: float) -> None:
        for key, state in list(self._consumed.items()):
            trouble = self._peers.trouble(state.producer_addr, state.asked_at, now)
            if trouble is not None:
                self._fail_consumed(key, f"the prefill instance is gone ({trouble})")

    def _expire(self, now: float) -> None:
        for key, state in list(self._consumed.items()):
            if now > state.deadline:
                self._fail_consumed(key, f"no KV from the prefill instance within "
                                    f"{self.wait_timeout_s:g} s")
        for key, state in list(self._produced.items()):
            if state.held and now > state.deadline:
                logger.warning("KV lease of %s ran out before the consumer acked", key)
                self._drop_production(key, "lease expired")
        for table in (self._early_ready, self._tombstones, self._dropped):
            for key in [k for k, v in table.items() if now > _deadline_of(v)]:
                del table[key]

    def _send(self, address: Optional[str], message) -> None:
        if address:
            self.endpoint.send(address, message)

    def shutdown(self) -> None:
        self.endpoint.close()


def _deadline_of(value) -> float:
    return value[1] if isinstance(value, tuple) else value
