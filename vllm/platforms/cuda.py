from datetime import timedelta
from typing import Callable, Optional

import torch

from vllm.platforms.interface import Platform


class CudaPlatform(Platform):
    name = "cuda"
    device_type = "cuda"
    dist_backend = "nccl"
    attn_backend = "vllm.attention.backends.cuda.CudaAttentionBackend"
    _graph_pool = None

    @property
    def default_block_size(self) -> int:
        # flash-attn 2 pages need a multiple of 256 tokens; the SDPA path takes any size.
        return self.get_attn_backend_cls().preferred_block_size() or 16

    def default_dtype(self, batch_invariant: bool = False) -> torch.dtype:
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

    def create_pair_group(self, store, rank: int, world_size: int, timeout: timedelta,
                          host: Optional[str] = None):
        # torch.distributed.ProcessGroupNCCL(store, rank, size, options), PyTorch >= 2.0.
        import torch.distributed as dist
        options = dist.ProcessGroupNCCL.Options()
        options._timeout = timeout
        return dist.ProcessGroupNCCL(store, rank, world_size, options)

    def decode_graph_mode(self, vllm_config) -> Optional[str]:
        if vllm_config.model_config.enforce_eager or vllm_config.model_config.is_mla:
            return None  # the MLA backend's SDPA decode reads host lengths: eager only
        backend = self.get_attn_backend_cls()
        return "capture" if backend.can_capture_decode(vllm_config.cache_config.block_size) \
            else None

    def capture_graph(self, forward: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        # Warm up on a side stream (allocator and cuBLAS workspaces), then record into one
        # memory pool shared by every captured batch size (torch.cuda.graph, PyTorch >= 2.0).
        if CudaPlatform._graph_pool is None:
            CudaPlatform._graph_pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                forward()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: other threads (KV transfer) may use CUDA while this one captures.
        with torch.cuda.graph(graph, pool=CudaPlatform._graph_pool,
                              capture_error_mode="thread_local"):
            output = forward()

        def replay() -> torch.Tensor:
            graph.replay()
            return output

        return replay
