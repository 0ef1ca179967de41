"""Executor that runs the single worker in the engine-core process."""
from vllm.config import VllmConfig
from vllm.core.sched_output import ModelRunnerOutput, SchedulerOutput
from vllm.engine.dp_ranks import local_rank_slot
from vllm.worker.thread_binding import bind_rank_threads
from vllm.worker.worker import Worker


class UniProcExecutor:
    # One process holds every rank: a failed step leaves no peer waiting in a collective.
    survives_step_errors = True

    def __init__(self, vllm_config: VllmConfig):
        self.vllm_config = vllm_config
        slot, slots = local_rank_slot(vllm_config, 0)
        if slots > 1:  # data-parallel engine cores on this host share its cores
            bind_rank_threads(slot, slots)
        self.worker = Worker(vllm_config, 0, slot)
        self.worker.load_model()

    def determine_num_blocks(self) -> int:
        return self.worker.determine_num_blocks()

    def initialize_kv_cache(self, num_blocks: int) -> None:
        self.worker.initialize_kv_cache(num_blocks)

    def execute_model(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput:
        return self.worker.execute_model(scheduler_output)

    def shutdown(self) -> None:
        pass
