"""Which producer rank sends which cache units to which consumer rank.

How ranks hold the units is the cache's kind (vllm.kv_shape.CacheUnits):
- per head (GQA): ranks hold KV heads as the QKV layer shards them
  (vllm.distributed.head_split): a contiguous run, possibly of unequal length, when the
  tensor-parallel size is at most the number of KV heads; one replicated head per rank
  when it exceeds them. A consumer rank takes each of its heads from one producer rank
  holding it.
- latent (MLA): every rank holds the whole latent, one unit, never split by head.
  Consumer rank r takes it from producer rank r % producer_tp: each consumer rank
  receives it exactly once, and the producer ranks share the sending.
"""
from typing import NamedTuple

from vllm.distributed.head_split import kv_head_run
from vllm.kv_shape import CacheUnits


class UnitRange(NamedTuple):
    start: int
    count: int

    @property
    def end(self) -> int:
        return self.start + self.count


class PairTransfer(NamedTuple):
    producer_rank: int
    consumer_rank: int
    units: UnitRange  # global unit indices this pair moves


def units_of_rank(rank: int, tp_size: int, units: CacheUnits) -> UnitRange:
    if units.replicated:
        return UnitRange(0, units.count)
    return UnitRange(*kv_head_run(rank, tp_size, units.count))


def transfer_plan(producer_tp: int, consumer_tp: int, units: CacheUnits
                  ) -> list[PairTransfer]:
    """Every consumer unit comes from exactly one producer rank holding it; replicas
    are spread over consumer ranks."""
    plan: list[PairTransfer] = []
    for consumer_rank in range(consumer_tp):
        wanted = units_of_rank(consumer_rank, consumer_tp, units)
        for unit in range(wanted.start, wanted.end):
            source = _source_rank(unit, consumer_rank, producer_tp, units)
            _append_unit(plan, source, consumer_rank, unit)
    return plan


def values_moved_per_token(plan: list[PairTransfer], units: CacheUnits) -> int:
    """Cache values of one layer the plan moves per token, every pair together."""
    return sum(transfer.units.count for transfer in plan) * units.planes * units.size


def _source_rank(unit: int, consumer_rank: int, producer_tp: int, units: CacheUnits) -> int:
    holders = []
    for rank in range(producer_tp):
        held = units_of_rank(rank, producer_tp, units)
        if held.start <= unit < held.end:
            holders.append(rank)
    return holders[consumer_rank % len(holders)]


def _append_unit(plan: list[PairTransfer], producer: int, consumer: int, unit: int) -> None:
    last = plan[-1] if plan else None
    if last and last.producer_rank == producer and last.consumer_rank == consumer \
            and last.units.end == unit:
        plan[-1] = last._replace(units=UnitRange(last.units.start, last.units.count + 1))
    else:
        plan.append(PairTransfer(producer, consumer, UnitRange(unit, 1)))
