"""The CPU backend's batch-invariant path: every query token goes through the decode kernel
over its own causal prefix. It agrees with the SDPA path, and each token's output is the
same bits as that token computed alone, as a one-token decode step."""
import os
import sys

import pytest
import torch

from vllm.attention.backend import CommonAttentionMetadata
from vllm.attention.backends.cpu import CPUAttentionBackend

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "platforms"))
from attn_cases import SCENARIOS, make_case, run_backend  # noqa: E402

pytestmark = pytest.mark.identity


def invariant_forward(case, cache: torch.Tensor, q, k, v, common) -> torch.Tensor:
    num_heads, head_size, num_kv_heads = q.shape[1], q.shape[2], k.shape[1]
    impl = CPUAttentionBackend.impl_cls(num_heads, head_size, case.scale, num_kv_heads)
    impl.make_batch_invariant()
    return impl.forward(q, k, v, cache, CPUAttentionBackend.build_metadata(common))


def one_token_step(common: CommonAttentionMetadata, token: int) -> CommonAttentionMetadata:
    """The metadata of a step that computes only `token` of `common`, as a decode."""
    request = next(r for r in range(common.num_reqs)
                   if common.query_start_loc_list[r + 1] > token)
    tokens_after = common.query_start_loc_list[request + 1] - 1 - token
    seq_len = common.seq_lens_list[request] - tokens_after
    return CommonAttentionMetadata(
        num_actual_tokens=1, num_decodes=1, query_start_loc_list=[0, 1],
        seq_lens_list=[seq_len], query_start_loc=torch.tensor([0, 1], dtype=torch.int32),
        seq_lens=torch.tensor([seq_len], dtype=torch.int32),
        block_table=common.block_table[request:request + 1],
        slot_mapping=common.slot_mapping[token:token + 1])


def test_per_token_view_matches_a_loop():
    case = make_case(SCENARIOS["mixed_cached"], block_size=16)
    common = case.common
    view = common.per_token
    for token in range(common.num_actual_tokens):
        alone = one_token_step(common, token)
        assert view.seq_lens[token] == alone.seq_lens[0]
        assert torch.equal(view.block_table[token], alone.block_table[0])
    assert view.block_table.dtype == torch.int32 and view.seq_lens.dtype == torch.int32


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("block_size", [16, 128])
def test_invariant_path_agrees_with_sdpa(scenario, block_size):
    case = make_case(SCENARIOS[scenario], block_size=block_size)
    expected, expected_cache = run_backend(CPUAttentionBackend, case)
    cache = case.kv_cache.clone()
    got = invariant_forward(case, cache, case.q, case.k, case.v, case.common)
    assert torch.equal(cache, expected_cache)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_each_token_equals_itself_alone(scenario):
    case = make_case(SCENARIOS[scenario], block_size=16)
    cache = case.kv_cache.clone()
    batched = invariant_forward(case, cache, case.q, case.k, case.v, case.common)
    for token in range(case.common.num_actual_tokens):
        one = slice(token, token + 1)
        alone = invariant_forward(case, cache, case.q[one], case.k[one], case.v[one],
                                  one_token_step(case.common, token))
        assert torch.equal(alone[0], batched[token]), f"token {token}"
