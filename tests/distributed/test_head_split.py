"""Heads dealt out in KV groups: every head on some rank, each query head beside its KV head."""
import pytest

from vllm.distributed.head_split import check_head_split, head_shard, kv_head_run

SIZES = [(heads, kv_heads, tp) for heads, kv_heads in [(9, 3), (8, 2), (12, 4), (14, 2),
                                                          (6, 6), (32, 8)]
         for tp in range(1, 13)]


def splits(heads, kv_heads, tp):
    try:
        check_head_split(tp, heads, kv_heads)
    except ValueError:
        return None
    return [head_shard(rank, tp, heads, kv_heads) for rank in range(tp)]


@pytest.mark.parametrize("heads, kv_heads, tp", SIZES)
def test_every_query_head_once_next_to_its_kv_head(heads, kv_heads, tp):
    shards = splits(heads, kv_heads, tp)
    if shards is None:
        assert tp > kv_heads and (tp % kv_heads or tp > heads)
        return
    group = heads // kv_heads
    owners = [rank for rank, s in enumerate(shards) for _ in range(s.q_count)]
    assert [h for s in shards for h in range(s.q_start, s.q_start + s.q_count)] \
        == list(range(heads))
    assert len(owners) == heads
    for s in shards:
        assert s.q_count >= 1 and s.kv_count >= 1
        kv_of_queries = {h // group for h in range(s.q_start, s.q_start + s.q_count)}
        assert kv_of_queries == set(range(s.kv_start, s.kv_start + s.kv_count))
        assert s.q_count * 1.0 / s.kv_count <= group
    counts = [s.q_count for s in shards]
    assert max(counts) - min(counts) <= max(group, 1)
    assert [kv_head_run(r, tp, kv_heads) for r in range(tp)] \
        == [(s.kv_start, s.kv_count) for s in shards]


@pytest.mark.parametrize("heads, kv_heads, tp", [(8, 2, 4), (32, 8, 8), (12, 4, 2), (8, 2, 8)])
def test_even_sizes_split_like_vllm(heads, kv_heads, tp):
    per_rank, kv_per_rank = heads // tp, max(kv_heads // tp, 1)
    replicas = max(tp // kv_heads, 1)
    for rank, s in enumerate(splits(heads, kv_heads, tp)):
        assert (s.q_start, s.q_count) == (rank * per_rank, per_rank)
        assert (s.kv_start, s.kv_count) == ((rank // replicas) * kv_per_rank, kv_per_rank)


@pytest.mark.parametrize("heads, kv_heads, tp, words", [
    (9, 3, 4, "3 KV heads"), (9, 3, 12, "9 attention heads"), (10, 4, 2, "not a multiple")])
def test_refusals_name_the_numbers(heads, kv_heads, tp, words):
    with pytest.raises(ValueError, match=words):
        check_head_split(tp, heads, kv_heads)
