from datetime import timedelta
from typing import Optional

import torch

from vllm.platforms.interface import Platform


class NpuPlatform(Platform):
    """Huawei Ascend through torch_npu (imported only when this platform is chosen)."""
    name = "npu"
    device_type = "npu"
    dist_backend = "hccl"
    attn_backend = "vllm.attention.backends.npu.NpuAttentionBackend"
    supports_graph_capture = True
    default_block_size = 128

    def default_dtype(self) -> torch.dtype:
        return torch.bfloat16

    def set_device(self, device: torch.device) -> None:
        torch.npu.set_device(device)

    def synchronize(self) -> None:
        torch.npu.synchronize()

    def total_memory_bytes(self) -> int:
        return torch.npu.mem_get_info()[1]

    def kv_cache_budget_bytes(self, memory_utilization: Optional[float],
                              ranks_on_host: int = 1) -> int:
        free, total = torch.npu.mem_get_info()
        return max(int(total * (memory_utilization or 0.9)) - (total - free), 0)

    def visible_devices_env(self) -> Optional[str]:
        return "ASCEND_RT_VISIBLE_DEVICES"

    def create_pair_group(self, store, rank: int, world_size: int, timeout: timedelta):
        # torch_npu documents torch.distributed.ProcessGroupHCCL(store, rank, size, timeout)
        # (Ascend/pytorch docs, "(beta) torch.distributed.ProcessGroupHCCL").
        import torch.distributed as dist
        import torch_npu  # noqa: F401  registers ProcessGroupHCCL on torch.distributed
        return dist.ProcessGroupHCCL(store, rank, world_size, timeout)
