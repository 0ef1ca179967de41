"""Publishes KV event batches on ZMQ as vLLM's ZmqEventPublisher does, off the engine's
hot path: publish() only queues; a thread encodes and sends.

Wire format (what a vLLM subscriber reads): PUB multipart [topic, sequence number as 8
bytes big-endian, msgpack KVEventBatch]. Replay (optional ROUTER socket): a request
[start sequence, 8 bytes big-endian] is answered with [sequence, payload] for every kept
batch from there on, then [END_SEQ, b""]."""
import queue
import threading
from collections import deque
from typing import Optional

import msgspec
import zmq

from vllm.config import ConfigError
from vllm.core.kv_events import KVEventBatch
from vllm.distributed.kv_events.config import FLAG, KVEventsConfig, endpoint_for_rank
from vllm.logger import init_logger

logger = init_logger(__name__)

END_SEQ = (-1).to_bytes(8, "big", signed=True)
POLL_S = 0.05
CLOSE_TIMEOUT_S = 2.0
CLOSE_LINGER_MS = 500


def seq_bytes(seq: int) -> bytes:
    return seq.to_bytes(8, "big")


class ZmqEventPublisher:

    def __init__(self, config: KVEventsConfig, data_parallel_rank: int = 0):
        self.data_parallel_rank = data_parallel_rank
        self.num_dropped = 0
        self._topic = config.topic.encode("utf-8")
        self._queue: queue.Queue[Optional[KVEventBatch]] = queue.Queue(config.max_queue_size)
        self._kept: deque[tuple[int, bytes]] = deque(maxlen=config.buffer_steps)
        self._context = zmq.Context()
        self._pub = self._bind(zmq.PUB, "endpoint", endpoint_for_rank(
            config.endpoint, data_parallel_rank), hwm=config.hwm)
        self._replay = None
        if config.replay_endpoint is not None:
            self._replay = self._bind(zmq.ROUTER, "replay_endpoint", endpoint_for_rank(
                config.replay_endpoint, data_parallel_rank))
        self._thread = threading.Thread(target=self._run, name="kv-event-publisher",
                                        daemon=True)
        self._thread.start()

    def _bind(self, kind: int, name: str, endpoint: str, hwm: int = 0) -> zmq.Socket:
        socket = self._context.socket(kind)
        socket.setsockopt(zmq.SNDHWM, hwm)
        try:
            socket.bind(endpoint)
        except zmq.ZMQError as error:
            socket.close(linger=0)
            self._close_sockets()
            raise ConfigError(f"{FLAG}: cannot bind {name} {endpoint}: {error}") from None
        logger.info("KV events: %s bound at %s", name, endpoint)
        return socket

    def publish(self, batch: KVEventBatch) -> None:
        """Queue a batch; never blocks (a full queue drops it, counted)."""
        batch.data_parallel_rank = self.data_parallel_rank
        try:
            self._queue.put_nowait(batch)
        except queue.Full:
            self.num_dropped += 1
            if self.num_dropped & (self.num_dropped - 1) == 0:  # 1, 2, 4, 8, ...
                logger.warning("KV events: publisher queue full, %d batches dropped so far",
                               self.num_dropped)

    def shutdown(self) -> None:
        try:
            self._queue.put(None, timeout=CLOSE_TIMEOUT_S)
        except queue.Full:
            pass
        self._thread.join(CLOSE_TIMEOUT_S)

    def _run(self) -> None:
        encoder = msgspec.msgpack.Encoder()
        seq = 0
        try:
            while True:
                if self._replay is not None and self._replay.poll(0):
                    self._answer_replay()
                try:
                    batch = self._queue.get(timeout=POLL_S)
                except queue.Empty:
                    continue
                if batch is None:
                    return
                payload = encoder.encode(batch)
                self._pub.send_multipart((self._topic, seq_bytes(seq), payload))
                self._kept.append((seq, payload))
                seq += 1
        except zmq.ZMQError:
            logger.exception("KV events: the publisher thread stopped")
        finally:
            self._close_sockets(linger=CLOSE_LINGER_MS)

    def _answer_replay(self) -> None:
        frames = self._replay.recv_multipart()
        if len(frames) != 3 or len(frames[2]) != 8:
            logger.warning("KV events: ignored a malformed replay request")
            return
        client, _, start = frames
        first = int.from_bytes(start, "big")
        for seq, payload in self._kept:
            if seq >= first:
                self._replay.send_multipart((client, b"", seq_bytes(seq), payload))
        self._replay.send_multipart((client, b"", END_SEQ, b""))

    def _close_sockets(self, linger: int = 0) -> None:
        for socket in (getattr(self, "_pub", None), getattr(self, "_replay", None)):
            if socket is not None:
                socket.close(linger=linger)
        self._context.term()


def create_publisher(config: Optional[KVEventsConfig],
                     data_parallel_rank: int) -> Optional[ZmqEventPublisher]:
    """None unless events are enabled with the zmq publisher ("null" drops them)."""
    if config is None or not config.publishes:
        return None
    return ZmqEventPublisher(config, data_parallel_rank)
