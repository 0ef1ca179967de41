"""Worker half of the push connector: moves KV bytes between ranks of two instances.

Every message on a pair group is a header then a payload:
  header  (HEADER_LEN,) int64: transfer_id, layer, token_start, token_end, unit_start,
          unit_count
  payload (planes, token_end - token_start, unit_count, unit_size): GQA's keys then
          values of KV heads, or MLA's latent as one plane of one unit (kv_shape.CacheUnits)
Producer ranks send from one background thread per consumer rank (streamed layers are
copied out of the cache on the model's thread as each layer finishes; tokens computed in
earlier steps are read from the held blocks by the sending thread). Consumer ranks run one receiving thread per pair group and scatter into the blocks
the scheduler reserved; they tell their engine core when a request's KV is all in place.
"""
import queue
import threading
from datetime import timedelta
from typing import Optional

import torch

from vllm.distributed.kv_transfer.base import KVConnectorWorker
from vllm.distributed.kv_transfer.cache_io import CacheIO
from vllm.distributed.kv_transfer.control import ControlSender
from vllm.distributed.kv_transfer.messages import RankRecvDone, RankTransferFailed
from vllm.distributed.kv_transfer.pair_group import CONSUMER, PRODUCER, PairGroups, PairKey
from vllm.distributed.kv_transfer.plan import transfer_plan, units_of_rank
from vllm.distributed.kv_transfer.push.metadata import PushMetadata, RecvJob, SendJob
from vllm.logger import init_logger
from vllm.platforms import current_platform

logger = init_logger(__name__)

HEADER_LEN = 6
DEFAULT_TRANSFER_TIMEOUT_S = 60.0
RECEIVER_TIMEOUT = timedelta(days=7)
_STOP = object()


def token_slots(block_ids: list[int], start: int, end: int, block_size: int) -> torch.Tensor:
    positions = torch.arange(start, end)  # (n,)
    blocks = torch.tensor(block_ids, dtype=torch.int64)[positions // block_size]  # (n,)
    return blocks * block_size + positions % block_size


class _Receiving:
    """One registered incoming transfer on this rank."""

    def __init__(self, job: RecvJob, slots: torch.Tensor, units_expected: int):
        self.job = job
        self.slots = slots
        self.units_left = units_expected


class PushConnectorWorker(KVConnectorWorker):

    def __init__(self, vllm_config, rank: int):
        config = vllm_config.kv_transfer_config
        self.rank = rank
        self.engine_id = config.engine_id
        self.tp_size = vllm_config.parallel_config.tensor_parallel_size
        self.block_size = vllm_config.cache_config.block_size
        self.units = vllm_config.model_config.cache_units
        self.my_units = units_of_rank(rank, self.tp_size, self.units)
        # Senders give up on an absent consumer after the transfer timeout; receivers wait
        # for traffic as long as the pair lives (an idle pair must not time out).
        timeout_s = float(config.extra("kv_transfer_timeout_s", DEFAULT_TRANSFER_TIMEOUT_S))
        self.groups = PairGroups({PRODUCER: timedelta(seconds=timeout_s),
                                  CONSUMER: RECEIVER_TIMEOUT}, config.kv_ip)
        self.engine_address = f"{config.kv_ip}:{config.kv_port}"
        self.control = ControlSender()
        self.nonce = ""
        self.layers: list[str] = []
        self.kv_caches: dict[str, torch.Tensor] = {}
        self.cache_io = CacheIO(current_platform.get_attn_backend_cls(), self.units)
        self._streamed: list[SendJob] = []
        self._senders: dict[PairKey, queue.Queue] = {}
        self._lock = threading.Lock()
        self._receiving: dict[int, _Receiving] = {}
        self._early: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self._cancelled: set[int] = set()
        self._cancelled_sends: set[int] = set()
        self._receivers: dict[PairKey, threading.Thread] = {}
        self._broken: dict[PairKey, str] = {}  # pairs whose receiving thread failed: why

    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        self.kv_caches = kv_caches
        self.layers = list(kv_caches)

    # ---- each step -----------------------------------------------------------------------
    def bind_connector_metadata(self, metadata: Optional[PushMetadata]) -> None:
        if metadata is None:
            return
        self.nonce = metadata.engine_nonce
        with self._lock:
            for transfer_id in metadata.cancels:
                self._cancel(transfer_id)
        for job in metadata.recvs:
            self._register_receive(job)
        self._streamed = [job for job in metadata.sends if job.streamed]
        for job in metadata.sends:
            if not job.streamed:
                self._queue_from_cache(job)

    def save_kv_layer(self, layer_name: str, kv_cache: torch.Tensor) -> None:
        if not self._streamed:
            return
        layer = self.layers.index(layer_name)
        for job in self._streamed:
            self._queue_layer(job, layer, kv_cache)

    def wait_for_save(self) -> None:
        self._streamed = []

    # ---- producer ------------------------------------------------------------------------
    def _queue_layer(self, job: SendJob, layer: int, kv_cache: torch.Tensor) -> None:
        sends = list(self._my_sends(job))
        if not sends:  # another producer rank serves every consumer rank
            return
        slots = token_slots(job.block_ids, job.token_start, job.token_end, self.block_size)
        kv = self.cache_io.gather(kv_cache, slots.to(kv_cache.device))  # (P, n, U, S)
        for pair, units in sends:
            self._sender_for(pair).put((job, layer, units, self._slice_units(kv, units)))

    def _queue_from_cache(self, job: SendJob) -> None:
        for pair, units in self._my_sends(job):
            self._sender_for(pair).put((job, None, units, None))

    def _slice_units(self, kv: torch.Tensor, units) -> torch.Tensor:
        local = units.start - self.my_units.start
        return kv[:, :, local:local + units.count].contiguous()  # (P, n, u, S)

    def _my_sends(self, job: SendJob):
        for transfer in transfer_plan(self.tp_size, job.consumer_tp, self.units):
            if transfer.producer_rank == self.rank:
                yield PairKey(self.engine_id, self.nonce, self.rank, job.consumer_engine,
                              job.consumer_nonce, transfer.consumer_rank), transfer.units

    def _sender_for(self, pair: PairKey) -> queue.Queue:
        """Each consumer rank has its own queue and thread: a slow or dead consumer holds
        up nobody else."""
        with self._lock:
            sender = self._senders.get(pair)
            if sender is None:
                sender = queue.Queue()
                self._senders[pair] = sender
                threading.Thread(target=self._send_loop, args=(pair, sender), daemon=True,
                                 name=f"kv-send-{self.rank}").start()
            return sender

    def _send_loop(self, pair: PairKey, items: queue.Queue) -> None:
        current_platform.set_device(self._device())  # a new thread starts on device 0
        broken: Optional[str] = None
        while True:
            item = items.get()
            if item is _STOP:
                return
            job, layer, units, payload = item
            if job.transfer_id in self._cancelled_sends:
                continue
            try:
                if broken:
                    raise RuntimeError(broken)
                group = self.groups.get(pair, job.store_addr, PRODUCER)
                if payload is None:
                    self._send_cached(group, job, units)
                else:
                    self._send_one(group, job, layer, units, payload)
            except Exception as error:  # a broken pair fails its transfers, not the rank
                broken = broken or f"KV send to {pair.consumer_engine} failed: {error}"
                logger.warning("KV send of %s failed: %s", job.key, error)
                self._cancelled_sends.add(job.transfer_id)
                self.control.send(self.engine_address,
                                  RankTransferFailed([job.key], self.rank, broken))

    def _send_cached(self, group, job: SendJob, units) -> None:
        slots = token_slots(job.block_ids, job.token_start, job.token_end, self.block_size)
        for layer, name in enumerate(self.layers):
            kv_cache = self.kv_caches[name]
            kv = self.cache_io.gather(kv_cache, slots.to(kv_cache.device))  # (P, n, U, S)
            self._send_one(group, job, layer, units, self._slice_units(kv, units))

    @staticmethod
    def _send_one(group, job: SendJob, layer: int, units, payload: torch.Tensor) -> None:
        header = torch.tensor([job.transfer_id, layer, job.token_start, job.token_end,
                               units.start, units.count], dtype=torch.int64)
        group.send([header.to(payload.device)], CONSUMER, 0).wait()
        group.send([payload], CONSUMER, 0).wait()

    # ---- consumer ------------------------------------------------------------------------
    def _register_receive(self, job: RecvJob) -> None:
        """A transfer over a pair that already broke fails at once: its producer is gone
        (a new process of it has a new nonce, so new pairs)."""
        pairs = list(self._pairs_from(job))
        slots = token_slots(job.block_ids, job.token_start, job.token_end, self.block_size)
        units = len(self.layers) * (job.token_end - job.token_start) * self.my_units.count
        with self._lock:
            broken = next((self._broken[p] for p in pairs if p in self._broken), None)
            if broken is None:
                for pair in pairs:
                    self._ensure_receiver(pair, job.store_addr)
            if job.transfer_id in self._cancelled:
                return
            if broken is None:
                self._receiving[job.transfer_id] = _Receiving(job, slots, units)
            early = self._early.pop(job.transfer_id, [])
        if broken is not None:
            self.control.send(self.engine_address,
                              RankTransferFailed([job.key], self.rank, broken))
            return
        for header, payload in early:
            self._apply(header, payload)

    def _pairs_from(self, job: RecvJob):
        for transfer in transfer_plan(job.producer_tp, self.tp_size, self.units):
            if transfer.consumer_rank == self.rank:
                yield PairKey(job.producer_engine, job.producer_nonce, transfer.producer_rank,
                              self.engine_id, self.nonce, self.rank)

    def _ensure_receiver(self, pair: PairKey, store_addr: str) -> None:
        thread = self._receivers.get(pair)
        if thread is not None and thread.is_alive():
            return
        thread = threading.Thread(target=self._receive_loop, args=(pair, store_addr),
                                  daemon=True, name=f"kv-recv-{self.rank}")
        self._receivers[pair] = thread
        thread.start()

    def _receive_loop(self, pair: PairKey, store_addr: str) -> None:
        current_platform.set_device(self._device())  # a new thread starts on device 0
        try:
            group = self.groups.get(pair, store_addr, CONSUMER)
            while True:
                header = torch.empty(HEADER_LEN, dtype=torch.int64, device=self._device())
                group.recv([header], PRODUCER, 0).wait()
                header = header.cpu()
                payload = self._empty_payload(header)
                group.recv([payload], PRODUCER, 0).wait()
                self._apply(header, payload)
        except Exception as error:
            self.groups.drop(pair)
            self._fail_pending_from(pair, error)

    def _device(self) -> torch.device:
        return next(iter(self.kv_caches.values())).device

    def _empty_payload(self, header: torch.Tensor) -> torch.Tensor:
        _, _, start, end, _, count = header.tolist()
        return self.cache_io.empty_payload(end - start, count,
                                           next(iter(self.kv_caches.values())))

    def _apply(self, header: torch.Tensor, payload: torch.Tensor) -> None:
        transfer_id, layer, start, end, unit_start, count = header.tolist()
        with self._lock:
            if transfer_id in self._cancelled:
                return
            receiving = self._receiving.get(transfer_id)
            if receiving is None:
                self._early.setdefault(transfer_id, []).append((header, payload))
                return
            job = receiving.job
            slots = receiving.slots[start - job.token_start:end - job.token_start]
            local = unit_start - self.my_units.start
            self.cache_io.scatter(self.kv_caches[self.layers[layer]],
                                  slots.to(payload.device), local, payload)
            receiving.units_left -= (end - start) * count
            done = receiving.units_left <= 0
            if done:
                del self._receiving[transfer_id]
        if done:
            self.control.send(self.engine_address, RankRecvDone(job.key, self.rank))

    def _cancel(self, transfer_id: int) -> None:
        self._cancelled.add(transfer_id)
        self._cancelled_sends.add(transfer_id)
        self._receiving.pop(transfer_id, None)
        self._early.pop(transfer_id, None)

    def _fail_pending_from(self, pair: PairKey, error: Exception) -> None:
        reason = f"connection to the prefill instance broke: {error}"
        with self._lock:
            self._broken[pair] = reason
            keys = [r.job.key for r in self._receiving.values()
                    if (r.job.producer_engine, r.job.producer_nonce) ==
                    (pair.producer_engine, pair.producer_nonce)]
        logger.warning("KV receive from %s failed (%s); %d transfers lost",
                       pair.producer_engine, error, len(keys))
        if keys:
            self.control.send(self.engine_address,
                              RankTransferFailed(keys, self.rank, reason))

    def shutdown(self) -> None:
        with self._lock:
            for sender in self._senders.values():
                sender.put(_STOP)
        self.control.close()
