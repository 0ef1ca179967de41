"""Paged decode attention: every built kernel ISA, float32 and bfloat16, vs float64 references."""

import pytest
import torch

from vllm.attention.ops.paged_attention import (
    HAS_CPU_KERNEL,
    paged_attention_decode,
    paged_attention_decode_reference,
    reshape_and_cache,
    reshape_and_cache_reference,
)
from vllm.platforms import cpu_isa

BF16 = torch.bfloat16
F32 = torch.float32
BUILT_ISAS = cpu_isa.built_isas()  # empty without a build: the kernel tests are skipped

needs_kernel = pytest.mark.skipif(
    not HAS_CPU_KERNEL,
    reason="vllm._C_<isa> is not built (build it with setup.py build_ext --inplace)",
)


@pytest.fixture(params=BUILT_ISAS)
def ops(request):
    """torch.ops._C_<isa> of one build; its own report of what it was compiled for agrees."""
    namespace = cpu_isa.load_ops(request.param)
    assert namespace.built_isa() == request.param
    return namespace


def kernel(ops, out, query, key_cache, value_cache, block_table, seq_lens, scale):
    ops.paged_attention_decode(out, query, key_cache, value_cache, block_table, seq_lens, scale)
    return out


# (query and out dtype, cache dtype): what the kernels take. The model runs all-bf16.
DTYPES = [
    pytest.param(F32, F32, id="f32"),
    pytest.param(BF16, BF16, id="bf16"),
    pytest.param(F32, BF16, id="f32q-bf16cache"),
]


def make_case(seq_lens, num_heads, num_kv_heads, head_size, block_size, seed=0, spare_blocks=3,
              dtype=F32, cache_dtype=None):
    """Random cache whose blocks are handed out to sequences in shuffled order."""
    gen = torch.Generator().manual_seed(seed)
    blocks_per_seq = [(n + block_size - 1) // block_size for n in seq_lens]
    max_blocks = max(max(blocks_per_seq), 1) + 1  # one padding column
    num_blocks = sum(blocks_per_seq) + spare_blocks
    cache_shape = (num_blocks, block_size, num_kv_heads, head_size)
    cache_dtype = dtype if cache_dtype is None else cache_dtype
    key_cache = torch.randn(cache_shape, generator=gen).to(cache_dtype)
    value_cache = torch.randn(cache_shape, generator=gen).to(cache_dtype)
    free_blocks = torch.randperm(num_blocks, generator=gen).tolist()
    block_table = torch.zeros(len(seq_lens), max_blocks, dtype=torch.int32)
    for seq, count in enumerate(blocks_per_seq):
        for b in range(count):
            block_table[seq, b] = free_blocks.pop()
    query = torch.randn(len(seq_lens), num_heads, head_size, generator=gen).to(dtype)
    return query, key_cache, value_cache, block_table, torch.tensor(seq_lens, dtype=torch.int32)


def attention_by_loop(query, key_cache, value_cache, block_table, seq_lens, scale):
    """Independent check in float64 (from the very same, possibly bf16, values):
    contiguous K/V per sequence, then softmax(q K^T) V per head. Returns float64."""
    num_seqs, num_heads, head_size = query.shape
    block_size, num_kv_heads = key_cache.shape[1], key_cache.shape[2]
    group_size = num_heads // num_kv_heads
    out = torch.zeros(query.shape, dtype=torch.float64)
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
            out[seq, head] = torch.softmax(scores, dim=0) @ v
    return out


def bf16_half_ulp(expected: torch.Tensor) -> torch.Tensor:
    """Half the bfloat16 spacing at each value: |x| in [2^(e-1), 2^e) has ulp 2^(e-8)."""
    _, exponent = torch.frexp(expected)
    half_ulp = torch.ldexp(torch.ones_like(expected), exponent - 9)
    return torch.where(expected == 0, torch.zeros_like(expected), half_ulp)


# What float32 arithmetic may be off by (the float32 tests' tolerance, also the slack the
# bf16 checks allow before rounding): sums over a few hundred tokens.
F32_ATOL, F32_RTOL = 1e-5, 1e-4


def bf16_rounding_errors(out: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """How far each bf16 output is beyond the correct rounding of the float64 value (> 0
    fails): half a bf16 ulp (2^-9 to 2^-8 relative) plus the float32 slack are allowed."""
    slack = F32_ATOL + F32_RTOL * expected.abs()
    return (out.double() - expected).abs() - bf16_half_ulp(expected) - slack


def assert_matches(out: torch.Tensor, expected: torch.Tensor):
    """out (float32 or bfloat16) against a float64 `expected` of the same values: float32
    within today's tolerances, bfloat16 the correctly rounded value (within float32 slack)."""
    if out.dtype == F32:
        torch.testing.assert_close(out, expected.float(), atol=F32_ATOL, rtol=F32_RTOL)
        return
    assert out.dtype == BF16, out.dtype
    errors = bf16_rounding_errors(out, expected)
    worst = int(errors.argmax())
    assert float(errors.max()) <= 0, (
        f"{int((errors > 0).sum())} of {errors.numel()} bf16 outputs are not the rounding of "
        f"the float64 value, worst {out.flatten()[worst].item()} vs "
        f"{expected.flatten()[worst].item()}")


def test_bf16_check_rejects_truncation():
    # The bf16 check has teeth: rounding toward zero instead of to nearest, or a float32
    # result one bf16 step off, fails it; correct rounding passes.
    expected = torch.randn(4000, dtype=torch.float64)
    assert_matches(expected.to(BF16), expected)
    bits = expected.float().view(torch.int32) & ~0xFFFF  # drop the low 16 bits: truncation
    truncated = bits.view(F32).to(BF16)
    assert float(bf16_rounding_errors(truncated, expected).max()) > 0
    one_step_off = (expected * (1 + 2**-7)).to(BF16)
    assert float(bf16_rounding_errors(one_step_off, expected).max()) > 0


def boundary_seq_lens(block_size, seed):
    gen = torch.Generator().manual_seed(seed)
    fixed = [1, 2, block_size - 1, block_size, block_size + 1, 2 * block_size, 300]
    return fixed + torch.randint(1, 301, (5,), generator=gen).tolist()


HEAD_CONFIGS = [(4, 4), (9, 3), (8, 2)]  # GQA ratios 1, 3, 4


@pytest.mark.parametrize("dtype", [F32, BF16], ids=["f32", "bf16"])
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("num_heads,num_kv_heads", HEAD_CONFIGS)
@pytest.mark.parametrize("head_size", [64, 128])
def test_reference_matches_loop(block_size, num_heads, num_kv_heads, head_size, dtype):
    seq_lens = boundary_seq_lens(block_size, seed=block_size + head_size)
    case = make_case(seq_lens, num_heads, num_kv_heads, head_size, block_size, seed=1,
                     dtype=dtype)
    scale = head_size**-0.5
    got = paged_attention_decode_reference(*case, scale)
    assert got.dtype == dtype
    assert_matches(got, attention_by_loop(*case, scale))


@needs_kernel
@pytest.mark.parametrize("dtype,cache_dtype", DTYPES)
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("num_heads,num_kv_heads", HEAD_CONFIGS)
@pytest.mark.parametrize("head_size", [64, 128])
def test_kernel_matches_reference_and_loop(ops, block_size, num_heads, num_kv_heads, head_size,
                                           dtype, cache_dtype):
    seq_lens = boundary_seq_lens(block_size, seed=block_size * head_size)
    case = make_case(seq_lens, num_heads, num_kv_heads, head_size, block_size, seed=2,
                     dtype=dtype, cache_dtype=cache_dtype)
    scale = head_size**-0.5
    out = torch.full_like(case[0], float("nan"))
    kernel(ops, out, *case, scale)
    assert_matches(out, attention_by_loop(*case, scale))
    if dtype == F32:  # the float32 reference; a bf16 one is itself rounded
        torch.testing.assert_close(
            out, paged_attention_decode_reference(*case, scale), atol=1e-5, rtol=1e-4
        )


@needs_kernel
@pytest.mark.parametrize("dtype", [F32, BF16], ids=["f32", "bf16"])
@pytest.mark.parametrize("head_size", [40, 80, 96, 256])
def test_kernel_other_head_sizes(ops, head_size, dtype):
    # 40: the generic loops; 80 and 96: multiples of 8 and 16 but not 32 lanes.
    case = make_case([5, 33, 200], 6, 2, head_size, 16, seed=head_size, dtype=dtype)
    out = torch.empty_like(case[0])
    kernel(ops, out, *case, 0.1)
    assert_matches(out, attention_by_loop(*case, 0.1))


@needs_kernel
@pytest.mark.parametrize("dtype", [F32, BF16], ids=["f32", "bf16"])
def test_kernel_large_scores_are_stable(ops, dtype):
    # Scores in the hundreds: exp overflows unless the max is subtracted, and most
    # weights underflow to (or below) the smallest subnormal.
    case = make_case([7, 100], 4, 2, 64, 16, seed=5, dtype=dtype)
    out = torch.empty_like(case[0])
    kernel(ops, out, *case, 30.0)
    assert torch.isfinite(out).all()
    assert_matches(out, attention_by_loop(*case, 30.0))


@needs_kernel
@pytest.mark.parametrize("dtype", [F32, BF16], ids=["f32", "bf16"])
def test_kernel_strided_query_and_in_place_out(ops, dtype):
    num_seqs, num_heads, num_kv_heads, head_size = 3, 9, 3, 64
    _, key_cache, value_cache, block_table, seq_lens = make_case(
        [17, 64, 250], num_heads, num_kv_heads, head_size, 16, seed=7, dtype=dtype
    )
    # Query as a column slice of a fused qkv projection, like the attention layer sees it.
    qkv = torch.randn(num_seqs, (num_heads + 2 * num_kv_heads) * head_size).to(dtype)
    query = qkv[:, : num_heads * head_size].view(num_seqs, num_heads, head_size)
    assert not query.is_contiguous()
    expected = attention_by_loop(query, key_cache, value_cache, block_table, seq_lens, 0.125)
    out = torch.empty(num_seqs, num_heads, head_size, dtype=dtype)
    kernel(ops, out, query, key_cache, value_cache, block_table, seq_lens, 0.125)
    assert_matches(out, expected)
    kernel(ops, query, query, key_cache, value_cache, block_table, seq_lens, 0.125)  # in place
    assert_matches(query, expected)


@needs_kernel
@pytest.mark.parametrize("dtype", [F32, BF16], ids=["f32", "bf16"])
def test_kernel_zero_length_sequence_gives_zeros(ops, dtype):
    case = make_case([0, 20], 4, 1, 64, 16, seed=8, dtype=dtype)
    out = torch.full_like(case[0], float("nan"))
    kernel(ops, out, *case, 0.125)
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    assert_matches(out, attention_by_loop(*case, 0.125))


@needs_kernel
def test_kernel_rejects_bad_inputs(ops):
    query, key_cache, value_cache, block_table, seq_lens = make_case([20, 40], 4, 2, 64, 16)
    out = torch.empty_like(query)
    with pytest.raises(RuntimeError, match="float32"):
        kernel(ops, out, query.double(), key_cache, value_cache, block_table, seq_lens, 1.0)
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        kernel(ops, out.half(), query.half(), key_cache, value_cache, block_table, seq_lens, 1.0)
    with pytest.raises(RuntimeError, match="same dtype"):
        kernel(ops, out.to(BF16), query, key_cache, value_cache, block_table, seq_lens, 1.0)
    with pytest.raises(RuntimeError, match="same dtype"):
        kernel(ops, out, query, key_cache.to(BF16), value_cache, block_table, seq_lens, 1.0)
    with pytest.raises(RuntimeError, match="int32"):
        kernel(ops, out, query, key_cache, value_cache, block_table.long(), seq_lens, 1.0)
    with pytest.raises(RuntimeError, match="contiguous"):
        kernel(ops, out, query, key_cache.transpose(1, 2), value_cache.transpose(1, 2),
               block_table, seq_lens, 1.0)
    with pytest.raises(RuntimeError, match="multiple of num_kv_heads"):
        kernel(ops, out[:, :3], query[:, :3], key_cache, value_cache, block_table, seq_lens, 1.0)
    bad_table = block_table.clone()
    bad_table[1, 0] = key_cache.shape[0]
    with pytest.raises(RuntimeError, match="outside the cache"):
        kernel(ops, out, query, key_cache, value_cache, bad_table, seq_lens, 1.0)
    with pytest.raises(RuntimeError, match="seq_lens"):
        kernel(ops, out, query, key_cache, value_cache, block_table, seq_lens * 100, 1.0)


@pytest.mark.parametrize("dtype", [F32, BF16], ids=["f32", "bf16"])
def test_dispatcher_matches_reference(dtype):
    case = make_case([1, 16, 129], 9, 3, 64, 16, seed=9, dtype=dtype)
    out = torch.empty_like(case[0])
    returned = paged_attention_decode(out, *case, 0.125)
    assert returned is out
    assert_matches(out, attention_by_loop(*case, 0.125))


def test_dispatcher_takes_other_dtypes_to_the_reference():
    # float16 is no kernel dtype: the wrapper computes it with the reference.
    case = make_case([3, 40], 4, 2, 64, 16, seed=10, dtype=torch.float16)
    out = torch.empty_like(case[0])
    paged_attention_decode(out, *case, 0.125)
    torch.testing.assert_close(out.double(), attention_by_loop(*case, 0.125),
                               atol=2e-3, rtol=2e-3)


def kernel_writer(isa):
    def write(*args):
        cpu_isa.load_ops(isa).reshape_and_cache(*args)
    return write


WRITERS = [pytest.param(reshape_and_cache_reference, id="reference")] + [
    pytest.param(kernel_writer(isa), id=f"kernel-{isa}") for isa in BUILT_ISAS
]


@pytest.mark.parametrize("dtype", [F32, BF16], ids=["f32", "bf16"])
@pytest.mark.parametrize("write", WRITERS)
def test_reshape_and_cache_round_trip(write, dtype):
    num_blocks, block_size, num_kv_heads, head_size, num_tokens = 10, 16, 3, 64, 37
    kv_cache = torch.randn(2, num_blocks, block_size, num_kv_heads, head_size).to(dtype)
    before = kv_cache.clone()
    slots = torch.randperm(num_blocks * block_size)[:num_tokens]  # int64
    slots[[3, 20]] = -1  # padding tokens are not stored
    # Key and value as column slices of a fused qkv projection (strided rows).
    qkv = torch.randn(num_tokens, 3 * num_kv_heads * head_size).to(dtype)
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
def test_reshape_and_cache_kernel_rejects_bad_inputs(ops):
    kv_cache = torch.zeros(2, 4, 16, 2, 64)
    key = torch.randn(3, 2, 64)
    with pytest.raises(RuntimeError, match="outside the cache"):
        ops.reshape_and_cache(key, key, kv_cache[0], kv_cache[1], torch.tensor([0, 1, 64]))
    with pytest.raises(RuntimeError, match="int64"):
        ops.reshape_and_cache(key, key, kv_cache[0], kv_cache[1],
                              torch.tensor([0, 1, 2], dtype=torch.int32))
    with pytest.raises(RuntimeError, match="cache's dtype"):  # rows are copied, not converted
        ops.reshape_and_cache(key.to(BF16), key.to(BF16), kv_cache[0], kv_cache[1],
                              torch.tensor([0, 1, 2]))
    with pytest.raises(RuntimeError, match="value_cache must match"):
        ops.reshape_and_cache(key, key, kv_cache[0], kv_cache[1].to(BF16),
                              torch.tensor([0, 1, 2]))


@pytest.mark.parametrize("dtype", [F32, BF16], ids=["f32", "bf16"])
def test_cache_written_then_attended(dtype):
    # Tokens written one sequence at a time through reshape_and_cache are what
    # the decode attention then reads back.
    block_size, num_heads, num_kv_heads, head_size = 16, 9, 3, 64
    seq_lens = [1, 16, 45]
    num_blocks = 8
    kv_cache = torch.zeros(2, num_blocks, block_size, num_kv_heads, head_size, dtype=dtype)
    free_blocks = torch.randperm(num_blocks).tolist()
    block_table = torch.zeros(len(seq_lens), 4, dtype=torch.int32)
    contiguous_keys, contiguous_values = [], []
    for seq, seq_len in enumerate(seq_lens):
        num_used = (seq_len + block_size - 1) // block_size
        for b in range(num_used):
            block_table[seq, b] = free_blocks.pop()
        positions = torch.arange(seq_len)
        slots = block_table[seq, positions // block_size].long() * block_size + positions % block_size
        key = torch.randn(seq_len, num_kv_heads, head_size).to(dtype)
        value = torch.randn(seq_len, num_kv_heads, head_size).to(dtype)
        reshape_and_cache(key, value, kv_cache[0], kv_cache[1], slots)
        contiguous_keys.append(key)
        contiguous_values.append(value)
    query = torch.randn(len(seq_lens), num_heads, head_size).to(dtype)
    out = torch.empty_like(query)
    seq_lens_t = torch.tensor(seq_lens, dtype=torch.int32)
    paged_attention_decode(out, query, kv_cache[0], kv_cache[1], block_table, seq_lens_t, 0.125)
    expected = torch.empty(out.shape, dtype=torch.float64)
    for seq in range(len(seq_lens)):
        k = contiguous_keys[seq].double().repeat_interleave(3, dim=1)  # (L, H, D)
        v = contiguous_values[seq].double().repeat_interleave(3, dim=1)  # (L, H, D)
        scores = torch.einsum("hd,lhd->hl", query[seq].double(), k) * 0.125
        expected[seq] = torch.einsum("hl,lhd->hd", torch.softmax(scores, dim=-1), v)
    assert_matches(out, expected)


@needs_kernel
@pytest.mark.parametrize("dtype", [F32, BF16], ids=["f32", "bf16"])
def test_kernel_many_sequences(ops, dtype):
    # Large batches are split per sequence rather than per (sequence, kv head).
    gen = torch.Generator().manual_seed(11)
    seq_lens = torch.randint(0, 200, (70,), generator=gen).tolist()
    case = make_case(seq_lens, 9, 3, 64, 16, seed=11, dtype=dtype)
    out = torch.empty_like(case[0])
    kernel(ops, out, *case, 0.125)
    assert_matches(out, attention_by_loop(*case, 0.125))
