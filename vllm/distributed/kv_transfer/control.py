"""The control plane: one ZMQ PULL socket per engine core, PUSH sockets to peers."""
import threading
from typing import Optional

import msgspec
import zmq

from vllm.distributed.kv_transfer.messages import ControlMessage
from vllm.logger import init_logger

logger = init_logger(__name__)

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(ControlMessage)


class ControlSender:
    """PUSH sockets to peers' control addresses ("host:port"), one per address."""

    def __init__(self, context: Optional[zmq.Context] = None):
        self.context = context or zmq.Context()
        self._sockets: dict[str, zmq.Socket] = {}
        self._lock = threading.Lock()

    def send(self, address: str, message: ControlMessage) -> bool:
        with self._lock:
            socket = self._sockets.get(address)
            if socket is None:
                socket = self.context.socket(zmq.PUSH)
                socket.setsockopt(zmq.LINGER, 0)
                socket.setsockopt(zmq.SNDHWM, 10000)
                socket.connect(f"tcp://{address}")
                self._sockets[address] = socket
            try:
                socket.send(_encoder.encode(message), flags=zmq.NOBLOCK)
                return True
            except zmq.Again:
                logger.warning("control message to %s dropped (peer not reachable)", address)
                return False

    def close(self) -> None:
        with self._lock:
            for socket in self._sockets.values():
                socket.close(linger=0)
            self._sockets.clear()


class ControlEndpoint(ControlSender):
    """An engine core's inbox (bound on host:port) plus its outboxes."""

    def __init__(self, host: str, port: int):
        super().__init__()
        self.address = f"{host}:{port}"
        self.inbox = self.context.socket(zmq.PULL)
        self.inbox.setsockopt(zmq.LINGER, 0)
        try:
            self.inbox.bind(f"tcp://{self.address}")
        except zmq.ZMQError as error:
            self.inbox.close()
            raise ValueError(f"KV connector cannot listen on {self.address} ({error}); "
                             "choose another kv_port") from None

    def receive_all(self) -> list:
        messages = []
        while True:
            try:
                payload = self.inbox.recv(flags=zmq.NOBLOCK)
            except zmq.Again:
                return messages
            try:
                messages.append(_decoder.decode(payload))
            except msgspec.DecodeError as error:
                logger.error("KV control message dropped: %s", error)

    def close(self) -> None:
        super().close()
        self.inbox.close(linger=0)
        self.context.term()
