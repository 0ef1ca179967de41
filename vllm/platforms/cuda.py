from datetime import timedelta
from typing import Optional

import torch

from vllm.platforms.interface import Platform


class CudaPlatform(Platform):
    name = "cuda"
    device_type = "cuda"
    dist_backend = "nccl"
    attn_backend = "vllm.attention.backends.cuda.CudaAttentionBackend"
    supports_graph_capture = True
    default_block_size = 16

    def default_dtype(self) -> torch.dtype:
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def set_device(self, device: torch.device) -> None:
        torch.cuda.set_device(device)

    def synchronize(self) -> None:
        torch.cuda.synchronize()

    def total_memory_bytes(self) -> int:
        return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory

    def kv_cache_budget_bytes(self, memory_utilization: Optional[float],
                              ranks_on_host: int = 1) -> int:
        free, total = torch.cuda.mem_get_info()
        used = total - free
        return max(int(total * (memory_utilization or 0.9)) - used, 0)

    def visible_devices_env(self) -> Optional[str]:
        return "CUDA_VISIBLE_DEVICES"

    def create_pair_group(self, store, rank: int, world_size: int, timeout: timedelta):
        # torch.distributed.ProcessGroupNCCL(store, rank, size, options), PyTorch >= 2.0.
        import torch.distributed as dist
        options = dist.ProcessGroupNCCL.Options()
        options._timeout = timeout
        return dist.ProcessGroupNCCL(store, rank, world_size, options)
