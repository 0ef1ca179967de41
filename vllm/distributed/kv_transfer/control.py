"""The control plane: one ZMQ PULL socket per engine core, PUSH sockets to peers."""
import threading
from dataclasses import dataclass
from typing import Optional

import msgspec
import zmq
from zmq.utils.monitor import recv_monitor_message

from vllm.distributed.kv_transfer.messages import ControlMessage
from vllm.distributed.network import refuse_wildcard
from vllm.logger import init_logger

logger = init_logger(__name__)

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(ControlMessage)
# What a watched PUSH socket reports: a connection came up, a connection went away.
_PEER_EVENTS = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
HEARTBEATS_PER_TIMEOUT = 3


@dataclass
class _Peer:
    monitor: zmq.Socket
    up: bool = False
    lost_at: float = float("-inf")  # when a connection that was up last broke


class PeerWatch:
    """Whether each peer's control socket is still there, from our PUSH sockets' own
    connection events. The kernel closes the connection of a process that dies; ZMTP
    heartbeats, answered by the peer's ZMQ I/O thread even while its engine core is busy
    in a step, close the connection of a peer that went silent (host down, process
    stopped). Used from one thread: the engine core's."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self._peers: dict[str, _Peer] = {}

    def add(self, address: str, socket: zmq.Socket) -> None:
        """Watch socket's connection to address (before it connects)."""
        timeout_ms = max(1, round(self.timeout_s * 1000))
        socket.setsockopt(zmq.HEARTBEAT_IVL, max(1, timeout_ms // HEARTBEATS_PER_TIMEOUT))
        socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, timeout_ms)
        socket.setsockopt(zmq.HANDSHAKE_IVL, timeout_ms)
        self._peers[address] = _Peer(socket.get_monitor_socket(_PEER_EVENTS))

    def monitors(self) -> list[zmq.Socket]:
        """Sockets that turn readable when a connection comes up or goes away."""
        return [peer.monitor for peer in self._peers.values()]

    def update(self, now: float) -> None:
        """Take in the connection events since the last call."""
        for address, peer in self._peers.items():
            for event in _drain(peer.monitor):
                if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                    peer.up = True
                elif peer.up:  # not a failed attempt: a working connection broke
                    logger.warning("control connection to %s lost", address)
                    peer.up = False
                    peer.lost_at = now

    def trouble(self, address: str, since: float, now: float) -> Optional[str]:
        """Why the peer at address will not answer what we sent it at `since`: the
        connection broke after that, or the peer has not been reachable since then for
        timeout_s. None while it may still answer, or when address is not watched."""
        peer = self._peers.get(address)
        if peer is None:
            return None
        if peer.lost_at > since:
            return f"the connection to {address} broke"
        if not peer.up and now - since > self.timeout_s:
            return f"{address} not reachable for {self.timeout_s:g} s"
        return None

    def close(self) -> None:
        for peer in self._peers.values():
            peer.monitor.close(linger=0)
        self._peers.clear()


def _drain(monitor: zmq.Socket) -> list[int]:
    events = []
    while True:
        try:
            events.append(recv_monitor_message(monitor, zmq.NOBLOCK)["event"])
        except zmq.Again:
            return events


class ControlSender:
    """PUSH sockets to peers' control addresses ("host:port"), one per address."""

    def __init__(self, context: Optional[zmq.Context] = None):
        self.context = context or zmq.Context()
        self._sockets: dict[str, zmq.Socket] = {}
        self._lock = threading.Lock()
        self.peers: Optional[PeerWatch] = None

    def watch_peers(self, timeout_s: float) -> PeerWatch:
        """From now on, every new socket to a peer is watched (see PeerWatch)."""
        self.peers = PeerWatch(timeout_s)
        return self.peers

    def send(self, address: str, message: ControlMessage) -> bool:
        with self._lock:
            socket = self._sockets.get(address)
            if socket is None:
                socket = self.context.socket(zmq.PUSH)
                socket.setsockopt(zmq.LINGER, 0)
                socket.setsockopt(zmq.SNDHWM, 10000)
                if self.peers is not None:
                    self.peers.add(address, socket)
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
            if self.peers is not None:
                self.peers.close()
            for socket in self._sockets.values():
                socket.close(linger=0)
            self._sockets.clear()


class ControlEndpoint(ControlSender):
    """An engine core's inbox (bound on host:port) plus its outboxes."""

    def __init__(self, host: str, port: int):
        refuse_wildcard(host)
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
