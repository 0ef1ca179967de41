"""Paged decode attention: C++ kernel vs PyTorch reference vs a per-sequence loop."""

import pytest
import torch

from vllm.attention.ops.paged_attention import (
    HAS_CPU_KERNEL,
    paged_attention_decode,
    paged_attention_decode_reference,
    reshape_and_cache,
    reshape_and_cache_reference,
)
from vllm.platforms.cpu_isa import kernel_ops

needs_kernel = pytest.mark.skipif(
    not HAS_CPU_KERNEL,
    reason="vllm._C_<isa> is not built (build it with setup.py build_ext --inplace)",
)


def kernel(out, query, key_cache, value_cache, block_table, seq_lens, scale):
    kernel_ops().paged_attention_decode(
        out, query, key_cache, value_cache, block_table, seq_lens, scale
    )
    return out


def make_case(seq_lens, num_heads, num_kv_heads, head_size, block_size, seed=0, spare_blocks=3):
    """Random cache whose blocks are handed out to sequences in shuffled order."""
    gen = torch.Generator().manual_seed(seed)
    blocks_per_seq = [(n + block_size - 1) // block_size for n in seq_lens]
    max_blocks = max(max(blocks_per_seq), 1) + 1  # one padding column
    num_blocks = sum(blocks_per_seq) + spare_blocks
    cache_shape = (num_blocks, block_size, num_kv_heads, head_size)
    key_cache = torch.randn(cache_shape, generator=gen)
    value_cache = torch.randn(cache_shape, generator=gen)
    free_blocks = torch.randperm(num_blocks, generator=gen).tolist()
    block_table = torch.zeros(len(seq_lens), max_blocks, dtype=torch.int32)
    for seq, count in enumerate(blocks_per_seq):
        for b in range(count):
            block_table[seq, b] = free_blocks.pop()
    query = torch.randn(len(seq_lens), num_heads, head_size, generator=gen)
    return query, key_cache, value_cache, block_table, torch.tensor(seq_lens, dtype=torch.int32)


def attention_by_loop(query, key_cache, value_cache, block_table, seq_lens, scale):
    """Independent check: contiguous K/V per sequence, then softmax(q K^T) V per head."""
    num_seqs, num_heads, head_size = query.shape
    block_size, num_kv_heads = key_cache.shape[1], key_cache.shape[2]
    group_size = num_heads // num_kv_heads
    out = torch.zeros_like(query)
    for seq in range(num_seqs):
        seq_len = int(seq_lens[seq])
        if seq_len == 0:
            continue
        num_used = (seq_len + block_size - 1) // block_size
        ids = [int(block_table[seq, b]) for b in range(num_used)]
        keys = torch.cat([key_cache[i] for i in ids])[:seq_len]  # (L, kvh, D)
        values = torch.cat([value_cache[i] for i in ids])[:seq_len]  # (L, kvh, D)
        for head in range(num_heads):
            k = keys[:, head // group_size].double()  # (L, D)
            v = values[:, head // group_size].double()  # (L, D)
            scores = (k @ query[seq, head].double()) * scale  # (L,)
            out[seq, head] = (torch.softmax(scores, dim=0) @ v).float()
    return out


def boundary_seq_lens(block_size, seed):
    gen = torch.Generator().manual_seed(seed)
    fixed = [1, 2, block_size - 1, block_size, block_size + 1, 2 * block_size, 300]
    return fixed + torch.randint(1, 301, (5,), generator=gen).tolist()


HEAD_CONFIGS = [(4, 4), (9, 3), (8, 2)]  # GQA ratios 1, 3, 4


@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("num_heads,num_kv_heads", HEAD_CONFIGS)
@pytest.mark.parametrize("head_size", [64, 128])
def test_reference_matches_loop(block_size, num_heads, num_kv_heads, head_size):
    seq_lens = boundary_seq_lens(block_size, seed=block_size + head_size)
    case = make_case(seq_lens, num_heads, num_kv_heads, head_size, block_size, seed=1)
    scale = head_size**-0.5
    expected = attention_by_loop(*case, scale)
    got = paged_attention_decode_reference(*case, scale)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


@needs_kernel
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("num_heads,num_kv_heads", HEAD_CONFIGS)
@pytest.mark.parametrize("head_size", [64, 128])
def test_kernel_matches_reference_and_loop(block_size, num_heads, num_kv_heads, head_size):
    seq_lens = boundary_seq_lens(block_size, seed=block_size * head_size)
    case = make_case(seq_lens, num_heads, num_kv_heads, head_size, block_size, seed=2)
    scale = head_size**-0.5
    out = torch.full_like(case[0], float("nan"))
    kernel(out, *case, scale)
    torch.testing.assert_close(out, attention_by_loop(*case, scale), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(
        out, paged_attention_decode_reference(*case, scale), atol=1e-5, rtol=1e-4
    )


@needs_kernel
@pytest.mark.parametrize("head_size", [40, 80, 96, 256])
def test_kernel_other_head_sizes(head_size):
    case = make_case([5, 33, 200], 6, 2, head_size, 16, seed=head_size)
    out = torch.empty_like(case[0])
    kernel(out, *case, 0.1)
    torch.testing.assert_close(out, attention_by_loop(*case, 0.1), atol=1e-5, rtol=1e-4)


@needs_kernel
def test_kernel_large_scores_are_stable():
    # Scores in the hundreds: exp overflows unless the max is subtracted.
    case = make_case([7, 100], 4, 2, 64, 16, seed=5)
    out = torch.empty_like(case[0])
    kernel(out, *case, 30.0)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, attention_by_loop(*case, 30.0), atol=1e-5, rtol=1e-4)


@needs_kernel
def test_kernel_strided_query_and_in_place_out():
    num_seqs, num_heads, num_kv_heads, head_size = 3, 9, 3, 64
    _, key_cache, value_cache, block_table, seq_lens = make_case(
        [17, 64, 250], num_heads, num_kv_heads, head_size, 16, seed=7
    )
    # Query as a column slice of a fused qkv projection, like the attention layer sees it.
    qkv = torch.randn(num_seqs, (num_heads + 2 * num_kv_heads) * head_size)
    query = qkv[:, : num_heads * head_size].view(num_seqs, num_heads, head_size)
    assert not query.is_contiguous()
    expected = attention_by_loop(query, key_cache, value_cache, block_table, seq_lens, 0.125)
    out = torch.empty(num_seqs, num_heads, head_size)
    kernel(out, query, key_cache, value_cache, block_table, seq_lens, 0.125)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)
    kernel(query, query, key_cache, value_cache, block_table, seq_lens, 0.125)  # in place
    torch.testing.assert_close(query, expected, atol=1e-5, rtol=1e-4)


@needs_kernel
def test_kernel_zero_length_sequence_gives_zeros():
    case = make_case([0, 20], 4, 1, 64, 16, seed=8)
    out = torch.full_like(case[0], float("nan"))
    kernel(out, *case, 0.125)
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    torch.testing.assert_close(out, paged_attention_decode_reference(*case, 0.125))


@needs_kernel
def test_kernel_rejects_bad_inputs():
    query, key_cache, value_cache, block_table, seq_lens = make_case([20, 40], 4, 2, 64, 16)
    out = torch.empty_like(query)
    with pytest.raises(RuntimeError, match="float32"):
        kernel(out, query.double(), key_cache, value_cache, block_table, seq_lens, 1.0)
    with pytest.raises(RuntimeError, match="int32"):
        kernel(out, query, key_cache, value_cache, block_table.long(), seq_lens, 1.0)
    with pytest.raises(RuntimeError, match="contiguous"):
        kernel(out, query, key_cache.transpose(1, 2), value_cache.transpose(1, 2),
               block_table, seq_lens, 1.0)
    with pytest.raises(RuntimeError, match="multiple of num_kv_heads"):
        kernel(out[:, :3], query[:, :3], key_cache, value_cache, block_table, seq_lens, 1.0)
    bad_table = block_table.clone()
    bad_table[1, 0] = key_cache.shape[0]
    with pytest.raises(RuntimeError, match="outside the cache"):
        kernel(out, query, key_cache, value_cache, bad_table, seq_lens, 1.0)
    with pytest.raises(RuntimeError, match="seq_lens"):
        kernel(out, query, key_cache, value_cache, block_table, seq_lens * 100, 1.0)


def test_dispatcher_matches_reference():
    case = make_case([1, 16, 129], 9, 3, 64, 16, seed=9)
    out = torch.empty_like(case[0])
    returned = paged_attention_decode(out, *case, 0.125)
    assert returned is out
    torch.testing.assert_close(
        out, paged_attention_decode_reference(*case, 0.125), atol=1e-5, rtol=1e-4
    )


WRITERS = [
    pytest.param(reshape_and_cache_reference, id="reference"),
    pytest.param(lambda *args: kernel_ops().reshape_and_cache(*args), id="kernel",
                 marks=needs_kernel),
]


@pytest.mark.parametrize("write", WRITERS)
def test_reshape_and_cache_round_trip(write):
    num_blocks, block_size, num_kv_heads, head_size, num_tokens = 10, 16, 3, 64, 37
    kv_cache = torch.randn(2, num_blocks, block_size, num_kv_heads, head_size)
    before = kv_cache.clone()
    slots = torch.randperm(num_blocks * block_size)[:num_tokens]  # int64
    slots[[3, 20]] = -1  # padding tokens are not stored
    # Key and value as column slices of a fused qkv projection (strided rows).
    qkv = torch.randn(num_tokens, 3 * num_kv_heads * head_size)
    key = qkv[:, : num_kv_heads * head_size].view(num_tokens, num_kv_heads, head_size)
    value = qkv[:, num_kv_heads * head_size : 2 * num_kv_heads * head_size].view(
        num_tokens, num_kv_heads, head_size
    )
    write(key, value, kv_cache[0], kv_cache[1], slots)
    for t, slot in enumerate(slots.tolist()):
        if slot < 0:
            continue
        block, offset = divmod(slot, block_size)
        assert torch.equal(kv_cache[0, block, offset], key[t])
        assert torch.equal(kv_cache[1, block, offset], value[t])
    written = torch.zeros(num_blocks * block_size, dtype=torch.bool)
    written[slots[slots >= 0]] = True
    untouched = ~written.view(num_blocks, block_size)
    assert torch.equal(kv_cache[:, untouched], before[:, untouched])


@needs_kernel
def test_reshape_and_cache_kernel_rejects_bad_slots():
    kv_cache = torch.zeros(2, 4, 16, 2, 64)
    key = torch.randn(3, 2, 64)
    with pytest.raises(RuntimeError, match="outside the cache"):
        kernel_ops().reshape_and_cache(key, key, kv_cache[0], kv_cache[1], torch.tensor([0, 1, 64]))
    with pytest.raises(RuntimeError, match="int64"):
        kernel_ops().reshape_and_cache(key, key, kv_cache[0], kv_cache[1],
                                       torch.tensor([0, 1, 2], dtype=torch.int32))


def test_cache_written_then_attended():
    # Tokens written one sequence at a time through reshape_and_cache are what
    # the decode attention then reads back.
    block_size, num_heads, num_kv_heads, head_size = 16, 9, 3, 64
    seq_lens = [1, 16, 45]
    num_blocks = 8
    kv_cache = torch.zeros(2, num_blocks, block_size, num_kv_heads, head_size)
    free_blocks = torch.randperm(num_blocks).tolist()
    block_table = torch.zeros(len(seq_lens), 4, dtype=torch.int32)
    contiguous_keys, contiguous_values = [], []
    for seq, seq_len in enumerate(seq_lens):
        num_used = (seq_len + block_size - 1) // block_size
        for b in range(num_used):
            block_table[seq, b] = free_blocks.pop()
        positions = torch.arange(seq_len)
        slots = block_table[seq, positions // block_size].long() * block_size + positions % block_size
        key = torch.randn(seq_len, num_kv_heads, head_size)
        value = torch.randn(seq_len, num_kv_heads, head_size)
        reshape_and_cache(key, value, kv_cache[0], kv_cache[1], slots)
        contiguous_keys.append(key)
        contiguous_values.append(value)
    query = torch.randn(len(seq_lens), num_heads, head_size)
    out = torch.empty_like(query)
    seq_lens_t = torch.tensor(seq_lens, dtype=torch.int32)
    paged_attention_decode(out, query, kv_cache[0], kv_cache[1], block_table, seq_lens_t, 0.125)
    for seq in range(len(seq_lens)):
        k = contiguous_keys[seq].repeat_interleave(3, dim=1)  # (L, H, D)
        v = contiguous_values[seq].repeat_interleave(3, dim=1)  # (L, H, D)
        probs = torch.softmax(torch.einsum("hd,lhd->hl", query[seq], k) * 0.125, dim=-1)
        torch.testing.assert_close(out[seq], torch.einsum("hl,lhd->hd", probs, v),
                                   atol=1e-5, rtol=1e-4)


@needs_kernel
def test_kernel_many_sequences():
    # Large batches are split per sequence rather than per (sequence, kv head).
    gen = torch.Generator().manual_seed(11)
    seq_lens = torch.randint(0, 200, (70,), generator=gen).tolist()
    case = make_case(seq_lens, 9, 3, 64, 16, seed=11)
    out = torch.empty_like(case[0])
    kernel(out, *case, 0.125)
    torch.testing.assert_close(
        out, paged_attention_decode_reference(*case, 0.125), atol=1e-5, rtol=1e-4
    )
