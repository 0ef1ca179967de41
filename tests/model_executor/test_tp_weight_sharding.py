"""Each simulated tensor-parallel rank's weight loader keeps exactly its slice."""
import pytest
import torch

from vllm.distributed.parallel_state import (
    get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size, init_tensor_parallel)
from vllm.model_executor.layers.linear import (
    ColumnParallelLinear, HeadParallelLinear, MergedColumnParallelLinear, QKVParallelLinear,
    ReplicatedLinear, RowParallelLinear)
from vllm.model_executor.layers.vocab_parallel_embedding import (
    ParallelLMHead, VocabParallelEmbedding)

HIDDEN, HEAD = 8, 2


def load(param, tensor, shard_id=None):
    if shard_id is None:
        param.weight_loader(param, tensor)
    else:
        param.weight_loader(param, tensor, shard_id)


def test_default_state_and_validation(tp_state):
    assert get_tensor_model_parallel_rank() == 0
    assert get_tensor_model_parallel_world_size() == 1
    with pytest.raises(ValueError, match="rank"):
        init_tensor_parallel(2, 2)
    with pytest.raises(ValueError, match="world_size"):
        init_tensor_parallel(0, 0)


@pytest.mark.parametrize("rank", [0, 1])
def test_column_and_row(tp_state, rank):
    init_tensor_parallel(rank, 2)
    weight = torch.randn(6, HIDDEN)
    column = ColumnParallelLinear(HIDDEN, 6, bias=True)
    load(column.weight, weight)
    load(column.bias, torch.arange(6.0))
    assert torch.equal(column.weight, weight[3 * rank:3 * rank + 3])
    assert torch.equal(column.bias, torch.arange(6.0)[3 * rank:3 * rank + 3])
    row = RowParallelLinear(HIDDEN, 6, bias=True)
    load(row.weight, weight)
    load(row.bias, torch.arange(6.0))
    assert torch.equal(row.weight, weight[:, 4 * rank:4 * rank + 4])
    assert torch.equal(row.bias, torch.arange(6.0))  # the bias is not split


@pytest.mark.parametrize("rank", [0, 1])
def test_gate_up(tp_state, rank):
    init_tensor_parallel(rank, 2)
    gate, up = torch.randn(4, HIDDEN), torch.randn(4, HIDDEN)
    layer = MergedColumnParallelLinear(HIDDEN, [4, 4], bias=False)
    load(layer.weight, gate, 0)
    load(layer.weight, up, 1)
    expected = torch.cat([gate[2 * rank:2 * rank + 2], up[2 * rank:2 * rank + 2]])
    assert torch.equal(layer.weight, expected)
    fused = MergedColumnParallelLinear(HIDDEN, [4, 4], bias=False)
    load(fused.weight, torch.cat([gate, up]))
    assert torch.equal(fused.weight, expected)


def heads(tensor, first, count):
    return tensor[first * HEAD:(first + count) * HEAD]


@pytest.mark.parametrize("rank", [0, 1])
def test_qkv_split_kv_heads(tp_state, rank):
    init_tensor_parallel(rank, 2)
    q, k, v = torch.randn(4 * HEAD, HIDDEN), torch.randn(2 * HEAD, HIDDEN), torch.randn(
        2 * HEAD, HIDDEN)
    layer = QKVParallelLinear(HIDDEN, HEAD, total_num_heads=4, total_num_kv_heads=2, bias=False)
    for shard_id, tensor in zip("qkv", (q, k, v)):
        load(layer.weight, tensor, shard_id)
    assert (layer.num_heads, layer.num_kv_heads) == (2, 1)
    expected = torch.cat([heads(q, 2 * rank, 2), heads(k, rank, 1), heads(v, rank, 1)])
    assert torch.equal(layer.weight, expected)


@pytest.mark.parametrize("rank", [0, 1, 2, 3])
def test_qkv_replicates_kv_heads(tp_state, rank):
    init_tensor_parallel(rank, 4)
    q, k, v = torch.randn(4 * HEAD, HIDDEN), torch.randn(2 * HEAD, HIDDEN), torch.randn(
        2 * HEAD, HIDDEN)
    layer = QKVParallelLinear(HIDDEN, HEAD, total_num_heads=4, total_num_kv_heads=2, bias=True)
    load(layer.weight, torch.cat([q, k, v]))  # a checkpoint with qkv already fused
    load(layer.bias, torch.arange(8 * HEAD * 1.0))
    assert layer.num_kv_head_replicas == 2
    kv_head = rank // 2
    expected = torch.cat([heads(q, rank, 1), heads(k, kv_head, 1), heads(v, kv_head, 1)])
    assert torch.equal(layer.weight, expected)
    bias = torch.arange(8 * HEAD * 1.0)
    assert torch.equal(layer.bias, torch.cat([heads(bias, rank, 1), heads(bias, 4 + kv_head, 1),
                                              heads(bias, 6 + kv_head, 1)]))


@pytest.mark.parametrize("rank", [0, 1])
def test_qkv_and_o_proj_uneven_kv_groups(tp_state, rank):
    """9 heads in 3 KV groups over 2 ranks: rank 0 holds groups 0-1, rank 1 group 2."""
    init_tensor_parallel(rank, 2)
    q, k, v = (torch.randn(9 * HEAD, HIDDEN), torch.randn(3 * HEAD, HIDDEN),
               torch.randn(3 * HEAD, HIDDEN))
    layer = QKVParallelLinear(HIDDEN, HEAD, total_num_heads=9, total_num_kv_heads=3,
                              bias=False)
    for shard_id, tensor in zip("qkv", (q, k, v)):
        load(layer.weight, tensor, shard_id)
    q_first, q_count, kv_first, kv_count = [(0, 6, 0, 2), (6, 3, 2, 1)][rank]
    assert (layer.num_heads, layer.num_kv_heads) == (q_count, kv_count)
    expected = torch.cat([heads(q, q_first, q_count), heads(k, kv_first, kv_count),
                          heads(v, kv_first, kv_count)])
    assert torch.equal(layer.weight, expected)
    o_weight = torch.randn(HIDDEN, 9 * HEAD)
    o_proj = RowParallelLinear(9 * HEAD, HIDDEN, bias=False,
                               input_partition=(q_first * HEAD, q_count * HEAD))
    load(o_proj.weight, o_weight)
    assert torch.equal(o_proj.weight, o_weight[:, q_first * HEAD:(q_first + q_count) * HEAD])


def test_indivisible_heads_rejected(tp_state):
    init_tensor_parallel(0, 3)
    with pytest.raises(ValueError, match="heads"):
        QKVParallelLinear(HIDDEN, HEAD, total_num_heads=4, total_num_kv_heads=2)


@pytest.mark.parametrize("rank", [0, 1])
def test_vocab_rows_with_padding(tp_state, rank):
    init_tensor_parallel(rank, 2)
    weight = torch.randn(7, HIDDEN)
    embedding = VocabParallelEmbedding(7, HIDDEN)
    load(embedding.weight, weight)
    assert embedding.weight.shape == (4, HIDDEN)
    if rank == 0:
        assert torch.equal(embedding.weight, weight[:4])
    else:
        assert torch.equal(embedding.weight[:3], weight[4:])
        assert not embedding.weight[3].any()  # padding row
    head = ParallelLMHead(7, HIDDEN).tie_weights(embedding)
    assert head.weight is embedding.weight


@pytest.mark.parametrize("rank, first_head, heads", [(0, 0, 2), (1, 2, 1)])
def test_head_parallel_splits_whole_heads_unevenly(tp_state, rank, first_head, heads):
    """3 heads of 4 rows over 2 ranks: 2 + 1; the replicated layer keeps everything."""
    init_tensor_parallel(rank, 2)
    weight = torch.randn(12, HIDDEN)
    layer = HeadParallelLinear(HIDDEN, 3, 4)
    load(layer.weight, weight)
    assert (layer.heads.q_start, layer.heads.q_count) == (first_head, heads)
    assert torch.equal(layer.weight, weight[4 * first_head:4 * (first_head + heads)])
    replicated = ReplicatedLinear(HIDDEN, 12, bias=True, params_dtype=torch.float64)
    load(replicated.weight, weight)
    load(replicated.bias, torch.arange(12.0))
    assert replicated.weight.dtype == torch.float64 and torch.equal(replicated.weight.float(),
                                                                   weight)
    x = torch.randn(3, HIDDEN, dtype=torch.float64)
    torch.testing.assert_close(replicated(x), x @ weight.double().T + torch.arange(12.0).double())
