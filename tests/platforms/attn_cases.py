"""Random paged-attention batches for comparing a backend layer by layer with the CPU one."""
from typing import NamedTuple

import torch

from vllm.attention.backend import CommonAttentionMetadata


class Case(NamedTuple):
    q: torch.Tensor  # (T, H, D)
    k: torch.Tensor  # (T, KVH, D)
    v: torch.Tensor  # (T, KVH, D)
    kv_cache: torch.Tensor  # (2, num_blocks, block_size, KVH, D), cached prefixes filled
    common: CommonAttentionMetadata
    scale: float


def make_case(requests: list[tuple[int, int]], num_heads: int = 4, num_kv_heads: int = 2,
              head_size: int = 16, block_size: int = 128, dtype=torch.float32,
              seed: int = 0) -> Case:
    """requests: (cached tokens, new tokens) each, decodes (new == 1) listed first."""
    gen = torch.Generator().manual_seed(seed)
    seq_lens = [cached + new for cached, new in requests]
    blocks_per_req = [-(-n // block_size) for n in seq_lens]
    num_blocks = sum(blocks_per_req) + 2
    order = torch.randperm(num_blocks, generator=gen).tolist()
    max_blocks = max(blocks_per_req) + 1  # a spare column, as real block tables have
    block_table = torch.zeros(len(requests), max_blocks, dtype=torch.int32)
    for row, count in enumerate(blocks_per_req):
        block_table[row, :count] = torch.tensor([order.pop() for _ in range(count)])
    kv_cache = torch.randn(2, num_blocks, block_size, num_kv_heads, head_size, generator=gen)
    starts, slots = [0], []
    for row, (cached, new) in enumerate(requests):
        starts.append(starts[-1] + new)
        for pos in range(cached, cached + new):
            slots.append(int(block_table[row, pos // block_size]) * block_size + pos % block_size)
    total = starts[-1]
    common = CommonAttentionMetadata(
        num_actual_tokens=total, num_decodes=sum(1 for _, new in requests if new == 1),
        query_start_loc_list=starts, seq_lens_list=seq_lens,
        query_start_loc=torch.tensor(starts, dtype=torch.int32),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32), block_table=block_table,
        slot_mapping=torch.tensor(slots, dtype=torch.int64))
    qkv = torch.randn(total, num_heads + 2 * num_kv_heads, head_size, generator=gen)
    # Strided views of one projection, as the models hand them over.
    q, k, v = qkv.to(dtype).split([num_heads, num_kv_heads, num_kv_heads], dim=1)
    return Case(q, k, v, kv_cache.to(dtype), common, head_size ** -0.5)


def run_backend(backend_cls, case: Case, **cast) -> tuple[torch.Tensor, torch.Tensor]:
    """(output (T, H, D), the cache after the step) of one layer; inputs cast by `cast`."""
    q, k, v, cache = (t.to(**cast) if cast else t for t in (case.q, case.k, case.v, case.kv_cache))
    cache = cache.clone()  # the case stays as made for the next backend
    num_heads, head_size, num_kv_heads = q.shape[1], q.shape[2], k.shape[1]
    impl = backend_cls.impl_cls(num_heads, head_size, case.scale, num_kv_heads)
    metadata = backend_cls.build_metadata(case.common)
    out = impl.forward(q, k, v, cache, metadata)
    return out, cache


# (cached, new) per request, decodes first.
SCENARIOS = {
    "prefill": [(0, 5), (0, 17), (0, 130)],
    "decode": [(4, 1), (127, 1), (128, 1), (300, 1)],
    "chunked_prefix": [(128, 40), (5, 9), (256, 3)],
    "mixed": [(9, 1), (200, 1), (0, 33), (0, 2)],
    "mixed_cached": [(9, 1), (0, 33), (130, 20), (0, 2)],
}
