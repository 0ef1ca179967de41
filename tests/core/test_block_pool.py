import pytest

from vllm.core.block_pool import BlockPool
from vllm.core.kv_cache_manager import KVCacheManager
from vllm.core.request import Request
from vllm.sampling_params import SamplingParams


def make_request(request_id, token_ids, max_tokens=4):
    return Request(request_id, list(token_ids), SamplingParams(max_tokens=max_tokens), None)


def test_new_blocks_are_taken_and_returned():
    pool = BlockPool(4, enable_caching=True)
    blocks = pool.get_new_blocks(3)
    assert [b.ref_cnt for b in blocks] == [1, 1, 1]
    assert pool.get_num_free_blocks() == 1
    pool.free_blocks(blocks)
    assert pool.get_num_free_blocks() == 4
    with pytest.raises(ValueError, match="cannot allocate 5 blocks"):
        pool.get_new_blocks(5)


def test_double_free_is_detected():
    pool = BlockPool(2, enable_caching=False)
    block = pool.get_new_blocks(1)[0]
    pool.free_blocks([block])
    with pytest.raises(RuntimeError, match="freed more often"):
        pool.free_blocks([block])


def test_prefix_hit_shares_blocks_and_refcounts():
    manager = KVCacheManager(num_blocks=10, block_size=4)
    first = make_request("a", range(10))
    assert manager.get_computed_blocks(first) == ([], 0)
    manager.allocate_slots(first, 10)
    second = make_request("b", list(range(8)) + [99, 98, 97])
    hits, num_hit = manager.get_computed_blocks(second)
    assert num_hit == 8
    assert [b.block_id for b in hits] == manager.get_block_ids("a")[:2]
    manager.allocate_slots(second, 3, hits)
    assert [b.ref_cnt for b in hits] == [2, 2]
    manager.free(first)
    manager.free(second)
    assert manager.get_num_free_blocks() == 10
    assert all(block.ref_cnt == 0 for block in manager.block_pool.blocks)


def test_hit_never_covers_the_whole_prompt():
    manager = KVCacheManager(num_blocks=10, block_size=4)
    first = make_request("a", range(8))
    manager.allocate_slots(first, 8)
    manager.free(first)
    again = make_request("b", range(8))
    _, num_hit = manager.get_computed_blocks(again)
    assert num_hit == 4  # the last token must be computed to sample


def test_freed_cached_blocks_are_reused_after_eviction():
    manager = KVCacheManager(num_blocks=4, block_size=4)
    first = make_request("a", range(8))
    manager.allocate_slots(first, 8)
    manager.free(first)
    other = make_request("b", range(100, 116))
    assert manager.allocate_slots(other, 16) is not None
    manager.free(other)
    again = make_request("c", list(range(8)) + [1])
    assert manager.get_computed_blocks(again)[1] == 0


def test_allocation_fails_cleanly_when_full():
    manager = KVCacheManager(num_blocks=2, block_size=4)
    request = make_request("a", range(12))
    assert manager.allocate_slots(request, 12) is None
    assert manager.get_num_free_blocks() == 2
    assert "a" not in manager.req_to_blocks


def test_evictable_hits_count_against_free_blocks():
    manager = KVCacheManager(num_blocks=3, block_size=4)
    first = make_request("a", range(8))
    manager.allocate_slots(first, 8)
    manager.free(first)  # 2 cached free blocks + 1 empty
    second = make_request("b", list(range(8)) + list(range(50, 58)))
    hits, _ = manager.get_computed_blocks(second)
    assert len(hits) == 2
    # needs 2 more blocks beyond the hits, only 1 is truly free
    assert manager.allocate_slots(second, 8, hits) is None
    assert all(block.ref_cnt == 0 for block in manager.block_pool.blocks)
