"""The engine-core process: EngineCore's busy loop behind two ZMQ sockets (the messages
and their tags: vllm/core/messages.py)."""
import os
import signal
import sys
import time
import traceback
from typing import Any, Optional

import msgspec
import zmq

from vllm.core.messages import (EngineCoreOutput, EngineCoreOutputs, EngineCoreRequest,
                                EngineFailure, EngineReady, MessageTag)
from vllm.logger import init_logger

logger = init_logger(__name__)

IDLE_POLL_MS = 1000


class _ShutdownRequested(BaseException):
    pass


def _raise_shutdown(signum, frame) -> None:
    raise _ShutdownRequested()


class EngineCoreProc:
    """Owns the EngineCore and its sockets inside the engine process."""

    def __init__(self, input_addresses: list[str], output_addresses: list[str],
                 parent_pid: int):
        self.parent_pid = parent_pid
        self.context = zmq.Context()
        self.input_socket = self.context.socket(zmq.PULL)
        for address in input_addresses:  # fair-queued over every front end
            self.input_socket.connect(address)
        self.output_sockets = []  # one per front end, by client index
        for address in output_addresses:
            socket = self.context.socket(zmq.PUSH)
            socket.setsockopt(zmq.SNDHWM, 0)
            socket.connect(address)
            self.output_sockets.append(socket)
        self.encoder = msgspec.msgpack.Encoder()
        self.request_decoder = msgspec.msgpack.Decoder(EngineCoreRequest)
        self.abort_decoder = msgspec.msgpack.Decoder(list[str])
        self.engine_core = None
        self.engine_index = 0
        self._client_of: dict[str, int] = {}  # request id -> the front end that sent it
        self._published_free = -1
        self.should_exit = False
        self.rank_failure: Optional[str] = None

    def send(self, tag: bytes, payload: Any = None, client: Optional[int] = None) -> None:
        """To front end `client`, or to every front end."""
        body = b"" if payload is None else self.encoder.encode(payload)
        sockets = self.output_sockets if client is None else [self.output_sockets[client]]
        for socket in sockets:
            socket.send_multipart((tag, body), copy=False)

    def start_engine(self, vllm_config, executor_cls=None) -> None:
        from vllm.engine.core import EngineCore
        from vllm.engine.dp_ranks import pin_rank_ports
        pin_rank_ports(vllm_config)
        self.engine_index = vllm_config.parallel_config.data_parallel_rank
        self.engine_core = EngineCore(vllm_config, executor_cls, isolate_step_errors=True)
        register = getattr(self.engine_core.executor, "register_failure_callback", None)
        if register is not None:  # multi-rank executors watch their workers
            register(self._on_rank_failure)
        cache_config = vllm_config.cache_config
        self.send(MessageTag.READY, EngineReady(
            pid=os.getpid(), num_blocks=cache_config.num_blocks,
            block_size=cache_config.block_size,
            max_model_len=vllm_config.model_config.max_model_len))

    def _on_rank_failure(self, error_line: str) -> None:
        self.rank_failure = error_line  # called from the executor's monitor thread

    def _raise_if_rank_failed(self) -> None:
        if self.rank_failure is not None:
            raise RuntimeError(f"a worker rank died: {self.rank_failure}")

    def run_busy_loop(self) -> None:
        """schedule -> execute -> update while there is work; block on input when idle."""
        core = self.engine_core
        while not self.should_exit:
            self._raise_if_rank_failed()
            rejected, handled = self._process_input(block=not core.has_work())
            if self.should_exit:
                return
            had_work = core.has_work()
            outputs = core.step()
            if outputs or handled or had_work or self._free_blocks_changed():
                self._publish(outputs, rejected)

    def _process_input(self, block: bool) -> tuple[dict[str, str], bool]:
        if block:
            self._wait_for_input()
        rejected: dict[str, str] = {}
        handled = False
        while not self.should_exit:
            try:
                tag, body = self.input_socket.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                break
            handled = True
            self._handle_message(tag, body, rejected)
        return rejected, handled

    def _wait_for_input(self) -> None:
        """Until the API server or a KV-transfer peer has something for us (or a second
        has passed: leases and transfer deadlines are checked by step())."""
        poller = zmq.Poller()
        poller.register(self.input_socket, zmq.POLLIN)
        for socket in self.engine_core.wake_sockets():
            poller.register(socket, zmq.POLLIN)
        poller.poll(IDLE_POLL_MS)
        self._check_parent_alive()
        self._raise_if_rank_failed()

    def _check_parent_alive(self) -> None:
        if os.getppid() != self.parent_pid:
            logger.warning("the API server process is gone; engine core exits")
            self.should_exit = True

    def _handle_message(self, tag: bytes, body: bytes, rejected: dict[str, str]) -> None:
        if tag == MessageTag.ADD:
            self._add_request(self.request_decoder.decode(body), rejected)
        elif tag == MessageTag.ABORT:
            request_ids = self.abort_decoder.decode(body)
            self.engine_core.abort_requests(request_ids)
            for request_id in request_ids:
                self._client_of.pop(request_id, None)
        elif tag == MessageTag.SHUTDOWN:
            self.should_exit = True
        elif tag != MessageTag.STATS:
            logger.error("engine core ignores a message with unknown tag %r", tag)

    def _add_request(self, message: EngineCoreRequest, rejected: dict[str, str]) -> None:
        if not 0 <= message.client_index < len(self.output_sockets):
            logger.error("request %s names front end %d of %d; dropped", message.request_id,
                         message.client_index, len(self.output_sockets))
            return
        self._client_of[message.request_id] = message.client_index
        try:
            self.engine_core.add_engine_request(message)
        except ValueError as error:
            rejected[message.request_id] = str(error)
        except Exception as error:  # a bug, not the client's fault; it must not end the loop
            logger.exception("engine core failed to add request %s", message.request_id)
            self.engine_core.errored[message.request_id] = f"{type(error).__name__}: {error}"

    def _free_blocks_changed(self) -> bool:
        """Blocks can come back with no step (a KV consumer's ack, a lease running out)."""
        return self.engine_core.kv_cache_manager.get_num_free_blocks() != self._published_free

    def _publish(self, outputs: list[EngineCoreOutput], rejected: dict[str, str]) -> None:
        """Each front end gets its own requests' outputs; every one gets the stats."""
        stats = self.engine_core.get_stats()
        self._published_free = stats.num_free_blocks
        batches = [EngineCoreOutputs(scheduler_stats=stats, timestamp=time.time(),
                                     engine_index=self.engine_index, outputs=[], rejected={},
                                     failed={}, errored={})
                   for _ in self.output_sockets]
        for output in outputs:
            batches[self._client(output.request_id, output.finished)].outputs.append(output)
        for field, reasons in (("rejected", rejected),
                               ("failed", self.engine_core.take_failed()),
                               ("errored", self.engine_core.take_errored())):
            for request_id, reason in reasons.items():
                getattr(batches[self._client(request_id, True)], field)[request_id] = reason
        for client, batch in enumerate(batches):
            self.send(MessageTag.OUTPUTS, batch, client)

    def _client(self, request_id: str, finished: bool) -> int:
        if finished:
            return self._client_of.pop(request_id, 0)
        return self._client_of.get(request_id, 0)

    def close(self) -> None:
        if self.engine_core is not None:
            try:
                self.engine_core.shutdown()
            except Exception:
                logger.exception("engine core shutdown failed")
        for socket in self.output_sockets:
            socket.close(linger=1000)
        self.input_socket.close(linger=0)
        self.context.term()


def run_engine_core(vllm_config, input_address: str | list[str],
                    output_address: str | list[str], parent_pid: int,
                    executor_cls=None) -> None:
    """Entry point of the engine process (started with multiprocessing 'spawn'); one
    address each, or one per front end (client index order)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the API server decides when we stop
    signal.signal(signal.SIGTERM, _raise_shutdown)
    proc = EngineCoreProc(_as_list(input_address), _as_list(output_address), parent_pid)
    exit_code = 0
    try:
        exit_code = _start_and_run(proc, vllm_config, executor_cls)
    except _ShutdownRequested:
        logger.info("engine core received SIGTERM; shutting down")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        proc.close()
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(exit_code)


def _start_and_run(proc: EngineCoreProc, vllm_config, executor_cls) -> int:
    try:
        proc.start_engine(vllm_config, executor_cls)
    except Exception as error:
        is_config = isinstance(error, (ValueError, FileNotFoundError))
        proc.send(MessageTag.FAILED, EngineFailure(
            f"{type(error).__name__}: {error}", is_config, traceback.format_exc()))
        return 1
    try:
        proc.run_busy_loop()
    except _ShutdownRequested:
        raise
    except Exception as error:
        logger.exception("engine core crashed")
        proc.send(MessageTag.DEAD, EngineFailure(
            f"{type(error).__name__}: {error}", False, traceback.format_exc()))
        return 1
    return 0


def _as_list(address: str | list[str]) -> list[str]:
    return [address] if isinstance(address, str) else list(address)
