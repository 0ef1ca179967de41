import os
from datetime import timedelta
from typing import Optional

import psutil
import torch

from vllm.distributed.network import internal_host, is_local_address
from vllm.platforms.cpu_isa import kernel_ops, selected_isa
from vllm.platforms.interface import Platform

GiB = 1 << 30
DEFAULT_KV_CACHE_GIB = 4.0
# Batches up to this many tokens use the GGUF-block kernel, larger ones MKL's float32 GEMM,
# per kernel build (benchmarks/benchmark_gguf_linear.py, all layers of the demo model).
# AVX-512: the kernel's lead falls from 3.6x at 8 tokens to 1.13x at 64 and 1.05x at 128,
# from 256 on the GEMM is faster. AVX2 (2-core EPYC): 3.1x at 1 token, 1.24x at 64, 1.04x
# at 96, even at 128. Portable: 1.18x at 8, 0.75x at 16. NEON: not measured yet.
GGUF_KERNEL_MAX_TOKENS = {"avx512": 64, "avx2": 96, "neon": 64, "portable": 8}
# Float32 matmuls of at most this many rows use dense_linear rather than MKL's GEMM (each
# expert of a MoE layer sees few rows), per kernel build; builds not measured are absent.
# AVX2 (EPYC, one thread, a 512 x 512 weight): dense_linear's lead over MKL is 1.56x at
# 1 row, 2.9x at 4, 1.7x at 8, 1.14x at 32, 1.04x at 64, 1.02x at 128.
DENSE_KERNEL_MAX_ROWS = {"avx2": 64}


class CpuPlatform(Platform):
    name = "cpu"
    device_type = "cpu"
    dist_backend = "gloo"
    attn_backend = "vllm.attention.backends.cpu.CPUAttentionBackend"
    default_block_size = 16

    def default_dtype(self) -> torch.dtype:
        # bfloat16 matmul is ~200x slower than float32 on CPUs without AMX.
        return torch.float32

    def device(self, local_rank: int = 0) -> torch.device:
        return torch.device("cpu")

    def total_memory_bytes(self) -> int:
        return psutil.virtual_memory().total

    def kv_cache_budget_bytes(self, memory_utilization: Optional[float],
                              ranks_on_host: int = 1) -> int:
        space = os.environ.get("VLLM_CPU_KVCACHE_SPACE")
        if space:
            try:
                gib = float(space)
            except ValueError:
                raise ValueError(f"VLLM_CPU_KVCACHE_SPACE must be a number of GiB, got {space!r}")
            if gib <= 0:
                raise ValueError(f"VLLM_CPU_KVCACHE_SPACE must be positive, got {space!r}")
            return int(gib * GiB) // ranks_on_host
        available = psutil.virtual_memory().available
        if memory_utilization is not None:
            return int(available * memory_utilization * 0.5) // ranks_on_host
        return int(min(DEFAULT_KV_CACHE_GIB * GiB, available * 0.5)) // ranks_on_host

    def gguf_block_kernel(self):
        if os.environ.get("VLLM_CPU_GGUF_KERNELS", "1") == "0":
            return None
        ops = kernel_ops()
        if ops is None:
            return None
        return ops.gguf_linear, GGUF_KERNEL_MAX_TOKENS[selected_isa()]

    def small_batch_linear(self, dtype: torch.dtype):
        ops = kernel_ops()
        max_rows = DENSE_KERNEL_MAX_ROWS.get(selected_isa())
        if dtype != torch.float32 or ops is None or max_rows is None \
                or not hasattr(ops, "dense_linear"):
            return None
        return ops.dense_linear, max_rows

    def batch_invariant_linear(self, dtype: torch.dtype):
        from vllm.batch_invariant import BATCH_INVARIANT_ENV
        from vllm.config import ConfigError
        if dtype != torch.float32:
            raise ConfigError(f"{BATCH_INVARIANT_ENV}=1 needs --dtype float32 on CPU "
                              f"(the fixed-order kernels are float32), got {dtype}")
        ops = kernel_ops()
        if ops is None or not hasattr(ops, "dense_linear"):
            raise ConfigError(f"{BATCH_INVARIANT_ENV}=1 needs the CPU kernels (vllm._C_<isa> "
                              "with dense_linear); rebuild with pip install -e .")
        return ops.dense_linear

    def create_pair_group(self, store, rank: int, world_size: int, timeout: timedelta,
                          host: Optional[str] = None):
        import torch.distributed as dist
        options = dist.ProcessGroupGloo._Options()
        options._timeout = timeout
        options._devices = [gloo_device(internal_host(host))]
        return dist.ProcessGroupGloo(store, rank, world_size, options)


def gloo_device(host: str):
    """A gloo device listening on `host` when this machine holds it (else on the hostname's
    address, as torch's default); GLOO_SOCKET_IFNAME, when set, names the interface instead."""
    import torch.distributed as dist
    interface = os.environ.get("GLOO_SOCKET_IFNAME")
    if interface:
        return dist.ProcessGroupGloo.create_device(interface=interface)
    if is_local_address(host):
        return dist.ProcessGroupGloo.create_device(hostname=host)
    return dist.ProcessGroupGloo.create_default_device()
