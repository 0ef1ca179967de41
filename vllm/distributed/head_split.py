"""Which attention heads each tensor-parallel rank holds.

Heads are dealt out in KV groups (a KV head and the query heads that read it), so every
rank's query heads read only its own KV heads:

- tp_size <= KV heads: each rank takes a contiguous run of KV groups, as even as it can
  be (3 KV heads over 2 ranks: 2 and 1), so sizes that do not divide the heads work;
- tp_size > KV heads: each KV head is replicated on tp_size / KV-heads ranks, which
  share out its query heads (as even as they can be).

When the sizes divide evenly this is the same split vLLM makes.
"""
from typing import NamedTuple


class HeadShard(NamedTuple):
    q_start: int
    q_count: int
    kv_start: int
    kv_count: int


def check_head_split(tp_size: int, total_heads: int, total_kv_heads: int) -> None:
    """Raises ValueError saying why these heads cannot be spread over tp_size ranks."""
    if total_kv_heads < 1 or total_heads % total_kv_heads:
        raise ValueError(f"the model's {total_heads} attention heads are not a multiple "
                         f"of its {total_kv_heads} KV heads")
    if tp_size <= total_kv_heads:
        return
    if tp_size % total_kv_heads:
        raise ValueError(
            f"the model's {total_kv_heads} KV heads cannot be spread over "
            f"tensor_parallel_size={tp_size}: above {total_kv_heads}, the size must be a "
            f"multiple of {total_kv_heads} (each KV head replicated on the same number of ranks)")
    if tp_size > total_heads:
        raise ValueError(f"the model's {total_heads} attention heads cannot be split over "
                         f"tensor_parallel_size={tp_size}: each rank needs at least one")


def head_shard(rank: int, tp_size: int, total_heads: int, total_kv_heads: int) -> HeadShard:
    check_head_split(tp_size, total_heads, total_kv_heads)
    group = total_heads // total_kv_heads
    kv_start, kv_count = kv_head_run(rank, tp_size, total_kv_heads)
    if tp_size <= total_kv_heads:
        return HeadShard(kv_start * group, kv_count * group, kv_start, kv_count)
    replicas = tp_size // total_kv_heads
    q_offset, q_count = _even_run(rank % replicas, replicas, group)
    return HeadShard(kv_start * group + q_offset, q_count, kv_start, 1)


def kv_head_run(rank: int, tp_size: int, total_kv_heads: int) -> tuple[int, int]:
    """(first KV head, count) that `rank` holds; tp_size must be split as above."""
    if tp_size <= total_kv_heads:
        return _even_run(rank, tp_size, total_kv_heads)
    return rank // (tp_size // total_kv_heads), 1


def _even_run(index: int, parts: int, total: int) -> tuple[int, int]:
    """(start, count) of part `index` when `total` items are cut into `parts` runs whose
    sizes differ by at most one, the longer runs first."""
    base, extra = divmod(total, parts)
    return index * base + min(index, extra), base + (1 if index < extra else 0)
