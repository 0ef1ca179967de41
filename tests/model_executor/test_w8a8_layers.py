"""W8A8 linear layers: each parallel layer kind loaded with int8 weights and scales through
its own loaders (fused shards, simulated TP ranks) gives int8_kernels' reference of the
checkpoint's layers, and F.linear on the dequantized weights within the quantization error."""
import pytest
import torch
import torch.nn.functional as F

from vllm.distributed.parallel_state import init_tensor_parallel
from vllm.model_executor.layers.linear import (
    ColumnParallelLinear, MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear)
from vllm.model_executor.layers.quantization.ascend_format import (
    decode_deq_scale, encode_deq_scale)
from vllm.model_executor.layers.quantization.int8_kernels import (
    Int8Weight, w8a8_dynamic_linear, w8a8_static_linear)
from vllm.model_executor.layers.quantization.w8a8_linear import (
    W8A8DynamicLinearMethod, W8A8StaticLinearMethod)
from vllm.quantize.tensors import dynamic_tensors, static_tensors

DYNAMIC = ("weight_scale", "weight_offset")
STATIC = ("weight_scale", "weight_offset", "input_scale", "input_offset", "quant_bias",
          "deq_scale")


def checkpoint_layer(rows: int, cols: int, static: bool, seed: int, x_range=(-3.0, 4.0)):
    """One checkpoint layer's tensors (as `vllm quantize` writes them, flattened as the
    loader hands them over) and its float weight and bias."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=generator)
    bias = torch.randn(rows, generator=generator)
    tensors = static_tensors(weight, bias, *x_range, torch.float32) if static \
        else dynamic_tensors(weight, torch.float32)
    tensors = {name: value.reshape(-1) if value.dim() == 2 and value.shape[1] == 1 else value
               for name, value in tensors.items()}
    if "deq_scale" in tensors:
        tensors["deq_scale"] = decode_deq_scale(tensors["deq_scale"])
    if not static:
        tensors["bias"] = bias
    return tensors, weight, bias


def reference(x: torch.Tensor, tensors: dict, static: bool) -> torch.Tensor:
    """int8_kernels on the checkpoint layer itself."""
    weight = Int8Weight(tensors["weight"], tensors["weight_scale"])
    if static:
        return w8a8_static_linear(x, weight, tensors["input_scale"], tensors["input_offset"],
                                  tensors["quant_bias"], tensors["deq_scale"])
    return w8a8_dynamic_linear(x, weight, tensors["bias"])


def quantize(layer, static: bool, prefix: str = "layer"):
    method = (W8A8StaticLinearMethod(STATIC) if static else W8A8DynamicLinearMethod(DYNAMIC))
    layer.quant_method = method
    method.create_weights(layer, prefix)
    return layer


def load_all(layer, tensors: dict, shard_id=None) -> None:
    for name, value in tensors.items():
        param = getattr(layer, name)
        args = () if shard_id is None else (shard_id,)
        param.weight_loader(param, value, *args)


def finish(layer) -> None:
    layer.quant_method.process_weights_after_loading(layer, "layer")


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("rows, cols, tokens", [(7, 13, 1), (64, 96, 5), (33, 70, 17)])
def test_column_layer_is_the_reference(tp_state, static, rows, cols, tokens):
    tensors, weight, bias = checkpoint_layer(rows, cols, static, seed=rows)
    layer = finish_loaded(ColumnParallelLinear(cols, rows, bias=True), tensors, static)
    x = 2 * torch.rand(tokens, cols, generator=torch.Generator().manual_seed(1)) - 1  # (T, K)
    out = layer(x)
    assert torch.equal(out, reference(x, tensors, static))
    assert_within_quantization_error(out, F.linear(x, weight, bias), x, weight)


def finish_loaded(layer, tensors, static):
    quantize(layer, static)
    load_all(layer, tensors)
    finish(layer)
    return layer


def assert_within_quantization_error(out, exact, x, weight) -> None:
    """|error| per output under 2 int8 steps of every term: sum_k |x_k| |w_k| * 2 / 127."""
    bound = (x.abs() @ weight.abs().T) * 2 / 127 + 1e-4  # (T, N)
    assert bool((out - exact).abs().le(bound).all()), float((out - exact).abs().max())


@pytest.mark.parametrize("static", [False, True])
def test_fused_qkv_and_gate_up_concatenate_their_shards(tp_state, static):
    hidden, head = 24, 4
    shards = {s: checkpoint_layer(rows, hidden, static, seed=i)[0]
              for i, (s, rows) in enumerate([("q", 4 * head), ("k", 2 * head), ("v", 2 * head)])}
    qkv = quantize(QKVParallelLinear(hidden, head, 4, 2, bias=True), static)
    gate_up_shards = {i: checkpoint_layer(10, hidden, static, seed=10 + i)[0] for i in (0, 1)}
    gate_up = quantize(MergedColumnParallelLinear(hidden, [10, 10], bias=True), static)
    if static:  # q, k, v (and gate, up) read one input: one calibrated scale and offset
        for group in (shards, gate_up_shards):
            first = next(iter(group.values()))
            for tensors in group.values():
                tensors["input_scale"], tensors["input_offset"] = \
                    first["input_scale"], first["input_offset"]
    for layer, group in ((qkv, shards), (gate_up, gate_up_shards)):
        for shard_id, tensors in group.items():
            load_all(layer, tensors, shard_id)
        finish(layer)
        x = torch.randn(6, hidden, generator=torch.Generator().manual_seed(2))
        want = torch.cat([reference(x, tensors, static) for tensors in group.values()], dim=1)
        assert torch.equal(layer(x), want)


def test_fused_shards_with_different_input_scales_are_refused(tp_state):
    hidden = 16
    layer = quantize(MergedColumnParallelLinear(hidden, [8, 8], bias=False), static=True)
    load_all(layer, checkpoint_layer(8, hidden, True, 0, x_range=(-1.0, 1.0))[0], 0)
    with pytest.raises(ValueError, match=r"layer.input_scale\[1\].*differs"):
        load_all(layer, checkpoint_layer(8, hidden, True, 1, x_range=(-5.0, 5.0))[0], 1)


@pytest.mark.parametrize("static", [False, True])
def test_row_parallel_ranks_add_up_to_the_whole_layer(tp_state, static):
    """Row split: each rank's K columns, the scales whole; the partial outputs of two
    simulated ranks sum to the layer (static: quant_bias once, by rank 0; dynamic: each
    rank quantizes its own columns per token, as vllm-ascend's ranks do)."""
    rows, cols = 12, 20
    tensors, weight, bias = checkpoint_layer(rows, cols, static, seed=3)
    x = torch.randn(4, cols, generator=torch.Generator().manual_seed(4))
    partial = []
    for rank in (0, 1):
        init_tensor_parallel(rank, 2)
        layer = finish_loaded(RowParallelLinear(cols, rows, bias=not static), tensors, static)
        assert torch.equal(layer.weight, tensors["weight"][:, 10 * rank:10 * rank + 10])
        assert torch.equal(layer.int8.scale, tensors["weight_scale"])
        partial.append(layer.quant_method.apply(layer, x[:, 10 * rank:10 * rank + 10], None))
    if static:
        assert torch.allclose(partial[0] + partial[1], reference(x, tensors, True), atol=1e-4)
    else:
        exact = F.linear(x, weight)
        assert_within_quantization_error(partial[0] + partial[1], exact, x, weight)


def test_column_parallel_rank_holds_its_rows_and_scales(tp_state):
    tensors, _, _ = checkpoint_layer(8, 6, static=True, seed=5)
    init_tensor_parallel(1, 2)
    layer = finish_loaded(ColumnParallelLinear(6, 8, bias=True), tensors, static=True)
    for name in ("weight", "weight_scale", "quant_bias", "deq_scale"):
        assert torch.equal(getattr(layer, name).data.to(tensors[name].dtype), tensors[name][4:])
    assert torch.equal(layer.input_scale.data, tensors["input_scale"])


def test_deq_scale_round_trips_through_int64_bits():
    deq = torch.tensor([1.5e-4, 3.25e-2, 7.0], dtype=torch.float32)
    stored = encode_deq_scale(deq, torch.float16)
    assert stored.dtype == torch.int64
    assert torch.equal(decode_deq_scale(stored), deq)
    assert encode_deq_scale(deq, torch.bfloat16).dtype == torch.float32


def test_symmetric_weights_only(tp_state):
    tensors, _, _ = checkpoint_layer(4, 8, static=False, seed=6)
    tensors["weight_offset"] = torch.ones(4)
    layer = quantize(ColumnParallelLinear(8, 4, bias=True), static=False)
    load_all(layer, tensors)
    with pytest.raises(ValueError, match="layer.weight_offset: only symmetric"):
        finish(layer)
