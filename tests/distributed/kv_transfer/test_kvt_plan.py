"""transfer_plan against a brute-force model of which rank holds which KV head (GQA), and of
the MLA latent every rank holds whole."""
import itertools
from collections import Counter, defaultdict

import pytest

from vllm.distributed.kv_transfer.plan import (UnitRange, transfer_plan, units_of_rank,
                                               values_moved_per_token)
from vllm.kv_shape import LATENT, PER_HEAD, CacheUnits

TP_SIZES = (1, 2, 3, 4, 6, 8, 16)
HEAD_COUNTS = (1, 2, 3, 4, 6, 8, 12, 16, 32)
HEAD_SIZE = 16


def gqa(heads: int) -> CacheUnits:
    return CacheUnits(PER_HEAD, heads, HEAD_SIZE)


def splits(tp: int, heads: int) -> bool:
    """The engine accepts a tensor-parallel size up to the KV heads, or a multiple of them."""
    return tp <= heads or tp % heads == 0


def held_heads(rank: int, tp: int, heads: int) -> set[int]:
    """What QKVParallelLinear loads on a rank: a contiguous run (the first heads % tp
    ranks one head longer), or one head shared by tp // heads consecutive ranks."""
    if tp >= heads:
        return {rank // (tp // heads)}
    lengths = [heads // tp + (1 if r < heads % tp else 0) for r in range(tp)]
    start = sum(lengths[:rank])
    return set(range(start, start + lengths[rank]))


COMBOS = [(p, d, h) for p, d, h in itertools.product(TP_SIZES, TP_SIZES, HEAD_COUNTS)
          if splits(p, h) and splits(d, h)]


def test_combinations_include_replication_both_sides():
    assert any(p > h and d > h for p, d, h in COMBOS)
    assert any(p > h and d < h for p, d, h in COMBOS)
    assert any(p < h and d > h for p, d, h in COMBOS)
    assert any(h % p and h % d == 0 for p, d, h in COMBOS)  # uneven producer
    assert any(h % p and h % d and p != d for p, d, h in COMBOS)  # uneven both sides
    assert len(COMBOS) > 100


@pytest.mark.parametrize("tp,heads", sorted({(p, h) for p, _, h in COMBOS}))
def test_units_of_rank_match_the_qkv_sharding(tp, heads):
    every = []
    for rank in range(tp):
        held = units_of_rank(rank, tp, gqa(heads))
        assert isinstance(held, UnitRange) and held.count >= 1
        assert set(range(held.start, held.end)) == held_heads(rank, tp, heads)
        every.extend(range(held.start, held.end))
    assert set(every) == set(range(heads))  # every head lives somewhere


@pytest.mark.parametrize("producer_tp,consumer_tp,heads", COMBOS)
def test_transfer_plan(producer_tp, consumer_tp, heads):
    plan = transfer_plan(producer_tp, consumer_tp, gqa(heads))
    received = defaultdict(Counter)  # consumer rank -> head -> times received
    served = defaultdict(Counter)  # head -> producer rank -> consumer ranks it serves
    pairs = Counter()
    for transfer in plan:
        assert 0 <= transfer.producer_rank < producer_tp
        assert 0 <= transfer.consumer_rank < consumer_tp
        assert transfer.units.count >= 1
        pairs[(transfer.producer_rank, transfer.consumer_rank)] += 1
        for head in range(transfer.units.start, transfer.units.end):
            assert head in held_heads(transfer.producer_rank, producer_tp, heads), \
                f"producer rank {transfer.producer_rank} does not hold head {head}"
            received[transfer.consumer_rank][head] += 1
            served[head][transfer.producer_rank] += 1
    for consumer_rank in range(consumer_tp):
        wanted = held_heads(consumer_rank, consumer_tp, heads)
        assert dict(received[consumer_rank]) == {head: 1 for head in wanted}, \
            f"consumer rank {consumer_rank} wanted {sorted(wanted)}"
    assert all(count == 1 for count in pairs.values()), "a pair appears twice in the plan"
    # Replicas share the work: per head, holders serve consumer ranks evenly.
    for head, by_producer in served.items():
        holders = [r for r in range(producer_tp) if head in held_heads(r, producer_tp, heads)]
        loads = [by_producer.get(rank, 0) for rank in holders]
        assert max(loads) - min(loads) <= 1, (head, loads)


def test_plan_examples():
    H = UnitRange
    assert transfer_plan(1, 1, gqa(8)) == [(0, 0, H(0, 8))]
    assert transfer_plan(1, 2, gqa(8)) == [(0, 0, H(0, 4)), (0, 1, H(4, 4))]
    assert transfer_plan(2, 1, gqa(8)) == [(0, 0, H(0, 4)), (1, 0, H(4, 4))]
    # 4 producer ranks hold 2 heads twice each; 4 consumer ranks take one replica each.
    assert sorted(transfer_plan(4, 4, gqa(2))) == [(0, 0, H(0, 1)), (1, 1, H(0, 1)),
                                                   (2, 2, H(1, 1)), (3, 3, H(1, 1))]
    # One consumer rank gathers both heads, once each, from replicated producers.
    plan = transfer_plan(4, 1, gqa(2))
    assert sorted(h for t in plan for h in range(t.units.start, t.units.end)) == [0, 1]


# ---- MLA: one latent unit, whole on every rank -----------------------------------------------
LATENT_UNITS = CacheUnits(LATENT, 1, 576)  # DeepSeek-R1: kv_lora_rank 512 + rope 64


@pytest.mark.parametrize("producer_tp,consumer_tp", [(1, 1), (2, 1), (1, 2), (2, 2), (4, 2),
                                                     (2, 4), (3, 8)])
def test_latent_plan_sends_the_whole_latent_once_to_every_consumer_rank(producer_tp,
                                                                         consumer_tp):
    plan = transfer_plan(producer_tp, consumer_tp, LATENT_UNITS)
    assert sorted(t.consumer_rank for t in plan) == list(range(consumer_tp))
    for transfer in plan:
        assert transfer.units == (0, 1), "the latent is never split"
        assert transfer.producer_rank == transfer.consumer_rank % producer_tp
    senders = Counter(t.producer_rank for t in plan)
    assert max(senders.values()) - min(senders.values()) <= 1  # the sending is shared
    assert len(senders) == min(producer_tp, consumer_tp)
    assert values_moved_per_token(plan, LATENT_UNITS) == consumer_tp * 576


def test_every_rank_holds_the_whole_latent():
    for tp in (1, 2, 3, 8):
        assert {units_of_rank(rank, tp, LATENT_UNITS) for rank in range(tp)} == {(0, 1)}


@pytest.mark.parametrize("producer_tp,consumer_tp", [(1, 1), (2, 1), (1, 2), (2, 2)])
def test_gqa_moves_every_head_once_whatever_the_sizes(producer_tp, consumer_tp):
    units = gqa(8)
    plan = transfer_plan(producer_tp, consumer_tp, units)
    assert values_moved_per_token(plan, units) == units.elements_per_token == 2 * 8 * 16
