"""The Ascend W8A8 adaptors (vllm/platforms/npu_int8.py) through the strict fake torch_npu:
each call keeps to the documented contract, and the results match the CPU reference of
int8_kernels.py (within one bfloat16 / float16 rounding: the device scales in its own order)."""
import pytest
import torch

from vllm.model_executor.layers.quantization import int8_kernels as ik


@pytest.fixture
def npu(npu_platform):
    import torch_npu
    from vllm.platforms.npu_int8 import NpuW8A8Kernels
    ik.platform_kernels.cache_clear()
    yield NpuW8A8Kernels(torch_npu), torch_npu
    ik.platform_kernels.cache_clear()


def weight(n: int, k: int, seed: int = 0) -> ik.Int8Weight:
    g = torch.Generator().manual_seed(seed)
    return ik.Int8Weight(torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8),
                         torch.rand(n, generator=g) * 0.01 + 1e-4)


def close(actual: torch.Tensor, expected: torch.Tensor):
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    torch.testing.assert_close(actual.float(), expected.float(), rtol=2 ** -7, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("with_bias", [False, True])
def test_dynamic_linear_matches_the_reference(npu, dtype, with_bias):
    kernels, torch_npu = npu
    w = weight(37, 70)
    x = (torch.randn(5, 70) * 2).to(dtype)  # (T, K)
    x[2] = 0  # an all-zero row
    bias = torch.randn(37).to(dtype) if with_bias else None
    close(kernels.dynamic_linear(x, w, bias), ik.w8a8_dynamic_linear_reference(x, w, bias))
    assert torch_npu.CALLS["npu_dynamic_quant"] and torch_npu.CALLS["npu_quant_matmul"]
    assert w.packed.weight_kn.shape == (70, 37)  # x2 is the weight transposed


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_static_linear_matches_the_reference(npu, dtype):
    kernels, torch_npu = npu
    w = weight(29, 64, seed=1)
    x = (torch.randn(6, 64) * 3).to(dtype)  # (T, K)
    x[0, :4] = -1e3  # below the range: -128
    args = (torch.tensor([0.021]), torch.tensor([-4], dtype=torch.int8),
            torch.randint(-3000, 3000, (29,), dtype=torch.int32), torch.rand(29) * 1e-3)
    close(kernels.static_linear(x, w, *args), ik.w8a8_static_linear_reference(x, w, *args))
    assert torch_npu.CALLS["npu_quantize"] == 1


def test_grouped_experts_match_the_reference(npu):
    kernels, torch_npu = npu
    g = torch.Generator().manual_seed(2)
    experts = ik.Int8Experts(torch.randint(-128, 128, (3, 24, 40), generator=g, dtype=torch.int8),
                             torch.rand(3, 24, generator=g) * 0.01)
    x = torch.randn(9, 40, generator=g).to(torch.bfloat16)  # (T, K), sorted by expert
    sizes = torch.tensor([4, 0, 5])
    close(kernels.grouped_dynamic_linear(x, experts, sizes),
          ik.w8a8_grouped_dynamic_linear_reference(x, experts, sizes))
    assert torch_npu.CALLS["npu_grouped_matmul"] == 1


def test_the_npu_platform_dispatches_to_the_adaptors(npu):
    kernels, torch_npu = npu
    from vllm.platforms.npu_int8 import NpuW8A8Kernels
    assert isinstance(ik.platform_kernels(), NpuW8A8Kernels)
    w = weight(8, 16)
    x = torch.randn(3, 16, dtype=torch.bfloat16)
    ik.w8a8_dynamic_linear(x, w)
    assert torch_npu.CALLS["npu_quant_matmul"] >= 1
    # float32 activations are not what npu_dynamic_quant takes: the reference runs instead
    assert ik.w8a8_dynamic_linear(x.float(), w).dtype == torch.float32


def test_the_fakes_refuse_what_the_docs_do_not_allow(npu):
    _, torch_npu = npu
    err = torch_npu.FakeNpuContractError
    x_q = torch.zeros(2, 16, dtype=torch.int8)
    w_nk = torch.zeros(8, 16, dtype=torch.int8)
    with pytest.raises(err, match="x1 K vs x2 K"):  # the weight not transposed
        torch_npu.npu_quant_matmul(x_q, w_nk, torch.ones(8), output_dtype=torch.bfloat16)
    with pytest.raises(err, match="x dtype"):
        torch_npu.npu_dynamic_quant(torch.randn(2, 16))
    with pytest.raises(err, match="scale dtype"):  # float16 output takes no bfloat16 scale
        torch_npu.npu_quant_matmul(x_q, w_nk.t(), torch.ones(8, dtype=torch.bfloat16),
                                   output_dtype=torch.float16)
    with pytest.raises(err, match="must end at x's 2 rows"):
        torch_npu.npu_grouped_matmul(
            [x_q], [torch.zeros(2, 16, 8, dtype=torch.int8)], scale=[torch.ones(2, 8)],
            per_token_scale=[torch.ones(2)], group_list=torch.tensor([1, 3]), split_item=2,
            group_type=0, group_list_type=0, output_dtype=torch.bfloat16)
    with pytest.raises(err, match="axis must be the last dim"):
        torch_npu.npu_quantize(torch.randn(2, 16), torch.ones(16), None, torch.qint8, 0, True)
