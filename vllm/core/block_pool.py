"""Fixed-size KV blocks with reference counts, an LRU free queue and a prefix-hash index."""
from collections import OrderedDict
from typing import Iterable, Optional

from vllm.core.kv_events import KVEventRecorder


class KVCacheBlock:
    __slots__ = ("block_id", "ref_cnt", "block_hash")

    def __init__(self, block_id: int):
        self.block_id = block_id
        self.ref_cnt = 0
        self.block_hash: Optional[int] = None

    def __repr__(self) -> str:
        return f"KVCacheBlock(id={self.block_id}, ref={self.ref_cnt}, hash={self.block_hash})"


class BlockPool:
    """Free blocks are kept in eviction order; a free block may still hold cached KV.
    With an `events` recorder, every hash entering or leaving the index is recorded."""

    def __init__(self, num_blocks: int, enable_caching: bool,
                 events: Optional[KVEventRecorder] = None):
        if num_blocks < 1:
            raise ValueError(f"the KV cache needs at least one block, got {num_blocks}")
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self.blocks = [KVCacheBlock(i) for i in range(num_blocks)]
        self._free: OrderedDict[int, KVCacheBlock] = OrderedDict(
            (block.block_id, block) for block in self.blocks)
        self._cached: dict[int, KVCacheBlock] = {}
        self.events = events

    def get_num_free_blocks(self) -> int:
        return len(self._free)

    def usage(self) -> float:
        return 1.0 - len(self._free) / self.num_blocks

    def get_cached_block(self, block_hash: int) -> Optional[KVCacheBlock]:
        return self._cached.get(block_hash)

    def touch(self, blocks: Iterable[KVCacheBlock]) -> None:
        for block in blocks:
            if block.ref_cnt == 0:
                del self._free[block.block_id]
            block.ref_cnt += 1

    def get_new_blocks(self, count: int) -> list[KVCacheBlock]:
        if count > len(self._free):
            raise ValueError(f"cannot allocate {count} blocks, only {len(self._free)} free")
        blocks = []
        for _ in range(count):
            _, block = self._free.popitem(last=False)
            self._evict(block)
            block.ref_cnt = 1
            blocks.append(block)
        return blocks

    def cached_hashes(self) -> set[int]:
        return set(self._cached)

    def cache_block(self, block: KVCacheBlock, block_hash: int) -> bool:
        """True if block_hash entered the index (not when another block holds it)."""
        if not self.enable_caching or block.block_hash is not None:
            return False
        block.block_hash = block_hash
        return self._cached.setdefault(block_hash, block) is block

    def free_blocks(self, blocks: Iterable[KVCacheBlock]) -> None:
        """Blocks given in eviction order: earlier ones are reused first."""
        for block in blocks:
            block.ref_cnt -= 1
            if block.ref_cnt < 0:
                raise RuntimeError(f"block {block.block_id} freed more often than taken")
            if block.ref_cnt == 0:
                if block.block_hash is None:
                    self._free[block.block_id] = block
                    self._free.move_to_end(block.block_id, last=False)
                else:
                    self._free[block.block_id] = block

    def reset_prefix_cache(self) -> bool:
        if len(self._free) != self.num_blocks:
            return False
        for block in self.blocks:
            block.block_hash = None
        self._cached.clear()
        if self.events is not None:
            self.events.cleared()
        return True

    def uncache(self, block: KVCacheBlock) -> None:
        self._evict(block)

    def _evict(self, block: KVCacheBlock) -> None:
        if block.block_hash is None:
            return
        if self._cached.get(block.block_hash) is block:
            del self._cached[block.block_hash]
            if self.events is not None:
                self.events.removed(block.block_hash)
        block.block_hash = None
