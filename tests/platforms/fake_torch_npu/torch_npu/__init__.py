"""A fake `torch_npu` for tests: the ops the NPU backend calls, in plain PyTorch on CPU
tensors, checking every argument's name, dtype, shape and layout against the torch_npu 2.5.1
documentation (see vllm/attention/backends/npu_ops.py for the sources). Any deviation
raises FakeNpuContractError. Put on sys.path only by tests/platforms.
"""
import types
from collections import Counter

import torch

import fake_device  # noqa: F401  (registers torch.ops.fake_npu.*)
from torch_npu import _checks as C
from torch_npu._checks import FakeNpuContractError  # noqa: F401
from torch_npu._math import attend, causal, paged_tokens

__version__ = "2.5.1+fake"

# What importing torch_npu adds to torch that the platform reads (torch.npu.*); the test
# platform answers the rest. tests/platforms/fake_npu_platform.py removes it again.
torch.npu = types.SimpleNamespace(is_available=lambda: False, is_bf16_supported=lambda: True,
                                  _fake=True)
CALLS: Counter = Counter()  # op name -> times called, for tests to see which path ran

_CACHE_TYPES = (torch.float16, torch.bfloat16, torch.int8)
_INT32 = (torch.int32,)


def _npu_reshape_and_cache(*, key, value, key_cache, value_cache, slot_indices):
    op = "_npu_reshape_and_cache"
    CALLS[op] += 1
    C.tensor(op, "key", key, 3, _CACHE_TYPES)
    C.tensor(op, "value", value, 3, _CACHE_TYPES)
    C.tensor(op, "key_cache", key_cache, 4, _CACHE_TYPES)
    C.tensor(op, "value_cache", value_cache, 4, _CACHE_TYPES)
    C.tensor(op, "slot_indices", slot_indices, 1, _INT32, device=True)
    for name, t in (("value", value), ("key_cache", key_cache), ("value_cache", value_cache)):
        C.same(op, f"{name} dtype vs key dtype", t.dtype, key.dtype)
    C.same(op, "key vs value shape", tuple(key.shape), tuple(value.shape))
    C.same(op, "key_cache vs value_cache shape", tuple(key_cache.shape),
           tuple(value_cache.shape))
    C.same(op, "key (KVH, D) vs cache (KVH, D)", tuple(key.shape[1:]),
           tuple(key_cache.shape[2:]))
    C.same(op, "slot_indices length vs tokens", slot_indices.shape[0], key.shape[0])
    num_slots = key_cache.shape[0] * key_cache.shape[1]
    if bool(((slot_indices < 0) | (slot_indices >= num_slots)).any()):
        C.fail(op, f"slot_indices outside [0, {num_slots})")
    slots = slot_indices.long()
    key_cache.view(num_slots, *key_cache.shape[2:])[slots] = key
    value_cache.view(num_slots, *value_cache.shape[2:])[slots] = value


def _npu_flash_attention(*, query, key, value, mask, seq_len, scale_value, num_heads,
                         num_kv_heads, out):
    op = "_npu_flash_attention"
    CALLS[op] += 1
    C.tensor(op, "query", query, 3, C.HALF_TYPES)
    C.tensor(op, "key", key, 3, (query.dtype,))
    C.tensor(op, "value", value, 3, (query.dtype,))
    C.tensor(op, "out", out, 3, (query.dtype,))
    C.tensor(op, "seq_len", seq_len, 1, _INT32, host=True)
    C.real(op, "scale_value", scale_value)
    C.integer(op, "num_heads", num_heads)
    C.integer(op, "num_kv_heads", num_kv_heads)
    C.heads(op, num_heads, num_kv_heads)
    total = query.shape[0]
    C.same(op, "query shape", tuple(query.shape[1:]), (num_heads, query.shape[2]))
    C.same(op, "key shape", tuple(key.shape), (total, num_kv_heads, query.shape[2]))
    C.same(op, "value shape", tuple(value.shape), tuple(key.shape))
    C.same(op, "out shape", tuple(out.shape), tuple(query.shape))
    lens = seq_len.tolist()
    C.same(op, "sum(seq_len) vs tokens", sum(lens), total)
    _check_prompt_mask(op, mask, max(lens), query.dtype)
    start = 0
    for length in lens:
        rows = slice(start, start + length)
        allowed = mask[:length, :length] == 0  # (L, L)
        out[rows] = attend(query[rows], key[rows], value[rows], allowed, scale_value
                           ).to(out.dtype)
        start += length


def _check_prompt_mask(op, mask, longest, dtype):
    C.tensor(op, "mask", mask, 2, (dtype,))
    if mask.shape[0] != mask.shape[1] or mask.shape[0] < longest:
        C.fail(op, f"mask must be (S, S) with S >= {longest}, got {tuple(mask.shape)}")
    above = torch.ones(mask.shape, dtype=torch.bool, device=mask.device).triu(1)
    masked_value = float("-inf") if dtype == torch.float16 else 1.0
    if bool((mask[~above] != 0).any()) or bool((mask[above].float() != masked_value).any()):
        C.fail(op, f"mask must be 0 on and below the diagonal and {masked_value} above")


def _npu_paged_attention(*, query, key_cache, value_cache, num_kv_heads, num_heads,
                         scale_value, block_table, context_lens, out):
    op = "_npu_paged_attention"
    CALLS[op] += 1
    C.tensor(op, "query", query, 3, C.HALF_TYPES)
    C.tensor(op, "key_cache", key_cache, 4, (query.dtype,))
    C.tensor(op, "value_cache", value_cache, 4, (query.dtype,))
    C.tensor(op, "block_table", block_table, 2, _INT32, device=True)
    C.tensor(op, "context_lens", context_lens, 1, _INT32, host=True)
    C.tensor(op, "out", out, 3, (query.dtype,))
    C.integer(op, "num_heads", num_heads)
    C.integer(op, "num_kv_heads", num_kv_heads)
    C.real(op, "scale_value", scale_value)
    C.heads(op, num_heads, num_kv_heads)
    batch = query.shape[0]
    C.same(op, "query heads", query.shape[1], num_heads)
    C.same(op, "key_cache (KVH, D)", tuple(key_cache.shape[2:]), (num_kv_heads, query.shape[2]))
    C.same(op, "value_cache shape", tuple(value_cache.shape), tuple(key_cache.shape))
    C.same(op, "block_table rows", block_table.shape[0], batch)
    C.same(op, "context_lens length", context_lens.shape[0], batch)
    C.same(op, "out shape", tuple(out.shape), tuple(query.shape))
    num_blocks, block_size = key_cache.shape[:2]
    for b, seq_len in enumerate(context_lens.tolist()):
        if seq_len < 1:
            C.fail(op, f"context_lens[{b}] = {seq_len}")
        ids = C.block_ids(op, block_table, b, seq_len, block_size, num_blocks)
        keys = paged_tokens(key_cache, ids, seq_len)  # (L, KVH, D)
        values = paged_tokens(value_cache, ids, seq_len)
        allowed = torch.ones(1, seq_len, dtype=torch.bool)
        out[b] = attend(query[b:b + 1], keys, values, allowed, scale_value)[0].to(out.dtype)


_FIA_UNSUPPORTED = ("pse_shift", "dequant_scale1", "quant_scale1", "dequant_scale2",
                    "quant_scale2", "quant_offset2", "antiquant_scale", "antiquant_offset",
                    "query_padding_size", "kv_padding_size", "key_antiquant_scale",
                    "key_antiquant_offset", "value_antiquant_scale", "value_antiquant_offset",
                    "key_shared_prefix", "value_shared_prefix", "actual_shared_prefix_len",
                    "query_rope", "key_rope", "key_rope_antiquant_scale")


def npu_fused_infer_attention_score(query, key, value, *, pse_shift=None, atten_mask=None,
                                    actual_seq_lengths=None, actual_seq_lengths_kv=None,
                                    dequant_scale1=None, quant_scale1=None,
                                    dequant_scale2=None, quant_scale2=None,
                                    quant_offset2=None, antiquant_scale=None,
                                    antiquant_offset=None, block_table=None,
                                    query_padding_size=None, kv_padding_size=None,
                                    key_antiquant_scale=None, key_antiquant_offset=None,
                                    value_antiquant_scale=None, value_antiquant_offset=None,
                                    key_shared_prefix=None, value_shared_prefix=None,
                                    actual_shared_prefix_len=None, query_rope=None,
                                    key_rope=None, key_rope_antiquant_scale=None,
                                    num_heads=1, scale=1.0, pre_tokens=2147483647,
                                    next_tokens=2147483647, input_layout="BSH",
                                    num_key_value_heads=0, sparse_mode=0, inner_precise=0,
                                    block_size=0, antiquant_mode=0, softmax_lse_flag=False,
                                    key_antiquant_mode=0, value_antiquant_mode=0):
    op = "npu_fused_infer_attention_score"
    CALLS[op] += 1
    given = locals()
    for name in _FIA_UNSUPPORTED:
        if given[name] is not None:
            C.fail(op, f"the fake implements no {name}")
    batch = query.shape[0] if isinstance(query, torch.Tensor) else 0
    q_lens = C.int_list(op, "actual_seq_lengths", actual_seq_lengths, batch)
    kv_lens = C.int_list(op, "actual_seq_lengths_kv", actual_seq_lengths_kv, batch)
    return fused_infer_attention(op, query, key, value, atten_mask, block_table, q_lens,
                                 kv_lens, num_heads, num_key_value_heads, scale,
                                 input_layout, sparse_mode, block_size)


def fused_infer_attention(op, query, key, value, atten_mask, block_table, q_lens, kv_lens,
                          num_heads, num_key_value_heads, scale, input_layout, sparse_mode,
                          block_size):
    """The page-attention form, BSND; shared with the fake torchair's graph-only op."""
    if input_layout != "BSND":
        C.fail(op, f"the fake implements input_layout BSND only, got {input_layout!r}")
    if block_table is None:
        C.fail(op, "the fake implements the page-attention form only (block_table given)")
    C.tensor(op, "query", query, 4, C.HALF_TYPES)
    batch, q_s, n, d = query.shape
    C.same(op, "num_heads vs query N", num_heads, n)
    kv_heads = num_key_value_heads or num_heads
    C.heads(op, num_heads, kv_heads)
    if num_heads // kv_heads > 64:
        C.fail(op, "num_heads / num_key_value_heads must not exceed 64")
    if d % 16:
        C.fail(op, f"D must be 16-aligned for float16/bfloat16, got {d}")
    C.real(op, "scale", scale)
    _check_paged_kv(op, key, value, query, block_table, block_size, kv_heads * d)
    _check_sparse(op, q_s, sparse_mode, atten_mask, q_lens, kv_lens)
    out = torch.full_like(query, float("nan"))  # rows past actual_seq_lengths: undefined
    keys, values = key.view(*key.shape[:2], kv_heads, d), value.view(*value.shape[:2], kv_heads, d)
    for b in range(batch):
        lq, lk = q_lens[b], kv_lens[b]
        ids = C.block_ids(op, block_table, b, lk, block_size, key.shape[0])
        allowed = causal(lq, lk, query.device) if q_s > 1 else torch.ones(lq, lk, dtype=torch.bool)
        out[b, :lq] = attend(query[b, :lq], paged_tokens(keys, ids, lk),
                             paged_tokens(values, ids, lk), allowed, scale).to(out.dtype)
    return out, torch.zeros(1, dtype=torch.float32)


def _check_paged_kv(op, key, value, query, block_table, block_size, hidden):
    C.tensor(op, "key", key, 3, (query.dtype,))
    C.tensor(op, "value", value, 3, (query.dtype,))
    C.same(op, "key vs value shape", tuple(key.shape), tuple(value.shape))
    C.same(op, "key H vs num_key_value_heads * D", key.shape[2], hidden)
    C.tensor(op, "block_table", block_table, 2, _INT32, device=True)
    C.same(op, "block_table rows vs B", block_table.shape[0], query.shape[0])
    C.integer(op, "block_size", block_size)
    C.same(op, "block_size vs key blocksize", block_size, key.shape[1])
    if block_size % 128 or not 128 <= block_size <= 512:
        C.fail(op, f"page attention needs block_size a multiple of 128 in [128, 512], "
                   f"got {block_size}")


def _check_sparse(op, q_s, sparse_mode, atten_mask, q_lens, kv_lens):
    for b, (lq, lk) in enumerate(zip(q_lens, kv_lens)):
        if not 0 <= lq <= q_s or lk < 1:
            C.fail(op, f"batch {b}: actual_seq_lengths {lq} (Q_S {q_s}), kv {lk}")
    if q_s == 1:
        if atten_mask is not None:
            C.fail(op, "Q_S == 1 (decode): the fake expects no atten_mask")
        return
    if sparse_mode != 3:
        C.fail(op, f"the fake implements causal prompts as sparse_mode 3, got {sparse_mode}")
    C.tensor(op, "atten_mask", atten_mask, 2, (torch.bool, torch.int8, torch.uint8))
    expected = torch.ones(2048, 2048, dtype=torch.bool, device=atten_mask.device).triu(1)
    if tuple(atten_mask.shape) != (2048, 2048) or not torch.equal(atten_mask.bool(), expected):
        C.fail(op, "sparse_mode 3 needs the 2048 x 2048 mask, 1 above the diagonal")
    for b, (lq, lk) in enumerate(zip(q_lens, kv_lens)):
        if lq > lk:
            C.fail(op, f"sparse_mode 3: batch {b} has more query ({lq}) than kv ({lk}) tokens")


def npu_scatter_nd_update_(input, indices, updates):  # noqa: A002  (the documented name)
    """Shape and dtype checks here (traceable); the write is a custom op TorchAir graphs
    can hold (fake_device.scatter_nd_update_ -> _scatter_nd_update_kernel)."""
    op = "npu_scatter_nd_update_"
    if not isinstance(input, torch.Tensor) or not isinstance(indices, torch.Tensor):
        C.fail(op, "input and indices must be Tensors")
    if indices.dtype not in (torch.int32, torch.int64) or indices.dim() < 1:
        C.fail(op, f"indices must be int32/int64 (..., K), got {indices.dtype}")
    depth = indices.shape[-1]
    want = tuple(indices.shape[:-1]) + tuple(input.shape[depth:])
    C.same(op, "updates shape", tuple(updates.shape), want)
    C.same(op, "updates dtype", updates.dtype, input.dtype)
    torch.ops.fake_npu.scatter_nd_update_(input, indices, updates)
    return input


def _scatter_nd_update_kernel(cache, indices, updates) -> None:
    op = "npu_scatter_nd_update_"
    CALLS[op] += 1
    depth = indices.shape[-1]
    flat_index = indices.reshape(-1, depth).long()  # (N, K)
    bounds = torch.tensor(cache.shape[:depth])  # (K,)
    if bool(((flat_index < 0) | (flat_index >= bounds)).any()):
        C.fail(op, f"indices outside the first {depth} dims {tuple(cache.shape[:depth])}")
    cache[tuple(flat_index.t())] = updates.reshape(-1, *cache.shape[depth:])
from torch_npu._mla_ops import *  # noqa: E402,F401,F403
from torch_npu._moe_ops import *  # noqa: E402,F401,F403
from torch_npu._quant_ops import *  # noqa: E402,F401,F403  (the W8A8 quant ops)
