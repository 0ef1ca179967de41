"""The CPU int8 kernels (vllm._C_<isa>.int8_*) against the exact W8A8 reference of
int8_kernels.py, bit for bit, in every kernel build this CPU runs."""
import os
import subprocess
import sys

import pytest
import torch

from vllm.model_executor.layers.quantization import int8_kernels as ik
from vllm.platforms import cpu_isa
from vllm.platforms.cpu_int8 import CpuW8A8Kernels

BUILT = cpu_isa.built_isas()
pytestmark = pytest.mark.skipif(not BUILT, reason="no vllm._C_<isa> built")


@pytest.fixture(params=BUILT)
def kernels(request) -> CpuW8A8Kernels:
    return CpuW8A8Kernels(cpu_isa.load_ops(request.param))


@pytest.fixture(params=[1, 2])
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def random_weight(n: int, k: int, seed: int) -> ik.Int8Weight:
    g = torch.Generator().manual_seed(seed)
    qweight = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)  # (N, K)
    scale = torch.rand(n, generator=g) * 0.02 + 1e-4  # (N,)
    return ik.Int8Weight(qweight, scale)


def static_args(n: int, seed: int) -> tuple:
    g = torch.Generator().manual_seed(seed)
    input_scale = torch.tensor([0.0173])
    input_offset = torch.tensor([-3.0])
    quant_bias = torch.randint(-5000, 5000, (n,), generator=g, dtype=torch.int32)  # (N,)
    deq_scale = torch.rand(n, generator=g) * 1e-3  # (N,)
    return input_scale, input_offset, quant_bias, deq_scale


def assert_bits(actual: torch.Tensor, expected: torch.Tensor):
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    differ = (actual != expected).nonzero()
    assert differ.numel() == 0, f"{len(differ)} outputs differ, first at {differ[0].tolist()}"


# (M, K, N): every M the issue names, odd K and N (no multiple of 4, 8, 16 or 64), K past
# several 64-wide steps with a tail.
SHAPES = [(1, 37, 19), (2, 577, 131), (7, 1000, 67), (16, 129, 45), (33, 300, 29),
          (128, 75, 53), (2048, 23, 11)]


@pytest.mark.parametrize("m, k, n", SHAPES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_dynamic_linear_is_the_reference_bit_for_bit(kernels, threads, m, k, n, with_bias):
    weight = random_weight(n, k, seed=m + k)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(n)) * 3  # (M, K)
    bias = torch.randn(n) if with_bias else None
    assert_bits(kernels.dynamic_linear(x, weight, bias),
                ik.w8a8_dynamic_linear_reference(x, weight, bias))


@pytest.mark.parametrize("m, k, n", SHAPES)
def test_static_linear_is_the_reference_bit_for_bit(kernels, threads, m, k, n):
    weight = random_weight(n, k, seed=m * k)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(n)) * 2  # (M, K)
    args = static_args(n, seed=k)
    assert_bits(kernels.static_linear(x, weight, *args),
                ik.w8a8_static_linear_reference(x, weight, *args))


@pytest.mark.parametrize("w_value", [-128, 127, -127])
def test_extreme_products_do_not_saturate(kernels, w_value):
    # Static x far below the range quantises to -128 everywhere: with w = -128 each pair of
    # products is 32768, one more than an int16 holds (where vpmaddubsw would saturate).
    k, n = 203, 21
    weight = ik.Int8Weight(torch.full((n, k), w_value, dtype=torch.int8), torch.ones(n))
    x = torch.full((3, k), -1e6)  # (M, K)
    x[1] = 1e6
    x[2, ::2] = -1e6
    args = (torch.tensor([1.0]), torch.tensor([0.0]), torch.zeros(n, dtype=torch.int32),
            torch.ones(n))
    out = kernels.static_linear(x, weight, *args)
    assert_bits(out, ik.w8a8_static_linear_reference(x, weight, *args))
    assert out[0, 0].item() == -128 * w_value * k  # the reference is the exact sum
    assert_bits(kernels.dynamic_linear(x, weight, None),
                ik.w8a8_dynamic_linear_reference(x, weight, None))


def test_all_zero_rows_and_equal_values(kernels):
    weight = random_weight(17, 90, seed=1)
    x = torch.zeros(4, 90)  # (M, K)
    x[1] = 5.0  # every value the row's amax: all +127
    x[2] = -5.0
    x[3, 7] = 1e-30  # a tiny amax
    bias = torch.randn(17)
    out = kernels.dynamic_linear(x, weight, bias)
    assert_bits(out, ik.w8a8_dynamic_linear_reference(x, weight, bias))
    assert_bits(out[0], bias)  # a zero row gives the bias alone


def test_quantizers_are_the_reference(kernels):
    x = torch.randn(9, 333) * 4  # (M, K)
    x[0, :] = torch.arange(333) * 0.5 - 80  # halves: round half to even
    x[3] = 0
    x_q = torch.empty(x.shape, dtype=torch.int8)
    scale = torch.empty(9)
    kernels.ops.int8_quantize_dynamic(x_q, scale, x)
    want_q, want_scale = ik.dynamic_quant(x)
    assert torch.equal(x_q, want_q) and torch.equal(scale, want_scale)
    kernels.ops.int8_quantize_static(x_q, x, 1.0, 2.0)
    assert torch.equal(x_q, ik.static_quant(x, torch.tensor(1.0), torch.tensor(2.0)))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_give_the_reference_in_their_dtype(kernels, dtype):
    weight = random_weight(40, 64, seed=3)
    x = torch.randn(5, 64).to(dtype)  # (M, K)
    bias = torch.randn(40).to(dtype)
    out = kernels.dynamic_linear(x, weight, bias)
    assert out.dtype == dtype
    assert_bits(out, ik.w8a8_dynamic_linear_reference(x, weight, bias))


def test_grouped_experts_are_the_reference_bit_for_bit(kernels, threads):
    g = torch.Generator().manual_seed(4)
    experts = ik.Int8Experts(torch.randint(-128, 128, (4, 27, 45), generator=g, dtype=torch.int8),
                             torch.rand(4, 27, generator=g) * 0.01)
    x = torch.randn(11, 45, generator=g)  # (T, K), sorted by expert
    sizes = torch.tensor([3, 0, 7, 1])
    assert_bits(kernels.grouped_dynamic_linear(x, experts, sizes),
                ik.w8a8_grouped_dynamic_linear_reference(x, experts, sizes))


def test_both_dynamic_paths_agree(kernels):
    # int8_linear_dynamic (quantisation fused) and int8_quantize_dynamic + int8_linear
    weight = random_weight(30, 100, seed=6)
    x = torch.randn(9, 100)  # (M, K)
    fused = kernels.dynamic_linear(x, weight, None)
    kernels.fused_dynamic = None
    assert_bits(kernels.dynamic_linear(x, weight, None), fused)


def test_the_reference_sums_are_exact():
    # The oracle itself, against int64 arithmetic written differently.
    g = torch.Generator().manual_seed(0)
    x_q = torch.randint(-128, 128, (5, 3000), generator=g, dtype=torch.int8)  # (M, K)
    w_q = torch.randint(-128, 128, (7, 3000), generator=g, dtype=torch.int8)  # (N, K)
    want = (x_q.long()[:, None, :] * w_q.long()[None, :, :]).sum(-1)  # (M, N)
    assert torch.equal(ik.int8_matmul(x_q, w_q).long(), want)


def test_packing_at_load_and_on_first_use(kernels):
    weight = random_weight(8, 32, seed=5)
    x = torch.randn(2, 32)  # (M, K)
    first = kernels.dynamic_linear(x, weight, None)  # packs on first use
    assert weight.packed is not None
    assert torch.equal(weight.packed.row_sums, weight.qweight.int().sum(1, dtype=torch.int32))
    assert_bits(kernels.dynamic_linear(x, weight, None), first)


def test_the_kernels_name_a_clear_error_for_a_bad_tensor(kernels):
    x_q = torch.zeros(2, 8, dtype=torch.int8)
    weight = torch.zeros(3, 9, dtype=torch.int8)
    out = torch.empty(2, 3)
    with pytest.raises(RuntimeError, match="x_q has 8 columns but the weight has 9"):
        kernels.ops.int8_linear(out, x_q, weight, torch.zeros(3, dtype=torch.int32), None,
                                torch.ones(3), None, None)
    with pytest.raises(RuntimeError, match="weight_sums must be a contiguous"):
        kernels.ops.int8_linear(out, x_q, weight[:, :8].contiguous(), torch.zeros(3), None,
                                torch.ones(3), None, None)


def test_the_interface_runs_the_selected_build():
    # A fresh process per forced build: w8a8_dynamic_linear dispatches to its int8 GEMM.
    code = ("import torch; from vllm.model_executor.layers.quantization import int8_kernels as ik;"
            "k = ik.platform_kernels(); print(type(k).__name__, k.ops.built_isa());"
            "w = ik.Int8Weight(torch.randint(-128, 128, (5, 70), dtype=torch.int8),"
            "                  torch.rand(5));"
            "x = torch.randn(3, 70); out = ik.w8a8_dynamic_linear(x, w);"
            "want = ik.w8a8_dynamic_linear_reference(x, w);"
            "print(type(w.packed).__name__, torch.equal(out, want))")
    for isa in BUILT:
        env = {**os.environ, cpu_isa.ISA_ENV: isa}
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                env=env, timeout=600)
        assert result.returncode == 0, result.stderr
        assert result.stdout.split()[-4:] == ["CpuW8A8Kernels", isa, "CpuInt8Packed", "True"]


def test_int8_kernels_can_be_turned_off(monkeypatch):
    from vllm.platforms.cpu import INT8_KERNELS_ENV, CpuPlatform
    monkeypatch.setenv(INT8_KERNELS_ENV, "0")
    assert CpuPlatform().w8a8_kernels() is None
