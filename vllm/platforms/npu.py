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
    default_block_size = 128
    # The one size both paging ops are known to take: npu_fused_infer_attention_score pages
    # by multiples of 128 in [128, 512]; the ATB _npu_paged_attention path is used with 128.
    supported_block_sizes = (128,)

    def __init__(self):
        import torch_npu  # noqa: F401  registers torch.npu, the npu device and HCCL

    def default_dtype(self, batch_invariant: bool = False) -> torch.dtype:
        # Atlas A2 (910B) computes bf16 natively; older parts (310P) only fp16.
        is_bf16_supported = getattr(torch.npu, "is_bf16_supported", None)
        if is_bf16_supported is not None and not is_bf16_supported():
            return torch.float16
        return torch.bfloat16

    def set_device(self, device: torch.device) -> None:
        torch.npu.set_device(device)

    def check_block_size(self, block_size: int) -> None:
        from vllm.config import ConfigError
        if block_size not in self.supported_block_sizes:
            raise ConfigError(f"block_size {block_size} is not supported on Ascend NPUs: "
                              f"use {self.default_block_size}")

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

    def create_pair_group(self, store, rank: int, world_size: int, timeout: timedelta,
                          host: Optional[str] = None):
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
        if not torchair.get("enabled", False):
            return None
        if vllm_config.model_config.is_mla:
            from vllm.config import ConfigError
            raise ConfigError("torchair_graph_config: MLA models run eagerly on NPU (the MLA "
                              "backend has no TorchAir decode path); disable it")
        return "compile"

    def w8a8_kernels(self):
        import torch_npu
        from vllm.platforms.npu_int8 import NpuW8A8Kernels
        return NpuW8A8Kernels(torch_npu)

    def compile_decode(self, step: Callable, num_shapes: int) -> Callable:
        # TorchAir (shipped with torch_npu): torchair.get_npu_backend(compiler_config=...)
        # is a torch.compile backend lowering to the Ascend graph engine. dynamic=False: one
        # static graph per padded batch size; the step takes every per-step value as a
        # tensor argument, so nothing else changes between calls. Dynamo keeps at most
        # recompile_limit (cache_size_limit before PyTorch 2.6) graphs per function.
        import torchair
        if not hasattr(getattr(torchair, "ops", None), "npu_fused_infer_attention_score"):
            raise ValueError("torchair_graph_config needs torchair.ops."
                             "npu_fused_infer_attention_score (a newer torch_npu); "
                             "disable it to run eagerly")
        _allow_graphs_per_function(num_shapes)
        backend = torchair.get_npu_backend(compiler_config=torchair.CompilerConfig())
        return torch.compile(step, backend=backend, fullgraph=True, dynamic=False)


    def moe_kernels(self):
        from vllm.platforms.npu_moe import NpuMoEKernels
        return NpuMoEKernels()


def _allow_graphs_per_function(count: int) -> None:
    import torch._dynamo
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), count))
