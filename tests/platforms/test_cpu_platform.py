import os

import pytest
import torch

from vllm.platforms.cpu import AUTO_DTYPE_ENV, GiB, CpuPlatform


def test_kv_cache_space_env_sets_the_budget(monkeypatch):
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1.5")
    platform = CpuPlatform()
    assert platform.kv_cache_budget_bytes(None) == int(1.5 * GiB)
    assert platform.kv_cache_budget_bytes(0.9) == int(1.5 * GiB)  # the env var wins
    assert platform.kv_cache_budget_bytes(None, ranks_on_host=3) == int(1.5 * GiB) // 3


@pytest.mark.parametrize("value", ["lots", "0", "-2"])
def test_bad_kv_cache_space_is_a_clear_error(monkeypatch, value):
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", value)
    with pytest.raises(ValueError, match="VLLM_CPU_KVCACHE_SPACE"):
        CpuPlatform().kv_cache_budget_bytes(None)


def test_default_and_utilization_budgets(monkeypatch):
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    platform = CpuPlatform()
    default = platform.kv_cache_budget_bytes(None)
    assert 0 < default <= 4 * GiB
    assert platform.kv_cache_budget_bytes(0.01) < platform.kv_cache_budget_bytes(0.5)


@pytest.mark.parametrize("fast_bf16", [False, True])
def test_cpu_default_dtype(monkeypatch, fast_bf16):
    """`--dtype auto`: bfloat16 where the CPU multiplies it fast (AVX512-BF16 / AMX), as
    vLLM's CPU build; float32 elsewhere and in batch-invariant mode (float32 kernels)."""
    monkeypatch.setattr("vllm.platforms.cpu.has_fast_bf16", lambda: fast_bf16)
    monkeypatch.delenv(AUTO_DTYPE_ENV)  # the suite's conftest pins float32
    platform = CpuPlatform()
    assert platform.default_dtype() == (torch.bfloat16 if fast_bf16 else torch.float32)
    assert platform.default_dtype(batch_invariant=True) == torch.float32
    monkeypatch.setenv(AUTO_DTYPE_ENV, "bfloat16")
    assert platform.default_dtype() == torch.bfloat16
    monkeypatch.setenv(AUTO_DTYPE_ENV, "float32")
    assert platform.default_dtype() == torch.float32
    assert platform.default_dtype(batch_invariant=True) == torch.float32


def test_bad_auto_dtype_is_one_line(monkeypatch, tmp_path):
    import subprocess
    import sys
    env = dict(os.environ, **{AUTO_DTYPE_ENV: "float16"})
    result = subprocess.run([sys.executable, "-m", "vllm.entrypoints.cli.main", "serve",
                             "--port", "1"], env=env, capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if AUTO_DTYPE_ENV in line]
    assert lines and "float32, bfloat16" in lines[0] and "Traceback" not in result.stderr


def test_fast_bf16_is_read_from_the_cpu_flags(monkeypatch):
    from vllm.platforms import cpu_isa
    monkeypatch.setattr(cpu_isa, "cpu_flags", lambda: frozenset({"avx2", "avx512_bf16"}))
    assert cpu_isa.has_fast_bf16()
    monkeypatch.setattr(cpu_isa, "cpu_flags", lambda: frozenset({"avx2", "amx_bf16"}))
    assert cpu_isa.has_fast_bf16()
    monkeypatch.setattr(cpu_isa, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert not cpu_isa.has_fast_bf16()


def test_cpu_defaults():
    platform = CpuPlatform()
    assert platform.dist_backend == "gloo"
    assert platform.get_attn_backend_cls().name == "CPU_ATTN"


def test_engine_uses_the_budget(monkeypatch, demo_model_dir):
    from vllm import LLM
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "0.25")
    llm = LLM(demo_model_dir, max_model_len=256)
    manager = llm.llm_engine.engine_core.kv_cache_manager
    bytes_per_block = 30 * 2 * 16 * 3 * 64 * 4  # layers, K+V, block, kv heads, dims, fp32
    assert manager.num_blocks == int(0.25 * GiB) // bytes_per_block


def test_small_batch_linear_where_measured():
    from vllm.platforms.cpu import DENSE_KERNEL_MAX_ROWS
    from vllm.platforms.cpu_isa import kernel_ops, selected_isa
    platform = CpuPlatform()
    assert platform.small_batch_linear(torch.bfloat16) is None
    found = platform.small_batch_linear(torch.float32)
    if kernel_ops() is None or selected_isa() not in DENSE_KERNEL_MAX_ROWS:
        assert found is None
        return
    op, max_rows = found
    assert max_rows == DENSE_KERNEL_MAX_ROWS[selected_isa()]
    x, weight = torch.randn(3, 40), torch.randn(5, 40)
    out = torch.empty(3, 5)
    op(out, x, weight, None)
    torch.testing.assert_close(out, x @ weight.T)
