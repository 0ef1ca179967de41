"""The executor's line to its ranks over ZMQ: each call is pickled once and pushed to
every rank; every rank's replies come back on one socket.

Ports are free ones picked at start, so several instances share a host; VLLM_PORT
pins them instead: rendezvous = VLLM_PORT, replies = VLLM_PORT + 1, rank r's calls =
VLLM_PORT + 2 + r.
"""
import os
import pickle
from typing import Any, NamedTuple, Optional

import zmq

from vllm.distributed.network import refuse_wildcard, zmq_address

PORT_ENV = "VLLM_PORT"
STARTUP_CALL_ID = 0


class Endpoints(NamedTuple):
    call_addresses: list[str]  # one per rank, in rank order
    reply_address: str


class RpcCall(NamedTuple):
    call_id: int
    method: str
    args: tuple
    kwargs: dict
    reply_ranks: Optional[tuple[int, ...]]  # None: every rank replies


class RpcReply(NamedTuple):
    rank: int
    call_id: int
    ok: bool
    value: Any  # the result, or (error message, traceback text) when not ok


def pinned_base_port() -> Optional[int]:
    """VLLM_PORT as an int, or None when unset."""
    text = os.environ.get(PORT_ENV)
    if not text:
        return None
    try:
        port = int(text)
    except ValueError:
        raise ValueError(f"{PORT_ENV} must be a port number, got {text!r}") from None
    if not 1 <= port <= 65000:
        raise ValueError(f"{PORT_ENV} must be in [1, 65000], got {port}")
    return port


class ExecutorChannel:
    """Executor side: binds one PUSH socket per rank and one PULL socket for replies."""

    def __init__(self, world_size: int, host: str, base_port: Optional[int] = None):
        self.context = zmq.Context()
        self.reply_socket = self.context.socket(zmq.PULL)
        reply_address = _bind(self.reply_socket, host, base_port and base_port + 1)
        self.call_sockets = []
        call_addresses = []
        for rank in range(world_size):
            socket = self.context.socket(zmq.PUSH)
            socket.setsockopt(zmq.SNDHWM, 0)
            call_addresses.append(_bind(socket, host, base_port and base_port + 2 + rank))
            self.call_sockets.append(socket)
        self.endpoints = Endpoints(call_addresses, reply_address)

    def broadcast(self, call: RpcCall, connect_timeout_ms: int = 2000) -> None:
        """Send `call` to every connected rank; then ConnectionError if any was not."""
        payload = pickle.dumps(call, protocol=pickle.HIGHEST_PROTOCOL)
        missing = []
        for rank, socket in enumerate(self.call_sockets):
            if socket.poll(connect_timeout_ms, zmq.POLLOUT):
                socket.send(payload, flags=zmq.NOBLOCK, copy=False)
            else:
                missing.append(rank)
        if missing:
            raise ConnectionError(f"rank(s) {missing} are not connected to the executor")

    def poll_reply(self, timeout_ms: int) -> Optional[RpcReply]:
        if not self.reply_socket.poll(timeout_ms):
            return None
        return pickle.loads(self.reply_socket.recv())

    def close(self) -> None:
        self.context.destroy(linger=0)


class RankChannel:
    """Rank side: receives calls on its own socket, sends replies to the executor."""

    def __init__(self, endpoints: Endpoints, rank: int):
        self.rank = rank
        self.context = zmq.Context()
        self.call_socket = self.context.socket(zmq.PULL)
        _connect(self.call_socket, endpoints.call_addresses[rank])
        self.reply_socket = self.context.socket(zmq.PUSH)
        self.reply_socket.setsockopt(zmq.SNDHWM, 0)
        _connect(self.reply_socket, endpoints.reply_address)

    def receive(self, timeout_ms: int) -> Optional[RpcCall]:
        if not self.call_socket.poll(timeout_ms):
            return None
        return pickle.loads(self.call_socket.recv())

    def reply(self, call_id: int, ok: bool, value: Any) -> None:
        payload = pickle.dumps(RpcReply(self.rank, call_id, ok, value),
                               protocol=pickle.HIGHEST_PROTOCOL)
        self.reply_socket.send(payload, copy=False)

    def close(self, linger_ms: int = 1000) -> None:
        self.context.destroy(linger=linger_ms)


def _bind(socket: zmq.Socket, host: str, port: Optional[int]) -> str:
    refuse_wildcard(host)
    socket.setsockopt(zmq.IPV6, ":" in host)
    if port is None:
        port = socket.bind_to_random_port(zmq_address(host))
    else:
        socket.bind(zmq_address(host, port))
    return zmq_address(host, port)


def _connect(socket: zmq.Socket, address: str) -> None:
    socket.setsockopt(zmq.IPV6, "[" in address)
    socket.connect(address)
