"""Decode attention over the paged KV cache, and writing new tokens into it.

Cache layout (docs/contracts-draft.md): per layer one tensor
``kv_cache`` of shape (2, num_blocks, block_size, num_kv_heads, head_size);
``key_cache = kv_cache[0]``, ``value_cache = kv_cache[1]``; the token at
position ``pos`` of a sequence lives in block ``block_table[seq, pos // block_size]``
at offset ``pos % block_size``.

``paged_attention_decode`` and ``reshape_and_cache`` run the C++ kernels of the CPU's
build (``torch.ops._C_<isa>.*``, vllm/platforms/cpu_isa.py) when one is installed and
the tensors are float32 or bfloat16, else the plain PyTorch references below
(``*_reference``). The kernels compute in float32 whatever the dtype: bfloat16 rows
are widened in registers, a bfloat16 output is rounded once at the end.
"""

import torch

from vllm.platforms.cpu_isa import kernel_ops

_OPS = kernel_ops()
HAS_CPU_KERNEL = _OPS is not None
# What the kernels read and write; other dtypes (float16, float64) take the references.
KERNEL_DTYPES = (torch.float32, torch.bfloat16)


def _kernel_takes(*tensors: torch.Tensor) -> bool:
    return HAS_CPU_KERNEL and all(t.dtype in KERNEL_DTYPES for t in tensors)


def paged_attention_decode(
    out: torch.Tensor,  # (B, num_heads, head_size), written in place
    query: torch.Tensor,  # (B, num_heads, head_size)
    key_cache: torch.Tensor,  # (num_blocks, block_size, num_kv_heads, head_size)
    value_cache: torch.Tensor,  # (num_blocks, block_size, num_kv_heads, head_size)
    block_table: torch.Tensor,  # (B, max_blocks_per_seq) int32
    seq_lens: torch.Tensor,  # (B,) int32, cached tokens incl. the one just written
    scale: float,
) -> torch.Tensor:
    """Attention of one query token per sequence over its cached tokens.

    Query head h uses kv head h // (num_heads // num_kv_heads). A sequence
    with seq_len 0 gets zeros. ``out`` may be ``query`` itself. Returns ``out``.
    ``out`` and ``query`` share a dtype, the two caches another (float32 or
    bfloat16 each for the kernel).
    """
    if _kernel_takes(out, query, key_cache, value_cache):
        _OPS.paged_attention_decode(
            out, query, key_cache, value_cache, block_table, seq_lens, float(scale)
        )
    else:
        out.copy_(
            paged_attention_decode_reference(
                query, key_cache, value_cache, block_table, seq_lens, scale
            )
        )
    return out


def paged_attention_decode_reference(
    query: torch.Tensor,  # (B, num_heads, head_size)
    key_cache: torch.Tensor,  # (num_blocks, block_size, num_kv_heads, head_size)
    value_cache: torch.Tensor,
    block_table: torch.Tensor,  # (B, max_blocks_per_seq) int32
    seq_lens: torch.Tensor,  # (B,) int32
    scale: float,
) -> torch.Tensor:
    """Plain PyTorch version: gathers each sequence's K/V into padded tensors.

    Correct but copies the whole context; returns a new (B, num_heads, head_size) of
    the query's dtype, computed in float32 (float64 for a float64 query).
    """
    num_seqs, num_heads, head_size = query.shape
    _, block_size, num_kv_heads, _ = key_cache.shape
    group_size = num_heads // num_kv_heads
    max_len = int(seq_lens.max()) if num_seqs > 0 else 0
    if max_len == 0:
        return torch.zeros_like(query)
    compute = torch.float64 if query.dtype == torch.float64 else torch.float32

    positions = torch.arange(max_len)  # (L,)
    block_ids = block_table.long()[:, positions // block_size]  # (B, L)
    slots = block_ids * block_size + positions % block_size  # (B, L)
    flat_keys = key_cache.reshape(-1, num_kv_heads, head_size)
    flat_values = value_cache.reshape(-1, num_kv_heads, head_size)
    keys = flat_keys[slots].permute(0, 2, 3, 1).to(compute)  # (B, kvh, D, L)
    values = flat_values[slots].transpose(1, 2).to(compute)  # (B, kvh, L, D)

    grouped_query = query.to(compute).reshape(num_seqs, num_kv_heads, group_size, head_size)
    scores = torch.matmul(grouped_query, keys) * scale  # (B, kvh, G, L)
    valid = positions[None, :] < seq_lens.long()[:, None]  # (B, L)
    scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1)  # (B, kvh, G, L)
    probs = torch.nan_to_num(probs, nan=0.0)  # rows with seq_len 0 -> zeros
    out = torch.matmul(probs, values)  # (B, kvh, G, D)
    return out.reshape(num_seqs, num_heads, head_size).to(query.dtype)


def reshape_and_cache(
    key: torch.Tensor,  # (T, num_kv_heads, head_size), last dim contiguous
    value: torch.Tensor,  # (T, num_kv_heads, head_size)
    key_cache: torch.Tensor,  # (num_blocks, block_size, num_kv_heads, head_size), contiguous
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,  # (T,) int64, slot = block_id * block_size + offset
) -> None:
    """Writes each new token's key and value into its cache slot.

    Tokens whose slot is negative (padding) are skipped. The kernel copies rows of the
    cache's dtype (float32 or bfloat16); other rows are converted by the reference.
    """
    if _kernel_takes(key_cache) and key.dtype == value.dtype == key_cache.dtype:
        _OPS.reshape_and_cache(key, value, key_cache, value_cache, slot_mapping)
    else:
        reshape_and_cache_reference(key, value, key_cache, value_cache, slot_mapping)


def reshape_and_cache_reference(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Plain PyTorch version of reshape_and_cache (rows cast to the cache's dtype)."""
    num_kv_heads, head_size = key_cache.shape[2], key_cache.shape[3]
    key, value = key.to(key_cache.dtype), value.to(value_cache.dtype)
    is_stored = slot_mapping >= 0  # (T,)
    if not bool(is_stored.all()):
        key, value, slot_mapping = key[is_stored], value[is_stored], slot_mapping[is_stored]
    key_cache.view(-1, num_kv_heads, head_size).index_copy_(0, slot_mapping, key)
    value_cache.view(-1, num_kv_heads, head_size).index_copy_(0, slot_mapping, value)
