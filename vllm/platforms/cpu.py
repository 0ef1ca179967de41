import os
from datetime import timedelta
from typing import Optional

import psutil
import torch

from vllm.distributed.network import internal_host, is_local_address
from vllm.platforms.cpu_isa import has_fast_bf16, kernel_ops, selected_isa
from vllm.platforms.interface import Platform

GiB = 1 << 30
DEFAULT_KV_CACHE_GIB = 4.0
# What `--dtype auto` means on CPU when set (else chosen from the CPU's features).
AUTO_DTYPE_ENV = "VLLM_CPU_AUTO_DTYPE"
AUTO_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# Batches up to this many tokens use the GGUF-block kernel, larger ones the panels below
# or MKL's float32 GEMM, per kernel build (benchmarks/benchmark_gguf_linear.py, all layers
# of the demo model). AVX-512: the kernel's lead falls from 3.6x at 8 tokens to 1.13x at
# 64 and 1.05x at 128, from 256 on the GEMM is faster. AVX2 (2-core EPYC): 2.1x MKL at
# 1 token, 1.24x at 64, but the panels are level with it at 16 tokens and ahead above.
# Portable: 1.18x at 8, 0.75x at 16. NEON: not measured yet.
GGUF_KERNEL_MAX_TOKENS = {"avx512": 64, "avx2": 16, "neon": 64, "portable": 8}
# Batches in this window (after the block kernel's) use the packed float32 GEMM
# (panel_linear), larger ones MKL's; builds not listed have not been measured yet.
# VLLM_CPU_PANEL_GEMM=0 turns it off (it keeps a second copy of the float32 weights).
# AVX2 (2-core EPYC, all layers of the demo model): 1.35x MKL at 64 tokens, 1.56x at
# 128, 1.04x at 256, level at 512, 0.88x at 1024.
PANEL_GEMM_ENV = "VLLM_CPU_PANEL_GEMM"
PANEL_GEMM_TOKENS = {"avx2": (1, 512)}
# Float32 matmuls of at most this many rows use dense_linear rather than MKL's GEMM (each
# expert of a MoE layer sees few rows), per kernel build; builds not measured are absent.
# AVX2 (EPYC, one thread, a 512 x 512 weight): dense_linear's lead over MKL is 1.56x at
# 1 row, 2.9x at 4, 1.7x at 8, 1.14x at 32, 1.04x at 64, 1.02x at 128.
DENSE_KERNEL_MAX_ROWS = {"avx2": 64}
# VLLM_CPU_INT8_KERNELS=0: the W8A8 layers run the PyTorch reference, not vllm._C's int8 GEMM.
INT8_KERNELS_ENV = "VLLM_CPU_INT8_KERNELS"


class CpuPlatform(Platform):
    name = "cpu"
    device_type = "cpu"
    dist_backend = "gloo"
    attn_backend = "vllm.attention.backends.cpu.CPUAttentionBackend"
    default_block_size = 16

    def default_dtype(self, batch_invariant: bool = False) -> torch.dtype:
        # bfloat16 where the CPU multiplies it fast (AVX512-BF16, AMX), as vLLM's CPU build;
        # elsewhere bfloat16 matmul is ~200x slower than float32. The fixed-order kernels
        # of batch-invariant mode are float32.
        if batch_invariant:
            return torch.float32
        forced = os.environ.get(AUTO_DTYPE_ENV, "").strip().lower()
        if forced:
            if forced not in AUTO_DTYPES:
                from vllm.config import ConfigError
                raise ConfigError(f"{AUTO_DTYPE_ENV} must be one of {', '.join(AUTO_DTYPES)}, "
                                  f"got {forced!r}")
            return AUTO_DTYPES[forced]
        return torch.bfloat16 if has_fast_bf16() else torch.float32

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

    def w8a8_kernels(self):
        if os.environ.get(INT8_KERNELS_ENV, "1") == "0":
            return None
        ops = kernel_ops()
        if ops is None or not hasattr(ops, "int8_linear"):
            return None
        from vllm.platforms.cpu_int8 import CpuW8A8Kernels
        return CpuW8A8Kernels(ops)

    def panel_kernel(self):
        if os.environ.get(PANEL_GEMM_ENV, "1") == "0":
            return None
        ops = kernel_ops()
        window = PANEL_GEMM_TOKENS.get(selected_isa())
        if ops is None or window is None or not hasattr(ops, "panel_linear"):
            return None
        return (ops.panel_linear, ops.panel_width(), *window)

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
