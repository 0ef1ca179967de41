"""Fake torch_npu MLA ops (vllm/attention/backends/npu_mla_ops.py names their sources):
`_npu_reshape_and_cache_siso`, `_npu_paged_attention_mla` and `atb.npu_ring_mla`, in plain
PyTorch on CPU tensors, every argument checked; a deviation raises FakeNpuContractError."""
import types

import torch

import torch_npu
from torch_npu import _checks as C
from torch_npu._math import attend, causal, paged_tokens

__all__ = ["_npu_paged_attention_mla", "_npu_reshape_and_cache_siso", "atb"]
_CACHE_TYPES = (torch.float16, torch.bfloat16, torch.int8)
_INT32 = (torch.int32,)
RING_MASK_SIZE = 512  # the atb docstring's mask shape
RING_KERNELS = ("kernel_type_default", "kernel_type_high_precision")
RING_MASKS = ("no_mask", "mask_type_triu")
RING_CALCS = ("calc_type_default", "calc_type_first_ring")


def _npu_reshape_and_cache_siso(*, key, key_cache, slot_indices):
    op = "_npu_reshape_and_cache_siso"
    torch_npu.CALLS[op] += 1
    C.tensor(op, "key", key, 3, _CACHE_TYPES)
    C.tensor(op, "key_cache", key_cache, 4, (key.dtype,))
    C.tensor(op, "slot_indices", slot_indices, 1, _INT32, device=True)
    C.same(op, "key (KVH, D) vs key_cache (KVH, D)", tuple(key.shape[1:]),
           tuple(key_cache.shape[2:]))
    C.same(op, "slot_indices length vs tokens", slot_indices.shape[0], key.shape[0])
    num_slots = key_cache.shape[0] * key_cache.shape[1]
    if bool(((slot_indices < 0) | (slot_indices >= num_slots)).any()):
        C.fail(op, f"slot_indices outside [0, {num_slots})")
    key_cache.view(num_slots, *key_cache.shape[2:])[slot_indices.long()] = key


def _npu_paged_attention_mla(*, query, key_cache, num_kv_heads, num_heads, scale_value,
                             block_table, context_lens, mla_vheadsize, out):
    op = "_npu_paged_attention_mla"
    torch_npu.CALLS[op] += 1
    C.tensor(op, "query", query, 3, C.HALF_TYPES)
    C.tensor(op, "key_cache", key_cache, 4, (query.dtype,))
    C.tensor(op, "block_table", block_table, 2, _INT32, device=True)
    C.tensor(op, "context_lens", context_lens, 1, _INT32, host=True)
    C.tensor(op, "out", out, 3, (query.dtype,))
    for name in ("num_kv_heads", "num_heads", "mla_vheadsize"):
        C.integer(op, name, locals()[name])
    C.real(op, "scale_value", scale_value)
    C.heads(op, num_heads, num_kv_heads)
    batch, head_size = query.shape[0], query.shape[2]
    C.same(op, "query heads", query.shape[1], num_heads)
    C.same(op, "key_cache (KVH, D)", tuple(key_cache.shape[2:]), (num_kv_heads, head_size))
    if head_size % 16 or mla_vheadsize % 16 or not 0 < mla_vheadsize < head_size:
        C.fail(op, f"head size {head_size} and mla_vheadsize {mla_vheadsize} must be "
                   "16-aligned with mla_vheadsize < head size")
    C.same(op, "block_table rows", block_table.shape[0], batch)
    C.same(op, "context_lens length", context_lens.shape[0], batch)
    C.same(op, "out shape", tuple(out.shape), (batch, num_heads, mla_vheadsize))
    num_blocks, block_size = key_cache.shape[:2]
    for b, seq_len in enumerate(context_lens.tolist()):
        if seq_len < 1:
            C.fail(op, f"context_lens[{b}] = {seq_len}")
        ids = C.block_ids(op, block_table, b, seq_len, block_size, num_blocks)
        keys = paged_tokens(key_cache, ids, seq_len)  # (L, KVH, D)
        allowed = torch.ones(1, seq_len, dtype=torch.bool)
        out[b] = attend(query[b:b + 1], keys, keys[..., :mla_vheadsize], allowed,
                        scale_value)[0].to(out.dtype)


def npu_ring_mla(*, q_nope, q_rope, k_nope, k_rope, value, mask, seqlen, head_num,
                 kv_head_num, pre_out=None, prev_lse=None, qk_scale=1.0, kernel_type=None,
                 mask_type=None, input_layout=None, calc_type=None, output, softmax_lse):
    op = "atb.npu_ring_mla"
    torch_npu.CALLS[op] += 1
    _check_ring_options(op, kernel_type, mask_type, input_layout, calc_type, qk_scale)
    _check_ring_tensors(op, q_nope, q_rope, k_nope, k_rope, value, head_num, kv_head_num)
    q_lens, kv_lens = _ring_lengths(op, seqlen, q_nope.shape[0], k_nope.shape[0],
                                    mask_type == "mask_type_triu")
    tokens = q_nope.shape[0]
    C.tensor(op, "output", output, 3, (q_nope.dtype,))
    C.same(op, "output shape", tuple(output.shape), (tokens, head_num, value.shape[2]))
    C.tensor(op, "softmax_lse", softmax_lse, 2, (torch.float32,))
    C.same(op, "softmax_lse shape", tuple(softmax_lse.shape), (head_num, tokens))
    merge = calc_type == "calc_type_default"
    if merge:
        C.tensor(op, "pre_out", pre_out, 3, (q_nope.dtype,))
        C.same(op, "pre_out shape", tuple(pre_out.shape), tuple(output.shape))
        C.tensor(op, "prev_lse", prev_lse, 2, (torch.float32,))
        C.same(op, "prev_lse shape", tuple(prev_lse.shape), tuple(softmax_lse.shape))
    elif pre_out is not None or prev_lse is not None:
        C.fail(op, "calc_type_first_ring takes no pre_out / prev_lse")
    if mask_type == "mask_type_triu":
        _check_ring_mask(op, mask, q_nope.dtype)
    query = torch.cat([q_nope, q_rope], dim=-1)  # (Tq, H, nope + rope)
    keys = torch.cat([k_nope, k_rope], dim=-1)  # (Tk, H, nope + rope)
    result, lse = _ring_attention(query, keys, value, q_lens, kv_lens, qk_scale,
                                  mask_type == "mask_type_triu")
    if merge:
        result, lse = _merge(pre_out.float(), prev_lse, result, lse)
    output.copy_(result)
    softmax_lse.copy_(lse)
    return output, softmax_lse


atb = types.SimpleNamespace(npu_ring_mla=npu_ring_mla)


def _check_ring_options(op, kernel_type, mask_type, input_layout, calc_type, qk_scale):
    for name, value, allowed in (("kernel_type", kernel_type, RING_KERNELS),
                                 ("mask_type", mask_type, RING_MASKS),
                                 ("input_layout", input_layout, ("type_bsnd",)),
                                 ("calc_type", calc_type, RING_CALCS)):
        if value not in allowed:
            C.fail(op, f"{name} must be one of {allowed}, got {value!r}")
    C.real(op, "qk_scale", qk_scale)


def _check_ring_tensors(op, q_nope, q_rope, k_nope, k_rope, value, head_num, kv_head_num):
    C.tensor(op, "q_nope", q_nope, 3, C.HALF_TYPES)
    for name, t in (("q_rope", q_rope), ("k_nope", k_nope), ("k_rope", k_rope),
                    ("value", value)):
        C.tensor(op, name, t, 3, (q_nope.dtype,))
    C.integer(op, "head_num", head_num)
    C.integer(op, "kv_head_num", kv_head_num)
    C.same(op, "kv_head_num vs head_num (MLA expands every head)", kv_head_num, head_num)
    C.same(op, "q_nope heads", q_nope.shape[1], head_num)
    C.same(op, "q_rope shape", tuple(q_rope.shape[:2]), tuple(q_nope.shape[:2]))
    for name, t in (("k_nope", k_nope), ("k_rope", k_rope), ("value", value)):
        C.same(op, f"{name} (tokens, heads)", tuple(t.shape[:2]),
               (k_nope.shape[0], kv_head_num))
    C.same(op, "k_nope vs q_nope head size", k_nope.shape[2], q_nope.shape[2])
    C.same(op, "k_rope vs q_rope head size", k_rope.shape[2], q_rope.shape[2])
    for name, t in (("q_nope", q_nope), ("q_rope", q_rope), ("value", value)):
        if t.shape[2] % 16:
            C.fail(op, f"{name} head size must be 16-aligned, got {t.shape[2]}")


def _ring_lengths(op, seqlen, q_tokens, kv_tokens, triu):
    """(query lengths, key lengths) from seqlen (B,) or (2, B), checked against the tokens."""
    if not isinstance(seqlen, torch.Tensor) or seqlen.dim() not in (1, 2):
        C.fail(op, "seqlen must be a (B,) or (2, B) Tensor")
    C.tensor(op, "seqlen", seqlen, seqlen.dim(), _INT32, host=True)
    if seqlen.dim() == 2 and seqlen.shape[0] != 2:
        C.fail(op, f"seqlen must be (B,) or (2, B), got {tuple(seqlen.shape)}")
    q_lens = (seqlen if seqlen.dim() == 1 else seqlen[0]).tolist()
    kv_lens = (seqlen if seqlen.dim() == 1 else seqlen[1]).tolist()
    C.same(op, "sum of query lengths vs q tokens", sum(q_lens), q_tokens)
    C.same(op, "sum of kv lengths vs kv tokens", sum(kv_lens), kv_tokens)
    for b, (lq, lk) in enumerate(zip(q_lens, kv_lens)):
        if lq < 1 or lk < 0:
            C.fail(op, f"batch {b}: query length {lq}, kv length {lk}")
        if triu and lk != lq:
            C.fail(op, f"mask_type_triu: batch {b} has {lq} query and {lk} kv tokens")
    return q_lens, kv_lens


def _check_ring_mask(op, mask, dtype):
    C.tensor(op, "mask", mask, 2, (dtype,))
    C.same(op, "mask shape", tuple(mask.shape), (RING_MASK_SIZE, RING_MASK_SIZE))
    above = torch.ones(mask.shape, dtype=torch.bool).triu(1)
    masked = float("-inf") if dtype == torch.float16 else 1.0
    if bool((mask[~above] != 0).any()) or bool((mask[above].float() != masked).any()):
        C.fail(op, f"mask must be 0 on and below the diagonal and {masked} above")


def _ring_attention(query, keys, value, q_lens, kv_lens, scale, triu):
    """Per request: float32 output (Tq, H, Dv) and log-sum-exp (H, Tq); requests without
    keys give a zero output and -inf."""
    out = torch.zeros(query.shape[0], query.shape[1], value.shape[2])
    lse = torch.full((query.shape[1], query.shape[0]), float("-inf"))
    q_start = k_start = 0
    for lq, lk in zip(q_lens, kv_lens):
        rows, cols = slice(q_start, q_start + lq), slice(k_start, k_start + lk)
        q_start, k_start = q_start + lq, k_start + lk
        if lk == 0:
            continue
        allowed = causal(lq, lk, query.device) if triu else torch.ones(lq, lk, dtype=torch.bool)
        scores = torch.einsum("qhd,khd->hqk", query[rows].float(), keys[cols].float()) * scale
        scores = scores.masked_fill(~allowed, float("-inf"))  # (H, lq, lk)
        lse[:, rows] = torch.logsumexp(scores, dim=-1)
        out[rows] = attend(query[rows], keys[cols], value[cols], allowed, scale)
    return out, lse


def _merge(out_a, lse_a, out_b, lse_b):
    lse = torch.logaddexp(lse_a, lse_b)  # (H, Tq)
    weight_a = torch.exp(lse_a - lse).t().unsqueeze(-1)  # (Tq, H, 1)
    weight_b = torch.nan_to_num(torch.exp(lse_b - lse)).t().unsqueeze(-1)
    return out_a * weight_a + out_b * weight_b, lse
