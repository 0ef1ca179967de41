"""Engine-core processes started for front ends in other processes (a headless node's
ranks, or the ranks behind several API servers): start them, watch them, and send a DEAD
message on a dead one's behalf, since its front ends cannot see the process."""
import multiprocessing
import multiprocessing.connection
import os
from typing import NamedTuple

import msgspec
import zmq

from vllm.core.messages import EngineFailure, MessageTag
from vllm.engine.core_proc import run_engine_core
from vllm.engine.dp_ranks import rank_config
from vllm.logger import init_logger

logger = init_logger(__name__)

STOP_GRACE_S = 10.0


class RankAddresses(NamedTuple):
    rank: int
    input_addresses: list[str]  # one per front end
    output_addresses: list[str]


class LocalEngineCores:
    """The engine cores of this process's data-parallel ranks."""

    def __init__(self, vllm_config, executor_cls=None):
        self.vllm_config = vllm_config
        self.executor_cls = executor_cls
        self.processes: dict[int, multiprocessing.Process] = {}
        self.addresses: dict[int, RankAddresses] = {}

    def start(self, ranks: list[RankAddresses]) -> None:
        spawn = multiprocessing.get_context("spawn")
        for addresses in ranks:
            process = spawn.Process(
                target=run_engine_core, name=f"VllmEngineCoreDP{addresses.rank}",
                args=(rank_config(self.vllm_config, addresses.rank),
                      addresses.input_addresses, addresses.output_addresses, os.getpid(),
                      self.executor_cls))
            process.start()
            logger.info("data-parallel rank %d's engine core process started (pid %d)",
                        addresses.rank, process.pid)
            self.processes[addresses.rank] = process
            self.addresses[addresses.rank] = addresses

    def watch(self) -> int:
        """Until every engine core has exited: 0 if each stopped cleanly, else 1. A core
        that dies is reported to its front ends."""
        running = {process.sentinel: rank for rank, process in self.processes.items()}
        failed = False
        while running:
            for sentinel in multiprocessing.connection.wait(list(running)):
                rank = running.pop(sentinel)
                process = self.processes[rank]
                process.join(1.0)
                if process.exitcode != 0:
                    failed = True
                    self.report_death(rank, process)
        return 1 if failed else 0

    def report_death(self, rank: int, process: multiprocessing.Process) -> None:
        message = (f"its process (pid {process.pid}) exited with code {process.exitcode} "
                   f"on the node hosting it")
        logger.error("data-parallel rank %d's engine core: %s", rank, message)
        body = msgspec.msgpack.encode(EngineFailure(message))
        context = zmq.Context()
        try:
            for address in self.addresses[rank].output_addresses:
                socket = context.socket(zmq.PUSH)
                socket.connect(address)
                socket.send_multipart((MessageTag.DEAD, body))
                socket.close(linger=2000)
        finally:
            context.term()

    def stop(self) -> None:
        """Terminate the engine cores still running (SIGTERM: they shut down cleanly)."""
        for process in self.processes.values():
            if process.is_alive():
                process.terminate()
        for process in self.processes.values():
            process.join(STOP_GRACE_S)
            if process.is_alive():
                process.kill()
                process.join(5)
