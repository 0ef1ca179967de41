"""One worker per tensor-parallel rank: owns the device, the model runner and the KV cache."""
from typing import Optional

import torch

from vllm.config import VllmConfig
from vllm.core.sched_output import ModelRunnerOutput, SchedulerOutput
from vllm.distributed.init import destroy_worker_distributed, init_worker_distributed
from vllm.engine.dp_ranks import local_rank_slot
from vllm.worker.thread_binding import bind_rank_threads
from vllm.logger import init_logger
from vllm.platforms import current_platform
from vllm.worker.model_runner import ModelRunner

logger = init_logger(__name__)


class Worker:

    def __init__(self, vllm_config: VllmConfig, rank: int = 0, local_rank: int = 0):
        self.vllm_config = vllm_config
        self.rank = rank
        self.local_rank = local_rank
        self.device = current_platform.device(local_rank)
        current_platform.set_device(self.device)
        torch.manual_seed(vllm_config.model_config.seed)
        from vllm.distributed.kv_transfer.factory import create_worker_connector
        self.connector = create_worker_connector(vllm_config, rank)
        self.model_runner = ModelRunner(vllm_config, self.device, self.connector)

    def load_model(self) -> None:
        self.model_runner.load_model()

    def determine_num_blocks(self) -> int:
        cache_config = self.vllm_config.cache_config
        if cache_config.num_gpu_blocks_override is not None:
            return cache_config.num_gpu_blocks_override
        _, ranks_on_host = local_rank_slot(self.vllm_config, 0)  # every DP rank's TP ranks
        budget = current_platform.kv_cache_budget_bytes(cache_config.gpu_memory_utilization,
                                                        ranks_on_host)
        return budget // self.model_runner.kv_cache_bytes_per_block()

    def initialize_kv_cache(self, num_blocks: int) -> None:
        self.model_runner.initialize_kv_cache(num_blocks)

    def execute_model(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput:
        return self.model_runner.execute_model(scheduler_output)

    # ---- tensor-parallel ranks --------------------------------------------------------
    def init_distributed(self, world_size: int, master_addr: str, master_port: int,
                         local_world_size: Optional[int] = None) -> None:
        """Pin this rank's threads to its share of the cores, then join the process
        group; call before load_model so the layers shard by this rank."""
        bind_rank_threads(self.local_rank, local_world_size or world_size)
        init_worker_distributed(self.rank, world_size, master_addr, master_port)

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: tuple(param.shape)
                for name, param in self.model_runner.model.named_parameters()}

    def shutdown(self) -> None:
        if self.connector is not None:
            self.connector.shutdown()
        destroy_worker_distributed()
