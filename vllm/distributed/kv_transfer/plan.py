"""Which producer rank sends which KV heads to which consumer rank.

Ranks hold KV heads as the QKV layer shards them (vllm.distributed.head_split): a
contiguous run, possibly of unequal length, when the tensor-parallel size is at most the
number of KV heads; one replicated head per rank when it exceeds them.
"""
from typing import NamedTuple

from vllm.distributed.head_split import kv_head_run


class HeadRange(NamedTuple):
    start: int
    count: int

    @property
    def end(self) -> int:
        return self.start + self.count


class PairTransfer(NamedTuple):
    producer_rank: int
    consumer_rank: int
    heads: HeadRange  # global head indices this pair moves


def kv_heads_of_rank(rank: int, tp_size: int, total_kv_heads: int) -> HeadRange:
    return HeadRange(*kv_head_run(rank, tp_size, total_kv_heads))


def transfer_plan(producer_tp: int, consumer_tp: int, total_kv_heads: int
                  ) -> list[PairTransfer]:
    """Every consumer head comes from exactly one producer rank holding it; replicas
    are spread over consumer ranks."""
    plan: list[PairTransfer] = []
    for consumer_rank in range(consumer_tp):
        wanted = kv_heads_of_rank(consumer_rank, consumer_tp, total_kv_heads)
        for head in range(wanted.start, wanted.end):
            source = _source_rank(head, consumer_rank, producer_tp, total_kv_heads)
            _append_head(plan, source, consumer_rank, head)
    return plan


def _source_rank(head: int, consumer_rank: int, producer_tp: int, total_kv_heads: int) -> int:
    holders = []
    for rank in range(producer_tp):
        held = kv_heads_of_rank(rank, producer_tp, total_kv_heads)
        if held.start <= head < held.end:
            holders.append(rank)
    return holders[consumer_rank % len(holders)]


def _append_head(plan: list[PairTransfer], producer: int, consumer: int, head: int) -> None:
    last = plan[-1] if plan else None
    if last and last.producer_rank == producer and last.consumer_rank == consumer \
            and last.heads.end == head:
        plan[-1] = last._replace(heads=HeadRange(last.heads.start, last.heads.count + 1))
    else:
        plan.append(PairTransfer(producer, consumer, HeadRange(head, 1)))
