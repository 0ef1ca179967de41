"""What the fake torch_npu / torchair need to stay the same object across their re-imports
(tests/platforms/fake_npu_platform.py forgets them after each use): the marker of tensors
that crossed to the "device", and the custom ops TorchAir graphs trace. The op bodies run
the current fake's kernels (looked up in sys.modules when called)."""
import sys

import torch


class DeviceTensor(torch.Tensor):
    """A CPU tensor standing for a device one: what step metadata becomes after `.on()`.
    Results of ops on it are plain tensors again (no torch function override)."""
    __torch_function__ = torch._C._disabled_torch_function_impl


def mark_device(t: torch.Tensor) -> torch.Tensor:
    return t.as_subclass(DeviceTensor)


def is_device(t) -> bool:
    return isinstance(t, DeviceTensor)


GRAPH_DEPTH = [0]  # > 0 while the fake TorchAir backend runs a compiled graph


@torch.library.custom_op("fake_npu::scatter_nd_update_", mutates_args=("cache",))
def scatter_nd_update_(cache: torch.Tensor, indices: torch.Tensor,
                       updates: torch.Tensor) -> None:
    sys.modules["torch_npu"]._scatter_nd_update_kernel(cache, indices, updates)


@scatter_nd_update_.register_fake
def _(cache, indices, updates):
    return None


@torch.library.custom_op("fake_npu::air_fused_infer_attention_score", mutates_args=())
def air_fused_infer_attention_score(query: torch.Tensor, key: torch.Tensor,
                                    value: torch.Tensor, block_table: torch.Tensor,
                                    actual_seq_lengths: torch.Tensor,
                                    actual_seq_lengths_kv: torch.Tensor, num_heads: int,
                                    num_key_value_heads: int, scale: float, sparse_mode: int,
                                    block_size: int, input_layout: str
                                    ) -> tuple[torch.Tensor, torch.Tensor]:
    return sys.modules["torchair"]._fused_infer_attention_kernel(
        query, key, value, block_table, actual_seq_lengths, actual_seq_lengths_kv, num_heads,
        num_key_value_heads, scale, sparse_mode, block_size, input_layout)


@air_fused_infer_attention_score.register_fake
def _(query, key, value, block_table, actual_seq_lengths, actual_seq_lengths_kv, num_heads,
      num_key_value_heads, scale, sparse_mode, block_size, input_layout):
    return torch.empty_like(query), query.new_empty(1, dtype=torch.float32)
