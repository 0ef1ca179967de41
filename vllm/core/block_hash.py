"""The prefix cache's block hash: each full block of `block_size` tokens is keyed by
`hash((parent_hash, tuple(block_tokens)))`, the first block's parent being ROOT_HASH.

Python's hash of a tuple of ints is not salted per process (only str and bytes hashes
are), so with the fixed integer root below a prompt's hashes are the same in every
process of every instance on 64-bit CPython >= 3.8: a router can recompute them from
token ids with `chained_block_hashes` and compare them with an instance's KV events.
"""
import hashlib
from typing import Sequence


def _stable_int(name: bytes) -> int:
    return int.from_bytes(hashlib.sha256(name).digest()[:8], "big", signed=True)


ROOT_HASH = _stable_int(b"vllm-prefix-root")


def hash_block(parent_hash: int, token_ids: tuple[int, ...]) -> int:
    return hash((parent_hash, token_ids))


def extend_block_hashes(hashes: list[int], token_ids: Sequence[int], block_size: int,
                        num_blocks: int) -> None:
    """Append to `hashes` (those of token_ids' first blocks) until it has num_blocks."""
    while len(hashes) < num_blocks:
        index = len(hashes)
        parent = hashes[-1] if hashes else ROOT_HASH
        block = tuple(token_ids[index * block_size:(index + 1) * block_size])
        hashes.append(hash_block(parent, block))


def chained_block_hashes(token_ids: Sequence[int], block_size: int) -> list[int]:
    """The hashes of every full block of token_ids, in order."""
    hashes: list[int] = []
    extend_block_hashes(hashes, token_ids, block_size, len(token_ids) // block_size)
    return hashes
