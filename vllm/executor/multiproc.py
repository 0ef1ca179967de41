"""Tensor-parallel ranks as local processes started with multiprocessing 'spawn'."""
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
from typing import Optional

from vllm.config import VllmConfig
from vllm.distributed.network import internal_host
from vllm.engine.dp_ranks import local_rank_slot
from vllm.executor.distributed_executor import DistributedExecutor
from vllm.executor.rank_launcher import RankLauncher
from vllm.executor.worker_proc import RankSpec, run_rank
from vllm.logger import init_logger

logger = init_logger(__name__)


class MultiprocExecutor(DistributedExecutor):

    def make_launcher(self) -> RankLauncher:
        return ProcessLauncher()


class ProcessLauncher(RankLauncher):

    def __init__(self):
        self.processes: list[multiprocessing.Process] = []

    def host_address(self) -> str:
        return internal_host()

    def launch(self, vllm_config: VllmConfig, template: RankSpec) -> None:
        context = multiprocessing.get_context("spawn")
        for rank in range(template.world_size):
            slot, slots = local_rank_slot(vllm_config, rank)  # data-parallel peers too
            spec = template._replace(rank=rank, local_rank=slot, local_world_size=slots,
                                     parent_pid=os.getpid())
            process = context.Process(target=run_rank_process, args=(vllm_config, spec),
                                      name=f"VllmRank{rank}", daemon=True)
            process.start()
            self.processes.append(process)

    def wait_for_exit(self, timeout_s: float) -> Optional[str]:
        sentinels = {process.sentinel: rank for rank, process in enumerate(self.processes)}
        ready = multiprocessing.connection.wait(list(sentinels), timeout_s)
        if not ready:
            return None
        rank = sentinels[ready[0]]
        process = self.processes[rank]
        process.join(1.0)
        return f"rank {rank} (pid {process.pid}) exited with code {process.exitcode}"

    def stop(self, grace_s: float) -> None:
        deadline = time.monotonic() + grace_s
        for process in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
        for process in self.processes:
            if process.is_alive():
                logger.warning("rank process %d did not exit in %.0f s; terminating",
                               process.pid, grace_s)
                process.terminate()
                process.join(2.0)
            if process.is_alive():
                process.kill()
                process.join(2.0)


def run_rank_process(vllm_config: VllmConfig, spec: RankSpec) -> None:
    # Ctrl-C reaches the whole process group: the executor decides when ranks stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    run_rank(vllm_config, spec)
