"""The backend's gather_kv / scatter_kv (GQA), gather_latent / scatter_latent (MLA), the
connector's CacheIO over both and push/worker.token_slots against plain loops."""
import pytest
import torch

from vllm.attention.backend import AttentionBackend
from vllm.distributed.kv_transfer.cache_io import CacheIO
from vllm.distributed.kv_transfer.push.worker import token_slots
from vllm.kv_shape import LATENT as LATENT_KIND
from vllm.kv_shape import PER_HEAD, CacheUnits
from vllm.platforms import current_platform

NUM_BLOCKS, BLOCK_SIZE, KV_HEADS, HEAD_SIZE = 7, 4, 3, 5


def backends():
    platform = current_platform.get_attn_backend_cls()
    return [AttentionBackend, platform] if platform is not AttentionBackend \
        else [AttentionBackend]


def random_cache(dtype=torch.float32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(2, NUM_BLOCKS, BLOCK_SIZE, KV_HEADS, HEAD_SIZE, generator=generator
                       ).to(dtype)


def loop_gather(cache: torch.Tensor, slots: list[int]) -> torch.Tensor:
    out = torch.empty(2, len(slots), KV_HEADS, HEAD_SIZE, dtype=cache.dtype)
    for i, slot in enumerate(slots):
        for kv in range(2):
            out[kv, i] = cache[kv, slot // BLOCK_SIZE, slot % BLOCK_SIZE]
    return out


SLOT_CASES = [[0], [27], [5, 6, 7, 8, 9], [27, 3, 14, 0, 21], list(range(NUM_BLOCKS * BLOCK_SIZE))]


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("slots", SLOT_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gather_kv(backend, slots, dtype):
    cache = random_cache(dtype)
    before = cache.clone()
    got = backend.gather_kv(cache, torch.tensor(slots, dtype=torch.int64))
    assert got.shape == (2, len(slots), KV_HEADS, HEAD_SIZE)
    assert got.dtype == dtype
    assert torch.equal(got, loop_gather(cache, slots))
    got.fill_(7)  # a copy: the cache must not change
    assert torch.equal(cache, before)


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("slots", SLOT_CASES[:4])
@pytest.mark.parametrize("head_start,count", [(0, 3), (0, 1), (1, 1), (2, 1), (1, 2)])
def test_scatter_kv(backend, slots, head_start, count):
    cache = random_cache()
    expected = cache.clone()
    kv = torch.randn(2, len(slots), count, HEAD_SIZE)
    for i, slot in enumerate(slots):
        for which in range(2):
            for h in range(count):
                expected[which, slot // BLOCK_SIZE, slot % BLOCK_SIZE, head_start + h] = \
                    kv[which, i, h]
    backend.scatter_kv(cache, torch.tensor(slots, dtype=torch.int64), head_start, kv)
    assert torch.equal(cache, expected)  # the named heads of the named slots, nothing else


@pytest.mark.parametrize("backend", backends())
def test_scatter_then_gather_round_trip_between_caches(backend):
    """What one rank gathers and another scatters lands in the other's slots."""
    source = random_cache()
    target = torch.zeros_like(source)
    src_slots = torch.tensor([9, 10, 11, 12, 0])
    dst_slots = torch.tensor([1, 2, 3, 20, 27])
    backend.scatter_kv(target, dst_slots, 0, backend.gather_kv(source, src_slots))
    assert torch.equal(backend.gather_kv(target, dst_slots),
                       backend.gather_kv(source, src_slots))
    untouched = torch.ones(NUM_BLOCKS * BLOCK_SIZE, dtype=torch.bool)
    untouched[dst_slots] = False
    assert not target.flatten(1, 2)[:, untouched].any()


def loop_slots(block_ids, start, end, block_size):
    return [block_ids[pos // block_size] * block_size + pos % block_size
            for pos in range(start, end)]


@pytest.mark.parametrize("block_ids,start,end,block_size", [
    ([3], 0, 1, 16),
    ([3], 0, 16, 16),
    ([5, 2, 9], 0, 48, 16),
    ([5, 2, 9], 15, 17, 16),
    ([5, 2, 9], 17, 40, 16),
    ([8, 0, 7, 1], 3, 13, 4),
    ([4, 4], 0, 8, 4),
    ([11, 6], 5, 5, 4),
    (list(range(40, 0, -1)), 33, 130, 4),
])
def test_token_slots(block_ids, start, end, block_size):
    got = token_slots(block_ids, start, end, block_size)
    assert got.dtype == torch.int64
    assert got.tolist() == loop_slots(block_ids, start, end, block_size)


# ---- the MLA latent cache: (num_blocks, block_size, latent) -------------------------------------
LATENT = 12


def random_latents() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(NUM_BLOCKS, BLOCK_SIZE, LATENT, generator=generator)


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("slots", SLOT_CASES)
def test_gather_latent(backend, slots):
    cache = random_latents()
    got = backend.gather_latent(cache, torch.tensor(slots, dtype=torch.int64))
    want = torch.stack([cache[slot // BLOCK_SIZE, slot % BLOCK_SIZE] for slot in slots])
    assert torch.equal(got, want)
    got.fill_(7)  # a copy
    assert not (cache == 7).any()


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("slots", SLOT_CASES[:4])
def test_scatter_latent(backend, slots):
    cache = random_latents()
    expected = cache.clone()
    latents = torch.randn(len(slots), LATENT)
    for i, slot in enumerate(slots):
        expected[slot // BLOCK_SIZE, slot % BLOCK_SIZE] = latents[i]
    backend.scatter_latent(cache, torch.tensor(slots, dtype=torch.int64), latents)
    assert torch.equal(cache, expected)


@pytest.mark.parametrize("units", [CacheUnits(PER_HEAD, KV_HEADS, HEAD_SIZE),
                                   CacheUnits(LATENT_KIND, 1, LATENT)])
def test_cache_io_round_trip_in_wire_shape(units):
    """Both kinds travel as (planes, n, units, size) and land in the other cache's slots."""
    io = CacheIO(current_platform.get_attn_backend_cls(), units)
    source = random_cache() if units.kind == PER_HEAD else random_latents()
    target = torch.zeros_like(source)
    src_slots, dst_slots = torch.tensor([9, 10, 0]), torch.tensor([1, 27, 3])
    payload = io.gather(source, src_slots)
    assert payload.shape == (units.planes, 3, units.count, units.size)
    received = io.empty_payload(3, units.count, target)
    received.copy_(payload)
    io.scatter(target, dst_slots, 0, received)
    assert torch.equal(io.gather(target, dst_slots), payload)
    assert int((target != 0).sum()) == 3 * units.elements_per_token
