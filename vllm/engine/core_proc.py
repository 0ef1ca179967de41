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

    def __init__(self, input_address: str, output_address: str, parent_pid: int):
        self.parent_pid = parent_pid
        self.context = zmq.Context()
        self.input_socket = self.context.socket(zmq.PULL)
        self.input_socket.connect(input_address)
        self.output_socket = self.context.socket(zmq.PUSH)
        self.output_socket.connect(output_address)
        self.encoder = msgspec.msgpack.Encoder()
        self.request_decoder = msgspec.msgpack.Decoder(EngineCoreRequest)
        self.abort_decoder = msgspec.msgpack.Decoder(list[str])
        self.engine_core = None
        self._published_free = -1
        self.should_exit = False
        self.rank_failure: Optional[str] = None

    def send(self, tag: bytes, payload: Any = None) -> None:
        body = b"" if payload is None else self.encoder.encode(payload)
        self.output_socket.send_multipart((tag, body), copy=False)

    def start_engine(self, vllm_config, executor_cls=None) -> None:
        from vllm.engine.core import EngineCore
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
            self.engine_core.abort_requests(self.abort_decoder.decode(body))
        elif tag == MessageTag.SHUTDOWN:
            self.should_exit = True
        elif tag != MessageTag.STATS:
            logger.error("engine core ignores a message with unknown tag %r", tag)

    def _add_request(self, message: EngineCoreRequest, rejected: dict[str, str]) -> None:
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
        stats = self.engine_core.get_stats()
        self._published_free = stats.num_free_blocks
        self.send(MessageTag.OUTPUTS, EngineCoreOutputs(
            outputs=outputs, scheduler_stats=stats, rejected=rejected,
            failed=self.engine_core.take_failed(), errored=self.engine_core.take_errored(),
            timestamp=time.time()))

    def close(self) -> None:
        if self.engine_core is not None:
            try:
                self.engine_core.shutdown()
            except Exception:
                logger.exception("engine core shutdown failed")
        self.output_socket.close(linger=1000)
        self.input_socket.close(linger=0)
        self.context.term()


def run_engine_core(vllm_config, input_address: str, output_address: str, parent_pid: int,
                    executor_cls=None) -> None:
    """Entry point of the engine process (started with multiprocessing 'spawn')."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the API server decides when we stop
    signal.signal(signal.SIGTERM, _raise_shutdown)
    proc = EngineCoreProc(input_address, output_address, parent_pid)
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
