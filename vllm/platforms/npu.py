from datetime import timedelta
from typing import Callable, Optional

import torch

from vllm.platforms.interface import Platform

VISIBLE_DEVICES_ENV = "ASCEND_RT_VISIBLE_DEVICES"


class NpuPlatform(Platform):
    """Huawei Ascend through torch_npu (imported only when this platform is chosen)."""
    name = "npu"
    device_type = "npu"
    dist_backend = "hccl"
    attn_backend = "vllm.attention.backends.npu.NpuAttentionBackend"
    supports_graph_capture = True
    default_block_size = 128  # npu_fused_infer_attention_score pages: 128..512, by 128

    def __init__(self):
        import torch_npu  # noqa: F401  registers torch.npu, the npu device and HCCL

    def default_dtype(self) -> torch.dtype:
        # Atlas A2 (910B) computes bf16 natively; older parts (310P) only fp16.
        is_bf16_supported = getattr(torch.npu, "is_bf16_supported", None)
        if is_bf16_supported is not None and not is_bf16_supported():
            return torch.float16
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
        return VISIBLE_DEVICES_ENV

    def create_pair_group(self, store, rank: int, world_size: int, timeout: timedelta):
        # torch_npu documents torch.distributed.ProcessGroupHCCL(store, rank, size, timeout)
        # (Ascend/pytorch docs, "(beta) torch.distributed.ProcessGroupHCCL").
        import torch.distributed as dist
        return dist.ProcessGroupHCCL(store, rank, world_size, timeout)

    def decode_graph_mode(self, vllm_config) -> Optional[str]:
        """TorchAir graphs for decode when --additional-config has
        {"torchair_graph_config": {"enabled": true}} and --enforce-eager is off."""
        if vllm_config.model_config.enforce_eager:
            return None
        torchair = (vllm_config.additional_config or {}).get("torchair_graph_config") or {}
        if not isinstance(torchair, dict):
            raise ValueError(f"torchair_graph_config must be an object, got {torchair!r}")
        return "compile" if torchair.get("enabled", False) else None

    def compile_decode(self, forward: Callable) -> Callable:
        # TorchAir (shipped with torch_npu): torchair.get_npu_backend(compiler_config=...)
        # is a torch.compile backend lowering to the Ascend graph engine. dynamic=True keeps
        # sequence lengths symbolic, so a step with new lengths reuses the graph.
        import torchair
        backend = torchair.get_npu_backend(compiler_config=torchair.CompilerConfig())
        return torch.compile(forward, backend=backend, fullgraph=True, dynamic=True)

