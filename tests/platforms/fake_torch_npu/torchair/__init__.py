"""A fake `torchair` for tests: get_npu_backend gives a torch.compile backend that runs the
captured FX graph eagerly and counts compilations; ops.npu_fused_infer_attention_score is
TorchAir's graph-only attention (sequence lengths as tensors), refused outside a graph as
the real one refuses eager calls."""
import types
from collections import Counter

import torch

import fake_device
from torch_npu import _checks as C

COMPILES: Counter = Counter()


class CompilerConfig:
    def __init__(self):
        self.mode = "max-autotune"


def get_npu_backend(*, compiler_config=None):
    if compiler_config is not None and not isinstance(compiler_config, CompilerConfig):
        raise TypeError("compiler_config must be a torchair.CompilerConfig")

    def backend(graph_module, example_inputs):
        COMPILES["graphs"] += 1

        def run(*args):
            fake_device.GRAPH_DEPTH[0] += 1
            try:
                return graph_module.forward(*args)
            finally:
                fake_device.GRAPH_DEPTH[0] -= 1

        return run

    return backend


def _npu_fused_infer_attention_score(query, key, value, *, atten_mask=None, block_table=None,
                                     actual_seq_lengths=None, actual_seq_lengths_kv=None,
                                     num_heads=1, scale=1.0, input_layout="BSH",
                                     num_key_value_heads=0, sparse_mode=0, block_size=0,
                                     **unsupported):
    op = "torchair.ops.npu_fused_infer_attention_score"
    named = sorted(name for name, value in unsupported.items() if value is not None)
    if named:
        C.fail(op, f"the fake implements none of {named}")
    if atten_mask is not None:
        C.fail(op, "the fake implements decode only (no atten_mask)")
    return torch.ops.fake_npu.air_fused_infer_attention_score(
        query, key, value, block_table, actual_seq_lengths, actual_seq_lengths_kv, num_heads,
        num_key_value_heads, scale, sparse_mode, block_size, input_layout)


ops = types.SimpleNamespace(npu_fused_infer_attention_score=_npu_fused_infer_attention_score)


def _fused_infer_attention_kernel(query, key, value, block_table, actual_seq_lengths,
                                  actual_seq_lengths_kv, num_heads, num_key_value_heads, scale,
                                  sparse_mode, block_size, input_layout):
    import torch_npu
    op = "torchair.ops.npu_fused_infer_attention_score"
    torch_npu.CALLS[op] += 1
    if fake_device.GRAPH_DEPTH[0] == 0:
        raise NotImplementedError(f"eager mode of {op} is not supported")
    batch = query.shape[0]
    C.tensor(op, "actual_seq_lengths", actual_seq_lengths, 1, (torch.int64,))
    C.tensor(op, "actual_seq_lengths_kv", actual_seq_lengths_kv, 1, (torch.int64,),
             device=True)
    C.same(op, "actual_seq_lengths length", actual_seq_lengths.shape[0], batch)
    C.same(op, "actual_seq_lengths_kv length", actual_seq_lengths_kv.shape[0], batch)
    return torch_npu.fused_infer_attention(
        op, query, key, value, None, block_table, actual_seq_lengths.tolist(),
        actual_seq_lengths_kv.tolist(), num_heads, num_key_value_heads, scale, input_layout,
        sparse_mode, block_size)
