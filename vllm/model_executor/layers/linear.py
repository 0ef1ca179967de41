"""Linear layers split across tensor-parallel ranks by output (column) or input (row)."""
from typing import Optional

import torch
from torch import nn

from vllm.distributed.communication_op import (
    tensor_model_parallel_all_gather, tensor_model_parallel_all_reduce)
from vllm.distributed.head_split import head_shard
from vllm.model_executor.layers.gguf_blocks import PackedLinear, packed_or_dense_linear
from vllm.model_executor.layers.weight_utils import (
    copy_checked, divide, narrow_checked, new_parameter, tp_rank_and_size)


def linear_matmul(layer: nn.Module, x: torch.Tensor,
                  bias: Optional[torch.Tensor]) -> torch.Tensor:
    """x W^T + b of a parallel layer's local shard: its quantization method's matmul when it
    has one (layers/quantization/), else the float weight's (GGUF blocks, panels, GEMM)."""
    if layer.quant_method is not None:
        return layer.quant_method.apply(layer, x, bias)
    return packed_or_dense_linear(x, layer.weight, bias, layer.packed)


class ColumnParallelLinear(nn.Module):
    """y = x W^T + b with W's rows (the outputs) split evenly across ranks.

    Each parameter carries `weight_loader(param, loaded_weight, shard_id=None)`.
    Subclasses whose ranks hold unequal shares pass `local_output_size`.
    """

    def __init__(self, input_size: int, output_size: int, bias: bool = True,
                 gather_output: bool = False, prefix: str = "",
                 local_output_size: Optional[int] = None):
        super().__init__()
        self.tp_rank, self.tp_size = tp_rank_and_size()
        self.prefix = prefix
        self.input_size = input_size
        self.output_size = output_size
        self.output_size_per_partition = local_output_size or divide(
            output_size, self.tp_size, f"{prefix or 'linear'} output size")
        self.gather_output = gather_output
        self.weight = new_parameter(self.output_size_per_partition, input_size)
        self.packed: Optional[PackedLinear] = None  # GGUF blocks of `weight`, if attached
        self.quant_method = None  # W8A8 (layers/quantization/w8a8_linear.py), if quantized
        self.weight.weight_loader = self.weight_loader
        if bias:
            self.bias = new_parameter(self.output_size_per_partition)
            self.bias.weight_loader = self.weight_loader
        else:
            self.register_parameter("bias", None)

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor,
                      shard_id=None) -> None:
        if shard_id is not None:
            raise ValueError(f"{self.prefix}: unexpected shard_id {shard_id!r}")
        rows = self.output_size_per_partition
        shard = narrow_checked(loaded_weight, 0, self.output_size,
                               self.tp_rank * rows, rows, self.prefix)
        copy_checked(param.data, shard, self.prefix)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = linear_matmul(self, x, self.bias)  # (num_tokens, output_size_per_partition)
        if self.gather_output:
            out = tensor_model_parallel_all_gather(out, dim=-1)
        return out


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel projections of the same input fused into one matmul.

    `shard_id` is the index of the projection in `output_sizes` (e.g. 0 = gate, 1 = up);
    each rank's output is [its slice of projection 0, its slice of projection 1, ...].
    """

    def __init__(self, input_size: int, output_sizes: list[int], bias: bool = True,
                 gather_output: bool = False, prefix: str = ""):
        tp_size = tp_rank_and_size()[1]
        for size in output_sizes:
            divide(size, tp_size, f"{prefix or 'linear'} output size")
        self.output_sizes = list(output_sizes)
        super().__init__(input_size, sum(output_sizes), bias, gather_output, prefix)

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor,
                      shard_id: Optional[int] = None) -> None:
        if shard_id is None:
            self._load_fused(param, loaded_weight)
            return
        if not isinstance(shard_id, int) or not 0 <= shard_id < len(self.output_sizes):
            raise ValueError(f"{self.prefix}: shard_id must be an index below "
                             f"{len(self.output_sizes)}, got {shard_id!r}")
        rows = self.output_sizes[shard_id] // self.tp_size
        offset = sum(self.output_sizes[:shard_id]) // self.tp_size
        shard = narrow_checked(loaded_weight, 0, self.output_sizes[shard_id],
                               self.tp_rank * rows, rows, f"{self.prefix}[{shard_id}]")
        copy_checked(param.data.narrow(0, offset, rows), shard, f"{self.prefix}[{shard_id}]")

    def _load_fused(self, param: nn.Parameter, loaded_weight: torch.Tensor) -> None:
        parts = narrow_checked(loaded_weight, 0, self.output_size, 0, self.output_size,
                               self.prefix).split(self.output_sizes, dim=0)
        for shard_id, part in enumerate(parts):
            self.weight_loader(param, part, shard_id)


class QKVParallelLinear(ColumnParallelLinear):
    """The query, key and value projections fused into one matmul.

    Heads are dealt out in KV groups (`vllm.distributed.head_split`): ranks may hold
    unequal shares, and KV heads are replicated when there are fewer of them than
    ranks. `shard_id` is "q", "k" or "v".
    """

    def __init__(self, hidden_size: int, head_size: int, total_num_heads: int,
                 total_num_kv_heads: Optional[int] = None, bias: bool = True,
                 prefix: str = ""):
        tp_rank, tp_size = tp_rank_and_size()
        total_num_kv_heads = total_num_kv_heads or total_num_heads
        self.head_size = head_size
        self.total_num_heads = total_num_heads
        self.total_num_kv_heads = total_num_kv_heads
        self.heads = head_shard(tp_rank, tp_size, total_num_heads, total_num_kv_heads)
        self.num_heads = self.heads.q_count
        self.num_kv_heads = self.heads.kv_count
        self.num_kv_head_replicas = max(tp_size // total_num_kv_heads, 1)
        full_output = (total_num_heads + 2 * total_num_kv_heads) * head_size
        local_output = (self.num_heads + 2 * self.num_kv_heads) * head_size
        super().__init__(hidden_size, full_output, bias, False, prefix,
                         local_output_size=local_output)

    def _shard_layout(self, shard_id: str) -> tuple[int, int, int, int]:
        """(offset in this rank's output, rows, first source row, full source rows)."""
        q_rows = self.num_heads * self.head_size
        kv_rows = self.num_kv_heads * self.head_size
        kv_first_row = self.heads.kv_start * self.head_size
        kv_full = self.total_num_kv_heads * self.head_size
        if shard_id == "q":
            return (0, q_rows, self.heads.q_start * self.head_size,
                    self.total_num_heads * self.head_size)
        if shard_id == "k":
            return q_rows, kv_rows, kv_first_row, kv_full
        if shard_id == "v":
            return q_rows + kv_rows, kv_rows, kv_first_row, kv_full
        raise ValueError(f"{self.prefix}: shard_id must be 'q', 'k' or 'v', got {shard_id!r}")

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor,
                      shard_id: Optional[str] = None) -> None:
        if shard_id is None:
            self._load_fused(param, loaded_weight)
            return
        offset, rows, source_start, full_rows = self._shard_layout(shard_id)
        where = f"{self.prefix}[{shard_id}]"
        shard = narrow_checked(loaded_weight, 0, full_rows, source_start, rows, where)
        copy_checked(param.data.narrow(0, offset, rows), shard, where)

    def _load_fused(self, param: nn.Parameter, loaded_weight: torch.Tensor) -> None:
        sizes = [self.total_num_heads * self.head_size,
                 self.total_num_kv_heads * self.head_size,
                 self.total_num_kv_heads * self.head_size]
        parts = narrow_checked(loaded_weight, 0, sum(sizes), 0, sum(sizes),
                               self.prefix).split(sizes, dim=0)
        for shard_id, part in zip("qkv", parts):
            self.weight_loader(param, part, shard_id)


class HeadParallelLinear(ColumnParallelLinear):
    """A column-parallel projection into `total_num_heads` heads of `head_rows` outputs each,
    split by whole heads as `vllm.distributed.head_split` deals them (every head its own
    group: ranks may hold unequal runs). `heads` is this rank's HeadShard."""

    def __init__(self, input_size: int, total_num_heads: int, head_rows: int,
                 bias: bool = False, prefix: str = ""):
        tp_rank, tp_size = tp_rank_and_size()
        self.heads = head_shard(tp_rank, tp_size, total_num_heads, total_num_heads)
        self.head_rows = head_rows
        super().__init__(input_size, total_num_heads * head_rows, bias, False, prefix,
                         local_output_size=self.heads.q_count * head_rows)

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor,
                      shard_id=None) -> None:
        if shard_id is not None:
            raise ValueError(f"{self.prefix}: unexpected shard_id {shard_id!r}")
        shard = narrow_checked(loaded_weight, 0, self.output_size,
                               self.heads.q_start * self.head_rows,
                               self.output_size_per_partition, self.prefix)
        copy_checked(param.data, shard, self.prefix)


class ReplicatedLinear(ColumnParallelLinear):
    """y = x W^T + b with the whole W on every rank (a column split into one part each).

    `params_dtype` keeps a layer in another dtype than the model's (a float32 router)."""

    def __init__(self, input_size: int, output_size: int, bias: bool = True,
                 prefix: str = "", params_dtype: Optional[torch.dtype] = None):
        super().__init__(input_size, output_size, bias, False, prefix,
                         local_output_size=output_size)
        if params_dtype is not None:
            self.to(params_dtype)

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor,
                      shard_id=None) -> None:
        if shard_id is not None:
            raise ValueError(f"{self.prefix}: unexpected shard_id {shard_id!r}")
        copy_checked(param.data, loaded_weight, self.prefix)


class RowParallelLinear(nn.Module):
    """y = x W^T + b with W's columns (the inputs) split across ranks; partial
    results are summed over ranks, then the (unsplit) bias is added once.

    `input_partition` (first column, columns) gives this rank's share when ranks hold
    unequal ones (the output projection after unevenly split attention heads).
    """

    def __init__(self, input_size: int, output_size: int, bias: bool = True,
                 reduce_results: bool = True, prefix: str = "",
                 input_partition: Optional[tuple[int, int]] = None):
        super().__init__()
        self.tp_rank, self.tp_size = tp_rank_and_size()
        self.prefix = prefix
        self.input_size = input_size
        self.output_size = output_size
        if input_partition is None:
            cols = divide(input_size, self.tp_size, f"{prefix or 'linear'} input size")
            input_partition = (self.tp_rank * cols, cols)
        self.input_start, self.input_size_per_partition = input_partition
        self.reduce_results = reduce_results
        self.weight = new_parameter(output_size, self.input_size_per_partition)
        self.packed: Optional[PackedLinear] = None  # GGUF blocks of `weight`, if attached
        self.quant_method = None  # W8A8 (layers/quantization/w8a8_linear.py), if quantized
        self.weight.weight_loader = self.weight_loader
        if bias:
            self.bias = new_parameter(output_size)
            self.bias.weight_loader = self.weight_loader
        else:
            self.register_parameter("bias", None)

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor,
                      shard_id=None) -> None:
        if shard_id is not None:
            raise ValueError(f"{self.prefix}: unexpected shard_id {shard_id!r}")
        if param.dim() == 1:  # the bias, or a per-output-channel scale: whole on every rank
            copy_checked(param.data, loaded_weight, self.prefix)
            return
        shard = narrow_checked(loaded_weight, 1, self.input_size, self.input_start,
                               self.input_size_per_partition, self.prefix)
        copy_checked(param.data, shard, self.prefix)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return linear_matmul(self, x, self.bias)  # (num_tokens, output_size)
        out = linear_matmul(self, x, None)  # (num_tokens, output_size), partial sum
        if self.reduce_results:
            out = tensor_model_parallel_all_reduce(out)
        if self.bias is not None and (self.reduce_results or self.tp_rank == 0):
            out.add_(self.bias)
        return out

