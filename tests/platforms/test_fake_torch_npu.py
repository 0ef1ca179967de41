"""The fake torch_npu refuses calls that break the documented contract (so the contract
tests above can fail), and computes what it documents."""
import pytest
import torch

from fake_device import mark_device


@pytest.fixture
def fake(npu_platform):
    import torch_npu
    return torch_npu


def caches(dtype=torch.bfloat16):
    return torch.zeros(4, 128, 2, 16, dtype=dtype), torch.zeros(4, 128, 2, 16, dtype=dtype)


def test_reshape_and_cache_wants_int32_slots(fake):
    k, v = torch.randn(3, 2, 16, dtype=torch.bfloat16), torch.randn(3, 2, 16, dtype=torch.bfloat16)
    kc, vc = caches()
    with pytest.raises(fake.FakeNpuContractError, match="slot_indices dtype"):
        fake._npu_reshape_and_cache(key=k, value=v, key_cache=kc, value_cache=vc,
                                    slot_indices=mark_device(torch.tensor([0, 1, 2])))
    fake._npu_reshape_and_cache(key=k, value=v, key_cache=kc, value_cache=vc,
                                slot_indices=mark_device(torch.tensor([0, 129, 511],
                                                                      dtype=torch.int32)))
    assert torch.equal(kc[1, 1], k[1]) and torch.equal(vc[3, 127], v[2])


def test_keywords_are_the_documented_ones(fake):
    kc, vc = caches()
    with pytest.raises(TypeError):
        fake._npu_reshape_and_cache(key=kc[0], value=vc[0], key_cache=kc, value_cache=vc,
                                    slot_mapping=torch.zeros(128, dtype=torch.int32))


def test_float32_is_refused(fake):
    q = torch.randn(2, 4, 16)
    kc, vc = caches(torch.float32)
    with pytest.raises(fake.FakeNpuContractError, match="query dtype"):
        fake._npu_paged_attention(query=q, key_cache=kc, value_cache=vc, num_kv_heads=2,
                                  num_heads=4, scale_value=0.25,
                                  block_table=torch.zeros(2, 1, dtype=torch.int32),
                                  context_lens=torch.ones(2, dtype=torch.int32), out=q)


def test_flash_attention_checks_the_mask(fake):
    q = torch.randn(5, 4, 16, dtype=torch.bfloat16)
    k = torch.randn(5, 2, 16, dtype=torch.bfloat16)
    wrong = torch.zeros(5, 5, dtype=torch.bfloat16)  # no causal part
    with pytest.raises(fake.FakeNpuContractError, match="mask"):
        fake._npu_flash_attention(query=q, key=k, value=k, mask=wrong,
                                  seq_len=torch.tensor([5], dtype=torch.int32), scale_value=0.25,
                                  num_heads=4, num_kv_heads=2, out=torch.empty_like(q))


def test_fused_attention_wants_block_size_multiple_of_128(fake):
    q = torch.randn(1, 4, 4, 16, dtype=torch.bfloat16)
    kv = torch.zeros(4, 64, 32, dtype=torch.bfloat16)
    with pytest.raises(fake.FakeNpuContractError, match="block_size"):
        fake.npu_fused_infer_attention_score(
            q, kv, kv, atten_mask=torch.ones(2048, 2048, dtype=torch.bool).triu(1),
            block_table=mark_device(torch.zeros(1, 1, dtype=torch.int32)), actual_seq_lengths=[4],
            actual_seq_lengths_kv=[4], num_heads=4, num_key_value_heads=2, scale=0.25,
            input_layout="BSND", sparse_mode=3, block_size=64)


def test_device_and_host_arguments_are_told_apart(fake):
    k = torch.randn(1, 2, 16, dtype=torch.bfloat16)
    kc, vc = caches()
    with pytest.raises(fake.FakeNpuContractError, match="slot_indices must be a device"):
        fake._npu_reshape_and_cache(key=k, value=k, key_cache=kc, value_cache=vc,
                                    slot_indices=torch.zeros(1, dtype=torch.int32))
    q = torch.randn(1, 4, 16, dtype=torch.bfloat16)
    with pytest.raises(fake.FakeNpuContractError, match="context_lens must be a host"):
        fake._npu_paged_attention(query=q, key_cache=kc, value_cache=vc, num_kv_heads=2,
                                  num_heads=4, scale_value=0.25,
                                  block_table=mark_device(torch.zeros(1, 1, dtype=torch.int32)),
                                  context_lens=mark_device(torch.ones(1, dtype=torch.int32)),
                                  out=torch.empty_like(q))
