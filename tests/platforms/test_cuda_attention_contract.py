"""The CUDA backend's SDPA path on CPU tensors against the CPU backend, layer by layer; its
flash-attn path and the whole engine on a GPU (marked cuda, skipped without one)."""
import pytest
import torch

from attn_cases import SCENARIOS, make_case, run_backend
from vllm.attention.backends import cuda as cuda_backend
from vllm.attention.backends.cpu import CPUAttentionBackend
from vllm.attention.backends.cuda import CudaAttentionBackend

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def sdpa_only(monkeypatch):
    monkeypatch.setattr(cuda_backend, "HAS_FLASH_ATTN", False)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("heads", [(4, 2, 16), (6, 1, 64)])
@pytest.mark.parametrize("block_size", [16, 128])
def test_sdpa_path_matches_cpu_backend(sdpa_only, scenario, heads, block_size):
    case = make_case(SCENARIOS[scenario], *heads, block_size=block_size)
    got, got_cache = run_backend(CudaAttentionBackend, case)
    want, want_cache = run_backend(CPUAttentionBackend, case)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert torch.equal(got_cache, want_cache)


def test_padded_decode_rows_repeat_the_last_request(sdpa_only):
    """The graph runner pads a decode batch by repeating its last row: the real rows'
    outputs and the cache are exactly those of the unpadded step."""
    case = make_case(SCENARIOS["decode"])
    want, want_cache = run_backend(CudaAttentionBackend, case)
    padded = pad_decode_case(case, extra=3)
    got, got_cache = run_backend(CudaAttentionBackend, padded)
    torch.testing.assert_close(got[:case.q.shape[0]], want, atol=1e-6, rtol=1e-6)
    assert torch.equal(got_cache, want_cache)


def pad_decode_case(case, extra: int):
    c = case.common
    repeat = lambda t: torch.cat([t, t[-1:].expand(extra, *t.shape[1:])])  # noqa: E731
    common = type(c)(
        num_actual_tokens=c.num_actual_tokens + extra, num_decodes=c.num_decodes + extra,
        query_start_loc_list=list(range(c.num_reqs + extra + 1)),
        seq_lens_list=c.seq_lens_list + c.seq_lens_list[-1:] * extra,
        query_start_loc=torch.arange(c.num_reqs + extra + 1, dtype=torch.int32),
        seq_lens=repeat(c.seq_lens), block_table=repeat(c.block_table),
        slot_mapping=repeat(c.slot_mapping))
    return case._replace(q=repeat(case.q), k=repeat(case.k), v=repeat(case.v), common=common)


@pytest.mark.cuda
@needs_gpu
@pytest.mark.skipif(not cuda_backend.HAS_FLASH_ATTN, reason="flash-attn is not installed")
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_flash_attn_path_matches_cpu_backend_on_gpu(scenario):
    case = make_case(SCENARIOS[scenario], block_size=256, head_size=64, dtype=torch.float16)
    got, _ = run_backend(CudaAttentionBackend, case, device="cuda")
    want, _ = run_backend(CPUAttentionBackend, case, dtype=torch.float32)
    torch.testing.assert_close(got.float().cpu(), want, atol=2e-2, rtol=2e-2)


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_sdpa_path_on_gpu(sdpa_only, scenario):
    case = make_case(SCENARIOS[scenario], dtype=torch.float16)
    got, _ = run_backend(CudaAttentionBackend, case, device="cuda")
    want, _ = run_backend(CPUAttentionBackend, case, dtype=torch.float32)
    torch.testing.assert_close(got.float().cpu(), want, atol=2e-2, rtol=2e-2)
