"""Maps requests to KV blocks: prefix-cache lookup, slot allocation, freeing."""
from typing import Optional

from vllm.core.block_hash import extend_block_hashes
from vllm.core.block_pool import BlockPool, KVCacheBlock
from vllm.core.kv_events import KVEvent, KVEventRecorder
from vllm.core.request import Request


class KVCacheManager:

    def __init__(self, num_blocks: int, block_size: int, enable_caching: bool = True,
                 record_events: bool = False):
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.events = KVEventRecorder(block_size) if record_events else None
        self.block_pool = BlockPool(num_blocks, enable_caching, self.events)
        self.req_to_blocks: dict[str, list[KVCacheBlock]] = {}
        self.num_cached_blocks: dict[str, int] = {}

    @property
    def num_blocks(self) -> int:
        return self.block_pool.num_blocks

    def usage(self) -> float:
        return self.block_pool.usage()

    def get_num_free_blocks(self) -> int:
        return self.block_pool.get_num_free_blocks()

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def get_computed_blocks(self, request: Request) -> tuple[list[KVCacheBlock], int]:
        """Longest cached prefix of full blocks; at least one token is always left to compute."""
        if not self.enable_caching:
            return [], 0
        max_blocks = (request.num_tokens - 1) // self.block_size
        self._update_block_hashes(request, max_blocks)
        hits = []
        for block_hash in request.block_hashes[:max_blocks]:
            block = self.block_pool.get_cached_block(block_hash)
            if block is None:
                break
            hits.append(block)
        return hits, len(hits) * self.block_size

    def allocate_slots(self, request: Request, num_new_tokens: int,
                       computed_blocks: Optional[list[KVCacheBlock]] = None,
                       cache: bool = True) -> Optional[list[KVCacheBlock]]:
        """Reserve blocks for num_new_tokens more tokens; None if they do not fit.
        cache=False keeps the new blocks out of the prefix cache until
        cache_computed_blocks (their KV is still on its way from another instance)."""
        computed_blocks = computed_blocks or []
        owned = self.req_to_blocks.setdefault(request.request_id, [])
        num_computed = request.num_computed_tokens + len(computed_blocks) * self.block_size
        total_tokens = num_computed + num_new_tokens
        num_new_blocks = self.blocks_needed(total_tokens) - len(owned) - len(computed_blocks)
        evictable_hits = sum(1 for block in computed_blocks if block.ref_cnt == 0)
        if num_new_blocks > self.block_pool.get_num_free_blocks() - evictable_hits:
            if not owned:
                del self.req_to_blocks[request.request_id]
            return None
        self.block_pool.touch(computed_blocks)
        owned.extend(computed_blocks)
        new_blocks = self.block_pool.get_new_blocks(max(num_new_blocks, 0))
        owned.extend(new_blocks)
        if cache:
            self._cache_full_blocks(request, total_tokens)
        return new_blocks

    def cache_computed_blocks(self, request: Request, num_tokens: int) -> None:
        self._cache_full_blocks(request, num_tokens)

    def free(self, request: Request) -> None:
        blocks = self.req_to_blocks.pop(request.request_id, [])
        self.num_cached_blocks.pop(request.request_id, None)
        self.block_pool.free_blocks(reversed(blocks))

    def uncache_blocks(self, request_id: str) -> None:
        """Drop this request's blocks from the prefix cache (their KV may be incomplete);
        a request sharing one keeps using it, only later prefix hits on it are lost."""
        for block in self.req_to_blocks.get(request_id, []):
            self.block_pool.uncache(block)
        self.num_cached_blocks.pop(request_id, None)

    def take_events(self) -> list[KVEvent]:
        """The prefix index's changes since the last call (none unless recording)."""
        return self.events.take() if self.events is not None else []

    def get_block_ids(self, request_id: str) -> list[int]:
        return [block.block_id for block in self.req_to_blocks.get(request_id, [])]

    def _cache_full_blocks(self, request: Request, num_tokens: int) -> None:
        if not self.enable_caching:
            return
        num_full = min(num_tokens, request.num_tokens) // self.block_size
        start = self.num_cached_blocks.get(request.request_id, 0)
        if num_full <= start:
            return
        self._update_block_hashes(request, num_full)
        blocks = self.req_to_blocks[request.request_id]
        entered = [index for index in range(start, num_full)
                   if self.block_pool.cache_block(blocks[index], request.block_hashes[index])]
        if self.events is not None and entered:
            self.events.stored(request.block_hashes, request.all_token_ids, entered)
        self.num_cached_blocks[request.request_id] = num_full

    def _update_block_hashes(self, request: Request, num_blocks: int) -> None:
        extend_block_hashes(request.block_hashes, request.all_token_ids, self.block_size,
                            num_blocks)
