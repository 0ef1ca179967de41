"""One worker per tensor-parallel rank: owns the device, the model runner and the KV cache."""
import torch

from vllm.config import VllmConfig
from vllm.core.sched_output import ModelRunnerOutput, SchedulerOutput
from vllm.logger import init_logger
from vllm.platforms import current_platform
from vllm.worker.model_runner import ModelRunner

logger = init_logger(__name__)


class Worker:

    def __init__(self, vllm_config: VllmConfig, rank: int = 0, local_rank: int = 0):
        self.vllm_config = vllm_config
        self.rank = rank
        self.device = current_platform.device(local_rank)
        current_platform.set_device(self.device)
        torch.manual_seed(vllm_config.model_config.seed)
        self.model_runner = ModelRunner(vllm_config, self.device)

    def load_model(self) -> None:
        self.model_runner.load_model()

    def determine_num_blocks(self) -> int:
        cache_config = self.vllm_config.cache_config
        if cache_config.num_gpu_blocks_override is not None:
            return cache_config.num_gpu_blocks_override
        budget = current_platform.kv_cache_budget_bytes(cache_config.gpu_memory_utilization)
        return budget // self.model_runner.kv_cache_bytes_per_block()

    def initialize_kv_cache(self, num_blocks: int) -> None:
        self.model_runner.initialize_kv_cache(num_blocks)

    def execute_model(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput:
        return self.model_runner.execute_model(scheduler_output)
