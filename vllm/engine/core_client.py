"""The API server's handle on the engine-core process: spawn it, talk ZMQ + msgspec, watch it."""
import asyncio
import multiprocessing
import os
import shutil
import tempfile
from typing import Any, Optional

import msgspec
import zmq
import zmq.asyncio

from vllm.core.messages import (EngineCoreOutputs, EngineCoreRequest, EngineFailure,
                                EngineReady, MessageTag)
from vllm.distributed.network import refuse_wildcard, zmq_address
from vllm.engine.core_proc import run_engine_core
from vllm.logger import init_logger

logger = init_logger(__name__)

LAST_WORDS_TIMEOUT_S = 5.0
KILLED_WORDS_TIMEOUT_S = 0.2


class EngineStartError(RuntimeError):
    """The engine core process could not start; the message says why."""

    def __init__(self, message: str, is_config_error: bool = False):
        super().__init__(message)
        self.is_config_error = is_config_error


class EngineDeadError(RuntimeError):
    """The engine core process is gone; no request can be served any more."""


class KVTransferError(RuntimeError):
    """A request's KV never arrived from the prefill instance (policy `fail`)."""


class EngineCoreClient:
    """Starts the engine core in a child process ('spawn') and exchanges messages with it.

    Sends never block (the input socket has no high-water mark); outputs are received with
    `await get_output()`, which raises EngineDeadError once the process has died.
    """

    def __init__(self, vllm_config, executor_cls=None, host: Optional[str] = None,
                 spawn: bool = True, name: str = "the engine core",
                 addresses: Optional[tuple[str, str]] = None, stops_engine: bool = True):
        """`host`: bind TCP sockets there (free ports) instead of IPC ones, for an engine
        core on another node; `addresses`: bind exactly these (input, output) ones.
        `spawn=False`: another process starts the engine core, and only a DEAD message
        (its launcher sends one when it dies) says it is gone. `stops_engine=False`:
        shutdown leaves the engine core to its launcher (it serves other front ends)."""
        self.name = name
        self.stops_engine = stops_engine
        self._ipc_dir = tempfile.mkdtemp(prefix="vllm-engine-")
        input_at, output_at = addresses or (None, None)
        self.context = zmq.asyncio.Context()
        self.input_socket = zmq.Socket(self.context, zmq.PUSH)
        self.input_socket.setsockopt(zmq.SNDHWM, 0)
        self.input_address = _bind(self.input_socket, host, f"{self._ipc_dir}/input",
                                   input_at)
        self.output_socket = self.context.socket(zmq.PULL)
        self.output_socket.setsockopt(zmq.RCVHWM, 0)
        self.output_address = _bind(self.output_socket, host, f"{self._ipc_dir}/output",
                                    output_at)
        self.encoder = msgspec.msgpack.Encoder()
        self.outputs_decoder = msgspec.msgpack.Decoder(EngineCoreOutputs)
        self.process = None
        if spawn:
            self.process = multiprocessing.get_context("spawn").Process(
                target=run_engine_core, name="VllmEngineCore",
                args=(vllm_config, self.input_address, self.output_address, os.getpid(),
                      executor_cls))
        self.ready: Optional[EngineReady] = None
        self.dead_error: Optional[EngineDeadError] = None
        self._death: Optional[asyncio.Future] = None
        self._pending_recv: Optional[asyncio.Future] = None
        self._closed = False

    # ---- life cycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Start the engine process; returns at once (wait_ready waits for it)."""
        if self.process is None:
            return
        self.process.start()
        logger.info("%s process started (pid %d)", self.name, self.process.pid)

    async def wait_ready(self) -> EngineReady:
        """Wait for READY; raise EngineStartError if the process fails or dies first."""
        loop = asyncio.get_running_loop()
        self._death = loop.create_future()
        if self.process is not None:
            loop.add_reader(self.process.sentinel, self._on_process_exit)
        try:
            tag, body = await self._receive()
        except EngineDeadError:
            raise EngineStartError(
                f"{self.name} exited during start-up "
                f"(exit code {self._exitcode()}); see its log above") from None
        if tag in (MessageTag.FAILED, MessageTag.DEAD):
            failure = msgspec.msgpack.decode(body, type=EngineFailure)
            logger.debug("engine core start-up failure:\n%s", failure.traceback)
            raise EngineStartError(f"{self.name} failed to start: {failure.message}",
                                   failure.is_config_error)
        if tag != MessageTag.READY:
            raise EngineStartError(f"{self.name} sent {tag!r} instead of READY")
        self.ready = msgspec.msgpack.decode(body, type=EngineReady)
        return self.ready

    @property
    def is_alive(self) -> bool:
        return self.dead_error is None and (self.process is None or self.process.is_alive())

    def check_health(self) -> None:
        """EngineDeadError when the engine core is gone."""
        if self.dead_error is not None:
            raise self.dead_error
        if not self.is_alive:
            raise self._mark_dead(self._died_message())

    def _exitcode(self) -> Optional[int]:
        return None if self.process is None else self.process.exitcode

    def shutdown(self, timeout: float = 10.0) -> None:
        """Ask the engine to stop, wait, then terminate or kill it; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            self._stop_watching()
            if self.process is None:
                if self.stops_engine:
                    self._ask_to_stop()  # its launcher sees it exit
            elif self.process.pid is not None:
                self._ask_to_stop()
                self._join_or_kill(timeout)
        finally:
            if self._pending_recv is not None and not self._pending_recv.get_loop().is_closed():
                self._pending_recv.cancel()
            self.input_socket.close(linger=0 if self.process is not None else 1000)
            self.output_socket.close(linger=0)
            self.context.term()
            shutil.rmtree(self._ipc_dir, ignore_errors=True)

    def _ask_to_stop(self) -> None:
        if self.is_alive:
            try:
                self._send(MessageTag.SHUTDOWN)
            except EngineDeadError:
                pass  # already on its way out; join or kill below

    def _join_or_kill(self, timeout: float) -> None:
        self.process.join(timeout)
        if self.process.is_alive():
            logger.warning("engine core did not stop in %.0f s; terminating it", timeout)
            self.process.terminate()
            self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)

    def _stop_watching(self) -> None:
        if self._death is None or self.process is None:
            return
        try:
            self._death.get_loop().remove_reader(self.process.sentinel)
        except (RuntimeError, ValueError, OSError):
            pass  # the loop is already closed

    def _on_process_exit(self) -> None:
        self._death.get_loop().remove_reader(self.process.sentinel)
        self.process.join(0)
        if not self._death.done():
            self._death.set_result(self.process.exitcode)

    # ---- messages ------------------------------------------------------------------------
    def _send(self, tag: bytes, payload: Any = None) -> None:
        body = b"" if payload is None else self.encoder.encode(payload)
        try:
            self.input_socket.send_multipart((tag, body), flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:  # no high-water mark: only an engine that hung up refuses
            raise EngineDeadError(f"{self.name} is not connected") from None

    def _check_alive(self) -> None:
        if self.dead_error is not None:
            raise self.dead_error
        if self._closed:
            raise EngineDeadError("the engine core has been shut down")

    def add_request(self, request: EngineCoreRequest) -> None:
        self._check_alive()
        self._send(MessageTag.ADD, request)

    def abort_requests(self, request_ids: list[str]) -> None:
        """Abort in the engine; a no-op once the engine is gone (nothing left to free)."""
        if request_ids and self.dead_error is None and not self._closed:
            try:
                self._send(MessageTag.ABORT, list(request_ids))
            except EngineDeadError:
                pass

    def request_stats(self) -> None:
        self._check_alive()
        self._send(MessageTag.STATS)

    async def get_output(self) -> EngineCoreOutputs:
        """The next batch of outputs; raises EngineDeadError when the engine is gone."""
        while True:
            tag, body = await self._receive()
            if tag == MessageTag.OUTPUTS:
                return self.outputs_decoder.decode(body)
            if tag == MessageTag.DEAD:
                failure = msgspec.msgpack.decode(body, type=EngineFailure)
                logger.error("%s crashed:\n%s", self.name, failure.traceback)
                raise self._mark_dead(f"{self.name} crashed ({failure.message}); "
                                      "restart the server")
            logger.error("ignoring an engine message with unexpected tag %r", tag)

    async def _receive(self) -> tuple[bytes, bytes]:
        self._check_alive()
        if self._pending_recv is None:
            self._pending_recv = asyncio.ensure_future(self.output_socket.recv_multipart())
        await asyncio.wait({self._pending_recv, self._death},
                           return_when=asyncio.FIRST_COMPLETED)
        if not self._pending_recv.done():
            # Dead. An engine that exited by itself sent FAILED / DEAD first: collect it.
            killed = (self._exitcode() or 0) < 0
            await asyncio.wait({self._pending_recv},
                               timeout=KILLED_WORDS_TIMEOUT_S if killed else LAST_WORDS_TIMEOUT_S)
        if self._pending_recv.done():
            frames, self._pending_recv = self._pending_recv.result(), None
            return frames[0], frames[1]
        raise self._mark_dead(self._died_message())

    def _died_message(self) -> str:
        return (f"{self.name} process died unexpectedly (exit code {self._exitcode()}); "
                "restart the server")

    def _mark_dead(self, message: str) -> EngineDeadError:
        if self.dead_error is None:
            self.dead_error = EngineDeadError(message)
            logger.error(message)
        return self.dead_error


def _bind(socket: zmq.Socket, host: Optional[str], ipc_path: str,
          address: Optional[str] = None) -> str:
    """Bind to `address`, else to ipc_path, or to a free TCP port of `host`; the address
    peers connect to."""
    if address is not None:
        socket.bind(address)
    elif host is None:
        socket.bind(f"ipc://{ipc_path}")
    else:
        refuse_wildcard(host)
        socket.bind(zmq_address(host, 0))
    return socket.getsockopt(zmq.LAST_ENDPOINT).decode()
