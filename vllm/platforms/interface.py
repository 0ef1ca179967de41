"""What the rest of the engine may ask about the device it runs on."""
import importlib
from datetime import timedelta
from typing import Callable, Optional

import torch


class Platform:
    """One device family. Subclasses fill in the class attributes and queries."""
    name: str = "base"
    device_type: str = "cpu"
    dist_backend: str = "gloo"
    attn_backend: str = ""
    default_block_size: int = 16

    def get_attn_backend_cls(self):
        module_name, _, cls_name = self.attn_backend.rpartition(".")
        return getattr(importlib.import_module(module_name), cls_name)

    def default_dtype(self, batch_invariant: bool = False) -> torch.dtype:
        """What `--dtype auto` means here; `batch_invariant`: VLLM_BATCH_INVARIANT is on."""
        return torch.bfloat16

    def device(self, local_rank: int = 0) -> torch.device:
        return torch.device(self.device_type, local_rank)

    def set_device(self, device: torch.device) -> None:
        pass

    def check_block_size(self, block_size: int) -> None:
        """Raise vllm.config.ConfigError when this platform's kernels cannot page KV in `block_size`
        tokens (called when the engine config is made)."""

    def synchronize(self) -> None:
        pass

    def total_memory_bytes(self) -> int:
        raise NotImplementedError

    def kv_cache_budget_bytes(self, memory_utilization: Optional[float],
                              ranks_on_host: int = 1) -> int:
        """Bytes one rank's KV cache may take; `ranks_on_host` ranks share host memory."""
        raise NotImplementedError

    def visible_devices_env(self) -> Optional[str]:
        return None

    def create_pair_group(self, store, rank: int, world_size: int, timeout: timedelta,
                          host: Optional[str] = None):
        """A process group of its own (outside the default one) on this platform's
        collective backend, for point-to-point KV transfer between instances; `host`: the
        address this end listens on, where the backend lets it be chosen (kv_ip)."""
        raise NotImplementedError

    # ---- decode graphs (vllm/worker/graph_runner.py) ------------------------------------
    def decode_graph_mode(self, vllm_config) -> Optional[str]:
        """How decode-only steps run: "capture" (record once per padded batch size, replay
        over static buffers), "compile" (a graph compiler over the model), None (eager)."""
        return None

    def capture_graph(self, forward: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        """Record `forward`, which reads and writes only static buffers; returns a replay
        that gives the same output tensor each time."""
        raise NotImplementedError

    def compile_decode(self, step: Callable, num_shapes: int) -> Callable:
        """`step` compiled by this platform's graph compiler; it is called with
        `num_shapes` distinct input shapes, each of which must compile once only."""
        raise NotImplementedError

    # ---- GGUF block weights (vllm/model_executor/layers/gguf_blocks.py) -------------------
    def gguf_block_kernel(self) -> Optional[tuple[Callable, int]]:
        """(op, max tokens): an op `op(out, x, blocks, qtype, bias)` computing x W^T + b for
        float32 x of at most `max tokens` rows with W in GGUF blocks, or None."""
        return None

    # ---- W8A8 int8 linear layers (vllm/model_executor/layers/quantization/int8_kernels.py) --
    def w8a8_kernels(self):
        """The W8A8Kernels of this platform, or None (the exact PyTorch references run)."""
        return None

    # ---- small-batch dense matmul (vllm/model_executor/layers/fused_moe/experts.py) --------
    def small_batch_linear(self, dtype: torch.dtype) -> Optional[tuple[Callable, int]]:
        """(op, max rows): an op `op(out, x, weight, bias)` computing x W^T + b faster than
        the GEMM for x of `dtype` with at most `max rows` rows, or None."""
        return None

    # ---- mixture of experts (vllm/model_executor/layers/fused_moe/) ----------------------
    def moe_kernels(self):
        """This platform's own routing and routed-expert compute for FusedMoE (a
        fused_moe.experts.MoEKernels), or None for the sorted-by-expert PyTorch path."""
        return None

    # ---- batch-invariant mode (vllm/batch_invariant.py) ------------------------------------
    def panel_kernel(self) -> Optional[tuple[Callable, int, int, int]]:
        """(kernel(out, x, panels, bias), panel width, min tokens, max tokens) of the packed
        float32 GEMM for mid-sized batches, or None where there is none."""
        return None

    def batch_invariant_linear(self, dtype: torch.dtype) -> Callable:
        """An op `op(out, x, weight, bias)` computing x W^T + b whose every output row is bit
        for bit the same whatever the other rows of x; raises vllm.config.ConfigError where
        this platform has none for `dtype`."""
        from vllm.batch_invariant import BATCH_INVARIANT_ENV
        from vllm.config import ConfigError
        raise ConfigError(f"{BATCH_INVARIANT_ENV}=1 is supported on CPU only, not on {self.name}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
