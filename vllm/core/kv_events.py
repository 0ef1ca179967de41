"""KV cache events as vLLM publishes them (vllm/distributed/kv_events.py there): msgspec
structs encoded as msgpack maps, each event tagged by its class name under "type".

Fields without a default are always sent, so a vLLM subscriber's decoder finds every
field it requires; a block's parent hash is None for the first block of a prompt (its
real parent is vllm.core.block_hash.ROOT_HASH)."""
from typing import Any, Optional, Sequence, Union

import msgspec

MEDIUM = "GPU"  # vLLM's name for the engine's own KV cache tier, whatever the device


class EventBatch(msgspec.Struct, omit_defaults=True, gc=False):
    ts: float
    events: list[Any]
    data_parallel_rank: Optional[int] = None


class KVCacheEvent(msgspec.Struct, omit_defaults=True, gc=False, tag=True):
    pass


class BlockStored(KVCacheEvent):
    block_hashes: list[int]
    parent_block_hash: Optional[int]
    token_ids: list[int]
    block_size: int
    lora_id: Optional[int]
    medium: Optional[str]
    lora_name: Optional[str]


class BlockRemoved(KVCacheEvent):
    block_hashes: list[int]
    medium: Optional[str]


class AllBlocksCleared(KVCacheEvent):
    pass


KVEvent = Union[BlockStored, BlockRemoved, AllBlocksCleared]


class KVEventBatch(EventBatch):
    events: list[KVEvent]


class KVEventRecorder:
    """What the block pool's prefix index gained and lost since the last take()."""

    def __init__(self, block_size: int):
        self.block_size = block_size
        self._events: list[KVEvent] = []

    def stored(self, block_hashes: Sequence[int], token_ids: Sequence[int],
               indices: Sequence[int]) -> None:
        """Blocks `indices` (ascending) of a request entered the index; one event per run
        of consecutive blocks, so each event's hashes form one chain."""
        run: list[int] = []
        for index in indices:
            if run and index != run[-1] + 1:
                self._stored_run(block_hashes, token_ids, run)
                run = []
            run.append(index)
        if run:
            self._stored_run(block_hashes, token_ids, run)

    def _stored_run(self, block_hashes: Sequence[int], token_ids: Sequence[int],
                    run: list[int]) -> None:
        first, end = run[0], run[-1] + 1
        size = self.block_size
        self._events.append(BlockStored(
            block_hashes=list(block_hashes[first:end]),
            parent_block_hash=block_hashes[first - 1] if first > 0 else None,
            token_ids=[int(t) for t in token_ids[first * size:end * size]],
            block_size=size, lora_id=None, medium=MEDIUM, lora_name=None))

    def removed(self, block_hash: int) -> None:
        last = self._events[-1] if self._events else None
        if isinstance(last, BlockRemoved):
            last.block_hashes.append(block_hash)
        else:
            self._events.append(BlockRemoved(block_hashes=[block_hash], medium=MEDIUM))

    def cleared(self) -> None:
        self._events.append(AllBlocksCleared())

    def take(self) -> list[KVEvent]:
        events, self._events = self._events, []
        return events
