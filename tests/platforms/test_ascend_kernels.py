"""KV-copy for the push: the PyTorch references against plain indexing (here), and the
AscendC kernels (vllm._ascend_C) against the references on an NPU (skipped elsewhere)."""
import pytest
import torch

from vllm.attention.backends import npu_kv_copy as kv_copy

SLOTS = [5, 0, 511, 130, 131, 7]


def cache(dtype=torch.bfloat16, device="cpu"):
    gen = torch.Generator().manual_seed(0)
    return torch.randn(2, 4, 128, 4, 64, generator=gen).to(dtype).to(device)


def test_gather_reference_is_plain_indexing():
    kv = cache()
    got = kv_copy.gather_kv_reference(kv, torch.tensor(SLOTS))
    want = torch.stack([kv[:, s // 128, s % 128] for s in SLOTS], dim=1)
    assert torch.equal(got, want)


@pytest.mark.parametrize("head_start,count", [(0, 4), (1, 2), (3, 1)])
def test_scatter_reference_writes_only_its_heads(head_start, count):
    kv, incoming = cache(), torch.randn(2, len(SLOTS), count, 64).to(torch.bfloat16)
    want = kv.clone()
    for i, s in enumerate(SLOTS):
        want[:, s // 128, s % 128, head_start:head_start + count] = incoming[:, i]
    kv_copy.scatter_kv_reference(kv, torch.tensor(SLOTS), head_start, incoming)
    assert torch.equal(kv, want)


@pytest.mark.npu
@pytest.mark.skipif(not kv_copy.HAS_ASCEND_KERNELS, reason="vllm._ascend_C is not built")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kernels_match_references(dtype):
    kv = cache(dtype, "npu")
    slots = torch.tensor(SLOTS, device="npu")
    assert torch.equal(kv_copy.gather_kv(kv, slots).cpu(),
                       kv_copy.gather_kv_reference(kv.cpu(), slots.cpu()))
    incoming = torch.randn(2, len(SLOTS), 2, 64).to(dtype)
    want = kv.cpu()
    kv_copy.scatter_kv_reference(want, slots.cpu(), 1, incoming)
    kv_copy.scatter_kv(kv, slots, 1, incoming.to("npu"))
    assert torch.equal(kv.cpu(), want)
